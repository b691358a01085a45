"""Reverse DNS for display (issue 22, item 5): asynchronous, cached with a TTL, bounded in
entries, in queries in flight and per second, shown only where passive DNS has no name.
With an injected resolver and clock; no query leaves the process."""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from ips.core.build import build_packet
from ips.engine import Engine
from ips.geo.enrich import Enricher, open_enricher
from ips.geo.rdns import ReverseDns, _clean
from ips.policy.resolve import load_policy_text
from ips.views.flows import format_flows, select_flows


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Resolver:
    def __init__(self, names: dict[str, str | None]) -> None:
        self.names = names
        self.asked: list[str] = []

    def __call__(self, addr: bytes) -> str | None:
        text = str(ipaddress.ip_address(addr))
        self.asked.append(text)
        name = self.names.get(text)
        if name == "RAISE":
            raise OSError("resolver down")
        return name


def test_a_name_is_asked_in_the_background_then_served_from_the_cache() -> None:
    clock, resolver = Clock(), Resolver({"192.0.2.1": "Host.Example.NET."})
    rdns = ReverseDns(resolver, ttl=60, negative_ttl=10, clock=clock)
    a = packed("192.0.2.1")
    assert rdns.name(a) is None  # never waits: queued
    assert rdns.name(a) is None and resolver.asked == []  # asked once, not twice
    assert rdns.run_pending() == 1
    assert rdns.name(a) == "host.example.net"  # lower-case, no trailing dot
    assert rdns.name(a) == "host.example.net" and resolver.asked == ["192.0.2.1"]
    # Past the TTL the stale name is still shown while it is asked again.
    clock.now += 61
    resolver.names["192.0.2.1"] = "new.example.net"
    assert rdns.name(a) == "host.example.net"
    rdns.run_pending()
    assert rdns.name(a) == "new.example.net"
    assert rdns.snapshot()["answered"] == 2


def test_no_name_and_failures_are_cached_for_the_negative_ttl() -> None:
    clock = Clock()
    resolver = Resolver({"192.0.2.2": None, "192.0.2.3": "RAISE", "192.0.2.4": "192.0.2.4"})
    rdns = ReverseDns(resolver, ttl=60, negative_ttl=10, clock=clock)
    for text in ("192.0.2.2", "192.0.2.3", "192.0.2.4"):
        rdns.name(packed(text))
    rdns.run_pending()
    for text in ("192.0.2.2", "192.0.2.3", "192.0.2.4"):  # an address back is no name
        assert rdns.name(packed(text)) is None
    assert len(resolver.asked) == 3 and rdns.snapshot()["no_name"] == 3
    clock.now += 11
    rdns.name(packed("192.0.2.2"))
    rdns.run_pending()
    assert len(resolver.asked) == 4


def test_entries_in_flight_and_rate_are_bounded() -> None:
    clock = Clock()
    resolver = Resolver({})
    rdns = ReverseDns(resolver, max_entries=5, max_in_flight=3, rate=100, clock=clock)
    addrs = [ipaddress.IPv4Address(0xC0000200 + i).packed for i in range(10)]
    for a in addrs:
        rdns.name(a)
    assert rdns.snapshot()["in_flight"] == 3 and rdns.stats.queue_full == 7
    rdns.run_pending()
    for a in addrs:
        rdns.name(a)
        rdns.run_pending()
    snap = rdns.snapshot()
    assert snap["entries"] == 5 and snap["evicted"] == 5
    # The rate: a burst of `rate`, then `rate` per second.
    slow = ReverseDns(resolver, rate=2, clock=clock)
    for a in addrs[:5]:
        slow.name(a)
    assert slow.snapshot()["in_flight"] == 2 and slow.stats.rate_limited == 3
    slow.run_pending()
    clock.now += 0.5  # one more token
    for a in addrs[2:5]:
        slow.name(a)
    assert slow.snapshot()["in_flight"] == 1


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        ("a.example", "a.example"),
        ("A.EXAMPLE.", "a.example"),
        ("", None),
        ("x" * 254, None),
        ("bad name", None),
        ("bad\x00name", None),
        ("10.0.0.1", None),
        ("::1", None),
        (None, None),
        (42, None),
    ],
)
def test_what_a_resolver_says_is_checked(answer: object, shown: str | None) -> None:
    assert _clean(answer) == shown


