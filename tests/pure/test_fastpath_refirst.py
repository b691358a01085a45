"""A refused flow's first DNS datagram read in compiled code without the Flow, the Packet and
the inspector's state (ips/fast/_fastpath.pyx `_inspect_refused_dns`) against the Python
engine, its definition: two engines, one with the compiled path and one without, fed the
same datagrams must give the same decisions with the same events (every field, and every
body as a sink builds it), the same application counters in the same order, the same
passive DNS (entries in order, counts) and the same flow table and engine counters.

Without the extension both engines are the Python engine and the comparison still runs; the
tests that need the compiled reading say so (`need_fast_path`)."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from ips.core.build import build_packet
from ips.core.packet import PROTO_TCP, PROTO_UDP
from ips.engine import Engine, Meta
from tests.pure.test_app_parsers import dns_query, dns_response, qname
from tests.pure.test_app_tls import chrome_like_extensions, client_hello_message, records
from tests.pure.test_fastpath_differential import (
    GATEWAY,
    META,
    Pair,
    capture_records,
    need_fast_path,
    plain,
    replay,
    shared_captures,
)

# Application parsing on, the default refuses: every first datagram below is refused, and
# DNS to or from the resolver's port is read by the inspector before its flow is dropped.
_REFUSING = "set app-layer on\nset default drop\naccept proto tcp to 10.20.2.0/24 port 80\n"


def _events_view(decision: Any) -> list[object]:
    """A decision's events in full: their fields and their bodies (built here, as a sink
    builds them: `plain` alone sees an unbuilt body's partial, not what it holds)."""
    events = getattr(decision, "effects", None) or ()
    return [(plain(event), getattr(event, "body", None)) for event in events]


class BodyPair(Pair):
    """Pair, comparing every event's body too (built on both sides)."""

    def handle(self, data: bytes, meta: Meta, now: float) -> None:
        self.packets += 1
        want = self.slow.handle(data, meta, now)
        got = self.fast.handle(data, meta, now)
        assert _events_view(got) == _events_view(want), (self.packets, data.hex())
        assert plain(got) == plain(want), (self.packets, data.hex())
        if self.next_tick is None:
            self.next_tick = now + 1.0
        elif now >= self.next_tick:
            self.tick(now)
            self.next_tick = now + 1.0

    @property
    def refused_hellos(self) -> int:
        """Refused first TLS ClientHello segments read in compiled code."""
        path = self.fast._fast_path
        return path.refused_hellos if path is not None else 0

    @property
    def refused_dns(self) -> int:
        """Refused first DNS datagrams read in compiled code."""
        path = self.fast._fast_path
        return path.refused_dns if path is not None else 0


def _answer(ident: int, name: str, addr: bytes, ttl: int) -> bytes:
    head = struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + qname(name)
    head += struct.pack("!HH", 1, 1)
    return head + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + addr


def _queries(count: int) -> bytes:
    """A query with several questions (one event each)."""
    body = b"".join(qname(f"n{i}.example.org") + struct.pack("!HH", 1, 1) for i in range(count))
    return struct.pack("!HHHHHH", 0x4242, 0x0100, count, 0, 0, 0) + body


def _mutated(rng: random.Random, payload: bytes) -> bytes:
    """The payload truncated or with a byte flipped (most still detected as DNS)."""
    if rng.random() < 0.5:
        return payload[: rng.randrange(17, len(payload) + 1)]
    data = bytearray(payload)
    at = rng.randrange(12, len(data))
    data[at] ^= 1 << rng.randrange(8)
    return bytes(data)


_HOSTS4 = ["10.20.1.10", "10.20.1.11", "10.20.1.12"]
_SERVERS4 = ["10.20.2.53", "10.20.2.54", "192.0.2.1", "192.0.2.7"]
_HOSTS6 = ["fd00:20::10", "fd00:20::11"]
_SERVERS6 = ["fd00:20:2::53"]


