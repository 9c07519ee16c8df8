//! Interoperability with CPython's `multiprocessing.connection`, with the
//! real `python3` as the other side: its framing, and its auth handshake in
//! both the 3.11 form (HMAC-MD5, what this machine's Python speaks) and the
//! 3.12+ form (`{sha256}` prefixes; `tests/python/peer.py` implements it
//! from the specification, with Python's own `hmac`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{LIMIT, deadline, temp_path};
use multiproc::{AcceptError, Address, AuthError, Client, Connection, Listener};

/// A fresh abstract socket name, unique to this test process.
fn abstract_name() -> String {
    let path = temp_path("abstract");
    path.file_name().unwrap().to_str().unwrap().to_owned()
}

/// The Python peer, killed (and reaped) if a test panics before it ends,
/// so that a failing test leaves no process behind. Its stderr (a
/// traceback, when it fails) is kept for the test's messages, not printed.
struct Peer(Child, Option<std::thread::JoinHandle<String>>);

impl Peer {
    /// What the peer wrote to stderr, once it has exited.
    fn stderr(&mut self) -> String {
        self.1
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl std::ops::Deref for Peer {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Peer {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn python(mode: &str, address: &str, key: &str) -> Peer {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/peer.py");
    let mut child = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args([script, mode, address, key])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed to test interoperability");
    let mut err = child.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut text);
        text
    });
    Peer(child, Some(drain))
}

/// Reads the `address: ...` line a listening peer prints.
fn announced_address(child: &mut Child) -> (BufReader<std::process::ChildStdout>, String) {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let raw = line
        .trim()
        .strip_prefix("address: ")
        .expect("an address line")
        .to_string();
    // Python prints ('127.0.0.1', 40000) for TCP, a plain path for Unix,
    // and b'\x00name' for an abstract name (its getsockname gives bytes):
    // that becomes "\0name", Python's own way to write it.
    let addr = if let Some(t) = raw.strip_prefix("('") {
        let (host, port) = t.trim_end_matches(')').split_once("', ").unwrap();
        format!("{host}:{port}")
    } else if let Some(name) = raw.strip_prefix("b'\\x00") {
        format!("\0{}", name.trim_end_matches('\''))
    } else {
        raw
    };
    (out, addr)
}

fn finish(mut child: Peer, out: Option<BufReader<std::process::ChildStdout>>) -> String {
    let mut text = String::new();
    if let Some(mut out) = out.or_else(|| child.stdout.take().map(BufReader::new)) {
        std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "python exited with {status}: {text}\n{}",
        child.stderr()
    );
    text
}

fn talk_to_python_listener(mode: &str, address: &str, key: Option<&str>) {
    let mut py = python(mode, address, key.unwrap_or("-"));
    let (out, addr) = announced_address(&mut py);
    let addr: Address = addr.parse().unwrap();
    let conn: Connection<(), ()> = Client::connect(&addr, key.map(str::as_bytes)).unwrap();
    conn.send_bytes(b"hello python").unwrap();
    assert_eq!(conn.recv_bytes().unwrap(), b"nohtyp olleh");
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 256) as u8).collect();
    conn.send_bytes(&big).unwrap();
    let back = conn.recv_bytes().unwrap();
    assert!(
        back.iter().rev().eq(big.iter()),
        "the big message came back wrong"
    );
    conn.send_bytes(&[]).unwrap();
    assert_eq!(conn.recv_bytes().unwrap(), b"");
    drop(conn);
    finish(py, Some(out));
}

fn python_talks_to_our_listener(mode: &str, address: Address, key: Option<&str>) {
    let listener = Listener::bind(&address, key.map(str::as_bytes)).unwrap();
    let py = python(mode, &listener.address().to_string(), key.unwrap_or("-"));
    let conn: Connection<(), ()> = listener.accept().unwrap();
    let first = conn.recv_bytes().unwrap();
    assert_eq!(first, b"hello from python");
    conn.send_bytes(b"hello from rust").unwrap();
    let big = conn.recv_bytes().unwrap();
    assert_eq!(big.len(), 1 << 20);
    conn.send_bytes(&big).unwrap();
    let text = finish(py, None);
    assert!(
        text.contains("reply: hello from rust big: 1048576"),
        "{text}"
    );
}

#[test]
fn our_client_talks_to_python_listeners() {
    deadline(LIMIT, || {
        talk_to_python_listener("listen", "127.0.0.1:0", None);
        talk_to_python_listener("listen", "127.0.0.1:0", Some("secret"));
        let path = temp_path("py.sock");
        talk_to_python_listener("listen", path.to_str().unwrap(), Some("secret"));
        // An abstract name: Python prints it as "\0name", which parses.
        let name = abstract_name();
        talk_to_python_listener("listen", &format!("@{name}"), Some("secret"));
        talk_to_python_listener("listen", &format!("@{}", abstract_name()), None);
    });
}

#[test]
fn python_clients_talk_to_our_listener() {
    deadline(LIMIT, || {
        python_talks_to_our_listener("connect", "127.0.0.1:0".parse().unwrap(), None);
        python_talks_to_our_listener("connect", "127.0.0.1:0".parse().unwrap(), Some("secret"));
        python_talks_to_our_listener(
            "connect",
            Address::Unix(temp_path("ours.sock")),
            Some("secret"),
        );
        python_talks_to_our_listener(
            "connect",
            Address::Abstract(abstract_name().into_bytes()),
            Some("secret"),
        );
    });
}

#[test]
fn the_python_312_handshake_works_both_ways() {
    deadline(LIMIT, || {
        talk_to_python_listener("listen312", "127.0.0.1:0", Some("secret"));
        python_talks_to_our_listener("connect312", "127.0.0.1:0".parse().unwrap(), Some("secret"));
    });
}

#[test]
fn a_python_client_with_the_wrong_key_is_refused() {
    deadline(LIMIT, || {
        let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap(), Some(b"right")).unwrap();
        let mut py = python("connect", &listener.address().to_string(), "wrong");
        match listener.accept::<(), ()>() {
            Err(AcceptError::Auth(AuthError::PeerRejected)) => {}
            other => panic!("{other:?}"),
        }
        // Python raises AuthenticationError and exits non-zero.
        let status = py.wait().unwrap();
        let err = py.stderr();
        assert!(!status.success(), "{err}");
        assert!(err.contains("AuthenticationError"), "{err}");
        // The listener still serves a client with the right key.
        let ok = python("connect", &listener.address().to_string(), "right");
        let conn: Connection<(), ()> = listener.accept().unwrap();
        assert_eq!(conn.recv_bytes().unwrap(), b"hello from python");
        conn.send_bytes(b"welcome").unwrap();
        let big = conn.recv_bytes().unwrap();
        conn.send_bytes(&big).unwrap();
        finish(ok, None);
    });
}
