"""Policy -> libnftables JSON commands for ipsctl's own table, `inet ipsctl`. Pure: no I/O.

What goes into the kernel (the "fast path"): the longest prefix of the policy's rules that
the kernel can decide alone — accept, drop or reject on family, protocol, addresses (static
networks and dynamic tables), ports, interfaces, TCP flags, ICMP type/code and length, with no
alert or log. Compiled to nft rules with the same first-match meaning, they run in a base
chain per hook at priority -10, before iptables' filter chains (priority 0) where the
diversion to userspace lives when nft has no `queue` expression (ips/kernel/iptables.py).
The prefix ends at the first rule that needs userspace: no rule after it may go to the
kernel whatever it is, since a packet it would decide may first have to meet that rule. The
engine still holds every rule: a packet that reaches it matched none of the prefix.

How the kernel tells the queue rule that it accepted a packet: an accept sets ACCEPT_MARK in
the packet mark (an nft `accept` ends only our base chain; later base chains at the same hook
still see the packet). Each chain first clears that bit so that no mark set elsewhere can
make a packet skip inspection.

Offload (policy `set offload on`, the default): the engine marks an accepted packet whose
flow needs no more inspection with OFFLOAD_MARK in its queue verdict. A second base chain per
hook, `HOOK_offload` at priority +10 (after the queue, which is at -10 with nft's `queue` or
0 in iptables' filter chain), copies that into the connection's ct mark as the policy's
*generation* (OFFLOAD_CT_MASK bits). The first rules of our main chain (after the blocks) then
give the connection's later packets ACCEPT_MARK and accept them: they skip the queue (a TCP
connection stamped at its SYN+ACK: bare ACKs, then its next packet with a copy to the worker
over NFLOG, see COPIED_COMMENT). Every
policy swap moves to a new generation in the same transaction, so connections offloaded
under the old policy are not recognised any more: they come back to the engine, which judges
them by the new policy (and offloads them again if it may). A blocked source is dropped
before the offload rule, so blocking an address stops its offloaded connections at once.

Dynamic tables become named sets `{name}_v4` / `{name}_v6` (`flags timeout`), created with
`add set`, which keeps the members of a set that already exists; a policy swap flushes and
refills only the chains, in one transaction (see build_ruleset).

Large static tables (NAMED_SET_MIN networks or more in a family, such as a blocklist read
from a file) are not written into their rules, which nft would parse, merge and hold as one
anonymous set (a million entries took more than 11 minutes and 5 GB). They become named hash
sets, one per prefix length: `@big_v4_28_HASH` holds the /28 networks, matched by `ip saddr &
255.255.255.240 == @…`, and hosts need no mask. A network inside a shorter one of the same
table is left out (it could never decide anything). The set names carry a hash of the
content, and Nft.apply loads the sets, in chunks of ELEMENT_CHUNK elements each in its own
transaction, before the transaction that swaps the rules over to them: the old policy keeps
running while they load, and a table that did not change is not loaded again.

Blocks (detectors' and `ipsctl blocks add`) live in the sets of BLOCK_TABLE (`banned`), which
exist whether or not the policy declares that table. The first rules of every chain drop their
members (comment `ipsctl:blocks`, with a counter), whatever the order of the policy's rules: a
blocked source's packets never reach the queue, and a block still applies when the policy
starts with `accept from @trusted`. Each member has its own timeout, so blocks expire in the
kernel even when the daemon is dead; its comment says who blocked it (block_comment).
The real senders of forged packets are blocked by their MAC address (ips/engine/evidence.py):
the set ETHER_BAN_TABLE (`banned_ether`, type ether_addr, the same size and timeout), dropped
by the next rule of the chains packets come in on (forward, input: an outgoing packet has no
sender's MAC), comment `ipsctl:blocks-ether`; the inline daemon's plans have them
(NftPlan.ether_blocks).

One nft rule per policy rule is not always possible: nft has no "or" inside a rule, so a rule
whose address is `{ 10.0.0.0/8, @banned }`, whose `on IF` may be either interface, that speaks
of both families with family-specific values, or whose reject answer depends on the
protocol becomes several nft rules with the same verdict, in an order that keeps its meaning.
Every one of them carries the comment `ipsctl:FILE:LINE` of its policy rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import itertools
import math
import re
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ips.core.packet import PORT_PROTOS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from ips.policy.diagnostics import Span
from ips.policy.model import (
    ACCEPT,
    DROP,
    ETHER_BAN_TABLE,
    REJECT,
    AddrSpec,
    IfaceSpec,
    Policy,
    PortSpec,
    RuleSpec,
    TableSpec,
)

FAMILY = "inet"
TABLE = "ipsctl"
HOOKS = ("forward", "input", "output")
PRIORITY = -10  # before iptables' filter chains (0): our drops and marks come first
ACCEPT_MARK = 0x00100000  # the packet-mark bit "the fast path accepted this packet"
# Several queues (`--queues N`): the queue of a packet is chosen by a hash of its
# connection's *initiator* address (`ct original saddr`), so every connection a host opens —
# both directions of each — lands in one worker, and the per-source detectors (portscan,
# sweep, stealth, floods per src) see all of it. The index goes in these packet-mark bits;
# the NFQUEUE rules pick the queue by them.
QUEUE_SHIFT = 22
QUEUE_MASK = 0x7 << QUEUE_SHIFT  # up to 8 queues
MAX_QUEUES = 8
STEER_COMMENT = "ipsctl:steer"
STEER_SEED = 0x49505343  # one jhash seed for every steering rule (and across restarts)
OFFLOAD_MARK = 0x00200000  # packet-mark bit set by the worker's verdict: "offload this flow"
OFFLOAD_CT_SHIFT = 24
OFFLOAD_CT_MASK = 0xFF << OFFLOAD_CT_SHIFT  # ct-mark bits: the generation that offloaded it
OFFLOAD_PAUSED = 0xFF  # a generation never stamped: keeps the rule (and conntrack) in place
OFFLOAD_PRIORITY = 10  # after the queue (nft queue at -10, iptables' filter chain at 0)
OFFLOADED_COMMENT = "ipsctl:offloaded"  # later packets of offloaded connections (counter)
# The handshake's bare ACK: the worker's verdict on a SYN+ACK sets HANDSHAKE_ACK_MARK when the
# engine needs no more of the handshake (Decision.offload == OFFLOAD_HANDSHAKE_ACK); the
# offload chain stamps the generation with HANDSHAKE_ACK_CT set, and the main chain then passes
# one kind of packet of that connection without a word to the engine: a TCP ACK without
# payload (flags exactly ACK, the IP length that of the headers).
HANDSHAKE_ACK_MARK = 0x00080000  # packet-mark bit set by the worker's verdict
HANDSHAKE_ACK_CT = 0x00800000  # ct-mark bit next to the generation: "bare ACKs, then a copy"
# The first other packet of such a connection (its first data, or a FIN or reset; not a SYN)
# is not held: the kernel sends a copy of it to the worker (NFLOG group copy_group(queue)),
# stamps the full generation (clearing the bit) and passes it. A short connection's queue
# round trips go from three to two (SYN, SYN+ACK), and the engine still sees what the
# detectors need (that the connection carried data, or was closed or reset without) — a
# moment later.
COPIED_COMMENT = "ipsctl:copied"
COPY_GROUP_BASE = 32768  # NFLOG group of queue q's copies: COPY_GROUP_BASE + q (mod 65536)
_GEN_MASK = OFFLOAD_CT_MASK | HANDSHAKE_ACK_CT  # what a stamp writes and the rules compare
# (IP header length, TCP data offset) of a bare ACK: no options, or timestamps (Linux, BSD)
_BARE_ACK_SIZES = ((40, 5), (52, 8))
OFFLOAD_COMMENT = "ipsctl:offload"  # verdict mark -> ct mark
# Offloaded pings: the kernel accepts, per address, up to this share of the icmpflood rate and
# no more; what is over it goes to the queue, where the detector counts it (so it sees a flood
# less this small budget). Keyed like the detector (per src or per dst), in a meter set.
ICMP_OFFLOAD_SHARE = 0.1
ICMP_METER = "icmp_offload"  # sets icmp_offload_v4 / _v6: address -> token bucket
ICMP_METER_SIZE = 65536  # full: the update fails, the rule does not match, the queue decides
ICMP_METER_TIMEOUT = 60  # seconds an idle address keeps its bucket
# Floods absorbed before the queue (issue 19, item 2): a policy rule `… limit R per src else
# drop` that the kernel may enforce gets a meter — a dynamic set of sources, each with its
# token bucket — and the kernel drops a source's packets over the rate before they reach the
# queue (the engine still counts the ones under it, as before). See kernel_meters.
METER_PREFIX = "meter"  # sets meterN_v4 / meterN_v6 (N: the rule's index)
METER_SIZE = 65536  # full: the update fails, the rule does not match, the queue decides
METER_TIMEOUT = 60  # seconds an idle source keeps its bucket
METER_SUFFIX = ":excess"  # the meter rule's comment: the rule's own, then this
# `set synproxy on`: TCP handshakes through the gateway are completed by the kernel's SYN
# proxy (syncookies, no state per SYN), so a SYN flood — spoofed sources included — never
# reaches the queue; a connection meets the queue once its client answered the cookie. The
# SYN skips conntrack in a raw-priority prerouting chain, and the proxy answers it.
SYNPROXY_CHAIN = "synproxy_raw"
SYNPROXY_PRIORITY = -300  # raw: before conntrack (-200)
SYNPROXY_COMMENT = "ipsctl:synproxy"
SYNPROXY_INVALID_COMMENT = "ipsctl:synproxy-invalid"  # TCP conntrack calls invalid: dropped
SYNPROXY_HOOKS = ("forward", "input")  # SYNs from outside; the host's own need no proxy
SYNPROXY_OPTIONS = {4: {"mss": 1460, "wscale": 7, "flags": ["timestamp", "sack-perm"]},
                    6: {"mss": 1440, "wscale": 7, "flags": ["timestamp", "sack-perm"]}}  # fmt: skip
COMMENT_PREFIX = "ipsctl:"
USERSPACE_COMMENT = "ipsctl:to-userspace"  # counts the packets left to the engine
CLEAR_MARK_COMMENT = "ipsctl:clear-mark"
BLOCKS_COMMENT = "ipsctl:blocks"  # the leading drops of blocked sources (and their counter)
ETHER_BLOCKS_COMMENT = "ipsctl:blocks-ether"  # the drop of banned MACs (and its counter)
ETHER_HOOKS = ("forward", "input")  # where a packet has a sender's MAC (`ether saddr`)
BLOCK_TABLE = "banned"  # the dynamic table detectors and `ipsctl blocks` add to
DEFAULT_BLOCK_TIMEOUT = 3600  # seconds, when the policy does not declare BLOCK_TABLE
DEFAULT_BLOCK_SIZE = 65536
MAX_COMMENT = 128  # nft's limit for a comment
SET_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}
PROTO_UDPLITE = 136

# A static table with at least this many networks in a family goes to the kernel as named
# sets (see above); a smaller one stays in its rules, merged, as it always did.
NAMED_SET_MIN = 1024
ELEMENT_CHUNK = 100_000  # elements per transaction when loading a named set
STATIC_SET_RE = re.compile(r"_v[46]_\d{1,3}_[0-9a-f]{8}$")  # the names static_set_name makes

_T = {"family": FAMILY, "table": TABLE}
# One nft JSON expression: nested dicts, lists, strings and numbers whose shape follows their
# keys, as json.loads gives them; their values are read as Any.
Expr = dict[str, Any]
Alt = list[Expr]  # conditions that must all hold (one nft rule's matches)


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


def set_name(table: str, family: int) -> str:
    """The nft set that holds the IPv4 or IPv6 members of dynamic table `table`."""
    return f"{table}_v{family}"


# ---- large static tables as named sets -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaticSet:
    """One named set of a large static table: the networks of one family and prefix length,
    as integers (their addresses)."""

    name: str
    table: str
    family: int
    plen: int
    nets: tuple[int, ...]

    def object(self) -> dict[str, object]:
        return {**_T, "name": self.name, "type": SET_TYPES[self.family]}

    def chunks(self, size: int = ELEMENT_CHUNK) -> Iterable[Expr]:
        """`add element` commands of at most `size` elements, each for its own transaction."""
        text = _ipv4_text if self.family == 4 else _ipv6_text
        for start in range(0, len(self.nets), size):
            elems = [text(n) for n in self.nets[start : start + size]]
            yield {"add": {"element": {**_T, "name": self.name, "elem": elems}}}


def _ipv4_text(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _ipv6_text(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def static_set_name(table: str, family: int, plen: int, digest: str) -> str:
    return f"{table[:64]}_v{family}_{plen}_{digest[:8]}"


@dataclass(frozen=True, slots=True)
class _TableFamily:
    """A large table's networks of one family: all of them (to tell them from the other
    networks of a rule) and its named sets."""

    nets: frozenset[tuple[int, int]]
    sets: tuple[StaticSet, ...]


# Splitting a table of a million networks costs about a second: done once per table (the
# translator asks for every hook, and Nft.apply for the loading and for the rules). Keyed by
# the networks' tuple, which the cache keeps alive so that its id is not reused.
_FAMILY_CACHE: dict[int, tuple[object, _TableFamily]] = {}
_FAMILY_CACHE_SIZE = 8


def _table_family(table: TableSpec, family: int) -> _TableFamily | None:
    """The named sets of `table` in `family`; None when the table is small there."""
    nets = table.nets4 if family == 4 else table.nets6
    if len(nets) < NAMED_SET_MIN:
        return None
    cached = _FAMILY_CACHE.get(id(nets))
    if cached is not None and cached[0] is nets:
        return cached[1]
    width = 32 if family == 4 else 128
    by_plen: dict[int, set[int]] = {}
    for net, plen in nets:
        by_plen.setdefault(plen, set()).add(net)
    # A network inside a shorter one of the table decides nothing: left out, shortest first.
    plens = sorted(by_plen)
    for i, plen in enumerate(plens):
        shorter = [(p, ((1 << p) - 1) << (width - p)) for p in plens[:i]]
        if shorter:
            by_plen[plen] = {
                n for n in by_plen[plen] if not any(n & m in by_plen[p] for p, m in shorter)
            }
    digest = hashlib.sha256()
    sets = []
    ordered: dict[int, tuple[int, ...]] = {}
    for plen in plens:
        ordered[plen] = tuple(sorted(by_plen[plen]))
        digest.update(plen.to_bytes(1, "big"))
        if family == 4:
            digest.update(array("I", ordered[plen]).tobytes())
        else:
            digest.update(b"".join(n.to_bytes(16, "big") for n in ordered[plen]))
    hexdigest = digest.hexdigest()
    for plen in plens:
        if plen == 0:
            continue  # "everything": decided without a set (see _addr_alts)
        name = static_set_name(table.name, family, plen, hexdigest)
        sets.append(StaticSet(name, table.name, family, plen, ordered[plen]))
    result = _TableFamily(frozenset(nets), tuple(sets))
    if len(_FAMILY_CACHE) >= _FAMILY_CACHE_SIZE:
        _FAMILY_CACHE.pop(next(iter(_FAMILY_CACHE)))
    _FAMILY_CACHE[id(nets)] = (nets, result)
    return result


class StaticSets:
    """The large static tables of a policy, and which of their named sets the rules built so
    far refer to (`used`): the sets to load before the rules go in."""

    def __init__(self, tables: dict[str, TableSpec]) -> None:
        self.tables = tables
        self.used: dict[str, StaticSet] = {}

    def family(self, name: str, family: int) -> _TableFamily | None:
        table = self.tables.get(name)
        if table is None or table.kind == "dynamic":
            return None
        return _table_family(table, family)


def static_sets(policy: Policy, plan: NftPlan) -> StaticSets:
    """The named sets the kernel rules of `policy` under `plan` refer to (see StaticSets)."""
    static = StaticSets(policy.tables)
    if not plan.blocks_only:
        for hook in plan.hooks:
            kernel_prefix(policy, hook, static)
            kernel_meters(policy, hook, static)
    return static


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


def synproxy_hooks(policy: Policy, plan: NftPlan) -> tuple[str, ...]:
    """The hooks whose chains proxy TCP handshakes (`set synproxy on`); () for none."""
    if not policy.synproxy or plan.blocks_only:
        return ()
    return tuple(h for h in plan.hooks if h in SYNPROXY_HOOKS)


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


# ---- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetElement:
    """A member of a dynamic set: timeout and expires in seconds (None: none/unknown), and the
    element's comment (for blocks: block_comment)."""

    addr: str
    timeout: int | None = None
    expires: int | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class SetState:
    name: str
    type: str
    flags: tuple[str, ...]
    timeout: int | None
    size: int | None
    elements: tuple[SetElement, ...] = ()


