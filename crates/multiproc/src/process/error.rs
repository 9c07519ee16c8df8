//! What can go wrong when starting and joining a process.

use std::{fmt, io};

use super::handle::Process;
use super::status::Signal;
use crate::wire::{DecodeError, EncodeError, FrameError};

/// A process could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The argument could not be encoded; no process was started.
    #[error("the argument could not be sent to the child: {0}")]
    Encode(#[from] EncodeError),
    /// multiproc's boot hook did not run in this executable, so a re-executed
    /// child would run `main` instead of the requested function.
    #[error(
        "multiproc's boot hook did not run in this executable, so spawn and forkserver \
         children cannot start; call `multiproc::init()` as the first line of `main`, \
         or use the fork start method"
    )]
    BootHookMissing,
    /// The forkserver could not be started or reached.
    #[error("the forkserver failed: {0}")]
    ForkServer(String),
    /// The operating system refused (out of processes, descriptors, memory).
    #[error("could not start the process: {0}")]
    Io(#[from] io::Error),
}

/// What a child's panic left behind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PanicReport {
    /// The panic message.
    pub message: String,
    /// `file:line:column` where it panicked, when known.
    pub location: Option<String>,
    /// The backtrace, when `RUST_BACKTRACE` enabled one in the child.
    pub backtrace: Option<String>,
}

impl fmt::Display for PanicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(loc) = &self.location {
            write!(f, " at {loc}")?;
        }
        Ok(())
    }
}

/// A process ran, but did not produce a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The function panicked in the child.
    #[error("the child panicked: {0}")]
    Panicked(PanicReport),
    /// A signal ended the child before it returned (SIGKILL, SIGSEGV, abort).
    #[error("the child was killed by {signal}{}", if *core_dumped { " (core dumped)" } else { "" })]
    Signaled {
        /// The signal.
        signal: Signal,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
    /// The child exited before it returned (it called `process::exit`).
    #[error("the child exited with code {code} before returning a result")]
    Exited {
        /// The exit code.
        code: i32,
    },
    /// The child could not decode its argument (a `Deserialize` impl that
    /// disagrees with its `Serialize`).
    #[error("the child could not decode its argument: {0}")]
    ArgumentDecode(String),
    /// The child's result could not be encoded in the child.
    #[error("the child's result could not be encoded: {0}")]
    ResultEncode(String),
    /// The child's result could not be decoded in the parent.
    #[error("the child's result could not be decoded: {0}")]
    ResultDecode(#[from] DecodeError),
    /// The child wrote something that is not a result frame.
    #[error("the child broke the protocol: {0}")]
    Protocol(FrameError),
    /// The operating system reported an error while waiting.
    #[error("waiting for the child failed: {0}")]
    Io(#[from] io::Error),
}

/// [`Process::join_timeout`] did not produce a result.
#[derive(thiserror::Error)]
pub enum JoinTimeoutError<R> {
    /// The child is still running; here is its handle back.
    #[error("the child is still running")]
    Timeout(Process<R>),
    /// The child ended without a result.
    #[error(transparent)]
    Failed(#[from] JoinError),
}

/// [`Process::try_join`] did not produce a result.
#[derive(thiserror::Error)]
pub enum TryJoinError<R> {
    /// The child is still running; here is its handle back.
    #[error("the child is still running")]
    Running(Process<R>),
    /// The child ended without a result.
    #[error(transparent)]
    Failed(#[from] JoinError),
}

impl<R> JoinTimeoutError<R> {
    /// The handle a [`Timeout`](Self::Timeout) gives back, to wait again;
    /// `None` when the child ended without a result.
    pub fn into_inner(self) -> Option<Process<R>> {
        match self {
            JoinTimeoutError::Timeout(p) => Some(p),
            JoinTimeoutError::Failed(_) => None,
        }
    }
}

impl<R> TryJoinError<R> {
    /// The handle a [`Running`](Self::Running) gives back; `None` when
    /// the child ended without a result.
    pub fn into_inner(self) -> Option<Process<R>> {
        match self {
            TryJoinError::Running(p) => Some(p),
            TryJoinError::Failed(_) => None,
        }
    }
}

impl<R> fmt::Debug for JoinTimeoutError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinTimeoutError::Timeout(p) => f.debug_tuple("Timeout").field(p).finish(),
            JoinTimeoutError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<R> fmt::Debug for TryJoinError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryJoinError::Running(p) => f.debug_tuple("Running").field(p).finish(),
            TryJoinError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}
