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
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// For a mapping kept from forks ([`Mapping::keep_from_forks`]): the
    /// process that has it. In any other (a child forked with a copy of
    /// this handle), the handle reads, writes and unmaps nothing.
    owner: Option<u32>,
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

/// A new sealable memfd of `len` bytes (at least 1), not sealed yet.
fn sized_memfd(name: &str, len: usize) -> io::Result<OwnedFd> {
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
    Ok(fd)
}

/// The size of a received memfd, for good: refused (`InvalidData`) unless
/// it is sealed against shrinking and growing, or if it is empty.
fn sealed_len(fd: &OwnedFd) -> io::Result<usize> {
    // The seals first: once they are there, no process can remove them,
    // so the size read next is the size for good.
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| {
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
    let len = usize::try_from(rustix::fs::fstat(fd)?.st_size)
        .map_err(|_| invalid("negative shared memory size".into()))?;
    if len == 0 {
        return Err(invalid("empty shared memory".into()));
    }
    Ok(len)
}

/// Maps `len` bytes of `fd` read-write at an address that is a multiple of
/// `align` (a power of two; page alignment is always given).
fn map(fd: BorrowedFd<'_>, len: usize, align: usize) -> io::Result<NonNull<u8>> {
    map_with(fd, len, align, ProtFlags::READ | ProtFlags::WRITE)
}

/// [`map`] with the protection `prot`.
fn map_with(
    fd: BorrowedFd<'_>,
    len: usize,
    align: usize,
    prot: ProtFlags,
) -> io::Result<NonNull<u8>> {
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
        let fd = sized_memfd(name, len)?;
        rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS | SealFlags::SEAL)?;
        let ptr = map(fd.as_fd(), len, align.max(1))?;
        Ok(Mapping {
            ptr,
            len,
            fd,
            owner: None,
        })
    }

    /// As [`create`](Self::create), then sealed against writes by any
    /// other mapping or descriptor (`F_SEAL_FUTURE_WRITE`): this mapping
    /// is the only writer there will ever be, and another process can only
    /// map it read-only ([`ReadMapping::attach`]).
    pub(crate) fn create_sole_writer(name: &str, len: usize) -> io::Result<Mapping> {
        let fd = sized_memfd(name, len)?;
        // Mapped before the write seal, which spares existing mappings.
        let ptr = map(fd.as_fd(), len, 1)?;
        let mut mapping = Mapping {
            ptr,
            len,
            fd,
            owner: None,
        };
        rustix::fs::fcntl_add_seals(
            &mapping.fd,
            SIZE_SEALS | SealFlags::FUTURE_WRITE | SealFlags::SEAL,
        )?;
        // Nor may a forked child write it through a copy of this mapping.
        mapping.keep_from_forks()?;
        Ok(mapping)
    }

    /// Keeps this mapping out of children forked from this process
    /// (`MADV_DONTFORK`): they get no copy of it, so they cannot write
    /// through it, and a copy of this handle in one of them reads, writes
    /// and unmaps nothing ([`read`](Self::read) and [`write`](Self::write)
    /// fail there). Such a mapping must be used through those methods
    /// only, never through [`as_ptr`](Self::as_ptr).
    pub(crate) fn keep_from_forks(&mut self) -> io::Result<()> {
        // SAFETY: the range is exactly this mapping's, which `self` owns;
        // the advice changes what a fork copies, not what is mapped here.
        unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                rustix::mm::Advice::LinuxDontFork,
            )?;
        }
        self.owner = Some(crate::sys::futex::pid());
        Ok(())
    }

    /// Whether the mapping exists in the calling process (see
    /// [`keep_from_forks`](Self::keep_from_forks)).
    #[inline]
    fn mapped_here(&self) -> bool {
        self.owner.is_none_or(|pid| pid == crate::sys::futex::pid())
    }

    /// Maps the whole memfd `fd` (received from another process). Refused
    /// (`InvalidData`) unless its size is sealed.
    pub(crate) fn attach(fd: OwnedFd) -> io::Result<Mapping> {
        Mapping::attach_aligned(fd, 1)
    }

    /// As [`attach`](Self::attach), mapped at a multiple of `align`.
    pub(crate) fn attach_aligned(fd: OwnedFd, align: usize) -> io::Result<Mapping> {
        let len = sealed_len(&fd)?;
        let ptr = map(fd.as_fd(), len, align.max(1))?;
        Ok(Mapping {
            ptr,
            len,
            fd,
            owner: None,
        })
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

    #[inline]
    fn in_bounds(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len) && self.mapped_here()
    }

    /// Copies `out.len()` bytes from `offset` into `out` with atomic
    /// accesses; false (and nothing copied) if out of bounds. Racing
    /// writers leave a mix of old and new bytes, never undefined behaviour.
    #[inline]
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
    #[inline]
    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> bool {
        if !self.in_bounds(offset, data.len()) {
            return false;
        }
        // SAFETY: as in `read`.
        unsafe { copy_in(self.as_ptr().add(offset), data) };
        true
    }
}

