"""The site file: names for local networks, consulted before the databases; every problem
reported with file:line, and a file with any problem refused whole."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ips.geo.db import GeoDb
from ips.geo.mmdb_writer import build_mmdb, range_of
from ips.geo.site import SiteFileError, load_site_file, parse_site_text

EPOCH = 1_700_000_000
SITES = """\
# the operator's networks
10.10.0.0/16 = "HQ"
10.10.5.0/24 = "HQ lab"  country XX  asn 64512  org "Lab network"
10.20.0.0/16 = "Branch" country DE   # behind NAT
198.51.100.0/24 = "Partner" asn 64999
2001:db8:10::/48 = "HQ v6" country FR
"""


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@pytest.fixture
def small_db(tmp_path: Path) -> GeoDb:
    """Databases built by the test: 8.8.8.0/24 in the US, AS 15169; the site file above."""
    country = build_mmdb(
        [(*range_of("8.8.8.0", "8.8.8.255"), {"country_code": "US"})], "country", EPOCH
    )
    asn = build_mmdb(
        [
            (
                *range_of("8.8.8.0", "8.8.8.255"),
                {"autonomous_system_number": 15169, "autonomous_system_organization": "Google"},
            )
        ],
        "asn",
        EPOCH,
    )
    (tmp_path / "country.mmdb").write_bytes(country)
    (tmp_path / "asn.mmdb").write_bytes(asn)
    return GeoDb.open(str(tmp_path), parse_site_text(SITES, "sites.conf"))


def test_most_specific_network_wins() -> None:
    sites = parse_site_text(SITES)
    assert len(sites) == 5
    hq = sites.lookup(packed("10.10.1.1"))
    assert hq is not None and hq.name == "HQ" and hq.country is None
    lab = sites.lookup(packed("10.10.5.7"))
    assert lab is not None
    assert (lab.name, lab.country, lab.asn, lab.org) == ("HQ lab", "XX", 64512, "Lab network")
    branch = sites.lookup(packed("10.20.255.255"))
    assert branch is not None and branch.country == "DE"
    v6 = sites.lookup(packed("2001:db8:10:ffff::1"))
    assert v6 is not None and v6.name == "HQ v6"
    assert sites.lookup(packed("10.30.0.1")) is None
    assert sites.lookup(packed("2001:db8:11::1")) is None


def test_site_is_used_before_the_databases(small_db: GeoDb) -> None:
    lab = small_db.lookup_text("10.10.5.7")
    assert (lab.scope, lab.site, lab.country, lab.asn, lab.org) == (
        "private",
        "HQ lab",
        "XX",
        64512,
        "Lab network",
    )
    assert lab.label() == "HQ lab XX AS64512 Lab network"
    assert small_db.lookup_text("10.10.9.9").label() == "HQ"
    # A site entry that sets only a country: no AS number is made up.
    branch = small_db.lookup_text("10.20.0.1")
    assert (branch.country, branch.asn) == ("DE", None)
    # Outside the site file, the databases answer.
    google = small_db.lookup_text("8.8.8.8")
    assert (google.site, google.country, google.asn) == (None, "US", 15169)


def test_a_site_asn_replaces_the_database_organisation_too(tmp_path: Path) -> None:
    asn = build_mmdb(
        [
            (
                *range_of("8.8.8.0", "8.8.8.255"),
                {"autonomous_system_number": 15169, "autonomous_system_organization": "Google"},
            )
        ],
        "asn",
        EPOCH,
    )
    (tmp_path / "asn.mmdb").write_bytes(asn)
    db = GeoDb.open(str(tmp_path), parse_site_text('8.8.8.0/24 = "Resolver" asn 64500\n'))
    info = db.lookup_text("8.8.8.8")
    assert (info.site, info.asn, info.org) == ("Resolver", 64500, None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('10.10.0.1/16 = "HQ"', "has host bits set; did you mean 10.10.0.0/16?"),
        ('10.300.0.0/16 = "HQ"', "is not a network"),
        ("10.10.0.0/16 = HQ", 'expected NETWORK = "name"'),
        ('10.10.0.0/16 = ""', "the name must be"),
        ('10.10.0.0/16 = "HQ" country de', "not a two-letter code in capitals"),
        ('10.10.0.0/16 = "HQ" country DEU', "not a two-letter code in capitals"),
        ('10.10.0.0/16 = "HQ" asn 99999999999', "is not an AS number"),
        ('10.10.0.0/16 = "HQ" asn', "has no value"),
        ('10.10.0.0/16 = "HQ" city Paris', "unknown option 'city'"),
        ('10.10.0.0/16 = "HQ" country DE country FR', "given twice"),
        ('10.10.0.0/16 = "HQ" org "unterminated', "cannot read the options"),
    ],
)
def test_errors_name_the_file_and_line(line: str, message: str) -> None:
    with pytest.raises(SiteFileError) as caught:
        parse_site_text(f"# first\n\n{line}\n", "sites.conf")
    assert len(caught.value.problems) == 1
    problem = caught.value.problems[0]
    assert problem.startswith("sites.conf:3: "), problem
    assert message in problem


def test_every_problem_at_once_and_duplicates() -> None:
    text = '10.0.0.0/8 = "A"\nbogus\n10.0.0.0/8 = "B"\n2001:db8::/32 = "C" asn x\n'
    with pytest.raises(SiteFileError) as caught:
        parse_site_text(text, "s")
    assert caught.value.problems == [
        's:2: expected NETWORK = "name" [country CC] [asn N]',
        "s:3: 10.0.0.0/8 is already named on line 1",
        "s:4: asn 'x' is not an AS number (0 to 4294967295)",
    ]


def test_asn_may_be_written_with_its_prefix_and_files_load(tmp_path: Path) -> None:
    path = tmp_path / "sites.conf"
    path.write_text('192.0.2.0/24 = "Doc" asn AS64496\n')
    entry = load_site_file(str(path)).lookup(packed("192.0.2.9"))
    assert entry is not None and entry.asn == 64496
