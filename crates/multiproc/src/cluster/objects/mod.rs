//! Named objects on the cluster's server: a [`Queue`] (and
//! [`JoinableQueue`]) from [`Cluster::queue`], and from
//! [`Cluster::manager`] a dict, a list, a namespace, a value, a lease
//! lock, a semaphore, an event and a barrier.
//!
//! Each object is a name in the cluster's namespace: every process, on
//! any machine, that builds an object of the same kind and name from a
//! [`Cluster`] on the same server and namespace attaches to the same
//! object. Nothing is held in the process: a handle is the name, the
//! types, and connections to the server (one per thread using the handle
//! at once, kept for reuse). Values are encoded with multiproc's codec
//! (postcard over serde), as the local manager encodes them.
//!
//! Methods are named as the local manager's proxies' and the local
//! [`Queue`](crate::Queue)'s, so code moves between them with the line
//! that builds the object changed; every method returns
//! [`ClusterError`] where the local one cannot fail or returns its own
//! error. Each operation is one round trip (several steps are one Lua
//! script, atomic on the server); blocking calls wait on the server
//! (`BLPOP` on a wake-up list) and re-check every 100 ms as a backstop.
//!
//! # Deadlines
//!
//! Every call returns within its deadline plus a grace of 2 s, whatever
//! the server does: a server that is killed or restarted under a blocked
//! call is [`ClusterError::Connection`] at once, one that stalls is
//! [`ClusterError::Timeout`] at the deadline plus the grace. A call
//! without a deadline (`get`, `put`, `lock`, `acquire`, `wait`, `join`) waits on
//! the server in slices of 2 s, so a stalled server ends it within 4 s. A
//! command that answers at once (`len`, a dict's `get`) waits at most
//! 5 s. A call that ends in `Connection` or `Timeout` may or may not have
//! taken effect on the server (a put may have been queued; a get may
//! have taken a value that is then lost).
//!
//! `docs/cluster.md` ("Named objects") lists every difference from the
//! local objects.

mod dict;
mod list;
mod lock;
mod manager;
mod namespace;
mod queue;
mod sync;
mod value;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::link::{INTERRUPTED, IO_TIMEOUT};
use super::{Cluster, ClusterError, Link};
use crate::wire::codec;

/// How long one slice of an async wait holds the server (see [`sliced`]).
const ASYNC_SLICE: Duration = Duration::from_millis(100);

/// An async wait on the cluster (the local objects' scheme, docs/async.md):
/// each slice makes one blocking call of at most [`ASYNC_SLICE`] on a
/// waiter thread, so no executor thread ever blocks; `Some` ends the
/// future. If the future is dropped while a call is in flight, `undo` gets
/// that call's result on the waiter thread (to give back what it took).
pub(crate) fn sliced<T, S, U>(
    slice: S,
    undo: U,
) -> impl std::future::Future<Output = T> + Send + use<T, S, U>
where
    T: Send + 'static,
    S: Fn(Duration) -> Option<T> + Send + Sync + 'static,
    U: Fn(T) + Send + Sync + 'static,
{
    crate::aio::sliced(move || slice(ASYNC_SLICE), undo)
}

pub use dict::DictProxy;
pub use list::ListProxy;
pub use lock::{DEFAULT_LEASE, LockGuard, LockProxy};
pub use manager::Manager;
pub use namespace::NamespaceProxy;
pub use queue::{
    GetTimeoutError, JoinableQueue, PutError, PutTimeoutError, Queue, QueueBuilder, TryGetError,
    TryPutError,
};
pub use sync::{BarrierProxy, EventProxy, SemaphoreProxy};
pub use value::{Number, ValueProxy};

/// How late past its deadline a call may answer when the server stalls.
const GRACE: Duration = Duration::from_secs(2);

/// The longest the server holds one blocking command of a call without a
/// deadline: how soon such a call notices a stalled server (plus
/// [`GRACE`]).
const SLICE: Duration = Duration::from_secs(2);

/// How often a waiter re-checks what it waits for, in case its wake-up
/// was lost (a waker that died between its change and the wake-up, a
/// lease that simply ran out).
const BACKSTOP: Duration = Duration::from_millis(100);

/// Wake-up lists keep at most this many tokens.
const MAX_TOKENS: i64 = 16;

/// The connections of one object's handles (shared by its clones): one
/// per thread using it at once, kept for the next call.
pub(crate) struct Links {
    cluster: Cluster,
    idle: Mutex<Vec<Link>>,
}

/// Connections kept idle per object.
const KEEP_IDLE: usize = 4;

