//! Listeners and clients: connections between processes that did not start
//! each other (Python's `multiprocessing.connection.Listener` and
//! `Client`), over a Unix socket path, an abstract Unix socket name or TCP,
//! with an optional auth key.

use std::collections::VecDeque;
use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::auth::{self, ServerHandshake, Step};
use super::error::{AcceptError, ConnectError};
use super::{Connection, Waitable};
use crate::sys;
use crate::wire::handles::{self, TrackedFd};
use crate::wire::stream::Stream;

/// Where a [`Listener`] listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// A Unix socket at this path (local processes only).
    Unix(PathBuf),
    /// A Unix socket in Linux's abstract namespace, by its name without the
    /// leading NUL byte: CPython's `Listener('\0name')`, wire-compatible
    /// with it. Nothing appears in the file system: the name is freed when
    /// the listening socket closes, even if its process is killed. It is
    /// visible to every process in the same network namespace, and has no
    /// file permissions: use an auth key when that matters.
    ///
    /// Written `\0name` (as in Python) or `@name` (as `ss` shows it) in
    /// text; shown as `@name`.
    ///
    /// ```
    /// use multiproc::{Address, Client, Connection, Listener};
    ///
    /// let name = format!("multiproc-doc-{}", std::process::id());
    /// let address: Address = format!("\0{name}").parse()?;
    /// assert_eq!(address, Address::Abstract(name.clone().into_bytes()));
    /// assert_eq!(address.to_string(), format!("@{name}"));
    /// let listener = Listener::bind(&address, Some(b"key"))?;
    /// let t = std::thread::spawn(move || {
    ///     let c: Connection<u32, u32> = Client::connect(&address, Some(b"key")).unwrap();
    ///     c.send(&7).unwrap();
    /// });
    /// let server: Connection<u32, u32> = listener.accept()?;
    /// assert_eq!(server.recv()?, 7);
    /// t.join().unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    Abstract(Vec<u8>),
    /// A TCP address.
    Tcp(SocketAddr),
}

/// The text is neither a TCP address nor a usable path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address: expected host:port or a socket path")]
pub struct AddressParseError(pub String);

impl FromStr for Address {
    type Err = AddressParseError;

    /// `\0name` or `@name` is an abstract Unix socket name;
    /// `host:port` (or `[v6]:port`) is TCP; anything with a `/`, or without
    /// a `:`, is a Unix socket path (write `./@name` for a file whose name
    /// starts with `@`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AddressParseError(s.into()));
        }
        if let Some(name) = s.strip_prefix('\0').or_else(|| s.strip_prefix('@')) {
            return Ok(Address::Abstract(name.as_bytes().to_vec()));
        }
        if s.contains('/') || !s.contains(':') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        s.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(Address::Tcp)
            .ok_or_else(|| AddressParseError(s.into()))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            Address::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Tcp(a)
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Self {
        Address::Unix(p)
    }
}

/// The socket address of an abstract name (at most 107 bytes).
fn abstract_addr(name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

#[derive(Debug)]
enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Socket {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Unix(l) => l.as_fd(),
            Socket::Tcp(l) => l.as_fd(),
        }
    }

    /// Takes one connection from the backlog without waiting (the listening
    /// socket is nonblocking); the connection itself is blocking.
    fn accept(&self) -> std::io::Result<OwnedFd> {
        Ok(match self {
            Socket::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                s.into()
            }
            Socket::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                s.into()
            }
        })
    }
}

/// How long a client has to finish its side of the handshake, counted
/// while the listener is accepting (and for [`Client::connect`], how long
/// it waits for the listener's side).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// How many connections a [`Listener`] handshakes with at once, by
/// default: past this many, the one that connected first is closed.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// A connection whose handshake is under way.
struct Pending {
    fd: TrackedFd,
    handshake: ServerHandshake,
    /// When it is closed if the handshake has not finished.
    deadline: Instant,
    /// Whether the handshake waits to write (else to read).
    write: bool,
}

/// What `accept` keeps between calls: handshakes under way (oldest
/// first), and outcomes not yet returned (oldest first).
#[derive(Default)]
struct Accepting {
    pending: VecDeque<Pending>,
    done: VecDeque<Result<TrackedFd, AcceptError>>,
    /// When the last `accept` returned: the deadlines of pending
    /// handshakes do not run while nobody accepts.
    idle_since: Option<Instant>,
}

