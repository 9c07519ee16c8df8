//! Where a job's results go: a typed store that the scheduler fills and
//! the caller's handle (a map, an iterator, a task handle) drains.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::error::TaskError;
use super::progress::Progress;
use super::worker::Outcome;
use crate::wire::{DecodeError, codec};

/// A reply whose bare values are in a part of a worker's return area (see
/// `worker::SLOT_RETURNS`).
pub(crate) struct Returned<'a> {
    /// Job index of the first item.
    pub first: usize,
    /// Items with an outcome.
    pub count: usize,
    /// Leading bare values, in the area.
    pub plain: usize,
    /// The tagged outcomes after them, from the reply.
    pub tagged: &'a [u8],
    /// The worker's return area.
    pub area: &'a crate::shm::segment::Segment,
    /// Where the values begin in it: the start of their part.
    pub at: usize,
    /// The bytes of that part: the values never pass its end.
    pub room: usize,
}

/// The scheduler's view of a job, without its result type.
pub(crate) trait Sink: Send + Sync {
    /// Decodes the outcomes of `count` items, the first of which has index
    /// `first` in the job.
    /// The first `plain` are bare values; the rest are tagged outcomes.
    fn deliver(&self, first: usize, count: usize, plain: usize, bytes: &[u8], busy: Duration);
    /// As [`deliver`](Self::deliver), the bare values being in a worker's
    /// return area rather than in the reply. Only
    /// plain-data jobs take them; for any other, a worker that says so
    /// broke the protocol, and the items fail.
    fn deliver_returned(&self, returned: Returned<'_>, busy: Duration) {
        let _ = busy;
        for i in 0..returned.count {
            self.fail(
                returned.first + i,
                TaskError::Protocol("values in a return area for a serde task".into()),
            );
        }
    }
    /// Item `index` failed.
    fn fail(&self, index: usize, error: TaskError);
    /// Nobody wants the rest: queued chunks are dropped.
    fn abandoned(&self) -> bool;
    /// The job was cancelled: a running item's worker is killed.
    fn cancelled(&self) -> bool;
    /// How long one of its chunks typically runs, once a few have.
    fn typical_chunk(&self) -> Option<Duration>;
}

/// Something told when any of several jobs completes (`as_completed`).
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    pub done: Mutex<VecDeque<usize>>,
    pub cv: Condvar,
}

fn notify(n: &Notifier, key: usize) {
    n.done
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back(key);
    n.cv.notify_all();
}

/// Outcomes of consecutive items of an ordered job, as they arrived.
enum Segment<R> {
    /// A chunk whose items all succeeded: their values.
    Values(Vec<R>),
    /// One item's outcome.
    One(Result<R, TaskError>),
}

impl<R> Segment<R> {
    fn len(&self) -> usize {
        match self {
            Segment::Values(v) => v.len(),
            Segment::One(_) => 1,
        }
    }
}

struct State<R> {
    /// Ordered jobs: outcomes not taken yet, by the index of their first
    /// item. Whole chunks are kept as they came, not item by item.
    segments: BTreeMap<usize, Segment<R>>,
    /// Items before this one have been taken.
    base: usize,
    /// Unordered jobs: outcomes in the order they came.
    arrived: VecDeque<Result<R, TaskError>>,
    submitted: usize,
    finished: usize,
    sealed: bool,
    first_error: Option<TaskError>,
    waker: Option<Waker>,
    /// Told once when the job settles (see [`Job::listen`]).
    listeners: Vec<(Arc<Notifier>, usize)>,
    measured: (usize, Duration),
    chunks: u32,
    /// Threads waiting for the next outcome (rather than for all of them).
    next_waiters: usize,
}

/// A job's results.
pub(crate) struct Job<R> {
    ordered: bool,
    fail_fast: bool,
    state: Mutex<State<R>>,
    cv: Condvar,
    abandoned: AtomicBool,
    cancelled: AtomicBool,
    progress: Option<Arc<dyn Progress>>,
    /// The length told to `progress` (see [`Job::add_items`]).
    total: std::sync::atomic::AtomicU64,
    /// The bar was finished (see [`Job::finish_progress`]).
    progress_done: AtomicBool,
}

