//! One shared-memory object of a fixed type, in its own memfd mapping: the
//! state behind a `Lock`, an `Event`, a `Barrier`..., and the payload of a
//! `Value` or an `Array`.
//!
//! Layout of the mapping (sealed against resizing, see `sys::shm`):
//!
//! ```text
//! 0    Header: magic, kind, element size, element alignment, length
//! 64   the state `T` (a `ShmState`)
//! P    the payload: `length` elements, P the first multiple of their
//!      alignment after the state (any power of two: the mapping itself is
//!      placed at a multiple of it in every process)
//! ```
//!
//! The header is the object's type tag. A process attaching compares all
//! of it with what its handle type expects, once, and from then on uses
//! its own copy: a peer that rewrites the header later changes nothing
//! here. So a `Value<u64>` cannot be attached as a `RawValue<u64>` (same
//! bytes, but written without the lock) nor as a `Value<u32>`.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sys::shm::Mapping;

/// Types that may live in shared memory between processes.
///
/// # Safety
/// The type must be valid at every bit pattern, not only at zero (a fresh
/// memfd is zero-filled, and a peer holding the memfd may write any bytes
/// at any time), must not contain pointers or anything else meaningful only
/// in one process, and must tolerate being accessed concurrently by other
/// processes: in practice, `#[repr(C)]` structs of atomics.
pub(crate) unsafe trait ShmState: Sync {
    /// A number identifying the type, checked when a process attaches;
    /// changed whenever the type's layout or protocol changes, so that a
    /// process built from another version refuses it instead of
    /// misreading it (the lock's move of its waiter bit out of the word
    /// changed those of every state holding a lock, and the ring's).
    const MAGIC: u32;
    /// Where the magic lives: the state's first field.
    fn magic(&self) -> &AtomicU32;
}

/// What a shared object holds, written into its header when it is created
/// and checked when a process attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// Which kind of handle made it (`Tag::STATE`'s kind for a plain
    /// synchronisation primitive; `sync::value` has one per type).
    pub(crate) kind: u32,
    /// The size of one payload element.
    pub(crate) elem_size: usize,
    /// Its alignment (a power of two).
    pub(crate) elem_align: usize,
    /// How many elements follow the state.
    pub(crate) len: usize,
}

impl Tag {
    /// An object that is its state and nothing more.
    pub(crate) const STATE: Tag = Tag {
        kind: u32::from_le_bytes(*b"STAT"),
        elem_size: 0,
        elem_align: 1,
        len: 0,
    };

    /// `len` elements of `U`, for a handle of `kind`.
    pub(crate) const fn of<U>(kind: u32, len: usize) -> Tag {
        Tag {
            kind,
            elem_size: std::mem::size_of::<U>(),
            elem_align: std::mem::align_of::<U>(),
            len,
        }
    }

    /// Whether elements of `U` are what this tag describes.
    #[inline]
    fn holds<U>(&self) -> bool {
        self.elem_size == std::mem::size_of::<U>() && self.elem_align == std::mem::align_of::<U>()
    }
}

/// The first bytes of every object's mapping.
#[repr(C)]
struct Header {
    magic: AtomicU32,
    kind: AtomicU32,
    elem_size: AtomicU64,
    elem_align: AtomicU64,
    len: AtomicU64,
}

const OBJECT_MAGIC: u32 = u32::from_le_bytes(*b"MPOB");
/// Where the state starts: after the header, aligned for any state.
const STATE_OFFSET: usize = 64;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The payload's offset and the mapping's size for a `T` and `tag`; `None`
/// if they overflow.
fn layout<T>(tag: &Tag) -> Option<(usize, usize)> {
    if !tag.elem_align.is_power_of_two() {
        return None;
    }
    let payload =
        (STATE_OFFSET + std::mem::size_of::<T>()).checked_next_multiple_of(tag.elem_align)?;
    let total = payload.checked_add(tag.elem_size.checked_mul(tag.len)?)?;
    (total <= isize::MAX as usize).then_some((payload, total))
}

/// A `T` in shared memory, and the payload its tag describes.
#[derive(Debug)]
pub(crate) struct ShmObject<T: ShmState> {
    map: Mapping,
    /// This process's copy of the tag, checked once against the header.
    tag: Tag,
    /// The payload's offset in the mapping.
    payload: usize,
    _t: PhantomData<T>,
}

