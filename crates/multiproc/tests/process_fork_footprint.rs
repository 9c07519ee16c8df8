//! A child started with fork writes to as few pages as it can: each page
//! it shares with its parent costs a copy-on-write fault at its first
//! write, a few µs on the way to its exit. Allocations and frees write to
//! the allocator's pages, so our code in a fork child makes none: for a
//! function of `()` that returns `()`, the child allocates and frees
//! nothing at all, whether or not the parent holds handles. (The result's
//! encoding is the one allocation a result with bytes needs. With
//! `panic = "abort"`, not tested here, the child makes one more: the cell
//! that says where its last words go.)
//!
//! A counting allocator records, in a page shared with the children, what
//! each forked child allocates and frees (a `pthread_atfork` handler tells
//! it that it runs in a child).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use common::{LIMIT, assert_gone, deadline};
use multiproc::{Process, StartMethod};

/// Set in a forked child by the fork handler.
static IN_CHILD: AtomicBool = AtomicBool::new(false);
/// Allocations (0) and frees (1) made in forked children, in a shared page.
static COUNTS: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

fn count(which: usize) {
    if !IN_CHILD.load(Ordering::Relaxed) {
        return;
    }
    let counts = COUNTS.load(Ordering::Relaxed);
    if !counts.is_null() {
        // SAFETY: `COUNTS` points at two `AtomicU64`s in a shared mapping
        // that `counters` made and never unmaps; `which` is 0 or 1.
        unsafe { (*counts.add(which)).fetch_add(1, Ordering::Relaxed) };
    }
}

struct Counting;

// SAFETY: every call is forwarded to `System` unchanged; the counting only
// touches atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(0);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(1);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(0);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

extern "C" fn in_child() {
    IN_CHILD.store(true, Ordering::Relaxed);
}

/// The shared counters, made (and the fork handler registered) once.
fn counters() -> &'static [AtomicU64] {
    static MADE: OnceLock<usize> = OnceLock::new();
    let at = *MADE.get_or_init(|| {
        // SAFETY: a new anonymous shared mapping of one page, which nothing
        // else refers to; it is never unmapped.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED, "mmap failed");
        COUNTS.store(page.cast(), Ordering::Relaxed);
        // SAFETY: the handler only stores to an atomic, which is valid in
        // a fork child.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        assert_eq!(rc, 0, "pthread_atfork failed");
        page as usize
    });
    // SAFETY: the page holds two zero-initialised `AtomicU64`s (an
    // anonymous mapping starts zeroed) and lives as long as the process.
    unsafe { std::slice::from_raw_parts(at as *const AtomicU64, 2) }
}

/// What the children started by `start` allocated and freed.
fn allocations_in_child(start: impl FnOnce()) -> (u64, u64) {
    let counts = counters();
    counts[0].store(0, Ordering::SeqCst);
    counts[1].store(0, Ordering::SeqCst);
    start();
    (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    )
}

fn noop(_: ()) {}

/// Starts `noop` with fork, joins it, and checks that it is gone.
fn noop_under_fork() {
    let p = Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(noop, ())
        .unwrap();
    let pid = p.pid();
    p.join().unwrap();
    assert_gone(pid);
}

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn a_fork_child_allocates_and_frees_nothing_of_its_own() {
    deadline(LIMIT, || {
        for round in 0..3 {
            let got = allocations_in_child(noop_under_fork);
            assert_eq!(got, (0, 0), "spawn(noop, ()) round {round}");

            let got = allocations_in_child(|| {
                let p = Process::fork(|| ()).unwrap();
                let pid = p.pid();
                p.join().unwrap();
                assert_gone(pid);
            });
            assert_eq!(got, (0, 0), "fork(|| ()) round {round}");

            // A result with bytes: its encoding is the one allocation.
            let got = allocations_in_child(|| {
                let p = Process::builder()
                    .start_method(StartMethod::Fork)
                    .spawn(double, 21)
                    .unwrap();
                let pid = p.pid();
                assert_eq!(p.join().unwrap(), 42);
                assert_gone(pid);
            });
            assert_eq!(got, (1, 0), "spawn(double, 21) round {round}");
        }
        // With handles in the parent, the child releases their descriptors
        // (they point at `/dev/null` in it), still allocating nothing.
        let (ours, theirs) = multiproc::pipe::<u8, u8>().unwrap();
        let got = allocations_in_child(noop_under_fork);
        assert_eq!(got, (0, 0), "spawn(noop, ()) with a pipe open");
        theirs.send(&7).unwrap();
        assert_eq!(ours.recv().unwrap(), 7, "the parent's pipe still works");

        // The counting itself works: a child that allocates is counted.
        let got = allocations_in_child(|| {
            let p = Process::fork(|| std::hint::black_box(vec![1u8; 100]).len()).unwrap();
            assert_eq!(p.join().unwrap(), 100);
        });
        assert!(got.0 >= 2 && got.1 >= 1, "{got:?}");
    });
}
