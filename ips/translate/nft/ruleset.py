"""The batch that makes `inet ipsctl` run a policy (build_ruleset) as an NftPlan says: its
chains, sets, per-hook rules, offload and steering to the queues."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ips.policy.model import ETHER_BAN_TABLE, Policy, RuleSpec
from ips.translate.nft.constants import (
    _BARE_ACK_SIZES,
    _GEN_MASK,
    _T,
    ACCEPT_MARK,
    BARE_ACK_CLEARED_COMMENT,
    BARE_ACK_CT,
    BARE_ACK_MARK,
    BLOCK_TABLE,
    BLOCKS_COMMENT,
    CLEAR_MARK_COMMENT,
    COPIED_COMMENT,
    COPY_GROUP_BASE,
    ETHER_BLOCKS_COMMENT,
    ETHER_HOOKS,
    FAMILY,
    HANDSHAKE_ACK_CT,
    HANDSHAKE_ACK_MARK,
    HOOKS,
    ICMP_METER,
    ICMP_METER_SIZE,
    ICMP_METER_TIMEOUT,
    ICMP_OFFLOAD_SHARE,
    OFFLOAD_COMMENT,
    OFFLOAD_CT_SHIFT,
    OFFLOAD_MARK,
    OFFLOAD_PAUSED,
    OFFLOAD_PRIORITY,
    OFFLOADED_COMMENT,
    PRIORITY,
    QUEUE_MASK,
    QUEUE_SHIFT,
    STATIC_SET_RE,
    STEER_COMMENT,
    STEER_SEED,
    SYNPROXY_CHAIN,
    SYNPROXY_COMMENT,
    SYNPROXY_HOOKS,
    SYNPROXY_PRIORITY,
    TABLE,
    USERSPACE_COMMENT,
    Expr,
)
from ips.translate.nft.expr import _match, _meta, _payload
from ips.translate.nft.floods import (
    _meter_sets,
    _synproxy_raw_rule,
    _synproxy_rules,
    kernel_meters,
    metered_rules,
)
from ips.translate.nft.rules import kernel_prefix
from ips.translate.nft.sets import (
    SetElement,
    SetState,
    StaticSets,
    TableState,
    _elems,
    _wanted_sets,
    set_name,
)


def static_sets(policy: Policy, plan: NftPlan) -> StaticSets:
    """The named sets the kernel rules of `policy` under `plan` refer to (see StaticSets)."""
    static = StaticSets(policy.tables)
    if not plan.blocks_only:
        for hook in plan.hooks:
            kernel_prefix(policy, hook, static)
            kernel_meters(policy, hook, static)
    return static


def synproxy_hooks(policy: Policy, plan: NftPlan) -> tuple[str, ...]:
    """The hooks whose chains proxy TCP handshakes (`set synproxy on`); () for none."""
    if not policy.synproxy or plan.blocks_only:
        return ()
    return tuple(h for h in plan.hooks if h in SYNPROXY_HOOKS)


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
    offload_generation  1-254: the offload rules with this generation (see the package's
               docstring), when the policy has `set offload on`; 0: paused — nothing is
               stamped, nothing stays offloaded, but the chains and a `ct mark` rule stay:
               removing a base chain, or the last rule with a ct expression (conntrack
               then leaves the netns), unregisters a netfilter hook, and the kernel then
               drops every packet waiting in the queues; None: none
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
        bare_acks = _handshake_ack_rules(gen | HANDSHAKE_ACK_CT)
        bare_acks += _handshake_ack_rules(gen | BARE_ACK_CT)
        for exprs in _offloaded_rules(gen, icmp_budget) + bare_acks:
            cmds.append(_rule(hook, exprs, OFFLOADED_COMMENT))
        for exprs in _handshake_copy_rules(gen, first_queue, queues) if plan.copies else ():
            cmds.append(_rule(hook, exprs, COPIED_COMMENT))
        cmds.append(_rule(hook, _bare_acks_done(gen), BARE_ACK_CLEARED_COMMENT))
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
    rate = spec.number("rate")
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


def _handshake_ack_rules(stamp: int) -> list[list[Expr]]:
    """ct mark & MASK == stamp (the generation | HANDSHAKE_ACK_CT or BARE_ACK_CT), and a bare
    ACK: accepted like an offloaded packet. One rule per family and header size (nft has no
    arithmetic on two fields)."""
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
                    _match("==", {"&": [_ct_mark(), _GEN_MASK]}, stamp),
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
            {"mangle": {"key": _ct_mark(), "value": {"|": [_ct_mark_unstamped(), gen]}}},
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


def _ct_mark_unstamped() -> Expr:
    """The connection's mark without a stamp (the generation and its two handshake bits):
    what the stamping and clearing rules keep of it."""
    return {"&": [_ct_mark(), ~_GEN_MASK & 0xFFFFFFFF]}


def _bare_acks_done(gen: int) -> list[Expr]:
    """ct mark & MASK == gen | BARE_ACK_CT (the bare ACKs were accepted before): the stamp
    cleared, and the packet goes on to the rules after it and the queue. Any protocol: the
    mark is a connection's, and only a TCP SYN+ACK's verdict sets it."""
    return [
        _match("==", {"&": [_ct_mark(), _GEN_MASK]}, gen | BARE_ACK_CT),
        {"mangle": {"key": _ct_mark(), "value": _ct_mark_unstamped()}},
        {"counter": None},
    ]


def _offload_exprs(gen: int) -> list[list[Expr]]:
    """The offload chain: meta mark & OFFLOAD_MARK: ct mark = (ct mark & ~MASK) | gen;
    meta mark & HANDSHAKE_ACK_MARK: the same with HANDSHAKE_ACK_CT; meta mark & BARE_ACK_MARK:
    with BARE_ACK_CT (other ct-mark bits kept)."""
    return [
        [
            _match("==", {"&": [_meta("mark"), bit]}, bit),
            {"mangle": {"key": _ct_mark(), "value": {"|": [_ct_mark_unstamped(), stamp]}}},
            {"counter": None},
        ]
        for bit, stamp in (
            (OFFLOAD_MARK, gen),
            (HANDSHAKE_ACK_MARK, gen | HANDSHAKE_ACK_CT),
            (BARE_ACK_MARK, gen | BARE_ACK_CT),
        )
    ]


def _clear_mark() -> dict[str, object]:
    ours = ACCEPT_MARK | OFFLOAD_MARK | HANDSHAKE_ACK_MARK | BARE_ACK_MARK | QUEUE_MASK
    return {"key": _meta("mark"), "value": {"&": [_meta("mark"), ~ours & 0xFFFFFFFF]}}


def _rule(chain: str, exprs: list[Expr], comment: str) -> dict[str, object]:
    return {"add": {"rule": {**_T, "chain": chain, "expr": exprs, "comment": comment}}}


def delete_table() -> list[dict[str, object]]:
    """Delete our table, and only it (fails if absent: see Nft.remove)."""
    return [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]
