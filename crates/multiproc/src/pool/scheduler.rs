//! The pool's scheduler: which worker holds which chunk, what happens when
//! a result arrives, when a worker dies, overruns its timeout or retires.
//!
//! Callers dispatch chunks to idle workers themselves (a write on the
//! worker's link). One scheduler thread per pool waits on every worker's
//! link and pidfd, reads results, dispatches the queue, kills overrunning
//! workers and replaces dead ones. All of it happens under one lock.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::error::{PoolError, TaskError};
use super::job::Sink;
use super::link::{self, LinkReader};
use super::worker::{
    self, FLAG_CONTEXT, FLAG_QUICK, FLAG_TIMED, REPLY_HEADER, RETIRE_NONE, SLOT_ITEM, SLOT_START,
    SLOT_TASK, SLOT_WORDS, TASK_HEADER,
};
use crate::connection::Waitable;
use crate::process::{ExitStatus, Process, StartMethod};
use crate::shm::segment::Segment;
use crate::wire::frame;
use crate::wire::handles::TrackedFd;
use crate::{SharedMemory, sys};

/// Starts worker `index` with its own slot block: its process and the
/// parent's end of its link.
pub(crate) type Spawner = Box<
    dyn Fn(
            usize,
            &SharedMemory,
            Option<&Arc<Segment>>,
        ) -> Result<(Process<()>, TrackedFd), PoolError>
        + Send
        + Sync,
>;

/// Most unanswered task bytes a busy worker may hold: well under a Unix
/// socket's buffer, so a write to it never blocks.
const BUSY_BYTES: usize = 64 << 10;

/// A fresh chunk id (never 0, which means "no task" in a worker's slot).
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A run of items of one job, sent to one worker as one task.
pub(crate) struct Chunk {
    pub id: u64,
    pub sink: Arc<dyn Sink>,
    pub preamble: [u8; sys::code::PREAMBLE],
    /// What a task registry finds the task by when it does not know the
    /// preamble (see [`TaskKey`](super::registry::TaskKey)): set for a
    /// serde task only.
    pub key: Option<super::registry::TaskKey>,
    /// Job index of the first item.
    pub first: usize,
    /// The items' encodings, back to back.
    pub items: Vec<u8>,
    /// Where each item's encoding ends in `items`.
    pub ends: Ends,
    pub timeout: Option<Duration>,
    /// Bytes the task can read while it runs (see `FLAG_CONTEXT`).
    pub context: Option<Arc<[u8]>>,
    /// For a plain-data chunk whose arguments are in the pool's arena:
    /// where (then `items` is that span's [`ArenaSpan::bytes`]).
    pub arena: Option<ArenaSpan>,
}

/// Where a plain-data chunk's arguments are in the pool's arena (see
/// `FLAG_ARENA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArenaSpan {
    /// Offset of the first argument.
    pub args: u64,
    /// Bytes of an argument.
    pub arg_size: u64,
}

impl ArenaSpan {
    /// The span of the items from the `k`-th on.
    fn skip(self, k: usize) -> ArenaSpan {
        ArenaSpan {
            args: self.args + k as u64 * self.arg_size,
            ..self
        }
    }

    /// The task's items: the offset.
    pub(crate) fn bytes(self) -> Vec<u8> {
        let bytes: [u8; worker::ARENA_SPAN] = self.args.to_le_bytes();
        bytes.to_vec()
    }
}

/// Where the items of a chunk end in its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ends {
    /// Each item's own end (encodings of any length, back to back).
    Each(Vec<usize>),
    /// `count` items of `size` bytes each (plain data, `map_pod`): no
    /// per-item table for chunks of many thousand items.
    Fixed {
        /// Bytes per item.
        size: usize,
        /// Items.
        count: usize,
    },
}

impl Ends {
    /// The number of items.
    pub(crate) fn len(&self) -> usize {
        match self {
            Ends::Each(e) => e.len(),
            Ends::Fixed { count, .. } => *count,
        }
    }

    /// Where item `k` starts (`k` at most [`len`](Self::len)).
    pub(crate) fn start(&self, k: usize) -> usize {
        match self {
            Ends::Each(e) => {
                if k == 0 {
                    0
                } else {
                    e[k - 1]
                }
            }
            Ends::Fixed { size, .. } => k * size,
        }
    }

