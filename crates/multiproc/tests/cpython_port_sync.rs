//! Ports of CPython's `_TestLock`, `_TestSemaphore`, `_TestCondition`,
//! `_TestEvent`, `_TestBarrier`, `_TestValue` and `_TestArray`
//! (`Lib/test/_test_multiprocessing.py`) to the Rust API: what Python
//! asserts, adapted to Rust types. `acquire(False)` is `try_lock` /
//! `try_acquire`, `acquire(timeout=t)` is `lock_timeout` /
//! `acquire_timeout`, `get_value(sem)` is `value()`, `release()` is
//! dropping the guard (locks are RAII guards: releasing a lock that is not
//! held cannot be written, see the README), `BrokenBarrierError` is
//! `BarrierError::Broken` (or `TimedOut` for the party whose own timeout
//! broke the barrier), and Python's `_DummyList` counters are `Value<u32>`.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, daemon_builder, deadline, each_method};
use multiproc::{
    Array, Barrier, BarrierError, BoundedSemaphore, Condition, Event, Lock, Process, RLock,
    RawArray, RawValue, ReleaseError, Semaphore, StartMethod, TryLockError, Value, pipe_shared,
};

const TIMEOUT1: Duration = Duration::from_millis(100);
const TIMEOUT2: Duration = Duration::from_millis(200);
const TIMEOUT3: Duration = Duration::from_millis(150);
const DELTA: Duration = Duration::from_millis(100);

