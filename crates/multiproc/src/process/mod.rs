//! Processes: start a function in a child, wait for its result, stop it.
//!
//! * [`handle`]: [`Process`], [`ProcessBuilder`], [`StartMethod`].
//! * [`start`]: one file per start method.
//! * [`child`]: what a child does with its start request.
//! * [`info`]: `current_process`, `parent_process`, `active_children`.
//! * [`launcher`]: the long-lived thread children are created from.

pub(crate) mod boot;
pub(crate) mod child;
pub(crate) mod error;
pub(crate) mod handle;
pub(crate) mod info;
pub(crate) mod launcher;
pub(crate) mod start;
pub(crate) mod status;

pub use error::{JoinError, JoinTimeoutError, PanicReport, StartError, TryJoinError};
pub use handle::{
    Process, ProcessBuilder, StartMethod, UnknownStartMethod, get_start_method, set_start_method,
};
pub use info::{
    ChildInfo, ParentProcess, ProcessInfo, active_children, cpu_count, current_process,
    parent_process,
};
pub use status::{ExitStatus, Signal};
