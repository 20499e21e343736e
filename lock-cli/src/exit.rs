//! Exit codes, documented in `--help` and the README.

// The codes the command's trampoline also returns are defined beside it, in
// a file its own small program shares: usage error (2), lock lost (74, also
// when distlock died before the command was tied to it), command not
// executable (126) and not found (127).
pub use crate::tied::{CANNOT_EXECUTE, LOST, NOT_FOUND, USAGE};

/// The backend could not be reached or failed.
pub const UNAVAILABLE: u8 = 69;
/// The lock was not acquired: held elsewhere with `--no-wait`, `--wait`
/// elapsed, or the key is in use another way (another `--limit`).
pub const NOT_ACQUIRED: u8 = 75;
/// A malformed backend URL, key or option.
pub const CONFIG: u8 = 78;

/// The text appended to `--help`.
pub const HELP: &str = "\
Exit codes:
  N     the command's own exit code (128+S if it died of signal S)
  2     usage error
  69    the lock backend could not be reached or failed
  74    the lock was lost while the command ran (the command was terminated)
  75    the lock was not acquired (--no-wait and held elsewhere, --wait elapsed,
        or KEY is in use another way, e.g. a semaphore of another --limit)
  78    malformed backend URL, key or option, or a --grace the TTL cannot honour
  126   the command could not be executed
  127   the command was not found

Backend URL (--backend, or DISTLOCK_URL): mem://, file:///dir, etcd://host:2379[,...][/namespace/][?ttl=15s],
  zk://host:2181[,...][/chroot][?session_timeout=15s], consul://host:8500[/prefix/][?ttl=15s&token=..]
Default: file://$XDG_RUNTIME_DIR/distlock (or /tmp/distlock-$UID): works with no server.";

/// The exit code for a lock error.
pub fn for_error(error: &distlock::LockError) -> u8 {
    use distlock::LockError as E;
    match error {
        E::InvalidKey { .. } | E::InvalidOptions { .. } | E::InvalidConfig { .. } => CONFIG,
        E::Timeout { .. } | E::Conflict { .. } => NOT_ACQUIRED,
        E::Lost { .. } => LOST,
        _ => UNAVAILABLE,
    }
}
