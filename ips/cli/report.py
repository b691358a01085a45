"""The store's readers (docs/store.md): `ipsctl report top|volume`, `ipsctl history`,
`ipsctl export`. They read the store directly (no daemon needed): a directory (SQLite) or
a postgresql:// URL, from --store or IPSCTL_STORE.

Periods: --since and --until take an age back from now (`24h`, `10m`, `7d`), a UTC date
or time (`2026-12-05`, `2026-12-05T10:00`), or `@SECONDS` since the epoch; --until
defaults to now. Output: a table by default, --json, or --csv.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import click

from ips.cli.common import EXIT_POLICY, EXIT_USAGE
from ips.store.backend import StoreBackend, StoreError, open_store
from ips.store.query import BY, HISTORY, METRICS, history, history_columns, top, volume
from ips.store.records import asn_key
from ips.store.retention import parse_age
from ips.views.flows import FilterError

DEFAULT_STORE = "/var/lib/ipsctl/store"

STORE_OPTION = click.option(
    "--store",
    "store_target",
    default=DEFAULT_STORE,
    show_default=True,
    envvar="IPSCTL_STORE",
    metavar="DIR|URL",
    help="the store: a directory (SQLite) or a postgresql:// URL",
)


def parse_when(text: str, now: float) -> float:
    """A time for --since/--until: an age back from now, a UTC date or time, or @SECONDS."""
    t = text.strip()
    if t.startswith("@"):
        return float(t[1:])
    if t == "now":
        return now
    try:
        return now - parse_age(t)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (24h, 2026-12-05T10:00, @1700000000)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _period(
    since: str, until: str | None, clock: Callable[[], float] = time.time
) -> tuple[float, float]:
    now = clock()
    try:
        lo = parse_when(since, now)
        hi = parse_when(until, now) if until else now
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if hi < lo:
        raise click.BadParameter("--until is before --since")
    return lo, hi


def _open(target: str) -> StoreBackend:
    try:
        return open_store(target, readonly=True)
    except StoreError as exc:
        click.echo(f"ipsctl: store: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def csv_text(rows: Iterable[dict[str, Any]], fields: Iterable[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _fail(exc: Exception) -> None:
    click.echo(f"ipsctl: {exc}", err=True)
    sys.exit(EXIT_USAGE if isinstance(exc, FilterError) else EXIT_POLICY)


FORMAT_OPTIONS = (
    click.option("--json", "as_json", is_flag=True, help="JSON"),
    click.option("--csv", "as_csv", is_flag=True, help="CSV"),
)


def _formats(f: Any) -> Any:
    for option in reversed(FORMAT_OPTIONS):
        f = option(f)
    return f


# ---- report -------------------------------------------------------------------------------------


@click.group()
def report() -> None:
    """Reports over the store: top talkers, volume over time."""


def format_top(result: dict[str, Any]) -> str:
    rows = result["rows"]
    head = (f"top {len(rows)} by {result['by']} ({result['metric']}), "
            f"{stamp(result['since'])} to {stamp(result['until'])} UTC")  # fmt: skip
    if not rows:
        return head + "\nnothing in this period"
    keys = [_top_key(r) for r in rows]
    width = max(len("KEY"), *(len(k) for k in keys))
    lines = [head, f"{'KEY':<{width}}  {'FLOWS':>9}  {'PACKETS':>12}  {'BYTES':>14}  {'':>9}"]
    for key, r in zip(keys, rows, strict=True):
        lines.append(f"{key:<{width}}  {r['flows']:>9}  {r['packets']:>12}  "
                     f"{r['bytes']:>14}  {human_bytes(r['bytes']):>9}")  # fmt: skip
    return "\n".join(lines)


def _top_key(row: dict[str, Any]) -> str:
    """A row's key cell: a port with its IANA service name beside it (5432/tcp postgresql)."""
    service = row.get("service")
    return f"{row['key']} {service}" if service else str(row["key"])


