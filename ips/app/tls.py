"""TLS handshake parser: ClientHello, ServerHello and the server's first certificate.

Input is the start of one direction of a TCP stream as the reassembler hands it over (a bytes
buffer that grows as segments arrive). The hello may span several TLS records and several
segments; each call re-reads the buffer from its start and answers:

  a result      the message is complete and well-formed (`ClientHello`, `ServerHello`,
                `ServerFlight`)
  NEED_MORE     the bytes so far are a valid prefix; call again with more
  Malformed     the bytes cannot be TLS, or break the format; `reason` is a stable code from
                `REASONS` (a counter label), e.g. "tls.not-handshake", "tls.bad-extension"

The work is bounded by the buffer, which the reassembler bounds: every length read from the
wire is checked against the bytes present before it is used, loops advance by at least one
byte, and counts of list items are capped where a list is not consumed linearly.

QUIC carries the same handshake messages without TLS records (in CRYPTO frames):
`parse_client_hello_message` reads that form.

Certificates (TLS <= 1.2 only: TLS 1.3 encrypts them) are parsed by hand from DER, minimally:
serial, issuer, subject, validity, SHA-1 of the DER. Certificates are rare (once per flow),
but a hand parser keeps the dependency off the packet path and never raises.
"""

from __future__ import annotations

import hashlib
import struct

from ips.core.packet import Malformed

__all__ = [
    "NEED_MORE",
    "REASONS",
    "Certificate",
    "ClientHello",
    "NeedMore",
    "ServerFlight",
    "ServerHello",
    "bytes_wanted",
    "parse_certificate",
    "parse_client_hello",
    "parse_client_hello_message",
    "parse_server_flight",
    "parse_server_hello",
]


