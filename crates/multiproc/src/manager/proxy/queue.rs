//! [`QueueProxy`]: a queue hosted by the manager (Python:
//! `Manager().Queue()`).

use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::error::{ProxyError, ProxyPutError, ProxyPutFailure};
use super::super::protocol::{Op, QueueOp, TimeoutMs};
use super::{Handle, boolean, count, enc, maybe, millis, proxy_type};

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
/// assert_eq!(q.try_get()?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct QueueProxy<T> {
    handle: Handle,
    _types: PhantomData<fn() -> T>,
}

proxy_type!(QueueProxy<T>);

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    fn put_within(&self, value: T, timeout: TimeoutMs) -> Result<(), ProxyPutError<T>> {
        let sent = enc(&value)
            .and_then(|b| boolean(self.handle.call(Op::Queue(QueueOp::Put(b, timeout)))?));
        match sent {
            Ok(true) => Ok(()),
            Ok(false) => Err(ProxyPutError {
                value,
                reason: ProxyPutFailure::Full,
            }),
            Err(e) => Err(ProxyPutError {
                value,
                reason: e.into(),
            }),
        }
    }

    /// Puts a value, waiting while a bounded queue is full.
    pub fn put(&self, value: T) -> Result<(), ProxyPutError<T>> {
        self.put_within(value, None)
    }

    /// Puts a value unless the queue stays full for `timeout`.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), ProxyPutError<T>> {
        self.put_within(value, Some(millis(timeout)))
    }

    /// Puts a value if there is room now.
    pub fn try_put(&self, value: T) -> Result<(), ProxyPutError<T>> {
        self.put_within(value, Some(0))
    }

    /// Takes the oldest value, waiting for one.
    pub fn get(&self) -> Result<T, ProxyError> {
        maybe(self.handle.call(Op::Queue(QueueOp::Get(None)))?)?
            .ok_or_else(|| ProxyError::Protocol("an unbounded get came back empty".into()))
    }

    /// Takes the oldest value if one comes within `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<T>, ProxyError> {
        maybe(
            self.handle
                .call(Op::Queue(QueueOp::Get(Some(millis(timeout)))))?,
        )
    }

    /// Takes the oldest value if there is one now.
    pub fn try_get(&self) -> Result<Option<T>, ProxyError> {
        maybe(self.handle.call(Op::Queue(QueueOp::Get(Some(0))))?)
    }

    /// The number of values waiting.
    pub fn len(&self) -> Result<usize, ProxyError> {
        count(self.handle.call(Op::Queue(QueueOp::Len))?)
    }

    /// Whether no value is waiting.
    pub fn is_empty(&self) -> Result<bool, ProxyError> {
        Ok(self.len()? == 0)
    }
}
