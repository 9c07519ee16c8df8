//! The manager's messages: what a client asks and what the server answers.
//! The layout and the reasoning are in `docs/manager-protocol.md`.
//!
//! Implementation description:
//! * Every message is `postcard` bytes of [`Request`] or [`Reply`], carried
//!   as one frame of the connection layer (a Unix or TCP socket) or as one
//!   record of a shared-memory [`Queue`](crate::Queue) pair (the local fast
//!   path, [`super::transport`]).
//! * The server is type-agnostic: keys, values and arguments of user calls
//!   are opaque [`Blob`]s, encoded and decoded only by the typed proxies.
//! * No type is recursive: a [`Request::Batch`] holds [`Single`] requests,
//!   which cannot hold batches, so no input can make the decoder recurse
//!   deeper than the type itself.
//! * Decoding never executes anything: an unknown variant (an unknown
//!   method) is a decode error, answered with [`RemoteError::Malformed`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::RemoteError;
use crate::connection::Address;
use crate::pool::TaskError;
use crate::process::{ExitStatus, PanicReport, Signal, StartMethod};
use crate::wire::{DecodeError, EncodeError, codec};

/// The first message of a client after the auth handshake: this magic and
/// one flags byte.
pub(crate) const HELLO_MAGIC: [u8; 6] = *b"MPMGR\x01";
/// Hello flag: the client runs on this machine and asks for the
/// shared-memory request path.
pub(crate) const HELLO_LOCAL: u8 = 1;

/// The client's hello: the magic and its flags.
pub(crate) fn hello(local: bool) -> Vec<u8> {
    let mut out = HELLO_MAGIC.to_vec();
    out.push(if local { HELLO_LOCAL } else { 0 });
    out
}

/// Parses a hello: whether the client is local, or `None` if it is not a
/// hello.
pub(crate) fn parse_hello(bytes: &[u8]) -> Option<bool> {
    match bytes.strip_prefix(&HELLO_MAGIC[..])? {
        [flags] if flags & !HELLO_LOCAL == 0 => Some(flags & HELLO_LOCAL != 0),
        _ => None,
    }
}

/// Opaque encoded bytes (a key, a value, a call). Encoded as a byte string,
/// so a blob costs its length plus a varint.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Blob(pub Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

/// An [`Address`] that can travel inside a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) enum WireAddress {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
    /// An abstract Unix socket name (after the others: their encodings
    /// are unchanged).
    Abstract(Vec<u8>),
}

impl From<&Address> for WireAddress {
    fn from(a: &Address) -> Self {
        match a {
            Address::Unix(p) => WireAddress::Unix(p.clone()),
            Address::Abstract(n) => WireAddress::Abstract(n.clone()),
            Address::Tcp(t) => WireAddress::Tcp(*t),
        }
    }
}

impl From<&WireAddress> for Address {
    fn from(a: &WireAddress) -> Self {
        match a {
            WireAddress::Unix(p) => Address::Unix(p.clone()),
            WireAddress::Abstract(n) => Address::Abstract(n.clone()),
            WireAddress::Tcp(t) => Address::Tcp(*t),
        }
    }
}

/// The identity of an object on the server.
pub(crate) type ObjectId = u64;

/// Who holds a manager lock: a client process and thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Owner {
    /// The client's process id.
    pub pid: u32,
    /// The client's thread id.
    pub tid: u32,
}

/// A wait bound: milliseconds, `None` for no bound.
pub(crate) type TimeoutMs = Option<u64>;

/// What a client asks.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// One request.
    One(Single),
    /// Several requests, answered in order by one [`Payload::Batch`].
    Batch(Vec<Single>),
}

/// One request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Single {
    /// Makes an object; answered with [`Payload::Object`] (one reference).
    Create(Kind),
    /// Calls a method of an object.
    Call(ObjectId, Op),
    /// Adds a reference to an object (a proxy was cloned or received).
    IncRef(ObjectId),
    /// Drops a reference; the object is freed with its last one.
    DecRef(ObjectId),
    /// Does nothing; answered with [`Payload::Unit`].
    Ping,
    /// Adds a reference that the server drops by itself after
    /// [`LEASE`]: taken when a proxy is encoded to travel, so the object
    /// outlives the sender's proxy until the receiver has taken its own.
    Lease(ObjectId),
}

