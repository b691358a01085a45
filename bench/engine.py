"""In-process engine benchmark: packets/s through decode -> flow -> policy, on one core.

Measured in one run, each figure the median of several passes over the same packets:
  loop       the bare Python loop over the packets (the floor of any per-packet work)
  decode     decode_l3 only
  engine-10  Engine.handle with a 10-rule gateway policy
  engine-10k the same 10 rules behind 9,990 generated rules (address blocks, port rules,
             subnets: what a large site policy looks like), which the traffic must get past
  engine-10+detect  the 10-rule policy with all six detectors on (gateway.rules' settings)
  ... pure   the same three through the Python engine alone (Engine(fast=False)): the figures
             before the compiled path of ips/fast/, with the ratios compiled / pure
plus the policy compile time for 10,000 rules. Ratios are printed against decode-only and
between the 10,000- and 10-rule policies.

The application layer (ips/app/inspect.py), each case with `set app-layer on` and `off`,
measured as CPU time of this thread in interleaved rounds (on, off, then off, on...): each
figure is the median over the rounds, `on / off` the median of each round's own ratio, with
the lowest and highest round (the spread: this machine is shared):
  tls-captures   the TLS captures of ../shared/pcaps (read once, then replayed in-process
                 through Engine.handle with their own link types and times)
  tls-captures+bodies  the same, every AppEvent's body built as the EVE sink does (the
                 bodies are built when first read: without this, nothing builds them)
  client-hello   flows that each carry one post-quantum ClientHello (1.6 KiB, one segment):
                 the difference on - off per flow is the cost of a ClientHello
  dns-message    one-datagram DNS flows (a query): the cost of a DNS message
  syn-scan       a SYN and its reset per flow, no payload: what a scan's probe costs
  decided-flow   the data packets of one TLS flow past its decision (its hello and the
                 server's flight read): the cost a decided flow's packet pays

    .venv/bin/python bench/engine.py [--packets 200000] [--flows 2000] [--runs 5] [--json]
                                     [--app-only] [--app-runs 9]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.events import AppEvent
from ips.core.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from ips.engine import Engine, Meta
from ips.policy.compile import CompiledPolicy
from ips.policy.resolve import load_policy_text

TEN_RULES = """\
table banned dynamic timeout 1h
set default drop
drop    from @banned
drop    proto tcp flags /FSRPAU         alert "NULL scan"
drop    proto tcp flags FPU/FSRPAU      alert "XMAS scan"
accept  state established
accept  proto tcp to 10.20.0.0/16 port { 80, 443, 8080 }
accept  proto udp to 10.20.0.0/16 port 53
accept  proto tcp from 10.10.0.10 to 10.20.0.0/16 port 22
drop    proto tcp to port 23 alert "telnet"
reject  proto tcp to port { 135-139, 445 }
accept  proto icmp type echo-request limit 1000/s per src else drop
"""


DETECTORS = """\
detect portscan   ports 15 within 60s   block 10m
detect sweep      hosts 25 within 60s   block 10m
detect stealth    count 3  within 60s   block 1h
detect icmpflood  rate 200/s  per src   limit
detect synflood   rate 500/s  per dst   limit
detect udpflood   rate 5000/s per src   limit
"""


def generated_rules(n: int) -> list[str]:
    """n rules that the benchmark traffic never matches but that share its dimensions
    (same protocols, overlapping ports and subnets), so the index has to do real work."""
    rng = random.Random(7)
    lines = []
    for i in range(n):
        a, b = divmod(i, 256)
        kind = i % 5
        if kind == 0:  # a blocklist entry
            lines.append(f"drop from 198.{18 + a % 2}.{a % 256}.{b}")
        elif kind == 1:  # a service on another server
            lines.append(f"accept proto tcp to 10.30.{a % 256}.{b} port {rng.randint(1, 65535)}")
        elif kind == 2:  # a partner subnet
            lines.append(
                f"accept proto udp from 172.{16 + a % 16}.{b}.0/24 to port {1000 + i % 60000}"
            )
        elif kind == 3:  # a port rule on the traffic's own subnet, other ports
            lines.append(f"reject proto tcp to 10.20.{b}.0/24 port {20000 + i % 40000}")
        else:  # a v6 rule
            lines.append(f"drop proto tcp from 2001:db8:{i:x}::/48 to port {rng.randint(1, 1024)}")
    return lines


def traffic(n_packets: int, n_flows: int) -> list[bytes]:
    """A mix like a gateway's: mostly TCP connections to web servers (handshake, data both
    ways), some DNS, a few pings. Each flow has several packets, as real flows do."""
    rng = random.Random(1)
    flows = []
    for i in range(n_flows):
        client = f"10.10.{i // 250 % 250}.{i % 250 + 1}"
        server = f"10.20.0.{rng.randint(1, 50)}"
        kind = rng.random()
        cport = 20000 + i % 40000
        if kind < 0.85:
            port = rng.choice((80, 443, 8080))
            payload = b"x" * rng.choice((0, 64, 512, 1400))
            flows.append(
                [
                    build_packet(PROTO_TCP, client, server, cport, port, flags=0x02),
                    build_packet(PROTO_TCP, server, client, port, cport, flags=0x12),
                    build_packet(
                        PROTO_TCP, client, server, cport, port, flags=0x18, payload=payload
                    ),
                    build_packet(
                        PROTO_TCP, server, client, port, cport, flags=0x18, payload=payload
                    ),
                    build_packet(PROTO_TCP, client, server, cport, port, flags=0x10),
                ]
            )
        elif kind < 0.97:
            flows.append(
                [
                    build_packet(PROTO_UDP, client, server, cport, 53, payload=b"q" * 40),
                    build_packet(PROTO_UDP, server, client, 53, cport, payload=b"a" * 120),
                ]
            )
        else:
            flows.append(
                [
                    build_packet(PROTO_ICMP, client, server, icmp_type=8, icmp_id=i),
                    build_packet(PROTO_ICMP, server, client, icmp_type=0, icmp_id=i),
                ]
            )
    out: list[bytes] = []
    while len(out) < n_packets:
        for f in flows:
            out.extend(f)
    return out[:n_packets]


PCAPS = Path(__file__).resolve().parents[2] / "shared" / "pcaps"
TLS_CAPTURES = (
    "sv_tls-subjectaltname_input.pcap",
    "zk_tls-chrome-34-google.pcap",
    "sv_community-id-ipv6_input.pcap",
    "sv_base64-decode-5885_input.pcap",
)
ACCEPT = "set default accept\n"


def _client_hello() -> bytes:
    """A Chrome-like ClientHello with an X25519MLKEM768 key share, in TLS records."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.pure.test_app_tls import chrome_like_extensions, client_hello_message, records

    return records(client_hello_message(chrome_like_extensions("example.com")))


