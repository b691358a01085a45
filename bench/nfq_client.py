"""Does our own NFQUEUE client (ips/io/nfqnl.py) beat netfilterqueue by enough to own it?

In one lab (labs/gateway.yaml, bench/lab.py's machinery: hping3 floods of 64-byte UDP from
client to 4 server addresses, packets/s counted by the server's interface), gw diverts
FORWARD to queue 0 with `iptables -j NFQUEUE` and one of these accepts, fail-closed (what the
worker cannot take in time is dropped, so the server counts only what passed the worker):
  kernel         no queue: the ceiling of this lab
  nfq-accept     (a) netfilterqueue accepting everything (bench/accept_loop.py)
  nfqnl-single   (b) our client accepting everything, one verdict message per packet
  nfqnl-batch    (c) our client accepting everything, NFQNL_MSG_VERDICT_BATCH per run
  nfqnl-engine   (d) our client running the Engine (bench/lab.py's bench policy with
                     `set offload off`), accepted runs as batch verdicts
  nfq-engine     (e) netfilterqueue + the Engine: ips.io.nfqueue.QueueWorker, as
                     `ipsctl run --nfq-client netfilterqueue` runs
  own-worker     (f) our client in QueueWorker, as `ipsctl run` runs it: the compiled
                     loop (ips/io/_nfqdrain.pyx) when built
  own-worker-py  (f') the same with the loop in Python (NfqClient.drain)
Runs are interleaved (run 1 of every variant, then run 2, …) so a change in the machine's
load hits all variants alike; the median of --runs is kept. Load average is printed.

Needs root; only the lab's namespaces and addresses; bounded; cleans up on exit or error.

    python bench/nfq_client.py [--runs 3] [--seconds 5] [--only nfq-accept,nfqnl-batch]
                               [--json FILE] [--no-detect]
    python bench/nfq_client.py worker --mode MODE --queue N [--policy FILE]   (runs in gw)
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import lab as benchlab  # noqa: E402  (bench/lab.py)

from ips.io import nfqnl  # noqa: E402

QUEUE = 0
MODES = ("nfqnl-single", "nfqnl-batch", "nfqnl-mmsg", "nfqnl-engine", "nfqnl-engine-mmsg",
         "nfq-engine", "own-worker", "own-worker-py")  # fmt: skip
WORKER_MODES = ("nfq-engine", "own-worker", "own-worker-py")  # QueueWorker runs the queue
RECV_MANY = 64  # packets per recvmmsg call in the *-mmsg variants
VARIANTS = {
    "kernel": "kernel forwarding, no queue",
    "nfq-accept": "(a) netfilterqueue, accept-only",
    "nfqnl-single": "(b) our client, accept-only, per-packet verdicts",
    "nfqnl-batch": "(c) our client, accept-only, batch verdicts",
    "nfqnl-mmsg": "(c') as (c), receiving with recvmmsg (ctypes), up to 64 per call",
    "nfqnl-engine": "(d) our client + Engine, batch verdicts for accepts",
    "nfqnl-engine-mmsg": "(d') as (d), receiving with recvmmsg",
    "nfq-engine": "(e) netfilterqueue + Engine (QueueWorker, as ipsctl)",
    "own-worker": "(f) our client + Engine (QueueWorker, as ipsctl: the compiled loop)",
    "own-worker-py": "(f') as (f), the loop in Python",
}
RATIOS = (
    ("nfqnl-single", "nfq-accept"),
    ("nfqnl-batch", "nfq-accept"),
    ("nfqnl-batch", "nfqnl-single"),
    ("nfqnl-mmsg", "nfq-accept"),
    ("nfqnl-engine", "nfq-engine"),
    ("nfqnl-engine-mmsg", "nfq-engine"),
    ("nfq-engine", "nfq-accept"),
    ("nfqnl-engine", "nfqnl-batch"),
    ("own-worker", "nfq-accept"),
    ("own-worker-py", "nfq-accept"),
    ("own-worker", "own-worker-py"),
)


# ---- the gateway side (runs in gw) -------------------------------------------------------------


def engine_handler(client: nfqnl.NfqClient, engine: Any) -> nfqnl.Handler:
    """The Engine behind our client, deciding as QueueWorker._on_packet does: a plain accept
    returns None (batched by the client); anything else gets its own verdict here."""
    from ips.engine import Meta
    from ips.io.nfqueue import InterfaceNames, ReplySender
    from ips.translate.nft import OFFLOAD_MARK

    ifnames = InterfaceNames()
    replies = ReplySender()
    metas: dict[tuple[int, int], Meta] = {}
    clock = time.time
    handle = engine.handle

    def handler(pkt: nfqnl.QueuedPacket) -> object:
        key = (pkt.indev, pkt.outdev)
        meta = metas.get(key)
        if meta is None:
            meta = metas[key] = Meta(iif=ifnames(pkt.indev), oif=ifnames(pkt.outdev))
        decision = handle(pkt.payload, meta, clock())
        verdict = decision.verdict
        if verdict == "drop" or verdict == "reject":
            client.drop(pkt.id)
            if verdict == "reject" and decision.reply is not None:
                replies.send(decision.reply)
                if decision.peer_reply is not None:
                    replies.send(decision.peer_reply)
            return True
        if decision.data is not None:
            client.verdict(pkt.id, nfqnl.NF_ACCEPT, payload=decision.data)
            return True
        if decision.offload:
            client.verdict(pkt.id, nfqnl.NF_ACCEPT, mark=pkt.mark | OFFLOAD_MARK)
            return True
        return None

    return handler


def worker(mode: str, queue: int, policy: str | None) -> int:
    """Bind `queue` fail-closed, handle packets until SIGTERM; print one JSON line."""
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    engine = None
    if "engine" in mode or mode in WORKER_MODES:
        from ips.engine import Engine
        from ips.policy.resolve import load_policy

        if policy is None:
            raise SystemExit(f"{mode} needs --policy")
        engine = Engine(load_policy(policy))
    stats: dict[str, Any] = {}
    if mode in WORKER_MODES:
        from ips.io.adapter import wait_readable
        from ips.io.nfqueue import QueueWorker

        qw = QueueWorker(
            queue,
            engine,  # type: ignore[arg-type]
            fail_open=False,
            client="netfilterqueue" if mode == "nfq-engine" else "own",
            read_copies=False,
        )
        fd = qw.bind()
        if mode == "own-worker-py":
            qw._compiled = None  # NfqClient.drain with QueueWorker._on_queued
        stats["drain"] = qw.client_stats().get("drain")
        print("ready", flush=True)
        try:
            while not stop:
                if wait_readable([fd], 0.2):
                    qw.process_pending()
        finally:
            qw.unbind()
        stats.update(packets=engine.stats.packets, verdict_errors=qw.verdict_errors)  # type: ignore[union-attr]
    else:
        client = nfqnl.NfqClient(
            queue,
            fail_open=False,
            batch=mode != "nfqnl-single",
            recv_many=RECV_MANY if mode.endswith("-mmsg") else 0,
        )
        fd = client.bind()
        if engine is not None:
            handler = engine_handler(client, engine)
        else:

            def handler(_pkt: nfqnl.QueuedPacket) -> object:
                return None

        print("ready", flush=True)
        try:
            while not stop:
                try:
                    ready, _, _ = select.select([fd], [], [], 0.2)
                except InterruptedError:
                    continue
                if ready:
                    client.drain(handler)
        finally:
            client.close()
        stats = {
            "packets": client.received,
            "verdict_messages": client.verdicts_sent,
            "recv_calls": client.recv_calls,
            "enobufs": client.enobufs,
            "malformed": client.malformed,
            "kernel_errors": client.kernel_errors,
            "handler_errors": client.handler_errors,
        }
    if engine is not None:
        stats["engine_verdicts"] = dict(engine.stats.verdicts)
    print(json.dumps(stats), flush=True)
    return 0


# ---- the measuring side ------------------------------------------------------------------------


def start_gateway(b: benchlab.Bench, variant: str, policy: Path) -> subprocess.Popen[bytes] | None:
    if variant == "kernel":
        return None
    if variant == "nfq-accept":
        argv = [sys.executable, str(benchlab.ACCEPT_LOOP), "--queue", str(QUEUE)]
    else:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "worker",
            "--mode",
            variant,
            "--queue",
            str(QUEUE),
            "--policy",
            str(policy),
        ]
    proc = b.popen("gw", argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    benchlab.wait_line(proc, b"ready", 60, variant)
    return proc


def stop_gateway(proc: subprocess.Popen[bytes] | None) -> dict[str, Any]:
    if proc is None:
        return {}
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (ValueError, IndexError):
        raise benchlab.BenchError(f"gateway: {' | '.join(lines[-3:])}") from None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (/proc/PID/stat), in seconds. In the worker's
    system calls the kernel also does the packet's onward forwarding (nf_reinject), so this
    is the gateway's whole cost per packet as the worker carries it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(b: benchlab.Bench, variant: str, policy: Path) -> dict[str, Any]:
    proc = start_gateway(b, variant, policy)
    rule = ["FORWARD", "-j", "NFQUEUE", "--queue-num", str(QUEUE)]  # fail-closed: no bypass
    inserted = False
    try:
        if proc is not None:
            res = b.run("gw", ["iptables", "-I", *rule], timeout=20)
            if res.returncode != 0:
                raise benchlab.BenchError(f"iptables in gw: {res.stderr.strip()}")
            inserted = True
            cpu0 = cpu_seconds(proc.pid)
        pps, info = benchlab.measure_udp(b)
        if proc is not None:
            info["worker_cpu_s"] = cpu_seconds(proc.pid) - cpu0
    finally:
        if inserted:
            b.run("gw", ["iptables", "-D", *rule], timeout=20)
        worker_stats = stop_gateway(proc)
    handled = worker_stats.get("packets", worker_stats.get("accepted", 0))
    if handled and "worker_cpu_s" in info:  # startup packets: none (the rule came after)
        info["worker_cpu_us_per_packet"] = info["worker_cpu_s"] / handled * 1e6
    return {"udp_pps": pps, **info, "worker": worker_stats}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ipsctl-nfqclient-"))
    policy = workdir / "bench.rules"
    text = benchlab.bench_policy(benchlab.GATEWAY_RULES.read_text())
    if args.no_detect:  # the loop and the fast path alone: no detector sends packets to Python
        text = "".join(ln for ln in text.splitlines(True) if not ln.startswith("detect"))
    policy.write_text(benchlab.with_offload(text, False))
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    loads = [loadavg()]
    lab_args = argparse.Namespace(seconds=args.seconds, fail_mode="closed", nfq_client=None)
    try:
        with benchlab.lab_for(lab_args, workdir) as b:
            for i in range(args.runs):
                for v in args.variants:
                    benchlab.log(f"run {i + 1}/{args.runs}: {v} (load {loadavg()})")
                    runs[v].append(one(b, v, policy))
                loads.append(loadavg())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = {v: statistics.median(r["udp_pps"] for r in rs) for v, rs in runs.items()}
    ratios = {f"{a} / {c}": med[a] / med[c] for a, c in RATIOS if a in med and c in med and med[c]}
    cpu = {
        v: statistics.median(r["worker_cpu_us_per_packet"] for r in rs)
        for v, rs in runs.items()
        if all("worker_cpu_us_per_packet" in r for r in rs)
    }
    return {
        "seconds": args.seconds,
        "runs": runs,
        "median_pps": med,
        "ratios": ratios,
        "median_cpu_us_per_packet": cpu,
        "loadavg": loads,
        "cpus": os.cpu_count(),
    }


def report(res: dict[str, Any]) -> None:
    runs = res["runs"]
    print(
        f"\nUDP 64-byte packets/s at the server, median of {len(next(iter(runs.values())))} "
        f"runs of {res['seconds']:g} s, fail-closed queue 0, {res['cpus']} CPUs; "
        f"load average (1/5/15 min) before and after each round: "
        f"{' -> '.join(res['loadavg'])}"
    )
    print(f"{'variant':<18}{'pkt/s':>10}  {'each run':<20}{'CPU us/pkt':>11}  description")
    for v, rs in runs.items():
        each = "/".join(f"{r['udp_pps'] / 1000:.0f}k" for r in rs)
        cpu = res["median_cpu_us_per_packet"].get(v)
        cpu_text = "-" if cpu is None else f"{cpu:.1f}"
        print(f"{v:<18}{res['median_pps'][v]:>10,.0f}  {each:<20}{cpu_text:>11}  {VARIANTS[v]}")
    print(
        "CPU us/pkt: the worker process's user+system time over the packets it handled "
        "(median); queue drops per run:"
    )
    for v, rs in runs.items():
        if rs[0].get("queue_drops") is not None:
            print(f"  {v}: {'/'.join(str(r['queue_drops']) for r in rs)}")
    for v, rs in runs.items():
        w = rs[-1].get("worker")
        if w:
            print(
                f"  {v}: last run's worker: {json.dumps(w)}; hping3 sent "
                f"{rs[-1].get('sent_pps', 0):,} pkt/s"
            )
    print("ratios of packets/s (medians); CPU per packet ratio in brackets (lower is cheaper):")
    cpu = res["median_cpu_us_per_packet"]
    for k, r in res["ratios"].items():
        a, c = k.split(" / ")
        extra = f"   [{cpu[a] / cpu[c]:.3f}]" if a in cpu and c in cpu and cpu[c] else ""
        print(f"  {k:<40}{r:>7.3f}{extra}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        wp = argparse.ArgumentParser(prog="nfq_client.py worker")
        wp.add_argument("--mode", choices=MODES, required=True)
        wp.add_argument("--queue", type=int, default=QUEUE)
        wp.add_argument("--policy")
        wa = wp.parse_args(argv[1:])
        return worker(wa.mode, wa.queue, wa.policy)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", help="comma-separated: " + ",".join(VARIANTS))
    ap.add_argument("--json", dest="json_path", metavar="FILE")
    ap.add_argument(
        "--no-detect", action="store_true", help="the engine's policy without its `detect` lines"
    )
    args = ap.parse_args(argv)
    if args.runs < 1 or not 1 <= args.seconds <= 60:
        ap.error("--runs >= 1 and --seconds between 1 and 60")
    args.variants = list(VARIANTS)
    if args.only:
        args.variants = [w.strip() for w in args.only.split(",") if w.strip()]
        bad = [w for w in args.variants if w not in VARIANTS]
        if bad:
            ap.error(f"unknown variant(s) {', '.join(bad)}; known: {', '.join(VARIANTS)}")
    if os.geteuid() != 0:
        print("bench/nfq_client.py: needs root (network namespaces, NFQUEUE)", file=sys.stderr)
        return 2
    missing = [t for t in ("hping3", "iptables", "timeout") if shutil.which(t) is None]
    if missing:
        print(f"bench/nfq_client.py: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    main_pid = os.getpid()

    def on_term(_signum: int, _frame: object) -> None:  # unwind: stop what runs, remove the lab
        if os.getpid() != main_pid:
            os._exit(143)
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        res = measure(args)
    except (benchlab.BenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench/nfq_client.py: {exc}", file=sys.stderr)
        return 1
    report(res)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