/// How long a [`Single::Lease`] keeps an object alive.
pub(crate) const LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// The kinds of object the server hosts.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// A dict (`DictProxy`).
    Dict,
    /// A list (`ListProxy`).
    List,
    /// A namespace (`NamespaceProxy`).
    Namespace,
    /// A queue (`QueueProxy`); `max_items` 0 is unbounded.
    Queue {
        /// The most items it holds; 0 for no limit.
        max_items: u64,
    },
    /// A lock (`LockProxy`), reentrant or not.
    Lock {
        /// Whether the owner may acquire it again (an `RLock`).
        reentrant: bool,
    },
    /// An event (`EventProxy`).
    Event,
    /// A value (`ValueProxy`) with its first value.
    Value(Blob),
    /// A barrier (`BarrierProxy`) for this many parties.
    Barrier {
        /// How many parties each cycle waits for.
        parties: u32,
    },
    /// A registered user type, by its registered name.
    User {
        /// The name it was registered under.
        name: String,
        /// `std::any::type_name` of the proxy's type, checked against the
        /// registered one.
        type_name: String,
        /// The encoded `Init` value.
        init: Blob,
    },
    /// A semaphore (`SemaphoreProxy`) with this many units.
    Semaphore {
        /// The units it starts with.
        value: u64,
        /// Whether a release past the starting value is an error (a
        /// `BoundedSemaphore`).
        bounded: bool,
    },
    /// A joinable queue (`JoinableQueueProxy`); `max_items` 0 is unbounded.
    JoinableQueue {
        /// The most items it holds; 0 for no limit.
        max_items: u64,
    },
    /// A condition (`ConditionProxy`) over its own reentrant lock, or over
    /// the lock object with this id.
    Condition {
        /// The lock to share, if not a new one.
        lock: Option<ObjectId>,
    },
    /// A fixed-length array (`ArrayProxy`) with its items.
    Array(Vec<Blob>),
    /// A pool of worker processes (`PoolProxy`).
    Pool(PoolSpec),
}

/// A method call; the outer variant names the kind of object it is for.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    /// A dict method.
    Dict(DictOp),
    /// A list method.
    List(ListOp),
    /// A namespace method.
    Namespace(NamespaceOp),
    /// A queue method.
    Queue(QueueOp),
    /// A lock method.
    Lock(LockOp),
    /// An event method.
    Event(EventOp),
    /// A value method.
    Value(ValueOp),
    /// A barrier method.
    Barrier(BarrierOp),
    /// A call of a user type: its encoded `Call`.
    User(Blob),
    /// A semaphore method.
    Semaphore(SemaphoreOp),
    /// A condition method.
    Condition(ConditionOp),
    /// An array method.
    Array(ArrayOp),
    /// A pool method.
    Pool(PoolOp),
}

impl Op {
    /// The kind of object this method belongs to.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            Op::Dict(_) => "dict",
            Op::List(_) => "list",
            Op::Namespace(_) => "namespace",
            Op::Queue(_) => "queue",
            Op::Lock(_) => "lock",
            Op::Event(_) => "event",
            Op::Value(_) => "value",
            Op::Barrier(_) => "barrier",
            Op::User(_) => "user object",
            Op::Semaphore(_) => "semaphore",
            Op::Condition(_) => "condition",
            Op::Array(_) => "array",
            Op::Pool(_) => "pool",
        }
    }
}

/// Dict methods.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum DictOp {
    /// `MaybeValue`.
    Get(Blob),
    /// `MaybeValues`, one per key.
    GetMany(Vec<Blob>),
    /// `MaybeValue`: the previous value.
    Insert(Blob, Blob),
    /// `Unit`.
    Update(Vec<(Blob, Blob)>),
    /// `Bool`: whether the key was there.
    Remove(Blob),
    /// `MaybeValue`: the removed value.
    Pop(Blob),
    /// `Value`: the value now under the key.
    SetDefault(Blob, Blob),
    /// `Bool`.
    Contains(Blob),
    /// `Count`.
    Len,
    /// `Values`, in insertion order.
    Keys,
    /// `Values`, in insertion order.
    Values,
    /// `Pairs`, in insertion order.
    Items,
    /// `Unit`.
    Clear,
    /// `Pairs`: the entry inserted last, removed (none if empty).
    PopItem,
}

