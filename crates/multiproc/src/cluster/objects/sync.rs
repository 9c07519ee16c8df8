//! [`SemaphoreProxy`], [`EventProxy`] and [`BarrierProxy`] on the
//! cluster's server.

use std::sync::LazyLock;
use std::time::Duration;

use super::manager::{Object, object_type};
use super::{BACKSTOP, Deadline, script, wait_wake, wake};
use crate::cluster::ClusterError;

/// Takes a unit if one is free. KEYS: count. ARGV: initial units.
static SEM_ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local v = num(redis.call('GET', KEYS[1]), tonumber(ARGV[1]), 'the semaphore')
if v <= 0 then return 0 end
redis.call('SET', KEYS[1], v - 1)
return 1
"#,
    )
});

/// Gives a unit back (refused with -1 past the initial units if ARGV[2]
/// is 1) and wakes a waiter. KEYS: count, wake. ARGV: initial units,
/// bounded.
static SEM_RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local v = num(redis.call('GET', KEYS[1]), tonumber(ARGV[1]), 'the semaphore')
if ARGV[2] == '1' and v >= tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[1], v + 1)
wake(KEYS[2])
return 1
"#,
    )
});

/// A semaphore named in a [`Manager`](super::Manager): a count of units
/// on the server that [`acquire`](Self::acquire) takes (waiting while
/// there are none) and [`release`](Self::release) gives back. The
/// methods are the local [`SemaphoreProxy`](crate::SemaphoreProxy)'s.
///
/// As with the local manager's, units have no owner: those a process
/// held when it died are lost (use a [`LockProxy`](super::LockProxy) for
/// a lease that comes back by itself). A semaphore the server lost
/// (deleted, or a restart) starts again at its initial units.
///
/// ```no_run
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?;
/// let slots = cluster.manager().bounded_semaphore("gpu-slots", 2)?;
/// slots.acquire()?;
/// assert_eq!(slots.value()?, 1);
/// slots.release()?;
/// assert!(slots.release().is_err()); // past its 2 units
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SemaphoreProxy {
    object: Object,
    initial: u32,
    bounded: bool,
}

object_type!(SemaphoreProxy, "semaphore");

impl SemaphoreProxy {
    pub(crate) fn attach(
        object: Object,
        initial: u32,
        bounded: bool,
    ) -> Result<Self, ClusterError> {
        object.run::<()>(
            redis::cmd("SET")
                .arg(&object.keys[0])
                .arg(initial)
                .arg("NX"),
        )?;
        Ok(SemaphoreProxy {
            object,
            initial,
            bounded,
        })
    }

    fn acquire_until(&self, deadline: Deadline) -> Result<bool, ClusterError> {
        let keys = &self.object.keys;
        self.object.with(|link| {
            loop {
                let got: i64 =
                    link.script_within(SEM_ACQUIRE.key(&keys[0]).arg(self.initial), deadline.io())?;
                if got == 1 {
                    return Ok(true);
                }
                if deadline.expired() {
                    return Ok(false);
                }
                wait_wake(link, &keys[1], deadline.block(BACKSTOP))?;
            }
        })
    }

    /// Takes a unit, waiting for one as long as it takes.
    pub fn acquire(&self) -> Result<(), ClusterError> {
        self.acquire_until(Deadline::never()).map(drop)
    }

    /// Takes a unit if one is free now; whether it did.
    pub fn try_acquire(&self) -> Result<bool, ClusterError> {
        self.acquire_until(Deadline::now())
    }

