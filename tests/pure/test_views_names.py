"""The responder's name (passive DNS, `Flow.dst_name`) in `ipsctl flows` and `ipsctl top`:
the row field, the NAME column, CSV and JSON, the `name` filter and `--name`, destinations
grouped with their names, merged across workers. Names are set on the flows by hand here;
the engine fills them from DNS answers."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from ips.cli import main
from ips.cli import views as cli_views
from ips.core.addr import format_addr
from ips.core.build import build_packet
from ips.daemon.stats import merge_flows
from ips.engine import Engine
from ips.policy.resolve import load_policy_text
from ips.views.flows import FilterError, flows_csv, format_flows, parse_filter, select_flows
from ips.views.top import TopState, render

NAMES = {
    ("10.0.0.9", 443): "www.example.com",
    ("10.0.0.9", 80): "www.example.com",
    ("10.0.0.8", 443): "api.shop.example.com",
    ("2001:db8::9", 443): "example.com",
    ("10.0.0.7", 22): None,
}


def named_flows() -> list[Any]:
    engine = Engine(load_policy_text("set default accept\n"))
    t = 100.0
    for i, ((dst, dport), _name) in enumerate(NAMES.items()):
        src = "2001:db8::1" if ":" in dst else "10.0.0.1"
        for k in range(i + 1):
            pkt = build_packet(6, src, dst, 40000 + i, dport, flags=0x18 if k else 2,
                               payload=b"x" * 100)  # fmt: skip
            engine.handle(pkt, now=t + i + k)
    flows = engine.flows.flows()
    for f in flows:
        f.dst_name = NAMES[(format_addr(f.dst), f.dport)]
    return flows


def test_rows_carry_the_name_and_the_table_shows_it() -> None:
    reply = select_flows(named_flows(), 200.0, top=10)
    by_port = {(r["dst"], r["dport"]): r for r in reply["flows"]}
    assert by_port[("10.0.0.8", 443)]["dst_name"] == "api.shop.example.com"
    assert by_port[("10.0.0.7", 22)]["dst_name"] is None
    lines = format_flows(reply["flows"], reply["total"]).splitlines()
    assert lines[0].split()[-2:] == ["STATE", "NAME"]
    row = next(line for line in lines if "10.0.0.8:443" in line)
    assert row.split()[-1] == "api.shop.example.com"
    row = next(line for line in lines if "10.0.0.7:22" in line)
    assert row.split()[-1] == "-"
    names = {r["dst_name"] for r in json.loads(json.dumps(reply))["flows"]}
    assert names == set(NAMES.values())


def test_csv_has_a_dst_name_column() -> None:
    rows = select_flows(named_flows(), 200.0, top=10)["flows"]
    got = list(csv.DictReader(io.StringIO(flows_csv(rows))))
    assert {(r["dst"], r["dport"]): r["dst_name"] for r in got} == {
        (dst, str(port)): name or "" for (dst, port), name in NAMES.items()
    }


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("www.example.com", {80, 443}),
        ("WWW.Example.COM.", {80, 443}),  # case-blind, trailing dot ignored
        ("*.example.com", {"10.0.0.9", "10.0.0.8"}),  # subdomains, not example.com itself
        ("*.shop.example.com", {"10.0.0.8"}),
        ("example.com", {"2001:db8::9"}),
        ("*", {"10.0.0.9", "10.0.0.8", "2001:db8::9"}),
        ("nowhere.example", set()),
    ],
)
def test_name_filter(pattern: str, expected: set[Any]) -> None:
    rows = select_flows(named_flows(), 200.0, top=10, filter_text=f"name {pattern}")["flows"]
    if all(isinstance(e, int) for e in expected) and expected:
        assert {r["dport"] for r in rows} == expected
        assert {r["dst_name"] for r in rows} == {"www.example.com"}
    else:
        assert {r["dst"] for r in rows} == expected


def test_name_filter_combines_with_the_others() -> None:
    got = select_flows(named_flows(), 200.0, filter_text="dport 443 and name *.example.com")
    assert {r["dst"] for r in got["flows"]} == {"10.0.0.9", "10.0.0.8"}
    assert all(r["dport"] == 443 for r in got["flows"])


@pytest.mark.parametrize("pattern", ["*example.com", "www.*.com", "**", "*.*.com"])
def test_bad_name_patterns_say_why(pattern: str) -> None:
    with pytest.raises(FilterError, match="name"):
        parse_filter(f"name {pattern}")
    with pytest.raises(FilterError, match="needs a value"):
        parse_filter("name")


def test_destinations_grouped_with_their_name_and_merged_across_workers() -> None:
    groups = select_flows(named_flows(), 200.0, group="dst")["groups"]
    by_key = {g["key"]: g for g in groups}
    assert by_key["10.0.0.9"]["name"] == "www.example.com" and by_key["10.0.0.9"]["flows"] == 2
    assert by_key["10.0.0.7"]["name"] is None
    assert "name" not in select_flows(named_flows(), 200.0, group="src")["groups"][0]
    other = {"ok": True, "total": 1, "groups": [
        {"key": "10.0.0.7", "flows": 1, "packets": 1, "bytes": 10, "name": "ssh.example.net"},
        {"key": "192.0.2.1", "flows": 1, "packets": 1, "bytes": 10, "name": None},
    ]}  # fmt: skip
    merged = merge_flows([{"ok": True, "total": 5, "groups": groups}, other], 10, "bytes")
    names = {g["key"]: g["name"] for g in merged["groups"]}
    assert names["10.0.0.7"] == "ssh.example.net"  # the other worker knew it
    assert names["10.0.0.9"] == "www.example.com"
    assert names["192.0.2.1"] is None


def test_cli_name_option_adds_to_the_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[dict[str, Any]] = []
    flows = named_flows()

    def ask(_socket: str, message: dict[str, Any]) -> dict[str, Any]:
        asked.append(message)
        return select_flows(flows, 200.0, filter_text=message["filter"], group=message["group"])

    monkeypatch.setattr(cli_views, "ask", ask)
    runner = CliRunner()
    out = runner.invoke(main, ["flows", "--name", "*.example.com", "--filter", "dport 443"])
    assert out.exit_code == 0, out.output
    assert asked[-1]["filter"] == "dport 443 name *.example.com"
    assert "api.shop.example.com" in out.output and "10.0.0.7" not in out.output
    out = runner.invoke(main, ["flows", "--name", "www.example.com", "--csv"])
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert {r["dport"] for r in rows} == {"80", "443"}
    out = runner.invoke(main, ["flows", "--json", "--name", "example.com"])
    assert [r["dst_name"] for r in json.loads(out.output)["flows"]] == ["example.com"]
    out = runner.invoke(main, ["flows", "--group", "dst", "--csv"])
    got = {r["key"]: r["name"] for r in csv.DictReader(io.StringIO(out.output))}
    assert got["10.0.0.8"] == "api.shop.example.com" and got["10.0.0.7"] == ""
    out = runner.invoke(main, ["flows", "--group", "dst"])
    assert out.output.splitlines()[0].split()[-1] == "NAME"
    bad = runner.invoke(main, ["flows", "--name", "www.*.com"])
    assert bad.exit_code == 2 and "name" in bad.output


def test_top_shows_destinations_with_their_names() -> None:
    flows = named_flows()

    def request(msg: dict[str, Any]) -> dict[str, Any]:
        if msg["op"] == "status":
            return {"ok": True, "pid": 1, "uptime": 1, "worker": {"packets": 1, "bytes": 1}}
        if msg["op"] == "flows":
            return select_flows(flows, 200.0, group=msg["group"], top=msg["top"])
        if msg["op"] == "alerts":
            event = {
                "src_ip": "10.0.0.1",
                "dest_ip": "10.0.0.8",
                "ipsctl": {"dst_name": "api.shop.example.com"},
                "alert": {"signature": "no shopping"},
            }
            return {"ok": True, "seq": 1, "alerts": [{"seq": 1, "time": 0, "event": event}]}
        return {"ok": True, "blocks": []}

    state = TopState()
    state.poll(request, now=0.0)
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(render(state))
    text = console.export_text()
    assert "top destinations" in text
    line = next(x for x in text.splitlines() if "10.0.0.8" in x and "shop" in x)
    assert "api.shop.example.com" in line
    assert "10.0.0.1 > 10.0.0.8 (api.shop.example.com)" in text  # the alert names its target
