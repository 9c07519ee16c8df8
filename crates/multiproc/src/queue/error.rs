//! What can go wrong with a queue, one family per operation. Every error of
//! a put gives the value back.

use std::{fmt, io};

use crate::wire::{DecodeError, EncodeError};

/// Why a value was not put.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutFailure {
    /// The value could not be encoded; the queue is unchanged.
    #[error("could not encode the value: {0}")]
    Encode(#[from] EncodeError),
    /// The queue is full and no other process holding it is alive to make
    /// room, so waiting would be forever.
    #[error("the queue is full and nobody else holds it")]
    Disconnected,
    /// [`close`](crate::Queue::close) was called on this handle.
    #[error("this queue handle is closed")]
    Closed,
    /// The queue was shut down ([`Queue::shutdown`](crate::Queue::shutdown),
    /// Python's `ShutDown`).
    #[error("the queue was shut down")]
    ShutDown,
    /// The operating system refused (creating an out-of-line message).
    #[error("could not put: {0}")]
    Io(#[from] io::Error),
    /// The queue's shared memory held impossible positions (written by a
    /// misbehaving process holding the queue); what was in flight has been
    /// dropped and the value was not put. A later put may succeed.
    #[error("the queue's shared memory was corrupted: {0}")]
    Corrupted(String),
}

/// A value could not be put; here it is back.
///
/// `F` says why: [`PutFailure`] for a local [`Queue`](crate::Queue); the
/// cluster's queue uses the same type with its own failure.
#[derive(thiserror::Error)]
#[error("{reason}")]
pub struct PutError<T, F = PutFailure> {
    /// The value that was not put.
    pub value: T,
    /// Why.
    #[source]
    pub reason: F,
}

impl<T, F: fmt::Debug> fmt::Debug for PutError<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// [`put_timeout`](crate::Queue::put_timeout) did not put the value.
#[derive(thiserror::Error)]
pub enum PutTimeoutError<T, F = PutFailure> {
    /// Still full at the deadline; here is the value back.
    #[error("the queue stayed full")]
    Timeout(T),
    /// Putting failed.
    #[error(transparent)]
    Failed(#[from] PutError<T, F>),
}

/// [`try_put`](crate::Queue::try_put) did not put the value.
#[derive(thiserror::Error)]
pub enum TryPutError<T, F = PutFailure> {
    /// The queue is full; here is the value back.
    #[error("the queue is full")]
    Full(T),
    /// Putting failed.
    #[error(transparent)]
    Failed(#[from] PutError<T, F>),
}

impl<T, F> PutError<T, F> {
    /// The value that was not put.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T, F> PutTimeoutError<T, F> {
    /// The value that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutTimeoutError::Timeout(v) => v,
            PutTimeoutError::Failed(e) => e.value,
        }
    }
}

impl<T, F> TryPutError<T, F> {
    /// The value that was not put.
    pub fn into_inner(self) -> T {
        match self {
            TryPutError::Full(v) => v,
            TryPutError::Failed(e) => e.value,
        }
    }
}

impl<T, F: fmt::Debug> fmt::Debug for PutTimeoutError<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            PutTimeoutError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<T, F: fmt::Debug> fmt::Debug for TryPutError<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryPutError::Full(_) => f.write_str("Full(..)"),
            TryPutError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// A value could not be got.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The queue is empty and no other process or thread holding it is
    /// alive to fill it (Python blocks forever here).
    #[error("the queue is empty and nobody else holds it")]
    Disconnected,
    /// This handle was closed ([`Queue::close`](crate::Queue::close)), as
    /// Python's `get` on a closed queue raises `ValueError`.
    #[error("this handle of the queue is closed")]
    Closed,
    /// The queue was shut down and is empty (or was shut down immediately):
    /// [`Queue::shutdown`](crate::Queue::shutdown), Python's `ShutDown`.
    #[error("the queue was shut down")]
    ShutDown,
    /// A message arrived but does not decode as the queue's type; it has
    /// been removed and the queue is still usable.
    #[error("could not decode a message: {0}")]
    Decode(#[from] DecodeError),
    /// A record in shared memory was impossible (memory corrupted by a
    /// misbehaving process); what was in flight has been dropped.
    #[error("the queue's shared memory was corrupted: {0}")]
    Corrupted(String),
    /// The operating system refused (reading an out-of-line message).
    #[error("could not get: {0}")]
    Io(#[from] io::Error),
}

/// [`get_timeout`](crate::Queue::get_timeout) did not get a value.
///
/// `E` says why getting failed: [`GetError`] for a local
/// [`Queue`](crate::Queue); the Manager's and the cluster's queues use the
/// same type with their own error.
#[derive(Debug, thiserror::Error)]
pub enum GetTimeoutError<E = GetError> {
    /// Still empty at the deadline.
    #[error("the queue stayed empty")]
    Timeout,
    /// Getting failed.
    #[error(transparent)]
    Failed(#[from] E),
}

/// [`try_get`](crate::Queue::try_get) did not get a value (`E` as for
/// [`GetTimeoutError`]).
#[derive(Debug, thiserror::Error)]
pub enum TryGetError<E = GetError> {
    /// The queue is empty.
    #[error("the queue is empty")]
    Empty,
    /// Getting failed.
    #[error(transparent)]
    Failed(#[from] E),
}

/// [`task_done`](crate::JoinableQueue::task_done) was called more times than
/// values were put (Python's `ValueError`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
#[error("task_done() called more times than values were put")]
pub struct TaskDoneError;
