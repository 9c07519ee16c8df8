//! The auth-key handshake, byte for byte as CPython's
//! `multiprocessing.connection` performs it, so either side may be Python.
//!
//! Each side proves it knows the key by answering the other's challenge:
//! the server (the one that accepted) challenges first, then answers the
//! client's challenge.
//!
//! * Python 3.12 and later: the challenge is `#CHALLENGE#{sha256}` followed
//!   by 40 random bytes; the answer is `{sha256}` followed by the HMAC of the
//!   challenge (digest prefix included). We send this form.
//! * Python 3.11 and earlier: the challenge is `#CHALLENGE#` and 20 random
//!   bytes; the answer is the raw 16-byte HMAC-MD5. A challenge of 20 bytes,
//!   or an answer of 16 or 20 bytes, selects this legacy form, as in
//!   CPython, so we interoperate with both.
//!
//! Comparisons of digests take constant time (`hmac`'s `verify_slice`).

use std::time::Instant;

use hmac::{Hmac, KeyInit, Mac, SimpleHmac};

use super::error::{AuthError, RecvError};
use crate::wire::stream::{Stream, StreamError};

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a challenge we send.
const MESSAGE_LENGTH: usize = 40;
const MD5_ONLY_MESSAGE_LENGTH: usize = 20;
const MD5_DIGEST_LEN: usize = 16;
/// Longest handshake message either side accepts (as CPython).
const MAX_HANDSHAKE_MESSAGE: u64 = 256;

/// The digests CPython allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digest {
    Md5,
    Sha256,
    Sha384,
    Sha3_256,
    Sha3_384,
}

impl Digest {
    fn from_name(name: &[u8]) -> Option<Digest> {
        Some(match name {
            b"md5" => Digest::Md5,
            b"sha256" => Digest::Sha256,
            b"sha384" => Digest::Sha384,
            b"sha3_256" => Digest::Sha3_256,
            b"sha3_384" => Digest::Sha3_384,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
            Digest::Sha3_256 => "sha3_256",
            Digest::Sha3_384 => "sha3_384",
        }
    }

    fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message),
            Digest::Sha3_256 => run::<SimpleHmac<sha3::Sha3_256>>(key, message),
            Digest::Sha3_384 => run::<SimpleHmac<sha3::Sha3_384>>(key, message),
        }
    }

    fn verify(self, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
        fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
            let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
            m.update(message);
            m.verify_slice(tag).is_ok()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message, tag),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message, tag),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message, tag),
            Digest::Sha3_256 => run::<SimpleHmac<sha3::Sha3_256>>(key, message, tag),
            Digest::Sha3_384 => run::<SimpleHmac<sha3::Sha3_384>>(key, message, tag),
        }
    }
}

/// Splits `{digest}payload`; a legacy message (16 or 20 bytes) has no
/// prefix and means HMAC-MD5 (`None` digest name).
fn digest_and_payload(message: &[u8]) -> Result<(Option<Digest>, &[u8]), AuthError> {
    if message.len() == MD5_ONLY_MESSAGE_LENGTH || message.len() == MD5_DIGEST_LEN {
        return Ok((None, message));
    }
    if message.first() == Some(&b'{') {
        if let Some(close) = message.iter().take(12).position(|&b| b == b'}') {
            if let Some(d) = Digest::from_name(&message[1..close]) {
                return Ok((Some(d), &message[close + 1..]));
            }
        }
    }
    Err(AuthError::Protocol(
        "unsupported message length, missing digest prefix, or unsupported digest".into(),
    ))
}

fn recv(stream: &Stream, deadline: Option<Instant>) -> Result<Vec<u8>, AuthError> {
    match stream.recv(deadline, MAX_HANDSHAKE_MESSAGE, false) {
        Ok(m) => Ok(m.payload),
        Err(StreamError::Timeout) => Err(AuthError::Timeout),
        Err(StreamError::TooLarge { len, .. }) => Err(AuthError::Protocol(format!(
            "a handshake message of {len} bytes is too long"
        ))),
        Err(e) => Err(AuthError::Recv(RecvError::from(e))),
    }
}

fn send(stream: &Stream, bytes: &[&[u8]]) -> Result<(), AuthError> {
    stream
        .send(bytes, &[])
        .map_err(|e| AuthError::Recv(RecvError::from(e)))
}

