"""What the daemon runs with: DaemonConfig, and how the options of `ipsctl run` become one.

RunOptions are the command line as given; `DaemonConfig.from_options` checks them together
(what goes with what, what this machine can do) in the order an operator meets the problems,
and fills in the defaults that depend on other options. A ConfigError says what is wrong and
how the CLI reports it.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ips.control import DEFAULT_SOCKET
from ips.privileges import DIVERT_KEEP, KEEP

STATE_FILE = "blocks.json"  # blocks saved by a clean stop, next to the control socket
# The tap's default policy: detect and alert, enforce nothing (in a source checkout).
DEFAULT_TAP_POLICY = Path(__file__).resolve().parents[2] / "policies" / "tap.rules"


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
    nfq_gso: bool = False  # own client: GSO super-packets queued whole (docs/backends.md)
    offload_copies: bool = True  # the worker reads offload's NFLOG copies (set from the probe)
    reverse_dns: bool = False  # name responders by reverse DNS (or `set reverse-dns on`)
    store: str | None = None  # the flow and event store: a directory or a postgresql:// URL
    store_retention: str = "raw 7d, 1m 90d, 1h 1y, 1d 10y"
    store_home: tuple[str, ...] = ()  # the protected networks (a flow's direction); (): private

    @property
    def state_file(self) -> str:
        return self.state_path or str(Path(self.socket_path).parent / STATE_FILE)

    @property
    def pending_file(self) -> str:
        """The record of an apply awaiting `ipsctl confirm` (ips/daemon/rollback.py)."""
        from ips.daemon.rollback import PENDING_FILE

        return str(Path(self.socket_path).parent / PENDING_FILE)

    @property
    def bans_file(self) -> str:
        """The divert backend's ban set (no kernel set there), next to the socket."""
        from ips.io.divert import BANS_FILE

        return str(Path(self.socket_path).parent / BANS_FILE)

    @property
    def offloading(self) -> bool:
        """Whether connections can be offloaded to the kernel: inline over NFQUEUE."""
        return self.mode == "inline" and self.backend == "nfqueue"

    @classmethod
    def from_options(
        cls, options: RunOptions, check_policy: Callable[[str], object]
    ) -> DaemonConfig:
        """The config of `ipsctl run` with these options, or a ConfigError. check_policy is
        called with the policy's path once the options about files are known to be right,
        before the checks of this machine: a bad policy is refused before the kernel is
        touched (it raises or exits itself)."""
        o = options
        tap = o.mode == "tap"
        if tap and not o.iface:
            raise ConfigError("--mode tap needs --iface IFACE")
        if not tap and (o.iface or o.bpf or o.promisc):
            raise ConfigError("--iface, --bpf and --promisc are for --mode tap")
        policy_path = o.policy_path
        if policy_path is None:
            if not tap:
                raise ConfigError("--policy FILE is required (inline mode)")
            policy_path = str(DEFAULT_TAP_POLICY)
            if not DEFAULT_TAP_POLICY.is_file():
                raise ConfigError(
                    f"no default tap policy at {DEFAULT_TAP_POLICY}: give --policy FILE"
                )
        eve_max_bytes = _checked_outputs(o)
        _check_written_files(o)
        _check_store(o)
        hooks = o.hooks or (("input", "forward") if tap else ("forward",))
        hooks = tuple(dict.fromkeys(hooks))
        check_policy(policy_path)
        backend = o.backend or ("divert" if sys.platform == "win32" else "nfqueue")
        if o.queues > 1 and (tap or backend == "divert"):
            raise ConfigError("--queues is for the NFQUEUE backend inline")
        if o.nfq_client is not None and (tap or backend == "divert"):
            raise ConfigError("--nfq-client is for the NFQUEUE backend inline")
        if o.nfq_gso is not None and (tap or backend == "divert"):
            raise ConfigError("--gso is for the NFQUEUE backend inline")
        if o.nfq_gso == "on" and o.nfq_client == "netfilterqueue":
            raise ConfigError(
                "--gso on needs our NFQUEUE client: netfilterqueue's 4 KB buffer cuts "
                "super-packets (use --nfq-client own, or --gso off)"
            )
        if backend == "divert":
            if tap:
                raise ConfigError("--backend divert is for inline mode (a tap reads AF_PACKET)")
            _check_divert(hooks, o.fail_mode)
        elif os.geteuid() != 0:
            need = "AF_PACKET and nftables" if tap else "NFQUEUE and nftables"
            raise ConfigError(f"needs root ({need})", Problem.MACHINE)
        return cls(
            policy_path=policy_path,
            mode=o.mode,
            iface=o.iface,
            bpf=o.bpf,
            promisc=o.promisc,
            eve_max_bytes=eve_max_bytes,
            eve_keep=o.eve_keep,
            syslog=o.syslog,
            syslog_facility=o.syslog_facility,
            stats_interval=o.stats_interval,
            queue=o.queue,
            queues=o.queues,
            hooks=hooks,
            fail_open=o.fail_mode == "open",
            socket_path=o.socket_path,
            eve_path=o.eve_path,
            hang_timeout=o.hang_timeout,
            queue_maxlen=o.queue_maxlen,
            never_block=o.never_block,
            max_flows=o.max_flows,
            state_path=o.state_path,
            metrics=o.metrics,
            webhook=o.webhook,
            backend=backend,
            nfq_client=o.nfq_client or "own",
            nfq_gso=o.nfq_gso == "on",
            reverse_dns=o.reverse_dns,
            store=o.store,
            store_retention=o.store_retention,
            store_home=o.store_home,
        )


