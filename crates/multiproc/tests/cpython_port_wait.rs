//! Ports of CPython's `TestWait`, `TestTimeouts`, `OtherTest` and
//! `TestInvalidHandle` (`Lib/test/_test_multiprocessing.py`) to the Rust
//! API: what Python asserts, adapted to Rust types (`connection.wait` is
//! [`multiproc::wait`], which returns indices instead of the objects;
//! `p.sentinel` is the `Process` itself; `EOFError` is
//! `RecvError::Disconnected`; `AuthenticationError` is an `AuthError`).
//!
//! `TestWait.test_wait_integer` is also partly ported by
//! `connection_conformance.rs` (`wait_reports_every_ready_object_not_just_the_first`);
//! here it is whole, with the child still running during the first wait.
//! `TestInvalidHandle.test_invalid_handles` has no direct counterpart: no
//! safe function makes a `Connection` from a descriptor number. The
//! nearest cases are a forged connection in a message
//! (`forged_connections_are_refused`) and using a connection whose peer
//! is gone (`poll_and_wait_on_a_connection_whose_peer_is_gone`).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{LIMIT, deadline, temp_path};
use multiproc::{
    AcceptError, Address, AuthError, Client, ConnectError, Connection, Listener, Process,
    RecvError, Semaphore, StartMethod, Waitable, pipe, pipe_oneway, wait,
};

/// A pseudo-random sleep of up to 100 ms (Python: `random.random() * 0.100`).
fn random_sleep(state: &mut u64) {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    std::thread::sleep(Duration::from_micros((*state >> 33) % 100_000));
}

// ------------------------------------------------------------------ TestWait

/// `TestWait._child_test_wait`: sends `(i, pid)` ten times, then closes.
fn child_test_wait((w, slow): (Connection<(u32, i32), ()>, bool)) {
    let pid = std::process::id() as i32;
    let mut state = pid as u64;
    for i in 0..10 {
        if slow {
            random_sleep(&mut state);
        }
        w.send(&(i, pid)).unwrap();
    }
}

/// `TestWait.test_wait(slow)`.
fn test_wait(slow: bool) {
    deadline(LIMIT, move || {
        let mut readers = Vec::new();
        let mut procs = Vec::new();
        for _ in 0..4 {
            let (r, w) = pipe_oneway::<(u32, i32)>().unwrap();
            let p = Process::builder()
                .daemon(true)
                .spawn(child_test_wait, (w, slow))
                .unwrap();
            readers.push(r);
            procs.push(p);
        }

        let mut messages = Vec::new();
        while !readers.is_empty() {
            let objects: Vec<&dyn Waitable> = readers.iter().map(|r| r as &dyn Waitable).collect();
            let ready = wait(&objects, None).unwrap();
            assert!(!ready.is_empty(), "wait without a timeout returned nothing");
            let mut closed = Vec::new();
            for i in ready {
                match readers[i].recv() {
                    Ok(msg) => messages.push(msg),
                    Err(RecvError::Disconnected) => closed.push(i),
                    Err(e) => panic!("{e:?}"),
                }
            }
            for i in closed.into_iter().rev() {
                readers.remove(i);
            }
        }

        messages.sort();
        let mut expected: Vec<(u32, i32)> = (0..10)
            .flat_map(|i| procs.iter().map(move |p| (i, p.pid())))
            .collect();
        expected.sort();
        assert_eq!(messages, expected);
        for p in procs {
            p.join().unwrap();
        }
    });
}

/// `test_wait`.
#[test]
fn wait_fast() {
    test_wait(false);
}

/// `test_wait_slow`.
#[test]
fn wait_slow() {
    test_wait(true);
}

/// `TestWait._child_test_wait`, writing to a shared sender.
fn child_test_wait_shared(w: multiproc::SharedSender<(u32, i32)>) {
    let pid = std::process::id() as i32;
    for i in 0..10 {
        w.send(&(i, pid)).unwrap();
    }
}

