"""The policy as a WinDivert filter: which packets the divert backend must take out of the
stack for the engine to see (pure: no I/O).

A packet the filter does not match is never seen by the engine: the stack passes it, as if
the engine had accepted it without a word. So the filter may divert MORE than needed, never
less: every packet the engine could judge other than a plain accept — drop, reject, rewrite,
an alert or a log line, a limit's else-verdict, a block — must match. WinDivert's language
has no CIDR, no sets and no interface names, so:

* exact: protocols, address prefixes (as `>=`/`<=` ranges), port ranges, TCP flags, ICMP
  type and code, banned source addresses (`ip.SrcAddr == …`);
* widened (the condition is left out of the conjunction, which can only match more):
  interfaces, payload, length, dynamic tables other than `banned`, flags or ICMP types on a
  rule that is not only TCP (or only ICMP);
* everything (`true`) whenever the engine needs to see all traffic: a default verdict other
  than accept, `set malformed drop` (any packet may be malformed — the default), any
  detector, a rule with `state` or `fragment`, a rewrite of the destination (its replies must
  be translated back), or a filter that would grow too long.

So narrowing only applies to `set default accept` + `set malformed accept` policies without
detectors: a filter-style policy (drop/reject/alert a few things, pass the rest).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ips.policy.model import ACCEPT, BAN_TABLE, REWRITE, AddrSpec, Policy, PortSpec, RuleSpec

EVERYTHING = "true"
NOTHING = "false"
MAX_TERMS = 192  # comparisons; beyond, "true" (WinDivert compiles at most 256 objects)
MAX_LENGTH = 4000  # characters (eBPFDivert keeps filters up to 4096 bytes)

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
_NAMED = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmpv6"}
# The engine's flag bits (ips/core: F S R P A U) and WinDivert's TCP flag fields.
_FLAG_FIELDS = ((0x01, "Fin"), (0x02, "Syn"), (0x04, "Rst"), (0x08, "Psh"), (0x10, "Ack"),
                (0x20, "Urg"))  # fmt: skip


class _TooWide(Exception):
    """The policy needs every packet: the filter is `true`."""


def divert_filter(
    policy: Policy, banned: Iterable[bytes | str] = (), *, direction: str | None = None
) -> str:
    """The WinDivert filter that diverts what `policy` needs to see, plus every packet from a
    `banned` address (the divert backend enforces blocks itself, in the adapter).

    direction: "inbound" / "outbound" restricts a host (NETWORK layer) handle to one way;
    None diverts both ways (and is the only choice on the NETWORK_FORWARD layer)."""
    try:
        body = _body(policy, banned)
    except _TooWide:
        body = EVERYTHING
    if direction is None:
        return body
    if direction not in ("inbound", "outbound"):
        raise ValueError(f"direction must be inbound, outbound or None, not {direction!r}")
    if body == NOTHING:
        return NOTHING
    return direction if body == EVERYTHING else f"{direction} and ({body})"


def needs_everything(policy: Policy) -> str | None:
    """Why the engine must see every packet under `policy` (None: it need not)."""
    if policy.default_verdict != ACCEPT:
        return f"set default {policy.default_verdict}"
    if policy.malformed_verdict != ACCEPT:
        return f"set malformed {policy.malformed_verdict}"
    if policy.detectors:
        return "detectors watch all traffic"
    for rule in policy.rules:
        if not _relevant(rule):
            continue
        if rule.states:
            return f"{rule.name}: state needs whole flows"
        if rule.fragment:
            return f"{rule.name}: fragments"
        if rule.app:
            return f"{rule.name}: application-layer clauses read whole flows"
        rw = rule.rewrite
        if rule.action == REWRITE and rw is not None and (rw.dport is not None or rw.daddr):
            return f"{rule.name}: rewritten flows' replies are translated back"
    return None


def _relevant(rule: RuleSpec) -> bool:
    """Can this rule make the engine do anything but a silent accept?"""
    if rule.action != ACCEPT or rule.alert or rule.log:
        return True
    return rule.limit is not None and rule.limit.else_action not in (None, ACCEPT)


def _body(policy: Policy, banned: Iterable[bytes | str]) -> str:
    if needs_everything(policy) is not None:
        raise _TooWide
    budget = _Budget()
    clauses: list[str] = []
    for rule in policy.rules:
        if _relevant(rule):
            clause = _rule_clause(rule, budget)
            if clause == EVERYTHING:
                raise _TooWide
            if clause != NOTHING and clause not in clauses:
                clauses.append(clause)
    for addr in banned:
        ip = ipaddress.ip_address(addr)
        field = "ip.SrcAddr" if ip.version == 4 else "ipv6.SrcAddr"
        budget.spend(1)
        clause = f"{field} == {ip}"
        if clause not in clauses:
            clauses.append(clause)
    if not clauses:
        return NOTHING
    text = " or ".join(f"({c})" if " or " in c and len(clauses) > 1 else c for c in clauses)
    if len(text) > MAX_LENGTH:
        raise _TooWide
    return text


class _Budget:
    def __init__(self) -> None:
        self.terms = 0

    def spend(self, n: int) -> None:
        self.terms += n
        if self.terms > MAX_TERMS:
            raise _TooWide


def _and(parts: list[str]) -> str:
    atoms: list[str] = []
    for p in parts:  # a plain conjunction inside is split, so repeated tests appear once
        atoms.extend(p.split(" and ") if "(" not in p and " or " not in p else [p])
    parts = list(dict.fromkeys(p for p in atoms if p != EVERYTHING))
    if NOTHING in parts:
        return NOTHING
    if not parts:
        return EVERYTHING
    return " and ".join(f"({p})" if " or " in p else p for p in parts)


def _or(parts: list[str]) -> str:
    parts = list(dict.fromkeys(p for p in parts if p != NOTHING))
    if EVERYTHING in parts:
        return EVERYTHING
    if not parts:
        return NOTHING
    return " or ".join(f"({p})" if " and " in p and len(parts) > 1 else p for p in parts)


def _rule_clause(rule: RuleSpec, budget: _Budget) -> str:
    families = rule.families
    parts: list[str] = []
    if families == frozenset((4,)):
        parts.append("ip")
    elif families == frozenset((6,)):
        parts.append("ipv6")
    elif not families:
        return NOTHING
    protos = rule.protos
    if protos is not None:
        parts.append(_protocols(protos, families, budget))
    parts.append(_addresses(rule.src, "Src", budget))
    parts.append(_addresses(rule.dst, "Dst", budget))
    parts.append(_ports(rule.sport, "SrcPort", protos, budget))
    parts.append(_ports(rule.dport, "DstPort", protos, budget))
    if rule.flags is not None and protos == frozenset((TCP,)):
        parts.append(_flags(rule.flags, budget))
    if (
        rule.icmp_types is not None
        and protos is not None
        and len(protos) == 1
        and protos <= {ICMP, ICMPV6}
    ):
        parts.append(_icmp(rule.icmp_types, rule.icmp_code, protos, budget))
    # Not expressible here, so left out (wider): interfaces, direction, payload, length,
    # limits (the rate is counted by the engine on what this clause lets through).
    return _and(parts)


def _protocols(protos: frozenset[int], families: frozenset[int], budget: _Budget) -> str:
    alts: list[str] = []
    for p in sorted(protos):
        budget.spend(1)
        if p in _NAMED:
            alts.append(_NAMED[p])
        else:
            # ipv6.NextHdr is the first header only: with extension headers in between the
            # protocol is further on, so any IPv6 packet may be it (wider, never narrower).
            if 4 in families:
                alts.append(f"ip.Protocol == {p}")
            if 6 in families:
                alts.append("ipv6")
    return _or(alts)


def _range(
    field: str, lo: str | int, hi: str | int, budget: _Budget, *, negated: bool = False
) -> str:
    """field in [lo, hi] (or outside it). WinDivert's compiler takes `not` only before a
    single test, not before a parenthesised expression: negations are written out."""
    budget.spend(1 if lo == hi else 2)
    if lo == hi:
        return f"{field} {'!=' if negated else '=='} {lo}"
    if negated:
        return f"{field} < {lo} or {field} > {hi}"
    return f"{field} >= {lo} and {field} <= {hi}"


def _net_ranges(
    nets: tuple[tuple[int, int], ...], version: int, field: str, budget: _Budget, negated: bool
) -> list[str]:
    bits = 32 if version == 4 else 128
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    out = []
    for value, plen in nets:
        if plen == 0:
            out.append(NOTHING if negated else EVERYTHING)
            continue
        host = (1 << (bits - plen)) - 1
        lo = value & ~host & ((1 << bits) - 1)
        out.append(_range(field, str(make(lo)), str(make(lo | host)), budget, negated=negated))
    return out


def _addresses(spec: AddrSpec | None, side: str, budget: _Budget) -> str:
    if spec is None:
        return EVERYTHING
    if spec.dynamic:
        # Members change at run time. `banned` is the block table: the adapter adds its members
        # to the filter itself (and re-opens the handle when they change); any other dynamic
        # table cannot be followed here, so the address condition is left out (wider).
        if spec.negated or side != "Src" or any(name != BAN_TABLE for name in spec.dynamic):
            return EVERYTHING
        if not (spec.nets4 or spec.nets6):
            return NOTHING  # only the ban table: covered by the banned-source clauses
    neg = spec.negated
    join = _and if neg else _or  # not (a or b) == (not a) and (not b)
    alts = []
    # Negated: within the families it speaks of (an IPv4-only `!10/8` matches no IPv6).
    if spec.nets4:
        alts.append(_and(["ip", join(_net_ranges(spec.nets4, 4, f"ip.{side}Addr", budget, neg))]))
    if spec.nets6:
        alts.append(
            _and(["ipv6", join(_net_ranges(spec.nets6, 6, f"ipv6.{side}Addr", budget, neg))])
        )
    return _or(alts)


def _ports(
    spec: PortSpec | None, field: str, protos: frozenset[int] | None, budget: _Budget
) -> str:
    if spec is None:
        return EVERYTHING
    with_ports = [p for p in (TCP, UDP) if protos is None or p in protos]
    join = _and if spec.negated else _or
    alts = []
    for p in with_ports:
        name = _NAMED[p]
        ranges = [
            _range(f"{name}.{field}", lo, hi, budget, negated=spec.negated)
            for lo, hi in spec.ranges
        ]
        alts.append(_and([name, join(ranges)]))
    if protos is None or not set(protos) <= {TCP, UDP}:
        # SCTP, UDP-Lite, DCCP have ports too, which WinDivert cannot read: all of them.
        alts.append("not tcp and not udp")
    return _or(alts)


def _flags(flags: tuple[int, int], budget: _Budget) -> str:
    value, mask = flags
    parts = []
    for bit, name in _FLAG_FIELDS:
        if mask & bit:
            budget.spend(1)
            parts.append(f"tcp.{name} == {1 if value & bit else 0}")
    return _and(["tcp", *parts])


def _icmp(types: frozenset[int], code: int | None, protos: frozenset[int], budget: _Budget) -> str:
    alts = []
    for p in sorted(protos):
        name = _NAMED[p]
        budget.spend(len(types))
        typ = _or([f"{name}.Type == {t}" for t in sorted(types)])
        parts = [name, typ]
        if code is not None:
            budget.spend(1)
            parts.append(f"{name}.Code == {code}")
        alts.append(_and(parts))
    return _or(alts)
