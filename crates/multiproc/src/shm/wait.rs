//! The one way a shared-memory structure waits for another process.
//!
//! Every lock, semaphore, event, condition, barrier, queue ring and pipe
//! waits through a [`Waiter`]; only what the sleep is made of differs. The
//! structures here sleep on a futex word ([`Waiter::sleep`]); the
//! shared-memory pipe sleeps in `poll` on its wake-up socket instead, so
//! that `wait()` can watch many connections at once, with the same
//! counting protocol.
//!
//! A waiter first re-checks its condition a few times with a `pause`
//! between checks (spins), then a number of times giving the processor
//! away between checks (yields, for a few milliseconds at most), then
//! sleeps on a futex word. On a busy machine (a yield lately kept the
//! processor away for long: see [`try_yield`]) the yields are skipped,
//! except by a queue's ring (and its side locks) and the pipe, whose peers
//! are the processes a yield would hand the processor to. A waiter given a
//! [`Presence`] (two words where it and its peer say whether they run, and
//! where) spins only while the peer runs on another processor: a peer on
//! the same processor, or one not running, cannot answer before this side
//! gives the processor up. Each sleep lasts
//! at most [`RECHECK`], so that a waiter whose peer died notices it (the
//! caller asks [`crate::sys::liveness`] then), and never past the caller's
//! deadline: every wait here returns by its deadline, whatever the other
//! processes do or write.
//!
//! A sleeper counts itself in a sleeper count before its last re-check, and
//! the side that changes the condition reads that count after changing it
//! (both `SeqCst`), so either the sleeper sees the change or the changer
//! sees the sleeper and wakes it: no wake-up is lost. The lock and the
//! ring refine the re-check with [`RawLock::observe`](super::lock::RawLock::observe).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sys::futex;

/// How long a sleeper sleeps at most before it checks its peers again.
pub(crate) const RECHECK: Duration = Duration::from_millis(50);

/// How many checks a waiter makes before it sleeps: counted, or by the
/// clock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Policy {
    /// `spins` checks separated by a `pause` instruction, then `yields`
    /// checks separated by a yield of the processor.
    Counted {
        /// Checks separated by a `pause`.
        spins: u32,
        /// Most `pause`s between two checks: the n-th spin pauses
        /// `min(2^n, backoff)` times.
        backoff: u32,
        /// Checks separated by a yield.
        yields: u32,
        /// Yield even when the machine is busy (see [`try_yield`]): for a
        /// queue's ring, whose peers on an oversubscribed machine are
        /// often the very processes a yield hands the processor to.
        yield_when_busy: bool,
    },
    /// Checks separated by a `pause` for `spin` (the clock is read every
    /// [`CLOCK_EVERY`] spins, from the [`CLOCK_EVERY`]-th), then separated
    /// by yields for `yields`: for a peer that answers within microseconds
    /// when it runs (the pipe's round trip, an event's ping-pong). With a
    /// [`Presence`], the spinning lasts only while the peer runs on another
    /// processor.
    Timed {
        /// How long to spin.
        spin: Duration,
        /// How long to yield after that.
        yields: Duration,
        /// Yield even when the machine is busy (see [`try_yield`]), as
        /// for [`Policy::Counted`]: the pipe, whose peer is often the
        /// process a yield lets run; but not when a [`Presence`] says the
        /// peer is on another processor (or asleep) and a yield lately
        /// lost a whole time slice ([`slices_off`]). Without it, once a
        /// yield has lost a whole time slice ([`Busy::Slice`]) the waiter
        /// sleeps at once (the manager's local path: a yield there handed
        /// the processor to a CPU-bound process for its whole slice,
        /// milliseconds per request).
        yield_when_busy: bool,
    },
}

impl Policy {
    /// A counted policy (see [`Policy::Counted`]).
    pub(crate) const fn counted(spins: u32, yields: u32) -> Policy {
        Policy::Counted {
            spins,
            backoff: 1,
            yields,
            yield_when_busy: false,
        }
    }

    /// [`backoff`](Policy::backoff), yielding on a busy machine too.
    pub(crate) const fn backoff_yielding(spins: u32, backoff: u32, yields: u32) -> Policy {
        Policy::Counted {
            spins,
            backoff,
            yields,
            yield_when_busy: true,
        }
    }

    /// A counted policy that keeps yielding on a busy machine (see
    /// [`Policy::Counted`]'s `yield_when_busy`).
    pub(crate) const fn counted_yielding(spins: u32, yields: u32) -> Policy {
        Policy::Counted {
            spins,
            backoff: 1,
            yields,
            yield_when_busy: true,
        }
    }

    /// A counted policy whose spins back off exponentially up to
    /// `backoff` pauses between two checks.
    pub(crate) const fn backoff(spins: u32, backoff: u32, yields: u32) -> Policy {
        Policy::Counted {
            spins,
            backoff,
            yields,
            yield_when_busy: false,
        }
    }
}

/// How long the yields of a [`Policy::Counted`] wait last at most,
/// whatever their count: a yield that hands the processor to a CPU-bound
/// process can take its whole time slice (milliseconds), and 500 of them
/// (a queue's ring) would hold off for seconds the sleep whose re-checks
/// look for a dead peer (a queue nobody else holds says `Disconnected`
/// within some tens of milliseconds).
const YIELDING_AT_MOST: Duration = Duration::from_millis(5);

/// Spins between two readings of the clock, for [`Policy::Timed`].
const CLOCK_EVERY: u32 = 32;

/// A yield that kept the processor away this long gave it to another
/// runnable process: the machine has more of them than processors. Locks,
/// events, semaphores, conditions and barriers then sleep instead of
/// yielding (see [`Busy::Yield`]).
const SLOW_YIELD: Duration = Duration::from_micros(50);

