"""Every kind of EVE line ipsctl writes validates against Suricata's published schema
(ipsctl's own extension objects aside): alerts, drops, flows and the application-layer
events of the demo's scenario and of the shared captures, through `ipsctl replay`."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

from captures import PCAPS, pcap_names
from eve_schema import assert_valid_eve, eve_errors

from ips.policy.resolve import load_policy_text
from ips.replay import replay_captures

ROOT = Path(__file__).resolve().parents[2]


def replayed_lines(policy: object, paths: list[str]) -> list[dict]:
    out = io.StringIO()
    replay_captures(policy, paths, eve_stream=out)  # type: ignore[arg-type]
    return [json.loads(line) for line in out.getvalue().splitlines()]


def demo_lines() -> list[dict]:
    """The demo's scenario under its policy, with every refusing rule also logging (a `log`
    rule that refuses writes a `drop` line, as Suricata's drop log does). Rules continued
    over several lines are left as they are."""
    text = (ROOT / "policies" / "gateway.rules").read_text()
    logged = "\n".join(
        line + " log"
        if line.startswith(("drop ", "reject ")) and "#" not in line and not line.endswith("\\")
        else line
        for line in text.splitlines()
    )
    return replayed_lines(
        load_policy_text(logged, "gateway.rules"),
        [str(ROOT / "labs" / "captures" / "demo.pcap")],
    )


def test_the_demo_scenario_writes_only_valid_lines_of_every_kind() -> None:
    lines = demo_lines()
    kinds = Counter(line["event_type"] for line in lines)
    # The scenario has rules that alert and drop, and flows that end: each kind is checked.
    assert kinds["alert"] and kinds["drop"] and kinds["flow"], kinds
    assert assert_valid_eve(lines) == len(lines)


def test_alerts_and_drops_over_the_shared_captures_validate() -> None:
    # A policy that alerts on every TCP and UDP packet and drops (and logs) web traffic, so
    # alert and drop lines carry the application-layer objects of real flows.
    policy = load_policy_text(
        "set default accept\n"
        'match proto tcp to port { 80, 443 } alert "web"\n'
        'drop tls sni "*.com" alert "a .com name" log\n'
        'drop http host "*.com" alert "a .com host" log\n'
        'match dns query "*.com" alert "a DNS query"\n',
        "every-line.rules",
    )
    kinds: Counter[str] = Counter()
    for name in pcap_names():
        for line in replayed_lines(policy, [str(PCAPS / name)]):
            kinds[line["event_type"]] += 1
            errors = eve_errors(line)
            assert not errors, (name, line, errors)
    assert kinds["alert"] and kinds["drop"] and kinds["tls"] and kinds["dns"], kinds


def test_a_drop_line_names_its_rule_in_ipsctls_own_object() -> None:
    lines = demo_lines()
    drops = [line for line in lines if line["event_type"] == "drop"]
    assert drops
    for line in drops:
        assert line["drop"]["reason"] == "rules"
        assert line["ipsctl"]["rule"].startswith("gateway.rules:")
