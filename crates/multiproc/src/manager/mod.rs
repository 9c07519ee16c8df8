//! The manager: a server process that holds shared objects (dicts, lists,
//! namespaces, queues, locks, ..., and user types) which other processes
//! use through typed proxies (Python's `multiprocessing.Manager`,
//! `SyncManager` and `BaseManager`).
//!
//! * this file: [`Manager`] (start, connect, make objects, shut down) and
//!   [`ManagerBuilder`];
//! * [`server`]: the server process: accept loop, one thread per client,
//!   the object table and the objects;
//! * [`client`]: a process's link to a manager, with a pool of sessions;
//! * [`transport`]: how a session carries messages: socket frames, or a
//!   pair of shared-memory queues for local clients;
//! * [`protocol`]: the messages; `docs/manager-protocol.md` explains them;
//! * [`proxy`]: the typed proxies, one file per kind of object;
//! * [`registry`]: user-defined shared types;
//! * [`error`]: one error family per operation.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) mod client;
pub(crate) mod error;
pub(crate) mod protocol;
pub(crate) mod proxy;
pub(crate) mod registry;
pub(crate) mod server;
pub(crate) mod transport;

pub use error::{ProxyError, RemoteError, ShutdownError, StartManagerError};
pub use proxy::array::ArrayProxy;
pub use proxy::dict::DictProxy;
pub use proxy::list::ListProxy;
pub use proxy::namespace::NamespaceProxy;
pub use proxy::object::ObjectProxy;
pub use proxy::pool::{PoolProxy, PoolProxyBuilder};
pub use proxy::queue::{JoinableQueueProxy, QueueProxy};
pub use proxy::sync::{
    BarrierProxy, ConditionProxy, EventProxy, LockProxy, ProxyConditionGuard, ProxyLockGuard,
    SemaphoreProxy,
};
pub use proxy::value::ValueProxy;
pub use registry::{Registered, Registry, SharedObject};

use crate::connection::{Address, Connection, pipe};
use crate::process::{JoinTimeoutError, Process, StartMethod};
use client::Link;
use protocol::{Blob, Kind, WireAddress};
use proxy::{Handle, enc};
use server::{Control, ServerArgs, Status};

/// The longest request a manager accepts unless told otherwise: 64 MiB.
pub const DEFAULT_MAX_REQUEST: u64 = 64 << 20;

