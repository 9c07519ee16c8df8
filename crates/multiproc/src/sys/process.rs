//! Creating, watching, signalling and reaping processes.

use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use rustix::process::{self as rp, Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

/// How a process ended, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawExit {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal ended it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
}

/// The current process id.
pub(crate) fn pid() -> i32 {
    // Cached per process (`futex::pid`, refreshed in a fork child): one
    // way to ask, and no system call on every start.
    super::futex::pid() as i32
}

/// The parent's process id, if it has one.
pub(crate) fn parent_pid() -> Option<i32> {
    rp::getppid().map(|p| p.as_raw_nonzero().get())
}

/// Whether the calling thread is the process's main thread (whose id is
/// the process id). Both ids are cached, so this asks the kernel nothing
/// after the first call of a thread.
pub(crate) fn is_main_thread() -> bool {
    super::futex::tid() == super::futex::pid()
}

fn to_pid(pid: i32) -> io::Result<Pid> {
    Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Opens a pidfd: a handle on a process that cannot be confused with a later
/// process reusing the same number.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    Ok(rp::pidfd_open(to_pid(pid)?, PidfdFlags::empty())?)
}

/// Sends `signal` to the process behind `pidfd`.
///
/// Fails with `ESRCH` once the process has exited; it never reaches another
/// process that took the same number.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    let sig = Signal::from_named_raw(signal)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown signal number"))?;
    Ok(rp::pidfd_send_signal(pidfd, sig)?)
}

fn decode(status: rp::WaitIdStatus) -> RawExit {
    if let Some(code) = status.exit_status() {
        RawExit::Exited(code)
    } else {
        RawExit::Signaled {
            signal: status.terminating_signal().unwrap_or(0),
            core_dumped: status.dumped(),
        }
    }
}

