//! [`LockProxy`]: a named lease lock with fencing tokens on the cluster's
//! server.

use crate::sync::{LockTimeoutError, TryLockError};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::manager::{Object, object_type};
use super::{BACKSTOP, Deadline, script, wait_wake};
use crate::cluster::ClusterError;
use crate::cluster::link::IO_TIMEOUT;
use crate::sys::fork_local::ForkLocal;

/// The lease of [`Manager::lock`](super::Manager::lock).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The shortest lease [`LockProxy::with_lease`] takes.
const MIN_LEASE: Duration = Duration::from_millis(30);

/// Takes the lock if it is free: `{1, token}`, else `{0, ms left of the
/// holder's lease}`. KEYS: lock, fence. ARGV: owner, lease in ms.
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  num(redis.call('GET', KEYS[2]), 0, 'the fencing counter')
  local t = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. t, 'PX', ARGV[2])
  return {1, t}
end
if pttl < 0 then
  error({err = 'WRONGTYPE the lock is held without a lease: it was not set by multiproc'})
end
return {0, pttl}
"#,
    )
});

/// Releases the lock if this holder still has it and wakes a waiter.
/// KEYS: lock, wake. ARGV: holder's value.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
wake(KEYS[2])
return 1
"#,
    )
});

/// Extends the lease if this holder still has it. KEYS: lock. ARGV:
/// holder's value, lease in ms.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#,
    )
});

/// A lock named in a [`Manager`](super::Manager), held under a **lease**:
/// a holder has it for the lease's length (10 s by default, see
/// [`with_lease`](Self::with_lease)), and a thread of the holder's
/// renews the lease every third of it while the guard lives. If the
/// holder dies (even by SIGKILL) or loses the server, the lock comes free
/// when the lease ends; waiters take it then.
///
/// **A lease lock is not a local mutex.** A holder that stalls longer
/// than its lease (a pause of the process, a network partition, a
/// suspended virtual machine) loses the lock without knowing it at once,
/// and another process may take it while the first still runs its
/// critical section. [`LockGuard::is_held`] says whether the lease is
/// still known good, and [`LockGuard::token`] is a *fencing token*: it
/// grows with every acquisition, so a store that remembers the largest
/// token it has seen can refuse a write from a holder that lost the lock
/// to a later one. Tokens grow only while the server keeps its data: a
/// restart without persistence starts them again from 1.
///
/// ```no_run
/// use std::time::Duration;
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis+unix:///run/redis/redis.sock")?;
/// let lock = cluster.manager().lock("migrations")?.with_lease(Duration::from_secs(30));
/// let guard = lock.lock()?;
/// let token = guard.token(); // pass it to the storage written under the lock
/// assert!(guard.is_held());
/// assert!(lock.try_lock().is_err()); // TryLockError::WouldBlock
/// guard.release()?; // an error if the lease was lost meanwhile
/// # let _ = token;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LockProxy {
    object: Object,
    lease: Duration,
}

object_type!(LockProxy, "lock");

impl LockProxy {
    pub(crate) fn from_object(object: Object) -> Self {
        LockProxy {
            object,
            lease: DEFAULT_LEASE,
        }
    }

