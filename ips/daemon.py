"""The inline daemon: `ipsctl run`.

    supervisor (this process)                      worker (a child process, one per queue)
    ─ installs `inet ipsctl` (+ the iptables       ─ binds NFQUEUE, runs the engine,
      fallback chain when nft has no `queue`)        gives verdicts, sends reject replies
    ─ serves the control socket (apply, confirm,   ─ answers reload / stats over a pipe
      status), rolls back an unconfirmed apply     ─ beats a heartbeat every loop
    ─ watchdog: a worker whose heartbeat stops
      is killed and replaced

A worker is a process so that a hung one can be killed. If the supervisor dies, the worker
sees its pipe close and exits; the kernel then applies the queue's bypass setting (fail-open
or fail-closed) until a new daemon starts, which first removes what the old one left.

Blocks (the members of the `banned_v4`/`banned_v6` sets, dropped by the first rules of our
chains) are the kernel's: the worker writes its engine's Block effects there, the supervisor
writes `ipsctl blocks add/del/flush` there (and tells the worker's engine), and a starting
worker adopts what the kernel holds. Across a restart:
  killed (SIGKILL, crash)  the table stays: fast path and blocks keep dropping, blocks expire
                           by their kernel timeouts; the next start applies over the table
                           (sets kept) and its worker adopts them.
  stopped (SIGTERM)        the table is removed — nothing of ipsctl filters while it is
                           stopped — after the blocks were saved to the state file (next to
                           the socket by default); the next start puts back those with time
                           left (their timeouts keep running while stopped) and removes the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import inspect
import ipaddress
import itertools
import json
import multiprocessing as mp
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ips.core.events import Effect
from ips.engine import Engine
from ips.heap import collector_stats, settle, tune_collector
from ips.kernel.diversion import Diversion
from ips.kernel.nft import KernelError
from ips.kernel.probe import read_queue_stats
from ips.kernel.ruleset import (
    BLOCK_TABLE,
    COPIED_COMMENT,
    DEFAULT_BLOCK_TIMEOUT,
    OFFLOADED_COMMENT,
    block_comment,
    block_table_spec,
    parse_block_comment,
)
from ips.policy.diagnostics import PolicyError
from ips.policy.model import Policy
from ips.policy.resolve import load_policy_collecting, load_policy_sources
from ips.privileges import DIVERT_KEEP, KEEP, drop_or_warn

DEFAULT_SOCKET = "/run/ipsctl/ipsctl.sock"
SOCKET_GROUP = "ipsctl"  # members may read status (read-only views)
STATE_FILE = "blocks.json"  # blocks saved by a clean stop, next to the control socket
TICK_EVERY = 1.0
HEARTBEAT_EVERY = 0.25
# Seconds a stopping worker may spend writing the flow records of the flows still open
# (reason `shutdown`), and seconds the supervisor waits for a worker to stop: both well inside
# the unit's TimeoutStopSec (10 s), which must leave time to take the diversion out.
SHUTDOWN_RECORDS_BUDGET = 3.0
WORKER_STOP_TIMEOUT = SHUTDOWN_RECORDS_BUDGET + 3.0
SHUTDOWN_RECORDS_CHUNK = 1024  # records handed to the sinks between looks at the clock
# the rest needs root (SO_PEERCRED); flows and alerts feed `ipsctl flows` and `ipsctl top`
READ_ONLY_OPS = frozenset({"status", "blocks_list", "flows", "alerts"})
MANUAL = "manual"  # the detector name of blocks made with `ipsctl blocks add`


@dataclass
class DaemonConfig:
    policy_path: str
    queue: int = 0
    hooks: tuple[str, ...] = ("forward",)
    fail_open: bool = True
    socket_path: str = DEFAULT_SOCKET
    eve_path: str | None = None
    hang_timeout: float = 5.0  # a worker silent this long is hung
    queue_maxlen: int = 4096  # packets the kernel holds for the worker; beyond: fail mode
    max_flows: int = 262_144
    never_block: tuple[str, ...] = ()  # CIDRs detectors never block (+ the host's addresses)
    state_path: str | None = None  # where a clean stop saves blocks (None: next to the socket)
    queues: int = 1  # workers, one per queue (queue, queue+1, …), steered by initiator
    mode: str = "inline"  # inline (NFQUEUE, enforcing) or tap (AF_PACKET copies, passive)
    iface: str | None = None  # tap: the interface read
    bpf: str | None = None  # tap: a tcpdump filter expression run in the kernel
    promisc: bool = False  # tap: promiscuous mode (a SPAN port's frames are not for us)
    eve_max_bytes: int = 256 * 1024 * 1024  # rotate the EVE file at this size (0: never)
    eve_keep: int = 5  # rotated EVE files kept
    syslog: str | None = None  # unix:/dev/log or udp:HOST:PORT: alerts and blocks, RFC 5424
    syslog_facility: str = "local5"
    stats_interval: float = 60.0  # seconds between EVE `stats` events (0: none)
    metrics: tuple[str, int] | None = None  # Prometheus endpoint (address, port); None: off
    webhook: str | None = None  # alerts are POSTed there (ips/sinks/webhook.py)
    backend: str = "nfqueue"  # nfqueue | divert (pydivert: WinDivert / eBPFDivert)
    nfq_client: str = "own"  # own (ips/io/nfqnl.py, batched verdicts) | netfilterqueue
    offload_copies: bool = True  # the worker reads offload's NFLOG copies (set from the probe)

    @property
    def state_file(self) -> str:
        return self.state_path or str(Path(self.socket_path).parent / STATE_FILE)

    @property
    def bans_file(self) -> str:
        """The divert backend's ban set (no kernel set there), next to the socket."""
        from ips.io.divert import BANS_FILE

        return str(Path(self.socket_path).parent / BANS_FILE)


def own_addresses() -> list[str]:
    """Every address on this network namespace's interfaces, as host CIDRs (a detector must
    never block the gateway itself). Empty when they cannot be read."""
    try:
        from pyroute2 import IPRoute

        found: list[str] = []
        with IPRoute() as ipr:
            for msg in ipr.get_addr():
                addr = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
                if not addr:
                    continue
                ip = ipaddress.ip_address(str(addr).split("%", 1)[0])
                found.append(f"{ip}/{ip.max_prefixlen}")
        return list(dict.fromkeys(found))
    except Exception as exc:  # no netlink (unlikely as root): detectors still get --never-block
        print(f"ipsctl: cannot read this host's addresses: {exc}", file=sys.stderr)
        return []


