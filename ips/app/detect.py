"""Protocol detection by content, on any port.

The first payload bytes of either direction of a flow name its application protocol: TLS
(a handshake record carrying a ClientHello or ServerHello), HTTP/1.x (a request method and a
space, or an "HTTP/1." status line), DNS (a sane header and a question that parses, over UDP
or with TCP's 2-byte length prefix), SSH (the "SSH-" banner) and QUIC (a version 1 long-header
Initial packet). Ports are never consulted, so a service moved to another port is still named.

`detect_stream` (TCP) may answer None: too few bytes yet to tell, call again when more of the
stream has arrived. `detect_datagram` (UDP) always answers, one datagram is all there is.
"""

from __future__ import annotations

import struct

__all__ = [
    "APP_DNS",
    "APP_HTTP",
    "APP_QUIC",
    "APP_SSH",
    "APP_TLS",
    "APP_UNKNOWN",
    "HTTP_METHODS",
    "detect_datagram",
    "detect_stream",
]

APP_TLS = "tls"
APP_HTTP = "http"
APP_DNS = "dns"
APP_SSH = "ssh"
APP_QUIC = "quic"
APP_UNKNOWN = "unknown"

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_DNS_HEADER = struct.Struct("!HHHHHH")
_DNS_OPCODES = frozenset((0, 1, 2, 4, 5, 6))  # query, iquery, status, notify, update, DSO

# Request methods of HTTP/1.x (RFC 9110 plus WebDAV's commonest), each followed by a space.
HTTP_METHODS = (
    b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"TRACE", b"PATCH",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH",
)  # fmt: skip
_METHOD_PREFIXES = tuple(m + b" " for m in HTTP_METHODS)
_LONGEST_METHOD = max(len(m) for m in _METHOD_PREFIXES)
_HTTP_FIRST = frozenset(m[0] for m in HTTP_METHODS) | {ord("H")}

_TLS_MAX_RECORD = 16384 + 2048  # a TLSCiphertext's limit (RFC 8446 section 5.2)
_QUIC_V1 = 1


def detect_stream(data: bytes, offset: int = 0) -> str | None:
    """The application protocol of a TCP stream from its first bytes (those of data from
    offset on: a packet's payload is read where it lies, not copied); None: need more."""
    n = len(data) - offset
    if n <= 0:
        return None
    b0 = data[offset]
    if b0 == 0x16:
        return _tls(data, offset)
    if b0 == 0x53:  # "S"
        if n < 4:
            rest = data[offset:]
            return None if b"SSH-".startswith(rest) else _http_or_unknown(data, offset)
        if data.startswith(b"SSH-", offset):
            return APP_SSH
    if b0 in _HTTP_FIRST:
        verdict = _http(data, offset)
        if verdict != APP_UNKNOWN:
            return verdict
    return _dns_tcp(data, offset)


def detect_datagram(data: bytes, offset: int = 0) -> str:
    """The application protocol of a UDP datagram's payload (data from offset on)."""
    end = len(data)
    if end - offset >= 7 and data[offset] & 0xC0 == 0xC0 and _quic_initial(data, offset):
        return APP_QUIC
    if _dns_message(data, offset, end):
        return APP_DNS
    return APP_UNKNOWN


def _tls(data: bytes, off: int) -> str | None:
    n = len(data) - off
    if n < 6:
        # Record type 0x16 and a 3.x version so far: wait for the handshake type.
        if n >= 2 and data[off + 1] != 3:
            return _dns_tcp(data, off)
        return None
    if data[off + 1] != 3 or data[off + 2] > 4:
        return _dns_tcp(data, off)
    length = _U16.unpack_from(data, off + 3)[0]
    if length == 0 or length > _TLS_MAX_RECORD:
        return _dns_tcp(data, off)
    if data[off + 5] in (1, 2):  # ClientHello, ServerHello
        return APP_TLS
    return _dns_tcp(data, off)


def _http(data: bytes, off: int) -> str | None:
    if data.startswith(b"HTTP/1.", off):
        return APP_HTTP
    if data.startswith(_METHOD_PREFIXES, off):
        return APP_HTTP
    return _http_or_unknown(data, off)


def _http_or_unknown(data: bytes, off: int) -> str:
    # A prefix of a method (or of "HTTP/1.") that is not complete yet could still be HTTP.
    if len(data) - off < _LONGEST_METHOD:
        rest = data[off:]
        if any(m.startswith(rest) for m in _METHOD_PREFIXES) or b"HTTP/1.".startswith(rest):
            return None  # type: ignore[return-value]
    return APP_UNKNOWN


