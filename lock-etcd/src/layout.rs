//! How distlock keys map onto etcd keys: exactly the layout of etcd's own
//! lock (`clientv3/concurrency.Mutex`, the server's Lock RPC and
//! `etcdctl lock`) and election (`concurrency.Election`, `etcdctl elect`),
//! so all of them exclude each other, the prefixes of etcd's reader/writer
//! recipe (`client/v3/experimental/recipes.RWMutex`), and a subtree of our
//! own for semaphores, for which etcd has no recipe.
//!
//! A distlock key `K` under namespace `N` is the native lock name
//! `N + escape(K)`, where `escape` writes `%` as `%25` and `/` as `%2F`. Each
//! contender writes one key under `{name}/`:
//!
//! * the mutex ([`LockMode::Exclusive`]): `{name}/{lease id in lowercase hex}`
//!   (an election candidate too: its value is the proposal);
//! * a reader: `{name}/read/{lease hex}-{n}`, a writer:
//!   `{name}/write/{lease hex}-{n}`, with `n` new for every attempt of the
//!   client (see [`reader_writer`](crate::reader_writer) for why not the
//!   recipe's `{name}/read/{unix nanos}`);
//! * a semaphore contender: `{name}/semaphore/{lease hex}-{n}`, its value
//!   naming the limit (see [`semaphore`](crate::semaphore)).
//!
//! A lease id in hex never starts with `r`, `s` or `w`, so a mutex key never
//! lies under `{name}/read`, `{name}/semaphore` or `{name}/write`. Escaping keeps keys independent:
//! etcd's lock reads its contenders by prefix `{name}/`, so without it the
//! lock `a` would also see the contenders of `a/b`.
//!
//! `jobs/nightly` in namespace `distlock/` is the native lock
//! `distlock/jobs%2Fnightly`: `etcdctl lock distlock/jobs%2Fnightly` shares it.

use lock_core::{LockKey, LockMode};

/// The native etcd lock name of `key` under `namespace`.
///
/// ```
/// use lock_core::LockKey;
/// let key = LockKey::new("jobs/nightly")?;
/// assert_eq!(lock_etcd::native_lock_name("distlock/", &key), "distlock/jobs%2Fnightly");
/// # Ok::<(), lock_core::LockError>(())
/// ```
pub fn native_lock_name(namespace: &str, key: &LockKey) -> String {
    format!("{namespace}{}", escape(key.as_str()))
}

/// The etcd key prefix that holds every contender of keys starting with
/// `key_prefix` (used to count what is left under a namespace).
pub fn native_prefix(namespace: &str, key_prefix: &str) -> String {
    format!("{namespace}{}", escape(key_prefix))
}

/// `{name}/`: the prefix under which the contenders of one lock live.
pub(crate) fn contenders_prefix(namespace: &str, key: &LockKey) -> String {
    format!("{}/", native_lock_name(namespace, key))
}

/// `{name}/{lease hex}`: the key a lease contends with.
pub(crate) fn contender_key(namespace: &str, key: &LockKey, lease: i64) -> String {
    format!("{}{lease:x}", contenders_prefix(namespace, key))
}

/// `{name}/read/`, `{name}/write/` or `{name}/semaphore/`: where the
/// readers, the writers (the recipe's `{name}/read` and `{name}/write`
/// subtrees) or the semaphore contenders of one lock live.
pub(crate) fn side_prefix(namespace: &str, key: &LockKey, mode: LockMode) -> String {
    let side = match mode {
        LockMode::Read => READ,
        LockMode::Semaphore { .. } => SEMAPHORE,
        _ => WRITE,
    };
    format!("{}{side}/", contenders_prefix(namespace, key))
}

/// `{name}/read/{lease hex}-{n}`, `{name}/write/{lease hex}-{n}` or
/// `{name}/semaphore/{lease hex}-{n}`: the key of attempt `n` of a lease to
/// read, write or take a semaphore's place.
pub(crate) fn attempt_key(namespace: &str, key: &LockKey, mode: LockMode, lease: i64, n: u64) -> String {
    format!("{}{lease:x}-{n}", side_prefix(namespace, key, mode))
}

/// The mode a contender key found under `prefix` (`{name}/`) holds or asks
/// for, from its name and `value`: readers and writers by the recipe's
/// subtrees (`{name}/read/...`, `{name}/write/...`), semaphore contenders by
/// theirs and the limit their value names; anything else is a mutex
/// contender (etcd's lock and election, `etcdctl lock`), and so is a key in
/// the semaphore subtree whose value names no limit.
pub(crate) fn mode_of(prefix: &str, contender: &[u8], value: &[u8]) -> LockMode {
    match side_of(prefix, contender) {
        Some(READ) => LockMode::Read,
        Some(WRITE) => LockMode::Write,
        Some(_) => crate::semaphore::Record::parse(value).map_or(LockMode::Exclusive, |record| record.mode()),
        None => LockMode::Exclusive,
    }
}

