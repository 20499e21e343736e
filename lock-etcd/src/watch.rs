//! One watch stream per client, multiplexing every watch the client needs:
//! a waiter's predecessor, each held lock's own key, a semaphore waiter's
//! places and a leader observer's election.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tracing::{Instrument, debug, info_span};

use crate::endpoints::EndpointHealth;

/// Why a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchEnd {
    /// The key was deleted at a revision after the watch's start.
    Deleted,
    /// etcd compacted the history the watch needed; check the key directly.
    Compacted,
}

enum Command {
    Watch { id: i64, active: Active },
    Cancel { id: i64 },
}

struct Active {
    key: Vec<u8>,
    /// The end of the range watched; `None` for the one key.
    range_end: Option<Vec<u8>>,
    /// Zero: from the revision at which etcd creates the watch.
    start_revision: i64,
    notify: Notify,
    created: Option<oneshot::Sender<i64>>,
}

/// Whom a watch reports to, and what.
enum Notify {
    /// The first deletion of the key, or why the watch broke; then the
    /// watch ends.
    Deletion(oneshot::Sender<WatchEnd>),
    /// Every change in the range (only deletions if `deletions_only`), until
    /// the watch breaks.
    Changes { sender: mpsc::UnboundedSender<Changes>, deletions_only: bool },
}

impl Notify {
    fn is_closed(&self) -> bool {
        match self {
            Notify::Deletion(sender) => sender.is_closed(),
            Notify::Changes { sender, .. } => sender.is_closed(),
        }
    }
}

/// What a [`ChangeWatch`] reports.
#[derive(Debug)]
pub(crate) enum Changes {
    /// Keys of the range changed, in revision order.
    Events(Vec<Change>),
    /// etcd compacted the history the watch needed (or cancelled it): read
    /// the range again and watch anew from that read.
    Broken,
}

/// One change of one key.
#[derive(Debug)]
pub(crate) struct Change {
    /// The key.
    pub(crate) key: Vec<u8>,
    /// Whether it was deleted (else written).
    pub(crate) deleted: bool,
}

impl Active {
    /// etcd created the watch at `revision`: it sees every change after it.
    fn created_at(&mut self, revision: i64) {
        if self.start_revision == 0 && revision > 0 {
            // A watch "from now" re-created after a reconnect must go on from
            // here, or a deletion while the stream was down goes unseen and
            // its waiter waits forever.
            self.start_revision = revision + 1;
        }
        if let Some(created) = self.created.take() {
            let _ = created.send(revision);
        }
    }
}

/// Hands out watches for the deletion of single keys, all on one stream,
/// re-created from their start revision after a reconnect (for a watch "from
/// now", the revision etcd first created it at) so no deletion is missed.
#[derive(Debug)]
pub(crate) struct WatchHub {
    commands: mpsc::UnboundedSender<Command>,
    next_id: AtomicI64,
    task: JoinHandle<()>,
}

/// A watch of every change in a range, until dropped or broken; dropping it
/// cancels the watch.
#[derive(Debug)]
pub(crate) struct ChangeWatch {
    id: i64,
    changes: mpsc::UnboundedReceiver<Changes>,
    commands: mpsc::UnboundedSender<Command>,
}

/// A pending watch; dropping it cancels the watch.
#[derive(Debug)]
pub(crate) struct Watch {
    id: i64,
    end: oneshot::Receiver<WatchEnd>,
    created: Option<oneshot::Receiver<i64>>,
    commands: mpsc::UnboundedSender<Command>,
}

