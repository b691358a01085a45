"""The offload choice: may an accepted packet's flow go on in the kernel, without the queue?

The policy says which rules allow it (CompiledPolicy.offload_state, cached per flow and
direction: never, now, once the L7 fields are final, or later — once each rule that holds the
flow back is past its payload depth or ruled out by the flow's application protocol, as its
offload plan says); this module says when in a flow's life it may happen, and weighs a plan
against the flow (needs_met).
"""

from __future__ import annotations

from ips.core.decision import OFFLOAD_BARE_ACKS, OFFLOAD_FLOW, OFFLOAD_HANDSHAKE_ACK
from ips.core.flow import TCP_ESTABLISHED, TCP_SYN_RECV, Flow
from ips.core.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Packet,
)
from ips.policy.compile import OFFLOAD_LATER, OFFLOAD_WHEN_APP_DONE, CompiledPolicy, OffloadNeed
from ips.policy.model import ENCRYPTED_APPS, UNLIMITED_DEPTH

REOFFLOAD_AFTER = 1.0  # seconds a flow that came back at an apply stays with the engine
# While the inspector reads a flow's first bytes, offload waits, so that events carry both
# sides (the certificate, the HTTP status) and come while the flow lives. It waits at most
# until the flow has carried this many times `app-stream-bytes` (both directions, headers
# included): a flow whose other side stays silent (an upload) is not kept from the kernel.
APP_OFFLOAD_WAIT = 4
_ICMP_ECHOS = (0, 8)  # echo reply, request
_ICMPV6_ECHOS = (128, 129)  # echo request, reply
_SYN_ACK = TCP_SYN | TCP_ACK
_SYN_ACK_FIN_RST = TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST


def app_final(flow: Flow) -> bool:
    """Whether the L7 fields rules read are final: the protocol named, and the client's
    first message read (or no application parsing on the flow at all)."""
    app = flow.app
    return flow.app_proto is not None and (app is None or app.client_done)


def app_reading(flow: Flow, policy: CompiledPolicy) -> bool:
    """Whether the inspector still reads the flow's first bytes and offload should wait for
    it (bounded by APP_OFFLOAD_WAIT)."""
    if flow.app_state is None:
        return False
    limit = policy.policy.app_stream_bytes * APP_OFFLOAD_WAIT
    return flow.bytes_fwd + flow.bytes_rev < limit


def needs_met(needs: tuple[OffloadNeed, ...], flow: Flow, fwd: bool) -> bool:
    """Whether every candidate rule of one direction that held offload back has let go
    (CompiledPolicy.offload_plan): its application protocol rules it out, or it is past its
    `payload contains` depth in this direction and (for a rule with L7 clauses) its fields
    are final."""
    proto = flow.app_proto
    seen = flow.payload_fwd if fwd else flow.payload_rev
    for protos, encrypted_out, depth, wants_app in needs:
        if proto is not None:  # named ("" for a flow without an application layer)
            if protos is not None and proto not in protos:
                continue  # its L7 clauses name another protocol: it can never match
            if encrypted_out and proto in ENCRYPTED_APPS:
                continue  # its payload is not read on an encrypted protocol
        if depth is None:
            if not wants_app:
                return False  # only a protocol could rule it out, and none did
        elif depth == UNLIMITED_DEPTH or seen < depth:
            return False
        if wants_app and not app_final(flow):
            return False
    return True


def offload_kind(pkt: Packet, flow: Flow, policy: CompiledPolicy, now: float) -> int:
    """An accepted packet of a replied flow: may the flow's later packets skip the engine?
    OFFLOAD_FLOW: TCP once established and carrying data (the portscan detector has seen
    the handshake and that the connection was used), UDP once answered (the UDP flood
    detector counts unanswered datagrams only), an ICMP echo once answered (the kernel
    gives the ICMP flood detector every echo beyond a small per-address budget: see
    ips/translate/nft/). OFFLOAD_HANDSHAKE_ACK: the responder's SYN+ACK — the
    initiator's bare ACK that follows tells the engine nothing, so the kernel may pass
    it; the next packet (data, or a FIN or reset) it passes too, and sends us a copy,
    which the engine handles like a queued one (its decision is then no verdict, and
    the flow is offloaded as with OFFLOAD_FLOW). OFFLOAD_BARE_ACKS: a SYN+ACK as
    above while the inspector still reads the flow's first bytes or an L7 clause waits
    for them: the kernel passes the bare ACKs, and the next packet comes to the queue
    (a bare ACK carries no bytes to read and no field to wait for). 0: nothing else, and
    nothing when a candidate rule of either direction needs to see later packets.

    The caller marks the flow offloaded on OFFLOAD_FLOW (and counts it, once per flow)."""
    if flow.nat is not None:
        return 0
    proto = pkt.proto
    kind = OFFLOAD_FLOW
    if proto == PROTO_TCP:
        if flow.tcp_state == TCP_SYN_RECV and pkt.flags & _SYN_ACK_FIN_RST == _SYN_ACK:
            kind = OFFLOAD_HANDSHAKE_ACK
        elif flow.tcp_state != TCP_ESTABLISHED or pkt.payload_offset >= pkt.length:
            return 0
    elif proto in (PROTO_ICMP, PROTO_ICMPV6):
        if pkt.icmp_type not in (_ICMP_ECHOS if proto == PROTO_ICMP else _ICMPV6_ECHOS):
            return 0
    elif proto != PROTO_UDP:
        return 0
    fwd_cache, rev_cache = flow.cache_fwd, flow.cache_rev
    if fwd_cache is None or rev_cache is None:
        return 0
    if fwd_cache[0] is not policy or rev_cache[0] is not policy:
        return 0
    fwd_state, rev_state = fwd_cache[4], rev_cache[4]  # CompiledPolicy.offload_state
    if not (fwd_state and rev_state):
        return 0
    # A candidate rule reads L7 fields not known yet: the decision waits (but not for the
    # handshake's bare ACKs, which carry none).
    app_pending = OFFLOAD_WHEN_APP_DONE in (fwd_state, rev_state) and not app_final(flow)
    if app_pending and kind != OFFLOAD_HANDSHAKE_ACK:
        return 0
    if fwd_state == OFFLOAD_LATER and not needs_met(policy.plan_of(fwd_cache[3]), flow, True):
        return 0  # a payload rule not yet past its depth this way, or the like
    if rev_state == OFFLOAD_LATER and not needs_met(policy.plan_of(rev_cache[3]), flow, False):
        return 0
    if kind == OFFLOAD_HANDSHAKE_ACK:
        # While the inspector reads (the events want the flow's first bytes), the packet
        # after the bare ACKs comes to the queue instead of being copied.
        return OFFLOAD_BARE_ACKS if app_pending or app_reading(flow, policy) else kind
    if app_reading(flow, policy):
        return 0  # the events want the rest of the flow's first bytes
    if now - flow.back_since < REOFFLOAD_AFTER:
        # Back since an apply: not yet. The swap's pause queued its packets; offloaded at
        # once, its next ones would overtake those still waiting (TCP reads reordering as
        # loss and resends). Once the queue has caught up, it goes back to the kernel.
        return 0
    return kind
