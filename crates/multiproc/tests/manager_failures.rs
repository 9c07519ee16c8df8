//! The manager under attack and accident: clients killed mid-request,
//! garbage, truncated, oversized and mistyped requests, wrong auth keys,
//! and the server itself killed. Each is a typed error; the server goes on
//! serving the others; nothing hangs and nothing is left behind.
//!
//! Some tests speak the wire protocol by hand (a raw [`Connection`]), with
//! the byte values documented in `docs/manager-protocol.md`: a request is
//! postcard bytes of `Request`, a reply postcard bytes of
//! `Result<Payload, RemoteError>`.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, assert_gone, deadline};
use multiproc::{
    Address, AuthError, Client, ConnectError, Connection, EventProxy, JoinError, LockProxy,
    Manager, ProxyError, QueueProxy, RecvError, RemoteError, Signal, StartManagerError,
    StartMethod,
};

/// The manager hello: magic and flags (0: not local, use the socket).
const HELLO: &[u8] = b"MPMGR\x01\x00";

/// A raw session: authenticated, hello sent, welcome read and ignored.
fn raw_session(manager: &Manager) -> Connection<(), ()> {
    let conn: Connection<(), ()> =
        Client::connect(manager.address(), Some(manager.authkey())).unwrap();
    conn.send_bytes(HELLO).unwrap();
    conn.recv_bytes().unwrap(); // the welcome
    conn
}

/// Sends `request` and returns the reply's bytes.
fn ask(conn: &Connection<(), ()>, request: &[u8]) -> Vec<u8> {
    conn.send_bytes(request).unwrap();
    conn.recv_bytes().unwrap()
}

/// Reply bytes: `Err` is variant 1 of `Result`; the `RemoteError` variant
/// follows.
const ERR: u8 = 1;
const NO_SUCH_OBJECT: u8 = 0;
const NO_SUCH_METHOD: u8 = 1;
const MALFORMED: u8 = 2;
const TOO_LARGE: u8 = 3;

/// `Request::One(Single::Ping)`.
const PING: &[u8] = &[0, 4];
/// `Request::One(Single::Create(Kind::Dict))`.
const CREATE_DICT: &[u8] = &[0, 0, 0];

/// `Request::One(Single::Call(id, Op::Dict(DictOp::Len)))`.
fn dict_len(id: u8) -> Vec<u8> {
    vec![0, 1, id, 0, 8]
}

fn pids_of_threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until `f` holds, for at most `within`.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

#[test]
fn garbage_truncated_and_mistyped_requests_get_typed_errors() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            garbage_for(Manager::builder().start_method(m).start().unwrap());
        }
    });
}

fn garbage_for(manager: Manager) {
    {
        let conn = raw_session(&manager);
        assert_eq!(ask(&conn, PING), [0, 0], "Ok(Unit)");
        let created = ask(&conn, CREATE_DICT);
        assert_eq!(created[..2], [0, 9], "Ok(Object(id))");
        let id = created[2];
        assert_eq!(ask(&conn, &dict_len(id)), [0, 2, 0], "Ok(Count(0))");

        // Every truncation of a valid request is malformed, and the
        // connection goes on.
        let valid = dict_len(id);
        for cut in 0..valid.len() {
            let reply = ask(&conn, &valid[..cut]);
            assert_eq!(reply[..2], [ERR, MALFORMED], "cut at {cut}");
        }
        // Garbage: random bytes of random lengths.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let len = (next() % 40) as usize;
            let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let reply = ask(&conn, &garbage);
            assert!(!reply.is_empty());
        }
        // An unknown object, an unknown method number, a method of another
        // kind of object.
        assert_eq!(ask(&conn, &dict_len(100)), [ERR, NO_SUCH_OBJECT, 100]);
        assert_eq!(ask(&conn, &[0, 1, id, 0, 99])[..2], [ERR, MALFORMED]);
        assert_eq!(ask(&conn, &[0, 1, id, 42])[..2], [ERR, MALFORMED]);
        assert_eq!(ask(&conn, &[0, 1, id, 1, 7])[..2], [ERR, NO_SUCH_METHOD]);
        // A batch that claims 2^62 requests allocates nothing.
        let huge = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f];
        assert_eq!(ask(&conn, &huge)[..2], [ERR, MALFORMED]);
        // The object and the server are untouched.
        assert_eq!(ask(&conn, &dict_len(id)), [0, 2, 0]);
        // Its last reference dropped (`DecRef`), the object is gone; a
        // second drop is an error, not an underflow.
        assert_eq!(ask(&conn, &[0, 3, id]), [0, 0]);
        assert_eq!(ask(&conn, &dict_len(id)), [ERR, NO_SUCH_OBJECT, id]);
        assert_eq!(ask(&conn, &[0, 3, id]), [ERR, NO_SUCH_OBJECT, id]);
        let d = manager.dict::<u8, u8>().unwrap();
        d.insert(1, 1).unwrap();
        assert_eq!(d.len().unwrap(), 1);
        let pid = manager.server_pid().unwrap();
        manager.shutdown().unwrap();
        assert_gone(pid);
    }
}