@report.command("top")
@click.option("--by", type=click.Choice(BY), default="src", show_default=True)
@click.option("--metric", type=click.Choice(METRICS), default="bytes", show_default=True)
@click.option("--since", default="24h", show_default=True)
@click.option("--until", default=None)
@click.option("--filter", "filter_text", default="", metavar="EXPR",
              help="as `ipsctl flows --filter` (reads the raw flows)")  # fmt: skip
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 100_000))
@_formats
@STORE_OPTION
def report_top(
    by: str, metric: str, since: str, until: str | None, filter_text: str, limit: int,
    as_json: bool, as_csv: bool, store_target: str,
) -> None:  # fmt: skip
    """The biggest sources, destinations, ports (with their IANA service names), apps, SNIs,
    interfaces, countries or AS numbers of a period."""
    lo, hi = _period(since, until)
    store = _open(store_target)
    try:
        result = top(store, by=by, metric=metric, since=lo, until=hi, filter_text=filter_text,
                     limit=limit)  # fmt: skip
    except FilterError as exc:
        _fail(exc)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif as_csv:
        fields = ("key", "service") if by == "port" else ("key",)
        click.echo(csv_text(result["rows"], (*fields, "flows", "packets", "bytes")), nl=False)
    else:
        click.echo(format_top(result))


def format_volume(result: dict[str, Any]) -> str:
    rows = result["rows"]
    where = f" on {result['interface']}" if result["interface"] else ""
    period = f"{stamp(result['since'])} to {stamp(result['until'])} UTC"
    head = f"volume{where} per {result['step']}, {period}"
    if not rows:
        return head + "\nnothing in this period"
    lines = [head, f"{'TIME (UTC)':<19}  {'FLOWS':>9}  {'PACKETS':>12}  {'BYTES':>10}  "
                   f"{'PEAK MINUTE':>11}  {'PEAK RATE':>12}"]  # fmt: skip
    for r in rows:
        rate = human_bytes(r["peak_bytes"] * 8 / 60).replace("B", "bit") + "/s"
        lines.append(f"{stamp(r['time']):<19}  {r['flows']:>9}  {r['packets']:>12}  "
                     f"{human_bytes(r['bytes']):>10}  {human_bytes(r['peak_bytes']):>11}  "
                     f"{rate:>12}")  # fmt: skip
    peak = result["peak"]
    lines.append(f"total {human_bytes(result['total_bytes'])}; peak minute in the period at "
                 f"{stamp(peak['time'])}: {human_bytes(peak['bytes_per_minute'])}")  # fmt: skip
    return "\n".join(lines)


@report.command("volume")
@click.option("--interface", default=None, metavar="IF")
@click.option("--step", type=click.Choice(["1m", "1h", "1d"]), default="1h", show_default=True)
@click.option("--since", default="24h", show_default=True)
@click.option("--until", default=None)
@click.option("--svg", "svg_path", default=None, type=click.Path(dir_okay=False),
              help="also draw it: an SVG chart with its peaks")  # fmt: skip
@_formats
@STORE_OPTION
def report_volume(
    interface: str | None, step: str, since: str, until: str | None, svg_path: str | None,
    as_json: bool, as_csv: bool, store_target: str,
) -> None:  # fmt: skip
    """Traffic over time (all of it or one interface's), per minute or hour, with peaks."""
    lo, hi = _period(since, until)
    store = _open(store_target)
    try:
        result = volume(store, since=lo, until=hi, step=step, interface=interface)
    finally:
        store.close()
    if svg_path:
        from ips.store.chart import volume_svg

        with open(svg_path, "w", encoding="utf-8") as out:
            out.write(volume_svg(result))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif as_csv:
        fields = ("time", "flows", "packets", "bytes", "bytes_fwd", "bytes_rev", "peak_bytes",
                  "peak_packets")  # fmt: skip
        click.echo(csv_text(result["rows"], fields), nl=False)
    else:
        click.echo(format_volume(result))


# ---- history and export -------------------------------------------------------------------------

_SHOWN = {
    "flows": ("time_end", "proto", "src", "src_geo", "sport", "dst", "dst_geo", "dport",
              "service", "app_proto", "bytes", "reason", "name"),
    "alerts": ("time", "action", "proto", "src", "sport", "dst", "dport", "signature"),
    "blocks": ("time", "kind", "addr", "detector", "ttl", "reason"),
    "logs": ("time", "verdict", "proto", "src", "sport", "dst", "dport", "rule_name"),
    "app": ("time", "event_type", "src", "dst", "dport", "name"),
}  # fmt: skip


