//! A queue whose shared memory is written by a hostile (or broken) peer, a
//! consumer whose `Deserialize` panics, a peer stopped while holding a side
//! lock, and more holders than the attachment table names: every call
//! returns a typed result by its deadline, nothing is read or written
//! outside the ring's mapping, and the queue keeps working.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::__bench::{RING_DATA_OFFSET, queue_ring_fd, ring_layout, wedge_queue_lock};
use multiproc::{
    GetError, GetTimeoutError, JoinError, Process, PutFailure, PutTimeoutError, Queue,
    SharedMemory, Signal, StartMethod, TryGetError, TryPutError,
};
use serde::{Deserialize, Deserializer, Serialize};

/// A small xorshift generator: the tests need no cryptographic quality,
/// only many different values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A second, independent mapping of a queue's ring, as a peer holding the
/// queue has.
struct PeerMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for PeerMapping {}
// SAFETY: as above.
unsafe impl Sync for PeerMapping {}

impl PeerMapping {
    fn of<T>(q: &Queue<T>) -> PeerMapping {
        let fd = queue_ring_fd(q);
        let len = std::fs::File::from(fd.try_clone_to_owned().unwrap())
            .metadata()
            .unwrap()
            .len() as usize;
        // SAFETY: mapping a memfd we hold, shared, at an address the kernel
        // picks; nothing of ours is overwritten.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        PeerMapping {
            ptr: ptr.cast(),
            len,
        }
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= self.len);
        // SAFETY: in bounds and aligned (checked); the mapping lives as
        // long as `self`, and every process accesses it atomically.
        unsafe { &*self.ptr.add(off).cast::<AtomicU64>() }
    }

    fn byte(&self, off: usize) -> &AtomicU8 {
        assert!(off < self.len);
        // SAFETY: as above.
        unsafe { &*self.ptr.add(off).cast::<AtomicU8>() }
    }
}

impl Drop for PeerMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `of` mapped; no reference into it
        // outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A block of shared memory filled with a pattern, to be placed next to
/// the ring's mapping: a stray write shows as a changed byte.
struct Guard(SharedMemory);

const GUARD_BYTE: u8 = 0x5a;

impl Guard {
    fn new() -> Guard {
        let shm = SharedMemory::create(64 << 10).unwrap();
        shm.write(0, &vec![GUARD_BYTE; shm.size()]).unwrap();
        Guard(shm)
    }

    fn assert_intact(&self) {
        let mut bytes = vec![0u8; self.0.size()];
        self.0.read(0, &mut bytes).unwrap();
        let bad = bytes.iter().position(|&b| b != GUARD_BYTE);
        assert_eq!(bad, None, "a guard block next to the ring was written");
    }
}

/// The address range where this process maps the file behind `fd`, from
/// `/proc/self/maps`.
fn mapped_range(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::File::from(fd.try_clone_to_owned().ok()?)
        .metadata()
        .ok()?
        .ino()
        .to_string();
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(4) != Some(&ino.as_str()) || !line.contains("/memfd:") {
            return None;
        }
        let (start, end) = fields[0].split_once('-')?;
        Some((
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        ))
    })
}

/// Outcomes of the operations a participant made while the ring was being
/// corrupted: every call returns one of these (a panic or a crash fails
/// the test), by its deadline.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Tally {
    puts: u64,
    gets: u64,
    empty_or_full: u64,
    corrupted: u64,
    decode: u64,
    other: u64,
    /// The longest any single call took, in microseconds.
    slowest_us: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.puts += o.puts;
        self.gets += o.gets;
        self.empty_or_full += o.empty_or_full;
        self.corrupted += o.corrupted;
        self.decode += o.decode;
        self.other += o.other;
        self.slowest_us = self.slowest_us.max(o.slowest_us);
    }
}

const OP_TIMEOUT: Duration = Duration::from_millis(20);

