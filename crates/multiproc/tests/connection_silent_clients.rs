//! A `Listener` under a crowd of connections that never finish their
//! handshake: 200 that send nothing, or 200 that send a byte every 100 ms.
//! An honest client (ours, or CPython's `Client`) with the right key is
//! still answered at once, a wrong key is still refused, and the listener
//! closes what it gives up on: nothing waits on a silent peer, nothing is
//! left open.
//!
//! A listener that ran one handshake at a time would keep the honest client
//! waiting one handshake timeout (20 s) per silent connection ahead of it;
//! the tests allow it [`BOUND`], a quarter of a single such timeout.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{LIMIT, deadline, temp_path};
use multiproc::{
    AcceptError, Address, AuthError, Client, ConnectError, Connection, HANDSHAKE_TIMEOUT, Listener,
};

const KEY: &[u8] = b"the right key";
/// Connections that never finish the handshake.
const CROWD: usize = 200;
/// How long an honest client may wait for its connection, well under one
/// handshake timeout.
const BOUND: Duration = Duration::from_secs(5);

/// A raw socket of either kind.
trait Sock: Read + Write + Send {
    fn set_timeout(&self, t: Option<Duration>);
}

impl Sock for TcpStream {
    fn set_timeout(&self, t: Option<Duration>) {
        self.set_read_timeout(t).unwrap();
    }
}

impl Sock for UnixStream {
    fn set_timeout(&self, t: Option<Duration>) {
        self.set_read_timeout(t).unwrap();
    }
}

fn raw_connect(address: &Address) -> Box<dyn Sock> {
    match address {
        Address::Tcp(a) => Box::new(TcpStream::connect(a).unwrap()),
        Address::Unix(p) => Box::new(UnixStream::connect(p).unwrap()),
        Address::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
            Box::new(UnixStream::connect_addr(&a).unwrap())
        }
        other => panic!("no raw connection to {other}"),
    }
}

fn addresses() -> [Address; 2] {
    [
        "127.0.0.1:0".parse().unwrap(),
        Address::Unix(temp_path("crowd.sock")),
    ]
}

/// How the crowd behaves.
#[derive(Debug, Clone, Copy)]
enum Crowd {
    /// Connects and sends nothing.
    Silent,
    /// Sends the header of a 256-byte answer, then one byte every 100 ms.
    Drip,
}

/// The crowd's connections, open until dropped; a dripping crowd drips on
/// its own thread meanwhile.
struct Attack {
    stop: Arc<AtomicBool>,
    dripper: Option<std::thread::JoinHandle<()>>,
    /// Held open until the attack is dropped.
    _socks: Vec<Box<dyn Sock>>,
}

