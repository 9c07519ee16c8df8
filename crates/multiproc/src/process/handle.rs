//! The public handle on a child process, and the builder that starts one.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Serialize, de::DeserializeOwned};

use super::child::{self, kind};
use super::error::{JoinError, JoinTimeoutError, PanicReport, StartError, TryJoinError};
use super::info::{self, Tracked};
use super::start::{self, Started};
use super::status::{ExitStatus, Signal};
use crate::sys;
use crate::sys::code::{Body, EntryId};
use crate::wire::{EncodeError, FrameError, codec, frame, handles};

/// The largest encoded argument that `spawn` decodes once in the parent,
/// to report a value postcard cannot decode before any child starts.
const TRY_DECODE_MAX: usize = 1 << 20;

/// How a child process is created. See `docs/start-methods.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StartMethod {
    /// Copy this process with `fork()`; the child runs the function (or a
    /// closure) directly. Fastest from a small, single-threaded parent.
    Fork,
    /// Run this executable again; the boot hook runs the function before
    /// `main`. Nothing of the parent's state is inherited.
    Spawn,
    /// Ask a single-threaded server (started with spawn on first use) to
    /// fork the child. Fork's speed with spawn's safety. The default.
    ForkServer,
}

impl StartMethod {
    /// The method's name as Python spells it: `fork`, `spawn`, `forkserver`.
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
        }
    }

    /// Every method, in a fixed order.
    pub const ALL: [StartMethod; 3] = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ];
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The text named no start method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown start method {0:?}: expected fork, spawn or forkserver")]
pub struct UnknownStartMethod(pub String);

impl FromStr for StartMethod {
    type Err = UnknownStartMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::ForkServer),
            other => Err(UnknownStartMethod(other.to_string())),
        }
    }
}

static DEFAULT_METHOD: AtomicU8 = AtomicU8::new(2);

/// Sets the start method used when a [`ProcessBuilder`] names none (Python's
/// `set_start_method`). May be called again; later processes use the new
/// one.
pub fn set_start_method(method: StartMethod) {
    let v = match method {
        StartMethod::Fork => 0,
        StartMethod::Spawn => 1,
        StartMethod::ForkServer => 2,
    };
    DEFAULT_METHOD.store(v, Ordering::Relaxed);
}

/// The start method used when a [`ProcessBuilder`] names none: `ForkServer` unless
/// [`set_start_method`] chose another.
pub fn get_start_method() -> StartMethod {
    match DEFAULT_METHOD.load(Ordering::Relaxed) {
        0 => StartMethod::Fork,
        1 => StartMethod::Spawn,
        _ => StartMethod::ForkServer,
    }
}

/// Configures a child process before starting it.
///
/// ```
/// use multiproc::{Process, StartMethod};
///
/// fn greet(who: String) -> String {
///     format!("hello, {who}")
/// }
///
/// let p = Process::builder()
///     .name("greeter")
///     .start_method(StartMethod::Spawn)
///     .spawn(greet, "world".to_string())?;
/// assert_eq!(p.name(), "greeter");
/// assert_eq!(p.join()?, "hello, world");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `spawn` or `fork` is called"]
pub struct ProcessBuilder {
    name: Option<String>,
    daemon: bool,
    method: Option<StartMethod>,
}

impl ProcessBuilder {
    /// A builder with the defaults: a generated name, not a daemon, the
    /// default start method.
    pub fn new() -> Self {
        ProcessBuilder::default()
    }

