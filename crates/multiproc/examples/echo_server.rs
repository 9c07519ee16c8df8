//! An echo server that Python's `multiprocessing.connection.Client` can talk
//! to: every byte message a client sends comes back unchanged, until the
//! server is killed.
//!
//! ```sh
//! cargo run --example echo_server -- --address 127.0.0.1:6000 --authkey secret
//! python3 -c "from multiprocessing.connection import Client
//! c = Client(('127.0.0.1', 6000), authkey=b'secret'); c.send_bytes(b'hi'); print(c.recv_bytes())"
//! ```
//!
//! `--address` is `host:port` or a Unix socket path; `--authkey` is
//! optional (without it, any client may connect).

use multiproc::{Address, Connection, Listener};

fn usage() -> ! {
    eprintln!("usage: echo_server --address HOST:PORT|PATH [--authkey KEY]");
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
    loop {
        match listener.accept::<(), ()>() {
            Ok(conn) => {
                std::thread::spawn(move || echo(conn));
            }
            // A client with a wrong key (or a broken one) is refused; the
            // server goes on.
            Err(e) => eprintln!("refused a client: {e}"),
        }
    }
}

fn echo(conn: Connection<(), ()>) {
    while let Ok(msg) = conn.recv_bytes() {
        if conn.send_bytes(&msg).is_err() {
            break;
        }
    }
}
