"""The DESTROY events socket's filter (ips/io/conntrack.py, offloaded_only_filter) against the
real kernel: in a namespace this test creates (and removes), four UDP conversations over the
namespace's own loopback get conntrack entries, three of them a ct mark (one with offload
generation bits, one with the handshake bit, one with bits outside both), one none; a flush
destroys all four. An unfiltered watch reads the four DESTROY events; the filtered one only
the two whose mark carries an offload stamp's bits.

Needs root, `ip` and `nft`; skipped without them, except under CI=true (a failure there).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30

# Ports of the four conversations and the ct mark each gets (0: none).
MARKS = {7001: 0x01000000, 7002: 0, 7003: 0x00000005, 7004: 0x00800000}

CHILD = """
import json, select, socket, sys, time
from ips.io.conntrack import (
    IPCTNL_MSG_CT_DELETE, NFNL_SUBSYS_CTNETLINK, ConntrackWatch,
)
from ips.io.netlink import NLM_F_ACK, NLM_F_REQUEST, nfnl_message, open_netfilter_socket

ports = json.loads(sys.argv[1])
with open("/proc/sys/net/netfilter/nf_conntrack_acct", "w") as f:
    f.write("1")  # this namespace's: DESTROY events carry counters only with it on
filtered = ConntrackWatch()
unfiltered = ConntrackWatch(mark_bits=None)
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in ports:
    sender.sendto(b"x", ("127.0.0.1", port))
sender.close()
flush = open_netfilter_socket(1 << 16)
flush.send(nfnl_message(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, 0, b"",
                        NLM_F_REQUEST | NLM_F_ACK, 1, socket.AF_INET))
seen = {"filtered": [], "unfiltered": []}
deadline = time.monotonic() + 5
while time.monotonic() < deadline and len(seen["unfiltered"]) < len(ports):
    select.select([filtered, unfiltered], [], [], 0.2)
    for name, watch in (("filtered", filtered), ("unfiltered", unfiltered)):
        seen[name] += [c.tuple5[4] for c in watch.read_events(lambda n: None)
                       if c.tuple5[0] == 17]
time.sleep(0.3)  # anything the filter would have let through late
seen["filtered"] += [c.tuple5[4] for c in filtered.read_events(lambda n: None)
                     if c.tuple5[0] == 17]
print(json.dumps({**seen, "is_filtered": filtered.filtered,
                  "unfiltered_flag": unfiltered.filtered}))
"""


def _need(ok: object, why: str) -> None:
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {why}")
        pytest.skip(why)


def _run(argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{' '.join(argv)} -> {done.returncode}: {done.stderr}"
    return done.stdout


def test_only_destroy_events_of_stamped_connections_reach_the_worker() -> None:
    _need(os.geteuid() == 0, "not root: network namespaces need root")
    for tool in ("ip", "nft"):
        _need(shutil.which(tool), f"{tool} is missing")
    ns = f"ctf{os.getpid() % 10000}{secrets.token_hex(3)}"
    _run(["ip", "netns", "add", ns])
    try:
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        marks = "\n".join(
            f"udp dport {port} ct mark set {mark:#x}" for port, mark in MARKS.items() if mark
        )
        _run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            stdin=f"table inet ctf {{\nchain out {{\ntype filter hook output priority 0;\n"
            f"{marks}\n}}\n}}\n",
        )
        out = _run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-c",
                textwrap.dedent(CHILD),
                json.dumps(sorted(MARKS)),
            ],
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT)
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["is_filtered"] is True and seen["unfiltered_flag"] is False, seen
    # Without the filter, every connection's DESTROY: the flush did destroy all four.
    assert sorted(seen["unfiltered"]) == sorted(MARKS), seen
    # With it, only those whose ct mark has a generation or the handshake bit.
    assert sorted(seen["filtered"]) == [7001, 7004], seen
