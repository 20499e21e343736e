//! What the keys of one reader/writer lock say, read in one request: the
//! gate on `PREFIX/.lock` and the contenders beside it, and the rule that
//! says which contender may hold the lock.
//!
//! Pure: no I/O, so every rule is tested here without a Consul agent.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_core::{FencingToken, LockInfo, LockMode};
use serde::{Deserialize, Serialize};

use crate::NATIVE_LOCK_SUFFIX;
use crate::api::{KeyedEntry, TxnKv};
use crate::lock::LOCK_FLAG;

/// The `Flags` value of the keys of a distlock reader/writer lock (ASCII
/// `distlkrw`): its gate, `PREFIX/.lock`, present while the lock has any
/// contender, and each contender, `PREFIX/{session}-{id}`.
///
/// `consul lock PREFIX` refuses a `.lock` with these flags ("existing key
/// does not match lock use"), and so does `consul lock -n`
/// ("... semaphore use"); a distlock mutex queues behind the readers and
/// writers instead.
pub const RW_FLAG: u64 = 0x6469_7374_6c6b_7277;

/// The gate's value, for an operator reading the key.
pub(crate) const GATE_VALUE: &[u8] =
    br#"{"distlock":"gate of a reader/writer lock: its contenders are the keys beside it"}"#;

/// How long a plain lock that was released but not deleted is left to its
/// owner before a reader or writer takes the prefix over: `consul lock`
/// deletes its key right after releasing it, and fails its clean-up if the
/// key has become something else meanwhile. (`api.Lock` users that never
/// delete theirs cost a reader or writer this long.)
pub(crate) const NATIVE_RELEASE_GRACE: Duration = Duration::from_secs(1);

/// Who asks, for [`Scene::next_move`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asker<'a> {
    pub(crate) lock_prefix: &'a str,
    pub(crate) key: &'a str,
    pub(crate) session: &'a str,
    pub(crate) ticket: &'a Ticket,
}

/// What the time says, for [`Scene::next_move`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timing {
    /// How long until the gate may be locked again, after Consul refused it
    /// for a lock delay (the session that held it ended); `None` if it did not.
    pub(crate) lock_delay: Option<Duration>,
    /// How long the gate has been seen as a released plain lock.
    pub(crate) released_for: Option<Duration>,
}

/// One acquisition's next step.
#[derive(Debug)]
pub(crate) enum Move {
    /// Write these operations (joining, or making the gate ours); the last
    /// returns the lock's keys as the write left them.
    Write(Vec<TxnKv>),
    /// Claim the lock with these operations: the new `ModifyIndex` of the
    /// contender key is the fencing token.
    Claim(Vec<TxnKv>),
    /// Already granted (by a claim whose answer was lost), with this token.
    Held(u64),
    /// Wait for a change, at most this long.
    Wait(Option<Duration>),
    /// `.lock` belongs to another recipe, with these flags.
    Refuse(u64),
}

/// The state of `PREFIX/.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Gate {
    /// No `.lock`: the first to write it decides what the prefix is.
    Absent,
    /// A plain lock (`consul lock`, `api.Lock`, a distlock mutex); without a
    /// session once released and not yet deleted.
    Native { session: Option<String>, modify_index: u64 },
    /// Our gate, locked by the session of one of the contenders; without a
    /// session only while a lock delay keeps it from being locked.
    Marker { session: Option<String>, modify_index: u64 },
    /// Something that is neither (a `consul lock -n` semaphore, a value).
    Foreign { flags: u64 },
}

/// What a contender key's value records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ticket {
    /// The mode's name (`read`, `write`, `exclusive`).
    pub(crate) mode: String,
    /// The owner string `holders` reports.
    pub(crate) owner: String,
    /// Set by the claim that grants the contender the lock.
    #[serde(default)]
    pub(crate) granted: bool,
    /// When it was written, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub(crate) since_ms: u64,
    /// The value the holder publishes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<String>,
}

