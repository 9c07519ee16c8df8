//! What a pool worker process runs: its initializer once, then tasks from
//! its link until the link closes or the worker retires.
//!
//! A task is a chunk of items for one function. The worker records in the
//! pool's shared slot table which task and which item it runs (and, when
//! the task has a timeout, since when), so the parent can blame exactly
//! that item if the worker dies, and kill it if the item overruns.

use std::any::Any;
use std::cell::RefCell;
use std::fmt::Display;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::chunking;
use super::link::{self, LinkReader, Outbox};
use super::pod::Block;
use crate::SharedMemory;
use crate::process::PanicReport;
use crate::process::child;
use crate::shm::segment::Segment;
use crate::sys;
use crate::sys::code::{CallLink, Reply};
use crate::sys::shm::ReadMapping;
use crate::wire::{codec, handles};

/// Words per worker in the slot table.
pub(crate) const SLOT_WORDS: usize = 7;
/// Slot word: the running task's id, 0 when none.
pub(crate) const SLOT_TASK: usize = 0;
/// Slot word: the index, within its task, of the running item.
pub(crate) const SLOT_ITEM: usize = 1;
/// Slot word: when the running item started (`monotonic_ns`), if timed.
pub(crate) const SLOT_START: usize = 2;
/// Slot words, one per part of the worker's return area (its four equal
/// parts, in order): the id of the plain-data task whose bare values that
/// part holds, 0 while it is free. A worker with a return area (a block of
/// its own, beside its slot block) sets one, once it has written the
/// values in its part, only while it is 0; the parent clears it once it
/// has copied them. Several parts, so that a worker may end chunks while
/// the parent, short of a processor, still copies the ones before: with
/// one, a third of a trivial map's chunks found it full and went through
/// the link.
pub(crate) const SLOT_RETURNS: [usize; 4] = [3, 4, 5, 6];

/// Bytes of a worker's return area, when the pool gives it one: a default
/// plain-data chunk's values (512 KiB at most) fit in each part. Memory
/// is taken as parts are used.
pub(crate) const RETURN_BYTES: usize = 2 << 20;

/// Reply flags, in the retiring byte, one per part of the return area
/// (as [`SLOT_RETURNS`]): the task's bare values are in that part, not in
/// the reply.
pub(crate) const RETURNED: [u8; 4] = [0x80, 0x40, 0x20, 0x10];

/// Every flag of [`RETURNED`].
pub(crate) const RETURNED_ANY: u8 = 0xf0;

/// Task header flag: record each item's start time (the task has a
/// timeout).
pub(crate) const FLAG_TIMED: u8 = 1;

/// Task header flag: the task is one of a job whose tasks run quickly, so
/// the answers before it may wait to share a write with its own.
pub(crate) const FLAG_QUICK: u8 = 2;

/// Task header flag: the items are preceded by a context: the job index
/// of the first item (u64), a length (u32) and that many bytes, which the
/// task can read while it runs (a cluster task's id and delivery count).
pub(crate) const FLAG_CONTEXT: u8 = 4;

/// Task header flag: a plain-data task whose arguments are in the pool's
/// arena (see `pod::PodArena`): instead of the items, [`ARENA_SPAN`]
/// bytes say where they start in the arena (u64).
pub(crate) const FLAG_ARENA: u8 = 8;

/// Bytes of an arena task's items: one u64 offset (see [`FLAG_ARENA`]).
pub(crate) const ARENA_SPAN: usize = 8;

/// Length of the task header that follows the entry preamble:
/// id (u64), item count (u32), flags (u8).
pub(crate) const TASK_HEADER: usize = 13;

/// Length of the reply header: id (u64), items done (u32), busy
/// nanoseconds (u64), retiring (u8), and how many of the outcomes, from the
/// first, are bare values of successful items (u32); the rest are tagged
/// outcomes.
pub(crate) const REPLY_HEADER: usize = 25;

/// Offset in the reply header of the retiring byte (with the
/// [`RETURNED`] flags).
pub(crate) const REPLY_RETIRING: usize = 20;

/// Why a worker stops taking tasks after the current one.
pub(crate) const RETIRE_NONE: u8 = 0;
/// It has run its `max_tasks_per_child` items.
pub(crate) const RETIRE_TASKS: u8 = 1;
/// Its resident memory passed the limit.
pub(crate) const RETIRE_MEMORY: u8 = 2;

/// How long an answer may wait for others to share its write.
const FLUSH_AFTER_NS: u64 = 500_000;

