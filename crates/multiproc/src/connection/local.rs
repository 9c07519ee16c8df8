//! The shared-memory strategy of a connection: how the two ends made by
//! [`pipe`](super::pipe) talk.
//!
//! Each direction is a ring in shared memory (`shm::ring`, the one the
//! `Queue` uses). A socket pair stays beside the rings and carries three
//! things, never message bytes:
//!
//! * **bells**: one-byte tokens that wake a peer sleeping in `poll` on its
//!   end, either for a record (receiver) or for room (sender). A side
//!   counts itself in the ring's `data_waiters` / `space_waiters` before it
//!   re-checks the ring and sleeps; the other side rings only when it sees
//!   the count non-zero. On the fast path nobody sleeps and no system call
//!   is made.
//! * **handles**: descriptors a value carries ride as `SCM_RIGHTS` on a
//!   token, sent before the record that claims them is published, so they
//!   queue up in record order.
//! * **the lifeline**: the end of stream on the socket means the peer has
//!   gone. A sleeping receiver sees it at once; a sender checks at most
//!   once a millisecond (and whenever it rings).
//!
//! Because a sleeping side waits on a descriptor, [`wait`](super::wait)
//! can watch shared-memory connections next to sockets and processes.
//!
//! A record is a 16-byte header (`[kind, handles, 0 ...]`, then the
//! message's length) and a payload. A message of up to [`WHOLE`] bytes is
//! one `WHOLE` record. A longer one streams through the ring: a `FIRST`
//! record, then `MORE` records of [`PIECE`] bytes, which the receiver
//! copies straight into the message's buffer while the sender writes the
//! next ones; its buffer grows as pieces arrive, so a forged length cannot
//! make it allocate what was not sent. A sender that dies in the middle of
//! a message leaves it truncated, which the receiver reports.
//!
//! A sender blocked on a full ring moves whatever the peer sent into a
//! local queue, so two ends that both send without reading do not
//! deadlock.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::shm::ring::{PopError, PushError, Record, Ring};
use crate::shm::wait::{Next, Policy, Presence, Waiter};
use crate::sys;
use crate::wire::stream::{DEFAULT_MAX_MESSAGE, Message, StreamError, UPFRONT};
use crate::wire::{codec, handles};

/// Bytes of data in each direction's ring.
const RING_BYTES: usize = 256 << 10;
const HEADER: usize = 16;
/// The longest message sent as one record.
const WHOLE: usize = 16 << 10;
/// Payload bytes of each record of a longer message: several are in the
/// ring at once, so sender and receiver copy at the same time.
const PIECE: usize = 32 << 10;
const KIND_WHOLE: u8 = 1;
const KIND_FIRST: u8 = 2;
const KIND_MORE: u8 = 3;
/// How a side waits for its ring before it sleeps in `poll`: it
/// busy-checks for 4 µs (a peer awake on another core answers a small
/// message within this), then yields the processor between checks for
/// 60 µs (a peer that shares this processor, with more busy processes than
/// cores, gets to run at the first yield; spinning instead would burn its
/// time). The two ends publish whether they run, and on which processor
/// ([`Presence`]): a side skips the busy checks when its peer is on its own
/// processor or not running. Two ends woken by each other's wake-up bytes
/// often end up on one processor (a socket wakes its reader where the
/// writer runs), and stay there for a while: spinning then cost 10 µs a
/// round trip, where yielding at once costs about 3.7 µs.
const WAIT: Policy = Policy::Timed {
    spin: Duration::from_micros(4),
    yields: Duration::from_micros(60),
    yield_when_busy: true,
};
/// How a sender waits for room in a full ring: as [`WAIT`], but on a busy
/// machine (a yield lately lost a whole time slice) it sleeps instead of
/// yielding. Its peer, the receiver, is busy copying the messages out: a
/// yield mostly hands this processor to a third process for the rest of
/// its slice, and a pipe streaming 64 KiB messages fell to about
/// 100 MB/s that way while other processes kept every core busy.
const WAIT_ROOM: Policy = Policy::Timed {
    spin: Duration::from_micros(4),
    yields: Duration::from_micros(60),
    yield_when_busy: false,
};
/// How often a sender asks the kernel whether the peer is still there, as
/// the coarse clock tells (so, in practice, once a clock tick at most).
const LIVENESS_NS: u64 = 1_000_000;

