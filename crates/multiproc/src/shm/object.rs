//! One shared-memory object of a fixed type, in its own memfd mapping: the
//! state behind a `Lock`, an `Event`, a `Barrier`...

use std::io;
use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::sys::shm::Mapping;

/// Types that may live in shared memory between processes.
///
/// # Safety
/// The type must be valid when all its bytes are zero (a fresh memfd is
/// zero-filled), must not contain pointers or anything else meaningful only
/// in one process, and must tolerate being accessed concurrently by other
/// processes: in practice, `#[repr(C)]` structs of atomics.
pub(crate) unsafe trait ShmState: Sync {
    /// A number identifying the type, checked when a process attaches.
    const MAGIC: u32;
    /// Where the magic lives: the state's first field.
    fn magic(&self) -> &std::sync::atomic::AtomicU32;
}

/// A `T` in shared memory.
#[derive(Debug)]
pub(crate) struct ShmObject<T: ShmState> {
    map: Mapping,
    _t: PhantomData<T>,
}

impl<T: ShmState> ShmObject<T> {
    /// Bytes of the mapping: the state, then `extra` bytes of payload.
    fn size(extra: usize) -> usize {
        (std::mem::size_of::<T>() + extra).max(64)
    }

    /// Creates a zeroed `T` (followed by `extra` zeroed bytes).
    pub(crate) fn create(name: &str, extra: usize) -> io::Result<Self> {
        const { assert!(std::mem::align_of::<T>() <= 4096) };
        let map = Mapping::create(name, Self::size(extra))?;
        let obj: ShmObject<T> = ShmObject {
            map,
            _t: PhantomData,
        };
        obj.get()
            .magic()
            .store(T::MAGIC, std::sync::atomic::Ordering::Release);
        Ok(obj)
    }

    /// Maps a `T` another process created.
    pub(crate) fn attach(fd: OwnedFd) -> io::Result<Self> {
        let map = Mapping::attach(fd)?;
        if map.len() < Self::size(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared object too small",
            ));
        }
        let obj: ShmObject<T> = ShmObject {
            map,
            _t: PhantomData,
        };
        if obj.get().magic().load(std::sync::atomic::Ordering::Acquire) != T::MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared object of another type",
            ));
        }
        Ok(obj)
    }

    /// The shared state.
    pub(crate) fn get(&self) -> &T {
        // SAFETY: the mapping is page-aligned and at least `size_of::<T>()`
        // bytes (checked at create and attach); `T: ShmState` is valid at
        // any bytes another process of ours may have left (all atomics,
        // valid at zero) and is `Sync`; the reference lives no longer than
        // `self`, which owns the mapping.
        unsafe { &*self.map.as_ptr().cast::<T>() }
    }

    /// The bytes after the state, as raw memory: the payload of a `Value`
    /// or an `Array`.
    pub(crate) fn payload_ptr(&self) -> (*mut u8, usize) {
        let off = std::mem::size_of::<T>();
        // SAFETY: `off <= len`, checked at create and attach.
        (unsafe { self.map.as_ptr().add(off) }, self.map.len() - off)
    }

    /// The memfd, to send to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd()
    }
}

/// Exclusive access to the payload of a locked object, as `[U]`: what a
/// `Value` or `Array` guard dereferences to. Unlocks when dropped.
pub(crate) struct LockedSlice<'a, U: bytemuck::Pod> {
    slice: &'a mut [U],
    lock: &'a super::states::LockState,
}

impl<U: bytemuck::Pod> std::ops::Deref for LockedSlice<'_, U> {
    type Target = [U];
    fn deref(&self) -> &[U] {
        self.slice
    }
}

impl<U: bytemuck::Pod> std::ops::DerefMut for LockedSlice<'_, U> {
    fn deref_mut(&mut self) -> &mut [U] {
        self.slice
    }
}

impl<U: bytemuck::Pod> Drop for LockedSlice<'_, U> {
    fn drop(&mut self) {
        self.lock.release();
    }
}

impl<U: bytemuck::Pod> std::fmt::Debug for LockedSlice<'_, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedSlice")
            .field("len", &self.slice.len())
            .finish()
    }
}

/// Checks that `len` values of `U` fit the payload of `obj`, aligned.
fn payload_fits<T: ShmState, U>(obj: &ShmObject<T>, len: usize) -> bool {
    let (ptr, bytes) = obj.payload_ptr();
    (ptr as usize) % std::mem::align_of::<U>() == 0
        && len
            .checked_mul(std::mem::size_of::<U>())
            .is_some_and(|n| n <= bytes)
}

impl ShmObject<super::states::LockState> {
    /// Takes the object's lock (until `deadline`) and gives exclusive
    /// access to `len` values of `U` after the state. `None` on timeout or
    /// if they do not fit.
    pub(crate) fn lock_slice<U: bytemuck::Pod>(
        &self,
        len: usize,
        deadline: Option<std::time::Instant>,
        try_only: bool,
    ) -> Option<(LockedSlice<'_, U>, super::states::Acquired)> {
        if !payload_fits::<_, U>(self, len) {
            return None;
        }
        let state = self.get();
        let acquired = if try_only {
            state.try_acquire()?
        } else {
            state.acquire(deadline)?
        };
        let (ptr, _) = self.payload_ptr();
        // SAFETY: the payload holds `len` aligned `U`s (checked above), any
        // bytes are a valid `U` (`Pod`), and we hold the object's lock, so
        // no process of ours reads or writes them until the returned guard
        // releases it; the slice borrows `self`, which owns the mapping.
        let slice = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<U>(), len) };
        Some((LockedSlice { slice, lock: state }, acquired))
    }

    /// Reads value `index` of the payload without the lock (a `RawValue`
    /// or `RawArray`): a value wider than the machine word may be read
    /// half-updated, as in Python.
    pub(crate) fn read_raw<U: bytemuck::Pod>(&self, index: usize) -> Option<U> {
        if !payload_fits::<_, U>(self, index + 1) {
            return None;
        }
        let (ptr, _) = self.payload_ptr();
        // SAFETY: in bounds and aligned (checked above); any bytes are a
        // valid `U`; a volatile read of memory another process may write
        // yields some bytes and never lets the compiler assume otherwise.
        Some(unsafe { std::ptr::read_volatile(ptr.cast::<U>().add(index)) })
    }

    /// Writes value `index` of the payload without the lock.
    pub(crate) fn write_raw<U: bytemuck::Pod>(&self, index: usize, value: U) -> bool {
        if !payload_fits::<_, U>(self, index + 1) {
            return false;
        }
        let (ptr, _) = self.payload_ptr();
        // SAFETY: in bounds and aligned (checked above); the bytes belong
        // to the shared payload, which no Rust reference covers while no
        // lock guard exists in this thread (raw access is the caller's
        // documented choice).
        unsafe { std::ptr::write_volatile(ptr.cast::<U>().add(index), value) };
        true
    }
}
