//! A connection whose typed messages are Python pickles, for a CPython
//! peer that calls `conn.send(obj)` and `conn.recv()`.

use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Connection, RecvError, RecvTimeoutError, SendError, TryRecvError};
use crate::wire::EncodeError;
use crate::wire::pickle::{
    PickleError, from_pickle, to_pickle, value_from_pickle, value_to_pickle,
};

/// A connection that sends `S` and receives `R` as Python pickles: what
/// CPython's `Connection.send(obj)` and `recv()` exchange. Made from any
/// [`Connection`] (usually one accepted by a [`Listener`](crate::Listener)
/// from, or made by a [`Client`](crate::Client) to, a Python program) with
/// [`Connection::into_pickle`].
///
/// A received pickle is never run: it is checked first
/// ([`multiproc::pickle`](crate::pickle)), and one that names or calls
/// code (a class, a function, `os.system`...) is refused with
/// [`RecvError::Pickle`] naming the opcode; the connection stays usable.
/// Dicts become maps or structs, lists and tuples sequences, `None` an
/// `Option`'s `None`; see the README's type mapping.
///
/// ```no_run
/// use std::collections::BTreeMap;
///
/// use multiproc::{Address, Connection, Listener};
///
/// let address: Address = "/tmp/work.sock".parse()?;
/// let mut listener = Listener::bind(&address, Some(b"key"))?;
/// let conn: Connection = listener.accept()?;
/// let conn = conn.into_pickle::<BTreeMap<String, f64>, BTreeMap<String, f64>>();
/// // Python: conn.send({"x": 1.5}); print(conn.recv())
/// let mut job = conn.recv()?;
/// job.insert("done".to_string(), 1.0);
/// conn.send(&job)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PickleConnection<S, R> {
    inner: Connection,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> std::fmt::Debug for PickleConnection<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PickleConnection")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, R> Connection<S, R> {
    /// This connection, sending `S2` and receiving `R2` as pickles (see
    /// [`PickleConnection`]).
    pub fn into_pickle<S2, R2>(self) -> PickleConnection<S2, R2> {
        PickleConnection {
            inner: Connection {
                link: self.link,
                readable: self.readable,
                writable: self.writable,
                _types: PhantomData,
            },
            _types: PhantomData,
        }
    }
}

impl<S, R> PickleConnection<S, R> {
    /// The connection underneath, for bytes (`send_bytes`, `recv_bytes`).
    pub fn into_inner(self) -> Connection {
        self.inner
    }

    /// The connection underneath, borrowed.
    pub fn get_ref(&self) -> &Connection {
        &self.inner
    }

    /// Whether a message is waiting; waits up to `timeout` (see
    /// [`Connection::poll`]).
    pub fn poll(&self, timeout: Option<Duration>) -> std::io::Result<bool> {
        self.inner.poll(timeout)
    }
}

impl<S, R> PickleConnection<S, R> {
    /// Sends a value of any shape (see [`crate::pickle::Value`]): tuples,
    /// sets and big integers arrive as what they are.
    pub fn send_value(&self, value: &serde_pickle::Value) -> Result<(), SendError> {
        let bytes = value_to_pickle(value).map_err(|e| EncodeError {
            type_name: "serde_pickle::Value",
            message: e.to_string(),
        })?;
        self.inner.send_bytes(&bytes)
    }

    /// Receives a pickle of any shape as a [`crate::pickle::Value`] (after
    /// the same checks as [`recv`](Self::recv)).
    pub fn recv_value(&self) -> Result<serde_pickle::Value, RecvError> {
        let bytes = self.inner.recv_bytes()?;
        value_from_pickle(&bytes).map_err(RecvError::Pickle)
    }
}

impl<S: Serialize, R> PickleConnection<S, R> {
    /// Sends `value` as a protocol 3 pickle, which CPython's `recv()` loads
    /// into plain Python values (no class is imported or called).
    pub fn send(&self, value: &S) -> Result<(), SendError> {
        let bytes = to_pickle(value).map_err(|e| match e {
            PickleError::Value { type_name, message } => EncodeError { type_name, message },
            other => EncodeError {
                type_name: std::any::type_name::<S>(),
                message: other.to_string(),
            },
        })?;
        self.inner.send_bytes(&bytes)
    }
}

impl<S, R: DeserializeOwned> PickleConnection<S, R> {
    /// Receives a pickle and decodes it as an `R`, waiting as long as it
    /// takes. A refused or undecodable pickle is [`RecvError::Pickle`], and
    /// the connection stays usable.
    pub fn recv(&self) -> Result<R, RecvError> {
        let bytes = self.inner.recv_bytes()?;
        from_pickle(&bytes).map_err(RecvError::Pickle)
    }

    /// [`recv`](Self::recv), waiting at most `timeout` for a message to
    /// begin.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R, RecvTimeoutError> {
        if !self.inner.readable {
            return Err(RecvError::WriteOnly.into());
        }
        let msg = self.inner.link.recv(
            crate::shm::wait::after(timeout),
            self.inner.link.max_message(),
            false,
        )?;
        Ok(from_pickle(&msg.payload).map_err(RecvError::Pickle)?)
    }

    /// Receives a value if one is waiting, without blocking.
    pub fn try_recv(&self) -> Result<R, TryRecvError> {
        match self.recv_timeout(Duration::ZERO) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(TryRecvError::Empty),
            Err(RecvTimeoutError::Recv(e)) => Err(TryRecvError::Recv(e)),
        }
    }
}
