//! User-defined shared types: a type the server holds and clients call
//! through an [`ObjectProxy`](super::ObjectProxy).
//!
//! The server may be a fresh execution of this binary (the *spawn* start
//! method), so a registration cannot be a closure handed over at run time.
//! Instead, [`ManagerBuilder::register`](super::ManagerBuilder::register)
//! records the type in the builder's *type*, a list `(Registered<T>, Rest)`;
//! the server's entry point is the function `serve::<List>`, monomorphised
//! in this executable and started like any other child function. The server
//! builds its table of types from the list and the names the client sent.
//! A request names a registered type by its name; nothing else is ever
//! constructed, and nothing received is executed.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::RemoteError;
use crate::wire::codec;

/// A type whose values a manager can hold, called by clients through an
/// [`ObjectProxy`](super::ObjectProxy) (Python: a class registered with
/// `BaseManager.register`).
///
/// The methods are two enums: [`Call`](Self::Call), what a client asks, and
/// [`Reply`](Self::Reply), what it gets back. The server runs
/// [`call`](Self::call) on its own copy of the object, one call at a time.
///
/// ```
/// use multiproc::{Manager, SharedObject};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default)]
/// struct Counter(i64);
///
/// #[derive(Serialize, Deserialize)]
/// enum CounterCall { Add(i64), Get }
///
/// impl SharedObject for Counter {
///     type Init = i64;
///     type Call = CounterCall;
///     type Reply = i64;
///     fn create(start: i64) -> Self {
///         Counter(start)
///     }
///     fn call(&mut self, call: CounterCall) -> i64 {
///         if let CounterCall::Add(n) = call {
///             self.0 += n;
///         }
///         self.0
///     }
/// }
///
/// let manager = Manager::builder().register::<Counter>("counter").start()?;
/// let counter = manager.create::<Counter>("counter", 10)?;
/// assert_eq!(counter.call(CounterCall::Add(5))?, 15);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait SharedObject: Send + 'static {
    /// What a new object is made from.
    type Init: Serialize + DeserializeOwned;
    /// A method call (usually an enum, one variant per method).
    type Call: Serialize + DeserializeOwned;
    /// A method's answer.
    type Reply: Serialize + DeserializeOwned;
    /// Makes a new object on the server.
    fn create(init: Self::Init) -> Self;
    /// Runs one call on the server's object.
    fn call(&mut self, call: Self::Call) -> Self::Reply;
}

/// An object of a registered type, as the server holds it: encoded calls
/// in, encoded replies out.
pub(crate) trait HostedObject: Send {
    /// Decodes `call`, runs it, encodes the reply.
    fn call(&mut self, call: &[u8]) -> Result<Vec<u8>, RemoteError>;
}

struct Hosted<T>(T);

impl<T: SharedObject> HostedObject for Hosted<T> {
    fn call(&mut self, call: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let call: T::Call =
            codec::decode(call).map_err(|e| RemoteError::BadArgument(e.to_string()))?;
        let reply = quietly(|| self.0.call(call))?;
        codec::encode(&reply).map_err(|e| RemoteError::Internal(e.to_string()))
    }
}

/// Runs user code: a panic becomes [`RemoteError::Panicked`], for the
/// client to report, and is not printed by the server too (as Python's
/// server sends a method's exception back without printing it).
fn quietly<R>(f: impl FnOnce() -> R) -> Result<R, RemoteError> {
    crate::process::child::quiet_body(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|p| RemoteError::Panicked(panic_message(p.as_ref())))
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

fn create<T: SharedObject>(init: &[u8]) -> Result<Box<dyn HostedObject>, RemoteError> {
    let init: T::Init = codec::decode(init).map_err(|e| RemoteError::BadArgument(e.to_string()))?;
    let object = quietly(|| T::create(init))?;
    Ok(Box::new(Hosted(object)))
}

/// Makes an object of a registered type from its encoded `Init`.
pub(crate) type Constructor = fn(&[u8]) -> Result<Box<dyn HostedObject>, RemoteError>;

/// One registered type on the server.
pub(crate) struct Entry {
    /// `std::any::type_name` of the type.
    pub type_name: &'static str,
    /// Makes an object from an encoded `Init`.
    pub create: Constructor,
}

/// The server's registered types, by name.
pub(crate) type Table = HashMap<String, Entry>;

// The seal names crate-private types: that is its point (users cannot
// implement it, nor see the table), hence the `allow`s.
#[allow(private_interfaces)]
pub(crate) mod sealed {
    /// What the server needs of a [`Registry`](super::Registry), out of
    /// users' reach.
    pub trait Sealed {
        /// Adds the list's types to `table`, taking their names from the end
        /// of `names` (the last registered type comes first in the list).
        fn fill(names: &mut Vec<String>, table: &mut super::Table);
    }
}

/// The list of types registered on a [`ManagerBuilder`](super::ManagerBuilder),
/// built by [`register`](super::ManagerBuilder::register): `()` for none,
/// `(Registered<T>, Rest)` for `T` and then the rest. Not implemented
/// outside this crate.
pub trait Registry: sealed::Sealed + 'static {}

/// A registered type `T`, an element of a [`Registry`] list.
#[derive(Debug)]
pub struct Registered<T>(PhantomData<fn() -> T>);

#[allow(private_interfaces)]
impl sealed::Sealed for () {
    fn fill(_: &mut Vec<String>, _: &mut Table) {}
}

impl Registry for () {}

impl<T: SharedObject, Rest: Registry> Registry for (Registered<T>, Rest) {}

#[allow(private_interfaces)]
impl<T: SharedObject, Rest: Registry> sealed::Sealed for (Registered<T>, Rest) {
    fn fill(names: &mut Vec<String>, table: &mut Table) {
        if let Some(name) = names.pop() {
            table.insert(
                name,
                Entry {
                    type_name: std::any::type_name::<T>(),
                    create: create::<T>,
                },
            );
        }
        Rest::fill(names, table);
    }
}
