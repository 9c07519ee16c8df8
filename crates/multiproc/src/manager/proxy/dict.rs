//! [`DictProxy`]: a dict on the manager (Python: `Manager().dict()`).

use std::borrow::Borrow;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::client::unexpected;
use super::super::error::ProxyError;
use super::super::protocol::{DictOp, Op, Payload};
use super::{Handle, boolean, count, dec, enc, maybe, proxy_type, unit, value, values};

/// A dict that lives in a [`Manager`](crate::Manager): every process with a
/// proxy sees the same entries. Keys and values are encoded with serde; two
/// keys are the same key when they encode to the same bytes.
///
/// Entries keep their insertion order, as in Python. Each method is one
/// round trip to the manager; [`update`](Self::update) and
/// [`get_many`](Self::get_many) move many entries in one.
///
/// ```
/// use multiproc::{DictProxy, Manager, Process};
///
/// fn record(scores: DictProxy<String, u32>) {
///     scores.insert("child".to_string(), 7).unwrap();
/// }
///
/// let manager = Manager::start()?;
/// let scores = manager.dict::<String, u32>()?;
/// scores.insert("parent".to_string(), 3)?;
/// Process::spawn(record, scores.clone())?.join()?;
/// assert_eq!(scores.get("child")?, Some(7));
/// assert_eq!(scores.len()?, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DictProxy<K, V> {
    handle: Handle,
    _types: PhantomData<fn() -> (K, V)>,
}

proxy_type!(DictProxy<K, V>);

impl<K, V> DictProxy<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    fn call(&self, op: DictOp) -> Result<Payload, ProxyError> {
        self.handle.call(Op::Dict(op))
    }

    /// The value under `key` (Python: `d.get(key)`).
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>, ProxyError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        maybe(self.call(DictOp::Get(enc(key)?))?)
    }

    /// The values under several keys, in one round trip.
    pub fn get_many<'q, Q>(
        &self,
        keys: impl IntoIterator<Item = &'q Q>,
    ) -> Result<Vec<Option<V>>, ProxyError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized + 'q,
    {
        let keys = keys.into_iter().map(enc).collect::<Result<_, _>>()?;
        match self.call(DictOp::GetMany(keys))? {
            Payload::MaybeValues(vs) => {
                vs.iter().map(|v| v.as_ref().map(dec).transpose()).collect()
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Sets `key` to `value`; returns the previous value (Python:
    /// `d[key] = value`).
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>, ProxyError> {
        maybe(self.call(DictOp::Insert(enc(&key)?, enc(&value)?))?)
    }

    /// Sets many entries in one round trip (Python: `d.update(items)`).
    pub fn update(&self, items: impl IntoIterator<Item = (K, V)>) -> Result<(), ProxyError> {
        let pairs = items
            .into_iter()
            .map(|(k, v)| Ok((enc(&k)?, enc(&v)?)))
            .collect::<Result<_, ProxyError>>()?;
        unit(self.call(DictOp::Update(pairs))?)
    }

    /// Removes `key` and returns its value, if it was there (Rust's
    /// `HashMap::remove`; Python's `d.pop(key, None)`).
    pub fn remove<Q>(&self, key: &Q) -> Result<Option<V>, ProxyError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        maybe(self.call(DictOp::Pop(enc(key)?))?)
    }

    /// Removes `key` and returns its value, or `default` if it was not
    /// there (Python: `d.pop(key, default)`).
    pub fn pop<Q>(&self, key: &Q, default: V) -> Result<V, ProxyError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        Ok(self.remove(key)?.unwrap_or(default))
    }

    /// Removes `key` without fetching its value; whether it was there
    /// (Python: `del d[key]`, without the `KeyError`).
    pub fn discard<Q>(&self, key: &Q) -> Result<bool, ProxyError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        boolean(self.call(DictOp::Remove(enc(key)?))?)
    }

    /// The value under `key`, after setting it to `default` if there was
    /// none (Python: `d.setdefault(key, default)`).
    pub fn setdefault(&self, key: K, default: V) -> Result<V, ProxyError> {
        value(self.call(DictOp::SetDefault(enc(&key)?, enc(&default)?))?)
    }

    /// Whether `key` is there (Python: `key in d`).
    pub fn contains<Q>(&self, key: &Q) -> Result<bool, ProxyError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        boolean(self.call(DictOp::Contains(enc(key)?))?)
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize, ProxyError> {
        count(self.call(DictOp::Len)?)
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> Result<bool, ProxyError> {
        Ok(self.len()? == 0)
    }

    /// The keys, in insertion order (a snapshot).
    pub fn keys(&self) -> Result<Vec<K>, ProxyError> {
        values(self.call(DictOp::Keys)?)
    }

    /// The values, in insertion order (a snapshot).
    pub fn values(&self) -> Result<Vec<V>, ProxyError> {
        values(self.call(DictOp::Values)?)
    }

    /// Removes and returns the entry inserted last (Python: `popitem`,
    /// which raises `KeyError` on an empty dict: `None` here).
    pub fn pop_item(&self) -> Result<Option<(K, V)>, ProxyError> {
        match self.call(DictOp::PopItem)? {
            Payload::Pairs(pairs) => match pairs.as_slice() {
                [] => Ok(None),
                [(k, v)] => Ok(Some((dec(k)?, dec(v)?))),
                _ => Err(unexpected(&Payload::Pairs(pairs))),
            },
            other => Err(unexpected(&other)),
        }
    }

    /// The entries, in insertion order (a snapshot to iterate).
    pub fn items(&self) -> Result<Vec<(K, V)>, ProxyError> {
        match self.call(DictOp::Items)? {
            Payload::Pairs(pairs) => pairs.iter().map(|(k, v)| Ok((dec(k)?, dec(v)?))).collect(),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<(), ProxyError> {
        unit(self.call(DictOp::Clear)?)
    }
}
