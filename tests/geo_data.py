"""Geo databases of the tests' own, built with ips/geo/mmdb_writer.py: the public-looking
addresses in them never leave the test process (no lab host ever gets one).

A module of its own, not conftest.py, for the reason tests/captures.py gives."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ips.geo.db import ASN_FILE, COUNTRY_FILE
from ips.geo.mmdb_writer import build_mmdb, range_of

EPOCH = 1_780_000_000  # the databases' build time: fixed, so they are byte for byte the same


def write_geo_databases(
    directory: str | Path,
    countries: Iterable[tuple[str, str, str]],
    asns: Iterable[tuple[str, str, int, str]],
    epoch: int = EPOCH,
) -> Path:
    """country.mmdb from (first, last, country code) ranges and asn.mmdb from (first, last,
    AS number, organisation) ranges, in DIRECTORY; each list sorted and not overlapping."""
    directory = Path(directory)
    country = build_mmdb(
        [(*range_of(a, b), {"country_code": cc}) for a, b, cc in countries], "country", epoch
    )
    asn = build_mmdb(
        [
            (*range_of(a, b), {"autonomous_system_number": n, "autonomous_system_organization": o})
            for a, b, n, o in asns
        ],
        "asn",
        epoch,
    )
    (directory / COUNTRY_FILE).write_bytes(country)
    (directory / ASN_FILE).write_bytes(asn)
    return directory
