//! What a re-executed process does before `main`: the boot hook in the OS
//! layer authenticates its channel, then calls [`run`] with the role that
//! `MULTIPROC_BOOT` names.

use super::start::forkserver;
use crate::process::child;
use crate::sys::boot::{Channel, Role};

/// Becomes what `role` says, serving `channel`; never returns.
pub(crate) fn run(role: Role, channel: Channel) -> ! {
    match role {
        Role::Child => {
            let parent = channel.parent();
            let (entry, channel) = channel.into_entry();
            child::serve(entry, channel, parent)
        }
        Role::ForkServer => forkserver::serve(channel),
    }
}