/// Accepts connections on an [`Address`].
///
/// With an auth key, each connection must pass CPython's mutual HMAC
/// challenge before `accept` returns it; a client with the wrong key is
/// refused before any of its messages is read, and the listener goes on.
///
/// `accept` runs the handshakes of many clients at once, on the calling
/// thread: a client that connects and sends nothing, or sends a byte at a
/// time, delays nobody. Each has [`HANDSHAKE_TIMEOUT`] (see
/// [`set_handshake_timeout`](Self::set_handshake_timeout)) to finish,
/// counted while an `accept` runs, and is closed after it; at most
/// [`MAX_PENDING_HANDSHAKES`] (see
/// [`set_max_pending_handshakes`](Self::set_max_pending_handshakes)) are
/// under way at once, and a new connection past that closes the oldest.
/// An honest client finishes its handshake within a few round trips, so
/// only a flood of more new connections than that within those round
/// trips can push it out (it then sees its connection closed, and may try
/// again).
///
/// ```
/// use multiproc::{Client, Connection, Listener};
///
/// let listener = Listener::bind(&"127.0.0.1:0".parse()?, Some(b"secret"))?;
/// let address = listener.address().clone();
/// let t = std::thread::spawn(move || -> Result<(), multiproc::ConnectError> {
///     let c: Connection<String, String> = Client::connect(&address, Some(b"secret"))?;
///     c.send(&"hi".to_string()).unwrap();
///     Ok(())
/// });
/// let server: Connection<String, String> = listener.accept()?;
/// assert_eq!(server.recv()?, "hi");
/// t.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Listener {
    socket: Socket,
    address: Address,
    authkey: Option<Vec<u8>>,
    handshake_timeout: Duration,
    max_pending: usize,
    accepting: Mutex<Accepting>,
}

impl fmt::Debug for Listener {
    /// The auth key is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Listener");
        d.field("address", &self.address)
            .field("authenticated", &self.authkey.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_pending_handshakes", &self.max_pending);
        if let Ok(a) = self.accepting.try_lock() {
            d.field("pending_handshakes", &a.pending.len());
        }
        d.finish_non_exhaustive()
    }
}

