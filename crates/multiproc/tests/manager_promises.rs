//! The README's manager promises that no other test pinned down: dictionary
//! keys are equal when their encodings are, so `0.0` and `-0.0` are two
//! keys (Python's `{0.0: 1, -0.0: 2}` has one); requests are limited to
//! 64 MiB by default; every manager has a random key unless given one; a
//! server that does not stop when its `Manager` is dropped is killed.

mod common;

use std::time::Duration;

use common::{LIMIT, assert_gone, deadline, send_signal};
use multiproc::{DEFAULT_MAX_REQUEST, Manager, ProxyError, StartMethod};
use serde_bytes::ByteBuf;

#[test]
fn keys_are_equal_when_their_encodings_are() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<f64, u32>().unwrap();
        d.insert(0.0, 1).unwrap();
        d.insert(-0.0, 2).unwrap();
        assert_eq!(d.len().unwrap(), 2);
        assert_eq!(d.get(&0.0).unwrap(), Some(1));
        assert_eq!(d.get(&-0.0).unwrap(), Some(2));
        // And a NaN finds itself, which it does not in a Python dict unless
        // it is the very same object.
        d.insert(f64::NAN, 3).unwrap();
        assert_eq!(d.get(&f64::NAN).unwrap(), Some(3));
        drop(d);
        manager.shutdown().unwrap();
    });
}

#[test]
fn requests_are_limited_to_64_mib_by_default() {
    deadline(LIMIT, || {
        assert_eq!(DEFAULT_MAX_REQUEST, 64 << 20);
        let manager = Manager::start().unwrap();
        let d = manager.dict::<u8, ByteBuf>().unwrap();
        match d.insert(1, ByteBuf::from(vec![7u8; 64 << 20])) {
            Err(ProxyError::TooLarge { len, limit }) => {
                assert_eq!(limit, 64 << 20);
                assert!(len > 64 << 20, "{len}");
            }
            other => panic!("{other:?}"),
        }
        // A value a little under the limit goes through.
        d.insert(2, ByteBuf::from(vec![7u8; (64 << 20) - 1024]))
            .unwrap();
        assert_eq!(d.get(&2).unwrap().unwrap().len(), (64 << 20) - 1024);
        drop(d);
        manager.shutdown().unwrap();
    });
}

#[test]
fn every_manager_has_its_own_random_key_by_default() {
    deadline(LIMIT, || {
        let (a, b) = (Manager::start().unwrap(), Manager::start().unwrap());
        assert!(a.authkey().len() >= 16, "{:?}", a.authkey());
        assert_ne!(a.authkey(), b.authkey());
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

#[test]
fn a_server_that_does_not_stop_is_killed_when_its_manager_is_dropped() {
    deadline(LIMIT, || {
        // A server of ours, and one the forkserver started: 5 s each.
        for m in [StartMethod::Spawn, StartMethod::ForkServer] {
            let manager = Manager::builder().start_method(m).start().unwrap();
            let server = manager.server_pid().unwrap();
            // Stopped, the server cannot answer the shutdown request; only
            // SIGKILL ends it.
            assert!(send_signal(server, libc::SIGSTOP));
            let start = std::time::Instant::now();
            drop(manager);
            assert_gone(server);
            // Bounded, not instant: the drop waited for a reply first.
            assert!(start.elapsed() >= Duration::from_secs(4), "{m}");
        }
    });
}
