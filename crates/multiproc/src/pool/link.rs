//! The pool's task link between the parent and one worker: frames (the
//! wire layer's 16-byte header) read through a buffer, so that many small
//! tasks or results cost one system call, not one each.
//!
//! Parent → worker: [`TASK`] frames. Worker → parent: [`READY`] once its
//! initializer succeeded, [`INIT_FAILED`] if it did not, then one
//! [`RESULT`] per task, in the order the tasks came.

use std::io;
use std::ops::Range;
use std::os::fd::BorrowedFd;

use crate::sys;
use crate::wire::FrameError;
use crate::wire::frame::{self, HEADER};

/// Parent → worker: `[entry preamble: 32][task header][items]`.
pub(crate) const TASK: u8 = 1;
/// Worker → parent: the initializer succeeded; tasks may come.
pub(crate) const READY: u8 = 2;
/// Worker → parent: the initializer failed; the payload is the message.
pub(crate) const INIT_FAILED: u8 = 3;
/// Worker → parent: the outcome of one task (see `worker::Reply`).
pub(crate) const RESULT: u8 = 4;
/// Worker → parent: the report of a panic that is about to abort the
/// worker (programs built with `panic = "abort"`).
pub(crate) const LAST_WORDS: u8 = 5;

/// Largest frame either side accepts.
pub(crate) const MAX_FRAME: u64 = 1 << 34;

/// How much a read asks for at least.
const READ_SIZE: usize = 256 << 10;

/// Appends one frame to `out`.
pub(crate) fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[&[u8]]) {
    let len = payload.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&frame::header(kind, len));
    for p in payload {
        out.extend_from_slice(p);
    }
}

/// Frames waiting to be written together, their payloads not copied.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    frames: Vec<([u8; HEADER], Vec<u8>)>,
    /// When the oldest waiting frame was added (`monotonic_ns`).
    since: u64,
}

impl Outbox {
    /// Most frames sent in one write.
    const BATCH: usize = 256;

    /// Adds a frame; writes the batch if it is full.
    pub(crate) fn push(
        &mut self,
        fd: BorrowedFd<'_>,
        kind: u8,
        payload: Vec<u8>,
    ) -> io::Result<()> {
        if self.frames.is_empty() {
            self.since = sys::process::monotonic_ns();
        }
        self.frames
            .push((frame::header(kind, payload.len()), payload));
        if self.frames.len() >= Self::BATCH {
            self.flush(fd)?;
        }
        Ok(())
    }

    /// Whether no frame waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether a frame has waited more than `ns` nanoseconds.
    pub(crate) fn waiting_longer_than(&self, ns: u64) -> bool {
        !self.frames.is_empty() && sys::process::monotonic_ns().saturating_sub(self.since) > ns
    }

    /// Writes every waiting frame.
    pub(crate) fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.frames.is_empty() {
            return Ok(());
        }
        let slices: Vec<&[u8]> = self
            .frames
            .iter()
            .flat_map(|(h, p)| [&h[..], &p[..]])
            .collect();
        let r = sys::socket::send_all(fd, &slices, &[]);
        self.frames.clear();
        r
    }
}

/// Writes every byte of `bytes`; a peer that has gone is an error.
pub(crate) fn write(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    sys::socket::send_all(fd, &[bytes], &[])
}

/// Reads frames through a buffer.
#[derive(Debug, Default)]
pub(crate) struct LinkReader {
    buf: Vec<u8>,
    pos: usize,
}

impl LinkReader {
    /// Whether a whole frame is buffered.
    pub(crate) fn has_frame(&self) -> bool {
        let avail = &self.buf[self.pos..];
        if avail.len() < HEADER {
            return false;
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&avail[8..16]);
        avail.len() - HEADER >= u64::from_le_bytes(len) as usize
    }

