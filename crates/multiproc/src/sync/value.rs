//! `Value` and `Array`: plain-old-data in shared memory, with a lock
//! (`get_lock`) or without one (`RawValue`, `RawArray`).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytemuck::Pod;

use super::Shared;
use super::lock::{OwnerDied, wrap};
use crate::shm::object::{LockedSlice, Tag};
use crate::shm::states::{Acquired, LockState};

/// The kinds of object in a tag: a handle attaches only to an object made
/// by the same kind of handle, for the same element type (size and
/// alignment) and length.
const VALUE: u32 = u32::from_le_bytes(*b"VALU");
const RAW_VALUE: u32 = u32::from_le_bytes(*b"RVAL");
const ARRAY: u32 = u32::from_le_bytes(*b"ARRY");
const RAW_ARRAY: u32 = u32::from_le_bytes(*b"RARR");

fn create<T: Pod>(name: &str, kind: u32, len: usize) -> std::io::Result<Arc<Shared<LockState>>> {
    Shared::create_tagged(name, Tag::of::<T>(kind, len))
}

#[inline]
fn lock<T: Pod>(shared: &Shared<LockState>) -> (LockedSlice<'_, T>, Acquired) {
    shared
        .object()
        .lock_slice::<T>(None, false)
        .expect("the tag was checked to describe `T`s when the handle was made")
}

/// What an async `get_lock` passes on if dropped while it waits (see
/// [`crate::aio::PassOn`]).
fn pass_on(shared: &Arc<Shared<LockState>>) -> crate::aio::PassOn<impl FnMut() + use<>> {
    let shared = Arc::clone(shared);
    crate::aio::PassOn::new(move || shared.state().wake_one())
}

/// The readiness wait of an async `get_lock` (see [`crate::aio`]).
fn lock_ready(
    shared: &Arc<Shared<LockState>>,
) -> impl FnOnce(std::time::Instant, &crate::aio::Ticket) + Send + 'static {
    let shared = Arc::clone(shared);
    move |until, ticket| {
        let state = shared.state();
        if state.wait_free(until) && !ticket.wanted() {
            state.wake_one();
        }
    }
}

macro_rules! pod_handle {
    ($ty:ident, $kind:expr, $single:expr) => {
        impl<T: Pod> Clone for $ty<T> {
            fn clone(&self) -> Self {
                $ty {
                    shared: Arc::clone(&self.shared),
                    _t: PhantomData,
                }
            }
        }
        impl<T: Pod> fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("len", &self.shared.object().tag().len)
                    .finish()
            }
        }
        impl<T: Pod> serde::Serialize for $ty<T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.shared.serialize(s)
            }
        }
        /// Attaches only to an object made by the same kind of handle for
        /// the same `T` (size and alignment): anything else is a decoding
        /// error.
        impl<'de, T: Pod> serde::Deserialize<'de> for $ty<T> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let shared = Shared::<LockState>::deserialize_tagged(d, |len| {
                    let len = usize::try_from(len).ok()?;
                    (!$single || len == 1).then(|| Tag::of::<T>($kind, len))
                })?;
                Ok($ty {
                    shared,
                    _t: PhantomData,
                })
            }
        }
    };
}

/// A `T` in shared memory with a lock (Python's `Value`).
///
/// ```
/// use multiproc::{Process, Value};
///
/// fn add_ten(counter: Value<u64>) {
///     for _ in 0..10 {
///         *counter.get_lock().unwrap() += 1;
///     }
/// }
///
/// let counter = Value::new(0u64)?;
/// let child = Process::spawn(add_ten, counter.clone())?;
/// add_ten(counter.clone());
/// child.join()?;
/// assert_eq!(counter.get(), 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Value<T: Pod> {
    shared: Arc<Shared<LockState>>,
    _t: PhantomData<T>,
}

pod_handle!(Value, VALUE, true);

