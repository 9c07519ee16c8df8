//! The *forkserver* start method.
//!
//! The first time a process asks for a forkserver child, multiproc starts a
//! server: this executable run again (like *spawn*), which the boot hook
//! turns into a loop before `main`, so it has one thread and almost no
//! memory. Each request then costs a fork of that small process, whatever
//! the size or the threads of the parent.
//!
//! Protocol, over a private socket pair (no path in the file system):
//! 1. the server sends one byte, `R`, once it has checked that this process
//!    made the socket and runs its executable; the client answers with the
//!    role's one-time secret (`sys::boot`); from then on the server accepts
//!    only bytes the kernel attests this process wrote;
//! 2. the client sends one byte, `F`, carrying two descriptors: the child's
//!    end of its start channel, and the server's end of a status socket;
//! 3. the server forks; the child serves the start channel (see `child`);
//! 4. on the status socket the server sends the child's pid (4 bytes, LE)
//!    with a pidfd attached, and, once the child has exited and been reaped,
//!    its exit status (8 bytes).
//!
//! The server exits when its control socket closes (the parent exited); its
//! children die with it (`PR_SET_PDEATHSIG`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use super::{BOOT_TIMEOUT, Reaper, Started};
use crate::process::child;
use crate::process::error::StartError;
use crate::process::launcher;
use crate::process::status::ExitStatus;
use crate::sys;
use crate::sys::boot::{BOOT_ENV, BOOT_FD, Channel, Invitation, Role};
use crate::sys::fork_local::ForkLocal;

#[derive(Debug)]
struct Server {
    owner: i32,
    control: OwnedFd,
    pidfd: OwnedFd,
}

static SERVER: ForkLocal<Option<Server>> = ForkLocal::new(|| None);

fn launch() -> Result<Server, StartError> {
    let (control, theirs) = sys::socket::stream_pair()?;
    let invitation = Invitation::new(Role::ForkServer, theirs.as_fd())?;
    let role = invitation.role().to_owned();
    let me = sys::process::pid();
    let pid = launcher::run(move || {
        sys::process::spawn_self(
            theirs.as_fd(),
            BOOT_FD,
            "multiproc-forkserver",
            (BOOT_ENV, &role),
        )
    })?;
    let pidfd = sys::process::pidfd_open(pid)?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let admitted = invitation.admit(control.as_fd(), pidfd.as_fd(), deadline);
    if !matches!(admitted, Ok(true)) {
        let _ = sys::process::pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
        let _ = sys::socket::wait_readable_one(pidfd.as_fd(), Some(deadline));
        let _ = sys::process::reap_nohang(pidfd.as_fd());
        return Err(StartError::ForkServer(match admitted {
            Err(e) => format!("the forkserver did not start: {e}"),
            Ok(_) => "the forkserver did not start".into(),
        }));
    }
    Ok(Server {
        owner: me,
        control,
        pidfd,
    })
}

/// Asks the forkserver (starting it if needed) for a child that waits for
/// its start request on the returned channel.
pub(crate) fn start() -> Result<Started, StartError> {
    let (channel, theirs) = sys::socket::stream_pair()?;
    let (status, server_end) = sys::socket::stream_pair()?;
    {
        let mut guard = SERVER.lock();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let usable = matches!(&*guard, Some(s) if s.owner == sys::process::pid()
                && !sys::socket::is_readable(s.pidfd.as_fd()).unwrap_or(true));
            if !usable {
                if let Some(old) = guard.take() {
                    let _ = sys::process::reap_nohang(old.pidfd.as_fd());
                }
                *guard = Some(launch()?);
            }
            let server = guard.as_ref().expect("set above");
            match sys::socket::send_all(
                server.control.as_fd(),
                &[b"F"],
                &[theirs.as_fd(), server_end.as_fd()],
            ) {
                Ok(()) => break,
                Err(e) if attempts < 2 => {
                    let _ = e;
                    *guard = None;
                }
                Err(e) => {
                    return Err(StartError::ForkServer(format!(
                        "cannot reach the forkserver: {e}"
                    )));
                }
            }
        }
    }
    drop((theirs, server_end));
    let mut pid = [0u8; 4];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < 4 {
        let n = sys::socket::recv(status.as_fd(), &mut pid[got..], &mut fds, false)?;
        if n == 0 {
            return Err(StartError::ForkServer(
                "the forkserver closed the request".into(),
            ));
        }
        got += n;
    }
    let pid = i32::from_le_bytes(pid);
    let pidfd = fds
        .pop()
        .ok_or_else(|| StartError::ForkServer("the forkserver sent no pidfd".into()))?;
    Ok(Started {
        pid,
        pidfd: pidfd.into(),
        channel,
        reaper: Reaper::Server(status),
    })
}

