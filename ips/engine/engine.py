"""The engine: bytes, metadata and a time in; a Decision out. Pure: no sockets, no subprocess,
no clock. The same engine serves inline (NFQUEUE, WinDivert), tap and pcap replay.

    engine = Engine(load_policy("gateway.rules"), never_block=["192.0.2.1/32"])
    decision = engine.handle(packet_bytes, Meta(iif="eth0"), now)
    effects = engine.tick(now)          # about once a second: expiry, flow ends, detections

Detectors (`detect …` lines, ips/detect/) run after the flow table and before the rules. A
detector's `limit` drops the packet there (Decision reason "detector:NAME"); its alerts and
block requests come back among its effects, and the engine hands them at once to its
BlockManager (ips/engine/blocks.py); what the detector makes of the answer — its alert, and
the Block when one was made — rides on the packet's Decision.effects. A block goes straight
into the dynamic table `banned`, so the policy's `drop from @banned` applies from the next
packet on (inline, the daemon also puts it into the nftables set, and the kernel drops the
rest).

The engine's parts: ips/engine/actions.py (what a matching rule does to a packet),
ips/engine/nat.py (destination translation), ips/engine/offload.py (when a flow may go on in
the kernel), ips/engine/blocks.py (who may be banned).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ips.app.alert_fields import alert_app_objects
from ips.app.inspect import AppCounters, AppInspector, NameSource
from ips.app.passive_dns import PassiveDns
from ips.core.addr import format_addr
from ips.core.app_fields import APP_NOT_STARTED
from ips.core.decision import OFFLOAD_BARE_ACKS, OFFLOAD_FLOW, OFFLOAD_HANDSHAKE_ACK, Decision
from ips.core.decode import decode_frame, decode_ipv4, decode_l3
from ips.core.events import (
    Alert,
    Block,
    BlockRequest,
    DetectorEffect,
    Effect,
    FlowEnd,
    MacBlock,
    Unblock,
    format_mac,
)
from ips.core.flow import Flow, FlowTable, FlowTimeouts
from ips.core.link import LinkView
from ips.core.packet import LINKTYPE_RAW, Malformed, Packet
from ips.core.tables import DynamicTable
from ips.detect import Detectors
from ips.engine import nat
from ips.engine.actions import (
    alert_for,
    app_reject_replies,
    apply_rewrite,
    log_for,
    reject_reply,
)
from ips.engine.blocks import BlockManager
from ips.engine.evidence import (
    EVIDENCE_WAIT,
    NO_EVIDENCE,
    SPOOFED,
    UNPROVEN,
    BlockEvidence,
    Judgement,
)
from ips.engine.offload import REOFFLOAD_AFTER, offload_kind
from ips.fast import new_fast_path, new_ticker
from ips.fast.parsers import stream_parsers
from ips.policy.compile import PENDING, CompiledPolicy, CompiledRule
from ips.policy.model import ACCEPT, BAN_TABLE, DROP, REJECT, REWRITE, SPOOF_SID, Policy

if TYPE_CHECKING:
    from ips.fast._fastpath import FastPath


class Meta:
    """Where a packet came from: input/output interface names (None when unknown or not
    applicable), the link type of the bytes (LINKTYPE_RAW: they start at the IP header), and
    the sender's MAC address as the adapter got it (NFQUEUE's NFQA_HWADDR; None: unknown),
    the evidence behind blocks (ips/engine/evidence.py)."""

    __slots__ = ("iif", "linktype", "mac", "oif")

    def __init__(
        self,
        iif: str | None = None,
        oif: str | None = None,
        linktype: int = LINKTYPE_RAW,
        mac: bytes | None = None,
    ) -> None:
        self.iif = iif
        self.oif = oif
        self.linktype = linktype
        self.mac = mac


NO_META = Meta()

# A flow's candidate rules for one direction, kept on the flow (Flow.cache_fwd/cache_rev):
# (policy, iif, oif, the rules to try, whether they allow offload: CompiledPolicy.offload_state,
# the rules to try by TCP flags byte or None: CompiledPolicy.walk). The compiled path
# (ips/fast/) reads the first five.
RuleCache = tuple[
    CompiledPolicy,
    str | None,
    str | None,
    tuple[CompiledRule, ...],
    int,
    list[tuple[CompiledRule, ...] | None] | None,
]


@dataclass
class EngineStats:
    packets: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    not_ip: int = 0
    errors: int = 0
    alerts: int = 0
    nat_translated: int = 0
    table_full: int = 0
    detector_alerts: Counter[str] = field(default_factory=Counter)  # by detector
    detector_drops: Counter[str] = field(default_factory=Counter)  # `limit` drops by detector
    blocks: int = 0  # Block effects (detector and manual)
    mac_blocks: int = 0  # MacBlock effects (the senders of forged packets)
    spoofed: int = 0  # block requests whose address the evidence showed forged
    offloaded: int = 0  # flows handed to the kernel (Decision.offload)
    # Packets accepted because a terminal rule's application-layer clause was pending (the
    # field it reads not known yet) and the rules after it would decide otherwise.
    app_pending: int = 0
    unblocks: int = 0
    # The application layer's counters (ips/app/inspect.py): protocols, events, malformed
    # messages by reason, incomplete messages, reassembly memory returned at flow end. The
    # reassembler's own counters are Engine.app.reassembler.counters (Engine.app_stats()).
    app: AppCounters = field(default_factory=AppCounters)


class Engine:
    """Runs a compiled policy over packets, tracking flows, with the policy's detectors.

    never_block: CIDR strings that no detector may ever ban (the daemon passes the gateway's
    own addresses and its management networks); ValueError on a bad one. Manual blocks
    (`block`) are not checked against it."""

    def __init__(
        self,
        policy: Policy | CompiledPolicy,
        *,
        max_flows: int = 262_144,
        timeouts: FlowTimeouts | None = None,
        id_seed: int = 0,
        never_block: Iterable[str] = (),
        shards: int = 1,
        names: NameSource | None = None,
        fast: bool = True,
    ) -> None:
        # shards: engines that share the traffic (one per queue), each with a share of every
        # destination's sources; per-destination flood rates are divided among them.
        self.shards = max(1, shards)
        self.flows = FlowTable(max_flows=max_flows, timeouts=timeouts, id_seed=id_seed)
        self.stats = EngineStats()
        # reply tuple as seen on the wire -> flow, for flows whose destination was translated
        self._nat_replies: dict[nat.ReplyKey, Flow] = {}
        self.tables: dict[str, DynamicTable] = {}
        self.blocks = BlockManager(never_block)
        self.evidence = BlockEvidence()
        self.detect: Detectors | None = None  # None: the policy has no `detect` line
        # application-layer events of flows offloaded before the inspector finished, handed
        # out at the next tick (the offloading packet's Decision is a shared, effect-free one)
        self._late_events: list[Effect] = []
        # Passive DNS (ips/app/passive_dns.py): the inspector teaches it every DNS answer it
        # reads and asks it the name of each new flow's responder (flow.dst_name).
        self.pdns: NameSource = names if names is not None else PassiveDns()
        # The application layer (ips/app/inspect.py): called right after the flow table for
        # the packets of flows whose app_state is not None; configured by the policy's
        # `set app-layer`, `set app-stream-bytes` and `set app-memcap`.
        # Its TLS and HTTP parsers are the compiled ones (ips/fast/parsers.py) with the
        # compiled path, when built.
        parsers = stream_parsers() if fast else None
        self.app = AppInspector(names=self.pdns, counters=self.stats.app, parsers=parsers)
        # The compiled fast path (ips/fast/): the packets of decided flows that need no
        # Python; None when it is not built, IPSCTL_PURE is set, or fast=False (the tests'
        # reference engine).
        self._fast_path: FastPath | None = None
        self.fast_failures = 0
        self.load(policy)
        self._fast_path = new_fast_path(self, REOFFLOAD_AFTER) if fast else None
        self._fast = self._fast_path.handle if self._fast_path is not None else None
        # The compiled tick (see `tick`), None without the compiled path.
        self._ticker: Callable[[float], list[Effect]] | None = (
            new_ticker(self, self._fast_path) if self._fast_path is not None else None
        )

    # ---- policy ---------------------------------------------------------------------------

    def load(self, policy: Policy | CompiledPolicy) -> None:
        """Swap the running policy. Flows, NAT state and dynamic table members are kept;
        per-flow rule caches are invalidated (they hold the old CompiledPolicy)."""
        compiled = policy if isinstance(policy, CompiledPolicy) else CompiledPolicy(policy)
        for name, table in compiled.tables.items():
            old = self.tables.get(name)
            if old is not None:
                table.members.update(old.members)
        self.tables = compiled.tables
        self.policy = compiled
        self.blocks.configure(compiled.policy, compiled.tables)
        self.evidence.configure(compiled.policy.block_evidence)
        spec = compiled.policy
        self.app.configure(
            enabled=spec.app_layer, limit=spec.app_stream_bytes, memory_cap=spec.app_memcap
        )
        if compiled.policy.detectors:
            self.detect = Detectors(compiled.policy, self.detect, self.shards)
        else:
            self.detect = None
        self._detector_drop: dict[str, Decision[CompiledRule]] = {
            name: Decision(DROP, reason=f"detector:{name}") for name in compiled.policy.detectors
        }
        self._default: Decision[CompiledRule] = Decision(compiled.default_verdict, reason="default")
        self._default_offload: Decision[CompiledRule] | None = (
            Decision(ACCEPT, reason="default", offload=OFFLOAD_FLOW)
            if compiled.default_verdict == ACCEPT
            else None
        )
        self._default_handshake_ack: Decision[CompiledRule] = Decision(
            ACCEPT, reason="default", offload=OFFLOAD_HANDSHAKE_ACK
        )
        self._default_bare_acks: Decision[CompiledRule] = Decision(
            ACCEPT, reason="default", offload=OFFLOAD_BARE_ACKS
        )
        self._default_reject = compiled.default_verdict == REJECT
        self._default_refuses = compiled.default_verdict in (DROP, REJECT)
        self._on_error: Decision[CompiledRule] = Decision(compiled.on_error, reason="error")
        self._malformed_verdict = compiled.malformed_verdict
        self._malformed: dict[str, Decision[CompiledRule]] = {}
        self._not_ip: Decision[CompiledRule] = Decision(ACCEPT, reason="not-ip")
        # Blocked sources are dropped before any rule, as the kernel does inline (its first
        # rule drops the block set's members), so replay and tap judge them the same way.
        self._blocked_table = compiled.tables.get(BAN_TABLE)
        self._blocked: Decision[CompiledRule] = Decision(DROP, reason="blocked")
        self._app_pending: Decision[CompiledRule] = Decision(ACCEPT, reason=APP_PENDING)
        self._dns_rcode = compiled.policy.dns_reject_rcode
        if self._fast_path is not None:
            self._fast_path.refresh(self)

    # ---- per packet -----------------------------------------------------------------------

    def handle(self, data: bytes, meta: Meta = NO_META, now: float = 0.0) -> Decision[CompiledRule]:
        """Decide one packet. Never raises: an internal error gives the `set on-error`
        verdict and is counted."""
        fast = self._fast
        if fast is not None:
            # The compiled path decides what needs no Python (and counts it); otherwise it
            # touched nothing, and hands back the packet decoded, or None (not decoded).
            try:
                decision = fast(data, meta, now)
            except Exception:  # a bug of the fast path: counted, and the packet goes on
                self.fast_failures += 1
                decision = None
            if decision is not None:
                if isinstance(decision, Packet):  # decoded, not decided: Python decides
                    return self.handle_packet(decision, meta, now)
                return decision
        return self.handle_python(data, meta, now)

    def handle_python(
        self, data: bytes, meta: Meta = NO_META, now: float = 0.0
    ) -> Decision[CompiledRule]:
        """`handle` in Python alone: the reference the compiled path is held to, and where
        it sends every packet it does not decide itself."""
        self.stats.packets += 1
        try:
            pkt: Packet | Malformed | None
            if meta.linktype == LINKTYPE_RAW:
                # IPv4 straight to its decoder: one call less for nearly every packet
                pkt = decode_ipv4(data) if data and data[0] >> 4 == 4 else decode_l3(data)
            else:
                pkt = decode_frame(data, meta.linktype)
            if pkt.__class__ is not Packet:
                return self._undecodable(pkt)
            decision = self._decide(pkt, meta, now)
        except Exception:
            self.stats.errors += 1
            decision = self._on_error
        if self.flows._opened is not None:
            self.flows.settle()
        self.stats.verdicts[decision.verdict] += 1
        return decision

    def handle_packet(
        self, pkt: Packet, meta: Meta = NO_META, now: float = 0.0
    ) -> Decision[CompiledRule]:
        """Decide an already decoded packet (pcap replay decodes link layers itself)."""
        self.stats.packets += 1
        try:
            decision = self._decide(pkt, meta, now)
        except Exception:
            self.stats.errors += 1
            decision = self._on_error
        if self.flows._opened is not None:
            self.flows.settle()
        self.stats.verdicts[decision.verdict] += 1
        return decision

    def _undecodable(self, result: object) -> Decision[CompiledRule]:
        if result is None:
            self.stats.not_ip += 1
            return self._not_ip
        reason = result.reason  # type: ignore[attr-defined]
        self.stats.malformed[reason] += 1
        decision = self._malformed.get(reason)
        if decision is None:
            decision = Decision(self._malformed_verdict, reason=f"malformed:{reason}")
            self._malformed[reason] = decision
        return decision

    def _decide(self, pkt: Packet, meta: Meta, now: float) -> Decision[CompiledRule]:
        blocked = self._blocked_table
        if blocked is not None:
            expiry = blocked.members.get(pkt.src)
            if expiry is not None and expiry > now:
                return self._blocked
        mac = meta.mac
        if mac is not None and self.blocks.macs:
            # The sender of forged packets, banned by its MAC (inline, the kernel drops it
            # before the queue; replay and tap judge it the same way).
            expiry = self.blocks.macs.get(mac)
            if expiry is not None and expiry > now:
                return self._blocked
        translated: bytes | None = None
        if self._nat_replies:
            flow_of_reply = self._nat_replies.get(
                (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
            )
            if flow_of_reply is not None:
                # A reply from the translated destination: give it back its original source
                # before anything looks at it, so rules see the connection the client made.
                translated = nat.reply(pkt, flow_of_reply)
                self.stats.nat_translated += 1
                pkt = decode_l3(translated, pkt.vlans)  # type: ignore[assignment]
                if pkt.__class__ is not Packet:
                    return self._undecodable(pkt)
        # The flow is filed once the packet is decided (handle_*: FlowTable.settle), so that
        # a refused first packet costs the table no filing and no removal.
        flow, fwd = self.flows.open(pkt, now)
        effects: list[Effect] | None = None
        if flow.app_state is APP_NOT_STARTED and not self.app.enabled:
            flow.app_state = None  # what the inspector's first look does with parsing off
        elif flow.app_state is not None:
            # The application layer has something to read in this flow (its first packet,
            # or a message still incomplete); a flow past that costs only the test above.
            seen = self.app.inspect(pkt, flow, fwd, now)
            if seen is not None:
                effects = list(seen)
        if mac is not None and fwd and flow.mac is None:
            flow.mac = mac  # who sent the flow's first packet: evidence for a block
        detect = self.detect
        if detect is not None:
            found = detect.observe(pkt, flow, fwd, now)
            if found is not None:
                detected, dropped_by = found
                if detected is not None:
                    settled = self._settle(detect, detected)
                    if settled is not None:
                        effects = settled if effects is None else effects + settled
                if dropped_by is not None:
                    return self._limited(dropped_by, pkt, flow, fwd, effects)
        iif = meta.iif
        oif = meta.oif
        policy = self.policy
        cache: RuleCache | None = flow.cache_fwd if fwd else flow.cache_rev
        if cache is None or cache[0] is not policy or cache[1] != iif or cache[2] != oif:
            rules, offload_safe, walks = policy.candidate_entry(pkt, iif, oif)
            # (policy, interfaces, the rules to try, whether they allow offload, their walks)
            cache = (policy, iif, oif, rules, offload_safe, walks)
            if flow.offloaded:
                flow.back_since = now  # back from the kernel under a new policy (an apply)
            if fwd:
                flow.cache_fwd = cache
                if flow.iif is None and flow.oif is None:
                    # Where the flow came in and goes out, for its record (a cache miss is
                    # the first packet each way, or a new policy: not the per-packet path).
                    flow.iif, flow.oif = iif, oif
            else:
                flow.cache_rev = cache
        walks = cache[5]
        if walks is None:
            rules = cache[3]
        else:
            # Only the rules whose `flags` condition this packet's flags meet (and those
            # without one): the others cannot match (CompiledPolicy.walk).
            walk = walks[pkt.flags]
            rules = walk if walk is not None else policy.walk(cache[3], walks, pkt.flags)
        for rule in rules:
            check = rule.check
            if check is not None:
                held = check(pkt, flow, fwd, now)
                if not held:
                    continue
                if held is PENDING:  # only rules with application-layer clauses say so
                    if not rule.terminal:
                        continue
                    return self._pending(rule, rules, pkt, flow, fwd, now, effects, translated)
            verdict = rule.verdict
            limiter = rule.limiter
            if limiter is not None:
                key = _limit_key(rule.limit_key, pkt, flow)
                if not limiter.take(key, now):
                    else_decision = rule.spec.limit.else_action  # type: ignore[union-attr]
                    if else_decision is None:
                        continue  # over the rate: this rule does not match
                    verdict = else_decision
            rule.hits += 1
            if not rule.terminal:
                effects = self._note(rule, pkt, flow, verdict, now, effects)
                continue
            refuses = rule.refuses if verdict is rule.verdict else verdict != ACCEPT
            if refuses:
                if fwd and flow.pkts_fwd == 1 and not flow.replied:
                    self._discard(flow)  # a refused first packet leaves no connection
                    if verdict == REJECT and detect is not None:
                        effects = self._rejected(detect, pkt, now, effects)
                elif flow.app_state is not None:
                    effects = self._owed(flow, now, effects)
            if effects is None and translated is None and flow.nat is None:
                if verdict is rule.verdict and rule.decision is not None:
                    if verdict == ACCEPT and policy.offload and flow.replied:
                        kind = self._offload_kind(pkt, flow, now)
                        if kind == OFFLOAD_FLOW:
                            return rule.offload_decision  # type: ignore[return-value]
                        if kind == OFFLOAD_HANDSHAKE_ACK:
                            return rule.handshake_ack_decision  # type: ignore[return-value]
                        if kind == OFFLOAD_BARE_ACKS:
                            return rule.bare_acks_decision  # type: ignore[return-value]
                    return rule.decision
                if verdict is not rule.verdict and rule.else_decision is not None:
                    return rule.else_decision
            return self._finish(rule, verdict, pkt, flow, fwd, now, effects, translated)
        if self._default_refuses:
            if fwd and flow.pkts_fwd == 1 and not flow.replied:
                self._discard(flow)
                if self._default_reject and detect is not None:
                    effects = self._rejected(detect, pkt, now, effects)
            elif flow.app_state is not None:
                effects = self._owed(flow, now, effects)
        if effects is None and translated is None and flow.nat is None and not self._default_reject:
            if self._default_offload is not None and policy.offload and flow.replied:
                kind = self._offload_kind(pkt, flow, now)
                if kind == OFFLOAD_FLOW:
                    return self._default_offload
                if kind == OFFLOAD_HANDSHAKE_ACK:
                    return self._default_handshake_ack
                if kind == OFFLOAD_BARE_ACKS:
                    return self._default_bare_acks
            return self._default
        return self._finish(None, self._default.verdict, pkt, flow, fwd, now, effects, translated)

    def _discard(self, flow: Flow) -> None:
        """Forget a flow whose first packet was refused (no end event): its reassembly
        memory goes back, and what the inspector still owed is not written (the events of
        the refused packet itself already rode on its Decision)."""
        flows = self.flows
        if flow is flows._opened:
            flows._discard_opened(flow)  # not filed yet (FlowTable.open): the common case
        else:
            flows.discard(flow)
        if flow.app_state is not None:
            self.app.release(flow, flow.last_seen)

    def _owed(self, flow: Flow, now: float, effects: list[Effect] | None) -> list[Effect] | None:
        """The flow's packet is refused (drop, reject) while its inspection is still open:
        when the client's message was read, the flow will never complete (the next copy of
        the message meets the same rule), so the events the inspector owes it (the `tls`
        event with the SNI that was refused) ride on this Decision instead of waiting for
        the flow's end. ips/app/inspect.py `AppInspector.refused`."""
        owed = self.app.refused(flow, now)
        if owed is None:
            return effects
        if effects is None:
            return list(owed)
        effects.extend(owed)
        return effects

    def _pending(
        self,
        pending: CompiledRule,
        rules: tuple[CompiledRule, ...],
        pkt: Packet,
        flow: Flow,
        fwd: bool,
        now: float,
        effects: list[Effect] | None,
        translated: bytes | None,
    ) -> Decision[CompiledRule]:
        """A terminal rule whose application-layer clause is pending: its verdict depends on
        a field not known yet (the SNI before the ClientHello). The rules after it are tried
        as if it did not match: when they give the same accept or drop, that is the verdict
        whatever the field turns out to be, and they decide (a port the policy drops stays
        dropped, also before any SNI). Otherwise the packet is accepted ("app-pending"), never
        offloaded, so that the flow's first message reaches the inspector and the rule."""
        wanted = pending.verdict
        agreeing = wanted in (ACCEPT, DROP)
        after = rules[rules.index(pending) + 1 :] if agreeing else ()
        for rule in after:
            check = rule.check
            if check is not None:
                held = check(pkt, flow, fwd, now)
                if not held:
                    continue
                if held is PENDING:
                    if rule.terminal and rule.verdict != wanted:
                        break  # two unknowns with different verdicts: wait
                    continue
            verdict = rule.verdict
            limiter = rule.limiter
            if limiter is not None and not limiter.take(_limit_key(rule.limit_key, pkt, flow), now):
                else_action = rule.spec.limit.else_action  # type: ignore[union-attr]
                if else_action is None:
                    continue
                verdict = else_action
            if not rule.terminal:
                rule.hits += 1
                effects = self._note(rule, pkt, flow, verdict, now, effects)
                continue
            if verdict != wanted:
                break
            rule.hits += 1
            if verdict == DROP:
                if fwd and flow.pkts_fwd == 1 and not flow.replied:
                    self._discard(flow)  # a refused first packet leaves no connection
                elif flow.app_state is not None:
                    effects = self._owed(flow, now, effects)
            return self._finish(rule, verdict, pkt, flow, fwd, now, effects, translated)
        else:
            if agreeing and self._default.verdict == wanted:
                if self._default_refuses:
                    if fwd and flow.pkts_fwd == 1 and not flow.replied:
                        self._discard(flow)
                    elif flow.app_state is not None:
                        effects = self._owed(flow, now, effects)
                return self._finish(None, wanted, pkt, flow, fwd, now, effects, translated)
        self.stats.app_pending += 1
        if effects is None and translated is None and flow.nat is None:
            return self._app_pending
        return self._finish(
            None, ACCEPT, pkt, flow, fwd, now, effects, translated, reason=APP_PENDING
        )

    def _offload_kind(self, pkt: Packet, flow: Flow, now: float) -> int:
        """ips/engine/offload.py's choice; an offloaded flow is counted once (a flow that
        comes back is offloaded again without counting: the kernel stamps it anew)."""
        kind = offload_kind(pkt, flow, self.policy, now)
        if kind == OFFLOAD_FLOW and not flow.offloaded:
            flow.offloaded = True
            self.stats.offloaded += 1
            if flow.app_state is not None:
                # Offloaded before the inspector finished (its wait is bounded): what it
                # has read is all it will read, so its events go out at the next tick
                # rather than at the flow's end, and its memory comes back now.
                owed = self.app.release(flow, now)
                if owed:
                    self._late_events.extend(owed)
        return kind

    def _note(
        self,
        rule: CompiledRule,
        pkt: Packet,
        flow: Flow,
        verdict: str,
        now: float,
        effects: list[Effect] | None,
    ) -> list[Effect]:
        """Alerts and log records of a matching rule."""
        if effects is None:
            effects = []
        spec = rule.spec
        # What the application layer knew of the client's message when the rule matched:
        # the SNI, host or query names its L7 clauses read, on the record (as Suricata's
        # alert metadata has the flow's tls/http/dns object).
        app_layer = alert_app_objects(flow.app, flow.app_proto)
        if spec.alert:
            alert = alert_for(rule, pkt, flow.flow_id, verdict, now)
            alert.app_proto = flow.app_proto
            alert.dst_name = flow.dst_name
            alert.app_layer = app_layer
            effects.append(alert)
            self.stats.alerts += 1
        if spec.log:
            record = log_for(rule, pkt, flow.flow_id, verdict, now)
            record.app_proto = flow.app_proto
            record.dst_name = flow.dst_name
            record.app_layer = app_layer
            effects.append(record)
        return effects

    def _settle(self, detect: Detectors, found: list[DetectorEffect]) -> list[Effect] | None:
        """The detectors' effects as they go out: each BlockRequest handed to the
        BlockManager, in the order they were made, and replaced by what its detector makes of
        the answer (its alert, and the Block when one was made); all counted. None when
        nothing is left (a refused block whose alert the alert budget held back)."""
        effects: list[Effect] = []
        for ev in found:
            if isinstance(ev, BlockRequest):
                effects += self._request(detect, ev, ev.time, final=False)
            else:
                effects.append(ev)
        return self._counted(effects)

    def _counted(self, effects: list[Effect]) -> list[Effect] | None:
        stats = self.stats
        for effect in effects:
            if effect.__class__ is Alert:
                stats.alerts += 1
                stats.detector_alerts[effect.category] += 1
            elif effect.__class__ is Block:
                stats.blocks += 1
            elif effect.__class__ is MacBlock:
                stats.mac_blocks += 1
        return effects or None

    def _request(
        self, detect: Detectors, request: BlockRequest, now: float, final: bool
    ) -> list[Effect]:
        """One block request: the evidence that its address sent the packets is weighed
        (ips/engine/evidence.py); the BlockManager is asked only when the mode lets that
        evidence block. An unproven request may wait for the neighbour table (held, judged
        again at each tick until EVIDENCE_WAIT). A forged address is never blocked: a
        "spoofed source" alert, and the sender's MAC is banned where it can be named."""
        evidence = self.evidence
        found = evidence.judge(request.addr, request.flow, self.flows.handshakes)
        if not final and evidence.may_wait(found):
            evidence.held.append((request, now + EVIDENCE_WAIT))
            return []
        evidence.count(found)
        extra = request.alert.extra
        if extra is not None and found.why not in NO_EVIDENCE:
            extra["evidence"] = f"{found.verdict}:{found.why}"
        # A protected address (trusted, never-block) is refused for that reason whatever the
        # evidence; a forged one still names its sender below.
        if evidence.allows(found.verdict) or self.blocks.protected(request.addr, now):
            block, status = self.blocks.request(
                request.addr, now, request.ttl, request.detector, request.reason
            )
        else:
            block, status = None, found.verdict
        out = detect.answered(request, block, status)
        if found.verdict == SPOOFED:
            self.stats.spoofed += 1
            out += self._spoofed(request, found, now)
        return out

    def _spoofed(self, request: BlockRequest, found: Judgement, now: float) -> list[Effect]:
        """The "spoofed source" alert of a forged address, and the MAC block of its sender
        when it is a host of the segment (never a router, never the owner of a protected
        address)."""
        view = self.evidence.view
        mac_block: MacBlock | None = None
        status = "unnamed"
        if found.nameable and found.sender is not None and view is not None:
            mac_block, status = self.blocks.request_mac(
                found.sender, request.addr, now, request.ttl, request.detector, found.why,
                view.routers, view.owners(found.sender),
                f"{request.detector}: forged source {format_addr(request.addr)}",
            )  # fmt: skip
        if mac_block is None and not self.evidence.paced(now):
            return []
        cause = request.alert
        details: dict[str, object] = {
            "claimed": format_addr(request.addr),
            "evidence": found.why,
            "detector": request.detector,
            "mac_block": status,
        }
        if found.sender is not None:
            details["sender_mac"] = format_mac(found.sender)
        if found.owner is not None:
            details["owner_mac"] = format_mac(found.owner)
        if mac_block is not None:
            details["ttl"] = mac_block.ttl
        alert = Alert(
            now, cause.flow_id, cause.family, cause.proto, request.addr, cause.sport,
            cause.dst, cause.dport,
            action="blocked" if status in ("added", "already") else "allowed",
            signature_id=SPOOF_SID,
            signature=f"ipsctl spoofed source: {request.detector} traffic with a forged "
                      f"source address ({found.why})",
            severity=1, category="spoofed-source", rule_name=cause.rule_name, extra=details,
        )  # fmt: skip
        alert.icmp, alert.app_proto, alert.dst_name = cause.icmp, cause.app_proto, cause.dst_name
        return [alert] if mac_block is None else [alert, mac_block]

    def set_link_view(self, view: LinkView | None) -> None:
        """The segments as the kernel knows them (neighbour table, on-link prefixes, routers'
        MACs), given by the daemon's worker and refreshed by it; None: no view (tap, replay)."""
        self.evidence.view = view

    def _rejudge(self, detect: Detectors, now: float) -> list[Effect]:
        """Held requests judged again with the latest link view; those still unproven wait
        until their deadline, then take that answer."""
        held = self.evidence.held
        if not held:
            return []
        self.evidence.held = []
        out: list[Effect] = []
        for request, deadline in held:
            if request.detector not in detect.by_name:
                continue  # its detector left the policy (an apply): nothing to answer
            found = self.evidence.judge(
                request.addr,
                request.flow,
                self.flows.handshakes,
            )
            if found.verdict == UNPROVEN and now < deadline:
                self.evidence.held.append((request, deadline))
                continue
            out += self._request(detect, request, now, final=True)
        return out

    def _rejected(
        self, detect: Detectors, pkt: Packet, now: float, effects: list[Effect] | None
    ) -> list[Effect] | None:
        """Our own reject answers a probe with a failure (as the target's reset would)."""
        found = detect.rejected(pkt, now)
        if found is None:
            return effects
        settled = self._settle(detect, found)
        if settled is None:
            return effects
        return settled if effects is None else effects + settled

    def _limited(
        self, name: str, pkt: Packet, flow: Flow, fwd: bool, effects: list[Effect] | None
    ) -> Decision[CompiledRule]:
        """A detector's `limit` drops the packet, before the rules."""
        self.stats.detector_drops[name] += 1
        if fwd and flow.pkts_fwd == 1 and not flow.replied:
            self._discard(flow)  # as for a refused first packet: no connection
        if effects is None:
            return self._detector_drop[name]
        return Decision(DROP, reason=f"detector:{name}", effects=effects)

    def _finish(
        self,
        rule: CompiledRule | None,
        verdict: str,
        pkt: Packet,
        flow: Flow,
        fwd: bool,
        now: float,
        effects: list[Effect] | None,
        translated: bytes | None,
        reason: str = "default",
    ) -> Decision[CompiledRule]:
        """The slow path of a decision: effects, rewrites, translation, reject replies."""
        if rule is not None and (rule.spec.alert or rule.spec.log):
            effects = self._note(rule, pkt, flow, verdict, now, effects)
        data = translated
        reply = peer_reply = None
        if verdict == REJECT:
            if rule is not None and rule.spec.app:
                reply, peer_reply = app_reject_replies(rule, pkt, self._dns_rcode)
            else:
                reply = reject_reply(rule, pkt)
            data = None
        elif verdict == REWRITE and rule is not None:
            if fwd and flow.nat is None:
                nat.start(self._nat_replies, rule, pkt, flow)
            rewritten = apply_rewrite(rule, pkt)
            if rewritten is not None:
                data = rewritten
        if verdict in (ACCEPT, REWRITE) and flow.nat is not None and fwd:
            data = nat.forward(data if data is not None else pkt.data, pkt, flow)
            self.stats.nat_translated += 1
        if verdict == DROP:
            data = None
        if verdict == REWRITE and data is None:
            verdict = ACCEPT  # nothing to change on this packet (e.g. no pattern found)
        return Decision(
            verdict,
            rule,
            data=data,
            reply=reply,
            peer_reply=peer_reply,
            effects=effects if effects is not None else (),
            reason="" if rule is not None else reason,
        )

    # ---- blocks -------------------------------------------------------------------------------

    def block(self, addr: bytes, now: float, ttl: float, reason: str = "manual") -> Block | None:
        """An operator's block (`ipsctl blocks add`): into the table `banned` for `ttl`
        seconds. Not checked against trusted, never_block or the ban budget, and not an
        offense for escalation. None when the policy has no table `banned` or it is full."""
        block = self.blocks.block(addr, now, ttl, reason)
        if block is not None:
            self.stats.blocks += 1
        return block

    def unblock(self, addr: bytes, now: float, reason: str = "manual") -> Unblock | None:
        """Lift a block (`ipsctl blocks del`); None when `addr` was not blocked. A manual
        unblock also forgets the address's offenses (escalation starts over)."""
        unblock = self.blocks.unblock(addr, now, reason)
        if unblock is not None:
            self.stats.unblocks += 1
        return unblock

    def unblock_mac(self, mac: bytes) -> bool:
        """Forget the ban of a MAC (`ipsctl blocks del MAC`; the kernel's set is the
        supervisor's): its next forged packet bans it again. False when it was not banned."""
        return self.blocks.forget_mac(mac)

    def unblock_macs(self) -> int:
        """Forget every MAC ban (`ipsctl blocks flush`); returns how many there were."""
        return self.blocks.forget_macs()

    def adopt_block(self, addr: bytes, expires_at: float) -> bool:
        """A block already in the kernel's set when the daemon starts: into the table, to
        expire (Unblock) at `expires_at`; it counts as one offense for escalation."""
        return self.blocks.adopt(addr, expires_at)

    def adopt_mac_block(self, mac: bytes, expires_at: float) -> bool:
        """A MAC ban already in the kernel's set (banned_ether) when the daemon starts: held
        until `expires_at`, as if this engine had made it."""
        return self.blocks.adopt_mac(mac, expires_at)

    # ---- time -------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """Expire flows, table entries, blocks and NAT state; weigh the scan probes whose
        answer is overdue. Returns the events: FlowEnd, Unblock, and detections (Alert,
        Block). Call it about once a second: scans of unanswered probes are found here.

        With the compiled path, its Ticker (ips/fast/_fastpath.pyx) makes this tick: the
        same calls in the same order, the parts it knows done in compiled code (each part's
        `due`, the floods' bucket passes, the windows' drops, the scans' quiet weighing, the
        flow table's expiry); `_tick_in_python` is the reference it is held to
        (tests/pure/test_tick_compiled.py)."""
        ticker = self._ticker
        if ticker is not None:
            return ticker(now)
        return self._tick_in_python(now)

    def _tick_in_python(self, now: float) -> list[Effect]:
        """Engine.tick in Python (see `tick`)."""
        late = self._late_events
        events: list[Effect] = []
        if late:
            events += late
            late.clear()
        # Each part is asked first whether it has anything due (FlowTable.due, BlockManager.
        # due, and in Detectors.tick each detector's `due`): most ticks have nothing due, and
        # cost those checks alone. Whatever is due is done as it always was, in this order.
        flows = self.flows
        if flows.due(now):
            for flow in flows.pop_evicted():
                self._flow_end(flow, now, events)
            for flow in flows.expire(now):
                self._flow_end(flow, now, events)
        blocks = self.blocks
        banned = blocks.table
        for table in self.tables.values():
            if table is not banned and table.members:
                table.expire(now)
        if blocks.due(now):
            unblocks = blocks.expire(now)
            blocks.expire_macs(now)
            self.stats.unblocks += len(unblocks)
            events += unblocks
        detect = self.detect
        if detect is not None:
            if self.evidence.held:  # requests held for evidence, judged again
                settled = self._counted(self._rejudge(detect, now))
                if settled is not None:
                    events += settled
            found = detect.tick(now)
            if found:
                settled = self._settle(detect, found)
                if settled is not None:
                    events += settled
        return events

    def drain(self, now: float) -> list[Effect]:
        """End every flow (end of a capture, shutdown)."""
        events: list[Effect] = list(self._late_events)
        self._late_events.clear()
        for flow in self.flows.pop_evicted():
            self._flow_end(flow, now, events)
        for flow in self.flows.drain():
            self._flow_end(flow, now, events)
        return events

    def _flow_end(self, flow: Flow, now: float, events: list[Effect]) -> None:
        """A flow left the table: the application events it still owed (its reassembly
        memory returned), then its FlowEnd."""
        nat.forget(self._nat_replies, flow)
        if flow.app_state is not None:
            owed = self.app.release(flow, now)
            if owed is not None:
                events += owed
        events.append(FlowEnd(flow, getattr(flow, "end_reason", "timeout") or "timeout", now))

    def app_stats(self) -> dict[str, object]:
        """The application layer's counters, for `ipsctl status` and Prometheus."""
        counters = self.stats.app
        reassembler = self.app.reassembler
        return {
            "enabled": self.app.enabled,
            "protocols": dict(counters.protocols),
            "events": dict(counters.events),
            "malformed": dict(counters.malformed),
            "incomplete": dict(counters.incomplete),
            "reassembly": {
                **reassembler.counters,
                "memory": reassembler.used,
                "memory_cap": reassembler.memory_cap,
                "released_flows": counters.released_flows,
                "released_bytes": counters.released_bytes,
            },
            "passive_dns": _pdns_stats(self.pdns),
        }


def _pdns_stats(pdns: NameSource) -> dict[str, int]:
    if not isinstance(pdns, PassiveDns):
        return {}  # another source of names (a test's): nothing of ours to count
    return {
        "entries": len(pdns),
        "learned": pdns.learned,
        "evicted": pdns.evicted,
        "expired": pdns.expired,
    }


# Decision.reason of a packet accepted while a terminal rule's L7 clause is pending.
APP_PENDING = "app-pending"


def _limit_key(per: str, pkt: Packet, flow: Flow) -> object:
    if per == "src":
        return pkt.src
    if per == "dst":
        return pkt.dst
    if per == "flow":
        return flow.flow_id
    return None
