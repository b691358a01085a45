"""Bring a lab topology up as network namespaces, and take it down again.

Layout of a lab with prefix P (default `ipl-`):

* `P{node}` — one namespace per node, its interfaces named as in the topology;
* `P` + `sw` — a hidden "switch" namespace holding one Linux bridge per segment (`br-{segment}`)
  and the switch end of every veth pair (`{node}-{ifname}`).

Nothing is created in the host's own namespace: each veth pair is made inside the switch
namespace and its node end is placed straight into the node's namespace under its final name,
so parallel labs (and the host's interfaces) can never collide on a name.

State lives in `/run/ipsctl-lab/{P}.json` (prefix, topology, namespaces, service PIDs), written
*before* each namespace is made, so `down(P)` from any process also removes a half-built lab,
and touches only namespaces that are both recorded there and named with the prefix.

Each namespace also carries the lab's mark, the alias `ipsctl-lab:P` on its loopback, set the
moment it is made. A lab whose state file went with its run (a test run killed mid-way, a
reboot of /run without one of the namespaces) is still found by it: `list_labs()` shows it as
`orphaned`, and `down(P)` removes the namespaces named with the prefix AND marked with it,
ending the processes inside them first (they are the lab's services and whatever the dead run
started there; nobody else's process lives in a lab's namespace). A namespace without the
mark (someone else's, or a lab's made by an older version) is never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ips.lab.topology import Node, Topology, load, parse

STATE_DIR = Path("/run/ipsctl-lab")
NETNS_DIR = Path("/run/netns")
DEFAULT_PREFIX = "ipl-"
SWITCH = "sw"
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,19}$")
SERVICE_READY_TIMEOUT = 10.0
SERVICE_STOP_TIMEOUT = 3.0
CLONE_NEWNET = 0x40000000
IFA_F_NODAD = 0x02

# Written in every node namespace before its interfaces arrive (they inherit `default`):
# addresses are unique by construction (the loader checks), so duplicate address detection
# only delays IPv6 by a second or two; router solicitations are noise in captures.
BASE_SYSCTLS = {
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.router_solicitations": "0",
}
# The switch only bridges: no addresses, no IPv6 chatter of its own.
SWITCH_SYSCTLS = {
    "net.ipv6.conf.default.disable_ipv6": "1",
    "net.ipv6.conf.all.disable_ipv6": "1",
}


MARK = "ipsctl-lab:"  # + prefix: the alias of every lab namespace's loopback
MARK_RE = re.compile(r"\\ +alias (\S+)")  # in `ip -o link show` output, lines joined by '\'
MARK_READ_TIMEOUT = 5.0


class LabError(RuntimeError):
    """A lab cannot be brought up, found or used; the message says what to do."""


@dataclass
class ServiceProc:
    node: str
    pid: int
    starttime: int  # /proc/PID/stat field 22: guards against killing a reused PID
    log: str


@dataclass
class Lab:
    """A running lab, as returned by `up()` (or rebuilt from its state file by `get()`)."""

    prefix: str
    topology: Topology
    services: list[ServiceProc] = field(default_factory=list)

    @property
    def state_path(self) -> Path:
        return state_path(self.prefix)

    def namespace(self, node: str) -> str:
        """The namespace name of NODE (LabError with a did-you-mean if there is no such node)."""
        _check_node(self.topology, node)
        return self.prefix + node

    @property
    def switch(self) -> str:
        return self.prefix + SWITCH

    def exec(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ARGV inside NODE (subprocess.run keyword arguments apply: timeout, …)."""
        return subprocess.run(netns_argv(self.namespace(node), argv), **kwargs)

    def popen(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ARGV inside NODE in the background; the caller ends it (by its PID)."""
        return subprocess.Popen(netns_argv(self.namespace(node), argv), **kwargs)

    def down(self) -> bool:
        return down(self.prefix)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


# ---- public API --------------------------------------------------------------------------------


def state_path(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}.json"


def check_prefix(prefix: str) -> None:
    if not PREFIX_RE.match(prefix):
        raise LabError(
            f"bad lab prefix '{prefix}': 1-20 characters of letters, digits, "
            "'-', '_' or '.', not starting with a punctuation mark"
        )


def require_root(what: str = "building a lab") -> None:
    if os.geteuid() != 0:
        raise LabError(f"{what} needs root (network namespaces, veth pairs); try sudo")
    if shutil.which("ip") is None:
        raise LabError("the `ip` command is missing (Debian package iproute2)")


def up(topology: Topology | str | Path, prefix: str = DEFAULT_PREFIX) -> Lab:
    """Build TOPOLOGY (a Topology or a YAML path) as namespaces named PREFIX+node, start its
    services, and return the Lab. On any failure the half-built lab is removed again."""
    topo = topology if isinstance(topology, Topology) else load(topology)
    check_prefix(prefix)
    require_root()
    names = [prefix + SWITCH, *(prefix + n for n in topo.nodes)]
    taken = [n for n in names if (NETNS_DIR / n).exists()]
    if state_path(prefix).exists():
        raise LabError(
            f"a lab with prefix '{prefix}' is already up (or half-built); "
            f"remove it with `ipsctl lab down --prefix {prefix}`"
        )
    if taken:
        raise LabError(
            f"namespace {', '.join(taken)} already exists; choose another "
            "--prefix (this lab will not touch a namespace it did not create)"
        )

    state: dict[str, Any] = {
        "version": 1,
        "prefix": prefix,
        "name": topo.name,
        "topology_path": str(Path(topo.path).resolve()) if topo.path else None,
        "topology": _topology_doc(topo),
        "created": time.time(),
        "status": "building",
        "namespaces": [],
        "services": [],
    }
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two `up` with one prefix at once: exactly one wins.
        fd = os.open(state_path(prefix), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise LabError(f"a lab with prefix '{prefix}' is already up") from None
    os.close(fd)
    _save(state)
    try:
        _build(topo, prefix, state)
        lab = Lab(prefix, topo)
        lab.services = _start_services(topo, prefix, state)
        state["status"] = "up"
        _save(state)
        return lab
    except BaseException:
        down(prefix)
        raise


@dataclass
class DownReport:
    prefix: str
    found: bool  # False: there was no such lab (nothing done)
    namespaces: list[str] = field(default_factory=list)  # removed
    services: list[int] = field(default_factory=list)  # PIDs stopped
    lingering: dict[str, list[int]] = field(default_factory=dict)  # other processes left inside
    orphaned: bool = False  # True: found by its namespaces' mark, its state file was gone


def down(prefix: str = DEFAULT_PREFIX) -> bool:
    """Remove the lab PREFIX: stop its services, delete its namespaces and its state.
    Idempotent: False when there was no such lab. See `down_report` for the details."""
    return down_report(prefix).found


def down_report(prefix: str = DEFAULT_PREFIX) -> DownReport:
    check_prefix(prefix)
    report = DownReport(prefix, found=False)
    path = state_path(prefix)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return _down_orphan(report)
    except (OSError, ValueError):
        state = {}  # unreadable (cannot happen with _save's atomic replace): drop the file
    require_root("removing a lab")
    report.found = True
    for svc in state.get("services", []):
        if _stop_service(ServiceProc(**svc)):
            report.services.append(int(svc["pid"]))
    # Node namespaces first, the switch last; only names recorded AND carrying the prefix.
    recorded = [
        n
        for n in state.get("namespaces", [])
        if isinstance(n, str) and n.startswith(prefix) and "/" not in n
    ]
    switch = prefix + SWITCH
    for name in sorted(recorded, key=lambda n: n == switch):
        if not (NETNS_DIR / name).exists():
            continue
        others = _pids_in(name)
        if others:
            # Not ours to kill (`lab exec` started them): say so, the namespace lives on
            # until they end.
            report.lingering[name] = others
        _remove_netns(name)
        report.namespaces.append(name)
    path.unlink(missing_ok=True)
    for tmp in STATE_DIR.glob(f"{prefix}.json.*.tmp"):  # left by an `up` killed mid-write
        tmp.unlink(missing_ok=True)
    for svc in state.get("services", []):
        with contextlib.suppress(OSError):
            Path(svc["log"]).unlink()
    return report


def _down_orphan(report: DownReport) -> DownReport:
    """down_report for a lab without a state file: its marked namespaces, and every process
    inside them (SIGTERM, SIGKILL after a grace period; each checked by its start time)."""
    prefix = report.prefix
    names = find_orphans(prefix).get(prefix, [])
    if not names:
        return report
    require_root("removing a lab")
    report.found = report.orphaned = True
    switch = prefix + SWITCH
    inside = [
        ServiceProc(name[len(prefix) :], pid, start, "")
        for name in names
        for pid in _pids_in(name)
        # `down` run from inside the lab: this process is not to be ended.
        if pid != os.getpid() and (start := _starttime(pid))
    ]
    report.services = _stop_all(inside)
    for name in sorted(names, key=lambda n: n == switch):
        _remove_netns(name)
        report.namespaces.append(name)
        # A services log of this lab (`_start_services` names it after the namespace).
        (STATE_DIR / f"{name}.log").unlink(missing_ok=True)
    for tmp in STATE_DIR.glob(f"{prefix}.json.*.tmp"):
        tmp.unlink(missing_ok=True)
    return report


def lab_mark(namespace: str) -> str | None:
    """The prefix of the lab NAMESPACE belongs to, from its loopback's alias; None when it
    carries no lab mark (or cannot be read)."""
    try:
        out = subprocess.run(
            ["ip", "-n", namespace, "-o", "link", "show", "dev", "lo"],
            capture_output=True,
            text=True,
            timeout=MARK_READ_TIMEOUT,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = MARK_RE.search(out)
    if match is None or not match.group(1).startswith(MARK):
        return None
    return match.group(1)[len(MARK) :]


def find_orphans(prefix: str | None = None) -> dict[str, list[str]]:
    """Labs left without a state file: prefix -> its namespaces, found by name (the prefix)
    and mark (the same prefix). Only names starting with PREFIX when given; namespaces
    recorded in some lab's state file belong to that lab and are skipped."""
    if not NETNS_DIR.is_dir():
        return {}
    recorded: set[str] = set()
    for path in STATE_DIR.glob("*.json") if STATE_DIR.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            recorded.update(json.loads(path.read_text()).get("namespaces", []))
    out: dict[str, list[str]] = {}
    for name in sorted(os.listdir(NETNS_DIR)):
        if name in recorded or (prefix is not None and not name.startswith(prefix)):
            continue
        mark = lab_mark(name)
        if mark is None or not name.startswith(mark) or not PREFIX_RE.match(mark):
            continue
        if prefix is None or mark == prefix:
            out.setdefault(mark, []).append(name)
    return out


def exec(  # the name the CLI and the issue use; shadows the builtin only in this module
    prefix: str, node: str, argv: Sequence[str], **kwargs: Any
) -> subprocess.CompletedProcess:
    """Run ARGV inside NODE of the lab PREFIX (`ip netns exec`); keyword arguments go to
    subprocess.run (timeout, capture_output, …). The exit code is the command's."""
    return get(prefix).exec(node, argv, **kwargs)


def get(prefix: str = DEFAULT_PREFIX) -> Lab:
    """The running lab PREFIX, rebuilt from its state file (LabError if there is none)."""
    check_prefix(prefix)
    try:
        state = json.loads(state_path(prefix).read_text())
    except FileNotFoundError:
        others = [info.prefix for info in list_labs()]
        hint = f"; running: {', '.join(others)}" if others else "; start one with `ipsctl lab up`"
        raise LabError(f"no lab with prefix '{prefix}' is up{hint}") from None
    topo = parse(json.dumps(state["topology"]), source=str(state_path(prefix)))
    return Lab(prefix, topo, [ServiceProc(**s) for s in state.get("services", [])])


@dataclass
class LabInfo:
    prefix: str
    name: str
    status: str  # up | building | broken (a namespace is missing)
    topology_path: str | None
    created: float
    nodes: dict[str, list[str]]  # node -> its addresses as written (ranges kept short)
    namespaces: dict[str, bool]  # namespace -> exists
    services: dict[int, bool]  # pid -> alive


def list_labs() -> list[LabInfo]:
    """The labs with a state file under /run/ipsctl-lab, oldest first."""
    out: list[LabInfo] = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        nodes: dict[str, list[str]] = {}
        for name, node in (state.get("topology", {}).get("nodes") or {}).items():
            addrs: list[str] = []
            for iface in node.get("interfaces", []):
                addrs.extend(iface.get("addresses", []))
                extra = iface.get("extra_addresses") or []
                addrs.extend([extra] if isinstance(extra, str) else extra)
            nodes[name] = addrs
        namespaces = {n: (NETNS_DIR / n).exists() for n in state.get("namespaces", [])}
        services = {int(s["pid"]): _alive(ServiceProc(**s)) for s in state.get("services", [])}
        status = state.get("status", "building")
        if status == "up" and not (all(namespaces.values()) and all(services.values())):
            status = "broken"
        out.append(
            LabInfo(
                state.get("prefix", path.stem),
                state.get("name", "?"),
                status,
                state.get("topology_path"),
                state.get("created", 0.0),
                nodes,
                namespaces,
                services,
            )
        )
    for prefix, names in find_orphans().items():
        if state_path(prefix).exists():
            continue  # its state file appeared meanwhile: listed above, or next time
        switch = prefix + SWITCH
        pids = {pid: True for name in names for pid in _pids_in(name)}
        out.append(
            LabInfo(
                prefix,
                "?",
                "orphaned",
                None,
                min((_made_at(n) for n in names), default=0.0),
                {n[len(prefix) :]: [] for n in names if n != switch},
                dict.fromkeys(names, True),
                pids,
            )
        )
    return sorted(out, key=lambda i: i.created)


def _made_at(namespace: str) -> float:
    """When NAMESPACE's name was made under /run/netns (the mount point's own time)."""
    try:
        return os.stat(NETNS_DIR / namespace, follow_symlinks=False).st_ctime
    except OSError:
        return 0.0


def netns_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    """`ip netns exec` also mounts the namespace's own /sys and /etc/netns files."""
    return ["ip", "netns", "exec", namespace, *argv]


# ---- building ----------------------------------------------------------------------------------


def _build(topo: Topology, prefix: str, state: dict[str, Any]) -> None:
    from pyroute2 import IPRoute  # imported here: `list`/`down` need not pay for it

    switch = prefix + SWITCH
    _create_netns(switch, state)
    _write_sysctls(switch, SWITCH_SYSCTLS)
    for name in topo.nodes:
        _create_netns(prefix + name, state)
        _write_sysctls(prefix + name, BASE_SYSCTLS)

    with IPRoute(netns=switch, flags=0) as sw:
        bridges: dict[str, int] = {}
        for seg in topo.segments:
            # Multicast snooping off: IPv6 neighbour discovery must flood like ARP does.
            sw.link("add", ifname=f"br-{seg}", kind="bridge", br_mcast_snooping=0)
            bridges[seg] = sw.link_lookup(ifname=f"br-{seg}")[0]
            sw.link("set", index=bridges[seg], state="up")
        used: set[str] = set()
        for node in topo.nodes.values():
            for iface in node.interfaces:
                port = _port_name(node.name, iface.name, used)
                sw.link(
                    "add",
                    ifname=port,
                    kind="veth",
                    peer={"ifname": iface.name, "net_ns_fd": prefix + node.name},
                )
                idx = sw.link_lookup(ifname=port)[0]
                sw.link("set", index=idx, master=bridges[iface.segment], state="up")

    for node in topo.nodes.values():
        _configure_node(node, prefix + node.name)


def _configure_node(node: Node, namespace: str) -> None:
    from pyroute2 import IPRoute

    _write_sysctls(namespace, node.all_sysctls())
    with IPRoute(netns=namespace, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for iface in node.interfaces:
            idx = ipr.link_lookup(ifname=iface.name)[0]
            ipr.link("set", index=idx, state="up")
            for a in iface.addresses:
                _add_address(ipr, idx, str(a.ip), a.network.prefixlen, a.version)
            for x in iface.extra_addresses:
                _add_address(ipr, idx, str(x), x.max_prefixlen, x.version)
        for route in node.routes:
            family = socket.AF_INET if route.via.version == 4 else socket.AF_INET6
            ipr.route("add", dst=str(route.to), gateway=str(route.via), family=family)


def _add_address(ipr: Any, index: int, address: str, prefixlen: int, version: int) -> None:
    if version == 6:
        # nodad: usable at once, not "tentative" for the next second or two.
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen, flags=IFA_F_NODAD)
    else:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)


