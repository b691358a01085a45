"""`ipsctl mix` end to end: index the inputs, plan, then write the mixed capture and its labels.

Two passes, so inputs larger than memory work:

1. each input is read once (ips/mix/index.py): flows found, a 32-byte record per packet on
   disk, one small summary per flow in memory;
2. the plan (ips/mix/plan.py, pure, seeded) places flows; each input's index file is read in
   order and, for every placement of a packet's flow, a 42-byte sort record (new time,
   placement, where to read the packet) is made. The records are sorted in runs of at most
   `run_records` (in memory, as bytes whose order is the output order) and merged from disk;
   each packet is then read by offset from its input, its addresses rewritten, and written.

Memory grows with flows, not packets: per flow of the inputs its summary and placements, per
flow of the output a small record for its labels line, per host of each input round its new
address, plus one sort run (`run_records` × ~80 bytes). About 1 KB per flow at the peak
(bench/mix.py). Nothing per packet: the packet-to-flow map of the labels is written as
packets go, and the labels' flow lines are made one at a time.

Output order is by new time, then placement, then input order: the same inputs, options and
seed give the same bytes.
"""

from __future__ import annotations

import heapq
import os
import random
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ips.core.addr import format_addr
from ips.core.packet import Malformed
from ips.mix.index import INDEX_RECORD, InputIndex, index_capture
from ips.mix.labels import ClassCount, FlowLabel, LabelsHeader, write_labels
from ips.mix.pcapng import PcapngWriter
from ips.mix.plan import DEFAULT_NETWORKS, KEEP, SPREAD, FlowSummary, MixPlan, Placement, plan_mix
from ips.mix.rewrite import open_frame, rewrite_addresses
from ips.mix.spec import (
    BENIGN,
    ROLES,
    US,
    Network,
    SpecError,
    Window,
    parse_networks,
    parse_ratios,
    parse_timeline,
)

__all__ = ["MixReport", "MixRequest", "run_mix"]

# new time, placement, input order | input, offset, captured length, length on the wire,
# link type, IP header offset. Big-endian and unsigned up front so that the bytes sort in
# output order.
_SORT = struct.Struct(">QIQHQIIHH")
_TIME_BIAS = 1 << 62  # times before 1970 (a capture's clock may be anything) still sort
RUN_RECORDS = 500_000


@dataclass
class MixRequest:
    inputs: list[tuple[str, str]]  # (class, path), in the order given
    output: str
    seed: int = 0
    ratio: str | None = None
    timeline: str | None = None
    packets: int | None = None  # proportional: packets in all
    duration_us: int | None = None  # proportional: the length of the output
    rate: float | None = None  # timeline: packets per second in all
    start_us: int | None = None  # the output's first instant (default: the inputs' first)
    networks: dict[str, list[str]] = field(default_factory=dict)  # role -> networks
    timing: dict[str, str] = field(default_factory=dict)  # class -> spread | keep
    idle_timeout_us: int = 300 * US
    keep_addresses: bool = False  # the first round of each input keeps its addresses
    run_records: int = RUN_RECORDS


@dataclass
class MixReport:
    output: str
    labels: tuple[str, str]
    strategy: str
    packets: int
    flows: int
    classes: dict[str, ClassCount]
    windows: list[dict[str, object]]
    inputs: list[dict[str, object]]
    too_long: int
    reused: int
    address_collisions: int
    left_out: dict[str, int]
    skipped_at_write: int

    def as_dict(self) -> dict[str, object]:
        return {
            "output": self.output,
            "labels": list(self.labels),
            "strategy": self.strategy,
            "packets": self.packets,
            "flows": self.flows,
            "classes": {
                c: {"packets": v.packets, "flows": v.flows} for c, v in self.classes.items()
            },
            "windows": self.windows,
            "inputs": self.inputs,
            "flows_too_long_for_their_window": self.too_long,
            "flows_reused": self.reused,
            "address_collisions": self.address_collisions,
            "packets_left_out": self.left_out,
            "skipped_at_write": self.skipped_at_write,
        }


class _OutFlow:
    """What the labels line of an output flow needs, gathered as its packets are written."""

    __slots__ = ("end", "first", "last", "packets", "placement", "start")

    def __init__(self, placement: int, first: int, ts: int) -> None:
        self.placement = placement
        self.first = first
        self.last = first
        self.packets = 0
        self.start = ts
        self.end = ts


# (stage, done, total): stage "index <file>" in bytes, then "write" in packets.
Progress = Callable[[str, int, int], None]


