"""Writing MaxMind DB (.mmdb) files from address ranges: bytes out, no I/O.

The set-up builds the ASN database with it (the registry publishes that data as CSV only), and
tests build small databases of their own (lab addresses mapped to countries). The format is
the one of https://maxmind.github.io/MaxMind-DB/ (version 2.0): a binary search tree over the
address bits, 16 zero bytes, a data section, then the metadata after a marker.

The tree is built straight from sorted, non-overlapping inclusive ranges (no list of CIDR
blocks in between): a node whose whole span lies inside one range becomes a data record, a
node no range touches the empty record, and any other node is split in two. Databases are
always IPv6 trees (`ip_version` 6), IPv4 living at ::a.b.c.d/96 as MaxMind's own files do.
Records are deduplicated: equal values are written once in the data section.

Supported value types are the ones geo data needs: str, int (unsigned, up to 64 bits), bool,
float (as double), dict with str keys, and list.
"""

from __future__ import annotations

import bisect
import ipaddress
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["MmdbRange", "build_mmdb", "range_of"]

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_IPV4_OFFSET = 0  # IPv4 addresses sit at ::a.b.c.d/96: their integer value is unchanged
_V6_BITS = 128

# Data section type numbers (the specification's table).
_T_POINTER = 1
_T_UTF8 = 2
_T_DOUBLE = 3
_T_MAP = 7
_T_UINT16 = 5
_T_UINT32 = 6
_T_UINT64 = 9
_T_ARRAY = 11
_T_BOOLEAN = 14

MmdbRange = tuple[int, int, Mapping[str, Any]]  # (first, last, record): IPv6 integers, inclusive


def range_of(first: str, last: str) -> tuple[int, int]:
    """Two addresses in text as the integers of the IPv6 tree (IPv4 at ::/96)."""
    a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
    if a.version != b.version:
        raise ValueError(f"{first}-{last}: the two ends are of different families")
    if int(a) > int(b):
        raise ValueError(f"{first}-{last}: the range ends before it starts")
    return int(a) + _IPV4_OFFSET, int(b) + _IPV4_OFFSET


class _DataSection:
    """The data section: values encoded once each, by their canonical form."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self._offsets: dict[bytes, int] = {}

    def add(self, value: Any) -> int:
        encoded = encode_value(value)
        offset = self._offsets.get(encoded)
        if offset is None:
            offset = len(self.buf)
            self._offsets[encoded] = offset
            self.buf += encoded
        return offset


def _control(type_number: int, size: int) -> bytes:
    """The control byte(s) of a field: type and payload size, extended forms when needed."""
    if size < 29:
        head, extra = size, b""
    elif size < 29 + 256:
        head, extra = 29, bytes([size - 29])
    elif size < 285 + 65536:
        head, extra = 30, (size - 285).to_bytes(2, "big")
    elif size < 65821 + (1 << 24):
        head, extra = 31, (size - 65821).to_bytes(3, "big")
    else:
        raise ValueError(f"a value of {size} bytes is too large for an mmdb field")
    if type_number <= 7:
        return bytes([(type_number << 5) | head]) + extra
    return bytes([head, type_number - 7]) + extra


def _uint(type_number: int, value: int, max_bytes: int) -> bytes:
    payload = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    if len(payload) > max_bytes:
        raise ValueError(f"{value} does not fit in {max_bytes * 8} bits")
    return _control(type_number, len(payload)) + payload


def encode_value(value: Any) -> bytes:
    """One value in the data section's encoding (no pointers: each value self-contained)."""
    if isinstance(value, bool):  # before int: bool is an int
        return _control(_T_BOOLEAN, int(value))
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative integers are not supported here: {value}")
        if value < 1 << 16:
            return _uint(_T_UINT16, value, 2)
        if value < 1 << 32:
            return _uint(_T_UINT32, value, 4)
        return _uint(_T_UINT64, value, 8)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _control(_T_UTF8, len(raw)) + raw
    if isinstance(value, float):
        return _control(_T_DOUBLE, 8) + struct.pack(">d", value)
    if isinstance(value, Mapping):
        parts = [_control(_T_MAP, len(value))]
        for key in sorted(value):  # sorted: equal maps encode to equal bytes (deduplication)
            if not isinstance(key, str):
                raise TypeError(f"map keys must be strings, not {type(key).__name__}")
            parts.append(encode_value(key))
            parts.append(encode_value(value[key]))
        return b"".join(parts)
    if isinstance(value, list | tuple):
        return _control(_T_ARRAY, len(value)) + b"".join(encode_value(v) for v in value)
    raise TypeError(f"cannot store a {type(value).__name__} in an mmdb file")