@dataclass(frozen=True, slots=True)
class TableState:
    """What `list table inet ipsctl` showed: our chains and sets (see parse_table)."""

    chains: tuple[str, ...]
    sets: dict[str, SetState]


def _seconds(value: float | None) -> int | None:
    """nft's JSON takes whole seconds; round up so an entry never lives shorter than asked."""
    if value is None or value <= 0:
        return None
    whole = int(value)
    return whole if whole == value else whole + 1


def block_table_spec(policy: Policy | None) -> TableSpec:
    """The policy's BLOCK_TABLE when it declares it dynamic; otherwise the one ipsctl makes
    itself (1 h), so that blocks have a home whatever the policy."""
    table = policy.tables.get(BLOCK_TABLE) if policy is not None else None
    if table is not None and table.kind == "dynamic":
        return table
    return TableSpec(
        BLOCK_TABLE,
        "dynamic",
        Span("<ipsctl>", 0, 0, 0, 0),
        timeout=DEFAULT_BLOCK_TIMEOUT,
        size=DEFAULT_BLOCK_SIZE,
    )


def _wanted_sets(policy: Policy, ether: bool = False) -> dict[str, dict[str, object]]:
    sets: dict[str, dict[str, object]] = {}
    tables = [t for t in policy.tables.values() if t.kind == "dynamic" and t.name != BLOCK_TABLE]
    blocks = block_table_spec(policy)
    for table in [blocks, *tables]:
        for family in (4, 6):
            sets[set_name(table.name, family)] = _set_object(table, family)
    if ether:
        sets[ETHER_BAN_TABLE] = ether_set_object(blocks)
    return sets