def run_mix(request: MixRequest, progress: Progress | None = None) -> MixReport:
    """Mix, write OUT.pcapng and its labels; raises SpecError (a request that cannot be
    carried out), CaptureError (a bad input) and OSError."""
    if not request.inputs:
        raise SpecError("no input: give --input CLASS=FILE at least once")
    if (request.ratio is None) == (request.timeline is None):
        raise SpecError("give a ratio (--ratio 80/20) or a timeline (--timeline ...), one of them")
    classes: list[str] = []
    for cls, _ in request.inputs:
        if cls not in classes:
            classes.append(cls)
    networks = _networks(request.networks)
    for cls in request.timing:
        if cls not in classes:
            raise SpecError(f"timing of {cls!r}: no input of that class")
    timing = {c: request.timing.get(c, SPREAD if c == BENIGN else KEEP) for c in classes}
    for cls, how in timing.items():
        if how not in (SPREAD, KEEP):
            raise SpecError(f"timing of {cls!r}: {how!r} is neither spread nor keep")
    # Parse what can be parsed before reading gigabytes.
    ratios = parse_ratios(request.ratio, classes) if request.ratio is not None else None
    timeline = parse_timeline(request.timeline, classes) if request.timeline is not None else None
    out_dir = os.path.dirname(os.path.abspath(request.output))
    with tempfile.TemporaryDirectory(prefix="ipsctl-mix-", dir=out_dir) as tmp:
        indexes = _index_all(request, tmp, progress)
        flows_by_class: dict[str, list[FlowSummary]] = {c: [] for c in classes}
        for ix in indexes:
            flows_by_class[ix.cls].extend(ix.flows)
        for flows in flows_by_class.values():
            # By input, then time: the order `keep` walks (a capture need not be in time order).
            flows.sort(key=lambda f: (f.input, f.start_us, f.flow))
        for cls, flows in flows_by_class.items():
            if not flows:
                raise SpecError(f"the inputs of class {cls!r} hold no packet a mix can use")
        if ratios is not None:
            windows, window_packets, strategy = _proportional(request, ratios, flows_by_class)
        else:
            assert timeline is not None
            windows, window_packets, strategy = _timeline(request, timeline, flows_by_class)
        used = {c for w in windows for c, _ in w.shares()}
        plan = plan_mix(
            windows,
            window_packets,
            {c: f for c, f in flows_by_class.items() if c in used},
            timing,
            networks,
            random.Random(request.seed),
            request.keep_addresses,
        )
        start_us = request.start_us
        if start_us is None:
            start_us = min(f.start_us for flows in flows_by_class.values() for f in flows)
        return _write(request, indexes, plan, strategy, start_us, tmp, progress)


def _networks(given: dict[str, list[str]]) -> dict[str, list[Network]]:
    out: dict[str, list[Network]] = {}
    for role in ROLES:
        nets = parse_networks(given.get(role, []), role)
        families = {n.family for n in nets}
        for default in parse_networks(list(DEFAULT_NETWORKS[role]), role):
            if default.family not in families:
                nets.append(default)
        out[role] = nets
    unknown = set(given) - set(ROLES)
    if unknown:
        raise SpecError(f"unknown role {sorted(unknown)[0]!r} (roles: {', '.join(ROLES)})")
    return out


def _index_all(request: MixRequest, tmp: str, progress: Progress | None) -> list[InputIndex]:
    indexes: list[InputIndex] = []
    first_flow = 0
    for i, (cls, path) in enumerate(request.inputs):
        size = os.path.getsize(path)
        stage = f"index {os.path.basename(path)}"

        def tell(done: int, stage: str = stage, size: int = size) -> None:
            if progress is not None:
                progress(stage, done, size)

        ix = index_capture(
            i,
            cls,
            path,
            os.path.join(tmp, f"input{i}.idx"),
            first_flow,
            request.idle_timeout_us,
            tell,
        )
        tell(size)
        first_flow += len(ix.flows)
        indexes.append(ix)
    return indexes


def _span(flows: list[FlowSummary]) -> int:
    by_input: dict[int, list[FlowSummary]] = {}
    for f in flows:
        by_input.setdefault(f.input, []).append(f)
    return max(
        max(f.start_us + f.duration_us for f in fl) - min(f.start_us for f in fl)
        for fl in by_input.values()
    )


