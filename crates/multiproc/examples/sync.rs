//! Synchronisation between processes: a lock around shared data, a lock
//! whose holder is killed (and recovered), an event, a barrier, and a raw
//! shared memory block.
//!
//! Run with `cargo run --example sync`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use multiproc::{Array, Barrier, Event, Lock, Process, SharedMemory, current_process};

/// Moves money between two accounts, keeping the total constant.
fn transfers(accounts: Array<i64>) {
    for i in 0..10_000 {
        // Whatever a killed transferrer left, the total is what counts here.
        let mut a = accounts.get_lock_recover();
        let (from, to) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        a[from] -= 3;
        a[to] += 3;
    }
}

fn hold_and_wait((lock, held): (Lock, Event)) {
    let _guard = lock.lock().unwrap();
    held.set();
    std::thread::sleep(Duration::from_secs(600));
}

fn arrive(barrier: Barrier) -> String {
    let index = barrier.wait().unwrap();
    format!("{} arrived as party {index}", current_process().name)
}

fn bump(block: SharedMemory) {
    block.as_atomic_u64()[0].fetch_add(1, Ordering::SeqCst);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let accounts = Array::from_slice(&[1_000i64, 1_000])?;
    let workers: Vec<_> = (0..3)
        .map(|_| Process::spawn(transfers, accounts.clone()))
        .collect::<Result<_, _>>()?;
    for w in workers {
        w.join()?;
    }
    let a = accounts.to_vec();
    println!(
        "accounts after 30000 locked transfers: {a:?} (total {})",
        a[0] + a[1]
    );

    let (lock, held) = (Lock::new()?, Event::new()?);
    let holder = Process::spawn(hold_and_wait, (lock.clone(), held.clone()))?;
    held.wait();
    holder.kill()?;
    let _ = holder.join();
    match lock.lock() {
        Ok(_) => println!("the lock came back clean"),
        Err(died) => {
            println!("the holder was killed, and we are told: {died}");
            let guard = lock.lock_recover();
            // Repair what the lock protects here, then:
            guard.make_consistent();
        }
    }

    let barrier = Barrier::new(3)?;
    let parties: Vec<_> = (0..2)
        .map(|_| Process::spawn(arrive, barrier.clone()))
        .collect::<Result<_, _>>()?;
    println!("{}", arrive(barrier.clone()));
    for p in parties {
        println!("{}", p.join()?);
    }

    let block = SharedMemory::create(64)?;
    let bumpers: Vec<_> = (0..4)
        .map(|_| Process::spawn(bump, block.clone()))
        .collect::<Result<_, _>>()?;
    for b in bumpers {
        b.join()?;
    }
    println!(
        "a shared memory counter bumped by 4 processes: {}",
        block.as_atomic_u64()[0].load(Ordering::SeqCst)
    );
    Ok(())
}
