//! The boot hook: code that runs before `main` in every executable that links
//! multiproc, and the authentication of the channel it boots from.
//!
//! A child started by the *spawn* method, and the *forkserver*, are this same
//! executable run again with `MULTIPROC_BOOT` in their environment. The hook
//! sees it and hands control to the process layer, which runs the requested
//! function (or serves fork requests) and exits: the child never reaches the
//! user's `main`, nor a test harness's. Without the variable the hook only
//! records that it ran, so that a parent can tell, before it starts a child,
//! that the child will boot correctly.
//!
//! # Who may make this process boot
//!
//! The channel names code to run (offsets of functions, `sys::code`), and
//! nothing in the binary can tell a real offset from a forged one: the
//! targets are arbitrary `fn` items chosen by the parent at run time, so no
//! table of them exists in the child. Whoever can write that channel can
//! make this process call any function of its own. So the hook boots only
//! from a channel that it has proved comes from a real multiproc parent, and
//! otherwise refuses, with `multiproc: refusing to boot: <why>` on stderr and
//! exit code [`REFUSED_EXIT`], before `main` and before any user code. It
//! never continues into `main` with a forged role: a program started that
//! way was not started by anyone who meant to run it normally.
//!
//! The proof, checked in this order (see [`authenticate`]):
//! 1. the process is not in secure-execution mode (`AT_SECURE`: setuid,
//!    setgid, file capabilities, an LSM transition): such a binary has
//!    privileges its caller lacks, and never boots, whatever the channel;
//! 2. the role reads `child:<pid>:<secret>` or `forkserver:<pid>:<secret>`,
//!    `<pid>` is this process's parent, and `<secret>` is 32 bytes in hex;
//! 3. descriptor 3 is a Unix socket created (`SO_PEERCRED`) by that parent,
//!    under this process's user and group;
//! 4. the parent runs this very executable (`/proc/<pid>/exe` and
//!    `/proc/self/exe` are one file: same device and inode);
//! 5. nothing is waiting on the socket yet; the hook turns on
//!    `SO_PASSCRED` and only then says it is ready (one byte, [`READY`]).
//!    From then on the kernel stamps every byte with the pid of the process
//!    that wrote it, and every byte the hook acts on must be stamped with
//!    the parent's pid. The parent was alive before this process started and
//!    still is, so no other process can hold that pid meanwhile: bytes
//!    queued earlier by a process that had the same pid before (pid reuse)
//!    were refused by the emptiness check;
//! 6. the parent's first bytes echo the secret of the role; the child never
//!    sends it. Then come the entry preamble (also parent-stamped) and the
//!    rest of the start protocol.
//!
//! So to make a multiproc binary run code of its choosing before `main`, a
//! process must be that binary's parent *and* run that binary *and* write
//! the channel itself: it must already be that program, running as that
//! user, with the same privileges (the one that could gain, a privileged
//! binary, refuses at step 1).
//!
//! The parent's side is [`Invitation`]: a fresh secret, the role to put in
//! the child's environment, and [`Invitation::admit`], which waits for the
//! child's [`READY`] byte before it writes anything.
//!
//! The hook sits in this module, beside the code every start path calls
//! ([`hook_ran`]), so its object file is always linked. Rust keeps `#[used]`
//! statics of linked rlibs, and `ctor` relies on that.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::code::{Entry, PREAMBLE};
use super::socket::{self, Credentials};

/// Environment variable that carries a child's role.
pub(crate) const BOOT_ENV: &str = "MULTIPROC_BOOT";

/// Descriptor number at which a re-executed child finds its channel.
pub(crate) const BOOT_FD: i32 = 3;

/// Exit code of a process that refused to boot from its environment.
pub(crate) const REFUSED_EXIT: i32 = 87;

/// The byte a booting process sends once it is ready to authenticate what
/// it reads. Nothing the parent writes before it is accepted.
pub(crate) const READY: u8 = b'R';

/// Length of the one-time secret a parent puts in a child's role and
/// echoes first on the channel.
const SECRET: usize = 32;

/// How long a booting process waits for its parent's first bytes.
const PARENT_TIMEOUT: Duration = Duration::from_secs(30);

static HOOK_RAN: AtomicBool = AtomicBool::new(false);

/// Whether the boot hook ran in this process.
pub(crate) fn hook_ran() -> bool {
    HOOK_RAN.load(Ordering::Relaxed)
}

#[ctor::ctor(unsafe)]
fn multiproc_boot() {
    boot();
}

/// What a re-executed process is asked to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A spawn child: runs one function and exits.
    Child,
    /// The forkserver: forks children on request.
    ForkServer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Child => "child",
            Role::ForkServer => "forkserver",
        }
    }
}

