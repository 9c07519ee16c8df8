//! Python's pickles as a message format, without ever running one.
//!
//! CPython's `Connection.send(obj)` pickles `obj`; `recv()` unpickles,
//! which may import and call anything the sender named: a pickle is a
//! program. Here a pickle is only ever *data*:
//!
//! 1. [`check`] walks the opcodes first (as `pickletools.genops` does) and
//!    refuses every opcode that names a global or calls one (`GLOBAL`,
//!    `STACK_GLOBAL`, `REDUCE`, `BUILD`, `INST`, `OBJ`, `NEWOBJ`,
//!    `NEWOBJ_EX`), persistent ids (`PERSID`, `BINPERSID`), extension
//!    codes (`EXT1`, `EXT2`, `EXT4`) and out-of-band buffers
//!    (`NEXT_BUFFER`, `READONLY_BUFFER`), with [`PickleError::Forbidden`]
//!    naming the opcode and its offset. Every length an opcode declares is
//!    checked against the bytes that are there, and the value the pickle
//!    builds is measured before anything is built: memo references
//!    (`GET`) are copies once decoded, so a few bytes could otherwise ask
//!    for gigabytes (a tuple of two references to the tuple before it,
//!    thirty times over). A pickle whose shared references would make its
//!    value more than eight times larger than it is without them
//!    ([`expansion_limit`]) is [`PickleError::TooLarge`].
//! 2. Only then does the maintained `serde-pickle` crate decode it, into
//!    any `T: Deserialize`.
//!
//! Values are sent as protocol 3 pickles (CPython 3.0 and later read them)
//! made by `serde-pickle`, which never writes an opcode that imports or
//! calls: a peer can load them with an unpickler that allows no globals.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a pickle was refused or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickleError {
    /// The pickle holds an opcode that imports, calls or refers to
    /// something outside the data (never run, never decoded).
    #[error("pickle opcode {opcode} at byte {offset} is refused: it names or calls code")]
    Forbidden {
        /// The opcode's name, as `pickletools` spells it.
        opcode: &'static str,
        /// Its offset in the message.
        offset: usize,
    },
    /// The value the pickle describes would take more memory than allowed
    /// (estimated before anything is built).
    #[error("the pickle's value would take about {expanded} bytes, more than the {limit} allowed")]
    TooLarge {
        /// The estimate, in bytes.
        expanded: u64,
        /// What was allowed.
        limit: u64,
    },
    /// Not a well-formed pickle: an unknown opcode, a truncated argument,
    /// a stack that does not hold what an opcode needs.
    #[error("malformed pickle at byte {offset}: {reason}")]
    Malformed {
        /// Where it went wrong.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// A well-formed pickle whose value is not a `type_name` (or a value
    /// that cannot be pickled).
    #[error("pickle of `{type_name}`: {message}")]
    Value {
        /// The Rust type.
        type_name: &'static str,
        /// What `serde-pickle` said.
        message: String,
    },
}

/// Estimated bytes of one decoded value besides its payload.
const NODE: u64 = 48;

/// How large a value with shared references may be, given its size with
/// each shared value counted once (`unshared`): eight times that, and
/// 1 MiB more. Without shared references a pickle describes at most about
/// one value per byte, so what it costs to decode grows with its length
/// (bounded by the connection's message size limit); memo references
/// (`GET`) alone could multiply that without bound, and CPython emits them
/// only for an object that appears more than once in what was sent.
pub fn expansion_limit(unshared: u64) -> u64 {
    unshared.saturating_mul(8).saturating_add(1 << 20)
}

/// Encodes `value` as a protocol 3 pickle.
pub fn to_pickle<T: Serialize>(value: &T) -> Result<Vec<u8>, PickleError> {
    serde_pickle::to_vec(value, serde_pickle::SerOptions::new()).map_err(|e| PickleError::Value {
        type_name: std::any::type_name::<T>(),
        message: e.to_string(),
    })
}

/// Decodes a pickle into a `T`, after [`check`] found nothing in it that
/// could run and a value of a bounded size.
pub fn from_pickle<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PickleError> {
    check(bytes)?;
    serde_pickle::from_slice(bytes, serde_pickle::DeOptions::new()).map_err(|e| {
        PickleError::Value {
            type_name: std::any::type_name::<T>(),
            message: e.to_string(),
        }
    })
}

