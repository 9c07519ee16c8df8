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
    ] {
        assert!(SharedMemory::attach(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_block_of_no_bytes_is_refused_as_in_python() {
    let e = multiproc::SharedMemory::create(0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(multiproc::SharedMemory::create(1).is_ok());
}