    /// Takes a unit if one comes free within `timeout`; whether it did.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, ClusterError> {
        self.acquire_until(Deadline::after(timeout))
    }

    /// [`acquire`](Self::acquire), as a future on any runtime (a waiter
    /// thread waits in slices of 100 ms). Dropping it holds no unit: one a
    /// slice in flight took is given back.
    pub fn acquire_async(
        &self,
    ) -> impl std::future::Future<Output = Result<(), ClusterError>> + Send + use<> {
        let (s, back) = (self.clone(), self.clone());
        super::sliced(
            move |slice| match s.acquire_timeout(slice) {
                Ok(true) => Some(Ok(())),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            },
            move |taken: Result<(), ClusterError>| {
                if taken.is_ok() {
                    let _ = back.release();
                }
            },
        )
    }

    /// Gives a unit back; a bounded semaphore already at its initial
    /// units refuses ([`ClusterError::OverReleased`]).
    pub fn release(&self) -> Result<(), ClusterError> {
        let keys = &self.object.keys;
        let r: i64 = self.object.script(
            SEM_RELEASE
                .key(&keys[0])
                .key(&keys[1])
                .arg(self.initial)
                .arg(u8::from(self.bounded)),
        )?;
        if r < 0 {
            return Err(ClusterError::OverReleased(
                "a bounded semaphore was released past its initial value",
            ));
        }
        Ok(())
    }

    /// The free units now.
    pub fn value(&self) -> Result<usize, ClusterError> {
        let raw: Option<String> = self
            .object
            .run(redis::cmd("GET").arg(&self.object.keys[0]))?;
        match raw {
            None => Ok(self.initial as usize),
            Some(raw) => raw.parse().map_err(|_| {
                ClusterError::Corrupted(format!("semaphore {:?} holds {raw:?}", self.object.name))
            }),
        }
    }
}

/// Sets the flag and wakes a waiter (who wakes the next). KEYS: flag,
/// wake.
static EVENT_SET: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('SET', KEYS[1], '1')
wake(KEYS[2])
return 1
"#,
    )
});

/// An event named in a [`Manager`](super::Manager): a flag on the server
/// that processes wait for. The methods are the local
/// [`EventProxy`](crate::EventProxy)'s.
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?;
/// let ready = cluster.manager().event("ready")?;
/// assert!(!ready.wait_timeout(Duration::from_millis(1))?);
/// ready.set()?;
/// ready.wait()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventProxy {
    object: Object,
}

object_type!(EventProxy, "event");

impl EventProxy {
    pub(crate) fn from_object(object: Object) -> Self {
        EventProxy { object }
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) -> Result<(), ClusterError> {
        let keys = &self.object.keys;
        self.object
            .script::<i64>(EVENT_SET.key(&keys[0]).key(&keys[1]))
            .map(drop)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<(), ClusterError> {
        self.object.run(redis::cmd("DEL").arg(&self.object.keys[0]))
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool, ClusterError> {
        self.object
            .with(|l| flag(l, &self.object.keys[0], Deadline::never()))
    }

    fn wait_until(&self, deadline: Deadline) -> Result<bool, ClusterError> {
        let keys = &self.object.keys;
        self.object.with(|link| {
            let mut woken = false;
            loop {
                if flag(link, &keys[0], deadline)? {
                    if woken {
                        // Pass the wake-up on to the next waiter (who
                        // re-checks anyway if this fails).
                        let _ = wake(link, &keys[1], deadline.io());
                    }
                    return Ok(true);
                }
                if deadline.expired() {
                    return Ok(false);
                }
                woken = wait_wake(link, &keys[1], deadline.block(BACKSTOP))?;
            }
        })
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<(), ClusterError> {
        self.wait_until(Deadline::never()).map(drop)
    }

    /// Waits until the flag is set or `timeout` passes; whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, ClusterError> {
        self.wait_until(Deadline::after(timeout))
    }

    /// [`wait`](Self::wait), as a future on any runtime (a waiter thread
    /// waits in slices of 100 ms).
    pub fn wait_async(
        &self,
    ) -> impl std::future::Future<Output = Result<(), ClusterError>> + Send + use<> {
        let e = self.clone();
        super::sliced(
            move |slice| match e.wait_timeout(slice) {
                Ok(true) => Some(Ok(())),
                Ok(false) => None,
                Err(err) => Some(Err(err)),
            },
            |_| {},
        )
    }
}

/// Whether an event's flag is set.
fn flag(
    link: &mut crate::cluster::Link,
    key: &str,
    deadline: Deadline,
) -> Result<bool, ClusterError> {
    let raw: Option<Vec<u8>> = link.run_within(redis::cmd("GET").arg(key), deadline.io())?;
    match raw.as_deref() {
        None => Ok(false),
        Some(b"1") => Ok(true),
        Some(_) => Err(ClusterError::Corrupted(format!(
            "the event's flag {key:?} holds something else than 1"
        ))),
    }
}

/// Lua: the barrier's state fields (`parties`, `count`, `gen`, `broken`,
/// `reset`: the generation last reset).
const BARRIER_STATE: &str = r#"
local function field(f, dflt)
  return num(redis.call('HGET', KEYS[1], f), dflt, 'the barrier')
end
local function wake_all(n)
  for i = 1, math.min(n, 16) do wake(KEYS[2]) end
end
"#;

/// Arrives: `{index, generation}`, or `{-1, generation}` if broken.
/// KEYS: state, wake. ARGV: parties.
static ARRIVE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(&format!(
        r#"{BARRIER_STATE}
local parties = field('parties', tonumber(ARGV[1]))
local gen = field('gen', 0)
if field('broken', 0) == 1 then return {{-1, gen}} end
local c = field('count', 0)
if c + 1 >= parties then
  redis.call('HSET', KEYS[1], 'parties', parties, 'count', 0, 'gen', gen + 1)
  wake_all(parties - 1)
else
  redis.call('HSET', KEYS[1], 'parties', parties, 'count', c + 1, 'gen', gen)
end
return {{c, gen}}
"#
    ))
});

