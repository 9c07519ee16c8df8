//! Acknowledged gets: a delivery whose consumer dies before acknowledging
//! it is delivered again, under every start method, for inline and
//! out-of-line messages; acknowledged ones never come back; a delivery
//! dropped unacknowledged goes back to the queue.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, deadline, send_signal};
use multiproc::{Event, JoinableQueue, Process, Queue, StartMethod, pipe};
use serde::{Deserialize, Serialize};

#[test]
fn an_acknowledged_delivery_is_gone_and_a_dropped_one_comes_back() {
    deadline(LIMIT, || {
        let q = Queue::<u32>::new().unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        let d = q.get_delivery().unwrap();
        assert_eq!(*d, 1);
        assert_eq!(d.ack().unwrap(), 1);
        let d = q.get_delivery().unwrap();
        assert_eq!(*d, 2);
        q.put(3).unwrap();
        drop(d);
        // Given back, at the back of the queue.
        assert_eq!(q.get().unwrap(), 3);
        let d = q.get_delivery().unwrap();
        assert_eq!(*d, 2);
        d.requeue().unwrap();
        assert_eq!(q.get().unwrap(), 2);
        assert!(q.try_get().is_err());
    });
}

/// What a consumer holds: a payload of `len` bytes, so that a large one
/// travels out of line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    n: u32,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// Takes one delivery, says so, and never acknowledges it.
fn take_and_hang((q, taken): (Queue<Job>, Event)) {
    let d = q.get_delivery().unwrap();
    taken.set();
    std::thread::sleep(Duration::from_secs(600));
    drop(d);
}

#[test]
fn a_delivery_held_by_a_killed_consumer_is_delivered_again() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            // 64 bytes stay in the ring; 20 KiB go out of line (the ring
            // holds at most 2 KiB - 8 inline).
            for len in [64usize, 20 << 10] {
                let q: Queue<Job> = Queue::builder().ring_bytes(4096).build().unwrap();
                let job = Job {
                    n: 7,
                    payload: vec![0xab; len],
                };
                q.put(job.clone()).unwrap();
                let taken = Event::new().unwrap();
                let child = Process::builder()
                    .start_method(m)
                    .spawn(take_and_hang, (q.clone(), taken.clone()))
                    .unwrap();
                assert!(taken.wait_timeout(Duration::from_secs(20)), "{m} {len}");
                assert!(q.try_get().is_err(), "{m} {len}: the message is held");
                assert!(send_signal(child.pid(), libc::SIGKILL));
                let _ = child.join();
                let t = Instant::now();
                let again = q
                    .get_delivery_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("{m} {len}: not delivered again: {e}"));
                assert!(t.elapsed() < Duration::from_secs(5), "{m} {len}");
                assert_eq!(*again, job, "{m} {len}");
                again.ack().unwrap();
                assert!(q.get_delivery_timeout(Duration::from_millis(100)).is_err());
            }
        }
    });
}

/// A message carrying a handle (a pipe end) is journaled with its handle.
#[test]
fn a_delivery_with_a_handle_comes_back_with_it() {
    deadline(LIMIT, || {
        let q = Queue::<multiproc::Connection<u8, u8>>::new().unwrap();
        let (a, b) = pipe::<u8, u8>().unwrap();
        q.put(a).unwrap();
        let d = q.get_delivery().unwrap();
        drop(d);
        let a = q.get_delivery().unwrap();
        a.send(&5).unwrap();
        assert_eq!(b.recv().unwrap(), 5);
        let a = a.ack().unwrap();
        drop(a);
    });
}

fn ack_all(q: JoinableQueue<u32>) {
    while let Ok(d) = q.get_delivery_timeout(Duration::from_secs(2)) {
        d.ack().unwrap();
    }
}

#[test]
fn on_a_joinable_queue_the_acknowledgement_is_task_done() {
    deadline(LIMIT, || {
        let q = JoinableQueue::<u32>::new().unwrap();
        for i in 0..100 {
            q.put(i).unwrap();
        }
        let child = Process::spawn(ack_all, q.clone()).unwrap();
        assert!(q.join_timeout(Duration::from_secs(20)));
        child.join().unwrap();
        assert!(q.task_done().is_err(), "one task_done too many");
    });
}

/// Consumes with acknowledged gets, reporting each value before
/// acknowledging it (so a kill in between can only duplicate).
/// Returns why it stopped, other than finding nothing for 3 s.
fn consume((q, out): (Queue<u32>, Queue<u32>)) -> Option<String> {
    loop {
        match q.get_delivery_timeout(Duration::from_secs(3)) {
            Ok(d) => {
                out.put(*d).unwrap();
                d.ack().unwrap();
            }
            Err(multiproc::GetTimeoutError::Timeout) => return None,
            Err(e) => return Some(e.to_string()),
        }
    }
}

