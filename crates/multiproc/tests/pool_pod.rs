//! `Pool::map_pod`: plain data moved as bytes, a chunk at a time, through
//! the pool's shared arena or (with a memory limit, for a map too large
//! for the arena, or while another map holds it) through the task link.
//! The results must be those of a serde map, item for item, and a failure
//! must stay with its item exactly as in a serde map: a panic, a worker
//! that exits or is killed, a timeout. A worker (user code) that forges a
//! short answer gets a typed error for that chunk's items, never a read
//! past the end. Every test has a deadline and checks that no worker is
//! left.

mod common;

use std::time::Duration;

use common::{RawBlock, assert_gone, deadline, small_raw_blocks};
use multiproc::{ExitStatus, Pool, Signal, StartMethod, TaskError};

const LIMIT: Duration = Duration::from_secs(60);

/// Drops `pool` and checks its workers are gone.
fn finish(pool: Pool) {
    let pids: Vec<i32> = pool.stats().iter().map(|s| s.pid).collect();
    drop(pool);
    for pid in pids.into_iter().filter(|&p| p != 0) {
        assert_gone(pid);
    }
}

fn pool(workers: usize, m: StartMethod) -> Pool {
    Pool::builder()
        .workers(workers)
        .start_method(m)
        .build()
        .unwrap()
}

/// A pool whose maps go through the task links: a memory limit (one never
/// reached) leaves it without an arena.
fn pool_without_arena(workers: usize, m: StartMethod) -> Pool {
    Pool::builder()
        .workers(workers)
        .start_method(m)
        .memory_limit(1 << 40)
        .build()
        .unwrap()
}

fn triple(x: u64) -> u64 {
    x.wrapping_mul(3)
}

/// A struct without padding, 4-byte aligned, 12 bytes: its values land at
/// offsets no multiple of its alignment in the reply.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Spread {
    lo: u32,
    mid: u32,
    hi: u32,
}

fn spread(x: u8) -> Spread {
    let x = u32::from(x);
    Spread {
        lo: x,
        mid: x * 1000,
        hi: u32::MAX - x,
    }
}

fn sum(v: [f64; 4]) -> f64 {
    v.iter().sum()
}

fn nothing(_: u32) {}

#[test]
fn maps_plain_data_in_order_on_every_start_method() {
    deadline(LIMIT, || {
        let items: Vec<u64> = (0..200_000).map(|x| x * 7 + 1).collect();
        let expected: Vec<u64> = items.iter().map(|&x| triple(x)).collect();
        let bytes: Vec<u8> = (0..=255).cycle().take(5_000).collect();
        let arrays: Vec<[f64; 4]> = (0..3_000).map(|i| [i as f64, 0.5, -1.0, 2.0]).collect();
        for m in StartMethod::ALL {
            let pool = pool(2, m);
            assert_eq!(pool.map_pod(triple, &items).unwrap(), expected, "{m}");
            // Odd sizes, an explicit chunk size, a timeout (the timed path).
            let out = pool
                .task(spread)
                .chunksize(77)
                .timeout(Duration::from_secs(30))
                .map_pod(&bytes)
                .unwrap();
            assert_eq!(out, bytes.iter().map(|&b| spread(b)).collect::<Vec<_>>());
            let out = pool.map_pod(sum, &arrays).unwrap();
            assert_eq!(out, arrays.iter().map(|&a| sum(a)).collect::<Vec<_>>());
            // Zero-sized results.
            assert_eq!(pool.map_pod(nothing, &[1u32, 2, 3]).unwrap(), [(); 3]);
            // The same as the serde map, item for item.
            let some = &items[..1000];
            assert_eq!(
                pool.map_pod(triple, some).unwrap(),
                pool.map(triple, some.iter().copied()).unwrap()
            );
            finish(pool);
        }
    });
}

#[test]
fn an_empty_map_is_empty() {
    deadline(LIMIT, || {
        let pool = pool(1, StartMethod::Fork);
        assert_eq!(pool.map_pod(triple, &[]).unwrap(), Vec::<u64>::new());
        assert!(pool.map_pod_results(triple, &[]).is_empty());
        // The pool is still fine.
        assert_eq!(pool.map_pod(triple, &[2]).unwrap(), [6]);
        finish(pool);
    });
}

/// Panics on three items: in the first chunk, in the middle, the last.
fn picky(x: u64) -> u64 {
    assert!(x != 5 && x != 100_000 && x != 199_999, "no {x}");
    x + 1
}