class NeedMore:
    """The bytes so far are a valid prefix of the message: call again with more."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = NeedMore()

_reasons: list[str] = []


def _m(reason: str) -> Malformed:
    _reasons.append(reason)
    return Malformed(reason)


M_NOT_HANDSHAKE = _m("tls.not-handshake")  # first record is not a handshake record
M_BAD_RECORD_VERSION = _m("tls.bad-record-version")
M_RECORD_TOO_LONG = _m("tls.record-too-long")
M_EMPTY_RECORD = _m("tls.empty-record")
M_TOO_MANY_RECORDS = _m("tls.too-many-records")  # a hello cut into hundreds of tiny records
M_UNEXPECTED_MESSAGE = _m("tls.unexpected-message")  # e.g. a ServerHello on the client side
M_HANDSHAKE_TOO_LONG = _m("tls.handshake-too-long")
M_INTERRUPTED = _m("tls.hello-interrupted")  # another record type before the hello ended
M_HELLO_TRUNCATED = _m("tls.hello-truncated")  # a length inside the hello overruns it
M_BAD_SESSION_ID = _m("tls.bad-session-id")
M_BAD_CIPHERS = _m("tls.bad-cipher-suites")
M_BAD_COMPRESSION = _m("tls.bad-compression")
M_BAD_EXTENSIONS = _m("tls.bad-extensions")  # the extension block's length is wrong
M_BAD_EXTENSION = _m("tls.bad-extension")  # a known extension's inner lengths are wrong
M_TOO_MANY_EXTENSIONS = _m("tls.too-many-extensions")
M_BAD_CERTIFICATE_MESSAGE = _m("tls.bad-certificate-message")
M_X509_BAD_DER = _m("x509.bad-der")
M_X509_BAD_NAME = _m("x509.bad-name")
M_X509_BAD_TIME = _m("x509.bad-time")

REASONS: tuple[str, ...] = tuple(_reasons)
"""Every reason code this module can return (for counters and documentation)."""

CONTENT_HANDSHAKE = 22
CONTENT_CHANGE_CIPHER_SPEC = 20
HS_CLIENT_HELLO = 1
HS_SERVER_HELLO = 2
HS_CERTIFICATE = 11

EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_KEY_SHARE = 51

TLS13 = 0x0304

# RFC 8446 5.1: a plaintext record carries at most 2^14 bytes; 2^14 + 2048 is the bound for
# any record (ciphertext), so anything longer is not TLS.
MAX_RECORD = (1 << 14) + 2048
# A ClientHello with several post-quantum key shares stays under 8 KiB; a certificate chain can
# reach tens of KiB. Longer handshake messages are refused rather than waited for.
MAX_HANDSHAKE = 1 << 17
# Stacks put a hello in one record (two at most); splitting it into tiny records is legal but
# only useful for evasion, and would make every call walk thousands of records.
MAX_RECORDS = 256
MAX_EXTENSIONS = 128  # real clients send 10-25; GREASE and padding included
MAX_LIST_ITEMS = 512  # entries kept from one list (ciphers, groups...): bounds memory

# The SHA-256 of "HelloRetryRequest" (RFC 8446 4.1.3): a ServerHello with this random is an HRR.
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

_REC = struct.Struct("!BHH")  # content type, version, length
_U16 = struct.Struct("!H")
_U16x2 = struct.Struct("!HH")


class ClientHello:
    """A parsed ClientHello. Lists keep wire order and GREASE values (the fingerprints drop
    them); `extensions` holds every extension type in order, repeats included.

    version             legacy_version (0x0303 for TLS 1.2 and 1.3)
    record_version      version of the first record (0 when read from QUIC CRYPTO frames)
    random, session_id  bytes
    ciphers             tuple of cipher suite numbers
    compression         bytes (compression method numbers)
    extensions          tuple of extension types
    sni                 first host_name of server_name, as text (None when absent)
    sni_present         the server_name extension exists (JA4 'd' vs 'i')
    alpn                tuple of protocol names as bytes
    supported_versions  tuple of versions from supported_versions
    supported_groups    tuple of named groups
    ec_point_formats    tuple of point format numbers
    signature_algorithms tuple of signature schemes
    key_shares          tuple of (group, key length) pairs
    length              bytes of the handshake message (header included)
    """

    __slots__ = (
        "alpn",
        "ciphers",
        "compression",
        "ec_point_formats",
        "extensions",
        "key_shares",
        "length",
        "random",
        "record_version",
        "session_id",
        "signature_algorithms",
        "sni",
        "sni_present",
        "supported_groups",
        "supported_versions",
        "version",
    )

    def __init__(self) -> None:
        self.record_version = 0
        self.version = 0
        self.random = b""
        self.session_id = b""
        self.ciphers: tuple[int, ...] = ()
        self.compression = b""
        self.extensions: tuple[int, ...] = ()
        self.sni: str | None = None
        self.sni_present = False
        self.alpn: tuple[bytes, ...] = ()
        self.supported_versions: tuple[int, ...] = ()
        self.supported_groups: tuple[int, ...] = ()
        self.ec_point_formats: tuple[int, ...] = ()
        self.signature_algorithms: tuple[int, ...] = ()
        self.key_shares: tuple[tuple[int, int], ...] = ()
        self.length = 0

    @property
    def max_version(self) -> int:
        """The highest version offered: from supported_versions (GREASE aside) if present,
        else legacy_version."""
        best = 0
        for v in self.supported_versions:
            if not ((v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)) and v > best:
                best = v
        return best or self.version

    def __repr__(self) -> str:
        return (
            f"ClientHello(version={self.version:#06x} sni={self.sni!r} "
            f"alpn={list(self.alpn)} ciphers={len(self.ciphers)} "
            f"extensions={len(self.extensions)})"
        )


class ServerHello:
    """A parsed ServerHello.

    version             legacy_version
    selected_version    from supported_versions (TLS 1.3), else legacy_version
    cipher              the chosen cipher suite
    compression         the chosen compression method
    extensions          tuple of extension types in order
    alpn                the chosen protocol (bytes) or None
    key_share_group     the group of the server's key share (TLS 1.3) or None
    hello_retry         this is a HelloRetryRequest
    """

    __slots__ = (
        "alpn",
        "cipher",
        "compression",
        "extensions",
        "hello_retry",
        "key_share_group",
        "length",
        "random",
        "record_version",
        "selected_version",
        "session_id",
        "version",
    )

    def __init__(self) -> None:
        self.record_version = 0
        self.version = 0
        self.selected_version = 0
        self.random = b""
        self.session_id = b""
        self.cipher = 0
        self.compression = 0
        self.extensions: tuple[int, ...] = ()
        self.alpn: bytes | None = None
        self.key_share_group: int | None = None
        self.hello_retry = False
        self.length = 0

    def __repr__(self) -> str:
        return (
            f"ServerHello(version={self.selected_version:#06x} cipher={self.cipher:#06x} "
            f"alpn={self.alpn!r})"
        )


class Certificate:
    """The fields of an X.509 certificate that monitoring needs.

    serial          the serialNumber INTEGER's content bytes
    issuer, subject Suricata-style text, "C=US, O=Org, CN=name" (attributes in DER order)
    issuer_rdns,    tuples of (OID dotted string, value text), one per attribute, in order
    subject_rdns
    not_before,     "YYYY-MM-DDTHH:MM:SS" (UTC)
    not_after
    sha1            hex SHA-1 of the DER (lower case, no separators)
    """

    __slots__ = (
        "issuer",
        "issuer_rdns",
        "not_after",
        "not_before",
        "serial",
        "sha1",
        "subject",
        "subject_rdns",
    )

    def __init__(
        self,
        serial: bytes,
        issuer_rdns: tuple[tuple[str, str], ...],
        subject_rdns: tuple[tuple[str, str], ...],
        not_before: str,
        not_after: str,
        sha1: str,
    ) -> None:
        self.serial = serial
        self.issuer_rdns = issuer_rdns
        self.subject_rdns = subject_rdns
        self.issuer = _name_text(issuer_rdns)
        self.subject = _name_text(subject_rdns)
        self.not_before = not_before
        self.not_after = not_after
        self.sha1 = sha1

    @property
    def serial_text(self) -> str:
        """Suricata's form: upper-case hex bytes joined by colons."""
        return ":".join(f"{b:02X}" for b in self.serial)

    @property
    def fingerprint(self) -> str:
        """Suricata's form of the SHA-1: lower-case hex bytes joined by colons."""
        s = self.sha1
        return ":".join(s[i : i + 2] for i in range(0, len(s), 2))

    def __repr__(self) -> str:
        return f"Certificate(subject={self.subject!r} issuer={self.issuer!r})"