/// A yield that kept the processor away this long gave it to another
/// process for its whole time slice (a millisecond or more on Linux's
/// scheduler). The manager's local path skips its yields only after one
/// of these ([`Busy::Slice`]): a yield of 50 µs to 400 µs there is mostly
/// a peer that ran a burst of work and gave the processor back, and at
/// 50 µs an idle run of its round trips lost a third of its speed.
const SLICE_YIELD: Duration = Duration::from_micros(400);

/// How long waits sleep at once instead of yielding after a slow yield.
const YIELDS_OFF_FOR: Duration = Duration::from_millis(100);

/// Until when (on the monotonic clock, in nanoseconds) waits that follow
/// [`Busy::Yield`] skip their yields.
static YIELDS_OFF_UNTIL: AtomicU64 = AtomicU64::new(0);

/// Until when waits that follow [`Busy::Slice`] skip their yields.
static SLICES_OFF_UNTIL: AtomicU64 = AtomicU64::new(0);

/// Which evidence of a busy machine makes a wait skip its yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Busy {
    /// A yield over [`SLOW_YIELD`]: for locks and the like, whose holder
    /// mostly runs many critical sections in a row while a waiter sleeps
    /// (two processes adding to a locked `Value` ran 2.5 times faster with
    /// this rule than with the [`Busy::Slice`] one).
    Yield,
    /// A yield over [`SLICE_YIELD`]: for a round trip whose peer a yield
    /// usually lets run (the manager's local path).
    Slice,
}

/// The monotonic clock, without a lazily set epoch (whose initialisation
/// a fork child could find half done by a thread it does not have).
fn clock_ns() -> u64 {
    crate::sys::process::monotonic_ns()
}

/// Yields the processor, unless a recent yield showed the machine busy
/// (as `busy` reads it): then false, and the caller sleeps instead. On a
/// busy machine (more runnable processes than processors) a yield hands
/// the processor to another process for its whole time slice,
/// milliseconds, while a sleep costs the waker one system call and this
/// side one wake-up: so once a yield has taken longer than the threshold,
/// every such wait of this process sleeps at once for [`YIELDS_OFF_FOR`],
/// then tries yielding again.
fn try_yield(busy: Busy) -> bool {
    let off = match busy {
        Busy::Yield => &YIELDS_OFF_UNTIL,
        Busy::Slice => &SLICES_OFF_UNTIL,
    };
    if clock_ns() < off.load(Ordering::Relaxed) {
        return false;
    }
    let took = timed_yield();
    if took > SLOW_YIELD.as_nanos() as u64 {
        return busy == Busy::Slice && took <= SLICE_YIELD.as_nanos() as u64;
    }
    true
}

/// Yields the processor; notes a slow yield for [`try_yield`] and
/// [`slices_off`]. Returns how long the yield kept the processor away, in
/// nanoseconds.
fn timed_yield() -> u64 {
    let now = clock_ns();
    futex::yield_now();
    let after = clock_ns();
    let took = after.saturating_sub(now);
    let until = after.saturating_add(YIELDS_OFF_FOR.as_nanos() as u64);
    if took > SLICE_YIELD.as_nanos() as u64 {
        SLICES_OFF_UNTIL.store(until, Ordering::Relaxed);
    }
    if took > SLOW_YIELD.as_nanos() as u64 {
        YIELDS_OFF_UNTIL.store(until, Ordering::Relaxed);
    }
    took
}

/// Whether a yield of this process lately lost a whole time slice (see
/// [`Busy::Slice`]).
fn slices_off() -> bool {
    clock_ns() < SLICES_OFF_UNTIL.load(Ordering::Relaxed)
}

/// How often at most a process moves itself away from a peer that shares
/// its processor (see [`Waiter::move_apart`]).
const MOVE_EVERY: Duration = Duration::from_millis(1);

/// When (monotonic ns) this process last did.
static MOVED_AT: AtomicU64 = AtomicU64::new(0);

/// How often at most a process weighs moving onto its peer's processor
/// (see [`Presence::join`]); weighing reads `/proc/loadavg`.
const JOIN_EVERY: Duration = Duration::from_millis(10);

/// When (monotonic ns) this process last weighed it.
static JOINED_AT: AtomicU64 = AtomicU64::new(0);

/// What the caller should do after a check of its condition failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Check again (the waiter paused or yielded).
    Check,
    /// Spinning and yielding are over: sleep (see [`Waiter::sleep`]).
    Sleep,
    /// The deadline passed.
    TimedOut,
}

/// How a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slept {
    /// Woken, or the word had changed: check again.
    Woken,
    /// [`RECHECK`] passed with no wake-up: check the peers' liveness, then
    /// check again.
    Recheck,
    /// The deadline passed.
    TimedOut,
}

/// In a presence word: the process is running (on the processor in the
/// low bits), not yielding or asleep.
const RUNNING: u64 = 1 << 31;
/// A presence word: the process yields or sleeps. (Zero: nothing known, as
/// for a peer that has never waited; it is taken for running elsewhere.)
const AWAY: u64 = 1 << 32;
/// With [`AWAY`]: the process yields, and stays runnable on the processor
/// in the low bits (without it, it sleeps: a sleeper on processor 0 is
/// not taken for a yielder there).
const YIELDING: u64 = 1 << 33;
/// With [`AWAY`] and without [`YIELDING`]: the process sleeps, and last ran
/// on the processor in the low bits (without it, where is unknown).
const PLACED: u64 = 1 << 34;

/// The presence word of a process that runs, here: [`RUNNING`] and its
/// processor. An event's setter leaves it in the event, for the waiters
/// that follow (see [`Presence`]).
pub(crate) fn running_here() -> u64 {
    RUNNING | (u64::from(rustix::thread::sched_getcpu() as u32) & (RUNNING - 1))
}

