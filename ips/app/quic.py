"""QUIC v1 client Initial: decryption (RFC 9001) and the ClientHello inside.

A QUIC client's first packets are Initial packets protected with keys that anyone can derive
from the Destination Connection ID the client chose (RFC 9001 5.2): an observer can read the
ClientHello, so SNI, ALPN and JA4 are available as for TLS over TCP. The steps:

  keys      initial_secret = HKDF-Extract(salt v1, client DCID);
            client secret  = HKDF-Expand-Label(initial_secret, "client in", 32);
            key, iv, hp    = HKDF-Expand-Label(client secret, "quic key"/"quic iv"/"quic hp")
  header    remove header protection: AES-ECB(hp, 16-byte sample) masks the first byte's low
            bits and the packet number bytes
  payload   AES-128-GCM(key, iv XOR packet number, AAD = the unprotected header)
  frames    PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE (RFC 9000 17.2.2 allows no others);
            CRYPTO data is reassembled by offset, across frames and packets, in any order
  hello     the CRYPTO stream is a bare TLS handshake stream: `tls.parse_client_hello_message`

The HKDF steps use the standard library (HMAC-SHA256); AES comes from the maintained
`cryptography` package. The per-flow state (keys, CRYPTO fragments) lives in a
`QuicInitialReader`, one per flow; nothing global. Malformed input gives a `Malformed` with a
reason from `REASONS` ("quic.*", or the TLS parser's "tls.*" for a broken ClientHello).

Only QUIC version 1 is read; version 2 (RFC 9369, other salt and labels) and draft versions
answer "quic.unsupported-version".
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ips.app.tls import NEED_MORE, ClientHello, NeedMore, parse_client_hello_message
from ips.core.packet import Malformed

__all__ = [
    "INITIAL_SALT_V1",
    "NEED_MORE",
    "REASONS",
    "CryptoStream",
    "InitialKeys",
    "InitialPacket",
    "QuicClientHello",
    "QuicInitialReader",
    "client_initial_keys",
    "crypto_fragments",
    "decrypt_initials",
    "is_client_initial",
    "parse_client_initial",
]

INITIAL_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
QUIC_V1 = 0x00000001

_reasons: list[str] = []


def _m(reason: str) -> Malformed:
    _reasons.append(reason)
    return Malformed(reason)


M_NOT_LONG_HEADER = _m("quic.not-long-header")
M_UNSUPPORTED_VERSION = _m("quic.unsupported-version")
M_NOT_INITIAL = _m("quic.not-initial")
M_HEADER_TRUNCATED = _m("quic.header-truncated")
M_BAD_CID = _m("quic.bad-connection-id")
M_BAD_LENGTH = _m("quic.bad-length")
M_DECRYPT_FAILED = _m("quic.decrypt-failed")
M_BAD_FRAME = _m("quic.bad-frame")
M_FRAME_NOT_ALLOWED = _m("quic.frame-not-allowed")
M_CRYPTO_TOO_LONG = _m("quic.crypto-too-long")
M_TOO_MANY_FRAGMENTS = _m("quic.too-many-crypto-fragments")
M_TOO_MANY_PACKETS = _m("quic.too-many-initials")

REASONS: tuple[str, ...] = tuple(_reasons)
"""Every reason code this module can return itself (the TLS parser's come on top)."""

MAX_CID = 20  # RFC 9000 17.2: connection IDs of version 1 are at most 20 bytes
MAX_COALESCED = 8  # long-header packets read from one datagram
MAX_CRYPTO = 1 << 16  # a ClientHello with post-quantum shares is ~2 KiB; 64 KiB is generous
MAX_FRAGMENTS = 64  # CRYPTO fragments held per flow (one per frame)
MAX_INITIALS = 16  # Initial packets read per flow before giving up
MAX_ACK_RANGES = 256

_TYPE_INITIAL = 0
_U32 = struct.Struct("!I")


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    # One HMAC block is enough: every output here is at most 32 bytes (RFC 5869 2.3).
    return hmac.new(secret, info + b"\x01", hashlib.sha256).digest()[:length]


class InitialKeys:
    """The client's Initial packet protection keys for one Destination Connection ID."""

    __slots__ = ("aead", "hp", "iv", "key")

    def __init__(self, key: bytes, iv: bytes, hp: bytes) -> None:
        self.key = key
        self.iv = iv
        self.hp = hp
        self.aead = AESGCM(key)

    def mask(self, sample: bytes) -> bytes:
        encryptor = Cipher(algorithms.AES(self.hp), modes.ECB()).encryptor()
        return encryptor.update(sample)


def client_initial_keys(dcid: bytes, salt: bytes = INITIAL_SALT_V1) -> InitialKeys:
    """RFC 9001 5.2: the client's Initial keys from the DCID of its first Initial."""
    initial_secret = hmac.new(salt, dcid, hashlib.sha256).digest()
    client_secret = _hkdf_expand_label(initial_secret, b"client in", 32)
    return InitialKeys(
        _hkdf_expand_label(client_secret, b"quic key", 16),
        _hkdf_expand_label(client_secret, b"quic iv", 12),
        _hkdf_expand_label(client_secret, b"quic hp", 16),
    )


def _varint(b: bytes, p: int, end: int) -> tuple[int, int] | None:
    """(value, next offset) of the RFC 9000 variable-length integer at p, or None."""
    if p >= end:
        return None
    first = b[p]
    size = 1 << (first >> 6)
    if p + size > end:
        return None
    value = first & 0x3F
    for i in range(p + 1, p + size):
        value = (value << 8) | b[i]
    return value, p + size


def is_client_initial(datagram: bytes) -> bool:
    """Cheap test for protocol detection: a long-header QUIC v1 Initial packet, padded to the
    1200 bytes a client's Initial datagram must have (RFC 9000 14.1)."""
    return (
        len(datagram) >= 1200
        and datagram[0] & 0xF0 == 0xC0
        and _U32.unpack_from(datagram, 1)[0] == QUIC_V1
    )


class InitialPacket:
    """One decrypted Initial packet: header fields and the plaintext frames."""

    __slots__ = ("dcid", "packet_number", "payload", "scid", "token")

    def __init__(
        self, dcid: bytes, scid: bytes, token: bytes, packet_number: int, payload: bytes
    ) -> None:
        self.dcid = dcid
        self.scid = scid
        self.token = token
        self.packet_number = packet_number
        self.payload = payload


def decrypt_initials(
    datagram: bytes, keys: InitialKeys | None = None
) -> tuple[list[InitialPacket], InitialKeys | None] | Malformed:
    """Decrypt the Initial packets coalesced in one client datagram. Other long-header packets
    (0-RTT, Handshake) are stepped over; a short-header packet ends the walk. Without `keys`
    they are derived from the first Initial's DCID (and returned, for the flow's next
    datagrams)."""
    n = len(datagram)
    if n < 7 or not datagram[0] & 0x80:
        return M_NOT_LONG_HEADER
    packets: list[InitialPacket] = []
    p = 0
    for _ in range(MAX_COALESCED):
        if p >= n or not datagram[p] & 0x80:
            break
        got = _one_packet(datagram, p, n, keys)
        if isinstance(got, Malformed):
            if packets:
                break  # junk after a good Initial: RFC 9000 12.2 lets a receiver drop it
            return got
        end, packet, keys = got
        if packet is not None:
            packets.append(packet)
        p = end
    if not packets:
        return M_NOT_INITIAL
    return packets, keys


def _one_packet(
    b: bytes, start: int, n: int, keys: InitialKeys | None
) -> tuple[int, InitialPacket | None, InitialKeys | None] | Malformed:
    if start + 7 > n:
        return M_HEADER_TRUNCATED
    first = b[start]
    (version,) = _U32.unpack_from(b, start + 1)
    if version != QUIC_V1:
        return M_UNSUPPORTED_VERSION
    if not first & 0x40:
        return M_NOT_LONG_HEADER  # the fixed bit must be set
    p = start + 5
    dlen = b[p]
    if dlen > MAX_CID:
        return M_BAD_CID
    p += 1
    if p + dlen + 1 > n:
        return M_HEADER_TRUNCATED
    dcid = b[p : p + dlen]
    p += dlen
    slen = b[p]
    if slen > MAX_CID:
        return M_BAD_CID
    p += 1
    if p + slen > n:
        return M_HEADER_TRUNCATED
    scid = b[p : p + slen]
    p += slen
    ptype = (first >> 4) & 3
    token = b""
    if ptype == _TYPE_INITIAL:
        got = _varint(b, p, n)
        if got is None:
            return M_HEADER_TRUNCATED
        tlen, p = got
        if p + tlen > n:
            return M_HEADER_TRUNCATED
        token = b[p : p + tlen]
        p += tlen
    elif ptype == 3:
        return M_NOT_INITIAL  # Retry: sent by servers only
    got = _varint(b, p, n)
    if got is None:
        return M_HEADER_TRUNCATED
    length, pn_offset = got
    end = pn_offset + length
    if end > n or length < 20:
        return M_BAD_LENGTH
    if ptype != _TYPE_INITIAL:
        return end, None, keys
    if keys is None:
        keys = client_initial_keys(dcid)
    sample = b[pn_offset + 4 : pn_offset + 20]
    mask = keys.mask(sample)
    first_plain = first ^ (mask[0] & 0x0F)
    pn_len = (first_plain & 3) + 1
    pn_bytes = bytes(
        x ^ y for x, y in zip(b[pn_offset : pn_offset + pn_len], mask[1:], strict=False)
    )
    packet_number = int.from_bytes(pn_bytes, "big")
    header = bytes((first_plain,)) + b[start + 1 : pn_offset] + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    try:
        payload = keys.aead.decrypt(nonce, b[pn_offset + pn_len : end], header)
    except InvalidTag:
        return M_DECRYPT_FAILED
    return end, InitialPacket(dcid, scid, token, packet_number, payload), keys


def _skip_varints(b: bytes, p: int, end: int, count: int) -> int | None:
    for _ in range(count):
        got = _varint(b, p, end)
        if got is None:
            return None
        p = got[1]
    return p


def crypto_fragments(payload: bytes) -> list[tuple[int, bytes]] | Malformed:
    """The (offset, data) of every CRYPTO frame of a decrypted Initial payload."""
    out: list[tuple[int, bytes]] = []
    p = 0
    n = len(payload)
    while p < n:
        kind = payload[p]
        if kind == 0x00:  # PADDING: skip the whole run at C speed
            p = n - len(payload[p:].lstrip(b"\x00"))
            continue
        p += 1
        if kind == 0x01:  # PING
            continue
        if kind == 0x06:  # CRYPTO: offset, length, data
            got = _varint(payload, p, n)
            if got is None:
                return M_BAD_FRAME
            offset, p = got
            got = _varint(payload, p, n)
            if got is None:
                return M_BAD_FRAME
            length, p = got
            if p + length > n:
                return M_BAD_FRAME
            out.append((offset, payload[p : p + length]))
            p += length
        elif kind in (0x02, 0x03):  # ACK: largest, delay, range count, first range, ranges
            after_delay = _skip_varints(payload, p, n, 2)
            count = _varint(payload, after_delay, n) if after_delay is not None else None
            if count is None or count[0] > MAX_ACK_RANGES:
                return M_BAD_FRAME
            q = _skip_varints(payload, count[1], n, 1 + 2 * count[0] + (3 if kind == 0x03 else 0))
            if q is None:
                return M_BAD_FRAME
            p = q
        elif kind == 0x1C:  # CONNECTION_CLOSE: error code, frame type, reason
            q = _skip_varints(payload, p, n, 2)
            got = _varint(payload, q, n) if q is not None else None
            if got is None or got[1] + got[0] > n:
                return M_BAD_FRAME
            p = got[1] + got[0]
        else:
            return M_FRAME_NOT_ALLOWED
    return out


class CryptoStream:
    """Bounded reassembly of CRYPTO data by offset; overlapping bytes: the first copy wins."""

    __slots__ = ("fragments", "size")

    def __init__(self) -> None:
        self.fragments: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, offset: int, data: bytes) -> Malformed | None:
        if offset + len(data) > MAX_CRYPTO:
            return M_CRYPTO_TOO_LONG
        if len(self.fragments) >= MAX_FRAGMENTS:
            return M_TOO_MANY_FRAGMENTS
        if data:
            self.fragments.append((offset, data))
            self.size += len(data)
        return None

    def contiguous(self) -> bytes:
        """The bytes from offset 0 up to the first gap."""
        out = bytearray()
        for offset, data in sorted(self.fragments, key=lambda f: f[0]):
            if offset > len(out):
                break
            if offset + len(data) > len(out):
                out += data[len(out) - offset :]
        return bytes(out)


