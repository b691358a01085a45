"""Reload under load: N `ipsctl apply` in a row (100 by default) while an iperf3 TCP stream
crosses the lab's gateway through ipsctl (offloaded between applies: each apply is a new
offload generation, which brings the connection back to the engine). The established,
accepted connection must not be reset or lose a packet to the policy:

  iperf3    ends without error (a reset would end it), and no retransmitted segment (its
            JSON report) but those the receiver reported as duplicates with D-SACKs (the
            client's TcpExt counter of segments D-SACKed: reordering, not loss) and those
            the kernel's own drops outside ipsctl explain (the lab's links' drop counters,
            the two ends' TCP receive drops: a machine starved of CPU)
  engine    no drop and no reject while the applies ran (worker verdict counters)
  kernel    no packet dropped by the queue (nfnetlink_queue: queue_dropped, user_dropped)
  policy    every apply took effect (the digest alternated between the two policies)

    .venv/bin/python bench/reload.py [--applies 100] [--seconds 150] [--gso on|off] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "lab"))

from labkit import SERVER, InlineLab, inline_lab, wait_until  # noqa: E402

POLICY = """\
table banned dynamic timeout 1h
set default drop
drop    from @banned
drop    proto tcp to port 23 alert "telnet" sid 1000023   # userspace from here on
accept  state established
accept  proto tcp from 10.10.1.0/24 to 10.10.2.0/24 port {{ 80, 5201 }}
accept  proto icmp
drop    proto udp to port {port}
"""


@dataclass
class ReloadResult:
    applies: int
    applies_failed: int
    digests: int
    apply_seconds: float
    iperf_seconds: float
    iperf_error: str
    bytes_sent: int
    bytes_received: int
    retransmits: int
    # D-SACKs: the receiver reported a duplicate (the original had arrived, late: reordering,
    # not loss). One D-SACK covers a range of segments (a GSO super-packet reordered is ~45
    # of them), so what retransmissions are compared with is the segments the D-SACKs covered
    # (TcpExt TCPDSACKRecvSegs): retransmits - dsack_segments = losses.
    dsacks: int
    dsack_segments: int
    # Drops of the kernel outside ipsctl during the run (the lab's links, the two ends' TCP
    # receive paths): a machine starved of CPU loses segments there, and their
    # retransmissions are explained by them (retransmits <= dsack_segments + kernel_drops).
    kernel_drops: int
    gbit_s: float
    engine_drops: int
    engine_rejects: int
    queue_dropped: int
    user_dropped: int


def _tcp_ext(box: InlineLab, node: str) -> dict[str, int]:
    """The TcpExt counters of /proc/net/netstat in a lab node's namespace."""
    lines = box.run(node, ["cat", "/proc/net/netstat"]).stdout.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
    return {}