class ServerFlight:
    """The server's first messages: the ServerHello and, for TLS <= 1.2 with a full handshake,
    the first certificate of the Certificate message (None otherwise). `certificate_error` is
    the Malformed reason when the Certificate message was there but its first certificate could
    not be read (the ServerHello is still good)."""

    __slots__ = ("certificate", "certificate_error", "server_hello")

    def __init__(
        self,
        server_hello: ServerHello,
        certificate: Certificate | None,
        certificate_error: str | None = None,
    ) -> None:
        self.server_hello = server_hello
        self.certificate = certificate
        self.certificate_error = certificate_error

    def __repr__(self) -> str:
        return f"ServerFlight({self.server_hello!r}, {self.certificate!r})"


# ---------------------------------------------------------------------------------------------
# Records -> handshake bytes


def _handshake_bytes(buf: bytes) -> tuple[bytes | memoryview, bool, int] | Malformed:
    """The handshake-layer bytes carried by the complete records at the start of `buf`.

    Returns (stream, stopped, record_version): `stopped` is True when a record of another
    content type follows the handshake records (nothing after it is handshake data of this
    flight); False when the buffer ended (more may come). A single record is returned as a
    memoryview without copying.
    """
    n = len(buf)
    if n == 0:
        return memoryview(b""), False, 0
    if buf[0] != CONTENT_HANDSHAKE:
        return M_NOT_HANDSHAKE
    if n >= 2 and buf[1] != 3:
        return M_BAD_RECORD_VERSION
    if n < 5:
        return memoryview(b""), False, 0
    ctype, first_version, length = _REC.unpack_from(buf, 0)
    if first_version > 0x0304:
        return M_BAD_RECORD_VERSION
    if length > MAX_RECORD:
        return M_RECORD_TOO_LONG
    if length == 0:
        return M_EMPTY_RECORD
    if 5 + length >= n:
        # The common case: the buffer holds one record (or the start of one).
        return memoryview(buf)[5 : 5 + length], False, first_version
    parts = [memoryview(buf)[5 : 5 + length]]
    p = 5 + length
    stopped = False
    while p + 5 <= n:
        if len(parts) >= MAX_RECORDS:
            return M_TOO_MANY_RECORDS
        ctype, version, length = _REC.unpack_from(buf, p)
        if ctype != CONTENT_HANDSHAKE:
            stopped = True
            break
        if version >> 8 != 3 or version > 0x0304:
            return M_BAD_RECORD_VERSION
        if length > MAX_RECORD:
            return M_RECORD_TOO_LONG
        if length == 0:
            return M_EMPTY_RECORD
        if p + 5 + length > n:
            parts.append(memoryview(buf)[p + 5 : n])  # usable only once complete; see below
            break
        parts.append(memoryview(buf)[p + 5 : p + 5 + length])
        p += 5 + length
    else:
        if p < n and buf[p] != CONTENT_HANDSHAKE:
            stopped = True
    return b"".join(parts), stopped, first_version


