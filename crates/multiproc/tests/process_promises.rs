//! The README's process promises that no other test pinned down: the
//! default start method, the panic backtrace, a result the parent cannot
//! decode, and what a serde error keeps of its text.

mod common;

use common::{LIMIT, deadline};
use multiproc::{JoinError, Process, StartError, StartMethod, get_start_method};
use serde::{Deserialize, Serialize};

fn parent_pid(_: ()) -> u32 {
    std::os::unix::process::parent_id()
}

#[test]
fn the_default_start_method_is_forkserver() {
    deadline(LIMIT, || {
        // Nothing in this test binary sets a start method.
        assert_eq!(get_start_method(), StartMethod::ForkServer);
        // A child started without choosing is a child of the server, not
        // of this process; one started with spawn is ours.
        let served = Process::spawn(parent_pid, ()).unwrap().join().unwrap();
        assert_ne!(served, std::process::id());
        let ours = Process::builder()
            .start_method(StartMethod::Spawn)
            .spawn(parent_pid, ())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(ours, std::process::id());
    });
}

fn panic_with_backtrace(_: ()) {
    common::silence_stderr();
    // SAFETY: the child has not started another thread that reads the
    // environment; the variable is read when the panic captures a trace.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    panic!("on purpose");
}

#[test]
fn a_panic_report_has_a_backtrace_when_rust_backtrace_is_set_except_after_fork_from_threads() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let report = match Process::builder()
                .start_method(m)
                .spawn(panic_with_backtrace, ())
                .unwrap()
                .join()
            {
                Err(JoinError::Panicked(report)) => report,
                other => panic!("{m}: {other:?}"),
            };
            assert_eq!(report.message, "on purpose", "{m}");
            match m {
                // This test runs on a thread of its own beside the
                // harness's: a child forked from a multi-threaded parent
                // takes no backtrace (the printer's lock may be held by a
                // thread that does not exist in the child).
                StartMethod::Fork => assert_eq!(report.backtrace, None),
                _ => {
                    let bt = report
                        .backtrace
                        .unwrap_or_else(|| panic!("{m}: no backtrace"));
                    assert!(bt.contains("panic_with_backtrace"), "{m}: {bt}");
                }
            }
        }
    });
}

/// Encodes fine, refuses to decode, with a custom error text.
#[derive(Debug, Serialize)]
struct OneWay;

impl<'de> Deserialize<'de> for OneWay {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("secret reason one"))
    }
}

fn give_one_way(_: ()) -> OneWay {
    OneWay
}

/// Refuses to encode, with a custom error text.
#[derive(Debug, Deserialize)]
struct NoWay;

impl Serialize for NoWay {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("secret reason two"))
    }
}

fn take_no_way(_: NoWay) {}

#[test]
fn a_result_the_parent_cannot_decode_is_result_decode_naming_the_type_not_the_text() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            match Process::builder()
                .start_method(m)
                .spawn(give_one_way, ())
                .unwrap()
                .join()
            {
                Err(JoinError::ResultDecode(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains("OneWay"), "{m}: {msg}");
                    assert!(!msg.contains("secret reason"), "{m}: {msg}");
                }
                other => panic!("{m}: {other:?}"),
            }
        }
        match Process::spawn(take_no_way, NoWay) {
            Err(StartError::Encode(e)) => {
                let text = e.to_string();
                assert!(text.contains("NoWay"), "{text}");
                assert!(!text.contains("secret reason"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    });
}