/// [`running_here`] where asking costs no system call (the kernel's vDSO
/// answers it, on these architectures); `None` elsewhere, where an
/// event's `set`, which asks every time, would pay a system call for a
/// hint (a waiter then takes the setter for running elsewhere).
pub(crate) fn running_here_cheaply() -> Option<u64> {
    cfg!(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "riscv64",
        target_arch = "powerpc64",
        target_arch = "s390x"
    ))
    .then(running_here)
}

/// Two words in shared memory where two peers say whether they run, and on
/// which processor: `mine`, written by this side, and `theirs`. A waiter
/// with a presence spins only while the peer runs on another processor,
/// the one case where spinning pays: a peer that shares this processor
/// cannot answer before this side gives it up, and one that is not running
/// answers no sooner for being watched. It publishes its own word when it
/// starts waiting, marks it away while it yields or sleeps, and publishes
/// it again when the wait ends. A peer that never waited has said nothing
/// (zero) and is taken for running elsewhere. The words are a hint: whatever a peer writes
/// there only makes this side spin (within the policy's bound) or yield.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Presence<'a> {
    /// This side's word.
    pub(crate) mine: &'a AtomicU64,
    /// The peer's word.
    pub(crate) theirs: &'a AtomicU64,
}

impl Presence<'_> {
    /// Publishes that this process runs, and where; returns the word.
    pub(crate) fn arrive(&self) -> u64 {
        let here = running_here();
        self.mine.store(here, Ordering::Relaxed);
        here
    }

    /// Publishes that this process is asleep, and on which processor it
    /// last ran, if its word said so.
    pub(crate) fn leave(&self) {
        let was = self.mine.load(Ordering::Relaxed);
        let placed = was & RUNNING != 0 || was & (AWAY | YIELDING) == AWAY | YIELDING;
        let word = if placed {
            AWAY | PLACED | (was & (RUNNING - 1))
        } else {
            AWAY
        };
        self.mine.store(word, Ordering::Relaxed);
    }

    /// The processor the peer runs on, yields on, or last ran on before
    /// it slept, as its word says; `None` if it has not said. Any value a
    /// peer writes is only a hint: [`join`](Self::join) moves nowhere
    /// outside this thread's affinity.
    fn peer_cpu(&self) -> Option<usize> {
        let peer = self.theirs.load(Ordering::Relaxed);
        let placed = peer & RUNNING != 0 || (peer & AWAY != 0 && peer & (YIELDING | PLACED) != 0);
        placed
            .then(|| usize::try_from(peer & (RUNNING - 1)).ok())
            .flatten()
    }

    /// Called by a side about to sleep until its peer answers: if the
    /// machine has no processor to spare (more runnable threads than the
    /// processors this process may use) and the peer runs, or last ran,
    /// on another processor, moves this thread onto the peer's processor
    /// (its affinity set to that processor and restored at once: best
    /// effort, see `sys::process::move_onto_cpu`). Weighed at most once
    /// per [`JOIN_EVERY`] in this process. True if it moved.
    ///
    /// With a CPU-bound process on every core, two peers that answer each
    /// other often land on two processors, each beside a CPU-bound one.
    /// Then every message wakes a sleeper that waits for the CPU-bound
    /// process to be preempted: a manager's dict get from one client took
    /// 65 to 100 µs that way, against 5 to 15 µs with both on one
    /// processor, and such a placement held for seconds. The scheduler
    /// rarely brings them together itself: a futex wake-up, unlike a
    /// socket's, does not say that the waker is about to sleep.
    pub(crate) fn join(&self) -> bool {
        let Some(cpu) = self.peer_cpu() else {
            return false;
        };
        let now = clock_ns();
        let last = JOINED_AT.load(Ordering::Relaxed);
        // One thread of the process weighs it per period: the others lose
        // the exchange.
        if now.saturating_sub(last) < JOIN_EVERY.as_nanos() as u64
            || JOINED_AT
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        crate::sys::process::move_onto_cpu(cpu)
    }

    /// Publishes that this process yields the processor `here` names: it
    /// stays runnable there.
    fn leave_yielding(&self, here: u64) {
        self.mine
            .store(AWAY | YIELDING | (here & (RUNNING - 1)), Ordering::Relaxed);
    }

    /// Whether the peer runs, or yields, on this side's processor `here`
    /// (a process that runs itself, `here`, is running).
    fn together(&self, here: u64) -> bool {
        let peer = self.theirs.load(Ordering::Relaxed);
        here & RUNNING != 0 && (peer == here || peer == AWAY | YIELDING | (here & (RUNNING - 1)))
    }

    /// Whether the peer may run on another processor than `here`: it said
    /// so, or it has said nothing yet.
    fn apart(&self, here: u64) -> bool {
        match self.theirs.load(Ordering::Relaxed) {
            0 => true,
            peer => peer & RUNNING != 0 && peer != here,
        }
    }
}

/// One wait, from its first failed check to its end.
#[derive(Debug)]
pub(crate) struct Waiter<'a> {
    policy: Policy,
    deadline: Option<Instant>,
    round: u32,
    /// Where this side and its peer say whether they run (for
    /// [`Policy::Timed`]), and this side's word as last published.
    presence: Option<Presence<'a>>,
    here: u64,
    /// For [`Policy::Timed`]: when the spinning began to be timed (at the
    /// first reading of the clock, after [`CLOCK_EVERY`] spins), then when
    /// the yields began; and whether the spinning is over.
    /// For [`Policy::Counted`]: when the yields began.
    started: Option<Instant>,
    yielding: bool,
    /// Whether [`Waiter::move_apart`] may move this thread: for a pipe end
    /// or a manager client, whose presence names one peer process; not
    /// for an event's waiter, whose word is only a hint.
    may_move: bool,
}

