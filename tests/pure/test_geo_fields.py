"""Who is on the other end, as fields (issue 22, items 2 and 4): country, AS number,
organisation and site of both ends, and the responder's IANA service name, in EVE flow
records and alerts (ipsctl.src_geo / dst_geo / service), in `ipsctl flows` (rows, table,
CSV, the `country` and `asn` filters) and `ipsctl top`; the geo data the policy names; a
missing database is no error for display. Over databases the test builds itself."""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import random
from pathlib import Path
from typing import Any

import pytest
from eve_schema import assert_valid_eve
from geo_data import write_geo_databases

from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.events import Alert, FlowEnd, LogRecord
from ips.core.flow import FlowTable
from ips.daemon.stats import merge_flows
from ips.daemon.worker import PeerFields
from ips.engine import Engine
from ips.geo.db import GeoDb
from ips.geo.enrich import Enricher, geo_object, open_enricher, short_label
from ips.geo.site import parse_site_text
from ips.policy.resolve import load_policy_text
from ips.sinks.eve import EveWriter, alert_record, drop_record, flow_line, flow_record
from ips.views.flows import FilterError, flows_csv, format_flows, parse_filter, select_flows
from ips.views.status import _geo_lines
from ips.views.top import TopState, render

EPOCH = 1_780_000_000
# A database of the test's own: these public addresses never leave this process.
COUNTRIES = [
    ("1.2.3.0", "1.2.3.255", "RU"),
    ("9.9.0.0", "9.9.0.127", "US"),
    ("10.0.0.0", "10.255.255.255", "AU"),  # wrong on purpose: a private range gets no country
    ("2a00::", "2a00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "RU"),
]
ASNS = [
    ("1.2.3.0", "1.2.3.127", 64500, "Example Networks Ltd"),
    ("9.9.0.0", "9.9.0.127", 64501, "Other Org"),
]
SITES = '10.10.5.0/24 = "HQ lab" country XX\n'


@pytest.fixture
def geo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_geo_databases(tmp_path, COUNTRIES, ASNS, EPOCH)
    (tmp_path / "sites.conf").write_text(SITES)
    monkeypatch.setenv("IPSCTL_GEO_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def enrich(geo_dir: Path) -> Enricher:
    e = open_enricher(str(geo_dir), parse_site_text(SITES))
    assert e.problem is None
    return e


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def engine_with(flows: list[tuple[int, str, str, int, int]]) -> Engine:
    engine = Engine(load_policy_text("set default accept\n"))
    for i, (proto, src, dst, sport, dport) in enumerate(flows):
        for k in range(i + 1):
            flags = {"flags": 0x18 if k else 2} if proto == 6 else {}
            engine.handle(build_packet(proto, src, dst, sport, dport, payload=b"x", **flags),
                          now=100.0 + k)  # fmt: skip
    return engine


FLOWS = [
    (6, "10.10.5.7", "1.2.3.4", 40000, 5432),  # site lab -> RU AS64500: postgresql
    (6, "10.0.0.1", "9.9.0.9", 40001, 443),  # private -> US AS64501: https
    (17, "fd00::1", "2a00::53", 40002, 53),  # private -> RU (no AS): domain
    (6, "10.0.0.1", "10.0.0.2", 40003, 40004),  # private both; no registered service
]


# ---- the objects ------------------------------------------------------------------------------


def test_each_end_gets_its_country_asn_org_site_or_only_its_scope(enrich: Enricher) -> None:
    assert enrich.endpoint(packed("1.2.3.4")) == {
        "country": "RU",
        "asn": 64500,
        "org": "Example Networks Ltd",
    }
    assert enrich.endpoint(packed("2a00::1")) == {"country": "RU"}
    # A private address: its scope, whatever the database says (it places 10/8 in AU) ...
    assert enrich.endpoint(packed("10.0.0.1")) == {"scope": "private"}
    # ... and the site's name where the operator named the network.
    assert enrich.endpoint(packed("10.10.5.7")) == {"scope": "private", "site": "HQ lab"}
    assert enrich.endpoint(packed("127.0.0.1")) == {"scope": "loopback"}
    assert enrich.endpoint(packed("8.8.8.8")) is None  # public, not in this database
    assert short_label(enrich.endpoint(packed("1.2.3.4"))) == "RU AS64500"
    assert short_label({"scope": "private", "site": "HQ lab"}) == "HQ lab"
    assert short_label(None) == "-"


def test_fields_of_a_flow(enrich: Enricher) -> None:
    fields = enrich.fields(6, packed("10.10.5.7"), packed("1.2.3.4"), 40000, 5432)
    assert fields == {
        "src_geo": {"scope": "private", "site": "HQ lab"},
        "dst_geo": {"country": "RU", "asn": 64500, "org": "Example Networks Ltd"},
        "service": "postgresql",
    }
    # ICMP has no ports, so no service; an unregistered port neither.
    assert "service" not in enrich.fields(1, packed("10.0.0.1"), packed("1.2.3.4"), 0, 0)
    assert "service" not in enrich.fields(6, packed("10.0.0.1"), packed("1.2.3.4"), 1, 40004)
    # A packet whose direction is not known (an alert's): a reply from a server is named
    # by its source port.
    reply = enrich.fields(6, packed("1.2.3.4"), packed("10.0.0.1"), 443, 40000,
                          responder_known=False)  # fmt: skip
    assert reply["service"] == "https"


# ---- EVE ---------------------------------------------------------------------------------------


def random_flows(count: int) -> list[Any]:
    rng = random.Random(22)
    table = FlowTable(max_flows=10_000)
    v4 = ("10.10.5.7", "10.0.0.1", "1.2.3.4", "1.2.3.200", "9.9.0.9", "8.8.8.8", "127.0.0.1")
    v6 = ("2a00::53", "2001:db8::1", "fe80::1", "::1")
    now = 1_733_356_800.0
    for _ in range(count):
        family = v4 if rng.random() < 0.7 else v6
        src, dst = rng.sample(family, 2)
        proto = rng.choice((6, 17, 1 if family is v4 else 58, 132))
        sport = rng.randrange(65536)
        dport = rng.choice((5432, 443, 53, 22, 40004, rng.randrange(65536)))
        icmp = {"icmp_type": 8} if proto in (1, 58) else {}
        pkt = decode_l3(build_packet(proto, src, dst, sport, dport, flags=2, **icmp))
        if pkt.__class__.__name__ == "Packet":
            table.track(pkt, now)
        now += 0.5
    return list(table.flows())


def test_flow_lines_with_the_fields_are_the_flow_records_json(enrich: Enricher) -> None:
    """flow_line writes the ipsctl object from cached pieces: it must still be json.dumps of
    flow_record, character for character, with names from passive DNS or without."""
    flows = random_flows(1500)
    assert len(flows) > 500
    rng = random.Random(5)
    seen: set[str] = set()
    for flow in flows:
        flow.dst_name = rng.choice((None, None, "db.example.net"))
        end = FlowEnd(flow, "timeout", 1_733_360_000.0)
        record = flow_record(end, None, enrich)
        assert flow_line(end, None, enrich) == json.dumps(record, separators=(",", ":"))
        seen.update((record.get("ipsctl") or {}).keys())
    assert seen == {"dst_name", "src_geo", "dst_geo", "service"}


def test_flow_records_and_alerts_carry_the_fields_and_validate(enrich: Enricher) -> None:
    engine = engine_with(FLOWS)
    lines: list[str] = []
    writer = EveWriter(log=type("L", (), {"write": staticmethod(lines.append)})(), enrich=enrich)
    writer.events(engine.drain(200.0))
    records = {(r["dest_ip"], r.get("dest_port")): r for r in map(json.loads, lines)}
    pg = records[("1.2.3.4", 5432)]["ipsctl"]
    assert pg["src_geo"] == {"scope": "private", "site": "HQ lab"}
    assert pg["dst_geo"] == {"country": "RU", "asn": 64500, "org": "Example Networks Ltd"}
    assert pg["service"] == "postgresql"
    assert records[("9.9.0.9", 443)]["ipsctl"]["dst_geo"]["asn"] == 64501
    assert records[("2a00::53", 53)]["ipsctl"]["service"] == "domain"
    assert "service" not in records[("10.0.0.2", 40004)]["ipsctl"]
    # Alerts and drop records of the same packets carry them too.
    alert = Alert(1.0, 7, 4, 6, packed("1.2.3.4"), 443, packed("10.0.0.1"), 40000,
                  action="blocked", signature_id=1, signature="test", severity=2,
                  category="policy", rule_name="p:1")  # fmt: skip
    rec = alert_record(alert, None, enrich)
    assert rec["ipsctl"]["src_geo"]["country"] == "RU"
    assert rec["ipsctl"]["service"] == "https"  # the reply's source port
    log = LogRecord(1.0, 7, 4, 6, packed("10.0.0.1"), 40000, packed("9.9.0.9"), 443,
                    verdict="drop", rule_name="p:2")  # fmt: skip
    drop = drop_record(log, None, enrich)
    assert drop["ipsctl"]["dst_geo"] == {"country": "US", "asn": 64501, "org": "Other Org"}
    assert drop["ipsctl"]["rule"] == "p:2"
    assert assert_valid_eve([*records.values(), rec, drop]) == len(records) + 2
    # Without an Enricher: no such fields (what every line was before).
    assert "ipsctl" not in flow_record(FlowEnd(engine_with(FLOWS[3:]).flows.flows()[0], "x", 1))


# ---- where the data comes from -------------------------------------------------------------


def test_the_policy_names_the_data_and_a_missing_database_is_no_error(
    geo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    policy = load_policy_text("set default accept\n")
    assert policy.geo_dir == str(geo_dir) and policy.geo_sites is None  # $IPSCTL_GEO_DIR
    base = tmp_path_factory.mktemp("policy")
    (base / "sites.conf").write_text(SITES)
    text = f'set geo-dir "{geo_dir}"\nset geo-site "sites.conf"\nset default accept\n'
    policy = load_policy_text(text, "p.rules", base_dir=base)
    assert policy.geo_dir == str(geo_dir)
    assert policy.geo_sites.lookup(packed("10.10.5.1")).name == "HQ lab"
    peers = PeerFields()
    enrich = peers.load(policy)
    assert enrich.endpoint(packed("10.10.5.1")) == {"scope": "private", "site": "HQ lab"}
    assert peers.status()["missing"] == []
    # No data at all: scopes and sites still answer, the rest is absent, status says so.
    empty = tmp_path_factory.mktemp("nogeo")
    text = f'set geo-dir "{empty}"\nset default accept\n'
    enrich = peers.load(load_policy_text(text, "p.rules", base_dir=base))
    assert enrich.problem is not None and enrich.problem.startswith("geo data missing")
    assert enrich.endpoint(packed("1.2.3.4")) is None
    assert enrich.endpoint(packed("10.0.0.1")) == {"scope": "private"}
    lines = _geo_lines(peers.status())
    assert lines and "geo data missing" in lines[0]
    peers.close()


def test_an_unreadable_database_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "country.mmdb").write_bytes(b"not a database at all" * 10)
    enrich = open_enricher(str(tmp_path))
    assert enrich.problem is not None and "cannot read the geo data" in enrich.problem
    assert enrich.fields(6, packed("10.0.0.1"), packed("1.2.3.4"), 1, 443) == {
        "src_geo": {"scope": "private"},
        "service": "https",
    }


# ---- flows and top ------------------------------------------------------------------------------


def test_flow_rows_table_and_csv(enrich: Enricher) -> None:
    flows = engine_with(FLOWS).flows.flows()
    reply = select_flows(flows, 200.0, sort="packets", enrich=enrich)
    rows = {(r["dst"], r["dport"]): r for r in reply["flows"]}
    pg = rows[("1.2.3.4", 5432)]
    assert pg["service"] == "postgresql"
    assert pg["dst_geo"] == {"country": "RU", "asn": 64500, "org": "Example Networks Ltd"}
    assert pg["src_geo"] == {"scope": "private", "site": "HQ lab"}
    assert rows[("10.0.0.2", 40004)]["service"] is None
    table = format_flows(reply["flows"], reply["total"]).splitlines()
    assert "SERVICE" in table[0].split()
    line = next(x for x in table if "1.2.3.4:5432" in x)
    assert "10.10.5.7:40000 [HQ lab]" in line and "1.2.3.4:5432 [RU AS64500]" in line
    assert "postgresql" in line.split()
    line = next(x for x in table if "10.0.0.2:40004" in x)
    assert "[" not in line  # private ends: the address says it
    got = {r["dst"]: r for r in csv.DictReader(io.StringIO(flows_csv(reply["flows"])))}
    assert (got["1.2.3.4"]["dst_country"], got["1.2.3.4"]["dst_asn"]) == ("RU", "64500")
    assert got["1.2.3.4"]["dst_org"] == "Example Networks Ltd"
    assert got["1.2.3.4"]["src_site"] == "HQ lab" and got["1.2.3.4"]["service"] == "postgresql"
    assert got["10.0.0.2"]["dst_scope"] == "private" and got["10.0.0.2"]["dst_country"] == ""
    json.dumps(reply)  # the rows travel over the control socket
    # Without geo data the rows still name the service; the geo fields are None.
    plain = select_flows(flows, 200.0)["flows"]
    assert {r["service"] for r in plain} == {"postgresql", "https", "domain", None}
    assert all(r["dst_geo"] is None for r in plain)


@pytest.mark.parametrize(
    ("words", "dsts"),
    [
        ("country RU", {"1.2.3.4", "2a00::53"}),
        ("country us", {"9.9.0.9"}),
        ("country XX", {"1.2.3.4"}),  # the site's country, at the source end
        ("asn 64500", {"1.2.3.4"}),
        ("asn AS64501 and proto tcp", {"9.9.0.9"}),
        ("country DE", set()),
    ],
)
def test_country_and_asn_filters(enrich: Enricher, words: str, dsts: set[str]) -> None:
    flows = engine_with(FLOWS).flows.flows()
    geo_sites = parse_site_text('10.10.5.0/24 = "HQ lab" country XX\n')
    assert enrich.geo is not None and enrich.geo.sites is not None and geo_sites
    reply = select_flows(flows, 200.0, filter_text=words, enrich=enrich)
    assert {r["dst"] for r in reply["flows"]} == dsts


def test_filter_words_are_checked_without_data() -> None:
    parse_filter("country RU asn 13335")  # what the CLI checks before asking the daemon
    for bad in ("country RUS", "country 12", "asn x", "asn 0", "asn AS"):
        with pytest.raises(FilterError):
            parse_filter(bad)
    flows = engine_with(FLOWS[:1]).flows.flows()
    assert select_flows(flows, 200.0, filter_text="country RU")["total"] == 0  # no data


def test_groups_and_top_show_who(enrich: Enricher) -> None:
    flows = engine_with(FLOWS).flows.flows()
    dst = {g["key"]: g for g in select_flows(flows, 200.0, group="dst", enrich=enrich)["groups"]}
    assert dst["1.2.3.4"]["geo"]["country"] == "RU"
    src = {g["key"]: g for g in select_flows(flows, 200.0, group="src", enrich=enrich)["groups"]}
    assert src["10.10.5.7"]["geo"] == {"scope": "private", "site": "HQ lab"}
    ports = select_flows(flows, 200.0, group="port", enrich=enrich)["groups"]
    assert {g["key"]: g["service"] for g in ports}["5432/tcp"] == "postgresql"
    # Merged across workers, the fields stay.
    merged = merge_flows([{"ok": True, "total": 1, "groups": list(dst.values())}] * 2, 10, "bytes")
    assert {g["key"]: g["geo"] for g in merged["groups"]}["1.2.3.4"]["asn"] == 64500

    def request(message: dict[str, Any]) -> dict[str, Any]:
        if message["op"] == "flows":
            return select_flows(flows, 200.0, group=message["group"], enrich=enrich)
        if message["op"] == "alerts":
            return {"ok": True, "seq": 0, "alerts": []}
        if message["op"] == "blocks_list":
            return {"ok": True, "blocks": []}
        return {"ok": True, "worker": {}}

    from rich.console import Console

    state = TopState()
    state.poll(request, now=1.0)
    console = Console(width=200, record=True)
    console.print(render(state))
    text = console.export_text()
    assert "RU AS64500 Example Networks Ltd" in text
    assert "5432/tcp postgresql" in text
    assert "HQ lab" in text


def test_geo_objects_are_cached_per_answer(geo_dir: Path) -> None:
    db = GeoDb.open(str(geo_dir))
    info = db.lookup(packed("1.2.3.4"))
    assert geo_object(info) is geo_object(db.lookup(packed("1.2.3.4")))
    db.close()