def _first_message(
    stream: bytes | memoryview, offset: int, stopped: bool, expected: int
) -> tuple[int, int] | NeedMore | Malformed:
    """Locate one handshake message of type `expected` at `offset` of the handshake stream.
    Returns (body start, body end)."""
    n = len(stream)
    if n - offset < 4:
        if n > offset and stream[offset] != expected:
            return M_UNEXPECTED_MESSAGE
        return M_INTERRUPTED if stopped else NEED_MORE
    if stream[offset] != expected:
        return M_UNEXPECTED_MESSAGE
    length = (stream[offset + 1] << 16) | (stream[offset + 2] << 8) | stream[offset + 3]
    if length > MAX_HANDSHAKE:
        return M_HANDSHAKE_TOO_LONG
    end = offset + 4 + length
    if end > n:
        return M_INTERRUPTED if stopped else NEED_MORE
    return offset + 4, end


# ---------------------------------------------------------------------------------------------
# ClientHello


def _first_record_message(
    buf: bytes, expected: int
) -> tuple[bytes | memoryview, int, int, bool, int] | NeedMore | Malformed:
    """The first handshake message of a stream of TLS records, of type `expected`: (the
    handshake stream, body start, body end, whether the records stopped, record version)."""
    got = _handshake_bytes(buf)
    if isinstance(got, Malformed):
        return got
    stream, stopped, record_version = got
    where = _first_message(stream, 0, stopped, expected)
    if not isinstance(where, tuple):
        return where
    return stream, where[0], where[1], stopped, record_version


def parse_client_hello(buf: bytes) -> ClientHello | NeedMore | Malformed:
    """Parse the ClientHello at the start of a client->server TLS stream (records included)."""
    found = _first_record_message(buf, HS_CLIENT_HELLO)
    if not isinstance(found, tuple):
        return found
    stream, start, end, _, record_version = found
    hello = _client_hello_body(stream, start, end)
    if isinstance(hello, ClientHello):
        hello.record_version = record_version
    return hello


def parse_client_hello_message(stream: bytes) -> ClientHello | NeedMore | Malformed:
    """Parse a ClientHello from a bare handshake stream (no TLS records): QUIC's CRYPTO data."""
    where = _first_message(stream, 0, False, HS_CLIENT_HELLO)
    if not isinstance(where, tuple):
        return where
    return _client_hello_body(stream, where[0], where[1])


def _client_hello_body(b: bytes | memoryview, p: int, end: int) -> ClientHello | Malformed:
    if end - p < 35:
        return M_HELLO_TRUNCATED
    h = ClientHello()
    h.length = end - p + 4
    h.version = (b[p] << 8) | b[p + 1]
    h.random = bytes(b[p + 2 : p + 34])
    sid_len = b[p + 34]
    p += 35
    if sid_len > 32:
        return M_BAD_SESSION_ID
    if p + sid_len > end:
        return M_HELLO_TRUNCATED
    h.session_id = bytes(b[p : p + sid_len])
    p += sid_len
    if p + 2 > end:
        return M_HELLO_TRUNCATED
    (clen,) = _U16.unpack_from(b, p)
    p += 2
    if clen & 1 or clen == 0:
        return M_BAD_CIPHERS
    if p + clen > end:
        return M_HELLO_TRUNCATED
    count = min(clen >> 1, MAX_LIST_ITEMS)
    h.ciphers = struct.unpack_from(f"!{count}H", b, p)
    p += clen
    if p + 1 > end:
        return M_HELLO_TRUNCATED
    comp_len = b[p]
    p += 1
    if comp_len == 0:
        return M_BAD_COMPRESSION
    if p + comp_len > end:
        return M_HELLO_TRUNCATED
    h.compression = bytes(b[p : p + comp_len])
    p += comp_len
    if p == end:
        return h  # no extensions: legal (SSL 3.0-era clients)
    if p + 2 > end:
        return M_BAD_EXTENSIONS
    (elen,) = _U16.unpack_from(b, p)
    p += 2
    if p + elen != end:
        return M_BAD_EXTENSIONS
    return _client_extensions(h, b, p, end)


