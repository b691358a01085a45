"""The sets of `inet ipsctl`: large static tables as named sets (StaticSets), the dynamic
tables' and block sets' objects, the set of banned MACs, and the state of a table as listed."""

from __future__ import annotations

import hashlib
import ipaddress
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from ips.policy.diagnostics import Span
from ips.policy.model import ETHER_BAN_TABLE, Policy, TableSpec
from ips.translate.nft.constants import (
    _T,
    BLOCK_TABLE,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_BLOCK_TIMEOUT,
    ELEMENT_CHUNK,
    NAMED_SET_MIN,
    SET_TYPES,
    Expr,
)


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
    # An interval set (a geo clause's networks): `ranges` holds its elements, first and last
    # address of each, and the set is looked up without a mask (plen is the full width).
    ranges: tuple[tuple[int, int], ...] = ()
    interval: bool = False

    def object(self) -> dict[str, object]:
        obj: dict[str, object] = {**_T, "name": self.name, "type": SET_TYPES[self.family]}
        if self.interval:
            obj["flags"] = ["interval"]
        return obj

    def chunks(self, size: int = ELEMENT_CHUNK) -> Iterable[Expr]:
        """`add element` commands of at most `size` elements, each for its own transaction."""
        text = _ipv4_text if self.family == 4 else _ipv6_text
        if self.interval:
            for start in range(0, len(self.ranges), size):
                elems: list[object] = [
                    text(lo) if lo == hi else {"range": [text(lo), text(hi)]}
                    for lo, hi in self.ranges[start : start + size]
                ]
                yield {"add": {"element": {**_T, "name": self.name, "elem": elems}}}
            return
        for start in range(0, len(self.nets), size):
            elems = [text(n) for n in self.nets[start : start + size]]
            yield {"add": {"element": {**_T, "name": self.name, "elem": elems}}}


def _ipv4_text(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _ipv6_text(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def static_set_name(table: str, family: int, plen: int | str, digest: str) -> str:
    """`big_v4_28_HASH` (the /28 networks of table big), `country.RU_v4_iv_HASH` (the
    interval set of a geo clause's networks)."""
    return f"{table[:64]}_v{family}_{plen}_{digest[:8]}"


def _interval_family(table: TableSpec, family: int) -> _TableFamily | None:
    """A geo table's networks of one family as one interval set, adjacent networks merged
    into ranges: a country's tens of thousands of networks are one lookup in the kernel,
    whatever their prefix lengths (a set per length would be as many nft rules)."""
    nets = table.nets4 if family == 4 else table.nets6
    if not nets:
        return None
    cached = _FAMILY_CACHE.get(id(nets))
    if cached is not None and cached[0] is nets:
        return cached[1]
    width = 32 if family == 4 else 128
    ranges: list[tuple[int, int]] = []
    for net, plen in sorted(nets):
        last = net | ((1 << (width - plen)) - 1)
        if ranges and net <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], last))
        else:
            ranges.append((net, last))
    digest = hashlib.sha256(
        b"".join(lo.to_bytes(16, "big") + hi.to_bytes(16, "big") for lo, hi in ranges)
    ).hexdigest()
    name = static_set_name(table.name, family, "iv", digest)
    named = StaticSet(name, table.name, family, width, (), tuple(ranges), interval=True)
    result = _TableFamily(frozenset(nets), (named,))
    if len(_FAMILY_CACHE) >= _FAMILY_CACHE_SIZE:
        _FAMILY_CACHE.pop(next(iter(_FAMILY_CACHE)))
    _FAMILY_CACHE[id(nets)] = (nets, result)
    return result


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
        if table.kind == "geo":
            return _interval_family(table, family)
        return _table_family(table, family)


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
