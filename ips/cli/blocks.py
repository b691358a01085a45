"""`ipsctl blocks`: the blocked sources in the kernel's @banned sets (detectors' and manual),
and the MACs banned for forged packets (@banned_ether)."""

from __future__ import annotations

import json
import sys

import click

from ips.cli.common import EXIT_POLICY, SOCKET_OPTION, ask
from ips.control import BlocksAddRequest, Reply
from ips.core.addr import block_target, block_ttl


def parse_ttl(_ctx: object, _param: object, value: str | None) -> float | None:
    """10m, 2s, 1h, 1d, 500ms or plain seconds."""
    if value is None:
        return None
    import re

    from ips.policy.names import DURATION_UNITS

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value)
    if not m or (m.group(2) and m.group(2) not in DURATION_UNITS):
        raise click.BadParameter(f"{value!r}: a duration like 30s, 10m, 1h, 1d")
    seconds = float(m.group(1)) * DURATION_UNITS.get(m.group(2) or "s", 1)
    if seconds <= 0:
        raise click.BadParameter("must be more than 0")
    return seconds


def _left(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _blocks_reply(reply: Reply, as_json: bool, what: str) -> Reply:
    if as_json:
        click.echo(json.dumps(reply, indent=2))
    if not reply.get("ok"):
        if not as_json:
            click.echo(f"ipsctl blocks {what}: {reply.get('error')}", err=True)
        sys.exit(EXIT_POLICY)
    return reply


@click.group()
def blocks() -> None:
    """Blocked sources: the kernel's @banned sets (detectors' blocks and manual ones), and
    the MACs of senders of forged packets (@banned_ether).

    \b
    list              address or MAC, time left, who blocked it and why (root or group ipsctl)
    add ADDR          block ADDR now, in the kernel [--ttl 10m] [--reason TEXT] (root)
    del ADDR|MAC      unblock ADDR, or lift the ban of MAC (root)
    flush             unblock everything, MACs too (root)
    """


@blocks.command("list")
@click.option("--json", "as_json", is_flag=True)
@SOCKET_OPTION
def blocks_list(as_json: bool, socket_path: str) -> None:
    """Blocked addresses, then banned MACs, with the time left in the kernel."""
    reply = _blocks_reply(ask(socket_path, {"op": "blocks_list"}), as_json, "list")
    if as_json:
        return
    rows = reply.get("blocks") or []
    if not rows:
        click.echo("no blocks")
        return
    click.echo(f"{'ADDRESS':<39} {'TABLE':<12} {'LEFT':>8}  {'BY':<10} {'OFFENSE':>7}  REASON")
    for r in rows:
        click.echo(
            f"{r['addr']:<39} {r['table']:<12} {_left(r.get('expires_in')):>8}  "
            f"{r.get('detector') or '-':<10} {r.get('offense') or 0:>7}  {r.get('reason') or ''}"
        )


@blocks.command("add")
@click.argument("addr")
@click.option(
    "--ttl",
    callback=parse_ttl,
    help="how long (30s, 10m, 1h); default: the "
    "timeout of the policy's @banned table (1h when it has none)",
)
@click.option("--reason", help="why (shown by `blocks list`, written to EVE)")
@click.option(
    "--force",
    is_flag=True,
    help="block even an address that is never blocked (this host's own, --never-block)",
)
@click.option("--json", "as_json", is_flag=True)
@SOCKET_OPTION
def blocks_add(
    addr: str, ttl: float | None, reason: str | None, force: bool, as_json: bool, socket_path: str
) -> None:
    """Block ADDR in the kernel now."""
    # The daemon checks the same (core.addr), and this host's subnet broadcasts besides.
    try:
        whole = block_ttl(ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--ttl'") from None
    try:
        target = block_target(addr)
    except ValueError as exc:
        _blocks_reply({"ok": False, "error": str(exc)}, as_json, "add")
    message: BlocksAddRequest = {
        "op": "blocks_add",
        "addr": target,
        "ttl": whole,
        "reason": reason,
        "force": force,
    }
    reply = _blocks_reply(ask(socket_path, message), as_json, "add")
    if not as_json:
        ttl_text = _left(reply.get("ttl")) if reply.get("ttl") else "no timeout"
        notes = []
        if ":" in addr and ":" not in str(reply["addr"]):
            notes.append(f"{addr.strip()} is the IPv4 address {reply['addr']}")
        if ttl is not None and reply.get("ttl") != ttl:
            notes.append(f"--ttl {ttl:g}s rounded up to whole seconds, the kernel's unit")
        more = f" ({'; '.join(notes)})" if notes else ""
        click.echo(f"blocked {reply['addr']} for {ttl_text}{more}")


@blocks.command("del")
@click.argument("addr")
@click.option("--json", "as_json", is_flag=True)
@SOCKET_OPTION
def blocks_del(addr: str, as_json: bool, socket_path: str) -> None:
    """Unblock ADDR (an IP address), or lift the ban of a MAC (aa:bb:cc:dd:ee:ff)."""
    reply = _blocks_reply(ask(socket_path, {"op": "blocks_del", "addr": addr}), as_json, "del")
    if not as_json:
        click.echo(f"unblocked {reply['addr']}")


@blocks.command("flush")
@click.option("--json", "as_json", is_flag=True)
@SOCKET_OPTION
def blocks_flush(as_json: bool, socket_path: str) -> None:
    """Unblock every address and lift every MAC ban."""
    reply = _blocks_reply(ask(socket_path, {"op": "blocks_flush"}), as_json, "flush")
    if not as_json:
        click.echo(f"unblocked {reply['removed']} address(es) and MAC(s)")
