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
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import multiprocessing as mp
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ips.engine import Engine
from ips.kernel.diversion import Diversion
from ips.kernel.probe import read_queue_stats
from ips.policy.diagnostics import PolicyError
from ips.policy.model import Policy
from ips.policy.resolve import load_policy_collecting, load_policy_sources

DEFAULT_SOCKET = "/run/ipsctl/ipsctl.sock"
SOCKET_GROUP = "ipsctl"  # members may read status (read-only views)
TICK_EVERY = 1.0
HEARTBEAT_EVERY = 0.25


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


# ---- the worker ---------------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGTERM this process when the supervisor dies (PR_SET_PDEATHSIG),
    so a SIGKILLed daemon leaves no worker answering the queue."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def worker_main(
    conn: Connection,
    parent_ends: tuple[Connection, ...],
    parent_pid: int,
    heartbeat: Any,
    queue: int,
    main: str,
    sources: dict[str, str],
    fail_open: bool,
    eve_path: str | None,
    max_flows: int,
    queue_maxlen: int,
) -> None:
    """Entry point of a worker process (forked)."""
    from ips.io.nfqueue import QueueWorker, wait_readable
    from ips.sinks.eve import EveWriter

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    for inherited in parent_ends:  # the supervisor's ends of the pipes: else no EOF ever
        inherited.close()
    eve_file = open(eve_path, "a", buffering=1, encoding="utf-8") if eve_path else None  # noqa: SIM115
    eve = EveWriter(eve_file) if eve_file else None
    engine = Engine(load_policy_sources(main, sources), max_flows=max_flows)
    worker = QueueWorker(
        queue, engine, fail_open=fail_open, max_len=queue_maxlen,
        on_events=eve.events if eve else None,
    )  # fmt: skip
    fd = worker.bind()
    control = conn.fileno()
    next_tick = time.time() + TICK_EVERY
    conn.send({"op": "ready", "pid": os.getpid()})
    try:
        while True:
            heartbeat.value = time.monotonic()
            ready = wait_readable([fd, control], HEARTBEAT_EVERY)
            if fd in ready:
                worker.process_pending()
            if control in ready:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    return  # the supervisor is gone: leave the queue to its bypass setting
                reply = _worker_command(msg, engine, worker)
                if reply is None:
                    return
                conn.send(reply)
            now = time.time()
            if now >= next_tick:
                events = engine.tick(now)
                if eve and events:
                    eve.events(events)
                next_tick = now + TICK_EVERY
    finally:
        worker.unbind()
        if eve_file:
            eve_file.close()


def _worker_command(msg: dict[str, Any], engine: Engine, worker: Any) -> dict[str, Any] | None:
    op = msg.get("op")
    if op == "load":
        engine.load(load_policy_sources(msg["main"], msg["sources"]))
        return {"ok": True, "digest": engine.policy.digest}
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
            "replies_sent": worker.replies.sent,
            "replies_failed": worker.replies.failed,
            "digest": engine.policy.digest,
            "rules": [_rule_hits(r) for r in engine.policy.rules],
        }
    if op == "stop":
        return None
    return {"ok": False, "error": f"unknown op {op!r}"}


def _rule_hits(rule: Any) -> dict[str, Any]:
    spec = rule.spec
    where = f"{spec.span.file}:{spec.span.line}"
    return {"where": where, "action": spec.action, "hits": rule.hits, "text": spec.text}


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