def _client_extensions(
    h: ClientHello, b: bytes | memoryview, p: int, end: int
) -> ClientHello | Malformed:
    types: list[int] = []
    read = _CLIENT_EXTENSIONS_READ
    while p < end:
        if p + 4 > end:
            return M_BAD_EXTENSIONS
        etype, elen = _U16x2.unpack_from(b, p)
        p += 4
        q = p + elen
        if q > end:
            return M_BAD_EXTENSIONS
        types.append(etype)
        if len(types) > MAX_EXTENSIONS:
            return M_TOO_MANY_EXTENSIONS
        if etype not in read:
            p = q  # most extensions (GREASE, padding, tickets...) are only counted
            continue
        if etype == EXT_SERVER_NAME:
            h.sni_present = True
            if elen and h.sni is None:
                sni = _server_name(b, p, q)
                if sni is None:
                    return M_BAD_EXTENSION
                h.sni = sni
        elif etype == EXT_ALPN:
            alpn = _alpn(b, p, q)
            if alpn is None:
                return M_BAD_EXTENSION
            h.alpn = alpn
        elif etype in (EXT_SUPPORTED_GROUPS, EXT_SIGNATURE_ALGORITHMS):
            values = _u16_list(b, p, q)
            if values is None:
                return M_BAD_EXTENSION
            if etype == EXT_SUPPORTED_GROUPS:
                h.supported_groups = values
            else:
                h.signature_algorithms = values
        elif etype == EXT_SUPPORTED_VERSIONS:
            if elen < 1 or b[p] + 1 != elen or b[p] & 1:
                return M_BAD_EXTENSION
            count = min(b[p] >> 1, MAX_LIST_ITEMS)
            h.supported_versions = struct.unpack_from(f"!{count}H", b, p + 1)
        elif etype == EXT_EC_POINT_FORMATS:
            if elen < 1 or b[p] + 1 != elen:
                return M_BAD_EXTENSION
            h.ec_point_formats = tuple(b[p + 1 : q])
        elif etype == EXT_KEY_SHARE:
            shares = _key_shares(b, p, q)
            if shares is None:
                return M_BAD_EXTENSION
            h.key_shares = shares
        p = q
    h.extensions = tuple(types)
    return h


# The ClientHello extensions whose contents are read (the others are only listed).
_CLIENT_EXTENSIONS_READ = frozenset({
    EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_GROUPS, EXT_SIGNATURE_ALGORITHMS,
    EXT_SUPPORTED_VERSIONS, EXT_EC_POINT_FORMATS, EXT_KEY_SHARE,
})  # fmt: skip


def _u16_list(b: bytes | memoryview, p: int, q: int) -> tuple[int, ...] | None:
    if q - p < 2:
        return None
    (n,) = _U16.unpack_from(b, p)
    if n & 1 or p + 2 + n != q:
        return None
    return struct.unpack_from(f"!{min(n >> 1, MAX_LIST_ITEMS)}H", b, p + 2)


def _server_name(b: bytes | memoryview, p: int, q: int) -> str | None:
    """The first host_name of a server_name extension (RFC 6066 3), or None when broken."""
    if q - p < 2:
        return None
    (n,) = _U16.unpack_from(b, p)
    p += 2
    if p + n != q:
        return None
    name: str | None = None
    while p < q:
        if p + 3 > q:
            return None
        kind = b[p]
        (length,) = _U16.unpack_from(b, p + 1)
        p += 3
        if p + length > q:
            return None
        if kind == 0 and name is None:
            # Host names are ASCII (RFC 6066); anything else is kept visible, not dropped.
            name = bytes(b[p : p + length]).decode("ascii", "backslashreplace")
        p += length
    return "" if name is None else name


def _alpn(b: bytes | memoryview, p: int, q: int) -> tuple[bytes, ...] | None:
    if q - p < 2:
        return None
    (n,) = _U16.unpack_from(b, p)
    p += 2
    if p + n != q:
        return None
    names: list[bytes] = []
    while p < q:
        length = b[p]
        p += 1
        if p + length > q:
            return None
        if len(names) < MAX_LIST_ITEMS:
            names.append(bytes(b[p : p + length]))
        p += length
    return tuple(names)


def _key_shares(b: bytes | memoryview, p: int, q: int) -> tuple[tuple[int, int], ...] | None:
    if q - p < 2:
        return None
    (n,) = _U16.unpack_from(b, p)
    p += 2
    if p + n != q:
        return None
    shares: list[tuple[int, int]] = []
    while p < q:
        if p + 4 > q:
            return None
        group, length = _U16x2.unpack_from(b, p)
        p += 4 + length
        if p > q:
            return None
        if len(shares) < MAX_LIST_ITEMS:
            shares.append((group, length))
    return tuple(shares)