    /// Names the child (default `Process-N`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A daemon child is killed when its handle is dropped unjoined; any
    /// other child is waited for (as Python joins non-daemon children at
    /// exit). Either way no child outlives this process.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Chooses how the child is created (default: [`get_start_method`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Starts a child that runs `f(arg)` and returns its result.
    ///
    /// `f` is a function or a closure that captures nothing, and `arg` an
    /// owned value (see [`Process::spawn`] for the compiler errors met
    /// otherwise, and their fix). Under every
    /// start method `arg` is encoded and sent to the child, with the handles
    /// it holds (connections, ...): the child holds exactly the handles it
    /// was given. (A forked child closes the parent's other handles, so it
    /// cannot keep the parent's end of a pipe open by accident.)
    pub fn spawn<A, R>(self, f: fn(A) -> R, arg: A) -> Result<Process<R>, StartError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        // A value of a shape postcard encodes but cannot decode (an untagged
        // enum, a `serde_json::Value`) fails here, in the parent, rather than
        // in the child. Only values without handles, up to 1 MiB, are tried;
        // any other decode failure is the child's `ArgumentDecode`, as
        // before.
        let tried = handles::with_encoded_bare(&arg, false, |bytes| {
            if bytes.len() > TRY_DECODE_MAX {
                return None;
            }
            handles::shape_error::<A>(bytes)
        });
        if let Some(Some(message)) = tried {
            return Err(StartError::Encode(EncodeError {
                type_name: std::any::type_name::<A>(),
                message: format!("it would not decode in the child: {message}"),
            }));
        }
        self.spawn_with_body(f, child::body::<A, R>, &arg)
    }

    /// Starts a child that runs `body(target, encoded arg)`: the general
    /// form of [`spawn`](Self::spawn), for library code (the pool's
    /// workers) whose body decodes its own argument type `W` and whose
    /// result frame has type `Out`.
    pub(crate) fn spawn_with_body<A, R, W, Out>(
        self,
        f: fn(A) -> R,
        body: Body<A, R>,
        arg: &W,
    ) -> Result<Process<Out>, StartError>
    where
        A: 'static,
        R: 'static,
        W: Serialize + ?Sized,
    {
        let method = self.method.unwrap_or_else(get_start_method);
        if method != StartMethod::Fork && !sys::boot::hook_ran() {
            return Err(StartError::BootHookMissing);
        }
        // Under every method the handles in the argument travel over the
        // channel (with the argument, unless a fork child has it in its
        // copy of memory): a child holds exactly the handles it was given.
        let (args, arg_fds) = handles::encode(arg, Vec::new())?;
        let lineage = info::next_child(self.name.clone());
        let name = lineage.name.clone();
        let started = match method {
            StartMethod::Fork if arg_fds.is_empty() => {
                // The child has a copy of the encoded argument from birth:
                // nothing to send, no frame to read (three system calls
                // fewer per start).
                let body = move |_: BorrowedFd<'_>| {
                    let reply = body(f, &args, Vec::new());
                    // The child exits next: a free would only write to
                    // heap pages it shares with its parent.
                    std::mem::forget(args);
                    reply
                };
                let started = start::fork::start(lineage, body, true)?;
                return Ok(Process::new(started, name, self.daemon, method));
            }
            StartMethod::Fork => {
                // Its handles travel over the channel, so that the child
                // receives them as new descriptors of its own.
                let body = move |ch: BorrowedFd<'_>| child::forked_body(f, body, ch);
                start::fork::start(lineage, body, true)?
            }
            StartMethod::Spawn | StartMethod::ForkServer => {
                // A spawn child inherits the directory and environment
                // through exec; a forkserver child has the server's, so it
                // is sent this process's.
                let surroundings = (method == StartMethod::ForkServer)
                    .then(info::Surroundings::here)
                    .flatten();
                let meta = codec::encode(&(&lineage, &surroundings))?;
                let started = if method == StartMethod::Spawn {
                    start::spawn::start()?
                } else {
                    start::forkserver::start()?
                };
                let entry = EntryId::new::<A, R>(f, body);
                let ch = started.channel.as_fd();
                // A child that dies before reading its request shows up at
                // join time, with its exit status.
                let _ = sys::socket::send_all(ch, &[&entry.preamble()], &[])
                    .and_then(|()| frame::write(ch, kind::META, &meta, &[]));
                started
            }
        };
        let fds: Vec<_> = arg_fds.iter().map(AsFd::as_fd).collect();
        let _ = frame::write(started.channel.as_fd(), kind::ARGS, &args, &fds);
        Ok(Process::new(started, name, self.daemon, method))
    }

    /// Forks a child that runs the closure `f` and returns its result. Always
    /// uses the *fork* start method, whatever [`ProcessBuilder::start_method`] says:
    /// only a forked child has a copy of the closure's captures.
    ///
    /// The child inherits every descriptor of the parent, as in C and
    /// Python: if the parent keeps one end of a [`pipe`](crate::pipe) and
    /// the closure uses the other, the child holds both ends, and will not
    /// see the end of the stream when the parent drops its end. Pass
    /// connections through [`spawn`](Self::spawn)'s argument to avoid that.
    pub fn fork<F, R>(self, f: F) -> Result<Process<R>, StartError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.start_fork(f, StartMethod::Fork)
    }

    fn start_fork<F, R>(self, f: F, method: StartMethod) -> Result<Process<R>, StartError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let lineage = info::next_child(self.name);
        let name = lineage.name.clone();
        // `R` need not be `Send`: it is made and encoded inside the child.
        let body = move |_: BorrowedFd<'_>| child::encode_outcome(f);
        // The closure may hold any of the parent's handles: keep them all.
        let started = start::fork::start(lineage, body, false)?;
        Ok(Process::new(started, name, self.daemon, method))
    }
}