@dataclass(frozen=True)
class RunOptions:
    """The options of `ipsctl run` as given (each already parsed by itself)."""

    policy_path: str | None = None
    mode: str = "inline"
    iface: str | None = None
    bpf: str | None = None
    promisc: bool = False
    queue: int = 0
    queues: int = 1
    hooks: tuple[str, ...] = ()  # () : the mode's default
    fail_mode: str = "open"
    eve_path: str | None = None
    eve_max_size: str = "256M"
    eve_keep: int = 5
    syslog: str | None = None
    syslog_facility: str = "local5"
    stats_interval: float = 60.0
    hang_timeout: float = 5.0
    queue_maxlen: int = 4096
    never_block: tuple[str, ...] = ()
    max_flows: int = 262_144
    state_path: str | None = None
    metrics: tuple[str, int] | None = None
    webhook: str | None = None
    backend: str | None = None  # None: the platform's
    nfq_client: str | None = None  # None: own
    nfq_gso: str | None = None  # on | off; None: off
    reverse_dns: bool = False
    store: str | None = None
    store_retention: str = "raw 7d, 1m 90d, 1h 1y, 1d 10y"
    store_home: tuple[str, ...] = ()
    socket_path: str = DEFAULT_SOCKET


class Problem(enum.Enum):
    USAGE = "usage"  # options that do not go together or do not parse
    OPTION = "option"  # an option's value the backend refuses (reported as click's usage)
    MACHINE = "machine"  # this machine cannot run it (not root, no pydivert)


class ConfigError(Exception):
    def __init__(self, message: str, problem: Problem = Problem.USAGE) -> None:
        super().__init__(message)
        self.problem = problem


def _checked_outputs(o: RunOptions) -> int:
    """The EVE file's rotation size, once the EVE and syslog options are known to parse."""
    from ips.sinks.logfile import parse_size
    from ips.sinks.syslog import FACILITIES, parse_target

    try:
        eve_max_bytes = parse_size(o.eve_max_size)
        if o.syslog:
            parse_target(o.syslog)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if o.syslog_facility not in FACILITIES:
        raise ConfigError(f"--syslog-facility: one of {', '.join(FACILITIES)}")
    return eve_max_bytes


def _check_written_files(o: RunOptions) -> None:
    """The files the daemon will write (the EVE file and its rotations, the blocks' state
    file) must be safe to write as root (ips.safefile): refused here, at start, with the
    reason, rather than inside a worker once the kernel is set up."""
    from ips.safefile import check_writable_path

    state = o.state_path or str(Path(o.socket_path).parent / STATE_FILE)
    files = [("--eve", o.eve_path, True), ("--state", state, False)]
    for option, path, must_exist in files:
        if path is None:
            continue
        try:
            check_writable_path(path)
        except FileNotFoundError:
            # The socket's directory (and the state file's default place) is made at start.
            if must_exist:
                directory = Path(path).absolute().parent
                raise ConfigError(f"{option} {path}: no directory {directory}") from None
        except OSError as exc:
            raise ConfigError(f"{option}: {exc}") from None


def _check_store(o: RunOptions) -> None:
    """--store: its retention must parse, its networks too, and the store must open (and be
    brought to this ipsctl's schema) now, at start: a store that cannot be opened is a usage
    error (exit 2), not a worker that fails later."""
    if o.store is None:
        return
    from ips.store.backend import StoreError, open_store
    from ips.store.records import HomeNetworks
    from ips.store.retention import Retention

    try:
        Retention.parse(o.store_retention)
        if o.store_home:
            HomeNetworks(o.store_home)
    except ValueError as exc:
        raise ConfigError(f"--store: {exc}") from None
    try:
        open_store(o.store).close()
    except StoreError as exc:
        raise ConfigError(f"--store: cannot open the store: {exc}") from None


def _check_divert(hooks: tuple[str, ...], fail_mode: str) -> None:
    """--backend divert: its options and whether pydivert can run here, before starting."""
    from ips.io.divert import DivertError, layer_for, usable

    try:
        layer_for(hooks)
    except DivertError as exc:
        raise ConfigError(str(exc), Problem.OPTION) from None
    if fail_mode != "open":
        raise ConfigError(
            "--backend divert is fail-open only (a dead worker's divert handle "
            "lets packets pass); use --backend nfqueue",
            Problem.OPTION,
        )
    ok, why = usable()
    if not ok:
        raise ConfigError(f"the divert backend cannot run here: {why}", Problem.MACHINE)


def keep_capabilities(cfg: DaemonConfig) -> tuple[int, ...]:
    """What the daemon keeps after set-up: the divert backend loads eBPF in each worker."""
    return DIVERT_KEEP if cfg.backend == "divert" else KEEP