/// Reaps the child behind `pidfd` if it has exited; `None` while it runs.
pub(crate) fn reap_nohang(pidfd: BorrowedFd<'_>) -> io::Result<Option<RawExit>> {
    loop {
        match rp::waitid(
            WaitId::PidFd(pidfd),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(status) => return Ok(status.filter(|s| s.raw_signo() != 0).map(decode)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for the child behind `pidfd` to exit, and reaps it: one system
/// call where polling the pidfd, then reaping, makes two or three.
pub(crate) fn reap_blocking(pidfd: BorrowedFd<'_>) -> io::Result<RawExit> {
    loop {
        match rp::waitid(WaitId::PidFd(pidfd), WaitIdOptions::EXITED) {
            Ok(Some(status)) if status.raw_signo() != 0 => return Ok(decode(status)),
            // Without WNOHANG the kernel reports only an exit; anything
            // else is asked again.
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks the kernel to SIGKILL this process when the thread that created it
/// ends, then checks that the creator did not end already. Returns false if
/// it did (the caller should exit at once). Inlined: a forked child runs it
/// first, and a call elsewhere in the code would be one more page fault.
#[inline]
pub(crate) fn die_with_parent(expected_parent: i32) -> bool {
    if rp::set_parent_process_death_signal(Some(Signal::KILL)).is_err() {
        return false;
    }
    parent_pid() == Some(expected_parent)
}

/// In a child just forked from the (single-threaded) forkserver, before
/// any user code: moves to the parent's directory `cwd` and replaces the
/// environment with the parent's `env`.
pub(crate) fn adopt_surroundings(cwd: &[u8], env: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    std::env::set_current_dir(OsStr::from_bytes(cwd))?;
    let valid = |k: &[u8], v: &[u8]| {
        !k.is_empty() && !k.contains(&b'=') && !k.contains(&0) && !v.contains(&0)
    };
    let keep: std::collections::HashSet<&[u8]> = env.iter().map(|(k, _)| k.as_slice()).collect();
    let stale: Vec<_> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| !keep.contains(k.as_bytes()))
        .collect();
    for k in stale {
        // SAFETY: this process has one thread (a child of the
        // single-threaded forkserver, which runs no user code before this
        // call), so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(k) };
    }
    for (k, v) in env.iter().filter(|(k, v)| valid(k, v)) {
        // SAFETY: as above; the key and value hold no `=` or NUL (checked).
        unsafe { std::env::set_var(OsStr::from_bytes(k), OsStr::from_bytes(v)) };
    }
    Ok(())
}

/// Flushes Rust's standard output and error streams. Takes their locks, so
/// a child forked from a multi-threaded parent must not call it.
pub(crate) fn flush_std_streams() {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
}

/// Writes to descriptor 2 without taking any lock.
pub(crate) fn write_stderr_raw(bytes: &[u8]) {
    // SAFETY: fd 2 is borrowed only for this call; if it is closed the
    // write fails harmlessly.
    let fd = unsafe { BorrowedFd::borrow_raw(2) };
    let _ = rustix::io::write(fd, bytes);
}

/// Number of threads in this process, from `/proc/self/stat`: an open, one
/// read into a buffer on the stack and a close (`read_to_string` made nine
/// system calls of it, on every fork start).
pub(crate) fn thread_count() -> Option<usize> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        "/proc/self/stat",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    // The line is a few hundred bytes: 52 fields of at most 20 digits and
    // a command name of at most 64 bytes.
    let mut buf = [0u8; 2048];
    let n = rustix::io::read(&fd, &mut buf).ok()?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    // The command name may hold spaces and parentheses: count from the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(17)?.parse().ok()
}

/// Whether this process certainly has one thread, the caller, for a fork
/// about to be made from the main thread: then the child may take the
/// standard streams' locks. `false` when there may be others.
///
/// glibc's `__libc_single_threaded` (2.32 and later) answers without a
/// system call: it stays true until the first `pthread_create`. Once it is
/// false (threads were started, and may have ended since), or without it,
/// `/proc` counts the threads. A thread started by a raw `clone` system call,
/// which glibc does not see, would be missed: the child could then block on
/// a lock that thread held, never corrupt memory.
pub(crate) fn surely_single_threaded() -> bool {
    use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
    static FLAG: AtomicPtr<AtomicU8> = AtomicPtr::new(std::ptr::null_mut());
    // A dangling-but-non-null marker would do; `1 as *mut` means "looked up,
    // not found".
    let not_found = std::ptr::without_provenance_mut::<AtomicU8>(1);
    let mut flag = FLAG.load(Ordering::Relaxed);
    if flag.is_null() {
        // SAFETY: `dlsym` with `RTLD_DEFAULT` and a NUL-terminated name
        // only looks the symbol up.
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__libc_single_threaded".as_ptr()) };
        flag = if found.is_null() {
            not_found
        } else {
            found.cast()
        };
        FLAG.store(flag, Ordering::Relaxed);
    }
    if flag != not_found {
        // SAFETY: `__libc_single_threaded` is a `char` glibc defines for the
        // life of the process; a byte is read atomically (glibc writes it,
        // once, before it creates the first thread).
        if unsafe { &*flag }.load(Ordering::Relaxed) != 0 {
            return true;
        }
    }
    thread_count() == Some(1)
}

/// Ends the process at once, without running `atexit` handlers or
/// destructors inherited from a forked parent, and without flushing (see
/// [`flush_std_streams`]).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and never returns; skipping atexit
    // handlers is the point (a forked child must not run its parent's).
    unsafe { libc::_exit(code) }
}

/// Forks. The child runs `body` and exits with the code it returns; it never
/// returns into the caller's stack. Returns the child's pid to the parent.
///
/// The child arranges to be SIGKILLed when the calling thread ends, so call
/// this from a thread that lives as long as the process (the launcher).
///
/// Forking a process that has other threads copies only the calling thread:
/// locks those threads held stay locked in the child. That can deadlock the
/// child, never corrupt memory: glibc makes `malloc` fork-safe.
pub(crate) fn fork_child(body: impl FnOnce() -> i32) -> io::Result<i32> {
    let parent = pid();
    // SAFETY: `fork` has no memory-safety preconditions of its own. In the
    // child we never return to the caller's frames: `body` runs under
    // `catch_unwind` and every path ends in `_exit`.
    let ret = unsafe { libc::fork() };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            if !die_with_parent(parent) {
                exit_now(1);
            }
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
            exit_now(code)
        }
        child => Ok(child),
    }
}

/// Forks a child that only calls `_exit(0)`, and reaps it: the floor of a
/// fork start, which the benchmark measures beside ours.
#[cfg(feature = "bench-internals")]
pub(crate) fn bare_fork_exit_wait() -> io::Result<()> {
    // SAFETY: the child calls nothing but `_exit`, which is
    // async-signal-safe, so it is valid after a fork of any process.
    let ret = unsafe { libc::fork() };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => exit_now(0),
        child => loop {
            match rp::waitpid(Pid::from_raw(child), rp::WaitOptions::empty()) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        },
    }
}

/// Forks a forkserver worker: the child closes the server's descriptors in
/// `close`, restores the default SIGINT action, then serves `channel`, a
/// start channel the server received from a client over its private control
/// socket.
pub(crate) fn fork_worker(channel: OwnedFd, close: &[BorrowedFd<'_>]) -> io::Result<i32> {
    let server = pid();
    fork_child(move || {
        for fd in close {
            // SAFETY: this is the forked child, which ends in `_exit` without
            // returning to the frames that own these descriptors, so nothing
            // will use or close them again.
            unsafe { libc::close(fd.as_raw_fd()) };
        }
        ignore_interrupts(false);
        super::boot::serve_forked_channel(channel, server)
    })
}

/// Releases, in a forked child, what the parent's handles' descriptors
/// refer to (a socket, a memfd), without freeing their numbers: each is
/// replaced by `/dev/null` (`dup3` onto the same number). The objects that
/// own these numbers may still be reachable in the child (a handle kept in
/// a `static`), and will close them when dropped: were the numbers freed,
/// the child's next descriptors (the handles of its argument) would land on
/// them, and two owners would share, then double-close, one descriptor.
///
/// Such a stale handle then reads end of file and writes into nothing. If
/// `/dev/null` cannot be opened, the descriptors are left as they are.
pub(crate) fn release_inherited_handles(fds: impl IntoIterator<Item = RawFd>) {
    let mut fds = fds.into_iter().peekable();
    if fds.peek().is_none() {
        return;
    }
    let Ok(null) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return;
    };
    for fd in fds {
        if fd == null.as_raw_fd() {
            continue;
        }
        // SAFETY: dup3 atomically replaces what number `fd` refers to and
        // keeps the number open, so whichever object owns `fd` still owns an
        // open descriptor (now `/dev/null`), and no other object can be
        // given that number meanwhile: nothing is invalidated or aliased.
        // (The registry was locked across the fork and handles leave it
        // before they close, so every number here was open; were one not,
        // it would only be taken by an unowned `/dev/null`.)
        unsafe { libc::dup3(null.as_raw_fd(), fd, libc::O_CLOEXEC) };
    }
}

/// Ignores SIGINT (`true`), or restores its default action (`false`). A
/// terminal's Ctrl-C reaches the whole foreground process group; the
/// forkserver leaves it to its parent to decide what to stop.
pub(crate) fn ignore_interrupts(ignore: bool) {
    let action = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: installing SIG_IGN or SIG_DFL runs no handler code of ours.
    unsafe { libc::signal(libc::SIGINT, action) };
}

/// Re-executes this very binary (`/proc/self/exe`) with `fd` placed at
/// descriptor `target_fd` and `env` added to the environment. Uses
/// `posix_spawn`, a vfork-style clone whose cost does not grow with the
/// parent's memory.
pub(crate) fn spawn_self(
    fd: BorrowedFd<'_>,
    target_fd: RawFd,
    argv1: &str,
    env: (&str, &str),
) -> io::Result<i32> {
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
    };
    let path = cstr(b"/proc/self/exe")?;
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsStr::new("multiproc").to_owned());
    let argv_owned = [cstr(argv0.as_bytes())?, cstr(argv1.as_bytes())?];
    let mut envp_owned = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k.as_bytes() == env.0.as_bytes() {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp_owned.push(cstr(&kv)?);
    }
    envp_owned.push(cstr(format!("{}={}", env.0, env.1).as_bytes())?);
    let mut argv: Vec<*mut libc::c_char> =
        argv_owned.iter().map(|s| s.as_ptr() as *mut _).collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> =
        envp_owned.iter().map(|s| s.as_ptr() as *mut _).collect();
    envp.push(std::ptr::null_mut());

    // dup2(x, x) may keep FD_CLOEXEC, so hand over a copy that is certainly
    // not `target_fd` itself.
    let tmp = rustix::io::fcntl_dupfd_cloexec(fd, target_fd + 1)?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: the attribute and file-action objects are initialised before
    // use and destroyed on every path; all pointers (path, argv, envp) point
    // to NUL-terminated strings in `argv_owned`/`envp_owned`, which outlive
    // the call; both arrays end with a null pointer.
    let rc = unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut actions);
        libc::posix_spawnattr_init(&mut attr);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::posix_spawnattr_setsigmask(&mut attr, &empty);
        libc::posix_spawnattr_setflags(&mut attr, libc::POSIX_SPAWN_SETSIGMASK as libc::c_short);
        libc::posix_spawn_file_actions_adddup2(&mut actions, tmp.as_raw_fd(), target_fd);
        let rc = libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &actions,
            &attr,
            argv.as_ptr(),
            envp.as_ptr(),
        );
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        rc
    };
    drop(tmp);
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(pid)
}

