"""SIGKILL of a process writing to the store, in the middle of its batches: the store opens
again cleanly (SQLite's integrity check on every file) and everything committed is there;
what is lost is at most the batch being written and what was queued."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from store_data import T0

from ips.store.backend import SqliteStore
from ips.store.query import history, volume

ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from ips.store.backend import SqliteStore
    from ips.store.sink import StoreSink
    from store_data import synthetic_flows

    class Reporting(SqliteStore):
        def write(self, batch):
            super().write(batch)
            print(len(batch), flush=True)  # committed: the parent may kill us from now on

    sink = StoreSink(Reporting({path!r}), batch_size=500, flush_every=0.01).start()
    seed = 0
    while True:
        seed += 1
        sink.events(synthetic_flows(500, seed=seed))
        while len(sink.queue) > 2000:  # keep the writer busy, not the queue full
            pass
    """
)


def test_sigkill_mid_batch_loses_at_most_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "store"
    script = WRITER.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = 0
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while committed < 10_000 and time.monotonic() < deadline:
            # A child that stalls must not hold the test past its deadline: wait for its
            # next line with select, not in readline (it prints whole lines, flushed).
            if not select.select([proc.stdout], [], [], deadline - time.monotonic())[0]:
                break
            line = proc.stdout.readline()
            if not line:
                break
            committed += int(line)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the next batch, most likely
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    # Lines the child printed after our last read: committed too.
    assert proc.stdout is not None
    committed += sum(int(line) for line in proc.stdout.read().split())
    assert committed >= 10_000, "the writer did not get going"
    store = SqliteStore(path)  # opens cleanly: WAL recovery, migrations already applied
    assert store.integrity() == []
    flows = sum(1 for _ in history(store, "flows", since=0, until=2e9, limit=None))
    # Everything committed is there; at most the batch in flight (500) had reached the file
    # without its commit being reported (the kill between commit and print).
    assert committed <= flows <= committed + 500
    # The rollups committed with the raw rows of each batch (one transaction per file).
    rolled = volume(store, since=T0 - 60, until=T0 + 6 * 3600, step="1h")
    assert sum(r["flows"] for r in rolled["rows"]) in range(committed, committed + 501)
    store.close()
