//! Random and mutated pickles through `multiproc::pickle`: never a panic,
//! and never much more memory than `check`'s estimate (which, without
//! shared references, grows with the pickle's length). A counting
//! allocator (this test binary's own) measures the peak; the tests run one
//! at a time, so that one's allocations do not count in another's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Mutex;

use multiproc::pickle::{PickleError, check, from_pickle, value_from_pickle};

/// Held by each test: the counters are process-wide.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What decoding may allocate for a pickle whose estimate is `estimate`
/// (`None`: refused by the check, which allocates about 100 bytes per input
/// byte at most).
fn allowed(estimate: Option<u64>, len: usize) -> usize {
    match estimate {
        Some(e) => 8 * e as usize + (1 << 16),
        None => 128 * len + (1 << 16),
    }
}

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only read by this test.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated at the peak of `f`, above what was live before.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

/// A protocol 4 pickle of `body`.
fn pickle(body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 4];
    p.extend_from_slice(body);
    p.push(b'.');
    p
}

fn seeds() -> Vec<Vec<u8>> {
    let mut shared = vec![b']', 0x94, b'0'];
    for i in 0..12u8 {
        shared.extend_from_slice(&[b'h', i, b'h', i, 0x86, 0x94, b'0']);
    }
    shared.extend_from_slice(&[b'h', 12]);
    vec![
        multiproc::pickle::to_pickle(&(1u8, "two", vec![3.0f64; 100], Some(()))).unwrap(),
        multiproc::pickle::to_pickle(&std::collections::BTreeMap::from([(1u32, vec!["a"; 50])]))
            .unwrap(),
        pickle(b"]\x94(K\x01K\x02h\x00e"),
        pickle(b"}\x94(\x8c\x01k\x94]\x94h\x01u"),
        pickle(&shared),
        pickle(b"\x8e\x05\x00\x00\x00\x00\x00\x00\x00abcde"),
    ]
}

#[test]
fn mutated_pickles_never_panic_nor_take_more_than_their_limit() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seeds = seeds();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut decoded, mut refused, mut worst) = (0, 0, 0f64);
    for round in 0..30_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let r = next();
            let at = (r >> 8) as usize % (bytes.len() + 1);
            match r % 5 {
                0 if at < bytes.len() => bytes[at] = (r >> 32) as u8,
                1 => bytes.insert(at, (r >> 32) as u8),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                3 if at < bytes.len() => bytes[at] ^= 1 << ((r >> 40) % 8),
                _ => bytes.truncate(at),
            }
        }
        if round % 4 == 0 {
            bytes = (0..(next() % 96)).map(|_| next() as u8).collect();
        }
        let limit = allowed(check(&bytes).ok(), bytes.len());
        let (result, peak) = peak_of(|| value_from_pickle(&bytes));
        assert!(
            peak <= limit,
            "{peak} bytes allocated for {} input bytes (allowed {limit}): {bytes:?}",
            bytes.len()
        );
        worst = worst.max(peak as f64 / limit as f64);
        match result {
            Ok(_) => decoded += 1,
            Err(_) => refused += 1,
        }
        let (_, peak) = peak_of(|| from_pickle::<(u8, String, Vec<f64>, Option<()>)>(&bytes));
        assert!(peak <= limit, "typed: {peak} > {limit}");
    }
    // The mutations must exercise both paths.
    assert!(
        decoded > 300 && refused > 1000,
        "{decoded} decoded, {refused} refused"
    );
    assert!(worst <= 1.0);
}

#[test]
fn the_estimate_bounds_what_decoding_allocates() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cases: Vec<Vec<u8>> = vec![
        multiproc::pickle::to_pickle(&vec![1.5f64; 100_000]).unwrap(),
        multiproc::pickle::to_pickle(&vec![7u8; 100_000]).unwrap(),
        multiproc::pickle::to_pickle(
            &(0..20_000)
                .map(|i| (i, format!("v{i}")))
                .collect::<std::collections::BTreeMap<u32, String>>(),
        )
        .unwrap(),
        multiproc::pickle::to_pickle(&vec![vec![vec![(); 3]; 10]; 1000]).unwrap(),
        multiproc::pickle::to_pickle(&vec!["x".repeat(1000); 200]).unwrap(),
    ];
    for bytes in cases {
        let estimate = check(&bytes).unwrap() as usize;
        let (value, peak) = peak_of(|| value_from_pickle(&bytes).unwrap());
        drop(value);
        assert!(
            peak <= allowed(Some(estimate as u64), bytes.len()),
            "{peak} > 8 x {estimate}"
        );
    }
}

#[test]
fn a_value_built_of_shared_references_is_refused_before_it_costs_memory() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Each of 40 tuples holds the one before it twice: 2^40 values once
    // decoded, from 300 bytes.
    let mut body = vec![b']', 0x94, b'0'];
    for i in 0..40u8 {
        body.extend_from_slice(&[b'h', i, b'h', i, 0x86, 0x94, b'0']);
    }
    body.extend_from_slice(&[b'h', 40]);
    let bytes = pickle(&body);
    let (result, peak) = peak_of(|| value_from_pickle(&bytes));
    assert!(
        matches!(result, Err(PickleError::TooLarge { .. })),
        "{result:?}"
    );
    assert!(peak < 1 << 20, "{peak} bytes spent refusing it");
}
