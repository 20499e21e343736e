//! What the keys of one counting semaphore say, read in one request, laid
//! out exactly as Consul's own `api.Semaphore` (and so `consul lock -n`)
//! lays them out: one contender key per session, `PREFIX/{session}`, locked
//! by that session, and the coordination record `PREFIX/.lock` (no session)
//! holding `{"Limit":N,"Holders":{"<session>":true}}`, changed only by
//! check-and-set on its `ModifyIndex`. A holder whose session is gone (its
//! contender key went with it) is pruned by whoever writes the record next.
//!
//! Pure: no I/O, so every rule is tested here without a Consul agent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_core::{FencingToken, LockInfo, LockMode};
use serde::{Deserialize, Serialize};

use crate::api::{KeyedEntry, TxnKv};
use crate::lock::LOCK_FLAG;
use crate::scene::{RW_FLAG, gate_key, tree};

/// The `Flags` value of a semaphore's keys (`SemaphoreFlagValue` in
/// Consul's Go API), on the contender keys and the coordination record.
/// `consul lock PREFIX` refuses a `.lock` with these flags ("existing key
/// does not match lock use"), and `consul lock -n` a `.lock` without them.
pub const SEMAPHORE_FLAG: u64 = 0xe0f6_9a2b_aa41_4de0;

/// The coordination record as Go's `json.Marshal` writes `api.Semaphore`'s
/// (field names as they are, holders sorted, an empty set as `{}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Record<'a> {
    #[serde(rename = "Limit")]
    limit: u32,
    #[serde(rename = "Holders")]
    holders: BTreeMap<&'a str, bool>,
}

/// The record as read: Go writes `Limit` as an `int`, and would write a nil
/// map as `null`.
#[derive(Debug, Deserialize)]
struct ReadRecord {
    #[serde(rename = "Limit")]
    limit: i64,
    #[serde(rename = "Holders", default)]
    holders: Option<BTreeMap<String, bool>>,
}

/// The state of `PREFIX/.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Coordination {
    /// No record: the first admission creates it (check-and-set on index 0).
    Absent,
    /// A semaphore's record. `limit` is `None` for a record without a value,
    /// which `api.Semaphore` reads as the asker's own limit and no holders.
    Record { limit: Option<i64>, holders: BTreeSet<String>, modify_index: u64 },
    /// A semaphore's record whose value is not the record's JSON.
    Undecodable { message: String },
    /// Another recipe's key (a mutex, a reader/writer gate, a plain value).
    Foreign { flags: u64 },
}

/// What a distlock contender key's value records, for `holders`.
/// `consul lock -n` writes none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ticket {
    /// The owner string `holders` reports.
    pub(crate) owner: String,
    /// When it was written, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub(crate) since_ms: u64,
    /// The value the holder publishes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<String>,
    /// Unique per admission: Consul skips a write that changes nothing, and
    /// the admitting write must give the key the record's new index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) admission: Option<String>,
}

impl Ticket {
    /// A ticket for `owner`, publishing `value`, written now.
    pub(crate) fn new(owner: &str, value: Option<&str>) -> Self {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
        Self {
            owner: owner.to_owned(),
            since_ms: u64::try_from(millis).unwrap_or(u64::MAX),
            value: value.map(str::to_owned),
            admission: None,
        }
    }

    /// The same ticket, for one admitting write.
    pub(crate) fn admitted(&self) -> Self {
        Self { admission: Some(uuid::Uuid::new_v4().simple().to_string()), ..self.clone() }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Strings and an integer always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One contender: a key with [`SEMAPHORE_FLAG`] beside the record, locked
/// by its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contender {
    pub(crate) key: String,
    pub(crate) session: String,
    /// The index of its last write: for a distlock holder, the write that
    /// admitted it (its fencing token).
    pub(crate) modify_index: u64,
    pub(crate) ticket: Option<Ticket>,
}

/// Who asks, for [`Places::next_move`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seeker<'a> {
    pub(crate) lock_prefix: &'a str,
    /// The contender key, `PREFIX/{session}`.
    pub(crate) key: &'a str,
    pub(crate) session: &'a str,
    pub(crate) limit: u32,
    pub(crate) ticket: &'a [u8],
}