    /// This handle acquires with leases of `lease` (at least 30 ms). Each
    /// holder's lease is its own: handles with other leases share the
    /// lock.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(MIN_LEASE);
        self
    }

    /// The lease this handle acquires with.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether some holder has the lock now.
    pub fn is_locked(&self) -> Result<bool, ClusterError> {
        self.object
            .run(redis::cmd("EXISTS").arg(&self.object.keys[0]))
    }

    /// Takes the lock by `deadline`: its token, the key's value and when
    /// the winning request was sent; `None` at the deadline.
    fn acquire_raw(
        &self,
        deadline: Deadline,
    ) -> Result<Option<(u64, String, Instant)>, ClusterError> {
        let owner = owner_id();
        let keys = &self.object.keys;
        let got = self
            .object
            .with(|link| -> Result<Option<(u64, Instant)>, ClusterError> {
                loop {
                    let sent = Instant::now();
                    let (got, n): (i64, i64) = link.script_within(
                        ACQUIRE
                            .key(&keys[0])
                            .key(&keys[1])
                            .arg(&owner)
                            .arg(self.lease_ms()),
                        deadline.io(),
                    )?;
                    if got == 1 {
                        return Ok(Some((n as u64, sent)));
                    }
                    if deadline.expired() {
                        return Ok(None);
                    }
                    // Woken by a release, or when the holder's lease ends.
                    let left = Duration::from_millis(n.max(1) as u64);
                    wait_wake(link, &keys[2], deadline.block(left.min(BACKSTOP)))?;
                }
            })?;
        Ok(got.map(|(token, sent)| (token, format!("{owner}:{token}"), sent)))
    }

    fn acquire_until(&self, deadline: Deadline) -> Result<Option<LockGuard<'_>>, ClusterError> {
        Ok(self
            .acquire_raw(deadline)?
            .map(|(token, value, sent)| LockGuard::new(self, token, value, sent)))
    }

    /// [`lock`](Self::lock), as a future on any runtime: a waiter thread
    /// tries in slices of 100 ms (`docs/async.md`). Dropping the future
    /// holds nothing: a lock that a slice in flight took is released. The
    /// lease runs from the winning request, so a future left unpolled for
    /// longer than the lease yields a guard whose
    /// [`is_held`](LockGuard::is_held) is false.
    pub fn lock_async(
        &self,
    ) -> impl std::future::Future<Output = Result<LockGuard<'_>, ClusterError>> + Send + '_ {
        let (mine, back) = (self.clone(), self.clone());
        let got = super::sliced(
            move |slice| match mine.acquire_raw(Deadline::after(slice)) {
                Ok(None) => None,
                other => Some(other),
            },
            move |taken| {
                if let Ok(Some((_, value, _))) = taken {
                    let keys = &back.object.keys;
                    let _ = back
                        .object
                        .script::<i64>(RELEASE.key(&keys[0]).key(&keys[2]).arg(&value));
                }
            },
        );
        async move {
            let (token, value, sent) = got.await?.ok_or_else(|| {
                ClusterError::Server("an unbounded acquire came back empty".into())
            })?;
            Ok(LockGuard::new(self, token, value, sent))
        }
    }

    /// Takes the lock, waiting as long as it takes.
    pub fn lock(&self) -> Result<LockGuard<'_>, ClusterError> {
        self.acquire_until(Deadline::never())?
            .ok_or_else(|| ClusterError::Server("an unbounded acquire came back empty".into()))
    }

    /// Takes the lock if it is free now.
    pub fn try_lock(&self) -> Result<LockGuard<'_>, TryLockError<ClusterError>> {
        self.acquire_until(Deadline::now())?
            .ok_or(TryLockError::WouldBlock)
    }

    /// Takes the lock if it comes free within `timeout`.
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<LockGuard<'_>, LockTimeoutError<ClusterError>> {
        self.acquire_until(Deadline::after(timeout))?
            .ok_or(LockTimeoutError::Timeout)
    }
}

/// A new holder's name: the process id and 64 random bits.
fn owner_id() -> String {
    let mut tag = [0u8; 8];
    let _ = getrandom::fill(&mut tag);
    format!("{}:{:016x}", std::process::id(), u64::from_le_bytes(tag))
}

/// What a guard and its renewing thread share.
struct Lease {
    state: Mutex<LeaseState>,
    changed: Condvar,
}

struct LeaseState {
    /// Until when the lease is known good: the last acquire or renewal
    /// sent, plus the lease.
    good_until: Instant,
    /// The server said another holder has it, or the lease ran out.
    lost: bool,
    /// The guard is gone: the thread stops.
    stop: bool,
}

/// Holds a [`LockProxy`]; releases it when dropped (or with
/// [`release`](Self::release), which says whether the lease was still
/// held). While it lives, a thread renews the lease.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a LockProxy,
    token: u64,
    /// What the lock's key holds while this guard has it.
    value: String,
    lease: Arc<Lease>,
    released: bool,
}

impl std::fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("lock", &self.lock.object.name)
            .field("token", &self.token)
            .field("held", &self.is_held())
            .finish()
    }
}

impl<'a> LockGuard<'a> {
    fn new(lock: &'a LockProxy, token: u64, value: String, sent: Instant) -> LockGuard<'a> {
        let lease = Arc::new(Lease {
            state: Mutex::new(LeaseState {
                good_until: sent + lock.lease,
                lost: false,
                stop: false,
            }),
            changed: Condvar::new(),
        });
        // Without a renewer (no thread could be made) the lease simply
        // runs out, and is_held says so then.
        renew(Renewal {
            cluster: lock.object.cluster().clone(),
            key: lock.object.keys[0].clone(),
            value: value.clone(),
            lease_len: lock.lease,
            lease: Arc::clone(&lease),
            next: sent + lock.lease / 3,
        });
        LockGuard {
            lock,
            token,
            value,
            lease,
            released: false,
        }
    }

    /// The fencing token of this acquisition: larger than every token
    /// given before by this lock (while the server keeps its data).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether the lease is still known good: false once the server said
    /// another holder has the lock, or once the lease ran out without a
    /// renewal (the server unreachable, this process stalled). Asks
    /// nothing of the server; a lease once lost stays lost.
    pub fn is_held(&self) -> bool {
        let mut s = self.lease.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.lost && Instant::now() >= s.good_until {
            s.lost = true;
        }
        !s.lost
    }

    fn stop_renewing(&self) {
        let mut s = self.lease.state.lock().unwrap_or_else(|e| e.into_inner());
        s.stop = true;
        self.lease.changed.notify_all();
    }

    fn release_now(&mut self) -> Result<(), ClusterError> {
        self.released = true;
        self.stop_renewing();
        let keys = &self.lock.object.keys;
        let released: Result<i64, ClusterError> = self
            .lock
            .object
            .script(RELEASE.key(&keys[0]).key(&keys[2]).arg(&self.value));
        match released {
            Ok(1) => Ok(()),
            Ok(_) => Err(ClusterError::LeaseLost),
            // Not ours anyway: the lease ran out before the server failed.
            Err(_) if !self.is_held() => Err(ClusterError::LeaseLost),
            Err(e) => Err(e),
        }
    }

    /// Releases the lock now; [`ClusterError::LeaseLost`] if the lease
    /// had been lost (another holder may have had the lock meanwhile),
    /// also when the server cannot be reached after the lease ran out.
    pub fn release(mut self) -> Result<(), ClusterError> {
        self.release_now()
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.release_now();
        }
    }
}

