"""The operator's commands for the daemon: run, apply, confirm, status, doctor."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ips.cli.common import EXIT_POLICY, EXIT_USAGE, SOCKET_OPTION, ask, echo_errors, load_or_exit
from ips.policy.diagnostics import PolicyError
from ips.views.status import format_status


@click.command()
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False),
    help="the policy to enforce (required inline; a tap defaults to policies/tap.rules)",
)
@click.option(
    "--mode",
    type=click.Choice(["inline", "tap"]),
    default="inline",
    show_default=True,
    help="inline: NFQUEUE, verdicts enforced; tap: read copies of an interface's frames "
    "(mirror/SPAN port), verdicts only recorded as would_drop/would_reject",
)
@click.option("--iface", help="tap: the interface to read")
@click.option("--bpf", help='tap: a kernel filter in tcpdump syntax, e.g. "not port 22"')
@click.option("--promisc", is_flag=True, help="tap: put the interface in promiscuous mode")
@click.option(
    "--queue", default=0, show_default=True, type=click.IntRange(0, 65535), help="NFQUEUE number"
)
@click.option(
    "--queues",
    default=1,
    show_default=True,
    type=click.IntRange(1, 8),
    help="workers, one per queue (QUEUE … QUEUE+N-1); a connection's packets go to the worker "
    "of its initiator's address",
)
@click.option(
    "--hook",
    "hooks",
    multiple=True,
    type=click.Choice(["forward", "input", "output"]),
    help="where packets are diverted: forward (a gateway, the default), input/output (a host); "
    "tap: where enforced blocks drop (default input and forward)",
)
@click.option(
    "--fail-mode",
    type=click.Choice(["open", "closed"]),
    default="open",
    show_default=True,
    help="when the daemon is down or its queue is full: let packets pass (open) "
    "or drop them (closed)",
)
@click.option(
    "--eve",
    "eve_path",
    type=click.Path(dir_okay=False),
    help="append EVE JSON events (alerts, drops, flows, blocks, stats) to this file; "
    "SIGHUP reopens it (logrotate)",
)
@click.option(
    "--eve-max-size",
    default="256M",
    show_default=True,
    help="rotate the EVE file at this size (FILE.1 … FILE.N); 0: never (use logrotate)",
)
@click.option(
    "--eve-keep",
    default=5,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="rotated EVE files kept",
)
@click.option(
    "--syslog",
    metavar="TARGET",
    help="also send alerts, drops and blocks as RFC 5424 syslog: unix:/dev/log or udp:HOST:PORT",
)
@click.option("--syslog-facility", default="local5", show_default=True)
@click.option(
    "--stats-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0),
    help="seconds between EVE `stats` events (0: none)",
)
@click.option(
    "--hang-timeout",
    default=5.0,
    show_default=True,
    type=float,
    help="seconds of silence after which the watchdog replaces a worker",
)
@click.option(
    "--queue-maxlen",
    default=4096,
    show_default=True,
    type=click.IntRange(1),
    help="packets the kernel holds for the worker; beyond that the fail mode applies",
)
@click.option(
    "--never-block",
    "never_block",
    multiple=True,
    metavar="CIDR",
    callback=lambda _c, _p, v: tuple(_cidr(x) for x in v),
    help="never let a detector block these sources (repeatable); this host's own addresses "
    "are always added",
)
@click.option(
    "--max-flows",
    default=262_144,
    show_default=True,
    type=click.IntRange(1),
    help="most connections the engine tracks; when full, unanswered ones are evicted first",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False),
    help="where a clean stop saves the blocks for the next start "
    "(default: blocks.json next to the socket)",
)
@click.option(
    "--backend",
    type=click.Choice(["nfqueue", "divert"]),
    default=None,
    help="how packets reach the engine: nfqueue (nftables + NFQUEUE; default on Linux) or "
    "divert (pydivert: WinDivert on Windows, eBPFDivert on Linux; default on Windows)",
)
@click.option(
    "--nfq-client",
    "nfq_client",
    type=click.Choice(["own", "netfilterqueue"]),
    default=None,
    help="how the NFQUEUE backend talks to the kernel: own (our netlink client, batched "
    "verdicts; the default) or netfilterqueue (the binding, one verdict per packet)",
)
@click.option(
    "--gso",
    "nfq_gso",
    type=click.Choice(["on", "off"]),
    default=None,
    help="NFQUEUE with our client: TCP super-packets (GSO/GRO, up to 64 KB) queued whole and "
    "judged once (on), or segmented by the kernel first (off, the default: every wire "
    "packet judged and counted)",
)
@click.option(
    "--metrics",
    "metrics",
    metavar="[ADDR:]PORT",
    callback=lambda _c, _p, v: _listen(v),
    help="serve Prometheus metrics on /metrics at ADDR:PORT (ADDR 127.0.0.1 unless given); "
    "off by default",
)
@click.option(
    "--webhook",
    "webhook",
    metavar="URL",
    callback=lambda _c, _p, v: _webhook_url(v),
    help="POST every alert as JSON to URL (Slack, Discord, Telegram-style), with retries",
)
@click.option(
    "--reverse-dns",
    "reverse_dns",
    is_flag=True,
    help="name responders that passive DNS did not by reverse DNS (the system resolver, "
    "in the background, cached); as `set reverse-dns on` in the policy",
)
@click.option(
    "--store",
    "store",
    metavar="DIR|URL",
    help="keep flows, alerts, blocks, log records and application events for `ipsctl report` "
    "and `history`: a directory (SQLite, a file per day) or a postgresql:// URL",
)
@click.option(
    "--store-retention",
    default="raw 7d, 1m 90d, 1h 1y, 1d 10y",
    show_default=True,
    help="how long the store keeps raw rows and the minute, hour and day rollups",
)
@click.option(
    "--store-home",
    "store_home",
    multiple=True,
    metavar="CIDR",
    callback=lambda _c, _p, v: tuple(_cidr(x) for x in v),
    help="the protected networks, for a flow's direction in the store (repeatable; default: "
    "the private ranges)",
)
@SOCKET_OPTION
def run(**options: Any) -> None:
    """Run the daemon (until SIGTERM): inline, diverting packets (NFQUEUE, or pydivert) and
    enforcing the policy, or as a passive tap on an interface."""
    from ips.daemon import ConfigError, DaemonConfig, Problem, RunOptions, WorkerFailed
    from ips.daemon import run as run_daemon
    from ips.io.tap import TapError

    try:
        cfg = DaemonConfig.from_options(RunOptions(**options), check_policy=load_or_exit)
    except ConfigError as exc:
        if exc.problem is Problem.OPTION:
            raise click.UsageError(str(exc)) from None
        click.echo(f"ipsctl run: {exc}", err=True)
        sys.exit(EXIT_USAGE if exc.problem is Problem.USAGE else EXIT_POLICY)
    try:
        sys.exit(run_daemon(cfg))
    except (TapError, WorkerFailed) as exc:
        click.echo(f"ipsctl run: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def _listen(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    from ips.sinks.prometheus import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _webhook_url(text: str | None) -> str | None:
    if text is None:
        return None
    from ips.sinks.webhook import check_url

    try:
        return check_url(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _cidr(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise click.BadParameter(f"not an address or network: {text!r}") from None


@click.command()
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False))
@click.option(
    "--confirm",
    "confirm_seconds",
    type=click.FloatRange(min=1),
    help="roll back unless `ipsctl confirm` arrives within SECONDS",
)
@SOCKET_OPTION
def apply(policy_path: str, confirm_seconds: float | None, socket_path: str) -> None:
    """Validate POLICY and hand it to the running daemon (an atomic swap)."""
    from ips.policy.resolve import load_policy_collecting

    try:
        _policy, sources = load_policy_collecting(policy_path)
    except PolicyError as exc:
        echo_errors(policy_path, exc)
        sys.exit(EXIT_POLICY)
    reply = ask(
        socket_path,
        {
            "op": "apply",
            "main": str(Path(policy_path).resolve()),
            "sources": sources,
            "confirm": confirm_seconds,
        },
    )
    if not reply.get("ok"):
        click.echo(reply.get("rendered") or f"ipsctl apply: {reply.get('error')}", err=True)
        click.echo(f"{policy_path}: policy NOT applied; the running policy is unchanged", err=True)
        sys.exit(EXIT_POLICY)
    click.echo(f"applied {policy_path} ({str(reply['digest'])[:16]})")
    if confirm_seconds:
        click.echo(f"run `ipsctl confirm` within {confirm_seconds:g} s, or it is rolled back")


@click.command()
@SOCKET_OPTION
def confirm(socket_path: str) -> None:
    """Keep the policy applied with `apply --confirm`."""
    reply = ask(socket_path, {"op": "confirm"})
    if not reply.get("ok"):
        click.echo(f"ipsctl confirm: {reply.get('error')}", err=True)
        sys.exit(EXIT_POLICY)
    click.echo("confirmed")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@SOCKET_OPTION
def status(as_json: bool, socket_path: str) -> None:
    """The running daemon: policy, counters, queue."""
    reply = ask(socket_path, {"op": "status"})
    if as_json or not reply.get("ok"):
        click.echo(json.dumps(reply, indent=2))
        sys.exit(0 if reply.get("ok") else EXIT_POLICY)
    click.echo(format_status(reply))


@click.command()
@click.option("--json", "as_json", is_flag=True)
def doctor(as_json: bool) -> None:
    """What this machine can do: nftables, the nft queue expression, iptables NFQUEUE, …"""
    from ips.io.divert import usable as divert_usable
    from ips.kernel.probe import probe

    caps = probe()
    data = caps.as_dict()
    data["usable"] = caps.inline_ok
    divert_ok, divert_why = divert_usable()
    data["backends"] = {
        "nfqueue": {
            "usable": caps.inline_ok,
            "why": ""
            if caps.inline_ok
            else "; ".join(f"{k}: {v}" for k, v in caps.reasons.items()),
        },
        "divert": {"usable": divert_ok, "why": divert_why},
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        checks = [
            ("root", "running as root"),
            ("nft_library", "libnftables (pip-nftables)"),
            ("nft_binary", "nft command"),
            ("timeout_sets", "nftables sets with timeouts"),
            ("nft_queue", "nft `queue` expression"),
            ("nft_log", "nft `log group` (offload copies)"),
            ("iptables_nfqueue", "iptables NFQUEUE target"),
            ("queue_proc", "/proc/net/netfilter/nfnetlink_queue"),
        ]
        for key, label in checks:
            ok = bool(data.get(key))
            reason = "" if ok else caps.reasons.get(key, "")
            click.echo(f"{'ok' if ok else 'no':<3} {label:<38} {reason}")
        way = {"nft": "nft queue", "iptables": "iptables NFQUEUE (fallback: no nft queue here)"}
        click.echo(f"diversion: {way.get(str(caps.diversion), 'none: cannot run inline')}")
        click.echo(f"backend nfqueue: {'usable' if caps.inline_ok else 'not usable'}")
        click.echo(f"backend divert:  {'usable' if divert_ok else 'not usable'} ({divert_why})")
    sys.exit(0 if caps.inline_ok or divert_ok else EXIT_POLICY)
