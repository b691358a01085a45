"""The namespace lab's topology loader (labs/*.yaml), its errors and the CLI's report of them.
The labs built for real are in tests/lab/test_lab_netns.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from ips.lab import netns
from ips.lab.cli import lab as lab_cli
from ips.lab.topology import TopologyError, load, parse

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "labs" / "gateway.yaml"


# ---- the topology loader (pure) ----------------------------------------------------------------


def test_gateway_topology_loads() -> None:
    topo = load(GATEWAY)
    assert topo.name == "gateway"
    assert topo.segments == ("lan", "dmz")
    assert list(topo.nodes) == ["attacker", "client", "gw", "server"]
    server = topo.nodes["server"]
    addrs = [str(a) for a in server.addresses()]
    assert addrs[:2] == ["10.10.2.10", "fd00:10:2::10"]
    assert addrs[2:] == [f"10.10.2.{n}" for n in range(100, 132)]  # the range, expanded
    assert {(s.kind, s.port) for s in server.services} == {
        ("http", 80),
        ("http", 8080),
        ("udp-echo", 53),
        ("tcp-echo", 7),
    }
    gw = topo.nodes["gw"]
    assert gw.forwarding
    assert gw.all_sysctls()["net.ipv4.ip_forward"] == "1"
    assert gw.all_sysctls()["net.ipv6.conf.all.forwarding"] == "1"
    assert [str(a) for a in gw.addresses()] == [
        "10.10.1.1",
        "fd00:10:1::1",
        "10.10.2.1",
        "fd00:10:2::1",
    ]
    client = topo.nodes["client"]
    assert [(str(r.to), str(r.via)) for r in client.routes] == [
        ("0.0.0.0/0", "10.10.1.1"),
        ("::/0", "fd00:10:1::1"),
    ]
    assert [str(a) for a in topo.nodes["attacker"].addresses()] == ["10.10.1.66", "fd00:10:1::66"]


def test_gateway_topology_matches_the_policy() -> None:
    """labs/gateway.yaml and policies/gateway.rules describe the same networks."""
    rules = (ROOT / "policies" / "gateway.rules").read_text()
    assert "10.10.1.0/24" in rules and "10.10.2.0/24" in rules


MINIMAL = """\
segments: [lan]
nodes:
  a:
    interfaces: [{name: eth0, segment: lan, addresses: [10.0.0.1/24]}]
