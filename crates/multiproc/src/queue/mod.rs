//! Queues between processes (Python's `Queue`, `SimpleQueue` and
//! `JoinableQueue`), on a shared-memory ring.
//!
//! * this file: the public handles, with no `unsafe`;
//! * [`crate::shm::ring`]: the ring of records in shared memory;
//! * [`mailbox`]: the out-of-line path for large messages and messages
//!   that carry handles;
//! * [`error`]: one error family per operation, giving back unsent values.
//!
//! A put encodes the value (serde, postcard), copies it into the ring
//! under the producer lock and wakes a sleeping consumer only if one
//! sleeps. A get copies the record out under the consumer lock (an
//! out-of-line one: takes its datagram) and decodes it after the lock is
//! released, so a `Deserialize` that panics or blocks holds up nobody
//! else. See `docs/shm-ring.md` for the protocol and what a killed process
//! can lose.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub(crate) mod delivery;
pub(crate) mod error;
pub(crate) mod mailbox;

use crate::shm::ring::{
    self, Copied, PopError, PushError, Registration, Ring, Source, Taken, delivery as shm_delivery,
};
use crate::shm::wait::Policy;
use crate::sys;
use crate::sys::fork_local::ForkLocal;
use crate::wire::handles::{self, FdRef};
use delivery::Journal;
pub use delivery::{AckError, Delivery, REQUEUE_WAIT};
pub use error::{
    GetError, GetTimeoutError, PutError, PutFailure, PutTimeoutError, TaskDoneError, TryGetError,
    TryPutError,
};
use mailbox::Mailbox;

/// Default size of a queue's ring: 4 MiB. Messages up to half of it
/// travel inline; larger ones out of line.
pub const DEFAULT_RING_BYTES: usize = 4 << 20;

/// Handles of each queue held in this process, by (pid, ring inode): a
/// forked child's inherited counts carry the parent's pid and do not count.
/// A child forked while another thread held the map starts a fresh one.
static LOCAL: ForkLocal<HashMap<u64, (u32, usize)>> = ForkLocal::new(HashMap::new);

fn local_adjust(key: u64, delta: isize) -> usize {
    let mut map = LOCAL.lock();
    let me = sys::futex::pid();
    let entry = map.entry(key).or_insert((me, 0));
    if entry.0 != me {
        *entry = (me, 0);
    }
    entry.1 = entry.1.saturating_add_signed(delta);
    let n = entry.1;
    if n == 0 {
        map.remove(&key);
    }
    n
}

fn local_count(key: u64) -> usize {
    let map = LOCAL.lock();
    let me = sys::futex::pid();
    map.get(&key)
        .filter(|(pid, _)| *pid == me)
        .map_or(0, |(_, n)| *n)
}

#[derive(Debug)]
pub(crate) struct Shared {
    ring: Ring,
    mailbox: Mailbox,
    /// Deliveries taken with an acknowledged get and not yet acknowledged.
    journal: Journal,
    key: u64,
    registration: Registration,
    joinable: bool,
    /// Whether the last value put through this handle fitted the small
    /// stack buffer of [`handles::with_encoded_bare`] (then the next put
    /// tries it first).
    small: AtomicBool,
}

impl Shared {
    fn new(
        ring: Ring,
        mailbox: Mailbox,
        journal: Journal,
        joinable: bool,
    ) -> std::io::Result<Shared> {
        let key = rustix::fs::fstat(ring.fd())?.st_ino;
        for fd in [ring.fd(), mailbox.tx.as_fd(), mailbox.rx.as_fd()]
            .into_iter()
            .chain(journal.fds())
        {
            handles::track(fd);
        }
        let shared = Shared {
            ring,
            mailbox,
            journal,
            key,
            registration: Registration::default(),
            joinable,
            small: AtomicBool::new(true),
        };
        shared.register();
        Ok(shared)
    }

    /// Makes sure this process is in the ring's table of holders (a forked
    /// child holds the parent's handle but must register itself).
    #[inline]
    fn register(&self) {
        self.registration.ensure(&self.ring);
    }

    /// Whether anybody besides the caller's handle could still put or get.
    fn peers_alive(&self) -> bool {
        local_count(self.key) > 1 || self.ring.others_alive(sys::futex::pid())
    }

    /// [`peers_alive`](Self::peers_alive), for a consumer, which asks while
    /// the queue looks empty: it first puts back the deliveries that dead
    /// consumers held, if there are any. (A producer asks while the queue
    /// is full, where they would find no room: it never scans, so that a
    /// producer killed at any point never makes a message come twice.)
    fn connected(&self) -> bool {
        if self.journal.scan_due() && self.recover_deliveries() > 0 {
            return true;
        }
        self.peers_alive()
    }

    #[inline]
    fn put(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        deadline: Option<Instant>,
    ) -> Result<(), PushError> {
        self.put_counted(bytes, fds, deadline, self.joinable)
    }

