//! One suite, every transport: the shared-memory rings of `pipe`, a Unix
//! socket listener, TCP, and both with an auth key. Then connections handed to
//! children under every start method.

mod common;

use std::time::Duration;

use common::{LIMIT, deadline, temp_path};
use multiproc::{
    Address, Client, Connection, Listener, Process, RangeError, RecvIntoError, RecvTimeoutError,
    SendError, StartMethod, TryRecvError, pipe, wait,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Ping(u64),
    Text(String),
    Blob(Vec<u8>),
}

type Pair = (Connection<Msg, Msg>, Connection<Msg, Msg>);

fn over_listener(address: Address, key: Option<&'static [u8]>) -> Pair {
    let listener = Listener::bind(&address, key).unwrap();
    let address = listener.address().clone();
    let client = std::thread::spawn(move || Client::connect::<Msg, Msg>(&address, key).unwrap());
    let server = listener.accept().unwrap();
    (server, client.join().unwrap())
}

/// A fresh abstract socket name, unique to this test process.
fn abstract_address() -> Address {
    use std::os::unix::ffi::OsStrExt;
    let path = temp_path("abstract");
    Address::Abstract(path.file_name().unwrap().as_bytes().to_vec())
}

fn transports() -> Vec<(&'static str, Pair)> {
    vec![
        ("pipe", pipe().unwrap()),
        (
            "unix",
            over_listener(Address::Unix(temp_path("sock")), None),
        ),
        ("tcp", over_listener("127.0.0.1:0".parse().unwrap(), None)),
        (
            "tcp+auth",
            over_listener("127.0.0.1:0".parse().unwrap(), Some(b"k3y")),
        ),
        (
            "unix+auth",
            over_listener(Address::Unix(temp_path("sock")), Some(b"k3y")),
        ),
        ("abstract", over_listener(abstract_address(), None)),
        (
            "abstract+auth",
            over_listener(abstract_address(), Some(b"k3y")),
        ),
    ]
}

fn each_transport(test: fn(&str, Connection<Msg, Msg>, Connection<Msg, Msg>)) {
    deadline(LIMIT, move || {
        for (name, (a, b)) in transports() {
            test(name, a, b);
        }
    });
}

#[test]
fn typed_values_both_ways() {
    each_transport(|t, a, b| {
        for i in 0..100 {
            a.send(&Msg::Ping(i)).unwrap();
            assert_eq!(b.recv().unwrap(), Msg::Ping(i), "{t}");
            b.send(&Msg::Text(format!("pong {i}"))).unwrap();
            assert_eq!(a.recv().unwrap(), Msg::Text(format!("pong {i}")), "{t}");
        }
    });
}

#[test]
fn many_sizes_on_one_connection() {
    each_transport(|t, a, b| {
        let sizes = [
            0usize,
            1,
            3,
            4,
            5,
            511,
            512,
            513,
            65535,
            65536,
            65537,
            1 << 20,
            3,
            0,
            9 << 20,
            17,
        ];
        let sender = std::thread::spawn(move || {
            for len in sizes {
                let msg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                a.send_bytes(&msg).unwrap();
            }
            a
        });
        for len in sizes {
            let got = b.recv_bytes().unwrap();
            assert_eq!(got.len(), len, "{t}");
            assert!(
                got.iter().enumerate().all(|(i, x)| *x == (i % 251) as u8),
                "{t}: {len}"
            );
        }
        drop(sender.join().unwrap());
    });
}

#[test]
fn recv_bytes_into_and_buffer_too_short() {
    each_transport(|t, a, b| {
        a.send_bytes(b"12345").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(b.recv_bytes_into(&mut buf).unwrap(), 5, "{t}");
        assert_eq!(&buf[..5], b"12345");
        a.send_bytes(b"0123456789").unwrap();
        match b.recv_bytes_into(&mut buf) {
            Err(RecvIntoError::BufferTooShort(whole)) => assert_eq!(whole, b"0123456789", "{t}"),
            other => panic!("{t}: {other:?}"),
        }
    });
}