/// Python's `assertReachesEventually` (without its 1 s limit: a loaded
/// machine may take longer; the deadline still fails a hang).
fn reaches(what: &str, mut f: impl FnMut() -> u32, value: u32) {
    let end = Instant::now() + Duration::from_secs(20);
    while f() != value {
        assert!(Instant::now() < end, "{what}: stuck at {} of {value}", f());
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(DELTA);
    assert_eq!(f(), value, "{what}: went past {value}");
}

// ---------------------------------------------------------------- _TestLock

/// `test_lock` and `test_lock_context`.
#[test]
fn lock() {
    deadline(LIMIT, || {
        let lock = Lock::new().unwrap();
        let g = lock.lock().unwrap();
        assert!(lock.is_locked());
        // Another thread's `acquire(False)`: a lock belongs to its process,
        // so a second lock from the same thread would be a self-deadlock
        // (Python's returns False).
        let other = lock.clone();
        std::thread::spawn(move || {
            assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        })
        .join()
        .unwrap();
        assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
        drop(g);
        assert!(!lock.is_locked());
        {
            let _with = lock.lock().unwrap();
            assert!(lock.is_locked());
        }
        assert!(!lock.is_locked());
    });
}

fn try_rlock(lock: RLock) -> bool {
    lock.try_lock().is_ok()
}

/// `test_rlock`.
#[test]
fn rlock() {
    each_method(|m| {
        let lock = RLock::new().unwrap();
        let a = lock.lock().unwrap();
        let b = lock.lock().unwrap();
        let c = lock.lock().unwrap();
        assert!(
            !daemon_builder(m)
                .spawn(try_rlock, lock.clone())
                .unwrap()
                .join()
                .unwrap()
        );
        drop(c);
        drop(b);
        assert!(lock.is_locked(), "{m}: released before the last guard");
        assert!(
            !daemon_builder(m)
                .spawn(try_rlock, lock.clone())
                .unwrap()
                .join()
                .unwrap()
        );
        drop(a);
        assert!(!lock.is_locked());
        assert!(
            daemon_builder(m)
                .spawn(try_rlock, lock.clone())
                .unwrap()
                .join()
                .unwrap()
        );
    });
}

// ----------------------------------------------------------- _TestSemaphore

/// `_test_semaphore`: the part shared by both kinds.
fn check_semaphore(sem: &Semaphore, release: &dyn Fn()) {
    assert_eq!(sem.value(), 2);
    assert!(sem.acquire_timeout(Duration::from_secs(10)));
    assert_eq!(sem.value(), 1);
    sem.acquire();
    assert_eq!(sem.value(), 0);
    assert!(!sem.try_acquire());
    assert_eq!(sem.value(), 0);
    release();
    assert_eq!(sem.value(), 1);
    release();
    assert_eq!(sem.value(), 2);
}

/// `test_semaphore`.
#[test]
fn semaphore() {
    let sem = Semaphore::new(2).unwrap();
    check_semaphore(&sem, &|| sem.release());
    sem.release();
    assert_eq!(sem.value(), 3);
    sem.release();
    assert_eq!(sem.value(), 4);
}

/// `test_bounded_semaphore`, with the over-release check CPython leaves
/// commented out (`ValueError`, the value unchanged).
#[test]
fn bounded_semaphore() {
    let sem = BoundedSemaphore::new(2).unwrap();
    check_semaphore(&sem, &|| sem.release().unwrap());
    assert_eq!(sem.release(), Err(ReleaseError));
    assert_eq!(sem.value(), 2);
    sem.acquire();
    sem.release().unwrap();
    assert_eq!(sem.release(), Err(ReleaseError));
    assert_eq!(sem.value(), 2);
}

/// `test_timeout` (semaphore).
#[test]
fn semaphore_timeout() {
    deadline(LIMIT, || {
        let sem = Semaphore::new(0).unwrap();
        assert!(!sem.try_acquire());
        assert!(!sem.acquire_timeout(Duration::ZERO));
        for timeout in [TIMEOUT2, TIMEOUT3] {
            let t = Instant::now();
            assert!(!sem.acquire_timeout(timeout));
            assert!(t.elapsed() >= timeout, "returned early");
        }
        assert_eq!(sem.value(), 0);
    });
}

// ----------------------------------------------------------- _TestCondition

type Waiter = (Condition, Semaphore, Semaphore, Option<Duration>);

/// `_TestCondition.f`.
fn cond_f((cond, sleeping, woken, timeout): Waiter) {
    let guard = cond.lock().unwrap();
    sleeping.release();
    let guard = match timeout {
        None => guard.wait(),
        Some(t) => guard.wait_timeout(t).0,
    };
    woken.release();
    drop(guard);
}

/// Starts `n` processes and `n` threads running [`cond_f`].
fn start_waiters(
    m: StartMethod,
    n: usize,
    args: &Waiter,
) -> (Vec<Process<()>>, Vec<std::thread::JoinHandle<()>>) {
    let mut procs = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..n {
        procs.push(daemon_builder(m).spawn(cond_f, args.clone()).unwrap());
        let a = args.clone();
        threads.push(std::thread::spawn(move || cond_f(a)));
    }
    (procs, threads)
}

fn join_all(procs: Vec<Process<()>>, threads: Vec<std::thread::JoinHandle<()>>) {
    for p in procs {
        p.join().unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
}

/// `test_notify`.
#[test]
fn condition_notify() {
    each_method(|m| {
        let cond = Condition::new().unwrap();
        let (sleeping, woken) = (Semaphore::new(0).unwrap(), Semaphore::new(0).unwrap());
        let args = (cond.clone(), sleeping.clone(), woken.clone(), None);
        let (procs, threads) = start_waiters(m, 1, &args);

        sleeping.acquire();
        sleeping.acquire();
        // Both released `sleeping` under the lock: once we hold it, both
        // are inside `wait`.
        drop(cond.lock().unwrap());
        std::thread::sleep(DELTA);
        assert_eq!(woken.value(), 0, "{m}: woken without a notification");

        let g = cond.lock().unwrap();
        cond.notify_one();
        drop(g);
        reaches(&format!("{m}: first notify"), || woken.value(), 1);

        // Without the lock (Python raises RuntimeError; the README says
        // ours, as Rust's `Condvar`, does not need it).
        cond.notify_one();
        reaches(&format!("{m}: second notify"), || woken.value(), 2);
        join_all(procs, threads);
    });
}

/// `test_notify_all`.
#[test]
fn condition_notify_all() {
    each_method(|m| {
        let cond = Condition::new().unwrap();
        let (sleeping, woken) = (Semaphore::new(0).unwrap(), Semaphore::new(0).unwrap());

        // Waiters that time out.
        let args = (
            cond.clone(),
            sleeping.clone(),
            woken.clone(),
            Some(TIMEOUT1),
        );
        let (procs, threads) = start_waiters(m, 3, &args);
        for _ in 0..6 {
            sleeping.acquire();
        }
        for _ in 0..6 {
            woken.acquire();
        }
        assert_eq!(woken.value(), 0);
        join_all(procs, threads);

        // Waiters without a timeout.
        let args = (cond.clone(), sleeping.clone(), woken.clone(), None);
        let (procs, threads) = start_waiters(m, 3, &args);
        for _ in 0..6 {
            sleeping.acquire();
        }
        drop(cond.lock().unwrap());
        std::thread::sleep(DELTA);
        assert_eq!(woken.value(), 0, "{m}: woken without a notification");

        let g = cond.lock().unwrap();
        cond.notify_all();
        drop(g);
        reaches(&format!("{m}: notify_all"), || woken.value(), 6);
        join_all(procs, threads);
    });
}

/// `test_notify_n`.
#[test]
fn condition_notify_n() {
    each_method(|m| {
        let cond = Condition::new().unwrap();
        let (sleeping, woken) = (Semaphore::new(0).unwrap(), Semaphore::new(0).unwrap());
        let args = (cond.clone(), sleeping.clone(), woken.clone(), None);
        let (procs, threads) = start_waiters(m, 3, &args);
        for _ in 0..6 {
            sleeping.acquire();
        }
        drop(cond.lock().unwrap());
        std::thread::sleep(DELTA);
        assert_eq!(woken.value(), 0, "{m}: woken without a notification");

        let g = cond.lock().unwrap();
        cond.notify(2);
        drop(g);
        reaches(&format!("{m}: notify(2)"), || woken.value(), 2);

        let g = cond.lock().unwrap();
        cond.notify(4);
        drop(g);
        reaches(&format!("{m}: notify(4)"), || woken.value(), 6);

        // Does nothing more.
        let g = cond.lock().unwrap();
        cond.notify(3);
        drop(g);
        assert_eq!(woken.value(), 6);
        join_all(procs, threads);
    });
}

/// `test_timeout` (condition).
#[test]
fn condition_wait_timeout_returns_false() {
    deadline(LIMIT, || {
        let cond = Condition::new().unwrap();
        let g = cond.lock().unwrap();
        let t = Instant::now();
        let (g, notified) = g.wait_timeout(TIMEOUT1);
        assert!(!notified);
        assert!(t.elapsed() >= TIMEOUT1, "returned early");
        drop(g);
    });
}

/// `_test_waitfor_f`: exits with 1 (a panic) unless the predicate held.
fn waitfor_f((cond, state): (Condition, RawValue<i32>)) {
    let g = cond.lock().unwrap();
    state.set(0);
    cond.notify_one();
    let g = g.wait_for(|| state.get() == 4);
    assert_eq!(state.get(), 4);
    drop(g);
}

/// `test_waitfor`.
#[test]
fn condition_wait_for() {
    each_method(|m| {
        let cond = Condition::new().unwrap();
        let state = RawValue::new(-1i32).unwrap();
        let p = daemon_builder(m)
            .spawn(waitfor_f, (cond.clone(), state.clone()))
            .unwrap();
        {
            let g = cond.lock().unwrap();
            let (_g, result) = g.wait_for_timeout(Duration::from_secs(30), || state.get() == 0);
            assert!(result, "{m}");
            assert_eq!(state.get(), 0);
        }
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(10));
            let _g = cond.lock().unwrap();
            state.set(state.get() + 1);
            cond.notify_one();
        }
        // A failed check in the child is a panic: exit code 1, as Python's
        // `sys.exit(1)`.
        p.join().unwrap();
    });
}

