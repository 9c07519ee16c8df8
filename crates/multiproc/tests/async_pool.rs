//! A pool's `MapHandle` as a `Future` and `Imap` as a `Stream`, on every
//! executor, and a runtime that keeps running while a map waits.

mod common;
#[path = "common/executors.rs"]
mod executors;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use executors::on_each;
use futures::StreamExt;
use multiproc::{Pool, TaskError};

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn fail_on_three(x: u64) -> u64 {
    assert_ne!(x, 3, "three");
    x
}

#[test]
fn map_handles_and_imap_streams_on_every_executor() {
    common::deadline(common::LIMIT, || {
        let pool = Arc::new(Pool::new(2).unwrap());
        on_each(|which| {
            let pool = Arc::clone(&pool);
            async move {
                let squares = pool.map_async(square, 0..100).await.unwrap();
                assert_eq!(squares, (0..100).map(square).collect::<Vec<_>>());
                let streamed: Vec<u64> = pool
                    .imap(square, 0..50)
                    .into_stream()
                    .map(|r| r.unwrap())
                    .collect()
                    .await;
                assert_eq!(streamed, (0..50).map(square).collect::<Vec<_>>());
                let mut unordered: Vec<u64> = pool
                    .imap_unordered(nap, [30, 1, 10])
                    .into_stream()
                    .map(|r| r.unwrap())
                    .collect()
                    .await;
                unordered.sort_unstable();
                assert_eq!(unordered, [1, 10, 30]);
                if which != 0 {
                    return; // (fewer expected panics on stderr)
                }
                // A failed item fails the map, and is its own item in a stream.
                assert!(matches!(
                    pool.map_async(fail_on_three, 0..5).await,
                    Err(TaskError::Panicked(_))
                ));
                let outcomes: Vec<_> = pool.imap(fail_on_three, 0..5).into_stream().collect().await;
                assert!(outcomes[3].is_err() && outcomes[4] == Ok(4));
            }
        });
    });
}

#[test]
fn a_current_thread_runtime_runs_other_tasks_while_a_map_waits() {
    common::deadline(common::LIMIT, || {
        let pool = Pool::new(2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let ticks = Arc::new(AtomicU64::new(0));
        let t = Arc::clone(&ticks);
        rt.block_on(async {
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    t.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert_eq!(pool.map_async(nap, [200, 200]).await.unwrap(), [200, 200]);
            let mut naps = pool.imap(nap, [150, 150]).into_stream();
            while let Some(r) = naps.next().await {
                assert_eq!(r.unwrap(), 150);
            }
            ticker.abort();
        });
        let n = ticks.load(Ordering::Relaxed);
        assert!(n >= 20, "the ticker ran {n} times in 350 ms");
    });
}