#[derive(Debug)]
struct Inner {
    started: Started,
    reader: frame::Reader,
    outcome: Option<Result<frame::Frame, FrameError>>,
    exit: Option<ExitStatus>,
    finished: bool,
}

/// A handle on a child process: wait for its result, check on it, stop it.
///
/// Dropping a handle whose child still runs waits for the child, unless the
/// child is a daemon (or the dropping thread is panicking): then the child
/// is killed. Either way it is reaped: no zombie, no orphan.
///
/// ```
/// use multiproc::Process;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let p = Process::spawn(square, 7)?;
/// assert_eq!(p.join()?, 49);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping a Process waits for the child to finish (a daemon's is killed): keep the handle, and join it later, to run children at the same time"]
pub struct Process<R> {
    inner: Box<Mutex<Inner>>,
    tracked: Arc<Tracked>,
    daemon: bool,
    method: StartMethod,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.tracked.name)
            .field("pid", &self.tracked.pid)
            .field("method", &self.method)
            .field("daemon", &self.daemon)
            .finish_non_exhaustive()
    }
}

impl Process<()> {
    /// A [`ProcessBuilder`] to name the child, pick its start method, or make it a
    /// daemon.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::new()
    }
}

impl<R: Serialize + DeserializeOwned + 'static> Process<R> {
    /// Starts a child that runs `f(arg)`, with the default start method.
    /// Python: `Process(target=f, args=(arg,)).start()`.
    ///
    /// Keep the handle: dropping it waits for the child (see [`Process`]),
    /// so `for x in xs { Process::spawn(f, x)?; }` would run the children
    /// one after another. Collect the handles and join them instead.
    ///
    /// `f` is a `fn` (or a closure that captures nothing) and `arg` an
    /// owned value ([Two compiler errors you may meet
    /// first](crate#two-compiler-errors-you-may-meet-first)):
    ///
    /// - *"expected fn pointer, found closure"* (E0308, "closures can only
    ///   be coerced to `fn` types if they do not capture any variables"):
    ///   the closure uses a variable of yours, which the child cannot see.
    ///   Pass it in `arg` instead (a tuple for several), or use
    ///   [`Process::fork`], whose closure may capture.
    /// - *"implementation of `Deserialize` is not general enough"*: `f`
    ///   takes a borrowed argument (`&str`, `&[u8]`). Take an owned one
    ///   (`String`, `Vec<u8>`).
    ///
    /// ```compile_fail,E0308
    /// let factor = 3u64;
    /// // error[E0308]: mismatched types: expected fn pointer, found closure
    /// let child = multiproc::Process::spawn(|x: u64| x * factor, 2);
    /// ```
    ///
    /// ```
    /// let factor = 3u64;
    /// let child = multiproc::Process::spawn(|(x, factor): (u64, u64)| x * factor, (2, factor))?;
    /// assert_eq!(child.join()?, 6);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn<A>(f: fn(A) -> R, arg: A) -> Result<Process<R>, StartError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        ProcessBuilder::new().spawn(f, arg)
    }

    /// Forks a child that runs the closure `f` (see [`ProcessBuilder::fork`]).
    pub fn fork<F>(f: F) -> Result<Process<R>, StartError>
    where
        F: FnOnce() -> R + Send + 'static,
    {
        ProcessBuilder::new().fork(f)
    }
}

impl<R> Process<R> {
    fn new(started: Started, name: String, daemon: bool, method: StartMethod) -> Self {
        let tracked = Arc::new(Tracked {
            name,
            pid: started.pid,
            pidfd: Arc::clone(&started.pidfd),
        });
        info::track(&tracked);
        Process {
            inner: Box::new(Mutex::new(Inner {
                started,
                reader: child::reply_reader(),
                outcome: None,
                exit: None,
                finished: false,
            })),
            tracked,
            daemon,
            method,
            _result: PhantomData,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.tracked.name
    }

    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.tracked.pid
    }

    /// How the child was started.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// Whether the child is a daemon (see [`ProcessBuilder::daemon`]).
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// Whether the child is still running.
    pub fn is_alive(&self) -> bool {
        let inner = self.lock();
        inner.exit.is_none()
            && !sys::socket::is_readable(inner.started.pidfd.as_fd()).unwrap_or(false)
    }