/// `_test_waitfor_timeout_f`: whether `wait_for` gave up with false, no
/// sooner than its timeout.
fn waitfor_timeout_f((cond, state, sem): (Condition, RawValue<i32>, Semaphore)) -> bool {
    sem.release();
    let g = cond.lock().unwrap();
    let expected = Duration::from_millis(100);
    let t = Instant::now();
    let (_g, result) = g.wait_for_timeout(expected, || state.get() == 4);
    !result && t.elapsed() >= expected
}

/// `test_waitfor_timeout`.
#[test]
fn condition_wait_for_timeout() {
    each_method(|m| {
        let cond = Condition::new().unwrap();
        let state = RawValue::new(0i32).unwrap();
        let sem = Semaphore::new(0).unwrap();
        let p = daemon_builder(m)
            .spawn(
                waitfor_timeout_f,
                (cond.clone(), state.clone(), sem.clone()),
            )
            .unwrap();
        assert!(sem.acquire_timeout(Duration::from_secs(30)));
        // Only 3 increments: state == 4 is never reached.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(10));
            let _g = cond.lock().unwrap();
            state.set(state.get() + 1);
            cond.notify_one();
        }
        assert!(p.join().unwrap(), "{m}");
    });
}

fn notify_under_lock(c: Condition) {
    let _g = c.lock().unwrap();
    c.notify_one();
}

