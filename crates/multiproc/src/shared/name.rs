//! Names chosen by the user for shared memory (Python's
//! `SharedMemory(name=..., create=True)`).
//!
//! A name is an abstract Unix socket address, `\0multiproc-shm-<uid>-<name>`
//! (`<uid>` the effective user id), on which a thread of the creating
//! process listens for as long as the creating handle (or a clone of it)
//! holds the name. Whoever connects gets the block's memfd back with
//! `SCM_RIGHTS`, if the kernel says it runs as the same user. An abstract
//! address is no file: the kernel removes it when the last descriptor of the
//! socket closes, so a creator that crashes or is killed leaves nothing
//! behind, in `/dev/shm` or anywhere else.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys;
use crate::wire::handles::TrackedFd;

/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 80;

/// Names that begin so are the generated ones of
/// [`SharedMemory::create`](super::SharedMemory::create).
const RESERVED: &str = "multiproc-";

/// How long an attacher waits for the creator's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// What the creator answers a peer of another user (in every byte).
const REFUSED: u8 = b'!';

/// The answer's length: what the name holds, and a number.
const ANSWER: usize = 9;

/// Why a named block could not be created or attached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// A block of that name exists (Python's `FileExistsError`).
    #[error("a shared memory block named {0:?} already exists")]
    Exists(String),
    /// No block has that name (Python's `FileNotFoundError`).
    #[error("no shared memory block named {0:?}")]
    NotFound(String),
    /// The name cannot be used: empty, longer than [`MAX_NAME_LEN`] bytes,
    /// containing `/` or NUL, or beginning with the `multiproc-` of
    /// generated names.
    #[error("invalid shared memory name {name:?}: {reason}")]
    Invalid {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The name is held by a process of another user, or the holder refused
    /// to hand the block to this user.
    #[error("the shared memory name {0:?} is held by another user's process")]
    Foreign(String),
    /// The name holds another kind of object (a `SharedMemory` attached as
    /// a `ShareableList`, say).
    #[error("the shared memory name {name:?} holds a {found}, not a {wanted}")]
    WrongKind {
        /// The name given.
        name: String,
        /// What it holds.
        found: &'static str,
        /// What was asked for.
        wanted: &'static str,
    },
    /// A size of 0 (Python's `ValueError`).
    #[error("a shared memory block must be at least one byte")]
    ZeroSize,
    /// The creator did not answer within 10 s (it may be stopped).
    #[error("the holder of the shared memory name {0:?} did not answer")]
    NoAnswer(String),
    /// Anything else the system refused (no memory, too many descriptors).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<NameError> for io::Error {
    fn from(e: NameError) -> io::Error {
        let kind = match &e {
            NameError::Io(_) => None,
            NameError::Exists(_) => Some(io::ErrorKind::AlreadyExists),
            NameError::NotFound(_) => Some(io::ErrorKind::NotFound),
            NameError::Invalid { .. } | NameError::ZeroSize => Some(io::ErrorKind::InvalidInput),
            NameError::Foreign(_) => Some(io::ErrorKind::PermissionDenied),
            NameError::WrongKind { .. } => Some(io::ErrorKind::InvalidData),
            NameError::NoAnswer(_) => Some(io::ErrorKind::TimedOut),
        };
        match (kind, e) {
            (_, NameError::Io(e)) => e,
            (kind, e) => io::Error::new(kind.unwrap_or(io::ErrorKind::Other), e),
        }
    }
}

/// What a name holds, as the first byte of the creator's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A `SharedMemory`: one memfd.
    Block,
    /// A `ShareableList`: its memfd (the number is its length in words).
    List,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Block => b'S',
            Kind::List => b'L',
        }
    }

    /// Its type's name, for errors.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::Block => "SharedMemory",
            Kind::List => "ShareableList",
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            b'S' => Some(Kind::Block),
            b'L' => Some(Kind::List),
            _ => None,
        }
    }
}

/// Checks `name` and gives its socket address.
fn address(name: &str) -> Result<Vec<u8>, NameError> {
    let invalid = |reason| NameError::Invalid {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("it is longer than 80 bytes"));
    }
    if name.contains('/') {
        return Err(invalid("it contains '/'"));
    }
    if name.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    if name.starts_with(RESERVED) {
        return Err(invalid(
            "names beginning with \"multiproc-\" are the generated ones",
        ));
    }
    let uid = rustix::process::geteuid().as_raw();
    Ok(format!("multiproc-shm-{uid}-{name}").into_bytes())
}

/// Whether `name` is a user's name rather than a generated one.
pub(crate) fn is_chosen(name: &str) -> bool {
    !name.starts_with(RESERVED)
}

