"""The compiled DNS parser (ips/fast/_dnsparse.pyx) against its definition, ips/app/dns.py's
`parse_message` and `parse_tcp_stream`: the same answer for every input, value for value
and type for type (DnsMessage, DnsQuestion, DnsRecord, DnsMx, DnsSoa, DnsSrv, str, bytes,
int), and the very same Malformed object when the message is malformed.

The inputs: every UDP and TCP payload of the shared captures (as the engine hands them: the
packet and its payload's offset), every frame whole, hypothesis-made messages (names with
and without compression, every decoded record type, addresses with runs of zero groups) and
their mutations (truncations, bit flips, pointers written anywhere, pointer loops, record
counts past the bound), at offsets and with end bounds.

The engine with the compiled path parses DNS with it (ips/fast/__init__.py `new_fast_path`);
tests/pure/test_fastpath_differential.py compares that engine with the reference engine,
which parses with ips/app/dns.py. Without the build these tests skip, or fail under CI=true
(unless IPSCTL_PURE=1 says the pure engine is meant)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fresh_python import hiding, run_fresh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ips import fast
from ips.app import dns
from ips.app.inspect import AppInspector, _Udp
from ips.app.passive_dns import PassiveDns
from ips.core.app_fields import AppFields
from ips.core.decode import decode_frame
from ips.core.events import AppEvent, PacketEvent
from ips.core.packet import PROTO_TCP, PROTO_UDP, Malformed, Packet
from ips.engine import Engine
from ips.io.pcap import CaptureError, read_capture
from ips.policy.resolve import load_policy_text
from tests.pure.test_app_parsers import dns_query, dns_response

ROOT = Path(__file__).resolve().parents[2]

ParseMessage = Callable[..., Any]
ParseStream = Callable[[bytes], Any]


def compiled() -> tuple[ParseMessage, ParseStream]:
    """The compiled parsers, or skip (fail under CI=true: the build is part of CI)."""
    got = fast.compiled_dns()
    if got is not None:
        return got.parse_message, got.parse_tcp_stream
    if fast.FORCED_PURE:
        pytest.skip("IPSCTL_PURE=1: the pure-Python engine alone")
    if os.environ.get("CI") == "true":
        pytest.fail("the compiled DNS parser (ips/fast/_dnsparse) is not built")
    pytest.skip("the compiled DNS parser is not built")


def shape(value: object) -> object:
    """A value with the type of every part spelled out, so that equal shapes mean equal
    values of the same types all the way down (a DnsMx is not a plain tuple, b"" not "")."""
    if isinstance(value, Malformed):
        return (Malformed, value.reason)
    if isinstance(value, tuple | list):
        return (type(value), tuple(shape(v) for v in value))
    return (type(value), value)


def same_message(data: bytes, off: int = 0, end: int = -1) -> object:
    """Both parsers on the same arguments: the same answer (returned for the callers' counts)."""
    parse, _stream = compiled()
    expected = dns.parse_message(data, off, end)
    got = parse(data, off, end)
    assert shape(got) == shape(expected), (data.hex(), off, end)
    if isinstance(expected, Malformed):
        assert got is expected  # the module's own constants, as dns.py returns them
    return expected


def same_stream(data: bytes) -> None:
    _parse, stream = compiled()
    expected = dns.parse_tcp_stream(data)
    got = stream(data)
    assert shape(got) == shape(expected), data.hex()
    for a, b in zip(got[0], expected[0], strict=True):
        if isinstance(b, Malformed):
            assert a is b


# ---- the shared captures --------------------------------------------------------------------


def test_every_payload_of_the_shared_captures(pcaps_dir: Path) -> None:
    messages = malformed = 0
    for path in sorted(pcaps_dir.iterdir()):
        if path.suffix not in (".pcap", ".pcapng"):
            continue
        try:
            records = list(read_capture(path))
        except CaptureError:
            continue
        for record in records:
            same_message(record.data)  # whatever a frame holds, whole
            pkt = decode_frame(record.data, record.linktype)
            if not isinstance(pkt, Packet) or pkt.payload_offset >= pkt.length:
                continue
            if pkt.proto == PROTO_UDP:
                got = same_message(pkt.data, pkt.payload_offset)
                if 53 in (pkt.sport, pkt.dport) or 5353 in (pkt.sport, pkt.dport):
                    messages += isinstance(got, dns.DnsMessage)
                    malformed += isinstance(got, Malformed)
            elif pkt.proto == PROTO_TCP:
                same_stream(pkt.data[pkt.payload_offset :])
    # The captures hold real DNS, some of it corrupt (zk_dns-dns-corrupt.pcap): the
    # comparison above was not vacuous.
    assert messages >= 100 and malformed >= 1, (messages, malformed)


# ---- made messages ----------------------------------------------------------------------------

LABEL_BYTES = st.one_of(
    st.binary(min_size=1, max_size=12),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20).map(str.encode),
    st.sampled_from([b"a.b", b"back\\slash", b"sp ace", b"\x00\xff", b"x" * 63, b"*"]),
)
NAMES = st.lists(LABEL_BYTES, max_size=6)


