"""The store with PostgreSQL: a real server the test starts itself (initdb and postgres in a
temporary directory, a unix socket there; about a second), the same input written to
SQLite and to PostgreSQL, and every report, history and export the same in both.

Without PostgreSQL's binaries or psycopg the tests skip, except under CI=true, where that
is a failure (scripts/setup.sh installs both)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from store_data import (
    T0,
    fresh_database,
    postgres_bin,
    postgres_server,
    synthetic_events,
    synthetic_flows,
    write_geo_dir,
)

from ips.cli import main
from ips.geo.enrich import Enricher, open_enricher
from ips.store.backend import PostgresStore, SqliteStore, StoreError, open_store
from ips.store.query import BY, HISTORY, history, top, volume
from ips.store.retention import Retention
from ips.store.schema import SCHEMA_VERSION
from ips.store.sink import StoreSink


def _missing() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    if postgres_bin() is None:
        return "PostgreSQL (initdb, postgres) is not installed"
    return None


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    why = _missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    with postgres_server() as url:
        yield url


def _fill(store: Any, flows: list[Any], events: list[Any], enrich: Enricher) -> None:
    sink = StoreSink(store, synchronous=True, batch_size=300, iface="eth1", enrich=enrich)
    sink.events(flows)
    sink.events(events)
    sink.flush()
    assert sink.write_errors == 0, sink.last_error


@pytest.fixture(scope="module")
def pair(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    flows, events = synthetic_flows(2500, seed=11), synthetic_events(150)
    # And days after: the day rollups, and reports that read them (PERIODS).
    flows += synthetic_flows(600, seed=12, t0=T0 + 86400, span=3 * 86400)
    lite = SqliteStore(tmp_path_factory.mktemp("pair") / "s")
    pg_url = fresh_database(server, "pair")
    pg = PostgresStore(pg_url)
    pg.url = pg_url  # type: ignore[attr-defined]
    enrich = open_enricher(write_geo_dir(str(tmp_path_factory.mktemp("geo"))))
    assert enrich.problem is None
    _fill(lite, flows, events, enrich)
    _fill(pg, flows, events, enrich)
    enrich.close()
    yield lite, pg
    lite.close()
    pg.close()


PERIODS = [
    (T0, T0 + 4 * 3600),
    (T0 + 1234.5, T0 + 2 * 3600 + 99),
    (T0 + 3600, T0 + 7200),
    (T0, T0 + 4 * 86400),  # whole days: the day rollups
    (T0 + 1234.5, T0 + 3 * 86400 + 5000),  # days, hours and minutes
]


@pytest.mark.parametrize("by", BY)
@pytest.mark.parametrize("metric", ["bytes", "packets", "flows"])
def test_top_is_the_same_in_both(pair: tuple[Any, Any], by: str, metric: str) -> None:
    lite, pg = pair
    for since, until in PERIODS:
        for filt in ("", "proto tcp and dst 93.0.0.0/8", "name *.example.com", "state new"):
            kw = {"by": by, "metric": metric, "since": since, "until": until,
                  "filter_text": filt, "limit": 25}  # fmt: skip
            a, b = top(lite, **kw), top(pg, **kw)
            assert a == b
            assert a["rows"] or filt


@pytest.mark.parametrize("step", ["1m", "1h", "1d"])
def test_volume_is_the_same_in_both(pair: tuple[Any, Any], step: str) -> None:
    lite, pg = pair
    for since, until in PERIODS:
        a = volume(lite, since=since, until=until, step=step)
        assert a["rows"] and a == volume(pg, since=since, until=until, step=step)


@pytest.mark.parametrize("kind", HISTORY)
def test_history_is_the_same_in_both(pair: tuple[Any, Any], kind: str) -> None:
    lite, pg = pair
    for filt in ("", "host 10.0.0.3") if kind != "blocks" else ("", "src 10.0.0.0/29"):
        a = list(history(lite, kind, since=0, until=2e9, filter_text=filt, limit=None))
        b = list(history(pg, kind, since=0, until=2e9, filter_text=filt, limit=None))
        assert a and a == b


def test_the_cli_prints_the_same_for_both(pair: tuple[Any, Any]) -> None:
    lite, pg = pair
    runner = CliRunner()
    period = ["--since", f"@{T0}", "--until", f"@{T0 + 4 * 3600}"]
    commands = [
        ["report", "top", "--by", "dst", *period],
        ["report", "top", "--by", "sni", "--csv", *period],
        ["report", "top", "--by", "country", *period],
        ["report", "top", "--by", "asn", "--json", *period],
        ["report", "top", "--by", "port", "--csv", *period],
        ["history", "flows", "--limit", "50", *period],
        ["report", "volume", "--step", "1h", *period],
        ["report", "volume", "--step", "1d", "--since", f"@{T0}", "--until", f"@{T0 + 4 * 86400}"],
        ["history", "alerts", "--json", *period],
        ["export", "flows", "--format", "csv", "--filter", "dport 443", *period],
    ]
    for command in commands:
        a = runner.invoke(main, [*command, "--store", str(lite.root)])
        b = runner.invoke(main, [*command, "--store", pg.url])
        assert a.exit_code == 0, a.output
        assert b.exit_code == 0, b.output
        assert a.output == b.output and len(a.output) > 100


def test_schema_and_migration(server: str) -> None:
    url = fresh_database(server, "schema")
    store = open_store(url)
    assert isinstance(store, PostgresStore) and store.integrity() == []
    store.close()
    again = open_store(url)  # opening again applies nothing
    rows = again.conn.execute("SELECT version FROM schema_version").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    again.conn.execute("INSERT INTO schema_version VALUES (%s, 'future')", (SCHEMA_VERSION + 1,))
    again.conn.commit()
    again.close()
    with pytest.raises(StoreError, match="newer than this ipsctl"):
        open_store(url)


def test_retention_in_postgres(server: str) -> None:
    day = 86400.0
    store = PostgresStore(fresh_database(server, "retention"))
    _fill(
        store,
        synthetic_flows(200, seed=3) + synthetic_flows(200, seed=4, t0=T0 + 9 * day),
        [],
        Enricher(),
    )
    before = volume(store, since=T0, until=T0 + 11 * day, step="1h")
    store.expire(T0 + 9 * day + 7200, Retention())
    assert len(list(history(store, "flows", since=0, until=2e9, limit=None))) == 200
    assert volume(store, since=T0, until=T0 + 11 * day, step="1h") == before
    store.close()


def test_an_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    if _missing() == "psycopg is not installed":
        pytest.skip("psycopg is not installed")
    with pytest.raises(StoreError):
        open_store(f"postgresql://postgres@/x?host={tmp_path}&port=1&connect_timeout=2")


def test_json_of_rows_is_plain(pair: tuple[Any, Any]) -> None:
    _lite, pg = pair
    rows = list(history(pg, "flows", since=0, until=2e9, limit=5))
    json.dumps(rows)  # no Decimal, no memoryview
