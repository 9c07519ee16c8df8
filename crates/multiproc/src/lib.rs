//! Python's `multiprocessing` for Rust: run code in other processes, each
//! with its own address space, in parallel on every core, isolated from the
//! program that started it.
//!
//! # Hello, world!
//!
//! ```
//! use multiproc::Process;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let child = Process::spawn(square, 7)?;
//! assert_eq!(child.join()?, 49);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The child is a separate process. Its argument and result travel as
//! typed values (serde with `postcard`), never as `pickle`-style code.
//!
//! # Start methods
//!
//! As in Python, a child is created in one of three ways ([`StartMethod`]):
//! *fork* copies the parent, *spawn* runs the executable again, and
//! *forkserver* (the default) asks a small single-threaded server to fork.
//! No setup is needed for any of them: a hook that runs before `main`
//! recognises a re-executed child and runs the requested function, so a
//! child never runs your `main` or a test harness.
//!
//! ```
//! use multiproc::{Process, StartMethod};
//!
//! fn add((a, b): (i32, i32)) -> i32 {
//!     a + b
//! }
//!
//! for method in StartMethod::ALL {
//!     let p = Process::builder().start_method(method).spawn(add, (2, 3))?;
//!     assert_eq!(p.join()?, 5);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Under *fork*, a closure can capture what it needs:
//!
//! ```
//! use multiproc::Process;
//!
//! let words = vec!["a", "bb", "ccc"];
//! let p = Process::fork(move || words.iter().map(|w| w.len()).sum::<usize>())?;
//! assert_eq!(p.join()?, 6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Failures are values
//!
//! A child that panics, is killed, or exits early does not take the parent
//! down; `join` says what happened:
//!
//! ```
//! use multiproc::{JoinError, Process};
//!
//! fn fail(_: ()) -> u32 {
//!     panic!("out of coffee")
//! }
//!
//! match Process::spawn(fail, ())?.join() {
//!     Err(JoinError::Panicked(report)) => assert_eq!(report.message, "out of coffee"),
//!     other => panic!("unexpected: {other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Two compiler errors you may meet first
//!
//! [`Process::spawn`], [`Pool::map`] and the other calls that run a
//! function in another process take a `fn` and one owned argument:
//!
//! - **"mismatched types: expected fn pointer, found closure"**, noted
//!   "closures can only be coerced to `fn` types if they do not capture any
//!   variables": the closure uses a variable of yours. The child is another
//!   process and cannot see it. Pass the value in the argument (a tuple for
//!   several: `Process::spawn(scale, (x, factor))`), or, under the fork
//!   start method only, use [`Process::fork`], whose closure may capture.
//! - **"implementation of `Deserialize` is not general enough"**: the
//!   function takes a borrowed argument (`&str`, `&[u8]`, a struct with a
//!   lifetime). The child decodes its argument from bytes that are gone
//!   when it returns: take an owned type instead (`String`, `Vec<u8>`).
//!
//! ```compile_fail
//! fn shout(s: &str) -> usize {
//!     s.len()
//! }
//! // error: implementation of `Deserialize` is not general enough
//! let _ = multiproc::Process::spawn(shout, "hi");
//! ```
//!
//! ```
//! fn shout(s: String) -> usize {
//!     s.len()
//! }
//! assert_eq!(multiproc::Process::spawn(shout, "hi".to_string())?.join()?, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Pipes
//!
//! [`pipe`] gives two connected [`Connection`]s; each sends and receives,
//! typed values or raw bytes. A connection is an ordinary argument: pass one
//! end to a child. The two ends talk through shared memory (a ring each
//! way): while both are busy, a message costs no system call, and a round
//! trip takes about a microsecond.
//!
//! ```
//! use multiproc::{Connection, Process, pipe};
//!
//! fn doubler(conn: Connection<u64, u64>) {
//!     while let Ok(x) = conn.recv() {
//!         conn.send(&(2 * x)).unwrap();
//!     }
//! }
//!
//! let (ours, theirs) = pipe::<u64, u64>()?;
//! let child = Process::spawn(doubler, theirs)?;
//! ours.send(&21)?;
//! assert_eq!(ours.recv()?, 42);
//! drop(ours);
//! child.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Listener`] and [`Client`] connect processes that did not start each
//! other, over a Unix socket or TCP, with an optional auth key. They speak
//! CPython's `multiprocessing.connection` protocol, so the other side may be
//! Python.
//!
//! A pipe end is not shared (Python lets several processes use one, at the
//! risk of mixing their messages): for many writers, [`pipe_shared`] gives
//! a [`SharedSender`] that any number of processes clone and use at once,
//! each message arriving whole.
//!
//! # Queues
//!
//! A [`Queue`] lives in shared memory: any number of processes put and get.
//! A put is an encode and a copy; nobody is woken unless somebody sleeps.
//!
//! ```
//! use multiproc::{Process, Queue};
//!
//! fn squares((jobs, results): (Queue<u64>, Queue<u64>)) {
//!     while let Ok(x) = jobs.get() {
//!         if x == 0 {
//!             break;
//!         }
//!         results.put(x * x).unwrap();
//!     }
//! }
//!
//! let (jobs, results) = (Queue::new()?, Queue::new()?);
//! let worker = Process::spawn(squares, (jobs.clone(), results.clone()))?;
//! for x in [3, 4, 0] {
//!     jobs.put(x)?;
//! }
//! assert_eq!((results.get()?, results.get()?), (9, 16));
//! worker.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`SimpleQueue`] is the minimal variant; [`JoinableQueue`] adds
//! `task_done` and `join`.
//!
//! # Synchronisation and shared state
//!
//! [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`],
//! [`Condition`] and [`Barrier`] work across processes, on futexes in
//! shared memory; [`Value`] and [`Array`] hold plain data with a lock, and
//! [`SharedMemory`] is a raw block, [`ShareableList`] a fixed-length list
//! of numbers and short strings. A block or a list can be given a name
//! ([`SharedMemory::create_named`]) that any process of the same user
//! attaches by, and that disappears with its creator, leaving nothing in
//! `/dev/shm`. A lock whose holder died is recovered, and the next holder
//! is told ([`OwnerDied`]).
//!
//! ```
//! use multiproc::{Process, Value};
//!
//! fn deposit(balance: Value<i64>) {
//!     for _ in 0..100 {
//!         *balance.get_lock().unwrap() += 1;
//!     }
//! }
//!
//! let balance = Value::new(0i64)?;
//! let children: Vec<_> = (0..2).map(|_| Process::spawn(deposit, balance.clone())).collect::<Result<_, _>>()?;
//! for c in children {
//!     c.join()?;
//! }
//! assert_eq!(balance.get(), 200);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Managers
//!
//! A [`Manager`] is a server process that holds shared objects: a dict
//! ([`DictProxy`]), a list ([`ListProxy`]), a fixed-length array
//! ([`ArrayProxy`]), a namespace, a queue, a joinable queue
//! ([`JoinableQueueProxy`]), a lock, a condition ([`ConditionProxy`]), an
//! event, a value, a barrier, or a type of your own ([`SharedObject`]).
//! Processes use them through typed proxies, which are ordinary arguments
//! for a child. Local clients reach the server through shared memory, in
//! about a microsecond and a half; others over a Unix socket or TCP, always
//! with an auth key.
//!
//! ```
//! use multiproc::{ListProxy, Manager, Process};
//!
//! fn record((id, log): (u32, ListProxy<String>)) {
//!     log.push(format!("worker {id} was here")).unwrap();
//! }
//!
//! let manager = Manager::start()?;
//! let log = manager.list::<String>()?;
//! let workers: Vec<_> = (0..3)
//!     .map(|id| Process::spawn(record, (id, log.clone())))
//!     .collect::<Result<_, _>>()?;
//! for w in workers {
//!     w.join()?;
//! }
//! assert_eq!(log.len()?, 3);
//! manager.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A manager also serves a pool of worker processes ([`PoolProxy`]) to
//! every process that holds the proxy, local or over TCP. The server runs
//! a function only by the name [`task`] registered, never by an address a
//! client sends:
//!
//! ```
//! use multiproc::{Manager, PoolProxy, Process};
//!
//! #[multiproc::task]
//! fn cube(x: i64) -> i64 {
//!     x * x * x
//! }
//!
//! fn client(pool: PoolProxy) -> i64 {
//!     pool.map(cube, 1..=3).unwrap().iter().sum()
//! }
//!
//! let manager = Manager::start()?;
//! let pool = manager.pool(2)?;
//! assert_eq!(pool.apply(cube, -2)?, -8);
//! assert_eq!(Process::spawn(client, pool.clone())?.join()?, 36);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Pools
//!
//! A [`Pool`] keeps worker processes ready and spreads work over them:
//! `map`, a lazy `imap`, `submit` (a handle that is also a `Future`). A
//! worker that panics, segfaults, is killed or runs past a timeout fails
//! only its own item; it is replaced and the rest goes on.
//!
//! ```
//! use std::time::Duration;
//! use multiproc::{Pool, TaskError};
//!
//! fn slow_square(x: u64) -> u64 {
//!     if x == 3 {
//!         std::thread::sleep(Duration::from_secs(60));
//!     }
//!     x * x
//! }
//!
//! let pool = Pool::new(2)?;
//! let out = pool
//!     .task(slow_square)
//!     .timeout(Duration::from_millis(300))
//!     .map_results(0..5);
//! assert_eq!(out[2], Ok(4));
//! assert_eq!(out[3], Err(TaskError::TimedOut(Duration::from_millis(300))));
//! assert_eq!(out[4], Ok(16));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Async
//!
//! Every operation that waits has an async form that never blocks the
//! thread polling it, on any executor (tokio, smol,
//! `futures::executor::block_on`: none is required): [`Queue::get_async`],
//! [`Queue::put_async`], [`Connection::recv_async`],
//! [`Listener::accept_async`], [`Process::join_async`],
//! [`Lock::lock_async`], [`Semaphore::acquire_async`],
//! [`Event::wait_async`], [`Barrier::wait_async`],
//! [`ConditionGuard::wait_async`], the manager's [`QueueProxy::get_async`]
//! and [`LockProxy::lock_async`]; [`TaskHandle`] and [`MapHandle`] are
//! futures, and [`Imap::into_stream`] is a stream. A poll tries the
//! non-blocking form; a future that must wait hands a readiness wait that
//! takes nothing to a waiter thread, which wakes it. So dropping a future
//! (a `select!`, a timeout) takes or holds nothing. `docs/async.md` says
//! what it costs, and the three forms that cannot be undone.
//!
//! ```
//! use multiproc::{Pool, Queue};
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! futures::executor::block_on(async {
//!     let q = Queue::new()?;
//!     q.put(5u64)?;
//!     let pool = Pool::new(2)?;
//!     let squares = pool.map_async(square, [q.get_async().await?]).await?;
//!     assert_eq!(squares, [25]);
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What a child never does
//!
//! A child never outlives its parent: if the parent dies, even by SIGKILL,
//! the kernel kills the child (`PR_SET_PDEATHSIG`), and a dropped handle
//! reaps its child. See the README for how this differs from Python.
#![deny(unsafe_code)]

#[cfg(feature = "bench-internals")]
#[doc(hidden)]
#[path = "bench.rs"]
pub mod __bench;
// `#[multiproc::task]` names this crate `::multiproc`: for the tasks of
// `__bench`.
#[cfg(feature = "bench-internals")]
extern crate self as multiproc;
mod aio;

/// What `#[multiproc::task]` expands to refers to these; not an API.
#[doc(hidden)]
pub mod __private {
    pub use crate::pool::registry::{Resolved, TASKS, TaskEntry};
    pub use linkme;
}

pub use multiproc_macros::task;

/// The README, whose Rust code runs as a doc test (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
#[cfg(feature = "cluster")]
pub mod cluster;
mod connection;
mod manager;
pub mod pool;
mod process;

/// Python's pickles as plain data: the codec behind
/// [`PickleConnection`], usable on its own (say, for pickles read from a
/// file). See [`PickleConnection`] for what is refused and why.
pub mod pickle {
    pub use crate::wire::pickle::{
        PickleError, check, expansion_limit, from_pickle, to_pickle, value_from_pickle,
        value_to_pickle,
    };
    /// A pickle's value of any shape, as `serde-pickle` decodes it (this
    /// is that crate's type): for a program that echoes or inspects what
    /// arrives without a Rust type for it.
    pub use serde_pickle::Value;
}
mod queue;
mod shared;
mod shm;
mod sync;
mod sys;
mod wire;

pub use connection::{
    AcceptError, Address, AddressParseError, AuthError, Client, ConnectError, Connection,
    HANDSHAKE_TIMEOUT, Listener, MAX_PENDING_HANDSHAKES, PickleConnection, RangeError, RecvError,
    RecvIntoError, RecvTimeoutError, SendError, SharedSender, TryRecvError, Waitable, pipe,
    pipe_oneway, pipe_shared, wait,
};
pub use manager::{
    ArrayProxy, BarrierProxy, ConditionProxy, DEFAULT_MAX_REQUEST, DictProxy, EventProxy,
    JoinableQueueProxy, ListProxy, LockProxy, Manager, ManagerBuilder, NamespaceProxy, ObjectProxy,
    PoolProxy, PoolProxyBuilder, ProxyConditionGuard, ProxyError, ProxyLockGuard, QueueProxy,
    Registered, Registry, RemoteError, SemaphoreProxy, SharedObject, ShutdownError,
    StartManagerError, ValueProxy,
};
pub use pool::{
    Imap, ImapStream, MapHandle, Pool, PoolBuilder, PoolError, TaskError, TaskHandle, TaskOptions,
    WorkerStats,
};
pub use queue::{
    AckError, DEFAULT_RING_BYTES, Delivery, GetError, GetTimeoutError, JoinableQueue, PutError,
    PutFailure, PutTimeoutError, Queue, QueueBuilder, REQUEUE_WAIT, SimpleQueue, TaskDoneError,
    TryGetError, TryPutError,
};
pub use shared::{
    Item, ListError, MAX_NAME_LEN, NameError, OutOfBounds, ShareableList, SharedMemory,
};
pub use sync::{
    Array, ArrayGuard, Barrier, BarrierBuilder, BarrierError, BoundedSemaphore, Condition,
    ConditionGuard, Event, Lock, LockGuard, LockTimeoutError, OwnerDied, RLock, RLockGuard,
    RawArray, RawValue, ReleaseError, Semaphore, TryLockError, Value, ValueGuard,
};
pub use wire::{DecodeError, EncodeError, FrameError, SelfDescribing};

pub use process::{
    ChildInfo, ExitStatus, JoinError, JoinTimeoutError, PanicReport, ParentProcess, Process,
    ProcessBuilder, ProcessInfo, Signal, StartError, StartMethod, TryJoinError, UnknownStartMethod,
    active_children, cpu_count, current_process, get_start_method, parent_process,
    set_start_method,
};

/// Makes sure this process is ready to start spawn and forkserver children.
///
/// Nothing needs it on Linux: a hook that runs before `main` does the work.
/// Where a platform or a linker setup drops that hook, starting a child
/// fails with [`StartError::BootHookMissing`]; then call `init()` as the
/// first line of `main`. In a re-executed child it runs the requested
/// function and exits, so nothing after it in `main` runs there.
///
/// It is sound to call from any thread at any time: it reads the
/// environment, and removes multiproc's boot variable only while the
/// process provably has a single thread. A process started with a forged
/// boot variable is refused before any user code runs (see
/// `docs/start-methods.md`): it prints `multiproc: refusing to boot: ...`
/// and exits with code 87.
pub fn init() {
    sys::boot::boot();
}
