//! [`SelfDescribing`]: a value that travels self-described (CBOR), for
//! the serde shapes postcard cannot carry.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value sent in a self-describing format (CBOR, through the `ciborium`
/// crate) inside multiproc's compact one: for the serde shapes that need
/// the format to describe itself, which postcard cannot carry:
/// `#[serde(untagged)]`, internally and adjacently tagged enums,
/// `#[serde(flatten)]`, and `serde_json::Value`. Use it wherever a value
/// travels (a `spawn` argument or result, a queue, a pipe, a pool task); it
/// costs more bytes and time than a plain value.
///
/// ```
/// use multiproc::{Process, SelfDescribing};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// #[serde(untagged)]
/// enum Input {
///     Number(f64),
///     Text(String),
/// }
///
/// fn describe(SelfDescribing(input): SelfDescribing<Input>) -> String {
///     match input {
///         Input::Number(x) => format!("the number {x}"),
///         Input::Text(t) => format!("the text {t:?}"),
///     }
/// }
///
/// let p = Process::spawn(describe, SelfDescribing(Input::Text("hi".into())))?;
/// assert_eq!(p.join()?, "the text \"hi\"");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SelfDescribing<T>(pub T);

impl<T> SelfDescribing<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: Serialize> Serialize for SelfDescribing<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        ciborium::into_writer(&self.0, &mut bytes).map_err(serde::ser::Error::custom)?;
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for SelfDescribing<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes<T>(std::marker::PhantomData<T>);
        impl<T: DeserializeOwned> Visitor<'_> for Bytes<T> {
            type Value = SelfDescribing<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a self-described (CBOR) value")
            }
            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
                ciborium::from_reader(bytes)
                    .map(SelfDescribing)
                    .map_err(super::codec::custom)
            }
        }
        deserializer.deserialize_bytes(Bytes(std::marker::PhantomData))
    }
}