def _proportional(
    request: MixRequest,
    ratios: list[tuple[str, float]],
    flows_by_class: dict[str, list[FlowSummary]],
) -> tuple[list[Window], list[int], str]:
    available = {c: sum(f.packets for f in fl) for c, fl in flows_by_class.items()}
    if request.packets is not None:
        if request.packets <= 0:
            raise SpecError("--packets must be 1 or more")
        total = request.packets
    else:
        # As many as the inputs hold without using a flow twice.
        total = int(min(available[c] / share for c, share in ratios))
    duration = request.duration_us
    if duration is None:
        # The benign inputs' own length (the background keeps its pace), and at least the
        # longest flow, so that every flow fits.
        pool = flows_by_class.get(BENIGN) or [f for fl in flows_by_class.values() for f in fl]
        longest = max(f.duration_us for fl in flows_by_class.values() for f in fl)
        duration = max(_span(pool), longest + 1, US)
    attacks = tuple((c, s) for c, s in ratios if c != BENIGN)
    window = Window(0, duration, attacks)
    strategy = "proportional " + ",".join(f"{c}={s * 100:g}" for c, s in ratios)
    return [window], [total], strategy


def _timeline(
    request: MixRequest,
    windows: list[Window],
    flows_by_class: dict[str, list[FlowSummary]],
) -> tuple[list[Window], list[int], str]:
    rate = request.rate
    if rate is None:
        # The benign inputs' own pace (packets a second), or all inputs' when none is benign.
        pool = flows_by_class.get(BENIGN) or [f for fl in flows_by_class.values() for f in fl]
        rate = sum(f.packets for f in pool) / max(_span(pool) / US, 1.0)
    if rate <= 0:
        raise SpecError("--rate must be more than 0")
    counts = [round(rate * (w.end_us - w.start_us) / US) for w in windows]
    return windows, counts, "timeline " + "; ".join(w.describe() for w in windows)


def _write(
    request: MixRequest,
    indexes: list[InputIndex],
    plan: MixPlan,
    strategy: str,
    start_us: int,
    tmp: str,
    progress: Progress | None,
) -> MixReport:
    flows: dict[int, FlowSummary] = {f.flow: f for ix in indexes for f in ix.flows}
    by_flow: dict[int, list[Placement]] = {}
    for p in plan.placements:
        by_flow.setdefault(p.flow, []).append(p)
    total_planned = sum(flows[p.flow].packets for p in plan.placements)
    runs = _sorted_runs(indexes, flows, by_flow, start_us, tmp, request.run_records)

    placements = plan.placements
    by_id = {p.placement: p for p in placements}
    files: list[BinaryIO] = []
    out_flow_of: dict[int, int] = {}
    out_flows: list[_OutFlow] = []
    skipped: Counter[str] = Counter()
    written = 0
    tmp_out = f"{request.output}.tmp{os.getpid()}"
    map_path = os.path.join(tmp, "packet-map")
    try:
        files = [open(ix.path, "rb") for ix in indexes]  # noqa: SIM115 - closed below
        with open(tmp_out, "wb", buffering=1 << 20) as out, open(map_path, "w") as packet_map:
            writer = PcapngWriter(out)
            for rec in runs:
                new_ts, pid, _seq, input_id, offset, caplen, orig_len, linktype, l3 = _SORT.unpack(
                    rec
                )
                f = files[input_id]
                f.seek(offset)
                frame = f.read(caplen)
                opened = open_frame(frame, linktype, orig_len)
                if len(frame) < caplen or opened is None or isinstance(opened, Malformed):
                    skipped["changed-input"] += 1  # the file changed between the passes
                    continue
                padded, packet, _ = opened
                p = by_id[pid]
                flow = flows[p.flow]
                if packet.src == flow.initiator and (
                    packet.sport == flow.sport or packet.src != flow.responder
                ):
                    new_src, new_dst = p.initiator, p.responder
                else:
                    new_src, new_dst = p.responder, p.initiator
                frame = rewrite_addresses(padded, l3, packet, new_src, new_dst)[:caplen]
                ts = new_ts - _TIME_BIAS
                out_index = out_flow_of.get(pid)
                if out_index is None:
                    out_index = out_flow_of[pid] = len(out_flows)
                    out_flows.append(_OutFlow(pid, written, ts))
                record = out_flows[out_index]
                record.last = written
                record.packets += 1
                record.end = ts
                writer.packet(
                    linktype, ts, frame, orig_len, f"ipsctl-label: {p.cls} flow {out_index}"
                )
                packet_map.write(f"{out_index}\n")
                written += 1
                if progress is not None and written % 4096 == 0:
                    progress("write", written, total_planned)
        if progress is not None:
            progress("write", written, total_planned)
        os.replace(tmp_out, request.output)
    except BaseException:
        if os.path.exists(tmp_out):
            os.unlink(tmp_out)
        raise
    finally:
        for f in files:
            f.close()

    names = {ix.input: ix.name for ix in indexes}
    first_flow = {ix.input: ix.flows[0].flow if ix.flows else 0 for ix in indexes}
    class_counts: dict[str, ClassCount] = {}
    for record in out_flows:
        cls = by_id[record.placement].cls
        c = class_counts.get(cls, ClassCount(0, 0))
        class_counts[cls] = ClassCount(c.packets + record.packets, c.flows + 1)

    def labels() -> Iterator[FlowLabel]:
        # Made one at a time as they are written: no second copy of every flow in memory.
        for i, record in enumerate(out_flows):
            p = by_id[record.placement]
            flow = flows[p.flow]
            yield FlowLabel(
                flow=i,
                cls=p.cls,
                proto=flow.proto,
                src=format_addr(p.initiator),
                sport=flow.sport,
                dst=format_addr(p.responder),
                dport=flow.dport,
                first_packet=record.first,
                last_packet=record.last,
                packets=record.packets,
                start=record.start / US,
                end=record.end / US,
                input=names[flow.input],
                input_flow=flow.flow - first_flow[flow.input],
                round=p.round,
            )

    windows = [
        {
            "start": (start_us + w.start_us) / US,
            "end": (start_us + w.end_us) / US,
            "classes": {
                c: {"target": r.target, "packets": r.packets, "flows": r.flows}
                for c, r in results.items()
            },
        }
        for w, results in zip(plan.windows, plan.results, strict=True)
    ]
    header = LabelsHeader(
        seed=request.seed,
        strategy=strategy,
        packets=written,
        flows=len(out_flows),
        classes=class_counts,
        extra={"windows": windows},
    )

    def packet_flows() -> Iterator[int]:
        with open(map_path) as f:
            for line in f:
                yield int(line)

    paths = write_labels(request.output, header, labels(), packet_flows())
    left_out: Counter[str] = Counter()
    for ix in indexes:
        left_out.update(ix.left_out)
    return MixReport(
        output=request.output,
        labels=paths,
        strategy=strategy,
        packets=written,
        flows=len(out_flows),
        classes=class_counts,
        windows=windows,
        inputs=[
            {
                "file": ix.path,
                "class": ix.cls,
                "records": ix.records,
                "packets": ix.packets,
                "flows": len(ix.flows),
                "left_out": dict(ix.left_out),
                "truncated_bytes": ix.truncated,
            }
            for ix in indexes
        ],
        too_long=plan.too_long,
        reused=plan.reused,
        address_collisions=plan.address_collisions,
        left_out=dict(left_out),
        skipped_at_write=sum(skipped.values()),
    )


