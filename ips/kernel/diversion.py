"""The diversion: how packets are steered to the daemon, and where its blocks live.

The daemon's supervisor holds one Diversion (the protocol below) and talks to nothing else of
the kernel:
    NftDiversion          (here)              the `inet ipsctl` table (fast path, sets, and the
                                              `queue` statement where the kernel has it) plus,
                                              where it has not, the iptables fallback chain
    UserspaceDiversion    (ips/io/divert.py)  nothing in a kernel: pydivert diverts in the
                                              worker, blocks are its ban set

Start after a killed daemon: its iptables jumps are removed, but its nft table is kept and
the new policy is applied over it in one transaction (chains flushed and refilled, sets kept),
so the blocks in the sets — and the drops of the old fast path — never stop applying.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from ips.kernel.iptables import IptablesDiversion
from ips.kernel.nft import KernelError, Nft
from ips.kernel.probe import Capabilities, probe
from ips.policy.model import Policy
from ips.translate.nft import (
    BLOCK_TABLE,
    BLOCKS_COMMENT,
    COMMENT_PREFIX,
    OFFLOAD_PAUSED,
    USERSPACE_COMMENT,
    Address,
    NftPlan,
    RuleCounter,
    SetElement,
    fast_path_split,
    synproxy_hooks,
)

TCP_LOOSE = Path("/proc/sys/net/netfilter/nf_conntrack_tcp_loose")
CONNTRACK_ACCT = Path("/proc/sys/net/netfilter/nf_conntrack_acct")
# The sysctls a policy makes the daemon hold at a value of its own (the SYN proxy's strict
# tracking, offload's accounting), each put back when the daemon lets go of it.
HELD_SYSCTLS = (TCP_LOOSE, CONNTRACK_ACCT)


def held_sysctls() -> dict[str, str]:
    """What HELD_SYSCTLS read now in this network namespace (those this kernel lacks, or
    conntrack not loaded yet, are left out): saved with an unconfirmed apply, so that a
    rollback without a daemon puts back the values the previous policy ran with."""
    values = {}
    for path in HELD_SYSCTLS:
        with contextlib.suppress(OSError):
            values[str(path)] = path.read_text().strip()
    return values


def restore_held_sysctls(values: dict[str, str]) -> list[str]:
    """Write back the values held_sysctls() read, where they differ now (only paths of
    HELD_SYSCTLS: the record that carries them is a file). Returns the names rewritten."""
    rewritten = []
    for path in HELD_SYSCTLS:
        value = values.get(str(path))
        if value is None:
            continue
        try:
            if path.read_text().strip() != value:
                path.write_text(value + "\n")
                rewritten.append(path.name)
        except OSError as exc:
            print(f"ipsctl: {path}: {exc}: left as it is", file=sys.stderr)
    return rewritten


class BlockSets(Protocol):
    """The members of the block sets as elements, for saving and restoring them, and the
    banned MACs (ETHER_BAN_TABLE) likewise."""

    def elements(self, table: str) -> list[SetElement]: ...

    def ether_elements(self) -> list[SetElement]: ...

    def replace_ether_elements(
        self,
        macs: Iterable[str],
        timeout: float | None = None,
        comment: str | None = None,
        expires: float | None = None,
    ) -> None: ...

    def replace_elements(
        self,
        table: str,
        addrs: Iterable[str],
        timeout: float | None,
        comment: str | None = None,
        expires: float | None = None,
    ) -> None: ...


class Diversion(Protocol):
    backend: str | None  # what diverts: "nft", "iptables", "tap", "divert"; None: nothing
    kernel_rules: int  # the policy's rules decided in the kernel (the fast path)

    @property
    def offload_generation(self) -> int | None:
        """The generation offloaded flows are marked with; None: no offload here."""
        ...

    @property
    def copies(self) -> bool:
        """Whether offload passes a connection's first data with a copy to the worker."""
        ...

    @property
    def nft(self) -> BlockSets:
        """The block sets, for saving them at stop and restoring them at start."""
        ...

    def remove_stale(self) -> None:
        """Before install(): what a killed daemon left that must go first."""
        ...

    def install(self, policy: Policy) -> None: ...

    def update(self, policy: Policy, offload: bool = True) -> None:
        """The kernel part of a new policy; offload=False: without offloading anything."""
        ...

    def remove(self) -> None: ...

    def kernel_plan(self, policy: Policy) -> NftPlan | None:
        """The plan of `policy`'s kernel part with nothing offloaded, for a rollback made
        without the daemon (ips/daemon/rollback.py); None: no kernel part."""
        ...

    def counters(self) -> dict[str, RuleCounter]:
        """The rules' counters by comment; {} when they cannot be read."""
        ...

    def kernel_hits(self, counters: dict[str, RuleCounter] | None = None) -> dict[str, int]: ...

    def offered(self, counters: dict[str, RuleCounter] | None = None) -> int | None:
        """Packets the kernel sent towards the queues since install (over policy swaps);
        None: nothing is queued by a kernel rule (tap, divert)."""
        ...

    def block_drops(self, counters: dict[str, RuleCounter] | None = None) -> int: ...

    def describe(self) -> dict[str, object]: ...

    def blocks(self) -> list[SetElement]: ...

    def block(self, addr: str, ttl: float | None, comment: str) -> None: ...

    def unblock(self, addr: str) -> bool: ...

    def flush_blocks(self) -> None:
        """Unblock every address and every MAC."""
        ...

    def mac_blocks(self) -> list[SetElement]:
        """The MACs banned for forged packets (ETHER_BAN_TABLE); none where there is no
        link layer to ban them at."""
        ...

    def unblock_mac(self, mac: str) -> bool: ...


