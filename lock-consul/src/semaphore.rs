//! Counting semaphores, key for key Consul's own `api.Semaphore` (and so
//! `consul lock -n N PREFIX`), with fencing and cancel safety; the layout
//! and its rules are in [`semaphore_record`](crate::semaphore_record).
//!
//! `api.Semaphore` keeps one contender key per session, so each acquisition
//! gets a session of its own, created with it and destroyed with it, as
//! `api.Semaphore` creates one per semaphore (Behavior `delete`): tasks of
//! one client then take several places of one key apart, and destroying
//! the session settles an acquisition whose last write went unanswered,
//! since every write of ours needs the session (a late one fails once it
//! is destroyed). The token of a place is the `ModifyIndex` of the
//! check-and-set on `.lock` that admitted it: a raft index written after
//! every earlier admission, so above every earlier grant's token.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    ClientSession, FencingToken, Lease, LockError, LockKey, LockMode, LockOptions, LossSignal, LostReason,
};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::api::{Api, ApiError, MAX_BLOCKING_WAIT, TxnError, TxnKv, TxnOutcome};
use crate::monitor::Monitors;
use crate::reader_writer::mentions;
use crate::rw_monitor::ChangeFeed;
use crate::scene::{gate_key, tree};
use crate::semaphore_record::{Move, Places, SEMAPHORE_FLAG, Seeker, Ticket};
use crate::session::Session;
use crate::waiting::pause_or_give_up;
use crate::{BACKEND, ConsulConfig, error, native_lock_prefix};

/// How many steps a `try_acquire` takes before calling the semaphore contended.
const TRY_STEPS: usize = 6;

/// How long giving up an acquisition waits for its clean-up before leaving
/// the rest to the background.
const WITHDRAW_WAIT: Duration = Duration::from_secs(2);

/// How long after the grant a held place's watch sends its first query (a
/// change in between answers it at once: it starts from the grant's index).
const FIRST_WATCH_DELAY: Duration = Duration::from_millis(100);

/// The semaphore recipe, on one client's connection and watches.
pub(crate) struct Semaphores<'a> {
    pub(crate) api: &'a Api,
    pub(crate) config: &'a ConsulConfig,
    pub(crate) monitors: &'a Monitors,
}

/// What a lease of a semaphore place remembers about its grant.
#[derive(Debug)]
pub(crate) struct SemGrant {
    lock_prefix: String,
    contender_key: String,
    token: u64,
    /// The place's own session.
    pub(crate) session: Arc<Session>,
    stop_watch: CancellationToken,
}

/// How long an acquisition may wait.
#[derive(Debug, Clone, Copy)]
enum Patience {
    Once,
    Until(Option<Instant>),
}

/// A place taken: its token, and when the admitting write was sent.
struct Won {
    token: u64,
    sent: Instant,
}