/// List methods. Indices are positions from the front.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ListOp {
    /// `Unit`.
    Push(Blob),
    /// `Unit`.
    Extend(Vec<Blob>),
    /// `MaybeValue`.
    Get(u64),
    /// `Value`: the previous item.
    Set(u64, Blob),
    /// `Unit`.
    Insert(u64, Blob),
    /// `MaybeValue`: the last item.
    Pop,
    /// `Value`: the removed item.
    Remove(u64),
    /// `Count`.
    Len,
    /// `Values`: items `start..end`, clamped to the list.
    Slice(u64, u64),
    /// `Unit`.
    Clear,
    /// `Count`: the items whose encoding is this one.
    Count(Blob),
    /// `Count`: one plus the position of the first item whose encoding is
    /// this one; 0 if there is none.
    Index(Blob),
    /// `Unit`.
    Reverse,
    /// `Bool`: replaces every item with the second list if the items are
    /// the first one now (a compare-and-swap: a client that sorts does so
    /// on a copy, and writes it back only if nobody changed the list).
    ReplaceIf(Vec<Blob>, Vec<Blob>),
}

/// Array methods: the length never changes. An index at or past the
/// length is `IndexOutOfRange`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ArrayOp {
    /// `Value`.
    Get(u64),
    /// `Value`: the previous item.
    Set(u64, Blob),
    /// `Count`.
    Len,
    /// `Values`: items `start..end`, clamped to the array.
    Slice(u64, u64),
    /// `Unit`: overwrites items from `start` on, all or none.
    SetSlice(u64, Vec<Blob>),
}

/// Namespace methods.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum NamespaceOp {
    /// `MaybeValue`.
    Get(String),
    /// `Unit`.
    Set(String, Blob),
    /// `Bool`: whether it was there.
    Remove(String),
    /// `Names`, sorted.
    Names,
}

/// Queue methods.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum QueueOp {
    /// `Bool`: false if still full at the timeout.
    Put(Blob, TimeoutMs),
    /// `MaybeValue`: `None` if still empty at the timeout.
    Get(TimeoutMs),
    /// `Count`.
    Len,
    /// `Unit`: one item taken is finished (joinable queues only).
    TaskDone,
    /// `Bool`: false if items were still unfinished at the timeout
    /// (joinable queues only).
    Join(TimeoutMs),
    /// `Bool`: whether a bounded queue holds as many items as it may.
    Full,
}

/// Lock methods.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum LockOp {
    /// `Bool`: whether it was acquired before the timeout.
    Acquire(Owner, TimeoutMs),
    /// `Unit`.
    Release(Owner),
}

/// Condition methods. All but `Lock` need the caller to hold the lock
/// (`NotOwner` otherwise).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ConditionOp {
    /// A method of its lock.
    Lock(LockOp),
    /// `Bool`: whether it was notified before the timeout. The lock is
    /// released while waiting and held again at the answer.
    Wait(Owner, TimeoutMs),
    /// `Unit`: wakes up to this many waiters.
    Notify(Owner, u64),
    /// `Unit`: wakes every waiter.
    NotifyAll(Owner),
}

/// Event methods.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum EventOp {
    /// `Unit`.
    Set,
    /// `Unit`.
    Clear,
    /// `Bool`.
    IsSet,
    /// `Bool`: whether it was set before the timeout.
    Wait(TimeoutMs),
}

/// Value methods.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ValueOp {
    /// `Value`.
    Get,
    /// `Value`: the previous value.
    Set(Blob),
}

/// Barrier methods.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum BarrierOp {
    /// `Count`: the arrival index.
    Wait(TimeoutMs),
    /// `Unit`.
    Reset,
    /// `Unit`.
    Abort,
    /// `Count`.
    Parties,
    /// `Count`.
    Waiting,
    /// `Bool`.
    Broken,
}

/// Semaphore methods.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SemaphoreOp {
    /// `Bool`: whether a unit was taken before the timeout.
    Acquire(TimeoutMs),
    /// `Unit`.
    Release,
    /// `Count`: the units left.
    Value,
}

/// How to start a pool on the server (`Manager::pool_builder`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PoolSpec {
    /// Worker processes; `None` for the server's processor count.
    pub workers: Option<u64>,
    /// How the workers are started; `None` for the server's default.
    pub method: Option<StartMethod>,
    /// `PoolBuilder::max_tasks_per_child`.
    pub max_tasks_per_child: Option<u64>,
    /// `PoolBuilder::memory_limit`.
    pub memory_limit: Option<u64>,
    /// The default timeout of every item, in nanoseconds.
    pub task_timeout_ns: Option<u64>,
    /// `PoolBuilder::max_failed_starts`.
    pub max_failed_starts: u32,
}

