"""Service names for display, from IANA's registry shipped as package data."""

from __future__ import annotations

import pytest

from ips.geo.services import registry_size, service_name


@pytest.mark.parametrize(
    ("port", "proto", "name"),
    [
        (5432, "tcp", "postgresql"),
        (5432, 6, "postgresql"),
        (53, "udp", "domain"),
        (53, 17, "domain"),
        (80, "tcp", "http"),
        (443, "TCP", "https"),
        (22, "tcp", "ssh"),
        (3306, "tcp", "mysql"),
        (6379, "tcp", "redis"),
        (123, "udp", "ntp"),
        (27017, "tcp", "mongodb"),
        (5353, "udp", "mdns"),
        (2905, "sctp", "m3ua"),
    ],
)
def test_well_known_ports(port: int, proto: int | str, name: str) -> None:
    assert service_name(port, proto) == name


def test_unknown_ports_and_transports() -> None:
    assert service_name(4, "tcp") is None  # Unassigned
    assert service_name(0, "tcp") is None  # Reserved
    assert service_name(60000, "tcp") is None
    assert service_name(80, "ddp") is None
    assert service_name(80, 1) is None  # ICMP has no ports


def test_the_registry_is_the_full_one() -> None:
    names, pairs = registry_size()
    assert names > 6000
    assert pairs > 11000
