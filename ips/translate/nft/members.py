"""The nft protocol of the dynamic sets and listings: adding, replacing and deleting members
(blocks and their comments), listing commands, and reading nft's answers (parse_*)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ips.policy.model import ETHER_BAN_TABLE
from ips.translate.nft.constants import _T, COMMENT_PREFIX, FAMILY, MAX_COMMENT, TABLE, Expr
from ips.translate.nft.sets import SetElement, SetState, TableState, _elems, _seconds, set_name

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
    macs: Iterable[str],
    timeout: float | None = None,
    comment: str | None = None,
    expires: float | None = None,
) -> list[dict[str, object]]:
    """Put MACs ("aa:bb:cc:dd:ee:ff") in the set of banned MACs with exactly this timeout and
    comment: add, delete, add again in one batch, as replace_elements does for addresses
    (`expires` likewise: seconds left, for a ban carried over a restart)."""
    macs = [m.lower() for m in macs]
    if not macs:
        return []
    target = {**_T, "name": ETHER_BAN_TABLE}
    ttl, left = _seconds(timeout), _seconds(expires)
    element = [
        SetElement(m, ttl, left if left is not None and ttl else None, comment) for m in macs
    ]
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


def flush_ether_set() -> list[dict[str, object]]:
    return [{"flush": {"set": {**_T, "name": ETHER_BAN_TABLE}}}]


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