/// The thread that serves a name: it answers every connection with the
/// object's descriptors, until the server is dropped.
#[derive(Debug)]
pub(crate) struct Server {
    /// Dropping it wakes the thread, which closes the listening socket.
    stop: Option<TrackedFd>,
    thread: Option<JoinHandle<()>>,
    /// The process that started the thread (a forked child has no thread
    /// to join).
    pid: i32,
}

impl Server {
    /// Takes `name` and serves `fds` (duplicated) on it, with `extra` (a
    /// number the attacher needs: a list's length in words).
    pub(crate) fn start(
        name: &str,
        kind: Kind,
        extra: u64,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Server, NameError> {
        let addr = address(name)?;
        let listener = match sys::socket::listen_abstract(&addr) {
            Ok(l) => TrackedFd::new(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(NameError::Exists(name.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let fds: Vec<TrackedFd> = fds
            .iter()
            .map(|f| sys::socket::dup(f).map(TrackedFd::new))
            .collect::<io::Result<_>>()?;
        let (stop, wake) = sys::socket::stream_pair()?;
        let (stop, wake) = (TrackedFd::new(stop), TrackedFd::new(wake));
        let thread = std::thread::Builder::new()
            .name("multiproc-shm-name".into())
            .spawn(move || serve(listener, wake, kind, extra, fds))?;
        Ok(Server {
            stop: Some(stop),
            thread: Some(thread),
            pid: sys::process::pid(),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            if self.pid == sys::process::pid() {
                // The thread wakes at once: the name is gone when this
                // returns.
                let _ = t.join();
            } else {
                // A forked child: the thread is its parent's, not ours to
                // join or detach.
                std::mem::forget(t);
            }
        }
    }
}

fn serve(listener: TrackedFd, wake: TrackedFd, kind: Kind, extra: u64, fds: Vec<TrackedFd>) {
    let mut answer = [0u8; ANSWER];
    answer[0] = kind.byte();
    answer[1..].copy_from_slice(&extra.to_le_bytes());
    let uid = rustix::process::geteuid().as_raw();
    let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    loop {
        let ready = match sys::socket::wait_readable(&[listener.as_fd(), wake.as_fd()], None) {
            Ok(r) => r,
            Err(_) => return,
        };
        if ready[1] {
            return;
        }
        loop {
            let conn = match sys::socket::accept(listener.as_fd()) {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // A connection reset before it was accepted, say.
                Err(_) => break,
            };
            // An answer never blocks: it is one byte (and descriptors) on a
            // fresh connection. A failure concerns that peer alone.
            let _ = match sys::socket::peer_credentials(conn.as_fd()) {
                Ok(c) if c.uid == uid => sys::socket::send_all(conn.as_fd(), &[&answer], &fds),
                _ => sys::socket::send_all(conn.as_fd(), &[&[REFUSED; ANSWER]], &[]),
            };
        }
    }
}

/// Asks the holder of `name` for its object: its kind, number and
/// descriptor.
pub(crate) fn fetch(name: &str) -> Result<(Kind, u64, OwnedFd), NameError> {
    let addr = address(name)?;
    let conn = match sys::socket::connect_abstract(&addr) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(NameError::NotFound(name.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let uid = rustix::process::geteuid().as_raw();
    if sys::socket::peer_credentials(conn.as_fd())?.uid != uid {
        return Err(NameError::Foreign(name.to_string()));
    }
    let deadline = Instant::now() + ANSWER_WITHIN;
    let mut answer = [0u8; ANSWER];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < ANSWER {
        if !sys::socket::wait_readable_one(conn.as_fd(), Some(deadline))? {
            return Err(NameError::NoAnswer(name.to_string()));
        }
        let n = match sys::socket::recv(conn.as_fd(), &mut answer[got..], &mut fds, true) {
            Ok(n) => n,
            // The listening socket closed with our connection still
            // pending: the name was being given up (its last copy can be
            // in a child another thread was forking at that moment, until
            // the child closes it).
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && got == 0 => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        got += n;
    }
    if got == 0 {
        // The holder closed without answering: it was giving the name up.
        return Err(NameError::NotFound(name.to_string()));
    }
    if answer[0] == REFUSED {
        return Err(NameError::Foreign(name.to_string()));
    }
    let nonsense = |what: &str| {
        NameError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the holder of the name {name:?} answered {what}"),
        ))
    };
    let kind = Kind::from_byte(answer[0]).ok_or_else(|| nonsense("an unknown kind"))?;
    if got < ANSWER {
        return Err(nonsense("too little"));
    }
    let extra = u64::from_le_bytes(answer[1..].try_into().expect("8 bytes"));
    if fds.len() != 1 {
        return Err(nonsense("the wrong number of descriptors"));
    }
    Ok((kind, extra, fds.remove(0)))
}
