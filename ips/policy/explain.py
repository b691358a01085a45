"""A plain, rule-by-rule matcher that says *why* each rule does or does not match a packet.

It is the reference meaning of the language: `ipsctl explain` prints its reasons, and the
tests check that the indexed matcher of compile.py decides exactly as this one does.
Slow on purpose: clarity over speed, never on the packet path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ips.core.addr import format_addr
from ips.core.app_fields import AppFields
from ips.core.packet import FRAG_LATER, PORT_PROTOS, Packet
from ips.policy.domains import normalize
from ips.policy.model import (
    ACCEPT,
    DROP,
    ENCRYPTED_APPS,
    MATCH,
    UNLIMITED_DEPTH,
    AddrSpec,
    AppCondition,
    IfaceSpec,
    Policy,
    PortSpec,
    RuleSpec,
)
from ips.policy.names import PROTOCOLS

PROTO_NAMES = {v: k for k, v in reversed(list(PROTOCOLS.items()))}


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    rule: RuleSpec
    matched: bool
    reason: str  # why not (or, when matched, what matched)
    pending: bool = False  # an application-layer clause waits for a field not known yet


@dataclass(frozen=True, slots=True)
class AppContext:
    """What the application layer knows of the explained packet's flow: its AppFields (None:
    no application parsing, as for ICMP) and the protocol detection named (None: not yet)."""

    fields: AppFields | None
    proto: str | None


# The flow of a packet explained without L7 context: parsing on, nothing read yet.
NOTHING_KNOWN = AppContext(AppFields(), None)


def app_verdict(conditions: tuple[AppCondition, ...], app: AppContext) -> tuple[str, str]:
    """(state, why) of a rule's application-layer clauses: state "match", "no" or "pending",
    in the order compile.app_conditions_check decides them."""
    fields = app.fields
    if fields is None:
        return "no", "no application-layer parsing on this flow"
    for cond in conditions:
        if cond.kind != "proto":
            continue
        if app.proto is None:
            return "pending", f"pending: app needs {cond.needs}"
        if (app.proto in cond.values) == cond.negated:
            return "no", f"app is {app.proto or 'none'}, not {cond.shown}"
    others = [c for c in conditions if c.kind != "proto"]
    if others and not fields.client_done:
        return "pending", f"pending: {others[0].clause} needs {others[0].needs}"
    for cond in others:
        value = getattr(fields, cond.field)
        if not _app_holds(cond, value):
            shown = ", ".join(value) if isinstance(value, tuple) else value
            return "no", f"{cond.clause} is {_quoted(shown)}, not {cond.shown}"
    return "match", "matches: " + ", ".join(f"{c.clause} {c.shown}" for c in conditions)


def _quoted(value: object) -> str:
    return "none" if value in (None, "") else f'"{value}"'


def _app_holds(cond: AppCondition, value: object) -> bool:
    if cond.kind == "names":
        assert cond.names is not None
        if isinstance(value, tuple):
            hit = any(cond.names.matches(normalize(v)) for v in value)
        else:
            hit = isinstance(value, str) and cond.names.matches(normalize(value))
        return hit != cond.negated
    if cond.kind == "exact":
        if not isinstance(value, str):
            return cond.negated
        folded = value.upper() if cond.field == "http_method" else value.lower()
        return (folded in cond.values) != cond.negated
    if not isinstance(value, str):
        return False
    return cond.text in (value.lower() if cond.nocase else value)


def _proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def _addr_in(spec: AddrSpec, addr: bytes, dynamic_members: dict[str, set[bytes]]) -> bool:
    value = int.from_bytes(addr, "big")
    width = len(addr) * 8
    nets = spec.nets4 if width == 32 else spec.nets6
    hit = any(value >> (width - plen) == net >> (width - plen) for net, plen in nets)
    if not hit:
        hit = any(addr in dynamic_members.get(name, set()) for name in spec.dynamic)
    return hit != spec.negated


def _describe_addr(spec: AddrSpec) -> str:
    if spec.geo is not None:
        return ("!" if spec.negated else "") + spec.geo.shown
    parts = [str(ipaddress.ip_network((net, plen))) for net, plen in (*spec.nets4, *spec.nets6)]
    parts += [f"@{name}" for name in spec.dynamic]
    body = parts[0] if len(parts) == 1 else "{ " + ", ".join(parts[:6])
    if len(parts) > 6:
        body += f", … ({len(parts)} in all)"
    if len(parts) > 1:
        body += " }"
    return ("!" if spec.negated else "") + body


def _describe_ports(spec: PortSpec) -> str:
    parts = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in spec.ranges]
    body = parts[0] if len(parts) == 1 else "{ " + ", ".join(parts[:8]) + " }"
    return ("!" if spec.negated else "") + body


def _iface_ok(spec: IfaceSpec | None, name: str | None) -> bool:
    return spec is None or spec.matches(name)


def rule_mismatch(
    rule: RuleSpec,
    pkt: Packet,
    iif: str | None,
    oif: str | None,
    established: bool,
    dynamic_members: dict[str, set[bytes]] | None = None,
    depth: int = UNLIMITED_DEPTH,
) -> str | None:
    """None when every condition of the rule holds (rate limits aside), else the first reason
    it does not. The packet's payload is taken as the first of its direction of its flow:
    `payload contains` reads its first `depth` bytes (UNLIMITED_DEPTH: all of it)."""
    members = dynamic_members or {}
    if pkt.family not in rule.families:
        fams = "/".join(f"IPv{f}" for f in sorted(rule.families))
        return f"packet is IPv{pkt.family}, the rule is {fams} only"
    if rule.protos is not None and pkt.proto not in rule.protos:
        wanted = ", ".join(_proto_name(p) for p in sorted(rule.protos)[:6])
        return f"protocol {_proto_name(pkt.proto)} is not {wanted}"
    if rule.src is not None and not _addr_in(rule.src, pkt.src, members):
        return f"source {format_addr(pkt.src)} is not in {_describe_addr(rule.src)}"
    if rule.dst is not None and not _addr_in(rule.dst, pkt.dst, members):
        return f"destination {format_addr(pkt.dst)} is not in {_describe_addr(rule.dst)}"
    needs_l4 = rule.sport or rule.dport or rule.flags or rule.contains
    if needs_l4 and pkt.frag == FRAG_LATER:
        return "a non-first fragment has no transport header to match"
    if pkt.proto in PORT_PROTOS:
        if rule.sport is not None and not rule.sport.contains(pkt.sport):
            return f"source port {pkt.sport} is not {_describe_ports(rule.sport)}"
        if rule.dport is not None and not rule.dport.contains(pkt.dport):
            return f"destination port {pkt.dport} is not {_describe_ports(rule.dport)}"
    if not _iface_ok(rule.iif, iif):
        return f"input interface {iif or '(none)'} does not match"
    if not _iface_ok(rule.oif, oif):
        return f"output interface {oif or '(none)'} does not match"
    if rule.anyif is not None and not (rule.anyif.matches(iif) or rule.anyif.matches(oif)):
        return f"neither interface ({iif or '-'}, {oif or '-'}) matches"
    if rule.direction == "in" and iif is None:
        return "packet has no input interface"
    if rule.direction == "out" and oif is None:
        return "packet has no output interface"
    if rule.flags is not None:
        value, mask = rule.flags
        if pkt.flags & mask != value:
            return f"TCP flags {tcp_flag_letters(pkt.flags) or 'none'} do not match"
    if rule.icmp_types is not None:
        if pkt.icmp_type not in rule.icmp_types:
            wanted = ", ".join(map(str, sorted(rule.icmp_types)[:8]))
            return f"ICMP type {pkt.icmp_type} is not {wanted}"
        if rule.icmp_code is not None and pkt.icmp_code != rule.icmp_code:
            return f"ICMP code {pkt.icmp_code} is not {rule.icmp_code}"
    if rule.length is not None:
        op, lo, hi = rule.length
        n = pkt.length
        ok = {
            "=": n == lo,
            "!=": n != lo,
            "<": n < lo,
            "<=": n <= lo,
            ">": n > lo,
            ">=": n >= lo,
            "range": lo <= n <= hi,
        }[op]
        if not ok:
            return f"length {n} does not match"
    if rule.states is not None:
        state = "established" if established else "new"
        if state not in rule.states:
            return f"connection is {state}"
    if rule.fragment and not pkt.frag:
        return "packet is not a fragment"
    payload = pkt.data[pkt.payload_offset :]
    if depth != UNLIMITED_DEPTH:
        payload = payload[:depth]
    for pattern, nocase in rule.contains:
        if pattern not in (payload.lower() if nocase else payload):
            within = (
                ""
                if depth == UNLIMITED_DEPTH
                else f" within the first {size_text(depth)} of its direction of the flow "
                "(payload contains reads no further)"
            )
            return f"payload does not contain {pattern!r}{within}"
    return None


def size_text(size: int) -> str:
    """A size as a policy writes it: 1048576 -> 1M, 8192 -> 8k, 1000 -> 1000 bytes."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size} bytes"