/// Encodes a dynamic [`serde_pickle::Value`] (tuples, sets and big
/// integers stay what they are) as a protocol 3 pickle.
pub fn value_to_pickle(value: &serde_pickle::Value) -> Result<Vec<u8>, PickleError> {
    serde_pickle::value_to_vec(value, serde_pickle::SerOptions::new()).map_err(|e| {
        PickleError::Value {
            type_name: "serde_pickle::Value",
            message: e.to_string(),
        }
    })
}

/// Decodes a pickle of any shape into a dynamic [`serde_pickle::Value`],
/// after [`check`].
pub fn value_from_pickle(bytes: &[u8]) -> Result<serde_pickle::Value, PickleError> {
    check(bytes)?;
    serde_pickle::value_from_slice(bytes, serde_pickle::DeOptions::new()).map_err(|e| {
        PickleError::Value {
            type_name: "serde_pickle::Value",
            message: e.to_string(),
        }
    })
}

/// What an opcode's argument is.
#[derive(Clone, Copy)]
enum Arg {
    /// None.
    No,
    /// A fixed number of bytes.
    Fixed(usize),
    /// Bytes up to a newline.
    Line,
    /// Two lines (`GLOBAL`, `INST`: refused before they are read).
    TwoLines,
    /// A length of 1, 4 or 8 little-endian bytes, then that many bytes.
    Counted(usize),
}

/// What an opcode does to the stack, for the measuring walk.
#[derive(Clone, Copy)]
enum Effect {
    /// Refused (see the module docs).
    Forbidden,
    /// Pushes a scalar whose payload is the argument's bytes.
    Scalar,
    /// Pushes an empty container.
    Empty,
    /// Pushes a mark.
    Mark,
    /// Pops the top (or, on an empty stack, to the mark).
    Pop,
    /// Pops to the mark.
    PopMark,
    /// Pushes the top again.
    Dup,
    /// Pops to the mark and pushes a container of what it popped.
    Collect,
    /// Pops `n` and pushes a tuple of them.
    Tuple(usize),
    /// Pops `n` and adds them to the container below.
    Add(usize),
    /// Pops to the mark and adds what it popped to the container below.
    AddMarked,
    /// Stores the top in the memo under the argument's number
    /// (`MEMOIZE`: the next number).
    Put,
    /// Pushes the memo entry the argument names.
    Get,
    /// `PROTO`, `FRAME`: nothing on the stack.
    Nothing,
    /// `STOP`.
    Stop,
}