#[test]
fn a_bad_hello_and_oversized_requests_are_refused_and_the_server_goes_on() {
    deadline(LIMIT, || {
        let manager = Manager::builder().max_request_size(1024).start().unwrap();
        // Not a hello: an error, and the connection closes.
        let conn: Connection<(), ()> =
            Client::connect(manager.address(), Some(manager.authkey())).unwrap();
        conn.send_bytes(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(conn.recv_bytes().unwrap()[..2], [ERR, MALFORMED]);
        assert!(matches!(conn.recv_bytes(), Err(RecvError::Disconnected)));

        // Over the limit on the socket path: TooLarge, then the server
        // closes (the rest of the frame is still in the stream).
        let conn = raw_session(&manager);
        let reply = ask(&conn, &vec![0u8; 2000]);
        assert_eq!(reply[..2], [ERR, TOO_LARGE]);
        assert!(matches!(conn.recv_bytes(), Err(RecvError::Disconnected)));

        // A frame header that announces 1 GiB, and nothing after it.
        let conn = raw_session(&manager);
        {
            use std::os::fd::AsFd;
            let fd = conn.as_fd().try_clone_to_owned().unwrap();
            let mut raw = std::os::unix::net::UnixStream::from(fd);
            std::io::Write::write_all(&mut raw, &(1i32 << 30).to_be_bytes()).unwrap();
        }
        assert_eq!(conn.recv_bytes().unwrap()[..2], [ERR, TOO_LARGE]);

        // Through a proxy (the local path), the client refuses to send.
        let d = manager.dict::<u8, Vec<u8>>().unwrap();
        assert!(matches!(
            d.insert(1, vec![7; 5000]),
            Err(ProxyError::TooLarge { limit: 1024, .. })
        ));
        d.insert(1, vec![7; 100]).unwrap();
        assert_eq!(d.get(&1).unwrap().unwrap().len(), 100);
    });
}

#[test]
fn a_wrong_key_or_unauthenticated_tcp_client_is_refused_before_any_request() {
    deadline(LIMIT, || {
        let manager = Manager::builder()
            .tcp("127.0.0.1:0".parse().unwrap(), b"right key")
            .start()
            .unwrap();
        // A client that connects and says nothing holds up nobody: the
        // server runs many handshakes at once.
        let Address::Tcp(addr) = manager.address() else {
            panic!("not tcp");
        };
        let silent = std::net::TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        match Manager::connect(manager.address(), b"wrong key") {
            Err(StartManagerError::Connect(ConnectError::Auth(
                AuthError::KeyRejected | AuthError::PeerRejected | AuthError::Recv(_),
            ))) => {}
            other => panic!("a wrong key was let in: {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // A client that skips the handshake and sends a request at once:
        // the request is taken for a (wrong) answer to the challenge.
        let mut raw = std::net::TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut frame = (CREATE_DICT.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(CREATE_DICT);
        for _ in 0..3 {
            let _ = std::io::Write::write_all(&mut raw, &frame);
        }
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut raw, &mut sink);
        // The server sent its challenge, refused the "answer" and closed
        // the connection: nothing after `#FAILURE#`.
        assert!(sink.ends_with(b"#FAILURE#"), "{sink:?}");
        // No object was made: the first real one gets id 1.
        let d = manager.dict::<u8, u8>().unwrap();
        assert_eq!(d.id(), 1);
        // The right key works, over TCP.
        let other = Manager::connect(manager.address(), b"right key").unwrap();
        assert_eq!(other.list::<u8>().unwrap().id(), 2);
        drop(silent);
    });
}

fn block_in_get(q: QueueProxy<u64>) -> Result<u64, String> {
    q.get().map_err(|e| format!("{e:?}"))
}

fn hold_lock_forever((lock, held): (LockProxy, EventProxy)) {
    let _guard = lock.lock().unwrap();
    held.set().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn wait_at_barrier(b: multiproc::BarrierProxy) -> bool {
    b.wait().is_ok()
}

#[test]
fn a_client_killed_mid_request_does_not_disturb_the_server_and_its_resources_are_released() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let manager = Manager::builder().start_method(m).start().unwrap();
            let server = manager.server_pid().unwrap();
            let q = manager.queue::<u64>().unwrap();
            let d = manager.dict::<u8, u8>().unwrap();
            d.insert(0, 0).unwrap();
            let threads_before = pids_of_threads(server);

            // Killed while blocked in a get on the server.
            let getter = multiproc::Process::builder()
                .start_method(m)
                .spawn(block_in_get, q.clone())
                .unwrap();
            assert!(eventually(Duration::from_secs(10), || pids_of_threads(
                server
            ) > threads_before));
            getter.kill().unwrap();
            assert!(matches!(
                getter.join(),
                Err(JoinError::Signaled {
                    signal: Signal::KILL,
                    ..
                })
            ));
            // Its server thread ends; the queue still works for others.
            assert!(
                eventually(Duration::from_secs(10), || pids_of_threads(server)
                    <= threads_before),
                "{m}: the dead client's session thread is still there"
            );
            q.put(5).unwrap();
            assert_eq!(q.get().unwrap(), 5);

            // Killed while holding a lock: the manager releases it.
            let lock = manager.lock().unwrap();
            let held = manager.event().unwrap();
            let holder = multiproc::Process::builder()
                .start_method(m)
                .spawn(hold_lock_forever, (lock.clone(), held.clone()))
                .unwrap();
            held.wait().unwrap();
            assert!(lock.try_lock().is_err());
            holder.kill().unwrap();
            let _ = holder.join();
            let g = lock
                .lock_timeout(Duration::from_secs(10))
                .expect("the dead holder's lock was released");
            g.release().unwrap();

            // Killed while waiting at a barrier: the barrier breaks, and the
            // other party is told instead of waiting forever.
            let b = manager.barrier(3).unwrap();
            let waiter = multiproc::Process::builder()
                .start_method(m)
                .spawn(wait_at_barrier, b.clone())
                .unwrap();
            assert!(eventually(Duration::from_secs(10), || b
                .n_waiting()
                .unwrap()
                == 1));
            let other = std::thread::spawn({
                let b = b.clone();
                move || b.wait()
            });
            assert!(eventually(Duration::from_secs(10), || b
                .n_waiting()
                .unwrap()
                == 2));
            waiter.kill().unwrap();
            let _ = waiter.join();
            assert!(matches!(
                other.join().unwrap(),
                Err(ProxyError::Remote(RemoteError::BrokenBarrier))
            ));

            assert_eq!(d.get(&0).unwrap(), Some(0), "{m}");
            manager.shutdown().unwrap();
            assert_gone(server);
        }
    });
}

