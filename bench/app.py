"""Cost of the application-layer TLS/QUIC parsers, in µs per message (min of repeats).

Inputs: the first ClientHello and server flight of the shared captures (Chrome 34 over TLS 1.2
with a certificate; a TLS 1.3 hello over IPv6), a built Chrome-like ClientHello with a
post-quantum X25519MLKEM768 key share (~1.9 KiB, two segments on the wire), and a real QUIC
client Initial from aioquic (when installed: a test dependency).

  parse        parse_client_hello on the stream start
  ja3, ja4     the fingerprints of the parsed hello
  hello+ja3+ja4  the three together: what the engine will pay once per TLS flow
  server       parse_server_flight (ServerHello, and the certificate for TLS 1.2) + JA3S
  quic         QuicInitialReader.feed: keys from the DCID, header protection, AES-GCM,
               frames, CRYPTO reassembly, ClientHello; then JA4 'q'

    .venv/bin/python bench/app.py [--repeat 7] [--number 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import struct
import timeit
from pathlib import Path

from ips.app.ja import ja3, ja3s, ja4
from ips.app.quic import QuicInitialReader
from ips.app.tls import ClientHello, parse_client_hello, parse_server_flight
from ips.core.decode import decode_frame
from ips.core.packet import PROTO_TCP, Packet
from ips.io.pcap import read_capture

PCAPS = Path(__file__).resolve().parents[2] / "shared" / "pcaps"


def first_tls_streams(name: str) -> tuple[bytes, bytes] | None:
    """(client stream start, server stream start) of the capture's first TLS connection; the
    captures' hellos and flights are in order, so payloads are joined per direction."""
    path = PCAPS / name
    if not path.exists():
        return None
    client: tuple | None = None
    up, down = bytearray(), bytearray()
    with read_capture(path) as reader:
        for record in reader:
            packet = decode_frame(record.data, record.linktype)
            if not isinstance(packet, Packet) or packet.proto != PROTO_TCP:
                continue
            payload = packet.data[packet.payload_offset :]
            if not payload:
                continue
            if client is None and payload[:1] == b"\x16":
                client = (packet.src, packet.sport)
            if client is None:
                continue
            if (packet.src, packet.sport) == client:
                up += payload
            elif (packet.dst, packet.dport) == client:
                down += payload
            if len(down) > 8000:
                break
    return bytes(up), bytes(down)


def _ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def pq_client_hello() -> bytes:
    def u16s(values: list[int]) -> bytes:
        return struct.pack(f"!H{len(values)}H", 2 * len(values), *values)

    host = b"www.example.com"
    sni = b"\x00" + struct.pack("!H", len(host)) + host
    alpn = b"\x02h2\x08http/1.1"
    shares = struct.pack("!HH", 0x2A2A, 1) + b"\x00"
    shares += struct.pack("!HH", 0x11EC, 1216) + bytes(1216) + struct.pack("!HH", 29, 32)
    shares += bytes(32)
    extensions = b"".join(
        [
            _ext(0x0A0A, b""),
            _ext(0, struct.pack("!H", len(sni)) + sni),
            _ext(23, b""),
            _ext(0xFF01, b"\x00"),
            _ext(10, u16s([0x2A2A, 0x11EC, 29, 23, 24])),
            _ext(11, b"\x01\x00"),
            _ext(35, b""),
            _ext(16, struct.pack("!H", len(alpn)) + alpn),
            _ext(5, b"\x01\x00\x00\x00\x00"),
            _ext(13, u16s([0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601])),
            _ext(18, b""),
            _ext(51, struct.pack("!H", len(shares)) + shares),
            _ext(45, b"\x01\x01"),
            _ext(43, b"\x06\x2a\x2a\x03\x04\x03\x03"),
            _ext(27, b"\x00\x03\x00\x02\x00"),
            _ext(0x4469, b"\x00\x03\x02h2"),
            _ext(0x1A1A, b"\x00"),
        ]
    )
    ciphers = [0x3A3A, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8]
    ciphers += [0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    body = b"\x03\x03" + bytes(32) + b"\x20" + bytes(32) + u16s(ciphers) + b"\x01\x00"
    body += struct.pack("!H", len(extensions)) + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", 22, 0x0301, len(message)) + message


def quic_initial() -> bytes | None:
    try:
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection
    except ImportError:
        return None
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="example.com")
    connection = QuicConnection(configuration=config)
    connection.connect(("192.0.2.1", 443), now=0.0)
    return connection.datagrams_to_send(now=0.0)[0][0]


def best_us(fn, repeat: int, number: int) -> float:  # type: ignore[no-untyped-def]
    return min(timeit.repeat(fn, repeat=repeat, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r, n = args.repeat, args.number

    hellos: dict[str, bytes] = {}
    flights: dict[str, bytes] = {}
    for label, name in (
        ("chrome34-tls12", "zk_tls-chrome-34-google.pcap"),
        ("tls13-ipv6", "sv_community-id-ipv6_input.pcap"),
    ):
        streams = first_tls_streams(name)
        if streams:
            hellos[label], flights[label] = streams
    hellos["pq-chrome-like"] = pq_client_hello()

    results: dict[str, dict[str, float]] = {}
    for label, stream in hellos.items():
        hello = parse_client_hello(stream)
        assert isinstance(hello, ClientHello), (label, hello)
        row = {
            "bytes": float(len(stream)),
            "parse": best_us(lambda s=stream: parse_client_hello(s), r, n),
            "ja3": best_us(lambda h=hello: ja3(h), r, n),
            "ja4": best_us(lambda h=hello: ja4(h), r, n),
        }

        def whole(s: bytes = stream) -> None:
            h = parse_client_hello(s)
            ja3(h)  # type: ignore[arg-type]
            ja4(h)  # type: ignore[arg-type]

        row["hello+ja3+ja4"] = best_us(whole, r, n)
        if label in flights:

            def server(s: bytes = flights[label]) -> None:
                ja3s(parse_server_flight(s).server_hello)  # type: ignore[union-attr]

            row["server+ja3s"] = best_us(server, r, n // 4 or 1)
        results[label] = row

    datagram = quic_initial()
    if datagram is not None:

        def quic_hello(d: bytes = datagram) -> None:
            ja4(QuicInitialReader().feed(d).hello, "q")  # type: ignore[union-attr]

        results["quic-initial"] = {
            "bytes": float(len(datagram)),
            "initial+ja4": best_us(quic_hello, r, n // 4 or 1),
        }

    if args.json:
        print(json.dumps(results, indent=2))
        return
    for label, row in results.items():
        cells = "  ".join(
            f"{k} {v:7.1f} µs" if k != "bytes" else f"{int(v):5d} B" for k, v in row.items()
        )
        print(f"{label:16s} {cells}")


if __name__ == "__main__":
    main()
