//! Reader/writer locks on etcd, beside the mutex: which key each
//! [`LockMode`] writes, which keys it waits for, and who holds a lock (for
//! the semaphore's part see [`semaphore`](crate::semaphore)).
//!
//! # Layout: etcd's `recipes.RWMutex`, with a deterministic suffix
//!
//! etcd's reader/writer recipe (`client/v3/experimental/recipes`, Go) puts
//! each contender on its session's lease under `{name}/read/` or
//! `{name}/write/` and orders them by revision; readers wait for every key
//! under `{name}/write` created before theirs, writers for every key under
//! `{name}/`. We keep those prefixes, the lease and the order, so a Go
//! recipe reader waits for our writers and a Go recipe writer for all of us
//! (and we for them). The recipe orders by mod revision, we by create
//! revision as etcd's Mutex does; contender keys are written once and never
//! modified, so the two orders are the same.
//!
//! One deviation: the recipe names a key `{name}/read/{unix nanos}`, we name
//! it `{name}/read/{lease hex}-{n}` (and `write` alike), with `n` new for
//! every attempt of the client. A write whose reply is lost may or may not
//! have landed, and its clean-up deletes the key only while it is attached
//! to our lease ([`cleanup`](crate::cleanup)). That is safe only if no other
//! attempt of ours ever writes the same name, which a clock cannot promise
//! (two readers of one client in one tick, a clock stepped back) and a
//! per-client counter under a lease id can. The lease id, unique in the
//! cluster, also keeps other clients' names apart, so a write never fails
//! because someone else picked the name, and a key names its lease as the
//! mutex's `{name}/{lease hex}` does. Neither Go reads the suffix.
//!
//! # Who waits for whom
//!
//! | asking | waits for keys created before its own |
//! |---|---|
//! | mutex (`{name}/{lease hex}`) | every key under `{name}/` |
//! | writer (`{name}/write/...`) | every key under `{name}/` |
//! | reader (`{name}/read/...`) | every key under `{name}/` but `{name}/read/` |
//! | semaphore (`{name}/semaphore/...`) | every key under `{name}/` but `{name}/semaphore/`; `limit` of those |
//!
//! A reader treats everything that is not a reader as a writer: the
//! recipe's readers look at `{name}/write` only and so miss the holder of an
//! `etcdctl lock` on the same name; ours do not. A waiting writer's key is
//! older than every reader that arrives after it, so those readers wait
//! behind it: writers are never starved.
//!
//! # Fencing
//!
//! The token is the key's create revision, as for the mutex. A writer (or
//! mutex contender) is granted only once no key created before it is left,
//! and every key created after it waits for it: every earlier grant had a
//! lower revision. A reader is granted only once no non-reader created
//! before it is left, and every writer created after it waits for it: every
//! earlier writer had a lower revision, every later one has a higher one.
//! Two readers may be granted out of revision order (both were free, one
//! read first); they share the key, and a resource does not compare readers'
//! tokens (see [`LockMode`]).

use etcd_client::KeyValue;
use lock_core::{FencingToken, LockInfo, LockKey, LockMode};

use crate::layout::{attempt_key, contender_key, contenders_prefix, mode_of, prefix_end, side_prefix};
use crate::queue::KeyRange;
use crate::semaphore::{Places, Record};

/// One acquisition's place in a lock's queue: the key it writes, the ranges
/// whose keys, created before its own, it waits for, and for a semaphore
/// the range it shares up to its limit.
#[derive(Debug)]
pub(crate) struct Contention {
    namespace: String,
    key: LockKey,
    mode: LockMode,
    /// The attempt's number, in the names of readers, writers and semaphore
    /// contenders.
    attempt: u64,
    blockers: Vec<KeyRange>,
    places: Option<Places>,
}

