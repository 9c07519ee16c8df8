//! Values to bytes and back.

use serde::{Serialize, de::DeserializeOwned};

/// A value could not be turned into bytes (for example a map with non-string
/// keys that a format rejects, or a `Serialize` impl that returned an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not encode a value of type `{type_name}`: {message}")]
pub struct EncodeError {
    /// The Rust type that failed to encode.
    pub type_name: &'static str,
    /// What the encoder said.
    pub message: String,
}

/// Bytes could not be turned into a value of the expected type: they were
/// truncated, corrupted, or encode a different type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not decode a value of type `{type_name}`: {message}")]
pub struct DecodeError {
    /// The Rust type that was expected.
    pub type_name: &'static str,
    /// What the decoder said.
    pub message: String,
}

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: Vec<u8>,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = out;
    postcard::serialize_with_flavor(value, Append(&mut out))
        .map(|()| out)
        .map_err(|e| EncodeError {
            type_name: std::any::type_name::<T>(),
            message: with_hint(e),
        })
}

/// Copies of more than this many bytes go in [`COPY_CHUNK`] pieces.
pub(crate) const CHUNKED_ABOVE: usize = 4096;

/// Piece size of a large copy. glibc's `memcpy` copies blocks from a few
/// KiB up to a cache-size threshold with `rep movsb`, which on AMD Zen
/// cores falls from ~40 GB/s to ~2 GB/s when the destination is a few
/// bytes (1..63) past the source modulo 4096 (4K aliasing) -- the usual
/// case for a buffer allocated right after its source. Pieces of 2 KiB
/// stay below that threshold and copy at full speed at any alignment.
pub(crate) const COPY_CHUNK: usize = 2048;

/// `out.extend_from_slice(data)`, in [`COPY_CHUNK`] pieces when large.
#[inline]
pub(crate) fn extend_chunked(out: &mut Vec<u8>, data: &[u8]) {
    if data.len() <= CHUNKED_ABOVE {
        out.extend_from_slice(data);
        return;
    }
    out.reserve(data.len());
    for piece in data.chunks(COPY_CHUNK) {
        out.extend_from_slice(piece);
    }
}

/// Encodes `value`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    encode_into(value, Vec::new())
}

/// Decodes a `T` that must fill `bytes` exactly.
#[inline]
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let err = |message: String| DecodeError {
        type_name: std::any::type_name::<T>(),
        message,
    };
    // `postcard::take_from_bytes`, spelt out so that it inlines (see
    // `encode_stack`).
    let mut deserializer = postcard::Deserializer::from_bytes(bytes);
    let taken = T::deserialize(&mut deserializer).and_then(|v| Ok((v, deserializer.finalize()?)));
    match taken {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(err(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(err(explained(e))),
    }
}

thread_local! {
    /// The message of the last [`custom`] error made on this thread:
    /// postcard keeps only the fact that a `Deserialize` failed, not why.
    static CUSTOM: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A `Deserialize` error of multiproc's own handle types (a handle that
/// cannot be attached, of the wrong type...), whose message reaches the
/// [`DecodeError`] even through postcard.
pub(crate) fn custom<E: serde::de::Error>(message: impl std::fmt::Display) -> E {
    let message = message.to_string();
    CUSTOM.with(|c| *c.borrow_mut() = Some(message.clone()));
    E::custom(message)
}

/// The text of a postcard error, with the message of a [`custom`] error
/// when that is what failed.
fn explained(e: postcard::Error) -> String {
    let kept = CUSTOM.with(|c| c.borrow_mut().take());
    match (e, kept) {
        (postcard::Error::SerdeDeCustom, Some(message)) => message,
        (e, _) => with_hint(e),
    }
}

/// If `bytes` (a `T` just encoded) fail to decode as a `T` because of
/// the type's serde shape (postcard cannot carry it; see [`with_hint`]),
/// what to say about it. Other decode failures are not this function's.
pub(crate) fn shape_error<T: DeserializeOwned>(bytes: &[u8]) -> Option<String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Err(e @ postcard::Error::WontImplement) => {
            CUSTOM.with(|c| c.borrow_mut().take());
            Some(with_hint(e))
        }
        _ => {
            CUSTOM.with(|c| c.borrow_mut().take());
            None
        }
    }
}

/// What postcard says, and, for the errors a value's shape causes, what
/// to do about it.
fn with_hint(e: postcard::Error) -> String {
    match e {
        postcard::Error::WontImplement | postcard::Error::SerializeSeqLengthUnknown => format!(
            "{e}: multiproc's format (postcard) is compact but not self-describing, so it \
             cannot carry `#[serde(untagged)]` or internally or adjacently tagged enums, \
             `#[serde(flatten)]`, or `serde_json::Value`; wrap such a value in \
             `multiproc::SelfDescribing` to send it self-described (CBOR)"
        ),
        e => e.to_string(),
    }
}

/// Bytes of the buffer on the stack that [`encode_stack`] encodes into.
pub(crate) const STACK_BYTES: usize = 32;

/// A small value's encoding, in a buffer on the stack: no allocation, no
/// thread-local buffer to take and give back.
pub(crate) struct Stack {
    bytes: [u8; STACK_BYTES],
    len: usize,
}