    /// Every item's end, in order.
    pub(crate) fn offsets(&self) -> Vec<usize> {
        match self {
            Ends::Each(e) => e.clone(),
            Ends::Fixed { size, count } => (1..=*count).map(|k| k * size).collect(),
        }
    }

    /// The ends of the items from `k` on, counted from item `k`'s start.
    fn from(&self, k: usize) -> Ends {
        match self {
            Ends::Each(e) => {
                let start = self.start(k);
                Ends::Each(e[k..].iter().map(|e| e - start).collect())
            }
            Ends::Fixed { size, count } => Ends::Fixed {
                size: *size,
                count: count - k,
            },
        }
    }

    /// Keeps the first `k` items.
    fn truncate(&mut self, k: usize) {
        match self {
            Ends::Each(e) => e.truncate(k),
            Ends::Fixed { count, .. } => *count = (*count).min(k),
        }
    }
}

impl Chunk {
    fn count(&self) -> usize {
        self.ends.len()
    }

    /// The items from `k` on, as a chunk of their own.
    fn rest(&self, k: usize, id: u64) -> Chunk {
        let arena = self.arena.map(|span| span.skip(k));
        let items = match arena {
            Some(span) => span.bytes(),
            None => self.items[self.ends.start(k)..].to_vec(),
        };
        Chunk {
            id,
            sink: Arc::clone(&self.sink),
            preamble: self.preamble,
            key: self.key,
            first: self.first + k,
            items,
            ends: self.ends.from(k),
            timeout: self.timeout,
            context: self.context.clone(),
            arena,
        }
    }

    /// The first `k` items, as a chunk of their own.
    fn first_items(&self, k: usize) -> Chunk {
        let mut head = self.rest(0, 0);
        head.ends.truncate(k);
        if head.arena.is_none() {
            head.items.truncate(self.ends.start(k));
        }
        head
    }

    /// Bytes of its task frame.
    fn wire_len(&self) -> usize {
        frame::HEADER + sys::code::PREAMBLE + TASK_HEADER + self.context_len() + self.items.len()
    }

    fn context_len(&self) -> usize {
        self.context.as_ref().map_or(0, |c| 12 + c.len())
    }

    /// The context's frame (see `FLAG_CONTEXT`): empty without one.
    fn context_frame(&self) -> Vec<u8> {
        let Some(c) = &self.context else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(12 + c.len());
        out.extend_from_slice(&(self.first as u64).to_le_bytes());
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(c);
        out
    }

    /// Everything of its task frame but the items.
    fn head(&self, quick: bool) -> [u8; HEAD] {
        let mut head = [0u8; HEAD];
        let (frame_head, rest) = head.split_at_mut(frame::HEADER);
        frame_head.copy_from_slice(&frame::header(link::TASK, self.wire_len() - frame::HEADER));
        let (preamble, task) = rest.split_at_mut(sys::code::PREAMBLE);
        preamble.copy_from_slice(&self.preamble);
        task[..8].copy_from_slice(&self.id.to_le_bytes());
        task[8..12].copy_from_slice(&(self.count() as u32).to_le_bytes());
        if self.timeout.is_some() {
            task[12] |= FLAG_TIMED;
        }
        if quick {
            task[12] |= FLAG_QUICK;
        }
        if self.context.is_some() {
            task[12] |= FLAG_CONTEXT;
        }
        if self.arena.is_some() {
            task[12] |= worker::FLAG_ARENA;
        }
        head
    }
}

/// Length of a task frame without its items.
const HEAD: usize = frame::HEADER + sys::code::PREAMBLE + TASK_HEADER;

/// What the pool knows of one worker's activity, over all the processes
/// that have held its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// The worker's index in the pool.
    pub index: usize,
    /// The current process id (0 while it is being replaced).
    pub pid: i32,
    /// Items it finished (successfully or not).
    pub tasks_done: u64,
    /// Time spent running tasks.
    pub busy: Duration,
    /// Time alive and not running tasks.
    pub idle: Duration,
    /// Processes that have replaced a dead, timed-out or retired one.
    pub restarts: u64,
    /// Whether the current process has run its initializer and takes
    /// tasks (false while it starts or is being replaced).
    pub ready: bool,
}

