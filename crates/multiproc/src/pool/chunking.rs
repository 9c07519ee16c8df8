//! How many items go into one task.
//!
//! * A map over a known number of items makes [`PER_WORKER`] chunks per
//!   worker, and at least [`MIN_CHUNKS`] (or one per item). Python makes four; a chunk costs only microseconds here, and
//!   more of them let the caller's encoding, the workers' running and the
//!   results' decoding overlap, and balance uneven items better.
//! * A stream (`imap`) of unknown length starts with single items and grows
//!   chunks until one takes about [`TARGET`] to run, measured from the
//!   results that come back.
//! * An explicit chunk size always wins. A job with a timeout runs one item
//!   per task unless told otherwise, so the timeout applies to each item
//!   and a killed worker takes only that item with it.
//! * Whatever the count, a chunk closes once its encoded items pass
//!   [`MAX_BYTES`], so huge items do not make huge messages.
//! * A plain-data map (`map_pod`) sizes its chunks by bytes ([`pod_size`]):
//!   about [`POD_CHUNK_BYTES`] of arguments or results each (64Ki items of
//!   8 bytes), fewer when that leaves under [`POD_PER_WORKER`] chunks per
//!   worker. Its items cost nothing to encode, so a chunk costs only its
//!   system calls and the scheduler's work: few large ones amortize them.
//!   An explicit size wins (up to [`MAX_BYTES`] of items), and a timeout
//!   does not make chunks of one: the worker publishes which item runs and
//!   since when, so the timeout still applies to each item.

use std::time::Duration;

/// Chunks per worker for a map of known length.
pub(crate) const PER_WORKER: usize = 16;
/// Fewest chunks of a map (when it has that many items): with few workers,
/// a map of a few hundred heavy items would otherwise end with one worker
/// idle while the other finishes a long chunk.
const MIN_CHUNKS: usize = 64;
/// How long a chunk should take to run, for streams.
pub(crate) const TARGET: Duration = Duration::from_millis(2);
/// Most encoded bytes in one chunk.
pub(crate) const MAX_BYTES: usize = 4 << 20;
/// Most items in one chunk of a stream.
const MAX_STREAM: usize = 4096;

/// About how many bytes of arguments (or of results, whichever is larger)
/// one plain-data chunk holds.
pub(crate) const POD_CHUNK_BYTES: usize = 512 << 10;
/// Fewest chunks per worker of a plain-data map (when it has the items),
/// so that the workers start early and finish together.
pub(crate) const POD_PER_WORKER: usize = 4;

/// Items per chunk of a plain-data map of `len` items of `item_bytes` bytes
/// (the larger of argument and result) on `workers` workers, given an
/// explicit size.
pub(crate) fn pod_size(
    explicit: Option<usize>,
    len: usize,
    workers: usize,
    item_bytes: usize,
) -> usize {
    let item_bytes = item_bytes.max(1);
    // A chunk's item count goes as a u32.
    let most = (MAX_BYTES / item_bytes).clamp(1, u32::MAX as usize);
    match explicit {
        Some(n) => n.clamp(1, most),
        None => {
            let by_bytes = POD_CHUNK_BYTES / item_bytes;
            let balanced = len.div_ceil(workers.max(1) * POD_PER_WORKER);
            by_bytes.min(balanced).clamp(1, most)
        }
    }
}

/// Chooses chunk sizes for one job.
#[derive(Debug, Clone)]
pub(crate) enum Chunker {
    /// Always this many.
    Fixed(usize),
    /// Grows with the measured time per item.
    Adaptive {
        /// The size to use next.
        size: usize,
    },
}

impl Chunker {
    /// The chunker for a job of `len` items (if known) on `workers`
    /// workers, given an explicit size and whether tasks have a timeout.
    pub(crate) fn new(
        explicit: Option<usize>,
        len: Option<usize>,
        workers: usize,
        timed: bool,
    ) -> Self {
        match (explicit, len) {
            (Some(n), _) => Chunker::Fixed(n.max(1)),
            (None, _) if timed => Chunker::Fixed(1),
            (None, Some(len)) => {
                let chunks = (workers.max(1) * PER_WORKER).max(len.min(MIN_CHUNKS));
                Chunker::Fixed(len.div_ceil(chunks).max(1))
            }
            (None, None) => Chunker::Adaptive { size: 1 },
        }
    }

    /// Items in the next chunk.
    pub(crate) fn size(&self) -> usize {
        match self {
            Chunker::Fixed(n) => *n,
            Chunker::Adaptive { size } => *size,
        }
    }

    /// Learns from a finished chunk: `items` ran in `busy`.
    pub(crate) fn observe(&mut self, items: usize, busy: Duration) {
        if let Chunker::Adaptive { size } = self {
            if items == 0 {
                return;
            }
            let per_item = busy.as_nanos().max(1) / items as u128;
            let want = (TARGET.as_nanos() / per_item).clamp(1, MAX_STREAM as u128) as usize;
            // Grow at most fourfold at a time; shrink at once.
            *size = want.min(size.saturating_mul(4)).max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_length_makes_chunks_per_worker() {
        assert_eq!(
            Chunker::new(None, Some(1_000_000), 2, false).size(),
            1_000_000usize.div_ceil(MIN_CHUNKS)
        );
        assert_eq!(
            Chunker::new(None, Some(1_000_000), 32, false).size(),
            1_000_000usize.div_ceil(32 * PER_WORKER)
        );
        assert_eq!(Chunker::new(None, Some(256), 2, false).size(), 4);
        assert_eq!(Chunker::new(None, Some(40), 2, false).size(), 1);
        assert_eq!(Chunker::new(None, Some(3), 4, false).size(), 1);
        assert_eq!(Chunker::new(Some(7), Some(1000), 2, true).size(), 7);
        assert_eq!(Chunker::new(None, Some(1000), 2, true).size(), 1);
        assert_eq!(Chunker::new(Some(0), None, 2, false).size(), 1);
    }

    #[test]
    fn plain_data_chunks_go_by_bytes() {
        // 1M u64: 64Ki items (512 KiB) per chunk, 16 chunks.
        assert_eq!(pod_size(None, 1_000_000, 2, 8), 65_536);
        // Few items: four chunks per worker.
        assert_eq!(pod_size(None, 1000, 2, 8), 125);
        assert_eq!(pod_size(None, 3, 2, 8), 1);
        assert_eq!(pod_size(None, 0, 2, 8), 1);
        // Large items: one per chunk at least, never past MAX_BYTES.
        assert_eq!(pod_size(None, 100, 2, 1 << 20), 1);
        assert_eq!(pod_size(Some(1000), 100, 2, 1 << 20), 4);
        assert_eq!(pod_size(Some(0), 100, 2, 8), 1);
        // Zero-sized items count as one byte.
        assert_eq!(pod_size(None, 1 << 30, 1, 0), POD_CHUNK_BYTES);
    }

    #[test]
    fn streams_grow_toward_the_target_and_shrink_back() {
        let mut c = Chunker::new(None, None, 2, false);
        assert_eq!(c.size(), 1);
        c.observe(1, Duration::from_micros(1));
        assert_eq!(c.size(), 4);
        for _ in 0..20 {
            let n = c.size();
            c.observe(n, Duration::from_micros(n as u64));
        }
        assert_eq!(c.size(), 2000);
        c.observe(10, Duration::from_millis(10));
        assert_eq!(c.size(), 2);
    }
}