/// A worker's start argument.
#[derive(Serialize, Deserialize)]
pub(crate) struct Setup<I> {
    pub link: CallLink,
    /// This worker's own slot block (`SLOT_WORDS` words).
    pub slots: SharedMemory,
    pub init: I,
    pub max_tasks: Option<u64>,
    pub memory_limit: Option<u64>,
    /// The pool's plain-data arena, if it has one (see `pod::PodArena`).
    pub arena: Option<Block<ReadMapping>>,
    /// This worker's return area, if the pool gives it one (see
    /// [`SLOT_RETURNS`]).
    pub returns: Option<Block<Segment>>,
}

/// One item's outcome as the worker sends it.
#[derive(Serialize)]
enum OutcomeRef<'a, R: ?Sized> {
    Ok(&'a R),
    Panicked(&'a PanicReport),
    ResultEncode(&'a str),
    ArgumentDecode(&'a str),
}

/// One item's outcome as the parent reads it (same variants, same order).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(crate) enum Outcome<R> {
    Ok(R),
    Panicked(PanicReport),
    ResultEncode(String),
    ArgumentDecode(String),
}

struct Context {
    slots: SharedMemory,
    tasks_left: Option<u64>,
    memory_limit: Option<u64>,
    arena: Option<Arc<ReadMapping>>,
    returns: Option<Arc<Segment>>,
    retire: u8,
    state: Option<Box<dyn Any>>,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
    /// The running chunk's context bytes and its first item's job index.
    static TASK_CONTEXT: RefCell<Option<TaskContext>> = const { RefCell::new(None) };
    /// Items of the running chunk done so far.
    static TASK_DONE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The arguments of the last arena task (see `FLAG_ARENA`), kept for
    /// the next: a fresh buffer each time cost a page fault per page.
    static ARENA_ITEMS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Likewise, the values of the last task that used the return area.
    static RETURN_VALUES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The running item's job index and its chunk's context bytes, inside a
/// task that was sent with a context.
#[cfg(feature = "cluster")]
pub(crate) fn task_context() -> Option<TaskContext> {
    TASK_CONTEXT.with(|c| {
        let c = c.borrow();
        let (first, bytes) = c.as_ref()?;
        Some((
            first.saturating_add(TASK_DONE.with(std::cell::Cell::get)),
            bytes.clone(),
        ))
    })
}

/// A chunk's context: its first item's job index and the bytes.
type TaskContext = (u64, Vec<u8>);

/// Splits a context (see [`FLAG_CONTEXT`]) off the items.
fn split_context(items: &[u8]) -> Option<(TaskContext, &[u8])> {
    let (first, rest) = items.split_first_chunk::<8>()?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (ctx, items) = rest.split_at(len);
    Some(((u64::from_le_bytes(*first), ctx.to_vec()), items))
}

/// Calls `f` with the state the pool's initializer built in this worker,
/// if it is an `S`. Returns `None` outside a pool worker, or when the
/// initializer built another type. (Python keeps such state in globals
/// that the initializer sets.)
///
/// ```
/// use multiproc::Pool;
/// use multiproc::pool::with_state;
///
/// fn load(offset: u64) -> Result<u64, String> {
///     Ok(offset)
/// }
///
/// fn add_offset(x: u64) -> u64 {
///     with_state(|offset: &mut u64| x + *offset).expect("built by `load`")
/// }
///
/// let pool = Pool::builder().workers(2).initializer(load, 100).build()?;
/// assert_eq!(pool.map(add_offset, [1, 2, 3])?, [101, 102, 103]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn with_state<S: 'static, T>(f: impl FnOnce(&mut S) -> T) -> Option<T> {
    // The state is taken out while `f` runs, so `f` may itself call
    // `with_state` (it then sees none) without a double borrow.
    let mut state = CONTEXT.with(|c| c.borrow_mut().as_mut()?.state.take())?;
    let out = state.downcast_mut::<S>().map(f);
    CONTEXT.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.state = Some(state);
        }
    });
    out
}

