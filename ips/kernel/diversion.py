"""How packets reach the daemon, as one object: the `inet ipsctl` table (fast path, sets, and
the `queue` statement where the kernel has it) plus, where it has not, the iptables fallback
chain. The daemon only talks to this."""

from __future__ import annotations

from collections.abc import Sequence

from ips.kernel.iptables import IptablesDiversion
from ips.kernel.nft import KernelError, Nft
from ips.kernel.probe import Capabilities, probe
from ips.kernel.ruleset import fast_path_split
from ips.policy.model import Policy


class Diversion:
    def __init__(
        self,
        queue: int = 0,
        hooks: Sequence[str] = ("forward",),
        fail_open: bool = True,
        caps: Capabilities | None = None,
    ) -> None:
        self.queue = queue
        self.hooks = tuple(hooks)
        self.fail_open = fail_open
        self._caps = caps
        self.backend: str | None = None  # "nft" or "iptables" once installed
        self.kernel_rules = 0
        self._nft = Nft()
        self._iptables = IptablesDiversion()

    @property
    def caps(self) -> Capabilities:
        if self._caps is None:
            self._caps = probe()
        return self._caps

    def remove_stale(self) -> None:
        """Remove what a daemon killed without cleaning up left behind (ours only)."""
        self._iptables.remove()
        self._nft.remove()

    def install(self, policy: Policy) -> None:
        backend = self.caps.diversion
        if backend is None or not self.caps.inline_ok:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.caps.reasons.items())
            raise KernelError(f"this machine cannot divert packets: {reasons}")
        self.backend = backend
        self.update(policy)
        if backend == "iptables":
            self._iptables.install(self.hooks, self.queue, self.fail_open)

    def update(self, policy: Policy) -> None:
        """Swap the kernel part of the policy in one nft transaction."""
        self._nft.apply(
            policy, self.hooks, queue=self.queue, fail_open=self.fail_open,
            nft_queue=self.backend == "nft",
        )  # fmt: skip
        self.kernel_rules = fast_path_split(policy)

    def remove(self) -> None:
        """Stop diverting (iptables first), then delete our table."""
        self._iptables.remove()
        self._nft.remove()
        self.backend = None

    def kernel_hits(self) -> dict[str, int]:
        """Packets per policy rule decided in the kernel ("FILE:LINE" -> packets)."""
        try:
            counters = self._nft.counters()
        except KernelError:
            return {}
        return {
            key.removeprefix("ipsctl:"): c.packets
            for key, c in counters.items()
            if key.startswith("ipsctl:") and key[-1].isdigit()
        }

    def describe(self) -> dict[str, object]:
        return {
            "backend": {"nft": "nft queue", "iptables": "iptables NFQUEUE (fallback)"}.get(
                self.backend or "", "none"
            ),
            "queue": self.queue,
            "hooks": list(self.hooks),
            "fail_open": self.fail_open,
        }
