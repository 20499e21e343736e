//! Clean-up of contender keys whose attempt ended without a grant (cancelled,
//! timed out, or written without a reply), and of holdings whose release did
//! not land.
//!
//! A contender key is attached to the client's lease, which lives as long as
//! the client: a key left behind would hold or block the lock for every other
//! client until the process exits. So a clean-up is retried until etcd
//! answers it or the lease is gone (and the key with it), never given up
//! while the lease lives. A clean-up that compares only the lease (the write's
//! outcome is unknown) must never meet another attempt's key of the same
//! name: a mutex key's name is the same for every attempt of one lease, so a
//! new attempt on it waits until the clean-up before it is done; a reader's
//! or writer's name is new for every attempt, so none ever meets another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use lock_core::{LockError, LossSignal};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tokio::time::sleep;
use tracing::{debug, warn};

use crate::contender::Standing;
use crate::endpoints::{EndpointHealth, Replay};

/// What the write of a contender key returned: its create revision, and
/// where it stands.
pub(crate) type WriteOutcome = Result<(i64, Standing), LockError>;

/// What an attempt knows about the key it wrote.
#[derive(Debug)]
pub(crate) enum Written {
    /// The write is still in flight.
    Pending(JoinHandle<WriteOutcome>),
    /// The write failed without saying whether it landed.
    Unknown,
    /// The key exists with this create revision.
    At(i64),
}

/// A contender key to delete, and what is known of it.
#[derive(Debug)]
pub(crate) struct Leftover {
    pub(crate) contender: String,
    pub(crate) written: Written,
    /// The lease the key is attached to.
    pub(crate) lease: i64,
    /// Fired when the lease is gone: the key went with it.
    pub(crate) lease_ended: LossSignal,
}

/// The clean-ups in flight, by contender key.
#[derive(Debug, Default)]
pub(crate) struct Cleanups {
    gates: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Cleanups {
    /// Starts deleting `leftover` in the background, after any clean-up of
    /// the same key still in flight.
    pub(crate) fn start(
        self: &Arc<Self>,
        connection: (Client, EndpointHealth),
        leftover: Leftover,
        request_timeout: Duration,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let gate = Arc::new(Mutex::new(()));
        let Ok(held) = Arc::clone(&gate).try_lock_owned() else { return };
        let before = self.gates().insert(leftover.contender.clone(), Arc::clone(&gate));
        let cleanups = Arc::clone(self);
        runtime.spawn(async move {
            if let Some(before) = before {
                drop(before.lock().await);
            }
            let contender = leftover.contender.clone();
            delete(&connection, leftover, request_timeout).await;
            cleanups.finish(&contender, &gate, held);
        });
    }

    /// Completes when no clean-up of `contender` is in flight.
    ///
    /// Cancel safe.
    pub(crate) async fn settled(&self, contender: &str) {
        let gate = self.gates().get(contender).cloned();
        if let Some(gate) = gate {
            drop(gate.lock().await);
        }
    }

    fn finish(&self, contender: &str, gate: &Arc<Mutex<()>>, held: OwnedMutexGuard<()>) {
        let mut gates = self.gates();
        if gates.get(contender).is_some_and(|current| Arc::ptr_eq(current, gate)) {
            gates.remove(contender);
        }
        drop(held);
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<()>>>> {
        self.gates.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Deletes the leftover key if it is still the one written, retrying with
/// backoff until etcd answers or the lease is gone.
async fn delete((client, health): &(Client, EndpointHealth), leftover: Leftover, limit: Duration) {
    let contender = leftover.contender.as_str();
    let known = match leftover.written {
        Written::At(revision) => Some(revision),
        Written::Pending(write) => match write.await {
            Ok(Ok((revision, _))) => Some(revision),
            // A failed or timed-out write may still have landed.
            _ => None,
        },
        Written::Unknown => None,
    };
    let ours = match known {
        Some(revision) => Compare::create_revision(contender, CompareOp::Equal, revision),
        // Nothing else of this lease can write the key while we run (the
        // next attempt waits for us), so the lease identifies our write.
        None => Compare::lease(contender, CompareOp::Equal, leftover.lease),
    };
    // A write whose outcome is unknown may still be on its way (through a
    // member that forwards it late): finding no key once is not proof, so
    // look again after a request timeout, twice.
    let mut late_checks = if known.is_some() { 0 } else { LATE_WRITE_CHECKS };
    let txn = Txn::new().when([ours]).and_then([TxnOp::delete(contender, None)]);
    let mut pause = Duration::from_millis(100);
    let mut tries = 0u32;
    let send = || {
        let (mut kv, txn) = (client.kv_client(), txn.clone());
        async move { kv.txn(txn).await }
    };
    loop {
        tries += 1;
        tokio::select! {
            _ = leftover.lease_ended.fired() => return,
            outcome = health.send(limit, Replay::IfNeverSent, send) => match outcome {
                Ok(Ok(deleted)) if deleted.succeeded() || late_checks == 0 => return,
                Ok(Ok(_)) => {
                    late_checks -= 1;
                    tokio::select! {
                        _ = leftover.lease_ended.fired() => return,
                        () = sleep(limit) => {}
                    }
                    continue;
                }
                outcome => debug!(contender, tries, ?outcome, "deleting our key failed; retrying"),
            },
        }
        if tries == WARN_AFTER {
            warn!(contender, "still cannot delete our contender key; retrying until etcd answers or the lease ends");
        }
        tokio::select! {
            _ = leftover.lease_ended.fired() => return,
            () = sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

const WARN_AFTER: u32 = 10;

/// How often a key whose write had an unknown outcome is looked for again
/// after it was first found absent.
const LATE_WRITE_CHECKS: u32 = 2;
