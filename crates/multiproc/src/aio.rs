//! How the async forms wait, on any executor (`docs/async.md`).
//!
//! An async operation is its non-blocking form, retried: a poll tries it
//! (`try_get`, `try_lock`, ...) and returns `Ready` when it succeeds. When
//! it fails, the future arranges to be polled again, in two phases:
//!
//! 1. **Eager**: for its first [`EAGER_POLLS`] failed polls, it wakes its
//!    own task at once and returns `Pending`. The executor runs its other
//!    tasks, then polls this one again: the async counterpart of the
//!    yields with which a blocking wait begins, which serve a stream with
//!    short gaps without any thread hop or system call.
//! 2. **Waiter thread**: then it hands a *readiness wait* to a waiter
//!    thread ([`run`]) and returns `Pending`. The readiness wait is the
//!    blocking code of the sync form's sleep (`shm::wait`, `poll` on a
//!    descriptor), with a condition that only *looks*: it returns once the
//!    operation may succeed, or after at most [`SLICE`], and never takes
//!    anything. The waiter thread then wakes the task's `Waker`, and the
//!    next poll tries the operation again (and, after a slice with no
//!    wake-up, asks the same liveness questions as the sync form).
//!
//! Because only the task's own poll ever takes a message, a lock or a
//! permit, dropping the future at any point loses nothing: a readiness
//! wait still running for a dropped future only looks, and if it was
//! woken by a wake-up meant for one waiter (a futex wake of one), it
//! passes that wake-up on (see [`Ticket::wanted`]).
//!
//! Waiter threads (`multiproc-waiter`) are made on demand, one per
//! readiness wait in progress, and kept [`IDLE`] after their last wait for
//! reuse. A fork leaves the child without them: its first wait starts
//! its own list ([`THREADS`] is a [`ForkLocal`]). No runtime is assumed:
//! all a future uses of its executor is
//! `Waker::wake`.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::sys::fork_local::ForkLocal;

/// Failed polls a future answers by waking itself at once, before it
/// hands its wait to a waiter thread.
pub(crate) const EAGER_POLLS: u32 = 64;

/// The longest a readiness wait lasts before the task is woken anyway, to
/// look again and to notice a dead peer: the re-check interval of every
/// sync wait.
pub(crate) const SLICE: Duration = crate::shm::wait::RECHECK;

/// How long a waiter thread with nothing to do stays for the next wait.
const IDLE: Duration = Duration::from_secs(10);

/// Work for a waiter thread.
type Job = Box<dyn FnOnce() + Send>;

/// An idle waiter thread's hand: where its next job is put.
#[derive(Default)]
struct Hand {
    job: Mutex<Option<Job>>,
    cv: Condvar,
}

/// The idle waiter threads of this process (a child forked from it starts
/// a list of its own, whatever a parent's thread held at the fork).
struct Threads {
    idle: Vec<Arc<Hand>>,
}

static THREADS: ForkLocal<Threads> = ForkLocal::new(|| Threads { idle: Vec::new() });

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `job` on a waiter thread: an idle one, or a new one. Gives it
/// back if no thread could be made (a process at its limit).
pub(crate) fn run(job: Job) -> Result<(), Job> {
    let hand = THREADS.lock().idle.pop();
    if let Some(hand) = hand {
        *lock(&hand.job) = Some(job);
        hand.cv.notify_one();
        return Ok(());
    }
    let hand = Arc::new(Hand::default());
    *lock(&hand.job) = Some(job);
    let mine = Arc::clone(&hand);
    let spawned = std::thread::Builder::new()
        .name("multiproc-waiter".into())
        .stack_size(256 << 10)
        .spawn(move || serve(mine));
    match spawned {
        Ok(_) => Ok(()),
        Err(_) => lock(&hand.job).take().map_or(Ok(()), Err),
    }
}

