"""The labels of a mixed capture: which class and which flow each packet belongs to.

`ipsctl mix … -o OUT.pcapng` writes, beside OUT.pcapng, two files (the contract of the
session plan; `ipsctl eval` reads them through `read_labels`):

OUT.labels.jsonl
    line 1, the header::

        {"kind": "ipsctl-mix-labels", "version": 1, "seed": S, "strategy": "...",
         "packets": N, "flows": F,
         "classes": {"benign": {"packets": n, "flows": f}, "<attack>": {...}}}

    then one line per flow, in the order of its first packet::

        {"flow": i, "class": "benign", "proto": 6, "src": "10.0.0.1", "sport": 1234,
         "dst": "10.0.0.2", "dport": 80, "first_packet": k, "last_packet": m,
         "packets": n, "start": t0, "end": t1, "input": "file name",
         "input_flow": j, "round": r}

    `src` is the flow's initiator (the sender of its first packet), after remapping; times are
    seconds since the epoch (floats) after rebasing; packet indexes are 0-based in OUT.pcapng.
    `input_flow` and `round` were added to the first contract, compatibly: which flow of its
    input this is (0-based, in the order of first packets there) and how many times the input
    had been used up before (a copy with new addresses when > 0).

OUT.labels.packets
    one line per packet of OUT.pcapng, in order: the index of its flow, as text. A packet's
    label is its flow's class.

Compatibility: a reader of version 1 ignores keys it does not know, so fields may be added
without a new version; a change of meaning gets version 2. `read_labels` refuses any other
version with a clear error rather than guessing.

Every problem of a labels file raises `LabelsError` (a ValueError) naming the file and line.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KIND",
    "VERSION",
    "ClassCount",
    "FlowLabel",
    "Labels",
    "LabelsError",
    "LabelsHeader",
    "labels_paths",
    "read_labels",
    "write_labels",
]

KIND = "ipsctl-mix-labels"
VERSION = 1
_JSONL_SUFFIX = ".labels.jsonl"
_PACKETS_SUFFIX = ".labels.packets"
_CAPTURE_SUFFIXES = (".pcapng", ".pcap", ".cap")


class LabelsError(ValueError):
    """A labels file that cannot be read: missing, not ours, of another version, or
    inconsistent (a flow's counts against the packet map)."""


@dataclass(frozen=True)
class ClassCount:
    packets: int
    flows: int


@dataclass(frozen=True)
class FlowLabel:
    """One flow of the mixed capture, as its line in OUT.labels.jsonl says."""

    flow: int
    cls: str  # "class" in the file; a Python keyword here
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    first_packet: int
    last_packet: int
    packets: int
    start: float
    end: float
    input: str
    # Added after the contract (readers ignore unknown keys): which flow of its input this is
    # (0-based, in the order of first packets there), and how many times its input had been
    # used up before (a copy with new addresses when > 0). -1 and 0 when the file lacks them.
    input_flow: int = -1
    round: int = 0

    def as_dict(self) -> dict[str, Any]:
        # The contract's key order: flow, class, then the rest (readers do not care, people do).
        return {
            "flow": self.flow,
            "class": self.cls,
            "proto": self.proto,
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
            "first_packet": self.first_packet,
            "last_packet": self.last_packet,
            "packets": self.packets,
            "start": self.start,
            "end": self.end,
            "input": self.input,
            "input_flow": self.input_flow,
            "round": self.round,
        }


@dataclass(frozen=True)
class LabelsHeader:
    seed: int
    strategy: str
    packets: int
    flows: int
    classes: dict[str, ClassCount]
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer writer added

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "version": self.version,
            "seed": self.seed,
            "strategy": self.strategy,
            "packets": self.packets,
            "flows": self.flows,
            "classes": {
                name: {"packets": c.packets, "flows": c.flows} for name, c in self.classes.items()
            },
            **self.extra,
        }


