"""The diversion to userspace where nftables has no `queue` expression (this machine's kernel):
the xtables NFQUEUE target, through iptables (nf_tables backend) and ip6tables.

Ours and nothing else: a chain `IPSCTL` in the `filter` table of both, and one jump rule per
hook chain (FORWARD, INPUT, OUTPUT), found again by its comment `ipsctl`:

    -I FORWARD 1 -m comment --comment ipsctl -j IPSCTL
    -A IPSCTL -m mark --mark 0x100000/0x100000 -j RETURN     # the nft fast path accepted it
    -A IPSCTL -j NFQUEUE --queue-num 0 --queue-bypass

iptables' filter chains hook at priority 0, after our nft chains (-10): packets the fast path
dropped never get here; those it accepted carry ACCEPT_MARK and skip the queue.
Changes go through `iptables-restore --noflush` (one transaction per family; declaring our
chain there flushes it, so re-installing replaces our two rules without touching others).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from ips.translate.nft import ACCEPT_MARK, HOOKS, QUEUE_MASK, QUEUE_SHIFT

CHAIN = "IPSCTL"
COMMENT = "ipsctl"
HOOK_CHAINS = {"forward": "FORWARD", "input": "INPUT", "output": "OUTPUT"}
BINARIES = ("iptables", "ip6tables")
TIMEOUT = 20.0  # seconds for one iptables command; they never legitimately take longer

# A jump rule of ours, as `iptables -S` prints it (the comment is our marker).
_JUMP_RE = re.compile(
    rf"^-A (?P<chain>{'|'.join(HOOK_CHAINS.values())}) (?P<spec>.*-m comment --comment "
    rf"\"?{COMMENT}\"? .*-j {CHAIN})\s*$"
)


class IptablesError(RuntimeError):
    """An iptables command failed; the message has its stderr."""


@dataclass(frozen=True, slots=True)
class Listing:
    """Our part of one family's filter table."""

    chain_exists: bool
    jumps: tuple[tuple[str, str], ...]  # (builtin chain, rule spec after `-A CHAIN`)


def parse_listing(text: str) -> Listing:
    """`iptables -S` (filter table) -> our chain and our jump rules."""
    chain_exists = False
    jumps: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line == f"-N {CHAIN}":
            chain_exists = True
        m = _JUMP_RE.match(line)
        if m:
            jumps.append((m["chain"], m["spec"]))
    return Listing(chain_exists, tuple(jumps))


def queue_target(queue: int | tuple[int, int], fail_open: bool) -> str:
    if isinstance(queue, tuple) and queue[0] != queue[1]:
        target = f"NFQUEUE --queue-balance {queue[0]}:{queue[1]}"
    else:
        target = f"NFQUEUE --queue-num {queue[0] if isinstance(queue, tuple) else queue}"
    return target + (" --queue-bypass" if fail_open else "")


def install_script(
    listing: Listing,
    hooks: Sequence[str],
    queue: int | tuple[int, int] = 0,
    fail_open: bool = True,
    queues: int = 1,
) -> str:
    """iptables-restore --noflush input that installs (or refreshes) our diversion: our chain
    re-declared (which flushes it) and refilled, a jump inserted first in each hook's chain
    that lacks one, jumps of hooks no longer wanted removed."""
    wanted = {HOOK_CHAINS[h] for h in hooks}
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    lines.append(f"-A {CHAIN} -m mark --mark {ACCEPT_MARK:#x}/{ACCEPT_MARK:#x} -j RETURN")
    if queues > 1:  # the nft chain put the queue index in the mark (QUEUE_MASK)
        first = queue[0] if isinstance(queue, tuple) else queue
        for i in range(1, queues):
            lines.append(
                f"-A {CHAIN} -m mark --mark {i << QUEUE_SHIFT:#x}/{QUEUE_MASK:#x} "
                f"-j {queue_target(first + i, fail_open)}"
            )
        queue = first
    lines.append(f"-A {CHAIN} -j {queue_target(queue, fail_open)}")
    have = {chain for chain, _ in listing.jumps}
    for chain, spec in listing.jumps:
        if chain not in wanted:
            lines.append(f"-D {chain} {spec}")
    for hook in hooks:
        chain = HOOK_CHAINS[hook]
        if chain not in have:
            lines.append(f"-I {chain} 1 -m comment --comment {COMMENT} -j {CHAIN}")
            have.add(chain)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def remove_script(listing: Listing) -> str | None:
    """iptables-restore --noflush input that deletes our jumps and chain; None if none."""
    if not listing.chain_exists and not listing.jumps:
        return None
    lines = ["*filter"]
    lines += [f"-D {chain} {spec}" for chain, spec in listing.jumps]
    if listing.chain_exists:
        lines += [f"-F {CHAIN}", f"-X {CHAIN}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class IptablesDiversion:
    """Install and remove the NFQUEUE diversion for IPv4 (iptables) and IPv6 (ip6tables)."""

    def __init__(self, binaries: Sequence[str] = BINARIES, timeout: float = TIMEOUT) -> None:
        self.binaries = tuple(binaries)
        self.timeout = timeout

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        try:
            done = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=self.timeout
            )
        except FileNotFoundError as exc:
            raise IptablesError(f"{argv[0]} not found: apt-get install iptables") from exc
        except subprocess.TimeoutExpired as exc:
            raise IptablesError(f"{' '.join(argv)} took more than {self.timeout}s") from exc
        if done.returncode != 0:
            raise IptablesError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def listing(self, binary: str) -> Listing:
        # `-S` does not create the filter table when it is absent (iptables-nft lists the
        # built-in chains it would have).
        return parse_listing(self._run([binary, "-w", "-t", "filter", "-S"]))

    def install(
        self,
        hooks: Sequence[str] = ("forward",),
        queue: int | tuple[int, int] = 0,
        fail_open: bool = True,
        queues: int = 1,
    ) -> None:
        """Install or refresh the diversion for `hooks`; idempotent (one jump per chain)."""
        for hook in hooks:
            if hook not in HOOKS:
                raise ValueError(f"unknown hook {hook!r}; one of {', '.join(HOOKS)}")
        for binary in self.binaries:
            script = install_script(self.listing(binary), hooks, queue, fail_open, queues)
            self._run([f"{binary}-restore", "-w", "--noflush"], script)

    def remove(self) -> bool:
        """Delete our jump rules (by comment) and our chain, nothing else; idempotent.
        True when something was removed."""
        removed = False
        for binary in self.binaries:
            script = remove_script(self.listing(binary))
            if script is not None:
                self._run([f"{binary}-restore", "-w", "--noflush"], script)
                removed = True
        return removed

    def installed(self) -> dict[str, Listing]:
        """Our part of the filter table, per binary."""
        return {binary: self.listing(binary) for binary in self.binaries}