def ether_set_object(blocks: TableSpec) -> dict[str, object]:
    """The set of banned MACs: as large as the block table, with its default timeout."""
    obj: dict[str, object] = {
        **_T, "name": ETHER_BAN_TABLE, "type": "ether_addr", "flags": ["timeout"],
        "size": blocks.size,
    }  # fmt: skip
    timeout = _seconds(blocks.timeout)
    if timeout is not None:
        obj["timeout"] = timeout
    return obj


def ether_block_rule() -> list[Expr]:
    """The drop of banned MACs: only on an Ethernet input interface (`ether saddr` reads the
    frame's header, which only such a packet has)."""
    return [
        _match("==", _meta("iiftype"), "ether"),
        _match("==", _payload("ether", "saddr"), f"@{ETHER_BAN_TABLE}"),
        {"counter": None},
        {"drop": None},
    ]


def block_rules() -> list[list[Expr]]:
    """The leading rules of every chain: drop the members of the block sets, both families."""
    out: list[list[Expr]] = []
    for family, proto, nfproto in ((4, "ip", "ipv4"), (6, "ip6", "ipv6")):
        out.append(
            [
                _match("==", _meta("nfproto"), nfproto),
                _match("==", _payload(proto, "saddr"), f"@{set_name(BLOCK_TABLE, family)}"),
                {"counter": None},
                {"drop": None},
            ]
        )
    return out


