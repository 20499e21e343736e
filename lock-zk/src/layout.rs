//! How distlock keys map onto ZooKeeper paths: one lock directory per key,
//! holding Curator `InterProcessMutex` contender nodes
//! (`_c_{guid}-lock-{sequence}`).
//!
//! Key `K` under base path `B` is the directory `B/{escape(K)}`, where
//! `escape` writes `%` as `%25`, `/` as `%2F`, every character ZooKeeper
//! refuses in a path (controls, private use, U+FFF0 and up, which includes
//! every character beyond the BMP) as `%XX` UTF-8 bytes,
//! and a key `.` or `..` as `%2E` / `%2E%2E`. With base `/distlock`, the key
//! `jobs/nightly` is the Curator lock path `/distlock/jobs%2Fnightly`.

use lock_core::LockKey;

/// The lock directory of `key` under `base`: the path a Curator
/// `InterProcessMutex` shares the lock under.
///
/// ```
/// use lock_core::LockKey;
/// let key = LockKey::new("jobs/nightly")?;
/// assert_eq!(lock_zk::lock_path("/distlock", &key), "/distlock/jobs%2Fnightly");
/// # Ok::<(), lock_core::LockError>(())
/// ```
pub fn lock_path(base: &str, key: &LockKey) -> String {
    format!("{}/{}", base.trim_end_matches('/'), escape(key.as_str()))
}

/// The escaped form of a key prefix, to find lock directories under a base.
pub fn escaped_prefix(prefix: &str) -> String {
    escape(prefix)
}

fn escape(key: &str) -> String {
    if key == "." || key == ".." {
        return "%2E".repeat(key.len());
    }
    let mut escaped = String::with_capacity(key.len());
    for c in key.chars() {
        // ZooKeeper checks paths as Java UTF-16: it refuses controls, the
        // surrogate and private-use range (so every character beyond the BMP)
        // and U+FFF0 and up.
        let refused =
            matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{e000}'..='\u{f8ff}') || u32::from(c) >= 0xfff0;
        if c == '%' || c == '/' || refused {
            let mut bytes = [0u8; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                escaped.push_str(&format!("%{byte:02X}"));
            }
        } else {
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(key: &str) -> String {
        lock_path("/b", &LockKey::new(key).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn distinct_keys_get_distinct_single_component_paths() {
        let keys = ["a", "a/", "a/b", "a%2Fb", "..", ".", "锁", "a b", "...", "🔒"];
        let paths: std::collections::HashSet<String> = keys.iter().map(|k| path(k)).collect();
        assert_eq!(paths.len(), keys.len());
        assert!(paths.iter().all(|p| p.matches('/').count() == 2), "{paths:?}");
        assert_eq!(path("jobs/nightly"), "/b/jobs%2Fnightly");
        assert_eq!(path(".."), "/b/%2E%2E");
        assert_eq!(path("🔒"), "/b/%F0%9F%94%92");
    }
}
