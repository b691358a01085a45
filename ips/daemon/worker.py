"""A worker: one child process of the supervisor per queue (or the tap's one), running the
engine over the packets of its adapter.

    set_up()     (after the fork) signals, capabilities, the policy and the engine, the sinks,
                 the adapter with the blocks the kernel (or the ban file) holds; then bind
    Worker.loop  wait on the adapter's fd(s) and the supervisor's pipe: packets, control
                 messages (WORKER_COMMANDS), the engine's tick, EVE `stats` events
    tear_down()  release the queue first, then end the open flows, then close the sinks

A worker whose supervisor is gone sees its pipe close and exits (PR_SET_PDEATHSIG kills it
even if it never looks): the kernel then applies the queue's fail mode.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ips.core.addr import parse_mac
from ips.core.events import Effect
from ips.daemon.config import DaemonConfig, keep_capabilities
from ips.daemon.stats import detector_stats, engine_blocks, eve_stats, rule_hits
from ips.engine import Engine
from ips.heap import collector_stats, settle, tune_collector
from ips.io.adapter import PacketAdapter
from ips.policy.resolve import load_policy_sources
from ips.privileges import drop_or_warn
from ips.sinks.base import Sink
from ips.translate.nft import BLOCK_TABLE

if TYPE_CHECKING:
    from ips.geo.enrich import Enricher
    from ips.geo.rdns import ReverseDns
    from ips.io.conntrack import OffloadedVolumes
    from ips.kernel.neighbours import TableWatch
    from ips.policy.model import Policy
    from ips.sinks.eve import EveWriter
    from ips.sinks.logfile import RotatingLog
    from ips.sinks.meter import PacketMeter, RecentAlerts
    from ips.sinks.syslog import SyslogSink
    from ips.sinks.webhook import Webhook
    from ips.store.writer import ProcessStoreSink

TICK_EVERY = 1.0
HEARTBEAT_EVERY = 0.25
# Conntrack's DESTROY events (offloaded flows' final counts) are read at most this often:
# each read is a return to this loop's Python from the compiled wait, and with one wake-up
# per event a gateway answering short connections paid one for most of them, often right
# between a connection's queued packets (a SYN reusing a closed connection's tuple makes
# conntrack announce the old entry's end as it queues the SYN). The events wait in the
# socket's buffer meanwhile (4 MiB: thousands of them), and a flow record waits for its
# DESTROY up to HOLD_SECONDS (ips/io/conntrack.py), far longer.
VOLUMES_READ_EVERY = 0.1
# Seconds a stopping worker may spend writing the flow records of the flows still open
# (reason `shutdown`), and seconds the supervisor waits for a worker to stop: both well inside
# the unit's TimeoutStopSec (10 s), which must leave time to take the diversion out.
SHUTDOWN_RECORDS_BUDGET = 3.0
WORKER_STOP_TIMEOUT = SHUTDOWN_RECORDS_BUDGET + 3.0
STORE_CLOSE_TIMEOUT = 2.0  # seconds the store sink may take to write its queue at stop
SHUTDOWN_RECORDS_CHUNK = 1024  # records handed to the sinks between looks at the clock
MANUAL = "manual"  # the detector name of blocks made with `ipsctl blocks add`
BPFProgram = list[tuple[int, int, int, int]]


def make_engine(policy: Any, max_flows: int, never_block: Iterable[str], shards: int = 1) -> Engine:
    """An Engine, with never_block when this engine version takes it."""
    import inspect

    if "never_block" in inspect.signature(Engine).parameters:
        return Engine(policy, max_flows=max_flows, never_block=tuple(never_block), shards=shards)
    return Engine(policy, max_flows=max_flows)


@dataclass
class WorkerSinks:
    """Where the worker's events go (eve, alerts, webhook: each a Sink, in that order after
    the recent alerts), the files and sockets behind them (log, syslog), and the meter
    around engine.handle (bytes judged, latency samples)."""

    eve: EveWriter | None = None
    log: RotatingLog | None = None
    syslog: SyslogSink | None = None
    alerts: RecentAlerts | None = None
    webhook: Webhook | None = None
    meter: PacketMeter | None = None
    store: ProcessStoreSink | None = None

    def sinks(self) -> list[Sink]:
        return [s for s in (self.alerts, self.eve, self.webhook, self.store) if s is not None]

    def outputs(self) -> dict[str, object]:
        """status `sinks`: the counters of the EVE file, the syslog socket and the store."""
        named = {"eve": self.log, "syslog": self.syslog, "store": self.store}
        return {name: out.stats() for name, out in named.items() if out}

    def reopen(self) -> bool:
        """SIGHUP (logrotate): reopen the EVE file. Whether there is one."""
        if self.log is None:
            return False
        self.log.reopen()
        return True

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.close()
        if self.store is not None:
            # Inside WORKER_STOP_TIMEOUT: the supervisor stops waiting for the worker then.
            self.store.close(timeout=STORE_CLOSE_TIMEOUT)
        if self.log is not None:
            self.log.close()
        if self.syslog is not None:
            self.syslog.close()


class PeerFields:
    """Who is on the other end, for the worker's EVE records, recent alerts and `flows`
    (ips/geo/enrich.py): the geo data the policy names (`set geo-dir`, `set geo-site`, else
    $IPSCTL_GEO_DIR or the default), opened again with each policy, and reverse DNS when
    `ipsctl run --reverse-dns` or `set reverse-dns on` asks for it (its threads and cache
    kept across policies). Missing data is no error here: the fields are absent and status
    says what is missing."""

    def __init__(self, reverse_dns: bool = False) -> None:
        self.forced_rdns = reverse_dns
        self.enrich: Enricher | None = None
        self._rdns: ReverseDns | None = None

    def load(self, policy: Policy) -> Enricher:
        from ips.geo.enrich import open_enricher
        from ips.geo.rdns import ReverseDns

        want = self.forced_rdns or str(policy.option("reverse-dns")) == "on"
        if want and self._rdns is None:
            self._rdns = ReverseDns().start()
        elif not want and self._rdns is not None:
            self._rdns.close()
            self._rdns = None
        old = self.enrich
        self.enrich = open_enricher(policy.geo_dir or None, policy.geo_sites, rdns=self._rdns)
        if old is not None and old.geo is not None:
            old.geo.close()
        if self.enrich.problem and (old is None or old.problem != self.enrich.problem):
            print(f"ipsctl worker: {self.enrich.problem}", file=sys.stderr, flush=True)
        return self.enrich

    def status(self) -> dict[str, Any] | None:
        return self.enrich.status() if self.enrich is not None else None

    def close(self) -> None:
        if self.enrich is not None:
            self.enrich.close()
        elif self._rdns is not None:
            self._rdns.close()


def open_sinks(
    cfg: DaemonConfig,
    engine: Engine,
    passive: bool,
    blocks_enforced: bool,
    peers: PeerFields | None = None,
) -> WorkerSinks:
    from ips.sinks.eve import EveWriter, alert_record
    from ips.sinks.logfile import RotatingLog
    from ips.sinks.meter import RecentAlerts, install_meter
    from ips.sinks.syslog import SyslogSink

    def recent(alert: Any) -> dict[str, Any]:  # with the fields of the policy loaded now
        return alert_record(alert, None, peers.enrich if peers is not None else None)

    out = WorkerSinks(meter=install_meter(engine), alerts=RecentAlerts(record=recent))
    out.log = RotatingLog(cfg.eve_path, cfg.eve_max_bytes, cfg.eve_keep) if cfg.eve_path else None
    out.syslog = SyslogSink(cfg.syslog, cfg.syslog_facility) if cfg.syslog else None
    if out.log is not None or out.syslog is not None:
        out.eve = EveWriter(
            log=out.log,
            syslog=out.syslog,
            # Tap mode: the interface read is every record's in_iface (the store's rows name
            # it too); inline, a flow record names the flow's own interfaces.
            in_iface=cfg.iface if cfg.mode == "tap" else None,
            passive=passive,
            blocks_enforced=blocks_enforced,
            enrich=peers.enrich if peers is not None else None,
        )
    if cfg.webhook:
        from ips.sinks.webhook import Webhook

        out.webhook = Webhook(cfg.webhook).start()  # its thread: after the fork
    if cfg.store:
        from ips.store.records import DEFAULT_HOME
        from ips.store.writer import ProcessStoreSink

        # The writer is a process of its own (ips/store/writer.py): the rows, the rollups and
        # SQLite's or PostgreSQL's work stay off this process's GIL. Started here, after the
        # capabilities were dropped: it inherits none worth having and clears the rest.
        out.store = ProcessStoreSink(
            cfg.store,  # checked at start (DaemonConfig): a failure here is rare
            iface=cfg.iface,
            home=cfg.store_home or DEFAULT_HOME,
            retention=cfg.store_retention,
            enrich=peers.enrich if peers is not None else None,
        ).start()  # its thread and its process: after the fork
    return out


# ---- the running worker -------------------------------------------------------------------------


class LinkViews:
    """The kernel's neighbour table and routes, read for the engine's evidence behind blocks
    (ips/kernel/neighbours.py), inline on NFQUEUE (the packets carry their sender's MAC
    there): at start; then, with a watch (rtnetlink's announcements of neighbour and route
    changes, in the worker's poll set), when they changed, at most every REFRESH_EVERY
    seconds, and every WATCHED_REFRESH_EVERY seconds in any case; without one (it could not
    be opened), every REFRESH_EVERY seconds. A read stalls the worker's packets for its few
    milliseconds, so an idle gateway should not pay it every second. A failed read keeps the
    last view and is counted (status: evidence)."""

    def __init__(
        self,
        engine: Engine,
        read: Callable[[], Any] | None = None,
        watch: TableWatch | None = None,
    ) -> None:
        from ips.kernel.neighbours import REFRESH_EVERY, WATCHED_REFRESH_EVERY, read_link_view

        self.engine = engine
        self.read = read or read_link_view
        self.watch = watch
        self.spacing = REFRESH_EVERY
        self.every = REFRESH_EVERY if watch is None else WATCHED_REFRESH_EVERY
        self.due = 0.0
        self.last = float("-inf")
        self.reads = 0
        self.changes = 0  # wake-ups by the watch with something announced
        self.errors = 0
        self.last_error = ""

    def fileno(self) -> int | None:
        return self.watch.fileno() if self.watch is not None else None

    def announced(self, now: float) -> None:
        """The watch is readable: if a table changed, read them as soon as the spacing allows."""
        assert self.watch is not None
        try:
            view = self.engine.evidence.view
            changed = self.watch.changed(view.neighbours if view is not None else None)
        except OSError as exc:  # the socket broke: back to reading every REFRESH_EVERY
            self._error(exc)
            self.watch.close()
            self.watch = None
            self.every = self.spacing
            changed = True
        if changed:
            self.changes += 1
            self.due = min(self.due, max(now, self.last + self.spacing))

    def refresh(self, now: float) -> None:
        self.last = now
        self.due = now + self.every
        try:
            self.engine.set_link_view(self.read())
            self.reads += 1
        except Exception as exc:  # the last view stays; blocks are judged with it
            self._error(exc)

    def _error(self, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1 or str(exc) != self.last_error:
            print(f"ipsctl worker: reading the neighbour table: {exc}", file=sys.stderr,
                  flush=True)  # fmt: skip
        self.last_error = str(exc)

    def stats(self) -> dict[str, object]:
        watch = self.watch
        return {
            "reads": self.reads,
            "errors": self.errors,
            "last_error": self.last_error,
            "watched": watch is not None,
            "announcements": self.changes,
            "overruns": watch.overruns if watch is not None else 0,
        }

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None


@dataclass
class Worker:
    """A worker's parts once set up: what its loop and its control commands work with."""

    engine: Engine
    adapter: PacketAdapter
    sinks: WorkerSinks = field(default_factory=WorkerSinks)
    adopted: int = 0  # blocks taken over from the kernel at start
    cfg: DaemonConfig | None = None
    reopen: threading.Event = field(default_factory=threading.Event)  # SIGHUP
    links: LinkViews | None = None  # inline NFQUEUE: the segments' view for the evidence
    peers: PeerFields = field(default_factory=PeerFields)  # geo, service, reverse DNS fields
    volumes: OffloadedVolumes | None = None  # inline NFQUEUE: offloaded flows' kernel counts

    def command(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The answer to a message of the supervisor; None: stop."""
        op = msg.get("op")
        handler = WORKER_COMMANDS.get(str(op))
        if handler is not None:
            return handler(self, msg)
        own = self.adapter.command(msg)
        return own if own is not None else {"ok": False, "error": f"unknown op {op!r}"}

    def loop(self, conn: Connection, fd: int, beat: Callable[[], None]) -> None:
        """Until the supervisor says stop or is gone."""
        from ips.sinks.eve import stats_record

        assert self.cfg is not None
        adapter, engine, eve = self.adapter, self.engine, self.sinks.eve
        control = conn.fileno()
        copy_fd = adapter.copy_fd  # NFQUEUE: copies of packets the kernel passed
        others = [control] if copy_fd is None else [control, copy_fd]
        volumes = self.volumes
        volumes_fd = volumes.fileno() if volumes is not None else None
        links = self.links
        links_fd = links.fileno() if links is not None else None
        if links_fd is not None:
            others.append(links_fd)
        # The DESTROY events' socket is polled only once VOLUMES_READ_EVERY has passed since
        # the last read (`others` without it until then; the wait ends at that due).
        volumes_due = 0.0
        started = time.time()
        next_tick = started + TICK_EVERY
        interval = self.cfg.stats_interval
        next_stats = started + interval if interval > 0 and eve else None
        wait_for = HEARTBEAT_EVERY
        while True:
            beat()
            # The adapter's packets are judged inside the wait, as soon as they come; it
            # lingers (packets do not end it) until one of the others is readable or the
            # next of this loop's dues below, so this Python runs per due, not per wake-up.
            polled = others
            if volumes_fd is not None and time.time() >= volumes_due:
                polled = [*others, volumes_fd]
            ready = adapter.wait_and_process(fd, polled, wait_for, linger=True)
            if copy_fd is not None and copy_fd in ready:
                adapter.process_copies()
            if volumes is not None and volumes_fd in ready:
                volumes.read()  # conntrack's DESTROY events: held flow records completed
                volumes_due = time.time() + VOLUMES_READ_EVERY
            if links is not None and links_fd is not None and links_fd in ready:
                links.announced(time.time())  # a neighbour or route changed: read them soon
                if links.fileno() is None:  # the watch broke and was closed: not polled again
                    others.remove(links_fd)
                    links_fd = None
            if control in ready:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    return  # the supervisor is gone: leave the queue to its bypass setting
                try:
                    reply = self.command(msg)
                except Exception as exc:  # answer, never die of a request
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                if reply is None:
                    return
                if "id" in msg:
                    reply["id"] = msg["id"]
                conn.send(reply)
            if self.reopen.is_set():
                self.reopen.clear()
                self.sinks.reopen()
            now = time.time()
            if links is not None and now >= links.due:
                links.refresh(now)  # before the tick, which judges held requests again
            if now >= next_tick:
                events = engine.tick(now)
                if events:
                    adapter.effects(events)  # expiry counted; eve
                if volumes is not None:
                    # The events the pacing left in the socket first: a DESTROY that came
                    # within a record's wait completes it, read late or not.
                    volumes.read()
                    volumes_due = time.time() + VOLUMES_READ_EVERY
                    volumes.tick(now)  # held records whose DESTROY did not come in time
                next_tick = now + TICK_EVERY
            if next_stats is not None and now >= next_stats and eve is not None:
                eve.write(stats_record(now, now - started, eve_stats(engine, adapter, self.cfg)))
                next_stats = now + interval
            due = next_tick
            if volumes_fd is not None and volumes_due > now:
                due = min(due, volumes_due)
            if links is not None:
                due = min(due, links.due)
            if next_stats is not None:
                due = min(due, next_stats)
            wait_for = min(HEARTBEAT_EVERY, max(due - time.time(), 0.0))

    def tear_down(self) -> None:
        self.adapter.unbind()  # first: the queue's fail mode covers the packets from now on
        end_open_flows(self.engine, self.adapter, time.time(), SHUTDOWN_RECORDS_BUDGET)
        if self.volumes is not None:
            try:
                self.volumes.close()  # the held records, with the counts they have
            except Exception as exc:  # never in the way of the stop
                print(f"ipsctl worker: held flow records: {exc}", file=sys.stderr, flush=True)
        self.sinks.close()
        self.peers.close()
        if self.links is not None:
            self.links.close()


def worker_main(
    conn: Connection,
    parent_ends: tuple[Connection, ...],
    parent_pid: int,
    heartbeat: Any,
    cfg: DaemonConfig,
    main: str,
    sources: dict[str, str],
    never_block: tuple[str, ...] = (),
    bpf_program: BPFProgram | None = None,
    judged_cell: Any = None,
) -> None:
    """Entry point of a worker process (forked): inline over NFQUEUE or divert, or a tap.
    judged_cell: the shared count of the packets this queue's workers judged (NFQUEUE)."""

    def beat() -> None:
        heartbeat.value = time.monotonic()

    worker = set_up(
        parent_ends, parent_pid, cfg, main, sources, never_block, bpf_program, beat, judged_cell
    )
    try:
        fd = worker.adapter.bind()
    except Exception as exc:  # tell the supervisor why, instead of dying silently
        conn.send({"op": "failed", "error": str(exc)})
        return
    tune_collector()
    settle()  # before the first packet: the start-up heap leaves the collector's scans
    conn.send({"op": "ready", "pid": os.getpid(), "adopted": worker.adopted})
    try:
        worker.loop(conn, fd, beat)
    finally:
        worker.tear_down()


def set_up(
    parent_ends: tuple[Connection, ...],
    parent_pid: int,
    cfg: DaemonConfig,
    main: str,
    sources: dict[str, str],
    never_block: tuple[str, ...],
    bpf_program: BPFProgram | None,
    beat: Callable[[], None],
    judged_cell: Any = None,
) -> Worker:
    """The worker's process, engine, sinks and adapter (not bound yet)."""
    reopen = threading.Event()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, lambda _s, _f: reopen.set())  # logrotate: reopen the EVE file
    _die_with_parent(parent_pid)
    drop_or_warn("worker", keep_capabilities(cfg))  # NET_ADMIN (NFQUEUE, nft), NET_RAW (replies)
    for inherited in parent_ends:  # the supervisor's ends of the pipes: else no EOF ever
        inherited.close()
    tap = cfg.mode == "tap"
    policy = load_policy_sources(main, sources)
    engine = make_engine(policy, cfg.max_flows, never_block, cfg.queues)
    peers = PeerFields(cfg.reverse_dns)
    peers.load(policy)
    sinks = open_sinks(cfg, engine, tap, policy.tap_blocks_enforced, peers)
    every = sinks.sinks()

    def deliver(events: list[Effect]) -> None:
        for sink in every:
            sink.events(events)

    inline_nfqueue = cfg.mode == "inline" and cfg.backend == "nfqueue"
    volumes = _offloaded_volumes(deliver) if inline_nfqueue and every else None

    def on_events(events: list[Effect]) -> None:
        if volumes is not None:  # offloaded flows' records wait for the kernel's counts
            events = volumes.filter(events, time.time())
        deliver(events)

    adapter, adopted = _adapter(cfg, engine, bpf_program, on_events, beat, judged_cell, sinks.meter)
    links = None
    if inline_nfqueue:
        # Packets carry their sender's MAC here: the engine weighs it against the kernel's
        # neighbour table before a detector's block (tap, divert: no view; see
        # docs/language.md, "Evidence").
        links = LinkViews(engine, watch=_table_watch())
        links.refresh(time.time())
    return Worker(engine, adapter, sinks, adopted, cfg, reopen, links, peers, volumes)


def _table_watch() -> TableWatch | None:
    """Announcements of neighbour and route changes; None (said on stderr) when the kernel
    will not give them: the tables are then read every REFRESH_EVERY seconds."""
    from ips.kernel.neighbours import REFRESH_EVERY, TableWatch

    try:
        return TableWatch()
    except OSError as exc:
        print(f"ipsctl worker: neighbour and route announcements: {exc}: the tables are read "
              f"every {REFRESH_EVERY:g} s", file=sys.stderr, flush=True)  # fmt: skip
        return None


def _offloaded_volumes(deliver: Callable[[list[Effect]], None]) -> OffloadedVolumes | None:
    """Conntrack's sockets for offloaded flows' real volumes; None (said on stderr) when the
    kernel will not give them: those records keep the engine's counts."""
    from ips.io.conntrack import ConntrackWatch, OffloadedVolumes

    try:
        return OffloadedVolumes(deliver, ConntrackWatch())
    except OSError as exc:
        print(f"ipsctl worker: conntrack events: {exc}: offloaded flows keep the engine's "
              "counts", file=sys.stderr, flush=True)  # fmt: skip
        return None


def _adapter(
    cfg: DaemonConfig,
    engine: Engine,
    bpf_program: BPFProgram | None,
    on_events: Callable[[list[Effect]], None],
    beat: Callable[[], None],
    judged_cell: Any = None,
    meter: PacketMeter | None = None,
) -> tuple[PacketAdapter, int]:
    """The adapter of the configured backend and mode, and the blocks its engine adopted
    (meter: the one around engine.handle, which the NFQUEUE compiled drain keeps)."""
    from ips.kernel.blocks import KernelBlocks, adopt_blocks, adopt_mac_blocks

    if cfg.backend == "divert":  # pydivert: the ban set is the adapter's, from the bans file
        from ips.io.divert import DivertWorker, UserBlocks

        bans = UserBlocks(cfg.bans_file)
        bans.load()
        divert = DivertWorker(
            engine,
            hooks=cfg.hooks,
            queue_len=cfg.queue_maxlen,
            blocks=bans,
            on_events=on_events,
            on_busy=beat,
        )
        return divert, adopt_blocks(engine, bans.elements(time.time()), time.time())
    adapter: PacketAdapter
    blocks = KernelBlocks()  # its libnftables context is made here, in the worker
    if cfg.mode == "tap":
        from ips.io.tap import TapWorker

        adapter = TapWorker(
            cfg.iface or "",
            engine,
            bpf=bpf_program,
            bpf_text=cfg.bpf,
            promisc=cfg.promisc,
            on_events=on_events,
            blocks=blocks,
            on_busy=beat,
        )
    else:
        from ips.io.nfqueue import QueueWorker

        adapter = QueueWorker(
            cfg.queue,
            engine,
            fail_open=cfg.fail_open,
            max_len=cfg.queue_maxlen,
            on_events=on_events,
            blocks=blocks,
            on_busy=beat,
            client=cfg.nfq_client,
            read_copies=cfg.offload_copies,
            judged_cell=judged_cell,
            gso=cfg.nfq_gso,
            meter=meter,
        )
    # The kernel's blocks and MAC bans (left by the previous worker or daemon, or restored
    # from the state file) become the engine's, before the first packet.
    try:
        now = time.time()
        adopted = adopt_blocks(engine, blocks.nft.elements(BLOCK_TABLE), now)
        adopted += adopt_mac_blocks(engine, blocks.nft.ether_elements(), now)
    except Exception as exc:  # the kernel still drops them; only the engine does not know
        blocks._error(f"adopting the kernel's blocks: {exc}")
        adopted = 0
    return adapter, adopted


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGTERM this process when the supervisor dies (PR_SET_PDEATHSIG),
    so a SIGKILLed daemon leaves no worker answering the queue."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def end_open_flows(
    engine: Engine,
    adapter: PacketAdapter,
    now: float,
    budget: float,
    clock: Callable[[], float] = time.monotonic,
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
            print(
                f"ipsctl worker: {len(ended) - written} of {len(ended)} flow records not "
                f"written at stop (over {budget:g} s)",
                file=sys.stderr,
                flush=True,
            )
            break
        chunk = ended[start : start + SHUTDOWN_RECORDS_CHUNK]
        try:
            adapter.effects(chunk)
        except Exception as exc:
            print(f"ipsctl worker: flow records at stop: {exc}", file=sys.stderr, flush=True)
            break
        written += len(chunk)
    return written


# ---- the worker's commands (from the supervisor, over its pipe) ----------------------------------


def _load(worker: Worker, msg: dict[str, Any]) -> dict[str, Any]:
    engine = worker.engine
    policy = load_policy_sources(msg["main"], msg["sources"])
    engine.load(policy)
    enrich = worker.peers.load(policy)
    if worker.sinks.eve is not None:
        worker.sinks.eve.enrich = enrich
    if worker.sinks.store is not None:
        worker.sinks.store.enrich = enrich
    worker.adapter.policy_loaded()
    settle()  # frees the replaced policy (it has cycles) and freezes the new one
    return {"ok": True, "digest": engine.policy.digest}


def _stats(worker: Worker, _msg: dict[str, Any]) -> dict[str, Any]:
    engine, adapter, views = worker.engine, worker.adapter, worker.sinks
    s = engine.stats
    own = adapter.stats_sections()
    return {
        "ok": True,
        "packets": s.packets,
        "verdicts": dict(s.verdicts),
        "malformed": dict(s.malformed),
        "not_ip": s.not_ip,
        "engine_errors": s.errors,
        "verdict_errors": adapter.verdict_errors,
        "alerts": s.alerts,
        "flows": len(engine.flows),
        "offloaded": s.offloaded,
        "replies_sent": adapter.replies.sent,
        "replies_failed": adapter.replies.failed,
        "digest": engine.policy.digest,
        "rules": [rule_hits(r) for r in engine.policy.rules],
        "blocks": {
            **(adapter.blocks.stats() if adapter.blocks is not None else {}),
            "engine": engine_blocks(engine),
            "adopted": worker.adopted,
        },
        "detectors": detector_stats(engine),
        "app": engine.app_stats(),
        "geo": worker.peers.status(),
        "evidence": {
            **engine.evidence.stats(),
            "spoofed": engine.stats.spoofed,
            "mac_blocks": engine.stats.mac_blocks,
            "macs_blocked": len(engine.blocks.macs),
            **({"link_reads": worker.links.stats()} if worker.links is not None else {}),
        },
        "mode": adapter.mode,
        "tap": own.pop("tap", None),
        "sinks": views.outputs(),
        "flow_table": dataclasses.asdict(engine.flows.stats),
        "bytes": views.meter.bytes if views.meter is not None else None,
        "latency": views.meter.snapshot() if views.meter is not None else None,
        "alerts_seq": views.alerts.seq if views.alerts is not None else 0,
        "webhook": views.webhook.stats() if views.webhook is not None else None,
        "gc": collector_stats(),
        "conntrack_volumes": worker.volumes.stats() if worker.volumes is not None else None,
        **own,  # divert's or the NFQUEUE client's
    }


def _flows(worker: Worker, msg: dict[str, Any]) -> dict[str, Any]:
    from ips.views.flows import FilterError, select_flows

    try:
        return select_flows(
            worker.engine.flows.flows(),
            time.time(),
            top=int(msg.get("top", 20)),
            sort=str(msg.get("sort", "bytes")),
            filter_text=str(msg.get("filter") or ""),
            group=msg.get("group"),
            enrich=worker.peers.enrich,
        )
    except FilterError as exc:
        return {"ok": False, "error": str(exc)}


def _alerts(worker: Worker, msg: dict[str, Any]) -> dict[str, Any]:
    alerts = worker.sinks.alerts
    if alerts is None:
        return {"ok": True, "seq": 0, "alerts": []}
    since, limit = int(msg.get("since", 0)), min(int(msg.get("limit", 50)), 256)
    return {"ok": True, "seq": alerts.seq, "alerts": alerts.since(since, limit)}


def _manual(worker: Worker, msg: dict[str, Any]) -> dict[str, Any]:
    """A manual block / unblock the supervisor already wrote to the kernel: the engine is told
    (engine.block / engine.unblock) and the effect it returns goes to the EVE log. Not to the
    kernel again: the supervisor did that, also when this worker was busy or hung."""
    op, engine = msg["op"], worker.engine
    now = float(msg.get("time") or time.time())
    reason = str(msg.get("reason") or MANUAL)
    effects: list[Effect] = []
    # An engine without blocks (before the detectors) is answered, and told nothing.
    if op == "block":
        addr = ipaddress.ip_address(msg["addr"]).packed
        fn = getattr(engine, "block", None)
        effect = fn(addr, now, msg.get("ttl"), reason=reason) if fn is not None else None
        if effect is None and msg.get("force"):
            effect = _forced_block(addr, msg.get("ttl"), reason, now)
        if effect is not None:
            effects.append(effect)
    elif op == "unblock_mac":
        forget = getattr(engine, "unblock_mac", None)
        mac = parse_mac(str(msg["mac"]))
        forgotten = bool(forget(mac)) if forget is not None and mac is not None else False
        return {"ok": True, "engine": forgotten, "count": int(forgotten)}
    else:
        fn = getattr(engine, "unblock", None)
        if op == "unblock":
            addrs = [ipaddress.ip_address(msg["addr"]).packed]
        else:
            table = engine.tables.get(BLOCK_TABLE)
            addrs = list(table.members) if table is not None else []
            # A flush lifts the MAC bans too (the supervisor emptied their set).
            forget_all = getattr(engine, "unblock_macs", None)
            if forget_all is not None:
                forget_all()
        for addr in addrs:
            effect = fn(addr, now, reason=reason) if fn is not None else None
            if effect is not None:
                effects.append(effect)
    on_events = worker.adapter.on_events
    if effects and on_events is not None:
        on_events(effects)
    reply: dict[str, Any] = {"ok": True, "engine": bool(effects), "count": len(effects)}
    if op == "block" and effects:
        b = effects[0]
        reply.update(detector=getattr(b, "detector", MANUAL), offense=getattr(b, "offense", 0))
    return reply


def _forced_block(addr: bytes, ttl: float | None, reason: str, now: float) -> object | None:
    """The Block record of a `blocks add --force` the engine refused (a never-block address):
    the kernel has it, so the EVE log says so too."""
    try:
        from ips.core.events import Block

        return Block(
            addr,
            table=BLOCK_TABLE,
            ttl=ttl or 0.0,
            detector=MANUAL,
            offense=0,
            reason=reason,
            time=now,
        )
    except (ImportError, TypeError):  # an engine without blocks: the EVE log has no record
        return None


def _reopen(worker: Worker, _msg: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "reopened": worker.sinks.reopen()}


def _stop(_worker: Worker, _msg: dict[str, Any]) -> None:
    return None


# op -> handler; an op not here may be the adapter's own (PacketAdapter.command)
WORKER_COMMANDS: dict[str, Callable[[Worker, dict[str, Any]], dict[str, Any] | None]] = {
    "load": _load,
    "stats": _stats,
    "flows": _flows,
    "alerts": _alerts,
    "block": _manual,
    "unblock": _manual,
    "unblock_all": _manual,
    "unblock_mac": _manual,
    "reopen": _reopen,
    "stop": _stop,
}
