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

use std::os::fd::BorrowedFd;
use std::time::Instant;

use hmac::{Hmac, KeyInit, Mac, SimpleHmac};

use super::error::{AuthError, RecvError};
use crate::sys::socket;
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
    if message.first() == Some(&b'{')
        && let Some(close) = message.iter().take(12).position(|&b| b == b'}')
        && let Some(d) = Digest::from_name(&message[1..close])
    {
        return Ok((Some(d), &message[close + 1..]));
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

/// A fresh challenge of ours: the message after `#CHALLENGE#`, that is
/// the digest prefix and 40 random bytes.
fn new_challenge() -> Result<Vec<u8>, AuthError> {
    let mut random = [0u8; MESSAGE_LENGTH];
    getrandom::fill(&mut random).map_err(|e| AuthError::Protocol(format!("no randomness: {e}")))?;
    let mut message = format!("{{{}}}", Digest::Sha256.name()).into_bytes();
    message.extend_from_slice(&random);
    Ok(message)
}

/// Whether `response` is the right answer, with `key`, to our challenge
/// `message` (in either generation's form).
fn response_is_valid(key: &[u8], message: &[u8], response: &[u8]) -> bool {
    match digest_and_payload(response) {
        Ok((digest, mac)) => digest.unwrap_or(Digest::Md5).verify(key, message, mac),
        Err(_) => false,
    }
}

/// Our answer, with `key`, to the peer's challenge (a whole handshake
/// message, `#CHALLENGE#` included).
fn answer(key: &[u8], challenge: &[u8]) -> Result<Vec<u8>, AuthError> {
    let Some(message) = challenge.strip_prefix(CHALLENGE) else {
        return Err(AuthError::Protocol("expected a challenge".into()));
    };
    if message.len() < MD5_ONLY_MESSAGE_LENGTH {
        return Err(AuthError::Protocol(format!(
            "challenge too short: {} bytes",
            message.len()
        )));
    }
    Ok(match digest_and_payload(message)?.0 {
        None => Digest::Md5.mac(key, message),
        Some(d) => {
            let mut a = format!("{{{}}}", d.name()).into_bytes();
            a.extend_from_slice(&d.mac(key, message));
            a
        }
    })
}

/// Challenges the peer to prove it knows `key`.
pub(crate) fn deliver_challenge(
    stream: &Stream,
    key: &[u8],
    deadline: Option<Instant>,
) -> Result<(), AuthError> {
    let message = new_challenge()?;
    send(stream, &[CHALLENGE, &message])?;
    let response = recv(stream, deadline)?;
    if response_is_valid(key, &message, &response) {
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
    let challenge = recv(stream, deadline)?;
    send(stream, &[&answer(key, &challenge)?])?;
    if recv(stream, deadline)? == WELCOME {
        Ok(())
    } else {
        Err(AuthError::KeyRejected)
    }
}

/// One frame: CPython's 4-byte big-endian length, then the payload (a
/// handshake message is always short enough for the 4-byte form).
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = i32::try_from(payload.len()).expect("handshake messages are short");
    let mut f = len.to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// What the accepting side's handshake waits for after a step.
#[derive(Debug)]
pub(crate) enum Step {
    /// The socket to become readable.
    Read,
    /// The socket to take more bytes.
    Write,
    /// Nothing: both sides proved they hold the key. The socket has been
    /// read exactly up to the end of the handshake, so whatever the client
    /// sent after it is still there for the connection.
    Done,
    /// Nothing: the handshake failed, and the connection must be closed.
    Failed(AuthError),
}

/// Where the accepting side is: the frame it reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The client's answer to our challenge.
    Response,
    /// The client's own challenge.
    ClientChallenge,
    /// The client's verdict on our answer (`#WELCOME#` or `#FAILURE#`).
    ClientVerdict,
}

/// The accepting side of the handshake (the same bytes as
/// [`deliver_challenge`] then [`answer_challenge`]), on a socket that is
/// never waited on: each [`advance`](Self::advance) goes as far as the
/// bytes at hand allow and says what it waits for. So one thread can run
/// the handshakes of many clients at once, and a client that sends nothing,
/// or one byte at a time, holds up nobody else. The deadline is its
/// driver's (`Listener::accept`).
///
/// Frames are read exactly (a header, then its payload), never past the
/// client's verdict: its first message after the handshake stays in the
/// socket. Descriptors a client attaches to a handshake byte are closed.
pub(crate) struct ServerHandshake {
    /// Our challenge (what follows `#CHALLENGE#`).
    challenge: Vec<u8>,
    phase: Phase,
    /// Frame bytes to send, and how many of them went out.
    out: Vec<u8>,
    sent: usize,
    /// The frame being read: header, then payload.
    frame: Vec<u8>,
    /// The payload length, once the header is in.
    len: Option<usize>,
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("phase", &self.phase)
            .field("unsent", &(self.out.len() - self.sent))
            .field("read", &self.frame.len())
            .finish_non_exhaustive()
    }
}

