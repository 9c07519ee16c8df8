//! Plain-data maps ([`Pool::map_pod`]): arguments and results that are
//! [`bytemuck::Pod`] go to and from the workers as their bytes, a whole
//! chunk at a time, with no per-item encoding.
//!
//! The chunks are the scheduler's ordinary ones (see `scheduler::Ends`),
//! so a worker that dies, panics or overruns its timeout fails exactly the
//! items it would fail in a serde map. What differs is at both ends:
//!
//! * the caller copies each chunk's arguments out of the slice it was
//!   given (`bytemuck::cast_slice`), and the worker reads each one with
//!   `pod_read_unaligned` (`worker::pod_chunk_body`);
//! * the worker answers with the results' bytes back to back, and
//!   [`PodJob`] copies them into the output vector, in place, once it has
//!   checked their length. Every byte a worker sends is untrusted: a short
//!   or misshapen answer fails that chunk's items with
//!   [`TaskError::ResultDecode`], never a read past the end.
//!
//! A local pool without a memory limit moves the bytes through shared
//! memory instead of the link, in both directions, so that no worker can
//! write where another's data is:
//!
//! * arguments: a [`PodArena`], one block that the parent alone writes and
//!   every worker maps read-only when it starts (sealed with
//!   `F_SEAL_FUTURE_WRITE`: a worker's stray write faults in that worker).
//!   A map whose arguments fit, while no other map holds the arena, copies
//!   each chunk's arguments there; the task names only where they start,
//!   and the worker copies them out. The arena is the map's until its job
//!   is dropped, after the last of its chunks has left the scheduler, so a
//!   map never overwrites arguments a worker of another map has yet to
//!   read;
//! * results: each worker has a return area of its own, in four parts
//!   (`worker::SLOT_RETURNS`). A worker that finds a part free when a
//!   chunk ends copies the chunk's bare values there and says which in its
//!   reply; the parent copies them into place, then frees the part. So a
//!   worker may end chunks while the parent still copies the ones before.
//!   A worker that finds every part full answers through the link.
//!
//! Each byte so crosses once each way, with no system call per byte; and
//! what a worker writes, stray or forged, reaches only its own results,
//! as through the link. The parent's mappings of these blocks are kept out
//! of forked children, so that holds for workers started by fork too.

use super::progress::Progress;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytemuck::Pod;

use super::chunking;
use super::job::Sink;
use super::scheduler::{self, ArenaSpan, Chunk, Ends};
use super::worker::{self, Outcome};
use super::{TaskError, TaskOptions};
use crate::shm::segment::Segment;
use crate::sys::code::EntryId;
use crate::sys::shm::ReadMapping;
use crate::wire::handles::{self, FdRef};
use crate::wire::{DecodeError, codec};
use serde::{Deserialize, Serialize};

/// Bytes of a pool's [`PodArena`]: the arguments of a map of up to 4 Mi
/// items of 8 bytes fit. Memory is taken as the maps touch it, and kept
/// until the pool is dropped.
pub(crate) const ARENA_BYTES: usize = 32 << 20;

/// A local pool's block of shared memory for the arguments of plain-data
/// maps: written by the parent only, mapped read-only by every worker at
/// its start (see the module's documentation); one map uses it at a time.
#[derive(Debug)]
pub(crate) struct PodArena {
    block: Arc<Segment>,
    busy: AtomicBool,
}

impl PodArena {
    /// A new arena of [`ARENA_BYTES`].
    pub(crate) fn new() -> io::Result<PodArena> {
        Ok(PodArena {
            block: Arc::new(Segment::create_sole_writer(ARENA_BYTES)?),
            busy: AtomicBool::new(false),
        })
    }

    /// The block, to send to a worker.
    pub(crate) fn to_worker(&self) -> Block<ReadMapping> {
        Block::Sent(Arc::clone(&self.block))
    }

