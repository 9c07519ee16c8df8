//! Shared memory blocks (Python's `multiprocessing.shared_memory`).
//!
//! A block is a memfd: it has no file in `/dev/shm`, so a crash can never
//! leak one there, and its memory is freed when the last process holding it
//! exits. Its name resolves through the creator's `/proc/<pid>/fd/<n>` for
//! as long as the creator holds the name (until [`SharedMemory::unlink`] or
//! drop), and to that block only (a token in the name must match the
//! memfd's label, so a descriptor number reused after the name went attaches
//! nothing); passing the block itself to a child, as an argument or in a
//! message, works whatever the creator does.
//!
//! A block can also be created under a name of the user's choosing
//! ([`SharedMemory::create_named`], Python's `SharedMemory(name=...,
//! create=True, size=...)`) and attached by that name from any process of
//! the same user in the same network namespace, whether or not it got
//! anything from the creator ([`SharedMemory::attach_named`]): a second
//! block of the same name is [`NameError::Exists`], a name nobody holds
//! [`NameError::NotFound`]. Such a name is not a file in `/dev/shm` but an
//! abstract Unix socket address (`\0multiproc-shm-<uid>-<name>`) on which a
//! thread of the creator hands out the memfd (`SCM_RIGHTS`) to processes of
//! the same user: the kernel removes the address when the creator lets the
//! name go ([`SharedMemory::unlink`], or dropping the creating handle and
//! its clones) or dies, even by `SIGKILL`, so nothing is ever left behind.
//! The memory itself stays with every process that has attached, and is
//! freed with the last one: a name outlives neither its creator nor an
//! `unlink`, but a block outlives both.

mod list;
mod name;

pub use list::{Item, ListError, ShareableList};
pub use name::{MAX_NAME_LEN, NameError};

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

use crate::shm::segment::Segment;
use crate::sys;
use crate::wire::handles::{self, FdRef};

#[derive(Debug)]
struct Inner {
    segment: Segment,
}

impl Drop for Inner {
    fn drop(&mut self) {
        handles::untrack(self.segment.fd());
    }
}

/// A block of shared memory (Python's `SharedMemory`).
///
/// ```
/// use multiproc::{Process, SharedMemory};
///
/// fn fill(shm: SharedMemory) {
///     shm.write(0, b"written by a child").unwrap();
/// }
///
/// let shm = SharedMemory::create(4096)?;
/// Process::spawn(fill, shm.clone())?.join()?;
/// let mut buf = [0u8; 18];
/// shm.read(0, &mut buf)?;
/// assert_eq!(&buf, b"written by a child");
///
/// // Another process can also attach by name while the creator holds it.
/// let again = SharedMemory::attach(shm.name().unwrap())?;
/// assert_eq!(again.size(), shm.size());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SharedMemory {
    inner: Arc<Inner>,
    name: Option<Arc<(String, Holder)>>,
}

/// The memfd label of a block created with a generated name: the name's
/// last part, so that the name resolves to this block and no other.
fn label(token: u64) -> String {
    format!("multiproc-shm-{token:016x}")
}

