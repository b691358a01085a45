"""Cost of the application-layer parsers and the reassembler, in-process (µs, min of repeats).

dns-query        parse_message on a one-question query (38 bytes)
dns-response     parse_message on a response with 8 answers of every decoded type and an SOA
dns-capture      parse_message on every DNS datagram of the shared captures (mean per message)
http-request     parse_requests on a browser-like GET (one request, ~400 bytes)
ssh-banner       parse_banner on an OpenSSH banner
detect-stream    detect_stream on a ClientHello's first bytes
reasm-in-order   Reassembler.add per segment, in order (a 1.8 KB ClientHello in 2 segments)
reasm-ooo        Reassembler.add per segment, the same two segments in reverse order
community-id     community_id of a TCP 5-tuple (IPv4)

  .venv/bin/python bench/app_proto.py [--repeat 7] [--number 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

from ips.app.community_id import community_id
from ips.app.detect import detect_stream
from ips.app.dns import parse_message
from ips.app.http import parse_requests
from ips.app.reassembly import Reassembler
from ips.app.ssh import parse_banner
from ips.core.decode import decode_frame
from ips.core.packet import PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, Packet
from ips.io.pcap import read_capture

ROOT = Path(__file__).resolve().parents[1]
PCAPS = ROOT.parent / "shared" / "pcaps"
sys.path.insert(0, str(ROOT))
from tests.pure.test_app_parsers import dns_query, dns_response  # noqa: E402
from tests.pure.test_app_reassembly import client_hello  # noqa: E402

REQUEST = (
    b"GET /css/pygments.css HTTP/1.1\r\nHost: bro.org\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux i686; rv:24.0) Gecko/20100101 Firefox/24.0\r\n"
    b"Accept: text/css,*/*;q=0.1\r\nAccept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate\r\nReferer: http://bro.org/\r\nConnection: keep-alive\r\n"
    b"If-Modified-Since: Mon, 07 Oct 2013 22:19:49 GMT\r\n\r\n"
)


def capture_dns() -> list[bytes]:
    out = []
    for path in sorted(PCAPS.glob("*.pcap")):
        for rec in read_capture(path):
            pkt = decode_frame(rec.data, rec.linktype)
            if isinstance(pkt, Packet) and pkt.proto == PROTO_UDP and 53 in (pkt.sport, pkt.dport):
                out.append(pkt.data[pkt.payload_offset :])
    return out


def best(fn, number: int, repeat: int, per: int = 1) -> float:
    """Microseconds per call (per `per` operations inside one call), min over repeats."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number / per * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n, r = args.number, args.repeat
    query, response = dns_query(), dns_response()
    messages = capture_dns()
    hello = client_hello(1700)
    first, second = hello[:1400], hello[1400:]
    banner = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
    src, dst = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))

    def reasm(order: tuple[tuple[int, bytes], ...]) -> None:
        reassembler = Reassembler()
        streams = reassembler.open()
        reassembler.add(streams, True, 99, TCP_SYN, b"")
        for seq, data in order:
            reassembler.add(streams, True, seq, TCP_ACK, data)
        reassembler.close(streams)

    in_order = ((100, first), (1500, second))
    reverse = ((1500, second), (100, first))

    def all_messages() -> None:
        for m in messages:
            parse_message(m)

    def setup_only() -> None:
        reassembler = Reassembler()
        streams = reassembler.open()
        reassembler.add(streams, True, 99, TCP_SYN, b"")
        reassembler.close(streams)

    base = best(setup_only, n, r)
    figures = {
        "dns-query": best(lambda: parse_message(query), n, r),
        "dns-response": best(lambda: parse_message(response), n, r),
        "dns-capture": best(all_messages, max(1, n // max(1, len(messages))), r, len(messages)),
        "dns-capture-messages": len(messages),
        "http-request": best(lambda: parse_requests(REQUEST), n, r),
        "ssh-banner": best(lambda: parse_banner(banner), n, r),
        "detect-stream": best(lambda: detect_stream(first), n, r),
        "reasm-in-order": (best(lambda: reasm(in_order), n, r) - base) / 2,
        "reasm-ooo": (best(lambda: reasm(reverse), n, r) - base) / 2,
        "community-id": best(lambda: community_id(PROTO_TCP, src, dst, 40000, 443), n, r),
    }
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
    else:
        for k, v in figures.items():
            print(f"{k:22} {v:8.2f}" + ("" if k.endswith("messages") else " µs"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
