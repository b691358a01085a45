"""Lab benchmark: ipsctl inline on a real gateway namespace, against the kernel alone.

Brings up labs/gateway.yaml (client 10.10.1.20 -> gw -> server 10.10.2.10, a fresh lab with
its own prefix for every variant and run), and measures, for each variant, in one run:
  TCP bulk      iperf3, one stream, Gbit/s at the receiver: to port 5201 (a bench port no
                content rule reads) and to port 443 (a web port: gateway.rules' two `payload
                contains` rules read the first payload-depth bytes of the upload, then the
                flow may be offloaded), each with the packets the queue took during it
  UDP 64 bytes  hping3 --udp --flood with 64-byte payloads, 4 senders (one flow each) towards
                4 server addresses (NFQUEUE's --queue-balance hashes addresses, not ports: one
                address pair would always land in one queue); packets/s the server received,
                by its interface counter (iperf3 -u aborts when a full queue drops its
                control packets, see measure_udp)
  connections   a storm of short TCP connections (bench/storm.py: connect, send, read the
                echo, close), two clients towards two server addresses; completed per second,
                twice: one connection in flight per client (each waits for the last: the
                round trips through gw bound the rate — a latency figure), and STORM_PARALLEL
                in flight per client (how many connections a second the path can take, as
                `ab -c` measures it); with a queue, also the gateway's CPU time, its
                wake-ups (context switches of its processes) and the packets its queue took
                per connection. --storm-only measures nothing else.
  ping          ping -i 0.01 from client to server, unloaded; p50 and p99 of per-packet RTT
                (with a queue, also the gateway's CPU and wake-ups per ping); --ping-only
                measures nothing else
  offline       with --offline: bench/replay_speed.py's `ipsctl replay` figure (compiled path,
                mapped capture of >= 1,000,000 packets, policies/gateway.rules, application
                parsing off and on), CPU time of one core, --runs rounds
Variants (--only NAME,...):
  kernel              kernel forwarding only, no queue, no ipsctl
  kernel-ct           the same with conntrack on (one `ct state` rule, no queue): the floor
                      of anything that tracks connections, as ipsctl's offload does
  accept-only         bench/accept_loop.py on queue 0: netfilterqueue accepting every packet
  accept-only-ct      the same with conntrack on in gw (kernel-ct's rule): the floor of an
                      NFQUEUE program that offloads with conntrack marks, as ipsctl does
  ipsctl-offload      ipsctl, the bench policy, flow offload on (`set offload on`; an ipsctl
                      without that option runs at its defaults, and the report says so)
  ipsctl-offload-2q   the same with `ipsctl run --queues 2`: a worker per core of this
                      2-core machine, as a gateway would run it
  ipsctl-offload-nodepth  offload on, `set payload-depth unlimited`: the payload rules read
                      every byte, as before inspection depth (a web port's flows never leave)
  ipsctl-inspect      ipsctl, the bench policy, `set offload off`: every packet inspected (TCP
                      as the super-packets GSO makes, judged whole: the default)
  ipsctl-inspect-segments  the same with `ipsctl run --gso off`: every TCP wire segment judged
  ipsctl-inspect-2q   the same with `ipsctl run --queues 2`
  ipsctl-10k          10,000 generated rules before the bench policy's rules, offload off
  ipsctl-inspect-pydrain  ipsctl-inspect with IPSCTL_PY_DRAIN=1: the NFQUEUE loop in Python (the
                      compiled fast path kept), against which the compiled loop is measured
  ipsctl-inspect-nodetect  the bench policy without its `detect` lines, offload off: the
                      loop and the fast path alone (no detector sends packets to Python)
  ipsctl-inspect-nodetect-pydrain  the same, the loop in Python
Any other variant whose option this ipsctl refuses (`set offload off`, `--queues`) is
printed as n/a, found by `ipsctl check` and `ipsctl run --help` before its lab is built.
Each figure is the median of --runs runs; the runs are interleaved (round 1 runs every
variant, then round 2, ...), so a drift of the machine during the bench touches all
variants alike. Ratios and the issue's targets follow the table.

The bench policy is policies/gateway.rules with three changes, printed with the results:
iperf3's and the storm's ports (5201-5209) accepted from the LAN to the DMZ next to the
other LAN->DMZ accepts; the ping limit raised from 20/s to 2000/s (ping -i 0.01 sends 100/s);
the flood detectors' rates multiplied by 1000 (the bench's own load is not an attack; at
gateway.rules' rates they would, rightly, rate-limit it and the figures would measure that).

Queues run fail-closed by default (--fail-mode): a packet the worker cannot take in time is
dropped, not let through uninspected, so what the server receives is what was inspected.
The kernel's queue drops are reported per variant.

Needs root; uses only the lab's own namespaces and addresses; every step has a time limit;
everything started is stopped by PID and the lab removed, also on errors or Ctrl-C.

    python bench/lab.py [--runs 3] [--seconds 5] [--only kernel,accept-only] [--quick]
                        [--json FILE] [--fail-mode closed|open]
                        [--nfq-client own|netfilterqueue] [--tcp-only] [--offline]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the project's `ips` next to us
    sys.path.insert(0, str(ROOT))

from ips.lab import netns  # noqa: E402

LAB_YAML = ROOT / "labs" / "gateway.yaml"
GATEWAY_RULES = ROOT / "policies" / "gateway.rules"
STORM = ROOT / "bench" / "storm.py"
ACCEPT_LOOP = ROOT / "bench" / "accept_loop.py"

SERVER = "10.10.2.10"
BENCH_PORTS = "5201-5209"
TCP_PORT = 5201
TCP_WEB_PORT = 443  # a port of gateway.rules' $web: its payload rules are candidates there
UDP_PORT = 5202  # + stream index
UDP_DSTS = ("10.10.2.10", "10.10.2.100", "10.10.2.101", "10.10.2.102")
# The client's own addresses (labs/gateway.yaml): each sender and storm client uses its own,
# so that ipsctl's queues — chosen by the connection's initiator address — all get work.
CLIENT_SRCS = ("10.10.1.21", "10.10.1.22", "10.10.1.23", "10.10.1.24")
UDP_LEN = 64
STORM_PORT = 5209
STORM_DSTS = ("10.10.2.10", "10.10.2.103")
STORM_PARALLEL = 16  # connections in flight per client for conn_par_per_s
PING_INTERVAL = 0.01
TOOLS = ("iperf3", "hping3", "ping", "iptables", "ss", "timeout")
QUEUE = 0
STEP_SLACK = 30.0  # seconds a step may take beyond its measuring time before it is killed
START_TIMEOUT = 90.0  # the daemon compiling 10,000 rules on a busy machine


class Unsupported(Exception):
    """This ipsctl refuses an option the variant needs."""


class BenchError(RuntimeError):
    """A step failed; the message says which and why."""


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    kind: str  # kernel | accept | ipsctl
    rules: str = "gateway"  # gateway | 10k
    offload: bool | None = None
    queues: int = 1
    conntrack: bool = False  # kernel: with conntrack loaded in gw
    settings: str = ""  # `set` lines put before the bench policy
    run_args: tuple[str, ...] = ()  # more `ipsctl run` options of this variant
    env: tuple[tuple[str, str], ...] = ()  # more environment of `ipsctl run`
    detectors: bool = True  # False: the bench policy without its `detect` lines


VARIANTS = (
    Variant("kernel", "kernel forwarding only (no queue, no ipsctl)", "kernel"),
    Variant(
        "kernel-ct",
        "kernel forwarding with conntrack (one ct rule, no queue)",
        "kernel",
        conntrack=True,
    ),
    Variant("accept-only", "netfilterqueue loop accepting everything, 1 queue", "accept"),
    Variant(
        "accept-only-ct",
        "the accept-only loop with conntrack on in gw (one ct rule): what offload's "
        "conntrack costs any NFQUEUE program",
        "accept",
        conntrack=True,
    ),
    Variant("ipsctl-offload", "ipsctl, bench policy, offload on, 1 queue", "ipsctl", offload=True),
    Variant(
        "ipsctl-offload-2q",
        "ipsctl, bench policy, offload on, 2 queues (a worker per core)",
        "ipsctl",
        offload=True,
        queues=2,
    ),
    Variant(
        "ipsctl-offload-nodepth",
        "ipsctl, bench policy + `set payload-depth unlimited`, offload on, 1 queue",
        "ipsctl",
        offload=True,
        settings="set payload-depth unlimited    # bench/lab.py: payload rules read everything\n",
    ),
    Variant(
        "ipsctl-inspect",
        "ipsctl, bench policy, offload off, 1 queue (GSO on, the default: super-packets judged)",
        "ipsctl",
        offload=False,
    ),
    Variant(
        "ipsctl-inspect-pydrain",
        "ipsctl, bench policy, offload off, 1 queue, the NFQUEUE loop in Python",
        "ipsctl",
        offload=False,
        env=(("IPSCTL_PY_DRAIN", "1"),),
    ),
    Variant(
        "ipsctl-inspect-nodetect",
        "ipsctl, bench policy without `detect` lines, offload off, 1 queue",
        "ipsctl",
        offload=False,
        detectors=False,
    ),
    Variant(
        "ipsctl-inspect-nodetect-pydrain",
        "ipsctl, bench policy without `detect` lines, offload off, the loop in Python",
        "ipsctl",
        offload=False,
        detectors=False,
        env=(("IPSCTL_PY_DRAIN", "1"),),
    ),
    Variant(
        "ipsctl-inspect-segments",
        "ipsctl, bench policy, offload off, 1 queue, `--gso off` (every wire segment judged)",
        "ipsctl",
        offload=False,
        run_args=("--gso", "off"),
    ),
    Variant(
        "ipsctl-inspect-2q",
        "ipsctl, bench policy, offload off, 2 queues",
        "ipsctl",
        offload=False,
        queues=2,
    ),
    Variant(
        "ipsctl-10k",
        "ipsctl, 10,000 rules + bench policy, offload off, 1 queue",
        "ipsctl",
        rules="10k",
        offload=False,
    ),
)
METRICS = ("tcp_gbps", "tcp443_gbps", "udp_pps", "conn_per_s", "conn_par_per_s",
           "ping_p50_us", "ping_p99_us")  # fmt: skip
# Beside them, for the variants with a queue: the gateway's CPU time per UDP packet it
# handled (user + system; lower is cheaper), steadier than packets/s on a shared machine.
UDP_CPU = "udp_cpu_us_per_packet"


# ---- policies ----------------------------------------------------------------------------------

BENCH_ACCEPT = (
    f"accept  proto {{ tcp, udp }} from $lan to $dmz port {BENCH_PORTS}"
    "   # bench/lab.py: iperf3 and the connection storm"
)
POLICY_NOTE = (
    f"bench policy = policies/gateway.rules + `accept tcp/udp LAN->DMZ port {BENCH_PORTS}` "
    "before the LAN->DMZ web accept; ping limit 20/s -> 2000/s; flood detector rates x1000"
)


def bench_policy(base: str) -> str:
    """gateway.rules made to let the bench's traffic through (see the module docstring)."""
    lines = base.splitlines()
    web = [
        i for i, ln in enumerate(lines) if re.match(r"accept\s+proto tcp from \$lan to \$dmz", ln)
    ]
    if not web:
        raise BenchError(f"{GATEWAY_RULES}: no LAN->DMZ tcp accept to put the bench ports next to")
    lines.insert(web[0], BENCH_ACCEPT)
    text = "\n".join(lines) + "\n"
    text, n = re.subn(r"(echo-request\s+limit\s+)\d+/s", r"\g<1>2000/s", text)
    if n == 0:
        raise BenchError(f"{GATEWAY_RULES}: no echo-request limit found")

    def faster(m: re.Match[str]) -> str:
        return f"{m[1]}{int(m[2]) * 1000}/s"

    out = []
    for ln in text.splitlines():
        if ln.startswith("detect"):
            ln = re.sub(r"(rate\s+)(\d+)/s", faster, ln)
        out.append(ln)
    return "\n".join(out) + "\n"


