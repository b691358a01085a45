"""`ipsctl top`: a live terminal view of the running daemon, refreshed every second.

Reads only the control socket's read-only ops (status, flows, alerts, blocks_list), so a
member of the socket's group sees it without root. Rates are those of the packets the engine
judged (the kernel fast path and blocked sources never reach it). Destinations are shown with
the name passive DNS learned for them (the name the client asked for), as ntopng does, else
their reverse DNS name when the daemon asks (ips/geo/rdns.py); sources and destinations with
who they are (country, AS number and organisation, or the site's name: ips/geo/enrich.py),
ports with their IANA service name.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ips.geo.enrich import short_label

Request = Callable[[dict[str, Any]], dict[str, Any]]
HISTORY = 60  # seconds of rate history in the sparklines
TICKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = HISTORY) -> str:
    """The last `width` values as block characters, scaled to their maximum."""
    vals = list(values)[-width:]
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return TICKS[0] * len(vals)
    return "".join(TICKS[min(len(TICKS) - 1, int(v / top * (len(TICKS) - 1) + 0.5))] for v in vals)


def human(n: float, unit: str = "") -> str:
    for suffix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{suffix}{unit}" if suffix == "" else f"{n:.1f}{suffix}{unit}"
        n /= 1000
    return f"{n:.1f}P{unit}"


class TopState:
    """What one refresh fetched, and the history the rates are computed from."""

    def __init__(self) -> None:
        self.pps: deque[float] = deque(maxlen=HISTORY)
        self.bps: deque[float] = deque(maxlen=HISTORY)
        self._last: tuple[float, int, int] | None = None  # (time, packets, bytes)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=10)
        self.seq = 0
        self.status: dict[str, Any] = {}
        self.talkers: list[dict[str, Any]] = []
        self.ports: list[dict[str, Any]] = []
        self.destinations: list[dict[str, Any]] = []
        self.blocks: list[dict[str, Any]] = []
        self.error = ""

    def poll(self, request: Request, now: float | None = None) -> None:
        """Fetch everything once; a failing daemon shows as an error line, not a crash."""
        now = time.monotonic() if now is None else now
        try:
            self.status = request({"op": "status"})
            w = self.status.get("worker") or {}
            packets, nbytes = int(w.get("packets") or 0), int(w.get("bytes") or 0)
            if self._last is not None and now > self._last[0]:
                dt = now - self._last[0]
                # A restarted worker starts its counters again: no negative rates.
                self.pps.append(max(0.0, (packets - self._last[1]) / dt))
                self.bps.append(max(0.0, (nbytes - self._last[2]) * 8 / dt))
            self._last = (now, packets, nbytes)
            talk = request({"op": "flows", "group": "src", "sort": "bytes", "top": 8})
            self.talkers = talk.get("groups") or []
            ports = request({"op": "flows", "group": "port", "sort": "bytes", "top": 8})
            self.ports = ports.get("groups") or []
            dests = request({"op": "flows", "group": "dst", "sort": "bytes", "top": 8})
            self.destinations = dests.get("groups") or []
            alerts = request({"op": "alerts", "since": self.seq, "limit": 10})
            seq = int(alerts.get("seq") or 0)
            if seq < self.seq:  # a new worker numbers from 1 again
                self.seq = 0
            for a in alerts.get("alerts") or []:
                if int(a.get("seq") or 0) > self.seq:  # each alert once
                    self.alerts.appendleft(a)
            self.seq = max(self.seq, seq)
            self.blocks = request({"op": "blocks_list"}).get("blocks") or []
            self.error = ""
        except (OSError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"


def _table(
    title: str, columns: Sequence[str], rows: list[list[str]], widths: Sequence[int] = ()
) -> Table:
    """A borderless table; `widths` are minimum widths (the columns an 80-column terminal
    must not squeeze); a column without one takes what is left, cut with an ellipsis."""
    t = Table(title=title, title_justify="left", expand=True, box=None, padding=(0, 1))
    for i, c in enumerate(columns):
        width = widths[i] if i < len(widths) else 0
        t.add_column(
            c,
            justify="left" if i == 0 or not width else "right",
            no_wrap=True,
            min_width=width or None,
            overflow="ellipsis",
        )
    for r in rows:
        t.add_row(*r)
    if not rows:
        t.add_row("-", *([""] * (len(columns) - 1)))
    return t


def render(state: TopState) -> RenderableType:
    s = state.status
    w = s.get("worker") or {}
    head = Text()
    head.append("ipsctl top", style="bold")
    if s.get("ok"):
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted((w.get("verdicts") or {}).items()))
        head.append(
            f"   pid {s.get('pid')}  up {s.get('uptime', 0):.0f}s   "
            f"packets {w.get('packets', '?')} ({verdicts or 'none'})   "
            f"flows {w.get('flows', '?')}   alerts {w.get('alerts', '?')}"
        )
    if state.error:
        head.append(f"\n{state.error}", style="bold red")
    pps = state.pps[-1] if state.pps else 0.0
    bps = state.bps[-1] if state.bps else 0.0
    rates = Text()
    rates.append(f"packets/s {human(pps):>7}  ", style="bold")
    rates.append(sparkline(state.pps) + "\n", style="green")
    rates.append(f"bits/s    {human(bps):>7}  ", style="bold")
    rates.append(sparkline(state.bps), style="cyan")
    talkers = _table(
        "top talkers",
        ["source", "who", "flows", "packets", "bytes"],
        [
            [
                g["key"] + (f" ({g['rdns']})" if g.get("rdns") else ""),
                who(g.get("geo")),
                str(g["flows"]),
                human(g["packets"]),
                human(g["bytes"], "B"),
            ]
            for g in state.talkers
        ],
        widths=(15, 0, 5, 7, 7),
    )
    ports = _table(
        "top ports",
        ["port", "flows", "packets", "bytes"],
        [
            [
                g["key"] + (f" {g['service']}" if g.get("service") else ""),
                str(g["flows"]),
                human(g["packets"]),
                human(g["bytes"], "B"),
            ]
            for g in state.ports
        ],
        widths=(9, 5, 7, 7),
    )
    side = Table.grid(expand=True)
    side.add_column(ratio=1)
    side.add_column(ratio=1)
    side.add_row(talkers, ports)
    destinations = _table(
        "top destinations",
        ["destination", "name", "who", "flows", "packets", "bytes"],
        [
            [
                g["key"],
                str(g.get("name") or "-"),
                who(g.get("geo"), org=True),
                str(g["flows"]),
                human(g["packets"]),
                human(g["bytes"], "B"),
            ]
            for g in state.destinations
        ],
        widths=(15, 0, 0, 5, 7, 7),
    )
    alert_rows = []
    for a in state.alerts:
        ev = a.get("event") or {}
        al = ev.get("alert") or {}
        when = time.strftime("%H:%M:%S", time.localtime(float(a.get("time") or 0)))
        name = alert_name(ev)
        alert_rows.append(
            [
                when,
                str(al.get("category", "")),
                f"{ev.get('src_ip')}{_where(ev, 'src_geo')} > {ev.get('dest_ip')}"
                f"{_where(ev, 'dst_geo')}" + (f" ({name})" if name else ""),
                str(al.get("action", "")),
                str(al.get("signature", "")),
            ]
        )
    alerts = _table(
        "recent alerts",
        ["time", "category", "from > to", "action", "signature"],
        alert_rows,
        widths=(8, 9, 31, 7),
    )
    block_rows = [
        [
            b["addr"],
            str(b.get("detector") or "-"),
            _left(b.get("expires_in")),
            str(b.get("reason") or ""),
        ]
        for b in state.blocks[:8]
    ]
    blocks = _table(
        f"active blocks ({len(state.blocks)})",
        ["address", "by", "left", "reason"],
        block_rows,
        widths=(15, 9, 6),
    )
    return Group(Panel(Group(head, rates)), side, destinations, alerts, blocks)


def who(geo: Any, org: bool = False) -> str:
    """The `who` cell: `US AS15169` (with ORG: `US AS15169 Google LLC`), a site's name,
    `private`, or `-`."""
    if not isinstance(geo, dict):
        return "-"
    label = short_label(geo)
    if org and geo.get("org"):
        label += f" {geo['org']}"
    return label


def _where(ev: dict[str, Any], key: str) -> str:
    """` [RU AS64500]` after an alert's address; nothing for a bare scope or no data."""
    geo = (ev.get("ipsctl") or {}).get(key)
    if not isinstance(geo, dict) or set(geo) <= {"scope"}:
        return ""
    return f" [{short_label(geo)}]"