/// A waiter thread: runs jobs, then waits [`IDLE`] for another.
fn serve(hand: Arc<Hand>) {
    loop {
        let job = {
            let mut slot = lock(&hand.job);
            loop {
                if let Some(job) = slot.take() {
                    break job;
                }
                let (s, timeout) = hand
                    .cv
                    .wait_timeout(slot, IDLE)
                    .unwrap_or_else(|e| e.into_inner());
                slot = s;
                if timeout.timed_out() && slot.is_none() {
                    let mut t = THREADS.lock();
                    if let Some(i) = t.idle.iter().position(|h| Arc::ptr_eq(h, &hand)) {
                        t.idle.swap_remove(i);
                        return;
                    }
                    // Taken off the idle list just now: its job is coming.
                }
            }
        };
        // A job wakes its task however it ends (see `Waiting::pending`).
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
        THREADS.lock().idle.push(Arc::clone(&hand));
    }
}

/// Where a waiter thread finds the task to wake.
#[derive(Default)]
struct Signal {
    st: Mutex<SignalState>,
}

#[derive(Default)]
struct SignalState {
    waker: Option<Waker>,
    /// A readiness wait for this future is in progress.
    armed: bool,
    /// The future was dropped.
    dropped: bool,
}

impl Signal {
    /// The readiness wait is over: wake the task.
    fn fire(&self) {
        let waker = {
            let mut st = lock(&self.st);
            st.armed = false;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// What a readiness wait is told about its future.
pub(crate) struct Ticket(Arc<Signal>);

impl Ticket {
    /// Whether the future still wants the wake-up: false once it was
    /// dropped. A readiness wait woken by a wake-up meant for a single
    /// waiter passes it on when nobody wants it.
    pub(crate) fn wanted(&self) -> bool {
        !lock(&self.0.st).dropped
    }
}

/// The waiting state of one async operation (see the module's docs).
#[derive(Default)]
pub(crate) struct Waiting {
    eager: u32,
    signal: Option<Arc<Signal>>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("eager", &self.eager)
            .finish_non_exhaustive()
    }
}

impl Waiting {
    /// A fresh wait.
    pub(crate) fn new() -> Waiting {
        Waiting::default()
    }

    /// After a failed try: arranges for the task to be polled again, at
    /// once while the eager phase lasts, else when the readiness wait that
    /// `make` makes (only then) returns, run on a waiter thread. The wait
    /// gets the end of its slice, which it must not pass, and a
    /// [`Ticket`]; it may block, and must take nothing.
    pub(crate) fn pending<T, W>(
        &mut self,
        cx: &mut Context<'_>,
        make: impl FnOnce() -> W,
    ) -> Poll<T>
    where
        W: FnOnce(Instant, &Ticket) + Send + 'static,
    {
        if self.eager < EAGER_POLLS {
            self.eager += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.sleep(cx, make)
    }

    /// As [`pending`](Self::pending), without the eager phase: for waits
    /// that an eager retry cannot shorten (a process's exit, a deadline).
    pub(crate) fn sleep<T, W>(&mut self, cx: &mut Context<'_>, make: impl FnOnce() -> W) -> Poll<T>
    where
        W: FnOnce(Instant, &Ticket) + Send + 'static,
    {
        let signal = self.signal.get_or_insert_with(Arc::default);
        {
            let mut st = lock(&signal.st);
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.waker = Some(cx.waker().clone());
            }
            if st.armed {
                return Poll::Pending;
            }
            st.armed = true;
        }
        /// Fires the signal however the wait ends: done, panicked, or
        /// never run (no waiter thread could be made: the task is then
        /// woken at once and looks again, a busier wait but never a lost
        /// one).
        struct Fire(Arc<Signal>);
        impl Drop for Fire {
            fn drop(&mut self) {
                self.0.fire();
            }
        }
        let fire = Fire(Arc::clone(signal));
        let ready = make();
        let _ = run(Box::new(move || {
            let ticket = Ticket(Arc::clone(&fire.0));
            ready(Instant::now() + SLICE, &ticket);
            drop(fire);
        }));
        Poll::Pending
    }

    /// Whether the next [`pending`](Self::pending) hands a readiness wait
    /// to a waiter thread (the eager phase is over), or one was handed
    /// already: a wait that may have taken a wake-up meant for one.
    pub(crate) fn may_sleep(&self) -> bool {
        self.eager >= EAGER_POLLS || self.signal.is_some()
    }

    /// The operation succeeded: the next one (a stream's next item) starts
    /// eager again.
    pub(crate) fn done(&mut self) {
        self.eager = 0;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(s) = &self.signal {
            let mut st = lock(&s.st);
            st.dropped = true;
            st.waker = None;
        }
    }
}

impl Waiting {
    /// Whether this wait has handed a readiness wait to a waiter thread
    /// (a locker then raises the lock's waiter flag as it takes it).
    pub(crate) fn has_slept(&self) -> bool {
        self.signal.is_some()
    }
}

/// A future that retries `attempt` (see the module's docs) until it gives
/// a value; `ready` makes each readiness wait.
pub(crate) fn retry<T, W>(
    mut attempt: impl FnMut(&Waiting) -> Option<T>,
    mut ready: impl FnMut() -> W,
) -> impl Future<Output = T>
where
    W: FnOnce(Instant, &Ticket) + Send + 'static,
{
    let mut waiting = Waiting::new();
    std::future::poll_fn(move |cx| match attempt(&waiting) {
        Some(v) => Poll::Ready(v),
        None => waiting.pending(cx, &mut ready),
    })
}

/// Runs its action if dropped while armed. The future of an async locker
/// holds one: its readiness wait may have taken a wake-up meant for a
/// single sleeper (an unlock wakes one) and woken the task, and if the
/// future is then dropped before it looks again, that wake-up would be
/// lost; the action passes it on. A spare one costs a sleeper one look.
pub(crate) struct PassOn<F: FnMut()> {
    action: F,
    armed: bool,
}

impl<F: FnMut()> PassOn<F> {
    /// Disarmed.
    pub(crate) fn new(action: F) -> PassOn<F> {
        PassOn {
            action,
            armed: false,
        }
    }

    /// Armed after each failed attempt that a readiness wait follows (see
    /// [`Waiting::may_sleep`]), disarmed by the one that succeeds.
    pub(crate) fn arm(&mut self, armed: bool) {
        self.armed = armed;
    }
}

impl<F: FnMut()> Drop for PassOn<F> {
    fn drop(&mut self) {
        if self.armed {
            (self.action)();
        }
    }
}

/// Says when a wait has gone a [`SLICE`] without success since it last
/// said so: when an async form asks the liveness questions that a
/// blocking one asks after each sleep.
#[derive(Debug)]
pub(crate) struct Every {
    last: Option<Instant>,
}

impl Every {
    /// Counting from the first failed attempt.
    pub(crate) fn new() -> Every {
        Every { last: None }
    }

    /// True once per slice of failed attempts.
    pub(crate) fn due(&mut self) -> bool {
        let now = Instant::now();
        match self.last {
            None => {
                self.last = Some(now);
                false
            }
            Some(t) if now.duration_since(t) >= SLICE => {
                self.last = Some(now);
                true
            }
            Some(_) => false,
        }
    }
}

/// A wait made of blocking calls, each bounded (a slice), run one after
/// another on waiter threads until one ends it: for objects whose waits
/// are round trips to a server (manager proxies, cluster objects), which
/// has no readiness to watch. `slice` makes one call; `Some` ends the
/// future with its value. If the future is dropped while a call is in
/// flight, `undo` gets that call's result on the waiter thread (to give
/// back what it took).
pub(crate) fn sliced<T, S, U>(
    slice: S,
    undo: U,
) -> impl std::future::Future<Output = T> + Send + use<T, S, U>
where
    T: Send + 'static,
    S: Fn() -> Option<T> + Send + Sync + 'static,
    U: Fn(T) + Send + Sync + 'static,
{
    let slice = Arc::new(slice);
    let undo = Arc::new(undo);
    let mut call: Option<Offload<Option<T>>> = None;
    std::future::poll_fn(move |cx| {
        loop {
            let c = call.get_or_insert_with(|| {
                let s = Arc::clone(&slice);
                let u = Arc::clone(&undo);
                Offload::start(
                    move || s(),
                    move |r| {
                        if let Some(v) = r {
                            u(v);
                        }
                    },
                )
            });
            match c.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(v)) => return Poll::Ready(v),
                Poll::Ready(None) => call = None,
            }
        }
    })
}

/// A blocking call run on a waiter thread, for the few operations that
/// have no non-blocking form to retry (a send that must go out whole):
/// its result, or the call still running.
pub(crate) struct Offload<T: Send + 'static> {
    slot: Arc<Mutex<OffloadState<T>>>,
}