/// How a failed nonblocking receive or send ends the handshake.
fn io_failure(e: std::io::Error) -> AuthError {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            AuthError::Recv(RecvError::Disconnected)
        }
        _ => AuthError::Recv(RecvError::from(StreamError::Io(e))),
    }
}

impl ServerHandshake {
    /// A handshake that starts by sending a fresh challenge.
    pub(crate) fn new() -> Result<Self, AuthError> {
        let challenge = new_challenge()?;
        let out = frame(&[CHALLENGE, &challenge].concat());
        Ok(ServerHandshake {
            challenge,
            phase: Phase::Response,
            out,
            sent: 0,
            frame: Vec::with_capacity(4 + MAX_HANDSHAKE_MESSAGE as usize),
            len: None,
        })
    }

    /// Sends and receives what can be without waiting, on the connected
    /// socket `fd` (which may be in blocking mode: every call here is
    /// nonblocking by its flags).
    pub(crate) fn advance(&mut self, fd: BorrowedFd<'_>, key: &[u8]) -> Step {
        loop {
            while self.sent < self.out.len() {
                match socket::send_plain(fd, &self.out[self.sent..], true) {
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Step::Write,
                    Err(e) => return Step::Failed(io_failure(e)),
                }
            }
            let wanted = 4 + self.len.unwrap_or(0);
            if self.frame.len() < wanted {
                let mut buf = [0u8; 4 + MAX_HANDSHAKE_MESSAGE as usize];
                let need = wanted - self.frame.len();
                let mut fds = Vec::new();
                let got = socket::recv(fd, &mut buf[..need], &mut fds, true);
                // A handshake carries no descriptors: close any that came.
                drop(fds);
                match got {
                    Ok(0) if self.frame.is_empty() => {
                        return Step::Failed(AuthError::Recv(RecvError::Disconnected));
                    }
                    Ok(0) => {
                        return Step::Failed(AuthError::Recv(RecvError::Truncated {
                            got: self.frame.len() as u64,
                            expected: wanted as u64,
                        }));
                    }
                    Ok(n) => self.frame.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Step::Read,
                    Err(e) => return Step::Failed(io_failure(e)),
                }
                continue;
            }
            if self.len.is_none() {
                let n = i32::from_be_bytes([
                    self.frame[0],
                    self.frame[1],
                    self.frame[2],
                    self.frame[3],
                ]);
                match u64::try_from(n) {
                    Ok(n) if n <= MAX_HANDSHAKE_MESSAGE => self.len = Some(n as usize),
                    Ok(n) => {
                        return Step::Failed(AuthError::Protocol(format!(
                            "a handshake message of {n} bytes is too long"
                        )));
                    }
                    Err(_) if n == -1 => {
                        return Step::Failed(AuthError::Protocol(
                            "a handshake message of more than 2 GiB is too long".into(),
                        ));
                    }
                    Err(_) => {
                        return Step::Failed(AuthError::Recv(RecvError::Garbage(format!(
                            "negative message length {n}"
                        ))));
                    }
                }
                continue;
            }
            let message = std::mem::take(&mut self.frame).split_off(4);
            self.len = None;
            match self.phase {
                Phase::Response => {
                    if !response_is_valid(key, &self.challenge, &message) {
                        // Best effort, as CPython: the client learns why.
                        let _ = socket::send_plain(fd, &frame(FAILURE), true);
                        return Step::Failed(AuthError::PeerRejected);
                    }
                    self.queue(&frame(WELCOME));
                    self.phase = Phase::ClientChallenge;
                }
                Phase::ClientChallenge => match answer(key, &message) {
                    Ok(a) => {
                        self.queue(&frame(&a));
                        self.phase = Phase::ClientVerdict;
                    }
                    Err(e) => return Step::Failed(e),
                },
                Phase::ClientVerdict if message == WELCOME => return Step::Done,
                Phase::ClientVerdict => return Step::Failed(AuthError::KeyRejected),
            }
        }
    }