impl<R> Job<R> {
    pub(crate) fn new(
        ordered: bool,
        fail_fast: bool,
        progress: Option<Arc<dyn Progress>>,
        total: Option<u64>,
    ) -> Self {
        if let (Some(p), Some(total)) = (&progress, total) {
            p.set_total(total);
        }
        Job {
            ordered,
            fail_fast,
            state: Mutex::new(State {
                segments: BTreeMap::new(),
                base: 0,
                arrived: VecDeque::new(),
                submitted: 0,
                finished: 0,
                sealed: false,
                first_error: None,
                waker: None,
                listeners: Vec::new(),
                measured: (0, Duration::ZERO),
                chunks: 0,
                next_waiters: 0,
            }),
            cv: Condvar::new(),
            abandoned: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            progress,
            total: std::sync::atomic::AtomicU64::new(total.unwrap_or(0)),
            progress_done: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `n` more items as submitted.
    pub(crate) fn add_items(&self, n: usize) {
        let mut st = self.lock();
        st.submitted += n;
        // The bar's length is the input's when it was known at the start
        // (see `TaskOptions::feeder`); it grows only past that.
        if let Some(p) = &self.progress
            && self.total.load(Ordering::Relaxed) < st.submitted as u64
        {
            self.total.store(st.submitted as u64, Ordering::Relaxed);
            p.set_total(st.submitted as u64);
        }
    }

    /// Items submitted whose outcome has not been taken yet.
    pub(crate) fn untaken(&self) -> usize {
        let st = self.lock();
        st.submitted - st.base
    }

    /// Items measured so far and the time they took to run.
    pub(crate) fn measured(&self) -> (usize, Duration) {
        self.lock().measured
    }

    /// Finishes the progress, once: the job is complete, or has failed
    /// and its caller stops there (the terminal bar then ends its line).
    /// Called before the job's waiters are woken, so that what they print
    /// comes after.
    pub(crate) fn finish_progress(&self) {
        if let Some(p) = &self.progress
            && !self.progress_done.swap(true, Ordering::AcqRel)
        {
            p.finish();
        }
    }

    /// No more items will be submitted.
    pub(crate) fn seal(&self) {
        let mut st = self.lock();
        st.sealed = true;
        // The input's true length, if it said another.
        if let Some(p) = &self.progress
            && self.total.swap(st.submitted as u64, Ordering::Relaxed) != st.submitted as u64
        {
            p.set_total(st.submitted as u64);
        }
        self.wake(&mut st);
    }

    /// Stops the rest: queued items are dropped, running ones finish.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    /// Cancels: queued items are dropped, a running one's worker killed.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.abandon();
    }

    /// Whether the job has settled: complete, or (fail-fast) failed.
    fn settled(&self, st: &State<R>) -> bool {
        (st.sealed && st.finished == st.submitted) || (self.fail_fast && st.first_error.is_some())
    }

    /// Pushes `key` to `notifier` once the job has settled (at once if it
    /// has): what `wait_done` waits for. A job has any number of listeners
    /// (`as_completed`, the pool's callback thread).
    pub(crate) fn listen(&self, notifier: Arc<Notifier>, key: usize) {
        let mut st = self.lock();
        if self.settled(&st) {
            drop(st);
            notify(&notifier, key);
        } else {
            st.listeners.push((notifier, key));
        }
    }

    pub(crate) fn set_waker(&self, waker: &Waker) {
        let mut st = self.lock();
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            st.waker = Some(waker.clone());
        }
    }

    fn wake(&self, st: &mut State<R>) {
        // A thread waiting for the whole job sleeps through the chunks
        // before the last: one wake-up per job, not one per chunk.
        let done = st.sealed && st.finished == st.submitted;
        if done {
            self.finish_progress();
        }
        if st.next_waiters > 0 || done || st.first_error.is_some() {
            self.cv.notify_all();
        }
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        if self.settled(st) {
            for (n, key) in st.listeners.drain(..) {
                notify(&n, key);
            }
        }
    }

