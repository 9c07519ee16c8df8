//! Connections: two-way message channels between processes (Python's
//! `Pipe`, `Connection` and `multiprocessing.connection`).
//!
//! * this file: [`Connection`], [`pipe`], [`pipe_oneway`], [`wait`];
//! * [`listener`]: [`Listener`] and [`Client`] over a Unix path or TCP;
//! * [`auth`]: the auth-key handshake, as CPython performs it;
//! * [`error`]: one error family per operation.
//!
//! A connection has one of two strategies:
//! * from [`Listener`] and [`Client`]: a Unix (or TCP) stream socket
//!   carrying frames in CPython's format (`wire::stream`), so that a Python
//!   peer can `send_bytes` and `recv_bytes` with us;
//! * from [`pipe`] and [`pipe_oneway`] ([`local`]): rings in shared memory,
//!   with a socket pair beside them for wake-ups, handles and the peer's
//!   end of stream. No Python peer can hold such an end, and a message
//!   costs no system call while both ends are busy;
//! * from [`pipe_shared`] ([`packet`]): one datagram per message on a
//!   sequenced-packet socket pair, whose sending end ([`SharedSender`])
//!   any number of processes may use at once.
//!
//! Typed messages are `postcard` payloads, never pickles, with one leading
//! byte that counts the handles (descriptors of connections, queues, shared
//! memory) the value carries beside its bytes.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub(crate) mod auth;
pub(crate) mod error;
pub(crate) mod listener;
pub(crate) mod local;
pub(crate) mod packet;
pub(crate) mod pickle;

use crate::sys;
use crate::wire::handles;
use crate::wire::stream::{Message, Stream, StreamError};
pub use error::{
    AcceptError, AuthError, ConnectError, RangeError, RecvError, RecvIntoError, RecvTimeoutError,
    SendError, TryRecvError,
};
pub use listener::{
    Address, AddressParseError, Client, HANDSHAKE_TIMEOUT, Listener, MAX_PENDING_HANDSHAKES,
};
pub use pickle::PickleConnection;

/// One end of a two-way channel: sends `S`, receives `R`.
///
/// Both ends can send and receive typed values (serde) and raw bytes. A
/// connection can be passed to a child process as (part of) its argument,
/// under every start method.
///
/// ```
/// use multiproc::{Connection, Process, pipe};
///
/// fn echo_twice(conn: Connection<String, String>) {
///     while let Ok(msg) = conn.recv() {
///         conn.send(&format!("{msg} {msg}")).unwrap();
///     }
/// }
///
/// let (ours, theirs) = pipe::<String, String>()?;
/// let child = Process::spawn(echo_twice, theirs)?;
/// ours.send(&"hello".to_string())?;
/// assert_eq!(ours.recv()?, "hello hello");
/// drop(ours); // the child's recv now fails with Disconnected, and it returns
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Connection<S = (), R = ()> {
    link: Arc<Link>,
    readable: bool,
    writable: bool,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> fmt::Debug for Connection<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.link.fd())
            .field("shared_memory", &matches!(*self.link, Link::Local(_)))
            .field("packets", &matches!(*self.link, Link::Packet(_)))
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish()
    }
}

/// A pair of connected [`Connection`]s: what one sends, the other receives.
///
/// Python: `Pipe()` (duplex). Messages travel through shared memory (a
/// ring each way), with a socket pair beside the rings for wake-ups,
/// handles and noticing that the peer has gone (`docs/wire-format.md`).
pub fn pipe<S, R>() -> std::io::Result<(Connection<S, R>, Connection<R, S>)> {
    let (a, b) = local::pair(true, true)?;
    Ok((
        Connection::from_link(Link::Local(a), true, true),
        Connection::from_link(Link::Local(b), true, true),
    ))
}

/// A one-way pair: the first end only receives `T`, the second only sends.
///
/// Python: `Pipe(duplex=False)`, which also returns `(receiver, sender)`.
pub fn pipe_oneway<T>() -> std::io::Result<(Connection<(), T>, Connection<T, ()>)> {
    let (a, b) = local::pair(false, true)?;
    Ok((
        Connection::from_link(Link::Local(a), true, false),
        Connection::from_link(Link::Local(b), false, true),
    ))
}

