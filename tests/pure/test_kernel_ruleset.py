"""ips/translate/nft/: policy -> libnftables JSON, pure. The JSON shapes nft accepts were
checked against nft 1.0.6 (tests/lab/test_kernel_netns.py loads them into a real kernel); here
each condition's shape, the fast-path split, and — with a small interpreter of the generated
rules — that the kernel's first match is the engine's (explain.py) on random policies."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.packet import (
    FRAG_LATER,
    PORT_PROTOS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
)
from ips.policy.diagnostics import PolicyError
from ips.policy.explain import explain
from ips.policy.model import Policy
from ips.policy.resolve import load_policy, load_policy_text
from ips.translate import nft as rs
from ips.translate.nft import ACCEPT_MARK

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def P(text: str) -> Policy:
    return load_policy_text(text, "t.rules")


def rules_of(cmds: list[dict[str, Any]], chain: str | None = None) -> list[dict[str, Any]]:
    out = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    return [r for r in out if chain is None or r["chain"] == chain]


def policy_rules(text: str, hook: str = "forward") -> list[list[dict[str, Any]]]:
    """The expression lists of the nft rules made from policy rules (not the fixed ones)."""
    cmds = rs.build_ruleset(P(text), rs.NftPlan(hooks=(hook,)))
    return [
        r["expr"]
        for r in rules_of(cmds)
        if r["comment"] not in (rs.BLOCKS_COMMENT, rs.CLEAR_MARK_COMMENT, rs.USERSPACE_COMMENT)
    ]


def label(cmd: dict[str, Any]) -> str:
    """'verb:name' of a command, e.g. 'flush:output' ('' for rules, which have no name)."""
    ((verb, body),) = cmd.items()
    ((_, obj),) = body.items()
    return f"{verb}:{obj.get('name', '')}"


def m(op: str, left: Any, right: Any) -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


META = lambda k: {"meta": {"key": k}}  # noqa: E731
PL = lambda p, f: {"payload": {"protocol": p, "field": f}}  # noqa: E731
COUNTER = {"counter": None}
DROP = {"drop": None}
ACCEPT = [
    {"mangle": {"key": META("mark"), "value": {"|": [META("mark"), ACCEPT_MARK]}}},
    {"accept": None},
]
V4 = m("==", META("nfproto"), "ipv4")
V6 = m("==", META("nfproto"), "ipv6")


# ---- the split ----------------------------------------------------------------------------------


def test_split_stops_at_the_first_rule_that_needs_userspace() -> None:
    p = P(
        "drop proto tcp to port 23\n"
        "accept from 10.0.0.0/8\n"
        'drop proto tcp flags S alert "syn"\n'  # alert: userspace
        "drop proto udp\n"  # kernel-able, but after a userspace rule
    )
    assert rs.fast_path_split(p) == 2
    comments = {r["comment"] for r in rules_of(rs.build_ruleset(p))}
    assert "ipsctl:t.rules:4" not in comments and "ipsctl:t.rules:2" in comments


@pytest.mark.parametrize(
    "rule",
    [
        "drop proto tcp log",
        'match proto tcp alert "x"',
        "rewrite proto udp to port 53 set ttl 64",
        "accept state established",
        'drop proto tcp to port 80 payload contains "x"',
        "accept proto icmp type echo-request limit 5/s",
        "drop fragment",
    ],
)
def test_rules_that_need_userspace(rule: str) -> None:
    p = P(rule + "\ndrop proto udp")
    assert rs.fast_path_split(p) == 0
    assert rs.kernel_reason(p.rules[0]) is not None
    assert policy_rules(rule + "\ndrop proto udp") == []


def test_all_kernel_able() -> None:
    p = P("drop proto tcp\naccept proto udp\nreject")
    assert rs.fast_path_split(p) == 3


def test_shipped_policies_split() -> None:
    gateway = load_policy(POLICIES / "gateway.rules")
    server = load_policy(POLICIES / "server.rules")
    assert rs.fast_path_split(gateway) == 1  # drop from @banned; then alerting flag rules
    assert rs.fast_path_split(server) == 2  # + accept from @trusted


# ---- conditions -----------------------------------------------------------------------------


def test_drop_from_dynamic_table_is_one_rule_per_family() -> None:
    got = policy_rules("table banned dynamic timeout 1h\ndrop from @banned")
    assert got == [
        [V4, m("==", PL("ip", "saddr"), "@banned_v4"), COUNTER, DROP],
        [V6, m("==", PL("ip6", "saddr"), "@banned_v6"), COUNTER, DROP],
    ]


def test_static_networks_become_anonymous_sets_merged() -> None:
    got = policy_rules("accept to { 10.0.0.0/8, 10.1.0.0/16, 192.0.2.1, 192.0.2.0/31 }")
    want_set = {
        "set": [
            {"prefix": {"addr": "10.0.0.0", "len": 8}},
            {"prefix": {"addr": "192.0.2.0", "len": 31}},
        ]
    }
    assert got == [[V4, m("==", PL("ip", "daddr"), want_set), COUNTER, *ACCEPT]]


def test_mixed_family_rule_gives_one_rule_per_family() -> None:
    got = policy_rules("drop from { 192.0.2.7, 2001:db8::/32 }")
    assert got == [
        [V4, m("==", PL("ip", "saddr"), "192.0.2.7"), COUNTER, DROP],
        [
            V6,
            m("==", PL("ip6", "saddr"), {"prefix": {"addr": "2001:db8::", "len": 32}}),
            COUNTER,
            DROP,
        ],
    ]


def test_negated_addresses_and_tables_are_anded() -> None:
    got = policy_rules("table b dynamic\ndrop from !{ 10.0.0.0/8, @b }")
    assert got[0] == [
        V4,
        m("!=", PL("ip", "saddr"), {"prefix": {"addr": "10.0.0.0", "len": 8}}),
        m("!=", PL("ip", "saddr"), "@b_v4"),
        COUNTER,
        DROP,
    ]
    assert got[1] == [V6, m("!=", PL("ip6", "saddr"), "@b_v6"), COUNTER, DROP]


def test_networks_or_table_is_split_in_two_rules() -> None:
    got = policy_rules("table b dynamic\ndrop from { 10.0.0.0/8, @b }")
    assert got == [
        [V4, m("==", PL("ip", "saddr"), {"prefix": {"addr": "10.0.0.0", "len": 8}}), COUNTER, DROP],
        [V4, m("==", PL("ip", "saddr"), "@b_v4"), COUNTER, DROP],
        [V6, m("==", PL("ip6", "saddr"), "@b_v6"), COUNTER, DROP],
    ]


def test_ports_imply_l4proto_and_use_th() -> None:
    got = policy_rules("drop to port { 22, 8080-8089 }")
    assert got == [
        [
            m("==", META("l4proto"), {"set": sorted(PORT_PROTOS)}),
            m("==", PL("th", "dport"), {"set": [22, {"range": [8080, 8089]}]}),
            COUNTER,
            DROP,
        ]
    ]


def test_port_forms() -> None:
    got = policy_rules("drop proto tcp from port 53 to port !1000-2000")
    assert got == [
        [
            m("==", META("l4proto"), PROTO_TCP),
            m("==", PL("th", "sport"), 53),
            m("!=", PL("th", "dport"), {"range": [1000, 2000]}),
            COUNTER,
            DROP,
        ]
    ]


def test_protocol_sets_and_negation() -> None:
    assert policy_rules("drop proto { tcp, udp }")[0][0] == m(
        "==", META("l4proto"), {"set": [6, 17]}
    )
    assert policy_rules("drop proto !{ tcp, udp }")[0][0] == m(
        "!=", META("l4proto"), {"set": [6, 17]}
    )
    assert policy_rules("drop proto 47")[0][0] == m("==", META("l4proto"), 47)


def test_interfaces_and_wildcards() -> None:
    got = policy_rules("drop in on { eth0, wlan* } out on !veth1")
    assert got == [
        [
            m("==", META("iifname"), {"set": ["eth0", "wlan*"]}),
            m("!=", META("oifname"), "veth1"),
            COUNTER,
            DROP,
        ]
    ]


def test_on_either_interface_is_two_rules_in_forward() -> None:
    got = policy_rules("drop on eth*")
    assert got == [
        [m("==", META("iifname"), "eth*"), COUNTER, DROP],
        [m("==", META("oifname"), "eth*"), COUNTER, DROP],
    ]
    # input has no output interface: only iifname; output has no input interface
    assert policy_rules("drop on eth*", "input") == [
        [m("==", META("iifname"), "eth*"), COUNTER, DROP]
    ]
    assert policy_rules("drop on eth*", "output") == [
        [m("==", META("oifname"), "eth*"), COUNTER, DROP]
    ]
    # negated: the missing interface (None) already matches
    assert policy_rules("drop on !eth0", "input") == [[COUNTER, DROP]]


def test_direction_and_missing_interfaces_per_hook() -> None:
    assert policy_rules("drop in", "output") == []  # no input interface in output
    assert policy_rules("drop out", "input") == []
    assert policy_rules("drop in", "forward") == [[COUNTER, DROP]]
    assert policy_rules("drop in on eth0", "output") == []
    assert policy_rules("drop in on !eth0", "output") == [[COUNTER, DROP]]
    assert policy_rules("drop out on eth0", "input") == []


def test_tcp_flags_value_mask() -> None:
    got = policy_rules("drop proto tcp flags S/SA")
    assert got == [
        [
            m("==", META("l4proto"), PROTO_TCP),
            m("==", {"&": [PL("tcp", "flags"), 0x12]}, 0x02),
            COUNTER,
            DROP,
        ]
    ]
    null = policy_rules("drop proto tcp flags /FSRPAU")[0]
    assert null[1] == m("==", {"&": [PL("tcp", "flags"), 0x3F]}, 0)


def test_icmp_types_and_code() -> None:
    got = policy_rules("accept proto icmp type destination-unreachable code 4")
    assert got == [
        [
            V4,
            m("==", META("l4proto"), PROTO_ICMP),
            m("==", PL("icmp", "type"), 3),
            m("==", PL("icmp", "code"), 4),
            COUNTER,
            *ACCEPT,
        ]
    ]
    got6 = policy_rules("accept proto icmpv6 type { 1, echo-request }")
    assert got6[0][:3] == [
        V6,
        m("==", META("l4proto"), PROTO_ICMPV6),
        m("==", PL("icmpv6", "type"), {"set": [1, 128]}),
    ]
    neg = policy_rules("drop proto icmp type !echo-request")[0]
    assert neg[2] == m("!=", PL("icmp", "type"), 8)


@pytest.mark.parametrize(
    ("clause", "cond"),
    [
        ("length > 1000", m(">", META("length"), 1000)),
        ("length <= 60", m("<=", META("length"), 60)),
        ("length != 40", m("!=", META("length"), 40)),
        ("length 100", m("==", META("length"), 100)),
        ("length 40-60", m("==", META("length"), {"range": [40, 60]})),
    ],
)
def test_length(clause: str, cond: dict[str, Any]) -> None:
    assert policy_rules(f"drop {clause}") == [[cond, COUNTER, DROP]]


# ---- actions ----------------------------------------------------------------------------------


def test_accept_sets_the_mark_bit_and_accepts() -> None:
    assert policy_rules("accept proto udp")[0][-3:] == [COUNTER, *ACCEPT]


def test_reject_default_is_reset_for_tcp_and_icmp_otherwise() -> None:
    got = policy_rules("reject from 10.0.0.0/8")
    src = m("==", PL("ip", "saddr"), {"prefix": {"addr": "10.0.0.0", "len": 8}})
    assert got == [
        [V4, m("==", META("l4proto"), 6), src, COUNTER, {"reject": {"type": "tcp reset"}}],
        [
            V4,
            m("==", META("l4proto"), {"set": [17, 136]}),
            src,
            COUNTER,
            {"reject": {"type": "icmpx", "expr": 1}},
        ],  # port unreachable (as the engine)
        [V4, src, COUNTER, {"reject": {"type": "icmpx", "expr": 3}}],  # admin prohibited
    ]


def test_reject_tcp_only_is_one_rule() -> None:
    assert policy_rules("reject proto tcp to port 135-139") == [
        [
            m("==", META("l4proto"), 6),
            m("==", PL("th", "dport"), {"range": [135, 139]}),
            COUNTER,
            {"reject": {"type": "tcp reset"}},
        ]
    ]


def test_reject_udp_only_is_port_unreachable() -> None:
    assert policy_rules("reject proto udp")[0][-1] == {"reject": {"type": "icmpx", "expr": 1}}


@pytest.mark.parametrize(
    ("clause", "action"),
    [
        ("with tcp-reset", {"reject": {"type": "tcp reset"}}),
        ("with icmp host-unreachable", {"reject": {"type": "icmp", "expr": 1}}),
        ("with icmpv6 admin-prohibited", {"reject": {"type": "icmpv6", "expr": 1}}),
        ("with icmpx no-route", {"reject": {"type": "icmpx", "expr": 0}}),
    ],
)
def test_reject_with(clause: str, action: dict[str, Any]) -> None:
    got = policy_rules(f"reject {clause}")
    assert len(got) == 1 and got[0][-1] == action
    if "icmpv6" in clause:
        assert got[0][0] == V6
    elif "icmp " in clause:
        assert got[0][0] == V4


# ---- the table ------------------------------------------------------------------------------


def test_every_kernel_rule_has_a_counter_and_the_comment_of_its_line() -> None:
    text = "table b dynamic\ndrop from @b\n\nreject proto { tcp, udp }\naccept on eth0"
    rules = rules_of(rs.build_ruleset(P(text)))
    comments = [r["comment"] for r in rules]
    assert comments == [
        rs.BLOCKS_COMMENT,
        rs.BLOCKS_COMMENT,
        rs.CLEAR_MARK_COMMENT,
        "ipsctl:t.rules:2",
        "ipsctl:t.rules:2",
        "ipsctl:t.rules:4",
        "ipsctl:t.rules:4",
        "ipsctl:t.rules:5",
        "ipsctl:t.rules:5",
        rs.USERSPACE_COMMENT,
    ]
    assert all(
        {"counter": None} in r["expr"] for r in rules if r["comment"] != rs.CLEAR_MARK_COMMENT
    )


def test_table_sets_and_chains() -> None:
    p = P("table banned dynamic timeout 10m\ntable ok = { 10.0.0.1 }\ndrop from @banned")
    cmds = rs.build_ruleset(p, rs.NftPlan(hooks=("forward", "input")))
    assert cmds[0] == {"add": {"table": {"family": "inet", "name": "ipsctl"}}}
    # every command speaks of our table only
    for c in cmds:
        (obj,) = next(iter(c.values())).values()
        assert obj.get("family") == "inet"
        assert obj.get("table", obj.get("name")) == "ipsctl"
    sets = [c["add"]["set"] for c in cmds if "set" in c.get("add", {})]
    assert sets == [
        {
            "family": "inet",
            "table": "ipsctl",
            "name": "banned_v4",
            "type": "ipv4_addr",
            "flags": ["timeout"],
            "size": 65536,
            "timeout": 600,
        },
        {
            "family": "inet",
            "table": "ipsctl",
            "name": "banned_v6",
            "type": "ipv6_addr",
            "flags": ["timeout"],
            "size": 65536,
            "timeout": 600,
        },
    ]
    chains = [c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})]
    assert [(c["name"], c["hook"], c["prio"], c["type"], c["policy"]) for c in chains] == [
        ("forward", "forward", -10, "filter", "accept"),
        ("input", "input", -10, "filter", "accept"),
    ]
    flushes = [c["flush"]["chain"]["name"] for c in cmds if "flush" in c]
    assert flushes == ["forward", "input"]
    # nothing is deleted on a fresh apply: sets keep their members
    assert not any("delete" in c for c in cmds)


def test_reapply_keeps_sets_and_drops_what_went_away() -> None:
    old = rs.TableState(
        chains=("forward", "output"),
        sets={
            "banned_v4": rs.SetState("banned_v4", "ipv4_addr", ("timeout",), 3600, 65536),
            "banned_v6": rs.SetState("banned_v6", "ipv6_addr", ("timeout",), 3600, 65536),
            "gone_v4": rs.SetState("gone_v4", "ipv4_addr", ("timeout",), 60, 65536),
        },
    )
    p = P("table banned dynamic timeout 2h\ndrop from @banned")
    cmds = rs.build_ruleset(p, rs.NftPlan(hooks=("forward",)), existing=old)
    deletes = [c["delete"] for c in cmds if "delete" in c]
    assert deletes == [
        {"chain": {"family": "inet", "table": "ipsctl", "name": "output"}},
        {"set": {"family": "inet", "table": "ipsctl", "name": "gone_v4"}},
    ]
    # the chain is flushed before the set it used is deleted
    order = [label(c) for c in cmds]
    assert order.index("flush:output") < order.index("delete:gone_v4")
    assert order.index("flush:output") < order.index("delete:output")
    # the kept set is only `add`ed (idempotent: members stay), with its new timeout
    adds = [c["add"]["set"] for c in cmds if "set" in c.get("add", {})]
    assert [(s["name"], s["timeout"]) for s in adds] == [("banned_v4", 7200), ("banned_v6", 7200)]


def test_set_with_other_flags_is_recreated_with_its_members() -> None:
    el = rs.SetElement("192.0.2.9", timeout=3600, expires=1200)
    old = rs.TableState(
        chains=("forward",),
        sets={"b_v4": rs.SetState("b_v4", "ipv4_addr", ("interval", "timeout"), 3600, 10, (el,))},
    )
    cmds = rs.build_ruleset(P("table b dynamic timeout 1h\ndrop from @b"), existing=old)
    kinds = [(next(iter(c)), next(iter(next(iter(c.values()))))) for c in cmds]
    i_del = kinds.index(("delete", "set"))
    i_add = kinds.index(("add", "element"))
    assert i_del < i_add
    assert cmds[i_add]["add"]["element"]["elem"] == [
        {"elem": {"val": "192.0.2.9", "timeout": 3600, "expires": 1200}}
    ]


def test_nft_queue_after_the_prefix() -> None:
    p = P("drop proto tcp to port 23\nmatch proto tcp alert")
    tail = rules_of(rs.build_ruleset(p, rs.NftPlan(nft_queue=True, queue=3)))[-1]
    assert tail["comment"] == rs.USERSPACE_COMMENT
    assert tail["expr"] == [COUNTER, {"queue": {"num": 3, "flags": ["bypass"]}}]
    fanout = rs.NftPlan(nft_queue=True, queue=(0, 3), fail_open=False)
    tail = rules_of(rs.build_ruleset(p, fanout))[-1]
    assert tail["expr"][-1] == {"queue": {"num": {"range": [0, 3]}, "flags": ["fanout"]}}
    # without nft's queue: only the counter (iptables queues)
    tail = rules_of(rs.build_ruleset(p))[-1]
    assert tail["expr"] == [COUNTER]


def test_each_chain_first_clears_our_mark_bits() -> None:
    # right after the drops of blocked sources (a drop needs no mark): the accept bit, the
    # offload, handshake-ACK and bare-ACK bits and the queue-index bits, so no mark set
    # elsewhere can skip inspection
    first = rules_of(rs.build_ruleset(P("drop proto udp"), rs.NftPlan(hooks=("input",))))[2]
    assert first["comment"] == rs.CLEAR_MARK_COMMENT
    assert first["expr"] == [
        {"mangle": {"key": META("mark"), "value": {"&": [META("mark"), 0xFE03FFFF]}}}
    ]
    ours = rs.ACCEPT_MARK | rs.OFFLOAD_MARK | rs.HANDSHAKE_ACK_MARK | rs.BARE_ACK_MARK
    assert ours | rs.QUEUE_MASK == ~0xFE03FFFF & 0xFFFFFFFF


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="hook"):
        rs.build_ruleset(P("drop"), rs.NftPlan(hooks=("prerouting",)))
    with pytest.raises(ValueError, match="queue"):
        rs.build_ruleset(P("drop"), rs.NftPlan(queue=(3, 1)))


def test_long_file_names_keep_the_comment_short() -> None:
    p = load_policy_text("drop proto udp", "/very/" + "long/" * 40 + "edge.rules")
    comment = rs.rule_comment(p.rules[0])
    assert comment == "ipsctl:edge.rules:1"


# ---- elements ---------------------------------------------------------------------------------


def test_elements_go_to_the_set_of_their_family_with_timeouts() -> None:
    cmds = rs.add_elements("banned", ["192.0.2.1", b"\xc0\x00\x02\x02", "2001:db8::1"], 90.5)
    assert cmds == [
        {
            "add": {
                "element": {
                    "family": "inet",
                    "table": "ipsctl",
                    "name": "banned_v4",
                    "elem": [
                        {"elem": {"val": "192.0.2.1", "timeout": 91}},
                        {"elem": {"val": "192.0.2.2", "timeout": 91}},
                    ],
                }
            }
        },
        {
            "add": {
                "element": {
                    "family": "inet",
                    "table": "ipsctl",
                    "name": "banned_v6",
                    "elem": [{"elem": {"val": "2001:db8::1", "timeout": 91}}],
                }
            }
        },
    ]
    assert rs.add_elements("b", ["10.0.0.1"])[0]["add"]["element"]["elem"] == ["10.0.0.1"]
    assert rs.delete_elements("b", ["2001:db8::1"]) == [
        {
            "delete": {
                "element": {
                    "family": "inet",
                    "table": "ipsctl",
                    "name": "b_v6",
                    "elem": ["2001:db8::1"],
                }
            }
        }
    ]
    with pytest.raises(ValueError):
        rs.add_elements("b", ["not-an-address"])


def test_parse_table_and_counters() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "ipsctl", "handle": 1}},
            {
                "set": {
                    "family": "inet",
                    "name": "b_v4",
                    "table": "ipsctl",
                    "type": "ipv4_addr",
                    "handle": 1,
                    "size": 65536,
                    "flags": ["timeout"],
                    "timeout": 3600,
                    "elem": [
                        {"elem": {"val": "1.2.3.4", "timeout": 100, "expires": 99}},
                        "5.6.7.8",
                    ],
                }
            },
            {"chain": {"family": "inet", "table": "ipsctl", "name": "forward", "handle": 2}},
            {
                "rule": {
                    "chain": "forward",
                    "comment": "ipsctl:t.rules:2",
                    "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"drop": None}],
                }
            },
            {
                "rule": {
                    "chain": "forward",
                    "comment": "ipsctl:t.rules:2",
                    "expr": [{"counter": {"packets": 1, "bytes": 60}}, {"drop": None}],
                }
            },
        ]
    }
    state = rs.parse_table(listing)
    assert state is not None and state.chains == ("forward",)
    assert state.sets["b_v4"].elements == (
        rs.SetElement("1.2.3.4", 100, 99),
        rs.SetElement("5.6.7.8"),
    )
    assert rs.parse_counters(listing) == {"ipsctl:t.rules:2": rs.RuleCounter(4, 240)}
    assert rs.parse_table({}) is None


# ---- the kernel's first match is the engine's -------------------------------------------------
# A small interpreter of exactly the JSON subset translate/nft/ emits, run against explain.py.


def _left(expr: Any, pkt: Packet, iif: str | None, oif: str | None) -> Any:
    """The value nft would load, or None when the load fails (the rule then does not match)."""
    if "&" in expr:
        inner, mask = expr["&"]
        value = _left(inner, pkt, iif, oif)
        return None if value is None else value & mask
    if "meta" in expr:
        key = expr["meta"]["key"]
        return {
            "nfproto": "ipv4" if pkt.family == 4 else "ipv6",
            "l4proto": pkt.proto,
            "iifname": iif or "",
            "oifname": oif or "",
            "length": pkt.length,
        }[key]
    proto, fld = expr["payload"]["protocol"], expr["payload"]["field"]
    if proto in ("ip", "ip6"):
        if (proto == "ip") != (pkt.family == 4):
            return None
        return ipaddress.ip_address(pkt.src if fld == "saddr" else pkt.dst)
    if pkt.frag == FRAG_LATER:
        return None  # no transport header to load
    if proto == "th":
        return pkt.sport if fld == "sport" else pkt.dport
    if proto == "tcp":
        return pkt.flags if pkt.proto == PROTO_TCP else None
    if proto in ("icmp", "icmpv6"):
        if pkt.proto != (PROTO_ICMP if proto == "icmp" else PROTO_ICMPV6):
            return None
        return pkt.icmp_type if fld == "type" else pkt.icmp_code
    raise AssertionError(expr)


def _in(value: Any, right: Any, members: dict[str, set[bytes]]) -> bool:
    if isinstance(right, dict) and "set" in right:
        return any(_in(value, r, members) for r in right["set"])
    if isinstance(right, dict) and "range" in right:
        lo, hi = right["range"]
        return lo <= value <= hi
    if isinstance(right, dict) and "prefix" in right:
        net = ipaddress.ip_network(f"{right['prefix']['addr']}/{right['prefix']['len']}")
        return value.version == net.version and value in net
    if isinstance(right, str) and right.startswith("@"):
        table, fam = right[1:].rsplit("_v", 1)
        return value.version == int(fam) and value.packed in members.get(table, set())
    if isinstance(value, str) and isinstance(right, str) and right.endswith("*"):
        return value.startswith(right[:-1])
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value == ipaddress.ip_address(right)
    return value == right


def _holds(match: Any, pkt: Packet, iif: str | None, oif: str | None, members: Any) -> bool:
    value = _left(match["left"], pkt, iif, oif)
    if value is None:
        return False
    op, right = match["op"], match["right"]
    if op == "==":
        return _in(value, right, members)
    if op == "!=":
        return not _in(value, right, members)
    return {"<": value < right, "<=": value <= right, ">": value > right, ">=": value >= right}[op]


def first_kernel_match(
    cmds: list[dict[str, Any]],
    hook: str,
    pkt: Packet,
    iif: str | None,
    oif: str | None,
    members: dict[str, set[bytes]],
) -> tuple[str, dict[str, Any]] | None:
    for rule in rules_of(cmds, hook):
        if rule["comment"] in (rs.CLEAR_MARK_COMMENT, rs.USERSPACE_COMMENT):
            continue  # (the blocks rules are interpreted: they are drops like any other)
        matches = [e["match"] for e in rule["expr"] if "match" in e]
        if all(_holds(mt, pkt, iif, oif, members) for mt in matches):
            return rule["comment"], rule["expr"][-1]
    return None


def engine_answer(rule: Any, pkt: Packet) -> dict[str, Any]:
    """What the engine's verdict means as an nft statement (ips/engine/actions.reject_reply)."""
    if rule.action == "accept":
        return {"accept": None}
    if rule.action == "drop":
        return {"drop": None}
    kind, code = rule.reject_with or (None, None)
    if kind is None and pkt.proto == PROTO_TCP:
        kind = "tcp-reset"
    if kind == "tcp-reset":
        return {"reject": {"type": "tcp reset"}}
    kind = kind or "icmpx"
    if code is None:
        udp = pkt.proto in (PROTO_UDP, 136)
        code = {"icmp": (3, 13), "icmpv6": (4, 1), "icmpx": (1, 3)}[kind][0 if udp else 1]
    return {"reject": {"type": kind, "expr": code}}


