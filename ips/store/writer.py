"""The store's writer in a process of its own (the daemon's store sink).

Why a process: the writer thread's Python work (the rows' Community IDs and directions, the
rollups' sums, sqlite3's and psycopg's own Python) competed with the packet loop for the
worker's GIL. Now the worker keeps only what cannot wait — a flow record's fields copied
into a tuple (`flow_snapshot`: the Flow is the engine's) appended to a bounded deque — and a
hand-over thread that sends the queue to the writer in batches, encoded with `marshal`
(plain tuples: one C call per batch). The writer process makes the rows and the rollups,
writes them (SQLite or PostgreSQL, the same `StoreSink.write_rows`) and expires old rows.

    worker (packet loop)   events(): snapshot, append to the deque (full: dropped, counted)
    worker (hand-over)     every flush_every s, or when batch_size records wait: the deque
                           in batches -> marshal -> the pipe (blocking there is the thread's,
                           never the packets'); reads the writer's counters back
    writer process         python -m ips.store.writer: opens the store, then per batch
                           rows + rollups + one transaction per file; its counters back
                           after each batch; retention every expire_every s

Guarantees (docs/store.md):

- Packets never wait: the deque is bounded (queue_limit records waiting in the worker);
  beyond, records are dropped and counted. A slow writer fills the pipe, the hand-over
  thread waits there (without the GIL) and the deque fills.
- Counters: the writer sends its own (written, batches, write_errors, last_error, expired)
  after each batch; `stats()` adds them to the worker's (queued, dropped, waiting, lost).
- A clean stop (`close(timeout)`) hands over what waits, tells the writer to stop, and
  waits for it to write everything it was given, within `timeout`; what is not confirmed
  by then is reported on stderr and the writer is killed.
- The writer dies with the worker: PR_SET_PDEATHSIG (SIGTERM) and the pipe's EOF; on
  either it writes what it has already received (within STOP_BUDGET seconds, then SIGALRM
  ends it) and exits. No orphans.
- The writer holds no capabilities: it is started after the worker dropped all but
  CAP_NET_ADMIN and CAP_NET_RAW, and clears those too (it never executes anything).
- A writer that dies (killed, crashed) is counted (`writer_exits`), its in-flight records
  (sent, not confirmed) are counted as `lost`, and it is started again — at most once
  every RESTART_EVERY seconds; meanwhile records wait in the deque (or are dropped when it
  is full).

What a SIGKILL loses. Of the worker: the records in its deque and the batch it was
sending (at most flush_every seconds, or queue_limit records when the writer was behind);
the writer writes what it had received and exits. Of the writer: the batches it had
received and not committed (at most what the pipe holds plus the batch being written:
about 1 MiB of encoded records, a few thousand); the worker counts them as lost and starts
a new writer. What was committed stays, and the files open cleanly (SQLite's WAL,
PostgreSQL's recovery).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import marshal
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ips.core.events import Effect, FlowEnd
from ips.geo.enrich import Enricher
from ips.store.records import (
    DEFAULT_HOME,
    FLOW_FIELDS,
    HomeNetworks,
    Row,
    flow_snapshot,
    snapshot_row,
)
from ips.store.sink import (
    BATCH_SIZE,
    EXPIRE_EVERY,
    FLUSH_EVERY,
    QUEUE_LIMIT,
    STORED,
    effect_row,
)

STOP_BUDGET = 3.0  # seconds a writer whose worker is gone may take to write what it has
START_TIMEOUT = 30.0  # seconds a new writer may take to open the store and say so
RESTART_EVERY = 10.0  # at most one new writer in this many seconds (no crash loop)
PIPE_SIZE = 1 << 20  # the pipe to the writer: about 1 MiB of encoded batches in flight
_F_SETPIPE_SZ = 1031
# marshal's version 2: no back-references (3 and 4 look every object up in a table to share
# repeats), about half the CPU per record for 15 % more bytes; the bytes are a pipe's.
MARSHAL_VERSION = 2


class WriterError(Exception):
    """The writer process could not be started, or could not open the store."""


# ---- the worker's side --------------------------------------------------------------------------


class ProcessStoreSink:
    """A Sink (and an Output) handing the store's records to a writer process."""

    def __init__(
        self,
        target: str,
        *,
        iface: str | None = None,
        home: Iterable[str] = DEFAULT_HOME,
        retention: str | None = None,
        queue_limit: int = QUEUE_LIMIT,
        batch_size: int = BATCH_SIZE,
        flush_every: float = FLUSH_EVERY,
        expire_every: float = EXPIRE_EVERY,
        enrich: Enricher | None = None,
        restart_every: float = RESTART_EVERY,
    ) -> None:
        self.target = target
        self.iface = iface
        self.enrich = enrich  # the worker's, swapped with each policy
        self.queue_limit = queue_limit
        self.batch_size = batch_size
        self.flush_every = flush_every
        self.restart_every = restart_every
        self.config = {
            "target": target,
            "iface": iface,
            "home": list(home),
            "retention": retention,
            "expire_every": expire_every,
        }
        self.queue: deque[Any] = deque()
        self.wake = threading.Event()
        self.stopping = False
        self.deadline = float("inf")  # monotonic; set by close()
        self.thread: threading.Thread | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._to_writer: Connection | None = None
        self._from_writer: Connection | None = None
        self._lock = threading.Lock()  # the writer's counters: read by the thread and stats()
        self._last_start = float("-inf")
        # Counters: the worker's own, and the writer's (`_writer`: the one running now;
        # `_before`: the sums of the writers that exited).
        self.queued = 0
        self.dropped = 0
        self.sent = 0  # records handed to a writer
        self.lost = 0  # handed to a writer that died before it confirmed them
        self.unencodable = 0  # records that made no row or could not be encoded (a bug)
        self.writer_exits = 0
        self.last_error: str | None = None
        self._writer: dict[str, Any] = _zero()
        self._before: dict[str, Any] = _zero()
        self._accounted = 0  # records of `sent` confirmed or lost

    # ---- the packet path ----

    def events(self, events: Iterable[Effect]) -> None:
        queue, enrich = self.queue, self.enrich
        append = queue.append
        plain = enrich is None or enrich.geo is None
        # Only this thread appends (the hand-over thread takes): the room only grows meanwhile.
        room = self.queue_limit - len(queue)
        taken = dropped = 0
        for ev in events:
            if ev.__class__ is not FlowEnd and not isinstance(ev, STORED):
                continue  # not a record the store keeps (a verdict's other effects)
            if taken >= room:
                dropped += 1
                continue
            taken += 1
            if ev.__class__ is not FlowEnd:
                append(ev)
                continue
            f = ev.flow
            if plain and f.app is None and ev.kernel is None:
                append((FLOW_FIELDS(f), ev.reason))  # flow_snapshot's common case
            else:
                append(flow_snapshot(ev, enrich))
        self.queued += taken
        if dropped:
            self.dropped += dropped
        if len(queue) >= self.batch_size and not self.wake.is_set():
            self.wake.set()

    # ---- starting the writer ----

    def start(self) -> ProcessStoreSink:
        """Start the writer (it opens the store; WriterError if it cannot) and the thread
        that feeds it."""
        self._spawn()
        self.thread = threading.Thread(target=self._run, name="ipsctl-store", daemon=True)
        self.thread.start()
        return self

    def _spawn(self) -> None:
        self._last_start = time.monotonic()
        to_read, to_write = os.pipe()
        back_read, back_write = os.pipe()
        with contextlib.suppress(OSError):  # a bigger pipe: fewer waits; not vital
            fcntl.fcntl(to_write, _F_SETPIPE_SZ, PIPE_SIZE)
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
        config = dict(self.config, parent=os.getpid(), input=to_read, output=back_write)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ips.store.writer", json.dumps(config)],
                pass_fds=(to_read, back_write),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            os.close(to_write)
            os.close(back_read)
            raise WriterError(f"store writer: {exc}") from None
        finally:
            os.close(to_read)  # the writer's ends: theirs alone, so EOF means it is gone
            os.close(back_write)
        to_writer = Connection(to_write, readable=False)
        from_writer = Connection(back_read, writable=False)
        # The first message: the store is open (or why not). It is read before the pipes are
        # published: stats(), on another thread, reads every message on a published pipe as
        # counters, and would take this one.
        try:
            if not from_writer.poll(START_TIMEOUT):
                raise WriterError("store writer: no answer")
            hello = marshal.loads(from_writer.recv_bytes())
            refused = f"{hello['error']}" if hello.get("error") else None
        except (EOFError, OSError, WriterError) as exc:
            refused = f"store writer did not start: {exc}"
        if refused is not None:
            for conn in (to_writer, from_writer):
                with contextlib.suppress(OSError):
                    conn.close()
            self._reap()
            raise WriterError(refused)
        with self._lock:
            self._to_writer, self._from_writer = to_writer, from_writer
            self._writer = _zero()

    def _reap(self) -> None:
        """The writer gone (or made to go): its pipes closed, its exit status collected."""
        with self._lock:  # not while stats() or the thread reads the writer's counters
            for conn in (self._to_writer, self._from_writer):
                if conn is not None:
                    with contextlib.suppress(OSError):
                        conn.close()
            self._to_writer = self._from_writer = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
            self.proc.wait()

    # ---- the hand-over thread ----

    def _run(self) -> None:
        while True:
            self.wake.wait(self.flush_every)
            self.wake.clear()
            if self._to_writer is None and not self._restart():
                if self.stopping:
                    return
                continue
            try:
                self._hand_over()
                self._read_counters()
            except (OSError, EOFError):
                self._writer_gone()
                continue
            except Exception as exc:  # never let the thread die: the store would go silent
                self.last_error = f"store hand-over: {type(exc).__name__}: {exc}"
                continue
            if self.proc is not None and self.proc.poll() is not None:
                self._writer_gone()
                continue
            if self.stopping and not self.queue:
                try:
                    self._finish()
                except Exception as exc:  # the stop goes on; close() reports what is left
                    self.last_error = f"store stop: {type(exc).__name__}: {exc}"
                return

    def _hand_over(self) -> None:
        queue, size = self.queue, self.batch_size
        while queue:
            n = min(len(queue), size)
            flows: list[Any] = []
            others: list[tuple[str, Row]] = []
            iface = self.iface
            for _ in range(n):
                item = queue.popleft()
                if item.__class__ is tuple:
                    flows.append(item)
                    continue
                try:
                    made = effect_row(item, iface)
                except Exception as exc:  # an effect that makes no row: counted, not raised
                    self._unencodable(1, exc)
                    continue
                if made is not None:
                    others.append(made)
            try:
                blob = marshal.dumps((flows, others), MARSHAL_VERSION)
            except ValueError as exc:  # a value marshal cannot carry: the batch is lost
                self._unencodable(len(flows) + len(others), exc)
                continue
            assert self._to_writer is not None
            self.sent += len(flows) + len(others)
            self._to_writer.send_bytes(blob)  # the GIL is released while the pipe is full
            # The writer's counters after each batch: it must never wait on a full pipe back
            # while this thread waits on a full pipe to it.
            self._read_counters()

    def _unencodable(self, records: int, exc: Exception) -> None:
        self.unencodable += records
        self.last_error = f"store hand-over: {type(exc).__name__}: {exc}"

    def _read_counters(self) -> None:
        with self._lock:
            conn = self._from_writer
            while conn is not None and conn.poll(0):
                self._writer = marshal.loads(conn.recv_bytes())

    def _finish(self) -> None:
        """A clean stop: tell the writer; wait for its last counters and its exit. (close()
        may reap the writer meanwhile, at the end of its budget: its pipes then raise.)"""
        to_writer, from_writer = self._to_writer, self._from_writer
        if to_writer is None or from_writer is None:
            return
        try:
            to_writer.send_bytes(b"")
            while True:
                left = self.deadline - time.monotonic()
                if left <= 0 or not from_writer.poll(left):
                    return
                with self._lock:  # stats() reads the same pipe
                    counters = marshal.loads(from_writer.recv_bytes())
                    self._writer = counters
                if counters.get("closed"):
                    break
        except (OSError, EOFError, ValueError):
            return
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(max(0.0, self.deadline - time.monotonic()))

    def _writer_gone(self) -> None:
        """The writer died: what it had not confirmed is lost (counted); a new one is
        started by the next round (at most once every restart_every seconds)."""
        with contextlib.suppress(OSError, EOFError):
            self._read_counters()  # its last words, if any
        self._reap()
        code = self.proc.returncode if self.proc is not None else None
        how = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
        with self._lock:
            done = self._writer["written"] + self._writer["failed"]
            self.lost += self.sent - self._accounted - done
            for key in ("written", "batches", "write_errors", "failed", "expire_errors"):
                self._before[key] += self._writer[key]
            for level, n in self._writer["expired"].items():
                self._before["expired"][level] = self._before["expired"].get(level, 0) + n
            self._accounted = self.sent
            self._writer = _zero()
            self.writer_exits += 1
            self.last_error = f"store writer exited ({how})"

    def _restart(self) -> bool:
        if self.stopping or time.monotonic() - self._last_start < self.restart_every:
            return False
        try:
            self._spawn()
        except WriterError as exc:
            self.last_error = str(exc)
            return False
        return True

    # ---- Output ----

    def stats(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, EOFError):
            self._read_counters()
        with self._lock:
            w, b = self._writer, self._before
            expired = dict(b["expired"])
            for level, n in w["expired"].items():
                expired[level] = expired.get(level, 0) + n
            in_flight = self.sent - self._accounted - w["written"] - w["failed"]
            return {
                "target": self.target,
                "queued": self.queued,
                "waiting": len(self.queue) + max(0, in_flight),
                "written": b["written"] + w["written"],
                "batches": b["batches"] + w["batches"],
                "dropped": self.dropped,
                "write_errors": b["write_errors"] + w["write_errors"],
                "lost": self.lost,
                "unencodable": self.unencodable,
                "last_error": w["last_error"] or self.last_error,
                "expired": expired,
                "expire_errors": b["expire_errors"] + w["expire_errors"],
                "retention": w.get("retention") or self.config["retention"],
                "writer": {
                    "pid": self.proc.pid if self.proc is not None else None,
                    "exits": self.writer_exits,
                },
            }

    def close(self, timeout: float = 5.0) -> None:
        """Hand over what waits and let the writer write it all (within timeout seconds);
        what it has not confirmed by then is reported on stderr, and it is killed."""
        self.deadline = time.monotonic() + timeout
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)
        left = self.stats()["waiting"]
        self._reap()  # done: it has exited; not done in time: the rest is lost with it
        if left:
            print(f"ipsctl store: {left} records not written at stop", file=sys.stderr, flush=True)


