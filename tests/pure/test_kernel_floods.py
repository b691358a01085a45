"""Issue 19, item 2 (b): floods absorbed in the kernel before the queue — per-source meters
for `limit … per src else drop` and the SYN proxy of `set synproxy on` — and nothing changed
for policies that use neither."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ips.policy.model import Policy
from ips.policy.resolve import load_policy, load_policy_text
from ips.translate import nft as rs

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def P(text: str) -> Policy:
    return load_policy_text(text, "t.rules")


def rules_of(cmds: list[dict[str, Any]], chain: str | None = None) -> list[dict[str, Any]]:
    out = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    return [r for r in out if chain is None or r["chain"] == chain]


PAYLOAD = 'drop proto tcp to port 80 payload contains "/etc/passwd" alert "traversal"\n'
PINGS = "accept proto icmp type echo-request limit 20/s per src else drop\n"


def test_a_limit_per_src_else_drop_becomes_a_meter_before_the_queue() -> None:
    cmds = rs.build_ruleset(P(PAYLOAD + PINGS))
    rules = rules_of(cmds, "forward")
    comments = [r["comment"] for r in rules]
    meter_rule = rules[comments.index("ipsctl:t.rules:2:excess")]
    # after the kernel prefix, before what goes to userspace
    assert comments.index("ipsctl:t.rules:2:excess") < comments.index(rs.USERSPACE_COMMENT)
    assert meter_rule["expr"] == [
        {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": 1}},
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "icmp", "field": "type"}},
                "right": 8,
            }
        },
        {
            "set": {
                "op": "update",
                "elem": {"payload": {"protocol": "ip", "field": "saddr"}},
                "set": "@meter1_v4",
                "stmt": [{"limit": {"rate": 20, "per": "second", "burst": 20, "inv": True}}],
            }
        },
        {"counter": None},
        {"drop": None},
    ]
    sets = {c["add"]["set"]["name"]: c["add"]["set"] for c in cmds if "set" in c.get("add", {})}
    assert sets["meter1_v4"] == {
        "family": "inet",
        "table": "ipsctl",
        "name": "meter1_v4",
        "type": "ipv4_addr",
        "flags": ["timeout"],
        "timeout": rs.METER_TIMEOUT,
        "size": rs.METER_SIZE,
    }
    assert "meter1_v6" not in sets  # the rule is IPv4 only (icmp)


def test_both_families_get_a_meter_each() -> None:
    cmds = rs.build_ruleset(P("accept proto udp to port 7 limit 100/s burst 5 per src else drop"))
    meters = [r for r in rules_of(cmds) if r["comment"].endswith(rs.METER_SUFFIX)]
    assert [m["expr"][0]["match"]["right"] for m in meters] == ["ipv4", "ipv6"]
    stmts = [e["set"] for m in meters for e in m["expr"] if "set" in e]
    assert [s["set"] for s in stmts] == ["@meter0_v4", "@meter0_v6"]
    assert stmts[0]["stmt"] == [{"limit": {"rate": 100, "per": "second", "burst": 5, "inv": True}}]


def test_meter_rates_round_up() -> None:
    assert rs.meter_rate(20, 20) == {"rate": 20, "per": "second", "burst": 20, "inv": True}
    assert rs.meter_rate(2.5, 3) == {"rate": 150, "per": "minute", "burst": 3, "inv": True}
    assert rs.meter_rate(0.1, 1) == {"rate": 6, "per": "minute", "burst": 1, "inv": True}


def test_no_meter_where_it_would_change_the_first_match_meaning() -> None:
    # an earlier userspace rule that may take the same packets (state established: any proto)
    p = P("accept state established\n" + PINGS)
    assert rs.meter_reason(p, 1) == "t.rules:1 may take its packets first"
    # no `else drop`, per dst, an alert on the rule, payload: all stay the engine's
    for text in (
        "accept proto icmp limit 20/s per src\n",
        "accept proto icmp limit 20/s per dst else drop\n",
        'accept proto icmp limit 20/s per src else drop alert "x"\n',
        'accept proto udp payload contains "x" limit 20/s per src else drop\n',
    ):
        assert rs.meter_reason(P(text), 0) is not None, text
        assert not any(
            r["comment"].endswith(rs.METER_SUFFIX) for r in rules_of(rs.build_ruleset(P(text)))
        )
    # the shipped gateway policy keeps its limits in the engine (after `state established`)
    assert rs.metered_rules(load_policy(POLICIES / "gateway.rules")) == []


def test_an_existing_meter_set_keeps_its_buckets() -> None:
    old = rs.TableState(
        chains=("forward",),
        sets={
            "meter1_v4": rs.SetState("meter1_v4", "ipv4_addr", ("timeout",), 60, 65536),
            "meter9_v4": rs.SetState("meter9_v4", "ipv4_addr", ("timeout",), 60, 65536),
        },
    )
    cmds = rs.build_ruleset(P(PAYLOAD + PINGS), existing=old)
    touched = [
        (verb, obj["name"])
        for c in cmds
        for verb, body in c.items()
        for kind, obj in body.items()
        if kind == "set"
    ]
    assert ("add", "meter1_v4") not in touched and ("delete", "meter1_v4") not in touched
    assert ("delete", "meter9_v4") in touched  # a meter no longer wanted goes


def test_synproxy_on_proxies_tcp_handshakes_before_the_queue() -> None:
    p = P("set synproxy on\n" + PAYLOAD)
    cmds = rs.build_ruleset(p, rs.NftPlan(hooks=("forward", "input", "output")))
    chains = {
        c["add"]["chain"]["name"]: c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})
    }
    assert chains[rs.SYNPROXY_CHAIN] == {
        "family": "inet",
        "table": "ipsctl",
        "name": rs.SYNPROXY_CHAIN,
        "type": "filter",
        "hook": "prerouting",
        "prio": -300,
        "policy": "accept",
    }
    (raw,) = rules_of(cmds, rs.SYNPROXY_CHAIN)
    assert raw["expr"] == [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
        {
            "match": {
                "op": "==",
                "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, 0x12]},
                "right": 0x02,
            }
        },
        {"counter": None},
        {"notrack": None},
    ]
    forward = rules_of(cmds, "forward")
    comments = [r["comment"] for r in forward]
    # blocks first, then the proxy, before anything of the policy and the queue
    assert comments[:7] == [
        rs.BLOCKS_COMMENT,
        rs.BLOCKS_COMMENT,
        rs.CLEAR_MARK_COMMENT,
        rs.SYNPROXY_COMMENT,
        rs.SYNPROXY_COMMENT,
        rs.SYNPROXY_COMMENT,
        rs.SYNPROXY_INVALID_COMMENT,
    ]
    assert forward[3]["expr"][-1] == {
        "synproxy": {"mss": 1460, "wscale": 7, "flags": ["timestamp", "sack-perm"]}
    }
    assert forward[4]["expr"][-1]["synproxy"]["mss"] == 1440  # IPv6
    # the server's SYN+ACK to the proxy's SYN skips the queue (the proxy must see it)
    assert forward[5]["expr"][-1] == {"accept": None}
    assert {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}} in (
        forward[5]["expr"]
    )
    assert forward[6]["expr"][-1] == {"drop": None}
    assert rs.SYNPROXY_COMMENT in [r["comment"] for r in rules_of(cmds, "input")]
    # the host's own connections are not proxied
    assert rs.SYNPROXY_COMMENT not in [r["comment"] for r in rules_of(cmds, "output")]


def test_synproxy_off_removes_its_chain() -> None:
    old = rs.TableState(chains=("forward", rs.SYNPROXY_CHAIN), sets={})
    cmds = rs.build_ruleset(P(PAYLOAD), existing=old)
    assert {
        "delete": {"chain": {"family": "inet", "table": "ipsctl", "name": rs.SYNPROXY_CHAIN}}
    } in cmds
    # a tap's block-only table never proxies
    tap = rs.build_ruleset(P("set synproxy on\n" + PAYLOAD), rs.NftPlan(blocks_only=True))
    assert not rules_of(tap, rs.SYNPROXY_CHAIN)


def test_policies_without_them_are_unchanged() -> None:
    for path in sorted(POLICIES.glob("*.rules")):
        policy = load_policy(path)
        text = str(rs.build_ruleset(policy, rs.NftPlan(hooks=("forward", "input"))))
        if rs.metered_rules(policy) or policy.synproxy:
            continue
        assert "synproxy" not in text and "meter" not in text and "notrack" not in text, path