/// Runs the boot logic: from the hook before `main`, or from
/// `multiproc::init()` where a platform runs no hooks.
///
/// Reads the environment only; removes `MULTIPROC_BOOT` (so that a process
/// the child starts with `std::process::Command` does not inherit it) only
/// while this process provably has a single thread, where removing it
/// cannot race with a reader.
pub(crate) fn boot() {
    if HOOK_RAN.swap(true, Ordering::SeqCst) {
        return;
    }
    let Some(role) = std::env::var_os(BOOT_ENV) else {
        #[cfg(feature = "cluster")]
        cluster_agent();
        return;
    };
    forget_role();
    let Some(role) = role.to_str() else {
        refuse("MULTIPROC_BOOT is not UTF-8")
    };
    match authenticate(role) {
        Ok((role, channel)) => crate::process::boot::run(role, channel),
        Err(why) => refuse(&why),
    }
}

/// Becomes a cluster agent if `MULTIPROC_CLUSTER` names a server: the
/// user's `main` never runs. The variable names a server to take tasks
/// from, not code to run: tasks run only through the table of registered
/// functions (`pool::registry`), so the channel need not be
/// authenticated the way a child's is; still, a privileged binary
/// (secure-execution mode) refuses, as for `MULTIPROC_BOOT`.
#[cfg(feature = "cluster")]
fn cluster_agent() {
    use crate::cluster::worker::CLUSTER_ENV;
    let Some(url) = std::env::var_os(CLUSTER_ENV) else {
        return;
    };
    if secure_execution() {
        refuse("MULTIPROC_CLUSTER is set in a privileged (secure-execution) process");
    }
    if single_threaded() {
        // SAFETY: as in `forget_role`: this is the process's only thread.
        unsafe { std::env::remove_var(CLUSTER_ENV) };
    }
    let Some(url) = url.to_str() else {
        refuse("MULTIPROC_CLUSTER is not UTF-8")
    };
    crate::cluster::worker::serve_from_env(url.to_owned())
}

/// Removes `MULTIPROC_BOOT` from the environment if this process has one
/// thread; otherwise leaves it (a process started from this one with
/// `Command` then inherits it, and refuses to boot).
fn forget_role() {
    if single_threaded() {
        // SAFETY: this process has exactly one thread, the caller (counted
        // just now from /proc; only this thread could start another), so
        // no thread reads or writes the environment concurrently.
        unsafe { std::env::remove_var(BOOT_ENV) };
    }
}

/// Whether this process has exactly one thread (the caller), as /proc
/// says; `false` when it cannot tell. Only then may the environment be
/// changed.
fn single_threaded() -> bool {
    super::process::thread_count() == Some(1)
}

/// Prints why this process will not boot and exits with [`REFUSED_EXIT`],
/// before any user code (and `main`) runs.
fn refuse(why: &str) -> ! {
    let line = format!("multiproc: refusing to boot: {why}\n");
    super::process::write_stderr_raw(line.as_bytes());
    super::process::exit_now(REFUSED_EXIT)
}

/// Whether this process runs in secure-execution mode (`AT_SECURE`): it
/// gained privileges at exec (setuid, setgid, file capabilities, an LSM
/// domain transition).
fn secure_execution() -> bool {
    // SAFETY: getauxval reads the auxiliary vector the kernel gave this
    // process; it takes and returns plain integers.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Parses `kind:pid:secret`.
fn parse_role(role: &str) -> Option<(Role, i32, [u8; SECRET])> {
    let mut parts = role.split(':');
    let kind = match parts.next()? {
        "child" => Role::Child,
        "forkserver" => Role::ForkServer,
        _ => return None,
    };
    let pid: i32 = parts.next()?.parse().ok().filter(|p| *p > 0)?;
    let hex = parts.next()?.as_bytes();
    if parts.next().is_some() || hex.len() != 2 * SECRET {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut secret = [0u8; SECRET];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = digit(hex[2 * i])? << 4 | digit(hex[2 * i + 1])?;
    }
    Some((kind, pid, secret))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `/proc/<pid>/exe` is the same file as this process's executable.
fn same_executable(pid: i32) -> Result<(), String> {
    let ours = rustix::fs::stat("/proc/self/exe")
        .map_err(|e| format!("cannot inspect /proc/self/exe: {e}"))?;
    let theirs = rustix::fs::stat(format!("/proc/{pid}/exe").as_str())
        .map_err(|e| format!("cannot inspect the executable of process {pid}: {e}"))?;
    if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino) {
        return Err(format!("process {pid} does not run this executable"));
    }
    Ok(())
}

/// This process's effective user and group.
fn own_credentials() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// A boot channel proved to come from this process's parent, a process of
/// the same executable (see the module documentation). Made only by
/// [`authenticate`].
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
    parent: i32,
}

