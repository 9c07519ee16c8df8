//! Proxies: typed handles on objects that live in the manager's server.
//!
//! Every proxy is a [`Handle`] (the link to the manager and the object's
//! id) plus the types it encodes and decodes; the server sees only bytes.
//! A proxy counts as one reference on the server: cloning one or receiving
//! one in another process adds a reference, dropping one removes it, and
//! the object is freed with its last reference (as in Python). Encoding a
//! proxy to send it takes a lease, a reference the server drops by itself
//! a minute later: so a proxy sent to a child and dropped at once by the
//! sender keeps its object until the child has attached.
//!
//! One file per kind of object: [`dict`], [`list`], [`array`], [`namespace`],
//! [`queue`], [`sync`] (lock, condition, semaphore, event, barrier), [`value`](mod@value), [`object`] (user
//! types), [`pool`] (a pool of worker processes).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::client::{Link, unexpected};
use super::error::ProxyError;
use super::protocol::{Blob, Kind, ObjectId, Op, Payload, Single, TimeoutMs, WireAddress};
use crate::sys::futex;
use crate::wire::codec;

pub(crate) mod array;
pub(crate) mod dict;
pub(crate) mod list;
pub(crate) mod namespace;
pub(crate) mod object;
pub(crate) mod pool;
pub(crate) mod queue;
pub(crate) mod sync;
pub(crate) mod value;

/// One reference to an object on a manager.
pub(crate) struct Handle {
    link: Arc<Link>,
    id: ObjectId,
    /// The process that holds the reference, or 0 if the handle holds none
    /// (taking it failed). A child forked with a copy of this handle (a
    /// `Process::fork` closure) took none either, and must not drop one.
    pid: u32,
}

impl Handle {
    /// Makes an object of `kind` on the manager behind `link`.
    pub(crate) fn create(link: &Arc<Link>, kind: Kind) -> Result<Handle, ProxyError> {
        match link.call(Single::Create(kind))? {
            Payload::Object(id) => Ok(Handle {
                link: Arc::clone(link),
                id,
                pid: futex::pid(),
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Calls a method of the object.
    pub(crate) fn call(&self, op: Op) -> Result<Payload, ProxyError> {
        self.link.call(Single::Call(self.id, op))
    }

    /// The link to the manager.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// The object's id on the manager.
    pub(crate) fn id(&self) -> ObjectId {
        self.id
    }
}

impl Handle {
    /// The same object for a waiter thread's call (`crate::aio`), holding
    /// no reference of its own: no round trip. The proxy it was made from
    /// keeps the object alive while its future lives.
    pub(crate) fn unowned(&self) -> Handle {
        Handle {
            link: Arc::clone(&self.link),
            id: self.id,
            pid: 0,
        }
    }
}

/// How long one slice of an async proxy call waits on the server.
pub(crate) const ASYNC_SLICE_MS: u64 = 100;

/// An async proxy call (see `docs/async.md`): a call is a round trip, so
/// every one runs on a waiter thread, in slices that each wait on the
/// server at most [`ASYNC_SLICE_MS`]. `slice` makes one call; `Some`
/// ends the future with its value. If the future is dropped while a call
/// is in flight, `undo` gets that call's result on the waiter thread (to
/// give back what it took).
pub(crate) fn sliced<T, S, U>(
    handle: &Handle,
    slice: S,
    undo: U,
) -> impl Future<Output = T> + Send + use<T, S, U>
where
    T: Send + 'static,
    S: Fn(&Handle, TimeoutMs) -> Option<T> + Send + Sync + 'static,
    U: Fn(&Handle, T) + Send + Sync + 'static,
{
    let (h, h2) = (Arc::new(handle.unowned()), Arc::new(handle.unowned()));
    crate::aio::sliced(
        move || slice(&h, Some(ASYNC_SLICE_MS)),
        move |v| undo(&h2, v),
    )
}

impl Clone for Handle {
    fn clone(&self) -> Self {
        // If the manager is gone the clone is as useless as the original;
        // its calls will say so. It holds no reference, and drops none.
        let took = self.link.call(Single::IncRef(self.id)).is_ok();
        Handle {
            link: Arc::clone(&self.link),
            id: self.id,
            pid: if took { futex::pid() } else { 0 },
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.pid == futex::pid() {
            let _ = self.link.call(Single::DecRef(self.id));
        }
    }
}

impl Serialize for Handle {
    /// Takes a lease on the object (see [`Single::Lease`]), so that it
    /// outlives this proxy until the receiver has attached; a manager that
    /// is gone fails the encoding.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        self.link.call(Single::Lease(self.id)).map_err(|e| {
            S::Error::custom(format!("cannot send manager object {}: {e}", self.id))
        })?;
        (
            self.link.wire_address(),
            Blob(self.link.authkey().to_vec()),
            self.id,
        )
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Handle {
    /// Attaches to the manager and takes a reference on the object: a
    /// manager that is gone, or an object already freed, fails here.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (address, authkey, id) = <(WireAddress, Blob, ObjectId)>::deserialize(d)?;
        let link = Link::shared(&address, &authkey.0);
        link.call(Single::IncRef(id)).map_err(|e| {
            crate::wire::codec::custom(format!("cannot attach to manager object {id}: {e}"))
        })?;
        Ok(Handle {
            link,
            id,
            pid: futex::pid(),
        })
    }
}

/// Implements what every proxy type has: `Clone` (a new reference),
/// `Debug`, `Serialize`/`Deserialize` (to pass it to another process),
/// and `id`.
macro_rules! proxy_type {
    ($name:ident) => {
        $crate::manager::proxy::proxy_type!(@impl $name []);
    };
    ($name:ident < $($t:ident),+ >) => {
        $crate::manager::proxy::proxy_type!(@impl $name [$($t),+]);
    };
    (@impl $name:ident [$($t:ident),*]) => {
        impl<$($t),*> Clone for $name<$($t),*> {
            fn clone(&self) -> Self {
                $name { handle: self.handle.clone(), _types: std::marker::PhantomData }
            }
        }

        impl<$($t),*> std::fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("manager", self.handle.link().address())
                    .field("id", &self.handle.id())
                    .finish()
            }
        }

        impl<$($t),*> serde::Serialize for $name<$($t),*> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.handle.serialize(s)
            }
        }

