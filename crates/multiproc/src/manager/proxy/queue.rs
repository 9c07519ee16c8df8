//! [`QueueProxy`] and [`JoinableQueueProxy`]: queues hosted by the
//! manager (Python: `Manager().Queue()`, `Manager().JoinableQueue()`).

use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::error::ProxyError;
use super::super::protocol::{Op, Payload, QueueOp, TimeoutMs};
use super::{Handle, boolean, count, enc, maybe, millis, proxy_type, unit};
use crate::queue::{GetTimeoutError, PutError, PutTimeoutError, TryGetError, TryPutError};

/// A FIFO queue that lives in a [`Manager`](crate::Manager).
///
/// Every put and get is a round trip to the manager, so a shared-memory
/// [`Queue`](crate::Queue) is much faster; a manager queue is for processes
/// that did not start each other, or talk over TCP. A blocking `get` or
/// `put` waits on the server, and never holds up other clients.
///
/// ```
/// let manager = multiproc::Manager::start()?;
/// let q = manager.queue::<String>()?;
/// q.put("job".to_string())?;
/// assert_eq!(q.get()?, "job");
/// assert!(q.try_get().is_err()); // TryGetError::Empty
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct QueueProxy<T> {
    handle: Handle,
    _types: PhantomData<fn() -> T>,
}

proxy_type!(QueueProxy<T>);

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    /// Puts within `timeout`: `Ok(Err(value))` if the queue stayed full.
    fn put_within(
        &self,
        value: T,
        timeout: TimeoutMs,
    ) -> Result<Result<(), T>, PutError<T, ProxyError>> {
        let sent = enc(&value)
            .and_then(|b| boolean(self.handle.call(Op::Queue(QueueOp::Put(b, timeout)))?));
        match sent {
            Ok(true) => Ok(Ok(())),
            Ok(false) => Ok(Err(value)),
            Err(reason) => Err(PutError { value, reason }),
        }
    }

    /// Puts a value, waiting while a bounded queue is full.
    pub fn put(&self, value: T) -> Result<(), PutError<T, ProxyError>> {
        match self.put_within(value, None)? {
            Ok(()) => Ok(()),
            Err(value) => Err(PutError {
                value,
                reason: ProxyError::Protocol("an unbounded put came back full".into()),
            }),
        }
    }

    /// Puts a value unless the queue stays full for `timeout`.
    pub fn put_timeout(
        &self,
        value: T,
        timeout: Duration,
    ) -> Result<(), PutTimeoutError<T, ProxyError>> {
        self.put_within(value, Some(millis(timeout)))?
            .map_err(PutTimeoutError::Timeout)
    }

    /// Puts a value if there is room now.
    pub fn try_put(&self, value: T) -> Result<(), TryPutError<T, ProxyError>> {
        self.put_within(value, Some(0))?.map_err(TryPutError::Full)
    }

    /// Takes the oldest value, waiting for one.
    pub fn get(&self) -> Result<T, ProxyError> {
        maybe(self.handle.call(Op::Queue(QueueOp::Get(None)))?)?
            .ok_or_else(|| ProxyError::Protocol("an unbounded get came back empty".into()))
    }

    /// Takes the oldest value if one comes within `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError<ProxyError>> {
        let call = self
            .handle
            .call(Op::Queue(QueueOp::Get(Some(millis(timeout)))))?;
        maybe(call)?.ok_or(GetTimeoutError::Timeout)
    }

    /// Takes the oldest value if there is one now.
    pub fn try_get(&self) -> Result<T, TryGetError<ProxyError>> {
        maybe(self.handle.call(Op::Queue(QueueOp::Get(Some(0))))?)?.ok_or(TryGetError::Empty)
    }

    /// [`get`](Self::get), as a future (see `docs/async.md`): the call
    /// runs on a waiter thread, in slices of at most 100 ms on the
    /// server, and never blocks the polling thread. Dropping the future
    /// loses nothing, but a value that a call in flight had already taken
    /// is put back at the *end* of the queue (a joinable queue's count of
    /// unfinished items is kept).
    pub fn get_async(&self) -> impl Future<Output = Result<T, ProxyError>> + Send + use<T> {
        let got = super::sliced(
            &self.handle,
            |h, ms| match h.call(Op::Queue(QueueOp::Get(ms))) {
                Ok(Payload::MaybeValue(None)) => None,
                other => Some(other),
            },
            |h, taken| {
                if let Ok(Payload::MaybeValue(Some(b))) = taken {
                    let _ = h.call(Op::Queue(QueueOp::Put(b, None)));
                    // A joinable queue counted the value again: it is one
                    // item, still unfinished. (A plain queue refuses.)
                    let _ = h.call(Op::Queue(QueueOp::TaskDone));
                }
            },
        );
        async move {
            maybe(got.await?)?
                .ok_or_else(|| ProxyError::Protocol("an unbounded get came back empty".into()))
        }
    }

    /// [`put`](Self::put), as a future: waits on a waiter thread while a
    /// bounded queue is full, in slices of at most 100 ms. The value is
    /// encoded in the first poll. Dropping the future puts nothing unless
    /// a call in flight already did.
    pub fn put_async(
        &self,
        value: T,
    ) -> impl Future<Output = Result<(), PutError<T, ProxyError>>> + Send + use<T>
    where
        T: Send + 'static,
    {
        let encoded = enc(&value);
        let sent = encoded.map(|b| {
            super::sliced(
                &self.handle,
                move |h, ms| match h.call(Op::Queue(QueueOp::Put(b.clone(), ms))) {
                    Ok(Payload::Bool(false)) => None,
                    other => Some(other),
                },
                |_, _| {},
            )
        });
        async move {
            let outcome = match sent {
                Ok(call) => call.await.and_then(boolean),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(_) => Ok(()),
                Err(reason) => Err(PutError { value, reason }),
            }
        }
    }

    /// The number of values waiting.
    pub fn len(&self) -> Result<usize, ProxyError> {
        count(self.handle.call(Op::Queue(QueueOp::Len))?)
    }

    /// Whether no value is waiting.
    pub fn is_empty(&self) -> Result<bool, ProxyError> {
        Ok(self.len()? == 0)
    }

    /// Whether a bounded queue holds as many values as it may (Python:
    /// `full()`); never for an unbounded one. A hint: it may change at once.
    pub fn is_full(&self) -> Result<bool, ProxyError> {
        boolean(self.handle.call(Op::Queue(QueueOp::Full))?)
    }
}

