//! An echo server for Python programs that use `conn.send(obj)` and
//! `conn.recv()`: every object a client sends comes back unchanged (as a
//! pickle CPython loads into the same value), and a pickle that would run
//! code is refused, logged, and its connection closed; other connections
//! go on.
//!
//! ```sh
//! cargo run --example pickle_echo -- --address /tmp/pickle.sock --authkey secret
//! python3 -c "from multiprocessing.connection import Client
//! c = Client('/tmp/pickle.sock', authkey=b'secret')
//! c.send({'id': 7, 'data': [1.5, 2.5], 'tags': ('a', 'b')}); print(c.recv())"
//! ```
//!
//! `--address` is `host:port` or a Unix socket path; `--authkey` is
//! optional (without it, any client may connect).

use multiproc::pickle::Value;
use multiproc::{Address, Connection, Listener, PickleConnection, RecvError};

fn usage() -> ! {
    eprintln!("usage: pickle_echo --address HOST:PORT|PATH [--authkey KEY]");
    std::process::exit(2)
}

fn main() {
    let mut address = None;
    let mut authkey = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--address" => address = args.next(),
            "--authkey" => authkey = args.next(),
            _ => usage(),
        }
    }
    let Some(address) = address else { usage() };
    let address: Address = address.parse().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let listener =
        Listener::bind(&address, authkey.as_deref().map(str::as_bytes)).unwrap_or_else(|e| {
            eprintln!("cannot listen on {address}: {e}");
            std::process::exit(1)
        });
    println!("listening on {}", listener.address());
    for client in 1.. {
        match listener.accept::<(), ()>() {
            Ok(conn) => {
                std::thread::spawn(move || echo(client, conn));
            }
            Err(e) => eprintln!("refused a client: {e}"),
        }
    }
}

fn echo(client: u64, conn: Connection) {
    let conn: PickleConnection<(), ()> = conn.into_pickle();
    loop {
        let value: Value = match conn.recv_value() {
            Ok(value) => value,
            Err(RecvError::Disconnected) => return,
            Err(e) => {
                // A pickle that names or calls code, or one that is not a
                // pickle: say so and hang up on that client only.
                eprintln!("client {client}: {e}; closing its connection");
                return;
            }
        };
        if conn.send_value(&value).is_err() {
            return;
        }
    }
}
