"""`make demo`, for now: replay policies/gateway.rules over a scripted capture of the lab's
traffic and print the verdict table.

The capture (labs/captures/demo.pcap) is written by this script from a short scenario on the
lab's addresses (see README): a client's web request, an SSH session from the admin, a ping,
and an attacker's telnet attempt, SMB probe, XMAS and NULL probes and path-traversal request,
plus a request to the moved port that is rewritten. Once the inline lab lands, `make demo`
runs the same policy on a real gateway instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ips.core.build import build_packet
from ips.core.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN
from ips.io.pcap import write_pcap

HERE = Path(__file__).resolve().parent
CAPTURE = HERE / "captures" / "demo.pcap"

CLIENT, ADMIN, ATTACKER = "10.10.1.20", "10.10.1.10", "10.10.1.66"
SERVER = "10.10.2.10"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: fixed, so the capture is the same every time


def tcp_session(
    client: str, cport: int, server: str, sport: int, request: bytes, t: float
) -> list[tuple[float, bytes]]:
    """A complete TCP connection: handshake, one request and answer, FIN both ways."""
    syn = build_packet(PROTO_TCP, client, server, cport, sport, flags=TCP_SYN, seq=100)
    synack = build_packet(
        PROTO_TCP, server, client, sport, cport, flags=TCP_SYN | TCP_ACK, seq=500, ack=101
    )
    ack = build_packet(PROTO_TCP, client, server, cport, sport, flags=TCP_ACK, seq=101, ack=501)
    req = build_packet(
        PROTO_TCP,
        client,
        server,
        cport,
        sport,
        flags=TCP_PSH | TCP_ACK,
        seq=101,
        ack=501,
        payload=request,
    )
    answer = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"
    resp = build_packet(
        PROTO_TCP,
        server,
        client,
        sport,
        cport,
        flags=TCP_PSH | TCP_ACK,
        seq=501,
        ack=101 + len(request),
        payload=answer,
    )
    fin1 = build_packet(
        PROTO_TCP,
        client,
        server,
        cport,
        sport,
        flags=TCP_FIN | TCP_ACK,
        seq=101 + len(request),
        ack=501 + len(answer),
    )
    fin2 = build_packet(
        PROTO_TCP,
        server,
        client,
        sport,
        cport,
        flags=TCP_FIN | TCP_ACK,
        seq=501 + len(answer),
        ack=102 + len(request),
    )
    packets = [syn, synack, ack, req, resp, fin1, fin2]
    return [(t + i * 0.001, p) for i, p in enumerate(packets)]


def scenario() -> list[tuple[float, bytes]]:
    records: list[tuple[float, bytes]] = []
    get = b"GET / HTTP/1.0\r\nhost: server\r\n\r\n"
    records += tcp_session(CLIENT, 40000, SERVER, 80, get, T0 + 1)
    records += tcp_session(ADMIN, 40001, SERVER, 22, b"SSH-2.0-OpenSSH_9.2\r\n", T0 + 2)
    records += tcp_session(CLIENT, 40002, SERVER, 8081, get, T0 + 3)  # the moved port
    for i in range(3):
        records.append(
            (T0 + 4 + i, build_packet(PROTO_ICMP, CLIENT, SERVER, icmp_type=8, icmp_id=7))
        )
        records.append(
            (T0 + 4.001 + i, build_packet(PROTO_ICMP, SERVER, CLIENT, icmp_type=0, icmp_id=7))
        )
    records.append((T0 + 7, build_packet(PROTO_UDP, CLIENT, SERVER, 40003, 53, payload=b"q")))
    # the attacker
    records.append((T0 + 8, build_packet(PROTO_TCP, ATTACKER, SERVER, 50000, 23, flags=TCP_SYN)))
    records.append((T0 + 8.1, build_packet(PROTO_TCP, ATTACKER, SERVER, 50001, 445, flags=TCP_SYN)))
    records.append(
        (T0 + 8.2, build_packet(PROTO_TCP, ATTACKER, SERVER, 50002, 80, flags=0x29))  # XMAS
    )
    records.append(
        (T0 + 8.3, build_packet(PROTO_TCP, ATTACKER, SERVER, 50003, 80, flags=0))  # NULL
    )
    traversal = b"GET /../../etc/passwd HTTP/1.0\r\n\r\n"
    records += tcp_session(ATTACKER, 50004, SERVER, 80, traversal, T0 + 9)
    records.append((T0 + 10, build_packet(PROTO_TCP, ATTACKER, SERVER, 50005, 3306, flags=TCP_SYN)))
    return records


def main() -> int:
    os.chdir(HERE.parent)  # rule locations print relative to the repository
    CAPTURE.parent.mkdir(exist_ok=True)
    write_pcap(CAPTURE, scenario())
    from ips.cli import main as ipsctl

    out = HERE.parent / "out"
    out.mkdir(exist_ok=True)
    root = HERE.parent
    args = [
        "replay",
        "policies/gateway.rules",
        str(CAPTURE.relative_to(root)),
        "--eve",
        str((out / "demo-eve.json").relative_to(root)),
    ]
    print(f"$ ipsctl {' '.join(args)}")
    try:
        ipsctl(args, standalone_mode=False)
    except SystemExit as exc:  # click's exit with the command's status
        return int(exc.code or 0)
    print(f"\nEVE events: {out / 'demo-eve.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
