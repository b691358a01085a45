"""Passive DNS (ips/app/passive_dns.py): CNAME chains, TTLs, the bound and its eviction order.

Messages are built as `DnsMessage` values, and as wire bytes through `dns.parse_message` where
the path from bytes matters; hypothesis compares the table with a plain list model."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ips.app import dns
from ips.app.dns import DnsMessage, DnsQuestion, DnsRecord
from ips.app.passive_dns import PassiveDns
from ips.core.addr import parse_addr
from tests.pure.test_app_parsers import dns_response, qname, rr

A, AAAA, CNAME, MX = 1, 28, 5, 15
RESPONSE = 0x8180  # QR, RD, RA, NOERROR


def a(name: str, addr: str, ttl: int = 300) -> DnsRecord:
    return DnsRecord(name, AAAA if ":" in addr else A, 1, ttl, addr)


def cname(name: str, target: str, ttl: int = 300) -> DnsRecord:
    return DnsRecord(name, CNAME, 1, ttl, target)


def response(
    question: str,
    *answers: DnsRecord,
    flags: int = RESPONSE,
    additionals: tuple[DnsRecord, ...] = (),
    authorities: tuple[DnsRecord, ...] = (),
) -> DnsMessage:
    questions = (DnsQuestion(question, A, 1),) if question else ()
    return DnsMessage(0x1234, flags, questions, tuple(answers), authorities, additionals)


def ip(text: str) -> bytes:
    return parse_addr(text)


def test_direct_answers_v4_and_v6() -> None:
    pdns = PassiveDns()
    msg = response("Example.COM", a("example.com", "192.0.2.1"), a("EXAMPLE.com", "2001:db8::1"))
    assert pdns.learn(msg, now=100.0) == 2
    assert pdns.name_of(ip("192.0.2.1"), 101.0) == "example.com"
    assert pdns.name_of(ip("2001:db8::1"), 101.0) == "example.com"
    assert pdns.name_of(ip("192.0.2.2"), 101.0) is None
    assert len(pdns) == 2 and pdns.learned == 2


def test_a_cname_chain_names_the_address_by_the_question() -> None:
    pdns = PassiveDns()
    msg = response(
        "www.shop.example",
        cname("www.shop.example", "shop.cdn.example.net"),
        cname("shop.cdn.example.net", "edge-7.cdn.example.net"),
        a("edge-7.cdn.example.net", "198.51.100.7"),
        a("edge-7.cdn.example.net", "2001:db8::7"),
    )
    assert pdns.learn(msg, 0.0) == 2
    assert pdns.name_of(ip("198.51.100.7"), 1.0) == "www.shop.example"
    assert pdns.name_of(ip("2001:db8::7"), 1.0) == "www.shop.example"


def test_the_chain_may_come_in_any_order_and_is_case_blind() -> None:
    pdns = PassiveDns()
    msg = response(
        "a.example",
        a("C.example", "192.0.2.3"),
        cname("B.example", "c.EXAMPLE"),
        cname("a.example", "b.example"),
    )
    pdns.learn(msg, 0.0)
    assert pdns.name_of(ip("192.0.2.3"), 1.0) == "a.example"


def test_a_broken_chain_names_the_address_by_its_owner() -> None:
    # a.example -> b.example, but the address belongs to c.example, which nothing links to.
    pdns = PassiveDns()
    msg = response(
        "a.example",
        cname("a.example", "b.example"),
        a("c.example", "192.0.2.3"),
        a("b.example", "192.0.2.2"),
    )
    assert pdns.learn(msg, 0.0) == 2
    assert pdns.name_of(ip("192.0.2.3"), 1.0) == "c.example"
    assert pdns.name_of(ip("192.0.2.2"), 1.0) == "a.example"


def test_a_cname_loop_ends() -> None:
    pdns = PassiveDns()
    msg = response(
        "a.example",
        cname("a.example", "b.example"),
        cname("b.example", "a.example"),
        a("b.example", "192.0.2.2"),
    )
    assert pdns.learn(msg, 0.0) == 1
    assert pdns.name_of(ip("192.0.2.2"), 1.0) == "a.example"


def test_errors_queries_and_other_sections_teach_nothing() -> None:
    pdns = PassiveDns()
    answer = a("example.com", "192.0.2.1")
    nxdomain = response("example.com", answer, flags=0x8183)
    servfail = response("example.com", answer, flags=0x8182)
    query = response("example.com", answer, flags=0x0100)
    notify = response("example.com", answer, flags=0x8180 | (4 << 11))  # opcode NOTIFY
    glue = response(
        "example.com",
        DnsRecord("example.com", MX, 1, 300, dns.DnsMx(10, "mx.example.com")),
        additionals=(a("mx.example.com", "192.0.2.25"), a("ns.example.com", "192.0.2.53")),
        authorities=(a("ns2.example.com", "192.0.2.54"),),
    )
    no_question = response("", answer)
    chaos = response("example.com", DnsRecord("example.com", A, 3, 300, "192.0.2.1"))
    for msg in (nxdomain, servfail, query, notify, glue, no_question, chaos):
        assert pdns.learn(msg, 0.0) == 0
    assert len(pdns) == 0 and pdns.learned == 0


def test_ttl_expiry_is_lazy_and_counted() -> None:
    pdns = PassiveDns()
    pdns.learn(response("short.example", a("short.example", "192.0.2.1", ttl=30)), 1000.0)
    assert pdns.name_of(ip("192.0.2.1"), 1029.9) == "short.example"
    assert len(pdns) == 1 and pdns.expired == 0
    assert pdns.name_of(ip("192.0.2.1"), 1030.0) is None  # expires at now + ttl
    assert len(pdns) == 0 and pdns.expired == 1
    assert pdns.name_of(ip("192.0.2.1"), 1031.0) is None
    assert pdns.expired == 1


def test_ttl_bounds() -> None:
    pdns = PassiveDns(max_ttl=3600.0, min_ttl=60.0)
    pdns.learn(
        response(
            "x.example",
            a("x.example", "192.0.2.1", ttl=0),
            a("x.example", "192.0.2.2", ttl=10**6),
        ),
        0.0,
    )
    assert pdns.name_of(ip("192.0.2.1"), 59.0) == "x.example"
    assert pdns.name_of(ip("192.0.2.1"), 60.0) is None
    assert pdns.name_of(ip("192.0.2.2"), 3599.0) == "x.example"
    assert pdns.name_of(ip("192.0.2.2"), 3600.0) is None


def test_a_zero_ttl_names_nothing() -> None:
    pdns = PassiveDns()
    assert pdns.learn(response("z.example", a("z.example", "192.0.2.1", ttl=0)), 5.0) == 0
    assert len(pdns) == 0


def test_a_newer_answer_replaces_whatever_its_ttl() -> None:
    pdns = PassiveDns()
    pdns.learn(response("old.example", a("old.example", "192.0.2.1", ttl=3600)), 0.0)
    pdns.learn(response("new.example", a("new.example", "192.0.2.1", ttl=10)), 5.0)
    assert len(pdns) == 1 and pdns.learned == 2
    assert pdns.name_of(ip("192.0.2.1"), 6.0) == "new.example"
    assert pdns.name_of(ip("192.0.2.1"), 15.0) is None


def test_the_bound_evicts_the_least_recently_learned_or_used() -> None:
    pdns = PassiveDns(max_entries=3)
    for i in range(3):
        pdns.learn(response(f"h{i}.example", a(f"h{i}.example", f"192.0.2.{i}")), float(i))
    assert pdns.name_of(ip("192.0.2.0"), 3.0) == "h0.example"  # used: now the most recent
    pdns.learn(response("h3.example", a("h3.example", "192.0.2.3")), 4.0)
    assert len(pdns) == 3 and pdns.evicted == 1
    assert pdns.name_of(ip("192.0.2.1"), 5.0) is None  # the least recently learned or used
    assert pdns.name_of(ip("192.0.2.0"), 5.0) == "h0.example"
    # Re-learning refreshes an entry without evicting anything.
    pdns.learn(response("h2.example", a("h2.example", "192.0.2.2")), 6.0)
    assert pdns.evicted == 1
    pdns.learn(response("h4.example", a("h4.example", "192.0.2.4")), 7.0)
    assert pdns.evicted == 2
    assert pdns.name_of(ip("192.0.2.3"), 8.0) is None
    names = [pdns.name_of(ip(f"192.0.2.{i}"), 8.0) for i in (0, 2, 4)]
    assert names == ["h0.example", "h2.example", "h4.example"]


def test_one_message_larger_than_the_bound() -> None:
    pdns = PassiveDns(max_entries=4)
    records = [a("many.example", f"192.0.2.{i}") for i in range(10)]
    assert pdns.learn(response("many.example", *records), 0.0) == 10
    assert len(pdns) == 4 and pdns.evicted == 6
    assert [pdns.name_of(ip(f"192.0.2.{i}"), 1.0) for i in (5, 6)] == [None, "many.example"]


def test_from_wire_bytes() -> None:
    head = struct.pack("!HHHHHH", 7, 0x8180, 1, 3, 0, 0) + qname("www.Example.org")
    head += struct.pack("!HH", 1, 1)
    ptr = b"\xc0\x0c"
    edge = qname("edge.cdn.example.net")
    body = (
        rr(ptr, 5, edge, ttl=60)
        + rr(edge, 1, bytes((203, 0, 113, 9)), ttl=20)
        + rr(edge, 28, ip("2001:db8::9"), ttl=20)
    )
    msg = dns.parse_message(head + body)
    assert isinstance(msg, DnsMessage)
    pdns = PassiveDns()
    assert pdns.learn(msg, 50.0) == 2
    assert pdns.name_of(ip("203.0.113.9"), 60.0) == "www.example.org"
    assert pdns.name_of(ip("2001:db8::9"), 60.0) == "www.example.org"
    assert pdns.name_of(ip("203.0.113.9"), 70.0) is None
    # The parsers' test response: A and AAAA of example.com among every other type.
    other = dns.parse_message(dns_response())
    assert isinstance(other, DnsMessage)
    assert pdns.learn(other, 0.0) == 2
    assert pdns.name_of(ip("192.0.2.1"), 1.0) == "example.com"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PassiveDns(max_entries=0)
    with pytest.raises(ValueError):
        PassiveDns(max_ttl=10.0, min_ttl=20.0)


# ---- hypothesis ---------------------------------------------------------------------------------

NAMES = ["a.example", "b.example", "c.example", "d.example", "E.example"]
ADDRS = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "2001:db8::2"]


@st.composite
def messages(draw: st.DrawFn) -> DnsMessage:
    records: list[DnsRecord] = []
    for _ in range(draw(st.integers(0, 8))):
        owner = draw(st.sampled_from(NAMES))
        if draw(st.booleans()):
            records.append(cname(owner, draw(st.sampled_from(NAMES))))
        else:
            records.append(a(owner, draw(st.sampled_from(ADDRS)), draw(st.integers(0, 100))))
    flags = draw(st.sampled_from([RESPONSE, RESPONSE, RESPONSE, 0x8183, 0x0100]))
    question = draw(st.sampled_from([*NAMES, ""]))
    return response(question, *records, flags=flags)


def reachable(msg: DnsMessage, qname: str) -> set[str]:
    """Names reached from `qname` by following, for each name, its first CNAME (a fixed point:
    a different walk from the module's)."""
    first: dict[str, str] = {}
    for rec in msg.answers:
        if rec.rtype == CNAME:
            first.setdefault(rec.name.lower(), str(rec.rdata).lower())
    names = {qname}
    while True:
        more = {first[n] for n in names if n in first} - names
        if not more:
            return names
        names |= more


class Model:
    """The table as a plain list, oldest first: what the module must behave like."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.rows: list[tuple[bytes, str, float]] = []
        self.evicted = 0
        self.expired = 0

    def learn(self, msg: DnsMessage, now: float) -> int:
        if msg.flags & 0x8000 == 0 or msg.flags & 0x780F or not msg.questions:
            return 0
        qname = msg.questions[0].name.lower()
        chain = reachable(msg, qname)
        count = 0
        for rec in msg.answers:
            if rec.rtype not in (A, AAAA) or rec.ttl <= 0:
                continue
            owner = rec.name.lower()
            name = qname if owner in chain else owner
            addr = ip(str(rec.rdata))
            kept = [r for r in self.rows if r[0] != addr]
            if len(kept) == len(self.rows) and len(kept) >= self.max_entries:
                kept.pop(0)
                self.evicted += 1
            self.rows = [*kept, (addr, name, now + rec.ttl)]
            count += 1
        return count

    def name_of(self, addr: bytes, now: float) -> str | None:
        for i, (key, name, expires) in enumerate(self.rows):
            if key == addr:
                del self.rows[i]
                if now >= expires:
                    self.expired += 1
                    return None
                self.rows.append((key, name, expires))
                return name
        return None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 4),
    st.lists(
        st.one_of(
            st.tuples(st.just("learn"), messages()),
            st.tuples(st.just("ask"), st.sampled_from(ADDRS)),
        ),
        max_size=20,
    ),
)
def test_matches_a_list_model(max_entries: int, steps: list[tuple[str, object]]) -> None:
    pdns = PassiveDns(max_entries=max_entries)
    model = Model(max_entries)
    now = 0.0
    for kind, arg in steps:
        now += 7.0
        if kind == "learn":
            assert isinstance(arg, DnsMessage)
            assert pdns.learn(arg, now) == model.learn(arg, now)
        else:
            assert isinstance(arg, str)
            assert pdns.name_of(ip(arg), now) == model.name_of(ip(arg), now)
        assert len(pdns) == len(model.rows) <= max_entries
        assert (pdns.evicted, pdns.expired) == (model.evicted, model.expired)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 400), st.binary(max_size=8))
def test_any_parsed_message_is_learned_without_raising(
    noise: bytes, cut: int, patch: bytes
) -> None:
    # Random bytes, and the parsers' test response with bytes overwritten: whatever parses is
    # a message learn() must take.
    pdns = PassiveDns(max_entries=2)
    base = bytearray(dns_response())
    base[cut : cut + len(patch)] = patch
    for data in (noise, bytes(base)):
        msg = dns.parse_message(data)
        if isinstance(msg, DnsMessage):
            n = pdns.learn(msg, 1.0)
            assert 0 <= n <= sum(r.rtype in (A, AAAA) for r in msg.answers)
            assert len(pdns) <= 2
