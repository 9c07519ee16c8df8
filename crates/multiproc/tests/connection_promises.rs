//! The README's connection promises that no other test pinned down: a send
//! to a vanished peer is an error and never a SIGPIPE (even in a process
//! that has SIGPIPE's default action, which Rust's runtime hides by
//! ignoring it), and the default message size limit is 2 GiB on every
//! kind of connection.

mod common;

use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{LIMIT, deadline, temp_path};
use multiproc::{
    AcceptError, Address, AuthError, Client, Connection, Event, HANDSHAKE_TIMEOUT, JoinError,
    Listener, MAX_PENDING_HANDSHAKES, Process, RecvError, RecvTimeoutError, SendError, StartMethod,
    pipe, pipe_oneway, pipe_shared,
};

/// Sends on `conn` until the send fails (the peer is gone), for at most 5 s.
fn send_until_refused(conn: &Connection<Vec<u8>, ()>) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match conn.send(&vec![7u8; 1000]) {
            Ok(()) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Ok(()) => return Err("sends still succeed 5 s after the peer left".into()),
            Err(SendError::Disconnected) => return Ok(()),
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

/// In a process whose SIGPIPE has its default action (killing it), sends to
/// a pipe, a one-way pipe, a Unix socket and a TCP connection whose peer
/// has closed. Returns which kinds said `Disconnected`.
fn sends_to_closed_peers(_: ()) -> Result<Vec<String>, String> {
    // SAFETY: installing SIG_DFL runs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let mut done = Vec::new();

    let (ours, theirs) = pipe::<Vec<u8>, ()>().map_err(|e| e.to_string())?;
    drop(theirs);
    send_until_refused(&ours).map_err(|e| format!("pipe: {e}"))?;
    done.push("pipe".to_string());

    let (reader, writer) = pipe_oneway::<Vec<u8>>().map_err(|e| e.to_string())?;
    drop(reader);
    let start = Instant::now();
    loop {
        match writer.send(&vec![7u8; 1000]) {
            Ok(()) if start.elapsed() < Duration::from_secs(5) => {}
            Ok(()) => return Err("one-way: sends still succeed".into()),
            Err(SendError::Disconnected) => break,
            Err(e) => return Err(format!("one-way: {e:?}")),
        }
    }
    done.push("one-way pipe".to_string());

    for (kind, address) in [
        ("unix socket", Address::Unix(temp_path("sigpipe"))),
        ("tcp", "127.0.0.1:0".parse().unwrap()),
    ] {
        let listener = Listener::bind(&address, None).map_err(|e| e.to_string())?;
        let addr = listener.address().clone();
        let server = std::thread::spawn(move || listener.accept::<(), Vec<u8>>().map(drop));
        let client =
            Client::connect::<Vec<u8>, ()>(&addr, None).map_err(|e| format!("{kind}: {e}"))?;
        server.join().unwrap().map_err(|e| format!("{kind}: {e}"))?;
        send_until_refused(&client).map_err(|e| format!("{kind}: {e}"))?;
        done.push(kind.to_string());
    }
    Ok(done)
}

#[test]
fn a_send_to_a_vanished_peer_is_an_error_never_a_sigpipe() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let child = Process::builder()
                .start_method(m)
                .spawn(sends_to_closed_peers, ())
                .unwrap();
            match child.join() {
                Ok(Ok(kinds)) => {
                    assert_eq!(kinds, ["pipe", "one-way pipe", "unix socket", "tcp"], "{m}")
                }
                Ok(Err(e)) => panic!("{m}: {e}"),
                Err(JoinError::Signaled { signal, .. }) => {
                    panic!("{m}: the child died of {signal}")
                }
                Err(e) => panic!("{m}: {e:?}"),
            }
        }
    });
}

#[test]
fn the_default_message_limit_is_two_gibibytes() {
    deadline(LIMIT, || {
        const TWO_GIB: u64 = 2 << 30;
        // A socket connection: a raw peer announces one byte more than the
        // limit, through the extended header, and sends none of it.
        let path = temp_path("limit");
        let listener = Listener::bind(&Address::Unix(path.clone()), None).unwrap();
        let mut raw = UnixStream::connect(&path).unwrap();
        let conn = listener.accept::<(), ()>().unwrap();
        raw.write_all(&(-1i32).to_be_bytes()).unwrap();
        raw.write_all(&(TWO_GIB + 1).to_be_bytes()).unwrap();
        match conn.recv_bytes() {
            Err(RecvError::TooLarge { len, limit }) => {
                assert_eq!((len, limit), (TWO_GIB + 1, TWO_GIB))
            }
            other => panic!("{other:?}"),
        }

        // A pipe checks the same limit, set lower here so as not to send
        // 2 GiB: a message over it is refused, one at it arrives.
        let (a, b) = pipe::<(), ()>().unwrap();
        b.set_max_message_size(1000);
        a.send_bytes(&[1; 1000]).unwrap();
        assert_eq!(b.recv_bytes().unwrap().len(), 1000);
        a.send_bytes(&[1; 1001]).unwrap();
        match b.recv_bytes() {
            Err(RecvError::TooLarge { len, limit }) => assert_eq!((len, limit), (1001, 1000)),
            other => panic!("{other:?}"),
        }
    });
}