def dns_traffic(seed: int, count: int = 600) -> list[tuple[float, bytes]]:
    """Refused first datagrams: queries (one question or several), answers (which teach
    passive DNS the servers' addresses, so that later flows to them are named), malformed
    messages (truncated, bit-flipped), datagrams that are not DNS, IPv4 and IPv6, ports
    reused (the next datagram of a refused flow is again a first)."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    now = 100.0
    for i in range(count):
        now += rng.expovariate(100)
        six = rng.random() < 0.2
        host = rng.choice(_HOSTS6 if six else _HOSTS4)
        server = rng.choice(_SERVERS6 if six else _SERVERS4)
        sport = 30000 + rng.randrange(40)
        roll = rng.random()
        if roll < 0.3:
            payload = dns_query(f"h{rng.randrange(9)}.example.com", ident=i & 0xFFFF)
        elif roll < 0.4:
            payload = _queries(rng.randrange(1, 4))
        elif roll < 0.65:
            # an answer to the host: teaches the server's (IPv4) address now and then
            addr = bytes(int(part) for part in rng.choice(_SERVERS4).split("."))
            payload = _answer(i & 0xFFFF, "srv.example.net", addr, rng.choice([0, 1, 300]))
            packet = build_packet(PROTO_UDP, server, host, 53, sport, payload=payload)
            out.append((now, packet))
            continue
        elif roll < 0.75:
            payload = dns_response()
        elif roll < 0.95:
            payload = _mutated(rng, rng.choice([dns_query(), dns_response(), _queries(2)]))
        else:
            payload = b"not dns at all, just bytes"
        out.append((now, build_packet(PROTO_UDP, host, server, sport, 53, payload=payload)))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_refused_dns_datagrams_decide_the_same(seed: int) -> None:
    """Refused first DNS datagrams (queries, answers, malformed, not DNS) leave what the
    Python engine leaves: decisions, events and their bodies, app counters, passive DNS,
    the flow table, compared after every tick and at the end."""
    pair = BodyPair(_REFUSING)
    now = 0.0
    for now, data in dns_traffic(seed):
        pair.handle(data, META, now)
    pair.finish(now + 1.0)
    need_fast_path()
    assert pair.refused_dns > 200, pair.refused_dns


def test_the_shared_captures_read_refused_dns_the_same(pcaps_dir: Any) -> None:
    """Every shared capture through both engines with the gateway policy (parsing on),
    events' bodies included, compared in full at the end of each capture."""
    pair = BodyPair(GATEWAY, "gateway.rules")
    last = 0.0
    for path in shared_captures():
        last = max(last, replay(pair, capture_records(path)))
        pair.check_state()
    pair.finish(last)
    need_fast_path()
    assert pair.refused_dns > 0


def test_passive_dns_names_the_responder_of_a_refused_query() -> None:
    """An answer teaches passive DNS a server's address; a refused query to that server
    afterwards carries its name (dst_name) on its event, as the Python inspector's
    `_start` puts it there, and the entry's order moves as name_of moves it."""
    pair = BodyPair(_REFUSING)
    teach = _answer(7, "resolver.example.net", bytes((192, 0, 2, 7)), 300)
    pair.handle(build_packet(PROTO_UDP, "192.0.2.7", "10.20.1.10", 53, 40000, payload=teach),
                META, 10.0)  # fmt: skip
    other = _answer(8, "other.example.net", bytes((192, 0, 2, 1)), 300)
    pair.handle(build_packet(PROTO_UDP, "192.0.2.1", "10.20.1.10", 53, 40001, payload=other),
                META, 10.1)  # fmt: skip
    query = build_packet(PROTO_UDP, "10.20.1.10", "192.0.2.7", 40002, 53, payload=dns_query())
    before = pair.refused_dns
    got = pair.fast.handle(query, META, 10.2)
    want = pair.slow.handle(query, META, 10.2)
    assert _events_view(got) == _events_view(want)
    assert [event.dst_name for event in got.effects] == ["resolver.example.net"]
    pair.check_state()
    need_fast_path()
    assert pair.refused_dns == before + 1  # (the query read the compiled way)


