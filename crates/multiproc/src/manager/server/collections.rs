//! The server's collections: dict, list, array, namespace and value, all holding
//! encoded bytes. Each function runs one method under the object's lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::super::error::RemoteError;
use super::super::protocol::{ArrayOp, Blob, DictOp, ListOp, NamespaceOp, Payload, Reply, ValueOp};
use super::lock;

/// A dict that keeps insertion order, as Python's does: an index from key
/// to slot, and slots that a removal empties (compacted when half empty).
#[derive(Debug, Default)]
pub(crate) struct Dict {
    index: HashMap<Vec<u8>, usize>,
    slots: Vec<Option<(Vec<u8>, Vec<u8>)>>,
}

impl Dict {
    fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        let slot = self.slots[*self.index.get(key)?].as_ref();
        slot.map(|(_, v)| v)
    }

    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        if let Some(&i) = self.index.get(&key) {
            let slot = self.slots[i].as_mut().expect("indexed slots are full");
            return Some(std::mem::replace(&mut slot.1, value));
        }
        self.index.insert(key.clone(), self.slots.len());
        self.slots.push(Some((key, value)));
        None
    }

    fn remove(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let i = self.index.remove(key)?;
        let (_, value) = self.slots[i].take().expect("indexed slots are full");
        if self.slots.len() > 32 && self.index.len() < self.slots.len() / 2 {
            self.slots.retain(Option::is_some);
            for (i, (k, _)) in self.slots.iter().flatten().enumerate() {
                self.index.insert(k.clone(), i);
            }
        }
        Some(value)
    }

    fn entries(&self) -> impl Iterator<Item = &(Vec<u8>, Vec<u8>)> {
        self.slots.iter().flatten()
    }

    /// Runs one dict method.
    pub(crate) fn call(this: &Mutex<Dict>, op: DictOp) -> Reply {
        let mut d = lock(this);
        let maybe = |v: Option<&Vec<u8>>| Payload::MaybeValue(v.cloned().map(Blob));
        Ok(match op {
            DictOp::Get(k) => maybe(d.get(&k.0)),
            DictOp::GetMany(keys) => Payload::MaybeValues(
                keys.iter()
                    .map(|k| d.get(&k.0).cloned().map(Blob))
                    .collect(),
            ),
            DictOp::Insert(k, v) => Payload::MaybeValue(d.insert(k.0, v.0).map(Blob)),
            DictOp::Update(pairs) => {
                for (k, v) in pairs {
                    d.insert(k.0, v.0);
                }
                Payload::Unit
            }
            DictOp::Remove(k) => Payload::Bool(d.remove(&k.0).is_some()),
            DictOp::Pop(k) => Payload::MaybeValue(d.remove(&k.0).map(Blob)),
            DictOp::SetDefault(k, v) => {
                if let Some(v) = d.get(&k.0) {
                    Payload::Value(Blob(v.clone()))
                } else {
                    d.insert(k.0, v.0.clone());
                    Payload::Value(v)
                }
            }
            DictOp::Contains(k) => Payload::Bool(d.index.contains_key(&k.0)),
            DictOp::Len => Payload::Count(d.index.len() as u64),
            DictOp::Keys => Payload::Values(d.entries().map(|(k, _)| Blob(k.clone())).collect()),
            DictOp::Values => Payload::Values(d.entries().map(|(_, v)| Blob(v.clone())).collect()),
            DictOp::Items => Payload::Pairs(
                d.entries()
                    .map(|(k, v)| (Blob(k.clone()), Blob(v.clone())))
                    .collect(),
            ),
            DictOp::Clear => {
                *d = Dict::default();
                Payload::Unit
            }
            DictOp::PopItem => {
                let last = d
                    .slots
                    .iter()
                    .rev()
                    .flatten()
                    .next()
                    .map(|(k, _)| k.clone());
                Payload::Pairs(
                    last.and_then(|k| d.remove(&k).map(|v| (Blob(k), Blob(v))))
                        .into_iter()
                        .collect(),
                )
            }
        })
    }
}

