"""The site file: names for the operator's own networks, consulted before the databases.

One network a line, a name in double quotes, and optionally the country, AS number and
organisation to report for it (a lab, a branch behind NAT, a provider's block the databases
get wrong):

    # comments run to the end of the line
    10.10.0.0/16      = "HQ"
    10.20.0.0/16      = "Branch"  country DE  asn 64512  org "Branch office"
    2001:db8:10::/48  = "HQ v6"   country FR

The most specific network wins. Every problem of a file is reported at once, each as
`file:line: message`; a file with any problem is refused whole (SiteFileError).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass

__all__ = ["SiteEntry", "SiteFileError", "SiteMap", "load_site_file", "parse_site_text"]

_LINE = re.compile(r'^(?P<net>[^\s=]+)\s*=\s*"(?P<name>[^"]*)"(?P<rest>.*)$')
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_MAX_NAME = 64


@dataclass(frozen=True, slots=True)
class SiteEntry:
    network: str  # as normalised by ipaddress: "10.10.0.0/16"
    name: str
    country: str | None = None
    asn: int | None = None
    org: str | None = None


class SiteFileError(ValueError):
    """The site file has problems; `problems` holds each as `file:line: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class SiteMap:
    """Networks to site entries: per family and prefix length, a dict keyed by the network's
    leading bits; a lookup tries only the prefix lengths the file uses, longest first."""

    def __init__(self, entries: list[SiteEntry]) -> None:
        self.entries = entries
        tables: dict[int, dict[int, dict[int, SiteEntry]]] = {4: {}, 6: {}}
        for entry in entries:
            net = ipaddress.ip_network(entry.network)
            width = net.max_prefixlen
            table = tables[net.version].setdefault(net.prefixlen, {})
            table[int(net.network_address) >> (width - net.prefixlen)] = entry
        # Per family: (bits to shift an address by, table), the longest prefix first.
        self._search: dict[int, list[tuple[int, dict[int, SiteEntry]]]] = {
            version: [
                (
                    (32 if version == 4 else 128) - length,
                    tables[version][length],
                )
                for length in sorted(tables[version], reverse=True)
            ]
            for version in (4, 6)
        }

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, addr: bytes) -> SiteEntry | None:
        """The entry of the most specific network holding ADDR (4 or 16 packed bytes)."""
        value = int.from_bytes(addr, "big")
        for shift, table in self._search[4 if len(addr) == 4 else 6]:
            entry = table.get(value >> shift)
            if entry is not None:
                return entry
        return None


def _options(rest: str) -> tuple[dict[str, str], str | None]:
    """The key/value options after the name, or an error message."""
    try:
        words = shlex.split(rest, comments=True)
    except ValueError as exc:
        return {}, f"cannot read the options: {exc}"
    if len(words) % 2:
        return {}, f"option {words[-1]!r} has no value"
    found: dict[str, str] = {}
    for key, value in zip(words[::2], words[1::2], strict=True):
        if key not in ("country", "asn", "org"):
            return {}, f"unknown option {key!r} (expected country, asn or org)"
        if key in found:
            return {}, f"option {key!r} given twice"
        found[key] = value
    return found, None


def _entry(net_text: str, name: str, rest: str) -> SiteEntry | str:
    """One line's entry, or the message saying what is wrong with it."""
    try:
        net = ipaddress.ip_network(net_text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(net_text, strict=False)
        except ValueError:
            return f"{net_text!r} is not a network (expected e.g. 10.10.0.0/16)"
        return f"{net_text} has host bits set; did you mean {loose}?"
    if not name or len(name) > _MAX_NAME or not name.isprintable():
        return f"the name must be 1 to {_MAX_NAME} printable characters"
    options, problem = _options(rest)
    if problem:
        return problem
    country = options.get("country")
    if country is not None and not _COUNTRY.match(country):
        return f"country {country!r} is not a two-letter code in capitals (e.g. DE)"
    asn: int | None = None
    if "asn" in options:
        text = options["asn"].removeprefix("AS")
        if not text.isdigit() or not 0 <= int(text) < 1 << 32:
            return f"asn {options['asn']!r} is not an AS number (0 to 4294967295)"
        asn = int(text)
    return SiteEntry(str(net), name, country, asn, options.get("org"))


def parse_site_text(text: str, path: str = "<site>") -> SiteMap:
    """A SiteMap from the text of a site file; SiteFileError lists every problem."""
    problems: list[str] = []
    entries: list[SiteEntry] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            problems.append(f'{path}:{number}: expected NETWORK = "name" [country CC] [asn N]')
            continue
        result = _entry(match["net"], match["name"], match["rest"])
        if isinstance(result, str):
            problems.append(f"{path}:{number}: {result}")
            continue
        if result.network in seen:
            problems.append(
                f"{path}:{number}: {result.network} is already named on line {seen[result.network]}"
            )
            continue
        seen[result.network] = number
        entries.append(result)
    if problems:
        raise SiteFileError(problems)
    return SiteMap(entries)


def load_site_file(path: str) -> SiteMap:
    """The site file at PATH; OSError when it cannot be read, SiteFileError when it is wrong."""
    with open(path, encoding="utf-8") as fh:
        return parse_site_text(fh.read(), path)