/// Holds a [`Value`]'s lock and dereferences to the value.
///
/// Like `std::sync::MutexGuard`, a guard stays on the thread that took the
/// lock: it can be shared with other threads (it is `Sync` for a `Sync`
/// `T`), but not sent to one.
///
/// ```
/// let v = multiproc::Value::new(7u64)?;
/// let guard = v.get_lock().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(|| assert_eq!(*guard, 7));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// ```compile_fail,E0277
/// let v = multiproc::Value::new(7u64)?;
/// let guard = v.get_lock().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || assert_eq!(*guard, 7));
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: Pod> {
    slice: LockedSlice<'a, T>,
    state: &'a LockState,
    /// The value, copied out when the lock was taken and written back
    /// when the guard is dropped if it was borrowed mutably: the shared
    /// bytes are never lent out (another process might write them).
    value: T,
    dirty: bool,
}

impl<T: Pod> ValueGuard<'_, T> {
    /// Declares the value consistent again after [`OwnerDied`]: later
    /// lockers take the lock cleanly.
    pub fn make_consistent(&self) {
        self.state.make_consistent();
    }

    /// Whether a holder died with the lock and nobody has called
    /// [`make_consistent`](Self::make_consistent) since (only a guard from
    /// `get_lock_recover` can see `true`).
    pub fn owner_died(&self) -> bool {
        self.state.is_inconsistent()
    }
}

impl<T: Pod> std::ops::Deref for ValueGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Pod> std::ops::DerefMut for ValueGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        self.dirty = true;
        &mut self.value
    }
}

impl<T: Pod> Drop for ValueGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if self.dirty {
            self.slice.set(0, self.value);
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&**self).finish()
    }
}

impl<T: Pod> Value<T> {
    /// A shared value, initially `value`.
    pub fn new(value: T) -> std::io::Result<Value<T>> {
        let shared = create::<T>("multiproc-value", VALUE, 1)?;
        let v = Value {
            shared,
            _t: PhantomData,
        };
        v.set(value);
        Ok(v)
    }

    /// Takes the lock; the guard reads and writes (a copy of) the value,
    /// written back when it is dropped.
    #[inline]
    pub fn get_lock(&self) -> Result<ValueGuard<'_, T>, OwnerDied> {
        let (slice, how) = lock::<T>(&self.shared);
        self.guard(slice, how)
    }

    /// Takes the lock whether or not a holder died with it: the way to
    /// repair the data after [`OwnerDied`] (see
    /// [`Lock::lock_recover`](crate::Lock::lock_recover)).
    pub fn get_lock_recover(&self) -> ValueGuard<'_, T> {
        let (slice, _) = lock::<T>(&self.shared);
        match self.guard(slice, Acquired::Clean) {
            Ok(guard) => guard,
            Err(OwnerDied) => unreachable!("a clean guard is never refused"),
        }
    }

    /// [`get_lock`](Self::get_lock), as a future: waits without blocking
    /// the thread (see `docs/async.md`). Dropping it before it is ready
    /// leaves the lock as it was.
    pub fn get_lock_async(
        &self,
    ) -> impl Future<Output = Result<ValueGuard<'_, T>, OwnerDied>> + Send + '_
    where
        T: Sync,
    {
        let mut pass_on = pass_on(&self.shared);
        crate::aio::retry(
            move |w| {
                let taken = self.shared.object().try_lock_slice::<T>(w.has_slept());
                pass_on.arm(taken.is_none() && w.may_sleep());
                let (slice, how) = taken?;
                Some(self.guard(slice, how))
            },
            move || lock_ready(&self.shared),
        )
    }

    fn guard<'a>(
        &'a self,
        slice: LockedSlice<'a, T>,
        how: Acquired,
    ) -> Result<ValueGuard<'a, T>, OwnerDied> {
        let value = slice.get(0).unwrap_or_else(T::zeroed);
        let guard = ValueGuard {
            slice,
            state: self.shared.state(),
            value,
            dirty: false,
        };
        wrap(guard, how)
    }

    /// Reads the value under the lock (even after a holder died).
    #[inline]
    pub fn get(&self) -> T {
        let (slice, _) = lock::<T>(&self.shared);
        slice.get(0).unwrap_or_else(T::zeroed)
    }

    /// Writes the value under the lock.
    #[inline]
    pub fn set(&self, value: T) {
        let (mut slice, _) = lock::<T>(&self.shared);
        slice.set(0, value);
    }
}

