//! How distlock keys map onto ZooKeeper paths: one lock directory per key,
//! holding Curator's contender nodes, `_c_{guid}-{marker}{sequence}`: marker
//! `lock-` for `InterProcessMutex`, `__READ__` and `__WRIT__` for the two
//! sides of `InterProcessReadWriteLock` (see [`NodeKind`]).
//!
//! Key `K` under base path `B` is the directory `B/{escape(K)}`, where
//! `escape` writes `%` as `%25`, `/` as `%2F`, every character ZooKeeper
//! refuses in a path (controls, private use, U+FFF0 and up, which includes
//! every character beyond the BMP) as `%XX` UTF-8 bytes,
//! and a key `.` or `..` as `%2E` / `%2E%2E`. With base `/distlock`, the key
//! `jobs/nightly` is the Curator lock path `/distlock/jobs%2Fnightly`.
//!
//! A semaphore keeps Curator's `InterProcessSemaphoreV2` layout in the same
//! directory: the mutex `{dir}/locks` (`_c_{guid}-lock-{seq}` nodes) and the
//! leases `{dir}/leases/_c_{guid}-lease-{seq}` (see
//! [`semaphore`](crate::semaphore)).

use lock_core::{LockKey, LockMode};

/// Digits of a ZooKeeper sequence suffix.
pub(crate) const SEQUENCE_DIGITS: usize = 10;

/// The child of a semaphore's directory that holds the mutex taken while
/// counting (Curator's `InterProcessSemaphoreV2`).
pub(crate) const SEMAPHORE_LOCKS: &str = "locks";

/// The child of a semaphore's directory that holds one node per lease.
pub(crate) const SEMAPHORE_LEASES: &str = "leases";

/// Curator's name of a semaphore lease node, right before its sequence.
pub(crate) const LEASE_MARKER: &str = "lease-";

/// The sequence number of the lease node `name` (`[_c_{guid}-]lease-{seq}`),
/// or `None` for a child that is not one.
pub(crate) fn lease_sequence(name: &str) -> Option<u64> {
    let (head, sequence) = split_sequence(name)?;
    head.ends_with(LEASE_MARKER).then_some(sequence)
}

/// `name` split before its ten-digit sequence suffix.
fn split_sequence(name: &str) -> Option<(&str, u64)> {
    let split = name.len().checked_sub(SEQUENCE_DIGITS)?;
    let (head, digits) = (name.get(..split)?, name.get(split..)?);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head, digits.parse().ok()?))
}

/// What a contender node asks for, told by the marker Curator writes right
/// before its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// `lock-`: Curator's `InterProcessMutex`, our [`LockMode::Exclusive`].
    Mutex,
    /// `__READ__`: the read side of Curator's `InterProcessReadWriteLock`.
    Read,
    /// `__WRIT__`: its write side.
    Write,
}

impl NodeKind {
    const ALL: [NodeKind; 3] = [NodeKind::Mutex, NodeKind::Read, NodeKind::Write];

    /// The node kind an acquisition in `mode` creates; `None` for a mode
    /// this backend does not know.
    pub(crate) fn of(mode: LockMode) -> Option<Self> {
        match mode {
            LockMode::Exclusive => Some(NodeKind::Mutex),
            LockMode::Read => Some(NodeKind::Read),
            LockMode::Write => Some(NodeKind::Write),
            _ => None,
        }
    }

    /// The mode a node of this kind holds its key in.
    pub(crate) fn mode(self) -> LockMode {
        match self {
            NodeKind::Mutex => LockMode::Exclusive,
            NodeKind::Read => LockMode::Read,
            NodeKind::Write => LockMode::Write,
        }
    }

    /// Curator's lock name for this kind: the text between the protected
    /// prefix `_c_{guid}-` and the sequence number.
    pub(crate) fn marker(self) -> &'static str {
        match self {
            NodeKind::Mutex => "lock-",
            NodeKind::Read => "__READ__",
            NodeKind::Write => "__WRIT__",
        }
    }

    /// The kind and sequence number of the contender node `name`, or `None`
    /// for a child that is not one (no known marker right before ten digits).
    pub(crate) fn parse(name: &str) -> Option<(Self, u64)> {
        let (head, sequence) = split_sequence(name)?;
        let kind = Self::ALL.into_iter().find(|kind| head.ends_with(kind.marker()))?;
        Some((kind, sequence))
    }
}

/// The lock directory of `key` under `base`: the path a Curator
/// `InterProcessMutex` or `InterProcessReadWriteLock` shares the lock under.
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

    #[test]
    fn contender_nodes_are_told_by_the_marker_before_their_sequence() {
        let guid = "_c_2f1bc8d4-4a1e-4f57-9a57-0d6c1b3b7c11-";
        assert_eq!(NodeKind::parse(&format!("{guid}lock-0000000007")), Some((NodeKind::Mutex, 7)));
        assert_eq!(NodeKind::parse(&format!("{guid}__READ__0000000012")), Some((NodeKind::Read, 12)));
        assert_eq!(NodeKind::parse(&format!("{guid}__WRIT__0000000003")), Some((NodeKind::Write, 3)));
        // Curator without protection writes no prefix.
        assert_eq!(NodeKind::parse("__WRIT__0000000004"), Some((NodeKind::Write, 4)));
        for other in ["leases", "lock-12", "_c_x-lock-00000000x1", "_c_x-lease-0000000001", "é"] {
            assert_eq!(NodeKind::parse(other), None, "{other}");
        }
        for kind in NodeKind::ALL {
            assert_eq!(NodeKind::of(kind.mode()), Some(kind));
        }
    }

    #[test]
    fn lease_nodes_are_told_by_their_marker() {
        assert_eq!(lease_sequence("_c_2f1bc8d4-4a1e-4f57-9a57-0d6c1b3b7c11-lease-0000000042"), Some(42));
        assert_eq!(lease_sequence("lease-0000000001"), Some(1));
        for other in ["_c_x-lock-0000000001", "lease-1", "leases", "locks"] {
            assert_eq!(lease_sequence(other), None, "{other}");
        }
    }
}
