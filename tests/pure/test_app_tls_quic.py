"""QUIC v1 client Initials: RFC 9001's keys, real Initials from aioquic (single and several
datagrams, in and out of order), hand-built Initials with CRYPTO frames out of order, JA4 with
the 'q' prefix against ja4plus, malformed input."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ips.app import quic
from ips.app.ja import ja4
from ips.app.quic import (
    NEED_MORE,
    QuicClientHello,
    QuicInitialReader,
    client_initial_keys,
    crypto_fragments,
    is_client_initial,
    parse_client_initial,
)
from ips.core.packet import Malformed

aioquic = pytest.importorskip("aioquic")


def aioquic_initials(server_name: str, alpn: list[str]) -> list[bytes]:
    """The datagrams of a real client's first flight (aioquic, test-only)."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    config = QuicConfiguration(is_client=True, alpn_protocols=alpn, server_name=server_name)
    connection = QuicConnection(configuration=config)
    connection.connect(("192.0.2.1", 443), now=0.0)
    return [data for data, _ in connection.datagrams_to_send(now=0.0)]


def test_rfc9001_appendix_a_client_keys() -> None:
    keys = client_initial_keys(bytes.fromhex("8394c8f03e515708"))
    assert keys.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert keys.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert keys.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_aioquic_initial_gives_sni_alpn_and_a_quic_ja4() -> None:
    datagrams = aioquic_initials("blocked.lab", ["h3"])
    assert len(datagrams) == 1 and is_client_initial(datagrams[0])
    result = parse_client_initial(datagrams[0])
    assert isinstance(result, QuicClientHello)
    assert result.sni == "blocked.lab"
    assert result.alpn == (b"h3",)
    assert ja4(result.hello, "q").startswith("q13d")
    assert ja4(result.hello, "q")[8:10] == "h3"


def test_quic_ja4_equals_ja4plus() -> None:
    pytest.importorskip("ja4plus")
    from ja4plus import JA4Fingerprinter
    from scapy.layers.inet import IP, UDP
    from scapy.packet import Raw

    for name, alpn in (("ok.lab", ["h3"]), ("a.example", ["hq-interop", "h3"])):
        datagram = aioquic_initials(name, alpn)[0]
        fingerprinter = JA4Fingerprinter()
        packet = IP(src="192.0.2.2", dst="192.0.2.1") / UDP(sport=50000, dport=443) / Raw(datagram)
        theirs = fingerprinter.process_packet(IP(bytes(packet)))
        result = parse_client_initial(datagram)
        assert isinstance(result, QuicClientHello)
        assert theirs is not None and ja4(result.hello, "q") == theirs


def test_client_hello_across_several_initials_in_any_order() -> None:
    # Many long ALPN names make the ClientHello ~4 KiB: aioquic sends it in 4 Initials.
    alpn = [f"proto-{i:02d}-" + "x" * 180 for i in range(20)]
    datagrams = aioquic_initials("big.lab", alpn)
    assert len(datagrams) >= 3
    for order in (datagrams, datagrams[::-1], datagrams[1:] + datagrams[:1]):
        reader = QuicInitialReader()
        for datagram in order[:-1]:
            assert reader.feed(datagram) is NEED_MORE
        result = reader.feed(order[-1])
        assert isinstance(result, QuicClientHello), result
        assert result.sni == "big.lab"
        assert result.alpn == tuple(a.encode() for a in alpn)
        assert result.initials == len(datagrams)


# --- hand-built Initials -----------------------------------------------------------------


def varint(value: int) -> bytes:
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return struct.pack("!H", 0x4000 | value)
    return struct.pack("!I", 0x80000000 | value)