    fn store(&self, st: &mut State<R>, index: usize, outcome: Result<R, TaskError>) {
        st.finished += 1;
        if let Err(e) = &outcome
            && st.first_error.is_none()
        {
            st.first_error = Some(e.clone());
            if self.fail_fast {
                self.abandon();
            }
        }
        if self.ordered {
            if index >= st.base {
                st.segments.insert(index, Segment::One(outcome));
            }
        } else {
            st.arrived.push_back(outcome);
        }
    }

    /// Whether every submitted item has an outcome and no more will come.
    pub(crate) fn is_complete(&self) -> bool {
        let st = self.lock();
        st.sealed && st.finished == st.submitted
    }

    /// Whether it failed, once (fail-fast jobs stop at the first failure).
    pub(crate) fn first_error(&self) -> Option<TaskError> {
        self.lock().first_error.clone()
    }

    /// Waits until the job is complete (or, if fail-fast, has failed), or
    /// `deadline` passes. Returns whether it is done.
    pub(crate) fn wait_done(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.lock();
        loop {
            if (st.sealed && st.finished == st.submitted)
                || (self.fail_fast && st.first_error.is_some())
            {
                return true;
            }
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
    }

    /// Takes every outcome, in order (ordered jobs); an item with none
    /// (its job was abandoned) is `Cancelled`.
    pub(crate) fn take_all(&self) -> Vec<Result<R, TaskError>> {
        let mut st = self.lock();
        let segments = std::mem::take(&mut st.segments);
        let mut out = Vec::with_capacity(st.submitted - st.base);
        for (first, segment) in segments {
            while st.base + out.len() < first {
                out.push(Err(TaskError::Cancelled));
            }
            match segment {
                Segment::Values(v) => out.extend(v.into_iter().map(Ok)),
                Segment::One(o) => out.push(o),
            }
        }
        while st.base + out.len() < st.submitted {
            out.push(Err(TaskError::Cancelled));
        }
        st.base = st.submitted;
        out
    }

    /// Takes every value, in order, or the first error (ordered jobs).
    pub(crate) fn take_values(&self) -> Result<Vec<R>, TaskError> {
        let mut st = self.lock();
        if let Some(e) = st.first_error.clone() {
            return Err(e);
        }
        let segments = std::mem::take(&mut st.segments);
        let mut out: Vec<R> = Vec::new();
        for (first, segment) in segments {
            if st.base + out.len() != first {
                return Err(TaskError::Cancelled);
            }
            match segment {
                // The first chunk's vector becomes the result's.
                Segment::Values(v) if out.is_empty() => {
                    out = v;
                    out.reserve(st.submitted - st.base - out.len());
                }
                Segment::Values(v) => out.extend(v),
                Segment::One(Ok(v)) => out.push(v),
                Segment::One(Err(e)) => return Err(e),
            }
        }
        if st.base + out.len() != st.submitted {
            return Err(TaskError::Cancelled);
        }
        st.base = st.submitted;
        Ok(out)
    }

    /// Moves every outcome that is ready, in order (ordered) or of arrival
    /// (unordered), to `out`. `Ok(false)` when the job is complete and
    /// drained, `Err(())` when nothing was ready.
    pub(crate) fn take_ready(&self, out: &mut VecDeque<Result<R, TaskError>>) -> Result<bool, ()> {
        let mut st = self.lock();
        let before = out.len();
        if self.ordered {
            while st
                .segments
                .first_key_value()
                .is_some_and(|(k, _)| *k == st.base)
            {
                let (_, segment) = st.segments.pop_first().expect("checked");
                st.base += segment.len();
                match segment {
                    Segment::Values(v) => out.extend(v.into_iter().map(Ok)),
                    Segment::One(o) => out.push_back(o),
                }
            }
        } else {
            let n = st.arrived.len();
            st.base += n;
            out.extend(st.arrived.drain(..));
        }
        if out.len() > before {
            Ok(true)
        } else if st.sealed && st.base == st.submitted {
            Ok(false)
        } else {
            Err(())
        }
    }

    /// Waits until [`take_ready`](Self::take_ready) could take something,
    /// or `deadline` passes. Returns whether it could.
    pub(crate) fn wait_next(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.lock();
        loop {
            let ready = if self.ordered {
                st.segments
                    .first_key_value()
                    .is_some_and(|(k, _)| *k == st.base)
            } else {
                !st.arrived.is_empty()
            };
            let drained = st.sealed && st.base == st.submitted;
            if ready || drained {
                return true;
            }
            st.next_waiters += 1;
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        st.next_waiters -= 1;
                        return false;
                    }
                    self.cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            st.next_waiters -= 1;
        }
    }
}