def _port_name(node: str, ifname: str, used: set[str]) -> str:
    """The switch end of a veth: `client-eth0` when it fits in 15 characters, else `pN`."""
    name = f"{node}-{ifname}"
    if len(name) > 15 or name in used or name.startswith("br-"):
        name = f"p{len(used)}"
    used.add(name)
    return name


def _create_netns(name: str, state: dict[str, Any]) -> None:
    from pyroute2 import netns

    # Recorded before it exists: if we die in between, `down` finds the name and skips it.
    state["namespaces"].append(name)
    _save(state)
    if (NETNS_DIR / name).exists():
        raise LabError(f"namespace {name} already exists")
    netns.create(name)
    _mark_netns(name, state["prefix"])


def _mark_netns(name: str, prefix: str) -> None:
    """The lab's mark on the new namespace (see the module's doc): lo's alias."""
    from pyroute2 import IPRoute

    with IPRoute(netns=name, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], ifalias=MARK + prefix)


def _remove_netns(name: str) -> None:
    from pyroute2 import netns

    with contextlib.suppress(FileNotFoundError):
        netns.remove(name)


_libc = ctypes.CDLL(None, use_errno=True)


def _write_sysctls(namespace: str, values: dict[str, str]) -> None:
    """Write net.* sysctls inside NAMESPACE without a subprocess: a short-lived thread joins
    the namespace (setns acts on the calling thread only) and writes /proc/sys there, which
    the kernel resolves by the writing thread's namespace. The rest of the process stays put."""
    if not values:
        return
    errors: list[str] = []

    def worker() -> None:
        try:
            fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
        except OSError as exc:
            errors.append(f"namespace {namespace}: {exc.strerror}")
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                errors.append(f"setns {namespace}: {os.strerror(ctypes.get_errno())}")
                return
        finally:
            os.close(fd)
        for key, value in values.items():
            path = Path("/proc/sys") / (key if "/" in key else key.replace(".", "/"))
            try:
                path.write_text(f"{value}\n")
            except OSError as exc:
                errors.append(f"sysctl {key}={value} in {namespace}: {exc.strerror}")

    thread = threading.Thread(target=worker, name=f"sysctl-{namespace}")
    thread.start()
    thread.join()
    if errors:
        raise LabError("; ".join(errors))


