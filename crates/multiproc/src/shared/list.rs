//! `ShareableList` (Python's `shared_memory.ShareableList`): a fixed-length
//! list of scalars and short strings in one shared memory object.
//!
//! Layout of the payload, in 64-bit little-endian words (after the object
//! header and its lock, see `shm::object`):
//!
//! ```text
//! 0           magic "MPSLIST1"
//! 1           n, the number of slots
//! 2 .. 2+n    each slot's capacity in bytes (a multiple of 8, at least 8)
//! then        each slot: a header word (type tag in bits 0..8, byte
//!             length of a string in bits 32..64), then capacity/8 words
//! ```
//!
//! A process reads the magic, `n` and the capacities once, when it makes
//! its handle, checks that they fit the object, and keeps its own copy: a
//! peer that rewrites them later changes nothing here. The slots are read
//! and written whole under the object's lock (a lock whose holder died is
//! recovered), by atomic word copies; every read is then checked (the tag,
//! the length against this process's copy of the capacity, UTF-8), so that
//! a peer writing garbage gives [`ListError::Corrupt`], never a panic.

use std::io;
use std::sync::Arc;

use super::SharedMemory;
use super::name::{self, Kind, NameError};
use crate::shm::object::{LockedSlice, Tag};
use crate::shm::segment::Segment;
use crate::shm::states::LockState;
use crate::sync::Shared;

/// The object kind in the shared object's tag.
const LIST: u32 = u32::from_le_bytes(*b"SLST");
const MAGIC: u64 = u64::from_le_bytes(*b"MPSLIST1");
/// Words before the capacities.
const HEAD: usize = 2;

const TAG_NONE: u64 = 1;
const TAG_INT: u64 = 2;
const TAG_FLOAT: u64 = 3;
const TAG_BOOL: u64 = 4;
const TAG_STR: u64 = 5;
const TAG_BYTES: u64 = 6;

/// One element of a [`ShareableList`]: what Python's `ShareableList` can
/// hold (`int` of 64 bits, `float`, `bool`, `None`, `str`, `bytes`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Item {
    /// Python's `None`.
    None,
    /// A 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string (UTF-8).
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl Item {
    /// The bytes it needs in a slot.
    fn size(&self) -> usize {
        match self {
            Item::Str(s) => s.len(),
            Item::Bytes(b) => b.len(),
            _ => 8,
        }
    }
}

/// Why a [`ShareableList`] operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// No slot at `index` (Python's `IndexError`).
    #[error("index {index} is out of range for a list of {len}")]
    IndexOutOfRange {
        /// The index given.
        index: usize,
        /// The list's length.
        len: usize,
    },
    /// The value needs more bytes than its slot holds (Python's
    /// `ValueError`): a slot's size is fixed when the list is created.
    #[error("slot {index} holds {capacity} bytes; the value needs {needed}")]
    TooLarge {
        /// The slot.
        index: usize,
        /// The bytes the value needs.
        needed: usize,
        /// The bytes the slot holds.
        capacity: usize,
    },
    /// The slot holds bytes that are no item (another process wrote
    /// garbage into the shared memory).
    #[error("slot {index} is corrupt: {reason}")]
    Corrupt {
        /// The slot.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// [`ShareableList::index`] found no equal item (Python's
    /// `ValueError`).
    #[error("the item is not in the list")]
    NotInList,
}

/// Where a slot is: its header word, and its capacity in words.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at: usize,
    words: usize,
}

