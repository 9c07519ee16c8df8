//! Connections under attack and accident: a peer killed mid-conversation, a
//! stream cut mid-message, oversized and garbage frames, undecodable
//! payloads, wrong auth keys. Each is a typed error; nothing hangs, panics
//! or allocates what the peer did not send.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{LIMIT, deadline, temp_path};
use multiproc::{
    AcceptError, Address, AuthError, Client, ConnectError, Connection, JoinError, Listener,
    Process, RecvError, SendError, Signal, StartMethod, pipe,
};

/// A listener on a fresh Unix path, and a raw client socket connected to it.
fn raw_peer() -> (Connection<String, String>, UnixStream) {
    let path = temp_path("raw");
    let listener = Listener::bind(&Address::Unix(path.clone()), None).unwrap();
    let raw = UnixStream::connect(&path).unwrap();
    (listener.accept().unwrap(), raw)
}

fn wait_forever(conn: Connection<String, String>) {
    let _ = conn.send(&"ready".to_string());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_peer_killed_mid_conversation_is_disconnected_at_once() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (ours, theirs) = pipe::<String, String>().unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(wait_forever, theirs)
                .unwrap();
            assert_eq!(ours.recv().unwrap(), "ready");
            child.kill().unwrap();
            let t = Instant::now();
            assert!(matches!(ours.recv(), Err(RecvError::Disconnected)), "{m}");
            assert!(t.elapsed() < Duration::from_secs(10), "{m}");
            // Sending to a dead peer is an error, not a SIGPIPE that kills us.
            assert!(
                matches!(
                    ours.send(&"anyone?".to_string()),
                    Err(SendError::Disconnected)
                ),
                "{m}"
            );
            match child.join() {
                Err(JoinError::Signaled {
                    signal: Signal::KILL,
                    ..
                }) => {}
                other => panic!("{m}: {other:?}"),
            }
        }
    });
}

/// Sends one message larger than the pipe's ring, then waits.
fn send_big_then_wait(conn: Connection<(), ()>) {
    let _ = conn.send_bytes(&vec![1u8; 64 << 20]);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_pipe_sender_killed_mid_message_leaves_it_truncated() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (ours, theirs) = pipe::<(), ()>().unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(send_big_then_wait, theirs)
                .unwrap();
            // The first pieces fill the ring; then the child waits for room.
            assert!(ours.poll(Some(LIMIT)).unwrap(), "{m}");
            child.kill().unwrap();
            match child.join() {
                Err(JoinError::Signaled {
                    signal: Signal::KILL,
                    ..
                }) => {}
                other => panic!("{m}: {other:?}"),
            }
            match ours.recv_bytes() {
                Err(RecvError::Truncated { got, expected }) => {
                    assert!(got > 0 && got < expected, "{m}: {got} of {expected}");
                    assert_eq!(expected, 64 << 20, "{m}");
                }
                other => panic!("{m}: {other:?}"),
            }
        }
    });
}

