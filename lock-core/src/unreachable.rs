//! Saying in a user's words why a service could not be reached: nothing
//! listening, something else listening, or no answer at all.

use std::error::Error;
use std::fmt;
use std::io::ErrorKind;

use crate::BoxError;

/// What a failed connection attempt to a service's endpoint most likely
/// means, for an error message that tells the user what to check.
///
/// ```
/// use std::io;
/// use lock_core::ConnectFailure;
///
/// let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
/// let failure = ConnectFailure::of(&refused);
/// assert_eq!(failure, ConnectFailure::NothingListens);
/// let message = failure.explain("etcd", "http://127.0.0.1:2379", 2379);
/// assert!(message.contains("nothing listens on http://127.0.0.1:2379"), "{message}");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The connection was refused: no process listens on that port.
    NothingListens,
    /// The connection was accepted and then closed or reset without an
    /// answer in the service's protocol: another kind of server listens.
    OtherService,
    /// No answer came in time.
    NoAnswer,
    /// Anything else: the error says what.
    Other,
}

impl ConnectFailure {
    /// Classifies `error` by the I/O error kinds (and, for transports that
    /// keep only their text, the messages) in its chain of sources.
    pub fn of(error: &(dyn Error + 'static)) -> Self {
        let mut current: Option<&(dyn Error + 'static)> = Some(error);
        let mut text = String::new();
        while let Some(error) = current {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    ErrorKind::ConnectionRefused => return Self::NothingListens,
                    ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof => return Self::OtherService,
                    ErrorKind::TimedOut => return Self::NoAnswer,
                    _ => {}
                }
            }
            text.push_str(&error.to_string().to_lowercase());
            text.push('\n');
            current = error.source();
        }
        if text.contains("connection refused") {
            Self::NothingListens
        } else if [
            "broken pipe",
            "connection reset",
            "connection closed",
            "unexpected eof",
            "frame with invalid size",
            "frame_size_error",
            "h2 protocol error",
            "invalid http version",
        ]
        .iter()
        .any(|sign| text.contains(sign))
        {
            Self::OtherService
        } else if text.contains("timed out") || text.contains("timeout") {
            Self::NoAnswer
        } else {
            Self::Other
        }
    }

    /// A sentence naming the `endpoint` of `service` (whose usual port is
    /// `default_port`) and what to check.
    pub fn explain(self, service: &str, endpoint: &str, default_port: u16) -> String {
        match self {
            Self::NothingListens => {
                format!("nothing listens on {endpoint}: is {service} running there, on that port?")
            }
            Self::OtherService => format!(
                "{endpoint} accepted the connection but did not answer as {service}: another kind of server \
                 listens there; check the port ({service} listens on {default_port} by default)"
            ),
            Self::NoAnswer => format!(
                "{endpoint} did not answer in time: check that {service} runs there and that the network lets \
                 its port ({default_port} by default) through"
            ),
            Self::Other => format!("{service} at {endpoint} could not be reached"),
        }
    }

    /// [`explain`](Self::explain) as an error whose source is `cause`, so
    /// that the original error (a TLS refusal, say) stays in the chain.
    pub fn error(self, service: &str, endpoint: &str, default_port: u16, cause: impl Into<BoxError>) -> BoxError {
        Box::new(Explained { text: self.explain(service, endpoint, default_port), cause: cause.into() })
    }
}

/// An explanation in a user's words, with the error it explains.
#[derive(Debug)]
struct Explained {
    text: String,
    cause: BoxError,
}

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text, self.cause)
    }
}

impl Error for Explained {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn io_kinds_deep_in_the_chain_decide() {
        let closed = Wrapped(std::io::Error::from(ErrorKind::BrokenPipe));
        assert_eq!(ConnectFailure::of(&closed), ConnectFailure::OtherService);
        let message = ConnectFailure::of(&closed).explain("etcd", "http://127.0.0.1:8500", 2379);
        assert!(message.contains("another kind of server") && message.contains("2379"), "{message}");
    }

    #[test]
    fn text_only_transports_are_read_too() {
        let refused = std::io::Error::other("tcp connect error: Connection refused (os error 111)");
        assert_eq!(ConnectFailure::of(&refused), ConnectFailure::NothingListens);
        let odd = std::io::Error::other("certificate unknown");
        assert_eq!(ConnectFailure::of(&odd), ConnectFailure::Other);
    }
}