/// A fixed-length list of [`Item`]s in shared memory (Python's
/// `shared_memory.ShareableList`), readable and writable by index from
/// every process that holds it.
///
/// Each slot has a fixed size, set at creation by its initial value as in
/// Python: 8 bytes for a number, a boolean or `None`, a string's or bytes'
/// length rounded up to 8 (at least 8) otherwise. Any item that fits may
/// replace any other (a slot that held a string may take an integer). Each
/// read and write of a slot is whole (under the list's lock, which a dying
/// holder does not keep), unlike Python's. Another process holding the
/// memory can write garbage into it: reads check what they find, and give
/// [`ListError::Corrupt`] for anything that is not an item. A writer
/// killed in the middle of a write leaves that slot `Corrupt` until it is
/// set again. As for [`Value`](crate::Value), a live process that keeps
/// the lock (or a peer that writes a live process's id into it) makes
/// reads and writes wait.
///
/// Send it to a child like any handle, or give it a name
/// ([`new_named`](Self::new_named)) that any process of the same user can
/// [`attach_named`](Self::attach_named), as for [`SharedMemory`].
///
/// ```
/// use multiproc::{Item, Process, ShareableList};
///
/// fn bump(list: ShareableList) {
///     let Item::Int(n) = list.get(0).unwrap() else { panic!() };
///     list.set(0, Item::Int(n + 1)).unwrap();
///     list.set(1, Item::Str("child".into())).unwrap();
/// }
///
/// let list = ShareableList::new(&[Item::Int(41), Item::Str("parent".into()), Item::None])?;
/// Process::spawn(bump, list.clone())?.join()?;
/// assert_eq!(list.get(0)?, Item::Int(42));
/// assert_eq!(list.get(1)?, Item::Str("child".into()));
/// assert_eq!(list.len(), 3);
/// // "parent" made slot 1 eight bytes long: a longer string does not fit.
/// assert!(list.set(1, Item::Str("a longer string".into())).is_err());
/// assert_eq!(list.count(&Item::None)?, 1);
/// assert_eq!(list.index(&Item::Int(42))?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ShareableList {
    shared: Arc<Shared<LockState>>,
    slots: Arc<[Slot]>,
    name: Option<Arc<(String, name::Server)>>,
}

impl std::fmt::Debug for ShareableList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareableList")
            .field("len", &self.slots.len())
            .field("name", &self.name())
            .finish()
    }
}

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "shareable list too large")
}

fn corrupt_layout(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a valid ShareableList: {why}"),
    )
}

impl ShareableList {
    /// A new list holding `items`, each slot sized by its item (see the
    /// type's docs). An empty list is allowed.
    pub fn new(items: &[Item]) -> io::Result<ShareableList> {
        let caps: Vec<usize> = items
            .iter()
            .map(|i| {
                i.size()
                    .max(8)
                    .checked_next_multiple_of(8)
                    .ok_or_else(too_large)
            })
            .collect::<io::Result<_>>()?;
        let mut words = HEAD.checked_add(caps.len()).ok_or_else(too_large)?;
        for c in &caps {
            words = words.checked_add(1 + c / 8).ok_or_else(too_large)?;
        }
        let shared = Shared::create_tagged("multiproc-list", Tag::of::<u64>(LIST, words))?;
        let slots = {
            let (mut g, _) = lock(&shared);
            let mut ok = g.set(0, MAGIC) && g.set(1, caps.len() as u64);
            for (i, c) in caps.iter().enumerate() {
                ok &= g.set(HEAD + i, *c as u64);
            }
            debug_assert!(ok, "a fresh list has room for its layout");
            layout(&g)?
        };
        let list = ShareableList {
            shared,
            slots,
            name: None,
        };
        for (i, item) in items.iter().enumerate() {
            list.set(i, item.clone())
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(list)
    }

    /// [`new`](Self::new), under a name any process of this user can
    /// [`attach_named`](Self::attach_named) while this handle or a clone
    /// of it holds it; names behave as for
    /// [`SharedMemory::create_named`](SharedMemory::create_named) (and
    /// share their namespace).
    ///
    /// ```
    /// use multiproc::{Item, ShareableList};
    ///
    /// let list = ShareableList::new_named("doc-example-list", &[Item::Float(1.5), Item::Bool(true)])?;
    /// let other = ShareableList::attach_named("doc-example-list")?;
    /// other.set(1, Item::Bool(false))?;
    /// assert_eq!(list.to_vec()?, vec![Item::Float(1.5), Item::Bool(false)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new_named(name: &str, items: &[Item]) -> Result<ShareableList, NameError> {
        let mut list = ShareableList::new(items)?;
        let words = list.shared.object().tag().len as u64;
        let server = name::Server::start(name, Kind::List, words, &[list.shared.object().fd()])?;
        list.name = Some(Arc::new((name.to_string(), server)));
        Ok(list)
    }

