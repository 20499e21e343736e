//! The memory backend's workers. Its store lives in one process, so its
//! workers are tasks of the campaign, each with a client of its own, and the
//! faults act on that client and task as the others act on a process: a
//! kill cuts the client off for good (it can neither renew nor release, as
//! a dead process cannot) and drops the task; a pause cuts the client off
//! and holds the task before its next write past the TTL; a cut cuts the
//! client off while the task runs on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{Locks, MemoryLock, MemoryStore};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::history::{Kind, Recorder};
use crate::register::Writer;
use crate::worker::{Gate, Holder, writer_id};

/// One in-process worker incarnation.
pub struct TaskWorker {
    client: Arc<MemoryLock>,
    task: JoinHandle<u8>,
    paused: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
}

/// What a task worker is started with.
pub struct TaskSpec<'a> {
    /// The store every worker of the campaign shares.
    pub store: &'a MemoryStore,
    /// The worker's name and incarnation.
    pub name: &'a str,
    /// Which incarnation.
    pub incarnation: usize,
    /// Its history file.
    pub history: &'a Path,
    /// The keys it contends on.
    pub keys: &'a [String],
    /// The register's address.
    pub register: &'a str,
    /// The lock TTL.
    pub ttl: Duration,
    /// Its seed.
    pub seed: u64,
}

impl TaskWorker {
    /// Starts a worker task.
    ///
    /// # Errors
    /// When its history cannot be opened or the register not reached.
    pub async fn start(spec: TaskSpec<'_>) -> Result<Self, String> {
        let client = Arc::new(spec.store.client());
        let locks = Locks::from_backend(Arc::clone(&client) as Arc<dyn lock_core::DistributedLock>);
        let mut history = Recorder::open(spec.history, spec.name).map_err(|e| format!("history: {e}"))?;
        history.record(Kind::Started { pid: std::process::id() });
        let register = Writer::connect(spec.register).await.map_err(|e| format!("register: {e}"))?;
        let holder = Holder {
            name: writer_id(spec.name, spec.incarnation),
            keys: spec.keys.to_vec(),
            writes: 5,
            ttl: Some(spec.ttl),
            random: crate::nemesis::Random::new(spec.seed),
            history,
            register,
        };
        let (paused, gate) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async move {
                let _ = stopped.await;
            };
            holder.contend(&locks, Gate::controlled(gate), stopped).await
        });
        Ok(Self { client, task, paused, stop: Some(stop) })
    }

    /// Kills it: its client is cut off before the task is dropped, so the
    /// guard it drops cannot release (a killed process sends nothing either),
    /// and the client stays cut off and open in the returned handle until
    /// the campaign ends, so its session is not closed on its behalf.
    pub async fn kill(self) -> Arc<MemoryLock> {
        self.client.disconnect();
        self.task.abort();
        let _ = self.task.await;
        self.client
    }

    /// Holds the task before its next write and cuts its client off for
    /// `length`, then lets both go on: a paused process, renewals included.
    pub async fn pause(&self, length: Duration) {
        self.client.disconnect();
        let _ = self.paused.send(true);
        tokio::time::sleep(length).await;
        self.client.reconnect();
        let _ = self.paused.send(false);
    }

    /// Cuts its client off for `length` while the task runs on.
    pub async fn cut(&self, length: Duration) {
        self.client.disconnect();
        tokio::time::sleep(length).await;
        self.client.reconnect();
    }

    /// Tells it to stop and waits up to `limit`; aborts it after that.
    /// Returns whether it stopped by itself.
    pub async fn stop(mut self, limit: Duration) -> bool {
        let _ = self.paused.send(false);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(limit, &mut self.task).await {
            Ok(_) => true,
            Err(_) => {
                self.task.abort();
                false
            }
        }
    }
}
