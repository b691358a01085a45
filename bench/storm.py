"""Connection storm for bench/lab.py: many short TCP connections, counted per second.

    storm.py serve --port P [--seconds LIMIT]
    storm.py client --dst ADDR --port P --seconds S [--parallel K]   -> one JSON line on stdout

The server accepts, reads the client's few bytes, sends them back and closes first, so the
TIME_WAIT state stays on the server and the client's ports are free again at once (a client
that closed first would run out of ports within seconds). It serves any number of
connections at once (selectors). Start two servers on one port (SO_REUSEPORT): the kernel
spreads the connections between them.

The client keeps K connections in flight for S seconds (K = 1: one after the other, so the
rate is bounded by one connection's round trips — a latency figure; a larger K measures
how many connections per second the path can take, as `ab -c K` does): each one connects,
sends, reads until the server closes, closes, and is replaced at once. It counts completed
connections and failed ones (timeouts, resets) separately; a failure never ends the run;
connections still open at the deadline are not counted. Standard library only: it runs
inside the lab's namespaces.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import signal
import socket
import sys
import time

MESSAGE = b"storm-%d\n"
TIMEOUT = 2.0  # seconds a single connection may take before it counts as failed


def serve(port: int, limit: float) -> int:
    """Answer connections until SIGTERM or `limit` seconds (a bound if the caller dies)."""
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4096)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    print("ready", flush=True)
    deadline = time.monotonic() + limit
    served = 0
    opened: dict[socket.socket, float] = {}  # connection -> when accepted
    last_sweep = time.monotonic()
    while not stop and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):  # wake up to look at `stop` and the deadline
            sock = key.fileobj
            if sock is srv:
                for _ in range(64):
                    try:
                        conn, _ = srv.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue  # a connection reset before accept: the next one
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    opened[conn] = time.monotonic()
                continue
            try:
                data = sock.recv(256)  # type: ignore[union-attr]
                if data:
                    sock.send(data)  # type: ignore[union-attr]
                    served += 1
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                pass
            sel.unregister(sock)
            opened.pop(sock, None)  # type: ignore[arg-type]
            sock.close()  # type: ignore[union-attr]
        now = time.monotonic()
        if now - last_sweep > TIMEOUT:  # a client that never sent: give up on it
            last_sweep = now
            for conn, since in list(opened.items()):
                if now - since > TIMEOUT:
                    sel.unregister(conn)
                    del opened[conn]
                    conn.close()
    for conn in opened:
        conn.close()
    srv.close()
    print(json.dumps({"served": served}), flush=True)
    return 0


class _Conn:
    __slots__ = ("got", "msg", "sent", "sock", "started")

    def __init__(self, sock: socket.socket, msg: bytes, started: float) -> None:
        self.sock = sock
        self.msg = msg
        self.started = started
        self.sent = False
        self.got = b""


def client(dst: str, port: int, seconds: float, src: str | None = None, parallel: int = 1) -> int:
    done = failed = started = 0
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    deadline = t0 + seconds
    live: set[_Conn] = set()

    def start() -> None:
        nonlocal started, failed
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            if src:  # a source address of our own: spreads connections over ipsctl's queues
                s.bind((src, 0))
            rc = s.connect_ex((dst, port))
        except OSError:
            s.close()
            failed += 1
            return
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            failed += 1
            return
        conn = _Conn(s, MESSAGE % started, time.monotonic())
        started += 1
        live.add(conn)
        sel.register(s, selectors.EVENT_WRITE, conn)

    def finish(conn: _Conn, ok: bool) -> None:
        nonlocal done, failed
        sel.unregister(conn.sock)
        conn.sock.close()
        live.discard(conn)
        if ok:
            done += 1
        else:
            failed += 1

    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        while len(live) < parallel:
            before = len(live)
            start()
            if len(live) == before:
                break  # could not open one now (counted as failed): try at the next turn
        for key, _ in sel.select(min(0.1, deadline - now)):
            conn = key.data
            try:
                if not conn.sent:
                    err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        finish(conn, False)
                        continue
                    conn.sock.send(conn.msg)
                    conn.sent = True
                    sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                chunk = conn.sock.recv(256)
                if chunk:
                    conn.got += chunk
                    continue
                finish(conn, conn.got == conn.msg)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                finish(conn, False)
        now = time.monotonic()
        for conn in [c for c in live if now - c.started > TIMEOUT]:
            finish(conn, False)
    elapsed = time.monotonic() - t0
    for conn in list(live):  # still open at the deadline: not counted either way
        sel.unregister(conn.sock)
        conn.sock.close()
    print(
        json.dumps(
            {"connections": done, "failed": failed, "seconds": elapsed, "parallel": parallel}
        ),
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--seconds", type=float, default=3600.0, help="stop after this long anyway")
    c = sub.add_parser("client")
    c.add_argument("--dst", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--seconds", type=float, required=True)
    c.add_argument("--src", help="source address to connect from (one of this host's)")
    c.add_argument("--parallel", type=int, default=1, help="connections in flight (default 1)")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return serve(args.port, args.seconds)
    if not 1 <= args.parallel <= 256:
        ap.error("--parallel must be 1-256")
    return client(args.dst, args.port, args.seconds, args.src, args.parallel)


if __name__ == "__main__":
    sys.exit(main())
