//! Ports of CPython's `_TestConnection`, `_TestListener`,
//! `_TestListenerClient` and `_TestPoll` (`Lib/test/_test_multiprocessing.py`)
//! to the Rust API: what Python asserts, adapted to Rust types (`EOFError`
//! is `RecvError::Disconnected`, `BufferTooShort` is
//! `RecvIntoError::BufferTooShort`, `OSError` an `io::Error`, `Pipe()` is
//! `pipe()`, Python's `poll()` without an argument is
//! `poll(Some(Duration::ZERO))`). Cases that `connection_conformance.rs`
//! already ports are not repeated here: `test_sendbytes` (offsets and
//! sizes, `byte_offsets_as_in_python`), `test_duplex_false`
//! (`one_way_pipes_refuse_the_wrong_direction`,
//! `poll_on_the_write_only_end_of_a_one_way_pipe_is_an_error`) and
//! `test_abstract_socket`. `test_context` has no equivalent: a dropped
//! connection or listener cannot be called.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, daemon_builder, deadline, each_method, temp_path};
use multiproc::{
    Address, Client, Connection, Listener, RecvError, RecvIntoError, pipe, pipe_oneway,
};
use serde::{Deserialize, Serialize};

const TIMEOUT1: Duration = Duration::from_millis(100);
/// Python's `SENTINEL`: an empty message.
const SENTINEL: &[u8] = b"";

/// What `test_connection` sends with `send`: `[1, 2.25, None]`, and `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Obj {
    Seq(i32, f64, Option<()>),
    None,
}

/// `_TestConnection._echo`: echoes messages until the empty one.
fn echo<S, R>(conn: Connection<S, R>) {
    loop {
        let msg = conn.recv_bytes().unwrap();
        if msg == SENTINEL {
            break;
        }
        conn.send_bytes(&msg).unwrap();
    }
}

fn i32_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// `test_connection`.
#[test]
fn connection() {
    each_method(|m| {
        let (conn, child_conn) = pipe::<Obj, Obj>().unwrap();
        let p = daemon_builder(m).spawn(echo, child_conn).unwrap();

        let seq = Obj::Seq(1, 2.25, None);
        let msg = b"hello world";
        let longmsg = msg.repeat(10);
        let arr = i32_bytes(&[0, 1, 2, 3]);

        conn.send(&seq).unwrap();
        assert_eq!(conn.recv().unwrap(), seq);

        conn.send_bytes(msg).unwrap();
        assert_eq!(conn.recv_bytes().unwrap(), msg);

        // `array.array('i', [0]*10)`: 40 bytes.
        let mut buffer = vec![0u8; 40];
        conn.send_bytes(&arr).unwrap();
        assert_eq!(conn.recv_bytes_into(&mut buffer).unwrap(), arr.len());
        assert_eq!(buffer, i32_bytes(&[0, 1, 2, 3, 0, 0, 0, 0, 0, 0]));

        let mut buffer = vec![0u8; 40];
        conn.send_bytes(&arr).unwrap();
        assert_eq!(
            conn.recv_bytes_into_at(&mut buffer, 3 * 4).unwrap(),
            arr.len()
        );
        assert_eq!(buffer, i32_bytes(&[0, 0, 0, 0, 1, 2, 3, 0, 0, 0]));

        let mut buffer = vec![b' '; 40];
        conn.send_bytes(&longmsg).unwrap();
        match conn.recv_bytes_into(&mut buffer) {
            Err(RecvIntoError::BufferTooShort(whole)) => assert_eq!(whole, longmsg),
            other => panic!("{m}: expected BufferTooShort, got {other:?}"),
        }

        assert!(!conn.poll(Some(Duration::ZERO)).unwrap());
        let t = Instant::now();
        assert!(!conn.poll(Some(TIMEOUT1)).unwrap());
        assert!(t.elapsed() >= TIMEOUT1, "returned early");

        conn.send(&Obj::None).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(conn.poll(Some(TIMEOUT1)).unwrap(), "{m}");
        assert_eq!(conn.recv().unwrap(), Obj::None);

        let really_big_msg = vec![b'X'; 16 << 20];
        conn.send_bytes(&really_big_msg).unwrap();
        assert!(conn.recv_bytes().unwrap() == really_big_msg, "{m}: 16 MiB");

        conn.send_bytes(SENTINEL).unwrap();
        assert!(conn.is_readable() && conn.is_writable());
        assert!(
            matches!(conn.recv(), Err(RecvError::Disconnected)),
            "{m}: EOFError"
        );
        assert!(
            matches!(conn.recv_bytes(), Err(RecvError::Disconnected)),
            "{m}: EOFError"
        );
        p.join().unwrap();
    });
}