def _shown(kind: str, row: dict[str, Any]) -> list[str]:
    out = []
    for col in _SHOWN[kind]:
        if col in ("time", "time_end"):
            value: Any = stamp(row[col])
        elif col == "bytes":
            value = human_bytes(row["bytes_fwd"] + row["bytes_rev"])
        elif col in ("src_geo", "dst_geo"):  # DE AS3320: the end's country and AS number
            end = col[:3]
            parts = [row[f"{end}_country"], asn_key(row[f"{end}_asn"])
                     if row[f"{end}_asn"] is not None else None]  # fmt: skip
            value = " ".join(p for p in parts if p) or None
        elif col == "name" and kind == "flows":
            value = row["dst_name"] or row["sni"] or row["http_host"]
        elif col == "ttl" and row[col] is not None:
            value = f"{row[col]:g}s"
        else:
            value = row[col]
        out.append("-" if value is None else str(value))
    return out


def format_history(kind: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"no {kind} in this period"
    table = [[c.upper().replace("_END", "") for c in _SHOWN[kind]]]
    table += [_shown(kind, r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
             for line in table]  # fmt: skip
    lines.append(f"{len(rows)} {kind}")
    return "\n".join(lines)


def _rows(
    store_target: str, kind: str, since: str, until: str | None, filter_text: str,
    limit: int | None,
) -> list[dict[str, Any]]:  # fmt: skip
    lo, hi = _period(since, until)
    store = _open(store_target)
    try:
        return list(history(store, kind, since=lo, until=hi, filter_text=filter_text, limit=limit))
    except FilterError as exc:
        _fail(exc)
        raise
    finally:
        store.close()


@click.command("history")
@click.argument("kind", type=click.Choice(HISTORY))
@click.option("--since", default="24h", show_default=True)
@click.option("--until", default=None)
@click.option("--filter", "filter_text", default="", metavar="EXPR",
              help="as `ipsctl flows --filter`")  # fmt: skip
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 10_000_000))
@_formats
@STORE_OPTION
def history_command(
    kind: str, since: str, until: str | None, filter_text: str, limit: int, as_json: bool,
    as_csv: bool, store_target: str,
) -> None:  # fmt: skip
    """Flows, alerts, blocks, log records or application events of a period, oldest first."""
    rows = _rows(store_target, kind, since, until, filter_text, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif as_csv:
        click.echo(csv_text(rows, history_columns(kind)), nl=False)
    else:
        click.echo(format_history(kind, rows))


@click.command("export")
@click.argument("kind", type=click.Choice((*HISTORY, "volume")))
@click.option("--since", default="24h", show_default=True)
@click.option("--until", default=None)
@click.option("--filter", "filter_text", default="", metavar="EXPR")
@click.option("--step", type=click.Choice(["1m", "1h", "1d"]), default="1h", help="volume's step")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)  # fmt: skip
@click.option("-o", "--output", default="-", type=click.File("w"), help="the file (- : stdout)")
@STORE_OPTION
def export(
    kind: str, since: str, until: str | None, filter_text: str, step: str, fmt: str,
    output: Any, store_target: str,
) -> None:  # fmt: skip
    """Every row of a kind in a period, as JSON lines or CSV (no limit)."""
    if kind == "volume":
        lo, hi = _period(since, until)
        store = _open(store_target)
        try:
            rows = volume(store, since=lo, until=hi, step=step)["rows"]
        finally:
            store.close()
        fields: tuple[str, ...] = ("time", "flows", "packets", "bytes", "bytes_fwd", "bytes_rev",
                                   "peak_bytes", "peak_packets")  # fmt: skip
    else:
        rows = _rows(store_target, kind, since, until, filter_text, None)
        fields = history_columns(kind)
    if fmt == "csv":
        output.write(csv_text(rows, fields))
    else:
        for row in rows:
            output.write(json.dumps(row, separators=(",", ":")) + "\n")
