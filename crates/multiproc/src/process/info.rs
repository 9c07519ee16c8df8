//! Who this process is, who its parent is, and which children it has.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::sys;

/// The identity of the current process (Python's `current_process()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// `"MainProcess"` in a program's first process; otherwise the name the
    /// parent gave, by default `Process-N` (`Process-N:M` for grandchildren).
    pub name: String,
    /// The operating system's process id.
    pub pid: i32,
    /// The position in the tree of processes multiproc started: empty for the
    /// main process, `[2]` for its second child, `[2, 1]` for that child's
    /// first child.
    pub ident: Vec<u32>,
}

/// The process that started this one (Python's `parent_process()`).
#[derive(Debug, Clone)]
pub struct ParentProcess {
    /// The parent's name.
    pub name: String,
    /// The parent's process id.
    pub pid: i32,
    pidfd: Option<Arc<OwnedFd>>,
}

impl ParentProcess {
    /// Whether the parent is still running.
    pub fn is_alive(&self) -> bool {
        match &self.pidfd {
            Some(fd) => !sys::socket::is_readable(std::os::fd::AsFd::as_fd(&**fd)).unwrap_or(true),
            None => false,
        }
    }
}

/// A live child of this process (what [`active_children`] lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// The child's name.
    pub name: String,
    /// The child's process id.
    pub pid: i32,
}

#[derive(Debug)]
struct Current {
    pid: i32,
    name: String,
    ident: Vec<u32>,
    children_started: u32,
    parent: Option<ParentProcess>,
    /// The parent is this process's parent in the kernel's sense too (a
    /// fork child), and the pidfd on it is not opened yet: it is opened on
    /// the first [`parent_process`], not on every start.
    parent_pidfd_pending: bool,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);

/// What a forkserver child takes from its parent at each start: the
/// current directory and the environment, as a fork or spawn child has
/// them from birth (the server's are those of the moment it started).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Surroundings {
    /// The parent's current directory, as bytes.
    pub cwd: Vec<u8>,
    /// The parent's environment, as bytes.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Surroundings {
    /// The calling process's.
    pub(crate) fn here() -> Option<Surroundings> {
        use std::os::unix::ffi::OsStrExt;
        let cwd = std::env::current_dir().ok()?;
        Some(Surroundings {
            cwd: cwd.as_os_str().as_bytes().to_vec(),
            env: std::env::vars_os()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        })
    }
}

/// What a parent tells a child about itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Lineage {
    pub name: String,
    pub ident: Vec<u32>,
    pub parent_name: String,
    pub parent_pid: i32,
}

fn with_current<T>(f: impl FnOnce(&mut Current) -> T) -> T {
    let mut guard = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    let pid = sys::process::pid();
    let cur = guard.get_or_insert_with(|| Current {
        pid,
        name: "MainProcess".into(),
        ident: Vec::new(),
        children_started: 0,
        parent: None,
        parent_pidfd_pending: false,
    });
    if cur.pid != pid {
        // A fork that did not go through multiproc: we are someone's child
        // but were never told who we are.
        *cur = Current {
            pid,
            name: format!("{}-fork", cur.name),
            ident: cur.ident.clone(),
            children_started: 0,
            parent: None,
            parent_pidfd_pending: false,
        };
    }
    f(cur)
}

/// Returns the identity of the current process.
pub fn current_process() -> ProcessInfo {
    with_current(|c| ProcessInfo {
        name: c.name.clone(),
        pid: c.pid,
        ident: c.ident.clone(),
    })
}

/// Returns the process that started this one, or `None` in a process that
/// multiproc did not start.
pub fn parent_process() -> Option<ParentProcess> {
    with_current(|c| {
        if std::mem::take(&mut c.parent_pidfd_pending)
            && let Some(parent) = &mut c.parent
        {
            parent.pidfd = open_parent_pidfd(parent.pid);
        }
        c.parent.clone()
    })
}

/// A pidfd on this process's parent in the kernel's sense, `parent`, or
/// `None` if it has exited. Opened by number, then checked: while the
/// kernel still names `parent` as our parent, that process has not exited
/// (its children would have been given to another), so the number could
/// not have been taken by another process.
fn open_parent_pidfd(parent: i32) -> Option<Arc<OwnedFd>> {
    let pidfd = sys::process::pidfd_open(parent).ok()?;
    (sys::process::parent_pid() == Some(parent)).then(|| Arc::new(pidfd))
}