    /// Puts a delivery back into the queue: a `JoinableQueue` counted it
    /// when it was first put, and counts it done when it is acknowledged.
    fn put_again(&self, bytes: &[u8], fds: &[OwnedFd], deadline: Instant) -> Result<(), PushError> {
        self.put_counted(bytes, fds, Some(deadline), false)
    }

    #[inline]
    fn put_counted(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        deadline: Option<Instant>,
        counted: bool,
    ) -> Result<(), PushError> {
        self.register();
        let connected = || self.peers_alive();
        if fds.is_empty() && bytes.len() <= self.ring.max_inline() {
            return self
                .ring
                .push(&[bytes], None, deadline, &connected, counted);
        }
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        let mut send = |id: u64| self.mailbox.send(id, bytes, &borrowed);
        let pushed = self
            .ring
            .push(&[], Some(&mut send), deadline, &connected, counted);
        if let Err(PushError::Corrupted(_)) = &pushed {
            self.mailbox.drain();
        }
        pushed
    }

    /// Why a get found the queue empty for good: shut down, or nobody
    /// left to put.
    fn gone(&self) -> GetError {
        if self.ring.is_shut_down() {
            GetError::ShutDown
        } else {
            GetError::Disconnected
        }
    }

    /// Removes one value without decoding it, if one is there now; false
    /// when the queue is empty (for an immediate shutdown).
    fn discard_one(&self) -> bool {
        let connected = || true;
        let mut copied = Copied::new();
        loop {
            let mut large = None;
            let popped = self.ring.pop(
                ring::WAIT,
                Some(Instant::now()),
                &connected,
                &mut copied,
                |id| {
                    large = Some(self.mailbox.take(id));
                },
            );
            return match popped {
                Ok(Taken::Inline) => true,
                // A message a dead consumer took is not this one: go on.
                Ok(Taken::Large(())) if !matches!(large, Some(Ok(Some(_)))) => continue,
                Ok(Taken::Large(())) => true,
                Err(PopError::Corrupted(_)) => {
                    self.mailbox.drain();
                    continue;
                }
                Err(PopError::Empty | PopError::Disconnected) => false,
            };
        }
    }

    #[inline]
    fn get<T: DeserializeOwned>(
        &self,
        policy: Policy,
        deadline: Option<Instant>,
    ) -> Result<T, GetTimeoutError> {
        self.register();
        let connected = || self.connected();
        // The record is copied out under the consumer lock (small ones to
        // the stack) and decoded here, after the lock is released: the
        // value's `Deserialize` is the user's code, which may panic or
        // block, and must not do so while other consumers wait.
        let mut copied = Copied::new();
        loop {
            // An out-of-line message is fetched into this variable, not
            // returned through the ring's layers: the common, inline case
            // then moves a small value, not this large one.
            let mut large = None;
            let popped = self
                .ring
                .pop(policy, deadline, &connected, &mut copied, |id| {
                    large = Some(self.mailbox.take(id));
                });
            return match popped {
                // Values with handles never travel inline.
                Ok(Taken::Inline) => {
                    Ok(handles::decode_bare::<T>(copied.bytes()).map_err(GetError::from)?)
                }
                Ok(Taken::Large(())) => match large {
                    Some(Ok(Some(fetched))) => {
                        let (payload, fds) = fetched.finish().map_err(GetError::Io)?;
                        Ok(handles::decode::<T>(&payload, fds).map_err(GetError::from)?)
                    }
                    // Taken by a consumer that died: that message is lost.
                    Some(Ok(None)) | None => continue,
                    Some(Err(e)) => Err(GetError::Io(e).into()),
                },
                Err(PopError::Empty) => Err(GetTimeoutError::Timeout),
                Err(PopError::Disconnected) => Err(self.gone().into()),
                Err(PopError::Corrupted(why)) => {
                    self.mailbox.drain();
                    Err(GetError::Corrupted(why).into())
                }
            };
        }
    }
}

