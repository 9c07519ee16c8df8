//! The manager's array (Python: `Manager().Array(typecode, sequence)`):
//! fixed length, get/set by index, slices, typed errors past the end,
//! shared with children under every start method and clients over TCP,
//! and unharmed by a client killed while it writes.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, assert_gone, deadline};
use multiproc::{ArrayProxy, Manager, Process, ProxyError, RemoteError, StartMethod};

fn out_of_range<T: std::fmt::Debug>(r: Result<T, ProxyError>, index: u64, len: u64) -> bool {
    matches!(
        r,
        Err(ProxyError::Remote(RemoteError::IndexOutOfRange { index: i, len: l }))
            if i == index && l == len
    )
}

#[test]
fn an_array_keeps_its_length_and_refuses_indices_past_the_end() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let a = manager.array([1i32, 2, 3, 4]).unwrap();
        assert_eq!(a.len().unwrap(), 4);
        assert!(!a.is_empty().unwrap());
        assert_eq!(a.get(0).unwrap(), 1);
        assert_eq!(a.set(1, 20).unwrap(), 2);
        assert_eq!(a.snapshot().unwrap(), [1, 20, 3, 4]);
        assert_eq!(a.slice(1..3).unwrap(), [20, 3]);
        assert_eq!(a.slice(2..).unwrap(), [3, 4]);
        assert_eq!(a.slice(..=0).unwrap(), [1]);
        assert_eq!(a.slice(3..100).unwrap(), [4]);
        assert_eq!(a.slice(9..).unwrap(), Vec::<i32>::new());
        a.set_slice(2, [30, 40]).unwrap();
        assert_eq!(a.snapshot().unwrap(), [1, 20, 30, 40]);
        a.set_slice(4, []).unwrap();
        // Past the end: typed errors, and nothing written.
        assert!(out_of_range(a.get(4), 4, 4));
        assert!(out_of_range(a.set(7, 0), 7, 4));
        assert!(out_of_range(a.set_slice(3, [0, 0]), 4, 4));
        assert!(out_of_range(a.set_slice(5, []), 5, 4));
        assert_eq!(a.snapshot().unwrap(), [1, 20, 30, 40]);
        assert_eq!(a.len().unwrap(), 4);
        // Empty, and of other types.
        let empty = manager.array(Vec::<u8>::new()).unwrap();
        assert!(empty.is_empty().unwrap());
        assert!(out_of_range(empty.get(0), 0, 0));
        let words = manager.array(["a".to_string(), "b".to_string()]).unwrap();
        assert_eq!(words.set(0, "z".into()).unwrap(), "a");
        assert_eq!(words.snapshot().unwrap(), ["z", "b"]);
        let pid = manager.server_pid().unwrap();
        manager.shutdown().unwrap();
        assert_gone(pid);
    });
}

/// Adds `10 * (slot + 1)` to its slot.
fn bump((a, slot): (ArrayProxy<u64>, usize)) -> u64 {
    let x = a.get(slot).unwrap();
    a.set(slot, x + 10 * (slot as u64 + 1)).unwrap();
    a.len().unwrap() as u64
}

/// Writes to the array until killed.
fn write_forever(a: ArrayProxy<u64>) {
    let mut i = 0u64;
    loop {
        a.set_slice(0, [i, i, i]).unwrap();
        i += 1;
    }
}

#[test]
fn children_under_every_start_method_and_tcp_clients_share_the_items() {
    deadline(LIMIT, || {
        let managers = [
            Manager::start().unwrap(),
            Manager::builder()
                .tcp("127.0.0.1:0".parse().unwrap(), b"array key")
                .start()
                .unwrap(),
        ];
        for manager in managers {
            let a = manager.array([1u64, 2, 3]).unwrap();
            let children: Vec<_> = StartMethod::ALL
                .into_iter()
                .enumerate()
                .map(|(slot, m)| {
                    Process::builder()
                        .start_method(m)
                        .spawn(bump, (a.clone(), slot))
                        .unwrap()
                })
                .collect();
            for c in children {
                assert_eq!(c.join().unwrap(), 3);
            }
            assert_eq!(a.snapshot().unwrap(), [11, 22, 33]);
            let pid = manager.server_pid().unwrap();
            manager.shutdown().unwrap();
            assert_gone(pid);
        }
    });
}

#[test]
fn a_client_killed_while_writing_leaves_the_array_whole() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let manager = Manager::builder().start_method(m).start().unwrap();
            let a = manager.array([0u64, 0, 0]).unwrap();
            let writer = Process::builder()
                .start_method(m)
                .spawn(write_forever, a.clone())
                .unwrap();
            let start = Instant::now();
            while a.get(0).unwrap() < 10 {
                assert!(start.elapsed() < Duration::from_secs(20));
                std::thread::sleep(Duration::from_millis(5));
            }
            writer.kill().unwrap();
            let _ = writer.join();
            // Every write was all or nothing, and the length is unchanged.
            let items = a.snapshot().unwrap();
            assert_eq!(items.len(), 3);
            assert!(items.iter().all(|x| *x == items[0]), "{items:?}");
            // The writer's last request, if it was whole on its socket when
            // the writer died, is still served (whole) by its session in
            // its own time, perhaps after the next set (a loaded machine's
            // run read 11 after setting 7): set again until none undoes it.
            assert!(
                common::eventually(Duration::from_secs(10), || {
                    a.set(2, 7).unwrap();
                    a.get(2).unwrap() == 7
                }),
                "{:?}",
                a.snapshot()
            );
            let pid = manager.server_pid().unwrap();
            manager.shutdown().unwrap();
            assert_gone(pid);
        }
    });
}