/// A one-way pipe whose sending end may be shared: the first end receives
/// `T`, the second, a [`SharedSender`], sends it, and may be cloned and
/// given to any number of processes, which send at once (Python:
/// `Pipe(duplex=False)` with the sending end given to several children).
///
/// Every message arrives whole or not at all, never mixed with another
/// writer's, however long it is and whoever dies: each is one datagram on
/// a sequenced-packet socket, which the kernel queues whole (a long one
/// carries its bytes in a memfd attached to it). A writer killed while it
/// sends loses that message at most. Messages of one writer arrive in the
/// order it sent them; those of different writers in the order the kernel
/// took them. The receiver's `recv` fails with
/// [`RecvError::Disconnected`] once every copy of the sender, in every
/// process, is gone. It costs a system call or two per message (the rings
/// of [`pipe`] cost none), and the receiving end is a plain
/// [`Connection`]: [`wait`], `poll`, timeouts and async receives work on
/// it.
///
/// ```
/// use multiproc::{Process, SharedSender, pipe_shared};
///
/// fn report((id, out): (u32, SharedSender<(u32, String)>)) {
///     out.send(&(id, format!("worker {id} done"))).unwrap();
/// }
///
/// let (results, sender) = pipe_shared::<(u32, String)>()?;
/// let workers: Vec<_> = (0..3)
///     .map(|id| Process::spawn(report, (id, sender.clone())))
///     .collect::<Result<_, _>>()?;
/// drop(sender); // ours: recv ends once the workers' copies are gone
/// let mut got: Vec<u32> = std::iter::from_fn(|| results.recv().ok()).map(|(id, _)| id).collect();
/// got.sort();
/// assert_eq!(got, [0, 1, 2]);
/// for w in workers {
///     w.join()?;
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pipe_shared<T>() -> std::io::Result<(Connection<(), T>, SharedSender<T>)> {
    let (rx, tx) = packet::pair()?;
    Ok((
        Connection::from_link(Link::Packet(rx), true, false),
        SharedSender {
            link: Arc::new(Link::Packet(tx)),
            _types: PhantomData,
        },
    ))
}

/// The sending end of a [`pipe_shared`]: cloneable, and an ordinary
/// argument for a child, so that several processes (and threads) send at
/// once. Each message arrives whole, never interleaved with another
/// writer's (see [`pipe_shared`]).
pub struct SharedSender<T> {
    link: Arc<Link>,
    _types: PhantomData<fn(T)>,
}

impl<T> Clone for SharedSender<T> {
    fn clone(&self) -> Self {
        SharedSender {
            link: Arc::clone(&self.link),
            _types: PhantomData,
        }
    }
}

impl<T> fmt::Debug for SharedSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSender")
            .field("fd", &self.link.fd())
            .finish()
    }
}

impl<T> Serialize for SharedSender<T> {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        handles::FdRef(self.link.fd()).serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for SharedSender<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fd = handles::deserialize_fd(deserializer)?;
        Ok(SharedSender {
            link: Arc::new(Link::Packet(packet::Packet::new(fd))),
            _types: PhantomData,
        })
    }
}

impl<T> SharedSender<T> {
    /// Sends raw bytes as one message (the receiver's
    /// [`Connection::recv_bytes`]).
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
        Ok(self.link.send(&[bytes], &[])?)
    }
}

impl<T: Serialize> SharedSender<T> {
    /// Sends a value, with the handles it carries (connections, queues,
    /// shared memory) in the same datagram.
    pub fn send(&self, value: &T) -> Result<(), SendError> {
        let sent = handles::with_encoded(value, &[0], |bytes, fds| {
            bytes[0] = fds.len() as u8;
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            self.link.send(&[bytes], &borrowed)
        })?;
        Ok(sent?)
    }
}

impl<T> AsFd for SharedSender<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.link.fd()
    }
}

