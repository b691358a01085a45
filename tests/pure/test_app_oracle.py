"""tshark is the oracle: DNS, HTTP, SSH and community_id over every shared capture.

Each capture is decoded with ips.core.decode, TCP flows are reassembled with
ips.app.reassembly (a large bound here, so whole keep-alive connections are compared), and the
parsers' fields are compared with the fields Debian's tshark 4.0 prints for the same capture,
as multisets per capture (tshark reports a TCP message in the frame that completes it).

tshark shows some messages ipsctl's packet path does not reach, and those are left out of the
comparison by a stated rule, each one counted: messages inside ICMP errors (the quoted datagram
of an error is not a flow), inside tunnels (Teredo), in IP fragments (tshark reassembles them;
the decoder does not) and in packets the decoder rejects as malformed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from captures import pcap_names

from ips.app.community_id import community_id_packet
from ips.app.detect import APP_HTTP, detect_stream
from ips.app.dns import TYPE_MX, TYPE_SOA, TYPE_SRV, TYPE_TXT, DnsMessage, parse_message
from ips.app.dns import parse_tcp_stream as dns_tcp_stream
from ips.app.http import parse_requests, parse_responses
from ips.app.reassembly import Reassembler, TcpStreams
from ips.app.ssh import SshBanner, parse_banner
from ips.core.build import build_packet
from ips.core.decode import decode_frame
from ips.core.packet import (
    FRAG_NONE,
    LINKTYPE_RAW,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_PSH,
    TCP_SYN,
    Malformed,
    Packet,
)
from ips.io.pcap import read_capture, write_pcap

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

SEP = "\x1f"  # tshark's aggregator: a byte no field of these captures holds


def tshark_rows(path: Path, display_filter: str, fields: list[str], *opts: str) -> list[list]:
    cmd = [TSHARK or "tshark", "-r", str(path), "-Y", display_filter, "-T", "fields",
           "-E", f"aggregator={SEP}", *opts]  # fmt: skip
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [
        [col.split(SEP) if col else [] for col in line.split("\t")] for line in out.splitlines()
    ]


class Capture:
    """A capture's packets: UDP payloads by frame, TCP flows reassembled."""

    def __init__(self, path: Path, limit: int = 1 << 20) -> None:
        self.reassembler = Reassembler(limit=limit, memory_cap=1 << 28)
        self.udp: list[tuple[int, Packet, bytes]] = []
        self.tcp: dict[tuple, tuple[TcpStreams, tuple[bytes, int]]] = {}
        self.malformed: dict[int, str] = {}
        self.packets: dict[int, Packet] = {}
        for i, rec in enumerate(read_capture(path), 1):
            pkt = decode_frame(rec.data, rec.linktype)
            if isinstance(pkt, Malformed):
                self.malformed[i] = pkt.reason
                continue
            if pkt is None:
                continue
            self.packets[i] = pkt
            if pkt.frag != FRAG_NONE:
                continue
            payload = pkt.data[pkt.payload_offset :]
            if pkt.proto == PROTO_UDP:
                self.udp.append((i, pkt, payload))
            elif pkt.proto == PROTO_TCP:
                a, b = (pkt.src, pkt.sport), (pkt.dst, pkt.dport)
                key = (a, b) if a < b else (b, a)
                if key not in self.tcp:
                    # The client is the SYN's sender; mid-stream, the first packet's sender.
                    server_side = pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
                    self.tcp[key] = (self.reassembler.open(), b if not server_side else a)
                streams, server = self.tcp[key]
                self.reassembler.add_packet(streams, (pkt.dst, pkt.dport) == server, pkt)


# ---- DNS ---------------------------------------------------------------------------------------

DNS_FIELDS = [
    "frame.number", "dns.id", "dns.flags.response", "dns.flags.rcode", "dns.qry.name",
    "dns.qry.type", "dns.resp.name", "dns.resp.type", "dns.resp.ttl", "dns.a", "dns.aaaa",
    "dns.cname", "dns.ns", "dns.ptr.domain_name", "dns.mx.mail_exchange", "dns.txt",
    "dns.soa.mname", "dns.srv.target", "ip.src", "ipv6.src", "ip.flags.mf",
    "ip.frag_offset", "ipv6.fragment", "icmp.type", "icmpv6.type", "frame.protocols",
]  # fmt: skip


