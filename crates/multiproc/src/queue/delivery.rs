//! Acknowledged gets: [`Queue::get_delivery`](super::Queue::get_delivery)
//! hands out a [`Delivery`]; a delivery that its consumer neither
//! acknowledges nor gives back before dying is given to another consumer.
//!
//! Each queue has a journal beside its ring (`shm::ring`, "the journal
//! side"): a consumer copies the message it takes into a journal record
//! (state `TAKEN`, its pid and identity) before the message leaves the
//! ring, all under the ring's consumer lock. A message the journal does not
//! hold itself (out of line, or larger than the journal allows) is stored
//! in the journal's own mailbox under the record's position, copied from
//! the queue's mailbox before the original is dropped. Acknowledging marks
//! the record `DONE`. Whoever finds a record `TAKEN` by a process that is
//! certainly gone (a consumer whose queue looks empty, at most every
//! [`SCAN_EVERY`]) claims it (`RECOVERING`), puts the message back into
//! the queue, and marks it `DONE`. A consumer whose journal is full (a
//! dead consumer's record at its front keeps every later one) takes such
//! a delivery over instead: it becomes that consumer's own (`TAKEN` by
//! it), which needs no room in the queue.
//!
//! So nothing is lost, and a message is delivered twice only when a
//! consumer died holding it unacknowledged (or died between copying it and
//! retiring the original, or while putting it back).

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Shared;
use super::mailbox::{Fetched, Mailbox};
use crate::shm::ring::{Entry, Ring, Source, delivery};
use crate::sys;

/// Bytes of a queue's journal: deliveries taken and not yet acknowledged
/// (a consumer that finds it full waits for acknowledgements).
pub(crate) const JOURNAL_BYTES: usize = 256 << 10;

/// How often at most a consumer that finds the queue empty looks for
/// deliveries of dead consumers.
pub(crate) const SCAN_EVERY: Duration = Duration::from_millis(20);

/// A queue's journal of deliveries, and the mailbox for the messages it
/// does not hold itself.
#[derive(Debug)]
pub(crate) struct Journal {
    pub(crate) ring: Ring,
    pub(crate) mailbox: Mailbox,
    /// When this process last looked for dead consumers' deliveries
    /// (`monotonic_ns`).
    last_scan: AtomicU64,
}

impl Journal {
    /// A new, empty journal.
    pub(crate) fn create() -> io::Result<Journal> {
        Ok(Journal::from_parts(
            Ring::create(JOURNAL_BYTES, 0)?,
            Mailbox::new()?,
        ))
    }

    /// The journal of a queue received from another process.
    pub(crate) fn attach(ring: OwnedFd, tx: OwnedFd, rx: OwnedFd) -> io::Result<Journal> {
        Ok(Journal::from_parts(Ring::attach(ring)?, Mailbox { tx, rx }))
    }

    fn from_parts(ring: Ring, mailbox: Mailbox) -> Journal {
        Journal {
            ring,
            mailbox,
            last_scan: AtomicU64::new(0),
        }
    }

