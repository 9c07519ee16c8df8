//! Handles (file descriptors) that travel beside the bytes of a value.
//!
//! A value such as a [`Connection`](crate::Connection) owns a descriptor.
//! When it is encoded for another process, its `Serialize` impl calls
//! [`serialize_fd`], which puts a duplicate of the descriptor in a list kept
//! for the duration of [`encode`] and writes only the duplicate's index. The
//! list is sent with the bytes as `SCM_RIGHTS` ancillary data: the kernel
//! installs the descriptors in the receiving process. [`decode`] makes the
//! received descriptors available to [`deserialize_fd`] by index.
//!
//! Encoding such a value outside [`encode`] (with another serde format) is
//! an error, not a silently useless number.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::codec::{self, DecodeError, EncodeError};
use crate::sys;

/// What a handle met in a [`bare`] encode or decode fails with.
const BARE_HANDLE: &str = "a handle in a message that carries none";

/// Most descriptors one message may carry.
pub(crate) const MAX_HANDLES: usize = sys::socket::MAX_FDS;

enum Context {
    Encoding(Vec<OwnedFd>),
    Decoding(Vec<Option<OwnedFd>>),
}

thread_local! {
    static CONTEXT: RefCell<Vec<Context>> = const { RefCell::new(Vec::new()) };
    /// One more than the depth of `CONTEXT` at which a [`bare`] encode or
    /// decode runs (0: none). Such an operation pushes no context (cheaper
    /// than a push and a pop) and admits no handle: while `CONTEXT` is
    /// that deep, a handle met is an error, not an index into an outer
    /// message's list.
    static BARE: Cell<usize> = const { Cell::new(0) };
    /// The depth of `CONTEXT`, kept beside it so that a [`bare`] operation
    /// (the common case) reads two plain cells and borrows nothing.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Pushes an encode or decode context; [`PopContext`] pops it.
fn push_context(context: Context) -> PopContext {
    let depth = CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        c.push(context);
        c.len()
    });
    DEPTH.set(depth);
    PopContext
}

/// Runs `f` as a bare encode or decode (see [`BARE`]).
#[inline]
fn bare<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the outer level, also when `f` unwinds.
    struct Restore(usize);
    impl Drop for Restore {
        #[inline]
        fn drop(&mut self) {
            BARE.set(self.0);
        }
    }
    let _restore = Restore(BARE.replace(DEPTH.get() + 1));
    f()
}

/// Whether the innermost encode or decode of this thread is bare.
fn in_bare(contexts: &[Context]) -> bool {
    BARE.with(Cell::get) == contexts.len() + 1
}

/// Encodes `value`, collecting the descriptors it contains.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    out: Vec<u8>,
) -> Result<(Vec<u8>, Vec<OwnedFd>), EncodeError> {
    let popped = push_context(Context::Encoding(Vec::new()));
    let result = codec::encode_into(value, out);
    let fds = CONTEXT.with(|c| match c.borrow_mut().last_mut() {
        Some(Context::Encoding(fds)) => std::mem::take(fds),
        _ => Vec::new(),
    });
    drop(popped);
    let bytes = result?;
    if fds.len() > MAX_HANDLES {
        return Err(EncodeError {
            type_name: std::any::type_name::<T>(),
            message: format!(
                "{} handles in one message; at most {MAX_HANDLES} fit",
                fds.len()
            ),
        });
    }
    Ok((bytes, fds))
}

