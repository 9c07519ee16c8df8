//! Shared memory blocks between processes, by handle and by name; nothing
//! is ever left in /dev/shm.

mod common;

use std::sync::atomic::Ordering;

use common::{LIMIT, deadline};
use multiproc::{OutOfBounds, Process, SharedMemory, StartMethod};

fn dev_shm() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn count_up((shm, n): (SharedMemory, u64)) {
    let words = shm.as_atomic_u64();
    for _ in 0..n {
        words[0].fetch_add(1, Ordering::SeqCst);
    }
}

fn attach_and_write(name: String) -> bool {
    match SharedMemory::attach(&name) {
        Ok(shm) => shm.write(8, b"by name").is_ok(),
        Err(_) => false,
    }
}

#[test]
fn blocks_are_shared_by_handle_and_by_name() {
    deadline(LIMIT, || {
        let before = dev_shm();
        for m in StartMethod::ALL {
            let shm = SharedMemory::create(4096).unwrap();
            let kids: Vec<_> = (0..2)
                .map(|_| {
                    Process::builder()
                        .start_method(m)
                        .spawn(count_up, (shm.clone(), 10_000))
                        .unwrap()
                })
                .collect();
            count_up((shm.clone(), 10_000));
            for k in kids {
                k.join().unwrap();
            }
            assert_eq!(shm.as_atomic_u64()[0].load(Ordering::SeqCst), 30_000, "{m}");

            let name = shm.name().unwrap().to_string();
            assert!(
                Process::builder()
                    .start_method(m)
                    .spawn(attach_and_write, name.clone())
                    .unwrap()
                    .join()
                    .unwrap()
            );
            let mut buf = [0u8; 7];
            shm.read(8, &mut buf).unwrap();
            assert_eq!(&buf, b"by name", "{m}");

            let mut shm = shm;
            shm.unlink();
            assert!(shm.name().is_none());
            assert!(
                SharedMemory::attach(&name).is_err(),
                "{m}: the name still resolves after unlink"
            );
        }
        assert_eq!(dev_shm(), before, "a file appeared in /dev/shm");
    });
}

#[test]
fn out_of_bounds_and_bad_names_are_errors() {
    let shm = SharedMemory::create(100).unwrap();
    let size = shm.size();
    assert!(size >= 100);
    assert_eq!(
        shm.write(size - 2, b"abc"),
        Err(OutOfBounds {
            offset: size - 2,
            end: size + 1,
            size
        })
    );
    let mut big = vec![0u8; size + 1];
    assert!(shm.read(0, &mut big).is_err());
    assert!(shm.write(usize::MAX, b"x").is_err());
    for bad in [
        "",
        "psm_123",
        "multiproc-1-0",
        "multiproc-x-y",
        "multiproc-99999999-3",
        "multiproc-1-0-0000000000000000",
        "multiproc-1-0-00000000000000zz",
        "multiproc-1-0-00000000000000AA",
        "multiproc-1-0-000000000000000",
        "multiproc-1-0-0000000000000000-1",
        "multiproc--1-0000000000000000",
    ] {
        assert!(SharedMemory::attach(bad).is_err(), "{bad:?}");
    }
    // A live block's name attaches only as `create` wrote it.
    let name = shm.name().unwrap().to_string();
    let [_, pid, fd, token] = name.split('-').collect::<Vec<_>>()[..] else {
        panic!("{name}");
    };
    for odd in [
        format!("multiproc-+{pid}-{fd}-{token}"),
        format!("multiproc-0{pid}-{fd}-{token}"),
        format!("multiproc-{pid}-0{fd}-{token}"),
        format!("multiproc-{pid}-+{fd}-{token}"),
        format!("multiproc-{pid}-{fd}-{}", token.to_uppercase()),
        format!("multiproc-{pid}-{fd}-+{}", &token[1..]),
        format!("multiproc-{pid}-{fd}-{token}-"),
        format!("multiproc-{pid}-{fd}-{token} "),
    ] {
        if odd == name {
            continue; // a token of digits only has no uppercase form
        }
        let e = SharedMemory::attach(&odd).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{odd:?}");
    }
    assert_eq!(SharedMemory::attach(&name).unwrap().size(), size);
}

#[test]
fn a_block_of_no_bytes_is_refused_as_in_python() {
    let e = multiproc::SharedMemory::create(0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(multiproc::SharedMemory::create(1).is_ok());
}

/// A name read back from a block that the creator dropped, and the
/// descriptor numbers it used reused at once by the next blocks: before
/// names carried a token, the stale name attached whichever block had the
/// number now (issue seen in CI: a spawn child's next block).
#[test]
fn a_stale_name_never_attaches_a_later_block() {
    deadline(LIMIT, || {
        for round in 0..20 {
            let first = SharedMemory::create(4096).unwrap();
            first.write(0, b"first").unwrap();
            let stale = first.name().unwrap().to_string();
            let again = SharedMemory::attach(&stale).unwrap();
            drop((first, again));
            // The lowest free numbers: the ones `first` just gave back.
            let later: Vec<SharedMemory> =
                (0..4).map(|_| SharedMemory::create(1).unwrap()).collect();
            for block in &later {
                assert_ne!(block.name(), Some(stale.as_str()), "round {round}");
            }
            let e = SharedMemory::attach(&stale).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "round {round}: {e}");
            // Each later block still attaches by its own name.
            for block in &later {
                let other = SharedMemory::attach(block.name().unwrap()).unwrap();
                assert_eq!(other.size(), 1, "round {round}");
            }
        }
    });
}

/// Attaching by a stale name while another thread closes and reuses
/// descriptor numbers as fast as it can: never a block of the wrong name.
#[test]
fn a_stale_name_attaches_nothing_while_numbers_churn() {
    deadline(LIMIT, || {
        let first = SharedMemory::create(64).unwrap();
        let stale = first.name().unwrap().to_string();
        drop(first);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut made = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    drop(SharedMemory::create(64).unwrap());
                    made += 1;
                }
                made
            })
        };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut tries = 0u64;
        while std::time::Instant::now() < end {
            assert!(SharedMemory::attach(&stale).is_err(), "try {tries}");
            tries += 1;
        }
        stop.store(true, Ordering::Relaxed);
        assert!(churn.join().unwrap() > 0);
        assert!(tries > 0);
    });
}
