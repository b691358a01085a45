"""Detections held against labelled flows: which alert is true, which flow was detected, and
the measures made of that (the rules are in ips/evaluate/__init__.py, in words).

`Scorer(flows)` indexes the labelled flows once; `add(detection)` matches one detection (in
any order); `result()` counts. Pure: the detections and the flows come in as values.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ips.evaluate.detections import BLOCK, DROP, PORT_PROTOS, RULE, Detection
from ips.mix.labels import FlowLabel

BENIGN = "benign"
# Attack flows of one class whose starts are at most this many seconds after the end of the
# burst so far belong to the same burst (an attack's episode): time to detect is measured per
# burst, from its first packet.
DEFAULT_GAP = 10.0
# The base rate the warning speaks of: 1 % of flows are attacks.
WARNING_BASE_RATE = 0.01
EXAMPLES = 10  # flagged benign flows listed in the JSON


def _ratio(num: int | float, den: int | float) -> float | None:
    return num / den if den else None


def ppv(base_rate: float, recall: float, fpr: float) -> float | None:
    """The share of flagged flows that are attacks at `base_rate`, for a detector of this
    recall and false-positive rate (Bayes' rule)."""
    true = recall * base_rate
    false = fpr * (1.0 - base_rate)
    return _ratio(true, true + false)


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _flow_key(proto: int, a: str, ap: int, b: str, bp: int) -> tuple[object, ...]:
    """A flow's key whichever way its packet went; no ports for ICMP and the like."""
    if proto not in PORT_PROTOS:
        ap = bp = 0
    return (proto, *sorted([(a, ap), (b, bp)]))


class _ByAddress:
    """The flows of one address (as initiator, or as responder), by start time."""

    __slots__ = ("flows", "longest", "starts")

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.flows: list[int] = []
        self.longest = 0.0

    def add(self, index: int, start: float, end: float) -> None:
        self.starts.append(start)
        self.flows.append(index)
        self.longest = max(self.longest, end - start)

    def overlapping(self, flows: Sequence[FlowLabel], lo: float, hi: float) -> Iterable[int]:
        """Flows active at some time in [lo, hi]."""
        i = bisect_right(self.starts, hi) - 1
        floor = lo - self.longest
        while i >= 0 and self.starts[i] >= floor:
            index = self.flows[i]
            if flows[index].end >= lo:
                yield index
            i -= 1


@dataclass
class Episode:
    """A burst of one attack class: its flows, first start, last end, and when (if) it was
    first detected, overall and by each detector or rule."""

    cls: str
    start: float
    end: float
    flows: list[int] = field(default_factory=list)
    detected_at: float | None = None
    by_key: dict[str, float] = field(default_factory=dict)

    @property
    def time_to_detect(self) -> float | None:
        if self.detected_at is None:
            return None
        return max(0.0, self.detected_at - self.start)


@dataclass
class Evaluation:
    """The counts and measures (as_dict: the JSON of `ipsctl eval --json`)."""

    params: dict[str, object]
    classes: list[dict[str, Any]]
    benign: dict[str, Any]
    keys: list[dict[str, Any]]
    totals: dict[str, Any]
    base_rate: dict[str, Any]
    episodes: list[Episode]
    points: list[tuple[float, str, bool]]  # each alert: time, key, true?
    blocks: list[tuple[float, float, str, bool]]  # each block: from, until, key, true?

    def as_dict(self) -> dict[str, object]:
        return {
            "matching": self.params,
            "base_rate": self.base_rate,
            "totals": self.totals,
            "classes": self.classes,
            "benign": self.benign,
            "detectors": self.keys,
            "episodes": [
                {
                    "class": e.cls,
                    "start": e.start,
                    "end": e.end,
                    "flows": len(e.flows),
                    "detected_at": e.detected_at,
                    "time_to_detect": e.time_to_detect,
                    "by": {k: round(max(0.0, t - e.start), 6) for k, t in sorted(e.by_key.items())},
                }
                for e in self.episodes
            ],
        }


class Scorer:
    """Match detections to the labelled flows, then count."""

    def __init__(
        self,
        flows: Sequence[FlowLabel],
        *,
        slack: float = 0.0,
        gap: float = DEFAULT_GAP,
        packets: dict[str, int] | None = None,
    ) -> None:
        self.flows = flows
        self.slack = slack
        self.gap = gap
        self.packets = packets
        self._by_tuple: dict[tuple[object, ...], list[int]] = {}
        self._by_src: dict[str, _ByAddress] = {}
        self._by_dst: dict[str, _ByAddress] = {}
        # The flows ordered by start (the labels are in the order of first packets, which is
        # the order of starts; sorted again so a hand-made list in any order works too).
        for index in sorted(range(len(flows)), key=lambda i: flows[i].start):
            f = flows[index]
            key = _flow_key(f.proto, f.src, f.sport, f.dst, f.dport)
            self._by_tuple.setdefault(key, []).append(index)
            self._by_src.setdefault(f.src, _ByAddress()).add(index, f.start, f.end)
            self._by_dst.setdefault(f.dst, _ByAddress()).add(index, f.start, f.end)
        self.flow_first: dict[int, float] = {}  # flow -> first detection matching it
        self.flow_keys: dict[int, dict[str, float]] = {}  # flow -> {key: first time}
        self.alerts: dict[str, dict[str, Any]] = {}  # key -> counts
        self.points: list[tuple[float, str, bool]] = []
        self.blocks: list[tuple[float, float, str, bool]] = []
        self.unmatched_alerts = 0  # alerts matching no labelled flow at all
        self.class_alerts: dict[str, int] = {}  # attack class -> alerts matching its flows

    # ---- matching ---------------------------------------------------------------------------

    def packet_flow(self, det: Detection) -> int | None:
        """The labelled flow of the packet an alert names: its 5-tuple (either direction;
        ICMP and other port-less protocols by addresses alone), its span widened by the slack
        holding the alert's time; of two (a port reused within the slack), the later one
        that had started."""
        s = self.slack
        candidates = self._by_tuple.get(
            _flow_key(det.proto, det.src, det.sport, det.dst, det.dport), []
        )
        active = [
            i for i in candidates if self.flows[i].start - s <= det.time <= self.flows[i].end + s
        ]
        return max(active, key=lambda i: self.flows[i].start) if active else None

    def anchored(self, det: Detection) -> tuple[Detection, int | None]:
        """An alert placed on the capture's clock by its packet: when its packet's flow is
        a labelled one, its time moved into that flow's span (offline it is there already;
        over an EVE file it was off by the replay's jitter). Blocks name no packet."""
        if det.kind == BLOCK:
            return det, None
        anchor = self.packet_flow(det)
        if anchor is None:
            return det, None
        f = self.flows[anchor]
        when = min(max(det.time, f.start), f.end)
        return (det if when == det.time else replace(det, time=when)), anchor

    def matches(self, det: Detection, anchor: int | None = None) -> list[int]:
        """The labelled flows a detection names (the rules of ips/evaluate/__init__.py).
        `anchor`: the flow of the alert's packet (see `anchored`): a detector's alert so
        placed needs no slack, its time is the capture's own."""
        if det.kind in (RULE, DROP):
            return [anchor] if anchor is not None else []
        s = self.slack
        if det.kind == BLOCK:
            lo, hi = det.time - s, det.until + s
        else:
            s = 0.0 if anchor is not None else s
            lo, hi = det.time - det.window - s, det.time + s
        found: set[int] = set()
        for addr in det.sources:
            table = self._by_src.get(addr)
            if table is not None:
                found.update(table.overlapping(self.flows, lo, hi))
        for addr in det.victims:
            table = self._by_dst.get(addr)
            if table is not None:
                found.update(table.overlapping(self.flows, lo, hi))
        return sorted(found)

    def add(self, det: Detection) -> None:
        det, anchor = self.anchored(det)
        matched = self.matches(det, anchor)
        attack = any(self.flows[i].cls != BENIGN for i in matched)
        row = self.alerts.setdefault(
            det.key,
            {
                "kind": det.kind,
                "alerts": 0,
                "true_alerts": 0,
                "blocks": 0,
                "true_blocks": 0,
                "drops": 0,
                "true_drops": 0,
            },
        )
        if det.kind == DROP:
            row["drops"] += 1
            row["true_drops"] += attack
        elif det.kind == BLOCK:
            row["blocks"] += 1
            row["true_blocks"] += attack
            self.blocks.append((det.time, det.until, det.key, attack))
        else:
            if row["kind"] == BLOCK:  # a detector's block came before its first alert
                row["kind"] = det.kind
            row["alerts"] += 1
            row["true_alerts"] += attack
            self.points.append((det.time, det.key, attack))
            if not matched:
                self.unmatched_alerts += 1
            for cls in {self.flows[i].cls for i in matched} - {BENIGN}:
                self.class_alerts[cls] = self.class_alerts.get(cls, 0) + 1
        for i in matched:
            when = max(det.time, self.flows[i].start) if det.kind == BLOCK else det.time
            first = self.flow_first.get(i)
            if first is None or when < first:
                self.flow_first[i] = when
            by_key = self.flow_keys.setdefault(i, {})
            if det.key not in by_key or when < by_key[det.key]:
                by_key[det.key] = when

    # ---- counting ---------------------------------------------------------------------------

    def _episodes(self) -> list[Episode]:
        episodes: list[Episode] = []
        current: dict[str, Episode] = {}
        for index in sorted(range(len(self.flows)), key=lambda i: self.flows[i].start):
            f = self.flows[index]
            if f.cls == BENIGN:
                continue
            ep = current.get(f.cls)
            if ep is None or f.start > ep.end + self.gap:
                ep = current[f.cls] = Episode(f.cls, f.start, f.end)
                episodes.append(ep)
            ep.end = max(ep.end, f.end)
            ep.flows.append(index)
            first = self.flow_first.get(index)
            if first is not None and (ep.detected_at is None or first < ep.detected_at):
                ep.detected_at = first
            for key, when in self.flow_keys.get(index, {}).items():
                if key not in ep.by_key or when < ep.by_key[key]:
                    ep.by_key[key] = when
        return episodes

    def result(self) -> Evaluation:
        flows = self.flows
        episodes = self._episodes()
        classes = sorted({f.cls for f in flows} - {BENIGN})
        n_flows = {c: 0 for c in [*classes, BENIGN]}
        n_packets = {c: 0 for c in [*classes, BENIGN]}
        detected = {c: 0 for c in [*classes, BENIGN]}
        per_key_flows: dict[str, dict[str, int]] = {k: {} for k in self.alerts}
        for i, f in enumerate(flows):
            n_flows[f.cls] += 1
            n_packets[f.cls] += f.packets
            if i in self.flow_first:
                detected[f.cls] += 1
                for key in self.flow_keys[i]:
                    counts = per_key_flows[key]
                    counts[f.cls] = counts.get(f.cls, 0) + 1
        if self.packets:  # the packet counts of the labels' header, when given
            n_packets.update({c: self.packets.get(c, n_packets[c]) for c in n_packets})

        # Alert-level: an alert is true when it matches an attack flow; per class, when it
        # matches a flow of that class. False alerts count against every class.
        alerts_total = sum(r["alerts"] for r in self.alerts.values())
        true_total = sum(r["true_alerts"] for r in self.alerts.values())
        false_total = alerts_total - true_total
        per_class_alerts = {c: self.class_alerts.get(c, 0) for c in classes}

        benign_n = n_flows[BENIGN]
        flagged = detected[BENIGN]
        fpr = _ratio(flagged, benign_n)
        attack_n = sum(n_flows[c] for c in classes)
        tp = sum(detected[c] for c in classes)
        fn = attack_n - tp
        recall = _ratio(tp, attack_n)

        class_rows = []
        for c in classes:
            ttds = [e.time_to_detect for e in episodes if e.cls == c]
            found = [t for t in ttds if t is not None]
            class_rows.append(
                {
                    "class": c,
                    "flows": n_flows[c],
                    "packets": n_packets[c],
                    "detected": detected[c],
                    "missed": n_flows[c] - detected[c],
                    "recall": _ratio(detected[c], n_flows[c]),
                    "alerts": per_class_alerts[c],
                    "precision": _ratio(per_class_alerts[c], per_class_alerts[c] + false_total),
                    "fpr": fpr,
                    "episodes": len(ttds),
                    "episodes_detected": len(found),
                    "time_to_detect": {
                        "first": found[0] if found else None,
                        "median": _median(found),
                        "max": max(found) if found else None,
                    },
                }
            )

        key_rows = []
        for key in sorted(self.alerts):
            row = self.alerts[key]
            counts = per_key_flows[key]
            ttd = [max(0.0, e.by_key[key] - e.start) for e in episodes if key in e.by_key]
            key_rows.append(
                {
                    "key": key,
                    "kind": row["kind"],
                    "alerts": row["alerts"],
                    "true_alerts": row["true_alerts"],
                    "false_alerts": row["alerts"] - row["true_alerts"],
                    "precision": _ratio(row["true_alerts"], row["alerts"]),
                    "blocks": row["blocks"],
                    "true_blocks": row["true_blocks"],
                    "drops": row["drops"],
                    "true_drops": row["true_drops"],
                    "detected": {c: counts.get(c, 0) for c in classes if counts.get(c)},
                    "recall": {
                        c: _ratio(counts.get(c, 0), n_flows[c]) for c in classes if counts.get(c)
                    },
                    "recall_all": _ratio(sum(counts.get(c, 0) for c in classes), attack_n),
                    "benign_flagged": counts.get(BENIGN, 0),
                    "fpr": _ratio(counts.get(BENIGN, 0), benign_n),
                    "episodes_detected": len(ttd),
                    "time_to_detect_median": _median(ttd),
                }
            )

        all_flows = attack_n + benign_n
        all_packets = sum(n_packets.values())
        attack_packets = sum(n_packets[c] for c in classes)
        base = _ratio(attack_n, all_flows)
        base_rate: dict[str, Any] = {
            "flows": base,
            "packets": _ratio(attack_packets, all_packets),
            "attack_flows": attack_n,
            "all_flows": all_flows,
            "attack_packets": attack_packets,
            "all_packets": all_packets,
            "warning_at": WARNING_BASE_RATE,
            "precision_here": None,
            "precision_at_warning": None,
            "fpr_upper_95": None,
        }
        if recall is not None and fpr is not None:
            if base is not None:
                base_rate["precision_here"] = ppv(base, recall, fpr)
            base_rate["precision_at_warning"] = ppv(WARNING_BASE_RATE, recall, fpr)
        if benign_n and flagged == 0:
            # No benign flow flagged: the FPR is only known to lie below 3/n (the rule of
            # three, 95 % confidence), and the warning is computed at that bound.
            upper = min(1.0, 3.0 / benign_n)
            base_rate["fpr_upper_95"] = upper
            if recall:
                base_rate["precision_at_warning_bound"] = ppv(WARNING_BASE_RATE, recall, upper)

        totals = {
            "alerts": alerts_total,
            "true_alerts": true_total,
            "false_alerts": false_total,
            "unmatched_alerts": self.unmatched_alerts,
            "alert_precision": _ratio(true_total, alerts_total),
            "tp": tp,
            "fp": flagged,
            "fn": fn,
            "tn": benign_n - flagged,
            "precision": _ratio(tp, tp + flagged),
            "recall": recall,
            "fpr": fpr,
            "episodes": len(episodes),
            "episodes_detected": sum(1 for e in episodes if e.detected_at is not None),
        }
        benign_row = {
            "class": BENIGN,
            "flows": benign_n,
            "packets": n_packets[BENIGN],
            "flagged": flagged,
            "fpr": fpr,
            # The first flagged flows, to look at: which input they came from, who flagged.
            "flagged_examples": [
                {"flow": flows[i].flow, "input": flows[i].input, "by": sorted(self.flow_keys[i])}
                for i in sorted(self.flow_first)
                if flows[i].cls == BENIGN
            ][:EXAMPLES],
        }
        return Evaluation(
            params={"slack": self.slack, "gap": self.gap},
            classes=class_rows,
            benign=benign_row,
            keys=key_rows,
            totals=totals,
            base_rate=base_rate,
            episodes=episodes,
            points=self.points,
            blocks=self.blocks,
        )


def evaluate(
    flows: Sequence[FlowLabel],
    detections: Iterable[Detection],
    *,
    slack: float = 0.0,
    gap: float = DEFAULT_GAP,
) -> Evaluation:
    scorer = Scorer(flows, slack=slack, gap=gap)
    for det in detections:
        scorer.add(det)
    return scorer.result()
