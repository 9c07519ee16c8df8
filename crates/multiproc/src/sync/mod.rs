//! Synchronisation between processes (Python's `Lock`, `RLock`,
//! `Semaphore`, `BoundedSemaphore`, `Event`, `Condition`, `Barrier`,
//! `Value`, `Array`), on futexes in shared memory.
//!
//! * [`lock`]: `Lock`, `RLock` and their guards; a holder that died is
//!   reported ([`OwnerDied`]) and the lock recovered, never held forever;
//! * [`semaphore`], [`event`], [`condition`], [`barrier`]: one file each;
//! * [`value`]: `Value`, `Array` and their raw variants.
//!
//! Every handle is a small memfd mapping: clone it to share it between
//! threads, pass it as (part of) a child's argument to share it with a
//! process. The states and their algorithms live in `shm::states`.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::shm::object::{ShmObject, ShmState, Tag};
use crate::wire::handles::{self, FdRef};

pub(crate) mod barrier;
pub(crate) mod condition;
pub(crate) mod event;
pub(crate) mod lock;
pub(crate) mod semaphore;
pub(crate) mod value;

/// A shared object, tracked so that a forked child closes it unless given.
#[derive(Debug)]
pub(crate) struct Shared<S: ShmState> {
    obj: ShmObject<S>,
    /// A per-type number that travels with the handle (an array's length).
    extra: u64,
}

impl<S: ShmState> Shared<S> {
    /// A new synchronisation primitive: its state and nothing else. The
    /// handle's wire form carries `extra` (0 for every primitive today).
    pub(crate) fn create(name: &str, payload: usize, extra: u64) -> std::io::Result<Arc<Self>> {
        debug_assert_eq!(payload, 0, "a payload needs a tag: use create_tagged");
        let obj = ShmObject::create(name, Tag::STATE)?;
        handles::track(obj.fd());
        Ok(Arc::new(Shared { obj, extra }))
    }

    /// A new object holding the payload `tag` describes (a `Value`, an
    /// `Array`...); its length travels with the handle.
    pub(crate) fn create_tagged(name: &str, tag: Tag) -> std::io::Result<Arc<Self>> {
        let obj = ShmObject::create(name, tag)?;
        handles::track(obj.fd());
        Ok(Arc::new(Shared {
            obj,
            extra: tag.len as u64,
        }))
    }

    pub(crate) fn attach(fd: OwnedFd, extra: u64, tag: Tag) -> std::io::Result<Arc<Self>> {
        let obj = ShmObject::attach(fd, tag)?;
        handles::track(obj.fd());
        Ok(Arc::new(Shared { obj, extra }))
    }

    #[inline]
    pub(crate) fn state(&self) -> &S {
        self.obj.get()
    }

    pub(crate) fn object(&self) -> &ShmObject<S> {
        &self.obj
    }

    pub(crate) fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        (FdRef(self.obj.fd()), self.extra).serialize(s)
    }

    /// Attaches to a primitive sent by [`serialize`](Self::serialize):
    /// refused if the object holds a payload (it is a `Value`, say).
    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<Self>, D::Error> {
        Self::deserialize_tagged(d, |_| Some(Tag::STATE))
    }

    /// Attaches to an object sent by [`serialize`](Self::serialize) if it
    /// holds what `expected` (given the length the handle carries) says;
    /// `expected` returns `None` for a length the type cannot have.
    pub(crate) fn deserialize_tagged<'de, D: serde::Deserializer<'de>>(
        d: D,
        expected: impl FnOnce(u64) -> Option<Tag>,
    ) -> Result<Arc<Self>, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(deserialize_with = "handles::deserialize_fd")]
            fd: OwnedFd,
            extra: u64,
        }
        let w = Wire::deserialize(d)?;
        let tag = expected(w.extra).ok_or_else(|| {
            crate::wire::codec::custom(format!("impossible shared object length {}", w.extra))
        })?;
        Shared::attach(w.fd, w.extra, tag).map_err(crate::wire::codec::custom)
    }
}

impl<S: ShmState> Drop for Shared<S> {
    fn drop(&mut self) {
        handles::untrack(self.obj.fd());
    }
}

/// Implements Clone, Serialize and Deserialize for a handle that is a
/// `Shared<S>` in an `Arc` field named `shared`.
macro_rules! shared_handle {
    ($ty:ident $(<$t:ident $(: $b:path)?>)?) => {
        impl$(<$t $(: $b)?>)? Clone for $ty$(<$t>)? {
            fn clone(&self) -> Self {
                Self::from_shared(std::sync::Arc::clone(&self.shared))
            }
        }
        impl$(<$t $(: $b)?>)? serde::Serialize for $ty$(<$t>)? {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.shared.serialize(s)
            }
        }
        impl<'de $(, $t $(: $b)?)?> serde::Deserialize<'de> for $ty$(<$t>)? {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                crate::sync::Shared::deserialize(d).map(Self::from_shared)
            }
        }
    };
}
pub(crate) use shared_handle;

pub use barrier::{Barrier, BarrierBuilder, BarrierError};
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard, LockTimeoutError, OwnerDied, RLock, RLockGuard, TryLockError};
pub use semaphore::{BoundedSemaphore, ReleaseError, Semaphore};
pub use value::{Array, ArrayGuard, RawArray, RawValue, Value, ValueGuard};