struct Worker {
    process: Option<Process<()>>,
    /// Where the current process publishes what it runs: a block of its
    /// own, made fresh for each process, so that a worker (which runs user
    /// code and may write anything there) can mislead the scheduler only
    /// about itself, never about another worker.
    slot: Option<SharedMemory>,
    /// Its return area (see `worker::SLOT_RETURNS`), if the pool gives one.
    returns: Option<Arc<Segment>>,
    pidfd: Option<Arc<TrackedFd>>,
    link: Option<Arc<TrackedFd>>,
    reader: LinkReader,
    inflight: VecDeque<Chunk>,
    ready: bool,
    retiring: bool,
    /// Why the scheduler killed it: the chunk, the item and the error.
    killed: Option<(u64, usize, TaskError)>,
    /// The panic it reported as it aborted (`panic = "abort"` builds).
    last_words: Option<crate::process::PanicReport>,
    tasks_done: u64,
    busy: Duration,
    alive_before: Duration,
    born: Instant,
    restarts: u64,
    /// Processes in this place that died before they were ready, since
    /// one last was (see [`State::max_failed_starts`]).
    failed_starts: u32,
    /// When the first of those died.
    failing_since: Option<Instant>,
}

impl Worker {
    fn empty() -> Worker {
        Worker {
            process: None,
            slot: None,
            returns: None,
            pidfd: None,
            link: None,
            reader: LinkReader::default(),
            inflight: VecDeque::new(),
            ready: false,
            retiring: false,
            killed: None,
            last_words: None,
            tasks_done: 0,
            busy: Duration::ZERO,
            alive_before: Duration::ZERO,
            born: Instant::now(),
            restarts: 0,
            failed_starts: 0,
            failing_since: None,
        }
    }

    fn kill(&mut self, chunk: u64, item: usize, error: TaskError) {
        if self.killed.is_none() {
            self.killed = Some((chunk, item, error));
        }
        if let Some(p) = &self.process {
            let _ = p.kill();
        }
    }
}

/// The pool's state, shared by its handle, its result handles and the
/// scheduler thread.
pub(crate) struct State {
    queue: VecDeque<Chunk>,
    workers: Vec<Worker>,
    /// Chunks a worker may hold at once (one running, the rest waiting
    /// in its socket).
    depth: usize,
    /// No new tasks (close or terminate).
    closed: bool,
    /// Stop now: terminate.
    terminating: bool,
    /// Why no worker can be started any more.
    broken: Option<String>,
    /// Why the pool failed to start (first worker failure).
    start_error: Option<PoolError>,
    /// How many processes in a row may die before they are ready in one
    /// worker's place (killed while starting, or crashed in the
    /// initializer) and still be replaced; one more breaks the pool.
    max_failed_starts: u32,
    spawner: Spawner,
    /// Bytes of each worker's return area (`worker::SLOT_RETURNS`), 0 for
    /// none.
    return_bytes: usize,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    wake_tx: TrackedFd,
    wake_rx: TrackedFd,
    method: StartMethod,
}