#[test]
fn the_manager_dying_turns_every_proxy_call_into_an_error() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            for tcp in [false, true] {
                let builder = Manager::builder().start_method(m);
                let builder = if tcp {
                    builder.tcp("127.0.0.1:0".parse().unwrap(), b"k")
                } else {
                    builder
                };
                let manager = builder.start().unwrap();
                let server = manager.server_pid().unwrap();
                let d = manager.dict::<u8, u8>().unwrap();
                let q = manager.queue::<u64>().unwrap();
                let e = manager.event().unwrap();
                d.insert(1, 1).unwrap();
                // One call blocked on the server in another thread, one in a
                // child process.
                let waiter = std::thread::spawn({
                    let e = e.clone();
                    move || e.wait()
                });
                let child = multiproc::Process::builder()
                    .start_method(m)
                    .spawn(block_in_get, q.clone())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(100));

                assert_eq!(kill_pid(server), 0);
                let t = Instant::now();
                assert!(waiter.join().unwrap().is_err(), "{m} tcp={tcp}");
                match child.join() {
                    Ok(Err(e)) => assert!(e.contains("Disconnected"), "{e}"),
                    other => panic!("{m} tcp={tcp}: {other:?}"),
                }
                for _ in 0..3 {
                    assert!(d.get(&1).is_err(), "{m} tcp={tcp}");
                    assert!(d.insert(2, 2).is_err());
                    assert!(q.try_get().is_err());
                    assert!(manager.list::<u8>().is_err());
                }
                assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
                assert!(matches!(
                    manager.shutdown(),
                    Err(multiproc::ShutdownError::Failed(JoinError::Signaled {
                        signal: Signal::KILL,
                        ..
                    }))
                ));
                assert_gone(server);
            }
        }
    });
}

