"""The daemon's numbers: the worker's answer to `stats` and its EVE `stats` event, the
supervisor's own counters, and several workers' answers merged into one (`--queues N`)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ips.daemon.config import DaemonConfig
from ips.engine import Engine
from ips.io.adapter import PacketAdapter
from ips.kernel.probe import read_queue_stats
from ips.translate.nft import BLOCK_TABLE, RuleCounter


class WorkerLink(Protocol):
    """The supervisor's side of a worker, as the merging here needs it."""

    @property
    def pid(self) -> int: ...

    def request(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]: ...


def eve_stats(engine: Engine, adapter: PacketAdapter, cfg: DaemonConfig) -> dict[str, Any]:
    """The body of a `stats` event: Suricata's sections where ours mean the same thing."""
    s = engine.stats
    v = s.verdicts
    out: dict[str, Any] = {
        "decoder": {"pkts": s.packets, "invalid": sum(s.malformed.values()), "not_ip": s.not_ip},
        "flow": _flow_stats(engine),
        "detect": {"alert": s.alerts},
    }
    if cfg.mode == "tap":
        tap: Any = adapter.stats_sections()["tap"]
        out["capture"] = {k: tap[k] for k in ("kernel_packets", "kernel_drops")}
        out["ipsctl"] = {"mode": "tap", **tap["would"]}
    else:
        q = read_queue_stats().get(cfg.queue)
        out["ips"] = {
            "accepted": v.get("accept", 0),
            "blocked": v.get("drop", 0),
            "rejected": v.get("reject", 0),
            "replaced": v.get("rewrite", 0),
        }
        out["nfq"] = dataclasses.asdict(q) if q else {}
        out["ipsctl"] = {"mode": "inline", "engine_errors": s.errors}
    return out


def _flow_stats(engine: Engine) -> dict[str, int]:
    f = engine.flows.stats
    return {
        "active": f.active,
        "total": f.created,
        "timeout": f.expired,
        "evicted": f.evicted,
        "reused": f.reused,
    }


def engine_blocks(engine: Engine) -> int | None:
    """Members of the engine's block table (its mirror of the kernel set)."""
    table = getattr(engine, "tables", {}).get(BLOCK_TABLE)
    return len(table.members) if table is not None else None


def detector_stats(engine: Any) -> dict[str, Any]:
    """Per-detector counters, read defensively from whatever the engine exposes: a mapping
    (engine.detector_stats / engine.stats.detectors, maybe a method), or a list of detector
    objects with a name and counters."""
    stats = getattr(engine, "stats", None)
    alerts = getattr(stats, "detector_alerts", None)
    drops = getattr(stats, "detector_drops", None)
    if isinstance(alerts, dict) or isinstance(drops, dict):  # the engine's EngineStats
        names = set(alerts or {}) | set(drops or {})
        names |= set(getattr(getattr(engine.policy, "policy", None), "detectors", None) or ())
        return {
            name: {
                "alerts": int((alerts or {}).get(name, 0)),
                "drops": int((drops or {}).get(name, 0)),
            }
            for name in sorted(names)
        }
    places = (
        (engine, "detector_stats"),
        (engine.stats, "detectors"),
        (engine, "detector_counts"),
        (engine.stats, "detector_alerts"),
    )
    for holder, attr in places:
        value = getattr(holder, attr, None)
        if callable(value):
            try:
                value = value()
            except Exception:
                continue
        if isinstance(value, dict):
            return {str(k): _plain(v) for k, v in value.items()}
    out: dict[str, Any] = {}
    for det in getattr(engine, "detectors", None) or []:
        name = getattr(det, "name", type(det).__name__)
        counters = {
            k: v
            for k in ("alerts", "blocks", "fired", "limited", "observed")
            if isinstance(v := getattr(det, k, None), int)
        }
        out[str(name)] = counters
    return out


def _plain(value: Any) -> Any:
    """Something json can write (counters may be Counters, dataclasses, objects)."""
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if hasattr(value, "__slots__") or hasattr(value, "__dict__"):
        names = getattr(value, "__slots__", None) or list(vars(value))
        return {n: _plain(getattr(value, n, None)) for n in names if not n.startswith("_")}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def rule_hits(rule: Any) -> dict[str, Any]:
    spec = rule.spec
    where = f"{spec.span.file}:{spec.span.line}"
    return {
        "where": where,
        "name": spec.name,
        "action": spec.action,
        "hits": rule.hits,
        "text": spec.text,
    }