#[test]
fn abstract_names_parse_as_in_python_and_leave_nothing_behind() {
    deadline(LIMIT, || {
        let a: Address = "\0some name".parse().unwrap();
        assert_eq!(a, Address::Abstract(b"some name".to_vec()));
        assert_eq!("@some name".parse::<Address>().unwrap(), a);
        assert_eq!(a.to_string(), "@some name");
        assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        assert_eq!(
            "./@file".parse::<Address>().unwrap(),
            Address::Unix("./@file".into())
        );

        let address = abstract_address();
        let listener = Listener::bind(&address, None).unwrap();
        assert_eq!(listener.address(), &address);
        // The name is taken while the listener lives...
        let err = Listener::bind(&address, None).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(listener);
        // ...and free once it is gone: nothing to remove, nobody answers.
        // (Once every copy is gone: another test's child started with
        // spawn holds copies of all descriptors until its `exec`.)
        assert!(common::eventually(Duration::from_secs(10), || {
            Client::connect::<(), ()>(&address, None).is_err()
        }));
        assert!(common::eventually(Duration::from_secs(10), || {
            Listener::bind(&address, None).is_ok()
        }));
        // A name longer than the kernel's 107 bytes is an error, not a
        // truncated name.
        let long = Address::Abstract(vec![b'x'; 200]);
        assert!(Listener::bind(&long, None).is_err());
        assert!(Client::connect::<(), ()>(&long, None).is_err());
    });
}

fn connect_abstract(name: Vec<u8>) -> u64 {
    let address = Address::Abstract(name);
    let c: Connection<u64, u64> = Client::connect(&address, Some(b"child key")).unwrap();
    c.send(&41).unwrap();
    c.recv().unwrap()
}

#[test]
fn children_connect_to_an_abstract_name_under_every_start_method() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let address = abstract_address();
            let listener = Listener::bind(&address, Some(b"child key")).unwrap();
            let Address::Abstract(name) = address else {
                unreachable!()
            };
            let child = Process::builder()
                .start_method(m)
                .spawn(connect_abstract, name)
                .unwrap();
            let conn: Connection<u64, u64> = listener.accept().unwrap();
            let n = conn.recv().unwrap();
            conn.send(&(n + 1)).unwrap();
            assert_eq!(child.join().unwrap(), 42, "{m}");
        }
    });
}

#[test]
fn byte_offsets_as_in_python() {
    // CPython's send_bytes(buf, offset, size) and recv_bytes_into(buf,
    // offset), with their ValueErrors as RangeErrors that send or take
    // nothing.
    each_transport(|t, a, b| {
        let buf = b"0123456789";
        a.send_bytes_range(buf, 2, Some(3)).unwrap();
        a.send_bytes_range(buf, 7, None).unwrap();
        a.send_bytes_range(buf, 10, None).unwrap();
        a.send_bytes_range(buf, 4, Some(0)).unwrap();
        a.send_bytes_range(buf, 0, Some(10)).unwrap();
        for (offset, size, what) in [
            (11, None, "buffer length < offset"),
            (11, Some(0), "buffer length < offset"),
            (5, Some(6), "buffer length < offset + size"),
            (1, Some(usize::MAX), "buffer length < offset + size"),
        ] {
            match a.send_bytes_range(buf, offset, size) {
                Err(SendError::Range(e)) => assert_eq!(
                    e,
                    RangeError {
                        what,
                        len: 10,
                        offset,
                        size
                    },
                    "{t}"
                ),
                other => panic!("{t}: {other:?}"),
            }
        }
        assert_eq!(b.recv_bytes().unwrap(), b"234", "{t}");
        assert_eq!(b.recv_bytes().unwrap(), b"789", "{t}");
        assert_eq!(b.recv_bytes().unwrap(), b"", "{t}");
        assert_eq!(b.recv_bytes().unwrap(), b"", "{t}");

        // The offset is checked before anything is received: the next
        // message is still there afterwards.
        let mut into = *b"abcdefghijkl";
        assert!(
            matches!(
                b.recv_bytes_into_at(&mut into, 13),
                Err(RecvIntoError::Range(RangeError {
                    offset: 13,
                    len: 12,
                    ..
                }))
            ),
            "{t}"
        );
        assert_eq!(b.recv_bytes_into_at(&mut into, 2).unwrap(), 10, "{t}");
        assert_eq!(&into, b"ab0123456789", "{t}");
        // Room for 2 after offset 10: a longer message comes back whole.
        a.send_bytes(b"xyz").unwrap();
        match b.recv_bytes_into_at(&mut into, 10) {
            Err(RecvIntoError::BufferTooShort(whole)) => assert_eq!(whole, b"xyz", "{t}"),
            other => panic!("{t}: {other:?}"),
        }
        // An offset at the very end takes an empty message.
        a.send_bytes(b"").unwrap();
        assert_eq!(b.recv_bytes_into_at(&mut into, 12).unwrap(), 0, "{t}");
        assert_eq!(&into, b"ab0123456789", "{t}");
        // Nothing left over from the refused calls.
        assert!(!b.poll(Some(Duration::ZERO)).unwrap(), "{t}");
    });
}