"""


def test_minimal_topology_and_defaults() -> None:
    topo = parse(MINIMAL, source="mini.yaml", default_name="mini")
    assert topo.name == "mini"
    node = topo.nodes["a"]
    assert node.routes == () and node.services == () and not node.forwarding
    assert node.all_sysctls() == {}


def test_extra_addresses_as_list_and_ipv6_range() -> None:
    topo = parse(
        MINIMAL.replace(
            "addresses: [10.0.0.1/24]",
            'addresses: [10.0.0.1/24], extra_addresses: [10.0.0.50, "fd00::1-fd00::3"]',
        )
    )
    iface = topo.nodes["a"].interfaces[0]
    assert [str(a) for a in iface.extra_addresses] == ["10.0.0.50", "fd00::1", "fd00::2", "fd00::3"]


def _error(text: str) -> str:
    with pytest.raises(TopologyError) as info:
        parse(textwrap.dedent(text), source="bad.yaml")
    return str(info.value)


BASE_NODE = "{name: eth0, segment: lan, addresses: [10.0.0.1/24]}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "bad.yaml: the file is empty"),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [" + BASE_NODE + "]}}\nnodez: 1\n",
            "bad.yaml:3: nodez: unknown key 'nodez' in the topology (did you mean 'nodes'?)",
        ),
        ("nodes: {a: {interfaces: [" + BASE_NODE + "]}}\n", "missing key 'segments'"),
        ("segments: [lan]\nnodes: [a, b]\n", "bad.yaml:2: nodes: nodes must be a mapping"),
        (
            "segments: [lan, lan]\nnodes: {a: {interfaces: [" + BASE_NODE + "]}}\n",
            "segments[1]: segment 'lan' is listed twice",
        ),
        (
            "segments: [averyveryverylongname]\nnodes: {}\n",
            "segments[0]: segment name 'averyveryverylongname' is longer than 12 characters",
        ),
        (
            "segments: [lan]\nnodes: {sw: {interfaces: [" + BASE_NODE + "]}}\n",
            "nodes.sw: node name 'sw' is reserved",
        ),
        (
            "segments: [lan]\nnodes: {Bad!: {interfaces: [" + BASE_NODE + "]}}\n",
            "node name 'Bad!' may only use",
        ),
        (
            "segments: [lan]\nnodes: {a: {forwardng: true, interfaces: [" + BASE_NODE + "]}}\n",
            "nodes.a.forwardng: unknown key 'forwardng' in node 'a' (did you mean 'forwarding'?)",
        ),
        ("segments: [lan]\nnodes: {a: {routes: []}}\n", "node 'a' has no 'interfaces'"),
        (
            "segments: [lan]\nnodes:\n  a:\n    interfaces:\n"
            "      - {name: eth0, segment: lam, addresses: [10.0.0.1/24]}\n",
            "bad.yaml:5: nodes.a.interfaces[0].segment: unknown segment 'lam' "
            "(did you mean 'lan'?)",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [{segment: lan}]}}\n",
            "an interface needs 'name'",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: "
            "[{name: averyverylongname0, segment: lan}]}}\n",
            "interface name 'averyverylongname0' is longer than 15 characters",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [" + BASE_NODE + ", " + BASE_NODE + "]}}\n",
            "interface 'eth0' is defined twice on node 'a'",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [{name: eth0, segment: lan, "
            "addresses: [10.0.0.1]}]}}\n",
            "nodes.a.interfaces[0].addresses[0]: '10.0.0.1' needs a prefix length",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [{name: eth0, segment: lan, "
            "addresses: [10.0.0.300/24]}]}}\n",
            "'10.0.0.300/24' is not an IPv4 or IPv6 address with prefix length",
        ),
        (
            "segments: [lan]\nnodes:\n  a:\n    interfaces:\n      - name: eth0\n"
            "        segment: lan\n        addresses: [1:2:3]\n",
            "not a number (3723); quote IPv6 addresses",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [{name: eth0, segment: lan, addresses: "
            "[10.0.0.1/24], extra_addresses: 10.0.0.9-10.0.0.5}]}}\n",
            "range '10.0.0.9-10.0.0.5' ends before it starts",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [{name: eth0, segment: lan, addresses: "
            "[10.0.0.1/24], extra_addresses: 10.0.0.9-fd00::1}]}}\n",
            "mixes IPv4 and IPv6",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [{name: eth0, segment: lan, addresses: "
            "[10.0.0.1/24], extra_addresses: 10.0.0.0-10.0.255.255}]}}\n",
            "has 65536 addresses; at most 4096",
        ),
        (
            "segments: [lan]\nnodes:\n  a: {interfaces: [" + BASE_NODE + "]}\n"
            "  b: {interfaces: [" + BASE_NODE + "]}\n",
            "nodes.b.interfaces[0].addresses[0]: address 10.0.0.1 is already used by node 'a'",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [" + BASE_NODE + "], "
            "routes: [{to: default, via: 10.9.9.1}]}}\n",
            "routes[0].via: gateway 10.9.9.1 is not on a subnet of this node's interfaces",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [" + BASE_NODE + "], "
            "routes: [{to: 10.1.0.0/16, via: 'fd00::1'}]}}\n",
            "gateway fd00::1 is IPv6 but 10.1.0.0/16 is IPv4",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [" + BASE_NODE + "], "
            "routes: [{to: 10.1.0.1/16, via: 10.0.0.2}]}}\n",
            "routes[0].to: '10.1.0.1/16' is not 'default' or a network",
        ),
        (
            "segments: [lan]\nnodes: {a: {interfaces: [" + BASE_NODE + "], "
            "routes: [{via: 10.0.0.2}]}}\n",
            "a route needs 'to'",
        ),
        (
            "segments: [lan]\nnodes: {a: {forwarding: yes please, interfaces: ["
            + BASE_NODE
            + "]}}\n",
            "forwarding must be true or false",
        ),
        (
            "segments: [lan]\nnodes: {a: {sysctls: {kernel.panic: 1}, interfaces: ["
            + BASE_NODE
            + "]}}\n",
            "nodes.a.sysctls.kernel.panic: 'kernel.panic' is not a net.* sysctl",
        ),
        (
            "segments: [lan]\nnodes: {a: {sysctls: {net/../../x: 1}, interfaces: ["
            + BASE_NODE
            + "]}}\n",
            "is not a sysctl name",
        ),
        (
            "segments: [lan]\nnodes: {a: {services: [{kind: htp, port: 80}], interfaces: ["
            + BASE_NODE
            + "]}}\n",
            "nodes.a.services[0].kind: unknown service kind 'htp' (did you mean 'http'?)",
        ),
        (
            "segments: [lan]\nnodes: {a: {services: [{kind: http, port: 70000}], interfaces: ["
            + BASE_NODE
            + "]}}\n",
            "port must be a number 1-65535, not 70000",
        ),
        (
            "segments: [lan]\nnodes: {a: {services: [{kind: http, port: 7}, "
            "{kind: tcp-echo, port: 7}], interfaces: [" + BASE_NODE + "]}}\n",
            "services[1].port: tcp port 7 is already used by http",
        ),
        ("segments: [lan\nnodes: {}\n", "bad.yaml:2: not valid YAML"),
    ],
)
def test_topology_errors(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_all_problems_reported_at_once() -> None:
    message = _error("""\
        segments: [lan]
        nodes:
          a:
            interfaces: [{name: eth0, segment: wan, addresses: [10.0.0.1]}]
            services: [{kind: ftp, port: 21}]
        """)
    assert len(message.splitlines()) == 3
    assert "unknown segment 'wan'" in message
    assert "needs a prefix length" in message
    assert "unknown service kind 'ftp'" in message


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"nope\.yaml: cannot read"):
        load(tmp_path / "nope.yaml")


def test_cli_up_reports_topology_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("segments: [lan]\nnodes: {a: {interfaces: [{name: eth0, segment: lam}]}}\n")
    result = CliRunner().invoke(lab_cli, ["up", str(bad), "--prefix", "never-"])
    assert result.exit_code == 1
    assert f"{bad}:2: nodes.a.interfaces[0].segment: unknown segment 'lam'" in result.output
    assert "NOT brought up" in result.output


def test_bad_prefix_refused() -> None:
    with pytest.raises(netns.LabError, match="bad lab prefix"):
        netns.up(GATEWAY, "../etc")


# ---- real labs ---------------------------------------------------------------------------------