def _root(name: str) -> str:
    return "" if name == "<Root>" else name


def dns_key(msg: DnsMessage) -> tuple:
    """The fields tshark prints, in its order, from a parsed message."""
    records = (*msg.answers, *msg.authorities, *msg.additionals)

    def rdata(*types: int) -> tuple:
        return tuple(r.rdata for r in records if r.rtype in types)

    return (
        msg.id, int(msg.qr), str(msg.rcode) if msg.qr else "",
        tuple(q.name for q in msg.questions), tuple(str(q.rtype) for q in msg.questions),
        tuple(r.name for r in records), tuple(str(r.rtype) for r in records),
        tuple(str(r.ttl) for r in records if r.rtype != 41),
        rdata(1), rdata(28), rdata(5), rdata(2), rdata(12),
        tuple(r.rdata.exchange for r in records if r.rtype == TYPE_MX),  # type: ignore[union-attr]
        tuple(s.decode("latin-1") for r in records if r.rtype == TYPE_TXT
              for s in r.rdata),  # type: ignore[union-attr]
        tuple(r.rdata.mname for r in records if r.rtype == TYPE_SOA),  # type: ignore[union-attr]
        tuple(r.rdata.target for r in records if r.rtype == TYPE_SRV),  # type: ignore[union-attr]
    )  # fmt: skip


def tshark_dns(path: Path, capture: Capture) -> tuple[Counter, Counter]:
    """tshark's DNS messages as dns_key tuples, and the ones left out by reason."""
    keys: Counter = Counter()
    skipped: Counter = Counter()
    for row in tshark_rows(path, "dns || mdns", DNS_FIELDS):
        frame = int(row[0][0])
        if len(row[18]) + len(row[19]) > 1 or "teredo" in "".join(row[25]):
            skipped["tunnel"] += 1
            continue
        if row[23] or row[24]:
            skipped["inside-icmp"] += 1
            continue
        if row[20] == ["1"] or row[21] not in ([], ["0"]) or row[22]:
            skipped["ip-fragments"] += 1
            continue
        if frame in capture.malformed:
            skipped["decoder:" + capture.malformed[frame]] += 1
            continue
        qr = int(row[2][0])
        keys[(
            int(row[1][0], 16), qr, row[3][0] if qr and row[3] else "",
            tuple(_root(n) for n in row[4]), tuple(row[5]),
            tuple(_root(n) for n in row[6]), tuple(row[7]), tuple(row[8]),
            *(tuple(_root(v) for v in col) for col in row[9:18]),
        )] += 1  # fmt: skip
    return keys, skipped


def ipsctl_dns(capture: Capture) -> tuple[Counter, Counter]:
    keys: Counter = Counter()
    reasons: Counter = Counter()
    for _frame, pkt, payload in capture.udp:
        if 53 not in (pkt.sport, pkt.dport) and 5353 not in (pkt.sport, pkt.dport):
            continue
        msg = parse_message(payload)
        if isinstance(msg, Malformed):
            reasons[msg.reason] += 1
        else:
            keys[dns_key(msg)] += 1
    for (a, b), (streams, _server) in capture.tcp.items():
        if 53 not in (a[1], b[1]):
            continue
        for to_server in (True, False):
            messages, _used = dns_tcp_stream(streams.data(to_server))
            for msg in messages:
                if isinstance(msg, Malformed):
                    reasons[msg.reason] += 1
                else:
                    keys[dns_key(msg)] += 1
    return keys, reasons


def test_dns_equals_tshark(pcaps_dir: Path) -> None:
    """Every DNS message tshark shows in every capture: the same fields from ipsctl."""
    compared: Counter = Counter()
    for name in pcap_names():
        path = pcaps_dir / name
        capture = Capture(path)
        theirs, skipped = tshark_dns(path, capture)
        ours, reasons = ipsctl_dns(capture)
        assert not reasons, (name, reasons)
        assert ours == theirs, name
        compared["equal"] += sum(theirs.values())
        compared.update(skipped)
        # Every message tshark shows is compared or left out by a stated rule.
        assert set(skipped) <= {"tunnel", "inside-icmp", "ip-fragments"} | {
            "decoder:" + r for r in capture.malformed.values()
        }
    print("dns messages:", dict(compared))
    assert compared["equal"] >= 100