#[test]
fn a_panic_fails_only_its_item() {
    deadline(LIMIT, || {
        let items: Vec<u64> = (0..200_000).collect();
        for m in StartMethod::ALL {
            let pool = pool(2, m);
            let out = pool.map_pod_results(picky, &items);
            assert_eq!(out.len(), items.len());
            for (i, r) in out.iter().enumerate() {
                match i {
                    5 | 100_000 | 199_999 => assert!(
                        matches!(r, Err(TaskError::Panicked(p)) if p.message == format!("no {i}")),
                        "{m}: item {i}: {r:?}"
                    ),
                    _ => assert_eq!(r, &Ok(i as u64 + 1), "{m}: item {i}"),
                }
            }
            // Fail-fast: the map stops at a panic and returns it.
            let err = pool.map_pod(picky, &items).unwrap_err();
            assert!(matches!(err, TaskError::Panicked(_)), "{m}: {err:?}");
            // The workers survived their panics.
            assert!(pool.stats().iter().all(|s| s.restarts == 0), "{m}");
            finish(pool);
        }
    });
}

/// Exits on item 70_000; kills itself on item 150_000.
fn fragile(x: u64) -> u64 {
    if x == 70_000 {
        std::process::exit(3);
    }
    if x == 150_000 {
        // SAFETY: kill(2) on this very process; no memory is involved.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x * 2
}

#[test]
fn a_worker_that_dies_fails_only_the_item_it_ran() {
    deadline(LIMIT, || {
        let items: Vec<u64> = (0..200_000).collect();
        for m in StartMethod::ALL {
            let pool = pool(2, m);
            let out = pool.map_pod_results(fragile, &items);
            assert_eq!(out.len(), items.len());
            for (i, r) in out.iter().enumerate() {
                match i {
                    70_000 => assert!(
                        matches!(
                            r,
                            Err(TaskError::WorkerDied {
                                status: ExitStatus::Exited(3),
                                ..
                            })
                        ),
                        "{m}: {r:?}"
                    ),
                    150_000 => assert!(
                        matches!(
                            r,
                            Err(TaskError::WorkerDied {
                                status: ExitStatus::Signaled {
                                    signal: Signal::KILL,
                                    ..
                                },
                                ..
                            })
                        ),
                        "{m}: {r:?}"
                    ),
                    _ => assert_eq!(r, &Ok(i as u64 * 2), "{m}: item {i}"),
                }
            }
            let restarts: u64 = pool.stats().iter().map(|s| s.restarts).sum();
            assert_eq!(restarts, 2, "{m}");
            finish(pool);
        }
    });
}

/// Sleeps far past the timeout on item 3_000.
fn slow_one(x: u32) -> u32 {
    if x == 3_000 {
        std::thread::sleep(Duration::from_secs(30));
    }
    x + 7
}

#[test]
fn a_timeout_fails_only_the_item_that_overran() {
    deadline(LIMIT, || {
        let items: Vec<u32> = (0..10_000).collect();
        for m in StartMethod::ALL {
            let pool = pool(2, m);
            let out = pool
                .task(slow_one)
                .timeout(Duration::from_millis(300))
                .map_pod_results(&items);
            for (i, r) in out.iter().enumerate() {
                if i == 3_000 {
                    assert_eq!(
                        r,
                        &Err(TaskError::TimedOut(Duration::from_millis(300))),
                        "{m}"
                    );
                } else {
                    assert_eq!(r, &Ok(i as u32 + 7), "{m}: item {i}");
                }
            }
            finish(pool);
        }
    });
}

fn count_to_retire(x: u64) -> u64 {
    x + u64::from(std::process::id())
}

#[test]
fn workers_retire_mid_chunk_and_the_rest_runs_elsewhere() {
    deadline(LIMIT, || {
        let items: Vec<u64> = (0..20_000).collect();
        let pool = Pool::builder()
            .workers(2)
            .start_method(StartMethod::Fork)
            .max_tasks_per_child(3_000)
            .build()
            .unwrap();
        let out = pool.map_pod(count_to_retire, &items).unwrap();
        // Each result is its item plus the pid of the worker that ran it:
        // no item was lost or ran twice into the output, and no worker
        // ran more than 3,000 items.
        let mut per_pid = std::collections::HashMap::<u64, usize>::new();
        for (x, r) in items.iter().zip(&out) {
            *per_pid.entry(r - x).or_default() += 1;
        }
        assert!(per_pid.len() >= 7, "{per_pid:?}");
        assert!(per_pid.values().all(|&n| n <= 3_000), "{per_pid:?}");
        let restarts: u64 = pool.stats().iter().map(|s| s.restarts).sum();
        // Seven processes at least: the first two and five replacements.
        assert!(restarts >= 5, "{restarts}");
        finish(pool);
    });
}

#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Forge {
    value: u64,
    /// The parent's pid: the item that forges looks for its link to it.
    parent: u64,
    /// 1 if the pool starts its workers with spawn.
    spawn: u64,
    /// What item 1 forges: 0 a short answer; with a return area, 1 an
    /// answer whose values are said to be in two parts of it at once, 2
    /// one that names a part whose slot word it left free, 3 one that
    /// names a part whose word names another chunk.
    lie: u64,
}

