"""Reputation lists: the text of a `table NAME file "…"` as networks. No I/O.

One reader takes the formats such lists are published in, line by line:

* a plain list and FireHOL's netsets (`firehol_level1.netset`): one address or network a
  line, `#` comments;
* Spamhaus DROP/EDROP as text (`drop.txt`): `;` comments, and a network followed by
  ` ; SBL123456` (the part after `;` is a comment);
* Spamhaus DROP as JSON lines (`drop_v4.json`, `drop_v6.json`): `{"cidr": "…", "sblid": …}`
  a line, and a last `{"type": "metadata", …}` line, which holds no network.

A bare address is a host network (/32, /128); host bits after a prefix are cleared, as
ipaddress' strict=False does. A bad line is reported with its line and column; what that
does (the whole file refused, or the line skipped) is the table's `on-error`, decided by the
caller (values.py), which also refuses a file with no network unless told `allow-empty`.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from ips.policy.resolve.netparse import parse_network


@dataclass(slots=True)
class ParsedList:
    nets4: tuple[tuple[int, int], ...] = ()
    nets6: tuple[tuple[int, int], ...] = ()
    # (line, column, end column, message) of each bad line, 1-based
    problems: list[tuple[int, int, int, str]] = field(default_factory=list)


def _json_network(entry: str) -> tuple[str | None, str | None]:
    """(the network of a JSON line, None) or (None, what is wrong); (None, None) when the
    line holds no network (the metadata line)."""
    try:
        obj = json.loads(entry)
    except json.JSONDecodeError as exc:
        return None, f"not a JSON object ({exc.msg})"
    if not isinstance(obj, dict):
        return None, "a JSON line of a DROP list is an object"
    cidr = obj.get("cidr")
    if cidr is None:
        return None, None if "type" in obj else 'a JSON line without "cidr"'
    if not isinstance(cidr, str):
        return None, '"cidr" is not a string'
    return cidr, None


def parse_list_text(text: str) -> ParsedList:
    nets4: list[tuple[int, int]] = []
    nets6: list[tuple[int, int]] = []
    problems: list[tuple[int, int, int, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        col = len(line) - len(line.lstrip()) + 1
        if stripped.startswith("{"):
            entry, problem = _json_network(stripped)
            if problem is not None:
                problems.append((lineno, col, col + len(stripped), problem))
            if entry is None:
                continue
        else:
            entry = line.split("#", 1)[0].split(";", 1)[0].strip()
            if not entry:
                continue
        # The common a.b.c.d[/n] by hand (a list may have a million lines), the rest (IPv6,
        # a netmask instead of a length) by the ipaddress module.
        parsed = parse_network(entry) if ":" not in entry else None
        if parsed is not None:
            nets4.append((parsed[1], parsed[2]))
            continue
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            problems.append(
                (lineno, col, col + len(entry), f"invalid address '{entry}' in table file")
            )
            continue
        (nets4 if net.version == 4 else nets6).append((int(net.network_address), net.prefixlen))
    return ParsedList(tuple(nets4), tuple(nets6), problems)