def _check_sorted(ranges: Sequence[MmdbRange]) -> None:
    previous_last = -1
    for first, last, _record in ranges:
        if not 0 <= first <= last < 1 << _V6_BITS:
            raise ValueError(f"bad range {first}-{last}")
        if first <= previous_last:
            raise ValueError(f"ranges overlap or are not sorted at {ipaddress.ip_address(first)}")
        previous_last = last


def _record_size(largest: int) -> int:
    for bits in (24, 28, 32):
        if largest < 1 << bits:
            return bits
    raise ValueError("the database is too large for 32-bit records")


def _pack_nodes(left: Sequence[int], right: Sequence[int], bits: int) -> bytes:
    out = bytearray()
    if bits == 24:
        for lv, rv in zip(left, right, strict=True):
            out += lv.to_bytes(3, "big") + rv.to_bytes(3, "big")
    elif bits == 28:
        for lv, rv in zip(left, right, strict=True):
            middle = ((lv >> 24) << 4) | (rv >> 24)
            out += (lv & 0xFFFFFF).to_bytes(3, "big") + bytes([middle])
            out += (rv & 0xFFFFFF).to_bytes(3, "big")
    else:
        for lv, rv in zip(left, right, strict=True):
            out += struct.pack(">II", lv, rv)
    return bytes(out)


def build_mmdb(
    ranges: Iterable[MmdbRange],
    database_type: str,
    build_epoch: int,
    description: str = "",
) -> bytes:
    """An mmdb file (as bytes) answering RECORD for every address of each (first, last, record)
    range; RANGES sorted by first address, not overlapping. BUILD_EPOCH is an argument (the
    caller's clock, seconds since the epoch; libmaxminddb refuses 0), so the same input gives
    the same bytes."""
    if build_epoch <= 0:
        raise ValueError("build_epoch must be a positive time (libmaxminddb refuses 0)")
    items = list(ranges)
    _check_sorted(items)
    firsts = [r[0] for r in items]
    lasts = [r[1] for r in items]
    data = _DataSection()
    offsets = [data.add(r[2]) for r in items]

    # Node values before the node count is known: >= 0 a node index, EMPTY, or DATA - offset.
    empty = -1
    left: list[int] = []
    right: list[int] = []

    def build(lo: int, bits: int, i: int, j: int) -> int:
        """The record for the span [lo, lo + 2**bits) given the ranges i..j-1 that touch it."""
        if i >= j:
            return empty
        hi = lo + (1 << bits) - 1
        if i + 1 == j and firsts[i] <= lo and lasts[i] >= hi:
            return -2 - offsets[i]
        if bits == 0:  # a single address inside a range (only reached by bad input)
            return -2 - offsets[i]
        index = len(left)
        left.append(empty)
        right.append(empty)
        mid = lo + (1 << (bits - 1))
        # Ranges ending before mid touch only the left half; ranges starting at mid or later
        # only the right one; one range may straddle both.
        split_left = bisect.bisect_left(firsts, mid, i, j)  # ranges starting before mid
        split_right = bisect.bisect_left(lasts, mid, i, j)  # ranges ending before mid
        left[index] = build(lo, bits - 1, i, split_left)
        right[index] = build(mid, bits - 1, split_right, j)
        return index

    root = build(0, _V6_BITS, 0, len(items))
    if root < 0:  # no node at all (empty or all-covering input): one node with two records
        left.append(root)
        right.append(root)
    node_count = len(left)

    def final(value: int) -> int:
        if value >= 0:
            return value
        if value == empty:
            return node_count
        return node_count + 16 + (-2 - value)

    left_final = [final(v) for v in left]
    right_final = [final(v) for v in right]
    bits = _record_size(node_count + 16 + len(data.buf))
    # libmaxminddb checks the metadata's types exactly (build_epoch a uint64, node_count a
    # uint32, the rest uint16), so they are encoded as such, not by size.
    metadata = [
        ("binary_format_major_version", _uint(_T_UINT16, 2, 2)),
        ("binary_format_minor_version", _uint(_T_UINT16, 0, 2)),
        ("build_epoch", _uint(_T_UINT64, build_epoch, 8)),
        ("database_type", encode_value(database_type)),
        ("description", encode_value({"en": description} if description else {})),
        ("ip_version", _uint(_T_UINT16, 6, 2)),
        ("languages", encode_value(["en"] if description else [])),
        ("node_count", _uint(_T_UINT32, node_count, 4)),
        ("record_size", _uint(_T_UINT16, bits, 2)),
    ]
    encoded_metadata = _control(_T_MAP, len(metadata)) + b"".join(
        encode_value(key) + value for key, value in metadata
    )
    return b"".join(
        (
            _pack_nodes(left_final, right_final, bits),
            bytes(16),
            bytes(data.buf),
            METADATA_MARKER,
            encoded_metadata,
        )
    )