impl Contention {
    /// Attempt number `attempt` of this client at `key` in `mode`.
    pub(crate) fn new(namespace: &str, key: &LockKey, mode: LockMode, attempt: u64) -> Self {
        let all = contenders_prefix(namespace, key);
        let (blockers, places) = match mode {
            LockMode::Read | LockMode::Semaphore { .. } => {
                // Everything under `{name}/` around our own subtree.
                let side = side_prefix(namespace, key, mode);
                let around = vec![
                    KeyRange::new(all.clone(), side.clone()),
                    KeyRange::new(prefix_end(side.as_bytes()), prefix_end(all.as_bytes())),
                ];
                let places = match mode {
                    LockMode::Semaphore { limit } => Some(Places { range: KeyRange::prefix(&side), limit }),
                    _ => None,
                };
                (around, places)
            }
            _ => (vec![KeyRange::prefix(&all)], None),
        };
        Self { namespace: namespace.to_owned(), key: key.clone(), mode, attempt, blockers, places }
    }

    /// The key this attempt writes when it holds `lease`.
    pub(crate) fn contender(&self, lease: i64) -> String {
        match self.mode {
            LockMode::Exclusive => contender_key(&self.namespace, &self.key, lease),
            _ => attempt_key(&self.namespace, &self.key, self.mode, lease, self.attempt),
        }
    }

    /// The ranges whose keys, created before ours, we wait for.
    pub(crate) fn blockers(&self) -> &[KeyRange] {
        &self.blockers
    }

    /// For a semaphore, its places: the range whose keys we share the lock
    /// with, as long as fewer than the limit were created before ours.
    pub(crate) fn places(&self) -> Option<&Places> {
        self.places.as_ref()
    }
}

/// Who holds a lock, from every key under its `prefix` (`{name}/`) in create
/// order.
pub(crate) fn holders(prefix: &str, contenders: &[KeyValue]) -> Vec<LockInfo> {
    let modes: Vec<LockMode> =
        contenders.iter().map(|contender| mode_of(prefix, contender.key(), contender.value())).collect();
    let holding = holding(&modes);
    contenders.iter().zip(modes).take(holding).map(|(contender, mode)| holder_info(contender, mode)).collect()
}

/// How many contenders, in create order, hold: the first always; after it,
/// while each shares the lock with the first (readers with readers,
/// semaphore contenders with those of their limit) and is within its limit.
fn holding(modes: &[LockMode]) -> usize {
    let Some(first) = modes.first() else { return 0 };
    let sharing = modes.iter().enumerate().skip(1).take_while(|(index, mode)| {
        mode.shares_with(*first) && mode.limit().is_none_or(|limit| *index < limit as usize)
    });
    1 + sharing.count()
}