/// One guard's lease, renewed every third of it by the process's renewer
/// thread (one thread for every lease: starting a thread per acquisition
/// cost more than the acquisition itself).
struct Renewal {
    cluster: crate::cluster::Cluster,
    key: String,
    value: String,
    lease_len: Duration,
    lease: Arc<Lease>,
    next: Instant,
}

/// The renewer thread's inbox, with the process it belongs to: a child
/// forked from this process has no such thread and starts its own.
static RENEWER: ForkLocal<Option<(u32, std::sync::mpsc::Sender<Renewal>)>> =
    ForkLocal::new(|| None);

/// Hands `r` to the renewer thread, starting it if this process has none.
fn renew(r: Renewal) {
    let mut slot = RENEWER.lock();
    let me = std::process::id();
    let r = match &*slot {
        Some((pid, tx)) if *pid == me => match tx.send(r) {
            Ok(()) => return,
            Err(std::sync::mpsc::SendError(r)) => r,
        },
        _ => r,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = tx.send(r);
    if thread::Builder::new()
        .name("multiproc-lease".into())
        .spawn(move || run_renewer(rx))
        .is_ok()
    {
        *slot = Some((me, tx));
    }
}

/// The renewer thread: renews each live lease when it is due, one
/// connection per cluster URL, until every guard is gone and nothing new
/// arrives for a while.
fn run_renewer(rx: std::sync::mpsc::Receiver<Renewal>) {
    let mut jobs: Vec<Renewal> = Vec::new();
    let mut links: std::collections::HashMap<String, crate::cluster::Link> =
        std::collections::HashMap::new();
    loop {
        jobs.retain(|j| {
            let s = j.lease.state.lock().unwrap_or_else(|e| e.into_inner());
            !s.stop && !s.lost
        });
        let now = Instant::now();
        let wait = jobs
            .iter()
            .map(|j| j.next.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(30));
        match rx.recv_timeout(wait) {
            Ok(j) => {
                jobs.push(j);
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if jobs.is_empty() {
                    // Idle: end, unless a guard is being handed over now.
                    let mut slot = RENEWER.lock();
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => {
                            *slot = None;
                            return;
                        }
                    }
                    continue;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if jobs.is_empty() {
                    return;
                }
            }
        }
        let now = Instant::now();
        for j in jobs.iter_mut().filter(|j| j.next <= now) {
            let link = links
                .entry(j.cluster.full_url().to_owned())
                .or_insert_with(|| j.cluster.link());
            j.renew_once(link);
        }
    }
}

impl Renewal {
    fn renew_once(&mut self, link: &mut crate::cluster::Link) {
        {
            let s = self.lease.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.stop || s.lost {
                return;
            }
        }
        let period = self.lease_len / 3;
        let sent = Instant::now();
        let ms = u64::try_from(self.lease_len.as_millis()).unwrap_or(u64::MAX);
        let r: Result<i64, ClusterError> = link.script_within(
            RENEW.key(&self.key).arg(&self.value).arg(ms),
            self.lease_len.min(IO_TIMEOUT),
        );
        let mut s = self.lease.state.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(1) if !s.lost && Instant::now() < s.good_until => {
                s.good_until = sent + self.lease_len;
                self.next = sent + period;
            }
            // Another holder has it, or it ran out before this renewal
            // came back.
            Ok(_) => s.lost = true,
            Err(_) => {
                // The server is unreachable: try again soon, while the
                // lease lasts.
                if Instant::now() >= s.good_until {
                    s.lost = true;
                } else {
                    self.next = Instant::now() + period.min(BACKSTOP);
                }
            }
        }
    }
}