impl<T: ShmState> ShmObject<T> {
    const FITS: () = {
        assert!(std::mem::size_of::<Header>() <= STATE_OFFSET);
        assert!(std::mem::align_of::<T>() <= STATE_OFFSET);
    };

    fn header(&self) -> &Header {
        // SAFETY: every mapping of an object is at least `STATE_OFFSET`
        // bytes (checked at create and attach) and page-aligned; `Header`
        // is all atomics, valid at any bytes, which any process may write
        // at any time; the reference borrows `self`, which owns the mapping.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// Creates a zeroed `T` followed by the zeroed payload `tag` describes.
    pub(crate) fn create(name: &str, tag: Tag) -> io::Result<Self> {
        let () = Self::FITS;
        let (payload, total) = layout::<T>(&tag).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "shared object too large")
        })?;
        let map = Mapping::create_aligned(name, total, tag.elem_align)?;
        let obj: ShmObject<T> = ShmObject {
            map,
            tag,
            payload,
            _t: PhantomData,
        };
        let h = obj.header();
        h.kind.store(tag.kind, Ordering::Relaxed);
        h.elem_size.store(tag.elem_size as u64, Ordering::Relaxed);
        h.elem_align.store(tag.elem_align as u64, Ordering::Relaxed);
        h.len.store(tag.len as u64, Ordering::Relaxed);
        h.magic.store(OBJECT_MAGIC, Ordering::Release);
        obj.get().magic().store(T::MAGIC, Ordering::Release);
        Ok(obj)
    }

    /// Maps a `T` another process created, if its header says it holds
    /// exactly what `expected` describes (`InvalidData` otherwise).
    pub(crate) fn attach(fd: OwnedFd, expected: Tag) -> io::Result<Self> {
        let () = Self::FITS;
        let (payload, total) = layout::<T>(&expected)
            .ok_or_else(|| invalid("shared object: impossible size".into()))?;
        let map = Mapping::attach_aligned(fd, expected.elem_align)?;
        if map.len() < total {
            return Err(invalid(format!(
                "shared object too small: {} bytes, {total} expected",
                map.len()
            )));
        }
        let obj: ShmObject<T> = ShmObject {
            map,
            tag: expected,
            payload,
            _t: PhantomData,
        };
        let h = obj.header();
        if h.magic.load(Ordering::Acquire) != OBJECT_MAGIC {
            return Err(invalid("not a multiproc shared object".into()));
        }
        let field = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let found = Tag {
            kind: h.kind.load(Ordering::Relaxed),
            elem_size: field(h.elem_size.load(Ordering::Relaxed)),
            elem_align: field(h.elem_align.load(Ordering::Relaxed)),
            len: field(h.len.load(Ordering::Relaxed)),
        };
        if found != expected {
            return Err(invalid(format!(
                "shared object of another type: it holds {}, this handle expects {}",
                describe(&found),
                describe(&expected)
            )));
        }
        if obj.get().magic().load(Ordering::Acquire) != T::MAGIC {
            return Err(invalid("shared object of another type (state)".into()));
        }
        Ok(obj)
    }

    /// The shared state.
    #[inline]
    pub(crate) fn get(&self) -> &T {
        // SAFETY: the mapping is page-aligned and holds `T` at
        // `STATE_OFFSET` (a multiple of `T`'s alignment, checked in `FITS`;
        // the size checked at create and attach); `T: ShmState` is valid at
        // any bytes any process may write (all atomics) and is `Sync`; the
        // reference lives no longer than `self`, which owns the mapping.
        unsafe { &*self.map.as_ptr().add(STATE_OFFSET).cast::<T>() }
    }

    /// What the payload holds (this process's checked copy of the tag).
    pub(crate) fn tag(&self) -> Tag {
        self.tag
    }

    /// The memfd, to send to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd()
    }

    /// The offset of payload element `index`, if the payload is made of
    /// `U`s and has one there.
    #[inline]
    fn element<U>(&self, index: usize) -> Option<usize> {
        (self.tag.holds::<U>() && index < self.tag.len)
            .then(|| self.payload + index * std::mem::size_of::<U>())
    }

    /// Reads element `index` of the payload without the lock (a
    /// `RawValue` or `RawArray`), with atomic accesses: a value wider
    /// than 8 bytes may be a mix of two writes, as in Python; an aligned
    /// 8-byte value never is. `None` past the end.
    #[inline]
    pub(crate) fn read_raw<U: bytemuck::Pod>(&self, index: usize) -> Option<U> {
        let offset = self.element::<U>(index)?;
        let mut value = U::zeroed();
        self.map
            .read(offset, bytemuck::bytes_of_mut(&mut value))
            .then_some(value)
    }

    /// Writes element `index` of the payload without the lock, with
    /// atomic accesses; false past the end.
    #[inline]
    pub(crate) fn write_raw<U: bytemuck::Pod>(&self, index: usize, value: U) -> bool {
        self.element::<U>(index)
            .is_some_and(|offset| self.map.write(offset, bytemuck::bytes_of(&value)))
    }

    /// Copies the whole payload out into `out` (exactly as long) with
    /// atomic accesses; false if it is not `out.len()` `U`s.
    fn read_all<U: bytemuck::Pod>(&self, out: &mut [U]) -> bool {
        if !self.tag.holds::<U>() || out.len() != self.tag.len {
            return false;
        }
        std::mem::size_of::<U>() == 0 || self.map.read(self.payload, bytemuck::cast_slice_mut(out))
    }

    /// Copies `data` (exactly as long as the payload) in with atomic
    /// accesses; false if the payload is not `data.len()` `U`s.
    fn write_all<U: bytemuck::Pod>(&self, data: &[U]) -> bool {
        if !self.tag.holds::<U>() || data.len() != self.tag.len {
            return false;
        }
        std::mem::size_of::<U>() == 0 || self.map.write(self.payload, bytemuck::cast_slice(data))
    }
}

