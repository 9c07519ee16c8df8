//! Functions that another program may run, by name: a table the linker
//! assembles from every `#[multiproc::task]` in the program. Cluster
//! agents use it, and so does a manager's pool
//! ([`PoolProxy`](crate::PoolProxy)).
//!
//! Locally, a pool names its function by offsets from an anchor function
//! (`sys::code`), which may only cross a private channel between two
//! processes of one executable. To a cluster agent, or to a manager that
//! any client holding its auth key may call, a task names its function by
//! a string registered at compile time. The producer looks the function up
//! by address (so an unregistered one fails at submit, before any
//! traffic), the agent or the manager by name; nothing read from the
//! network is ever turned into an address. A signature (name and type names) and a build
//! fingerprint (the executable's GNU build id, or a SHA-256 of it) check
//! that both sides mean the same function.
//!
//! The producer's address lookup cannot rest on the whole entry preamble
//! alone. The preamble names the target and two generic functions
//! instantiated for its types (`sys::code::shim` and the body); an
//! optimised build instantiates those again in every crate that names
//! them, so a task defined in a library and mapped from a binary comes
//! with the binary's copies, at other addresses than the ones its
//! registration (in the library) recorded. So a chunk also carries a
//! [`TaskKey`], the target's offset and its types, found in the table
//! when the preamble is not.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use super::worker::chunk_body;
use crate::sys::code::{EntryId, PREAMBLE};

/// Every registered task of this executable.
#[linkme::distributed_slice]
pub static TASKS: [TaskEntry];

/// One `#[multiproc::task]`: its name and how to resolve it.
#[derive(Debug)]
pub struct TaskEntry {
    name: &'static str,
    resolve: fn() -> Resolved,
}

impl TaskEntry {
    /// An entry; made by the macro only.
    pub const fn new(name: &'static str, resolve: fn() -> Resolved) -> TaskEntry {
        TaskEntry { name, resolve }
    }
}

/// What a registered function is, at run time.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    entry: EntryId,
    key: TaskKey,
    arg: &'static str,
    ret: &'static str,
}

impl Resolved {
    /// Resolves `f`; called by the macro's code only.
    pub fn new<A, R>(f: fn(A) -> R) -> Resolved
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        Resolved {
            entry: EntryId::new(f, chunk_body::<A, R>),
            key: TaskKey::of(f),
            arg: std::any::type_name::<A>(),
            ret: std::any::type_name::<R>(),
        }
    }
}

/// A function by what every crate of the executable that names it agrees
/// on: its own offset (one definition: the macro never inlines a task) and
/// its argument and result types. What a pool's chunk names its task by
/// when its preamble, made with another crate's instantiations of the shim
/// and the body, is not the one registered.
///
/// The types are a [`TypeId`], not the type names a signature hashes: two
/// types may have one name (two versions of a crate in one program), and
/// two functions of such types may share one address (identical code is
/// folded). Made for serde tasks only (the body `chunk_body`): a chunk of
/// another body (plain data) carries none, and so never finds a task by
/// its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TaskKey {
    target: i64,
    types: TypeId,
}

impl TaskKey {
    /// The key of `f`, run through `chunk_body::<A, R>`.
    pub(crate) fn of<A: 'static, R: 'static>(f: fn(A) -> R) -> TaskKey {
        TaskKey {
            target: EntryId::target_offset(f),
            types: TypeId::of::<fn(A) -> R>(),
        }
    }
}

/// A registered task as the pool and the agent use it.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub name: &'static str,
    pub entry: EntryId,
    /// Hash of the name and the argument and result type names.
    pub signature: String,
}

pub(crate) struct Registry {
    /// By the local entry id's bytes: what a pool's chunks carry.
    by_entry: HashMap<[u8; PREAMBLE], usize>,
    /// By target and types: every task of each key (more than one if
    /// identical code was folded to one address).
    by_key: HashMap<TaskKey, Vec<usize>>,
    by_name: HashMap<&'static str, usize>,
    tasks: Vec<Task>,
    /// Names registered twice: refused on both sides.
    duplicates: Vec<&'static str>,
}

