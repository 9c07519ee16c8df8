//! A `PickleConnection` with a real CPython peer using only the standard
//! library's `multiprocessing.connection` (`tests/python/pickle_peer.py`):
//! typed values both ways, pickles that would run code refused (and not
//! run), and every basic type in protocols 2 to 5.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use common::{LIMIT, deadline, temp_path};
use multiproc::pickle::{PickleError, Value};
use multiproc::{Address, Connection, Listener, RecvError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, PartialEq)]
struct Job {
    id: u64,
    data: Vec<f64>,
    name: String,
    tags: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Reply {
    id: u64,
    total: f64,
    name: String,
    ok: bool,
}

#[test]
fn a_python_peer_sends_dicts_and_gets_plain_values_back_and_nothing_it_sends_runs() {
    deadline(LIMIT, || {
        let path = temp_path("pickle.sock");
        let key = b"pickle key";
        let listener = Listener::bind(&Address::Unix(path.clone()), Some(key)).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/pickle_peer.py");
        let py = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
            .args([script, path.to_str().unwrap(), "pickle key"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed to test interoperability");

        let conn: Connection = listener.accept().unwrap();
        let conn = conn.into_pickle::<Reply, Job>();
        let job = conn.recv().unwrap();
        assert_eq!(job.id, 7);
        assert_eq!(job.tags, ["a", "b"]);
        conn.send(&Reply {
            id: job.id,
            total: job.data.iter().sum(),
            name: job.name.to_uppercase(),
            ok: true,
        })
        .unwrap();

        let conn = conn.into_inner().into_pickle::<(), ()>();
        let mut refused = Vec::new();
        let mut echoed = 0;
        loop {
            match conn.recv_value() {
                Ok(Value::String(s)) if s == "bye" => break,
                Ok(v) => {
                    conn.send_value(&v).unwrap();
                    echoed += 1;
                }
                Err(RecvError::Pickle(PickleError::Forbidden { opcode, .. })) => {
                    refused.push(opcode);
                    let mut answer = BTreeMap::new();
                    answer.insert("refused", opcode);
                    let answer = multiproc::pickle::value_from_pickle(
                        &multiproc::pickle::to_pickle(&answer).unwrap(),
                    )
                    .unwrap();
                    conn.send_value(&answer).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        // The two pickles that call code, and protocol 2's three bytes
        // values (a call of `_codecs.encode` there).
        assert_eq!(refused[..2], ["GLOBAL", "STACK_GLOBAL"]);
        assert_eq!(refused[2..], ["GLOBAL"; 3]);
        assert_eq!(echoed, 4 * 28 - 3);
        let out = py.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "python: {} {text}", out.status);
        assert_eq!(text.trim(), "ok");
        let _ = std::fs::remove_file(&path);
    });
}

/// The pickle CPython makes of the Python expression `expr` with protocol
/// `proto`.
fn python_pickle(expr: &str, proto: u8) -> Vec<u8> {
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args([
            "-c",
            &format!("import pickle, sys; sys.stdout.buffer.write(pickle.dumps({expr}, {proto}))"),
        ])
        .output()
        .expect("python3 must be installed to test interoperability");
    assert!(out.status.success(), "{expr}");
    out.stdout
}

#[test]
fn the_type_mapping_the_readme_states_holds() {
    use multiproc::pickle::from_pickle;
    use std::collections::{BTreeSet, HashMap};
    for proto in [3, 4, 5] {
        let bytes = python_pickle("b'\\x00\\x01\\xff'", proto);
        assert_eq!(
            from_pickle::<serde_bytes::ByteBuf>(&bytes)
                .unwrap()
                .into_vec(),
            [0, 1, 255]
        );
        // A plain `Vec<u8>` is a list of ints, not `bytes`.
        assert!(matches!(
            from_pickle::<Vec<u8>>(&bytes),
            Err(PickleError::Value { .. })
        ));
        assert_eq!(
            from_pickle::<Vec<u8>>(&python_pickle("[0, 1, 255]", proto)).unwrap(),
            [0, 1, 255]
        );
        #[derive(Debug, Deserialize, PartialEq)]
        struct Point {
            x: i64,
            y: Option<f64>,
        }
        assert_eq!(
            from_pickle::<Point>(&python_pickle("{'x': -3, 'y': None}", proto)).unwrap(),
            Point { x: -3, y: None }
        );
        assert_eq!(
            from_pickle::<(u8, String, Vec<bool>)>(&python_pickle("(1, 'a', [True])", proto))
                .unwrap(),
            (1, "a".into(), vec![true])
        );
        assert_eq!(
            from_pickle::<HashMap<String, u64>>(&python_pickle("{'a': 2**40}", proto)).unwrap(),
            HashMap::from([("a".into(), 1 << 40)])
        );
        assert_eq!(
            from_pickle::<()>(&python_pickle("None", proto)).unwrap(),
            ()
        );
        // Big ints reach a dynamic value whole.
        assert!(matches!(
            multiproc::pickle::value_from_pickle(&python_pickle("2**100", proto)).unwrap(),
            Value::Int(_)
        ));
        let set = python_pickle("{3, 1, 2}", proto);
        if proto >= 4 {
            assert_eq!(
                from_pickle::<BTreeSet<u8>>(&set).unwrap(),
                BTreeSet::from([1, 2, 3])
            );
        } else {
            // Below protocol 4 a set is a call of `builtins.set`.
            assert!(matches!(
                from_pickle::<BTreeSet<u8>>(&set),
                Err(PickleError::Forbidden {
                    opcode: "GLOBAL",
                    ..
                })
            ));
        }
    }
    assert!(matches!(
        from_pickle::<Vec<u8>>(&python_pickle("b'ab'", 2)),
        Err(PickleError::Forbidden {
            opcode: "GLOBAL",
            ..
        })
    ));
}