/// `test_spawn_close`: the parent's copy of the child's end is closed as
/// soon as the child is started.
#[test]
fn spawn_close() {
    each_method(|m| {
        let (conn, child_conn) = pipe::<(), ()>().unwrap();
        let p = daemon_builder(m).spawn(echo, child_conn).unwrap();
        conn.send_bytes(b"hello").unwrap();
        assert_eq!(conn.recv_bytes().unwrap(), b"hello", "{m}");
        conn.send_bytes(SENTINEL).unwrap();
        drop(conn);
        p.join().unwrap();
    });
}

// ------------------------------------------------------------ _TestListener

/// One address of each family Python's `connection.families` has on
/// Linux (`AF_UNIX`, `AF_INET`), and an abstract one.
fn families() -> Vec<Address> {
    use std::os::unix::ffi::OsStrExt;
    let name = temp_path("abstract");
    vec![
        Address::Unix(temp_path("sock")),
        "127.0.0.1:0".parse().unwrap(),
        Address::Abstract(name.file_name().unwrap().as_bytes().to_vec()),
    ]
}

/// `test_multiple_bind`: a second listener on a bound address is an
/// `OSError`.
#[test]
fn multiple_bind() {
    deadline(LIMIT, || {
        for family in families() {
            let l = Listener::bind(&family, None).unwrap();
            let e = Listener::bind(l.address(), None).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{family}: {e}");
            // The first still works.
            let address = l.address().clone();
            let t = std::thread::spawn(move || {
                let c: Connection<u32, u32> = Client::connect(&address, None).unwrap();
                c.send(&1729).unwrap();
            });
            let d: Connection<u32, u32> = l.accept().unwrap();
            assert_eq!(d.recv().unwrap(), 1729, "{family}");
            t.join().unwrap();
        }
    });
}

/// `test_empty_authkey` (bpo-43952): an empty key is a key.
#[test]
fn empty_authkey() {
    deadline(LIMIT, || {
        for family in families() {
            let listener = Listener::bind(&family, Some(b"")).unwrap();
            let address = listener.address().clone();
            let t = std::thread::spawn(move || {
                let client: Connection<u32, u32> = Client::connect(&address, Some(b"")).unwrap();
                client.send(&1729).unwrap();
            });
            let d: Connection<u32, u32> = listener.accept().unwrap();
            assert_eq!(d.recv().unwrap(), 1729, "{family}");
            t.join().unwrap();
        }
    });
}

// ------------------------------------------------------ _TestListenerClient

/// `_TestListenerClient._test`: the address travels as text.
fn client_says_hello(address: String) {
    let address: Address = address.parse().unwrap();
    let conn: Connection<String, ()> = Client::connect(&address, None).unwrap();
    conn.send(&"hello".to_string()).unwrap();
}

/// `test_listener_client`.
#[test]
fn listener_client() {
    each_method(|m| {
        for family in families() {
            let l = Listener::bind(&family, None).unwrap();
            let p = daemon_builder(m)
                .spawn(client_says_hello, l.address().to_string())
                .unwrap();
            let conn: Connection<(), String> = l.accept().unwrap();
            assert_eq!(conn.recv().unwrap(), "hello", "{m} {family}");
            p.join().unwrap();
        }
    });
}

/// `test_issue14725`: the client has connected, written and closed (here:
/// exited, which is later than Python's one-second sleep) before `accept`.
#[test]
fn accept_after_the_client_left() {
    each_method(|m| {
        let l = Listener::bind(&families()[0], None).unwrap();
        let p = daemon_builder(m)
            .spawn(client_says_hello, l.address().to_string())
            .unwrap();
        p.join().unwrap();
        let conn: Connection<(), String> = l.accept().unwrap();
        assert_eq!(conn.recv().unwrap(), "hello", "{m}");
    });
}

