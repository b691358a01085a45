"""Offline mode: run a policy over capture files, with the capture's own timestamps as `now`.

This is an adapter (it reads files); the engine it drives is the same as inline.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from ips import fast
from ips.core.events import Block, Effect, FlowEnd
from ips.engine import Engine, Meta
from ips.geo.enrich import Enricher, open_enricher
from ips.io.pcap import PCAP_HEADER_LEN, CaptureReader, PcapLayout, read_capture
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


class _Run:
    """One replay's state across its captures: the engine, where effects go, the tick clock
    (every TICK_EVERY seconds of capture time), the latest time seen, the flows ended."""

    def __init__(
        self,
        engine: Engine,
        eve: _Fanout | None,
        note_blocks: Callable[[Iterable[Effect]], None],
    ) -> None:
        self.engine = engine
        self.eve = eve
        self.note_blocks = note_blocks
        self.next_tick = math.nan  # NaN: the first record sets it
        self.last_ts = 0.0
        self.flows_ended = 0
        self.metas: dict[int, Meta] = {}

    def meta(self, linktype: int) -> Meta:
        meta = self.metas.get(linktype)
        if meta is None:
            meta = self.metas[linktype] = Meta(linktype=linktype)
        return meta

    def effects(self, effects: Iterable[Effect]) -> None:
        if self.eve is not None:
            self.eve.events(effects)
        self.note_blocks(effects)

    def after(self, ts: float) -> None:
        """The tick clock after a record at time `ts` was judged."""
        if self.next_tick != self.next_tick:  # NaN
            self.next_tick = ts + TICK_EVERY
        elif ts >= self.next_tick:
            ended = self.engine.tick(ts)
            if ended:  # (most ticks end nothing: no count, no blocks to note, nothing to write)
                self.ticked(ended)
            self.next_tick = ts + TICK_EVERY

    def ticked(self, ended: list[Effect]) -> None:
        """What a tick gave (not empty): flows ended counted, blocks noted, events written."""
        self.flows_ended += sum(1 for ev in ended if ev.__class__ is FlowEnd)
        self.note_blocks(ended)
        if self.eve is not None:
            self.eve.events(ended)

    def records(self, reader: CaptureReader, bar: _Bar) -> int:
        """The records as ips/io/pcap.py reads them, each through Engine.handle."""
        count = 0
        handle = self.engine.handle
        for rec in reader:
            count += 1
            ts = rec.timestamp
            if ts > self.last_ts:
                self.last_ts = ts
            decision = handle(rec.data, self.meta(rec.linktype), ts)
            if decision.effects:
                self.effects(decision.effects)
            self.after(ts)
            if count & 0xFFF == 0:
                bar.update(reader._offset, count)
        bar.update(reader._offset, count)
        return count

    def mapped(self, reader: CaptureReader, layout: PcapLayout, bar: _Bar) -> int:
        """A classic little-endian pcap file mapped into memory, its records parsed and the
        fast packets judged in compiled code (ips/fast/ run_pcap); the same decisions, in the
        same order, as `records`. The records the compiled loop leaves (empty, implausibly
        long, cut short) are read here by the reader's own rules."""
        assert reader._f is not None
        meta = self.meta(layout.linktype)
        engine = self.engine
        handle = engine.handle
        count = 0
        # What each call of the compiled loop is given, and what its answers are compared
        # to, named once: it returns at every tick of capture time (a second), thousands of
        # times in a long capture.
        run_pcap = fast.compiled_run_pcap()
        fast_path, slow, slow_packet = engine._fast_path, engine.handle_python, engine.handle_packet
        linktype, divisor, max_record = layout.linktype, layout.divisor, layout.max_record
        stop_tick, stop_effects, stop_ticked = fast.STOP_TICK, fast.STOP_EFFECTS, fast.STOP_TICKED
        after = self.after
        # The compiled loop ticks itself (the engine's tick, a second of capture time
        # apart, as `after` would) and hands back only the ticks that gave events.
        tick: Callable[[float], list[Effect]] | None = engine.tick if TICK_EVERY == 1.0 else None
        if getattr(tick, "__func__", None) is Engine.tick and engine._ticker is not None:
            tick = engine._ticker  # what Engine.tick calls (the compiled tick), without its frame
        with _map_capture(reader._f.fileno()) as mem:
            size = len(mem)
            pos = PCAP_HEADER_LEN
            while True:
                reason, pos, judged, self.last_ts, self.next_tick, ts, decision = run_pcap(
                    fast_path, slow, slow_packet, mem, pos, linktype, divisor, max_record,
                    meta, self.next_tick, self.last_ts, 65536, tick,
                )  # fmt: skip
                if judged:
                    count += judged
                    reader._empty_run = 0
                    reader.records += judged
                if reason == stop_ticked:
                    self.ticked(decision)
                elif reason == stop_tick:
                    after(ts)
                elif reason == stop_effects:
                    self.effects(decision.effects)
                    after(ts)
                elif reason == fast.STOP_RECORD:
                    sec, frac, caplen, _orig = _LE_RECORD.unpack_from(mem, pos)
                    if caplen > layout.max_record:
                        raise reader._error(
                            pos, f"record length {caplen} is implausible (corrupt file?)"
                        )
                    reader._count_packet(pos, caplen)
                    if pos + 16 + caplen > size:
                        reader.truncated = size - pos
                        break
                    # an empty record: the engine counts it malformed, as from the reader
                    ts = sec + frac / layout.divisor
                    count += 1
                    if ts > self.last_ts:
                        self.last_ts = ts
                    decision = handle(b"", meta, ts)
                    if decision.effects:
                        self.effects(decision.effects)
                    self.after(ts)
                    pos += 16
                elif reason == fast.STOP_END:
                    reader.truncated = size - pos
                    break
                bar.update(pos, count)
        bar.update(size, count)
        return count


