"""The TLS parser and the fingerprints on built hellos: incremental input, records and
segments, GREASE, post-quantum key shares, the JA4 specification's examples, malformed input."""

from __future__ import annotations

import hashlib
import struct

import pytest

from ips.app import tls
from ips.app.ja import ja3, ja3s, ja4, ja4_raw
from ips.app.tls import (
    NEED_MORE,
    ClientHello,
    ServerFlight,
    ServerHello,
    parse_client_hello,
    parse_client_hello_message,
    parse_server_flight,
    parse_server_hello,
)
from ips.core.packet import Malformed

GREASE_CIPHER = 0x3A3A
GREASE_EXT = 0x8A8A
X25519MLKEM768 = 0x11EC


def ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def u16s(values: list[int]) -> bytes:
    return struct.pack(f"!H{len(values)}H", 2 * len(values), *values)


def sni_ext(name: str) -> bytes:
    host = name.encode()
    entry = b"\x00" + struct.pack("!H", len(host)) + host
    return ext(0, struct.pack("!H", len(entry)) + entry)


def alpn_ext(names: list[bytes]) -> bytes:
    body = b"".join(bytes([len(n)]) + n for n in names)
    return ext(16, struct.pack("!H", len(body)) + body)


def key_share_ext(shares: list[tuple[int, int]]) -> bytes:
    body = b"".join(struct.pack("!HH", g, n) + bytes(n) for g, n in shares)
    return ext(51, struct.pack("!H", len(body)) + body)


def chrome_like_extensions(sni: str = "example.com", pq: bool = True) -> bytes:
    shares = [(0x2A2A, 1), (X25519MLKEM768, 1216), (29, 32)] if pq else [(0x2A2A, 1), (29, 32)]
    return b"".join(
        [
            ext(GREASE_EXT, b""),
            sni_ext(sni),
            ext(23, b""),  # extended_master_secret
            ext(0xFF01, b"\x00"),  # renegotiation_info
            ext(10, u16s([0x2A2A, X25519MLKEM768, 29, 23, 24])),
            ext(11, b"\x01\x00"),
            ext(35, b""),
            alpn_ext([b"h2", b"http/1.1"]),
            ext(5, b"\x01\x00\x00\x00\x00"),
            ext(13, u16s([0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601])),
            ext(18, b""),
            key_share_ext(shares),
            ext(45, b"\x01\x01"),
            ext(43, b"\x06\x2a\x2a\x03\x04\x03\x03"),
            ext(27, b"\x00\x03\x00\x02\x00"),
            ext(0x1A1A, b"\x00"),
        ]
    )


CIPHERS = [GREASE_CIPHER, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9]