impl WatchHub {
    /// Starts the hub's stream on `client`; `health` hears of its failures.
    /// `sentinel`: a key no one writes, watched to keep the stream open.
    pub(crate) fn start(client: Client, health: EndpointHealth, sentinel: Vec<u8>) -> Arc<Self> {
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(client, health, sentinel, receiver).instrument(info_span!("etcd_watch_hub")));
        Arc::new(Self { commands, next_id: AtomicI64::new(FIRST_ID), task })
    }

    /// Watches for the deletion of `key` at any revision from
    /// `start_revision` on (a deletion that already happened since then is
    /// reported at once).
    ///
    /// etcd delivers events to a watch that starts at or before its current
    /// revision from a sync loop that runs every 100 ms; see
    /// [`deletion_from_now`](Self::deletion_from_now) for waits where that
    /// delay matters.
    pub(crate) fn deletion(&self, key: impl Into<Vec<u8>>, start_revision: i64) -> Watch {
        self.register(key.into(), start_revision, None)
    }

    /// Watches for the deletion of `key` from the revision at which etcd
    /// creates the watch, so events arrive without the sync loop's delay;
    /// [`Watch::created`] tells that revision, so the caller can check for a
    /// deletion that happened before it.
    pub(crate) fn deletion_from_now(&self, key: impl Into<Vec<u8>>) -> Watch {
        let (created, revision) = oneshot::channel();
        let mut watch = self.register(key.into(), 0, Some(created));
        watch.created = Some(revision);
        watch
    }

    /// Watches every change of the keys in `start..end` from
    /// `start_revision` on (only deletions if `deletions_only`). After a
    /// reconnect the watch goes on after the last change it reported.
    pub(crate) fn changes(
        &self,
        (start, end): (Vec<u8>, Vec<u8>),
        start_revision: i64,
        deletions_only: bool,
    ) -> ChangeWatch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, changes) = mpsc::unbounded_channel();
        let active = Active {
            key: start,
            range_end: Some(end),
            start_revision: start_revision.max(1),
            notify: Notify::Changes { sender, deletions_only },
            created: None,
        };
        // If the hub is gone, `changes` reports the closed channel.
        let _ = self.commands.send(Command::Watch { id, active });
        ChangeWatch { id, changes, commands: self.commands.clone() }
    }

    fn register(&self, key: Vec<u8>, start_revision: i64, created: Option<oneshot::Sender<i64>>) -> Watch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (notify, end) = oneshot::channel();
        let active = Active { key, range_end: None, start_revision, notify: Notify::Deletion(notify), created };
        // If the hub is gone, `end` reports the closed channel.
        let _ = self.commands.send(Command::Watch { id, active });
        Watch { id, end, created: None, commands: self.commands.clone() }
    }
}

impl Drop for WatchHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    /// Completes when the watch ends; `None` if the hub stopped.
    pub(crate) async fn ended(&mut self) -> Option<WatchEnd> {
        (&mut self.end).await.ok()
    }

    /// The revision at which etcd created a watch from
    /// [`WatchHub::deletion_from_now`]; `None` if the hub stopped first.
    pub(crate) async fn created(&mut self) -> Option<i64> {
        (self.created.as_mut()?).await.ok()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Cancel { id: self.id });
    }
}

impl ChangeWatch {
    /// The next changes; `None` if the hub stopped.
    ///
    /// Cancel safe.
    pub(crate) async fn next(&mut self) -> Option<Changes> {
        self.changes.recv().await
    }
}

impl Drop for ChangeWatch {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Cancel { id: self.id });
    }
}

/// The sentinel watch keeps the stream open while nothing else is watched.
const SENTINEL_ID: i64 = 1;
const FIRST_ID: i64 = 2;