/// `test_wait_result` (without its SIGINT part).
#[test]
fn condition_wait_result() {
    each_method(|m| {
        let c = Condition::new().unwrap();
        let g = c.lock().unwrap();
        let (g, notified) = g.wait_timeout(Duration::ZERO);
        assert!(!notified);
        let (g, notified) = g.wait_timeout(Duration::from_millis(100));
        assert!(!notified);
        let p = daemon_builder(m)
            .spawn(notify_under_lock, c.clone())
            .unwrap();
        let (g, notified) = g.wait_timeout(Duration::from_secs(60));
        assert!(notified, "{m}");
        drop(g);
        p.join().unwrap();
    });
}

// --------------------------------------------------------------- _TestEvent

fn set_later(event: Event) {
    std::thread::sleep(TIMEOUT2);
    event.set();
}

/// `test_event`.
#[test]
fn event() {
    each_method(|m| {
        let event = Event::new().unwrap();
        assert!(!event.is_set());
        assert!(!event.wait_timeout(Duration::ZERO));
        let t = Instant::now();
        assert!(!event.wait_timeout(TIMEOUT1));
        assert!(t.elapsed() >= TIMEOUT1, "returned early");

        event.set();
        assert!(event.is_set());
        event.wait();
        assert!(event.wait_timeout(TIMEOUT1));

        event.clear();
        assert!(!event.is_set());
        let p = daemon_builder(m).spawn(set_later, event.clone()).unwrap();
        event.wait();
        assert!(event.is_set());
        p.join().unwrap();
    });
}

// ------------------------------------------------------------- _TestBarrier

const N: usize = 5;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// `setUp`'s barrier.
fn barrier() -> Barrier {
    Barrier::builder(N)
        .timeout(DEFAULT_TIMEOUT)
        .build()
        .unwrap()
}

/// A `_DummyList`: `append` adds one, `len` reads.
fn dummy_list() -> Value<u32> {
    Value::new(0).unwrap()
}

fn append(list: &Value<u32>) {
    *list.get_lock().unwrap() += 1;
}

/// `run_threads`: `f(args)` in `N - 1` processes and here; a panic in a
/// process (a failed `assert`) fails the test.
fn run_parties<A: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + 'static>(
    m: StartMethod,
    f: fn(A),
    args: A,
) {
    let kids: Vec<_> = (0..N - 1)
        .map(|_| daemon_builder(m).spawn(f, args.clone()).unwrap())
        .collect();
    f(args);
    for k in kids {
        k.join().unwrap();
    }
}

