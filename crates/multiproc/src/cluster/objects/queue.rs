//! [`Queue`] and [`JoinableQueue`]: a named queue on the cluster's server.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BACKSTOP, Deadline, Links, SLICE, blpop, dec, enc, object_key, script, wait_wake, wake,
};
use crate::cluster::link::IO_TIMEOUT;
use crate::cluster::{Cluster, ClusterError, Link, check_name};

/// Puts a value unless a bound is given and reached; counts it unfinished.
/// KEYS: items, meta. ARGV: value, bound (0: none). 1 if put, 0 if full.
static PUT: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
num(redis.call('HGET', KEYS[2], 'unfinished'), 0, 'the unfinished count')
local max = tonumber(ARGV[2])
if max > 0 and redis.call('LLEN', KEYS[1]) >= max then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'unfinished', 1)
return 1
"#,
    )
});

/// Takes the first value, if any, and wakes a producer waiting for room
/// (if ARGV[1] is 1: the queue is bounded). KEYS: items, space.
static POP: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local v = redis.call('LPOP', KEYS[1])
if v and ARGV[1] == '1' then wake(KEYS[2]) end
return v
"#,
    )
});

/// Marks one value done; wakes joiners when none is left. KEYS: meta,
/// done. The count left, or -1 if none was unfinished.
static TASK_DONE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local u = num(redis.call('HGET', KEYS[1], 'unfinished'), 0, 'the unfinished count')
if u <= 0 then return -1 end
u = redis.call('HINCRBY', KEYS[1], 'unfinished', -1)
if u == 0 then wake(KEYS[2]) end
return u
"#,
    )
});

/// Records the bound if the queue has none; returns the queue's. KEYS:
/// meta. ARGV: bound.
static SET_BOUND: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('HSETNX', KEYS[1], 'max', ARGV[1])
return num(redis.call('HGET', KEYS[1], 'max'), 0, 'the bound')
"#,
    )
});

/// Builds a [`Queue`] named in a [`Cluster`]; from [`Cluster::queue`].
#[must_use = "a builder does nothing until built"]
pub struct QueueBuilder<T> {
    cluster: Cluster,
    name: String,
    bound: u64,
    _types: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for QueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("name", &self.name)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A builder for the queue named `name` in this namespace: any process
    /// that builds a queue of that name on the same server and namespace
    /// shares its values.
    ///
    /// ```no_run
    /// use multiproc::cluster::{Cluster, TryGetError};
    ///
    /// let cluster = Cluster::connect("redis://127.0.0.1:6379")?;
    /// let jobs = cluster.queue::<String>("jobs").bounded(1000).build()?;
    /// jobs.put("render frame 1".to_string())?;
    /// // In any process, on any machine:
    /// let same = cluster.queue::<String>("jobs").build()?;
    /// assert_eq!(same.get()?, "render frame 1");
    /// assert!(matches!(same.try_get(), Err(TryGetError::Empty)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queue<T>(&self, name: &str) -> QueueBuilder<T> {
        QueueBuilder {
            cluster: self.clone(),
            name: name.to_owned(),
            bound: 0,
            _types: PhantomData,
        }
    }
}

impl<T> QueueBuilder<T> {
    /// The queue holds at most `max_items` values (0: no bound, as
    /// Python's `Queue(0)`). The bound belongs to the queue: the first
    /// handle built with one records it, later handles built without a
    /// bound follow it, and one built with another bound is refused
    /// ([`ClusterError::Mismatch`]).
    pub fn bounded(mut self, max_items: u64) -> Self {
        self.bound = max_items;
        self
    }

