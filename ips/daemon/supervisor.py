"""The supervisor: the daemon's main process (`ipsctl run`).

It installs the diversion (ips/kernel/diversion.py), starts one worker per queue
(ips/daemon/worker.py) and keeps them alive (a watchdog replaces a worker whose heartbeat
stops), serves the control socket (ips/control.py; the commands: ips/daemon/commands.py),
rolls back an unconfirmed apply (with a record and a watchdog that outlive it:
ips/daemon/rollback.py), and writes the manual blocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import ipaddress
import itertools
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ips.control import SOCKET_GROUP
from ips.core.addr import block_target, block_ttl, parse_mac
from ips.core.events import format_mac
from ips.daemon import commands
from ips.daemon.config import DaemonConfig, keep_capabilities
from ips.daemon.refresh import RefreshClock, refresh_tables
from ips.daemon.rollback import (
    PENDING,
    PendingApply,
    ProcessId,
    choose_at_start,
    end_watchdog,
    locked,
    read_record,
    remove_record,
    spawn_watchdog,
    stop_systemd_timer,
    systemd_timer,
    write_record,
)
from ips.daemon.socket_server import ControlServer
from ips.daemon.stats import AlertFeed, Counters, counter_packets, merge_flows, merge_stats
from ips.daemon.unjudged import QueueReading, UnjudgedAlert, UnjudgedLedger
from ips.daemon.worker import MANUAL, WORKER_STOP_TIMEOUT, BPFProgram, worker_main
from ips.kernel.blocks import daemon_run
from ips.kernel.diversion import Diversion, NftDiversion, held_sysctls
from ips.kernel.nft import KernelError
from ips.kernel.probe import read_queue_stats
from ips.policy.diagnostics import PolicyError
from ips.policy.model import ETHER_BAN_TABLE, Policy
from ips.policy.resolve import load_policy_collecting, load_policy_sources, read_text
from ips.privileges import drop_or_warn
from ips.sinks.base import Exporter
from ips.translate.nft import (
    BARE_ACK_CLEARED_COMMENT,
    BLOCK_TABLE,
    COPIED_COMMENT,
    DEFAULT_BLOCK_TIMEOUT,
    OFFLOADED_COMMENT,
    RuleCounter,
    SetElement,
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


def connected_broadcasts() -> list[str]:
    """The broadcast addresses of this network namespace's IPv4 networks (`blocks add`
    refuses them: never a source). Empty when they cannot be read."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            found = [
                (
                    msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS"),
                    msg["prefixlen"],
                    msg.get("IFA_BROADCAST"),
                )
                for msg in ipr.get_addr(family=socket.AF_INET)
            ]
    except Exception:  # no netlink: the other checks still apply
        return []
    return subnet_broadcasts(found)


def subnet_broadcasts(addresses: list[tuple[str | None, int, str | None]]) -> list[str]:
    """(address, prefix length, the interface's broadcast address or None) -> the broadcast
    addresses of those networks: the given ones, and the last address of every network that
    has one (/30 and wider)."""
    out: list[str] = []
    for addr, prefixlen, broadcast in addresses:
        if broadcast:
            out.append(str(broadcast))
        if addr and prefixlen <= 30:
            net = ipaddress.ip_network(f"{addr}/{prefixlen}", strict=False)
            out.append(str(net.broadcast_address))
    return list(dict.fromkeys(out))


UNJUDGED_CHECK_EVERY = 1.0  # seconds between two counts of the packets passed unjudged


class WorkerFailed(RuntimeError):
    """The worker could not start its packet source (no such interface, …): fatal at start."""


# A worker answers one request at a time, and a policy `load` takes as long as reading the
# policy: seconds for a table of a million entries. `status` waits this long for the worker
# to be free, then says "loading policy" for it, rather than stall behind the load.
STATUS_WAIT = 0.2
# How long a worker may take to load a policy: LOAD_TIMEOUT, and LOAD_SECONDS_PER_MB more for
# each MB of its files (policy, includes, table files). A 1,000,000-entry table (15 MB) loads
# in 2.5 to 6 s on a busy two-core machine; it is given 40 s.
LOAD_TIMEOUT = 10.0
LOAD_SECONDS_PER_MB = 2.0
BUSY_WITH = {"load": "loading policy"}