/// What a client learns of a pool when it makes or receives a proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PoolInfo {
    /// Worker processes.
    pub workers: u64,
    /// How they are started.
    pub method: StartMethod,
    /// The default timeout of every item, in nanoseconds.
    pub task_timeout_ns: Option<u64>,
}

/// A run of items of one job, as a client submits it: the function by its
/// registered name, never by address.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PoolChunk {
    /// The client's id of the chunk, unique in its stream.
    pub id: u64,
    /// The task's registered name (`#[multiproc::task]`).
    pub name: String,
    /// The client's signature of the task (name, argument and result
    /// types), checked against the server's.
    pub signature: String,
    /// The job index of the first item.
    pub first: u64,
    /// The items' encodings, back to back.
    pub items: Blob,
    /// Where each item's encoding ends in `items`: not decreasing, the
    /// last one at its end.
    pub ends: Vec<u64>,
    /// How long one item may run, in nanoseconds.
    pub timeout_ns: Option<u64>,
}

/// Pool methods. A client's chunks and their outcomes belong to its
/// *stream*, a random number it picks: the server keeps each stream's
/// outcomes until the client collects them, and cancels a stream's work
/// when its client goes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PoolOp {
    /// `Value`: the pool's [`PoolInfo`].
    Info,
    /// `Value`: the workers' [`PoolStats`].
    Stats,
    /// `Unit`: queues chunks of `stream`. A chunk that cannot run fails its
    /// items through [`PoolOp::Collect`], as any other failure does.
    Submit {
        /// The client's stream.
        stream: u64,
        /// The client's build fingerprint, checked against the server's.
        build: String,
        /// The chunks.
        chunks: Vec<PoolChunk>,
    },
    /// `Parts`: the stream's outcomes, waiting up to the timeout for the
    /// first. First drops the chunks the client no longer waits for
    /// (`forget`: queued ones never run) and stops the cancelled ones
    /// (`cancel`: a running one's worker is killed).
    Collect {
        /// The client's stream.
        stream: u64,
        /// Chunks whose outcomes nobody wants.
        forget: Vec<u64>,
        /// Chunks to stop.
        cancel: Vec<u64>,
        /// The longest wait for an outcome.
        timeout: TimeoutMs,
    },
    /// `Unit`: stops these chunks of the stream at once (as `cancel` in
    /// [`PoolOp::Collect`]).
    Cancel {
        /// The client's stream.
        stream: u64,
        /// Chunks to stop.
        chunks: Vec<u64>,
    },
    /// `Unit`: the stream's client is leaving: its chunks are stopped.
    EndStream(u64),
    /// `Unit`: the pool takes no more tasks (Python's `close`).
    Close,
    /// `Bool`: closes the pool, and whether every task finished before the
    /// timeout; then the workers have been stopped (Python's `join`).
    Join(TimeoutMs),
    /// `Unit`: queued and running tasks fail, the workers are killed
    /// (Python's `terminate`).
    Terminate,
}

/// One pool worker's figures (`WorkerStats`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PoolStats {
    /// The worker's index.
    pub index: u64,
    /// Its current process id.
    pub pid: i32,
    /// Items finished.
    pub tasks_done: u64,
    /// Nanoseconds running tasks.
    pub busy_ns: u64,
    /// Nanoseconds idle.
    pub idle_ns: u64,
    /// Replacements.
    pub restarts: u64,
    /// Whether it takes tasks.
    pub ready: bool,
}

/// Outcomes of a chunk's items, as the server hands them to the client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PoolPart {
    /// Items `first..first + count` of chunk `chunk`, as the worker encoded
    /// them: the first `plain` bare values, the rest tagged outcomes.
    Values {
        /// The chunk.
        chunk: u64,
        /// The job index of the first item.
        first: u64,
        /// How many items.
        count: u64,
        /// How many of them are bare values.
        plain: u64,
        /// The encodings.
        bytes: Blob,
        /// Nanoseconds the worker spent on them.
        busy_ns: u64,
    },
    /// Item `index` of chunk `chunk` failed.
    Failed {
        /// The chunk.
        chunk: u64,
        /// The job index of the item.
        index: u64,
        /// Why.
        failure: PoolFailure,
    },
}

