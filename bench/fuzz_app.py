"""Coverage-guided fuzzing (atheris/libFuzzer) of the application-layer parsers: TLS
(ClientHello, ServerHello, server flight, bare handshake stream), X.509 and QUIC Initials.

The contract is the package's rule: every parser returns a result, NEED_MORE or a Malformed
whose reason is one of its module's REASONS; fingerprints of a parsed hello compute; nothing
raises. A violation raises, and libFuzzer stops and writes the input that did it (crash-*).

The first input byte picks the target; for QUIC, inputs are also re-protected as a real client
Initial (keys from a fixed DCID) so the fuzzer reaches the frame parser and the ClientHello
behind the AEAD. Without a corpus directory, a temporary one is seeded with the TLS records
(ClientHello, server flight) of the shared capture zk_tls-chrome-34-google.pcap.

    .venv/bin/python bench/fuzz_app.py -runs=1000000 [-seed=1] [corpus_dir]

Needs `pip install atheris` (Linux, CPython 3.11+).
"""

from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ips.app"]):
    from ips.app import quic, tls
    from ips.app.ja import ja3, ja3s, ja4, ja4_raw
    from ips.core.packet import Malformed

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ips.core.decode import decode_frame
from ips.core.packet import Packet
from ips.io.pcap import read_capture

REASONS = frozenset(tls.REASONS) | frozenset(quic.REASONS)
DCID = b"\x83\x94\xc8\xf0\x3e\x51\x57\x08"
KEYS = quic.client_initial_keys(DCID)
STATE = {"inputs": 0}


class ContractViolation(AssertionError):
    pass


def protect(frames: bytes) -> bytes:
    """`frames` as the payload of a client Initial (RFC 9001 protection), padded to 1200."""
    scid = b"\x01\x02\x03\x04"
    head = 1 + 4 + 1 + len(DCID) + 1 + len(scid) + 1 + 2 + 2
    payload = frames[:1100] + bytes(max(0, 1200 - head - len(frames[:1100]) - 16))
    length = 2 + len(payload) + 16
    header = (
        b"\xc1\x00\x00\x00\x01"
        + bytes([len(DCID)])
        + DCID
        + bytes([len(scid)])
        + scid
        + b"\x00"
        + struct.pack("!HH", 0x4000 | length, 0)
    )
    sealed = AESGCM(KEYS.key).encrypt(KEYS.iv, payload, header)
    mask = Cipher(algorithms.AES(KEYS.hp), modes.ECB()).encryptor().update(sealed[2:18])
    protected = bytearray(header)
    protected[0] ^= mask[0] & 0x0F
    protected[-2] ^= mask[1]
    protected[-1] ^= mask[2]
    return bytes(protected) + sealed


def check(result: object, allowed: tuple[type, ...]) -> None:
    if isinstance(result, Malformed):
        if result.reason not in REASONS:
            raise ContractViolation(f"unlisted reason {result.reason!r}")
        return
    if result is not tls.NEED_MORE and not isinstance(result, allowed):
        raise ContractViolation(f"unexpected result {type(result).__name__}")
    if isinstance(result, tls.ClientHello):
        ja3(result)
        ja4(result)
        ja4_raw(result, original=True)
    elif isinstance(result, tls.ServerHello):
        ja3s(result)
    elif isinstance(result, tls.ServerFlight):
        ja3s(result.server_hello)
    elif isinstance(result, quic.QuicClientHello):
        ja4(result.hello, "q")


def one_input(data: bytes) -> None:
    if not data:
        return
    STATE["inputs"] += 1
    target, body = data[0] % 7, data[1:]
    if target == 0:
        check(tls.parse_client_hello(body), (tls.ClientHello,))
    elif target == 1:
        check(tls.parse_client_hello(b"\x16\x03\x01" + body), (tls.ClientHello,))
    elif target == 2:
        check(tls.parse_server_flight(b"\x16\x03\x03" + body), (tls.ServerFlight,))
        check(tls.parse_server_hello(b"\x16\x03\x03" + body), (tls.ServerHello,))
    elif target == 3:
        check(tls.parse_client_hello_message(body), (tls.ClientHello,))
    elif target == 4:
        check(tls.parse_certificate(body), (tls.Certificate,))
    elif target == 5:
        check(quic.parse_client_initial(body), (quic.QuicClientHello,))
    else:
        check(quic.parse_client_initial(protect(body)), (quic.QuicClientHello,))
        fragments = quic.crypto_fragments(body)
        if not isinstance(fragments, list | Malformed):
            raise ContractViolation("crypto_fragments returned something else")


SEED_CAPTURE = (
    Path(__file__).resolve().parents[2] / "shared" / "pcaps" / "zk_tls-chrome-34-google.pcap"
)


def seed_corpus() -> str | None:
    """A temporary corpus holding the capture's TLS payloads, once per target that reads them."""
    if not SEED_CAPTURE.exists():
        return None
    folder = Path(tempfile.mkdtemp(prefix="fuzz_app_"))
    count = 0
    with read_capture(SEED_CAPTURE) as reader:
        for record in reader:
            packet = decode_frame(record.data, record.linktype)
            if not isinstance(packet, Packet):
                continue
            payload = packet.data[packet.payload_offset :]
            if payload[:1] != b"\x16":
                continue
            hello = tls.parse_client_hello(payload)
            message = payload[5:] if isinstance(hello, tls.ClientHello) else b""
            seeds = [b"\x00" + payload, b"\x02" + payload[3:], b"\x03" + message]
            if message:
                seeds.append(b"\x06\x06\x00" + struct.pack("!H", 0x4000 | len(message)) + message)
            for seed in seeds:
                (folder / f"seed-{count}").write_bytes(seed)
                count += 1
    return str(folder)


def main() -> None:
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = seed_corpus()
        if corpus:
            argv.append(corpus)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
