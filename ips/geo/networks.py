"""The networks of a country, an AS number or an organisation: what `from country RU` means.

The policy clauses `from country { RU, CN }`, `to asn 13335` and `from org contains "…"`
are resolved at load time into address sets: the networks the databases (and the site file)
map to those values, exactly as `GeoDb.lookup` would answer for every address in them. The
kernel then matches them in nftables interval sets, the engine in its ordinary address index;
nothing is looked up per packet.

`select_networks` walks each database's search tree once (only the databases a query needs)
and keeps the ranges whose record is wanted, merged as it goes (the walk is in address
order). The walk reads the tree's records straight from the file's bytes (one array of all
records, converted in C) and decodes each distinct data record once: about a second for the
ASN database instead of the ten of maxminddb's own iterator, which builds a network object
and a record for each of 1.3 million leaves. The answers are cached by the identity of the
database files (device, inode, size, modification time) and the query: a daemon that applies
the same policy again does not walk again, and `ipsctl geo update` (a new file, renamed over
the old one) is seen at the next load.

Three rules make the sets agree with `GeoDb.lookup`:
  * only public addresses get a database's answer (ips/geo/db.py, scope_of): the non-public
    ranges below are cut out of what the databases say;
  * the site file comes first: where its most specific network gives a country (or an AS
    number, or an organisation), that value replaces the databases' for the whole network,
    whatever its scope;
  * where a site network gives no country (or AS number), the databases' answer stands.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import os
import sys
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import maxminddb

from ips.geo.db import ASN_FILE, COUNTRY_FILE, asn_of_record, country_of_record
from ips.geo.site import SiteEntry, SiteMap

__all__ = [
    "NON_PUBLIC_V4",
    "NON_PUBLIC_V6",
    "GeoQuery",
    "GeoSelection",
    "LabeledRanges",
    "database_identity",
    "select_networks",
]

# Ranges that are never "public" (scope_of in ips/geo/db.py): private, CGNAT, loopback,
# link-local, multicast, documentation, benchmarking, and the rest the IANA special-purpose
# registries mark not globally reachable. tests/pure/test_geo_policy.py checks them against
# scope_of at their edges.
NON_PUBLIC_V4 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/29", "192.0.0.170/31", "192.0.2.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
)  # fmt: skip
NON_PUBLIC_V6 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::/127", "::ffff:0:0/96", "100::/64", "2001::/23", "2001:db8::/32", "fc00::/7",
        "fe80::/10", "ff00::/8",
    )
)  # fmt: skip

Range = tuple[int, int]  # first and last address, inclusive, as integers of their family


@dataclass(frozen=True, slots=True)
class GeoQuery:
    """What one clause asks for: kind "country" (values: codes), "asn" (numbers) or "org"
    (lower-case texts an organisation's name must contain)."""

    kind: str
    values: frozenset[Any]


@dataclass(slots=True)
class LabeledRanges:
    """The ranges of one family that a query selects, sorted and disjoint, each with the
    value that put it there (`RU`, `AS13335 Cloudflare, Inc.`, `site HQ lab`): the label
    is what `ipsctl explain` shows."""

    ranges: list[Range] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def add(self, first: int, last: int, label: str) -> None:
        if self.ranges and self.labels[-1] == label and self.ranges[-1][1] + 1 == first:
            self.ranges[-1] = (self.ranges[-1][0], last)
        else:
            self.ranges.append((first, last))
            self.labels.append(label)

    def label_of(self, value: int) -> str | None:
        i = bisect.bisect_right(self.ranges, (value, 1 << 129)) - 1
        if i >= 0 and self.ranges[i][0] <= value <= self.ranges[i][1]:
            return self.labels[i]
        return None


@dataclass(slots=True)
class GeoSelection:
    """What a query selects, per family; `sources` names the data it came from."""

    v4: LabeledRanges
    v6: LabeledRanges
    sources: tuple[str, ...] = ()


# ---- the walk over one database -------------------------------------------------------------


def _records(data: bytes, node_count: int, record_size: int) -> array[int]:
    """Every record of the search tree, left and right of each node in turn, as integers."""
    tree = memoryview(data)[: node_count * record_size // 4]
    count = node_count * 2
    if record_size == 32:
        out = array("I", bytes(tree))
    elif record_size == 24:
        wide = bytearray(count * 4)
        wide[1::4], wide[2::4], wide[3::4] = tree[0::3], tree[1::3], tree[2::3]
        out = array("I", bytes(wide))
    else:  # 28: the middle byte's high nibble tops the left record, its low the right
        nodes = tree
        wide = bytearray(count * 4)
        wide[1::8], wide[2::8], wide[3::8] = nodes[0::7], nodes[1::7], nodes[2::7]
        wide[5::8], wide[6::8], wide[7::8] = nodes[4::7], nodes[5::7], nodes[6::7]
        middle = bytes(nodes[3::7])
        wide[0::8] = bytes(b >> 4 for b in middle)
        wide[4::8] = bytes(b & 15 for b in middle)
        out = array("I", bytes(wide))
    if sys.byteorder == "little":
        out.byteswap()
    return out


def _walk(
    path: str, want: Callable[[Any], str | None]
) -> tuple[list[tuple[int, int, int, str]], int]:
    """(family, first, last, label) of every network of the database at PATH whose record
    `want` labels (None: not wanted), in address order, adjacent ones merged; and the
    number of leaves seen."""
    reader = maxminddb.open_database(path, maxminddb.MODE_MEMORY)
    try:
        meta = reader.metadata()
        node_count, record_size = int(meta.node_count), int(meta.record_size)
        with open(path, "rb") as fh:
            data = fh.read()
        records = _records(data, node_count, record_size)
        tree_size = node_count * record_size // 4
        labels: dict[int, str | None] = {}
        decoder = reader._decoder  # the pure reader's: decode a data record by its offset

        def label_of(pointer: int) -> str | None:
            label = labels.get(pointer, "")
            if label == "":
                record, _ = decoder.decode(pointer - node_count + tree_size)
                label = labels[pointer] = want(record)
            return label

        out: list[tuple[int, int, int, str]] = []
        width = 128 if meta.ip_version == 6 else 32
        ipv4_start = 0
        if width == 128:  # IPv4 at ::/96; aliases of that subtree elsewhere are skipped
            for _ in range(96):
                if ipv4_start >= node_count:
                    break
                ipv4_start = records[ipv4_start * 2]
        leaves = 0
        stack = [(0, 0, 0)]  # (node, first address of its span, depth)
        pop, push = stack.pop, stack.append
        while stack:
            node, first, depth = pop()
            depth += 1
            shift = width - depth
            for bit in (1, 0):  # right pushed first: the left (lower) half comes out first
                child = records[node * 2 + bit]
                start = first | (bit << shift)
                if child < node_count:
                    if child == ipv4_start and width == 128 and (start != 0 or depth != 96):
                        continue  # an alias of the IPv4 subtree (::ffff:0:0/96, 2002::/16)
                    push((child, start, depth))
                elif child > node_count:
                    leaves += 1
                    label = label_of(child)
                    if label is None:
                        continue
                    last = start | ((1 << shift) - 1)
                    family = 6
                    if width == 32:
                        family = 4
                    elif start >> 32 == 0 and depth >= 96:
                        family, start, last = 4, start & 0xFFFFFFFF, last & 0xFFFFFFFF
                    prev = out[-1] if out else None
                    if prev and prev[0] == family and prev[3] == label and prev[2] + 1 == start:
                        out[-1] = (family, prev[1], last, label)
                        continue
                    out.append((family, start, last, label))
        return out, leaves
    finally:
        reader.close()


def _subtract(ranges: list[Range], holes: list[Range]) -> list[Range]:
    """RANGES (sorted, disjoint) without the addresses of HOLES (sorted, disjoint)."""
    out: list[Range] = []
    h = 0
    for first, last in ranges:
        while h < len(holes) and holes[h][1] < first:
            h += 1
        k = h
        lo = first
        while k < len(holes) and holes[k][0] <= last:
            if holes[k][0] > lo:
                out.append((lo, holes[k][0] - 1))
            lo = max(lo, holes[k][1] + 1)
            k += 1
        if lo <= last:
            out.append((lo, last))
    return out


def _as_ranges(nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> list[Range]:
    return sorted((int(n.network_address), int(n.broadcast_address)) for n in nets)


_NON_PUBLIC = {4: _as_ranges(NON_PUBLIC_V4), 6: _as_ranges(NON_PUBLIC_V6)}


# ---- the site file ----------------------------------------------------------------------------


def _site_pieces(sites: SiteMap) -> dict[int, list[tuple[int, int, SiteEntry]]]:
    """The site file as disjoint pieces, per family, each with its most specific entry."""
    out: dict[int, list[tuple[int, int, SiteEntry]]] = {4: [], 6: []}
    bounds: dict[int, set[int]] = {4: set(), 6: set()}
    for entry in sites.entries:
        net = ipaddress.ip_network(entry.network)
        bounds[net.version] |= {int(net.network_address), int(net.broadcast_address) + 1}
    for family, points in bounds.items():
        ordered = sorted(points)
        size = 4 if family == 4 else 16
        for lo, hi in itertools.pairwise(ordered):
            found = sites.lookup(lo.to_bytes(size, "big"))
            if found is not None:
                out[family].append((lo, hi - 1, found))
    return out


def _site_value(entry: SiteEntry, kind: str) -> tuple[bool, str | None, Any]:
    """(whether the site decides, its label, its value) for a query of KIND, as
    GeoDb.lookup takes the site's word before the databases'."""
    if kind == "country":
        return (entry.country is not None, f"site {entry.name} {entry.country}", entry.country)
    if entry.asn is not None:  # a site AS number brings its own organisation, or none
        label = f"site {entry.name} AS{entry.asn}" + (f" {entry.org}" if entry.org else "")
        return True, label, (entry.asn, entry.org)
    if kind == "org" and entry.org:
        return True, f"site {entry.name} {entry.org}", (None, entry.org)
    return False, None, None


# ---- the answer -------------------------------------------------------------------------------


def database_identity(path: str) -> tuple[str, int, int, int, int] | None:
    """What tells one database file from another (a new file renamed over the old one has a
    new inode); None when there is no file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _matches(query: GeoQuery, value: Any) -> bool:
    if query.kind == "country":
        return value in query.values
    asn, org = value
    if query.kind == "asn":
        return asn in query.values
    folded = (org or "").lower()
    return any(text in folded for text in query.values)


def _db_want(query: GeoQuery) -> Callable[[Any], str | None]:
    if query.kind == "country":

        def want_country(record: Any) -> str | None:
            code = country_of_record(record)
            return code if code is not None and code in query.values else None

        return want_country

    def want_asn(record: Any) -> str | None:
        asn, org = asn_of_record(record)
        if asn is None or not _matches(query, (asn, org)):
            return None
        return f"AS{asn}" + (f" {org}" if org else "")

    return want_asn


_CACHE: dict[tuple[Any, ...], tuple[list[tuple[int, int, int, str]], int]] = {}
_CACHE_SIZE = 16


def _database_ranges(path: str, query: GeoQuery) -> list[tuple[int, int, int, str]]:
    identity = database_identity(path)
    key = (identity, query)
    cached = _CACHE.get(key)
    if cached is None:
        cached = _walk(path, _db_want(query))
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = cached
    return cached[0]


def select_networks(query: GeoQuery, directory: str, sites: SiteMap | None) -> GeoSelection:
    """The networks QUERY selects with the databases of DIRECTORY and the site file SITES.

    OSError or maxminddb.InvalidDatabaseError (a ValueError) when a database that is there
    cannot be read; a missing database contributes nothing (the caller says whether that is
    an error)."""
    db_file = COUNTRY_FILE if query.kind == "country" else ASN_FILE
    path = os.path.join(directory, db_file)
    from_db: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
    sources: list[str] = []
    if os.path.exists(path):
        sources.append(path)
        for family, first, last, label in _database_ranges(path, query):
            from_db[family].append((first, last, label))
    pieces = _site_pieces(sites) if sites is not None and len(sites) else {4: [], 6: []}
    result = {4: LabeledRanges(), 6: LabeledRanges()}
    for family in (4, 6):
        # What the databases say, for public addresses only, where no site network decides.
        decided = [(lo, hi) for lo, hi, e in pieces[family] if _site_value(e, query.kind)[0]]
        holes = _merge(sorted(_NON_PUBLIC[family] + decided))
        chosen: list[tuple[int, int, str]] = []
        if from_db[family]:
            labels = from_db[family]
            kept = _subtract([(lo, hi) for lo, hi, _ in labels], holes)
            starts = [lo for lo, _, _ in labels]
            for lo, hi in kept:
                label = labels[bisect.bisect_right(starts, lo) - 1][2]
                chosen.append((lo, hi, label))
        for lo, hi, entry in pieces[family]:
            decides, site_label, value = _site_value(entry, query.kind)
            if decides and _matches(query, value):
                chosen.append((lo, hi, site_label or entry.name))
        for lo, hi, label in sorted(chosen):
            result[family].add(lo, hi, label)
    if sites is not None and len(sites):
        sources.append("the site file")
    return GeoSelection(result[4], result[6], tuple(sources))


def _merge(ranges: list[Range]) -> list[Range]:
    out: list[Range] = []
    for lo, hi in ranges:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def ranges_to_networks(ranges: Iterable[Range], width: int) -> list[tuple[int, int]]:
    """Inclusive ranges as the fewest (network, prefix length) pairs that cover them."""
    out: list[tuple[int, int]] = []
    for first, last in ranges:
        lo = first
        while lo <= last:
            # the largest block that starts at lo (its alignment) and stays within the range
            size = (lo & -lo).bit_length() - 1 if lo else width
            span = (last - lo + 1).bit_length() - 1
            bits = min(size, span)
            out.append((lo, width - bits))
            lo += 1 << bits
    return out
