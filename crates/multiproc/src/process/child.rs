//! The child's side of the start protocol.
//!
//! A spawn or forkserver child reads, on its start channel: the 32-byte
//! preamble naming the function (read by the OS layer), a `META` frame with
//! its lineage, and an `ARGS` frame with the encoded argument. A fork child
//! has its closure already. Every child then sends back one reply: `OK`
//! with the encoded result, or `PANIC`, `RESULT_ENCODE` or `ARG_DECODE`
//! with what went wrong (one frame, or two when it is larger than
//! [`INLINE_REPLY`]), and exits: with code 0 after `OK`, with code 1
//! otherwise, as a Python child whose target raised does.

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
    /// Child → parent: a reply too large to send inline
    /// ([`INLINE_REPLY`](super::INLINE_REPLY)). Its payload is the reply's
    /// kind (one byte), its descriptors the reply's; a [`BODY`] frame
    /// follows.
    pub const DETACHED: u8 = 20;
    /// Child → parent: after [`DETACHED`], no payload and one descriptor,
    /// a memfd holding the reply's payload.
    pub const BODY: u8 = 21;
}

/// The largest reply frame (header included) a child sends inline.
///
/// The parent waits for the child's exit before it reads the reply (one
/// wake-up per join, not one for the reply and one for the exit), so a
/// child must never wait for the parent to read. On a Unix stream socket
/// whose sender has nothing unread, the kernel takes a first message of up
/// to half the send buffer less 64 bytes as one buffer without waiting,
/// whatever the buffer's size; the smallest send buffer it allows is 4608
/// bytes, so 2048 bytes always fit, and a second such message (the
/// [`kind::BODY`] after a [`kind::DETACHED`]) does too. A larger reply
/// travels in a memfd.
pub(crate) const INLINE_REPLY: usize = 2048;

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
        let report = codec::encode(report).unwrap_or_default();
        if *kind == kind::PANIC {
            // A process's reply channel, read after the exit.
            send_reply(fd.as_fd(), *kind, &report, &[]);
        } else {
            // A pool worker's link, which its scheduler reads throughout.
            let _ = frame::write(fd.as_fd(), *kind, &report, &[]);
        }
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
/// the hook's lock may be held by a thread that no longer exists), in the
/// forkserver before its loop (so that its children have it from birth),
/// and in spawn children. In any thread not running a child body it
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
        // Serialized once: a bare try first would serialize a result
        // that holds a handle twice, and a `Serialize` may not be pure.
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

pub(crate) fn failure(kind: u8, message: &str) -> Reply {
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
    // An argument that came with no descriptors holds no handle: decoded
    // bare, with no handle list pushed (in a forked child, a write to a
    // heap page it shares with its parent).
    let arg = if fds.is_empty() {
        handles::decode_bare::<A>(input)
    } else {
        handles::decode::<A>(input, fds)
    };
    match arg {
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
    let sent = send_reply(channel, kind, &payload, &borrowed);
    // The child exits next, which frees and closes them: a free here would
    // only write to heap pages it shares with its parent (under fork, each
    // a copy-on-write fault).
    std::mem::forget(borrowed);
    std::mem::forget((payload, fds));
    if sent == kind::OK { 0 } else { 1 }
}

/// Sends a reply without ever waiting for the parent to read it (see
/// [`INLINE_REPLY`]): inline if it fits, else as a [`kind::DETACHED`]
/// frame and a [`kind::BODY`] frame with the payload in a memfd. Returns
/// the kind sent: a reply whose memfd cannot be made becomes a
/// [`kind::RESULT_ENCODE`] saying so.
fn send_reply(channel: BorrowedFd<'_>, kind: u8, payload: &[u8], fds: &[BorrowedFd<'_>]) -> u8 {
    if frame::HEADER + payload.len() <= INLINE_REPLY {
        let _ = frame::write(channel, kind, payload, fds);
        return kind;
    }
    match sys::shm::memfd_with("multiproc-reply", &[payload]) {
        Ok(memfd) => {
            let _ = frame::write(channel, kind::DETACHED, &[kind], fds);
            let _ = frame::write(channel, kind::BODY, &[], &[memfd.as_fd()]);
            std::mem::forget(memfd);
            kind
        }
        Err(e) => {
            let why = format!(
                "the {} ({} bytes) could not be handed to the parent: {e}",
                if kind == kind::OK {
                    "result"
                } else {
                    "failure report"
                },
                payload.len()
            );
            // A panic stays a panic: its report, cut to fit inline.
            let (kind, message) = match codec::decode::<PanicReport>(payload) {
                Ok(report) if kind == kind::PANIC => (kind::PANIC, cut_to_fit(report, &why)),
                _ => {
                    let (kind, message, _) = failure(kind::RESULT_ENCODE, &why);
                    (kind, message)
                }
            };
            let _ = frame::write(channel, kind, &message, &[]);
            kind
        }
    }
}