@dataclass(frozen=True)
class Labels:
    """A labels file read back: the header, the flows (index = flow number) and the packet
    to flow map (`packet_flow[k]` is the flow of packet k, an unsigned array)."""

    header: LabelsHeader
    flows: list[FlowLabel]
    packet_flow: array[int]

    def flow_of(self, packet_index: int) -> FlowLabel:
        return self.flows[self.packet_flow[packet_index]]

    def class_of(self, packet_index: int) -> str:
        return self.flows[self.packet_flow[packet_index]].cls

    def packet_classes(self) -> list[str]:
        """The class of every packet, in order (one list entry per packet)."""
        names = [f.cls for f in self.flows]
        return [names[i] for i in self.packet_flow]


def labels_paths(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(OUT.labels.jsonl, OUT.labels.packets) for OUT.pcapng, OUT.labels.jsonl or OUT.

    So `read_labels` takes the capture's path or the labels file's, whichever the user has.
    """
    p = os.fspath(path)
    for suffix in (_JSONL_SUFFIX, _PACKETS_SUFFIX, *_CAPTURE_SUFFIXES):
        if p.endswith(suffix):
            p = p[: -len(suffix)]
            break
    return p + _JSONL_SUFFIX, p + _PACKETS_SUFFIX


def class_counts(flows: Iterable[FlowLabel]) -> dict[str, ClassCount]:
    """Packets and flows per class, in the order classes first appear."""
    packets: dict[str, int] = {}
    count: dict[str, int] = {}
    for f in flows:
        packets[f.cls] = packets.get(f.cls, 0) + f.packets
        count[f.cls] = count.get(f.cls, 0) + 1
    return {name: ClassCount(packets[name], count[name]) for name in packets}


def write_labels(
    path: str | os.PathLike[str],
    header: LabelsHeader,
    flows: Iterable[FlowLabel],
    packet_flow: Iterable[int],
) -> tuple[str, str]:
    """Write OUT.labels.jsonl and OUT.labels.packets for `path` (see `labels_paths`).

    `packet_flow` may be any iterable (a generator, so a huge map is never held whole).
    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    Returns the two paths written.
    """
    jsonl_path, packets_path = labels_paths(path)
    _atomic_write_lines(
        jsonl_path,
        (
            json.dumps(obj, separators=(", ", ": "))
            for obj in _chain_one(header.as_dict(), (f.as_dict() for f in flows))
        ),
    )
    _atomic_write_lines(packets_path, (str(i) for i in packet_flow))
    return jsonl_path, packets_path


def _chain_one(first: dict[str, Any], rest: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    yield first
    yield from rest


def _atomic_write_lines(path: str, lines: Iterable[str]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", buffering=1 << 20) as f:
            for line in lines:
                f.write(line)
                f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_FLOW_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "flow": int,
    "class": str,
    "proto": int,
    "src": str,
    "sport": int,
    "dst": str,
    "dport": int,
    "first_packet": int,
    "last_packet": int,
    "packets": int,
    "start": (int, float),
    "end": (int, float),
    "input": str,
}


def read_labels(path: str | os.PathLike[str], *, check: bool = True) -> Labels:
    """Read the labels of a mixed capture (give OUT.pcapng or OUT.labels.jsonl).

    With `check` (the default) the flows are held against the packet map: each flow's packet
    count, first and last packet must be what the map says, and the header's totals what the
    flows add up to. Raises LabelsError on any problem.
    """
    jsonl_path, packets_path = labels_paths(path)
    try:
        with open(jsonl_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise LabelsError(f"{jsonl_path}: cannot read: {exc.strerror or exc}") from exc
    if not lines:
        raise LabelsError(f"{jsonl_path}: empty file (no header)")
    header = _parse_header(jsonl_path, lines[0])
    flows: list[FlowLabel] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        flows.append(_parse_flow(jsonl_path, lineno, line, expected=len(flows)))
    if len(flows) != header.flows:
        raise LabelsError(
            f"{jsonl_path}: header says {header.flows} flows, the file has {len(flows)}"
        )
    packet_flow = _read_packet_map(packets_path, len(flows))
    if len(packet_flow) != header.packets:
        raise LabelsError(
            f"{packets_path}: header says {header.packets} packets, the map has {len(packet_flow)}"
        )
    labels = Labels(header, flows, packet_flow)
    if check:
        _check(jsonl_path, labels)
    return labels


def _parse_header(path: str, line: str) -> LabelsHeader:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise LabelsError(f"{path}:1: header is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("kind") != KIND:
        raise LabelsError(f"{path}:1: not an ipsctl mix labels file (kind is not {KIND!r})")
    if obj.get("version") != VERSION:
        raise LabelsError(
            f"{path}:1: labels version {obj.get('version')!r}; this ipsctl reads version {VERSION}"
        )
    try:
        classes = {
            str(name): ClassCount(int(c["packets"]), int(c["flows"]))
            for name, c in obj["classes"].items()
        }
        known = {"kind", "version", "seed", "strategy", "packets", "flows", "classes"}
        return LabelsHeader(
            seed=int(obj["seed"]),
            strategy=str(obj["strategy"]),
            packets=int(obj["packets"]),
            flows=int(obj["flows"]),
            classes=classes,
            extra={k: v for k, v in obj.items() if k not in known},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LabelsError(f"{path}:1: bad header: {exc!r}") from exc


def _parse_flow(path: str, lineno: int, line: str, expected: int) -> FlowLabel:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise LabelsError(f"{path}:{lineno}: not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise LabelsError(f"{path}:{lineno}: a flow line must be a JSON object")
    for key, kind in _FLOW_KEYS.items():
        value = obj.get(key)
        if value is None or not isinstance(value, kind) or isinstance(value, bool):
            raise LabelsError(f"{path}:{lineno}: flow field {key!r} missing or of the wrong type")
    if obj["flow"] != expected:
        raise LabelsError(f"{path}:{lineno}: flow {obj['flow']} out of order (expected {expected})")
    return FlowLabel(
        flow=obj["flow"],
        cls=obj["class"],
        proto=obj["proto"],
        src=obj["src"],
        sport=obj["sport"],
        dst=obj["dst"],
        dport=obj["dport"],
        first_packet=obj["first_packet"],
        last_packet=obj["last_packet"],
        packets=obj["packets"],
        start=float(obj["start"]),
        end=float(obj["end"]),
        input=obj["input"],
        input_flow=_optional_int(obj, "input_flow", -1, path, lineno),
        round=_optional_int(obj, "round", 0, path, lineno),
    )


def _optional_int(obj: dict[str, Any], key: str, default: int, path: str, lineno: int) -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise LabelsError(f"{path}:{lineno}: flow field {key!r} of the wrong type")
    return value


def _read_packet_map(path: str, flows: int) -> array[int]:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise LabelsError(f"{path}: not a packet map (non-ASCII bytes)") from exc
    try:
        packet_flow = array("I", map(int, text.split()))
    except (ValueError, OverflowError) as exc:
        raise LabelsError(f"{path}: every line must be a flow index: {exc}") from exc
    if packet_flow and max(packet_flow) >= flows:
        bad = next(k for k, i in enumerate(packet_flow) if i >= flows)
        raise LabelsError(
            f"{path}:{bad + 1}: packet {bad} names flow {packet_flow[bad]}, "
            f"but there are {flows} flows"
        )
    return packet_flow


def _check(path: str, labels: Labels) -> None:
    n = len(labels.flows)
    counts = [0] * n
    first = [-1] * n
    last = [-1] * n
    for k, i in enumerate(labels.packet_flow):
        if counts[i] == 0:
            first[i] = k
        counts[i] += 1
        last[i] = k
    previous_first = -1
    for f in labels.flows:
        i = f.flow
        if (counts[i], first[i], last[i]) != (f.packets, f.first_packet, f.last_packet):
            raise LabelsError(
                f"{path}: flow {i} says {f.packets} packets from {f.first_packet} to "
                f"{f.last_packet}; the packet map has {counts[i]} from {first[i]} to {last[i]}"
            )
        if f.first_packet < previous_first:
            raise LabelsError(f"{path}: flow {i} is not in the order of its first packet")
        previous_first = f.first_packet
    # A class may be listed with no packets (an input the plan gave nothing to).
    declared = {name: c for name, c in labels.header.classes.items() if c.packets or c.flows}
    if class_counts(labels.flows) != declared:
        raise LabelsError(f"{path}: the header's per-class counts do not match the flows")
