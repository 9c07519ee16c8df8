//! One suite, every start method: the same behaviour whether a child is
//! forked, spawned or forked by the forkserver.

mod common;

use std::time::Duration;

use common::{LIMIT, assert_gone, deadline};
use multiproc::{
    ExitStatus, JoinError, JoinTimeoutError, Process, Signal, StartMethod, TryJoinError,
    current_process, parent_process,
};
use serde::{Deserialize, Serialize};

fn each_method(test: fn(StartMethod)) {
    deadline(LIMIT, move || {
        for method in StartMethod::ALL {
            test(method);
        }
    });
}

fn builder(method: StartMethod) -> multiproc::ProcessBuilder {
    Process::builder().start_method(method)
}

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn returns_the_functions_value() {
    each_method(|m| {
        let p = builder(m).spawn(square, 7).unwrap();
        let pid = p.pid();
        assert_eq!(p.join().unwrap(), 49, "{m}");
        assert_gone(pid);
    });
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u32,
    words: Vec<String>,
    weights: std::collections::BTreeMap<String, f64>,
}

fn summarize(job: Job) -> (u32, usize, f64) {
    (
        job.id,
        job.words.iter().map(String::len).sum(),
        job.weights.values().sum(),
    )
}

#[test]
fn structured_arguments_and_results() {
    each_method(|m| {
        let job = Job {
            id: 9,
            words: vec!["alpha".into(), "beta".into()],
            weights: [("a".to_string(), 1.5), ("b".to_string(), 2.5)]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            builder(m).spawn(summarize, job).unwrap().join().unwrap(),
            (9, 9, 4.0),
            "{m}"
        );
    });
}

