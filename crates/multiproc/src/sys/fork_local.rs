//! Process-wide state behind a mutex that a forked child starts afresh.
//!
//! A `static` `std::sync::Mutex` that another thread holds at the moment
//! of a fork stays locked in the child forever: the thread that would
//! unlock it does not exist there. A fork-start child (or a pool worker
//! started with fork) that then touches the same registry (a queue's
//! handle count, the manager's links, the launcher thread's inbox) hung
//! for good. A [`ForkLocal`] gives each fork generation
//! ([`futex::generation`]) its own mutex and value: the first use in a
//! child makes a new one from the initial value, and the parent's copy,
//! locked or not, is never touched again there (it is leaked, once per
//! fork, in the child only).
//!
//! Only what a child should not inherit belongs here: registries of this
//! process's own threads, connections and handle counts, all of which are
//! keyed by process anyway. State the child must inherit (the registry of
//! handles whose descriptors it releases) is locked by the forking thread
//! across the fork instead (`process::info::lock_for_fork`).

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use super::futex;

/// One generation's mutex.
struct Cell<T> {
    generation: u32,
    mutex: Mutex<T>,
}

/// A mutex-protected value of which each fork generation has its own (see
/// the module's documentation). For `static`s; the cells it makes are
/// never freed.
pub(crate) struct ForkLocal<T> {
    /// Null, or the current generation's cell (or an older one's, until
    /// the first use in a new generation replaces it). Every pointer ever
    /// stored here came from `Box::into_raw` and is never freed.
    cell: AtomicPtr<Cell<T>>,
    init: fn() -> T,
    /// `Sync` exactly when `Mutex<T>` is (`T: Send`), `Send` likewise.
    _marker: PhantomData<Mutex<T>>,
}

impl<T> ForkLocal<T> {
    /// State made by `init` on first use in each generation.
    pub(crate) const fn new(init: fn() -> T) -> ForkLocal<T> {
        ForkLocal {
            cell: AtomicPtr::new(ptr::null_mut()),
            init,
            _marker: PhantomData,
        }
    }

    /// This generation's cell, made if needed.
    fn cell(&self) -> &Cell<T> {
        let generation = futex::generation();
        loop {
            let current = self.cell.load(Ordering::Acquire);
            if !current.is_null() {
                // SAFETY: a non-null pointer here came from `Box::into_raw`
                // (below) and is never freed, nor ever handed out mutably:
                // the cell lives, unchanged but for its mutex's interior,
                // for the rest of the process, so a shared reference to it
                // is valid for as long as `self`.
                let cell = unsafe { &*current };
                if cell.generation == generation {
                    return cell;
                }
            }
            let fresh = Box::into_raw(Box::new(Cell {
                generation,
                mutex: Mutex::new((self.init)()),
            }));
            if let Err(_other) =
                self.cell
                    .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                // Another thread installed a cell first: ours was never
                // shared, so it is ours to free.
                // SAFETY: `fresh` came from `Box::into_raw` just above and
                // no other pointer to it exists (the exchange failed).
                drop(unsafe { Box::from_raw(fresh) });
            }
            // The previous cell, if any, stays allocated: a reference to it
            // may still be live (in the parent's threads' memory, copied
            // into this process by the fork).
        }
    }

    /// Locks this generation's value, waiting for other threads of this
    /// process (never for a thread that a fork left behind). A panic of
    /// another holder does not poison it: the registries here stay
    /// consistent across a panic.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.cell().mutex.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks this generation's value if no other thread holds it now.
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        match self.cell().mutex.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static COUNT: ForkLocal<u32> = ForkLocal::new(|| 7);

    #[test]
    fn a_value_starts_from_its_initial_value_and_is_shared_by_threads() {
        *COUNT.lock() += 1;
        std::thread::spawn(|| *COUNT.lock() += 1)
            .join()
            .expect("thread");
        assert_eq!(*COUNT.lock(), 9);
        let held = COUNT.lock();
        assert!(COUNT.try_lock().is_none(), "held by this thread");
        drop(held);
        assert!(COUNT.try_lock().is_some());
    }

    static HELD: ForkLocal<u32> = ForkLocal::new(|| 1);

    #[test]
    fn a_forked_child_gets_a_fresh_value_even_when_the_parent_holds_it() {
        // The forking thread itself holds the lock across the fork: with a
        // plain mutex the child's first lock would wait for ever.
        let mut held = HELD.lock();
        *held = 5;
        let pid = crate::sys::process::fork_child(|| {
            // SAFETY: `alarm` only arms a timer; if the lock below hung,
            // SIGALRM would end this child, which the parent then sees.
            unsafe { libc::alarm(10) };
            let fresh = *HELD.lock();
            i32::from(fresh != 1)
        })
        .expect("fork");
        drop(held);
        let pidfd = crate::sys::process::pidfd_open(pid).expect("pidfd");
        let exit = crate::sys::process::reap_blocking(std::os::fd::AsFd::as_fd(&pidfd));
        assert!(
            matches!(exit, Ok(crate::sys::process::RawExit::Exited(0))),
            "{exit:?}"
        );
        assert_eq!(*HELD.lock(), 5, "the parent keeps its own value");
    }
}