/// The subtree of `prefix` (`{name}/`) a contender key lies in, if any.
fn side_of(prefix: &str, contender: &[u8]) -> Option<&'static str> {
    let rest = contender.strip_prefix(prefix.as_bytes())?;
    [READ, WRITE, SEMAPHORE]
        .into_iter()
        .find(|side| rest.strip_prefix(side.as_bytes()).is_some_and(|r| r.starts_with(b"/")))
}

/// The subtree of readers, as the recipe names it.
const READ: &str = "read";
/// The subtree of writers, as the recipe names it.
const WRITE: &str = "write";
/// The subtree of semaphore contenders.
const SEMAPHORE: &str = "semaphore";

/// The first key after every key that starts with `prefix`: the end of an
/// etcd prefix range.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: etcd's "to the end of the keyspace".
    vec![0]
}

fn escape(key: &str) -> String {
    let mut escaped = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '/' => escaped.push_str("%2F"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> LockKey {
        LockKey::new(k).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn no_lock_sees_another_locks_contenders() {
        let keys =
            ["a", "a/", "a/b", "a%2Fb", "a%", "ab", "a/b/c", "a/read", "a/write", "read", "a/read/1-0", "a/semaphore"];
        for one in keys {
            for other in keys.iter().filter(|k| **k != one) {
                let range = contenders_prefix("ns/", &key(one));
                let other = key(other);
                let contenders = [
                    contender_key("ns/", &other, 0x1a2b),
                    attempt_key("ns/", &other, LockMode::Read, 0x1a2b, 0),
                    attempt_key("ns/", &other, LockMode::Write, 0x1a2b, 7),
                    attempt_key("ns/", &other, LockMode::Semaphore { limit: std::num::NonZeroU32::MIN }, 0x1a2b, 8),
                ];
                for contender in contenders {
                    assert!(!contender.starts_with(&range), "{one:?} would see {other}'s contender {contender}");
                }
            }
        }
    }

    #[test]
    fn each_contender_is_known_by_its_mode() {
        let k = key("a/b");
        let prefix = contenders_prefix("ns/", &k);
        for lease in [0, 0xa, 0xdead, i64::MAX] {
            assert_eq!(mode_of(&prefix, contender_key("ns/", &k, lease).as_bytes(), b""), LockMode::Exclusive);
            for mode in [LockMode::Read, LockMode::Write] {
                let contender = attempt_key("ns/", &k, mode, lease, 3);
                assert!(contender.starts_with(&side_prefix("ns/", &k, mode)), "{contender}");
                assert_eq!(mode_of(&prefix, contender.as_bytes(), b"owner"), mode, "{contender}");
            }
            let three = LockMode::semaphore(3).unwrap_or_else(|| panic!("3 > 0"));
            let contender = attempt_key("ns/", &k, three, lease, 4);
            assert!(contender.starts_with("ns/a%2Fb/semaphore/"), "{contender}");
            let value = crate::semaphore::Record::new(three, "o", None).map(|r| r.encode()).unwrap_or_default();
            assert_eq!(mode_of(&prefix, contender.as_bytes(), value.as_bytes()), three, "{contender}");
            assert_eq!(mode_of(&prefix, contender.as_bytes(), b"not a record"), LockMode::Exclusive);
        }
        // The recipe's own keys, and anything else under the lock.
        assert_eq!(mode_of(&prefix, b"ns/a%2Fb/read/1700000000000000000", b""), LockMode::Read);
        assert_eq!(mode_of(&prefix, b"ns/a%2Fb/write/1700000000000000000", b""), LockMode::Write);
        assert_eq!(mode_of(&prefix, b"ns/a%2Fb/reader", b""), LockMode::Exclusive);
        assert_eq!(mode_of(&prefix, b"ns/a%2Fb/semaphores", b""), LockMode::Exclusive);
    }

    #[test]
    fn prefix_ranges_end_after_their_keys() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn matches_etcds_own_layout() {
        assert_eq!(contender_key("distlock/", &key("deploy"), 0x694d7a1b2c3d4e5f), "distlock/deploy/694d7a1b2c3d4e5f");
        let reader = attempt_key("distlock/", &key("deploy"), LockMode::Read, 0x694d, 12);
        assert_eq!(reader, "distlock/deploy/read/694d-12");
        let writer = attempt_key("distlock/", &key("deploy"), LockMode::Write, 0x694d, 13);
        assert_eq!(writer, "distlock/deploy/write/694d-13");
        assert_eq!(native_prefix("n/", "x/%"), "n/x%2F%25");
    }
}