impl Shared {
    pub(crate) fn new(
        workers: usize,
        depth: usize,
        max_failed_starts: u32,
        method: StartMethod,
        spawner: Spawner,
        return_bytes: usize,
    ) -> Result<Arc<Shared>, PoolError> {
        let (wake_tx, wake_rx) = sys::socket::stream_pair()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                workers: (0..workers).map(|_| Worker::empty()).collect(),
                depth,
                closed: false,
                terminating: false,
                broken: None,
                start_error: None,
                max_failed_starts,
                spawner,
                return_bytes,
            }),
            changed: Condvar::new(),
            wake_tx: TrackedFd::new(wake_tx),
            wake_rx: TrackedFd::new(wake_rx),
            method,
        });
        {
            let mut st = shared.lock();
            for i in 0..workers {
                if let Err(e) = start_worker(&mut st, i) {
                    drop(st);
                    shared.terminate();
                    return Err(e);
                }
            }
        }
        Ok(shared)
    }

    pub(crate) fn method(&self) -> StartMethod {
        self.method
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the scheduler thread so it re-reads the state.
    pub(crate) fn wake(&self) {
        let _ = sys::socket::send_plain(self.wake_tx.as_fd(), &[1], true);
    }

    /// Waits until every worker is ready, or one failed to start.
    pub(crate) fn wait_started(&self) -> Result<(), PoolError> {
        let mut st = self.lock();
        loop {
            if let Some(e) = st.start_error.take() {
                return Err(e);
            }
            if st.workers.iter().all(|w| w.ready) {
                return Ok(());
            }
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Queues chunks and hands what it can to idle workers at once.
    pub(crate) fn submit(&self, chunks: Vec<Chunk>) -> Result<(), TaskError> {
        let mut st = self.lock();
        if let Some(b) = &st.broken {
            return Err(TaskError::Broken(b.clone()));
        }
        if st.closed {
            return Err(if st.terminating {
                TaskError::Terminated
            } else {
                TaskError::Closed
            });
        }
        let timed = chunks.iter().any(|c| c.timeout.is_some());
        st.queue.extend(chunks);
        dispatch(&mut st);
        drop(st);
        if timed {
            // The scheduler must watch the clock for this chunk.
            self.wake();
        }
        Ok(())
    }

    /// Fails the queued chunks of cancelled jobs.
    pub(crate) fn drop_cancelled(&self) {
        let mut st = self.lock();
        let (cancelled, kept): (VecDeque<Chunk>, VecDeque<Chunk>) = std::mem::take(&mut st.queue)
            .into_iter()
            .partition(|c| c.sink.cancelled());
        st.queue = kept;
        drop(st);
        for chunk in cancelled {
            fail_chunk(&chunk, 0, &TaskError::Cancelled);
        }
    }

    /// Stops taking tasks; the queue still drains.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake();
    }

    /// Stops everything now: queued and running tasks fail with
    /// [`TaskError::Terminated`], workers are killed.
    pub(crate) fn terminate(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.terminating = true;
        for chunk in std::mem::take(&mut st.queue) {
            fail_chunk(&chunk, 0, &TaskError::Terminated);
        }
        for w in &mut st.workers {
            if let Some(p) = &w.process {
                let _ = p.kill();
            }
        }
        drop(st);
        self.wake();
    }

    /// Per-worker statistics.
    pub(crate) fn stats(&self) -> Vec<WorkerStats> {
        let st = self.lock();
        st.workers
            .iter()
            .enumerate()
            .map(|(index, w)| {
                let alive = w.alive_before
                    + if w.process.is_some() {
                        w.born.elapsed()
                    } else {
                        Duration::ZERO
                    };
                WorkerStats {
                    index,
                    pid: w.process.as_ref().map_or(0, Process::pid),
                    tasks_done: w.tasks_done,
                    busy: w.busy,
                    idle: alive.saturating_sub(w.busy),
                    restarts: w.restarts,
                    ready: w.ready,
                }
            })
            .collect()
    }

    /// The scheduler thread's loop; returns once every worker is gone
    /// after a close (queue drained) or a terminate.
    pub(crate) fn run(&self) {
        loop {
            let (watch, deadline) = {
                let mut st = self.lock();
                dispatch(&mut st);
                let deadline = check_running(&mut st);
                if st.closed && st.queue.is_empty() {
                    // Nothing more will be sent: closing the links lets
                    // idle workers exit.
                    for w in &mut st.workers {
                        if w.inflight.is_empty() {
                            w.link = None;
                        }
                    }
                }
                if st.workers.iter().all(|w| w.process.is_none()) && st.closed {
                    return;
                }
                let mut watch: Vec<(usize, bool, Arc<TrackedFd>)> = Vec::new();
                for (i, w) in st.workers.iter().enumerate() {
                    if let Some(l) = &w.link {
                        watch.push((i, true, Arc::clone(l)));
                    }
                    if let Some(p) = &w.pidfd {
                        watch.push((i, false, Arc::clone(p)));
                    }
                }
                (watch, deadline)
            };
            let mut fds: Vec<BorrowedFd<'_>> = vec![self.wake_rx.as_fd()];
            fds.extend(watch.iter().map(|(_, _, fd)| fd.as_fd()));
            let Ok(ready) = sys::socket::wait_readable(&fds, deadline) else {
                continue;
            };
            if ready[0] {
                let mut sink = [0u8; 64];
                let _ = sys::socket::recv(self.wake_rx.as_fd(), &mut sink, &mut Vec::new(), true);
            }
            let mut st = self.lock();
            for ((index, is_link, _), _) in watch.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
                if *is_link {
                    read_link(&mut st, *index, &self.changed);
                } else {
                    worker_exited(&mut st, *index, &self.changed);
                }
            }
            self.changed.notify_all();
        }
    }
}

