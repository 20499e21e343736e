//! Fencing tokens.

use std::fmt;

/// A number that strictly increases across successive grants of one key.
///
/// Whichever client is granted a key, the token it receives is greater than
/// every token granted for that key before, including across lock expiry and
/// client restarts. Pass it to the resource the lock protects and have the
/// resource refuse any write carrying a smaller token than one it has already
/// seen: that is what keeps a paused or partitioned former holder from
/// corrupting data after its lock was given to someone else.
///
/// Tokens of different keys are not comparable in any useful way.
///
/// ```
/// use lock_core::FencingToken;
///
/// let older = FencingToken::new(7);
/// let newer = FencingToken::new(12);
/// assert!(newer > older);
/// assert_eq!(newer.get(), 12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token value.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<FencingToken> for u64 {
    fn from(token: FencingToken) -> Self {
        token.0
    }
}