    /// The arena for a map of `args` bytes of arguments, if they fit and
    /// no other map holds it.
    fn lease(self: &Arc<Self>, args: usize) -> Option<Lease> {
        if args > self.block.len() || self.busy.swap(true, Ordering::Acquire) {
            return None;
        }
        Some(Lease {
            arena: Arc::clone(self),
        })
    }
}

/// A shared block as it goes to a worker in its setup: the parent's, sent
/// as its memfd; the worker's, mapped as `T` (read-only for the arena,
/// read-write for the worker's return area).
#[derive(Debug)]
pub(crate) enum Block<T> {
    /// The parent's, to send.
    Sent(Arc<Segment>),
    /// The worker's mapping of it.
    Got(T),
}

impl<T> Block<T> {
    /// The worker's mapping.
    pub(crate) fn into_mapped(self) -> Option<T> {
        match self {
            Block::Sent(_) => None,
            Block::Got(mapped) => Some(mapped),
        }
    }
}

impl<T> Serialize for Block<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Block::Sent(block) => FdRef(block.fd()).serialize(s),
            Block::Got(_) => Err(serde::ser::Error::custom(
                "a worker's mapping of a block is not sent on",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Block<ReadMapping> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fd = handles::deserialize_fd(d)?;
        ReadMapping::attach(fd)
            .map(Block::Got)
            .map_err(codec::custom)
    }
}

impl<'de> Deserialize<'de> for Block<Segment> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fd = handles::deserialize_fd(d)?;
        Segment::attach(fd).map(Block::Got).map_err(codec::custom)
    }
}

/// A map's hold on the arena (its arguments from offset 0). Dropped with
/// the map's job.
#[derive(Debug)]
struct Lease {
    arena: Arc<PodArena>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.arena.busy.store(false, Ordering::Release);
    }
}

impl<A, R> TaskOptions<'_, A, R>
where
    A: Pod,
    R: Pod + Send,
{
    /// See [`Pool::map_pod`](super::Pool::map_pod).
    pub fn map_pod(self, items: &[A]) -> Result<Vec<R>, TaskError> {
        let job = self.start_pod(true, items)?;
        let mut st = job.wait();
        if let Some(e) = st.first_error.clone() {
            return Err(e);
        }
        let out = std::mem::take(job.output(&mut st));
        drop(st);
        job.finish_progress();
        Ok(out)
    }

    /// See [`Pool::map_pod_results`](super::Pool::map_pod_results).
    pub fn map_pod_results(self, items: &[A]) -> Vec<Result<R, TaskError>> {
        let job = match self.start_pod(false, items) {
            Ok(job) => job,
            Err(e) => return vec![Err(e); items.len()],
        };
        let mut st = job.wait();
        let values = std::mem::take(job.output(&mut st));
        let errors = std::mem::take(&mut st.errors);
        drop(st);
        job.finish_progress();
        let mut out: Vec<Result<R, TaskError>> = values.into_iter().map(Ok).collect();
        for (index, e) in errors {
            if let Some(slot) = out.get_mut(index) {
                *slot = Err(e);
            }
        }
        out
    }

    /// Copies `items` into chunks and submits them one by one, so that
    /// the workers start while the rest is copied. Refuses (whatever the
    /// input, even empty) on a pool whose backend cannot run it.
    fn start_pod(self, fail_fast: bool, items: &[A]) -> Result<Arc<PodJob<R>>, TaskError> {
        let backend = &self.pool.backend;
        if !backend.runs_pod() {
            return Err(TaskError::Unsupported(
                "map_pod runs on local pools only: cluster agents and a manager's pool run \
                 registered serde tasks (use map)"
                    .into(),
            ));
        }
        let len = items.len();
        if let Some(p) = &self.progress {
            p.set_total(len as u64);
        }
        let size_a = std::mem::size_of::<A>();
        let size_r = std::mem::size_of::<R>();
        let lease = backend
            .pod_arena()
            .filter(|_| size_a > 0 && size_r > 0)
            .and_then(|arena| arena.lease(len.checked_mul(size_a)?));
        let job = Arc::new(PodJob::new(len, fail_fast, self.progress, lease));
        let item_bytes = size_a.max(size_r);
        let size = chunking::pod_size(self.chunksize, len, backend.workers(), item_bytes);
        let preamble = EntryId::new(self.f, worker::pod_chunk_body::<A, R>).preamble();
        let sink = Arc::clone(&job) as Arc<dyn Sink>;
        let bytes: &[u8] = bytemuck::cast_slice(items);
        let mut first = 0;
        let mut submitted = 0;
        while first < len {
            if job.abandoned() {
                // Fail-fast and failed already (the job has settled): the
                // rest is not sent.
                break;
            }
            if submitted == backend.workers() {
                // Every worker has a chunk: the output is made while they
                // run them, rather than before they start.
                job.make_output();
            }
            let count = size.min(len - first);
            let args = &bytes[first * size_a..(first + count) * size_a];
            let (items, arena) = match &job.arena {
                Some(lease) => {
                    let span = ArenaSpan {
                        args: (first * size_a) as u64,
                        arg_size: size_a as u64,
                    };
                    // In bounds: the lease was sized for every item.
                    let _ = lease.arena.block.write(first * size_a, args);
                    (span.bytes(), Some(span))
                }
                None => (args.to_vec(), None),
            };
            let chunk = Chunk {
                id: scheduler::next_id(),
                sink: Arc::clone(&sink),
                preamble,
                // Not a serde task: no registry runs it.
                key: None,
                first,
                items,
                ends: Ends::Fixed {
                    size: size_a,
                    count,
                },
                timeout: self.timeout,
                context: None,
                arena,
            };
            if let Err(e) = backend.submit(vec![chunk]) {
                for i in first..len {
                    job.fail(i, e.clone());
                }
                break;
            }
            first += count;
            submitted += 1;
        }
        Ok(job)
    }
}

