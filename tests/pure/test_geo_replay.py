"""Issue 22's "Done when": replaying the shared captures, the public addresses they contain
get, in the EVE lines `ipsctl replay` writes, the countries, AS numbers and organisations
that mmdblookup (Debian's mmdb-bin) gives for the same installed databases; non-public
addresses get their scope and nothing else. Under CI a missing mmdblookup or missing data is
a failure, not a skip."""

from __future__ import annotations

import io
import ipaddress
import json
import os
from functools import cache
from typing import Any

import pytest
from captures import PCAPS, pcap_names
from mmdb_oracle import capture_addresses, mmdblookup, need_mmdblookup

from ips.geo.db import ASN_FILE, COUNTRY_FILE, default_geo_dir, scope_of
from ips.policy.resolve import load_policy_text
from ips.replay import replay_captures

GEO_DIR = default_geo_dir()


@pytest.fixture(scope="module")
def replayed() -> list[dict[str, Any]]:
    for name in (COUNTRY_FILE, ASN_FILE):
        if not os.path.exists(os.path.join(GEO_DIR, name)):
            pytest.fail(f"no {name} in {GEO_DIR}: scripts/setup.sh installs the geo data")
    out = io.StringIO()
    policy = load_policy_text("set default accept\n")
    result = replay_captures(policy, [str(PCAPS / n) for n in pcap_names()], eve_stream=out)
    assert result.geo_problem is None
    return [json.loads(line) for line in out.getvalue().splitlines()]


@cache
def oracle(address: str) -> dict[str, Any] | None:
    """What the ipsctl object should say of ADDRESS, from mmdblookup."""
    scope = scope_of(ipaddress.ip_address(address))
    if scope != "public":
        return {"scope": scope}
    country_db, asn_db = (os.path.join(GEO_DIR, n) for n in (COUNTRY_FILE, ASN_FILE))
    want = {
        "country": mmdblookup(country_db, address, "country_code"),
        "asn": mmdblookup(asn_db, address, "autonomous_system_number"),
        "org": mmdblookup(asn_db, address, "autonomous_system_organization"),
    }
    return {k: v for k, v in want.items() if v is not None} or None


def test_replayed_lines_carry_the_countries_and_asns_mmdblookup_gives(
    replayed: list[dict[str, Any]],
) -> None:
    need_mmdblookup()
    compared: set[str] = set()
    with_country = with_asn = 0
    kinds: set[str] = set()
    for record in replayed:
        if record["event_type"] not in ("flow", "alert", "drop", "ipsctl_log"):
            continue
        own = record.get("ipsctl") or {}
        for address, key in ((record["src_ip"], "src_geo"), (record["dest_ip"], "dst_geo")):
            want = oracle(address)
            assert own.get(key) == want, (record["event_type"], address, own.get(key), want)
            kinds.add(record["event_type"])
            if scope_of(ipaddress.ip_address(address)) == "public" and address not in compared:
                compared.add(address)
                with_country += want is not None and "country" in want
                with_asn += want is not None and "asn" in want
    assert "flow" in kinds
    # The comparison meant something: most public addresses of the captures were compared,
    # and most are known to both databases.
    public = {
        str(ipaddress.ip_address(a))
        for a in capture_addresses()
        if scope_of(ipaddress.ip_address(a)) == "public"
    }
    assert len(compared) >= 50 and len(compared) >= 0.8 * len(public)
    assert with_country >= 40 and with_asn >= 40


def test_replayed_flow_records_name_the_services(replayed: list[dict[str, Any]]) -> None:
    services = {
        (r["proto"], r.get("dest_port")): (r.get("ipsctl") or {}).get("service")
        for r in replayed
        if r["event_type"] == "flow"
    }
    assert services.get(("UDP", 53)) == "domain"
    assert services.get(("TCP", 443)) == "https"
