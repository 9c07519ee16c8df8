//! How requests and replies travel between a client and the server: one
//! strategy per variant of [`Channel`].
//!
//! * *socket*: each message is one frame on the authenticated connection
//!   (Unix or TCP). Any client, local or remote. A round trip costs two
//!   socket wake-ups, about 15–20 µs on a small machine.
//! * *local*: after the handshake, the server hands a local client a pair of
//!   shared-memory [`Queue`]s (over the Unix socket, as handles) and serves
//!   it from them. Each side spins briefly before it sleeps, so a round trip
//!   costs a few microseconds. The socket stays open beside the queues as a
//!   lifeline: its end of stream means the peer is gone. Each side also
//!   publishes whether it is running, and where, so that the other spins
//!   only while that can pay off (see [`settle`]), and so that a client
//!   about to sleep for its answer on a machine with no processor to
//!   spare moves onto the server's processor ([`Presence::join`]).
//!
//! Both sides use the same type with the queues swapped: a client sends on
//! the request queue and receives on the reply queue; the server the other
//! way round.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::protocol::Blob;
use crate::connection::{Connection, RecvError};
use crate::queue::{GetTimeoutError, Queue};
use crate::shared::SharedMemory;
use crate::shm::wait::{Next, Policy, Presence, Waiter};

/// How often a side waiting for an answer, or a server thread in a
/// blocking method, checks that its peer is still connected.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(100);

/// How often an idle server thread on the local path checks that its
/// client is still connected (only to free the thread sooner).
pub(crate) const IDLE_SLICE: Duration = Duration::from_millis(500);

/// Bytes of each queue's ring on the local path; larger messages travel
/// out of line.
const LOCAL_RING_BYTES: usize = 256 << 10;

/// Which presence word is whose.
const CLIENT: usize = 0;
const SERVER: usize = 1;
/// Words in a presence block, at least.
const PRESENCE_WORDS: usize = 2;

/// How a side waits for its queue before the blocking `get`: it spins
/// while the peer runs on another processor (it answers within a few
/// microseconds there, while a yield costs about one, a system call, and
/// with more busy threads than cores hands this processor to somebody
/// else), then yields for about 200 µs. When the peer shares this
/// processor (the usual case with more busy threads than cores), the first
/// yield lets it run and answer: a round trip then costs two context
/// switches, about 6 µs here, where spinning first made it about 15 µs.
/// When nothing else wants this processor, a yield returns at once and the
/// loop is a slightly slower spin. On a busy machine (a yield lately kept
/// the processor away for long: see `shm::wait`) the yields are skipped,
/// and after settling a side sleeps at once, without the yields of the
/// queue's own `get`: with a CPU-bound process on every core, each yield
/// handed the processor to it for its whole time slice, and a request took
/// about 2 ms (500 a second, against 20,000 for Python's manager).
const SETTLE: Policy = Policy::Timed {
    spin: Duration::from_micros(10),
    yields: Duration::from_micros(200),
    yield_when_busy: false,
};

/// Waits briefly for `rx` to have a message, as [`SETTLE`] says, keeping
/// this side's presence word up to date; returns whether one came.
fn settle(rx: &Queue<Blob>, presence: Presence<'_>) -> bool {
    let mut waiter = Waiter::with_presence(SETTLE, None, Some(presence));
    loop {
        if !rx.is_empty() {
            return true;
        }
        if waiter.pause() != Next::Check {
            return false;
        }
    }
}

/// A local session's shared-memory path: the two queues, and a block of
/// two presence words (the client's, the server's; see
/// [`Presence`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LocalPath {
    requests: Queue<Blob>,
    replies: Queue<Blob>,
    presence: SharedMemory,
}

/// The server's answer to a client's hello.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Welcome {
    /// The longest request the server accepts.
    pub limit: u64,
    /// For a local client: the request and reply queues, and the presence
    /// words.
    pub queues: Option<LocalPath>,
}

/// The handshake's connection: both sides send and receive [`Welcome`]s
/// (the client only receives one), and raw bytes for everything else.
pub(crate) type Conn = Connection<Welcome, Welcome>;

/// Why a receive failed.
#[derive(Debug)]
pub(crate) enum RecvFailure {
    /// The peer closed its end or exited.
    Gone,
    /// The message is longer than the receiver accepts.
    TooLarge {
        /// The message's length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// Anything else: the channel is unusable.
    Broken(String),
}

enum Strategy {
    Socket,
    Local {
        tx: Queue<Blob>,
        rx: Queue<Blob>,
        presence: SharedMemory,
        /// This side's presence word (the other is the peer's).
        mine: usize,
    },
}

/// One side of a client's session with the server.
pub(crate) struct Channel {
    conn: Conn,
    strategy: Strategy,
}

impl Channel {
    /// A channel that carries messages on the connection itself.
    pub(crate) fn socket(conn: Conn) -> Channel {
        Channel {
            conn,
            strategy: Strategy::Socket,
        }
    }