impl Ticket {
    /// A ticket for a contender in `mode`, not yet granted.
    pub(crate) fn new(mode: LockMode, owner: &str) -> Self {
        Self { mode: mode.name().to_owned(), owner: owner.to_owned(), granted: false, since_ms: now_ms(), value: None }
    }

    /// The same ticket, publishing `value`.
    pub(crate) fn with_value(self, value: Option<&str>) -> Self {
        Self { value: value.map(str::to_owned), ..self }
    }

    /// The same ticket, granted now.
    pub(crate) fn granted(&self) -> Self {
        Self { granted: true, since_ms: now_ms(), ..self.clone() }
    }

    /// The mode; anything unknown counts as exclusive, which shares with nobody.
    pub(crate) fn mode(&self) -> LockMode {
        match self.mode.as_str() {
            "read" => LockMode::Read,
            "write" => LockMode::Write,
            _ => LockMode::Exclusive,
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, a bool and an integer always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn parse(value: &[u8]) -> Self {
        serde_json::from_slice(value).unwrap_or_else(|_| Self {
            mode: LockMode::Exclusive.name().to_owned(),
            owner: String::from_utf8_lossy(value).chars().take(256).collect(),
            granted: false,
            since_ms: 0,
            value: None,
        })
    }
}

/// Writes our gate: locked by `session`, or unlocked during a lock delay.
fn gate_write(gate_key: &str, session: &str, lock_delay: bool) -> TxnKv {
    if lock_delay {
        TxnKv::set(gate_key, GATE_VALUE, RW_FLAG)
    } else {
        TxnKv::lock(gate_key, GATE_VALUE, RW_FLAG, session)
    }
}

fn now_ms() -> u64 {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
    u64::try_from(millis).unwrap_or(u64::MAX)
}

/// One live contender: a key with [`RW_FLAG`] locked by its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contender {
    pub(crate) key: String,
    pub(crate) session: String,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    pub(crate) ticket: Ticket,
}

impl Contender {
    /// Whether it came before `other` in the waiting order: creation index,
    /// then key (two contenders are never created by one write, but a total
    /// order costs nothing).
    fn before(&self, other: &Contender) -> bool {
        (self.create_index, &self.key) < (other.create_index, &other.key)
    }
}

/// The keys of one lock as one read saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scene {
    pub(crate) gate: Gate,
    /// Live contenders, oldest first.
    pub(crate) contenders: Vec<Contender>,
    /// The index to block on for the next change.
    pub(crate) index: u64,
}

/// The contender key of one acquisition.
pub(crate) fn contender_key(lock_prefix: &str, session: &str) -> String {
    format!("{lock_prefix}/{session}-{}", uuid::Uuid::new_v4().simple())
}

/// The gate key of the lock at `lock_prefix`.
pub(crate) fn gate_key(lock_prefix: &str) -> String {
    format!("{lock_prefix}{NATIVE_LOCK_SUFFIX}")
}

/// The prefix to read for the lock at `lock_prefix`.
pub(crate) fn tree(lock_prefix: &str) -> String {
    format!("{lock_prefix}/")
}

impl Scene {
    /// The scene in `entries` (a prefix read, or a transaction's results;
    /// for a key listed twice the last entry counts, so a tree read after a
    /// write in one transaction wins). Keys deeper under the prefix belong
    /// to other locks and are skipped, as are keys of other recipes.
    pub(crate) fn parse(lock_prefix: &str, entries: impl IntoIterator<Item = KeyedEntry>, index: u64) -> Self {
        let tree = tree(lock_prefix);
        let latest: BTreeMap<String, KeyedEntry> = entries
            .into_iter()
            .filter(|e| e.key.strip_prefix(&tree).is_some_and(|name| !name.is_empty() && !name.contains('/')))
            .map(|e| (e.key.clone(), e))
            .collect();
        let gate_key = gate_key(lock_prefix);
        let mut gate = Gate::Absent;
        let mut contenders = Vec::new();
        for (key, KeyedEntry { entry, .. }) in latest {
            let session = entry.holder().map(str::to_owned);
            if key == gate_key {
                gate = match entry.flags {
                    LOCK_FLAG => Gate::Native { session, modify_index: entry.modify_index },
                    RW_FLAG => Gate::Marker { session, modify_index: entry.modify_index },
                    flags => Gate::Foreign { flags },
                };
            } else if entry.flags == RW_FLAG
                && let Some(session) = session
            {
                contenders.push(Contender {
                    ticket: Ticket::parse(&entry.value_bytes()),
                    key,
                    session,
                    create_index: entry.create_index,
                    modify_index: entry.modify_index,
                });
            }
        }
        contenders.sort_by(|a, b| (a.create_index, &a.key).cmp(&(b.create_index, &b.key)));
        Self { gate, contenders, index }
    }