class Writer:
    """A DNS message being written, with name compression as a server would do it (a name's
    longest suffix already written becomes a pointer) when asked to."""

    def __init__(self) -> None:
        self.out = bytearray(12)
        self.suffixes: dict[tuple[bytes, ...], int] = {}

    def name(self, labels: list[bytes], compress: bool) -> bytes:
        """The name's wire bytes as they would sit at the end of the message so far."""
        wire = bytearray()
        at = len(self.out)
        for i in range(len(labels)):
            rest = tuple(labels[i:])
            where = self.suffixes.get(rest)
            if compress and where is not None and where < 0x4000:
                wire += struct.pack("!H", 0xC000 | where)
                return bytes(wire)
            self.suffixes.setdefault(rest, at + len(wire))
            wire += bytes([len(labels[i])]) + labels[i]
        return bytes(wire + b"\x00")


def _address6(draw: st.DrawFn) -> bytes:
    groups = draw(
        st.lists(
            st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xDB8, 0x2001, 0xABCD]), min_size=8, max_size=8
        )
    )
    if draw(st.booleans()):
        groups = [draw(st.integers(0, 0xFFFF)) for _ in range(8)]
    return struct.pack("!8H", *groups)


RECORD_TYPES = [1, 28, 5, 2, 12, 15, 16, 6, 33, 41, 99, 255]


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    w = Writer()
    compress = draw(st.booleans())
    questions = draw(st.integers(0, 3))
    sections = [draw(st.integers(0, 4)), draw(st.integers(0, 2)), draw(st.integers(0, 2))]
    for _ in range(questions):
        w.out += w.name(draw(NAMES), compress)
        w.out += struct.pack("!HH", draw(st.sampled_from(RECORD_TYPES)), 1)
    for _ in range(sum(sections)):
        w.out += w.name(draw(NAMES), compress)
        rtype = draw(st.sampled_from(RECORD_TYPES))
        fixed = len(w.out)
        w.out += bytes(10)  # type, class, ttl, rdlength: filled in once the data is written
        # The data is written in place, so that its names know their offsets.
        if rtype == 1:
            w.out += draw(st.binary(min_size=4, max_size=4))
        elif rtype == 28:
            w.out += _address6(draw)
        elif rtype in (5, 2, 12):
            w.out += w.name(draw(NAMES), compress)
        elif rtype == 15:
            w.out += struct.pack("!H", draw(st.integers(0, 0xFFFF)))
            w.out += w.name(draw(NAMES), compress)
        elif rtype == 16:
            for text in draw(st.lists(st.binary(max_size=30), max_size=3)):
                w.out += bytes([len(text)]) + text
        elif rtype == 6:
            w.out += w.name(draw(NAMES), compress)
            w.out += w.name(draw(NAMES), compress)
            w.out += struct.pack("!5I", *[draw(st.integers(0, 2**32 - 1)) for _ in range(5)])
        elif rtype == 33:
            w.out += struct.pack("!HHH", 1, 2, draw(st.integers(0, 0xFFFF)))
            w.out += w.name(draw(NAMES), compress)
        else:
            w.out += draw(st.binary(max_size=20))
        ttl = draw(st.sampled_from([0, 300, 2**31, 2**32 - 1]))
        rclass = draw(st.sampled_from([1, 3, 255]))
        rdlength = len(w.out) - fixed - 10
        w.out[fixed : fixed + 10] = struct.pack("!HHIH", rtype, rclass, ttl, rdlength)
    flags = draw(st.sampled_from([0x0100, 0x8180, 0x8183, 0x8580, 0x2800]))
    w.out[0:12] = struct.pack("!HHHHHH", draw(st.integers(0, 0xFFFF)), flags, questions, *sections)
    return bytes(w.out)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.one_of(messages(), st.sampled_from([dns_query(), dns_response()]))))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 5))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == 0:
            data = data[: draw(st.integers(min(12, len(data)), len(data)))]  # truncated
        elif kind == 1 and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))  # a bit flipped
        elif kind == 2 and len(data) >= 2:
            # a pointer written anywhere: backwards, forwards, at itself (a loop)
            target = draw(
                st.sampled_from([12, pos, max(0, pos - 1), pos + 2, draw(st.integers(0, 0x3FFF))])
            )
            data[pos : pos + 2] = struct.pack("!H", 0xC000 | (target & 0x3FFF))
        elif kind == 3 and len(data) >= 12:
            # a count changed: up to more records than the bound allows
            field = draw(st.integers(2, 5))
            data[2 * field : 2 * field + 2] = struct.pack(
                "!H", draw(st.sampled_from([0, 1, 7, 255, 1024, 1025, 0xFFFF]))
            )
        elif kind == 4 and data:
            data[pos] = draw(st.sampled_from([0x40, 0x80, 0x3F, 0xFF, 0x00, 0xC0]))  # label types
        else:
            data[pos:pos] = draw(st.binary(max_size=8))
    return bytes(data)


SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(messages())
def test_made_messages(data: bytes) -> None:
    got = same_message(data)
    assert isinstance(got, dns.DnsMessage | Malformed)


@SETTINGS
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    same_message(data)


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    same_message(data)
    same_stream(data)


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(messages(), mutated()),
    st.binary(max_size=20),
    st.binary(max_size=20),
    st.integers(-3, 3),
)
def test_at_an_offset_and_an_end(data: bytes, before: bytes, after: bytes, slack: int) -> None:
    # As the engine hands it: the packet and the payload's offset, sometimes with an end.
    whole = before + data + after
    same_message(whole, len(before))
    same_message(whole, len(before), len(before) + len(data) + slack)
    same_message(whole, len(whole) + abs(slack))  # an offset past the end


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(messages(), mutated()), max_size=4), st.binary(max_size=5))
def test_tcp_streams(parts: list[bytes], tail: bytes) -> None:
    stream = b"".join(struct.pack("!H", len(p) & 0xFFFF) + p for p in parts)
    same_stream(stream + tail)
    same_stream(stream[: len(stream) // 2])


def test_the_hard_cases() -> None:
    head = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    cases = [
        head + b"\xc0\x0c\x00\x01\x00\x01",  # a pointer at itself
        head + b"\x01a\xc0\x0c\x00\x01\x00\x01",  # back to its own start
        head + b"\xc0\x20" + bytes(40),  # forwards
        head + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",  # 257 bytes: too long
        head + (b"\x3f" + b"a" * 63) * 3 + b"\x3e" + b"a" * 62 + b"\x00\x00\x01\x00\x01",  # 255
        head + b"\x41abc",
        head + b"\x81abc",
        head + b"\x07bad.com\x07example\x00\x00\x01\x00\x01",
        head + b"\x03\x00\x5c\x20\x00\x00\x01\x00\x01",
        b"\x00" * 11,
        struct.pack("!HHHHHH", 1, 0, 256, 256, 256, 257),  # 1025 records
        struct.pack("!HHHHHH", 1, 0, 256, 256, 256, 256),  # 1024, then truncated
        dns_query()[:-2],
        dns_response(),
        dns_response()[:-1],
        dns_response().replace(b"\x00\x04\xc0\x00\x02\x01", b"\x00\x03\xc0\x00\x02"),
    ]
    # A chain of names each pointing at the one before: the cache answers every pointer,
    # and the name grows past the bound at the same record in both parsers.
    chain = bytearray(head)
    chain[5] = 120
    chain += b"\x01a\x00\x00\x01\x00\x01"
    for i in range(119):
        target = 12 if i == 0 else len(chain) - 8
        chain += b"\x01b" + struct.pack("!H", 0xC000 | target) + b"\x00\x01\x00\x01"
    cases.append(bytes(chain))
    # Every AAAA form: zero runs at the start, middle, end, ties, none, IPv4-mapped, all zero.
    for groups in (
        [0] * 8, [0] * 7 + [1], [1] + [0] * 7, [1, 0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 1, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0xFFFF, 0xC000, 0x0201], [0, 0, 0, 0, 0, 0, 0xC000, 0x0201],
        [0x2001, 0xDB8, 0, 0, 1, 0, 0, 1], [0xFFFF] * 8, [0x2001, 0, 1, 0, 1, 0, 1, 0],
    ):  # fmt: skip
        rdata = struct.pack("!8H", *groups)
        cases.append(
            struct.pack("!HHHHHH", 2, 0x8180, 0, 1, 0, 0)
            + b"\x00"
            + struct.pack("!HHIH", 28, 1, 60, 16)
            + rdata
        )
    for data in cases:
        same_message(data)
        same_stream(struct.pack("!H", len(data)) + data)


def test_other_inputs_go_to_the_python_parser() -> None:
    # A bytearray or a negative offset: what dns.py does with them is the answer.
    parse, stream = compiled()
    query = dns_query()
    assert shape(parse(bytearray(query))) == shape(dns.parse_message(bytearray(query)))
    data = dns_response()
    assert shape(parse(data, -len(data))) == shape(dns.parse_message(data, -len(data)))
    framed = struct.pack("!H", len(query)) + query
    assert shape(stream(bytearray(framed))) == shape(dns.parse_tcp_stream(bytearray(framed)))


def test_the_engine_with_the_compiled_path_parses_with_it() -> None:
    parse, stream = compiled()
    policy = load_policy_text((ROOT / "policies" / "gateway.rules").read_text(), "gateway.rules")
    if not fast.available():
        pytest.skip("the compiled fast path is not built")
    compiled_engine = Engine(policy, fast=True)
    assert compiled_engine.app.parse_dns_message is parse
    assert compiled_engine.app.parse_dns_stream is stream
    assert compiled_engine.app.read_dns_message is fast.compiled_dns().read_message
    reference = Engine(policy, fast=False)
    assert reference.app.parse_dns_message is dns.parse_message
    assert reference.app.parse_dns_stream is dns.parse_tcp_stream
    assert reference.app.read_dns_message is AppInspector._dns_message


# ---- a parsed message's reading: events, passive DNS (AppInspector._dns_message) -----------


def _flow(index: int) -> SimpleNamespace:
    """What the inspector reads of a flow to make an event."""
    return SimpleNamespace(
        src=bytes([10, 0, 0, index & 0xFF]), dst=b"\xc0\x00\x02\x35", sport=40000 + index,
        dport=53, flow_id=1000 + index, family=4, proto=PROTO_UDP, app_proto="dns",
        dst_name=None if index % 3 else "resolver.example",
    )  # fmt: skip


def _event_fields(event: AppEvent) -> dict[str, object]:
    fields = {name: getattr(event, name) for name in EVENT_FIELDS if name != "_build"}
    fields["class"] = type(event)
    fields["body"] = event.body  # built (by the partial each side made)
    return fields


EVENT_FIELDS = sorted(set(PacketEvent.__slots__) | set(AppEvent.__slots__))


def read_both(
    messages: list[dns.DnsMessage], flows: int = 3, passive: dict[str, Any] | None = None
) -> None:
    """The same messages read by the inspector's `_dns_message` and by the compiled reader,
    each on inspectors, flows and passive DNS of their own: the same events, fields, state and
    counts after every message."""
    module = fast.compiled_dns()
    if module is None:
        compiled()  # skips, or fails under CI
        return
    sides = []
    for compiled_side in (False, True):
        inspector = AppInspector(names=PassiveDns(**(passive or {"max_entries": 8})))
        reader = module.read_message if compiled_side else AppInspector._dns_message
        states = [_Udp() for _ in range(flows)]
        apps = [AppFields() for _ in range(flows)]
        sides.append((inspector, reader, states, apps, [_flow(i) for i in range(flows)]))
    for number, msg in enumerate(messages):
        which = number % flows
        to_server = not msg.flags & 0x8000
        now = 1000.0 + number
        seen = []
        for inspector, reader, states, apps, flow_list in sides:
            events: list[AppEvent] = []
            reader(
                inspector,
                flow_list[which],
                apps[which],
                msg,
                to_server,
                states[which],
                now,
                events,
            )
            state, app, names = states[which], apps[which], inspector.names
            assert isinstance(names, PassiveDns)
            seen.append((
                [_event_fields(e) for e in events],
                list(state.dns_ids.items()), state.dns_tx,
                app.dns_queries, app.client_done, app.server_done,
                dict(inspector.counters.events),
                list(names._entries.items()), names.learned, names.evicted, names.expired,
            ))  # fmt: skip
        assert seen[0] == seen[1], (number, msg)


def test_the_reader_makes_events_directly() -> None:
    module = fast.compiled_dns()
    if module is None:
        compiled()
        return
    # The fields the reader sets are all the event's (else it calls the constructor, and
    # this says the faster path went unused).
    assert module.EVENTS_MADE_DIRECTLY


def _answer_to(query: bytes, answers: list[tuple[bytes, int, bytes]]) -> bytes:
    """A response to `query` (same id and question) with (owner, type, rdata) answers."""
    ident, _flags, qd = struct.unpack_from("!HHH", query)
    body = query[12:]
    out = struct.pack("!HHHHHH", ident, 0x8180, qd, len(answers), 0, 0) + body
    for owner, rtype, rdata in answers:
        out += owner + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
    return out


def test_reading_queries_and_answers_the_same_way() -> None:
    wire = []
    queries = []
    for i in range(100):  # more waiting ids than DNS_IDS_KEPT: the oldest are forgotten
        query = dns_query(f"host{i}.Example.COM.", 1 if i % 2 else 28, ident=i)
        queries.append(query)
        wire.append(query)
        if i % 3 == 0:
            cname = b"\x03cdn\x03net\x00"
            wire.append(
                _answer_to(query, [
                    (b"\xc0\x0c", 5, cname),
                    (cname, 1, bytes([192, 0, 2, i])),
                    (b"\xc0\x0c", 28, bytes(15) + bytes([i])),
                ])
            )  # fmt: skip
    # Answers to queries forgotten and to queries still waiting.
    wire += [_answer_to(q, []) for q in queries[1:40:2] + queries[70:90:2]]
    wire += [dns_response(), dns_query(), _answer_to(dns_query(), [])]
    two = bytearray(dns_query())
    two[5] = 2
    two += b"\x01b\x00\x00\x01\x00\x01"
    wire.append(bytes(two))  # a query of two questions: two events
    messages = [dns.parse_message(w) for w in wire]
    assert all(isinstance(m, dns.DnsMessage) for m in messages)
    # Made by hand (no parser writes a trailing dot): the query names drop it.
    question = dns.DnsQuestion("Trailing.Example.", 1, 1)
    messages.append(dns.DnsMessage(7, 0x0100, (question,), (), (), ()))
    read_both(messages, flows=1)  # type: ignore[arg-type]
    read_both(messages, flows=3)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(messages(), mutated()), min_size=1, max_size=12))
