"""`report volume --svg FILE`: the traffic of a period drawn as a small SVG, by hand (no
plotting library): one bar per minute or hour (its bytes, as a mean rate), the peak minute of
each bar as a tick above it, and the period's peak labelled."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

WIDTH, HEIGHT, MARGIN = 800, 300, 50


def _rate(n: float) -> str:
    for unit in ("bit/s", "kbit/s", "Mbit/s", "Gbit/s"):
        if n < 1000 or unit == "Gbit/s":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} Gbit/s"


def volume_svg(result: dict[str, Any]) -> str:
    rows = result["rows"]
    step = 60 if result["step"] == "1m" else 3600
    title = f"traffic per {result['step']}" + (
        f" on {result['interface']}" if result["interface"] else ""
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<text x="{MARGIN}" y="20" font-size="14">{escape(title)}</text>',
    ]
    if rows:
        # Mean rate of a bar (bits/s over its step) and the rate of its peak minute.
        means = [r["bytes"] * 8 / step for r in rows]
        peaks = [r["peak_bytes"] * 8 / 60 for r in rows]
        top = max(max(peaks), max(means), 1.0)
        plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN
        bar = plot_w / len(rows)
        base = HEIGHT - MARGIN
        for i, (mean, peak) in enumerate(zip(means, peaks, strict=True)):
            x = MARGIN + i * bar
            h = plot_h * mean / top
            parts.append(
                f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{max(bar - 1, 0.5):.1f}" '
                f'height="{h:.1f}" fill="#4a7ab5"/>'
            )
            py = base - plot_h * peak / top
            parts.append(
                f'<line x1="{x:.1f}" x2="{x + max(bar - 1, 0.5):.1f}" y1="{py:.1f}" '
                f'y2="{py:.1f}" stroke="#c0392b" stroke-width="2"/>'
            )
        best = max(range(len(rows)), key=lambda i: peaks[i])
        when = datetime.fromtimestamp(rows[best]["time"], UTC).strftime("%Y-%m-%d %H:%M")
        px = MARGIN + best * bar
        parts.append(
            f'<text x="{min(px, WIDTH - 200):.1f}" y="{MARGIN - 8}" fill="#c0392b">'
            f"peak {_rate(peaks[best])} ({escape(when)} UTC)</text>"
        )
        parts.append(f'<text x="4" y="{MARGIN + 4}">{_rate(top)}</text>')
        for i in (0, len(rows) - 1):
            stamp = datetime.fromtimestamp(rows[i]["time"], UTC).strftime("%m-%d %H:%M")
            parts.append(f'<text x="{MARGIN + i * bar:.1f}" y="{base + 16}">{escape(stamp)}</text>')
        parts.append(
            f'<line x1="{MARGIN}" x2="{WIDTH - MARGIN}" y1="{base}" y2="{base}" stroke="black"/>'
        )
    else:
        parts.append(f'<text x="{MARGIN}" y="{HEIGHT // 2}">nothing in this period</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