def _zero() -> dict[str, Any]:
    return {
        "written": 0,
        "batches": 0,
        "write_errors": 0,
        "failed": 0,
        "last_error": None,
        "expired": {},
        "expire_errors": 0,
    }


# ---- the writer process -------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the worker dies (PR_SET_PDEATHSIG); gone at once if it already has."""
    import ctypes

    with contextlib.suppress(OSError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:
        os._exit(0)


def _parent_gone(_signum: int, _frame: Any) -> None:
    # Write what was received (the loop goes on until the pipe's EOF), but no longer than
    # STOP_BUDGET: then SIGALRM's default action ends the process.
    signal.alarm(int(STOP_BUDGET))


def serve(
    conn_in: Connection,
    conn_out: Connection,
    sink: Any,
    iface: str | None,
    home: HomeNetworks,
) -> None:
    """The writer's loop: batches in, rows and rollups written, counters out; until the
    stop message (b"") or the pipe's EOF (the worker is gone)."""

    def report(closed: bool = False) -> None:
        counters = {
            "written": sink.written,
            "batches": sink.batches,
            "write_errors": sink.write_errors,
            "failed": sink.failed,
            "last_error": sink.last_error,
            "expired": dict(sink.expired),
            "expire_errors": sink.expire_errors,
            "retention": sink.retention.text() if sink.retention is not None else None,
            "closed": closed,
        }
        with contextlib.suppress(OSError):
            conn_out.send_bytes(marshal.dumps(counters))

    while True:
        if sink.retention is not None:
            sink.expire_due()
        if not conn_in.poll(sink.flush_every):
            continue
        try:
            blob = conn_in.recv_bytes()
        except (EOFError, OSError):
            break  # the worker is gone: everything received is written
        if not blob:
            break  # a clean stop
        flows, others = marshal.loads(blob)
        raw: dict[str, list[Row]] = {}
        if flows:
            raw["flows"] = [snapshot_row(snap, iface, home) for snap in flows]
        for table, row in others:
            raw.setdefault(table, []).append(row)
        sink.write_rows(raw, len(flows) + len(others))
        report()
    with contextlib.suppress(Exception):
        sink.backend.close()
    report(closed=True)


def main(argv: list[str]) -> int:
    """python -m ips.store.writer CONFIG (JSON): the writer process."""
    from ips.store.backend import StoreError, open_store
    from ips.store.retention import Retention
    from ips.store.sink import StoreSink

    config = json.loads(argv[0])
    _die_with_parent(int(config["parent"]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the supervisor's
    signal.signal(signal.SIGTERM, _parent_gone)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if os.geteuid() == 0:
        from ips.privileges import clear_capabilities

        with contextlib.suppress(OSError):
            clear_capabilities()  # it writes files it owns and never executes anything
    conn_in = Connection(int(config["input"]), writable=False)
    conn_out = Connection(int(config["output"]), readable=False)
    try:
        retention = Retention.parse(config["retention"]) if config.get("retention") else None
        backend = open_store(config["target"])
    except (StoreError, ValueError) as exc:
        conn_out.send_bytes(marshal.dumps({"error": str(exc)}))
        return 2
    sink = StoreSink(
        backend,
        retention=retention,
        expire_every=float(config["expire_every"]),
        clock=time.time,
        synchronous=True,
    )
    conn_out.send_bytes(marshal.dumps({"ready": True}))
    serve(conn_in, conn_out, sink, config["iface"], HomeNetworks(config["home"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
