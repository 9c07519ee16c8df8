//! Pipes: a two-way conversation between two processes, typed values and
//! raw bytes, and a connection handed to a child.
//!
//! Run with `cargo run --example pipe`.

use multiproc::{Connection, Process, pipe};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Add(i64, i64),
    Upper(String),
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Sum(i64),
    Text(String),
}

/// The child's side: answers requests until told to stop.
fn server(conn: Connection<Reply, Request>) -> u32 {
    let mut served = 0;
    while let Ok(req) = conn.recv() {
        let reply = match req {
            Request::Add(a, b) => Reply::Sum(a + b),
            Request::Upper(s) => Reply::Text(s.to_uppercase()),
            Request::Stop => break,
        };
        conn.send(&reply).expect("the parent is listening");
        served += 1;
    }
    served
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, server_end) = pipe::<Request, Reply>()?;
    let child = Process::spawn(server, server_end)?;

    client.send(&Request::Add(20, 22))?;
    println!("20 + 22 = {:?}", client.recv()?);
    client.send(&Request::Upper("a pipe is two-way".into()))?;
    println!("upper: {:?}", client.recv()?);
    client.send(&Request::Stop)?;
    println!("the child served {} requests", child.join()?);

    // Raw bytes bypass serde, as Python's send_bytes/recv_bytes do.
    let (a, b) = pipe::<(), ()>()?;
    a.send_bytes(&[1, 2, 3, 4])?;
    println!("raw bytes: {:?}", b.recv_bytes()?);
    Ok(())
}
