"""What can go to the kernel (kernel_reason, the kernel prefix and the merging of
consecutive rules), and one policy rule as nft rules (compile_rule, rule_comment)."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Sequence
from typing import Any

from ips.core.packet import PORT_PROTOS, PROTO_TCP
from ips.policy.model import ACCEPT, DROP, REJECT, Policy, RuleSpec
from ips.translate.nft.constants import COMMENT_PREFIX, HOOKS, MAX_COMMENT, Alt, Expr
from ips.translate.nft.expr import (
    _action_variants,
    _addr_alts,
    _anyif_alts,
    _flags_alts,
    _icmp_alts,
    _iface_alts,
    _length_alts,
    _match,
    _meta,
    _nets_value,
    _port_alts,
    _proto_alts,
    _ranges_value,
)
from ips.translate.nft.sets import StaticSets

# ---- what can go to the kernel ----------------------------------------------------------------


def kernel_reason(rule: RuleSpec) -> str | None:
    """None when the kernel can decide `rule` alone; otherwise why it needs userspace."""
    if rule.action not in (ACCEPT, DROP, REJECT):
        return f"'{rule.action}' needs userspace"
    if rule.alert or rule.log:
        return "alerts and logs come from userspace"
    if rule.states is not None:
        return "'state' is decided by the engine's flow table"
    if rule.contains:
        return "'payload contains' needs userspace"
    if rule.app:
        return "application-layer clauses need userspace"
    if rule.limit is not None:
        return "'limit' is counted by the engine"
    if rule.fragment:
        return "'fragment' is decided by the engine"
    return None


# nft evaluates a chain's rules one by one (≈ 30 ns each here): 10,000 of them cost more per
# packet than the engine's indexed matcher. So the kernel prefix stops at this many nft rules
# (after merging, below); the rules after it are the engine's, whose cost does not grow.
MAX_KERNEL_RULES = 48


def fast_path_split(policy: Policy, hook: str = "forward") -> int:
    """How many leading rules of `policy` go to the kernel (in the chain of `hook`)."""
    return kernel_prefix(policy, hook)[0]


def kernel_prefix(
    policy: Policy, hook: str, static: StaticSets | None = None
) -> tuple[int, list[tuple[str, list[Expr]]]]:
    """(number of leading policy rules decided in the kernel, their nft rules as (comment,
    exprs)). Consecutive rules that differ only in one value — a blocklist of 10,000
    `drop from ADDR` lines, a run of port rules with the same verdict — become one nft rule
    with an anonymous set (same first-match meaning: any of them matching gives the same
    verdict); its comment names their first and last lines. The prefix ends at the first
    rule that needs userspace, or before the rule that would take it past MAX_KERNEL_RULES.
    Large static tables are looked up in named sets (see StaticSets)."""
    if static is None:
        static = StaticSets(policy.tables)
    groups: list[_Group] = []
    split = len(policy.rules)
    for i, rule in enumerate(policy.rules):
        if kernel_reason(rule) is not None:
            split = i
            break
        used = dict(static.used)
        compiled = compile_rule(rule, hook, static)
        if len(compiled) == 1 and groups and groups[-1].take(rule, compiled[0]):
            continue
        if len(groups) + len(compiled) > MAX_KERNEL_RULES:
            static.used = used  # the rule stays out of the kernel, and so do its sets
            split = i
            break
        groups.extend(_Group(rule, exprs) for exprs in compiled)
    return split, [g.result() for g in groups]


class _Group:
    """Consecutive nft rules equal but for the value of one `==` match (at index k)."""

    __slots__ = ("exprs", "file", "first", "k", "kind", "last", "values")

    def __init__(self, rule: RuleSpec, exprs: list[Expr]) -> None:
        self.exprs = exprs
        self.file = rule.span.file
        self.first = self.last = rule
        self.k: int | None = None
        self.kind: str | None = None
        self.values: list[Any] = []

    def take(self, rule: RuleSpec, exprs: list[Expr]) -> bool:
        if rule.span.file != self.file or len(exprs) != len(self.exprs):
            return False
        if self.k is None:
            differ = [k for k, (x, y) in enumerate(zip(self.exprs, exprs, strict=True)) if x != y]
            if len(differ) != 1 or not _mergeable(self.exprs[differ[0]], exprs[differ[0]]):
                return False
            k = differ[0]
            kind = _kind(_elements(self.exprs[k]["match"]["right"]))
            if kind is None:
                return False
            self.k, self.kind = k, kind
            self.values = _elements(self.exprs[k]["match"]["right"])
        k = self.k
        if exprs[:k] != self.exprs[:k] or exprs[k + 1 :] != self.exprs[k + 1 :]:
            return False
        if not _mergeable(self.exprs[k], exprs[k]):
            return False
        new = _elements(exprs[k]["match"]["right"])
        if _kind(new) != self.kind:
            return False
        self.values.extend(new)
        self.last = rule
        return True

    def result(self) -> tuple[str, list[Expr]]:
        comment = rule_comment(self.first)
        if self.last is not self.first:
            head, _, first_line = comment.rpartition(":")
            comment = f"{head}:{first_line}-{self.last.span.line}"[:MAX_COMMENT]
        if self.k is None or self.kind is None:  # set together by take()
            return comment, self.exprs
        match = self.exprs[self.k]["match"]
        merged = _merge_values(self.values, self.kind)
        exprs = [
            *self.exprs[: self.k],
            {"match": {**match, "right": merged}},
            *self.exprs[self.k + 1 :],
        ]
        return comment, exprs


def _mergeable(x: Expr, y: Expr) -> bool:
    mx, my = x.get("match"), y.get("match")
    if not (isinstance(mx, dict) and isinstance(my, dict)):
        return False
    left = mx["left"]
    return (
        mx["op"] == "=="
        and my["op"] == "=="
        and left == my["left"]
        and isinstance(left, dict)
        and ("payload" in left or "meta" in left)
    )


def _kind(values: list[Any]) -> str | None:
    """ports (ints and ranges), ip4 or ip6 (addresses and prefixes); None: not mergeable."""
    kinds = set()
    for v in values:
        if isinstance(v, int) or (isinstance(v, dict) and "range" in v):
            kinds.add("ports")
        elif isinstance(v, str):  # an address; not "@name" (a named set), nor an ifname
            try:
                kinds.add(f"ip{ipaddress.ip_address(v).version}")
            except ValueError:
                return None
        elif isinstance(v, dict) and "prefix" in v:
            kinds.add("ip6" if ":" in v["prefix"]["addr"] else "ip4")
        else:
            return None
    return kinds.pop() if len(kinds) == 1 else None


def _elements(value: Any) -> list[Any]:
    if isinstance(value, dict) and "set" in value:
        return list(value["set"])
    return [value]


def _merge_values(values: list[Any], kind: str) -> object:
    """Addresses/prefixes of one family collapsed, or ports/ranges joined, as a set."""
    if kind == "ports":
        spans = sorted((v, v) if isinstance(v, int) else tuple(v["range"]) for v in values)
        joined: list[list[int]] = []
        for lo, hi in spans:
            if joined and lo <= joined[-1][1] + 1:
                joined[-1][1] = max(joined[-1][1], hi)
            else:
                joined.append([lo, hi])
        return _ranges_value([(lo, hi) for lo, hi in joined])
    nets = []
    for v in values:
        if isinstance(v, str):
            nets.append(ipaddress.ip_network(v))
        else:
            p = v["prefix"]
            nets.append(ipaddress.ip_network(f"{p['addr']}/{p['len']}"))
    return _nets_value(
        [(int(n.network_address), n.prefixlen) for n in nets], 4 if kind == "ip4" else 6
    )


def rule_comment(rule: RuleSpec) -> str:
    """`ipsctl:FILE:LINE`, the comment of every nft rule made from `rule`."""
    text = f"{COMMENT_PREFIX}{rule.span.file}:{rule.span.line}"
    if len(text) > MAX_COMMENT:  # a long path: its last part still says where
        text = f"{COMMENT_PREFIX}{rule.span.file.rsplit('/', 1)[-1]}:{rule.span.line}"
    return text[:MAX_COMMENT]


# ---- one policy rule ----------------------------------------------------------------------------


def _family_specific(rule: RuleSpec) -> bool:
    return bool(rule.src or rule.dst or rule.icmp_types is not None)


def compile_rule(rule: RuleSpec, hook: str, static: StaticSets | None = None) -> list[list[Expr]]:
    """The nft rules (each a list of expressions, verdict included) for a kernel-able rule in
    the chain of `hook`; [] when the rule can never match there. With `static`, large static
    tables are looked up in their named sets (and noted as used there)."""
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r}; one of {', '.join(HOOKS)}")
    has_iif, has_oif = hook != "output", hook != "input"
    if (rule.direction == "in" and not has_iif) or (rule.direction == "out" and not has_oif):
        return []
    iface = [
        _iface_alts(rule.iif, "iifname", has_iif),
        _iface_alts(rule.oif, "oifname", has_oif),
        _anyif_alts(rule.anyif, has_iif, has_oif),
    ]
    common = [
        _port_alts(rule.sport, "sport"),
        _port_alts(rule.dport, "dport"),
        *iface,
        _flags_alts(rule.flags),
        _length_alts(rule.length),
    ]
    families: Sequence[int | None]
    if rule.families == {4, 6} and not _family_specific(rule):
        families = [None]  # one rule for both: no `meta nfproto`
    else:
        families = sorted(rule.families)
    out: list[list[Expr]] = []
    counter: list[Expr] = [{"counter": None}]  # per nft rule: `ipsctl status` sums them
    protos = rule.protos
    if protos is None and (rule.sport or rule.dport):  # the resolver implies these already;
        protos = PORT_PROTOS  # `th` ports are only valid for them, so never leave it open
    if protos is None and rule.flags is not None:
        protos = frozenset({PROTO_TCP})
    for protos_v, action in _action_variants(rule, protos):
        for family in families:
            parts: list[list[Alt]] = []
            if family is not None:
                nfproto = "ipv4" if family == 4 else "ipv6"
                parts.append([[_match("==", _meta("nfproto"), nfproto)]])
            parts.append(_proto_alts(protos_v))
            if family is not None:
                parts.append(_addr_alts(rule.src, family, "saddr", static))
                parts.append(_addr_alts(rule.dst, family, "daddr", static))
                parts.append(_icmp_alts(rule, family))
            parts.extend(common)
            for combo in itertools.product(*parts):
                exprs = [e for alt in combo for e in alt]
                out.append([*exprs, *counter, *action])
    return out