/// Checks everything the module documentation lists, up to and including
/// the secret; returns the role and the authenticated channel, or why not.
fn authenticate(role: &str) -> Result<(Role, Channel), String> {
    if secure_execution() {
        return Err(
            "the process runs in secure-execution mode (setuid, setgid or file capabilities)"
                .into(),
        );
    }
    let Some((kind, parent, secret)) = parse_role(role) else {
        return Err(format!("malformed role {role:?} in MULTIPROC_BOOT"));
    };
    if super::process::parent_pid() != Some(parent) {
        return Err(format!(
            "the role names process {parent}, which is not this process's parent"
        ));
    }
    // SAFETY: F_GETFD reads flags only and is valid for any integer.
    if unsafe { libc::fcntl(BOOT_FD, libc::F_GETFD) } == -1 {
        return Err(format!("descriptor {BOOT_FD} is not open"));
    }
    // SAFETY: descriptor BOOT_FD is open (checked above), and is used only
    // while this function runs, before `main` (or first thing in it), by
    // this thread; nothing closes it meanwhile. It is adopted as owned only
    // once the checks pass.
    let fd = unsafe { BorrowedFd::borrow_raw(BOOT_FD) };
    let creator = socket::peer_credentials(fd)
        .map_err(|e| format!("descriptor {BOOT_FD} is not a Unix socket ({e})"))?;
    let (uid, gid) = own_credentials();
    if creator.pid != parent {
        return Err(format!(
            "descriptor {BOOT_FD} was made by process {}, not by the parent {parent}",
            creator.pid
        ));
    }
    if (creator.uid, creator.gid) != (uid, gid) {
        return Err(format!(
            "descriptor {BOOT_FD} belongs to user {} group {}, not to this process's {uid}/{gid}",
            creator.uid, creator.gid
        ));
    }
    same_executable(parent)?;
    socket::set_pass_credentials(fd)
        .map_err(|e| format!("cannot ask for the writer's credentials: {e}"))?;
    match socket::pending_bytes(fd) {
        Ok(0) => {}
        Ok(n) => {
            return Err(format!(
                "{n} bytes were waiting on descriptor {BOOT_FD} before this process asked for them"
            ));
        }
        Err(e) => return Err(format!("cannot inspect descriptor {BOOT_FD}: {e}")),
    }
    socket::send_all(fd, &[&[READY]], &[]).map_err(|e| format!("cannot answer the parent: {e}"))?;
    let mut echo = [0u8; SECRET];
    read_from(fd, parent, &mut echo, Some(Instant::now() + PARENT_TIMEOUT))?;
    // Compared without an early exit, so timing says nothing of the secret.
    if echo
        .iter()
        .zip(&secret)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        != 0
    {
        return Err("the parent did not echo the role's secret".into());
    }
    // The parent could have executed another program meanwhile.
    same_executable(parent)?;
    // SAFETY: BOOT_FD is open (the reads above succeeded on it) and nothing
    // else in this process owns it: the parent placed it for the boot code,
    // which alone takes it, once (HOOK_RAN).
    let owned = unsafe { super::process::adopt_inherited_fd(BOOT_FD) }
        .ok_or_else(|| format!("descriptor {BOOT_FD} closed during boot"))?;
    Ok((kind, Channel { fd: owned, parent }))
}

/// Fills `buf` with bytes every one of which the kernel attests was written
/// by process `parent`, or says why not. No descriptors are accepted.
fn read_from(
    fd: BorrowedFd<'_>,
    parent: i32,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        if !socket::wait_readable_one(fd, deadline).map_err(|e| e.to_string())? {
            return Err("the parent sent nothing in time".into());
        }
        let mut fds = Vec::new();
        let (n, writer) = socket::recv_with_credentials(fd, &mut buf[got..], &mut fds, false)
            .map_err(|e| format!("cannot read the boot channel: {e}"))?;
        if n == 0 {
            return Err("the boot channel closed early".into());
        }
        check_writer(writer, parent)?;
        if !fds.is_empty() {
            return Err("descriptors arrived with the boot preamble".into());
        }
        got += n;
    }
    Ok(())
}

fn check_writer(writer: Option<Credentials>, parent: i32) -> Result<(), String> {
    let (uid, gid) = own_credentials();
    match writer {
        Some(w) if w.pid == parent && (w.uid, w.gid) == (uid, gid) => Ok(()),
        Some(w) => Err(format!(
            "bytes on the boot channel were written by process {} (user {}), not by the parent {parent}",
            w.pid, w.uid
        )),
        None => Err("bytes on the boot channel carry no writer credentials".into()),
    }
}

