"""Addresses in text as integers: the parser every address of a policy and its table files
goes through (values.py, lists.py)."""

from __future__ import annotations

import ipaddress
import re

__all__ = ["parse_network"]

# Octets without leading zeros (those go the long way, and are refused there).
_DOTTED_QUAD = re.compile(
    r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})"
    r"(?:/([0-9]{1,3}))?"
)
_MASKS4 = tuple(((1 << plen) - 1) << (32 - plen) for plen in range(33))


def parse_network(text: str) -> tuple[int, int, int, bool] | None:
    """'a.b.c.d[/n]' or an IPv6 address[/n] -> (version, network int, prefix length, whether
    host bits were set), or None when invalid. IPv4 is parsed by hand: a large policy has
    thousands of addresses, and the ipaddress module is slow at this."""
    quad = _DOTTED_QUAD.fullmatch(text)
    if quad is not None:  # the usual shape, in one regex (a table file may have 10^6 of them)
        a, b, c, d, plen_text = quad.groups()
        ia, ib, ic, id_ = int(a), int(b), int(c), int(d)
        plen = 32 if plen_text is None else int(plen_text)
        if ia > 255 or ib > 255 or ic > 255 or id_ > 255 or plen > 32:
            return None
        value = (ia << 24) | (ib << 16) | (ic << 8) | id_
        mask = _MASKS4[plen]
        return 4, value & mask, plen, value & ~mask != 0
    addr, slash, plen_text = text.partition("/")
    if ":" not in addr:
        parts = addr.split(".")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
            return None
        octets = [int(p) for p in parts]
        if max(octets) > 255 or any(len(p) > 1 and p[0] == "0" for p in parts):
            return None  # leading zeros are ambiguous (octal to some tools): refused
        value = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
        width, version = 32, 4
    else:
        try:
            value = int(ipaddress.IPv6Address(addr))
        except ValueError:
            return None
        width, version = 128, 6
    if slash:
        if not plen_text.isdigit() or int(plen_text) > width:
            return None
        plen = int(plen_text)
    else:
        plen = width
    mask = ((1 << plen) - 1) << (width - plen)
    return version, value & mask, plen, value & ~mask != 0