/// A [`QueueProxy`] that also counts unfinished items (Python:
/// `Manager().JoinableQueue()`): every put adds one, every
/// [`task_done`](Self::task_done) takes one away, and
/// [`join`](Self::join) waits until none is left. It has every method of
/// [`QueueProxy`] (each of its methods, and `as_ref()` for code written
/// for a `QueueProxy`).
///
/// A consumer that dies between its get and its `task_done` leaves the
/// item unfinished, as in Python: `join` then waits for it forever, and
/// [`join_timeout`](Self::join_timeout) gives up.
///
/// ```
/// use multiproc::{JoinableQueueProxy, Manager, Process};
///
/// fn worker(jobs: JoinableQueueProxy<u32>) {
///     while let Ok(job) = jobs.get_timeout(std::time::Duration::from_millis(200)) {
///         assert!(job < 3);
///         jobs.task_done().unwrap();
///     }
/// }
///
/// let manager = Manager::start()?;
/// let jobs = manager.joinable_queue::<u32>()?;
/// for job in 0..3 {
///     jobs.put(job)?;
/// }
/// let child = Process::spawn(worker, jobs.clone())?;
/// jobs.join()?; // returns once the child marked all three done
/// child.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JoinableQueueProxy<T> {
    queue: QueueProxy<T>,
}

impl<T> Clone for JoinableQueueProxy<T> {
    fn clone(&self) -> Self {
        JoinableQueueProxy {
            queue: self.queue.clone(),
        }
    }
}

impl<T> std::fmt::Debug for JoinableQueueProxy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinableQueueProxy")
            .field("manager", self.queue.handle.link().address())
            .field("id", &self.queue.handle.id())
            .finish()
    }
}

impl<T> Serialize for JoinableQueueProxy<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> serde::Deserialize<'de> for JoinableQueueProxy<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(JoinableQueueProxy {
            queue: QueueProxy::deserialize(d)?,
        })
    }
}