/// How a connection carries its messages: one strategy per variant.
#[derive(Debug)]
enum Link {
    /// Frames on a socket (`wire::stream`).
    Stream(Stream),
    /// Rings in shared memory ([`local`]).
    Local(local::Local),
    /// Datagrams on a packet socket ([`packet`]).
    Packet(packet::Packet),
}

impl Link {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Link::Stream(s) => s.fd(),
            Link::Local(l) => l.fd(),
            Link::Packet(p) => p.fd(),
        }
    }

    fn send(&self, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), StreamError> {
        match self {
            Link::Stream(s) => s.send(parts, fds),
            Link::Local(l) => l.send(parts, fds),
            Link::Packet(p) => p.send(parts, fds),
        }
    }

    /// Sends a small message without handles if that needs no waiting
    /// (a pipe's ring has room): true if sent. A socket says false.
    fn try_send(&self, bytes: &[u8]) -> Result<bool, StreamError> {
        match self {
            Link::Stream(_) | Link::Packet(_) => Ok(false),
            Link::Local(l) => l.try_send(&[bytes]),
        }
    }

    fn recv(
        &self,
        deadline: Option<Instant>,
        limit: u64,
        claim_fds: bool,
    ) -> Result<Message, StreamError> {
        match self {
            Link::Stream(s) => s.recv(deadline, limit, claim_fds),
            Link::Local(l) => l.recv(deadline, limit),
            Link::Packet(p) => p.recv(deadline, limit),
        }
    }

    fn poll(&self, deadline: Option<Instant>) -> std::io::Result<bool> {
        match self {
            Link::Stream(s) => s.poll(deadline),
            Link::Local(l) => l.poll(deadline),
            Link::Packet(p) => p.poll(deadline),
        }
    }

    fn has_buffered(&self) -> bool {
        match self {
            Link::Stream(s) => s.has_buffered(),
            Link::Local(l) => l.has_buffered(),
            Link::Packet(_) => false,
        }
    }

    fn max_message(&self) -> u64 {
        match self {
            Link::Stream(s) => s.max_message(),
            Link::Local(l) => l.max_message(),
            Link::Packet(p) => p.max_message(),
        }
    }

    fn set_max_message(&self, bytes: u64) {
        match self {
            Link::Stream(s) => s.set_max_message(bytes),
            Link::Local(l) => l.set_max_message(bytes),
            Link::Packet(p) => p.set_max_message(bytes),
        }
    }
}

/// A connection on the wire. Flags: bit 0 readable, bit 1 writable, bit 2
/// a packet socket ([`pipe_shared`]). A shared-memory end also carries its
/// rings (both absent for a socket).
///
/// The sender's message-size limit does not travel: a limit protects the
/// receiver, so a received end starts with the default, whatever the
/// sender (who may be hostile) set on its copy.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(with = "fd_serde")]
    fd: OwnedFd,
    flags: u8,
    local: bool,
    tx: Option<Handle>,
    rx: Option<Handle>,
}

/// A received descriptor.
struct Handle(OwnedFd);

impl Serialize for Handle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        handles::serialize_fd(self.0.as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        handles::deserialize_fd(d).map(Handle)
    }
}

mod fd_serde {
    use std::os::fd::{AsFd, OwnedFd};

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(fd: &OwnedFd, s: S) -> Result<S::Ok, S::Error> {
        crate::wire::handles::serialize_fd(fd.as_fd(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
        crate::wire::handles::deserialize_fd(d)
    }
}

impl<S, R> Serialize for Connection<S, R> {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let packet = matches!(*self.link, Link::Packet(_));
        let flags =
            u8::from(self.readable) | (u8::from(self.writable) << 1) | (u8::from(packet) << 2);
        let (local, tx, rx) = match &*self.link {
            Link::Stream(_) | Link::Packet(_) => (false, None, None),
            Link::Local(l) => (
                true,
                l.tx_ring().map(handles::FdRef),
                l.rx_ring().map(handles::FdRef),
            ),
        };
        (handles::FdRef(self.link.fd()), flags, local, tx, rx).serialize(serializer)
    }
}

impl<'de, S, R> Deserialize<'de> for Connection<S, R> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(deserializer)?;
        let (readable, writable) = (w.flags & 1 != 0, w.flags & 2 != 0);
        // A new link starts with the default message-size limit.
        let conn = if w.local {
            let attach = |h: Option<Handle>| {
                h.map(|h| crate::shm::ring::Ring::attach(h.0))
                    .transpose()
                    .map_err(|e| {
                        crate::wire::codec::custom(format!("cannot map a pipe's ring: {e}"))
                    })
            };
            let (tx, rx) = (attach(w.tx)?, attach(w.rx)?);
            let end = local::Local::new(w.fd, tx, rx);
            Connection::from_link(Link::Local(end), readable, writable)
        } else if w.flags & 4 != 0 {
            let end = packet::Packet::new(w.fd);
            Connection::from_link(Link::Packet(end), readable, writable)
        } else {
            Connection::from_fd(w.fd, readable, writable)
        };
        Ok(conn)
    }
}

