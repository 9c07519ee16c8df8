//! `Value`, `RawValue`, `Array` and `RawArray` handles attach only to an
//! object made for them: a `Value` cannot be received as a `RawValue` (same
//! bytes, but written without the lock), nor a `Value<u32>` as a
//! `Value<u64>`. And a `T` of any alignment works.

mod common;

use std::marker::PhantomData;

use bytemuck::{Pod, Zeroable};
use common::{LIMIT, deadline};
use multiproc::{Array, GetError, Lock, Process, Queue, RawArray, RawValue, StartMethod, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Sent as an `S`, received as an `R`: what a confused (or malicious) peer
/// does when both ends of a queue disagree on its type.
struct Mislabel<S, R>(Option<S>, PhantomData<R>);

impl<S: Serialize, R> Serialize for Mislabel<S, R> {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        self.0
            .as_ref()
            .expect("only sent ones are serialized")
            .serialize(s)
    }
}

impl<'de, S, R: Deserialize<'de>> Deserialize<'de> for Mislabel<S, R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        R::deserialize(d).map(|_| Mislabel(None, PhantomData))
    }
}

/// Sends `sent` through a queue that decodes it as an `R`: whether it was
/// accepted. Refused is a decoding error (the queue stays usable).
fn accepted_as<S, R>(sent: S) -> bool
where
    S: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    let q = Queue::<Mislabel<S, R>>::new().unwrap();
    q.put(Mislabel(Some(sent), PhantomData)).unwrap();
    match q.get() {
        Ok(_) => true,
        Err(GetError::Decode(e)) => {
            // The reason reaches the user, through postcard.
            assert!(
                e.to_string().contains("shared object"),
                "an unexplained refusal: {e}"
            );
            false
        }
        Err(e) => panic!("not a decoding error: {e}"),
    }
}

#[test]
fn a_handle_is_refused_as_another_kind_or_type() {
    deadline(LIMIT, || {
        let v64 = || Value::new(1u64).unwrap();
        let a64 = || Array::<u64>::new(4).unwrap();
        let refused = [
            ("Value as RawValue", accepted_as::<_, RawValue<u64>>(v64())),
            (
                "RawValue as Value",
                accepted_as::<_, Value<u64>>(RawValue::new(1u64).unwrap()),
            ),
            (
                "Value<u32> as Value<u64>",
                accepted_as::<_, Value<u64>>(Value::new(1u32).unwrap()),
            ),
            (
                "Value<u64> as Value<u32>",
                accepted_as::<_, Value<u32>>(v64()),
            ),
            (
                "Value<u64> as Value<[u8; 8]>",
                accepted_as::<_, Value<[u8; 8]>>(v64()),
            ),
            ("Value as Array", accepted_as::<_, Array<u64>>(v64())),
            (
                "Array as Value",
                accepted_as::<_, Value<u64>>(Array::<u64>::new(1).unwrap()),
            ),
            ("Array as RawArray", accepted_as::<_, RawArray<u64>>(a64())),
            (
                "RawArray as Array",
                accepted_as::<_, Array<u64>>(RawArray::<u64>::new(4).unwrap()),
            ),
            (
                "Array<u64> as Array<u32>",
                accepted_as::<_, Array<u32>>(a64()),
            ),
            ("Value as Lock", accepted_as::<_, Lock>(v64())),
            (
                "Lock as Value",
                accepted_as::<_, Value<u64>>(Lock::new().unwrap()),
            ),
        ];
        for (what, accepted) in refused {
            assert!(!accepted, "{what} was accepted");
        }
        // The controls: the right type is accepted.
        assert!(accepted_as::<_, Value<u64>>(v64()));
        assert!(accepted_as::<_, RawValue<u64>>(
            RawValue::new(1u64).unwrap()
        ));
        assert!(accepted_as::<_, Array<u64>>(a64()));
        assert!(accepted_as::<_, RawArray<u16>>(
            RawArray::<u16>::new(3).unwrap()
        ));
        assert!(accepted_as::<_, Lock>(Lock::new().unwrap()));
    });
}

/// A queue whose receiving end reads a `Value<u64>` as a `RawValue<u64>`.
type Confused = Queue<Mislabel<Value<u64>, RawValue<u64>>>;

/// A peer that receives a `Value<u64>` as a `RawValue<u64>`, then as what
/// it is on another queue: whether the first was accepted, and the value.
fn peer_receives((confused, right): (Confused, Queue<Value<u64>>)) -> (String, u64) {
    let first = match confused.get() {
        Ok(_) => "accepted".to_string(),
        Err(GetError::Decode(_)) => "refused".to_string(),
        Err(e) => format!("another error: {e}"),
    };
    (first, right.get().map(|v| v.get()).unwrap_or(0))
}