#[test]
fn nothing_is_lost_when_consumers_are_killed_at_random() {
    deadline(Duration::from_secs(120), || {
        const N: u32 = 100_000;
        let q = Queue::<u32>::new().unwrap();
        let out = Queue::<u32>::new().unwrap();
        let spawn = || Process::spawn(consume, (q.clone(), out.clone())).unwrap();
        let mut consumers = vec![spawn(), spawn()];
        let mut seen = vec![0u32; N as usize];
        let mut kills = 0;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut next = 0;
        let mut got = 0usize;
        let start = Instant::now();
        while got < N as usize || next < N {
            // Produce in bursts, kill now and then, collect what came out.
            for _ in 0..2_000 {
                if next < N && q.try_put(next).is_ok() {
                    next += 1;
                }
            }
            if kills < 40 && rand(3) == 0 {
                let i = rand(consumers.len() as u64) as usize;
                let victim = consumers.swap_remove(i);
                send_signal(victim.pid(), libc::SIGKILL);
                let _ = victim.join();
                kills += 1;
                consumers.push(spawn());
            }
            // A consumer that stopped (idle for 3 s on a loaded machine)
            // is replaced; one that stopped on an error fails the test.
            for c in consumers.iter_mut() {
                if !c.is_alive() {
                    let done = std::mem::replace(c, spawn());
                    assert_eq!(done.join().unwrap(), None, "a consumer failed");
                }
            }
            std::thread::sleep(Duration::from_millis(rand(20) + 2));
            while let Ok(v) = out.try_get() {
                if seen[v as usize] == 0 {
                    got += 1;
                }
                seen[v as usize] += 1;
            }
            assert!(
                start.elapsed() < Duration::from_secs(100),
                "stuck at {got} of {N} after {kills} kills ({} queued, {next} put)",
                q.len()
            );
        }
        let duplicates: u32 = seen.iter().map(|&c| c.saturating_sub(1)).sum();
        eprintln!("{kills} kills, {duplicates} duplicates");
        assert!(seen.iter().all(|&c| c >= 1), "a message was lost");
        // A killed consumer held at most one unacknowledged delivery (it
        // acknowledges each before taking the next).
        assert!(
            duplicates <= kills,
            "{duplicates} duplicates for {kills} kills"
        );
        for c in consumers {
            send_signal(c.pid(), libc::SIGKILL);
            let _ = c.join();
        }
    });
}

#[test]
fn a_requeue_into_a_queue_that_stays_full_says_so() {
    deadline(LIMIT, || {
        let q = Queue::<u32>::bounded(1).unwrap();
        // Another handle that could make room: the requeue waits for it.
        let _other = q.clone();
        q.put(1).unwrap();
        let d = q.get_delivery().unwrap();
        q.put(2).unwrap();
        let t = Instant::now();
        assert_eq!(d.requeue(), Err(multiproc::AckError::Full));
        assert!(t.elapsed() >= multiproc::REQUEUE_WAIT);
        assert_eq!(q.get().unwrap(), 2);
    });
}

/// Takes one delivery, says so, and never acknowledges it.
fn take_one_and_hang((q, taken): (Queue<u32>, Event)) {
    let d = q.get_delivery().unwrap();
    taken.set();
    std::thread::sleep(Duration::from_secs(600));
    drop(d);
}

/// A dead consumer's delivery at the front of the journal keeps every
/// later record in it, acknowledged or not, until it is recovered; the
/// journal fills. If the queue is full too, the delivery cannot go back
/// into it: the consumer that finds the journal full takes it over.
#[test]
fn a_full_journal_and_a_full_queue_do_not_wedge_consumers() {
    deadline(LIMIT, || {
        let q = Queue::<u32>::bounded(10).unwrap();
        q.put(u32::MAX).unwrap();
        let taken = Event::new().unwrap();
        let child = Process::spawn(take_one_and_hang, (q.clone(), taken.clone())).unwrap();
        assert!(taken.wait_timeout(Duration::from_secs(20)));
        assert!(send_signal(child.pid(), libc::SIGKILL));
        let _ = child.join();
        let mut next = 0u32;
        while !q.is_full() {
            q.put(next).unwrap();
            next += 1;
        }
        // The journal holds some thousands of records: many more than that
        // pass through it, the queue kept full all along.
        let mut again = 0;
        let mut expect = 0u32;
        for _ in 0..20_000 {
            let d = q
                .get_delivery_timeout(Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("after {expect} messages: {e}"));
            if *d == u32::MAX {
                // Taken over: it left no room in the queue.
                again += 1;
                d.ack().unwrap();
                continue;
            }
            assert_eq!(*d, expect);
            expect += 1;
            d.ack().unwrap();
            q.put(next).unwrap();
            next += 1;
        }
        assert_eq!(again, 1, "the dead consumer's delivery came {again} times");
    });
}

