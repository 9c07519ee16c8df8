//! The cluster backend: the same pool, queue and shared objects across
//! many machines, on a Redis (or Valkey) server. Behind the cargo feature
//! `cluster`.
//!
//! A [`Cluster`] is a handle on one server and one *namespace* (a prefix
//! that keeps one application's keys apart from another's). From it come
//! a pool whose tasks run on *agents* (copies of the user's own binary on
//! any machine, started with `MULTIPROC_CLUSTER=<url>`), and named objects
//! that any process attaches to by name.
//!
//! Everything here is a client of the server: no task, queue item or lock
//! lives in this process, and the server's limits apply (it keeps
//! everything in memory; without persistence, a restart loses it all).
//! `docs/cluster.md` gives the design and every difference from the local
//! objects.

mod error;
mod link;
mod objects;
mod pool;
mod server;
mod wire;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use error::ClusterError;
pub use objects::*;
pub use pool::{
    BuildCheck, DEFAULT_INLINE_LIMIT, DEFAULT_MAX_DELIVERIES, DEFAULT_MAX_MESSAGE,
    DEFAULT_PRODUCER_TTL, DEFAULT_SERVER_TIMEOUT, PoolBuilder,
};
pub use server::LocalServer;
pub use worker::{Agent, AgentInfo, LocalAgent, TaskInfo, WorkerOptions, current_task};

pub(crate) use link::Link;

/// The oldest server this backend works with: `XAUTOCLAIM` came in 6.2.
const MIN_SERVER: (u32, u32) = (6, 2);

/// The namespace of a [`Cluster::connect`] handle until
/// [`Cluster::namespace`] picks another.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A handle on a cluster's server and one namespace in it. Cheap to clone;
/// every object made from it opens its own connection.
///
/// ```no_run
/// # #[cfg(feature = "cluster")] {
/// use multiproc::cluster::Cluster;
///
/// let cluster = Cluster::connect("redis://10.0.0.5:6379")?.namespace("render")?;
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    ns: Arc<str>,
}

struct Inner {
    client: redis::Client,
    /// The TLS files, for agents started from here.
    #[cfg(feature = "cluster-tls")]
    tls: Option<Tls>,
    /// The URL as given (agents started from here get it).
    full: String,
    /// The URL as given, without its password.
    shown: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.inner.shown)
            .field("namespace", &self.ns)
            .finish()
    }
}

impl Cluster {
    /// Connects to the server at `url` and checks that it answers and is
    /// recent enough (Redis or Valkey 6.2 or later).
    ///
    /// The URL is one of `redis://[user:password@]host[:port][/db]`,
    /// `rediss://…` (TLS, with the `cluster-tls` feature) or
    /// `redis+unix:///path/to/socket` (also `unix:///path`).
    pub fn connect(url: &str) -> Result<Cluster, ClusterError> {
        #[cfg(feature = "cluster-tls")]
        if url.starts_with("rediss://") {
            return Cluster::connect_tls(url, Tls::from_env());
        }
        Cluster::open(url, None)
    }

    /// Connects over TLS (`rediss://…`) trusting the given certificate
    /// authority, and presenting a client certificate if given (feature
    /// `cluster-tls`). [`connect`](Self::connect) on a `rediss://` URL
    /// takes the files from `MULTIPROC_CLUSTER_CA`, `MULTIPROC_CLUSTER_CERT`
    /// and `MULTIPROC_CLUSTER_KEY`, or trusts the system's authorities.
    #[cfg(feature = "cluster-tls")]
    pub fn connect_tls(url: &str, tls: Tls) -> Result<Cluster, ClusterError> {
        Cluster::open(url, Some(tls))
    }