def _set_object(table: TableSpec, family: int) -> dict[str, object]:
    obj: dict[str, object] = {
        **_T,
        "name": set_name(table.name, family),
        "type": SET_TYPES[family],
        "flags": ["timeout"],
        "size": table.size,
    }
    timeout = _seconds(table.timeout)
    if timeout is not None:
        obj["timeout"] = timeout
    return obj


def _queue_stmt(queue: int | tuple[int, int], fail_open: bool) -> Expr:
    flags = ["bypass"] if fail_open else []
    if isinstance(queue, tuple):
        first, last = queue
        if first == last:
            num: object = first
        else:
            num = {"range": [first, last]}
            flags.append("fanout")
    else:
        num = queue
    stmt: dict[str, object] = {"num": num}
    if flags:
        stmt["flags"] = flags
    return {"queue": stmt}


@dataclass(frozen=True, slots=True)
class NftPlan:
    """What build_ruleset builds besides the policy's own rules: which hooks, where the rest
    of the traffic goes (the queues), and which of ipsctl's own rules (offload, copies, blocks
    only). The kernel's capabilities and the daemon's settings decide it; the policy does not.

    hooks      the chains to hook (forward, input, output); chains of other hooks go away
    queue      NFQUEUE number, or (first, last) for several (fanout); used with nft_queue
    fail_open  `bypass`: accept when no program listens on the queue
    nft_queue  the kernel has nft's `queue` expression: divert there after the prefix
               (otherwise the iptables chain of ips/kernel/iptables.py does it)
    blocks_only  only the block sets and their drop rules (a tap that enforces its detectors'
               blocks: nothing of the policy itself may filter there)
    offload_generation  1-254: the offload rules with this generation (see above), when the
               policy has `set offload on`; 0: paused — nothing is stamped, nothing stays
               offloaded, but the chains and a `ct mark` rule stay: removing a base chain,
               or the last rule with a ct expression (conntrack then leaves the netns),
               unregisters a netfilter hook, and the kernel then drops every packet
               waiting in the queues; None: none
    queues     workers: packets are steered to queue + i by their connection's initiator
    copies     the kernel has NFLOG: a handshake-stamped connection's first other packet is
               passed with a copy to its worker (COPIED_COMMENT); without, it goes to the queue
    ether_blocks  the set of banned MACs (ETHER_BAN_TABLE) and its drop rule after the
               address blocks, in the chains packets come in on (the inline daemon's
               plans; a tap or a replay has no MAC blocks to enforce)

    A plan with an unknown hook or impossible queue numbers is refused when it is made.
    """

    hooks: tuple[str, ...] = ("forward",)
    queue: int | tuple[int, int] = 0
    fail_open: bool = True
    nft_queue: bool = False
    blocks_only: bool = False
    offload_generation: int | None = None
    queues: int = 1
    copies: bool = True
    ether_blocks: bool = False

    def __post_init__(self) -> None:
        # A hook named twice is one chain; the order of first mention is the chains' order.
        object.__setattr__(self, "hooks", tuple(dict.fromkeys(self.hooks)))
        for hook in self.hooks:
            if hook not in HOOKS:
                raise ValueError(f"unknown hook {hook!r}; one of {', '.join(HOOKS)}")
        lo, hi = self.queue if isinstance(self.queue, tuple) else (self.queue, self.queue)
        if not 0 <= lo <= hi <= 65535:
            raise ValueError(f"queue numbers are 0-65535, first <= last (got {self.queue!r})")

    @property
    def first_queue(self) -> int:
        return self.queue[0] if isinstance(self.queue, tuple) else self.queue

    def offloads(self, policy: Policy) -> bool:
        """Whether the offload chains and rules are built for `policy`."""
        return self.offload_generation is not None and not self.blocks_only and policy.offload


def build_ruleset(
    policy: Policy,
    plan: NftPlan = NftPlan(),
    existing: TableState | None = None,
    static: StaticSets | None = None,
) -> list[Expr]:
    """Commands for one atomic batch that makes `inet ipsctl` run `policy`'s fast path, as
    `plan` says; `existing` is parse_table() of the table as it is now (None: absent or
    unknown).

    Safe to run over the table of an earlier policy: the table, chains and sets are `add`ed
    (idempotent, so a set keeps its members), our chains are flushed and refilled, and a set
    whose type or flags changed is recreated with its members carried over (with what is left
    of their timeouts). Sets and chains the policy no longer has are deleted, after the chain
    flushes that free them. All in one transaction: no window without rules.

    The named sets of large static tables (`static`, from static_sets(); made here when not
    given) must already hold their elements: this batch only refers to them (Nft.apply loads
    them first).
    """
    if static is None:
        static = static_sets(policy, plan)
    offload = plan.offloads(policy)
    if offload and not 0 <= plan.offload_generation < OFFLOAD_PAUSED:  # type: ignore[operator]
        raise ValueError("offload generation must be 0-254")
    cmds: list[Expr] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    proxied = synproxy_hooks(policy, plan)
    cmds += _chain_commands(
        plan.hooks, offload, existing.chains if existing else (), synproxy=bool(proxied)
    )
    icmp_budget = icmp_offload_budget(policy) if offload else None
    meters = [] if plan.blocks_only else metered_rules(policy)
    old_sets = existing.sets if existing else {}
    cmds += _set_commands(policy, icmp_budget, old_sets, static, meters, plan.ether_blocks)
    if proxied:
        cmds.append(_rule(SYNPROXY_CHAIN, _synproxy_raw_rule(), SYNPROXY_COMMENT))
    for hook in plan.hooks:
        cmds += _hook_rules(policy, plan, hook, offload, icmp_budget, static, hook in proxied)
    return cmds


