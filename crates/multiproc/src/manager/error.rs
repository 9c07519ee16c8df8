//! What can go wrong with a manager, one family per operation.
//!
//! * [`StartManagerError`]: starting or connecting to a manager;
//! * [`ProxyError`]: any call through a proxy;
//! * [`RemoteError`]: the server's refusal of one request, inside
//!   [`ProxyError::Remote`];
//! * a queue proxy's puts and gets fail with the local queue's errors,
//!   [`PutError<T, ProxyError>`](crate::PutError) (the value back) and the
//!   like, so local and manager code match the same way;
//! * [`ShutdownError`]: stopping the server.

use std::io;

use serde::{Deserialize, Serialize};

use crate::connection::{ConnectError, RecvError, SendError};
use crate::process::{JoinError, StartError};
use crate::wire::{DecodeError, EncodeError};

/// A manager could not be started or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartManagerError {
    /// The server process could not be started.
    #[error("could not start the manager process: {0}")]
    Start(#[from] StartError),
    /// The server started but could not listen on its address (in use,
    /// no permission, ...).
    #[error("the manager could not listen: {0}")]
    Bind(String),
    /// The server exited before it reported that it listens.
    #[error("the manager process ended before it was ready: {0}")]
    Died(String),
    /// An empty auth key was given: a TCP manager needs a real one.
    #[error("an auth key must not be empty")]
    EmptyAuthKey,
    /// Two user types were registered under one name.
    #[error("two types are registered as {0:?}")]
    DuplicateName(String),
    /// Connecting to the server failed (refused, wrong auth key, ...).
    #[error("could not connect to the manager: {0}")]
    Connect(#[from] ConnectError),
    /// The connection was made, but what answered is not a manager (or it
    /// closed the connection during the hello).
    #[error("the peer did not answer as a manager: {0}")]
    NotAManager(String),
    /// The operating system refused (a socket pair, a random key).
    #[error("could not start the manager: {0}")]
    Io(#[from] io::Error),
}

/// Why the server refused a request. The server is unharmed, and the
/// connection stays usable unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// No object has this id (it was never made, or its last proxy is gone).
    #[error("the manager has no object {0}")]
    NoSuchObject(u64),
    /// The object has no such method: a proxy of another kind asked.
    #[error("a {object} has no {method} methods")]
    NoSuchMethod {
        /// The kind of the object.
        object: String,
        /// The kind of method asked for.
        method: String,
    },
    /// The request is not a request of this protocol (garbage, truncated,
    /// an unknown method number).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request is longer than the server accepts. Over a socket, the
    /// connection is closed after this reply.
    #[error("a request of {len} bytes exceeds the manager's limit of {limit} bytes")]
    TooLarge {
        /// The request's length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// No user type is registered under this name.
    #[error("no shared type is registered as {0:?}")]
    UnknownType(String),
    /// The name is registered for another type.
    #[error("{name:?} is registered for {registered}, not {asked}")]
    TypeMismatch {
        /// The registered name.
        name: String,
        /// The type registered under it.
        registered: String,
        /// The type the proxy asked for.
        asked: String,
    },
    /// A user call or its `Init` value did not decode as the registered
    /// type's (a client built from other sources).
    #[error("bad argument: {0}")]
    BadArgument(String),
    /// A user type's method panicked; the object is kept, as the panic left
    /// it.
    #[error("the shared object's method panicked: {0}")]
    Panicked(String),
    /// A list or array index past the end.
    #[error("index {index} is out of range for a list or array of {len}")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The list's (or array's) length.
        len: u64,
    },
    /// The lock is not held by the caller (an `RLock`), or not held at all;
    /// or a condition was waited on or notified without holding its lock.
    #[error("the lock is not held by the caller")]
    NotOwner,
    /// The barrier is broken (a party timed out, died or aborted), or was
    /// reset while the caller waited.
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// A barrier needs at least one party.
    #[error("a barrier needs at least one party")]
    NoParties,
    /// The server failed to encode its answer (a bug).
    #[error("internal manager error: {0}")]
    Internal(String),
    /// A bounded semaphore was released more times than acquired.
    #[error("the bounded semaphore was released too many times")]
    OverReleased,
    /// `task_done` was called more times than items were put on a
    /// joinable queue (Python's `ValueError`).
    #[error("task_done() called too many times")]
    TaskDoneTooOften,
    /// The manager could not start a pool's workers (or was given an
    /// impossible setting): the error's message.
    #[error("the manager could not start the pool: {0}")]
    PoolStart(String),
}

/// A call through a proxy failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The server refused the request; the proxy stays usable.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The manager is gone (shut down, killed, or the connection cut). Every
    /// later call fails too, quickly.
    #[error("the manager has disconnected")]
    Disconnected,
    /// A new connection to the manager could not be made.
    #[error("could not reach the manager: {0}")]
    Connect(#[from] ConnectError),
    /// An argument could not be encoded; nothing was sent.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The answer did not decode as the proxy's type: another client stored
    /// a value of another type under the same object.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The request is longer than the manager accepts; nothing was sent.
    #[error("a request of {len} bytes exceeds the manager's limit of {limit} bytes")]
    TooLarge {
        /// The request's length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The server answered something this client does not understand.
    #[error("unexpected answer from the manager: {0}")]
    Protocol(String),
    /// The operating system reported an error.
    #[error("manager connection failed: {0}")]
    Io(io::Error),
}

impl From<SendError> for ProxyError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Encode(e) => ProxyError::Encode(e),
            SendError::Io(e) => ProxyError::Io(e),
            SendError::Disconnected | SendError::ReadOnly => ProxyError::Disconnected,
            // Only `send_bytes_range` fails so; the manager never calls it.
            SendError::Range(r) => ProxyError::Io(io::Error::new(io::ErrorKind::InvalidInput, r)),
        }
    }
}

impl From<RecvError> for ProxyError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Io(e) => ProxyError::Io(e),
            RecvError::Decode(e) => ProxyError::Decode(e),
            RecvError::Garbage(g) => ProxyError::Protocol(g),
            RecvError::Pickle(p) => ProxyError::Protocol(p.to_string()),
            RecvError::TooManyHandles => {
                ProxyError::Protocol(RecvError::TooManyHandles.to_string())
            }
            RecvError::TooLarge { len, limit } => {
                ProxyError::Protocol(format!("an answer of {len} bytes exceeds {limit}"))
            }
            RecvError::Disconnected | RecvError::Truncated { .. } | RecvError::WriteOnly => {
                ProxyError::Disconnected
            }
        }
    }
}

/// The manager did not stop cleanly. It is stopped anyway: a server that
/// does not exit in time is killed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The server did not exit within the shutdown timeout and was killed.
    #[error("the manager did not exit in time and was killed")]
    Killed,
    /// The server had already failed (it panicked, or was killed).
    #[error("the manager process failed: {0}")]
    Failed(#[from] JoinError),
}
