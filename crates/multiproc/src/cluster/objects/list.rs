//! [`ListProxy`]: a named list on the cluster's server (a Redis list).

use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::LazyLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::manager::{Object, object_type};
use super::{dec, enc, script};
use crate::cluster::ClusterError;

/// Lua: pushes `items` (a table) at the end of `key`, in chunks small
/// enough for `unpack`.
const PUSH_ALL: &str = r#"
local function push_all(key, items)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
end
"#;

/// Replaces item ARGV[1]; returns the old one, or the length (an integer)
/// if the index is past the end. KEYS: list. ARGV: index, item.
static SET: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local i = tonumber(ARGV[1])
local n = redis.call('LLEN', KEYS[1])
if i >= n then return n end
local old = redis.call('LINDEX', KEYS[1], i)
redis.call('LSET', KEYS[1], i, ARGV[2])
return old
"#,
    )
});

/// Inserts an item before ARGV[1]; returns -1, or the length if the index
/// is past it. KEYS: list. ARGV: index, item.
static INSERT: LazyLock<redis::Script> = LazyLock::new(|| {
    script(&format!(
        r#"{PUSH_ALL}
local i = tonumber(ARGV[1])
local n = redis.call('LLEN', KEYS[1])
if i > n then return n end
if i == n then redis.call('RPUSH', KEYS[1], ARGV[2]) return -1 end
if i == 0 then redis.call('LPUSH', KEYS[1], ARGV[2]) return -1 end
local tail = redis.call('LRANGE', KEYS[1], i, -1)
redis.call('LTRIM', KEYS[1], 0, i - 1)
redis.call('RPUSH', KEYS[1], ARGV[2])
push_all(KEYS[1], tail)
return -1
"#
    ))
});

/// Removes item ARGV[1] and returns it, or the length (an integer) if the
/// index is past the end. KEYS: list. ARGV: index.
static REMOVE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(&format!(
        r#"{PUSH_ALL}
local i = tonumber(ARGV[1])
local n = redis.call('LLEN', KEYS[1])
if i >= n then return n end
if i == 0 then return redis.call('LPOP', KEYS[1]) end
if i == n - 1 then return redis.call('RPOP', KEYS[1]) end
local v = redis.call('LINDEX', KEYS[1], i)
local tail = redis.call('LRANGE', KEYS[1], i + 1, -1)
redis.call('LTRIM', KEYS[1], 0, i - 1)
push_all(KEYS[1], tail)
return v
"#
    ))
});

/// Reverses the list in place. KEYS: list.
static REVERSE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(&format!(
        r#"{PUSH_ALL}
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local n = #items
for i = 1, math.floor(n / 2) do
  items[i], items[n + 1 - i] = items[n + 1 - i], items[i]
end
redis.call('DEL', KEYS[1])
push_all(KEYS[1], items)
return n
"#
    ))
});

/// Replaces the list with ARGV[n + 2 ..] if it holds exactly the n items
/// ARGV[2 .. n + 1] now (n = ARGV[1]); 1 if it did, else 0. KEYS: list.
static REPLACE_IF: LazyLock<redis::Script> = LazyLock::new(|| {
    script(&format!(
        r#"{PUSH_ALL}
local n = tonumber(ARGV[1])
if redis.call('LLEN', KEYS[1]) ~= n then return 0 end
local cur = redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, n do
  if cur[i] ~= ARGV[i + 1] then return 0 end
end
local new = {{}}
for i = n + 2, #ARGV do new[#new + 1] = ARGV[i] end
redis.call('DEL', KEYS[1])
push_all(KEYS[1], new)
return 1
"#
    ))
});

/// A list named in a [`Manager`](super::Manager): a Redis list of items
/// encoded with multiproc's codec. The methods are the local
/// [`ListProxy`](crate::ListProxy)'s; `insert` and `remove` in the middle
/// cost a time proportional to the items after the index (as in Python),
/// and run on the server as one atomic step.
///
/// ```no_run
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?;
/// let log = cluster.manager().list::<String>("log")?;
/// log.push("first".to_string())?;
/// log.extend(["second".to_string(), "third".to_string()])?;
/// log.insert(1, "between".to_string())?;
/// assert_eq!(log.remove(2)?, "second");
/// assert_eq!(log.snapshot()?, ["first", "between", "third"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ListProxy<T> {
    object: Object,
    _types: PhantomData<fn() -> T>,
}

object_type!(ListProxy<T>, "list");

/// An item, or the list's length when the index was past its end.
fn item_or_len(value: redis::Value, index: usize) -> Result<Vec<u8>, ClusterError> {
    match value {
        redis::Value::BulkString(b) => Ok(b),
        redis::Value::Int(len) => Err(ClusterError::IndexOutOfRange {
            index: index as u64,
            len: len.max(0) as u64,
        }),
        other => Err(ClusterError::Corrupted(format!(
            "a list script answered {other:?}"
        ))),
    }
}

