//! What a user sees of a running map: a result is not held back by the
//! items that follow it (a worker batches the answers of quick items into
//! one write, but a long item after them must not keep them from the parent
//! until it ends), and a progress bar knows the whole length at once.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::Pool;

const LONG: u64 = 150;

fn quick_then_long(x: u64) -> u64 {
    if x == LONG {
        std::thread::sleep(Duration::from_secs(3));
    }
    x
}

#[test]
fn quick_results_arrive_while_a_long_item_after_them_runs() {
    deadline(LIMIT, || {
        let pool = Pool::builder().workers(1).build().unwrap();
        let start = Instant::now();
        let mut before_long = Vec::new();
        for r in pool
            .task(quick_then_long)
            .chunksize(1)
            .imap_unordered(0..200u64)
        {
            let x = r.unwrap();
            if x < LONG {
                before_long.push((x, start.elapsed()));
            }
        }
        assert_eq!(before_long.len(), LONG as usize);
        // The long item takes 3 s; every item before it finishes within
        // milliseconds of the start and must arrive well before the end of
        // the long one.
        let (x, late) = *before_long.iter().max_by_key(|(_, t)| *t).unwrap();
        assert!(
            late < Duration::from_millis(1500),
            "item {x} arrived {late:?} after the start"
        );
    });
}

fn twice(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(1));
    2 * x
}

#[test]
fn a_progress_bar_knows_the_whole_length_from_the_start() {
    deadline(LIMIT, || {
        let pool = Pool::builder().workers(2).build().unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let handle = pool
            .task(twice)
            .progress_bar(bar.clone())
            .map_async(0..300u64);
        // Not counted up chunk by chunk as they are submitted.
        assert_eq!(bar.length(), Some(300));
        assert_eq!(handle.get().unwrap().len(), 300);
        assert_eq!(bar.length(), Some(300));
        // A lazy imap over an input of unknown length grows it instead.
        let bar = indicatif::ProgressBar::hidden();
        let out: Vec<u64> = pool
            .task(twice)
            .progress_bar(bar.clone())
            .imap((0..50u64).filter(|x| x % 2 == 0))
            .map(Result::unwrap)
            .collect();
        assert_eq!(out.len(), 25);
        assert_eq!(bar.length(), Some(25));
        assert_eq!(bar.position(), 25);
    });
}