# ---- services ----------------------------------------------------------------------------------


def _services_argv(node: Node) -> list[str]:
    argv = [sys.executable, "-m", "ips.lab.services"]
    for kind in ("http", "tcp-echo", "udp-echo"):
        ports = [str(s.port) for s in node.services if s.kind == kind]
        if ports:
            argv += [f"--{kind}", ",".join(ports)]
    return argv


def _start_services(topo: Topology, prefix: str, state: dict[str, Any]) -> list[ServiceProc]:
    started: list[ServiceProc] = []
    env = dict(os.environ)
    # So `python -m ips.lab.services` imports this very checkout, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    for node in topo.nodes.values():
        if not node.services:
            continue
        log = STATE_DIR / f"{prefix}{node.name}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                netns_argv(prefix + node.name, _services_argv(node)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                start_new_session=True,  # not killed with the terminal that ran `lab up`
            )
        # `ip netns exec` execs the command: this PID is the services process itself.
        svc = ServiceProc(node.name, proc.pid, _starttime(proc.pid) or 0, str(log))
        state["services"].append(svc.__dict__)
        _save(state)
        started.append(svc)
        _wait_ready(proc, node.name, log)
        # The services outlive this Popen (and a CLI `up`); they are tracked by PID in the
        # state file and reaped by `down`. Marking the Popen finished stops its destructor
        # from warning about a child "still running".
        if proc.poll() is None:
            proc.returncode = 0
    return started