/// The opcode `op`: its name, argument and effect; `None` for an unknown one.
fn opcode(op: u8) -> Option<(&'static str, Arg, Effect)> {
    use Arg::{Counted, Fixed, Line, No, TwoLines};
    use Effect::*;
    Some(match op {
        b'(' => ("MARK", No, Mark),
        b'.' => ("STOP", No, Stop),
        b'0' => ("POP", No, Pop),
        b'1' => ("POP_MARK", No, PopMark),
        b'2' => ("DUP", No, Dup),
        b'F' => ("FLOAT", Line, Scalar),
        b'I' => ("INT", Line, Scalar),
        b'J' => ("BININT", Fixed(4), Scalar),
        b'K' => ("BININT1", Fixed(1), Scalar),
        b'L' => ("LONG", Line, Scalar),
        b'M' => ("BININT2", Fixed(2), Scalar),
        b'N' => ("NONE", No, Scalar),
        b'P' => ("PERSID", Line, Forbidden),
        b'Q' => ("BINPERSID", No, Forbidden),
        b'R' => ("REDUCE", No, Forbidden),
        b'S' => ("STRING", Line, Scalar),
        b'T' => ("BINSTRING", Counted(4), Scalar),
        b'U' => ("SHORT_BINSTRING", Counted(1), Scalar),
        b'V' => ("UNICODE", Line, Scalar),
        b'X' => ("BINUNICODE", Counted(4), Scalar),
        b'a' => ("APPEND", No, Add(1)),
        b'b' => ("BUILD", No, Forbidden),
        b'c' => ("GLOBAL", TwoLines, Forbidden),
        b'd' => ("DICT", No, Collect),
        b'}' => ("EMPTY_DICT", No, Empty),
        b'e' => ("APPENDS", No, AddMarked),
        b'g' => ("GET", Line, Get),
        b'h' => ("BINGET", Fixed(1), Get),
        b'i' => ("INST", TwoLines, Forbidden),
        b'j' => ("LONG_BINGET", Fixed(4), Get),
        b'l' => ("LIST", No, Collect),
        b']' => ("EMPTY_LIST", No, Empty),
        b'o' => ("OBJ", No, Forbidden),
        b'p' => ("PUT", Line, Put),
        b'q' => ("BINPUT", Fixed(1), Put),
        b'r' => ("LONG_BINPUT", Fixed(4), Put),
        b's' => ("SETITEM", No, Add(2)),
        b't' => ("TUPLE", No, Collect),
        b')' => ("EMPTY_TUPLE", No, Empty),
        b'u' => ("SETITEMS", No, AddMarked),
        b'G' => ("BINFLOAT", Fixed(8), Scalar),
        0x80 => ("PROTO", Fixed(1), Nothing),
        0x81 => ("NEWOBJ", No, Forbidden),
        0x82 => ("EXT1", Fixed(1), Forbidden),
        0x83 => ("EXT2", Fixed(2), Forbidden),
        0x84 => ("EXT4", Fixed(4), Forbidden),
        0x85 => ("TUPLE1", No, Tuple(1)),
        0x86 => ("TUPLE2", No, Tuple(2)),
        0x87 => ("TUPLE3", No, Tuple(3)),
        0x88 => ("NEWTRUE", No, Scalar),
        0x89 => ("NEWFALSE", No, Scalar),
        0x8a => ("LONG1", Counted(1), Scalar),
        0x8b => ("LONG4", Counted(4), Scalar),
        b'B' => ("BINBYTES", Counted(4), Scalar),
        b'C' => ("SHORT_BINBYTES", Counted(1), Scalar),
        0x8c => ("SHORT_BINUNICODE", Counted(1), Scalar),
        0x8d => ("BINUNICODE8", Counted(8), Scalar),
        0x8e => ("BINBYTES8", Counted(8), Scalar),
        0x8f => ("EMPTY_SET", No, Empty),
        0x90 => ("ADDITEMS", No, AddMarked),
        0x91 => ("FROZENSET", No, Collect),
        0x92 => ("NEWOBJ_EX", No, Forbidden),
        0x93 => ("STACK_GLOBAL", No, Forbidden),
        0x94 => ("MEMOIZE", No, Put),
        0x95 => ("FRAME", Fixed(8), Nothing),
        0x96 => ("BYTEARRAY8", Counted(8), Scalar),
        0x97 => ("NEXT_BUFFER", No, Forbidden),
        0x98 => ("READONLY_BUFFER", No, Forbidden),
        _ => return None,
    })
}

/// A stack entry of the measuring walk: a scalar (only its cost matters),
/// or a container (an index into the arena of containers built so far).
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Scalar(u64),
    Container(usize),
}

/// A container of the measuring walk: its own cost with its scalars', and
/// the containers it holds (a shared one counted once per reference, as it
/// will be copied).
struct Node {
    cost: u64,
    children: Vec<usize>,
}

/// The measuring walk's state.
#[derive(Default)]
struct Walk {
    nodes: Vec<Node>,
    stack: Vec<Slot>,
    /// Where each mark is in `stack` (marks are not stack entries here).
    marks: Vec<usize>,
    memo: std::collections::HashMap<u64, Slot>,
    /// Every value's cost counted once: scalars and containers made.
    unshared: u64,
}

impl Walk {
    fn scalar(&mut self, cost: u64) {
        self.unshared = self.unshared.saturating_add(cost);
        self.stack.push(Slot::Scalar(cost));
    }

    /// A new container holding `items`.
    fn container(&mut self, items: &[Slot]) {
        self.unshared = self.unshared.saturating_add(NODE);
        let id = self.nodes.len();
        self.nodes.push(Node {
            cost: NODE,
            children: Vec::new(),
        });
        self.add(id, items);
        self.stack.push(Slot::Container(id));
    }

    /// Adds `items` to container `id`.
    fn add(&mut self, id: usize, items: &[Slot]) {
        for item in items {
            match *item {
                Slot::Scalar(c) => self.nodes[id].cost = self.nodes[id].cost.saturating_add(c),
                Slot::Container(c) => self.nodes[id].children.push(c),
            }
        }
    }

    /// The items above the innermost mark, which is removed.
    fn pop_mark(&mut self) -> Option<Vec<Slot>> {
        let mark = self.marks.pop()?;
        Some(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn pop(&mut self) -> Option<Slot> {
        // A value below the innermost mark is not this opcode's to take.
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return None;
        }
        self.stack.pop()
    }

    fn top(&self) -> Option<Slot> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return None;
        }
        self.stack.last().copied()
    }
}

