//! What can go wrong in a pool: starting it, and running one task.

use std::time::Duration;

use crate::process::{ExitStatus, PanicReport, StartError};
use crate::wire::{DecodeError, EncodeError};

/// The pool could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A worker process could not be started.
    #[error("could not start a pool worker: {0}")]
    Start(#[from] StartError),
    /// The initializer failed (returned an error or panicked) in a worker.
    /// The pool does not retry: it would fail again.
    #[error("the pool's initializer failed in worker {worker}: {message}")]
    Initializer {
        /// The worker's index.
        worker: usize,
        /// The error's or the panic's message.
        message: String,
    },
    /// The processes started in one worker's place died before they were
    /// ready (killed while starting, or crashed in the initializer:
    /// `abort`, a segfault, `exit`) more times in a row than
    /// [`PoolBuilder::max_failed_starts`](super::PoolBuilder::max_failed_starts)
    /// allows.
    #[error(
        "pool worker {worker} ended before it was ready {attempts} times in a row; the last time: {status}"
    )]
    WorkerLost {
        /// The worker's index.
        worker: usize,
        /// How many processes in a row died before they were ready.
        attempts: u32,
        /// How the last one ended.
        status: ExitStatus,
    },
    /// The operating system refused something (a socket, shared memory).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The builder was given an impossible setting.
    #[error("invalid pool setting: {0}")]
    Invalid(&'static str),
    /// The cluster's server could not be reached or refused to set the
    /// pool up.
    #[cfg(feature = "cluster")]
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// One task (one item of a map) did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The function panicked; the worker survives.
    #[error("the task panicked: {0}")]
    Panicked(PanicReport),
    /// The worker running the task died (killed by a signal, a segfault,
    /// or it exited). It has been replaced.
    #[error("pool worker {worker} (pid {pid}) died while running the task: {status}")]
    WorkerDied {
        /// The worker's index.
        worker: usize,
        /// Its process id.
        pid: i32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The task ran past its timeout; its worker was killed and replaced.
    #[error("the task ran past its timeout of {0:?}; its worker was killed")]
    TimedOut(Duration),
    /// The task was cancelled before it finished.
    #[error("the task was cancelled")]
    Cancelled,
    /// The argument could not be encoded in this process.
    #[error(transparent)]
    ArgumentEncode(EncodeError),
    /// The worker could not decode the argument.
    #[error("the worker could not decode the argument: {0}")]
    ArgumentDecode(String),
    /// The worker could not encode the result.
    #[error("the worker could not encode the result: {0}")]
    ResultEncode(String),
    /// This process could not decode the result.
    #[error(transparent)]
    ResultDecode(DecodeError),
    /// A worker sent something that is not a result of this protocol.
    #[error("a pool worker broke the protocol: {0}")]
    Protocol(String),
    /// The pool was terminated (or dropped) before the task finished.
    #[error("the pool was terminated before the task finished")]
    Terminated,
    /// The pool is closed: it takes no new tasks.
    #[error("the pool is closed")]
    Closed,
    /// A replacement worker's initializer failed (returned an error or
    /// panicked), or the processes started in one worker's place kept
    /// dying before they were ready (see
    /// [`PoolBuilder::max_failed_starts`](super::PoolBuilder::max_failed_starts)):
    /// the pool runs no more tasks. A worker killed while it runs a task,
    /// or while it starts, is not enough.
    #[error("the pool is broken: {0}")]
    Broken(String),
    /// The function has no `#[multiproc::task]`, so no cluster agent and
    /// no manager's pool ([`PoolProxy`](crate::PoolProxy)) can run it
    /// (found at submit, before anything was sent), or the agent or the
    /// manager does not know the name.
    #[error("the function is not registered as a task: {0}")]
    NotRegistered(String),
    /// The agent (or the manager serving a
    /// [`PoolProxy`](crate::PoolProxy)) runs another build of the program
    /// than the producer (a task's signature or the executable's
    /// fingerprint differ): the task was not run.
    #[error(
        "the task would run in another build of the program: expected {expected}, it has {got}"
    )]
    BuildMismatch {
        /// The producer's fingerprint or signature.
        expected: String,
        /// The agent's.
        got: String,
    },
    /// The task's agents died (or stalled) while running it more often
    /// than the pool's delivery cap allows: it is not run again.
    #[cfg(feature = "cluster")]
    #[error(
        "the task was handed out {deliveries} times and its agent (last {agent}) was lost each time"
    )]
    WorkerLost {
        /// The agent that held it last.
        agent: String,
        /// How many times it was handed out.
        deliveries: u64,
    },
    /// The pool's backend failed: the cluster's server (the connection
    /// was lost, the server restarted and lost the task, or it refused a
    /// command), or the manager serving a [`PoolProxy`](crate::PoolProxy)
    /// (it is gone, or dropped this client's work after not hearing from
    /// it).
    #[error("the pool's backend failed: {0}")]
    Backend(String),
    /// This pool cannot run such a call: a plain-data map
    /// ([`Pool::map_pod`](crate::Pool::map_pod)) on a cluster pool or a
    /// manager's pool ([`PoolProxy`](crate::PoolProxy)), which run
    /// registered serde tasks only. Nothing was sent.
    #[error("this pool cannot run it: {0}")]
    Unsupported(String),
}

/// A result handle's `get_timeout` gave up waiting, or the task failed.
#[derive(thiserror::Error)]
pub enum ResultTimeoutError<H> {
    /// The task failed.
    #[error(transparent)]
    Failed(TaskError),
    /// The result was not ready in time; the task goes on, and here is the
    /// handle back.
    #[error("the result was not ready in time")]
    Timeout(H),
}

impl<H> ResultTimeoutError<H> {
    /// The handle given back by a [`Timeout`](Self::Timeout), to wait
    /// again; `None` when the task failed.
    pub fn into_inner(self) -> Option<H> {
        match self {
            ResultTimeoutError::Timeout(h) => Some(h),
            ResultTimeoutError::Failed(_) => None,
        }
    }
}

impl<H> std::fmt::Debug for ResultTimeoutError<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResultTimeoutError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            ResultTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
        }
    }
}
