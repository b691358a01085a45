"""Offline mode: run a policy over capture files, with the capture's own timestamps as `now`.

This is an adapter (it reads files); the engine it drives is the same as inline.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

import click

from ips.core.events import Block, Effect, FlowEnd
from ips.engine import Engine, Meta
from ips.geo.enrich import Enricher, open_enricher
from ips.io.pcap import read_capture
from ips.policy.compile import CompiledPolicy
from ips.policy.model import Policy
from ips.sinks.base import Sink
from ips.sinks.eve import EveWriter

PROGRESS_MIN_BYTES = 8 * 1024 * 1024
TICK_EVERY = 1.0  # seconds of capture time between flow-expiry passes
BLOCKS_SHOWN = 20  # blocks listed in the text table (all of them are in --json)


@dataclass
class ReplayResult:
    policy_digest: str
    captures: list[dict[str, object]] = field(default_factory=list)
    packets: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    not_ip: int = 0
    errors: int = 0
    alerts: int = 0
    flows: int = 0
    rule_hits: list[dict[str, object]] = field(default_factory=list)
    default_hits: int = 0
    detector_alerts: Counter[str] = field(default_factory=Counter)
    detector_drops: Counter[str] = field(default_factory=Counter)  # `limit` drops
    blocks: list[dict[str, object]] = field(default_factory=list)  # in order
    unblocks: int = 0
    geo_problem: str | None = None  # the EVE lines' geo fields are absent: why

    def as_dict(self) -> dict[str, object]:
        return {
            "policy_digest": self.policy_digest,
            "captures": self.captures,
            "packets": self.packets,
            "verdicts": dict(self.verdicts),
            "malformed": dict(self.malformed),
            "not_ip": self.not_ip,
            "engine_errors": self.errors,
            "alerts": self.alerts,
            "flows": self.flows,
            "rules": self.rule_hits,
            "default_hits": self.default_hits,
            "detector_alerts": dict(self.detector_alerts),
            "detector_drops": dict(self.detector_drops),
            "blocks": self.blocks,
            "unblocks": self.unblocks,
        }

    def table(self) -> str:
        lines = []
        for cap in self.captures:
            extra = f", {cap['truncated']} bytes truncated" if cap.get("truncated") else ""
            lines.append(
                f"capture {cap['path']}: {cap['packets']} packets ({cap['format']}{extra})"
            )
        lines.append("")
        width = max([len(str(r["where"])) for r in self.rule_hits] + [8])
        lines.append(f"{'rule':<{width}}  {'action':<8} {'hits':>8}  text")
        for r in self.rule_hits:
            text = str(r["text"])
            if len(text) > 60:
                text = text[:59] + "…"
            lines.append(f"{r['where']!s:<{width}}  {r['action']!s:<8} {r['hits']:>8}  {text}")
        lines.append(f"{'(default)':<{width}}  {'':<8} {self.default_hits:>8}")
        lines.append("")
        verdicts = ", ".join(f"{v} {n}" for v, n in sorted(self.verdicts.items()))
        lines.append(f"packets   {self.packets}  ({verdicts or 'none'})")
        lines.append(f"flows     {self.flows}")
        lines.append(f"alerts    {self.alerts}")
        if self.detector_alerts or self.detector_drops:
            parts = [f"{n} {c}" for n, c in sorted(self.detector_alerts.items())]
            parts += [f"{n} {c} dropped" for n, c in sorted(self.detector_drops.items())]
            lines.append(f"detectors {', '.join(parts)}")
        lines.append(f"blocks    {len(self.blocks)}")
        for b in self.blocks[:BLOCKS_SHOWN]:
            lines.append(
                f"  {b['addr']}  {b['detector']}  {b['ttl']:g}s  offense {b['offense']}  "
                f"{b['reason']}"
            )
        if len(self.blocks) > BLOCKS_SHOWN:
            lines.append(f"  … {len(self.blocks) - BLOCKS_SHOWN} more")
        mal = sum(self.malformed.values())
        detail = ", ".join(f"{r} {n}" for r, n in self.malformed.most_common())
        lines.append(f"malformed {mal}" + (f"  ({detail})" if detail else ""))
        lines.append(f"not IP    {self.not_ip}")
        if self.errors:
            lines.append(f"ENGINE ERRORS {self.errors}")
        return "\n".join(lines)


class _Fanout:
    """The replay's sinks as one."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def events(self, events: Iterable[Effect]) -> None:
        for sink in self.sinks:
            sink.events(events)


