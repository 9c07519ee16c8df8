//! An ACL user limited to the namespace's keys and the command categories
//! docs/cluster.md recommends can run a pool and its agents; a wrong
//! password is a typed error that never shows the password.
#![cfg(feature = "cluster")]

mod common;

use common::{LIMIT, deadline, redis_server};
use multiproc::cluster::{Cluster, ClusterError, LocalAgent};

#[multiproc::task]
fn triple(x: u64) -> u64 {
    3 * x
}

#[test]
fn a_restricted_acl_user_runs_a_pool() {
    deadline(LIMIT, || {
        let Some(server) = redis_server() else { return };
        let mut admin = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        // The rule docs/cluster.md gives, for namespace "render".
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("render")
            .arg("on")
            .arg(">s3cret-pw")
            .arg("~mp:{render}:*")
            .arg("resetchannels")
            .arg("-@all")
            .arg("+@connection")
            .arg("+@stream")
            .arg("+@list")
            .arg("+@hash")
            .arg("+@string")
            .arg("+@set")
            .arg("+@keyspace")
            .arg("+@scripting")
            .arg("-@dangerous")
            .query(&mut admin)
            .unwrap();
        let url = format!("{}?user=render&pass=s3cret-pw", server.url());
        let cluster = Cluster::connect(&url).unwrap().namespace("render").unwrap();
        assert!(!cluster.url().contains("s3cret"), "{}", cluster.url());
        cluster
            .set_min_idle(std::time::Duration::from_millis(500))
            .unwrap();
        let _agent = LocalAgent::start(&cluster, 1).unwrap();
        let pool = cluster.pool().build().unwrap();
        assert_eq!(pool.map(triple, 1..=100u64).unwrap()[99], 300);
        // The named objects work as this user too.
        let q = cluster.queue::<String>("jobs").bounded(4).build().unwrap();
        q.put("a".into()).unwrap();
        assert_eq!(q.get().unwrap(), "a");
        let m = cluster.manager();
        let d = m.dict::<String, u64>("counts").unwrap();
        d.insert("x".into(), 1).unwrap();
        assert_eq!(d.get("x").unwrap(), Some(1));
        let lock = m.lock("migrations").unwrap();
        let g = lock.lock().unwrap();
        assert!(g.is_held());
        g.release().unwrap();
        let e = m.event("ready").unwrap();
        e.set().unwrap();
        assert!(e.is_set().unwrap());
        // Other namespaces are out of its reach.
        let other = cluster.namespace("other").unwrap();
        let e = other.min_idle().unwrap_err();
        assert!(
            matches!(&e, ClusterError::Server(m) if m.to_lowercase().contains("noperm") || m.contains("permission")),
            "{e:?}"
        );

        let bad = format!("{}?user=render&pass=wrong-pw", server.url());
        let e = Cluster::connect(&bad).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("wrong-pw"), "{e}");
        assert!(
            matches!(e, ClusterError::Server(_) | ClusterError::Connection(_)),
            "{e:?}"
        );
    });
}
