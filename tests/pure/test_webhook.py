"""Alert webhooks: `ipsctl run --webhook URL` POSTs each alert as JSON, off the packet path,
retrying with backoff. The receiver is a real HTTP server in the lab's server namespace
(10.10.2.10); the daemon on gw posts to it. Only lab addresses are used.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ips.sinks.webhook import Webhook, check_url, payload, summary

ROOT = Path(__file__).resolve().parents[2]  # the repository
POLICY = """\
set default accept
drop proto tcp to port 23 alert "telnet attempt" sid 2000010 severity high
"""


def test_url_must_be_http() -> None:
    assert check_url("https://hooks.example/x") == "https://hooks.example/x"
    for bad in ("ftp://x/y", "http://", "hooks.example/x", ""):
        with pytest.raises(ValueError):
            check_url(bad)


def test_run_refuses_a_bad_webhook_url(tmp_path: Path) -> None:
    policy = tmp_path / "p.rules"
    policy.write_text(POLICY)
    out = subprocess.run(
        [sys.executable, "-m", "ips.cli", "run", "--policy", str(policy), "--webhook", "x.y/z"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert out.returncode == 2 and "http:// or https://" in out.stderr


def test_body_suits_slack_discord_and_telegram() -> None:
    record = {
        "src_ip": "10.0.0.1",
        "src_port": 5,
        "dest_ip": "10.0.0.2",
        "dest_port": 23,
        "proto": "TCP",
        "alert": {
            "signature": "telnet attempt",
            "category": "policy",
            "action": "blocked",
            "severity": 1,
            "signature_id": 7,
        },
    }
    body = json.loads(payload(record))
    assert body["text"] == body["content"] == summary(record)  # Slack/Telegram, Discord
    assert "telnet attempt" in body["text"] and "10.0.0.1:5 -> 10.0.0.2:23" in body["text"]
    assert body["event"] == record


def test_a_full_queue_drops_and_counts_never_waits() -> None:
    hook = Webhook("http://10.10.2.10:1/hook", queue_size=2)  # no sender thread: none drains
    assert [hook.submit({"n": i}) for i in range(5)] == [True, True, False, False, False]
    assert (hook.queued, hook.dropped) == (2, 3)
    assert hook.stats()["url"] == "http://10.10.2.10:1/…"  # the path (a token) is not shown