impl<'a> Waiter<'a> {
    /// A wait that gives up at `deadline` (never, for `None`).
    #[inline]
    pub(crate) fn new(policy: Policy, deadline: Option<Instant>) -> Waiter<'a> {
        Waiter {
            policy,
            deadline,
            round: 0,
            presence: None,
            here: 0,
            started: None,
            yielding: false,
            may_move: false,
        }
    }

    /// A wait that spins only while the peer runs on another processor,
    /// as `presence` says (see [`Presence`]); for [`Policy::Timed`].
    pub(crate) fn with_presence(
        policy: Policy,
        deadline: Option<Instant>,
        presence: Option<Presence<'a>>,
    ) -> Waiter<'a> {
        Waiter {
            presence,
            may_move: true,
            ..Waiter::new(policy, deadline)
        }
    }

    /// [`with_presence`](Self::with_presence) for a peer word that is only
    /// a hint of where the next answer comes from (an event's last setter):
    /// it decides the spinning and yielding, and never moves this thread.
    pub(crate) fn with_hint(
        policy: Policy,
        deadline: Option<Instant>,
        presence: Presence<'a>,
    ) -> Waiter<'a> {
        Waiter {
            presence: Some(presence),
            ..Waiter::new(policy, deadline)
        }
    }

    /// Clears this side's presence word (it is about to yield or sleep).
    fn leave(&mut self) {
        if let Some(p) = &self.presence {
            p.leave();
        }
    }

    /// Publishes this side's presence word again.
    fn arrive(&mut self) {
        if let Some(p) = &self.presence {
            self.here = p.arrive();
        }
    }

    /// Whether spinning can pay: there is no presence, or the peer runs on
    /// another processor.
    fn apart(&self) -> bool {
        self.presence.as_ref().is_none_or(|p| p.apart(self.here))
    }

    /// If the peer shares this side's processor (as its presence word
    /// says) while another processor idles: moves this process there, at
    /// most once per [`MOVE_EVERY`] in this process, and starts the wait's
    /// spinning again. Two peers that wake each other through a socket
    /// tend to end up on one processor, and a round trip of theirs then
    /// takes a yield each way, several microseconds, where apart they spin
    /// and answer in under one; the scheduler seldom separates them, as
    /// each is always runnable. The side that runs while the other yields
    /// to it moves; it says it is away first, so that the other, running
    /// next on the processor it left, does not move too.
    fn move_apart(&mut self) -> bool {
        let Some(p) = self.presence.filter(|_| self.may_move) else {
            return false;
        };
        if !p.together(self.here) {
            return false;
        }
        #[cfg(test)]
        tests::MOVES_WEIGHED.with(|n| n.set(n.get() + 1));
        let now = clock_ns();
        if now < YIELDS_OFF_UNTIL.load(Ordering::Relaxed)
            || now.saturating_sub(MOVED_AT.load(Ordering::Relaxed)) < MOVE_EVERY.as_nanos() as u64
        {
            return false;
        }
        MOVED_AT.store(now, Ordering::Relaxed);
        // Away first, so that the peer, running on the processor this
        // side leaves, does not take it for still being there.
        p.leave();
        let cpu = (self.here & (RUNNING - 1)) as usize;
        let moved = crate::sys::process::move_off_cpu(cpu);
        self.arrive();
        if moved {
            self.yielding = false;
            self.started = None;
        }
        moved
    }

    /// Whether the deadline has passed.
    pub(crate) fn passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// After a failed check: pause or yield and return [`Next::Check`]
    /// while the policy allows, then [`Next::Sleep`]. The deadline is read
    /// before every yield and sleep, and with each reading of the clock
    /// while a [`Policy::Timed`] wait spins (every [`CLOCK_EVERY`] spins,
    /// about a microsecond), not between spins.
    pub(crate) fn pause(&mut self) -> Next {
        let round = self.round;
        self.round = self.round.saturating_add(1);
        match self.policy {
            Policy::Counted {
                spins,
                backoff,
                yields,
                yield_when_busy,
            } => {
                if round < spins {
                    let pauses = 1u32.checked_shl(round).unwrap_or(u32::MAX).min(backoff);
                    for _ in 0..pauses.max(1) {
                        std::hint::spin_loop();
                    }
                    return Next::Check;
                }
                if self.passed() {
                    return Next::TimedOut;
                }
                let yielding = round < spins.saturating_add(yields)
                    && self.started.get_or_insert_with(Instant::now).elapsed() < YIELDING_AT_MOST;
                if yielding {
                    if yield_when_busy {
                        futex::yield_now();
                        return Next::Check;
                    }
                    if try_yield(Busy::Yield) {
                        return Next::Check;
                    }
                }
                Next::Sleep
            }
            Policy::Timed {
                spin,
                yields,
                yield_when_busy,
            } => {
                if round == 0 {
                    self.arrive();
                }
                if !self.yielding {
                    let apart = self.apart();
                    // The clock is first read after CLOCK_EVERY spins: a
                    // wait that ends sooner (most, between two running
                    // peers) reads it not at all.
                    let untimed = round < CLOCK_EVERY || !round.is_multiple_of(CLOCK_EVERY);
                    if apart && untimed && !spin.is_zero() {
                        std::hint::spin_loop();
                        return Next::Check;
                    }
                    // Each reading of the clock also looks at the
                    // deadline: a spin of tens of microseconds (an
                    // event's) ends with it.
                    let now = Instant::now();
                    if self.deadline.is_some_and(|d| now >= d) {
                        return Next::TimedOut;
                    }
                    let started = *self.started.get_or_insert(now);
                    if apart && now.saturating_duration_since(started) < spin {
                        std::hint::spin_loop();
                        return Next::Check;
                    }
                    // Spinning is over, or cannot pay: the yields begin.
                    self.yielding = true;
                    self.started = Some(now);
                }
                if self.passed() {
                    return Next::TimedOut;
                }
                if self.started.is_some_and(|s| s.elapsed() < yields) {
                    if self.move_apart() {
                        return Next::Check;
                    }
                    if let Some(p) = &self.presence {
                        p.leave_yielding(self.here);
                    }
                    let yielded = if yield_when_busy {
                        // Lets a peer on this processor run. One on
                        // another processor gains nothing by it, and on a
                        // machine where yields lately lost a time slice
                        // this side would wait that long to run again:
                        // it sleeps instead, and the peer's answer wakes
                        // it (a pipe's round trip with a CPU-bound process
                        // on each core took a slice, milliseconds, when
                        // the kernel kept the two ends apart).
                        let peer_here =
                            self.presence.as_ref().is_none_or(|p| p.together(self.here));
                        if peer_here {
                            // Not timed: this yield lasts as long as the
                            // peer works, which says nothing of the
                            // machine.
                            futex::yield_now();
                            true
                        } else if !slices_off() {
                            timed_yield();
                            true
                        } else {
                            false
                        }
                    } else {
                        try_yield(Busy::Slice)
                    };
                    self.arrive();
                    if yielded {
                        return Next::Check;
                    }
                }
                self.leave();
                Next::Sleep
            }
        }
    }

    /// Sleeps while `word` holds `seen`: counts itself in `sleepers` (if
    /// any), runs `blocked` (the caller's last re-check, which must be made
    /// after the count is raised) and sleeps only if it still says
    /// blocked, for at most [`RECHECK`] and never past the deadline.
    pub(crate) fn sleep(
        &self,
        word: &AtomicU32,
        seen: u32,
        sleepers: Option<&AtomicU32>,
        blocked: impl FnOnce() -> bool,
    ) -> Slept {
        self.sleep_at_most(word, seen, sleepers, RECHECK, blocked)
    }

    /// [`sleep`](Self::sleep) for at most `cap` instead of [`RECHECK`].
    pub(crate) fn sleep_at_most(
        &self,
        word: &AtomicU32,
        seen: u32,
        sleepers: Option<&AtomicU32>,
        cap: Duration,
        blocked: impl FnOnce() -> bool,
    ) -> Slept {
        if let Some(s) = sleepers {
            s.fetch_add(1, Ordering::SeqCst);
        }
        let woke = if blocked() {
            let recheck = Instant::now() + cap;
            let until = self.deadline.map_or(recheck, |d| d.min(recheck));
            futex::wait(word, seen, Some(until))
        } else {
            futex::Wake::Woken
        };
        if let Some(s) = sleepers {
            s.fetch_sub(1, Ordering::SeqCst);
        }
        match woke {
            futex::Wake::Woken => Slept::Woken,
            futex::Wake::TimedOut if self.passed() => Slept::TimedOut,
            futex::Wake::TimedOut => Slept::Recheck,
        }
    }
}