    /// Attaches to the queue (making it, if it does not exist yet).
    pub fn build(self) -> Result<Queue<T>, ClusterError> {
        check_name(&self.name)?;
        let keys = Keys {
            items: object_key(&self.cluster, "queue", &self.name),
            meta: object_key(&self.cluster, "queue.meta", &self.name),
            space: object_key(&self.cluster, "queue.space", &self.name),
            done: object_key(&self.cluster, "queue.done", &self.name),
        };
        let links = Links::new(&self.cluster);
        let bound = links.with(|link| -> Result<u64, ClusterError> {
            let max: i64 = if self.bound > 0 {
                link.script_within(SET_BOUND.key(&keys.meta).arg(self.bound), IO_TIMEOUT)?
            } else {
                let raw: Option<String> =
                    link.run_within(redis::cmd("HGET").arg(&keys.meta).arg("max"), IO_TIMEOUT)?;
                match raw {
                    None => 0,
                    Some(raw) => raw.parse().map_err(|_| {
                        ClusterError::Corrupted(format!("the bound of queue {:?}", self.name))
                    })?,
                }
            };
            let max = u64::try_from(max).map_err(|_| {
                ClusterError::Corrupted(format!("the bound of queue {:?}", self.name))
            })?;
            if self.bound > 0 && max != self.bound {
                return Err(ClusterError::Mismatch(format!(
                    "queue {:?} exists with bound {max}, not {}",
                    self.name, self.bound
                )));
            }
            Ok(max)
        })?;
        Ok(Queue {
            inner: Arc::new(Inner {
                name: self.name,
                keys,
                bound,
                links,
            }),
            _types: PhantomData,
        })
    }

    /// Attaches to the queue as a [`JoinableQueue`].
    pub fn build_joinable(self) -> Result<JoinableQueue<T>, ClusterError> {
        self.build().map(JoinableQueue)
    }
}

#[derive(Debug)]
struct Keys {
    /// The values: a list.
    items: String,
    /// A hash: `max` (the bound), `unfinished` (values put and not yet
    /// marked done).
    meta: String,
    /// Wake-up list of producers waiting for room.
    space: String,
    /// Wake-up list of joiners.
    done: String,
}

#[derive(Debug)]
struct Inner {
    name: String,
    keys: Keys,
    bound: u64,
    links: Arc<Links>,
}

/// A FIFO queue named in a [`Cluster`]: any process on any machine that
/// builds it by name ([`Cluster::queue`]) puts and gets the same values.
/// Its methods are the local [`Queue`](crate::Queue)'s.
///
/// The values live on the server, encoded with multiproc's codec; a
/// value got is removed there before it reaches the caller, so a consumer
/// that dies just after a `get` loses that value (the local queue's
/// `get` is at-most-once too, but a local consumer dies with its
/// process's other handles). `len`, `is_full` and the bound are checked
/// on the server at the moment of each call and may be stale by the time
/// the caller acts, as locally.
///
/// A clone is another handle on the same queue, sharing its connections.
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::cluster::{Cluster, GetTimeoutError};
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?;
/// let q = cluster.queue::<u64>("numbers").build()?;
/// q.put(1)?;
/// assert_eq!(q.get_timeout(Duration::from_secs(1))?, 1);
/// assert!(matches!(
///     q.get_timeout(Duration::from_millis(10)),
///     Err(GetTimeoutError::Timeout)
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    inner: Arc<Inner>,
    _types: PhantomData<fn() -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            inner: Arc::clone(&self.inner),
            _types: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.inner.name)
            .field("bound", &self.inner.bound)
            .field("cluster", &self.inner.links)
            .finish()
    }
}

impl<T> Queue<T> {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The queue's bound (0: none).
    pub fn max_items(&self) -> u64 {
        self.inner.bound
    }

    fn with<R>(&self, f: impl FnOnce(&mut Link) -> R) -> R {
        self.inner.links.with(f)
    }

