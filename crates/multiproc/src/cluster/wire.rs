//! What travels through the server for a pool: task entries (stream
//! fields) and result replies (postcard). Everything read back is
//! untrusted: any client with write access to the namespace may have
//! written it, so every field is checked before use.

use serde::{Deserialize, Serialize};

use crate::pool::TaskError;
use crate::process::{ExitStatus, PanicReport};
use crate::wire::DecodeError;

/// Version of the entry fields and the reply format.
pub(crate) const VERSION: &str = "1";

/// Most items one entry may carry.
pub(crate) const MAX_ITEMS: usize = 1 << 20;

/// One stream entry: a chunk of one pool's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskEntry {
    /// The pool's id.
    pub pool: String,
    /// The chunk's number in its pool.
    pub chunk: u64,
    /// The registered task name.
    pub name: String,
    /// Its signature hash.
    pub signature: String,
    /// The producer's build fingerprint; empty when only the signature is
    /// checked.
    pub build: String,
    /// Job index of the first item.
    pub first: u64,
    /// Where each item's encoding ends in the items.
    pub ends: Vec<u64>,
    /// The items inline, or `None` when they are in a blob.
    pub items: Option<Vec<u8>>,
    /// The blob key's hash, when the items are stored apart.
    pub blob: Option<String>,
    /// Per-item timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Deliveries after which the chunk fails instead of running again.
    pub max_deliveries: u32,
}

impl TaskEntry {
    /// The fields for `XADD`.
    pub(crate) fn fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut f = vec![
            ("v", VERSION.as_bytes().to_vec()),
            ("pool", self.pool.as_bytes().to_vec()),
            ("c", self.chunk.to_string().into_bytes()),
            ("f", self.name.as_bytes().to_vec()),
            ("sig", self.signature.as_bytes().to_vec()),
            ("b", self.build.as_bytes().to_vec()),
            ("first", self.first.to_string().into_bytes()),
            ("ends", postcard::to_stdvec(&self.ends).unwrap_or_default()),
            ("d", self.max_deliveries.to_string().into_bytes()),
        ];
        if let Some(items) = &self.items {
            f.push(("p", items.clone()));
        }
        if let Some(blob) = &self.blob {
            f.push(("blob", blob.as_bytes().to_vec()));
        }
        if let Some(t) = self.timeout_ms {
            f.push(("t", t.to_string().into_bytes()));
        }
        f
    }

    /// Reads an entry's fields (alternating names and values), checking
    /// every one. The error says what is wrong.
    pub(crate) fn parse(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<TaskEntry, String> {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| v.as_slice())
        };
        let text = |name: &str| -> Result<String, String> {
            let v = get(name).ok_or_else(|| format!("field {name:?} missing"))?;
            if v.len() > 256 {
                return Err(format!("field {name:?} too long"));
            }
            String::from_utf8(v.to_vec()).map_err(|_| format!("field {name:?} not UTF-8"))
        };
        let number = |name: &str| -> Result<u64, String> {
            text(name)?
                .parse::<u64>()
                .map_err(|_| format!("field {name:?} not a number"))
        };
        let version = text("v")?;
        if version != VERSION {
            return Err(format!(
                "entry format {version:?}, this agent reads {VERSION:?}"
            ));
        }
        let ends: Vec<u64> = postcard::from_bytes(get("ends").ok_or("field \"ends\" missing")?)
            .map_err(|_| "field \"ends\" malformed".to_owned())?;
        if ends.is_empty() || ends.len() > MAX_ITEMS {
            return Err(format!("{} items in one entry", ends.len()));
        }
        if ends.windows(2).any(|w| w[0] > w[1]) {
            return Err("item ends out of order".into());
        }
        let items = get("p").map(<[u8]>::to_vec);
        let blob = match get("blob") {
            Some(_) => Some(text("blob")?),
            None => None,
        };
        if items.is_some() == blob.is_some() {
            return Err("an entry needs its items inline or in one blob".into());
        }
        if let Some(items) = &items {
            check_ends(&ends, items.len())?;
        }
        let first = number("first")?;
        first
            .checked_add(ends.len() as u64)
            .filter(|end| *end <= usize::MAX as u64)
            .ok_or("item indices overflow")?;
        Ok(TaskEntry {
            pool: text("pool")?,
            chunk: number("c")?,
            name: text("f")?,
            signature: text("sig")?,
            build: text("b")?,
            first,
            ends,
            items,
            blob,
            timeout_ms: match get("t") {
                Some(_) => Some(number("t")?),
                None => None,
            },
            max_deliveries: u32::try_from(number("d")?).map_err(|_| "field \"d\" too large")?,
        })
    }
}

