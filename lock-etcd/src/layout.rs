//! How distlock keys map onto etcd keys: exactly the layout of etcd's own
//! lock (`clientv3/concurrency.Mutex`, the server's Lock RPC and
//! `etcdctl lock`), so all of them exclude each other, and the prefixes of
//! etcd's reader/writer recipe (`client/v3/experimental/recipes.RWMutex`).
//!
//! A distlock key `K` under namespace `N` is the native lock name
//! `N + escape(K)`, where `escape` writes `%` as `%25` and `/` as `%2F`. Each
//! contender writes one key under `{name}/`:
//!
//! * the mutex ([`LockMode::Exclusive`]): `{name}/{lease id in lowercase hex}`;
//! * a reader: `{name}/read/{lease hex}-{n}`, a writer:
//!   `{name}/write/{lease hex}-{n}`, with `n` new for every attempt of the
//!   client (see [`reader_writer`](crate::reader_writer) for why not the
//!   recipe's `{name}/read/{unix nanos}`).
//!
//! A lease id in hex never starts with `r` or `w`, so a mutex key never lies
//! under `{name}/read` or `{name}/write`. Escaping keeps keys independent:
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

/// `{name}/read/` or `{name}/write/`: where the readers or the writers of
/// one lock live (the recipe's `{name}/read` and `{name}/write` subtrees).
pub(crate) fn side_prefix(namespace: &str, key: &LockKey, mode: LockMode) -> String {
    let side = if mode.is_shared() { READ } else { WRITE };
    format!("{}{side}/", contenders_prefix(namespace, key))
}

/// `{name}/read/{lease hex}-{n}` or `{name}/write/{lease hex}-{n}`: the key
/// of attempt `n` of a lease to read or write.
pub(crate) fn reader_writer_key(namespace: &str, key: &LockKey, mode: LockMode, lease: i64, n: u64) -> String {
    format!("{}{lease:x}-{n}", side_prefix(namespace, key, mode))
}

/// The mode a contender key found under `prefix` (`{name}/`) holds or asks
/// for: readers and writers by the recipe's subtrees (`{name}/read/...`,
/// `{name}/write/...`), anything else is a mutex contender (etcd's lock,
/// `etcdctl lock`).
pub(crate) fn mode_of(prefix: &str, contender: &[u8]) -> LockMode {
    let Some(rest) = contender.strip_prefix(prefix.as_bytes()) else { return LockMode::Exclusive };
    if rest.starts_with(format!("{READ}/").as_bytes()) {
        LockMode::Read
    } else if rest.starts_with(format!("{WRITE}/").as_bytes()) {
        LockMode::Write
    } else {
        LockMode::Exclusive
    }
}

/// The subtree of readers, as the recipe names it.
const READ: &str = "read";
/// The subtree of writers, as the recipe names it.
const WRITE: &str = "write";

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
        let keys = ["a", "a/", "a/b", "a%2Fb", "a%", "ab", "a/b/c", "a/read", "a/write", "read", "a/read/1-0"];
        for one in keys {
            for other in keys.iter().filter(|k| **k != one) {
                let range = contenders_prefix("ns/", &key(one));
                let other = key(other);
                let contenders = [
                    contender_key("ns/", &other, 0x1a2b),
                    reader_writer_key("ns/", &other, LockMode::Read, 0x1a2b, 0),
                    reader_writer_key("ns/", &other, LockMode::Write, 0x1a2b, 7),
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
            assert_eq!(mode_of(&prefix, contender_key("ns/", &k, lease).as_bytes()), LockMode::Exclusive);
            for mode in [LockMode::Read, LockMode::Write] {
                let contender = reader_writer_key("ns/", &k, mode, lease, 3);
                assert!(contender.starts_with(&side_prefix("ns/", &k, mode)), "{contender}");
                assert_eq!(mode_of(&prefix, contender.as_bytes()), mode, "{contender}");
            }
        }
        // The recipe's own keys, and anything else under the lock.
        assert_eq!(mode_of(&prefix, b"ns/a%2Fb/read/1700000000000000000"), LockMode::Read);
        assert_eq!(mode_of(&prefix, b"ns/a%2Fb/write/1700000000000000000"), LockMode::Write);
        assert_eq!(mode_of(&prefix, b"ns/a%2Fb/reader"), LockMode::Exclusive);
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
        let reader = reader_writer_key("distlock/", &key("deploy"), LockMode::Read, 0x694d, 12);
        assert_eq!(reader, "distlock/deploy/read/694d-12");
        let writer = reader_writer_key("distlock/", &key("deploy"), LockMode::Write, 0x694d, 13);
        assert_eq!(writer, "distlock/deploy/write/694d-13");
        assert_eq!(native_prefix("n/", "x/%"), "n/x%2F%25");
    }
}
