//! The README's promise on names: a `SharedMemory` name resolves while its
//! creator holds the block (its creating handle or a clone of it), and a block passed as a handle stays shared
//! after that, with nothing left in /dev/shm.

mod common;

use common::{LIMIT, assert_gone, deadline};
use multiproc::{Connection, Process, SharedMemory, StartMethod, pipe};

/// Creates a block, sends it with its name, and holds it until told to go.
fn create_and_hold(conn: Connection<(String, SharedMemory), ()>) {
    let shm = SharedMemory::create(4096).unwrap();
    shm.write(0, b"from the creator").unwrap();
    conn.send(&(shm.name().unwrap().to_string(), shm.clone()))
        .unwrap();
    let _ = conn.recv();
    // Dropping the creating handle (and its clones) ends the name at once,
    // even while this process runs on.
    drop(shm);
    conn.send(&(String::new(), SharedMemory::create(1).unwrap()))
        .unwrap();
    let _ = conn.recv();
}

#[test]
fn a_name_resolves_while_its_creator_holds_the_block_and_a_handle_outlives_it() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let (ours, theirs) = pipe::<(), (String, SharedMemory)>().unwrap();
            let creator = Process::builder()
                .start_method(m)
                .spawn(create_and_hold, theirs)
                .unwrap();
            let (name, handle) = ours.recv().unwrap();
            let by_name =
                SharedMemory::attach(&name).unwrap_or_else(|e| panic!("{m}: {name}: {e}"));
            by_name.write(100, b"by name").unwrap();

            ours.send(&()).unwrap();
            let _ = ours.recv().unwrap();
            assert!(common::exists(creator.pid()));
            assert!(
                SharedMemory::attach(&name).is_err(),
                "{m}: {name} still resolves after its creator dropped it"
            );
            ours.send(&()).unwrap();
            let pid = creator.pid();
            creator.join().unwrap();
            assert_gone(pid);
            // The handles held here still share one block.
            let mut buf = [0u8; 16];
            handle.read(0, &mut buf).unwrap();
            assert_eq!(&buf, b"from the creator", "{m}");
            handle.write(200, b"still shared").unwrap();
            let mut back = [0u8; 12];
            by_name.read(200, &mut back).unwrap();
            assert_eq!(&back, b"still shared", "{m}");
            let mut seen = [0u8; 7];
            handle.read(100, &mut seen).unwrap();
            assert_eq!(&seen, b"by name", "{m}");
        }
    });
}