def client_hello_message(extensions: bytes | None, ciphers: list[int] = CIPHERS) -> bytes:
    body = (
        b"\x03\x03"
        + bytes(range(32))
        + b"\x20"
        + bytes(32)
        + u16s(ciphers)
        + b"\x01\x00"
        + (b"" if extensions is None else struct.pack("!H", len(extensions)) + extensions)
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(message: bytes, size: int = 1 << 14, version: int = 0x0301) -> bytes:
    """The handshake message cut into records of at most `size` bytes."""
    return b"".join(
        struct.pack("!BHH", 22, version, len(message[i : i + size])) + message[i : i + size]
        for i in range(0, len(message), size)
    )


def server_hello_message(extensions: bytes, version: int = 0x0303, cipher: int = 0x1301) -> bytes:
    body = (
        struct.pack("!H", version)
        + bytes(32)
        + b"\x00"
        + struct.pack("!HB", cipher, 0)
        + struct.pack("!H", len(extensions))
        + extensions
    )
    return b"\x02" + len(body).to_bytes(3, "big") + body


def test_post_quantum_client_hello_over_two_segments_parses_after_the_second() -> None:
    stream = records(client_hello_message(chrome_like_extensions("pq.example")))
    assert len(stream) > 1500  # one X25519MLKEM768 share makes it span two segments
    mss = 1448
    assert parse_client_hello(stream[:mss]) is NEED_MORE
    hello = parse_client_hello(stream)
    assert isinstance(hello, ClientHello)
    assert hello.sni == "pq.example"
    assert hello.key_shares == ((0x2A2A, 1), (X25519MLKEM768, 1216), (29, 32))
    assert hello.alpn == (b"h2", b"http/1.1")
    assert hello.supported_versions == (0x2A2A, 0x0304, 0x0303)
    assert hello.max_version == 0x0304
    assert hello.ec_point_formats == (0,)
    assert hello.record_version == 0x0301


def test_every_prefix_needs_more_and_every_record_size_gives_the_same_hello() -> None:
    message = client_hello_message(chrome_like_extensions(pq=False))
    whole = parse_client_hello(records(message))
    assert isinstance(whole, ClientHello)
    tiny = parse_client_hello(records(message, 1))  # hundreds of one-byte records: evasion
    assert isinstance(tiny, Malformed) and tiny.reason == "tls.too-many-records"
    for size in (3, 7, 100, 512):
        stream = records(message, size)
        for cut in range(len(stream)):
            assert parse_client_hello(stream[:cut]) is NEED_MORE, (size, cut)
        hello = parse_client_hello(stream)
        assert isinstance(hello, ClientHello)
        assert ja3(hello) == ja3(whole) and ja4(hello) == ja4(whole)


def test_grease_is_kept_in_the_hello_and_removed_from_the_fingerprints() -> None:
    hello = parse_client_hello(records(client_hello_message(chrome_like_extensions())))
    assert isinstance(hello, ClientHello)
    assert hello.ciphers[0] == GREASE_CIPHER and hello.extensions[0] == GREASE_EXT
    string, md5 = ja3(hello)
    assert string == (
        "771,4865-4866-4867-49195-49199-49196-49200-52393,"
        "0-23-65281-10-11-35-16-5-13-18-51-45-43-27,4588-29-23-24,0"
    )
    assert md5 == hashlib.md5(string.encode()).hexdigest()
    assert ja4(hello).startswith("t13d0814h2_")  # 8 ciphers, 14 extensions without GREASE
    raw = ja4_raw(hello)
    assert "3a3a" not in raw and "8a8a" not in raw and "1a1a" not in raw


def test_ja4_follows_the_specification_example() -> None:
    """The worked example of FoxIO's JA4.md: its cipher, extension and signature lists."""
    ciphers = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8]
    ciphers += [0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    sigs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
    order = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023]
    order += [0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]
    bodies = {
        0x0000: sni_ext("example.com")[4:],
        0x0010: alpn_ext([b"h2", b"http/1.1"])[4:],
        0x000D: u16s(sigs),
        0x002B: b"\x04\x03\x04\x03\x03",
        0x0033: struct.pack("!HHH", 36, 29, 32) + bytes(32),
        0x000A: u16s([29, 23]),
        0x000B: b"\x01\x00",
    }
    extensions = b"".join(ext(e, bodies.get(e, b"")) for e in order)
    hello = parse_client_hello(records(client_hello_message(extensions, ciphers)))
    assert isinstance(hello, ClientHello)
    assert ja4(hello) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert ja4_raw(hello) == (
        "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,"
        "cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,"
        "0804,0401,0503,0805,0501,0806,0601"
    )
    assert ja4_raw(hello, original=True).startswith(
        "t13d1516h2_1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,"
        "0035_001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,0015_"
    )
    assert ja4(hello, "q").startswith("q13d1516h2_")


@pytest.mark.parametrize(
    ("first_alpn", "expected"),
    [
        (b"h2", "h2"),
        (b"http/1.1", "h1"),
        (b"h", "hh"),
        (b"", "00"),
        (b"\xab", "ab"),
        (b"\xab\xcd", "ad"),
        (b"0\xab", "3b"),
        (b"01\xab\xcd", "3d"),
        (b"0\xab\xcd1", "01"),
    ],
)
def test_ja4_alpn_characters_follow_the_specification(first_alpn: bytes, expected: str) -> None:
    hello = parse_client_hello(records(client_hello_message(alpn_ext([first_alpn, b"h2"]))))
    assert isinstance(hello, ClientHello)
    assert ja4(hello)[8:10] == expected


def test_no_sni_no_alpn_no_extensions() -> None:
    hello = parse_client_hello(records(client_hello_message(None, [0x002F, 0x0035])))
    assert isinstance(hello, ClientHello)
    assert hello.sni is None and not hello.sni_present and hello.extensions == ()
    assert ja4(hello) == "t12i020000_" + hashlib.sha256(b"002f,0035").hexdigest()[:12] + (
        "_000000000000"
    )
    assert ja3(hello)[0] == "771,47-53,,,"