impl Shared {
    /// An acknowledged get (see [`delivery`]): the value and its journal
    /// position.
    #[inline]
    fn get_delivery<T: DeserializeOwned>(
        self: &Arc<Self>,
        deadline: Option<Instant>,
    ) -> Result<(T, u64, bool), GetTimeoutError> {
        self.register();
        let connected = || self.connected();
        let mut copied = Copied::new();
        let mut waiter = crate::shm::wait::Waiter::new(
            crate::shm::wait::Policy::counted_yielding(0, 200),
            deadline,
        );
        loop {
            let popped = self.ring.pop_delivery(
                deadline,
                &connected,
                &mut copied,
                &self.journal.ring,
                |pos, source| self.journal.store(&self.mailbox, pos, source),
                |source| {
                    if let Source::Large(id) = source {
                        self.mailbox.discard(id);
                    }
                },
            );
            let (taken, pos) = match popped {
                Ok(Some(Ok(got))) => got,
                // The journal is full: wait for acknowledgements, or take
                // over a delivery a dead consumer held.
                Ok(None) => {
                    self.journal.ring.journal_reclaim();
                    // Or its mailbox is full of copies that killed
                    // consumers left behind.
                    self.journal.clear_stale(&self.ring);
                    if self.journal.scan_due()
                        && let Some((bytes, fds, pos, elsewhere)) = self.adopt_dead_delivery()
                    {
                        return match handles::decode::<T>(&bytes, fds) {
                            Ok(value) => Ok((value, pos, elsewhere)),
                            Err(e) => {
                                // Undecodable: it goes, as a plain get drops it.
                                let _ = self.journal.ring.journal_done(pos, shm_delivery::TAKEN);
                                self.journal.ring.journal_reclaim();
                                Err(GetError::from(e).into())
                            }
                        };
                    }
                    match waiter.pause() {
                        crate::shm::wait::Next::TimedOut => {
                            return Err(GetTimeoutError::Timeout);
                        }
                        crate::shm::wait::Next::Check => continue,
                        crate::shm::wait::Next::Sleep => {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                            continue;
                        }
                    }
                }
                // Taken by a consumer that died before journaling it.
                Ok(Some(Err(PushError::Io(e)))) if e.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                Ok(Some(Err(PushError::Io(e)))) => return Err(GetError::Io(e).into()),
                Ok(Some(Err(PushError::Corrupted(why)))) => {
                    return Err(GetError::Corrupted(format!("the journal: {why}")).into());
                }
                Ok(Some(Err(PushError::Full | PushError::Disconnected))) => continue,
                Err(PopError::Empty) => {
                    // A get that waited in vain looks for dead consumers'
                    // deliveries before it gives up: the wait scans only
                    // once it sleeps, and on busy processors it may spend
                    // all of a short timeout yielding first.
                    if self.journal.scan_due() && self.recover_deliveries() > 0 {
                        continue;
                    }
                    return Err(GetTimeoutError::Timeout);
                }
                Err(PopError::Disconnected) => return Err(self.gone().into()),
                Err(PopError::Corrupted(why)) => {
                    self.mailbox.drain();
                    return Err(GetError::Corrupted(why).into());
                }
            };
            let elsewhere = !matches!(taken, Taken::Inline);
            let decoded = match taken {
                Taken::Inline => handles::decode_bare::<T>(copied.bytes()).map_err(GetError::from),
                Taken::Large(fetched) => {
                    fetched
                        .finish()
                        .map_err(GetError::Io)
                        .and_then(|(payload, fds)| {
                            handles::decode::<T>(&payload, fds).map_err(GetError::from)
                        })
                }
            };
            return match decoded {
                Ok(value) => Ok((value, pos, elsewhere)),
                Err(e) => {
                    // Undecodable: it goes, as a plain get drops it.
                    let _ = self.journal.ring.journal_done(pos, shm_delivery::TAKEN);
                    self.journal.ring.journal_reclaim();
                    Err(e.into())
                }
            };
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.registration.release(&self.ring);
        for fd in [
            self.ring.fd(),
            self.mailbox.tx.as_fd(),
            self.mailbox.rx.as_fd(),
        ]
        .into_iter()
        .chain(self.journal.fds())
        {
            handles::untrack(fd);
        }
    }
}

/// A queue any number of processes can put to and get from (Python's
/// `multiprocessing.Queue`).
///
/// Handles are cheap to clone and can be passed to child processes as (part
/// of) their argument, under every start method.
///
/// ```
/// use multiproc::{Process, Queue};
///
/// fn produce(q: Queue<String>) {
///     for i in 0..3 {
///         q.put(format!("message {i}")).unwrap();
///     }
/// }
///
/// let q = Queue::new()?;
/// let child = Process::spawn(produce, q.clone())?;
/// for i in 0..3 {
///     assert_eq!(q.get()?, format!("message {i}"));
/// }
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    shared: Arc<Shared>,
    closed: AtomicBool,
    _items: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.shared.ring.len())
            .field("max_items", &self.shared.ring.max_items())
            .field("ring_bytes", &self.shared.ring.capacity())
            .finish()
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        local_adjust(self.shared.key, 1);
        Queue {
            shared: Arc::clone(&self.shared),
            closed: AtomicBool::new(false),
            _items: PhantomData,
        }
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        if local_adjust(self.shared.key, -1) == 0 && Arc::strong_count(&self.shared) == 1 {
            self.shared.ring.detach_pid(sys::futex::pid());
        }
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (
            FdRef(self.shared.ring.fd()),
            FdRef(self.shared.mailbox.tx.as_fd()),
            FdRef(self.shared.mailbox.rx.as_fd()),
            self.shared.journal.fds().map(FdRef),
            self.shared.joinable,
        )
            .serialize(serializer)
    }
}

