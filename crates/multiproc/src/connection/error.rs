//! What can go wrong on a connection, one family per operation.

use std::io;

use crate::sys;
use crate::wire::pickle::PickleError;
use crate::wire::stream::StreamError;
use crate::wire::{DecodeError, EncodeError};

/// A message could not be sent. The caller still has the value: `send`
/// borrows it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The value could not be encoded; nothing was sent and the connection
    /// is still usable.
    #[error("could not send: {0}")]
    Encode(#[from] EncodeError),
    /// The peer has closed its end or exited.
    #[error("the peer has disconnected")]
    Disconnected,
    /// This end was made receive-only (see [`pipe_oneway`](crate::pipe_oneway)).
    #[error("this end of the connection is receive-only")]
    ReadOnly,
    /// The operating system reported an error.
    #[error("could not send: {0}")]
    Io(io::Error),
    /// The offset or size given to
    /// [`send_bytes_range`](crate::Connection::send_bytes_range) falls
    /// outside the buffer (Python's `ValueError`); nothing was sent.
    #[error(transparent)]
    Range(#[from] RangeError),
}

/// An offset or a size outside a buffer (Python's `ValueError` from
/// `send_bytes` and `recv_bytes_into`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what}: offset {offset}, size {size:?}, buffer of {len} bytes")]
pub struct RangeError {
    /// What is wrong, in Python's words (`"buffer length < offset"`,
    /// `"buffer length < offset + size"`, `"offset too large"`).
    pub what: &'static str,
    /// The buffer's length.
    pub len: usize,
    /// The offset given.
    pub offset: usize,
    /// The size given, if one was.
    pub size: Option<usize>,
}

/// A message could not be received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The peer closed its end (or exited) and every message has been read.
    #[error("the peer has disconnected")]
    Disconnected,
    /// The peer disconnected in the middle of a message.
    #[error("the peer disconnected after {got} of {expected} bytes of a message")]
    Truncated {
        /// Bytes of the message, length prefix included, that arrived.
        got: u64,
        /// Bytes the message should have had.
        expected: u64,
    },
    /// A message announced more bytes than this end accepts (see
    /// [`Connection::set_max_message_size`](crate::Connection::set_max_message_size)). Nothing was allocated for it;
    /// the connection cannot be used further.
    #[error("a message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// Bytes that are not a message of this protocol.
    #[error("garbage on the connection: {0}")]
    Garbage(String),
    /// A message arrived whole but does not decode as the expected type.
    /// The connection is still usable.
    #[error("could not decode the message: {0}")]
    Decode(#[from] DecodeError),
    /// A pickle (on a [`PickleConnection`](crate::PickleConnection)) that
    /// was refused (it names or calls code, or describes too large a
    /// value) or does not decode as the expected type. Nothing in it ran;
    /// the connection is still usable.
    #[error("could not take the pickle: {0}")]
    Pickle(#[from] PickleError),
    /// This end was made send-only (see [`pipe_oneway`](crate::pipe_oneway)).
    #[error("this end of the connection is send-only")]
    WriteOnly,
    /// A message carried more handles (descriptors) than one message may
    /// (64). The kernel discarded the ones that did not fit, and the ones
    /// that did were closed: none is silently lost. No multiproc peer sends
    /// such a message; the bytes read with it are lost too, so the
    /// connection has lost its place and should be dropped.
    #[error("a message carried more handles than fit in one message; they were discarded")]
    TooManyHandles,
    /// The operating system reported an error.
    #[error("could not receive: {0}")]
    Io(io::Error),
}

/// [`recv_timeout`](crate::Connection::recv_timeout) did not receive.
#[derive(Debug, thiserror::Error)]
pub enum RecvTimeoutError {
    /// No message began before the timeout.
    #[error("no message arrived in time")]
    Timeout,
    /// Receiving failed.
    #[error(transparent)]
    Recv(#[from] RecvError),
}

/// [`try_recv`](crate::Connection::try_recv) did not receive.
#[derive(Debug, thiserror::Error)]
pub enum TryRecvError {
    /// No message is waiting.
    #[error("no message is waiting")]
    Empty,
    /// Receiving failed.
    #[error(transparent)]
    Recv(#[from] RecvError),
}

/// [`recv_bytes_into`](crate::Connection::recv_bytes_into) did not fill the
/// buffer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvIntoError {
    /// The message is longer than the buffer; here it is, whole (Python's
    /// `BufferTooShort`).
    #[error("the message of {} bytes does not fit the buffer", .0.len())]
    BufferTooShort(Vec<u8>),
    /// The offset given to
    /// [`recv_bytes_into_at`](crate::Connection::recv_bytes_into_at) is past
    /// the end of the buffer (Python's `ValueError`); nothing was received.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// Receiving failed.
    #[error(transparent)]
    Recv(#[from] RecvError),
}

/// Authentication with the peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer's answer to our challenge was wrong: it has another key.
    #[error("the peer failed the authentication challenge (wrong auth key)")]
    PeerRejected,
    /// The peer refused our answer: we have another key.
    #[error("the peer rejected our auth key")]
    KeyRejected,
    /// The peer did not follow the handshake.
    #[error("authentication protocol error: {0}")]
    Protocol(String),
    /// The handshake did not finish in time.
    #[error("the authentication handshake timed out")]
    Timeout,
    /// The connection failed during the handshake.
    #[error("the connection failed during authentication: {0}")]
    Recv(#[from] RecvError),
}

/// [`Listener::accept`](crate::Listener::accept) did not produce a connection.
/// The listener stays usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// Accepting failed.
    #[error("accept failed: {0}")]
    Io(#[from] io::Error),
    /// The client failed authentication; it has been disconnected.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// [`Client::connect`](crate::Client::connect) did not produce a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Connecting failed.
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl From<StreamError> for RecvError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Closed => RecvError::Disconnected,
            StreamError::Truncated { got, expected } => RecvError::Truncated { got, expected },
            StreamError::TooLarge { len, limit } => RecvError::TooLarge { len, limit },
            StreamError::Garbage(g) => RecvError::Garbage(g),
            StreamError::Timeout => RecvError::Io(io::ErrorKind::TimedOut.into()),
            StreamError::Io(e) if sys::socket::is_descriptors_truncated(&e) => {
                RecvError::TooManyHandles
            }
            StreamError::Io(e) => RecvError::Io(e),
        }
    }
}

impl From<StreamError> for SendError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Closed => SendError::Disconnected,
            StreamError::Io(e) => SendError::Io(e),
            other => SendError::Io(io::Error::other(other.to_string())),
        }
    }
}

impl From<StreamError> for RecvTimeoutError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Timeout => RecvTimeoutError::Timeout,
            other => RecvTimeoutError::Recv(other.into()),
        }
    }
}
