//! Shared memory: memfd-backed mappings that every process holding the
//! descriptor can map. A memfd has no name in the file system, so nothing is
//! left in `/dev/shm` when processes die: the memory goes away with the last
//! descriptor and mapping.
//!
//! Two rules make a mapping safe to keep while other processes hold the
//! same memfd, whatever they do with it:
//!
//! * **Its size cannot change.** Every memfd this crate maps is sealed
//!   against shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW`, then
//!   `F_SEAL_SEAL`) before it is mapped, and a received memfd is mapped
//!   only if it carries those seals. Without them, any holder of the
//!   descriptor could `ftruncate` it and the next access to the mapping
//!   would be a bus error (`SIGBUS`) in every process.
//! * **Its bytes are only ever copied with atomic accesses**
//!   ([`Mapping::read`], [`Mapping::write`]): another process may write the
//!   same bytes at the same time, and a plain `memcpy` racing with a write
//!   is a data race. Relaxed atomic loads and stores of bytes and aligned
//!   words race with nothing; a concurrent write shows up as some mix of
//!   old and new bytes, each word whole.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, SealFlags, memfd_create};
use rustix::mm::{MapFlags, ProtFlags};

/// The seals a mapped memfd must carry: its size is fixed for good.
const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// A shared, read-write mapping of a whole memfd whose size is sealed.
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

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Maps `len` bytes of `fd` read-write at an address that is a multiple of
/// `align` (a power of two; page alignment is always given).
fn map(fd: BorrowedFd<'_>, len: usize, align: usize) -> io::Result<NonNull<u8>> {
    let prot = ProtFlags::READ | ProtFlags::WRITE;
    let page = rustix::param::page_size();
    if !align.is_power_of_two() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "alignment is not a power of two",
        ));
    }
    if align <= page {
        // SAFETY: a fresh mapping chosen by the kernel (null hint) overlaps
        // no Rust object; `len` is the memfd's size, sealed so that no
        // process can shrink it, so every mapped page stays backed.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
        return NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"));
    }
    // Over-aligned: reserve `len + align` bytes of address space, map the
    // memfd over an aligned address inside, give back the rest.
    let span = len.checked_add(align).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "mapping too large for its alignment",
        )
    })?;
    // SAFETY: a fresh inaccessible reservation chosen by the kernel
    // overlaps no Rust object.
    let base = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            span,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )?
    }
    .cast::<u8>();
    let lead = (base as usize).wrapping_neg() & (align - 1);
    let mapped_end = lead + len.next_multiple_of(page);
    // SAFETY: `[base + lead, base + lead + len)` lies inside the reservation
    // made above, which this function alone owns, so MAP_FIXED replaces
    // nothing else; the memfd's size is sealed (see above).
    let fixed = unsafe {
        rustix::mm::mmap(
            base.add(lead).cast(),
            len,
            prot,
            MapFlags::SHARED | MapFlags::FIXED,
            fd,
            0,
        )
    };
    // SAFETY: the parts of the reservation before and after the memfd's
    // pages are still ours and hold nothing; `lead` and `mapped_end` are
    // page multiples (the reservation and `align` are page-aligned).
    unsafe {
        if lead > 0 {
            let _ = rustix::mm::munmap(base.cast(), lead);
        }
        if mapped_end < span {
            let _ = rustix::mm::munmap(base.add(mapped_end).cast(), span - mapped_end);
        }
    }
    match fixed {
        Ok(p) => NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null")),
        Err(e) => {
            // SAFETY: the middle of the reservation is still ours.
            let _ = unsafe { rustix::mm::munmap(base.add(lead).cast(), len) };
            Err(e.into())
        }
    }
}