fn recv_at_offset(conn: Connection<(), ()>) -> Vec<u8> {
    let mut buf = vec![b'.'; 8];
    let n = conn.recv_bytes_into_at(&mut buf, 3).unwrap();
    buf.truncate(3 + n);
    buf
}

#[test]
fn byte_offsets_between_processes_under_every_start_method() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (ours, theirs) = pipe::<(), ()>().unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(recv_at_offset, theirs)
                .unwrap();
            ours.send_bytes_range(b"--hello--", 2, Some(5)).unwrap();
            assert_eq!(child.join().unwrap(), b"...hello", "{m}");
        }
    });
}

#[test]
fn poll_timeouts_and_try_recv() {
    each_transport(|t, a, b| {
        assert!(!b.poll(Some(Duration::from_millis(10))).unwrap(), "{t}");
        assert!(matches!(b.try_recv(), Err(TryRecvError::Empty)), "{t}");
        assert!(
            matches!(
                b.recv_timeout(Duration::from_millis(10)),
                Err(RecvTimeoutError::Timeout)
            ),
            "{t}"
        );
        a.send(&Msg::Ping(1)).unwrap();
        assert!(b.poll(Some(Duration::from_secs(10))).unwrap(), "{t}");
        assert_eq!(
            b.recv_timeout(Duration::from_secs(10)).unwrap(),
            Msg::Ping(1),
            "{t}"
        );
    });
}

#[test]
fn both_ends_send_large_messages_at_once() {
    each_transport(|t, a, b| {
        let big = vec![7u8; 48 << 20];
        let big2 = big.clone();
        let ta = std::thread::spawn(move || {
            a.send_bytes(&big2).unwrap();
            a.recv_bytes().unwrap().len()
        });
        b.send_bytes(&big).unwrap();
        assert_eq!(b.recv_bytes().unwrap().len(), big.len(), "{t}");
        assert_eq!(ta.join().unwrap(), big.len(), "{t}");
    });
}