impl Listener {
    /// Listens on `address`; a TCP port 0 picks a free port (see
    /// [`address`](Self::address)). A Unix socket file is removed when the
    /// listener is dropped.
    pub fn bind(address: &Address, authkey: Option<&[u8]>) -> std::io::Result<Listener> {
        let (socket, address) = match address {
            Address::Unix(path) => {
                let l = UnixListener::bind(path)?;
                (Socket::Unix(l), Address::Unix(path.clone()))
            }
            Address::Abstract(name) => {
                let l = UnixListener::bind_addr(&abstract_addr(name)?)?;
                (Socket::Unix(l), Address::Abstract(name.clone()))
            }
            Address::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                let bound = l.local_addr()?;
                (Socket::Tcp(l), Address::Tcp(bound))
            }
        };
        // `accept` waits in `poll`, never in `accept(2)`: a client that
        // connected and left in between must not block it.
        match &socket {
            Socket::Unix(l) => l.set_nonblocking(true)?,
            Socket::Tcp(l) => l.set_nonblocking(true)?,
        }
        // A child forked to run a function does not keep the listening
        // socket: once the listener is dropped, its address is free and
        // clients are refused, whatever children run.
        handles::track(socket.fd());
        Ok(Listener {
            socket,
            address,
            authkey: authkey.map(<[u8]>::to_vec),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_pending: MAX_PENDING_HANDSHAKES,
            accepting: Mutex::new(Accepting::default()),
        })
    }

    /// The address clients connect to (with the real port if 0 was asked).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Sets how long a client has to finish its side of the handshake
    /// (default [`HANDSHAKE_TIMEOUT`]), for connections accepted from now
    /// on. The time counts only while an [`accept`](Self::accept) runs.
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// Sets how many handshakes may be under way at once (default
    /// [`MAX_PENDING_HANDSHAKES`]; at least 1). Past it, a new connection
    /// closes the one that connected first.
    pub fn set_max_pending_handshakes(&mut self, max: usize) {
        self.max_pending = max.max(1);
    }

    /// Waits for a client and returns the connection to it, authenticated
    /// if the listener has an auth key.
    ///
    /// A client that fails the handshake (a wrong key, bytes that are not
    /// the handshake, leaving half-way) is an error, as CPython raises;
    /// the listener goes on, and so do the other clients' handshakes. A
    /// client that does not finish in time is closed without an error:
    /// `accept` goes on waiting for one that does.
    pub fn accept<S, R>(&self) -> Result<Connection<S, R>, AcceptError> {
        loop {
            if let Some(fd) = self.next(None)? {
                return Ok(Connection::from_fd(fd.into_recorded(), true, true));
            }
        }
    }

    /// [`accept`](Self::accept), as a future: waits for clients and runs
    /// their handshakes without blocking the thread (see
    /// `docs/async.md`). Dropping it before it is ready loses no
    /// connection: a client that connected waits in the backlog, or in a
    /// handshake under way, for the next `accept`.
    pub fn accept_async<'a, S: 'a, R: 'a>(
        &'a self,
    ) -> impl Future<Output = Result<Connection<S, R>, AcceptError>> + Send + 'a {
        crate::aio::retry(
            move |_| match self.next_until(None, Some(Instant::now())) {
                Ok(Some(fd)) => Some(Ok(Connection::from_fd(fd.into_recorded(), true, true))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            },
            move || {
                // The listening socket and every handshake under way, each
                // in the direction it waits for (copies: the wait runs on
                // another thread).
                let mut fds: Vec<(OwnedFd, bool)> = Vec::new();
                if let Ok(fd) = self.socket.fd().try_clone_to_owned() {
                    fds.push((fd, false));
                }
                if let Ok(st) = self.accepting.lock() {
                    for p in &st.pending {
                        if let Ok(fd) = p.fd.as_fd().try_clone_to_owned() {
                            fds.push((fd, p.write));
                        }
                    }
                }
                move |until: Instant, _: &crate::aio::Ticket| {
                    let borrowed: Vec<_> = fds.iter().map(|(fd, w)| (fd.as_fd(), *w)).collect();
                    let _ = sys::socket::wait_events(&borrowed, Some(until));
                }
            },
        )
    }

    /// Like [`accept`](Self::accept), but returns `Ok(None)` as soon as
    /// `stop` is ready (a server's shutdown signal).
    pub(crate) fn accept_or_stop<S, R>(
        &self,
        stop: &dyn Waitable,
    ) -> Result<Option<Connection<S, R>>, AcceptError> {
        Ok(self
            .next(Some(stop))?
            .map(|fd| Connection::from_fd(fd.into_recorded(), true, true)))
    }

    /// The next outcome: a connection, a client's failed handshake, or
    /// `None` once `stop` is ready.
    fn next(&self, stop: Option<&dyn Waitable>) -> Result<Option<TrackedFd>, AcceptError> {
        self.next_until(stop, None)
    }

    /// [`next`](Self::next), giving up (`Ok(None)`) at `deadline`.
    fn next_until(
        &self,
        stop: Option<&dyn Waitable>,
        deadline: Option<Instant>,
    ) -> Result<Option<TrackedFd>, AcceptError> {
        let mut st = self.accepting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(since) = st.idle_since.take() {
            let paused = since.elapsed();
            for p in &mut st.pending {
                p.deadline += paused;
            }
        }
        let outcome = self.drive(&mut st, stop, deadline);
        st.idle_since = Some(Instant::now());
        outcome
    }

    /// Runs the handshakes under way and takes new connections until one
    /// has an outcome.
    fn drive(
        &self,
        st: &mut Accepting,
        stop: Option<&dyn Waitable>,
        deadline: Option<Instant>,
    ) -> Result<Option<TrackedFd>, AcceptError> {
        let mut looked = false;
        loop {
            if let Some(outcome) = st.done.pop_front() {
                return outcome.map(Some);
            }
            let now = Instant::now();
            // With a deadline: one look at every descriptor even when it
            // has passed (a `try`), then no more.
            if looked && deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            looked = true;
            // Dropping a pending connection closes it.
            st.pending.retain(|p| p.deadline > now);
            if let Some(s) = stop
                && s.arm()
            {
                s.disarm(false);
                return Ok(None);
            }
            let skip = 1 + usize::from(stop.is_some());
            let mut fds: Vec<(BorrowedFd<'_>, bool)> = Vec::with_capacity(skip + st.pending.len());
            fds.push((self.socket.fd(), false));
            if let Some(s) = stop {
                fds.push((s.wait_fd(), false));
            }
            fds.extend(st.pending.iter().map(|p| (p.fd.as_fd(), p.write)));
            let until = st.pending.iter().map(|p| p.deadline).chain(deadline).min();
            let events = sys::socket::wait_events(&fds, until);
            drop(fds);
            if let Some(s) = stop {
                let readable = events.as_ref().is_ok_and(|e| e[1].0);
                if s.disarm(readable) {
                    return Ok(None);
                }
            }
            let events = events?;
            let key = self.authkey.as_deref().unwrap_or_default();
            let pending = std::mem::take(&mut st.pending);
            for (mut p, &(r, w)) in pending.into_iter().zip(&events[skip..]) {
                if !(r || w) {
                    st.pending.push_back(p);
                    continue;
                }
                match p.handshake.advance(p.fd.as_fd(), key) {
                    Step::Read => {
                        p.write = false;
                        st.pending.push_back(p);
                    }
                    Step::Write => {
                        p.write = true;
                        st.pending.push_back(p);
                    }
                    Step::Done => st.done.push_back(Ok(p.fd)),
                    Step::Failed(e) => st.done.push_back(Err(e.into())),
                }
            }
            if events[0].0 {
                self.take_new(st);
            }
        }
    }

    /// Takes the connections waiting in the backlog (at most the cap on
    /// pending handshakes, so that each gets a turn before newer ones can
    /// push it out) and starts their handshakes.
    fn take_new(&self, st: &mut Accepting) {
        for _ in 0..self.max_pending {
            let fd = match self.socket.accept() {
                // Recorded at once, so that no child forked from now on
                // keeps a client's connection open.
                Ok(fd) => TrackedFd::new(fd),
                Err(e) => match e.kind() {
                    std::io::ErrorKind::WouldBlock => return,
                    // The client left before we took its connection.
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::Interrupted => {
                        continue;
                    }
                    // Out of descriptors, say: the caller hears of it.
                    _ => {
                        st.done.push_back(Err(e.into()));
                        return;
                    }
                },
            };
            let Some(key) = &self.authkey else {
                st.done.push_back(Ok(fd));
                return;
            };
            let mut handshake = match ServerHandshake::new() {
                Ok(h) => h,
                Err(e) => {
                    st.done.push_back(Err(e.into()));
                    return;
                }
            };
            let write = match handshake.advance(fd.as_fd(), key) {
                Step::Read => false,
                Step::Write => true,
                // A quick client can answer while this first step runs.
                Step::Done => {
                    st.done.push_back(Ok(fd));
                    continue;
                }
                Step::Failed(e) => {
                    st.done.push_back(Err(e.into()));
                    continue;
                }
            };
            if st.pending.len() >= self.max_pending {
                st.pending.pop_front();
            }
            st.pending.push_back(Pending {
                fd,
                handshake,
                deadline: Instant::now() + self.handshake_timeout,
                write,
            });
        }
    }
}

