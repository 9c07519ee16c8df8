//! [`ObjectProxy`]: a proxy on an object of a user-registered type.

use std::marker::PhantomData;

use super::super::client::unexpected;
use super::super::error::ProxyError;
use super::super::protocol::{Op, Payload, Single};
use super::super::registry::SharedObject;
use super::{Handle, dec, enc, proxy_type, value};

/// A proxy on an object of a type registered with
/// [`ManagerBuilder::register`](crate::ManagerBuilder::register): the
/// object lives in the manager, and each [`call`](Self::call) runs
/// [`SharedObject::call`] there.
pub struct ObjectProxy<T> {
    handle: Handle,
    _types: PhantomData<fn() -> T>,
}

proxy_type!(ObjectProxy<T>);

impl<T: SharedObject> ObjectProxy<T> {
    /// Runs one method on the object and returns its reply.
    pub fn call(&self, call: T::Call) -> Result<T::Reply, ProxyError> {
        value(self.handle.call(Op::User(enc(&call)?))?)
    }

    /// Runs several methods in one round trip, in order; one result each.
    pub fn call_many(
        &self,
        calls: impl IntoIterator<Item = T::Call>,
    ) -> Result<Vec<Result<T::Reply, ProxyError>>, ProxyError> {
        let id = self.handle.id();
        let batch = calls
            .into_iter()
            .map(|c| Ok(Single::Call(id, Op::User(enc(&c)?))))
            .collect::<Result<Vec<_>, ProxyError>>()?;
        let replies = self.handle.link().batch(batch)?;
        Ok(replies
            .into_iter()
            .map(|r| match r? {
                Payload::Value(b) => dec(&b),
                other => Err(unexpected(&other)),
            })
            .collect())
    }
}