/// An acknowledgement clears the copy of an out-of-line delivery that the
/// journal's mailbox kept; a consumer killed between the two leaves it
/// there. Enough such copies fill the mailbox, and once no delivery was
/// left to acknowledge, nobody cleared them: every consumer found the
/// journal full for good (the out-of-line kill soak wedged so, about one
/// run in 30). A consumer that finds the journal full clears them.
#[test]
fn stale_copies_in_the_journal_mailbox_do_not_wedge_consumers() {
    deadline(LIMIT, || {
        // 3000 bytes travel out of line on a 4 KiB ring.
        let q = Queue::builder().ring_bytes(4096).build::<Job>().unwrap();
        let job = |n: u32| Job {
            n,
            payload: vec![n as u8; 3000],
        };
        q.put(job(0)).unwrap();
        assert_eq!(q.get_delivery().unwrap().ack().unwrap(), job(0));
        // Copies of that delivery's message (the journal's first record,
        // at position 0), as consumers killed before clearing leave them.
        let stale = multiproc::__bench::fill_journal_mailbox(&q, 0, 3000).unwrap();
        assert!(stale > 0);
        let report = multiproc::__bench::journal_report(&q);
        assert!(
            report.contains(": 0 taken") && report.ends_with("first message in its mailbox: 0"),
            "{report}"
        );
        for n in 1..=2 * stale as u32 + 10 {
            q.put(job(n)).unwrap();
            let d = q
                .get_delivery_timeout(Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("message {n} ({stale} stale copies): {e}"));
            assert_eq!(*d, job(n));
            d.ack().unwrap();
        }
        assert!(q.is_empty());
        // The last acknowledgement cleared the mailbox.
        let report = multiproc::__bench::journal_report(&q);
        assert!(
            report.ends_with("first message in its mailbox: none"),
            "{report}"
        );
    });
}

/// A consumer that holds one out-of-line delivery while it takes and
/// acknowledges others: the held message's copy is at the front of the
/// journal's mailbox, and clearing the acknowledged copies behind it
/// stopped there, so after some 48 of 3000 bytes the mailbox was full and
/// the next acknowledged get waited (here: for itself) until the held one
/// was acknowledged. Clearing moves a held copy to the back instead.
#[test]
fn holding_one_out_of_line_delivery_does_not_stop_the_others() {
    deadline(LIMIT, || {
        // 3000 bytes travel out of line on a 4 KiB ring, in the mailbox's
        // datagrams; 20,000 in a memfd each (small datagrams, many more).
        for len in [3000, 20_000] {
            hold_and_cycle(len);
        }
    });
}

fn hold_and_cycle(len: usize) {
    let q = Queue::builder().ring_bytes(4096).build::<Job>().unwrap();
    let job = |n: u32| Job {
        n,
        payload: vec![n as u8; len],
    };
    let mut held = Vec::new();
    let mut n = 0;
    // One held, then two, each time for several times what the mailbox
    // holds.
    for held_now in 1..=2 {
        q.put(job(n)).unwrap();
        let d = q.get_delivery().unwrap();
        assert_eq!(*d, job(n));
        held.push(d);
        n += 1;
        for _ in 0..300 {
            q.put(job(n)).unwrap();
            let d = q
                .get_delivery_timeout(Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("{len} bytes: message {n}, {held_now} held: {e}"));
            assert_eq!(*d, job(n));
            d.ack().unwrap();
            n += 1;
        }
    }
    assert_eq!(held.remove(0).ack().unwrap(), job(0));
    assert_eq!(held.remove(0).ack().unwrap(), job(301));
    assert!(q.is_empty());
    // The last acknowledgement cleared the mailbox.
    let report = multiproc::__bench::journal_report(&q);
    assert!(
        report.ends_with("first message in its mailbox: none"),
        "{len} bytes: {report}"
    );
}

/// Holds one delivery until told to acknowledge it; returns its number.
fn hold_until((q, taken, release): (Queue<Job>, Event, Event)) -> u32 {
    let d = q.get_delivery().unwrap();
    taken.set();
    assert!(release.wait_timeout(Duration::from_secs(60)));
    d.ack().unwrap().n
}

/// The same with the holder in another process: every consumer waited
/// for it to acknowledge.
#[test]
fn another_process_holding_an_out_of_line_delivery_does_not_stop_the_others() {
    deadline(LIMIT, || {
        let q = Queue::builder().ring_bytes(4096).build::<Job>().unwrap();
        let job = |n: u32| Job {
            n,
            payload: vec![n as u8; 3000],
        };
        q.put(job(0)).unwrap();
        let (taken, release) = (Event::new().unwrap(), Event::new().unwrap());
        let child =
            Process::spawn(hold_until, (q.clone(), taken.clone(), release.clone())).unwrap();
        assert!(taken.wait_timeout(Duration::from_secs(20)));
        let cycled = (1..=300).try_for_each(|n| {
            q.put(job(n)).unwrap();
            let d = q
                .get_delivery_timeout(Duration::from_secs(3))
                .map_err(|e| format!("message {n}: {e}"))?;
            assert_eq!(*d, job(n));
            d.ack().unwrap();
            Ok::<(), String>(())
        });
        if let Err(why) = cycled {
            assert!(send_signal(child.pid(), libc::SIGKILL));
            let _ = child.join();
            panic!("{why}");
        }
        release.set();
        assert_eq!(child.join().unwrap(), 0);
        assert!(q.is_empty());
        let report = multiproc::__bench::journal_report(&q);
        assert!(
            report.ends_with("first message in its mailbox: none"),
            "{report}"
        );
    });
}