def app_inputs(n_flows: int = 2000) -> dict[str, tuple[list, list]]:
    """The application-layer cases: name -> (warm-up items, measured items), each item
    (packet bytes, Meta, time); the warm-up is replayed before the clock starts."""
    from ips.io.pcap import read_capture

    captured: list[tuple[bytes, Meta, float]] = []
    for name in TLS_CAPTURES:
        path = PCAPS / name
        if path.is_file():
            for rec in read_capture(path):
                captured.append((rec.data, Meta(linktype=rec.linktype), rec.timestamp))
    hello = _client_hello()
    hello_flows = []
    dns_flows = []
    syn_flows = []
    for i in range(n_flows):
        client, cport = f"10.10.{i // 250 % 250}.{i % 250 + 1}", 20000 + i
        hello_flows += [
            build_packet(PROTO_TCP, client, "10.20.0.1", cport, 443, flags=0x02, seq=999),
            build_packet(PROTO_TCP, "10.20.0.1", client, 443, cport, flags=0x12, seq=4999),
            build_packet(PROTO_TCP, client, "10.20.0.1", cport, 443, flags=0x18, seq=1000,
                         payload=hello),
        ]  # fmt: skip
        name = b"\x03www\x07example\x03com\x00"
        query = (i & 0xFFFF).to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        dns_flows.append(
            build_packet(PROTO_UDP, client, "10.20.0.53", cport, 53,
                         payload=query + name + b"\x00\x01\x00\x01")
        )  # fmt: skip
        syn_flows += [
            build_packet(PROTO_TCP, client, "10.20.0.1", cport, 443, flags=0x02, seq=999),
            build_packet(PROTO_TCP, "10.20.0.1", client, 443, cport, flags=0x14, seq=0),
        ]  # fmt: skip
    decided = [
        build_packet(PROTO_TCP, "10.10.0.1", "10.20.0.1", 40000, 443, flags=0x18,
                     seq=1000 + len(hello) + 100 * k, payload=b"x" * 100)
        for k in range(20_000)
    ]  # fmt: skip
    flight_start = [
        build_packet(PROTO_TCP, "10.10.0.1", "10.20.0.1", 40000, 443, flags=0x02, seq=999),
        build_packet(PROTO_TCP, "10.20.0.1", "10.10.0.1", 443, 40000, flags=0x12, seq=4999),
        build_packet(PROTO_TCP, "10.10.0.1", "10.20.0.1", 40000, 443, flags=0x18, seq=1000,
                     payload=hello),
        build_packet(PROTO_TCP, "10.20.0.1", "10.10.0.1", 443, 40000, flags=0x19, seq=5000),
    ]  # fmt: skip

    def plain(packets: list[bytes]) -> list[tuple[bytes, Meta, float]]:
        return [(p, NO_META_RAW, 1.0) for p in packets]

    return {
        "tls-captures us/packet": ([], captured),
        "tls-captures+bodies us/packet": ([], captured),
        "client-hello us/flow": ([], plain(hello_flows)),
        "dns-message us/flow": ([], plain(dns_flows)),
        "syn-scan us/flow": ([], plain(syn_flows)),
        "decided-flow us/packet": (plain(flight_start), plain(decided)),
    }


