"""`status` while a worker loads a large policy (issue 19, item 4): it answers at once and
says the worker is loading, instead of waiting for the load behind the worker's lock; and a
large policy is given time to load in proportion to its files."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ips.daemon import supervisor
from ips.daemon.refresh import RefreshClock
from ips.daemon.stats import Counters
from ips.views.status import format_status


class FakeDiversion:
    kernel_rules = 0
    offload_generation = None

    def counters(self) -> dict[str, Any]:
        return {}

    def kernel_hits(self, counters: object = None) -> dict[str, int]:
        return {}

    def offered(self, counters: object = None) -> int | None:
        return None

    def block_drops(self, counters: object = None) -> int:
        return 0

    def describe(self) -> dict[str, object]:
        return {"backend": "nft", "queue": 0, "hooks": ["forward"], "fail_open": True}

    def blocks(self) -> list[object]:
        return []


def fake_worker(conn: Any, loading: threading.Event, release: threading.Event) -> None:
    """A worker that answers stats at once and blocks in `load` until released."""
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg["op"] == "load":
            loading.set()
            release.wait(10)
            conn.send({"ok": True, "id": msg["id"]})
        elif msg["op"] == "stats":
            conn.send({"ok": True, "packets": 7, "id": msg["id"]})
        else:
            return


def handle(conn: Any) -> supervisor.WorkerHandle:
    worker = object.__new__(supervisor.WorkerHandle)
    worker.conn = conn
    worker.lock = threading.Lock()
    worker.serving = None
    worker._ids = iter(range(1, 1000))  # type: ignore[assignment]
    worker.queue = 0
    worker.process = type("P", (), {"pid": 4242})()  # type: ignore[assignment]
    return worker


@pytest.fixture
def loading_daemon() -> Iterator[tuple[supervisor.Daemon, threading.Event, threading.Event]]:
    ours, theirs = mp.Pipe()
    loading, release = threading.Event(), threading.Event()
    worker_thread = threading.Thread(target=fake_worker, args=(theirs, loading, release))
    worker_thread.start()
    d = object.__new__(supervisor.Daemon)
    d.cfg = type("Cfg", (), {"queue": 0, "mode": "tap", "offloading": False})()  # type: ignore[assignment]
    d.workers = [handle(ours)]
    d.diversion = FakeDiversion()  # type: ignore[assignment]
    d.counters = Counters()
    d.policy, d.main, d.loaded_at = None, "p.rules", time.time()
    d.confirm_deadline = d.unconfirmed = d.restored_from = None
    d.never_block = ()
    d.run = {"id": "run-1"}
    d.table_refresh = RefreshClock()
    yield d, loading, release
    release.set()
    ours.send({"op": "stop", "id": 0})
    worker_thread.join(10)


def test_status_answers_at_once_while_a_worker_loads(
    loading_daemon: tuple[supervisor.Daemon, threading.Event, threading.Event],
) -> None:
    d, loading, release = loading_daemon
    assert d.status()["worker"]["packets"] == 7  # not loading: the worker answers
    applying = threading.Thread(
        target=lambda: d.workers[0].request({"op": "load", "main": "p", "sources": {}})
    )
    applying.start()
    assert loading.wait(5)
    start = time.monotonic()
    status = d.status()
    took = time.monotonic() - start
    assert took < supervisor.STATUS_WAIT + 0.5, took  # without the change: until the load ends
    assert status["workers"][0]["error"] == "loading policy"
    assert status["worker"]["error"] == "loading policy"
    assert "loading policy" in format_status(status)
    release.set()
    applying.join(5)
    assert d.status()["worker"]["packets"] == 7  # the load done, the worker answers again


def test_other_requests_still_wait_for_the_worker() -> None:
    ours, theirs = mp.Pipe()
    loading, release = threading.Event(), threading.Event()
    threading.Thread(target=fake_worker, args=(theirs, loading, release), daemon=True).start()
    worker = handle(ours)
    threading.Thread(target=lambda: worker.request({"op": "load"}), daemon=True).start()
    assert loading.wait(5)
    with pytest.raises(supervisor.WorkerBusy, match="loading policy"):
        worker.request({"op": "stats"}, wait=0.05)
    threading.Timer(0.3, release.set).start()
    assert worker.request({"op": "stats"})["packets"] == 7  # no wait given: as long as it takes
    ours.send({"op": "stop", "id": 0})


def test_a_large_policy_is_given_time_to_load() -> None:
    assert supervisor.load_timeout({"p.rules": "drop from @big\n"}) == pytest.approx(10.0, 0.01)
    big = {"p.rules": 'table big file "big.txt"\n', "big.txt": "10.0.0.1\n" * 1_500_000}
    assert supervisor.load_timeout(big) >= 35.0  # 1,000,000 entries load in 2.5 to 6 s
    timeouts: list[float] = []

    class Recording:
        def request(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
            timeouts.append(timeout)
            return {"ok": True}

    d = object.__new__(supervisor.Daemon)
    d.cfg = type("Cfg", (), {"offloading": False})()  # type: ignore[assignment]
    d.diversion = type("D", (), {"update": lambda self, policy: None})()  # type: ignore[assignment]
    d.workers = [Recording()]  # type: ignore[list-item]
    d._set_policy = lambda policy, main, sources: None  # type: ignore[method-assign]
    d._swap(None, "p.rules", big)  # type: ignore[arg-type]
    assert timeouts == [supervisor.load_timeout(big)]