thread_local! {
    /// A reusable encoding buffer: sending a value allocates nothing once
    /// this thread has sent one of that size.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Encodings this long or shorter are made on the stack.
pub(crate) const SMALL: usize = codec::STACK_BYTES;

/// Largest scratch buffer kept between sends.
const SCRATCH_KEEP: usize = 8 << 20;

/// Encodes `value` after `prefix` into this thread's scratch buffer and
/// hands the bytes and collected descriptors to `send`.
pub(crate) fn with_encoded<T: Serialize + ?Sized, R>(
    value: &T,
    prefix: &[u8],
    send: impl FnOnce(&mut Vec<u8>, &[OwnedFd]) -> R,
) -> Result<R, EncodeError> {
    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    scratch.clear();
    scratch.extend_from_slice(prefix);
    let (mut bytes, fds) = encode(value, scratch)?;
    let out = send(&mut bytes, &fds);
    if bytes.capacity() <= SCRATCH_KEEP {
        SCRATCH.with(|s| *s.borrow_mut() = bytes);
    }
    Ok(out)
}

/// Encodes `value`, which must hold no handles, into this thread's scratch
/// buffer and hands the bytes to `send`. `None` if it holds a handle or
/// fails to encode: then the caller takes [`with_encoded`], which collects
/// the handles or reports the error. Cheaper than [`with_encoded`]: no
/// handle list is pushed and popped.
///
/// With `small`, it first tries a buffer of [`SMALL`] bytes on the stack
/// (no thread-local buffer to take and give back); a value that does not
/// fit is then encoded again into the scratch buffer.
#[inline]
pub(crate) fn with_encoded_bare<T: Serialize + ?Sized, R>(
    value: &T,
    small: bool,
    send: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    if small {
        let mut stack = codec::Stack::new();
        if bare(|| codec::encode_stack(value, &mut stack)) {
            return Some(send(stack.bytes()));
        }
    }
    let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    scratch.clear();
    let bytes = bare(|| codec::encode_into(value, scratch)).ok()?;
    let out = send(&bytes);
    if bytes.capacity() <= SCRATCH_KEEP {
        SCRATCH.with(|s| *s.borrow_mut() = bytes);
    }
    Some(out)
}

/// Decodes a `T` from `bytes` that carried no handles (a handle in them is
/// an error).
#[inline]
pub(crate) fn decode_bare<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    bare(|| codec::decode(bytes))
}

/// [`codec::shape_error`] for bytes that carried no handles.
pub(crate) fn shape_error<T: DeserializeOwned>(bytes: &[u8]) -> Option<String> {
    bare(|| codec::shape_error::<T>(bytes))
}

/// Decodes a `T` from `bytes`, handing it the descriptors `fds` that came
/// with them. Descriptors the value does not claim are closed.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T, DecodeError> {
    let _popped = push_context(Context::Decoding(fds.into_iter().map(Some).collect()));
    codec::decode(bytes)
}

/// Pops this thread's innermost encode or decode context when dropped, also
/// when the value's `Serialize` or `Deserialize` panics: a context left
/// behind would hand its descriptors to the next, unrelated, message.
struct PopContext;

impl Drop for PopContext {
    fn drop(&mut self) {
        // The context's unclaimed descriptors are closed after the borrow
        // ends (their drop runs no code of ours).
        let (top, depth) = CONTEXT.with(|c| {
            let mut c = c.borrow_mut();
            let top = c.pop();
            (top, c.len())
        });
        DEPTH.set(depth);
        drop(top);
    }
}

/// Serializes a descriptor as an index into the message's handle list.
pub(crate) fn serialize_fd<S: Serializer>(
    fd: BorrowedFd<'_>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let index = CONTEXT.with(|c| match c.borrow_mut().as_mut_slice() {
        all if in_bare(all) => Err(S::Error::custom(BARE_HANDLE)),
        [.., Context::Encoding(fds)] => {
            let dup = sys::socket::dup(fd).map_err(|e| S::Error::custom(format!("cannot duplicate a handle: {e}")))?;
            fds.push(dup);
            Ok(fds.len() - 1)
        }
        _ => Err(S::Error::custom(
            "a handle (Connection, Queue, ...) can only be encoded by multiproc to send it to another process",
        )),
    })?;
    u32::try_from(index)
        .map_err(S::Error::custom)?
        .serialize(serializer)
}

