//! [`NamespaceProxy`]: named values of any types (Python:
//! `Manager().Namespace()`).

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::error::ProxyError;
use super::super::protocol::{NamespaceOp, Op, Payload};
use super::{Handle, boolean, enc, maybe, proxy_type, unit};

/// Named values on a [`Manager`](crate::Manager), each of its own type
/// (Python's `Namespace`, whose attributes become `get` and `set`).
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let ns = manager.namespace()?;
/// ns.set("x", &10u32)?;
/// ns.set("name", &"job".to_string())?;
/// assert_eq!(ns.get::<u32>("x")?, Some(10));
/// assert_eq!(ns.names()?, ["name", "x"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NamespaceProxy {
    handle: Handle,
    _types: PhantomData<fn() -> ()>,
}

proxy_type!(NamespaceProxy);

impl NamespaceProxy {
    fn call(&self, op: NamespaceOp) -> Result<Payload, ProxyError> {
        self.handle.call(Op::Namespace(op))
    }

    /// The value named `name`, decoded as a `T`; `None` if there is none.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ProxyError> {
        maybe(self.call(NamespaceOp::Get(name.to_string()))?)
    }

    /// Sets the value named `name` (Python: `ns.name = value`).
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), ProxyError> {
        unit(self.call(NamespaceOp::Set(name.to_string(), enc(value)?))?)
    }

    /// Removes `name`; whether it was there (Python: `del ns.name`).
    pub fn remove(&self, name: &str) -> Result<bool, ProxyError> {
        boolean(self.call(NamespaceOp::Remove(name.to_string()))?)
    }

    /// The names, sorted.
    pub fn names(&self) -> Result<Vec<String>, ProxyError> {
        match self.call(NamespaceOp::Names)? {
            Payload::Names(n) => Ok(n),
            other => Err(super::super::client::unexpected(&other)),
        }
    }
}