def test_server_hello_tls13_selected_version_and_ja3s() -> None:
    extensions = ext(43, b"\x03\x04") + ext(51, struct.pack("!HH", 29, 32) + bytes(32))
    stream = records(server_hello_message(extensions), version=0x0303)
    hello = parse_server_hello(stream)
    assert isinstance(hello, ServerHello)
    assert hello.selected_version == 0x0304 and hello.key_share_group == 29
    assert ja3s(hello)[0] == "771,4865,43-51"
    flight = parse_server_flight(stream)
    assert isinstance(flight, ServerFlight) and flight.certificate is None


def test_server_flight_waits_for_the_certificate_of_tls12() -> None:
    cryptography = pytest.importorskip("cryptography")
    del cryptography
    der = self_signed_der()
    chain = len(der).to_bytes(3, "big") + der
    certificate = b"\x0b" + (len(chain) + 3).to_bytes(3, "big") + (len(chain)).to_bytes(3, "big")
    certificate += chain
    hello = server_hello_message(alpn_ext([b"h2"]), cipher=0xC02F)
    stream = records(hello + certificate + b"\x0e\x00\x00\x00", size=700, version=0x0303)
    cut = len(records(hello, version=0x0303)) + 10
    assert parse_server_flight(stream[:cut]) is NEED_MORE
    assert isinstance(parse_server_hello(stream[:cut]), ServerHello)
    flight = parse_server_flight(stream)
    assert isinstance(flight, ServerFlight)
    assert flight.server_hello.alpn == b"h2"
    cert = flight.certificate
    assert cert is not None
    assert cert.sha1 == hashlib.sha1(der).hexdigest()
    assert cert.subject == "C=DK, O=Lab Ltd, CN=ok.lab"
    assert cert.issuer == cert.subject
    assert cert.subject_rdns == (("2.5.4.6", "DK"), ("2.5.4.10", "Lab Ltd"), ("2.5.4.3", "ok.lab"))
    assert cert.not_before == "2026-01-02T03:04:05"
    assert cert.not_after == "2051-01-02T03:04:05"  # GeneralizedTime after 2049
    assert cert.serial_text == "01:02:03:04:05"
    assert cert.fingerprint.replace(":", "") == cert.sha1


def self_signed_der() -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DK"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lab Ltd"),
            x509.NameAttribute(NameOID.COMMON_NAME, "ok.lab"),
        ]
    )
    start = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x0102030405)
        .not_valid_before(start)
        .not_valid_after(start.replace(year=2051))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_quic_form_has_no_records() -> None:
    message = client_hello_message(chrome_like_extensions())
    assert isinstance(parse_client_hello_message(message), ClientHello)
    assert parse_client_hello_message(message[:-1]) is NEED_MORE


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "tls.not-handshake"),
        (b"\x16\x02\x00", "tls.bad-record-version"),
        (b"\x16\x03\x01\x50\x00", "tls.record-too-long"),
        (b"\x16\x03\x01\x00\x00", "tls.empty-record"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "tls.unexpected-message"),
        (b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", "tls.hello-truncated"),
        (b"\x16\x03\x01\x00\x04\x01\x03\x00\x00", "tls.handshake-too-long"),
        (b"\x16\x03\x01\x00\x02\x01\x00\x15\x03\x01\x00\x02\x02\x28", "tls.hello-interrupted"),
    ],
)
def test_malformed_streams_give_their_reason(stream: bytes, reason: str) -> None:
    result = parse_client_hello(stream)
    assert isinstance(result, Malformed) and result.reason == reason
    assert reason in tls.REASONS


def test_broken_extensions_are_malformed_not_exceptions() -> None:
    good = client_hello_message(sni_ext("a.example"))
    # A server_name whose inner list length lies.
    broken = good.replace(b"\x00\x0c\x00\x00\x09a.example", b"\x00\x0d\x00\x00\x09a.example")
    result = parse_client_hello(records(broken))
    assert isinstance(result, Malformed) and result.reason == "tls.bad-extension"
    # An extension block one byte short.
    body = good[4:-1]
    result = parse_client_hello(records(b"\x01" + len(body).to_bytes(3, "big") + body))
    assert isinstance(result, Malformed) and result.reason == "tls.bad-extensions"