    /// Its descriptors, to send with the queue.
    pub(crate) fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.ring.fd(),
            self.mailbox.tx.as_fd(),
            self.mailbox.rx.as_fd(),
        ]
    }

    /// Stores a copy of the message `source` under journal position `pos`
    /// (under the queue's consumer lock, before the journal record is
    /// published); returns the message for the consumer, `None` if it is
    /// gone (an out-of-line message whose consumer died).
    pub(crate) fn store(
        &self,
        queue_mailbox: &Mailbox,
        pos: u64,
        source: Source<'_>,
    ) -> io::Result<Option<Fetched>> {
        let fetched = match source {
            Source::Bytes(bytes) => Fetched::Inline(bytes.to_vec(), Vec::new()),
            Source::Large(id) => match queue_mailbox.peek(id)? {
                Some(f) => f,
                None => return Ok(None),
            },
        };
        // Room is kept for one more message, so that clearing can always
        // move a copy still needed from the front to the back (see
        // `purge`): a full mailbox whose front copy a live consumer holds
        // would otherwise stay full until it acknowledges.
        if !self.mailbox.has_room_for(&fetched)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.mailbox.send_copy(pos, &fetched)?;
        Ok(Some(fetched))
    }

    /// The message stored under `pos`, leaving it stored: it stays where
    /// it is, and the messages before it go round to the back, or go if no
    /// record needs them. Under the journal's consumer lock. A message
    /// needed is copied to the back before it leaves the front: a process
    /// killed in between leaves two copies (dropped together once no
    /// record needs them), never none; so does a copy that fails (the
    /// mailbox is full: then this fails, to be tried again).
    fn fetch(&self, pos: u64, queue: &Ring) -> io::Result<Option<Fetched>> {
        let mut seen = 0usize;
        while let Some((id, fetched)) = self.mailbox.peek_first()? {
            if id == pos {
                return Ok(Some(fetched));
            }
            if self.ring.journal_holds(id, queue) {
                self.mailbox.send_copy(id, &fetched)?;
            }
            self.mailbox.drop_first()?;
            seen += 1;
            if seen > 1 << 16 {
                break;
            }
        }
        Ok(None)
    }

    /// Drops the stored messages at the front that no record needs. One
    /// still needed stops it, unless the mailbox is more than half full:
    /// then it goes round to the back (copied there before it leaves the
    /// front, as in `fetch`: a process killed in between leaves two
    /// copies, never none), so that the ones behind it can go; a consumer
    /// that holds one out-of-line delivery while it takes and acknowledges
    /// others would otherwise fill the mailbox with their copies behind
    /// it (some 48 of 3000 bytes) and stop every acknowledged get until it
    /// acknowledges. Stores leave room for that copy (`store`). It stops
    /// at a message it already moved (every one left is needed), and after
    /// some thousands (more than the mailbox holds, unless a hostile peer
    /// keeps sending, which must not keep the caller here).
    fn purge(&self, queue: &Ring) {
        let mut moved = HashSet::new();
        for _ in 0..4096 {
            let id = match self.mailbox.first_id() {
                Ok(Some(id)) => id,
                _ => return,
            };
            if !self.ring.journal_holds(id, queue) {
                let _ = self.mailbox.take_first();
                continue;
            }
            if moved.contains(&id) || !self.mailbox.is_crowded().unwrap_or(false) {
                return;
            }
            match self.mailbox.peek_first() {
                Ok(Some((first, fetched))) if first == id => {
                    if self.mailbox.send_copy(id, &fetched).is_err()
                        || self.mailbox.drop_first().is_err()
                    {
                        return;
                    }
                    moved.insert(id);
                }
                _ => return,
            }
        }
    }

    /// For a consumer that found the journal full: drops the stored
    /// messages at the front of the mailbox that no record needs, if no
    /// other process holds the journal now. An acknowledgement clears what
    /// it leaves behind, but a consumer killed between the two leaves its
    /// copy (and those behind it) in the mailbox; once enough of them fill
    /// it and no delivery is left to acknowledge, every consumer would
    /// find the journal full for good.
    pub(crate) fn clear_stale(&self, queue: &Ring) {
        let _ = self.ring.journal_try_exclusive(|| self.purge(queue));
    }

    /// Whether it is time to look for dead consumers' deliveries.
    pub(crate) fn scan_due(&self) -> bool {
        if self.ring.journal_is_empty() {
            return false;
        }
        let now = sys::process::monotonic_ns();
        let last = self.last_scan.load(Ordering::Relaxed);
        let every = SCAN_EVERY.as_nanos() as u64;
        now.saturating_sub(last) >= every
            && self
                .last_scan
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Shared {
    /// Puts back into the queue the deliveries that dead consumers held.
    /// Returns how many went back.
    pub(crate) fn recover_deliveries(&self) -> usize {
        let entries = self.journal.ring.journal_take_dead();
        let deadline = Instant::now() + Duration::from_millis(10);
        entries
            .into_iter()
            .filter(|e| self.give_back(e, deadline))
            .count()
    }

    /// The message of the claimed delivery `entry` (one stored in the
    /// journal's mailbox stays stored).
    fn load(&self, entry: &Entry) -> Loaded {
        let j = &self.journal;
        if entry.what == delivery::BYTES {
            return Loaded::Message(entry.bytes.clone(), Vec::new());
        }
        match j.ring.journal_exclusive(|| j.fetch(entry.pos, &self.ring)) {
            Some(Ok(Some(fetched))) => match fetched.finish() {
                Ok((bytes, fds)) => Loaded::Message(bytes, fds),
                // The stored copy stays: another try may read it.
                Err(_) => Loaded::Later,
            },
            Some(Ok(None)) => Loaded::Gone,
            // The journal's lock stayed held (its holder may be a process
            // that died with it, recovered by a later try), or the mailbox
            // failed: not a reason to drop the delivery.
            None | Some(Err(_)) => Loaded::Later,
        }
    }

    /// For a consumer whose journal is full: takes over one delivery that
    /// a dead consumer held (it becomes this process's delivery, in place
    /// in the journal) and gives the others back to the queue (those the
    /// queue has no room for wait for the next scan). Putting a delivery
    /// back needs room in the queue, taking it over does not: a journal
    /// whose front a dead consumer holds would otherwise stay full for as
    /// long as the queue does, and a full queue whose consumers all wait
    /// for the journal stays full.
    ///
    /// Returns the message (encoded, with its handles), its journal
    /// position, and whether the journal's mailbox stores it.
    pub(crate) fn adopt_dead_delivery(&self) -> Option<(Vec<u8>, Vec<OwnedFd>, u64, bool)> {
        let entries = self.journal.ring.journal_take_dead();
        let deadline = Instant::now() + Duration::from_millis(10);
        let mut adopted = None;
        for entry in entries {
            if adopted.is_some() {
                self.give_back(&entry, deadline);
                continue;
            }
            let (bytes, fds) = match self.load(&entry) {
                Loaded::Message(bytes, fds) => (bytes, fds),
                // Its message is gone: nothing to deliver.
                Loaded::Gone => {
                    let _ = self
                        .journal
                        .ring
                        .journal_done(entry.pos, delivery::RECOVERING);
                    continue;
                }
                Loaded::Later => {
                    self.journal.ring.journal_unclaim(entry.pos);
                    continue;
                }
            };
            if self.journal.ring.journal_adopt(entry.pos) {
                adopted = Some((bytes, fds, entry.pos, entry.what != delivery::BYTES));
            }
        }
        adopted
    }

    /// Puts the claimed delivery `entry` back into the queue (waiting for
    /// room until `deadline`) and marks it done; if the queue has no room
    /// by then, makes it `TAKEN` by its holder again (a dead holder's is
    /// claimed again by the next scan).
    fn give_back(&self, entry: &Entry, deadline: Instant) -> bool {
        let j = &self.journal;
        let (bytes, fds) = match self.load(entry) {
            Loaded::Message(bytes, fds) => (bytes, fds),
            // Its message is gone: nothing to give back.
            Loaded::Gone => {
                let _ = j.ring.journal_done(entry.pos, delivery::RECOVERING);
                return false;
            }
            Loaded::Later => {
                j.ring.journal_unclaim(entry.pos);
                return false;
            }
        };
        let put = self.put_again(&bytes, &fds, deadline);
        if put.is_err() {
            j.ring.journal_unclaim(entry.pos);
            return false;
        }
        let _ = j.ring.journal_done(entry.pos, delivery::RECOVERING);
        j.ring.journal_reclaim();
        if entry.what != delivery::BYTES {
            let _ = j.ring.journal_exclusive(|| j.purge(&self.ring));
        }
        true
    }
}

/// What [`Shared::load`] found of a claimed delivery's message.
enum Loaded {
    /// The message, encoded, and its handles.
    Message(Vec<u8>, Vec<OwnedFd>),
    /// Gone (taken with a consumer that died before storing it).
    Gone,
    /// Not readable now (the journal's lock stayed held, or its mailbox
    /// failed): the delivery is left for another try.
    Later,
}

/// Why acknowledging a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The queue's journal no longer records this delivery as held by
    /// this process: another process wrote into the queue's shared memory
    /// (the message may be delivered again).
    #[error("the delivery is no longer recorded as held by this process")]
    NotHeld,
    /// The queue had no room for the delivery given back within
    /// [`REQUEUE_WAIT`] (or, rarely, another process held the journal
    /// where an out-of-line message is kept for 100 ms): it stays recorded
    /// as held by this process, and is delivered again only once this
    /// process has exited.
    #[error("the queue had no room to take the delivery back")]
    Full,
}

