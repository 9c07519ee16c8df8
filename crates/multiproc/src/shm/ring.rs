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
//! * Waiting: yield (no spin: see [`YIELDS`]), then sleep on a futex
//!   sequence word; the other side bumps the word and wakes only if a
//!   sleeper count says someone sleeps. The sleeper re-checks through the
//!   other side's lock word ([`RawLock::observe`]), so no wake-up is lost
//!   while the positions are stored with plain `Release`.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::lock::{RECHECK, RawLock};
use crate::sys::futex;
use crate::sys::shm::Mapping;

const MAGIC: u64 = u64::from_le_bytes(*b"MPRING01");
/// Bytes before the data area (one page).
const DATA_OFFSET: usize = 4096;
/// Record kinds.
const INLINE: u32 = 1;
const PAD: u32 = 2;
const LARGE: u32 = 3;
/// Processes the attachment table can name.
const ATTACH_SLOTS: usize = 60;
/// Yields of the processor, each followed by a check, before a side that
/// finds the ring empty (or full) sleeps: about 350 µs when nothing else
/// wants the processor, for a stream with gaps, and the processor goes at
/// once to whoever wants it. There is no spinning with `pause` first: a
/// side that re-checks every few nanoseconds takes the cache lines of
/// `tail` and of the newest record away from the other side after every
/// message, and on this project's 2-core machines it halved throughput
/// (1 producer to 1 consumer: 8 vs 17 M messages/s; 2 to 2: 10 vs 19 M, with
/// the locks spinning less too). A yield is slow enough (about 0.7 µs) that
/// the other side writes (or reads) several records between two checks.
const YIELDS: u32 = 500;
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
    overflow: AtomicU32,
}

#[repr(C)]
struct Header {
    meta: Meta,
    producer: Side,
    consumer: Side,
    counts: Counts,
    waits: Waits,
    attached: Attached,
}

const _: () = assert!(std::mem::size_of::<Header>() <= DATA_OFFSET);

/// A record handed to a consumer.
#[derive(Debug)]
pub(crate) enum Record<'a> {
    /// A payload stored in the ring.
    Inline(&'a [u8]),
    /// A payload stored out of line, under this id.
    Large(u64),
}

/// Why a push did not happen.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The ring (or the item bound) is full and the deadline passed.
    Full,
    /// Full, and no other holder of the queue is alive to make room.
    Disconnected,
    /// Sending the out-of-line part failed.
    Io(io::Error),
}

/// Why a pop did not happen.
#[derive(Debug)]
pub(crate) enum PopError {
    /// Empty, and the deadline passed.
    Empty,
    /// Empty, and no other holder of the queue is alive to fill it.
    Disconnected,
    /// A record's header is impossible; the ring's contents were dropped.
    Corrupted(String),
}

/// A ring in shared memory.
#[derive(Debug)]
pub(crate) struct Ring {
    map: Mapping,
    capacity: u64,
}

