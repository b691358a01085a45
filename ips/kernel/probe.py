"""What this machine's kernel and tools can do, for `ipsctl doctor` and the daemon's start.

Every check says why it failed, in words an admin can act on. The nft checks use a throwaway
table `inet ipsctl_probe` in the current network namespace (created and deleted in the probe;
its chain has no hook, so no packet ever meets it). The iptables check runs in a private
network namespace of its own (`unshare --net`): iptables has no throwaway table, and its
filter table is shared with the admin's rules, so the probe never touches the real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ips.kernel.iptables import queue_target

QUEUE_PROC = Path("/proc/net/netfilter/nfnetlink_queue")
PROBE_TABLE = "ipsctl_probe"
TIMEOUT = 20.0


@dataclass(slots=True)
class Capabilities:
    """One bool per check; `reasons` says why each failed one failed."""

    root: bool = False
    nft_binary: bool = False
    nft_library: bool = False
    nft_queue: bool = False  # nft's `queue` expression (CONFIG_NFT_QUEUE)
    nft_log: bool = False  # nft's `log group` (NFLOG: nft_log, nfnetlink_log): offload's copies
    timeout_sets: bool = False
    iptables_nfqueue: bool = False  # the xtables NFQUEUE target through iptables
    iptables_backend: str | None = None  # "nf_tables" or "legacy"
    queue_proc: bool = False
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def diversion(self) -> str | None:
        """How packets get to userspace here: "nft", "iptables", or None (they cannot)."""
        if self.nft_queue:
            return "nft"
        if self.iptables_nfqueue:
            return "iptables"
        return None

    @property
    def inline_ok(self) -> bool:
        """Enough to run inline: root, nftables for the fast path and blocks, a diversion."""
        return self.root and self.nft_library and self.timeout_sets and self.diversion is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "root": self.root,
            "nft_binary": self.nft_binary,
            "nft_library": self.nft_library,
            "nft_queue": self.nft_queue,
            "nft_log": self.nft_log,
            "timeout_sets": self.timeout_sets,
            "iptables_nfqueue": self.iptables_nfqueue,
            "iptables_backend": self.iptables_backend,
            "queue_proc": self.queue_proc,
            "diversion": self.diversion,
            "reasons": dict(self.reasons),
        }


def _nft_try(lib: Any, commands: list[dict[str, object]]) -> str | None:
    """Run a batch in the probe table and delete the table again; the error text or None."""
    table = {"family": "inet", "name": PROBE_TABLE}
    try:
        rc, _, err = lib.json_cmd({"nftables": [{"add": {"table": table}}, *commands]})
        return None if rc == 0 else (err.replace("internal:0:0-0: ", "").strip() or f"rc {rc}")
    finally:
        lib.json_cmd({"nftables": [{"delete": {"table": table}}]})  # absent: an ignored error


def _probe_nft(caps: Capabilities) -> None:
    caps.nft_binary = shutil.which("nft") is not None
    if not caps.nft_binary:
        caps.reasons["nft_binary"] = "the nft command is missing: apt-get install nftables"
    try:
        import nftables

        lib = nftables.Nftables()
    except ImportError:
        caps.reasons["nft_library"] = "Python binding missing: pip install pip-nftables"
        return
    except OSError as exc:
        caps.reasons["nft_library"] = f"libnftables.so.1 cannot be loaded ({exc}): " + (
            "apt-get install libnftables1"
        )
        return
    caps.nft_library = True
    if not caps.root:
        for key in ("nft_queue", "nft_log", "timeout_sets"):
            caps.reasons[key] = "not checked: needs root (CAP_NET_ADMIN)"
        return
    t = {"family": "inet", "table": PROBE_TABLE}
    err = _nft_try(
        lib,
        [
            {
                "add": {
                    "set": {
                        **t,
                        "name": "s",
                        "type": "ipv4_addr",
                        "flags": ["timeout"],
                        "timeout": 60,
                    }
                }
            },
            {
                "add": {
                    "element": {
                        **t,
                        "name": "s",
                        "elem": [{"elem": {"val": "192.0.2.1", "timeout": 5}}],
                    }
                }
            },
        ],
    )
    caps.timeout_sets = err is None
    if err:
        caps.reasons["timeout_sets"] = f"nft sets with timeouts refused: {err}"
    err = _nft_try(
        lib,
        [
            {"add": {"chain": {**t, "name": "c"}}},  # no hook: no packet ever meets it
            {
                "add": {
                    "rule": {
                        **t,
                        "chain": "c",
                        "expr": [{"queue": {"num": 0, "flags": ["bypass"]}}],
                    }
                }
            },
        ],
    )
    caps.nft_queue = err is None
    if err:
        if "No such file or directory" in err:
            err = "the kernel has no nft queue expression (CONFIG_NFT_QUEUE is off)"
        caps.reasons["nft_queue"] = err
    err = _nft_try(
        lib,
        [
            {"add": {"chain": {**t, "name": "c"}}},  # no hook: no packet ever meets it
            {"add": {"rule": {**t, "chain": "c", "expr": [{"log": {"group": 0}}]}}},
        ],
    )
    caps.nft_log = err is None
    if err:
        caps.reasons["nft_log"] = (
            f"nft `log group` refused ({err}): the kernel has no NFLOG (nft_log, "
            "nfnetlink_log); offload then queues a connection's first data instead of copying it"
        )


def _probe_iptables(caps: Capabilities) -> None:
    binary = shutil.which("iptables")
    if binary is None:
        caps.reasons["iptables_nfqueue"] = "iptables is missing: apt-get install iptables"
        return
    try:
        version = subprocess.run(
            [binary, "-V"], capture_output=True, text=True, timeout=TIMEOUT
        ).stdout
        caps.iptables_backend = (
            "nf_tables" if "nf_tables" in version else "legacy" if "legacy" in version else None
        )
    except (OSError, subprocess.TimeoutExpired):
        pass
    if not caps.root:
        caps.reasons["iptables_nfqueue"] = "not checked: needs root"
        return
    if shutil.which("unshare") is None:
        caps.reasons["iptables_nfqueue"] = "not checked: unshare (util-linux) is missing"
        return
    # The real thing, in a namespace that dies with the command.
    script = " && ".join(
        f"{b} -w -t filter -A OUTPUT -m mark --mark 0x1/0x1 -j {queue_target(0, True)}"
        for b in ("iptables", "ip6tables")
    )
    try:
        done = subprocess.run(
            ["unshare", "--net", "--", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        caps.reasons["iptables_nfqueue"] = f"probe failed: {exc}"
        return
    caps.iptables_nfqueue = done.returncode == 0
    if done.returncode != 0:
        caps.reasons["iptables_nfqueue"] = (
            f"iptables refused the NFQUEUE target: {done.stderr.strip() or done.returncode}"
        )


def probe(iptables: bool = True) -> Capabilities:
    """Check everything (in this process's network namespace, except for iptables)."""
    caps = Capabilities(root=os.geteuid() == 0)
    if not caps.root:
        caps.reasons["root"] = "not running as root (CAP_NET_ADMIN is needed)"
    _probe_nft(caps)
    if iptables:
        _probe_iptables(caps)
    try:
        with QUEUE_PROC.open() as fh:
            fh.read()
        caps.queue_proc = True
    except OSError as exc:
        caps.reasons["queue_proc"] = (
            f"{QUEUE_PROC} is not readable ({exc.strerror}); it appears once the "
            "nfnetlink_queue module is loaded (modprobe nfnetlink_queue)"
        )
    return caps


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One line of /proc/net/netfilter/nfnetlink_queue."""

    queue_number: int
    peer_portid: int  # netlink port of the bound program
    queue_total: int  # packets waiting for a verdict now
    copy_mode: int
    copy_range: int
    queue_dropped: int  # dropped by the kernel: the queue was full
    user_dropped: int  # dropped: the netlink socket buffer of the program was full
    id_sequence: int  # id of the last packet queued


def parse_queue_stats(text: str) -> dict[int, QueueStats]:
    out: dict[int, QueueStats] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            values = [int(f) for f in fields[:8]]
        except ValueError:
            continue
        out[values[0]] = QueueStats(*values)
    return out


def read_queue_stats(path: Path | str = QUEUE_PROC) -> dict[int, QueueStats]:
    """Per-queue counters of this network namespace; {} when the file is absent (module not
    loaded: no queue is bound)."""
    try:
        return parse_queue_stats(Path(path).read_text())
    except FileNotFoundError:
        return {}