/// Challenges the peer to prove it knows `key`.
pub(crate) fn deliver_challenge(
    stream: &Stream,
    key: &[u8],
    deadline: Option<Instant>,
) -> Result<(), AuthError> {
    let mut random = [0u8; MESSAGE_LENGTH];
    getrandom::fill(&mut random).map_err(|e| AuthError::Protocol(format!("no randomness: {e}")))?;
    let mut message = format!("{{{}}}", Digest::Sha256.name()).into_bytes();
    message.extend_from_slice(&random);
    send(stream, &[CHALLENGE, &message])?;
    let response = recv(stream, deadline)?;
    let ok = match digest_and_payload(&response) {
        Ok((digest, mac)) => digest.unwrap_or(Digest::Md5).verify(key, &message, mac),
        Err(_) => false,
    };
    if ok {
        send(stream, &[WELCOME])
    } else {
        let _ = send(stream, &[FAILURE]);
        Err(AuthError::PeerRejected)
    }
}

/// Answers the peer's challenge with `key`.
pub(crate) fn answer_challenge(
    stream: &Stream,
    key: &[u8],
    deadline: Option<Instant>,
) -> Result<(), AuthError> {
    let message = recv(stream, deadline)?;
    let Some(message) = message.strip_prefix(CHALLENGE) else {
        return Err(AuthError::Protocol("expected a challenge".into()));
    };
    if message.len() < MD5_ONLY_MESSAGE_LENGTH {
        return Err(AuthError::Protocol(format!(
            "challenge too short: {} bytes",
            message.len()
        )));
    }
    match digest_and_payload(message)?.0 {
        None => send(stream, &[&Digest::Md5.mac(key, message)])?,
        Some(d) => {
            let prefix = format!("{{{}}}", d.name());
            send(stream, &[prefix.as_bytes(), &d.mac(key, message)])?;
        }
    }
    if recv(stream, deadline)? == WELCOME {
        Ok(())
    } else {
        Err(AuthError::KeyRejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn modern(digest: &str) -> Vec<u8> {
        let mut m = format!("{{{digest}}}").into_bytes();
        m.extend(0u8..40);
        m
    }

    /// Computed with CPython 3.11's `hmac` module, e.g.
    /// `hmac.new(b"secret", b"{sha256}" + bytes(range(40)), "sha256").hexdigest()`.
    #[test]
    fn macs_match_python() {
        let cases = [
            (
                Digest::Sha256,
                modern("sha256"),
                "fc57fbe650d6124b98215e7b5d197d5807ad69982d275a9735ea2d56f1fa6989",
            ),
            (
                Digest::Sha384,
                modern("sha384"),
                "bae78a3376369f7b803a8473318a9b7062495b47434159ac84fc92ddb33c51b277c44c3edd9a5f9cb7d628f21abe2665",
            ),
            (
                Digest::Sha3_256,
                modern("sha3_256"),
                "82e8fa62f363295b6655abecf0e98e510224c559e9745af9741c357aec358f90",
            ),
            (
                Digest::Sha3_384,
                modern("sha3_384"),
                "bfbe71d4e622f58ebf6cbe049af4c8fe518645b482915af0940d678c37c0b46dd1a2a448f9ee5141c91bba42b46a7862",
            ),
            (
                Digest::Md5,
                (0u8..20).collect(),
                "7defa9cc46abc3583325d17ccda75190",
            ),
        ];
        for (digest, message, expected) in cases {
            let mac = digest.mac(b"secret", &message);
            assert_eq!(hex(&mac), expected, "{digest:?}");
            assert!(digest.verify(b"secret", &message, &mac));
            assert!(!digest.verify(b"other", &message, &mac));
        }
    }

    #[test]
    fn legacy_and_modern_messages_are_told_apart() {
        assert_eq!(digest_and_payload(&[7; 20]).unwrap().0, None);
        assert_eq!(digest_and_payload(&[7; 16]).unwrap().0, None);
        let m = modern("sha256");
        let (d, p) = digest_and_payload(&m).unwrap();
        assert_eq!(d, Some(Digest::Sha256));
        assert_eq!(p.len(), 40);
        assert!(digest_and_payload(&modern("sha1")).is_err());
        assert!(digest_and_payload(b"no prefix and not a legacy length").is_err());
    }
}