impl<T> ListProxy<T> {
    pub(crate) fn from_object(object: Object) -> Self {
        ListProxy {
            object,
            _types: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    fn key(&self) -> &str {
        &self.object.key
    }

    /// Appends an item.
    pub fn push(&self, item: T) -> Result<(), ClusterError> {
        self.object
            .run(redis::cmd("RPUSH").arg(self.key()).arg(enc(&item)?))
    }

    /// Appends many items in one round trip.
    pub fn extend(&self, items: impl IntoIterator<Item = T>) -> Result<(), ClusterError> {
        let items = items
            .into_iter()
            .map(|i| enc(&i))
            .collect::<Result<Vec<_>, _>>()?;
        if items.is_empty() {
            return Ok(());
        }
        self.object
            .run(redis::cmd("RPUSH").arg(self.key()).arg(items))
    }

    /// The item at `index`, if there is one.
    pub fn get(&self, index: usize) -> Result<Option<T>, ClusterError> {
        let Ok(i) = i64::try_from(index) else {
            return Ok(None);
        };
        let raw: Option<Vec<u8>> = self
            .object
            .run(redis::cmd("LINDEX").arg(self.key()).arg(i))?;
        raw.map(|b| dec(&b)).transpose()
    }

    /// Replaces the item at `index` and returns the old one; past the end
    /// it is [`ClusterError::IndexOutOfRange`].
    pub fn set(&self, index: usize, item: T) -> Result<T, ClusterError> {
        let v: redis::Value = self
            .object
            .script(SET.key(self.key()).arg(index).arg(enc(&item)?))?;
        dec(&item_or_len(v, index)?)
    }

    /// Inserts an item before `index` (at most the length).
    pub fn insert(&self, index: usize, item: T) -> Result<(), ClusterError> {
        let r: i64 = self
            .object
            .script(INSERT.key(self.key()).arg(index).arg(enc(&item)?))?;
        if r >= 0 {
            return Err(ClusterError::IndexOutOfRange {
                index: index as u64,
                len: r as u64,
            });
        }
        Ok(())
    }

    /// Removes and returns the last item.
    pub fn pop(&self) -> Result<Option<T>, ClusterError> {
        let raw: Option<Vec<u8>> = self.object.run(redis::cmd("RPOP").arg(self.key()))?;
        raw.map(|b| dec(&b)).transpose()
    }

    /// Removes and returns the item at `index`; past the end it is
    /// [`ClusterError::IndexOutOfRange`].
    pub fn remove(&self, index: usize) -> Result<T, ClusterError> {
        let v: redis::Value = self.object.script(REMOVE.key(self.key()).arg(index))?;
        dec(&item_or_len(v, index)?)
    }

    /// The number of items.
    pub fn len(&self) -> Result<usize, ClusterError> {
        self.object.run(redis::cmd("LLEN").arg(self.key()))
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> Result<bool, ClusterError> {
        Ok(self.len()? == 0)
    }

    /// The items in `range`, clamped to the list (Python: `l[a:b]`).
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Result<Vec<T>, ClusterError> {
        let clamp = |i: usize| i64::try_from(i).unwrap_or(i64::MAX);
        let start = match range.start_bound() {
            Bound::Included(&s) => clamp(s),
            Bound::Excluded(&s) => clamp(s).saturating_add(1),
            Bound::Unbounded => 0,
        };
        // Exclusive; None for the end of the list.
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(clamp(e).saturating_add(1)),
            Bound::Excluded(&e) => Some(clamp(e)),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        // LRANGE's end is inclusive; -1 is the last item.
        let end = end.map_or(-1, |e| e - 1);
        let raw: Vec<Vec<u8>> = self
            .object
            .run(redis::cmd("LRANGE").arg(self.key()).arg(start).arg(end))?;
        raw.iter().map(|b| dec(b)).collect()
    }

    /// A copy of the whole list, to iterate over (Python: `list(l)`).
    pub fn snapshot(&self) -> Result<Vec<T>, ClusterError> {
        self.slice(..)
    }

    /// Removes every item.
    pub fn clear(&self) -> Result<(), ClusterError> {
        self.object.run(redis::cmd("DEL").arg(self.key()))
    }

    /// How many items equal `item` (Python: `count`). Items compare by
    /// their encodings, as the dict's keys do; counted on the server.
    pub fn count(&self, item: &T) -> Result<usize, ClusterError> {
        let at: Vec<i64> = self.object.run(
            redis::cmd("LPOS")
                .arg(self.key())
                .arg(enc(item)?)
                .arg("COUNT")
                .arg(0),
        )?;
        Ok(at.len())
    }

    /// The position of the first item equal to `item`, compared as in
    /// [`count`](Self::count); `None` if there is none (Python's `index`
    /// raises `ValueError`).
    pub fn index(&self, item: &T) -> Result<Option<usize>, ClusterError> {
        let at: Option<i64> = self
            .object
            .run(redis::cmd("LPOS").arg(self.key()).arg(enc(item)?))?;
        at.map(|i| {
            usize::try_from(i).map_err(|_| ClusterError::Corrupted(format!("LPOS answered {i}")))
        })
        .transpose()
    }

    /// Reverses the items in place (Python: `reverse`), on the server, as
    /// one atomic step.
    pub fn reverse(&self) -> Result<(), ClusterError> {
        let _: i64 = self.object.script(&REVERSE.key(self.key()))?;
        Ok(())
    }

    /// Sorts the items in place (Python: `sort`). The server holds
    /// encodings, which it cannot order: the items are sorted here, on a
    /// copy, and written back only if the list did not change meanwhile
    /// (else it is done again), as the local manager's list does. Two
    /// round trips or more; `T: Ord` orders.
    pub fn sort(&self) -> Result<(), ClusterError>
    where
        T: Ord,
    {
        loop {
            let raw: Vec<Vec<u8>> = self
                .object
                .run(redis::cmd("LRANGE").arg(self.key()).arg(0).arg(-1))?;
            let mut items = raw
                .iter()
                .map(|b| Ok((dec::<T>(b)?, b.as_slice())))
                .collect::<Result<Vec<_>, ClusterError>>()?;
            items.sort_by(|a, b| a.0.cmp(&b.0));
            let mut call = REPLACE_IF.key(self.key());
            call.arg(raw.len());
            for b in &raw {
                call.arg(b.as_slice());
            }
            for (_, b) in &items {
                call.arg(*b);
            }
            let replaced: i64 = self.object.script(&call)?;
            if replaced == 1 {
                return Ok(());
            }
        }
    }
}