def load_timeout(sources: dict[str, str]) -> float:
    """The time a worker is given to load the policy made of these files."""
    size = sum(len(text) for text in sources.values())
    return LOAD_TIMEOUT + LOAD_SECONDS_PER_MB * size / 1_000_000


class WorkerBusy(TimeoutError):
    """The worker is still answering another request (a policy load, most likely)."""


class WorkerHandle:
    """The supervisor's side of one worker process."""

    def __init__(
        self,
        cfg: DaemonConfig,
        main: str,
        sources: dict[str, str],
        never_block: tuple[str, ...] = (),
        bpf_program: BPFProgram | None = None,
        judged_cell: Any = None,
    ) -> None:
        ctx = mp.get_context("fork")
        self.queue = cfg.queue
        self.heartbeat = ctx.Value("d", time.monotonic(), lock=False)
        self.conn, child = ctx.Pipe()
        self.lock = threading.Lock()
        self.serving: str | None = None  # the op of the request being answered
        self._ids = itertools.count(1)
        self.process = ctx.Process(
            target=worker_main,
            args=(
                child,
                (self.conn,),
                os.getpid(),
                self.heartbeat,
                cfg,
                main,
                sources,
                never_block,
                bpf_program,
                judged_cell,
            ),
            name=f"ipsctl-tap-{cfg.iface}" if cfg.mode == "tap" else f"ipsctl-worker-q{cfg.queue}",
            daemon=True,
        )
        self.process.start()
        child.close()
        if not self.conn.poll(5 + load_timeout(sources)):  # the worker loads the policy first
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

    def request(
        self, msg: dict[str, Any], timeout: float = 10.0, wait: float | None = None
    ) -> dict[str, Any]:
        """Send a request and wait for its answer. Requests carry an id: the late answer to
        one that timed out is skipped, not taken for the answer to the next.

        wait: how long to wait for the worker to finish the request before (None: as long
        as it takes); then WorkerBusy says what it is busy with."""
        if not self.lock.acquire(timeout=-1 if wait is None else wait):
            busy = self.serving or "another request"
            raise WorkerBusy(BUSY_WITH.get(busy, f"busy with {busy}"))
        try:
            self.serving = str(msg.get("op"))
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
        finally:
            self.serving = None
            self.lock.release()

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
        self.table_refresh = RefreshClock()  # `table … file … refresh 1h` (daemon/refresh.py)
        self.main = ""
        self.sources: dict[str, str] = {}
        self.loaded_at = 0.0
        self.previous: tuple[str, dict[str, str]] | None = None
        self.confirm_deadline: float | None = None
        # The unconfirmed apply's record and its watchdog (ips/daemon/rollback.py), and what
        # status says of the last apply that was not confirmed.
        self.pending_file = cfg.pending_file
        self.rollback_watchdog: ProcessId | None = None
        self.unconfirmed: dict[str, Any] | None = None
        self.workers: list[WorkerHandle] = []  # worker i reads queue cfg.queue + i
        self._alert_feed = AlertFeed()
        self.diversion: Diversion
        if cfg.backend == "divert":  # no nftables: nothing in the kernel, blocks in the worker
            from ips.io.divert import UserspaceDiversion

            self.diversion = UserspaceDiversion(
                cfg.hooks, cfg.fail_open, cfg.bans_file, lambda: self.worker
            )
        else:
            self.diversion = NftDiversion(
                queue=cfg.queue,
                hooks=cfg.hooks,
                fail_open=cfg.fail_open,
                tap=cfg.mode == "tap",
                queues=cfg.queues,
            )
        self.bpf_program: BPFProgram | None = None
        self._control: ControlServer | None = None
        self.never_block: tuple[str, ...] = tuple(cfg.never_block)
        self.installed = False
        self._metrics: Exporter | None = None  # the Prometheus endpoint
        self.run = daemon_run(os.getpid(), self.counters.started)  # written with saved blocks
        # The blocks restored from the state file: where they came from, and each one's
        # comment then (a block renewed since is no longer the restored one).
        self.restored_from: dict[str, Any] | None = None
        self._restored: dict[str, str | None] = {}
        # Packets passed without inspection (ips/daemon/unjudged.py): one shared count of
        # judged packets per queue, kept over worker replacements.
        self._judged_cells: dict[int, Any] = {}
        self._unjudged = UnjudgedLedger()
        self._unjudged_lock = threading.Lock()
        self._unjudged_next = 0.0

    # ---- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        policy, sources = load_policy_collecting(self.cfg.policy_path)  # PolicyError -> caller
        main = str(Path(self.cfg.policy_path).resolve())
        policy, main, sources = self._unconfirmed_at_start(policy, main, sources)
        if self.cfg.mode == "tap" and self.cfg.bpf:
            from ips.io.tap import compile_bpf

            self.bpf_program = compile_bpf(self.cfg.bpf, self.cfg.iface or "")  # TapError
        self.diversion.remove_stale()  # a killed daemon's diversion (its table is kept)
        self.diversion.install(policy)  # over a killed daemon's table: blocks kept
        self.installed = True
        self._restore_blocks()  # those a clean stop saved
        self._set_policy(policy, main, sources)
        self.workers = [self._new_worker(i) for i in range(self.cfg.queues)]  # adopt blocks
        self._serve_control()
        if self.cfg.metrics is not None:
            from ips.sinks.prometheus import start_metrics

            self._metrics = start_metrics(self.cfg.metrics, self.status)

    def _unconfirmed_at_start(
        self, policy: Policy, main: str, sources: dict[str, str]
    ) -> tuple[Policy, str, dict[str, str]]:
        """A record of an apply a previous daemon did not see confirmed: never start with that
        policy (rollback.choose_at_start), and say so (status `policy.unconfirmed`, stderr)."""
        if not os.path.exists(self.pending_file):
            return policy, main, sources
        try:
            with locked(self.pending_file):
                record = read_record(self.pending_file)
                choice = choose_at_start(record, policy.digest, time.time())
                if record is None:
                    return policy, main, sources
                end_watchdog(record.watchdog)  # this start settles it
                stop_systemd_timer(record.timer)
                if choice.keep_record:
                    write_record(self.pending_file, record)
                else:
                    remove_record(self.pending_file)
        except OSError as exc:
            print(f"ipsctl: the pending-apply record: {exc}", file=sys.stderr)
            return policy, main, sources
        self.unconfirmed = choice.note
        if choice.use_previous:
            policy = load_policy_sources(record.previous_main, record.previous_sources)
            main, sources = record.previous_main, record.previous_sources
        print(
            f"ipsctl: {record.note()['text']}; starting with "
            f"{'the previous policy, ' if choice.use_previous else ''}{main} "
            f"({policy.digest[:16]})",
            file=sys.stderr,
            flush=True,
        )
        return policy, main, sources

    def _new_worker(self, index: int = 0) -> WorkerHandle:
        # The host's addresses are read again for every worker: they may have changed.
        self.never_block = tuple(dict.fromkeys((*own_addresses(), *self.cfg.never_block)))
        cfg = dataclasses.replace(
            self.cfg, queue=self.cfg.queue + index, offload_copies=self._copies()
        )
        cell = self._judged_cells.get(index)
        if cell is None:
            cell = self._judged_cells[index] = mp.get_context("fork").Value("Q", 0, lock=False)
        return WorkerHandle(cfg, self.main, self.sources, self.never_block, self.bpf_program, cell)

    def _copies(self) -> bool:
        """Whether workers read offload's NFLOG copies: inline over NFQUEUE, on a kernel that
        has NFLOG (else the diversion's rules queue a connection's first data instead)."""
        return self.cfg.offloading and self.diversion.copies

    def _restore_blocks(self) -> None:
        from ips.kernel.blocks import read_saved_blocks, restore_blocks, restore_mac_blocks

        saved = read_saved_blocks(self.cfg.state_file, time.time())
        if saved.elements or saved.macs:
            restored = restore_blocks(self.diversion.nft, saved.elements)
            restored_macs = restore_mac_blocks(self.diversion.nft, saved.macs)
            self.counters.blocks_restored += restored + restored_macs
            self._restored = {e.addr: e.comment for e in saved.elements + saved.macs}
            self.restored_from = {
                "file": self.cfg.state_file,
                "run": saved.run,
                "saved_at": saved.saved_at,
                "blocks": restored,
                "mac_blocks": restored_macs,
            }

    def _save_blocks(self) -> None:
        """Before our table goes: the blocks to the state file (with their expiry times)."""
        from ips.kernel.blocks import save_blocks

        try:
            blocks = self.diversion.blocks()
            macs = self.diversion.mac_blocks()
            if blocks or macs or self.installed:
                self.counters.blocks_saved = save_blocks(
                    self.cfg.state_file, blocks, time.time(), self.run, macs
                )
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
            self._refresh_tables()

    def _refresh_tables(self) -> None:
        """Reputation lists due are read again; a changed one that resolves is swapped in
        as an apply would, a refused one keeps the old set (daemon/refresh.py)."""
        with self.lock:
            policy = self.policy
            if policy is None or not self.main:
                return
            due = self.table_refresh.due_tables(policy, time.monotonic())
            if not due or self.confirm_deadline is not None:
                return  # an unconfirmed apply is settled first: its rollback must be exact
            result = refresh_tables(
                due, self.main, self.sources, read_text, self.table_refresh, time.time()
            )
            for problem in result.problems:
                print(f"ipsctl: {problem}", file=sys.stderr)
            if result.policy is None or result.sources is None:
                self.counters.table_refreshes_refused += bool(result.problems)
                return
            try:
                self._swap(result.policy, self.main, result.sources)
            except (KernelError, RuntimeError, OSError) as exc:
                self.counters.table_refreshes_refused += 1
                print(f"ipsctl: a refreshed table could not be applied: {exc}", file=sys.stderr)
                return
            self.counters.table_refreshes += 1

    def stop(self) -> None:
        self.stopping.set()
        if self._metrics is not None:
            self._metrics.close()
        if self._control is not None:
            self._control.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.cfg.socket_path)
        for worker in self.workers:  # all at once: each writes its flows' records meanwhile
            worker.request_stop()
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT  # one for all: inside TimeoutStopSec
        for worker in self.workers:
            worker.wait_stopped(max(0.0, deadline - time.monotonic()))
        self._save_blocks()
        if self.confirm_deadline is not None:  # the unconfirmed policy goes with the table
            self._settle_unconfirmed("stop")
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
            deadline = time.time() + confirm if confirm else None
            if deadline is not None:  # before the kernel changes: see ips/daemon/rollback.py
                self._record_unconfirmed(policy, main, deadline)
            self._swap(policy, main, sources)
            self.counters.applies += 1
            if deadline is not None:
                # keep the oldest confirmed policy if applies are stacked unconfirmed
                if self.confirm_deadline is None:
                    self.previous = previous
                self.confirm_deadline = deadline
            else:
                if self.confirm_deadline is not None or os.path.exists(self.pending_file):
                    self._settle_unconfirmed(None)  # applied for good: nothing to roll back
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
            reply = worker.request(
                {"op": "load", "main": main, "sources": sources}, timeout=load_timeout(sources)
            )
            if not reply.get("ok"):
                raise RuntimeError(f"worker refused the policy: {reply}")
        if offloading:
            self.diversion.update(policy)
        self._set_policy(policy, main, sources)

    def _record_unconfirmed(self, policy: Policy, main: str, deadline: float) -> None:
        """Write (or, stacked on an unconfirmed apply, update) the pending-apply record, and
        make sure its watchdog runs. Its failure refuses the apply: a --confirm that could
        not survive the daemon would promise what it cannot keep."""
        assert self.policy is not None
        now = time.time()
        with locked(self.pending_file):
            record = read_record(self.pending_file)
            if record is not None and record.state == PENDING and self.confirm_deadline:
                stop_systemd_timer(record.timer)  # one at the new deadline instead
                record.digest, record.main = policy.digest, main
                record.applied_at, record.deadline = now, deadline
                record.unconfirmed.append(policy.digest)
            else:
                plan = self.diversion.kernel_plan(self.policy)
                record = PendingApply(
                    digest=policy.digest,
                    main=main,
                    applied_at=now,
                    deadline=deadline,
                    previous_main=self.main,
                    previous_digest=self.policy.digest,
                    previous_sources=self.sources,
                    plan=None if plan is None else dataclasses.asdict(plan),
                    sysctls={} if plan is None else held_sysctls(),
                    unconfirmed=[policy.digest],
                    daemon=ProcessId.of(os.getpid()),
                )
            record.timer = systemd_timer(self.pending_file, deadline)
            watchdog = self.rollback_watchdog
            if watchdog is None or not watchdog.running():
                record.watchdog = None
                write_record(self.pending_file, record)  # the watchdog starts by reading it
                watchdog = self.rollback_watchdog = spawn_watchdog(self.pending_file)
            record.watchdog = watchdog
            write_record(self.pending_file, record)

    def _settle_unconfirmed(self, rolled_back_by: str | None) -> None:
        """The unconfirmed apply is over: confirmed (None: the record goes) or rolled back
        (by whom: the record says so, for the next start). Its watchdog ends either way."""
        try:
            with locked(self.pending_file):
                record = read_record(self.pending_file)
                if record is not None:
                    stop_systemd_timer(record.timer)
                if rolled_back_by is None or record is None:
                    remove_record(self.pending_file)
                else:
                    record.roll_back(rolled_back_by, time.time())
                    write_record(self.pending_file, record)
                    self.unconfirmed = record.note()
                end_watchdog(self.rollback_watchdog)
        except OSError as exc:
            print(f"ipsctl: the pending-apply record: {exc}", file=sys.stderr)
        self.rollback_watchdog = None

    def confirm(self) -> dict[str, Any]:
        with self.lock:
            if self.confirm_deadline is None:
                return {"ok": False, "error": "nothing to confirm"}
            self._settle_unconfirmed(None)
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
            self._settle_unconfirmed("daemon")
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
        replies = self._ask_workers({"op": "stats"}, wait=STATUS_WAIT)
        worker = merge_stats(replies) if replies else {}
        queues = read_queue_stats()
        q = queues.get(self.cfg.queue) if self.cfg.mode != "tap" else None
        per_queue = [
            {
                "queue": w.queue,
                "pid": w.pid,
                "packets": r.get("packets"),
                "offloaded": r.get("offloaded"),
                "error": r.get("error"),
                "copies": ((r.get("nfq_client") or {}).get("copies") or {}).get("received"),
                "kernel": dataclasses.asdict(queues[w.queue]) if w.queue in queues else None,
            }
            for w, r in zip(self.workers, replies, strict=False)
        ]
        policy = self.policy
        counters = self.diversion.counters()
        return {
            "ok": True,
            "pid": os.getpid(),
            "run": self.run["id"],
            "uptime": round(now - self.counters.started, 1),
            "policy": {
                "file": self.main,
                "digest": policy.digest if policy else None,
                "age": round(now - self.loaded_at, 1),
                "rules": len(policy.rules) if policy else 0,
                "kernel_rules": self.diversion.kernel_rules,
                "confirm_deadline": self.confirm_deadline,
                "unconfirmed": self.unconfirmed,  # the last apply that was not confirmed
            },
            "diversion": self.diversion.describe(),
            "kernel_hits": self.diversion.kernel_hits(counters),
            "queue": dataclasses.asdict(q) if q else None,
            "worker": {"pid": self.worker.pid if self.worker else None, **worker},
            "workers": per_queue,
            "counters": self.counters.__dict__,
            "tables": self.table_refresh.as_dict(),  # reputation lists read again
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
                # first packets after a handshake's bare ACKs, sent on to the queue (the
                # inspector still read the connection)
                "after_bare_acks": counter_packets(counters, BARE_ACK_CLEARED_COMMENT),
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
        mine = [
            queues[q]
            for q in range(self.cfg.queue, self.cfg.queue + self.cfg.queues)
            if q in queues
        ]
        judged = sum(int(cell.value) for cell in list(self._judged_cells.values()))
        reading = QueueReading(
            offered,
            judged,
            waiting=sum(q.queue_total for q in mine),
            queue_dropped=sum(q.queue_dropped for q in mine),
            user_dropped=sum(q.user_dropped for q in mine),
        )
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

    def _report_unjudged(self, alert: UnjudgedAlert, snapshot: dict[str, Any], now: float) -> None:
        """The alert and a `stats` event to the EVE file (written by the supervisor: the
        workers are busy with the flood), and a line to the journal."""
        print(f"ipsctl: {alert.signature} ({alert.total} since start)", file=sys.stderr, flush=True)
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
            eve.write(
                stats_record(now, now - self.counters.started, {"ipsctl": {"unjudged": snapshot}})
            )
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
            "restored_from": self.restored_from,  # the state file's run, None: nothing restored
            "adopted": w.get("adopted"),
            "in_engine": w.get("engine"),
            "kernel_errors": int(w.get("kernel_errors", 0)) + c.block_kernel_errors,
            "last_error": w.get("last_error") or "",
            "latency": w.get("latency") or {},
        }

    # ---- blocks (ipsctl blocks …) -----------------------------------------------------------

    def blocks_list(self) -> dict[str, Any]:
        """The kernel's blocks: addresses (BLOCK_TABLE), then MACs (ETHER_BAN_TABLE)."""
        now = time.time()
        rows: list[dict[str, Any]] = []
        restored = getattr(self, "_restored", {})
        origin = getattr(self, "restored_from", None) or {}

        def came_from(e: SetElement) -> dict[str, Any] | None:
            """Restored at start (and not renewed since): the run that saved it, if known."""
            if e.addr in restored and restored[e.addr] == e.comment:
                return {
                    "state_file": origin.get("file"),
                    "saved_at": origin.get("saved_at"),
                    "run": (origin.get("run") or {}).get("id"),
                }
            return None

        for e in self.diversion.blocks():
            rows.append(_block_row(e, BLOCK_TABLE, now, came_from(e)))
        rows.sort(key=lambda r: ipaddress.ip_address(r["addr"]).packed)
        macs = [
            _block_row(e, ETHER_BAN_TABLE, now, came_from(e)) for e in self.diversion.mac_blocks()
        ]
        macs.sort(key=lambda r: str(r["addr"]))
        return {"ok": True, "table": BLOCK_TABLE, "blocks": rows + macs}

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
        # The same checks as the CLI's (another client may speak the protocol), and this
        # host's subnet broadcasts, which only the daemon's side knows.
        try:
            text = block_target(addr, connected_broadcasts())
            whole = block_ttl(ttl)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        cidr = self._never_blocked(text)
        if cidr and not force:
            error = (
                f"{text} is never blocked (it is in {cidr}: this host's own addresses "
                "and --never-block); --force blocks it anyway"
            )
            return {"ok": False, "error": error}
        if whole is None:  # the block table's own timeout; a manual block always ends
            whole = block_ttl(block_table_spec(self.policy).timeout or DEFAULT_BLOCK_TIMEOUT)
        assert whole is not None
        reason = reason or MANUAL
        now = time.time()
        try:
            self.diversion.block(text, whole, block_comment(MANUAL, 0, reason))
        except KernelError as exc:
            self.counters.block_kernel_errors += 1
            return {"ok": False, "error": f"nft refused the block: {exc}"}
        self.counters.blocks_added += 1
        msg = {
            "op": "block",
            "addr": text,
            "ttl": whole,
            "reason": reason,
            "time": now,
            "force": bool(cidr),
        }
        engine = self._tell_worker(msg)
        return {
            "ok": True,
            "addr": text,
            "table": BLOCK_TABLE,
            "ttl": whole,
            "reason": reason,
            "forced": bool(cidr),
            "engine": engine,
            "asked": {"addr": addr, "ttl": ttl},
        }

    def blocks_del(self, addr: str) -> dict[str, Any]:
        mac = parse_mac(addr)
        if mac is not None:
            return self._mac_unblock(format_mac(mac))
        try:
            ip = ipaddress.ip_address(addr)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # as blocks_add wrote it
            text = str(ip)
        except ValueError:
            return {"ok": False, "error": f"not an IP or MAC address: {addr!r}"}
        try:
            removed = self.diversion.unblock(text)
        except KernelError as exc:
            self.counters.block_kernel_errors += 1
            return {"ok": False, "error": f"nft refused: {exc}"}
        engine = self._tell_worker(
            {"op": "unblock", "addr": text, "reason": MANUAL, "time": time.time()}
        )
        if not removed and not engine.get("count"):
            return {"ok": False, "error": f"{text} is not blocked"}
        self.counters.blocks_removed += int(removed)
        return {"ok": True, "addr": text, "removed": removed, "engine": engine}

    def _mac_unblock(self, mac: str) -> dict[str, Any]:
        """`blocks del` of a MAC banned for forged packets: out of the kernel's set, and
        forgotten by the engine (which would otherwise not ban it again before the old ban's
        end)."""
        try:
            removed = self.diversion.unblock_mac(mac)
        except KernelError as exc:
            self.counters.block_kernel_errors += 1
            return {"ok": False, "error": f"nft refused: {exc}"}
        engine = self._tell_worker({"op": "unblock_mac", "mac": mac, "time": time.time()})
        if not removed and not engine.get("count"):
            return {"ok": False, "error": f"{mac} is not blocked"}
        self.counters.blocks_removed += int(removed)
        return {
            "ok": True,
            "addr": mac,
            "table": ETHER_BAN_TABLE,
            "removed": removed,
            "engine": engine,
        }

    def blocks_flush(self) -> dict[str, Any]:
        try:
            count = len(self.diversion.blocks()) + len(self.diversion.mac_blocks())
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

    def _ask_workers(
        self, msg: dict[str, Any], timeout: float = 2.0, wait: float | None = None
    ) -> list[dict[str, Any]]:
        replies = []
        for worker in list(self.workers):
            try:
                replies.append(worker.request(msg, timeout=timeout, wait=wait))
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
        # Set up (table, worker, socket): keep only CAP_NET_ADMIN and CAP_NET_RAW. Before the
        # control threads start: capabilities are per thread, and threads inherit them.
        drop_or_warn("supervisor", keep_capabilities(self.cfg))
        self._control = ControlServer(server, self._dispatch)
        self._control.start()

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


def _block_row(
    e: SetElement, table: str, now: float, restored_from: dict[str, Any] | None
) -> dict[str, Any]:
    """A row of `blocks list`: a member of a block set, with who blocked it and why (its
    comment) and the time left in the kernel."""
    detector, offense, reason = parse_block_comment(e.comment)
    return {
        "addr": e.addr,
        "table": table,
        "expires_in": e.expires,  # seconds left (the kernel's own count)
        "timeout": e.timeout,
        "expires_at": None if e.expires is None else round(now + e.expires, 3),
        "detector": detector,
        "offense": offense,
        "reason": reason,
        "restored_from": restored_from,
    }