/// One acquisition's next step.
#[derive(Debug)]
pub(crate) enum Move {
    /// The prefix is in use in a way a semaphore of this limit cannot share.
    Conflict(String),
    /// The record cannot be read.
    Broken(String),
    /// Our contender key is gone: its session ended, or it was deleted.
    Gone,
    /// Every place is taken: wait for a change.
    Wait,
    /// Take a place with these operations: only while our contender key is
    /// ours, and only if the record is unchanged since this read. The
    /// record's new `ModifyIndex`, which our contender key gets too (one
    /// transaction, one raft index), is the fencing token.
    Claim(Vec<TxnKv>),
}

/// The keys of one semaphore as one read saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Places {
    pub(crate) coordination: Coordination,
    /// Contender keys, oldest write first.
    pub(crate) contenders: Vec<Contender>,
    /// The session of every key read (deeper keys too, as `api.Semaphore`
    /// counts them): holders outside it are dead.
    alive: BTreeSet<String>,
    /// Whether a reader/writer lock's contender key lives beside the record.
    reader_writer: bool,
    /// The index to block on for the next change.
    pub(crate) index: u64,
}

impl Places {
    /// The semaphore in `entries` (a read of `PREFIX/` with `recurse`, or a
    /// transaction's results; for a key listed twice the last entry counts).
    pub(crate) fn parse(lock_prefix: &str, entries: impl IntoIterator<Item = KeyedEntry>, index: u64) -> Self {
        let tree = tree(lock_prefix);
        let gate = gate_key(lock_prefix);
        let latest: BTreeMap<String, KeyedEntry> =
            entries.into_iter().filter(|e| e.key.starts_with(&tree)).map(|e| (e.key.clone(), e)).collect();
        let mut places = Self {
            coordination: Coordination::Absent,
            contenders: Vec::new(),
            alive: BTreeSet::new(),
            reader_writer: false,
            index,
        };
        for (key, KeyedEntry { entry, .. }) in latest {
            let session = entry.holder().map(str::to_owned);
            if let Some(session) = &session {
                places.alive.insert(session.clone());
            }
            let direct = key.strip_prefix(&tree).is_some_and(|name| !name.is_empty() && !name.contains('/'));
            if key == gate {
                places.coordination = coordination(entry.flags, &entry.value_bytes(), entry.modify_index);
            } else if !direct {
                continue;
            } else if entry.flags == RW_FLAG && session.is_some() {
                places.reader_writer = true;
            } else if let (SEMAPHORE_FLAG, Some(session)) = (entry.flags, session) {
                let ticket = serde_json::from_slice(&entry.value_bytes()).ok();
                places.contenders.push(Contender { key, session, modify_index: entry.modify_index, ticket });
            }
        }
        places.contenders.sort_by(|a, b| (a.modify_index, &a.key).cmp(&(b.modify_index, &b.key)));
        places
    }

    /// Our contender key, if it is ours.
    fn own(&self, key: &str, session: &str) -> Option<&Contender> {
        self.contenders.iter().find(|c| c.key == key && c.session == session)
    }

    /// The record's holders whose session lives (`pruneDeadHolders`).
    fn live_holders(&self) -> BTreeSet<&str> {
        match &self.coordination {
            Coordination::Record { holders, .. } => {
                holders.iter().map(String::as_str).filter(|h| self.alive.contains(*h)).collect()
            }
            _ => BTreeSet::new(),
        }
    }

    /// Whether the contender `key` of `session` holds a place it was
    /// admitted to with `token`.
    pub(crate) fn holds(&self, key: &str, session: &str, token: u64) -> bool {
        self.own(key, session).is_some_and(|own| own.modify_index == token) && self.live_holders().contains(session)
    }

