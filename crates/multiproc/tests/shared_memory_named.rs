//! Blocks created under a name the user chooses
//! (`SharedMemory::create_named`): attachable by the name alone from any
//! process of the user, typed errors for a duplicate, missing or invalid
//! name, and nothing left behind (no abstract socket, no /dev/shm entry)
//! once the creator lets the name go or is killed.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, assert_gone, deadline};
use multiproc::{
    Connection, JoinError, MAX_NAME_LEN, NameError, Process, SharedMemory, Signal, StartMethod,
    pipe,
};

/// A name unique to this test process and `tag`.
fn unique(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

/// Whether an abstract socket for `name` is listed in /proc/net/unix.
fn socket_listed(name: &str) -> bool {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let suffix = format!("-{name}");
    table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .any(|path| path.starts_with("@multiproc-shm-") && path.ends_with(&suffix))
}

/// Whether anything in /dev/shm mentions `name`.
fn in_dev_shm(name: &str) -> bool {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains(name))
        })
        .unwrap_or(false)
}

/// Waits until `name` no longer resolves nor is listed; false if it still
/// is after 10 s.
fn name_gone(name: &str) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if matches!(
            SharedMemory::attach_named(name),
            Err(NameError::NotFound(_))
        ) && !socket_listed(name)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn duplicate_missing_and_invalid_names_are_typed_errors() {
    deadline(LIMIT, || {
        let name = unique("dup");
        let shm = SharedMemory::create_named(&name, 100).unwrap();
        assert_eq!(shm.name(), Some(name.as_str()));
        assert_eq!(shm.size(), 100);
        assert!(socket_listed(&name));
        assert!(
            matches!(SharedMemory::create_named(&name, 100), Err(NameError::Exists(n)) if n == name)
        );
        // `attach` takes a chosen name too, with the io kind of the error.
        assert_eq!(SharedMemory::attach(&name).unwrap().size(), 100);
        let missing = unique("missing");
        assert!(
            matches!(SharedMemory::attach_named(&missing), Err(NameError::NotFound(n)) if n == missing)
        );
        assert_eq!(
            SharedMemory::attach(&missing).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let longest = format!("{}{}", unique("l"), "x".repeat(MAX_NAME_LEN))
            .split_at(MAX_NAME_LEN)
            .0
            .to_string();
        for bad in ["", "a/b", "/x", "a\0b", "multiproc-1-2", long.as_str()] {
            assert!(
                matches!(
                    SharedMemory::create_named(bad, 10),
                    Err(NameError::Invalid { .. })
                ),
                "{bad:?}"
            );
            assert!(
                matches!(
                    SharedMemory::attach_named(bad),
                    Err(NameError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
        let at_limit = SharedMemory::create_named(&longest, 8).unwrap();
        assert_eq!(SharedMemory::attach_named(&longest).unwrap().size(), 8);
        drop(at_limit);
        assert!(matches!(
            SharedMemory::create_named(&unique("zero"), 0),
            Err(NameError::ZeroSize)
        ));
        assert!(!socket_listed(&unique("zero")));
        let huge = unique("huge");
        assert!(matches!(
            SharedMemory::create_named(&huge, usize::MAX),
            Err(NameError::Io(_))
        ));
        assert!(!socket_listed(&huge));
        // Letting the name go frees it for a new block at once.
        let mut shm = shm;
        shm.unlink();
        assert_eq!(shm.name(), None);
        assert!(name_gone(&name));
        let again = SharedMemory::create_named(&name, 7).unwrap();
        assert_eq!(SharedMemory::attach_named(&name).unwrap().size(), 7);
        drop(again);
        assert!(name_gone(&name));
        assert!(!in_dev_shm(&name));
    });
}

/// Attaches by name only and writes what it was told to.
fn attach_by_name(name: String) -> Vec<u8> {
    let shm = SharedMemory::attach_named(&name).unwrap();
    // The name is taken for every process, not only its creator.
    assert!(matches!(
        SharedMemory::create_named(&name, 1),
        Err(NameError::Exists(_))
    ));
    let mut buf = vec![0u8; 12];
    shm.read(0, &mut buf).unwrap();
    shm.write(16, b"child wrote").unwrap();
    buf
}

#[test]
fn a_child_given_only_the_name_attaches_under_every_start_method() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let name = unique(&format!("child-{m}"));
            let shm = SharedMemory::create_named(&name, 4096).unwrap();
            shm.write(0, b"parent wrote").unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(attach_by_name, name.clone())
                .unwrap();
            let pid = child.pid();
            assert_eq!(child.join().unwrap(), b"parent wrote", "{m}");
            assert_gone(pid);
            let mut buf = [0u8; 11];
            shm.read(16, &mut buf).unwrap();
            assert_eq!(&buf, b"child wrote", "{m}");
            drop(shm);
            assert!(name_gone(&name), "{m}");
        }
    });
}

const PEER_ENV: &str = "MULTIPROC_TEST_NAMED_PEER";

/// Not a test of its own: run by the test below as a separate program (the
/// test binary, with `PEER_ENV` set), which got nothing but the name from
/// its parent. Without the variable it has nothing to do.
#[test]
fn unrelated_program_attaching() {
    let Ok(name) = std::env::var(PEER_ENV) else {
        return;
    };
    let shm = SharedMemory::attach_named(&name).unwrap();
    let mut buf = [0u8; 14];
    shm.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"for a stranger");
    shm.write(100, b"stranger was here").unwrap();
}