def _wait_ready(proc: subprocess.Popen, node: str, log: Path) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + SERVICE_READY_TIMEOUT
    line = b""
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                break
            if proc.poll() is not None:
                break
    finally:
        proc.stdout.close()
    if line.strip() != b"ready":
        # The last line of its stderr is the reason (a traceback's or argparse's last word).
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        tail = lines[-1][-300:] if lines else ""
        raise LabError(
            f"services on {node} did not start" + (f": {tail}" if tail else " (no output)")
        )


def _starttime(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has already ended
    return int(fields[19])


def _alive(svc: ServiceProc) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(svc.pid, os.WNOHANG)  # reap it if it is our own child
    start = _starttime(svc.pid)
    return start is not None and (svc.starttime == 0 or start == svc.starttime)


def _stop_service(svc: ServiceProc) -> bool:
    """SIGTERM, then SIGKILL after a grace period; only the process recorded (same PID and
    start time). True if it was running."""
    if not _alive(svc):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(svc.pid, signal.SIGTERM)
    deadline = time.monotonic() + SERVICE_STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(svc):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(svc.pid, signal.SIGKILL)
    for _ in range(40):
        if not _alive(svc):
            break
        time.sleep(0.05)
    return True


def _stop_all(procs: list[ServiceProc]) -> list[int]:
    """_stop_service for several at once: all get SIGTERM, then one grace period, then
    SIGKILL for those still running. The PIDs that were running."""
    running = [p for p in procs if _alive(p)]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + SERVICE_STOP_TIMEOUT
    left = running
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _alive(p)]
    for proc in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    for _ in range(40):
        left = [p for p in left if _alive(p)]
        if not left:
            break
        time.sleep(0.05)
    return [p.pid for p in running]