ADDRS = [
    "10.0.0.0/8", "10.1.2.3", "!10.1.0.0/16", "{ 10.2.0.0/16, 2001:db8::/32 }", "2001:db8::/32",
    "!{ 10.1.2.3, 192.0.2.0/24 }", "any", "@banned", "{ 10.1.0.0/16, @banned }",
    "!{ 2001:db8::/32, @banned }", "!@banned", "{ 0.0.0.0/0 }", "10.1.2.0/31",
    "!{ 10.0.0.0/8, @banned }", "{ ::/0, 10.0.0.0/8 }",
]  # fmt: skip
PORTS = ["80", "{ 22, 80, 443 }", "1000-2000", "!80", "!{ 1-1024 }", "0-65535"]
IFACES = [
    "in on eth0", "out on eth1", "on eth*", "in", "out", "on !eth0", "in on { eth1, wlan* }",
    "out on !{ eth0, wl* }",
]  # fmt: skip
BANNED = ["10.1.2.3", "2001:db8::1", "192.0.2.1", "fe80::1"]
REJECTS = ["", "with icmpx admin-prohibited", "with icmp host-unreachable",
           "with icmpv6 port-unreachable"]  # fmt: skip


@st.composite
def kernel_rule(draw: st.DrawFn) -> str:
    action = draw(st.sampled_from(["accept", "drop", "reject"]))
    parts = [action]
    proto = draw(st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "{ tcp, udp }", "!tcp", None]))
    if proto:
        parts.append(f"proto {proto}")
    has_ports = proto in ("tcp", "udp", "{ tcp, udp }")
    for word in ("from", "to"):
        addr = draw(st.sampled_from(ADDRS)) if draw(st.booleans()) else None
        port = draw(st.sampled_from(PORTS)) if has_ports and draw(st.booleans()) else None
        if addr or port:
            parts.append(word + (f" {addr}" if addr else "") + (f" port {port}" if port else ""))
    if proto == "tcp" and draw(st.booleans()):
        parts.append("flags " + draw(st.sampled_from(["S/SA", "S", "A/A", "/FSRPAU"])))
    if proto in ("icmp", "icmpv6") and draw(st.booleans()):
        parts.append(draw(st.sampled_from(["type { 0, 3, 129 }", "type !8", "type 3 code 3"])))
    if draw(st.integers(0, 2)) == 0:
        parts.append(draw(st.sampled_from(IFACES)))
    if draw(st.integers(0, 3)) == 0:
        parts.append(draw(st.sampled_from(["length > 60", "length 20-50", "length != 40"])))
    if action == "reject":
        parts.append(draw(st.sampled_from(REJECTS)))
    return " ".join(parts)


