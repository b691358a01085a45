"""The namespace lab for real, built from labs/gateway.yaml: pings, HTTP, UDP and TCP echo
through the gateway; up, list, exec and down, and what a failed up leaves behind (nothing).

These tests need root and network namespaces: without them they skip, except under CI=true
where they fail. Each lab gets its own prefix (pytest-xdist runs tests in parallel) and is
removed by a finalizer registered before it is built, so a failure leaves nothing behind.
Traffic only goes between the lab's own namespaces, to addresses of lab hosts.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ips.lab import netns
from ips.lab.cli import lab as lab_cli

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "labs" / "gateway.yaml"


TIMEOUT = 10  # seconds, for every subprocess a test starts


def need_lab_capabilities() -> None:
    """Skip without root/ip/ping/curl; under CI=true that is a failure, not a skip."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    missing += [tool for tool in ("ip", "ping", "curl") if shutil.which(tool) is None]
    if missing:
        message = f"namespace lab tests need: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def unique_prefix() -> str:
    tail = "".join(random.choices(string.ascii_lowercase + string.digits, k=3))
    return f"t{os.getpid() % 10000}{tail}-"


def lab_namespaces(prefix: str) -> list[str]:
    return (
        sorted(n for n in os.listdir(netns.NETNS_DIR) if n.startswith(prefix))
        if netns.NETNS_DIR.is_dir()
        else []
    )


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A fresh prefix whose lab, if any, is removed after the test, pass or fail."""
    need_lab_capabilities()
    p = unique_prefix()
    request.addfinalizer(lambda: netns.down(p))
    return p


@pytest.fixture(scope="module")
def gateway_lab() -> Iterator[netns.Lab]:
    need_lab_capabilities()
    p = unique_prefix()
    try:
        yield netns.up(GATEWAY, p)
    finally:
        netns.down(p)


def run_in(lab: netns.Lab, node: str, argv: list[str]) -> subprocess.CompletedProcess:
    return lab.exec(node, argv, capture_output=True, text=True, timeout=TIMEOUT)


def py_in(lab: netns.Lab, node: str, code: str) -> str:
    result = run_in(lab, node, [sys.executable, "-c", textwrap.dedent(code)])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("target", ["10.10.2.10", "10.10.2.117", "10.10.2.131", "10.10.1.1"])
def test_ping_ipv4(gateway_lab: netns.Lab, target: str) -> None:
    result = run_in(gateway_lab, "client", ["ping", "-c", "1", "-W", "2", target])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("target", ["fd00:10:2::10", "fd00:10:1::66"])
def test_ping_ipv6(gateway_lab: netns.Lab, target: str) -> None:
    result = run_in(gateway_lab, "client", ["ping", "-6", "-c", "1", "-W", "2", target])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("http://10.10.2.10:8080/", "ok port 8080"),
        ("http://10.10.2.10/", "ok port 80"),
        ("http://10.10.2.100/", "ok port 80"),  # an extra address serves too
        ("http://[fd00:10:2::10]:8080/", "ok port 8080"),
    ],
)
def test_http(gateway_lab: netns.Lab, url: str, body: str) -> None:
    result = run_in(gateway_lab, "client", ["curl", "-sg", "--max-time", "5", url])
    assert result.returncode == 0, result.stderr
    assert result.stdout == body + "\n"


@pytest.mark.parametrize("server", ["10.10.2.10", "fd00:10:2::10"])
def test_udp_echo(gateway_lab: netns.Lab, server: str) -> None:
    out = py_in(
        gateway_lab,
        "attacker",
        f"""
        import socket
        fam = socket.AF_INET6 if ":" in {server!r} else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"lab-udp-probe", ({server!r}, 53))
        print(s.recvfrom(100)[0].decode())
    """,
    )
    assert out == "lab-udp-probe"


def test_tcp_echo(gateway_lab: netns.Lab) -> None:
    out = py_in(
        gateway_lab,
        "client",
        """
        import socket
        with socket.create_connection(("10.10.2.10", 7), timeout=3) as s:
            s.sendall(b"hello echo")
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(100):
                data += chunk
        print(data.decode())
    """,
    )
    assert out == "hello echo"


def test_gateway_forwards_and_nodes_are_isolated(gateway_lab: netns.Lab) -> None:
    sysctl = py_in(
        gateway_lab,
        "gw",
        """
        print(open("/proc/sys/net/ipv4/ip_forward").read().strip(),
              open("/proc/sys/net/ipv6/conf/all/forwarding").read().strip())
    """,
    )
    assert sysctl == "1 1"
    # The lab did not change the host's own namespace.
    assert not any(n.startswith(gateway_lab.prefix) for n in os.listdir("/sys/class/net"))
    # A node has only its own interfaces (and lo), with the names from the topology.
    links = run_in(gateway_lab, "gw", ["ip", "-o", "link", "show"]).stdout
    names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    assert names == ["dmz0", "lan0", "lo"]


def test_list_shows_the_lab(gateway_lab: netns.Lab) -> None:
    infos = {i.prefix: i for i in netns.list_labs()}
    info = infos[gateway_lab.prefix]
    assert info.status == "up"
    assert info.nodes["server"] == ["10.10.2.10/24", "fd00:10:2::10/64", "10.10.2.100-10.10.2.131"]
    assert all(info.services.values()) and info.services
    text = CliRunner().invoke(lab_cli, ["list"])
    assert text.exit_code == 0
    assert f"prefix {gateway_lab.prefix}  up" in text.output
    assert f"{gateway_lab.prefix}client" in text.output and "10.10.1.20/24" in text.output
    as_json = CliRunner().invoke(lab_cli, ["list", "--json"])
    assert any(x["prefix"] == gateway_lab.prefix for x in json.loads(as_json.output))


def test_exec_returns_the_exit_code(gateway_lab: netns.Lab) -> None:
    runner = CliRunner()
    p = ["--prefix", gateway_lab.prefix]
    assert runner.invoke(lab_cli, ["exec", *p, "client", "--", "sh", "-c", "exit 7"]).exit_code == 7
    assert runner.invoke(lab_cli, ["exec", "client", *p, "--", "true"]).exit_code == 0
    ok = runner.invoke(lab_cli, ["exec", *p, "client", "--", "ping", "-c1", "-W2", "10.10.2.10"])
    assert ok.exit_code == 0
    missing = runner.invoke(lab_cli, ["exec", *p, "client", "--", "no-such-command-x"])
    assert missing.exit_code == 127
    unknown = runner.invoke(lab_cli, ["exec", *p, "clinet", "--", "true"])
    assert unknown.exit_code == 2
    assert "did you mean 'client'?" in unknown.output
    assert (
        netns.exec(gateway_lab.prefix, "server", ["sh", "-c", "exit 3"], timeout=TIMEOUT).returncode
        == 3
    )


def test_second_up_with_same_prefix_is_refused(gateway_lab: netns.Lab) -> None:
    with pytest.raises(netns.LabError, match="already up"):
        netns.up(GATEWAY, gateway_lab.prefix)
    assert netns.list_labs()  # the running lab is untouched
    assert gateway_lab.prefix + "server" in lab_namespaces(gateway_lab.prefix)


def test_down_removes_everything_and_is_idempotent(prefix: str) -> None:
    lab = netns.up(GATEWAY, prefix)
    pids = [s.pid for s in lab.services]
    assert len(pids) == 1 and Path(f"/proc/{pids[0]}").exists()
    assert lab_namespaces(prefix) == sorted(
        prefix + n for n in ["attacker", "client", "gw", "server", "sw"]
    )
    result = CliRunner().invoke(lab_cli, ["down", "--prefix", prefix])
    assert result.exit_code == 0, result.output
    assert f"lab {prefix} removed: 5 namespaces, services stopped (pid {pids[0]})" in result.output
    assert lab_namespaces(prefix) == []
    assert not netns.state_path(prefix).exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    again = CliRunner().invoke(lab_cli, ["down", "--prefix", prefix])
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert netns.down(prefix) is False


def test_failed_up_leaves_nothing_behind(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(node: object, namespace: str) -> None:
        calls.append(namespace)
        raise RuntimeError("injected failure while configuring a node")

    monkeypatch.setattr(netns, "_configure_node", broken)
    with pytest.raises(RuntimeError, match="injected"):
        netns.up(GATEWAY, prefix)
    assert calls  # it failed half-way: namespaces and veths existed
    assert lab_namespaces(prefix) == []
    assert not netns.state_path(prefix).exists()


def test_services_failure_is_reported_and_cleaned(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topo = tmp_path / "one.yaml"
    topo.write_text(
        "segments: [lan]\nnodes:\n  a:\n    interfaces: [{name: eth0, segment: lan, "
        "addresses: [10.77.0.1/24]}]\n    services: [{kind: http, port: 80}]\n"
    )
    original = netns._services_argv
    # A services process that exits at once (a bad option): `up` must say so and clean up.
    monkeypatch.setattr(
        netns, "_services_argv", lambda node: [*original(node), "--max-clients", "nope"]
    )
    with pytest.raises(netns.LabError, match=r"services on a did not start: .*invalid int"):
        netns.up(topo, prefix)
    assert lab_namespaces(prefix) == []
    assert not netns.state_path(prefix).exists()


def test_existing_namespace_is_refused_and_left_alone(prefix: str) -> None:
    from pyroute2 import netns as pyroute_netns

    squatter = prefix + "client"
    pyroute_netns.create(squatter)  # a namespace this lab did not create
    try:
        with pytest.raises(netns.LabError, match=f"namespace {squatter} already exists"):
            netns.up(GATEWAY, prefix)
        assert squatter in lab_namespaces(prefix)
        assert netns.down(prefix) is False  # no lab state: nothing is touched
        assert squatter in lab_namespaces(prefix)
    finally:
        pyroute_netns.remove(squatter)


def test_lab_is_quick_to_build(prefix: str) -> None:
    started = time.monotonic()
    with netns.up(GATEWAY, prefix):
        built = time.monotonic() - started
    assert built < 10, f"lab up took {built:.1f} s"
    assert lab_namespaces(prefix) == []