def test_the_resolver_threads_answer_without_the_caller_waiting() -> None:
    release = threading.Event()

    def slow(addr: bytes) -> str | None:
        release.wait(5)
        return "slow.example"

    rdns = ReverseDns(slow, threads=2).start()
    try:
        start = time.monotonic()
        assert rdns.name(packed("192.0.2.9")) is None
        assert time.monotonic() - start < 0.5  # the caller never waits for the resolver
        release.set()
        deadline = time.monotonic() + 5
        while rdns.name(packed("192.0.2.9")) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rdns.name(packed("192.0.2.9")) == "slow.example"
    finally:
        rdns.close()


def test_flows_show_the_reverse_name_only_where_passive_dns_has_none(tmp_path: object) -> None:
    resolver = Resolver({"10.0.0.8": "db.corp.example", "10.0.0.9": "www-ptr.example"})
    rdns = ReverseDns(resolver)
    enrich = open_enricher(str(tmp_path), rdns=rdns)  # no geo data: scopes only
    engine = Engine(load_policy_text("set default accept\n"))
    for i, dst in enumerate(("10.0.0.8", "10.0.0.9", "127.0.0.2")):
        engine.handle(build_packet(6, "10.0.0.1", dst, 40000 + i, 5432, flags=2), now=100.0)
    flows = engine.flows.flows()
    for f in flows:
        if f.dport == 5432 and ipaddress.ip_address(f.dst) == ipaddress.ip_address("10.0.0.9"):
            f.dst_name = "www.example"  # passive DNS named it: no PTR query
    select_flows(flows, 200.0, enrich=enrich)  # asks in the background
    rdns.run_pending()
    assert resolver.asked == ["10.0.0.8"]  # not the named one, not loopback
    reply = select_flows(flows, 200.0, enrich=enrich)
    rows = {r["dst"]: r for r in reply["flows"]}
    assert rows["10.0.0.8"]["dst_rdns"] == "db.corp.example"
    assert rows["10.0.0.9"]["dst_rdns"] is None and rows["10.0.0.9"]["dst_name"] == "www.example"
    table = format_flows(reply["flows"], reply["total"])
    assert next(x for x in table.splitlines() if "10.0.0.8:5432" in x).endswith("db.corp.example")
    dst = select_flows(flows, 200.0, group="dst", enrich=enrich)["groups"]
    assert {g["key"]: g["name"] for g in dst}["10.0.0.8"] == "db.corp.example"
    # EVE's flow record has it too (ipsctl.dst_rdns).
    fields = enrich.fields(6, packed("10.0.0.1"), packed("10.0.0.8"), 40000, 5432)
    assert fields["dst_rdns"] == "db.corp.example"
    assert "dst_rdns" not in enrich.fields(6, packed("10.0.0.1"), packed("10.0.0.8"), 1, 2,
                                           named=True)  # fmt: skip


def test_reverse_dns_is_off_unless_asked(tmp_path: object) -> None:
    from ips.daemon.worker import PeerFields

    policy = load_policy_text("set default accept\n")
    peers = PeerFields()
    assert peers.load(policy).rdns is None
    on = load_policy_text("set reverse-dns on\nset default accept\n")
    enrich: Enricher = peers.load(on)
    assert enrich.rdns is not None and peers.status()["reverse_dns"]["entries"] == 0
    kept = enrich.rdns
    assert peers.load(on).rdns is kept  # its cache survives a policy load
    assert peers.load(policy).rdns is None
    forced = PeerFields(reverse_dns=True)  # ipsctl run --reverse-dns
    assert forced.load(policy).rdns is not None
    forced.close()
    peers.close()
