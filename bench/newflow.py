"""What a flow's first packets cost in the engine (the Python path of new flows), on one core.

Two cases, each through `Engine.handle` with policies/gateway.rules (the compiled path on
when built), measured as CPU time of this thread, in interleaved rounds; printed: the median
over the rounds of µs per packet, with the lowest and highest round:

  refused-first   first packets the gateway policy refuses (`set default drop`): sources
                  and destinations outside the lab's networks, each packet's own — SYNs,
                  data segments both ways (ACK+PSH with payload), UDP datagrams (2 in 5 are
                  scan probes), 5,000 a second of packet time: a forged-source flood, the
                  worst case of what 93 % of bench/replay_speed.py's capture is (a refused
                  first packet leaves no flow, so each is a new flow again).
  new-connection  TCP connections the policy accepts, lab client to a lab server's bench
                  port (bench/lab.py's policy and storm port), offload on (the policy's
                  default): SYN, SYN+ACK, the handshake's ACK, a request and its answer,
                  each connection's packets up to the first Decision with an offload mark
                  (the kernel carries the rest: `conn/s` in bench/lab.py); µs per packet
                  and per connection, and how many packets that is.

With --stages CAPTURE: the cost of each stage of the Python path, each stage alone over the
same packets (the first --stage-packets records of CAPTURE, decoded once; the gateway policy,
app-layer off, the Python engine without the compiled path), CPU µs per packet:

  decode            ips/core/decode.py's decode_frame (the compiled path decodes in C)
  engine            Engine.handle_packet: every stage below, and the rules
  flow table        a first packet's flow made and discarded (FlowTable.open/discard, or
                    track/discard in a checkout without them), a later one's counted
  detectors         Detectors.observe (flow table + detectors, less the flow table alone)
  candidates        CompiledPolicy.candidate_entry (candidates in a checkout without it)
  the rest          engine − the three: the rule walk, the discard, the engine's own code

Run it with another checkout's `ips` first on PYTHONPATH to measure its code (the before).

    .venv/bin/python bench/newflow.py [--flows 20000] [--rounds 5] [--app off|on] [--json]
                                      [--request http|storm] [--connections-only]
                                      [--stages bench/out/replay-1000000.pcap]
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import time
from pathlib import Path

from ips.core.build import build_packet
from ips.core.decision import OFFLOAD_BARE_ACKS
from ips.core.decode import decode_l3
from ips.core.packet import PROTO_TCP, PROTO_UDP, Packet
from ips.engine import Engine, Meta

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = ROOT / "policies" / "gateway.rules"
SYN, SYN_ACK, ACK, PSH_ACK = 0x02, 0x12, 0x10, 0x18


def refused_first(n: int) -> list[bytes]:
    """n first packets from outside the lab's networks (the default drops them)."""
    out = []
    for i in range(n):
        src = f"192.0.{i // 250 % 250}.{i % 250 + 1}"
        dst = f"198.51.{i // 200 % 200}.{i % 200 + 1}"
        sport = 10_000 + i % 50_000
        kind = i % 5
        if kind == 0:
            out.append(build_packet(PROTO_TCP, src, dst, sport, 443, flags=SYN))
        elif kind in (1, 3):
            out.append(build_packet(PROTO_TCP, src, dst, sport, 443, flags=PSH_ACK,
                                    payload=b"d" * 300))  # fmt: skip
        elif kind == 2:
            out.append(build_packet(PROTO_TCP, dst, src, 443, sport, flags=PSH_ACK,
                                    payload=b"r" * 900))  # fmt: skip
        else:
            out.append(build_packet(PROTO_UDP, src, dst, sport, 5353 + i % 7, payload=b"u" * 60))
    return out


