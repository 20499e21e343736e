//! How a distlock key maps to Consul KV keys.
//!
//! A lock on key `k` under prefix `p` is the KV key `p` + escaped(`k`) +
//! `/.lock`: exactly the key `consul lock p+escaped(k)` (Consul's `api.Lock`)
//! uses, so both exclude each other. Escaping keeps `/` as the separator and
//! leaves keys made of letters, digits and `-_.~` in segments unchanged; any
//! other byte becomes `%XX`, and the segments Consul's HTTP router would
//! rewrite (empty, `.`, `..`) are written `%`, `%2E`, `%2E%2E`. The mapping
//! is injective: `%` itself is always escaped.

/// The suffix `api.Lock` (and so `consul lock PREFIX`) appends to a lock prefix.
pub const NATIVE_LOCK_SUFFIX: &str = "/.lock";

/// The KV key of the lock on `key` under `prefix`.
///
/// ```
/// use lock_consul::native_lock_key;
/// use lock_core::LockKey;
///
/// let key = LockKey::new("jobs/nightly report")?;
/// assert_eq!(native_lock_key("distlock/", &key), "distlock/jobs/nightly%20report/.lock");
/// // The same lock from a shell: consul lock distlock/jobs/nightly%20report ./job.sh
/// # Ok::<(), lock_core::LockError>(())
/// ```
pub fn native_lock_key(prefix: &str, key: &lock_core::LockKey) -> String {
    format!("{}{NATIVE_LOCK_SUFFIX}", native_lock_prefix(prefix, key.as_str()))
}

/// The `consul lock` prefix of the lock on `key` (the native key without `/.lock`).
pub fn native_lock_prefix(prefix: &str, key: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + key.len() + 8);
    out.push_str(prefix);
    for (index, segment) in key.split('/').enumerate() {
        if index > 0 {
            out.push('/');
        }
        escape_segment(segment, &mut out);
    }
    out
}

/// The KV prefix under which every lock of keys starting with `key_prefix`
/// lives (a `key_prefix` ending in `/` maps to a prefix ending in `/`).
pub fn native_prefix(prefix: &str, key_prefix: &str) -> String {
    match key_prefix.rsplit_once('/') {
        Some((dirs, last)) => {
            let mut out = native_lock_prefix(prefix, dirs);
            out.push('/');
            escape_partial(last, &mut out);
            out
        }
        None => {
            let mut out = prefix.to_owned();
            escape_partial(key_prefix, &mut out);
            out
        }
    }
}

fn escape_segment(segment: &str, out: &mut String) {
    match segment {
        "" => out.push('%'),
        "." => out.push_str("%2E"),
        ".." => out.push_str("%2E%2E"),
        _ => escape_partial(segment, out),
    }
}

fn escape_partial(segment: &str, out: &mut String) {
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// A KV key as a URL path: `%` is the only byte of an escaped key that the
/// URL needs escaped again.
pub(crate) fn url_path(kv_key: &str) -> String {
    kv_key.replace('%', "%25")
}

/// Checks a configured prefix: empty, or segments that map to themselves,
/// ending with `/`.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    let Some(body) = prefix.strip_suffix('/') else {
        return Err(format!("prefix must be empty or end with '/', got {prefix:?}"));
    };
    for segment in body.split('/') {
        let mut escaped = String::new();
        escape_segment(segment, &mut escaped);
        if escaped != segment {
            return Err(format!("prefix segments may hold only letters, digits and -_.~, got {prefix:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::LockKey;

    fn native(key: &str) -> String {
        native_lock_key("p/", &LockKey::new(key).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn plain_keys_map_verbatim() {
        assert_eq!(native("a"), "p/a/.lock");
        assert_eq!(native("jobs/nightly-1.2_x~"), "p/jobs/nightly-1.2_x~/.lock");
    }

    #[test]
    fn router_rewritten_segments_are_escaped() {
        assert_eq!(native("/a//b/"), "p/%/a/%/b/%/.lock");
        assert_eq!(native("./../x"), "p/%2E/%2E%2E/x/.lock");
        assert_eq!(native("100%"), "p/100%25/.lock");
        assert_eq!(native("ä"), "p/%C3%A4/.lock");
    }

    #[test]
    fn distinct_keys_map_to_distinct_native_keys() {
        let keys = ["a", "a/", "a/.lock", "a%2F", "a/%", "%", "", ".", "%2E", "a b", "a+b", "a//b", "a/b"];
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            let Ok(key) = LockKey::new(key) else { continue };
            assert!(seen.insert(native_lock_key("p/", &key)), "collision for {key:?}");
        }
    }

    #[test]
    fn prefixes_cover_their_keys() {
        let key = LockKey::new("ns/x/job 1").unwrap_or_else(|e| panic!("{e}"));
        assert!(native_lock_key("p/", &key).starts_with(&native_prefix("p/", "ns/x/")));
        assert!(native_lock_key("p/", &key).starts_with(&native_prefix("p/", "ns/x/job ")));
        assert_eq!(native_prefix("p/", "ns/"), "p/ns/");
    }

    #[test]
    fn prefix_check() {
        assert!(check_prefix("distlock/").is_ok());
        assert!(check_prefix("a/b/").is_ok());
        assert!(check_prefix("a").is_err());
        assert!(check_prefix("a b/").is_err());
        assert!(check_prefix("a//").is_err());
    }
}
