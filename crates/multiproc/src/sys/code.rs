//! Naming a function so that another process running the same executable can
//! call it.
//!
//! A function's address changes from one run to the next (ASLR), but its
//! distance from any other function of the same executable does not. An
//! [`EntryId`] records three such distances from an anchor function: the
//! user's target, a typed body that decodes arguments, calls the target and
//! encodes the result, and a non-generic shim that restores both types.
//!
//! Only the process that re-executed `/proc/self/exe`, or forked, may hand an
//! `EntryId` to the code that calls it: an id from another executable would
//! jump to an arbitrary address. So ids travel only over descriptors private
//! to the parent and child, and the callable form, [`Entry`], is made only by
//! [`Entry::receive`], whose callers (the boot hook and the forkserver's
//! fork path, both in this OS layer) vouch for the channel.
//!
//! Nothing here can tell a genuine offset from a forged one: the targets
//! are arbitrary `fn` items picked by the parent at run time, so no table of
//! valid entries exists in a freshly executed child (Rust has no statics
//! per generic instantiation through which each `shim::<A, R>` could
//! register itself). The vouching is therefore done by authentication: the
//! boot hook acts on a preamble only once the kernel attests that its
//! parent, running this same executable, wrote it (`sys::boot`).
//!
//! A later cross-machine backend would replace the offsets with registered,
//! stable names; the rest of the start protocol does not depend on them.

use std::os::fd::OwnedFd;

/// What a body returns: the result frame's kind, its payload, and the
/// descriptors that travel with it.
pub(crate) type Reply = (u8, Vec<u8>, Vec<OwnedFd>);

/// The typed body: decodes `input` (with the descriptors that came with
/// it), calls the target, returns the result frame.
pub(crate) type Body<A, R> = fn(fn(A) -> R, &[u8], Vec<OwnedFd>) -> Reply;

type Shim = fn(usize, usize, &[u8], Vec<OwnedFd>) -> Reply;

#[inline(never)]
fn anchor() {}

fn offset_of(addr: usize) -> i64 {
    (addr as i64).wrapping_sub(anchor as fn() as usize as i64)
}

fn address_of(offset: i64) -> usize {
    (anchor as fn() as usize as i64).wrapping_add(offset) as usize
}

/// A function of this executable, nameable from another process that runs
/// the same executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryId {
    shim: i64,
    target: i64,
    body: i64,
}

fn shim<A, R>(target: usize, body: usize, input: &[u8], fds: Vec<OwnedFd>) -> Reply {
    // SAFETY: `EntryId::new::<A, R>` took `target` from a `fn(A) -> R` and
    // `body` from a `Body<A, R>`, and recorded this very instantiation of
    // `shim` beside them; `EntryId::call`'s contract guarantees the three
    // addresses were rebuilt in the same executable image. Function pointers
    // and `usize` have the same size on every supported target.
    let (target, body) = unsafe {
        (
            std::mem::transmute::<usize, fn(A) -> R>(target),
            std::mem::transmute::<usize, Body<A, R>>(body),
        )
    };
    body(target, input, fds)
}

impl EntryId {
    /// Names `target`, to be run through `body`.
    pub(crate) fn new<A, R>(target: fn(A) -> R, body: Body<A, R>) -> Self {
        EntryId {
            shim: offset_of(shim::<A, R> as Shim as usize),
            target: Self::target_offset(target),
            body: offset_of(body as usize),
        }
    }

    /// The offset [`new`](Self::new) records for `target`. The same in
    /// every crate of the executable that names a function with one
    /// definition, whereas `shim` and a body are generic: an optimised
    /// build instantiates them again in each crate that names them, each
    /// copy at its own address.
    pub(crate) fn target_offset<A, R>(target: fn(A) -> R) -> i64 {
        offset_of(target as usize)
    }

    /// The id as the 32-byte preamble that opens a start channel.
    pub(crate) fn preamble(self) -> [u8; PREAMBLE] {
        let mut out = [0u8; PREAMBLE];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[8..16].copy_from_slice(&self.shim.to_le_bytes());
        out[16..24].copy_from_slice(&self.target.to_le_bytes());
        out[24..].copy_from_slice(&self.body.to_le_bytes());
        out
    }