fn decode_bare<R: DeserializeOwned>(dec: &mut codec::Decoder<'_>) -> Result<R, TaskError> {
    dec.next::<R>().map_err(TaskError::ResultDecode)
}

fn decode_one<R: DeserializeOwned>(dec: &mut codec::Decoder<'_>) -> Result<R, TaskError> {
    match dec.next::<Outcome<R>>() {
        Ok(Outcome::Ok(v)) => Ok(v),
        Ok(Outcome::Panicked(p)) => Err(TaskError::Panicked(p)),
        Ok(Outcome::ResultEncode(m)) => Err(TaskError::ResultEncode(m)),
        Ok(Outcome::ArgumentDecode(m)) => Err(TaskError::ArgumentDecode(m)),
        Err(e) => Err(TaskError::ResultDecode(DecodeError {
            type_name: std::any::type_name::<R>(),
            message: e.message,
        })),
    }
}

impl<R: DeserializeOwned + Send> Sink for Job<R> {
    fn deliver(&self, first: usize, count: usize, plain: usize, bytes: &[u8], busy: Duration) {
        let mut dec = codec::Decoder::new(bytes);
        // Decoded before taking the lock, so a reader is not held up.
        let mut values: Vec<R> = Vec::with_capacity(plain.min(count));
        let mut rest: Vec<Result<R, TaskError>> = Vec::new();
        // `R`'s `Deserialize` is the user's code, run on bytes a worker
        // sent, in the scheduler thread: a panic there must fail the item,
        // not kill the thread that serves every job of the pool.
        let mut broken: Option<TaskError> = None;
        for i in 0..count {
            if let Some(e) = &broken {
                rest.push(Err(e.clone()));
                continue;
            }
            let bare = i < plain && rest.is_empty();
            let decoded = crate::process::child::catch(|| {
                if bare {
                    Ok(decode_bare::<R>(&mut dec))
                } else {
                    Err(decode_one::<R>(&mut dec))
                }
            });
            match decoded {
                Ok(Ok(Ok(v))) => values.push(v),
                Ok(Ok(Err(e))) => rest.push(Err(e)),
                Ok(Err(outcome)) => rest.push(outcome),
                Err(report) => {
                    // The decoder's place in the bytes is lost: the rest of
                    // the chunk fails the same way.
                    let e = TaskError::ResultDecode(DecodeError {
                        type_name: std::any::type_name::<R>(),
                        message: format!("its Deserialize panicked: {}", report.message),
                    });
                    rest.push(Err(e.clone()));
                    broken = Some(e);
                }
            }
        }
        let mut st = self.lock();
        st.measured.0 = st.measured.0.saturating_add(count);
        // `busy` is what the worker reported: saturating, never a panic.
        st.measured.1 = st.measured.1.saturating_add(busy);
        st.chunks = st.chunks.saturating_add(1);
        let done = values.len();
        if done > 0 {
            st.finished += done;
            if self.ordered {
                if first >= st.base {
                    st.segments.insert(first, Segment::Values(values));
                }
            } else {
                st.arrived.extend(values.into_iter().map(Ok));
            }
        }
        for (i, outcome) in rest.into_iter().enumerate() {
            self.store(&mut st, first + done + i, outcome);
        }
        if let Some(p) = &self.progress {
            p.advance(count as u64);
        }
        self.wake(&mut st);
    }

    fn fail(&self, index: usize, error: TaskError) {
        let mut st = self.lock();
        self.store(&mut st, index, Err(error));
        if let Some(p) = &self.progress {
            p.advance(1);
        }
        self.wake(&mut st);
    }

    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn typical_chunk(&self) -> Option<Duration> {
        let st = self.lock();
        (st.chunks >= 2).then(|| st.measured.1 / st.chunks)
    }
}
