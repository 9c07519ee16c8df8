//! Errors a user carries with `?`: every failure of a public operation
//! converts into `anyhow::Error` and `Box<dyn Error>`, as programs write
//! it, and the errors that hold a value give it back with `into_inner`.

mod common;

use std::error::Error;
use std::time::Duration;

use common::{LIMIT, deadline};
use multiproc::{
    Array, Barrier, Condition, GetTimeoutError, Lock, LockTimeoutError, Manager, OwnerDied,
    Process, Queue, RLock, TryGetError, TryLockError, TryPutError, Value,
};

/// What `anyhow` needs of an error.
fn anyhow_ready<E: Error + Send + Sync + 'static>() {}

#[test]
fn every_error_family_converts_into_anyhow() {
    anyhow_ready::<OwnerDied>();
    anyhow_ready::<TryLockError>();
    anyhow_ready::<LockTimeoutError>();
    anyhow_ready::<TryLockError<multiproc::ProxyError>>();
    anyhow_ready::<LockTimeoutError<multiproc::ProxyError>>();
    anyhow_ready::<multiproc::PutError<String>>();
    anyhow_ready::<multiproc::PutTimeoutError<String>>();
    anyhow_ready::<TryPutError<String>>();
    anyhow_ready::<multiproc::PutError<String, multiproc::ProxyError>>();
    anyhow_ready::<GetTimeoutError>();
    anyhow_ready::<TryGetError>();
    anyhow_ready::<GetTimeoutError<multiproc::ProxyError>>();
    anyhow_ready::<multiproc::GetError>();
    anyhow_ready::<multiproc::JoinError>();
    anyhow_ready::<multiproc::StartError>();
    anyhow_ready::<multiproc::TaskError>();
    anyhow_ready::<multiproc::PoolError>();
    anyhow_ready::<multiproc::BarrierError>();
    anyhow_ready::<multiproc::ProxyError>();
    anyhow_ready::<multiproc::StartManagerError>();
    anyhow_ready::<multiproc::SendError>();
    anyhow_ready::<multiproc::RecvError>();
    anyhow_ready::<multiproc::ConnectError>();
}

/// The README's lock, as a user writes it in an `anyhow` program.
fn locked_sum(lock: &Lock, value: &Value<u64>, add: u64) -> anyhow::Result<u64> {
    let _guard = lock.lock()?;
    let mut v = value.get_lock()?;
    *v += add;
    Ok(*v)
}

/// The same, in a `Box<dyn Error>` program, with every waiting form.
fn every_form(lock: &RLock, array: &Array<u32>, cond: &Condition) -> Result<(), Box<dyn Error>> {
    let outer = lock.lock()?;
    let _inner = lock.try_lock()?;
    let _again = lock.lock_timeout(Duration::from_millis(10))?;
    drop(outer);
    let mut a = array.get_lock()?;
    a[0] = 7;
    drop(a);
    let g = cond.lock()?;
    let (g, _) = g.wait_for_timeout(Duration::from_millis(1), || true);
    drop(g);
    let q = Queue::<String>::new()?;
    q.put("x".to_string())?;
    q.try_put("y".to_string())?;
    q.put_timeout("z".to_string(), Duration::from_millis(10))?;
    let _: String = q.get()?;
    let _: String = q.try_get()?;
    let _: String = q.get_timeout(Duration::from_millis(10))?;
    Ok(())
}

#[test]
fn lock_and_queue_errors_travel_with_the_question_mark() {
    deadline(LIMIT, || {
        let (lock, value) = (Lock::new().unwrap(), Value::new(1u64).unwrap());
        assert_eq!(locked_sum(&lock, &value, 2).unwrap(), 3);
        let rlock = RLock::new().unwrap();
        let array = Array::<u32>::new(2).unwrap();
        let cond = Condition::new().unwrap();
        every_form(&rlock, &array, &cond).unwrap();
        assert_eq!(array.to_vec(), [7, 0]);
        // A failure carried by `?` keeps its message and its type.
        let q = Queue::<u8>::new().unwrap();
        let err: anyhow::Error = (|| -> anyhow::Result<u8> { Ok(q.try_get()?) })().unwrap_err();
        assert!(matches!(
            err.downcast_ref::<TryGetError>(),
            Some(TryGetError::Empty)
        ));
    });
}

/// Holds the lock, then exits without releasing it.
fn hold_and_exit(lock: Lock) {
    std::mem::forget(lock.lock().unwrap());
}

fn try_to_use(lock: &Lock) -> anyhow::Result<()> {
    let _guard = lock.lock()?;
    Ok(())
}

#[test]
fn a_dead_holder_fails_the_question_mark_until_someone_repairs() {
    deadline(LIMIT, || {
        let lock = Lock::new().unwrap();
        let holder = Process::spawn(hold_and_exit, lock.clone()).unwrap();
        holder.join().unwrap();
        let err = try_to_use(&lock).unwrap_err();
        assert_eq!(err.downcast_ref::<OwnerDied>(), Some(&OwnerDied));
        assert!(err.to_string().contains("died holding it"), "{err}");
        // Still told, and nothing held: the program can go on and repair.
        assert!(try_to_use(&lock).is_err());
        assert!(!lock.is_locked());
        let guard = lock.lock_recover();
        assert!(guard.owner_died());
        guard.make_consistent();
        drop(guard);
        try_to_use(&lock).unwrap();
    });
}

#[test]
fn manager_proxies_fail_like_the_local_objects() {
    deadline(LIMIT, || {
        let m = Manager::start().unwrap();
        let q = m.bounded_queue::<String>(1).unwrap();
        assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
        assert!(matches!(
            q.get_timeout(Duration::from_millis(10)),
            Err(GetTimeoutError::Timeout)
        ));
        q.put("a".into()).unwrap();
        match q.try_put("b".into()) {
            Err(e) => assert_eq!(e.into_inner(), "b"),
            Ok(()) => panic!("a full queue took a value"),
        }
        let lock = m.lock().unwrap();
        let held = lock.lock().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
                assert!(matches!(
                    lock.lock_timeout(Duration::from_millis(10)),
                    Err(LockTimeoutError::Timeout)
                ));
            });
        });
        drop(held);
        let local = Barrier::new(1).unwrap();
        let remote = m.barrier(1).unwrap();
        let (a, b): (usize, usize) = (local.wait().unwrap(), remote.wait().unwrap());
        assert_eq!((a, b), (0, 0));
        assert_eq!(local.parties(), remote.parties().unwrap());
        m.shutdown().unwrap();
    });
}

#[test]
fn a_handle_that_timed_out_comes_back_to_wait_again() {
    deadline(LIMIT, || {
        let pool = multiproc::Pool::new(1).unwrap();
        let h = pool.submit(slow_square, 3);
        let h = match h.get_timeout(Duration::from_millis(1)) {
            Err(e) => e.into_inner().expect("a timeout gives the handle back"),
            Ok(v) => panic!("too fast: {v}"),
        };
        assert_eq!(h.get().unwrap(), 9);
    });
}

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_child_still_running_comes_back_to_join_again() {
    deadline(LIMIT, || {
        let child = Process::spawn(nap, 300).unwrap();
        let child = match child.try_join() {
            Err(e) => e.into_inner().expect("a running child is given back"),
            Ok(v) => panic!("too fast: {v}"),
        };
        let child = match child.join_timeout(Duration::from_millis(1)) {
            Err(e) => e.into_inner().expect("a timeout gives the child back"),
            Ok(v) => panic!("too fast: {v}"),
        };
        assert_eq!(child.join().unwrap(), 300);
    });
}