# ---------------------------------------------------------------------------------------------
# ServerHello and the server's flight


def parse_server_hello(buf: bytes) -> ServerHello | NeedMore | Malformed:
    """Parse the ServerHello at the start of a server->client TLS stream (records included)."""
    found = _first_record_message(buf, HS_SERVER_HELLO)
    if not isinstance(found, tuple):
        return found
    stream, start, end, _, record_version = found
    hello = _server_hello_body(stream, start, end)
    if isinstance(hello, ServerHello):
        hello.record_version = record_version
    return hello


def parse_server_flight(buf: bytes) -> ServerFlight | NeedMore | Malformed:
    """Parse the ServerHello and, for a full TLS <= 1.2 handshake, the Certificate message that
    follows it. TLS 1.3 (encrypted certificates), a HelloRetryRequest and an abbreviated
    handshake (a resumed session: no Certificate) complete with `certificate` None."""
    found = _first_record_message(buf, HS_SERVER_HELLO)
    if not isinstance(found, tuple):
        return found
    stream, start, p, stopped, record_version = found
    hello = _server_hello_body(stream, start, p)
    if isinstance(hello, Malformed):
        return hello
    hello.record_version = record_version
    if hello.selected_version >= TLS13 or hello.hello_retry:
        return ServerFlight(hello, None)
    n = len(stream)
    if n == p:
        return ServerFlight(hello, None) if stopped else NEED_MORE
    if stream[p] != HS_CERTIFICATE:
        return ServerFlight(hello, None)
    cert_where = _first_message(stream, p, stopped, HS_CERTIFICATE)
    if isinstance(cert_where, NeedMore):
        return NEED_MORE
    if isinstance(cert_where, Malformed):
        return ServerFlight(hello, None, cert_where.reason)
    cert = _first_certificate(stream, cert_where[0], cert_where[1])
    if isinstance(cert, Malformed):
        return ServerFlight(hello, None, cert.reason)
    return ServerFlight(hello, cert)


def bytes_wanted(buf: bytes, server: bool) -> int:
    """After parse_client_hello (server False) or parse_server_flight (server True) answered
    NEED_MORE on `buf`: the stream length below which more bytes cannot change that answer,
    len(buf) + 1 when any byte may. The message awaited (the ClientHello; the ServerHello,
    then the Certificate) has its length in its header, and inside a record whose length is
    known no other byte is looked at; so a caller can skip the calls until enough bytes are
    there, instead of re-reading the records from their start on every segment."""
    n = len(buf)
    p = 0
    stream = 0  # handshake bytes in the records up to p
    while p + 5 <= n:
        ctype, _version, length = _REC.unpack_from(buf, p)
        if ctype != CONTENT_HANDSHAKE:
            return n + 1
        stream += length
        p += 5 + length
    if p <= n:
        return n + 1  # the buffer ends at a record's header: its next byte is read
    # The last record is partial: its body ends at buffer offset p, stream offset `stream`.
    return _wanted_in_record(buf, n, p, stream, server)


def _wanted_in_record(buf: bytes, n: int, record_end: int, stream_end: int, server: bool) -> int:
    """bytes_wanted when the buffer ends inside a record whose body ends at record_end
    (buffer offset) and at stream_end (handshake-stream offset)."""
    have = stream_end - (record_end - n)  # handshake bytes present
    got = _handshake_bytes(buf)
    if not isinstance(got, tuple):
        return n + 1
    hs = got[0]
    if len(hs) != have:
        return n + 1  # not the layout assumed above: read on every byte
    if have < 4:
        return n + 1
    end = 4 + ((hs[1] << 16) | (hs[2] << 8) | hs[3])
    if end <= have:
        if not server or have - end < 4:
            return n + 1
        end += 4 + ((hs[end + 1] << 16) | (hs[end + 2] << 8) | hs[end + 3])
        if end <= have:
            return n + 1
    # The stream offset `end` is reached at buffer offset n + (end - have), if that lies in
    # this record; else the next record's header comes first.
    return min(n + (end - have), record_end + 1)


