//! The pool's builder: worker count, start method, initializer, limits.

use super::backend::{Backend, Local};
use super::pod::{Block, PodArena};
use super::scheduler::{Shared, Spawner};
use super::*;
use crate::process::{Process, StartMethod, get_start_method};
use crate::sys::code::CallLink;
use crate::wire::handles::TrackedFd;
use serde::{Serialize, de::DeserializeOwned};
use std::convert::Infallible;
use std::fmt::{self, Display};
use std::sync::Arc;
use std::time::Duration;

/// Most chunks one worker may hold at once: one running, the rest
/// waiting in its socket so it never waits for the next. Only quick chunks
/// queue up so (see the scheduler).
pub(super) const DEPTH: usize = 64;

/// Default of [`PoolBuilder::max_failed_starts`].
pub const DEFAULT_MAX_FAILED_STARTS: u32 = 10;

pub(super) fn no_initializer(_: ()) -> Result<(), Infallible> {
    Ok(())
}

/// Configures a [`Pool`] before starting it.
///
/// `I` is the initializer's argument, `S` the per-worker state it builds,
/// `E` its error.
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder<I = (), S = (), E = Infallible> {
    pub(super) workers: Option<usize>,
    pub(super) method: Option<StartMethod>,
    pub(super) max_tasks_per_child: Option<u64>,
    pub(super) memory_limit: Option<u64>,
    pub(super) task_timeout: Option<Duration>,
    pub(super) max_failed_starts: u32,
    pub(super) initializer: fn(I) -> Result<S, E>,
    pub(super) init_arg: I,
}

impl<I, S, E> fmt::Debug for PoolBuilder<I, S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field("method", &self.method)
            .field("max_tasks_per_child", &self.max_tasks_per_child)
            .field("memory_limit", &self.memory_limit)
            .field("task_timeout", &self.task_timeout)
            .field("max_failed_starts", &self.max_failed_starts)
            .finish_non_exhaustive()
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            workers: None,
            method: None,
            max_tasks_per_child: None,
            memory_limit: None,
            task_timeout: None,
            max_failed_starts: DEFAULT_MAX_FAILED_STARTS,
            initializer: no_initializer,
            init_arg: (),
        }
    }
}

impl<I, S, E> PoolBuilder<I, S, E>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
    S: 'static,
    E: Display + 'static,
{
    /// Number of worker processes (default: [`cpu_count`](crate::cpu_count)).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// How workers are started (default: [`get_start_method`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// A worker exits after this many items and is replaced (Python's
    /// `maxtasksperchild`, counted in items rather than chunks).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// A worker whose resident memory passes `bytes` after an item is
    /// replaced; the rest of its chunk goes to another worker. Checked
    /// after each item, at most every 5 ms, so one item can overshoot.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The default timeout of every item (see [`TaskOptions::timeout`]).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How many processes in a row may die before they are ready in one
    /// worker's place and still be replaced (default
    /// [`DEFAULT_MAX_FAILED_STARTS`]); one more breaks the pool.
    ///
    /// A worker that dies before it is ready, without its initializer
    /// returning an error or panicking, was killed while starting (by a
    /// user, the OOM killer) or crashed in the initializer (`abort`, a
    /// segfault, `exit`): the pool cannot tell which, so it starts it
    /// again. Only when the same place fails this many times in a row
    /// (no process in it becoming ready in between) is it a restart storm:
    /// [`build`](Self::build) returns [`PoolError::WorkerLost`], or, later,
    /// the pool is broken ([`TaskError::Broken`] says how many times, in
    /// how long, and how the last one ended). Kills at random instants
    /// of a working pool do not add up to that: each process that
    /// becomes ready starts the count again. `0` breaks the pool at the
    /// first worker that dies before it is ready.
    pub fn max_failed_starts(mut self, n: u32) -> Self {
        self.max_failed_starts = n;
        self
    }

    /// Runs `f(arg)` once in every worker before its first task. What it
    /// returns is the worker's state, reached from tasks through
    /// [`with_state`]. If it fails (returns an error or panics), the pool
    /// does not start: [`build`](Self::build) returns
    /// [`PoolError::Initializer`] with the message; in a replacement
    /// later, the pool is broken ([`TaskError::Broken`]): it would fail
    /// again. A worker that dies in it otherwise (killed, `abort`) is
    /// started again (see [`max_failed_starts`](Self::max_failed_starts)).
    /// `arg` may hold handles (a [`Queue`](crate::Queue), a
    /// [`Lock`](crate::Lock)...): every worker, and every replacement, gets
    /// its own.
    pub fn initializer<I2, S2, E2>(
        self,
        f: fn(I2) -> Result<S2, E2>,
        arg: I2,
    ) -> PoolBuilder<I2, S2, E2> {
        PoolBuilder {
            workers: self.workers,
            method: self.method,
            max_tasks_per_child: self.max_tasks_per_child,
            memory_limit: self.memory_limit,
            task_timeout: self.task_timeout,
            max_failed_starts: self.max_failed_starts,
            initializer: f,
            init_arg: arg,
        }
    }

    /// Starts the workers and waits until each has run its initializer.
    pub fn build(self) -> Result<Pool, PoolError> {
        let workers = self.workers.unwrap_or_else(crate::cpu_count);
        if workers == 0 {
            return Err(PoolError::Invalid("a pool needs at least one worker"));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(PoolError::Invalid("max_tasks_per_child must be at least 1"));
        }
        let method = self.method.unwrap_or_else(get_start_method);
        let (init, arg) = (self.initializer, self.init_arg);
        let (max_tasks, memory_limit) = (self.max_tasks_per_child, self.memory_limit);
        // Without one, `map_pod` goes through the link (see `PodArena`).
        let arena = match memory_limit {
            None => PodArena::new().ok().map(Arc::new),
            Some(_) => None,
        };
        let to_workers = arena.clone();
        let spawner: Spawner = Box::new(move |index, slots, returns| {
            let (ours, link) = CallLink::pair()?;
            // Recorded before the fork, so a forked worker closes it.
            let ours = TrackedFd::new(ours);
            let setup = worker::Setup {
                link,
                slots: slots.clone(),
                init: &arg,
                max_tasks,
                memory_limit,
                arena: to_workers.as_ref().map(|a| a.to_worker()),
                returns: returns.map(|block| Block::Sent(Arc::clone(block))),
            };
            let process = Process::builder()
                .name(format!("PoolWorker-{index}"))
                .daemon(true)
                .start_method(method)
                .spawn_with_body(init, worker::worker_body::<I, S, E>, &setup)?;
            Ok((process, ours))
        });
        // Plain-data values come back through each worker's return area
        // too, unless the pool has a memory limit (see `PodArena`).
        let return_bytes = match memory_limit {
            None => worker::RETURN_BYTES,
            Some(_) => 0,
        };
        let shared = Shared::new(
            workers,
            DEPTH,
            self.max_failed_starts,
            method,
            spawner,
            return_bytes,
        )?;
        let runner = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("multiproc-pool".into())
            .spawn(move || runner.run())
            .map_err(PoolError::Io)?;
        let local = Local {
            shared,
            thread: std::sync::Mutex::new(Some(thread)),
            workers,
            arena,
        };
        if let Err(e) = local.shared.wait_started() {
            local.terminate();
            return Err(e);
        }
        Ok(Pool::with_backend(Arc::new(local), self.task_timeout))
    }
}