/// This worker's task link. A spawn or forkserver worker holds two
/// sockets whose peer is `parent`: its start channel and the task link.
/// Descriptors are numbered deterministically: a forkserver child has the
/// link first; a spawn child gets its start channel at exec and the link
/// through it, after. (Should that change, the forger's wait for the next
/// chunk fails the test rather than letting it pass.)
fn link_to(parent: i32, spawn: bool) -> i32 {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if r == 0 && cred.pid == parent {
            found.push(fd);
        }
    }
    assert!(
        matches!(found.len(), 1 | 2),
        "sockets to the parent: {found:?}"
    );
    if spawn {
        found.into_iter().max().expect("checked")
    } else {
        found.into_iter().min().expect("checked")
    }
}

/// The id of the chunk this worker runs, from its own slot block.
fn running_chunk() -> u64 {
    slot_block().load(0)
}

/// This worker's own slot block (the only one a spawn or forkserver worker
/// of a one-worker pool can reach).
fn slot_block() -> RawBlock {
    let mut blocks = small_raw_blocks();
    assert_eq!(blocks.len(), 1, "slot blocks: {}", blocks.len());
    blocks.pop().expect("checked")
}

/// Item 1 answers its chunk itself, before the worker does: a result frame
/// that announces four values of 8 bytes and holds 12 bytes (`lie` 0), or
/// holds none and names parts of the return area as `lie` says. Once
/// the parent took it (it sends the next chunk), the worker exits before
/// its real answer: the chunk it then holds was not started, and runs
/// again.
fn forger(item: Forge) -> u64 {
    if item.value == 1 {
        let link = link_to(item.parent as i32, item.spawn == 1);
        let id = running_chunk();
        let mut payload = Vec::new();
        payload.extend_from_slice(&id.to_le_bytes());
        payload.extend_from_slice(&4u32.to_le_bytes()); // items done
        payload.extend_from_slice(&0u64.to_le_bytes()); // busy
        if item.lie == 0 {
            payload.push(0); // not retiring
            payload.extend_from_slice(&4u32.to_le_bytes()); // all plain
            payload.extend_from_slice(&[7u8; 12]);
        } else {
            let words = slot_block();
            // Part 1's slot word, after the task, item and start words.
            const PART_1: usize = 4;
            match item.lie {
                1 => payload.push(0x80 | 0x20), // in two parts
                2 => payload.push(0x40),        // in part 1, its word free
                _ => {
                    assert!(words.store(PART_1, id + 1), "the slot block took no write");
                    payload.push(0x40); // in part 1, its word another's
                }
            }
            payload.extend_from_slice(&4u32.to_le_bytes()); // all plain
        }
        let mut frame = Vec::new();
        frame.extend_from_slice(b"MP");
        frame.push(1); // the wire version
        frame.push(4); // a result
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        frame.extend_from_slice(&payload);
        // SAFETY: write(2) of a live buffer to a descriptor of this process.
        let n = unsafe { libc::write(link, frame.as_ptr().cast(), frame.len()) };
        assert_eq!(n, frame.len() as isize);
        let mut next = libc::pollfd {
            fd: link,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one live pollfd.
        let r = unsafe { libc::poll(&mut next, 1, 20_000) };
        assert_eq!(r, 1, "the next chunk never came");
        std::process::exit(0);
    }
    item.value * 10
}

/// Maps 12 `Forge` items of which item 1 lies (`lie`), in chunks of 4 on
/// one worker: the first chunk's items fail as `expected` says, the others
/// are right, and the lying worker was replaced once.
fn forged(lie: u64, expected: fn(&TaskError) -> bool) {
    let parent = u64::from(std::process::id());
    // A forkserver or spawn worker holds only its own link and slot
    // block; a forked one holds copies of whatever its parent had.
    for m in [StartMethod::ForkServer, StartMethod::Spawn] {
        let spawn = u64::from(m == StartMethod::Spawn);
        let items: Vec<Forge> = (0..12)
            .map(|value| Forge {
                value,
                parent,
                spawn,
                lie,
            })
            .collect();
        // A memory limit keeps the values in the answers (no arena),
        // where a short answer can be forged.
        let pool = match lie {
            0 => pool_without_arena(1, m),
            _ => pool(1, m),
        };
        let out = pool.task(forger).chunksize(4).map_pod_results(&items);
        for (i, r) in out.iter().enumerate() {
            if i < 4 {
                assert!(r.as_ref().is_err_and(expected), "{m}: item {i}: {r:?}");
            } else {
                assert_eq!(r, &Ok(i as u64 * 10), "{m}: item {i}");
            }
        }
        let restarts: u64 = pool.stats().iter().map(|s| s.restarts).sum();
        assert_eq!(restarts, 1, "{m}");
        finish(pool);
    }
}

#[test]
fn a_forged_short_answer_fails_its_chunk_with_a_typed_error() {
    deadline(LIMIT, || {
        forged(
            0,
            |e| matches!(e, TaskError::ResultDecode(d) if d.type_name == "u64"),
        );
    });
}

#[test]
fn an_answer_in_two_parts_of_the_return_area_fails_its_chunk() {
    deadline(LIMIT, || {
        forged(1, |e| matches!(e, TaskError::Protocol(_)));
    });
}

#[test]
fn an_answer_naming_a_part_its_slot_word_does_not_fails_its_chunk() {
    deadline(LIMIT, || {
        // The word left free, then naming another chunk.
        forged(2, |e| matches!(e, TaskError::Protocol(_)));
        forged(3, |e| matches!(e, TaskError::Protocol(_)));
    });
}

#[test]
fn a_manager_pool_refuses_with_a_typed_error() {
    deadline(LIMIT, || {
        let manager = multiproc::Manager::start().unwrap();
        let pool = manager.pool(1).unwrap();
        let err = pool.task(triple).map_pod(&[1, 2]).unwrap_err();
        assert!(matches!(err, TaskError::Unsupported(_)), "{err:?}");
        // Even an empty map: the call itself is what the pool cannot run.
        let err = pool.task(triple).map_pod(&[]).unwrap_err();
        assert!(matches!(err, TaskError::Unsupported(_)), "{err:?}");
        let out = pool.task(triple).map_pod_results(&[1, 2]);
        assert!(
            out.iter()
                .all(|r| matches!(r, Err(TaskError::Unsupported(_)))),
            "{out:?}"
        );
        // The pool still runs serde maps.
        assert_eq!(pool.map(registered_triple, [1, 2]).unwrap(), [3, 6]);
        drop(pool);
        manager.shutdown().unwrap();
    });
}

#[multiproc::task]
fn registered_triple(x: u64) -> u64 {
    triple(x)
}

/// Whether this worker holds a shared-memory block of at least 32 MiB:
/// the pool's arena.
fn holds_arena(_: u8) -> u8 {
    let mut found = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target.to_string_lossy().starts_with("/memfd:multiproc-shm")
            && std::fs::metadata(entry.path()).is_ok_and(|m| m.len() >= 32 << 20)
        {
            found = 1;
        }
    }
    found
}

