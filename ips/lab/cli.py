"""`ipsctl lab …`: network-namespace labs to try policies on (wired into ips/cli/lab.py as `lab`).

Exit codes: 0 ok, 1 the lab cannot be built / found (the message says why), 2 usage
(an unknown node is a usage error); `exec` exits with the command's own code.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from ips.lab.topology import Topology, TopologyError

PREFIX_OPTION = click.option(
    "--prefix",
    default="ipl-",
    show_default=True,
    envvar="IPSCTL_LAB_PREFIX",
    help="namespace name prefix: the lab's namespaces are PREFIX+node and PREFIX+'sw'",
)
DEFAULT_TOPOLOGY = "labs/gateway.yaml"


def _fail(command: str, message: object) -> NoReturn:
    click.echo(f"ipsctl lab {command}: {message}", err=True)
    sys.exit(1)


def _default_topology() -> str:
    """labs/gateway.yaml here, else the one beside this checkout's ips/ package."""
    if Path(DEFAULT_TOPOLOGY).exists():
        return DEFAULT_TOPOLOGY
    bundled = Path(__file__).resolve().parents[2] / DEFAULT_TOPOLOGY
    return str(bundled) if bundled.exists() else DEFAULT_TOPOLOGY


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def lab() -> None:
    """Network-namespace labs: a topology file brought up as hosts, bridges and services.

    \b
    up    build a lab (default labs/gateway.yaml) and start its services
    down  remove it: services stopped, namespaces deleted
    exec  run a command on one of its nodes:  ipsctl lab exec client -- curl 10.10.2.10
    list  the labs that are up, their nodes and addresses (and labs whose state file is gone)

    Needs root. Traffic stays between the lab's own namespaces.
    """


@lab.command()
@click.argument("topology", required=False, type=click.Path(dir_okay=False))
@PREFIX_OPTION
def up(topology: str | None, prefix: str) -> None:
    """Build TOPOLOGY (YAML; default labs/gateway.yaml) as network namespaces."""
    from ips.lab import netns

    path = topology or _default_topology()
    started = time.monotonic()
    try:
        built = netns.up(path, prefix)
    except TopologyError as exc:
        click.echo(str(exc), err=True)
        _fail("up", "topology NOT brought up")
    except (netns.LabError, OSError) as exc:
        _fail("up", exc)
    click.echo(
        f"lab {built.topology.name} up from {path} "
        f"(prefix {prefix}, {time.monotonic() - started:.1f} s)"
    )
    click.echo(_describe(built.topology, prefix))
    first = next(iter(built.topology.nodes))
    click.echo(f"\nrun:     ipsctl lab exec{_prefix_arg(prefix)} {first} -- ip addr")
    click.echo(f"remove:  ipsctl lab down{_prefix_arg(prefix)}")


@lab.command()
@PREFIX_OPTION
def down(prefix: str) -> None:
    """Remove the lab PREFIX (a no-op when it is not up)."""
    from ips.lab import netns

    try:
        report = netns.down_report(prefix)
    except (netns.LabError, OSError) as exc:
        _fail("down", exc)
    if not report.found:
        click.echo(f"no lab with prefix '{prefix}' is up; nothing to do")
        return
    pids = ", ".join(str(p) for p in report.services)
    if report.orphaned:
        click.echo(
            f"lab {prefix} removed (found by its namespaces; its state file was gone): "
            f"{len(report.namespaces)} namespaces"
            + (f", processes inside stopped (pid {pids})" if pids else "")
        )
        return
    click.echo(
        f"lab {prefix} removed: {len(report.namespaces)} namespaces"
        + (f", services stopped (pid {pids})" if pids else "")
    )
    for ns, others in report.lingering.items():
        click.echo(
            f"  note: processes still running in {ns} (pid "
            f"{', '.join(map(str, others))}); it is gone from /run/netns and "
            "disappears when they end",
            err=True,
        )