/// The body of a worker process (named, with the user's initializer as
/// its target, by the pool): runs the initializer, then serves tasks.
pub(crate) fn worker_body<I, S, E>(
    init: fn(I) -> Result<S, E>,
    input: &[u8],
    fds: Vec<OwnedFd>,
) -> Reply
where
    I: DeserializeOwned,
    S: 'static,
    E: Display,
{
    let done = (
        child::kind::OK,
        codec::encode(&()).unwrap_or_default(),
        Vec::new(),
    );
    let Ok(setup) = handles::decode::<Setup<I>>(input, fds) else {
        return done;
    };
    // Ctrl-C in a terminal reaches the whole process group: the parent
    // decides what happens to its workers.
    sys::process::ignore_interrupts(true);
    let link_fd = setup.link.fd();
    // A panic here, as in a task, is reported by the parent (a
    // `PoolError::Initializer` with its message and location), not printed.
    let state = match child::quiet_body(|| child::catch(|| init(setup.init))) {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => return init_failed(link_fd, &e.to_string(), done),
        Err(panic) => return init_failed(link_fd, &format!("panicked: {panic}"), done),
    };
    CONTEXT.with(|c| {
        *c.borrow_mut() = Some(Context {
            slots: setup.slots,
            tasks_left: setup.max_tasks,
            memory_limit: setup.memory_limit,
            arena: setup.arena.and_then(Block::into_mapped).map(Arc::new),
            returns: setup.returns.and_then(Block::into_mapped).map(Arc::new),
            retire: RETIRE_NONE,
            state: Some(Box::new(state)),
        })
    });
    let mut out = Vec::new();
    link::push_frame(&mut out, link::READY, &[]);
    if link::write(link_fd, &out).is_err() {
        return done;
    }
    // Under panic = "abort", a task's panic report reaches the scheduler
    // before the worker dies, so the item fails as Panicked, not as a
    // worker killed by SIGABRT.
    child::set_last_words(link_fd, link::LAST_WORDS);
    serve(&setup.link);
    CONTEXT.with(|c| c.borrow_mut().take());
    done
}

fn init_failed(link_fd: std::os::fd::BorrowedFd<'_>, message: &str, done: Reply) -> Reply {
    let mut out = Vec::new();
    link::push_frame(&mut out, link::INIT_FAILED, &[message.as_bytes()]);
    let _ = link::write(link_fd, &out);
    done
}

/// Answers waiting to share a write, and the thread that sends them when
/// the task after them runs long.
#[derive(Default)]
struct Posted {
    out: Mutex<Outbox>,
    /// Signalled when the worker starts running tasks again after it
    /// waited for them, and when serving ends.
    wake: Condvar,
    /// The worker is running tasks (not waiting for the parent's).
    busy: AtomicBool,
    done: AtomicBool,
}

