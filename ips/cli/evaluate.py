"""`ipsctl eval`: a policy's detections over a labelled capture (ipsctl mix's output), scored
by ips/evaluate — or the detections of an EVE file a daemon wrote (`--eve`, tap mode).

Exit codes: 0 scored; 1 the policy has errors; 2 usage: no labels, labels that do not belong
to the capture, an EVE file that cannot be read or aligned to the capture's clock.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

import click

from ips.cli.common import EXIT_USAGE, load_or_exit
from ips.core.decision import Decision
from ips.core.events import Alert, Block, Effect
from ips.engine import NO_META, Engine, Meta
from ips.evaluate.align import clock_offset, flow_start_of
from ips.evaluate.detections import DROP, Detection, from_alert, from_block, from_eve
from ips.evaluate.report import table
from ips.evaluate.score import DEFAULT_GAP, Evaluation, Scorer
from ips.evaluate.timeline import timeline_svg
from ips.mix.labels import Labels, LabelsError, labels_paths, read_labels
from ips.policy.compile import CompiledRule
from ips.policy.model import Policy

# Over an EVE file the alerts' times are the replay's wall clock brought back to the capture's:
# a packet's time may be off by the sender's and the reader's scheduling, so the windows of
# the matching rules are widened by this much (seconds).
EVE_SLACK = 1.0
# A capture and its labels agree on the first packet's time to the microsecond (pcapng's
# default resolution) — or they are not each other's.
SAME_TIME = 2e-6


def fail(message: str) -> NoReturn:
    click.echo(f"ipsctl eval: {message}", err=True)
    sys.exit(EXIT_USAGE)


class DetectionCollector:
    """A replay sink that keeps the alerts and blocks as detections (nothing else)."""

    def __init__(self) -> None:
        self.detections: list[Detection] = []

    def events(self, events: Iterable[Effect]) -> None:
        for ev in events:
            if ev.__class__ is Alert:
                self.detections.append(from_alert(ev))
            elif ev.__class__ is Block:
                self.detections.append(from_block(ev))


REFUSED = frozenset({"drop", "reject"})


def _drop_recorder(policy: Policy, labels: Labels, out: list[Detection]) -> Engine:
    """An engine that also notes each packet it refuses without an alert (`--drops`), by
    the packet's index in the capture — which the labels map to its flow, so no decoding."""

    class DropRecorder(Engine):
        packet = 0

        def handle(
            self, data: bytes, meta: Meta = NO_META, now: float = 0.0
        ) -> Decision[CompiledRule]:
            decision = super().handle(data, meta, now)
            index = self.packet
            self.packet = index + 1
            if (
                decision.verdict in REFUSED
                and index < len(labels.packet_flow)
                and not any(ev.__class__ is Alert for ev in decision.effects)
            ):
                f = labels.flows[labels.packet_flow[index]]
                rule = decision.rule
                why = rule.spec.name if rule is not None else f"({decision.reason or 'engine'})"
                out.append(
                    Detection(now, DROP, f"drop {why}", f.proto, f.src, f.sport, f.dst, f.dport)
                )
            return decision

    return DropRecorder(policy)


def _labels(path: str) -> Labels:
    jsonl, _ = labels_paths(path)
    try:
        return read_labels(path)
    except LabelsError as exc:
        fail(f"labels: {exc}" + ("" if "cannot read" not in str(exc) else " (give --labels)"))
    except OSError as exc:  # read_labels turns its own errors into LabelsError; belt and braces
        fail(f"labels: {jsonl}: {exc}")


def _first_packet_time(capture: str) -> float | None:
    from ips.io.pcap import CaptureError, read_capture

    try:
        with read_capture(capture) as reader:
            for rec in reader:
                return rec.timestamp
    except (OSError, CaptureError) as exc:
        fail(f"capture: {exc}")
    return None


