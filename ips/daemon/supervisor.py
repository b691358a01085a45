"""The supervisor: the daemon's main process (`ipsctl run`).

It installs the diversion (ips/kernel/diversion.py), starts one worker per queue
(ips/daemon/worker.py) and keeps them alive (a watchdog replaces a worker whose heartbeat
stops), serves the control socket (ips/control.py; the commands: ips/daemon/commands.py),
rolls back an unconfirmed apply, and writes the manual blocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import ipaddress
import itertools
import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ips.control import SOCKET_GROUP, encode, peer_uid, read_line
from ips.daemon import commands
from ips.daemon.config import DaemonConfig, keep_capabilities
from ips.daemon.stats import AlertFeed, Counters, counter_packets, merge_flows, merge_stats
from ips.daemon.unjudged import QueueReading, UnjudgedAlert, UnjudgedLedger
from ips.daemon.worker import MANUAL, WORKER_STOP_TIMEOUT, BPFProgram, worker_main
from ips.kernel.diversion import Diversion, NftDiversion
from ips.kernel.nft import KernelError
from ips.kernel.probe import read_queue_stats
from ips.policy.diagnostics import PolicyError
from ips.policy.model import Policy
from ips.policy.resolve import load_policy_collecting, load_policy_sources
from ips.privileges import drop_or_warn
from ips.sinks.base import Exporter
from ips.translate.nft import (
    BLOCK_TABLE,
    COPIED_COMMENT,
    DEFAULT_BLOCK_TIMEOUT,
    OFFLOADED_COMMENT,
    RuleCounter,
    block_comment,
    block_table_spec,
    parse_block_comment,
)


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


UNJUDGED_CHECK_EVERY = 1.0  # seconds between two counts of the packets passed unjudged


class WorkerFailed(RuntimeError):
    """The worker could not start its packet source (no such interface, …): fatal at start."""


class WorkerHandle:
    """The supervisor's side of one worker process."""

    def __init__(
        self, cfg: DaemonConfig, main: str, sources: dict[str, str],
        never_block: tuple[str, ...] = (),
        bpf_program: BPFProgram | None = None,
        judged_cell: Any = None,
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
                never_block, bpf_program, judged_cell,
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
    """The supervisor (see the module's docstring); commands.Controlled for the socket."""

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
        self.diversion: Diversion
        if cfg.backend == "divert":  # no nftables: nothing in the kernel, blocks in the worker
            from ips.io.divert import UserspaceDiversion

            self.diversion = UserspaceDiversion(cfg.hooks, cfg.fail_open, cfg.bans_file,
                                                lambda: self.worker)  # fmt: skip
        else:
            self.diversion = NftDiversion(
                queue=cfg.queue, hooks=cfg.hooks, fail_open=cfg.fail_open,
                tap=cfg.mode == "tap", queues=cfg.queues,
            )  # fmt: skip
        self.bpf_program: BPFProgram | None = None
        self._server: socket.socket | None = None
        self.never_block: tuple[str, ...] = tuple(cfg.never_block)
        self.installed = False
        self._metrics: Exporter | None = None  # the Prometheus endpoint
        # Packets passed without inspection (ips/daemon/unjudged.py): one shared count of
        # judged packets per queue, kept over worker replacements.
        self._judged_cells: dict[int, Any] = {}
        self._unjudged = UnjudgedLedger()
        self._unjudged_lock = threading.Lock()
        self._unjudged_next = 0.0

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
        cell = self._judged_cells.get(index)
        if cell is None:
            cell = self._judged_cells[index] = mp.get_context("fork").Value("Q", 0, lock=False)
        return WorkerHandle(cfg, self.main, self.sources, self.never_block, self.bpf_program,
                            cell)  # fmt: skip

    def _copies(self) -> bool:
        """Whether workers read offload's NFLOG copies: inline over NFQUEUE, on a kernel that
        has NFLOG (else the diversion's rules queue a connection's first data instead)."""
        return self.cfg.offloading and self.diversion.copies

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
            self._watch_unjudged()

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
        offloading = self.cfg.offloading
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
                "enabled": bool(policy and policy.offload) and self.cfg.offloading,
                "flows": worker.get("offloaded", 0),  # flows the engine handed to the kernel
                # their later packets, accepted by the kernel without the queue
                "kernel_packets": counter_packets(counters, OFFLOADED_COMMENT),
                # first packets after a handshake passed by the kernel, a copy to the worker
                "copied": counter_packets(counters, COPIED_COMMENT),
                "generation": self.diversion.offload_generation,
            },
            "tap": worker.get("tap"),
            "sinks": worker.get("sinks") or {},
            "unjudged": self._read_unjudged(time.time(), counters),
        }

    # ---- packets passed without inspection (fail-open) ---------------------------------------

    def _read_unjudged(
        self, now: float, counters: dict[str, RuleCounter] | None = None
    ) -> dict[str, Any] | None:
        """A reading of the queue side into the ledger: the kernel's count of packets sent
        to the queues first, the queues' /proc line next, the workers' judged counts last
        (ips/daemon/unjudged.py says why this order). None: nothing queues (tap, divert)."""
        if self.cfg.mode == "tap":
            return None
        offered = self.diversion.offered(counters)
        if offered is None:
            return None
        queues = read_queue_stats()
        mine = [queues[q] for q in range(self.cfg.queue, self.cfg.queue + self.cfg.queues)
                if q in queues]  # fmt: skip
        judged = sum(int(cell.value) for cell in list(self._judged_cells.values()))
        reading = QueueReading(
            offered, judged, waiting=sum(q.queue_total for q in mine),
            queue_dropped=sum(q.queue_dropped for q in mine),
            user_dropped=sum(q.user_dropped for q in mine),
        )  # fmt: skip
        with self._unjudged_lock:
            self._unjudged.update(reading, now)
            return {**self._unjudged.as_dict(), "fail_open": self.cfg.fail_open}

    def _watch_unjudged(self) -> None:
        """Once a second: the count, and the alert when packets start passing unjudged."""
        now = time.time()
        if now < self._unjudged_next:
            return
        self._unjudged_next = now + UNJUDGED_CHECK_EVERY
        try:
            snapshot = self._read_unjudged(now)
        except (KernelError, OSError) as exc:
            print(f"ipsctl: cannot count unjudged packets: {exc}", file=sys.stderr)
            return
        if snapshot is None:
            return
        enabled = self.policy.fail_open_alert if self.policy is not None else True
        with self._unjudged_lock:
            alert = self._unjudged.due_alert(now, enabled)
        if alert is not None:
            self._report_unjudged(alert, snapshot, now)

    def _report_unjudged(self, alert: UnjudgedAlert, snapshot: dict[str, Any],
                         now: float) -> None:  # fmt: skip
        """The alert and a `stats` event to the EVE file (written by the supervisor: the
        workers are busy with the flood), and a line to the journal."""
        print(f"ipsctl: {alert.signature} ({alert.total} since start)", file=sys.stderr,
              flush=True)  # fmt: skip
        if not self.cfg.eve_path:
            return
        from ips.sinks.eve import EveWriter, stats_record, unjudged_alert_record
        from ips.sinks.logfile import RotatingLog

        # Opened for these two lines and closed: alerts are rare, and a file kept open would
        # miss logrotate's move (the workers reopen theirs on SIGHUP).
        try:
            log = RotatingLog(self.cfg.eve_path, self.cfg.eve_max_bytes, self.cfg.eve_keep)
        except OSError as exc:
            print(f"ipsctl: cannot write the unjudged-packets alert: {exc}", file=sys.stderr)
            return
        try:
            eve = EveWriter(log=log)
            eve.write(unjudged_alert_record(alert, snapshot, now))
            eve.write(stats_record(now, now - self.counters.started,
                                   {"ipsctl": {"unjudged": snapshot}}))  # fmt: skip
        finally:
            log.close()

    def _block_summary(
        self, worker: dict[str, Any], counters: dict[str, RuleCounter]
    ) -> dict[str, Any]:
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
        return self._alert_feed.collect(self.workers, since, limit)

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
                request = json.loads(read_line(conn))
                reply = self._dispatch(request, uid)
            except Exception as exc:  # answer, never crash the daemon
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(encode(reply))

    def _dispatch(self, request: dict[str, Any], uid: int) -> dict[str, Any]:
        return commands.dispatch(self, request, uid)


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
