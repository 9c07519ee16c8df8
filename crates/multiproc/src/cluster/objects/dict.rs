//! [`DictProxy`]: a named dict on the cluster's server (a Redis hash).

use std::borrow::Borrow;
use std::sync::LazyLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::manager::{Object, object_type};
use super::{dec, enc, script};
use crate::cluster::ClusterError;

/// Sets a field and returns its previous value. KEYS: hash. ARGV: field,
/// value.
static INSERT: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"#,
    )
});

/// Removes a field and returns its value. KEYS: hash. ARGV: field.
static REMOVE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('HDEL', KEYS[1], ARGV[1]) end
return old
"#,
    )
});

/// Sets a field if absent; returns its value. KEYS: hash. ARGV: field,
/// default.
static SETDEFAULT: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"#,
    )
});

/// Sets a field if it holds the expected bytes (ARGV[2] '1') or is absent
/// (ARGV[2] '0'). KEYS: hash. ARGV: field, has expected, expected, new.
static CAS: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  if cur ~= ARGV[3] then return 0 end
elseif cur then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 1
"#,
    )
});

/// Removes some field and returns it and its value, or nil if the hash is
/// empty. KEYS: hash.
static POP_ITEM: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local f = redis.call('HRANDFIELD', KEYS[1])
if not f then return nil end
local v = redis.call('HGET', KEYS[1], f)
redis.call('HDEL', KEYS[1], f)
return {f, v}
"#,
    )
});

/// A dict named in a [`Manager`](super::Manager): a Redis hash whose
/// fields and values are keys and values encoded with multiproc's codec.
/// Two keys are the same key when they encode to the same bytes. The
/// methods are the local [`DictProxy`](crate::DictProxy)'s, plus
/// [`compare_and_set`](Self::compare_and_set) and
/// [`update_with`](Self::update_with).
///
/// Unlike the local dict, entries have no order: `keys`, `values` and
/// `items` list them in the server's order.
///
/// ```no_run
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?;
/// let scores = cluster.manager().dict::<String, u32>("scores")?;
/// assert_eq!(scores.insert("ada".to_string(), 3)?, None);
/// assert_eq!(scores.insert("ada".to_string(), 4)?, Some(3));
/// assert!(scores.compare_and_set("ada", Some(&4), 5)?);
/// assert!(!scores.compare_and_set("ada", Some(&4), 6)?);
/// assert_eq!(scores.update_with("bob".to_string(), |v| v.unwrap_or(0) + 1)?, 1);
/// assert_eq!(scores.get("ada")?, Some(5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DictProxy<K, V> {
    object: Object,
    _types: std::marker::PhantomData<fn() -> (K, V)>,
}

object_type!(DictProxy<K, V>, "dict");

impl<K, V> DictProxy<K, V> {
    pub(crate) fn from_object(object: Object) -> Self {
        DictProxy {
            object,
            _types: std::marker::PhantomData,
        }
    }
}

