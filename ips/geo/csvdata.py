"""Address-range CSV files (ip-location-db's format) turned into an mmdb file.

The registry publishes the ASN data (RouteViews, the RIRs and DB-IP) only as CSV:
`ip_range_start,ip_range_end,autonomous_system_number,autonomous_system_organization`, one
inclusive range a line, addresses in text. The country CSVs of the same project have
`ip_range_start,ip_range_end,country_code`. `build_from_csv` reads any number of such files
(IPv4 and IPv6) and writes one mmdb with the keys MaxMind's own ASN and ip-location-db's
country databases use, so the reader (ips/geo/db.py) treats all of them alike.
"""

from __future__ import annotations

import csv
import heapq
import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any

from ips.geo.mmdb_writer import MmdbRange, build_mmdb

__all__ = ["CsvDataError", "build_from_csv", "read_ranges", "without_overlaps"]

KINDS = ("asn", "country")


class CsvDataError(ValueError):
    """A line of a range file that cannot be used; str() is `file:line: problem`."""


def _record(kind: str, fields: list[str]) -> dict[str, Any]:
    if kind == "asn":
        if len(fields) < 3:
            raise ValueError("expected start,end,asn[,organisation]")
        number = int(fields[2])
        if not 0 <= number < 1 << 32:
            raise ValueError(f"AS number out of range: {number}")
        record: dict[str, Any] = {"autonomous_system_number": number}
        if len(fields) > 3 and fields[3]:
            record["autonomous_system_organization"] = fields[3]
        return record
    if len(fields) < 3 or len(fields[2]) != 2 or not fields[2].isalpha():
        raise ValueError("expected start,end,two-letter country code")
    return {"country_code": fields[2].upper()}


def read_ranges(path: str, kind: str) -> Iterator[MmdbRange]:
    """The ranges of one CSV file, in file order; a bad line raises CsvDataError."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    with open(path, newline="", encoding="utf-8") as fh:
        for line_number, fields in enumerate(csv.reader(fh), start=1):
            if not fields or fields[0].startswith("#"):
                continue
            try:
                first = ipaddress.ip_address(fields[0].strip())
                last = ipaddress.ip_address(fields[1].strip()) if len(fields) > 1 else None
                if last is None or first.version != last.version or int(first) > int(last):
                    raise ValueError("the range's two ends are not a range")
                yield int(first), int(last), _record(kind, fields)
            except ValueError as exc:
                raise CsvDataError(f"{path}:{line_number}: {exc}") from None


def without_overlaps(ranges: Iterable[MmdbRange]) -> tuple[list[MmdbRange], int]:
    """(RANGES sorted and made disjoint, the number of overlaps resolved). Where two ranges
    overlap, the one that starts later wins (of two that start together, the shorter): of
    nested ranges the inner, more specific one, as a routing table would answer; the outer one
    keeps what lies on either side. The published data has a few such overlaps."""
    heap = [(first, -last, seq, record) for seq, (first, last, record) in enumerate(ranges)]
    heapq.heapify(heap)
    seq = len(heap)
    out: list[MmdbRange] = []
    overlaps = 0
    while heap:
        first, negative_last, _seq, record = heapq.heappop(heap)
        last = -negative_last
        if out and out[-1][1] >= first:
            overlaps += 1
            prev_first, prev_last, prev_record = out.pop()
            if prev_first < first:
                out.append((prev_first, first - 1, prev_record))
            if prev_last > last:  # the earlier range's tail, after this one: back in the queue
                heapq.heappush(heap, (last + 1, -prev_last, seq, prev_record))
                seq += 1
        out.append((first, last, record))
    return out, overlaps


def build_from_csv(
    paths: Iterable[str], kind: str, description: str, build_epoch: int
) -> tuple[bytes, int, int]:
    """(the mmdb's bytes, the number of ranges, the number of overlaps resolved) for the CSV
    files at PATHS, all of one KIND, merged in address order (`without_overlaps`)."""
    ranges: list[MmdbRange] = []
    for path in paths:
        ranges.extend(read_ranges(path, kind))
    merged, overlaps = without_overlaps(ranges)
    return build_mmdb(merged, kind, build_epoch, description), len(merged), overlaps
