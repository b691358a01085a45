"""Hostile input for the TLS, X.509 and QUIC parsers (hypothesis): random bytes and mutated
real hellos. The contract on every input: a result, NEED_MORE or a Malformed whose reason is
listed in the module's REASONS; never an exception; fingerprints of any parsed hello compute;
and the work stays bounded (worst cases timed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ips.app import quic, tls
from ips.app.ja import ja3, ja3s, ja4, ja4_raw
from ips.app.tls import (
    NEED_MORE,
    Certificate,
    ClientHello,
    ServerFlight,
    ServerHello,
    parse_certificate,
    parse_client_hello,
    parse_client_hello_message,
    parse_server_flight,
    parse_server_hello,
)
from ips.core.packet import Malformed

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALL_REASONS = frozenset(tls.REASONS) | frozenset(quic.REASONS)


def check_tls(result: object) -> None:
    if isinstance(result, Malformed):
        assert result.reason in ALL_REASONS, result.reason
        return
    assert result is NEED_MORE or isinstance(
        result, ClientHello | ServerHello | ServerFlight | Certificate
    ), result
    if isinstance(result, ClientHello):
        ja3(result)
        ja4(result)
        ja4_raw(result, original=True)
    elif isinstance(result, ServerHello):
        ja3s(result)


def every_tls_parser(data: bytes) -> None:
    check_tls(parse_client_hello(data))
    check_tls(parse_client_hello_message(data))
    check_tls(parse_server_hello(data))
    check_tls(parse_server_flight(data))
    check_tls(parse_certificate(data))


def check_quic(data: bytes) -> None:
    result = quic.parse_client_initial(data)
    if isinstance(result, Malformed):
        assert result.reason in ALL_REASONS, result.reason
    else:
        assert result is NEED_MORE or isinstance(result, quic.QuicClientHello)
    fragments = quic.crypto_fragments(data)
    assert isinstance(fragments, list | Malformed)


# --- seeds: real hellos from the shared captures, built ones, a real certificate -----------


def _capture_seeds() -> list[bytes]:
    from app_streams import tcp_connections
    from captures import PCAPS

    seeds: list[bytes] = []
    for name in ("zk_tls-chrome-34-google.pcap", "sv_community-id-ipv6_input.pcap"):
        path = PCAPS / name
        if not Path(path).exists():
            continue
        for conn in tcp_connections(path):
            for direction in (conn.to_server, conn.to_client):
                data = direction.stream()[:6000]
                if data[:1] == b"\x16":
                    seeds.append(data)
    return seeds


def _built_seeds() -> list[bytes]:
    from test_app_tls import chrome_like_extensions, client_hello_message, records

    return [
        records(client_hello_message(chrome_like_extensions())),
        records(client_hello_message(chrome_like_extensions(pq=False)), 300),
    ]


SEEDS = _capture_seeds() + _built_seeds()


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.integers(0, 4))
        where = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == 0 and data:  # flip a byte
            data[where] ^= draw(st.integers(1, 255))
        elif kind == 1:  # cut
            del data[where:]
        elif kind == 2:  # insert
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif kind == 3 and where + 2 <= len(data):  # a lying 16-bit length
            data[where : where + 2] = draw(st.sampled_from([b"\x00\x00", b"\xff\xff", b"\x00\x01"]))
        elif kind == 4 and data:  # delete a run
            del data[where : where + draw(st.integers(1, 16))]
    return bytes(data)


@SETTINGS
@given(st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    every_tls_parser(data)
    every_tls_parser(b"\x16\x03\x01" + data)
    check_quic(data)
    check_quic(b"\xc3\x00\x00\x00\x01" + data)


@SETTINGS
@given(st.data())
def test_mutated_real_hellos(data: st.DataObject) -> None:
    sample = data.draw(mutated(SEEDS))
    every_tls_parser(sample)


def test_seeds_are_real_hellos() -> None:
    parsed = [parse_client_hello(s) for s in SEEDS] + [parse_server_flight(s) for s in SEEDS]
    assert sum(isinstance(p, ClientHello) for p in parsed) >= 3
    assert sum(isinstance(p, ServerFlight) for p in parsed) >= 2


# --- QUIC: mutate the plaintext, re-protect it, so the frame parser sees the mutations -------


@SETTINGS
@given(st.data())
def test_mutated_quic_plaintext(data: st.DataObject) -> None:
    from test_app_tls_quic import build_initial, crypto, hello_message

    message = hello_message()
    cut = data.draw(st.integers(0, len(message)))
    frames = crypto(cut, message[cut:]) + crypto(0, message[:cut])
    frames = data.draw(mutated([frames]))
    check_quic(build_initial(b"\x42" * 8, frames))
    assert isinstance(quic.crypto_fragments(frames), list | Malformed)


@SETTINGS
@given(st.data())
def test_mutated_quic_datagrams(data: st.DataObject) -> None:
    from test_app_tls_quic import aioquic_initials

    datagram = _AIOQUIC.setdefault("d", aioquic_initials("fuzz.lab", ["h3"])[0])
    check_quic(data.draw(mutated([datagram])))


_AIOQUIC: dict[str, bytes] = {}


# --- bounded work ------------------------------------------------------------------------------


def _timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _worst_streams() -> list[bytes]:
    from test_app_tls import client_hello_message, ext, records

    return [
        # 64 KiB of one-byte handshake records: refused after MAX_RECORDS.
        b"\x16\x03\x01\x00\x01\x01" * 10922,
        # A ClientHello of 129 empty extensions: refused at the cap.
        records(client_hello_message(ext(23, b"") * 129)),
    ]


@pytest.mark.parametrize("index", [0, 1])
def test_worst_cases_stay_fast(index: int) -> None:
    stream = _worst_streams()[index]
    assert isinstance(parse_client_hello(stream), Malformed)
    assert _timed(parse_client_hello, stream) < 0.05
    assert _timed(parse_server_flight, stream) < 0.05


def test_worst_quic_datagram_stays_fast() -> None:
    from test_app_tls_quic import build_initial, crypto

    frames = b"".join(crypto(i * 2, b"ab") for i in range(60)) + b"\x01" * 500
    datagram = build_initial(b"\x01" * 8, frames)
    assert _timed(quic.parse_client_initial, datagram) < 0.05