/// Where a waiter of generation ARGV[1] stands: 1 passed, -1 broken (or
/// reset), 0 still waiting. KEYS: state.
static STANDING: LazyLock<redis::Script> = LazyLock::new(|| {
    script(&format!(
        r#"{BARRIER_STATE}
local mine = tonumber(ARGV[1])
-- Deleted, or lost in a restart: the cycle can never complete.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if field('gen', 0) ~= mine then
  if field('reset', -1) == mine then return -1 end
  return 1
end
if field('broken', 0) == 1 then return -1 end
return 0
"#
    ))
});

/// Breaks the barrier (if ARGV[1] is a generation, only if still in it).
/// KEYS: state, wake.
static BREAK: LazyLock<redis::Script> = LazyLock::new(|| {
    script(&format!(
        r#"{BARRIER_STATE}
if ARGV[1] ~= '' and field('gen', 0) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'broken', 1)
wake_all(field('parties', 1))
return 1
"#
    ))
});

/// Makes the barrier usable again; waiters of the current generation are
/// told it broke. KEYS: state, wake.
static RESET: LazyLock<redis::Script> = LazyLock::new(|| {
    script(&format!(
        r#"{BARRIER_STATE}
local gen = field('gen', 0)
redis.call('HSET', KEYS[1], 'broken', 0, 'count', 0, 'gen', gen + 1, 'reset', gen)
wake_all(field('parties', 1))
return 1
"#
    ))
});

/// Records the number of parties if new; returns the barrier's. KEYS:
/// state. ARGV: parties.
static BARRIER_ATTACH: LazyLock<redis::Script> = LazyLock::new(|| {
    script(&format!(
        r#"{BARRIER_STATE}
redis.call('HSETNX', KEYS[1], 'parties', ARGV[1])
return field('parties', 0)
"#
    ))
});

/// A barrier named in a [`Manager`](super::Manager): each cycle,
/// `parties` callers of [`wait`](Self::wait), in any processes, wait for
/// each other. The methods are the local
/// [`BarrierProxy`](crate::BarrierProxy)'s.
///
/// A wait that times out and [`abort`](Self::abort) break the barrier:
/// every waiter then gets [`ClusterError::BrokenBarrier`], until
/// [`reset`](Self::reset). Unlike the local manager's, a waiter whose
/// process dies does not break it (the server cannot tell): the others
/// wait for a replacement, or their own timeouts.
///
/// ```no_run
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?;
/// let start = cluster.manager().barrier("start", 1)?;
/// assert_eq!(start.wait()?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BarrierProxy {
    object: Object,
    parties: u32,
}

object_type!(BarrierProxy, "barrier");

impl BarrierProxy {
    pub(crate) fn attach(object: Object, parties: u32) -> Result<Self, ClusterError> {
        if parties == 0 {
            return Err(ClusterError::Mismatch(
                "a barrier needs at least one party".into(),
            ));
        }
        let have: i64 = object.script(BARRIER_ATTACH.key(&object.keys[0]).arg(parties))?;
        if have != i64::from(parties) {
            return Err(ClusterError::Mismatch(format!(
                "barrier {:?} exists with {have} parties, not {parties}",
                object.name
            )));
        }
        Ok(BarrierProxy { object, parties })
    }