/// How long [`Delivery::requeue`] (and dropping an unacknowledged delivery)
/// waits for room in a full queue.
pub const REQUEUE_WAIT: Duration = Duration::from_secs(1);

/// A value taken from a queue with an acknowledged get
/// ([`Queue::get_delivery`](super::Queue::get_delivery)): it stays
/// recorded as held by this process until [`ack`](Delivery::ack)ed. If
/// this process dies first, the value is delivered again to another
/// consumer; if the delivery is dropped (or [`requeue`](Delivery::requeue)d)
/// without an acknowledgement, it goes back to the queue at once.
pub struct Delivery<T> {
    value: Option<T>,
    shared: Arc<Shared>,
    pos: u64,
    joinable: bool,
    /// Whether the journal stores the message in its mailbox (then an
    /// acknowledgement also clears what the mailbox no longer needs).
    elsewhere: bool,
}

impl<T> Delivery<T> {
    #[inline]
    pub(crate) fn new(
        value: T,
        shared: Arc<Shared>,
        pos: u64,
        joinable: bool,
        elsewhere: bool,
    ) -> Self {
        Delivery {
            value: Some(value),
            shared,
            pos,
            joinable,
            elsewhere,
        }
    }

    /// Acknowledges the delivery: it is done, and will not be delivered
    /// again. Returns the value. On a `JoinableQueue` this is also the
    /// value's `task_done`.
    #[inline]
    pub fn ack(mut self) -> Result<T, AckError> {
        let value = self.value.take();
        let j = &self.shared.journal;
        let done = j.ring.journal_done(self.pos, delivery::TAKEN);
        j.ring.journal_reclaim_lazily();
        if !done {
            return Err(AckError::NotHeld);
        }
        if self.elsewhere {
            let _ = j.ring.journal_exclusive(|| j.purge(&self.shared.ring));
        }
        if self.joinable {
            let _ = self.shared.ring.task_done();
        }
        value.ok_or(AckError::NotHeld)
    }

    /// Gives the delivery back to the queue now, to be delivered again
    /// (to any consumer, this one included), at the back of the queue. If
    /// the queue stays full for [`REQUEUE_WAIT`], fails with
    /// [`AckError::Full`] (see there).
    pub fn requeue(mut self) -> Result<(), AckError> {
        self.give_back()
    }

    fn give_back(&mut self) -> Result<(), AckError> {
        self.value = None;
        let Some(entry) = self.shared.journal.ring.journal_give_back(self.pos) else {
            return Err(AckError::NotHeld);
        };
        if self.shared.give_back(&entry, Instant::now() + REQUEUE_WAIT) {
            Ok(())
        } else {
            Err(AckError::Full)
        }
    }
}

impl<T> Deref for Delivery<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
            .as_ref()
            .expect("a delivery holds its value until it is consumed")
    }
}

impl<T> Drop for Delivery<T> {
    fn drop(&mut self) {
        if self.value.is_some() {
            let _ = self.give_back();
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("value", &self.value)
            .field("pos", &self.pos)
            .finish()
    }
}