def generated_rules(n: int) -> list[str]:
    """n rules the bench traffic never matches, in its dimensions (its protocols, its server
    subnet, other ports; source blocklists; partner subnets), as a large site's policy has."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        a, b = divmod(i, 250)
        kind = i % 5
        if kind == 0:  # a blocklist entry (/32)
            out.append(f"drop    from 198.18.{a % 256}.{b + 1}")
        elif kind == 1:  # a service on a server elsewhere
            out.append(f"accept  proto tcp to 10.30.{a % 256}.{b + 1} port {rng.randint(1, 65535)}")
        elif kind == 2:  # a partner subnet
            out.append(f"accept  proto udp from 172.{16 + a % 16}.{b}.0/24 to port {1000 + i}")
        elif kind == 3:  # the bench servers' own subnet, ports the bench does not use
            out.append(f"reject  proto tcp from $lan to $dmz port {20000 + i}")
        else:
            out.append(f"drop    proto udp from $lan to 10.10.2.{b % 200 + 1} port {10000 + i}")
    return out


def policy_10k(bench: str) -> str:
    """The bench policy with 10,000 non-matching rules right after `drop from @banned`:
    every packet, established or not, has to get past them (first match wins)."""
    lines = bench.splitlines()
    at = [i for i, ln in enumerate(lines) if re.match(r"drop\s+from @banned", ln)]
    if not at:
        raise BenchError(f"{GATEWAY_RULES}: no `drop from @banned` to put the 10,000 rules after")
    extra = generated_rules(10_000)
    return "\n".join([*lines[: at[0] + 1], *extra, *lines[at[0] + 1 :]]) + "\n"


def with_offload(text: str, on: bool) -> str:
    return f"set offload {'on' if on else 'off'}    # bench/lab.py\n" + text


# ---- processes ---------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def ipsctl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "ips.cli", *args]


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL: only this process, by its PID."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def finish(b: Bench, proc: subprocess.Popen[Any], late: str) -> tuple[str, str]:
    """The output of a measuring process, which must end within its step's time; else it is
    stopped and the step fails with `late`."""
    try:
        out, err = proc.communicate(timeout=b.seconds + STEP_SLACK)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise BenchError(late) from None
    return out, err


def wait_line(proc: subprocess.Popen[bytes], expect: bytes, timeout: float, what: str) -> None:
    """Wait for a child to print `expect` on stdout (its readiness), bounded."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            buf += chunk
            if expect in buf:
                return
            if not chunk:  # EOF: it exited
                proc.wait(5)
        if proc.poll() is not None:
            raise BenchError(f"{what} exited ({proc.returncode}): {buf.decode(errors='replace')}")
    raise BenchError(f"{what} not ready after {timeout:.0f} s")