impl Mapping {
    /// Creates `len` bytes (at least 1) of zeroed shared memory, sealed
    /// against resizing.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Mapping> {
        Mapping::create_aligned(name, len, 1)
    }

    /// As [`create`](Self::create), mapped at a multiple of `align` (a
    /// power of two) in this process. Use [`attach_aligned`](Self::attach_aligned)
    /// with the same `align` in the others.
    pub(crate) fn create_aligned(name: &str, len: usize, align: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty shared memory",
            ));
        }
        let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        let size = u64::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "shared memory too large"))?;
        rustix::fs::ftruncate(&fd, size)?;
        rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS | SealFlags::SEAL)?;
        let ptr = map(fd.as_fd(), len, align.max(1))?;
        Ok(Mapping { ptr, len, fd })
    }

    /// Maps the whole memfd `fd` (received from another process). Refused
    /// (`InvalidData`) unless its size is sealed.
    pub(crate) fn attach(fd: OwnedFd) -> io::Result<Mapping> {
        Mapping::attach_aligned(fd, 1)
    }

    /// As [`attach`](Self::attach), mapped at a multiple of `align`.
    pub(crate) fn attach_aligned(fd: OwnedFd, align: usize) -> io::Result<Mapping> {
        // The seals first: once they are there, no process can remove them,
        // so the size read next is the size for good.
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| {
            invalid(format!(
                "refusing to map a descriptor that is not a sealable memfd ({e})"
            ))
        })?;
        if !seals.contains(SIZE_SEALS) {
            return Err(invalid(
                "refusing to map shared memory that is not sealed against shrinking and \
                 growing: another holder could truncate it under the mapping"
                    .into(),
            ));
        }
        let len = usize::try_from(rustix::fs::fstat(&fd)?.st_size)
            .map_err(|_| invalid("negative shared memory size".into()))?;
        if len == 0 {
            return Err(invalid("empty shared memory".into()));
        }
        let ptr = map(fd.as_fd(), len, align.max(1))?;
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

    fn in_bounds(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// Copies `out.len()` bytes from `offset` into `out` with atomic
    /// accesses; false (and nothing copied) if out of bounds. Racing
    /// writers leave a mix of old and new bytes, never undefined behaviour.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        if !self.in_bounds(offset, out.len()) {
            return false;
        }
        // SAFETY: `offset..offset + out.len()` is inside the mapping
        // (checked), whose size no process can change (sealed), and which
        // lives as long as `self`.
        unsafe { copy_out(self.as_ptr().add(offset), out) };
        true
    }

    /// Copies `data` to `offset` with atomic accesses; false (and nothing
    /// copied) if out of bounds.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> bool {
        if !self.in_bounds(offset, data.len()) {
            return false;
        }
        // SAFETY: as in `read`.
        unsafe { copy_in(self.as_ptr().add(offset), data) };
        true
    }
}

const WORD: usize = std::mem::size_of::<AtomicU64>();

/// How many leading bytes to copy one by one before `addr` is aligned for
/// `AtomicU64`, at most `len`.
fn head_len(addr: usize, len: usize) -> usize {
    (addr.wrapping_neg() % std::mem::align_of::<AtomicU64>()).min(len)
}