def _dsacks(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(after.get(k, 0) - before.get(k, 0) for k in ("TCPDSACKRecv", "TCPDSACKOfoRecv"))


# Where the kernel drops a TCP segment under CPU starvation without ipsctl having a part in
# it: a full receive backlog (a veth counts its peer's as its own tx drop), a receiver's
# socket under memory pressure. Each such drop explains one retransmission no D-SACK covers.
_TCP_RECEIVE_DROPS = (
    "TCPBacklogDrop",
    "TCPRcvQDrop",
    "TCPOFODrop",
    "TCPZeroWindowDrop",
    "PFMemallocDrop",
)


def _link_drops(box: InlineLab) -> int:
    """Packets the lab's interfaces dropped so far (client, gw, server and the switch):
    /proc/net/dev's receive and transmit drop columns in each namespace."""
    total = 0
    namespaces = [box.lab.namespace(node) for node in ("client", "gw", "server")]
    for ns in [*namespaces, box.lab.switch]:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "cat", "/proc/net/dev"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        for line in out.splitlines()[2:]:
            cols = line.partition(":")[2].split()
            if len(cols) >= 12:
                total += int(cols[3]) + int(cols[11])
    return total


def _receive_drops(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(after.get(k, 0) - before.get(k, 0) for k in _TCP_RECEIVE_DROPS)


def _dsack_segments(before: dict[str, int], after: dict[str, int]) -> int:
    """Segments the D-SACKs received covered (Linux 4.19 and later count them)."""
    return after.get("TCPDSACKRecvSegs", 0) - before.get("TCPDSACKRecvSegs", 0)


def _verdicts(box: InlineLab) -> dict[str, int]:
    return dict(box.status()["worker"]["verdicts"])


def run(
    box: InlineLab, workdir: Path, applies: int, seconds: float, daemon_args: tuple[str, ...] = ()
) -> ReloadResult:
    a, b = workdir / "a.rules", workdir / "b.rules"
    a.write_text(POLICY.format(port=9))
    b.write_text(POLICY.format(port=10))
    box.start_daemon(a, *daemon_args)
    tcp_before = _tcp_ext(box, "client")
    server_before = _tcp_ext(box, "server")
    links_before = _link_drops(box)
    server = box.lab.popen(
        "server",
        ["iperf3", "-s", "-1", "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: "5201" in box.run("server", ["ss", "-ltn"]).stdout, timeout=10)
        client = box.lab.popen(
            "client",
            ["iperf3", "-c", SERVER, "-p", "5201", "-t", str(seconds), "-J", "-b", "300M"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # established, and in the engine's flow table
        before, q_before = _verdicts(box), box.queue_line() or {}
        digests, failed = set(), 0
        start = time.monotonic()
        for i in range(applies):
            out = box.ipsctl("apply", str(b if i % 2 == 0 else a))
            failed += out.returncode != 0
            if i < 4 or i == applies - 1:
                digests.add(box.status()["policy"]["digest"])
        apply_seconds = time.monotonic() - start
        after, q_after = _verdicts(box), box.queue_line() or {}
        still_running = client.poll() is None
        out, err = client.communicate(timeout=seconds + 30)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)
    tcp_after = _tcp_ext(box, "client")
    server_after = _tcp_ext(box, "server")
    kernel_drops = (
        _link_drops(box)
        - links_before
        + _receive_drops(tcp_before, tcp_after)
        + _receive_drops(server_before, server_after)
    )
    report = json.loads(out) if out.strip() else {"error": err}
    end = report.get("end", {})
    sent = end.get("sum_sent", {})
    received = end.get("sum_received", {})
    return ReloadResult(
        applies=applies,
        applies_failed=failed,
        digests=len(digests),
        apply_seconds=round(apply_seconds, 1),
        iperf_seconds=seconds,
        iperf_error=report.get("error", "") or ("" if still_running else "ended before applies"),
        bytes_sent=int(sent.get("bytes", 0)),
        bytes_received=int(received.get("bytes", 0)),
        retransmits=int(sent.get("retransmits", 0)),
        dsacks=_dsacks(tcp_before, tcp_after),
        dsack_segments=_dsack_segments(tcp_before, tcp_after),
        kernel_drops=kernel_drops,
        gbit_s=round(received.get("bits_per_second", 0) / 1e9, 3),
        engine_drops=after.get("drop", 0) - before.get("drop", 0),
        engine_rejects=after.get("reject", 0) - before.get("reject", 0),
        queue_dropped=q_after.get("queue_dropped", 0) - q_before.get("queue_dropped", 0),
        user_dropped=q_after.get("user_dropped", 0) - q_before.get("user_dropped", 0),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--applies", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=150)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--gso", choices=("on", "off"), default="off", help="ipsctl run --gso")
    args = ap.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="ipsctl-reload-") as tmp,
        inline_lab(Path(tmp), "brl") as box,
    ):
        r = run(box, Path(tmp), args.applies, args.seconds, ("--gso", args.gso))
    print(json.dumps(r.__dict__) if args.json else r)
    ok = (
        r.applies_failed == 0
        and not r.iperf_error
        and r.engine_drops == 0
        and r.engine_rejects == 0
        and r.queue_dropped == 0
        and r.user_dropped == 0
        and r.retransmits <= r.dsack_segments + r.kernel_drops + 2  # as the lab test
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
