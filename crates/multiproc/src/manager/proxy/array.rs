//! [`ArrayProxy`]: a fixed-length array on the manager (Python:
//! `Manager().Array(typecode, sequence)`).

use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::error::ProxyError;
use super::super::protocol::{ArrayOp, Op, Payload};
use super::{Handle, count, enc, proxy_type, unit, value, values};

/// An array of a fixed length that lives in a [`Manager`](crate::Manager):
/// every process with a proxy sees the same items. Its length is set when
/// it is made and never changes (Python's manager `Array` exposes no way
/// to resize either); an index at or past the end is
/// [`RemoteError::IndexOutOfRange`](crate::RemoteError::IndexOutOfRange).
///
/// Where Python's typecode fixes the items' C type, here `T` is any serde
/// type; each access is atomic and costs one round trip, and
/// [`slice`](Self::slice) and [`set_slice`](Self::set_slice) move many
/// items in one. For numbers shared between processes of one family, the
/// shared-memory [`Array`](crate::Array) is much faster.
///
/// ```
/// use multiproc::{ArrayProxy, Manager, Process, ProxyError, RemoteError};
///
/// fn square(a: ArrayProxy<i64>) {
///     for i in 0..a.len().unwrap() {
///         let x = a.get(i).unwrap();
///         a.set(i, x * x).unwrap();
///     }
/// }
///
/// let manager = Manager::start()?;
/// let a = manager.array(vec![1i64, 2, 3])?;
/// Process::spawn(square, a.clone())?.join()?;
/// assert_eq!(a.snapshot()?, [1, 4, 9]);
/// assert!(matches!(
///     a.get(3),
///     Err(ProxyError::Remote(RemoteError::IndexOutOfRange { index: 3, len: 3 }))
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ArrayProxy<T> {
    handle: Handle,
    _types: PhantomData<fn() -> T>,
}

proxy_type!(ArrayProxy<T>);

impl<T: Serialize + DeserializeOwned> ArrayProxy<T> {
    fn call(&self, op: ArrayOp) -> Result<Payload, ProxyError> {
        self.handle.call(Op::Array(op))
    }

    /// The item at `index` (Python: `a[i]`).
    pub fn get(&self, index: usize) -> Result<T, ProxyError> {
        value(self.call(ArrayOp::Get(index as u64))?)
    }

    /// Replaces the item at `index` and returns the old one (Python:
    /// `a[i] = x`).
    pub fn set(&self, index: usize, item: T) -> Result<T, ProxyError> {
        value(self.call(ArrayOp::Set(index as u64, enc(&item)?))?)
    }

    /// The number of items, fixed at creation (Python: `len(a)`).
    pub fn len(&self) -> Result<usize, ProxyError> {
        count(self.call(ArrayOp::Len)?)
    }

    /// Whether the array has no items.
    pub fn is_empty(&self) -> Result<bool, ProxyError> {
        Ok(self.len()? == 0)
    }

    /// The items in `range`, clamped to the array (Python: `a[i:j]`).
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<Vec<T>, ProxyError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s as u64,
            Bound::Excluded(&s) => s as u64 + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e as u64 + 1,
            Bound::Excluded(&e) => e as u64,
            Bound::Unbounded => u64::MAX,
        };
        values(self.call(ArrayOp::Slice(start, end))?)
    }

    /// Overwrites the items from `start` on with `items`, in one atomic
    /// step (Python: `a[i:i + len(items)] = items`). Items that would go
    /// past the end are an
    /// [`IndexOutOfRange`](crate::RemoteError::IndexOutOfRange) error, and
    /// then nothing is written: the length never changes.
    pub fn set_slice(
        &self,
        start: usize,
        items: impl IntoIterator<Item = T>,
    ) -> Result<(), ProxyError> {
        let items = items
            .into_iter()
            .map(|i| enc(&i))
            .collect::<Result<_, _>>()?;
        unit(self.call(ArrayOp::SetSlice(start as u64, items))?)
    }

    /// A copy of every item (Python: `a[:]`).
    pub fn snapshot(&self) -> Result<Vec<T>, ProxyError> {
        self.slice(..)
    }
}