impl Channel {
    /// The process that started this one (and wrote the channel).
    pub(crate) fn parent(&self) -> i32 {
        self.parent
    }

    /// The socket, for writing back to the parent.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Receives bytes (and descriptors) from the parent. Bytes another
    /// process wrote (one that holds a copy of the parent's end) are an
    /// error of kind `PermissionDenied`; their descriptors are closed.
    pub(crate) fn recv(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        nonblocking: bool,
    ) -> io::Result<usize> {
        let mut got = Vec::new();
        let (n, writer) = socket::recv_with_credentials(self.fd(), buf, &mut got, nonblocking)?;
        if n > 0 {
            check_writer(writer, self.parent)
                .map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, why))?;
        }
        fds.extend(got);
        Ok(n)
    }

    /// Reads the preamble that names the function a spawn child runs
    /// (parent-written, like everything this type reads), and the channel
    /// for the rest of the start protocol, with writer credentials turned
    /// off again. Refuses to boot (and exits) if the bytes are not the
    /// parent's.
    pub(crate) fn into_entry(self) -> (Option<Entry>, OwnedFd) {
        let mut bytes = [0u8; PREAMBLE];
        if let Err(why) = read_from(self.fd(), self.parent, &mut bytes, None) {
            refuse(&why);
        }
        // The rest of the protocol is read with the ordinary receive, which
        // has no room for credentials beside 64 descriptors.
        if let Err(e) = socket::stop_pass_credentials(self.fd()) {
            refuse(&format!("cannot reset the boot channel: {e}"));
        }
        // SAFETY: every byte of the preamble was written, the kernel
        // attests, by this process's parent, which runs this same
        // executable image and wrote to this socket only after this process
        // asked (see `authenticate`): the channel is private to the two, as
        // `Entry::receive` requires.
        let entry = unsafe {
            Entry::receive(|buf| {
                *buf = bytes;
                true
            })
        };
        (entry, self.fd)
    }
}

/// Serves a start channel in a forkserver worker: reads which function to
/// run, then hands over to the process layer, which never returns.
///
/// `channel` is one the forkserver received from its client (its parent)
/// over its authenticated control channel ([`Channel::recv`]): the client
/// made it, and the client runs this same executable.
pub(crate) fn serve_forked_channel(channel: OwnedFd, parent: i32) -> ! {
    let read = |buf: &mut [u8; PREAMBLE]| read_exact(channel.as_fd(), buf);
    // SAFETY: `channel` arrived on the forkserver's control socket, whose
    // every message `Channel::recv` accepts only when the kernel attests
    // (SCM_CREDENTIALS) that the parent wrote it; a message from any other
    // holder is refused and its descriptors closed. The parent made the
    // socket, runs this same executable (checked at boot) and keeps the
    // other end as a close-on-exec, tracked handle. The one caller,
    // `sys::process::fork_worker` from the forkserver loop, passes nothing
    // else. (This function is not `unsafe fn` only because that loop lives
    // outside `sys`, where `unsafe` is not allowed; a type that only
    // `Channel::recv` can make would carry the proof instead.)
    let entry = unsafe { Entry::receive(read) };
    crate::process::child::serve(entry, channel, parent)
}

fn read_exact(fd: BorrowedFd<'_>, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
    true
}

/// The parent's side of a boot: a fresh one-time secret, and the role that
/// names it, for one child's environment.
#[derive(Debug)]
pub(crate) struct Invitation {
    secret: [u8; SECRET],
    role: String,
}

impl Invitation {
    /// Prepares to start a process of this executable as `role`, whose
    /// channel end will be `theirs`: asks the kernel to stamp every byte
    /// sent to `theirs` with its writer (so that the child can check that
    /// this process wrote them).
    pub(crate) fn new(role: Role, theirs: BorrowedFd<'_>) -> io::Result<Invitation> {
        let mut secret = [0u8; SECRET];
        getrandom::fill(&mut secret).map_err(|e| io::Error::other(e.to_string()))?;
        socket::set_pass_credentials(theirs)?;
        let role = format!(
            "{}:{}:{}",
            role.name(),
            super::process::pid(),
            to_hex(&secret)
        );
        Ok(Invitation { secret, role })
    }

    /// The value of [`BOOT_ENV`] for the child.
    pub(crate) fn role(&self) -> &str {
        &self.role
    }