#[derive(Deserialize)]
struct WireQueue {
    #[serde(deserialize_with = "handles::deserialize_fd")]
    ring: OwnedFd,
    #[serde(deserialize_with = "handles::deserialize_fd")]
    tx: OwnedFd,
    #[serde(deserialize_with = "handles::deserialize_fd")]
    rx: OwnedFd,
    journal: WireJournal,
    joinable: bool,
}

#[derive(Deserialize)]
struct WireJournal(
    #[serde(deserialize_with = "handles::deserialize_fd")] OwnedFd,
    #[serde(deserialize_with = "handles::deserialize_fd")] OwnedFd,
    #[serde(deserialize_with = "handles::deserialize_fd")] OwnedFd,
);

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = WireQueue::deserialize(deserializer)?;
        let ring = Ring::attach(w.ring).map_err(crate::wire::codec::custom)?;
        let WireJournal(j_ring, j_tx, j_rx) = w.journal;
        let journal = Journal::attach(j_ring, j_tx, j_rx).map_err(crate::wire::codec::custom)?;
        let shared = Shared::new(ring, Mailbox { tx: w.tx, rx: w.rx }, journal, w.joinable)
            .map_err(crate::wire::codec::custom)?;
        Ok(Queue::from_shared(shared))
    }
}

/// Configures a [`Queue`] before creating it.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct QueueBuilder {
    max_items: u64,
    ring_bytes: usize,
}

impl QueueBuilder {
    /// At most `n` values wait in the queue; `put` blocks beyond (Python's
    /// `maxsize`). 0, the default, means no bound but the ring's bytes.
    pub fn max_items(mut self, n: u64) -> Self {
        self.max_items = n;
        self
    }

    /// Bytes of shared memory for values in flight (rounded up to a power of
    /// two, at least 4 KiB; default [`DEFAULT_RING_BYTES`]). Values larger
    /// than half of it travel out of line.
    pub fn ring_bytes(mut self, bytes: usize) -> Self {
        self.ring_bytes = bytes;
        self
    }

    /// Creates the queue.
    pub fn build<T>(self) -> std::io::Result<Queue<T>> {
        Queue::create(self, false)
    }
}

impl Queue<()> {
    /// Configures a queue: `Queue::builder().max_items(8).build::<String>()`.
    pub fn builder() -> QueueBuilder {
        QueueBuilder {
            max_items: 0,
            ring_bytes: DEFAULT_RING_BYTES,
        }
    }
}

impl<T> Queue<T> {
    fn from_shared(shared: Shared) -> Self {
        local_adjust(shared.key, 1);
        Queue {
            shared: Arc::new(shared),
            closed: AtomicBool::new(false),
            _items: PhantomData,
        }
    }

    fn create(b: QueueBuilder, joinable: bool) -> std::io::Result<Self> {
        let ring = Ring::create(b.ring_bytes, b.max_items)?;
        Ok(Queue::from_shared(Shared::new(
            ring,
            Mailbox::new()?,
            Journal::create()?,
            joinable,
        )?))
    }

    /// A queue with no bound on the number of values (Python's `Queue()`).
    pub fn new() -> std::io::Result<Self> {
        Queue::builder().build()
    }

    /// A queue that holds at most `max_items` values (Python's
    /// `Queue(maxsize)`).
    pub fn bounded(max_items: u64) -> std::io::Result<Self> {
        Queue::builder().max_items(max_items).build()
    }

    /// Values in the queue (approximate while others put and get, as in
    /// Python).
    pub fn len(&self) -> usize {
        self.shared.ring.len() as usize
    }

    /// Whether the queue is empty (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the queue holds `max_items` values (approximate; always
    /// false without a bound).
    pub fn is_full(&self) -> bool {
        let max = self.shared.ring.max_items();
        max > 0 && self.shared.ring.len() >= max
    }

    /// The ring behind the queue (for `__bench`).
    #[cfg(feature = "bench-internals")]
    pub(crate) fn ring(&self) -> &Ring {
        &self.shared.ring
    }

    /// The mailbox of the queue's journal (for `__bench`).
    #[cfg(feature = "bench-internals")]
    pub(crate) fn journal_mailbox(&self) -> &Mailbox {
        &self.shared.journal.mailbox
    }

    /// The ring of the queue's journal (for `__bench`).
    #[cfg(feature = "bench-internals")]
    pub(crate) fn journal_ring(&self) -> &Ring {
        &self.shared.journal.ring
    }