def new_connections(n: int, request: str = "http") -> list[list[bytes]]:
    """n accepted TCP connections, lab client -> lab web server: handshake, request, answer.
    request "storm": bench/storm.py's request and its echo (`storm-N`, which names the flow
    unknown at once) instead of an HTTP request and response."""
    out = []
    for i in range(n):
        ask = b"GET / HTTP/1.1\r\nHost: s\r\n\r\n"
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        if request == "storm":
            ask = answer = b"storm-%d\n" % i
        client = f"10.10.1.{i % 200 + 20}"
        server = f"10.10.2.{i // 200 % 50 + 10}"
        cport = 20_000 + i % 40_000
        out.append(
            [
                build_packet(PROTO_TCP, client, server, cport, STORM_PORT, flags=SYN),
                build_packet(PROTO_TCP, server, client, STORM_PORT, cport, flags=SYN_ACK),
                # After the SYNs (sequence number 1000 each way) the data starts at 1001: with
                # 1000 the reassembler took the request's first byte for old data and the
                # flow for no HTTP, and the app-on case measured no parsing at all.
                build_packet(PROTO_TCP, client, server, cport, STORM_PORT, flags=ACK, seq=1001),
                build_packet(PROTO_TCP, client, server, cport, STORM_PORT, flags=PSH_ACK,
                             seq=1001, payload=ask),
                build_packet(PROTO_TCP, server, client, STORM_PORT, cport, flags=PSH_ACK,
                             seq=1001, payload=answer),
            ]
        )  # fmt: skip
    return out


# bench/lab.py's policy: gateway.rules with its bench ports accepted LAN -> DMZ (its storm of
# connections goes to STORM_PORT), put before the LAN -> DMZ web accept.
BENCH_ACCEPT = "accept  proto { tcp, udp } from $lan to $dmz port 5201-5209"
STORM_PORT = 5209


def _policy_text(app: str) -> str:
    lines = GATEWAY.read_text().splitlines()
    web = next(i for i, ln in enumerate(lines) if re.match(r"accept\s+proto tcp from \$lan", ln))
    lines.insert(web, BENCH_ACCEPT)
    return "\n".join(lines) + ("\nset app-layer off\n" if app == "off" else "\n")


def run_refused(packets: list[bytes], text: str) -> tuple[float, int]:
    from ips.policy.resolve import load_policy_text

    engine = Engine(load_policy_text(text, "gateway.rules"))
    meta = Meta(iif="eth0", oif="eth1")
    handle = engine.handle
    now = 1000.0
    gc.disable()
    start = time.thread_time()
    for i, data in enumerate(packets):
        handle(data, meta, now + i * 2e-4)
    cpu = time.thread_time() - start
    gc.enable()
    assert engine.stats.verdicts.get("accept", 0) == 0, engine.stats.verdicts
    return cpu, len(packets)


def _bare_ack(data: bytes) -> bool:
    """A TCP segment with flags exactly ACK and no payload (what the kernel passes after a
    SYN+ACK whose Decision says OFFLOAD_BARE_ACKS)."""
    pkt = decode_l3(data)
    return (
        isinstance(pkt, Packet)
        and pkt.proto == PROTO_TCP
        and pkt.flags & 0x3F == ACK
        and pkt.payload_offset >= pkt.length
    )


def run_connections(conns: list[list[bytes]], text: str) -> tuple[float, int, float]:
    """CPU seconds, packets the engine saw, and packets per connection it saw (each
    connection's packets up to and including its first offloading Decision; after a
    SYN+ACK with OFFLOAD_BARE_ACKS, the bare ACKs the kernel passes are left out)."""
    from ips.policy.resolve import load_policy_text

    engine = Engine(load_policy_text(text, "gateway.rules"))
    meta = Meta(iif="eth1", oif="eth2")
    handle = engine.handle
    now = 1000.0
    seen = 0
    bare = [[_bare_ack(data) for data in conn] for conn in conns]
    gc.disable()
    start = time.thread_time()
    for i, conn in enumerate(conns):
        t = now + i * 1e-4
        passing = False
        for data, is_bare in zip(conn, bare[i], strict=True):
            if passing and is_bare:
                continue  # passed by the kernel
            passing = False  # the first other packet clears the stamp (ipsctl:bare-acks-done)
            seen += 1
            offload = handle(data, meta, t).offload
            if offload == OFFLOAD_BARE_ACKS:
                passing = True
            elif offload:
                break  # the kernel carries the rest of the connection
    cpu = time.thread_time() - start
    gc.enable()
    assert engine.stats.verdicts.get("drop", 0) == 0, engine.stats.verdicts
    return cpu, seen, seen / len(conns)


