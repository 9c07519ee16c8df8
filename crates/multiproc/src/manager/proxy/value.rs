//! [`ValueProxy`]: one value on the manager (Python: `Manager().Value()`).

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::error::ProxyError;
use super::super::protocol::{Op, ValueOp};
use super::{Handle, enc, proxy_type, value};

/// One value of type `T` on a [`Manager`](crate::Manager). Unlike
/// [`Value`](crate::Value) it may be of any serde type, and costs a round
/// trip per access; each access is atomic.
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let v = manager.value(vec![1, 2])?;
/// assert_eq!(v.set(vec![3])?, vec![1, 2]);
/// assert_eq!(v.get()?, vec![3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ValueProxy<T> {
    handle: Handle,
    _types: PhantomData<fn() -> T>,
}

proxy_type!(ValueProxy<T>);

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// The value (Python: `v.value`).
    pub fn get(&self) -> Result<T, ProxyError> {
        value(self.handle.call(Op::Value(ValueOp::Get))?)
    }

    /// Replaces the value; returns the old one (Python: `v.value = x`).
    pub fn set(&self, new: T) -> Result<T, ProxyError> {
        value(self.handle.call(Op::Value(ValueOp::Set(enc(&new)?)))?)
    }
}