/// `multipass`.
fn multipass((barrier, r0, r1, n): (Barrier, Value<u32>, Value<u32>, u32)) {
    let m = barrier.parties() as u32;
    assert_eq!(m, N as u32);
    for i in 0..n {
        append(&r0);
        assert_eq!(r1.get(), i * m);
        barrier.wait().unwrap();
        append(&r1);
        assert_eq!(r0.get(), (i + 1) * m);
        barrier.wait().unwrap();
    }
    assert_eq!(barrier.n_waiting(), 0);
    assert!(!barrier.is_broken());
}

/// `test_barrier` and `test_barrier_10`.
#[test]
fn barrier_in_lockstep() {
    each_method(|m| {
        for passes in [1, 10] {
            let b = barrier();
            run_parties(
                m,
                multipass,
                (b.clone(), dummy_list(), dummy_list(), passes),
            );
            b.abort();
        }
    });
}

fn wait_return_f((barrier, queue): (Barrier, multiproc::Queue<usize>)) {
    queue.put(barrier.wait().unwrap()).unwrap();
}

/// `test_wait_return`.
#[test]
fn barrier_wait_return() {
    each_method(|m| {
        let b = barrier();
        let queue = multiproc::Queue::new().unwrap();
        run_parties(m, wait_return_f, (b.clone(), queue.clone()));
        let results: Vec<usize> = (0..N).map(|_| queue.get().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|&&i| i == 0).count(),
            1,
            "{m}: {results:?}"
        );
        b.abort();
    });
}

/// `_test_action_f`: every handle is given the action (`AppendTrue`), as
/// an action does not travel between processes (see the README).
fn action_f((barrier, results): (Barrier, Value<u32>)) {
    let r = results.clone();
    let barrier = barrier.with_action(move || append(&r));
    barrier.wait().unwrap();
    assert_eq!(results.get(), 1);
}

/// `test_action`.
#[test]
fn barrier_action() {
    each_method(|m| {
        let results = dummy_list();
        let r = results.clone();
        let b = Barrier::builder(N)
            .action(move || append(&r))
            .build()
            .unwrap();
        run_parties(m, action_f, (b, results.clone()));
        assert_eq!(results.get(), 1, "{m}");
    });
}

/// `_test_abort_f`.
fn abort_f((barrier, r1, r2): (Barrier, Value<u32>, Value<u32>)) {
    match barrier.wait() {
        Ok(i) if i == N / 2 => barrier.abort(),
        Ok(_) => match barrier.wait() {
            Ok(_) => append(&r1),
            Err(BarrierError::Broken) => append(&r2),
            Err(e) => panic!("second wait: {e}"),
        },
        Err(BarrierError::Broken) => append(&r2),
        Err(e) => panic!("first wait: {e}"),
    }
}

/// `test_abort`.
#[test]
fn barrier_abort() {
    each_method(|m| {
        let b = barrier();
        let (r1, r2) = (dummy_list(), dummy_list());
        run_parties(m, abort_f, (b.clone(), r1.clone(), r2.clone()));
        assert_eq!(r1.get(), 0, "{m}");
        assert_eq!(r2.get(), N as u32 - 1, "{m}");
        assert!(b.is_broken());
    });
}

/// `_test_reset_f`.
fn reset_f((barrier, r1, r2, r3): (Barrier, Value<u32>, Value<u32>, Value<u32>)) {
    let i = barrier.wait().unwrap();
    if i == N / 2 {
        while barrier.n_waiting() < N - 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        barrier.reset();
    } else {
        match barrier.wait() {
            Ok(_) => append(&r1),
            Err(BarrierError::Broken) => append(&r2),
            Err(e) => panic!("second wait: {e}"),
        }
    }
    barrier.wait().unwrap();
    append(&r3);
}

