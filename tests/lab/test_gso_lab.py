"""GSO in full inspection (issue 24, item 2): with the queue's GSO flag (`ipsctl run --gso
on`, the default with our NFQUEUE client), a bulk TCP stream reaches the worker as
super-packets of up to 64 KB, each judged once, instead of every segment; the kernel segments
them after the verdict.

Checked with the real daemon on the lab's gw, offload off (every packet inspected):
- an iperf3 transfer of 20 MiB arrives whole, and the worker counted super-packets;
- the engine judged far fewer packets than went on the wire (a wire segment carries at
  most one MSS, 1,448 bytes here);
- a `payload contains` rule still finds its string inside a super-packet and stops the
  connection that carries it;
- with `--gso off` the same transfer comes as wire packets only (no
  super-packet counted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from labkit import SERVER, InlineLab, inline_lab, wait_until

POLICY = """
set offload off
set app-layer off
set default drop
drop proto tcp to port 5202 payload contains "EVIL-MARKER" alert "marker" sid 9100001
accept state established
accept proto tcp from 10.10.1.0/24 to 10.10.2.10 port { 5201, 5202 }
"""
SIZE = 20 * 1024 * 1024
MSS = 1448  # the lab's veths: MTU 1500, TCP timestamps on
# bytes of the marked stream before its marker: within the policy's payload depth (1 MiB by
# default, `set payload-depth`), beyond which `payload contains` does not read a flow
MARKED = 512 << 10
# The server's end of the marked stream: counts the bytes until the peer closes, resets, or
# nothing comes for 3 s (the stream stopped at the marker), prints the count.
RECEIVER = f"""
import socket
ls = socket.create_server(("{SERVER}", 5202))
ls.settimeout(15)
conn, _ = ls.accept()
conn.settimeout(3)
n = 0
try:
    while chunk := conn.recv(1 << 16):
        n += len(chunk)
        if b"EVIL-MARKER" in chunk:
            n = -n
            break
except OSError:
    pass
print(n)
"""
SENDER = f"""
import socket
s = socket.create_connection(("{SERVER}", 5202), timeout=10)
s.settimeout(6)
try:
    s.sendall(b"a" * {MARKED} + (b"EVIL-MARKER" + b"b" * 89) * 5000)
except OSError:
    pass
"""


def transfer(box: InlineLab) -> int:
    """iperf3 -n 20M client -> server through gw; the bytes the server received."""
    server = box.lab.popen(
        "server",
        ["iperf3", "-s", "-1", "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: "5201" in box.run("server", ["ss", "-ltn"]).stdout, timeout=10)
        out = box.run(
            "client", ["iperf3", "-c", SERVER, "-p", "5201", "-n", "20M", "-J"], timeout=60
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr
        return int(json.loads(out.stdout)["end"]["sum_received"]["bytes"])
    finally:
        server.wait(10)


def nfq_client(box: InlineLab) -> dict[str, Any]:
    stats: dict[str, Any] = box.status()["worker"]["nfq_client"]
    return stats


def test_a_bulk_stream_is_judged_as_super_packets(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "gso") as box:
        box.start_daemon(POLICY)  # --gso on, the default
        received = transfer(box)
        assert received >= 0.5 * SIZE  # iperf3's closing reset may lose its socket's tail
        stats = nfq_client(box)
        judged = sum(box.status()["worker"]["verdicts"].values())
        assert stats["gso"] is True
        assert stats["gso_packets"] > 0, stats
        # judged once per super-packet: far fewer verdicts than wire segments of the data
        assert judged < received / MSS / 2, (judged, received, stats)
        assert stats["cut"] == 0 or stats["cut_rewrites_dropped"] == 0

        # Payload inspection still sees inside super-packets: a stream with the marker after
        # its first 512 KB is stopped there (its packets dropped from the marker on). The
        # marker comes every 100 bytes from there: `payload contains` reads one packet, and
        # a retransmission cut at other boundaries could split a lone marker in two.
        sink = box.lab.popen(
            "server",
            [sys.executable, "-c", RECEIVER],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert wait_until(lambda: "5202" in box.run("server", ["ss", "-ltn"]).stdout)
            box.python("client", SENDER, timeout=20)
            out, _ = sink.communicate(timeout=30)
        finally:
            if sink.poll() is None:
                sink.kill()
                sink.wait(5)
        got = int(out or 0)
        # the stream went through up to the marker's packet (not refused from its start)
        # (a negative count: the marker reached the server)
        assert MARKED // 2 < got <= MARKED, (got, json.dumps(box.status()["worker"])[:3000])
        assert wait_until(
            lambda: any(
                e.get("event_type") == "alert" and e["alert"]["signature_id"] == 9100001
                for e in box.eve_events()
            )
        ), [e for e in box.eve_events() if e.get("event_type") == "alert"]


def test_with_gso_off_the_engine_judges_wire_packets(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "nogso") as box:
        box.start_daemon(POLICY, "--gso", "off")
        received = transfer(box)
        assert received >= 0.5 * SIZE
        stats = nfq_client(box)
        judged = sum(box.status()["worker"]["verdicts"].values())
        assert (stats["gso"], stats["gso_packets"]) == (False, 0), stats
        assert judged >= received / MSS, (judged, received)