/// One round of a participant: a put and a get of random sizes (some too
/// large for the ring, so they go out of line), with timeouts or without
/// waiting.
fn churn_once(q: &Queue<Vec<u8>>, rng: &mut Rng, t: &mut Tally) {
    let len = if rng.below(20) == 0 {
        2100 + rng.below(3000) as usize
    } else {
        rng.below(200) as usize
    };
    let value = vec![rng.next() as u8; len];
    let start = Instant::now();
    let put = if rng.below(4) == 0 {
        q.try_put(value).map_err(|e| match e {
            TryPutError::Full(_) => None,
            TryPutError::Failed(e) => Some(e.reason),
        })
    } else {
        q.put_timeout(value, OP_TIMEOUT).map_err(|e| match e {
            PutTimeoutError::Timeout(_) => None,
            PutTimeoutError::Failed(e) => Some(e.reason),
        })
    };
    match put {
        Ok(()) => t.puts += 1,
        Err(None) => t.empty_or_full += 1,
        Err(Some(PutFailure::Corrupted(_))) => t.corrupted += 1,
        Err(Some(_)) => t.other += 1,
    }
    let start_get = Instant::now();
    let got = if rng.below(4) == 0 {
        q.try_get().map_err(|e| match e {
            TryGetError::Empty => None,
            TryGetError::Failed(e) => Some(e),
        })
    } else {
        q.get_timeout(OP_TIMEOUT).map_err(|e| match e {
            GetTimeoutError::Timeout => None,
            GetTimeoutError::Failed(e) => Some(e),
        })
    };
    match got {
        Ok(_) => t.gets += 1,
        Err(None) => t.empty_or_full += 1,
        Err(Some(GetError::Corrupted(_))) => t.corrupted += 1,
        Err(Some(GetError::Decode(_))) => t.decode += 1,
        Err(Some(_)) => t.other += 1,
    }
    let slowest = (start_get - start).max(start_get.elapsed());
    t.slowest_us = t.slowest_us.max(slowest.as_micros() as u64);
}

/// A participant in another process: churns until the parent sets the
/// first byte of `stop`.
fn churn_child((q, stop, seed): (Queue<Vec<u8>>, SharedMemory, u64)) -> Tally {
    let mut rng = Rng(seed);
    let mut t = Tally::default();
    stop.as_atomic_u64()[1].store(1, Ordering::Relaxed);
    while stop.as_atomic_u64()[0].load(Ordering::Relaxed) == 0 {
        churn_once(&q, &mut rng, &mut t);
    }
    t
}

/// Writes one random corruption into the ring: a header word (positions,
/// cached positions, counts, ids, wait words, the attachment table) or
/// record bytes, with a random value, a small change, a flipped bit, or
/// another word's value.
fn corrupt(m: &PeerMapping, fields: &[usize], rng: &mut Rng) {
    let choice = rng.below(10);
    if choice < 5 {
        let off = fields[rng.below(fields.len() as u64) as usize];
        let w = m.word(off);
        let old = w.load(Ordering::Relaxed);
        let new = match rng.below(6) {
            0 => rng.next(),
            1 => old.wrapping_add(rng.below(16)),
            2 => old.wrapping_sub(rng.below(16)),
            3 => old ^ (1 << rng.below(64)),
            4 => m
                .word(fields[rng.below(fields.len() as u64) as usize])
                .load(Ordering::Relaxed),
            _ => [0, u64::MAX, u64::MAX - 7, 1 << 62, 1 << 63][rng.below(5) as usize],
        };
        w.store(new, Ordering::Relaxed);
    } else {
        let data = m.len - RING_DATA_OFFSET;
        if choice < 8 {
            // A record header: kind and length.
            let off = RING_DATA_OFFSET + (rng.below(data as u64 / 8) as usize) * 8;
            let w = m.word(off);
            let new = match rng.below(4) {
                0 => rng.next(),
                1 => (rng.below(5) << 32) | rng.below(data as u64 * 2),
                2 => w.load(Ordering::Relaxed) ^ (1 << rng.below(64)),
                _ => (rng.below(4) << 32) | (u64::from(u32::MAX) - rng.below(16)),
            };
            w.store(new, Ordering::Relaxed);
        } else {
            let off = RING_DATA_OFFSET + rng.below(data as u64) as usize;
            m.byte(off).store(rng.next() as u8, Ordering::Relaxed);
        }
    }
}

