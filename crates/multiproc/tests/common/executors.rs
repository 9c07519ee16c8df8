//! Runs one async test body on each executor the async forms promise to
//! work on: tokio's current_thread and multi-thread runtimes, smol, and
//! `futures::executor::block_on`.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

/// The executors, by name.
pub const NAMES: [&str; 4] = [
    "tokio current_thread",
    "tokio multi_thread",
    "smol",
    "futures block_on",
];

/// Runs `make()`'s future to its end on executor `which` (an index into
/// [`NAMES`]). On the multi-thread runtime it runs as a spawned task, so
/// it must be `Send`.
pub fn run_on<Fut>(which: usize, fut: Fut) -> Fut::Output
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    match which {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(fut),
        1 => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .expect("runtime");
            let out = rt
                .block_on(async { tokio::spawn(fut).await })
                .expect("task");
            rt.shutdown_timeout(Duration::from_secs(5));
            out
        }
        2 => smol::block_on(fut),
        _ => futures::executor::block_on(fut),
    }
}

/// Runs `fut` on executor `which` on the calling thread, for a future that
/// is not `Send` (one that holds a lock guard across an `.await`): the
/// multi-thread runtime drives it from `block_on`, its workers run the
/// rest.
pub fn run_local<Fut: Future>(which: usize, fut: Fut) -> Fut::Output {
    match which {
        0 | 1 => {
            let mut b = if which == 0 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            };
            b.enable_time().build().expect("runtime").block_on(fut)
        }
        2 => smol::block_on(fut),
        _ => futures::executor::block_on(fut),
    }
}

/// Runs the future `make` builds on every executor in turn.
pub fn on_each<Fut>(make: impl Fn(usize) -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    for (which, name) in NAMES.iter().enumerate() {
        eprintln!("on {name}");
        run_on(which, make(which));
    }
}

/// Sleeps for `d` on executor `which` without blocking it (a timer of
/// that executor; `futures` has none: a thread wakes it).
pub async fn sleep(which: usize, d: Duration) {
    match which {
        0 | 1 => tokio::time::sleep(d).await,
        2 => {
            smol::Timer::after(d).await;
        }
        _ => thread_timer(d).await,
    }
}

/// A timer made of a thread, for executors without one.
pub fn thread_timer(d: Duration) -> impl Future<Output = ()> + Send {
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(d);
        let _ = tx.send(());
    });
    async move {
        let _ = rx.await;
    }
}

/// Runs `fut` for at most `d` on executor `which`: `None` if the time
/// ran out first (the future is then dropped, wherever it was).
pub async fn timeout<F: Future>(which: usize, d: Duration, fut: F) -> Option<F::Output> {
    use futures::FutureExt;
    let fut = std::pin::pin!(fut.fuse());
    let timer = std::pin::pin!(sleep(which, d).fuse());
    match futures::future::select(fut, timer).await {
        futures::future::Either::Left((v, _)) => Some(v),
        futures::future::Either::Right(((), _)) => None,
    }
}

/// A small xorshift generator: random points without a dependency.
pub struct Rng(pub u64);

impl Rng {
    /// The next number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