# ---- HTTP --------------------------------------------------------------------------------------

HTTP_FIELDS = [
    "frame.number", "http.request.method", "http.host", "http.request.uri", "http.user_agent",
    "http.response.code", "http.content_type", "http.content_length", "ip.src", "ipv6.src",
    "frame.protocols",
]  # fmt: skip


def _one(col: list[str]) -> str:
    return col[0] if col else ""


# tshark waits for a whole body before it shows a response, so a response whose body has a
# capture gap is never shown; told not to wait, it loses track of pipelined responses that start
# inside a segment. Each mode misses what the other shows: the oracle is their union (the most
# of each message either mode shows), with out-of-order segments reassembled as ours are.
TSHARK_HTTP_MODES = (
    ("-o", "tcp.reassemble_out_of_order:TRUE"),
    ("-o", "tcp.reassemble_out_of_order:TRUE", "-o", "http.desegment_body:FALSE"),
)


def tshark_http(path: Path, capture: Capture) -> tuple[Counter, Counter]:
    union: Counter = Counter()
    skipped: Counter = Counter()
    for mode in TSHARK_HTTP_MODES:
        keys: Counter = Counter()
        skipped = Counter()
        for row in tshark_rows(path, "http.request || http.response", HTTP_FIELDS, *mode):
            frame = int(row[0][0])
            if len(row[8]) + len(row[9]) > 1 or "teredo" in "".join(row[10]):
                skipped["tunnel"] += 1
                continue
            if frame in capture.malformed:
                skipped["decoder:" + capture.malformed[frame]] += 1
                continue
            if row[1]:
                keys[("request", _one(row[1]), _one(row[2]), _one(row[3]), _one(row[4]),
                      _one(row[6]), _one(row[7]))] += 1  # fmt: skip
            else:
                keys[("response", _one(row[5]), _one(row[6]), _one(row[7]))] += 1
        union |= keys
    return union, skipped


def ipsctl_http(capture: Capture) -> tuple[Counter, Counter]:
    keys: Counter = Counter()
    stops: Counter = Counter()

    def add_requests(data: bytes) -> list[str]:
        requests, _used, why = parse_requests(data)
        stops[why if isinstance(why, str) else why.reason] += 1
        for r in requests:
            keys[("request", r.method, r.host or "", r.uri, r.user_agent or "",
                  r.content_type or "", "" if r.content_length is None
                  else str(r.content_length))] += 1  # fmt: skip
        return [r.method for r in requests]

    for _frame, _pkt, payload in capture.udp:
        if payload[:1].isalpha() and b" HTTP/1." in payload[:512]:
            add_requests(payload)  # SSDP: HTTP requests over UDP
    for streams, _server in capture.tcp.values():
        client = streams.data(True)
        if detect_stream(client) != APP_HTTP:
            continue
        methods = add_requests(client)
        responses, _used, why = parse_responses(streams.data(False), methods)
        stops[why if isinstance(why, str) else why.reason] += 1
        for r in responses:
            keys[("response", str(r.status), r.content_type or "",
                  "" if r.content_length is None else str(r.content_length))] += 1  # fmt: skip
    return keys, stops


def test_http_equals_tshark(pcaps_dir: Path) -> None:
    """Every HTTP request and response tshark shows: method, host, URI, user agent, status,
    content type and length equal."""
    compared: Counter = Counter()
    stops: Counter = Counter()
    for name in pcap_names():
        path = pcaps_dir / name
        capture = Capture(path)
        theirs, skipped = tshark_http(path, capture)
        ours, why = ipsctl_http(capture)
        assert ours == theirs, name
        compared["equal"] += sum(theirs.values())
        compared.update(skipped)
        stops.update(why)
        assert set(skipped) <= {"tunnel"} | {"decoder:" + r for r in capture.malformed.values()}
    print("http messages:", dict(compared), "parsers stopped:", dict(stops))
    assert not [s for s in stops if s.startswith("http.")]
    assert compared["equal"] >= 100