#[test]
fn workers_hold_the_arena_unless_the_pool_has_a_memory_limit() {
    deadline(LIMIT, || {
        // Spawned workers only: a forked one holds copies of the
        // parent's descriptors, the arenas of other tests' pools among
        // them (and so may a forkserver, forked from the parent).
        let without = pool_without_arena(2, StartMethod::Spawn);
        assert_eq!(without.map_pod(holds_arena, &[0; 8]).unwrap(), [0; 8]);
        finish(without);
        for m in StartMethod::ALL {
            let with = pool(2, m);
            assert_eq!(with.map_pod(holds_arena, &[0; 8]).unwrap(), [1; 8], "{m}");
            finish(with);
        }
    });
}

#[test]
fn the_arena_and_the_link_give_the_same_results_whatever_the_size() {
    deadline(LIMIT, || {
        let with = pool(2, StartMethod::Fork);
        let without = pool_without_arena(2, StartMethod::Fork);
        // Small, odd-sized and misaligned items, a map of one item, and
        // one too large for the arena (2.2 Mi items of 8 + 8 bytes), which
        // goes through the link.
        let bytes: Vec<u8> = (0..100_000u32).map(|x| (x % 251) as u8).collect();
        let big: Vec<u64> = (0..2_200_000).collect();
        for pool in [&with, &without] {
            let out = pool.map_pod(spread, &bytes).unwrap();
            assert!(out.iter().zip(&bytes).all(|(o, &b)| *o == spread(b)));
            assert_eq!(pool.map_pod(triple, &[14]).unwrap(), [42]);
            let out = pool.map_pod(triple, &big).unwrap();
            assert!(out.iter().enumerate().all(|(i, &o)| o == i as u64 * 3));
        }
        finish(with);
        finish(without);
    });
}