    /// The live contender with `key`.
    pub(crate) fn contender(&self, key: &str) -> Option<&Contender> {
        self.contenders.iter().find(|c| c.key == key)
    }

    /// The session locking the gate, when the gate is ours and locked.
    pub(crate) fn gate_session(&self) -> Option<&str> {
        match &self.gate {
            Gate::Marker { session: Some(session), .. } => Some(session),
            _ => None,
        }
    }

    /// Whether the contender `key` may hold the lock: the gate is ours and
    /// locked, and no contender it does not share with came before it or
    /// holds the lock (a writer waits for everyone before it; a reader for
    /// the writers before it, so a waiting writer holds back later readers).
    pub(crate) fn may_hold(&self, key: &str) -> bool {
        let Some(me) = self.contender(key) else { return false };
        let mode = me.ticket.mode();
        self.gate_session().is_some()
            && self
                .contenders
                .iter()
                .filter(|other| other.key != me.key)
                .all(|other| mode.shares_with(other.ticket.mode()) || !(other.before(me) || other.ticket.granted))
    }

    /// The next step of `asker`'s acquisition.
    ///
    /// A contender joins beside our gate, beside a plain lock (it then waits
    /// in line for the plain lock's release, ahead of those who come later),
    /// or creates the gate; joining changes the gate's `ModifyIndex`, so a
    /// contender that believes itself the last to leave cannot delete the
    /// gate from under a new one. A joined contender makes an absent gate
    /// ours, and claims the lock once [`Scene::may_hold`] says so, with a
    /// write that only applies while the gate's session is the one this
    /// scene shows.
    pub(crate) fn next_move(&self, asker: Asker<'_>, timing: Timing) -> Move {
        let gate_key = gate_key(asker.lock_prefix);
        let own = self.contender(asker.key);
        let delayed = timing.lock_delay.is_some();
        let finish = |mut operations: Vec<TxnKv>| {
            if own.is_none() {
                operations.push(TxnKv::lock(asker.key, &asker.ticket.to_bytes(), RW_FLAG, asker.session));
            }
            operations.push(TxnKv::get_tree(&tree(asker.lock_prefix)));
            Move::Write(operations)
        };
        match (&self.gate, own) {
            (Gate::Foreign { flags }, _) => Move::Refuse(*flags),
            (_, Some(own)) if own.ticket.granted => Move::Held(own.modify_index),
            (Gate::Marker { session: Some(gate_session), .. }, Some(own)) => {
                if self.may_hold(asker.key) {
                    Move::Claim(vec![
                        TxnKv::check_session(&gate_key, gate_session),
                        TxnKv::cas(asker.key, &own.ticket.granted().to_bytes(), RW_FLAG, own.modify_index),
                    ])
                } else {
                    Move::Wait(None)
                }
            }
            (Gate::Marker { session: Some(_), modify_index }, None) => {
                finish(vec![TxnKv::cas(&gate_key, GATE_VALUE, RW_FLAG, *modify_index)])
            }
            (Gate::Marker { session: None, modify_index }, own) => {
                match self.regate(asker.lock_prefix, asker.session, delayed) {
                    Some(operations) => finish(operations),
                    None if own.is_none() => finish(vec![TxnKv::cas(&gate_key, GATE_VALUE, RW_FLAG, *modify_index)]),
                    None => Move::Wait(timing.lock_delay),
                }
            }
            (Gate::Absent, _) => finish(self.regate(asker.lock_prefix, asker.session, delayed).unwrap_or_default()),
            (Gate::Native { session, modify_index }, own) => {
                let grace_left = timing.released_for.map(|seen| NATIVE_RELEASE_GRACE.saturating_sub(seen));
                match (session, grace_left) {
                    (None, Some(left)) if left.is_zero() => finish(vec![
                        TxnKv::check_index(&gate_key, *modify_index),
                        gate_write(&gate_key, asker.session, delayed),
                    ]),
                    _ if own.is_none() => finish(vec![TxnKv::check_index(&gate_key, *modify_index)]),
                    (None, left) => Move::Wait(left),
                    _ => Move::Wait(None),
                }
            }
        }
    }

