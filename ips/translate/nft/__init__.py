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

from ips.translate.nft.constants import _T as _T
from ips.translate.nft.constants import (
    ACCEPT_MARK,
    BARE_ACK_CLEARED_COMMENT,
    BARE_ACK_CT,
    BARE_ACK_MARK,
    BLOCK_TABLE,
    BLOCKS_COMMENT,
    CLEAR_MARK_COMMENT,
    COMMENT_PREFIX,
    COPIED_COMMENT,
    COPY_GROUP_BASE,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_BLOCK_TIMEOUT,
    ELEMENT_CHUNK,
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
    MAX_COMMENT,
    MAX_QUEUES,
    METER_PREFIX,
    METER_SIZE,
    METER_SUFFIX,
    METER_TIMEOUT,
    NAMED_SET_MIN,
    OFFLOAD_COMMENT,
    OFFLOAD_CT_MASK,
    OFFLOAD_CT_SHIFT,
    OFFLOAD_MARK,
    OFFLOAD_PAUSED,
    OFFLOAD_PRIORITY,
    OFFLOADED_COMMENT,
    PRIORITY,
    PROTO_UDPLITE,
    QUEUE_MASK,
    QUEUE_SHIFT,
    SET_TYPES,
    STATIC_SET_RE,
    STEER_COMMENT,
    STEER_SEED,
    SYNPROXY_CHAIN,
    SYNPROXY_COMMENT,
    SYNPROXY_HOOKS,
    SYNPROXY_INVALID_COMMENT,
    SYNPROXY_OPTIONS,
    SYNPROXY_PRIORITY,
    TABLE,
    USERSPACE_COMMENT,
    Alt,
    Expr,
)
from ips.translate.nft.expr import ALWAYS, NEVER
from ips.translate.nft.floods import (
    kernel_meters,
    meter_rate,
    meter_reason,
    meter_set,
    metered_rules,
)
from ips.translate.nft.members import (
    Address,
    RuleCounter,
    add_elements,
    block_comment,
    delete_elements,
    delete_ether_elements,
    delete_set,
    flush_ether_set,
    flush_sets,
    list_ether_set,
    list_named_set,
    list_overview,
    list_set,
    parse_block_comment,
    parse_counters,
    parse_elements,
    parse_overview,
    parse_table,
    replace_elements,
    replace_ether_elements,
)
from ips.translate.nft.rules import (
    MAX_KERNEL_RULES,
    compile_rule,
    fast_path_split,
    kernel_prefix,
    kernel_reason,
    rule_comment,
)
from ips.translate.nft.ruleset import (
    NftPlan,
    block_rules,
    build_ruleset,
    copy_group,
    delete_table,
    ether_block_rule,
    icmp_offload_budget,
    static_sets,
    synproxy_hooks,
)
from ips.translate.nft.sets import (
    SetElement,
    SetState,
    StaticSet,
    StaticSets,
    TableState,
    block_table_spec,
    ether_set_object,
    set_name,
    static_set_name,
)

__all__ = [
    "ACCEPT_MARK",
    "ALWAYS",
    "BARE_ACK_CLEARED_COMMENT",
    "BARE_ACK_CT",
    "BARE_ACK_MARK",
    "BLOCKS_COMMENT",
    "BLOCK_TABLE",
    "CLEAR_MARK_COMMENT",
    "COMMENT_PREFIX",
    "COPIED_COMMENT",
    "COPY_GROUP_BASE",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_BLOCK_TIMEOUT",
    "ELEMENT_CHUNK",
    "ETHER_BLOCKS_COMMENT",
    "ETHER_HOOKS",
    "FAMILY",
    "HANDSHAKE_ACK_CT",
    "HANDSHAKE_ACK_MARK",
    "HOOKS",
    "ICMP_METER",
    "ICMP_METER_SIZE",
    "ICMP_METER_TIMEOUT",
    "ICMP_OFFLOAD_SHARE",
    "MAX_COMMENT",
    "MAX_KERNEL_RULES",
    "MAX_QUEUES",
    "METER_PREFIX",
    "METER_SIZE",
    "METER_SUFFIX",
    "METER_TIMEOUT",
    "NAMED_SET_MIN",
    "NEVER",
    "OFFLOADED_COMMENT",
    "OFFLOAD_COMMENT",
    "OFFLOAD_CT_MASK",
    "OFFLOAD_CT_SHIFT",
    "OFFLOAD_MARK",
    "OFFLOAD_PAUSED",
    "OFFLOAD_PRIORITY",
    "PRIORITY",
    "PROTO_UDPLITE",
    "QUEUE_MASK",
    "QUEUE_SHIFT",
    "SET_TYPES",
    "STATIC_SET_RE",
    "STEER_COMMENT",
    "STEER_SEED",
    "SYNPROXY_CHAIN",
    "SYNPROXY_COMMENT",
    "SYNPROXY_HOOKS",
    "SYNPROXY_INVALID_COMMENT",
    "SYNPROXY_OPTIONS",
    "SYNPROXY_PRIORITY",
    "TABLE",
    "USERSPACE_COMMENT",
    "Address",
    "Alt",
    "Expr",
    "NftPlan",
    "RuleCounter",
    "SetElement",
    "SetState",
    "StaticSet",
    "StaticSets",
    "TableState",
    "add_elements",
    "block_comment",
    "block_rules",
    "block_table_spec",
    "build_ruleset",
    "compile_rule",
    "copy_group",
    "delete_elements",
    "delete_ether_elements",
    "delete_set",
    "delete_table",
    "ether_block_rule",
    "ether_set_object",
    "fast_path_split",
    "flush_ether_set",
    "flush_sets",
    "icmp_offload_budget",
    "kernel_meters",
    "kernel_prefix",
    "kernel_reason",
    "list_ether_set",
    "list_named_set",
    "list_overview",
    "list_set",
    "meter_rate",
    "meter_reason",
    "meter_set",
    "metered_rules",
    "parse_block_comment",
    "parse_counters",
    "parse_elements",
    "parse_overview",
    "parse_table",
    "replace_elements",
    "replace_ether_elements",
    "rule_comment",
    "set_name",
    "static_set_name",
    "static_sets",
    "synproxy_hooks",
]
