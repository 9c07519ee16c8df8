//! The OS layer: every call into libc or rustix lives below this module.
//!
//! The layers above see safe signatures only (`OwnedFd`, `BorrowedFd`, plain
//! integers for process ids they never dereference). Unsafe code is allowed
//! here and in the shared-memory structures, nowhere else; every block says
//! why it is sound in a `// SAFETY:` comment.
#![allow(unsafe_code)]

pub(crate) mod boot;
pub(crate) mod code;
pub(crate) mod fork_local;
pub(crate) mod futex;
pub(crate) mod liveness;
pub(crate) mod membarrier;
pub(crate) mod process;
pub(crate) mod shm;
pub(crate) mod socket;