/// Runs one list method.
pub(crate) fn list(this: &Mutex<Vec<Vec<u8>>>, op: ListOp) -> Reply {
    let mut l = lock(this);
    let len = l.len() as u64;
    let out_of_range = |index: u64| RemoteError::IndexOutOfRange { index, len };
    Ok(match op {
        ListOp::Push(v) => {
            l.push(v.0);
            Payload::Unit
        }
        ListOp::Extend(vs) => {
            l.extend(vs.into_iter().map(|b| b.0));
            Payload::Unit
        }
        ListOp::Get(i) => Payload::MaybeValue(l.get(i as usize).cloned().map(Blob)),
        ListOp::Set(i, v) => {
            let slot = l.get_mut(i as usize).ok_or_else(|| out_of_range(i))?;
            Payload::Value(Blob(std::mem::replace(slot, v.0)))
        }
        ListOp::Insert(i, v) if i <= len => {
            l.insert(i as usize, v.0);
            Payload::Unit
        }
        ListOp::Insert(i, _) => return Err(out_of_range(i)),
        ListOp::Pop => Payload::MaybeValue(l.pop().map(Blob)),
        ListOp::Remove(i) if i < len => Payload::Value(Blob(l.remove(i as usize))),
        ListOp::Remove(i) => return Err(out_of_range(i)),
        ListOp::Len => Payload::Count(len),
        ListOp::Slice(start, end) => {
            let end = end.min(len) as usize;
            let start = (start as usize).min(end);
            Payload::Values(l[start..end].iter().cloned().map(Blob).collect())
        }
        ListOp::Clear => {
            l.clear();
            Payload::Unit
        }
        ListOp::Count(v) => Payload::Count(l.iter().filter(|i| **i == v.0).count() as u64),
        ListOp::Index(v) => {
            Payload::Count(l.iter().position(|i| *i == v.0).map_or(0, |p| p as u64 + 1))
        }
        ListOp::Reverse => {
            l.reverse();
            Payload::Unit
        }
        ListOp::ReplaceIf(old, new) => {
            let same = old.len() == l.len() && old.iter().zip(l.iter()).all(|(o, i)| o.0 == *i);
            if same {
                *l = new.into_iter().map(|b| b.0).collect();
            }
            Payload::Bool(same)
        }
    })
}

/// Runs one method of a fixed-length array.
pub(crate) fn array(this: &Mutex<Vec<Vec<u8>>>, op: ArrayOp) -> Reply {
    let mut a = lock(this);
    let len = a.len() as u64;
    let out_of_range = |index: u64| RemoteError::IndexOutOfRange { index, len };
    Ok(match op {
        ArrayOp::Get(i) => Payload::Value(Blob(
            a.get(i as usize).ok_or_else(|| out_of_range(i))?.clone(),
        )),
        ArrayOp::Set(i, v) => {
            let slot = a.get_mut(i as usize).ok_or_else(|| out_of_range(i))?;
            Payload::Value(Blob(std::mem::replace(slot, v.0)))
        }
        ArrayOp::Len => Payload::Count(len),
        ArrayOp::Slice(start, end) => {
            let end = end.min(len) as usize;
            let start = (start as usize).min(end);
            Payload::Values(a[start..end].iter().cloned().map(Blob).collect())
        }
        ArrayOp::SetSlice(start, vs) => {
            let n = vs.len() as u64;
            // The last index written (or, writing nothing, the start) must
            // be inside the array: nothing is written otherwise.
            let last = start.saturating_add(n.saturating_sub(1));
            if start > len || (n > 0 && last >= len) {
                return Err(out_of_range(last));
            }
            for (slot, v) in a[start as usize..].iter_mut().zip(vs) {
                *slot = v.0;
            }
            Payload::Unit
        }
    })
}

/// Runs one namespace method.
pub(crate) fn namespace(this: &Mutex<BTreeMap<String, Vec<u8>>>, op: NamespaceOp) -> Reply {
    let mut ns = lock(this);
    Ok(match op {
        NamespaceOp::Get(name) => Payload::MaybeValue(ns.get(&name).cloned().map(Blob)),
        NamespaceOp::Set(name, v) => {
            ns.insert(name, v.0);
            Payload::Unit
        }
        NamespaceOp::Remove(name) => Payload::Bool(ns.remove(&name).is_some()),
        NamespaceOp::Names => Payload::Names(ns.keys().cloned().collect()),
    })
}

/// Runs one value method.
pub(crate) fn value(this: &Mutex<Vec<u8>>, op: ValueOp) -> Reply {
    let mut v = lock(this);
    Ok(match op {
        ValueOp::Get => Payload::Value(Blob(v.clone())),
        ValueOp::Set(new) => Payload::Value(Blob(std::mem::replace(&mut *v, new.0))),
    })
}
