"""The live views of a running daemon: `ipsctl flows` and `ipsctl top`.

Both use only read-only ops of the control socket: root, or a member of group ipsctl.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

import click

from ips.cli.common import SOCKET_OPTION, ask
from ips.control import FlowsRequest, request
from ips.views.flows import (
    GROUPS,
    MAX_ROWS,
    SORT_KEYS,
    FilterError,
    flows_csv,
    format_flows,
    parse_filter,
)


def _check_filter(_ctx: object, _param: object, value: str | None) -> str | None:
    if value:
        try:
            parse_filter(value)
        except FilterError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _check_name(_ctx: object, _param: object, value: str | None) -> str | None:
    if value is not None:
        if not value.strip() or len(value.split()) != 1:
            raise click.BadParameter("one name, *.name or *")
        _check_filter(_ctx, _param, f"name {value}")
    return value


@click.command()
@click.option(
    "--top",
    "top",
    default=20,
    show_default=True,
    type=click.IntRange(1, MAX_ROWS),
    help="how many rows",
)
@click.option("--sort", type=click.Choice(SORT_KEYS), default="bytes", show_default=True)
@click.option(
    "--filter",
    "filter_text",
    callback=_check_filter,
    metavar="EXPR",
    help='e.g. "proto tcp dport 80", "src 10.0.0.0/8 and state established" '
    "(words: proto host src dst port sport dport state name country asn)",
)
@click.option(
    "--name",
    "name",
    callback=_check_name,
    metavar="NAME",
    help="only flows whose responder has this name (passive DNS): "
    '"example.com", "*.example.com" (its subdomains), "*" (any known name)',
)
@click.option(
    "--group",
    type=click.Choice(GROUPS),
    help="sum by source, destination or destination port instead of listing flows",
)
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True)
@SOCKET_OPTION
def flows(
    top: int,
    sort: str,
    filter_text: str | None,
    name: str | None,
    group: str | None,
    as_json: bool,
    as_csv: bool,
    socket_path: str,
) -> None:
    """Active connections: addresses, ports, protocol, packets, bytes, duration, and the
    responder's name when passive DNS learned it."""
    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    if name:  # one more word of the filter, which every term must satisfy
        filter_text = f"{filter_text or ''} name {name}".strip()
    message: FlowsRequest = {
        "op": "flows",
        "top": top,
        "sort": sort,
        "filter": filter_text or "",
        "group": group,
    }
    reply = ask(socket_path, message)
    if not reply.get("ok"):
        click.echo(f"ipsctl flows: {reply.get('error')}", err=True)
        sys.exit(1)
    reply.pop("id", None)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
    elif group:
        rows = reply.get("groups") or []
        named = group == "dst"  # destinations carry their passive DNS name
        if as_csv:
            # A DNS name may hold a comma (only unprintable bytes are escaped): quote as CSV.
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["key", "flows", "packets", "bytes"] + (["name"] if named else []))
            for g in rows:
                cells = [g["key"], g["flows"], g["packets"], g["bytes"]]
                writer.writerow([*cells, g.get("name") or ""] if named else cells)
            click.echo(out.getvalue(), nl=False)
        else:
            from ips.geo.enrich import short_label

            # Who the address is (country, AS, site) or the port's IANA service name, then
            # the destination's name, last (a name may hold anything).
            third = "SERVICE" if group == "port" else "WHO"
            head = f"{group.upper():<45} {'FLOWS':>7} {'PKTS':>9} {'BYTES':>12}  {third:<16}"
            click.echo(head + ("  NAME" if named else ""))
            for g in rows:
                extra = g.get("service") if group == "port" else short_label(g.get("geo"))
                line = (
                    f"{g['key']:<45} {g['flows']:>7} {g['packets']:>9} {g['bytes']:>12}  "
                    f"{extra or '-':<16}"
                )
                click.echo(line + (f"  {g.get('name') or '-'}" if named else ""))
    elif as_csv:
        click.echo(flows_csv(reply.get("flows") or []), nl=False)
    else:
        click.echo(format_flows(reply.get("flows") or [], int(reply.get("total") or 0)))


@click.command()
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.2, 60),
    help="seconds between refreshes",
)
@click.option("--once", is_flag=True, help="print one frame (after one interval) and exit")
@SOCKET_OPTION
def top(interval: float, once: bool, socket_path: str) -> None:
    """Live view: packets/s and bits/s, top talkers and ports, recent alerts, blocks."""
    from ips.views.top import run_top

    ask(socket_path, {"op": "status"})  # a clear message if there is no daemon

    def poll(message: dict[str, Any]) -> dict[str, Any]:
        return request(socket_path, message, timeout=5.0)  # type: ignore[arg-type]

    run_top(poll, interval=interval, once=once)