/// The table, built at the first use. Never waits for another thread:
/// a child forked (start method *fork*) while another thread of its parent
/// built the table must not wait for that thread, which it does not have.
/// So the table is built without a lock, and the first one stored wins.
pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    if let Some(r) = REGISTRY.get() {
        return r;
    }
    let _ = REGISTRY.set(Registry::build(
        TASKS.iter().map(|e| (e.name, (e.resolve)())),
    ));
    REGISTRY.get_or_init(|| unreachable!("set above"))
}

/// Why a function cannot run on the cluster or a manager's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// No `#[multiproc::task]` on it (`type_name` of the function type).
    NotRegistered,
    /// Two functions were registered under this name.
    Duplicate(&'static str),
}

impl Registry {
    fn build(tasks: impl Iterator<Item = (&'static str, Resolved)>) -> Registry {
        let mut reg = Registry {
            by_entry: HashMap::new(),
            by_key: HashMap::new(),
            by_name: HashMap::new(),
            tasks: Vec::new(),
            duplicates: Vec::new(),
        };
        for (name, r) in tasks {
            let index = reg.tasks.len();
            reg.tasks.push(Task {
                name,
                entry: r.entry,
                signature: signature(name, r.arg, r.ret),
            });
            if reg.by_name.insert(name, index).is_some() {
                reg.duplicates.push(name);
            }
            // Identical-code folding may give two functions one address:
            // their code is then the same, so either name runs it.
            reg.by_entry.entry(r.entry.preamble()).or_insert(index);
            reg.by_key.entry(r.key).or_default().push(index);
        }
        reg
    }

    /// The task registered for the function a pool chunk names: by its
    /// local entry preamble (function, body and shim: the types too), else
    /// by its key (function and types), if it has one and exactly one
    /// task has that key.
    pub(crate) fn by_entry(
        &self,
        preamble: &[u8; PREAMBLE],
        key: Option<TaskKey>,
    ) -> Result<&Task, Lookup> {
        if let Some(&i) = self.by_entry.get(preamble) {
            return self.unique(&self.tasks[i]);
        }
        // The shim or the body are another crate's copies. Two tasks of
        // one key (identical code folded to one address) are ambiguous:
        // neither is taken.
        match key.and_then(|k| self.by_key.get(&k)).map(Vec::as_slice) {
            Some(&[i]) => self.unique(&self.tasks[i]),
            _ => Err(Lookup::NotRegistered),
        }
    }

    /// The task registered under `name`.
    pub(crate) fn by_name(&self, name: &str) -> Result<&Task, Lookup> {
        let task = self
            .by_name
            .get(name)
            .map(|&i| &self.tasks[i])
            .ok_or(Lookup::NotRegistered)?;
        self.unique(task)
    }

    fn unique<'a>(&self, task: &'a Task) -> Result<&'a Task, Lookup> {
        match self.duplicates.iter().find(|d| **d == task.name) {
            Some(d) => Err(Lookup::Duplicate(d)),
            None => Ok(task),
        }
    }
}

fn signature(name: &str, arg: &str, ret: &str) -> String {
    let mut h = Sha256::new();
    for part in [name, arg, ret] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize()[..8])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This executable's build fingerprint: `gnu:<build id>` from its ELF
/// notes, else `sha256:<first 16 bytes of the file's hash>`. Computed at
/// the first use without a lock (as [`registry`]), reading only the ELF
/// headers and notes when there is a build id.
pub(crate) fn build_fingerprint() -> &'static str {
    static BUILD: OnceLock<String> = OnceLock::new();
    if let Some(b) = BUILD.get() {
        return b;
    }
    let _ = BUILD.set(compute_fingerprint());
    BUILD.get_or_init(|| unreachable!("set above"))
}

fn compute_fingerprint() -> String {
    use std::os::unix::fs::FileExt;
    let Ok(file) = std::fs::File::open("/proc/self/exe") else {
        return "unknown".to_owned();
    };
    let read = |offset: u64, len: usize| -> Option<Vec<u8>> {
        // Headers and notes are small: anything larger is not an ELF we
        // understand.
        if len > 1 << 20 {
            return None;
        }
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    };
    if let Some(id) = gnu_build_id_with(read) {
        return format!("gnu:{}", hex(&id));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    loop {
        match file.read_at(&mut buf, at) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                at += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return "unknown".to_owned(),
        }
    }
    format!("sha256:{}", hex(&h.finalize()[..16]))
}

