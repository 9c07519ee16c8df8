//! Ports of CPython's `_TestProcess` (`Lib/test/_test_multiprocessing.py`)
//! to the Rust API, under every start method: what Python asserts, adapted
//! to Rust types (`p.exitcode` is `exit_status().python_exitcode()`, a
//! `join(timeout)` that times out hands the handle back, `p.sentinel` is
//! the handle itself given to `wait`). Python's checks that need an
//! unstarted `Process` object, or `close()`, have no counterpart: a
//! `Process` exists only once started, and dropping it is its `close`.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, assert_gone, deadline, each_method};
use multiproc::{
    Event, ExitStatus, JoinError, JoinTimeoutError, Process, Queue, SharedSender, Signal,
    StartMethod, active_children, current_process, parent_process, pipe_shared, wait,
};

fn builder(method: StartMethod) -> multiproc::ProcessBuilder {
    Process::builder().start_method(method)
}

fn listed(pid: i32) -> bool {
    active_children().iter().any(|c| c.pid == pid)
}

/// Waits (at most 20 s) until `p` has ended, without joining it.
fn wait_ended<R>(p: &Process<R>) {
    let got = wait(&[p], Some(Duration::from_secs(20))).unwrap();
    assert_eq!(got, [0], "the child did not end");
}

/// `test_current`.
#[test]
fn the_current_process() {
    let current = current_process();
    assert_eq!(current.name, "MainProcess");
    assert_eq!(current.pid, std::process::id() as i32);
    assert!(current.ident.is_empty());
    // test_parent_process_attributes: `parent_process()` is None in the
    // main process.
    assert!(parent_process().is_none());
}

/// What a child reports: Python's `_test(q, *args, **kwds)`.
fn report((q, args): (Queue<String>, (u32, u32))) {
    let current = current_process();
    q.put(format!("{args:?}")).unwrap();
    q.put(current.name).unwrap();
    q.put(current.pid.to_string()).unwrap();
}

/// `test_process`: name, daemon, liveness, `active_children`, exitcode 0.
#[test]
fn a_process_from_start_to_end() {
    each_method(|m| {
        let q = Queue::bounded(1).unwrap();
        let p = builder(m)
            .name("SomeProcess")
            .daemon(true)
            .spawn(report, (q.clone(), (1, 2)))
            .unwrap();
        assert!(p.is_daemon());
        assert_eq!(p.name(), "SomeProcess");
        assert_eq!(p.exit_status(), None);
        assert!(p.is_alive());
        assert!(listed(p.pid()), "{m}");
        assert_eq!(q.get().unwrap(), "(1, 2)");
        assert_eq!(q.get().unwrap(), "SomeProcess");
        assert_eq!(q.get().unwrap(), p.pid().to_string());
        wait_ended(&p);
        assert_eq!(p.exit_status().map(ExitStatus::python_exitcode), Some(0));
        assert!(!p.is_alive());
        assert!(!listed(p.pid()), "{m}");
        let pid = p.pid();
        p.join().unwrap();
        assert_gone(pid);
    });
}

fn send_parent(conn: SharedSender<(i32, String)>) {
    let parent = parent_process().expect("a child has a parent");
    conn.send(&(parent.pid, parent.name)).unwrap();
}

/// `test_parent_process_attributes`.
#[test]
fn a_child_knows_its_parent() {
    each_method(|m| {
        let (rconn, wconn) = pipe_shared::<(i32, String)>().unwrap();
        let p = builder(m).spawn(send_parent, wconn).unwrap();
        p.join().unwrap();
        let (pid, name) = rconn.recv().unwrap();
        assert_eq!(pid, std::process::id() as i32, "{m}");
        assert_eq!(name, current_process().name, "{m}");
    });
}

fn report_parent_status(conn: SharedSender<String>) {
    let parent = parent_process().unwrap();
    let alive = if parent.is_alive() {
        "alive"
    } else {
        "not alive"
    };
    conn.send(&alive.to_string()).unwrap();
}

fn create_grandchild((conn, method): (SharedSender<String>, StartMethod)) {
    let p = builder(method).spawn(report_parent_status, conn).unwrap();
    p.join().unwrap();
    std::thread::sleep(Duration::from_secs(300));
}