/// Copies `out.len()` bytes from shared memory at `src` with relaxed atomic
/// loads: bytes up to an aligned address, then 64-bit words, then bytes.
///
/// # Safety
/// `src..src + out.len()` must be mapped, readable memory for the whole
/// call, which no Rust reference of a non-atomic type covers (other
/// processes may write it at any time: all accesses here are atomic).
pub(crate) unsafe fn copy_out(src: *const u8, out: &mut [u8]) {
    let len = out.len();
    let head = head_len(src as usize, len);
    let mut i = 0;
    while i < head {
        // SAFETY: in bounds (the caller's range); a byte is always aligned;
        // the memory is only ever accessed atomically (caller's contract).
        out[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        i += 1;
    }
    while i + WORD <= len {
        // SAFETY: in bounds; `src + i` is aligned for `AtomicU64` (the head
        // was copied bytewise up to that point, then whole words).
        let w = unsafe { AtomicU64::from_ptr(src.add(i).cast_mut().cast::<u64>()) }
            .load(Ordering::Relaxed);
        out[i..i + WORD].copy_from_slice(&w.to_ne_bytes());
        i += WORD;
    }
    while i < len {
        // SAFETY: as for the head.
        out[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        i += 1;
    }
}

/// Copies `data` into shared memory at `dst` with relaxed atomic stores, in
/// the same pieces as [`copy_out`].
///
/// # Safety
/// `dst..dst + data.len()` must be mapped, writable memory for the whole
/// call, which no Rust reference of a non-atomic type covers.
pub(crate) unsafe fn copy_in(dst: *mut u8, data: &[u8]) {
    let len = data.len();
    let head = head_len(dst as usize, len);
    let mut i = 0;
    while i < head {
        // SAFETY: in bounds (the caller's range); accessed atomically only.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(data[i], Ordering::Relaxed);
        i += 1;
    }
    while i + WORD <= len {
        let w = u64::from_ne_bytes(data[i..i + WORD].try_into().expect("a word"));
        // SAFETY: in bounds and aligned for `AtomicU64` (see `copy_out`).
        unsafe { AtomicU64::from_ptr(dst.add(i).cast::<u64>()) }.store(w, Ordering::Relaxed);
        i += WORD;
    }
    while i < len {
        // SAFETY: as for the head.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(data[i], Ordering::Relaxed);
        i += 1;
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

/// Reads a whole memfd into a vector (its size, then `pread`s). The memfd
/// comes from another process and is never mapped, so a sender that
/// truncates it meanwhile causes an error (`UnexpectedEof`), never a bus
/// error; a size this process cannot allocate is an error too
/// (`OutOfMemory`), not an abort.
pub(crate) fn read_memfd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let len = usize::try_from(rustix::fs::fstat(fd)?.st_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative size"))?;
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("a message of {len} bytes does not fit in memory"),
        )
    })?;
    out.resize(len, 0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_mappings_cannot_be_resized() {
        let m = Mapping::create("multiproc-test", 10_000).unwrap();
        for size in [0, 4096, 1 << 20] {
            assert_eq!(
                rustix::fs::ftruncate(m.fd(), size),
                Err(rustix::io::Errno::PERM)
            );
        }
        assert!(m.write(9_990, b"0123456789"));
        let mut out = [0u8; 10];
        assert!(m.read(9_990, &mut out));
        assert_eq!(&out, b"0123456789");
    }

    #[test]
    fn unsealed_memfds_are_refused() {
        let unsealed = memfd_create("multiproc-test", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        let e = Mapping::attach(unsealed).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");

        // Sealable, but only against growing: a holder could still shrink it.
        let half = memfd_create(
            "multiproc-test",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&half, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&half, SealFlags::GROW).unwrap();
        let e = Mapping::attach(half).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("sealed"), "{e}");

        // Not a memfd at all.
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let e = Mapping::attach(r).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn mappings_honour_any_alignment() {
        for align in [1, 64, 4096, 1 << 13, 1 << 16, 1 << 21] {
            let m = Mapping::create_aligned("multiproc-test", 100, align).unwrap();
            assert_eq!(m.as_ptr() as usize % align, 0, "{align}");
            assert!(m.write(0, &[7; 100]));
            let fd = rustix::io::fcntl_dupfd_cloexec(m.fd(), 0).unwrap();
            let again = Mapping::attach_aligned(fd, align).unwrap();
            assert_eq!(again.as_ptr() as usize % align, 0, "{align}");
            let mut out = [0u8; 100];
            assert!(again.read(0, &mut out));
            assert_eq!(out, [7; 100]);
        }
    }

    #[test]
    fn atomic_copies_are_exact_at_every_offset_and_length() {
        let m = Mapping::create("multiproc-test", 256).unwrap();
        let pattern: Vec<u8> = (0..=255).collect();
        for offset in 0..20 {
            for len in 0..40 {
                assert!(m.write(0, &[0; 256]));
                assert!(m.write(offset, &pattern[..len]));
                let mut all = [0u8; 256];
                assert!(m.read(0, &mut all));
                assert!(all[..offset].iter().all(|&b| b == 0));
                assert_eq!(&all[offset..offset + len], &pattern[..len]);
                assert!(all[offset + len..].iter().all(|&b| b == 0));
                let mut part = vec![0u8; len];
                assert!(m.read(offset, &mut part));
                assert_eq!(part, &pattern[..len]);
            }
        }
        assert!(!m.read(250, &mut [0; 7]));
        assert!(!m.write(usize::MAX, b"x"));
    }

    #[test]
    fn a_truncated_message_memfd_is_an_error_or_shorter_never_a_crash() {
        let fd = memfd_with("multiproc-test", &[b"hello ", b"world"]).unwrap();
        assert_eq!(read_memfd(fd.as_fd()).unwrap(), b"hello world");
        // The sender shrinks it after sending: nothing is mapped, so the
        // receiver reads what is left.
        rustix::fs::ftruncate(&fd, 5).unwrap();
        assert_eq!(read_memfd(fd.as_fd()).unwrap(), b"hello");
    }
}