/// Holds nothing but the event it waits on.
fn wait_for(go: Event) -> bool {
    go.wait_timeout(LIMIT)
}

/// Under every start method: makes what `before` returns while this
/// process alone holds it, starts a child that is given none of it, runs
/// `check` on it while the child runs, then lets the child end.
fn with_a_child_given_nothing<T>(before: impl Fn() -> T, check: impl Fn(StartMethod, T)) {
    for m in StartMethod::ALL {
        let held = before();
        let go = Event::new().unwrap();
        let child = Process::builder()
            .start_method(m)
            .spawn(wait_for, go.clone())
            .unwrap();
        check(m, held);
        assert!(common::exists(child.pid()), "{m}: the child already ended");
        go.set();
        assert!(child.join().unwrap(), "{m}");
    }
}

#[test]
fn a_child_never_keeps_the_parents_end_of_a_pipe_open() {
    deadline(LIMIT, || {
        // Under fork, the child's copy of `theirs` is not kept (Python's
        // would be).
        with_a_child_given_nothing(
            || pipe::<u8, u8>().unwrap(),
            |m, (ours, theirs)| {
                drop(theirs);
                assert!(
                    matches!(
                        ours.recv_timeout(Duration::from_secs(20)),
                        Err(RecvTimeoutError::Recv(RecvError::Disconnected))
                    ),
                    "{m}"
                );
            },
        );
    });
}

#[test]
fn a_child_never_keeps_the_parents_ends_of_a_shared_pipe_open() {
    deadline(LIMIT, || {
        with_a_child_given_nothing(
            || (pipe_shared::<u8>().unwrap(), pipe_shared::<u8>().unwrap()),
            |m, ((rx, tx), (rx2, tx2))| {
                // Every sender gone: the receiver sees the end.
                drop(tx);
                assert!(
                    matches!(
                        rx.recv_timeout(Duration::from_secs(20)),
                        Err(RecvTimeoutError::Recv(RecvError::Disconnected))
                    ),
                    "{m}"
                );
                // The receiver gone: a send fails. (At once, but for the
                // moment another test's child, started with spawn, holds
                // copies of every descriptor before its `exec`.)
                drop(rx2);
                assert!(
                    common::eventually(Duration::from_secs(10), || matches!(
                        tx2.send(&1),
                        Err(SendError::Disconnected)
                    )),
                    "{m}"
                );
            },
        );
    });
}

#[test]
fn a_child_never_keeps_the_parents_listener_open() {
    use std::os::unix::ffi::OsStrExt;
    deadline(LIMIT, || {
        with_a_child_given_nothing(
            || {
                let name = temp_path("listener")
                    .file_name()
                    .unwrap()
                    .as_bytes()
                    .to_vec();
                let listener = Listener::bind(&Address::Abstract(name.clone()), Some(b"key"));
                // A client waiting in the backlog when the child starts.
                let at = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
                (listener.unwrap(), UnixStream::connect_addr(&at).unwrap())
            },
            |m, (listener, mut waiting)| {
                let address = listener.address().clone();
                drop(listener);
                // The name is free and nobody answers, while the child runs.
                assert!(
                    Client::connect::<(), ()>(&address, Some(b"key")).is_err(),
                    "{m}"
                );
                // The waiting client sees its connection closed.
                assert!(closed_within(&mut waiting, Duration::from_secs(10)), "{m}");
                // Free to bind again (but for another test's child about
                // to `exec`, as above).
                assert!(
                    common::eventually(Duration::from_secs(10), || Listener::bind(&address, None)
                        .is_ok()),
                    "{m}"
                );
            },
        );
    });
}