def _run_engine(
    policy_path: str, capture: str, labels: Labels, progress: bool | None, drops: bool = False
) -> tuple[list[Detection], dict[str, Any]]:
    from ips.heap import tune_collector
    from ips.replay import replay_captures

    policy = load_or_exit(policy_path)
    first = _first_packet_time(capture)
    if labels.flows and (first is None or abs(first - labels.flows[0].start) > SAME_TIME):
        fail(
            f"{capture} does not match its labels: its first packet is at {first}, the "
            f"labels' first flow starts at {labels.flows[0].start} (another capture's labels?)"
        )
    tune_collector()
    collector = DetectionCollector()
    engine = _drop_recorder(policy, labels, collector.detections) if drops else None
    try:
        result = replay_captures(
            policy, [capture], sinks=[collector], progress=progress, engine=engine
        )
    except (OSError, ValueError) as exc:
        fail(f"capture: {exc}")
    packets = sum(int(str(c["packets"])) for c in result.captures)
    if packets != labels.header.packets:
        fail(
            f"{capture} does not match its labels: {packets} packets in the capture, "
            f"{labels.header.packets} in the labels"
        )
    summary = {
        "policy": policy_path,
        "packets": result.packets,
        "alerts": result.alerts,
        "verdicts": dict(result.verdicts),
        "blocks": len(result.blocks),
        "engine_errors": result.errors,
        "drops_counted": drops,
    }
    return collector.detections, summary


def _read_eve(
    path: str, labels: Labels, offset: float | None, speed: float
) -> tuple[list[Detection], dict[str, Any]]:
    detections: list[Detection] = []
    starts: list[tuple[tuple[object, ...], float]] = []
    malformed = unusable = lines = 0
    kernel_drops: int | None = None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                lines += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    malformed += 1  # a line cut by a crash, or not EVE: counted, skipped
                    continue
                if not isinstance(record, dict):
                    malformed += 1
                    continue
                kind = record.get("event_type")
                if kind in ("alert", "ipsctl_block"):
                    det = from_eve(record)
                    if det is None:
                        unusable += 1
                    else:
                        detections.append(det)
                elif kind == "flow":
                    found = flow_start_of(record)
                    if found is not None:
                        starts.append(found)
                elif kind == "stats":
                    capture = (record.get("stats") or {}).get("capture") or {}
                    drops = capture.get("kernel_drops") if isinstance(capture, dict) else None
                    if isinstance(drops, int):
                        kernel_drops = drops  # the last one: the counts are totals
    except OSError as exc:
        fail(f"--eve: {exc}")
    aligned = 0
    if offset is None:
        found_offset = clock_offset(starts, labels.flows, speed=speed)
        if found_offset is None:
            fail(
                f"--eve: {path}: none of its {len(starts)} flow records is a labelled flow, so "
                "its clock cannot be aligned to the capture's (give --offset SECONDS)"
            )
        offset, aligned = found_offset
    origin = min((f.start for f in labels.flows), default=0.0)
    shifted = [d.shifted(offset, speed, origin) for d in detections]
    info = {
        "eve": path,
        "lines": lines,
        "malformed_lines": malformed,
        "unusable_alerts": unusable,
        "flow_records": len(starts),
        "clock_offset": offset,
        "aligned_flows": aligned,
        "speed": speed,
        "kernel_drops": kernel_drops,
    }
    return shifted, info