/// Walks `bytes` as the unpickler would, without building anything:
/// refuses what could run, checks every declared length, and measures the
/// value. `Ok` means `serde-pickle` may decode it, and holds the estimate
/// of what the decoded value takes (48 bytes a value, plus the bytes of
/// strings, bytes and long integers; a shared value counted once per
/// reference), at most [`expansion_limit`] of the same count without
/// sharing.
pub fn check(bytes: &[u8]) -> Result<u64, PickleError> {
    let mut w = Walk::default();
    let mut at = 0usize;
    let malformed = |offset: usize, reason: &str| PickleError::Malformed {
        offset,
        reason: reason.to_string(),
    };
    loop {
        let start = at;
        let Some(&op) = bytes.get(at) else {
            return Err(malformed(at, "no STOP before the end"));
        };
        at += 1;
        let Some((name, arg, effect)) = opcode(op) else {
            return Err(malformed(start, &format!("unknown opcode {op:#04x}")));
        };
        if let Effect::Forbidden = effect {
            return Err(PickleError::Forbidden {
                opcode: name,
                offset: start,
            });
        }
        // The argument, bounds-checked.
        let rest = &bytes[at..];
        let (payload, used): (&[u8], usize) = match arg {
            Arg::No => (&[], 0),
            Arg::Fixed(n) => match rest.get(..n) {
                Some(p) => (p, n),
                None => return Err(malformed(start, &format!("{name}: truncated argument"))),
            },
            Arg::Line | Arg::TwoLines => match rest.iter().position(|&b| b == b'\n') {
                Some(end) => (&rest[..end], end + 1),
                None => return Err(malformed(start, &format!("{name}: no end of line"))),
            },
            Arg::Counted(width) => {
                let Some(count) = rest.get(..width) else {
                    return Err(malformed(start, &format!("{name}: truncated length")));
                };
                let mut le = [0u8; 8];
                le[..width].copy_from_slice(count);
                let n = u64::from_le_bytes(le);
                // `BINSTRING` and `LONG4` lengths are signed.
                if width == 4 && n > i32::MAX as u64 && matches!(op, b'T' | 0x8b) {
                    return Err(malformed(start, &format!("{name}: negative length")));
                }
                let body = usize::try_from(n)
                    .ok()
                    .and_then(|n| rest.get(width..width.checked_add(n)?));
                match body {
                    Some(p) => (p, width + p.len()),
                    None => {
                        return Err(malformed(
                            start,
                            &format!("{name}: declares {n} bytes, fewer are there"),
                        ));
                    }
                }
            }
        };
        at += used;
        let no_value = || malformed(start, &format!("{name}: no value on the stack"));
        let no_mark = || malformed(start, &format!("{name}: no mark on the stack"));
        let not_container = || malformed(start, &format!("{name}: not into a container"));
        match effect {
            Effect::Forbidden => {
                return Err(PickleError::Forbidden {
                    opcode: name,
                    offset: start,
                });
            }
            Effect::Scalar => w.scalar(NODE + payload.len() as u64),
            Effect::Empty => w.container(&[]),
            Effect::Mark => w.marks.push(w.stack.len()),
            Effect::Pop => {
                if w.pop().is_none() {
                    // Python's `POP` on an empty stack (above the mark)
                    // pops the mark.
                    w.pop_mark().ok_or_else(no_value)?;
                }
            }
            Effect::PopMark => {
                w.pop_mark().ok_or_else(no_mark)?;
            }
            Effect::Dup => {
                let top = w.top().ok_or_else(no_value)?;
                w.stack.push(top);
            }
            Effect::Collect => {
                let items = w.pop_mark().ok_or_else(no_mark)?;
                w.container(&items);
            }
            Effect::Tuple(n) => {
                let mut items = [Slot::Scalar(0); 3];
                for item in items[..n].iter_mut().rev() {
                    *item = w.pop().ok_or_else(no_value)?;
                }
                w.container(&items[..n]);
            }
            Effect::Add(n) => {
                let mut items = [Slot::Scalar(0); 2];
                for item in items[..n].iter_mut().rev() {
                    *item = w.pop().ok_or_else(no_value)?;
                }
                let Some(Slot::Container(into)) = w.top() else {
                    return Err(not_container());
                };
                w.add(into, &items[..n]);
            }
            Effect::AddMarked => {
                let items = w.pop_mark().ok_or_else(no_mark)?;
                let Some(Slot::Container(into)) = w.top() else {
                    return Err(not_container());
                };
                w.add(into, &items);
            }
            Effect::Put => {
                let top = w.top().ok_or_else(no_value)?;
                let key = if op == 0x94 {
                    w.memo.len() as u64
                } else {
                    memo_key(payload)
                        .ok_or_else(|| malformed(start, &format!("{name}: bad memo key")))?
                };
                w.memo.insert(key, top);
            }
            Effect::Get => {
                let key = memo_key(payload)
                    .ok_or_else(|| malformed(start, &format!("{name}: bad memo key")))?;
                let Some(&v) = w.memo.get(&key) else {
                    return Err(malformed(start, &format!("{name}: memo {key} is empty")));
                };
                w.stack.push(v);
            }
            Effect::Nothing => {
                if op == 0x80 && payload.first().is_some_and(|&v| v > 5) {
                    return Err(malformed(start, "PROTO: a protocol above 5"));
                }
            }
            Effect::Stop => {
                let root = w.pop().ok_or_else(no_value)?;
                if !w.stack.is_empty() || !w.marks.is_empty() {
                    return Err(malformed(start, "STOP: values left on the stack"));
                }
                if at != bytes.len() {
                    return Err(malformed(at, "bytes after STOP"));
                }
                let limit = expansion_limit(w.unshared);
                let expanded = match root {
                    Slot::Scalar(cost) => cost,
                    Slot::Container(id) => measure(&w.nodes, id, limit)
                        .map_err(|()| malformed(start, "a value that contains itself"))?,
                };
                if expanded > limit {
                    return Err(PickleError::TooLarge { expanded, limit });
                }
                return Ok(expanded);
            }
        }
    }
}