/// Random bytes written into a live ring's header and records through a
/// second mapping, while two producer-consumer threads here and one child
/// process put and get: 1,000,000 rounds. No crash, no byte changed in the
/// neighbouring shared-memory blocks, every call returns a typed result by
/// its deadline, and once the writes stop the queue works again.
#[test]
fn random_writes_into_the_ring_give_only_typed_errors() {
    deadline(LIMIT, || {
        // A small ring: records wrap (with padding) often, and values over
        // 2 KiB go out of line. Guard blocks are mapped right before and
        // after it (the kernel usually places consecutive mappings next to
        // each other; retried if another thread's mapping came between).
        let (before, q, after) = (0..50)
            .find_map(|_| {
                let before = Guard::new();
                let q: Queue<Vec<u8>> = Queue::builder().ring_bytes(4096).build().unwrap();
                let after = Guard::new();
                let ring = mapped_range(queue_ring_fd(&q))?;
                let touching = |g: &Guard| {
                    mapped_range(g.0.as_fd())
                        .is_some_and(|(start, end)| start == ring.1 || end == ring.0)
                };
                // Under ThreadSanitizer (`.ci/tsan`) the kernel's placement
                // is the sanitizer's: the blocks are checked wherever they
                // are.
                let anywhere = std::env::var_os("MULTIPROC_TSAN").is_some();
                (anywhere || touching(&before) || touching(&after)).then_some((before, q, after))
            })
            .expect("no guard block could be mapped next to the ring");
        let stop = SharedMemory::create(4096).unwrap();
        let child = Process::builder()
            .start_method(StartMethod::Fork)
            .spawn(churn_child, (q.clone(), stop.clone(), 0x9e37_79b9))
            .unwrap();
        // The child attaches before the header is garbage (attaching then
        // would be refused, a typed error too, but it should take part).
        let end = Instant::now() + Duration::from_secs(20);
        while stop.as_atomic_u64()[1].load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < end, "the child did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        let peer = PeerMapping::of(&q);
        let fields: Vec<usize> = ring_layout()
            .into_iter()
            .filter(|(name, _)| !name.ends_with("_lock"))
            .map(|(_, off)| off & !7)
            .collect();
        let running = Arc::new(AtomicBool::new(true));
        let workers: Vec<_> = (0..2u64)
            .map(|i| {
                let (q, running) = (q.clone(), Arc::clone(&running));
                std::thread::spawn(move || {
                    let mut rng = Rng(0x2545_f491_4f6c_dd1d + i);
                    let mut t = Tally::default();
                    while running.load(Ordering::Relaxed) {
                        churn_once(&q, &mut rng, &mut t);
                    }
                    t
                })
            })
            .collect();
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        for round in 0..1_000_000u32 {
            corrupt(&peer, &fields, &mut rng);
            if round % 64 == 0 {
                // Let the participants run between bursts of writes.
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        running.store(false, Ordering::Relaxed);
        stop.as_atomic_u64()[0].store(1, Ordering::Relaxed);
        let mut total = Tally::default();
        for w in workers {
            total.add(&w.join().expect("a participant thread panicked"));
        }
        let from_child = child.join().expect("the child participant failed");
        total.add(&from_child);
        eprintln!("outcomes: {total:?}");
        before.assert_intact();
        after.assert_intact();
        assert!(total.corrupted > 0, "no corruption was ever reported");
        assert!(total.puts > 0 && total.gets > 0, "nothing got through");
        assert!(
            total.slowest_us < 2_000_000,
            "a call with a {OP_TIMEOUT:?} deadline took {} µs",
            total.slowest_us
        );
        // The writes have stopped: the ring repairs itself, and a value put
        // now comes out (after whatever garbage is still in flight).
        let marker = b"after the storm".to_vec();
        let end = Instant::now() + Duration::from_secs(10);
        'recovered: loop {
            assert!(Instant::now() < end, "the queue did not recover");
            if q.put_timeout(marker.clone(), OP_TIMEOUT).is_err() {
                continue;
            }
            while let Ok(v) = q.get_timeout(OP_TIMEOUT) {
                if v == marker {
                    break 'recovered;
                }
            }
        }
        before.assert_intact();
        after.assert_intact();
    });
}

/// A value whose `Deserialize` panics for 0, like a user's type with a bug.
#[derive(Debug, PartialEq, Serialize)]
struct Boom(u32);

impl<'de> Deserialize<'de> for Boom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        assert!(n != 0, "Boom's Deserialize panics for 0");
        Ok(Boom(n))
    }
}