struct OffloadState<T> {
    result: Option<T>,
    waker: Option<Waker>,
    dropped: bool,
    /// What becomes of a result the future never takes.
    abandoned: Option<Box<dyn FnOnce(T) + Send>>,
}

impl<T: Send + 'static> Offload<T> {
    /// Starts `call` on a waiter thread. If the future is dropped without
    /// taking the call's result (before the call ends, or after it ended
    /// but before the next poll), `abandoned` gets the result on a waiter
    /// thread (to undo it, or to drop it there).
    pub(crate) fn start(
        call: impl FnOnce() -> T + Send + 'static,
        abandoned: impl FnOnce(T) + Send + 'static,
    ) -> Offload<T> {
        let slot = Arc::new(Mutex::new(OffloadState {
            result: None,
            waker: None,
            dropped: false,
            abandoned: Some(Box::new(abandoned)),
        }));
        let theirs = Arc::clone(&slot);
        let job: Job = Box::new(move || {
            let result = call();
            let mut st = lock(&theirs);
            if st.dropped {
                let abandoned = st.abandoned.take();
                drop(st);
                if let Some(abandoned) = abandoned {
                    abandoned(result);
                }
                return;
            }
            st.result = Some(result);
            let waker = st.waker.take();
            drop(st);
            if let Some(w) = waker {
                w.wake();
            }
        });
        if let Err(job) = run(job) {
            // No waiter thread to be had: the call runs here.
            job();
        }
        Offload { slot }
    }

    /// The result, once the call has ended.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = lock(&self.slot);
        if let Some(r) = st.result.take() {
            return Poll::Ready(r);
        }
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<T: Send + 'static> Drop for Offload<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.slot);
        st.dropped = true;
        st.waker = None;
        // The call ended after the last poll (a `select!` that polled this
        // future, then found its timer ready, drops it so): its result is
        // abandoned as if the call had ended after the drop. On a waiter
        // thread: undoing may block (a call to a server), and this may be
        // an executor's thread.
        if let Some(result) = st.result.take()
            && let Some(abandoned) = st.abandoned.take()
        {
            drop(st);
            let job: Job = Box::new(move || abandoned(result));
            if let Err(job) = run(job) {
                job();
            }
        }
    }
}

