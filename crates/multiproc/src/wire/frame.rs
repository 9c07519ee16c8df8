//! Message framing.
//!
//! Every message is a 16-byte header followed by its payload:
//!
//! | bytes | field   | value                                   |
//! |-------|---------|-----------------------------------------|
//! | 0..2  | magic   | `b"MP"`                                 |
//! | 2     | version | [`VERSION`]                             |
//! | 3     | kind    | what the payload is (set by the caller) |
//! | 4..8  | zero    | reserved                                |
//! | 8..16 | length  | payload length, little-endian `u64`     |
//!
//! A reader checks the length against its limit before it allocates, and
//! grows its buffer only as bytes arrive, so a forged length cannot make it
//! allocate memory the peer never sent.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::sys::socket;

/// Wire format version written into every header.
pub(crate) const VERSION: u8 = 1;
const MAGIC: [u8; 2] = *b"MP";
/// Header size in bytes.
pub(crate) const HEADER: usize = 16;
/// Largest buffer growth step while a payload arrives.
const CHUNK: usize = 1 << 20;

/// A frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer closed the stream between frames.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer closed the stream in the middle of a frame.
    #[error("the connection closed after {got} of {expected} bytes of a frame")]
    Truncated {
        /// Bytes of the frame (header included) that arrived.
        got: u64,
        /// Bytes the frame should have had.
        expected: u64,
    },
    /// The header announced a payload larger than the reader accepts.
    #[error("a frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The reader's limit.
        limit: u64,
    },
    /// The bytes are not a frame of this protocol (wrong magic, version or
    /// reserved bits).
    #[error("garbage on the wire: {0}")]
    Garbage(String),
    /// The operating system reported an error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Builds the header for a payload of `len` bytes.
pub(crate) fn header(kind: u8, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..2].copy_from_slice(&MAGIC);
    h[2] = VERSION;
    h[3] = kind;
    h[8..].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

/// Writes one frame, with `fds` attached, to a stream socket.
pub(crate) fn write(
    sock: BorrowedFd<'_>,
    kind: u8,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    socket::send_all(sock, &[&header(kind, payload.len()), payload], fds)
}

/// Checks a header and returns the frame's kind and payload length.
pub(crate) fn parse_header(h: &[u8; HEADER], limit: u64) -> Result<(u8, usize), FrameError> {
    if h[..2] != MAGIC {
        return Err(FrameError::Garbage(format!(
            "bad magic {:02x}{:02x}",
            h[0], h[1]
        )));
    }
    if h[2] != VERSION {
        return Err(FrameError::Garbage(format!(
            "unknown wire version {}",
            h[2]
        )));
    }
    if h[4..8] != [0; 4] {
        return Err(FrameError::Garbage(
            "reserved header bytes are not zero".into(),
        ));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&h[8..]);
    let len = u64::from_le_bytes(l);
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let len = usize::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        limit: usize::MAX as u64,
    })?;
    Ok((h[3], len))
}

/// A complete frame.
#[derive(Debug)]
pub(crate) struct Frame {
    /// The kind byte from the header.
    pub kind: u8,
    /// The payload.
    pub payload: Vec<u8>,
    /// Descriptors that arrived with the frame.
    pub fds: Vec<OwnedFd>,
}

/// Reads frames from a stream socket; can stop at a deadline and resume.
#[derive(Debug)]
pub(crate) struct Reader {
    limit: u64,
    head: [u8; HEADER],
    head_got: usize,
    payload: Vec<u8>,
    expected: Option<(u8, usize)>,
    fds: Vec<OwnedFd>,
}

/// What one step of reading produced.
#[derive(Debug)]
pub(crate) enum Step {
    /// A whole frame.
    Frame(Frame),
    /// The deadline passed first.
    TimedOut,
}

impl Reader {
    /// A reader that refuses payloads longer than `limit` bytes.
    pub(crate) fn new(limit: u64) -> Self {
        Reader {
            limit,
            head: [0; HEADER],
            head_got: 0,
            payload: Vec::new(),
            expected: None,
            fds: Vec::new(),
        }
    }

    /// Reads until a frame is complete or `deadline` passes. `extra` are
    /// descriptors that, once readable, mean no more bytes will come (a
    /// pidfd of the writer, say): then the stream counts as closed if it is
    /// not readable itself.
    pub(crate) fn read(
        &mut self,
        sock: BorrowedFd<'_>,
        extra: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> Result<Step, FrameError> {
        let mut watch = Vec::with_capacity(1 + extra.len());
        watch.push(sock);
        watch.extend_from_slice(extra);
        loop {
            let ready = socket::wait_readable(&watch, deadline)?;
            if !ready.iter().any(|r| *r) {
                return Ok(Step::TimedOut);
            }
            if !ready[0] {
                // The writer is gone and the stream has nothing buffered; a
                // stray copy of the descriptor elsewhere must not hold us.
                if socket::is_readable(sock)? {
                    continue;
                }
                return Err(self.eof());
            }
            if let Some(frame) = self.pump(sock)? {
                return Ok(Step::Frame(frame));
            }
            // A peer that keeps writing never lets the socket run dry:
            // the deadline is checked between pieces, not only when idle.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Step::TimedOut);
            }
        }
    }

    /// Reads what has already arrived, without waiting: a frame once
    /// whole, `None` if more is to come (or nothing is there yet).
    pub(crate) fn read_now(&mut self, sock: BorrowedFd<'_>) -> Result<Option<Frame>, FrameError> {
        self.pump(sock)
    }