impl Links {
    pub(crate) fn new(cluster: &Cluster) -> Arc<Links> {
        Arc::new(Links {
            cluster: cluster.clone(),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` on a connection of this object's (a new one if all are in
    /// use).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Link) -> R) -> R {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut link = taken.unwrap_or_else(|| self.cluster.link());
        let r = f(&mut link);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP_IDLE {
            idle.push(link);
        }
        r
    }

    /// The cluster the object lives in.
    pub(crate) fn cluster(&self) -> &Cluster {
        &self.cluster
    }
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("url", &self.cluster.url())
            .field("namespace", &self.cluster.namespace_name())
            .finish()
    }
}

/// The key of object `name` of kind `kind` (a tag without `:`): the name
/// comes last, so that no name of one object can make the key of
/// another's part (names may hold `:`).
pub(crate) fn object_key(cluster: &Cluster, kind: &str, name: &str) -> String {
    debug_assert!(!kind.contains(':'));
    cluster.key(&format!("{kind}:{name}"))
}

/// When a call gives up; `None` for never.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    pub(crate) fn never() -> Deadline {
        Deadline(None)
    }

    pub(crate) fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now().checked_add(timeout))
    }

    pub(crate) fn now() -> Deadline {
        Deadline(Some(Instant::now()))
    }

    fn remaining(&self) -> Option<Duration> {
        self.0
            .map(|end| end.saturating_duration_since(Instant::now()))
    }

    pub(crate) fn expired(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// How long the server may hold the next blocking command: the time
    /// left, at most `cap`, at least 1 ms.
    pub(crate) fn block(&self, cap: Duration) -> Duration {
        self.remaining()
            .map_or(cap, |r| r.min(cap))
            .max(Duration::from_millis(1))
    }

    /// How long a command that answers at once may take within this
    /// deadline.
    pub(crate) fn io(&self) -> Duration {
        self.remaining()
            .map_or(IO_TIMEOUT, |r| (r + GRACE).min(IO_TIMEOUT))
    }
}

/// A blocking command's timeout in seconds, as the server reads it: whole
/// milliseconds, rounded up, never 0 (which would mean forever).
fn seconds(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// `BLPOP key` held at most `block` on the server.
pub(crate) fn blpop(
    link: &mut Link,
    key: &str,
    block: Duration,
) -> Result<Option<Vec<u8>>, ClusterError> {
    /// A `BLPOP`'s answer: the key and the value.
    type Popped = Option<(Vec<u8>, Vec<u8>)>;
    let popped: Result<Popped, ClusterError> = link.run_within(
        redis::cmd("BLPOP").arg(key).arg(seconds(block)),
        block + GRACE,
    );
    match popped {
        Ok(popped) => Ok(popped.map(|(_, v)| v)),
        // A signal cut the wait short (the process was stopped and
        // continued, say): as far as this process knows, nothing came, and
        // every caller looks again. The connection was dropped, which ends
        // the wait on the server too (a value the server gave just before
        // is lost, as when a consumer dies).
        Err(ClusterError::Connection(m)) if m.starts_with(INTERRUPTED) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits on wake-up list `key` until a token comes or `block` passes;
/// whether a token came.
pub(crate) fn wait_wake(link: &mut Link, key: &str, block: Duration) -> Result<bool, ClusterError> {
    Ok(blpop(link, key, block)?.is_some())
}

/// Pushes one token on wake-up list `key` (keeping at most
/// [`MAX_TOKENS`]).
pub(crate) fn wake(link: &mut Link, key: &str, wait: Duration) -> Result<(), ClusterError> {
    static WAKE: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| script("wake(KEYS[1])\nreturn 1"));
    link.script_within::<i64>(&WAKE.key(key), wait).map(drop)
}

/// Encodes a value with the project's codec.
pub(crate) fn enc<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ClusterError> {
    Ok(codec::encode(value)?)
}

/// Decodes a value with the project's codec.
pub(crate) fn dec<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClusterError> {
    Ok(codec::decode(bytes)?)
}

/// Lua: the number in `v` (a field read with `HGET`/`GET`), `dflt` when
/// absent; anything else ends the script with a `WRONGTYPE` error
/// ([`ClusterError::Corrupted`]).
const LUA_NUM: &str = r#"
local function num(v, dflt, what)
  if not v then return dflt end
  local n = tonumber(v)
  if not n then
    error({err = 'WRONGTYPE ' .. what .. ' does not hold a number'})
  end
  return n
end
local function wake(key)
  redis.call('RPUSH', key, '1')
  redis.call('LTRIM', key, -MAX_TOKENS, -1)
end
"#;

/// A script with the helpers of [`LUA_NUM`] before `body`.
pub(crate) fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!(
        "local MAX_TOKENS = {MAX_TOKENS}\n{LUA_NUM}\n{body}"
    ))
}