/// Sends SIGKILL to `pid`; 0 when delivered.
fn kill_pid(pid: i32) -> i32 {
    if common::send_signal(pid, libc::SIGKILL) {
        0
    } else {
        -1
    }
}

#[test]
fn shutdown_and_drop_stop_the_server_in_bounded_time_and_leave_nothing() {
    deadline(LIMIT, || {
        let shm_before: Vec<_> = std::fs::read_dir("/dev/shm")
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        for m in StartMethod::ALL {
            let manager = Manager::builder().start_method(m).start().unwrap();
            let server = manager.server_pid().unwrap();
            let Address::Unix(path) = manager.address().clone() else {
                panic!("not unix");
            };
            let q = manager.queue::<u8>().unwrap();
            // A client blocked in a get does not hold up the shutdown.
            let blocked = std::thread::spawn(move || q.get());
            std::thread::sleep(Duration::from_millis(50));
            let t = Instant::now();
            drop(manager);
            assert!(
                t.elapsed() < Duration::from_secs(6),
                "{m}: {:?}",
                t.elapsed()
            );
            assert_gone(server);
            assert!(!path.exists(), "{m}: the socket file is still there");
            assert!(blocked.join().unwrap().is_err());
        }
        let shm_after: Vec<_> = std::fs::read_dir("/dev/shm")
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            shm_after.iter().all(|f| shm_before.contains(f)),
            "a file appeared in /dev/shm"
        );
    });
}

#[test]
fn connecting_to_something_that_is_not_a_manager_is_an_error() {
    deadline(LIMIT, || {
        let path = common::temp_path("not-a-manager.sock");
        let listener = multiproc::Listener::bind(&Address::Unix(path), Some(b"k")).unwrap();
        let address = listener.address().clone();
        let server = std::thread::spawn(move || {
            // Authenticates, reads the hello, and hangs up.
            let conn: Connection<(), ()> = listener.accept().unwrap();
            let _ = conn.recv_bytes();
        });
        match Manager::connect(&address, b"k") {
            Err(StartManagerError::NotAManager(_)) => {}
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
        // Nothing listens there any more.
        assert!(matches!(
            Manager::connect(&address, b"k"),
            Err(StartManagerError::Connect(ConnectError::Io(_)))
        ));
    });
}