fn get_one_within(q: Queue<Boom>) -> Result<u32, String> {
    match q.get_timeout(Duration::from_secs(3)) {
        Ok(b) => Ok(b.0),
        Err(e) => Err(e.to_string()),
    }
}

/// A consumer's `Deserialize` panics (and its thread goes on): another
/// consumer, in another process, still gets the next value at once, and
/// the queue keeps working for the panicking one too.
#[test]
fn a_panicking_deserialize_holds_up_no_other_consumer() {
    deadline(LIMIT, || {
        let q: Queue<Boom> = Queue::new().unwrap();
        for n in [0, 1, 2] {
            q.put(Boom(n)).unwrap();
        }
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| q.get()));
        assert!(panicked.is_err(), "Boom(0) did not panic");
        let child = Process::builder()
            .start_method(StartMethod::Fork)
            .spawn(get_one_within, q.clone())
            .unwrap();
        let got = child
            .join_timeout(Duration::from_secs(10))
            .expect("the other consumer did not return by its deadline");
        assert_eq!(got, Ok(1));
        assert_eq!(q.get_timeout(Duration::from_secs(3)).unwrap(), Boom(2));
        q.put(Boom(3)).unwrap();
        assert_eq!(q.try_get().unwrap(), Boom(3));
    });
}

/// A value carrying a handle (so it travels out of line) whose
/// `Deserialize` panics before it claims the handle.
#[derive(Serialize, Deserialize)]
struct Carrier {
    boom: Boom,
    queue: Queue<u8>,
}

/// A panic in the `Deserialize` of a value that carries handles leaves no
/// decode context behind: a later attempt to decode a handle outside
/// multiproc (here with serde_json) is refused instead of being handed the
/// dead message's descriptors, and the queue keeps working.
#[test]
fn a_panicking_deserialize_leaves_no_decode_context_behind() {
    deadline(LIMIT, || {
        let q: Queue<Carrier> = Queue::new().unwrap();
        let inner: Queue<u8> = Queue::new().unwrap();
        q.put(Carrier {
            boom: Boom(0),
            queue: inner.clone(),
        })
        .unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| q.get()));
        assert!(panicked.is_err(), "Boom(0) did not panic");
        let outside = serde_json::from_str::<Queue<u8>>("[0, 1, 2, false]");
        assert!(
            outside.is_err(),
            "a handle was decoded outside multiproc from a dead message's descriptors"
        );
        q.put(Carrier {
            boom: Boom(7),
            queue: inner.clone(),
        })
        .unwrap();
        let got = q.get_timeout(Duration::from_secs(3)).unwrap();
        assert_eq!(got.boom, Boom(7));
        got.queue.put(9).unwrap();
        assert_eq!(inner.get_timeout(Duration::from_secs(3)).unwrap(), 9);
    });
}

/// Takes a side lock of the queue and stops itself (SIGSTOP), as a peer
/// stopped by a debugger or a job-control signal while holding it would.
fn wedge_and_stop((q, consumer): (Queue<u64>, bool)) {
    wedge_queue_lock(&q, consumer);
    common::send_signal(std::process::id() as i32, libc::SIGSTOP);
    loop {
        std::thread::park();
    }
}