impl Drop for Waiter<'_> {
    /// The wait is over and this side runs on: says so in its presence
    /// word, and where (it may have moved while it yielded or slept).
    #[inline]
    fn drop(&mut self) {
        if self.round > 0 {
            self.arrive();
        }
    }
}

/// The deadline `timeout` from now; `None` (no deadline) for a timeout so
/// long that the clock cannot express its end (`Duration::MAX`), instead
/// of a panic.
pub(crate) fn after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Wakes up to `n` sleepers on `word`, if `sleepers` says there are any.
pub(crate) fn wake(word: &AtomicU32, sleepers: &AtomicU32, n: u32) {
    if sleepers.load(Ordering::SeqCst) > 0 {
        futex::wake(word, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pauses until the waiter says anything but "check again".
    fn pause_until_not_check(w: &mut Waiter<'_>) -> Next {
        loop {
            match w.pause() {
                Next::Check => continue,
                other => return other,
            }
        }
    }

    #[test]
    fn a_peer_is_together_with_this_side_only_running_or_yielding_on_its_processor() {
        let (mine, theirs) = (AtomicU64::new(0), AtomicU64::new(0));
        let p = Presence {
            mine: &mine,
            theirs: &theirs,
        };
        let here = RUNNING | 3;
        for (peer, together) in [
            (here, true),
            (AWAY | YIELDING | 3, true),
            (AWAY | 3, false),
            (AWAY, false),
            (AWAY | YIELDING, false),
            (RUNNING | 4, false),
            (AWAY | 4, false),
            (0, false),
            (u64::MAX, false),
        ] {
            theirs.store(peer, Ordering::Relaxed);
            assert_eq!(p.together(here), together, "{peer:#x}");
        }
        // A side that is not running itself is together with no one.
        theirs.store(AWAY, Ordering::Relaxed);
        assert!(!p.together(AWAY));
        p.leave_yielding(here);
        assert_eq!(mine.load(Ordering::Relaxed), AWAY | YIELDING | 3);
        // A sleeper on processor 0 is no yielder there.
        p.leave();
        theirs.store(mine.load(Ordering::Relaxed), Ordering::Relaxed);
        assert!(!p.together(RUNNING));
    }

    #[test]
    fn a_waiter_spins_only_while_its_peer_runs_on_another_processor() {
        let policy = Policy::Timed {
            spin: Duration::from_millis(200),
            yields: Duration::ZERO,
            yield_when_busy: true,
        };
        let (mine, theirs) = (AtomicU64::new(0), AtomicU64::new(0));
        let presence = Some(Presence {
            mine: &mine,
            theirs: &theirs,
        });
        // The peer shares this processor: no spinning at all, and this
        // side says it is away before it sleeps.
        let mut w = Waiter::with_presence(policy, None, presence);
        assert_eq!(w.pause(), Next::Check);
        let here = mine.load(Ordering::Relaxed);
        assert_ne!(here & RUNNING, 0, "the first pause publishes where it runs");
        theirs.store(here, Ordering::Relaxed);
        let start = Instant::now();
        assert_eq!(pause_until_not_check(&mut w), Next::Sleep);
        assert!(start.elapsed() < Duration::from_millis(150));
        assert_eq!(
            mine.load(Ordering::Relaxed),
            AWAY | PLACED | (here & (RUNNING - 1))
        );
        drop(w);
        assert_ne!(mine.load(Ordering::Relaxed) & RUNNING, 0, "back when done");
        // The peer runs elsewhere, or has said nothing: the full spin.
        for peer in [RUNNING | ((here + 1) & (RUNNING - 1)), 0] {
            theirs.store(peer, Ordering::Relaxed);
            let mut w = Waiter::with_presence(policy, None, presence);
            let start = Instant::now();
            assert_eq!(pause_until_not_check(&mut w), Next::Sleep);
            assert!(start.elapsed() >= Duration::from_millis(200), "{peer:#x}");
        }
        // The peer sleeps, here, elsewhere or nobody knows where: no
        // spinning.
        for peer in [
            AWAY,
            AWAY | PLACED | (here & (RUNNING - 1)),
            AWAY | PLACED | 1 << 20,
        ] {
            theirs.store(peer, Ordering::Relaxed);
            let mut w = Waiter::with_presence(policy, None, presence);
            let start = Instant::now();
            assert_eq!(pause_until_not_check(&mut w), Next::Sleep);
            assert!(start.elapsed() < Duration::from_millis(150), "{peer:#x}");
        }
    }

    /// Runs `f` with this thread kept on the processor it runs on, so that
    /// a presence word that says "here" stays true (and a move, if one is
    /// weighed, has nowhere to go).
    fn on_this_processor<T>(f: impl FnOnce() -> T) -> T {
        use rustix::thread::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
        let mask = sched_getaffinity(None).unwrap();
        let mut one = CpuSet::new();
        one.set(sched_getcpu());
        sched_setaffinity(None, &one).unwrap();
        let out = f();
        sched_setaffinity(None, &mask).unwrap();
        out
    }

    #[test]
    fn a_sleeper_says_where_it_last_ran_and_is_neither_together_nor_apart() {
        let (mine, theirs) = (AtomicU64::new(RUNNING | 5), AtomicU64::new(0));
        let p = Presence {
            mine: &mine,
            theirs: &theirs,
        };
        p.leave();
        assert_eq!(mine.load(Ordering::Relaxed), AWAY | PLACED | 5);
        // Seen from the peer: asleep on processor 5.
        let q = Presence {
            mine: &theirs,
            theirs: &mine,
        };
        assert_eq!(q.peer_cpu(), Some(5));
        assert!(!q.together(RUNNING | 5));
        assert!(!q.apart(RUNNING | 5));
        assert!(!q.apart(RUNNING | 6));
        // A yielder that goes to sleep keeps its processor; a word that
        // never said where it ran leaves none, twice over.
        mine.store(AWAY | YIELDING | 2, Ordering::Relaxed);
        p.leave();
        assert_eq!(mine.load(Ordering::Relaxed), AWAY | PLACED | 2);
        for word in [0, AWAY, 1 << 40] {
            mine.store(word, Ordering::Relaxed);
            p.leave();
            assert_eq!(mine.load(Ordering::Relaxed), AWAY, "{word:#x}");
        }
        for (word, cpu) in [
            (0, None),
            (RUNNING | 7, Some(7)),
            (AWAY | YIELDING | 7, Some(7)),
            (AWAY | PLACED | 7, Some(7)),
            (AWAY | PLACED, Some(0)),
            (AWAY, None),
            (AWAY | 7, None),
            (u64::MAX, Some((RUNNING - 1) as usize)),
            (1 << 40, None),
        ] {
            mine.store(word, Ordering::Relaxed);
            assert_eq!(q.peer_cpu(), cpu, "{word:#x}");
        }
    }

    /// Spinning threads, as many as the processors this process may use
    /// plus two (so the machine has more runnable threads than those),
    /// stopped and joined when dropped, a failed assertion included.
    struct Spinners {
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Spinners {
        fn start() -> Spinners {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let threads = (0..crate::sys::process::cpu_count() + 2)
                .map(|_| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    })
                })
                .collect();
            Spinners { stop, threads }
        }
    }

    impl Drop for Spinners {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn on_a_busy_machine_a_side_about_to_sleep_joins_its_peers_processor() {
        use rustix::thread::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
        // The yield tests time yields: no spinners of ours beside them.
        let _serial = YIELD_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let mask = sched_getaffinity(None).unwrap();
        let cpus: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&c| mask.is_set(c)).collect();
        let _spinners = Spinners::start();
        let (mine, theirs) = (AtomicU64::new(0), AtomicU64::new(0));
        let p = Presence {
            mine: &mine,
            theirs: &theirs,
        };
        // Words that name no processor this thread may use, or none at
        // all, move nothing.
        for word in [
            0,
            AWAY,
            u64::MAX,
            RUNNING | ((RUNNING - 1) & !0xff),
            AWAY | PLACED | CpuSet::MAX_CPU as u64,
            1 << 40,
        ] {
            theirs.store(word, Ordering::Relaxed);
            JOINED_AT.store(0, Ordering::Relaxed);
            assert!(!p.join(), "{word:#x}");
            assert_eq!(sched_getaffinity(None).unwrap(), mask, "{word:#x}");
        }
        if cpus.len() < 2 {
            // Nowhere to move: what is left needs a second processor.
            return;
        }
        // A thread kept on one processor stays there, whatever the word.
        let here = sched_getcpu();
        let mut one = CpuSet::new();
        one.set(here);
        sched_setaffinity(None, &one).unwrap();
        let there = *cpus.iter().find(|&&c| c != here).unwrap();
        theirs.store(AWAY | PLACED | there as u64, Ordering::Relaxed);
        JOINED_AT.store(0, Ordering::Relaxed);
        let pinned = p.join();
        let after = sched_getaffinity(None).unwrap();
        sched_setaffinity(None, &mask).unwrap();
        assert!(!pinned);
        assert_eq!(after, one);
        // Otherwise it moves to the peer's processor, and its affinity is
        // its own again.
        let (mut joined, mut landed) = (0, 0);
        let start = Instant::now();
        while landed < 3 && start.elapsed() < Duration::from_secs(5) {
            let here = sched_getcpu();
            let there = *cpus.iter().find(|&&c| c != here).unwrap();
            theirs.store(AWAY | PLACED | there as u64, Ordering::Relaxed);
            JOINED_AT.store(0, Ordering::Relaxed);
            let asked = Instant::now();
            if p.join() {
                joined += 1;
                landed += usize::from(sched_getcpu() == there);
                assert_eq!(sched_getaffinity(None).unwrap(), mask);
                // Weighed at most once per JOIN_EVERY (asserted only when
                // this thread was not kept off its processor that long).
                theirs.store(RUNNING | here as u64, Ordering::Relaxed);
                let again = p.join();
                if asked.elapsed() < JOIN_EVERY {
                    assert!(!again);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(landed >= 3, "joined {joined} times, landed {landed} times");
    }

    thread_local! {
        /// Waits of this thread that weighed a move (their peer shared
        /// their processor).
        pub(super) static MOVES_WEIGHED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn a_hint_of_where_the_answer_comes_from_never_moves_the_waiter() {
        let policy = Policy::Timed {
            spin: Duration::from_micros(20),
            yields: Duration::from_millis(2),
            yield_when_busy: false,
        };
        let (mine, theirs) = (AtomicU64::new(0), AtomicU64::new(0));
        let presence = Presence {
            mine: &mine,
            theirs: &theirs,
        };
        let weighed: Vec<u32> = on_this_processor(|| {
            [true, false]
                .map(|hint| {
                    theirs.store(running_here(), Ordering::Relaxed);
                    MOVES_WEIGHED.with(|n| n.set(0));
                    let deadline = Some(Instant::now() + Duration::from_millis(5));
                    let mut w = if hint {
                        Waiter::with_hint(policy, deadline, presence)
                    } else {
                        Waiter::with_presence(policy, deadline, Some(presence))
                    };
                    pause_until_not_check(&mut w);
                    MOVES_WEIGHED.with(|n| n.get())
                })
                .to_vec()
        });
        // An event's waiter (a hint) weighs no move; a pipe end does.
        assert_eq!(weighed[0], 0, "{weighed:?}");
        assert!(weighed[1] > 0, "{weighed:?}");
    }

    /// Held by the tests that read or set whether yields are off.
    static YIELD_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn yields_off() -> bool {
        YIELDS_OFF_UNTIL.load(Ordering::Relaxed) > clock_ns()
    }

    /// [`checks`], and how long they took.
    fn checks_timed(policy: Policy) -> (usize, Duration) {
        let start = Instant::now();
        let n = checks(policy);
        (n, start.elapsed())
    }

    fn checks(policy: Policy) -> usize {
        let mut w = Waiter::new(policy, None);
        std::iter::from_fn(|| match w.pause() {
            Next::Check => Some(()),
            _ => None,
        })
        .count()
    }

    #[test]
    fn the_yields_of_a_counted_wait_end_after_a_few_milliseconds_whatever_their_count() {
        // However slow each yield (on a busy machine, a time slice), the
        // wait reaches its sleep, where a caller looks for dead peers,
        // well before a deadline of seconds.
        for policy in [
            Policy::counted_yielding(3, u32::MAX),
            Policy::counted(3, u32::MAX),
        ] {
            let start = Instant::now();
            let mut w = Waiter::new(policy, Some(start + Duration::from_secs(5)));
            assert_eq!(pause_until_not_check(&mut w), Next::Sleep, "{policy:?}");
            let took = start.elapsed();
            assert!(took < Duration::from_secs(2), "{policy:?}: {took:?}");
        }
    }

    #[test]
    fn a_backing_off_policy_checks_as_often_as_a_plain_one_then_sleeps() {
        let _one = YIELD_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let (n, took) = checks_timed(Policy::counted_yielding(16, 3));
        // Fewer yields only if they outlasted their bound (a loaded test
        // machine, where a yield can last a time slice).
        assert!(
            n == 16 + 3 || (n > 16 && took >= YIELDING_AT_MOST),
            "{n} {took:?}"
        );
        // The others may skip their yields if the machine is busy (as a
        // test run can make it): never their spins.
        for policy in [Policy::counted(16, 3), Policy::backoff(16, 32, 3)] {
            let n = checks(policy);
            assert!((16..=16 + 3).contains(&n), "{policy:?}: {n}");
        }
    }

    #[test]
    fn on_a_busy_machine_a_wait_sleeps_instead_of_yielding_unless_told_to_yield() {
        let _one = YIELD_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let timed = |yield_when_busy| Policy::Timed {
            spin: Duration::ZERO,
            yields: Duration::from_millis(20),
            yield_when_busy,
        };
        // A yield of over 50 µs but under a time slice: locks sleep, the
        // manager's settling still yields (unless a real slow yield, on a
        // loaded test machine, turned its yields off too meanwhile).
        YIELDS_OFF_UNTIL.store(u64::MAX, Ordering::Relaxed);
        let lock_like = checks(Policy::counted(2, 50));
        let settling = checks(timed(false));
        assert_eq!(lock_like, 2);
        assert!(
            settling > 0 || SLICES_OFF_UNTIL.load(Ordering::Relaxed) > clock_ns(),
            "{settling}"
        );
        // A lost time slice: both sleep.
        SLICES_OFF_UNTIL.store(u64::MAX, Ordering::Relaxed);
        let busy = checks(Policy::counted(2, 50));
        let (yielding, yielding_took) = checks_timed(Policy::counted_yielding(2, 50));
        // The manager's settling: no yield at all; the pipe's: 20 ms of
        // them (many checks).
        let timed_busy = checks(timed(false));
        let timed_yielding = checks(timed(true));
        YIELDS_OFF_UNTIL.store(0, Ordering::Relaxed);
        SLICES_OFF_UNTIL.store(0, Ordering::Relaxed);
        assert_eq!(busy, 2, "a yield on a busy machine");
        assert!(
            yielding == 2 + 50 || (yielding > 2 && yielding_took >= YIELDING_AT_MOST),
            "{yielding} {yielding_took:?}"
        );
        assert_eq!(timed_busy, 0, "a timed yield on a busy machine");
        assert!(timed_yielding > 10, "{timed_yielding}");
    }

    #[test]
    fn on_a_busy_machine_a_waiter_yields_only_to_a_peer_on_its_processor() {
        let _one = YIELD_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let policy = Policy::Timed {
            spin: Duration::ZERO,
            yields: Duration::from_millis(5),
            yield_when_busy: true,
        };
        let (mine, theirs) = (AtomicU64::new(0), AtomicU64::new(0));
        let presence = Presence {
            mine: &mine,
            theirs: &theirs,
        };
        let checks_with = |peer: Option<u64>| {
            let presence = peer.map(|word| {
                theirs.store(word, Ordering::Relaxed);
                presence
            });
            let mut w = Waiter::with_presence(policy, None, presence);
            std::iter::from_fn(|| (w.pause() == Next::Check).then_some(())).count()
        };
        let [elsewhere, asleep, together, yielding_here, unknown] = on_this_processor(|| {
            SLICES_OFF_UNTIL.store(u64::MAX, Ordering::Relaxed);
            let elsewhere = checks_with(Some(RUNNING | 1 << 20));
            let asleep = checks_with(Some(AWAY))
                + checks_with(Some(AWAY | PLACED | (running_here() & (RUNNING - 1))));
            let together = checks_with(Some(running_here()));
            let yielding_here =
                checks_with(Some(AWAY | YIELDING | (running_here() & (RUNNING - 1))));
            let unknown = checks_with(None);
            [elsewhere, asleep, together, yielding_here, unknown]
        });
        SLICES_OFF_UNTIL.store(0, Ordering::Relaxed);
        YIELDS_OFF_UNTIL.store(0, Ordering::Relaxed);
        let idle_elsewhere = checks_with(Some(RUNNING | 1 << 20));
        assert_eq!((elsewhere, asleep), (0, 0), "no yield to a third process");
        assert!(
            together > 1 && yielding_here > 1,
            "{together} {yielding_here}"
        );
        assert!(unknown > 1, "without a presence: {unknown}");
        assert!(
            idle_elsewhere > 1 || slices_off(),
            "on an idle machine: {idle_elsewhere}"
        );
    }

    #[test]
    fn a_wait_with_nothing_to_wait_for_returns_by_its_deadline() {
        let word = AtomicU32::new(0);
        let sleepers = AtomicU32::new(0);
        let start = Instant::now();
        let mut w = Waiter::new(
            Policy::counted(4, 4),
            Some(start + Duration::from_millis(120)),
        );
        let mut rechecks = 0;
        loop {
            match w.pause() {
                Next::Check => continue,
                Next::TimedOut => break,
                Next::Sleep => {}
            }
            match w.sleep(&word, 0, Some(&sleepers), || true) {
                Slept::Woken => {}
                Slept::Recheck => rechecks += 1,
                Slept::TimedOut => break,
            }
        }
        assert!(start.elapsed() >= Duration::from_millis(120));
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(rechecks >= 1, "a 120 ms wait re-checks its peers");
        assert_eq!(sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_timed_policy_spins_then_yields_then_sleeps_and_keeps_the_deadline() {
        let _one = YIELD_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        let mut w = Waiter::new(
            Policy::Timed {
                spin: Duration::from_micros(50),
                yields: Duration::from_micros(500),
                yield_when_busy: true,
            },
            None,
        );
        let mut checks = 0u32;
        while w.pause() == Next::Check {
            checks += 1;
        }
        // Unless a slow yield (a loaded machine) turned the yields off.
        assert!(start.elapsed() >= Duration::from_micros(550) || yields_off());
        assert!(checks > CLOCK_EVERY);
        let mut w = Waiter::new(
            Policy::Timed {
                spin: Duration::ZERO,
                yields: Duration::from_secs(60),
                yield_when_busy: true,
            },
            Some(Instant::now() + Duration::from_millis(20)),
        );
        let end = loop {
            match w.pause() {
                Next::Check => continue,
                other => break other,
            }
        };
        // The yields end at the deadline; on a busy machine they are
        // skipped and the caller sleeps (until the deadline) instead.
        assert!(
            w.passed() || (end == Next::Sleep && yields_off()),
            "{end:?}"
        );
        // So does a long spin.
        let start = Instant::now();
        let mut w = Waiter::new(
            Policy::Timed {
                spin: Duration::from_secs(2),
                yields: Duration::ZERO,
                yield_when_busy: true,
            },
            Some(start + Duration::from_millis(5)),
        );
        assert_eq!(pause_until_not_check(&mut w), Next::TimedOut);
        let took = start.elapsed();
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn a_changed_word_wakes_a_sleeper() {
        let word = std::sync::Arc::new(AtomicU32::new(0));
        let sleepers = std::sync::Arc::new(AtomicU32::new(0));
        let (w2, s2) = (word.clone(), sleepers.clone());
        let t = std::thread::spawn(move || {
            let w = Waiter::new(Policy::counted(0, 0), None);
            while w2.load(Ordering::SeqCst) == 0 {
                let _ = w.sleep(&w2, 0, Some(&s2), || w2.load(Ordering::SeqCst) == 0);
            }
        });
        std::thread::sleep(Duration::from_millis(5));
        word.store(1, Ordering::SeqCst);
        wake(&word, &sleepers, 1);
        t.join().expect("sleeper");
    }
}