# What each case's time is divided by: packets, or flows (3 packets a hello flow, 2 a SYN
# probe and its reset, 1 a DNS query).
_PER = {"client-hello us/flow": 3, "syn-scan us/flow": 2, "dns-message us/flow": 1}


def app_cases(runs: int, n_flows: int = 2000) -> dict[str, dict[str, float]]:
    """µs of CPU per packet (or per flow) of the application-layer cases, with app-layer on
    and off, measured in interleaved rounds (on, off, on, off...) so that both see the same
    machine; each figure is the median over the rounds, and `on / off` the median of each
    round's own ratio, with its lowest and highest (the spread)."""
    cases = app_inputs(n_flows)
    policies = {
        mode: load_policy_text(ACCEPT + f"set app-layer {mode}\n", "app.rules")
        for mode in ("on", "off")
    }

    def measure(policy, warm, items, bodies: bool) -> float:
        engine = Engine(policy)
        handle = engine.handle
        for data, meta, now in warm:
            handle(data, meta, now)
        gc.collect()
        # CPU time of this thread: what the engine costs, not the time other work on the
        # shared machine took the core away.
        t0 = time.thread_time()
        if bodies:
            # As the EVE sink does in the same process: each event's body is built (the
            # fingerprints in it computed); the JSON writing is left out.
            for data, meta, now in items:
                for effect in handle(data, meta, now).effects:
                    if effect.__class__ is AppEvent:
                        effect.body  # noqa: B018
        else:
            for data, meta, now in items:
                handle(data, meta, now)
        return time.thread_time() - t0

    samples: dict[str, dict[str, list[float]]] = {case: {"on": [], "off": []} for case in cases}
    for round_ in range(runs):
        for case, (warm, items) in cases.items():
            count = len(items) // _PER.get(case, 1)
            order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
            for mode in order:
                took = measure(policies[mode], warm, items, "bodies" in case)
                samples[case][mode].append(1e6 * took / count)
    out: dict[str, dict[str, float]] = {"on": {}, "off": {}, "on - off": {}, "on / off": {}}
    out["on / off lowest"] = {}
    out["on / off highest"] = {}
    for case, by_mode in samples.items():
        on, off = by_mode["on"], by_mode["off"]
        ratios = [a / b for a, b in zip(on, off, strict=True)]
        out["on"][case] = statistics.median(on)
        out["off"][case] = statistics.median(off)
        out["on - off"][case] = statistics.median([a - b for a, b in zip(on, off, strict=True)])
        out["on / off"][case] = statistics.median(ratios)
        out["on / off lowest"][case] = min(ratios)
        out["on / off highest"][case] = max(ratios)
    out["packets"] = {"tls-captures": len(cases["tls-captures us/packet"][1])}
    return out


NO_META_RAW = Meta()