#[test]
fn maps_from_several_threads_at_once_share_the_arena_safely() {
    deadline(LIMIT, || {
        let pool = pool(2, StartMethod::Fork);
        std::thread::scope(|s| {
            for t in 0..3u64 {
                let pool = &pool;
                s.spawn(move || {
                    for round in 0..10u64 {
                        let base = (t * 100 + round) << 32;
                        let items: Vec<u64> = (base..base + 50_000).collect();
                        let out = pool.map_pod(triple, &items).unwrap();
                        assert!(
                            out.iter()
                                .zip(&items)
                                .all(|(&o, &x)| o == x.wrapping_mul(3)),
                            "thread {t} round {round}"
                        );
                    }
                });
            }
        });
        finish(pool);
    });
}

/// Panics on item 3; takes about a microsecond on the others.
fn fails_early(x: u64) -> u64 {
    assert!(x != 3, "no 3");
    let until = std::time::Instant::now() + Duration::from_micros(1);
    while std::time::Instant::now() < until {}
    x + 1
}

#[test]
fn a_map_that_failed_fast_leaves_the_arena_to_no_one_until_its_chunks_are_done() {
    deadline(LIMIT, || {
        // The failed map returns while its other chunks still run and
        // write their values; the next map must not get them.
        let pool = pool(2, StartMethod::Fork);
        let items: Vec<u64> = (0..100_000).collect();
        for round in 0..5u64 {
            let err = pool.map_pod(fails_early, &items).unwrap_err();
            assert!(matches!(err, TaskError::Panicked(_)), "{err:?}");
            let next: Vec<u64> = (0..100_000).map(|x| x + (round << 40)).collect();
            let out = pool.map_pod(triple, &next).unwrap();
            assert!(
                out.iter().zip(&next).all(|(&o, &x)| o == x.wrapping_mul(3)),
                "round {round}"
            );
        }
        finish(pool);
    });
}

/// Tries to change the pool's arena from inside a worker, through the
/// descriptor it holds: a write, and a shared writable mapping. 1 if
/// either worked.
fn writes_arena(_: u8) -> u8 {
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("/memfd:multiproc-shm")
            || !std::fs::metadata(entry.path()).is_ok_and(|m| m.len() >= 32 << 20)
        {
            continue;
        }
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
        let byte = [0xffu8];
        // SAFETY: pwrite(2) of a live one-byte buffer.
        if unsafe { libc::pwrite(fd, byte.as_ptr().cast(), 1, 0) } == 1 {
            return 1;
        }
        // SAFETY: a fresh mapping chosen by the kernel, unmapped at once.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            // SAFETY: the mapping made just above.
            unsafe { libc::munmap(p, 4096) };
            return 1;
        }
    }
    0
}

#[test]
fn no_worker_can_write_the_arena() {
    deadline(LIMIT, || {
        // A stray write in a worker faults there; it cannot change the
        // arguments another worker is about to read.
        for m in StartMethod::ALL {
            let pool = pool(2, m);
            assert_eq!(pool.map_pod(holds_arena, &[0; 4]).unwrap(), [1; 4], "{m}");
            assert_eq!(pool.map_pod(writes_arena, &[0; 4]).unwrap(), [0; 4], "{m}");
            finish(pool);
        }
    });
}

/// How many blocks of shared memory of 1 to 32 MiB (an arena, a return
/// area) this worker can write through a mapping.
fn writable_blocks(_: u8) -> u8 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut n = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next().unwrap(), fields.next().unwrap());
        let (lo, hi) = range.split_once('-').unwrap();
        let size = u64::from_str_radix(hi, 16).unwrap() - u64::from_str_radix(lo, 16).unwrap();
        if line.contains("memfd:multiproc-shm")
            && perms.starts_with("rw")
            && (1 << 20..=32 << 20).contains(&size)
        {
            n += 1;
        }
    }
    n
}

#[test]
fn a_forked_worker_can_write_its_own_return_area_only() {
    deadline(LIMIT, || {
        // The parent's mappings of the arena and of every worker's return
        // area are kept from forks: a forked worker has only its own.
        for m in StartMethod::ALL {
            let pool = pool(2, m);
            let items: Vec<u64> = (0..100_000).collect();
            assert_eq!(pool.map_pod(triple, &items).unwrap()[99_999], 299_997);
            let out = pool
                .task(writable_blocks)
                .chunksize(1)
                .map_pod(&[0; 8])
                .unwrap();
            assert_eq!(out, [1; 8], "{m}");
            finish(pool);
        }
    });
}
