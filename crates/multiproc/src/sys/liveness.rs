//! One identity for a process, and the one way every shared structure asks
//! whether a process it recorded still lives.
//!
//! A process id alone is not an identity: ids are reused, and a process in
//! another PID namespace (a container, `unshare`) records a number that
//! means another process, or none, in ours. So a structure records, beside
//! the id, an [`Identity`]: the low 32 bits of the process's start time
//! (clock ticks since boot, the same clock in every namespace) and the
//! inode of its PID namespace.
//!
//! [`is_alive`] answers "dead" only when it is sure: the process is in our
//! namespace and no process with that id and start time exists (or it is a
//! zombie, whose memory is gone), or it is in a namespace we can see into
//! and no process there matches. Everything else (an unreadable `/proc`,
//! a namespace we cannot see, an identity not yet written) reads as alive:
//! a structure then waits for that peer until the caller's deadline, and
//! never takes over a lock a live process holds.
//!
//! Threads never own anything here: a thread may exit while a borrow it
//! created lives on (a leaked guard, a scoped thread that returned one), so
//! only the end of the whole process ends its claims.

use std::sync::atomic::{AtomicU64, Ordering};

use super::futex;

/// What, beside its process id, identifies a process: `ns << 32 | start`,
/// where `start` is the low 32 bits of its start time in clock ticks and
/// `ns` the inode of its PID namespace. Never 0 for a real process (the
/// namespace inode is never 0); 0 means "not recorded".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity(pub(crate) u64);

impl Identity {
    /// No identity recorded.
    pub(crate) const UNKNOWN: Identity = Identity(0);

    fn ns(self) -> u32 {
        (self.0 >> 32) as u32
    }

    fn start(self) -> u32 {
        self.0 as u32
    }
}

/// The cached id and identity (`pid`, identity), and the fork generation
/// they were computed in.
static ME_GENERATION: AtomicU64 = AtomicU64::new(0);
static ME_PID: AtomicU64 = AtomicU64::new(0);
static ME: AtomicU64 = AtomicU64::new(0);

/// The calling process's id and identity, computed once per process (a
/// forked child computes its own): what a lock holder records.
#[inline]
pub(crate) fn current() -> (u32, Identity) {
    if ME_GENERATION.load(Ordering::Acquire) == u64::from(futex::generation_unchecked()) {
        return (
            ME_PID.load(Ordering::Relaxed) as u32,
            Identity(ME.load(Ordering::Relaxed)),
        );
    }
    current_slow()
}

#[cold]
fn current_slow() -> (u32, Identity) {
    let g = u64::from(futex::generation());
    let pid = futex::pid();
    let id = compute_me();
    ME_PID.store(u64::from(pid), Ordering::Relaxed);
    ME.store(id.0, Ordering::Relaxed);
    ME_GENERATION.store(g, Ordering::Release);
    (pid, id)
}

/// The calling process's identity.
pub(crate) fn me() -> Identity {
    current().1
}

fn compute_me() -> Identity {
    let ns = ns_inode("self").unwrap_or(1);
    let start = stat_of("self").map_or(0, |s| s.start);
    Identity(u64::from(ns) << 32 | u64::from(start))
}

/// The calling process's id (cached; see [`futex::pid`]).
#[inline]
pub(crate) fn pid() -> u32 {
    futex::pid()
}

/// What `/proc/<pid>/stat` says of a process.
struct Stat {
    /// Low 32 bits of the start time, in clock ticks since boot.
    start: u32,
    /// Exited, and only its entry remains (`Z`, `X`).
    zombie: bool,
}

/// Why a look-up in `/proc` found nothing.
enum Lookup {
    /// No such process.
    Gone,
    /// `/proc` could not answer (not mounted, no permission...).
    Unknown,
}

fn stat_of(pid: &str) -> Result<Stat, Lookup> {
    let path = format!("/proc/{pid}/stat");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Lookup::Gone),
        // ESRCH: the process went away while we read.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(Lookup::Gone),
        Err(_) => return Err(Lookup::Unknown),
    };
    // `pid (comm) state ...`: the command may hold spaces and parentheses,
    // so fields are counted from the last `)`.
    let close = text
        .iter()
        .rposition(|&b| b == b')')
        .ok_or(Lookup::Unknown)?;
    let rest = std::str::from_utf8(&text[close + 1..]).map_err(|_| Lookup::Unknown)?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next().ok_or(Lookup::Unknown)?;
    // Field 3 is the state; the start time is field 22, so 18 more on.
    let start = fields
        .nth(18)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(Lookup::Unknown)?;
    Ok(Stat {
        start: start as u32,
        zombie: matches!(state, "Z" | "X" | "x"),
    })
}

