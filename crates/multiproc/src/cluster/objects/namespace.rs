//! [`NamespaceProxy`]: named values of any types, on the cluster's server
//! (a Redis hash).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::manager::{Object, object_type};
use super::{dec, enc};
use crate::cluster::ClusterError;

/// Named values of any types in a [`Manager`](super::Manager) (Python's
/// `Namespace`, whose attributes become `get` and `set`); the methods are
/// the local [`NamespaceProxy`](crate::NamespaceProxy)'s.
///
/// ```no_run
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?;
/// let ns = cluster.manager().namespace("settings")?;
/// ns.set("x", &10u32)?;
/// ns.set("name", &"job".to_string())?;
/// assert_eq!(ns.get::<u32>("x")?, Some(10));
/// assert_eq!(ns.names()?, ["name", "x"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NamespaceProxy {
    object: Object,
}

object_type!(NamespaceProxy, "namespace");

impl NamespaceProxy {
    pub(crate) fn from_object(object: Object) -> Self {
        NamespaceProxy { object }
    }

    /// The value named `name`, decoded as a `T`; `None` if there is none.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ClusterError> {
        let raw: Option<Vec<u8>> = self
            .object
            .run(redis::cmd("HGET").arg(&self.object.key).arg(name))?;
        raw.map(|b| dec(&b)).transpose()
    }

    /// Sets the value named `name`.
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), ClusterError> {
        self.object.run(
            redis::cmd("HSET")
                .arg(&self.object.key)
                .arg(name)
                .arg(enc(value)?),
        )
    }

    /// Removes `name`; whether it was there.
    pub fn remove(&self, name: &str) -> Result<bool, ClusterError> {
        let n: u64 = self
            .object
            .run(redis::cmd("HDEL").arg(&self.object.key).arg(name))?;
        Ok(n > 0)
    }

    /// The names, sorted.
    pub fn names(&self) -> Result<Vec<String>, ClusterError> {
        let raw: Vec<Vec<u8>> = self.object.run(redis::cmd("HKEYS").arg(&self.object.key))?;
        let mut names = raw
            .into_iter()
            .map(|b| {
                String::from_utf8(b).map_err(|_| {
                    ClusterError::Corrupted(format!(
                        "namespace {:?} holds a name that is not UTF-8",
                        self.object.name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        Ok(names)
    }
}