    fn queue(&mut self, bytes: &[u8]) {
        self.out.clear();
        self.sent = 0;
        self.out.extend_from_slice(bytes);
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

    use std::os::fd::{AsFd, OwnedFd};
    use std::time::Duration;

    /// Drives the accepting side on `fd` until it finishes (or 10 s pass).
    fn drive(fd: &OwnedFd, key: &[u8]) -> Result<(), AuthError> {
        let mut hs = ServerHandshake::new().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let write = match hs.advance(fd.as_fd(), key) {
                Step::Read => false,
                Step::Write => true,
                Step::Done => return Ok(()),
                Step::Failed(e) => return Err(e),
            };
            assert!(Instant::now() < end, "the handshake did not finish");
            socket::wait_events(&[(fd.as_fd(), write)], Some(end)).unwrap();
        }
    }

    fn raw_frame(sock: &OwnedFd, bytes: &[u8]) {
        socket::send_all(sock.as_fd(), &[bytes], &[]).unwrap();
    }

    #[test]
    fn the_nonblocking_handshake_meets_the_blocking_client_and_reads_no_further() {
        for (server_key, client_key) in [(b"k".as_slice(), b"k".as_slice()), (b"k", b"x")] {
            let (a, b) = socket::stream_pair().unwrap();
            let client_key = client_key.to_vec();
            let client = std::thread::spawn(move || {
                let stream = Stream::new(b);
                let deadline = Some(Instant::now() + Duration::from_secs(10));
                answer_challenge(&stream, &client_key, deadline)?;
                deliver_challenge(&stream, &client_key, deadline)?;
                stream.send(&[b"first message"], &[]).unwrap();
                Ok::<_, AuthError>(stream)
            });
            let outcome = drive(&a, server_key);
            let client = client.join().unwrap();
            if server_key == b"k" && client.is_ok() {
                outcome.unwrap();
                // The client's first message is still in the socket.
                let stream = Stream::new(a);
                let m = stream.recv(None, 100, false).unwrap();
                assert_eq!(m.payload, b"first message");
            } else {
                assert!(
                    matches!(outcome, Err(AuthError::PeerRejected)),
                    "{outcome:?}"
                );
                assert!(matches!(client, Err(AuthError::KeyRejected)), "{client:?}");
            }
        }
    }

    /// The client's end of a pair, after it sent `bytes` and shut down
    /// its sending side (it still takes what we send).
    fn sent_then_shut(bytes: &[u8]) -> (OwnedFd, std::os::unix::net::UnixStream) {
        let (a, b) = socket::stream_pair().unwrap();
        raw_frame(&b, bytes);
        let b = std::os::unix::net::UnixStream::from(b);
        b.shutdown(std::net::Shutdown::Write).unwrap();
        (a, b)
    }

    /// What the accepting side makes of a client that sends `bytes` as its
    /// answer to the challenge, then nothing more.
    fn answer_with(bytes: &[u8]) -> AuthError {
        let (a, _b) = sent_then_shut(bytes);
        drive(&a, b"key").unwrap_err()
    }