    /// Attaches to a list by the name given at
    /// [`new_named`](Self::new_named), from any process of the same user.
    /// A name that holds a [`SharedMemory`] is
    /// [`NameError::WrongKind`].
    pub fn attach_named(name: &str) -> Result<ShareableList, NameError> {
        let (kind, words, fd) = name::fetch(name)?;
        if kind != Kind::List {
            return Err(NameError::WrongKind {
                name: name.to_string(),
                found: kind.describe(),
                wanted: Kind::List.describe(),
            });
        }
        let words = usize::try_from(words).map_err(|_| corrupt_layout("impossible length"))?;
        let shared = Shared::attach(fd, words as u64, Tag::of::<u64>(LIST, words))?;
        Ok(ShareableList::from_shared(shared)?)
    }

    fn from_shared(shared: Arc<Shared<LockState>>) -> io::Result<ShareableList> {
        let slots = {
            let (g, _) = lock(&shared);
            layout(&g)?
        };
        Ok(ShareableList {
            shared,
            slots,
            name: None,
        })
    }

    /// The name given at [`new_named`](Self::new_named), on the creating
    /// handle and its clones until [`unlink`](Self::unlink)ed.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref().map(|(n, _)| n.as_str())
    }

    /// Lets this handle's hold on the name go, as
    /// [`SharedMemory::unlink`].
    pub fn unlink(&mut self) {
        self.name = None;
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the list has no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The bytes slot `index` holds.
    pub fn capacity(&self, index: usize) -> Result<usize, ListError> {
        Ok(self.slot(index)?.words * 8)
    }

    fn slot(&self, index: usize) -> Result<Slot, ListError> {
        self.slots
            .get(index)
            .copied()
            .ok_or(ListError::IndexOutOfRange {
                index,
                len: self.slots.len(),
            })
    }

    /// A copy of item `index` (Python's `list[index]`).
    pub fn get(&self, index: usize) -> Result<Item, ListError> {
        let slot = self.slot(index)?;
        let mut words = vec![0u64; 1 + slot.words];
        {
            let (g, _) = lock(&self.shared);
            for (k, w) in words.iter_mut().enumerate() {
                *w = g.get(slot.at + k).unwrap_or(0);
            }
        }
        decode(index, slot, &words)
    }

    /// Replaces item `index` (Python's `list[index] = item`); an item that
    /// needs more bytes than the slot holds is [`ListError::TooLarge`].
    pub fn set(&self, index: usize, item: Item) -> Result<(), ListError> {
        let slot = self.slot(index)?;
        let needed = item.size();
        if needed > slot.words * 8 {
            return Err(ListError::TooLarge {
                index,
                needed,
                capacity: slot.words * 8,
            });
        }
        let mut words = vec![0u64; 1 + needed.div_ceil(8)];
        let (tag, payload): (u64, &[u8]) = match &item {
            Item::None => (TAG_NONE, &[]),
            Item::Int(v) => {
                words[1] = *v as u64;
                (TAG_INT, &[])
            }
            Item::Float(v) => {
                words[1] = v.to_bits();
                (TAG_FLOAT, &[])
            }
            Item::Bool(v) => {
                words[1] = u64::from(*v);
                (TAG_BOOL, &[])
            }
            Item::Str(s) => (TAG_STR, s.as_bytes()),
            Item::Bytes(b) => (TAG_BYTES, b),
        };
        for (k, chunk) in payload.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            words[1 + k] = u64::from_le_bytes(w);
        }
        words[0] = tag | ((payload.len() as u64) << 32);
        let (mut g, _) = lock(&self.shared);
        // The header goes to 0 (no item) first and gets its value last: a
        // writer killed in between leaves a slot that reads as
        // `Corrupt`, never as a mix of two items. Each `set` is within the
        // object (the layout was checked against its size); false only
        // for a guard a forked child inherited, and this one lives here.
        let _ = g.set(slot.at, 0);
        for (k, w) in words.iter().enumerate().skip(1) {
            let _ = g.set(slot.at + k, *w);
        }
        let _ = g.set(slot.at, words[0]);
        Ok(())
    }

    /// A copy of every item, in order; the first corrupt slot is an error.
    /// (Each slot is read whole, but the list not at one instant.)
    pub fn to_vec(&self) -> Result<Vec<Item>, ListError> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// The first index holding an item equal to `item` (Python's
    /// `index`); [`ListError::NotInList`] if none. Items of different
    /// variants are never equal (Python's `1 == 1.0 == True` are not).
    pub fn index(&self, item: &Item) -> Result<usize, ListError> {
        for i in 0..self.len() {
            if self.get(i)? == *item {
                return Ok(i);
            }
        }
        Err(ListError::NotInList)
    }

    /// How many items are equal to `item` (Python's `count`).
    pub fn count(&self, item: &Item) -> Result<usize, ListError> {
        let mut n = 0;
        for i in 0..self.len() {
            n += usize::from(self.get(i)? == *item);
        }
        Ok(n)
    }

    /// The shared memory behind the list, as a raw block (Python's
    /// `ShareableList.shm`): its bytes are the list's layout (see the
    /// source), which whoever writes them directly can corrupt.
    pub fn shm(&self) -> io::Result<SharedMemory> {
        let fd = crate::sys::socket::dup(self.shared.object().fd())?;
        SharedMemory::from_segment(Segment::attach(fd)?)
    }
}

