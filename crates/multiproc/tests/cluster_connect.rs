//! Connecting to a cluster server: URLs, versions, namespaces, and a
//! server that goes away.
#![cfg(feature = "cluster")]

mod common;

use std::time::Duration;

use common::{LIMIT, deadline, redis_server};
use multiproc::cluster::{Cluster, ClusterError};

#[test]
fn a_private_server_starts_answers_and_leaves_nothing() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let dir = server.socket().parent().unwrap().to_owned();
        let pid = server.pid().unwrap() as i32;
        let cluster = Cluster::connect(&server.url()).unwrap();
        assert_eq!(cluster.namespace_name(), "default");
        assert_eq!(cluster.min_idle().unwrap(), Duration::from_secs(10));
        cluster.set_min_idle(Duration::from_millis(250)).unwrap();
        assert_eq!(cluster.min_idle().unwrap(), Duration::from_millis(250));
        // Namespaces keep their settings apart.
        let other = cluster.namespace("other").unwrap();
        assert_eq!(other.min_idle().unwrap(), Duration::from_secs(10));
        drop(server);
        assert!(!dir.exists(), "the server's directory was left behind");
        assert!(
            common::wait_gone(pid, Duration::from_secs(5)),
            "redis-server still runs"
        );
    });
}

#[test]
fn bad_urls_and_names_are_typed_errors() {
    deadline(LIMIT, || {
        for url in ["", "localhost:6379", "http://h", "redis://"] {
            let e = Cluster::connect(url).unwrap_err();
            assert!(
                matches!(e, ClusterError::Url { .. } | ClusterError::Connection(_)),
                "{url}: {e:?}"
            );
        }
        // A password never shows in an error.
        let e = Cluster::connect("redis://user:hunter2@127.0.0.1:1").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}");
        let Some(server) = redis_server() else { return };
        let cluster = Cluster::connect(&server.url()).unwrap();
        for name in ["", "with space", "{tag}", "ü"] {
            assert!(matches!(
                cluster.namespace(name),
                Err(ClusterError::InvalidName { .. })
            ));
        }
        assert!(matches!(
            cluster.set_min_idle(Duration::from_millis(1)),
            Err(ClusterError::Server(_))
        ));
    });
}

#[test]
fn a_vanished_server_is_an_error_not_a_hang() {
    deadline(LIMIT, || {
        let Some(mut server) = redis_server() else {
            return;
        };
        let cluster = Cluster::connect(&server.url()).unwrap();
        server.kill().unwrap();
        assert!(matches!(
            cluster.min_idle(),
            Err(ClusterError::Connection(_))
        ));
        let e = Cluster::connect(&server.url()).unwrap_err();
        assert!(matches!(e, ClusterError::Connection(_)), "{e:?}");
        // A restarted, empty server is reachable again.
        server.restart().unwrap();
        assert_eq!(cluster.min_idle().unwrap(), Duration::from_secs(10));
    });
}
