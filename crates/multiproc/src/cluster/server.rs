//! A private `redis-server` for tests, examples and one-machine use.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::launcher;
use crate::sys;

/// How long a server may take to answer its first `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` of this process's own, listening only on a Unix socket
/// (mode 700) in a fresh private directory, keeping nothing on disk.
///
/// The program is `redis-server` from `PATH`, or the one the variable
/// `REDIS_SERVER` names (`valkey-server` works the same). Dropping the
/// handle shuts the server down and removes its directory; if this
/// process dies first, the kernel kills the server with it.
///
/// ```no_run
/// # #[cfg(feature = "cluster")] {
/// use multiproc::cluster::{Cluster, LocalServer};
///
/// let server = LocalServer::start()?;
/// let cluster = Cluster::connect(&server.url())?;
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LocalServer {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl LocalServer {
    /// Starts the server and waits until it answers. An error of kind
    /// [`NotFound`](io::ErrorKind::NotFound) means the program is not
    /// installed.
    pub fn start() -> io::Result<LocalServer> {
        let dir = private_dir()?;
        let socket = dir.join("redis.sock");
        let mut server = LocalServer {
            child: None,
            dir,
            socket,
        };
        let child = LocalServer::start_in(&server.dir, &server.socket)?;
        server.child = Some(child);
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let end = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "redis-server exited at start ({status}): {}",
                    log.trim()
                )));
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "redis-server did not answer within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    /// The URL to give [`Cluster::connect`](super::Cluster::connect):
    /// `redis+unix:///…/redis.sock`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// The server's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server at once (SIGKILL), as a crash would, and waits for
    /// it; the directory stays until the handle is dropped.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same socket, empty (it keeps
    /// nothing on disk): what clients see after a restart without
    /// persistence.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        let _ = std::fs::remove_file(&self.socket);
        let fresh = LocalServer::start_in(&self.dir, &self.socket)?;
        self.child = Some(fresh);
        self.wait_ready()
    }

    fn start_in(dir: &Path, socket: &Path) -> io::Result<Child> {
        let program = std::env::var_os("REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
        let mut cmd = Command::new(program);
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .args(["--daemonize", "no", "--loglevel", "warning", "--logfile"])
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        launcher::run(move || sys::process::spawn_dying_with_caller(&mut cmd))
    }

    fn shut_down(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(client) = redis::Client::open(self.url())
            && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1))
        {
            // The server closes the connection instead of answering.
            let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut conn);
        }
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.shut_down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new directory only this user may enter, under the system's
/// temporary directory.
fn private_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).map_err(io::Error::other)?;
        let name: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        let dir = base.join(format!("multiproc-redis-{name}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not make a private directory"))
}
