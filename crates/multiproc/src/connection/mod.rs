//! Connections: two-way message channels between processes (Python's
//! `Pipe`, `Connection` and `multiprocessing.connection`).
//!
//! * this file: [`Connection`], [`pipe`], [`pipe_oneway`], [`wait`];
//! * [`listener`]: [`Listener`] and [`Client`] over a Unix path or TCP;
//! * [`auth`]: the auth-key handshake, as CPython performs it;
//! * [`error`]: one error family per operation.
//!
//! On the wire a connection is a Unix (or TCP) stream socket carrying frames
//! in CPython's format (`wire::stream`): a Python peer can `send_bytes` and
//! `recv_bytes` with us. Typed messages are `postcard` payloads, never
//! pickles, with one leading byte that counts the handles (descriptors of
//! connections, queues, shared memory) the value carries beside its bytes.

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

use crate::sys;
use crate::wire::handles;
use crate::wire::stream::Stream;
pub use error::{
    AcceptError, AuthError, ConnectError, RecvError, RecvIntoError, RecvTimeoutError, SendError,
    TryRecvError,
};
pub use listener::{Address, AddressParseError, Client, HANDSHAKE_TIMEOUT, Listener};

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
    stream: Arc<Stream>,
    readable: bool,
    writable: bool,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> fmt::Debug for Connection<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.stream.fd())
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish()
    }
}

/// A pair of connected [`Connection`]s: what one sends, the other receives.
///
/// Python: `Pipe()` (duplex).
pub fn pipe<S, R>() -> std::io::Result<(Connection<S, R>, Connection<R, S>)> {
    let (a, b) = sys::socket::stream_pair()?;
    Ok((
        Connection::from_fd(a, true, true),
        Connection::from_fd(b, true, true),
    ))
}

/// A one-way pair: the first end only receives `T`, the second only sends.
///
/// Python: `Pipe(duplex=False)`, which also returns `(receiver, sender)`.
pub fn pipe_oneway<T>() -> std::io::Result<(Connection<(), T>, Connection<T, ()>)> {
    let (a, b) = sys::socket::stream_pair()?;
    Ok((
        Connection::from_fd(a, true, false),
        Connection::from_fd(b, false, true),
    ))
}

/// Flags of a connection on the wire: bit 0 readable, bit 1 writable.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(with = "fd_serde")]
    fd: OwnedFd,
    flags: u8,
    max_message: u64,
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
        let flags = u8::from(self.readable) | (u8::from(self.writable) << 1);
        (
            handles::FdRef(self.stream.fd()),
            flags,
            self.stream.max_message(),
        )
            .serialize(serializer)
    }
}

impl<'de, S, R> Deserialize<'de> for Connection<S, R> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(deserializer)?;
        let conn = Connection::from_fd(w.fd, w.flags & 1 != 0, w.flags & 2 != 0);
        conn.stream.set_max_message(w.max_message);
        Ok(conn)
    }
}

impl<S, R> Connection<S, R> {
    pub(crate) fn from_fd(fd: OwnedFd, readable: bool, writable: bool) -> Self {
        sys::socket::set_buffer_sizes(fd.as_fd(), 1 << 20);
        Connection {
            stream: Arc::new(Stream::new(fd)),
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
        Ok(self.stream.send(&[bytes], &[])?)
    }

    /// Receives one message as raw bytes (Python's `recv_bytes`).
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        if !self.readable {
            return Err(RecvError::WriteOnly);
        }
        Ok(self
            .stream
            .recv(None, self.stream.max_message(), false)?
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
            .stream
            .recv(None, max.min(self.stream.max_message()), false)?
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

    /// Whether a message (or the end of the stream) is waiting; waits up to
    /// `timeout` for one (`None`: forever). Python's `poll`.
    pub fn poll(&self, timeout: Option<Duration>) -> std::io::Result<bool> {
        self.stream.poll(timeout.map(|t| Instant::now() + t))
    }

    /// Sets the longest message this end accepts (default 2 GiB). A longer
    /// one fails with [`RecvError::TooLarge`] before anything is allocated.
    pub fn set_max_message_size(&self, bytes: u64) {
        self.stream.set_max_message(bytes);
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
            self.stream.send(&[bytes], &borrowed)
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
        let msg = self.stream.recv(None, self.stream.max_message(), true)?;
        decode_typed(&msg.payload, msg.fds)
    }

    /// Receives a value if one begins to arrive within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R, RecvTimeoutError> {
        if !self.readable {
            return Err(RecvError::WriteOnly.into());
        }
        let msg = self.stream.recv(
            Some(Instant::now() + timeout),
            self.stream.max_message(),
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

fn decode_typed<R: DeserializeOwned>(payload: &[u8], fds: Vec<OwnedFd>) -> Result<R, RecvError> {
    match payload.split_first() {
        Some((_, bytes)) => Ok(handles::decode(bytes, fds)?),
        None => Err(RecvError::Garbage(
            "an empty message is not a typed value".into(),
        )),
    }
}

impl<S, R> AsFd for Connection<S, R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.fd()
    }
}

/// Something [`wait`] can wait on: a [`Connection`], a [`Listener`], a
/// [`Process`](crate::Process) (ready once it has exited).
pub trait Waitable {
    /// The descriptor that becomes readable when this is ready.
    fn wait_fd(&self) -> BorrowedFd<'_>;
    /// Whether it is ready without waiting (data already buffered).
    fn ready_now(&self) -> bool {
        false
    }
}

impl<S, R> Waitable for Connection<S, R> {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.stream.fd()
    }
    fn ready_now(&self) -> bool {
        self.stream.has_buffered()
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
    let ready: Vec<usize> = objects
        .iter()
        .enumerate()
        .filter(|(_, o)| o.ready_now())
        .map(|(i, _)| i)
        .collect();
    if !ready.is_empty() {
        return Ok(ready);
    }
    let fds: Vec<BorrowedFd<'_>> = objects.iter().map(|o| o.wait_fd()).collect();
    let deadline = timeout.map(|t| Instant::now() + t);
    let flags = sys::socket::wait_readable(&fds, deadline)?;
    Ok(flags
        .iter()
        .enumerate()
        .filter(|(_, r)| **r)
        .map(|(i, _)| i)
        .collect())
}
