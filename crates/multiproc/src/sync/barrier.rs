//! `Barrier`: a rendezvous of a fixed number of processes.

use std::sync::Arc;
use std::time::Duration;

use super::{Shared, shared_handle};
use crate::shm::states::{BarrierFailure, BarrierState};

/// A barrier wait failed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum BarrierError {
    /// The barrier is broken (Python's `BrokenBarrierError`): aborted, reset
    /// while this party waited, a party timed out, or a waiting party died.
    /// [`Barrier::reset`] makes it usable again.
    #[error("the barrier is broken")]
    Broken,
    /// This wait timed out, which broke the barrier for every party.
    #[error("the barrier wait timed out (the barrier is now broken)")]
    TimedOut,
}

/// A barrier for `parties` processes (or threads) (Python's `Barrier`).
/// Each `wait` returns when all parties have called it, with an index
/// unique within the round.
///
/// ```
/// use multiproc::{Barrier, Process};
///
/// fn party(b: Barrier) -> u32 {
///     b.wait().unwrap()
/// }
///
/// let b = Barrier::new(2)?;
/// let child = Process::spawn(party, b.clone())?;
/// let mine = b.wait()?;
/// let theirs = child.join()?;
/// assert_eq!(mine + theirs, 1); // indices 0 and 1
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Barrier {
    shared: Arc<Shared<BarrierState>>,
}

shared_handle!(Barrier);

fn map(r: Result<u32, BarrierFailure>) -> Result<u32, BarrierError> {
    r.map_err(|e| match e {
        BarrierFailure::Broken => BarrierError::Broken,
        BarrierFailure::TimedOut => BarrierError::TimedOut,
    })
}

impl Barrier {
    fn from_shared(shared: Arc<Shared<BarrierState>>) -> Self {
        Barrier { shared }
    }

    /// A barrier for `parties` parties (at least 1).
    pub fn new(parties: u32) -> std::io::Result<Barrier> {
        if parties == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a barrier needs at least one party",
            ));
        }
        let shared = Shared::<BarrierState>::create("multiproc-barrier", 0, 0)?;
        shared.state().init(parties);
        Ok(Barrier::from_shared(shared))
    }

    /// Waits for every party.
    pub fn wait(&self) -> Result<u32, BarrierError> {
        map(self.shared.state().wait(None))
    }

    /// Waits at most `timeout`; a timeout breaks the barrier.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32, BarrierError> {
        map(self.shared.state().wait(crate::shm::wait::after(timeout)))
    }

    /// Breaks the barrier: every waiter, now and later, gets `Broken`.
    pub fn abort(&self) {
        self.shared.state().abort();
    }

    /// Makes the barrier usable again; parties waiting now get `Broken`.
    pub fn reset(&self) {
        self.shared.state().reset();
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.shared.state().parties()
    }

    /// Parties waiting now.
    pub fn n_waiting(&self) -> u32 {
        self.shared.state().n_waiting()
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.shared.state().is_broken()
    }
}