/// A read-only shared mapping of a whole memfd whose size is sealed: how a
/// process maps a block another one writes (see
/// [`Mapping::create_sole_writer`]). It offers reads only.
#[derive(Debug)]
pub(crate) struct ReadMapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Held while it is mapped, so that the block shows among the
    /// process's descriptors.
    _fd: OwnedFd,
}

// SAFETY: as for `Mapping`: shared memory, read only through atomic loads.
unsafe impl Send for ReadMapping {}
// SAFETY: as above.
unsafe impl Sync for ReadMapping {}

impl ReadMapping {
    /// Maps the whole memfd `fd` read-only. Refused (`InvalidData`)
    /// unless its size is sealed.
    pub(crate) fn attach(fd: OwnedFd) -> io::Result<ReadMapping> {
        let len = sealed_len(&fd)?;
        let ptr = map_with(fd.as_fd(), len, 1, ProtFlags::READ)?;
        Ok(ReadMapping { ptr, len, _fd: fd })
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `out.len()` bytes from `offset` into `out` with atomic loads
    /// (the writer may write meanwhile); false (and nothing copied) if out
    /// of bounds.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > self.len)
        {
            return false;
        }
        // SAFETY: `offset..offset + out.len()` is inside the mapping
        // (checked), whose size no process can change (sealed), and which
        // lives as long as `self`; `copy_out` only loads, which a
        // read-only mapping allows.
        unsafe { copy_out(self.ptr.as_ptr().add(offset), out) };
        true
    }
}

impl Drop for ReadMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `attach` with this length and is
        // referenced by nothing once its owner is dropped.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

const WORD: usize = std::mem::size_of::<AtomicU64>();

// Every access this crate makes to the bytes of a mapping (outside the
// typed atomics of a structure's header) is an aligned 64-bit atomic
// access to the word that contains them: loads for reads, stores for whole
// words, compare-and-swap loops for the bytes of a word written in part.
// Rust (like C++) forbids an atomic write racing with an atomic access of
// another size to the same bytes, so one size for everything is what makes
// two threads of ours copying overlapping ranges at different offsets (a
// user's `SharedMemory::write` at offset 1 and another's at offset 0, or a
// ring record garbled by a peer) a race of same-sized atomics: some bytes
// from each, never undefined behaviour.

/// The 8-aligned word containing `addr`'s byte, and `addr`'s offset in it.
#[inline]
fn word_of(addr: *const u8) -> (*const u8, usize) {
    let skew = addr as usize % WORD;
    (addr.wrapping_sub(skew), skew)
}

/// Copies `out.len()` bytes from shared memory at `src` with relaxed
/// 64-bit atomic loads of every aligned word that holds one of them.
///
/// # Safety
/// Every aligned 8-byte word holding a byte of `src..src + out.len()` must
/// be mapped and readable for the whole call (true of any range inside a
/// mapping, which is page-aligned and page-granular), and accessed only
/// atomically by this process (no Rust reference of a non-atomic type
/// covers it; other processes may write it at any time).
#[inline]
pub(crate) unsafe fn copy_out(src: *const u8, out: &mut [u8]) {
    if out.is_empty() {
        return;
    }
    let (mut word, skew) = word_of(src);
    let load = |word: *const u8| {
        // SAFETY: `word` is 8-aligned and holds a byte of the range (the
        // caller's contract); an `AtomicU64` is valid at any bits.
        unsafe { AtomicU64::from_ptr(word.cast_mut().cast::<u64>()) }
            .load(Ordering::Relaxed)
            .to_ne_bytes()
    };
    let mut rest: &mut [u8] = out;
    if skew != 0 {
        let take = (WORD - skew).min(rest.len());
        let (head, tail) = rest.split_at_mut(take);
        head.copy_from_slice(&load(word)[skew..skew + take]);
        rest = tail;
        word = word.wrapping_add(WORD);
    }
    let mut words = rest.chunks_exact_mut(WORD);
    for chunk in &mut words {
        let w: &mut [u8; WORD] = chunk.try_into().expect("a word");
        *w = load(word);
        word = word.wrapping_add(WORD);
    }
    let tail = words.into_remainder();
    if !tail.is_empty() {
        let n = tail.len();
        tail.copy_from_slice(&load(word)[..n]);
    }
}

