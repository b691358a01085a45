"""What the commands of ipsctl share: exit codes, the control socket option and client,
loading a policy with its diagnostics on stderr."""

from __future__ import annotations

import sys

import click

from ips.control import DEFAULT_SOCKET, AccessDenied, ControlError, NoDaemon, Reply, Request, call
from ips.policy.diagnostics import PolicyError, render
from ips.policy.model import Policy
from ips.policy.resolve import load_policy

EXIT_POLICY = 1  # policy errors, a failed check, a refused request, no daemon
EXIT_USAGE = 2
# The daemon out of reach, as an exit code.
CONTROL_EXIT: dict[type[ControlError], int] = {NoDaemon: EXIT_POLICY, AccessDenied: EXIT_POLICY}

SOCKET_OPTION = click.option(
    "--socket",
    "socket_path",
    default=DEFAULT_SOCKET,
    show_default=True,
    envvar="IPSCTL_SOCKET",
    help="control socket of the daemon",
)


def ask(socket_path: str, message: Request) -> Reply:
    """The daemon's answer; when it cannot be asked, a message and the exit."""
    try:
        return call(socket_path, message)
    except ControlError as exc:
        click.echo(f"ipsctl: {exc}", err=True)
        sys.exit(CONTROL_EXIT.get(type(exc), EXIT_POLICY))


def error_report(path: str, exc: PolicyError) -> dict[str, object]:
    return {"ok": False, "file": path, "diagnostics": [d.as_dict() for d in exc.diagnostics]}


def echo_errors(path: str, exc: PolicyError) -> None:
    click.echo(exc.render(), err=True)
    n = sum(1 for d in exc.diagnostics if d.severity == "error")
    click.echo(f"{path}: {n} error{'s' if n != 1 else ''}; policy NOT applied", err=True)


def load_or_exit(path: str) -> Policy:
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        echo_errors(path, exc)
        sys.exit(EXIT_POLICY)
    if policy.warnings:
        click.echo(render(policy.warnings, policy.sources), err=True)
    return policy