    #[cfg_attr(not(feature = "cluster-tls"), allow(unused_variables))]
    fn open(url: &str, tls: Option<TlsArg>) -> Result<Cluster, ClusterError> {
        let shown = redact(url);
        let bad = |message: String| ClusterError::Url {
            url: shown.clone(),
            message,
        };
        let scheme = url.split("://").next().unwrap_or("");
        if !url.contains("://") || !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix") {
            return Err(bad(
                "expected redis://, rediss://, redis+unix:// or unix://".into(),
            ));
        }
        #[cfg(not(feature = "cluster-tls"))]
        if scheme == "rediss" {
            return Err(bad(
                "rediss:// (TLS) needs multiproc's cargo feature cluster-tls".into(),
            ));
        }
        #[cfg(feature = "cluster-tls")]
        let client = match (&tls, scheme) {
            (Some(tls), "rediss") => tls.client(url).map_err(bad)?,
            (Some(_), _) => return Err(bad("TLS settings need a rediss:// URL".into())),
            _ => redis::Client::open(url).map_err(|e| bad(e.to_string()))?,
        };
        #[cfg(not(feature = "cluster-tls"))]
        let client = redis::Client::open(url).map_err(|e| bad(e.to_string()))?;
        let cluster = Cluster {
            inner: Arc::new(Inner {
                client,
                #[cfg(feature = "cluster-tls")]
                tls,
                full: url.to_owned(),
                shown,
            }),
            ns: DEFAULT_NAMESPACE.into(),
        };
        cluster.check_server()?;
        Ok(cluster)
    }

    /// What an agent started from here must be told besides the URL.
    pub(crate) fn agent_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        #[cfg(feature = "cluster-tls")]
        if let Some(tls) = &self.inner.tls {
            return tls.env();
        }
        Vec::new()
    }

    fn check_server(&self) -> Result<(), ClusterError> {
        let mut link = self.link();
        // HELLO, not INFO: an ACL user limited to what the backend uses
        // may run it (`+@connection`).
        let hello: redis::Value = link.run(&redis::cmd("HELLO"))?;
        let version = hello_field(&hello, "version")
            .ok_or_else(|| ClusterError::Server("the server does not say its version".into()))?;
        let mut parts = version
            .trim()
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if v < MIN_SERVER {
            return Err(ClusterError::Server(format!(
                "server version {} is too old: the cluster backend needs 6.2 or later",
                version.trim()
            )));
        }
        Ok(())
    }

    /// The same server, in namespace `name`: keys under `mp:{name}:`, so
    /// that one application's pools and objects never meet another's.
    /// Agents serve one namespace (`MULTIPROC_CLUSTER_NS`).
    pub fn namespace(&self, name: &str) -> Result<Cluster, ClusterError> {
        check_name(name)?;
        Ok(Cluster {
            inner: Arc::clone(&self.inner),
            ns: name.into(),
        })
    }

    /// This handle's namespace.
    pub fn namespace_name(&self) -> &str {
        &self.ns
    }

    /// The server's URL, with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.inner.shown
    }

    /// The URL with its password, for agents started from here.
    pub(crate) fn full_url(&self) -> &str {
        &self.inner.full
    }

    /// A new connection to the server.
    pub(crate) fn link(&self) -> Link {
        Link::new(self.inner.client.clone())
    }

    /// The key `mp:{ns}:<rest>`. The braces are a Redis Cluster hash tag:
    /// one namespace's keys live on one shard, so scripts may touch
    /// several.
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("mp:{{{}}}:{rest}", self.ns)
    }

    /// How long an agent's task may go without a heartbeat before other
    /// agents take it over (see [`set_min_idle`](Self::set_min_idle)).
    pub fn min_idle(&self) -> Result<Duration, ClusterError> {
        let mut link = self.link();
        let ms: Option<u64> = link.run(
            redis::cmd("HGET")
                .arg(self.key("config"))
                .arg("min_idle_ms"),
        )?;
        Ok(ms.map_or(DEFAULT_MIN_IDLE, Duration::from_millis))
    }

    /// Sets, for the whole namespace, how long a task may go without its
    /// agent's heartbeat before other agents take it over: the bound on
    /// how late a dead agent's work is noticed, and on how long a stalled
    /// (not dead) agent may pause before its work runs twice. Agents read
    /// it as they start and at every heartbeat. Default 10 s; at least
    /// 50 ms.
    pub fn set_min_idle(&self, min_idle: Duration) -> Result<(), ClusterError> {
        if min_idle < Duration::from_millis(50) {
            return Err(ClusterError::Server(
                "min_idle must be at least 50 ms".into(),
            ));
        }
        let ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut link = self.link();
        link.run::<()>(
            redis::cmd("HSET")
                .arg(self.key("config"))
                .arg("min_idle_ms")
                .arg(ms),
        )
    }
}