/// A `T` in shared memory without a lock (Python's `RawValue`): reads and
/// writes copy the value with atomic accesses, so racing processes never
/// cause undefined behaviour; an aligned value of up to 8 bytes is read and
/// written whole, a wider one may be read as a mix of two writes (whole
/// 8-byte words of each) while another process writes it.
pub struct RawValue<T: Pod> {
    shared: Arc<Shared<LockState>>,
    _t: PhantomData<T>,
}

pod_handle!(RawValue, RAW_VALUE, true);

impl<T: Pod> RawValue<T> {
    /// A shared value, initially `value`.
    pub fn new(value: T) -> std::io::Result<RawValue<T>> {
        let shared = create::<T>("multiproc-rawvalue", RAW_VALUE, 1)?;
        let v = RawValue {
            shared,
            _t: PhantomData,
        };
        v.set(value);
        Ok(v)
    }

    /// Reads the value.
    #[inline]
    pub fn get(&self) -> T {
        self.shared
            .object()
            .read_raw::<T>(0)
            .expect("sized at creation")
    }

    /// Writes the value.
    #[inline]
    pub fn set(&self, value: T) {
        self.shared.object().write_raw::<T>(0, value);
    }
}

/// A fixed-length array of `T` in shared memory with a lock (Python's
/// `Array`).
///
/// ```
/// let a = multiproc::Array::<f64>::new(4)?;
/// a.get_lock().unwrap().copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
/// assert_eq!(a.to_vec(), vec![1.0, 2.0, 3.0, 4.0]);
/// assert_eq!(a.len(), 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Array<T: Pod> {
    shared: Arc<Shared<LockState>>,
    _t: PhantomData<T>,
}

pod_handle!(Array, ARRAY, false);

/// Holds an [`Array`]'s lock and dereferences to the elements.
///
/// The shared elements are never lent out (another process might write
/// them): [`get`](Self::get) and [`set`](Self::set) copy one element; the
/// first dereference copies the whole array, which is written back when the
/// guard is dropped if it was borrowed mutably. For one element of a large
/// array, `get` and `set` avoid that copy.
///
/// Like `std::sync::MutexGuard`, a guard cannot be sent to another thread.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T: Pod> {
    slice: LockedSlice<'a, T>,
    state: &'a LockState,
    copy: std::sync::OnceLock<Vec<T>>,
    dirty: bool,
}

impl<T: Pod> ArrayGuard<'_, T> {
    /// Declares the array consistent again after [`OwnerDied`]: later
    /// lockers take the lock cleanly.
    pub fn make_consistent(&self) {
        self.state.make_consistent();
    }

    /// Whether a holder died with the lock and nobody has called
    /// [`make_consistent`](Self::make_consistent) since (only a guard from
    /// `get_lock_recover` can see `true`).
    pub fn owner_died(&self) -> bool {
        self.state.is_inconsistent()
    }

    /// A copy of element `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<T> {
        match self.copy.get() {
            Some(copy) => copy.get(index).copied(),
            None => self.slice.get(index),
        }
    }

    /// Writes element `index`; false past the end.
    pub fn set(&mut self, index: usize, value: T) -> bool {
        match self.copy.get_mut() {
            Some(copy) => match copy.get_mut(index) {
                Some(slot) => {
                    *slot = value;
                    self.dirty = true;
                    true
                }
                None => false,
            },
            None => self.slice.set(index, value),
        }
    }

    fn copy(&self) -> &Vec<T> {
        self.copy.get_or_init(|| self.slice.to_vec())
    }
}

impl<T: Pod> std::ops::Deref for ArrayGuard<'_, T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        self.copy()
    }
}

impl<T: Pod> std::ops::DerefMut for ArrayGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        self.copy();
        self.dirty = true;
        self.copy.get_mut().expect("initialised just above")
    }
}

