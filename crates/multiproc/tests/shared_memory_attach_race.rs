//! `SharedMemory::attach` by a name whose descriptor number the creator
//! keeps pointing at other things while the attach runs: it attaches the
//! named block or nothing, and never even opens another kind of file (a
//! FIFO's open has side effects, a leased file's can block for a minute).

mod common;

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{LIMIT, deadline};
use multiproc::SharedMemory;
use rustix::fs::{CWD, FileType, MemfdFlags, Mode, OFlags, SealFlags, inotify};

/// The token of the block the name stands for.
const TOKEN: &str = "0123456789abcdef";

/// A memfd labelled `label` of `size` bytes, starting with `first`, sealed
/// as the crate seals a block.
fn block(label: &str, size: u64, first: u8) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create(label, MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    rustix::io::pwrite(&fd, &[first], 0).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .unwrap();
    fd
}

#[test]
fn a_number_swapped_during_attach_gives_the_named_block_or_nothing() {
    deadline(LIMIT, || {
        let named = block(&format!("multiproc-shm-{TOKEN}"), 4096, b'A');
        let other = block("multiproc-shm-fedcba9876543210", 8192, b'B');
        let dir = common::temp_path("attach-race");
        std::fs::create_dir_all(&dir).unwrap();
        let fifo_path = dir.join("fifo");
        rustix::fs::mknodat(CWD, &fifo_path, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0).unwrap();
        let fifo = rustix::fs::open(
            &fifo_path,
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        // Every open of the FIFO from here on is an event.
        let watch =
            inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).unwrap();
        inotify::add_watch(&watch, &fifo_path, inotify::WatchFlags::OPEN).unwrap();

        // The number the name gives: the named block, another block, the
        // FIFO, in turn, as fast as a thread can switch them.
        let mut slot = named.try_clone().unwrap();
        let name = format!(
            "multiproc-{}-{}-{TOKEN}",
            std::process::id(),
            slot.as_raw_fd()
        );
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for target in [&other, &fifo, &named] {
                        rustix::io::dup2(target, &mut slot).unwrap();
                    }
                    swaps += 1;
                }
                swaps
            })
        };
        let (mut attached, mut refused) = (0u64, 0u64);
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            let t0 = Instant::now();
            match SharedMemory::attach(&name) {
                Ok(shm) => {
                    let mut first = [0u8; 1];
                    shm.read(0, &mut first).unwrap();
                    assert_eq!((shm.size(), first[0]), (4096, b'A'), "another block");
                    attached += 1;
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
                    refused += 1;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(1), "an attach blocked");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(swapper.join().unwrap() > 0);
        assert!(
            attached > 0 && refused > 0,
            "{attached} attached, {refused} refused"
        );

        let mut buf = [MaybeUninit::<u8>::uninit(); 1024];
        let mut events = inotify::Reader::new(&watch, &mut buf);
        match events.next() {
            Err(rustix::io::Errno::AGAIN) => {}
            Ok(event) => panic!("the FIFO was opened: {:?}", event.events()),
            Err(e) => panic!("inotify: {e}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    });
}