impl Posted {
    fn out(&self) -> MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The courier: while the worker runs tasks, looks every
/// [`FLUSH_AFTER_NS`] for answers that have waited that long and sends
/// them, so that a quick item's result never waits for the end of a long
/// item that follows it. Asleep while the worker waits for tasks (it sent
/// everything before it began to wait).
fn courier(posted: &Posted, fd: std::os::fd::BorrowedFd<'_>) {
    let mut out = posted.out();
    while !posted.done.load(Ordering::Relaxed) {
        if !posted.busy.load(Ordering::Relaxed) {
            out = posted.wake.wait(out).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        out = posted
            .wake
            .wait_timeout(out, Duration::from_nanos(FLUSH_AFTER_NS))
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if out.waiting_longer_than(FLUSH_AFTER_NS) && out.flush(fd).is_err() {
            return;
        }
    }
}

/// Runs tasks until the link closes, the parent speaks garbage, or this
/// worker retires. Replies are sent when no further task is buffered, so a
/// burst of small tasks is answered with one write; answers held back for
/// a task thought quick go out after about [`FLUSH_AFTER_NS`] at the
/// latest, sent by a courier thread if that task is still running.
fn serve(link: &CallLink) {
    let posted = Posted::default();
    std::thread::scope(|scope| {
        let mut courier_started = false;
        serve_with(link, &posted, || {
            if !courier_started {
                let posted = &posted;
                let fd = link.fd();
                let started = std::thread::Builder::new()
                    .name("multiproc-pool-courier".into())
                    .spawn_scoped(scope, move || courier(posted, fd));
                // Without a courier, answers are only held back briefly.
                courier_started = started.is_ok();
            }
        });
        posted.done.store(true, Ordering::Relaxed);
        posted.wake.notify_one();
    });
}

/// [`serve`]'s loop; `holding` runs when answers are first held back.
fn serve_with(link: &CallLink, posted: &Posted, mut holding: impl FnMut()) {
    let mut reader = LinkReader::default();
    loop {
        let frame = match reader.next() {
            Ok(Some(f)) => f,
            Ok(None) => {
                {
                    let mut out = posted.out();
                    if out.flush(link.fd()).is_err() || retiring() {
                        return;
                    }
                    posted.busy.store(false, Ordering::Relaxed);
                }
                match reader.fill(link.fd()) {
                    Ok(true) => {
                        let _out = posted.out();
                        posted.busy.store(true, Ordering::Relaxed);
                        posted.wake.notify_one();
                        continue;
                    }
                    _ => return,
                }
            }
            Err(_) => return,
        };
        let (kind, range) = frame;
        let payload = &reader.buffer()[range];
        if kind != link::TASK || payload.len() < sys::code::PREAMBLE + TASK_HEADER {
            return;
        }
        let Some(entry) = link.entry(&payload[..sys::code::PREAMBLE]) else {
            return;
        };
        // Answers wait to share a write only with those of quick tasks,
        // and only briefly: a long task must not hold back the results of
        // the quick ones before it (the courier sends them if it does).
        let quick = payload[sys::code::PREAMBLE + 12] & FLAG_QUICK != 0;
        {
            let mut out = posted.out();
            if (!quick || out.waiting_longer_than(FLUSH_AFTER_NS)) && out.flush(link.fd()).is_err()
            {
                return;
            }
            if !out.is_empty() {
                holding();
            }
        }
        let (_, reply, _) = entry.call(&payload[sys::code::PREAMBLE..], Vec::new());
        // Values in a part of the return area go at once, even a quick
        // task's: the parent frees the part only once it has the answer.
        let returned = reply
            .get(REPLY_RETIRING)
            .is_some_and(|&flags| flags & RETURNED_ANY != 0);
        let mut out = posted.out();
        if out.push(link.fd(), link::RESULT, reply).is_err()
            || (returned && out.flush(link.fd()).is_err())
        {
            return;
        }
        drop(out);
        if retiring() {
            let _ = posted.out().flush(link.fd());
            return;
        }
    }
}

fn retiring() -> bool {
    CONTEXT.with(|c| c.borrow().as_ref().is_some_and(|c| c.retire != RETIRE_NONE))
}

/// The body of one task: decodes its items one by one, runs `f` on each
/// (a panic fails only that item), and encodes the outcomes. Named, with
/// the user's function as its target, in every task the pool sends.
pub(crate) fn chunk_body<A: DeserializeOwned, R: Serialize>(
    f: fn(A) -> R,
    input: &[u8],
    _fds: Vec<OwnedFd>,
) -> Reply {
    // `serve` passes at least a header; an empty reply (which the parent
    // takes for a protocol error) if not.
    let Some((header, items)) = input.split_first_chunk::<TASK_HEADER>() else {
        return (link::RESULT, Vec::new(), Vec::new());
    };
    let [i0, i1, i2, i3, i4, i5, i6, i7, c0, c1, c2, c3, flags] = *header;
    let id = u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
    let count = u32::from_le_bytes([c0, c1, c2, c3]);
    let timed = flags & FLAG_TIMED != 0;
    let items = if flags & FLAG_CONTEXT != 0 {
        let Some((ctx, items)) = split_context(items) else {
            return (link::RESULT, Vec::new(), Vec::new());
        };
        TASK_CONTEXT.with(|c| *c.borrow_mut() = Some(ctx));
        items
    } else {
        TASK_CONTEXT.with(|c| *c.borrow_mut() = None);
        items
    };
    TASK_DONE.with(|d| d.set(0));
    // The count is the parent's word, but a capacity need not trust it:
    // items of zero bytes (`()`) are possible, so it is capped, not checked.
    let expected = (count as usize).min(items.len().max(1 << 16));
    let mut out = Vec::with_capacity(REPLY_HEADER + items.len() + 2 * expected);
    out.resize(REPLY_HEADER, 0);
    out[..8].copy_from_slice(&id.to_le_bytes());
    let started = sys::process::monotonic_ns();
    // What the loop needs, taken once per task.
    let Some((slots, mut tasks_left, memory_limit)) = CONTEXT.with(|c| {
        let c = c.borrow();
        let ctx = c.as_ref()?;
        Some((ctx.slots.clone(), ctx.tasks_left, ctx.memory_limit))
    }) else {
        return (link::RESULT, out, Vec::new());
    };
    let Some(slot) = slots.as_atomic_u64().get(..SLOT_WORDS) else {
        return (link::RESULT, out, Vec::new());
    };
    // A start time is cleared before the item (or task) it belongs to
    // changes, so the parent never pairs an item with another's start.
    slot[SLOT_START].store(0, Ordering::Release);
    slot[SLOT_ITEM].store(0, Ordering::Release);
    slot[SLOT_TASK].store(id, Ordering::Release);
    let mut done = 0u32;
    let mut decode_failed: Option<String> = None;
    let mut last_memory_check = started;
    let mut retire = RETIRE_NONE;
    // How many leading outcomes are bare values (`None`: all so far).
    let mut plain: Option<u32> = None;
    child::quiet_body(|| {
        let mut items = codec::Decoder::new(items);
        let mut enc = codec::Encoder::new(&mut out);
        while done < count {
            if timed {
                slot[SLOT_START].store(0, Ordering::Release);
            }
            slot[SLOT_ITEM].store(u64::from(done), Ordering::Release);
            if timed {
                slot[SLOT_START].store(sys::process::monotonic_ns(), Ordering::Release);
            }
            if let Some(message) = &decode_failed {
                plain.get_or_insert(done);
                encode_outcome::<R>(&mut enc, &OutcomeRef::ArgumentDecode(message));
            } else {
                match items.next::<A>() {
                    Ok(arg) => {
                        match child::catch(|| f(arg)) {
                            // While every item has succeeded, values go
                            // bare, without an outcome tag.
                            Ok(value) if plain.is_none() && enc.push(&value).is_ok() => {}
                            Ok(value) => {
                                plain.get_or_insert(done);
                                if let Err(e) = enc.push(&OutcomeRef::Ok(&value)) {
                                    let message = codec::EncodeError {
                                        type_name: std::any::type_name::<R>(),
                                        message: e.message,
                                    }
                                    .to_string();
                                    encode_outcome::<R>(
                                        &mut enc,
                                        &OutcomeRef::ResultEncode(&message),
                                    );
                                }
                            }
                            Err(report) => {
                                plain.get_or_insert(done);
                                encode_outcome::<R>(&mut enc, &OutcomeRef::Panicked(&report))
                            }
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        plain.get_or_insert(done);
                        encode_outcome::<R>(&mut enc, &OutcomeRef::ArgumentDecode(&message));
                        decode_failed = Some(message);
                    }
                }
            }
            done += 1;
            TASK_DONE.with(|d| d.set(u64::from(done)));
            // Retirement: after this item, hand the rest of the chunk back.
            if let Some(left) = &mut tasks_left {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    retire = RETIRE_TASKS;
                }
            }
            if let Some(limit) = memory_limit {
                let now = sys::process::monotonic_ns();
                // Reading /proc costs microseconds: at most every 5 ms, and
                // after the last item.
                if done == count || now.saturating_sub(last_memory_check) > 5_000_000 {
                    last_memory_check = now;
                    if sys::process::resident_bytes().is_some_and(|rss| rss > limit) {
                        retire = RETIRE_MEMORY;
                    }
                }
            }
            if retire != RETIRE_NONE {
                break;
            }
        }
    });
    slot[SLOT_TASK].store(0, Ordering::Release);
    TASK_CONTEXT.with(|c| *c.borrow_mut() = None);
    CONTEXT.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.tasks_left = tasks_left;
            ctx.retire = retire;
        }
    });
    let busy = sys::process::monotonic_ns().saturating_sub(started);
    out[8..12].copy_from_slice(&done.to_le_bytes());
    out[12..20].copy_from_slice(&busy.to_le_bytes());
    out[REPLY_RETIRING] = retire;
    out[21..25].copy_from_slice(&plain.unwrap_or(done).to_le_bytes());
    (link::RESULT, out, Vec::new())
}

