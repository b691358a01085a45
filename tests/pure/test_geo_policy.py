"""Geo clauses (issue 22, item 3): `from country { RU, CN }`, `to asn 13335`, `from org
contains "…"` — read by both parsers, checked with file:line:col and hints, resolved into
the networks of a small database built here (and of the site file, first), matched by the
engine as plain networks, translated into nftables interval sets, explained."""

from __future__ import annotations

import ipaddress
import os
import random
from pathlib import Path

import pytest
from geo_data import write_geo_databases
from packets import ip, tcp

from ips.engine import Engine
from ips.geo.db import DEFAULT_GEO_DIR, GeoDb, scope_of
from ips.geo.mmdb_writer import build_mmdb, range_of
from ips.geo.networks import NON_PUBLIC_V4, NON_PUBLIC_V6, GeoQuery, select_networks
from ips.geo.site import parse_site_text
from ips.policy.diagnostics import PolicyError
from ips.policy.explain import explain
from ips.policy.model import Policy
from ips.policy.packetspec import packet_from_text
from ips.policy.resolve import load_policy_text
from ips.translate.nft import NftPlan, build_ruleset, static_sets

EPOCH = 1_780_000_000

# Public-looking addresses in a database of the test's own (no host ever gets them): RU and
# CN blocks, one AS, and a private range the database wrongly places in AU (scope wins).
COUNTRIES = [
    ("1.2.3.0", "1.2.3.255", "RU"),
    ("1.2.4.0", "1.2.5.255", "CN"),
    ("5.6.0.0", "5.6.255.255", "RU"),
    ("9.9.0.0", "9.9.0.127", "US"),
    ("10.0.0.0", "10.255.255.255", "AU"),
    ("2a00::", "2a00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "RU"),
]
ASNS = [
    ("1.2.3.0", "1.2.3.127", 64500, "Example Networks Ltd"),
    ("1.2.3.128", "1.2.3.255", 64501, "Other Org"),
    ("9.9.0.0", "9.9.0.127", 64500, "Example Networks Ltd"),
]
SITES = """\
10.10.5.0/24 = "lab" country XX
5.6.7.0/24 = "branch" country DE asn 64999 org "Branch Example"
"""


@pytest.fixture
def geo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_geo_databases(tmp_path, COUNTRIES, ASNS, EPOCH)
    (tmp_path / "sites.conf").write_text(SITES)
    monkeypatch.setenv("IPSCTL_GEO_DIR", str(tmp_path))
    return tmp_path


def load(text: str, base: Path) -> Policy:
    (base / "p.rules").write_text(text)
    return load_policy_text(text, "p.rules", base_dir=base)


def errors_of(text: str, base: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load(text, base)
    return [f"{d.span.line}:{d.span.col}: {d.message} | {d.hint}" for d in info.value.diagnostics]


def nets(spec_nets: tuple[tuple[int, int], ...], width: int = 32) -> set[str]:
    return {str(ipaddress.ip_network((n, p))) for n, p in spec_nets}


# ---- parsing and checks ---------------------------------------------------------------------


def test_country_clause_resolves_to_the_databases_networks(geo_dir: Path) -> None:
    policy = load("drop from country { RU, CN } to port 22\n", geo_dir)
    rule = policy.rules[0]
    assert rule.src is not None and not rule.src.negated
    assert nets(rule.src.nets4) == {"1.2.3.0/24", "1.2.4.0/23", "5.6.0.0/16"}
    assert nets(rule.src.nets6) == {"2a00::/16"}
    assert rule.src.tables == ("country.CN.RU",)
    assert policy.tables["country.CN.RU"].kind == "geo"
    assert rule.dport is not None and rule.dport.ranges == ((22, 22),)


def test_a_private_range_the_database_places_somewhere_never_matches(geo_dir: Path) -> None:
    rule = load("drop from country AU\n", geo_dir).rules[0]
    assert rule.src is not None
    assert rule.src.nets4 == () and rule.src.nets6 == ()  # 10/8 is private: no country


def test_asn_and_org_clauses(geo_dir: Path) -> None:
    policy = load(
        'drop to asn { 64500, AS64501 }\naccept from org contains "EXAMPLE networks"\n',
        geo_dir,
    )
    asn, org = policy.rules
    assert asn.dst is not None and nets(asn.dst.nets4) == {"1.2.3.0/24", "9.9.0.0/25"}
    assert org.src is not None and nets(org.src.nets4) == {"1.2.3.0/25", "9.9.0.0/25"}


def test_the_site_file_comes_first(geo_dir: Path) -> None:
    policy = load(
        'set geo-site "sites.conf"\ndrop from country XX\ndrop from country RU\n'
        "drop from asn 64999\ndrop from country DE\n",
        geo_dir,
    )
    xx, ru, branch_asn, de = (r.src for r in policy.rules)
    assert xx is not None and nets(xx.nets4) == {"10.10.5.0/24"}  # private, but the site says
    # the site names 5.6.7.0/24 DE: it leaves RU's 5.6.0.0/16
    assert ru is not None and "5.6.7.0/24" not in nets(ru.nets4)
    assert {"5.6.0.0/22", "5.6.4.0/23", "5.6.6.0/24", "5.6.8.0/21"} <= nets(ru.nets4)
    assert branch_asn is not None and nets(branch_asn.nets4) == {"5.6.7.0/24"}
    assert de is not None and nets(de.nets4) == {"5.6.7.0/24"}


def test_sets_agree_with_lookup_on_every_address_of_interest(geo_dir: Path) -> None:
    """Each address at and around every boundary: in the set exactly when GeoDb says so."""
    sites = parse_site_text(SITES)
    db = GeoDb.open(str(geo_dir), sites)
    points: set[int] = set()
    for a, b, *_ in [*COUNTRIES, *ASNS]:
        for text in (a, b):
            value = int(ipaddress.ip_address(text))
            points |= {value - 1, value, value + 1}
    for line in SITES.splitlines():
        net = ipaddress.ip_network(line.split()[0])
        points |= {int(net.network_address) - 1, int(net.broadcast_address) + 1}
    queries = [
        (GeoQuery("country", frozenset({"RU"})), lambda i: i.country == "RU"),
        (GeoQuery("country", frozenset({"XX", "DE"})), lambda i: i.country in ("XX", "DE")),
        (GeoQuery("asn", frozenset({64500, 64999})), lambda i: i.asn in (64500, 64999)),
        (GeoQuery("org", frozenset({"example"})), lambda i: "example" in (i.org or "").lower()),
    ]
    for query, expected in queries:
        selection = select_networks(query, str(geo_dir), sites)
        for value in points:
            if value >= 1 << 32:
                continue
            addr = ipaddress.IPv4Address(value)
            inside = selection.v4.label_of(value) is not None
            assert inside == expected(db.lookup(addr.packed)), (query, addr)


def test_non_public_ranges_agree_with_scope_of() -> None:
    for net in (*NON_PUBLIC_V4, *NON_PUBLIC_V6):
        for addr in (net.network_address, net.broadcast_address):
            assert scope_of(addr) != "public", addr  # type: ignore[arg-type]
    for text in ("1.1.1.1", "8.8.8.8", "11.0.0.0", "9.255.255.255", "2a00::1", "2606:4700::1"):
        assert scope_of(ipaddress.ip_address(text)) == "public", text


def test_diagnostics_point_at_the_word_with_a_hint(geo_dir: Path) -> None:
    found = errors_of(
        "drop from country RUS\ndrop from country UK\ndrop from country { RU, QQ1 }\n"
        'drop to asn 0\ndrop to asn 4294967296\ndrop to asn ASX\ndrop from org contains ""\n'
        "drop from country 12\n",
        geo_dir,
    )
    assert found[0].startswith("1:19: 'RUS' is not a country code | did you mean 'RU'?")
    assert found[1].startswith("2:19: 'UK' is not a country code | did you mean 'GB'?")
    assert found[2].startswith("3:25: 'QQ1' is not a country code")
    assert found[3].startswith("4:13: '0' is not an AS number")
    assert found[4].startswith("5:13: '4294967296' is not an AS number")
    assert found[5].startswith("6:13: 'ASX' is not an AS number")
    assert found[6].startswith("7:24: org contains needs a non-empty quoted text")
    assert found[7].startswith("8:19: '12' is not a country code")
    assert len(found) == 8


def test_user_assigned_and_lower_case_codes_are_taken(geo_dir: Path) -> None:
    policy = load("drop from country { xx, ZZ, QM, ru }\n", geo_dir)
    assert policy.rules[0].src is not None
    assert policy.rules[0].src.geo is not None
    assert policy.rules[0].src.geo.shown == "country { QM, RU, XX, ZZ }"


def test_without_geo_data_the_policy_is_refused_with_the_way_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "nothing-here"
    monkeypatch.setenv("IPSCTL_GEO_DIR", str(empty))
    found = errors_of("drop from country RU\n", tmp_path)
    assert len(found) == 1
    assert f"{empty}/country.mmdb is missing" in found[0]
    assert "make setup" in found[0] and "ipsctl geo update" in found[0]
    # geo-dir in the policy, relative to the policy file
    assert "geo-dir" in found[0]


def test_geo_dir_option_relative_to_the_policy(
    geo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPSCTL_GEO_DIR", "/nonexistent")
    sub = geo_dir / "policies"
    sub.mkdir()
    policy = load('drop from country RU\nset geo-dir ".."\n', sub)  # the option may come after
    assert policy.rules[0].src is not None and policy.rules[0].src.nets4


def test_a_site_file_alone_is_enough_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPSCTL_GEO_DIR", str(tmp_path / "none"))
    (tmp_path / "sites.conf").write_text(SITES)
    policy = load('set geo-site "sites.conf"\ndrop from country XX\n', tmp_path)
    assert nets(policy.rules[0].src.nets4) == {"10.10.5.0/24"}  # type: ignore[union-attr]
    assert any("only the site file" in w.message for w in policy.warnings)


def test_new_data_is_a_new_digest(geo_dir: Path) -> None:
    before = load("drop from country RU\n", geo_dir)
    only = [(*range_of("1.2.3.0", "1.2.3.255"), {"country_code": "RU"})]
    country = build_mmdb(only, "country", EPOCH)
    fresh = geo_dir / "new.mmdb"
    fresh.write_bytes(country)
    os.replace(fresh, geo_dir / "country.mmdb")  # as `ipsctl geo update` installs it
    after = load("drop from country RU\n", geo_dir)
    assert after.digest != before.digest
    assert nets(after.rules[0].src.nets4) == {"1.2.3.0/24"}  # type: ignore[union-attr]


# ---- matching, kernel, explain --------------------------------------------------------------


def test_the_engine_matches_them_as_addresses(geo_dir: Path) -> None:
    engine = Engine(load("drop from country RU\n", geo_dir))

    def verdict(src: str, dst: str, now: float) -> str:
        return engine.handle(tcp(src, dst, 4000, 80, flags="S"), now=now).verdict

    assert verdict("1.2.3.9", "192.0.2.1", 1.0) == "drop"
    assert verdict("5.6.7.8", "192.0.2.1", 1.1) == "drop"
    assert verdict("1.2.4.9", "192.0.2.1", 1.2) == "accept"
    assert verdict("2a00::5", "2001:db8::1", 1.3) == "drop"


def test_nft_gets_interval_sets_with_the_networks(geo_dir: Path) -> None:
    policy = load('set geo-site "sites.conf"\ndrop from country { RU, XX } to port 22\n', geo_dir)
    plan = NftPlan()
    static = static_sets(policy, plan)
    sets = {s.family: s for s in static.used.values()}
    assert sets[4].interval and sets[6].interval
    assert sets[4].object()["flags"] == ["interval"]
    elements = next(iter(sets[4].chunks()))["add"]["element"]["elem"]
    assert elements == [
        {"range": ["1.2.3.0", "1.2.3.255"]},
        {"range": ["5.6.0.0", "5.6.6.255"]},
        {"range": ["5.6.8.0", "5.6.255.255"]},
        {"range": ["10.10.5.0", "10.10.5.255"]},
    ]
    commands = build_ruleset(policy, plan, static=static)
    rules = [
        c["add"]["rule"]["expr"]
        for c in commands
        if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == "forward"
        and "p.rules:2" in c["add"]["rule"].get("comment", "")
    ]  # fmt: skip
    lookups = {
        e["match"]["right"]
        for exprs in rules
        for e in exprs
        if "match" in e and str(e["match"]["right"]).startswith("@")
    }
    assert lookups == {f"@{sets[4].name}", f"@{sets[6].name}"}
    assert sets[4].name.startswith("country.RU.XX_v4_iv_")
    assert any({"drop": None} in exprs for exprs in rules)


def test_explain_names_the_country_that_matched(geo_dir: Path) -> None:
    text = 'set geo-site "sites.conf"\ndrop from country { RU, XX }\ndrop to asn 64500\n'
    policy = load(text, geo_dir)
    steps, decider = explain(policy, packet_from_text("tcp 5.6.1.1:4000 > 192.0.2.1:80"))
    assert decider is policy.rules[0]
    assert "source 5.6.1.1 is RU (country { RU, XX })" in steps[0].reason
    steps, _ = explain(policy, packet_from_text("tcp 10.10.5.3:4000 > 192.0.2.1:80"))
    assert "is site lab XX" in steps[0].reason
    steps, decider = explain(policy, packet_from_text("tcp 192.0.2.7:4000 > 9.9.0.1:80"))
    assert steps[0].reason == "source 192.0.2.7 is not in country { RU, XX }"
    assert decider is policy.rules[1]
    assert "destination 9.9.0.1 is AS64500 Example Networks Ltd" in steps[1].reason


# ---- the installed data (scripts/setup.sh), when it is there --------------------------------


@pytest.mark.skipif(
    # Under CI the set-up has installed the data: missing there, the test fails instead.
    not os.path.exists(os.path.join(DEFAULT_GEO_DIR, "country.mmdb")) and not os.environ.get("CI"),
    reason="no installed geo data (make setup)",
)
def test_installed_country_sets_agree_with_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPSCTL_GEO_DIR", raising=False)
    db = GeoDb.open(DEFAULT_GEO_DIR)
    selection = select_networks(GeoQuery("country", frozenset({"US", "CN"})), DEFAULT_GEO_DIR, None)
    rnd = random.Random(22)
    for _ in range(3000):
        value = rnd.getrandbits(32)
        expected = db.lookup(value.to_bytes(4, "big")).country in ("US", "CN")
        assert (selection.v4.label_of(value) is not None) == expected, ipaddress.IPv4Address(value)
    for _ in range(1000):
        value = (0x2 << 124) | rnd.getrandbits(124)  # 2000::/4
        expected = db.lookup(value.to_bytes(16, "big")).country in ("US", "CN")
        assert (selection.v6.label_of(value) is not None) == expected, ipaddress.IPv6Address(value)
    assert ip("8.8.8.8")  # the packets helper is shared; keep its import honest