/// A record's header.
#[derive(Debug, Clone, Copy)]
struct Head {
    kind: u8,
    handles: usize,
    /// The whole message's length.
    len: u64,
}

impl Head {
    fn encode(self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0] = self.kind;
        h[1] = self.handles as u8;
        h[8..].copy_from_slice(&self.len.to_le_bytes());
        h
    }

    /// Splits a record into its header and payload.
    fn parse(record: Record<'_>) -> Result<(Head, &[u8]), String> {
        let Record::Inline(bytes) = record else {
            return Err("an out-of-line record in a pipe's ring".into());
        };
        if bytes.len() < HEADER {
            return Err(format!("a record of {} bytes", bytes.len()));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[8..HEADER]);
        let head = Head {
            kind: bytes[0],
            handles: usize::from(bytes[1]),
            len: u64::from_le_bytes(len),
        };
        let payload = &bytes[HEADER..];
        let fits = match head.kind {
            KIND_WHOLE => payload.len() as u64 == head.len,
            KIND_FIRST | KIND_MORE => payload.len() as u64 <= head.len,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "a record of kind {} with {} of {} bytes",
                head.kind,
                payload.len(),
                head.len
            ));
        }
        Ok((head, payload))
    }
}

/// A record taken out of the ring by a blocked sender, kept for `recv`.
struct Item {
    head: Head,
    payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct RecvState {
    /// Records moved out of the ring by a blocked sender, in order.
    pending: VecDeque<Item>,
    /// Descriptors received on the socket, in order.
    fds: VecDeque<OwnedFd>,
    /// The socket reached its end: the peer has gone.
    eof: bool,
    /// Set when a record could not be handed out: every later receive fails.
    broken: Option<String>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} with {} bytes", self.head, self.payload.len())
    }
}

/// One end of a shared-memory pipe.
#[derive(Debug)]
pub(crate) struct Local {
    sock: OwnedFd,
    tx: Option<Ring>,
    rx: Option<Ring>,
    send: Mutex<()>,
    recv: Mutex<RecvState>,
    max_message: AtomicU64,
    /// The peer is known to have gone.
    gone: AtomicBool,
    /// When a sender last asked whether the peer is there (monotonic ns).
    checked: AtomicU64,
}

/// Both ends of a new pipe: `(a, b)`; `a` sends when `a_sends`, `b` when
/// `b_sends`.
pub(crate) fn pair(a_sends: bool, b_sends: bool) -> io::Result<(Local, Local)> {
    let (sa, sb) = sys::socket::stream_pair()?;
    let ab = if a_sends {
        Some(Ring::create(RING_BYTES, 0)?)
    } else {
        None
    };
    let ba = if b_sends {
        Some(Ring::create(RING_BYTES, 0)?)
    } else {
        None
    };
    let attach = |r: &Option<Ring>| -> io::Result<Option<Ring>> {
        r.as_ref()
            .map(|r| Ring::attach(sys::socket::dup(r.fd())?))
            .transpose()
    };
    let b = Local::new(sb, attach(&ba)?, attach(&ab)?);
    let a = Local::new(sa, ab, ba);
    Ok((a, b))
}

impl Drop for Local {
    fn drop(&mut self) {
        handles::untrack(self.sock.as_fd());
    }
}

impl Local {
    /// An end made of its socket and rings.
    pub(crate) fn new(sock: OwnedFd, tx: Option<Ring>, rx: Option<Ring>) -> Local {
        handles::track(sock.as_fd());
        Local {
            sock,
            tx,
            rx,
            send: Mutex::new(()),
            recv: Mutex::new(RecvState::default()),
            max_message: AtomicU64::new(DEFAULT_MAX_MESSAGE),
            gone: AtomicBool::new(false),
            checked: AtomicU64::new(sys::process::coarse_ns()),
        }
    }

