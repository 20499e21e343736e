//! Reader/writer locks on Consul's KV store and sessions, which have none of
//! their own.
//!
//! The lock at `PREFIX` (where the mutex keeps `PREFIX/.lock`) has one
//! contender key per acquisition, `PREFIX/{session}-{id}`, locked by the
//! client's session (Behavior `delete`: it goes with the session) and
//! carrying [`RW_FLAG`](crate::RW_FLAG) and a ticket (mode, owner, whether granted). While
//! any exists, the gate `PREFIX/.lock` carries the same flags, locked by
//! the session of one of them (handed on when that one leaves, made ours
//! again by any other when its session ends): `consul lock` refuses such a
//! key and a distlock mutex queues behind it. Contenders wait in the order
//! of their keys' `CreateIndex` ([`Scene::may_hold`](crate::scene::Scene::may_hold)), watching the prefix
//! with blocking queries, and a contender holds the lock only once a claim
//! (a check-and-set on its own key, applied only while the gate stays
//! locked by the session it saw) has marked it granted: the claim's
//! `ModifyIndex` is its fencing token, a raft index written after every
//! conflicting grant before it was gone, so it exceeds their tokens, also
//! across expiry, new clients and plain locks taken in between.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    ClientSession, FencingToken, Lease, LockError, LockKey, LockOptions, LossSignal, LostReason, SessionSlot,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::api::{Api, MAX_BLOCKING_WAIT, TxnError, TxnOutcome};
use crate::claims::Claim;
use crate::contender::{Left, Registration, leave, leave_until_done};
use crate::monitor::Monitors;
use crate::rw_monitor::{ChangeFeed, HeldKey, watch_held};
use crate::scene::{Asker, Gate, Move, Scene, Ticket, Timing, gate_key, tree};
use crate::semaphore_record::{SEMAPHORE_FLAG, recipe_of};
use crate::session::Session;
use crate::waiting::pause_or_give_up;
use crate::{BACKEND, ConsulConfig, error, native_lock_prefix};

/// How many steps a `try_acquire` takes before calling the lock contended.
const TRY_STEPS: usize = 6;

/// The reader/writer recipe, on one client's connection, session and watches.
pub(crate) struct ReaderWriter<'a> {
    pub(crate) api: &'a Api,
    pub(crate) config: &'a ConsulConfig,
    pub(crate) sessions: &'a SessionSlot<Session>,
    pub(crate) monitors: &'a Monitors,
}

/// What a lease of the reader/writer recipe remembers about its grant.
#[derive(Debug)]
pub(crate) struct RwGrant {
    lock_prefix: String,
    kv_key: String,
    token: u64,
    pub(crate) session: Arc<Session>,
    stop_watch: CancellationToken,
    /// A mutex's claim on the key, for an exclusive grant made in line
    /// behind readers and writers; held until the release is done.
    claim: std::sync::Mutex<Option<Claim>>,
}

/// How long an acquisition may wait.
#[derive(Debug, Clone, Copy)]
enum Patience {
    Once,
    Until(Option<Instant>),
}

/// A granted contender key.
struct Won {
    session: Arc<Session>,
    lock_prefix: String,
    kv_key: String,
    token: u64,
    sent: Instant,
}

/// Why a contest ended without a grant.
enum Defeat {
    /// The session had ended before anything was waited for: try once more
    /// on a new one.
    SessionGone,
    Failed(LockError),
}

impl From<LockError> for Defeat {
    fn from(error: LockError) -> Self {
        Self::Failed(error)
    }
}