impl<T: Pod> Drop for ArrayGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if let (true, Some(copy)) = (self.dirty, self.copy.get()) {
            self.slice.write_all(copy);
        }
    }
}

impl<T: Pod> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayGuard")
            .field("len", &self.slice.len())
            .finish()
    }
}

impl<T: Pod> Array<T> {
    /// An array of `len` zeroed elements.
    pub fn new(len: usize) -> std::io::Result<Array<T>> {
        Ok(Array {
            shared: create::<T>("multiproc-array", ARRAY, len)?,
            _t: PhantomData,
        })
    }

    /// An array holding a copy of `values`.
    pub fn from_slice(values: &[T]) -> std::io::Result<Array<T>> {
        let a = Array::new(values.len())?;
        let (mut slice, _) = lock::<T>(&a.shared);
        slice.write_all(values);
        drop(slice);
        Ok(a)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shared.object().tag().len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the lock; the guard reads and writes the elements (see
    /// [`ArrayGuard`] for what is copied when).
    #[inline]
    pub fn get_lock(&self) -> Result<ArrayGuard<'_, T>, OwnerDied> {
        let (slice, how) = lock::<T>(&self.shared);
        self.guard(slice, how)
    }

    /// Takes the lock whether or not a holder died with it: the way to
    /// repair the data after [`OwnerDied`] (see
    /// [`Lock::lock_recover`](crate::Lock::lock_recover)).
    pub fn get_lock_recover(&self) -> ArrayGuard<'_, T> {
        let (slice, _) = lock::<T>(&self.shared);
        match self.guard(slice, Acquired::Clean) {
            Ok(guard) => guard,
            Err(OwnerDied) => unreachable!("a clean guard is never refused"),
        }
    }

    /// [`get_lock`](Self::get_lock), as a future: waits without blocking
    /// the thread (see `docs/async.md`). Dropping it before it is ready
    /// leaves the lock as it was.
    pub fn get_lock_async(
        &self,
    ) -> impl Future<Output = Result<ArrayGuard<'_, T>, OwnerDied>> + Send + '_
    where
        T: Sync,
    {
        let mut pass_on = pass_on(&self.shared);
        crate::aio::retry(
            move |w| {
                let taken = self.shared.object().try_lock_slice::<T>(w.has_slept());
                pass_on.arm(taken.is_none() && w.may_sleep());
                let (slice, how) = taken?;
                Some(self.guard(slice, how))
            },
            move || lock_ready(&self.shared),
        )
    }

    fn guard<'a>(
        &'a self,
        slice: LockedSlice<'a, T>,
        how: Acquired,
    ) -> Result<ArrayGuard<'a, T>, OwnerDied> {
        let guard = ArrayGuard {
            slice,
            state: self.shared.state(),
            copy: std::sync::OnceLock::new(),
            dirty: false,
        };
        wrap(guard, how)
    }

    /// A copy of the elements, read under the lock.
    pub fn to_vec(&self) -> Vec<T> {
        lock::<T>(&self.shared).0.to_vec()
    }
}

/// A fixed-length array of `T` in shared memory without a lock (Python's
/// `RawArray`): element reads and writes are atomic copies, as for
/// [`RawValue`].
pub struct RawArray<T: Pod> {
    shared: Arc<Shared<LockState>>,
    _t: PhantomData<T>,
}

pod_handle!(RawArray, RAW_ARRAY, false);

impl<T: Pod> RawArray<T> {
    /// An array of `len` zeroed elements.
    pub fn new(len: usize) -> std::io::Result<RawArray<T>> {
        Ok(RawArray {
            shared: create::<T>("multiproc-rawarray", RAW_ARRAY, len)?,
            _t: PhantomData,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shared.object().tag().len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<T> {
        (index < self.len())
            .then(|| self.shared.object().read_raw::<T>(index))
            .flatten()
    }

    /// Writes element `index`; false past the end.
    pub fn set(&self, index: usize, value: T) -> bool {
        index < self.len() && self.shared.object().write_raw::<T>(index, value)
    }
}