struct Worker {
    pidfd: OwnedFd,
    status: OwnedFd,
}

/// The server's loop. Runs in the forkserver process, before `main`, on
/// the control channel the boot code authenticated: every request on it is
/// checked to come from the parent.
pub(crate) fn serve(control: Channel) -> ! {
    let parent = control.parent();
    if !sys::process::die_with_parent(parent) {
        sys::process::exit_now(1);
    }
    sys::process::ignore_interrupts(true);
    // The server is single-threaded, so the hook is safe to install here;
    // each worker then has it from birth, with no allocation of its own.
    child::install_panic_hook();
    let mut workers: Vec<Worker> = Vec::new();
    loop {
        let mut watch: Vec<BorrowedFd<'_>> = vec![control.fd()];
        watch.extend(workers.iter().map(|w| w.pidfd.as_fd()));
        let ready = match sys::socket::wait_readable(&watch, None) {
            Ok(r) => r,
            Err(_) => sys::process::exit_now(1),
        };
        let exited: Vec<usize> = (0..workers.len()).filter(|i| ready[i + 1]).collect();
        for i in exited.into_iter().rev() {
            if let Ok(Some(raw)) = sys::process::reap_nohang(workers[i].pidfd.as_fd()) {
                let w = workers.swap_remove(i);
                let _ = sys::socket::send_all(
                    w.status.as_fd(),
                    &[&ExitStatus::from_raw(raw).to_bytes()],
                    &[],
                );
            }
        }
        if ready[0] {
            let mut byte = [0u8; 1];
            let mut fds = Vec::new();
            match control.recv(&mut byte, &mut fds, true) {
                Ok(0) => sys::process::exit_now(0),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // A byte written by another process than the parent (one
                // holding a copy of its end), or more descriptors than fit:
                // ignored, its descriptors closed.
                Err(e)
                    if e.kind() == io::ErrorKind::PermissionDenied
                        || sys::socket::is_descriptors_truncated(&e) =>
                {
                    continue;
                }
                Err(_) => sys::process::exit_now(1),
            }
            if byte != *b"F" || fds.len() != 2 {
                continue;
            }
            let status = fds.pop().expect("two descriptors");
            let channel = fds.pop().expect("two descriptors");
            if let Some(w) = fork_one(control.fd(), &workers, channel, status) {
                workers.push(w);
            }
        }
    }
}

fn fork_one(
    control: BorrowedFd<'_>,
    workers: &[Worker],
    channel: OwnedFd,
    status: OwnedFd,
) -> Option<Worker> {
    let mut close: Vec<BorrowedFd<'_>> = vec![control, status.as_fd()];
    for w in workers {
        close.push(w.pidfd.as_fd());
        close.push(w.status.as_fd());
    }
    let pid = sys::process::fork_worker(channel, &close).ok()?;
    let pidfd = sys::process::pidfd_open(pid).ok()?;
    let _ = sys::socket::send_all(status.as_fd(), &[&pid.to_le_bytes()], &[pidfd.as_fd()]);
    Some(Worker { pidfd, status })
}