    /// The operations that make the gate ours when it is absent (its session
    /// ended with the lock in use, or the lock was free), or ours but not
    /// locked; `None` when it needs nothing, or nothing can be done before a
    /// lock delay has passed. During a lock delay an absent gate is written
    /// unlocked: that already makes `consul lock` refuse the prefix, whose
    /// own attempts to lock it Consul refuses meanwhile.
    pub(crate) fn regate(&self, lock_prefix: &str, session: &str, lock_delay: bool) -> Option<Vec<TxnKv>> {
        let gate_key = gate_key(lock_prefix);
        match &self.gate {
            Gate::Absent => Some(vec![TxnKv::check_not_exists(&gate_key), gate_write(&gate_key, session, lock_delay)]),
            Gate::Marker { session: None, modify_index } if !lock_delay => Some(vec![
                TxnKv::check_index(&gate_key, *modify_index),
                TxnKv::lock(&gate_key, GATE_VALUE, RW_FLAG, session),
            ]),
            _ => None,
        }
    }

    /// The granted contenders, in token order.
    pub(crate) fn holders(&self) -> Vec<LockInfo> {
        let mut holders: Vec<LockInfo> = self
            .contenders
            .iter()
            .filter(|c| c.ticket.granted)
            .map(|c| {
                let info = LockInfo::new(c.ticket.owner.clone(), FencingToken::new(c.modify_index))
                    .with_mode(c.ticket.mode())
                    .with_held_since(UNIX_EPOCH + Duration::from_millis(c.ticket.since_ms));
                match &c.ticket.value {
                    Some(value) => info.with_value(value.clone()),
                    None => info,
                }
            })
            .collect();
        holders.sort_by_key(|info| info.token);
        holders
    }