/// What keeps a name resolving.
#[derive(Debug)]
enum Holder {
    /// A generated name: this descriptor, read through `/proc`.
    Fd(#[allow(dead_code)] OwnedFd),
    /// A chosen name: its server.
    Served(#[allow(dead_code)] name::Server),
}

/// A read or write outside the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bytes {offset}..{end} are outside a block of {size} bytes")]
pub struct OutOfBounds {
    /// Where the access started.
    pub offset: usize,
    /// Where it ended.
    pub end: usize,
    /// The block's size.
    pub size: usize,
}

impl SharedMemory {
    fn from_segment(segment: Segment) -> io::Result<SharedMemory> {
        handles::track(segment.fd());
        Ok(SharedMemory {
            inner: Arc::new(Inner { segment }),
            name: None,
        })
    }

    /// A new zeroed block of `size` bytes (at least 1: a size of 0 is an `InvalidInput` error, as in Python): [`size`](Self::size)
    /// reports exactly that, and no process holding the block can change it
    /// (the memfd is sealed against shrinking and growing).
    pub fn create(size: usize) -> io::Result<SharedMemory> {
        if size == 0 {
            // As Python's `SharedMemory(create=True, size=0)`.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a shared memory block must be at least one byte",
            ));
        }
        // A fresh token in the memfd's label and in the name: a descriptor
        // number is reused as soon as it is closed, so `<pid>-<fd>` alone
        // would let a stale name attach whatever block has the number now.
        let mut token = [0u8; 8];
        getrandom::fill(&mut token).map_err(|e| io::Error::other(e.to_string()))?;
        let token = u64::from_le_bytes(token);
        let segment = Segment::create_labelled(&label(token), size)?;
        let mut shm = SharedMemory::from_segment(segment)?;
        let fd = sys::socket::dup(shm.inner.segment.fd())?;
        shm.name = Some(Arc::new((
            format!(
                "multiproc-{}-{}-{token:016x}",
                sys::process::pid(),
                fd.as_raw_fd()
            ),
            Holder::Fd(fd),
        )));
        Ok(shm)
    }

    /// A new zeroed block of `size` bytes (at least 1) without a name, for
    /// the crate's own use: nothing but the handle reaches it.
    pub(crate) fn create_unnamed(size: usize) -> io::Result<SharedMemory> {
        SharedMemory::from_segment(Segment::create(size)?)
    }

    /// A new zeroed block of `size` bytes under the name `name` (Python's
    /// `SharedMemory(name, create=True, size=size)`), which any process of
    /// this user can [`attach_named`](Self::attach_named) while this
    /// handle or a clone of it holds the name.
    ///
    /// The name is no file in `/dev/shm` but an abstract Unix socket
    /// address (`\0multiproc-shm-<uid>-<name>`) on which a thread of this
    /// process hands the block's memfd to processes of the same user: the
    /// kernel removes it when the name is let go ([`unlink`](Self::unlink),
    /// or dropping the creating handle and its clones) or this process
    /// dies, even by `SIGKILL`, so nothing is ever left behind. Processes
    /// that attached keep the memory; the name goes with its creator.
    ///
    /// A name is 1 to [`MAX_NAME_LEN`] bytes, without `/` or NUL, and does
    /// not begin with `multiproc-` (the generated names); a name already
    /// held is [`NameError::Exists`]; a size of 0 is
    /// [`NameError::ZeroSize`]. Each named block keeps one thread of this
    /// process, asleep until someone attaches, until the name goes.
    ///
    /// ```
    /// use multiproc::{NameError, SharedMemory};
    ///
    /// let shm = SharedMemory::create_named("doc-example-block", 4096)?;
    /// shm.write(0, b"hello")?;
    /// // Any process of this user can attach by the name alone.
    /// let other = SharedMemory::attach_named("doc-example-block")?;
    /// let mut buf = [0u8; 5];
    /// other.read(0, &mut buf)?;
    /// assert_eq!(&buf, b"hello");
    /// assert!(matches!(
    ///     SharedMemory::create_named("doc-example-block", 1),
    ///     Err(NameError::Exists(_))
    /// ));
    /// drop(shm); // The name goes with the creating handle...
    /// assert!(matches!(
    ///     SharedMemory::attach_named("doc-example-block"),
    ///     Err(NameError::NotFound(_))
    /// ));
    /// other.read(0, &mut buf)?; // ...the memory stays with its holders.
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_named(name: &str, size: usize) -> Result<SharedMemory, NameError> {
        if size == 0 {
            return Err(NameError::ZeroSize);
        }
        let segment = Segment::create(size)?;
        let server = name::Server::start(name, name::Kind::Block, 0, &[segment.fd()])?;
        let mut shm = SharedMemory::from_segment(segment)?;
        shm.name = Some(Arc::new((name.to_string(), Holder::Served(server))));
        Ok(shm)
    }