impl<S, R> Connection<S, R> {
    /// A connection over a connected stream socket (CPython's framing).
    pub(crate) fn from_fd(fd: OwnedFd, readable: bool, writable: bool) -> Self {
        sys::socket::set_buffer_sizes(fd.as_fd(), 1 << 20);
        Connection::from_link(Link::Stream(Stream::new(fd)), readable, writable)
    }

    /// A connection over a stream whose socket is set up already.
    pub(crate) fn from_stream(stream: Stream, readable: bool, writable: bool) -> Self {
        Connection::from_link(Link::Stream(stream), readable, writable)
    }

    fn from_link(link: Link, readable: bool, writable: bool) -> Self {
        Connection {
            link: Arc::new(link),
            readable,
            writable,
            _types: PhantomData,
        }
    }

    /// Sends raw bytes as one message, bypassing serde (Python's
    /// `send_bytes`). The peer reads it with [`recv_bytes`](Self::recv_bytes).
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
        if !self.writable {
            return Err(SendError::ReadOnly);
        }
        Ok(self.link.send(&[bytes], &[])?)
    }

    /// Sends `size` bytes of `buf` from `offset` as one message (all the
    /// rest if `size` is `None`): Python's `send_bytes(buf, offset, size)`.
    /// An offset or size past the end of `buf` is a [`SendError::Range`]
    /// and sends nothing, as Python raises `ValueError`.
    ///
    /// ```
    /// use multiproc::{RangeError, SendError, pipe};
    ///
    /// let (a, b) = pipe::<(), ()>()?;
    /// a.send_bytes_range(b"hello world", 6, None)?;
    /// a.send_bytes_range(b"hello world", 0, Some(5))?;
    /// assert_eq!(b.recv_bytes()?, b"world");
    /// assert_eq!(b.recv_bytes()?, b"hello");
    /// assert!(matches!(
    ///     a.send_bytes_range(b"hello", 2, Some(4)),
    ///     Err(SendError::Range(RangeError { offset: 2, size: Some(4), len: 5, .. }))
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_bytes_range(
        &self,
        buf: &[u8],
        offset: usize,
        size: Option<usize>,
    ) -> Result<(), SendError> {
        let range = |what| RangeError {
            what,
            len: buf.len(),
            offset,
            size,
        };
        if offset > buf.len() {
            return Err(range("buffer length < offset").into());
        }
        let end = match size {
            None => buf.len(),
            Some(n) => offset
                .checked_add(n)
                .filter(|&end| end <= buf.len())
                .ok_or_else(|| range("buffer length < offset + size"))?,
        };
        self.send_bytes(&buf[offset..end])
    }

    /// Receives one message as raw bytes (Python's `recv_bytes`).
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        if !self.readable {
            return Err(RecvError::WriteOnly);
        }
        Ok(self
            .link
            .recv(None, self.link.max_message(), false)?
            .payload)
    }

    /// Like [`recv_bytes`](Self::recv_bytes), refusing messages longer than
    /// `max` bytes (Python's `recv_bytes(maxlength)`). A refused message
    /// leaves the connection unusable, as in Python.
    pub fn recv_bytes_max(&self, max: u64) -> Result<Vec<u8>, RecvError> {
        if !self.readable {
            return Err(RecvError::WriteOnly);
        }
        Ok(self
            .link
            .recv(None, max.min(self.link.max_message()), false)?
            .payload)
    }

    /// Receives one message into `buf` and returns its length (Python's
    /// `recv_bytes_into`). A message longer than `buf` comes back whole in
    /// [`RecvIntoError::BufferTooShort`].
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvIntoError> {
        let msg = self.recv_bytes()?;
        if msg.len() > buf.len() {
            return Err(RecvIntoError::BufferTooShort(msg));
        }
        buf[..msg.len()].copy_from_slice(&msg);
        Ok(msg.len())
    }

    /// Receives one message into `buf` from `offset` on and returns its
    /// length (Python's `recv_bytes_into(buf, offset)`); the bytes before
    /// `offset` are left alone. An offset past the end of `buf` is a
    /// [`RecvIntoError::Range`], checked before anything is received (the
    /// message stays queued), as Python raises `ValueError`. A message
    /// longer than the room after `offset` comes back whole in
    /// [`RecvIntoError::BufferTooShort`].
    ///
    /// ```
    /// use multiproc::{RecvIntoError, pipe};
    ///
    /// let (a, b) = pipe::<(), ()>()?;
    /// a.send_bytes(b"world")?;
    /// let mut buf = *b"hello ?????";
    /// assert_eq!(b.recv_bytes_into_at(&mut buf, 6)?, 5);
    /// assert_eq!(&buf, b"hello world");
    /// assert!(matches!(b.recv_bytes_into_at(&mut buf, 12), Err(RecvIntoError::Range(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_bytes_into_at(
        &self,
        buf: &mut [u8],
        offset: usize,
    ) -> Result<usize, RecvIntoError> {
        if offset > buf.len() {
            return Err(RangeError {
                what: "offset too large",
                len: buf.len(),
                offset,
                size: None,
            }
            .into());
        }
        self.recv_bytes_into(&mut buf[offset..])
    }

    /// Whether a message (or the end of the stream) is waiting; waits up to
    /// `timeout` for one (`None`: forever). Python's `poll`. On the
    /// write-only end of a one-way pipe it is an `Unsupported` error, as
    /// Python raises `OSError("connection is write-only")`.
    pub fn poll(&self, timeout: Option<Duration>) -> std::io::Result<bool> {
        if !self.readable {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "connection is write-only",
            ));
        }
        self.link.poll(timeout.and_then(crate::shm::wait::after))
    }

    /// Sets the longest message this end accepts (default 2 GiB). A longer
    /// one fails with [`RecvError::TooLarge`] before anything is allocated.
    ///
    /// The limit belongs to this end in this process: an end sent to
    /// another process arrives there with the default limit.
    pub fn set_max_message_size(&self, bytes: u64) {
        self.link.set_max_message(bytes);
    }

    /// Whether this end can receive.
    pub fn is_readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send.
    pub fn is_writable(&self) -> bool {
        self.writable
    }
}

