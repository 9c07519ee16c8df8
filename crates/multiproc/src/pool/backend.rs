//! Where a pool's chunks run: the local scheduler and its worker
//! processes, or (with the `cluster` feature) agents behind a server. The
//! front end (`Pool`, its handles, the job store) is the same for both.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::error::TaskError;
use super::pod::PodArena;
use super::scheduler::{Chunk, Shared, WorkerStats};
use crate::process::StartMethod;

/// What the front end asks of the place its chunks run.
pub(crate) trait Backend: Send + Sync {
    /// How workers are started.
    fn method(&self) -> StartMethod;
    /// How many items can run at once (worker processes, or the live
    /// agents' slots): sizes chunks.
    fn workers(&self) -> usize;
    /// Per-worker statistics.
    fn stats(&self) -> Vec<WorkerStats>;
    /// Whether it runs plain-data chunks (`map_pod`): only local workers,
    /// which share this executable's code, do.
    fn runs_pod(&self) -> bool {
        false
    }
    /// The shared block plain-data maps go through, if there is one.
    fn pod_arena(&self) -> Option<&Arc<PodArena>> {
        None
    }
    /// Queues chunks; an error fails all of them.
    fn submit(&self, chunks: Vec<Chunk>) -> Result<(), TaskError>;
    /// A job was cancelled: fail its queued chunks, stop its running ones.
    fn cancelled(&self);
    /// Takes no new chunks; the queued ones still run.
    fn close(&self);
    /// Closes, waits for every queued chunk, and shuts down.
    fn join(&self);
    /// Stops now: queued and running chunks fail with
    /// [`TaskError::Terminated`]; waits until everything is down.
    fn terminate(&self);
}

/// The local scheduler thread and its worker processes.
pub(crate) struct Local {
    pub(crate) shared: Arc<Shared>,
    pub(crate) thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) workers: usize,
    /// See [`PodArena`]: none with a memory limit (the arena's pages a
    /// worker touches count in its resident memory).
    pub(crate) arena: Option<Arc<PodArena>>,
}

impl Local {
    fn take_thread(&self) -> Option<JoinHandle<()>> {
        self.thread.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Backend for Local {
    fn method(&self) -> StartMethod {
        self.shared.method()
    }

    fn workers(&self) -> usize {
        self.workers
    }

    fn stats(&self) -> Vec<WorkerStats> {
        self.shared.stats()
    }

    fn runs_pod(&self) -> bool {
        true
    }

    fn pod_arena(&self) -> Option<&Arc<PodArena>> {
        self.arena.as_ref()
    }

    fn submit(&self, chunks: Vec<Chunk>) -> Result<(), TaskError> {
        self.shared.submit(chunks)
    }

    fn cancelled(&self) {
        // Queued, they fail here; running, the scheduler kills the worker.
        self.shared.drop_cancelled();
        self.shared.wake();
    }

    fn close(&self) {
        self.shared.close();
    }

    fn join(&self) {
        self.shared.close();
        if let Some(t) = self.take_thread() {
            let _ = t.join();
        }
    }

    fn terminate(&self) {
        if let Some(t) = self.take_thread() {
            self.shared.terminate();
            let _ = t.join();
        }
    }
}
