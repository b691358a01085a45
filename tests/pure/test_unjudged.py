"""Issue 19, item 2 (a): packets that pass unjudged are counted and reported (the arithmetic,
the alert's rate limit, status text, metrics, the EVE records)."""

from __future__ import annotations

from ips.daemon.unjudged import (
    ALERT_EVERY,
    UNJUDGED_SID,
    QueueReading,
    UnjudgedLedger,
    unjudged_count,
)
from ips.sinks.eve import unjudged_alert_record
from ips.sinks.prometheus import families
from ips.views.status import format_status


def test_unjudged_is_offered_minus_judged_waiting_and_dropped() -> None:
    # the lab's flood: 3,039,975 offered, 268,665 judged, nothing waiting or dropped
    assert unjudged_count(3_039_975, 268_665, 0, 0) == 2_771_310
    assert unjudged_count(100, 60, 30, 10) == 0  # fail-closed: the rest was dropped
    assert unjudged_count(100, 120, 0, 0) == 0  # a reading's skew never makes it negative


def test_ledger_keeps_the_highest_count_and_carries_rebound_queue_counters() -> None:
    ledger = UnjudgedLedger()
    assert ledger.update(QueueReading(1000, 1000), 0.0) == 0
    assert ledger.update(QueueReading(5000, 2000, waiting=500), 1.0) == 2500
    # a later reading skewed low (judged read after more packets were offered) does not
    # lower what was already counted
    assert ledger.update(QueueReading(5000, 2600, waiting=0), 2.0) == 2500
    # fail-closed drops are not passed packets; /proc's counters restart with a new worker
    ledger = UnjudgedLedger()
    ledger.update(QueueReading(100, 50, queue_dropped=50), 0.0)
    assert ledger.dropped == 50
    assert ledger.update(QueueReading(200, 140, queue_dropped=10), 1.0) == 0
    assert ledger.dropped == 60


def test_alert_at_once_when_the_gate_opens_then_rate_limited() -> None:
    ledger = UnjudgedLedger()
    ledger.update(QueueReading(1000, 1000), 0.0)
    assert ledger.due_alert(0.0) is None  # nothing passed
    ledger.update(QueueReading(50_000, 10_000), 1.0)
    first = ledger.due_alert(1.0)
    assert first is not None and first.first and first.passed == 40_000
    assert first.signature == (
        "unjudged packets: the queue was full; 40000 passed without inspection"
    )
    assert first.signature_id == UNJUDGED_SID
    # the flood goes on: no second alert within ALERT_EVERY
    for t in range(2, int(ALERT_EVERY)):
        ledger.update(QueueReading(50_000 + t * 1000, 10_000), float(t))
        assert ledger.due_alert(float(t)) is None
    ledger.update(QueueReading(200_000, 10_000), ALERT_EVERY + 1.5)
    again = ledger.due_alert(ALERT_EVERY + 1.5)
    assert again is not None and not again.first and again.passed == 150_000
    assert ledger.alerts == 2 and ledger.as_dict()["gate_open"] is True
    # quiet for ALERT_EVERY: the episode ends; a new flood alerts at once
    t = 3 * ALERT_EVERY
    ledger.update(QueueReading(200_000, 10_000), t)
    assert ledger.due_alert(t) is None and ledger.as_dict()["gate_open"] is False
    ledger.update(QueueReading(300_000, 10_000), t + 1)
    third = ledger.due_alert(t + 1)
    assert third is not None and third.first and third.passed == 100_000


def test_small_growth_within_the_slack_is_not_an_alert() -> None:
    ledger = UnjudgedLedger()
    ledger.update(QueueReading(1000, 1000 - ledger.slack), 0.0)
    assert ledger.due_alert(0.0) is None


def test_fail_open_alert_off_sends_nothing_and_keeps_nothing_back() -> None:
    ledger = UnjudgedLedger()
    ledger.update(QueueReading(50_000, 10_000), 1.0)
    assert ledger.due_alert(1.0, enabled=False) is None
    assert ledger.alerts == 0
    assert ledger.due_alert(2.0, enabled=True) is None  # what passed was not kept back


def _status(unjudged: dict[str, object] | None) -> dict[str, object]:
    return {
        "ok": True,
        "pid": 1,
        "uptime": 5.0,
        "mode": "inline",
        "policy": {
            "file": "p.rules",
            "digest": "ab",
            "age": 1.0,
            "rules": 1,
            "kernel_rules": 0,
            "confirm_deadline": None,
        },
        "diversion": {"backend": "iptables", "queue": 0, "hooks": ["forward"], "fail_open": True},
        "worker": {"pid": 2},
        "counters": {
            "worker_restarts": 0,
            "worker_hangs": 0,
            "worker_deaths": 0,
            "applies": 0,
            "applies_refused": 0,
            "rollbacks": 0,
        },
        "unjudged": unjudged,
    }


def test_status_text_and_metrics_show_the_unjudged_packets() -> None:
    u = UnjudgedLedger()
    u.update(QueueReading(3_039_975, 268_665), 1.0)
    u.due_alert(1.0)
    snapshot = {**u.as_dict(), "fail_open": True}
    text = format_status(_status(snapshot))
    assert "unjudged 2771310 packets passed without inspection" in text
    assert "the gate is open" in text
    assert "offered to the queue 3039975, judged 268665" in text
    metrics = {m.name: m for m in families(_status(snapshot))}
    assert metrics["ipsctl_unjudged_packets"].samples[0].value == 2_771_310
    assert metrics["ipsctl_queue_offered_packets"].samples[0].value == 3_039_975
    assert metrics["ipsctl_queue_judged_packets"].samples[0].value == 268_665
    assert metrics["ipsctl_gate_open"].samples[0].value == 1
    # tap and divert: no such line, no such metric
    assert "unjudged" not in format_status(_status(None))
    assert "ipsctl_unjudged_packets" not in {m.name for m in families(_status(None))}


def test_eve_alert_record() -> None:
    u = UnjudgedLedger()
    u.update(QueueReading(5000, 1000), 1.0)
    alert = u.due_alert(1.0)
    assert alert is not None
    record = unjudged_alert_record(alert, u.as_dict(), 1_700_000_000.0)
    assert record["event_type"] == "alert"
    assert record["alert"]["signature_id"] == UNJUDGED_SID  # type: ignore[index]
    assert record["alert"]["signature"] == (  # type: ignore[index]
        "unjudged packets: the queue was full; 4000 passed without inspection"
    )
    assert record["ipsctl"]["unjudged"]["packets"] == 4000  # type: ignore[index]