/// A listener is ready when a client has connected (one waiting in the
/// backlog, or one whose handshake an earlier `accept` began and left
/// under way), or an outcome is waiting; [`Listener::accept`] may then
/// still wait for a client to finish its handshake (the one that connected
/// may be silent).
impl Waitable for Listener {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.socket.fd()
    }
    fn ready_now(&self) -> bool {
        // A handshake under way moves only inside `accept`: its client was
        // taken out of the backlog, so the socket no longer says it is
        // there, and waiting on the socket alone would sleep while
        // `accept` had a connection to give.
        self.accepting
            .try_lock()
            .is_ok_and(|a| !a.done.is_empty() || !a.pending.is_empty())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        handles::untrack(self.socket.fd());
        if let Address::Unix(path) = &self.address {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Connects to a [`Listener`] (Python's `multiprocessing.connection.Client`).
#[derive(Debug)]
pub struct Client;

impl Client {
    /// Connects to `address`, and authenticates with `authkey` if given
    /// (the listener must use the same key).
    pub fn connect<S, R>(
        address: &Address,
        authkey: Option<&[u8]>,
    ) -> Result<Connection<S, R>, ConnectError> {
        let fd: OwnedFd = match address {
            Address::Unix(path) => UnixStream::connect(path)?.into(),
            Address::Abstract(name) => UnixStream::connect_addr(&abstract_addr(name)?)?.into(),
            Address::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                s.into()
            }
        };
        sys::socket::set_buffer_sizes(fd.as_fd(), 1 << 20);
        let stream = Stream::new(fd);
        if let Some(key) = authkey {
            let deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
            auth::answer_challenge(&stream, key, deadline)?;
            auth::deliver_challenge(&stream, key, deadline)?;
        }
        Ok(Connection::from_stream(stream, true, true))
    }
}