/// A panic report without its backtrace, its message cut (at a character
/// boundary) so that the encoded report fits an inline reply, saying why.
fn cut_to_fit(report: PanicReport, why: &str) -> Vec<u8> {
    /// Longest location and reason kept (a location is `file:line:col`).
    const SHORT: usize = 256;
    /// The encoding's lengths and tags, and the " [cut: ]" around `why`.
    const OVERHEAD: usize = 64;
    let location = report.location.filter(|l| l.len() <= SHORT);
    let why: String = why.chars().take(SHORT / 4).collect();
    let budget = INLINE_REPLY
        - frame::HEADER
        - OVERHEAD
        - location.as_ref().map_or(0, String::len)
        - why.len();
    let mut message = report.message;
    if message.len() > budget {
        let mut end = budget;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    codec::encode(&PanicReport {
        message: format!("{message} [cut: {why}]"),
        location,
        backtrace: None,
    })
    .unwrap_or_default()
}

/// The reader of a child's replies: a child sends no frame larger than
/// [`INLINE_REPLY`], so a longer one is refused at its header.
pub(crate) fn reply_reader() -> frame::Reader {
    frame::Reader::new((INLINE_REPLY - frame::HEADER) as u64)
}

/// Reads a child's reply, once it has exited (see [`INLINE_REPLY`]): one
/// frame, or a [`kind::DETACHED`] frame and its [`kind::BODY`] put back
/// together. The memfd is copied out, never mapped: the child may still
/// change it.
pub(crate) fn read_reply(
    reader: &mut frame::Reader,
    channel: BorrowedFd<'_>,
    extra: &[BorrowedFd<'_>],
    deadline: Option<std::time::Instant>,
) -> Result<frame::Step, crate::wire::FrameError> {
    use crate::wire::FrameError;
    // The child has exited: its frames are there, read them before polling.
    let next = |reader: &mut frame::Reader| match reader.read_now(channel)? {
        Some(f) => Ok(frame::Step::Frame(f)),
        None => reader.read(channel, extra, deadline),
    };
    let head = match next(reader)? {
        frame::Step::Frame(f) if f.kind == kind::DETACHED => f,
        other => return Ok(other),
    };
    let [inner] = head.payload[..] else {
        return Err(FrameError::Garbage(format!(
            "a detached reply with {} bytes where its kind (1 byte) was due",
            head.payload.len()
        )));
    };
    if inner == kind::DETACHED || inner == kind::BODY {
        return Err(FrameError::Garbage(format!(
            "a detached reply of kind {inner}"
        )));
    }
    let body = match next(reader)? {
        frame::Step::Frame(f) => f,
        // The child has exited: the body is there or never comes.
        frame::Step::TimedOut => {
            return Err(FrameError::Garbage(
                "a detached reply without its body".into(),
            ));
        }
    };
    let [memfd] = &body.fds[..] else {
        return Err(FrameError::Garbage(format!(
            "a reply body with {} descriptors where one memfd was due",
            body.fds.len()
        )));
    };
    if body.kind != kind::BODY || !body.payload.is_empty() {
        return Err(FrameError::Garbage(format!(
            "a frame of kind {} with {} bytes where a reply body was due",
            body.kind,
            body.payload.len()
        )));
    }
    let payload = sys::shm::read_memfd(memfd.as_fd())
        .map_err(|e| FrameError::Garbage(format!("the reply's memfd could not be read: {e}")))?;
    Ok(frame::Step::Frame(frame::Frame {
        kind: inner,
        payload,
        fds: head.fds,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FrameError;
    use std::time::{Duration, Instant};

    fn read(ours: &OwnedFd) -> Result<frame::Frame, FrameError> {
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        match read_reply(&mut reply_reader(), ours.as_fd(), &[], deadline)? {
            frame::Step::Frame(f) => Ok(f),
            frame::Step::TimedOut => panic!("timed out"),
        }
    }

    /// A frame as a child writes it: kind, payload, descriptors.
    type Forged<'a> = (u8, &'a [u8], &'a [BorrowedFd<'a>]);

    /// Writes `frames` as a child would, closes its end, and reads the reply.
    fn forged(frames: &[Forged<'_>]) -> Result<frame::Frame, FrameError> {
        let (ours, theirs) = sys::socket::stream_pair().unwrap();
        for (kind, payload, fds) in frames {
            frame::write(theirs.as_fd(), *kind, payload, fds).unwrap();
        }
        drop(theirs);
        read(&ours)
    }

    #[test]
    fn replies_of_every_size_come_back_whole_and_never_wait() {
        let (_, extra) = sys::socket::stream_pair().unwrap();
        for len in [0, 1, INLINE_REPLY - frame::HEADER, INLINE_REPLY, 1 << 20] {
            let (ours, theirs) = sys::socket::stream_pair().unwrap();
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            // Nobody reads while the child sends: a reply that waited for
            // a reader would hang here.
            let sent = send_reply(theirs.as_fd(), kind::OK, &payload, &[extra.as_fd()]);
            assert_eq!(sent, kind::OK);
            drop(theirs);
            let f = read(&ours).unwrap();
            assert_eq!((f.kind, f.payload.len(), f.fds.len()), (kind::OK, len, 1));
            assert_eq!(f.payload, payload);
        }
    }

    #[test]
    fn a_panic_report_cut_to_fit_stays_a_panic_inline() {
        for (message, location) in [
            ("é".repeat(5000), Some("src/x.rs:1:2".to_string())),
            ("short".to_string(), Some("l".repeat(10_000))),
            (String::new(), None),
        ] {
            let bytes = cut_to_fit(
                PanicReport {
                    message: message.clone(),
                    location,
                    backtrace: Some("b".repeat(50_000)),
                },
                &"w".repeat(1000),
            );
            assert!(
                frame::HEADER + bytes.len() <= INLINE_REPLY,
                "{}",
                bytes.len()
            );
            let back: PanicReport = codec::decode(&bytes).unwrap();
            assert!(back.backtrace.is_none());
            assert!(back.message.contains("[cut: "), "{}", back.message);
            let kept = back.message.split(" [cut: ").next().unwrap();
            assert!(message.starts_with(kept));
        }
    }

    #[test]
    fn forged_detached_replies_are_garbage() {
        let memfd = sys::shm::memfd_with("multiproc-test", &[b"hello"]).unwrap();
        let (pipe_r, _pipe_w) = sys::socket::stream_pair().unwrap();
        /// What a case is, and its frames (with owned descriptor lists).
        type Case<'a> = (&'static str, Vec<(u8, &'a [u8], Vec<BorrowedFd<'a>>)>);
        let cases: Vec<Case<'_>> = vec![
            ("two kind bytes", vec![(kind::DETACHED, &[16, 16], vec![])]),
            ("no kind byte", vec![(kind::DETACHED, &[], vec![])]),
            (
                "a detached body",
                vec![
                    (kind::DETACHED, &[kind::BODY], vec![]),
                    (kind::BODY, &[], vec![memfd.as_fd()]),
                ],
            ),
            (
                "a body without its memfd",
                vec![
                    (kind::DETACHED, &[kind::OK], vec![]),
                    (kind::BODY, &[], vec![]),
                ],
            ),
            (
                "a body with bytes",
                vec![
                    (kind::DETACHED, &[kind::OK], vec![]),
                    (kind::BODY, b"x", vec![memfd.as_fd()]),
                ],
            ),
            (
                "a body with two descriptors",
                vec![
                    (kind::DETACHED, &[kind::OK], vec![]),
                    (kind::BODY, &[], vec![memfd.as_fd(), memfd.as_fd()]),
                ],
            ),
            (
                "another kind where the body was due",
                vec![
                    (kind::DETACHED, &[kind::OK], vec![]),
                    (kind::OK, &[], vec![memfd.as_fd()]),
                ],
            ),
            (
                "a socket where the memfd was due",
                vec![
                    (kind::DETACHED, &[kind::OK], vec![]),
                    (kind::BODY, &[], vec![pipe_r.as_fd()]),
                ],
            ),
        ];
        for (what, frames) in cases {
            let frames: Vec<Forged<'_>> = frames.iter().map(|(k, p, f)| (*k, *p, &f[..])).collect();
            match forged(&frames) {
                Err(FrameError::Garbage(_)) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
        // A memfd of holes (size set, nothing written): refused before
        // anything is allocated for it.
        let sparse = sys::shm::memfd_with("multiproc-test", &[]).unwrap();
        rustix::fs::ftruncate(&sparse, 1 << 30).unwrap();
        match forged(&[
            (kind::DETACHED, &[kind::OK], &[]),
            (kind::BODY, &[], &[sparse.as_fd()]),
        ]) {
            Err(FrameError::Garbage(_)) => {}
            other => panic!("a sparse memfd: {other:?}"),
        }
        // An inline frame longer than a child ever sends: refused at its
        // header, before its bytes are read.
        match forged(&[(kind::OK, &[0; INLINE_REPLY], &[])]) {
            Err(FrameError::TooLarge { .. }) => {}
            other => panic!("a long inline reply: {other:?}"),
        }
        // A child that died between its two frames: no result.
        match forged(&[(kind::DETACHED, &[kind::OK], &[])]) {
            Err(FrameError::Closed) => {}
            other => panic!("a detached reply without its body: {other:?}"),
        }
        // The well-formed pair, for contrast.
        let f = forged(&[
            (kind::DETACHED, &[kind::PANIC], &[]),
            (kind::BODY, &[], &[memfd.as_fd()]),
        ])
        .unwrap();
        assert_eq!((f.kind, &f.payload[..]), (kind::PANIC, &b"hello"[..]));
    }
}