impl Semaphores<'_> {
    /// Waits for a place of `key`, or until `deadline`.
    pub(crate) async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        match self.contend(key, options, Patience::Until(deadline), started).await? {
            Some((place, won)) => Ok(self.grant(key, options, place, &won)),
            None => Err(LockError::timeout(BACKEND, key, started)),
        }
    }

    /// A place of `key` if one is free now.
    pub(crate) async fn try_acquire(&self, key: &LockKey, options: &LockOptions) -> Result<Option<Lease>, LockError> {
        let won = self.contend(key, options, Patience::Once, Instant::now()).await?;
        Ok(won.map(|(place, won)| self.grant(key, options, place, &won)))
    }

    /// Gives the place up: our holder entry out of the record (the record
    /// deleted if no live holder is left), our contender key deleted, then
    /// the place's session destroyed.
    pub(crate) async fn release(&self, lease: &Lease, grant: &SemGrant) -> Result<(), LockError> {
        let key = lease.key();
        if lease.is_released() {
            return Err(LockError::NotHeld { backend: BACKEND, key: key.clone() });
        }
        grant.stop_watch.cancel();
        let session = &grant.session;
        match leave(self.api, &grant.lock_prefix, &grant.contender_key, &session.id, Some(grant.token)).await {
            Ok(held) => {
                // Nothing of the session is left: destroy it now rather than
                // leave it to its TTL.
                if let Err(error) = session.destroy(self.api).await {
                    debug!(%key, %error, "destroying a released place's session failed; retrying in the background");
                    let (api, session) = (self.api.clone(), Arc::clone(session));
                    tokio::spawn(async move { destroy_until_done(&api, &session).await });
                }
                if held && !lease.loss_signal().is_fired() {
                    debug!(%key, token = grant.token, "released a semaphore place");
                    lease.mark_released();
                    Ok(())
                } else {
                    let reason = lease.loss_signal().reason().unwrap_or(LostReason::Revoked);
                    debug!(%key, %reason, "the released place was no longer ours");
                    lease.loss_signal().fire(reason.clone());
                    Err(LockError::lost(BACKEND, key, reason))
                }
            }
            Err(error) => {
                // Unanswered: destroy the session (its key goes with it) and
                // tidy the record in the background.
                let place = Vacancy {
                    api: self.api.clone(),
                    lock_prefix: grant.lock_prefix.clone(),
                    key: grant.contender_key.clone(),
                    session: Arc::clone(session),
                };
                tokio::spawn(place.vacate(None));
                Err(error::map(Some(key), error))
            }
        }
    }

    /// Contends for a place until granted (`Some`), until patience runs
    /// out (`None`), or an error; gives everything back unless granted.
    async fn contend(
        &self,
        key: &LockKey,
        options: &LockOptions,
        patience: Patience,
        started: Instant,
    ) -> Result<Option<(Place, Won)>, LockError> {
        let LockMode::Semaphore { limit } = options.mode_value() else {
            return Err(LockError::InvalidOptions {
                backend: BACKEND,
                message: format!("the semaphore recipe cannot take a {} lock", options.mode_value()),
            });
        };
        let lock_prefix = native_lock_prefix(self.config.prefix_value(), key.as_str());
        let mut place = Place::open(self.api, self.config, key, &lock_prefix, options.owner_value()).await?;
        let ticket = Ticket::new(options.owner_value(), options.value_value());
        match self.contend_with(key, &mut place, limit.get(), &ticket, patience, started).await {
            Ok(Some(won)) => Ok(Some((place, won))),
            Ok(None) => {
                place.give_up().await;
                Ok(None)
            }
            Err(error) => {
                place.give_up().await;
                Err(error)
            }
        }
    }

    /// The steps of one acquisition; see [`Places::next_move`].
    async fn contend_with(
        &self,
        key: &LockKey,
        place: &mut Place,
        limit: u32,
        ticket: &Ticket,
        patience: Patience,
        started: Instant,
    ) -> Result<Option<Won>, LockError> {
        let deadline = match patience {
            Patience::Once => None,
            Patience::Until(deadline) => deadline,
        };
        let session = Arc::clone(&place.vacancy.session);
        let (lock_prefix, own) = (place.vacancy.lock_prefix.clone(), place.vacancy.key.clone());
        let tree = tree(&lock_prefix);
        let gate = gate_key(&lock_prefix);
        // Join as api.Semaphore does (the contender key first), reading the
        // semaphore's keys as that write left them.
        let joined = place
            .txn(vec![TxnKv::lock(&own, &ticket.to_bytes(), SEMAPHORE_FLAG, &session.id), TxnKv::get_tree(&tree)])
            .await
            .map_err(|e| error::map(Some(key), e))?;
        let mut places = match joined {
            TxnOutcome::Applied(entries) => {
                let index = entries.iter().map(|e| e.entry.modify_index).max().unwrap_or(0);
                Some(Places::parse(&lock_prefix, entries, index))
            }
            TxnOutcome::RolledBack(errors) => return Err(refused(key, &lock_prefix, &errors)),
        };
        let gone = || {
            let reason = if session.ended().is_fired() { LostReason::SessionEnded } else { LostReason::Revoked };
            LockError::lost(BACKEND, key, reason)
        };
        let mut pause = Duration::from_millis(100);
        let mut feed: Option<ChangeFeed> = None;
        for step in 1.. {
            if session.ended().is_fired() {
                return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded));
            }
            if matches!(patience, Patience::Once) && step > TRY_STEPS {
                return Ok(None);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            let current = match places.take() {
                Some(current) => current,
                None => match self.api.read_prefix(&tree, 0, Duration::ZERO).await {
                    Ok((entries, index)) => Places::parse(&lock_prefix, entries, index),
                    Err(e) if e.is_transient() => {
                        debug!(%key, error = %e, "reading the semaphore failed; retrying");
                        pause_or_give_up(key, &session, &mut pause, deadline, started).await?;
                        continue;
                    }
                    Err(e) => return Err(error::map(Some(key), e)),
                },
            };
            let admission = ticket.admitted().to_bytes();
            let seeker =
                Seeker { lock_prefix: &lock_prefix, key: &own, session: &session.id, limit, ticket: &admission };
            let operations = match current.next_move(seeker) {
                Move::Conflict(message) => return Err(LockError::conflict(BACKEND, key, message)),
                Move::Broken(message) => {
                    return Err(LockError::backend(
                        BACKEND,
                        Some(key),
                        format!("the semaphore record {gate}: {message}"),
                    ));
                }
                Move::Gone => return Err(gone()),
                Move::Claim(operations) => operations,
                Move::Wait => {
                    if matches!(patience, Patience::Once) {
                        return Ok(None);
                    }
                    let feed = feed.get_or_insert_with(|| {
                        ChangeFeed::new(
                            self.api.clone(),
                            tree.clone(),
                            self.monitors.blocking_wait_permit(),
                            self.monitors.prefix_watch(),
                        )
                    });
                    let read = tokio::select! {
                        read = feed.next(current.index, MAX_BLOCKING_WAIT) => read,
                        _ = session.ended().fired() => return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
                        () = lock_core::deadline_passed(deadline) => return Ok(None),
                    };
                    match read {
                        Ok((entries, index)) => places = Some(Places::parse(&lock_prefix, entries, index)),
                        Err(e) if e.is_transient() => {
                            debug!(%key, error = %e, "waiting: Consul did not answer; retrying");
                            pause_or_give_up(key, &session, &mut pause, deadline, started).await?;
                        }
                        Err(e) => return Err(error::map(Some(key), e)),
                    }
                    continue;
                }
            };
            let sent = Instant::now();
            match place.txn(operations).await {
                Ok(TxnOutcome::Applied(entries)) => {
                    let token = entries.iter().find(|e| e.key == gate).map(|e| e.entry.modify_index);
                    let Some(token) = token else {
                        return Err(LockError::backend(BACKEND, Some(key), "the admission returned no record"));
                    };
                    debug!(%key, token, "admitted to a semaphore place");
                    return Ok(Some(Won { token, sent }));
                }
                Ok(TxnOutcome::RolledBack(errors)) => {
                    if errors.iter().any(|e| e.op_index == 0) {
                        // Our contender key is no longer our session's.
                        return Err(gone());
                    }
                    if mentions(&errors, "ermission denied") {
                        return Err(refused(key, &lock_prefix, &errors));
                    }
                    debug!(%key, ?errors, "the record changed under the admission; reading it again");
                }
                Err(e) if e.is_transient() => {
                    // Unanswered: the next read shows whether it applied; if
                    // it did, the place is taken again for a fresh token.
                    debug!(%key, error = %e, "an admission went unanswered; reading the semaphore again");
                    pause_or_give_up(key, &session, &mut pause, deadline, started).await?;
                }
                Err(e) => return Err(error::map(Some(key), e)),
            }
        }
        Ok(None)
    }

    /// Turns a taken place into a lease and starts watching it.
    fn grant(&self, key: &LockKey, options: &LockOptions, place: Place, won: &Won) -> Lease {
        let vacancy = place.keep();
        let loss = LossSignal::new();
        let stop = CancellationToken::new();
        let feed = ChangeFeed::new(
            self.api.clone(),
            tree(&vacancy.lock_prefix),
            self.monitors.key_watch_permit(),
            self.monitors.prefix_watch(),
        );
        let held = HeldPlace {
            lock_prefix: vacancy.lock_prefix.clone(),
            key: vacancy.key.clone(),
            token: won.token,
            session: Arc::clone(&vacancy.session),
            loss: loss.clone(),
            stop: stop.clone(),
        };
        let span = info_span!("consul_semaphore_place", key = %key, token = won.token);
        tokio::spawn(watch_place(held, feed).instrument(span));
        let session = vacancy.session;
        let confirmed_at = session.confirmed_before(won.sent);
        let grant = SemGrant {
            lock_prefix: vacancy.lock_prefix,
            contender_key: vacancy.key,
            token: won.token,
            session: Arc::clone(&session),
            stop_watch: stop,
        };
        Lease::new(
            key.clone(),
            FencingToken::new(won.token),
            options.owner_value().to_owned(),
            session.ttl(),
            confirmed_at,
            loss,
            Arc::new(grant),
        )
        .with_mode(options.mode_value())
    }
}