def test_the_compiled_reading_can_be_turned_off() -> None:
    """With refused_dns_on false the refused first datagram goes through the inspector
    itself (`_inspect_refused_first`) and nothing is read the new way."""
    need_fast_path()
    engine = Engine(BodyPair(_REFUSING).fast.policy)
    assert engine._fast_path is not None
    engine._fast_path.refused_dns_on = False
    query = build_packet(PROTO_UDP, "10.20.1.10", "192.0.2.7", 40002, 53, payload=dns_query())
    decision = engine.handle(query, META, 1.0)
    assert engine._fast_path.refused_dns == 0
    assert len(decision.effects) == 1


ACK, PSH_ACK, FIN_ACK, SYN, RST = 0x10, 0x18, 0x11, 0x02, 0x04


def _hello_payload(rng: random.Random) -> bytes:
    """A ClientHello's records: whole (one record or several), truncated (still arriving),
    bit-flipped (malformed or not), without extensions, or a ServerHello-looking record."""
    message = client_hello_message(
        None if rng.random() < 0.1 else chrome_like_extensions(f"s{rng.randrange(5)}.example.com")
    )
    data = records(message, size=rng.choice([1 << 14, 1 << 14, 100, 37]))
    roll = rng.random()
    if roll < 0.2:
        return data[: rng.randrange(6, len(data))]
    if roll < 0.45:
        flipped = bytearray(data)
        at = rng.randrange(6, len(flipped))
        flipped[at] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    return data


def tls_traffic(seed: int, count: int = 400) -> list[tuple[float, bytes]]:
    """Refused first TCP segments carrying a ClientHello (whole, cut, malformed), now and then
    with FIN, RST or SYN (the inspector's own), to refused ports, IPv4 and IPv6."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    now = 100.0
    for _ in range(count):
        now += rng.expovariate(100)
        six = rng.random() < 0.2
        host = rng.choice(_HOSTS6 if six else _HOSTS4)
        server = rng.choice(_SERVERS6 if six else _SERVERS4)
        flags = rng.choice([PSH_ACK] * 8 + [ACK, FIN_ACK, RST, SYN])
        packet = build_packet(
            PROTO_TCP, host, server, 30000 + rng.randrange(40), rng.choice([443, 8443]),
            flags=flags, payload=_hello_payload(rng), seq=rng.randrange(1 << 32),
        )  # fmt: skip
        out.append((now, packet))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_refused_client_hellos_decide_the_same(seed: int) -> None:
    """Refused first segments that start a TLS stream with a ClientHello (parsed, cut,
    malformed) leave what the Python engine leaves: decisions, app counters (the protocol,
    the malformed reasons, the bytes released, the tls event owed and dropped), passive
    DNS, the flow table and the reassembler."""
    pair = BodyPair(_REFUSING)
    now = 0.0
    for now, data in tls_traffic(seed):
        pair.handle(data, META, now)
    pair.finish(now + 1.0)
    need_fast_path()
    assert pair.refused_hellos > 200, pair.refused_hellos
    app = pair.fast.stats.app
    assert app.events["tls"] > 50 and sum(app.malformed.values()) > 5, app


_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\nGET /b HTTP/1.1\r\nHost: x:80\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: example.org\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST /form HTTP/1.1\r\nHost: example.org\r\nContent-Length: 50\r\n\r\nabc",
    b"HEAD /x HTTP/1.0\n\n",
    b"GET /unfinished HTTP/1.1\r\nHost: exa",
    b"GET  HTTP/1.1\r\n\r\n",
    b"PUT /p HTTP/9\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nBad header line\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
]


def http_traffic(seed: int, count: int = 400) -> list[tuple[float, bytes]]:
    """Refused first TCP segments that start an HTTP stream: requests (one or several,
    bodies whole or cut, headers cut), malformed request lines and headers, a response
    (read as requests), bit-flipped, now and then with FIN, RST or SYN."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    now = 100.0
    for _ in range(count):
        now += rng.expovariate(100)
        six = rng.random() < 0.2
        host = rng.choice(_HOSTS6 if six else _HOSTS4)
        server = rng.choice(_SERVERS6 if six else _SERVERS4)
        payload = rng.choice(_REQUESTS)
        if rng.random() < 0.3:
            flipped = bytearray(payload)
            at = rng.randrange(4, len(flipped))
            flipped[at] ^= 1 << rng.randrange(8)
            payload = bytes(flipped)
        flags = rng.choice([PSH_ACK] * 8 + [ACK, FIN_ACK, RST, SYN])
        packet = build_packet(
            PROTO_TCP, host, server, 30000 + rng.randrange(40), rng.choice([8080, 81]),
            flags=flags, payload=payload, seq=rng.randrange(1 << 32),
        )  # fmt: skip
        out.append((now, packet))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_refused_http_requests_decide_the_same(seed: int) -> None:
    """Refused first segments that start an HTTP stream leave what the Python engine
    leaves: decisions, app counters (the protocol, malformed reasons, the bytes released,
    the http events owed and dropped), passive DNS, the flow table and the reassembler."""
    pair = BodyPair(_REFUSING)
    now = 0.0
    for now, data in http_traffic(seed):
        pair.handle(data, META, now)
    pair.finish(now + 1.0)
    need_fast_path()
    path = pair.fast._fast_path
    assert path is not None and path.refused_requests > 200, path.refused_requests
    app = pair.fast.stats.app
    assert app.events["http"] > 100 and sum(app.malformed.values()) > 20, app