/// Sends queued chunks to workers with room, least loaded first.
fn dispatch(st: &mut State) {
    loop {
        // Drop what nobody wants any more.
        while let Some(chunk) = st.queue.pop_front() {
            if !chunk.sink.abandoned() {
                st.queue.push_front(chunk);
                break;
            }
            if chunk.sink.cancelled() {
                fail_chunk(&chunk, 0, &TaskError::Cancelled);
            }
        }
        let Some(front) = st.queue.front() else {
            return;
        };
        // A busy worker gets more only of chunks known to be quick, about
        // a millisecond's worth, so that little waits behind a running
        // chunk while another worker is idle; and only while what it has
        // not answered fits in its socket's buffer, so that a write never
        // blocks (the worker may itself be blocked writing its results).
        let depth = match front.sink.typical_chunk() {
            Some(t) if front.wire_len() <= BUSY_BYTES => {
                let per_ms = Duration::from_millis(1).as_nanos() / t.as_nanos().max(1);
                (per_ms as usize).clamp(1, st.depth)
            }
            _ => 1,
        };
        // Answers to quick chunks may wait for the next ones to share a
        // write; any other is sent before the worker starts its next chunk.
        let quick = front
            .sink
            .typical_chunk()
            .is_some_and(|t| t < Duration::from_micros(200));
        let next_len = front.wire_len();
        let eligible = |w: &Worker| {
            w.ready
                && !w.retiring
                && w.killed.is_none()
                && w.link.is_some()
                && (w.inflight.is_empty()
                    || (w.inflight.len() < depth
                        && w.inflight.iter().map(Chunk::wire_len).sum::<usize>() + next_len
                            <= BUSY_BYTES))
        };
        let count = st.workers.iter().filter(|w| eligible(w)).count();
        if count == 0 {
            return;
        }
        let share = st.queue.len().div_ceil(count);
        let w = st
            .workers
            .iter_mut()
            .filter(|w| eligible(w))
            .min_by_key(|w| w.inflight.len())
            .expect("counted");
        let before = w.inflight.len();
        let mut sent = 0;
        let mut held: usize = w.inflight.iter().map(Chunk::wire_len).sum();
        while sent < share && w.inflight.len() < depth {
            let Some(chunk) = st.queue.pop_front() else {
                break;
            };
            let idle = w.inflight.is_empty();
            if chunk.sink.abandoned() || (!idle && held + chunk.wire_len() > BUSY_BYTES) {
                st.queue.push_front(chunk);
                break;
            }
            held += chunk.wire_len();
            w.inflight.push_back(chunk);
            sent += 1;
        }
        if sent == 0 {
            return;
        }
        // The items go straight from each chunk to the socket, uncopied.
        let heads: Vec<([u8; HEAD], Vec<u8>)> = w
            .inflight
            .range(before..)
            .map(|c| (c.head(quick), c.context_frame()))
            .collect();
        let slices: Vec<&[u8]> = heads
            .iter()
            .zip(w.inflight.range(before..))
            .flat_map(|((h, ctx), c)| [&h[..], &ctx[..], &c.items[..]])
            .filter(|s| !s.is_empty())
            .collect();
        let link = w.link.as_ref().expect("eligible");
        if sys::socket::send_all(link.as_fd(), &slices, &[]).is_err() {
            // The worker is dying (or already dead, not yet reaped): it gets
            // nothing more, and its exit handler blames the item its slot
            // names and requeues the rest of what it held.
            w.retiring = true;
        }
    }
}