    /// Values in the queue now (Python's `qsize`; stale as soon as it is
    /// read while others put and get).
    #[doc(alias = "qsize")]
    pub fn len(&self) -> Result<usize, ClusterError> {
        let n: u64 = self
            .with(|l| l.run_within(redis::cmd("LLEN").arg(&self.inner.keys.items), IO_TIMEOUT))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Whether the queue is empty now.
    pub fn is_empty(&self) -> Result<bool, ClusterError> {
        Ok(self.len()? == 0)
    }

    /// Whether the queue holds its bound now (always false without one).
    pub fn is_full(&self) -> Result<bool, ClusterError> {
        Ok(self.inner.bound > 0 && self.len()? as u64 >= self.inner.bound)
    }

    /// Removes the queue from the server: its values, its bound and its
    /// count of unfinished values. Handles still held, here or elsewhere,
    /// go on working on an empty queue without a recorded bound.
    pub fn delete(&self) -> Result<(), ClusterError> {
        let k = &self.inner.keys;
        self.with(|l| {
            l.run_within(
                redis::cmd("DEL")
                    .arg(&k.items)
                    .arg(&k.meta)
                    .arg(&k.space)
                    .arg(&k.done),
                IO_TIMEOUT,
            )
        })
    }
}

impl<T: Serialize> Queue<T> {
    fn put_until(&self, value: T, deadline: Deadline) -> Result<(), PutTimeoutError<T>> {
        let bytes = match enc(&value) {
            Ok(b) => b,
            Err(reason) => return Err(PutError { value, reason }.into()),
        };
        let k = &self.inner.keys;
        let r = self.with(|link| -> Result<bool, ClusterError> {
            loop {
                let put: i64 = link.script_within(
                    PUT.key(&k.items)
                        .key(&k.meta)
                        .arg(&bytes)
                        .arg(self.inner.bound),
                    deadline.io(),
                )?;
                if put == 1 {
                    return Ok(true);
                }
                if deadline.expired() {
                    return Ok(false);
                }
                wait_wake(link, &k.space, deadline.block(BACKSTOP))?;
            }
        });
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(PutTimeoutError::Timeout(value)),
            Err(reason) => Err(PutError { value, reason }.into()),
        }
    }

    /// Puts a value, waiting for room in a bounded queue as long as it
    /// takes.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_until(value, Deadline::never())
            .map_err(|e| match e {
                PutTimeoutError::Failed(e) => e,
                PutTimeoutError::Timeout(value) => PutError {
                    value,
                    reason: ClusterError::Server("an unbounded put timed out".into()),
                },
            })
    }

    /// Puts a value, waiting at most `timeout` for room.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutTimeoutError<T>> {
        self.put_until(value, Deadline::after(timeout))
    }

    /// Puts a value if there is room now.
    pub fn try_put(&self, value: T) -> Result<(), TryPutError<T>> {
        self.put_until(value, Deadline::now()).map_err(|e| match e {
            PutTimeoutError::Timeout(v) => TryPutError::Full(v),
            PutTimeoutError::Failed(e) => TryPutError::Failed(e),
        })
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Takes a value if one comes before `deadline`.
    fn get_until(&self, deadline: Deadline) -> Result<Option<T>, ClusterError> {
        let k = &self.inner.keys;
        let bytes = self.with(|link| -> Result<Option<Vec<u8>>, ClusterError> {
            loop {
                let cap = if deadline.expired() {
                    // One look, without blocking.
                    let v: Option<Vec<u8>> = link.script_within(
                        POP.key(&k.items)
                            .key(&k.space)
                            .arg(u8::from(self.inner.bound > 0)),
                        deadline.io(),
                    )?;
                    return Ok(v);
                } else {
                    SLICE
                };
                if let Some(v) = blpop(link, &k.items, deadline.block(cap))? {
                    if self.inner.bound > 0 {
                        // The value is taken: a failed wake-up must not
                        // lose it (blocked producers re-check anyway).
                        let _ = wake(link, &k.space, IO_TIMEOUT);
                    }
                    return Ok(Some(v));
                }
                if deadline.expired() {
                    return Ok(None);
                }
            }
        })?;
        bytes.map(|b| dec(&b)).transpose()
    }

    /// Takes the first value, waiting for one as long as it takes. A
    /// value that does not decode as a `T` is removed and reported
    /// ([`ClusterError::Decode`]).
    pub fn get(&self) -> Result<T, ClusterError> {
        self.get_until(Deadline::never())?
            .ok_or_else(|| ClusterError::Server("an unbounded get came back empty".into()))
    }

    /// Takes the first value, waiting at most `timeout` for one.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        self.get_until(Deadline::after(timeout))?
            .ok_or(GetTimeoutError::Timeout)
    }

    /// Takes the first value if there is one now.
    pub fn try_get(&self) -> Result<T, TryGetError> {
        self.get_until(Deadline::now())?.ok_or(TryGetError::Empty)
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Queue<T> {
    /// [`get`](Self::get), as a future on any runtime: the wait runs on a
    /// waiter thread in slices of 100 ms (docs/async.md), so no executor
    /// thread blocks. Dropping the future takes nothing: a value a slice
    /// in flight took is put back, at the end of the queue (a joinable
    /// queue's count of unfinished values stays right).
    pub fn get_async(&self) -> impl Future<Output = Result<T, ClusterError>> + Send + use<T> {
        let (q, back) = (self.clone(), self.clone());
        super::sliced(
            move |slice| match q.get_timeout(slice) {
                Ok(v) => Some(Ok(v)),
                Err(GetTimeoutError::Timeout) => None,
                Err(GetTimeoutError::Failed(e)) => Some(Err(e)),
            },
            move |taken: Result<T, ClusterError>| {
                if let Ok(v) = taken
                    && back.put(v).is_ok()
                {
                    // The put counted the value again: it is one value,
                    // still unfinished.
                    let k = &back.inner.keys;
                    let _ = back.with(|l| {
                        l.script_within::<i64>(TASK_DONE.key(&k.meta).key(&k.done), IO_TIMEOUT)
                    });
                }
            },
        )
    }

    /// [`put`](Self::put), as a future on any runtime: waits on a waiter
    /// thread while a bounded queue is full. Dropping the future puts
    /// nothing, unless a slice in flight already did.
    pub fn put_async(
        &self,
        value: T,
    ) -> impl Future<Output = Result<(), PutError<T>>> + Send + use<T> {
        let q = self.clone();
        let value = Mutex::new(Some(value));
        super::sliced(
            move |slice| {
                let v = value.lock().unwrap_or_else(|e| e.into_inner()).take()?;
                match q.put_timeout(v, slice) {
                    Ok(()) => Some(Ok(())),
                    Err(PutTimeoutError::Timeout(v)) => {
                        *value.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
                        None
                    }
                    Err(PutTimeoutError::Failed(e)) => Some(Err(e)),
                }
            },
            |_| {},
        )
    }
}

/// A [`Queue`] whose consumers say when they have finished each value, so
/// that a producer can wait for all of them (Python's `JoinableQueue`);
/// from [`QueueBuilder::build_joinable`]. It dereferences to its
/// [`Queue`].
///
/// The count of unfinished values lives on the server with the queue:
/// every put counts, whichever handle made it, and any process may mark
/// values done or join.
///
/// ```no_run
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?;
/// let q = cluster.queue::<u64>("work").build_joinable()?;
/// q.put(7)?;
/// // A consumer, anywhere:
/// let job = q.get()?;
/// q.task_done()?;
/// q.join()?; // every value put has been marked done
/// # let _ = job;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JoinableQueue<T>(Queue<T>);

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JoinableQueue").field(&self.0).finish()
    }
}

