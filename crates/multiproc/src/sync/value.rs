//! `Value` and `Array`: plain-old-data in shared memory, with a lock
//! (`get_lock`) or without one (`RawValue`, `RawArray`).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytemuck::Pod;

use super::Shared;
use super::lock::OwnerDied;
use crate::shm::object::LockedSlice;
use crate::shm::states::{Acquired, LockState};

fn create(name: &str, bytes: usize, len: u64) -> std::io::Result<Arc<Shared<LockState>>> {
    Shared::create(name, bytes, len)
}

fn lock<T: Pod>(shared: &Shared<LockState>, len: usize) -> (LockedSlice<'_, T>, Acquired) {
    shared
        .object()
        .lock_slice::<T>(len, None, false)
        .expect("the payload was sized for this type when the handle was made")
}

fn check<T: Pod>(shared: &Shared<LockState>, len: usize) -> bool {
    shared
        .object()
        .read_raw::<T>(len.saturating_sub(1))
        .is_some()
        || len == 0
}

macro_rules! pod_handle {
    ($ty:ident) => {
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
                    .field("len", &self.shared.extra())
                    .finish()
            }
        }
        impl<T: Pod> serde::Serialize for $ty<T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.shared.serialize(s)
            }
        }
        impl<'de, T: Pod> serde::Deserialize<'de> for $ty<T> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let shared = Shared::<LockState>::deserialize(d)?;
                if !check::<T>(&shared, shared.extra().max(1) as usize) {
                    return Err(serde::de::Error::custom(
                        "shared data smaller than its type",
                    ));
                }
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

pod_handle!(Value);

/// Holds a [`Value`]'s lock and dereferences to the value.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: Pod> {
    slice: LockedSlice<'a, T>,
    state: &'a LockState,
}

impl<T: Pod> ValueGuard<'_, T> {
    /// Declares the value consistent again after [`OwnerDied`].
    pub fn make_consistent(&self) {
        self.state.make_consistent();
    }
}

impl<T: Pod> std::ops::Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.slice[0]
    }
}

impl<T: Pod> std::ops::DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.slice[0]
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
        let shared = create("multiproc-value", std::mem::size_of::<T>(), 1)?;
        let v = Value {
            shared,
            _t: PhantomData,
        };
        *v.get_lock().unwrap_or_else(OwnerDied::into_guard) = value;
        Ok(v)
    }

    /// Takes the lock; the guard reads and writes the value.
    pub fn get_lock(&self) -> Result<ValueGuard<'_, T>, OwnerDied<ValueGuard<'_, T>>> {
        let (slice, how) = lock::<T>(&self.shared, 1);
        let guard = ValueGuard {
            slice,
            state: self.shared.state(),
        };
        match how {
            Acquired::Clean => Ok(guard),
            Acquired::OwnerDied => Err(OwnerDied(guard)),
        }
    }

    /// Reads the value under the lock (even after a holder died).
    pub fn get(&self) -> T {
        *self.get_lock().unwrap_or_else(OwnerDied::into_guard)
    }

    /// Writes the value under the lock.
    pub fn set(&self, value: T) {
        *self.get_lock().unwrap_or_else(OwnerDied::into_guard) = value;
    }
}

/// A `T` in shared memory without a lock (Python's `RawValue`): reads and
/// writes are single copies; a value wider than a machine word may be read
/// half-written while another process writes it.
pub struct RawValue<T: Pod> {
    shared: Arc<Shared<LockState>>,
    _t: PhantomData<T>,
}

pod_handle!(RawValue);

impl<T: Pod> RawValue<T> {
    /// A shared value, initially `value`.
    pub fn new(value: T) -> std::io::Result<RawValue<T>> {
        let shared = create("multiproc-rawvalue", std::mem::size_of::<T>(), 1)?;
        let v = RawValue {
            shared,
            _t: PhantomData,
        };
        v.set(value);
        Ok(v)
    }

    /// Reads the value.
    pub fn get(&self) -> T {
        self.shared
            .object()
            .read_raw::<T>(0)
            .expect("sized at creation")
    }

    /// Writes the value.
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

pod_handle!(Array);

/// Holds an [`Array`]'s lock and dereferences to the elements.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T: Pod> {
    slice: LockedSlice<'a, T>,
    state: &'a LockState,
}

impl<T: Pod> ArrayGuard<'_, T> {
    /// Declares the array consistent again after [`OwnerDied`].
    pub fn make_consistent(&self) {
        self.state.make_consistent();
    }
}

impl<T: Pod> std::ops::Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.slice
    }
}

impl<T: Pod> std::ops::DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.slice
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
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "array too large")
        })?;
        Ok(Array {
            shared: create("multiproc-array", bytes, len as u64)?,
            _t: PhantomData,
        })
    }

    /// An array holding a copy of `values`.
    pub fn from_slice(values: &[T]) -> std::io::Result<Array<T>> {
        let a = Array::new(values.len())?;
        a.get_lock()
            .unwrap_or_else(OwnerDied::into_guard)
            .copy_from_slice(values);
        Ok(a)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shared.extra() as usize
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the lock; the guard reads and writes the elements.
    pub fn get_lock(&self) -> Result<ArrayGuard<'_, T>, OwnerDied<ArrayGuard<'_, T>>> {
        let (slice, how) = lock::<T>(&self.shared, self.len());
        let guard = ArrayGuard {
            slice,
            state: self.shared.state(),
        };
        match how {
            Acquired::Clean => Ok(guard),
            Acquired::OwnerDied => Err(OwnerDied(guard)),
        }
    }

    /// A copy of the elements, read under the lock.
    pub fn to_vec(&self) -> Vec<T> {
        self.get_lock()
            .unwrap_or_else(OwnerDied::into_guard)
            .to_vec()
    }
}

/// A fixed-length array of `T` in shared memory without a lock (Python's
/// `RawArray`): element reads and writes are single copies.
pub struct RawArray<T: Pod> {
    shared: Arc<Shared<LockState>>,
    _t: PhantomData<T>,
}

pod_handle!(RawArray);

impl<T: Pod> RawArray<T> {
    /// An array of `len` zeroed elements.
    pub fn new(len: usize) -> std::io::Result<RawArray<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "array too large")
        })?;
        Ok(RawArray {
            shared: create("multiproc-rawarray", bytes, len as u64)?,
            _t: PhantomData,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shared.extra() as usize
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