/// Takes ownership of a descriptor this process inherited at a known number,
/// and marks it close-on-exec. Returns `None` unless `fd` is open.
///
/// # Safety
/// Nothing else in this process may own descriptor `fd` (true for the one a
/// parent placed for the boot code, before `main` runs).
pub(crate) unsafe fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD reads flags only and is valid for any integer.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: the descriptor is open (checked above) and, by the caller's
    // contract, nobody else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = rustix::io::fcntl_setfd(owned.as_fd(), rustix::io::FdFlags::CLOEXEC);
    Some(owned)
}

/// Threads runnable on the whole machine now (the fourth field of
/// `/proc/loadavg`, before its slash), if it can be read.
fn runnable_now() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Moves the calling thread off processor `cpu`, which it shares with a
/// peer (both runnable there), to the next processor its affinity allows,
/// if the machine has one to spare: no more runnable threads than
/// processors, counting these two, so that one processor at least idles.
/// Restores the affinity at once (the scheduler leaves a thread where it
/// runs). True if it moved.
pub(crate) fn move_off_cpu(cpu: usize) -> bool {
    use rustix::thread::{CpuSet, sched_getaffinity};
    if runnable_now().is_none_or(|n| n > cpu_count()) {
        return false;
    }
    let Ok(mask) = sched_getaffinity(None) else {
        return false;
    };
    let Some(to) = (1..CpuSet::MAX_CPU)
        .map(|i| (cpu + i) % CpuSet::MAX_CPU)
        .find(|&c| mask.is_set(c))
        .filter(|&c| c != cpu)
    else {
        return false;
    };
    hop(to, &mask)
}

