//! Internals exposed for the benchmark crate and the tests only: not part
//! of the API, no stability promise. See [`RawRing`], and the functions
//! that let a test play a hostile or stuck peer of a queue.

use std::io;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::shm::ring::{Copied, PopError, PushError, Registration, Ring, Taken};
use crate::sys;
use crate::wire::handles::{self, FdRef};

/// The shared-memory ring behind [`Queue`](crate::Queue), with byte
/// records and nothing else: no encoding, no out-of-line path, no handle
/// bookkeeping beyond the attachment table. It is the floor that the
/// benchmark measures the queue against.
///
/// It can be sent to a child process like a queue. A push larger than
/// [`RawRing::max_record`] fails.
#[derive(Debug)]
pub struct RawRing {
    ring: Ring,
    registration: Registration,
}

impl RawRing {
    /// A ring of `bytes` bytes of data (rounded up to a power of two, at
    /// least 4 KiB).
    pub fn new(bytes: usize) -> io::Result<RawRing> {
        RawRing::from_ring(Ring::create(bytes, 0)?)
    }

    /// Another handle on the same ring (to send to a child while keeping
    /// this one).
    pub fn try_clone(&self) -> io::Result<RawRing> {
        RawRing::from_ring(Ring::attach(self.ring.fd().try_clone_to_owned()?)?)
    }

    fn from_ring(ring: Ring) -> io::Result<RawRing> {
        handles::track(ring.fd());
        let raw = RawRing {
            ring,
            registration: Registration::default(),
        };
        raw.register();
        Ok(raw)
    }

    fn register(&self) -> u32 {
        self.registration.ensure(&self.ring)
    }

    /// The largest record a push takes.
    pub fn max_record(&self) -> usize {
        self.ring.max_inline()
    }

    /// Appends `bytes` as one record, waiting while the ring is full. Fails
    /// if the record is too large, or if the ring is full and no other
    /// process holding it is alive.
    pub fn push(&self, bytes: &[u8]) -> io::Result<()> {
        let me = self.register();
        if bytes.len() > self.ring.max_inline() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record larger than half the ring",
            ));
        }
        let connected = || self.ring.others_alive(me);
        match self.ring.push(&[bytes], None, None, &connected, false) {
            Ok(()) => Ok(()),
            Err(PushError::Io(e)) => Err(e),
            Err(PushError::Full | PushError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the ring is full and nobody else holds it",
            )),
            Err(PushError::Corrupted(why)) => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
        }
    }

    /// Takes the oldest record into `out` (replacing its contents), waiting
    /// while the ring is empty. Fails if the ring is empty and no other
    /// process holding it is alive, or if it is corrupted.
    pub fn pop(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let me = self.register();
        let connected = || self.ring.others_alive(me);
        let mut copied = Copied::new();
        let popped = self.ring.pop(
            crate::shm::ring::WAIT,
            None,
            &connected,
            &mut copied,
            |_| (),
        );
        match popped {
            Ok(Taken::Inline) => {
                out.clear();
                out.extend_from_slice(copied.bytes());
                Ok(())
            }
            Ok(Taken::Large(())) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an out-of-line record in a raw ring",
            )),
            Err(PopError::Empty | PopError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the ring is empty and nobody else holds it",
            )),
            Err(PopError::Corrupted(why)) => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
        }
    }
}

impl Drop for RawRing {
    fn drop(&mut self) {
        self.registration.release(&self.ring);
        handles::untrack(self.ring.fd());
        self.ring.detach_pid(sys::futex::pid());
    }
}

impl Serialize for RawRing {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        FdRef(self.ring.fd()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawRing {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fd: OwnedFd = handles::deserialize_fd(deserializer)?;
        Ring::attach(fd)
            .and_then(RawRing::from_ring)
            .map_err(crate::wire::codec::custom)
    }
}

/// Test-only: the memfd behind a queue's ring (what a `Queue`'s
/// `Serialize` sends to another process), for a test that maps it and
/// writes garbage into it as a hostile peer would.
pub fn queue_ring_fd<T>(q: &crate::Queue<T>) -> std::os::fd::BorrowedFd<'_> {
    q.ring().fd()
}

/// Test-only: byte offsets in a queue's ring mapping of the header words a
/// peer can corrupt (positions, counts, ids, wait words, the attachment
/// table; the two side locks come last), by name.
pub fn ring_layout() -> Vec<(&'static str, usize)> {
    Ring::layout()
}

/// Test-only: where a ring's records begin in its mapping.
pub const RING_DATA_OFFSET: usize = Ring::DATA_OFFSET;

/// Test-only: sends copies of a `len`-byte message stored under journal
/// position `pos` into a queue's journal mailbox until it is full (a send
/// that does not wait fails), as consumers killed between acknowledging a
/// delivery and clearing its stored copy leave them behind. Returns how
/// many went in.
pub fn fill_journal_mailbox<T>(q: &crate::Queue<T>, pos: u64, len: usize) -> io::Result<usize> {
    let payload = vec![0u8; len];
    let mailbox = q.journal_mailbox();
    for n in 0..1 << 20 {
        match mailbox.send(pos, &payload, &[]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the journal's mailbox never filled"))
}

/// Test-only: the state of a queue's journal of deliveries in one line,
/// for a test's report of a stall: its positions, its records by state,
/// its locks, and the position under which the first message in its
/// mailbox is stored (one older than the journal's head is no longer
/// needed).
pub fn journal_report<T>(q: &crate::Queue<T>) -> String {
    let first = match q.journal_mailbox().first_id() {
        Ok(Some(id)) => id.to_string(),
        Ok(None) => "none".into(),
        Err(e) => format!("unreadable ({e})"),
    };
    format!(
        "journal {}; first message in its mailbox: {first}",
        q.journal_ring().journal_summary()
    )
}

/// Test-only: takes the consumer (or producer) lock of a queue's ring and
/// never releases it. The calling process must then stop or die, as a
/// wedged or stopped peer would.
pub fn wedge_queue_lock<T>(q: &crate::Queue<T>, consumer: bool) {
    q.ring().wedge(consumer);
}

/// Forks a child that does nothing but exit, and reaps it: three system
/// calls (`fork`, `_exit`, `wait4`), the floor of a fork start.
pub fn bare_fork_exit_wait() -> io::Result<()> {
    sys::process::bare_fork_exit_wait()
}

/// Tasks registered by this library, for a test to map from its own crate:
/// a pool's caller in another crate than the registration, as when a
/// program maps the tasks of a library it uses. (This crate denies
/// `unsafe_code`: these also show that such a crate can register tasks.)
pub mod tasks {
    /// Adds one: as small as a task gets.
    #[multiproc::task(name = "multiproc.bench.increment")]
    pub fn increment(x: u64) -> u64 {
        x + 1
    }

    /// Upper case, and the length.
    #[multiproc::task(name = "multiproc.bench.shout")]
    pub fn shout(s: String) -> String {
        format!("{}!{}", s.to_uppercase(), s.len())
    }
}