/// `test_issue16955`: the client's `poll` sees what the server sent.
#[test]
fn client_poll_sees_a_message() {
    deadline(LIMIT, || {
        for family in families() {
            let l = Listener::bind(&family, None).unwrap();
            let address = l.address().clone();
            let t = std::thread::spawn(move || Client::connect::<(), ()>(&address, None).unwrap());
            let a: Connection<(), ()> = l.accept().unwrap();
            let c = t.join().unwrap();
            a.send_bytes(b"hello").unwrap();
            assert!(c.poll(Some(Duration::from_secs(1))).unwrap(), "{family}");
        }
    });
}

// ---------------------------------------------------------------- _TestPoll

/// `test_empty_string`: an empty message is a message.
#[test]
fn poll_empty_string() {
    let (a, b) = pipe::<(), ()>().unwrap();
    assert!(!a.poll(Some(Duration::ZERO)).unwrap());
    b.send_bytes(b"").unwrap();
    assert!(a.poll(Some(Duration::ZERO)).unwrap());
    assert!(a.poll(Some(Duration::ZERO)).unwrap());
    assert_eq!(a.recv_bytes().unwrap(), b"");
}

const STRINGS: [&[u8]; 8] = [b"hello", b"", b"a", b"b", b"", b"bye", b"", b"lop"];

/// `_child_strings`.
fn child_strings(conn: Connection<(), ()>) {
    for s in STRINGS {
        std::thread::sleep(Duration::from_millis(100));
        conn.send_bytes(s).unwrap();
    }
}

/// `test_strings`.
#[test]
fn poll_strings() {
    each_method(|m| {
        let (a, b) = pipe::<(), ()>().unwrap();
        let p = daemon_builder(m).spawn(child_strings, b).unwrap();
        for s in STRINGS {
            for _ in 0..200 {
                if a.poll(Some(Duration::from_millis(10))).unwrap() {
                    break;
                }
            }
            assert_eq!(a.recv_bytes().unwrap(), s, "{m}");
        }
        p.join().unwrap();
    });
}

/// `_child_boundaries`: polling a copy of the reading end must not pull
/// part of a message out of it.
fn child_boundaries(r: Connection<(), Vec<u8>>) -> bool {
    r.poll(Some(Duration::from_secs(5))).unwrap()
}

/// `test_boundaries` (the parent waits half a second, not two, before it
/// writes).
#[test]
fn poll_boundaries() {
    each_method(|m| {
        let (r, w) = pipe_oneway::<Vec<u8>>().unwrap();
        let (r_copy, _r_other) = {
            // A second handle on the same reading end, for the child: a
            // `Connection` is not `Clone`, so send it through a pipe.
            let (tx, rx) = pipe::<Connection<(), Vec<u8>>, Connection<(), Vec<u8>>>().unwrap();
            tx.send(&r).unwrap();
            (rx.recv().unwrap(), tx)
        };
        let p = daemon_builder(m).spawn(child_boundaries, r_copy).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let l: [&[u8]; 2] = [b"first", b"second"];
        for obj in l {
            w.send_bytes(obj).unwrap();
        }
        drop(w);
        assert!(p.join().unwrap(), "{m}: the child's poll saw nothing");
        let got = r.recv_bytes().unwrap();
        assert!(l.contains(&got.as_slice()), "{m}: {got:?}");
    });
}

/// `_child_dont_merge`.
fn child_dont_merge(b: Connection<(), ()>) {
    b.send_bytes(b"a").unwrap();
    b.send_bytes(b"b").unwrap();
    b.send_bytes(b"cd").unwrap();
}

/// `test_dont_merge`.
#[test]
fn poll_dont_merge() {
    each_method(|m| {
        let (a, b) = pipe::<(), ()>().unwrap();
        assert!(!a.poll(Some(Duration::ZERO)).unwrap());
        assert!(!a.poll(Some(TIMEOUT1)).unwrap());
        let p = daemon_builder(m).spawn(child_dont_merge, b).unwrap();
        let one = Some(Duration::from_secs(1));
        assert_eq!(a.recv_bytes().unwrap(), b"a", "{m}");
        assert!(a.poll(one).unwrap());
        assert!(a.poll(one).unwrap());
        assert_eq!(a.recv_bytes().unwrap(), b"b", "{m}");
        assert!(a.poll(one).unwrap());
        assert!(a.poll(one).unwrap());
        assert!(a.poll(Some(Duration::ZERO)).unwrap());
        assert_eq!(a.recv_bytes().unwrap(), b"cd", "{m}");
        p.join().unwrap();
    });
}