@st.composite
def packet_case(draw: st.DrawFn) -> tuple[Packet, str, str | None, str | None]:
    v6 = draw(st.booleans())
    pool = (
        ["2001:db8::1", "2001:db8:1::5", "fe80::1"]
        if v6
        else ["10.0.0.1", "10.1.2.3", "10.2.0.7", "192.0.2.1", "10.1.2.0"]
    )
    proto = draw(st.sampled_from([PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 if v6 else PROTO_ICMP]))
    ports = st.sampled_from([22, 53, 80, 443, 1000, 1500, 5000])
    data = build_packet(
        proto,
        draw(st.sampled_from(pool)),
        draw(st.sampled_from(pool)),
        draw(ports),
        draw(ports),
        flags=draw(st.sampled_from([0x02, 0x12, 0x10, 0x00])),
        icmp_type=draw(st.sampled_from([0, 3, 8, 128, 129])) if proto != PROTO_TCP else None,
        payload=b"p" * draw(st.integers(0, 40)),
    )
    pkt = decode_l3(data)
    assert isinstance(pkt, Packet)
    hook = draw(st.sampled_from(["forward", "input", "output"]))
    iif = draw(st.sampled_from(["eth0", "eth1", "wlan0"])) if hook != "output" else None
    oif = draw(st.sampled_from(["eth1", "eth0", "wlx"])) if hook != "input" else None
    return pkt, hook, iif, oif