def _server_hello_body(b: bytes | memoryview, p: int, end: int) -> ServerHello | Malformed:
    if end - p < 35:
        return M_HELLO_TRUNCATED
    h = ServerHello()
    h.length = end - p + 4
    h.version = h.selected_version = (b[p] << 8) | b[p + 1]
    h.random = bytes(b[p + 2 : p + 34])
    h.hello_retry = h.random == HRR_RANDOM
    sid_len = b[p + 34]
    p += 35
    if sid_len > 32:
        return M_BAD_SESSION_ID
    if p + sid_len + 3 > end:
        return M_HELLO_TRUNCATED
    h.session_id = bytes(b[p : p + sid_len])
    p += sid_len
    (h.cipher,) = _U16.unpack_from(b, p)
    h.compression = b[p + 2]
    p += 3
    if p == end:
        return h
    if p + 2 > end:
        return M_BAD_EXTENSIONS
    (elen,) = _U16.unpack_from(b, p)
    p += 2
    if p + elen != end:
        return M_BAD_EXTENSIONS
    types: list[int] = []
    while p < end:
        if p + 4 > end:
            return M_BAD_EXTENSIONS
        etype, elen = _U16x2.unpack_from(b, p)
        p += 4
        q = p + elen
        if q > end:
            return M_BAD_EXTENSIONS
        types.append(etype)
        if len(types) > MAX_EXTENSIONS:
            return M_TOO_MANY_EXTENSIONS
        if etype == EXT_SUPPORTED_VERSIONS:
            if elen != 2:
                return M_BAD_EXTENSION
            (h.selected_version,) = _U16.unpack_from(b, p)
        elif etype == EXT_ALPN:
            alpn = _alpn(b, p, q)
            if alpn is None or len(alpn) != 1:
                return M_BAD_EXTENSION
            h.alpn = alpn[0]
        elif etype == EXT_KEY_SHARE:
            if elen < 2:
                return M_BAD_EXTENSION
            (h.key_share_group,) = _U16.unpack_from(b, p)
        p = q
    h.extensions = tuple(types)
    return h


def _first_certificate(b: bytes | memoryview, p: int, end: int) -> Certificate | Malformed:
    """The first certificate of a TLS 1.2 Certificate message body."""
    if end - p < 3:
        return M_BAD_CERTIFICATE_MESSAGE
    total = (b[p] << 16) | (b[p + 1] << 8) | b[p + 2]
    p += 3
    if p + total != end:
        return M_BAD_CERTIFICATE_MESSAGE
    if total == 0:
        return M_BAD_CERTIFICATE_MESSAGE  # an empty chain from a server
    if total < 3:
        return M_BAD_CERTIFICATE_MESSAGE
    length = (b[p] << 16) | (b[p + 1] << 8) | b[p + 2]
    p += 3
    if length == 0 or p + length > end:
        return M_BAD_CERTIFICATE_MESSAGE
    return parse_certificate(bytes(b[p : p + length]))


# ---------------------------------------------------------------------------------------------
# X.509, minimally, from DER


def _tlv(b: bytes, p: int, end: int) -> tuple[int, int, int] | None:
    """(tag, content start, content end) of the DER element at p, or None when broken."""
    if p + 2 > end:
        return None
    tag = b[p]
    if tag & 0x1F == 0x1F:
        return None  # high tag numbers do not occur in the fields read here
    first = b[p + 1]
    p += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or p + count > end:
            return None  # indefinite lengths are not DER
        length = int.from_bytes(b[p : p + count], "big")
        p += count
    if p + length > end:
        return None
    return tag, p, p + length


def parse_certificate(der: bytes) -> Certificate | Malformed:
    """Read serial, issuer, validity and subject from a DER certificate (no validation)."""
    n = len(der)
    cert = _tlv(der, 0, n)
    if cert is None or cert[0] != 0x30:
        return M_X509_BAD_DER
    tbs = _tlv(der, cert[1], cert[2])
    if tbs is None or tbs[0] != 0x30:
        return M_X509_BAD_DER
    p, end = tbs[1], tbs[2]
    el = _tlv(der, p, end)
    if el is not None and el[0] == 0xA0:  # [0] EXPLICIT version
        p = el[2]
        el = _tlv(der, p, end)
    if el is None or el[0] != 0x02:
        return M_X509_BAD_DER
    serial = der[el[1] : el[2]]
    sig = _tlv(der, el[2], end)
    if sig is None or sig[0] != 0x30:
        return M_X509_BAD_DER
    issuer_el = _tlv(der, sig[2], end)
    if issuer_el is None or issuer_el[0] != 0x30:
        return M_X509_BAD_DER
    validity = _tlv(der, issuer_el[2], end)
    if validity is None or validity[0] != 0x30:
        return M_X509_BAD_DER
    subject_el = _tlv(der, validity[2], end)
    if subject_el is None or subject_el[0] != 0x30:
        return M_X509_BAD_DER
    issuer = _name(der, issuer_el[1], issuer_el[2])
    subject = _name(der, subject_el[1], subject_el[2])
    if issuer is None or subject is None:
        return M_X509_BAD_NAME
    t1 = _tlv(der, validity[1], validity[2])
    t2 = _tlv(der, t1[2], validity[2]) if t1 is not None else None
    if t1 is None or t2 is None:
        return M_X509_BAD_TIME
    not_before = _time(der, t1)
    not_after = _time(der, t2)
    if not_before is None or not_after is None:
        return M_X509_BAD_TIME
    return Certificate(
        serial, issuer, subject, not_before, not_after, hashlib.sha1(der).hexdigest()
    )