#[test]
fn threads_share_one_end_each_way() {
    each_transport(|t, a, b| {
        const THREADS: u64 = 4;
        const EACH: u64 = 500;
        let a = std::sync::Arc::new(a);
        let senders: Vec<_> = (0..THREADS)
            .map(|k| {
                let a = std::sync::Arc::clone(&a);
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        // Every 50th message is large enough to span records.
                        let msg = if i % 50 == 0 {
                            Msg::Blob(vec![k as u8; 80 << 10])
                        } else {
                            Msg::Ping(k << 32 | i)
                        };
                        a.send(&msg).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u64; THREADS as usize];
        for _ in 0..THREADS * EACH {
            let (k, i) = match b.recv().unwrap() {
                Msg::Ping(v) => (v >> 32, v & 0xffff_ffff),
                Msg::Blob(bytes) => {
                    assert_eq!(bytes.len(), 80 << 10, "{t}");
                    let k = u64::from(bytes[0]);
                    assert!(bytes.iter().all(|x| u64::from(*x) == k), "{t}");
                    (k, next[k as usize])
                }
                other => panic!("{t}: {other:?}"),
            };
            // Each thread's messages arrive whole and in its order.
            assert_eq!(i, next[k as usize], "{t}: thread {k}");
            next[k as usize] += 1;
        }
        for s in senders {
            s.join().unwrap();
        }
    });
}

#[test]
fn a_closed_peer_is_disconnected() {
    each_transport(|t, a, b| {
        a.send(&Msg::Ping(9)).unwrap();
        drop(a);
        // Messages sent before the close still arrive.
        assert_eq!(b.recv().unwrap(), Msg::Ping(9), "{t}");
        assert!(
            matches!(b.recv(), Err(multiproc::RecvError::Disconnected)),
            "{t}"
        );
        assert!(
            b.poll(Some(Duration::ZERO)).unwrap(),
            "{t}: a closed peer makes recv immediate"
        );
    });
}

#[test]
fn a_gigabyte_message() {
    deadline(LIMIT * 2, || {
        let (a, b) = pipe::<(), ()>().unwrap();
        let len = 1 << 30;
        let sender = std::thread::spawn(move || {
            let mut big = vec![0u8; len];
            big[0] = 1;
            big[len / 2] = 2;
            big[len - 1] = 3;
            a.send_bytes(&big).unwrap();
            a
        });
        let got = b.recv_bytes().unwrap();
        assert_eq!(got.len(), len);
        assert_eq!((got[0], got[len / 2], got[len - 1]), (1, 2, 3));
        drop(sender.join().unwrap());
    });
}

#[test]
fn wait_returns_the_ready_ones() {
    deadline(LIMIT, || {
        let (a1, b1) = pipe::<u8, u8>().unwrap();
        let (a2, b2) = pipe::<u8, u8>().unwrap();
        assert!(
            wait(&[&a1, &a2], Some(Duration::from_millis(10)))
                .unwrap()
                .is_empty()
        );
        b1.send(&1).unwrap();
        b2.send(&2).unwrap();
        let mut ready = wait(&[&a1, &a2], None).unwrap();
        ready.sort();
        assert_eq!(ready, vec![0, 1]);
        // A process is ready once it has exited.
        let p = Process::builder()
            .start_method(StartMethod::Fork)
            .fork(|| 5u8)
            .unwrap();
        assert_eq!(wait(&[&p], Some(Duration::from_secs(20))).unwrap(), vec![0]);
        assert_eq!(p.join().unwrap(), 5);
        drop((b1, b2));
    });
}

fn echo_child(conn: Connection<Msg, Msg>) -> u32 {
    let mut n = 0;
    while let Ok(m) = conn.recv() {
        conn.send(&m).unwrap();
        n += 1;
    }
    n
}

#[test]
fn a_connection_is_an_argument_under_every_start_method() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (ours, theirs) = pipe::<Msg, Msg>().unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(echo_child, theirs)
                .unwrap();
            for i in 0..10 {
                ours.send(&Msg::Ping(i)).unwrap();
                assert_eq!(ours.recv().unwrap(), Msg::Ping(i), "{m}");
            }
            ours.send(&Msg::Blob(vec![1; 3 << 20])).unwrap();
            assert_eq!(ours.recv().unwrap(), Msg::Blob(vec![1; 3 << 20]), "{m}");
            drop(ours);
            assert_eq!(child.join().unwrap(), 11, "{m}");
        }
    });
}

/// Receives a connection over `control`, and says hello through it.
fn relay(control: Connection<(), Connection<String, String>>) -> String {
    let side = control.recv().unwrap();
    side.send(&"hello through a passed connection".to_string())
        .unwrap();
    side.recv().unwrap()
}

