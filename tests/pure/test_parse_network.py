"""The hand-written address parser of the resolver agrees with the ipaddress module."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ips.policy.resolve import parse_network


@given(st.ip_addresses(), st.integers(0, 128), st.booleans())
def test_agrees_with_ipaddress(addr: ipaddress._BaseAddress, plen: int, with_len: bool) -> None:
    width = 32 if addr.version == 4 else 128
    plen = plen % (width + 1)
    text = f"{addr}/{plen}" if with_len else str(addr)
    net = ipaddress.ip_network(text, strict=False)
    version, value, got_plen, host_bits = parse_network(text)  # type: ignore[misc]
    assert (version, value, got_plen) == (net.version, int(net.network_address), net.prefixlen)
    assert host_bits == (int(addr) != int(net.network_address))


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0",
        "10.0.0.256",
        "10.0.0.1/33",
        "010.0.0.1",
        "1.2.3.4/",
        "1.2.3.4/x",
        "a.b.c.d",
        "::1/129",
        "2001:db8:::1",
        "1.2.3.4.5",
        "",
        "-1.2.3.4",
    ],
)
def test_rejects_what_ipaddress_rejects(text: str) -> None:
    assert parse_network(text) is None
    with pytest.raises(ValueError):
        ipaddress.ip_network(text, strict=False)