    /// How the child ended, or `None` while it runs (Python's `exitcode`).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut inner = self.lock();
        if inner.exit.is_none()
            && sys::socket::is_readable(inner.started.pidfd.as_fd()).unwrap_or(false)
        {
            let Inner { started, exit, .. } = &mut *inner;
            // The child has exited; its status is at most a moment away.
            let deadline = Some(Instant::now() + Duration::from_secs(5));
            if let Ok(Some(status)) = started.reaper.wait(started.pidfd.as_fd(), deadline) {
                *exit = Some(status);
            }
        }
        inner.exit
    }

    /// Sends SIGTERM (Python's `terminate`). The child may catch it.
    pub fn terminate(&self) -> std::io::Result<()> {
        self.signal(Signal::TERM)
    }

    /// Sends SIGKILL (Python's `kill`). The child cannot catch it.
    pub fn kill(&self) -> std::io::Result<()> {
        self.signal(Signal::KILL)
    }

    /// Sends `signal` to the child. Sending to a child that has already
    /// exited does nothing: a pidfd never reaches a process that reused the
    /// number.
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        match sys::process::pidfd_signal(self.tracked.pidfd.as_fd(), signal.0) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    /// Drives the child to its end or to `deadline`. `Ok(false)` on timeout.
    fn drive(&self, deadline: Option<Instant>) -> Result<bool, JoinError> {
        let mut inner = self.lock();
        let Inner {
            started,
            reader,
            outcome,
            exit,
            ..
        } = &mut *inner;
        if outcome.is_none() {
            // The child sends its reply without waiting for it to be read
            // (`child::INLINE_REPLY`): the reply is read once the child has
            // exited, which wakes this thread once per join, not twice.
            if exit.is_none() && !sys::socket::wait_readable_one(started.pidfd.as_fd(), deadline)? {
                return Ok(false);
            }
            let extra = [started.pidfd.as_fd()];
            match child::read_reply(reader, started.channel.as_fd(), &extra, deadline) {
                Ok(frame::Step::Frame(f)) => *outcome = Some(Ok(f)),
                Ok(frame::Step::TimedOut) => return Ok(false),
                Err(FrameError::Io(e)) => return Err(JoinError::Io(e)),
                Err(e) => {
                    if !matches!(e, FrameError::Closed | FrameError::Truncated { .. }) {
                        // It speaks garbage: it will not say anything useful.
                        let _ = sys::process::pidfd_signal(started.pidfd.as_fd(), libc::SIGKILL);
                    }
                    *outcome = Some(Err(e));
                }
            }
        }
        if exit.is_none() {
            match started.reaper.wait(started.pidfd.as_fd(), deadline)? {
                Some(status) => *exit = Some(status),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    fn take_result(&self) -> Result<R, JoinError>
    where
        R: DeserializeOwned,
    {
        let mut inner = self.lock();
        inner.finished = true;
        let exit = inner.exit.expect("driven to the end");
        match inner.outcome.take().expect("driven to the end") {
            Ok(f) => match f.kind {
                kind::OK => Ok(handles::decode::<R>(&f.payload, f.fds)?),
                kind::PANIC => Err(JoinError::Panicked(codec::decode::<PanicReport>(
                    &f.payload,
                )?)),
                kind::RESULT_ENCODE => Err(JoinError::ResultEncode(
                    codec::decode(&f.payload).unwrap_or_default(),
                )),
                kind::ARG_DECODE => Err(JoinError::ArgumentDecode(
                    codec::decode(&f.payload).unwrap_or_default(),
                )),
                other => Err(JoinError::Protocol(FrameError::Garbage(format!(
                    "unexpected frame kind {other}"
                )))),
            },
            Err(FrameError::Closed | FrameError::Truncated { .. }) => Err(match exit {
                ExitStatus::Exited(code) => JoinError::Exited { code },
                ExitStatus::Signaled {
                    signal,
                    core_dumped,
                } => JoinError::Signaled {
                    signal,
                    core_dumped,
                },
            }),
            Err(e) => Err(JoinError::Protocol(e)),
        }
    }

    /// Waits for the child to finish and returns its result (Python's
    /// `join`, plus the return value Python does not give).
    pub fn join(self) -> Result<R, JoinError>
    where
        R: DeserializeOwned,
    {
        self.drive(None)?;
        self.take_result()
    }

    /// Like [`join`](Self::join), but gives up at `timeout` and hands the
    /// handle back in [`JoinTimeoutError::Timeout`].
    pub fn join_timeout(self, timeout: Duration) -> Result<R, JoinTimeoutError<R>>
    where
        R: DeserializeOwned,
    {
        match self.drive(crate::shm::wait::after(timeout)) {
            Ok(true) => Ok(self.take_result()?),
            Ok(false) => Err(JoinTimeoutError::Timeout(self)),
            Err(e) => Err(JoinTimeoutError::Failed(e)),
        }
    }

    /// Returns the result if the child has finished, or the handle back in
    /// [`TryJoinError::Running`] without waiting.
    pub fn try_join(self) -> Result<R, TryJoinError<R>>
    where
        R: DeserializeOwned,
    {
        match self.drive(Some(Instant::now())) {
            Ok(true) => Ok(self.take_result()?),
            Ok(false) => Err(TryJoinError::Running(self)),
            Err(e) => Err(TryJoinError::Failed(e)),
        }
    }
}

impl<R> Process<R> {
    /// Copies of the descriptors that become readable when a `try_join`
    /// may get further: the pidfd until the child has exited (its reply is
    /// read after that), then what tells the exit status (the pidfd, or
    /// the forkserver's socket).
    fn readiness_fds(&self) -> Vec<std::os::fd::OwnedFd> {
        let inner = self.lock();
        let started = &inner.started;
        let fds: Vec<std::os::fd::BorrowedFd<'_>> = if inner.outcome.is_none() {
            // The reply is read after the exit.
            vec![started.pidfd.as_fd()]
        } else {
            match &started.reaper {
                start::Reaper::Direct => vec![started.pidfd.as_fd()],
                start::Reaper::Server(fd) => vec![fd.as_fd()],
            }
        };
        fds.into_iter()
            .filter_map(|fd| fd.try_clone_to_owned().ok())
            .collect()
    }

    /// [`join`](Self::join), as a future: waits without blocking the
    /// thread (see `docs/async.md`). Dropping it before it is ready drops
    /// the handle as [`Process`]'s `Drop` does (a daemon is killed, any
    /// child reaped), on a waiter thread rather than the polling one.
    ///
    /// ```
    /// fn add((a, b): (u32, u32)) -> u32 {
    ///     a + b
    /// }
    ///
    /// let child = multiproc::Process::spawn(add, (2, 3))?;
    /// assert_eq!(futures::executor::block_on(child.join_async())?, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join_async(self) -> impl Future<Output = Result<R, JoinError>> + Send
    where
        R: DeserializeOwned + 'static,
    {
        /// The handle while the join goes on; dropped elsewhere if the
        /// future is.
        struct Held<R: 'static>(Option<Process<R>>);
        impl<R: 'static> Drop for Held<R> {
            fn drop(&mut self) {
                if let Some(p) = self.0.take() {
                    // Dropping an unfinished handle waits for its child.
                    if let Err(job) = crate::aio::run(Box::new(move || drop(p))) {
                        drop(job);
                    }
                }
            }
        }
        let mut held = Held(Some(self));
        let mut waiting = crate::aio::Waiting::new();
        std::future::poll_fn(move |cx| {
            let Some(p) = held.0.take() else {
                return std::task::Poll::Pending;
            };
            match p.try_join() {
                Ok(v) => std::task::Poll::Ready(Ok(v)),
                Err(TryJoinError::Failed(e)) => std::task::Poll::Ready(Err(e)),
                Err(TryJoinError::Running(p)) => {
                    let p = held.0.insert(p);
                    waiting.sleep(cx, || {
                        let fds = p.readiness_fds();
                        move |until: Instant, _: &crate::aio::Ticket| {
                            let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
                            let _ = sys::socket::wait_readable(&borrowed, Some(until));
                        }
                    })
                }
            }
        })
    }
}

/// How long `Drop` waits for a killed child to be reaped.
const REAP_AFTER_KILL: Duration = Duration::from_secs(10);

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        let finished = self.lock().finished;
        if finished {
            return;
        }
        let deadline = if self.daemon || std::thread::panicking() {
            let _ = self.kill();
            Some(Instant::now() + REAP_AFTER_KILL)
        } else {
            None
        };
        let mut inner = self.lock();
        let Inner { started, exit, .. } = &mut *inner;
        // No reply to drain first: a child never waits for its reply to be
        // read (`child::INLINE_REPLY`).
        if exit.is_none()
            && let Ok(None) = started.reaper.wait(started.pidfd.as_fd(), deadline)
        {
            let _ = sys::process::pidfd_signal(started.pidfd.as_fd(), libc::SIGKILL);
            let _ = started.reaper.wait(
                started.pidfd.as_fd(),
                Some(Instant::now() + REAP_AFTER_KILL),
            );
        }
    }
}

impl<R> crate::connection::Waitable for Process<R> {
    /// A process is ready for [`wait`](crate::wait) once it has exited
    /// (Python's `Process.sentinel`).
    fn wait_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.tracked.pidfd.as_fd()
    }
}
