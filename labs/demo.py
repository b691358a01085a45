"""`make demo`: the lab, ipsctl inline on its gateway with policies/gateway.rules, a short
scripted scenario with real clients and a real attack tool, the verdict table, and the lab
taken down again.

    client   10.10.1.20 ─┐
    attacker 10.10.1.66 ─┴─ lan ─ gw (ipsctl inline) ─ dmz ─ server 10.10.2.10 (+ .100-.131)

Traffic goes only between the lab's own namespaces. `--offline` replays the same policy over
a scripted capture instead (labs/captures/demo.pcap), for machines where the lab cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ips.core.build import build_packet
from ips.core.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN
from ips.io.pcap import write_pcap

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CAPTURE = HERE / "captures" / "demo.pcap"
OUT = ROOT / "out"
PREFIX = "demo-"

CLIENT, ADMIN, ATTACKER = "10.10.1.20", "10.10.1.10", "10.10.1.66"
SERVER = "10.10.2.10"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: fixed, so the capture is the same every time


# ---- the live lab -------------------------------------------------------------------------------


def sh(
    prefix: str, node: str, argv: list[str], timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", f"{prefix}{node}", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def step(title: str, outcome: str, ok: bool) -> bool:
    print(f"  {'ok ' if ok else 'BAD'} {title:<58} {outcome}")
    return ok


def scenario_live(prefix: str, sock: str) -> bool:
    """The scripted scenario; True when every step behaved as the policy says."""
    good = True
    r = sh(prefix, "client", ["curl", "-s", "-m", "3", f"http://{SERVER}/"])
    good &= step(
        "client: GET http://10.10.2.10/",
        f"allowed -> {r.stdout.strip()!r}",
        r.returncode == 0 and r.stdout.startswith("ok port 80"),
    )
    r = sh(prefix, "client", ["curl", "-s", "-m", "3", f"http://{SERVER}:8081/"])
    good &= step(
        "client: GET :8081 (the app's old port)",
        f"rewritten -> {r.stdout.strip()!r}",
        r.returncode == 0 and r.stdout.startswith("ok port 8080"),
    )
    r = sh(prefix, "client", ["curl", "-s", "-m", "3", f"http://{SERVER}:445/"])
    good &= step("client: connect to SMB :445", "rejected (TCP reset at once)", r.returncode == 7)
    r = sh(prefix, "client", ["ping", "-c", "3", "-i", "0.2", "-W", "1", SERVER])
    good &= step("client: ping 10.10.2.10", "allowed (20/s per source)", r.returncode == 0)
    r = sh(prefix, "attacker", ["curl", "-s", "-m", "2", f"telnet://{SERVER}:23"])
    good &= step("attacker: telnet 10.10.2.10", "dropped (timed out) + alert", r.returncode == 28)
    r = sh(
        prefix,
        "attacker",
        ["curl", "-s", "-m", "3", f"http://{SERVER}/../../etc/passwd", "--path-as-is"],
    )
    good &= step(
        "attacker: GET /../../etc/passwd", "dropped (path traversal) + alert", r.returncode == 28
    )
    r = sh(
        prefix,
        "attacker",
        [
            "nmap",
            "-sX",
            "-Pn",
            "-n",
            "--max-retries",
            "0",
            "-T4",
            "-p",
            "20-25,80,443,8080",
            SERVER,
        ],
        timeout=60,
    )
    xmas_dropped = r.returncode == 0 and "open|filtered" in r.stdout and " open " not in r.stdout
    good &= step("attacker: nmap -sX (XMAS scan, 9 ports)", "dropped + alerts", xmas_dropped)
    listing = subprocess.run(
        [sys.executable, "-m", "ips.cli", "blocks", "list", "--json", "--socket", sock],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    blocked = ATTACKER in listing.stdout
    good &= step(
        "stealth detector: attacker blocked in the kernel set", "ipsctl blocks list", blocked
    )
    r = sh(prefix, "attacker", ["curl", "-s", "-m", "2", f"http://{SERVER}/"])
    good &= step("attacker: GET / (now blocked)", "dropped in the kernel", r.returncode == 28)
    r = sh(prefix, "client", ["curl", "-s", "-m", "3", f"http://{SERVER}/"])
    good &= step("client: GET / (still served)", "allowed", r.returncode == 0)
    return bool(good)


def verdict_table(status: dict) -> str:  # type: ignore[type-arg]
    kernel = status.get("kernel_hits", {})
    lines = [f"{'rule':<26} {'action':<8} {'kernel':>7} {'engine':>7}  text"]
    for r in status["worker"]["rules"]:
        where = r["where"].split("/")[-1]
        k = next((v for key, v in kernel.items() if key.endswith(r["where"])), 0)
        if not (r["hits"] or k):
            continue
        text = r["text"] if len(r["text"]) <= 56 else r["text"][:55] + "…"
        lines.append(f"{where:<26} {r['action']:<8} {k:>7} {r['hits']:>7}  {text}")
    blocks = status.get("blocks") or {}
    lines.append(
        f"{'(blocked sources)':<26} {'drop':<8} {blocks.get('kernel_drops', 0):>7} "
        f"{'':>7}  the kernel's block set: {blocks.get('active', 0)} address(es)"
    )
    w = status["worker"]
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(w["verdicts"].items()))
    lines.append(
        f"\npackets seen by the engine: {w['packets']} ({verdicts}); "
        f"flows {w['flows']}, alerts {w['alerts']}"
    )
    return "\n".join(lines)


def run_live() -> int:
    from ips.control import request
    from ips.lab import netns

    if os.geteuid() != 0:
        print(
            "make demo: the lab needs root (network namespaces, nftables, NFQUEUE);"
            " `labs/demo.py --offline` replays the scenario instead",
            file=sys.stderr,
        )
        return 1
    OUT.mkdir(exist_ok=True)
    netns.down(PREFIX)  # a demo interrupted earlier
    sock = str(OUT / "demo.sock")
    eve = OUT / "demo-eve.json"
    eve.unlink(missing_ok=True)
    # blocks a clean stop saved for the next start (ipsctl run --state): the demo starts clean
    state = OUT / "blocks.json"
    state.unlink(missing_ok=True)
    print("lab up: labs/gateway.yaml (attacker, client, gw, server)")
    lab = netns.up(HERE / "gateway.yaml", prefix=PREFIX)
    daemon = None
    try:
        print("ipsctl run --policy policies/gateway.rules (inline on gw)")
        log = open(OUT / "demo-daemon.log", "w")  # noqa: SIM115
        daemon = lab.popen(
            "gw",
            [
                sys.executable,
                "-m",
                "ips.cli",
                "run",
                "--policy",
                "policies/gateway.rules",
                "--socket",
                sock,
                "--eve",
                str(eve),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        for _ in range(150):
            if daemon.poll() is not None:
                print((OUT / "demo-daemon.log").read_text(), file=sys.stderr)
                return 1
            try:
                request(sock, {"op": "status"}, timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        print("\nscenario:")
        good = scenario_live(PREFIX, sock)
        time.sleep(1.2)  # the worker writes its EVE events
        status = request(sock, {"op": "status"})
        print(f"\n{verdict_table(status)}")
        alerts = [json.loads(x) for x in eve.read_text().splitlines() if '"alert"' in x]
        print(f"\nalerts ({len(alerts)}, EVE JSON in {eve.relative_to(ROOT)}):")
        seen = set()
        for a in alerts:
            key = (a["alert"]["signature"], a["src_ip"])
            if key not in seen:
                seen.add(key)
                print(
                    f"  {a['alert']['action']:<8} {a['alert']['signature']:<28} "
                    f"{a['src_ip']} -> {a['dest_ip']}:{a.get('dest_port', '')}"
                )
        print("\nall steps behaved as the policy says" if good else "\nSOME STEPS DID NOT")
        return 0 if good else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(15)
        netns.down(PREFIX)
        state.unlink(missing_ok=True)
        print("lab down")


# ---- offline: the same scenario as a capture ---------------------------------------------------


def tcp_session(
    client: str, cport: int, server: str, sport: int, request: bytes, t: float
) -> list[tuple[float, bytes]]:
    """A complete TCP connection: handshake, one request and answer, FIN both ways."""
    answer = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"
    end_c, end_s = 101 + len(request), 501 + len(answer)
    packets = [
        build_packet(PROTO_TCP, client, server, cport, sport, flags=TCP_SYN, seq=100),
        build_packet(
            PROTO_TCP, server, client, sport, cport, flags=TCP_SYN | TCP_ACK, seq=500, ack=101
        ),
        build_packet(PROTO_TCP, client, server, cport, sport, flags=TCP_ACK, seq=101, ack=501),
        build_packet(
            PROTO_TCP,
            client,
            server,
            cport,
            sport,
            flags=TCP_PSH | TCP_ACK,
            seq=101,
            ack=501,
            payload=request,
        ),
        build_packet(
            PROTO_TCP,
            server,
            client,
            sport,
            cport,
            flags=TCP_PSH | TCP_ACK,
            seq=501,
            ack=end_c,
            payload=answer,
        ),
        build_packet(
            PROTO_TCP, client, server, cport, sport, flags=TCP_FIN | TCP_ACK, seq=end_c, ack=end_s
        ),
        build_packet(
            PROTO_TCP,
            server,
            client,
            sport,
            cport,
            flags=TCP_FIN | TCP_ACK,
            seq=end_s,
            ack=end_c + 1,
        ),
    ]
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
    records.append((T0 + 8.3, build_packet(PROTO_TCP, ATTACKER, SERVER, 50003, 80, flags=0)))
    traversal = b"GET /../../etc/passwd HTTP/1.0\r\n\r\n"
    records += tcp_session(ATTACKER, 50004, SERVER, 80, traversal, T0 + 9)
    records.append((T0 + 10, build_packet(PROTO_TCP, ATTACKER, SERVER, 50005, 3306, flags=TCP_SYN)))
    return records


def run_offline() -> int:
    os.chdir(ROOT)  # rule locations print relative to the repository
    CAPTURE.parent.mkdir(exist_ok=True)
    write_pcap(CAPTURE, scenario())
    from ips.cli import main as ipsctl

    OUT.mkdir(exist_ok=True)
    args = [
        "replay",
        "policies/gateway.rules",
        str(CAPTURE.relative_to(ROOT)),
        "--eve",
        str((OUT / "demo-eve.json").relative_to(ROOT)),
    ]
    print(f"$ ipsctl {' '.join(args)}")
    try:
        ipsctl(args, standalone_mode=False)
    except SystemExit as exc:  # click's exit with the command's status
        return int(exc.code or 0)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="replay the scenario as a capture instead of the live lab",
    )
    args = parser.parse_args()
    return run_offline() if args.offline else run_live()


if __name__ == "__main__":
    sys.exit(main())
