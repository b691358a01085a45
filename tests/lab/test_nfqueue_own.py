"""The NFQUEUE worker on our own client (ips/io/nfqnl.py, batched verdicts), the default of
`ipsctl run`, and its fallback `--nfq-client netfilterqueue`.

Unprivileged: the decision -> verdict mapping both clients share, the verdict messages it
becomes (NFQA_MARK for an offload), and the order drain sends them in. In labs (root, real
kernel): one burst of accepts, drops and rewrites queued before the worker reads any of it,
so the batch verdicts really cover the ids of packets dropped one by one before them —
the server receives exactly the accepted and rewritten datagrams, in order; and the daemon
with each client: a burst through `ipsctl run`, a TTL rewrite seen by the receiver, an
offloaded TCP conversation passed on by the kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from labkit import ROOT, SERVER, InlineLab, inline_lab, need_root, unique_prefix, wait_until

from ips.io import nfqnl, nfqueue
from ips.lab import netns

# ---- the mapping both clients share ------------------------------------------------------------


# ---- the order drain sends verdicts in (a datagram socket pair plays the kernel) ---------------


# ---- shared lab scripts ------------------------------------------------------------------------

# On the server: UDP sockets on the given ports; records [index, ttl] of each datagram in
# arrival order until a line on stdin (then 0.5 s more), or 30 s.
RECEIVER = r"""
import json, select, socket, sys, time
ports = [int(p) for p in sys.argv[2].split(",")]
socks = {}
for port in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: a burst must fit
    s.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL (not in Python's socket module)
    s.bind((sys.argv[1], port))
    s.setblocking(False)
    socks[s.fileno()] = (port, s)
got = {str(p): [] for p in ports}
print("ready", flush=True)
deadline = time.monotonic() + 30
stdin = sys.stdin.fileno()
watch = [*socks, stdin]
while time.monotonic() < deadline:
    for fd in select.select(watch, [], [], 0.2)[0]:
        if fd == stdin:
            sys.stdin.readline()
            watch.remove(stdin)
            deadline = min(deadline, time.monotonic() + 0.5)
            continue
        port, s = socks[fd]
        while True:
            try:
                data, anc, _f, _a = s.recvmsg(64, socket.CMSG_SPACE(4))
            except BlockingIOError:
                break
            ttl = next((int.from_bytes(d[:4], sys.byteorder) for _l, t, d in anc
                        if t == socket.IP_TTL), None)
            got[str(port)].append([int(data), ttl])
print(json.dumps(got), flush=True)
"""

# On the client: datagram i of the plan (one letter each) from the letter's source port to
# its destination port, carrying its index.
SENDER = r"""
import json, socket, sys
server, plan, routes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
socks = {}
for sport in {r[0] for r in routes.values()}:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    socks[sport] = s
for i, letter in enumerate(plan):
    sport, dport = routes[letter]
    socks[sport].sendto(b"%d" % i, (server, dport))
print(len(plan))
"""


class Receiver:
    def __init__(self, lab: netns.Lab, ports: tuple[int, ...]) -> None:
        self.proc = lab.popen(
            "server",
            [sys.executable, "-c", RECEIVER, SERVER, ",".join(map(str, ports))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.kill()
            raise AssertionError("the UDP receiver did not start")

    def result(self) -> dict[str, list[list[int]]]:
        out, _ = self.proc.communicate("stop\n", timeout=15)
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def send_plan(lab: netns.Lab, plan: str, routes: dict[str, tuple[int, int]]) -> None:
    done = lab.exec(
        "client",
        [sys.executable, "-c", SENDER, SERVER, plan, json.dumps(routes)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.stdout.strip() == str(len(plan)), done.stderr


def expected(plan: str, letters: str, ttl: dict[str, int]) -> list[list[int]]:
    return [[i, ttl[c]] for i, c in enumerate(plan) if c in letters]


# ---- one burst, queued whole before the worker reads it (real kernel) --------------------------

WORKER_POLICY = """
set default accept
set offload off
drop    proto udp to port 9102
rewrite proto udp from port 5001 to port 9101 set ttl 9
"""

# On gw: a QueueWorker (our client, fail-closed) over a real Engine; binds, says ready, reads
# the burst once told to (stdin), then once more for late kernel errors, prints its counters.
WORKER = r"""
import json, sys, time
from ips.engine import Engine
from ips.io.nfqueue import QueueWorker
from ips.policy.resolve import load_policy_text
engine = Engine(load_policy_text(sys.argv[2]))
worker = QueueWorker(int(sys.argv[1]), engine, fail_open=False)
worker.bind()
print("ready", flush=True)
sys.stdin.readline()
worker.process_pending()
time.sleep(0.3)
worker.process_pending()
left = [int(line.split()[2]) for line in open("/proc/net/netfilter/nfnetlink_queue")
        if int(line.split()[0]) == int(sys.argv[1])]
stats = {**worker.client_stats(), "received": worker._client.received, "left": left,
         "verdicts": dict(engine.stats.verdicts), "verdict_errors": worker.verdict_errors}
worker.unbind()
print(json.dumps(stats), flush=True)
"""


def _messages(plan: str) -> int:
    """Verdict messages drain sends for a plan read in one burst: a drop at once, a rewrite
    after flushing the accepts pending before it, accepts one by one for the first
    BATCH_AFTER packets, then in batches of up to BATCH_MAX."""
    sent = waiting = 0
    for i, c in enumerate(plan, 1):
        if c == "a" and i <= nfqnl.BATCH_AFTER:
            sent += 1
        elif c == "a":
            waiting += 1
            if waiting == nfqnl.BATCH_MAX:
                sent, waiting = sent + 1, 0
        elif c == "r":
            sent, waiting = sent + 1 + (waiting > 0), 0
        else:
            sent += 1
    return sent + (waiting > 0)


def _queue_total(lab: netns.Lab, queue: int) -> int:
    text = lab.exec(
        "gw",
        ["cat", "/proc/net/netfilter/nfnetlink_queue"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    for line in text.splitlines():
        f = [int(x) for x in line.split()]
        if f[0] == queue:
            return f[2]
    return -1


def test_batch_verdicts_after_single_drops_and_rewrites_in_one_burst_keep_order() -> None:
    need_root()
    # a drop every third datagram; a rewrite among the accepts; long accept runs at the end
    plan = "".join("d" if i % 3 == 2 else "r" if i % 10 == 1 else "a" for i in range(240))
    plan += "a" * 160 + "d" + "a" * 10
    routes = {"a": (5000, 9101), "r": (5001, 9101), "d": (5000, 9102)}
    prefix = unique_prefix("nqo")
    lab = netns.up(ROOT / "labs" / "gateway.yaml", prefix=prefix)
    queue = 5
    rule = [
        "FORWARD",
        "-p",
        "udp",
        "--dport",
        "9101:9102",
        "-j",
        "NFQUEUE",
        "--queue-num",
        str(queue),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    gw = receiver = None
    inserted = False
    try:
        # neighbours resolved first: a burst must not wait in an ARP queue
        assert (
            lab.exec(
                "client", ["ping", "-c", "1", "-W", "2", SERVER], timeout=10, capture_output=True
            ).returncode
            == 0
        )
        receiver = Receiver(lab, (9101, 9102))
        gw = lab.popen(
            "gw",
            [sys.executable, "-c", WORKER, str(queue), WORKER_POLICY],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert gw.stdout is not None and gw.stdin is not None
        assert gw.stdout.readline().strip() == "ready", gw.stderr.read() if gw.stderr else ""
        lab.exec("gw", ["iptables", "-I", *rule], check=True, timeout=15)
        inserted = True
        send_plan(lab, plan, routes)
        # every datagram waits in the queue (fail-closed, nobody reading yet)
        assert wait_until(lambda: _queue_total(lab, queue) == len(plan), timeout=10)
        gw.stdin.write("go\n")
        gw.stdin.flush()
        out, err = gw.communicate(timeout=30)
        assert out.strip(), err
        stats = json.loads(out.strip().splitlines()[-1])
        got = receiver.result()
    finally:
        for proc in (gw, receiver.proc if receiver else None):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
        if inserted:
            lab.exec("gw", ["iptables", "-D", *rule], timeout=15)
        netns.down(prefix)
    # the dropped datagrams never arrived although batch verdicts with higher ids followed
    assert got["9102"] == []
    # every other one did, in the order sent, the rewritten ones with their new TTL
    assert got["9101"] == expected(plan, "ar", {"a": 63, "r": 9})
    assert stats["received"] == len(plan) and stats["verdict_errors"] == 0
    assert stats["left"] == [0]  # the kernel holds no packet without a verdict
    assert stats["verdicts"] == {
        "accept": plan.count("a"),
        "drop": plan.count("d"),
        "rewrite": plan.count("r"),
    }
    # one burst: the messages of the model (batches, never one per accept)
    assert stats["verdict_messages"] == _messages(plan) < len(plan)
    assert stats["kernel_errors"] == stats["malformed"] == stats["enobufs"] == 0


# ---- the daemon, with either client -------------------------------------------------------------

DAEMON_POLICY = """
set default drop
drop    proto udp to 10.10.2.10 port 9102 alert "burst drop" sid 3000001
accept  state established
rewrite proto udp to 10.10.2.10 port 9103 set ttl 9
accept  proto udp from 10.10.1.0/24 to 10.10.2.10 port 9101
accept  proto tcp from 10.10.1.0/24 to 10.10.2.10 port 7
accept  proto icmp
"""

ECHO = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 7), timeout=3)
ok = 0
for i in range(60):
    msg = b"echo %03d\n" % i
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    ok += got == msg
print(ok)
"""


def _daemon_burst(box: InlineLab, plan: str) -> dict[str, list[list[int]]]:
    routes = {"a": (5000, 9101), "d": (5000, 9102), "r": (5000, 9103)}
    receiver = Receiver(box.lab, (9101, 9102, 9103))
    try:
        before = box.status()["worker"].get("packets", 0)
        send_plan(box.lab, plan, routes)
        assert wait_until(lambda: box.status()["worker"]["packets"] - before >= len(plan))
        return receiver.result()
    finally:
        receiver.kill()


@pytest.mark.parametrize("client", ["own", "netfilterqueue"])
def test_the_daemon_drops_rewrites_and_offloads_with_either_client(
    tmp_path: Path, client: str
) -> None:
    plan = "".join("adr"[i % 3] if i % 7 else "a" for i in range(300))
    with inline_lab(tmp_path, f"nqd{client[0]}") as box:
        extra = () if client == "own" else ("--nfq-client", client)
        box.start_daemon(DAEMON_POLICY, "--fail-mode", "closed", *extra)
        assert box.run("client", ["ping", "-c", "1", "-W", "2", SERVER]).returncode == 0
        got = _daemon_burst(box, plan)
        assert got["9102"] == []
        assert got["9101"] == expected(plan, "a", {"a": 63})
        assert got["9103"] == expected(plan, "r", {"r": 9})
        echo = box.run("client", [sys.executable, "-c", ECHO, SERVER], timeout=30)
        assert echo.stdout.strip() == "60", echo.stderr
        status = box.status()
        verdicts = status["worker"]["verdicts"]
        assert verdicts["drop"] == plan.count("d") and verdicts["rewrite"] == plan.count("r")
        assert status["worker"]["verdict_errors"] == 0
        # the offload mark reached the kernel: the conversation went on without the queue
        assert wait_until(lambda: box.status()["offload"]["kernel_packets"] > 0)
        assert status["offload"]["flows"] >= 1
        nfq = status["worker"]["nfq_client"]
        assert nfq["client"] == client
        if client == "own":
            assert nfq["kernel_errors"] == nfq["malformed"] == nfq["handler_errors"] == 0
            # the compiled loop when it is built (the daemon runs with this process's env)
            built = nfqueue._drain_module is not None
            assert nfq["drain"] == ("compiled" if built else "python")
            # the meter around the engine still counts every packet's bytes
            assert status["worker"]["bytes"] > 0 and status["worker"]["latency"]["count"] > 0
        queue = box.queue_line()
        assert queue is not None and queue["queue_dropped"] == queue["user_dropped"] == 0
