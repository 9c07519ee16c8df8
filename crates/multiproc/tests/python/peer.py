"""A CPython peer for multiproc's connection tests.

usage: peer.py MODE ADDRESS AUTHKEY

MODE:
  listen     multiprocessing.connection.Listener (this Python's handshake);
             prints the address, accepts one client, echoes every message
             reversed until the client disconnects.
  connect    multiprocessing.connection.Client (this Python's handshake);
             sends b"hello from python" and 1 MiB of bytes, prints the
             replies' lengths and the first reply.
  listen312  a Listener without a key, then the handshake of Python 3.12+
             ({sha256}-prefixed challenge), written from its specification;
             then echoes reversed like `listen`.
  connect312 a Client without a key, then the 3.12+ handshake; then like
             `connect`.
ADDRESS is host:port, a path for a Unix socket, or @name for the abstract
Unix socket "\0name". AUTHKEY is text, or "-" for none.
"""
import hmac
import os
import sys
from multiprocessing.connection import Client, Listener

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"


def parse(address):
    if address.startswith("@"):
        return "\0" + address[1:], "AF_UNIX"
    if "/" in address or ":" not in address:
        return address, "AF_UNIX"
    host, port = address.rsplit(":", 1)
    return (host, int(port)), "AF_INET"


def deliver_312(conn, key):
    message = b"{sha256}" + os.urandom(40)
    conn.send_bytes(CHALLENGE + message)
    response = conn.recv_bytes(256)
    if response.startswith(b"{sha256}"):
        ok = hmac.compare_digest(hmac.new(key, message, "sha256").digest(), response[8:])
    elif len(response) == 16:
        ok = hmac.compare_digest(hmac.new(key, message, "md5").digest(), response)
    else:
        ok = False
    conn.send_bytes(WELCOME if ok else FAILURE)
    if not ok:
        raise SystemExit("peer failed the 3.12 challenge")


def answer_312(conn, key):
    message = conn.recv_bytes(256)
    assert message.startswith(CHALLENGE), message
    message = message[len(CHALLENGE):]
    if message.startswith(b"{sha256}"):
        conn.send_bytes(b"{sha256}" + hmac.new(key, message, "sha256").digest())
    else:
        conn.send_bytes(hmac.new(key, message, "md5").digest())
    if conn.recv_bytes(256) != WELCOME:
        raise SystemExit("our 3.12 answer was rejected")


def echo(conn):
    while True:
        try:
            msg = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(msg[::-1])


def talk(conn):
    conn.send_bytes(b"hello from python")
    first = conn.recv_bytes()
    conn.send_bytes(bytes(range(256)) * 4096)
    big = conn.recv_bytes()
    print("reply:", first.decode(), "big:", len(big), flush=True)


def main():
    mode, address, key = sys.argv[1], sys.argv[2], sys.argv[3]
    key = None if key == "-" else key.encode()
    addr, family = parse(address)
    if mode in ("listen", "listen312"):
        listener = Listener(addr, family=family, authkey=key if mode == "listen" else None)
        print("address:", listener.address, flush=True)
        conn = listener.accept()
        if mode == "listen312" and key is not None:
            deliver_312(conn, key)
            answer_312(conn, key)
        echo(conn)
    else:
        conn = Client(addr, family=family, authkey=key if mode == "connect" else None)
        if mode == "connect312" and key is not None:
            answer_312(conn, key)
            deliver_312(conn, key)
        talk(conn)


if __name__ == "__main__":
    main()