def depth_note(policy: Policy, rule: RuleSpec) -> str:
    """What `ipsctl explain` says of a rule's payload clauses: how far they read."""
    if not rule.contains:
        return ""
    depth = policy.depth_of(rule)
    if depth == UNLIMITED_DEPTH:
        return "; payload contains reads every byte of the flow (depth unlimited)"
    whose = "its depth" if rule.depth is not None else "set payload-depth"
    return (
        f"; payload contains reads only the first {size_text(depth)} of each direction of a "
        f"flow ({whose}): past them it matches nothing, and the flow may be offloaded"
    )


def explain(
    policy: Policy,
    pkt: Packet,
    iif: str | None = None,
    oif: str | None = None,
    established: bool = False,
    dynamic_members: dict[str, set[bytes]] | None = None,
    app: AppContext = NOTHING_KNOWN,
) -> tuple[list[RuleVerdict], RuleSpec | None]:
    """Every rule up to the deciding one, with its reason; and the deciding rule (None: the
    default verdict). `match` rules that hold are listed and the walk goes on.

    A terminal rule whose application-layer clause is pending (its step says pending) is
    the deciding rule — the packet is accepted, "app-pending" — unless the rules after it
    (or the default) give its own accept or drop anyway: then they decide, as in the
    engine (ips/engine/engine.py, Engine._pending)."""
    out: list[RuleVerdict] = []
    pending: RuleSpec | None = None
    for rule in policy.rules:
        depth = policy.depth_of(rule)
        reason = rule_mismatch(rule, pkt, iif, oif, established, dynamic_members, depth)
        encrypted = app.proto in ENCRYPTED_APPS and policy.encrypted_payload_skipped
        if reason is None and rule.contains and encrypted:
            reason = (
                f"the payload of a {app.proto} flow is ciphertext and not read "
                "(set encrypted-payload skip)"
            )
        if reason is not None:
            out.append(RuleVerdict(rule, False, reason))
            continue
        if rule.app:
            state, why = app_verdict(rule.app, app)
            if state == "no":
                out.append(RuleVerdict(rule, False, why))
                continue
            if state == "pending":
                out.append(RuleVerdict(rule, False, why, pending=True))
                if rule.action == MATCH:
                    continue
                if pending is None:
                    pending = rule
                    if rule.action in (ACCEPT, DROP):
                        continue
                    return out, pending
                if rule.action == pending.action:
                    continue
                return out, pending
            note = why
        else:
            note = "matches"
        note += geo_note(rule, pkt)
        if rule.limit is not None:
            note = f"matches while under {rule.limit.text}" + (
                f" (above it: {rule.limit.else_action})" if rule.limit.else_action else ""
            )
        note += depth_note(policy, rule)
        out.append(RuleVerdict(rule, True, note))
        if rule.action != MATCH:
            if pending is not None and rule.action != pending.action:
                return out, pending
            return out, rule
    if pending is not None and policy.default_verdict != pending.action:
        return out, pending
    return out, None


def geo_note(rule: RuleSpec, pkt: Packet) -> str:
    """What put a matching packet's address in a geo clause's networks: `; source
    203.0.113.9 is RU (country { CN, RU })`, `; destination … is AS13335 Cloudflare, Inc.`."""
    notes = []
    for side, spec, addr in (("source", rule.src, pkt.src), ("destination", rule.dst, pkt.dst)):
        if spec is None or spec.geo is None:
            continue
        label = spec.geo.label_of(addr)
        what = label if label is not None else f"not in {spec.geo.shown}"
        notes.append(f"{side} {format_addr(addr)} is {what} ({_describe_addr(spec)})")
    return "".join(f"; {n}" for n in notes)


def tcp_flag_letters(flags: int) -> str:
    return "".join(ch for ch, bit in zip("FSRPAUEW", range(8), strict=True) if flags >> bit & 1)