/// A `TaskError` as it travels from the server's pool to the client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum PoolFailure {
    /// `TaskError::Panicked`.
    Panicked(PanicReport),
    /// `TaskError::WorkerDied`.
    WorkerDied {
        /// The worker's index.
        worker: u64,
        /// Its process id.
        pid: i32,
        /// Its exit code, or `None` if a signal ended it.
        code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
    /// `TaskError::TimedOut`, in nanoseconds.
    TimedOut(u64),
    /// `TaskError::Cancelled`.
    Cancelled,
    /// `TaskError::ArgumentDecode`.
    ArgumentDecode(String),
    /// `TaskError::ResultEncode`.
    ResultEncode(String),
    /// `TaskError::Protocol`.
    Protocol(String),
    /// `TaskError::Terminated`.
    Terminated,
    /// `TaskError::Closed`.
    Closed,
    /// `TaskError::Broken`.
    Broken(String),
    /// `TaskError::NotRegistered`.
    NotRegistered(String),
    /// `TaskError::BuildMismatch`.
    BuildMismatch {
        /// The client's.
        expected: String,
        /// The server's.
        got: String,
    },
    /// Anything else, as its message (`TaskError::Backend` on arrival).
    Other(String),
}

impl PoolFailure {
    /// The wire form of `e`.
    pub(crate) fn from_task_error(e: &TaskError) -> PoolFailure {
        match e {
            TaskError::Panicked(p) => PoolFailure::Panicked(p.clone()),
            TaskError::WorkerDied {
                worker,
                pid,
                status,
            } => PoolFailure::WorkerDied {
                worker: *worker as u64,
                pid: *pid,
                code: status.code(),
                signal: status.signal().map(|s| s.0),
                core_dumped: matches!(
                    status,
                    ExitStatus::Signaled {
                        core_dumped: true,
                        ..
                    }
                ),
            },
            TaskError::TimedOut(d) => {
                PoolFailure::TimedOut(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            }
            TaskError::Cancelled => PoolFailure::Cancelled,
            TaskError::ArgumentDecode(m) => PoolFailure::ArgumentDecode(m.clone()),
            TaskError::ResultEncode(m) => PoolFailure::ResultEncode(m.clone()),
            TaskError::Protocol(m) => PoolFailure::Protocol(m.clone()),
            TaskError::Terminated => PoolFailure::Terminated,
            TaskError::Closed => PoolFailure::Closed,
            TaskError::Broken(m) => PoolFailure::Broken(m.clone()),
            TaskError::NotRegistered(m) => PoolFailure::NotRegistered(m.clone()),
            TaskError::BuildMismatch { expected, got } => PoolFailure::BuildMismatch {
                expected: expected.clone(),
                got: got.clone(),
            },
            other => PoolFailure::Other(other.to_string()),
        }
    }

    /// The `TaskError` it stands for.
    pub(crate) fn into_task_error(self) -> TaskError {
        match self {
            PoolFailure::Panicked(p) => TaskError::Panicked(p),
            PoolFailure::WorkerDied {
                worker,
                pid,
                code,
                signal,
                core_dumped,
            } => TaskError::WorkerDied {
                worker: usize::try_from(worker).unwrap_or(usize::MAX),
                pid,
                status: match (code, signal) {
                    (_, Some(signal)) => ExitStatus::Signaled {
                        signal: Signal(signal),
                        core_dumped,
                    },
                    (code, None) => ExitStatus::Exited(code.unwrap_or(-1)),
                },
            },
            PoolFailure::TimedOut(ns) => TaskError::TimedOut(Duration::from_nanos(ns)),
            PoolFailure::Cancelled => TaskError::Cancelled,
            PoolFailure::ArgumentDecode(m) => TaskError::ArgumentDecode(m),
            PoolFailure::ResultEncode(m) => TaskError::ResultEncode(m),
            PoolFailure::Protocol(m) => TaskError::Protocol(m),
            PoolFailure::Terminated => TaskError::Terminated,
            PoolFailure::Closed => TaskError::Closed,
            PoolFailure::Broken(m) => TaskError::Broken(m),
            PoolFailure::NotRegistered(m) => TaskError::NotRegistered(m),
            PoolFailure::BuildMismatch { expected, got } => {
                TaskError::BuildMismatch { expected, got }
            }
            PoolFailure::Other(m) => TaskError::Backend(m),
        }
    }
}

/// What the server answers to one request.
pub(crate) type Reply = Result<Payload, RemoteError>;

/// A successful answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Payload {
    /// Nothing to say.
    Unit,
    /// A yes or no.
    Bool(bool),
    /// A number.
    Count(u64),
    /// One value.
    Value(Blob),
    /// A value, or none.
    MaybeValue(Option<Blob>),
    /// Several values.
    Values(Vec<Blob>),
    /// Several values, or none each.
    MaybeValues(Vec<Option<Blob>>),
    /// Key-value pairs.
    Pairs(Vec<(Blob, Blob)>),
    /// Names.
    Names(Vec<String>),
    /// A new object.
    Object(ObjectId),
    /// The answers to a batch, in order.
    Batch(Vec<Reply>),
    /// What a pool's tasks sent back to one client.
    Parts(Vec<PoolPart>),
}