def make_engine(
    policy: Any, max_flows: int, never_block: Iterable[str], shards: int = 1
) -> Engine:
    """An Engine, with never_block when this engine version takes it."""
    if "never_block" in inspect.signature(Engine).parameters:
        return Engine(policy, max_flows=max_flows, never_block=tuple(never_block), shards=shards)  # type: ignore[call-arg]
    return Engine(policy, max_flows=max_flows)


# ---- the worker ---------------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGTERM this process when the supervisor dies (PR_SET_PDEATHSIG),
    so a SIGKILLed daemon leaves no worker answering the queue."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _open_sinks(cfg: DaemonConfig, passive: bool, blocks_enforced: bool) -> tuple[Any, Any, Any]:
    """The worker's event outputs: (EveWriter or None, RotatingLog or None, SyslogSink or None)."""
    from ips.sinks.eve import EveWriter
    from ips.sinks.logfile import RotatingLog
    from ips.sinks.syslog import SyslogSink

    log = RotatingLog(cfg.eve_path, cfg.eve_max_bytes, cfg.eve_keep) if cfg.eve_path else None
    syslog = SyslogSink(cfg.syslog, cfg.syslog_facility) if cfg.syslog else None
    if log is None and syslog is None:
        return None, None, None
    eve = EveWriter(log=log, syslog=syslog, passive=passive, blocks_enforced=blocks_enforced)
    return eve, log, syslog


def worker_main(
    conn: Connection,
    parent_ends: tuple[Connection, ...],
    parent_pid: int,
    heartbeat: Any,
    cfg: DaemonConfig,
    main: str,
    sources: dict[str, str],
    never_block: tuple[str, ...] = (),
    bpf_program: list[tuple[int, int, int, int]] | None = None,
    webhook_url: str | None = None,
    divert: tuple[tuple[str, ...], str] | None = None,  # (hooks, bans file): divert backend
) -> None:
    """Entry point of a worker process (forked): inline over NFQUEUE, or a passive tap."""
    from ips.io.nfqueue import QueueWorker, wait_readable
    from ips.io.tap import TapWorker
    from ips.kernel.blocks import KernelBlocks, adopt_blocks
    from ips.sinks.eve import stats_record
    from ips.sinks.meter import RecentAlerts, install_meter

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reopen = threading.Event()
    signal.signal(signal.SIGHUP, lambda _s, _f: reopen.set())  # logrotate: reopen the EVE file
    _die_with_parent(parent_pid)
    drop_or_warn("worker", keep_capabilities(cfg))  # NET_ADMIN (NFQUEUE, nft), NET_RAW (replies)
    for inherited in parent_ends:  # the supervisor's ends of the pipes: else no EOF ever
        inherited.close()
    tap = cfg.mode == "tap"
    policy = load_policy_sources(main, sources)
    engine = make_engine(policy, cfg.max_flows, never_block, cfg.queues)
    eve, log, syslog = _open_sinks(cfg, tap, policy.tap_blocks_enforced)
    views = WorkerViews(install_meter(engine), RecentAlerts())
    sinks: list[Any] = [views.alerts]
    if eve is not None:
        sinks.append(eve)
    if webhook_url:
        from ips.sinks.webhook import Webhook

        views.webhook = Webhook(webhook_url).start()  # its thread: after the fork
        sinks.append(views.webhook)

    def on_events(events: list[Effect]) -> None:
        for sink in sinks:
            sink.events(events)

    def beat() -> None:
        heartbeat.value = time.monotonic()

    worker: Any
    worker: Any
    blocks: Any = None
    if divert is not None:  # pydivert: the ban set is the adapter's, from the bans file
        from ips.io.divert import DivertWorker, UserBlocks

        ubans = UserBlocks(divert[1])
        ubans.load()
        worker = DivertWorker(engine, hooks=divert[0], queue_len=cfg.queue_maxlen, blocks=ubans,
                              on_events=on_events, on_busy=beat)  # fmt: skip
        adopted = adopt_blocks(engine, ubans.elements(time.time()), time.time())
    else:
        blocks = KernelBlocks()  # its libnftables context is made here, in the worker
        if tap:
            worker = TapWorker(
                cfg.iface or "", engine, bpf=bpf_program, bpf_text=cfg.bpf,
                promisc=cfg.promisc, on_events=on_events, blocks=blocks, on_busy=beat,
            )  # fmt: skip
        else:
            worker = QueueWorker(
                cfg.queue, engine, fail_open=cfg.fail_open, max_len=cfg.queue_maxlen,
                on_events=on_events, blocks=blocks, on_busy=beat, client=cfg.nfq_client,
                read_copies=cfg.offload_copies,
            )  # fmt: skip
        # The kernel's blocks (left by the previous worker or daemon, or restored from the
        # state file) become the engine's, before the first packet.
        try:
            adopted = adopt_blocks(engine, blocks.nft.elements(BLOCK_TABLE), time.time())
        except Exception as exc:  # the kernel still drops them; only the engine does not know
            blocks._error(f"adopting the kernel's blocks: {exc}")
            adopted = 0
    worker.sinks = {"eve": log, "syslog": syslog}
    try:
        fd = worker.bind()
    except Exception as exc:  # tell the supervisor why, instead of dying silently
        conn.send({"op": "failed", "error": str(exc)})
        return
    control = conn.fileno()
    copy_fd = getattr(worker, "copy_fd", None)  # NFQUEUE: copies of packets the kernel passed
    fds = [fd, control] if copy_fd is None else [fd, control, copy_fd]
    started = time.time()
    next_tick = started + TICK_EVERY
    next_stats = started + cfg.stats_interval if cfg.stats_interval > 0 and eve else None
    tune_collector()
    settle()  # before the first packet: the start-up heap leaves the collector's scans
    conn.send({"op": "ready", "pid": os.getpid(), "adopted": adopted})
    try:
        while True:
            beat()
            ready = wait_readable(fds, HEARTBEAT_EVERY)
            if fd in ready:
                worker.process_pending()
            if copy_fd is not None and copy_fd in ready:
                worker.process_copies()
            if control in ready:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    return  # the supervisor is gone: leave the queue to its bypass setting
                try:
                    reply = _worker_command(msg, engine, worker, adopted, views)
                except Exception as exc:  # answer, never die of a request
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                if reply is None:
                    return
                if "id" in msg:
                    reply["id"] = msg["id"]
                conn.send(reply)
            if reopen.is_set():
                reopen.clear()
                if log is not None:
                    log.reopen()
            now = time.time()
            if now >= next_tick:
                events = engine.tick(now)
                if events:
                    worker.effects(events)  # expiry counted; eve
                next_tick = now + TICK_EVERY
            if next_stats is not None and now >= next_stats and eve is not None:
                eve.write(stats_record(now, now - started, eve_stats(engine, worker, cfg)))
                next_stats = now + cfg.stats_interval
    finally:
        worker.unbind()  # first: the queue's fail mode covers the packets from now on
        end_open_flows(engine, worker, time.time(), SHUTDOWN_RECORDS_BUDGET)
        if views.webhook is not None:
            views.webhook.close()
        if log is not None:
            log.close()
        if syslog is not None:
            syslog.close()