def covers(comment: str, rule_comment: str) -> bool:
    """The nft rule's comment is the rule's, or a merged group's FILE:FIRST-LAST around it."""
    if comment == rule_comment:
        return True
    head, _, span = comment.rpartition(":")
    rhead, _, line = rule_comment.rpartition(":")
    first, _, last = span.partition("-")
    return head == rhead and bool(last) and int(first) <= int(line) <= int(last)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=st.lists(kernel_rule(), min_size=1, max_size=10),
    cases=st.lists(packet_case(), min_size=1, max_size=10),
    banned=st.sets(st.sampled_from(BANNED), max_size=3),
)
def test_kernel_rules_decide_like_the_engine(
    rules: list[str], cases: list[tuple[Packet, str, str | None, str | None]], banned: set[str]
) -> None:
    text = "\n".join(["table banned dynamic timeout 1h", *rules])
    try:
        policy = load_policy_text(text, "k.rules")
    except PolicyError:
        assume(False)
        return
    assert rs.fast_path_split(policy) == len(policy.rules)
    members = {"banned": {ipaddress.ip_address(a).packed for a in banned}}
    cmds = rs.build_ruleset(policy, rs.NftPlan(hooks=("forward", "input", "output")))
    for pkt, hook, iif, oif in cases:
        _, decider = explain(policy, pkt, iif, oif, dynamic_members=members)
        got = first_kernel_match(cmds, hook, pkt, iif, oif, members)
        if pkt.src in members["banned"]:  # blocked: dropped first, whatever the policy says
            assert got == (rs.BLOCKS_COMMENT, DROP), (rules, pkt, hook)
            continue
        if decider is None:
            assert got is None, (rules, pkt, hook, iif, oif)
            continue
        assert got is not None, (rules, pkt, hook, iif, oif)
        assert covers(got[0], rs.rule_comment(decider)), (got, rules, pkt, hook, iif, oif)
        assert got[1] == engine_answer(decider, pkt), (rules, pkt, hook)