/// Whether the listener closed `sock` (end of stream) within `wait`.
fn closed_within(sock: &mut UnixStream, wait: Duration) -> bool {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match std::io::Read::read(sock, &mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn by_default_64_handshakes_wait_at_once_each_for_20_s() {
    deadline(LIMIT, || {
        assert_eq!(MAX_PENDING_HANDSHAKES, 64);
        assert_eq!(HANDSHAKE_TIMEOUT, Duration::from_secs(20));
        // A listener left at its defaults: 70 silent connections, then an
        // honest client. Taken in order with 64 at most pending, the 6
        // oldest are closed to make room, accept returns the honest client
        // without an error, and the newest silent ones are still waiting.
        let key: &[u8] = b"promises";
        let listener = Listener::bind(&Address::Unix(temp_path("cap64")), Some(key)).unwrap();
        let addr = listener.address().clone();
        let Address::Unix(path) = addr.clone() else {
            unreachable!()
        };
        let clients = std::thread::spawn(move || {
            let socks: Vec<UnixStream> = (0..70)
                .map(|_| UnixStream::connect(&path).unwrap())
                .collect();
            let good: Connection<(), ()> = Client::connect(&addr, Some(key)).unwrap();
            good.send_bytes(b"in").unwrap();
            (socks, good)
        });
        let conn: Connection<(), ()> = listener.accept().unwrap();
        assert_eq!(conn.recv_bytes().unwrap(), b"in");
        let (mut socks, _good) = clients.join().unwrap();
        let closed: Vec<bool> = socks
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_millis(20)))
            .collect();
        assert_eq!(closed[..6], [true; 6], "{closed:?}");
        assert_eq!(closed[7..], [false; 63], "{closed:?}");
        drop(listener);
        for s in &mut socks[7..] {
            assert!(closed_within(s, Duration::from_secs(10)));
        }
    });
}

/// Receives a connection through a one-way pipe and answers through it.
fn answer_through(rx: Connection<(), Connection<u8, u8>>) -> bool {
    match rx.recv() {
        Ok(conn) => conn.send(&conn.recv().unwrap_or(0).wrapping_add(1)).is_ok(),
        Err(_) => false,
    }
}

#[test]
fn one_way_pipes_carry_handles() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (rx, tx) = pipe_oneway::<Connection<u8, u8>>().unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(answer_through, rx)
                .unwrap();
            let (ours, theirs) = pipe::<u8, u8>().unwrap();
            tx.send(&theirs).unwrap();
            drop(theirs);
            ours.send(&41).unwrap();
            assert_eq!(ours.recv().unwrap(), 42, "{m}");
            assert!(child.join().unwrap(), "{m}");
        }
    });
}

/// Reads one frame of CPython's framing (a 4-byte big-endian length).
fn read_frame(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    std::io::Read::read_exact(s, &mut len).unwrap();
    let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
    std::io::Read::read_exact(s, &mut buf).unwrap();
    buf
}

#[test]
fn a_malformed_handshake_or_a_client_leaving_half_way_is_an_accept_error() {
    deadline(LIMIT, || {
        let path = temp_path("halfway");
        let listener = Listener::bind(&Address::Unix(path.clone()), Some(b"key")).unwrap();

        // Leaves after reading the challenge.
        let mut raw = UnixStream::connect(&path).unwrap();
        let leaver = std::thread::spawn(move || {
            let challenge = read_frame(&mut raw);
            assert!(challenge.starts_with(b"#CHALLENGE#"), "{challenge:?}");
        });
        match listener.accept::<(), ()>() {
            Err(AcceptError::Auth(e)) => assert!(
                matches!(e, AuthError::Recv(RecvError::Disconnected)),
                "{e:?}"
            ),
            other => panic!("{other:?}"),
        }
        leaver.join().unwrap();

        // Answers the challenge with a frame that is no digest.
        let mut raw = UnixStream::connect(&path).unwrap();
        let garbler = std::thread::spawn(move || {
            let _ = read_frame(&mut raw);
            raw.write_all(&5i32.to_be_bytes()).unwrap();
            raw.write_all(b"hello").unwrap();
            raw
        });
        match listener.accept::<(), ()>() {
            Err(AcceptError::Auth(AuthError::Protocol(_) | AuthError::PeerRejected)) => {}
            other => panic!("{other:?}"),
        }
        drop(garbler.join().unwrap());

        // The listener goes on serving.
        let addr = listener.address().clone();
        let client = std::thread::spawn(move || {
            let c: Connection<u8, u8> = Client::connect(&addr, Some(b"key")).unwrap();
            c.send(&7).unwrap();
            c
        });
        let conn: Connection<u8, u8> = listener.accept().unwrap();
        assert_eq!(conn.recv().unwrap(), 7);
        drop(client.join().unwrap());
    });
}