class WorkerHandle:
    """The supervisor's side of one worker process."""

    def __init__(self, cfg: DaemonConfig, main: str, sources: dict[str, str]) -> None:
        ctx = mp.get_context("fork")
        self.heartbeat = ctx.Value("d", time.monotonic(), lock=False)
        self.conn, child = ctx.Pipe()
        self.lock = threading.Lock()
        self.process = ctx.Process(
            target=worker_main,
            args=(
                child, (self.conn,), os.getpid(), self.heartbeat, cfg.queue, main, sources,
                cfg.fail_open, cfg.eve_path, cfg.max_flows, cfg.queue_maxlen,
            ),
            name=f"ipsctl-worker-q{cfg.queue}",
            daemon=True,
        )  # fmt: skip
        self.process.start()
        child.close()
        if not self.conn.poll(15):
            raise RuntimeError("worker did not start")
        hello = self.conn.recv()
        if hello.get("op") != "ready":
            raise RuntimeError(f"worker failed to start: {hello}")

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def request(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        with self.lock:
            self.conn.send(msg)
            if not self.conn.poll(timeout):
                raise TimeoutError(f"worker did not answer {msg.get('op')}")
            return self.conn.recv()

    def silent_for(self) -> float:
        return time.monotonic() - self.heartbeat.value

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.process.join(5)

    def stop(self) -> None:
        with contextlib.suppress(Exception), self.lock:
            self.conn.send({"op": "stop"})
        self.process.join(3)
        if self.process.is_alive():
            self.kill()


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.counters = Counters()
        self.stopping = threading.Event()
        self.lock = threading.RLock()  # one policy change at a time
        self.policy: Policy | None = None
        self.main = ""
        self.sources: dict[str, str] = {}
        self.loaded_at = 0.0
        self.previous: tuple[str, dict[str, str]] | None = None
        self.confirm_deadline: float | None = None
        self.worker: WorkerHandle | None = None
        self.diversion = Diversion(queue=cfg.queue, hooks=cfg.hooks, fail_open=cfg.fail_open)
        self._server: socket.socket | None = None

    # ---- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        policy, sources = load_policy_collecting(self.cfg.policy_path)  # PolicyError -> caller
        self.diversion.remove_stale()  # what a killed daemon left behind
        self.diversion.install(policy)
        self._set_policy(policy, str(Path(self.cfg.policy_path).resolve()), sources)
        self.worker = WorkerHandle(self.cfg, self.main, self.sources)
        self._serve_control()

    def run_forever(self) -> None:
        """Watchdog and timers until SIGTERM/SIGINT."""
        while not self.stopping.wait(0.2):
            self._watchdog()
            self._check_confirm_deadline()

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.cfg.socket_path)
        if self.worker is not None:
            self.worker.stop()
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
        """Kernel part in one nft transaction, then the worker's engine (flows kept)."""
        self.diversion.update(policy)
        if self.worker is not None:
            reply = self.worker.request({"op": "load", "main": main, "sources": sources})
            if not reply.get("ok"):
                raise RuntimeError(f"worker refused the policy: {reply}")
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
        worker = self.worker
        if worker is None:
            return
        if not worker.alive():
            self.counters.worker_deaths += 1
        elif worker.silent_for() > self.cfg.hang_timeout:
            self.counters.worker_hangs += 1
            worker.kill()
        else:
            return
        with self.lock:
            self.worker = WorkerHandle(self.cfg, self.main, self.sources)
            self.counters.worker_restarts += 1

    # ---- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.time()
        worker: dict[str, Any] = {}
        if self.worker is not None:
            try:
                worker = self.worker.request({"op": "stats"}, timeout=2.0)
            except (TimeoutError, OSError, EOFError) as exc:
                worker = {"ok": False, "error": str(exc)}
        queues = read_queue_stats()
        q = queues.get(self.cfg.queue)
        policy = self.policy
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
            "kernel_hits": self.diversion.kernel_hits(),
            "queue": dataclasses.asdict(q) if q else None,
            "worker": {"pid": self.worker.pid if self.worker else None, **worker},
            "counters": self.counters.__dict__,
        }

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
        if uid != 0:
            return {"ok": False, "error": f"'{op}' needs root (peer uid {uid})"}
        if op == "apply":
            return self.apply(request["main"], request["sources"], request.get("confirm"))
        if op == "confirm":
            return self.confirm()
        return {"ok": False, "error": f"unknown request {op!r}"}


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

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
        daemon.run_forever()
    finally:
        daemon.stop()
    return 0