impl<T: Send + 'static> std::fmt::Debug for Offload<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn waiter_threads_are_reused_and_run_every_job() {
        // Other tests of this binary use the same pool at the same time:
        // count the threads our jobs ran on, not the pool's idle list.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            // The last job's thread goes back to the idle list just after
            // the job: give it a moment, as a sequential user would.
            let end = Instant::now() + Duration::from_secs(1);
            while THREADS.lock().idle.is_empty() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(1));
            }
            let (tx, rx) = std::sync::mpsc::channel();
            run(Box::new(move || {
                tx.send(std::thread::current().id()).expect("receiver")
            }))
            .ok()
            .expect("thread");
            seen.insert(rx.recv_timeout(Duration::from_secs(10)).expect("job ran"));
        }
        // Sequential jobs reuse idle threads rather than make one each.
        assert!(seen.len() < 20, "20 jobs ran on {} threads", seen.len());
    }

    #[test]
    fn a_result_the_dropped_future_never_took_is_abandoned() {
        let mut cx = Context::from_waker(Waker::noop());
        // Dropped while the call runs, and dropped after the call ended
        // but before a poll took its result: either way the result goes to
        // `abandoned`, once.
        for ended_first in [false, true] {
            let (go, gate) = std::sync::mpsc::channel::<()>();
            let (undo, undone) = std::sync::mpsc::channel::<u32>();
            let mut call = Offload::start(
                move || {
                    gate.recv().expect("go");
                    7u32
                },
                move |v| undo.send(v).expect("receiver"),
            );
            assert!(call.poll(&mut cx).is_pending());
            go.send(()).expect("the call waits");
            if ended_first {
                let end = Instant::now() + Duration::from_secs(10);
                while lock(&call.slot).result.is_none() {
                    assert!(Instant::now() < end, "the call never ended");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            drop(call);
            assert_eq!(undone.recv_timeout(Duration::from_secs(10)), Ok(7));
            assert!(undone.recv_timeout(Duration::from_millis(50)).is_err());
        }
    }
}
