//! [`ValueProxy`]: one named value on the cluster's server (a Redis
//! string).

use std::marker::PhantomData;
use std::sync::{Arc, LazyLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::manager::{Object, object_type};
use super::{dec, enc, script};
use crate::cluster::ClusterError;

/// Sets the value if it holds the expected bytes (a missing value holds
/// the initial ones). KEYS: value. ARGV: expected, new, initial.
static CAS: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local cur = redis.call('GET', KEYS[1])
if not cur then cur = ARGV[3] end
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#,
    )
});

/// One value of type `T` named in a [`Manager`](super::Manager); the
/// methods are the local [`ValueProxy`](crate::ValueProxy)'s, plus
/// [`compare_and_set`](Self::compare_and_set), [`update`](Self::update)
/// and, for numbers, [`fetch_add`](Self::fetch_add).
///
/// A value the server no longer has (deleted, or lost in a restart)
/// reads as the initial value this handle was made with.
///
/// ```no_run
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?;
/// let m = cluster.manager();
/// let hits = m.value("hits", 0u64)?;
/// assert_eq!(hits.fetch_add(5)?, 0);
/// assert!(hits.compare_and_set(&5, 7)?);
/// assert_eq!(hits.update(|n| n * 2)?, 14);
/// let name = m.value("name", String::from("draft"))?;
/// assert_eq!(name.set("final".into())?, "draft");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ValueProxy<T> {
    object: Object,
    /// The encoded initial value.
    initial: Arc<[u8]>,
    _types: PhantomData<fn() -> T>,
}

object_type!(@no_clone ValueProxy<T>, "value");

impl<T> Clone for ValueProxy<T> {
    fn clone(&self) -> Self {
        ValueProxy {
            object: self.object.clone(),
            initial: Arc::clone(&self.initial),
            _types: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    pub(crate) fn attach(object: Object, initial: &T) -> Result<Self, ClusterError> {
        let initial: Arc<[u8]> = enc(initial)?.into();
        object.run::<()>(redis::cmd("SET").arg(&object.key).arg(&*initial).arg("NX"))?;
        Ok(ValueProxy {
            object,
            initial,
            _types: PhantomData,
        })
    }

    fn raw(&self) -> Result<Vec<u8>, ClusterError> {
        let raw: Option<Vec<u8>> = self.object.run(redis::cmd("GET").arg(&self.object.key))?;
        Ok(raw.unwrap_or_else(|| self.initial.to_vec()))
    }

    /// The value.
    pub fn get(&self) -> Result<T, ClusterError> {
        dec(&self.raw()?)
    }

    /// Replaces the value; returns the old one (one atomic step).
    pub fn set(&self, new: T) -> Result<T, ClusterError> {
        let old: Option<Vec<u8>> = self.object.run(
            redis::cmd("SET")
                .arg(&self.object.key)
                .arg(enc(&new)?)
                .arg("GET"),
        )?;
        dec(old.as_deref().unwrap_or(&self.initial))
    }

    fn cas_raw(&self, expected: &[u8], new: &[u8]) -> Result<bool, ClusterError> {
        let set: i64 = self.object.script(
            CAS.key(&self.object.key)
                .arg(expected)
                .arg(new)
                .arg(&*self.initial),
        )?;
        Ok(set == 1)
    }

    /// Sets the value to `new` if it is `expected` now (compared as
    /// encoded bytes); whether it did. One atomic step on the server.
    pub fn compare_and_set(&self, expected: &T, new: T) -> Result<bool, ClusterError> {
        self.cas_raw(&enc(expected)?, &enc(&new)?)
    }

    /// Replaces the value by `f` of it and returns the new value: a loop
    /// of reads and compare-and-sets, so `f` may run more than once when
    /// others change the value meanwhile.
    pub fn update(&self, mut f: impl FnMut(T) -> T) -> Result<T, ClusterError> {
        loop {
            let raw = self.raw()?;
            let new = f(dec(&raw)?);
            if self.cas_raw(&raw, &enc(&new)?)? {
                return Ok(new);
            }
        }
    }
}

impl<T: Number> ValueProxy<T> {
    /// Adds `delta` and returns the value before (integers wrap around
    /// on overflow, as atomics do). Atomic: a compare-and-set loop, two
    /// round trips when no one else changes the value meanwhile.
    pub fn fetch_add(&self, delta: T) -> Result<T, ClusterError> {
        loop {
            let raw = self.raw()?;
            let old: T = dec(&raw)?;
            if self.cas_raw(&raw, &enc(&old.plus(delta))?)? {
                return Ok(old);
            }
        }
    }

    /// Subtracts `delta` and returns the value before, as
    /// [`fetch_add`](Self::fetch_add).
    pub fn fetch_sub(&self, delta: T) -> Result<T, ClusterError> {
        loop {
            let raw = self.raw()?;
            let old: T = dec(&raw)?;
            if self.cas_raw(&raw, &enc(&old.minus(delta))?)? {
                return Ok(old);
            }
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// The number types a [`ValueProxy`] can add to: every primitive integer
/// and float.
pub trait Number:
    Copy + Serialize + DeserializeOwned + sealed::Sealed + Send + Sync + 'static
{
    /// `self + other`, wrapping for integers.
    fn plus(self, other: Self) -> Self;
    /// `self - other`, wrapping for integers.
    fn minus(self, other: Self) -> Self;
}

macro_rules! int_number {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Number for $t {
            fn plus(self, other: Self) -> Self {
                self.wrapping_add(other)
            }
            fn minus(self, other: Self) -> Self {
                self.wrapping_sub(other)
            }
        }
    )*};
}

int_number!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

macro_rules! float_number {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Number for $t {
            fn plus(self, other: Self) -> Self {
                self + other
            }
            fn minus(self, other: Self) -> Self {
                self - other
            }
        }
    )*};
}

float_number!(f32, f64);
