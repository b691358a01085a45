"""The store sink: the engine's effects into the store, off the packet path.

`events()` (on the packet path) turns a flow record into its row at once — the Flow is the
engine's, and may change after — and puts it, or the other effects as they are, on a
bounded queue; nothing else. When the queue is full the record is dropped and counted
(`dropped`): packets never wait for the disk. A writer thread takes what is queued every
`flush_every` seconds (or as soon as `batch_size` records wait), converts it, and writes it
in one transaction per file (`StoreBackend.write`). A failed write (disk full, a read-only
file, the server gone) loses that batch, is counted (`write_errors`, `last_error`) and
reported in `ipsctl status`; the next batch tries again.

What a SIGKILL loses: the records in the queue and the batch being written (at most
`flush_every` seconds, or `batch_size` records, of them); what was committed stays, and
the files open cleanly (SQLite's WAL, PostgreSQL's recovery).

Retention runs in the same thread every `expire_every` seconds with the clock it is given.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ips.core.events import Alert, AppEvent, Block, Effect, FlowEnd, LogRecord, MacBlock, Unblock
from ips.geo.enrich import Enricher
from ips.store.backend import Batch, StoreBackend
from ips.store.records import (
    HomeNetworks,
    Row,
    add_rollups,
    alert_row,
    app_row,
    block_row,
    flow_row,
    log_row,
)
from ips.store.retention import Retention

QUEUE_LIMIT = 100_000  # records waiting; beyond: dropped and counted
BATCH_SIZE = 1000
FLUSH_EVERY = 0.5
EXPIRE_EVERY = 600.0

_FLOW = object()  # the queue's tag of a flow row already made


# The effects the store keeps besides flow records (effect_row makes their rows).
STORED = (Alert, Block, Unblock, MacBlock, LogRecord, AppEvent)


def effect_row(item: Effect, iface: str | None) -> tuple[str, Row] | None:
    """The table and row of an effect other than a flow record (None: not stored)."""
    if isinstance(item, Alert):
        return "alerts", alert_row(item, iface)
    if isinstance(item, (Block, Unblock, MacBlock)):
        return "blocks", block_row(item)
    if isinstance(item, LogRecord):
        return "logs", log_row(item, iface)
    if isinstance(item, AppEvent):
        return "app_events", app_row(item, iface)
    return None


class StoreSink:
    """A Sink (and an Output) writing to a StoreBackend from its own thread."""

    def __init__(
        self,
        backend: StoreBackend,
        *,
        iface: str | None = None,
        home: HomeNetworks | None = None,
        retention: Retention | None = None,
        queue_limit: int = QUEUE_LIMIT,
        batch_size: int = BATCH_SIZE,
        flush_every: float = FLUSH_EVERY,
        expire_every: float = EXPIRE_EVERY,
        clock: Callable[[], float] = time.time,
        synchronous: bool = False,
        enrich: Enricher | None = None,
    ) -> None:
        self.backend = backend
        # The countries and AS numbers of a flow's ends: the Enricher the EVE writer has
        # (the worker swaps it with each policy); None: those columns stay NULL.
        self.enrich = enrich
        self.iface = iface
        self.home = home or HomeNetworks()
        self.retention = retention
        self.queue_limit = queue_limit
        self.batch_size = batch_size
        self.flush_every = flush_every
        self.expire_every = expire_every
        self.clock = clock
        # Offline (replay): no thread; a full batch is written by events() itself, so
        # nothing is dropped and the same capture always gives the same store.
        self.synchronous = synchronous
        self.queue: deque[Any] = deque()
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None
        # Counters (status `sinks.store`).
        self.queued = 0
        self.dropped = 0
        self.written = 0
        self.batches = 0
        self.write_errors = 0
        self.failed = 0  # records of the batches that failed
        self.last_error: str | None = None
        self.expired: dict[str, int] = {}
        self.expire_errors = 0
        self._next_expire = 0.0

    # ---- the packet path ----

    def events(self, events: Iterable[Effect]) -> None:
        queue, limit = self.queue, self.queue_limit
        for ev in events:
            if len(queue) >= limit and not self.synchronous:
                self.dropped += 1
                continue
            if ev.__class__ is FlowEnd:
                queue.append((_FLOW, flow_row(ev, self.iface, self.home, self.enrich)))
            else:
                queue.append(ev)
            self.queued += 1
        if len(queue) >= self.batch_size:
            if self.synchronous:
                self.flush()
            else:
                self.wake.set()

    # ---- the writer ----

    def start(self) -> StoreSink:
        self.thread = threading.Thread(target=self._run, name="ipsctl-store", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.wake.wait(self.flush_every)
            self.wake.clear()
            self.flush()
            if self.retention is not None:
                self.expire_due()
            if self.stopping and not self.queue:
                return

    def take(self) -> list[Any]:
        queue = self.queue
        n = len(queue)
        return [queue.popleft() for _ in range(n)]

    def make_batch(self, items: list[Any]) -> Batch:
        raw: dict[str, list[Row]] = {}
        iface = self.iface
        for item in items:
            if item.__class__ is tuple and item[0] is _FLOW:
                raw.setdefault("flows", []).append(item[1])
            else:
                made = effect_row(item, iface)
                if made is not None:
                    raw.setdefault(made[0], []).append(made[1])
        return Batch(raw, add_rollups(raw.get("flows", ())))

    def flush(self) -> int:
        """Write what is queued, in batches of batch_size; the records written."""
        done = 0
        while self.queue:
            items = self.take()
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                try:
                    batch = self.make_batch(chunk)
                except Exception as exc:  # a record that makes no row: counted, not raised
                    self._failed(len(chunk), exc)
                    continue
                if self.write_batch(batch, len(chunk)):
                    done += len(chunk)
        return done

    def write_rows(self, raw: dict[str, list[Row]], records: int) -> bool:
        """Write rows already made (the writer process's batches), with their rollups."""
        try:
            batch = Batch(raw, add_rollups(raw.get("flows", ())))
        except Exception as exc:
            self._failed(records, exc)
            return False
        return self.write_batch(batch, records)

    def write_batch(self, batch: Batch, records: int) -> bool:
        """One batch in one transaction per file; a failure is counted, not raised."""
        try:
            self.backend.write(batch)
        except Exception as exc:  # disk full, read-only, server gone: counted
            self._failed(records, exc)
            return False
        self.written += records
        self.batches += 1
        return True

    def _failed(self, records: int, exc: Exception) -> None:
        self.write_errors += 1
        self.failed += records
        self.last_error = f"{type(exc).__name__}: {exc}"

    def expire_due(self) -> None:
        now = self.clock()
        if now < self._next_expire or self.retention is None:
            return
        self._next_expire = now + self.expire_every
        try:
            for level, n in self.backend.expire(now, self.retention).items():
                self.expired[level] = self.expired.get(level, 0) + n
        except Exception as exc:
            self.expire_errors += 1
            self.last_error = f"retention: {type(exc).__name__}: {exc}"

    # ---- Output ----

    def stats(self) -> dict[str, Any]:
        return {
            "target": self.backend.target,
            "queued": self.queued,
            "waiting": len(self.queue),
            "written": self.written,
            "batches": self.batches,
            "dropped": self.dropped,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
            "expired": dict(self.expired),
            "expire_errors": self.expire_errors,
            "retention": self.retention.text() if self.retention is not None else None,
        }

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within timeout seconds), then close the backend."""
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                print(
                    f"ipsctl store: {len(self.queue)} records not written at stop",
                    file=sys.stderr,
                    flush=True,
                )
                return
        else:
            self.flush()
        self.backend.close()
