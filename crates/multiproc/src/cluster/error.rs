//! What can go wrong talking to the cluster's server.

use crate::wire::{DecodeError, EncodeError};

/// An operation on the cluster's server (Redis or Valkey) failed.
///
/// Every blocking call on a cluster object returns one of these within its
/// deadline, whatever the server does: a lost connection, a restarted
/// server or a stalled one is an error here, never a hang.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The URL given to [`Cluster::connect`](super::Cluster::connect) is
    /// not one the cluster understands.
    #[error("invalid cluster URL {url:?}: {message}")]
    Url {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The server could not be reached, or the connection broke (the
    /// server stopped or restarted, the network failed).
    #[error("lost the connection to the cluster server: {0}")]
    Connection(String),
    /// The server did not answer in time.
    #[error("the cluster server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The server refused a command (a wrong password, an ACL rule, out of
    /// memory, a server too old for a command).
    #[error("the cluster server refused: {0}")]
    Server(String),
    /// What the server holds under a name is not what multiproc stored
    /// there: another program wrote it, or it is of another type.
    #[error("unexpected data on the cluster server: {0}")]
    Corrupted(String),
    /// A name is empty, too long or holds a character keys cannot.
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// A value could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A value read from the server could not be decoded into its type.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A named object already exists with other settings (a queue with
    /// another bound, a barrier with another number of parties).
    #[error("{0}")]
    Mismatch(String),
    /// A lock's lease ran out (or the server lost it) before it was
    /// released: another holder may have had the lock meanwhile.
    #[error("the lock's lease was lost before its release")]
    LeaseLost,
    /// A release without a matching acquire: `task_done` called more
    /// times than values were put, a semaphore released past its value.
    #[error("{0}")]
    OverReleased(&'static str),
    /// The barrier is broken (a wait timed out, or
    /// [`abort`](super::BarrierProxy::abort) was called), until
    /// [`reset`](super::BarrierProxy::reset).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// An index past the end of a list.
    #[error("index {index} is out of range for a list of {len}")]
    IndexOutOfRange {
        /// The index given.
        index: u64,
        /// The list's length then.
        len: u64,
    },
}

impl ClusterError {
    /// Sorts a client error into the variants a caller acts on.
    pub(crate) fn from_redis(e: redis::RedisError) -> ClusterError {
        if e.is_timeout() {
            // The client's own timeout: the exact duration is the caller's.
            return ClusterError::Connection(format!("timed out: {e}"));
        }
        if e.code() == Some("WRONGTYPE") {
            // Another kind of key under the name, or (from multiproc's own
            // scripts) a field that does not hold what they wrote there.
            return ClusterError::Corrupted(e.to_string());
        }
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            return ClusterError::Connection(e.to_string());
        }
        ClusterError::Server(e.to_string())
    }

    /// Whether the connection that gave this error should be dropped and
    /// made anew before the next command.
    pub(crate) fn is_connection(&self) -> bool {
        matches!(self, ClusterError::Connection(_) | ClusterError::Timeout(_))
    }
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        ClusterError::from_redis(e)
    }
}
