"""Floods absorbed in the kernel: meters for `limit … per src else drop`, and the SYN proxy."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from ips.policy.model import DROP, Policy, RuleSpec
from ips.translate.nft.constants import (
    _T,
    ACCEPT_MARK,
    MAX_COMMENT,
    METER_PREFIX,
    METER_SIZE,
    METER_SUFFIX,
    METER_TIMEOUT,
    SET_TYPES,
    SYNPROXY_COMMENT,
    SYNPROXY_INVALID_COMMENT,
    SYNPROXY_OPTIONS,
    Expr,
)
from ips.translate.nft.expr import _match, _meta, _payload
from ips.translate.nft.rules import compile_rule, fast_path_split, kernel_reason, rule_comment
from ips.translate.nft.sets import StaticSets, set_name

# ---- floods absorbed in the kernel -------------------------------------------------------------


def meter_reason(policy: Policy, index: int, split: int | None = None) -> str | None:
    """None when rule `index`'s excess can be dropped by a kernel meter before the queue;
    otherwise why not. The kernel drops only what the engine would drop too: the rule says
    `limit … per src else drop` with nothing the kernel cannot see (no state, payload or
    fragment test; no alert or log, which come from userspace), and no earlier rule left to
    the engine could take one of its packets first (each is of other protocols or another
    family) — the first-match meaning stays."""
    rule = policy.rules[index]
    limit = rule.limit
    if limit is None or limit.per != "src" or limit.else_action != DROP:
        return "only `limit … per src else drop` is metered in the kernel"
    if rule.alert or rule.log:
        return "its alerts and logs come from userspace"
    plain = dataclasses.replace(rule, limit=None, action=DROP)
    reason = kernel_reason(plain)
    if reason is not None:
        return reason
    split = fast_path_split(policy) if split is None else split
    if index < split:
        return "decided in the kernel already"
    for earlier in policy.rules[split:index]:
        if not _disjoint(earlier, rule):
            return f"{earlier.span.file}:{earlier.span.line} may take its packets first"
    return None


def _disjoint(a: RuleSpec, b: RuleSpec) -> bool:
    """Whether no packet can match both rules (by protocol or family alone)."""
    if not (a.families & b.families):
        return True
    return a.protos is not None and b.protos is not None and not (a.protos & b.protos)


def meter_rate(rate: float, burst: int) -> dict[str, object]:
    """nft's `limit rate over R/UNIT burst B packets` for the engine's bucket (rate per
    second, burst), rounded up: the kernel never drops a packet the engine would pass."""
    per, value = "second", rate
    if rate < 1 or rate != int(rate):
        per, value = "minute", rate * 60
    return {
        "rate": max(1, math.ceil(value - 1e-9)),
        "per": per,
        "burst": max(1, int(burst)),
        "inv": True,
    }


def metered_rules(policy: Policy, split: int | None = None) -> list[RuleSpec]:
    """The rules whose excess a kernel meter drops (see meter_reason)."""
    split = fast_path_split(policy) if split is None else split
    return [
        r
        for r in policy.rules[split:]
        if r.limit is not None and meter_reason(policy, r.index, split) is None
    ]


def meter_set(rule: RuleSpec, family: int) -> str:
    return set_name(f"{METER_PREFIX}{rule.index}", family)


def _meter_sets(rules: Sequence[RuleSpec]) -> dict[str, dict[str, object]]:
    return {
        meter_set(rule, family): {
            **_T,
            "name": meter_set(rule, family),
            "type": SET_TYPES[family],
            "flags": ["timeout"],  # nft marks it dynamic itself: the rules update it
            "timeout": METER_TIMEOUT,
            "size": METER_SIZE,
        }
        for rule in rules
        for family in sorted(rule.families)
    }


def kernel_meters(
    policy: Policy, hook: str, static: StaticSets | None = None
) -> list[tuple[str, list[Expr]]]:
    """(comment, exprs) of the meter rules of `hook`: the rule's matches, a per-source
    `update @meterN_vF { saddr limit rate over R }`, a counter and drop. With `static`, a
    large table in a metered rule is looked up in its named sets, as in kernel_prefix."""
    out: list[tuple[str, list[Expr]]] = []
    for rule in metered_rules(policy):
        limit = rule.limit
        assert limit is not None
        plain = dataclasses.replace(rule, limit=None, action=DROP, alert=False, log=False)
        comment = (rule_comment(rule) + METER_SUFFIX)[:MAX_COMMENT]
        for exprs in compile_rule(plain, hook, static):
            conds = exprs[:-2]  # without `counter` and `drop`
            nfprotos = [
                e["match"]["right"]
                for e in conds
                if "match" in e and e["match"]["left"] == _meta("nfproto")
            ]
            for family in sorted(rule.families):
                nfproto = "ipv4" if family == 4 else "ipv6"
                if nfprotos and nfprotos[0] != nfproto:
                    continue
                head = [] if nfprotos else [_match("==", _meta("nfproto"), nfproto)]
                meter = {
                    "set": {
                        "op": "update",
                        "elem": _payload("ip" if family == 4 else "ip6", "saddr"),
                        "set": f"@{meter_set(rule, family)}",
                        "stmt": [{"limit": meter_rate(limit.rate, limit.burst)}],
                    }
                }
                out.append((comment, [*head, *conds, meter, {"counter": None}, {"drop": None}]))
    return out


def _synproxy_raw_rule() -> list[Expr]:
    """A SYN (without ACK) skips conntrack, so that the proxy sees it untracked."""
    return [
        _match("==", _meta("l4proto"), "tcp"),
        _match("==", {"&": [_payload("tcp", "flags"), 0x12]}, 0x02),
        {"counter": None},
        {"notrack": None},
    ]


def _synproxy_rules() -> list[tuple[str, list[Expr]]]:
    """The proxy answers untracked SYNs with a cookie and takes the client's ACK (invalid
    for conntrack, nf_conntrack_tcp_loose 0) to open the connection to the server itself;
    what conntrack still calls invalid for TCP is dropped."""
    out: list[tuple[str, list[Expr]]] = []
    for family, nfproto in ((4, "ipv4"), (6, "ipv6")):
        out.append(
            (
                SYNPROXY_COMMENT,
                [
                    _match("==", _meta("nfproto"), nfproto),
                    _match("==", _meta("l4proto"), "tcp"),
                    _match("in", {"ct": {"key": "state"}}, ["invalid", "untracked"]),
                    {"counter": None},
                    {"synproxy": dict(SYNPROXY_OPTIONS[family])},
                ],
            )
        )
    # The server's SYN+ACK answers the proxy's own SYN (every SYN through the gateway is
    # proxied): the proxy must see it (at postrouting) to finish, so it skips the queue.
    out.append(
        (
            SYNPROXY_COMMENT,
            [
                _match("==", _meta("l4proto"), "tcp"),
                _match("==", {"&": [_payload("tcp", "flags"), 0x17]}, 0x12),
                _match("==", {"ct": {"key": "direction"}}, "reply"),
                {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), ACCEPT_MARK]}}},
                {"counter": None},
                {"accept": None},
            ],
        )
    )
    out.append(
        (
            SYNPROXY_INVALID_COMMENT,
            [
                _match("==", _meta("l4proto"), "tcp"),
                _match("in", {"ct": {"key": "state"}}, "invalid"),
                {"counter": None},
                {"drop": None},
            ],
        )
    )
    return out
