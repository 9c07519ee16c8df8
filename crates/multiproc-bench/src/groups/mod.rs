//! The benchmark groups, one file each. Each exposes
//! `run(&Options) -> Vec<Row>`, measuring multiproc and then the same
//! workload in CPython (via its script under `python/`), and is registered
//! in the table in `main.rs`.

use crate::python::Python;

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod manager;
pub mod pickle;
pub mod pipe;
pub mod pool;
pub mod queue;
pub mod start;
pub mod sync;

/// What every group is told about the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Fewer repetitions, so that a group takes under about 30 s.
    pub quick: bool,
    /// Print progress to stderr.
    pub verbose: bool,
    /// The interpreter that runs the Python side.
    pub python: Python,
    /// The contended run: a CPU-bound hog per core runs throughout (see
    /// `crate::hogs`); groups leave out what spinning makes meaningless
    /// there (the pipe's shared-memory spin floor).
    pub contended: bool,
}

impl Options {
    /// Reports progress on stderr, if enabled.
    pub fn progress(&self, group: &str, what: &str) {
        if self.verbose {
            eprintln!("[{group}] {what}");
        }
    }
}