/// `test_wait` with one shared pipe that the four children write to (the
/// way Python's test would share one `Pipe(duplex=False)` writer): the
/// reader is ready for each message, then for the end of the stream once
/// every sender is gone.
#[test]
fn wait_shared() {
    deadline(LIMIT, || {
        let (r, w) = multiproc::pipe_shared::<(u32, i32)>().unwrap();
        let procs: Vec<_> = (0..4)
            .map(|_| {
                Process::builder()
                    .daemon(true)
                    .spawn(child_test_wait_shared, w.clone())
                    .unwrap()
            })
            .collect();
        drop(w);
        let mut messages = Vec::new();
        loop {
            assert_eq!(wait(&[&r], None).unwrap(), vec![0]);
            match r.recv() {
                Ok(msg) => messages.push(msg),
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        messages.sort();
        let mut expected: Vec<(u32, i32)> = (0..10)
            .flat_map(|i| procs.iter().map(move |p| (i, p.pid())))
            .collect();
        expected.sort();
        assert_eq!(messages, expected);
        for p in procs {
            p.join().unwrap();
        }
    });
}

/// Holds its end of a pipe until killed.
fn hold(c: Connection<u8, u8>) {
    let _c = c;
    std::thread::sleep(Duration::from_secs(60));
}

/// `wait` on a pipe whose peer process is killed (Python: the reader
/// becomes ready, and `recv` raises `EOFError`), under every start method.
#[test]
fn wait_on_a_pipe_whose_peer_is_killed() {
    deadline(LIMIT, || {
        for method in StartMethod::ALL {
            let (a, b) = pipe::<u8, u8>().unwrap();
            let p = Process::builder()
                .start_method(method)
                .spawn(hold, b)
                .unwrap();
            assert_eq!(
                wait(&[&a], Some(Duration::from_millis(100))).unwrap(),
                Vec::<usize>::new()
            );
            p.kill().unwrap();
            assert_eq!(
                wait(&[&a], Some(Duration::from_secs(20))).unwrap(),
                vec![0],
                "{method}"
            );
            assert!(matches!(a.recv(), Err(RecvError::Disconnected)), "{method}");
            assert!(matches!(
                p.join(),
                Err(multiproc::JoinError::Signaled { .. })
            ));
        }
    });
}

/// A plain socket for [`wait`]: only its descriptor (Python's `wait`
/// takes any object with `fileno()`).
struct Sock(TcpStream);

impl Waitable for Sock {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// `TestWait._child_test_wait_socket`.
fn child_test_wait_socket((address, slow): (String, bool)) {
    let mut s = TcpStream::connect(address).unwrap();
    let mut state = std::process::id() as u64;
    for i in 0..10 {
        if slow {
            random_sleep(&mut state);
        }
        s.write_all(format!("{i}\n").as_bytes()).unwrap();
    }
}

/// `TestWait.test_wait_socket(slow)`.
fn test_wait_socket(slow: bool) {
    deadline(LIMIT, move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let procs: Vec<_> = (0..4)
            .map(|_| {
                Process::builder()
                    .daemon(true)
                    .spawn(child_test_wait_socket, (addr.clone(), slow))
                    .unwrap()
            })
            .collect();
        let mut readers: Vec<(Sock, Vec<u8>)> = (0..4)
            .map(|_| (Sock(l.accept().unwrap().0), Vec::new()))
            .collect();
        drop(l);

        let mut done = Vec::new();
        while !readers.is_empty() {
            let objects: Vec<&dyn Waitable> =
                readers.iter().map(|(r, _)| r as &dyn Waitable).collect();
            let ready = wait(&objects, None).unwrap();
            assert!(!ready.is_empty());
            let mut closed = Vec::new();
            for i in ready {
                let mut buf = [0u8; 32];
                let n = readers[i].0.0.read(&mut buf).unwrap();
                if n == 0 {
                    closed.push(i);
                } else {
                    readers[i].1.extend_from_slice(&buf[..n]);
                }
            }
            for i in closed.into_iter().rev() {
                done.push(readers.remove(i).1);
            }
        }

        let expected: String = (0..10).map(|i| format!("{i}\n")).collect();
        assert_eq!(done.len(), 4);
        for v in done {
            assert_eq!(String::from_utf8(v).unwrap(), expected);
        }
        for p in procs {
            p.join().unwrap();
        }
    });
}

/// `test_wait_socket`.
#[test]
fn wait_socket() {
    test_wait_socket(false);
}

/// `test_wait_socket_slow`.
#[test]
fn wait_socket_slow() {
    test_wait_socket(true);
}

/// `test_wait_timeout` (half a second instead of five).
#[test]
fn wait_timeout() {
    deadline(LIMIT, || {
        let timeout = Duration::from_millis(500);
        let (a, b) = pipe::<(), ()>().unwrap();

        let start = Instant::now();
        let res = wait(&[&a, &b], Some(timeout)).unwrap();
        let delta = start.elapsed();
        assert_eq!(res, Vec::<usize>::new());
        assert!(delta >= timeout, "{delta:?}");

        b.send(&()).unwrap();
        assert_eq!(
            wait(&[&a, &b], Some(Duration::from_secs(20))).unwrap(),
            vec![0]
        );
    });
}

/// `TestWait.signal_and_sleep`.
fn signal_and_sleep((sem, period_ms): (Semaphore, u64)) {
    sem.release();
    std::thread::sleep(Duration::from_millis(period_ms));
}

/// `test_wait_integer` (the child sleeps one second instead of three; no
/// upper bounds on how long the waits took).
#[test]
fn wait_integer() {
    deadline(LIMIT, || {
        let expected = Duration::from_secs(1);
        for method in StartMethod::ALL {
            let sem = Semaphore::new(0).unwrap();
            let (a, b) = pipe::<(), ()>().unwrap();
            let p = Process::builder()
                .start_method(method)
                .spawn(signal_and_sleep, (sem.clone(), expected.as_millis() as u64))
                .unwrap();
            assert!(sem.acquire_timeout(Duration::from_secs(20)), "{method}");

            let start = Instant::now();
            let res = wait(&[&a, &p, &b], Some(expected + Duration::from_secs(20))).unwrap();
            let delta = start.elapsed();
            assert_eq!(res, vec![1], "{method}");
            // The child slept `expected` after its release; allow for the
            // time between the release and the wait's start.
            assert!(
                delta + Duration::from_millis(500) > expected,
                "{method}: {delta:?}"
            );

            a.send(&()).unwrap();
            assert_eq!(
                wait(&[&a, &p, &b], Some(Duration::from_secs(20))).unwrap(),
                vec![1, 2],
                "{method}"
            );

            b.send(&()).unwrap();
            assert_eq!(
                wait(&[&a, &p, &b], Some(Duration::from_secs(20))).unwrap(),
                vec![0, 1, 2],
                "{method}"
            );

            p.terminate().unwrap();
            p.join().unwrap();
        }
    });
}

/// `test_neg_timeout`: a `Duration` cannot be negative; zero is the
/// nearest, and returns at once with nothing ready.
#[test]
fn zero_timeout() {
    deadline(LIMIT, || {
        let (a, _b) = pipe::<(), ()>().unwrap();
        assert_eq!(
            wait(&[&a], Some(Duration::ZERO)).unwrap(),
            Vec::<usize>::new()
        );
    });
}

/// Python's `wait([], timeout)` sleeps out the timeout and returns `[]`.
#[test]
fn wait_on_nothing_sleeps_out_the_timeout() {
    deadline(LIMIT, || {
        let start = Instant::now();
        assert_eq!(
            wait(&[], Some(Duration::from_millis(100))).unwrap(),
            Vec::<usize>::new()
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
    });
}

fn send_later(w: Connection<u8, ()>) {
    std::thread::sleep(Duration::from_millis(100));
    w.send(&1).unwrap();
}

/// A timeout too large for any clock (Python: `wait(objs, 1e300)`) is
/// waiting without a limit: `wait` and `poll` return when a message comes.
#[test]
fn an_enormous_timeout_waits_until_ready() {
    deadline(LIMIT, || {
        for huge in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
            let (r, w) = pipe_oneway::<u8>().unwrap();
            let p = Process::spawn(send_later, w).unwrap();
            assert!(r.poll(Some(huge)).unwrap());
            assert_eq!(wait(&[&r, &p], Some(huge)).unwrap()[0], 0);
            assert_eq!(r.recv().unwrap(), 1);
            // Then the child exits: its end closes (a ready end of stream),
            // and the process becomes ready.
            assert_eq!(wait(&[&p], Some(huge)).unwrap(), vec![0]);
            assert_eq!(wait(&[&r, &p], Some(huge)).unwrap(), vec![0, 1]);
            p.join().unwrap();
        }
    });
}

/// Not in `TestWait`, which waits on plain sockets only: a `Listener` is
/// ready once a client is waiting to be accepted, and stays ready until
/// it is.
#[test]
fn wait_on_a_listener() {
    deadline(LIMIT, || {
        let listener = Listener::bind(&Address::Unix(temp_path("wait-listener")), None).unwrap();
        let (a, _b) = pipe::<(), ()>().unwrap();
        assert_eq!(
            wait(&[&listener, &a], Some(Duration::from_millis(100))).unwrap(),
            Vec::<usize>::new()
        );
        let addr = listener.address().clone();
        let client = std::thread::spawn(move || {
            let c: Connection<u8, u8> = Client::connect(&addr, None).unwrap();
            c.send(&9).unwrap();
            c
        });
        assert_eq!(
            wait(&[&a, &listener], Some(Duration::from_secs(20))).unwrap(),
            vec![1]
        );
        assert_eq!(
            wait(&[&a, &listener], Some(Duration::ZERO)).unwrap(),
            vec![1]
        );
        let conn: Connection<u8, u8> = listener.accept().unwrap();
        assert_eq!(conn.recv().unwrap(), 9);
        drop(client.join().unwrap());
    });
}

/// A keyed listener takes every client waiting in its backlog and runs
/// their handshakes together: a client whose handshake the first `accept`
/// began but did not finish has left the backlog. The listener is still
/// ready for `wait` (Python's listener keeps such a client in its
/// backlog, where its socket says so), and `accept` returns it.
#[test]
fn wait_on_a_listener_with_a_handshake_under_way() {
    deadline(LIMIT, || {
        for _ in 0..3 {
            let path = temp_path("wait-batch");
            let listener = Listener::bind(&Address::Unix(path), Some(b"abc")).unwrap();
            let clients: Vec<_> = (0..2u8)
                .map(|i| {
                    let addr = listener.address().clone();
                    std::thread::spawn(move || {
                        let c: Connection<u8, u8> = Client::connect(&addr, Some(b"abc")).unwrap();
                        c.send(&i).unwrap();
                        c
                    })
                })
                .collect();
            // Both connect before the first accept, which takes both.
            std::thread::sleep(Duration::from_millis(100));
            let first: Connection<u8, u8> = listener.accept().unwrap();
            assert_eq!(
                wait(&[&listener], Some(Duration::from_secs(20))).unwrap(),
                vec![0]
            );
            let second: Connection<u8, u8> = listener.accept().unwrap();
            let mut got = [first.recv().unwrap(), second.recv().unwrap()];
            got.sort();
            assert_eq!(got, [0, 1]);
            for c in clients {
                drop(c.join().unwrap());
            }
        }
    });
}

// -------------------------------------------------------------- TestTimeouts

/// `TestTimeouts._test_timeout`.
fn child_test_timeout((child, address): (Connection<u32, ()>, String)) {
    std::thread::sleep(Duration::from_millis(300));
    child.send(&123).unwrap();
    drop(child);
    let address: Address = address.parse().unwrap();
    let conn: Connection<u32, ()> = Client::connect(&address, None).unwrap();
    conn.send(&456).unwrap();
}

/// `TestTimeouts.test_timeout`: Python sets a 0.1 s default socket timeout
/// and checks that a receive and an accept that wait longer still work.
/// Rust has no default socket timeout; the nearest setting is the
/// listener's handshake timeout, set to 0.1 s: it counts from the
/// client's arrival, not from `accept`'s start.
#[test]
fn timeout() {
    deadline(LIMIT, || {
        let (parent, child) = pipe::<(), u32>().unwrap();
        let mut l = Listener::bind(&Address::Tcp("127.0.0.1:0".parse().unwrap()), None).unwrap();
        l.set_handshake_timeout(Duration::from_millis(100));
        let p = Process::spawn(child_test_timeout, (child, l.address().to_string())).unwrap();
        assert_eq!(parent.recv().unwrap(), 123);
        drop(parent);
        let conn: Connection<(), u32> = l.accept().unwrap();
        assert_eq!(conn.recv().unwrap(), 456);
        drop(conn);
        drop(l);
        p.join().unwrap();
    });
}

// ----------------------------------------------------------------- OtherTest

fn read_frame(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn write_frame(s: &mut UnixStream, data: &[u8]) {
    s.write_all(&(data.len() as u32).to_be_bytes()).unwrap();
    s.write_all(data).unwrap();
}

/// `test_deliver_challenge_auth_failure`: answers that are no digest, or a
/// wrong one, are refused with `#FAILURE#` and an `AuthError`, and the
/// listener goes on serving.
#[test]
fn deliver_challenge_auth_failure() {
    deadline(LIMIT, || {
        let path = temp_path("deliver");
        let listener = Listener::bind(&Address::Unix(path.clone()), Some(b"abc")).unwrap();
        let answers: [&[u8]; 6] = [
            b"something bogus",
            b"",
            b"{sha256}",
            b"{sha256}0123456789abcdef0123456789abcdef",
            b"{md5}0123456789abcdef",
            b"{nosuchdigest}0123456789abcdef0123456789abcdef",
        ];
        for answer in answers {
            let mut raw = UnixStream::connect(&path).unwrap();
            let peer = std::thread::spawn(move || {
                let challenge = read_frame(&mut raw);
                assert!(challenge.starts_with(b"#CHALLENGE#"), "{challenge:?}");
                write_frame(&mut raw, answer);
                // What the listener says before closing, if anything.
                let mut rest = Vec::new();
                let _ = raw.read_to_end(&mut rest);
                rest
            });
            match listener.accept::<(), ()>() {
                Err(AcceptError::Auth(AuthError::PeerRejected | AuthError::Protocol(_))) => {}
                other => panic!("{answer:?}: {other:?}"),
            }
            let rest = peer.join().unwrap();
            // Python's `deliver_challenge` says `#FAILURE#`, then raises.
            assert_eq!(rest, b"\0\0\0\t#FAILURE#", "{answer:?}");
        }
        let addr = listener.address().clone();
        let client = std::thread::spawn(move || {
            let c: Connection<u8, u8> = Client::connect(&addr, Some(b"abc")).unwrap();
            c.send(&1).unwrap();
            c
        });
        let conn: Connection<u8, u8> = listener.accept().unwrap();
        assert_eq!(conn.recv().unwrap(), 1);
        drop(client.join().unwrap());
    });
}

/// `test_answer_challenge_auth_failure`: a server that sends a challenge
/// (Python's fake sends the bare `#CHALLENGE#`; here also ones with a
/// message) and then something bogus instead of `#WELCOME#` fails the
/// client's connect.
#[test]
fn answer_challenge_auth_failure() {
    deadline(LIMIT, || {
        // Empty, current (3.12+), legacy (3.11: 20 bytes, HMAC-MD5), and
        // an unprefixed message of another length, which Python 3.12+
        // refuses before answering ("unsupported message length").
        // Empty, current (3.12+), legacy (3.11: 20 bytes, HMAC-MD5), and
        // an unprefixed message of another length. Python 3.12+ refuses
        // the first and the last before answering ("unsupported message
        // length"), and answers the others, then refuses the bogus reply.
        let challenges: [(&[u8], bool); 4] = [
            (b"#CHALLENGE#", false),
            (b"#CHALLENGE#{sha256}0123456789abcdef0123456789abcdef", true),
            (b"#CHALLENGE#0123456789abcdef0123", true),
            (b"#CHALLENGE#0123456789abcdef0123456789abcdef", false),
        ];
        for (challenge, answered) in challenges {
            let path = temp_path("answer");
            let server = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let fake = std::thread::spawn(move || {
                let (mut s, _) = server.accept().unwrap();
                write_frame(&mut s, challenge);
                // Take the answer, if the client sent one.
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).is_ok() {
                    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
                    let _ = s.read_exact(&mut buf);
                    let _ = s.write_all(&15u32.to_be_bytes());
                    let _ = s.write_all(b"something bogus");
                }
                // Keep the stream open until the client gave up.
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            });
            let got = Client::connect::<(), ()>(&Address::Unix(path.clone()), Some(b"abc"));
            match got {
                Err(ConnectError::Auth(AuthError::KeyRejected)) if answered => {}
                Err(ConnectError::Auth(AuthError::Protocol(_))) if !answered => {}
                other => panic!("{challenge:?}: {other:?}"),
            }
            fake.join().unwrap();
            let _ = std::fs::remove_file(&path);
        }
    });
}

// --------------------------------------------------------- TestInvalidHandle

/// `test_invalid_handles`, as far as a safe API allows: Python's
/// `Connection(44977608)` names a descriptor that is not open. Here a
/// connection arrives only inside a message, with its descriptor beside
/// it; bytes that claim to be one without a descriptor (every one- and
/// two-byte message, and some longer ones) are refused with an error,
/// never a connection on some other descriptor, and the pipe then carries
/// a real one.
#[test]
fn forged_connections_are_refused() {
    deadline(LIMIT, || {
        let (a, b) = pipe::<Connection<u8, u8>, Connection<u8, u8>>().unwrap();
        let mut forged: Vec<Vec<u8>> = (0..=255u8).map(|x| vec![x]).collect();
        for x in 0..=255u8 {
            forged.extend([vec![x, 0], vec![0, x], vec![1, x], vec![x; 4]]);
        }
        forged.push(vec![0xff; 16]);
        for bytes in &forged {
            b.send_bytes(bytes).unwrap();
            match a.recv() {
                Err(RecvError::Decode(_) | RecvError::Garbage(_)) => {}
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        let (ours, theirs) = pipe::<u8, u8>().unwrap();
        b.send(&theirs).unwrap();
        drop(theirs);
        let got = a.recv().unwrap();
        got.send(&5).unwrap();
        assert_eq!(ours.recv().unwrap(), 5);
    });
}

/// The nearest counterpart of `test_invalid_handles` (see the module's
/// comment): `poll` on a connection whose peer is gone does not fail
/// (Python: the end of the stream is ready), `wait` reports it, and `recv`
/// then says `Disconnected` (Python's `EOFError`), every time.
#[test]
fn poll_and_wait_on_a_connection_whose_peer_is_gone() {
    deadline(LIMIT, || {
        let (a, b) = pipe::<u8, u8>().unwrap();
        b.send(&3).unwrap();
        drop(b);
        assert!(a.poll(Some(Duration::ZERO)).unwrap());
        assert_eq!(a.recv().unwrap(), 3);
        assert!(a.poll(Some(Duration::from_secs(20))).unwrap());
        assert_eq!(wait(&[&a], Some(Duration::from_secs(20))).unwrap(), vec![0]);
        for _ in 0..2 {
            assert!(matches!(a.recv(), Err(RecvError::Disconnected)));
        }
        assert!(matches!(
            a.send(&1),
            Err(multiproc::SendError::Disconnected)
        ));
    });
}

/// Writing to a pipe whose reader is gone (Python: `BrokenPipeError`, an
/// `OSError`): a shared sender's send fails with `Disconnected` at once;
/// a ring pipe's within a few milliseconds (the README: it asks the
/// kernel whether its peer is there at most once a millisecond, and a
/// message sent before that is accepted and lost). Never SIGPIPE.
#[test]
fn sending_after_the_reader_is_gone() {
    deadline(LIMIT, || {
        let (r, w) = multiproc::pipe_shared::<u8>().unwrap();
        let (r2, w2) = pipe_oneway::<u8>().unwrap();
        drop((r, r2));
        for _ in 0..2 {
            assert!(matches!(
                w.send(&1),
                Err(multiproc::SendError::Disconnected)
            ));
        }
        assert!(common::eventually(Duration::from_secs(20), || {
            match w2.send(&1) {
                Ok(()) => false,
                Err(multiproc::SendError::Disconnected) => true,
                Err(e) => panic!("{e:?}"),
            }
        }));
        assert!(matches!(
            w2.send(&1),
            Err(multiproc::SendError::Disconnected)
        ));
    });
}
