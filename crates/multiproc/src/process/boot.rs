//! What a re-executed process does before `main`: the boot hook in the OS
//! layer calls [`run`] when `MULTIPROC_BOOT` names a role.

use std::os::fd::OwnedFd;

use super::start::forkserver;
use crate::sys;

/// Becomes what `role` says (`child:PARENT` or `forkserver:PARENT`), serving
/// `channel`; never returns.
pub(crate) fn run(role: &str, channel: Option<OwnedFd>) -> ! {
    let Some(channel) = channel else {
        eprintln!(
            "multiproc: started as {role:?} but descriptor {} is not open",
            sys::boot::BOOT_FD
        );
        sys::process::exit_now(2);
    };
    let parse = |p: &str| p.parse::<i32>().ok();
    match role.split_once(':') {
        Some(("child", p)) if parse(p).is_some() => {
            sys::boot::serve_start_channel(channel, parse(p).unwrap_or(0))
        }
        Some(("forkserver", p)) if parse(p).is_some() => {
            forkserver::serve(channel, parse(p).unwrap_or(0))
        }
        _ => {
            eprintln!("multiproc: unknown boot role {role:?}");
            sys::process::exit_now(2)
        }
    }
}