#[test]
fn a_connection_travels_inside_a_message() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (control_ours, control_theirs) = pipe::<Connection<String, String>, ()>().unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(relay, control_theirs)
                .unwrap();
            let (x, y) = pipe::<String, String>().unwrap();
            control_ours.send(&y).unwrap();
            drop(y);
            assert_eq!(
                x.recv().unwrap(),
                "hello through a passed connection",
                "{m}"
            );
            x.send(&"bye".to_string()).unwrap();
            assert_eq!(child.join().unwrap(), "bye", "{m}");
        }
    });
}

fn make_pipe_end(_: ()) -> Connection<String, String> {
    let (a, b) = pipe::<String, String>().unwrap();
    b.send(&"from the child".to_string()).unwrap();
    a
}

#[test]
fn a_connection_can_be_a_result() {
    deadline(LIMIT, || {
        for m in [
            StartMethod::Spawn,
            StartMethod::ForkServer,
            StartMethod::Fork,
        ] {
            let conn = Process::builder()
                .start_method(m)
                .spawn(make_pipe_end, ())
                .unwrap()
                .join()
                .unwrap();
            // The peer end lived in the child: its message arrived before it
            // exited, then the stream ends.
            assert_eq!(conn.recv().unwrap(), "from the child", "{m}");
            assert!(
                matches!(conn.recv(), Err(multiproc::RecvError::Disconnected)),
                "{m}"
            );
        }
    });
}

#[test]
fn one_way_pipes_refuse_the_wrong_direction() {
    let (r, w) = multiproc::pipe_oneway::<u32>().unwrap();
    w.send(&5).unwrap();
    assert_eq!(r.recv().unwrap(), 5);
    assert!(matches!(r.send(&()), Err(multiproc::SendError::ReadOnly)));
    assert!(matches!(w.recv(), Err(multiproc::RecvError::WriteOnly)));
    assert!(r.is_readable() && !r.is_writable() && w.is_writable() && !w.is_readable());
}

#[test]
fn encoding_a_connection_outside_multiproc_fails() {
    let (a, _b) = pipe::<(), ()>().unwrap();
    let err = serde_json::to_vec(&a).unwrap_err();
    assert!(
        err.to_string().contains("can only be encoded by multiproc"),
        "{err}"
    );
}

fn return_at_once(_: ()) {}

#[test]
fn wait_reports_every_ready_object_not_just_the_first() {
    // CPython's test_wait_integer: a connection with a message and a
    // process that has exited are both ready, whatever their order.
    deadline(LIMIT, || {
        let (a, b) = pipe::<u8, u8>().unwrap();
        let (idle, _idle_peer) = pipe::<u8, u8>().unwrap();
        b.send(&1).unwrap();
        let p = Process::spawn(return_at_once, ()).unwrap();
        assert_eq!(wait(&[&p], Some(Duration::from_secs(20))).unwrap(), vec![0]);
        assert_eq!(
            wait(&[&a, &idle, &p], Some(Duration::from_secs(5))).unwrap(),
            vec![0, 2]
        );
        assert_eq!(
            wait(&[&p, &idle, &a], Some(Duration::from_secs(5))).unwrap(),
            vec![0, 2]
        );
        assert_eq!(a.recv().unwrap(), 1);
        assert_eq!(
            wait(&[&a, &idle, &p], Some(Duration::from_secs(5))).unwrap(),
            vec![2]
        );
        p.join().unwrap();
    });
}

#[test]
fn poll_on_the_write_only_end_of_a_one_way_pipe_is_an_error() {
    // CPython raises OSError("connection is write-only").
    let (rx, tx) = multiproc::pipe_oneway::<u8>().unwrap();
    let e = tx.poll(Some(Duration::ZERO)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
    assert!(!rx.poll(Some(Duration::ZERO)).unwrap());
}
