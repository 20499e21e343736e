//! The lock recipe: Consul's own `api.Lock`, with fencing and cancel safety.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lock_core::{
    Capabilities, ClientSession, DistributedLock, FencingToken, LeaderStream, Lease, LockError, LockInfo, LockKey,
    LockMode, LockOptions, LostReason, SessionSlot,
};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::api::{Api, KvEntry, MAX_BLOCKING_WAIT, TxnKv, TxnOutcome};
use crate::claims::{Claim, Claims};
use crate::election;
use crate::in_flight::{Attempt, InFlight, Written};
use crate::monitor::{Held, Monitors};
use crate::reader_writer::{ReaderWriter, RwGrant};
use crate::scene::{RW_FLAG, tree};
use crate::semaphore::{SemGrant, Semaphores};
use crate::semaphore_record::{SEMAPHORE_FLAG, recipe_of};
use crate::session::Session;
use crate::waiting::pause_or_give_up;
use crate::{BACKEND, ConsulConfig, error, native_lock_key, native_lock_prefix};

/// The `Flags` value `api.Lock` gives its lock keys (`LockFlagValue` in
/// Consul's Go API); a key with other flags is not a lock and is left alone.
pub const LOCK_FLAG: u64 = 0x2ddc_cbc0_58a5_0c18;

/// A distributed lock on Consul, compatible with Consul's own lock
/// (`api.Lock`, used by `consul lock`): the lock on key `k` is the KV key
/// [`native_lock_key`]`(prefix, k)`, acquired with the client's session and
/// carrying `api.Lock`'s flag value, so a Go service or a `consul lock`
/// script excludes a Rust service on the same lock and back.
///
/// * **Fenced** by the `ModifyIndex` of the acquiring write, a raft index
///   that increases across the datacenter, also when the key was deleted and
///   created again between two grants (`LockIndex` would not).
/// * **One session per client** (Behavior `delete`, so a dead holder's keys
///   go with its session), renewed in the background however many locks it
///   holds. When Consul invalidates it (TTL lapsed, node health failed,
///   destroyed by an operator), every guard of the client reports lost at
///   once and the next acquisition creates a new session.
/// * **Waiting** uses blocking queries on the key, never polling, except
///   during a lock delay (Consul then refuses the key for a while without any
///   change to wait on), which is retried with a short backoff.
/// * **Not FIFO**: Consul has no queue; whoever asks first after a release
///   gets the lock. [`Capabilities::fifo`] says so.
/// * **Cancel safe**: an acquisition dropped mid-flight finishes in the
///   background and gives back what it got.
/// * **Reader/writer locks** in [`LockMode::Read`] and [`LockMode::Write`],
///   on contender keys beside the lock key, which then becomes their gate
///   (flags [`RW_FLAG`]): `consul lock` refuses the prefix
///   meanwhile, and a mutex acquisition queues behind the readers and
///   writers.
/// * **Counting semaphores** in [`LockMode::Semaphore`], key for key
///   Consul's `api.Semaphore` (`consul lock -n N`), each place on a session
///   of its own; another limit, or another recipe on the prefix, is a
///   [`LockError::Conflict`].
/// * **Leader election**: a mutex acquisition with a value
///   ([`LockOptions::value`]) writes it as the lock key's value (Consul's
///   documented leader-election pattern), `proclaim` rewrites it, and
///   [`Locks::observe`](lock_core::Locks::observe) follows the leader with
///   blocking queries.
///
/// ```no_run
/// # async fn run() -> Result<(), lock_core::LockError> {
/// use lock_consul::{ConsulConfig, ConsulLock};
/// use lock_core::Locks;
///
/// let locks = Locks::new(ConsulLock::connect(ConsulConfig::from_env()).await?);
/// let guard = locks.lock("jobs/nightly").acquire().await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ConsulLock {
    config: ConsulConfig,
    api: Api,
    sessions: SessionSlot<Session>,
    claims: Arc<Claims>,
    monitors: Monitors,
}