/// `test_parent_process`, first half: a grandchild sees its parent alive.
/// (The second half, a grandchild that outlives its killed parent, is a
/// documented difference: no child outlives its parent.)
#[test]
fn a_grandchild_sees_its_parent_alive() {
    each_method(|m| {
        let (rconn, wconn) = pipe_shared::<String>().unwrap();
        let p = builder(m).spawn(create_grandchild, (wconn, m)).unwrap();
        assert_eq!(
            rconn.recv_timeout(Duration::from_secs(20)).unwrap(),
            "alive",
            "{m}"
        );
        p.terminate().unwrap();
        match p.join() {
            Err(JoinError::Signaled {
                signal: Signal::TERM,
                ..
            }) => {}
            other => panic!("{m}: {other:?}"),
        }
    });
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Python's `_kill_process(meth)`: returns the exitcode.
fn kill_process(m: StartMethod, meth: fn(&Process<u64>)) -> i32 {
    let p = builder(m).daemon(true).spawn(sleep_ms, 100_000).unwrap();
    assert!(p.is_alive());
    assert!(listed(p.pid()));
    assert_eq!(p.exit_status(), None);

    let t = Instant::now();
    let p = match p.join_timeout(Duration::ZERO) {
        Err(JoinTimeoutError::Timeout(p)) => p,
        other => panic!("{m}: {other:?}"),
    };
    assert!(t.elapsed() < Duration::from_secs(5), "it waited");
    assert!(p.is_alive());

    meth(&p);
    wait_ended(&p);
    assert!(!p.is_alive());
    assert!(!listed(p.pid()));
    let code = p.exit_status().unwrap().python_exitcode();
    let pid = p.pid();
    assert!(p.join().is_err());
    assert_gone(pid);
    code
}

/// `test_terminate` and `test_kill`.
#[test]
fn terminate_and_kill_exitcodes() {
    each_method(|m| {
        let code = kill_process(m, |p| p.terminate().unwrap());
        assert_eq!(code, -libc::SIGTERM, "{m}");
        let code = kill_process(m, |p| p.kill().unwrap());
        assert_eq!(code, -libc::SIGKILL, "{m}");
    });
}

fn raise_exception(_: ()) {
    common::silence_stderr();
    panic!("an exception in the child")
}

fn sys_exit(code: i32) {
    std::process::exit(code)
}

/// Exit codes of `_TestSubclassingProcess.test_sys_exit` and of a target
/// that raises: Python's `exitcode` is 1 for an uncaught exception and
/// `n` for `sys.exit(n)`.
#[test]
fn exitcodes_of_exit_and_failure() {
    each_method(|m| {
        for (code, expected) in [(0, 0), (1, 1), (8, 8)] {
            let p = builder(m).daemon(true).spawn(sys_exit, code).unwrap();
            wait_ended(&p);
            assert_eq!(
                p.exit_status().map(ExitStatus::python_exitcode),
                Some(expected),
                "{m}"
            );
            match p.join() {
                Err(JoinError::Exited { code: c }) => assert_eq!(c, expected),
                other => panic!("{m}: {other:?}"),
            }
        }
        let p = builder(m).spawn(raise_exception, ()).unwrap();
        wait_ended(&p);
        assert_eq!(p.exit_status(), Some(ExitStatus::Exited(1)), "{m}");
        assert!(matches!(p.join(), Err(JoinError::Panicked(_))));
    });
}

/// `test_active_children`.
#[test]
fn active_children_lists_running_children_only() {
    each_method(|m| {
        let p = builder(m).daemon(true).spawn(sleep_ms, 200).unwrap();
        assert!(listed(p.pid()));
        let pid = p.pid();
        assert_eq!(p.join().unwrap(), 200);
        assert!(!listed(pid));
    });
}

fn recursion((wconn, id, method): (SharedSender<Vec<u32>>, Vec<u32>, StartMethod)) {
    wconn.send(&id).unwrap();
    if id.len() < 2 {
        for i in 0..2 {
            let mut next = id.clone();
            next.push(i);
            builder(method)
                .spawn(recursion, (wconn.clone(), next, method))
                .unwrap()
                .join()
                .unwrap();
        }
    }
}

/// `test_recursion`: children that start children, in order.
#[test]
fn children_start_children() {
    each_method(|m| {
        let (rconn, wconn) = pipe_shared::<Vec<u32>>().unwrap();
        // Python's test keeps its `wconn`: the reader does not see the end.
        recursion((wconn.clone(), vec![], m));
        let mut result = Vec::new();
        while rconn.poll(Some(Duration::from_millis(100))).unwrap() {
            result.push(rconn.recv().unwrap());
        }
        let expected: Vec<Vec<u32>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![0, 1],
            vec![1],
            vec![1, 0],
            vec![1, 1],
        ];
        assert_eq!(result, expected, "{m}");
        drop(wconn);
    });
}

fn wait_event(e: Event) -> bool {
    e.wait_timeout(Duration::from_secs(10))
}

/// `test_sentinel`: the process is waitable, and ready once it ended.
#[test]
fn a_process_is_a_sentinel() {
    each_method(|m| {
        let event = Event::new().unwrap();
        let p = builder(m).spawn(wait_event, event.clone()).unwrap();
        assert!(wait(&[&p], Some(Duration::ZERO)).unwrap().is_empty());
        event.set();
        assert_eq!(wait(&[&p], Some(Duration::from_secs(10))).unwrap(), [0]);
        assert!(p.join().unwrap());
    });
}

fn exit_after_get(q: Queue<()>) {
    q.get().unwrap();
    std::process::exit(0)
}

/// `test_close`, what of it applies: a child that waits is alive; once
/// it exits, its status is 0.
#[test]
fn alive_until_it_exits() {
    each_method(|m| {
        let q = Queue::new().unwrap();
        let p = builder(m)
            .daemon(true)
            .spawn(exit_after_get, q.clone())
            .unwrap();
        assert!(p.is_alive());
        q.put(()).unwrap();
        wait_ended(&p);
        assert!(!p.is_alive());
        assert_eq!(p.exit_status(), Some(ExitStatus::Exited(0)));
        assert!(matches!(p.join(), Err(JoinError::Exited { code: 0 })));
    });
}

