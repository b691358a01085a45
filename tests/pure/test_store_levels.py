"""The rollup levels (minute, hour, day) and the query planner: a period is answered by the
coarsest level that covers each part of it exactly, and every report is the same whichever
levels answer it — the same as from the raw rows; the day level's peaks, its migration
(filled from the hour rollups) and its retention."""

from __future__ import annotations

import itertools
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from store_data import T0, synthetic_flows

from ips.store.backend import SQLITE, SqliteStore
from ips.store.query import BY, plan_period, top, volume
from ips.store.retention import Retention
from ips.store.schema import V1_ROLLUP
from ips.store.sink import StoreSink

DAY, HOUR = 86400, 3600


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    """4,000 flows over four days."""
    store = SqliteStore(tmp_path_factory.mktemp("levels") / "s")
    sink = StoreSink(store, synchronous=True, batch_size=400, iface="eth1")
    sink.events(synthetic_flows(4000, seed=21, span=4 * DAY))
    sink.flush()
    assert sink.write_errors == 0, sink.last_error
    return store


def test_plan_period_takes_days_then_hours_then_minutes() -> None:
    since, until = T0 + 10 * HOUR + 1830, T0 + 3 * DAY + 2 * HOUR + 900
    assert plan_period(since, until) == [
        ("1d", T0 + DAY, T0 + 3 * DAY),
        ("1h", T0 + 11 * HOUR, T0 + DAY),
        ("1h", T0 + 3 * DAY, T0 + 3 * DAY + 2 * HOUR),
        ("1m", T0 + 10 * HOUR + 1800, T0 + 11 * HOUR),
        ("1m", T0 + 3 * DAY + 2 * HOUR, T0 + 3 * DAY + 2 * HOUR + 900),
    ]
    assert plan_period(T0, T0 + 2 * DAY) == [("1d", T0, T0 + 2 * DAY)]
    assert plan_period(T0 + 60, T0 + 120) == [("1m", T0 + 60, T0 + 120)]