# ---- blocks: first in every chain ---------------------------------------------------------------

BLOCK_V4 = [V4, m("==", PL("ip", "saddr"), "@banned_v4"), COUNTER, DROP]
BLOCK_V6 = [V6, m("==", PL("ip6", "saddr"), "@banned_v6"), COUNTER, DROP]


@pytest.mark.parametrize(
    "text",
    [
        "table trusted = { 10.0.0.0/8 }\naccept from @trusted\ndrop from @banned\n"
        "table banned dynamic timeout 10m",
        "accept",  # a policy that never speaks of @banned
        "match proto tcp alert\ndrop from @banned\ntable banned dynamic",  # nothing in the kernel
    ],
)
def test_blocked_sources_are_dropped_by_the_first_rules_whatever_the_policy(text: str) -> None:
    cmds = rs.build_ruleset(P(text), rs.NftPlan(hooks=("forward", "input", "output")))
    for hook in ("forward", "input", "output"):
        rules = rules_of(cmds, hook)
        assert [r["comment"] for r in rules[:2]] == [rs.BLOCKS_COMMENT] * 2
        assert [r["expr"] for r in rules[:2]] == [BLOCK_V4, BLOCK_V6]
        assert rs.BLOCKS_COMMENT not in [r["comment"] for r in rules[2:]]