impl<S: Serialize, R> Connection<S, R> {
    /// Sends a value (Python's `send`, with serde instead of pickle).
    pub fn send(&self, value: &S) -> Result<(), SendError> {
        if !self.writable {
            return Err(SendError::ReadOnly);
        }
        // The first byte counts the handles the value carries.
        let sent = handles::with_encoded(value, &[0], |bytes, fds| {
            bytes[0] = fds.len() as u8;
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            self.link.send(&[bytes], &borrowed)
        })?;
        Ok(sent?)
    }
}

impl<S, R: DeserializeOwned> Connection<S, R> {
    /// Receives a value, waiting as long as it takes (Python's `recv`).
    pub fn recv(&self) -> Result<R, RecvError> {
        if !self.readable {
            return Err(RecvError::WriteOnly);
        }
        let msg = self.link.recv(None, self.link.max_message(), true)?;
        decode_typed(&msg.payload, msg.fds)
    }

    /// Receives a value if one begins to arrive within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R, RecvTimeoutError> {
        if !self.readable {
            return Err(RecvError::WriteOnly.into());
        }
        let msg = self.link.recv(
            crate::shm::wait::after(timeout),
            self.link.max_message(),
            true,
        )?;
        Ok(decode_typed(&msg.payload, msg.fds)?)
    }

    /// Receives a value if one is waiting, without blocking.
    pub fn try_recv(&self) -> Result<R, TryRecvError> {
        match self.recv_timeout(Duration::ZERO) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(TryRecvError::Empty),
            Err(RecvTimeoutError::Recv(e)) => Err(TryRecvError::Recv(e)),
        }
    }
}