    /// A frame carries at most `MAX_FDS` descriptors (a writer attaches
    /// them once, to its first bytes). More, a few with each piece, is a
    /// peer trying to fill our descriptor table: they are closed, and the
    /// stream is garbage.
    fn check_fds(&mut self) -> Result<(), FrameError> {
        if self.fds.len() <= socket::MAX_FDS {
            return Ok(());
        }
        let n = self.fds.len();
        self.fds.clear();
        Err(FrameError::Garbage(format!(
            "{n} descriptors with one frame, more than the {} a frame carries",
            socket::MAX_FDS
        )))
    }

    fn eof(&self) -> FrameError {
        match self.expected {
            None if self.head_got == 0 => FrameError::Closed,
            None => FrameError::Truncated {
                got: self.head_got as u64,
                expected: HEADER as u64,
            },
            Some((_, len)) => FrameError::Truncated {
                got: (HEADER + self.payload.len()) as u64,
                expected: (HEADER + len) as u64,
            },
        }
    }

    /// Reads what is available without blocking, at most about [`CHUNK`]
    /// bytes of payload (so that a caller gets to check its deadline);
    /// returns a frame once whole.
    fn pump(&mut self, sock: BorrowedFd<'_>) -> Result<Option<Frame>, FrameError> {
        let mut budget = CHUNK;
        loop {
            match self.expected {
                None => {
                    let n = match socket::recv(
                        sock,
                        &mut self.head[self.head_got..],
                        &mut self.fds,
                        true,
                    ) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                        // The peer closed with bytes of ours unread: it is gone.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
                        Err(e) => return Err(e.into()),
                    };
                    if n == 0 {
                        return Err(self.eof());
                    }
                    self.check_fds()?;
                    self.head_got += n;
                    if self.head_got < HEADER {
                        continue;
                    }
                    let (kind, len) = parse_header(&self.head, self.limit)?;
                    self.payload = Vec::with_capacity(len.min(CHUNK));
                    self.expected = Some((kind, len));
                }
                Some((kind, len)) => {
                    if self.payload.len() == len {
                        self.expected = None;
                        self.head_got = 0;
                        return Ok(Some(Frame {
                            kind,
                            payload: std::mem::take(&mut self.payload),
                            fds: std::mem::take(&mut self.fds),
                        }));
                    }
                    let have = self.payload.len();
                    let want = (len - have).min(CHUNK.max(self.payload.capacity() - have));
                    self.payload.resize(have + want, 0);
                    let r = socket::recv(sock, &mut self.payload[have..], &mut self.fds, true);
                    match r {
                        Ok(0) => {
                            self.payload.truncate(have);
                            return Err(self.eof());
                        }
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                            self.payload.truncate(have);
                            return Err(self.eof());
                        }
                        Ok(n) => {
                            self.payload.truncate(have + n);
                            self.check_fds()?;
                            budget = budget.saturating_sub(n);
                            if budget == 0 && self.payload.len() < len {
                                return Ok(None);
                            }
                        }
                        Err(e) => {
                            self.payload.truncate(have);
                            if e.kind() == io::ErrorKind::WouldBlock {
                                return Ok(None);
                            }
                            return Err(e.into());
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn descriptors_beyond_one_frame_s_share_are_garbage() {
        // A hostile child sends a frame in pieces, each with descriptors:
        // 40 + 40 with one frame fill the table, 64 at a time.
        let (a, b) = socket::stream_pair().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let dups: Vec<OwnedFd> = (0..40)
            .map(|_| socket::dup(null.as_fd()).unwrap())
            .collect();
        let fds: Vec<BorrowedFd<'_>> = dups.iter().map(AsFd::as_fd).collect();
        socket::send_some(a.as_fd(), &[&header(7, 10)], &fds, false).unwrap();
        socket::send_some(a.as_fd(), &[&[1u8; 5]], &fds, false).unwrap();
        socket::send_some(a.as_fd(), &[&[2u8; 5]], &[], false).unwrap();
        let mut r = Reader::new(1 << 20);
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        match r.read(b.as_fd(), &[], deadline) {
            Err(FrameError::Garbage(why)) => assert!(why.contains("80 descriptors"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(r.fds.is_empty());

        // One frame with its 40 descriptors is fine.
        let (a, b) = socket::stream_pair().unwrap();
        socket::send_some(a.as_fd(), &[&header(7, 3), b"abc"], &fds, false).unwrap();
        let mut r = Reader::new(1 << 20);
        match r.read(b.as_fd(), &[], deadline) {
            Ok(Step::Frame(f)) => {
                assert_eq!(f.payload, b"abc");
                assert_eq!(f.fds.len(), 40);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_peer_that_never_stops_writing_does_not_hold_a_reader_past_its_deadline() {
        let (a, b) = socket::stream_pair().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                // One frame of 64 GiB announced, its bytes sent as fast as
                // they are read.
                let piece = vec![0u8; 1 << 16];
                let _ = socket::send_some(a.as_fd(), &[&header(7, 64 << 30)], &[], false);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if socket::send_some(a.as_fd(), &[&piece], &[], false).is_err() {
                        break;
                    }
                }
            })
        };
        let mut r = Reader::new(u64::MAX);
        let t0 = Instant::now();
        let step = r.read(b.as_fd(), &[], Some(t0 + Duration::from_millis(200)));
        let took = t0.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(b);
        writer.join().unwrap();
        assert!(matches!(step, Ok(Step::TimedOut)), "{step:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