/// `test_reset`.
#[test]
fn barrier_reset() {
    each_method(|m| {
        let b = barrier();
        let (r1, r2, r3) = (dummy_list(), dummy_list(), dummy_list());
        run_parties(m, reset_f, (b.clone(), r1.clone(), r2.clone(), r3.clone()));
        assert_eq!(r1.get(), 0, "{m}");
        assert_eq!(r2.get(), N as u32 - 1, "{m}");
        assert_eq!(r3.get(), N as u32, "{m}");
        b.abort();
    });
}

type AbortReset = (Barrier, Barrier, Value<u32>, Value<u32>, Value<u32>);

/// `_test_abort_and_reset_f`.
fn abort_and_reset_f((barrier, barrier2, r1, r2, r3): AbortReset) {
    match barrier.wait() {
        Ok(i) if i == N / 2 => barrier.abort(),
        Ok(_) => match barrier.wait() {
            Ok(_) => append(&r1),
            Err(BarrierError::Broken) => append(&r2),
            Err(e) => panic!("second wait: {e}"),
        },
        Err(BarrierError::Broken) => append(&r2),
        Err(e) => panic!("first wait: {e}"),
    }
    if barrier2.wait().unwrap() == N / 2 {
        barrier.reset();
    }
    barrier2.wait().unwrap();
    barrier.wait().unwrap();
    append(&r3);
}

/// `test_abort_and_reset`.
#[test]
fn barrier_abort_and_reset() {
    each_method(|m| {
        let b = barrier();
        let b2 = Barrier::new(N).unwrap();
        let (r1, r2, r3) = (dummy_list(), dummy_list(), dummy_list());
        run_parties(
            m,
            abort_and_reset_f,
            (b.clone(), b2, r1.clone(), r2.clone(), r3.clone()),
        );
        assert_eq!(r1.get(), 0, "{m}");
        assert_eq!(r2.get(), N as u32 - 1, "{m}");
        assert_eq!(r3.get(), N as u32, "{m}");
        b.abort();
    });
}

/// Python's `BrokenBarrierError`: `Broken`, or `TimedOut` for the party
/// whose own timeout broke the barrier.
fn broken(r: Result<usize, BarrierError>) -> bool {
    matches!(r, Err(BarrierError::Broken | BarrierError::TimedOut))
}

/// `_test_timeout_f`.
fn timeout_f((barrier, results): (Barrier, Value<u32>)) {
    let i = barrier.wait().unwrap();
    if i == N / 2 {
        // One party is late!
        std::thread::sleep(Duration::from_secs(1));
    }
    if broken(barrier.wait_timeout(Duration::from_millis(500))) {
        append(&results);
    }
}

/// `test_timeout` (barrier), under the default start method only: it
/// sleeps for a second.
#[test]
fn barrier_timeout() {
    deadline(LIMIT, || {
        let b = barrier();
        let results = dummy_list();
        run_parties(
            multiproc::get_start_method(),
            timeout_f,
            (b.clone(), results.clone()),
        );
        assert_eq!(results.get(), b.parties() as u32);
        b.abort();
    });
}

/// `_test_default_timeout_f`.
fn default_timeout_f((barrier, results): (Barrier, Value<u32>)) {
    let i = barrier.wait_timeout(DEFAULT_TIMEOUT).unwrap();
    if i == N / 2 {
        // One party is later than the default timeout.
        std::thread::sleep(Duration::from_secs(1));
    }
    if broken(barrier.wait()) {
        append(&results);
    }
}

/// `test_default_timeout`, under the default start method only.
#[test]
fn barrier_default_timeout() {
    deadline(LIMIT, || {
        let b = Barrier::builder(N)
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let results = dummy_list();
        run_parties(
            multiproc::get_start_method(),
            default_timeout_f,
            (b.clone(), results.clone()),
        );
        assert_eq!(results.get(), b.parties() as u32);
    });
}

/// `test_single_thread`.
#[test]
fn barrier_single_thread() {
    deadline(LIMIT, || {
        let b = Barrier::new(1).unwrap();
        b.wait().unwrap();
        b.wait().unwrap();
    });
}

