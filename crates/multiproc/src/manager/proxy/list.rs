//! [`ListProxy`]: a list on the manager (Python: `Manager().list()`).

use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::error::ProxyError;
use super::super::protocol::{ListOp, Op, Payload};
use super::{Handle, boolean, count, enc, maybe, proxy_type, unit, value, values};

/// A list that lives in a [`Manager`](crate::Manager): every process with a
/// proxy sees the same items.
///
/// Each method is one round trip; [`extend`](Self::extend) and
/// [`slice`](Self::slice) move many items in one, and
/// [`snapshot`](Self::snapshot) copies the whole list to iterate over.
///
/// ```
/// use multiproc::{ListProxy, Manager, Process};
///
/// fn append(log: ListProxy<String>) {
///     log.push("from the child".to_string()).unwrap();
/// }
///
/// let manager = Manager::start()?;
/// let log = manager.list::<String>()?;
/// log.push("from the parent".to_string())?;
/// Process::spawn(append, log.clone())?.join()?;
/// assert_eq!(log.snapshot()?, ["from the parent", "from the child"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ListProxy<T> {
    handle: Handle,
    _types: PhantomData<fn() -> T>,
}

proxy_type!(ListProxy<T>);

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    fn call(&self, op: ListOp) -> Result<Payload, ProxyError> {
        self.handle.call(Op::List(op))
    }

    /// Appends an item (Python: `append`).
    pub fn push(&self, item: T) -> Result<(), ProxyError> {
        unit(self.call(ListOp::Push(enc(&item)?))?)
    }

    /// Appends many items in one round trip.
    pub fn extend(&self, items: impl IntoIterator<Item = T>) -> Result<(), ProxyError> {
        let items = items
            .into_iter()
            .map(|i| enc(&i))
            .collect::<Result<_, _>>()?;
        unit(self.call(ListOp::Extend(items))?)
    }

    /// The item at `index`, if there is one.
    pub fn get(&self, index: usize) -> Result<Option<T>, ProxyError> {
        maybe(self.call(ListOp::Get(index as u64))?)
    }

    /// Replaces the item at `index` and returns the old one; past the end
    /// it is [`RemoteError::IndexOutOfRange`](crate::RemoteError::IndexOutOfRange).
    pub fn set(&self, index: usize, item: T) -> Result<T, ProxyError> {
        value(self.call(ListOp::Set(index as u64, enc(&item)?))?)
    }

    /// Inserts an item before `index` (at most the length).
    pub fn insert(&self, index: usize, item: T) -> Result<(), ProxyError> {
        unit(self.call(ListOp::Insert(index as u64, enc(&item)?))?)
    }

    /// Removes and returns the last item.
    pub fn pop(&self) -> Result<Option<T>, ProxyError> {
        maybe(self.call(ListOp::Pop)?)
    }

    /// Removes and returns the item at `index` (Python: `pop(index)`).
    pub fn remove(&self, index: usize) -> Result<T, ProxyError> {
        value(self.call(ListOp::Remove(index as u64))?)
    }

    /// The number of items.
    pub fn len(&self) -> Result<usize, ProxyError> {
        count(self.call(ListOp::Len)?)
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> Result<bool, ProxyError> {
        Ok(self.len()? == 0)
    }

    /// The items in `range`, clamped to the list (Python: `l[a:b]`).
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
        values(self.call(ListOp::Slice(start, end))?)
    }

    /// A copy of the whole list, to iterate over (Python: `list(l)`).
    pub fn snapshot(&self) -> Result<Vec<T>, ProxyError> {
        self.slice(..)
    }

    /// Removes every item.
    pub fn clear(&self) -> Result<(), ProxyError> {
        unit(self.call(ListOp::Clear)?)
    }

    /// How many items equal `item` (Python: `count`). Items compare by
    /// their encodings, as a [`DictProxy`](crate::DictProxy)'s keys do.
    pub fn count(&self, item: &T) -> Result<usize, ProxyError> {
        count(self.call(ListOp::Count(enc(item)?))?)
    }

    /// The position of the first item equal to `item`, compared as in
    /// [`count`](Self::count); `None` if there is none (Python's `index`
    /// raises `ValueError`).
    pub fn index(&self, item: &T) -> Result<Option<usize>, ProxyError> {
        Ok(count(self.call(ListOp::Index(enc(item)?))?)?.checked_sub(1))
    }

    /// Reverses the items in place (Python: `reverse`).
    pub fn reverse(&self) -> Result<(), ProxyError> {
        unit(self.call(ListOp::Reverse)?)
    }

    /// Sorts the items in place (Python: `sort`). The manager holds
    /// encodings, which it cannot order: the items are sorted here, on a
    /// copy, and written back only if the list did not change meanwhile
    /// (else it is done again). Two round trips or more; `T: Ord` orders.
    pub fn sort(&self) -> Result<(), ProxyError>
    where
        T: Ord,
    {
        loop {
            let old: Vec<T> = self.snapshot()?;
            let before = old.iter().map(enc).collect::<Result<Vec<_>, _>>()?;
            let mut sorted = old;
            sorted.sort();
            let after = sorted.iter().map(enc).collect::<Result<Vec<_>, _>>()?;
            if boolean(self.call(ListOp::ReplaceIf(before, after))?)? {
                return Ok(());
            }
        }
    }
}
