"""The shipped policies scored over a mix of the shared captures and synthetic attacks:
`ipsctl mix` then `ipsctl eval` for each of policies/*.rules (docs/evaluation.md has the
table this prints, with its date).

    .venv/bin/python labs/evaluation.py [--out DIR] [--packets N] [--seed S] [--json]

Benign: every capture of ../shared/pcaps/ (reused with new addresses to reach the size).
Attacks, written here from a few fields each (ips.core.build), one source and one victim of
the documentation networks, remapped by the mixer into its attacker and victim networks:

  portscan   SYN to 200 ports at 100/s, each answered by a RST
  sweep      SYN to port 445 of 60 hosts at 50/s
  stealth    NULL, XMAS and FIN probes of 30 ports at 20/s
  icmpflood  3000 echo requests at 1000/s (one flow)
  synflood   5000 SYNs at 2500/s from random (spoofed) sources to port 80
  udpflood   12000 UDP datagrams at 6667/s (one flow)

Offline, no root; a minute on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from ips.core.build import build_packet
from ips.core.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from ips.io.pcap import write_pcap

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "pcaps"
T0 = 1_700_000_000.0
ATTACKER, VICTIM = "192.0.2.66", "192.0.2.10"
FLAGS = {"S": 0x02, "RA": 0x14, "FPU": 0x29, "F": 0x01, "": 0x00}
# Packet weights of the mix: the attacks as a real capture of an attacked site might have them
# (a few scans, floods heavier), 77 % benign.
RATIO = "benign=76,portscan=1,sweep=1,stealth=1,icmpflood=4,synflood=5,udpflood=12"


def tcp(src: str, dst: str, sport: int, dport: int, flags: str) -> bytes:
    return build_packet(PROTO_TCP, src, dst, sport, dport, flags=FLAGS[flags])


def attacks() -> dict[str, list[tuple[float, bytes]]]:
    rng = random.Random(1)
    out: dict[str, list[tuple[float, bytes]]] = {}
    out["portscan"] = [
        r
        for k in range(200)
        for r in (
            (T0 + k * 0.01, tcp(ATTACKER, VICTIM, 45000, 1 + k, "S")),
            (T0 + k * 0.01 + 0.0005, tcp(VICTIM, ATTACKER, 1 + k, 45000, "RA")),
        )
    ]
    out["sweep"] = [
        (T0 + k * 0.02, tcp(ATTACKER, f"192.0.2.{100 + k}", 45001, 445, "S")) for k in range(60)
    ]
    out["stealth"] = [
        (T0 + k * 0.05, tcp(ATTACKER, VICTIM, 45002, 1 + k, ("", "FPU", "F")[k % 3]))
        for k in range(30)
    ]
    out["icmpflood"] = [
        (T0 + k * 0.001, build_packet(PROTO_ICMP, ATTACKER, VICTIM, icmp_type=8, icmp_id=7))
        for k in range(3000)
    ]
    out["synflood"] = [
        (
            T0 + k * 0.0004,
            tcp(f"203.0.113.{rng.randrange(1, 255)}", VICTIM, rng.randrange(1024, 65535), 80, "S"),
        )
        for k in range(5000)
    ]
    out["udpflood"] = [
        (
            T0 + k * 0.00015,
            build_packet(PROTO_UDP, ATTACKER, VICTIM, 40000, 9999, payload=b"x" * 32),
        )
        for k in range(12000)
    ]
    return out


def ipsctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ips.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ipsctl-evaluation"))
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print every evaluation as JSON")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    inputs: list[str] = []
    for capture in sorted(SHARED.glob("*.pcap")):
        inputs += ["-i", f"benign={capture}"]
    for name, records in attacks().items():
        path = args.out / f"{name}.pcap"
        write_pcap(path, records)
        inputs += ["-i", f"{name}={path}"]
    mixed = args.out / "mixed.pcapng"
    made = ipsctl("mix", *inputs, "--ratio", RATIO, "--packets", str(args.packets), "--seed",
                  str(args.seed), "-o", str(mixed), "--no-progress")  # fmt: skip
    if made.returncode != 0:
        sys.exit(f"ipsctl mix failed: {made.stderr}")
    print(made.stdout.strip(), file=sys.stderr)
    results = {}
    for policy in sorted((ROOT / "policies").glob("*.rules")):
        out = ipsctl("eval", str(policy), str(mixed), "--json", "--no-progress",
                     "--svg", str(args.out / f"{policy.stem}.svg"))  # fmt: skip
        if out.returncode != 0:
            sys.exit(f"ipsctl eval {policy.name} failed: {out.stderr}")
        results[policy.name] = json.loads(out.stdout)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    classes = [row["class"] for row in next(iter(results.values()))["classes"]]
    print("| policy | " + " | ".join(classes) + " | benign FPR | alerts (true) | flow precision | "
          "flow recall | precision at 1 % |")  # fmt: skip
    print("|---" * (len(classes) + 6) + "|")
    for name, ev in results.items():
        rows = {r["class"]: r for r in ev["classes"]}
        cells = []
        for c in classes:
            r = rows[c]
            ttd = r["time_to_detect"]["first"]
            found = f"{r['episodes_detected']}/{r['episodes']} bursts"
            when = f", {ttd:.2f} s" if ttd is not None else ""
            cells.append(f"{pct(r['recall'])} ({found}{when})")
        t, b = ev["totals"], ev["base_rate"]
        at_one = b["precision_at_warning"]
        print(
            f"| {name} | " + " | ".join(cells) + f" | {pct(t['fpr'])} ({t['fp']}) | "
            f"{t['alerts']} ({t['true_alerts']}) | {pct(t['precision'])} | {pct(t['recall'])} | "
            f"{pct(at_one)} |"
        )


if __name__ == "__main__":
    main()