fn record_size(len: usize) -> u64 {
    8 + (len as u64).div_ceil(8) * 8
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
        let ring = Ring { map, capacity: 0 };
        let h = ring.header();
        if h.meta.magic.load(Ordering::Acquire) != MAGIC {
            return Err(bad("bad magic"));
        }
        let capacity = h.meta.capacity.load(Ordering::Relaxed);
        if !capacity.is_power_of_two() || DATA_OFFSET as u64 + capacity != ring.map.len() as u64 {
            return Err(bad("inconsistent capacity"));
        }
        Ok(Ring { capacity, ..ring })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least DATA_OFFSET bytes (checked at
        // create/attach), page-aligned, and Header (all atomics) fits in
        // DATA_OFFSET; atomics may be shared between processes.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

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
    pub(crate) fn max_inline(&self) -> usize {
        (self.capacity / 2) as usize - 8
    }

    /// Records put and not yet got (approximate while others work).
    pub(crate) fn len(&self) -> u64 {
        let h = self.header();
        h.producer
            .count
            .load(Ordering::Acquire)
            .saturating_sub(h.consumer.count.load(Ordering::Acquire))
    }

    /// The bound on records, 0 for none.
    pub(crate) fn max_items(&self) -> u64 {
        self.header().meta.max_items.load(Ordering::Relaxed)
    }

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

    /// Free bytes needed at `tail` for a record of `size` (with the PAD
    /// that may precede it), and whether it fits now.
    fn fits(&self, tail: u64, size: u64, fresh: bool) -> (bool, u64) {
        let h = self.header();
        let to_end = self.capacity - (tail & (self.capacity - 1));
        let need = if size > to_end { to_end + size } else { size };
        if fresh {
            // A producer about to sleep, counted as a waiter: see
            // `is_empty_settled`, the other way round. Before both reads
            // that a consumer changes: the item count and `head`.
            h.consumer.lock.observe();
        }
        let items_ok = {
            let max = h.meta.max_items.load(Ordering::Relaxed);
            max == 0 || self.len() < max
        };
        if !items_ok {
            return (false, to_end);
        }
        // `head` only grows: if the cached copy leaves room, so does the
        // real one.
        let cached = h.producer.peer.load(Ordering::Relaxed);
        if !fresh && cached <= tail && self.capacity - (tail - cached) >= need {
            return (true, to_end);
        }
        let head = h.consumer.pos.load(Ordering::Acquire);
        if !fresh {
            h.producer.peer.store(head, Ordering::Relaxed);
        }
        (self.capacity - (tail - head) >= need, to_end)
    }

    /// Writes `header` and `parts` at ring position `pos` (no wrap).
    fn write_at(&self, pos: u64, header: u64, parts: &[&[u8]]) {
        let off = (pos & (self.capacity - 1)) as usize;
        // SAFETY: the caller holds the producer lock and checked that
        // `[pos, pos + record_size)` is free and does not wrap; no other
        // process reads or writes those bytes until `tail` passes them.
        unsafe {
            let dst = self.data().add(off);
            std::ptr::copy_nonoverlapping(header.to_le_bytes().as_ptr(), dst, 8);
            let mut at = 8;
            for p in parts {
                copy_chunked(p, dst.add(at));
                at += p.len();
            }
        }
    }

    /// Appends one record: `parts` inline, or (with `large`) an out-of-line
    /// record whose id `large` receives under the producer lock, before the
    /// record is published (so that ids and records stay in one order).
    pub(crate) fn push(
        &self,
        parts: &[&[u8]],
        large: Option<&mut dyn FnMut(u64) -> io::Result<()>>,
        deadline: Option<Instant>,
        connected: &dyn Fn() -> bool,
        joinable: bool,
    ) -> Result<(), PushError> {
        let h = self.header();
        let len: usize = if large.is_some() {
            8
        } else {
            parts.iter().map(|p| p.len()).sum()
        };
        let size = record_size(len);
        debug_assert!(size <= self.capacity / 2 + 8 || large.is_some());
        let mut large = large;
        let mut yields = 0u32;
        loop {
            let _ = h.producer.lock.lock_with(LOCK_SPINS);
            let tail = h.producer.pos.load(Ordering::Relaxed);
            let (fits, to_end) = self.fits(tail, size, false);
            if fits {
                let mut tail = tail;
                if size > to_end {
                    self.write_at(tail, u64::from(PAD) << 32 | (to_end - 8), &[]);
                    tail += to_end;
                }
                if joinable {
                    h.counts.unfinished.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(send) = large.as_mut() {
                    let id = h.producer.large_seq.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = send(id) {
                        if joinable {
                            h.counts.unfinished.fetch_sub(1, Ordering::SeqCst);
                        }
                        h.producer.lock.unlock();
                        return Err(PushError::Io(e));
                    }
                    self.write_at(tail, u64::from(LARGE) << 32 | 8, &[&id.to_le_bytes()]);
                } else {
                    self.write_at(tail, u64::from(INLINE) << 32 | len as u64, parts);
                }
                let put = h.producer.count.load(Ordering::Relaxed);
                h.producer.count.store(put + 1, Ordering::Release);
                // Release, not SeqCst: the unlock below orders it for a
                // consumer about to sleep (see `is_empty_settled`).
                h.producer.pos.store(tail + size, Ordering::Release);
                h.producer.lock.unlock();
                if h.waits.data_sleepers.load(Ordering::SeqCst) > 0 {
                    h.waits.data_seq.fetch_add(1, Ordering::SeqCst);
                    futex::wake(&h.waits.data_seq, 1);
                }
                return Ok(());
            }
            h.producer.lock.unlock();
            // Full: yield, then sleep until a consumer makes room.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(PushError::Full);
            }
            if yields < YIELDS {
                futex::yield_now();
                yields += 1;
                continue;
            }
            let seq = h.waits.space_seq.load(Ordering::SeqCst);
            h.waits.space_sleepers.fetch_add(1, Ordering::SeqCst);
            let tail = h.producer.pos.load(Ordering::Relaxed);
            let woke = if self.fits(tail, size, true).0 {
                futex::Wake::Woken
            } else {
                futex::wait(&h.waits.space_seq, seq, Some(until(deadline)))
            };
            h.waits.space_sleepers.fetch_sub(1, Ordering::SeqCst);
            if woke == futex::Wake::TimedOut {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(PushError::Full);
                }
                if !connected() {
                    return Err(PushError::Disconnected);
                }
            }
        }
    }

    /// Removes the oldest record and hands it to `read` (under the consumer
    /// lock, so out-of-line parts can be fetched in order).
    pub(crate) fn pop<T>(
        &self,
        deadline: Option<Instant>,
        connected: &dyn Fn() -> bool,
        mut read: impl FnMut(Record<'_>) -> T,
    ) -> Result<T, PopError> {
        let h = self.header();
        let mut yields = 0u32;
        loop {
            // Known non-empty from our own cache line, or else ask.
            let known =
                h.consumer.peer.load(Ordering::Relaxed) != h.consumer.pos.load(Ordering::Relaxed);
            if known || !self.is_empty_now() {
                let _ = h.consumer.lock.lock_with(LOCK_SPINS);
                let out = self.pop_locked(&mut read);
                h.consumer.lock.unlock();
                match out {
                    Ok(Some(v)) => {
                        if h.waits.space_sleepers.load(Ordering::SeqCst) > 0 {
                            h.waits.space_seq.fetch_add(1, Ordering::SeqCst);
                            futex::wake(&h.waits.space_seq, 1);
                        }
                        return Ok(v);
                    }
                    Ok(None) => continue,
                    Err(e) => return Err(e),
                }
            }
            // Empty: yield, then sleep until a producer publishes.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(PopError::Empty);
            }
            if yields < YIELDS {
                futex::yield_now();
                yields += 1;
                continue;
            }
            let seq = h.waits.data_seq.load(Ordering::SeqCst);
            h.waits.data_sleepers.fetch_add(1, Ordering::SeqCst);
            let woke = if self.is_empty_settled() {
                futex::wait(&h.waits.data_seq, seq, Some(until(deadline)))
            } else {
                futex::Wake::Woken
            };
            h.waits.data_sleepers.fetch_sub(1, Ordering::SeqCst);
            if woke == futex::Wake::TimedOut && self.is_empty_now() {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(PopError::Empty);
                }
                if !connected() {
                    return Err(PopError::Disconnected);
                }
            }
        }
    }

    /// Pops without waiting; `Ok(None)` if only padding (or nothing) was
    /// there. The caller holds the consumer lock.
    fn pop_locked<T>(&self, read: &mut impl FnMut(Record<'_>) -> T) -> Result<Option<T>, PopError> {
        let h = self.header();
        let mut head = h.consumer.pos.load(Ordering::Relaxed);
        loop {
            // Records up to the cached `tail` were published when it was
            // read (Acquire); re-read only when we have caught up with it.
            let mut tail = h.consumer.peer.load(Ordering::Relaxed);
            if head == tail || tail < head {
                tail = h.producer.pos.load(Ordering::Acquire);
                h.consumer.peer.store(tail, Ordering::Relaxed);
            }
            if head == tail {
                h.consumer.pos.store(head, Ordering::Release);
                return Ok(None);
            }
            let off = (head & (self.capacity - 1)) as usize;
            let mut word = [0u8; 8];
            // SAFETY: `head < tail`, so a whole record starts at `off` and
            // is published (Acquire on `tail`); producers do not touch it
            // until `head` passes it, and we hold the consumer lock.
            unsafe { std::ptr::copy_nonoverlapping(self.data().add(off), word.as_mut_ptr(), 8) };
            let word = u64::from_le_bytes(word);
            let (kind, len) = ((word >> 32) as u32, (word & 0xffff_ffff) as usize);
            let size = record_size(len);
            let to_end = self.capacity - off as u64;
            if size > to_end || size > tail - head || !matches!(kind, INLINE | PAD | LARGE) {
                // Nothing we wrote looks like this: drop what is in flight
                // rather than read garbage forever.
                h.consumer.pos.store(tail, Ordering::Release);
                return Err(PopError::Corrupted(format!(
                    "record of kind {kind} and length {len} at offset {off}"
                )));
            }
            if kind == PAD {
                head += size;
                continue;
            }
            let out = if kind == LARGE {
                let mut id = [0u8; 8];
                // SAFETY: as above; the record holds 8 payload bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(self.data().add(off + 8), id.as_mut_ptr(), 8)
                };
                read(Record::Large(u64::from_le_bytes(id)))
            } else {
                // SAFETY: as above: the payload bytes are published and stay
                // unchanged while we hold the consumer lock and `head` has
                // not passed them; the slice does not outlive this call.
                let payload = unsafe { std::slice::from_raw_parts(self.data().add(off + 8), len) };
                read(Record::Inline(payload))
            };
            let got = h.consumer.count.load(Ordering::Relaxed);
            h.consumer.count.store(got + 1, Ordering::Release);
            // Release: the unlock orders it for a producer about to sleep.
            h.consumer.pos.store(head + size, Ordering::Release);
            return Ok(Some(out));
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
        loop {
            let seq = h.waits.join_seq.load(Ordering::SeqCst);
            h.waits.join_sleepers.fetch_add(1, Ordering::SeqCst);
            let done = h.counts.unfinished.load(Ordering::SeqCst) == 0;
            let woke = if done {
                futex::Wake::Woken
            } else {
                futex::wait(&h.waits.join_seq, seq, Some(until(deadline)))
            };
            h.waits.join_sleepers.fetch_sub(1, Ordering::SeqCst);
            if h.counts.unfinished.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if woke == futex::Wake::TimedOut && deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
        }
    }

    /// Records that process `pid` holds the queue. False if the table is
    /// full (then peers of this queue are never declared gone).
    pub(crate) fn attach_pid(&self, pid: u32) -> bool {
        let a = &self.header().attached;
        for slot in &a.pids {
            let cur = slot.load(Ordering::Relaxed);
            if cur == pid {
                return true;
            }
            if (cur == 0 || !futex::is_alive(cur))
                && slot
                    .compare_exchange(cur, pid, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                return true;
            }
        }
        a.overflow.store(1, Ordering::SeqCst);
        false
    }

    /// Records that process `pid` no longer holds the queue.
    pub(crate) fn detach_pid(&self, pid: u32) {
        for slot in &self.header().attached.pids {
            let _ = slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::Relaxed);
        }
    }

    /// Whether a process other than `me` that holds the queue is alive.
    pub(crate) fn others_alive(&self, me: u32) -> bool {
        let a = &self.header().attached;
        a.overflow.load(Ordering::SeqCst) != 0
            || a.pids.iter().any(|s| {
                let pid = s.load(Ordering::SeqCst);
                pid != 0 && pid != me && futex::is_alive(pid)
            })
    }
}

