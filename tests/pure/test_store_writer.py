"""The store's writer process (ips/store/writer.py): records reach the store as the
synchronous sink writes them, the writer's counters reach the worker's stats, a full queue
drops and counts, a clean stop writes everything and leaves no process, a killed writer is
counted and started again, a worker killed takes its writer with it, write errors are
counted, a store that cannot be opened is an error at start."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from store_data import T0, synthetic_events, synthetic_flows

from ips.store.backend import SqliteStore, open_store
from ips.store.query import history, top
from ips.store.records import HomeNetworks, flow_row, flow_snapshot, snapshot_row
from ips.store.sink import StoreSink
from ips.store.writer import ProcessStoreSink, WriterError

ROOT = Path(__file__).resolve().parents[2]


def _wait(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    """Poll condition until it holds (True) or seconds pass (False): the writer is another
    process, and this machine is shared."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _rows(path: Path, kind: str) -> list[dict[str, Any]]:
    store = open_store(str(path), readonly=True)
    return list(history(store, kind, since=0, until=2e9, limit=None))


def test_snapshot_rows_are_flow_rows() -> None:
    home = HomeNetworks()
    for end in synthetic_flows(300):
        assert snapshot_row(flow_snapshot(end), "eth1", home) == flow_row(end, "eth1", home)


def test_records_reach_the_store_as_the_synchronous_sink_writes_them(tmp_path: Path) -> None:
    flows, events = synthetic_flows(1500), synthetic_events(120)
    sink = ProcessStoreSink(str(tmp_path / "p"), iface="eth1", batch_size=200, flush_every=0.05)
    sink.start()
    writer = sink.proc
    assert writer is not None
    sink.events(flows[:700])
    sink.events(events)
    sink.events(flows[700:])
    assert _wait(lambda: sink.stats()["written"] == len(flows) + len(events))
    sink.close()
    s = sink.stats()
    assert s["queued"] == s["written"] == 1620 and s["dropped"] == s["lost"] == 0
    assert s["batches"] >= 9 and s["write_errors"] == 0 and s["waiting"] == 0
    assert writer.returncode == 0 and not _alive(writer.pid)  # a clean stop: it exited
    sync = SqliteStore(tmp_path / "s")
    ref = StoreSink(sync, iface="eth1", synchronous=True, batch_size=200)
    ref.events(flows[:700])
    ref.events(events)
    ref.events(flows[700:])
    ref.flush()
    sync.close()
    for kind in ("flows", "alerts", "blocks", "logs", "app"):
        assert _rows(tmp_path / "p", kind) == _rows(tmp_path / "s", kind), kind
    a, b = open_store(str(tmp_path / "p"), readonly=True), open_store(str(tmp_path / "s"))
    for by in ("src", "port", "sni"):
        args = {"by": by, "since": T0, "until": T0 + 6 * 3600}
        assert top(a, **args) == top(b, **args)


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    sink = ProcessStoreSink(str(tmp_path / "s"), queue_limit=100, batch_size=1000)
    flows = synthetic_flows(250)  # not started: nothing takes the queue
    sink.events(flows[:150])
    sink.events(flows[150:])
    s = sink.stats()
    assert s["queued"] == 100 and s["dropped"] == 150 and s["waiting"] == 100


def test_a_killed_writer_is_counted_and_started_again(tmp_path: Path) -> None:
    sink = ProcessStoreSink(
        str(tmp_path / "s"), batch_size=100, flush_every=0.02, restart_every=0.0
    ).start()
    sink.events(synthetic_flows(300, seed=1))
    assert _wait(lambda: sink.stats()["written"] == 300)
    first = sink.proc
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    assert _wait(lambda: sink.stats()["writer"]["exits"] == 1)
    sink.events(synthetic_flows(300, seed=2))
    assert _wait(lambda: sink.stats()["written"] >= 600 - sink.stats()["lost"])
    s = sink.stats()
    assert s["writer"]["pid"] != first.pid
    assert "signal 9" in (s["last_error"] or "")
    sink.close()
    s = sink.stats()
    # Every record is accounted for: written, or lost with the writer that died.
    assert s["written"] + s["lost"] == s["queued"] == 600 and s["waiting"] == 0
    assert len(_rows(tmp_path / "s", "flows")) == s["written"]