fn ns_inode(pid: &str) -> Option<u32> {
    let st = rustix::fs::stat(format!("/proc/{pid}/ns/pid")).ok()?;
    u32::try_from(st.st_ino).ok()
}

/// Whether process `pid`, recorded with identity `id`, may still live.
/// False only when that is certain (see the module's description); a
/// recorded identity of [`Identity::UNKNOWN`] reads alive.
pub(crate) fn is_alive(pid: u32, id: Identity) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        // Not a process id at all: nothing lives there to wait for. (Only
        // a corrupt peer writes such a number.)
        return false;
    }
    let (my_pid, mine) = current();
    if id == Identity::UNKNOWN {
        // Written by a holder that has not yet recorded itself (a few
        // instructions after taking a lock) or by a corrupt peer: we cannot
        // tell whose number this is.
        return true;
    }
    if id == mine && pid == my_pid {
        return true;
    }
    if id.ns() == mine.ns() {
        return match stat_of(&pid.to_string()) {
            Ok(s) => !s.zombie && s.start == id.start(),
            Err(Lookup::Gone) => false,
            Err(Lookup::Unknown) => true,
        };
    }
    alive_in_other_namespace(pid, id)
}

/// Whether no process has id `pid` in our PID namespace, or only a
/// zombie (its memory gone). For a holder that died before it recorded its
/// identity: the caller must also see the same state again after a pause,
/// since an id from another namespace says nothing about ours.
pub(crate) fn pid_gone(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return true;
    }
    match stat_of(&pid.to_string()) {
        Ok(s) => s.zombie,
        Err(Lookup::Gone) => true,
        Err(Lookup::Unknown) => false,
    }
}

/// A process in another PID namespace: look for it among the processes we
/// can see (a descendant namespace is visible to us, under other ids).
fn alive_in_other_namespace(pid: u32, id: Identity) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    let mut namespace_visible = false;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if ns_inode(name) != Some(id.ns()) {
            continue;
        }
        namespace_visible = true;
        if innermost_pid(name) != Some(pid) {
            continue;
        }
        return match stat_of(name) {
            Ok(s) => !s.zombie && s.start == id.start(),
            Err(Lookup::Gone) => false,
            Err(Lookup::Unknown) => true,
        };
    }
    // A namespace we see into, without that process: it is gone. One we
    // cannot see (a parent's or a sibling's): we cannot tell.
    !namespace_visible
}

/// The id a process has in its own (innermost) PID namespace: the last
/// number of `NSpid:` in `/proc/<pid>/status`.
fn innermost_pid(pid: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_ascii_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_lives_and_a_wrong_start_time_does_not() {
        let me = me();
        assert_ne!(me, Identity::UNKNOWN);
        assert!(is_alive(pid(), me));
        let other_start = Identity(me.0 ^ 1);
        assert!(!is_alive(pid(), other_start));
    }

    #[test]
    fn a_reaped_child_is_dead_and_a_zombie_is_dead_too() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let start = stat_of(&pid.to_string()).ok().expect("stat").start;
        let id = Identity(u64::from(me().ns()) << 32 | u64::from(start));
        assert!(is_alive(pid, id));
        child.kill().expect("kill");
        // Not reaped yet: a zombie, whose memory is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while is_alive(pid, id) {
            assert!(std::time::Instant::now() < deadline, "zombie read as alive");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.wait().expect("wait");
        assert!(!is_alive(pid, id));
    }

    #[test]
    fn an_unknown_identity_or_a_foreign_namespace_reads_alive() {
        assert!(is_alive(1, Identity::UNKNOWN));
        // A namespace inode no process here has: we cannot see it, so we
        // cannot call its process dead.
        let foreign = Identity(u64::from(me().ns().wrapping_add(12345)) << 32 | 7);
        assert!(is_alive(4_000_000, foreign));
    }
}
