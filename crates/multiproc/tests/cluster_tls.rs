//! rediss://: a pool and an agent over TLS with a private certificate
//! authority, and a client that does not trust it refused.
#![cfg(feature = "cluster-tls")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::cluster::{Cluster, ClusterError, LocalAgent, Tls};

#[multiproc::task]
fn double(x: u64) -> u64 {
    2 * x
}

struct TlsServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed for the TLS test (.ci/run installs it)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and a
/// redis-server speaking only TLS on a free loopback port.
fn tls_server() -> Option<TlsServer> {
    // Skipped like the other cluster tests when redis-server is missing.
    drop(common::redis_server()?);
    let dir = common::temp_path("tls");
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=multiproc test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(std::env::var_os("REDIS_SERVER").unwrap_or("redis-server".into()))
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--tls-port",
            &port.to_string(),
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(&dir)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = TlsServer { child, dir, port };
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "the TLS server did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(server)
}

#[test]
fn a_pool_runs_over_tls_and_an_untrusted_server_is_refused() {
    deadline(LIMIT, || {
        let Some(server) = tls_server() else { return };
        let url = format!("rediss://127.0.0.1:{}", server.port);
        let tls = Tls::new().ca_file(server.dir.join("ca.pem"));
        let cluster = Cluster::connect_tls(&url, tls).unwrap();
        cluster.set_min_idle(Duration::from_millis(500)).unwrap();
        // The agent is told the CA through MULTIPROC_CLUSTER_CA.
        let _agent = LocalAgent::start(&cluster, 1).unwrap();
        let pool = cluster.pool().build().unwrap();
        assert_eq!(pool.map(double, 1..=10u64).unwrap()[9], 20);
        // Without the CA, the system's authorities do not know the server.
        let e = Cluster::connect_tls(&url, Tls::new()).unwrap_err();
        assert!(matches!(e, ClusterError::Connection(_)), "{e:?}");
        // Plain text to a TLS port is no answer either.
        let e = Cluster::connect(&format!("redis://127.0.0.1:{}", server.port)).unwrap_err();
        assert!(matches!(e, ClusterError::Connection(_)), "{e:?}");
    });
}
