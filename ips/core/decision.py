"""What the engine says about one packet: the Decision, and the offload kinds it may carry.

It lives in the core, not in the policy compiler, because every layer above reads it (the
engine makes it, the adapters act on it) while only the compiler builds rules. The rule that
decided is typed by the small protocol below, so the core needs nothing from the policy.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from ips.core.events import Effect

OFFLOAD_FLOW = 1  # Decision.offload: the rest of the flow goes on in the kernel
OFFLOAD_HANDSHAKE_ACK = 2  # Decision.offload: only the handshake's final bare ACK does
OFFLOAD_BARE_ACKS = 3  # Decision.offload: the same, and the packet after it comes to the queue


class NamedSpec(Protocol):
    """A rule's source form, as far as a Decision needs it: its name (file:line)."""

    @property
    def name(self) -> str: ...


class DecidingRule(Protocol):
    """A rule that can decide a packet (the policy's CompiledRule is one)."""

    @property
    def spec(self) -> NamedSpec: ...


RuleT = TypeVar("RuleT", bound=DecidingRule)


class Decision(Generic[RuleT]):
    """What to do with one packet.

    verdict  accept | drop | reject | rewrite
    rule     the rule that decided (a CompiledRule), or None (default verdict, malformed,
             error)
    data     replacement bytes for the packet (rewrite, or a reply of a translated flow),
             else None
    reply    bytes the adapter must send back (the TCP reset / ICMP error of a reject)
    peer_reply  bytes the adapter must send on, to the packet's destination: the reset that
             closes the server's end of a connection an application-layer clause rejected
             (a complete IP packet, sent as `reply` is); None otherwise
    effects  events to hand to the sinks (alerts, log records); () when none
    reason   why, when no rule decided: "default", "malformed:<reason>", "error", "not-ip"
    offload  0; OFFLOAD_FLOW: accept, and the flow's later packets need no inspection: the
             adapter may let the kernel pass them without the queue (see
             CompiledPolicy.offload_safe); OFFLOAD_HANDSHAKE_ACK: accept (a SYN+ACK), and the
             kernel may pass the initiator's bare ACK that completes the handshake;
             OFFLOAD_BARE_ACKS: the same, for a connection the inspector (or an L7 clause)
             still waits on: its next packet comes to the queue, not as a copy
    """

    __slots__ = ("data", "effects", "offload", "peer_reply", "reason", "reply", "rule", "verdict")

    def __init__(
        self,
        verdict: str,
        rule: RuleT | None = None,
        data: bytes | None = None,
        reply: bytes | None = None,
        effects: tuple[Effect, ...] | list[Effect] = (),
        reason: str = "",
        offload: int = 0,
        peer_reply: bytes | None = None,
    ) -> None:
        self.verdict = verdict
        self.offload = offload
        self.rule = rule
        self.data = data
        self.reply = reply
        self.peer_reply = peer_reply
        self.effects = effects
        self.reason = reason

    def __repr__(self) -> str:
        who = self.rule.spec.name if self.rule else self.reason
        return f"Decision({self.verdict} by {who})"
