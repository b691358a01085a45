"""`ipsctl eval --svg FILE`: the timeline drawn by hand, as the store's chart is (no plotting
library): one lane per attack class with its bursts shaded, one lane per detector or rule with
a tick per alert (green: true, red: false) and a bar per block, on the capture's clock; above
them the mix's planned windows, when it had several (a timeline)."""

from __future__ import annotations

from html import escape
from typing import Any

from ips.evaluate.score import Evaluation

WIDTH, LEFT, RIGHT, TOP, LANE = 900, 170, 20, 40, 26
MAX_TICKS = 5000  # alerts drawn per lane at most (the count is in the lane's label)
COLOURS = ["#4a7ab5", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#2c3e50"]
TRUE, FALSE = "#27ae60", "#c0392b"


def _step(span: float) -> float:
    """A round tick step giving 5 to 10 ticks over `span` seconds."""
    step = 1e-3
    for _ in range(40):
        for mult in (1, 2, 5):
            if span / (step * mult) <= 10:
                return step * mult
        step *= 10
    return step


def _window_label(window: dict[str, Any]) -> str:
    """`ddos 30%, scan 5%` of a mix window: its attack classes' shares of its packets."""
    classes = window.get("classes")
    if not isinstance(classes, dict):
        return ""
    total = sum(c.get("packets", 0) for c in classes.values() if isinstance(c, dict)) or 1
    parts = [
        f"{name} {100 * c.get('packets', 0) / total:.0f}%"
        for name, c in classes.items()
        if name != "benign" and isinstance(c, dict) and c.get("packets")
    ]
    return ", ".join(parts) or "benign"


def timeline_svg(
    ev: Evaluation,
    origin: float,
    end: float,
    title: str = "",
    windows: list[dict[str, Any]] | None = None,
) -> str:
    """The SVG text. `origin` and `end`: the capture's first and last packet times;
    `windows`: the mix's planned windows (the labels header's `windows`), drawn as a lane of
    their own when there are several."""
    classes = [row["class"] for row in ev.classes]
    keys = [row["key"] for row in ev.keys]
    windows = [
        w
        for w in windows or []
        if isinstance(w, dict)
        and isinstance(w.get("start"), int | float)
        and isinstance(w.get("end"), int | float)
    ]
    lanes = len(classes) + len(keys) + (1 if len(windows) > 1 else 0)
    height = TOP + max(lanes, 1) * LANE + 40
    span = max(end - origin, 1e-6)
    plot = WIDTH - LEFT - RIGHT

    def x(t: float) -> float:
        return LEFT + plot * min(max((t - origin) / span, 0.0), 1.0)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="20" font-size="14">{escape(title or "attacks and detections")}'
        "</text>",
    ]
    lane = 0
    if len(windows) > 1:
        y = TOP
        parts.append(f'<text x="4" y="{y + 16}">mix windows</text>')
        for k, w in enumerate(windows):
            x0, x1 = x(float(w["start"])), x(float(w["end"]))
            parts.append(
                f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 1.0):.1f}" '
                f'height="{LANE - 8}" fill="{"#ecf0f1" if k % 2 else "#d5dbdb"}"/>'
            )
            parts.append(
                f'<text x="{x0 + 3:.1f}" y="{y + 16}" font-size="9">'
                f"{escape(_window_label(w)[:40])}</text>"
            )
        lane += 1
    for i, cls in enumerate(classes):
        y = TOP + lane * LANE
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<text x="4" y="{y + 16}">{escape(cls[:26])}</text>')
        for ep in ev.episodes:
            if ep.cls != cls:
                continue
            x0, x1 = x(ep.start), x(ep.end)
            parts.append(
                f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 1.0):.1f}" '
                f'height="{LANE - 8}" fill="{colour}" fill-opacity="0.45"/>'
            )
            if ep.detected_at is not None:
                xd = x(ep.detected_at)
                parts.append(
                    f'<path d="M{xd:.1f},{y + 2} l-4,-6 h8 z" fill="{TRUE}">'
                    f"<title>detected after {ep.time_to_detect:.3f}s</title></path>"
                )
        lane += 1
    for row in ev.keys:
        key = row["key"]
        y = TOP + lane * LANE
        label = f"{key[:22]} ({row['alerts']})"
        parts.append(f'<text x="4" y="{y + 16}">{escape(label)}</text>')
        for start, until, bkey, true in ev.blocks:
            if bkey == key:
                x0, x1 = x(start), x(until)
                parts.append(
                    f'<rect x="{x0:.1f}" y="{y + LANE - 7}" width="{max(x1 - x0, 1.0):.1f}" '
                    f'height="3" fill="{TRUE if true else FALSE}" fill-opacity="0.6"/>'
                )
        drawn = 0
        for when, pkey, true in ev.points:
            if pkey != key or drawn >= MAX_TICKS:
                continue
            drawn += 1
            xt = x(when)
            parts.append(
                f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{y + 4}" y2="{y + LANE - 9}" '
                f'stroke="{TRUE if true else FALSE}" stroke-width="1.5"/>'
            )
        lane += 1
    base = TOP + max(lanes, 1) * LANE + 4
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}" stroke="#555"/>')
    step = _step(span)
    tick = 0.0
    while tick <= span + 1e-9:
        xt = LEFT + plot * tick / span
        parts.append(
            f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{base}" y2="{base + 4}" stroke="#555"/>'
        )
        parts.append(f'<text x="{xt:.1f}" y="{base + 16}" text-anchor="middle">{tick:g}s</text>')
        tick += step
    parts.append(
        f'<text x="{WIDTH - RIGHT}" y="{base + 30}" text-anchor="end" fill="#555">'
        "seconds since the first packet; ticks: alerts (green true, red false); "
        "thin bars: blocks; triangles: first detection of a burst</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