/// Number of CPUs this process may run on: its affinity mask, capped by a
/// cgroup CPU quota when one is set. (Python's `cpu_count()` ignores both;
/// this is its `process_cpu_count()`.)
pub fn cpu_count() -> usize {
    sys::process::cpu_count()
}

/// Allocates the identity of the next child: its lineage with a default name.
pub(crate) fn next_child(name: Option<String>) -> Lineage {
    with_current(|c| {
        c.children_started += 1;
        let mut ident = c.ident.clone();
        ident.push(c.children_started);
        let default = format!(
            "Process-{}",
            ident
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(":")
        );
        Lineage {
            name: name.unwrap_or(default),
            ident,
            parent_name: c.name.clone(),
            parent_pid: c.pid,
        }
    })
}

/// Who a new child is. A fork child (`forked`) opens its pidfd on the
/// parent when first asked; any other opens it now.
fn child_state(lineage: Lineage, forked: bool) -> Current {
    let pidfd = if forked {
        None
    } else {
        sys::process::pidfd_open(lineage.parent_pid)
            .ok()
            .map(Arc::new)
    };
    Current {
        pid: sys::process::pid(),
        name: lineage.name,
        ident: lineage.ident,
        children_started: 0,
        parent: Some(ParentProcess {
            name: lineage.parent_name,
            pid: lineage.parent_pid,
            pidfd,
        }),
        parent_pidfd_pending: forked,
    }
}

/// Records, in a freshly started spawn or forkserver child, who it is.
pub(crate) fn become_child(lineage: Lineage) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(child_state(lineage, false));
}

/// This module's locks, held by the forking thread across a fork so that
/// the child never inherits them locked by a thread it does not have.
pub(crate) struct ForkGuards {
    current: MutexGuard<'static, Option<Current>>,
    children: MutexGuard<'static, Vec<Weak<Tracked>>>,
}

/// Takes this module's locks before a fork.
pub(crate) fn lock_for_fork() -> ForkGuards {
    let current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    // Records of children gone are freed here, before the fork, rather
    // than by the next `track`, after it: a free then writes to a heap
    // page the parent still shares with its new child.
    children.retain(|w| w.strong_count() > 0);
    ForkGuards { current, children }
}

impl ForkGuards {
    /// In the forked child: records who it is, forgets the parent's
    /// children, and releases the locks.
    pub(crate) fn become_child(mut self, lineage: Lineage) {
        // The parent's values are forgotten, not dropped: their frees (and
        // the weak counts of its children's records) would write to heap
        // pages the child shares with its parent, each write a
        // copy-on-write fault on the way to the child's exit. Only the
        // descriptor on the parent's own parent is dropped (closed unless
        // shared), as before.
        let mut parents = self.current.replace(child_state(lineage, true));
        let pidfd = parents
            .as_mut()
            .and_then(|c| c.parent.as_mut())
            .and_then(|p| p.pidfd.take());
        std::mem::forget(parents);
        drop(pidfd);
        std::mem::forget(std::mem::take(&mut *self.children));
    }
}

/// What the registry of children keeps of each.
#[derive(Debug)]
pub(crate) struct Tracked {
    pub name: String,
    pub pid: i32,
    pub pidfd: Arc<OwnedFd>,
}

static CHILDREN: Mutex<Vec<Weak<Tracked>>> = Mutex::new(Vec::new());

/// Adds a child to the registry behind [`active_children`].
pub(crate) fn track(child: &Arc<Tracked>) {
    let mut list = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|w| w.strong_count() > 0);
    list.push(Arc::downgrade(child));
}

/// Returns the children this process started that are still running and
/// whose handles still exist.
pub fn active_children() -> Vec<ChildInfo> {
    let mut list = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|w| w.strong_count() > 0);
    list.iter()
        .filter_map(Weak::upgrade)
        .filter(|t| !sys::socket::is_readable(std::os::fd::AsFd::as_fd(&t.pidfd)).unwrap_or(true))
        .map(|t| ChildInfo {
            name: t.name.clone(),
            pid: t.pid,
        })
        .collect()
}