/// Async forms (see `docs/async.md`).
impl<S: Serialize, R> Connection<S, R> {
    /// [`send`](Self::send), as a future. The value is encoded when the
    /// future is made. A small message that fits in a pipe's ring now is
    /// sent in the first poll; any other goes out whole on a waiter thread
    /// (a message is sent whole or not at all, and a pipe's long message
    /// waits for the peer to read): the future is ready once it is sent.
    /// **Dropping it does not cancel the send** once it was first polled:
    /// the message still goes out, as a blocking send that had begun
    /// would.
    pub fn send_async(&self, value: &S) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        let encoded = if self.writable {
            handles::with_encoded(value, &[0], |bytes, fds| {
                bytes[0] = fds.len() as u8;
                let fds: std::io::Result<Vec<OwnedFd>> =
                    fds.iter().map(|fd| fd.try_clone()).collect();
                fds.map(|fds| (bytes.to_vec(), fds))
            })
            .map_err(SendError::from)
            .and_then(|r| r.map_err(|e| SendError::from(StreamError::Io(e))))
        } else {
            Err(SendError::ReadOnly)
        };
        let mut state = Some(encoded);
        let mut call: Option<crate::aio::Offload<Result<(), StreamError>>> = None;
        std::future::poll_fn(move |cx| {
            if let Some(encoded) = state.take() {
                let (bytes, fds) = match encoded {
                    Ok(e) => e,
                    Err(e) => return std::task::Poll::Ready(Err(e)),
                };
                // A pipe's ring with room: sent at once, here.
                if fds.is_empty() {
                    match self.link.try_send(&bytes) {
                        Ok(true) => return std::task::Poll::Ready(Ok(())),
                        Ok(false) => {}
                        Err(e) => return std::task::Poll::Ready(Err(e.into())),
                    }
                }
                let link = Arc::clone(&self.link);
                call = Some(crate::aio::Offload::start(
                    move || {
                        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                        link.send(&[&bytes], &borrowed)
                    },
                    drop,
                ));
            }
            match &mut call {
                Some(c) => c.poll(cx).map(|r| r.map_err(SendError::from)),
                None => std::task::Poll::Pending,
            }
        })
    }
}

impl<S, R: DeserializeOwned> Connection<S, R> {
    /// [`recv`](Self::recv), as a future: waits without blocking the
    /// thread (see `docs/async.md`). Dropping it before it is ready takes
    /// no message. (A message whose first bytes have arrived is read to
    /// its end in the poll, as [`try_recv`](Self::try_recv) does: the
    /// peer is sending it at that moment.)
    pub fn recv_async(&self) -> impl Future<Output = Result<R, RecvError>> + Send + '_ {
        crate::aio::retry(
            move |_| match self.try_recv() {
                Ok(v) => Some(Ok(v)),
                Err(TryRecvError::Recv(e)) => Some(Err(e)),
                Err(TryRecvError::Empty) => None,
            },
            move || {
                let link = Arc::clone(&self.link);
                move |until: Instant, _: &crate::aio::Ticket| {
                    let _ = link.poll(Some(until));
                }
            },
        )
    }
}

fn decode_typed<R: DeserializeOwned>(payload: &[u8], fds: Vec<OwnedFd>) -> Result<R, RecvError> {
    match payload.split_first() {
        Some((&count, _)) if usize::from(count) != fds.len() => Err(RecvError::Garbage(format!(
            "a message announced {count} handles but {} arrived",
            fds.len()
        ))),
        Some((_, bytes)) => Ok(handles::decode(bytes, fds)?),
        None => Err(RecvError::Garbage(
            "an empty message is not a typed value".into(),
        )),
    }
}