/// The non-blocking side of the ring, for callers that wait elsewhere than
/// on the ring's futexes (the shared-memory pipe waits in `poll` on a
/// socket, so that `wait` can watch many connections at once).
///
/// These calls never sleep and never wake anyone. A caller that waits
/// elsewhere counts itself in [`data_waiters`](Ring::data_waiters) or
/// [`space_waiters`](Ring::space_waiters) before it re-checks the ring and
/// sleeps; the other side, after a `try_push` or `try_pop`, reads the count
/// (`SeqCst`) and wakes it its own way. The re-checks go through
/// [`RawLock::observe`], so either the sleeper sees the change or the other
/// side sees the sleeper.
impl Ring {
    /// Appends one inline record made of `parts` if it fits now; `false`
    /// if the ring is full. The record must be at most
    /// [`max_inline`](Ring::max_inline) bytes.
    pub(crate) fn try_push(&self, parts: &[&[u8]]) -> bool {
        let h = self.header();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert!(len <= self.max_inline());
        let size = record_size(len);
        let _ = h.producer.lock.lock_with(LOCK_SPINS);
        let mut tail = h.producer.pos.load(Ordering::Relaxed);
        let (fits, to_end) = self.fits(tail, size, false);
        if fits {
            if size > to_end {
                self.write_at(tail, u64::from(PAD) << 32 | (to_end - 8), &[]);
                tail += to_end;
            }
            self.write_at(tail, u64::from(INLINE) << 32 | len as u64, parts);
            let put = h.producer.count.load(Ordering::Relaxed);
            h.producer.count.store(put + 1, Ordering::Release);
            h.producer.pos.store(tail + size, Ordering::Release);
        }
        h.producer.lock.unlock();
        fits
    }