/// Checks that the last item ends exactly at `len`.
pub(crate) fn check_ends(ends: &[u64], len: usize) -> Result<(), String> {
    match ends.last() {
        Some(&last) if last == len as u64 => Ok(()),
        _ => Err("the item ends do not match the items' length".into()),
    }
}

/// What an agent tells the task it runs (the local chunk's context).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Context {
    pub pool: String,
    pub entry: String,
    pub deliveries: u64,
    pub agent: String,
}

/// What an agent sends back for one entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Reply {
    /// The stream entry id.
    pub entry: String,
    /// The chunk's number in its pool.
    pub chunk: u64,
    /// The agent that ran it.
    pub agent: String,
    /// Where the results are: inline parts, or a blob of them.
    pub body: Body,
}

/// A reply's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Body {
    /// The parts themselves.
    Parts(Vec<Part>),
    /// A blob key's hash holding the postcard of `Vec<Part>`.
    Blob(String),
}

/// Some of an entry's items' outcomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Part {
    /// Encoded outcomes as a local worker sent them.
    Values {
        /// Job index of the first.
        first: u64,
        /// How many.
        count: u64,
        /// How many of them, from the start, are bare values.
        plain: u64,
        /// The encodings.
        bytes: Vec<u8>,
        /// Time the worker spent on them, in nanoseconds.
        busy_ns: u64,
    },
    /// One item failed.
    Failed {
        /// Its job index.
        index: u64,
        /// How.
        failure: Failure,
    },
}

/// [`TaskError`] as it crosses the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    Panicked(PanicReport),
    WorkerDied {
        worker: u64,
        pid: i32,
        code: Option<i32>,
        signal: Option<i32>,
        core_dumped: bool,
        agent: String,
    },
    TimedOut(u64),
    Cancelled,
    ArgumentDecode(String),
    ResultEncode(String),
    Protocol(String),
    Terminated,
    Broken(String),
    NotRegistered(String),
    BuildMismatch {
        expected: String,
        got: String,
    },
    WorkerLost {
        agent: String,
        deliveries: u64,
    },
    Other(String),
}