    /// Reads what the socket has (blocking until something arrives).
    /// `Ok(false)` at the end of the stream.
    ///
    /// The buffer grows only as bytes arrive (at most doubling what is
    /// buffered per call), never to the length a header announces: a
    /// worker runs user code, and a forged length must not make the parent
    /// reserve memory the worker never sent.
    pub(crate) fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut want = READ_SIZE;
        let avail = &self.buf[self.pos..];
        if avail.len() >= HEADER {
            let mut len = [0u8; 8];
            len.copy_from_slice(&avail[8..16]);
            let missing = (HEADER as u64)
                .saturating_add(u64::from_le_bytes(len))
                .saturating_sub(avail.len() as u64);
            let step = u64::try_from(avail.len()).unwrap_or(u64::MAX);
            want = want.max(missing.min(MAX_FRAME).min(step) as usize);
        }
        // Moves the unread bytes to the front only when the room is needed.
        if self.buf.capacity() - self.buf.len() < want && self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(want);
        Ok(sys::socket::recv_into_spare(fd, &mut self.buf, want)? > 0)
    }

    /// The next whole frame: its kind and where its payload lies in
    /// [`buffer`](Self::buffer). `Ok(None)` if it has not all arrived.
    pub(crate) fn next(&mut self) -> Result<Option<(u8, Range<usize>)>, FrameError> {
        if !self.has_frame() {
            let avail = &self.buf[self.pos..];
            if avail.len() >= HEADER {
                // Checks the header now, so garbage is caught early.
                let mut h = [0u8; HEADER];
                h.copy_from_slice(&avail[..HEADER]);
                frame::parse_header(&h, MAX_FRAME)?;
            }
            return Ok(None);
        }
        let mut h = [0u8; HEADER];
        h.copy_from_slice(&self.buf[self.pos..self.pos + HEADER]);
        let (kind, len) = frame::parse_header(&h, MAX_FRAME)?;
        let start = self.pos + HEADER;
        self.pos = start + len;
        Ok(Some((kind, start..start + len)))
    }

    /// The buffer that [`next`](Self::next)'s ranges point into.
    pub(crate) fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes buffered but not yet returned as frames.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn frames_split_and_joined_arrive_whole() {
        let (a, b) = sys::socket::stream_pair().unwrap();
        let mut out = Vec::new();
        push_frame(&mut out, TASK, &[b"hello", b" world"]);
        push_frame(&mut out, RESULT, &[&[]]);
        push_frame(&mut out, READY, &[&vec![7u8; 600_000]]);
        let writer = std::thread::spawn(move || {
            for piece in out.chunks(1000) {
                write(a.as_fd(), piece).unwrap();
            }
        });
        let mut r = LinkReader::default();
        let mut got = Vec::new();
        while got.len() < 3 {
            while let Some((kind, range)) = r.next().unwrap() {
                got.push((kind, r.buffer()[range].to_vec()));
            }
            if got.len() < 3 {
                assert!(r.fill(b.as_fd()).unwrap());
            }
        }
        writer.join().unwrap();
        assert_eq!(got[0], (TASK, b"hello world".to_vec()));
        assert_eq!(got[1], (RESULT, vec![]));
        assert_eq!(got[2].1.len(), 600_000);
        assert_eq!(r.pending(), 0);
        assert!(!r.fill(b.as_fd()).unwrap());
    }

    #[test]
    fn a_forged_length_reserves_only_what_arrived() {
        // A worker (user code) announces the largest frame allowed and
        // sends only its header: the parent must not reserve 16 GiB.
        let (a, b) = sys::socket::stream_pair().unwrap();
        write(a.as_fd(), &frame::header(RESULT, MAX_FRAME as usize)).unwrap();
        let mut r = LinkReader::default();
        assert!(r.fill(b.as_fd()).unwrap());
        assert!(matches!(r.next(), Ok(None)));
        // Then a little of the payload, several times.
        for _ in 0..4 {
            write(a.as_fd(), &[7u8; 1000]).unwrap();
            assert!(r.fill(b.as_fd()).unwrap());
            assert!(matches!(r.next(), Ok(None)));
            assert!(
                r.buf.capacity() <= 4 * READ_SIZE,
                "reserved {} bytes for {} received",
                r.buf.capacity(),
                r.pending()
            );
        }
        // A length past the limit is an error, not an allocation.
        let (a, b) = sys::socket::stream_pair().unwrap();
        write(a.as_fd(), &frame::header(RESULT, usize::MAX)).unwrap();
        let mut r = LinkReader::default();
        assert!(r.fill(b.as_fd()).unwrap());
        assert!(matches!(r.next(), Err(FrameError::TooLarge { .. })));
        assert!(r.buf.capacity() <= 4 * READ_SIZE);
    }

    #[test]
    fn garbage_is_an_error() {
        let (a, b) = sys::socket::stream_pair().unwrap();
        write(a.as_fd(), &[0xAB; 40]).unwrap();
        let mut r = LinkReader::default();
        r.fill(b.as_fd()).unwrap();
        assert!(matches!(r.next(), Err(FrameError::Garbage(_))));
    }
}