class QuicClientHello:
    """The ClientHello of a QUIC client, with the connection IDs of its first Initial."""

    __slots__ = ("dcid", "hello", "initials", "scid", "version")

    def __init__(
        self, hello: ClientHello, dcid: bytes, scid: bytes, initials: int, version: int = QUIC_V1
    ) -> None:
        self.hello = hello
        self.dcid = dcid
        self.scid = scid
        self.initials = initials
        self.version = version

    @property
    def sni(self) -> str | None:
        return self.hello.sni

    @property
    def alpn(self) -> tuple[bytes, ...]:
        return self.hello.alpn

    def __repr__(self) -> str:
        return f"QuicClientHello(dcid={self.dcid.hex()} {self.hello!r})"


class QuicInitialReader:
    """Per-flow state for the client side of a QUIC connection: feed each client datagram in
    arrival order until the answer is not NEED_MORE. The keys come from the DCID of the first
    Initial (the client keeps them even after it switches DCID, RFC 9001 5.2)."""

    __slots__ = ("crypto", "dcid", "initials", "keys", "scid")

    def __init__(self) -> None:
        self.keys: InitialKeys | None = None
        self.dcid = b""
        self.scid = b""
        self.crypto = CryptoStream()
        self.initials = 0

    def feed(self, datagram: bytes) -> QuicClientHello | NeedMore | Malformed:
        got = decrypt_initials(datagram, self.keys)
        if isinstance(got, Malformed):
            return got
        packets, keys = got
        if self.keys is None:
            self.keys = keys
            self.dcid = packets[0].dcid
            self.scid = packets[0].scid
        for packet in packets:
            self.initials += 1
            if self.initials > MAX_INITIALS:
                return M_TOO_MANY_PACKETS
            fragments = crypto_fragments(packet.payload)
            if isinstance(fragments, Malformed):
                return fragments
            for offset, data in fragments:
                problem = self.crypto.add(offset, data)
                if problem is not None:
                    return problem
        hello = parse_client_hello_message(self.crypto.contiguous())
        if isinstance(hello, ClientHello):
            return QuicClientHello(hello, self.dcid, self.scid, self.initials)
        return hello


def parse_client_initial(datagram: bytes) -> QuicClientHello | NeedMore | Malformed:
    """The ClientHello of a client's first datagram, when it fits in it (else NEED_MORE: use a
    `QuicInitialReader` to follow the flow)."""
    return QuicInitialReader().feed(datagram)