@dataclass
class Counters:
    """The supervisor's own counters (status `counters`)."""

    started: float = field(default_factory=time.time)
    worker_restarts: int = 0
    worker_hangs: int = 0
    worker_deaths: int = 0
    applies: int = 0
    applies_refused: int = 0
    rollbacks: int = 0
    blocks_added: int = 0  # by `ipsctl blocks add`
    blocks_removed: int = 0  # by `ipsctl blocks del/flush`
    blocks_restored: int = 0  # put back at start from the state file of a clean stop
    blocks_saved: int = 0  # written to the state file at a clean stop
    block_kernel_errors: int = 0  # nft refused a manual block operation
    table_refreshes: int = 0  # reputation lists read again and swapped in (`refresh`)
    table_refreshes_refused: int = 0  # ... and refused: the old set kept


def merge_stats(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' answers as one: numbers summed, dicts merged key by key, lists of
    dicts (per-rule hits: the same rules in the same order) merged item by item; anything
    else (text, digests, flags) from the first answer that has it."""
    good = [r for r in replies if r.get("ok", True)] or replies[:1]
    return _merge([r for r in good])


def _merge(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, bool) or not isinstance(first, int | float | dict | list):
        return first
    if isinstance(first, int | float):
        return sum(v for v in present if isinstance(v, int | float) and not isinstance(v, bool))
    if isinstance(first, dict):
        keys = dict.fromkeys(k for v in present if isinstance(v, dict) for k in v)
        return {k: _merge([v.get(k) for v in present if isinstance(v, dict)]) for k in keys}
    lists = [v for v in present if isinstance(v, list)]
    if all(len(v) == len(first) for v in lists) and all(isinstance(x, dict) for x in first):
        return [_merge(list(items)) for items in zip(*lists, strict=True)]
    return first


def merge_flows(replies: list[dict[str, Any]], top: int, sort: str) -> dict[str, Any]:
    """`flows` answers of several workers: rows (or groups, summed by key) re-ranked."""
    good = [r for r in replies if r.get("ok")]
    if not good:
        return replies[0] if replies else {"ok": False, "error": "no worker"}
    total = sum(int(r.get("total", 0)) for r in good)
    if "groups" in good[0]:
        sums: dict[str, dict[str, Any]] = {}
        for r in good:
            for g in r["groups"]:
                s = sums.setdefault(
                    g["key"], {"key": g["key"], "flows": 0, "packets": 0, "bytes": 0}
                )
                for k in ("flows", "packets", "bytes"):
                    s[k] += g[k]
                if g.get("name") and not s.get("name"):  # group dst: the address's name
                    s["name"] = g["name"]
                elif "name" in g:
                    s.setdefault("name", None)
                for k in ("geo", "service", "rdns"):  # the same address's or port's
                    if k in g and s.get(k) is None:
                        s[k] = g[k]
        field_ = {"bytes": "bytes", "packets": "packets"}.get(sort, "flows")
        groups = sorted(sums.values(), key=lambda g: g[field_], reverse=True)[:top]
        return {"ok": True, "total": total, "groups": groups}
    rows = [row for r in good for row in r["flows"]]
    rows.sort(key=lambda row: row.get(sort, 0), reverse=True)
    return {"ok": True, "total": total, "flows": rows[:top]}


class AlertFeed:
    """The recent alerts of every worker in one numbered feed (`ipsctl top` reads it with
    `since`): each poll takes what each worker added since the last one (a cursor per
    worker; a replaced worker numbers from 1 again) and numbers it in the feed's order."""

    KEEP = 256

    def __init__(self) -> None:
        self.seq = 0
        self.recent: list[dict[str, Any]] = []
        self.cursors: dict[int, tuple[int, int]] = {}  # index -> (worker pid, its last seq)
        self.lock = threading.Lock()

    def collect(self, workers: Sequence[WorkerLink], since: int, limit: int) -> dict[str, Any]:
        with self.lock:
            for index, worker in enumerate(list(workers)):
                pid, last = self.cursors.get(index, (worker.pid, 0))
                if pid != worker.pid:
                    last = 0
                try:
                    reply = worker.request(
                        {"op": "alerts", "since": last, "limit": self.KEEP}, timeout=2.0
                    )
                except (TimeoutError, OSError, EOFError):
                    continue
                for alert in reply.get("alerts") or []:
                    last = max(last, int(alert.get("seq") or 0))
                    self.seq += 1
                    self.recent.append({**alert, "seq": self.seq})
                self.cursors[index] = (worker.pid, max(last, int(reply.get("seq") or 0)))
            del self.recent[: -self.KEEP]
            limit = max(1, min(limit, self.KEEP))
            fresh = [a for a in self.recent if a["seq"] > since][-limit:]
            return {"ok": True, "seq": self.seq, "alerts": fresh}


def counter_packets(counters: dict[str, RuleCounter], comment: str) -> int:
    c = counters.get(comment) if isinstance(counters, dict) else None
    return int(c.packets) if c is not None else 0