def crypto(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def build_initial(dcid: bytes, frames: bytes, pn: int = 0, version: int = 1) -> bytes:
    """A client Initial protected as RFC 9001 says, padded to 1200 bytes."""
    keys = client_initial_keys(dcid)
    scid = b"\x11\x22\x33\x44"
    head_len = 1 + 4 + 1 + len(dcid) + 1 + len(scid) + 1 + 2 + 2
    payload = frames + bytes(max(0, 1200 - head_len - len(frames) - 16))
    length = 2 + len(payload) + 16
    first = 0xC0 | 0x01  # Initial, 2-byte packet number
    header = (
        bytes([first])
        + struct.pack("!I", version)
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + varint(0)
        + struct.pack("!H", 0x4000 | length)
        + struct.pack("!H", pn)
    )
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, payload, header)
    sample = sealed[2:18]  # 4 bytes after the packet number's start
    mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sample)
    protected = bytearray(header)
    protected[0] ^= mask[0] & 0x0F
    protected[-2] ^= mask[1]
    protected[-1] ^= mask[2]
    return bytes(protected) + sealed


def hello_message() -> bytes:
    from test_app_tls import alpn_ext, client_hello_message, ext, sni_ext

    extensions = sni_ext("hand.lab") + alpn_ext([b"h3"]) + ext(43, b"\x02\x03\x04")
    return client_hello_message(extensions, [0x1301, 0x1302])


def test_crypto_frames_out_of_order_with_ping_ack_and_padding() -> None:
    message = hello_message()
    a, b, c = message[:40], message[40:90], message[90:]
    frames = (
        b"\x01"  # PING
        + crypto(90, c)
        + b"\x00\x00\x00"  # PADDING between frames
        + b"\x02"
        + varint(0)
        + varint(0)
        + varint(1)
        + varint(0)
        + varint(0)
        + varint(0)  # ACK with one extra range
        + crypto(40, b)
        + crypto(0, a)
        + crypto(10, a[10:30])  # an overlapping repeat
    )
    result = parse_client_initial(build_initial(b"\xaa" * 8, frames))
    assert isinstance(result, QuicClientHello)
    assert result.sni == "hand.lab" and result.alpn == (b"h3",)
    assert ja4(result.hello, "q").startswith("q13d0203h3_")


def test_gap_waits_then_fills_from_the_next_packet() -> None:
    message = hello_message()
    dcid = bytes(range(8))
    reader = QuicInitialReader()
    assert reader.feed(build_initial(dcid, crypto(50, message[50:]), pn=1)) is NEED_MORE
    result = reader.feed(build_initial(dcid, crypto(0, message[:50]), pn=0))
    assert isinstance(result, QuicClientHello) and result.sni == "hand.lab"


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"\x40" + bytes(1300), "quic.not-long-header"),
        (
            build_initial(b"\x01" * 8, crypto(0, b"\x01"), version=0x6B3343CF),
            "quic.unsupported-version",
        ),
        (b"\xc0\x00\x00\x00\x01\x15" + bytes(1300), "quic.bad-connection-id"),
        (b"\xc0\x00\x00\x00\x01\x08\x01\x02", "quic.header-truncated"),
    ],
)
def test_malformed_datagrams(datagram: bytes, reason: str) -> None:
    result = parse_client_initial(datagram)
    assert isinstance(result, Malformed) and result.reason == reason
    assert reason in quic.REASONS


def test_tampered_initial_fails_authentication() -> None:
    datagram = bytearray(build_initial(b"\x05" * 8, crypto(0, hello_message())))
    datagram[100] ^= 1
    result = parse_client_initial(bytes(datagram))
    assert isinstance(result, Malformed) and result.reason == "quic.decrypt-failed"


def test_frames_not_allowed_in_initial_and_broken_frames() -> None:
    assert crypto_fragments(b"\x08\x00") == Malformed("quic.frame-not-allowed")  # STREAM
    assert crypto_fragments(b"\x06\x00\x40") == Malformed("quic.bad-frame")
    assert crypto_fragments(b"\x06\x00\x05abc") == Malformed("quic.bad-frame")
    assert crypto_fragments(b"\x1c\x00\x00\x05ab") == Malformed("quic.bad-frame")
    assert crypto_fragments(b"\x00" * 1000 + b"\x01") == []


def test_crypto_bounds() -> None:
    far = parse_client_initial(build_initial(b"\x07" * 8, crypto(70000, b"x")))
    assert far == Malformed("quic.crypto-too-long")
    many = b"".join(crypto(200 + i * 2, b"yy") for i in range(80))
    assert parse_client_initial(build_initial(b"\x07" * 8, many)) == Malformed(
        "quic.too-many-crypto-fragments"
    )
