"""Connection storm for bench/lab.py: many short TCP connections, counted per second.

    storm.py serve --port P [--seconds LIMIT]
    storm.py client --dst ADDR --port P --seconds S       -> one JSON line on stdout

The server accepts, reads the client's few bytes, sends them back and closes first, so the
TIME_WAIT state stays on the server and the client's ports are free again at once (a client
that closed first would run out of ports within seconds). Start two servers on one port
(SO_REUSEPORT): the kernel spreads the connections between them.

The client loops for S seconds: connect, send, read until the server closes, close. It counts
completed connections and failed ones (timeouts, resets) separately; a failure never ends
the run. Standard library only: it runs inside the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
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
    srv.settimeout(0.5)  # wake up to look at `stop` and the deadline
    print("ready", flush=True)
    deadline = time.monotonic() + limit
    served = 0
    while not stop and time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except (TimeoutError, InterruptedError):
            continue
        except OSError:
            continue  # a connection reset before accept: the next one
        try:
            conn.settimeout(TIMEOUT)
            data = conn.recv(256)
            if data:
                conn.sendall(data)
            served += 1
        except OSError:
            pass
        finally:
            conn.close()
    srv.close()
    print(json.dumps({"served": served}), flush=True)
    return 0


def client(dst: str, port: int, seconds: float, src: str | None = None) -> int:
    done = failed = 0
    t0 = time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        try:
            if src:  # a source address of our own: spreads connections over ipsctl's queues
                s.bind((src, 0))
            s.connect((dst, port))
            msg = MESSAGE % done
            s.sendall(msg)
            got = b""
            while True:
                chunk = s.recv(256)
                if not chunk:
                    break
                got += chunk
            if got == msg:
                done += 1
            else:
                failed += 1
        except OSError:
            failed += 1
        finally:
            s.close()
    elapsed = time.monotonic() - t0
    print(json.dumps({"connections": done, "failed": failed, "seconds": elapsed}), flush=True)
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
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return serve(args.port, args.seconds)
    return client(args.dst, args.port, args.seconds, args.src)


if __name__ == "__main__":
    sys.exit(main())