    /// Waits until `deadline` for the child's [`READY`] byte on `channel`,
    /// then sends the secret. `Ok(false)` if the child ended first
    /// (`pidfd` readable, or the channel closed) or said something else:
    /// its exit status says why. A deadline that passes is `TimedOut`.
    pub(crate) fn admit(
        &self,
        channel: BorrowedFd<'_>,
        pidfd: BorrowedFd<'_>,
        deadline: Instant,
    ) -> io::Result<bool> {
        loop {
            let ready = socket::wait_readable(&[channel, pidfd], Some(deadline))?;
            if ready[0] {
                let mut byte = [0u8; 1];
                let mut fds = Vec::new();
                let n = match socket::recv(channel, &mut byte, &mut fds, true) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
                    Err(e) => return Err(e),
                };
                if n == 0 || byte[0] != READY {
                    return Ok(false);
                }
                socket::send_all(channel, &[&self.secret], &[])?;
                return Ok(true);
            }
            if ready[1] {
                return Ok(false);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the child did not boot in time",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_left_alone_while_other_threads_run() {
        // `init()` may run in a program that has threads: the role may then
        // be read, never removed (`remove_var` would race with them).
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || stop_rx.recv());
        assert!(!single_threaded());
        drop(stop_tx);
        let _ = other.join();
    }

    #[test]
    fn roles_parse_strictly() {
        let hex = "ab".repeat(SECRET);
        let (kind, pid, secret) = parse_role(&format!("child:12:{hex}")).unwrap();
        assert_eq!((kind, pid, secret), (Role::Child, 12, [0xab; SECRET]));
        assert_eq!(
            parse_role(&format!("forkserver:7:{hex}")).map(|r| r.0),
            Some(Role::ForkServer)
        );
        for bad in [
            "child:12".to_string(),
            format!("child:0:{hex}"),
            format!("child:-3:{hex}"),
            format!("child:12:{hex}:x"),
            format!("child:12:{}", "AB".repeat(SECRET)),
            format!("child:12:{}", "ab".repeat(SECRET - 1)),
            format!("worker:12:{hex}"),
        ] {
            assert!(parse_role(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_secret_round_trips_through_hex() {
        let (_ours, theirs) = socket::stream_pair().unwrap();
        let inv = Invitation::new(Role::Child, theirs.as_fd()).unwrap();
        let (role, pid, secret) = parse_role(inv.role()).unwrap();
        assert_eq!(
            (role, pid, secret),
            (Role::Child, super::super::process::pid(), inv.secret)
        );
        let other = Invitation::new(Role::Child, theirs.as_fd()).unwrap();
        assert_ne!(other.secret, inv.secret, "a secret is used once");
    }

    #[test]
    fn another_writer_is_told_apart_from_the_parent() {
        let (a, b) = socket::stream_pair().unwrap();
        socket::set_pass_credentials(b.as_fd()).unwrap();
        socket::send_all(a.as_fd(), &[b"hello"], &[]).unwrap();
        let mut buf = [0u8; 5];
        let me = super::super::process::pid();
        read_from(b.as_fd(), me, &mut buf, None).unwrap();
        socket::send_all(a.as_fd(), &[b"hello"], &[]).unwrap();
        let err = read_from(b.as_fd(), me + 1, &mut buf, None).unwrap_err();
        assert!(err.contains("not by the parent"), "{err}");
    }

    // ----- a forged boot environment, as an attacker would set it up -----
    //
    // This test binary links multiproc, so it is the "program started with
    // MULTIPROC_BOOT and a socket on fd 3". The forged channel carries a
    // *genuine* request to run `canary`, which creates a file: the control
    // case shows these very bytes run it when they come the way a real
    // parent sends them, so each refusal below is the authentication's doing.

    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use crate::process::child::{self, kind};
    use crate::sys::code::EntryId;
    use crate::wire::{codec, frame};

    fn canary(path: String) -> bool {
        std::fs::write(path, b"the forged function ran").is_ok()
    }

    /// The bytes a parent sends after the secret to run `canary(path)`.
    fn request(path: &Path) -> Vec<u8> {
        let entry = EntryId::new::<String, bool>(canary, child::body::<String, bool>);
        let lineage = crate::process::info::next_child(None);
        let surroundings: Option<crate::process::info::Surroundings> = None;
        let meta = codec::encode(&(&lineage, &surroundings)).unwrap();
        let args = crate::wire::handles::encode(&path.to_string_lossy().into_owned(), Vec::new())
            .unwrap()
            .0;
        let mut out = entry.preamble().to_vec();
        out.extend_from_slice(&frame::header(kind::META, meta.len()));
        out.extend_from_slice(&meta);
        out.extend_from_slice(&frame::header(kind::ARGS, args.len()));
        out.extend_from_slice(&args);
        out
    }

    fn marker(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "multiproc-boot-canary-{}-{tag}",
            std::process::id()
        ))
    }

    /// Starts this test binary with `role` in MULTIPROC_BOOT and `fd3` (if
    /// any) at descriptor 3. If it ever reached `main`, the harness would
    /// run no test (the filter matches none) and exit 0.
    fn start_forged(role: &str, fd3: Option<BorrowedFd<'_>>) -> std::process::Child {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "no-such-test"])
            .env(BOOT_ENV, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let raw = fd3.map(|fd| fd.as_raw_fd());
        // SAFETY: the closure runs in the forked child before exec and only
        // calls dup2/close, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                match raw {
                    Some(fd) if fd == BOOT_FD => {
                        libc::fcntl(fd, libc::F_SETFD, 0);
                    }
                    Some(fd) => {
                        if libc::dup2(fd, BOOT_FD) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    None => {
                        libc::close(BOOT_FD);
                    }
                }
                Ok(())
            })
        };
        cmd.spawn().unwrap()
    }