fn describe(tag: &Tag) -> String {
    let kind = tag.kind.to_le_bytes();
    let kind = if kind.iter().all(u8::is_ascii_alphanumeric) {
        String::from_utf8_lossy(&kind).into_owned()
    } else {
        format!("{:#x}", tag.kind)
    };
    format!(
        "{kind} of {} element(s) of {} bytes aligned to {}",
        tag.len, tag.elem_size, tag.elem_align
    )
}

/// The lock of an object held, giving access to its payload of `U`s:
/// what a `Value` or `Array` guard is made of. Unlocks when dropped.
///
/// The payload is only ever copied, with atomic accesses, never lent out as
/// a `&[U]`: whatever a process holding the same memory does (ignore the
/// lock and write, say), this process sees some bytes, never undefined
/// behaviour. The guards keep their own copy.
///
/// Like `std::sync::MutexGuard`, it is not `Send` (the lock belongs to the
/// thread that took it) and is `Sync` when `U` is.
pub(crate) struct LockedSlice<'a, U: bytemuck::Pod> {
    obj: &'a ShmObject<super::states::LockState>,
    _u: PhantomData<U>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared `&LockedSlice` only reads the payload by atomic copies
// (`len`, `get`, `to_vec`), which any number of threads may do at once;
// writing and releasing the lock need `&mut` or the guard itself, which
// cannot leave its thread (not `Send`).
unsafe impl<U: bytemuck::Pod + Sync> Sync for LockedSlice<'_, U> {}

impl<U: bytemuck::Pod> LockedSlice<'_, U> {
    /// The number of elements.
    pub(crate) fn len(&self) -> usize {
        self.obj.tag.len
    }

    /// A copy of element `index`; `None` past the end.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<U> {
        self.obj.read_raw(index)
    }

    /// Writes element `index`; false past the end, or if this process no
    /// longer holds the lock (a guard a forked child inherited writes
    /// nothing).
    #[inline]
    pub(crate) fn set(&mut self, index: usize, value: U) -> bool {
        self.obj.get().names_this_process() && self.obj.write_raw(index, value)
    }

    /// A copy of every element.
    pub(crate) fn to_vec(&self) -> Vec<U> {
        let mut out = vec![U::zeroed(); self.len()];
        let copied = self.obj.read_all(&mut out);
        debug_assert!(copied, "the tag was checked to describe `U`s");
        out
    }

    /// Writes every element; false unless `data` has exactly `len()`.
    pub(crate) fn write_all(&mut self, data: &[U]) -> bool {
        self.obj.get().names_this_process() && self.obj.write_all(data)
    }
}