def test_the_block_sets_exist_whether_or_not_the_policy_declares_them() -> None:
    def sets(text: str) -> dict[str, dict[str, Any]]:
        cmds = rs.build_ruleset(P(text))
        return {c["add"]["set"]["name"]: c["add"]["set"] for c in cmds if "set" in c.get("add", {})}

    made = sets("accept")  # ipsctl's own: 1 h
    assert set(made) == {"banned_v4", "banned_v6"}
    assert made["banned_v4"]["timeout"] == rs.DEFAULT_BLOCK_TIMEOUT == 3600
    assert made["banned_v4"]["flags"] == ["timeout"] and made["banned_v6"]["type"] == "ipv6_addr"
    declared = sets("table banned dynamic timeout 5m size 100\ntable other dynamic\naccept")
    assert declared["banned_v4"]["timeout"] == 300 and declared["banned_v4"]["size"] == 100
    assert set(declared) == {"banned_v4", "banned_v6", "other_v4", "other_v6"}
    # a static table of that name is the policy's business (an anonymous set in its rules);
    # blocks still get their named sets
    static = sets("table banned = { 192.0.2.1 }\ndrop from @banned")
    assert static["banned_v4"]["timeout"] == 3600
    assert rs.block_table_spec(None).timeout == 3600


def test_a_reapply_over_a_killed_daemons_table_keeps_the_block_sets() -> None:
    el = rs.SetElement("192.0.2.66", timeout=600, expires=500, comment="portscan|1|15 ports")
    old = rs.TableState(
        chains=("forward", "input"),
        sets={
            "banned_v4": rs.SetState("banned_v4", "ipv4_addr", ("timeout",), 3600, 65536, (el,)),
            "banned_v6": rs.SetState("banned_v6", "ipv6_addr", ("timeout",), 3600, 65536),
        },
    )
    cmds = rs.build_ruleset(P("accept"), rs.NftPlan(hooks=("forward",)), existing=old)
    assert not any("set" in c.get("delete", {}) for c in cmds)
    assert {"delete": {"chain": {**rs._T, "name": "input"}}} in cmds
    assert [label(c) for c in cmds if "flush" in c] == ["flush:forward", "flush:input"]


def test_replace_elements_sets_timeout_and_comment_in_one_batch() -> None:
    cmds = rs.replace_elements("banned", ["192.0.2.7", "2001:db8::7"], 600, "manual|0|x", 42.2)
    assert [label(c) for c in cmds] == [
        "add:banned_v4",
        "add:banned_v6",
        "delete:banned_v4",
        "delete:banned_v6",
        "add:banned_v4",
        "add:banned_v6",
    ]
    assert cmds[0]["add"]["element"]["elem"] == ["192.0.2.7"]  # a member already: no-op
    assert cmds[4]["add"]["element"]["elem"] == [
        {"elem": {"val": "192.0.2.7", "timeout": 600, "expires": 43, "comment": "manual|0|x"}}
    ]
    plain = rs.replace_elements("banned", ["192.0.2.7"])  # the set's default timeout
    assert plain[-1]["add"]["element"]["elem"] == ["192.0.2.7"]
    assert rs.add_elements("banned", ["192.0.2.8"], 5, "c")[0]["add"]["element"]["elem"] == [
        {"elem": {"val": "192.0.2.8", "timeout": 5, "comment": "c"}}
    ]
    assert rs.flush_sets("banned") == [
        {"flush": {"set": {**rs._T, "name": "banned_v4"}}},
        {"flush": {"set": {**rs._T, "name": "banned_v6"}}},
    ]


def test_block_comments_round_trip_and_stay_short() -> None:
    c = rs.block_comment("portscan", 2, "15 ports within 60s")
    assert c == "portscan|2|15 ports within 60s"
    assert rs.parse_block_comment(c) == ("portscan", 2, "15 ports within 60s")
    assert rs.parse_block_comment("manual|0|a|b") == ("manual", 0, "a|b")
    assert rs.parse_block_comment("something else") == ("", 0, "something else")
    assert rs.parse_block_comment(None) == ("", 0, "")
    long = rs.block_comment("x|y", 1, 'say "hi"\n\\ ' + "é" * 200)
    assert len(long.encode()) <= rs.MAX_COMMENT and '"' not in long and "\n" not in long
    assert long.startswith("x/y|1|say  hi ")
    elems = rs.parse_elements(
        [{"elem": {"val": "1.2.3.4", "timeout": 9, "expires": 8, "comment": c}}]
    )
    assert elems == (rs.SetElement("1.2.3.4", 9, 8, c),)


