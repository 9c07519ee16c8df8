//! `ShareableList`: Python's semantics (fixed slots sized by their initial
//! values, index and count), whole-slot reads and writes across processes
//! under every start method, names, and a peer writing garbage into the
//! memory giving typed errors only.

mod common;

use common::{LIMIT, assert_gone, deadline};
use multiproc::{
    Item, JoinError, ListError, NameError, Process, ShareableList, SharedMemory, StartMethod,
};

fn sample() -> Vec<Item> {
    vec![
        Item::Int(-7),
        Item::Float(2.5),
        Item::Bool(true),
        Item::None,
        Item::Str("héllo, world".into()),
        Item::Bytes(vec![0, 1, 2, 255]),
    ]
}

#[test]
fn python_semantics_in_one_process() {
    let list = ShareableList::new(&sample()).unwrap();
    assert_eq!(list.len(), 6);
    assert_eq!(list.to_vec().unwrap(), sample());
    // Slots are sized by their initial values, rounded up to 8 bytes.
    let caps: Vec<usize> = (0..6).map(|i| list.capacity(i).unwrap()).collect();
    assert_eq!(caps, [8, 8, 8, 8, 16, 8]);
    // Any item that fits may replace any other.
    list.set(4, Item::Int(99)).unwrap();
    list.set(0, Item::Str("8 bytes!".into())).unwrap();
    list.set(5, Item::Str(String::new())).unwrap();
    assert_eq!(list.get(4).unwrap(), Item::Int(99));
    assert_eq!(list.get(0).unwrap(), Item::Str("8 bytes!".into()));
    assert_eq!(list.get(5).unwrap(), Item::Str(String::new()));
    list.set(4, Item::Bytes(vec![9; 16])).unwrap();
    assert_eq!(list.get(4).unwrap(), Item::Bytes(vec![9; 16]));
    // Too large for its slot, as in Python; the slot is unchanged.
    assert!(matches!(
        list.set(0, Item::Str("nine byte".into())),
        Err(ListError::TooLarge {
            index: 0,
            needed: 9,
            capacity: 8
        })
    ));
    assert!(matches!(
        list.set(4, Item::Bytes(vec![0; 17])),
        Err(ListError::TooLarge { .. })
    ));
    assert_eq!(list.get(0).unwrap(), Item::Str("8 bytes!".into()));
    // Out of range.
    assert!(matches!(
        list.get(6),
        Err(ListError::IndexOutOfRange { index: 6, len: 6 })
    ));
    assert!(matches!(
        list.set(usize::MAX, Item::None),
        Err(ListError::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        list.capacity(6),
        Err(ListError::IndexOutOfRange { .. })
    ));
    // index and count.
    list.set(1, Item::None).unwrap();
    assert_eq!(list.count(&Item::None).unwrap(), 2);
    assert_eq!(list.index(&Item::None).unwrap(), 1);
    assert_eq!(list.index(&Item::Bool(true)).unwrap(), 2);
    assert!(matches!(
        list.index(&Item::Int(12345)),
        Err(ListError::NotInList)
    ));
    assert_eq!(list.count(&Item::Float(2.5)).unwrap(), 0);
    // An empty list.
    let empty = ShareableList::new(&[]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.to_vec().unwrap(), vec![]);
    assert!(matches!(
        empty.get(0),
        Err(ListError::IndexOutOfRange { .. })
    ));
}

/// Checks what the parent wrote, then writes its own.
fn check_and_write(list: ShareableList) -> Vec<Item> {
    let seen = list.to_vec().unwrap();
    list.set(0, Item::Int(1000)).unwrap();
    list.set(4, Item::Str("from child".into())).unwrap();
    list.set(2, Item::Bool(false)).unwrap();
    seen
}

/// Writes one of two values into slot 0, alternately, until slot 1 says
/// stop; returns how many it wrote.
fn flip(list: ShareableList) -> u64 {
    let mut n = 0;
    while list.get(1).unwrap() != Item::Bool(true) {
        let item = if n % 2 == 0 {
            Item::Str("aaaaaaaaaaaaaaaaaaaaaaa".into())
        } else {
            Item::Bytes(vec![b'b'; 24])
        };
        list.set(0, item).unwrap();
        n += 1;
    }
    n
}

#[test]
fn reads_and_writes_cross_processes_under_every_start_method_and_never_tear() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let list = ShareableList::new(&sample()).unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(check_and_write, list.clone())
                .unwrap();
            let pid = child.pid();
            assert_eq!(child.join().unwrap(), sample(), "{m}");
            assert_gone(pid);
            assert_eq!(list.get(0).unwrap(), Item::Int(1000), "{m}");
            assert_eq!(list.get(4).unwrap(), Item::Str("from child".into()), "{m}");
            assert_eq!(list.get(2).unwrap(), Item::Bool(false), "{m}");

            // A writer in another process, a reader here: every read is one
            // whole write.
            let list =
                ShareableList::new(&[Item::Bytes(vec![b'b'; 24]), Item::Bool(false)]).unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(flip, list.clone())
                .unwrap();
            let (a, b) = (
                Item::Str("aaaaaaaaaaaaaaaaaaaaaaa".into()),
                Item::Bytes(vec![b'b'; 24]),
            );
            // Once the writer has started, read as it writes.
            while list.get(0).unwrap() != a {
                assert!(child.exit_status().is_none(), "{m}");
            }
            for _ in 0..20_000 {
                let got = list.get(0).unwrap();
                assert!(got == a || got == b, "{m}: torn read {got:?}");
            }
            list.set(1, Item::Bool(true)).unwrap();
            let pid = child.pid();
            let writes = child.join().unwrap();
            assert_gone(pid);
            let last = if writes % 2 == 1 { a } else { b };
            assert_eq!(list.get(0).unwrap(), last, "{m}");
        }
    });
}