# Options may stand before or after NODE; `--` ends them, so COMMAND's own options (-h too)
# pass through untouched. Unknown options before `--` are passed on as well.
@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@PREFIX_OPTION
def exec_(node: str, command: tuple[str, ...], prefix: str) -> None:
    """Run COMMAND on NODE of the lab; exits with the command's exit code.

    \b
    ipsctl lab exec client -- curl -s http://10.10.2.10:8080/
    ipsctl lab exec gw -- nft list ruleset
    """
    from ips.lab import netns

    try:
        running = netns.get(prefix)
        running.namespace(node)  # an unknown node: a usage error, with a did-you-mean
        netns.require_root("lab exec")
    except netns.LabError as exc:
        if "no node" in str(exc):
            raise click.BadParameter(str(exc), param_hint="NODE") from None
        _fail("exec", exc)
    try:
        argv = list(command[1:] if command[:1] == ("--",) else command)
        if not argv:
            raise click.UsageError("no COMMAND after --")
        if "/" not in argv[0] and shutil.which(argv[0]) is None:
            # `ip netns exec` would say "exec of … failed" and exit 1; say it as a shell does.
            click.echo(f"ipsctl lab exec: {argv[0]}: command not found", err=True)
            sys.exit(127)
        rc = running.exec(node, argv).returncode
    except FileNotFoundError as exc:
        _fail("exec", f"{exc.filename}: not found")
    except KeyboardInterrupt:
        rc = 130
    # A command killed by a signal: the shell convention, 128 + signal number.
    sys.exit(rc if rc >= 0 else 128 - rc)


@lab.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="print the labs as JSON")
def list_(as_json: bool) -> None:
    """The labs that are up: prefix, nodes and their addresses, services."""
    from ips.lab import netns

    labs = netns.list_labs()
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in labs], indent=2))
        return
    if not labs:
        click.echo("no labs are up (start one with `ipsctl lab up`)")
        return
    for info in labs:
        if info.status == "orphaned":
            click.echo(
                f"lab ?  prefix {info.prefix}  orphaned (its state file is gone; remove it "
                f"with `ipsctl lab down --prefix {info.prefix}`)"
            )
            for ns in info.namespaces:
                click.echo(f"  {ns}")
            for pid in info.services:
                click.echo(f"  process pid {pid} running inside")
            continue
        age = time.time() - info.created
        where = info.topology_path or "?"
        click.echo(
            f"lab {info.name}  prefix {info.prefix}  {info.status}  ({where}, up {_age(age)})"
        )
        width = max((len(n) for n in info.nodes), default=0)
        for node, addrs in info.nodes.items():
            ns = info.prefix + node
            missing = "" if info.namespaces.get(ns, False) else "  (namespace missing)"
            click.echo(
                f"  {node:<{width}}  {ns:<{width + len(info.prefix)}}  {' '.join(addrs)}{missing}"
            )
        for pid, alive in info.services.items():
            click.echo(f"  services pid {pid} {'running' if alive else 'NOT running'}")


def _describe(topo: Topology, prefix: str) -> str:
    width = max(len(n) for n in topo.nodes)
    lines = []
    for node in topo.nodes.values():
        parts = []
        for iface in node.interfaces:
            addrs = [str(a) for a in iface.addresses] + list(iface.extra_spec)
            parts.append(f"{iface.name} ({iface.segment}) {' '.join(addrs)}")
        line = f"  {node.name:<{width}}  {prefix + node.name:<{width + len(prefix)}}  " + "; ".join(
            parts
        )
        if node.forwarding:
            line += "  [forwarding]"
        if node.services:
            line += "  services: " + ", ".join(f"{s.kind} {s.port}" for s in node.services)
        lines.append(line)
    return "\n".join(lines)


def _prefix_arg(prefix: str) -> str:
    return "" if prefix == "ipl-" else f" --prefix {prefix}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
