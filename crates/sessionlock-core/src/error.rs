//! The core's error type: what a bad argument, a broken rule or a failed wait is, without saying which
//! Python exception it becomes (the binding maps each variant to one, in one place).

/// An error of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An argument of the wrong type (Python `TypeError`).
    Type(String),
    /// An argument out of its domain (Python `ValueError`).
    Value(String),
    /// A number too large to represent (Python `OverflowError`).
    Overflow(String),
    /// A wait ran out (`LockTimeout`).
    Timeout(String),
    /// A lock's lease was lost while held (`LockLost`).
    Lost(String),
    /// Redis could not be reached or did not do what was asked (`RedisUnavailable`).
    Unavailable(String),
    /// An object used in a state that does not allow it (Python `RuntimeError`).
    State(String),
    /// Redis answered with an error that is not an outage (Python `RuntimeError`).
    Redis(String),
    /// A stored value is not what this library wrote, or was changed (`SessionCorrupted`).
    Corrupted(String),
    /// Waiting could only deadlock (`LockDeadlock`).
    Deadlock(String),
    /// A release or write by someone who does not hold the lock (`LockNotOwned`).
    NotOwned(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Type(m)
            | Error::Value(m)
            | Error::Overflow(m)
            | Error::Timeout(m)
            | Error::Lost(m)
            | Error::Unavailable(m)
            | Error::State(m)
            | Error::Redis(m)
            | Error::Corrupted(m)
            | Error::Deadlock(m)
            | Error::NotOwned(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