@dataclass
class Bench:
    """One variant's lab and what was started in it."""

    lab: netns.Lab
    workdir: Path
    seconds: float
    fail_open: bool
    run_args: tuple[str, ...] = ()  # more `ipsctl run` arguments (--nfq-client)
    gateway: subprocess.Popen[Any] | None = None  # what reads the queue (loop or ipsctl run)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def run(
        self, node: str, argv: list[str], timeout: float, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            return self.lab.exec(
                node,
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=_env(),
                input=input,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"{node}: {' '.join(argv[:3])}… took over {timeout:.0f} s") from None

    def popen(
        self, node: str, argv: list[str], more_env: tuple[tuple[str, str], ...] = (), **kw: Any
    ) -> subprocess.Popen[Any]:
        proc = self.lab.popen(node, argv, env={**_env(), **dict(more_env)}, cwd=ROOT, **kw)
        self.procs.append(proc)
        return proc

    def sysctl(self, node: str, key: str, value: str) -> None:
        self.run(node, ["sysctl", "-qw", f"{key}={value}"], timeout=10)  # best effort

    def queues(self) -> dict[int, dict[str, int]]:
        """gw's /proc/net/netfilter/nfnetlink_queue (per namespace): queue -> counters."""
        text = self.run("gw", ["cat", "/proc/net/netfilter/nfnetlink_queue"], timeout=10).stdout
        keys = (
            "queue",
            "portid",
            "waiting",
            "copy_mode",
            "copy_range",
            "queue_dropped",
            "user_dropped",
            "id_sequence",
        )
        out = {}
        for line in text.splitlines():
            f = dict(zip(keys, (int(x) for x in line.split()), strict=False))
            out[f["queue"]] = f
        return out

    def close(self) -> None:
        for fn in reversed(self.cleanups):
            with suppress(Exception):
                fn()
        for proc in reversed(self.procs):
            with suppress(Exception):
                stop(proc)


# ---- measurements ------------------------------------------------------------------------------


