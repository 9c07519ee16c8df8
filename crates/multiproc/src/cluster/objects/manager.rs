//! [`Manager`]: named dicts, lists, namespaces, values, locks,
//! semaphores, events and barriers on the cluster's server.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BarrierProxy, DictProxy, EventProxy, JoinableQueue, Links, ListProxy, LockProxy,
    NamespaceProxy, Queue, SemaphoreProxy, ValueProxy, object_key,
};
use crate::cluster::link::IO_TIMEOUT;
use crate::cluster::{Cluster, ClusterError, Link, check_name};

/// The cluster's counterpart of a local [`Manager`](crate::Manager): it
/// makes named shared objects on the server; from [`Cluster::manager`].
///
/// There is no manager process: each object lives on the server under
/// its kind and name in the cluster's namespace, so a manager is only a
/// [`Cluster`] handle, and the manager of another
/// [namespace](Cluster::namespace) has objects of its own. Unlike the
/// local manager's, the methods take a name: every process, on any
/// machine, that asks for an object of the same kind and name gets the
/// same object, as if the local proxy had been passed to it. An object
/// lives until it is [deleted](DictProxy::delete) (or the server loses
/// it); dropping every handle does not remove it.
///
/// ```no_run
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?.namespace("app")?;
/// let m = cluster.manager();
/// let counts = m.dict::<String, u64>("counts")?;
/// let log = m.list::<String>("log")?;
/// let hits = m.value("hits", 0u64)?;
/// let migrations = m.lock("migrations")?;
/// {
///     let guard = migrations.lock()?;
///     counts.insert("runs".to_string(), 1)?;
///     log.push(format!("migrated under fencing token {}", guard.token()))?;
///     hits.fetch_add(1)?;
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Manager {
    cluster: Cluster,
}

impl Cluster {
    /// The manager of this namespace's named objects (see [`Manager`]).
    pub fn manager(&self) -> Manager {
        Manager {
            cluster: self.clone(),
        }
    }
}

impl Manager {
    /// The cluster handle the objects are made on.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The dict named `name`.
    pub fn dict<K, V>(&self, name: &str) -> Result<DictProxy<K, V>, ClusterError> {
        Ok(DictProxy::from_object(Object::new(
            &self.cluster,
            name,
            &["dict"],
        )?))
    }

    /// The list named `name`.
    pub fn list<T>(&self, name: &str) -> Result<ListProxy<T>, ClusterError> {
        Ok(ListProxy::from_object(Object::new(
            &self.cluster,
            name,
            &["list"],
        )?))
    }

    /// The namespace named `name` (Python's `Namespace`: named values of
    /// any types).
    pub fn namespace(&self, name: &str) -> Result<NamespaceProxy, ClusterError> {
        Ok(NamespaceProxy::from_object(Object::new(
            &self.cluster,
            name,
            &["ns"],
        )?))
    }

    /// The value named `name`, set to `initial` if it does not exist yet
    /// (an existing value keeps its own).
    pub fn value<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        initial: T,
    ) -> Result<ValueProxy<T>, ClusterError> {
        ValueProxy::attach(Object::new(&self.cluster, name, &["value"])?, &initial)
    }

    /// The lease lock named `name`, with leases of 10 s (see
    /// [`LockProxy`] and [`LockProxy::with_lease`]).
    pub fn lock(&self, name: &str) -> Result<LockProxy, ClusterError> {
        Ok(LockProxy::from_object(Object::new(
            &self.cluster,
            name,
            &["lock", "lock.fence", "lock.wake"],
        )?))
    }

    /// The semaphore named `name`, starting with `value` units if it does
    /// not exist yet.
    pub fn semaphore(&self, name: &str, value: u32) -> Result<SemaphoreProxy, ClusterError> {
        SemaphoreProxy::attach(self.sem_object(name)?, value, false)
    }

    /// The semaphore named `name`, starting with `value` units, that
    /// refuses to be released past them.
    pub fn bounded_semaphore(
        &self,
        name: &str,
        value: u32,
    ) -> Result<SemaphoreProxy, ClusterError> {
        SemaphoreProxy::attach(self.sem_object(name)?, value, true)
    }

    fn sem_object(&self, name: &str) -> Result<Object, ClusterError> {
        Object::new(&self.cluster, name, &["sem", "sem.wake"])
    }

    /// The event named `name`.
    pub fn event(&self, name: &str) -> Result<EventProxy, ClusterError> {
        Ok(EventProxy::from_object(Object::new(
            &self.cluster,
            name,
            &["event", "event.wake"],
        )?))
    }

    /// The barrier named `name`, for `parties` callers per cycle; one
    /// that exists with another number of parties is refused
    /// ([`ClusterError::Mismatch`]).
    pub fn barrier(&self, name: &str, parties: u32) -> Result<BarrierProxy, ClusterError> {
        BarrierProxy::attach(
            Object::new(&self.cluster, name, &["barrier", "barrier.wake"])?,
            parties,
        )
    }

    /// The queue named `name` (the same as
    /// [`Cluster::queue`]`(name).build()`).
    pub fn queue<T>(&self, name: &str) -> Result<Queue<T>, ClusterError> {
        self.cluster.queue(name).build()
    }

    /// The queue named `name`, holding at most `max_items` values.
    pub fn bounded_queue<T>(&self, name: &str, max_items: u64) -> Result<Queue<T>, ClusterError> {
        self.cluster.queue(name).bounded(max_items).build()
    }

    /// The queue named `name`, as a [`JoinableQueue`].
    pub fn joinable_queue<T>(&self, name: &str) -> Result<JoinableQueue<T>, ClusterError> {
        self.cluster.queue(name).build_joinable()
    }
}