#[cfg(feature = "cluster-tls")]
type TlsArg = Tls;
/// Without TLS support there are no TLS settings.
#[cfg(not(feature = "cluster-tls"))]
type TlsArg = std::convert::Infallible;

/// TLS files for [`Cluster::connect_tls`], in PEM (feature
/// `cluster-tls`).
#[cfg(feature = "cluster-tls")]
#[derive(Debug, Clone, Default)]
pub struct Tls {
    ca: Option<std::path::PathBuf>,
    client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

#[cfg(feature = "cluster-tls")]
impl Tls {
    /// The system's authorities, no client certificate.
    pub fn new() -> Tls {
        Tls::default()
    }

    /// Trust this certificate authority (a PEM file) instead of the
    /// system's.
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Tls {
        self.ca = Some(path.into());
        self
    }

    /// Present this client certificate and key (PEM files): mutual TLS.
    pub fn client_files(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Tls {
        self.client = Some((cert.into(), key.into()));
        self
    }

    fn from_env() -> Tls {
        let var = |k: &str| std::env::var_os(k).map(std::path::PathBuf::from);
        Tls {
            ca: var(CA_ENV),
            client: var(CERT_ENV).zip(var(KEY_ENV)),
        }
    }

    fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let mut out = Vec::new();
        if let Some(ca) = &self.ca {
            out.push((CA_ENV, ca.clone().into_os_string()));
        }
        if let Some((cert, key)) = &self.client {
            out.push((CERT_ENV, cert.clone().into_os_string()));
            out.push((KEY_ENV, key.clone().into_os_string()));
        }
        out
    }

    fn client(&self, url: &str) -> Result<redis::Client, String> {
        // rustls needs a process-wide crypto provider: ring (aws-lc would
        // need cmake and a C build), installed once; a provider the
        // program installed first is kept. (Deprecated only for lacking
        // post-quantum key exchange.)
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let root_cert = self.ca.as_deref().map(read).transpose()?;
        let client_tls = match &self.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            None => None,
        };
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| e.to_string())
    }
}

/// The certificate authority an agent trusts for `rediss://` (a PEM
/// file).
pub const CA_ENV: &str = "MULTIPROC_CLUSTER_CA";
/// The client certificate an agent presents (with [`KEY_ENV`]).
pub const CERT_ENV: &str = "MULTIPROC_CLUSTER_CERT";
/// The client certificate's key.
pub const KEY_ENV: &str = "MULTIPROC_CLUSTER_KEY";

/// Default for [`Cluster::min_idle`].
pub const DEFAULT_MIN_IDLE: Duration = Duration::from_secs(10);

/// Longest name of a namespace or an object.
const MAX_NAME: usize = 200;

/// Refuses names that would not make a clean key: empty, too long, or with
/// characters other than letters, digits and `._-:/`.
pub(crate) fn check_name(name: &str) -> Result<(), ClusterError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME {
        Some("it is longer than 200 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b))
    {
        Some("only ASCII letters, digits and . _ - : / may appear in it")
    } else {
        None
    };
    match why {
        Some(why) => Err(ClusterError::InvalidName {
            name: name.chars().take(MAX_NAME).collect(),
            why,
        }),
        None => Ok(()),
    }
}

/// A text field of a `HELLO` answer (a map, or an array of alternating
/// names and values).
fn hello_field(v: &redis::Value, name: &str) -> Option<String> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match v {
        redis::Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .and_then(|(_, v)| text(v)),
        redis::Value::Array(items) => items
            .chunks(2)
            .find(|kv| kv.first().and_then(text).as_deref() == Some(name))
            .and_then(|kv| kv.get(1).and_then(text)),
        _ => None,
    }
}

/// `url` with the password (between `:` and `@` after the scheme, or a
/// `pass=` query parameter) hidden.
fn redact(url: &str) -> String {
    let url = match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("pass" | "password", _)) => {
                        format!("{}=***", kv.split('=').next().unwrap_or(""))
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            return format!("{}?{}", redact(base), query.join("&"));
        }
        None => url,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://{auth}@{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact("redis+unix:///tmp/s.sock"),
            "redis+unix:///tmp/s.sock"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("render.v2/jobs-1:a_b").is_ok());
        for bad in ["", "a b", "a{b}", "é", &"x".repeat(201)] {
            assert!(
                matches!(check_name(bad), Err(ClusterError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }
}