        impl<'de, $($t),*> serde::Deserialize<'de> for $name<$($t),*> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($name {
                    handle: $crate::manager::proxy::Handle::deserialize(d)?,
                    _types: std::marker::PhantomData,
                })
            }
        }

        impl<$($t),*> $name<$($t),*> {
            pub(crate) fn from_handle(handle: $crate::manager::proxy::Handle) -> Self {
                $name { handle, _types: std::marker::PhantomData }
            }

            /// The object's id on its manager.
            pub fn id(&self) -> u64 {
                self.handle.id()
            }
        }
    };
}
pub(crate) use proxy_type;

/// Encodes a typed value.
pub(crate) fn enc<T: Serialize + ?Sized>(value: &T) -> Result<Blob, ProxyError> {
    Ok(codec::encode(value).map(Blob)?)
}

/// Decodes a typed value.
pub(crate) fn dec<T: DeserializeOwned>(blob: &Blob) -> Result<T, ProxyError> {
    Ok(codec::decode(&blob.0)?)
}

/// An answer with nothing in it.
pub(crate) fn unit(p: Payload) -> Result<(), ProxyError> {
    match p {
        Payload::Unit => Ok(()),
        other => Err(unexpected(&other)),
    }
}

/// A yes or no.
pub(crate) fn boolean(p: Payload) -> Result<bool, ProxyError> {
    match p {
        Payload::Bool(b) => Ok(b),
        other => Err(unexpected(&other)),
    }
}

/// A number.
pub(crate) fn count(p: Payload) -> Result<usize, ProxyError> {
    match p {
        Payload::Count(n) => Ok(n as usize),
        other => Err(unexpected(&other)),
    }
}

/// One value.
pub(crate) fn value<T: DeserializeOwned>(p: Payload) -> Result<T, ProxyError> {
    match p {
        Payload::Value(b) => dec(&b),
        other => Err(unexpected(&other)),
    }
}

/// A value or none.
pub(crate) fn maybe<T: DeserializeOwned>(p: Payload) -> Result<Option<T>, ProxyError> {
    match p {
        Payload::MaybeValue(b) => b.as_ref().map(dec).transpose(),
        other => Err(unexpected(&other)),
    }
}

/// Several values.
pub(crate) fn values<T: DeserializeOwned>(p: Payload) -> Result<Vec<T>, ProxyError> {
    match p {
        Payload::Values(bs) => bs.iter().map(dec).collect(),
        other => Err(unexpected(&other)),
    }
}

/// A timeout for the protocol: whole milliseconds, rounded up.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}
