//! One connection to the server, made again after it breaks.
//!
//! Every command runs under a read and a write timeout, so no call waits on
//! a stalled or vanished server for longer than it allows. A command that
//! fails with a connection error drops the connection; the next command
//! connects anew. Nothing is retried here: a command that may have run
//! once must not run twice behind its caller's back.

use std::time::{Duration, Instant};

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

    /// The connection, made if need be, with its timeouts set so that
    /// what is left of `wait` (which ends at `end`) bounds the next
    /// command.
    fn conn_until(
        &mut self,
        end: Instant,
        wait: Duration,
    ) -> Result<&mut redis::Connection, ClusterError> {
        let left = || end.saturating_duration_since(Instant::now());
        if self.conn.is_none() {
            // Making a connection may read up to four answers (AUTH,
            // SELECT, two CLIENT SETINFO), each under the timeout given.
            let setup = (left() / 4).clamp(Duration::from_millis(1), IO_TIMEOUT);
            let conn = self
                .client
                .get_connection_with_timeout(setup)
                .map_err(|e| within(ClusterError::from_redis(e), wait))?;
            self.conn = Some(conn);
            self.read_timeout = None;
        }
        let left = left();
        if left.is_zero() {
            self.conn = None;
            return Err(ClusterError::Timeout(wait));
        }
        let conn = self.conn.as_mut().expect("connected just above");
        let set = conn
            .set_read_timeout(Some(left))
            .and_then(|()| conn.set_write_timeout(Some(left.min(IO_TIMEOUT))));
        if let Err(e) = set {
            self.conn = None;
            return Err(ClusterError::from_redis(e));
        }
        self.read_timeout = Some(left);
        Ok(self.conn.as_mut().expect("connected just above"))
    }

    /// Runs one command (a `BLPOP` the server holds for less than `wait`,
    /// or one that answers at once), giving up when its answer has not
    /// come within `wait`, connecting included: a server silent that long
    /// is [`ClusterError::Timeout`], and the connection is dropped.
    pub(crate) fn run_within<T: FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
        wait: Duration,
    ) -> Result<T, ClusterError> {
        let end = Instant::now() + wait;
        let r = cmd.query(self.conn_until(end, wait)?);
        self.settle_within(r, wait)
    }

    /// Runs a Lua script as [`run_within`](Self::run_within) runs a
    /// command.
    pub(crate) fn script_within<T: FromRedisValue>(
        &mut self,
        call: &redis::ScriptInvocation<'_>,
        wait: Duration,
    ) -> Result<T, ClusterError> {
        let end = Instant::now() + wait;
        let r = call.invoke(self.conn_until(end, wait)?);
        self.settle_within(r, wait)
    }

    fn settle_within<T>(
        &mut self,
        r: redis::RedisResult<T>,
        wait: Duration,
    ) -> Result<T, ClusterError> {
        r.map_err(|e| {
            // A read with a timeout is never restarted after a signal
            // handler ran or the process was stopped and continued
            // (signal(7)): the connection is dropped, as after a timeout.
            if e.is_io_error()
                && e.to_string()
                    .contains(&format!("(os error {})", libc::EINTR))
            {
                self.conn = None;
                return ClusterError::Connection(format!("{INTERRUPTED}: {e}"));
            }
            let e = within(ClusterError::from_redis(e), wait);
            if e.is_connection() {
                self.conn = None;
            }
            e
        })
    }
}

/// How the message of a [`ClusterError::Connection`] begins when a
/// signal interrupted the wait for an answer.
pub(crate) const INTERRUPTED: &str = "interrupted by a signal";

/// A client-side timeout as the [`ClusterError::Timeout`] of a call that
/// gave the server `wait`.
fn within(e: ClusterError, wait: Duration) -> ClusterError {
    match e {
        ClusterError::Connection(m) if m.starts_with("timed out") => ClusterError::Timeout(wait),
        e => e,
    }
}
