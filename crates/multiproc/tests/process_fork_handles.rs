//! A forked child must not close descriptors that objects it can still
//! reach own (issue 14, defect 4). A handle kept in a `static` survives in
//! a fork child; if the child closed its descriptor, the handles it
//! receives as its argument would land on the same numbers, and two owners
//! of one descriptor would close it twice (std aborts: "IO Safety
//! violation") or talk on each other's sockets.

mod common;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::{LIMIT, assert_gone, deadline};
use multiproc::{Connection, Process, Queue, SharedMemory, StartMethod, pipe};

static QUEUE: OnceLock<Queue<u32>> = OnceLock::new();
static SHM: Mutex<Option<SharedMemory>> = Mutex::new(None);

type Args = (Queue<u32>, SharedMemory, Connection<u32, u32>);

/// Uses the statics it inherited and the handles it was given, then drops
/// them all, as a program would.
fn child((queue, shm, conn): Args) -> u32 {
    // The inherited static queue: whatever it answers, it must not touch
    // the argument's descriptors.
    if let Some(q) = QUEUE.get() {
        let _ = q.put(1000);
    }
    // Clearing the static drops its handle (and closes its descriptor).
    drop(SHM.lock().unwrap_or_else(|e| e.into_inner()).take());
    queue.put(1).unwrap();
    shm.write(0, b"child").unwrap();
    conn.send(&7).unwrap();
    let back = conn.recv().unwrap();
    drop((queue, shm, conn));
    back + 1
}

#[test]
fn static_handles_survive_the_fork_start_method() {
    deadline(LIMIT, || {
        // The statics take the lowest descriptor numbers of this test.
        let _ = QUEUE.set(Queue::new().unwrap());
        *SHM.lock().unwrap() = Some(SharedMemory::create(4096).unwrap());
        for round in 0..3 {
            let queue = Queue::<u32>::new().unwrap();
            let shm = SharedMemory::create(4096).unwrap();
            let (ours, theirs) = pipe::<u32, u32>().unwrap();
            let p = Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(child, (queue.clone(), shm.clone(), theirs))
                .unwrap();
            let pid = p.pid();
            assert_eq!(ours.recv().unwrap(), 7, "round {round}");
            ours.send(&41).unwrap();
            assert_eq!(p.join().unwrap(), 42, "round {round}");
            assert_gone(pid);
            assert_eq!(queue.get_timeout(Duration::from_secs(10)).unwrap(), 1);
            let mut buf = [0u8; 5];
            shm.read(0, &mut buf).unwrap();
            assert_eq!(&buf, b"child");
            // The parent's own static handles still work.
            let q = QUEUE.get().unwrap();
            q.put(round).unwrap();
            let mut got = Vec::new();
            while let Ok(v) = q.get_timeout(Duration::from_millis(100)) {
                got.push(v);
            }
            assert!(got.contains(&round), "{got:?}");
            SHM.lock()
                .unwrap()
                .as_ref()
                .expect("the parent's static is untouched")
                .write(0, b"parent")
                .unwrap();
        }
    });
}