    #[test]
    fn every_bad_handshake_is_a_typed_error() {
        let e = answer_with(&1000i32.to_be_bytes());
        assert!(
            matches!(&e, AuthError::Protocol(m) if m.contains("1000")),
            "{e:?}"
        );
        let e = answer_with(&(-1i32).to_be_bytes());
        assert!(
            matches!(&e, AuthError::Protocol(m) if m.contains("2 GiB")),
            "{e:?}"
        );
        let e = answer_with(&(-5i32).to_be_bytes());
        assert!(matches!(e, AuthError::Recv(RecvError::Garbage(_))), "{e:?}");
        let e = answer_with(&[0, 0]);
        assert!(
            matches!(
                e,
                AuthError::Recv(RecvError::Truncated {
                    got: 2,
                    expected: 4
                })
            ),
            "{e:?}"
        );
        let e = answer_with(&[0, 0, 0, 9, b'a']);
        assert!(
            matches!(
                e,
                AuthError::Recv(RecvError::Truncated {
                    got: 5,
                    expected: 13
                })
            ),
            "{e:?}"
        );
        let e = answer_with(&[]);
        assert!(
            matches!(e, AuthError::Recv(RecvError::Disconnected)),
            "{e:?}"
        );
        let e = answer_with(&frame(&[7; 16]));
        assert!(matches!(e, AuthError::PeerRejected), "{e:?}");
    }

    /// Runs the accepting side against a client that answers our challenge
    /// right, then sends `challenge` and, to our answer, `verdict`.
    fn after_a_right_answer(challenge: &[u8], verdict: &[u8]) -> Result<(), AuthError> {
        let (a, b) = socket::stream_pair().unwrap();
        let (challenge, verdict) = (challenge.to_vec(), verdict.to_vec());
        let client = std::thread::spawn(move || {
            let stream = Stream::new(b);
            let ours = recv(&stream, None).unwrap();
            let message = ours.strip_prefix(CHALLENGE).unwrap();
            let mut answer = b"{sha256}".to_vec();
            answer.extend(Digest::Sha256.mac(b"key", message));
            send(&stream, &[&answer]).unwrap();
            assert_eq!(recv(&stream, None).unwrap(), WELCOME);
            send(&stream, &[&challenge]).unwrap();
            if let Ok(_answer) = recv(&stream, None) {
                send(&stream, &[&verdict]).unwrap();
            }
        });
        let outcome = drive(&a, b"key");
        drop(a);
        client.join().unwrap();
        outcome
    }

    #[test]
    fn a_bad_client_challenge_or_verdict_is_a_typed_error() {
        let legacy = [CHALLENGE, &[1; 20]].concat();
        after_a_right_answer(&legacy, WELCOME).unwrap();
        let e = after_a_right_answer(b"no challenge here", WELCOME).unwrap_err();
        assert!(matches!(&e, AuthError::Protocol(m) if m.contains("expected a challenge")));
        let e = after_a_right_answer(&[CHALLENGE, &[1; 5]].concat(), WELCOME).unwrap_err();
        assert!(matches!(&e, AuthError::Protocol(m) if m.contains("too short")));
        let e = after_a_right_answer(&legacy, FAILURE).unwrap_err();
        assert!(matches!(e, AuthError::KeyRejected), "{e:?}");
    }

    #[test]
    fn descriptors_sent_during_the_handshake_are_closed() {
        let (a, b) = socket::stream_pair().unwrap();
        let (probe, far) = socket::stream_pair().unwrap();
        // A header byte carrying `far`; then the client stops sending.
        socket::send_all(b.as_fd(), &[&[0]], &[far.as_fd()]).unwrap();
        drop(far);
        let b = std::os::unix::net::UnixStream::from(b);
        b.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(matches!(
            drive(&a, b"key"),
            Err(AuthError::Recv(RecvError::Truncated { .. }))
        ));
        // The copy that arrived was closed: `probe` sees the end.
        let end = Instant::now() + Duration::from_secs(10);
        assert!(socket::wait_readable_one(probe.as_fd(), Some(end)).unwrap());
        assert_eq!(
            socket::recv(probe.as_fd(), &mut [0; 1], &mut Vec::new(), true).unwrap(),
            0
        );
    }
}