def end_open_flows(
    engine: Engine, worker: Any, now: float, budget: float, clock: Any = time.monotonic
) -> int:
    """A stopping worker ends the flows still open, as Suricata does at shutdown: each gets
    its flow record (reason `shutdown`), so a stop or a restart loses none of a connection's
    accounting. Within `budget` seconds of `clock`: records not written by then are
    reported on stderr (the journal). Returns the records handed to the sinks."""
    deadline = clock() + budget
    try:
        ended = engine.drain(now)
    except Exception as exc:  # never in the way of the stop
        print(f"ipsctl worker: flows not ended at stop: {exc}", file=sys.stderr, flush=True)
        return 0
    written = 0
    for start in range(0, len(ended), SHUTDOWN_RECORDS_CHUNK):
        if clock() > deadline:
            print(f"ipsctl worker: {len(ended) - written} of {len(ended)} flow records not "
                  f"written at stop (over {budget:g} s)", file=sys.stderr, flush=True)  # fmt: skip
            break
        chunk = ended[start : start + SHUTDOWN_RECORDS_CHUNK]
        try:
            worker.effects(chunk)
        except Exception as exc:
            print(f"ipsctl worker: flow records at stop: {exc}", file=sys.stderr, flush=True)
            break
        written += len(chunk)
    return written


def eve_stats(engine: Engine, worker: Any, cfg: DaemonConfig) -> dict[str, Any]:
    """The body of a `stats` event: Suricata's sections where ours mean the same thing."""
    s = engine.stats
    v = s.verdicts
    out: dict[str, Any] = {
        "decoder": {"pkts": s.packets, "invalid": sum(s.malformed.values()), "not_ip": s.not_ip},
        "flow": _flow_stats(engine),
        "detect": {"alert": s.alerts},
    }
    if cfg.mode == "tap":
        tap = worker.stats()
        out["capture"] = {k: tap[k] for k in ("kernel_packets", "kernel_drops")}
        out["ipsctl"] = {"mode": "tap", **tap["would"]}
    else:
        q = read_queue_stats().get(cfg.queue)
        out["ips"] = {"accepted": v.get("accept", 0), "blocked": v.get("drop", 0),
                      "rejected": v.get("reject", 0), "replaced": v.get("rewrite", 0)}  # fmt: skip
        out["nfq"] = dataclasses.asdict(q) if q else {}
        out["ipsctl"] = {"mode": "inline", "engine_errors": s.errors}
    return out


def _flow_stats(engine: Engine) -> dict[str, int]:
    f = engine.flows.stats
    return {"active": f.active, "total": f.created, "timeout": f.expired,
            "evicted": f.evicted, "reused": f.reused}  # fmt: skip


@dataclass
class WorkerViews:
    """What the worker keeps for the operator: byte count and latency samples (the meter
    around engine.handle), the recent alerts, the webhook sender."""

    meter: Any = None
    alerts: Any = None
    webhook: Any = None


def _worker_command(
    msg: dict[str, Any], engine: Engine, worker: Any, adopted: int = 0,
    views: WorkerViews | None = None,
) -> dict[str, Any] | None:  # fmt: skip
    op = msg.get("op")
    views = views or WorkerViews()
    if op == "load":
        engine.load(load_policy_sources(msg["main"], msg["sources"]))
        if hasattr(worker, "refilter"):  # divert: the filter follows the policy
            worker.refilter()
        settle()  # frees the replaced policy (it has cycles) and freezes the new one
        return {"ok": True, "digest": engine.policy.digest}
    if str(op).startswith("ban_") and hasattr(worker, "ban_command"):
        return worker.ban_command(msg)  # divert: the ban set is the worker's
    if op == "stats":
        s = engine.stats
        return {
            "ok": True,
            "packets": s.packets,
            "verdicts": dict(s.verdicts),
            "malformed": dict(s.malformed),
            "not_ip": s.not_ip,
            "engine_errors": s.errors,
            "verdict_errors": worker.verdict_errors,
            "alerts": s.alerts,
            "flows": len(engine.flows),
            "offloaded": s.offloaded,
            "replies_sent": worker.replies.sent,
            "replies_failed": worker.replies.failed,
            "digest": engine.policy.digest,
            "rules": [_rule_hits(r) for r in engine.policy.rules],
            "blocks": {
                **(worker.blocks.stats() if worker.blocks is not None else {}),
                "engine": _engine_blocks(engine),
                "adopted": adopted,
            },
            "detectors": detector_stats(engine),
            "mode": "tap" if getattr(worker, "iface", None) else "inline",
            "tap": worker.stats() if hasattr(worker, "iface") else None,
            "sinks": {k: v.stats() for k, v in getattr(worker, "sinks", {}).items() if v},
            "flow_table": dataclasses.asdict(engine.flows.stats),
            "bytes": views.meter.bytes if views.meter is not None else None,
            "latency": views.meter.snapshot() if views.meter is not None else None,
            "alerts_seq": views.alerts.seq if views.alerts is not None else 0,
            "webhook": views.webhook.stats() if views.webhook is not None else None,
            "gc": collector_stats(),
            **({"divert": worker.stats()} if hasattr(worker, "ban_command") else {}),
            **({"nfq_client": worker.client_stats()} if hasattr(worker, "client_stats") else {}),
        }
    if op == "flows":
        from ips.views.flows import FilterError, select_flows

        try:
            return select_flows(
                engine.flows.flows(), time.time(), top=int(msg.get("top", 20)),
                sort=str(msg.get("sort", "bytes")), filter_text=str(msg.get("filter") or ""),
                group=msg.get("group"),
            )  # fmt: skip
        except FilterError as exc:
            return {"ok": False, "error": str(exc)}
    if op == "alerts":
        if views.alerts is None:
            return {"ok": True, "seq": 0, "alerts": []}
        since, limit = int(msg.get("since", 0)), min(int(msg.get("limit", 50)), 256)
        return {"ok": True, "seq": views.alerts.seq, "alerts": views.alerts.since(since, limit)}
    if op in ("block", "unblock", "unblock_all"):
        return _manual(op, msg, engine, worker)
    if op == "reopen":
        log = getattr(worker, "sinks", {}).get("eve")
        if log is not None:
            log.reopen()
        return {"ok": True, "reopened": log is not None}
    if op == "stop":
        return None
    return {"ok": False, "error": f"unknown op {op!r}"}


