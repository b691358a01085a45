"""The labels files of `ipsctl mix` (the contract `ipsctl eval` reads): written, read back, and
every inconsistency refused with the file named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ips.mix.labels import (
    ClassCount,
    FlowLabel,
    LabelsError,
    LabelsHeader,
    labels_paths,
    read_labels,
    write_labels,
)


def _flow(i: int, cls: str, first: int, last: int, packets: int) -> FlowLabel:
    return FlowLabel(
        flow=i,
        cls=cls,
        proto=6,
        src=f"10.50.1.{i + 1}",
        sport=40000 + i,
        dst="10.50.9.1",
        dport=80,
        first_packet=first,
        last_packet=last,
        packets=packets,
        start=1_700_000_000.0 + first,
        end=1_700_000_000.0 + last,
        input="benign.pcap" if cls == "benign" else "ddos.pcap",
    )


# Packets 0..5: flow 0 (benign) = 0, 2, 5; flow 1 (ddos) = 1, 3; flow 2 (benign) = 4.
PACKET_FLOW = [0, 1, 0, 1, 2, 0]
FLOWS = [_flow(0, "benign", 0, 5, 3), _flow(1, "ddos", 1, 3, 2), _flow(2, "benign", 4, 4, 1)]
HEADER = LabelsHeader(
    seed=7,
    strategy="proportional benign=80 ddos=20",
    packets=6,
    flows=3,
    classes={"benign": ClassCount(4, 2), "ddos": ClassCount(2, 1)},
)


def _write(tmp_path: Path) -> Path:
    out = tmp_path / "mixed.pcapng"
    write_labels(out, HEADER, FLOWS, iter(PACKET_FLOW))
    return out


def test_paths_from_the_capture_or_the_labels_file() -> None:
    expected = ("/x/out.labels.jsonl", "/x/out.labels.packets")
    assert labels_paths("/x/out.pcapng") == expected
    assert labels_paths("/x/out.labels.jsonl") == expected
    assert labels_paths("/x/out.labels.packets") == expected
    assert labels_paths("/x/out") == expected


def test_round_trip(tmp_path: Path) -> None:
    out = _write(tmp_path)
    labels = read_labels(out)
    assert labels.header == HEADER
    assert labels.flows == FLOWS
    assert list(labels.packet_flow) == PACKET_FLOW
    assert labels.packet_classes() == ["benign", "ddos", "benign", "ddos", "benign", "benign"]
    assert labels.class_of(3) == "ddos"
    assert labels.flow_of(4).src == "10.50.1.3"
    # The same through the labels file's own path.
    assert read_labels(tmp_path / "mixed.labels.jsonl").flows == FLOWS


def test_the_file_is_the_contract(tmp_path: Path) -> None:
    out = _write(tmp_path)
    lines = (tmp_path / "mixed.labels.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header == {
        "kind": "ipsctl-mix-labels",
        "version": 1,
        "seed": 7,
        "strategy": "proportional benign=80 ddos=20",
        "packets": 6,
        "flows": 3,
        "classes": {"benign": {"packets": 4, "flows": 2}, "ddos": {"packets": 2, "flows": 1}},
    }
    first = json.loads(lines[1])
    assert list(first) == [
        "flow", "class", "proto", "src", "sport", "dst", "dport", "first_packet",
        "last_packet", "packets", "start", "end", "input", "input_flow", "round",
    ]  # fmt: skip
    assert first["class"] == "benign" and first["start"] == 1_700_000_000.0
    assert (tmp_path / "mixed.labels.packets").read_text() == "0\n1\n0\n1\n2\n0\n"
    assert out.name == "mixed.pcapng"


def test_unknown_keys_are_kept_and_ignored(tmp_path: Path) -> None:
    _write(tmp_path)
    path = tmp_path / "mixed.labels.jsonl"
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["generator"] = "a newer ipsctl"
    flow = json.loads(lines[1])
    flow["note"] = "added later"
    path.write_text("\n".join([json.dumps(header), json.dumps(flow), *lines[2:]]) + "\n")
    labels = read_labels(path)
    assert labels.header.extra == {"generator": "a newer ipsctl"}
    assert labels.flows == FLOWS


def _corrupt(tmp_path: Path, which: str, edit: object) -> Path:
    _write(tmp_path)
    path = tmp_path / f"mixed.labels.{which}"
    text = path.read_text()
    path.write_text(edit(text))  # type: ignore[operator]
    return path


@pytest.mark.parametrize(
    ("which", "edit", "message"),
    [
        ("jsonl", lambda t: "", "empty file"),
        ("jsonl", lambda t: "not json\n", "header is not JSON"),
        ("jsonl", lambda t: t.replace('"ipsctl-mix-labels"', '"other"'), "not an ipsctl mix"),
        ("jsonl", lambda t: t.replace('"version": 1', '"version": 2', 1), "labels version 2"),
        ("jsonl", lambda t: t.replace('"flows": 3', '"flows": 4', 1), "header says 4 flows"),
        ("jsonl", lambda t: t.replace('"flow": 1,', '"flow": 5,'), "out of order"),
        ("jsonl", lambda t: t.replace('"dport": 80', '"dport": "80"', 1), "'dport'"),
        ("jsonl", lambda t: t.replace('"packets": 4, "flows": 2', '"packets": 5, "flows": 2'),
         "per-class counts"),
        ("packets", lambda t: t + "0\n", "header says 6 packets"),
        ("packets", lambda t: t.replace("2\n", "9\n"), "names flow 9"),
        ("packets", lambda t: t.replace("2\n", "x\n"), "must be a flow index"),
        ("packets", lambda t: "1\n0\n0\n1\n2\n0\n", "flow 0 says 3 packets from 0 to 5"),
    ],
)  # fmt: skip
def test_inconsistent_files_are_refused(
    tmp_path: Path, which: str, edit: object, message: str
) -> None:
    _corrupt(tmp_path, which, edit)
    with pytest.raises(LabelsError, match=message):
        read_labels(tmp_path / "mixed.pcapng")


def test_a_missing_file_is_a_labels_error(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="cannot read"):
        read_labels(tmp_path / "none.pcapng")
    _write(tmp_path)
    (tmp_path / "mixed.labels.packets").unlink()
    with pytest.raises(LabelsError, match=r"mixed\.labels\.packets: cannot read"):
        read_labels(tmp_path / "mixed.pcapng")


def test_empty_mix(tmp_path: Path) -> None:
    header = LabelsHeader(seed=0, strategy="proportional", packets=0, flows=0, classes={})
    write_labels(tmp_path / "e.pcapng", header, [], [])
    labels = read_labels(tmp_path / "e.pcapng")
    assert labels.flows == [] and len(labels.packet_flow) == 0