    /// Closes this handle (Python's `close`): later puts fail with
    /// [`PutFailure::Closed`] and gets with [`GetError::Closed`], as in
    /// Python. Other handles, here and in other processes, are unaffected;
    /// values already put stay in the queue for them.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Shuts the queue down for every handle in every process (Python
    /// 3.13's `Queue.shutdown(immediate)`): from now on every put fails
    /// with [`PutFailure::ShutDown`], and a get fails with
    /// [`GetError::ShutDown`] once the queue is empty; callers blocked in
    /// any process wake to see it. With `immediate`, the values still
    /// queued are dropped first (for a [`JoinableQueue`], each counted
    /// done, so `join` returns), and gets fail at once. It cannot be
    /// undone.
    ///
    /// ```
    /// use multiproc::{GetError, PutFailure, Queue};
    ///
    /// let q = Queue::new()?;
    /// q.put(1)?;
    /// q.shutdown(false);
    /// assert!(matches!(q.put(2).unwrap_err().reason, PutFailure::ShutDown));
    /// assert_eq!(q.get()?, 1); // what was queued can still be taken
    /// assert!(matches!(q.get(), Err(GetError::ShutDown)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self, immediate: bool) {
        let ring = &self.shared.ring;
        ring.shut_down();
        if immediate {
            while self.shared.discard_one() {
                if self.shared.joinable {
                    ring.task_done();
                }
            }
        }
    }

    /// Whether the queue was shut down (by any handle, in any process).
    pub fn is_shut_down(&self) -> bool {
        self.shared.ring.is_shut_down()
    }
}

impl<T: Serialize> Queue<T> {
    #[inline]
    fn put_until(&self, value: T, deadline: Option<Instant>) -> Result<(), PutTimeoutError<T>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PutError {
                value,
                reason: PutFailure::Closed,
            }
            .into());
        }
        // Encoded into this thread's reused buffer (no allocation per put),
        // before the producer lock is taken: the value's `Serialize` may
        // block (serde's impl for `Mutex` locks it) and must not do so
        // while holding the lock other producers wait for. The bare
        // encoding serves values without handles (small ones from a stack
        // buffer); the others, and values that fail to encode (to report
        // why), take the general one.
        let small = self.shared.small.load(Ordering::Relaxed);
        let put = |bytes: &[u8]| {
            if (bytes.len() <= handles::SMALL) != small {
                self.shared
                    .small
                    .store(bytes.len() <= handles::SMALL, Ordering::Relaxed);
            }
            self.shared.put(bytes, &[], deadline)
        };
        let pushed = match handles::with_encoded_bare(&value, small, put) {
            Some(pushed) => pushed,
            None => match handles::with_encoded(&value, &[], |bytes, fds| {
                self.shared.put(bytes, fds, deadline)
            }) {
                Ok(pushed) => pushed,
                Err(e) => {
                    return Err(PutError {
                        value,
                        reason: e.into(),
                    }
                    .into());
                }
            },
        };
        match pushed {
            Ok(()) => Ok(()),
            Err(PushError::Full) => Err(PutTimeoutError::Timeout(value)),
            Err(PushError::Disconnected) => Err(PutError {
                value,
                reason: if self.shared.ring.is_shut_down() {
                    PutFailure::ShutDown
                } else {
                    PutFailure::Disconnected
                },
            }
            .into()),
            Err(PushError::Io(e)) => Err(PutError {
                value,
                reason: e.into(),
            }
            .into()),
            Err(PushError::Corrupted(why)) => Err(PutError {
                value,
                reason: PutFailure::Corrupted(why),
            }
            .into()),
        }
    }

    /// Puts a value, waiting while the queue is full.
    #[inline]
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        match self.put_until(value, None) {
            Ok(()) => Ok(()),
            Err(PutTimeoutError::Failed(e)) => Err(e),
            Err(PutTimeoutError::Timeout(value)) => Err(PutError {
                value,
                reason: PutFailure::Disconnected,
            }),
        }
    }

    /// Puts a value, waiting at most `timeout` for room (and for the
    /// producer lock: this returns by the deadline whatever other
    /// processes do).
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutTimeoutError<T>> {
        self.put_until(value, crate::shm::wait::after(timeout))
    }

    /// Puts a value if there is room now. Never waits, not even for a
    /// producer lock another process holds (that reads as full).
    pub fn try_put(&self, value: T) -> Result<(), TryPutError<T>> {
        match self.put_until(value, Some(Instant::now())) {
            Ok(()) => Ok(()),
            Err(PutTimeoutError::Timeout(v)) => Err(TryPutError::Full(v)),
            Err(PutTimeoutError::Failed(e)) => Err(TryPutError::Failed(e)),
        }
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Takes the oldest value, waiting while the queue is empty. Fails with
    /// [`GetError::Disconnected`] instead of waiting forever once no other
    /// handle, in this process or another live one, could put.
    #[inline]
    pub fn get(&self) -> Result<T, GetError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(GetError::Closed);
        }
        match self.shared.get(ring::WAIT, None) {
            Ok(v) => Ok(v),
            Err(GetTimeoutError::Failed(e)) => Err(e),
            Err(GetTimeoutError::Timeout) => Err(GetError::Disconnected),
        }
    }

    /// Takes the oldest value, waiting at most `timeout` (and for the
    /// consumer lock: this returns by the deadline whatever other processes
    /// do).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(GetError::Closed.into());
        }
        self.shared
            .get(ring::WAIT, crate::shm::wait::after(timeout))
    }

    /// [`get_timeout`](Self::get_timeout) for a caller that has already
    /// waited for the value its own way (the manager's local path, which
    /// spins and yields only while its peer runs): sleeps at once when the
    /// queue is empty, without the yields a plain `get` makes first (on a
    /// busy machine each of them can hand the processor to another process
    /// for a whole time slice).
    pub(crate) fn get_timeout_sleeping(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(GetError::Closed.into());
        }
        self.shared
            .get(Policy::counted(0, 0), crate::shm::wait::after(timeout))
    }

    /// Takes the oldest value as an acknowledged delivery, waiting while
    /// the queue is empty: nothing is lost if this process dies before it
    /// [`ack`](Delivery::ack)s it, since another consumer then gets the
    /// value again. A plain [`get`](Self::get) is *at most once* (a
    /// consumer killed inside it, or just after, takes the value with it);
    /// an acknowledged get is *at least once*: a value is delivered twice
    /// only when a consumer died holding it unacknowledged (or died inside
    /// `get_delivery`, or while putting a dead consumer's delivery back:
    /// see the README). A delivery dropped without an acknowledgement goes
    /// back to the queue.
    ///
    /// ```
    /// use multiproc::Queue;
    ///
    /// let q = Queue::new()?;
    /// q.put(7u32)?;
    /// let d = q.get_delivery()?;
    /// assert_eq!(*d, 7);
    /// // ... work on it; if this process died here, 7 would be delivered again ...
    /// d.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn get_delivery(&self) -> Result<Delivery<T>, GetError> {
        match self.get_delivery_until(None) {
            Ok(d) => Ok(d),
            Err(GetTimeoutError::Failed(e)) => Err(e),
            Err(GetTimeoutError::Timeout) => Err(GetError::Disconnected),
        }
    }

    /// [`get_delivery`](Self::get_delivery), waiting at most `timeout`
    /// (and, at its end, the time to put back into the queue any delivery
    /// a dead consumer held: some milliseconds).
    pub fn get_delivery_timeout(&self, timeout: Duration) -> Result<Delivery<T>, GetTimeoutError> {
        self.get_delivery_until(crate::shm::wait::after(timeout))
    }

    #[inline]
    fn get_delivery_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Delivery<T>, GetTimeoutError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(GetError::Closed.into());
        }
        let (value, pos, elsewhere) = self.shared.get_delivery(deadline)?;
        Ok(Delivery::new(
            value,
            Arc::clone(&self.shared),
            pos,
            self.shared.joinable,
            elsewhere,
        ))
    }

    /// Takes the oldest value if there is one now. Never waits, not even
    /// for a consumer lock another process holds (that reads as empty).
    pub fn try_get(&self) -> Result<T, TryGetError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(GetError::Closed.into());
        }
        match self.shared.get(ring::WAIT, Some(Instant::now())) {
            Ok(v) => Ok(v),
            Err(GetTimeoutError::Timeout) => Err(TryGetError::Empty),
            Err(GetTimeoutError::Failed(e)) => Err(TryGetError::Failed(e)),
        }
    }
}

