//! How a process ended.

use std::fmt;

/// A Unix signal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Signal(pub i32);

impl Signal {
    /// `SIGINT`: interrupt, as from Ctrl-C.
    pub const INT: Signal = Signal(libc::SIGINT);
    /// `SIGABRT`: `abort()`.
    pub const ABRT: Signal = Signal(libc::SIGABRT);
    /// `SIGKILL`: cannot be caught.
    pub const KILL: Signal = Signal(libc::SIGKILL);
    /// `SIGSEGV`: invalid memory access.
    pub const SEGV: Signal = Signal(libc::SIGSEGV);
    /// `SIGTERM`: polite termination request.
    pub const TERM: Signal = Signal(libc::SIGTERM);

    /// The signal's number.
    pub fn number(self) -> i32 {
        self.0
    }

    /// The signal's conventional name, such as `"SIGKILL"`, if it has one.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 32] = [
            "",
            "SIGHUP",
            "SIGINT",
            "SIGQUIT",
            "SIGILL",
            "SIGTRAP",
            "SIGABRT",
            "SIGBUS",
            "SIGFPE",
            "SIGKILL",
            "SIGUSR1",
            "SIGSEGV",
            "SIGUSR2",
            "SIGPIPE",
            "SIGALRM",
            "SIGTERM",
            "SIGSTKFLT",
            "SIGCHLD",
            "SIGCONT",
            "SIGSTOP",
            "SIGTSTP",
            "SIGTTIN",
            "SIGTTOU",
            "SIGURG",
            "SIGXCPU",
            "SIGXFSZ",
            "SIGVTALRM",
            "SIGPROF",
            "SIGWINCH",
            "SIGIO",
            "SIGPWR",
            "SIGSYS",
        ];
        usize::try_from(self.0)
            .ok()
            .and_then(|i| NAMES.get(i))
            .copied()
            .filter(|n| !n.is_empty())
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "signal {}", self.0),
        }
    }
}

/// How a process ended: an exit code or a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// The process exited with this code.
    Exited(i32),
    /// A signal ended the process.
    Signaled {
        /// The signal.
        signal: Signal,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Whether the process exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }

    /// The exit code, if the process exited.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Exited(c) => Some(c),
            ExitStatus::Signaled { .. } => None,
        }
    }

    /// The signal that ended the process, if one did.
    pub fn signal(self) -> Option<Signal> {
        match self {
            ExitStatus::Exited(_) => None,
            ExitStatus::Signaled { signal, .. } => Some(signal),
        }
    }

    /// Python's `Process.exitcode`: the code, or minus the signal number.
    pub fn python_exitcode(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled { signal, .. } => -signal.0,
        }
    }

    pub(crate) fn from_raw(raw: crate::sys::process::RawExit) -> Self {
        match raw {
            crate::sys::process::RawExit::Exited(c) => ExitStatus::Exited(c),
            crate::sys::process::RawExit::Signaled {
                signal,
                core_dumped,
            } => ExitStatus::Signaled {
                signal: Signal(signal),
                core_dumped,
            },
        }
    }

    pub(crate) fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        match self {
            ExitStatus::Exited(c) => {
                b[0] = 1;
                b[4..].copy_from_slice(&c.to_le_bytes());
            }
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                b[0] = 2;
                b[1] = u8::from(core_dumped);
                b[4..].copy_from_slice(&signal.0.to_le_bytes());
            }
        }
        b
    }

    pub(crate) fn from_bytes(b: [u8; 8]) -> Option<Self> {
        let v = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        match b[0] {
            1 => Some(ExitStatus::Exited(v)),
            2 => Some(ExitStatus::Signaled {
                signal: Signal(v),
                core_dumped: b[1] != 0,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled {
                signal,
                core_dumped: true,
            } => write!(f, "killed by {signal} (core dumped)"),
            ExitStatus::Signaled { signal, .. } => write!(f, "killed by {signal}"),
        }
    }
}
