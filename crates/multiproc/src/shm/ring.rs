//! A multi-producer, multi-consumer ring of variable-size records in one
//! shared-memory mapping. Layout and protocol: `docs/shm-ring.md`.
//!
//! Implementation description:
//! * Producers serialise on the producer lock, consumers on the consumer
//!   lock; a producer and a consumer never wait for each other except when
//!   the ring is full or empty.
//! * `tail` (bytes ever written) advances only after a record is copied in
//!   whole; `head` (bytes ever read) only after a record is read out whole.
//!   So a producer killed mid-copy leaves nothing visible (its record is
//!   lost), and a consumer killed mid-read leaves the record in place for
//!   the next consumer (nothing lost, nothing delivered twice).
//! * A record is an 8-byte header (`kind << 32 | len`) and its payload,
//!   padded to 8 bytes. A record never wraps: a `PAD` record fills the end
//!   of the ring instead.
//! * Every value read from the mapping is untrusted (any process holding
//!   the ring can write anything): positions are validated once per
//!   operation, record headers before their payloads, arithmetic on them
//!   is checked, and every access stays inside the mapping. Inconsistent
//!   state is a `Corrupted` error, after which the side that found it
//!   resets its own position (what was in flight is lost).
//! * No caller code runs under a side lock except the queue's own
//!   out-of-line send and fetch; a get copies the record out and decodes
//!   after unlocking. Locks are released by a guard, also on unwind, and
//!   calls with a deadline take them with that deadline.
//! * [`Ring::push`] and [`Ring::pop`] try a fast path first: a small
//!   inline record ([`FAST_PAYLOAD`]), the side lock free, room by the
//!   cached position, no padding. It validates what it reads as the
//!   general path does and leaves every other case to it.
//! * Waiting: yield (no spin: see [`YIELDS`]), then sleep on a futex
//!   sequence word; the other side bumps the word and wakes only if a
//!   sleeper count says someone sleeps. The sleeper re-checks through the
//!   other side's lock word ([`RawLock::observe`]), so no wake-up is lost
//!   while the positions are stored with plain `Release`.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::lock::{RawLock, Releases};
use super::wait::{Next, Policy, Slept, Waiter};
use crate::sys::futex;
use crate::sys::liveness::{self, Identity};
use crate::sys::shm::{self, Mapping};

const MAGIC: u64 = u64::from_le_bytes(*b"MPRING04");
/// Bytes before the data area (one page).
const DATA_OFFSET: usize = 4096;
/// Record kinds.
const INLINE: u32 = 1;
const PAD: u32 = 2;
const LARGE: u32 = 3;
/// Processes the attachment table can name (a pid and an identity each):
/// as many as fit in the header's page.
const ATTACH_SLOTS: usize = 288;
/// Yields of the processor, each followed by a check, before a side that
/// finds the ring empty (or full) sleeps: about 350 µs when nothing else
/// wants the processor, for a stream with gaps, and the processor goes at
/// once to whoever wants it (on a busy machine, where each yield may last
/// a time slice, the yields end after 5 ms whatever their count: see
/// `wait::YIELDING_AT_MOST`). There is no spinning with `pause` first: a
/// side that re-checks every few nanoseconds takes the cache lines of
/// `tail` and of the newest record away from the other side after every
/// message, and on this project's 2-core machines it halved throughput
/// (1 producer to 1 consumer: 8 vs 17 M messages/s; 2 to 2: 10 vs 19 M, with
/// the locks spinning less too). A yield is slow enough (about 0.7 µs) that
/// the other side writes (or reads) several records between two checks.
const YIELDS: u32 = 500;
/// How a side waits for a record or for room: see [`YIELDS`].
pub(crate) const WAIT: Policy = Policy::counted_yielding(0, YIELDS);
/// Checks of a side's lock before yielding (see [`RawLock::lock_with`]):
/// the ring's locks are held for tens of nanoseconds, but with more
/// processes than processors the holder is often preempted.
const LOCK_SPINS: u32 = 8;

#[repr(C, align(64))]
struct Meta {
    magic: AtomicU64,
    capacity: AtomicU64,
    max_items: AtomicU64,
}

#[repr(C, align(64))]
struct Side {
    lock: RawLock,
    _pad: u32,
    /// Records ever put (producer side) or got (consumer side). Written
    /// only under the side's lock, so a plain store suffices.
    count: AtomicU64,
    /// The other side's position as last read: a producer re-reads `head`,
    /// a consumer `tail`, only when this copy says full or empty, so the
    /// common case touches no cache line the other side writes. Accessed
    /// under the side's lock.
    peer: AtomicU64,
    /// Producer side: the next large-message id.
    large_seq: AtomicU64,
    /// `tail` on the producer side, `head` on the consumer side. On a cache
    /// line of its own: the other side polls it while it waits, and must
    /// not take the lock's line away from its holder each time it does.
    pos: Line<AtomicU64>,
}

/// A value alone on its cache line.
#[repr(C, align(64))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[repr(C, align(64))]
struct Counts {
    unfinished: AtomicU64,
    /// Non-zero once the queue was shut down ([`Ring::shut_down`]).
    shut: AtomicU64,
}

#[repr(C, align(64))]
struct Waits {
    data_seq: AtomicU32,
    data_sleepers: AtomicU32,
    space_seq: AtomicU32,
    space_sleepers: AtomicU32,
    join_seq: AtomicU32,
    join_sleepers: AtomicU32,
}

#[repr(C, align(64))]
struct Attached {
    pids: [AtomicU32; ATTACH_SLOTS],
    /// Each holder's [`Identity`] beside its pid: a reused pid, or one
    /// from another PID namespace, is not taken for the holder.
    ids: [AtomicU64; ATTACH_SLOTS],
    /// Holders that found no free slot (see [`Registration`]).
    unlisted: AtomicU32,
}

/// Whether each side's process is running, and on which processor (see
/// [`Presence`](super::wait::Presence)); written by a pipe end when it starts waiting, yields or
/// sleeps, never on the fast path. After the attachment table, in bytes
/// that an older build left zero (read as "not running").
#[repr(C, align(64))]
struct Presences {
    producer: AtomicU64,
    consumer: AtomicU64,
}

#[repr(C)]
struct Header {
    meta: Meta,
    producer: Side,
    consumer: Side,
    counts: Counts,
    waits: Waits,
    attached: Attached,
    presence: Presences,
}

const _: () = assert!(std::mem::size_of::<Header>() <= DATA_OFFSET);

/// A record handed to [`Ring::try_pop`]'s reader.
#[derive(Debug)]
pub(crate) enum Record<'a> {
    /// A payload stored in the ring (bounds checked; the bytes are in
    /// shared memory and only worth what the peer wrote).
    Inline(&'a [u8]),
    /// A payload stored out of line (the pipe never writes one).
    Large,
}

/// What [`Ring::pop`] took: an inline payload (now in the caller's
/// [`Copied`]) or what the out-of-line reader returned for a large one.
#[derive(Debug)]
pub(crate) enum Taken<L> {
    /// The payload is in the [`Copied`] buffer.
    Inline,
    /// The out-of-line reader's result.
    Large(L),
}

/// What [`Ring::pop_delivery`] took: the message and its journal
/// position, or why the journal could not record it (the record is gone
/// all the same).
pub(crate) type Journaled<L> = Result<(Taken<L>, u64), PushError>;

/// A message that an acknowledged delivery stores outside the journal.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    /// Its bytes (too many for the journal).
    Bytes(&'a [u8]),
    /// The queue's out-of-line message of this id.
    Large(u64),
}

/// Why a push did not happen.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The ring (or the item bound) is full, or another process held the
    /// producer lock, and the deadline passed.
    Full,
    /// Full, and no other holder of the queue is alive to make room.
    Disconnected,
    /// Sending the out-of-line part failed.
    Io(io::Error),
    /// The ring's shared state is impossible (a process holding it wrote
    /// garbage); the producer's position was reset, dropping what was in
    /// flight.
    Corrupted(String),
}

/// Why a pop did not happen.
#[derive(Debug)]
pub(crate) enum PopError {
    /// Empty (or another process held the consumer lock), and the deadline
    /// passed.
    Empty,
    /// Empty, and no other holder of the queue is alive to fill it.
    Disconnected,
    /// A position or a record's header is impossible; the ring's contents
    /// were dropped.
    Corrupted(String),
}

/// A ring in shared memory.
///
/// Everything read from the mapping is untrusted: another process holding
/// the ring can write any bytes at any time. Positions are validated once
/// per operation ([`Ring::span`]), every record header before its payload
/// is touched, and every access stays inside the mapping whatever the
/// mapping holds; an inconsistency is a `Corrupted` error.
#[derive(Debug)]
pub(crate) struct Ring {
    map: Mapping,
    capacity: u64,
    /// The item bound, read once when created or attached.
    max_items: u64,
}

fn record_size(len: usize) -> u64 {
    8 + (len as u64).div_ceil(8) * 8
}

/// Positions above this are impossible (2^62 bytes are never written) and
/// read as corruption, so that `position + capacity` never overflows.
const POS_MAX: u64 = 1 << 62;

/// Holds a side's lock and releases it when dropped, also on unwind.
struct Held<'a>(&'a RawLock);

impl Drop for Held<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.unlock();
    }
}

/// Takes a side's lock: without a deadline, waiting as long as it takes
/// (but never for a dead holder); with one, until it (not at all once it
/// has passed). `None`: the deadline passed first.
#[inline]
fn hold(lock: &RawLock, deadline: Option<Instant>) -> Option<Held<'_>> {
    match deadline {
        None => {
            let _ = lock.lock_with(LOCK_SPINS);
        }
        Some(d) => {
            if lock.try_lock().is_none() {
                if Instant::now() >= d {
                    return None;
                }
                let _ = lock.lock_until(Some(d), Releases::Fenced)?;
            }
        }
    }
    Some(Held(lock))
}

/// Takes a side's lock if it is free now (or its holder is dead).
#[inline]
fn try_hold(lock: &RawLock) -> Option<Held<'_>> {
    let _ = lock.try_lock()?;
    Some(Held(lock))
}

/// Bumps a sequence word and wakes one of its sleepers (there are some).
#[cold]
fn wake_one(seq: &AtomicU32) {
    seq.fetch_add(1, Ordering::SeqCst);
    futex::wake(seq, 1);
}

/// Payloads up to this many bytes may take the fast paths of
/// [`Ring::push`] and [`Ring::pop`]: a `u64`, a short string or a small
/// struct, whose record is at most four words.
const FAST_PAYLOAD: usize = 24;

/// Where a record goes: at `tail` (validated), after a `PAD` of `to_end`
/// bytes if it does not fit before the end.
struct Place {
    tail: u64,
    to_end: u64,
}

/// A validated record at the consumer's `head`.
struct Slot {
    /// `head` after the padding skipped.
    head: u64,
    off: usize,
    kind: u32,
    len: usize,
    size: u64,
}

/// Payloads up to this many bytes are copied out to the stack.
const SMALL_COPY: usize = 32;
/// Where a large payload starts in the reused buffer: half a page in, so
/// that the decoder's copy of it into a freshly allocated buffer (whose
/// address is usually a few bytes past this one's modulo 4096) does not
/// run into 4K aliasing, which made a 64 KiB copy 5 times slower here.
const BIG_SHIFT: usize = 2048;
/// Largest copy buffer kept between gets.
const KEEP_COPY: usize = 8 << 20;

