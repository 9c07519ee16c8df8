//! Shared memory cannot be resized under a mapping (which would make the
//! next access a bus error in every process holding it), and a memfd whose
//! size is not sealed is refused.

mod common;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use common::{LIMIT, deadline};
use multiproc::{Process, SharedMemory, StartMethod};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;

/// Tries to shrink and to grow the block, then writes and reads it: the
/// errors of both resizes, and whether the block still works.
fn try_resize(shm: &SharedMemory) -> (Option<Errno>, Option<Errno>, bool) {
    let shrink = rustix::fs::ftruncate(shm.as_fd(), 0).err();
    let grow = rustix::fs::ftruncate(shm.as_fd(), (shm.size() * 4) as u64).err();
    let end = shm.size() - 4;
    shm.write(end, b"last").unwrap();
    let mut out = [0u8; 4];
    shm.read(end, &mut out).unwrap();
    (shrink, grow, &out == b"last")
}

fn resize_in_child(shm: SharedMemory) -> (Option<i32>, Option<i32>, bool) {
    let (shrink, grow, works) = try_resize(&shm);
    shm.write(0, b"child").unwrap();
    (
        shrink.map(|e| e.raw_os_error()),
        grow.map(|e| e.raw_os_error()),
        works,
    )
}

fn resize_by_name_in_child(name: String) -> Result<(Option<i32>, Option<i32>, bool), String> {
    let shm = SharedMemory::attach(&name).map_err(|e| e.to_string())?;
    Ok(resize_in_child(shm))
}

fn attach_in_child(name: String) -> Result<usize, (String, String)> {
    SharedMemory::attach(&name)
        .map(|shm| shm.size())
        .map_err(|e| (format!("{:?}", e.kind()), e.to_string()))
}

#[test]
fn ftruncate_through_the_public_fd_is_refused_and_the_block_keeps_working() {
    deadline(LIMIT, || {
        let shm = SharedMemory::create(10_000).unwrap();
        let size = shm.size();
        assert_eq!(
            try_resize(&shm),
            (Some(Errno::PERM), Some(Errno::PERM), true)
        );
        assert_eq!(
            rustix::fs::fstat(shm.as_fd()).unwrap().st_size as usize,
            size
        );
        // A clone shares the memfd: same answer.
        assert_eq!(
            try_resize(&shm.clone()),
            (Some(Errno::PERM), Some(Errno::PERM), true)
        );
    });
}

#[test]
fn another_process_cannot_resize_a_block_either() {
    deadline(LIMIT, || {
        let eperm = Some(Errno::PERM.raw_os_error());
        for m in StartMethod::ALL {
            let shm = SharedMemory::create(8192).unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(resize_in_child, shm.clone())
                .unwrap();
            assert_eq!(child.join().unwrap(), (eperm, eperm, true), "{m}");
            let name = shm.name().unwrap().to_string();
            let child = Process::builder()
                .start_method(m)
                .spawn(resize_by_name_in_child, name)
                .unwrap();
            assert_eq!(child.join().unwrap(), Ok((eperm, eperm, true)), "{m}");
            // Every access here still works: no SIGBUS.
            let mut out = [0u8; 5];
            shm.read(0, &mut out).unwrap();
            assert_eq!(&out, b"child", "{m}");
            let mut all = vec![0u8; shm.size()];
            shm.read(0, &mut all).unwrap();
        }
    });
}

/// The last part of a forged block's name, and of its memfd's label.
const TOKEN: &str = "00000000000000aa";

/// The name a creator would report for `fd`, a forged block of this process.
fn name_of(fd: &OwnedFd) -> String {
    format!(
        "multiproc-{}-{}-{TOKEN}",
        std::process::id(),
        fd.as_raw_fd()
    )
}

/// A memfd labelled as the crate labels a named block's, sized, with `seals`.
fn forged(flags: MemfdFlags, seals: SealFlags) -> OwnedFd {
    let label = format!("multiproc-shm-{TOKEN}");
    let fd = rustix::fs::memfd_create(label.as_str(), flags | MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

#[test]
fn a_memfd_that_is_not_sealed_is_refused() {
    deadline(LIMIT, || {
        let cases = [
            (
                "not sealable",
                forged(MemfdFlags::empty(), SealFlags::empty()),
            ),
            (
                "sealable, not sealed",
                forged(MemfdFlags::ALLOW_SEALING, SealFlags::empty()),
            ),
            (
                "sealed against growing only",
                forged(MemfdFlags::ALLOW_SEALING, SealFlags::GROW),
            ),
            (
                "sealed against shrinking only",
                forged(
                    MemfdFlags::ALLOW_SEALING,
                    SealFlags::SHRINK | SealFlags::SEAL,
                ),
            ),
        ];
        for (what, fd) in &cases {
            let name = name_of(fd);
            let e = SharedMemory::attach(&name).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
            assert!(e.to_string().contains("seal"), "{what}: {e}");
            // The same from another process (the usual way to receive one).
            let (kind, msg) = Process::spawn(attach_in_child, name)
                .unwrap()
                .join()
                .unwrap()
                .unwrap_err();
            assert_eq!(kind, "InvalidData", "{what}: {msg}");
        }
        // The control: sealed as the crate seals its own, it is accepted.
        let good = forged(
            MemfdFlags::ALLOW_SEALING,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        );
        let name = name_of(&good);
        assert_eq!(SharedMemory::attach(&name).unwrap().size(), 4096);
    });
}