def _manual(op: str, msg: dict[str, Any], engine: Engine, worker: Any) -> dict[str, Any]:
    """A manual block / unblock the supervisor already wrote to the kernel: the engine is told
    (engine.block / engine.unblock) and the effect it returns goes to the EVE log. Not to the
    kernel again: the supervisor did that, also when this worker was busy or hung."""
    now = float(msg.get("time") or time.time())
    reason = str(msg.get("reason") or MANUAL)
    effects: list[Effect] = []
    if op == "block":
        addr = ipaddress.ip_address(msg["addr"]).packed
        fn = getattr(engine, "block", None)
        effect = fn(addr, now, msg.get("ttl"), reason=reason) if fn is not None else None
        if effect is None and msg.get("force"):
            effect = _forced_block(addr, msg.get("ttl"), reason, now)
        if effect is not None:
            effects.append(effect)
    else:
        fn = getattr(engine, "unblock", None)
        if op == "unblock":
            addrs = [ipaddress.ip_address(msg["addr"]).packed]
        else:
            table = engine.tables.get(BLOCK_TABLE)
            addrs = list(table.members) if table is not None else []
        for addr in addrs:
            effect = fn(addr, now, reason=reason) if fn is not None else None
            if effect is not None:
                effects.append(effect)
    if effects and worker.on_events is not None:
        worker.on_events(effects)
    reply: dict[str, Any] = {"ok": True, "engine": bool(effects), "count": len(effects)}
    if op == "block" and effects:
        b = effects[0]
        reply.update(detector=getattr(b, "detector", MANUAL), offense=getattr(b, "offense", 0))
    return reply


def _forced_block(addr: bytes, ttl: float | None, reason: str, now: float) -> object | None:
    """The Block record of a `blocks add --force` the engine refused (a never-block address):
    the kernel has it, so the EVE log says so too."""
    try:
        from ips.core.events import Block  # type: ignore[attr-defined]

        return Block(addr, table=BLOCK_TABLE, ttl=ttl or 0.0, detector=MANUAL, offense=0,
                     reason=reason, time=now)  # fmt: skip
    except (ImportError, TypeError):  # an engine without blocks: the EVE log has no record
        return None


def _engine_blocks(engine: Engine) -> int | None:
    """Members of the engine's block table (its mirror of the kernel set)."""
    table = getattr(engine, "tables", {}).get(BLOCK_TABLE)
    return len(table.members) if table is not None else None


def detector_stats(engine: Any) -> dict[str, Any]:
    """Per-detector counters, read defensively from whatever the engine exposes: a mapping
    (engine.detector_stats / engine.stats.detectors, maybe a method), or a list of detector
    objects with a name and counters."""
    stats = getattr(engine, "stats", None)
    alerts = getattr(stats, "detector_alerts", None)
    drops = getattr(stats, "detector_drops", None)
    if isinstance(alerts, dict) or isinstance(drops, dict):  # the engine's EngineStats
        names = set(alerts or {}) | set(drops or {})
        names |= set(getattr(getattr(engine.policy, "policy", None), "detectors", None) or ())
        return {
            name: {"alerts": int((alerts or {}).get(name, 0)),
                   "drops": int((drops or {}).get(name, 0))}
            for name in sorted(names)
        }  # fmt: skip
    places = ((engine, "detector_stats"), (engine.stats, "detectors"),
              (engine, "detector_counts"), (engine.stats, "detector_alerts"))  # fmt: skip
    for holder, attr in places:
        value = getattr(holder, attr, None)
        if callable(value):
            try:
                value = value()
            except Exception:
                continue
        if isinstance(value, dict):
            return {str(k): _plain(v) for k, v in value.items()}
    out: dict[str, Any] = {}
    for det in getattr(engine, "detectors", None) or []:
        name = getattr(det, "name", type(det).__name__)
        counters = {k: v for k in ("alerts", "blocks", "fired", "limited", "observed")
                    if isinstance(v := getattr(det, k, None), int)}  # fmt: skip
        out[str(name)] = counters
    return out


def _plain(value: Any) -> Any:
    """Something json can write (counters may be Counters, dataclasses, objects)."""
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if hasattr(value, "__slots__") or hasattr(value, "__dict__"):
        names = getattr(value, "__slots__", None) or list(vars(value))
        return {n: _plain(getattr(value, n, None)) for n in names if not n.startswith("_")}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _rule_hits(rule: Any) -> dict[str, Any]:
    spec = rule.spec
    where = f"{spec.span.file}:{spec.span.line}"
    return {
        "where": where,
        "name": spec.name,
        "action": spec.action,
        "hits": rule.hits,
        "text": spec.text,
    }


# ---- the supervisor -----------------------------------------------------------------------------


@dataclass
class Counters:
    started: float = field(default_factory=time.time)
    worker_restarts: int = 0
    worker_hangs: int = 0
    worker_deaths: int = 0
    applies: int = 0
    applies_refused: int = 0
    rollbacks: int = 0
    blocks_added: int = 0  # by `ipsctl blocks add`
    blocks_removed: int = 0  # by `ipsctl blocks del/flush`
    blocks_restored: int = 0  # put back at start from the state file of a clean stop
    blocks_saved: int = 0  # written to the state file at a clean stop
    block_kernel_errors: int = 0  # nft refused a manual block operation


