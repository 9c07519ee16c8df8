//! The child's side of the start protocol.
//!
//! A spawn or forkserver child reads, on its start channel: the 32-byte
//! preamble naming the function (read by the OS layer), a `META` frame with
//! its lineage, and an `ARGS` frame with the encoded argument. A fork child
//! has its closure already. Every child then sends back exactly one frame:
//! `OK` with the encoded result, or `PANIC`, `RESULT_ENCODE` or
//! `ARG_DECODE` with what went wrong, and exits: with code 0 after `OK`,
//! with code 1 otherwise, as a Python child whose target raised does.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Serialize, de::DeserializeOwned};

use super::error::PanicReport;
use super::info::{self, Lineage};
use crate::sys;
use crate::sys::code::{Body, Entry, Reply};
use crate::sys::fork_local::ForkLocal;
use crate::wire::{codec, frame, handles};

/// Frame kinds of the start protocol.
pub(crate) mod kind {
    /// Parent → child: the child's [`Lineage`](super::Lineage).
    pub const META: u8 = 1;
    /// Parent → child: the encoded argument.
    pub const ARGS: u8 = 2;
    /// Child → parent: the encoded result.
    pub const OK: u8 = 16;
    /// Child → parent: a [`PanicReport`](super::PanicReport).
    pub const PANIC: u8 = 17;
    /// Child → parent: why the result could not be encoded.
    pub const RESULT_ENCODE: u8 = 18;
    /// Child → parent: why the argument could not be decoded.
    pub const ARG_DECODE: u8 = 19;
}

thread_local! {
    static LAST_PANIC: RefCell<Option<PanicReport>> = const { RefCell::new(None) };
}

/// Where a panic's report goes before the process aborts, in programs
/// built with `panic = "abort"` (where no unwinding brings it back to the
/// code that would send it): a copy of the channel the parent reads, and
/// the frame kind it expects there.
static LAST_WORDS: ForkLocal<Option<(OwnedFd, u8)>> = ForkLocal::new(|| None);

/// Names the channel a panic's report is written to, as a frame of
/// `kind`, before an aborting panic ends the process. Does nothing (not
/// even a `dup`) when panics unwind: the report then travels the normal
/// way.
pub(crate) fn set_last_words(channel: BorrowedFd<'_>, kind: u8) {
    if !cfg!(panic = "abort") {
        return;
    }
    if let Ok(fd) = channel.try_clone_to_owned() {
        *LAST_WORDS.lock() = Some((fd, kind));
    }
}

/// Writes `report` where [`set_last_words`] said. A lock another thread
/// holds (a fork from a multi-threaded parent) is not waited for.
fn send_last_words(report: &PanicReport) {
    let Some(guard) = LAST_WORDS.try_lock() else {
        return;
    };
    if let Some((fd, kind)) = &*guard {
        let _ = frame::write(
            fd.as_fd(),
            *kind,
            &codec::encode(report).unwrap_or_default(),
            &[],
        );
    }
}

/// Set in a child forked from a multi-threaded parent: locks that another
/// thread held at the fork (stderr's, the backtrace printer's) stay locked
/// here, so the panic hook must not take them.
static LOCK_FREE_PANICS: AtomicBool = AtomicBool::new(false);

/// Marks this process as a child forked from a multi-threaded parent.
pub(crate) fn forked_from_threads() {
    LOCK_FREE_PANICS.store(true, Ordering::Relaxed);
}

/// Chains a hook in front of the current panic hook that keeps the panic's
/// message, location and backtrace for the parent. The previous hook still
/// runs, so the child prints the panic as any Rust thread does, except in
/// a [`quiet_body`], whose panics only the parent reports.
///
/// Installed in the parent before a fork (never in a forked child, where
/// the hook's lock may be held by a thread that no longer exists), and in
/// spawn and forkserver children. In any thread not running a child body it
/// only passes the panic on.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_BODY.with(|b| b.get()) {
                return previous(info);
            }
            let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "Box<dyn Any>".to_string()
            };
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            let lock_free = LOCK_FREE_PANICS.load(Ordering::Relaxed);
            let backtrace = if lock_free {
                None
            } else {
                let bt = std::backtrace::Backtrace::capture();
                (bt.status() == std::backtrace::BacktraceStatus::Captured).then(|| bt.to_string())
            };
            let line = format!(
                "process {} panicked at {}:\n{message}\n",
                sys::process::pid(),
                location.as_deref().unwrap_or("<unknown>")
            );
            let report = PanicReport {
                message,
                location,
                backtrace,
            };
            if cfg!(panic = "abort") {
                // The process ends when this hook returns: the report must
                // leave now.
                send_last_words(&report);
            }
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(report));
            if QUIET.with(|q| q.get()) {
                // The parent gets the report: a pool's worker does not
                // print it as well (as Python's Pool does not).
            } else if lock_free {
                sys::process::write_stderr_raw(line.as_bytes());
            } else {
                previous(info);
            }
        }));
    });
}

