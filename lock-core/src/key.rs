//! Lock keys, validated once here so every backend rejects the same inputs.

use std::fmt;

/// The longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 512;

/// The name of a lock, validated on construction.
///
/// A key is non-empty, at most [`MAX_KEY_BYTES`] bytes of UTF-8 and holds no
/// control characters (NUL, newline, DEL, C1 controls, ...). Every other
/// character is valid: `/`, spaces, `..`, `%`, `锁`. Keys are opaque: `a`, `a/`,
/// `a/b` and `a%2Fb` name four independent locks on every backend, each of
/// which maps keys injectively onto its own storage.
///
/// ```
/// use lock_core::LockKey;
///
/// let key = LockKey::new("jobs/nightly")?;
/// assert_eq!(key.as_str(), "jobs/nightly");
/// assert!(LockKey::new("").is_err());
/// assert!(LockKey::new("bad\nkey").is_err());
/// # Ok::<(), lock_core::LockError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockKey(String);

/// Why a string is not a valid [`LockKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is the empty string.
    #[error("the key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("the key is {len} bytes long, the limit is {MAX_KEY_BYTES}")]
    TooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// The key holds a control character.
    #[error("the key holds the control character {character:?} at byte {index}")]
    ControlCharacter {
        /// The offending character.
        character: char,
        /// Its byte offset in the key.
        index: usize,
    },
}

impl LockKey {
    /// Validates `key` and wraps it.
    ///
    /// # Errors
    /// [`LockError::InvalidKey`](crate::LockError::InvalidKey) when the key is
    /// empty, too long or holds a control character.
    pub fn new(key: impl Into<String>) -> Result<Self, crate::LockError> {
        let key = key.into();
        match Self::check(&key) {
            Ok(()) => Ok(Self(key)),
            Err(reason) => Err(crate::LockError::InvalidKey { key, reason }),
        }
    }

    /// Checks `key` against the rules without taking ownership.
    ///
    /// # Errors
    /// The first rule the key breaks.
    pub fn check(key: &str) -> Result<(), KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong { len: key.len() });
        }
        match key.char_indices().find(|(_, c)| c.is_control()) {
            Some((index, character)) => Err(KeyError::ControlCharacter { character, index }),
            None => Ok(()),
        }
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the key, returning the string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for LockKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for LockKey {
    type Error = crate::LockError;
    fn try_from(key: &str) -> Result<Self, Self::Error> {
        Self::new(key)
    }
}

impl TryFrom<String> for LockKey {
    type Error = crate::LockError;
    fn try_from(key: String) -> Result<Self, Self::Error> {
        Self::new(key)
    }
}

impl std::str::FromStr for LockKey {
    type Err = crate::LockError;
    fn from_str(key: &str) -> Result<Self, Self::Err> {
        Self::new(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_printable_character() {
        for key in ["a", "a/", "a/b", "a%2Fb", "..", " spaced key ", "锁", "🔒/x", "/"] {
            assert!(LockKey::new(key).is_ok(), "{key:?} should be valid");
        }
        assert!(LockKey::new("x".repeat(MAX_KEY_BYTES)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_control() {
        assert_eq!(LockKey::check(""), Err(KeyError::Empty));
        assert_eq!(LockKey::check(&"x".repeat(MAX_KEY_BYTES + 1)), Err(KeyError::TooLong { len: MAX_KEY_BYTES + 1 }));
        // 171 three-byte characters are 513 bytes, though only 171 chars.
        assert!(matches!(LockKey::check(&"锁".repeat(171)), Err(KeyError::TooLong { .. })));
        for bad in ["a\0b", "a\nb", "\t", "x\u{7f}", "x\u{85}"] {
            assert!(
                matches!(LockKey::check(bad), Err(KeyError::ControlCharacter { .. })),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn error_names_the_key_and_the_reason() {
        let err = LockKey::new("a\0b").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("a\\0b") && err.contains("control"), "{err}");
    }
}