/// Moves the calling thread onto processor `to`, where its peer runs or
/// last ran, if the machine has no processor to spare (more runnable
/// threads, machine-wide, than the processors this process may use),
/// `to` is one its affinity allows, and the thread runs elsewhere.
/// Restores the affinity at once. True if it moved.
pub(crate) fn move_onto_cpu(to: usize) -> bool {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_getcpu};
    if to >= CpuSet::MAX_CPU || sched_getcpu() == to {
        return false;
    }
    if runnable_now().is_none_or(|n| n <= cpu_count()) {
        return false;
    }
    match sched_getaffinity(None) {
        Ok(mask) if mask.is_set(to) => hop(to, &mask),
        _ => false,
    }
}

/// Moves the calling thread to processor `to` (in `mask`, its affinity),
/// then gives it `mask` back, unless something else (another thread, or
/// `taskset`) changed the affinity meanwhile: theirs stands. That is best
/// effort: there is no compare-and-set of an affinity, so a change made
/// between the read of `mask` and the move, or between the check and the
/// restore, is undone. If it cannot be given back (a cpuset changed), the
/// kernel has put the thread where its cpuset allows. True if it moved.
fn hop(to: usize, mask: &rustix::thread::CpuSet) -> bool {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    let mut one = CpuSet::new();
    one.set(to);
    if sched_setaffinity(None, &one).is_err() {
        return false;
    }
    if sched_getaffinity(None).is_ok_and(|now| now == one) {
        let _ = sched_setaffinity(None, mask);
    }
    true
}

/// Number of CPUs this process may use: the affinity mask, capped by a cgroup
/// CPU quota when one is set (what the standard library computes).
pub(crate) fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Nanoseconds on the system-wide monotonic clock: comparable between
/// processes of one machine (unlike `Instant`, whose value is opaque).
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// [`monotonic_ns`] as of the last clock tick (a few milliseconds at
/// most behind): a read of the kernel's shared page, without the
/// time-stamp counter, for a hot path that only needs to know whether
/// milliseconds have passed (a virtual machine's precise clock costs
/// about 20 ns a read).
#[inline]
pub(crate) fn coarse_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// This process's resident memory in bytes, from `/proc/self/statm`.
pub(crate) fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Starts `cmd` so that the kernel kills it (SIGKILL) when the calling
/// thread ends: for helper programs (a test's `redis-server`, a local
/// cluster agent) that must not outlive their owner even if it is
/// SIGKILLed. Call it from a thread that lives as long as the process
/// (`process::launcher`).
#[cfg(feature = "cluster")]
pub(crate) fn spawn_dying_with_caller(
    cmd: &mut std::process::Command,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let parent = pid();
    // SAFETY: the closure runs in the child between fork and exec, and only
    // makes two system calls through rustix (prctl, getppid) and builds an
    // `io::Error` from a constant kind on failure: no allocation, no lock,
    // nothing that is unsafe after fork in a multi-threaded parent.
    unsafe {
        cmd.pre_exec(move || {
            rp::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have ended before the signal was armed.
            if rp::getppid() != Pid::from_raw(parent) {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            Ok(())
        })
    };
    cmd.spawn()
}
