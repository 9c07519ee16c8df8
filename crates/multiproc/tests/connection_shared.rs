//! A pipe whose sending end several processes share (`pipe_shared`):
//! concurrent writers (processes and threads, under every start method)
//! never interleave their messages, long ones included; a writer killed
//! while it sends leaves nothing partial behind; handles travel; the
//! receiver sees the end once every copy of the sender is gone.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{LIMIT, deadline};
use multiproc::{
    JoinError, Process, Queue, RecvError, RecvTimeoutError, SendError, SharedSender, Signal,
    StartMethod, pipe_shared,
};

/// Message `seq` of writer `id`: 16 bytes naming them and the length, then
/// bytes that depend on all three. Lengths cycle through small, a little
/// over one datagram's inline limit, and large.
fn message(id: u32, seq: u32) -> Vec<u8> {
    let len = match seq % 5 {
        0 => 8,
        1 => 1000,
        2 => 16 << 10,
        3 => (16 << 10) + 1,
        _ => 300 << 10,
    };
    let mut m = Vec::with_capacity(16 + len);
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&(len as u64).to_le_bytes());
    m.extend((0..len).map(|i| (i as u32 ^ id.wrapping_mul(31) ^ seq.wrapping_mul(7)) as u8));
    m
}

/// Checks a received message whole: returns its writer and number.
fn check(m: &[u8]) -> (u32, u32) {
    assert!(m.len() >= 16, "a message of {} bytes", m.len());
    let id = u32::from_le_bytes(m[..4].try_into().unwrap());
    let seq = u32::from_le_bytes(m[4..8].try_into().unwrap());
    let len = u64::from_le_bytes(m[8..16].try_into().unwrap()) as usize;
    assert_eq!(m.len(), 16 + len, "message {seq} of writer {id} is cut");
    assert!(
        m == message(id, seq),
        "message {seq} of writer {id} holds another writer's bytes"
    );
    (id, seq)
}

/// Sends `count` messages from each of two threads (ids `2 * id` and
/// `2 * id + 1`).
fn write_messages((id, count, out): (u32, u32, SharedSender<()>)) {
    let other = out.clone();
    let t = std::thread::spawn(move || {
        for seq in 0..count {
            other.send_bytes(&message(2 * id + 1, seq)).unwrap();
        }
    });
    for seq in 0..count {
        out.send_bytes(&message(2 * id, seq)).unwrap();
    }
    t.join().unwrap();
}

#[test]
fn concurrent_writers_never_interleave_their_messages() {
    deadline(LIMIT, || {
        let (rx, tx) = pipe_shared::<()>().unwrap();
        let count = 40;
        let mut writers = Vec::new();
        for (i, method) in StartMethod::ALL.into_iter().enumerate() {
            let p = Process::builder()
                .start_method(method)
                .spawn(write_messages, (i as u32, count, tx.clone()))
                .unwrap();
            writers.push(p);
        }
        // This process writes too, from a thread.
        let ours = tx.clone();
        let local = std::thread::spawn(move || write_messages((3, count, ours)));
        drop(tx);
        let mut next: HashMap<u32, u32> = HashMap::new();
        loop {
            match rx.recv_bytes() {
                Ok(m) => {
                    let (id, seq) = check(&m);
                    let expected = next.entry(id).or_insert(0);
                    assert_eq!(seq, *expected, "writer {id}'s messages out of order");
                    *expected += 1;
                }
                // Every copy of the sender is gone.
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            }
        }
        local.join().unwrap();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(next.len(), 8);
        assert!(next.values().all(|n| *n == count), "{next:?}");
    });
}

/// Sends 8 MiB messages until killed.
fn flood(out: SharedSender<()>) {
    let big = vec![0xA5u8; 8 << 20];
    let mut seq = 0u32;
    loop {
        let mut m = Vec::with_capacity(big.len() + 8);
        m.extend_from_slice(&u32::MAX.to_le_bytes());
        m.extend_from_slice(&seq.to_le_bytes());
        m.extend_from_slice(&big);
        if out.send_bytes(&m).is_err() {
            return;
        }
        seq += 1;
    }
}

#[test]
fn a_writer_killed_while_it_sends_leaves_nothing_partial() {
    deadline(LIMIT, || {
        let (rx, tx) = pipe_shared::<()>().unwrap();
        let flooder = Process::spawn(flood, tx.clone()).unwrap();
        let small = Process::spawn(write_messages, (0, 60, tx.clone())).unwrap();
        drop(tx);
        let mut floods = 0;
        let mut small_seen = 0;
        let mut killed = false;
        loop {
            let m = match rx.recv_bytes() {
                Ok(m) => m,
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            };
            if m[..4] == u32::MAX.to_le_bytes() {
                assert_eq!(m.len(), 8 + (8 << 20), "a flood message was cut");
                assert!(
                    m[8..].iter().all(|b| *b == 0xA5),
                    "a flood message is mixed"
                );
                floods += 1;
                if floods == 3 && !killed {
                    // It is writing its next message now, or sending it.
                    flooder.kill().unwrap();
                    killed = true;
                }
            } else {
                check(&m);
                small_seen += 1;
            }
        }
        assert!(matches!(
            flooder.join(),
            Err(JoinError::Signaled { signal, .. }) if signal == Signal::KILL
        ));
        small.join().unwrap();
        assert_eq!(small_seen, 120);
        assert!(floods >= 3);
    });
}

/// Sends a queue (a handle) through the shared sender.
fn send_queue((out, q): (SharedSender<Queue<u32>>, Queue<u32>)) {
    q.put(7).unwrap();
    out.send(&q).unwrap();
}

#[test]
fn values_and_handles_travel_and_the_receiver_is_a_plain_connection() {
    deadline(LIMIT, || {
        let (rx, tx) = pipe_shared::<Queue<u32>>().unwrap();
        assert!(rx.is_readable() && !rx.is_writable());
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(50)),
            Err(RecvTimeoutError::Timeout)
        ));
        let q = Queue::new().unwrap();
        let child = Process::spawn(send_queue, (tx.clone(), q)).unwrap();
        assert!(rx.poll(Some(Duration::from_secs(20))).unwrap());
        let got = rx.recv().unwrap();
        assert_eq!(got.get().unwrap(), 7);
        child.join().unwrap();
        drop(tx);
        assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    });
}

#[test]
fn a_message_over_the_limit_is_refused_and_the_next_one_arrives() {
    deadline(LIMIT, || {
        let (rx, tx) = pipe_shared::<()>().unwrap();
        rx.set_max_message_size(1000);
        tx.send_bytes(&[1u8; 5000]).unwrap();
        tx.send_bytes(&[2u8; 40_000]).unwrap();
        tx.send_bytes(b"small").unwrap();
        for len in [5000, 40_000] {
            assert!(matches!(
                rx.recv_bytes(),
                Err(RecvError::TooLarge { len: l, limit: 1000 }) if l == len
            ));
        }
        assert_eq!(rx.recv_bytes().unwrap(), b"small");
        // The receiver gone, a send fails. Another test's fork child,
        // started while `rx` was open, holds a copy of it until it exits
        // (a fork child inherits every descriptor, as in Python): sends
        // succeed, then block once the buffer is full, until that copy
        // is gone too. The deadline bounds the wait.
        drop(rx);
        loop {
            match tx.send_bytes(b"x") {
                Err(SendError::Disconnected) => break,
                Ok(()) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("a send to a closed receiver failed with {e:?}"),
            }
        }
    });
}
