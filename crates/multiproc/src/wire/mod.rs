//! The wire layer: how bytes and values cross a process boundary.
//!
//! * [`frame`]: a 16-byte header (magic, version, kind, length) in front of
//!   each message, a size limit checked before anything is allocated, and a
//!   reader that can resume after a timeout.
//! * [`codec`]: values to bytes and back with serde and `postcard`, a
//!   maintained, compact, non-self-describing binary format. Nothing that is
//!   decoded is ever executed, unlike Python's `pickle`.
//!
//! * [`stream`]: messages on a connection, framed as CPython's
//!   `multiprocessing.connection` frames them, so a Python peer can talk to
//!   us.
//! * [`pickle`]: Python's pickles as data, for a CPython peer's
//!   `send(obj)`/`recv()`: checked opcode by opcode and never run.
//! * [`handles`]: descriptors (of sockets, shared memory, processes) travel
//!   beside the bytes as `SCM_RIGHTS` ancillary data, never inside them.

pub(crate) mod codec;
pub(crate) mod described;
pub(crate) mod frame;
pub(crate) mod handles;
pub(crate) mod pickle;
pub(crate) mod stream;

pub use codec::{DecodeError, EncodeError};
pub use described::SelfDescribing;
pub use frame::FrameError;