type Thousand = (Barrier, u32, multiproc::SharedSender<u32>, Lock);

/// `_test_thousand_f`.
fn thousand_f((barrier, passes, conn, lock): Thousand) {
    for i in 0..passes {
        barrier.wait().unwrap();
        let _g = lock.lock().unwrap();
        conn.send(&i).unwrap();
    }
}

/// `test_thousand`: `Pipe(False)`'s write end shared by every process is
/// a `SharedSender` here (a `pipe()` end is not shared: see the README).
/// A thousand rounds under every start method. (Before the wake-up of all
/// sleepers woke them all, a round of five parties on two cores waited
/// out a 50 ms re-check: this took minutes.)
#[test]
fn barrier_thousand() {
    each_method(barrier_thousand_with);
}

fn barrier_thousand_with(m: StartMethod) {
    let passes = 1000;
    let b = barrier();
    let lock = Lock::new().unwrap();
    let (conn, child_conn) = pipe_shared::<u32>().unwrap();
    let kids: Vec<_> = (0..N)
        .map(|_| {
            daemon_builder(m)
                .spawn(
                    thousand_f,
                    (b.clone(), passes, child_conn.clone(), lock.clone()),
                )
                .unwrap()
        })
        .collect();
    drop(child_conn);
    for i in 0..passes {
        for _ in 0..N {
            assert_eq!(conn.recv().unwrap(), i, "{m}");
        }
    }
    for k in kids {
        k.join().unwrap();
    }
    b.abort();
}

// --------------------------------------------------------------- _TestValue

type Values = (Value<i32>, Value<f64>, Value<i16>, Value<i64>, Value<u8>);
type RawValues = (
    RawValue<i32>,
    RawValue<f64>,
    RawValue<i16>,
    RawValue<i64>,
    RawValue<u8>,
);

/// `_TestValue._test`: every value to its second value.
fn set_values((i, d, h, q, c): Values) {
    i.set(24234);
    d.set(-4.25);
    h.set(234);
    q.set(1 << 34);
    c.set(b'y');
}

fn set_raw_values((i, d, h, q, c): RawValues) {
    i.set(24234);
    d.set(-4.25);
    h.set(234);
    q.set(1 << 34);
    c.set(b'y');
}

