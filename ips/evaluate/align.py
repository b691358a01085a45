"""An EVE file's clock against the capture's: `ipsctl eval --eve` reads what a daemon wrote
while a capture was replayed onto a wire (`ipsctl replay --to`), so its timestamps are the
wall clock of the replay, not the capture's.

The offset is measured, not guessed: each EVE `flow` record whose 5-tuple is a labelled
flow's gives one difference (the record's flow start minus the flow's first packet, on the
capture's clock scaled by the replay's speed); the offset is their median, so a few flows
matched wrongly do not move it. A 5-tuple that several labelled flows share is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ips.evaluate.detections import PORT_PROTOS, PROTO_NUMBERS, eve_time
from ips.mix.labels import FlowLabel


def _key(proto: int, a: str, ap: int, b: str, bp: int) -> tuple[object, ...]:
    if proto not in PORT_PROTOS:
        ap = bp = 0
    return (proto, a, ap, b, bp)


def flow_start_of(record: dict[str, Any]) -> tuple[tuple[object, ...], float] | None:
    """(5-tuple, flow start) of an EVE `flow` record; None for any other."""
    if record.get("event_type") != "flow":
        return None
    flow = record.get("flow")
    proto = PROTO_NUMBERS.get(str(record.get("proto")), 0)
    start = eve_time(flow.get("start")) if isinstance(flow, dict) else None
    src, dst = record.get("src_ip"), record.get("dest_ip")
    if start is None or not proto or not isinstance(src, str) or not isinstance(dst, str):
        return None
    sport, dport = record.get("src_port", 0), record.get("dest_port", 0)
    if not isinstance(sport, int) or not isinstance(dport, int):
        return None
    return _key(proto, src, sport, dst, dport), start


def clock_offset(
    flow_starts: Iterable[tuple[tuple[object, ...], float]],
    flows: Sequence[FlowLabel],
    *,
    speed: float = 1.0,
) -> tuple[float, int] | None:
    """(offset, flows matched): EVE time = origin + (capture time - origin) / speed + offset,
    origin the first labelled flow's start. None when no EVE flow is a labelled one."""
    if not flows:
        return None
    origin = min(f.start for f in flows)
    by_key: dict[tuple[object, ...], list[float]] = {}
    for f in flows:
        by_key.setdefault(_key(f.proto, f.src, f.sport, f.dst, f.dport), []).append(f.start)
    diffs: list[float] = []
    for key, start in flow_starts:
        starts = by_key.get(key)
        if starts is None or len(starts) != 1:
            continue  # not labelled, or a reused 5-tuple: which flow it was is a guess
        diffs.append(start - (origin + (starts[0] - origin) / speed))
    if not diffs:
        return None
    diffs.sort()
    mid = len(diffs) // 2
    offset = diffs[mid] if len(diffs) % 2 else (diffs[mid - 1] + diffs[mid]) / 2
    return offset, len(diffs)
