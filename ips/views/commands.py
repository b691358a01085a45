"""The `ipsctl flows` and `ipsctl top` commands (registered by ips/cli.py).

Both use only read-only ops of the control socket: root, or a member of group ipsctl.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

import click

from ips.views.flows import GROUPS, MAX_ROWS, SORT_KEYS, FilterError, parse_filter

CSV_FIELDS = ("id", "proto", "src", "sport", "dst", "dport", "packets", "bytes", "bytes_fwd",
              "bytes_rev", "duration", "idle", "state")  # fmt: skip


def _socket_option(fn: Any) -> Any:
    return click.option(
        "--socket", "socket_path", default="/run/ipsctl/ipsctl.sock", show_default=True,
        envvar="IPSCTL_SOCKET", help="control socket of the daemon",
    )(fn)  # fmt: skip


def _request(socket_path: str, message: dict[str, Any]) -> dict[str, Any]:
    from ips.cli import _request as request  # its messages for a missing daemon / no access

    return request(socket_path, message)  # type: ignore[return-value]


def _check_filter(_ctx: object, _param: object, value: str | None) -> str | None:
    if value:
        try:
            parse_filter(value)
        except FilterError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def format_flows(rows: list[dict[str, Any]], total: int) -> str:
    if not rows:
        return "no flows" + (f" (of {total})" if total else "")
    lines = [f"{'PROTO':<6} {'SOURCE':<45} {'DESTINATION':<45} {'PKTS':>8} {'BYTES':>10} "
             f"{'DURATION':>9}  STATE"]  # fmt: skip
    for r in rows:
        src = _endpoint(r["src"], r["sport"], r["proto"])
        dst = _endpoint(r["dst"], r["dport"], r["proto"])
        lines.append(f"{r['proto']:<6} {src:<45} {dst:<45} {r['packets']:>8} {r['bytes']:>10} "
                     f"{r['duration']:>8.1f}s  {r['state']}")  # fmt: skip
    lines.append(f"{len(rows)} of {total} flow{'s' if total != 1 else ''}")
    return "\n".join(lines)


def _endpoint(addr: str, port: int, proto: str) -> str:
    if proto not in ("tcp", "udp", "sctp", "udplite"):
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def flows_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@click.command()
@click.option("--top", "top", default=20, show_default=True, type=click.IntRange(1, MAX_ROWS),
              help="how many rows")  # fmt: skip
@click.option("--sort", type=click.Choice(SORT_KEYS), default="bytes", show_default=True)
@click.option("--filter", "filter_text", callback=_check_filter, metavar="EXPR",
              help='e.g. "proto tcp dport 80", "src 10.0.0.0/8 and state established" '
                   "(words: proto host src dst port sport dport state)")  # fmt: skip
@click.option("--group", type=click.Choice(GROUPS), help="sum by source, destination or "
              "destination port instead of listing flows")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True)
@_socket_option
def flows(top: int, sort: str, filter_text: str | None, group: str | None, as_json: bool,
          as_csv: bool, socket_path: str) -> None:  # fmt: skip
    """Active connections: addresses, ports, protocol, packets, bytes, duration."""
    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    message = {"op": "flows", "top": top, "sort": sort, "filter": filter_text or "",
               "group": group}  # fmt: skip
    reply = _request(socket_path, message)
    if not reply.get("ok"):
        click.echo(f"ipsctl flows: {reply.get('error')}", err=True)
        sys.exit(1)
    reply.pop("id", None)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
    elif group:
        rows = reply.get("groups") or []
        if as_csv:
            click.echo("key,flows,packets,bytes")
            for g in rows:
                click.echo(f"{g['key']},{g['flows']},{g['packets']},{g['bytes']}")
        else:
            click.echo(f"{group.upper():<45} {'FLOWS':>7} {'PKTS':>9} {'BYTES':>12}")
            for g in rows:
                click.echo(f"{g['key']:<45} {g['flows']:>7} {g['packets']:>9} {g['bytes']:>12}")
    elif as_csv:
        click.echo(flows_csv(reply.get("flows") or []), nl=False)
    else:
        click.echo(format_flows(reply.get("flows") or [], int(reply.get("total") or 0)))


@click.command()
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.2, 60),
              help="seconds between refreshes")  # fmt: skip
@click.option("--once", is_flag=True, help="print one frame (after one interval) and exit")
@_socket_option
def top(interval: float, once: bool, socket_path: str) -> None:
    """Live view: packets/s and bits/s, top talkers and ports, recent alerts, blocks."""
    from ips.daemon import request
    from ips.views.top import run_top

    _request(socket_path, {"op": "status"})  # a clear message if there is no daemon

    def ask(message: dict[str, Any]) -> dict[str, Any]:
        return request(socket_path, message, timeout=5.0)

    run_top(ask, interval=interval, once=once)