    /// The next step of `seeker`'s acquisition.
    pub(crate) fn next_move(&self, seeker: Seeker<'_>) -> Move {
        let limit = match &self.coordination {
            Coordination::Foreign { flags } => return Move::Conflict(foreign(*flags)),
            Coordination::Undecodable { message } => return Move::Broken(message.clone()),
            _ if self.reader_writer => return Move::Conflict(foreign(RW_FLAG)),
            Coordination::Record { limit: Some(limit), .. } if *limit != i64::from(seeker.limit) => {
                // Consul's own words, so both sides say the same.
                return Move::Conflict(format!("semaphore limit conflict (lock: {limit}, local: {})", seeker.limit));
            }
            _ => seeker.limit,
        };
        if self.own(seeker.key, seeker.session).is_none() {
            return Move::Gone;
        }
        let mut holders = self.live_holders();
        // Already in (an admission whose answer was lost): admitted again,
        // for a token above every grant since.
        if !holders.contains(seeker.session) && holders.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return Move::Wait;
        }
        holders.insert(seeker.session);
        let record = Record { limit, holders: holders.into_iter().map(|h| (h, true)).collect() };
        let index = match &self.coordination {
            Coordination::Record { modify_index, .. } => *modify_index,
            _ => 0,
        };
        Move::Claim(vec![
            TxnKv::check_session(seeker.key, seeker.session),
            TxnKv::cas(&gate_key(seeker.lock_prefix), &to_json(&record), SEMAPHORE_FLAG, index),
            TxnKv::lock(seeker.key, seeker.ticket, SEMAPHORE_FLAG, seeker.session),
        ])
    }

    /// Whether our contender key is ours, as admitted with `token`, and in
    /// the record: what a release of a held place finds.
    pub(crate) fn held_as(&self, key: &str, session: &str, token: Option<u64>) -> bool {
        match token {
            Some(token) => self.holds(key, session, token),
            None => self.own(key, session).is_some(),
        }
    }

    /// The operations that take `session` out: its holder entry removed
    /// (dead holders pruned with it), its contender key deleted, and the
    /// record deleted once no live holder is left (as `consul lock`'s
    /// `Destroy` does; a waiting contender writes it again). Empty when
    /// there is nothing to do.
    pub(crate) fn leave(&self, lock_prefix: &str, key: &str, session: &str) -> Vec<TxnKv> {
        let mut operations = Vec::new();
        if let Coordination::Record { limit, holders, modify_index } = &self.coordination {
            let remaining: BTreeSet<&str> = self.live_holders().into_iter().filter(|h| *h != session).collect();
            let gate = gate_key(lock_prefix);
            if remaining.is_empty() {
                operations.push(TxnKv::delete_cas(&gate, *modify_index));
            } else if holders.contains(session) {
                let limit = limit.and_then(|l| u32::try_from(l).ok()).unwrap_or(1);
                let record = Record { limit, holders: remaining.into_iter().map(|h| (h, true)).collect() };
                operations.push(TxnKv::cas(&gate, &to_json(&record), SEMAPHORE_FLAG, *modify_index));
            }
        }
        if self.contenders.iter().any(|c| c.key == key) {
            operations.push(TxnKv::delete(key));
        }
        operations
    }

    /// The holders, in token order: contender keys whose session the record
    /// lists and which live.
    pub(crate) fn holders(&self) -> Vec<LockInfo> {
        let live = self.live_holders();
        let limit = match &self.coordination {
            Coordination::Record { limit, .. } => limit.and_then(|l| u32::try_from(l).ok()),
            _ => None,
        };
        let mode =
            LockMode::semaphore(limit.unwrap_or(1)).unwrap_or(LockMode::Semaphore { limit: std::num::NonZeroU32::MIN });
        let mut holders: Vec<LockInfo> = self
            .contenders
            .iter()
            .filter(|c| live.contains(c.session.as_str()))
            .map(|c| {
                let token = FencingToken::new(c.modify_index);
                match &c.ticket {
                    Some(ticket) => {
                        let info = LockInfo::new(ticket.owner.clone(), token)
                            .with_mode(mode)
                            .with_held_since(UNIX_EPOCH + Duration::from_millis(ticket.since_ms));
                        match &ticket.value {
                            Some(value) => info.with_value(value.clone()),
                            None => info,
                        }
                    }
                    // A `consul lock -n` holder, which records nothing.
                    None => LockInfo::new(format!("consul session {}", c.session), token).with_mode(mode),
                }
            })
            .collect();
        holders.sort_by_key(|info| info.token);
        holders
    }
}

fn to_json(record: &Record<'_>) -> Vec<u8> {
    // A number and a map of strings to booleans always serialise.
    serde_json::to_vec(record).unwrap_or_default()
}

