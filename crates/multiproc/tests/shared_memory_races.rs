//! Reads and writes racing on the same shared bytes, from threads and from
//! processes: every method is safe `&self`, so the copies must be atomic
//! (no data race, which ThreadSanitizer would report), and what a reader
//! sees is made of bytes some writer wrote. An aligned `RawValue<u64>` is
//! never torn.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{LIMIT, deadline};
use multiproc::{Process, RawArray, RawValue, SharedMemory, StartMethod};

/// Where the racing range starts and how long it is: unaligned at both
/// ends, so the copies go through their byte and word paths.
const OFFSET: usize = 3;
const LEN: usize = 1_021;
const PATTERNS: [u8; 2] = [0x55, 0xaa];
const ROUNDS: usize = 20_000;

fn write_patterns(shm: &SharedMemory, rounds: usize) {
    let bufs = PATTERNS.map(|p| vec![p; LEN]);
    for i in 0..rounds {
        shm.write(OFFSET, &bufs[i % 2]).unwrap();
    }
}

fn writer(shm: SharedMemory) {
    write_patterns(&shm, ROUNDS);
}

/// Reads the racing range until `done`; every byte must be 0 (before the
/// first write) or one of the patterns, and the bytes around it untouched.
fn read_until(shm: &SharedMemory, done: impl Fn() -> bool) -> usize {
    let mut buf = vec![0u8; LEN + 2];
    let mut reads = 0;
    loop {
        let finished = done();
        shm.read(OFFSET - 1, &mut buf).unwrap();
        assert_eq!(buf[0], 0x11, "the byte before the range changed");
        assert_eq!(buf[LEN + 1], 0x22, "the byte after the range changed");
        for &b in &buf[1..=LEN] {
            assert!(
                b == 0 || PATTERNS.contains(&b),
                "byte {b:#x} was never written"
            );
        }
        reads += 1;
        if finished {
            return reads;
        }
    }
}

fn fresh_block() -> SharedMemory {
    let shm = SharedMemory::create(4096).unwrap();
    shm.write(OFFSET - 1, &[0x11]).unwrap();
    shm.write(OFFSET + LEN, &[0x22]).unwrap();
    shm
}

#[test]
fn racing_threads_read_only_written_bytes() {
    deadline(LIMIT, || {
        let shm = fresh_block();
        let done = Arc::new(AtomicBool::new(false));
        let w = {
            let (shm, done) = (shm.clone(), done.clone());
            std::thread::spawn(move || {
                write_patterns(&shm, ROUNDS);
                done.store(true, Ordering::SeqCst);
            })
        };
        let r = {
            let (shm, done) = (shm.clone(), done.clone());
            std::thread::spawn(move || read_until(&shm, || done.load(Ordering::SeqCst)))
        };
        w.join().unwrap();
        assert!(r.join().unwrap() > 0);
        let mut last = vec![0u8; LEN];
        shm.read(OFFSET, &mut last).unwrap();
        assert_eq!(last, vec![PATTERNS[(ROUNDS - 1) % 2]; LEN]);
    });
}

#[test]
fn racing_processes_read_only_written_bytes() {
    deadline(LIMIT, || {
        for m in [StartMethod::Fork, StartMethod::Spawn] {
            let shm = fresh_block();
            let child = Process::builder()
                .start_method(m)
                .spawn(writer, shm.clone())
                .unwrap();
            assert!(read_until(&shm, || !child.is_alive()) > 0);
            child.join().unwrap();
            let mut last = vec![0u8; LEN];
            shm.read(OFFSET, &mut last).unwrap();
            assert_eq!(last, vec![PATTERNS[(ROUNDS - 1) % 2]; LEN], "{m}");
        }
    });
}

const A: u64 = 0x5555_5555_5555_5555;
const B: u64 = 0xaaaa_aaaa_aaaa_aaaa;

fn flip_value((v, rounds): (RawValue<u64>, usize)) {
    for i in 0..rounds {
        v.set(if i % 2 == 0 { A } else { B });
    }
}

fn flip_array((a, rounds): (RawArray<[u64; 3]>, usize)) {
    for i in 0..rounds {
        let w = if i % 2 == 0 { A } else { B };
        a.set(i % a.len(), [w; 3]);
    }
}

#[test]
fn a_raw_value_is_never_torn_and_raw_array_words_are_whole() {
    deadline(LIMIT, || {
        let v = RawValue::new(A).unwrap();
        let a = RawArray::<[u64; 3]>::new(5).unwrap();
        let kids = [
            Process::spawn(flip_value, (v.clone(), ROUNDS * 5)).unwrap(),
            Process::spawn(flip_array, (a.clone(), ROUNDS * 5)).unwrap(),
        ];
        let local = {
            let (v, a) = (v.clone(), a.clone());
            std::thread::spawn(move || {
                flip_value((v, ROUNDS));
                flip_array((a, ROUNDS));
            })
        };
        while kids.iter().any(|k| k.is_alive()) || !local.is_finished() {
            let x = v.get();
            assert!(x == A || x == B, "torn read {x:#x}");
            for i in 0..a.len() {
                for w in a.get(i).unwrap() {
                    assert!(w == 0 || w == A || w == B, "torn word {w:#x}");
                }
            }
        }
        local.join().unwrap();
        for k in kids {
            k.join().unwrap();
        }
        assert_eq!(a.get(a.len()), None);
    });
}
