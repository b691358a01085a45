"""The Prometheus endpoint (`ipsctl run --metrics [ADDR:]PORT`, off by default).

A custom collector in the supervisor turns the same status snapshot `ipsctl status` shows
into metric families at scrape time, so the two always agree and the packet path counts
nothing extra for it (the worker's own counters, and its sampled latency buckets, come over
the control pipe). Names are prefixed `ipsctl_`, with the unit in the name; labels take few
values (verdicts, rule names, detectors, decode reasons, queue numbers).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ips.core.decode import REASONS

DEFAULT_ADDRESS = "127.0.0.1"
MAX_RULE_SERIES = 1000  # rules exported with their hits (the first ones of the policy)
CACHE_FOR = 0.5  # seconds a snapshot serves scrapes that arrive together


def parse_listen(text: str) -> tuple[str, int]:
    """`PORT`, `ADDR:PORT` or `[V6ADDR]:PORT` -> (address, port); the address defaults to
    127.0.0.1 (metrics stay on the host unless asked). ValueError on anything else."""
    text = text.strip()
    addr, port_text = DEFAULT_ADDRESS, text
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"expected [ADDRESS]:PORT, got {text!r}")
        addr, port_text = inside, rest[1:]
    elif ":" in text:
        addr, _, port_text = text.rpartition(":")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"not an IP address: {addr!r} (in {text!r})") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"not a port (1-65535): {port_text!r} (in {text!r})")
    return addr, int(port_text)


def _counter(name: str, doc: str, value: Any) -> CounterMetricFamily | None:
    if not isinstance(value, int | float):
        return None
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily | None:
    if not isinstance(value, int | float):
        return None
    return GaugeMetricFamily(name, doc, value=value)


def families(status: dict[str, Any]) -> list[Metric]:
    """The metric families of one status snapshot (what `ipsctl status --json` returns)."""
    w: dict[str, Any] = status.get("worker") or {}
    worker_ok = bool(w.get("ok"))
    out: list[Metric | None] = [
        _gauge("ipsctl_up", "1 while the daemon answers", 1 if status.get("ok") else 0),
        _gauge("ipsctl_worker_up", "1 when the worker answered this scrape", int(worker_ok)),
        _gauge("ipsctl_uptime_seconds", "seconds since the daemon started", status.get("uptime")),
    ]
    counters = status.get("counters") or {}
    out.append(
        _counter(
            "ipsctl_worker_restarts",
            "workers replaced (hung or died)",
            counters.get("worker_restarts"),
        )
    )
    policy = status.get("policy") or {}
    out.append(_gauge("ipsctl_policy_rules", "rules of the running policy", policy.get("rules")))

    if worker_ok:
        verdicts = CounterMetricFamily(
            "ipsctl_packets", "packets the engine judged, by verdict", labels=["verdict"]
        )
        for verdict in ("accept", "drop", "reject", "rewrite"):
            verdicts.add_metric([verdict], int((w.get("verdicts") or {}).get(verdict, 0)))
        for verdict, n in sorted((w.get("verdicts") or {}).items()):
            if verdict not in ("accept", "drop", "reject", "rewrite"):
                verdicts.add_metric([str(verdict)], int(n))
        out.append(verdicts)
        out.append(
            _counter(
                "ipsctl_bytes",
                "bytes of the packets the engine judged (IP packets, as queued)",
                w.get("bytes"),
            )
        )
        out.extend(_rule_families(w, status.get("kernel_hits") or {}))
        out.extend(_alert_families(w))
        out.extend(_flow_families(w))
        malformed = CounterMetricFamily(
            "ipsctl_malformed_packets",
            "packets that could not be decoded, by reason",
            labels=["reason"],
        )
        seen = dict(w.get("malformed") or {})
        for reason in sorted(set(REASONS) | set(seen)):
            malformed.add_metric([reason], int(seen.get(reason, 0)))
        out.append(malformed)
        out.append(
            _counter(
                "ipsctl_engine_errors",
                "exceptions inside the engine (the packet got the on-error verdict)",
                w.get("engine_errors"),
            )
        )
        out.append(
            _counter(
                "ipsctl_verdict_errors",
                "packets whose verdict could not be given normally",
                w.get("verdict_errors"),
            )
        )
        out.append(_latency_family(w.get("latency")))
        out.extend(_gc_families(w.get("gc")))
        out.extend(_app_families(w.get("app")))
        out.extend(_webhook_families(w.get("webhook")))
    out.extend(_block_families(status.get("blocks") or {}))
    out.extend(_queue_families(status))
    out.extend(_unjudged_families(status.get("unjudged")))
    tap = status.get("tap")
    if isinstance(tap, dict):
        out.append(
            _counter(
                "ipsctl_tap_kernel_drops",
                "packets the kernel dropped before the tap could read them",
                tap.get("kernel_drops"),
            )
        )
    return [m for m in out if m is not None]


def _rule_families(w: dict[str, Any], kernel_hits: dict[str, int]) -> list[Metric]:
    hits = CounterMetricFamily(
        "ipsctl_rule_hits",
        "packets a rule decided (or matched, for match rules); stage "
        "kernel: in the nftables fast path, engine: in the worker",
        labels=["rule", "action", "stage"],
    )
    for r in (w.get("rules") or [])[:MAX_RULE_SERIES]:
        name = str(r.get("name") or r.get("where"))
        hits.add_metric([name, str(r.get("action")), "engine"], int(r.get("hits") or 0))
        where = str(r.get("where"))
        if where in kernel_hits:
            hits.add_metric([name, str(r.get("action")), "kernel"], int(kernel_hits[where]))
    return [hits]


def _alert_families(w: dict[str, Any]) -> list[Metric]:
    detectors = w.get("detectors") or {}
    alerts = CounterMetricFamily(
        "ipsctl_alerts",
        "alerts, by category: a detector's name, or policy for rule alerts",
        labels=["category"],
    )
    drops = CounterMetricFamily(
        "ipsctl_detector_drops", "packets a detector's `limit` dropped", labels=["detector"]
    )
    by_detectors = 0
    for name, v in sorted(detectors.items()):
        if not isinstance(v, dict):
            continue
        n = int(v.get("alerts", 0))
        by_detectors += n
        alerts.add_metric([name], n)
        drops.add_metric([name], int(v.get("drops", 0)))
    total = w.get("alerts")
    if isinstance(total, int):
        alerts.add_metric(["policy"], max(0, total - by_detectors))
    return [alerts, drops]


def _labelled(name: str, doc: str, label: str, counts: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    if isinstance(counts, dict):
        for key, n in sorted(counts.items()):
            if isinstance(n, int):
                family.add_metric([str(key)], n)
    return family


def _app_families(app: Any) -> list[Metric | None]:
    """The application layer (ips/app/inspect.py): protocols, events, malformed and
    incomplete messages, reassembly, passive DNS."""
    if not isinstance(app, dict):
        return []
    r = app.get("reassembly") or {}
    segments = {k: v for k, v in r.items() if k not in REASSEMBLY_TOTALS}
    pdns = app.get("passive_dns") or {}
    return [
        _labelled("ipsctl_app_flows", "flows by detected application protocol", "protocol",
                  app.get("protocols")),
        _labelled("ipsctl_app_events", "application-layer events, by EVE type", "type",
                  app.get("events")),
        _labelled("ipsctl_app_malformed", "malformed application messages, by reason",
                  "reason", app.get("malformed")),
        _labelled("ipsctl_app_incomplete", "directions that ended before their message was "
                  "whole, by protocol", "protocol", app.get("incomplete")),
        _labelled("ipsctl_app_reassembly_segments", "TCP segments (or parts) the reassembler "
                  "trimmed, dropped or found again, by reason", "reason", segments),
        _gauge("ipsctl_app_reassembly_memory_bytes", "bytes the reassembler holds",
               r.get("memory")),
        _counter("ipsctl_app_reassembly_released_bytes", "reassembly bytes returned when "
                 "their flow ended", r.get("released_bytes")),
        _gauge("ipsctl_passive_dns_entries", "addresses passive DNS names", pdns.get("entries")),
        _counter("ipsctl_passive_dns_learned", "addresses learned from DNS answers",
                 pdns.get("learned")),
    ]  # fmt: skip


# The reassembly section's entries that are totals or levels, not counts of segments.
REASSEMBLY_TOTALS = frozenset({"memory", "memory_cap", "released_flows", "released_bytes"})


def _flow_families(w: dict[str, Any]) -> list[Metric | None]:
    ft = w.get("flow_table") or {}
    return [
        _gauge("ipsctl_flows_active", "flows in the flow table", w.get("flows")),
        _counter("ipsctl_flows_created", "flows created", ft.get("created")),
        _counter("ipsctl_flows_expired", "flows ended by their idle timeout", ft.get("expired")),
        _counter(
            "ipsctl_flow_evictions",
            "flows evicted to make room (the table was full)",
            ft.get("evicted"),
        ),
    ]


def _latency_family(lat: Any) -> HistogramMetricFamily | None:
    if not isinstance(lat, dict) or not lat.get("bounds"):
        return None
    every = lat.get("every", 1)
    buckets, running = [], 0
    for bound, n in zip([*lat["bounds"], float("inf")], lat["counts"], strict=True):
        running += int(n)
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return HistogramMetricFamily(
        "ipsctl_engine_latency_seconds",
        f"time of engine.handle per packet, sampled 1 packet in {every}",
        buckets=buckets,
        sum_value=float(lat.get("sum", 0.0)),
    )


def _gc_families(gc: Any) -> list[Metric]:
    if not isinstance(gc, dict) or not isinstance(gc.get("collections"), dict):
        return []
    runs = CounterMetricFamily(
        "ipsctl_worker_gc_collections",
        "the workers' garbage collections, by generation; a full one (2) pauses the packet path",
        labels=["generation"],
    )
    for generation, n in sorted(gc["collections"].items()):
        runs.add_metric([str(generation)], int(n))
    return [runs]


def _block_families(b: dict[str, Any]) -> list[Metric | None]:
    added = None
    if "added_by_detectors" in b:
        added = CounterMetricFamily("ipsctl_blocks_added", "blocks added, by whom", labels=["by"])
        added.add_metric(["detector"], int(b.get("added_by_detectors") or 0))
        added.add_metric(["manual"], int(b.get("added_manually") or 0))
    return [
        _gauge("ipsctl_blocks_active", "addresses in the kernel's block sets", b.get("active")),
        _counter(
            "ipsctl_block_kernel_drops",
            "packets the kernel dropped for blocked sources",
            b.get("kernel_drops"),
        ),
        added,
        _counter("ipsctl_blocks_expired", "blocks that expired", b.get("expired")),
        _counter("ipsctl_block_kernel_errors", "block changes nft refused", b.get("kernel_errors")),
    ]


def _queue_families(status: dict[str, Any]) -> list[Metric]:
    q = status.get("queue")
    if not isinstance(q, dict):
        return []
    label = [str(q.get("queue_number"))]
    waiting = GaugeMetricFamily(
        "ipsctl_queue_waiting_packets",
        "packets in the NFQUEUE waiting for a verdict",
        labels=["queue"],
    )
    waiting.add_metric(label, int(q.get("queue_total", 0)))
    dropped = CounterMetricFamily(
        "ipsctl_queue_dropped", "packets the kernel dropped: the queue was full", labels=["queue"]
    )
    dropped.add_metric(label, int(q.get("queue_dropped", 0)))
    user = CounterMetricFamily(
        "ipsctl_queue_user_dropped",
        "packets dropped in transit: the worker's socket buffer was full",
        labels=["queue"],
    )
    user.add_metric(label, int(q.get("user_dropped", 0)))
    return [waiting, dropped, user]


def _unjudged_families(u: Any) -> list[Metric | None]:
    """Packets that passed without inspection (fail-open), and what the count is made of."""
    if not isinstance(u, dict):
        return []
    return [
        _counter(
            "ipsctl_unjudged_packets",
            "packets that passed without inspection: the "
            "queue was full and fail-open let them through",
            u.get("packets"),
        ),
        _counter(
            "ipsctl_queue_offered_packets",
            "packets the kernel's rules sent towards the queues",
            u.get("offered"),
        ),
        _counter(
            "ipsctl_queue_judged_packets", "packets the workers gave a verdict", u.get("judged")
        ),
        _counter(
            "ipsctl_unjudged_alerts", "alerts sent about packets passed unjudged", u.get("alerts")
        ),
        _gauge(
            "ipsctl_gate_open",
            "1 while packets are passing without inspection",
            int(bool(u.get("gate_open"))),
        ),
    ]


def _webhook_families(hook: Any) -> list[Metric]:
    if not isinstance(hook, dict):
        return []
    sent = CounterMetricFamily(
        "ipsctl_webhook_notifications", "alert notifications, by outcome", labels=["outcome"]
    )
    for outcome in ("sent", "failed", "dropped"):
        sent.add_metric([outcome], int(hook.get(outcome, 0)))
    retries = CounterMetricFamily(
        "ipsctl_webhook_retries", "POSTs tried again", value=int(hook.get("retries", 0))
    )
    return [sent, retries]


class StatusCollector:
    """A prometheus_client collector over a status snapshot function (cached briefly, so
    several scrapers at once ask the worker once)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def _status(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > CACHE_FOR:
                try:
                    status = self._snapshot()
                except Exception as exc:  # a scrape shows the daemon is unwell, not a 500
                    status = {"ok": False, "error": str(exc)}
                self._cached = (now, status)
            return self._cached[1]

    def collect(self) -> Iterator[Metric]:
        yield from families(self._status())


class MetricsServer:
    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(2)


def start_metrics(listen: tuple[str, int], snapshot: Callable[[], dict[str, Any]]) -> MetricsServer:
    """Serve /metrics on listen (address, port) from a thread; OSError when it cannot bind."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot))
    httpd, thread = start_http_server(listen[1], addr=listen[0], registry=registry)
    return MetricsServer(httpd, thread)