    /// A channel over `path`, with `conn` as its lifeline: the server's
    /// side (receives requests) or the client's. A client's path comes from
    /// the server, which may send any block: one too small for the two
    /// presence words is refused here, once, so that no later access can
    /// fall outside it.
    pub(crate) fn local(conn: Conn, path: LocalPath, server: bool) -> Result<Channel, String> {
        let LocalPath {
            requests,
            replies,
            presence,
        } = path;
        if presence.as_atomic_u64().len() < PRESENCE_WORDS {
            return Err(format!(
                "the server's presence block holds {} bytes, not the {} of two words",
                presence.size(),
                PRESENCE_WORDS * 8
            ));
        }
        let (tx, rx, mine) = if server {
            (replies, requests, SERVER)
        } else {
            (requests, replies, CLIENT)
        };
        Ok(Channel {
            conn,
            strategy: Strategy::Local {
                tx,
                rx,
                presence,
                mine,
            },
        })
    }

    /// A fresh shared-memory path for a local client.
    pub(crate) fn local_path() -> std::io::Result<LocalPath> {
        let make = || Queue::builder().ring_bytes(LOCAL_RING_BYTES).build();
        Ok(LocalPath {
            requests: make()?,
            replies: make()?,
            presence: SharedMemory::create_unnamed(PRESENCE_WORDS * 8)?,
        })
    }

    /// Whether this channel uses shared memory.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self.strategy, Strategy::Local { .. })
    }

    /// Whether the peer has gone: its end of the connection is closed. (In
    /// the lockstep protocol nothing else arrives on the socket while a
    /// side waits for an answer.)
    pub(crate) fn peer_gone(&self) -> bool {
        self.conn.poll(Some(Duration::ZERO)).unwrap_or(true)
    }

    /// Sends one message.
    pub(crate) fn send(&self, bytes: Vec<u8>) -> Result<(), RecvFailure> {
        match &self.strategy {
            Strategy::Socket => self.conn.send_bytes(&bytes).map_err(|e| match e {
                crate::SendError::Disconnected => RecvFailure::Gone,
                other => RecvFailure::Broken(other.to_string()),
            }),
            Strategy::Local { tx, .. } => tx.put(Blob(bytes)).map_err(|e| match e.reason {
                crate::PutFailure::Corrupted(why) => {
                    RecvFailure::Broken(format!("the shared-memory channel was corrupted: {why}"))
                }
                _ => RecvFailure::Gone,
            }),
        }
    }

    /// Receives one message of at most `limit` bytes, waiting as long as
    /// the peer is there. On the local path, checks the peer every `slice`.
    pub(crate) fn recv(&self, limit: u64, slice: Duration) -> Result<Vec<u8>, RecvFailure> {
        self.recv_or_idle(limit, slice, &mut || {})
    }

    /// [`recv`](Self::recv), calling `idle` once before it sleeps (over a
    /// socket: before every receive).
    pub(crate) fn recv_or_idle(
        &self,
        limit: u64,
        slice: Duration,
        idle: &mut dyn FnMut(),
    ) -> Result<Vec<u8>, RecvFailure> {
        match &self.strategy {
            Strategy::Socket => {
                idle();
                self.conn.recv_bytes_max(limit).map_err(|e| match e {
                    RecvError::TooLarge { len, limit } => RecvFailure::TooLarge { len, limit },
                    RecvError::Disconnected | RecvError::Truncated { .. } => RecvFailure::Gone,
                    other => RecvFailure::Broken(other.to_string()),
                })
            }
            Strategy::Local {
                rx, presence, mine, ..
            } => loop {
                // Both words exist: checked in `local`, and the block's
                // size is sealed. `get` all the same, never an index panic.
                let words = presence.as_atomic_u64();
                let (Some(me), Some(peer)) = (words.get(*mine), words.get(1 - *mine)) else {
                    return Err(RecvFailure::Broken("presence block too small".into()));
                };
                let presence = Presence {
                    mine: me,
                    theirs: peer,
                };
                if !settle(rx, presence) {
                    idle();
                    // The client only: it waits for the answer to its
                    // request, which the server is about to work on. (Were
                    // both sides to move, they could swap processors.)
                    if *mine == CLIENT {
                        presence.join();
                    }
                }
                presence.leave();
                let got = rx.get_timeout_sleeping(slice);
                presence.arrive();
                match got {
                    Ok(Blob(bytes)) if bytes.len() as u64 > limit => {
                        return Err(RecvFailure::TooLarge {
                            len: bytes.len() as u64,
                            limit,
                        });
                    }
                    Ok(Blob(bytes)) => return Ok(bytes),
                    Err(GetTimeoutError::Timeout) if !self.peer_gone() => continue,
                    Err(GetTimeoutError::Timeout) => return Err(RecvFailure::Gone),
                    Err(GetTimeoutError::Failed(crate::GetError::Disconnected)) => {
                        return Err(RecvFailure::Gone);
                    }
                    Err(GetTimeoutError::Failed(e)) => {
                        return Err(RecvFailure::Broken(e.to_string()));
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_block_too_small_is_refused() {
        // What a hostile server can send a local client: queues, and a
        // sealed block of too few bytes where two presence words should be.
        for size in [1, 4, 8, 15] {
            let (conn, _peer) = crate::connection::pipe::<Welcome, Welcome>().unwrap();
            let mut path = Channel::local_path().unwrap();
            path.presence = SharedMemory::create(size).unwrap();
            assert_eq!(path.presence.size(), size);
            let e = Channel::local(conn, path, false).err().expect("refused");
            assert!(e.contains("presence block"), "{e}");
        }
        let (conn, _peer) = crate::connection::pipe::<Welcome, Welcome>().unwrap();
        let channel = Channel::local(conn, Channel::local_path().unwrap(), false).unwrap();
        assert!(channel.is_local());
    }
}