def test_stats_while_a_writer_starts_leaves_its_first_message_to_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer (re)started by the hand-over thread while another thread asks for stats:
    the writer's first message (the store is open) is the start's, not a counter report
    (a race CI once lost: stats() took it, and then failed on it)."""
    from ips.store import writer as writer_module

    sink = ProcessStoreSink(str(tmp_path / "s"), batch_size=100, flush_every=0.02)
    asked: list[dict[str, Any]] = []

    class StatsAskedMeanwhile(writer_module.Connection):
        def poll(self, timeout: float | None = 0.0) -> bool:
            ready = bool(super().poll(timeout))
            if timeout and not asked:  # the start's wait for the first message
                asked.append(sink.stats())
            return ready

    monkeypatch.setattr(writer_module, "Connection", StatsAskedMeanwhile)
    sink.start()
    try:
        assert asked and asked[0]["written"] == 0
        sink.events(synthetic_flows(50, seed=3))
        assert _wait(lambda: sink.stats()["written"] == 50)
    finally:
        sink.close()


def test_write_errors_are_counted_and_the_next_batch_tries_again(tmp_path: Path) -> None:
    sink = ProcessStoreSink(str(tmp_path / "s"), batch_size=100, flush_every=0.02).start()
    sink.events(synthetic_flows(100, t0=T0))
    assert _wait(lambda: sink.stats()["written"] == 100)
    # The directory turns read-only: a new day's file cannot be made (the writer holds no
    # capability that would let it through, as root too).
    (tmp_path / "s").chmod(0o500)
    try:
        sink.events(synthetic_flows(100, t0=T0 + 5 * 86400, span=60))
        assert _wait(lambda: sink.stats()["write_errors"] >= 1)
    finally:
        (tmp_path / "s").chmod(0o750)
    sink.events(synthetic_flows(100, seed=3, t0=T0))
    assert _wait(lambda: sink.stats()["written"] == 200)
    sink.close()
    s = sink.stats()
    assert s["write_errors"] == 1 and "Permission denied" in s["last_error"]


def test_a_store_that_cannot_be_opened_is_an_error_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(WriterError, match="file"):
        ProcessStoreSink(str(tmp_path / "file" / "store")).start()


@pytest.mark.skipif(os.geteuid() != 0, reason="capabilities: as root only")
def test_the_writer_holds_no_capabilities(tmp_path: Path) -> None:
    sink = ProcessStoreSink(str(tmp_path / "s")).start()
    assert sink.proc is not None
    status = Path(f"/proc/{sink.proc.pid}/status").read_text()
    caps = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapPrm"], 16) == 0
    sink.close()


WORKER = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [{root!r}, {tests!r}]
    from ips.store.writer import ProcessStoreSink
    from store_data import synthetic_flows

    sink = ProcessStoreSink({path!r}, batch_size=100, flush_every=0.02).start()
    print(sink.proc.pid, flush=True)
    sink.events(synthetic_flows(500))
    time.sleep(600)
    """
)


def test_the_writer_dies_with_its_worker(tmp_path: Path) -> None:
    script = WORKER.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(tmp_path / "s"))
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        # its first line, the writer's PID, within a bound (readline alone would wait forever
        # for a worker that hung before printing it)
        assert select.select([worker.stdout], [], [], 60)[0], "the worker printed nothing"
        writer = int(worker.stdout.readline())
        assert _alive(writer)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        assert _wait(lambda: not _alive(writer)), "the writer outlived its worker"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    store = SqliteStore(tmp_path / "s")
    assert store.integrity() == []
    store.close()


def test_a_record_that_makes_no_row_is_counted_and_the_rest_written(tmp_path: Path) -> None:
    from ips.core.events import Alert

    bad = Alert(T0, 1, 4, 6, b"\x0a\x00\x00\x01", 1, b"\x5d\x00\x00\x01", 22, action="blocked",
                signature_id=1, signature="s", severity=2, category="c", rule_name="r",
                extra={"not json": {1, 2}})  # fmt: skip
    sink = ProcessStoreSink(str(tmp_path / "s"), batch_size=100, flush_every=0.02).start()
    sink.events([bad, object(), *synthetic_flows(150)])  # object(): not a stored record
    assert _wait(lambda: sink.stats()["written"] == 150)
    sink.close()
    s = sink.stats()
    assert s["unencodable"] == 1 and s["queued"] == 151 and "TypeError" in s["last_error"]


def test_a_stop_past_its_budget_reports_what_is_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    sink = ProcessStoreSink(str(tmp_path / "s"), batch_size=100, flush_every=0.02).start()
    sink.events(synthetic_flows(100))
    assert _wait(lambda: sink.stats()["written"] == 100)
    writer = sink.proc
    assert writer is not None
    # Another process holds the rollup file's lock: the writer's next batch waits for it
    # (up to its busy timeout, 10 s), longer than the stop's budget.
    held = sqlite3.connect(tmp_path / "s" / "rollup.sqlite", isolation_level=None)
    held.execute("BEGIN EXCLUSIVE")
    try:
        sink.events(synthetic_flows(200, seed=9))
        sink.close(timeout=0.5)
    finally:
        held.execute("ROLLBACK")
        held.close()
    s = sink.stats()
    assert s["written"] == 100 and s["waiting"] > 0
    assert f"{s['waiting']} records not written at stop" in capsys.readouterr().err
    assert not _alive(writer.pid)  # killed at the end of the budget: no orphan