impl Failure {
    /// How an agent reports `e` from its local pool.
    pub(crate) fn from_task_error(e: &TaskError, agent: &str) -> Failure {
        match e {
            TaskError::Panicked(p) => Failure::Panicked(p.clone()),
            TaskError::WorkerDied {
                worker,
                pid,
                status,
            } => {
                let (code, signal, core_dumped) = match *status {
                    ExitStatus::Exited(c) => (Some(c), None, false),
                    ExitStatus::Signaled {
                        signal,
                        core_dumped,
                    } => (None, Some(signal.0), core_dumped),
                };
                Failure::WorkerDied {
                    worker: *worker as u64,
                    pid: *pid,
                    code,
                    signal,
                    core_dumped,
                    agent: agent.to_owned(),
                }
            }
            TaskError::TimedOut(d) => {
                Failure::TimedOut(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
            TaskError::Cancelled => Failure::Cancelled,
            TaskError::ArgumentDecode(m) => Failure::ArgumentDecode(m.clone()),
            TaskError::ResultEncode(m) => Failure::ResultEncode(m.clone()),
            TaskError::Protocol(m) => Failure::Protocol(m.clone()),
            TaskError::Terminated => Failure::Terminated,
            TaskError::Broken(m) => Failure::Broken(m.clone()),
            TaskError::NotRegistered(m) => Failure::NotRegistered(m.clone()),
            TaskError::BuildMismatch { expected, got } => Failure::BuildMismatch {
                expected: expected.clone(),
                got: got.clone(),
            },
            TaskError::WorkerLost { agent, deliveries } => Failure::WorkerLost {
                agent: agent.clone(),
                deliveries: *deliveries,
            },
            other => Failure::Other(other.to_string()),
        }
    }

    /// The error the producer's caller sees.
    pub(crate) fn into_task_error(self) -> TaskError {
        match self {
            Failure::Panicked(p) => TaskError::Panicked(p),
            Failure::WorkerDied {
                worker,
                pid,
                code,
                signal,
                core_dumped,
                agent: _,
            } => {
                let raw = match (code, signal) {
                    (_, Some(signal)) => crate::sys::process::RawExit::Signaled {
                        signal,
                        core_dumped,
                    },
                    (code, None) => crate::sys::process::RawExit::Exited(code.unwrap_or(-1)),
                };
                TaskError::WorkerDied {
                    worker: usize::try_from(worker).unwrap_or(usize::MAX),
                    pid,
                    status: ExitStatus::from_raw(raw),
                }
            }
            Failure::TimedOut(ms) => TaskError::TimedOut(std::time::Duration::from_millis(ms)),
            Failure::Cancelled => TaskError::Cancelled,
            Failure::ArgumentDecode(m) => TaskError::ArgumentDecode(m),
            Failure::ResultEncode(m) => TaskError::ResultEncode(m),
            Failure::Protocol(m) => TaskError::Protocol(m),
            Failure::Terminated => TaskError::Terminated,
            Failure::Broken(m) => TaskError::Broken(m),
            Failure::NotRegistered(m) => TaskError::NotRegistered(m),
            Failure::BuildMismatch { expected, got } => TaskError::BuildMismatch { expected, got },
            Failure::WorkerLost { agent, deliveries } => {
                TaskError::WorkerLost { agent, deliveries }
            }
            Failure::Other(m) => TaskError::Backend(m),
        }
    }
}

/// Decodes a reply, or says why it is not one.
pub(crate) fn decode_reply(bytes: &[u8]) -> Result<Reply, DecodeError> {
    postcard::from_bytes(bytes).map_err(|e| DecodeError {
        type_name: "cluster reply",
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> TaskEntry {
        TaskEntry {
            pool: "p1".into(),
            chunk: 9,
            name: "m::f".into(),
            signature: "0011".into(),
            build: "gnu:ab".into(),
            first: 7,
            ends: vec![1, 3, 3],
            items: Some(vec![1, 2, 3]),
            blob: None,
            timeout_ms: Some(250),
            max_deliveries: 3,
        }
    }

    fn owned(e: &TaskEntry) -> Vec<(Vec<u8>, Vec<u8>)> {
        e.fields()
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect()
    }

    #[test]
    fn entries_round_trip() {
        let e = entry();
        assert_eq!(TaskEntry::parse(&owned(&e)), Ok(e));
    }

    #[test]
    fn bad_entries_say_why() {
        let e = entry();
        let mut f = owned(&e);
        f.retain(|(k, _)| k != b"f");
        assert!(TaskEntry::parse(&f).unwrap_err().contains("\"f\""));
        let mut short = e.clone();
        short.ends = vec![1, 4];
        assert!(TaskEntry::parse(&owned(&short)).is_err());
        let mut unordered = e.clone();
        unordered.ends = vec![3, 1, 3];
        assert!(TaskEntry::parse(&owned(&unordered)).is_err());
        let mut huge = e.clone();
        huge.first = u64::MAX;
        assert!(TaskEntry::parse(&owned(&huge)).is_err());
        let mut f = owned(&e);
        f.push((b"blob".to_vec(), b"x".to_vec()));
        assert!(TaskEntry::parse(&f).is_err());
        for garbage in [&[][..], &[0xff; 40][..]] {
            let mut f = owned(&e);
            for (k, v) in &mut f {
                if k == b"ends" {
                    *v = garbage.to_vec();
                }
            }
            assert!(TaskEntry::parse(&f).is_err());
        }
    }

    #[test]
    fn failures_round_trip_through_task_errors() {
        let e = TaskError::WorkerLost {
            agent: "h:1:ab".into(),
            deliveries: 4,
        };
        assert_eq!(Failure::from_task_error(&e, "x").into_task_error(), e);
        let died = TaskError::WorkerDied {
            worker: 1,
            pid: 42,
            status: ExitStatus::from_raw(crate::sys::process::RawExit::Signaled {
                signal: 9,
                core_dumped: false,
            }),
        };
        assert_eq!(Failure::from_task_error(&died, "x").into_task_error(), died);
    }
}
