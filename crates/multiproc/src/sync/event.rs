//! `Event`: a flag processes can wait for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Shared, shared_handle};
use crate::shm::states::EventState;

/// A flag shared between processes (Python's `Event`): `wait` blocks until
/// someone calls `set`. Waiters never miss a `set`.
///
/// ```
/// use multiproc::{Event, Process};
///
/// fn starter(go: Event) {
///     go.set();
/// }
///
/// let go = Event::new()?;
/// let child = Process::spawn(starter, go.clone())?;
/// go.wait();
/// assert!(go.is_set());
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Event {
    shared: Arc<Shared<EventState>>,
}

shared_handle!(Event);

impl Event {
    fn from_shared(shared: Arc<Shared<EventState>>) -> Self {
        Event { shared }
    }

    /// A new, clear event.
    pub fn new() -> std::io::Result<Event> {
        Ok(Event::from_shared(Shared::create("multiproc-event", 0, 0)?))
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        self.shared.state().set();
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.shared.state().clear();
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.shared.state().is_set()
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.shared.state().wait(None);
    }

    /// [`wait`](Self::wait), as a future: ready once the flag is set,
    /// without blocking the thread (see `docs/async.md`).
    pub fn wait_async(&self) -> impl Future<Output = ()> + Send + '_ {
        crate::aio::retry(
            move |_| self.is_set().then_some(()),
            move || {
                let shared = Arc::clone(&self.shared);
                move |until: Instant, _: &crate::aio::Ticket| shared.state().wait_set(until)
            },
        )
    }

    /// Waits at most `timeout`; returns whether the flag is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.shared.state().wait(crate::shm::wait::after(timeout))
    }
}