/// The `NT_GNU_BUILD_ID` note of a 64-bit little-endian ELF image held in
/// memory.
#[cfg(test)]
fn gnu_build_id(elf: &[u8]) -> Option<Vec<u8>> {
    gnu_build_id_with(|offset, len| {
        let start = usize::try_from(offset).ok()?;
        elf.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    })
}

/// The `NT_GNU_BUILD_ID` note of a 64-bit little-endian ELF image, found
/// through its program headers (`PT_NOTE`); `read(offset, len)` reads
/// the image.
fn gnu_build_id_with(read: impl Fn(u64, usize) -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    const PT_NOTE: u32 = 4;
    const NT_GNU_BUILD_ID: u32 = 3;
    let header = read(0, 64)?;
    let u16_at = |b: &[u8], o: usize| {
        Some(u16::from_le_bytes(
            b.get(o..o.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let u32_at = |b: &[u8], o: usize| {
        Some(u32::from_le_bytes(
            b.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let u64_at = |b: &[u8], o: usize| {
        Some(u64::from_le_bytes(
            b.get(o..o.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    // "\x7fELF", class 2 (64-bit), data 1 (little endian).
    if header.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = u64_at(&header, 0x20)?;
    let phentsize = usize::from(u16_at(&header, 0x36)?);
    let phnum = usize::from(u16_at(&header, 0x38)?);
    if phentsize < 56 {
        return None;
    }
    let table = read(phoff, phnum.checked_mul(phentsize)?)?;
    for i in 0..phnum {
        let ph = i.checked_mul(phentsize)?;
        if u32_at(&table, ph)? != PT_NOTE {
            continue;
        }
        let off = u64_at(&table, ph.checked_add(8)?)?;
        let size = usize::try_from(u64_at(&table, ph.checked_add(32)?)?).ok()?;
        let notes = read(off, size)?;
        let mut at = 0usize;
        while at.checked_add(12)? <= notes.len() {
            let word = |o: usize| -> Option<usize> {
                Some(u32::from_le_bytes(notes.get(o..o + 4)?.try_into().ok()?) as usize)
            };
            let (namesz, descsz, kind) = (word(at)?, word(at + 4)?, word(at + 8)? as u32);
            let name_at = at + 12;
            let desc_at = name_at.checked_add(namesz.checked_add(3)? & !3)?;
            let next = desc_at.checked_add(descsz.checked_add(3)? & !3)?;
            if kind == NT_GNU_BUILD_ID
                && notes.get(name_at..name_at.checked_add(namesz)?)? == b"GNU\0"
            {
                return notes
                    .get(desc_at..desc_at.checked_add(descsz)?)
                    .map(<[u8]>::to_vec);
            }
            at = next;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_stable_and_named() {
        let a = build_fingerprint();
        assert!(a.starts_with("gnu:") || a.starts_with("sha256:"), "{a}");
        assert_eq!(a, build_fingerprint());
        // Read in pieces, the build id is the one of the whole image.
        let image = std::fs::read("/proc/self/exe").unwrap();
        if let Some(id) = gnu_build_id(&image) {
            assert_eq!(a, format!("gnu:{}", hex(&id)));
        }
    }

    #[test]
    fn garbage_elf_has_no_build_id() {
        assert_eq!(gnu_build_id(b""), None);
        assert_eq!(gnu_build_id(b"\x7fELF\x02\x01"), None);
        let mut fake = vec![0u8; 128];
        fake[..6].copy_from_slice(b"\x7fELF\x02\x01");
        fake[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        fake[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(gnu_build_id(&fake), None);
    }

    fn find(
        reg: &Registry,
        preamble: &[u8; PREAMBLE],
        key: Option<TaskKey>,
    ) -> Result<&'static str, Lookup> {
        reg.by_entry(preamble, key).map(|t| t.name)
    }

    fn double(x: u64) -> u64 {
        x * 2
    }

    fn shout(s: String) -> String {
        s.to_uppercase()
    }

    /// Another body than the registered one: what a chunk made in another
    /// crate names (its own instantiation of `chunk_body`).
    fn elsewhere<A, R>(
        _: fn(A) -> R,
        _: &[u8],
        _: Vec<std::os::fd::OwnedFd>,
    ) -> crate::sys::code::Reply {
        unreachable!("never called")
    }

    /// The preamble and key another crate's pool would send for `f`.
    fn from_elsewhere<A: 'static, R: 'static>(f: fn(A) -> R) -> ([u8; PREAMBLE], TaskKey) {
        (
            EntryId::new(f, elsewhere::<A, R>).preamble(),
            TaskKey::of(f),
        )
    }

    #[test]
    fn a_task_is_found_by_its_preamble_or_else_by_its_key() {
        let reg = Registry::build(
            [
                ("double", Resolved::new(double as fn(u64) -> u64)),
                ("shout", Resolved::new(shout as fn(String) -> String)),
            ]
            .into_iter(),
        );
        let local = EntryId::new(double as fn(u64) -> u64, chunk_body::<u64, u64>).preamble();
        assert_eq!(find(&reg, &local, None).unwrap(), "double");
        let (preamble, key) = from_elsewhere(double as fn(u64) -> u64);
        assert_ne!(preamble, local);
        assert_eq!(find(&reg, &preamble, Some(key)).unwrap(), "double");
        let (preamble, key) = from_elsewhere(shout as fn(String) -> String);
        assert_eq!(find(&reg, &preamble, Some(key)).unwrap(), "shout");
        // Without a key (a plain-data chunk), only the preamble counts.
        assert_eq!(find(&reg, &preamble, None), Err(Lookup::NotRegistered));
        // An unregistered function has no key in the table.
        let (preamble, key) = from_elsewhere(unregistered as fn(u64) -> u64);
        assert_eq!(find(&reg, &preamble, Some(key)), Err(Lookup::NotRegistered));
    }

    fn unregistered(x: u64) -> u64 {
        x + 7
    }

    /// `at` resolved as if it took `A` and returned `R`: what one of two
    /// functions of other types, folded to one address, would register.
    fn folded<A, R>(at: fn(u64) -> u64) -> Resolved
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let r = Resolved::new(at);
        Resolved {
            key: TaskKey {
                target: r.key.target,
                types: TypeId::of::<fn(A) -> R>(),
            },
            arg: std::any::type_name::<A>(),
            ret: std::any::type_name::<R>(),
            ..r
        }
    }

    #[test]
    fn one_address_with_other_types_is_another_task() {
        let reg = Registry::build(
            [
                ("u64", Resolved::new(double as fn(u64) -> u64)),
                ("u32", folded::<u32, u32>(double)),
            ]
            .into_iter(),
        );
        let (preamble, key) = from_elsewhere(double as fn(u64) -> u64);
        assert_eq!(find(&reg, &preamble, Some(key)).unwrap(), "u64");
        let key32 = TaskKey {
            types: TypeId::of::<fn(u32) -> u32>(),
            ..key
        };
        assert_eq!(find(&reg, &preamble, Some(key32)).unwrap(), "u32");
        let key16 = TaskKey {
            types: TypeId::of::<fn(u16) -> u16>(),
            ..key
        };
        assert_eq!(
            find(&reg, &preamble, Some(key16)),
            Err(Lookup::NotRegistered)
        );
    }

    #[test]
    fn one_key_twice_is_ambiguous_and_a_duplicate_name_is_refused() {
        let f = double as fn(u64) -> u64;
        let reg = Registry::build([("a", Resolved::new(f)), ("b", Resolved::new(f))].into_iter());
        // The preamble registered first is found (the same code either way)...
        let local = EntryId::new(f, chunk_body::<u64, u64>).preamble();
        assert_eq!(find(&reg, &local, None).unwrap(), "a");
        // ...but by key, two tasks are candidates: neither is taken.
        let (preamble, key) = from_elsewhere(f);
        assert_eq!(find(&reg, &preamble, Some(key)), Err(Lookup::NotRegistered));
        let reg = Registry::build(
            [
                ("same", Resolved::new(f)),
                ("same", Resolved::new(shout as fn(String) -> String)),
            ]
            .into_iter(),
        );
        assert_eq!(
            find(&reg, &preamble, Some(key)),
            Err(Lookup::Duplicate("same"))
        );
        assert_eq!(find(&reg, &local, None), Err(Lookup::Duplicate("same")));
    }

    #[test]
    fn signatures_differ_by_any_part() {
        let s = signature("a", "u64", "u64");
        assert_ne!(s, signature("a", "u32", "u64"));
        assert_ne!(s, signature("a", "u64", "u32"));
        assert_ne!(s, signature("b", "u64", "u64"));
        assert_eq!(s.len(), 16);
    }
}