impl Attack {
    fn start(address: &Address, crowd: Crowd) -> Attack {
        let mut socks: Vec<Box<dyn Sock>> = (0..CROWD).map(|_| raw_connect(address)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let dripper = match crowd {
            Crowd::Silent => None,
            Crowd::Drip => {
                let mut drips = std::mem::take(&mut socks);
                let stop = Arc::clone(&stop);
                Some(std::thread::spawn(move || {
                    // 256 bytes announced: the answer is never complete
                    // within the test.
                    for s in &mut drips {
                        let _ = s.write_all(&[0, 0, 1, 0]);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        for s in &mut drips {
                            // The listener may have closed it: no matter.
                            let _ = s.write_all(b"x");
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }))
            }
        };
        Attack {
            stop,
            dripper,
            _socks: socks,
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.dripper.take() {
            d.join().unwrap();
        }
    }
}

/// While `crowd` holds [`CROWD`] connections to a keyed listener on
/// `address`, one of our clients with the right key connects: it must be
/// answered within [`BOUND`], and `accept` must return it (the crowd makes
/// no error: the listener drops what it gives up on).
fn honest_client_among(address: Address, crowd: Crowd) {
    let listener = Listener::bind(&address, Some(KEY)).unwrap();
    let addr = listener.address().clone();
    let clients = std::thread::spawn(move || {
        let attack = Attack::start(&addr, crowd);
        let start = Instant::now();
        let conn: Connection<(), ()> = Client::connect(&addr, Some(KEY)).unwrap();
        let took = start.elapsed();
        conn.send_bytes(b"honest").unwrap();
        assert_eq!(conn.recv_bytes().unwrap(), b"welcome");
        drop(attack);
        took
    });
    let conn: Connection<(), ()> = listener.accept().unwrap();
    assert_eq!(conn.recv_bytes().unwrap(), b"honest");
    conn.send_bytes(b"welcome").unwrap();
    let took = clients.join().unwrap();
    assert!(
        took < BOUND,
        "{crowd:?} crowd on {address:?}: the honest client waited {took:?}"
    );
}

#[test]
fn silent_connections_do_not_delay_an_honest_client() {
    deadline(LIMIT, || {
        for address in addresses() {
            honest_client_among(address, Crowd::Silent);
        }
    });
}

#[test]
fn slow_drip_connections_do_not_delay_an_honest_client() {
    deadline(LIMIT, || {
        for address in addresses() {
            honest_client_among(address, Crowd::Drip);
        }
    });
}

fn python_client(address: &Address, key: &str) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/peer.py");
    Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args([script, "connect", &address.to_string(), key])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 must be installed to test interoperability")
}

/// The same with CPython's `Client` (its own handshake, 3.11's or 3.12's)
/// as the honest client: from its start to its exit, it talks to us
/// (`peer.py connect`: a hello, a reply, 1 MiB each way) within [`BOUND`].
fn python_client_among(address: Address, crowd: Crowd) {
    let listener = Listener::bind(&address, Some(KEY)).unwrap();
    let addr = listener.address().clone();
    let clients = std::thread::spawn(move || {
        let attack = Attack::start(&addr, crowd);
        let start = Instant::now();
        let py = python_client(&addr, std::str::from_utf8(KEY).unwrap());
        let out = py.wait_with_output().unwrap();
        let took = start.elapsed();
        drop(attack);
        assert!(out.status.success(), "python exited with {}", out.status);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (took, text)
    });
    let conn: Connection<(), ()> = listener.accept().unwrap();
    assert_eq!(conn.recv_bytes().unwrap(), b"hello from python");
    conn.send_bytes(b"welcome").unwrap();
    let big = conn.recv_bytes().unwrap();
    conn.send_bytes(&big).unwrap();
    let (took, text) = clients.join().unwrap();
    assert!(text.contains("reply: welcome"), "{text}");
    assert!(
        took < BOUND,
        "{crowd:?} crowd on {address:?}: python's client took {took:?}"
    );
}

#[test]
fn a_python_client_is_answered_among_silent_and_dripping_connections() {
    deadline(LIMIT, || {
        for address in addresses() {
            python_client_among(address.clone(), Crowd::Silent);
        }
        python_client_among("127.0.0.1:0".parse().unwrap(), Crowd::Drip);
    });
}

#[test]
fn a_wrong_key_is_still_refused_among_silent_connections() {
    deadline(LIMIT, || {
        for address in addresses() {
            let listener = Listener::bind(&address, Some(KEY)).unwrap();
            let addr = listener.address().clone();
            let clients = std::thread::spawn(move || {
                let attack = Attack::start(&addr, Crowd::Silent);
                match Client::connect::<(), ()>(&addr, Some(b"a wrong key")) {
                    Err(ConnectError::Auth(AuthError::KeyRejected)) => {}
                    other => panic!("{other:?}"),
                }
                let good: Connection<(), ()> = Client::connect(&addr, Some(KEY)).unwrap();
                good.send_bytes(b"after the wrong one").unwrap();
                // Closed connections are errors of `accept` (the client
                // left half-way): keep the crowd until it returned.
                (attack, good)
            });
            match listener.accept::<(), ()>() {
                Err(AcceptError::Auth(AuthError::PeerRejected)) => {}
                other => panic!("{other:?}"),
            }
            let conn: Connection<(), ()> = listener.accept().unwrap();
            assert_eq!(conn.recv_bytes().unwrap(), b"after the wrong one");
            clients.join().unwrap();
        }
    });
}

/// Reads what `sock` has (the challenge) and tells whether the listener
/// closed it: `Some(true)` at end of stream, `Some(false)` if it is still
/// open after `wait`.
fn closed_within(sock: &mut dyn Sock, wait: Duration) -> bool {
    sock.set_timeout(Some(wait));
    let mut buf = [0u8; 256];
    loop {
        match sock.read(&mut buf) {
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
fn past_the_cap_the_oldest_pending_connection_is_closed_and_drop_closes_the_rest() {
    deadline(LIMIT, || {
        let mut listener =
            Listener::bind(&Address::Unix(temp_path("cap.sock")), Some(KEY)).unwrap();
        listener.set_max_pending_handshakes(4);
        let addr = listener.address().clone();
        let clients = std::thread::spawn(move || {
            let socks: Vec<Box<dyn Sock>> = (0..10).map(|_| raw_connect(&addr)).collect();

            let good: Connection<(), ()> = Client::connect(&addr, Some(KEY)).unwrap();
            good.send_bytes(b"in").unwrap();
            socks
        });
        let conn: Connection<(), ()> = listener.accept().unwrap();
        assert_eq!(conn.recv_bytes().unwrap(), b"in");
        let mut socks = clients.join().unwrap();
        // Taken in order, 4 at most pending: the 6 oldest were pushed out
        // by the 4 newest, and the oldest of those by the honest client
        // unless it answered before its handshake had to wait.
        let closed: Vec<bool> = socks
            .iter_mut()
            .map(|s| closed_within(s.as_mut(), Duration::from_millis(100)))
            .collect();
        assert_eq!(closed[..6], [true; 6], "{closed:?}");
        assert_eq!(closed[7..], [false; 3], "{closed:?}");
        // Dropping the listener closes the handshakes under way.
        drop(listener);
        for s in &mut socks[7..] {
            assert!(closed_within(s.as_mut(), Duration::from_secs(10)));
        }
    });
}

fn read_frame(s: &mut dyn Sock) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).unwrap();
    payload
}

fn write_frame(s: &mut dyn Sock, payload: &[u8]) {
    s.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
    s.write_all(payload).unwrap();
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    m.update(message);
    m.finalize().into_bytes().to_vec()
}

#[test]
fn the_handshake_timeout_runs_only_while_accepting() {
    deadline(LIMIT, || {
        let mut listener =
            Listener::bind(&Address::Unix(temp_path("idle.sock")), Some(KEY)).unwrap();
        listener.set_handshake_timeout(Duration::from_millis(300));
        let addr = listener.address().clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let (go, wait_go) = std::sync::mpsc::channel();
        let clients = std::thread::spawn(move || {
            // A client (by hand, the 3.12 handshake) whose handshake begins
            // in the first accept and finishes in the second.
            let mut slow = raw_connect(&addr);
            let challenge = read_frame(slow.as_mut());
            let message = challenge.strip_prefix(b"#CHALLENGE#").unwrap();
            assert!(message.starts_with(b"{sha256}"));
            let first: Connection<(), ()> = Client::connect(&addr, Some(KEY)).unwrap();
            first.send_bytes(b"first").unwrap();
            // Answer only once the first accept has returned: answered
            // earlier, the slow handshake could finish inside the first
            // accept on a busy machine and be the one it returns.
            wait_go.recv().unwrap();
            let mut answer = b"{sha256}".to_vec();
            answer.extend(hmac_sha256(KEY, message));
            write_frame(slow.as_mut(), &answer);
            tx.send(()).unwrap();
            assert_eq!(read_frame(slow.as_mut()), b"#WELCOME#");
            let ours = b"#CHALLENGE#{sha256}0123456789012345678901234567890123456789";
            write_frame(slow.as_mut(), ours);
            let mut expected = b"{sha256}".to_vec();
            expected.extend(hmac_sha256(KEY, &ours[11..]));
            assert_eq!(read_frame(slow.as_mut()), expected);
            write_frame(slow.as_mut(), b"#WELCOME#");
            write_frame(slow.as_mut(), b"second");
            drop(first);
            slow
        });
        let first: Connection<(), ()> = listener.accept().unwrap();
        assert_eq!(first.recv_bytes().unwrap(), b"first");
        go.send(()).unwrap();
        rx.recv().unwrap();
        // Busy elsewhere for twice the handshake timeout: the slow client's
        // handshake waits, and goes on when accept runs again.
        std::thread::sleep(Duration::from_millis(600));
        let second: Connection<(), ()> = listener.accept().unwrap();
        assert_eq!(second.recv_bytes().unwrap(), b"second");
        second.send_bytes(b"ok").unwrap();
        let mut slow = clients.join().unwrap();
        assert_eq!(read_frame(slow.as_mut()), b"ok");
        assert!(HANDSHAKE_TIMEOUT > Duration::from_millis(600));
    });
}