/// Reads `.lock` as a semaphore's record, if its flags say it is one.
fn coordination(flags: u64, value: &[u8], modify_index: u64) -> Coordination {
    if flags != SEMAPHORE_FLAG {
        return Coordination::Foreign { flags };
    }
    if value.is_empty() {
        return Coordination::Record { limit: None, holders: BTreeSet::new(), modify_index };
    }
    match serde_json::from_slice::<ReadRecord>(value) {
        Ok(record) => Coordination::Record {
            limit: Some(record.limit),
            holders: record.holders.unwrap_or_default().into_keys().collect(),
            modify_index,
        },
        Err(error) => Coordination::Undecodable { message: format!("lock decoding failed: {error}") },
    }
}

/// What a `.lock` with `flags` belongs to, for a conflict's message.
pub(crate) fn recipe_of(flags: u64) -> String {
    match flags {
        LOCK_FLAG => "a mutex (consul lock, api.Lock)".to_owned(),
        RW_FLAG => "a distlock reader/writer lock".to_owned(),
        SEMAPHORE_FLAG => "a semaphore (consul lock -n, api.Semaphore)".to_owned(),
        flags => format!("no lock at all (flags {flags:#x})"),
    }
}

/// A semaphore's conflict with a `.lock` of another recipe, in Consul's
/// words first.
fn foreign(flags: u64) -> String {
    format!("Existing key does not match semaphore use: the key is {}", recipe_of(flags))
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

    fn record(value: &str, index: u64) -> KeyedEntry {
        entry("p/k/.lock", SEMAPHORE_FLAG, None, index, value.as_bytes())
    }

    fn contender(session: &str, index: u64) -> KeyedEntry {
        entry(&format!("p/k/{session}"), SEMAPHORE_FLAG, Some(session), index, b"")
    }

    fn seeker<'a>(session: &'a str, key: &'a str, limit: u32) -> Seeker<'a> {
        Seeker { lock_prefix: P, key, session, limit, ticket: b"{}" }
    }

    fn json(operations: &[TxnKv]) -> String {
        serde_json::to_string(operations).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_record_is_written_as_go_writes_it() {
        let empty = Record { limit: 2, holders: BTreeMap::new() };
        assert_eq!(to_json(&empty), br#"{"Limit":2,"Holders":{}}"#);
        let two = Record { limit: 3, holders: [("b", true), ("a", true)].into_iter().collect() };
        assert_eq!(to_json(&two), br#"{"Limit":3,"Holders":{"a":true,"b":true}}"#);
        // The flag value exceeds 2^53: parsed exactly, never through a float.
        let parsed: Vec<KeyedEntry> =
            serde_json::from_str(r#"[{"Key":"p/k/.lock","Flags":16210313421097356768,"ModifyIndex":3}]"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed[0].entry.flags, SEMAPHORE_FLAG);
    }

    #[test]
    fn a_free_place_is_claimed_with_a_check_and_set() {
        let places = Places::parse(
            P,
            vec![record(r#"{"Limit":2,"Holders":{"a":true}}"#, 7), contender("a", 5), contender("me", 8)],
            9,
        );
        match places.next_move(seeker("me", "p/k/me", 2)) {
            Move::Claim(operations) => {
                let ops = json(&operations);
                assert!(ops.contains(r#"{"Verb":"check-session","Key":"p/k/me","Session":"me"}"#), "{ops}");
                assert!(ops.contains(r#""Verb":"cas","Key":"p/k/.lock""#) && ops.contains(r#""Index":7"#), "{ops}");
                assert!(ops.contains(r#""Flags":16210313421097356768"#), "{ops}");
                assert!(ops.contains(r#""Verb":"lock","Key":"p/k/me""#), "{ops}");
            }
            other => panic!("expected a claim, got {other:?}"),
        }
        // The first one creates the record: check-and-set on index 0.
        let fresh = Places::parse(P, vec![contender("me", 8)], 9);
        assert!(
            matches!(fresh.next_move(seeker("me", "p/k/me", 2)), Move::Claim(ops) if json(&ops).contains(r#""Index":0"#))
        );
    }

    #[test]
    fn full_places_wait_and_dead_holders_are_pruned() {
        let full = Places::parse(
            P,
            vec![
                record(r#"{"Limit":2,"Holders":{"a":true,"b":true}}"#, 7),
                contender("a", 5),
                contender("b", 6),
                contender("me", 8),
            ],
            9,
        );
        assert!(matches!(full.next_move(seeker("me", "p/k/me", 2)), Move::Wait));
        assert_eq!(full.holders().len(), 2);
        // b's session is gone (its key went with it): its place is free.
        let pruned = Places::parse(
            P,
            vec![record(r#"{"Limit":2,"Holders":{"a":true,"b":true}}"#, 7), contender("a", 5), contender("me", 8)],
            9,
        );
        match pruned.next_move(seeker("me", "p/k/me", 2)) {
            Move::Claim(ops) => {
                assert!(json(&ops).contains(&base64_of(r#"{"Limit":2,"Holders":{"a":true,"me":true}}"#)))
            }
            other => panic!("expected a claim, got {other:?}"),
        }
        assert_eq!(pruned.holders().iter().map(|h| h.token.get()).collect::<Vec<_>>(), [5]);
    }

    fn base64_of(text: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn another_limit_or_recipe_is_a_conflict() {
        let other = Places::parse(P, vec![record(r#"{"Limit":3,"Holders":{}}"#, 7), contender("me", 8)], 9);
        assert!(matches!(other.next_move(seeker("me", "p/k/me", 2)),
            Move::Conflict(m) if m == "semaphore limit conflict (lock: 3, local: 2)"));
        let mutex = Places::parse(P, vec![entry("p/k/.lock", LOCK_FLAG, Some("x"), 7, b""), contender("me", 8)], 9);
        assert!(matches!(mutex.next_move(seeker("me", "p/k/me", 2)), Move::Conflict(m) if m.contains("mutex")));
        let rw = Places::parse(P, vec![entry("p/k/x-1", RW_FLAG, Some("x"), 7, b""), contender("me", 8)], 9);
        assert!(matches!(rw.next_move(seeker("me", "p/k/me", 2)), Move::Conflict(m) if m.contains("reader/writer")));
        let broken = Places::parse(P, vec![record("not json", 7), contender("me", 8)], 9);
        assert!(matches!(broken.next_move(seeker("me", "p/k/me", 2)), Move::Broken(_)));
        let gone = Places::parse(P, vec![record(r#"{"Limit":2,"Holders":{}}"#, 7)], 9);
        assert!(matches!(gone.next_move(seeker("me", "p/k/me", 2)), Move::Gone));
        // A record without a value takes the asker's limit, as api.Semaphore reads it.
        let bare = Places::parse(P, vec![record("", 7), contender("me", 8)], 9);
        assert!(matches!(bare.next_move(seeker("me", "p/k/me", 5)), Move::Claim(_)));
    }

    #[test]
    fn the_last_holder_to_leave_deletes_the_record() {
        let last = Places::parse(
            P,
            vec![record(r#"{"Limit":2,"Holders":{"me":true,"dead":true}}"#, 7), contender("me", 8)],
            9,
        );
        assert!(last.held_as("p/k/me", "me", Some(8)));
        assert!(!last.held_as("p/k/me", "me", Some(7)));
        let ops = json(&last.leave(P, "p/k/me", "me"));
        assert!(ops.contains(r#"{"Verb":"delete-cas","Key":"p/k/.lock","Index":7}"#), "{ops}");
        assert!(ops.contains(r#"{"Verb":"delete","Key":"p/k/me"}"#), "{ops}");
        let shared = Places::parse(
            P,
            vec![record(r#"{"Limit":2,"Holders":{"me":true,"a":true}}"#, 7), contender("a", 5), contender("me", 8)],
            9,
        );
        let ops = json(&shared.leave(P, "p/k/me", "me"));
        assert!(
            ops.contains(&base64_of(r#"{"Limit":2,"Holders":{"a":true}}"#)) && !ops.contains("delete-cas"),
            "{ops}"
        );
        // A waiter leaving beside a holder touches only its own key.
        let waiter = Places::parse(
            P,
            vec![record(r#"{"Limit":1,"Holders":{"a":true}}"#, 7), contender("a", 5), contender("me", 8)],
            9,
        );
        assert_eq!(json(&waiter.leave(P, "p/k/me", "me")), r#"[{"Verb":"delete","Key":"p/k/me"}]"#);
        // Nothing of ours and no record: nothing to send.
        assert!(Places::parse(P, vec![], 9).leave(P, "p/k/me", "me").is_empty());
    }
}