thread_local! {
    static IN_BODY: Cell<bool> = const { Cell::new(false) };
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, catching a panic, and encodes what happened as a result frame.
/// A result that holds handles (a `Connection`, say) takes their
/// descriptors along.
pub(crate) fn encode_outcome<R: Serialize>(f: impl FnOnce() -> R) -> Reply {
    match run_caught(f) {
        Ok(value) => match handles::encode(&value, Vec::new()) {
            Ok((bytes, fds)) => (kind::OK, bytes, fds),
            Err(e) => failure(kind::RESULT_ENCODE, &e.to_string()),
        },
        Err(report) => (
            kind::PANIC,
            codec::encode(&report).unwrap_or_default(),
            Vec::new(),
        ),
    }
}

/// Runs `f`, turning a panic into the report the panic hook kept (its
/// message, location and backtrace).
pub(crate) fn run_caught<R>(f: impl FnOnce() -> R) -> Result<R, PanicReport> {
    in_body(|| catch(f))
}

/// Runs `f` as user code whose panics are reported to the parent (see
/// [`catch`]).
pub(crate) fn in_body<R>(f: impl FnOnce() -> R) -> R {
    let was = IN_BODY.with(|b| b.replace(true));
    let out = f();
    IN_BODY.with(|b| b.set(was));
    out
}

/// As [`in_body`], but a panic in `f` is not printed: for code whose
/// panics the parent returns to its caller (a pool's tasks and
/// initializer), so that they are reported once, there.
pub(crate) fn quiet_body<R>(f: impl FnOnce() -> R) -> R {
    let was = QUIET.with(|q| q.replace(true));
    let out = in_body(f);
    QUIET.with(|q| q.set(was));
    out
}

/// Runs `f`, inside [`in_body`], turning a panic into its report.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, PanicReport> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| PanicReport {
                message: payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "Box<dyn Any>".into()),
                location: None,
                backtrace: None,
            })
    })
}

fn failure(kind: u8, message: &str) -> Reply {
    (kind, codec::encode(message).unwrap_or_default(), Vec::new())
}

/// The typed body of a spawn or forkserver child: decodes the argument (and
/// the handles that came with it) and calls the target. Named by an
/// [`EntryId`](crate::sys::code::EntryId).
pub(crate) fn body<A: DeserializeOwned, R: Serialize>(
    target: fn(A) -> R,
    input: &[u8],
    fds: Vec<OwnedFd>,
) -> Reply {
    match handles::decode::<A>(input, fds) {
        Ok(arg) => encode_outcome(move || target(arg)),
        Err(e) => failure(kind::ARG_DECODE, &e.to_string()),
    }
}

/// The body of a child forked to run `target`: reads the argument frame the
/// parent sends after the fork, then runs it like a spawned child would.
pub(crate) fn forked_body<A, R>(
    target: fn(A) -> R,
    body: Body<A, R>,
    channel: BorrowedFd<'_>,
) -> Reply {
    let mut reader = frame::Reader::new(u64::MAX);
    match reader.read(channel, &[], None) {
        Ok(frame::Step::Frame(f)) if f.kind == kind::ARGS => body(target, &f.payload, f.fds),
        _ => failure(kind::ARG_DECODE, "the parent sent no argument"),
    }
}

/// Sends the result frame, and returns the code the child exits with: 0
/// after a result, 1 after a failure (a panic, an argument or a result
/// that did not pass), as a Python child exits with 1 when its target
/// raises, so that the exit status alone (Python's `exitcode`) tells
/// them apart. A parent that has gone away is not an error here: the
/// child simply exits.
pub(crate) fn reply(channel: BorrowedFd<'_>, (kind, payload, fds): Reply) -> i32 {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let _ = frame::write(channel, kind, &payload, &borrowed);
    // The child exits next, which frees and closes them: a free here would
    // only write to heap pages it shares with its parent (under fork, each
    // a copy-on-write fault).
    std::mem::forget(borrowed);
    std::mem::forget((payload, fds));
    if kind == kind::OK { 0 } else { 1 }
}

/// Serves a start channel in a spawn or forkserver child; never returns.
pub(crate) fn serve(entry: Option<Entry>, channel: OwnedFd, parent: i32) -> ! {
    if !sys::process::die_with_parent(parent) {
        sys::process::exit_now(1);
    }
    // A fresh, single-threaded process: installing the hook here is safe.
    install_panic_hook();
    let Some(entry) = entry else {
        eprintln!("multiproc: a child received no valid start request");
        sys::process::exit_now(2);
    };
    let mut reader = frame::Reader::new(u64::MAX);
    let mut next = |want: u8| match reader.read(channel.as_fd(), &[], None) {
        Ok(frame::Step::Frame(f)) if f.kind == want => Some(f),
        _ => None,
    };
    let Some(meta) = next(kind::META) else {
        sys::process::exit_now(2)
    };
    let Some(args) = next(kind::ARGS) else {
        sys::process::exit_now(2)
    };
    let Ok((lineage, surroundings)) =
        codec::decode::<(Lineage, Option<info::Surroundings>)>(&meta.payload)
    else {
        sys::process::exit_now(2)
    };
    if let Some(s) = surroundings
        && let Err(e) = sys::process::adopt_surroundings(&s.cwd, &s.env)
    {
        eprintln!("multiproc: the child could not take its parent's directory: {e}");
        sys::process::exit_now(2)
    }
    info::become_child(lineage);
    set_last_words(channel.as_fd(), kind::PANIC);
    let out = entry.call(&args.payload, args.fds);
    let code = reply(channel.as_fd(), out);
    sys::process::flush_std_streams();
    sys::process::exit_now(code)
}
