//! Listeners and clients: connections between processes that did not start
//! each other (Python's `multiprocessing.connection.Listener` and
//! `Client`), over a Unix socket path or TCP, with an optional auth key.

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::auth;
use super::error::{AcceptError, AuthError, ConnectError};
use super::{Connection, Waitable};
use crate::sys;
use crate::wire::stream::Stream;

/// Where a [`Listener`] listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix socket at this path (local processes only).
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

/// The text is neither a TCP address nor a usable path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address: expected host:port or a socket path")]
pub struct AddressParseError(pub String);

impl FromStr for Address {
    type Err = AddressParseError;

    /// `host:port` (or `[v6]:port`) is TCP; anything with a `/`, or without
    /// a `:`, is a Unix socket path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AddressParseError(s.into()));
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

#[derive(Debug)]
enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// How long `accept` and `connect` wait for the peer's side of the
/// handshake before giving up on it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Accepts connections on an [`Address`].
///
/// With an auth key, each connection must pass CPython's mutual HMAC
/// challenge before `accept` returns it; a client with the wrong key is
/// refused before any of its messages is read, and the listener goes on.
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
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    address: Address,
    authkey: Option<Vec<u8>>,
    handshake_timeout: Duration,
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
            Address::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                let bound = l.local_addr()?;
                (Socket::Tcp(l), Address::Tcp(bound))
            }
        };
        Ok(Listener {
            socket,
            address,
            authkey: authkey.map(<[u8]>::to_vec),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// The address clients connect to (with the real port if 0 was asked).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Sets how long [`accept`](Self::accept) waits for a client's side of
    /// the handshake (default [`HANDSHAKE_TIMEOUT`]).
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// Waits for a client and returns the connection to it, authenticated
    /// if the listener has an auth key.
    pub fn accept<S, R>(&self) -> Result<Connection<S, R>, AcceptError> {
        let conn = self.accept_unauthenticated()?;
        self.authenticate(&conn)?;
        Ok(conn)
    }

    /// The first half of [`accept`](Self::accept): a connection whose
    /// handshake has not run yet. A server that must not let one slow client
    /// hold up the others runs [`authenticate`](Self::authenticate) on
    /// another thread, and serves nothing before it succeeds.
    pub(crate) fn accept_unauthenticated<S, R>(&self) -> std::io::Result<Connection<S, R>> {
        let fd: OwnedFd = match &self.socket {
            Socket::Unix(l) => l.accept()?.0.into(),
            Socket::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                s.into()
            }
        };
        Ok(Connection::from_fd(fd, true, true))
    }

    /// The second half of [`accept`](Self::accept): the auth-key handshake,
    /// if the listener has a key.
    pub(crate) fn authenticate<S, R>(&self, conn: &Connection<S, R>) -> Result<(), AuthError> {
        if let Some(key) = &self.authkey {
            let stream = conn.stream().ok_or_else(|| {
                AuthError::Protocol("a shared-memory pipe has no handshake".into())
            })?;
            let deadline = Some(Instant::now() + self.handshake_timeout);
            auth::deliver_challenge(stream, key, deadline)?;
            auth::answer_challenge(stream, key, deadline)?;
        }
        Ok(())
    }
}

impl Waitable for Listener {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Unix(l) => l.as_fd(),
            Socket::Tcp(l) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
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
