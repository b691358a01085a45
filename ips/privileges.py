"""Dropping the capabilities the daemon does not need once it is set up.

After the supervisor has installed its nftables table, bound the control socket (and set its
owner and mode) and started its first worker, it keeps only what running needs:

  CAP_NET_ADMIN  nftables (blocks, `apply`, the clean-up at stop), the iptables fallback, and
                 binding NFQUEUE when the watchdog starts a new worker
  CAP_NET_RAW    the raw sockets that send `reject` replies (TCP resets, ICMP errors)

Everything else goes from the effective, permitted, inheritable and ambient sets and from the
bounding set, so nothing the daemon executes later (nft, iptables) can get it back either: a
root process that execs gets its bounding set as capabilities, no more. The process stays
uid 0 (its files in /run and the state file stay its own); without CAP_DAC_OVERRIDE,
CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE, CAP_SETUID, CAP_CHOWN, … a compromised engine
cannot read other users' files, load modules, trace processes or change identity.

Linux only (prctl/capset through ctypes); elsewhere, or when not root, nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterable

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
KEEP = (CAP_NET_ADMIN, CAP_NET_RAW)
# The divert backend on Linux loads eBPF programs (eBPFDivert) each time a worker opens its
# handle: libbpf needs CAP_BPF and CAP_PERFMON, CAP_SYS_ADMIN for its probes, and
# CAP_SYS_RESOURCE to raise RLIMIT_MEMLOCK.
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
CAP_PERFMON = 38
CAP_BPF = 39
DIVERT_KEEP = (*KEEP, CAP_SYS_ADMIN, CAP_SYS_RESOURCE, CAP_PERFMON, CAP_BPF)

_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522


class CapabilityError(OSError):
    """The kernel refused to change this process's capabilities."""


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40  # CAP_CHECKPOINT_RESTORE, Linux 5.9


def capability_sets(pid: int | str = "self") -> dict[str, int]:
    """CapInh, CapPrm, CapEff, CapBnd, CapAmb of a process, as integers (from /proc)."""
    sets: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cap"):
                name, value = line.split(":", 1)
                sets[name] = int(value.strip(), 16)
    return sets


def mask(caps: Iterable[int]) -> int:
    out = 0
    for cap in caps:
        out |= 1 << cap
    return out


def drop_capabilities(keep: Iterable[int] = KEEP) -> bool:
    """Keep only `keep` (by default CAP_NET_ADMIN and CAP_NET_RAW) in every capability set
    of this process, the bounding set included. Returns False when there was nothing to do
    (not Linux, not root); raises CapabilityError when the kernel refuses."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    keep = tuple(keep)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    # The bounding set first: dropping from it needs CAP_SETPCAP, which capset removes.
    for cap in range(last_cap() + 1):
        if cap not in keep and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise CapabilityError(err, f"PR_CAPBSET_DROP {cap}: {os.strerror(err)}")
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        if err != 22:  # EINVAL: a kernel without ambient capabilities (< 4.3)
            raise CapabilityError(err, f"clearing ambient capabilities: {os.strerror(err)}")
    bits = mask(keep)
    header = _Header(_CAP_VERSION_3, 0)
    data = (_Data * 2)()
    data[0].effective = data[0].permitted = bits & 0xFFFFFFFF
    data[1].effective = data[1].permitted = bits >> 32
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise CapabilityError(err, f"capset: {os.strerror(err)}")
    return True


def drop_or_warn(who: str, keep: Iterable[int] = KEEP) -> None:
    """drop_capabilities, with a refusal reported on stderr (the daemon keeps running: it
    filters as before, with more privilege than it needs)."""
    try:
        drop_capabilities(keep)
    except CapabilityError as exc:
        print(f"ipsctl: {who}: could not drop capabilities: {exc}", file=sys.stderr)


def clear_capabilities() -> bool:
    """Empty this process's effective, permitted and inheritable sets (and the ambient
    set), for a helper that runs as root but needs no privilege and never executes anything
    (the store's writer). Needs no capability itself; the bounding set stays as it was.
    Returns False when there was nothing to do (not Linux, not root)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _Header(_CAP_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise CapabilityError(err, f"capset: {os.strerror(err)}")
    return True