    /// Attaches to a block by a name chosen at
    /// [`create_named`](Self::create_named) (Python's
    /// `SharedMemory(name)`), from any process of the same user: one that
    /// got nothing from the creator too. [`NameError::NotFound`] if no
    /// process holds the name. The handle has no [`name`](Self::name) of
    /// its own (only the creator's handles do).
    ///
    /// A [`ShareableList`]'s name attaches its block (as
    /// [`ShareableList::shm`]).
    pub fn attach_named(name: &str) -> Result<SharedMemory, NameError> {
        let (_, _, fd) = name::fetch(name)?;
        Ok(SharedMemory::from_segment(Segment::attach(fd)?)?)
    }

    /// Attaches to a block by the name its creator reported, while the
    /// creator still holds it: a generated name, or one chosen at
    /// [`create_named`](Self::create_named) (then as
    /// [`attach_named`](Self::attach_named), its [`NameError`] inside the
    /// `io::Error`). A name its creator no longer holds is
    /// `io::ErrorKind::NotFound`, even after the creator has made other
    /// blocks since: a generated name resolves to its own block only (and
    /// to it again only if the creator holds a copy of its descriptor
    /// under the old number: see `docs/shared-memory.md`).
    pub fn attach(name: &str) -> io::Result<SharedMemory> {
        if name::is_chosen(name) {
            return Ok(SharedMemory::attach_named(name)?);
        }
        let bad = || {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no multiproc shared memory named {name:?}"),
            )
        };
        let rest = name.strip_prefix("multiproc-").ok_or_else(bad)?;
        let mut parts = rest.split('-');
        let (Some(pid), Some(fd), Some(token), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        // Each part exactly as `create` writes it: plain decimal numbers
        // (no sign, no leading zero), 16 lowercase hex digits.
        let (pid, fd): (u32, u32) = (
            pid.parse().map_err(|_| bad())?,
            fd.parse().map_err(|_| bad())?,
        );
        let token = u64::from_str_radix(token, 16)
            .ok()
            .filter(|t| format!("multiproc-{pid}-{fd}-{t:016x}") == name)
            .ok_or_else(bad)?;
        let fd = sys::shm::open_labelled_memfd(pid, fd, &label(token)).ok_or_else(bad)?;
        SharedMemory::from_segment(Segment::attach(fd)?)
    }

    /// The name another process can [`attach`](Self::attach) with: only
    /// the creating handle (and its clones) has one, until unlinked. For a
    /// block made by [`create_named`](Self::create_named), the name chosen.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref().map(|(n, _)| n.as_str())
    }

    /// Lets this handle's hold on the name go (Python's `unlink`): the name
    /// stops resolving when no clone of the creating handle holds it any
    /// more. The memory stays for every process that has it, and is freed
    /// with the last one.
    pub fn unlink(&mut self) {
        self.name = None;
    }

    /// The block's size in bytes.
    pub fn size(&self) -> usize {
        self.inner.segment.len()
    }

    fn bounds(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        let end = offset.saturating_add(len);
        if end > self.size() {
            Err(OutOfBounds {
                offset,
                end,
                size: self.size(),
            })
        } else {
            Ok(())
        }
    }

    /// Copies `out.len()` bytes from `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), OutOfBounds> {
        self.bounds(offset, out.len())?;
        self.inner.segment.read(offset, out);
        Ok(())
    }

    /// Copies `data` into the block at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), OutOfBounds> {
        self.bounds(offset, data.len())?;
        self.inner.segment.write(offset, data);
        Ok(())
    }

    /// The block as 64-bit words that any process may read and write at
    /// once.
    ///
    /// This is the only atomic view: [`read`](Self::read) and
    /// [`write`](Self::write) also access the block by whole aligned 64-bit
    /// words (a compare-and-swap for a word written in part), because Rust
    /// forbids an atomic write racing with an atomic access of another size
    /// to the same bytes. Byte or 32-bit views beside it would let two
    /// threads of safe code do exactly that.
    pub fn as_atomic_u64(&self) -> &[AtomicU64] {
        self.inner.segment.atomic_u64()
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FdRef(self.inner.segment.fd()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fd = handles::deserialize_fd(d)?;
        let segment = Segment::attach(fd).map_err(crate::wire::codec::custom)?;
        SharedMemory::from_segment(segment).map_err(crate::wire::codec::custom)
    }
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.segment.fd()
    }
}