/// Async forms (see `docs/async.md`): they work on any executor, and
/// never block the thread that polls them.
impl<T: DeserializeOwned> Queue<T> {
    /// [`get`](Self::get), as a future. Dropping it before it is ready
    /// takes nothing from the queue.
    ///
    /// ```
    /// let q = multiproc::Queue::new()?;
    /// q.put(7u32)?;
    /// assert_eq!(futures::executor::block_on(q.get_async())?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_async(&self) -> impl Future<Output = Result<T, GetError>> + Send + '_ {
        let mut every = crate::aio::Every::new();
        crate::aio::retry(
            move |_| match self.try_get() {
                Ok(v) => Some(Ok(v)),
                Err(TryGetError::Failed(e)) => Some(Err(e)),
                Err(TryGetError::Empty) => {
                    // What a blocking get asks after each sleep.
                    (every.due() && self.shared.ring.is_empty() && !self.shared.connected())
                        .then(|| Err(self.shared.gone()))
                }
            },
            move || {
                let shared = Arc::clone(&self.shared);
                move |until: Instant, ticket: &crate::aio::Ticket| {
                    shared.ring.wait_for_data(until, &|| ticket.wanted());
                }
            },
        )
    }

    /// [`get_delivery`](Self::get_delivery), as a future: an acknowledged
    /// get. Dropping it before it is ready takes nothing from the queue.
    pub fn get_delivery_async(
        &self,
    ) -> impl Future<Output = Result<Delivery<T>, GetError>> + Send + '_ {
        let mut every = crate::aio::Every::new();
        crate::aio::retry(
            move |_| match self.get_delivery_until(Some(Instant::now())) {
                Ok(d) => Some(Ok(d)),
                Err(GetTimeoutError::Failed(e)) => Some(Err(e)),
                Err(GetTimeoutError::Timeout) => {
                    (every.due() && self.shared.ring.is_empty() && !self.shared.connected())
                        .then(|| Err(self.shared.gone()))
                }
            },
            move || {
                let shared = Arc::clone(&self.shared);
                move |until: Instant, ticket: &crate::aio::Ticket| {
                    if !shared.ring.is_empty() && !shared.ring.consumer_busy() {
                        // A record waits but the journal is full: wait
                        // for acknowledgements, as a blocking get does.
                        std::thread::sleep(Duration::from_millis(1));
                    } else {
                        shared.ring.wait_for_data(until, &|| ticket.wanted());
                    }
                }
            },
        )
    }
}