def _pids_in(namespace: str) -> list[int]:
    """Processes whose network namespace is NAMESPACE (compared by device and inode)."""
    try:
        st = os.stat(NETNS_DIR / namespace)
    except OSError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (st.st_dev, st.st_ino) and _starttime(int(entry.name)):
            pids.append(int(entry.name))
    return pids


# ---- state -------------------------------------------------------------------------------------


def _save(state: dict[str, Any]) -> None:
    """Atomic replace: a reader (`list`, `down` elsewhere) never sees half a file."""
    path = state_path(state["prefix"])
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def _topology_doc(topo: Topology) -> dict[str, Any]:
    """The topology back as a YAML-shaped document: the state file must describe the lab even
    if the file it came from changes or goes."""
    nodes: dict[str, Any] = {}
    for node in topo.nodes.values():
        doc: dict[str, Any] = {
            "interfaces": [
                {
                    "name": i.name,
                    "segment": i.segment,
                    "addresses": [str(a) for a in i.addresses],
                    **({"extra_addresses": list(i.extra_spec)} if i.extra_spec else {}),
                }
                for i in node.interfaces
            ],
        }
        if node.routes:
            doc["routes"] = [
                {"to": "default" if r.is_default else str(r.to), "via": str(r.via)}
                for r in node.routes
            ]
        if node.forwarding:
            doc["forwarding"] = True
        if node.sysctls:
            doc["sysctls"] = dict(node.sysctls)
        if node.services:
            doc["services"] = [{"kind": s.kind, "port": s.port} for s in node.services]
        nodes[node.name] = doc
    return {"name": topo.name, "segments": list(topo.segments), "nodes": nodes}


def _check_node(topo: Topology, node: str) -> None:
    if node not in topo.nodes:
        close = difflib.get_close_matches(node, list(topo.nodes), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise LabError(
            f"no node '{node}' in lab '{topo.name}' (nodes: {', '.join(topo.nodes)}){hint}"
        )