impl<T> AsRef<Queue<T>> for JoinableQueue<T> {
    /// The queue underneath, for code written for a [`Queue`].
    fn as_ref(&self) -> &Queue<T> {
        &self.0
    }
}

/// The [`Queue`] methods, each as [`Queue`]'s of the same name.
impl<T> JoinableQueue<T> {
    /// See [`Queue::name`].
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// See [`Queue::max_items`].
    pub fn max_items(&self) -> u64 {
        self.0.max_items()
    }

    /// See [`Queue::len`].
    pub fn len(&self) -> Result<usize, ClusterError> {
        self.0.len()
    }

    /// See [`Queue::is_empty`].
    pub fn is_empty(&self) -> Result<bool, ClusterError> {
        self.0.is_empty()
    }

    /// See [`Queue::is_full`].
    pub fn is_full(&self) -> Result<bool, ClusterError> {
        self.0.is_full()
    }

    /// See [`Queue::delete`].
    pub fn delete(&self) -> Result<(), ClusterError> {
        self.0.delete()
    }
}

impl<T: Serialize> JoinableQueue<T> {
    /// See [`Queue::put`]; every value put must be marked done.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.0.put(value)
    }

    /// See [`Queue::put_timeout`].
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutTimeoutError<T>> {
        self.0.put_timeout(value, timeout)
    }

    /// See [`Queue::try_put`].
    pub fn try_put(&self, value: T) -> Result<(), TryPutError<T>> {
        self.0.try_put(value)
    }
}

impl<T: DeserializeOwned> JoinableQueue<T> {
    /// See [`Queue::get`]; mark the value done with
    /// [`task_done`](Self::task_done).
    pub fn get(&self) -> Result<T, ClusterError> {
        self.0.get()
    }

