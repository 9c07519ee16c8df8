//! The README's manager promises that no other test pinned down: dictionary
//! keys are equal when their encodings are, so `0.0` and `-0.0` are two
//! keys (Python's `{0.0: 1, -0.0: 2}` has one).

mod common;

use common::{LIMIT, deadline};
use multiproc::Manager;

#[test]
fn keys_are_equal_when_their_encodings_are() {
    deadline(LIMIT, || {
        let manager = Manager::start().unwrap();
        let d = manager.dict::<f64, u32>().unwrap();
        d.insert(0.0, 1).unwrap();
        d.insert(-0.0, 2).unwrap();
        assert_eq!(d.len().unwrap(), 2);
        assert_eq!(d.get(&0.0).unwrap(), Some(1));
        assert_eq!(d.get(&-0.0).unwrap(), Some(2));
        // And a NaN finds itself, which it does not in a Python dict unless
        // it is the very same object.
        d.insert(f64::NAN, 3).unwrap();
        assert_eq!(d.get(&f64::NAN).unwrap(), Some(3));
        drop(d);
        manager.shutdown().unwrap();
    });
}