def wait_listening(b: Bench, ports: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = b.run("server", ["ss", "-Hltn"], timeout=10).stdout
        if all(re.search(rf":{p}\s", out) for p in ports):
            return
        time.sleep(0.05)
    raise BenchError(f"server: iperf3 not listening on {ports} after {timeout:.0f} s")


def measure_tcp(b: Bench, port: int = TCP_PORT) -> tuple[float, int | None]:
    """Gbit/s of one iperf3 TCP stream to `port`, as its receiver counted them; and the
    packets gw's queues took meanwhile (iperf3's data and control connections, both ways;
    None without a queue): with offload, what the engine saw before the kernel took over."""
    before_q = b.queues()
    server = b.popen(
        "server",
        ["iperf3", "-s", "-1", "-p", str(port), "-B", SERVER],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(b, [port])
        client = b.popen(
            "client",
            ["iperf3", "-c", SERVER, "-p", str(port), "-t", f"{b.seconds:g}", "-J"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = finish(b, client, "iperf3 client did not finish in time")
        try:
            doc = json.loads(out)
        except ValueError:
            raise BenchError(f"iperf3: {err.strip() or out.strip()[:200]}") from None
        if "error" in doc:
            raise BenchError(f"iperf3: {doc['error']}")
        gbps = doc["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        stop(server, 3)
    after_q = b.queues()
    if not after_q:
        return gbps, None
    queued = sum(
        after_q[q]["id_sequence"] - before_q.get(q, {}).get("id_sequence", 0) for q in after_q
    )
    return gbps, queued


def server_rx_packets(b: Bench) -> int:
    doc = json.loads(b.run("server", ["ip", "-s", "-j", "link", "show", "eth0"], timeout=10).stdout)
    return int(doc[0]["stats64"]["rx"]["packets"])


def tree_pids(pid: int) -> list[int]:
    """A process and its live descendants (ipsctl's workers are children of the daemon),
    from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out = []
    todo = [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants; 0 for what is gone."""
    ticks = 0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_wakeups(pid: int) -> int:
    """Context switches (voluntary and not) of the threads of a process and its live
    descendants: how often the gateway's program went to sleep and came back."""
    total = 0
    for p in tree_pids(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                status = Path(f"/proc/{p}/task/{task}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if "ctxt_switches:" in line:  # voluntary_ and nonvoluntary_
                    total += int(line.split()[-1])
    return total


def measure_udp(b: Bench) -> tuple[float, dict[str, Any]]:
    """Packets/s of UDP_LEN-byte datagrams the server received, by its interface counter.

    The senders are hping3 floods, one per server address, each with a fixed source port
    (one flow each): iperf3's UDP mode needs a TCP control connection and a per-stream UDP
    handshake, which an overloaded fail-closed queue drops, and iperf3 then aborts.
    With a queue, also the gateway's CPU time per packet it handled: packets/s depend on the
    share of the 2 cores the senders leave it, its cost per packet much less."""
    before_q = b.queues()
    cpu_before = tree_cpu_seconds(b.gateway.pid) if b.gateway is not None else 0.0
    before = server_rx_packets(b)
    t0 = time.monotonic()
    senders = [
        b.popen(
            "client",
            [
                "timeout",
                "-s",
                "INT",
                f"{b.seconds:g}",
                "hping3",
                "--udp",
                "-q",
                "--flood",
                "-d",
                str(UDP_LEN),
                "-p",
                str(UDP_PORT + i),
                "-s",
                str(40000 + i),
                "-k",
                "-a",
                CLIENT_SRCS[i % len(CLIENT_SRCS)],
                dst,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, dst in enumerate(UDP_DSTS)
    ]
    sent = 0
    for proc in senders:
        out, _ = finish(b, proc, "hping3 did not stop in time")
        m = re.search(r"(\d+) packets transmitted", out)
        if m is None:
            raise BenchError(f"hping3: {out.strip()[-300:]}")
        sent += int(m[1])
    elapsed = time.monotonic() - t0
    time.sleep(0.2)  # what the queue still held reaches the server
    received = server_rx_packets(b) - before
    after_q = b.queues()
    cpu = tree_cpu_seconds(b.gateway.pid) - cpu_before if b.gateway is not None else 0.0
    info: dict[str, Any] = {"sent_pps": round(sent / elapsed)}
    if after_q:

        def grew(counter: str) -> dict[int, int]:  # each queue's counter over the flood
            return {q: after_q[q][counter] - before_q.get(q, {}).get(counter, 0) for q in after_q}

        info["queued"] = grew("id_sequence")
        lost_on_socket = sum(grew("user_dropped").values())
        info["queue_drops"] = sum(grew("queue_dropped").values()) + lost_on_socket
        # Handled: given an id (past the queue's length check) and not lost on the socket.
        handled = sum(info["queued"].values()) - lost_on_socket
        if b.gateway is not None and handled > 0:
            info["cpu_us_per_packet"] = round(cpu / handled * 1e6, 2)
    return received / elapsed, info


def measure_storm(b: Bench, parallel: int = 1) -> tuple[float, dict[str, Any]]:
    """Connections/s of the storm, and with a queue what one connection cost the gateway:
    its CPU time (user + system of the loop or of ipsctl and its workers) and the packets
    the queue took, per completed connection."""
    before_q = b.queues()
    cpu_before = tree_cpu_seconds(b.gateway.pid) if b.gateway is not None else 0.0
    wakeups_before = tree_wakeups(b.gateway.pid) if b.gateway is not None else 0
    clients = [
        b.popen(
            "client",
            [
                sys.executable,
                str(STORM),
                "client",
                "--dst",
                dst,
                "--port",
                str(STORM_PORT),
                "--seconds",
                f"{b.seconds:g}",
                "--src",
                CLIENT_SRCS[i % len(CLIENT_SRCS)],
                "--parallel",
                str(parallel),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, dst in enumerate(STORM_DSTS)
    ]
    done = failed = 0
    elapsed = 0.0
    for c in clients:
        out, err = finish(b, c, "storm client did not finish in time")
        try:
            doc = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"storm client: {err.strip()[-300:]}") from None
        done += doc["connections"]
        failed += doc["failed"]
        elapsed = max(elapsed, doc["seconds"])
    info: dict[str, Any] = {"failed": failed}
    if b.gateway is not None and done > 0:
        cpu = tree_cpu_seconds(b.gateway.pid) - cpu_before
        info["cpu_us_per_conn"] = round(cpu / done * 1e6, 1)
        info["wakeups_per_conn"] = round((tree_wakeups(b.gateway.pid) - wakeups_before) / done, 2)
        after_q = b.queues()
        queued = sum(q["id_sequence"] - before_q.get(n, {}).get("id_sequence", 0)
                     for n, q in after_q.items())  # fmt: skip
        info["queued_per_conn"] = round(queued / done, 2)
    return done / elapsed, info


def measure_ping(b: Bench) -> tuple[float, float, dict[str, Any]]:
    count = max(10, int(b.seconds / PING_INTERVAL))
    # the gateway's CPU while it passes the pings (what an idle gateway's wake-ups cost)
    cpu_before = tree_cpu_seconds(b.gateway.pid) if b.gateway is not None else 0.0
    wakeups_before = tree_wakeups(b.gateway.pid) if b.gateway is not None else 0
    started = time.monotonic()
    out = b.run(
        "client",
        [
            "ping",
            "-n",
            "-i",
            f"{PING_INTERVAL}",
            "-c",
            str(count),
            "-w",
            f"{b.seconds + 10:g}",
            SERVER,
        ],
        timeout=b.seconds + STEP_SLACK,
    ).stdout
    info: dict[str, Any] = {"sent": count}
    if b.gateway is not None:
        cpu = tree_cpu_seconds(b.gateway.pid) - cpu_before
        info["gw_cpu_percent"] = round(100 * cpu / (time.monotonic() - started), 2)
        woke = tree_wakeups(b.gateway.pid) - wakeups_before
        info["wakeups_per_ping"] = round(woke / count, 2)
    rtts = sorted(float(m) * 1000 for m in re.findall(r"time=([\d.]+) ms", out))
    if len(rtts) < count // 2:
        raise BenchError(f"ping: only {len(rtts)} of {count} replies")
    info["replies"] = len(rtts)
    return percentile(rtts, 50), percentile(rtts, 99), info


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def one_run(
    b: Bench, tcp_only: bool = False, storm_only: bool = False, ping_only: bool = False
) -> dict[str, Any]:
    if ping_only:  # the latency a packet adds, with what a ping cost the gateway
        p50, p99, ping_info = measure_ping(b)
        return {"ping_p50_us": p50, "ping_p99_us": p99, "detail": {"udp": {}, "ping": ping_info}}
    if storm_only:  # new connections/s only, with what a connection cost the gateway
        conns, storm_info = measure_storm(b)
        time.sleep(1.0)
        conns_par, storm_par_info = measure_storm(b, STORM_PARALLEL)
        return {
            "conn_per_s": conns,
            "conn_par_per_s": conns_par,
            "detail": {"udp": {}, "storm": storm_info, "storm_parallel": storm_par_info},
        }
    if not tcp_only:
        p50, p99, ping_info = measure_ping(b)  # first: unloaded
    tcp, tcp_queued = measure_tcp(b)
    tcp443, tcp443_queued = measure_tcp(b, TCP_WEB_PORT)
    tcp_detail = {"tcp_queued": tcp_queued, "tcp443_queued": tcp443_queued}
    if tcp_only:
        return {"tcp_gbps": tcp, "tcp443_gbps": tcp443, "detail": {"udp": {}, **tcp_detail}}
    udp, udp_info = measure_udp(b)
    conns, storm_info = measure_storm(b)
    time.sleep(1.0)  # the first storm's last connections closed before the next one counts
    conns_par, storm_par_info = measure_storm(b, STORM_PARALLEL)
    return {
        "tcp_gbps": tcp,
        "tcp443_gbps": tcp443,
        "udp_pps": udp,
        "conn_per_s": conns,
        "conn_par_per_s": conns_par,
        "ping_p50_us": p50,
        "ping_p99_us": p99,
        "detail": {
            "udp": udp_info,
            "storm": storm_info,
            "storm_parallel": storm_par_info,
            "ping": ping_info,
            **tcp_detail,
        },
    }


# ---- the variants' gateways --------------------------------------------------------------------


CONNTRACK_TABLE = """
table inet benchct {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ct state established,related counter
    }
}
"""


def start_conntrack(b: Bench) -> None:
    """Conntrack on in gw: a rule that reads a connection's state makes the kernel track every
    connection through it (and nothing else: it accepts everything)."""
    res = b.run("gw", ["nft", "-f", "-"], timeout=20, input=CONNTRACK_TABLE)
    if res.returncode != 0:
        raise BenchError(f"nft in gw: {res.stderr.strip()}")
    b.cleanups.append(
        lambda: b.run("gw", ["nft", "delete", "table", "inet", "benchct"], timeout=20)
    )


def start_accept_loop(b: Bench) -> None:
    loop = b.popen(
        "gw",
        [
            sys.executable,
            str(ACCEPT_LOOP),
            "--queue",
            str(QUEUE),
            *(["--fail-open"] if b.fail_open else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_line(loop, b"ready", 15, "accept loop")
    b.gateway = loop
    rule = [
        "FORWARD",
        "-j",
        "NFQUEUE",
        "--queue-num",
        str(QUEUE),
        *(["--queue-bypass"] if b.fail_open else []),
    ]
    res = b.run("gw", ["iptables", "-I", *rule], timeout=20)
    if res.returncode != 0:
        raise BenchError(f"iptables in gw: {res.stderr.strip()}")
    b.cleanups.append(lambda: b.run("gw", ["iptables", "-D", *rule], timeout=20))


def start_ipsctl(b: Bench, v: Variant, policy: Path) -> None:
    sock = b.workdir / f"{v.name}.sock"
    log_path = b.workdir / f"{v.name}.log"
    argv = ipsctl_argv(
        "run",
        "--policy",
        str(policy),
        "--socket",
        str(sock),
        "--eve",
        str(b.workdir / f"{v.name}.eve.json"),
        "--fail-mode",
        "open" if b.fail_open else "closed",
    )
    if v.queues > 1:
        argv += ["--queues", str(v.queues)]
    argv += list(v.run_args) + list(b.run_args)
    log = open(log_path, "w")  # noqa: SIM115 - closed by the cleanup below
    daemon = b.popen("gw", argv, v.env, stdout=log, stderr=subprocess.STDOUT)
    b.cleanups.append(log.close)
    b.gateway = daemon
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            text = log_path.read_text()
            if daemon.returncode in (1, 2) and re.search(r"offload|queues", text, re.I):
                raise Unsupported(text.strip().splitlines()[-1] if text.strip() else "refused")
            raise BenchError(f"ipsctl run exited ({daemon.returncode}): {text.strip()[-500:]}")
        if sock.exists():
            st = subprocess.run(
                ipsctl_argv("status", "--json", "--socket", str(sock)),
                capture_output=True,
                text=True,
                timeout=20,
                env=_env(),
                cwd=ROOT,
            )
            if st.returncode == 0:
                return
        time.sleep(0.2)
    raise BenchError(f"ipsctl not up after {START_TIMEOUT:.0f} s: {log_path.read_text()[-500:]}")


def unique_prefix() -> str:
    rand = "".join(random.choices(string.ascii_lowercase + string.digits, k=3))
    return f"bl{os.getpid() % 1000}{rand}-"


@contextmanager
def lab_for(args: argparse.Namespace, workdir: Path) -> Iterator[Bench]:
    # Everything that can fail on the arguments comes before the lab: between netns.up and
    # the try below, an exception would leave the lab's namespaces behind.
    run_args = ("--nfq-client", args.nfq_client) if args.nfq_client else ()
    fail_open = args.fail_mode == "open"
    prefix = unique_prefix()
    lab = netns.up(LAB_YAML, prefix=prefix)
    b = Bench(lab, workdir, args.seconds, fail_open, run_args)
    try:
        # Short connections: a wide port range on the client; the conntrack entries of
        # closed connections gone sooner, so repeated storms do not fill gw's table.
        b.sysctl("client", "net.ipv4.ip_local_port_range", "1024 65000")
        b.sysctl("gw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait", "10")
        # The UDP flood's sink: counted by the server's interface, then dropped quietly
        # (no listener would mean an ICMP port-unreachable back through gw per packet).
        ports = f"{UDP_PORT}:{UDP_PORT + len(UDP_DSTS) - 1}"
        res = b.run(
            "server",
            ["iptables", "-I", "INPUT", "-p", "udp", "--dport", ports, "-j", "DROP"],
            timeout=20,
        )
        if res.returncode != 0:
            raise BenchError(f"iptables in server: {res.stderr.strip()}")
        for _ in range(2):  # two storm servers on one port (SO_REUSEPORT)
            srv = b.popen(
                "server",
                [
                    sys.executable,
                    str(STORM),
                    "serve",
                    "--port",
                    str(STORM_PORT),
                    "--seconds",
                    "3600",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            wait_line(srv, b"ready", 15, "storm server")
        yield b
    finally:
        try:
            b.close()
        finally:
            netns.down(prefix)


# ---- what this ipsctl supports -----------------------------------------------------------------


def policy_refusal(text: str, workdir: Path, name: str) -> str | None:
    """None if `ipsctl check` accepts the policy, else its first error line."""
    path = workdir / f"{name}.rules"
    path.write_text(text)
    res = subprocess.run(
        ipsctl_argv("check", str(path)),
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        cwd=ROOT,
    )
    if res.returncode == 0:
        return None
    lines = (res.stderr or res.stdout).strip().splitlines()
    first = next((ln for ln in lines if "error" in ln), lines[0] if lines else "refused")
    return re.sub(r"^\S+:\d+:\d+: ", "", first)  # without the temporary file's name


def run_has_option(option: str) -> bool:
    res = subprocess.run(
        ipsctl_argv("run", "--help"),
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=ROOT,
    )
    return option in res.stdout


def prepare_policy(v: Variant, workdir: Path) -> tuple[Path, str | None]:
    """The variant's policy file and a note on it; Unsupported if this ipsctl refuses what
    the variant is about (offload off, several queues)."""
    text = v.settings + bench_policy(GATEWAY_RULES.read_text())
    if v.rules == "10k":
        text = policy_10k(text)
    if not v.detectors:
        text = "".join(ln for ln in text.splitlines(True) if not ln.startswith("detect"))
    note = None
    if v.offload is not None:
        refusal = policy_refusal(with_offload(text, v.offload), workdir, v.name)
        if refusal is None:
            text = with_offload(text, v.offload)
        elif "offload" in refusal and v.offload:
            # Offload on is to be ipsctl's default: without the option this ipsctl still
            # runs, at its defaults, and says so (its figures are then full inspection).
            note = "this ipsctl has no `set offload`: ran at its defaults (no offload)"
        elif "offload" in refusal:
            raise Unsupported(refusal)
        else:
            # Refused for another reason: never run the variant without the setting it is
            # about (a run once measured "offload off" with offload on this way).
            raise BenchError(f"the bench policy for {v.name} is refused: {refusal}")
    refusal = policy_refusal(text, workdir, v.name)
    if refusal is not None:
        raise BenchError(f"the bench policy for {v.name} is refused: {refusal}")
    if v.queues > 1 and not run_has_option("--queues"):
        raise Unsupported("`ipsctl run` has no --queues")
    path = workdir / f"{v.name}.rules"
    path.write_text(text)
    return path, note


def run_variant(
    v: Variant, args: argparse.Namespace, workdir: Path, policies: dict[str, Any]
) -> dict[str, Any]:
    """One run of one variant, in a lab of its own. policies: the prepared policy (and note)
    per variant, filled on the first call."""
    result: dict[str, Any] = {"label": v.label}
    try:
        policy = None
        if v.kind == "ipsctl":
            if v.name not in policies:
                policies[v.name] = prepare_policy(v, workdir)
            policy, note = policies[v.name]
            if note:
                result["note"] = note
        with lab_for(args, workdir) as b:
            if v.conntrack:
                start_conntrack(b)
            if v.kind == "accept":
                start_accept_loop(b)
            elif v.kind == "ipsctl":
                assert policy is not None
                start_ipsctl(b, v, policy)
            run = one_run(
                b,
                getattr(args, "tcp_only", False),
                getattr(args, "storm_only", False),
                getattr(args, "ping_only", False),
            )
            if v.conntrack:  # that the kernel did track the bench's connections
                count = b.run(
                    "gw", ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], timeout=20
                ).stdout.strip()
                run["detail"]["conntrack_entries"] = int(count or 0)
    except Unsupported as exc:
        return {**result, "status": "n/a", "reason": str(exc)}
    except (BenchError, netns.LabError, OSError, subprocess.SubprocessError) as exc:
        return {**result, "status": "error", "reason": str(exc)}
    return {**result, "status": "ok", "runs": [run]}


def run_all(
    variants: list[Variant], args: argparse.Namespace, workdir: Path
) -> dict[str, dict[str, Any]]:
    """args.runs rounds, each running every variant once, in a fresh lab: the machine's
    drifts (other load, CPU clocks) spread over all variants instead of favouring one."""
    results: dict[str, dict[str, Any]] = {}
    policies: dict[str, Any] = {}
    for i in range(args.runs):
        for v in variants:
            if results.get(v.name, {}).get("status", "ok") != "ok":
                continue  # n/a or failed: not again
            log(f"{v.name}: run {i + 1}/{args.runs}: {v.label}")
            one = run_variant(v, args, workdir, policies)
            if one["status"] != "ok":
                log(f"  {v.name}: {one['status']}: {one['reason']}")
                results[v.name] = one
                continue
            results.setdefault(v.name, {**one, "runs": []})["runs"].extend(one["runs"])
    for r in results.values():
        if r["status"] == "ok":
            r["median"] = {
                m: statistics.median(run[m] for run in r["runs"])
                for m in METRICS
                if all(m in run for run in r["runs"])
            }
            cpu = [run["detail"]["udp"].get("cpu_us_per_packet") for run in r["runs"]]
            if all(c is not None for c in cpu):
                r["median"][UDP_CPU] = statistics.median(cpu)
    return results


# ---- report ------------------------------------------------------------------------------------


class Target(NamedTuple):
    """A goal a figure is held to: `variant`'s median `metric`, divided by `versus`'s (a
    ratio), minus it (`added`: microseconds of ping), or as it is (versus None)."""

    title: str
    metric: str
    variant: str
    versus: str | None
    goal: float
    higher_is_better: bool = True
    added: bool = False


# Issue 24's goals first (the compiled path against Snort 3's figures in the same lab), then
# the goals of the issues before it. The accept-only loop stands for the best any NFQUEUE
# program can do here; Snort 3 reached 1.44x its CPU per UDP packet, 0.71 of its packets/s,
# 0.86 of its connections/s and +51 us of ping.
TARGETS = (
    Target(
        "UDP64 CPU us/packet, full inspection / accept-only (lower is better)",
        UDP_CPU,
        "ipsctl-inspect",
        "accept-only",
        1.35,
        higher_is_better=False,
    ),
    Target(
        "UDP64 pkt/s, full inspection 1 queue / accept-only",
        "udp_pps",
        "ipsctl-inspect",
        "accept-only",
        0.75,
    ),
    Target(
        "new connections/s, offload on / accept-only, 1 in flight",
        "conn_per_s",
        "ipsctl-offload",
        "accept-only",
        0.9,
    ),
    Target(
        f"new connections/s, offload on / accept-only, {STORM_PARALLEL} in flight",
        "conn_par_per_s",
        "ipsctl-offload",
        "accept-only",
        0.9,
    ),
    Target(
        "ping p50 added by gw, full inspection vs kernel (us)",
        "ping_p50_us",
        "ipsctl-inspect",
        "kernel",
        50.0,
        higher_is_better=False,
        added=True,
    ),
    Target("TCP bulk Gbit/s, full inspection with GSO", "tcp_gbps", "ipsctl-inspect", None, 5.0),
    Target("TCP bulk, offload on / kernel", "tcp_gbps", "ipsctl-offload", "kernel", 0.95),
    Target(
        "TCP bulk to 443 (gateway web rules), offload on / kernel",
        "tcp443_gbps",
        "ipsctl-offload",
        "kernel",
        0.95,
    ),
    Target(
        "UDP64 pkt/s, full inspection 2 queues / 1 queue",
        "udp_pps",
        "ipsctl-inspect-2q",
        "ipsctl-inspect",
        1.5,
    ),
    Target(
        "new connections/s, offload on / kernel, 1 in flight",
        "conn_per_s",
        "ipsctl-offload",
        "kernel",
        0.5,
    ),
    Target(
        f"new connections/s, offload on / kernel, {STORM_PARALLEL} in flight",
        "conn_par_per_s",
        "ipsctl-offload",
        "kernel",
        0.5,
    ),
    Target(
        "new connections/s, offload on 2 queues / kernel, 1 in flight",
        "conn_per_s",
        "ipsctl-offload-2q",
        "kernel",
        0.5,
    ),
    Target(
        f"new connections/s, offload on 2 queues / kernel, {STORM_PARALLEL} in flight",
        "conn_par_per_s",
        "ipsctl-offload-2q",
        "kernel",
        0.5,
    ),
    Target(
        "UDP64 pkt/s, 10,000 rules / gateway rules (offload off)",
        "udp_pps",
        "ipsctl-10k",
        "ipsctl-inspect",
        0.9,
    ),
    Target(
        "ping p50 added by gw, offload on vs kernel (us)",
        "ping_p50_us",
        "ipsctl-offload",
        "kernel",
        100.0,
        higher_is_better=False,
        added=True,
    ),
)


def ratios(res: dict[str, dict[str, Any]]) -> dict[str, float]:
    med = {k: v["median"] for k, v in res.items() if v.get("status") == "ok"}
    out: dict[str, float] = {}

    def ratio(metric: str, a: str, b: str) -> None:
        if a in med and b in med and med[b].get(metric, 0) > 0 and metric in med[a]:
            out[f"{metric} {a} / {b}"] = med[a][metric] / med[b][metric]

    for metric in ("tcp_gbps", "tcp443_gbps", "udp_pps", "conn_per_s", "conn_par_per_s"):
        for name in med:
            if name != "kernel":
                ratio(metric, name, "kernel")
        for name in med:
            if name.startswith("ipsctl"):
                ratio(metric, name, "accept-only")
        ratio(metric, "ipsctl-offload", "ipsctl-inspect")
        ratio(metric, "ipsctl-offload", "kernel-ct")
        # offload needs conntrack: the accept-only loop with conntrack on is its floor
        ratio(metric, "ipsctl-offload", "accept-only-ct")
        ratio(metric, "accept-only-ct", "accept-only")
        ratio(metric, "ipsctl-inspect-2q", "ipsctl-inspect")
        ratio(metric, "ipsctl-offload-2q", "ipsctl-offload")
        ratio(metric, "ipsctl-10k", "ipsctl-inspect")
    for name in med:
        if (
            name.startswith("ipsctl")
            and UDP_CPU in med[name]
            and UDP_CPU in med.get("accept-only", {})
        ):
            out[f"{UDP_CPU} {name} / accept-only (lower is cheaper)"] = (
                med[name][UDP_CPU] / med["accept-only"][UDP_CPU]
            )
    for name in med:
        if name != "kernel" and "kernel" in med and "ping_p50_us" in med[name]:
            for p in ("ping_p50_us", "ping_p99_us"):
                out[f"{p} {name} - kernel (us added)"] = med[name][p] - med["kernel"][p]
    return out


def shown_ratio(value: float, goal: float, higher_is_better: bool = True) -> float:
    """value to 3 decimals, or more where 3 would round it onto or across the goal (0.4998
    against 0.5 must not print as 0.5 beside "NOT met", as it once did)."""

    def met(x: float) -> bool:
        return x >= goal if higher_is_better else x <= goal

    for digits in range(3, 10):
        shown = round(value, digits)
        if met(shown) == met(value):
            return shown
    return value


# Offline replay (issue 24): bench/replay_speed.py's compiled+mmap variant, the way `ipsctl
# replay` runs, over its capture of >= 1,000,000 packets with policies/gateway.rules, on one
# core (CPU time). Goals: 1,000,000 packets/s with application parsing off, half that with it on.
OFFLINE_GOALS = {"app off": 1_000_000.0, "app on": 500_000.0}


def measure_offline(runs: int) -> dict[str, dict[str, Any]]:
    """bench/replay_speed.py's medians over `runs` rounds, keyed "app off" / "app on"."""
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "replay_speed.py"),
        "--variants",
        "compiled+mmap",
        "--rounds",
        str(runs),
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise BenchError(f"bench/replay_speed.py: {proc.stderr.strip()[-300:]}")
    table = json.loads(proc.stdout)
    return {app: table[f"compiled+mmap {app}"] for app in OFFLINE_GOALS}


def offline_targets(offline: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for app, goal in OFFLINE_GOALS.items():
        rate = offline[app]["packets_per_s"]
        out.append(
            {
                "target": f"offline replay pkt/s, gateway policy, {app} (one core)",
                "goal": f">= {goal:,.0f}",
                "value": round(rate),
                "met": rate >= goal,
            }
        )
    return out


def targets(res: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    med = {k: v["median"] for k, v in res.items() if v.get("status") == "ok"}
    out = []
    for t in TARGETS:
        sign = ">=" if t.higher_is_better else "<="
        row: dict[str, Any] = {"target": t.title, "goal": f"{sign} {t.goal:g}"}
        a = med.get(t.variant, {})
        b = med.get(t.versus, {}) if t.versus is not None else None
        value: float | None = None
        if t.metric in a and (b is None or t.metric in b):
            if b is None:
                value = a[t.metric]
            elif t.added:
                value = a[t.metric] - b[t.metric]
            elif b[t.metric] > 0:
                value = a[t.metric] / b[t.metric]
        if value is not None:
            met = value >= t.goal if t.higher_is_better else value <= t.goal
            shown = shown_ratio(value, t.goal, t.higher_is_better)
            row.update(value=shown, met=met)
        names = (t.variant,) if t.versus is None else (t.variant, t.versus)
        notes = [f"{n}: {res[n]['note']}" for n in names if res.get(n, {}).get("note")]
        if notes:
            row["note"] = "; ".join(notes)
        out.append(row)
    return out


def print_report(res: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(
        f"ipsctl lab benchmark: {LAB_YAML.relative_to(ROOT)}, median of {args.runs} run(s) "
        f"of {args.seconds:g} s per measurement, queues fail-{args.fail_mode}, NFQUEUE client "
        f"{getattr(args, 'nfq_client', None) or 'default'}"
    )
    print(POLICY_NOTE)
    print(
        f"UDP64: {len(UDP_DSTS)} hping3 floods of {UDP_LEN}-byte payloads to {len(UDP_DSTS)} "
        "server addresses, counted at the server; conn/s: "
        f"{len(STORM_DSTS)} Python storm clients with 1 and {STORM_PARALLEL} connections in "
        f"flight each; ping -i {PING_INTERVAL:g}, unloaded"
    )
    w = max(19, 1 + max((len(n) for n in res), default=0))  # the variant column's width
    head = (
        f"{'variant':<{w}}{'TCP Gbit/s':>11}{'to 443':>8}{'UDP64 pkt/s':>13}{'conn/s':>9}"
        f"{f'x{STORM_PARALLEL}':>8}{'ping p50 us':>13}{'p99 us':>8}  queue drops (UDP)"
    )
    print(head)
    for name, r in res.items():
        if r["status"] != "ok":
            what = "n/a (not supported by this ipsctl)" if r["status"] == "n/a" else "error"
            print(f"{name:<{w}}{what}: {r['reason']}")
            continue
        m = {k: r["median"].get(k, float("nan")) for k in METRICS}
        drops = [run["detail"]["udp"].get("queue_drops") for run in r["runs"]]
        drop_text = "-" if drops[0] is None else "/".join(str(d) for d in drops)
        print(
            f"{name:<{w}}{m['tcp_gbps']:>11.2f}{m['tcp443_gbps']:>8.2f}{m['udp_pps']:>13,.0f}{m['conn_per_s']:>9,.0f}"
            f"{m['conn_par_per_s']:>8,.0f}{m['ping_p50_us']:>13.0f}{m['ping_p99_us']:>8.0f}"
            f"  {drop_text}"
        )
    for name, r in res.items():
        if r["status"] == "ok" and r["runs"][0]["detail"].get("tcp_queued") is not None:
            each = [
                f"{run['detail']['tcp_queued']}/{run['detail']['tcp443_queued']}"
                for run in r["runs"]
            ]
            print(f"  {name}: packets queued during TCP bulk, port 5201/443, each run: {each}")
    for name, r in res.items():
        if r["status"] == "ok" and r["runs"][0]["detail"]["udp"].get("queued"):
            shares = [run["detail"]["udp"]["queued"] for run in r["runs"]]
            print(f"  {name}: UDP packets per queue, each run: {shares}")
            if any(len(q) > 1 and min(q.values()) < 0.05 * sum(q.values()) for q in shares):
                # --queue-balance hashes addresses with a per-boot seed: all the flood's
                # flows can land in one queue; then this run says nothing about 2 queues.
                print(f"  {name}: warning: one queue got (almost) none of the flood")
    for name, r in res.items():
        if r["status"] == "ok" and UDP_CPU in r["median"]:
            each = "/".join(f"{run['detail']['udp']['cpu_us_per_packet']:.1f}" for run in r["runs"])
            print(
                f"  {name}: gateway CPU us per UDP packet handled: "
                f"{r['median'][UDP_CPU]:.1f} (each run {each})"
            )
    for name, r in res.items():
        if r["status"] != "ok" or "cpu_us_per_conn" not in r["runs"][0]["detail"].get("storm", {}):
            continue
        for key, what in (("storm", "1"), ("storm_parallel", f"{STORM_PARALLEL}")):
            runs = [run["detail"].get(key, {}) for run in r["runs"]]
            cpu = "/".join(f"{d.get('cpu_us_per_conn', float('nan')):.1f}" for d in runs)
            queued = "/".join(f"{d.get('queued_per_conn', float('nan')):.2f}" for d in runs)
            woke = "/".join(f"{d.get('wakeups_per_conn', float('nan')):.2f}" for d in runs)
            print(f"  {name}: {what} in flight: gateway CPU us per connection {cpu}, "
                  f"queued packets per connection {queued}, "
                  f"wake-ups per connection {woke} (each run)")  # fmt: skip
    for name, r in res.items():
        if r["status"] == "ok" and "gw_cpu_percent" in r["runs"][0]["detail"].get("ping", {}):
            each = "/".join(f"{run['detail']['ping']['gw_cpu_percent']:.1f}" for run in r["runs"])
            woke = "/".join(
                f"{run['detail']['ping'].get('wakeups_per_ping', float('nan')):.2f}"
                for run in r["runs"]
            )
            print(
                f"  {name}: gateway CPU while pinging, % of a core, each run: {each}; "
                f"wake-ups per ping: {woke}"
            )
    for name, r in res.items():
        if r.get("note"):
            print(f"  {name}: {r['note']}")
    rat = ratios(res)
    if rat:
        print("ratios (medians):")
        for k, v in rat.items():
            print(f"  {k:<52}{v:>10.3f}" if "us added" not in k else f"  {k:<52}{v:>+10.1f}")
    offline = getattr(args, "offline_results", None)
    if offline:
        for app, row in offline.items():
            print(
                f"offline replay (bench/replay_speed.py, gateway policy, {app}): "
                f"{row['packets_per_s']:,.0f} packets/s, {row['cpu_us_per_packet']:.2f} us CPU "
                f"per packet (rounds: {row['low']:,.0f} - {row['high']:,.0f})"
            )
    print("targets of the issues (issue 24's first):")
    for t in targets(res) + (offline_targets(offline) if offline else []):
        if "value" in t:
            verdict = "met" if t["met"] else "NOT met"
            print(f"  {t['target']:<58}{t['value']:>9} (goal {t['goal']}): {verdict}")
            if t.get("note"):
                print(f"      ({t['note']})")
        else:
            print(f"  {t['target']:<58}{'n/a':>9} (goal {t['goal']})")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, help="runs per variant, the median kept (default 3)")
    ap.add_argument("--seconds", type=float, help="seconds per measurement (default 5; --quick: 2)")
    ap.add_argument(
        "--only", help="comma-separated variants: " + ",".join(v.name for v in VARIANTS)
    )
    ap.add_argument("--quick", action="store_true", help="1 run, 2 s per measurement")
    ap.add_argument("--json", dest="json_path", metavar="FILE", help="also write results here")
    ap.add_argument(
        "--fail-mode",
        choices=("closed", "open"),
        default="closed",
        help="queues' behaviour when full (see above)",
    )
    ap.add_argument(
        "--nfq-client",
        choices=("own", "netfilterqueue"),
        help="the NFQUEUE client of ipsctl's workers (default: ipsctl's default)",
    )
    ap.add_argument(
        "--offline",
        action="store_true",
        help="also measure offline replay (bench/replay_speed.py, compiled+mmap, --runs rounds)",
    )
    ap.add_argument(
        "--tcp-only",
        action="store_true",
        help="measure only TCP bulk (to 5201 and to 443): the offload figures",
    )
    ap.add_argument(
        "--storm-only",
        action="store_true",
        help="measure only new connections/s (1 and 16 in flight), with the gateway's CPU "
        "time and queued packets per connection",
    )
    ap.add_argument(
        "--ping-only",
        action="store_true",
        help="measure only ping's round trips, with the gateway's CPU and wake-ups per ping",
    )
    args = ap.parse_args(argv)
    if args.tcp_only + args.storm_only + args.ping_only > 1:
        ap.error("--tcp-only, --storm-only and --ping-only: one of them")
    quick = (1, 2.0) if args.quick else (3, 5.0)  # explicit --runs/--seconds win
    args.runs = quick[0] if args.runs is None else args.runs
    args.seconds = quick[1] if args.seconds is None else args.seconds
    if args.runs < 1 or not 1 <= args.seconds <= 60:
        ap.error("--runs >= 1 and --seconds between 1 and 60")
    variants = list(VARIANTS)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        known = {v.name: v for v in VARIANTS}
        bad = [w for w in wanted if w not in known]
        if bad:
            ap.error(f"unknown variant(s) {', '.join(bad)}; known: {', '.join(known)}")
        variants = [known[w] for w in wanted]
    if os.geteuid() != 0:
        print("bench/lab.py: needs root (network namespaces, NFQUEUE)", file=sys.stderr)
        return 2
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(
            f"bench/lab.py: missing tools: {', '.join(missing)} (Debian: iperf3 hping3 "
            "iputils-ping iptables iproute2 coreutils)",
            file=sys.stderr,
        )
        return 2

    # SIGTERM unwinds like Ctrl-C: the finally blocks stop what was started and remove the lab.
    # Only in this process: pyroute2 forks helpers (netns sockets) that inherit the handler
    # and are ended with SIGTERM; one of them unwinding our stack would remove our labs.
    main_pid = os.getpid()

    def on_term(_signum: int, _frame: object) -> None:
        if os.getpid() != main_pid:
            os._exit(143)
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="ipsctl-benchlab-"))
    try:
        results = run_all(variants, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.offline_results = None
    if args.offline:
        log(f"offline replay: bench/replay_speed.py, {args.runs} round(s)")
        args.offline_results = measure_offline(args.runs)
    print_report(results, args)
    if args.json_path:
        doc = {
            "config": {
                "runs": args.runs,
                "seconds": args.seconds,
                "fail_mode": args.fail_mode,
                "nfq_client": args.nfq_client or "default",
                "tcp_only": args.tcp_only,
                "storm_only": args.storm_only,
                "ping_only": args.ping_only,
                "policy": POLICY_NOTE,
                "udp_streams": list(UDP_DSTS),
                "storm_clients": list(STORM_DSTS),
                "storm_parallel": STORM_PARALLEL,
            },
            "variants": results,
            "ratios": ratios(results),
            "targets": targets(results)
            + (offline_targets(args.offline_results) if args.offline_results else []),
            "offline": args.offline_results,
        }
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(r["status"] == "error" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