/// Copies `data` into shared memory at `dst` with relaxed 64-bit atomic
/// accesses: a store for each word written whole, a compare-and-swap loop
/// for a word written in part (its other bytes keep what they hold).
///
/// # Safety
/// As [`copy_out`], for writing.
#[inline]
pub(crate) unsafe fn copy_in(dst: *mut u8, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let (word, skew) = word_of(dst);
    let mut word = word.cast_mut();
    let atom = |word: *mut u8| {
        // SAFETY: as in `copy_out`.
        unsafe { AtomicU64::from_ptr(word.cast::<u64>()) }
    };
    let merge = |word: *mut u8, at: usize, bytes: &[u8]| {
        let _ = atom(word).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
            let mut w = cur.to_ne_bytes();
            w[at..at + bytes.len()].copy_from_slice(bytes);
            Some(u64::from_ne_bytes(w))
        });
    };
    let mut rest = data;
    if skew != 0 {
        let take = (WORD - skew).min(rest.len());
        merge(word, skew, &rest[..take]);
        rest = &rest[take..];
        word = word.wrapping_add(WORD);
    }
    let mut words = rest.chunks_exact(WORD);
    for chunk in &mut words {
        let w: [u8; WORD] = chunk.try_into().expect("a word");
        atom(word).store(u64::from_ne_bytes(w), Ordering::Relaxed);
        word = word.wrapping_add(WORD);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        merge(word, 0, tail);
    }
}

/// Writes `parts`, one after another, as whole words from the 8-aligned
/// `dst`, the last word completed with zero bytes: for structures whose
/// records are padded to whole words (a ring record). Relaxed 64-bit
/// atomic stores only.
///
/// # Safety
/// `dst` must be 8-aligned, and the words from it up to the total length
/// of `parts` rounded up to 8 must be mapped and writable for the whole
/// call, and accessed only atomically by this process.
#[inline]
pub(crate) unsafe fn copy_words_in<'a>(dst: *mut u8, parts: impl IntoIterator<Item = &'a [u8]>) {
    debug_assert!((dst as usize).is_multiple_of(WORD));
    let mut word = dst;
    // Words are assembled in a register, little-endian (byte `i` in bits
    // `8 * i`), never in a buffer in memory: a word read back from bytes
    // just stored one by one stalls the store (no store forwarding).
    let store = |word: &mut *mut u8, value: u64| {
        // SAFETY: `*word` is 8-aligned and inside the range the caller
        // vouches for (the words of the total length rounded up).
        unsafe { AtomicU64::from_ptr(word.cast::<u64>()) }
            .store(u64::from_ne_bytes(value.to_le_bytes()), Ordering::Relaxed);
        *word = word.wrapping_add(WORD);
    };
    let mut acc = 0u64;
    let mut filled = 0;
    for part in parts {
        let mut rest = part;
        if filled > 0 {
            while filled < WORD {
                let Some((&b, more)) = rest.split_first() else {
                    break;
                };
                acc |= u64::from(b) << (8 * filled);
                filled += 1;
                rest = more;
            }
            if filled < WORD {
                continue;
            }
            store(&mut word, acc);
            acc = 0;
        }
        let mut words = rest.chunks_exact(WORD);
        for w in &mut words {
            store(&mut word, u64::from_le_bytes(w.try_into().expect("a word")));
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            acc |= u64::from(b) << (8 * i);
        }
        filled = words.remainder().len();
    }
    if filled > 0 {
        store(&mut word, acc);
    }
}

/// The little-endian word of `bytes` (at most 8 of them), completed with
/// zero bytes: read with at most three loads, whatever the length.
#[inline]
fn partial_word(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    if n >= 4 {
        // Two 4-byte halves that overlap when `n < 8`: the overlapping
        // bytes are the same, so or-ing them in twice changes nothing.
        let lo = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let hi = u32::from_le_bytes([bytes[n - 4], bytes[n - 3], bytes[n - 2], bytes[n - 1]]);
        u64::from(lo) | u64::from(hi) << (8 * (n - 4))
    } else if n > 0 {
        // The first, middle and last bytes cover every length from 1 to 3.
        u64::from(bytes[0])
            | u64::from(bytes[n / 2]) << (8 * (n / 2))
            | u64::from(bytes[n - 1]) << (8 * (n - 1))
    } else {
        0
    }
}