    /// The id back from a preamble; `None` if it is not one.
    fn from_preamble(b: &[u8; PREAMBLE]) -> Option<Self> {
        if b[..4] != MAGIC || b[4] != VERSION || b[5..8] != [0; 3] {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            i64::from_le_bytes(w)
        };
        Some(EntryId {
            shim: word(8),
            target: word(16),
            body: word(24),
        })
    }
}

/// Length of the preamble that opens every start channel.
pub(crate) const PREAMBLE: usize = 32;
const MAGIC: [u8; 4] = *b"MPST";
const VERSION: u8 = 1;

/// An entry received from the parent: callable, and impossible to build from
/// arbitrary bytes outside this module.
#[derive(Debug)]
pub(crate) struct Entry(EntryId);

impl Entry {
    /// Reads the preamble from a start channel.
    ///
    /// # Safety
    /// `read` must read from a channel that only this process's parent can
    /// write to, and that parent must run the same executable image (it
    /// forked this process, or re-executed `/proc/self/exe`).
    pub(crate) unsafe fn receive(read: impl FnOnce(&mut [u8; PREAMBLE]) -> bool) -> Option<Entry> {
        let mut buf = [0u8; PREAMBLE];
        if !read(&mut buf) {
            return None;
        }
        EntryId::from_preamble(&buf).map(Entry)
    }

    /// Calls the named function's body with `input`.
    pub(crate) fn call(&self, input: &[u8], fds: Vec<OwnedFd>) -> Reply {
        // SAFETY: an `Entry` exists only through `receive`, whose contract is
        // that the id was made by `EntryId::new` in the same executable image,
        // so `shim` rebuilds the address of a `shim::<A, R>` instantiation of
        // this image, whose type is `Shim`.
        let shim = unsafe { std::mem::transmute::<usize, Shim>(address_of(self.0.shim)) };
        shim(
            address_of(self.0.target),
            address_of(self.0.body),
            input,
            fds,
        )
    }
}

/// A child's end of a private link on which the process that started it
/// names functions for it to run, again and again (what a long-lived child
/// such as a pool worker reads its calls from).
///
/// Made only by [`CallLink::pair`], whose other end stays in the process
/// that called it, and sent only as part of a child's start argument,
/// which travels over the (authenticated) start channel to a child of the
/// same executable. So every preamble read from a `CallLink` was written by
/// a process of the same executable image, as [`Entry::receive`] requires.
#[derive(Debug)]
pub(crate) struct CallLink(OwnedFd);

impl CallLink {
    /// A connected pair: the parent's plain end and the child's link.
    pub(crate) fn pair() -> std::io::Result<(OwnedFd, CallLink)> {
        let (ours, theirs) = super::socket::stream_pair()?;
        Ok((ours, CallLink(theirs)))
    }

    /// The socket, to read and write frames on.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0)
    }

    /// The function named by `preamble`, read from this link.
    pub(crate) fn entry(&self, preamble: &[u8]) -> Option<Entry> {
        let bytes: &[u8; PREAMBLE] = preamble.try_into().ok()?;
        // SAFETY: the bytes came from this link. By the type's invariant
        // its other end was made by `CallLink::pair` in the process that
        // started us (running this same executable image, as the
        // authenticated start channel that carried the link proved). That
        // end is close-on-exec, so no spawned process inherits it, and is
        // tracked right after it is made, so a child forked since gets
        // `/dev/null` in its place. (A child forked by another thread in
        // the instant between the two would hold a copy; it runs this same
        // image, and could reach the copy only by guessing its number with
        // unsafe code.) So no peer can write to this link through anything
        // we share with it: no memory, no socket of ours leads to it.
        unsafe {
            Entry::receive(|buf| {
                *buf = *bytes;
                true
            })
        }
    }
}

impl serde::Serialize for CallLink {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::wire::handles::serialize_fd(self.fd(), s)
    }
}

// Decoding a `CallLink` from any descriptor is what makes the invariant
// above rest on its callers: it is decoded only as part of a child's start
// argument (`pool::worker::Setup`), which arrives over the authenticated
// start channel. Never decode one from a message a peer sent.
impl<'de> serde::Deserialize<'de> for CallLink {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::wire::handles::deserialize_fd(d).map(CallLink)
    }
}