/// What every named object of a manager holds: its name, its keys (the
/// first is the main one) and its connections.
#[derive(Clone)]
pub(crate) struct Object {
    pub(crate) name: Arc<str>,
    pub(crate) keys: Arc<[String]>,
    pub(crate) key: String,
    links: Arc<Links>,
}

impl Object {
    pub(crate) fn new(
        cluster: &Cluster,
        name: &str,
        kinds: &[&str],
    ) -> Result<Object, ClusterError> {
        check_name(name)?;
        let keys: Arc<[String]> = kinds.iter().map(|k| object_key(cluster, k, name)).collect();
        Ok(Object {
            name: name.into(),
            key: keys[0].clone(),
            keys,
            links: Links::new(cluster),
        })
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Link) -> R) -> R {
        self.links.with(f)
    }

    pub(crate) fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        self.with(|l| l.run_within(cmd, IO_TIMEOUT))
    }

    pub(crate) fn script<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        self.with(|l| l.script_within(call, IO_TIMEOUT))
    }

    pub(crate) fn cluster(&self) -> &Cluster {
        self.links.cluster()
    }

    /// Removes every key of the object.
    pub(crate) fn delete(&self) -> Result<(), ClusterError> {
        self.run(redis::cmd("DEL").arg(&*self.keys))
    }
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object")
            .field("name", &self.name)
            .field("cluster", &self.links)
            .finish()
    }
}

/// Implements what every manager object has: `Debug`, `name`, `delete`
/// and, unless `@no_clone` comes first, `Clone` (another handle on the
/// same object, sharing its connections; the other fields must be
/// `Copy`).
macro_rules! object_type {
    (@no_clone $name:ident $(< $($t:ident),+ >)?, $what:literal) => {
        impl$(<$($t),+>)? std::fmt::Debug for $name$(<$($t),+>)? {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("name", &self.object.name)
                    .field("cluster", &self.object.cluster())
                    .finish_non_exhaustive()
            }
        }

        impl$(<$($t),+>)? $name$(<$($t),+>)? {
            /// The object's name.
            pub fn name(&self) -> &str {
                &self.object.name
            }

            #[doc = concat!("Removes the ", $what, " from the server. Handles still held, here or")]
            /// elsewhere, go on working on a new one.
            pub fn delete(&self) -> Result<(), $crate::cluster::ClusterError> {
                self.object.delete()
            }
        }
    };
    ($name:ident $(< $($t:ident),+ >)?, $what:literal) => {
        $crate::cluster::objects::manager::object_type!(@no_clone $name $(< $($t),+ >)?, $what);

        impl$(<$($t),+>)? Clone for $name$(<$($t),+>)? {
            #[allow(clippy::needless_update)]
            fn clone(&self) -> Self {
                $name {
                    object: self.object.clone(),
                    ..*self
                }
            }
        }
    };
}
pub(crate) use object_type;