def _chain_commands(
    hooks: tuple[str, ...], offload: bool, old_chains: tuple[str, ...], synproxy: bool = False
) -> list[dict[str, object]]:
    """Our base chains added (a main chain per hook, an offload chain after the queue when
    offloading, the raw prerouting chain of the SYN proxy), every chain old or new flushed,
    and the old ones no longer wanted deleted."""
    cmds: list[dict[str, object]] = []
    chains: list[str] = []
    if synproxy:
        raw = {
            **_T,
            "name": SYNPROXY_CHAIN,
            "type": "filter",
            "hook": "prerouting",
            "prio": SYNPROXY_PRIORITY,
        }
        cmds.append({"add": {"chain": {**raw, "policy": "accept"}}})
        chains.append(SYNPROXY_CHAIN)
    for hook in hooks:
        chain = {**_T, "name": hook, "type": "filter", "hook": hook, "prio": PRIORITY}
        cmds.append({"add": {"chain": {**chain, "policy": "accept"}}})
        chains.append(hook)
        if offload:
            post = {
                **_T,
                "name": f"{hook}_offload",
                "type": "filter",
                "hook": hook,
                "prio": OFFLOAD_PRIORITY,
            }
            cmds.append({"add": {"chain": {**post, "policy": "accept"}}})
            chains.append(f"{hook}_offload")
    for name in dict.fromkeys((*chains, *old_chains)):
        cmds.append({"flush": {"chain": {**_T, "name": name}}})
    for name in old_chains:
        if name not in chains:
            cmds.append({"delete": {"chain": {**_T, "name": name}}})
    return cmds


def _set_commands(
    policy: Policy,
    icmp_budget: tuple[int, str] | None,
    old_sets: dict[str, SetState],
    static: StaticSets,
    meters: Sequence[RuleSpec] = (),
    ether: bool = False,
) -> list[dict[str, object]]:
    """The sets of the dynamic tables (and the ICMP meter, and the rules' meters, and with
    `ether` the set of banned MACs) added,
    the ones no longer wanted deleted, and the ones whose type or flags changed recreated
    with their members. The named sets of static tables are loaded before (their names
    change with their content): the ones no longer referred to are deleted."""
    cmds: list[dict[str, object]] = []
    wanted = _wanted_sets(policy, ether)
    if icmp_budget is not None:
        wanted.update(_icmp_meter_sets())
    meter_sets = _meter_sets(meters)
    carry: dict[str, tuple[SetElement, ...]] = {}
    for name, have in old_sets.items():
        want = wanted.get(name) or meter_sets.get(name)
        if name in meter_sets and have.type == want["type"]:  # type: ignore[index]
            continue  # kept with its buckets (nft made it dynamic: an `add` is refused)
        if STATIC_SET_RE.search(name) and want is None:
            if name not in static.used:
                cmds.append({"delete": {"set": {**_T, "name": name}}})
            continue
        if want is None:
            cmds.append({"delete": {"set": {**_T, "name": name}}})
        elif have.type != want["type"] or set(have.flags) != {"timeout"}:
            # `add set` refuses a change of type or flags (EEXIST): recreate, keep members
            cmds.append({"delete": {"set": {**_T, "name": name}}})
            if have.type == want["type"]:
                carry[name] = have.elements
    for name, want in wanted.items():
        if icmp_budget is not None and name in old_sets and name.startswith(ICMP_METER):
            # Its rules made nft flag it dynamic; an `add` without that flag is refused
            # (EEXIST), and there is nothing to change: its type, size and timeout are fixed.
            continue
        cmds.append({"add": {"set": want}})  # a changed timeout/size is updated in place
        if carry.get(name):
            cmds.append({"add": {"element": {**_T, "name": name, "elem": _elems(carry[name])}}})
    for name, want in meter_sets.items():
        kept = old_sets.get(name)
        if kept is None or kept.type != want["type"]:
            cmds.append({"add": {"set": want}})
    return cmds


def _hook_rules(
    policy: Policy,
    plan: NftPlan,
    hook: str,
    offload: bool,
    icmp_budget: tuple[int, str] | None,
    static: StaticSets,
    synproxy: bool = False,
) -> list[dict[str, object]]:
    """The rules of one hook's chains, in order: blocks, mark clearing, the SYN proxy,
    offloaded traffic, the policy's kernel prefix, the meters, steering to the queues, and
    what is left to userspace."""
    # Blocks first: nothing the policy says may let a blocked source through.
    cmds = [_rule(hook, exprs, BLOCKS_COMMENT) for exprs in block_rules()]
    if plan.ether_blocks and hook in ETHER_HOOKS:
        cmds.append(_rule(hook, ether_block_rule(), ETHER_BLOCKS_COMMENT))
    if plan.blocks_only:
        return cmds
    first_queue, queues = plan.first_queue, plan.queues
    cmds.append(_rule(hook, [{"mangle": _clear_mark()}], CLEAR_MARK_COMMENT))
    if synproxy:
        cmds += [_rule(hook, exprs, comment) for comment, exprs in _synproxy_rules()]
    if offload:
        gen = (plan.offload_generation or OFFLOAD_PAUSED) << OFFLOAD_CT_SHIFT
        for exprs in _offloaded_rules(gen, icmp_budget) + _handshake_ack_rules(gen):
            cmds.append(_rule(hook, exprs, OFFLOADED_COMMENT))
        for exprs in _handshake_copy_rules(gen, first_queue, queues) if plan.copies else ():
            cmds.append(_rule(hook, exprs, COPIED_COMMENT))
        if plan.offload_generation:
            for exprs in _offload_exprs(gen):
                cmds.append(_rule(f"{hook}_offload", exprs, OFFLOAD_COMMENT))
    for comment, exprs in kernel_prefix(policy, hook, static)[1]:
        cmds.append(_rule(hook, exprs, comment))
    for comment, exprs in kernel_meters(policy, hook, static):
        cmds.append(_rule(hook, exprs, comment))
    for i in range(1, queues):
        for exprs in _steer_exprs(i, queues):
            cmds.append(_rule(hook, exprs, STEER_COMMENT))
    tail: list[Expr] = [{"counter": None}]
    if plan.nft_queue and queues > 1:
        for i in range(1, queues):
            steered = [
                _match("==", {"&": [_meta("mark"), QUEUE_MASK]}, i << QUEUE_SHIFT),
                {"counter": None},
                _queue_stmt(first_queue + i, plan.fail_open),
            ]
            cmds.append(_rule(hook, steered, USERSPACE_COMMENT))
        tail.append(_queue_stmt(first_queue, plan.fail_open))
    elif plan.nft_queue:
        tail.append(_queue_stmt(plan.queue, plan.fail_open))
    cmds.append(_rule(hook, tail, USERSPACE_COMMENT))
    return cmds


