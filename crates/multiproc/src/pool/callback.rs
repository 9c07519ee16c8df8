//! Callbacks on async pool calls (Python's `callback` and `error_callback`):
//! run in the parent, on the pool's callback thread, never on a worker nor
//! on the scheduler thread.
//!
//! A handle given callbacks registers a *finisher* with the pool's
//! [`Runner`]: once the job settles, the runner's thread takes the result
//! out of the job, runs the callbacks on it, and leaves it in a [`Slot`]
//! from which the handle's `get` takes it (so `get` returns after the
//! callbacks ran, as Python's `AsyncResult.get` does).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::thread::{JoinHandle, ThreadId};
use std::time::Instant;

use super::job::Notifier;

/// The name of the thread callbacks run on.
pub(crate) const THREAD_NAME: &str = "multiproc-pool-callbacks";

type Finisher = Box<dyn FnOnce() + Send>;

/// A callback on a result of type `T`.
pub(crate) type Callback<T> = Box<dyn FnOnce(&T) + Send>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pool's callback thread, started when the first callback is given.
pub(crate) struct Runner {
    notifier: Arc<Notifier>,
    closing: AtomicBool,
    state: Mutex<RunnerState>,
}

#[derive(Default)]
struct RunnerState {
    /// Finishers not run yet, by key (a job pushes its key to the notifier
    /// when it settles).
    pending: BTreeMap<usize, Finisher>,
    next: usize,
    thread: Option<(JoinHandle<()>, ThreadId)>,
}

impl Runner {
    pub(crate) fn new() -> Arc<Runner> {
        Arc::new(Runner {
            notifier: Arc::new(Notifier::default()),
            closing: AtomicBool::new(false),
            state: Mutex::new(RunnerState::default()),
        })
    }

    /// Registers `finisher`, to run on the callback thread once `listen`
    /// (given the runner's notifier and a key) pushes its key. If the
    /// pool has ended, or the thread cannot start, it runs here and now.
    pub(crate) fn when_settled(
        self: &Arc<Self>,
        listen: impl FnOnce(Arc<Notifier>, usize),
        finisher: Finisher,
    ) {
        let mut st = lock(&self.state);
        if self.closing.load(Ordering::SeqCst) || !self.started(&mut st) {
            drop(st);
            run(finisher);
            return;
        }
        let key = st.next;
        st.next += 1;
        st.pending.insert(key, finisher);
        drop(st);
        listen(Arc::clone(&self.notifier), key);
    }

    /// Runs `finisher` on the callback thread as soon as it can.
    pub(crate) fn soon(self: &Arc<Self>, finisher: Finisher) {
        self.when_settled(
            |n, key| {
                lock(&n.done).push_back(key);
                n.cv.notify_all();
            },
            finisher,
        );
    }

    /// Starts the thread if it has not started; false if it cannot.
    fn started(self: &Arc<Self>, st: &mut RunnerState) -> bool {
        if st.thread.is_some() {
            return true;
        }
        let me = Arc::clone(self);
        match std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || me.serve())
        {
            Ok(t) => {
                let id = t.thread().id();
                st.thread = Some((t, id));
                true
            }
            Err(_) => false,
        }
    }

    /// The callback thread: runs each finisher whose job settled; once the
    /// pool ends, runs what settled, then every finisher left (their jobs
    /// can get no more results: they see `Cancelled` for what is missing).
    fn serve(&self) {
        loop {
            let key = {
                let mut done = lock(&self.notifier.done);
                loop {
                    if let Some(k) = done.pop_front() {
                        break Some(k);
                    }
                    if self.closing.load(Ordering::SeqCst) {
                        break None;
                    }
                    done = self
                        .notifier
                        .cv
                        .wait(done)
                        .unwrap_or_else(|e| e.into_inner());
                }
            };
            let finisher = match key {
                Some(k) => lock(&self.state).pending.remove(&k),
                None => lock(&self.state).pending.pop_first().map(|(_, f)| f),
            };
            match finisher {
                Some(f) => run(f),
                None if key.is_none() => return,
                None => {}
            }
        }
    }

    /// The pool has ended (its scheduler thread is gone): runs what is
    /// left and stops the thread, waiting for it unless called on it (a
    /// callback that dropped the last handle of the pool).
    pub(crate) fn shut_down(&self) {
        {
            let _done = lock(&self.notifier.done);
            self.closing.store(true, Ordering::SeqCst);
            self.notifier.cv.notify_all();
        }
        let thread = lock(&self.state).thread.take();
        if let Some((t, id)) = thread
            && id != std::thread::current().id()
        {
            let _ = t.join();
        }
        // Registered after the thread's last look, or with no thread.
        loop {
            let next = lock(&self.state).pending.pop_first();
            match next {
                Some((_, f)) => run(f),
                None => break,
            }
        }
    }
}

fn run(finisher: Finisher) {
    // A finisher catches each callback's panic itself; this is for its
    // own code (taking the result out of the job).
    let _ = catch_unwind(AssertUnwindSafe(finisher));
}

/// Where a result waits, once its callbacks ran, for the handle.
pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
    cv: Condvar,
}

struct SlotState<T> {
    value: Option<T>,
    /// The callbacks ran; `value` is there unless the handle took it.
    filled: bool,
    callbacks: Vec<Callback<T>>,
    waker: Option<Waker>,
}

impl<T> Slot<T> {
    pub(crate) fn new(callback: Callback<T>) -> Arc<Slot<T>> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                value: None,
                filled: false,
                callbacks: vec![callback],
                waker: None,
            }),
            cv: Condvar::new(),
        })
    }

    /// Runs the callbacks on `value` (each one's panic caught: the panic
    /// hook has printed it, the next callback runs), then leaves `value`
    /// for the handle. On the callback thread.
    pub(crate) fn deliver(&self, value: T) {
        loop {
            let callbacks = {
                let mut st = lock(&self.state);
                if st.callbacks.is_empty() {
                    st.value = Some(value);
                    st.filled = true;
                    self.cv.notify_all();
                    if let Some(w) = st.waker.take() {
                        w.wake();
                    }
                    return;
                }
                std::mem::take(&mut st.callbacks)
            };
            for cb in callbacks {
                let _ = catch_unwind(AssertUnwindSafe(|| cb(&value)));
            }
        }
    }

    /// Adds a callback. `Some(value)` if the result was already delivered:
    /// the caller must deliver it again (the callback then runs on it).
    pub(crate) fn add(&self, callback: Callback<T>) -> Option<T> {
        let mut st = lock(&self.state);
        st.callbacks.push(callback);
        if st.filled {
            st.filled = false;
            st.value.take()
        } else {
            None
        }
    }

    /// Waits until the callbacks ran, at most until `deadline`; whether
    /// they did.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut st = lock(&self.state);
        while !st.filled {
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        true
    }

    /// Whether the callbacks ran.
    pub(crate) fn is_filled(&self) -> bool {
        lock(&self.state).filled
    }

    /// `f` of the delivered value, if the callbacks ran.
    pub(crate) fn inspect<U>(&self, f: impl FnOnce(&T) -> U) -> Option<U> {
        let st = lock(&self.state);
        if st.filled {
            st.value.as_ref().map(f)
        } else {
            None
        }
    }

    /// Takes the delivered value (after [`wait`](Self::wait)).
    pub(crate) fn take(&self) -> Option<T> {
        lock(&self.state).value.take()
    }

    /// Wakes `waker` when the callbacks have run.
    pub(crate) fn set_waker(&self, waker: &Waker) {
        let mut st = lock(&self.state);
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            st.waker = Some(waker.clone());
        }
    }
}
