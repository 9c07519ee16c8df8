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

use crate::shm::object::{ShmObject, ShmState};
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
    pub(crate) fn create(name: &str, payload: usize, extra: u64) -> std::io::Result<Arc<Self>> {
        let obj = ShmObject::create(name, payload)?;
        handles::track(obj.fd());
        Ok(Arc::new(Shared { obj, extra }))
    }

    fn attach(fd: OwnedFd, extra: u64) -> std::io::Result<Arc<Self>> {
        let obj = ShmObject::attach(fd)?;
        handles::track(obj.fd());
        Ok(Arc::new(Shared { obj, extra }))
    }

    pub(crate) fn state(&self) -> &S {
        self.obj.get()
    }

    pub(crate) fn object(&self) -> &ShmObject<S> {
        &self.obj
    }

    pub(crate) fn extra(&self) -> u64 {
        self.extra
    }

    pub(crate) fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        (FdRef(self.obj.fd()), self.extra).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<Self>, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(deserialize_with = "handles::deserialize_fd")]
            fd: OwnedFd,
            extra: u64,
        }
        let w = Wire::deserialize(d)?;
        Shared::attach(w.fd, w.extra).map_err(serde::de::Error::custom)
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

pub use barrier::{Barrier, BarrierError};
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard, LockTimeoutError, OwnerDied, RLock, RLockGuard, TryLockError};
pub use semaphore::{BoundedSemaphore, ReleaseError, Semaphore};
pub use value::{Array, ArrayGuard, RawArray, RawValue, Value, ValueGuard};