impl<T: Serialize> Queue<T> {
    /// [`put`](Self::put), as a future: waits (without blocking the
    /// thread) while the queue is full. Dropping it before it is ready
    /// puts nothing; the value is dropped with it.
    pub fn put_async(&self, value: T) -> impl Future<Output = Result<(), PutError<T>>> + Send + '_
    where
        T: Send,
    {
        let mut value = Some(value);
        let mut every = crate::aio::Every::new();
        // The record's payload length, measured once the queue was found
        // full: what the readiness wait waits room for.
        let len = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let measured = Arc::clone(&len);
        let max_inline = self.shared.ring.max_inline();
        crate::aio::retry(
            move |_| {
                let v = value.take()?;
                match self.try_put(v) {
                    Ok(()) => Some(Ok(())),
                    Err(TryPutError::Failed(e)) => Some(Err(e)),
                    Err(TryPutError::Full(v)) => {
                        if every.due() && !self.shared.peers_alive() {
                            return Some(Err(PutError {
                                value: v,
                                reason: if self.shared.ring.is_shut_down() {
                                    PutFailure::ShutDown
                                } else {
                                    PutFailure::Disconnected
                                },
                            }));
                        }
                        if measured.load(Ordering::Relaxed) == 0 {
                            // An out-of-line record holds an 8-byte id.
                            let bytes = handles::with_encoded(&v, &[], |b, fds| {
                                if fds.is_empty() && b.len() <= max_inline {
                                    b.len()
                                } else {
                                    8
                                }
                            })
                            .unwrap_or(8);
                            measured.store(bytes.max(1), Ordering::Relaxed);
                        }
                        value = Some(v);
                        None
                    }
                }
            },
            move || {
                let shared = Arc::clone(&self.shared);
                let len = len.load(Ordering::Relaxed);
                move |until: Instant, ticket: &crate::aio::Ticket| {
                    shared.ring.wait_for_room(len, until, &|| ticket.wanted());
                }
            },
        )
    }
}

/// The minimal queue (Python's `SimpleQueue`): `put`, `get`, `is_empty`,
/// `close`, without a bound.
///
/// ```
/// let q = multiproc::SimpleQueue::<u32>::new()?;
/// q.put(1)?;
/// assert_eq!(q.get()?, 1);
/// assert!(q.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SimpleQueue<T>(Queue<T>);

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimpleQueue").field(&self.0).finish()
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// A new queue.
    pub fn new() -> std::io::Result<Self> {
        Ok(SimpleQueue(Queue::new()?))
    }

    /// Puts a value (waits only while the ring's bytes are full).
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.0.put(value)
    }

    /// Takes the oldest value, waiting while empty.
    pub fn get(&self) -> Result<T, GetError> {
        self.0.get()
    }

    /// [`put`](Self::put), as a future (see [`Queue::put_async`]).
    pub fn put_async(&self, value: T) -> impl Future<Output = Result<(), PutError<T>>> + Send + '_
    where
        T: Send,
    {
        self.0.put_async(value)
    }

    /// [`get`](Self::get), as a future (see [`Queue::get_async`]).
    pub fn get_async(&self) -> impl Future<Output = Result<T, GetError>> + Send + '_ {
        self.0.get_async()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Closes this handle (see [`Queue::close`]).
    pub fn close(&self) {
        self.0.close()
    }

    /// Shuts the queue down everywhere (see [`Queue::shutdown`]).
    pub fn shutdown(&self, immediate: bool) {
        self.0.shutdown(immediate)
    }
}

/// A [`Queue`] whose consumers say when they have finished each value, so a
/// producer can wait for all of them (Python's `JoinableQueue`).
///
/// ```
/// use multiproc::{JoinableQueue, Process};
///
/// fn worker(q: JoinableQueue<u64>) {
///     while let Ok(job) = q.get() {
///         let _ = job * 2; // work
///         q.task_done().unwrap();
///     }
/// }
///
/// let q = JoinableQueue::new()?;
/// let w = Process::builder().daemon(true).spawn(worker, q.clone())?;
/// for job in 0..10 {
///     q.put(job)?;
/// }
/// q.join(); // every job has been marked done
/// drop(w);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct JoinableQueue<T>(Queue<T>);

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JoinableQueue").field(&self.0).finish()
    }
}