impl<U: bytemuck::Pod> Drop for LockedSlice<'_, U> {
    #[inline]
    fn drop(&mut self) {
        self.obj.get().release();
    }
}

impl<U: bytemuck::Pod> std::fmt::Debug for LockedSlice<'_, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedSlice")
            .field("len", &self.len())
            .finish()
    }
}

impl ShmObject<super::states::LockState> {
    /// Takes the object's lock (until `deadline`) for access to the
    /// payload as `U`s. `None` on timeout, or if the payload is not made
    /// of `U`s.
    #[inline]
    pub(crate) fn lock_slice<U: bytemuck::Pod>(
        &self,
        deadline: Option<std::time::Instant>,
        try_only: bool,
    ) -> Option<(LockedSlice<'_, U>, super::states::Acquired)> {
        self.lock_slice_with::<U>(|state| {
            if try_only {
                state.try_acquire()
            } else {
                state.acquire(deadline)
            }
        })
    }

    /// [`lock_slice`](Self::lock_slice) for an async locker: `try_only`,
    /// raising the lock's waiter flag as it takes it once the locker has
    /// slept (see
    /// `RawLock::try_lock_marked`).
    pub(crate) fn try_lock_slice<U: bytemuck::Pod>(
        &self,
        slept: bool,
    ) -> Option<(LockedSlice<'_, U>, super::states::Acquired)> {
        self.lock_slice_with::<U>(|state| {
            if slept {
                state.try_acquire_marked()
            } else {
                state.try_acquire()
            }
        })
    }

    /// Checks that the payload is made of `U`s, then takes the lock with
    /// `take`.
    #[inline]
    fn lock_slice_with<U: bytemuck::Pod>(
        &self,
        take: impl FnOnce(&super::states::LockState) -> Option<super::states::Acquired>,
    ) -> Option<(LockedSlice<'_, U>, super::states::Acquired)> {
        if !self.tag.holds::<U>() {
            return None;
        }
        let acquired = take(self.get())?;
        Some((
            LockedSlice {
                obj: self,
                _u: PhantomData,
                _not_send: PhantomData,
            },
            acquired,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::states::LockState;

    #[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
    #[repr(C, align(8192))]
    struct Big([[u8; 4096]; 2]);

    fn handle(obj: &ShmObject<LockState>) -> OwnedFd {
        rustix::io::fcntl_dupfd_cloexec(obj.fd(), 0).unwrap()
    }

    #[test]
    fn a_tag_must_match_exactly() {
        let tag = Tag::of::<u64>(7, 3);
        let obj = ShmObject::<LockState>::create("multiproc-test", tag).unwrap();
        assert!(ShmObject::<LockState>::attach(handle(&obj), tag).is_ok());
        for other in [
            Tag::of::<u64>(8, 3),
            Tag::of::<u32>(7, 3),
            Tag::of::<u64>(7, 2),
            Tag::of::<[u32; 2]>(7, 3),
            Tag::STATE,
        ] {
            let e = ShmObject::<LockState>::attach(handle(&obj), other).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{other:?}");
        }
        // A header rewritten after attaching changes nothing for a handle
        // that already checked it.
        let again = ShmObject::<LockState>::attach(handle(&obj), tag).unwrap();
        obj.header().len.store(u64::MAX, Ordering::Relaxed);
        assert!(again.write_raw::<u64>(2, 5));
        assert_eq!(again.read_raw::<u64>(2), Some(5));
        assert_eq!(again.read_raw::<u64>(3), None);
        assert_eq!(again.read_raw::<u32>(0), None);
    }

    #[test]
    fn over_aligned_payloads_are_aligned_in_every_mapping() {
        let tag = Tag::of::<Big>(1, 2);
        let obj = ShmObject::<LockState>::create("multiproc-test", tag).unwrap();
        let again = ShmObject::<LockState>::attach(handle(&obj), tag).unwrap();
        for o in [&obj, &again] {
            assert_eq!((o.map.as_ptr() as usize + o.payload) % 8192, 0);
            let (mut s, _) = o.lock_slice::<Big>(None, false).unwrap();
            assert_eq!(s.len(), 2);
            let mut b = s.get(1).unwrap();
            b.0[1][4095] = b.0[1][4095].wrapping_add(1);
            assert!(s.set(1, b));
        }
        assert_eq!(obj.read_raw::<Big>(1).unwrap().0[1][4095], 2);
    }
}
