//! One connection to the server, made again after it breaks.
//!
//! Every command runs under a read and a write timeout, so no call waits on
//! a stalled or vanished server for longer than it allows. A command that
//! fails with a connection error drops the connection; the next command
//! connects anew. Nothing is retried here: a command that may have run
//! once must not run twice behind its caller's back.

use std::time::Duration;

use redis::FromRedisValue;

use super::error::ClusterError;

/// How long a non-blocking command may take before the connection counts
/// as lost.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that reconnects on demand.
pub(crate) struct Link {
    client: redis::Client,
    conn: Option<redis::Connection>,
    /// The read timeout the connection now has.
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) fn new(client: redis::Client) -> Link {
        Link {
            client,
            conn: None,
            read_timeout: None,
        }
    }

    fn conn(&mut self, read_timeout: Duration) -> Result<&mut redis::Connection, ClusterError> {
        if self.conn.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(IO_TIMEOUT)
                .map_err(ClusterError::from_redis)?;
            conn.set_write_timeout(Some(IO_TIMEOUT))
                .map_err(ClusterError::from_redis)?;
            self.conn = Some(conn);
            self.read_timeout = None;
        }
        let conn = self.conn.as_mut().expect("connected just above");
        if self.read_timeout != Some(read_timeout) {
            conn.set_read_timeout(Some(read_timeout))
                .map_err(ClusterError::from_redis)?;
            self.read_timeout = Some(read_timeout);
        }
        Ok(conn)
    }

    /// Keeps the connection only if `result` says it still works.
    fn settle<T>(&mut self, result: redis::RedisResult<T>) -> Result<T, ClusterError> {
        result.map_err(|e| {
            let e = ClusterError::from_redis(e);
            if e.is_connection() {
                self.conn = None;
            }
            e
        })
    }

    /// Runs one command that answers at once.
    pub(crate) fn run<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        self.run_blocking(cmd, Duration::ZERO)
    }

    /// Runs one command that the server may hold for up to `block` (a
    /// `BLPOP`, an `XREADGROUP … BLOCK`).
    pub(crate) fn run_blocking<T: FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
        block: Duration,
    ) -> Result<T, ClusterError> {
        let conn = self.conn(IO_TIMEOUT + block)?;
        let r = cmd.query(conn);
        self.settle(r)
    }

    /// Runs a pipeline of commands that answer at once.
    pub(crate) fn pipe<T: FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, ClusterError> {
        let conn = self.conn(IO_TIMEOUT)?;
        let r = pipe.query(conn);
        self.settle(r)
    }

    /// Runs a Lua script (by hash, loading it if the server lacks it).
    pub(crate) fn script<T: FromRedisValue>(
        &mut self,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        let conn = self.conn(IO_TIMEOUT)?;
        let r = call.invoke(conn);
        self.settle(r)
    }
}