    /// See [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        self.0.get_timeout(timeout)
    }

    /// See [`Queue::try_get`].
    pub fn try_get(&self) -> Result<T, TryGetError> {
        self.0.try_get()
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> JoinableQueue<T> {
    /// See [`Queue::get_async`].
    pub fn get_async(&self) -> impl Future<Output = Result<T, ClusterError>> + Send + use<T> {
        self.0.get_async()
    }

    /// See [`Queue::put_async`].
    pub fn put_async(
        &self,
        value: T,
    ) -> impl Future<Output = Result<(), PutError<T>>> + Send + use<T> {
        self.0.put_async(value)
    }
}

impl<T> JoinableQueue<T> {
    /// Marks one value got from the queue as processed;
    /// [`ClusterError::OverReleased`] if none is unfinished.
    pub fn task_done(&self) -> Result<(), ClusterError> {
        let k = &self.0.inner.keys;
        let left: i64 = self
            .0
            .with(|l| l.script_within(TASK_DONE.key(&k.meta).key(&k.done), IO_TIMEOUT))?;
        if left < 0 {
            return Err(ClusterError::OverReleased(
                "task_done() called more times than values were put",
            ));
        }
        Ok(())
    }

    /// Values put and not yet marked done.
    pub fn unfinished(&self) -> Result<u64, ClusterError> {
        let k = &self.0.inner.keys;
        self.0.with(|l| unfinished(l, &k.meta, IO_TIMEOUT))
    }

    fn join_until(&self, deadline: Deadline) -> Result<bool, ClusterError> {
        let k = &self.0.inner.keys;
        self.0.with(|link| {
            let mut woken = false;
            loop {
                if unfinished(link, &k.meta, deadline.io())? == 0 {
                    if woken {
                        // Pass the wake-up on to the next joiner (who
                        // re-checks anyway if this fails).
                        let _ = wake(link, &k.done, deadline.io());
                    }
                    return Ok(true);
                }
                if deadline.expired() {
                    return Ok(false);
                }
                woken = wait_wake(link, &k.done, deadline.block(BACKSTOP))?;
            }
        })
    }

    /// Waits until every value put has been marked done.
    pub fn join(&self) -> Result<(), ClusterError> {
        self.join_until(Deadline::never()).map(drop)
    }

    /// Like [`join`](Self::join), giving up at `timeout`; true if all
    /// were done.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, ClusterError> {
        self.join_until(Deadline::after(timeout))
    }

    /// [`join`](Self::join), as a future on any runtime (a waiter thread
    /// waits in slices of 100 ms). Dropping it changes nothing.
    pub fn join_async(&self) -> impl Future<Output = Result<(), ClusterError>> + Send + use<T>
    where
        T: 'static,
    {
        let q = self.clone();
        super::sliced(
            move |slice| match q.join_timeout(slice) {
                Ok(true) => Some(Ok(())),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            },
            |_| {},
        )
    }
}

fn unfinished(link: &mut Link, meta: &str, wait: Duration) -> Result<u64, ClusterError> {
    let raw: Option<String> =
        link.run_within(redis::cmd("HGET").arg(meta).arg("unfinished"), wait)?;
    match raw {
        None => Ok(0),
        Some(raw) => raw
            .parse::<i64>()
            .map(|n| n.max(0) as u64)
            .map_err(|_| ClusterError::Corrupted(format!("the unfinished count {raw:?}"))),
    }
}

/// A value could not be put; here it is back. After a
/// [`Connection`](ClusterError::Connection) or
/// [`Timeout`](ClusterError::Timeout), the value may have been queued all
/// the same.
pub type PutError<T> = crate::queue::PutError<T, ClusterError>;
/// [`put_timeout`](Queue::put_timeout) did not put the value.
pub type PutTimeoutError<T> = crate::queue::PutTimeoutError<T, ClusterError>;
/// [`try_put`](Queue::try_put) did not put the value.
pub type TryPutError<T> = crate::queue::TryPutError<T, ClusterError>;
/// [`get_timeout`](Queue::get_timeout) did not get a value.
pub type GetTimeoutError = crate::queue::GetTimeoutError<ClusterError>;
/// [`try_get`](Queue::try_get) did not get a value.
pub type TryGetError = crate::queue::TryGetError<ClusterError>;