def timed(fn, runs: int) -> float:
    """Median CPU seconds of this thread over `runs` calls (CPU time: the machine is shared)."""
    samples = []
    for _ in range(runs):
        gc.collect()
        t0 = time.thread_time()
        fn()
        samples.append(time.thread_time() - t0)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--flows", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--app-only", action="store_true", help="only the application-layer cases (on vs off)"
    )
    ap.add_argument("--app-runs", type=int, default=9, help="interleaved on/off rounds")
    args = ap.parse_args()
    if args.app_only:
        app = app_cases(args.app_runs)
        if args.json:
            print(json.dumps({"app": app}, indent=2))
        else:
            print_app(app, args.app_runs)
        return 0

    packets = traffic(args.packets, args.flows)
    meta = Meta(iif="eth0", oif="eth1")

    small = load_policy_text(TEN_RULES, "ten.rules")
    small_detect = load_policy_text(TEN_RULES + DETECTORS, "ten-detect.rules")
    big_text = "\n".join([*generated_rules(9_990), TEN_RULES])
    t0 = time.perf_counter()
    big = load_policy_text(big_text, "big.rules")
    t_parse = time.perf_counter() - t0
    t0 = time.perf_counter()
    big_compiled = CompiledPolicy(big)
    t_compile = time.perf_counter() - t0
    assert len(big.rules) == 10_000, len(big.rules)

    def loop() -> None:
        for _ in packets:
            pass

    def decode() -> None:
        for p in packets:
            decode_l3(p)

    def run_engine(policy, fast: bool = True):
        def go() -> None:
            # fresh flow table: every pass sees the same flows; fast=False: the Python
            # engine alone (without the compiled path of ips/fast/)
            engine = Engine(policy, fast=fast)
            handle = engine.handle
            now = 1000.0
            for p in packets:
                handle(p, meta, now)
                now += 0.00001

        return go

    results = {
        "loop": timed(loop, args.runs),
        "decode": timed(decode, args.runs),
        "engine-10": timed(run_engine(small), args.runs),
        "engine-10k": timed(run_engine(big_compiled), args.runs),
        "engine-10+detect": timed(run_engine(small_detect), args.runs),
        "engine-10 pure": timed(run_engine(small, fast=False), args.runs),
        "engine-10k pure": timed(run_engine(big_compiled, fast=False), args.runs),
        "engine-10+detect pure": timed(run_engine(small_detect, fast=False), args.runs),
    }
    n = len(packets)
    pps = {k: n / v for k, v in results.items()}
    report = {
        "packets": n,
        "flows": args.flows,
        "runs": args.runs,
        "python": sys.version.split()[0],
        "packets_per_s": {k: round(v) for k, v in pps.items()},
        "us_per_packet": {k: round(1e6 / v, 3) for k, v in pps.items()},
        "policy_10k_load_s": round(t_parse, 3),
        "policy_10k_compile_s": round(t_compile, 3),
        "policy_10k_total_s": round(t_parse + t_compile, 3),
        "ratios": {
            "engine-10k / engine-10": round(pps["engine-10k"] / pps["engine-10"], 3),
            "engine-10+detect / engine-10": round(pps["engine-10+detect"] / pps["engine-10"], 3),
            "engine-10 / decode": round(pps["engine-10"] / pps["decode"], 3),
            "engine-10k / decode": round(pps["engine-10k"] / pps["decode"], 3),
            "decode / loop": round(pps["decode"] / pps["loop"], 3),
            "engine-10 / engine-10 pure": round(pps["engine-10"] / pps["engine-10 pure"], 3),
            "engine-10k / engine-10k pure": round(pps["engine-10k"] / pps["engine-10k pure"], 3),
        },
    }
    report["app"] = app_cases(args.app_runs)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{n} packets over {args.flows} flows, median of {args.runs} runs, "
        f"Python {report['python']}, one core"
    )
    print(f"{'':<18}{'packets/s':>12}{'us/packet':>11}")
    for k in results:
        print(f"{k:<18}{pps[k]:>12,.0f}{1e6 / pps[k]:>11.2f}")
    print(
        f"10,000-rule policy: parse+resolve {t_parse:.2f} s, compile {t_compile:.2f} s, "
        f"total {t_parse + t_compile:.2f} s"
    )
    for name, value in report["ratios"].items():  # type: ignore[union-attr]
        print(f"ratio {name:<30}{value:.3f}")
    print_app(report["app"], args.app_runs)  # type: ignore[arg-type]
    return 0


def print_app(app: dict[str, dict[str, float]], runs: int) -> None:
    print(
        f"application layer, CPU µs, medians of {runs} interleaved on/off rounds "
        f"({app['packets']['tls-captures']:.0f} packets of TLS captures)"
    )
    print(f"{'':<30}{'on':>8}{'off':>8}{'on - off':>10}{'on / off':>10}{'spread':>14}")
    for k in app["on"]:
        spread = f"{app['on / off lowest'][k]:.2f}-{app['on / off highest'][k]:.2f}"
        print(
            f"{k:<30}{app['on'][k]:>8.2f}{app['off'][k]:>8.2f}{app['on - off'][k]:>10.2f}"
            f"{app['on / off'][k]:>10.2f}{spread:>14}"
        )


if __name__ == "__main__":
    sys.exit(main())