/// A memo key: a decimal line (`GET`, `PUT`) or 1 or 4 little-endian bytes.
fn memo_key(arg: &[u8]) -> Option<u64> {
    match arg.len() {
        1 => Some(u64::from(arg[0])),
        4 => Some(u64::from(u32::from_le_bytes(arg.try_into().ok()?))),
        _ => std::str::from_utf8(arg).ok()?.trim().parse().ok(),
    }
}

/// The cost of the value `root` once every shared reference is copied,
/// stopping early above `limit`; `Err` if a value contains itself.
fn measure(nodes: &[Node], root: usize, limit: u64) -> Result<u64, ()> {
    // 0: not visited; 1: on the current path; 2: done (cost in `cost`).
    let mut state = vec![0u8; nodes.len()];
    let mut cost = vec![0u64; nodes.len()];
    // Iterative depth-first walk: (node, next child to visit).
    let mut path: Vec<(usize, usize)> = vec![(root, 0)];
    state[root] = 1;
    while let Some(&mut (node, ref mut next)) = path.last_mut() {
        if let Some(&child) = nodes[node].children.get(*next) {
            *next += 1;
            match state[child] {
                0 => {
                    state[child] = 1;
                    path.push((child, 0));
                }
                1 => return Err(()),
                _ => {}
            }
            continue;
        }
        let total = nodes[node]
            .children
            .iter()
            .fold(nodes[node].cost, |sum, &c| sum.saturating_add(cost[c]))
            .min(limit.saturating_add(1));
        cost[node] = total;
        state[node] = 2;
        path.pop();
    }
    Ok(cost[root])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pickle: protocol 4 header, `body`, STOP.
    fn pickle(body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 4];
        p.extend_from_slice(body);
        p.push(b'.');
        p
    }

    #[test]
    fn every_opcode_that_names_or_calls_code_is_refused_by_name() {
        let cases: [(&[u8], &str); 14] = [
            (b"cos\nsystem\n", "GLOBAL"),
            (b"\x8c\x02os\x8c\x06system\x93", "STACK_GLOBAL"),
            (b"N)R", "REDUCE"),
            (b"}}b", "BUILD"),
            (b"(ios\nsystem\n", "INST"),
            (b"(o", "OBJ"),
            (b"N)\x81", "NEWOBJ"),
            (b"N)}\x92", "NEWOBJ_EX"),
            (b"Pid\n", "PERSID"),
            (b"NQ", "BINPERSID"),
            (b"\x82\x01", "EXT1"),
            (b"\x83\x01\x00", "EXT2"),
            (b"\x84\x01\x00\x00\x00", "EXT4"),
            (b"\x97", "NEXT_BUFFER"),
        ];
        for (body, name) in cases {
            match check(&pickle(body)) {
                Err(PickleError::Forbidden { opcode, offset }) => {
                    assert_eq!(opcode, name);
                    assert!(offset >= 2, "{name} at {offset}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(
            from_pickle::<u32>(&pickle(b"N\x98")),
            Err(PickleError::Forbidden {
                opcode: "READONLY_BUFFER",
                ..
            })
        ));
    }

    #[test]
    fn plain_values_round_trip() {
        let value = (
            7u64,
            vec![1.5f64, -2.0],
            "héllo".to_string(),
            Some(vec![Some(1i64), None]),
            std::collections::BTreeMap::from([("k".to_string(), vec![true, false])]),
            serde_bytes::ByteBuf::from(vec![0u8, 255, 7]),
        );
        let bytes = to_pickle(&value).unwrap();
        assert!(check(&bytes).is_ok());
        assert_eq!(from_pickle::<_>(&bytes), Ok(value));
        let v = value_from_pickle(&bytes).unwrap();
        assert_eq!(value_from_pickle(&value_to_pickle(&v).unwrap()).unwrap(), v);
    }

    #[test]
    fn shared_references_that_would_multiply_a_value_are_refused_before_decoding() {
        // A list, then thirty tuples each holding the previous one twice:
        // 2^30 copies once decoded, from about 150 bytes.
        let mut body = vec![b']', 0x94, b'0'];
        for i in 0..30u8 {
            body.extend_from_slice(&[b'h', i, b'h', i, 0x86, 0x94, b'0']);
        }
        body.extend_from_slice(&[b'h', 30]);
        let bytes = pickle(&body);
        match check(&bytes) {
            Err(PickleError::TooLarge { expanded, limit }) => {
                assert!(expanded > limit);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            value_from_pickle(&bytes),
            Err(PickleError::TooLarge { .. })
        ));
        // A few shared references are fine.
        let mut body = vec![b'X', 3, 0, 0, 0, b'a', b'b', b'c', 0x94];
        body.extend_from_slice(&[b'h', 0, b'h', 0, 0x87]);
        assert_eq!(
            from_pickle::<(String, String, String)>(&pickle(&body)),
            Ok(("abc".into(), "abc".into(), "abc".into()))
        );
    }

    #[test]
    fn a_value_that_contains_itself_is_refused() {
        // Python: l = []; l.append(l); pickle.dumps(l, 4)
        let bytes = pickle(b"]\x94h\x00a");
        assert!(matches!(check(&bytes), Err(PickleError::Malformed { .. })));
    }

    #[test]
    fn declared_lengths_beyond_the_message_are_refused_without_allocating() {
        for body in [
            &b"X\xff\xff\xff\x7fabc"[..],
            b"\x8d\xff\xff\xff\xff\xff\xff\xff\xffabc",
            b"\x8e\x00\x00\x00\x00\x00\x00\x00\x80",
            b"\x96\xff\xff\xff\xff\xff\xff\xff\x7f",
            b"T\xff\xff\xff\xff",
            b"\x8b\x00\x00\x00\x80",
            b"\x95\x01",
        ] {
            assert!(
                matches!(check(&pickle(body)), Err(PickleError::Malformed { .. })),
                "{body:?}"
            );
        }
    }

    #[test]
    fn malformed_pickles_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            b".",
            b"\x80\x04",
            b"\x80\x09N.",
            b"a.",
            b"0.",
            b"e.",
            b"(t",
            b"NN.",
            b"N.N",
            b"g0\n.",
            b"\xff.",
            b"I12",
        ] {
            assert!(check(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn random_and_mutated_pickles_never_panic() {
        let seeds: Vec<Vec<u8>> = vec![
            to_pickle(&(1u8, "two", vec![3.0f64; 4], Some(()))).unwrap(),
            to_pickle(&std::collections::BTreeMap::from([(1u32, vec!["a"; 3])])).unwrap(),
            pickle(b"]\x94(K\x01K\x02h\x00e"),
            pickle(b"}\x94(\x8c\x01k\x94]\x94h\x01u"),
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].clone();
            let edits = 1 + next() % 4;
            for _ in 0..edits {
                let r = next();
                let at = (r >> 8) as usize % (bytes.len() + 1);
                match r % 4 {
                    0 if at < bytes.len() => bytes[at] = (r >> 32) as u8,
                    1 => bytes.insert(at, (r >> 32) as u8),
                    2 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(at),
                }
            }
            if round % 3 == 0 {
                bytes = (0..(next() % 64)).map(|_| next() as u8).collect();
            }
            let _ = check(&bytes);
            let _ = value_from_pickle(&bytes);
            let _ = from_pickle::<(u8, String, Vec<f64>, Option<()>)>(&bytes);
        }
    }
}
