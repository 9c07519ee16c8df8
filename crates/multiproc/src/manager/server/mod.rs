//! The manager's server process.
//!
//! * this file: the entry point [`serve`], the accept loop and one thread
//!   per client session;
//! * [`store`]: the table of objects and the dispatch of requests;
//! * [`collections`]: dict, list, namespace, value;
//! * [`sync`]: queue, lock, event, barrier (the blocking objects);
//! * [`pool`]: a pool of worker processes, run for clients.
//!
//! The server is an ordinary child process started with
//! [`ProcessBuilder::spawn`](crate::ProcessBuilder::spawn) under any start method. Its
//! owner holds the other end of a control connection: a shutdown message,
//! or the end of that connection (the owner dropped it, or died), stops the
//! server. The accept loop runs the auth handshakes of all connecting
//! clients at once on the server's main thread (`Listener::accept`: a
//! silent or slow client holds up nobody, and costs no thread); each
//! authenticated connection then gets its own thread, which serves the
//! client's requests one at a time until the client leaves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::RemoteError;
use super::protocol::{self, Blob, Reply, WireAddress};
use super::registry::{Registry, Table};
use super::transport::{Channel, Conn, IDLE_SLICE, RecvFailure, Welcome};
use crate::connection::{AcceptError, Address, Connection, HANDSHAKE_TIMEOUT, Listener};

pub(crate) mod collections;
pub(crate) mod pool;
pub(crate) mod store;
pub(crate) mod sync;

use store::{Recent, Store};

/// What the owner tells the server through the control connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Control {
    /// Stop serving and exit.
    Shutdown,
}

/// What the server tells its owner once, after it tried to listen.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Status {
    /// Listening at this address.
    Ready(WireAddress),
    /// Could not listen, for this reason.
    Failed(String),
}

/// The server's argument.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ServerArgs {
    /// Where to listen.
    pub address: WireAddress,
    /// The key every client must prove it holds.
    pub authkey: Blob,
    /// The registered types' names, in registration order.
    pub names: Vec<String>,
    /// The longest request accepted.
    pub limit: u64,
    /// The server's end of the control connection.
    pub control: Connection<Status, Control>,
}

/// Locks a mutex; a panic elsewhere while it was held does not make the
/// data unusable here (every method leaves it consistent between steps).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a method needs to know about the client calling it.
pub(crate) struct Ctx<'a> {
    /// The session (connection) the request came on.
    pub session: u64,
    /// Whether the client is still connected.
    pub alive: &'a dyn Fn() -> bool,
}

/// The server: listens, serves, and returns when its owner says so (or
/// goes). Generic over the registered types: `serve::<R>` is the function
/// the owner starts, so the server knows `R` without being told at run
/// time.
pub(crate) fn serve<R: Registry>(args: ServerArgs) {
    let ServerArgs {
        address,
        authkey,
        mut names,
        limit,
        control,
    } = args;
    let mut table = Table::new();
    R::fill(&mut names, &mut table);
    let listener = match Listener::bind(&Address::from(&address), Some(&authkey.0)) {
        Ok(l) => l,
        Err(e) => {
            let _ = control.send(&Status::Failed(e.to_string()));
            return;
        }
    };
    let bound = WireAddress::from(listener.address());
    if control.send(&Status::Ready(bound.clone())).is_err() {
        return;
    }
    let store = Arc::new(Store::new(table, limit));
    let sessions = AtomicU64::new(1);
    let local = matches!(bound, WireAddress::Unix(_) | WireAddress::Abstract(_));
    loop {
        // The handshakes run here, many at once (`Listener::accept`): a
        // connection gets its own thread only once it is authenticated, so
        // silent or slow clients cost no thread and delay nobody.
        match listener.accept_or_stop::<Welcome, Welcome>(&control) {
            Ok(Some(conn)) => {
                let store = Arc::clone(&store);
                let id = sessions.fetch_add(1, Ordering::Relaxed);
                let spawned = std::thread::Builder::new()
                    .name(format!("manager-session-{id}"))
                    .spawn(move || session(&store, conn, id, local));
                if spawned.is_err() {
                    // Out of threads: the connection was dropped; the
                    // client sees its end and may retry.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            // The owner said stop, or went.
            Ok(None) => break,
            // A client failed the handshake: it was disconnected.
            Err(AcceptError::Auth(_)) => {}
            // Out of descriptors, say: let some clients leave first.
            Err(AcceptError::Io(_)) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    // Dropping the listener (here) removes a Unix socket's file.
}

/// Serves one authenticated client: hello, then requests until it leaves.
fn session(store: &Store, conn: Conn, id: u64, unix: bool) {
    conn.set_max_message_size(store.limit);
    // The client sends its hello right after the handshake.
    if !conn.poll(Some(HANDSHAKE_TIMEOUT)).unwrap_or(false) {
        return;
    }
    let hello = conn.recv_bytes_max(64);
    let Some(local) = hello.ok().as_deref().and_then(protocol::parse_hello) else {
        let reply: Reply = Err(RemoteError::Malformed("expected a manager hello".into()));
        let _ = conn.send_bytes(&protocol::encode_reply(&reply));
        return;
    };
    // A local client gets the shared-memory path; if the queues cannot be
    // made (out of memory), it is served over the socket instead.
    let queues = if local && unix {
        Channel::local_path().ok()
    } else {
        None
    };
    let welcome = Welcome {
        limit: store.limit,
        queues: queues.clone(),
    };
    if conn.send(&welcome).is_err() {
        return;
    }
    drop(welcome);
    let channel = match queues {
        // Our own path: its presence block is the right size.
        Some(path) => match Channel::local(conn, path, true) {
            Ok(channel) => channel,
            Err(_) => return,
        },
        None => Channel::socket(conn),
    };
    let alive = || !channel.peer_gone();
    let ctx = Ctx {
        session: id,
        alive: &alive,
    };
    let mut recent = Recent::default();
    loop {
        let received = channel.recv_or_idle(store.limit, IDLE_SLICE, &mut || recent.forget());
        let (reply, go_on) = match received {
            Ok(bytes) => {
                let reply = match protocol::decode_request(&bytes) {
                    Ok(request) => store.handle(request, &ctx, &mut recent),
                    Err(e) => Err(e),
                };
                (reply, true)
            }
            // Over a socket the oversized frame is still in the stream: the
            // connection cannot go on after the answer.
            Err(RecvFailure::TooLarge { len, limit }) => (
                Err(RemoteError::TooLarge { len, limit }),
                channel.is_local(),
            ),
            Err(RecvFailure::Broken(why)) => (Err(RemoteError::Malformed(why)), false),
            Err(RecvFailure::Gone) => break,
        };
        if channel.send(protocol::encode_reply(&reply)).is_err() || !go_on {
            break;
        }
    }
    recent.forget();
    store.session_ended(id);
}