/// How long [`ManagerBuilder::start`] waits for the server to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Manager::shutdown`] (and drop) waits for the server to exit
/// before it kills it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A manager: a server process holding shared objects, and the way to make
/// them (Python: `multiprocessing.Manager()`).
///
/// [`Manager::start`] starts a server (a child process, under any start
/// method) listening on a fresh Unix socket with a random auth key;
/// [`ManagerBuilder`] picks another address, TCP, a start method, and
/// user-defined types. The methods [`dict`](Self::dict),
/// [`list`](Self::list), ... make objects on the server and return proxies.
/// A proxy is an ordinary argument for [`Process::spawn`]: the child
/// reconnects to the manager by its address and key.
///
/// Dropping the `Manager` that started the server shuts the server down,
/// in bounded time; every proxy call after that fails with an error, it
/// never hangs. A `Manager` from [`connect`](Self::connect) only
/// disconnects.
///
/// ```
/// use multiproc::{DictProxy, Manager, Process};
///
/// fn count_words((text, counts): (String, DictProxy<String, u32>)) {
///     for word in text.split_whitespace() {
///         let n = counts.get(word).unwrap().unwrap_or(0);
///         counts.insert(word.to_string(), n + 1).unwrap();
///     }
/// }
///
/// let manager = Manager::start()?;
/// let counts = manager.dict::<String, u32>()?;
/// let child = Process::spawn(count_words, ("to be or not to be".to_string(), counts.clone()))?;
/// child.join()?;
/// assert_eq!(counts.get("be")?, Some(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Manager {
    link: Arc<Link>,
    server: Option<Process<()>>,
    control: Option<Connection<Control, Status>>,
    /// The process that made this `Manager`: a copy in a forked child
    /// (a `Process::fork` closure) must not stop the server.
    owner: u32,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("address", self.link.address())
            .field("server_pid", &self.server.as_ref().map(Process::pid))
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Starts a manager with the defaults: a fresh Unix socket, a random
    /// auth key, the default start method, no user types.
    pub fn start() -> Result<Manager, StartManagerError> {
        ManagerBuilder::new().start()
    }

    /// A builder to choose the address, auth key, start method and user
    /// types.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::new()
    }

    /// Connects to a running manager (Python: `BaseManager(address,
    /// authkey).connect()`). Dropping the result does not stop the server.
    pub fn connect(address: &Address, authkey: &[u8]) -> Result<Manager, StartManagerError> {
        let link = Link::shared(&WireAddress::from(address), authkey);
        link.connect_now().map_err(|e| match e {
            error::ProxyError::Connect(e) => StartManagerError::Connect(e),
            other => StartManagerError::NotAManager(other.to_string()),
        })?;
        Ok(Manager {
            link,
            server: None,
            control: None,
            owner: std::process::id(),
        })
    }

    /// The address the server listens on: give it, with the
    /// [`authkey`](Self::authkey), to [`connect`](Self::connect).
    pub fn address(&self) -> &Address {
        self.link.address()
    }

    /// The auth key clients must hold.
    pub fn authkey(&self) -> &[u8] {
        self.link.authkey()
    }

    /// The server's process id, if this `Manager` started it.
    pub fn server_pid(&self) -> Option<i32> {
        self.server.as_ref().map(Process::pid)
    }

    fn make(&self, kind: Kind) -> Result<Handle, ProxyError> {
        Handle::create(&self.link, kind)
    }

    /// A new, empty dict (Python: `manager.dict()`).
    pub fn dict<K, V>(&self) -> Result<DictProxy<K, V>, ProxyError> {
        Ok(DictProxy::from_handle(self.make(Kind::Dict)?))
    }

    /// A new, empty list (Python: `manager.list()`).
    pub fn list<T>(&self) -> Result<ListProxy<T>, ProxyError> {
        Ok(ListProxy::from_handle(self.make(Kind::List)?))
    }

    /// A new array of the given items, whose length never changes (Python:
    /// `manager.Array(typecode, sequence)`).
    pub fn array<T: Serialize + DeserializeOwned>(
        &self,
        items: impl IntoIterator<Item = T>,
    ) -> Result<ArrayProxy<T>, ProxyError> {
        let items = items
            .into_iter()
            .map(|i| enc(&i))
            .collect::<Result<_, _>>()?;
        Ok(ArrayProxy::from_handle(self.make(Kind::Array(items))?))
    }

    /// A new, empty namespace (Python: `manager.Namespace()`).
    pub fn namespace(&self) -> Result<NamespaceProxy, ProxyError> {
        Ok(NamespaceProxy::from_handle(self.make(Kind::Namespace)?))
    }

    /// A new, unbounded queue (Python: `manager.Queue()`).
    pub fn queue<T>(&self) -> Result<QueueProxy<T>, ProxyError> {
        self.bounded_queue(0)
    }

    /// A new queue of at most `max_items` values (0: no bound; Python:
    /// `manager.Queue(maxsize)`).
    pub fn bounded_queue<T>(&self, max_items: u64) -> Result<QueueProxy<T>, ProxyError> {
        Ok(QueueProxy::from_handle(
            self.make(Kind::Queue { max_items })?,
        ))
    }

    /// A new, unbounded joinable queue (Python:
    /// `manager.JoinableQueue()`).
    pub fn joinable_queue<T>(&self) -> Result<JoinableQueueProxy<T>, ProxyError> {
        self.bounded_joinable_queue(0)
    }

    /// A new joinable queue of at most `max_items` values (0: no bound;
    /// Python: `manager.JoinableQueue(maxsize)`).
    pub fn bounded_joinable_queue<T>(
        &self,
        max_items: u64,
    ) -> Result<JoinableQueueProxy<T>, ProxyError> {
        Ok(JoinableQueueProxy::from_handle(
            self.make(Kind::JoinableQueue { max_items })?,
        ))
    }

    /// A new lock (Python: `manager.Lock()`).
    pub fn lock(&self) -> Result<LockProxy, ProxyError> {
        Ok(LockProxy::from_handle(
            self.make(Kind::Lock { reentrant: false })?,
        ))
    }

    /// A new reentrant lock: its holder may acquire it again (Python:
    /// `manager.RLock()`).
    pub fn rlock(&self) -> Result<LockProxy, ProxyError> {
        Ok(LockProxy::from_handle(
            self.make(Kind::Lock { reentrant: true })?,
        ))
    }

    /// A new condition over its own reentrant lock (Python:
    /// `manager.Condition()`).
    pub fn condition(&self) -> Result<ConditionProxy, ProxyError> {
        Ok(ConditionProxy::from_handle(
            self.make(Kind::Condition { lock: None })?,
        ))
    }

    /// A new condition over `lock`, a lock of this manager (Python:
    /// `manager.Condition(lock)`): acquiring either acquires the same
    /// lock. A lock of another manager is
    /// [`RemoteError::BadArgument`].
    pub fn condition_with(&self, lock: &LockProxy) -> Result<ConditionProxy, ProxyError> {
        let theirs = lock.handle_link();
        if theirs.wire_address() != self.link.wire_address() || theirs.authkey() != self.authkey() {
            return Err(
                RemoteError::BadArgument("the lock belongs to another manager".into()).into(),
            );
        }
        Ok(ConditionProxy::from_handle(self.make(Kind::Condition {
            lock: Some(lock.id()),
        })?))
    }

    /// A new semaphore of `value` units (Python: `manager.Semaphore(value)`).
    pub fn semaphore(&self, value: u32) -> Result<SemaphoreProxy, ProxyError> {
        Ok(SemaphoreProxy::from_handle(self.make(Kind::Semaphore {
            value: u64::from(value),
            bounded: false,
        })?))
    }

    /// A new semaphore of `value` units that refuses to be released past
    /// `value` (Python: `manager.BoundedSemaphore(value)`).
    pub fn bounded_semaphore(&self, value: u32) -> Result<SemaphoreProxy, ProxyError> {
        Ok(SemaphoreProxy::from_handle(self.make(Kind::Semaphore {
            value: u64::from(value),
            bounded: true,
        })?))
    }

    /// A new event, not set (Python: `manager.Event()`).
    pub fn event(&self) -> Result<EventProxy, ProxyError> {
        Ok(EventProxy::from_handle(self.make(Kind::Event)?))
    }

    /// A new value (Python: `manager.Value(typecode, value)`).
    pub fn value<T: Serialize + DeserializeOwned>(
        &self,
        initial: T,
    ) -> Result<ValueProxy<T>, ProxyError> {
        Ok(ValueProxy::from_handle(
            self.make(Kind::Value(enc(&initial)?))?,
        ))
    }

    /// A new barrier for `parties` parties (Python: `manager.Barrier(n)`).
    pub fn barrier(&self, parties: u32) -> Result<BarrierProxy, ProxyError> {
        Ok(BarrierProxy::from_handle(
            self.make(Kind::Barrier { parties })?,
        ))
    }

    /// A new pool of `workers` processes in the server (Python:
    /// `manager.Pool(workers)`), for every process that holds a proxy of
    /// it. Its functions must be marked `#[multiproc::task]`: see
    /// [`PoolProxy`].
    pub fn pool(&self, workers: usize) -> Result<PoolProxy, ProxyError> {
        self.pool_builder().workers(workers).build()
    }

    /// A builder for a pool in the server with other settings (start
    /// method, timeout, ...).
    pub fn pool_builder(&self) -> PoolProxyBuilder<'_> {
        PoolProxyBuilder::new(&self.link)
    }

    /// A new object of the user type registered as `name` (see
    /// [`ManagerBuilder::register`]), made on the server from `init`.
    pub fn create<T: SharedObject>(
        &self,
        name: &str,
        init: T::Init,
    ) -> Result<ObjectProxy<T>, ProxyError> {
        Ok(ObjectProxy::from_handle(self.make(Kind::User {
            name: name.to_string(),
            type_name: std::any::type_name::<T>().to_string(),
            init: enc(&init)?,
        })?))
    }

    /// Stops the server and waits for it to exit (at most a few seconds:
    /// then it is killed). Every proxy call afterwards fails. A `Manager`
    /// from [`connect`](Self::connect) only closes its connections.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ShutdownError> {
        if self.owner != std::process::id() {
            // A forked copy: the server and its handle are the parent's.
            std::mem::forget(self.server.take());
            std::mem::forget(self.control.take());
            return Ok(());
        }
        self.link.close_idle();
        if let Some(control) = self.control.take() {
            let _ = control.send(&Control::Shutdown);
        }
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        let outcome = match server.join_timeout(SHUTDOWN_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(JoinTimeoutError::Timeout(server)) => {
                // Dropping a daemon's handle kills and reaps it.
                drop(server);
                Err(ShutdownError::Killed)
            }
            Err(JoinTimeoutError::Failed(e)) => Err(ShutdownError::Failed(e)),
        };
        // A server that did not exit cleanly left its socket file behind.
        if let Address::Unix(path) = self.link.address() {
            let _ = std::fs::remove_file(path);
        }
        outcome
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Configures a [`Manager`] before starting it. `R` lists the registered
/// user types (see [`register`](Self::register)).
///
/// ```
/// use multiproc::{Manager, StartMethod};
///
/// let manager = Manager::builder()
///     .start_method(StartMethod::Spawn)
///     .tcp("127.0.0.1:0".parse()?, b"a secret key")
///     .start()?;
/// let list = manager.list::<u8>()?;
/// list.extend([1, 2, 3])?;
///
/// // Another program connects with the address and the key.
/// let other = Manager::connect(manager.address(), b"a secret key")?;
/// let again = other.list::<u8>()?;
/// assert!(again.is_empty()?);
/// assert_eq!(list.len()?, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until `start` is called"]
pub struct ManagerBuilder<R = ()> {
    method: Option<StartMethod>,
    address: Option<Address>,
    authkey: Option<Vec<u8>>,
    names: Vec<String>,
    max_request: u64,
    _registry: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for ManagerBuilder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("method", &self.method)
            .field("address", &self.address)
            .field("types", &self.names)
            .field("max_request", &self.max_request)
            .finish_non_exhaustive()
    }
}