MAX_NAME_ATTRIBUTES = 64

# Short names as Suricata (and OpenSSL) print them; others appear as dotted OIDs.
OID_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.15": "businessCategory",
    "2.5.4.17": "postalCode",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL",
    "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}


def _name_text(rdns: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{OID_NAMES.get(oid, oid)}={value}" for oid, value in rdns)


def _name(b: bytes, p: int, end: int) -> tuple[tuple[str, str], ...] | None:
    """A Name: SEQUENCE OF SET OF AttributeTypeAndValue, flattened in order."""
    out: list[tuple[str, str]] = []
    while p < end:
        rdn = _tlv(b, p, end)
        if rdn is None or rdn[0] != 0x31:
            return None
        p = rdn[2]
        q, rend = rdn[1], rdn[2]
        while q < rend:
            atv = _tlv(b, q, rend)
            if atv is None or atv[0] != 0x30:
                return None
            q = atv[2]
            oid_el = _tlv(b, atv[1], atv[2])
            if oid_el is None or oid_el[0] != 0x06:
                return None
            value_el = _tlv(b, oid_el[2], atv[2])
            if value_el is None:
                return None
            raw_oid = b[oid_el[1] : oid_el[2]]
            oid = _OID_TEXT.get(raw_oid)
            if oid is None:
                oid = _oid(b, oid_el[1], oid_el[2])
                if oid is not None and len(_OID_TEXT) < _OID_CACHE_SIZE:
                    _OID_TEXT[raw_oid] = oid
            if oid is None:
                return None
            out.append((oid, _string(b, value_el)))
            if len(out) > MAX_NAME_ATTRIBUTES:
                return None
    return tuple(out)


# Attribute OIDs in their dotted form, by their DER bytes: a handful (CN, O, C...) name
# nearly every certificate, so each is decoded once. Bounded: a stream of certificates with
# made-up OIDs fills it, then they are decoded each time as before.
_OID_TEXT: dict[bytes, str] = {}
_OID_CACHE_SIZE = 256


def _oid(b: bytes, p: int, end: int) -> str | None:
    if p >= end or end - p > 64:
        return None
    arcs: list[int] = []
    value = 0
    for i in range(p, end):
        c = b[i]
        value = (value << 7) | (c & 0x7F)
        if not c & 0x80:
            arcs.append(value)
            value = 0
    if b[end - 1] & 0x80:
        return None
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(map(str, head + arcs[1:]))


def _string(b: bytes, el: tuple[int, int, int]) -> str:
    tag, p, q = el
    raw = b[p:q]
    if tag == 12:  # UTF8String
        return raw.decode("utf-8", "replace")
    if tag == 30:  # BMPString
        return raw.decode("utf-16-be", "replace")
    if tag == 28:  # UniversalString
        return raw.decode("utf-32-be", "replace")
    if tag in (19, 22, 20, 26, 18, 21, 25, 27):  # Printable, IA5, T61, Visible, Numeric, ...
        return raw.decode("latin-1")
    return "#" + raw.hex()  # not a string type: shown as RFC 4514 shows it


def _time(b: bytes, el: tuple[int, int, int]) -> str | None:
    tag, p, q = el
    text = b[p:q]
    if tag == 23 and len(text) == 13 and text[12:] == b"Z" and text[:12].isdigit():
        year = int(text[:2])
        year += 1900 if year >= 50 else 2000
        rest = text[2:12].decode()
    elif tag == 24 and len(text) >= 15 and text.endswith(b"Z") and text[:14].isdigit():
        year = int(text[:4])
        rest = text[4:14].decode()
    else:
        return None
    return f"{year:04d}-{rest[0:2]}-{rest[2:4]}T{rest[4:6]}:{rest[6:8]}:{rest[8:10]}"