impl<T> AsRef<QueueProxy<T>> for JoinableQueueProxy<T> {
    /// The queue proxy underneath, for code written for a [`QueueProxy`].
    fn as_ref(&self) -> &QueueProxy<T> {
        &self.queue
    }
}

/// The [`QueueProxy`] methods, each as [`QueueProxy`]'s of the same name.
impl<T: Serialize + DeserializeOwned> JoinableQueueProxy<T> {
    /// See [`QueueProxy::put`]; every item put must be marked done.
    pub fn put(&self, value: T) -> Result<(), PutError<T, ProxyError>> {
        self.queue.put(value)
    }

    /// See [`QueueProxy::put_timeout`].
    pub fn put_timeout(
        &self,
        value: T,
        timeout: Duration,
    ) -> Result<(), PutTimeoutError<T, ProxyError>> {
        self.queue.put_timeout(value, timeout)
    }

    /// See [`QueueProxy::try_put`].
    pub fn try_put(&self, value: T) -> Result<(), TryPutError<T, ProxyError>> {
        self.queue.try_put(value)
    }

    /// See [`QueueProxy::get`]; mark the item done with
    /// [`task_done`](Self::task_done).
    pub fn get(&self) -> Result<T, ProxyError> {
        self.queue.get()
    }

    /// See [`QueueProxy::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError<ProxyError>> {
        self.queue.get_timeout(timeout)
    }

    /// See [`QueueProxy::try_get`].
    pub fn try_get(&self) -> Result<T, TryGetError<ProxyError>> {
        self.queue.try_get()
    }

    /// See [`QueueProxy::get_async`].
    pub fn get_async(&self) -> impl Future<Output = Result<T, ProxyError>> + Send + use<T> {
        self.queue.get_async()
    }

    /// See [`QueueProxy::put_async`].
    pub fn put_async(
        &self,
        value: T,
    ) -> impl Future<Output = Result<(), PutError<T, ProxyError>>> + Send + use<T>
    where
        T: Send + 'static,
    {
        self.queue.put_async(value)
    }

    /// See [`QueueProxy::len`].
    pub fn len(&self) -> Result<usize, ProxyError> {
        self.queue.len()
    }

    /// See [`QueueProxy::is_empty`].
    pub fn is_empty(&self) -> Result<bool, ProxyError> {
        self.queue.is_empty()
    }

    /// See [`QueueProxy::is_full`].
    pub fn is_full(&self) -> Result<bool, ProxyError> {
        self.queue.is_full()
    }
}

impl<T> JoinableQueueProxy<T> {
    pub(crate) fn from_handle(handle: Handle) -> Self {
        JoinableQueueProxy {
            queue: QueueProxy::from_handle(handle),
        }
    }

    /// Marks one item taken from the queue as finished; more calls than
    /// items put is
    /// [`RemoteError::TaskDoneTooOften`](crate::RemoteError::TaskDoneTooOften).
    pub fn task_done(&self) -> Result<(), ProxyError> {
        unit(self.queue.handle.call(Op::Queue(QueueOp::TaskDone))?)
    }

    /// [`join`](Self::join), as a future (see `docs/async.md`): the wait
    /// runs on a waiter thread in slices of at most 100 ms on the server.
    /// Dropping the future changes nothing.
    pub fn join_async(&self) -> impl Future<Output = Result<(), ProxyError>> + Send + use<T> {
        let done = super::sliced(
            &self.queue.handle,
            |h, ms| match h.call(Op::Queue(QueueOp::Join(ms))) {
                Ok(Payload::Bool(false)) => None,
                other => Some(other),
            },
            |_, _| {},
        );
        async move { boolean(done.await?).map(drop) }
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) -> Result<(), ProxyError> {
        boolean(self.queue.handle.call(Op::Queue(QueueOp::Join(None)))?).map(drop)
    }

    /// Waits at most `timeout` until every item put has been marked done;
    /// whether they all were.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, ProxyError> {
        boolean(
            self.queue
                .handle
                .call(Op::Queue(QueueOp::Join(Some(millis(timeout)))))?,
        )
    }
}
