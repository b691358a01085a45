"""Crash and restart under traffic: SIGKILL the daemon while three UDP streams cross the lab's
gateway, with ipsctl under a systemd-style restart loop (Restart=always, RestartSec=0.1).

  good     client 10.10.1.20 -> server:5001, accepted by the policy (in userspace)
  bad      attacker 10.10.1.66 -> server:5002, dropped by the policy (in userspace, with alert)
  blocked  10.10.1.77 (forged by the attacker) -> server:5003, its source blocked with
           `ipsctl blocks add` before the kill: dropped by the kernel's block set

each at 500 packets/s, numbered and time-stamped by the sender; the server records what
arrives. Per kill, from the kill to the end of the run:
  fail-open    good packets lost, bad packets passed (unfiltered while down), and the time from
               the kill to the last bad packet that passed (= until the new daemon enforces)
  fail-closed  bad packets passed (must be 0), good packets lost, and the time from the kill
               to the last good packet lost (= until the new daemon passes traffic again)
  both         blocked packets passed (must be 0: the block lives in the kernel's set) and the
               block still listed by the restarted daemon (adopted from the kernel)

    .venv/bin/python bench/restart.py [--kills 5] [--json]      (root: it builds its own lab)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "lab"))

from labkit import ATTACKER, CLIENT, SERVER, InlineLab, inline_lab  # noqa: E402

FORGED = "10.10.1.77"  # a lab address nobody holds: the attacker forges it
INTERVAL = 0.002  # 500 packets/s per stream
POLICY = """\
table banned dynamic timeout 1h
set default drop
drop    from @banned
drop    proto udp to port 5002  alert "bad stream" sid 1005002   # userspace from here on
accept  proto udp to port { 5001, 5003 }
accept  proto icmp
"""

SENDER = """
import socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
from ips.core.build import build_packet
seconds, interval = float(sys.argv[2]), float(sys.argv[3])
streams = [(s.split(":")[0], int(s.split(":")[1])) for s in sys.argv[4:]]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
seq, start = 0, time.time()
while time.time() - start < seconds:
    for src, port in streams:
        raw.sendto(build_packet(17, src, SERVER, 40000, port,
                                payload=struct.pack("!Id", seq, time.time())), (SERVER, 0))
    seq += 1
    time.sleep(max(0.0, start + seq * interval - time.time()))
print(seq)
""".replace("SERVER", repr(SERVER))

RECEIVER = """
import json, select, socket, struct, sys, time
seconds = float(sys.argv[1])
socks = {}
for port in (5001, 5002, 5003):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port)); s.setblocking(False)
    socks[s.fileno()] = (port, s)
got = {5001: [], 5002: [], 5003: []}
print("ready", flush=True)
end = time.time() + seconds
while time.time() < end:
    for fd in select.select(list(socks), [], [], 0.1)[0]:
        port, s = socks[fd]
        while True:
            try:
                data = s.recv(64)
            except BlockingIOError:
                break
            seq, sent = struct.unpack("!Id", data[:12])
            got[port].append([seq, sent])
