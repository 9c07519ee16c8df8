//! A map across cluster agents, one of which is killed on purpose.
//!
//! ```sh
//! cargo run --example cluster --features cluster
//! ```
//!
//! It starts a private `redis-server` (from `PATH`; `apt-get install
//! redis-server`) unless `MULTIPROC_URL` names one, then three agents:
//! this same program started again with `MULTIPROC_CLUSTER=<url>`, as you
//! would start it on other machines. It runs a map of 600 items, kills one
//! agent halfway (SIGKILL), and shows that every item came back: the dead
//! agent's chunks were taken over by the others.
//!
//! On real machines, start agents with
//! `MULTIPROC_CLUSTER=redis://host:6379 ./your-program` (see
//! `docs/cluster.md` for systemd, Kubernetes and Slurm).

use std::time::{Duration, Instant};

use multiproc::cluster::{Cluster, LocalAgent, LocalServer, current_task};

/// The work: registered under a stable name, so that any agent running
/// this program can look it up. Returns the item's square and how many
/// times it was handed out (more than once only for the killed agent's).
#[multiproc::task(name = "demo.work")]
fn work(x: u64) -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(2));
    let deliveries = current_task().map_or(0, |t| t.deliveries);
    (x * x, deliveries)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A server: the given one, or a private one on a Unix socket.
    let mut _server = None;
    let url = match std::env::var("MULTIPROC_URL") {
        Ok(url) => url,
        Err(_) => {
            let server = LocalServer::start().map_err(|e| {
                format!("could not start redis-server ({e}); install it or set MULTIPROC_URL")
            })?;
            let url = server.url();
            _server = Some(server);
            url
        }
    };
    let cluster = Cluster::connect(&url)?.namespace("demo")?;
    // Take over a dead agent's work after 250 ms of silence (default 10 s).
    cluster.set_min_idle(Duration::from_millis(250))?;
    let mut agents: Vec<LocalAgent> = (0..3)
        .map(|_| LocalAgent::start(&cluster, 1))
        .collect::<Result<_, _>>()?;
    println!("{} agents serve namespace demo", cluster.agents()?.len());

    let pool = cluster.pool().build()?;
    let started = Instant::now();
    let items: Vec<u64> = (0..600).collect();
    let handle = pool.task(work).chunksize(10).map_async(items.clone());
    std::thread::sleep(Duration::from_millis(150));
    let victim = agents[0].pid();
    agents[0].kill()?;
    println!("killed agent pid {victim} mid-map");

    let results = handle.get()?;
    let rerun = results.iter().filter(|(_, d)| *d > 1).count();
    assert!(results.iter().zip(&items).all(|((sq, _), x)| *sq == x * x));
    println!(
        "all {} items came back in {:.2} s; {} ran again after the kill",
        results.len(),
        started.elapsed().as_secs_f64(),
        rerun
    );
    pool.join();
    Ok(())
}
