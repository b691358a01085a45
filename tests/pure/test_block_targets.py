"""What `ipsctl blocks add` may block (issue 19, item 9): one check (ips.core.addr), used by the
CLI and by the daemon (another client may speak the protocol), and messages that say exactly
what was done."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ips.core.addr import block_target, block_ttl
from ips.daemon import supervisor
from ips.daemon.socket_server import ControlServer
from ips.daemon.stats import Counters

LAN_BROADCAST = "10.10.1.255"


@pytest.mark.parametrize(
    ("text", "blocked"),
    [
        ("10.10.1.20", "10.10.1.20"),
        (" 10.10.1.20 ", "10.10.1.20"),
        ("::ffff:10.10.1.20", "10.10.1.20"),
        ("::FFFF:0a0a:0114", "10.10.1.20"),
        ("fd00:10:1::66", "fd00:10:1::66"),
        ("FD00:10:1::66", "fd00:10:1::66"),
        ("fe80::1", "fe80::1"),
        ("10.10.1.254", "10.10.1.254"),
    ],
)
def test_addresses_that_can_be_a_source_are_blocked_as_their_family_writes_them(
    text: str, blocked: str
) -> None:
    assert block_target(text, [LAN_BROADCAST]) == blocked


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0.0.0.0", "the unspecified address"),
        ("::", "the unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("255.255.255.255", "the broadcast address"),
        ("::ffff:255.255.255.255", "the broadcast address"),
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        (LAN_BROADCAST, "the broadcast address of one of this host's networks"),
        ("fe80::1%lan0", "an address with a zone (%lan0) cannot be blocked"),
        ("10.10.1.300", "not an IP address: '10.10.1.300'"),
        ("", "not an IP address"),
    ],
)
def test_addresses_that_are_never_a_source_are_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        block_target(text, [LAN_BROADCAST])
    assert why in str(caught.value)


def test_ttls_are_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert block_ttl(None) is None
    assert block_ttl(1) == 1 and block_ttl(1.5) == 2 and block_ttl(600.0) == 600
    for bad in (0.0001, 0.5, 0, -3, float("nan"), 366 * 86400):
        with pytest.raises(ValueError):
            block_ttl(bad)
    with pytest.raises(ValueError, match="whole seconds"):
        block_ttl(0.0001)


def test_subnet_broadcasts_of_this_hosts_networks() -> None:
    found = supervisor.subnet_broadcasts(
        [
            ("10.10.1.1", 24, None),
            ("10.0.0.1", 32, None),
            ("10.1.1.1", 31, None),
            ("192.168.5.1", 24, "192.168.5.255"),
            ("172.16.0.1", 30, None),
        ]
    )
    assert found == ["10.10.1.255", "192.168.5.255", "172.16.0.3"]


class FakeDiversion:
    def __init__(self) -> None:
        self.blocked: list[tuple[str, float | None]] = []

    def block(self, addr: str, ttl: float | None, comment: str) -> None:
        self.blocked.append((addr, ttl))


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> supervisor.Daemon:
    """The supervisor's blocks_add, with a kernel and workers that only take notes."""
    monkeypatch.setattr(supervisor, "connected_broadcasts", lambda: [LAN_BROADCAST])
    d = object.__new__(supervisor.Daemon)
    d.diversion = FakeDiversion()  # type: ignore[assignment]
    d.never_block = ("10.10.1.1/32",)
    d.policy = None
    d.counters = Counters()
    d._tell_worker = lambda msg: {"ok": True}  # type: ignore[method-assign]
    return d


def test_the_daemon_refuses_too_whoever_asks(daemon: supervisor.Daemon) -> None:
    for addr, ttl in (
        ("0.0.0.0", 60),
        ("fe80::1%lan0", 60),
        (LAN_BROADCAST, 60),
        ("10.10.1.20", 0.0001),
        ("ff02::1", None),
    ):
        reply = daemon.blocks_add(addr, ttl, None)
        assert reply["ok"] is False and reply["error"], (addr, reply)
    reply = daemon.blocks_add("::ffff:10.10.1.20", 1.5, None)
    assert (reply["ok"], reply["addr"], reply["ttl"]) == (True, "10.10.1.20", 2)
    assert daemon.diversion.blocked == [("10.10.1.20", 2)]  # type: ignore[attr-defined]


@pytest.fixture
def served(daemon: supervisor.Daemon, tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "ctl.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    server = ControlServer(listener, daemon._dispatch)
    server.start()
    yield path
    server.close()


def blocks_add(path: str, *args: str) -> Any:
    from ips.cli import main

    return CliRunner().invoke(main, ["blocks", "add", *args, "--socket", path])


def test_the_cli_says_exactly_what_was_done(served: str, daemon: supervisor.Daemon) -> None:
    out = blocks_add(served, "::ffff:10.10.1.20", "--ttl", "1.5s")
    assert out.exit_code == 0, out.output
    assert out.stdout == (
        "blocked 10.10.1.20 for 2s (::ffff:10.10.1.20 is the IPv4 address "
        "10.10.1.20; --ttl 1.5s rounded up to whole seconds, the kernel's "
        "unit)\n"
    )
    out = blocks_add(served, "10.10.1.21", "--ttl", "10m")
    assert out.stdout == "blocked 10.10.1.21 for 10m00s\n"


def test_the_cli_refuses_with_a_clear_message(served: str, daemon: supervisor.Daemon) -> None:
    out = blocks_add(served, "fe80::1%lan0")
    assert out.exit_code == 1
    assert out.stderr.strip() == (
        "ipsctl blocks add: fe80::1%lan0: an address with a zone (%lan0) cannot be blocked: the "
        "kernel's sets hold addresses without zones; block fe80::1 (on every interface) instead"
    )
    out = blocks_add(served, "0.0.0.0")
    assert out.exit_code == 1
    assert "0.0.0.0: the unspecified address, never a packet's source" in out.stderr
    out = blocks_add(served, "10.10.1.20", "--ttl", "0.0001s")
    assert out.exit_code == 2 and "less than 1 s" in out.stderr, out.output
    out = blocks_add(served, LAN_BROADCAST)  # only the daemon knows this host's networks
    assert out.exit_code == 1 and "broadcast address of one of this host's" in out.stderr
    assert daemon.diversion.blocked == []  # type: ignore[attr-defined]