impl<K, V> DictProxy<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    fn key(&self) -> &str {
        &self.object.key
    }

    /// The value under `key`.
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>, ClusterError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let field = enc(key)?;
        let raw: Option<Vec<u8>> = self
            .object
            .run(redis::cmd("HGET").arg(self.key()).arg(field))?;
        raw.map(|b| dec(&b)).transpose()
    }

    /// The values under several keys, in one round trip.
    pub fn get_many<'q, Q>(
        &self,
        keys: impl IntoIterator<Item = &'q Q>,
    ) -> Result<Vec<Option<V>>, ClusterError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized + 'q,
    {
        let fields = keys.into_iter().map(enc).collect::<Result<Vec<_>, _>>()?;
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<Vec<u8>>> = self
            .object
            .run(redis::cmd("HMGET").arg(self.key()).arg(fields))?;
        raw.iter()
            .map(|b| b.as_deref().map(dec).transpose())
            .collect()
    }

    /// Sets `key` to `value`; returns the previous value (read and
    /// replaced in one atomic step).
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>, ClusterError> {
        let raw: Option<Vec<u8>> = self
            .object
            .script(INSERT.key(self.key()).arg(enc(&key)?).arg(enc(&value)?))?;
        raw.map(|b| dec(&b)).transpose()
    }

    /// Sets many entries in one round trip.
    pub fn update(&self, items: impl IntoIterator<Item = (K, V)>) -> Result<(), ClusterError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.key());
        let mut any = false;
        for (k, v) in items {
            cmd.arg(enc(&k)?).arg(enc(&v)?);
            any = true;
        }
        if !any {
            return Ok(());
        }
        self.object.run(&cmd)
    }

    /// Removes `key` and returns its value, if it was there.
    pub fn remove<Q>(&self, key: &Q) -> Result<Option<V>, ClusterError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let raw: Option<Vec<u8>> = self.object.script(REMOVE.key(self.key()).arg(enc(key)?))?;
        raw.map(|b| dec(&b)).transpose()
    }

    /// Removes `key` and returns its value, or `default` if it was not
    /// there.
    pub fn pop<Q>(&self, key: &Q, default: V) -> Result<V, ClusterError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        Ok(self.remove(key)?.unwrap_or(default))
    }

    /// Removes and returns some entry, as one atomic step; `None` if the
    /// dict is empty (Python's `popitem`, which raises `KeyError` then).
    /// Python and the local dict take the entry inserted last; a Redis
    /// hash has no order, so this takes one at random.
    pub fn pop_item(&self) -> Result<Option<(K, V)>, ClusterError> {
        let raw: Option<(Vec<u8>, Vec<u8>)> = self.object.script(&POP_ITEM.key(self.key()))?;
        raw.map(|(k, v)| Ok((dec(&k)?, dec(&v)?))).transpose()
    }

    /// Removes `key` without fetching its value; whether it was there.
    pub fn discard<Q>(&self, key: &Q) -> Result<bool, ClusterError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let n: u64 = self
            .object
            .run(redis::cmd("HDEL").arg(self.key()).arg(enc(key)?))?;
        Ok(n > 0)
    }

    /// The value under `key`, after setting it to `default` if there was
    /// none.
    pub fn setdefault(&self, key: K, default: V) -> Result<V, ClusterError> {
        let raw: Vec<u8> = self.object.script(
            SETDEFAULT
                .key(self.key())
                .arg(enc(&key)?)
                .arg(enc(&default)?),
        )?;
        dec(&raw)
    }

    /// Sets `key` to `new` if its value now is `expected` (compared as
    /// encoded bytes), or if it is absent and `expected` is `None`;
    /// whether it did. One atomic step on the server.
    pub fn compare_and_set<Q>(
        &self,
        key: &Q,
        expected: Option<&V>,
        new: V,
    ) -> Result<bool, ClusterError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let expected = expected.map(enc).transpose()?;
        let set: i64 = self.object.script(
            CAS.key(self.key())
                .arg(enc(key)?)
                .arg(u8::from(expected.is_some()))
                .arg(expected.unwrap_or_default())
                .arg(enc(&new)?),
        )?;
        Ok(set == 1)
    }

    /// Replaces the value under `key` by `f` of it (`None` if absent) and
    /// returns the new value: a loop of reads and
    /// [`compare_and_set`](Self::compare_and_set)s, so `f` may run more
    /// than once when others change the entry meanwhile.
    pub fn update_with(
        &self,
        key: K,
        mut f: impl FnMut(Option<V>) -> V,
    ) -> Result<V, ClusterError> {
        let field = enc(&key)?;
        loop {
            let raw: Option<Vec<u8>> = self
                .object
                .run(redis::cmd("HGET").arg(self.key()).arg(&field))?;
            let old = raw.as_deref().map(dec).transpose()?;
            let new = f(old);
            let new_bytes = enc(&new)?;
            let set: i64 = self.object.script(
                CAS.key(self.key())
                    .arg(&field)
                    .arg(u8::from(raw.is_some()))
                    .arg(raw.unwrap_or_default())
                    .arg(new_bytes),
            )?;
            if set == 1 {
                return Ok(new);
            }
        }
    }

    /// Whether `key` is there.
    pub fn contains<Q>(&self, key: &Q) -> Result<bool, ClusterError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.object
            .run(redis::cmd("HEXISTS").arg(self.key()).arg(enc(key)?))
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize, ClusterError> {
        self.object.run(redis::cmd("HLEN").arg(self.key()))
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> Result<bool, ClusterError> {
        Ok(self.len()? == 0)
    }

    /// The keys (a snapshot, in the server's order).
    pub fn keys(&self) -> Result<Vec<K>, ClusterError> {
        let raw: Vec<Vec<u8>> = self.object.run(redis::cmd("HKEYS").arg(self.key()))?;
        raw.iter().map(|b| dec(b)).collect()
    }

    /// The values (a snapshot, in the server's order).
    pub fn values(&self) -> Result<Vec<V>, ClusterError> {
        let raw: Vec<Vec<u8>> = self.object.run(redis::cmd("HVALS").arg(self.key()))?;
        raw.iter().map(|b| dec(b)).collect()
    }

    /// The entries (a snapshot to iterate, in the server's order).
    pub fn items(&self) -> Result<Vec<(K, V)>, ClusterError> {
        let raw: Vec<Vec<u8>> = self.object.run(redis::cmd("HGETALL").arg(self.key()))?;
        raw.chunks(2)
            .map(|kv| match kv {
                [k, v] => Ok((dec(k)?, dec(v)?)),
                _ => Err(ClusterError::Corrupted("HGETALL gave an odd count".into())),
            })
            .collect()
    }

    /// Removes every entry (the key itself: a dict without entries does
    /// not exist on the server).
    pub fn clear(&self) -> Result<(), ClusterError> {
        self.object.run(redis::cmd("DEL").arg(self.key()))
    }
}