fn wedged_child(q: &Queue<u64>, consumer: bool) -> Process<()> {
    let child = Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(wedge_and_stop, (q.clone(), consumer))
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while common::state(child.pid()) != Some('T') {
        assert!(Instant::now() < end, "the child did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn assert_returns_by(what: &str, timeout: Duration, took: Duration) {
    assert!(
        took < timeout + Duration::from_secs(1),
        "{what} with a deadline of {timeout:?} took {took:?}"
    );
}

fn kill_and_reap(child: Process<()>) {
    let pid = child.pid();
    child.kill().unwrap();
    match child.join_timeout(Duration::from_secs(10)) {
        Err(multiproc::JoinTimeoutError::Failed(JoinError::Signaled { signal, .. })) => {
            assert_eq!(signal, Signal::KILL)
        }
        other => panic!("the stopped child ended with {other:?}"),
    }
    common::assert_gone(pid);
}

/// A process stopped while it holds the consumer lock, with values queued:
/// `get_timeout` and `try_get` return by their deadlines; once the holder
/// is killed, the lock is recovered and the values come out.
#[test]
fn gets_return_by_their_deadline_while_a_stopped_peer_holds_the_consumer_lock() {
    deadline(LIMIT, || {
        let q: Queue<u64> = Queue::new().unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        let child = wedged_child(&q, true);
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        assert!(matches!(
            q.get_timeout(timeout),
            Err(GetTimeoutError::Timeout)
        ));
        assert_returns_by("get_timeout", timeout, start.elapsed());
        let start = Instant::now();
        assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
        assert_returns_by("try_get", Duration::ZERO, start.elapsed());
        // The producer side is free: puts go on.
        q.put_timeout(3, timeout).unwrap();
        kill_and_reap(child);
        for want in 1..=3 {
            assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), want);
        }
    });
}

/// The same with the producer lock: `put_timeout` and `try_put` return by
/// their deadlines, giving the value back.
#[test]
fn puts_return_by_their_deadline_while_a_stopped_peer_holds_the_producer_lock() {
    deadline(LIMIT, || {
        let q: Queue<u64> = Queue::new().unwrap();
        q.put(1).unwrap();
        let child = wedged_child(&q, false);
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        match q.put_timeout(2, timeout) {
            Err(PutTimeoutError::Timeout(v)) => assert_eq!(v, 2),
            other => panic!("put_timeout gave {other:?}"),
        }
        assert_returns_by("put_timeout", timeout, start.elapsed());
        let start = Instant::now();
        match q.try_put(3) {
            Err(TryPutError::Full(v)) => assert_eq!(v, 3),
            other => panic!("try_put gave {other:?}"),
        }
        assert_returns_by("try_put", Duration::ZERO, start.elapsed());
        // The consumer side is free: gets go on.
        assert_eq!(q.get_timeout(timeout).unwrap(), 1);
        kill_and_reap(child);
        q.put_timeout(4, Duration::from_secs(5)).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 4);
    });
}

/// Puts one value, then waits to be killed.
fn attach_and_wait(q: Queue<u32>) {
    q.put(1).unwrap();
    loop {
        std::thread::park();
    }
}

/// 70 processes hold a queue (more than the 60 the attachment table once
/// had), then all but this one die: `get` reports `Disconnected` instead of
/// waiting forever.
#[test]
fn disconnection_is_reported_after_seventy_holders_die() {
    deadline(LIMIT, || {
        let q: Queue<u32> = Queue::new().unwrap();
        let children: Vec<_> = (0..69)
            .map(|_| {
                Process::builder()
                    .start_method(StartMethod::Fork)
                    .spawn(attach_and_wait, q.clone())
                    .unwrap()
            })
            .collect();
        for _ in 0..69 {
            assert_eq!(q.get_timeout(Duration::from_secs(20)).unwrap(), 1);
        }
        for c in &children {
            c.kill().unwrap();
        }
        for c in children {
            let pid = c.pid();
            match c.join_timeout(Duration::from_secs(10)) {
                Err(multiproc::JoinTimeoutError::Failed(JoinError::Signaled {
                    signal, ..
                })) => {
                    assert_eq!(signal, Signal::KILL)
                }
                other => panic!("a holder ended with {other:?}"),
            }
            common::assert_gone(pid);
        }
        match q.get_timeout(Duration::from_secs(20)) {
            Err(GetTimeoutError::Failed(GetError::Disconnected)) => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
    });
}
