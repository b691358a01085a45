"""A small labelled capture built by hand, for `ipsctl eval`'s tests (pure and lab): flows
of packets with times and a class each, written as a classic pcap (raw IP) beside its labels
in the contract's format (ips/mix/labels.py), as `ipsctl mix` would write them.

The story of `crafted_mix` (the hand count is in tests/pure/test_evaluate.py):

  t (s)       who                                            class      flows
  0 .. 9      10 HTTP exchanges, clients 10.9.1.1-10 ->      benign        10
              10.9.2.10:80 (SYN, SYN/ACK, ACK, FIN), 1 per s
  12          a benign client 10.9.1.11 -> 10.9.2.10:23      benign         1
              (telnet: the rule's alert is a false one)
  20 .. 20.7  10.9.1.66 probes 8 ports of 10.9.2.10, a SYN   portscan       8
              every 0.1 s, each answered by a RST
  40, 41      10.9.1.77 -> 10.9.2.10:23, SYN + SYN/ACK       telnet         2
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packets import tcp

from ips.io.pcap import write_pcap
from ips.mix.labels import FlowLabel, LabelsHeader, class_counts, write_labels

T0 = 1_700_000_000.0
SERVER = "10.9.2.10"
SCANNER = "10.9.1.66"
TELNET_ATTACKER = "10.9.1.77"
SCAN_PORTS = [20, 21, 22, 25, 110, 135, 139, 445]

# The policy the hand count is for: one alerting rule, one detector that only alerts.
POLICY = """\
set default accept
match proto tcp to port 23 alert "telnet" sid 100
detect portscan ports 5 within 10s alert
"""


@dataclass
class LabelledFlow:
    cls: str
    src: str
    sport: int
    dst: str
    dport: int
    packets: list[tuple[float, bytes]] = field(default_factory=list)


def _exchange(src: str, sport: int, dst: str, dport: int, t: float) -> list[tuple[float, bytes]]:
    return [
        (t, tcp(src, dst, sport, dport, flags="S")),
        (t + 0.01, tcp(dst, src, dport, sport, flags="SA")),
        (t + 0.02, tcp(src, dst, sport, dport, flags="A")),
        (t + 0.03, tcp(src, dst, sport, dport, flags="FA")),
    ]


def crafted_flows(t0: float = T0) -> list[LabelledFlow]:
    flows = []
    for i in range(10):
        src = f"10.9.1.{i + 1}"
        flows.append(
            LabelledFlow(
                "benign", src, 40000 + i, SERVER, 80, _exchange(src, 40000 + i, SERVER, 80, t0 + i)
            )
        )
    flows.append(
        LabelledFlow(
            "benign",
            "10.9.1.11",
            41000,
            SERVER,
            23,
            _exchange("10.9.1.11", 41000, SERVER, 23, t0 + 12),
        )
    )
    for k, port in enumerate(SCAN_PORTS):
        t = t0 + 20 + 0.1 * k
        flows.append(
            LabelledFlow(
                "portscan",
                SCANNER,
                50000,
                SERVER,
                port,
                [
                    (t, tcp(SCANNER, SERVER, 50000, port, flags="S")),
                    (t + 0.001, tcp(SERVER, SCANNER, port, 50000, flags="RA")),
                ],
            )
        )
    for k in range(2):
        t = t0 + 40 + k
        sport = 52000 + k
        flows.append(
            LabelledFlow(
                "telnet",
                TELNET_ATTACKER,
                sport,
                SERVER,
                23,
                [
                    (t, tcp(TELNET_ATTACKER, SERVER, sport, 23, flags="S")),
                    (t + 0.01, tcp(SERVER, TELNET_ATTACKER, 23, sport, flags="SA")),
                ],
            )
        )
    return flows


def write_labelled(path: Path, flows: list[LabelledFlow]) -> Path:
    """Write PATH (classic pcap, raw IP) and PATH's labels; flows numbered by first packet."""
    order = sorted(range(len(flows)), key=lambda i: flows[i].packets[0][0])
    number = {old: new for new, old in enumerate(order)}
    packets = sorted(
        ((t, number[i], data) for i, f in enumerate(flows) for t, data in f.packets),
        key=lambda p: (p[0], p[1]),
    )
    write_pcap(path, [(t, data) for t, _, data in packets])
    labels = []
    for new, old in enumerate(order):
        f = flows[old]
        indexes = [k for k, p in enumerate(packets) if p[1] == new]
        times = [t for t, _ in f.packets]
        labels.append(
            FlowLabel(
                flow=new,
                cls=f.cls,
                proto=6,
                src=f.src,
                sport=f.sport,
                dst=f.dst,
                dport=f.dport,
                first_packet=indexes[0],
                last_packet=indexes[-1],
                packets=len(indexes),
                start=min(times),
                end=max(times),
                input="crafted",
            )
        )
    header = LabelsHeader(
        seed=0,
        strategy="crafted",
        packets=len(packets),
        flows=len(labels),
        classes=class_counts(labels),
    )
    write_labels(path, header, labels, (p[1] for p in packets))
    return path


def crafted_mix(directory: Path, t0: float = T0) -> Path:
    return write_labelled(directory / "mix.pcap", crafted_flows(t0))


def mixed_by_ipsctl_mix(directory: Path, seed: int = 3) -> Path:
    """The crafted mix's classes as three inputs, mixed again by `ipsctl mix` (proportional,
    by packets, as the crafted mix has them): a capture written by the mixer itself (pcapng,
    addresses remapped into its role networks), with its labels."""
    flows = crafted_flows()
    inputs = []
    for cls in ("benign", "portscan", "telnet"):
        path = directory / f"{cls}.pcap"
        write_pcap(path, sorted(p for f in flows if f.cls == cls for p in f.packets))
        inputs += ["-i", f"{cls}={path}"]
    out = directory / "mixed.pcapng"
    done = subprocess.run(
        [sys.executable, "-m", "ips.cli", "mix", *inputs, "--ratio",
         "benign=68,portscan=25,telnet=7", "--seed", str(seed), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out