/// Where a plain-data map's results go: one output vector, written in
/// place as chunks come, and the failed items aside.
pub(crate) struct PodJob<R> {
    len: usize,
    fail_fast: bool,
    state: Mutex<PodState<R>>,
    cv: Condvar,
    abandoned: AtomicBool,
    progress: Option<Arc<dyn Progress>>,
    /// The arena, if the map's arguments go through it: held until the
    /// job is dropped.
    arena: Option<Lease>,
}

struct PodState<R> {
    /// Every item's value (zero until it arrives), once `made`.
    out: Vec<R>,
    /// Whether `out` was made (see [`PodJob::make_output`]); it stays
    /// true once the values are taken, so that a late answer finds no
    /// room.
    made: bool,
    /// Failed items, in the order they failed.
    errors: Vec<(usize, TaskError)>,
    /// Items with an outcome.
    finished: usize,
    first_error: Option<TaskError>,
    measured: (usize, Duration),
    chunks: u32,
}

impl<R: Pod> PodJob<R> {
    fn new(
        len: usize,
        fail_fast: bool,
        progress: Option<Arc<dyn Progress>>,
        arena: Option<Lease>,
    ) -> Self {
        PodJob {
            len,
            fail_fast,
            state: Mutex::new(PodState {
                out: Vec::new(),
                made: false,
                errors: Vec::new(),
                finished: 0,
                first_error: None,
                measured: (0, Duration::ZERO),
                chunks: 0,
            }),
            cv: Condvar::new(),
            abandoned: AtomicBool::new(false),
            progress,
            arena,
        }
    }

    /// Makes the output (zeroing 8 bytes a value costs about as much as
    /// copying them in), outside the lock, unless it is made already.
    /// Whoever needs it first makes it: the caller once every worker has
    /// a chunk, or the first outcome to come.
    fn make_output(&self) {
        if self.lock().made {
            return;
        }
        let fresh = bytemuck::zeroed_vec(self.len);
        let mut st = self.lock();
        if !st.made {
            st.out = fresh;
            st.made = true;
        }
    }