/// A holder's information from its key: its create revision, and what its
/// value says. A semaphore contender's record names its owner and value; any
/// other key holds one string, the value it publishes if it publishes one
/// (a leader's proposal, as etcd's election stores it) or else its owner
/// string, reported as both (etcdctl and Go's lock store none: the owner is
/// then its lease).
pub(crate) fn holder_info(contender: &KeyValue, mode: LockMode) -> LockInfo {
    let token = FencingToken::new(u64::try_from(contender.create_revision()).unwrap_or_default());
    let lease = || format!("etcd lease {:x}", contender.lease());
    if let Some(record) = Record::parse(contender.value()).filter(|record| record.mode() == mode) {
        let owner = if record.owner().is_empty() { lease() } else { record.owner().to_owned() };
        let info = LockInfo::new(owner, token).with_mode(mode);
        return match record.value() {
            Some(value) => info.with_value(value),
            None => info,
        };
    }
    match contender.value_str() {
        Ok(stored) if !stored.is_empty() => LockInfo::new(stored, token).with_mode(mode).with_value(stored),
        _ => LockInfo::new(lease(), token).with_mode(mode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> LockKey {
        LockKey::new(k).unwrap_or_else(|e| panic!("{e}"))
    }

    fn blocks(contention: &Contention, other: &str) -> bool {
        contention.blockers().iter().any(|range| range.contains(other.as_bytes()))
    }

    #[test]
    fn readers_wait_for_everything_but_readers() {
        let k = key("jobs/a");
        let reader = Contention::new("ns/", &k, LockMode::Read, 1);
        let others = [
            ("ns/jobs%2Fa/7b", true),                        // etcdctl lock
            ("ns/jobs%2Fa/write/7b-2", true),                // our writer
            ("ns/jobs%2Fa/write/1700000000000000000", true), // the recipe's writer
            ("ns/jobs%2Fa/reader", true),                    // unknown: taken for a writer
            ("ns/jobs%2Fa/read/7b-3", false),                // our reader
            ("ns/jobs%2Fa/read/1700000000000000000", false), // the recipe's reader
            ("ns/jobs%2Fa0", false),                         // another lock
            ("ns/jobs%2Fa%2Fb/7b", false),                   // another lock
        ];
        for (other, blocking) in others {
            assert_eq!(blocks(&reader, other), blocking, "a reader and {other}");
        }
        assert!(!blocks(&reader, &reader.contender(0x7b)), "a reader waits for itself");
    }

    #[test]
    fn writers_and_the_mutex_wait_for_everything() {
        let k = key("jobs/a");
        for mode in [LockMode::Write, LockMode::Exclusive] {
            let contention = Contention::new("ns/", &k, mode, 1);
            for other in ["ns/jobs%2Fa/7b", "ns/jobs%2Fa/read/7b-0", "ns/jobs%2Fa/write/9-9"] {
                assert!(blocks(&contention, other), "{mode} and {other}");
            }
            assert!(!blocks(&contention, "ns/jobs%2Fa0"));
        }
        assert_eq!(Contention::new("ns/", &k, LockMode::Exclusive, 5).contender(0x7b), "ns/jobs%2Fa/7b");
    }

    #[test]
    fn readers_before_the_first_writer_hold_together() {
        use LockMode::{Exclusive, Read, Write};
        assert_eq!(holding(&[]), 0);
        assert_eq!(holding(&[Read, Read, Write, Read]), 2);
        assert_eq!(holding(&[Write, Read, Read]), 1);
        assert_eq!(holding(&[Exclusive, Write]), 1);
        assert_eq!(holding(&[Read, Exclusive]), 1);
        assert_eq!(holding(&[Read, Read, Read]), 3);
    }

    #[test]
    fn semaphore_contenders_wait_for_everything_but_their_places() {
        let k = key("jobs/a");
        let two = LockMode::semaphore(2).unwrap_or_else(|| panic!("2 > 0"));
        let contention = Contention::new("ns/", &k, two, 1);
        let places = contention.places().unwrap_or_else(|| panic!("a semaphore has places"));
        assert_eq!(places.limit.get(), 2);
        let others = [
            ("ns/jobs%2Fa/7b", true),
            ("ns/jobs%2Fa/read/7b-2", true),
            ("ns/jobs%2Fa/write/7b-3", true),
            ("ns/jobs%2Fa/semaphores", true),
            ("ns/jobs%2Fa/semaphore/7b-4", false),
            ("ns/jobs%2Fa0", false),
        ];
        for (other, blocking) in others {
            assert_eq!(blocks(&contention, other), blocking, "a semaphore contender and {other}");
            assert_eq!(places.range.contains(other.as_bytes()), other.contains("/semaphore/"), "{other}");
        }
        let mine = contention.contender(0x7b);
        assert_eq!(mine, "ns/jobs%2Fa/semaphore/7b-1");
        assert!(places.range.contains(mine.as_bytes()));
        assert!(Contention::new("ns/", &k, LockMode::Read, 1).places().is_none());
    }

    #[test]
    fn the_first_contenders_of_a_semaphore_hold_up_to_its_limit() {
        use LockMode::{Exclusive, Read};
        let (two, three) = (LockMode::semaphore(2), LockMode::semaphore(3));
        let (two, three) = (two.unwrap_or_else(|| panic!("2")), three.unwrap_or_else(|| panic!("3")));
        assert_eq!(holding(&[two, two, two]), 2);
        assert_eq!(holding(&[three, three, Exclusive, three]), 2);
        assert_eq!(holding(&[three, two]), 1);
        assert_eq!(holding(&[Exclusive, two]), 1);
        assert_eq!(holding(&[Read, two, Read]), 1);
        assert_eq!(holding(&[two, Read]), 1);
    }

    #[test]
    fn each_attempt_writes_a_name_of_its_own() {
        let k = key("a");
        let modes = [LockMode::Read, LockMode::Write, LockMode::Semaphore { limit: std::num::NonZeroU32::MIN }];
        let names: std::collections::HashSet<String> =
            (0..3).flat_map(|n| modes.map(|mode| Contention::new("", &k, mode, n).contender(1))).collect();
        assert_eq!(names.len(), 9, "{names:?}");
    }
}