class NftDiversion:
    """A Diversion in the kernel: nftables, and iptables where nft has no `queue`."""

    def __init__(
        self,
        queue: int = 0,
        hooks: Sequence[str] = ("forward",),
        fail_open: bool = True,
        caps: Capabilities | None = None,
        tap: bool = False,
        queues: int = 1,
    ) -> None:
        # tap: nothing is diverted (a tap reads copies); the table holds only the block sets,
        # and their drop rules only while the policy says `set tap-blocks enforce`.
        self.tap = tap
        self.queues = queues
        self.queue = queue
        self.hooks = tuple(hooks)
        self.fail_open = fail_open
        self._caps = caps
        self.backend: str | None = None  # "nft" or "iptables" once installed
        self.kernel_rules = 0
        # The offload generation: a new one with every policy swap (see ips/translate/nft/).
        # Random at start, so connections a previous daemon offloaded are (almost surely, 253
        # in 254) not taken for this one's.
        self.offload_generation = random.randint(1, OFFLOAD_PAUSED - 1)
        # The queue rule's counter starts again at 0 with every policy swap (the chains are
        # flushed and refilled): what it had counted is kept here, read just before.
        self._offered_before = 0
        self._tcp_loose_before: str | None = None  # set while the SYN proxy needs it at 0
        self._acct_before: str | None = None  # set while we hold nf_conntrack_acct at 1
        self._nft = Nft()
        self._iptables = IptablesDiversion()

    @property
    def caps(self) -> Capabilities:
        if self._caps is None:
            self._caps = probe()
        return self._caps

    @property
    def nft(self) -> Nft:
        return self._nft

    @property
    def copies(self) -> bool:
        """Whether offload passes a connection's first data with an NFLOG copy to its worker
        (the kernel has `log group`), or queues it."""
        return self.caps.nft_log

    def remove_stale(self) -> None:
        """Before install() over what a daemon killed without cleaning up left behind: nothing
        is removed first. Its table `inet ipsctl` stays: install() applies the new policy over
        it, which keeps the members of its sets (the blocks). Its iptables jumps stay too:
        with the fallback, install() refreshes chain and jumps in place in one transaction;
        with nft `queue`, it removes them once the new diversion is in. Removing them first
        let every packet through unfiltered until the new ones were in — also fail-closed
        (measured by bench/restart.py: 47 forbidden packets through in 0.1 s)."""

    def install(self, policy: Policy) -> None:
        if self.tap:
            self.backend = "tap"
            self.update(policy)
            self._iptables.remove()  # a killed inline daemon's jumps: a tap diverts nothing
            return
        backend = self.caps.diversion
        if backend is None or not self.caps.inline_ok:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.caps.reasons.items())
            raise KernelError(f"this machine cannot divert packets: {reasons}")
        self.backend = backend
        try:
            self.update(policy)
        except KernelError as exc:
            if not self._nft.table_exists():
                raise  # not the old table's fault
            # A table nft will not apply over (left by another version?): start it afresh,
            # carrying the blocks over.
            print(f"ipsctl: recreating table inet ipsctl ({exc})", file=sys.stderr)
            blocks = self._nft.elements(BLOCK_TABLE)
            self._nft.remove()
            self.update(policy)
            for e in blocks:
                self._nft.replace_elements(BLOCK_TABLE, [e.addr], e.timeout, e.comment, e.expires)
        # A killed daemon's table counted packets its own workers judged: ours start at 0.
        self._offered_before = 0
        self._count_in_conntrack(True)
        if backend == "iptables":
            self._iptables.install(self.hooks, self.queue, self.fail_open, self.queues)
        else:  # a killed daemon's fallback jumps (a kernel that gained `queue` since)
            self._iptables.remove()

    def update(self, policy: Policy, offload: bool = True) -> None:
        """Swap the kernel part of the policy in one nft transaction. offload=False: without
        the offload rules (nothing is offloaded, nothing stays offloaded) — the first step of
        a policy swap, while the worker still runs the old policy: the engine whose verdict
        offloads a connection must be the one that runs the policy of the generation."""
        if self.tap:
            hooks = self.hooks if policy.tap_blocks_enforced else ()
            self._nft.apply(policy, NftPlan(hooks, blocks_only=True))
            self.kernel_rules = 0
            return
        if offload:
            self.offload_generation = self.offload_generation % (OFFLOAD_PAUSED - 1) + 1
        self._carry_offered()
        plan = self._plan(self.offload_generation if offload else 0)
        self._nft.apply(policy, plan)
        self.kernel_rules = fast_path_split(policy)
        self._track_tcp_strictly(bool(synproxy_hooks(policy, plan)))

    def _plan(self, offload_generation: int) -> NftPlan:
        return NftPlan(
            self.hooks,
            queue=self.queue,
            fail_open=self.fail_open,
            nft_queue=self.backend == "nft",
            offload_generation=offload_generation,
            queues=self.queues,
            copies=self.copies,
            ether_blocks=True,
        )

    def kernel_plan(self, policy: Policy) -> NftPlan | None:
        """The plan update() applies `policy`'s kernel part with, nothing offloaded."""
        if self.tap:
            hooks = self.hooks if policy.tap_blocks_enforced else ()
            return NftPlan(hooks, blocks_only=True)
        return self._plan(0)

    def _track_tcp_strictly(self, on: bool) -> None:
        """The SYN proxy needs conntrack to call a connection's first ACK invalid (not pick
        it up as established): nf_conntrack_tcp_loose 0 in this network namespace while the
        policy says `set synproxy on`; the value found is put back when it stops."""
        try:
            if on and self._tcp_loose_before is None:
                self._tcp_loose_before = TCP_LOOSE.read_text().strip()
                TCP_LOOSE.write_text("0\n")
            elif not on and self._tcp_loose_before is not None:
                TCP_LOOSE.write_text(self._tcp_loose_before + "\n")
                self._tcp_loose_before = None
        except OSError as exc:
            print(
                f"ipsctl: {TCP_LOOSE}: {exc}: the SYN proxy lets connections picked up "
                "mid-stream through",
                file=sys.stderr,
            )

    def _count_in_conntrack(self, on: bool) -> None:
        """Offloaded flows' real volumes come from conntrack's accounting
        (ips/io/conntrack.py): nf_conntrack_acct 1 in this network namespace while the daemon runs;
        the value found is put back at stop. Connections conntrack knew before have no
        counters (the kernel adds them to new entries only)."""
        try:
            if on and self._acct_before is None:
                self._acct_before = CONNTRACK_ACCT.read_text().strip()
                CONNTRACK_ACCT.write_text("1\n")
            elif not on and self._acct_before is not None:
                CONNTRACK_ACCT.write_text(self._acct_before + "\n")
                self._acct_before = None
        except OSError as exc:
            print(
                f"ipsctl: {CONNTRACK_ACCT}: {exc}: offloaded flows keep the engine's counts",
                file=sys.stderr,
            )

    def remove(self) -> None:
        """Stop diverting (iptables first), then delete our table."""
        self._iptables.remove()
        self._nft.remove()
        self._track_tcp_strictly(False)
        self._count_in_conntrack(False)
        self.backend = None

    def counters(self) -> dict[str, RuleCounter]:
        """The kernel's counters by comment; {} when they cannot be read."""
        try:
            return self._nft.counters()
        except KernelError:
            return {}

    def kernel_hits(self, counters: dict[str, RuleCounter] | None = None) -> dict[str, int]:
        """Packets per policy rule decided in the kernel ("FILE:LINE" -> packets)."""
        counters = self.counters() if counters is None else counters
        return {
            key.removeprefix(COMMENT_PREFIX): c.packets
            for key, c in counters.items()
            if key.startswith(COMMENT_PREFIX) and key[-1].isdigit()
        }

    def offered(self, counters: dict[str, RuleCounter] | None = None) -> int | None:
        """Packets the kernel sent towards the queues (the counter of the rule that queues,
        USERSPACE_COMMENT) since install, carried over policy swaps. `counters`: a reading
        already made; else only our chains are read."""
        if self.tap or self.backend is None:
            return None
        if counters is None:
            try:
                counters = self._nft.chain_counters(self.hooks)
            except KernelError:
                return None
        c = counters.get(USERSPACE_COMMENT)
        return self._offered_before + (c.packets if c else 0)

    def _carry_offered(self) -> None:
        if self.backend is None:
            return  # install: the chains are new
        try:
            c = self._nft.chain_counters(self.hooks).get(USERSPACE_COMMENT)
        except KernelError:
            return  # not read: the count misses this epoch, never invents packets
        self._offered_before += c.packets if c else 0

    def block_drops(self, counters: dict[str, RuleCounter] | None = None) -> int:
        """Packets the kernel dropped because their source is blocked (`ipsctl:blocks`)."""
        counters = self.counters() if counters is None else counters
        c = counters.get(BLOCKS_COMMENT)
        return c.packets if c else 0

    # ---- blocks (the members of BLOCK_TABLE's sets) -------------------------------------------

    def blocks(self) -> list[SetElement]:
        return self._nft.elements(BLOCK_TABLE)

    def block(self, addr: Address, ttl: float | None, comment: str) -> None:
        self._nft.replace_elements(BLOCK_TABLE, [addr], ttl, comment)

    def unblock(self, addr: Address) -> bool:
        return self._nft.delete_elements(BLOCK_TABLE, [addr]) > 0

    def flush_blocks(self) -> None:
        self._nft.flush_elements(BLOCK_TABLE)
        self._nft.flush_ether_elements()

    def mac_blocks(self) -> list[SetElement]:
        return self._nft.ether_elements()

    def unblock_mac(self, mac: str) -> bool:
        return self._nft.delete_ether_elements([mac]) > 0

    def describe(self) -> dict[str, object]:
        return {
            "backend": {
                "nft": "nft queue",
                "iptables": "iptables NFQUEUE (fallback)",
                "tap": "none (tap: copies of packets)",
            }.get(self.backend or "", "none"),
            "queue": self.queue,
            "queues": self.queues,
            "hooks": list(self.hooks),
            "fail_open": self.fail_open,
        }