fn attach_list_by_name(name: String) -> Vec<Item> {
    let list = ShareableList::attach_named(&name).unwrap();
    let seen = list.to_vec().unwrap();
    list.set(3, Item::Float(-0.5)).unwrap();
    seen
}

#[test]
fn a_named_list_is_attached_by_name_alone() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let name = format!("t{}-list-{m}", std::process::id());
            let mut list = ShareableList::new_named(&name, &sample()).unwrap();
            assert_eq!(list.name(), Some(name.as_str()));
            assert!(matches!(
                ShareableList::new_named(&name, &[]),
                Err(NameError::Exists(_))
            ));
            assert!(matches!(
                SharedMemory::create_named(&name, 8),
                Err(NameError::Exists(_))
            ));
            let child = Process::builder()
                .start_method(m)
                .spawn(attach_list_by_name, name.clone())
                .unwrap();
            assert_eq!(child.join().unwrap(), sample(), "{m}");
            assert_eq!(list.get(3).unwrap(), Item::Float(-0.5), "{m}");
            // A list's name attaches its raw block too, not the other way.
            let raw = SharedMemory::attach_named(&name).unwrap();
            assert_eq!(raw.size(), list.shm().unwrap().size());
            let block = format!("t{}-block-{m}", std::process::id());
            let _shm = SharedMemory::create_named(&block, 64).unwrap();
            assert!(matches!(
                ShareableList::attach_named(&block),
                Err(NameError::WrongKind { .. })
            ));
            list.unlink();
            assert!(matches!(
                ShareableList::attach_named(&name),
                Err(NameError::NotFound(_))
            ));
            assert!(matches!(
                ShareableList::attach_named(""),
                Err(NameError::Invalid { .. })
            ));
        }
    });
}

/// Where the list's payload starts in its raw block: the magic word.
fn payload(raw: &SharedMemory) -> usize {
    let mut bytes = vec![0u8; raw.size()];
    raw.read(0, &mut bytes).unwrap();
    bytes
        .windows(8)
        .position(|w| w == b"MPSLIST1")
        .expect("the list's magic")
}

/// Writes `word` at word `index` of the payload starting at `at`.
fn poke(raw: &SharedMemory, at: usize, index: usize, word: u64) {
    raw.write(at + 8 * index, &word.to_le_bytes()).unwrap();
}

fn corrupt(list: &ShareableList, index: usize) -> &'static str {
    match list.get(index) {
        Err(ListError::Corrupt { index: i, reason }) if i == index => reason,
        other => panic!("slot {index}: expected Corrupt, got {other:?}"),
    }
}

/// A hostile peer: writes pseudo-random words over the whole payload,
/// `rounds` times.
fn scribble(args: (SharedMemory, usize, u64, u32)) {
    let (raw, at, mut x, rounds) = args;
    let words = (raw.size() - at) / 8;
    for _ in 0..rounds {
        for i in 0..words {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly small tags and lengths, to reach every branch.
            let w = match x % 4 {
                0 => x,
                1 => (x >> 8) % 8,
                2 => ((x >> 8) % 8) | (((x >> 16) % 40) << 32),
                _ => x & 0xff,
            };
            let _ = raw.write(at + 8 * i, &w.to_le_bytes());
        }
    }
}