fn lock(shared: &Shared<LockState>) -> (LockedSlice<'_, u64>, crate::shm::states::Acquired) {
    shared
        .object()
        .lock_slice::<u64>(None, false)
        .expect("the tag was checked to describe u64s when the handle was made")
}

/// Reads and checks the layout words.
fn layout(g: &LockedSlice<'_, u64>) -> io::Result<Arc<[Slot]>> {
    let total = g.len();
    if total < HEAD || g.get(0) != Some(MAGIC) {
        return Err(corrupt_layout("bad magic"));
    }
    let n = g.get(1).unwrap_or(u64::MAX);
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n <= total - HEAD)
        .ok_or_else(|| corrupt_layout("impossible length"))?;
    let mut at = HEAD + n;
    let mut slots = Vec::with_capacity(n);
    for i in 0..n {
        let cap = g.get(HEAD + i).unwrap_or(0);
        if cap < 8 || !cap.is_multiple_of(8) {
            return Err(corrupt_layout("impossible slot size"));
        }
        let words = usize::try_from(cap / 8).map_err(|_| corrupt_layout("slot too large"))?;
        let end = at
            .checked_add(1)
            .and_then(|a| a.checked_add(words))
            .filter(|&e| e <= total)
            .ok_or_else(|| corrupt_layout("slots past the end"))?;
        slots.push(Slot { at, words });
        at = end;
    }
    Ok(slots.into())
}

/// Decodes a slot's words (header first), checking everything.
fn decode(index: usize, slot: Slot, words: &[u64]) -> Result<Item, ListError> {
    let corrupt = |reason| ListError::Corrupt { index, reason };
    let head = words[0];
    let len = usize::try_from(head >> 32).unwrap_or(usize::MAX);
    let scalar = || {
        if len != 0 {
            Err(corrupt("a length on a scalar"))
        } else {
            Ok(words[1])
        }
    };
    match head & 0xffff_ffff {
        TAG_NONE => scalar().map(|_| Item::None),
        TAG_INT => scalar().map(|w| Item::Int(w as i64)),
        TAG_FLOAT => scalar().map(|w| Item::Float(f64::from_bits(w))),
        TAG_BOOL => match scalar()? {
            0 => Ok(Item::Bool(false)),
            1 => Ok(Item::Bool(true)),
            _ => Err(corrupt("a boolean neither 0 nor 1")),
        },
        tag @ (TAG_STR | TAG_BYTES) => {
            if len > slot.words * 8 {
                return Err(corrupt("a length beyond the slot"));
            }
            let bytes: Vec<u8> = words[1..]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .take(len)
                .collect();
            if tag == TAG_BYTES {
                Ok(Item::Bytes(bytes))
            } else {
                String::from_utf8(bytes)
                    .map(Item::Str)
                    .map_err(|_| corrupt("a string that is not UTF-8"))
            }
        }
        0 => Err(corrupt("no item (zeroed)")),
        _ => Err(corrupt("an unknown type tag")),
    }
}

impl serde::Serialize for ShareableList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.shared.serialize(s)
    }
}

/// Attaches only to a list (the object's tag), whose layout fits it: a
/// decoding error otherwise.
impl<'de> serde::Deserialize<'de> for ShareableList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let shared = Shared::<LockState>::deserialize_tagged(d, |len| {
            let len = usize::try_from(len).ok()?;
            Some(Tag::of::<u64>(LIST, len))
        })?;
        ShareableList::from_shared(shared).map_err(crate::wire::codec::custom)
    }
}