#[test]
fn an_unrelated_program_attaches_by_name() {
    deadline(LIMIT, || {
        let name = unique("stranger");
        let shm = SharedMemory::create_named(&name, 4096).unwrap();
        shm.write(0, b"for a stranger").unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "unrelated_program_attaching", "--test-threads=1"])
            .env(PEER_ENV, &name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
        let mut buf = [0u8; 17];
        shm.read(100, &mut buf).unwrap();
        assert_eq!(&buf, b"stranger was here");
        // And a missing name fails there as here.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "unrelated_program_attaching", "--test-threads=1"])
            .env(PEER_ENV, unique("nobody"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("NotFound"));
    });
}

/// Creates a named block, reports ready, and waits to be killed.
fn create_and_wait(args: (String, Connection<(), ()>)) {
    let (name, conn) = args;
    let shm = SharedMemory::create_named(&name, 4096).unwrap();
    shm.write(0, b"from the dead").unwrap();
    conn.send(&()).unwrap();
    let _ = conn.recv();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_creator_leaves_nothing_behind_and_the_block_lives_on() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let name = unique(&format!("killed-{m}"));
            let (ours, theirs) = pipe::<(), ()>().unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(create_and_wait, (name.clone(), theirs))
                .unwrap();
            ours.recv().unwrap();
            let held = SharedMemory::attach_named(&name).unwrap();
            assert!(socket_listed(&name), "{m}");
            let pid = child.pid();
            child.kill().unwrap();
            match child.join() {
                Err(JoinError::Signaled {
                    signal: Signal::KILL,
                    ..
                }) => {}
                other => panic!("{m}: {other:?}"),
            }
            assert_gone(pid);
            assert!(
                name_gone(&name),
                "{m}: the name outlived its killed creator"
            );
            assert!(!in_dev_shm(&name), "{m}");
            let mut buf = [0u8; 13];
            held.read(0, &mut buf).unwrap();
            assert_eq!(&buf, b"from the dead", "{m}");
            // The name is free again.
            drop(SharedMemory::create_named(&name, 1).unwrap());
            assert!(name_gone(&name), "{m}");
        }
    });
}

/// Holds whatever it inherited until told to go.
fn linger(conn: Connection<(), ()>) {
    conn.send(&()).unwrap();
    let _ = conn.recv();
}

#[test]
fn a_forked_child_does_not_keep_its_parents_name() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let name = unique(&format!("fork-{m}"));
            let shm = SharedMemory::create_named(&name, 64).unwrap();
            let (ours, theirs) = pipe::<(), ()>().unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(linger, theirs)
                .unwrap();
            ours.recv().unwrap();
            drop(shm);
            assert!(
                name_gone(&name),
                "{m}: a child kept the name of its parent's block"
            );
            ours.send(&()).unwrap();
            let pid = child.pid();
            child.join().unwrap();
            assert_gone(pid);
        }
    });
}