/// Writes a record of one `header` word and `payload`, as whole words from
/// the 8-aligned `dst`, the last word completed with zero bytes: what
/// [`copy_words_in`] does for `[header, payload]`, without its byte loop.
/// Relaxed 64-bit atomic stores only.
///
/// # Safety
/// As [`copy_words_in`]: the words from `dst` up to `8 + payload.len()`
/// rounded up to 8 must be mapped and writable for the whole call, and
/// accessed only atomically by this process.
#[inline(always)]
pub(crate) unsafe fn copy_record_in(dst: *mut u8, header: u64, payload: &[u8]) {
    debug_assert!((dst as usize).is_multiple_of(WORD));
    let store = |at: usize, value: u64| {
        // SAFETY: `dst + at` is 8-aligned (`at` is a multiple of 8) and
        // inside the range the caller vouches for: `at` is 0 or the offset
        // of a word holding payload bytes.
        unsafe { AtomicU64::from_ptr(dst.add(at).cast::<u64>()) }
            .store(u64::from_ne_bytes(value.to_le_bytes()), Ordering::Relaxed);
    };
    store(0, header);
    let mut words = payload.chunks_exact(WORD);
    let mut at = WORD;
    for w in &mut words {
        store(at, u64::from_le_bytes(w.try_into().expect("a word")));
        at += WORD;
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        store(at, partial_word(rest));
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if !self.mapped_here() {
            // A forked child's copy of a mapping kept from forks: nothing
            // of it is mapped here (the range may hold something else).
            return;
        }
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned, and no
        // reference into the mapping outlives `self` (the structures in
        // `shm` borrow from it).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Opens, read and write, the memfd labelled `label` that process `pid`
/// holds as descriptor `fd`; `None` if that descriptor is anything else
/// (or nothing, or out of reach). The descriptor is first opened with
/// `O_PATH`, which never calls the file's own open (a FIFO's, a
/// terminal's, a leased file's), and pins what it found: the label is read
/// from that pinned object, and only a match is opened for real, through
/// it. So whatever `pid` does with the number meanwhile (close it, reuse
/// it), the answer is the object that was checked.
pub(crate) fn open_labelled_memfd(pid: u32, fd: u32, label: &str) -> Option<OwnedFd> {
    use rustix::fs::{Mode, OFlags, open};
    use std::os::fd::AsRawFd;
    let pinned = open(
        format!("/proc/{pid}/fd/{fd}"),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let here = format!("/proc/self/fd/{}", pinned.as_raw_fd());
    let link = std::fs::read_link(&here).ok()?;
    let link = link.to_str()?;
    let memfd = link.strip_suffix(" (deleted)").unwrap_or(link);
    if memfd.strip_prefix("/memfd:") != Some(label) {
        return None;
    }
    open(
        &here,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()
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
/// (`OutOfMemory`), not an abort. Refused (`InvalidData`) before anything
/// is read or allocated: a descriptor that is not a memfd (a socket, a
/// pipe, a file: only memfds and shared memory files answer
/// `F_GET_SEALS`), and a memfd with holes (its size set by `ftruncate`
/// without the pages written, as [`memfd_with`] writes every byte), which
/// would make this process allocate and zero memory its sender never
/// spent.
pub(crate) fn read_memfd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    rustix::fs::fcntl_get_seals(fd).map_err(|e| {
        invalid(format!(
            "refusing to read a descriptor that is not a memfd ({e})"
        ))
    })?;
    let st = rustix::fs::fstat(fd)?;
    let len = u64::try_from(st.st_size).map_err(|_| invalid("negative size".into()))?;
    let allocated = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
    if allocated < len {
        return Err(invalid(format!(
            "refusing a memfd of {len} bytes with only {allocated} bytes written"
        )));
    }
    let len = usize::try_from(len).map_err(|_| invalid(format!("a memfd of {len} bytes")))?;
    read_memfd_len(fd, len)
}

/// The first `len` bytes of a memfd, whatever its size now: for a size the
/// caller already checked against its limit, so that a sender growing the
/// file after that check cannot make this process allocate more.
pub(crate) fn read_memfd_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
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
    fn read_memfd_refuses_holes_and_other_descriptors() {
        let fd = memfd_with("multiproc-test", &[b"abc", &[7; 10_000]]).unwrap();
        let got = read_memfd(fd.as_fd()).unwrap();
        assert_eq!((&got[..3], got.len()), (&b"abc"[..], 10_003));
        // A gigabyte of holes: refused at once, nothing allocated.
        let sparse = memfd_create("multiproc-test", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&sparse, 1 << 30).unwrap();
        let e = read_memfd(sparse.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // Not a memfd.
        let (a, _b) = crate::sys::socket::stream_pair().unwrap();
        let e = read_memfd(a.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // Empty is fine.
        let empty = memfd_with("multiproc-test", &[]).unwrap();
        assert!(read_memfd(empty.as_fd()).unwrap().is_empty());
    }

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

    #[test]
    fn word_writes_pad_the_last_word_with_zeros_and_touch_nothing_else() {
        let map = Mapping::create("multiproc-test", 4096).unwrap();
        for split in 0..=13 {
            let data: Vec<u8> = (1..=13u8).collect();
            assert!(map.write(0, &[0xee; 64]));
            let (a, b) = data.split_at(split);
            // SAFETY: offset 8 of a 4096-byte mapping is 8-aligned, and
            // the 16 bytes written (13 rounded up) are inside it.
            unsafe { copy_words_in(map.as_ptr().add(8), [&[][..], a, b]) };
            let mut out = [0u8; 40];
            assert!(map.read(0, &mut out));
            assert_eq!(&out[..8], &[0xee; 8], "split {split}: before");
            assert_eq!(&out[8..21], &data[..], "split {split}");
            assert_eq!(&out[21..24], &[0; 3], "split {split}: padding");
            assert_eq!(&out[24..40], &[0xee; 16], "split {split}: after");
        }
    }

    #[test]
    fn a_record_write_is_a_word_write_of_the_header_and_the_payload() {
        let map = Mapping::create("multiproc-test", 4096).unwrap();
        let data: Vec<u8> = (1..=41u8).collect();
        for len in 0..=data.len() {
            let payload = &data[..len];
            let header = 0x0102_0304_0506_0708u64.wrapping_mul(len as u64 + 1);
            let mut want = [0u8; 64];
            assert!(map.write(0, &[0xee; 128]));
            // SAFETY: offset 8 of a 4096-byte mapping is 8-aligned, and
            // the words written (at most 56 bytes) are inside it.
            unsafe { copy_words_in(map.as_ptr().add(8), [&header.to_le_bytes()[..], payload]) };
            assert!(map.read(8, &mut want));
            let mut got = [0u8; 64];
            assert!(map.write(0, &[0xee; 128]));
            // SAFETY: as above.
            unsafe { copy_record_in(map.as_ptr().add(8), header, payload) };
            assert!(map.read(8, &mut got));
            assert_eq!(got, want, "length {len}");
            let mut before = [0u8; 8];
            assert!(map.read(0, &mut before));
            assert_eq!(before, [0xee; 8], "length {len}: before");
        }
    }

    #[test]
    fn a_sole_writer_is_the_only_one_and_others_read_what_it_writes() {
        let m = Mapping::create_sole_writer("multiproc-test", 10_000).unwrap();
        assert!(m.write(100, b"only mine"));
        let dup = || m.fd().try_clone_to_owned().unwrap();
        // No other writable mapping, no write through the descriptor.
        assert!(Mapping::attach(dup()).is_err());
        assert!(rustix::io::pwrite(m.fd(), b"x", 0).is_err());
        let r = ReadMapping::attach(dup()).unwrap();
        assert_eq!(r.len(), 10_000);
        let mut out = [0u8; 9];
        assert!(r.read(100, &mut out));
        assert_eq!(&out, b"only mine");
        // Later writes show; reads out of bounds copy nothing.
        assert!(m.write(100, b"ONLY"));
        assert!(r.read(100, &mut out));
        assert_eq!(&out, b"ONLY mine");
        let mut edge = [7u8; 2];
        assert!(!r.read(9_999, &mut edge));
        assert!(!r.read(usize::MAX, &mut edge));
        assert_eq!(edge, [7, 7]);
        assert!(r.read(9_998, &mut edge));
        // Its size is sealed like any other's.
        assert!(rustix::fs::ftruncate(m.fd(), 4096).is_err());
    }
}