impl<T> AsRef<Queue<T>> for JoinableQueue<T> {
    /// The queue underneath, for code written for a [`Queue`]: its gets do
    /// not mark anything done.
    fn as_ref(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T> JoinableQueue<T> {
    /// A new joinable queue without a bound.
    pub fn new() -> std::io::Result<Self> {
        Ok(JoinableQueue(Queue::create(Queue::builder(), true)?))
    }

    /// A new joinable queue from a builder's settings.
    pub fn with(builder: QueueBuilder) -> std::io::Result<Self> {
        Ok(JoinableQueue(Queue::create(builder, true)?))
    }

    /// Marks one value got from the queue as processed.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        if self.0.shared.ring.task_done() {
            Ok(())
        } else {
            Err(TaskDoneError)
        }
    }

    /// Waits until every value put has been marked done.
    pub fn join(&self) {
        self.0.shared.ring.join(None);
    }

    /// [`join`](Self::join), as a future: waits without blocking the
    /// thread (see `docs/async.md`).
    pub fn join_async(&self) -> impl Future<Output = ()> + Send + '_ {
        crate::aio::retry(
            move |_| self.0.shared.ring.all_done().then_some(()),
            move || {
                let shared = Arc::clone(&self.0.shared);
                move |until: Instant, _: &crate::aio::Ticket| shared.ring.wait_all_done(until)
            },
        )
    }

    /// Like [`join`](Self::join), giving up at `timeout`; true if all done.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        self.0.shared.ring.join(crate::shm::wait::after(timeout))
    }
}

/// The [`Queue`] methods, each as [`Queue`]'s of the same name.
impl<T> JoinableQueue<T> {
    /// See [`Queue::len`].
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// See [`Queue::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// See [`Queue::is_full`].
    pub fn is_full(&self) -> bool {
        self.0.is_full()
    }

    /// See [`Queue::close`].
    pub fn close(&self) {
        self.0.close()
    }

    /// See [`Queue::shutdown`].
    pub fn shutdown(&self, immediate: bool) {
        self.0.shutdown(immediate)
    }

    /// See [`Queue::is_shut_down`].
    pub fn is_shut_down(&self) -> bool {
        self.0.is_shut_down()
    }
}

impl<T: Serialize> JoinableQueue<T> {
    /// See [`Queue::put`]; every value put must be marked done.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.0.put(value)
    }

    /// See [`Queue::put_timeout`].
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutTimeoutError<T>> {
        self.0.put_timeout(value, timeout)
    }

    /// See [`Queue::try_put`].
    pub fn try_put(&self, value: T) -> Result<(), TryPutError<T>> {
        self.0.try_put(value)
    }

    /// See [`Queue::put_async`].
    pub fn put_async(&self, value: T) -> impl Future<Output = Result<(), PutError<T>>> + Send + '_
    where
        T: Send,
    {
        self.0.put_async(value)
    }
}

impl<T: DeserializeOwned> JoinableQueue<T> {
    /// See [`Queue::get`]; mark the value done with
    /// [`task_done`](Self::task_done).
    pub fn get(&self) -> Result<T, GetError> {
        self.0.get()
    }

    /// See [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        self.0.get_timeout(timeout)
    }

    /// See [`Queue::try_get`].
    pub fn try_get(&self) -> Result<T, TryGetError> {
        self.0.try_get()
    }

    /// See [`Queue::get_async`].
    pub fn get_async(&self) -> impl Future<Output = Result<T, GetError>> + Send + '_ {
        self.0.get_async()
    }

    /// See [`Queue::get_delivery_async`]; the delivery's `ack` is also its
    /// `task_done`.
    pub fn get_delivery_async(
        &self,
    ) -> impl Future<Output = Result<Delivery<T>, GetError>> + Send + '_ {
        self.0.get_delivery_async()
    }
}

impl<T: DeserializeOwned> JoinableQueue<T> {
    /// An acknowledged get (see [`Queue::get_delivery`]): the delivery's
    /// [`ack`](Delivery::ack) is also its `task_done`. A value whose
    /// consumer died holding it stays unfinished until its redelivery is
    /// acknowledged, so `join` waits for it.
    pub fn get_delivery(&self) -> Result<Delivery<T>, GetError> {
        self.0.get_delivery()
    }

    /// [`get_delivery`](Self::get_delivery), waiting at most `timeout`
    /// (and, at its end, the time to put back into the queue any delivery
    /// a dead consumer held: some milliseconds).
    pub fn get_delivery_timeout(&self, timeout: Duration) -> Result<Delivery<T>, GetTimeoutError> {
        self.0.get_delivery_timeout(timeout)
    }
}