/// What a Consul lease remembers about its grant.
#[derive(Debug)]
struct ConsulGrant {
    kv_key: String,
    /// The grant's token: the index of the write that created the key.
    token: u64,
    /// The key's `ModifyIndex` as our last write left it (a published
    /// value changes it).
    modify_index: std::sync::atomic::AtomicU64,
    session: Arc<Session>,
    stop_monitor: CancellationToken,
    /// This client's claim on the key, held until the release is done.
    claim: std::sync::Mutex<Option<Claim>>,
}

/// What the lock key's value records about the holder.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Holder {
    pub(crate) owner: String,
    /// Unique per attempt, so a cleanup recognises its own write.
    pub(crate) attempt: String,
    pub(crate) since_ms: u64,
}

impl Holder {
    fn new(owner: &str) -> Self {
        let since_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
        Self {
            owner: owner.to_owned(),
            attempt: uuid::Uuid::new_v4().simple().to_string(),
            since_ms: u64::try_from(since_ms).unwrap_or(u64::MAX),
        }
    }

    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        serde_json::from_slice(value).ok()
    }
}

/// A won acquisition: the entry Consul wrote and when the write was sent.
struct Won {
    entry: KvEntry,
    sent: Instant,
}

/// What one acquisition step found.
enum Step {
    /// Ours.
    Granted(Box<Won>),
    /// The gate of a reader/writer lock: queue behind its readers and writers.
    Queued,
    /// Held by another session; the entry and the index to block on.
    Held(u64),
    /// Free but refused for a while after its holder's session ended.
    LockDelay,
    /// Free, or held by a stale session of ours: try again with this entry.
    Retry(Option<KvEntry>),
    /// Consul no longer knows our session (it ended before we noticed).
    SessionGone,
}

