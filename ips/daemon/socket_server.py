"""The control socket's server: bounded in connections, threads, time and memory.

One thread (`control`) owns every connection and never blocks: it accepts, reads each request
line without blocking, and writes each reply without blocking, with a selector. A complete
request goes to a fixed pool of threads that run the command (ips/daemon/commands.py); the
pool hands the reply back to the selector thread. So a peer that connects and says nothing,
or reads its reply slowly, costs a few hundred bytes and no thread, and a flood of them costs
no more than the limits below:

* at most `connections` connections of unprivileged peers are open at once; one more is
  answered "busy" (the client asks again, with backoff, within its timeout) and closed;
* root's connections have their own count and their own pool of threads, so root's commands
  are served however many the others hold open or keep busy;
* a request must arrive within `request_timeout` seconds of the connect, and its reply be
  taken within as long again; a slower peer gets an error reply (if it reads) and is closed;
* one line is at most MAX_UNPRIVILEGED_MESSAGE bytes from an unprivileged peer, MAX_MESSAGE
  from root (an apply carries the policy's table files), and the lines root has half sent at
  one time are at most `root_buffer` bytes together; a longer line is refused with an error
  reply and its bytes are dropped as they come, never kept.

Peers are told apart by SO_PEERCRED (ips.control.peer_uid) when they connect.
"""

from __future__ import annotations

import contextlib
import json
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ips.control import BUSY, MAX_MESSAGE, MAX_UNPRIVILEGED_MESSAGE, encode, peer_uid

Handler = Callable[[dict[str, Any], int], dict[str, Any]]


@dataclass(frozen=True)
class Limits:
    connections: int = 64  # unprivileged peers' connections open at once
    root_connections: int = 64  # root's, counted apart
    workers: int = 4  # threads running unprivileged peers' commands
    root_workers: int = 4  # threads running root's commands only
    request_timeout: float = 10.0  # seconds to send the request; as long again to read the reply
    line: int = MAX_UNPRIVILEGED_MESSAGE
    root_line: int = MAX_MESSAGE
    root_buffer: int = 2 * MAX_MESSAGE  # root's half-received lines together
    backlog: int = 512  # connects the kernel holds until the selector thread accepts them


READ_CHUNK = 256 * 1024


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    uid: int
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None
    draining: bool = False  # refused: the rest of its line is read and dropped
    closed: bool = False

    @property
    def root(self) -> bool:
        return self.uid == 0


