"""Tap mode logs the application layer as inline does: the same TLS, QUIC, DNS and HTTP
events for the same traffic (appkit's real clients and servers), every EVE line valid against
Suricata's schema; and a policy's SNI drop in tap mode is reported, not enforced.

Its own lab (own namespace prefix); traffic only between the lab's hosts, every client bounded.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from appkit import AppLab, app_events, app_lab, policy, schema_errors, schema_validator
from labkit import wait_until

EXPECTED = {
    ("tls", "ok.lab"),
    ("tls", "blocked.lab"),
    ("quic", "ok.lab"),
    ("dns", "good.lab"),
    ("dns", "x.bad.lab"),
    ("http", "ok.lab"),
    ("http", "blocked.lab"),
}


def traffic(app: AppLab) -> dict[str, Any]:
    """One of each exchange; returns what the clients got."""
    return {
        "https ok": app.https("ok.lab").returncode,
        "https blocked": app.https("blocked.lab").returncode,
        "quic ok": app.quic("ok.lab").returncode,
        "dns good": app.dig("good.lab")[0],
        "dns bad": app.dig("x.bad.lab")[0],
        "http ok": app.http("ok.lab").returncode,
        "http blocked": app.http("blocked.lab").returncode,
    }


def event_counts(events: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    kinds = ("tls", "quic", "dns", "http")
    return Counter(
        (e["event_type"], str(e[e["event_type"]].get("type", "")))
        for e in events
        if e["event_type"] in kinds
    )


def test_tap_logs_the_same_application_events_as_inline(tmp_path: Path) -> None:
    validator = schema_validator()
    everything_works = {
        "https ok": 0, "https blocked": 0, "quic ok": 0, "dns good": "NOERROR",
        "dns bad": "NOERROR", "http ok": 0, "http blocked": 0,
    }  # fmt: skip
    with app_lab(tmp_path, "atp") as app:
        box = app.box
        box.start_daemon(policy())
        assert traffic(app) == everything_works
        box.stop_daemon()
        inline = box.eve_events()
        box.eve.rename(tmp_path / "inline-eve.json")

        # The tap reads copies of lan0's frames: a drop in its policy is reported only.
        box.start_daemon(
            policy('drop tls sni "blocked.lab" alert "blocked sni"'), "--mode", "tap",
            "--iface", "lan0",
        )  # fmt: skip
        assert traffic(app) == everything_works
        # the tap reads its frames a moment after they passed: wait for the last ones
        seen = lambda: app_events(box.eve_events())  # noqa: E731
        assert wait_until(lambda: seen() >= EXPECTED, timeout=10), seen()
        box.stop_daemon()
        tap = box.eve_events()

        assert app_events(inline) >= EXPECTED, app_events(inline)
        assert app_events(tap) == app_events(inline)
        # … as many of each (a DNS query and its answer, one TLS and one QUIC record per flow)
        assert event_counts(tap) == event_counts(inline)
        alerts = [e for e in tap if e["event_type"] == "alert"]
        assert alerts and {a["alert"]["action"] for a in alerts} == {"would_drop"}
        assert all(a["alert"]["signature"] == "blocked sni" for a in alerts)
        for events in (inline, tap):
            assert not schema_errors(validator, events)