def test_plan_period_covers_the_period_exactly_once() -> None:
    rng = random.Random(5)
    size = {"1m": 60, "1h": HOUR, "1d": DAY}
    for _ in range(2000):
        since = T0 + rng.random() * 5 * DAY
        until = since + rng.choice((rng.random() * 300, rng.random() * 3 * DAY))
        plan = plan_period(since, until)
        parts = sorted((lo, hi) for _level, lo, hi in plan)
        lo, hi = int(since // 60) * 60, -(-int(until) // 60) * 60
        assert parts[0][0] == lo and parts[-1][1] == max(lo, hi)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        for level, p_lo, p_hi in plan:  # each part in whole buckets of its level
            assert p_lo % size[level] == 0 and p_hi % size[level] == 0
        levels = [level for level, _lo, _hi in plan]
        assert levels == sorted(levels, key=["1d", "1h", "1m"].index)


PERIODS = [
    (T0, T0 + 4 * DAY),  # whole days
    (T0 + DAY, T0 + 2 * DAY),  # one day
    (T0 + 1234.5, T0 + 3 * DAY + 5000),  # days, hours at both ends, minutes
    (T0 + 5 * HOUR + 59, T0 + DAY + 3 * HOUR),  # no whole day: hours and minutes
    (T0 + 600, T0 + 900),  # minutes only
]


@pytest.mark.parametrize("by", [b for b in BY if b not in ("country", "asn")])
def test_reports_from_rollups_equal_reports_from_raw_rows(days: SqliteStore, by: str) -> None:
    for since, until in PERIODS:
        # The raw rows are read by the minute too: the rollups round the period out to
        # whole minutes, so the raw report is asked for the same minutes.
        lo, hi = int(since // 60) * 60, -(-int(until) // 60) * 60
        for metric in ("bytes", "packets", "flows"):
            kw: dict[str, Any] = {"by": by, "metric": metric, "limit": 30}
            rolled = top(days, since=since, until=until, **kw)
            raw = top(days, since=lo, until=hi, filter_text="port 0-65535", **kw)
            assert rolled["source"] == "rollups" and raw["source"] == "raw"
            assert rolled["rows"] == raw["rows"] and rolled["rows"], (by, since, until)


def test_a_day_is_the_sum_of_its_hours_and_its_peak_is_its_largest_minute(
    days: SqliteStore,
) -> None:
    for day in range(4):
        lo, hi = T0 + day * DAY, T0 + (day + 1) * DAY
        (one,) = volume(days, since=lo, until=hi, step="1d")["rows"]
        hours = volume(days, since=lo, until=hi, step="1h")["rows"]
        minutes = volume(days, since=lo, until=hi, step="1m")["rows"]
        for field in ("flows", "packets", "bytes", "bytes_fwd", "bytes_rev"):
            assert one[field] == sum(h[field] for h in hours) == sum(m[field] for m in minutes)
        assert one["peak_bytes"] == max(m["bytes"] for m in minutes)
        assert one["peak_packets"] == max(m["packets"] for m in minutes)


def test_a_version_2_store_is_brought_to_the_day_level(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    sink = StoreSink(store, synchronous=True, batch_size=300)
    sink.events(synthetic_flows(1500, seed=22, span=3 * DAY))
    sink.flush()
    tables = {
        level: store.rollup.execute(
            f"SELECT * FROM rollup_{level} ORDER BY dim, bucket, key"
        ).fetchall()
        for level in ("1m", "1h", "1d")
    }
    store.close()
    # The rollup file as version 2 made it: rowid tables, minutes and hours, no days.
    old = tmp_path / "old"
    old.mkdir()
    conn = sqlite3.connect(old / "rollup.sqlite")
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied TEXT)")
    for statement in V1_ROLLUP:
        conn.execute(SQLITE.ddl(statement))
    for level in ("1m", "1h"):
        conn.executemany(f"INSERT INTO rollup_{level} VALUES ({', '.join('?' * 10)})",
                         tables[level])  # fmt: skip
    conn.executemany("INSERT INTO schema_version VALUES (?, 'old')", [(1,), (2,)])
    conn.commit()
    conn.close()
    again = SqliteStore(old)
    for level in ("1m", "1h", "1d"):
        got = again.rollup.execute(f"SELECT * FROM rollup_{level} ORDER BY dim, bucket, key")
        assert got.fetchall() == tables[level], level
        (sql,) = again.rollup.execute(
            "SELECT sql FROM sqlite_master WHERE name = ?", (f"rollup_{level}",)
        ).fetchone()
        assert sql.endswith("WITHOUT ROWID"), sql
    again.close()


def test_day_rollups_outlive_the_hours(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    sink = StoreSink(store, synchronous=True, batch_size=300)
    sink.events(synthetic_flows(800, seed=23, span=2 * DAY))
    sink.flush()
    before = top(store, by="src", since=T0, until=T0 + 2 * DAY, limit=100)["rows"]
    gone = store.expire(T0 + 2 * 365 * DAY, Retention())  # past 1h's year, within 1d's 10
    assert gone["1m"] > 0 and gone["1h"] > 0 and gone["1d"] == 0
    assert volume(store, since=T0, until=T0 + 2 * DAY, step="1h")["rows"] == []
    assert top(store, by="src", since=T0, until=T0 + 2 * DAY, limit=100)["rows"] == before
    gone = store.expire(T0 + 11 * 365 * DAY, Retention())
    assert gone["1d"] > 0
    assert top(store, by="src", since=T0, until=T0 + 2 * DAY, limit=100)["rows"] == []
    store.close()


def test_retention_names_the_day_level() -> None:
    r = Retention.parse("raw 3d, 1d 5y")
    assert r.day == 5 * 365 * DAY and r.hour == 365 * DAY
    assert r.text() == "raw 3d, 1m 90d, 1h 1y, 1d 5y"
    assert Retention.parse(Retention().text()) == Retention()