class ControlServer:
    """Serves `handle(request, uid) -> reply` on a listening Unix socket (see the module)."""

    def __init__(self, server: socket.socket, handle: Handler, limits: Limits = Limits()) -> None:
        self.server = server
        self.handle = handle
        self.limits = limits
        self.selector = selectors.DefaultSelector()
        self.connections: set[_Connection] = set()
        self.open = {False: 0, True: 0}  # connections open, by "is root"
        self.root_buffered = 0
        self.refused_busy = 0  # connections answered "busy" (status: control)
        self.refused_large = 0  # lines refused as too long
        self.timed_out = 0  # connections closed at their deadline
        self.served = 0
        self._done: queue.SimpleQueue[tuple[_Connection, bytes]] = queue.SimpleQueue()
        self._jobs: dict[bool, queue.SimpleQueue[tuple[_Connection, bytes, float] | None]] = {
            False: queue.SimpleQueue(),
            True: queue.SimpleQueue(),
        }
        self._wake_r, self._wake_w = socket.socketpair()
        self._closing = False
        self.threads: list[threading.Thread] = []

    # ---- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Listen and start the threads (after the capabilities are dropped: threads inherit
        them)."""
        self.server.listen(self.limits.backlog)
        self.server.setblocking(False)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self.server, selectors.EVENT_READ, "accept")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        pools = [(False, self.limits.workers), (True, self.limits.root_workers)]
        for root, count in pools:
            for i in range(count):
                name = f"control-{'root' if root else 'any'}-{i}"
                self.threads.append(
                    threading.Thread(target=self._work, args=(root,), name=name, daemon=True)
                )
        self.threads.append(threading.Thread(target=self._loop, name="control", daemon=True))
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self._closing = True
        for root in (False, True):
            for _ in range(self.limits.root_workers if root else self.limits.workers):
                self._jobs[root].put(None)
        self._wake()
        with contextlib.suppress(OSError):
            self.server.close()

    def stats(self) -> dict[str, int]:
        return {
            "open": self.open[False],
            "open_root": self.open[True],
            "served": self.served,
            "refused_busy": self.refused_busy,
            "refused_large": self.refused_large,
            "timed_out": self.timed_out,
        }

    # ---- the selector thread ----------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._closing:
                wait = self._expire(time.monotonic())
                for key, mask in self.selector.select(wait):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        conn: _Connection = key.data
                        if mask & selectors.EVENT_READ:
                            self._read(conn)
                        if mask & selectors.EVENT_WRITE and not conn.closed:
                            self._write(conn)
                self._take_replies()
        finally:
            for conn in list(self.connections):
                self._close(conn)
            with contextlib.suppress(Exception):
                self.selector.close()

    def _accept(self) -> None:
        for _ in range(256):  # then the others get their turn
            try:
                sock, _addr = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # closed, or out of descriptors: try at the next event
                return
            try:
                uid = peer_uid(sock)
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            root = uid == 0
            most = self.limits.root_connections if root else self.limits.connections
            if self.open[root] >= most:
                self.refused_busy += 1
                with contextlib.suppress(OSError):
                    sock.send(
                        encode(
                            {
                                "ok": False,
                                "busy": True,
                                "error": (f"busy: {most} connections open; try again"),
                            }
                        )
                    )
                sock.close()
                continue
            conn = _Connection(sock, uid, time.monotonic() + self.limits.request_timeout)
            self.connections.add(conn)
            self.open[root] += 1
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Connection) -> None:
        try:
            chunk = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.draining:
            if not chunk or b"\n" in chunk:
                conn.draining = False
                if not conn.out:
                    self._close(conn)
            return
        if not chunk:  # the peer is done sending: a request without its newline counts
            if conn.buf:
                self._submit(conn, bytes(conn.buf))
            else:
                self._close(conn)
            return
        end = chunk.find(b"\n")
        limit = self.limits.root_line if conn.root else self.limits.line
        size = len(conn.buf) + (len(chunk) if end < 0 else end + 1)
        if size > limit:
            self.refused_large += 1
            self._refuse(
                conn, f"request too large: more than {limit} bytes in one line", drain=end < 0
            )
            return
        if end >= 0:
            conn.buf += chunk[: end + 1]
            self._submit(conn, bytes(conn.buf))
            return
        if conn.root:
            if self.root_buffered + len(chunk) > self.limits.root_buffer:
                self.refused_busy += 1
                self._refuse(
                    conn,
                    "busy: root's requests being received are too large together; try again",
                    busy=True,
                )
                return
            self.root_buffered += len(chunk)
        conn.buf += chunk

    def _release(self, conn: _Connection) -> None:
        if conn.root:
            self.root_buffered -= len(conn.buf)
        conn.buf = bytearray()

    def _refuse(
        self, conn: _Connection, error: str, busy: bool = False, drain: bool = True
    ) -> None:
        """Answer with an error and close once it is written and the rest of the line has
        been read and dropped (closing a Unix socket with unread bytes resets the peer, which
        would then lose the answer while still sending)."""
        self._release(conn)
        conn.draining = drain
        reply: dict[str, Any] = {"ok": False, "error": error}
        if busy:
            reply[BUSY] = True
        self._reply(conn, encode(reply))

    def _submit(self, conn: _Connection, line: bytes) -> None:
        self._release(conn)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        self._jobs[conn.root].put((conn, line, conn.deadline))

    def _take_replies(self) -> None:
        while True:
            try:
                conn, data = self._done.get_nowait()
            except queue.Empty:
                return
            if not conn.closed:
                self._reply(conn, data)

    def _reply(self, conn: _Connection, data: bytes) -> None:
        conn.out = memoryview(data)
        conn.deadline = time.monotonic() + self.limits.request_timeout
        events = selectors.EVENT_WRITE | (selectors.EVENT_READ if conn.draining else 0)
        try:
            self.selector.modify(conn.sock, events, conn)
        except KeyError:
            self.selector.register(conn.sock, events, conn)
        self._write(conn)

    def _write(self, conn: _Connection) -> None:
        assert conn.out is not None
        try:
            while conn.out:
                sent = conn.sock.send(conn.out)
                conn.out = conn.out[sent:]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        self.served += 1
        if conn.draining:  # the answer is out; the rest of the line still comes
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
        else:
            self._close(conn)

    def _expire(self, now: float) -> float:
        """Deal with the connections past their deadline; seconds until the next one (at
        most 1)."""
        wait = 1.0
        for conn in list(self.connections):
            if conn.deadline > now:
                wait = min(wait, conn.deadline - now)
            elif conn.out is None and not self._is_reading(conn):
                continue  # with the pool: its command runs; its reply gets a new deadline
            elif conn.out is None:  # it never sent a whole request: answered, then closed
                self.timed_out += 1
                timeout = self.limits.request_timeout
                self._refuse(
                    conn, f"timeout: no complete request within {timeout:g} s", drain=False
                )
                if not conn.closed:
                    wait = min(wait, 1.0)
            else:  # it does not take its answer, or does not stop sending a refused line
                self.timed_out += bool(conn.out)
                self._close(conn)
        return max(wait, 0.0)

    def _is_reading(self, conn: _Connection) -> bool:
        try:
            return self.selector.get_key(conn.sock).data is conn
        except (KeyError, ValueError):
            return False  # with the pool: its command runs; its reply gets a new deadline

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._release(conn)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()
        self.connections.discard(conn)
        self.open[conn.root] -= 1

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"!")

    # ---- the pools --------------------------------------------------------------------------

    def _work(self, root: bool) -> None:
        jobs = self._jobs[root]
        while True:
            job = jobs.get()
            if job is None:
                return
            conn, line, deadline = job
            if time.monotonic() > deadline + self.limits.request_timeout:
                reply: dict[str, Any] = {
                    "ok": False,
                    "busy": True,
                    "error": "busy: the request waited too long; try again",
                }
            else:
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    reply = self.handle(request, conn.uid)
                except Exception as exc:  # answer, never crash the daemon
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            try:
                data = encode(reply)
            except (TypeError, ValueError) as exc:
                data = encode({"ok": False, "error": f"unencodable reply: {exc}"})
            self._done.put((conn, data))
            self._wake()
