"""Hardening of the namespace lab, item 10 of issue 19 (pure): a lab file that names a node (or
any key) twice is refused with the file and line of both, instead of YAML silently keeping the
last one."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ips.lab.cli import lab as lab_cli
from ips.lab.topology import TopologyError, parse

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "labs" / "gateway.yaml"

TWO_CLIENTS = """\
segments: [lan]
nodes:
  client:
    interfaces: [{name: eth0, segment: lan, addresses: [10.0.0.1/24]}]
  server:
    interfaces: [{name: eth0, segment: lan, addresses: [10.0.0.9/24]}]
  client:
    interfaces: [{name: eth0, segment: lan, addresses: [10.0.0.2/24]}]
"""


# ---- item 10: duplicate keys in a lab file ------------------------------------------------------


def test_lab_file_with_a_node_named_twice_is_refused_with_both_lines() -> None:
    with pytest.raises(TopologyError) as info:
        parse(TWO_CLIENTS, source="twice.yaml")
    assert str(info.value) == (
        "twice.yaml:7: nodes.client: node 'client' is defined twice (first at line 3); "
        "YAML would keep only this one"
    )


def test_lab_file_with_a_key_repeated_inside_a_node_is_refused() -> None:
    text = """\
segments: [lan]
nodes:
  a:
    interfaces: [{name: eth0, segment: lan, addresses: [10.0.0.1/24]}]
    interfaces: [{name: eth1, segment: lan, addresses: [10.0.0.2/24], name: eth2}]
"""
    with pytest.raises(TopologyError) as info:
        parse(text, source="twice.yaml")
    assert info.value.lines() == [
        "twice.yaml:5: nodes.a.interfaces: key 'interfaces' is defined twice (first at line 4); "
        "YAML would keep only this one",
        "twice.yaml:5: nodes.a.interfaces[0].name: key 'name' is defined twice (first at line 5); "
        "YAML would keep only this one",
    ]


def test_cli_up_refuses_a_duplicate_node_before_building_anything(tmp_path: Path) -> None:
    bad = tmp_path / "twice.yaml"
    bad.write_text(TWO_CLIENTS)
    result = CliRunner().invoke(lab_cli, ["up", str(bad), "--prefix", "never-"])
    assert result.exit_code == 1
    assert (
        f"{bad}:7: nodes.client: node 'client' is defined twice (first at line 3)" in result.output
    )
    assert "NOT brought up" in result.output
