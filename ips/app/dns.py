"""DNS messages (RFC 1035): header, questions and resource records, over UDP and TCP.

Names follow compression pointers with loop protection: a pointer must point strictly before
the label it replaces (so every jump goes backwards and the walk ends), and a name longer than
255 bytes is malformed. Record data is decoded for A, AAAA, CNAME, NS, PTR, MX, TXT, SOA and
SRV; other types keep their raw bytes. Over TCP each message has a 2-byte length prefix and a
stream may hold several (`parse_tcp_stream`).

A problem gives a `Malformed` with a "dns.*" reason (see `REASONS`), never an exception.
Names are text: labels joined with ".", the root is "", bytes outside printable ASCII and the
characters "." and "\\" inside a label are escaped as "\\DDD" (RFC 4343's presentation
format), so a label holding a dot cannot pass for two labels.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ips.core.addr import format_addr
from ips.core.packet import Malformed

__all__ = [
    "CLASS_IN",
    "RCODE_NAMES",
    "REASONS",
    "TYPE_NAMES",
    "DnsMessage",
    "DnsMx",
    "DnsQuestion",
    "DnsRecord",
    "DnsSoa",
    "DnsSrv",
    "eve_dns",
    "parse_message",
    "parse_tcp_stream",
    "rrtype_name",
]

_HEADER = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")
_RRTAIL = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_U16 = struct.Struct("!H")
_SOA_TAIL = struct.Struct("!IIIII")
_SRV_HEAD = struct.Struct("!HHH")

MAX_NAME = 255
MAX_RECORDS = 1024  # per message, all sections: a bound on work for hostile counts
CLASS_IN = 1

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33

TYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO", 15: "MX",
    16: "TXT", 28: "AAAA", 33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS",
    44: "SSHFP", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 52: "TLSA", 64: "SVCB",
    65: "HTTPS", 99: "SPF", 250: "TSIG", 251: "IXFR", 252: "AXFR", 255: "ANY", 257: "CAA",
}  # fmt: skip
RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE",
}  # fmt: skip

_reasons: list[str] = []


def _m(reason: str) -> Malformed:
    _reasons.append(reason)
    return Malformed(reason)


M_TRUNCATED_HEADER = _m("dns.truncated-header")
M_TRUNCATED_NAME = _m("dns.truncated-name")
M_TRUNCATED_QUESTION = _m("dns.truncated-question")
M_TRUNCATED_RECORD = _m("dns.truncated-record")
M_BAD_LABEL = _m("dns.bad-label-type")
M_POINTER_LOOP = _m("dns.pointer-not-backwards")
M_NAME_TOO_LONG = _m("dns.name-too-long")
M_BAD_RDATA = _m("dns.bad-rdata")
M_TOO_MANY_RECORDS = _m("dns.too-many-records")
M_TCP_SHORT_LENGTH = _m("dns.tcp-length-too-short")
REASONS: tuple[str, ...] = tuple(_reasons)


class DnsQuestion(NamedTuple):
    name: str
    rtype: int
    rclass: int


class DnsMx(NamedTuple):
    preference: int
    exchange: str


class DnsSoa(NamedTuple):
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


class DnsSrv(NamedTuple):
    priority: int
    weight: int
    port: int
    target: str


Rdata = str | DnsMx | DnsSoa | DnsSrv | tuple[bytes, ...] | bytes
"""A and AAAA: the address as text; CNAME, NS, PTR: the name; TXT: its strings; other types:
the raw bytes."""


class DnsRecord(NamedTuple):
    name: str
    rtype: int
    rclass: int
    ttl: int
    rdata: Rdata


class DnsMessage(NamedTuple):
    id: int
    flags: int  # the 16-bit flags word: qr, opcode, aa, tc, rd, ra, z, ad, cd, rcode
    questions: tuple[DnsQuestion, ...]
    answers: tuple[DnsRecord, ...]
    authorities: tuple[DnsRecord, ...]
    additionals: tuple[DnsRecord, ...]

    @property
    def qr(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


def rrtype_name(rtype: int) -> str:
    """The mnemonic of a record type ("A", "AAAA"...), else the number as text."""
    return TYPE_NAMES.get(rtype) or str(rtype)


# Label bytes to text: printable ASCII stays, the rest (and "." and "\") becomes \DDD.
_LABEL_TABLE = [chr(b) if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) else f"\\{b:03d}"
                for b in range(256)]  # fmt: skip
_LABEL_TABLE[0x20] = "\\032"


def _label_text(raw: bytes) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return "".join([_LABEL_TABLE[b] for b in raw])
    if text.isprintable() and " " not in text and "." not in text and "\\" not in text:
        return text
    return "".join([_LABEL_TABLE[b] for b in raw])


def _name(
    data: bytes, pos: int, base: int, end: int, cache: dict[int, tuple[str, int]]
) -> tuple[str, int] | Malformed:
    """Read a name at `pos`; return it and the offset after it (after the first pointer).

    `cache` maps the offsets of names already read in this message to (text, wire length):
    compression points most names at a few earlier ones, so each is decoded once."""
    start = pos
    labels: list[str] = []
    total = 0
    after = -1  # where the name ends in the record: set at the first pointer
    floor = pos  # a pointer must point strictly before the label sequence it continues
    while True:
        if pos >= end:
            return M_TRUNCATED_NAME
        ln = data[pos]
        if ln == 0:
            pos += 1
            break
        kind = ln & 0xC0
        if kind == 0xC0:
            if pos + 2 > end:
                return M_TRUNCATED_NAME
            target = base + (_U16.unpack_from(data, pos)[0] & 0x3FFF)
            if target >= floor:
                return M_POINTER_LOOP
            if after < 0:
                after = pos + 2
            known = cache.get(target)
            if known is not None:
                total += known[1]
                if total > MAX_NAME:
                    return M_NAME_TOO_LONG
                if known[0]:
                    labels.append(known[0])
                break
            pos = floor = target
            continue
        if kind:
            return M_BAD_LABEL  # 0x40 (extended) and 0x80 label types: obsolete or unassigned
        total += ln + 1
        if total > MAX_NAME:
            return M_NAME_TOO_LONG
        if pos + 1 + ln > end:
            return M_TRUNCATED_NAME
        labels.append(_label_text(data[pos + 1 : pos + 1 + ln]))
        pos += 1 + ln
    text = ".".join(labels)
    cache[start] = (text, total)
    return text, (after if after >= 0 else pos)


def _records(
    data: bytes,
    pos: int,
    base: int,
    end: int,
    count: int,
    out: list[DnsRecord],
    cache: dict[int, tuple[str, int]],
) -> int | Malformed:
    for _ in range(count):
        got = _name(data, pos, base, end, cache)
        if isinstance(got, Malformed):
            return got
        name, pos = got
        if pos + 10 > end:
            return M_TRUNCATED_RECORD
        rtype, rclass, ttl, rdlen = _RRTAIL.unpack_from(data, pos)
        pos += 10
        rend = pos + rdlen
        if rend > end:
            return M_TRUNCATED_RECORD
        rdata = _rdata(data, pos, rend, base, rtype, cache)
        if isinstance(rdata, Malformed):
            return rdata
        out.append(DnsRecord(name, rtype, rclass, ttl, rdata))
        pos = rend
    return pos


def _rdata(
    data: bytes, pos: int, rend: int, base: int, rtype: int, cache: dict[int, tuple[str, int]]
) -> Rdata | Malformed:
    size = rend - pos
    if rtype == TYPE_A:
        return format_addr(data[pos:rend]) if size == 4 else M_BAD_RDATA
    if rtype == TYPE_AAAA:
        return format_addr(data[pos:rend]) if size == 16 else M_BAD_RDATA
    if rtype in (TYPE_CNAME, TYPE_NS, TYPE_PTR):
        got = _name(data, pos, base, rend, cache)
        return got if isinstance(got, Malformed) else got[0]
    if rtype == TYPE_MX:
        if size < 3:
            return M_BAD_RDATA
        got = _name(data, pos + 2, base, rend, cache)
        if isinstance(got, Malformed):
            return got
        return DnsMx(_U16.unpack_from(data, pos)[0], got[0])
    if rtype == TYPE_TXT:
        strings: list[bytes] = []
        while pos < rend:
            ln = data[pos]
            if pos + 1 + ln > rend:
                return M_BAD_RDATA
            strings.append(data[pos + 1 : pos + 1 + ln])
            pos += 1 + ln
        return tuple(strings)
    if rtype == TYPE_SOA:
        mname = _name(data, pos, base, rend, cache)
        if isinstance(mname, Malformed):
            return mname
        rname = _name(data, mname[1], base, rend, cache)
        if isinstance(rname, Malformed):
            return rname
        if rname[1] + 20 > rend:
            return M_BAD_RDATA
        return DnsSoa(mname[0], rname[0], *_SOA_TAIL.unpack_from(data, rname[1]))
    if rtype == TYPE_SRV:
        if size < 7:
            return M_BAD_RDATA
        target = _name(data, pos + 6, base, rend, cache)
        if isinstance(target, Malformed):
            return target
        priority, weight, port = _SRV_HEAD.unpack_from(data, pos)
        return DnsSrv(priority, weight, port, target[0])
    return data[pos:rend]


def parse_message(data: bytes, off: int = 0, end: int = -1) -> DnsMessage | Malformed:
    """Parse the DNS message in data[off:end] (end -1: to the end of data)."""
    if end < 0 or end > len(data):
        end = len(data)
    if end - off < 12:
        return M_TRUNCATED_HEADER
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(data, off)
    if qd + an + ns + ar > MAX_RECORDS:
        return M_TOO_MANY_RECORDS
    pos = off + 12
    questions: list[DnsQuestion] = []
    cache: dict[int, tuple[str, int]] = {}
    for _ in range(qd):
        got = _name(data, pos, off, end, cache)
        if isinstance(got, Malformed):
            return got
        name, pos = got
        if pos + 4 > end:
            return M_TRUNCATED_QUESTION
        qtype, qclass = _QTAIL.unpack_from(data, pos)
        pos += 4
        questions.append(DnsQuestion(name, qtype, qclass))
    sections: list[list[DnsRecord]] = [[], [], []]
    for count, out in zip((an, ns, ar), sections, strict=True):
        if not count:
            continue  # (a query has no records: three calls saved per message)
        got_pos = _records(data, pos, off, end, count, out, cache)
        if isinstance(got_pos, Malformed):
            return got_pos
        pos = got_pos
    return DnsMessage(
        ident, flags, tuple(questions), tuple(sections[0]), tuple(sections[1]), tuple(sections[2])
    )


def parse_tcp_stream(data: bytes) -> tuple[list[DnsMessage | Malformed], int]:
    """The messages of a DNS-over-TCP stream (2-byte length prefix each) and the bytes they
    used; an incomplete last message is left for when more of the stream has arrived."""
    out: list[DnsMessage | Malformed] = []
    pos = 0
    n = len(data)
    while pos + 2 <= n:
        length = _U16.unpack_from(data, pos)[0]
        if length < 12:
            out.append(M_TCP_SHORT_LENGTH)
            return out, n  # framing is lost: the rest of the stream cannot be trusted
        if pos + 2 + length > n:
            break
        out.append(parse_message(data, pos + 2, pos + 2 + length))
        pos += 2 + length
    return out, pos


# ---- EVE ---------------------------------------------------------------------------------------


def _rdata_text(rec: DnsRecord) -> str | None:
    rd = rec.rdata
    if isinstance(rd, str):
        return rd
    if isinstance(rd, DnsMx):
        return rd.exchange
    if isinstance(rd, tuple) and rec.rtype == TYPE_TXT:
        return "".join(s.decode("ascii", "backslashreplace") for s in rd)  # type: ignore[union-attr]
    return None


def _eve_record(rec: DnsRecord) -> dict[str, object]:
    out: dict[str, object] = {"rrname": rec.name, "rrtype": rrtype_name(rec.rtype),
                              "ttl": rec.ttl}  # fmt: skip
    rd = rec.rdata
    if isinstance(rd, DnsSoa):
        out["soa"] = {"mname": rd.mname, "rname": rd.rname, "serial": rd.serial,
                      "refresh": rd.refresh, "retry": rd.retry, "expire": rd.expire,
                      "minimum": rd.minimum}  # fmt: skip
    elif isinstance(rd, DnsSrv):
        out["srv"] = {"priority": rd.priority, "weight": rd.weight, "port": rd.port,
                      "name": rd.target}  # fmt: skip
    else:
        text = _rdata_text(rec)
        if text is not None:
            out["rdata"] = text
    return out


def eve_dns(msg: DnsMessage, tx_id: int = 0) -> list[dict[str, object]]:
    """EVE `dns` objects in Suricata's version 2 style: a query gives one object per
    question ("type": "query"); a response gives one "answer" object with its records."""
    if not msg.qr:
        return [
            {"version": 2, "type": "query", "id": msg.id, "rrname": q.name,
             "rrtype": rrtype_name(q.rtype), "tx_id": tx_id, "opcode": msg.opcode}
            for q in msg.questions
        ]  # fmt: skip
    f = msg.flags
    out: dict[str, object] = {
        "version": 2, "type": "answer", "id": msg.id, "flags": f"{f:x}", "qr": True,
        "opcode": msg.opcode, "rcode": RCODE_NAMES.get(msg.rcode) or str(msg.rcode),
    }  # fmt: skip
    for bit, key in ((0x0400, "aa"), (0x0200, "tc"), (0x0100, "rd"), (0x0080, "ra")):
        if f & bit:
            out[key] = True
    if msg.questions:
        out["rrname"] = msg.questions[0].name
        out["rrtype"] = rrtype_name(msg.questions[0].rtype)
    if msg.answers:
        out["answers"] = [_eve_record(r) for r in msg.answers]
    if msg.authorities:
        out["authorities"] = [_eve_record(r) for r in msg.authorities]
    return [out]
