"""Destination translation (`rewrite … set daddr/dport`): per flow, not per packet.

A rewrite rule that sets a destination starts a translation on the flow's first forward
packet (`start`); the flow's later forward packets get the new destination (`forward`), and
replies from the new destination get back the original one as their source (`reply`), so
rules and the client see the connection the client made. `replies` maps a reply's 5-tuple,
as seen on the wire, to its flow; the engine asks it before anything else looks at a packet.
"""

from __future__ import annotations

from ips.core import craft
from ips.core.flow import Flow
from ips.core.packet import Packet
from ips.policy.compile import CompiledRule

ReplyKey = tuple[int, bytes, int, bytes, int]  # proto, src, sport, dst, dport of a reply


def start(replies: dict[ReplyKey, Flow], rule: CompiledRule, pkt: Packet, flow: Flow) -> None:
    """Begin translating `flow` when `rule` sets a destination."""
    rw = rule.spec.rewrite
    if rw is None or (rw.daddr is None and rw.dport is None):
        return
    new_dst = rw.daddr if rw.daddr is not None else pkt.dst
    new_dport = rw.dport if rw.dport is not None and pkt.dport else pkt.dport
    if len(new_dst) != len(pkt.dst):
        return  # no translation across families (the resolver prevents it)
    flow.nat = (pkt.dst, pkt.dport, new_dst, new_dport)
    replies[(pkt.proto, new_dst, new_dport, pkt.src, pkt.sport)] = flow


def forward(data: bytes, pkt: Packet, flow: Flow) -> bytes:
    """A forward packet of a translated flow, with the new destination."""
    # flow.nat is set: only a translated flow comes here.
    _, _, new_dst, new_dport = flow.nat  # type: ignore[misc]
    if new_dst != pkt.dst:
        data = craft.set_daddr(data, pkt, new_dst)
    if new_dport != pkt.dport and pkt.dport:
        data = craft.set_dport(data, pkt, new_dport) or data
    return data


def reply(pkt: Packet, flow: Flow) -> bytes:
    """A reply from the new destination, with the original destination as its source."""
    # flow.nat is set: only a translated flow comes here.
    orig_dst, orig_dport, _, _ = flow.nat  # type: ignore[misc]
    data = pkt.data
    if orig_dst != pkt.src:
        data = craft.set_saddr(data, pkt, orig_dst)
    if orig_dport != pkt.sport and pkt.sport:
        data = craft.set_sport(data, pkt, orig_dport) or data
    return data


def forget(replies: dict[ReplyKey, Flow], flow: Flow) -> None:
    """A flow left the table: its replies are no longer translated."""
    if flow.nat is not None:
        _, _, new_dst, new_dport = flow.nat
        replies.pop((flow.proto, new_dst, new_dport, flow.src, flow.sport), None)