impl Stack {
    /// An empty buffer.
    #[inline]
    pub(crate) fn new() -> Stack {
        Stack {
            bytes: [0; STACK_BYTES],
            len: 0,
        }
    }

    /// The bytes encoded.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Encodes `value` into `out`; false if it needs more than [`STACK_BYTES`]
/// bytes or fails to encode (`out` is then to be ignored).
#[inline]
pub(crate) fn encode_stack<T: Serialize + ?Sized>(value: &T, out: &mut Stack) -> bool {
    out.len = 0;
    // `postcard::serialize_with_flavor`, spelt out so that it inlines: for
    // a small value the call costs as much as the encoding.
    let mut serializer = postcard::Serializer { output: &mut *out };
    value.serialize(&mut serializer).is_ok()
        && postcard::ser_flavors::Flavor::finalize(serializer.output).is_ok()
}

/// `to.copy_from_slice(from)`, with fixed-size moves up to 16 bytes:
/// varints come a few bytes at a time, and a call to `memcpy` (which a
/// byte loop also becomes) costs more than the copy.
#[inline]
fn copy_short(to: &mut [u8], from: &[u8]) {
    let n = from.len();
    if n > 16 || n != to.len() {
        to.copy_from_slice(from);
    } else if n >= 8 {
        // Two 8-byte moves, overlapping when n < 16.
        to[..8].copy_from_slice(&from[..8]);
        to[n - 8..].copy_from_slice(&from[n - 8..]);
    } else if n >= 4 {
        to[..4].copy_from_slice(&from[..4]);
        to[n - 4..].copy_from_slice(&from[n - 4..]);
    } else if n > 0 {
        to[0] = from[0];
        to[n / 2] = from[n / 2];
        to[n - 1] = from[n - 1];
    }
}

impl postcard::ser_flavors::Flavor for &mut Stack {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        let slot = self
            .bytes
            .get_mut(self.len)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        *slot = data;
        self.len += 1;
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.len + data.len();
        let room = self
            .bytes
            .get_mut(self.len..end)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        copy_short(room, data);
        self.len = end;
        Ok(())
    }

    #[inline]
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Writes postcard output straight onto the end of a borrowed `Vec`.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Varints come a few bytes at a time: pushing them is cheaper than
        // a call to `memcpy`.
        if data.len() <= 8 {
            for &b in data {
                self.0.push(b);
            }
        } else {
            extend_chunked(self.0, data);
        }
        Ok(())
    }

    #[inline]
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes values one after another onto the end of a `Vec`, with one
/// serializer for all of them (a pool's chunk of items or results).
pub(crate) struct Encoder<'a> {
    ser: postcard::Serializer<Append<'a>>,
}

impl<'a> Encoder<'a> {
    /// An encoder appending to `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        Encoder {
            ser: postcard::Serializer {
                output: Append(out),
            },
        }
    }

    /// Appends `value`; on error nothing is appended.
    #[inline]
    pub(crate) fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        let len = self.ser.output.0.len();
        value.serialize(&mut self.ser).map_err(|e| {
            self.ser.output.0.truncate(len);
            EncodeError {
                type_name: std::any::type_name::<T>(),
                message: e.to_string(),
            }
        })
    }

    /// Bytes written so far, in all.
    pub(crate) fn len(&self) -> usize {
        self.ser.output.0.len()
    }
}

/// Decodes values one after another from a byte slice, with one
/// deserializer for all of them.
pub(crate) struct Decoder<'de> {
    de: postcard::Deserializer<'de, postcard::de_flavors::Slice<'de>>,
}

impl<'de> Decoder<'de> {
    /// A decoder reading `bytes` from the start.
    pub(crate) fn new(bytes: &'de [u8]) -> Self {
        Decoder {
            de: postcard::Deserializer::from_bytes(bytes),
        }
    }

    /// The next value.
    #[inline]
    pub(crate) fn next<T: serde::Deserialize<'de>>(&mut self) -> Result<T, DecodeError> {
        T::deserialize(&mut self.de).map_err(|e| DecodeError {
            type_name: std::any::type_name::<T>(),
            message: explained(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_encoding_is_postcards_and_refuses_what_does_not_fit() {
        let mut stack = Stack::new();
        // Byte strings of every length around the buffer's size, and
        // varints of every width (whose pieces take each path of
        // `copy_short`).
        for n in 0..=STACK_BYTES + 2 {
            let value = serde_bytes::ByteBuf::from(vec![0xA5u8; n]);
            let want = postcard::to_allocvec(&value).unwrap();
            let fits = encode_stack(&value, &mut stack);
            assert_eq!(fits, want.len() <= STACK_BYTES, "{n} bytes");
            if fits {
                assert_eq!(stack.bytes(), &want[..]);
            }
        }
        for shift in 0..64 {
            let value = (1u64 << shift, u128::MAX >> shift, -1i64 << shift);
            assert!(encode_stack(&value, &mut stack));
            assert_eq!(stack.bytes(), &postcard::to_allocvec(&value).unwrap()[..]);
        }
        assert!(encode_stack(&"x".repeat(15), &mut stack));
        assert_eq!(
            stack.bytes(),
            &postcard::to_allocvec(&"x".repeat(15)).unwrap()[..]
        );
    }
}
