//! The client side: a [`Link`] to one manager, shared by every proxy of
//! this process that points at it.
//!
//! A link keeps a pool of idle sessions (connections, each with its
//! transport, [`Channel`]). A call takes one, or opens a new one, and puts
//! it back after the answer: so concurrent calls from several threads each
//! have their own session, and a thread blocked in a manager `Lock` or
//! `Queue` does not hold up the others. A forked child never uses its
//! parent's sessions: the pool remembers which process filled it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::error::ProxyError;
use super::protocol::{self, Payload, Reply, Request, Single, WireAddress};
use super::server::lock;
use super::transport::{Channel, Conn, LIVENESS_SLICE, RecvFailure, Welcome};
use crate::connection::{Address, Client};
use crate::sys::fork_local::ForkLocal;

#[derive(Default)]
struct Pool {
    pid: u32,
    idle: Vec<Channel>,
}

/// A process's way to one manager.
pub(crate) struct Link {
    address: Address,
    wire: WireAddress,
    authkey: Vec<u8>,
    /// The longest request the server accepts (learned at the first
    /// connection).
    limit: AtomicU64,
    pool: Mutex<Pool>,
}

/// Every link of this process, so that proxies received for the same
/// manager share one.
/// A child forked from this process starts a list of its own.
static LINKS: ForkLocal<Vec<Weak<Link>>> = ForkLocal::new(Vec::new);

impl Link {
    /// The link of this process to the manager at `address`, made if needed.
    /// Nothing is connected until the first call.
    pub(crate) fn shared(address: &WireAddress, authkey: &[u8]) -> Arc<Link> {
        let mut links = LINKS.lock();
        links.retain(|l| l.strong_count() > 0);
        let found = links
            .iter()
            .filter_map(Weak::upgrade)
            .find(|l| l.wire == *address && l.authkey == authkey);
        if let Some(link) = found {
            return link;
        }
        let link = Arc::new(Link {
            address: Address::from(address),
            wire: address.clone(),
            authkey: authkey.to_vec(),
            limit: AtomicU64::new(u64::MAX),
            pool: Mutex::default(),
        });
        links.push(Arc::downgrade(&link));
        link
    }

    /// The manager's address.
    pub(crate) fn address(&self) -> &Address {
        &self.address
    }

    /// The address as it travels inside a proxy.
    pub(crate) fn wire_address(&self) -> &WireAddress {
        &self.wire
    }

    /// The longest request the server accepts, as far as known (no limit
    /// before the first connection).
    pub(crate) fn max_request(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// The auth key.
    pub(crate) fn authkey(&self) -> &[u8] {
        &self.authkey
    }

    /// Sends one request and returns the answer.
    pub(crate) fn call(&self, single: Single) -> Result<Payload, ProxyError> {
        Ok(self.round_trip(&Request::One(single))??)
    }

    /// Sends several requests in one message and returns their answers in
    /// order.
    pub(crate) fn batch(&self, all: Vec<Single>) -> Result<Vec<Reply>, ProxyError> {
        let n = all.len();
        match self.round_trip(&Request::Batch(all))?? {
            Payload::Batch(replies) if replies.len() == n => Ok(replies),
            other => Err(unexpected(&other)),
        }
    }

    /// Opens a session now (to check that the manager is there).
    pub(crate) fn connect_now(&self) -> Result<(), ProxyError> {
        let channel = self.take()?;
        self.give_back(channel);
        Ok(())
    }

    /// Closes the idle sessions.
    pub(crate) fn close_idle(&self) {
        let idle = std::mem::take(&mut lock(&self.pool).idle);
        drop(idle);
    }

    fn round_trip(&self, request: &Request) -> Result<Reply, ProxyError> {
        let bytes = protocol::encode_request(request)?;
        let limit = self.limit.load(Ordering::Relaxed);
        if bytes.len() as u64 > limit {
            return Err(ProxyError::TooLarge {
                len: bytes.len() as u64,
                limit,
            });
        }
        let channel = self.take()?;
        channel.send(bytes).map_err(failure)?;
        let answer = channel.recv(u64::MAX, LIVENESS_SLICE).map_err(failure)?;
        self.give_back(channel);
        protocol::decode_reply(&answer).map_err(|e| ProxyError::Protocol(e.to_string()))
    }

    fn take(&self) -> Result<Channel, ProxyError> {
        {
            let mut pool = lock(&self.pool);
            let me = crate::sys::futex::pid();
            if pool.pid != me {
                // Sessions inherited from the parent over a fork are the
                // parent's: never speak on them, and never drop them (a
                // child forked to run a function has closed their
                // descriptors already; see `wire::handles`).
                std::mem::forget(std::mem::take(&mut pool.idle));
                pool.pid = me;
            }
            if let Some(channel) = pool.idle.pop() {
                return Ok(channel);
            }
        }
        self.connect()
    }

    fn give_back(&self, channel: Channel) {
        let mut pool = lock(&self.pool);
        if pool.pid == crate::sys::futex::pid() {
            pool.idle.push(channel);
        }
    }

    fn connect(&self) -> Result<Channel, ProxyError> {
        let conn: Conn = Client::connect(&self.address, Some(&self.authkey))?;
        let local = matches!(self.address, Address::Unix(_) | Address::Abstract(_));
        conn.send_bytes(&protocol::hello(local))?;
        let welcome: Welcome = conn.recv()?;
        self.limit.store(welcome.limit, Ordering::Relaxed);
        Ok(match welcome.queues {
            Some(path) => Channel::local(conn, path, false).map_err(ProxyError::Protocol)?,
            None => Channel::socket(conn),
        })
    }
}

fn failure(f: RecvFailure) -> ProxyError {
    match f {
        RecvFailure::Gone => ProxyError::Disconnected,
        RecvFailure::TooLarge { len, limit } => {
            ProxyError::Protocol(format!("an answer of {len} bytes exceeds {limit}"))
        }
        RecvFailure::Broken(why) => ProxyError::Protocol(why),
    }
}

/// The error for an answer of the wrong shape.
pub(crate) fn unexpected(payload: &Payload) -> ProxyError {
    ProxyError::Protocol(format!("unexpected answer {payload:?}"))
}
