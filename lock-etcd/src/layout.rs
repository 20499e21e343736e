//! How distlock keys map onto etcd keys: exactly the layout of etcd's own
//! lock (`clientv3/concurrency.Mutex`, the server's Lock RPC and
//! `etcdctl lock`), so all of them exclude each other.
//!
//! A distlock key `K` under namespace `N` is the native lock name
//! `N + escape(K)`, where `escape` writes `%` as `%25` and `/` as `%2F`; each
//! contender writes `{name}/{lease id in lowercase hex}`. Escaping keeps keys
//! independent: etcd's lock reads its contenders by prefix `{name}/`, so
//! without it the lock `a` would also see the contenders of `a/b`.
//!
//! `jobs/nightly` in namespace `distlock/` is the native lock
//! `distlock/jobs%2Fnightly`: `etcdctl lock distlock/jobs%2Fnightly` shares it.

use lock_core::LockKey;

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
        let keys = ["a", "a/", "a/b", "a%2Fb", "a%", "ab", "a/b/c"];
        for one in keys {
            for other in keys.iter().filter(|k| **k != one) {
                let range = contenders_prefix("ns/", &key(one));
                let contender = contender_key("ns/", &key(other), 0x1a2b);
                assert!(!contender.starts_with(&range), "{one:?} would see {other:?}'s contender {contender}");
            }
        }
    }

    #[test]
    fn matches_etcds_own_layout() {
        assert_eq!(contender_key("distlock/", &key("deploy"), 0x694d7a1b2c3d4e5f), "distlock/deploy/694d7a1b2c3d4e5f");
        assert_eq!(native_prefix("n/", "x/%"), "n/x%2F%25");
    }
}