impl ReaderWriter<'_> {
    async fn session(&self, key: &LockKey) -> Result<Arc<Session>, LockError> {
        self.sessions.get_or_start(|| Session::start(self.api, self.config, Some(key))).await
    }

    /// Waits until `key` is granted in the options' mode, or `deadline`.
    /// `claim` is a mutex's claim on the key, kept by the lease.
    pub(crate) async fn acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        deadline: Option<Instant>,
        claim: Option<Claim>,
    ) -> Result<Lease, LockError> {
        let started = Instant::now();
        match self.contend(key, options, Patience::Until(deadline), started).await? {
            Some(won) => Ok(self.grant(key, options, won, claim)),
            None => Err(LockError::timeout(BACKEND, key, started)),
        }
    }

    /// The lease if `key` can be granted without waiting for anyone.
    pub(crate) async fn try_acquire(
        &self,
        key: &LockKey,
        options: &LockOptions,
        claim: Option<Claim>,
    ) -> Result<Option<Lease>, LockError> {
        let won = self.contend(key, options, Patience::Once, Instant::now()).await?;
        Ok(won.map(|won| self.grant(key, options, won, claim)))
    }

    /// Gives the lease up: takes its key out (handing the gate on, or
    /// deleting it after the last contender).
    pub(crate) async fn release(&self, lease: &Lease, grant: &RwGrant) -> Result<(), LockError> {
        let key = lease.key();
        if lease.is_released() {
            return Err(LockError::NotHeld { backend: BACKEND, key: key.clone() });
        }
        grant.stop_watch.cancel();
        let outcome = leave(self.api, &grant.lock_prefix, &grant.kv_key, Some(grant.token)).await;
        let claim = grant.claim.lock().unwrap_or_else(|p| p.into_inner()).take();
        match outcome {
            Ok(Left::Clean) if !lease.loss_signal().is_fired() => {
                lease.mark_released();
                drop(claim);
                Ok(())
            }
            Ok(left) => {
                let reason = lease.loss_signal().reason().unwrap_or(LostReason::Revoked);
                debug!(%key, ?left, %reason, "the released key was no longer ours");
                lease.loss_signal().fire(reason.clone());
                drop(claim);
                Err(LockError::lost(BACKEND, key, reason))
            }
            Err(error) => {
                // Unanswered: while the session lives, the key would hold
                // its place for good; keep trying in the background.
                let (api, lock_prefix, kv_key, session) =
                    (self.api.clone(), grant.lock_prefix.clone(), grant.kv_key.clone(), Arc::clone(&grant.session));
                tokio::spawn(async move {
                    leave_until_done(&api, &lock_prefix, &kv_key, &session).await;
                    drop(claim);
                });
                Err(error::map(Some(key), error))
            }
        }
    }

    /// Contends for `key` until granted (`Some`), until patience runs out
    /// (`None`), or an error; on a new session if the client's had ended
    /// before this began.
    async fn contend(
        &self,
        key: &LockKey,
        options: &LockOptions,
        patience: Patience,
        started: Instant,
    ) -> Result<Option<Won>, LockError> {
        let lock_prefix = native_lock_prefix(self.config.prefix_value(), key.as_str());
        let ticket = Ticket::new(options.mode_value(), options.owner_value()).with_value(options.value_value());
        let mut session = self.session(key).await?;
        let mut renewed_session = false;
        loop {
            let mut registration =
                Registration::new(self.api.clone(), lock_prefix.clone(), Arc::clone(&session), ticket.clone());
            match self.contend_with(key, &mut registration, patience, started).await {
                Ok(Some(won)) => {
                    registration.keep();
                    return Ok(Some(won));
                }
                Ok(None) => {
                    registration.withdraw().await;
                    return Ok(None);
                }
                Err(Defeat::SessionGone) if !renewed_session => {
                    debug!(%key, "the session had ended; creating a new one");
                    renewed_session = true;
                    session = self.session(key).await?;
                }
                Err(Defeat::SessionGone) => return Err(LockError::lost(BACKEND, key, LostReason::SessionEnded)),
                Err(Defeat::Failed(error)) => {
                    registration.withdraw().await;
                    return Err(error);
                }
            }
        }
    }

    /// One contest on one session; see [`Scene::next_move`] for the steps.
    async fn contend_with(
        &self,
        key: &LockKey,
        registration: &mut Registration,
        patience: Patience,
        started: Instant,
    ) -> Result<Option<Won>, Defeat> {
        let deadline = match patience {
            Patience::Once => None,
            Patience::Until(deadline) => deadline,
        };
        let session = Arc::clone(&registration.session);
        let lock_prefix = registration.lock_prefix.clone();
        let ended = || LockError::lost(BACKEND, key, LostReason::SessionEnded);
        // Before the first write the lock is assumed unused: one request
        // joins a free lock.
        let mut scene = Some(Scene { gate: Gate::Absent, contenders: Vec::new(), index: 0 });
        let mut answered = false;
        let mut waited = false;
        let mut pause = Duration::from_millis(100);
        let mut lock_delay: Option<(Instant, Duration)> = None;
        let mut released_native: Option<(u64, Instant)> = None;
        let mut feed: Option<ChangeFeed> = None;
        for step in 1.. {
            if session.ended().is_fired() {
                return Err(ended().into());
            }
            if matches!(patience, Patience::Once) && step > TRY_STEPS {
                return Ok(None);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            let current = match scene.take() {
                Some(current) => current,
                None => match self.api.read_prefix(&tree(&lock_prefix), 0, Duration::ZERO).await {
                    Ok((entries, index)) => Scene::parse(&lock_prefix, entries, index),
                    Err(e) if e.is_transient() && answered => {
                        debug!(%key, error = %e, "reading the lock failed; retrying");
                        pause_or_give_up(key, &session, &mut pause, deadline, started).await?;
                        continue;
                    }
                    Err(e) => return Err(error::map(Some(key), e).into()),
                },
            };
            let now = Instant::now();
            released_native = match current.gate {
                Gate::Native { session: None, modify_index } => match released_native {
                    Some((index, since)) if index == modify_index => Some((index, since)),
                    _ => Some((modify_index, now)),
                },
                _ => None,
            };
            let timing = Timing {
                lock_delay: lock_delay.map(|(until, _)| until.saturating_duration_since(now)).filter(|d| !d.is_zero()),
                released_for: released_native.map(|(_, since)| now.saturating_duration_since(since)),
            };
            let asker = Asker {
                lock_prefix: &lock_prefix,
                key: &registration.key,
                session: &session.id,
                ticket: &registration.ticket,
            };
            let (operations, claims) = match current.next_move(asker, timing) {
                Move::Refuse(flags) => return Err(foreign_gate(key, &lock_prefix, flags).into()),
                Move::Held(token) => return Ok(Some(self.won(registration, token, now))),
                Move::Write(operations) => (operations, false),
                Move::Claim(operations) => (operations, true),
                Move::Wait(limit) => {
                    if matches!(patience, Patience::Once) {
                        return Ok(None);
                    }
                    waited = true;
                    let feed = feed.get_or_insert_with(|| {
                        ChangeFeed::new(
                            self.api.clone(),
                            tree(&lock_prefix),
                            self.monitors.blocking_wait_permit(),
                            self.monitors.prefix_watch(),
                        )
                    });
                    let wait = limit.unwrap_or(MAX_BLOCKING_WAIT).min(MAX_BLOCKING_WAIT);
                    let read = tokio::select! {
                        read = feed.next(current.index, wait) => read,
                        _ = session.ended().fired() => return Err(ended().into()),
                        () = lock_core::deadline_passed(deadline) => return Ok(None),
                    };
                    match read {
                        Ok((entries, index)) => scene = Some(Scene::parse(&lock_prefix, entries, index)),
                        Err(e) if e.is_transient() => {
                            debug!(%key, error = %e, "waiting: Consul did not answer; retrying");
                            pause_or_give_up(key, &session, &mut pause, deadline, started).await?;
                        }
                        Err(e) => return Err(error::map(Some(key), e).into()),
                    }
                    continue;
                }
            };
            let sent = Instant::now();
            match registration.txn(operations).await {
                Ok(TxnOutcome::Applied(entries)) => {
                    answered = true;
                    pause = Duration::from_millis(100);
                    if claims {
                        let token = entries.iter().find(|e| e.key == registration.key).map(|e| e.entry.modify_index);
                        return match token {
                            Some(token) => Ok(Some(self.won(registration, token, sent))),
                            None => Err(LockError::backend(BACKEND, Some(key), "the claim returned no entry").into()),
                        };
                    }
                    let index = entries.iter().map(|e| e.entry.modify_index).max().unwrap_or(0);
                    scene = Some(Scene::parse(&lock_prefix, entries, index));
                }
                Ok(TxnOutcome::RolledBack(errors)) => {
                    answered = true;
                    if let Some(denied) = errors.iter().find(|e| e.what.to_lowercase().contains("permission denied")) {
                        return Err(LockError::backend(
                            BACKEND,
                            Some(key),
                            format!(
                                "Consul refused a write under {lock_prefix}/: {} (the ACL token needs key write on \
                                 the prefix)",
                                denied.what
                            ),
                        )
                        .into());
                    }
                    if mentions(&errors, "invalid session") {
                        session.ended().fire(LostReason::SessionEnded);
                        return Err(if waited { Defeat::Failed(ended()) } else { Defeat::SessionGone });
                    }
                    if mentions(&errors, "lock delay") {
                        // The gate's last session ended: write it unlocked
                        // for now, lock it after a pause.
                        let pause =
                            lock_delay.map_or(Duration::from_millis(100), |(_, p)| (p * 2).min(Duration::from_secs(1)));
                        debug!(%key, ?pause, "the gate is in a lock delay");
                        lock_delay = Some((Instant::now() + pause, pause));
                        scene = Some(current);
                    } else {
                        debug!(%key, ?errors, "the lock changed under the write; reading it again");
                    }
                }
                Err(e) if e.is_transient() && answered => {
                    // Unanswered: the next read shows whether it applied
                    // (the key's name is this acquisition's own).
                    debug!(%key, error = %e, "a write went unanswered; reading the lock again");
                    pause_or_give_up(key, &session, &mut pause, deadline, started).await?;
                }
                Err(e) => return Err(error::map(Some(key), e).into()),
            }
        }
        Ok(None)
    }

    fn won(&self, registration: &Registration, token: u64, sent: Instant) -> Won {
        Won {
            session: Arc::clone(&registration.session),
            lock_prefix: registration.lock_prefix.clone(),
            kv_key: registration.key.clone(),
            token,
            sent,
        }
    }

    /// Turns a granted contender into a lease and starts watching it.
    fn grant(&self, key: &LockKey, options: &LockOptions, won: Won, claim: Option<Claim>) -> Lease {
        let loss = LossSignal::new();
        let stop = CancellationToken::new();
        let feed = ChangeFeed::new(
            self.api.clone(),
            tree(&won.lock_prefix),
            self.monitors.key_watch_permit(),
            self.monitors.prefix_watch(),
        );
        let held = HeldKey {
            api: self.api.clone(),
            lock_prefix: won.lock_prefix.clone(),
            kv_key: won.kv_key.clone(),
            token: won.token,
            session: Arc::clone(&won.session),
            loss: loss.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(watch_held(held, feed));
        let mode = options.mode_value();
        debug!(%key, %mode, kv_key = won.kv_key, token = won.token, "granted");
        let grant = RwGrant {
            lock_prefix: won.lock_prefix,
            kv_key: won.kv_key,
            token: won.token,
            session: Arc::clone(&won.session),
            stop_watch: stop,
            claim: std::sync::Mutex::new(claim),
        };
        Lease::new(
            key.clone(),
            FencingToken::new(won.token),
            options.owner_value().to_owned(),
            won.session.ttl(),
            won.session.confirmed_before(won.sent),
            loss,
            Arc::new(grant),
        )
        .with_mode(mode)
    }
}

pub(crate) fn mentions(errors: &[TxnError], what: &str) -> bool {
    errors.iter().any(|e| e.what.contains(what))
}

/// The error for a `.lock` of another recipe: a semaphore's record is a
/// conflict (the prefix is in use as a semaphore); anything else is not a
/// lock at all.
fn foreign_gate(key: &LockKey, lock_prefix: &str, flags: u64) -> LockError {
    let gate = gate_key(lock_prefix);
    if flags == SEMAPHORE_FLAG {
        return LockError::conflict(
            BACKEND,
            key,
            format!(
                "the Consul key {gate:?} is {}: a reader/writer lock shares its prefix only with plain locks",
                recipe_of(flags)
            ),
        );
    }
    LockError::backend(
        BACKEND,
        Some(key),
        format!(
            "the Consul key {gate:?} belongs to another recipe (flags {flags:#x}): a reader/writer lock shares its \
             prefix only with plain locks"
        ),
    )
}