/// Kills workers whose running item overran its timeout or was
/// cancelled; returns when to look again.
fn check_running(st: &mut State) -> Option<Instant> {
    let now_ns = sys::process::monotonic_ns();
    let mut next: Option<Instant> = None;
    for w in &mut st.workers {
        // Every word read here is the worker's to write: the task is only
        // compared with our own ids, the item is checked against the
        // chunk's count where it is used (`worker_exited`), and the start
        // time only shortens or lengthens this worker's own timeout.
        let Some(block) = w.slot.clone() else {
            continue;
        };
        let Some(slot) = slot_words(&block) else {
            continue;
        };
        let task = slot[SLOT_TASK].load(Ordering::Acquire);
        // The running chunk: the worker may still hold answers to earlier
        // ones that it has not sent yet.
        let Some(running) = w.inflight.iter().find(|c| c.id == task) else {
            if w.inflight
                .iter()
                .any(|c| c.timeout.is_some() || c.sink.cancelled())
            {
                // Not started yet: look again soon.
                let soon = Instant::now() + Duration::from_millis(20);
                next = Some(next.map_or(soon, |n| n.min(soon)));
            }
            continue;
        };
        let start = slot[SLOT_START].load(Ordering::Acquire);
        let item = usize::try_from(slot[SLOT_ITEM].load(Ordering::Acquire)).unwrap_or(usize::MAX);
        let again = slot[SLOT_START].load(Ordering::Acquire);
        let still = slot[SLOT_TASK].load(Ordering::Acquire) == task;
        if running.sink.cancelled() {
            let id = running.id;
            w.kill(id, item, TaskError::Cancelled);
            continue;
        }
        let Some(timeout) = running.timeout else {
            continue;
        };
        if start != again || start == 0 || !still {
            let soon = Instant::now() + Duration::from_millis(5);
            next = Some(next.map_or(soon, |n| n.min(soon)));
            continue;
        }
        let ran = Duration::from_nanos(now_ns.saturating_sub(start));
        if ran >= timeout {
            let id = running.id;
            w.kill(id, item, TaskError::TimedOut(timeout));
        } else if let Some(at) = Instant::now().checked_add(timeout - ran) {
            // (A timeout too long to express as an instant never fires.)
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    next
}

/// A worker's slot words; `None` if its block is too short (it never is:
/// the parent makes every block, and its size is sealed).
fn slot_words(block: &SharedMemory) -> Option<&[AtomicU64]> {
    block.as_atomic_u64().get(..SLOT_WORDS)
}

fn start_worker(st: &mut State, index: usize) -> Result<(), PoolError> {
    // A fresh block for each process: whatever a dead predecessor (or a
    // process it passed the block to) writes into its old one, nobody
    // reads it any more.
    let slot = SharedMemory::create_unnamed(SLOT_WORDS * 8)?;
    // Its return area, kept out of processes forked from this one (a
    // worker started by fork must not be able to write another's).
    let returns = match st.return_bytes {
        0 => None,
        n => Some(Arc::new(Segment::create_kept_from_forks(n)?)),
    };
    let (process, link) = (st.spawner)(index, &slot, returns.as_ref())?;
    let pidfd = sys::socket::dup(process.wait_fd())?;
    let w = &mut st.workers[index];
    w.slot = Some(slot);
    w.returns = returns;
    w.pidfd = Some(Arc::new(TrackedFd::new(pidfd)));
    w.link = Some(Arc::new(link));
    w.process = Some(process);
    w.reader = LinkReader::default();
    w.ready = false;
    w.retiring = false;
    w.killed = None;
    w.born = Instant::now();
    Ok(())
}

/// Reads and handles what worker `index` sent.
fn read_link(st: &mut State, index: usize, changed: &Condvar) {
    let w = &mut st.workers[index];
    let Some(link) = w.link.clone() else { return };
    match w.reader.fill(link.as_fd()) {
        Ok(true) => {}
        // The worker closed its end: its exit handler takes over.
        Ok(false) | Err(_) => return,
    }
    handle_frames(st, index, changed);
}

fn handle_frames(st: &mut State, index: usize, changed: &Condvar) {
    let mut requeue = Vec::new();
    loop {
        let w = &mut st.workers[index];
        let (kind, range) = match w.reader.next() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => {
                // Garbage from a worker: it cannot be trusted further.
                let id = w.inflight.front().map_or(0, |c| c.id);
                w.kill(
                    id,
                    0,
                    TaskError::Protocol("garbage on the task link".into()),
                );
                break;
            }
        };
        match kind {
            link::READY => {
                w.ready = true;
                w.failed_starts = 0;
                w.failing_since = None;
                changed.notify_all();
            }
            link::LAST_WORDS => {
                // The worker's word, about itself only: it fails the item
                // it was running as a panic rather than a death.
                if let Ok(report) = crate::wire::codec::decode::<crate::process::PanicReport>(
                    &w.reader.buffer()[range],
                ) {
                    w.last_words = Some(report);
                }
            }
            link::INIT_FAILED => {
                let message = String::from_utf8_lossy(&w.reader.buffer()[range]).into_owned();
                if st.start_error.is_none() {
                    st.start_error = Some(PoolError::Initializer {
                        worker: index,
                        message: message.clone(),
                    });
                }
                st.broken = Some(format!(
                    "the initializer failed in worker {index}: {message}"
                ));
                changed.notify_all();
            }
            link::RESULT => {
                let Some(chunk) = w.inflight.pop_front() else {
                    w.kill(0, 0, TaskError::Protocol("a result for no task".into()));
                    break;
                };
                let payload = &w.reader.buffer()[range];
                if payload.len() < REPLY_HEADER || payload[..8] != chunk.id.to_le_bytes() {
                    let id = chunk.id;
                    w.inflight.push_front(chunk);
                    w.kill(
                        id,
                        0,
                        TaskError::Protocol("a result for another task".into()),
                    );
                    break;
                }
                let done =
                    u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]) as usize;
                let mut busy = [0u8; 8];
                busy.copy_from_slice(&payload[12..20]);
                // Which part of the return area holds the values, if any
                // (one flag at most).
                let flags = payload[worker::REPLY_RETIRING] & worker::RETURNED_ANY;
                let returned = (flags != 0).then(|| {
                    worker::RETURNED
                        .iter()
                        .position(|&flag| flag == flags)
                        .ok_or(())
                });
                let retire = payload[worker::REPLY_RETIRING] & !worker::RETURNED_ANY;
                let plain = u32::from_le_bytes([payload[21], payload[22], payload[23], payload[24]])
                    as usize;
                let done = done.min(chunk.count());
                let busy = Duration::from_nanos(u64::from_le_bytes(busy));
                let tagged = &payload[REPLY_HEADER..];
                let words = w.slot.as_ref().and_then(slot_words);
                if !chunk.sink.abandoned() {
                    match (returned, words, &w.returns) {
                        (None, ..) => chunk.sink.deliver(chunk.first, done, plain, tagged, busy),
                        // The part holds this chunk's values (the worker
                        // says so in its slot word as well as its reply).
                        (Some(Ok(part)), Some(words), Some(area))
                            if words[worker::SLOT_RETURNS[part]].load(Ordering::Acquire)
                                == chunk.id =>
                        {
                            let room = area.len() / worker::SLOT_RETURNS.len();
                            let r = super::job::Returned {
                                first: chunk.first,
                                count: done,
                                plain,
                                tagged,
                                area,
                                at: part * room,
                                room,
                            };
                            chunk.sink.deliver_returned(r, busy);
                        }
                        (Some(_), ..) => {
                            let e = TaskError::Protocol("values returned for another task".into());
                            for i in 0..done {
                                chunk.sink.fail(chunk.first + i, e.clone());
                            }
                        }
                    }
                }
                if let (Some(Ok(part)), Some(words)) = (returned, words) {
                    // Copied out: the worker may use that part again.
                    words[worker::SLOT_RETURNS[part]].store(0, Ordering::Release);
                }
                w.tasks_done += done as u64;
                // Both are the worker's words: saturating, never a panic.
                w.busy = w.busy.saturating_add(busy);
                if done < chunk.count() {
                    requeue.push((chunk, done));
                }
                if retire != RETIRE_NONE {
                    w.retiring = true;
                }
            }
            _ => {
                let id = w.inflight.front().map_or(0, |c| c.id);
                w.kill(
                    id,
                    0,
                    TaskError::Protocol(format!("unknown frame kind {kind}")),
                );
                break;
            }
        }
    }
    for (chunk, done) in requeue.into_iter().rev() {
        let rest = chunk.rest(done, next_id());
        st.queue.push_front(rest);
    }
}