def _steer_exprs(index: int, queues: int) -> list[list[Expr]]:
    """jhash(ct original saddr) mod queues == index: that index into the mark's queue bits
    (one rule per family; index 0 needs none)."""
    rules = []
    for nfproto, key in (("ipv4", "ip saddr"), ("ipv6", "ip6 saddr")):
        rules.append(
            [
                _match("==", _meta("nfproto"), nfproto),
                _steer_match(key, queues, index),
                {
                    "mangle": {
                        "key": _meta("mark"),
                        "value": {"|": [_meta("mark"), index << QUEUE_SHIFT]},
                    }
                },
            ]
        )
    return rules


def _steer_match(key: str, queues: int, index: int) -> Expr:
    """jhash(ct original `key`) mod queues == index: the connection's queue is `index`. The
    seed is given: without one, the kernel draws a random seed for each rule, and the rules
    of one steering (index 1, 2, … and the copies' groups) would hash differently."""
    jhash = {"mod": queues, "seed": STEER_SEED, "expr": {"ct": {"key": key, "dir": "original"}}}
    return _match("==", {"jhash": jhash}, index)


def _ct_mark() -> Expr:
    return {"ct": {"key": "mark"}}


def icmp_offload_budget(policy: Policy) -> tuple[int, str] | None:
    """(packets/s, "src"|"dst") the kernel accepts per address in offloaded ICMP flows, when
    the policy has an icmpflood detector; None: no detector, nothing to keep back."""
    spec = policy.detectors.get("icmpflood")
    if spec is None:
        return None
    rate = float(spec.params["rate"])  # type: ignore[arg-type]
    return max(1, int(rate * ICMP_OFFLOAD_SHARE)), str(spec.params["per"])


def _icmp_meter_sets() -> dict[str, dict[str, object]]:
    return {
        set_name(ICMP_METER, family): {
            **_T,
            "name": set_name(ICMP_METER, family),
            "type": "ipv4_addr" if family == 4 else "ipv6_addr",
            "flags": ["timeout"],  # nft marks it dynamic itself: the rules update it
            "timeout": ICMP_METER_TIMEOUT,
            "size": ICMP_METER_SIZE,
        }
        for family in (4, 6)
    }


def _offloaded_rules(gen: int, icmp_budget: tuple[int, str] | None) -> list[list[Expr]]:
    """ct mark & MASK == gen: meta mark |= ACCEPT_MARK (the queue skips it), counter, accept.
    With an ICMP budget, ICMP only while its address's meter is under the budget."""
    offloaded = _match("==", {"&": [_ct_mark(), _GEN_MASK]}, gen)
    accept: list[Expr] = [
        {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), ACCEPT_MARK]}}},
        {"counter": None},
        {"accept": None},
    ]
    if icmp_budget is None:
        return [[offloaded, *accept]]
    rate, per = icmp_budget
    icmps = ("icmp", "ipv6-icmp")
    rules = [[offloaded, _match("!=", _meta("l4proto"), {"set": list(icmps)}), *accept]]
    for family, proto, l4proto in ((4, "ip", icmps[0]), (6, "ip6", icmps[1])):
        within = {"limit": {"rate": rate, "per": "second", "burst": rate}}
        meter = {
            "set": {
                "op": "update",
                "elem": _payload(proto, "saddr" if per == "src" else "daddr"),
                "set": f"@{set_name(ICMP_METER, family)}",
                "stmt": [within],
            }
        }
        rules.append([offloaded, _match("==", _meta("l4proto"), l4proto), meter, *accept])
    return rules


def _handshake_ack_rules(gen: int) -> list[list[Expr]]:
    """ct mark & MASK == gen | HANDSHAKE_ACK_CT, and a bare ACK: accepted like an offloaded
    packet. One rule per family and header size (nft has no arithmetic on two fields)."""
    rules = []
    for nfproto, proto, ip_header in (("ipv4", "ip", 20), ("ipv6", "ip6", 0)):
        for length, doff in _BARE_ACK_SIZES:
            family: list[Expr] = [_match("==", _meta("nfproto"), nfproto)]
            if proto == "ip":
                family.append(_match("==", _payload("ip", "hdrlength"), 5))
            else:  # ip6 length is the payload's: no extension header before TCP
                family.append(_match("==", _payload("ip6", "nexthdr"), "tcp"))
            rules.append(
                [
                    _match("==", {"&": [_ct_mark(), _GEN_MASK]}, gen | HANDSHAKE_ACK_CT),
                    _match("==", _meta("l4proto"), "tcp"),
                    *family,
                    _match("==", {"&": [_payload("tcp", "flags"), 0x3F]}, 0x10),  # ACK alone
                    _match("==", _payload(proto, "length"), length - 20 + ip_header),
                    _match("==", _payload("tcp", "doff"), doff),
                    {
                        "mangle": {
                            "key": _meta("mark"),
                            "value": {"|": [_meta("mark"), ACCEPT_MARK]},
                        }
                    },
                    {"counter": None},
                    {"accept": None},
                ]
            )
    return rules