    /// Waits for the child (30 s at most) and returns its exit code and
    /// what it wrote to stdout and stderr.
    fn finish(mut child: std::process::Child) -> (Option<i32>, String, String) {
        let end = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a forged boot did not end in time");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let (mut out, mut err) = (String::new(), String::new());
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code(), out, err)
    }

    fn role_for(kind: Role, pid: i32, secret: &[u8; SECRET]) -> String {
        format!("{}:{pid}:{}", kind.name(), to_hex(secret))
    }

    /// Waits for the booting child's ready byte on `ours`.
    fn await_ready(ours: BorrowedFd<'_>) {
        let deadline = Some(Instant::now() + Duration::from_secs(30));
        assert!(
            socket::wait_readable_one(ours, deadline).unwrap(),
            "no ready byte"
        );
        let mut b = [0u8; 1];
        assert_eq!(
            socket::recv(ours, &mut b, &mut Vec::new(), false).unwrap(),
            1
        );
        assert_eq!(b[0], READY);
    }

    fn assert_refused(
        (code, out, err): (Option<i32>, String, String),
        because: &str,
        canary: &Path,
    ) {
        assert_eq!(code, Some(REFUSED_EXIT), "stdout: {out}\nstderr: {err}");
        assert!(
            err.contains("multiproc: refusing to boot:") && err.contains(because),
            "stderr: {err}"
        );
        assert!(!out.contains("running"), "main ran: {out}");
        assert!(!canary.exists(), "the forged function ran");
    }

    #[test]
    fn control_the_same_bytes_from_the_real_parent_run_the_function() {
        let path = marker("control");
        let _ = std::fs::remove_file(&path);
        let (ours, theirs) = socket::stream_pair().unwrap();
        let secret = [7u8; SECRET];
        let me = super::super::process::pid();
        let child = start_forged(&role_for(Role::Child, me, &secret), Some(theirs.as_fd()));
        drop(theirs);
        await_ready(ours.as_fd());
        socket::send_all(ours.as_fd(), &[&secret, &request(&path)], &[]).unwrap();
        let (code, out, err) = finish(child);
        assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
        assert!(
            path.exists(),
            "the request did not run: the refusals below prove nothing"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bytes_queued_before_the_child_asked_are_refused() {
        // What a pid-reusing attacker would leave behind: the whole request,
        // secret included, written before the child started.
        let path = marker("queued");
        let (ours, theirs) = socket::stream_pair().unwrap();
        socket::set_pass_credentials(theirs.as_fd()).unwrap();
        let secret = [9u8; SECRET];
        socket::send_all(ours.as_fd(), &[&secret, &request(&path)], &[]).unwrap();
        let me = super::super::process::pid();
        let child = start_forged(&role_for(Role::Child, me, &secret), Some(theirs.as_fd()));
        drop(theirs);
        assert_refused(finish(child), "were waiting", &path);
    }

    #[test]
    fn a_forged_forkserver_request_is_refused() {
        let path = marker("forkserver");
        let (ours, theirs) = socket::stream_pair().unwrap();
        let (their_channel, _keep) = socket::stream_pair().unwrap();
        let secret = [3u8; SECRET];
        socket::send_all(
            ours.as_fd(),
            &[&secret, b"F"],
            &[their_channel.as_fd(), _keep.as_fd()],
        )
        .unwrap();
        let me = super::super::process::pid();
        let child = start_forged(
            &role_for(Role::ForkServer, me, &secret),
            Some(theirs.as_fd()),
        );
        drop(theirs);
        assert_refused(finish(child), "were waiting", &path);
    }

    #[test]
    fn bytes_written_by_another_process_are_refused() {
        // A helper that holds a copy of the parent's end, as an attacker's
        // process would, writes the secret and the request once the child
        // is ready.
        let path = marker("helper");
        let (ours, theirs) = socket::stream_pair().unwrap();
        let secret = [5u8; SECRET];
        let me = super::super::process::pid();
        let child = start_forged(&role_for(Role::Child, me, &secret), Some(theirs.as_fd()));
        drop(theirs);
        await_ready(ours.as_fd());
        let mut bytes = secret.to_vec();
        bytes.extend_from_slice(&request(&path));
        // SAFETY: the forked helper only calls write(2) and _exit(2), which
        // are async-signal-safe, on memory prepared before the fork.
        let helper = unsafe { libc::fork() };
        if helper == 0 {
            // SAFETY: see above; `bytes` is a live buffer of its length.
            unsafe {
                libc::write(ours.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0);
            }
        }
        assert!(helper > 0);
        let mut status = 0;
        // SAFETY: waits for the helper forked above; `status` is writable.
        unsafe { libc::waitpid(helper, &raw mut status, 0) };
        assert_refused(finish(child), "not by the parent", &path);
    }

    #[test]
    fn a_parent_that_runs_another_program_is_refused() {
        // The attacker's own tool as the parent: it makes the socket, waits
        // for the ready byte and writes the request itself.
        let path = marker("python");
        let secret = [1u8; SECRET];
        let request_hex = to_hex(&request(&path));
        let script = r#"
import os, socket, subprocess, sys
a, b = socket.socketpair()
env = dict(os.environ, MULTIPROC_BOOT='child:%d:SECRET' % os.getpid())
os.dup2(b.fileno(), 3, inheritable=True)
p = subprocess.Popen([sys.argv[1], '--exact', 'no-such-test'], env=env, pass_fds=(3,),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
a.settimeout(30)
try:
    a.recv(1)
    a.sendall(bytes.fromhex('SECRET') + bytes.fromhex('REQUEST'))
except OSError:
    pass
out, err = p.communicate(timeout=30)
sys.stdout.write('%d\n' % p.returncode)
sys.stdout.write(err.decode())
sys.stdout.write(out.decode())
"#
        .replace("SECRET", &to_hex(&secret))
        .replace("REQUEST", &request_hex);
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let Ok(out) = Command::new(python)
            .arg("-c")
            .arg(&script)
            .arg(std::env::current_exe().unwrap())
            .output()
        else {
            panic!("python3 is needed for this test (as the parent of another executable)");
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, rest) = text.split_once('\n').unwrap_or(("", ""));
        let code = code.trim().parse::<i32>().ok();
        assert_refused(
            (code, String::new(), rest.to_string()),
            "does not run this executable",
            &path,
        );
        assert!(!rest.contains("running"), "main ran: {rest}");
    }

    #[test]
    fn a_booted_forkserver_ignores_requests_its_parent_did_not_write() {
        // The real parent boots a forkserver; then another process holding
        // a copy of the parent's end asks it to fork a child on a channel
        // of the attacker's: ignored. A request the parent writes works.
        let path = marker("forkserver-after-boot");
        let _ = std::fs::remove_file(&path);
        let (ours, theirs) = socket::stream_pair().unwrap();
        let secret = [11u8; SECRET];
        let me = super::super::process::pid();
        let server = start_forged(
            &role_for(Role::ForkServer, me, &secret),
            Some(theirs.as_fd()),
        );
        drop(theirs);
        await_ready(ours.as_fd());
        socket::send_all(ours.as_fd(), &[&secret], &[]).unwrap();

        let (_forged_channel, forged_theirs) = socket::stream_pair().unwrap();
        let (forged_status, forged_server_end) = socket::stream_pair().unwrap();
        // SAFETY: the forked helper only sends one message and calls
        // _exit; glibc's malloc, which the send may use, is fork-safe.
        let helper = unsafe { libc::fork() };
        if helper == 0 {
            let _ = socket::send_all(
                ours.as_fd(),
                &[b"F"],
                &[forged_theirs.as_fd(), forged_server_end.as_fd()],
            );
            // SAFETY: ends the helper without running anything else.
            unsafe { libc::_exit(0) };
        }
        assert!(helper > 0);
        let mut status = 0;
        // SAFETY: waits for the helper forked above; `status` is writable.
        unsafe { libc::waitpid(helper, &raw mut status, 0) };
        drop((forged_theirs, forged_server_end));
        // The server drops the forged request's descriptors unused: its
        // status socket ends without a pid.
        let deadline = Some(Instant::now() + Duration::from_secs(30));
        assert!(socket::wait_readable_one(forged_status.as_fd(), deadline).unwrap());
        let mut pid = [0u8; 4];
        let n = socket::recv(forged_status.as_fd(), &mut pid, &mut Vec::new(), false).unwrap();
        assert_eq!(n, 0, "the forkserver forked for a forged request");

        // The parent's own request runs.
        let (channel, channel_theirs) = socket::stream_pair().unwrap();
        let (status, server_end) = socket::stream_pair().unwrap();
        socket::send_all(
            ours.as_fd(),
            &[b"F"],
            &[channel_theirs.as_fd(), server_end.as_fd()],
        )
        .unwrap();
        drop((channel_theirs, server_end));
        socket::send_all(channel.as_fd(), &[&request(&path)], &[]).unwrap();
        let mut got = 0;
        let mut pidfds = Vec::new();
        while got < 4 {
            let n = socket::recv(status.as_fd(), &mut pid[got..], &mut pidfds, false).unwrap();
            assert!(n > 0, "no pid for the parent's request");
            got += n;
        }
        // Its exit status (8 bytes) follows once the worker is done.
        let mut exit = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            let n = socket::recv(status.as_fd(), &mut exit[got..], &mut pidfds, false).unwrap();
            assert!(n > 0, "no exit status for the parent's request");
            got += n;
        }
        assert!(path.exists(), "the parent's request did not run");
        let _ = std::fs::remove_file(&path);
        drop(ours);
        let (code, out, err) = finish(server);
        assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let path = marker("secret");
        let (ours, theirs) = socket::stream_pair().unwrap();
        let secret = [2u8; SECRET];
        let me = super::super::process::pid();
        let child = start_forged(&role_for(Role::Child, me, &secret), Some(theirs.as_fd()));
        drop(theirs);
        await_ready(ours.as_fd());
        let wrong = [4u8; SECRET];
        let _ = socket::send_all(ours.as_fd(), &[&wrong, &request(&path)], &[]);
        assert_refused(finish(child), "did not echo", &path);
    }

    #[test]
    fn a_setuid_copy_refuses_even_a_genuine_request() {
        // A privileged binary must never boot from its environment: make a
        // copy of this test binary setuid to `nobody` and let its real
        // parent (this process, which made the socket and writes the
        // request after the ready byte) ask it to run the canary.
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("skipped: making a setuid copy needs root");
            return;
        }
        let path = marker("setuid");
        let _ = std::fs::remove_file(&path);
        /// Removes the setuid copy however the test ends.
        struct Removed(PathBuf);
        impl Drop for Removed {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let copy = marker("setuid-binary");
        let _removed = Removed(copy.clone());
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        std::os::unix::fs::chown(&copy, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o4755))
            .unwrap();
        let nosuid = rustix::fs::statvfs(&copy)
            .map(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::NOSUID))
            .unwrap_or(true);
        if nosuid {
            eprintln!("skipped: the temporary directory is mounted nosuid");
            return;
        }
        let (ours, theirs) = socket::stream_pair().unwrap();
        let secret = [8u8; SECRET];
        let me = super::super::process::pid();
        let raw = theirs.as_raw_fd();
        let mut cmd = Command::new(&copy);
        cmd.args(["--exact", "no-such-test"])
            .env(BOOT_ENV, role_for(Role::Child, me, &secret))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: runs in the forked child before exec; dup2 is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, BOOT_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        };
        // Another test's fork may briefly hold the copy open for writing
        // (inherited from `fs::copy` until its exec): ETXTBSY, try again.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        };
        drop(theirs);
        // Answer a ready byte if one ever comes, as the real parent would.
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        if socket::wait_readable_one(ours.as_fd(), deadline).unwrap() {
            let mut b = [0u8; 1];
            if socket::recv(ours.as_fd(), &mut b, &mut Vec::new(), false).unwrap_or(0) == 1 {
                let _ = socket::send_all(ours.as_fd(), &[&secret, &request(&path)], &[]);
            }
        }
        assert_refused(finish(child), "secure-execution", &path);
    }

    #[test]
    fn malformed_or_misdirected_roles_are_refused() {
        let path = marker("roles");
        let secret = [6u8; SECRET];
        let me = super::super::process::pid();
        // A role without a secret, as the old protocol wrote it.
        let (ours, theirs) = socket::stream_pair().unwrap();
        let child = start_forged(&format!("child:{me}"), Some(theirs.as_fd()));
        assert_refused(finish(child), "malformed role", &path);
        // A role naming a process that is not the parent.
        let child = start_forged(&role_for(Role::Child, 1, &secret), Some(theirs.as_fd()));
        assert_refused(finish(child), "not this process's parent", &path);
        drop(ours);
        // No descriptor 3.
        let child = start_forged(&role_for(Role::Child, me, &secret), None);
        assert_refused(finish(child), "is not open", &path);
        // A pipe, not a socket, carrying the request.
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&w, &secret).unwrap();
        let child = start_forged(&role_for(Role::Child, me, &secret), Some(r.as_fd()));
        assert_refused(finish(child), "not a Unix socket", &path);
    }
}