def alert_name(ev: dict[str, Any]) -> str | None:
    """The name of an alert's destination: the passive DNS name (ipsctl.dst_name), else the
    server name its client sent (the alert's tls or quic SNI, its http hostname)."""
    own = ev.get("ipsctl") or {}
    name = own.get("dst_name")
    if name:
        return str(name)
    for key, field in (("tls", "sni"), ("quic", "sni"), ("http", "hostname")):
        value = (ev.get(key) or {}).get(field)
        if value:
            return str(value)
    rdns = own.get("dst_rdns")
    return str(rdns) if rdns else None


def _left(seconds: Any) -> str:
    return f"{int(seconds)}s" if isinstance(seconds, int | float) else "-"


def run_top(request: Request, interval: float = 1.0, once: bool = False) -> None:
    """Refresh every `interval` seconds until Ctrl-C; `once`: print one frame and return."""
    from rich.console import Console
    from rich.live import Live

    state = TopState()
    console = Console()
    state.poll(request)
    if once:  # two polls an interval apart, so the rates have a value
        time.sleep(interval)
        state.poll(request)
        console.print(render(state))
        return
    with Live(render(state), console=console, screen=True, auto_refresh=False) as live:
        try:
            while True:
                next_at = time.monotonic() + interval
                state.poll(request)
                live.update(render(state), refresh=True)
                time.sleep(max(0.0, next_at - time.monotonic()))
        except KeyboardInterrupt:
            pass