@click.command("eval")
@click.argument("paths", nargs=-1, metavar="POLICY CAPTURE")
@click.option(
    "--labels",
    "labels_path",
    metavar="FILE",
    help="the labels (OUT.labels.jsonl of `ipsctl mix`); default: the capture's own",
)
@click.option(
    "--eve",
    "eve_path",
    metavar="FILE",
    help="score this EVE file's alerts and blocks instead of running the engine",
)
@click.option("--json", "as_json", is_flag=True, help="print the evaluation as JSON")
@click.option("--svg", "svg_path", metavar="FILE", help="draw the timeline into this SVG file")
@click.option(
    "--slack",
    type=click.FloatRange(min=0),
    help=f"seconds every matching window is widened by (default 0; {EVE_SLACK:g} with --eve)",
)
@click.option(
    "--gap",
    type=click.FloatRange(min=0),
    default=DEFAULT_GAP,
    show_default=True,
    help="seconds between attack flows of a class that start a new burst",
)
@click.option(
    "--offset",
    type=float,
    help="with --eve: EVE time minus capture time (default: measured from the flow records)",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="with --eve: the speed the capture was replayed at (`replay --to --speed`)",
)
@click.option(
    "--drops",
    is_flag=True,
    help="also count packets the engine refused without an alert (offline only)",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="progress bar (default: on for large files on a terminal)",
)
def evaluate(
    paths: tuple[str, ...],
    labels_path: str | None,
    eve_path: str | None,
    as_json: bool,
    svg_path: str | None,
    slack: float | None,
    gap: float,
    offset: float | None,
    speed: float,
    drops: bool,
    progress: bool | None,
) -> None:
    """Score POLICY over CAPTURE against its labels: precision, recall, false-positive rate
    and time to detect, per attack class and per detector or rule, with the base rate.

    \b
    ipsctl eval policy.rules mix.pcapng                 labels: mix.labels.jsonl
    ipsctl eval policy.rules mix.pcapng --labels L.jsonl --json
    ipsctl eval --eve eve.json --labels mix.labels.jsonl    what a tap wrote
    """
    if eve_path is None and len(paths) != 2:
        fail("give POLICY and CAPTURE (or --eve FILE with --labels FILE)")
    if eve_path is not None and paths:
        fail("--eve scores an EVE file instead of running a policy: give no POLICY or CAPTURE")
    if (offset is not None or speed != 1.0) and eve_path is None:
        fail("--offset and --speed go with --eve")
    if drops and eve_path is not None:
        fail("--drops needs the engine's verdicts: an EVE file has no silent drops")
    if labels_path is None:
        if eve_path is not None:
            fail("--eve needs --labels FILE")
        labels_path = paths[1]
    labels = _labels(labels_path)

    if eve_path is not None:
        detections, source = _read_eve(eve_path, labels, offset, speed)
        window_slack = EVE_SLACK if slack is None else slack
    else:
        detections, source = _run_engine(paths[0], paths[1], labels, progress, drops)
        window_slack = 0.0 if slack is None else slack

    packets = {name: c.packets for name, c in labels.header.classes.items()}
    scorer = Scorer(labels.flows, slack=window_slack, gap=gap, packets=packets)
    for det in detections:
        scorer.add(det)
    ev: Evaluation = scorer.result()

    origin = min((f.start for f in labels.flows), default=0.0)
    end = max((f.end for f in labels.flows), default=origin)
    if svg_path:
        title = f"{paths[1] if paths else eve_path}: attacks and detections"
        try:
            with open(svg_path, "w", encoding="utf-8") as f:
                windows = labels.header.extra.get("windows")
                plan = windows if isinstance(windows, list) else None
                f.write(timeline_svg(ev, origin, end, title, plan))
        except OSError as exc:
            fail(f"--svg: {exc}")
    jsonl, _ = labels_paths(labels_path)
    if as_json:
        out = {"labels": jsonl, "source": source, **ev.as_dict()}
        click.echo(json.dumps(out, indent=2))
        return
    if eve_path is not None:
        drops = source["kernel_drops"]
        heading = [
            f"eval of {eve_path} against {jsonl}: {source['lines']} lines "
            f"({source['malformed_lines']} malformed), clock offset "
            f"{source['clock_offset']:.3f}s from {source['aligned_flows']} flows"
            + (f", kernel dropped {drops}" if drops is not None else ""),
        ]
    else:
        heading = [
            f"eval of {paths[0]} over {paths[1]} against {jsonl}: {source['packets']} "
            f"packets, {len(labels.flows)} flows, {source['alerts']} alerts"
        ]
    heading.append(
        f"matching: slack {window_slack:g}s, bursts split at gaps over {gap:g}s "
        "(rules: docs/evaluation.md)"
    )
    heading.append("")
    click.echo(table(ev, heading))