#[test]
fn a_peer_writing_garbage_gets_typed_errors_only() {
    deadline(LIMIT, || {
        let list = ShareableList::new(&sample()).unwrap();
        let raw = list.shm().unwrap();
        let at = payload(&raw);
        // Slot headers: after the magic, n and six capacities, slot i's
        // header is at word 8 + (sum of earlier slots' 1 + cap/8).
        let heads = [8, 10, 12, 14, 16, 19];
        poke(&raw, at, heads[0], 99);
        assert_eq!(corrupt(&list, 0), "an unknown type tag");
        poke(&raw, at, heads[0], 0);
        corrupt(&list, 0);
        poke(&raw, at, heads[2], 4);
        poke(&raw, at, heads[2] + 1, 7);
        assert_eq!(corrupt(&list, 2), "a boolean neither 0 nor 1");
        poke(&raw, at, heads[1], 2 | (3 << 32));
        assert_eq!(corrupt(&list, 1), "a length on a scalar");
        poke(&raw, at, heads[4], 5 | (17 << 32));
        assert_eq!(corrupt(&list, 4), "a length beyond the slot");
        poke(&raw, at, heads[4], 6 | (u64::from(u32::MAX) << 32));
        assert_eq!(corrupt(&list, 4), "a length beyond the slot");
        poke(&raw, at, heads[5], 5 | (2 << 32));
        poke(&raw, at, heads[5] + 1, 0xffff);
        assert_eq!(corrupt(&list, 5), "a string that is not UTF-8");
        assert!(matches!(
            list.to_vec(),
            Err(ListError::Corrupt { index: 0, .. })
        ));
        assert!(matches!(
            list.count(&Item::None),
            Err(ListError::Corrupt { .. })
        ));
        // The layout words are this handle's own copy: rewriting them
        // changes nothing here, and writes repair slots.
        poke(&raw, at, 1, u64::MAX);
        poke(&raw, at, 2, 3);
        for (i, item) in sample().into_iter().enumerate() {
            list.set(i, item).unwrap();
        }
        assert_eq!(list.to_vec().unwrap(), sample());
        // A new handle refuses the bad layout: a decoding error in a child.
        let child = Process::spawn(|l: ShareableList| l.len(), list.clone()).unwrap();
        assert!(
            matches!(child.join(), Err(JoinError::ArgumentDecode(_))),
            "a list with a corrupt layout was attached"
        );
        poke(&raw, at, 1, 6);
        poke(&raw, at, 2, 8);
        poke(&raw, at, 0, 0);
        let child = Process::spawn(|l: ShareableList| l.len(), list.clone()).unwrap();
        assert!(matches!(child.join(), Err(JoinError::ArgumentDecode(_))));
        poke(&raw, at, 0, u64::from_le_bytes(*b"MPSLIST1"));
        let child = Process::spawn(|l: ShareableList| l.len(), list.clone()).unwrap();
        assert_eq!(child.join().unwrap(), 6);

        // Random garbage from another process while this one reads.
        for m in StartMethod::ALL {
            let child = Process::builder()
                .start_method(m)
                .spawn(
                    scribble,
                    (list.shm().unwrap(), at + 8 * 8, 0x9e37_79b9_7f4a_7c15, 5000),
                )
                .unwrap();
            let check = |list: &ShareableList| {
                for i in 0..list.len() {
                    match list.get(i) {
                        Ok(_) | Err(ListError::Corrupt { .. }) => {}
                        Err(e) => panic!("{m}: slot {i}: {e:?}"),
                    }
                }
                match list.to_vec() {
                    Ok(_) | Err(ListError::Corrupt { .. }) => {}
                    Err(e) => panic!("{m}: {e:?}"),
                }
            };
            while child.exit_status().is_none() {
                check(&list);
            }
            let pid = child.pid();
            child.join().unwrap();
            assert_gone(pid);
            // And what the peer left.
            check(&list);
            let mut garbage = 0;
            for i in 0..list.len() {
                garbage += usize::from(list.get(i).is_err());
            }
            assert!(garbage > 0, "{m}: the peer's garbage was all valid items");
            for (i, item) in sample().into_iter().enumerate() {
                list.set(i, item).unwrap();
            }
            assert_eq!(list.to_vec().unwrap(), sample(), "{m}");
        }
    });
}

#[test]
fn a_writer_killed_mid_write_leaves_a_whole_item_or_a_corrupt_slot() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let list =
                ShareableList::new(&[Item::Bytes(vec![b'b'; 24]), Item::Bool(false)]).unwrap();
            let child = Process::builder()
                .start_method(m)
                .spawn(flip, list.clone())
                .unwrap();
            let a = Item::Str("aaaaaaaaaaaaaaaaaaaaaaa".into());
            while list.get(0).unwrap() != a {
                assert!(child.exit_status().is_none(), "{m}");
            }
            child.kill().unwrap();
            let pid = child.pid();
            assert!(matches!(
                child.join(),
                Err(JoinError::Signaled {
                    signal: multiproc::Signal::KILL,
                    ..
                })
            ));
            assert_gone(pid);
            // The lock is recovered from the dead writer; the slot is one
            // whole item, or (killed mid-write) reads as corrupt.
            match list.get(0) {
                Ok(got) => assert!(
                    got == a || got == Item::Bytes(vec![b'b'; 24]),
                    "{m}: {got:?}"
                ),
                Err(ListError::Corrupt { reason, .. }) => {
                    assert_eq!(reason, "no item (zeroed)", "{m}")
                }
                Err(e) => panic!("{m}: {e:?}"),
            }
            list.set(0, Item::Int(5)).unwrap();
            assert_eq!(list.get(0).unwrap(), Item::Int(5), "{m}");
        }
    });
}

#[test]
fn handles_and_errors_are_send_and_sync() {
    fn both<T: Send + Sync>() {}
    both::<ShareableList>();
    both::<SharedMemory>();
    both::<ListError>();
    both::<NameError>();
    // A name error converts to the io::Error kind a caller expects.
    let e: std::io::Error = NameError::Exists("x".into()).into();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    let e: std::io::Error = NameError::Invalid {
        name: String::new(),
        reason: "it is empty",
    }
    .into();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}