def copy_group(queue: int) -> int:
    """The NFLOG group where queue `queue`'s worker reads the copies (see COPIED_COMMENT)."""
    return (COPY_GROUP_BASE + queue) & 0xFFFF


def _handshake_copy_rules(gen: int, first_queue: int, queues: int) -> list[list[Expr]]:
    """ct mark & MASK == gen | HANDSHAKE_ACK_CT, TCP without SYN (the bare ACKs were accepted
    before): a copy to the worker of the connection's queue, the full generation stamped,
    accepted. Several queues: one rule per queue and family, steered as _steer_exprs does."""
    keep = ~_GEN_MASK & 0xFFFFFFFF
    common: list[Expr] = [
        _match("==", {"&": [_ct_mark(), _GEN_MASK]}, gen | HANDSHAKE_ACK_CT),
        _match("==", _meta("l4proto"), "tcp"),
        _match("==", {"&": [_payload("tcp", "flags"), 0x02]}, 0),  # no SYN
    ]

    def copied(steer: list[Expr], queue: int) -> list[Expr]:
        return [
            *common,
            *steer,
            {"log": {"group": copy_group(queue)}},
            {"mangle": {"key": _ct_mark(), "value": {"|": [{"&": [_ct_mark(), keep]}, gen]}}},
            {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), ACCEPT_MARK]}}},
            {"counter": None},
            {"accept": None},
        ]

    if queues == 1:
        return [copied([], first_queue)]
    return [
        copied(
            [_match("==", _meta("nfproto"), nfproto), _steer_match(key, queues, i)], first_queue + i
        )
        for i in range(queues)
        for nfproto, key in (("ipv4", "ip saddr"), ("ipv6", "ip6 saddr"))
    ]


def _offload_exprs(gen: int) -> list[list[Expr]]:
    """The offload chain: meta mark & OFFLOAD_MARK: ct mark = (ct mark & ~MASK) | gen;
    meta mark & HANDSHAKE_ACK_MARK: the same with HANDSHAKE_ACK_CT (other ct-mark bits kept)."""
    keep = ~_GEN_MASK & 0xFFFFFFFF
    return [
        [
            _match("==", {"&": [_meta("mark"), bit]}, bit),
            {"mangle": {"key": _ct_mark(), "value": {"|": [{"&": [_ct_mark(), keep]}, stamp]}}},
            {"counter": None},
        ]
        for bit, stamp in ((OFFLOAD_MARK, gen), (HANDSHAKE_ACK_MARK, gen | HANDSHAKE_ACK_CT))
    ]


def _clear_mark() -> dict[str, object]:
    ours = ACCEPT_MARK | OFFLOAD_MARK | HANDSHAKE_ACK_MARK | QUEUE_MASK
    return {"key": _meta("mark"), "value": {"&": [_meta("mark"), ~ours & 0xFFFFFFFF]}}


def _rule(chain: str, exprs: list[Expr], comment: str) -> dict[str, object]:
    return {"add": {"rule": {**_T, "chain": chain, "expr": exprs, "comment": comment}}}


def _elems(elements: Iterable[SetElement]) -> list[object]:
    out: list[object] = []
    for e in elements:
        if e.timeout is None and e.expires is None and e.comment is None:
            out.append(e.addr)
            continue
        elem: dict[str, object] = {"val": e.addr}
        if e.timeout is not None:
            elem["timeout"] = e.timeout
        if e.expires is not None:
            elem["expires"] = max(1, e.expires)
        if e.comment:
            elem["comment"] = e.comment
        out.append({"elem": elem})
    return out


def delete_table() -> list[dict[str, object]]:
    """Delete our table, and only it (fails if absent: see Nft.remove)."""
    return [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]


# ---- dynamic set members (blocks) --------------------------------------------------------------

Address = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(addr: Address) -> tuple[int, str]:
    ip = ipaddress.ip_address(addr)
    return ip.version, str(ip)


def add_elements(
    table: str,
    addrs: Iterable[Address],
    timeout: float | None = None,
    comment: str | None = None,
) -> list[dict[str, object]]:
    """Add (or refresh) addresses in dynamic table `table`, each with its own timeout
    (None: the set's default). Adding an existing member resets its timeout (its comment
    stays: see replace_elements)."""
    ttl = _seconds(timeout)
    by_family: dict[int, list[object]] = {}
    for addr in addrs:
        family, text = _address(addr)
        item: object = text
        if ttl is not None or comment:
            elem: dict[str, object] = {"val": text}
            if ttl is not None:
                elem["timeout"] = ttl
            if comment:
                elem["comment"] = comment
            item = {"elem": elem}
        by_family.setdefault(family, []).append(item)
    return [
        {"add": {"element": {**_T, "name": set_name(table, fam), "elem": items}}}
        for fam, items in sorted(by_family.items())
    ]


def replace_elements(
    table: str,
    addrs: Iterable[Address],
    timeout: float | None = None,
    comment: str | None = None,
    expires: float | None = None,
) -> list[dict[str, object]]:
    """Put addresses in `table` with exactly this timeout and comment, members or not:
    add (a no-op for a member), delete, add again — one batch, so no packet ever sees the
    address missing. (A plain `add` of a member refreshes its timeout but keeps its old
    comment, which would then name the wrong detector.) `expires`: seconds left, when less
    than the timeout (a block carried over a restart keeps its original timeout)."""
    addrs = list(addrs)
    cmds = add_elements(table, addrs)
    cmds += delete_elements(table, addrs)
    ttl, left = _seconds(timeout), _seconds(expires)
    by_family: dict[int, list[object]] = {}
    for addr in addrs:
        family, text = _address(addr)
        element = SetElement(text, ttl, left if left is not None and ttl else None, comment)
        by_family.setdefault(family, []).extend(_elems([element]))
    cmds += [
        {"add": {"element": {**_T, "name": set_name(table, fam), "elem": items}}}
        for fam, items in sorted(by_family.items())
    ]
    return cmds