thread_local! {
    /// A reusable buffer for records larger than [`SMALL_COPY`].
    static BIG: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A record's payload copied out of the ring, so that it is decoded from
/// memory no other process writes and after the consumer lock is released.
/// Small payloads stay on the stack; larger ones use this thread's
/// reusable buffer (given back on drop).
pub(crate) struct Copied {
    small: [u8; SMALL_COPY],
    len: usize,
    big: Option<Vec<u8>>,
}

impl Copied {
    /// An empty buffer (allocates nothing).
    #[inline]
    pub(crate) fn new() -> Copied {
        Copied {
            small: [0; SMALL_COPY],
            len: 0,
            big: None,
        }
    }

    /// The bytes last copied in.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.big {
            Some(v) => &v[BIG_SHIFT.min(v.len())..],
            None => &self.small[..self.len],
        }
    }
}

impl Drop for Copied {
    #[inline]
    fn drop(&mut self) {
        if let Some(v) = self.big.take()
            && v.capacity() <= KEEP_COPY
        {
            BIG.set(v);
        }
    }
}

impl fmt::Debug for Copied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Copied")
            .field("len", &self.bytes().len())
            .finish()
    }
}

impl Ring {
    /// Creates a ring with `capacity` bytes of data (a power of two, at
    /// least 4 KiB) and an optional bound on the number of records.
    pub(crate) fn create(capacity: usize, max_items: u64) -> io::Result<Ring> {
        let capacity = capacity.max(4096).next_power_of_two();
        let map = Mapping::create("multiproc-queue", DATA_OFFSET + capacity)?;
        let ring = Ring {
            map,
            capacity: capacity as u64,
            max_items,
        };
        let h = ring.header();
        h.meta.capacity.store(capacity as u64, Ordering::Relaxed);
        h.meta.max_items.store(max_items, Ordering::Relaxed);
        h.meta.magic.store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Maps a ring created by another process.
    pub(crate) fn attach(fd: OwnedFd) -> io::Result<Ring> {
        let map = Mapping::attach(fd)?;
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a multiproc queue: {what}"),
            )
        };
        if map.len() < DATA_OFFSET + 4096 {
            return Err(bad("too small"));
        }
        let ring = Ring {
            map,
            capacity: 0,
            max_items: 0,
        };
        let h = ring.header();
        if h.meta.magic.load(Ordering::Acquire) != MAGIC {
            return Err(bad("bad magic"));
        }
        // Read once: the values this process works with from now on are
        // its own copies, whatever the mapping says later.
        let capacity = h.meta.capacity.load(Ordering::Relaxed);
        let max_items = h.meta.max_items.load(Ordering::Relaxed);
        if !capacity.is_power_of_two()
            || capacity < 4096
            || (DATA_OFFSET as u64).checked_add(capacity) != Some(ring.map.len() as u64)
        {
            return Err(bad("inconsistent capacity"));
        }
        Ok(Ring {
            capacity,
            max_items,
            ..ring
        })
    }

    #[inline]
    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least DATA_OFFSET bytes (checked at
        // create/attach), page-aligned, and Header (all atomics) fits in
        // DATA_OFFSET; atomics may be shared between processes, and every
        // bit pattern is a valid value of each, whatever a peer writes.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    #[inline]
    fn data(&self) -> *mut u8 {
        // SAFETY: DATA_OFFSET is inside the mapping (see `header`).
        unsafe { self.map.as_ptr().add(DATA_OFFSET) }
    }

    /// The memfd behind the ring, to send to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd()
    }

    /// Bytes of data the ring holds at most.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The largest payload stored inline; larger ones go out of line. A
    /// record of at most half the ring always fits in an empty ring, with
    /// or without the padding that keeps it from wrapping.
    #[inline]
    pub(crate) fn max_inline(&self) -> usize {
        (self.capacity / 2) as usize - 8
    }

    /// Records put and not yet got (approximate while others work, and
    /// only worth what the peers wrote).
    pub(crate) fn len(&self) -> u64 {
        let h = self.header();
        h.producer
            .count
            .load(Ordering::Acquire)
            .saturating_sub(h.consumer.count.load(Ordering::Acquire))
    }

    /// The bound on records, 0 for none.
    pub(crate) fn max_items(&self) -> u64 {
        self.max_items
    }

    #[inline]
    fn is_empty_now(&self) -> bool {
        let h = self.header();
        h.producer.pos.load(Ordering::Acquire) == h.consumer.pos.load(Ordering::Acquire)
    }

    /// Whether the ring is empty, for a consumer about to sleep that has
    /// counted itself in a waiter count (`SeqCst`): either it sees every
    /// record published so far, or the producer publishing one sees it
    /// counted (see [`RawLock::observe`]).
    fn is_empty_settled(&self) -> bool {
        self.header().producer.lock.observe();
        self.is_empty_now()
    }

    /// Bytes between `head` and `tail` if the pair is possible: both
    /// multiples of 8, `head <= tail <= POS_MAX`, at most `capacity` apart.
    #[inline]
    fn span(&self, head: u64, tail: u64) -> Option<u64> {
        if !head.is_multiple_of(8) || !tail.is_multiple_of(8) || tail > POS_MAX {
            return None;
        }
        tail.checked_sub(head).filter(|&used| used <= self.capacity)
    }

    /// Where a record of `size` bytes goes now, `Ok(None)` if it does not
    /// fit, `Err` if the positions are impossible. Under the producer lock,
    /// or (`fresh`) for a producer about to sleep, which then neither uses
    /// nor updates the cached `head`.
    #[inline]
    fn place(&self, size: u64, fresh: bool) -> Result<Option<Place>, String> {
        let h = self.header();
        let tail = h.producer.pos.load(Ordering::Acquire);
        if !tail.is_multiple_of(8) || tail > POS_MAX {
            return Err(format!("tail {tail:#x} is impossible"));
        }
        // `tail` is a multiple of 8, so at least 8 bytes remain to the end.
        let to_end = self.capacity - (tail & (self.capacity - 1));
        // At most `2 * capacity`: no overflow.
        let need = if size > to_end { to_end + size } else { size };
        if fresh {
            // A producer about to sleep, counted as a waiter: see
            // `is_empty_settled`, the other way round. Before both reads
            // that a consumer changes: the item count and `head`.
            h.consumer.lock.observe();
        }
        if self.max_items != 0 {
            let put = h.producer.count.load(Ordering::Relaxed);
            if put.saturating_sub(h.consumer.count.load(Ordering::Acquire)) >= self.max_items {
                // Full by the counts; but an empty ring holds no record,
                // whatever the counts say (a peer's garbage, or a count
                // left behind by a killed process): then they are repaired.
                // `head` first: a consumer stores its count before `head`.
                let head = h.consumer.pos.load(Ordering::Acquire);
                let got = h.consumer.count.load(Ordering::Acquire);
                if head != tail || fresh {
                    return Ok(None);
                }
                h.producer.count.store(got, Ordering::Release);
            }
        }
        let room = |head: u64| {
            self.span(head, tail)
                .map(|used| self.capacity - used >= need)
        };
        // `head` only grows: if the cached copy leaves room, so does the
        // real one (and a garbage copy is just re-read).
        if !fresh && room(h.producer.peer.load(Ordering::Relaxed)) == Some(true) {
            return Ok(Some(Place { tail, to_end }));
        }
        let head = h.consumer.pos.load(Ordering::Acquire);
        let Some(fits) = room(head) else {
            return Err(format!("head {head:#x} and tail {tail:#x} are impossible"));
        };
        if !fresh {
            h.producer.peer.store(head, Ordering::Relaxed);
        }
        Ok(fits.then_some(Place { tail, to_end }))
    }

    /// After `place` found the positions impossible: the producer, which
    /// owns `tail`, puts it where the consumers can agree with it (at
    /// `head`, dropping what was in flight), and makes its count agree.
    fn repair_tail(&self) {
        let h = self.header();
        let head = h.consumer.pos.load(Ordering::Acquire);
        let tail = if head.is_multiple_of(8) && head <= POS_MAX {
            head
        } else {
            let tail = h.producer.pos.load(Ordering::Relaxed) & !7;
            if tail <= POS_MAX { tail } else { 0 }
        };
        h.producer.peer.store(tail, Ordering::Relaxed);
        let got = h.consumer.count.load(Ordering::Acquire);
        h.producer.count.store(got, Ordering::Release);
        h.producer.pos.store(tail, Ordering::Release);
    }

    /// Where a record of `len` bytes (its header included) at ring
    /// position `pos` starts in this process's mapping, if it lies inside
    /// the data area (`pos` 8-aligned, the padded record before the end).
    #[inline(always)]
    fn record_dst(&self, pos: u64, len: usize) -> Option<*mut u8> {
        let off = (pos & (self.capacity - 1)) as usize;
        let padded = len.div_ceil(8).saturating_mul(8);
        if !off.is_multiple_of(8) || padded > self.capacity as usize - off {
            return None;
        }
        // SAFETY: `off < capacity`, the size of the data area, which
        // starts `DATA_OFFSET` bytes into this process's mapping: the
        // pointer stays inside it.
        Some(unsafe { self.data().add(off) })
    }

    /// Writes `header` and `parts` at ring position `pos`, as whole words
    /// (the record's padding zeroed). `false` (and nothing written) if the
    /// record would not lie inside the data area.
    #[inline]
    fn write_at(&self, pos: u64, header: u64, parts: &[&[u8]]) -> bool {
        if let [part] = parts {
            return self.write_record_at(pos, header, part);
        }
        let total = parts.iter().fold(8usize, |n, p| n.saturating_add(p.len()));
        let Some(dst) = self.record_dst(pos, total) else {
            return false;
        };
        let header = header.to_le_bytes();
        let words = std::iter::once(&header[..]).chain(parts.iter().copied());
        // SAFETY: `record_dst` checked, on local values whatever the
        // mapping holds, that every word of the record is in the data area
        // of this process's mapping, which lives as long as `self`, and no
        // Rust reference covers it. The stores are 64-bit atomics, the one
        // size every access to the data area uses (`sys::shm`): a peer, or
        // another thread of ours misled by one, writing the same words at
        // the same time only garbles the record, which readers validate;
        // it is never a data race.
        unsafe { shm::copy_words_in(dst, words) };
        true
    }

    /// [`write_at`](Ring::write_at) for a record of one part, inline in
    /// the fast path.
    #[inline(always)]
    fn write_record_at(&self, pos: u64, header: u64, payload: &[u8]) -> bool {
        let Some(dst) = self.record_dst(pos, payload.len().saturating_add(8)) else {
            return false;
        };
        // SAFETY: as in `write_at`: the record's words are in the data
        // area, accessed with 64-bit atomics only.
        unsafe { shm::copy_record_in(dst, header, payload) };
        true
    }

    /// Under the producer lock: appends one record (`parts` inline, or an
    /// out-of-line record whose id `large` receives before the record is
    /// published, so that ids and records stay in one order). `Ok(false)`:
    /// no room now (or the mailbox is full).
    #[inline]
    fn append_locked<'f>(
        &self,
        parts: &[&[u8]],
        large: Option<&mut (dyn FnMut(u64) -> io::Result<()> + 'f)>,
        joinable: bool,
    ) -> Result<bool, PushError> {
        let h = self.header();
        let len: usize = if large.is_some() {
            8
        } else {
            parts.iter().fold(0usize, |n, p| n.saturating_add(p.len()))
        };
        if len > self.max_inline() {
            return Err(PushError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record larger than half the ring",
            )));
        }
        let size = record_size(len);
        let place = match self.place(size, false) {
            Ok(Some(place)) => place,
            Ok(None) => return Ok(false),
            Err(why) => {
                self.repair_tail();
                return Err(PushError::Corrupted(why));
            }
        };
        let Place { mut tail, to_end } = place;
        let corrupted = || PushError::Corrupted("a record outside the ring".into());
        if size > to_end {
            if !self.write_at(tail, u64::from(PAD) << 32 | (to_end - 8), &[]) {
                return Err(corrupted());
            }
            tail += to_end;
        }
        let id_bytes;
        let (header, parts) = if let Some(send) = large {
            let id = h.producer.large_seq.load(Ordering::Relaxed);
            let Some(next) = id.checked_add(1) else {
                h.producer.large_seq.store(0, Ordering::Relaxed);
                return Err(PushError::Corrupted("large-message id exhausted".into()));
            };
            // The id is used up before the datagram is sent: a producer
            // killed after sending leaves an orphan older than every later
            // id (dropped when passed). Stored after, a replacement would
            // send its own message under the orphan's id, and the record
            // naming it would deliver the orphan in its place.
            h.producer.large_seq.store(next, Ordering::Relaxed);
            match send(id) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(PushError::Io(e)),
            }
            id_bytes = id.to_le_bytes();
            (u64::from(LARGE) << 32 | 8, &[&id_bytes[..]][..])
        } else {
            (u64::from(INLINE) << 32 | len as u64, parts)
        };
        if !self.write_at(tail, header, parts) {
            return Err(corrupted());
        }
        // No overflow: `tail <= POS_MAX`.
        self.publish_locked(tail + size, joinable);
        Ok(true)
    }

    /// Under the producer lock, once a record is written whole: counts it
    /// and moves `tail` to `end`, its end.
    #[inline]
    fn publish_locked(&self, end: u64, joinable: bool) {
        let h = self.header();
        // Before the record is published: a consumer's `task_done` for it
        // must find it counted.
        if joinable {
            h.counts.unfinished.fetch_add(1, Ordering::SeqCst);
        }
        let put = h.producer.count.load(Ordering::Relaxed);
        h.producer
            .count
            .store(put.wrapping_add(1), Ordering::Release);
        // Release, not SeqCst: the unlock orders it for a consumer about to
        // sleep (see `is_empty_settled`).
        h.producer.pos.store(end, Ordering::Release);
    }

    /// The common put, which never waits: a small inline record
    /// ([`FAST_PAYLOAD`]) into an unbounded ring that has room for it
    /// before its end by the cached `head`, while the producer lock is
    /// free. False (nothing written) in every other case, which the
    /// general path handles.
    #[inline]
    fn push_fast(&self, payload: &[u8], joinable: bool) -> bool {
        let h = self.header();
        if payload.len() > FAST_PAYLOAD || self.max_items != 0 || self.is_shut_down() {
            return false;
        }
        // Released by hand, not by a `Held` (whose drop glue stays out of
        // line): nothing below can unwind.
        if !h.producer.lock.take_free() {
            return false;
        }
        let done = self.append_fast(payload, joinable);
        h.producer.lock.unlock();
        done
    }

    /// Under the producer lock: [`push_fast`](Ring::push_fast)'s append.
    #[inline(always)]
    fn append_fast(&self, payload: &[u8], joinable: bool) -> bool {
        let h = self.header();
        let tail = h.producer.pos.load(Ordering::Relaxed);
        let size = record_size(payload.len());
        // `span` validates both positions (the cached `head` may be a
        // peer's garbage: the general path then reads the real one).
        let fits = self
            .span(h.producer.peer.load(Ordering::Relaxed), tail)
            .is_some_and(|used| self.capacity - used >= size)
            && size <= self.capacity - (tail & (self.capacity - 1));
        let header = u64::from(INLINE) << 32 | payload.len() as u64;
        if !fits || !self.write_record_at(tail, header, payload) {
            return false;
        }
        // No overflow: `tail <= POS_MAX` (`span`).
        self.publish_locked(tail + size, joinable);
        true
    }

    /// Appends one record: `parts` inline, or (with `large`) an out-of-line
    /// record whose id `large` receives under the producer lock, before the
    /// record is published (so that ids and records stay in one order).
    /// Returns by `deadline` whatever other processes do.
    #[inline]
    pub(crate) fn push(
        &self,
        parts: &[&[u8]],
        large: Option<&mut dyn FnMut(u64) -> io::Result<()>>,
        deadline: Option<Instant>,
        connected: &dyn Fn() -> bool,
        joinable: bool,
    ) -> Result<(), PushError> {
        if large.is_none()
            && let [payload] = parts
            && self.push_fast(payload, joinable)
        {
            self.wake_consumer();
            return Ok(());
        }
        self.push_general(parts, large, deadline, connected, joinable)
    }

    /// [`push`](Ring::push) in every case its fast path declines: large
    /// records, a bounded ring, the lock held, the ring full or wrapping.
    #[inline(never)]
    fn push_general(
        &self,
        parts: &[&[u8]],
        large: Option<&mut dyn FnMut(u64) -> io::Result<()>>,
        deadline: Option<Instant>,
        connected: &dyn Fn() -> bool,
        joinable: bool,
    ) -> Result<(), PushError> {
        let h = self.header();
        let size = if large.is_some() {
            record_size(8)
        } else {
            record_size(parts.iter().fold(0usize, |n, p| n.saturating_add(p.len())))
        };
        let mut large = large;
        let mut waiter = Waiter::new(WAIT, deadline);
        loop {
            // Shut down: no put will ever succeed (the caller says so).
            if self.is_shut_down() {
                return Err(PushError::Disconnected);
            }
            let Some(held) = hold(&h.producer.lock, deadline) else {
                return Err(PushError::Full);
            };
            let done = self.append_locked(parts, large.as_deref_mut(), joinable);
            drop(held);
            if done? {
                self.wake_consumer();
                return Ok(());
            }
            // Full: yield, then sleep until a consumer makes room.
            match waiter.pause() {
                Next::Check => continue,
                Next::TimedOut => return Err(PushError::Full),
                Next::Sleep => {}
            }
            let seq = h.waits.space_seq.load(Ordering::SeqCst);
            // Impossible positions: do not sleep; the next try reports them.
            let slept = waiter.sleep(
                &h.waits.space_seq,
                seq,
                Some(&h.waits.space_sleepers),
                || self.place(size, true).is_ok_and(|p| p.is_none()),
            );
            match slept {
                Slept::Woken => {}
                Slept::TimedOut => return Err(PushError::Full),
                Slept::Recheck => {
                    if !connected() {
                        return Err(PushError::Disconnected);
                    }
                }
            }
        }
    }

    /// Removes the oldest record. An inline payload is copied into `out`
    /// under the consumer lock and decoded by the caller after it is
    /// released; for an out-of-line record, `large` receives its id under
    /// the lock (so that out-of-line parts are fetched in order) and should
    /// only fetch, not decode. Returns by `deadline` whatever other
    /// processes do.
    /// `policy` says how it waits for a record before it sleeps: [`WAIT`],
    /// unless the caller knows better.
    #[inline]
    pub(crate) fn pop<L>(
        &self,
        policy: Policy,
        deadline: Option<Instant>,
        connected: &dyn Fn() -> bool,
        out: &mut Copied,
        large: impl FnMut(u64) -> L,
    ) -> Result<Taken<L>, PopError> {
        if self.pop_fast(out) {
            self.wake_producer();
            return Ok(Taken::Inline);
        }
        self.pop_general(policy, deadline, connected, out, large)
    }

    /// The common get, which never waits: the oldest record, if it is a
    /// small inline one ([`FAST_PAYLOAD`]) that needs no padding skipped,
    /// while the consumer lock is free. False (nothing taken) in every
    /// other case, which the general path handles.
    #[inline]
    fn pop_fast(&self, out: &mut Copied) -> bool {
        if !self.fast_take_possible(out) {
            return false;
        }
        let h = self.header();
        // Released by hand, as in `push_fast` (with `out.big` empty,
        // `copy_out` touches no thread-local and cannot unwind either).
        if !h.consumer.lock.take_free() {
            return false;
        }
        let done = self.take_fast(out);
        h.consumer.lock.unlock();
        done
    }

    /// Whether a fast take is worth the consumer lock: the ring is not
    /// empty (by the cached `tail`, or by `tail` itself), and `out` holds
    /// no large buffer (which `copy_out` would give back to this thread's
    /// cache, a thread-local access that may panic while the thread is
    /// torn down).
    #[inline(always)]
    fn fast_take_possible(&self, out: &Copied) -> bool {
        let h = self.header();
        let head = h.consumer.pos.load(Ordering::Relaxed);
        out.big.is_none()
            && (h.consumer.peer.load(Ordering::Relaxed) != head
                || h.producer.pos.load(Ordering::Acquire) != head)
    }

    /// Under the consumer lock: [`pop_fast`](Ring::pop_fast)'s take.
    #[inline(always)]
    fn take_fast(&self, out: &mut Copied) -> bool {
        let Some(slot) = self.small_at_head() else {
            return false;
        };
        self.copy_out(&slot, out);
        // No overflow: `head < tail <= POS_MAX`.
        self.retire_locked(slot.head + slot.size, 1);
        true
    }

    /// Under the consumer lock: the record at `head`, if it is a small
    /// inline one ([`FAST_PAYLOAD`]) that lies inside what was published
    /// and before the end of the data area.
    #[inline(always)]
    fn small_at_head(&self) -> Option<Slot> {
        let h = self.header();
        let head = h.consumer.pos.load(Ordering::Relaxed);
        let used = self.published(head)?;
        // `head` is a multiple of 8 (validated by `span`).
        let (kind, len, off) = self.header_at(head);
        let size = record_size(len);
        let fits = kind == INLINE
            && len <= FAST_PAYLOAD
            && size <= used
            && size <= self.capacity - off as u64;
        fits.then_some(Slot {
            head,
            off,
            kind,
            len,
            size,
        })
    }

    /// [`pop_fast`](Ring::pop_fast) for an acknowledged delivery: the small
    /// inline record at `head` is copied into a new `journal` record before
    /// it leaves this ring, as [`pop_delivery`](Ring::pop_delivery) does.
    /// `None` (nothing taken) in every case it does not cover, and when
    /// the journal has no room now: the general path handles those.
    #[inline]
    fn pop_delivery_fast<L>(&self, out: &mut Copied, journal: &Ring) -> Option<Journaled<L>> {
        if !self.fast_take_possible(out) {
            return None;
        }
        let h = self.header();
        // A guard this time: the journal's append reads thread-locals.
        let held = h
            .consumer
            .lock
            .take_free()
            .then_some(Held(&h.consumer.lock))?;
        let slot = self.small_at_head()?;
        if slot.len > journal.max_inline().saturating_sub(JOURNAL_HEAD) {
            return None;
        }
        self.copy_out(&slot, out);
        let taken = match journal.journal_append(Some(out.bytes()), None) {
            Ok(Some(pos)) => Ok((Taken::Inline, pos)),
            Ok(None) => return None,
            // As the general path: the record goes, and the error says why.
            Err(e) => Err(e),
        };
        self.retire_locked(slot.head + slot.size, 1);
        drop(held);
        Some(taken)
    }

    /// Under the consumer lock: the bytes published after `head`, from
    /// the cached `tail`, or from `tail` itself when the copy has been
    /// caught up with; `None` if the positions are impossible.
    #[inline]
    fn published(&self, head: u64) -> Option<u64> {
        let h = self.header();
        // Records up to the cached `tail` were published when it was read
        // (Acquire); re-read only when we have caught up with it (or the
        // copy is impossible).
        let tail = h.consumer.peer.load(Ordering::Relaxed);
        if tail != head
            && let Some(used) = self.span(head, tail)
        {
            return Some(used);
        }
        let tail = h.producer.pos.load(Ordering::Acquire);
        h.consumer.peer.store(tail, Ordering::Relaxed);
        self.span(head, tail)
    }

    /// Under the consumer lock, once `taken` records are read out whole:
    /// counts them and moves `head` to `end`, the end of the last.
    #[inline]
    fn retire_locked(&self, end: u64, taken: u64) {
        let h = self.header();
        let got = h.consumer.count.load(Ordering::Relaxed);
        h.consumer
            .count
            .store(got.wrapping_add(taken), Ordering::Release);
        // Release: the unlock orders it for a producer about to sleep.
        h.consumer.pos.store(end, Ordering::Release);
    }

    /// [`pop`](Ring::pop) in every case its fast path declines.
    #[inline(never)]
    fn pop_general<L>(
        &self,
        policy: Policy,
        deadline: Option<Instant>,
        connected: &dyn Fn() -> bool,
        out: &mut Copied,
        mut large: impl FnMut(u64) -> L,
    ) -> Result<Taken<L>, PopError> {
        let taken = self.pop_if(policy, deadline, connected, |ring, slot| {
            Some(if slot.kind == LARGE {
                Taken::Large(large(ring.read_id(slot)))
            } else {
                ring.copy_out(slot, out);
                Taken::Inline
            })
        })?;
        // The reader above never declines.
        taken.ok_or(PopError::Empty)
    }

    /// [`pop`](Ring::pop) with a reader that may decline the record
    /// (`Ok(None)`: it stays in place, for the next consumer), under the
    /// consumer lock.
    #[inline]
    fn pop_if<T>(
        &self,
        policy: Policy,
        deadline: Option<Instant>,
        connected: &dyn Fn() -> bool,
        mut take: impl FnMut(&Ring, &Slot) -> Option<T>,
    ) -> Result<Option<T>, PopError> {
        let h = self.header();
        let mut waiter = Waiter::new(policy, deadline);
        loop {
            // Known non-empty from our own cache line, or else ask.
            let known =
                h.consumer.peer.load(Ordering::Relaxed) != h.consumer.pos.load(Ordering::Relaxed);
            if known || !self.is_empty_now() {
                let Some(held) = hold(&h.consumer.lock, deadline) else {
                    return Err(PopError::Empty);
                };
                let got = self.take_locked_if(|slot| take(self, slot));
                drop(held);
                match got {
                    Ok(Some(Some(v))) => {
                        self.wake_producer();
                        return Ok(Some(v));
                    }
                    Ok(Some(None)) => return Ok(None),
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
            }
            // Empty and shut down: nothing will come (the caller says so).
            if self.is_shut_down() {
                return Err(PopError::Disconnected);
            }
            // Empty: yield, then sleep until a producer publishes.
            match waiter.pause() {
                Next::Check => continue,
                Next::TimedOut => return Err(PopError::Empty),
                Next::Sleep => {}
            }
            let seq = h.waits.data_seq.load(Ordering::SeqCst);
            let slept = waiter.sleep(&h.waits.data_seq, seq, Some(&h.waits.data_sleepers), || {
                self.is_empty_settled()
            });
            if slept != Slept::Woken && self.is_empty_now() {
                if slept == Slept::TimedOut {
                    return Err(PopError::Empty);
                }
                if !connected() {
                    return Err(PopError::Disconnected);
                }
            }
        }
    }

    /// Takes the oldest record as an acknowledged delivery: under the
    /// consumer lock, copies it into a new `journal` record (see
    /// [`Ring::journal_append`]) before it leaves this ring, so that a
    /// consumer that dies holding it loses nothing. A message the journal
    /// does not hold itself (out of line here, or too large for it) goes
    /// to `elsewhere` with the journal position to store it under;
    /// `commit` then runs once the journal record is published, before the
    /// record leaves this ring (to retire the out-of-line original).
    /// `Ok(None)`: the journal is full (nothing was taken).
    pub(crate) fn pop_delivery<L>(
        &self,
        deadline: Option<Instant>,
        connected: &dyn Fn() -> bool,
        out: &mut Copied,
        journal: &Ring,
        mut elsewhere: impl FnMut(u64, Source<'_>) -> io::Result<Option<L>>,
        mut commit: impl FnMut(Source<'_>),
    ) -> Result<Option<Journaled<L>>, PopError> {
        if let Some(taken) = self.pop_delivery_fast(out, journal) {
            self.wake_producer();
            return Ok(Some(taken));
        }
        self.pop_if(WAIT, deadline, connected, |ring, slot| {
            let room = journal.max_inline().saturating_sub(JOURNAL_HEAD);
            let source = if slot.kind == LARGE {
                Some(Source::Large(ring.read_id(slot)))
            } else {
                ring.copy_out(slot, out);
                (out.bytes().len() > room).then(|| Source::Bytes(out.bytes()))
            };
            let Some(source) = source else {
                return match journal.journal_append(Some(out.bytes()), None) {
                    Ok(Some(pos)) => Some(Ok((Taken::Inline, pos))),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                };
            };
            let mut fetched = None;
            let mut store = |pos| match elsewhere(pos, source) {
                Ok(Some(l)) => {
                    fetched = Some(l);
                    Ok(())
                }
                Ok(None) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the message was taken by a consumer that died",
                )),
                Err(e) => Err(e),
            };
            match journal.journal_append(None, Some(&mut store)) {
                Ok(Some(pos)) => {
                    commit(source);
                    fetched.map(|l| Ok((Taken::Large(l), pos)))
                }
                Ok(None) => None,
                // The out-of-line message is gone (its consumer died after
                // taking it): the record goes, as a plain get does.
                Err(PushError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    Some(Err(PushError::Io(e)))
                }
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// The header (kind, payload length) of the record at ring position
    /// `pos`, and the record's offset in the data area. `pos` is rounded
    /// down to a multiple of 8 (callers pass validated positions).
    #[inline]
    fn header_at(&self, pos: u64) -> (u32, usize, usize) {
        let off = (pos & (self.capacity - 1)) as usize & !7;
        let mut word = [0u8; 8];
        // SAFETY: `off` is a multiple of 8 below the power-of-two
        // capacity, so `off + 8 <= capacity`: the 8 bytes are inside this
        // process's mapping whatever a peer wrote, and are copied
        // atomically to a local before anything is decided from them.
        unsafe { shm::copy_out(self.data().add(off), &mut word) };
        let word = u64::from_le_bytes(word);
        ((word >> 32) as u32, (word & 0xffff_ffff) as usize, off)
    }

    /// Under the consumer lock: the next record after any padding,
    /// validated; `Ok(None)` if there is none.
    #[inline]
    fn next_locked(&self) -> Result<Option<Slot>, String> {
        let h = self.header();
        let mut head = h.consumer.pos.load(Ordering::Relaxed);
        loop {
            let Some(used) = self.published(head) else {
                let tail = h.consumer.peer.load(Ordering::Relaxed);
                return Err(format!("head {head:#x} and tail {tail:#x} are impossible"));
            };
            if used == 0 {
                h.consumer.pos.store(head, Ordering::Release);
                return Ok(None);
            }
            // `head` is a multiple of 8 (validated by `span`).
            let (kind, len, off) = self.header_at(head);
            let size = record_size(len);
            let to_end = self.capacity - off as u64;
            let valid = size <= to_end
                && size <= used
                && match kind {
                    INLINE => len <= self.max_inline(),
                    LARGE => len == 8,
                    PAD => size == to_end,
                    _ => false,
                };
            if !valid {
                return Err(format!(
                    "record of kind {kind} and length {len} at offset {off}"
                ));
            }
            // No overflow: `head < tail <= POS_MAX`, `size <= capacity`.
            if kind == PAD {
                head += size;
                continue;
            }
            return Ok(Some(Slot {
                head,
                off,
                kind,
                len,
                size,
            }));
        }
    }

    /// Under the consumer lock: hands the next record to `read` and retires
    /// it. On corruption, drops what is in flight (rather than read garbage
    /// forever) and says why.
    #[inline]
    fn take_locked<T>(&self, read: impl FnOnce(&Slot) -> T) -> Result<Option<T>, PopError> {
        self.take_locked_if(|slot| Some(read(slot)))
            .map(Option::flatten)
    }

    /// [`take_locked`](Ring::take_locked) with a reader that may decline
    /// the record (`None`: it stays where it is, for the next consumer):
    /// `Ok(Some(None))`.
    #[allow(clippy::option_option)]
    #[inline]
    fn take_locked_if<T>(
        &self,
        read: impl FnOnce(&Slot) -> Option<T>,
    ) -> Result<Option<Option<T>>, PopError> {
        let h = self.header();
        match self.next_locked() {
            Ok(None) => Ok(None),
            Ok(Some(slot)) => {
                let Some(out) = read(&slot) else {
                    return Ok(Some(None));
                };
                self.retire_locked(slot.head + slot.size, 1);
                Ok(Some(Some(out)))
            }
            Err(why) => {
                let tail = h.producer.pos.load(Ordering::Acquire) & !7;
                let head = if tail <= POS_MAX { tail } else { 0 };
                h.consumer.peer.store(head, Ordering::Relaxed);
                let put = h.producer.count.load(Ordering::Acquire);
                h.consumer.count.store(put, Ordering::Release);
                h.consumer.pos.store(head, Ordering::Release);
                Err(PopError::Corrupted(why))
            }
        }
    }

    /// The id in a validated `LARGE` record.
    #[inline]
    fn read_id(&self, slot: &Slot) -> u64 {
        let mut id = [0u8; 8];
        // SAFETY: `next_locked` checked that the record's 16 bytes
        // (`record_size(8)`) lie before the end of the data area.
        unsafe { shm::copy_out(self.data().add(slot.off + 8), &mut id) };
        u64::from_le_bytes(id)
    }

    /// Copies a validated inline record's payload into `out`.
    #[inline]
    fn copy_out(&self, slot: &Slot, out: &mut Copied) {
        let len = slot.len;
        // The copies below: `next_locked` checked that the record, `8 + len`
        // bytes from `off`, lies before the end of the data area, so the
        // source is inside this process's mapping; the destination holds
        // `len` bytes (the stack array, or a vector resized to `len`). The
        // copies are atomic (`sys::shm::copy_out`), and the bytes are
        // copied, never interpreted here.
        // SAFETY: `off + 8 <= capacity`: inside the data area.
        let src = unsafe { self.data().add(slot.off + 8) };
        if len <= SMALL_COPY {
            if let Some(v) = out.big.take()
                && v.capacity() <= KEEP_COPY
            {
                BIG.set(v);
            }
            // Whole words: the record is padded to 8 bytes, and the stack
            // array holds `SMALL_COPY` (a multiple of 8) bytes, so no copy
            // of a variable length is needed for a small message.
            let words = len.div_ceil(8) * 8;
            // SAFETY: see above; the record's padded payload, `words` bytes
            // from `src`, lies inside the data area too (`next_locked`
            // checked the padded record size), and `words <= SMALL_COPY`.
            unsafe { shm::copy_out(src, &mut out.small[..words]) };
            out.len = len;
        } else {
            let mut v = out.big.take().unwrap_or_else(|| BIG.take());
            v.clear();
            v.resize(BIG_SHIFT + len, 0);
            // SAFETY: see above; `v` holds `len` bytes past `BIG_SHIFT`.
            unsafe { shm::copy_out(src, &mut v[BIG_SHIFT..]) };
            out.big = Some(v);
        }
    }

    /// Marks one record as processed (`JoinableQueue::task_done`). False if
    /// more were marked than were put.
    pub(crate) fn task_done(&self) -> bool {
        let h = self.header();
        let mut cur = h.counts.unfinished.load(Ordering::SeqCst);
        loop {
            if cur == 0 {
                return false;
            }
            match h.counts.unfinished.compare_exchange(
                cur,
                cur - 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur == 1 && h.waits.join_sleepers.load(Ordering::SeqCst) > 0 {
            h.waits.join_seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(&h.waits.join_seq, u32::MAX);
        }
        true
    }

    /// Waits until every record put has been marked done, or `deadline`.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> bool {
        let h = self.header();
        let waiter = Waiter::new(Policy::counted(0, 0), deadline);
        loop {
            let seq = h.waits.join_seq.load(Ordering::SeqCst);
            let slept = waiter.sleep(&h.waits.join_seq, seq, Some(&h.waits.join_sleepers), || {
                h.counts.unfinished.load(Ordering::SeqCst) != 0
            });
            if h.counts.unfinished.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if slept == Slept::TimedOut {
                return false;
            }
        }
    }

    /// Whether every record put has been marked done.
    pub(crate) fn all_done(&self) -> bool {
        self.header().counts.unfinished.load(Ordering::SeqCst) == 0
    }

    /// The readiness wait of an async join: until every record put has
    /// been marked done, or `until` (the wake-up it waits for wakes all).
    pub(crate) fn wait_all_done(&self, until: Instant) {
        let h = self.header();
        let waiter = Waiter::new(Policy::counted(0, 0), Some(until));
        let seq = h.waits.join_seq.load(Ordering::SeqCst);
        let _ = waiter.sleep(&h.waits.join_seq, seq, Some(&h.waits.join_sleepers), || {
            h.counts.unfinished.load(Ordering::SeqCst) != 0
        });
    }

    /// Records that the calling process (`pid`) holds the queue. False if
    /// the table is full (see [`Registration`] for what the caller does
    /// then).
    fn attach_pid(&self, pid: u32) -> bool {
        let a = &self.header().attached;
        let me = liveness::me();
        let mine = |i: usize| {
            a.pids[i].load(Ordering::Relaxed) == pid && a.ids[i].load(Ordering::Relaxed) == me.0
        };
        if (0..ATTACH_SLOTS).any(mine) {
            return true;
        }
        for (slot, id) in a.pids.iter().zip(&a.ids) {
            let cur = slot.load(Ordering::SeqCst);
            let cur_id = id.load(Ordering::SeqCst);
            if cur != 0 && liveness::is_alive(cur, Identity(cur_id)) {
                continue;
            }
            // The identity first: a reader that sees the old pid with our
            // identity judges that (dead) holder gone, as it is.
            if id
                .compare_exchange(cur_id, me.0, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
                && slot
                    .compare_exchange(cur, pid, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                return true;
            }
        }
        false
    }

    /// Records that the calling process (`pid`) no longer holds the queue.
    pub(crate) fn detach_pid(&self, pid: u32) {
        let a = &self.header().attached;
        let me = liveness::me();
        for (slot, id) in a.pids.iter().zip(&a.ids) {
            if id.load(Ordering::SeqCst) == me.0
                && slot
                    .compare_exchange(pid, 0, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                let _ = id.compare_exchange(me.0, 0, Ordering::SeqCst, Ordering::Relaxed);
            }
        }
    }

    /// Whether a process other than the caller (`me`) that holds the queue
    /// is alive (or a holder that found no slot is still counted).
    pub(crate) fn others_alive(&self, me: u32) -> bool {
        let a = &self.header().attached;
        let my_id = liveness::me();
        a.unlisted.load(Ordering::SeqCst) != 0
            || a.pids.iter().zip(&a.ids).any(|(s, id)| {
                let pid = s.load(Ordering::SeqCst);
                let id = Identity(id.load(Ordering::SeqCst));
                pid != 0 && !(pid == me && id == my_id) && liveness::is_alive(pid, id)
            })
    }
}

/// A handle's entry in its ring's table of holders: which process it
/// registered (a forked child holds its parent's handle and registers
/// itself on first use), and whether it found no free slot.
///
/// A holder that finds the table full counts itself in `unlisted` (and
/// peers are then never declared gone), tries again to take a slot on each
/// later operation, and uncounts itself when it gets one or when the handle
/// is dropped. So once the table has room again, disconnection is reported
/// again; only a holder that dies while unlisted leaves the count raised.
#[derive(Debug, Default)]
pub(crate) struct Registration(AtomicU32);

/// Marks a [`Registration`] whose process is counted in `unlisted`. Pids
/// are below 2^22 on Linux.
const UNLISTED: u32 = 1 << 31;

impl Registration {
    /// Makes sure the calling process is in `ring`'s table (or counted as
    /// unlisted); returns its pid.
    #[inline]
    pub(crate) fn ensure(&self, ring: &Ring) -> u32 {
        let me = futex::pid();
        let cur = self.0.load(Ordering::Relaxed);
        if cur == me {
            return me;
        }
        let unlisted = &ring.header().attached.unlisted;
        if ring.attach_pid(me) {
            if cur == me | UNLISTED {
                let _ =
                    unlisted.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            }
            self.0.store(me, Ordering::Relaxed);
        } else if cur != me | UNLISTED {
            unlisted.fetch_add(1, Ordering::SeqCst);
            self.0.store(me | UNLISTED, Ordering::Relaxed);
        }
        me
    }

    /// The handle is going away: uncounts an unlisted process.
    pub(crate) fn release(&self, ring: &Ring) {
        if self.0.load(Ordering::Relaxed) == futex::pid() | UNLISTED {
            let _ = ring.header().attached.unlisted.fetch_update(
                Ordering::SeqCst,
                Ordering::SeqCst,
                |n| n.checked_sub(1),
            );
            self.0.store(0, Ordering::Relaxed);
        }
    }
}

/// A journal record's state (the low byte of its first payload word).
pub(crate) mod delivery {
    /// Handed to a consumer, not yet acknowledged.
    pub(crate) const TAKEN: u8 = 1;
    /// Acknowledged (or given back): the record can go.
    pub(crate) const DONE: u8 = 2;
    /// Being put back into the queue by a recoverer.
    pub(crate) const RECOVERING: u8 = 3;
    /// What the record holds: the message's bytes.
    pub(crate) const BYTES: u8 = 1;
    /// What the record holds: nothing; the message waits in the journal's
    /// mailbox under the record's position.
    pub(crate) const ELSEWHERE: u8 = 2;
}

/// Bytes of a journal record's payload before the message: state (and
/// what the record holds), the owner's pid and identity, the recoverer's
/// pid and identity, one word each.
const JOURNAL_HEAD: usize = 40;

/// One delivery recorded in a journal, as a scan found it.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The record's position: the delivery's name.
    pub(crate) pos: u64,
    /// [`delivery::BYTES`] or [`delivery::ELSEWHERE`].
    pub(crate) what: u8,
    /// The message, for [`delivery::BYTES`].
    pub(crate) bytes: Vec<u8>,
}

/// The journal of a queue's acknowledged deliveries: a ring of its own
/// whose records say who holds which message. A consumer that takes a
/// message with an acknowledged get copies it into a journal record
/// (state `TAKEN`, its pid and identity) before the message leaves the
/// queue's ring; acknowledging marks the record `DONE`, and the journal's
/// head moves past `DONE` records. A record `TAKEN` by a process that is
/// certainly gone is put back into the queue by whoever finds it
/// ([`journal_take_dead`](Ring::journal_take_dead)). See
/// `docs/shm-ring.md`.
impl Ring {
    /// Appends a journal record for a delivery taken by the calling
    /// process: the message's `bytes`, or (`None`) a record whose message
    /// `elsewhere` stores under the record's position, before the record
    /// is published. `Ok(None)`: no room now (or `elsewhere` would block).
    ///
    /// Only [`pop_delivery`](Ring::pop_delivery) calls it, under the
    /// consumer lock of the queue whose journal this is: that lock
    /// serialises the journal's appenders (the journal's own producer lock
    /// is never taken), and [`journal_holds`](Ring::journal_holds) asks it
    /// whether an append is under way.
    fn journal_append(
        &self,
        bytes: Option<&[u8]>,
        elsewhere: Option<&mut dyn FnMut(u64) -> io::Result<()>>,
    ) -> Result<Option<u64>, PushError> {
        let h = self.header();
        let len = JOURNAL_HEAD.saturating_add(bytes.map_or(0, <[u8]>::len));
        if len > self.max_inline() {
            return Err(PushError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record larger than half the journal",
            )));
        }
        let size = record_size(len);
        let Place { mut tail, to_end } = match self.place(size, false) {
            Ok(Some(place)) => place,
            Ok(None) => return Ok(None),
            Err(why) => {
                self.repair_tail();
                return Err(PushError::Corrupted(why));
            }
        };
        let corrupted = || PushError::Corrupted("a record outside the journal".into());
        if size > to_end {
            if !self.write_at(tail, u64::from(PAD) << 32 | (to_end - 8), &[]) {
                return Err(corrupted());
            }
            tail += to_end;
        }
        let what = if bytes.is_some() {
            delivery::BYTES
        } else {
            delivery::ELSEWHERE
        };
        if let Some(store) = elsewhere {
            match store(tail) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(PushError::Io(e)),
            }
        }
        let (pid, me) = liveness::current();
        let state = u64::from(delivery::TAKEN) | u64::from(what) << 8;
        let mut head = [0u8; JOURNAL_HEAD];
        for (i, w) in [state, u64::from(pid), me.0, 0, 0].into_iter().enumerate() {
            head[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let parts = [&head[..], bytes.unwrap_or(&[])];
        if !self.write_at(tail, u64::from(INLINE) << 32 | len as u64, &parts) {
            return Err(corrupted());
        }
        let put = h.producer.count.load(Ordering::Relaxed);
        h.producer
            .count
            .store(put.wrapping_add(1), Ordering::Release);
        h.producer.pos.store(tail + size, Ordering::Release);
        Ok(Some(tail))
    }

    /// The first `n` payload words of the journal record at `pos`, if
    /// `pos` names a record the journal holds now: validated against the
    /// positions and the record's header (whatever they hold, the words
    /// are inside the data area).
    fn journal_words(&self, pos: u64) -> Option<[&AtomicU64; JOURNAL_HEAD / 8]> {
        let h = self.header();
        let head = h.consumer.pos.load(Ordering::Acquire);
        let tail = h.producer.pos.load(Ordering::Acquire);
        self.span(head, tail)?;
        if !pos.is_multiple_of(8) || pos < head || pos >= tail {
            return None;
        }
        let (kind, len, off) = self.header_at(pos);
        if off + 8 + JOURNAL_HEAD > self.capacity as usize || kind != INLINE || len < JOURNAL_HEAD {
            return None;
        }
        Some(std::array::from_fn(|i| {
            // SAFETY: `off + 8 + 8 * i + 8 <= off + 8 + JOURNAL_HEAD <=
            // capacity`, and `off` is 8-aligned: an aligned word of the
            // data area of this mapping, which outlives the reference.
            // Every access to the data area is a 64-bit atomic, and an
            // `AtomicU64` is valid at any bits a peer writes.
            unsafe { AtomicU64::from_ptr(self.data().add(off + 8 + 8 * i).cast::<u64>()) }
        }))
    }

    /// Marks the delivery at `pos` `DONE` if it is in state `from` and was
    /// taken (or, for `RECOVERING`, is being recovered) by this process.
    /// False otherwise (already done, given back, or not ours).
    pub(crate) fn journal_done(&self, pos: u64, from: u8) -> bool {
        let Some([state, owner_pid, owner_id, rec_pid, rec_id]) = self.journal_words(pos) else {
            return false;
        };
        let (pid, me) = liveness::current();
        let (who_pid, who_id) = if from == delivery::RECOVERING {
            (rec_pid, rec_id)
        } else {
            (owner_pid, owner_id)
        };
        if who_pid.load(Ordering::Acquire) != u64::from(pid)
            || who_id.load(Ordering::Acquire) != me.0
        {
            return false;
        }
        let cur = state.load(Ordering::Acquire);
        cur as u8 == from
            && state
                .compare_exchange(
                    cur,
                    cur & !0xff | u64::from(delivery::DONE),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Takes the delivery at `pos`, which this process holds (`TAKEN`),
    /// back to give it to the queue again: marks it `RECOVERING` by this
    /// process and returns it. `None` if it is not ours to give back.
    pub(crate) fn journal_give_back(&self, pos: u64) -> Option<Entry> {
        let held = try_hold_until(&self.header().consumer.lock)?;
        let [state, owner_pid, owner_id, ..] = self.journal_words(pos)?;
        let (pid, me) = liveness::current();
        if owner_pid.load(Ordering::Acquire) != u64::from(pid)
            || owner_id.load(Ordering::Acquire) != me.0
        {
            return None;
        }
        let entry = self.claim(pos, state.load(Ordering::Acquire));
        drop(held);
        entry
    }

    /// Under the journal's consumer lock: marks the record at `pos`, whose
    /// state word read `cur` (`TAKEN` or `RECOVERING`), as being recovered
    /// by this process, and copies its message out.
    fn claim(&self, pos: u64, cur: u64) -> Option<Entry> {
        let [state, _, _, rec_pid, rec_id] = self.journal_words(pos)?;
        if !matches!(cur as u8, delivery::TAKEN | delivery::RECOVERING) {
            return None;
        }
        let (pid, me) = liveness::current();
        rec_pid.store(u64::from(pid), Ordering::Release);
        rec_id.store(me.0, Ordering::Release);
        state
            .compare_exchange(
                cur,
                cur & !0xff | u64::from(delivery::RECOVERING),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .ok()?;
        let what = (cur >> 8) as u8;
        let mut bytes = Vec::new();
        if what == delivery::BYTES {
            let (_, len, off) = self.header_at(pos);
            let n = len.saturating_sub(JOURNAL_HEAD);
            if off + 8 + JOURNAL_HEAD + n > self.capacity as usize {
                return None;
            }
            bytes.resize(n, 0);
            // SAFETY: `off + 8 + JOURNAL_HEAD + n <= capacity` (checked).
            unsafe { shm::copy_out(self.data().add(off + 8 + JOURNAL_HEAD), &mut bytes) };
        }
        Some(Entry { pos, what, bytes })
    }

    /// Finds the deliveries whose holder (or recoverer) is certainly gone,
    /// claims them for this process to give back to the queue, and
    /// returns them. Skips the scan if another process is scanning.
    pub(crate) fn journal_take_dead(&self) -> Vec<Entry> {
        let mut found = Vec::new();
        let h = self.header();
        let Some(held) = try_hold(&h.consumer.lock) else {
            return found;
        };
        let head = h.consumer.pos.load(Ordering::Acquire);
        let tail = h.producer.pos.load(Ordering::Acquire);
        if self.span(head, tail).is_none() {
            return found;
        }
        let mut pos = head;
        let mut checked: Vec<(u64, u64, bool)> = Vec::new();
        let mut dead = |pid: u64, id: u64| {
            if let Some(&(_, _, alive)) = checked.iter().find(|(p, i, _)| *p == pid && *i == id) {
                return !alive;
            }
            let alive = u32::try_from(pid).is_ok_and(|p| liveness::is_alive(p, Identity(id)));
            checked.push((pid, id, alive));
            !alive
        };
        while pos < tail {
            // `pos` is a multiple of 8: it starts at a validated `head` and
            // moves by record sizes.
            let (kind, len, off) = self.header_at(pos);
            let size = record_size(len);
            if size > self.capacity - off as u64 || size == 0 {
                break;
            }
            if kind == INLINE
                && let Some([state, owner_pid, owner_id, rec_pid, rec_id]) = self.journal_words(pos)
            {
                let cur = state.load(Ordering::Acquire);
                let gone = match cur as u8 {
                    delivery::TAKEN => dead(
                        owner_pid.load(Ordering::Acquire),
                        owner_id.load(Ordering::Acquire),
                    ),
                    delivery::RECOVERING => dead(
                        rec_pid.load(Ordering::Acquire),
                        rec_id.load(Ordering::Acquire),
                    ),
                    _ => false,
                };
                if gone && let Some(entry) = self.claim(pos, cur) {
                    found.push(entry);
                }
            }
            pos += size;
        }
        drop(held);
        found
    }

    /// Makes the delivery at `pos`, which this process claimed to recover
    /// (`RECOVERING`), its own: `TAKEN` by this process, to be acknowledged
    /// or given back like any delivery it took. False if it is not this
    /// process's claim.
    pub(crate) fn journal_adopt(&self, pos: u64) -> bool {
        let Some([state, owner_pid, owner_id, rec_pid, rec_id]) = self.journal_words(pos) else {
            return false;
        };
        let (pid, me) = liveness::current();
        if rec_pid.load(Ordering::Acquire) != u64::from(pid)
            || rec_id.load(Ordering::Acquire) != me.0
        {
            return false;
        }
        let cur = state.load(Ordering::Acquire);
        if cur as u8 != delivery::RECOVERING {
            return false;
        }
        // Killed between these stores and the swap: still `RECOVERING` by
        // a dead process, which the next scan recovers.
        owner_pid.store(u64::from(pid), Ordering::Release);
        owner_id.store(me.0, Ordering::Release);
        state
            .compare_exchange(
                cur,
                cur & !0xff | u64::from(delivery::TAKEN),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Puts back a claim of this process on the record at `pos` that it
    /// could not finish (the queue had no room): `RECOVERING` becomes
    /// `TAKEN` again, by its (dead) holder, for the next scan.
    pub(crate) fn journal_unclaim(&self, pos: u64) {
        let Some([state, _, _, rec_pid, rec_id]) = self.journal_words(pos) else {
            return;
        };
        let (pid, me) = liveness::current();
        if rec_pid.load(Ordering::Acquire) != u64::from(pid)
            || rec_id.load(Ordering::Acquire) != me.0
        {
            return;
        }
        let cur = state.load(Ordering::Acquire);
        if cur as u8 == delivery::RECOVERING {
            let _ = state.compare_exchange(
                cur,
                cur & !0xff | u64::from(delivery::TAKEN),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Runs `f` holding the journal's consumer lock (waiting briefly for
    /// it): the lock that also orders the uses of the journal's mailbox.
    /// `None` if the lock stayed held.
    pub(crate) fn journal_exclusive<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let held = try_hold_until(&self.header().consumer.lock)?;
        let out = f();
        drop(held);
        Some(out)
    }

    /// [`journal_exclusive`](Ring::journal_exclusive) without waiting:
    /// `None` if another process holds the lock now.
    pub(crate) fn journal_try_exclusive<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let held = try_hold(&self.header().consumer.lock)?;
        let out = f();
        drop(held);
        Some(out)
    }

    /// Whether the journal holds a record not yet `DONE` at `pos`, or may
    /// be about to publish one there (for its mailbox: whether a message
    /// stored under `pos` is still needed).
    pub(crate) fn journal_holds(&self, pos: u64, queue: &Ring) -> bool {
        // A consumer stores the message of a record it appends before it
        // publishes the record, under the queue's consumer lock (see
        // `journal_append`): a message under a position at or past the
        // tail belongs to that record while the lock is held. Once the
        // lock is free (or its holder dead) and the tail still short of
        // it, its appender died before publishing: an orphan (its message
        // is still in the queue).
        let h = self.header();
        let tail = h.producer.pos.load(Ordering::Acquire);
        if pos >= tail && pos - tail < self.capacity {
            let Some(held) = try_hold(&queue.header().consumer.lock) else {
                return true;
            };
            let tail = h.producer.pos.load(Ordering::Acquire);
            drop(held);
            if pos >= tail {
                return false;
            }
        }
        self.journal_words(pos)
            .is_some_and(|[state, ..]| state.load(Ordering::Acquire) as u8 != delivery::DONE)
    }

    /// Whether the journal holds any record (a cheap look, for deciding
    /// whether to scan it).
    pub(crate) fn journal_is_empty(&self) -> bool {
        self.is_empty_now()
    }

    /// [`journal_reclaim`](Ring::journal_reclaim) once the journal's
    /// records fill an eighth of it: an acknowledgement then leaves its
    /// record to be reclaimed with a few hundred others, in one pass under
    /// the journal's consumer lock, instead of taking that lock itself.
    #[inline]
    pub(crate) fn journal_reclaim_lazily(&self) {
        let h = self.header();
        let head = h.consumer.pos.load(Ordering::Relaxed);
        let tail = h.producer.pos.load(Ordering::Relaxed);
        // Impossible positions (a peer's garbage) go to the full pass,
        // which reports nothing but leaves them alone.
        if tail.wrapping_sub(head) >= self.capacity / 8 {
            self.journal_reclaim();
        }
    }

    /// Moves the journal's head past the `DONE` records (and padding) at
    /// its front, if no other process is doing it; wakes a consumer waiting
    /// for room in the journal.
    pub(crate) fn journal_reclaim(&self) {
        let h = self.header();
        let Some(held) = try_hold(&h.consumer.lock) else {
            return;
        };
        let tail = h.producer.pos.load(Ordering::Acquire);
        let mut head = h.consumer.pos.load(Ordering::Acquire);
        if self.span(head, tail).is_none() {
            return;
        }
        let mut moved = 0u64;
        while head < tail {
            let (kind, len, off) = self.header_at(head);
            let size = record_size(len);
            if size > self.capacity - off as u64 || size > tail - head {
                break;
            }
            let done = kind == PAD
                || self.journal_words(head).is_some_and(|[state, ..]| {
                    state.load(Ordering::Acquire) as u8 == delivery::DONE
                });
            if !done {
                break;
            }
            head += size;
            moved += u64::from(kind != PAD);
        }
        if moved > 0 {
            let got = h.consumer.count.load(Ordering::Relaxed);
            h.consumer
                .count
                .store(got.wrapping_add(moved), Ordering::Release);
            h.consumer.pos.store(head, Ordering::Release);
        }
        drop(held);
        if moved > 0 && h.waits.space_sleepers.load(Ordering::SeqCst) > 0 {
            h.waits.space_seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(&h.waits.space_seq, u32::MAX);
        }
    }
}

/// Takes a journal's consumer lock, waiting briefly for a scanner to
/// finish (a delivery given back is not worth a long wait).
fn try_hold_until(lock: &RawLock) -> Option<Held<'_>> {
    hold(
        lock,
        Some(Instant::now() + std::time::Duration::from_millis(100)),
    )
}

/// For tests that play a hostile or stuck peer (through `__bench`).
#[cfg(any(test, feature = "bench-internals"))]
#[cfg_attr(not(feature = "bench-internals"), allow(dead_code))]
impl Ring {
    /// A journal's state in one line, for a test's report of a stall: its
    /// positions, its records by state, and its side locks. Read without
    /// locking: a snapshot, possibly torn while others work.
    pub(crate) fn journal_summary(&self) -> String {
        let h = self.header();
        let head = h.consumer.pos.load(Ordering::Acquire);
        let tail = h.producer.pos.load(Ordering::Acquire);
        // Records taken, done, being recovered, and in any other state.
        let mut states = [0usize; 4];
        if self.span(head, tail).is_some() {
            let mut pos = head;
            while pos < tail {
                // `pos` is a multiple of 8: it starts at a validated `head`
                // and moves by record sizes.
                let (kind, len, off) = self.header_at(pos);
                let size = record_size(len);
                if size > self.capacity - off as u64 || size == 0 {
                    break;
                }
                if kind == INLINE {
                    let state = self
                        .journal_words(pos)
                        .map_or(0, |[state, ..]| state.load(Ordering::Acquire) as u8);
                    let i = match state {
                        delivery::TAKEN => 0,
                        delivery::DONE => 1,
                        delivery::RECOVERING => 2,
                        _ => 3,
                    };
                    states[i] += 1;
                }
                pos += size;
            }
        }
        let [taken, done, recovering, other] = states;
        format!(
            "head {head}, tail {tail}: {taken} taken, {done} done, {recovering} being recovered, \
             {other} unreadable; producer lock {:?}, consumer lock {:?}",
            h.producer.lock, h.consumer.lock
        )
    }

    /// Offsets of the header's fields that hold positions, counts and
    /// other words a peer can corrupt, by name; the side locks last.
    pub(crate) fn layout() -> Vec<(&'static str, usize)> {
        use std::mem::offset_of;
        vec![
            ("capacity", offset_of!(Header, meta.capacity)),
            ("max_items", offset_of!(Header, meta.max_items)),
            ("put_count", offset_of!(Header, producer.count)),
            ("tail_cache", offset_of!(Header, producer.peer)),
            ("large_seq", offset_of!(Header, producer.large_seq)),
            ("tail", offset_of!(Header, producer.pos)),
            ("got_count", offset_of!(Header, consumer.count)),
            ("head_cache", offset_of!(Header, consumer.peer)),
            ("head", offset_of!(Header, consumer.pos)),
            ("unfinished", offset_of!(Header, counts.unfinished)),
            ("data_seq", offset_of!(Header, waits.data_seq)),
            ("space_seq", offset_of!(Header, waits.space_seq)),
            ("attached", offset_of!(Header, attached.pids)),
            ("unlisted", offset_of!(Header, attached.unlisted)),
            ("producer_lock", offset_of!(Header, producer.lock)),
            ("consumer_lock", offset_of!(Header, consumer.lock)),
        ]
    }

    /// Where the records begin.
    pub(crate) const DATA_OFFSET: usize = DATA_OFFSET;

    /// Takes a side's lock and keeps it: the calling process must stop or
    /// die, as a wedged peer would.
    pub(crate) fn wedge(&self, consumer: bool) {
        let h = self.header();
        let side = if consumer { &h.consumer } else { &h.producer };
        let _ = side.lock.lock();
    }
}

/// The non-blocking side of the ring, for callers that wait elsewhere than
/// on the ring's futexes (the shared-memory pipe waits in `poll` on a
/// socket, so that `wait` can watch many connections at once).
///
/// These calls never sleep, never wait for a side lock (one held by
/// another thread or process reads as full, or empty) and never wake
/// anyone. A caller that waits elsewhere counts itself in
/// [`data_waiters`](Ring::data_waiters) or
/// [`space_waiters`](Ring::space_waiters) before it re-checks the ring and
/// sleeps; the other side, after a `try_push` or `try_pop`, reads the count
/// (`SeqCst`) and wakes it its own way. The re-checks go through
/// [`RawLock::observe`], so either the sleeper sees the change or the other
/// side sees the sleeper.
impl Ring {
    /// Appends one inline record made of `parts` if it fits now; `false`
    /// if the ring is full. The record must be at most
    /// [`max_inline`](Ring::max_inline) bytes.
    pub(crate) fn try_push(&self, parts: &[&[u8]]) -> Result<bool, PushError> {
        let h = self.header();
        let Some(held) = try_hold(&h.producer.lock) else {
            return Ok(false);
        };
        let done = self.append_locked(parts, None, false);
        drop(held);
        done
    }

    /// Whether a record of `len` payload bytes fits now (or the positions
    /// are impossible, which the next push reports), for a sender about to
    /// sleep that has counted itself in
    /// [`space_waiters`](Ring::space_waiters).
    pub(crate) fn has_room_for(&self, len: usize) -> bool {
        self.place(record_size(len), true)
            .map_or(true, |p| p.is_some())
    }

    /// Removes the oldest record, if there is one, and hands it to `read`
    /// once the consumer lock is released (a private copy of an inline
    /// payload, never shared memory). `Ok(None)`: the ring is empty.
    pub(crate) fn try_pop<T>(
        &self,
        read: impl FnOnce(Record<'_>) -> T,
    ) -> Result<Option<T>, PopError> {
        let h = self.header();
        let known =
            h.consumer.peer.load(Ordering::Relaxed) != h.consumer.pos.load(Ordering::Relaxed);
        if !known && self.is_empty_now() {
            return Ok(None);
        }
        let Some(held) = try_hold(&h.consumer.lock) else {
            return Ok(None);
        };
        // The payload is copied out under the lock and handed to `read`
        // after it is released: `read` never sees shared memory.
        let mut copied = Copied::new();
        let taken = self.take_locked(|slot| {
            if slot.kind == LARGE {
                false
            } else {
                self.copy_out(slot, &mut copied);
                true
            }
        });
        drop(held);
        Ok(taken?.map(|inline| {
            if inline {
                read(Record::Inline(copied.bytes()))
            } else {
                read(Record::Large)
            }
        }))
    }

    /// Whether the ring holds no record, for a receiver about to sleep that
    /// has counted itself in [`data_waiters`](Ring::data_waiters).
    pub(crate) fn is_empty(&self) -> bool {
        self.is_empty_settled()
    }

    /// Receivers that sleep elsewhere, waiting for a record.
    pub(crate) fn data_waiters(&self) -> &AtomicU32 {
        &self.header().waits.data_sleepers
    }

    /// Senders that sleep elsewhere, waiting for room.
    pub(crate) fn space_waiters(&self) -> &AtomicU32 {
        &self.header().waits.space_sleepers
    }

    /// Shuts the queue down for every process holding it (Python 3.13's
    /// `Queue.shutdown`): puts fail from now on, gets fail once the ring is
    /// empty, and every sleeper wakes to see it.
    pub(crate) fn shut_down(&self) {
        let h = self.header();
        h.counts.shut.store(1, Ordering::SeqCst);
        for (seq, _) in [
            (&h.waits.data_seq, &h.waits.data_sleepers),
            (&h.waits.space_seq, &h.waits.space_sleepers),
        ] {
            seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(seq, u32::MAX);
        }
    }

    /// The readiness wait of an async get (`crate::aio`): sleeps on the
    /// data word, counted as a sleeper like a blocking get, until the ring
    /// holds a record or is shut down, or `until`; takes nothing. If a
    /// record waits already, the get failed on the consumer lock, which
    /// another process holds: it sleeps on that lock instead, as a
    /// blocking get would. A wake-up meant for one waiter that ended the
    /// sleep is passed on if the task no longer `wanted` it.
    pub(crate) fn wait_for_data(&self, until: Instant, wanted: &dyn Fn() -> bool) {
        let h = self.header();
        if self.is_shut_down() {
            return;
        }
        if !self.is_empty_now() {
            if h.consumer.lock.wait_free(until, Releases::Fenced) && !wanted() {
                h.consumer.lock.wake_one();
            }
            return;
        }
        let waiter = Waiter::new(Policy::counted(0, 0), Some(until));
        let seq = h.waits.data_seq.load(Ordering::SeqCst);
        let slept = waiter.sleep(&h.waits.data_seq, seq, Some(&h.waits.data_sleepers), || {
            self.is_empty_settled() && !self.is_shut_down()
        });
        if slept == Slept::Woken && h.waits.data_seq.load(Ordering::SeqCst) != seq && !wanted() {
            self.wake_consumer();
        }
    }

    /// The readiness wait of an async put: as
    /// [`wait_for_data`](Ring::wait_for_data), until a record of `len`
    /// payload bytes fits (or the ring is shut down), or `until`; on the
    /// producer lock if there is room already.
    pub(crate) fn wait_for_room(&self, len: usize, until: Instant, wanted: &dyn Fn() -> bool) {
        let h = self.header();
        let size = record_size(len);
        let full = || self.place(size, true).is_ok_and(|p| p.is_none()) && !self.is_shut_down();
        if self.is_shut_down() {
            return;
        }
        if !full() {
            if h.producer.lock.wait_free(until, Releases::Fenced) && !wanted() {
                h.producer.lock.wake_one();
            }
            return;
        }
        let waiter = Waiter::new(Policy::counted(0, 0), Some(until));
        let seq = h.waits.space_seq.load(Ordering::SeqCst);
        let slept = waiter.sleep(&h.waits.space_seq, seq, Some(&h.waits.space_sleepers), full);
        if slept == Slept::Woken && h.waits.space_seq.load(Ordering::SeqCst) != seq && !wanted() {
            self.wake_producer();
        }
    }

    /// Whether a consumer holds the consumer lock now (a hint).
    pub(crate) fn consumer_busy(&self) -> bool {
        self.header().consumer.lock.is_held()
    }

    /// Wakes one consumer sleeping for a record, if any sleeps: passes on
    /// a wake-up that a dropped async get was given.
    #[inline]
    pub(crate) fn wake_consumer(&self) {
        let w = &self.header().waits;
        if w.data_sleepers.load(Ordering::SeqCst) > 0 {
            wake_one(&w.data_seq);
        }
    }

    /// Wakes one producer sleeping for room, if any sleeps (as
    /// [`wake_consumer`](Ring::wake_consumer)).
    #[inline]
    pub(crate) fn wake_producer(&self) {
        let w = &self.header().waits;
        if w.space_sleepers.load(Ordering::SeqCst) > 0 {
            wake_one(&w.space_seq);
        }
    }

    /// Whether the queue was shut down (by any process holding it; a
    /// garbage word reads as shut down, which only ends gets and puts).
    #[inline]
    pub(crate) fn is_shut_down(&self) -> bool {
        self.header().counts.shut.load(Ordering::SeqCst) != 0
    }

    /// The presence word of the producer side's process (see [`Presence`](super::wait::Presence)).
    pub(crate) fn producer_presence(&self) -> &AtomicU64 {
        &self.header().presence.producer
    }

    /// The presence word of the consumer side's process (see [`Presence`](super::wait::Presence)).
    pub(crate) fn consumer_presence(&self) -> &AtomicU64 {
        &self.header().presence.consumer
    }
}

#[cfg(test)]
mod tests {
    use super::{DATA_OFFSET, Registration, Ring, WAIT};
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    /// With every slot taken by a live process, a new holder counts itself
    /// unlisted (peers are then never declared gone); once a slot frees it
    /// takes it and uncounts itself, and disconnection is seen again.
    #[test]
    fn a_holder_that_found_the_table_full_is_listed_once_a_slot_frees() {
        let ring = Ring::create(4096, 0).unwrap();
        let a = &ring.header().attached;
        // Process 1 (init, in any pid namespace) with no identity recorded
        // reads as alive, and is not us.
        let fill_with_init = || {
            for (slot, id) in a.pids.iter().zip(&a.ids) {
                slot.store(1, Ordering::Relaxed);
                id.store(0, Ordering::Relaxed);
            }
        };
        fill_with_init();
        let reg = Registration::default();
        let me = reg.ensure(&ring);
        assert_eq!(a.unlisted.load(Ordering::Relaxed), 1);
        assert!(ring.others_alive(me));
        reg.ensure(&ring);
        assert_eq!(a.unlisted.load(Ordering::Relaxed), 1, "counted twice");
        // The other holders go away (detached, or dead: slot reused).
        for slot in &a.pids {
            slot.store(0, Ordering::Relaxed);
        }
        assert!(ring.others_alive(me), "an unlisted holder still counts");
        reg.ensure(&ring);
        assert_eq!(a.unlisted.load(Ordering::Relaxed), 0);
        assert!(!ring.others_alive(me));
        assert!(a.pids.iter().any(|s| s.load(Ordering::Relaxed) == me));
        // An unlisted handle that is dropped uncounts itself.
        fill_with_init();
        let other = Registration::default();
        other.ensure(&ring);
        assert_eq!(a.unlisted.load(Ordering::Relaxed), 1);
        other.release(&ring);
        assert_eq!(a.unlisted.load(Ordering::Relaxed), 0);
    }

    /// The pipe's non-waiting calls on a ring whose header and records
    /// take random writes: only typed results, no panic (a debug build
    /// panics on any arithmetic overflow), and the ring works again after.
    #[test]
    fn try_push_and_try_pop_on_a_garbled_ring_give_typed_results() {
        garbled(|ring, payload| {
            let pushed = match ring.try_push(&[payload]) {
                Ok(pushed) => pushed,
                Err(super::PushError::Corrupted(_)) => return None,
                Err(e) => panic!("try_push: {e:?}"),
            };
            let popped = match ring.try_pop(|r| match r {
                super::Record::Inline(b) => b.len(),
                super::Record::Large => 0,
            }) {
                Ok(popped) => popped.is_some(),
                Err(super::PopError::Corrupted(_)) => return None,
                Err(e) => panic!("try_pop: {e:?}"),
            };
            Some((pushed, popped))
        });
    }

    /// The same with `push` and `pop` (whose fast paths take the small
    /// records), with a deadline that has passed: no call waits.
    #[test]
    fn push_and_pop_on_a_garbled_ring_give_typed_results() {
        garbled(|ring, payload| {
            let now = Some(Instant::now());
            let pushed = push_now(ring, payload)?;
            let mut out = super::Copied::new();
            let popped = match ring.pop(WAIT, now, &|| true, &mut out, |_| ()) {
                Ok(_) => true,
                Err(super::PopError::Empty) => false,
                Err(super::PopError::Corrupted(_)) => return None,
                Err(e) => panic!("pop: {e:?}"),
            };
            Some((pushed, popped))
        });
    }

    /// The same with acknowledged pops (whose fast path copies the small
    /// records into the journal), each acknowledged at once.
    #[test]
    fn push_and_acknowledged_pop_on_a_garbled_ring_give_typed_results() {
        let journal = Ring::create(64 << 10, 0).unwrap();
        garbled(|ring, payload| {
            let now = Some(Instant::now());
            let pushed = push_now(ring, payload)?;
            let mut out = super::Copied::new();
            let popped = ring.pop_delivery(
                now,
                &|| true,
                &mut out,
                &journal,
                |_, _| Ok(Some(())),
                |_| {},
            );
            let popped = match popped {
                Ok(Some(Ok((_, pos)))) => {
                    assert!(journal.journal_done(pos, super::delivery::TAKEN));
                    journal.journal_reclaim_lazily();
                    true
                }
                Ok(None) | Err(super::PopError::Empty) => false,
                Ok(Some(Err(super::PushError::Corrupted(_))))
                | Err(super::PopError::Corrupted(_)) => return None,
                Ok(Some(Err(e))) => panic!("journal: {e:?}"),
                Err(e) => panic!("pop_delivery: {e:?}"),
            };
            Some((pushed, popped))
        });
        // Every delivery taken was acknowledged: one pass reclaims them all.
        journal.journal_reclaim();
        assert!(journal.journal_is_empty(), "{}", journal.journal_summary());
    }

    /// A `push` whose deadline has passed: whether it put the payload, or
    /// `None` if it found the ring corrupted.
    fn push_now(ring: &Ring, payload: &[u8]) -> Option<bool> {
        match ring.push(&[payload], None, Some(Instant::now()), &|| true, false) {
            Ok(()) => Some(true),
            Err(super::PushError::Full) => Some(false),
            Err(super::PushError::Corrupted(_)) => None,
            Err(e) => panic!("push: {e:?}"),
        }
    }

    /// Runs `step` (a push and a pop of the payload given, `None` if one
    /// found the ring corrupted) on a 4 KiB ring while every third round
    /// writes garbage into a header word or the data area; payloads are
    /// small (the fast paths) as often as not. Then checks that the ring
    /// converges once the garbage stops.
    fn garbled(mut step: impl FnMut(&Ring, &[u8]) -> Option<(bool, bool)>) {
        let ring = Ring::create(4096, 0).unwrap();
        let words: Vec<usize> = Ring::layout()
            .into_iter()
            .filter(|(name, _)| !name.ends_with("_lock"))
            .map(|(_, off)| off & !7)
            .collect();
        let base = ring.map.as_ptr();
        let word = |off: usize| {
            // SAFETY: `off` is a multiple of 8 inside the mapping (a header
            // field, or a record header in the data area), which outlives
            // the reference; every access is atomic.
            unsafe { &*base.add(off).cast::<std::sync::atomic::AtomicU64>() }
        };
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut pushed, mut popped, mut corrupted) = (0, 0, 0);
        let payload = [7u8; 3000];
        for round in 0..200_000u32 {
            if round % 3 == 0 {
                let off = if next() % 2 == 0 {
                    words[(next() % words.len() as u64) as usize]
                } else {
                    DATA_OFFSET + (next() % (4096 / 8)) as usize * 8
                };
                let v = match next() % 4 {
                    0 => next(),
                    1 => word(off).load(Ordering::Relaxed).wrapping_add(next() % 16),
                    2 => ((next() % 4) << 32) | (next() % 8192),
                    _ => word(off).load(Ordering::Relaxed) ^ (1 << (next() % 64)),
                };
                word(off).store(v, Ordering::Relaxed);
            }
            let len = if next() % 2 == 0 {
                next() % (super::FAST_PAYLOAD as u64 + 1)
            } else {
                next() % (ring.max_inline() as u64 + 1)
            };
            match step(&ring, &payload[..(len as usize).min(payload.len())]) {
                Some((put, got)) => {
                    pushed += u32::from(put);
                    popped += u32::from(got);
                }
                None => corrupted += 1,
            }
        }
        assert!(pushed > 0 && popped > 0 && corrupted > 0);
        // The garbage has stopped: the ring converges within a few calls.
        let mut ok = false;
        for _ in 0..100 {
            if ring.try_push(&[b"x"]).unwrap_or(false)
                && matches!(
                    ring.try_pop(|r| matches!(r, super::Record::Inline(b"x"))),
                    Ok(Some(true))
                )
            {
                ok = true;
                break;
            }
            let _ = ring.try_pop(|_| ());
        }
        assert!(ok, "the ring did not recover");
    }

    /// An acknowledgement leaves its journal record in place until the
    /// records fill an eighth of the journal; then one pass reclaims every
    /// `DONE` record at the front, so the journal stays bounded however
    /// many deliveries are taken and acknowledged one by one.
    #[test]
    fn acknowledged_records_are_reclaimed_in_batches_and_the_journal_stays_bounded() {
        use super::{JOURNAL_HEAD, delivery, record_size};
        let journal = Ring::create(64 << 10, 0).unwrap();
        let h = journal.header();
        let used =
            || h.producer.pos.load(Ordering::Relaxed) - h.consumer.pos.load(Ordering::Relaxed);
        let limit = journal.capacity() / 8;
        let record = record_size(JOURNAL_HEAD + 8);
        let mut reclaimed = 0;
        for i in 0..20_000u64 {
            let pos = journal
                .journal_append(Some(&i.to_le_bytes()), None)
                .unwrap()
                .expect("room in the journal");
            assert!(journal.journal_done(pos, delivery::TAKEN), "record {i}");
            let before = used();
            journal.journal_reclaim_lazily();
            if used() < before {
                reclaimed += 1;
                assert_eq!(used(), 0, "a pass reclaims every DONE record");
            } else {
                assert!(before < limit, "{before} bytes used, not reclaimed");
            }
            assert!(used() < limit + record);
        }
        // 20,000 records of 56 bytes through an 8 KiB threshold: one pass
        // per 147 or so acknowledgements, not one per acknowledgement.
        assert!((100..=200).contains(&reclaimed), "{reclaimed} passes");
    }
}