/// `test_many_processes`: overwhelm the start path, then terminate
/// freshly started children: every one ends by SIGTERM.
#[test]
fn many_processes() {
    each_method(|m| {
        let n = if m == StartMethod::Spawn { 5 } else { 40 };
        let procs: Vec<_> = (0..n)
            .map(|_| builder(m).spawn(sleep_ms, 10).unwrap())
            .collect();
        for p in procs {
            assert_eq!(p.join().unwrap(), 10, "{m}");
        }
        let procs: Vec<_> = (0..n)
            .map(|_| builder(m).spawn(sleep_ms, 100_000).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(1));
        for p in &procs {
            p.terminate().unwrap();
        }
        for p in procs {
            match p.join() {
                Err(JoinError::Signaled { signal, .. }) => {
                    assert_eq!(signal, Signal::TERM, "{m}")
                }
                other => panic!("{m}: {other:?}"),
            }
        }
    });
}

fn fd_count(_: ()) -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn fd_count_then_wait((evt, q): (Event, Queue<usize>)) {
    q.put(fd_count(())).unwrap();
    evt.wait();
}

/// `test_child_fd_inflation`: the number of descriptors in a child does
/// not grow with the number of running children (fork is excluded, as
/// in Python).
#[test]
fn child_fd_counts_do_not_inflate() {
    each_method(|m| {
        if m == StartMethod::Fork {
            return;
        }
        let (evt, q) = (Event::new().unwrap(), Queue::new().unwrap());
        let procs: Vec<_> = (0..5)
            .map(|_| {
                builder(m)
                    .spawn(fd_count_then_wait, (evt.clone(), q.clone()))
                    .unwrap()
            })
            .collect();
        let counts: Vec<usize> = (0..5).map(|_| q.get().unwrap()).collect();
        evt.set();
        for p in procs {
            p.join().unwrap();
        }
        assert!(counts.iter().all(|&c| c == counts[0]), "{m}: {counts:?}");
    });
}

fn sleep_and_set_event((evt, ms): (Event, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    evt.set();
}

fn ppid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

/// `test_forkserver_sigint` and `test_forkserver_sigkill` (bpo-31308):
/// once the forkserver has died, new processes still start. (The child
/// the dead server had started dies with it: documented in
/// `docs/start-methods.md`, where Python's lives on.)
#[test]
fn the_forkserver_is_restarted_after_it_dies() {
    deadline(LIMIT, || {
        for signum in [libc::SIGINT, libc::SIGKILL] {
            let evt = Event::new().unwrap();
            let proc1 = builder(StartMethod::ForkServer)
                .spawn(sleep_and_set_event, (evt.clone(), 500))
                .unwrap();
            let server = ppid(proc1.pid());
            assert_ne!(server, std::process::id() as i32);
            assert!(common::send_signal(server, signum));
            // A forkserver may ignore SIGINT (a Ctrl-C meant for the
            // program's group); SIGKILL it cannot.
            let died = common::wait_dead(server, Duration::from_secs(2));
            assert!(died || signum == libc::SIGINT);
            let evt2 = Event::new().unwrap();
            let proc2 = builder(StartMethod::ForkServer)
                .spawn(sleep_and_set_event, (evt2.clone(), 0))
                .unwrap();
            proc2.join().unwrap();
            assert!(evt2.is_set());
            let _ = proc1.join();
        }
    });
}

fn start_threads((evt, join): (Event, bool)) {
    // Long enough, when not joined, that only a child that waited for it
    // could see it set, however loaded the machine.
    let ms = if join { 100 } else { 5_000 };
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(ms));
        evt.set();
    });
    if join {
        t.join().unwrap();
    }
}

/// `test_wait_for_threads`: Python's child waits for its non-daemon
/// threads before it exits; ours ends when its function returns, its
/// threads with it (the README's "A child ends when its function
/// returns"), unless the function joins them.
#[test]
fn a_child_ends_with_its_function_and_its_threads_with_it() {
    each_method(|m| {
        for join in [false, true] {
            let evt = Event::new().unwrap();
            let p = builder(m)
                .spawn(start_threads, (evt.clone(), join))
                .unwrap();
            p.join().unwrap();
            assert_eq!(evt.is_set(), join, "{m}");
        }
    });
}

fn start_grandchild(method: StartMethod) -> u64 {
    builder(method).spawn(sleep_ms, 1).unwrap().join().unwrap()
}

/// Python refuses children to a daemon ("daemonic processes are not
/// allowed to have children"); ours may have them (README: "Dropping a
/// handle reaps the child").
#[test]
fn a_daemon_may_have_children() {
    each_method(|m| {
        let p = builder(m).daemon(true).spawn(start_grandchild, m).unwrap();
        assert_eq!(p.join().unwrap(), 1, "{m}");
    });
}