def replace_ether_elements(
    macs: Iterable[str], timeout: float | None = None, comment: str | None = None
) -> list[dict[str, object]]:
    """Put MACs ("aa:bb:cc:dd:ee:ff") in the set of banned MACs with exactly this timeout and
    comment: add, delete, add again in one batch, as replace_elements does for addresses."""
    macs = [m.lower() for m in macs]
    if not macs:
        return []
    target = {**_T, "name": ETHER_BAN_TABLE}
    element = [SetElement(m, _seconds(timeout), None, comment) for m in macs]
    return [
        {"add": {"element": {**target, "elem": list(macs)}}},
        {"delete": {"element": {**target, "elem": list(macs)}}},
        {"add": {"element": {**target, "elem": _elems(element)}}},
    ]


def delete_ether_elements(macs: Iterable[str]) -> list[dict[str, object]]:
    """Remove MACs from the set of banned MACs (nft fails the batch if one is absent)."""
    return [{"delete": {"element": {**_T, "name": ETHER_BAN_TABLE, "elem": list(macs)}}}]


def list_ether_set() -> list[dict[str, object]]:
    return [{"list": {"set": {**_T, "name": ETHER_BAN_TABLE}}}]


def delete_elements(table: str, addrs: Iterable[Address]) -> list[dict[str, object]]:
    """Remove addresses from dynamic table `table` (nft fails the batch if one is absent)."""
    by_family: dict[int, list[object]] = {}
    for addr in addrs:
        family, text = _address(addr)
        by_family.setdefault(family, []).append(text)
    return [
        {"delete": {"element": {**_T, "name": set_name(table, fam), "elem": items}}}
        for fam, items in sorted(by_family.items())
    ]


def flush_sets(table: str) -> list[dict[str, object]]:
    """Empty both sets of dynamic table `table` (one batch)."""
    return [{"flush": {"set": {**_T, "name": set_name(table, fam)}}} for fam in (4, 6)]


# A block's element comment: "DETECTOR|OFFENSE|REASON" (nft's limit is 128 bytes), so that
# who blocked an address, and why, survives in the kernel across daemon restarts.
def block_comment(detector: str, offense: int, reason: str) -> str:
    def clean(text: str) -> str:  # nft prints comments in double quotes
        return "".join(c if c.isprintable() and c not in '"\\' else " " for c in text)

    text = f"{clean(detector).replace('|', '/')}|{int(offense)}|{clean(reason)}"
    data = text.encode()[:MAX_COMMENT]
    return data.decode(errors="ignore")


def parse_block_comment(comment: str | None) -> tuple[str, int, str]:
    """(detector, offense, reason) from block_comment; ("", 0, comment) for anything else."""
    if not comment:
        return "", 0, ""
    parts = comment.split("|", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1]), parts[2]
    return "", 0, comment


def list_overview() -> list[dict[str, object]]:
    """The chains and sets of our family, for parse_overview (each command on its own: nft
    answers a batch of listings with one JSON document each). With nft's terse output the
    sets come without their elements: `list table` (and even `list tables`) fetches every
    element of every set, which takes minutes for a static table of a million."""
    return [{"list": {kind: {"family": FAMILY}}} for kind in ("chains", "sets")]


def list_named_set(name: str) -> list[dict[str, object]]:
    return [{"list": {"set": {**_T, "name": name}}}]


def delete_set(name: str) -> list[dict[str, object]]:
    return [{"delete": {"set": {**_T, "name": name}}}]


def parse_overview(listing: dict[str, object] | None) -> TableState | None:
    """list_overview()'s answer -> TableState of our table (sets without elements); None
    when it has no chain and no set (absent, or as good as: build_ruleset makes both)."""
    ours: list[object] = []
    for obj in _objects(listing):
        for kind in ("chain", "set"):
            body = obj.get(kind)
            if isinstance(body, dict) and (body.get("table"), body.get("family")) == (
                TABLE,
                FAMILY,
            ):
                ours.append(obj)
    if not ours:
        return None
    return parse_table({"nftables": [{"table": {"family": FAMILY, "name": TABLE}}, *ours]})


def list_set(table: str, family: int) -> list[dict[str, object]]:
    return [{"list": {"set": {**_T, "name": set_name(table, family)}}}]


# ---- reading nft's answers -----------------------------------------------------------------------


def _objects(listing: dict[str, object] | None) -> list[Expr]:
    if not listing:
        return []
    items = listing.get("nftables", [])
    return items if isinstance(items, list) else []


def parse_elements(raw: object) -> tuple[SetElement, ...]:
    """A set's `elem` list from nft JSON -> SetElement (expires: seconds left)."""
    out: list[SetElement] = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict) and "elem" in item:
            e = item["elem"]
            out.append(
                SetElement(str(e["val"]), e.get("timeout"), e.get("expires"), e.get("comment"))
            )
        elif isinstance(item, str):
            out.append(SetElement(item))
    return tuple(out)


def parse_table(listing: dict[str, object] | None) -> TableState | None:
    """`list table inet ipsctl` JSON -> TableState; None when the listing has no table."""
    objs = _objects(listing)
    if not any("table" in o for o in objs):
        return None
    chains: list[str] = []
    sets: dict[str, SetState] = {}
    for obj in objs:
        if "chain" in obj:
            chains.append(str(obj["chain"]["name"]))
        elif "set" in obj:
            s = obj["set"]
            flags = s.get("flags", [])
            sets[s["name"]] = SetState(
                name=s["name"],
                type=str(s["type"]),
                flags=tuple(flags if isinstance(flags, list) else [flags]),
                timeout=s.get("timeout"),
                size=s.get("size"),
                elements=parse_elements(s.get("elem")),
            )
    return TableState(tuple(chains), sets)


@dataclass(frozen=True, slots=True)
class RuleCounter:
    packets: int = 0
    bytes: int = 0


def parse_counters(listing: dict[str, object] | None) -> dict[str, RuleCounter]:
    """Packets and bytes per comment (`ipsctl:FILE:LINE`, and USERSPACE_COMMENT), summed over
    the nft rules a policy rule became and over the hooks."""
    out: dict[str, RuleCounter] = {}
    for obj in _objects(listing):
        rule = obj.get("rule")
        if not isinstance(rule, dict):
            continue
        comment = rule.get("comment")
        if not isinstance(comment, str) or not comment.startswith(COMMENT_PREFIX):
            continue
        for expr in rule.get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                old = out.get(comment, RuleCounter())
                out[comment] = RuleCounter(
                    old.packets + int(counter.get("packets", 0)),
                    old.bytes + int(counter.get("bytes", 0)),
                )
    return out