    /// The socket (bells, handles, lifeline).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// The ring this end sends on, if it sends.
    pub(crate) fn tx_ring(&self) -> Option<BorrowedFd<'_>> {
        self.tx.as_ref().map(Ring::fd)
    }

    /// The ring this end receives from, if it receives.
    pub(crate) fn rx_ring(&self) -> Option<BorrowedFd<'_>> {
        self.rx.as_ref().map(Ring::fd)
    }

    /// Sets the largest payload [`recv`](Self::recv) accepts.
    pub(crate) fn set_max_message(&self, bytes: u64) {
        self.max_message.store(bytes, Ordering::Relaxed);
    }

    /// The largest payload [`recv`](Self::recv) accepts.
    pub(crate) fn max_message(&self) -> u64 {
        self.max_message.load(Ordering::Relaxed)
    }

    fn lock_recv(&self) -> MutexGuard<'_, RecvState> {
        self.recv.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- sending -----

    /// Sends one message whose payload is `parts` concatenated, with `fds`.
    pub(crate) fn send(&self, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), StreamError> {
        let Some(tx) = &self.tx else {
            return Err(StreamError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "this end of the pipe does not send",
            )));
        };
        if fds.len() >= handles::MAX_HANDLES || parts.len() >= 8 {
            return Err(StreamError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many handles or parts in one message",
            )));
        }
        let _guard = self.send.lock().unwrap_or_else(|e| e.into_inner());
        self.check_peer()?;
        if !fds.is_empty() {
            self.send_handles(fds)?;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut head = Head {
            kind: KIND_WHOLE,
            handles: fds.len(),
            len: total as u64,
        };
        if total <= WHOLE {
            let encoded = head.encode();
            let mut all: [&[u8]; 9] = [&[]; 9];
            all[0] = &encoded;
            all[1..=parts.len()].copy_from_slice(parts);
            return self.publish(tx, &all[..=parts.len()]);
        }
        // Piece by piece: each record takes the next PIECE bytes of `parts`.
        head.kind = KIND_FIRST;
        let (mut part, mut offset) = (0, 0);
        let mut left = total;
        while left > 0 {
            let encoded = head.encode();
            let mut all: [&[u8]; 9] = [&[]; 9];
            all[0] = &encoded;
            let (mut n, mut room) = (1, PIECE.min(left));
            left -= room;
            while room > 0 {
                let take = (parts[part].len() - offset).min(room);
                all[n] = &parts[part][offset..offset + take];
                n += 1;
                room -= take;
                offset += take;
                if offset == parts[part].len() {
                    part += 1;
                    offset = 0;
                }
            }
            self.publish(tx, &all[..n])?;
            head.kind = KIND_MORE;
        }
        Ok(())
    }

    /// Sends a message of at most [`WHOLE`] bytes without handles if that
    /// needs no waiting (the ring has room, and no other thread of ours is
    /// sending): true if sent. For an async send's fast path.
    pub(crate) fn try_send(&self, parts: &[&[u8]]) -> Result<bool, StreamError> {
        let Some(tx) = &self.tx else {
            return Ok(false);
        };
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > WHOLE || parts.len() >= 8 {
            return Ok(false);
        }
        let Ok(_guard) = self.send.try_lock() else {
            return Ok(false);
        };
        self.check_peer()?;
        let encoded = Head {
            kind: KIND_WHOLE,
            handles: 0,
            len: total as u64,
        }
        .encode();
        let mut all: [&[u8]; 9] = [&[]; 9];
        all[0] = &encoded;
        all[1..=parts.len()].copy_from_slice(parts);
        match tx.try_push(&all[..=parts.len()]) {
            Ok(true) => {}
            Ok(false) | Err(PushError::Full | PushError::Disconnected) => return Ok(false),
            Err(PushError::Corrupted(why)) => {
                return Err(StreamError::Garbage(format!(
                    "corrupted shared-memory pipe: {why}"
                )));
            }
            Err(PushError::Io(e)) => return Err(e.into()),
        }
        if tx.data_waiters().load(Ordering::SeqCst) > 0 {
            self.ring_bell()?;
        }
        Ok(true)
    }

    /// Pushes one record and rings if the peer sleeps waiting for it.
    fn publish(&self, tx: &Ring, parts: &[&[u8]]) -> Result<(), StreamError> {
        self.push(tx, parts)?;
        if tx.data_waiters().load(Ordering::SeqCst) > 0 {
            self.ring_bell()?;
        }
        Ok(())
    }

    /// Fails if the peer is known to be gone; asks the kernel at most once
    /// per [`LIVENESS_NS`] (read on the coarse clock: the precise one cost
    /// a seventh of a small message's send and receive).
    fn check_peer(&self) -> Result<(), StreamError> {
        if self.gone.load(Ordering::Relaxed) {
            return Err(StreamError::Closed);
        }
        let now = sys::process::coarse_ns();
        if now.saturating_sub(self.checked.load(Ordering::Relaxed)) >= LIVENESS_NS {
            self.checked.store(now, Ordering::Relaxed);
            if sys::socket::peer_closed(self.fd())? {
                self.gone.store(true, Ordering::Relaxed);
                return Err(StreamError::Closed);
            }
        }
        Ok(())
    }

    /// Wakes the peer: one token on the socket. A full socket already holds
    /// tokens the peer has not read, so it will wake anyway.
    fn ring_bell(&self) -> Result<(), StreamError> {
        match sys::socket::send_plain(self.fd(), &[0], true) {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock => Ok(()),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                    self.gone.store(true, Ordering::Relaxed);
                    Err(StreamError::Closed)
                }
                _ => Err(e.into()),
            },
        }
    }

    /// Sends descriptors on a token, waiting (and absorbing what the peer
    /// sends) while the socket is full.
    fn send_handles(&self, fds: &[BorrowedFd<'_>]) -> Result<(), StreamError> {
        loop {
            match sys::socket::send_some(self.fd(), &[&[0]], fds, true) {
                Ok(_) => return Ok(()),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        let (_, writable) = sys::socket::wait_read_write(self.fd(), None)?;
                        if !writable {
                            self.absorb()?;
                        }
                    }
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                        self.gone.store(true, Ordering::Relaxed);
                        return Err(StreamError::Closed);
                    }
                    _ => return Err(e.into()),
                },
            }
        }
    }

    /// Where this end and its peer say whether they run (see
    /// [`Presence`]): each end writes its word on the ring it receives on
    /// (consumer side), or, receiving nothing, on the ring it sends on
    /// (producer side); so the peer's word is on our sending ring's
    /// consumer side, or on our receiving ring's producer side.
    fn presence(&self) -> Option<Presence<'_>> {
        let mine = match (&self.rx, &self.tx) {
            (Some(rx), _) => rx.consumer_presence(),
            (None, Some(tx)) => tx.producer_presence(),
            (None, None) => return None,
        };
        let theirs = match (&self.tx, &self.rx) {
            (Some(tx), _) => tx.consumer_presence(),
            (None, Some(rx)) => rx.producer_presence(),
            (None, None) => return None,
        };
        Some(Presence { mine, theirs })
    }

    /// Publishes a record, waiting for room: spin, yield, then sleep until
    /// the peer rings (it pops and sees us counted in `space_waiters`).
    /// Before each sleep, takes in what the peer sent: the peer may itself
    /// be blocked sending to us.
    fn push(&self, tx: &Ring, parts: &[&[u8]]) -> Result<(), StreamError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut waiting = Waiter::with_presence(WAIT_ROOM, None, self.presence());
        loop {
            match tx.try_push(parts) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(PushError::Corrupted(why)) => {
                    return Err(StreamError::Garbage(format!(
                        "corrupted shared-memory pipe: {why}"
                    )));
                }
                Err(PushError::Io(e)) => return Err(e.into()),
                Err(PushError::Full | PushError::Disconnected) => {}
            }
            if waiting.pause() == Next::Check {
                continue;
            }
            self.absorb()?;
            tx.space_waiters().fetch_add(1, Ordering::SeqCst);
            let slept = if tx.has_room_for(len) {
                Ok(())
            } else {
                sys::socket::wait_readable_one(self.fd(), None).map(drop)
            };
            tx.space_waiters().fetch_sub(1, Ordering::SeqCst);
            slept?;
            self.absorb()?;
        }
    }

    /// While this end cannot send: takes in the peer's tokens, handles and
    /// records (so a peer blocked sending to us can go on), and notices its
    /// end of stream. Leaves that to a thread of ours that is receiving.
    fn absorb(&self) -> Result<(), StreamError> {
        let Ok(mut st) = self.recv.try_lock() else {
            std::thread::yield_now();
            return if self.gone.load(Ordering::Relaxed) {
                Err(StreamError::Closed)
            } else {
                Ok(())
            };
        };
        self.drain_socket(&mut st)?;
        if let Some(rx) = &self.rx {
            while let Some(item) = self.pop(rx, &mut st, |head, payload| Item {
                head,
                payload: payload.to_vec(),
            })? {
                st.pending.push_back(item);
            }
        }
        if st.eof {
            return Err(StreamError::Closed);
        }
        Ok(())
    }

    // ----- receiving -----

    /// Reads what the socket holds, without waiting: tokens are dropped,
    /// descriptors queued, an end of stream noted.
    fn drain_socket(&self, st: &mut RecvState) -> Result<(), StreamError> {
        while !st.eof {
            match self.read_socket(st, true) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// One read from the socket (0 bytes: end of stream, noted).
    fn read_socket(&self, st: &mut RecvState, nonblocking: bool) -> io::Result<usize> {
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        let r = sys::socket::recv(self.fd(), &mut buf, &mut got, nonblocking);
        st.fds.extend(got);
        let n = match r {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            other => other?,
        };
        if n == 0 {
            st.eof = true;
            self.gone.store(true, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// Takes the next record from the ring, if any, hands it to `take`, and
    /// wakes a sender waiting for room.
    fn pop<T>(
        &self,
        rx: &Ring,
        st: &mut RecvState,
        mut take: impl FnMut(Head, &[u8]) -> T,
    ) -> Result<Option<T>, StreamError> {
        let got = rx.try_pop(|record| Head::parse(record).map(|(h, p)| take(h, p)));
        match got {
            Ok(None) => Ok(None),
            Ok(Some(Ok(out))) => {
                if rx.space_waiters().load(Ordering::SeqCst) > 0 {
                    // A dead peer shows as the end of the stream instead.
                    let _ = self.ring_bell();
                }
                Ok(Some(out))
            }
            Ok(Some(Err(why))) | Err(PopError::Corrupted(why)) => {
                Err(self.break_off(st, format!("corrupted shared-memory pipe: {why}")))
            }
            Err(e) => Err(self.break_off(st, format!("{e:?}"))),
        }
    }

    /// Marks the connection unusable (it lost its place in the stream).
    fn break_off(&self, st: &mut RecvState, why: String) -> StreamError {
        st.broken = Some(why.clone());
        StreamError::Garbage(why)
    }

    /// Waits for the next record (none waiting in `pending`) and hands it to
    /// `take`: spin, yield, then sleep until the peer rings. `Ok(None)` at
    /// the deadline.
    fn next_record<T>(
        &self,
        rx: &Ring,
        st: &mut RecvState,
        deadline: Option<Instant>,
        mut take: impl FnMut(Head, &[u8]) -> T,
    ) -> Result<Option<T>, StreamError> {
        let mut waiting = Waiter::with_presence(WAIT, deadline, self.presence());
        loop {
            if let Some(out) = self.pop(rx, st, &mut take)? {
                return Ok(Some(out));
            }
            if st.eof {
                return Err(StreamError::Closed);
            }
            let next = waiting.pause();
            if next == Next::Check {
                continue;
            }
            if next == Next::TimedOut || waiting.passed() {
                // Last look: the peer may have gone, or sent just now.
                self.drain_socket(st)?;
                if let Some(out) = self.pop(rx, st, &mut take)? {
                    return Ok(Some(out));
                }
                return if st.eof {
                    Err(StreamError::Closed)
                } else {
                    Ok(None)
                };
            }
            rx.data_waiters().fetch_add(1, Ordering::SeqCst);
            let slept = if rx.is_empty() {
                sys::socket::wait_readable_one(self.fd(), deadline).map(drop)
            } else {
                Ok(())
            };
            rx.data_waiters().fetch_sub(1, Ordering::SeqCst);
            slept?;
            self.drain_socket(st)?;
        }
    }

    /// Receives one message of at most `limit` bytes, waiting until
    /// `deadline` for it to begin; once it has begun, reads it whole.
    pub(crate) fn recv(
        &self,
        deadline: Option<Instant>,
        limit: u64,
    ) -> Result<Message, StreamError> {
        let Some(rx) = &self.rx else {
            return Err(StreamError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "this end of the pipe does not receive",
            )));
        };
        let mut st = self.lock_recv();
        if let Some(why) = &st.broken {
            return Err(StreamError::Garbage(why.clone()));
        }
        // The first record, copied out of the ring once (nothing is
        // allocated for a message over the limit).
        let first = match st.pending.pop_front() {
            Some(item) => item,
            None => {
                let start = |head: Head, payload: &[u8]| {
                    let mut out = Vec::new();
                    if head.len <= limit && head.kind != KIND_MORE {
                        let len = usize::try_from(head.len).unwrap_or(usize::MAX);
                        out.reserve_exact(len.min(UPFRONT).max(payload.len()));
                        codec::extend_chunked(&mut out, payload);
                    }
                    Item { head, payload: out }
                };
                match self.next_record(rx, &mut st, deadline, start)? {
                    Some(item) => item,
                    None => return Err(StreamError::Timeout),
                }
            }
        };
        let Item { head, mut payload } = first;
        if head.kind == KIND_MORE {
            return Err(self.break_off(&mut st, "a message began in its middle".into()));
        }
        if head.len > limit {
            let why = format!(
                "an earlier message of {} bytes exceeded the limit of {limit}",
                head.len
            );
            st.broken = Some(why);
            return Err(StreamError::TooLarge {
                len: head.len,
                limit,
            });
        }
        if head.kind == KIND_FIRST {
            payload = self.rest_of(rx, &mut st, head, payload)?;
        }
        let fds = self.claim(&mut st, head.handles)?;
        Ok(Message { payload, fds })
    }

    /// Reads the rest of a message that spans several records (`head` is
    /// its first, whose payload begins `message`), into one buffer.
    fn rest_of(
        &self,
        rx: &Ring,
        st: &mut RecvState,
        head: Head,
        mut message: Vec<u8>,
    ) -> Result<Vec<u8>, StreamError> {
        let len = usize::try_from(head.len).map_err(|_| StreamError::TooLarge {
            len: head.len,
            limit: usize::MAX as u64,
        })?;
        while message.len() < len {
            let mut piece = |h: Head, payload: &[u8]| -> Result<(), String> {
                if h.kind != KIND_MORE || h.len != head.len || payload.len() > len - message.len() {
                    return Err(format!("a piece {h:?} in a message of {} bytes", head.len));
                }
                if message.capacity() - message.len() < payload.len() {
                    // Grow by what arrived so far (at least 1 MiB), never
                    // past the announced length.
                    let grow = (len - message.len()).min(message.capacity().max(1 << 20));
                    message.reserve_exact(grow);
                }
                codec::extend_chunked(&mut message, payload);
                Ok(())
            };
            let got = match st.pending.pop_front() {
                Some(item) => piece(item.head, &item.payload),
                None => match self.next_record(rx, st, None, piece) {
                    Ok(Some(got)) => got,
                    Ok(None) => return Err(StreamError::Timeout),
                    Err(StreamError::Closed) => {
                        let why = "the connection closed in the middle of a message";
                        st.broken = Some(why.into());
                        return Err(StreamError::Truncated {
                            got: message.len() as u64,
                            expected: head.len,
                        });
                    }
                    Err(e) => return Err(e),
                },
            };
            if let Err(why) = got {
                return Err(self.break_off(st, why));
            }
        }
        Ok(message)
    }

    /// Takes the `n` descriptors a message announced: sent before its
    /// first record was published, so already in the socket.
    fn claim(&self, st: &mut RecvState, n: usize) -> Result<Vec<OwnedFd>, StreamError> {
        while st.fds.len() < n && !st.eof {
            self.read_socket(st, false)?;
        }
        if st.fds.len() < n {
            let why = format!(
                "a message announced {n} handles but {} arrived",
                st.fds.len()
            );
            return Err(self.break_off(st, why));
        }
        Ok(st.fds.drain(..n).collect())
    }

    /// Whether a receive would not block; waits until `deadline`.
    pub(crate) fn poll(&self, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            if self.arm() {
                self.disarm();
                return Ok(true);
            }
            let readable = sys::socket::wait_readable_one(self.fd(), deadline);
            let ready = self.disarm();
            if ready || !readable? {
                return Ok(ready);
            }
        }
    }

    /// Whether a receive would not block, without waiting.
    pub(crate) fn has_buffered(&self) -> bool {
        let ring = self.rx.as_ref().is_some_and(|rx| !rx.is_empty());
        ring || self
            .recv
            .try_lock()
            .is_ok_and(|st| !st.pending.is_empty() || st.eof || st.broken.is_some())
    }

    /// Before sleeping on the socket elsewhere (`poll`, `wait`): asks the
    /// peer to ring when it sends. True if a receive would not block.
    pub(crate) fn arm(&self) -> bool {
        if let Some(rx) = &self.rx {
            rx.data_waiters().fetch_add(1, Ordering::SeqCst);
        }
        self.has_buffered()
    }

    /// After such a sleep: undoes [`arm`](Self::arm), takes in tokens and
    /// handles, and says whether a receive would not block.
    pub(crate) fn disarm(&self) -> bool {
        if let Some(rx) = &self.rx {
            rx.data_waiters().fetch_sub(1, Ordering::SeqCst);
        }
        if let Ok(mut st) = self.recv.try_lock()
            && self.drain_socket(&mut st).is_err()
        {
            st.eof = true;
        }
        self.has_buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a test body on its own thread and fails it after 30 s, so that
    /// a lost wake-up fails the test instead of hanging CI. (The
    /// integration tests' `common::deadline` does the same; it cannot be
    /// shared with a unit test.)
    fn watchdog(body: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            body();
            let _ = done.send(());
        });
        let outcome = finished.recv_timeout(Duration::from_secs(30));
        assert!(
            !matches!(outcome, Err(std::sync::mpsc::RecvTimeoutError::Timeout)),
            "the test hung"
        );
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
    }

    /// A pair, and a way to put any record in the ring from `a` to `b`.
    fn forge(a: &Local, head: Head, payload: &[u8]) {
        let tx = a.tx.as_ref().expect("a sends");
        assert!(tx.try_push(&[&head.encode(), payload]).unwrap());
    }

    fn head(kind: u8, len: u64) -> Head {
        Head {
            kind,
            handles: 0,
            len,
        }
    }

    #[test]
    fn whole_and_pieced_messages_arrive_intact() {
        watchdog(|| {
            let (a, b) = pair(true, true).unwrap();
            let big: Vec<u8> = (0..3 * PIECE + 17).map(|i| i as u8).collect();
            let sender = std::thread::spawn(move || {
                a.send(&[b"abc", b"", b"de"], &[]).unwrap();
                a.send(&[&big[..5], &big[5..]], &[]).unwrap();
                a.send(&[], &[]).unwrap();
                (a, big)
            });
            assert_eq!(b.recv(None, u64::MAX).unwrap().payload, b"abcde");
            let got = b.recv(None, u64::MAX).unwrap().payload;
            assert!(b.recv(None, u64::MAX).unwrap().payload.is_empty());
            let (_a, big) = sender.join().unwrap();
            assert_eq!(got, big);
        });
    }

    #[test]
    fn a_garbage_record_breaks_the_connection() {
        watchdog(|| {
            let (a, b) = pair(true, true).unwrap();
            forge(&a, head(9, 0), &[]);
            a.send(&[b"after"], &[]).unwrap();
            assert!(matches!(
                b.recv(None, u64::MAX),
                Err(StreamError::Garbage(_))
            ));
            // It lost its place: later receives fail too.
            assert!(matches!(
                b.recv(None, u64::MAX),
                Err(StreamError::Garbage(_))
            ));
        });
    }

    #[test]
    fn a_length_that_disagrees_with_the_record_is_garbage() {
        watchdog(|| {
            let (a, b) = pair(true, true).unwrap();
            forge(&a, head(KIND_WHOLE, 100), b"short");
            assert!(matches!(
                b.recv(None, u64::MAX),
                Err(StreamError::Garbage(_))
            ));
        });
    }

    #[test]
    fn a_message_that_begins_in_its_middle_is_garbage() {
        watchdog(|| {
            let (a, b) = pair(true, true).unwrap();
            forge(&a, head(KIND_MORE, 10), b"12345");
            assert!(matches!(
                b.recv(None, u64::MAX),
                Err(StreamError::Garbage(_))
            ));
        });
    }

    #[test]
    fn a_piece_of_another_message_is_garbage() {
        watchdog(|| {
            let (a, b) = pair(true, true).unwrap();
            forge(&a, head(KIND_FIRST, 10), b"12345");
            forge(&a, head(KIND_MORE, 11), b"67890");
            assert!(matches!(
                b.recv(None, u64::MAX),
                Err(StreamError::Garbage(_))
            ));
        });
    }

    #[test]
    fn too_large_is_refused_before_allocation() {
        watchdog(|| {
            let (a, b) = pair(true, true).unwrap();
            a.send(&[&[0u8; 2000]], &[]).unwrap();
            assert!(matches!(
                b.recv(None, 1000),
                Err(StreamError::TooLarge {
                    len: 2000,
                    limit: 1000
                })
            ));
            let (a, b) = pair(true, true).unwrap();
            forge(&a, head(KIND_FIRST, 1 << 40), b"x");
            assert!(matches!(
                b.recv(None, 1 << 30),
                Err(StreamError::TooLarge { len, .. }) if len == 1 << 40
            ));
        });
    }

    #[test]
    fn a_forged_length_then_silence_is_truncated() {
        watchdog(|| {
            let (a, b) = pair(true, true).unwrap();
            forge(&a, head(KIND_FIRST, 1 << 40), b"first");
            forge(&a, head(KIND_MORE, 1 << 40), b"second");
            drop(a);
            // The buffer grows only as pieces arrive; the end of the stream
            // ends the message.
            match b.recv(None, u64::MAX) {
                Err(StreamError::Truncated { got, expected }) => {
                    assert_eq!((got, expected), (11, 1 << 40));
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                b.recv(None, u64::MAX),
                Err(StreamError::Garbage(_))
            ));
        });
    }

    #[test]
    fn handles_arrive_with_their_message() {
        watchdog(|| {
            let (a, b) = pair(true, true).unwrap();
            let (x, _y) = sys::socket::stream_pair().unwrap();
            a.send(&[b"one"], &[]).unwrap();
            a.send(&[b"two"], &[x.as_fd(), x.as_fd()]).unwrap();
            let one = b.recv(None, u64::MAX).unwrap();
            assert!(one.fds.is_empty());
            let two = b.recv(None, u64::MAX).unwrap();
            assert_eq!((two.payload.as_slice(), two.fds.len()), (&b"two"[..], 2));
        });
    }

    #[test]
    fn a_sender_whose_peer_is_gone_fails() {
        watchdog(|| {
            let (a, b) = pair(true, true).unwrap();
            drop(b);
            // Within one liveness interval (or at once, when it rings).
            let start = Instant::now();
            while a.send(&[b"x"], &[]).is_ok() {
                assert!(start.elapsed() < Duration::from_secs(5));
                std::thread::sleep(Duration::from_micros(200));
            }
            assert!(matches!(a.send(&[b"x"], &[]), Err(StreamError::Closed)));
        });
    }

    #[test]
    fn poll_sees_messages_and_the_end_of_the_stream() {
        watchdog(|| {
            let (a, b) = pair(true, true).unwrap();
            assert!(
                !b.poll(Some(Instant::now() + Duration::from_millis(20)))
                    .unwrap()
            );
            a.send(&[b"x"], &[]).unwrap();
            assert!(b.poll(None).unwrap());
            assert_eq!(b.recv(None, 10).unwrap().payload, b"x");
            drop(a);
            assert!(b.poll(None).unwrap());
            assert!(matches!(b.recv(None, 10), Err(StreamError::Closed)));
        });
    }
}
