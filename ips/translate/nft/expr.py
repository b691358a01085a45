"""Expression helpers: nft JSON matches and values, the condition builders of one policy
rule (each gives alternatives, one nft rule each) and its actions."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from ips.core.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from ips.policy.model import ACCEPT, DROP, AddrSpec, IfaceSpec, PortSpec, RuleSpec
from ips.translate.nft.constants import ACCEPT_MARK, PROTO_UDPLITE, Alt, Expr
from ips.translate.nft.sets import StaticSets, _ipv4_text, _ipv6_text, set_name

# ---- expression helpers -----------------------------------------------------------------------


def _match(op: str, left: object, right: object) -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def _one_or_set(values: Sequence[object]) -> object:
    return values[0] if len(values) == 1 else {"set": values}


def _nets_value(nets: Iterable[tuple[int, int]], family: int) -> object:
    """Networks as an nft value: merged (nft refuses overlapping intervals in some versions),
    a plain address for a host, a prefix otherwise, a set for several."""
    cls = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
    width = 32 if family == 4 else 128
    objs = [cls(((net >> (width - plen)) << (width - plen), plen)) for net, plen in nets]
    values: list[object] = []
    for n in ipaddress.collapse_addresses(objs):  # type: ignore[type-var]
        if n.prefixlen == width:
            values.append(str(n.network_address))
        else:
            values.append({"prefix": {"addr": str(n.network_address), "len": n.prefixlen}})
    return _one_or_set(values)


def _ranges_value(ranges: Sequence[tuple[int, int]]) -> object:
    return _one_or_set([lo if lo == hi else {"range": [lo, hi]} for lo, hi in ranges])


# Each condition builder returns alternatives: a list of Alt, any of which may hold (one nft
# rule each). [[]] means "no condition", [] means "can never hold" (the rule is left out).
ALWAYS: list[Alt] = [[]]
NEVER: list[Alt] = []


def _addr_alts(
    spec: AddrSpec | None, family: int, field: str, static: StaticSets | None = None
) -> list[Alt]:
    """An address constraint within one family. As the engine (explain._addr_in): the address
    is in the family's static networks or in a dynamic table, inverted when negated. The
    networks of a large static table are looked up in its named sets (with `static`)."""
    if spec is None:
        return ALWAYS
    proto = "ip" if family == 4 else "ip6"
    left = _payload(proto, field)
    nets: Sequence[tuple[int, int]] = spec.nets4 if family == 4 else spec.nets6
    everything = any(plen == 0 for _, plen in nets)
    lookups: list[tuple[object, str]] = []  # (what is looked up, the set)
    large = []
    if static is not None:
        large = [t for t in (static.family(name, family) for name in spec.tables) if t]
    if static is not None and large and not everything:
        inside = frozenset().union(*(t.nets for t in large)) if len(large) > 1 else large[0].nets
        nets = [n for n in nets if n not in inside]
        width = 32 if family == 4 else 128
        for table in large:
            for named in table.sets:
                static.used[named.name] = named
                key: object = left
                if named.plen < width:
                    mask = ((1 << named.plen) - 1) << (width - named.plen)
                    key = {"&": [left, _ipv4_text(mask) if family == 4 else _ipv6_text(mask)]}
                lookups.append((key, f"@{named.name}"))
    lookups += [(left, f"@{set_name(name, family)}") for name in spec.dynamic]
    if not spec.negated:
        if everything:
            return ALWAYS
        alts: list[Alt] = []
        if nets:
            alts.append([_match("==", left, _nets_value(nets, family))])
        alts += [[_match("==", k, s)] for k, s in lookups]  # "or": one nft rule per set
        return alts
    if everything:
        return NEVER
    conds = [_match("!=", left, _nets_value(nets, family))] if nets else []
    conds += [_match("!=", k, s) for k, s in lookups]  # not in any: all of them at once
    return [conds]


def _port_alts(spec: PortSpec | None, field: str) -> list[Alt]:
    """`th sport/dport`: valid for TCP, UDP, SCTP and UDP-Lite, which the rule's `meta
    l4proto` already requires (ports imply those protocols). On a non-first fragment the
    load fails and the rule does not match, as in the engine."""
    if spec is None:
        return ALWAYS
    full = spec.ranges == ((0, 65535),)
    if not spec.ranges or full:
        return ALWAYS if (full != spec.negated) else NEVER
    op = "!=" if spec.negated else "=="
    return [[_match(op, _payload("th", field), _ranges_value(spec.ranges))]]


def _proto_alts(protos: frozenset[int] | None) -> list[Alt]:
    if protos is None or len(protos) >= 256:
        return ALWAYS
    if not protos:
        return NEVER
    if len(protos) > 128:  # `proto !{…}`: the complement is shorter
        rest = sorted(set(range(256)) - protos)
        return [[_match("!=", _meta("l4proto"), _one_or_set(list(rest)))]]
    return [[_match("==", _meta("l4proto"), _one_or_set(sorted(protos)))]]


def _iface_cond(key: str, spec: IfaceSpec) -> Expr:
    """iifname/oifname; a trailing '*' is nft's own wildcard, also inside a set."""
    return _match("!=" if spec.negated else "==", _meta(key), _one_or_set(list(spec.names)))


def _iface_alts(spec: IfaceSpec | None, key: str, present: bool) -> list[Alt]:
    """One interface constraint. When the hook has no such interface (no input interface in
    `output`, no output interface in `input`) the answer is known now, as the engine gives
    None for it; that also avoids nft's "empty string is not allowed"."""
    if spec is None:
        return ALWAYS
    if not present:
        return ALWAYS if spec.matches(None) else NEVER
    if not spec.names:  # an empty set: matches nothing, negated everything
        return ALWAYS if spec.negated else NEVER
    return [[_iface_cond(key, spec)]]


def _anyif_alts(spec: IfaceSpec | None, has_iif: bool, has_oif: bool) -> list[Alt]:
    """`on IF`: the input or the output interface matches — an "or", so two nft rules."""
    if spec is None:
        return ALWAYS
    if not spec.names:
        return ALWAYS if spec.negated else NEVER
    if (not has_iif or not has_oif) and spec.matches(None):
        return ALWAYS  # the missing side already matches (negated spec)
    alts: list[Alt] = []
    if has_iif:
        alts.append([_iface_cond("iifname", spec)])
    if has_oif:
        alts.append([_iface_cond("oifname", spec)])
    return alts


def _icmp_alts(rule: RuleSpec, family: int) -> list[Alt]:
    if rule.icmp_types is None:
        return ALWAYS
    proto = "icmp" if family == 4 else "icmpv6"
    wanted = PROTO_ICMP if family == 4 else PROTO_ICMPV6
    if rule.protos != {wanted}:
        # the resolver allows `type` only with exactly one of icmp/icmpv6 (and so one family)
        return NEVER
    types = rule.icmp_types
    conds: Alt = []
    if not types:
        return NEVER
    if len(types) < 256:
        if len(types) > 128:
            rest = sorted(set(range(256)) - types)
            conds.append(_match("!=", _payload(proto, "type"), _one_or_set(list(rest))))
        else:
            conds.append(_match("==", _payload(proto, "type"), _one_or_set(sorted(types))))
    if rule.icmp_code is not None:
        conds.append(_match("==", _payload(proto, "code"), rule.icmp_code))
    return [conds]


def _flags_alts(flags: tuple[int, int] | None) -> list[Alt]:
    if flags is None:
        return ALWAYS
    value, mask = flags
    if not mask:
        return ALWAYS
    left = {"&": [_payload("tcp", "flags"), mask]}
    return [[_match("==", left, value)]]


_LENGTH_OPS = {"=": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _length_alts(length: tuple[str, int, int] | None) -> list[Alt]:
    """`meta length` is skb->len, the IP packet's length at these hooks (as the engine's
    Packet.length). Caveat: a GRO-merged packet is longer than any one on the wire."""
    if length is None:
        return ALWAYS
    op, lo, hi = length
    if op == "range":
        return [[_match("==", _meta("length"), {"range": [lo, hi]})]]
    return [[_match(_LENGTH_OPS[op], _meta("length"), lo)]]


# ---- actions ----------------------------------------------------------------------------------

_ACCEPT_ACTION: list[Expr] = [
    {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), ACCEPT_MARK]}}},
    {"accept": None},
]
_UDPS = frozenset({PROTO_UDP, PROTO_UDPLITE})
# The answer of a reject whose code was not given, per kind, as ips.core.craft gives it:
# port unreachable for UDP and UDP-Lite, administratively prohibited for anything else.
_DEFAULT_CODES = {
    "icmp": (3, 13),
    "icmpv6": (4, 1),
    "icmpx": (1, 3),  # nft's icmpx numbering: port-unreachable, admin-prohibited
}


def _reject(kind: str, code: int) -> Expr:
    return {"reject": {"type": kind, "expr": code}}


def _action_variants(
    rule: RuleSpec, protos: frozenset[int] | None
) -> list[tuple[frozenset[int] | None, list[Expr]]]:
    """(protocols, statements) in order: one entry per different answer. A later variant
    keeps the rule's full protocol set: the packets of an earlier variant's protocols that
    meet the other conditions were already taken by it."""
    if rule.action == ACCEPT:
        return [(protos, _ACCEPT_ACTION)]
    if rule.action == DROP:
        return [(protos, [{"drop": None}])]
    kind, code = rule.reject_with if rule.reject_with else (None, None)
    if kind == "tcp-reset":
        return [(protos, [{"reject": {"type": "tcp reset"}}])]
    if kind is not None and code is not None:
        return [(protos, [_reject(kind, code)])]  # codes are each kind's numbers, as nft's
    variants: list[tuple[frozenset[int] | None, list[Expr]]] = []
    covered: set[int] = set()

    def narrow(wanted: frozenset[int]) -> frozenset[int]:
        return wanted if protos is None else protos & wanted

    if kind is None:  # TCP gets a reset
        tcp = narrow(frozenset({PROTO_TCP}))
        if tcp:
            variants.append((tcp, [{"reject": {"type": "tcp reset"}}]))
            covered |= tcp
        kind = "icmpx"
    port_code, other_code = _DEFAULT_CODES[kind]
    udp = narrow(_UDPS)
    if udp:
        variants.append((udp, [_reject(kind, port_code)]))
        covered |= udp
    if protos is None or not protos <= covered:
        variants.append((protos, [_reject(kind, other_code)]))
    return variants