/// `test_value` (with Python's `codes_values`: `i`, `d`, `h`, `q`, `c`)
/// and `test_rawvalue`: the same test over `$kind`, whose five values
/// `$set` changes in a child.
macro_rules! values_test {
    ($(#[$doc:meta])* $name:ident, $kind:ident, $tuple:ty, $set:ident) => {
        $(#[$doc])*
        #[test]
        fn $name() {
            each_method(|m| {
                let v: $tuple = (
                    $kind::new(4343).unwrap(),
                    $kind::new(3.625).unwrap(),
                    $kind::new(-232).unwrap(),
                    $kind::new(1 << 33).unwrap(),
                    $kind::new(b'x').unwrap(),
                );
                assert_eq!(
                    (v.0.get(), v.1.get(), v.2.get(), v.3.get(), v.4.get()),
                    (4343, 3.625, -232, 1 << 33, b'x')
                );
                daemon_builder(m)
                    .spawn($set, v.clone())
                    .unwrap()
                    .join()
                    .unwrap();
                assert_eq!(
                    (v.0.get(), v.1.get(), v.2.get(), v.3.get(), v.4.get()),
                    (24234, -4.25, 234, 1 << 34, b'y'),
                    "{m}"
                );
            });
        }
    };
}

values_test!(
    /// `test_value`.
    value,
    Value,
    Values,
    set_values
);
values_test!(
    /// `test_rawvalue`.
    raw_value,
    RawValue,
    RawValues,
    set_raw_values
);

/// `test_getobj_getlock`, the part that has an equivalent: a `Value` has a
/// lock whose guard is the object (`get_obj()`); a `RawValue` has neither
/// (no method to call: checked by the compiler).
#[test]
fn value_get_lock() {
    let val = Value::new(5i32).unwrap();
    let mut g = val.get_lock().unwrap();
    assert_eq!(*g, 5);
    *g = 6;
    drop(g);
    assert_eq!(val.get(), 6);
}

// --------------------------------------------------------------- _TestArray

const SEQ: [i32; 10] = [680, 626, 934, 821, 150, 233, 548, 982, 714, 831];

/// `_TestArray.f`, on a slice.
fn prefix_sums(seq: &mut [i32]) {
    for i in 1..seq.len() {
        seq[i] += seq[i - 1];
    }
}

/// `_TestArray.f` on a synchronized array: one element per lock, as
/// Python's `seq[i] += seq[i-1]` on a `SynchronizedArray` takes it.
fn array_f(arr: Array<i32>) {
    for i in 1..arr.len() {
        let mut g = arr.get_lock().unwrap();
        let prev = g.get(i - 1).unwrap();
        let cur = g.get(i).unwrap();
        assert!(g.set(i, cur + prev));
    }
}

fn raw_array_f(arr: RawArray<i32>) {
    for i in 1..arr.len() {
        let v = arr.get(i).unwrap() + arr.get(i - 1).unwrap();
        assert!(arr.set(i, v));
    }
}

/// `test_array`.
#[test]
fn array() {
    each_method(|m| {
        let mut seq = SEQ.to_vec();
        let arr = Array::from_slice(&seq).unwrap();
        assert_eq!(arr.len(), seq.len());
        assert_eq!(arr.get_lock().unwrap().get(3), Some(seq[3]));
        assert_eq!(arr.to_vec()[2..7], seq[2..7]);

        arr.get_lock().unwrap()[4..8].copy_from_slice(&[1, 2, 3, 4]);
        seq[4..8].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(arr.to_vec(), seq);

        prefix_sums(&mut seq);
        daemon_builder(m)
            .spawn(array_f, arr.clone())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(arr.to_vec(), seq, "{m}");
    });
}

/// `test_rawarray`.
#[test]
fn raw_array() {
    each_method(|m| {
        let mut seq = SEQ.to_vec();
        let arr = RawArray::<i32>::new(seq.len()).unwrap();
        for (i, &x) in seq.iter().enumerate() {
            assert!(arr.set(i, x));
        }
        assert_eq!(arr.len(), seq.len());
        assert_eq!(arr.get(3), Some(seq[3]));
        assert_eq!(
            (2..7).map(|i| arr.get(i).unwrap()).collect::<Vec<_>>(),
            seq[2..7]
        );
        for (i, x) in (4..8).zip([1, 2, 3, 4]) {
            assert!(arr.set(i, x));
            seq[i] = x;
        }
        assert_eq!(
            (0..10).map(|i| arr.get(i).unwrap()).collect::<Vec<_>>(),
            seq
        );
        // Out of range: Python's IndexError.
        assert_eq!(arr.get(10), None);
        assert!(!arr.set(10, 0));

        prefix_sums(&mut seq);
        daemon_builder(m)
            .spawn(raw_array_f, arr.clone())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            (0..10).map(|i| arr.get(i).unwrap()).collect::<Vec<_>>(),
            seq,
            "{m}"
        );
    });
}

/// `test_array_from_size`: a new array is zeroed, every time.
#[test]
fn array_from_size() {
    for _ in 0..3 {
        let arr = Array::<i32>::new(10).unwrap();
        assert_eq!(arr.len(), 10);
        assert_eq!(arr.to_vec(), [0; 10]);
        for (i, x) in arr.get_lock().unwrap().iter_mut().enumerate() {
            *x = i as i32;
        }
        assert_eq!(arr.to_vec(), (0..10).collect::<Vec<_>>());
        let mut g = arr.get_lock().unwrap();
        // Out of range: Python's IndexError.
        assert_eq!(g.get(10), None);
        assert!(!g.set(10, 0));
    }
}