    /// The output, made if it is not yet (under the lock: only when an
    /// outcome comes before the caller made it).
    fn output<'a>(&self, st: &'a mut PodState<R>) -> &'a mut Vec<R> {
        if !st.made {
            st.out = bytemuck::zeroed_vec(self.len);
            st.made = true;
        }
        &mut st.out
    }

    fn lock(&self) -> MutexGuard<'_, PodState<R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settled(&self, st: &PodState<R>) -> bool {
        st.finished >= self.len || (self.fail_fast && st.first_error.is_some())
    }

    /// Waits until every item has an outcome, or (fail-fast) one failed.
    fn wait(&self) -> MutexGuard<'_, PodState<R>> {
        let mut st = self.lock();
        while !self.settled(&st) {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st
    }

    fn store(&self, st: &mut PodState<R>, index: usize, outcome: Result<R, TaskError>) {
        st.finished += 1;
        match outcome {
            Ok(v) => {
                if let Some(slot) = self.output(st).get_mut(index) {
                    *slot = v;
                }
            }
            Err(e) => {
                if st.first_error.is_none() {
                    st.first_error = Some(e.clone());
                    if self.fail_fast {
                        self.abandoned.store(true, Ordering::Release);
                    }
                }
                st.errors.push((index, e));
            }
        }
    }

    fn woken(&self, st: &PodState<R>) {
        if self.settled(st) {
            self.cv.notify_all();
        }
    }

    fn finish_progress(&self) {
        if let Some(p) = &self.progress {
            p.finish();
        }
    }
}

fn decode_error<R>(message: String) -> TaskError {
    TaskError::ResultDecode(DecodeError {
        type_name: std::any::type_name::<R>(),
        message,
    })
}

/// Outcomes of single items, by job index.
type Tagged<R> = Vec<(usize, Result<R, TaskError>)>;

/// The outcomes a worker sent for `count` items: the first `plain` are `R`'s
/// bytes back to back (returned as a byte slice, checked for length; empty
/// when they are in a return area, `inline` false), the rest tagged
/// outcomes. Every length is the worker's word: checked.
fn split_reply<R: Pod>(
    first: usize,
    count: usize,
    plain: usize,
    bytes: &[u8],
    inline: bool,
) -> Result<(&[u8], Tagged<R>), TaskError> {
    let size = std::mem::size_of::<R>();
    let bare = (plain <= count)
        .then(|| plain.checked_mul(size))
        .flatten()
        .map(|n| if inline { n } else { 0 })
        .filter(|&n| n <= bytes.len())
        .ok_or_else(|| {
            decode_error::<R>(format!(
                "a worker answered {count} items with {plain} values of {size} bytes in {} bytes",
                bytes.len()
            ))
        })?;
    let (values, tagged) = bytes.split_at(bare);
    let mut dec = codec::Decoder::new(tagged);
    let mut rest = Vec::new();
    let mut broken: Option<TaskError> = None;
    for i in plain..count {
        let outcome = match &broken {
            Some(e) => Err(e.clone()),
            None => match dec.next::<Outcome<Vec<u8>>>() {
                Ok(Outcome::Ok(v)) => bytemuck::try_pod_read_unaligned::<R>(&v).map_err(|_| {
                    decode_error::<R>(format!("a value of {} bytes, not {size}", v.len()))
                }),
                Ok(Outcome::Panicked(p)) => Err(TaskError::Panicked(p)),
                Ok(Outcome::ResultEncode(m)) => Err(TaskError::ResultEncode(m)),
                Ok(Outcome::ArgumentDecode(m)) => Err(TaskError::ArgumentDecode(m)),
                Err(e) => {
                    // The decoder's place is lost: the rest fail alike.
                    let e = decode_error::<R>(e.message);
                    broken = Some(e.clone());
                    Err(e)
                }
            },
        };
        rest.push((first + i, outcome));
    }
    Ok((values, rest))
}

impl<R: Pod + Send> Sink for PodJob<R> {
    fn deliver(&self, first: usize, count: usize, plain: usize, bytes: &[u8], busy: Duration) {
        // Checked and decoded before the lock: only the copy is under it.
        self.take(first, count, plain, bytes, None, busy);
    }