def _rules_by_chain(cmds: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in cmds:
        rule = c.get("add", {}).get("rule")
        if rule:
            out.setdefault(rule["chain"], []).append(rule)
    return out


def test_offload_rules_carry_the_generation_and_follow_set_offload() -> None:
    policy = load_policy_text("accept proto tcp to port 22\n", "o.rules")
    plan = rs.NftPlan(("forward",), offload_generation=7)
    chains = _rules_by_chain(rs.build_ruleset(policy, plan))
    main, post = chains["forward"], chains["forward_offload"]
    comments = [r["comment"] for r in main]
    # blocks first, then the mark is cleared, then offloaded connections are let through
    assert comments[:4] == [
        rs.BLOCKS_COMMENT,
        rs.BLOCKS_COMMENT,
        rs.CLEAR_MARK_COMMENT,
        rs.OFFLOADED_COMMENT,
    ]
    offloaded = main[3]["expr"]
    assert offloaded[0]["match"]["right"] == 7 << rs.OFFLOAD_CT_SHIFT
    assert offloaded[-1] == {"accept": None}
    # the full offload matches only a stamp without the handshake-ACK and bare-ACK bits
    mask = rs.OFFLOAD_CT_MASK | rs.HANDSHAKE_ACK_CT | rs.BARE_ACK_CT
    assert offloaded[0]["match"]["left"]["&"][1] == mask
    assert [r["comment"] for r in post] == [rs.OFFLOAD_COMMENT] * 3
    for rule, bit, stamp in (
        (post[0], rs.OFFLOAD_MARK, 7 << rs.OFFLOAD_CT_SHIFT),
        (post[1], rs.HANDSHAKE_ACK_MARK, 7 << rs.OFFLOAD_CT_SHIFT | rs.HANDSHAKE_ACK_CT),
        (post[2], rs.BARE_ACK_MARK, 7 << rs.OFFLOAD_CT_SHIFT | rs.BARE_ACK_CT),
    ):
        assert rule["expr"][0]["match"]["right"] == bit
        mangle = rule["expr"][1]["mangle"]
        assert mangle["key"] == {"ct": {"key": "mark"}}
        assert mangle["value"]["|"][1] == stamp
        assert mangle["value"]["|"][0]["&"][1] == 0x003FFFFF  # other ct-mark bits kept
    # bare ACKs of a connection stamped after its SYN+ACK: IPv4 and IPv6, two header sizes,
    # for either stamp (then a copy of the next packet, or the queue)
    acks = [r["expr"] for r in main if r["comment"] == rs.OFFLOADED_COMMENT][1:]
    assert len(acks) == 8
    for i, exprs in enumerate(acks):
        bit = rs.HANDSHAKE_ACK_CT if i < 4 else rs.BARE_ACK_CT
        assert exprs[0]["match"]["right"] == 7 << rs.OFFLOAD_CT_SHIFT | bit
        assert {
            "match": {
                "op": "==",
                "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, 0x3F]},
                "right": 0x10,
            }
        } in exprs
        assert exprs[-1] == {"accept": None}
    # the post chain runs after the queue (nft queue at -10, iptables' filter at 0)
    post_chain = [
        c["add"]["chain"]
        for c in rs.build_ruleset(policy, rs.NftPlan(("forward",), offload_generation=7))
        if "chain" in c.get("add", {})
    ]
    assert {c["name"]: c["prio"] for c in post_chain} == {"forward": -10, "forward_offload": 10}
    # `set offload off`, no generation, or a tap's blocks-only table: no offload rules
    off = load_policy_text("set offload off\naccept proto tcp to port 22\n", "o.rules")
    for cmds in (
        rs.build_ruleset(off, rs.NftPlan(("forward",), offload_generation=7)),
        rs.build_ruleset(policy, rs.NftPlan(("forward",))),
        rs.build_ruleset(policy, rs.NftPlan(("forward",), blocks_only=True, offload_generation=7)),
    ):
        by_chain = _rules_by_chain(cmds)
        assert "forward_offload" not in by_chain
        assert all(r["comment"] != rs.OFFLOADED_COMMENT for r in by_chain.get("forward", []))
    with pytest.raises(ValueError):
        rs.build_ruleset(policy, rs.NftPlan(("forward",), offload_generation=rs.OFFLOAD_PAUSED))
    # paused (a policy swap in progress): nothing stamps, nothing matches, but the chains and
    # a ct-mark rule stay (removing them would make the kernel drop what waits in the queue)
    paused_plan = rs.NftPlan(("forward",), offload_generation=0)
    paused = _rules_by_chain(rs.build_ruleset(policy, paused_plan))
    assert "forward_offload" not in paused  # no rule in it …
    chains = [
        c["add"]["chain"]["name"]
        for c in rs.build_ruleset(policy, paused_plan)
        if "chain" in c.get("add", {})
    ]
    assert chains == ["forward", "forward_offload"]  # … but the chain is there
    held = [r for r in paused["forward"] if r["comment"] == rs.OFFLOADED_COMMENT]
    assert held[0]["expr"][0]["match"]["right"] == rs.OFFLOAD_PAUSED << rs.OFFLOAD_CT_SHIFT


def test_the_first_packet_after_the_handshake_is_passed_and_copied_to_its_worker() -> None:
    policy = load_policy_text("accept proto tcp to port 22\n", "o.rules")
    main = _rules_by_chain(
        rs.build_ruleset(policy, rs.NftPlan(("forward",), queue=5, offload_generation=7))
    )["forward"]
    comments = [r["comment"] for r in main]
    copied = [r["expr"] for r in main if r["comment"] == rs.COPIED_COMMENT]
    assert len(copied) == 1
    # after the bare ACKs' rules (which pass without a copy), before the queue
    first = comments.index(rs.COPIED_COMMENT)
    assert comments[first - 1] == rs.OFFLOADED_COMMENT
    assert comments[-1] == rs.USERSPACE_COMMENT
    exprs = copied[0]
    hs = 7 << rs.OFFLOAD_CT_SHIFT | rs.HANDSHAKE_ACK_CT
    assert exprs[0]["match"]["right"] == hs  # a connection whose SYN+ACK allowed it
    assert {
        "match": {
            "op": "==",
            "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, 0x02]},
            "right": 0,
        }
    } in exprs  # no SYN
    assert {"log": {"group": rs.copy_group(5)}} in exprs and rs.copy_group(5) == 32773
    stamp = next(
        e["mangle"]
        for e in exprs
        if "mangle" in e and e["mangle"]["key"] == {"ct": {"key": "mark"}}
    )
    assert stamp["value"]["|"][1] == 7 << rs.OFFLOAD_CT_SHIFT  # the full offload from now on
    assert exprs[-1] == {"accept": None}
    # the log statement comes before the accept (nothing after an accept runs)
    assert exprs.index({"log": {"group": rs.copy_group(5)}}) < len(exprs) - 1

    # two queues: the copy goes to the worker that got the handshake (initiator's hash)
    two = _rules_by_chain(
        rs.build_ruleset(policy, rs.NftPlan(("forward",), queue=5, queues=2, offload_generation=7))
    )["forward"]
    copied = [r["expr"] for r in two if r["comment"] == rs.COPIED_COMMENT]
    steer = [r["expr"] for r in two if r["comment"] == rs.STEER_COMMENT]
    seen = set()
    for exprs in copied:
        nfproto = next(
            e["match"]["right"]
            for e in exprs
            if "match" in e and e["match"]["left"] == {"meta": {"key": "nfproto"}}
        )
        jhash = next(e["match"] for e in exprs if "match" in e and "jhash" in e["match"]["left"])
        group = next(e["log"]["group"] for e in exprs if "log" in e)
        assert group == rs.copy_group(5 + jhash["right"])
        seen.add((nfproto, jhash["right"]))
        # the same hash as the queue steering's, with its seed (else the kernel draws one
        # per rule, and two rules would hash one address differently)
        assert jhash["left"]["jhash"]["seed"] == rs.STEER_SEED
        assert any({"match": jhash} in s for s in steer) or jhash["right"] == 0
    assert seen == {("ipv4", 0), ("ipv6", 0), ("ipv4", 1), ("ipv6", 1)}
    # a kernel without NFLOG: no copy rule, the first data goes to the queue as before
    plain = _rules_by_chain(
        rs.build_ruleset(policy, rs.NftPlan(("forward",), offload_generation=7, copies=False))
    )["forward"]
    assert all(r["comment"] != rs.COPIED_COMMENT for r in plain)
    assert sum(r["comment"] == rs.OFFLOADED_COMMENT for r in plain) == 1 + 8  # bare ACKs kept
    # no offload: no copies
    off = load_policy_text("set offload off\naccept proto tcp to port 22\n", "o.rules")
    rules = _rules_by_chain(rs.build_ruleset(off, rs.NftPlan(("forward",), offload_generation=7)))
    assert all(r["comment"] != rs.COPIED_COMMENT for r in rules["forward"])


def test_the_packet_after_the_bare_acks_clears_the_stamp_and_goes_on_to_the_queue() -> None:
    """OFFLOAD_BARE_ACKS (the inspector still reads): after the bare ACKs, the connection's
    next packet of any kind clears the stamp and is not accepted: the rules after it and the
    queue see it, and so do its later packets (until a verdict offloads the flow)."""
    policy = load_policy_text("accept proto tcp to port 22\n", "o.rules")
    main = _rules_by_chain(
        rs.build_ruleset(policy, rs.NftPlan(("forward",), queue=5, offload_generation=7))
    )["forward"]
    comments = [r["comment"] for r in main]
    assert comments.count(rs.BARE_ACK_CLEARED_COMMENT) == 1
    done = main[comments.index(rs.BARE_ACK_CLEARED_COMMENT)]["expr"]
    # after the bare ACKs' and the copy's rules, before the policy's rules and the queue
    assert comments.index(rs.BARE_ACK_CLEARED_COMMENT) == comments.index(rs.COPIED_COMMENT) + 1
    assert comments[-1] == rs.USERSPACE_COMMENT
    assert done[0]["match"]["right"] == 7 << rs.OFFLOAD_CT_SHIFT | rs.BARE_ACK_CT
    assert done[0]["match"]["left"]["&"][1] == (
        rs.OFFLOAD_CT_MASK | rs.HANDSHAKE_ACK_CT | rs.BARE_ACK_CT
    )
    assert done[1] == {
        "mangle": {
            "key": {"ct": {"key": "mark"}},
            "value": {"&": [{"ct": {"key": "mark"}}, 0x003FFFFF]},  # no stamp, other bits kept
        }
    }
    assert not any("accept" in e or "drop" in e or "queue" in e for e in done)  # falls through
    # paused: the rule stays, matching a generation never stamped
    paused = _rules_by_chain(
        rs.build_ruleset(policy, rs.NftPlan(("forward",), offload_generation=0))
    )["forward"]
    (held,) = [r["expr"] for r in paused if r["comment"] == rs.BARE_ACK_CLEARED_COMMENT]
    assert held[0]["match"]["right"] == rs.OFFLOAD_PAUSED << rs.OFFLOAD_CT_SHIFT | rs.BARE_ACK_CT


def test_offloaded_icmp_passes_the_kernel_only_within_a_tenth_of_the_icmpflood_rate() -> None:
    text = "accept proto icmp\ndetect icmpflood rate 300/s per dst limit\n"
    cmds = rs.build_ruleset(
        load_policy_text(text, "i.rules"), rs.NftPlan(("forward",), offload_generation=7)
    )
    offloaded = [
        r["expr"] for r in _rules_by_chain(cmds)["forward"] if r["comment"] == rs.OFFLOADED_COMMENT
    ]
    assert len(offloaded) == 3 + 8  # and the handshake's bare ACKs (either stamp)
    assert offloaded[0][1]["match"] == {
        "op": "!=",
        "left": {"meta": {"key": "l4proto"}},
        "right": {"set": ["icmp", "ipv6-icmp"]},
    }
    for exprs, l4proto, proto in ((offloaded[1], "icmp", "ip"), (offloaded[2], "ipv6-icmp", "ip6")):
        assert exprs[1]["match"]["right"] == l4proto
        meter = exprs[2]["set"]
        assert meter["op"] == "update" and meter["set"].startswith(f"@{rs.ICMP_METER}_v")
        assert meter["elem"] == {"payload": {"protocol": proto, "field": "daddr"}}  # per dst
        assert meter["stmt"] == [{"limit": {"rate": 30, "per": "second", "burst": 30}}]
        assert exprs[-1] == {"accept": None}
    sets = {c["add"]["set"]["name"] for c in cmds if "set" in c.get("add", {})}
    assert {f"{rs.ICMP_METER}_v4", f"{rs.ICMP_METER}_v6"} <= sets
    # no icmpflood detector: one rule for every protocol, and no meter
    plain = rs.build_ruleset(
        load_policy_text("accept proto icmp\n", "i.rules"),
        rs.NftPlan(("forward",), offload_generation=7),
    )
    rules = [r for r in _rules_by_chain(plain)["forward"] if r["comment"] == rs.OFFLOADED_COMMENT]
    assert len(rules) == 1 + 8
    assert not any(rs.ICMP_METER in str(c) for c in plain)


def test_a_blocklist_of_consecutive_rules_becomes_one_set_rule() -> None:
    lines = [f"drop from 198.18.{i // 250}.{i % 250 + 1}" for i in range(10_000)]
    lines += [
        "drop from 198.19.0.0/16",
        "drop proto tcp to port 23",
        "drop proto tcp to port 25",
        "drop proto tcp to port 24",
        "accept proto udp to port 53",
    ]
    policy = load_policy_text("\n".join(lines) + "\n", "bl.rules")
    split, rules = rs.kernel_prefix(policy, "forward")
    assert split == len(policy.rules)  # all of it in the kernel
    comments = [c for c, _ in rules]
    # the 10,001 source rules (a /16 joins the /32s), the three ports (joined to 23-25),
    # the UDP accept
    assert comments == [
        "ipsctl:bl.rules:1-10001",
        "ipsctl:bl.rules:10002-10004",
        "ipsctl:bl.rules:10005",
    ]
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    dport = {"payload": {"protocol": "th", "field": "dport"}}
    src_set = next(
        e["match"]["right"] for e in rules[0][1] if "match" in e and e["match"]["left"] == saddr
    )
    # as collapsed networks: exactly the 10,000 hosts and the /16
    nets = [
        ipaddress.ip_network(
            v if isinstance(v, str) else f"{v['prefix']['addr']}/{v['prefix']['len']}"
        )
        for v in src_set["set"]
    ]
    assert sum(n.num_addresses for n in nets) == 10_000 + 65536
    assert ipaddress.ip_network("198.19.0.0/16") in nets
    ports = next(
        e["match"]["right"] for e in rules[1][1] if "match" in e and e["match"]["left"] == dport
    )
    assert ports == {"range": [23, 25]}


def test_rules_that_cannot_merge_stop_the_kernel_prefix_at_its_cap() -> None:
    """nft runs rules one by one: past MAX_KERNEL_RULES the engine's index is cheaper."""
    lines = []
    for i in range(200):  # alternating verdicts and shapes: nothing merges
        lines.append(f"drop proto udp to 10.30.0.{i % 250 + 1} port {1000 + i}")
        lines.append(f"accept proto tcp from 172.16.{i}.0/24 to port {2000 + i}")
    policy = load_policy_text("\n".join(lines) + "\n", "many.rules")
    split, rules = rs.kernel_prefix(policy, "forward")
    assert len(rules) <= rs.MAX_KERNEL_RULES < len(policy.rules)
    assert split == len(rules)  # one nft rule each here
    assert rs.fast_path_split(policy) == split
    # 400 rules that differ in their port only (one verdict) are one nft rule
    same = load_policy_text(
        "".join(f"drop proto tcp to port {3 * i}\n" for i in range(400)), "m.rules"
    )
    split, merged = rs.kernel_prefix(same, "forward")
    assert split == 400 and len(merged) == 1


def test_only_addresses_and_numbers_merge() -> None:
    """Interface names, named sets and mixed families stay separate rules."""
    for text, expected in [
        ("drop in on eth0\ndrop in on eth1\n", 2),
        ("drop from @banned\ndrop from 10.0.0.1\n", 3),  # @banned: one rule per family
        ("drop from 10.0.0.1\ndrop from 2001:db8::1\n", 2),
        ("drop from 10.0.0.1\ndrop from 10.0.0.2\n", 1),
    ]:
        policy = load_policy_text("table banned dynamic\n" + text, "n.rules")
        assert len(rs.kernel_prefix(policy, "forward")[1]) == expected, text