impl ConsulLock {
    /// Connects to the Consul agent and creates the client's session now, so
    /// an unreachable agent, a refused ACL token or a TTL the server does not
    /// allow is reported here.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for a malformed configuration, an
    /// unusable CA file or a session TTL Consul refuses;
    /// [`LockError::Unavailable`] when the agent does not answer in time;
    /// [`LockError::Backend`] when Consul refuses (e.g. ACL denied).
    pub async fn connect(config: ConsulConfig) -> Result<Self, LockError> {
        config.validate()?;
        let api = Api::new(&config).map_err(|e| error::map(None, e))?;
        let monitors = Monitors::new(api.clone(), config.prefix_value().to_owned());
        let lock = Self { config, api, sessions: SessionSlot::default(), claims: Arc::default(), monitors };
        lock.session(None).await?;
        Ok(lock)
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ConsulConfig {
        &self.config
    }

    /// The id of the client's current session.
    pub async fn session_id(&self) -> Option<String> {
        self.sessions.current().await.map(|session| session.id.clone())
    }

    /// The `rs-consul` client this lock talks through, on the same
    /// connection pool, for the application's own KV or catalog calls.
    pub fn consul(&self) -> &rs_consul::Consul {
        self.api.consul()
    }

    /// The client's live session, creating a new one when Consul has
    /// invalidated the last (or there was none).
    async fn session(&self, key: Option<&LockKey>) -> Result<Arc<Session>, LockError> {
        self.sessions.get_or_start(|| Session::start(&self.api, &self.config, key)).await
    }

    fn lock_value(&self, key: &LockKey, holder: &Holder) -> Result<Vec<u8>, LockError> {
        serde_json::to_vec(holder).map_err(|e| LockError::backend(BACKEND, Some(key), e.to_string()))
    }

    /// One try at the key. `seen` is the last read of it (`None`: assume
    /// absent, the fast path of one request). The key is always created
    /// anew (a leftover one deleted in the same transaction), so the
    /// grant's index is the key's `CreateIndex`, which outlives a new
    /// published value.
    async fn step(
        &self,
        key: &LockKey,
        kv_key: &str,
        session: &Session,
        options: &LockOptions,
        seen: Option<&KvEntry>,
    ) -> Result<Step, LockError> {
        if let Some(entry) = seen {
            if entry.flags == RW_FLAG {
                return Ok(Step::Queued);
            }
            if entry.flags != LOCK_FLAG {
                return Err(not_a_lock(key, kv_key, entry.flags));
            }
            if session.held_by_other(entry.holder()) {
                return Ok(Step::Held(entry.modify_index));
            }
        }
        let holder = Holder::new(options.owner_value());
        // An election's value is the key's value, as Consul's leader
        // election pattern has it; otherwise distlock's holder record.
        let (value, written) = match options.value_value() {
            Some(value) => (value.as_bytes().to_vec(), Written::Value(value.as_bytes().to_vec())),
            None => (self.lock_value(key, &holder)?, Written::Record(holder.attempt)),
        };
        let mut operations = match seen {
            None => vec![TxnKv::check_not_exists(kv_key)],
            Some(entry) => vec![TxnKv::check_index(kv_key, entry.modify_index), TxnKv::delete(kv_key)],
        };
        let lock_op = operations.len();
        operations.push(TxnKv::lock(kv_key, &value, LOCK_FLAG, &session.id));
        let sent = Instant::now();
        let attempt = Attempt { claims: Arc::clone(&self.claims), written };
        let in_flight = InFlight::start(self.api.clone(), kv_key.to_owned(), session.id.clone(), attempt, operations);
        match in_flight.finish().await {
            Ok(TxnOutcome::Applied(entries)) => match entries.into_iter().last().map(|keyed| keyed.entry) {
                Some(entry) => Ok(Step::Granted(Box::new(Won { entry, sent }))),
                None => Err(LockError::backend(BACKEND, Some(key), "the lock transaction returned no entry")),
            },
            Ok(TxnOutcome::RolledBack(errors)) => {
                // A token without write on the key: no retry can help, and
                // the key is not held by anyone for all that.
                if let Some(denied) = errors.iter().find(|e| e.what.to_lowercase().contains("permission denied")) {
                    return Err(LockError::backend(
                        BACKEND,
                        Some(key),
                        format!(
                            "Consul refused the lock write on {kv_key}: {} (the ACL token needs key write on it)",
                            denied.what
                        ),
                    ));
                }
                if errors.iter().any(|e| e.op_index == lock_op && e.what.contains("lock delay")) {
                    return Ok(Step::LockDelay);
                }
                if errors.iter().any(|e| e.op_index == lock_op && e.what.contains("invalid session")) {
                    session.ended().fire(LostReason::SessionEnded);
                    return Ok(Step::SessionGone);
                }
                debug!(%key, ?errors, "lock transaction rolled back; reading the key");
                let (entry, _) =
                    self.api.read_key(kv_key, 0, Duration::ZERO).await.map_err(|e| error::map(Some(key), e))?;
                match &entry {
                    Some(found) if found.flags == RW_FLAG => Ok(Step::Queued),
                    Some(found) if found.flags != LOCK_FLAG => Err(not_a_lock(key, kv_key, found.flags)),
                    Some(found) if session.held_by_other(found.holder()) => Ok(Step::Held(found.modify_index)),
                    _ => Ok(Step::Retry(entry)),
                }
            }
            Err(e) => Err(error::map(Some(key), e)),
        }
    }

    /// Waits for the key held at `index` to change, or for the session to
    /// end or the deadline to pass; returns the new entry.
    async fn wait_for_change(
        &self,
        key: &LockKey,
        kv_key: &str,
        session: &Session,
        mut index: u64,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<Option<KvEntry>, LockError> {
        let Some(_permit) = self.monitors.blocking_wait_permit() else {
            return self.wait_in_prefix(key, kv_key, session, index, deadline, started).await;
        };
        let mut pause = Duration::from_millis(100);
        loop {
            let wait = deadline
                .map_or(MAX_BLOCKING_WAIT, |d| d.saturating_duration_since(Instant::now()).min(MAX_BLOCKING_WAIT));
            let read = tokio::select! {
                read = self.api.read_key(kv_key, index.max(1), wait.max(Duration::from_millis(1))) => read,
                _ = session.ended().fired() => return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
                () = lock_core::deadline_passed(deadline) => return Err(LockError::timeout(BACKEND, key, started)),
            };
            match read {
                Ok((entry, next)) => {
                    // Free, ours, or no longer a plain lock (the gate of a
                    // reader/writer lock): the next step decides.
                    let native_held =
                        entry.as_ref().is_some_and(|e| e.flags == LOCK_FLAG && session.held_by_other(e.holder()));
                    if !native_held {
                        return Ok(entry);
                    }
                    index = next;
                }
                // Consul unreachable or leaderless: keep waiting (the session
                // may well live on) until it is known ended or the deadline.
                Err(e) if e.is_transient() => {
                    debug!(%key, error = %e, "waiting: Consul did not answer; retrying");
                    tokio::select! {
                        () = sleep(pause) => {}
                        _ = session.ended().fired() => return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
                        () = lock_core::deadline_passed(deadline) => return Err(LockError::timeout(BACKEND, key, started)),
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                    index = 1;
                }
                Err(e) => return Err(error::map(Some(key), e)),
            }
        }
    }

    /// [`Self::wait_for_change`] for a waiter beyond the client's own
    /// blocking queries: woken by the shared prefix watch when a read newer
    /// than `index` shows the key free (absent, unlocked, or our stale key).
    async fn wait_in_prefix(
        &self,
        key: &LockKey,
        kv_key: &str,
        session: &Session,
        index: u64,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<Option<KvEntry>, LockError> {
        let mut snapshots = self.monitors.prefix_snapshots();
        loop {
            let free = snapshots.borrow_and_update().as_deref().is_some_and(|(read_at, entries)| {
                *read_at > index
                    && entries
                        .get(kv_key)
                        .is_none_or(|seen| seen.flags != LOCK_FLAG || !session.held_by_other(seen.holder.as_deref()))
            });
            if free {
                // Only a hint: the next step reads or writes the key itself.
                return Ok(None);
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() {
                    snapshots = self.monitors.prefix_snapshots();
                },
                _ = session.ended().fired() => return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
                () = lock_core::deadline_passed(deadline) => return Err(LockError::timeout(BACKEND, key, started)),
            }
        }
    }

    /// Turns a granted entry into a lease and starts watching it.
    fn grant(
        &self,
        key: &LockKey,
        options: &LockOptions,
        session: Arc<Session>,
        claim: Claim,
        kv_key: String,
        won: &Won,
    ) -> Lease {
        let Won { entry, sent } = won;
        let loss = lock_core::LossSignal::new();
        let stop = CancellationToken::new();
        // The write created the key: its index is the key's CreateIndex.
        self.monitors.watch(Held {
            kv_key: kv_key.clone(),
            token: entry.create_index,
            session: Arc::clone(&session),
            loss: loss.clone(),
            stop: stop.clone(),
        });
        debug!(%key, kv_key, token = entry.modify_index, "granted");
        let ttl = session.ttl();
        // The lock lives as long as the session, whose TTL runs from its
        // last confirmed renewal, which may be older than the lock write.
        let confirmed_at = session.confirmed_before(*sent);
        let grant = ConsulGrant {
            kv_key,
            token: entry.create_index,
            modify_index: std::sync::atomic::AtomicU64::new(entry.modify_index),
            session,
            stop_monitor: stop,
            claim: std::sync::Mutex::new(Some(claim)),
        };
        Lease::new(
            key.clone(),
            FencingToken::new(entry.modify_index),
            options.owner_value().to_owned(),
            ttl,
            confirmed_at,
            loss,
            Arc::new(grant),
        )
    }

    /// The reader/writer recipe on this client's connection, session and watches.
    fn reader_writer(&self) -> ReaderWriter<'_> {
        ReaderWriter { api: &self.api, config: &self.config, sessions: &self.sessions, monitors: &self.monitors }
    }

    /// The semaphore recipe on this client's connection and watches.
    fn semaphores(&self) -> Semaphores<'_> {
        Semaphores { api: &self.api, config: &self.config, monitors: &self.monitors }
    }

    fn check_options(&self, options: &LockOptions) -> Result<(), LockError> {
        options.validate(BACKEND, &self.capabilities())
    }
}

/// The error for a lock key that is no plain lock: a semaphore's record is
/// a conflict (the prefix is in use as a semaphore, as `consul lock` says);
/// anything else is not a lock at all, and left alone.
fn not_a_lock(key: &LockKey, kv_key: &str, flags: u64) -> LockError {
    if flags == SEMAPHORE_FLAG {
        return LockError::conflict(
            BACKEND,
            key,
            format!("Existing key does not match lock use: {kv_key:?} is {}", recipe_of(flags)),
        );
    }
    LockError::backend(
        BACKEND,
        Some(key),
        format!("the Consul key {kv_key:?} exists but is not a lock (flags {flags:#x}, a lock has {LOCK_FLAG:#x})"),
    )
}

fn grant_of(lease: &Lease) -> Result<&ConsulGrant, LockError> {
    lease.backend_data_for::<ConsulGrant>(BACKEND)
}

impl Drop for ConsulLock {
    fn drop(&mut self) {
        // Frees at once whatever the session still holds, instead of after
        // its TTL; best effort, only inside a runtime.
        if let (Some(session), Ok(runtime)) = (self.sessions.current_now(), tokio::runtime::Handle::try_current())
            && !session.ended().is_fired()
        {
            let api = self.api.clone();
            runtime.spawn(async move {
                if let Err(error) = api.destroy_session(&session.id).await {
                    debug!(%error, "destroying the session of a dropped client failed; it expires by TTL");
                }
            });
        }
    }
}

#[async_trait]
impl DistributedLock for ConsulLock {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // The lock TTL is the session TTL. Consul may keep an unrenewed
        // session up to twice its TTL, then refuses the key for the lock delay.
        let ttl = self.config.session_ttl_value();
        Capabilities::fixed_ttl(ttl)
            .with_fifo(false)
            .with_expiry_slack(ttl + self.config.effective_lock_delay() + Duration::from_secs(2))
            .with_modes(LockMode::WITH_SEMAPHORE)
            .with_values(true)
    }

    async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        self.check_options(options)?;
        match options.mode_value() {
            LockMode::Exclusive => {}
            LockMode::Semaphore { .. } => return self.semaphores().acquire(key, options, deadline).await,
            _ => return self.reader_writer().acquire(key, options, deadline, None).await,
        }
        let kv_key = native_lock_key(self.config.prefix_value(), key);
        let claim =
            self.claims.claim(&kv_key, deadline).await.ok_or_else(|| LockError::timeout(BACKEND, key, started))?;
        let mut session = self.session(Some(key)).await?;
        let mut seen: Option<KvEntry> = None;
        let mut delay_pause = Duration::from_millis(100);
        let mut answered = false;
        let mut waited = false;
        let mut renewed_session = false;
        loop {
            // A session that ended while we waited makes the waiter lost
            // (the contract); the client gets a new session next time.
            if session.ended().is_fired() {
                return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded));
            }
            let step = match self.step(key, &kv_key, &session, options, seen.as_ref()).await {
                Ok(step) => step,
                Err(LockError::Unavailable { .. }) if answered => {
                    // Waiting through an outage, as in wait_for_change.
                    pause_or_give_up(key, &session, &mut delay_pause, deadline, started).await?;
                    seen = None;
                    continue;
                }
                Err(error) => return Err(error),
            };
            answered = true;
            match step {
                Step::Granted(won) => return Ok(self.grant(key, options, session, claim, kv_key, &won)),
                Step::Held(index) => {
                    waited = true;
                    seen = self.wait_for_change(key, &kv_key, &session, index, deadline, started).await?;
                }
                Step::LockDelay => {
                    pause_or_give_up(key, &session, &mut delay_pause, deadline, started).await?;
                    seen = None;
                }
                Step::Queued => {
                    debug!(%key, "readers or writers hold the key; queueing behind them");
                    return self.reader_writer().acquire(key, options, deadline, Some(claim)).await;
                }
                Step::Retry(entry) => seen = entry,
                // Ended before this acquisition began: start over on a new
                // session. Ended while we waited: handled at the loop's top.
                Step::SessionGone if !waited && !renewed_session => {
                    debug!(%key, "the session had ended; creating a new one");
                    renewed_session = true;
                    session = self.session(Some(key)).await?;
                }
                Step::SessionGone => return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(LockError::timeout(BACKEND, key, started));
            }
        }
    }

    async fn try_acquire(&self, key: &LockKey, options: &LockOptions) -> Result<Option<Lease>, LockError> {
        self.check_options(options)?;
        match options.mode_value() {
            LockMode::Exclusive => {}
            LockMode::Semaphore { .. } => return self.semaphores().try_acquire(key, options).await,
            _ => return self.reader_writer().try_acquire(key, options, None).await,
        }
        let kv_key = native_lock_key(self.config.prefix_value(), key);
        let Some(claim) = self.claims.try_claim(&kv_key) else { return Ok(None) };
        let mut session = self.session(Some(key)).await?;
        let mut seen: Option<KvEntry> = None;
        // The fast path, then at most one retry against a key that exists
        // unlocked (an api.Lock leftover, or a stale key of our session), or
        // on a new session if ours had ended.
        for _ in 0..3 {
            match self.step(key, &kv_key, &session, options, seen.as_ref()).await? {
                Step::Granted(won) => {
                    return Ok(Some(self.grant(key, options, session, claim, kv_key, &won)));
                }
                Step::Held(_) | Step::LockDelay => return Ok(None),
                Step::Queued => return self.reader_writer().try_acquire(key, options, Some(claim)).await,
                Step::Retry(entry) => seen = entry,
                Step::SessionGone => session = self.session(Some(key)).await?,
            }
        }
        Ok(None)
    }

    async fn renew(&self, lease: &Lease) -> Result<Instant, LockError> {
        let session = if let Some(grant) = lease.backend_data::<RwGrant>() {
            &grant.session
        } else if let Some(grant) = lease.backend_data::<SemGrant>() {
            &grant.session
        } else {
            &grant_of(lease)?.session
        };
        lease.ensure_held(BACKEND, Some(session.ended()))?;
        // The session carries every lock of the client; the key watch
        // reports a lock taken away by itself.
        let confirmed = session.renew(&self.api, lease.key()).await;
        if let Err(LockError::Lost { reason, .. }) = &confirmed {
            lease.loss_signal().fire(reason.clone());
        }
        lease.ensure_held(BACKEND, Some(session.ended()))?;
        confirmed
    }

    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        if let Some(grant) = lease.backend_data::<RwGrant>() {
            return self.reader_writer().release(lease, grant).await;
        }
        if let Some(grant) = lease.backend_data::<SemGrant>() {
            return self.semaphores().release(lease, grant).await;
        }
        let grant = grant_of(lease)?;
        if lease.is_released() {
            return Err(LockError::NotHeld { backend: BACKEND, key: lease.key().clone() });
        }
        grant.stop_monitor.cancel();
        let key = lease.key();
        let ours = Ours { session: &grant.session.id, token: grant.token, modify_index: grant.current_index() };
        let outcome = release_key(&self.api, key, &grant.kv_key, ours).await;
        let claim = grant.claim.lock().unwrap_or_else(|p| p.into_inner()).take();
        match outcome {
            Ok(Released::Clean) if !lease.loss_signal().is_fired() => {
                lease.mark_released();
                drop(claim);
                Ok(())
            }
            Ok(_) => {
                // Gone, taken, or changed from outside: the lock was lost.
                let reason = lease.loss_signal().reason().unwrap_or(LostReason::Revoked);
                lease.loss_signal().fire(reason.clone());
                drop(claim);
                Err(LockError::lost(BACKEND, key, reason))
            }
            Err(error) => {
                // Unanswered: while the session lives, the key would hold
                // the lock for good; keep deleting in the background.
                let (api, key, kv_key, session) =
                    (self.api.clone(), key.clone(), grant.kv_key.clone(), Arc::clone(&grant.session));
                let (token, modify_index) = (grant.token, grant.current_index());
                tokio::spawn(async move {
                    let ours = Ours { session: &session.id, token, modify_index };
                    release_until_done(&api, &key, &kv_key, ours, &session).await;
                    drop(claim);
                });
                Err(error)
            }
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, LockError> {
        Ok(self.holders(key).await?.into_iter().next())
    }

    async fn holders(&self, key: &LockKey) -> Result<Vec<LockInfo>, LockError> {
        let lock_prefix = native_lock_prefix(self.config.prefix_value(), key.as_str());
        let (entries, index) =
            self.api.read_prefix(&tree(&lock_prefix), 0, Duration::ZERO).await.map_err(|e| error::map(Some(key), e))?;
        Ok(election::holders_in_tree(&lock_prefix, entries, index))
    }

    async fn proclaim(&self, lease: &Lease, value: &str) -> Result<(), LockError> {
        let Some(grant) = lease.backend_data::<ConsulGrant>() else {
            return Err(LockError::InvalidOptions {
                backend: BACKEND,
                message: format!(
                    "lock {:?}: only a mutex holder (a leader) publishes a value here, not a {} holder",
                    lease.key().as_str(),
                    lease.mode()
                ),
            });
        };
        lease.ensure_held(BACKEND, Some(grant.session.ended()))?;
        match election::proclaim(&self.api, lease.key(), &grant.kv_key, &grant.session, value).await {
            Ok(index) => {
                grant.modify_index.fetch_max(index, std::sync::atomic::Ordering::AcqRel);
                Ok(())
            }
            Err(LockError::Lost { reason, .. }) => {
                let reason = if grant.session.ended().is_fired() { LostReason::SessionEnded } else { reason };
                lease.loss_signal().fire(reason);
                let reason = lease.loss_signal().reason().unwrap_or(LostReason::Revoked);
                Err(LockError::lost(BACKEND, lease.key(), reason))
            }
            Err(other) => Err(other),
        }
    }

    fn watch_leader(&self, key: &LockKey) -> Option<LeaderStream> {
        let lock_prefix = native_lock_prefix(self.config.prefix_value(), key.as_str());
        Some(election::watch(self.api.clone(), key.clone(), lock_prefix))
    }
}