    /// The operations that take `own_key` out of the lock, keeping the gate
    /// right: deleted with the last contender; handed to a remaining
    /// contender's session when no remaining contender has the session that
    /// locks it; otherwise rewritten unchanged, so that two contenders
    /// leaving at once cannot both miss that they were the last. Empty when
    /// there is nothing to do.
    pub(crate) fn leave(&self, lock_prefix: &str, own_key: &str) -> Vec<TxnKv> {
        let gate_key = gate_key(lock_prefix);
        let own = self.contender(own_key);
        let remaining: Vec<&Contender> = self.contenders.iter().filter(|c| c.key != own_key).collect();
        let mut operations: Vec<TxnKv> = own.iter().map(|c| TxnKv::delete_cas(own_key, c.modify_index)).collect();
        if let Gate::Marker { session, modify_index } = &self.gate {
            let heir = remaining
                .last()
                .filter(|_| session.as_ref().is_some_and(|g| remaining.iter().all(|c| &c.session != g)));
            match (remaining.is_empty(), heir, session) {
                (true, _, _) => operations.push(TxnKv::delete_cas(&gate_key, *modify_index)),
                (false, Some(heir), Some(gate_session)) => operations.extend([
                    TxnKv::check_index(&gate_key, *modify_index),
                    TxnKv::unlock(&gate_key, GATE_VALUE, RW_FLAG, gate_session),
                    TxnKv::lock(&gate_key, GATE_VALUE, RW_FLAG, &heir.session),
                ]),
                _ if own.is_some() => operations.push(TxnKv::cas(&gate_key, GATE_VALUE, RW_FLAG, *modify_index)),
                _ => {}
            }
        }
        operations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KvEntry;

    const P: &str = "p/k";

    fn entry(key: &str, flags: u64, session: Option<&str>, index: u64, value: &[u8]) -> KeyedEntry {
        use base64::Engine as _;
        KeyedEntry {
            key: key.to_owned(),
            entry: KvEntry {
                flags,
                value: Some(base64::engine::general_purpose::STANDARD.encode(value)),
                session: session.map(str::to_owned),
                create_index: index,
                lock_index: 1,
                modify_index: index,
            },
        }
    }

    fn gate(session: Option<&str>) -> KeyedEntry {
        entry("p/k/.lock", RW_FLAG, session, 1, GATE_VALUE)
    }

    fn contender(name: &str, index: u64, mode: LockMode, granted: bool) -> KeyedEntry {
        let ticket = Ticket { granted, ..Ticket::new(mode, name) };
        entry(&format!("p/k/{name}"), RW_FLAG, Some(name), index, &ticket.to_bytes())
    }

    fn scene(entries: Vec<KeyedEntry>) -> Scene {
        Scene::parse(P, entries, 100)
    }

    fn json(operations: &[TxnKv]) -> String {
        serde_json::to_string(operations).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parse_reads_the_gate_and_orders_contenders() {
        let s = scene(vec![
            contender("b", 12, LockMode::Read, false),
            gate(Some("a")),
            contender("a", 10, LockMode::Write, true),
            // Another lock deeper under the prefix, a semaphore contender,
            // and a contender whose session is gone: none of them counts.
            entry("p/k/x/.lock", LOCK_FLAG, Some("z"), 5, b""),
            entry("p/k/s", 0xe0f6_9a2b_aa41_4de0, Some("s"), 6, b""),
            entry("p/k/dead", RW_FLAG, None, 7, b""),
        ]);
        assert_eq!(s.gate, Gate::Marker { session: Some("a".to_owned()), modify_index: 1 });
        assert_eq!(s.contenders.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["p/k/a", "p/k/b"]);
        assert_eq!(s.holders().iter().map(|h| (h.token.get(), h.mode)).collect::<Vec<_>>(), [(10, LockMode::Write)]);
        let native = scene(vec![entry("p/k/.lock", LOCK_FLAG, None, 3, b"")]);
        assert_eq!(native.gate, Gate::Native { session: None, modify_index: 3 });
        let foreign = scene(vec![entry("p/k/.lock", 0xe0f6_9a2b_aa41_4de0, None, 3, b"")]);
        assert!(matches!(foreign.gate, Gate::Foreign { .. }));
    }

    #[test]
    fn readers_share_and_writers_wait_in_order() {
        let s = scene(vec![
            gate(Some("r1")),
            contender("r1", 10, LockMode::Read, true),
            contender("r2", 11, LockMode::Read, false),
            contender("w", 12, LockMode::Write, false),
            contender("r3", 13, LockMode::Read, false),
        ]);
        assert!(s.may_hold("p/k/r2"), "a reader shares with the readers before it");
        assert!(!s.may_hold("p/k/w"), "a writer waits for everyone before it");
        assert!(!s.may_hold("p/k/r3"), "a reader after a waiting writer waits");
        assert!(!s.may_hold("p/k/unknown"));
        let alone = scene(vec![gate(Some("w")), contender("w", 12, LockMode::Write, false)]);
        assert!(alone.may_hold("p/k/w"));
        let exclusive = scene(vec![
            gate(Some("m")),
            contender("m", 9, LockMode::Exclusive, false),
            contender("r", 10, LockMode::Read, false),
        ]);
        assert!(!exclusive.may_hold("p/k/r"), "a queued mutex holds back later readers");
    }

    #[test]
    fn nobody_holds_without_a_locked_gate_or_beside_a_granted_writer() {
        let unlocked = scene(vec![gate(None), contender("w", 12, LockMode::Write, false)]);
        assert!(!unlocked.may_hold("p/k/w"));
        let absent = scene(vec![contender("w", 12, LockMode::Write, false)]);
        assert!(!absent.may_hold("p/k/w"));
        // A later writer granted (never by this recipe, but by a tampered
        // or foreign write) still keeps an earlier reader out.
        let odd = scene(vec![
            gate(Some("w")),
            contender("r", 10, LockMode::Read, false),
            contender("w", 12, LockMode::Write, true),
        ]);
        assert!(!odd.may_hold("p/k/r"));
    }

    #[test]
    fn the_last_to_leave_deletes_the_gate() {
        let s = scene(vec![gate(Some("a")), contender("a", 10, LockMode::Read, true)]);
        let ops = json(&s.leave(P, "p/k/a"));
        assert!(ops.contains(r#""Verb":"delete-cas","Key":"p/k/a","Index":10"#), "{ops}");
        assert!(ops.contains(r#""Verb":"delete-cas","Key":"p/k/.lock","Index":1"#), "{ops}");
        // An orphaned gate goes too, whoever finds it.
        let orphan = scene(vec![gate(Some("gone"))]);
        assert!(json(&orphan.leave(P, "p/k/a")).contains(r#""Key":"p/k/.lock""#));
    }

    #[test]
    fn a_leaving_gate_holder_hands_the_gate_on() {
        let s = scene(vec![
            gate(Some("a")),
            contender("a", 10, LockMode::Read, true),
            contender("b", 11, LockMode::Read, true),
            contender("c", 12, LockMode::Write, false),
        ]);
        let ops = json(&s.leave(P, "p/k/a"));
        assert!(ops.contains(r#""Verb":"unlock","Key":"p/k/.lock""#) && ops.contains(r#""Session":"a""#), "{ops}");
        assert!(ops.contains(r#""Verb":"lock","Key":"p/k/.lock""#) && ops.contains(r#""Session":"c""#), "{ops}");
        // Another contender leaving rewrites the gate unchanged, so two
        // leaving at once are serialised.
        let other = json(&s.leave(P, "p/k/b"));
        assert!(other.contains(r#""Verb":"cas","Key":"p/k/.lock""#) && !other.contains("unlock"), "{other}");
        // Nothing of ours and nothing to fix: nothing to send.
        assert!(s.leave(P, "p/k/gone").is_empty());
    }

    fn asker<'a>(key: &'a str, ticket: &'a Ticket) -> Asker<'a> {
        Asker { lock_prefix: P, key, session: "me", ticket }
    }

    fn written(next: Move) -> String {
        match next {
            Move::Write(operations) => json(&operations),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn joining_depends_on_the_gate() {
        let ticket = Ticket::new(LockMode::Write, "me");
        let me = asker("p/k/me-1", &ticket);
        let free = written(scene(vec![]).next_move(me, Timing::default()));
        assert!(
            free.starts_with(r#"[{"Verb":"check-not-exists","Key":"p/k/.lock"},{"Verb":"lock","Key":"p/k/.lock""#),
            "{free}"
        );
        assert!(
            free.contains(r#""Verb":"lock","Key":"p/k/me-1""#)
                && free.ends_with(r#"{"Verb":"get-tree","Key":"p/k/"}]"#)
        );
        let beside = written(scene(vec![gate(Some("a"))]).next_move(me, Timing::default()));
        assert!(beside.starts_with(r#"[{"Verb":"cas","Key":"p/k/.lock""#), "joining bumps the gate: {beside}");
        let plain = scene(vec![entry("p/k/.lock", LOCK_FLAG, Some("n"), 4, b"")]);
        let queued = written(plain.next_move(me, Timing::default()));
        assert!(
            queued
                .starts_with(r#"[{"Verb":"check-index","Key":"p/k/.lock","Index":4},{"Verb":"lock","Key":"p/k/me-1""#)
        );
        let foreign = scene(vec![entry("p/k/.lock", 0xe0f6_9a2b_aa41_4de0, None, 3, b"")]);
        assert!(matches!(foreign.next_move(me, Timing::default()), Move::Refuse(0xe0f6_9a2b_aa41_4de0)));
    }

    #[test]
    fn a_joined_contender_claims_waits_or_regates() {
        let ticket = Ticket::new(LockMode::Read, "me");
        let me = asker("p/k/me", &ticket);
        let alone = scene(vec![gate(Some("a")), contender("me", 10, LockMode::Read, false)]);
        match alone.next_move(me, Timing::default()) {
            Move::Claim(operations) => {
                let ops = json(&operations);
                assert!(ops.contains(r#""Verb":"check-session","Key":"p/k/.lock","Session":"a""#), "{ops}");
                assert!(ops.contains(r#""Verb":"cas","Key":"p/k/me""#) && ops.contains(r#""Index":10"#), "{ops}");
            }
            other => panic!("expected a claim, got {other:?}"),
        }
        let behind = scene(vec![
            gate(Some("w")),
            contender("w", 9, LockMode::Write, false),
            contender("me", 10, LockMode::Read, false),
        ]);
        assert!(matches!(behind.next_move(me, Timing::default()), Move::Wait(None)));
        let recovered = scene(vec![gate(Some("a")), contender("me", 10, LockMode::Read, true)]);
        assert!(matches!(recovered.next_move(me, Timing::default()), Move::Held(10)));
        // The gate's session ended: make it ours, unlocked during the lock delay.
        let orphaned =
            scene(vec![contender("me", 10, LockMode::Read, true), contender("x", 11, LockMode::Read, false)]);
        let x_ticket = Ticket::new(LockMode::Read, "x");
        let x = asker("p/k/x", &x_ticket);
        let delayed = Timing { lock_delay: Some(Duration::from_millis(200)), released_for: None };
        let regate = written(orphaned.next_move(x, delayed));
        assert!(
            regate.contains(r#""Verb":"set","Key":"p/k/.lock""#) && !regate.contains(r#""Key":"p/k/x""#),
            "{regate}"
        );
        let unlocked = scene(vec![gate(None), contender("x", 11, LockMode::Read, false)]);
        assert!(matches!(unlocked.next_move(x, delayed), Move::Wait(Some(_))));
        assert!(written(unlocked.next_move(x, Timing::default())).contains(r#""Verb":"lock","Key":"p/k/.lock""#));
    }

    #[test]
    fn a_released_plain_lock_is_left_to_its_owner_for_a_grace() {
        let ticket = Ticket::new(LockMode::Read, "me");
        let me = asker("p/k/me", &ticket);
        let released =
            scene(vec![entry("p/k/.lock", LOCK_FLAG, None, 4, b""), contender("me", 10, LockMode::Read, false)]);
        let soon = Timing { lock_delay: None, released_for: Some(Duration::from_millis(300)) };
        assert!(matches!(released.next_move(me, soon), Move::Wait(Some(left)) if left == Duration::from_millis(700)));
        let later = Timing { lock_delay: None, released_for: Some(NATIVE_RELEASE_GRACE) };
        let taken = written(released.next_move(me, later));
        assert!(
            taken
                .starts_with(r#"[{"Verb":"check-index","Key":"p/k/.lock","Index":4},{"Verb":"lock","Key":"p/k/.lock""#)
        );
    }

    #[test]
    fn leaving_beside_a_plain_lock_touches_only_our_key() {
        let s =
            scene(vec![entry("p/k/.lock", LOCK_FLAG, Some("n"), 4, b""), contender("a", 10, LockMode::Write, false)]);
        let ops = json(&s.leave(P, "p/k/a"));
        assert!(!ops.contains(".lock"), "{ops}");
    }
}