#[test]
fn a_peer_cannot_receive_a_value_as_a_raw_value() {
    deadline(LIMIT, || {
        let (confused, right) = (Queue::new().unwrap(), Queue::new().unwrap());
        let child = Process::spawn(peer_receives, (confused.clone(), right.clone())).unwrap();
        let v = Value::new(5u64).unwrap();
        confused
            .put(Mislabel(Some(v.clone()), PhantomData))
            .unwrap();
        right.put(v.clone()).unwrap();
        assert_eq!(child.join().unwrap(), ("refused".to_string(), 5));
        assert_eq!(v.get(), 5);
    });
}

#[derive(Clone, Copy, Debug, PartialEq, Zeroable, Pod)]
#[repr(C, align(64))]
struct Line([u8; 64]);

#[derive(Clone, Copy, Debug, PartialEq, Zeroable, Pod)]
#[repr(C, align(4096))]
struct Page([u8; 4096]);

#[derive(Clone, Copy, Debug, PartialEq, Zeroable, Pod)]
#[repr(C, align(16384))]
struct Huge([[u8; 4096]; 4]);

fn filled<T: Pod>(byte: u8) -> T {
    let mut t = T::zeroed();
    bytemuck::bytes_of_mut(&mut t).fill(byte);
    t
}

fn check_over_aligned<T: Pod + PartialEq + std::fmt::Debug>() {
    let v = Value::new(filled::<T>(1)).unwrap();
    assert_eq!(v.get(), filled(1));
    *v.get_lock().unwrap() = filled(2);
    assert_eq!(v.get(), filled(2));
    v.set(filled(3));
    assert_eq!(v.get(), filled(3));

    let values = [filled::<T>(4), filled(5), filled(6)];
    let a = Array::from_slice(&values).unwrap();
    assert_eq!(a.to_vec(), values);
    {
        let mut g = a.get_lock().unwrap();
        assert_eq!(g.get(2), Some(filled(6)));
        assert!(g.set(0, filled(9)));
        g[1] = filled(10);
    }
    assert_eq!(a.to_vec(), [filled(9), filled(10), filled(6)]);

    let r = RawValue::new(filled::<T>(7)).unwrap();
    assert_eq!(r.get(), filled(7));
    let ra = RawArray::<T>::new(2).unwrap();
    assert!(ra.set(1, filled(8)));
    assert_eq!(ra.get(1), Some(filled(8)));
    assert_eq!(ra.get(0), Some(T::zeroed()));
}

#[test]
fn zero_sized_and_empty_payloads_work() {
    let unit = Value::new(()).unwrap();
    unit.set(());
    assert_eq!(unit.get(), ());
    *unit.get_lock().unwrap() = ();
    let empty = Array::<u64>::from_slice(&[]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.to_vec(), Vec::<u64>::new());
    assert_eq!(empty.get_lock().unwrap().get(0), None);
    let units = RawArray::<()>::new(1 << 40).unwrap();
    assert_eq!(units.len(), 1 << 40);
    assert_eq!(units.get((1 << 40) - 1), Some(()));
    assert_eq!(units.get(1 << 40), None);
    assert!(Array::<u64>::new(usize::MAX / 4).is_err());
}

#[test]
fn over_aligned_types_work() {
    deadline(LIMIT, || {
        check_over_aligned::<Line>();
        check_over_aligned::<Page>();
        check_over_aligned::<Huge>();
    });
}

fn bump_huge((v, a): (Value<Huge>, Array<Page>)) {
    v.get_lock().unwrap().0[3][4095] += 1;
    let mut g = a.get_lock().unwrap();
    let mut page = g.get(1).unwrap();
    page.0[0] += 1;
    assert!(g.set(1, page));
}

#[test]
fn over_aligned_values_are_shared_with_every_process() {
    deadline(LIMIT, || {
        let v = Value::new(Huge::zeroed()).unwrap();
        let a = Array::<Page>::new(2).unwrap();
        for m in StartMethod::ALL {
            Process::builder()
                .start_method(m)
                .spawn(bump_huge, (v.clone(), a.clone()))
                .unwrap()
                .join()
                .unwrap();
        }
        assert_eq!(v.get().0[3][4095], 3);
        assert_eq!(a.to_vec()[1].0[0], 3);
    });
}
