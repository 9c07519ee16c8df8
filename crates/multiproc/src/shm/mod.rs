//! Structures that live in shared memory, and the only code besides the OS
//! layer allowed to use `unsafe`.
//!
//! * [`lock`]: a futex lock whose word names its holder, so that a holder
//!   that died is detected and the lock recovered, never held forever;
//! * [`ring`]: the multi-producer, multi-consumer byte ring behind `Queue`;
//! * [`object`]: one typed object in its own mapping, and [`states`]: the
//!   shared state of each synchronisation primitive.
//!
//! Design notes: `docs/shm-ring.md`.
#![allow(unsafe_code)]

pub(crate) mod lock;
pub(crate) mod object;
pub(crate) mod ring;
pub(crate) mod segment;
pub(crate) mod states;
pub(crate) mod wait;