#[test]
fn sending_to_a_killed_pipe_peer_that_never_received_fails() {
    deadline(LIMIT, || {
        let (ours, theirs) = pipe::<String, String>().unwrap();
        let child = Process::spawn(wait_forever, theirs).unwrap();
        assert_eq!(ours.recv().unwrap(), "ready");
        child.kill().unwrap();
        assert!(child.join().is_err());
        // The child never sleeps in a receive, so nothing rings; the sender
        // notices the closed lifeline within a millisecond of its next send.
        let start = Instant::now();
        loop {
            match ours.send(&"anyone?".to_string()) {
                Ok(()) => {
                    assert!(start.elapsed() < Duration::from_secs(5));
                    std::thread::sleep(Duration::from_micros(300));
                }
                Err(SendError::Disconnected) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
    });
}

#[test]
fn a_stream_cut_mid_message_is_truncated() {
    deadline(LIMIT, || {
        let (conn, mut raw) = raw_peer();
        raw.write_all(&100i32.to_be_bytes()).unwrap();
        raw.write_all(&[1; 10]).unwrap();
        drop(raw);
        match conn.recv_bytes() {
            Err(RecvError::Truncated {
                got: 14,
                expected: 104,
            }) => {}
            other => panic!("{other:?}"),
        }
        // Half a length prefix is truncated too.
        let (conn, mut raw) = raw_peer();
        raw.write_all(&[0, 0]).unwrap();
        drop(raw);
        assert!(matches!(
            conn.recv_bytes(),
            Err(RecvError::Truncated {
                got: 2,
                expected: 4
            })
        ));
    });
}

#[test]
fn an_oversized_frame_is_refused_before_allocation() {
    deadline(LIMIT, || {
        let (conn, mut raw) = raw_peer();
        conn.set_max_message_size(1 << 20);
        // Claims 1.5 GiB through the extended header; sends 3 bytes of it.
        raw.write_all(&(-1i32).to_be_bytes()).unwrap();
        raw.write_all(&(3u64 << 29).to_be_bytes()).unwrap();
        raw.write_all(b"abc").unwrap();
        match conn.recv_bytes() {
            Err(RecvError::TooLarge { len, limit }) => assert_eq!((len, limit), (3 << 29, 1 << 20)),
            other => panic!("{other:?}"),
        }
        // The stream has lost its place: later reads fail instead of
        // reading payload bytes as lengths.
        assert!(matches!(conn.recv_bytes(), Err(RecvError::Garbage(_))));
    });
}

#[test]
fn a_forged_length_allocates_only_what_arrives() {
    deadline(LIMIT, || {
        // Under the default 2 GiB limit a 1.9 GiB claim is allowed, but the
        // receiver must not reserve it: it reads 10 bytes, then the end.
        let (conn, mut raw) = raw_peer();
        raw.write_all(&(1_900_000_000i32).to_be_bytes()).unwrap();
        raw.write_all(&[0; 10]).unwrap();
        drop(raw);
        let before = rss_kib();
        assert!(matches!(
            conn.recv_bytes(),
            Err(RecvError::Truncated { .. })
        ));
        let grown = rss_kib().saturating_sub(before);
        assert!(
            grown < 256 * 1024,
            "reading a forged length grew memory by {grown} KiB"
        );
    });
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn garbage_lengths_are_garbage() {
    deadline(LIMIT, || {
        let (conn, mut raw) = raw_peer();
        raw.write_all(&(-7i32).to_be_bytes()).unwrap();
        assert!(matches!(conn.recv_bytes(), Err(RecvError::Garbage(_))));
    });
}

#[test]
fn an_undecodable_payload_is_a_decode_error_and_the_connection_survives() {
    deadline(LIMIT, || {
        let (ours, theirs) = pipe::<(), String>().unwrap();
        let raw: Connection<String, ()> = theirs;
        // A typed message is a handle count, then postcard: this claims a
        // string of 127 bytes and ends after 2.
        raw.send_bytes(&[0, 0x7f, b'a', b'b']).unwrap();
        assert!(matches!(ours.recv(), Err(RecvError::Decode(_))));
        raw.send(&"still fine".to_string()).unwrap();
        assert_eq!(ours.recv().unwrap(), "still fine");
        // An empty message is not a value either.
        raw.send_bytes(&[]).unwrap();
        assert!(matches!(ours.recv(), Err(RecvError::Garbage(_))));
        // A message that announces handles it does not carry.
        raw.send_bytes(&[3, 0]).unwrap();
        assert!(matches!(ours.recv(), Err(RecvError::Garbage(_))));
    });
}

#[test]
fn the_wrong_type_is_a_decode_error() {
    deadline(LIMIT, || {
        // Two programs that disagree on the message type.
        let listener = Listener::bind(&Address::Unix(temp_path("types")), None).unwrap();
        let addr = listener.address().clone();
        let client = std::thread::spawn(move || {
            let c = Client::connect::<Vec<String>, ()>(&addr, None).unwrap();
            c.send(&vec!["x".repeat(300)]).unwrap();
            c
        });
        let server = listener.accept::<(), u8>().unwrap();
        assert!(matches!(server.recv(), Err(RecvError::Decode(_))));
        drop(client.join().unwrap());
    });
}

#[test]
fn a_wrong_key_is_refused_and_the_listener_keeps_serving() {
    deadline(LIMIT, || {
        for address in [
            Address::Unix(temp_path("auth")),
            "127.0.0.1:0".parse().unwrap(),
        ] {
            let listener = Listener::bind(&address, Some(b"right")).unwrap();
            let addr = listener.address().clone();
            let a2 = addr.clone();
            let bad = std::thread::spawn(move || {
                Client::connect::<String, String>(&a2, Some(b"wrong")).map(|_| ())
            });
            match listener.accept::<String, String>() {
                Err(AcceptError::Auth(AuthError::PeerRejected)) => {}
                other => panic!("{other:?}"),
            }
            match bad.join().unwrap() {
                Err(ConnectError::Auth(AuthError::KeyRejected)) => {}
                other => panic!("{other:?}"),
            }
            let a3 = addr.clone();
            let good = std::thread::spawn(move || {
                let c = Client::connect::<String, String>(&a3, Some(b"right")).unwrap();
                c.send(&"let me in".to_string()).unwrap();
            });
            let conn = listener.accept::<String, String>().unwrap();
            assert_eq!(conn.recv().unwrap(), "let me in");
            good.join().unwrap();
        }
    });
}

#[test]
fn a_client_without_a_key_cannot_talk_to_a_keyed_listener() {
    deadline(LIMIT, || {
        let mut listener = Listener::bind(&"127.0.0.1:0".parse().unwrap(), Some(b"key")).unwrap();
        listener.set_handshake_timeout(Duration::from_millis(300));
        let addr = listener.address().clone();
        let intruder = std::thread::spawn(move || {
            let c = Client::connect::<String, String>(&addr, None).unwrap();
            // It skips the handshake and just talks.
            let _ = c.send(&"DROP TABLE".to_string());
            std::thread::sleep(Duration::from_millis(500));
        });
        match listener.accept::<String, String>() {
            Err(AcceptError::Auth(_)) => {}
            other => panic!("{other:?}"),
        }
        intruder.join().unwrap();
    });
}

#[test]
fn a_silent_client_is_closed_at_the_handshake_timeout_and_accept_goes_on() {
    deadline(LIMIT, || {
        let mut listener = Listener::bind(&"127.0.0.1:0".parse().unwrap(), Some(b"key")).unwrap();
        listener.set_handshake_timeout(Duration::from_millis(200));
        let addr = listener.address().clone();
        let Address::Tcp(tcp) = addr else {
            unreachable!()
        };
        let silent = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(tcp).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            // The challenge, then the end: the listener closed us.
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut got).unwrap();
            assert!(got.windows(11).any(|w| w == b"#CHALLENGE#"), "{got:?}");
            // Only then does an honest client come.
            let c = Client::connect::<String, String>(&addr, Some(b"key")).unwrap();
            c.send(&"after the silent one".to_string()).unwrap();
        });
        // `accept` does not fail for the silent client: it closes it at its
        // deadline and returns the honest one.
        let conn = listener.accept::<String, String>().unwrap();
        assert_eq!(conn.recv().unwrap(), "after the silent one");
        silent.join().unwrap();
    });
}