    fn wait_until(&self, deadline: Deadline) -> Result<usize, ClusterError> {
        let keys = &self.object.keys;
        self.object.with(|link| {
            let (index, cycle): (i64, i64) = link.script_within(
                ARRIVE.key(&keys[0]).key(&keys[1]).arg(self.parties),
                deadline.io(),
            )?;
            if index < 0 {
                return Err(ClusterError::BrokenBarrier);
            }
            loop {
                let standing: i64 =
                    link.script_within(STANDING.key(&keys[0]).arg(cycle), deadline.io())?;
                match standing {
                    1 => return Ok(index as usize),
                    -1 => return Err(ClusterError::BrokenBarrier),
                    _ => {}
                }
                if deadline.expired() {
                    let broke: i64 = link.script_within(
                        BREAK.key(&keys[0]).key(&keys[1]).arg(cycle),
                        deadline.io(),
                    )?;
                    if broke == 1 {
                        return Err(ClusterError::BrokenBarrier);
                    }
                    // The cycle completed just now: look again.
                    continue;
                }
                wait_wake(link, &keys[1], deadline.block(BACKSTOP))?;
            }
        })
    }

    /// Waits for the other parties; returns this caller's arrival index
    /// (0 for the first).
    pub fn wait(&self) -> Result<usize, ClusterError> {
        self.wait_until(Deadline::never())
    }

    /// Like [`wait`](Self::wait), but breaks the barrier if the others do
    /// not come within `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, ClusterError> {
        self.wait_until(Deadline::after(timeout))
    }

    /// [`wait`](Self::wait), as a future on any runtime: the wait runs on
    /// a waiter thread as one call (a barrier's wait cannot be cut into
    /// slices: a timeout breaks it). **Dropping the future after its first
    /// poll breaks the barrier**, as the local
    /// [`Barrier::wait_async`](crate::Barrier::wait_async) does.
    pub fn wait_async(
        &self,
    ) -> impl std::future::Future<Output = Result<usize, ClusterError>> + Send + use<> {
        /// Breaks the barrier if the wait is dropped before it ended.
        struct Leave(Option<BarrierProxy>);
        impl Drop for Leave {
            fn drop(&mut self) {
                if let Some(b) = self.0.take() {
                    let abort = move || {
                        let _ = b.abort();
                    };
                    if let Err(job) = crate::aio::run(Box::new(abort)) {
                        job();
                    }
                }
            }
        }
        let (mine, theirs) = (self.clone(), self.clone());
        async move {
            let mut leave = Leave(Some(theirs));
            let waited = super::sliced(move |_| Some(mine.wait()), |_| {}).await;
            leave.0 = None;
            waited
        }
    }

    /// Makes a broken barrier usable again; current waiters are told it
    /// broke.
    pub fn reset(&self) -> Result<(), ClusterError> {
        let keys = &self.object.keys;
        self.object
            .script::<i64>(RESET.key(&keys[0]).key(&keys[1]))
            .map(drop)
    }

    /// Breaks the barrier.
    pub fn abort(&self) -> Result<(), ClusterError> {
        let keys = &self.object.keys;
        self.object
            .script::<i64>(BREAK.key(&keys[0]).key(&keys[1]).arg(""))
            .map(drop)
    }

    /// How many parties a cycle needs.
    pub fn parties(&self) -> usize {
        self.parties as usize
    }

    /// How many parties wait now.
    pub fn n_waiting(&self) -> Result<usize, ClusterError> {
        self.field("count")
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> Result<bool, ClusterError> {
        Ok(self.field("broken")? == 1)
    }

    fn field(&self, name: &str) -> Result<usize, ClusterError> {
        let raw: Option<String> = self
            .object
            .run(redis::cmd("HGET").arg(&self.object.keys[0]).arg(name))?;
        match raw {
            None => Ok(0),
            Some(raw) => raw.parse().map_err(|_| {
                ClusterError::Corrupted(format!("barrier {:?} holds {raw:?}", self.object.name))
            }),
        }
    }
}
