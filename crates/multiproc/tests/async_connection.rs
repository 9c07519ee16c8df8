//! Async forms of pipes, listeners and process joins on every executor,
//! and receives dropped at random points that lose no message.

mod common;
#[path = "common/executors.rs"]
mod executors;

use std::collections::BTreeSet;
use std::time::Duration;

use executors::{Rng, on_each, run_on, timeout};
use multiproc::{Address, Client, Connection, Listener, Process, RecvError, pipe};

fn echo(conn: Connection<u64, u64>) {
    while let Ok(x) = conn.recv() {
        conn.send(&(x + 1)).unwrap();
    }
}

#[test]
fn recv_and_send_async_talk_to_a_child_on_every_executor() {
    common::deadline(common::LIMIT, || {
        on_each(|_| async {
            let (ours, theirs) = pipe::<u64, u64>().unwrap();
            let child = Process::spawn(echo, theirs).unwrap();
            for i in 0..200 {
                ours.send_async(&i).await.unwrap();
                assert_eq!(ours.recv_async().await.unwrap(), i + 1);
            }
            // Larger than the pipe's ring: it streams in pieces.
            let (big, big_theirs) = pipe::<Vec<u8>, Vec<u8>>().unwrap();
            let t = std::thread::spawn(move || {
                let v = big_theirs.recv().unwrap();
                big_theirs.send(&v).unwrap();
            });
            let blob = vec![7u8; 1 << 20];
            big.send_async(&blob).await.unwrap();
            assert_eq!(big.recv_async().await.unwrap(), blob);
            t.join().unwrap();
            drop(ours);
            child.join_async().await.unwrap();
        });
    });
}

#[test]
fn recv_async_sees_the_peer_leave() {
    common::deadline(common::LIMIT, || {
        on_each(|_| async {
            let (ours, theirs) = pipe::<u64, u64>().unwrap();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                drop(theirs);
            });
            assert!(matches!(
                ours.recv_async().await,
                Err(RecvError::Disconnected)
            ));
            t.join().unwrap();
        });
    });
}

#[test]
fn a_dropped_recv_async_takes_no_message() {
    common::deadline(common::LIMIT, || {
        for which in 0..4 {
            run_on(which, async move {
                let n = 300u64;
                let (ours, theirs) = pipe::<(), u64>().unwrap();
                let sender = std::thread::spawn(move || {
                    let mut rng = Rng(99);
                    for i in 0..n {
                        theirs.send(&i).unwrap();
                        if rng.below(3) == 0 {
                            std::thread::sleep(Duration::from_micros(rng.below(3000)));
                        }
                    }
                    theirs
                });
                let mut rng = Rng(101 + which as u64);
                let (mut got, mut dropped) = (Vec::new(), 0);
                for _ in 0..250 {
                    let wait = Duration::from_micros(rng.below(2500));
                    match timeout(which, wait, ours.recv_async()).await {
                        Some(v) => got.push(v.unwrap()),
                        None => dropped += 1,
                    }
                }
                let theirs = sender.join().unwrap();
                while let Ok(v) = ours.recv_timeout(Duration::from_millis(100)) {
                    got.push(v);
                }
                drop(theirs);
                assert!(dropped > 0, "no future was dropped");
                assert_eq!(got, (0..n).collect::<Vec<_>>(), "{dropped} dropped");
            });
        }
    });
}

#[test]
fn accept_async_on_every_executor() {
    common::deadline(common::LIMIT, || {
        on_each(|_| async {
            let key: &'static [u8] = b"async key";
            let path = std::env::temp_dir().join(format!(
                "multiproc-async-accept-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let listener = Listener::bind(&Address::Unix(path.clone()), Some(key)).unwrap();
            let address = listener.address().clone();
            let clients = std::thread::spawn(move || {
                (0..3)
                    .map(|i| {
                        std::thread::sleep(Duration::from_millis(20));
                        let c = Client::connect::<u64, u64>(&address, Some(key)).unwrap();
                        c.send(&i).unwrap();
                        c
                    })
                    .collect::<Vec<_>>()
            });
            let mut seen = BTreeSet::new();
            for _ in 0..3 {
                let conn = listener.accept_async::<u64, u64>().await.unwrap();
                seen.insert(conn.recv_async().await.unwrap());
            }
            assert_eq!(seen, BTreeSet::from([0, 1, 2]));
            drop(clients.join().unwrap());
            drop(listener);
            assert!(!path.exists());
        });
    });
}

#[test]
fn a_dropped_accept_async_loses_no_client() {
    common::deadline(common::LIMIT, || {
        for which in [0, 2, 3] {
            run_on(which, async move {
                let path = std::env::temp_dir().join(format!(
                    "multiproc-async-accept-drop-{}-{which}",
                    std::process::id()
                ));
                let listener = Listener::bind(&Address::Unix(path), None).unwrap();
                let address = listener.address().clone();
                let mut rng = Rng(7 + which as u64);
                let clients = std::thread::spawn(move || {
                    let mut rng = Rng(3);
                    (0..20u64)
                        .map(|i| {
                            std::thread::sleep(Duration::from_micros(rng.below(4000)));
                            let c = Client::connect::<u64, u64>(&address, None).unwrap();
                            c.send(&i).unwrap();
                            c
                        })
                        .collect::<Vec<_>>()
                });
                let mut seen = BTreeSet::new();
                let mut dropped = 0;
                while seen.len() < 20 {
                    let wait = Duration::from_micros(rng.below(3000));
                    match timeout(which, wait, listener.accept_async::<u64, u64>()).await {
                        Some(conn) => {
                            seen.insert(conn.unwrap().recv().unwrap());
                        }
                        None => dropped += 1,
                    }
                }
                assert!(dropped > 0);
                assert_eq!(seen, (0..20).collect::<BTreeSet<_>>());
                drop(clients.join().unwrap());
            });
        }
    });
}

fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_dropped_join_async_reaps_its_child_elsewhere() {
    common::deadline(common::LIMIT, || {
        run_on(0, async {
            let child = Process::builder()
                .daemon(true)
                .spawn(sleepy, 60_000)
                .unwrap();
            let pid = child.pid();
            assert!(
                timeout(0, Duration::from_millis(50), child.join_async())
                    .await
                    .is_none()
            );
            // The daemon is killed and reaped on a waiter thread.
            assert!(common::wait_gone(pid, Duration::from_secs(10)));
            let child = Process::spawn(sleepy, 30).unwrap();
            assert_eq!(child.join_async().await.unwrap(), 30);
        });
    });
}