def keep_capabilities(cfg: DaemonConfig) -> tuple[int, ...]:
    """What the daemon keeps after set-up: the divert backend loads eBPF in each worker."""
    return DIVERT_KEEP if cfg.backend == "divert" else KEEP


def merge_stats(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' answers as one: numbers summed, dicts merged key by key, lists of
    dicts (per-rule hits: the same rules in the same order) merged item by item; anything
    else (text, digests, flags) from the first answer that has it."""
    good = [r for r in replies if r.get("ok", True)] or replies[:1]
    return _merge([r for r in good])  # type: ignore[return-value]


def _merge(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, bool) or not isinstance(first, int | float | dict | list):
        return first
    if isinstance(first, int | float):
        return sum(v for v in present if isinstance(v, int | float) and not isinstance(v, bool))
    if isinstance(first, dict):
        keys = dict.fromkeys(k for v in present if isinstance(v, dict) for k in v)
        return {k: _merge([v.get(k) for v in present if isinstance(v, dict)]) for k in keys}
    lists = [v for v in present if isinstance(v, list)]
    if all(len(v) == len(first) for v in lists) and all(isinstance(x, dict) for x in first):
        return [_merge(list(items)) for items in zip(*lists, strict=True)]
    return first


def merge_flows(replies: list[dict[str, Any]], top: int, sort: str) -> dict[str, Any]:
    """`flows` answers of several workers: rows (or groups, summed by key) re-ranked."""
    good = [r for r in replies if r.get("ok")]
    if not good:
        return replies[0] if replies else {"ok": False, "error": "no worker"}
    total = sum(int(r.get("total", 0)) for r in good)
    if "groups" in good[0]:
        sums: dict[str, dict[str, Any]] = {}
        for r in good:
            for g in r["groups"]:
                s = sums.setdefault(g["key"], {"key": g["key"], "flows": 0, "packets": 0,
                                               "bytes": 0})  # fmt: skip
                for k in ("flows", "packets", "bytes"):
                    s[k] += g[k]
        field_ = {"bytes": "bytes", "packets": "packets"}.get(sort, "flows")
        groups = sorted(sums.values(), key=lambda g: g[field_], reverse=True)[:top]
        return {"ok": True, "total": total, "groups": groups}
    rows = [row for r in good for row in r["flows"]]
    rows.sort(key=lambda row: row.get(sort, 0), reverse=True)
    return {"ok": True, "total": total, "flows": rows[:top]}


class AlertFeed:
    """The recent alerts of every worker in one numbered feed (`ipsctl top` reads it with
    `since`): each poll takes what each worker added since the last one (a cursor per
    worker; a replaced worker numbers from 1 again) and numbers it in the feed's order."""

    KEEP = 256

    def __init__(self) -> None:
        self.seq = 0
        self.recent: list[dict[str, Any]] = []
        self.cursors: dict[int, tuple[int, int]] = {}  # index -> (worker pid, its last seq)
        self.lock = threading.Lock()

    def collect(self, daemon: Any, since: int, limit: int) -> dict[str, Any]:
        with self.lock:
            for index, worker in enumerate(list(daemon.workers)):
                pid, last = self.cursors.get(index, (worker.pid, 0))
                if pid != worker.pid:
                    last = 0
                try:
                    reply = worker.request({"op": "alerts", "since": last, "limit": self.KEEP},
                                           timeout=2.0)  # fmt: skip
                except (TimeoutError, OSError, EOFError):
                    continue
                for alert in reply.get("alerts") or []:
                    last = max(last, int(alert.get("seq") or 0))
                    self.seq += 1
                    self.recent.append({**alert, "seq": self.seq})
                self.cursors[index] = (worker.pid, max(last, int(reply.get("seq") or 0)))
            del self.recent[: -self.KEEP]
            limit = max(1, min(limit, self.KEEP))
            fresh = [a for a in self.recent if a["seq"] > since][-limit:]
            return {"ok": True, "seq": self.seq, "alerts": fresh}


class WorkerFailed(RuntimeError):
    """The worker could not start its packet source (no such interface, …): fatal at start."""


class WorkerHandle:
    """The supervisor's side of one worker process."""

    def __init__(
        self, cfg: DaemonConfig, main: str, sources: dict[str, str],
        never_block: tuple[str, ...] = (),
        bpf_program: list[tuple[int, int, int, int]] | None = None,
    ) -> None:  # fmt: skip
        ctx = mp.get_context("fork")
        self.queue = cfg.queue
        self.heartbeat = ctx.Value("d", time.monotonic(), lock=False)
        self.conn, child = ctx.Pipe()
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self.process = ctx.Process(
            target=worker_main,
            args=(
                child, (self.conn,), os.getpid(), self.heartbeat, cfg, main, sources,
                never_block, bpf_program, cfg.webhook,
                (cfg.hooks, cfg.bans_file) if cfg.backend == "divert" else None,
            ),
            name=f"ipsctl-tap-{cfg.iface}" if cfg.mode == "tap" else f"ipsctl-worker-q{cfg.queue}",
            daemon=True,
        )  # fmt: skip
        self.process.start()
        child.close()
        if not self.conn.poll(15):
            raise RuntimeError("worker did not start")
        hello = self.conn.recv()
        if hello.get("op") == "failed":
            self.process.join(5)
            raise WorkerFailed(str(hello.get("error")))
        if hello.get("op") != "ready":
            raise RuntimeError(f"worker failed to start: {hello}")
        self.adopted = int(hello.get("adopted", 0))

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def request(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send a request and wait for its answer. Requests carry an id: the late answer to
        one that timed out is skipped, not taken for the answer to the next."""
        with self.lock:
            msg = {**msg, "id": next(self._ids)}
            self.conn.send(msg)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self.conn.poll(left):
                    raise TimeoutError(f"worker did not answer {msg.get('op')}")
                reply = self.conn.recv()
                if reply.get("id") in (msg["id"], None):
                    return reply

    def silent_for(self) -> float:
        return time.monotonic() - self.heartbeat.value

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.process.join(5)

    def request_stop(self) -> None:
        with contextlib.suppress(Exception), self.lock:
            self.conn.send({"op": "stop"})

    def wait_stopped(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            self.kill()


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.counters = Counters()
        self.stopping = threading.Event()
        self.reopen_logs = threading.Event()  # SIGHUP: the worker reopens the EVE file
        self.lock = threading.RLock()  # one policy change at a time
        self.policy: Policy | None = None
        self.main = ""
        self.sources: dict[str, str] = {}
        self.loaded_at = 0.0
        self.previous: tuple[str, dict[str, str]] | None = None
        self.confirm_deadline: float | None = None
        self.workers: list[WorkerHandle] = []  # worker i reads queue cfg.queue + i
        self._alert_feed = AlertFeed()
        self.diversion: Any
        if cfg.backend == "divert":  # no nftables: nothing in the kernel, blocks in the worker
            from ips.io.divert import UserspaceDiversion

            self.diversion = UserspaceDiversion(cfg.hooks, cfg.fail_open, cfg.bans_file,
                                                lambda: self.worker)  # fmt: skip
        else:
            self.diversion = Diversion(
                queue=cfg.queue, hooks=cfg.hooks, fail_open=cfg.fail_open,
                tap=cfg.mode == "tap", queues=cfg.queues,
            )  # fmt: skip
        self.bpf_program: list[tuple[int, int, int, int]] | None = None
        self._server: socket.socket | None = None
        self.never_block: tuple[str, ...] = tuple(cfg.never_block)
        self.installed = False
        # Tap mode's kernel counters ({"kernel_drops": N, ...}); status carries it as "tap"
        # and the metrics export kernel_drops. None when not tapping.
        self._metrics: Any = None

    # ---- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        policy, sources = load_policy_collecting(self.cfg.policy_path)  # PolicyError -> caller
        if self.cfg.mode == "tap" and self.cfg.bpf:
            from ips.io.tap import compile_bpf

            self.bpf_program = compile_bpf(self.cfg.bpf, self.cfg.iface or "")  # TapError
        self.diversion.remove_stale()  # a killed daemon's diversion (its table is kept)
        self.diversion.install(policy)  # over a killed daemon's table: blocks kept
        self.installed = True
        self._restore_blocks()  # those a clean stop saved
        self._set_policy(policy, str(Path(self.cfg.policy_path).resolve()), sources)
        self.workers = [self._new_worker(i) for i in range(self.cfg.queues)]  # adopt blocks
        self._serve_control()
        if self.cfg.metrics is not None:
            from ips.sinks.prometheus import start_metrics

            self._metrics = start_metrics(self.cfg.metrics, self.status)

    def _new_worker(self, index: int = 0) -> WorkerHandle:
        # The host's addresses are read again for every worker: they may have changed.
        self.never_block = tuple(dict.fromkeys((*own_addresses(), *self.cfg.never_block)))
        cfg = dataclasses.replace(self.cfg, queue=self.cfg.queue + index,
                                  offload_copies=self._copies())  # fmt: skip
        return WorkerHandle(cfg, self.main, self.sources, self.never_block, self.bpf_program)

    def _copies(self) -> bool:
        """Whether workers read offload's NFLOG copies: inline over NFQUEUE, on a kernel that
        has NFLOG (else the diversion's rules queue a connection's first data instead)."""
        inline = self.cfg.mode == "inline" and self.cfg.backend == "nfqueue"
        return inline and bool(getattr(self.diversion, "copies", False))

    def _restore_blocks(self) -> None:
        from ips.kernel.blocks import load_saved_blocks, restore_blocks

        saved = load_saved_blocks(self.cfg.state_file, time.time())
        if saved:
            self.counters.blocks_restored += restore_blocks(self.diversion.nft, saved)

    def _save_blocks(self) -> None:
        """Before our table goes: the blocks to the state file (with their expiry times)."""
        from ips.kernel.blocks import save_blocks

        try:
            blocks = self.diversion.blocks()
            if blocks or self.installed:
                self.counters.blocks_saved = save_blocks(self.cfg.state_file, blocks, time.time())
        except (KernelError, OSError) as exc:
            print(f"ipsctl: could not save the blocks: {exc}", file=sys.stderr)

    def run_forever(self) -> None:
        """Watchdog and timers until SIGTERM/SIGINT."""
        while not self.stopping.wait(0.2):
            if self.reopen_logs.is_set():
                self.reopen_logs.clear()
                self._tell_worker({"op": "reopen"})
            self._watchdog()
            self._check_confirm_deadline()

    def stop(self) -> None:
        self.stopping.set()
        if self._metrics is not None:
            self._metrics.close()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.cfg.socket_path)
        for worker in self.workers:  # all at once: each writes its flows' records meanwhile
            worker.request_stop()
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT  # one for all: inside TimeoutStopSec
        for worker in self.workers:
            worker.wait_stopped(max(0.0, deadline - time.monotonic()))
        self._save_blocks()
        self.diversion.remove()

    # ---- policy -----------------------------------------------------------------------------

    def _set_policy(self, policy: Policy, main: str, sources: dict[str, str]) -> None:
        self.policy = policy
        self.main = main
        self.sources = sources
        self.loaded_at = time.time()

    def apply(self, main: str, sources: dict[str, str], confirm: float | None) -> dict[str, Any]:
        with self.lock:
            try:
                policy = load_policy_sources(main, sources)
            except PolicyError as exc:
                self.counters.applies_refused += 1
                return {
                    "ok": False,
                    "error": "policy has errors; the running policy is unchanged",
                    "diagnostics": [d.as_dict() for d in exc.diagnostics],
                    "rendered": exc.render(),
                }
            previous = (self.main, self.sources)
            self._swap(policy, main, sources)
            self.counters.applies += 1
            if confirm:
                # keep the oldest confirmed policy if applies are stacked unconfirmed
                if self.confirm_deadline is None:
                    self.previous = previous
                self.confirm_deadline = time.time() + confirm
            else:
                self.previous = None
                self.confirm_deadline = None
            return {"ok": True, "digest": policy.digest, "confirm_deadline": self.confirm_deadline}

    def _swap(self, policy: Policy, main: str, sources: dict[str, str]) -> None:
        """Kernel part in one nft transaction, then the workers' engines (flows kept), then
        the offload rules of the new policy's generation (a second transaction: between the
        two, nothing is offloaded — connections offloaded under the old policy come back to
        the engines, and no verdict of an engine still on the old policy offloads one)."""
        offloading = self.cfg.mode == "inline" and self.cfg.backend == "nfqueue"
        if offloading:
            self.diversion.update(policy, offload=False)
        else:
            self.diversion.update(policy)
        for worker in self.workers:
            reply = worker.request({"op": "load", "main": main, "sources": sources})
            if not reply.get("ok"):
                raise RuntimeError(f"worker refused the policy: {reply}")
        if offloading:
            self.diversion.update(policy)
        self._set_policy(policy, main, sources)

    def confirm(self) -> dict[str, Any]:
        with self.lock:
            if self.confirm_deadline is None:
                return {"ok": False, "error": "nothing to confirm"}
            self.confirm_deadline = None
            self.previous = None
            return {"ok": True, "digest": self.policy.digest if self.policy else None}

    def _check_confirm_deadline(self) -> None:
        with self.lock:
            if self.confirm_deadline is None or time.time() < self.confirm_deadline:
                return
            assert self.previous is not None
            main, sources = self.previous
            self._swap(load_policy_sources(main, sources), main, sources)
            self.counters.rollbacks += 1
            self.confirm_deadline = None
            self.previous = None

    # ---- watchdog ---------------------------------------------------------------------------

    def _watchdog(self) -> None:
        for index, worker in enumerate(list(self.workers)):
            if not worker.alive():
                self.counters.worker_deaths += 1
            elif worker.silent_for() > self.cfg.hang_timeout:
                self.counters.worker_hangs += 1
                worker.kill()
            else:
                continue
            with self.lock:
                self.workers[index] = self._new_worker(index)
                self.counters.worker_restarts += 1

    @property
    def worker(self) -> WorkerHandle | None:
        """The first worker (the only one unless --queues N)."""
        return self.workers[0] if self.workers else None

    # ---- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.time()
        replies = self._ask_workers({"op": "stats"})
        worker = merge_stats(replies) if replies else {}
        queues = read_queue_stats()
        q = queues.get(self.cfg.queue) if self.cfg.mode != "tap" else None
        per_queue = [
            {"queue": w.queue, "pid": w.pid, "packets": r.get("packets"),
             "offloaded": r.get("offloaded"), "error": r.get("error"),
             "copies": ((r.get("nfq_client") or {}).get("copies") or {}).get("received"),
             "kernel": dataclasses.asdict(queues[w.queue]) if w.queue in queues else None}
            for w, r in zip(self.workers, replies, strict=False)
        ]  # fmt: skip
        policy = self.policy
        counters = self.diversion.counters()
        return {
            "ok": True,
            "pid": os.getpid(),
            "uptime": round(now - self.counters.started, 1),
            "policy": {
                "file": self.main,
                "digest": policy.digest if policy else None,
                "age": round(now - self.loaded_at, 1),
                "rules": len(policy.rules) if policy else 0,
                "kernel_rules": self.diversion.kernel_rules,
                "confirm_deadline": self.confirm_deadline,
            },
            "diversion": self.diversion.describe(),
            "kernel_hits": self.diversion.kernel_hits(counters),
            "queue": dataclasses.asdict(q) if q else None,
            "worker": {"pid": self.worker.pid if self.worker else None, **worker},
            "workers": per_queue,
            "counters": self.counters.__dict__,
            "blocks": self._block_summary(worker, counters),
            "never_block": list(self.never_block),
            "detectors": worker.get("detectors") or {},
            "mode": self.cfg.mode,
            "offload": {
                "enabled": bool(policy and policy.offload) and self.cfg.mode == "inline"
                and self.cfg.backend == "nfqueue",
                "flows": worker.get("offloaded", 0),  # flows the engine handed to the kernel
                # their later packets, accepted by the kernel without the queue
                "kernel_packets": _counter_packets(counters, OFFLOADED_COMMENT),
                # first packets after a handshake passed by the kernel, a copy to the worker
                "copied": _counter_packets(counters, COPIED_COMMENT),
                "generation": getattr(self.diversion, "offload_generation", None),
            },
            "tap": worker.get("tap"),
            "sinks": worker.get("sinks") or {},
        }

    def _block_summary(self, worker: dict[str, Any], counters: Any) -> dict[str, Any]:
        w = worker.get("blocks") or {}
        c = self.counters
        try:
            active: int | None = len(self.diversion.blocks())
        except KernelError:
            active = None
        return {
            "table": BLOCK_TABLE,
            "active": active,  # members of the kernel sets now
            "kernel_drops": self.diversion.block_drops(counters),  # packets dropped for them
            "added": int(w.get("added", 0)) + c.blocks_added,  # detectors' + manual
            "added_by_detectors": int(w.get("added", 0)),
            "added_manually": c.blocks_added,
            "removed_manually": c.blocks_removed,
            "expired": int(w.get("expired", 0)),
            "restored": c.blocks_restored,
            "adopted": w.get("adopted"),
            "in_engine": w.get("engine"),
            "kernel_errors": int(w.get("kernel_errors", 0)) + c.block_kernel_errors,
            "last_error": w.get("last_error") or "",
            "latency": w.get("latency") or {},
        }

    # ---- blocks (ipsctl blocks …) -----------------------------------------------------------

    def blocks_list(self) -> dict[str, Any]:
        now = time.time()
        rows = []
        for e in self.diversion.blocks():
            detector, offense, reason = parse_block_comment(e.comment)
            rows.append({
                "addr": e.addr,
                "table": BLOCK_TABLE,
                "expires_in": e.expires,  # seconds left (the kernel's own count)
                "timeout": e.timeout,
                "expires_at": None if e.expires is None else round(now + e.expires, 3),
                "detector": detector,
                "offense": offense,
                "reason": reason,
            })  # fmt: skip
        rows.sort(key=lambda r: ipaddress.ip_address(r["addr"]).packed)
        return {"ok": True, "table": BLOCK_TABLE, "blocks": rows}

    def _never_blocked(self, addr: str) -> str | None:
        ip = ipaddress.ip_address(addr)
        for cidr in self.never_block:
            with contextlib.suppress(ValueError):
                if ip in ipaddress.ip_network(cidr, strict=False):
                    return cidr
        return None

    def blocks_add(
        self, addr: str, ttl: float | None, reason: str | None, force: bool = False
    ) -> dict[str, Any]:
        try:
            text = str(ipaddress.ip_address(addr))
        except ValueError:
            return {"ok": False, "error": f"not an IP address: {addr!r}"}
        if ttl is not None and not (0 < ttl <= 365 * 86400):
            return {"ok": False, "error": "ttl must be more than 0 and at most 365 days"}
        cidr = self._never_blocked(text)
        if cidr and not force:
            error = (f"{text} is never blocked (it is in {cidr}: this host's own addresses "
                     "and --never-block); --force blocks it anyway")  # fmt: skip
            return {"ok": False, "error": error}
        if ttl is None:  # the block table's own timeout; a manual block always ends
            ttl = block_table_spec(self.policy).timeout or DEFAULT_BLOCK_TIMEOUT
        reason = reason or MANUAL
        now = time.time()
        try:
            self.diversion.block(text, ttl, block_comment(MANUAL, 0, reason))
        except KernelError as exc:
            self.counters.block_kernel_errors += 1
            return {"ok": False, "error": f"nft refused the block: {exc}"}
        self.counters.blocks_added += 1
        msg = {"op": "block", "addr": text, "ttl": ttl, "reason": reason, "time": now,
               "force": bool(cidr)}  # fmt: skip
        engine = self._tell_worker(msg)
        return {"ok": True, "addr": text, "table": BLOCK_TABLE, "ttl": ttl, "reason": reason,
                "forced": bool(cidr), "engine": engine}  # fmt: skip

    def blocks_del(self, addr: str) -> dict[str, Any]:
        try:
            text = str(ipaddress.ip_address(addr))
        except ValueError:
            return {"ok": False, "error": f"not an IP address: {addr!r}"}
        try:
            removed = self.diversion.unblock(text)
        except KernelError as exc:
            self.counters.block_kernel_errors += 1
            return {"ok": False, "error": f"nft refused: {exc}"}
        engine = self._tell_worker({"op": "unblock", "addr": text, "reason": MANUAL,
                                    "time": time.time()})  # fmt: skip
        if not removed and not engine.get("count"):
            return {"ok": False, "error": f"{text} is not blocked"}
        self.counters.blocks_removed += int(removed)
        return {"ok": True, "addr": text, "removed": removed, "engine": engine}

    def blocks_flush(self) -> dict[str, Any]:
        try:
            count = len(self.diversion.blocks())
            self.diversion.flush_blocks()
        except KernelError as exc:
            self.counters.block_kernel_errors += 1
            return {"ok": False, "error": f"nft refused: {exc}"}
        self.counters.blocks_removed += count
        engine = self._tell_worker({"op": "unblock_all", "reason": "flush", "time": time.time()})
        return {"ok": True, "removed": count, "engine": engine}

    def _tell_worker(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Every worker's answer, merged (merge_stats); a worker that does not answer in time
        only misses the engine's side (the kernel is done, and a new worker adopts the
        kernel's blocks)."""
        replies = self._ask_workers(msg)
        if not replies:
            return {"ok": False, "error": "no worker"}
        return replies[0] if len(replies) == 1 else merge_stats(replies)

    def _ask_workers(self, msg: dict[str, Any], timeout: float = 2.0) -> list[dict[str, Any]]:
        replies = []
        for worker in list(self.workers):
            try:
                replies.append(worker.request(msg, timeout=timeout))
            except (TimeoutError, OSError, EOFError) as exc:
                replies.append({"ok": False, "error": str(exc)})
        return replies

    def flows(self, request: dict[str, Any]) -> dict[str, Any]:
        replies = self._ask_workers(request)
        if len(replies) == 1:
            return replies[0]
        return merge_flows(replies, int(request.get("top", 20)), str(request.get("sort", "bytes")))

    def alerts(self, since: int, limit: int) -> dict[str, Any]:
        return self._alert_feed.collect(self, since, limit)

    # ---- control socket ---------------------------------------------------------------------

    def _serve_control(self) -> None:
        path = Path(self.cfg.socket_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        try:
            gid = grp.getgrnam(SOCKET_GROUP).gr_gid
            os.chown(path, 0, gid)
            os.chmod(path, 0o660)
        except KeyError:
            os.chmod(path, 0o600)
        server.listen(16)
        self._server = server
        # Set up (table, worker, socket): keep only CAP_NET_ADMIN and CAP_NET_RAW. Before the
        # control thread starts: capabilities are per thread, and threads inherit them.
        drop_or_warn("supervisor", keep_capabilities(self.cfg))
        threading.Thread(target=self._accept_loop, name="control", daemon=True).start()

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self.stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                uid = peer_uid(conn)
                request = json.loads(_read_line(conn))
                reply = self._dispatch(request, uid)
            except Exception as exc:  # answer, never crash the daemon
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def _dispatch(self, request: dict[str, Any], uid: int) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return self.status()
        if op == "blocks_list":
            return self.blocks_list()
        if op == "flows":  # read-only: from every worker, merged
            fields = {k: v for k, v in request.items() if k in ("top", "sort", "filter", "group")}
            return self.flows({"op": op, **fields})
        if op == "alerts":
            return self.alerts(int(request.get("since") or 0), int(request.get("limit") or 50))
        if uid != 0:
            return {"ok": False, "error": f"'{op}' needs root (peer uid {uid})"}
        if op == "apply":
            return self.apply(request["main"], request["sources"], request.get("confirm"))
        if op == "confirm":
            return self.confirm()
        if op == "blocks_add":
            ttl = request.get("ttl")
            return self.blocks_add(
                str(request.get("addr", "")), float(ttl) if ttl is not None else None,
                request.get("reason"), bool(request.get("force")),
            )  # fmt: skip
        if op == "blocks_del":
            return self.blocks_del(str(request.get("addr", "")))
        if op == "blocks_flush":
            return self.blocks_flush()
        return {"ok": False, "error": f"unknown request {op!r}"}


def _counter_packets(counters: Any, comment: str) -> int:
    c = counters.get(comment) if isinstance(counters, dict) else None
    return int(c.packets) if c is not None else 0


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _read_line(conn: socket.socket, limit: int = 64 * 1024 * 1024) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ValueError("request too large")
    return bytes(buf)


def request(socket_path: str, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Client side of the control socket (ipsctl apply/confirm/status)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(json.dumps(message).encode() + b"\n")
        return json.loads(_read_line(s))


def run(cfg: DaemonConfig) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit status."""
    daemon = Daemon(cfg)

    def on_signal(signum: int, _frame: object) -> None:
        daemon.stopping.set()

    def on_hangup(_signum: int, _frame: object) -> None:
        daemon.reopen_logs.set()  # handled by the main loop: never block in a handler

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        daemon.start()
        daemon.run_forever()
    finally:
        daemon.stop()
    return 0
