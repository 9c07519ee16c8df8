//! Shared memory: memfd-backed mappings that every process holding the
//! descriptor can map. A memfd has no name in the file system, so nothing is
//! left in `/dev/shm` when processes die: the memory goes away with the last
//! descriptor and mapping.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, memfd_create};
use rustix::mm::{MapFlags, ProtFlags};

/// A shared, read-write mapping of a whole memfd.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory; every access to it goes
// through raw pointers and atomics whose synchronisation the structures in
// `shm` define. Moving or sharing the handle between threads is no
// different from sharing it between processes.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<NonNull<u8>> {
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    // SAFETY: a fresh mapping chosen by the kernel (null hint) overlaps no
    // Rust object; `len` is the memfd's size, so every mapped page is
    // backed.
    let ptr =
        unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl Mapping {
    /// Creates `len` bytes of zeroed shared memory.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Mapping> {
        let fd = memfd_create(name, MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        let ptr = map(fd.as_fd(), len, true)?;
        Ok(Mapping { ptr, len, fd })
    }

    /// Maps the whole memfd `fd` (received from another process).
    pub(crate) fn attach(fd: OwnedFd) -> io::Result<Mapping> {
        let len = usize::try_from(rustix::fs::fstat(&fd)?.st_size).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "negative shared memory size")
        })?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "empty shared memory",
            ));
        }
        let ptr = map(fd.as_fd(), len, true)?;
        Ok(Mapping { ptr, len, fd })
    }

    /// The mapping's first byte.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The memfd behind it.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned, and no
        // reference into the mapping outlives `self` (the structures in
        // `shm` borrow from it).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Writes `parts` into a new memfd of exactly their total size: how a large
/// message leaves the ring.
pub(crate) fn memfd_with(name: &str, parts: &[&[u8]]) -> io::Result<OwnedFd> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let fd = memfd_create(name, MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, total as u64)?;
    let mut offset = 0u64;
    for part in parts {
        let mut done = 0;
        while done < part.len() {
            match rustix::io::pwrite(&fd, &part[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        offset += part.len() as u64;
    }
    Ok(fd)
}

/// Reads a whole memfd into a vector (its size, then `pread`s).
pub(crate) fn read_memfd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let len = usize::try_from(rustix::fs::fstat(fd)?.st_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative size"))?;
    let mut out = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match rustix::io::pread(fd, &mut out[done..], done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the memfd shrank",
                ));
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}