/// Decodes a request. Any bytes at all give a request or an error; nothing
/// panics, recurses without bound or allocates much more than `bytes.len()`.
pub(crate) fn decode_request(bytes: &[u8]) -> Result<Request, RemoteError> {
    codec::decode(bytes).map_err(|e: DecodeError| RemoteError::Malformed(e.message))
}

/// Room reserved for an encoded request or reply: most fit, so the buffer
/// is allocated once instead of growing from nothing (three allocations
/// for a 20-byte request).
const TYPICAL_MESSAGE: usize = 64;

/// Encodes a request.
pub(crate) fn encode_request(request: &Request) -> Result<Vec<u8>, EncodeError> {
    codec::encode_into(request, Vec::with_capacity(TYPICAL_MESSAGE))
}

/// Encodes a reply. Replies hold only bytes, numbers and strings, which
/// always encode.
pub(crate) fn encode_reply(reply: &Reply) -> Vec<u8> {
    codec::encode_into(reply, Vec::with_capacity(TYPICAL_MESSAGE)).unwrap_or_else(|e| {
        codec::encode(&Reply::Err(RemoteError::Internal(e.message))).unwrap_or_default()
    })
}

/// Decodes a reply.
pub(crate) fn decode_reply(bytes: &[u8]) -> Result<Reply, DecodeError> {
    codec::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn valid_requests() -> Vec<Vec<u8>> {
        let b = |s: &str| Blob(s.as_bytes().to_vec());
        let owner = Owner { pid: 1, tid: 2 };
        let singles = vec![
            Single::Create(Kind::Dict),
            Single::Create(Kind::User {
                name: "counter".into(),
                type_name: "x::Counter".into(),
                init: b("7"),
            }),
            Single::Call(1, Op::Dict(DictOp::Insert(b("k"), b("v")))),
            Single::Call(1, Op::Dict(DictOp::Update(vec![(b("a"), b("b"))]))),
            Single::Call(2, Op::List(ListOp::Slice(0, 10))),
            Single::Call(3, Op::Queue(QueueOp::Put(b("x"), Some(5)))),
            Single::Call(4, Op::Lock(LockOp::Acquire(owner, None))),
            Single::Call(5, Op::Barrier(BarrierOp::Wait(Some(1)))),
            Single::Call(6, Op::User(b("call"))),
            Single::Call(7, Op::Semaphore(SemaphoreOp::Acquire(Some(3)))),
            Single::Create(Kind::Semaphore {
                value: 2,
                bounded: true,
            }),
            Single::Lease(8),
            Single::Create(Kind::JoinableQueue { max_items: 3 }),
            Single::Call(3, Op::Queue(QueueOp::Join(Some(9)))),
            Single::Call(3, Op::Queue(QueueOp::TaskDone)),
            Single::Create(Kind::Condition { lock: Some(4) }),
            Single::Call(10, Op::Condition(ConditionOp::Wait(owner, Some(2)))),
            Single::Call(10, Op::Condition(ConditionOp::Notify(owner, 3))),
            Single::Create(Kind::Array(vec![b("1"), b("2")])),
            Single::Call(11, Op::Array(ArrayOp::SetSlice(1, vec![b("3")]))),
            Single::Create(Kind::Pool(PoolSpec {
                workers: Some(2),
                method: Some(StartMethod::Spawn),
                ..PoolSpec::default()
            })),
            Single::Call(
                12,
                Op::Pool(PoolOp::Submit {
                    stream: 7,
                    build: "gnu:00".into(),
                    chunks: vec![PoolChunk {
                        id: 1,
                        name: "demo.square".into(),
                        signature: "0011".into(),
                        first: 0,
                        items: b("ab"),
                        ends: vec![1, 2],
                        timeout_ns: Some(5),
                    }],
                }),
            ),
            Single::Call(
                12,
                Op::Pool(PoolOp::Collect {
                    stream: 7,
                    forget: vec![1],
                    cancel: vec![2],
                    timeout: Some(100),
                }),
            ),
            Single::Call(12, Op::Pool(PoolOp::Join(None))),
            Single::DecRef(9),
        ];
        let mut out: Vec<Vec<u8>> = Vec::new();
        for s in singles {
            out.push(encode_request(&Request::One(s)).unwrap());
        }
        out.push(
            encode_request(&Request::Batch(vec![
                Single::Ping,
                Single::Call(1, Op::Dict(DictOp::GetMany(vec![b("a"), b("b")]))),
            ]))
            .unwrap(),
        );
        out
    }

    #[test]
    fn valid_requests_round_trip() {
        for bytes in valid_requests() {
            let r = decode_request(&bytes).unwrap();
            assert_eq!(encode_request(&r).unwrap(), bytes);
        }
    }

    #[test]
    fn every_truncation_of_a_valid_request_is_an_error() {
        for bytes in valid_requests() {
            for cut in 0..bytes.len() {
                assert!(
                    matches!(
                        decode_request(&bytes[..cut]),
                        Err(RemoteError::Malformed(_))
                    ),
                    "a request cut at {cut} of {} bytes decoded",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut decoded = 0;
        for round in 0..200_000 {
            let len = (rng.next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Bias towards plausible prefixes so the fuzzing goes deep.
            if round % 2 == 0 && !bytes.is_empty() {
                bytes[0] %= 2;
                if bytes.len() > 1 {
                    bytes[1] %= 5;
                }
            }
            if decode_request(&bytes).is_ok() {
                decoded += 1;
            }
        }
        assert!(
            decoded > 0,
            "the biased inputs never reached a valid request"
        );
    }

    #[test]
    fn mutated_valid_requests_never_panic_the_decoder() {
        let mut rng = Rng(12345);
        for bytes in valid_requests() {
            for _ in 0..5_000 {
                let mut m = bytes.clone();
                let flips = 1 + rng.next() % 3;
                for _ in 0..flips {
                    let i = (rng.next() as usize) % m.len();
                    m[i] = rng.next() as u8;
                }
                let _ = decode_request(&m);
            }
        }
    }

    #[test]
    fn a_huge_announced_length_allocates_nothing_unsent() {
        // Batch with a varint length of about 2^62 elements and no bytes.
        let bytes = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f];
        assert!(matches!(
            decode_request(&bytes),
            Err(RemoteError::Malformed(_))
        ));
        // A blob that claims 1 GiB.
        let mut bytes = vec![0u8, 2, 1, 0, 0];
        bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x04]);
        assert!(decode_request(&bytes).is_err());
    }

    #[test]
    fn task_errors_survive_the_trip() {
        let died = TaskError::WorkerDied {
            worker: 3,
            pid: 42,
            status: ExitStatus::Signaled {
                signal: Signal::KILL,
                core_dumped: false,
            },
        };
        let exited = TaskError::WorkerDied {
            worker: 0,
            pid: 7,
            status: ExitStatus::Exited(3),
        };
        for e in [
            died,
            exited,
            TaskError::TimedOut(Duration::from_millis(250)),
            TaskError::Cancelled,
            TaskError::Terminated,
            TaskError::Closed,
            TaskError::NotRegistered("x".into()),
            TaskError::BuildMismatch {
                expected: "a".into(),
                got: "b".into(),
            },
        ] {
            let wire = codec::encode(&PoolFailure::from_task_error(&e)).unwrap();
            let back: PoolFailure = codec::decode(&wire).unwrap();
            assert_eq!(back.into_task_error(), e);
        }
    }

    #[test]
    fn hellos_parse_and_garbage_does_not() {
        assert_eq!(parse_hello(&hello(true)), Some(true));
        assert_eq!(parse_hello(&hello(false)), Some(false));
        assert_eq!(parse_hello(b"MPMGR\x01"), None);
        assert_eq!(parse_hello(b"GET / HTTP/1.1"), None);
        let mut bad = hello(true);
        bad[6] = 0x80;
        assert_eq!(parse_hello(&bad), None);
    }
}
