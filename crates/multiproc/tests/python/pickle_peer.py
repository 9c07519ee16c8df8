"""A CPython peer that talks pickles with a multiproc PickleConnection.

Usage: pickle_peer.py ADDRESS KEY

Connects with multiprocessing.connection.Client (standard library only),
then:
1. sends a job dict with conn.send and checks the reply, loading the
   reply's raw bytes with an unpickler that refuses every global (so
   nothing multiproc sends imports or calls anything);
2. sends, as raw bytes, a pickle that would run `os.system` and one that
   builds a class instance; the Rust side must refuse both and answer
   each with a dict saying so (nothing ran: the marker file must not
   exist);
3. sends the values of every basic type in protocols 2 to 5 and checks
   that each comes back equal.
Prints "ok" on success; exits non-zero on any mismatch.
"""

import io
import os
import pickle
import sys
from multiprocessing.connection import Client


class NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def load_plain(data):
    return NoGlobals(io.BytesIO(data)).load()


def main():
    address, key = sys.argv[1], sys.argv[2].encode()
    marker = address + ".pwned"
    conn = Client(address, authkey=key)

    job = {"id": 7, "data": [1.5, 2.5, 3.0], "name": "sum", "tags": ["a", "b"]}
    conn.send(job)
    reply = load_plain(conn.recv_bytes())
    assert reply == {"id": 7, "total": 7.0, "name": "SUM", "ok": True}, reply

    evil = b"cos\nsystem\n(S'touch " + marker.encode() + b"'\ntR."
    conn.send_bytes(evil)
    refused = load_plain(conn.recv_bytes())
    assert refused == {"refused": "GLOBAL"}, refused

    import fractions
    conn.send_bytes(pickle.dumps(fractions.Fraction(1, 3), 4))
    refused = load_plain(conn.recv_bytes())
    assert refused == {"refused": "STACK_GLOBAL"}, refused
    assert not os.path.exists(marker), "the pickle ran"

    values = [
        None, True, False, 0, -1, 255, 65536, -(2**31), 2**62, 2**63 - 1,
        1.25, -0.0, "", "héllo ☃", b"", b"\x00\xff" * 100, [], [1, [2, [3]]],
        (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), {}, {"k": {"n": [None]}},
        "x" * 300, b"y" * 70000, list(range(1000)),
    ]
    for proto in (2, 3, 4, 5):
        for v in values:
            conn.send_bytes(pickle.dumps(v, proto))
            back = load_plain(conn.recv_bytes())
            # Protocol 2 has no opcode for bytes: Python pickles them as a
            # call of _codecs.encode, which must be refused like any call.
            expect = {"refused": "GLOBAL"} if proto == 2 and isinstance(v, bytes) else v
            assert back == expect, (proto, v, back)
    conn.send_bytes(pickle.dumps("bye", 4))
    conn.close()
    print("ok")


if __name__ == "__main__":
    main()