/// Deserializes a descriptor sent with [`serialize_fd`].
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(deserializer)? as usize;
    CONTEXT.with(|c| match c.borrow_mut().as_mut_slice() {
        all if in_bare(all) => Err(codec::custom(BARE_HANDLE)),
        [.., Context::Decoding(fds)] => fds
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| codec::custom(format!("handle {index} is missing from the message"))),
        _ => Err(codec::custom(
            "a handle can only be decoded by multiproc, from a message that carried it",
        )),
    })
}

/// A borrowed descriptor that serializes through [`serialize_fd`].
pub(crate) struct FdRef<'a>(pub BorrowedFd<'a>);

impl Serialize for FdRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0, serializer)
    }
}

/// Descriptors owned by live handles (connections, queues, ...) of this
/// process. A child forked to run a function releases them before it
/// receives its argument (each number then refers to `/dev/null`), so that
/// it holds only the handles it was given: otherwise it would keep, say,
/// the parent's end of a pipe open, and never see the end of the stream
/// when the parent drops it.
static LIVE: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

fn live() -> MutexGuard<'static, BTreeSet<RawFd>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records that a handle owns `fd`.
pub(crate) fn track(fd: BorrowedFd<'_>) {
    live().insert(fd.as_raw_fd());
}

/// Records that the handle owning `fd` is closing it.
pub(crate) fn untrack(fd: BorrowedFd<'_>) {
    live().remove(&fd.as_raw_fd());
}

/// The registry's lock, held by the forking thread across a fork.
pub(crate) struct ForkGuard(MutexGuard<'static, BTreeSet<RawFd>>);

/// Takes the registry's lock before a fork. Also makes room, in the
/// forking thread, for the context a child's encode of its result pushes:
/// made here, in the parent, it is no allocation in the child (a thread
/// that never encoded, such as the launcher, has none).
pub(crate) fn lock_for_fork() -> ForkGuard {
    CONTEXT.with(|c| c.borrow_mut().reserve(2));
    ForkGuard(live())
}

impl ForkGuard {
    /// Whether any handle of this process owns a descriptor: if none
    /// does, a forked child has nothing to release.
    pub(crate) fn holds_any(&self) -> bool {
        !self.0.is_empty()
    }

    /// In a child forked to run a function: releases what every descriptor
    /// of the parent's handles refers to (the parent's end of a pipe, say),
    /// keeping the numbers taken (see
    /// [`sys::process::release_inherited_handles`]): an owner may still be
    /// reachable in the child, from a `static`, and will close its number.
    /// The registry keeps the numbers, so such a handle untracks itself as
    /// usual when dropped.
    pub(crate) fn release_inherited(self) {
        // Iterated in place: a collected list would be an allocation (a
        // write to heap pages the child shares with its parent).
        sys::process::release_inherited_handles(self.0.iter().copied());
    }
}

/// A descriptor of this process's plumbing (a pool's link ends, say) that a
/// child forked to run a function must not keep: recorded in the registry
/// for as long as it is open.
#[derive(Debug)]
pub(crate) struct TrackedFd(
    /// Always `Some`, but for the moment [`into_recorded`] takes it.
    ///
    /// [`into_recorded`]: TrackedFd::into_recorded
    Option<OwnedFd>,
);

impl TrackedFd {
    /// Records `fd`.
    pub(crate) fn new(fd: OwnedFd) -> Self {
        track(fd.as_fd());
        TrackedFd(Some(fd))
    }

    /// The descriptor, still recorded: for an owner that records it again
    /// and forgets it when it closes it ([`Stream`](super::stream::Stream),
    /// say). A recorded number stays recorded, so no fork in between keeps
    /// it.
    pub(crate) fn into_recorded(mut self) -> OwnedFd {
        self.0.take().expect("a tracked descriptor is always there")
    }
}

impl std::os::fd::AsFd for TrackedFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0
            .as_ref()
            .expect("a tracked descriptor is always there")
            .as_fd()
    }
}

impl Drop for TrackedFd {
    fn drop(&mut self) {
        if let Some(fd) = &self.0 {
            untrack(fd.as_fd());
        }
    }
}