def stages(capture: Path, count: int) -> dict[str, float]:
    """CPU µs per packet of each stage alone (see the module's doc)."""
    from ips.core.decode import decode_frame
    from ips.core.flow import FlowTable
    from ips.core.packet import Packet
    from ips.io.pcap import read_capture
    from ips.policy.resolve import load_policy_text

    records = []
    with read_capture(capture) as reader:
        for rec in reader:
            records.append((rec.timestamp, rec.data, rec.linktype))
            if len(records) >= count:
                break
    text = _policy_text("off")
    decoded: list[object] = []

    def timed(fn: object) -> float:
        gc.disable()
        start = time.thread_time()
        fn()  # type: ignore[operator]
        cpu = time.thread_time() - start
        gc.enable()
        return cpu / len(records) * 1e6

    def decode() -> None:
        for _, data, linktype in records:
            decoded.append(decode_frame(data, linktype))

    out = {"decode": timed(decode)}
    packets = [(r[0], p) for r, p in zip(records, decoded, strict=True) if p.__class__ is Packet]
    meta = Meta(linktype=1)

    def engine() -> None:
        e = Engine(load_policy_text(text, "gateway.rules"), fast=False)
        for ts, pkt in packets:
            e.handle_packet(pkt, meta, ts)  # type: ignore[arg-type]

    def table(detect: bool) -> None:
        flows = FlowTable()
        observe = Engine(load_policy_text(text, "g"), fast=False).detect.observe  # type: ignore[union-attr]
        deferred = hasattr(flows, "open")
        for ts, pkt in packets:
            if deferred:
                flow, fwd = flows.open(pkt, ts)  # type: ignore[arg-type]
            else:
                flow, fwd = flows.track(pkt, ts)  # type: ignore[arg-type]
            if detect:
                observe(pkt, flow, fwd, ts)  # type: ignore[arg-type]
            if fwd and flow.pkts_fwd == 1 and not flow.replied:
                flows.discard(flow)  # as a refused first packet
            elif deferred:
                flows.settle()

    def candidates() -> None:
        policy = Engine(load_policy_text(text, "g"), fast=False).policy
        find = getattr(policy, "candidate_entry", policy.candidates)
        for _, pkt in packets:
            find(pkt, None, None)

    out["engine"] = timed(engine)
    out["flow table"] = timed(lambda: table(False))
    out["detectors"] = timed(lambda: table(True)) - out["flow table"]
    out["candidates"] = timed(candidates)
    out["the rest"] = out["engine"] - out["flow table"] - out["detectors"] - out["candidates"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--app", choices=("on", "off"), default="off")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--stages", type=Path, metavar="CAPTURE", help="each stage's cost alone")
    ap.add_argument("--stage-packets", type=int, default=150_000)
    ap.add_argument(
        "--request", choices=("http", "storm"), default="http", help="new-connection's request"
    )
    ap.add_argument("--connections-only", action="store_true", help="no refused-first case")
    args = ap.parse_args()
    if args.stages is not None:
        costs = stages(args.stages, args.stage_packets)
        if args.json:
            print(json.dumps(costs, indent=2))
            return
        print(f"{args.stages.name}, first {args.stage_packets:,} records, thread CPU time")
        for name, us in costs.items():
            print(f"{name:<12} {us:6.2f} µs/packet")
        return
    text = _policy_text(args.app)
    refused = refused_first(args.flows * 5)
    conns = new_connections(args.flows, args.request)
    rows: dict[str, list[float]] = {"refused-first": [], "new-connection": [], "per-conn": []}
    per_conn = 0.0
    for r in range(args.rounds):
        order = ("refused", "conn") if r % 2 == 0 else ("conn", "refused")
        for case in order:
            if case == "refused":
                if args.connections_only:
                    continue
                cpu, n = run_refused(refused, text)
                rows["refused-first"].append(cpu / n * 1e6)
            else:
                cpu, n, per_conn = run_connections(conns, text)
                rows["new-connection"].append(cpu / n * 1e6)
                rows["per-conn"].append(cpu / len(conns) * 1e6)
    table = {
        name: {"median_us": statistics.median(v), "low": min(v), "high": max(v)}
        for name, v in rows.items()
        if v
    }
    table["per-conn"]["packets_seen"] = per_conn
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(
        f"gateway.rules, app-layer {args.app}, request {args.request}, {args.rounds} rounds,"
        " thread CPU time"
    )
    for name, row in table.items():
        unit = "µs/connection" if name == "per-conn" else "µs/packet"
        spread = f"({row['low']:.2f} – {row['high']:.2f})"
        print(f"{name:<16} {row['median_us']:8.2f} {unit:<14} {spread}")
    print(f"packets the engine sees per connection (offload on): {per_conn:.1f}")


if __name__ == "__main__":
    main()
