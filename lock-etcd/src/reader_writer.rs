//! Reader/writer locks on etcd, beside the mutex: which key each
//! [`LockMode`] writes, which keys it waits for, and who holds a lock.
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

use crate::layout::{contender_key, contenders_prefix, mode_of, prefix_end, reader_writer_key, side_prefix};
use crate::queue::KeyRange;

/// One acquisition's place in a lock's queue: the key it writes, and the
/// ranges whose keys, created before its own, it waits for.
#[derive(Debug)]
pub(crate) struct Contention {
    namespace: String,
    key: LockKey,
    mode: LockMode,
    /// The attempt's number, in the names of readers and writers.
    attempt: u64,
    blockers: Vec<KeyRange>,
}

impl Contention {
    /// Attempt number `attempt` of this client at `key` in `mode`.
    pub(crate) fn new(namespace: &str, key: &LockKey, mode: LockMode, attempt: u64) -> Self {
        let all = contenders_prefix(namespace, key);
        let blockers = if mode.is_shared() {
            // Everything under `{name}/` around the readers' subtree.
            let readers = side_prefix(namespace, key, LockMode::Read);
            vec![
                KeyRange::new(all.clone(), readers.clone()),
                KeyRange::new(prefix_end(readers.as_bytes()), prefix_end(all.as_bytes())),
            ]
        } else {
            vec![KeyRange::prefix(&all)]
        };
        Self { namespace: namespace.to_owned(), key: key.clone(), mode, attempt, blockers }
    }

    /// The key this attempt writes when it holds `lease`.
    pub(crate) fn contender(&self, lease: i64) -> String {
        match self.mode {
            LockMode::Read | LockMode::Write => {
                reader_writer_key(&self.namespace, &self.key, self.mode, lease, self.attempt)
            }
            _ => contender_key(&self.namespace, &self.key, lease),
        }
    }

    /// The ranges whose keys, created before ours, we wait for.
    pub(crate) fn blockers(&self) -> &[KeyRange] {
        &self.blockers
    }
}

/// Who holds a lock, from every key under its `prefix` (`{name}/`) in create
/// order.
pub(crate) fn holders(prefix: &str, contenders: &[KeyValue]) -> Vec<LockInfo> {
    let modes: Vec<LockMode> = contenders.iter().map(|contender| mode_of(prefix, contender.key())).collect();
    let holding = holding(&modes);
    contenders.iter().zip(modes).take(holding).map(|(contender, mode)| holder_info(contender, mode)).collect()
}

/// How many contenders, in create order, hold: the first if it is not a
/// reader, else every reader before the first contender that is not.
fn holding(modes: &[LockMode]) -> usize {
    match modes.iter().position(|mode| !mode.is_shared()) {
        Some(0) => 1,
        Some(first_writer) => first_writer,
        None => modes.len(),
    }
}

/// A holder's information from its key: the owner string it stored (or its
/// lease, for etcdctl and Go, which store none) and its create revision.
pub(crate) fn holder_info(contender: &KeyValue, mode: LockMode) -> LockInfo {
    let owner = match contender.value_str() {
        Ok(owner) if !owner.is_empty() => owner.to_owned(),
        _ => format!("etcd lease {:x}", contender.lease()),
    };
    let token = FencingToken::new(u64::try_from(contender.create_revision()).unwrap_or_default());
    LockInfo::new(owner, token).with_mode(mode)
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
    fn each_attempt_writes_a_name_of_its_own() {
        let k = key("a");
        let names: std::collections::HashSet<String> = (0..3)
            .flat_map(|n| [LockMode::Read, LockMode::Write].map(|mode| Contention::new("", &k, mode, n).contender(1)))
            .collect();
        assert_eq!(names.len(), 6, "{names:?}");
    }
}