_SCANNED = """\
set app-layer on
set default drop
detect portscan ports 15 within 60s alert
detect sweep hosts 10 within 60s alert
"""


def udp_probe_traffic(seed: int, count: int = 900) -> list[tuple[float, bytes]]:
    """Refused first UDP datagrams to many ports and hosts (the scans file each as a probe,
    holding its flow): DNS queries and answers (some malformed), datagrams that are not
    DNS, empty ones; now and then the scanned host answers (a probe's answer)."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    now = 100.0
    for i in range(count):
        now += rng.expovariate(200)
        scanner = rng.choice(_HOSTS4)
        target = f"10.20.{rng.randrange(3, 6)}.{rng.randrange(1, 30)}"
        sport, dport = 20000 + rng.randrange(30), rng.randrange(1, 2000)
        roll = rng.random()
        if roll < 0.35:
            payload = dns_query(f"p{rng.randrange(20)}.example.com", ident=i & 0xFFFF)
        elif roll < 0.45:
            payload = _mutated(rng, dns_response())
        elif roll < 0.55:
            payload = _answer(i & 0xFFFF, "srv.example.net", bytes((10, 20, 3, 7)), 300)
        elif roll < 0.85:
            payload = b"probe" * rng.randrange(1, 4)
        else:
            payload = b""
        out.append((now, build_packet(PROTO_UDP, scanner, target, sport, dport, payload=payload)))
        if rng.random() < 0.05:
            answer = build_packet(PROTO_UDP, target, scanner, dport, sport, payload=b"r")
            out.append((now + 1e-4, answer))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_udp_probes_keep_the_flow_the_inspector_left(seed: int) -> None:
    """A refused first UDP datagram that a scan files as a probe (DNS read here, not DNS,
    empty) is filed in compiled code with the flow the Python inspector leaves (its
    application fields, protocol and responder's name): every probe's flow compared in
    full, with the decisions, events and the whole state."""
    from tests.pure.test_fastpath_syn import SynPair, full_state

    pair = SynPair(_SCANNED, every=25)
    now = 0.0
    for now, data in udp_probe_traffic(seed):
        pair.handle(data, META, now)
    pair.check_state()
    pair.finish(now + 1.0)
    need_fast_path()
    path = pair.fast._fast_path
    assert path is not None and path.refused_dns > 100, path.refused_dns
    probes = full_state(pair.fast)
    assert "dns" in repr(probes) and "unknown" in repr(probes)
    assert path.probes_filed > 300, path.probes_filed