impl ConsulGrant {
    /// The key's `ModifyIndex` as our last known write left it.
    fn current_index(&self) -> u64 {
        self.modify_index.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Our grant of a key, as a release looks for it.
#[derive(Debug, Clone, Copy)]
struct Ours<'a> {
    session: &'a str,
    /// The key's `CreateIndex` at the grant.
    token: u64,
    /// Its `ModifyIndex` after our last known write.
    modify_index: u64,
}

/// How a release ended.
#[derive(Debug, PartialEq, Eq)]
enum Released {
    /// Our untouched key was deleted.
    Clean,
    /// The key was no longer ours (gone, or another session's).
    NotOurs,
    /// Ours by its session, but written anew from outside; deleted anyway.
    Tampered,
}

/// Deletes our key: at once if it is as our last write left it; otherwise,
/// if it still names our session, deletes it too (this client holds the
/// only claim on it, so nothing else of ours uses it): our grant (a value
/// we published whose answer was lost changed it) if it still has the
/// grant's `CreateIndex`, else a key that was deleted and written again
/// from outside.
async fn release_key(api: &Api, key: &LockKey, kv_key: &str, ours: Ours<'_>) -> Result<Released, LockError> {
    if api.delete_if_unchanged(kv_key, ours.modify_index).await.map_err(|e| error::map(Some(key), e))? {
        return Ok(Released::Clean);
    }
    for _ in 0..3 {
        let (entry, _) = api.read_key(kv_key, 0, Duration::ZERO).await.map_err(|e| error::map(Some(key), e))?;
        // Our session's reader/writer gate is not our mutex's key.
        let ours_now = |e: &KvEntry| e.holder() == Some(ours.session) && e.flags == LOCK_FLAG;
        let Some(entry) = entry.filter(ours_now) else { return Ok(Released::NotOurs) };
        if api.delete_if_unchanged(kv_key, entry.modify_index).await.map_err(|e| error::map(Some(key), e))? {
            if entry.create_index == ours.token {
                return Ok(Released::Clean);
            }
            warn!(%key, kv_key, "our lock key was written anew from outside while held; deleted it");
            return Ok(Released::Tampered);
        }
    }
    Ok(Released::NotOurs)
}

/// Retries [`release_key`] with backoff until it is answered or the session
/// has ended (which deletes the key too), for about a minute at most.
async fn release_until_done(api: &Api, key: &LockKey, kv_key: &str, ours: Ours<'_>, session: &Session) {
    let mut pause = Duration::from_millis(100);
    for _ in 0..35 {
        tokio::select! {
            () = sleep(pause) => {}
            _ = session.ended().fired() => return,
        }
        match release_key(api, key, kv_key, ours).await {
            Ok(_) => return,
            Err(error) => debug!(kv_key, %error, "releasing our key failed; retrying"),
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