fn encode_outcome<R>(enc: &mut codec::Encoder<'_>, outcome: &OutcomeRef<'_, R>)
where
    R: Serialize + ?Sized,
{
    // These variants hold only strings and reports: they always encode.
    let _ = enc.push(outcome);
}

/// How often (in items) a plain-data task looks at the clock for its
/// memory limit: the clock costs more than a trivial item.
const POD_CLOCK_EVERY: usize = 1024;

/// What a plain-data task's loops share.
struct PodRun<'a, A, R> {
    f: fn(A) -> R,
    items: &'a [u8],
    slot: &'a [std::sync::atomic::AtomicU64],
    timed: bool,
    memory_limit: Option<u64>,
    last_memory_check: u64,
}

impl<A: bytemuck::Pod, R: bytemuck::Pod> PodRun<'_, A, R> {
    /// Publishes that item `i` runs (see `chunk_body`).
    #[inline(always)]
    fn publish(&self, i: usize) {
        if self.timed {
            self.slot[SLOT_START].store(0, Ordering::Release);
            self.slot[SLOT_ITEM].store(i as u64, Ordering::Release);
            self.slot[SLOT_START].store(sys::process::monotonic_ns(), Ordering::Release);
        } else {
            // Read by the parent only once this process has exited, or
            // with a task word it re-reads (`check_running`).
            self.slot[SLOT_ITEM].store(i as u64, Ordering::Relaxed);
        }
    }

    /// Item `i`'s argument: `items` holds `count` of them (checked).
    #[inline(always)]
    fn arg(&self, i: usize) -> A {
        let size = std::mem::size_of::<A>();
        bytemuck::pod_read_unaligned(&self.items[i * size..(i + 1) * size])
    }

    /// Whether the worker's memory passed its limit, looked at every
    /// [`POD_CLOCK_EVERY`] items, at most every 5 ms, and after the last.
    #[inline(always)]
    fn over_memory(&mut self, done: usize, last: bool) -> bool {
        let Some(limit) = self.memory_limit else {
            return false;
        };
        if !last && !done.is_multiple_of(POD_CLOCK_EVERY) {
            return false;
        }
        let now = sys::process::monotonic_ns();
        if !last && now.saturating_sub(self.last_memory_check) <= 5_000_000 {
            return false;
        }
        self.last_memory_check = now;
        sys::process::resident_bytes().is_some_and(|rss| rss > limit)
    }
}