def test_reading_made_messages_the_same_way(wire: list[bytes]) -> None:
    parsed = [dns.parse_message(w) for w in wire]
    read_both([m for m in parsed if isinstance(m, dns.DnsMessage)], flows=2)


def test_reading_the_captures_messages_the_same_way(pcaps_dir: Path) -> None:
    found = []
    for path in sorted(pcaps_dir.iterdir()):
        if path.suffix not in (".pcap", ".pcapng"):
            continue
        try:
            records = list(read_capture(path))
        except CaptureError:
            continue
        for record in records:
            pkt = decode_frame(record.data, record.linktype)
            if isinstance(pkt, Packet) and pkt.proto == PROTO_UDP:
                msg = dns.parse_message(pkt.data, pkt.payload_offset)
                if isinstance(msg, dns.DnsMessage):
                    found.append(msg)
    assert len(found) >= 100
    read_both(found, flows=5)


def test_passive_dns_learns_the_same_from_odd_answers() -> None:
    # Made by hand: A texts no parser writes (passive_dns._packed's int() reads some of them),
    # CNAME chains and loops, other classes, owners in capitals, TTLs at and past the bounds.
    def rec(name: str, rtype: int, rdata: object, ttl: int = 60, rclass: int = 1) -> dns.DnsRecord:
        return dns.DnsRecord(name, rtype, rclass, ttl, rdata)  # type: ignore[arg-type]

    texts = [
        "192.0.2.1", "01.2.3.4", "1.2.3", "1.2.3.4.", "256.1.1.1", " 1.2.3.4", "+1.2.3.4",
        "1_0.2.3.4", "\u0661.2.3.4", "1..2.3", "", "0.0.0.0", "255.255.255.255", "1.2.3.0400",
        "2001:db8::1", "::ffff:1.2.3.4",
    ]  # fmt: skip
    question = (dns.DnsQuestion("WWW.Example.com", 1, 1),)
    messages = []
    for i, text in enumerate(texts):
        answers = (
            rec("www.example.com", 5, "elsewhere.example", rclass=3),  # not IN: not followed
            rec("www.example.com", 5, "CDN.example.net"),
            rec("cdn.example.net", 5, "www.example.com"),  # a loop
            rec("cdn.example.net", 1, text, ttl=i * 40000),
            rec("Other.example", 1, text),
            rec("other.example", 1, text, rclass=3),
            rec("", 1, text),
            rec("cdn.example.net", 28, text, ttl=0),
            rec("cdn.example.net", 1, b"\x01\x02\x03\x04"),
        )
        messages.append(dns.DnsMessage(i, 0x8180, question, answers, (), ()))
    messages.append(dns.DnsMessage(99, 0x8183, question, messages[0].answers, (), ()))  # NXDOMAIN
    messages.append(dns.DnsMessage(98, 0x8980, question, messages[0].answers, (), ()))  # opcode 1
    messages.append(dns.DnsMessage(97, 0x8180, (), messages[0].answers, (), ()))
    for passive in (
        {"max_entries": 3},
        {"max_entries": 100, "min_ttl": 30.0, "max_ttl": 3600.0},
        {"max_entries": 100, "min_ttl": 0, "max_ttl": 100},
    ):
        read_both(messages, flows=1, passive=passive)


# ---- the loader: IPSCTL_PURE and a missing build (each in a fresh interpreter) ----------------

_WHICH_PARSER = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from ips.engine import Engine
    from ips.policy.resolve import load_policy_text
    engines = [Engine(load_policy_text("set default accept\\n", "t.rules")) for _ in range(2)]
print(engines[0].app.parse_dns_message.__module__, engines[1].app.read_dns_message.__qualname__,
      len([w for w in caught if "compiled DNS parser" in str(w.message)]))
"""


def test_the_loader_honours_ipsctl_pure_and_a_missing_build() -> None:
    python = "ips.app.dns AppInspector._dns_message"
    assert run_fresh(_WHICH_PARSER, IPSCTL_PURE="1") == f"{python} 0"
    if fast.available():  # the compiled DNS parser comes with the compiled path
        assert (
            run_fresh(hiding("ips.fast._dnsparse") + _WHICH_PARSER, IPSCTL_PURE="") == f"{python} 1"
        )
        if fast.compiled_dns() is not None:
            got = run_fresh(_WHICH_PARSER, IPSCTL_PURE="")
            assert got == "ips.fast._dnsparse read_message 0"