/// The error for a contender write Consul refused.
fn refused(key: &LockKey, lock_prefix: &str, errors: &[TxnError]) -> LockError {
    let what: Vec<&str> = errors.iter().map(|e| e.what.as_str()).collect();
    LockError::backend(
        BACKEND,
        Some(key),
        format!(
            "Consul refused a semaphore write under {lock_prefix}/: {} (the ACL token needs key write on the prefix)",
            what.join("; ")
        ),
    )
}

/// What a place needs given back: its session, contender key and holder
/// entry.
#[derive(Debug, Clone)]
struct Vacancy {
    api: Api,
    lock_prefix: String,
    /// The contender key, `PREFIX/{session}`.
    key: String,
    session: Arc<Session>,
}

impl Vacancy {
    /// Gives everything back: after the write in flight (if any) is
    /// answered, destroys the session, so no write of ours can apply any
    /// more and its contender key is gone, then takes our entry out of the
    /// record (deleting the record if no live holder is left).
    async fn vacate(self, pending: Option<PendingTxn>) {
        // Stop renewing: the session ends here, by destroy or by its TTL.
        self.session.ended().fire(LostReason::SessionEnded);
        if let Some(task) = pending {
            let _ = task.await;
        }
        if !destroy_until_done(&self.api, &self.session).await {
            return;
        }
        let mut pause = Duration::from_millis(100);
        for _ in 0..35 {
            match leave(&self.api, &self.lock_prefix, &self.key, &self.session.id, None).await {
                Ok(_) => return,
                Err(error) => debug!(key = self.key, %error, "tidying a given-up place failed; retrying"),
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        warn!(key = self.key, "could not tidy a given-up semaphore place; the next contender prunes it");
    }
}

type PendingTxn = JoinHandle<Result<TxnOutcome, ApiError>>;

/// One acquisition's place, from its session's creation until it is handed
/// to a lease or given back. Dropped before that (the caller gave up, or
/// dropped the future mid-write), it gives everything back in the
/// background.
struct Place {
    vacancy: Vacancy,
    pending: Option<PendingTxn>,
    armed: bool,
}

impl Place {
    /// Creates the place's session, in a task of its own so that a caller
    /// dropped meanwhile still destroys a session Consul made.
    async fn open(
        api: &Api,
        config: &ConsulConfig,
        key: &LockKey,
        lock_prefix: &str,
        owner: &str,
    ) -> Result<Self, LockError> {
        // Named like `consul lock`'s ("... at '<prefix>'"), so an operator
        // (and the test harness) can tell whose it is.
        let name = format!("distlock semaphore at '{lock_prefix}' for {owner}");
        let (runner, config, session_key) = (api.clone(), config.clone(), key.clone());
        let task = tokio::spawn(async move { Session::start_dedicated(&runner, &config, &session_key, &name).await });
        let mut creation = Creation { task: Some(task), api: api.clone() };
        let session = creation.finish(key).await?;
        let key = format!("{lock_prefix}/{}", session.id);
        let vacancy = Vacancy { api: api.clone(), lock_prefix: lock_prefix.to_owned(), key, session };
        Ok(Self { vacancy, pending: None, armed: true })
    }

    /// Runs a transaction in a task of its own, so that a caller dropped
    /// mid-write leaves its outcome to the clean-up.
    async fn txn(&mut self, operations: Vec<TxnKv>) -> Result<TxnOutcome, ApiError> {
        let api = self.vacancy.api.clone();
        let task = self.pending.insert(tokio::spawn(async move { api.txn(operations).await }));
        let joined = task.await;
        self.pending = None;
        joined.unwrap_or_else(|e| Err(ApiError::Transport { what: "transaction", source: e.to_string().into() }))
    }

    /// The place now belongs to a lease.
    fn keep(mut self) -> Vacancy {
        self.armed = false;
        self.vacancy.clone()
    }

    /// Gives the place back, waiting a little; the rest goes on in the
    /// background.
    async fn give_up(mut self) {
        self.armed = false;
        let cleanup = tokio::spawn(self.vacancy.clone().vacate(self.pending.take()));
        if tokio::time::timeout(WITHDRAW_WAIT, cleanup).await.is_err() {
            debug!(key = self.vacancy.key, "giving a place back is slow; finishing in the background");
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(self.vacancy.clone().vacate(self.pending.take()));
    }
}

/// A session being created; dropped before it is known, it destroys
/// whatever Consul made.
struct Creation {
    task: Option<JoinHandle<Result<Arc<Session>, LockError>>>,
    api: Api,
}

impl Creation {
    async fn finish(&mut self, key: &LockKey) -> Result<Arc<Session>, LockError> {
        let Some(task) = self.task.as_mut() else {
            return Err(LockError::backend(BACKEND, Some(key), "the session was already made"));
        };
        let joined = task.await;
        self.task = None;
        joined.unwrap_or_else(|e| Err(LockError::backend(BACKEND, Some(key), e.to_string())))
    }
}

impl Drop for Creation {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let api = self.api.clone();
        runtime.spawn(async move {
            if let Ok(Ok(session)) = task.await {
                session.ended().fire(LostReason::SessionEnded);
                destroy_until_done(&api, &session).await;
            }
        });
    }
}

/// Destroys `session`, retrying with backoff for about a minute; whether it
/// was done (otherwise its TTL ends it).
async fn destroy_until_done(api: &Api, session: &Session) -> bool {
    let mut pause = Duration::from_millis(100);
    for _ in 0..35 {
        match session.destroy(api).await {
            Ok(()) => return true,
            Err(error) => debug!(session = session.id, %error, "destroying a place's session failed; retrying"),
        }
        sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    false
}

/// Takes the contender `key` of `session` out of the semaphore at
/// `lock_prefix` ([`Places::leave`]), reading again when another change
/// raced with the write. Whether the place was held as admitted with
/// `token` (or, without one, whether the contender key was there).
async fn leave(api: &Api, lock_prefix: &str, key: &str, session: &str, token: Option<u64>) -> Result<bool, ApiError> {
    const ATTEMPTS: u32 = 16;
    for _ in 0..ATTEMPTS {
        let (entries, index) = api.read_prefix(&tree(lock_prefix), 0, Duration::ZERO).await?;
        let places = Places::parse(lock_prefix, entries, index);
        let held = places.held_as(key, session, token);
        let operations = places.leave(lock_prefix, key, session);
        if operations.is_empty() {
            return Ok(held);
        }
        match api.txn(operations).await? {
            TxnOutcome::Applied(_) => return Ok(held),
            TxnOutcome::RolledBack(errors) => debug!(key, ?errors, "leaving raced with another change; reading again"),
        }
    }
    Err(ApiError::Contended { what: "leave a semaphore", attempts: ATTEMPTS })
}

/// A held place to watch.
struct HeldPlace {
    lock_prefix: String,
    key: String,
    token: u64,
    session: Arc<Session>,
    loss: LossSignal,
    stop: CancellationToken,
}

impl HeldPlace {
    fn report_lost(&self) {
        let reason = if self.session.ended().is_fired() { LostReason::SessionEnded } else { LostReason::Revoked };
        warn!(key = self.key, token = self.token, %reason, "held semaphore place lost");
        self.loss.fire(reason);
    }
}

/// Watches a held place until it is released or lost: lost when its
/// contender key is gone or changed (its session ended, or it was deleted),
/// or the record no longer lists its session.
async fn watch_place(held: HeldPlace, mut feed: ChangeFeed) {
    tokio::select! {
        () = held.stop.cancelled() => return,
        _ = held.session.ended().fired() => return held.loss.fire(LostReason::SessionEnded),
        () = sleep(FIRST_WATCH_DELAY) => {}
    }
    let mut index = held.token;
    let mut pause = Duration::from_millis(100);
    loop {
        let read = tokio::select! {
            () = held.stop.cancelled() => return,
            _ = held.loss.fired() => return,
            _ = held.session.ended().fired() => return held.loss.fire(LostReason::SessionEnded),
            read = feed.next(index, MAX_BLOCKING_WAIT) => read,
        };
        match read {
            Ok((entries, next)) => {
                index = next;
                pause = Duration::from_millis(100);
                if !Places::parse(&held.lock_prefix, entries, next).holds(&held.key, &held.session.id, held.token) {
                    return held.report_lost();
                }
            }
            Err(error) => {
                // Consul unreachable: the renewal or the guard's own clock
                // decides; keep watching once it answers again.
                debug!(key = held.key, %error, "watching a held place failed; retrying");
                tokio::select! {
                    () = held.stop.cancelled() => return,
                    () = sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}
