"""The store with SQLite: what the sink writes, the rollups and their peaks, the reports, the
filter grammar in SQL against the live views' own predicate, retention with an injected
clock, drops when the queue is full, write errors counted."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from store_data import T0, synthetic_events, synthetic_flows

from ips.store.backend import Batch, SqliteStore, StoreError, open_store
from ips.store.query import filter_sql, history, split_period, top, volume
from ips.store.records import HomeNetworks, add_rollups, bucket_of, flow_row
from ips.store.retention import Retention, parse_age
from ips.store.schema import MIGRATIONS, SCHEMA_VERSION, pending
from ips.store.sink import StoreSink
from ips.views.flows import FilterError, parse_filter


def fill(path: Path, flows: list[Any], events: list[Any] = (), **kw: Any) -> SqliteStore:  # type: ignore[assignment]
    store = SqliteStore(path)
    sink = StoreSink(store, synchronous=True, batch_size=250, **kw)
    sink.events(flows)
    sink.events(events)
    sink.flush()
    assert sink.write_errors == 0, sink.last_error
    return store


@pytest.fixture(scope="module")
def flows() -> list[Any]:
    return synthetic_flows(3000)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, flows: list[Any]) -> SqliteStore:
    return fill(tmp_path_factory.mktemp("store") / "s", flows, synthetic_events(200))


def test_schema_version_and_migrations(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    assert store.rollup.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == (
        SCHEMA_VERSION
    )
    assert pending(0) == list(MIGRATIONS) and pending(SCHEMA_VERSION) == []
    store.close()
    # A store written by a newer ipsctl is refused, not misread.
    conn = sqlite3.connect(tmp_path / "s" / "rollup.sqlite")
    conn.execute("INSERT INTO schema_version VALUES (?, 'future')", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this ipsctl"):
        SqliteStore(tmp_path / "s")


def test_a_store_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError):
        open_store(str(tmp_path / "file" / "store"))
    with pytest.raises(StoreError, match="no store here"):
        open_store(str(tmp_path / "nothing"), readonly=True)


def test_one_file_per_day_and_every_table(filled: SqliteStore, flows: list[Any]) -> None:
    days = [d for d, _p in filled.day_files()]
    assert days == ["2025-12-01"]
    n = sum(1 for _ in history(filled, "flows", since=0, until=2e9, limit=None))
    assert n == len(flows)
    for kind, count in (("alerts", 40), ("logs", 40), ("app", 40), ("blocks", 80)):
        assert sum(1 for _ in history(filled, kind, since=0, until=2e9, limit=None)) == count
    alert = next(history(filled, "alerts", since=0, until=2e9))
    assert alert["src"].startswith("10.0.0.") and alert["proto"] == "tcp"
    assert alert["extra"] == '{"count":0,"window":5.0}'
    tls = next(history(filled, "app", since=0, until=2e9))
    assert tls["event_type"] == "tls" and tls["ja3"] == "abc" and tls["tls_version"] == "TLS 1.3"
    assert filled.integrity() == []


def _python_sums(flows: list[Any], since: float, until: float, key: Any) -> dict[str, list[int]]:
    sums: dict[str, list[int]] = {}
    for end in flows:
        f = end.flow
        if not (since <= f.last_seen < until):
            continue
        k = key(f)
        if k is None:
            continue
        s = sums.setdefault(k, [0, 0, 0])
        s[0] += 1
        s[1] += f.pkts_fwd + f.pkts_rev
        s[2] += f.bytes_fwd + f.bytes_rev
    return sums


def test_top_from_rollups_equals_the_sums_of_the_flows(
    filled: SqliteStore, flows: list[Any]
) -> None:
    from ips.core.addr import format_addr

    # Whole minutes: the rollups' period is rounded out to minutes.
    since, until = T0 + 600, T0 + 2 * 3600 + 1200
    want = _python_sums(flows, since, until, lambda f: format_addr(f.src))
    got = top(filled, by="src", metric="bytes", since=since, until=until, limit=1000)
    assert got["source"] == "rollups"
    assert {r["key"]: [r["flows"], r["packets"], r["bytes"]] for r in got["rows"]} == want
    ranked = [r["bytes"] for r in got["rows"]]
    assert ranked == sorted(ranked, reverse=True)
    # The same from the raw flows (a filter that holds for every flow).
    raw = top(filled, by="src", metric="bytes", since=since, until=until, limit=1000,
              filter_text="port 0-65535")  # fmt: skip
    assert raw["source"] == "raw" and raw["rows"] == got["rows"]


@pytest.mark.parametrize("by", ["dst", "port", "app", "sni", "proto", "direction"])
def test_top_by_every_dimension_rollups_equal_raw(filled: SqliteStore, by: str) -> None:
    kw: dict[str, Any] = {"by": by, "since": T0, "until": T0 + 4 * 3600, "limit": 50}
    for metric in ("bytes", "packets", "flows"):
        assert (
            top(filled, metric=metric, **kw)["rows"]
            == top(filled, metric=metric, filter_text="port 0-65535", **kw)["rows"]
        )


def test_split_period() -> None:
    h = 3600
    assert split_period(10 * h + 30, 10 * h + 90) == ([(10 * h, 10 * h + 120)], None)
    assert split_period(10 * h + 60, 13 * h + 120) == (
        [(10 * h + 60, 11 * h), (13 * h, 13 * h + 120)], (11 * h, 13 * h)
    )  # fmt: skip
    assert split_period(10 * h, 12 * h) == ([], (10 * h, 12 * h))


def test_volume_and_peaks(filled: SqliteStore, flows: list[Any]) -> None:
    minutes: dict[int, int] = {}
    for end in flows:
        f = end.flow
        m = bucket_of(f.last_seen, "1m")
        minutes[m] = minutes.get(m, 0) + f.bytes_fwd + f.bytes_rev
    hourly = volume(filled, since=T0, until=T0 + 5 * 3600, step="1h")
    for row in hourly["rows"]:
        inside = [b for m, b in minutes.items() if row["time"] <= m < row["time"] + 3600]
        assert row["bytes"] == sum(inside)
        assert row["peak_bytes"] == max(inside)  # the hour's peak: its largest minute
    per_minute = volume(filled, since=T0, until=T0 + 5 * 3600, step="1m")
    assert {r["time"]: r["bytes"] for r in per_minute["rows"]} == minutes
    best = max(minutes.items(), key=lambda kv: (kv[1], -kv[0]))
    assert hourly["peak"]["time"] // 3600 == best[0] // 3600
    assert hourly["peak"]["bytes_per_minute"] == best[1]


def test_peaks_are_right_across_batches(tmp_path: Path) -> None:
    """Two batches add to the same minute: the hour's peak is the minute's total."""
    flows = synthetic_flows(40, seed=9, span=50)
    store = SqliteStore(tmp_path / "s")
    for half in (flows[:20], flows[20:]):
        rows = [flow_row(f, None, HomeNetworks()) for f in half]
        store.write(Batch({"flows": rows}, add_rollups(rows)))
    total = sum(f.flow.bytes_fwd + f.flow.bytes_rev for f in flows)
    by_minute: dict[int, int] = {}
    for f in flows:
        m = bucket_of(f.flow.last_seen, "1m")
        by_minute[m] = by_minute.get(m, 0) + f.flow.bytes_fwd + f.flow.bytes_rev
    (row,) = volume(store, since=T0, until=T0 + 3600, step="1h")["rows"]
    assert row["bytes"] == total and row["peak_bytes"] == max(by_minute.values())


FILTERS = [
    "proto tcp", "proto udp and dport 53", "src 10.0.1.0/24", "dst 93.0.0.0/8",
    "host fd00::/8", "host 10.0.0.5", "port 443", "sport 2000-30000", "dport http",
    "state established", "state new", "name example.com", "name *.example.com", "name *",
    "name a_b.example.org", "proto tcp src 10.0.2.0/24 dport 443 and state established",
    "dst 2001:db8::/32 proto udp",
]  # fmt: skip


@pytest.mark.parametrize("text", FILTERS)
def test_filter_in_sql_selects_what_the_live_filter_selects(
    filled: SqliteStore, flows: list[Any], text: str
) -> None:
    pred = parse_filter(text)
    want = sorted(f.flow.flow_id for f in flows if pred(f.flow))
    got = sorted(r["flow_id"] for r in history(filled, "flows", since=0, until=2e9,
                                                 filter_text=text, limit=None))  # fmt: skip
    assert got == want


def test_filter_errors_are_the_live_ones() -> None:
    for bad in ("proto", "src nowhere", "port 70000", "colour red", "state sleepy"):
        with pytest.raises(FilterError):
            filter_sql(bad)
    with pytest.raises(FilterError, match="only flows"):
        filter_sql("state new", "alerts")
    with pytest.raises(FilterError, match="blocks have no ports"):
        filter_sql("port 22", "blocks")


def test_filter_on_alerts_and_blocks(filled: SqliteStore) -> None:
    alerts = list(history(filled, "alerts", since=0, until=2e9, filter_text="src 10.0.0.3",
                          limit=None))  # fmt: skip
    assert alerts and all(a["src"] == "10.0.0.3" for a in alerts)
    blocks = list(history(filled, "blocks", since=0, until=2e9, filter_text="host 10.0.0.3",
                          limit=None))  # fmt: skip
    assert blocks and all(b["addr"] == "10.0.0.3" for b in blocks)


def test_retention_with_an_injected_clock(tmp_path: Path) -> None:
    day = 86400.0
    old = synthetic_flows(300, seed=3, t0=T0, span=day)  # day 0
    new = synthetic_flows(300, seed=4, t0=T0 + 9 * day, span=3600)  # day 9
    store = fill(tmp_path / "s", old + new)
    assert len(store.day_files()) >= 2
    before = top(store, by="src", since=T0, until=T0 + 11 * day, limit=1000)["rows"]
    hours_before = volume(store, since=T0, until=T0 + 11 * day, step="1h")["rows"]
    now = T0 + 9 * day + 7200  # raw 7d: day 0 and 1 are past their age
    gone = store.expire(now, Retention.parse("raw 7d, 1m 90d, 1h 1y"))
    assert gone["raw_files"] >= 1 and gone["1m"] == gone["1h"] == 0
    left = list(history(store, "flows", since=0, until=2e9, limit=None))
    assert len(left) == 300 and all(r["time_end"] >= now - 7 * day for r in left)
    # The rollups stay: the reports of the whole period are unchanged.
    assert top(store, by="src", since=T0, until=T0 + 11 * day, limit=1000)["rows"] == before
    assert volume(store, since=T0, until=T0 + 11 * day, step="1h")["rows"] == hours_before
    # Minute rollups go at 90 days, hour rollups at a year.
    gone = store.expire(T0 + 100 * day, Retention())
    assert gone["1m"] > 0 and gone["1h"] == 0
    assert volume(store, since=T0, until=T0 + 11 * day, step="1h")["rows"] == hours_before
    assert volume(store, since=T0, until=T0 + 11 * day, step="1m")["rows"] == []
    store.expire(T0 + 400 * day, Retention())
    assert volume(store, since=T0, until=T0 + 11 * day, step="1h")["rows"] == []


def test_retention_deletes_rows_of_the_day_it_cuts(tmp_path: Path) -> None:
    flows = synthetic_flows(200, seed=5, t0=T0, span=20 * 3600)
    store = fill(tmp_path / "s", flows)
    now = T0 + 7 * 86400 + 10 * 3600
    store.expire(now, Retention.parse("raw 7d"))
    left = [f.flow for f in flows if f.flow.last_seen >= now - 7 * 86400]
    got = list(history(store, "flows", since=0, until=2e9, limit=None))
    assert 0 < len(got) == len(left) < len(flows)


def test_retention_text() -> None:
    r = Retention.parse("raw 2d, 1h forever")
    assert (r.raw, r.minute, r.hour) == (2 * 86400, 90 * 86400, 0)
    assert r.cutoffs(1000.0)["1h"] is None
    assert Retention().text() == "raw 7d, 1m 90d, 1h 1y, 1d 10y"
    assert parse_age("36h") == 36 * 3600
    for bad in ("raw", "raw 7x", "2m 3d", "raw -1d"):
        with pytest.raises(ValueError):
            Retention.parse(bad)


class _Stuck:
    """A backend whose writes never happen (the writer thread is never started)."""

    target = "stuck"

    def write(self, batch: Batch) -> None:
        raise AssertionError("not called")


def test_a_full_queue_drops_and_counts() -> None:
    sink = StoreSink(_Stuck(), queue_limit=100, batch_size=1000)  # type: ignore[arg-type]
    flows = synthetic_flows(250)
    sink.events(flows[:150])
    sink.events(flows[150:])
    s = sink.stats()
    assert s["queued"] == 100 and s["dropped"] == 150 and s["waiting"] == 100


class _Broken:
    target = "broken"

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.closed = False

    def write(self, batch: Batch) -> None:
        raise self.error

    def close(self) -> None:
        self.closed = True


def test_write_errors_are_counted_and_the_next_batch_tries_again(tmp_path: Path) -> None:
    broken = _Broken(OSError(28, "No space left on device"))
    sink = StoreSink(broken, batch_size=100, flush_every=0.01).start()  # type: ignore[arg-type]
    sink.events(synthetic_flows(250))
    sink.close()
    s = sink.stats()
    assert s["write_errors"] == 3 and s["written"] == 0 and "No space left" in s["last_error"]
    assert broken.closed


def test_a_read_only_store_is_counted(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    sink = StoreSink(store, batch_size=100, flush_every=0.01).start()
    sink.events(synthetic_flows(50))
    sink.flush()
    # The files turn read-only under the writer (a remount, a full disk's refusal): the
    # error is counted, nothing raises on the packet path.
    ro = sqlite3.connect(tmp_path / "s" / "rollup.sqlite")
    ro.execute("BEGIN EXCLUSIVE")  # holds the write lock: the writer's transactions fail
    store.rollup.execute("PRAGMA busy_timeout = 50")
    for conn in store._days.values():
        conn.execute("PRAGMA busy_timeout = 50")
    sink.events(synthetic_flows(50, seed=7))
    sink.flush()
    ro.rollback()
    ro.close()
    assert sink.write_errors >= 1 and "locked" in (sink.last_error or "")
    sink.close()


def test_the_writer_thread_batches_and_closes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    sink = StoreSink(store, batch_size=100, flush_every=0.05).start()
    sink.events(synthetic_flows(1000))
    sink.close()
    assert sink.written == 1000 and sink.batches >= 10 and sink.dropped == 0
    again = open_store(str(tmp_path / "s"), readonly=True)
    assert sum(1 for _ in history(again, "flows", since=0, until=2e9, limit=None)) == 1000