# ---- SSH ---------------------------------------------------------------------------------------

# The shared captures hold no SSH, so the oracle reads a capture written here: real banners
# (OpenSSH, Dropbear, libssh, PuTTY, Go, a 1.99 server), each in
# one segment: tshark 4.0's SSH dissector shows a banner split across segments as "Encrypted
# packet" (test_app_ssh.py splits them for the reassembler).
SSH_BANNERS = [
    (b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n"),
    (b"SSH-2.0-PuTTY_Release_0.78\r\n", b"SSH-2.0-dropbear_2022.83\r\n"),
    (b"SSH-2.0-libssh_0.10.4\r\n", b"SSH-1.99-Cisco-1.25\r\n"),
    (b"SSH-2.0-Go\r\n", b"SSH-2.0-OpenSSH_7.4\r\n"),
]


def _ssh_capture(path: Path) -> None:
    frames = []
    for i, (client, server) in enumerate(SSH_BANNERS):
        c, s, cport = "10.0.0.1", "10.0.0.2", 40000 + i
        frames += [
            build_packet(PROTO_TCP, c, s, cport, 22, flags=TCP_SYN, seq=999),
            build_packet(PROTO_TCP, s, c, 22, cport, flags=TCP_SYN | TCP_ACK, seq=4999, ack=1000),
        ]
        for src, dst, sp, dp, seq, banner in ((s, c, 22, cport, 5000, server),
                                              (c, s, cport, 22, 1000, client)):  # fmt: skip
            frames.append(build_packet(PROTO_TCP, src, dst, sp, dp, flags=TCP_PSH | TCP_ACK,
                                       seq=seq, payload=banner))  # fmt: skip
    write_pcap(path, [(float(n), f) for n, f in enumerate(frames)], LINKTYPE_RAW)


def test_ssh_banners_equal_tshark(tmp_path: Path) -> None:
    path = tmp_path / "ssh.pcap"
    _ssh_capture(path)
    rows = tshark_rows(path, "ssh.protocol", ["ssh.protocol"], "-d", "tcp.port==22,ssh")
    theirs = Counter(row[0][0] for row in rows)
    capture = Capture(path)
    ours: Counter = Counter()
    for streams, _server in capture.tcp.values():
        for to_server in (True, False):
            banner = parse_banner(streams.data(to_server), server=not to_server)
            assert isinstance(banner, SshBanner)
            text = f"SSH-{banner.proto_version}-{banner.software}"
            ours[f"{text} {banner.comments}" if banner.comments else text] += 1
    assert ours == theirs
    assert sum(theirs.values()) == 2 * len(SSH_BANNERS)


# ---- community_id ------------------------------------------------------------------------------


def test_community_id_equals_tshark(pcaps_dir: Path) -> None:
    """Every packet of every capture tshark hashes: the same Community ID (tshark 4.0's
    communityid post-dissector, seed 0, base64). tshark hashes the innermost IP header of a
    tunnel and the reassembled datagram of fragments: those packets are counted apart."""
    counts: Counter = Counter()
    for name in pcap_names():
        path = pcaps_dir / name
        rows = tshark_rows(path, "communityid", ["frame.number", "communityid", "ip.src",
                                                 "ipv6.src", "ip.flags.mf", "ip.frag_offset",
                                                 "ipv6.fragment"],
                           "--enable-protocol", "communityid")  # fmt: skip
        packets = Capture(path).packets
        for row in rows:
            frame = int(row[0][0])
            pkt = packets.get(frame)
            if pkt is None:
                counts["not-decoded"] += 1
            elif len(row[2]) + len(row[3]) > 1:
                counts["tunnel"] += 1
            elif row[4] == ["1"] or row[5] not in ([], ["0"]) or row[6] or pkt.frag:
                counts["ip-fragments"] += 1
            else:
                assert community_id_packet(pkt) == row[1][0], (name, frame, pkt)
                counts["equal"] += 1
    print("community_id packets:", dict(counts))
    assert counts["equal"] >= 5000