def replay_captures(
    policy: Policy | CompiledPolicy,
    paths: Iterable[str],
    *,
    eve_stream: IO[str] | None = None,
    progress: bool | None = None,
    engine: Engine | None = None,
    enrich: Enricher | None = None,
    sinks: Iterable[Sink] = (),
) -> ReplayResult:
    """Replay each capture through one engine (flows carry across files, as on a wire).
    Every effect goes to the EVE stream, if any, and to each of `sinks` (the store). The EVE
    lines carry who is on the other end as the daemon's do (ips/geo/enrich.py): ENRICH, else
    the geo data the policy names (missing data: the fields are absent, and `geo_problem` of
    the result says why). No reverse DNS: a capture's addresses are not asked about."""
    engine = engine or Engine(policy)
    outputs: list[Sink] = list(sinks)
    opened: Enricher | None = None
    if eve_stream is not None:
        if enrich is None:
            source = engine.policy.policy
            enrich = opened = open_enricher(source.geo_dir or None, source.geo_sites)
        outputs.insert(0, EveWriter(eve_stream, enrich=enrich))
    eve = _Fanout(outputs) if outputs else None
    result = ReplayResult(engine.policy.digest)
    result.geo_problem = enrich.problem if enrich is not None else None
    flows_ended = 0

    def note_blocks(events: Iterable[Effect]) -> None:
        for ev in events:
            if ev.__class__ is Block:
                result.blocks.append(
                    {
                        "addr": ev.addr_text,
                        "detector": ev.detector,
                        "offense": ev.offense,
                        "ttl": ev.ttl,
                        "time": ev.time,
                        "reason": ev.reason,
                    }
                )

    last_ts = 0.0
    for path in paths:
        size = os.path.getsize(path)
        show = (
            progress
            if progress is not None
            else (size >= PROGRESS_MIN_BYTES and sys.stderr.isatty())
        )
        reader = read_capture(path)
        count = 0
        next_tick = None
        metas: dict[int, Meta] = {}
        with (
            reader,
            click.progressbar(
                length=size,
                label=os.path.basename(path),
                file=sys.stderr if show else None,
                hidden=not show,
            ) as bar,
        ):
            for rec in reader:
                count += 1
                ts = rec.timestamp
                last_ts = max(last_ts, ts)
                meta = metas.get(rec.linktype)
                if meta is None:
                    meta = metas[rec.linktype] = Meta(linktype=rec.linktype)
                decision = engine.handle(rec.data, meta, ts)
                if decision.effects:
                    if eve is not None:
                        eve.events(decision.effects)
                    note_blocks(decision.effects)
                if next_tick is None:
                    next_tick = ts + TICK_EVERY
                elif ts >= next_tick:
                    ended = engine.tick(ts)
                    flows_ended += sum(1 for ev in ended if ev.__class__ is FlowEnd)
                    note_blocks(ended)
                    if eve is not None:
                        eve.events(ended)
                    next_tick = ts + TICK_EVERY
                if show:
                    bar.update(len(rec.data) + 16)
        result.captures.append(
            {"path": path, "packets": count, "format": reader.format, "truncated": reader.truncated}
        )
    ended = engine.drain(last_ts)
    flows_ended += len(ended)
    if eve is not None:
        eve.events(ended)
    if opened is not None:
        opened.close()

    stats = engine.stats
    result.packets = stats.packets
    result.verdicts = Counter(stats.verdicts)
    result.malformed = Counter(stats.malformed)
    result.not_ip = stats.not_ip
    result.errors = stats.errors
    result.alerts = stats.alerts
    result.flows = flows_ended
    result.detector_alerts = Counter(stats.detector_alerts)
    result.detector_drops = Counter(stats.detector_drops)
    result.unblocks = stats.unblocks
    hit_total = 0
    for rule in engine.policy.rules:
        spec = rule.spec
        hit_total += rule.hits if rule.terminal else 0
        result.rule_hits.append(
            {
                "where": f"{spec.span.file}:{spec.span.line}",
                "label": spec.label,
                "action": spec.action,
                "hits": rule.hits,
                "text": spec.text,
            }
        )
    decided = stats.packets - stats.not_ip - sum(stats.malformed.values()) - stats.errors
    decided -= sum(stats.detector_drops.values())  # dropped by a detector, before the rules
    result.default_hits = max(0, decided - hit_total)
    return result
