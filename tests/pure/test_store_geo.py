"""Issue 22 in the store: a flow's countries, AS numbers and service name as columns (schema
version 2), `report top --by country|asn`, `--by port` with service names, `history flows`.

The shared captures are replayed with `ipsctl replay --store` over a geo database the test
builds (ips/geo/mmdb_writer.py: every public address of the captures given a country and an
AS number, so the answers are known); the report must count, per country and AS number, the
flows whose ends `ipsctl geo lookup` puts there, and say the same from SQLite and
PostgreSQL. Missing geo data leaves the columns NULL; an older store is brought forward."""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from captures import PCAPS, pcap_names
from click.testing import CliRunner
from mmdb_oracle import capture_addresses
from store_data import fresh_database, postgres_bin, postgres_server, write_geo_dir

from ips.cli import main
from ips.geo.db import scope_of
from ips.store.backend import SQLITE, SqliteStore
from ips.store.schema import SCHEMA_VERSION, V1_RAW

COUNTRIES = ("DE", "US", "JP", "BR", "FR")
PERIOD = ["--since", "@0", "--until", "@4000000000"]


def _public(addr: bytes) -> bool:
    return scope_of(ipaddress.ip_address(addr)) == "public"


@pytest.fixture(scope="module")
def geo_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each public address of the captures its own range: country and AS number by its place
    in address order (deterministic; several countries and AS numbers, both families)."""
    found = sorted(int(ipaddress.ip_address(a)) for a in capture_addresses() if _public(a))
    if len(found) < 4:
        pytest.fail(f"the shared captures ({PCAPS}) hold too few public addresses")
    ranges = []
    for i, number in enumerate(found):
        text = str(ipaddress.ip_address(number))
        ranges.append((text, text, COUNTRIES[i % 5], 64500 + i % 7, f"Org {i % 7}"))
    return write_geo_dir(str(tmp_path_factory.mktemp("geo")), ranges)


def _invoke(args: list[str], geo_dir: str | None = None) -> str:
    env = {"IPSCTL_GEO_DIR": geo_dir} if geo_dir else None
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    return result.output


def _replay(tmp: Path, store: str, geo_dir: str) -> None:
    policy = tmp / "accept.ips"
    policy.write_text("set default accept\n")
    _invoke(["replay", str(policy), *[str(PCAPS / n) for n in pcap_names()], "--store", store],
            geo_dir)  # fmt: skip


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory, geo_dir: str) -> str:
    tmp = tmp_path_factory.mktemp("replayed")
    _replay(tmp, str(tmp / "store"), geo_dir)
    return str(tmp / "store")


def _flows(store: str) -> list[dict[str, Any]]:
    return json.loads(
        _invoke(["history", "flows", "--json", "--limit", "10000000", *PERIOD, "--store", store])
    )


def _lookup(addresses: set[str], geo_dir: str) -> dict[str, dict[str, Any]]:
    """What `ipsctl geo lookup --json` says of each address."""
    out = _invoke(["geo", "lookup", "--json", "--geo-dir", geo_dir, *sorted(addresses)])
    return {obj["address"]: obj for obj in map(json.loads, out.splitlines())}


def _top(store: str, by: str) -> dict[str, int]:
    out = _invoke(["report", "top", "--by", by, "--metric", "flows", "--limit", "100000",
                   "--json", *PERIOD, "--store", store])  # fmt: skip
    return {row["key"]: row["flows"] for row in json.loads(out)["rows"]}


def test_flow_rows_carry_what_geo_lookup_says(sqlite_store: str, geo_dir: str) -> None:
    flows = _flows(sqlite_store)
    looked = _lookup({f["src"] for f in flows} | {f["dst"] for f in flows}, geo_dir)
    with_country = 0
    for f in flows:
        for end in ("src", "dst"):
            want = looked[f[end]]
            assert f[f"{end}_country"] == want["country"], (f, want)
            assert f[f"{end}_asn"] == want["asn"], (f, want)
            with_country += want["country"] is not None
    assert with_country >= 4


def test_report_top_by_country_and_asn_counts_the_ends(sqlite_store: str, geo_dir: str) -> None:
    flows = _flows(sqlite_store)
    looked = _lookup({f["src"] for f in flows} | {f["dst"] for f in flows}, geo_dir)
    want_country: Counter[str] = Counter()
    want_asn: Counter[str] = Counter()
    for f in flows:  # each distinct country (AS number) of a flow's two ends, once
        src, dst = looked[f["src"]], looked[f["dst"]]
        want_country.update({e["country"] for e in (src, dst) if e["country"]})
        want_asn.update({f"AS{e['asn']}" for e in (src, dst) if e["asn"] is not None})
    assert len(want_country) >= 2 and len(want_asn) >= 2
    assert _top(sqlite_store, "country") == dict(want_country)
    assert _top(sqlite_store, "asn") == dict(want_asn)
    # The raw rows (a --filter reads them) give the same as the rollups.
    raw = _invoke(["report", "top", "--by", "country", "--metric", "flows", "--limit", "1000",
                   "--json", "--filter", "host 0.0.0.0/0", *PERIOD,
                   "--store", sqlite_store])  # fmt: skip
    v4 = Counter[str]()
    for f in flows:
        if ":" not in f["src"]:
            v4.update({looked[f[e]]["country"] for e in ("src", "dst")} - {None})
    assert {r["key"]: r["flows"] for r in json.loads(raw)["rows"]} == dict(v4)


def test_ports_and_flows_show_service_names(sqlite_store: str) -> None:
    flows = _flows(sqlite_store)
    assert any(f["service"] == "https" and f["dport"] == 443 for f in flows)
    out = json.loads(_invoke(["report", "top", "--by", "port", "--limit", "1000", "--json",
                              *PERIOD, "--store", sqlite_store]))  # fmt: skip
    services = {r["key"]: r["service"] for r in out["rows"]}
    assert services.get("443/tcp") == "https" and services.get("53/udp") == "domain"
    text = _invoke(["report", "top", "--by", "port", "--limit", "1000", *PERIOD,
                    "--store", sqlite_store])  # fmt: skip
    assert "443/tcp https" in text
    csv_head = _invoke(["report", "top", "--by", "port", "--csv", *PERIOD, "--store",
                        sqlite_store]).splitlines()[0]  # fmt: skip
    assert csv_head == "key,service,flows,packets,bytes"
    table = _invoke(["history", "flows", *PERIOD, "--store", sqlite_store]).splitlines()
    assert table[0].split()[:9] == ["TIME", "PROTO", "SRC", "SRC_GEO", "SPORT", "DST", "DST_GEO",
                                    "DPORT", "SERVICE"]  # fmt: skip
    assert any(" AS645" in line for line in table[1:])


def test_missing_geo_data_leaves_the_columns_empty(tmp_path: Path) -> None:
    empty = tmp_path / "no-geo"
    empty.mkdir()
    _replay(tmp_path, str(tmp_path / "store"), str(empty))
    flows = _flows(str(tmp_path / "store"))
    assert flows
    assert all(f[c] is None for f in flows for c in ("src_country", "src_asn", "dst_country",
                                                     "dst_asn"))  # fmt: skip
    assert any(f["service"] for f in flows)  # the registry is package data
    assert _top(str(tmp_path / "store"), "country") == {}


def test_an_older_day_file_is_brought_forward(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    store.close()
    day = tmp_path / "s" / "raw-2025-12-01.sqlite"
    conn = sqlite3.connect(day)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied TEXT)")
    for statement in V1_RAW:
        conn.execute(SQLITE.ddl(statement))
    conn.execute("INSERT INTO schema_version VALUES (1, 'v1')")
    conn.commit()
    conn.close()
    SqliteStore(tmp_path / "s").close()  # a writer opens it: every day file is migrated
    conn = sqlite3.connect(day)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(flows)")}
    versions = [row[0] for row in conn.execute("SELECT version FROM schema_version")]
    conn.close()
    assert {"src_country", "dst_asn", "service"} <= columns
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    history = _invoke(["history", "flows", "--json", *PERIOD, "--store", str(tmp_path / "s")])
    assert json.loads(history) == []


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    try:
        import psycopg
    except ImportError:
        psycopg = None
    if psycopg is None or postgres_bin() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL or psycopg is not installed")
        pytest.skip("PostgreSQL or psycopg is not installed")
    with postgres_server() as url:
        yield url


def test_sqlite_and_postgresql_report_the_same(
    sqlite_store: str, geo_dir: str, postgres_url: str, tmp_path: Path
) -> None:
    pg = fresh_database(postgres_url, "geo")
    _replay(tmp_path, pg, geo_dir)
    commands = [
        ["report", "top", "--by", "country", *PERIOD],
        ["report", "top", "--by", "asn", "--json", "--metric", "packets", *PERIOD],
        ["report", "top", "--by", "country", "--csv", "--filter", "proto tcp", *PERIOD],
        ["report", "top", "--by", "asn", "--filter", "port 1-1024", *PERIOD],
        ["report", "top", "--by", "port", "--csv", *PERIOD],
        ["history", "flows", "--limit", "100000", *PERIOD],
        ["export", "flows", "--format", "csv", *PERIOD],
    ]
    for command in commands:
        a = _invoke([*command, "--store", sqlite_store])
        b = _invoke([*command, "--store", pg])
        assert a == b, command
        assert len(a.splitlines()) > 2, command
