//! The boot hook: code that runs before `main` in every executable that links
//! multiproc.
//!
//! A child started by the *spawn* method, and the *forkserver*, are this same
//! executable run again with `MULTIPROC_BOOT` in their environment. The hook
//! sees it and hands control to the process layer, which runs the requested
//! function (or serves fork requests) and exits: the child never reaches the
//! user's `main`, nor a test harness's. Without the variable the hook only
//! records that it ran, so that a parent can tell, before it starts a child,
//! that the child will boot correctly.
//!
//! The hook sits in this module, beside the code every start path calls
//! ([`hook_ran`]), so its object file is always linked. Rust keeps `#[used]`
//! statics of linked rlibs, and `ctor` relies on that.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::code::{Entry, PREAMBLE};

/// Environment variable that carries a child's role.
pub(crate) const BOOT_ENV: &str = "MULTIPROC_BOOT";

/// Descriptor number at which a re-executed child finds its channel.
pub(crate) const BOOT_FD: i32 = 3;

static HOOK_RAN: AtomicBool = AtomicBool::new(false);

/// Whether the boot hook ran in this process.
pub(crate) fn hook_ran() -> bool {
    HOOK_RAN.load(Ordering::Relaxed)
}

#[ctor::ctor(unsafe)]
fn multiproc_boot() {
    boot();
}

/// Runs the boot logic: from the hook before `main`, or from
/// `multiproc::init()` where a platform runs no hooks.
pub(crate) fn boot() {
    if HOOK_RAN.swap(true, Ordering::SeqCst) {
        return;
    }
    let Some(role) = std::env::var_os(BOOT_ENV) else {
        return;
    };
    // SAFETY: before `main` (or first thing in it, for `init()`) this process
    // has a single thread, so nothing reads the environment concurrently.
    unsafe { std::env::remove_var(BOOT_ENV) };
    let role = role.to_string_lossy().into_owned();
    // SAFETY: the parent placed the channel at BOOT_FD for us and nothing in
    // this process has touched descriptors yet.
    let fd = unsafe { super::process::adopt_inherited_fd(BOOT_FD) };
    crate::process::boot::run(&role, fd)
}

/// Serves a start channel in a freshly started child: reads which function
/// to run, then hands over to the process layer, which never returns.
///
/// `channel` must be private to this child and the process that started it:
/// the descriptor a re-executing parent placed at [`BOOT_FD`], or one the
/// forkserver received from its client over its private control socket.
/// Both callers live in this OS layer.
pub(crate) fn serve_start_channel(channel: OwnedFd, parent: i32) -> ! {
    let read = |buf: &mut [u8; PREAMBLE]| read_exact(channel.as_fd(), buf);
    // SAFETY: per this function's contract the channel is private to this
    // child and its parent, which runs the same executable: a re-executed
    // `/proc/self/exe`, or the forkserver that is this very image.
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