print(json.dumps(got))
"""


@dataclass
class KillResult:
    mode: str
    sent_after_kill: int  # per stream
    good_lost: int
    bad_passed: int
    blocked_passed: int
    gap_seconds: float  # fail-open: until enforced again; fail-closed: until traffic passes
    block_kept: bool
    restarted_pid: int


def restart_loop(box: InlineLab, policy: Path, mode: str) -> subprocess.Popen[bytes]:
    """`ipsctl run` in a shell loop on gw, restarted 0.1 s after it dies (as systemd would)."""
    run = [
        sys.executable,
        "-m",
        "ips.cli",
        "run",
        "--policy",
        str(policy),
        "--socket",
        box.socket,
        "--eve",
        str(box.eve),
        "--fail-mode",
        mode,
    ]
    loop = 'while :; do "$@"; sleep 0.1; done'
    log = open(box.daemon_log, "ab")  # noqa: SIM115 - closed by stop_loop
    proc = box.lab.popen(
        "gw", ["sh", "-c", loop, "loop", *run], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def daemon_pid(box: InlineLab) -> int | None:
    out = box.ipsctl("status", "--json", timeout=10)
    if out.returncode != 0:
        return None
    return int(json.loads(out.stdout)["pid"])


def wait_daemon(box: InlineLab, not_pid: int | None = None, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(box.socket):
            pid = daemon_pid(box)
            if pid is not None and pid != not_pid:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no daemon came up: {box.daemon_log.read_text()[-2000:]}")


def stop_loop(box: InlineLab, loop: subprocess.Popen[bytes]) -> None:
    """The loop first (so nothing restarts), then the daemon it ran, cleanly, by PID."""
    pid = daemon_pid(box) if os.path.exists(box.socket) else None
    loop.kill()
    loop.wait(10)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
    loop.log.close()  # type: ignore[attr-defined]


def kill_once(box: InlineLab, mode: str, seconds: float = 6.0, kill_at: float = 1.5) -> KillResult:
    """One run of the three streams with one SIGKILL of the running daemon."""
    receiver = box.lab.popen(
        "server",
        [sys.executable, "-c", RECEIVER, str(seconds + 1.5)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    streams = {"client": [f"{CLIENT}:5001"], "attacker": [f"{ATTACKER}:5002", f"{FORGED}:5003"]}
    senders = [
        box.lab.popen(
            node,
            [sys.executable, "-c", SENDER, str(ROOT), str(seconds), str(INTERVAL), *st],
            stdout=subprocess.PIPE,
            text=True,
        )
        for node, st in streams.items()
    ]
    time.sleep(kill_at)
    victim = daemon_pid(box)
    assert victim is not None
    t_kill = time.time()
    os.kill(victim, signal.SIGKILL)
    new_pid = wait_daemon(box, not_pid=victim)
    counts = [int(s.communicate(timeout=seconds + 10)[0].split()[-1]) for s in senders]
    out, _ = receiver.communicate(timeout=seconds + 10)
    got = {int(k): v for k, v in json.loads(out.splitlines()[-1]).items()}
    # sequence numbers <-> send times: the sender keeps to a fixed schedule from its start
    t0 = min(sent - seq * INTERVAL for seq, sent in got[5001])
    kill_seq = int((t_kill - t0) / INTERVAL) + 1
    sent_after = counts[0] - kill_seq
    good_seqs = {seq for seq, _ in got[5001]}
    lost = [seq for seq in range(kill_seq, counts[0]) if seq not in good_seqs]
    bad_after = [sent for _, sent in got[5002] if sent >= t_kill]
    if mode == "open":  # until the last forbidden packet got through
        gap = max(bad_after, default=t_kill) - t_kill
    else:  # until the last allowed packet was lost
        gap = (max(lost) - kill_seq + 1) * INTERVAL if lost else 0.0
    blocks = json.loads(box.ipsctl("blocks", "list", "--json").stdout)
    kept = any(b["addr"] == FORGED for b in blocks["blocks"])
    return KillResult(
        mode, sent_after, len(lost), len(bad_after), len(got[5003]), round(gap, 3), kept, new_pid
    )


def run_mode(box: InlineLab, workdir: Path, mode: str, kills: int) -> list[KillResult]:
    policy = workdir / "restart.rules"
    policy.write_text(POLICY)
    loop = restart_loop(box, policy, mode)
    try:
        wait_daemon(box)
        out = box.ipsctl("blocks", "add", FORGED, "--ttl", "10m", "--reason", "bench")
        assert out.returncode == 0, out.stderr
        return [kill_once(box, mode) for _ in range(kills)]
    finally:
        stop_loop(box, loop)


def summary(results: list[KillResult]) -> dict[str, object]:
    return {
        "kills": len(results),
        "good_lost": [r.good_lost for r in results],
        "bad_passed": [r.bad_passed for r in results],
        "blocked_passed": sum(r.blocked_passed for r in results),
        "gap_median_s": round(statistics.median(r.gap_seconds for r in results), 3),
        "gap_max_s": max(r.gap_seconds for r in results),
        "block_kept": all(r.block_kept for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import tempfile

    figures = {}
    for mode in ("open", "closed"):
        with (
            tempfile.TemporaryDirectory(prefix="ipsctl-restart-") as tmp,
            inline_lab(Path(tmp), "brs") as box,
        ):
            figures[mode] = summary(run_mode(box, Path(tmp), mode, args.kills))
    if args.json:
        print(json.dumps(figures))
    else:
        for mode, f in figures.items():
            print(f"fail-{mode}: {f}")
    ok = all(f["blocked_passed"] == 0 and f["block_kept"] for f in figures.values())
    ok = ok and all(n == 0 for n in figures["closed"]["bad_passed"])  # type: ignore[union-attr]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
