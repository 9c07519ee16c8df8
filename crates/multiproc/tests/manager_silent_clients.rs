//! A manager server under a crowd of connections that never finish the
//! handshake (200 silent, 200 sending a byte every 100 ms): a client with
//! the right key still connects and works at once, a wrong key is still
//! refused, and the crowd costs the server no thread (it used to cost one
//! each, until the 20 s handshake timeout).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{LIMIT, assert_gone, deadline};
use multiproc::{Address, AuthError, ConnectError, Manager, StartManagerError};

const CROWD: usize = 200;
/// How long an honest client may take to connect and make a call, well
/// under one handshake timeout (20 s).
const BOUND: Duration = Duration::from_secs(5);

/// The server's threads, from `/proc/<pid>/status`.
fn threads(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn raw_connect(address: &Address) -> Box<dyn Write + Send> {
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

/// Opens [`CROWD`] silent and [`CROWD`] dripping connections to `manager`,
/// then connects with the right key and a wrong one, and counts the
/// server's threads meanwhile.
fn crowd_then_clients(manager: &Manager) {
    let pid = manager.server_pid().unwrap();
    let d = manager.dict::<String, u32>().unwrap();
    d.insert("before".into(), 1).unwrap();
    let before = threads(pid);

    let address = manager.address().clone();
    let silent: Vec<_> = (0..CROWD).map(|_| raw_connect(&address)).collect();
    let mut drips: Vec<_> = (0..CROWD).map(|_| raw_connect(&address)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let dripper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // A 256-byte answer announced, then one byte every 100 ms.
            for s in &mut drips {
                let _ = s.write_all(&[0, 0, 1, 0]);
            }
            while !stop.load(Ordering::Relaxed) {
                for s in &mut drips {
                    let _ = s.write_all(b"x");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Let the crowd drip a few times.
    std::thread::sleep(Duration::from_millis(300));

    let start = Instant::now();
    let other = Manager::connect(manager.address(), manager.authkey()).unwrap();
    let l = other.list::<u32>().unwrap();
    l.push(7).unwrap();
    assert_eq!(d.get("before").unwrap(), Some(1));
    let took = start.elapsed();
    assert!(took < BOUND, "the honest client waited {took:?}");

    match Manager::connect(manager.address(), b"a wrong key") {
        Err(StartManagerError::Connect(ConnectError::Auth(AuthError::KeyRejected))) => {}
        other => panic!("a wrong key was let in: {other:?}"),
    }

    // The crowd made no thread: only the honest client's sessions did.
    let during = threads(pid);
    assert!(
        during <= before + 4,
        "{before} threads before the crowd, {during} with it"
    );

    stop.store(true, Ordering::Relaxed);
    dripper.join().unwrap();
    drop(silent);
    drop(other);
}

#[test]
fn a_crowd_of_silent_and_slow_connections_costs_the_manager_no_thread() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let pid = manager.server_pid().unwrap();
        crowd_then_clients(&manager);
        drop(manager);
        assert_gone(pid);

        let manager = Manager::builder()
            .tcp("127.0.0.1:0".parse().unwrap(), b"the right key")
            .start()
            .unwrap();
        let pid = manager.server_pid().unwrap();
        crowd_then_clients(&manager);
        drop(manager);
        assert_gone(pid);
    });
}