def _dns_tcp(data: bytes, off: int) -> str | None:
    n = len(data) - off
    if n < 2 + 12:
        # Only a DNS length prefix and header could still be coming: worth waiting for while
        # the bytes that came can start them. A stream whose first bytes already rule DNS
        # out (as they rule out the other protocols above) is named unknown now, not at its
        # first FIN: Suricata's probing parsers likewise fail as soon as the bytes seen
        # contradict a protocol, and an unknown flow needs no more reading.
        if n < 2:
            return None
        if _U16.unpack_from(data, off)[0] < 17:
            return APP_UNKNOWN
        return None if _dns_header_could_start(data, off + 2, n - 2) else APP_UNKNOWN
    length = _U16.unpack_from(data, off)[0]
    if length < 17:  # header + the shortest question (root name, type, class)
        return APP_UNKNOWN
    # The header is whole here (n >= 14): without a sane one this is no DNS, complete or not.
    if not _dns_header_ok(data, off + 2):
        return APP_UNKNOWN
    end = min(len(data), off + 2 + length)
    if end - (off + 2) >= 17 and _dns_question(data, off + 14, end):
        return APP_DNS
    if n < 2 + length:
        return None  # the question may be in the next segment
    return APP_UNKNOWN


def _dns_header_ok(data: bytes, off: int) -> bool:
    # The question count first, byte by byte: it turns away most bytes that are not DNS
    # before anything is unpacked (detection runs once per flow, on whatever it carries).
    if data[off + 4] or data[off + 5] != 1:
        return False
    _id, flags, qd, an, ns, ar = _DNS_HEADER.unpack_from(data, off)
    opcode = (flags >> 11) & 0xF
    if opcode not in _DNS_OPCODES:
        return False
    if flags & 0x0040:  # the Z bit must be zero
        return False
    if qd != 1:  # every DNS implementation in use sends exactly one question
        return False
    return an <= 256 and ns <= 256 and ar <= 256


def _dns_header_could_start(data: bytes, off: int, n: int) -> bool:
    """Whether the first n (< 12) bytes at off can begin a header `_dns_header_ok` accepts:
    each test of it whose bytes have come, byte by byte (the id is free)."""
    if n > 2 and (data[off + 2] >> 3) & 0xF not in _DNS_OPCODES:
        return False
    if n > 3 and data[off + 3] & 0x40:  # the Z bit
        return False
    if n > 4 and data[off + 4]:  # the question count is 1
        return False
    if n > 5 and data[off + 5] != 1:
        return False
    for high in (6, 8, 10):  # the answer, authority and additional counts are <= 256
        if n > high:
            top = data[off + high]
            if top > 1 or (top == 1 and n > high + 1 and data[off + high + 1]):
                return False
    return True


def _dns_message(data: bytes, off: int, end: int) -> bool:
    """A sane header and one question that parses within [off, end)."""
    if end - off < 17 or not _dns_header_ok(data, off):
        return False
    return _dns_question(data, off + 12, end)


def _dns_question(data: bytes, pos: int, end: int) -> bool:
    """One question that parses within [pos, end)."""
    # The question's name: plain labels only (nothing to point back at yet), <= 255 bytes.
    total = 0
    while True:
        if pos >= end:
            return False
        ln = data[pos]
        if ln == 0:
            pos += 1
            break
        if ln & 0xC0:
            return False
        total += ln + 1
        if total > 255:
            return False
        pos += ln + 1
    if pos + 4 > end:
        return False
    qclass = _U16.unpack_from(data, pos + 2)[0] & 0x7FFF  # the top bit is mDNS's unicast bit
    return qclass in (1, 3, 4, 254, 255)


def _quic_initial(data: bytes, off: int) -> bool:
    b0 = data[off]
    if b0 & 0x30:  # long-header packet type 0 is Initial
        return False
    if _U32.unpack_from(data, off + 1)[0] != _QUIC_V1:
        return False
    dcid_len = data[off + 5]
    n = len(data) - off
    if dcid_len > 20 or n < 7 + dcid_len:
        return False
    scid_len = data[off + 6 + dcid_len]
    return scid_len <= 20 and n >= 7 + dcid_len + scid_len