def _sorted_runs(
    indexes: list[InputIndex],
    flows: dict[int, FlowSummary],
    by_flow: dict[int, list[Placement]],
    start_us: int,
    tmp: str,
    run_records: int,
) -> Iterator[bytes]:
    """Every output packet's sort record, in output order: sorted runs, merged."""
    pack = _SORT.pack
    run: list[bytes] = []
    run_paths: list[str] = []
    for ix in indexes:
        last_offset: dict[int, int] = {}  # flow -> its latest time offset (kept monotonic)
        with open(ix.index_path, "rb", buffering=1 << 20) as f:
            seq = 0
            while chunk := f.read(INDEX_RECORD.size * 8192):
                for flow_id, ts, offset, caplen, orig_len, linktype, l3 in INDEX_RECORD.iter_unpack(
                    chunk
                ):
                    seq += 1
                    placed = by_flow.get(flow_id)
                    if placed is None:
                        continue
                    # Time since the flow's first packet, never running backwards within it.
                    rel = max(ts - flows[flow_id].start_us, last_offset.get(flow_id, 0))
                    last_offset[flow_id] = rel
                    for p in placed:
                        run.append(
                            pack(
                                start_us + p.start_us + rel + _TIME_BIAS,
                                p.placement,
                                seq,
                                ix.input,
                                offset,
                                caplen,
                                orig_len,
                                linktype,
                                l3,
                            )
                        )
                    if len(run) >= run_records:
                        run_paths.append(_spill(run, tmp, len(run_paths)))
                        run = []
    run.sort()
    if not run_paths:
        yield from run
        return
    if run:
        run_paths.append(_spill(run, tmp, len(run_paths)))
        run = []
    yield from heapq.merge(*(_read_run(p) for p in run_paths))


def _spill(run: list[bytes], tmp: str, n: int) -> str:
    run.sort()
    path = os.path.join(tmp, f"run{n}")
    with open(path, "wb", buffering=1 << 20) as f:
        f.write(b"".join(run))
    return path


def _read_run(path: str) -> Iterator[bytes]:
    size = _SORT.size
    with open(path, "rb", buffering=1 << 20) as f:
        while chunk := f.read(size * 4096):
            for i in range(0, len(chunk), size):
                yield chunk[i : i + size]