/// Copies an arena task's `count` arguments of `size` bytes out of
/// `arena` into `fetched`, from where its [`ARENA_SPAN`] bytes `span` say.
fn arena_items(
    arena: Option<&ReadMapping>,
    span: &[u8],
    count: usize,
    size: usize,
    fetched: &mut Vec<u8>,
) -> Result<(), String> {
    let arena = arena.ok_or("this worker has no plain-data arena")?;
    let span: [u8; ARENA_SPAN] = span
        .try_into()
        .map_err(|_| format!("an arena task of {} bytes", span.len()))?;
    let args = usize::try_from(u64::from_le_bytes(span))
        .map_err(|_| "an arena offset past the address space".to_string())?;
    // Checked against the arena before anything is allocated.
    let len = count
        .checked_mul(size)
        .filter(|&len| args.checked_add(len).is_some_and(|end| end <= arena.len()))
        .ok_or_else(|| format!("{count} items of {size} bytes at {args} overrun the arena"))?;
    // Reused from task to task: only growth is zeroed (the read
    // overwrites the rest).
    fetched.resize(len, 0);
    if !arena.read(args, fetched) {
        return Err("the arena's arguments are out of its bounds".into());
    }
    Ok(())
}

/// The reply of an arena task that cannot run: each of its `count` items
/// fails with an argument error saying `why`.
fn arena_refused(id: u64, count: usize, why: &str) -> Reply {
    let mut out = vec![0; REPLY_HEADER];
    out[..8].copy_from_slice(&id.to_le_bytes());
    let mut enc = codec::Encoder::new(&mut out);
    for _ in 0..count {
        encode_outcome::<[u8]>(&mut enc, &OutcomeRef::ArgumentDecode(why));
    }
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    out[8..12].copy_from_slice(&count.to_le_bytes());
    out[REPLY_RETIRING] = RETIRE_NONE;
    // No bare values: `plain` (bytes 21..25) stays 0.
    (link::RESULT, out, Vec::new())
}