impl Default for ManagerBuilder {
    fn default() -> Self {
        ManagerBuilder::new()
    }
}

impl ManagerBuilder {
    /// The defaults: a fresh Unix socket, a random auth key, the default
    /// start method, no user types.
    pub fn new() -> Self {
        ManagerBuilder {
            method: None,
            address: None,
            authkey: None,
            names: Vec::new(),
            max_request: DEFAULT_MAX_REQUEST,
            _registry: PhantomData,
        }
    }
}

impl<R: Registry> ManagerBuilder<R> {
    /// How the server process is started (default: the default start
    /// method).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Listens on a Unix socket at `path` (default: a fresh path in the
    /// temporary directory). The file is removed at shutdown.
    pub fn unix(mut self, path: impl Into<PathBuf>) -> Self {
        self.address = Some(Address::Unix(path.into()));
        self
    }

    /// Listens on an abstract Unix socket named `name` (Python's
    /// `BaseManager(address='\0name')`; see [`Address::Abstract`]): no
    /// file to remove, the name is freed when the server exits, however
    /// it ends. Local clients use shared memory, as on a socket path.
    /// Every process of the network namespace can connect: the auth key
    /// (random by default) is what keeps others out.
    ///
    /// ```
    /// use multiproc::{Address, Manager};
    ///
    /// let name = format!("multiproc-doc-manager-{}", std::process::id());
    /// let manager = Manager::builder().unix_abstract(name.as_bytes()).start()?;
    /// assert_eq!(manager.address(), &Address::Abstract(name.into_bytes()));
    /// let d = manager.dict::<String, u32>()?;
    /// d.insert("a".into(), 1)?;
    /// assert_eq!(d.get("a")?, Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unix_abstract(mut self, name: impl Into<Vec<u8>>) -> Self {
        self.address = Some(Address::Abstract(name.into()));
        self
    }

    /// Listens on TCP at `address` (port 0 picks a free port) and requires
    /// `authkey` of every client: TCP never goes without a key. Clients on
    /// TCP use the socket path, not shared memory.
    pub fn tcp(mut self, address: SocketAddr, authkey: &[u8]) -> Self {
        self.address = Some(Address::Tcp(address));
        self.authkey = Some(authkey.to_vec());
        self
    }

    /// The auth key clients must hold (default: 32 random bytes).
    pub fn authkey(mut self, authkey: &[u8]) -> Self {
        self.authkey = Some(authkey.to_vec());
        self
    }

    /// The longest request the server accepts (default
    /// [`DEFAULT_MAX_REQUEST`]); longer ones get
    /// [`RemoteError::TooLarge`], or fail before they are sent.
    pub fn max_request_size(mut self, bytes: u64) -> Self {
        self.max_request = bytes;
        self
    }

    /// Registers the user type `T` under `name`: clients make objects of
    /// it with [`Manager::create`] and call them through an
    /// [`ObjectProxy`]. The registration is recorded in the builder's type,
    /// so a server started with *spawn* (a fresh run of this executable)
    /// knows `T` too.
    pub fn register<T: SharedObject>(self, name: &str) -> ManagerBuilder<(Registered<T>, R)> {
        let mut names = self.names;
        names.push(name.to_string());
        ManagerBuilder {
            method: self.method,
            address: self.address,
            authkey: self.authkey,
            names,
            max_request: self.max_request,
            _registry: PhantomData,
        }
    }

    /// Starts the server and waits until it listens.
    pub fn start(self) -> Result<Manager, StartManagerError> {
        for (i, name) in self.names.iter().enumerate() {
            if self.names[..i].contains(name) {
                return Err(StartManagerError::DuplicateName(name.clone()));
            }
        }
        let authkey = match self.authkey {
            Some(key) if key.is_empty() => return Err(StartManagerError::EmptyAuthKey),
            Some(key) => key,
            None => {
                let mut key = vec![0u8; 32];
                getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
                key
            }
        };
        let address = self.address.unwrap_or_else(fresh_socket_path);
        let (ours, theirs) = pipe::<Control, Status>()?;
        let args = ServerArgs {
            address: WireAddress::from(&address),
            authkey: Blob(authkey.clone()),
            names: self.names,
            limit: self.max_request,
            control: theirs,
        };
        let mut builder = Process::builder().name("multiproc-manager").daemon(true);
        if let Some(method) = self.method {
            builder = builder.start_method(method);
        }
        let server = builder.spawn(server::serve::<R>, args)?;
        let bound = match ours.recv_timeout(READY_TIMEOUT) {
            Ok(Status::Ready(bound)) => bound,
            Ok(Status::Failed(why)) => return Err(StartManagerError::Bind(why)),
            Err(e) => {
                // Dropping the daemon's handle kills and reaps it.
                drop(server);
                return Err(StartManagerError::Died(e.to_string()));
            }
        };
        Ok(Manager {
            link: Link::shared(&bound, &authkey),
            server: Some(server),
            control: Some(ours),
            owner: std::process::id(),
        })
    }
}

/// A fresh socket path in the temporary directory.
fn fresh_socket_path() -> Address {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut salt = [0u8; 4];
    let _ = getrandom::fill(&mut salt);
    Address::Unix(std::env::temp_dir().join(format!(
        "multiproc-manager-{}-{n}-{:08x}.sock",
        std::process::id(),
        u32::from_le_bytes(salt)
    )))
}
