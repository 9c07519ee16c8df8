//! Lifecycles: nothing outlives its parent, nothing is left behind, and
//! handles behave the same from any thread.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{LIMIT, assert_gone, deadline, read_pid_file, temp_path, wait_dead};
use multiproc::{JoinError, Process, Signal, StartMethod, active_children, cpu_count};

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Starts a grandchild that sleeps, writes its pid to `path`, then sleeps
/// itself until killed.
fn parent_of_sleeper((method, path): (StartMethod, PathBuf)) {
    let grandchild = Process::builder()
        .start_method(method)
        .spawn(sleep_ms, 600_000)
        .unwrap();
    std::fs::write(&path, grandchild.pid().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn grandchildren_die_with_a_killed_parent() {
    deadline(LIMIT * 2, || {
        for outer in StartMethod::ALL {
            for inner in StartMethod::ALL {
                let path = temp_path("grandchild");
                let parent = Process::builder()
                    .start_method(outer)
                    .spawn(parent_of_sleeper, (inner, path.clone()))
                    .unwrap();
                let grandchild = read_pid_file(&path, Duration::from_secs(20));
                let _ = std::fs::remove_file(&path);
                assert!(common::exists(grandchild));
                parent.kill().unwrap();
                let ppid = parent.pid();
                match parent.join() {
                    Err(JoinError::Signaled {
                        signal: Signal::KILL,
                        ..
                    }) => {}
                    other => panic!("{outer}/{inner}: {other:?}"),
                }
                assert_gone(ppid);
                assert!(
                    wait_dead(grandchild, Duration::from_secs(10)),
                    "{outer}/{inner}: grandchild {grandchild} outlived its killed parent"
                );
            }
        }
    });
}

#[test]
fn children_outlive_the_thread_that_started_them() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let p = std::thread::spawn(move || {
                Process::builder()
                    .start_method(m)
                    .spawn(sleep_ms, 300)
                    .unwrap()
            })
            .join()
            .unwrap();
            // The starting thread has ended; the child must still finish.
            assert_eq!(p.join().unwrap(), 300, "{m}");
        }
    });
}

#[test]
fn dropping_a_daemon_kills_it_and_reaps_it() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let p = Process::builder()
                .start_method(m)
                .daemon(true)
                .spawn(sleep_ms, 600_000)
                .unwrap();
            assert!(p.is_daemon());
            let pid = p.pid();
            let t = Instant::now();
            drop(p);
            assert!(t.elapsed() < Duration::from_secs(10), "{m}");
            assert_gone(pid);
        }
    });
}

#[test]
fn dropping_a_non_daemon_waits_for_it() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let p = Process::builder()
                .start_method(m)
                .spawn(sleep_ms, 200)
                .unwrap();
            let pid = p.pid();
            let t = Instant::now();
            drop(p);
            assert!(
                t.elapsed() >= Duration::from_millis(150),
                "{m}: drop did not wait"
            );
            assert_gone(pid);
        }
    });
}

#[test]
fn active_children_lists_running_children() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let p = Process::builder()
                .start_method(m)
                .name(format!("listed-{m}"))
                .spawn(sleep_ms, 600_000)
                .unwrap();
            let listed = active_children();
            assert!(
                listed
                    .iter()
                    .any(|c| c.pid == p.pid() && c.name == format!("listed-{m}")),
                "{m}: {listed:?}"
            );
            p.kill().unwrap();
            let pid = p.pid();
            let _ = p.join();
            assert!(!active_children().iter().any(|c| c.pid == pid), "{m}");
        }
    });
}

#[test]
fn many_threads_start_children_at_once() {
    deadline(LIMIT * 2, || {
        for m in StartMethod::ALL {
            let threads: Vec<_> = (0..6u64)
                .map(|t| {
                    std::thread::spawn(move || {
                        (0..5u64)
                            .map(|i| {
                                let p = Process::builder()
                                    .start_method(m)
                                    .spawn(sleep_ms, t * 10 + i)
                                    .unwrap();
                                (t * 10 + i, p)
                            })
                            .collect::<Vec<_>>()
                            .into_iter()
                            .map(|(want, p)| (want, p.join().unwrap()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for t in threads {
                for (want, got) in t.join().unwrap() {
                    assert_eq!(want, got, "{m}");
                }
            }
        }
    });
}

#[test]
fn the_forkserver_survives_a_killed_worker() {
    deadline(LIMIT, || {
        let p = Process::builder()
            .start_method(StartMethod::ForkServer)
            .spawn(sleep_ms, 600_000)
            .unwrap();
        p.kill().unwrap();
        assert!(p.join().is_err());
        let q = Process::builder()
            .start_method(StartMethod::ForkServer)
            .spawn(sleep_ms, 1)
            .unwrap();
        assert_eq!(q.join().unwrap(), 1);
    });
}

/// The parent, in the kernel's sense, of `pid`.
fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

/// In a process of its own (its forkserver is its own, so that no other
/// test's children are hurt): kills the forkserver from outside while one
/// of its children sleeps. The child dies with its server, its `join`
/// fails instead of waiting, and the next start launches a new server.
fn kill_the_forkserver(_: ()) -> Result<(), String> {
    let p = Process::builder()
        .start_method(StartMethod::ForkServer)
        .spawn(sleep_ms, 600_000)
        .map_err(|e| e.to_string())?;
    let server = parent_of(p.pid());
    if server == std::process::id() as i32 {
        return Err("the child is not the forkserver's".into());
    }
    if !common::send_signal(server, libc::SIGKILL) {
        return Err("could not kill the forkserver".into());
    }
    if !wait_dead(p.pid(), Duration::from_secs(10)) {
        return Err("the forkserver's child outlived it".into());
    }
    if p.join().is_ok() {
        return Err("the killed child returned a result".into());
    }
    let q = Process::builder()
        .start_method(StartMethod::ForkServer)
        .spawn(sleep_ms, 1)
        .map_err(|e| format!("no start after the server died: {e}"))?;
    match q.join() {
        Ok(1) => Ok(()),
        other => Err(format!("the next child: {other:?}")),
    }
}

#[test]
fn a_killed_forkserver_takes_its_children_and_is_replaced() {
    deadline(LIMIT, || {
        let got = Process::builder()
            .start_method(StartMethod::Fork)
            .spawn(kill_the_forkserver, ())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got, Ok(()));
    });
}

#[test]
fn cpu_count_is_sane() {
    let n = cpu_count();
    assert!(n >= 1);
    assert!(
        n <= std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(n)
    );
}

fn read_env(key: String) -> Option<String> {
    std::env::var(key).ok()
}

#[test]
fn the_boot_variable_does_not_leak_into_children() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let got = Process::builder()
                .start_method(m)
                .spawn(read_env, "MULTIPROC_BOOT".to_string())
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(got, None, "{m}");
        }
    });
}
