//! The serde shapes real programs send first: `serde_json::Value`,
//! untagged and internally tagged enums, `#[serde(flatten)]`. postcard
//! cannot carry them; `spawn` says so in the parent, naming the fix, and
//! `SelfDescribing` carries them under every start method, through queues
//! and pipes too.

mod common;

use common::{LIMIT, deadline};
use multiproc::{Process, Queue, RecvError, SelfDescribing, StartError, StartMethod, pipe};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Tagged {
    Circle { r: f64 },
    Square { side: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Base {
    id: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Flattened {
    #[serde(flatten)]
    base: Base,
    name: String,
}

fn json_len(v: serde_json::Value) -> usize {
    v.to_string().len()
}

fn untagged_text(v: Untagged) -> String {
    format!("{v:?}")
}

fn flat_id(v: Flattened) -> u32 {
    v.base.id
}

/// The error names the cause and the fix.
fn assert_explained(e: StartError) {
    let text = e.to_string();
    assert!(matches!(e, StartError::Encode(_)), "{text}");
    assert!(text.contains("not self-describing"), "{text}");
    assert!(text.contains("SelfDescribing"), "{text}");
}

#[test]
fn spawn_refuses_in_the_parent_what_the_child_could_not_decode() {
    deadline(LIMIT, || {
        let json = serde_json::json!({"a": [1, 2, {"b": null}]});
        assert_explained(Process::spawn(json_len, json).unwrap_err());
        assert_explained(Process::spawn(untagged_text, Untagged::Number(1.5)).unwrap_err());
        let flat = Flattened {
            base: Base { id: 3 },
            name: "x".into(),
        };
        assert_explained(Process::spawn(flat_id, flat).unwrap_err());
    });
}

fn describe(
    (json, untagged, tagged, flat): (
        SelfDescribing<serde_json::Value>,
        SelfDescribing<Untagged>,
        SelfDescribing<Tagged>,
        SelfDescribing<Flattened>,
    ),
) -> SelfDescribing<serde_json::Value> {
    SelfDescribing(serde_json::json!({
        "json": json.0,
        "untagged": format!("{:?}", untagged.0),
        "tagged": format!("{:?}", tagged.0),
        "id": flat.0.base.id,
    }))
}

#[test]
fn self_describing_values_travel_under_every_start_method() {
    deadline(LIMIT, || {
        for method in StartMethod::ALL {
            let arg = (
                SelfDescribing(serde_json::json!({"k": [1, "two", null, 3.5]})),
                SelfDescribing(Untagged::Text("t".into())),
                SelfDescribing(Tagged::Square { side: 2.0 }),
                SelfDescribing(Flattened {
                    base: Base { id: 9 },
                    name: "n".into(),
                }),
            );
            let p = Process::builder()
                .start_method(method)
                .spawn(describe, arg)
                .unwrap();
            let out = p.join().unwrap().into_inner();
            assert_eq!(out["json"]["k"][1], "two", "{method}");
            assert_eq!(out["untagged"], "Text(\"t\")");
            assert_eq!(out["tagged"], "Square { side: 2.0 }");
            assert_eq!(out["id"], 9);
        }
    });
}

#[test]
fn through_a_queue_and_a_pipe_the_receiver_is_told_the_cause_and_the_fix() {
    deadline(LIMIT, || {
        let q: Queue<Untagged> = Queue::new().unwrap();
        q.put(Untagged::Text("x".into())).unwrap();
        let e = q.get().unwrap_err().to_string();
        assert!(e.contains("SelfDescribing"), "{e}");

        let (a, b) = pipe::<serde_json::Value, serde_json::Value>().unwrap();
        a.send(&serde_json::json!([1])).unwrap();
        match b.recv() {
            Err(RecvError::Decode(e)) => assert!(e.to_string().contains("SelfDescribing"), "{e}"),
            other => panic!("{other:?}"),
        }

        let q: Queue<SelfDescribing<Untagged>> = Queue::new().unwrap();
        q.put(SelfDescribing(Untagged::Text("x".into()))).unwrap();
        assert_eq!(q.get().unwrap().0, Untagged::Text("x".into()));
        let (a, b) = pipe::<SelfDescribing<Flattened>, ()>().unwrap();
        let flat = Flattened {
            base: Base { id: 1 },
            name: "f".into(),
        };
        a.send(&SelfDescribing(flat.clone())).unwrap();
        assert_eq!(b.recv().unwrap().0, flat);
    });
}