/// The body of one plain-data task (`map_pod`): the items are `A`'s bytes
/// back to back, read unaligned, no decoding; while every item succeeds
/// the reply holds `R`'s bytes back to back, no encoding. An item that
/// panics fails alone, as in [`chunk_body`]: from it on, outcomes are
/// tagged as there, a value going as its bytes (`Outcome<Vec<u8>>`).
///
/// The loop keeps its state in locals and writes each value into a
/// reply sized beforehand, under one unwinding guard: a trivial item
/// costs a few nanoseconds.
pub(crate) fn pod_chunk_body<A: bytemuck::Pod, R: bytemuck::Pod>(
    f: fn(A) -> R,
    input: &[u8],
    _fds: Vec<OwnedFd>,
) -> Reply {
    let empty = || (link::RESULT, Vec::new(), Vec::new());
    let Some((header, items)) = input.split_first_chunk::<TASK_HEADER>() else {
        return empty();
    };
    let [i0, i1, i2, i3, i4, i5, i6, i7, c0, c1, c2, c3, flags] = *header;
    let id = u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
    let count = u32::from_le_bytes([c0, c1, c2, c3]) as usize;
    if flags & FLAG_CONTEXT != 0 {
        // Plain-data tasks run on local pools only, which send no context.
        return empty();
    }
    TASK_CONTEXT.with(|c| *c.borrow_mut() = None);
    TASK_DONE.with(|d| d.set(0));
    let size_a = std::mem::size_of::<A>();
    let size_r = std::mem::size_of::<R>();
    let mut out = Vec::new();
    let started = sys::process::monotonic_ns();
    let Some((slots, tasks_left, memory_limit, arena, return_area)) = CONTEXT.with(|c| {
        let c = c.borrow();
        let ctx = c.as_ref()?;
        Some((
            ctx.slots.clone(),
            ctx.tasks_left,
            ctx.memory_limit,
            ctx.arena.clone(),
            ctx.returns.clone(),
        ))
    }) else {
        out.resize(REPLY_HEADER, 0);
        out[..8].copy_from_slice(&id.to_le_bytes());
        return (link::RESULT, out, Vec::new());
    };
    let Some(slot) = slots.as_atomic_u64().get(..SLOT_WORDS) else {
        return empty();
    };
    // With a return area, the values are made in a buffer kept from task
    // to task, then copied into a free part of it at the end (into the
    // reply if no part is free). `returns`: the room in each part.
    let returns = return_area
        .as_ref()
        .map_or(0, |area| area.len() / SLOT_RETURNS.len());
    let mut scratch = (returns > 0).then(|| RETURN_VALUES.with(RefCell::take));
    let mut in_scratch = false;
    // An arena task's items are copied out of the arena (a shared block:
    // never read in place).
    let mut fetched = ARENA_ITEMS.with(RefCell::take);
    let items = if flags & FLAG_ARENA != 0 {
        if let Err(why) = arena_items(arena.as_deref(), items, count, size_a, &mut fetched) {
            ARENA_ITEMS.with(|b| *b.borrow_mut() = fetched);
            return arena_refused(id, count, &why);
        }
        &fetched[..]
    } else {
        items
    };
    // The parent's word, checked all the same: a short buffer is never read
    // as items.
    let args_ok = count.checked_mul(size_a) == Some(items.len());
    // Items it may run before it retires (`max_tasks_per_child`): one at
    // least, as `chunk_body` runs one before it counts.
    let limit = tasks_left.map_or(count, |left| count.min(left.max(1) as usize));
    // A reply for every value at once when the items are sane (their
    // number is then bounded by the bytes that came, or by MAX_BYTES for
    // zero-sized ones): the loop writes into it without growing it.
    let values = if args_ok {
        limit
            .saturating_mul(size_r)
            .min(chunking::MAX_BYTES.max(items.len()) * 2)
    } else {
        0
    };
    // Values bound for the return area are made in `scratch`, not here.
    let in_reply = if scratch.is_some() && values <= returns {
        0
    } else {
        values
    };
    out.reserve_exact(REPLY_HEADER + in_reply);
    out.resize(REPLY_HEADER, 0);
    out[..8].copy_from_slice(&id.to_le_bytes());
    slot[SLOT_START].store(0, Ordering::Release);
    slot[SLOT_ITEM].store(0, Ordering::Release);
    slot[SLOT_TASK].store(id, Ordering::Release);
    let mut run = PodRun::<A, R> {
        f,
        items,
        slot,
        timed: flags & FLAG_TIMED != 0,
        memory_limit,
        last_memory_check: started,
    };
    let mut done = 0usize;
    let mut retire = RETIRE_NONE;
    // How many leading outcomes are bare values (`None`: all of them).
    let mut plain: Option<usize> = None;
    child::quiet_body(|| {
        if !args_ok {
            let message = format!(
                "{} bytes are not {count} items of {size_a} bytes ({})",
                items.len(),
                std::any::type_name::<A>()
            );
            plain = Some(0);
            let mut enc = codec::Encoder::new(&mut out);
            while done < count {
                encode_outcome::<[u8]>(&mut enc, &OutcomeRef::ArgumentDecode(&message));
                done += 1;
            }
            return;
        }
        // The fast path: bare values, in place, until the end, a panic, or
        // the memory limit.
        let fits = limit.checked_mul(size_r) == Some(values);
        if fits {
            let dst = match scratch.as_mut().filter(|_| values <= returns) {
                Some(buf) => {
                    in_scratch = true;
                    buf.resize(values, 0);
                    &mut buf[..]
                }
                None => {
                    out.resize(REPLY_HEADER + values, 0);
                    &mut out[REPLY_HEADER..]
                }
            };
            // The item running, for a panic to be pinned on: a store per
            // item, as cheap as it gets.
            let reached = std::cell::Cell::new(0usize);
            let caught = child::catch(|| {
                if !run.timed && run.memory_limit.is_none() && size_a > 0 && size_r > 0 {
                    // The common case, in a loop whose state stays in
                    // registers across the call of `f`: no start times,
                    // no memory checks, no bounds checks.
                    let (f, running) = (run.f, &run.slot[SLOT_ITEM]);
                    let args = run.items[..limit * size_a].chunks_exact(size_a);
                    let outs = dst[..limit * size_r].chunks_exact_mut(size_r);
                    for (i, (arg, out)) in args.zip(outs).enumerate() {
                        reached.set(i);
                        running.store(i as u64, Ordering::Relaxed);
                        let value = f(bytemuck::pod_read_unaligned(arg));
                        out.copy_from_slice(bytemuck::bytes_of(&value));
                    }
                    return (limit, false);
                }
                let mut i = 0;
                while i < limit {
                    reached.set(i);
                    run.publish(i);
                    let value = (run.f)(run.arg(i));
                    dst[i * size_r..(i + 1) * size_r].copy_from_slice(bytemuck::bytes_of(&value));
                    i += 1;
                    if run.over_memory(i, i == limit) {
                        return (i, true);
                    }
                }
                (i, false)
            });
            match caught {
                Ok((i, over)) => {
                    done = i;
                    out.truncate(REPLY_HEADER + i * size_r);
                    if over {
                        retire = RETIRE_MEMORY;
                    }
                }
                Err(report) => {
                    let at = reached.get();
                    plain = Some(at);
                    out.truncate(REPLY_HEADER + at * size_r);
                    let mut enc = codec::Encoder::new(&mut out);
                    encode_outcome::<[u8]>(&mut enc, &OutcomeRef::Panicked(&report));
                    done = at + 1;
                    if run.over_memory(done, done == limit) {
                        retire = RETIRE_MEMORY;
                    }
                }
            }
        }
        // The slow path, item by item, tagged: after a panic (or if the
        // reply could not be sized).
        while done < limit && retire == RETIRE_NONE {
            run.publish(done);
            let outcome = child::catch(|| (run.f)(run.arg(done)));
            match (&outcome, plain) {
                (Ok(value), None) => out.extend_from_slice(bytemuck::bytes_of(value)),
                (Ok(value), Some(_)) => encode_outcome::<[u8]>(
                    &mut codec::Encoder::new(&mut out),
                    &OutcomeRef::Ok(bytemuck::bytes_of(value)),
                ),
                (Err(report), _) => {
                    plain.get_or_insert(done);
                    encode_outcome::<[u8]>(
                        &mut codec::Encoder::new(&mut out),
                        &OutcomeRef::Panicked(report),
                    );
                }
            }
            done += 1;
            if run.over_memory(done, done == limit) {
                retire = RETIRE_MEMORY;
            }
        }
    });
    if retire == RETIRE_NONE && tasks_left.is_some_and(|left| left as usize <= done) {
        retire = RETIRE_TASKS;
    }
    slot[SLOT_TASK].store(0, Ordering::Release);
    CONTEXT.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.tasks_left = tasks_left.map(|left| left.saturating_sub(done as u64));
            ctx.retire = retire;
        }
    });
    let busy = sys::process::monotonic_ns().saturating_sub(started);
    // `count` came as a u32: so do `done` and `plain`, which never pass it.
    let done = u32::try_from(done).unwrap_or(u32::MAX);
    let plain = plain.map_or(done, |p| u32::try_from(p).unwrap_or(u32::MAX));
    if in_scratch {
        // The bare values go to the return area, or (if it will not take
        // them) into the reply after all.
        let n = plain as usize * size_r;
        let values = scratch
            .as_deref()
            .and_then(|buf| buf.get(..n))
            .unwrap_or_default();
        let free = SLOT_RETURNS
            .iter()
            .position(|&word| slot[word].load(Ordering::Acquire) == 0);
        let placed = free.filter(|&part| {
            n > 0
                && n <= returns
                && return_area
                    .as_ref()
                    .is_some_and(|area| area.write(part * returns, values))
        });
        match placed {
            Some(part) => {
                slot[SLOT_RETURNS[part]].store(id, Ordering::Release);
                retire |= RETURNED[part];
            }
            None => {
                out.splice(REPLY_HEADER..REPLY_HEADER, values.iter().copied());
            }
        }
    }
    if let Some(buf) = scratch {
        RETURN_VALUES.with(|b| *b.borrow_mut() = buf);
    }
    out[8..12].copy_from_slice(&done.to_le_bytes());
    out[12..20].copy_from_slice(&busy.to_le_bytes());
    out[REPLY_RETIRING] = retire;
    out[21..25].copy_from_slice(&plain.to_le_bytes());
    ARENA_ITEMS.with(|b| *b.borrow_mut() = fetched);
    (link::RESULT, out, Vec::new())
}