    fn deliver_returned(&self, r: super::job::Returned<'_>, busy: Duration) {
        self.take(
            r.first,
            r.count,
            r.plain,
            r.tagged,
            Some((r.area, r.at, r.room)),
            busy,
        );
    }

    fn fail(&self, index: usize, error: TaskError) {
        let mut st = self.lock();
        self.store(&mut st, index, Err(error));
        if let Some(p) = &self.progress {
            p.advance(1);
        }
        self.woken(&st);
    }

    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    fn cancelled(&self) -> bool {
        false
    }

    fn typical_chunk(&self) -> Option<Duration> {
        let st = self.lock();
        (st.chunks >= 2).then(|| st.measured.1 / st.chunks)
    }
}

impl<R: Pod + Send> PodJob<R> {
    /// A chunk's outcomes: its bare values from `bytes`, or from a
    /// worker's return area (`returned`), then the tagged ones from
    /// `bytes`.
    fn take(
        &self,
        first: usize,
        count: usize,
        plain: usize,
        bytes: &[u8],
        returned: Option<(&Segment, usize, usize)>,
        busy: Duration,
    ) {
        // Checked and decoded before the lock: only the copy is under it.
        let split = split_reply::<R>(first, count, plain, bytes, returned.is_none());
        let mut st = self.lock();
        st.measured.0 = st.measured.0.saturating_add(count);
        st.measured.1 = st.measured.1.saturating_add(busy);
        st.chunks = st.chunks.saturating_add(1);
        match split {
            Ok((values, rest)) => {
                let size = std::mem::size_of::<R>();
                // Zero-sized results: `plain` of them, all alike (never
                // in a return area).
                let n = match returned {
                    Some(_) => plain,
                    None => values.len().checked_div(size).unwrap_or(plain),
                };
                let mut short = false;
                if let Some(out) = first
                    .checked_add(n)
                    .and_then(|end| self.output(&mut st).get_mut(first..end))
                {
                    // An aligned, correctly sized destination, viewed as
                    // bytes: the values are copied, never reinterpreted
                    // where they lie.
                    let out = bytemuck::cast_slice_mut::<R, u8>(out);
                    match returned {
                        // A worker that says it returned more than its
                        // part holds fails them.
                        Some((area, at, room)) => {
                            short = out.len() > room || !area.read(at, out);
                        }
                        None => out.copy_from_slice(values),
                    }
                }
                if short {
                    let e = decode_error::<R>(format!(
                        "a worker returned {n} values of {size} bytes, more than a part of its area holds"
                    ));
                    for i in 0..n {
                        self.store(&mut st, first + i, Err(e.clone()));
                    }
                } else {
                    st.finished += n;
                }
                for (index, outcome) in rest {
                    self.store(&mut st, index, outcome);
                }
            }
            Err(e) => {
                for i in 0..count {
                    self.store(&mut st, first + i, Err(e.clone()));
                }
            }
        }
        if let Some(p) = &self.progress {
            p.advance(count as u64);
        }
        self.woken(&st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(values: &[u64]) -> Vec<u8> {
        bytemuck::cast_slice(values).to_vec()
    }

    #[test]
    fn values_are_copied_into_place() {
        let job = PodJob::<u64>::new(6, false, None, None);
        job.deliver(2, 3, 3, &reply(&[7, 8, 9]), Duration::ZERO);
        job.deliver(0, 2, 2, &reply(&[5, 6]), Duration::ZERO);
        job.deliver(5, 1, 1, &reply(&[10]), Duration::ZERO);
        let st = job.wait();
        assert_eq!(st.out, [5, 6, 7, 8, 9, 10]);
        assert!(st.errors.is_empty());
    }

    #[test]
    fn a_short_or_lying_answer_fails_its_items_only() {
        let job = PodJob::<u64>::new(8, false, None, None);
        // Three values announced, two sent (and an odd byte).
        let mut short = reply(&[1, 2]);
        short.push(0);
        job.deliver(0, 3, 3, &short, Duration::ZERO);
        // More plain values than items.
        job.deliver(3, 2, 5, &reply(&[1, 2, 3, 4, 5]), Duration::ZERO);
        // A length that overflows.
        job.deliver(5, 1, usize::MAX, &reply(&[1]), Duration::ZERO);
        // Tagged outcomes that are not outcomes.
        job.deliver(6, 2, 0, &[0xff; 5], Duration::ZERO);
        let st = job.wait();
        assert_eq!(st.finished, 8);
        let mut failed: Vec<usize> = st.errors.iter().map(|(i, _)| *i).collect();
        failed.sort_unstable();
        assert_eq!(failed, [0, 1, 2, 3, 4, 5, 6, 7]);
        for (i, e) in &st.errors {
            assert!(
                matches!(e, TaskError::ResultDecode(d) if d.type_name == "u64"),
                "item {i}: {e:?}"
            );
        }
    }

    #[test]
    fn a_tagged_value_of_the_wrong_length_is_an_error() {
        let job = PodJob::<u64>::new(3, false, None, None);
        let mut bytes = reply(&[1]);
        let mut enc_out = Vec::new();
        let mut enc = codec::Encoder::new(&mut enc_out);
        enc.push(&Outcome::<Vec<u8>>::Ok(vec![1, 2, 3])).unwrap();
        enc.push(&Outcome::<Vec<u8>>::Ok(42u64.to_le_bytes().to_vec()))
            .unwrap();
        bytes.extend_from_slice(&enc_out);
        job.deliver(0, 3, 1, &bytes, Duration::ZERO);
        let st = job.wait();
        assert_eq!(st.out[0], 1);
        assert_eq!(st.out[2], 42);
        assert_eq!(st.errors.len(), 1);
        assert_eq!(st.errors[0].0, 1);
        assert!(matches!(&st.errors[0].1, TaskError::ResultDecode(_)));
    }

    #[test]
    fn a_late_answer_after_the_values_were_taken_is_ignored() {
        let job = PodJob::<u32>::new(2, true, None, None);
        job.deliver(0, 1, 1, &7u32.to_le_bytes(), Duration::ZERO);
        job.fail(1, TaskError::Cancelled);
        let mut st = job.wait();
        assert_eq!(st.first_error, Some(TaskError::Cancelled));
        st.out = Vec::new();
        drop(st);
        job.deliver(1, 1, 1, &8u32.to_le_bytes(), Duration::ZERO);
    }

    #[test]
    fn returned_values_are_read_from_their_part_and_never_past_it() {
        let area = Segment::create(64).unwrap();
        // The second part (bytes 32..64) holds two values.
        assert!(area.write(32, &reply(&[41, 42])));
        let job = PodJob::<u64>::new(7, false, None, None);
        let returned = |first, count, plain| super::super::job::Returned {
            first,
            count,
            plain,
            tagged: &[],
            area: &area,
            at: 32,
            room: 32,
        };
        job.deliver_returned(returned(0, 2, 2), Duration::ZERO);
        // Five values of 8 bytes do not fit the part's 32 bytes, though
        // the block would hold them past its end: they fail.
        let mut lying = returned(2, 5, 5);
        lying.at = 0;
        job.deliver_returned(lying, Duration::ZERO);
        let st = job.wait();
        assert_eq!(st.out[..2], [41, 42]);
        let mut failed: Vec<usize> = st.errors.iter().map(|(i, _)| *i).collect();
        failed.sort_unstable();
        assert_eq!(failed, [2, 3, 4, 5, 6]);
        assert!(
            st.errors
                .iter()
                .all(|(_, e)| matches!(e, TaskError::ResultDecode(_)))
        );
    }

    #[test]
    fn zero_sized_results_count() {
        let job = PodJob::<()>::new(4, false, None, None);
        job.deliver(0, 4, 4, &[], Duration::ZERO);
        let st = job.wait();
        assert_eq!(st.finished, 4);
        assert_eq!(st.out.len(), 4);
    }
}