fn fail_chunk(chunk: &Chunk, from: usize, error: &TaskError) {
    for i in from..chunk.count() {
        chunk.sink.fail(chunk.first + i, error.clone());
    }
}

/// Worker `index`'s process has exited: blame the item it was running,
/// requeue the rest of what it held, and replace it.
fn worker_exited(st: &mut State, index: usize, changed: &Condvar) {
    // Results it sent before dying still count.
    loop {
        let w = &mut st.workers[index];
        let Some(link) = w.link.clone() else { break };
        if !sys::socket::is_readable(link.as_fd()).unwrap_or(false) {
            break;
        }
        match w.reader.fill(link.as_fd()) {
            Ok(true) => handle_frames(st, index, changed),
            _ => break,
        }
    }
    // What the dead process last published: untrusted words (see
    // `check_running`); an item out of range is dealt with below.
    let (running, item) =
        st.workers[index]
            .slot
            .as_ref()
            .and_then(slot_words)
            .map_or((0, usize::MAX), |slot| {
                (
                    slot[SLOT_TASK].load(Ordering::Acquire),
                    usize::try_from(slot[SLOT_ITEM].load(Ordering::Acquire)).unwrap_or(usize::MAX),
                )
            });
    let w = &mut st.workers[index];
    let Some(process) = w.process.take() else {
        return;
    };
    w.slot = None;
    let pid = process.pid();
    let status = process.exit_status();
    drop(process);
    w.pidfd = None;
    w.link = None;
    w.alive_before += w.born.elapsed();
    let was_ready = w.ready;
    w.ready = false;
    let killed = w.killed.take();
    let last_words = w.last_words.take();
    w.retiring = false;
    let held: Vec<Chunk> = w.inflight.drain(..).collect();
    let status = status.unwrap_or(ExitStatus::Signaled {
        signal: crate::Signal::KILL,
        core_dumped: false,
    });
    let mut requeue = Vec::new();
    for chunk in held {
        if st.terminating {
            fail_chunk(&chunk, 0, &TaskError::Terminated);
            continue;
        }
        let blamed = match &killed {
            Some((id, it, error)) if *id == chunk.id => Some((*it, error.clone())),
            // The chunk its slot names was running, whether or not it was
            // retiring: a worker that retires clears the word before it
            // says so, and a worker we could no longer write to (marked
            // retiring by `dispatch`) may have died of this very item.
            _ if chunk.id == running => Some((
                item,
                match &last_words {
                    Some(report) => TaskError::Panicked(report.clone()),
                    None => TaskError::WorkerDied {
                        worker: index,
                        pid,
                        status,
                    },
                },
            )),
            _ => None,
        };
        match blamed {
            Some((it, error)) if chunk.count() > 0 => {
                // The item index is the worker's word. Out of range, it is
                // garbage (a worker that wrote into its slot): the chunk
                // was running, so its first item takes the blame and the
                // rest run again. Requeuing the whole chunk instead would
                // let such a worker have it run, and die, forever.
                let it = if it < chunk.count() { it } else { 0 };
                chunk.sink.fail(chunk.first + it, error);
                // The items before it finished, but their results died
                // with the worker: they run again, as do those after it.
                let before = chunk.first_items(it);
                if it > 0 {
                    requeue.push(before);
                }
                if it + 1 < chunk.count() {
                    requeue.push(chunk.rest(it + 1, 0));
                }
            }
            _ => requeue.push(chunk),
        }
    }
    if st.terminating {
        for chunk in &requeue {
            fail_chunk(chunk, 0, &TaskError::Terminated);
        }
    } else {
        for mut chunk in requeue.into_iter().rev() {
            chunk.id = next_id();
            st.queue.push_front(chunk);
        }
    }
    if !was_ready && st.broken.is_none() && !st.terminating {
        // It died before it was ready without saying its initializer
        // failed: killed from outside while starting (a user, the OOM
        // killer), or crashed (abort, segfault, exit) in the initializer.
        // It is started again, unless its place keeps failing so: a
        // restart storm is an error, not a loop.
        let w = &mut st.workers[index];
        w.failed_starts = w.failed_starts.saturating_add(1);
        let since = *w.failing_since.get_or_insert_with(Instant::now);
        let attempts = w.failed_starts;
        if attempts > st.max_failed_starts {
            if st.start_error.is_none() {
                st.start_error = Some(PoolError::WorkerLost {
                    worker: index,
                    attempts,
                    status,
                });
            }
            st.broken = Some(format!(
                "worker {index} died {attempts} times in a row before it was ready, \
                 in {:.3} s (the last time: {status}); see PoolBuilder::max_failed_starts",
                since.elapsed().as_secs_f64()
            ));
        }
    }
    let replace = !st.terminating && st.broken.is_none() && !(st.closed && st.queue.is_empty());
    if replace {
        st.workers[index].restarts += 1;
        if let Err(e) = start_worker(st, index) {
            st.broken = Some(format!("could not replace worker {index}: {e}"));
        }
    }
    if let Some(reason) = st.broken.clone() {
        // No worker will run what is queued.
        if st.workers.iter().all(|w| w.process.is_none() || !w.ready) {
            for chunk in std::mem::take(&mut st.queue) {
                fail_chunk(&chunk, 0, &TaskError::Broken(reason.clone()));
            }
        }
    }
    changed.notify_all();
}