fn make_big(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn large_results() {
    each_method(|m| {
        let len = 8 << 20;
        let got = builder(m).spawn(make_big, len).unwrap().join().unwrap();
        assert_eq!(got.len(), len, "{m}");
        assert!(
            got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
            "{m}"
        );
    });
}

fn total(v: Vec<u8>) -> u64 {
    v.iter().map(|b| u64::from(*b)).sum()
}

#[test]
fn large_arguments() {
    each_method(|m| {
        let v = make_big(4 << 20);
        let expect = total(v.clone());
        assert_eq!(
            builder(m).spawn(total, v).unwrap().join().unwrap(),
            expect,
            "{m}"
        );
    });
}

/// A child's name, pid and ident, and its parent's name, pid and liveness.
type Identity = (String, i32, Vec<u32>, Option<(String, i32, bool)>);

fn whoami(_: ()) -> Identity {
    let me = current_process();
    let parent = parent_process().map(|p| (p.name.clone(), p.pid, p.is_alive()));
    (me.name, me.pid, me.ident, parent)
}

#[test]
fn identity_and_parent() {
    each_method(|m| {
        let p = builder(m)
            .name(format!("worker-{m}"))
            .spawn(whoami, ())
            .unwrap();
        let pid = p.pid();
        assert_eq!(p.name(), format!("worker-{m}"));
        assert_eq!(p.start_method(), m);
        let (name, child_pid, ident, parent) = p.join().unwrap();
        assert_eq!(name, format!("worker-{m}"));
        assert_eq!(child_pid, pid);
        assert_eq!(ident.len(), 1);
        let me = current_process();
        assert_eq!(parent, Some((me.name, me.pid, true)));
    });
}

fn nested_name(method: StartMethod) -> String {
    let p = Process::builder()
        .start_method(method)
        .spawn(whoami, ())
        .unwrap();
    p.join().unwrap().0
}

#[test]
fn grandchildren_are_named_after_their_line() {
    each_method(|m| {
        let name = builder(m).spawn(nested_name, m).unwrap().join().unwrap();
        assert!(
            name.starts_with("Process-") && name.ends_with(":1"),
            "{m}: {name}"
        );
    });
}

fn explode(code: u32) -> u32 {
    if code > 0 {
        common::silence_stderr();
        panic!("bad input {code}");
    }
    code
}

#[test]
fn a_panic_is_an_error_with_message_and_location() {
    each_method(|m| match builder(m).spawn(explode, 3).unwrap().join() {
        Err(JoinError::Panicked(r)) => {
            assert_eq!(r.message, "bad input 3", "{m}");
            let loc = r.location.expect("a location");
            assert!(loc.contains("process_conformance.rs"), "{m}: {loc}");
        }
        other => panic!("{m}: {other:?}"),
    });
}

fn exit_with(code: i32) {
    std::process::exit(code)
}

#[test]
fn an_early_exit_names_its_code() {
    each_method(|m| match builder(m).spawn(exit_with, 3).unwrap().join() {
        Err(JoinError::Exited { code: 3 }) => {}
        other => panic!("{m}: {other:?}"),
    });
}

fn raise(signal: i32) {
    // SAFETY: raising a signal in this child is the point of the test.
    unsafe { libc::raise(signal) };
}

fn segfault(_: ()) {
    // SAFETY: not safe at all: this child crashes on purpose.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
}

#[test]
fn a_fatal_signal_is_named() {
    each_method(|m| {
        for sig in [libc::SIGABRT, libc::SIGKILL, libc::SIGTERM] {
            match builder(m).spawn(raise, sig).unwrap().join() {
                Err(JoinError::Signaled { signal, .. }) => assert_eq!(signal, Signal(sig), "{m}"),
                other => panic!("{m} {sig}: {other:?}"),
            }
        }
        match builder(m).spawn(segfault, ()).unwrap().join() {
            Err(JoinError::Signaled {
                signal: Signal::SEGV,
                ..
            }) => {}
            other => panic!("{m} segfault: {other:?}"),
        }
    });
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn kill_and_terminate_mid_work() {
    each_method(|m| {
        let p = builder(m).spawn(sleep_ms, 60_000).unwrap();
        assert!(p.is_alive());
        assert_eq!(p.exit_status(), None);
        p.kill().unwrap();
        let pid = p.pid();
        match p.join() {
            Err(JoinError::Signaled {
                signal: Signal::KILL,
                ..
            }) => {}
            other => panic!("{m}: {other:?}"),
        }
        assert_gone(pid);

        let p = builder(m).spawn(sleep_ms, 60_000).unwrap();
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

#[test]
fn join_timeout_hands_the_process_back() {
    each_method(|m| {
        let p = builder(m).spawn(sleep_ms, 300).unwrap();
        let p = match p.join_timeout(Duration::from_millis(20)) {
            Err(JoinTimeoutError::Timeout(p)) => p,
            other => panic!("{m}: {other:?}"),
        };
        let p = match p.try_join() {
            Err(TryJoinError::Running(p)) => p,
            other => panic!("{m}: {other:?}"),
        };
        assert_eq!(p.join_timeout(Duration::from_secs(30)).unwrap(), 300);
    });
}

#[test]
fn exit_status_after_the_end() {
    each_method(|m| {
        let p = builder(m).spawn(exit_with, 0).unwrap();
        let start = std::time::Instant::now();
        while p.is_alive() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{m}: still alive"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(p.exit_status(), Some(ExitStatus::Exited(0)), "{m}");
        let p = builder(m).spawn(raise, libc::SIGKILL).unwrap();
        let pid = p.pid();
        assert!(matches!(p.join(), Err(JoinError::Signaled { .. })));
        assert_gone(pid);
    });
}

#[derive(Debug, Serialize)]
struct Unencodable;

impl<'de> Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("this type refuses to decode"))
    }
}

fn take_unencodable(_: Unencodable) -> u32 {
    1
}

#[derive(Debug, Deserialize)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this type refuses to encode"))
    }
}

fn give_unserializable(_: ()) -> Unserializable {
    Unserializable
}

#[test]
fn codec_failures_are_their_own_errors() {
    each_method(|m| {
        {
            match builder(m)
                .spawn(take_unencodable, Unencodable)
                .unwrap()
                .join()
            {
                Err(JoinError::ArgumentDecode(msg)) => {
                    assert!(msg.contains("Unencodable"), "{msg}")
                }
                other => panic!("{m}: {other:?}"),
            }
        }
        match builder(m).spawn(give_unserializable, ()).unwrap().join() {
            Err(JoinError::ResultEncode(msg)) => {
                assert!(msg.contains("Unserializable"), "{msg}")
            }
            other => panic!("{m}: {other:?}"),
        }
    });
}

#[test]
fn an_argument_that_cannot_be_encoded_starts_nothing() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            match builder(m).spawn(take_unserializable_arg, Unserializable) {
                Err(multiproc::StartError::Encode(e)) => {
                    assert!(e.type_name.contains("Unserializable"), "{e}")
                }
                other => panic!("{m}: {other:?}"),
            }
        }
    });
}

fn take_unserializable_arg(_: Unserializable) -> u32 {
    1
}

