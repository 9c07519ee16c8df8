//! Ports of CPython's `_TestSharedMemory` (`Lib/test/_test_multiprocessing.py`)
//! to the Rust API, for the cases `shared_memory*.rs` do not port already:
//! what Python asserts, adapted to Rust types (`FileExistsError` is
//! `NameError::Exists`, `FileNotFoundError` is `NameError::NotFound`,
//! `ValueError` for a bad name is `NameError::Invalid`, `IndexError` is
//! `ListError::IndexOutOfRange`, "exceeds available storage" is
//! `ListError::TooLarge`, items are `Item`s, `sl[-1]` is `sl.get(len - 1)`).
//! A name is the creator's: it stops resolving when the creator unlinks it
//! or drops its handle (see the README).

mod common;

use common::{LIMIT, deadline};
use multiproc::{Item, ListError, NameError, Process, ShareableList, SharedMemory, StartMethod};

/// `_new_shm_name`: a name unique to this test process.
fn new_name(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

/// `test_shared_memory_name_with_embedded_null`.
#[test]
fn name_with_embedded_null() {
    let name = new_name("test01_null");
    let _sms = SharedMemory::create_named(&name, 512).unwrap();
    assert!(matches!(
        SharedMemory::attach_named(&format!("{name}\0a")),
        Err(NameError::Invalid { .. })
    ));
    assert!(matches!(
        SharedMemory::create_named(&format!("{name}\0a"), 512),
        Err(NameError::Invalid { .. })
    ));
}

/// `test_shared_memory_basics`, the parts with an equivalent.
#[test]
fn basics() {
    let name = new_name("test01_tsmb");
    let mut sms = SharedMemory::create_named(&name, 512).unwrap();
    assert_eq!(sms.name(), Some(name.as_str()));
    assert!(sms.size() >= 512);

    sms.write(0, &[42]).unwrap();
    let mut b = [0u8];
    sms.read(0, &mut b).unwrap();
    assert_eq!(b, [42]);

    let also = SharedMemory::attach_named(&name).unwrap();
    also.read(0, &mut b).unwrap();
    assert_eq!(b, [42]);
    assert_eq!(also.size(), sms.size());
    drop(also);

    // A size of 0 (Python: negative or 0) is a ValueError.
    assert!(matches!(
        SharedMemory::create_named(&new_name("test01_zero"), 0),
        Err(NameError::ZeroSize)
    ));

    // A name in use cannot be created again.
    assert!(matches!(
        SharedMemory::create_named(&name, 512),
        Err(NameError::Exists(n)) if n == name
    ));

    // A name nobody holds cannot be attached.
    assert!(matches!(
        SharedMemory::attach_named("test01_notthere"),
        Err(NameError::NotFound(_))
    ));

    // After `unlink`, the name is gone (Python's second `shm_unlink`
    // raises FileNotFoundError; here unlinking twice does nothing).
    let mut uno = SharedMemory::create_named(&new_name("test01_dblunlink"), 5000).unwrap();
    assert!(uno.size() >= 5000);
    uno.unlink();
    assert!(matches!(
        SharedMemory::attach_named(&new_name("test01_dblunlink")),
        Err(NameError::NotFound(_))
    ));
    uno.unlink();
    sms.unlink();
}

/// `test_shared_memory_recreate`'s point: after `unlink` the name may be
/// created again.
#[test]
fn recreate_after_unlink() {
    let name = new_name("test01_recreate");
    let mut first = SharedMemory::create_named(&name, 1).unwrap();
    first.unlink();
    let second = SharedMemory::create_named(&name, 1).unwrap();
    assert_eq!(second.name(), Some(name.as_str()));
}

/// `test_shared_memory_pickle_unpickle_dead_object`: once the creator has
/// unlinked it, the name does not attach.
#[test]
fn dead_object_by_name() {
    let name = new_name("test01_dead");
    let mut sms = SharedMemory::create_named(&name, 512).unwrap();
    sms.write(0, b"pickle").unwrap();
    sms.unlink();
    drop(sms);
    assert!(matches!(
        SharedMemory::attach_named(&name),
        Err(NameError::NotFound(_))
    ));
}

fn sample() -> Vec<Item> {
    vec![
        Item::Str("howdy".into()),
        Item::Bytes(b"HoWdY".to_vec()),
        Item::Float(-273.154),
        Item::Int(100),
        Item::None,
        Item::Bool(true),
        Item::Int(42),
    ]
}

/// `test_shared_memory_ShareableList_basics`.
#[test]
fn shareable_list_basics() {
    let sl = ShareableList::new(&sample()).unwrap();

    // Index out of range, get and set.
    assert!(matches!(
        sl.get(7),
        Err(ListError::IndexOutOfRange { index: 7, len: 7 })
    ));
    assert!(matches!(
        sl.set(7, Item::Int(2)),
        Err(ListError::IndexOutOfRange { index: 7, len: 7 })
    ));

    // Same value, same slot.
    let cap = sl.capacity(0).unwrap();
    sl.set(0, Item::Str("howdy".into())).unwrap();
    assert_eq!(sl.capacity(0).unwrap(), cap);
    // Python's format '8s8sdqxxxxxx?xxxxxxxx?q': every slot 8 bytes.
    for i in 0..7 {
        assert_eq!(sl.capacity(i).unwrap(), 8, "slot {i}");
    }
    assert_eq!(sl.len(), 7);

    assert!(matches!(
        sl.index(&Item::Str("100".into())),
        Err(ListError::NotInList)
    ));
    assert_eq!(sl.index(&Item::Int(100)).unwrap(), 3);

    assert_eq!(sl.get(0).unwrap(), Item::Str("howdy".into()));
    assert_eq!(sl.get(sl.len() - 2).unwrap(), Item::Bool(true));
    assert_eq!(sl.to_vec().unwrap(), sample());

    sl.set(3, Item::Int(42)).unwrap();
    assert_eq!(sl.get(3).unwrap(), Item::Int(42));
    // A slot may change type.
    sl.set(4, Item::Str("some".into())).unwrap();
    assert_eq!(sl.get(4).unwrap(), Item::Str("some".into()));
    assert!(matches!(
        sl.set(4, Item::Str("far too many".into())),
        Err(ListError::TooLarge { index: 4, .. })
    ));
    assert_eq!(sl.get(4).unwrap(), Item::Str("some".into()));
    // Exactly 8 bytes of UTF-8.
    sl.set(0, Item::Str("encodés".into())).unwrap();
    assert_eq!(sl.get(0).unwrap(), Item::Str("encodés".into()));
    assert_eq!(sl.get(1).unwrap(), Item::Bytes(b"HoWdY".to_vec()));
    // 9 bytes of UTF-8.
    assert!(matches!(
        sl.set(0, Item::Str("encodées".into())),
        Err(ListError::TooLarge {
            index: 0,
            needed: 9,
            capacity: 8
        })
    ));
    assert_eq!(sl.get(1).unwrap(), Item::Bytes(b"HoWdY".to_vec()));
    assert!(matches!(
        sl.set(1, Item::Bytes(b"123456789".to_vec())),
        Err(ListError::TooLarge { index: 1, .. })
    ));
    assert_eq!(sl.get(1).unwrap(), Item::Bytes(b"HoWdY".to_vec()));

    assert_eq!(sl.count(&Item::Int(42)).unwrap(), 2);
    assert_eq!(sl.count(&Item::Bytes(b"HoWdY".to_vec())).unwrap(), 1);
    assert_eq!(sl.count(&Item::Bytes(b"adios".to_vec())).unwrap(), 0);

    // A duplicate, under a name.
    let dup_name = new_name("test03_duplicate");
    let sl_copy = ShareableList::new_named(&dup_name, &sl.to_vec().unwrap()).unwrap();
    assert_eq!(sl_copy.name(), Some(dup_name.as_str()));
    assert_eq!(sl.to_vec().unwrap(), sl_copy.to_vec().unwrap());
    for i in 0..7 {
        assert_eq!(sl.capacity(i).unwrap(), sl_copy.capacity(i).unwrap());
    }
    sl_copy.set(6, Item::Int(77)).unwrap();
    assert_eq!(sl_copy.get(6).unwrap(), Item::Int(77));
    assert_ne!(sl.get(6).unwrap(), Item::Int(77));

    // A second handle on the same list, by name.
    let tethered = ShareableList::attach_named(&dup_name).unwrap();
    tethered.set(6, Item::Int(880)).unwrap();
    assert_eq!(sl_copy.get(6).unwrap(), Item::Int(880));
    drop(tethered);

    // An empty list.
    let empty = ShareableList::new(&[]).unwrap();
    assert_eq!(empty.len(), 0);
    assert_eq!(empty.count(&Item::Str("any".into())).unwrap(), 0);
    assert!(matches!(
        empty.index(&Item::None),
        Err(ListError::NotInList)
    ));
}

/// `_TestSharedMemory._attach_existing_shmem_then_write`, for a list.
fn change_list(sl: ShareableList) {
    sl.set(4, Item::Str("changed".into())).unwrap();
}

/// `test_shared_memory_ShareableList_pickling`: a list sent to another
/// process is the same list, under every start method.
#[test]
fn shareable_list_sent_to_a_child() {
    deadline(LIMIT, || {
        for m in StartMethod::ALL {
            let items: Vec<Item> = (0..10).map(Item::Int).collect();
            let sl = ShareableList::new(&items).unwrap();
            Process::builder()
                .start_method(m)
                .spawn(change_list, sl.clone())
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(sl.get(4).unwrap(), Item::Str("changed".into()), "{m}");
            assert_eq!(sl.get(9).unwrap(), Item::Int(9));
        }
    });
}

/// `test_shared_memory_ShareableList_pickling_dead_object`.
#[test]
fn shareable_list_dead_object_by_name() {
    let name = new_name("test03_dead");
    let items: Vec<Item> = (0..10).map(Item::Int).collect();
    let mut sl = ShareableList::new_named(&name, &items).unwrap();
    sl.unlink();
    drop(sl);
    assert!(matches!(
        ShareableList::attach_named(&name),
        Err(NameError::NotFound(_))
    ));
}
