//! A raw shared-memory segment: the memory behind `SharedMemory`. Its
//! size is sealed (see `sys::shm`) and every access is atomic, so no
//! process holding it can make another crash or race.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU64;

use crate::sys::shm::Mapping;

/// Bytes of shared memory with bounds-checked, race-tolerant access.
#[derive(Debug)]
pub(crate) struct Segment {
    map: Mapping,
}

macro_rules! atomic_view {
    ($name:ident, $t:ty) => {
        /// The segment as atomics (its length divided by their width).
        pub(crate) fn $name(&self) -> &[$t] {
            let n = self.map.len() / std::mem::size_of::<$t>();
            // SAFETY: the mapping is page-aligned, so aligned for every
            // atomic width; `n` atomics fit in it, and keep fitting (its
            // size is sealed: no process can shrink it); atomics may be accessed
            // concurrently by other processes (they are plain memory of the
            // same size as their integer, valid at any bytes); the slice
            // borrows `self`, which owns the mapping.
            unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<$t>(), n) }
        }
    };
}

impl Segment {
    /// A new zeroed segment of `len` bytes (at least 1).
    pub(crate) fn create(len: usize) -> io::Result<Segment> {
        Segment::create_labelled("multiproc-shm", len)
    }

    /// As [`create`](Self::create), its memfd labelled `label` (what
    /// `/proc/<pid>/fd/<n>` shows after `/memfd:`).
    pub(crate) fn create_labelled(label: &str, len: usize) -> io::Result<Segment> {
        Ok(Segment {
            map: Mapping::create(label, len.max(1))?,
        })
    }

    /// A new zeroed segment of `len` bytes that only this mapping can
    /// ever write: other processes map it read-only
    /// ([`ReadMapping`](crate::sys::shm::ReadMapping)).
    pub(crate) fn create_sole_writer(len: usize) -> io::Result<Segment> {
        Ok(Segment {
            map: Mapping::create_sole_writer("multiproc-shm", len.max(1))?,
        })
    }

    /// A new zeroed segment of `len` bytes kept out of children forked
    /// from this process (see [`Mapping::keep_from_forks`]): a child forked
    /// with a copy of it reads and writes nothing through it.
    pub(crate) fn create_kept_from_forks(len: usize) -> io::Result<Segment> {
        let mut map = Mapping::create("multiproc-shm", len.max(1))?;
        map.keep_from_forks()?;
        Ok(Segment { map })
    }

    /// Maps a segment from its memfd.
    pub(crate) fn attach(fd: OwnedFd) -> io::Result<Segment> {
        Ok(Segment {
            map: Mapping::attach(fd)?,
        })
    }

    /// Its size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The memfd.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd()
    }

    /// Copies bytes out from `offset`; false if out of bounds. Atomic
    /// accesses: another process writing meanwhile is no data race.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        self.map.read(offset, out)
    }

    /// Copies bytes in at `offset`; false if out of bounds.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> bool {
        self.map.write(offset, data)
    }

    atomic_view!(atomic_u64, AtomicU64);
}