/// The connection's socket. For an end made by [`pipe`] this is only the
/// wake-up socket beside the shared-memory rings: it is not readable when a
/// message waits unless a receiver armed it. Use [`Connection::poll`] or
/// [`wait`] to wait for a message.
impl<S, R> AsFd for Connection<S, R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.link.fd()
    }
}

/// Something [`wait`] can wait on: a [`Connection`], a [`Listener`], a
/// [`Process`](crate::Process) (ready once it has exited).
///
/// [`wait`] asks each object whether it is [ready now](Self::ready_now);
/// if none is, it [arms](Self::arm) them all, sleeps until one of their
/// descriptors is readable, and [disarms](Self::disarm) them all. A plain
/// descriptor needs only [`wait_fd`](Self::wait_fd).
pub trait Waitable {
    /// The descriptor that becomes readable when this is ready.
    fn wait_fd(&self) -> BorrowedFd<'_>;
    /// Whether it is ready without waiting (data already buffered).
    fn ready_now(&self) -> bool {
        false
    }
    /// Called before sleeping on [`wait_fd`](Self::wait_fd): make sure the
    /// descriptor becomes readable when this becomes ready. Returns whether
    /// it is ready already. Each call is followed by one to
    /// [`disarm`](Self::disarm).
    fn arm(&self) -> bool {
        self.ready_now()
    }
    /// Called after the sleep; `fd_readable` says whether the descriptor
    /// was readable. Returns whether this is ready.
    fn disarm(&self, fd_readable: bool) -> bool {
        fd_readable || self.ready_now()
    }
}

impl<S, R> Waitable for Connection<S, R> {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.link.fd()
    }
    fn ready_now(&self) -> bool {
        self.link.has_buffered()
    }
    fn arm(&self) -> bool {
        match &*self.link {
            Link::Stream(s) => s.has_buffered(),
            Link::Local(l) => l.arm(),
            Link::Packet(_) => false,
        }
    }
    fn disarm(&self, fd_readable: bool) -> bool {
        match &*self.link {
            Link::Stream(s) => fd_readable || s.has_buffered(),
            Link::Local(l) => l.disarm(),
            Link::Packet(_) => fd_readable,
        }
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes, and
/// returns the indices of the ready ones (empty on timeout). Python's
/// `multiprocessing.connection.wait`.
///
/// ```
/// use multiproc::{pipe, wait};
/// use std::time::Duration;
///
/// let (a1, b1) = pipe::<u8, u8>()?;
/// let (a2, b2) = pipe::<u8, u8>()?;
/// b2.send(&7)?;
/// assert_eq!(wait(&[&a1, &a2], Some(Duration::from_secs(5)))?, vec![1]);
/// assert_eq!(a2.recv()?, 7);
/// # drop((b1, a1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> std::io::Result<Vec<usize>> {
    let fds: Vec<BorrowedFd<'_>> = objects.iter().map(|o| o.wait_fd()).collect();
    let deadline = timeout.and_then(crate::shm::wait::after);
    loop {
        // Arm every object (even after one turns out ready: each arm is
        // paired with a disarm).
        let early = objects.iter().fold(false, |any, o| o.arm() | any);
        // One is ready already: still look at every other one without
        // sleeping, so that all the ready ones are reported (Python's
        // `wait` returns them all), not just the first found.
        let until = if early {
            Some(Instant::now())
        } else {
            deadline
        };
        let readable = sys::socket::wait_readable(&fds, until);
        let flags = readable.as_deref().unwrap_or(&[]);
        let ready: Vec<usize> = objects
            .iter()
            .enumerate()
            .filter(|(i, o)| o.disarm(flags.get(*i).copied().unwrap_or(false)))
            .map(|(i, _)| i)
            .collect();
        readable?;
        // A descriptor can be readable with nothing to receive (a stale
        // wake-up of a shared-memory pipe): sleep again, until the deadline.
        if !ready.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(ready);
        }
    }
}