    /// Whether a record of `len` payload bytes fits now, for a sender about
    /// to sleep that has counted itself in
    /// [`space_waiters`](Ring::space_waiters).
    pub(crate) fn has_room_for(&self, len: usize) -> bool {
        let tail = self.header().producer.pos.load(Ordering::Acquire);
        self.fits(tail, record_size(len), true).0
    }

    /// Removes the oldest record, if there is one, and hands it to `read`
    /// under the consumer lock. `Ok(None)`: the ring is empty.
    pub(crate) fn try_pop<T>(
        &self,
        mut read: impl FnMut(Record<'_>) -> T,
    ) -> Result<Option<T>, PopError> {
        let h = self.header();
        let known =
            h.consumer.peer.load(Ordering::Relaxed) != h.consumer.pos.load(Ordering::Relaxed);
        if !known && self.is_empty_now() {
            return Ok(None);
        }
        let _ = h.consumer.lock.lock_with(LOCK_SPINS);
        let out = self.pop_locked(&mut read);
        h.consumer.lock.unlock();
        out
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
}

/// Copies `src` to `dst`, large copies in pieces (see
/// [`crate::wire::codec::COPY_CHUNK`]: a single `memcpy` of a few KiB or
/// more can be 20 times slower at some relative alignments).
///
/// # Safety
/// `dst` must be valid for `src.len()` bytes of writes and not overlap
/// `src`.
unsafe fn copy_chunked(src: &[u8], dst: *mut u8) {
    use crate::wire::codec::{CHUNKED_ABOVE, COPY_CHUNK};
    let n = src.len();
    if n <= 16 {
        // The usual small message (a number, a short string): a few moves
        // instead of a call to `memcpy`, which took a tenth of a put and a
        // get of a `u64`.
        // SAFETY: the caller's contract, passed on.
        unsafe { copy_short(src, dst) };
        return;
    }
    if n <= CHUNKED_ABOVE {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        return;
    }
    for (i, piece) in src.chunks(COPY_CHUNK).enumerate() {
        // SAFETY: piece `i` starts `i * COPY_CHUNK` bytes into `src`, and
        // the caller's contract covers `dst` for all of `src.len()`.
        unsafe {
            std::ptr::copy_nonoverlapping(piece.as_ptr(), dst.add(i * COPY_CHUNK), piece.len())
        };
    }
}

/// Copies `src` (at most 16 bytes) to `dst` with two overlapping moves of
/// 8 or 4 bytes, or byte by byte below 4.
///
/// # Safety
/// As [`copy_chunked`]: `dst` must be valid for `src.len()` bytes of
/// writes and not overlap `src`.
unsafe fn copy_short(src: &[u8], dst: *mut u8) {
    let n = src.len();
    debug_assert!(n <= 16);
    let p = src.as_ptr();
    if n >= 8 {
        // SAFETY: `8 <= n`: bytes `0..8` and `n - 8..n` are inside `src`,
        // and inside `dst` by the caller's contract; unaligned moves of
        // plain bytes.
        unsafe {
            let first = p.cast::<u64>().read_unaligned();
            let last = p.add(n - 8).cast::<u64>().read_unaligned();
            dst.cast::<u64>().write_unaligned(first);
            dst.add(n - 8).cast::<u64>().write_unaligned(last);
        }
    } else if n >= 4 {
        // SAFETY: as above, with 4-byte moves and `4 <= n`.
        unsafe {
            let first = p.cast::<u32>().read_unaligned();
            let last = p.add(n - 4).cast::<u32>().read_unaligned();
            dst.cast::<u32>().write_unaligned(first);
            dst.add(n - 4).cast::<u32>().write_unaligned(last);
        }
    } else {
        for (i, b) in src.iter().enumerate() {
            // SAFETY: `i < n`, inside `dst` by the caller's contract.
            unsafe { dst.add(i).write(*b) };
        }
    }
}

/// When a sleeper wakes up to check its peers: the deadline, or one
/// re-check interval from now.
fn until(deadline: Option<Instant>) -> Instant {
    let recheck = Instant::now() + RECHECK;
    deadline.map_or(recheck, |d| d.min(recheck))
}

#[cfg(test)]
mod tests {
    use super::copy_chunked;

    #[test]
    fn copies_of_every_small_size_and_some_large_ones_are_exact() {
        let src: Vec<u8> = (0..=255u8).cycle().take(20_000).collect();
        for n in (0..=40).chain([4095, 4096, 4097, 10_007, 20_000]) {
            let mut dst = vec![0xeeu8; n + 16];
            // SAFETY: `dst` has `n + 16` bytes, from offset 8 it holds `n`;
            // it does not overlap `src`.
            unsafe { copy_chunked(&src[..n], dst.as_mut_ptr().add(8)) };
            assert_eq!(&dst[8..8 + n], &src[..n], "size {n}");
            assert!(dst[..8].iter().all(|&b| b == 0xee), "size {n}: before");
            assert!(dst[8 + n..].iter().all(|&b| b == 0xee), "size {n}: after");
        }
    }
}