class _Bar:
    """The progress of one capture on a TTY: bytes read and packets per second (rich)."""

    def __init__(self, path: str, size: int, show: bool) -> None:
        self.progress: Progress | None = None
        if not show:
            return
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[packets]:>12,} packets"),
            TextColumn("{task.fields[rate]:>10,.0f} packets/s"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self.task = self.progress.add_task(os.path.basename(path), total=size, packets=0, rate=0)
        self.start = time.monotonic()

    def update(self, done: int, packets: int) -> None:
        if self.progress is None:
            return
        elapsed = max(time.monotonic() - self.start, 1e-6)
        self.progress.update(self.task, completed=done, packets=packets, rate=packets / elapsed)

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _progress(path: str, size: int, show: bool) -> _Bar:
    return _Bar(path, size, show)


_LE_RECORD = struct.Struct("<IIII")


def _map_capture(fileno: int) -> mmap.mmap:
    """The whole file mapped read-only, its pages mapped at once where the system can
    (MAP_POPULATE, Linux): the loop then reads it without a page fault every few pages."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if not populate:
        return mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    return mmap.mmap(fileno, 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ)


def _plain_handle(engine: Engine) -> bool:
    """Whether `engine.handle` is the Engine's own: the mapped loop calls the engine's parts
    directly, so an engine whose `handle` is overridden (a subclass: `eval --drops` notes
    every decision there) or wrapped (a meter) is fed through its `handle`, record by record."""
    return type(engine).handle is Engine.handle and "handle" not in vars(engine)


def replay_captures(
    policy: Policy | CompiledPolicy,
    paths: Iterable[str],
    *,
    eve_stream: IO[str] | None = None,
    progress: bool | None = None,
    engine: Engine | None = None,
    enrich: Enricher | None = None,
    sinks: Iterable[Sink] = (),
    mapped: bool | None = None,
) -> ReplayResult:
    """Replay each capture through one engine (flows carry across files, as on a wire).
    Every effect goes to the EVE stream, if any, and to each of `sinks` (the store). The EVE
    lines carry who is on the other end as the daemon's do (ips/geo/enrich.py): ENRICH, else
    the geo data the policy names (missing data: the fields are absent, and `geo_problem` of
    the result says why). No reverse DNS: a capture's addresses are not asked about.

    A classic little-endian pcap file is mapped into memory and its records judged by the
    compiled loop (ips/fast/ run_pcap) when the engine has the compiled path, unless
    `mapped` is False; other files (pcapng, big-endian pcap), or an engine without it, go
    through ips/io/pcap.py's reader. Both give the same result."""
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

    run = _Run(engine, eve, note_blocks)
    for path in paths:
        size = os.path.getsize(path)
        show = (
            progress
            if progress is not None
            else (size >= PROGRESS_MIN_BYTES and sys.stderr.isatty())
        )
        reader = read_capture(path)
        with reader, _progress(path, size, show) as bar:
            layout = reader.layout
            if (
                mapped is not False
                and layout is not None
                and layout.endian == "<"
                and engine._fast_path is not None
                and _plain_handle(engine)
            ):
                count = run.mapped(reader, layout, bar)
            else:
                count = run.records(reader, bar)
        result.captures.append(
            {"path": path, "packets": count, "format": reader.format, "truncated": reader.truncated}
        )
    last_ts = run.last_ts
    flows_ended = run.flows_ended
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