/// Keeps the stream open and every active watch on it. A stream that
/// breaks, or cannot be opened, may have met a member that died: the
/// members are checked (a dead one leaves the balancer) before it is opened
/// again, at once if one was removed.
async fn run(
    client: Client,
    health: EndpointHealth,
    sentinel: Vec<u8>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut active: HashMap<i64, Active> = HashMap::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let sent = Instant::now();
        let opened =
            client.watch_client().watch(sentinel.clone(), Some(WatchOptions::new().with_watch_id(SENTINEL_ID))).await;
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(error) => {
                debug!(%error, "cannot open the watch stream; retrying");
                if crate::error::is_transport(&error) && health.failed(sent).await {
                    continue;
                }
                if !drain_cancels(&mut commands, &mut active, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let opened = sent;
        backoff = Duration::from_millis(50);
        let mut healthy = true;
        for (id, watch) in &active {
            healthy &= create(&mut stream, *id, watch).await;
        }
        while healthy {
            tokio::select! {
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Watch { id, active: watch }) => {
                        healthy = create(&mut stream, id, &watch).await;
                        active.insert(id, watch);
                    }
                    Some(Command::Cancel { id }) => {
                        if active.remove(&id).is_some() {
                            healthy = stream.cancel(id).await.is_ok();
                        }
                    }
                },
                message = stream.message() => match message {
                    Ok(Some(response)) => {
                        let id = response.watch_id();
                        if let Some(watch) = active.get_mut(&id) {
                            if response.created() {
                                let revision = response.header().map(|h| h.revision()).unwrap_or_default();
                                watch.created_at(revision);
                            }
                            if let Some(end) = deliver(watch, &response)
                                && let Some(watch) = active.remove(&id)
                            {
                                if let Notify::Deletion(notify) = watch.notify {
                                    let _ = notify.send(end);
                                }
                                if !response.canceled() {
                                    healthy = stream.cancel(id).await.is_ok();
                                }
                            }
                        }
                    }
                    Ok(None) | Err(_) => healthy = false,
                },
            }
        }
        debug!(watches = active.len(), "watch stream broke; reopening it");
        health.failed(opened).await;
        active.retain(|_, watch| !watch.notify.is_closed());
    }
}

/// Hands a response to the changes watch it is for; for a deletion watch,
/// only says how it ended. `Some` when the watch is over.
fn deliver(watch: &mut Active, response: &WatchResponse) -> Option<WatchEnd> {
    let broken = response.compact_revision() > 0 || response.canceled();
    match &watch.notify {
        Notify::Deletion(_) => {
            let deleted = response.events().iter().any(|e| e.event_type() == EventType::Delete);
            if deleted { Some(WatchEnd::Deleted) } else { broken.then_some(WatchEnd::Compacted) }
        }
        Notify::Changes { sender, .. } => {
            if broken {
                let _ = sender.send(Changes::Broken);
                return Some(WatchEnd::Compacted);
            }
            let changes: Vec<Change> = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    // A reconnect goes on after the last change reported.
                    watch.start_revision = watch.start_revision.max(kv.mod_revision() + 1);
                    Some(Change { key: kv.key().to_vec(), deleted: event.event_type() == EventType::Delete })
                })
                .collect();
            if !changes.is_empty() {
                let _ = sender.send(Changes::Events(changes));
            }
            None
        }
    }
}

async fn create(stream: &mut WatchStream, id: i64, watch: &Active) -> bool {
    let mut options = WatchOptions::new().with_watch_id(id);
    if watch.start_revision > 0 {
        options = options.with_start_revision(watch.start_revision);
    }
    if let Some(end) = &watch.range_end {
        options = options.with_range(end.clone());
    }
    if let Notify::Changes { deletions_only: true, .. } = watch.notify {
        options = options.with_filters([WatchFilterType::NoPut]);
    }
    stream.watch(watch.key.clone(), Some(options)).await.is_ok()
}

/// Waits `pause` while still honouring cancellations; false when the hub's
/// owner is gone.
async fn drain_cancels(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    active: &mut HashMap<i64, Active>,
    pause: Duration,
) -> bool {
    let pause = sleep(pause);
    tokio::pin!(pause);
    loop {
        tokio::select! {
            () = &mut pause => return true,
            command = commands.recv() => match command {
                None => return false,
                Some(Command::Cancel { id }) => { active.remove(&id); }
                Some(Command::Watch { id, active: watch }) => {
                    active.insert(id, watch);
                }
            },
        }
    }
}