/// A child's reply goes inline up to 2 KiB (frame header included) and in
/// a memfd beyond, so that a child never waits for its parent to read:
/// results of every size across that limit arrive whole.
#[test]
fn results_on_both_sides_of_the_inline_limit() {
    each_method(|m| {
        for len in (1990..2060).chain([4096, 100_000, 3 << 20]) {
            let got = builder(m).spawn(make_big, len).unwrap().join().unwrap();
            assert_eq!(got, make_big(len), "{m}: {len} bytes");
        }
    });
}

/// A large result and a handle, in one reply: the handle still works.
fn big_and_a_pipe(len: usize) -> (Vec<u8>, multiproc::Connection<u32, u32>) {
    let (ours, theirs) = multiproc::pipe::<u32, u32>().unwrap();
    ours.send(&41).unwrap();
    (make_big(len), theirs)
}

#[test]
fn a_large_result_brings_its_handles() {
    each_method(|m| {
        let (bytes, conn) = builder(m)
            .spawn(big_and_a_pipe, 50_000)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(bytes, make_big(50_000), "{m}");
        assert_eq!(
            conn.recv_timeout(Duration::from_secs(5)).unwrap(),
            41,
            "{m}"
        );
        // The child, which held the other end, has exited.
        assert!(conn.recv_timeout(Duration::from_secs(5)).is_err(), "{m}");
    });
}

fn long_panic(len: usize) {
    panic!("{}", "p".repeat(len));
}

/// A panic report larger than the inline limit (a long message, or a
/// backtrace) arrives whole.
#[test]
fn a_long_panic_report_arrives_whole() {
    each_method(
        |m| match builder(m).spawn(long_panic, 3_000).unwrap().join() {
            Err(JoinError::Panicked(r)) => assert_eq!(r.message, "p".repeat(3_000), "{m}"),
            other => panic!("{m}: {other:?}"),
        },
    );
}

/// The reply of a finished child is taken by `try_join` and by
/// `join_async` as by `join`, whatever its size.
#[test]
fn try_join_and_join_async_take_large_replies() {
    each_method(|m| {
        let mut p = builder(m).spawn(make_big, 300_000).unwrap();
        let got = loop {
            match p.try_join() {
                Ok(v) => break v,
                Err(TryJoinError::Running(back)) => {
                    p = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("{m}: {e:?}"),
            }
        };
        assert_eq!(got, make_big(300_000), "{m}");
        let p = builder(m).spawn(make_big, 300_000).unwrap();
        let got = futures::executor::block_on(p.join_async()).unwrap();
        assert_eq!(got, make_big(300_000), "{m}");
    });
}

/// A reply over 2 KiB needs one free descriptor in the child (its memfd):
/// a child at its descriptor limit gets a typed error naming the cause,
/// never a hang; a smaller result still arrives.
fn at_the_descriptor_limit(len: usize) -> Vec<u8> {
    let limit = rustix::process::Rlimit {
        current: Some(64),
        maximum: Some(64),
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    let mut held = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f);
    }
    std::mem::forget(held);
    make_big(len)
}

#[test]
fn a_child_out_of_descriptors_reports_why_its_large_result_did_not_come() {
    each_method(|m| {
        let got = builder(m)
            .spawn(at_the_descriptor_limit, 1000)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got, make_big(1000), "{m}");
        match builder(m)
            .spawn(at_the_descriptor_limit, 10_000)
            .unwrap()
            .join()
        {
            Err(JoinError::ResultEncode(why)) => {
                assert!(
                    why.contains("could not be handed to the parent"),
                    "{m}: {why}"
                )
            }
            other => panic!("{m}: {other:?}"),
        }
    });
}

fn panics_at_the_descriptor_limit(len: usize) -> Vec<u8> {
    let _ = at_the_descriptor_limit(0);
    panic!("{}", "P".repeat(len));
}

/// A panic stays `Panicked` when its report cannot travel whole: cut to
/// fit inline, saying why.
#[test]
fn a_panic_at_the_descriptor_limit_is_still_a_panic() {
    each_method(|m| {
        match builder(m)
            .spawn(panics_at_the_descriptor_limit, 3000)
            .unwrap()
            .join()
        {
            Err(JoinError::Panicked(r)) => {
                assert!(
                    r.message.starts_with(&"P".repeat(1000)),
                    "{m}: {}",
                    r.message
                );
                assert!(r.message.contains("[cut: "), "{m}: {}", r.message);
            }
            other => panic!("{m}: {other:?}"),
        }
    });
}
