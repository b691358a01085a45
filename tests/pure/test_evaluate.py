"""`ipsctl eval`: the numbers of a small crafted mix counted by hand, the matching rules one by
one, the JSON and the picture, the EVE path, and the usage errors (exit 2).

The crafted mix (tests/labelled.py) under its policy (one `match … to port 23 alert` rule and
`detect portscan ports 5 within 10s alert`), counted by hand:

  flows    benign 11 (10 HTTP + 1 telnet from a benign client), portscan 8, telnet 2 = 21
  packets  benign 11 x 4 = 44, portscan 8 x 2 = 16, telnet 2 x 2 = 4 = 64

  the rule alerts on every packet TO port 23:
    benign telnet flow: SYN, ACK, FIN/ACK of the client       3 false alerts, 1 benign flow
    telnet attack: the SYN of each of the 2 flows             2 true alerts, 2 flows
  the portscan detector fires once, at the 5th probe (t = 20.4 s, 0.4 s after the first):
    its window [20.4 - 10, 20.4] holds probes 1-5 of 10.9.1.66    1 true alert, 5 flows;
    probes 6-8 (20.5-20.7 s) come after its one alert              3 flows missed

  alerts   6: 3 true, 3 false                 alert precision 3/6 = 50 %
  flows    TP = 5 + 2 = 7, FN = 3, FP = 1, TN = 10
           precision 7/8 = 87.5 %, recall 7/10 = 70 %, FPR 1/11 = 9.09 %
  portscan recall 5/8 = 62.5 %; precision 1 / (1 + 3 false) = 25 %; 1 burst, found in 0.4 s
  telnet   recall 2/2 = 100 %; precision 2 / (2 + 3 false) = 40 %; 1 burst (40 s and 41 s
           are within the 10 s gap), found at its first packet: 0 s
  base rate 10/21 flows = 47.6 %, 20/64 packets = 31.25 %
  at 1 % attacks: 0.7 x 0.01 / (0.7 x 0.01 + 1/11 x 0.99) = 7.2 % of flagged flows true
"""

from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from labelled import POLICY, SCANNER, SERVER, T0, crafted_flows, crafted_mix, write_labelled
from packets import tcp

from ips.cli import main
from ips.core.events import Alert
from ips.evaluate import Scorer, evaluate, from_alert, from_eve
from ips.evaluate.align import clock_offset, flow_start_of
from ips.evaluate.detections import BLOCK, DETECTOR, RULE, Detection, eve_time
from ips.evaluate.report import table
from ips.evaluate.score import ppv
from ips.evaluate.timeline import timeline_svg
from ips.lab.wire import LinkFacts, WireError, lab_interface_refusal, parse_mac, replay_to
from ips.mix.labels import FlowLabel
from ips.sinks.eve import alert_record


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def mix(tmp_path: Path) -> tuple[Path, Path]:
    policy = tmp_path / "eval.rules"
    policy.write_text(POLICY)
    return policy, crafted_mix(tmp_path)


def eval_json(*args: str) -> dict:
    code, out, err = run("eval", *args, "--json")
    assert code == 0, err
    return json.loads(out)


# ---- the hand count ----------------------------------------------------------------------


def test_the_crafted_mix_gives_the_hand_count(mix: tuple[Path, Path]) -> None:
    policy, capture = mix
    out = eval_json(str(policy), str(capture))
    t = out["totals"]
    assert (t["alerts"], t["true_alerts"], t["false_alerts"]) == (6, 3, 3)
    assert t["alert_precision"] == pytest.approx(0.5)
    assert (t["tp"], t["fn"], t["fp"], t["tn"]) == (7, 3, 1, 10)
    assert t["precision"] == pytest.approx(7 / 8)
    assert t["recall"] == pytest.approx(0.7)
    assert t["fpr"] == pytest.approx(1 / 11)
    assert t["unmatched_alerts"] == 0

    classes = {r["class"]: r for r in out["classes"]}
    scan, telnet = classes["portscan"], classes["telnet"]
    assert (scan["flows"], scan["packets"], scan["detected"], scan["missed"]) == (8, 16, 5, 3)
    assert scan["recall"] == pytest.approx(5 / 8)
    assert scan["alerts"] == 1 and scan["precision"] == pytest.approx(1 / 4)
    assert (scan["episodes"], scan["episodes_detected"]) == (1, 1)
    assert scan["time_to_detect"]["first"] == pytest.approx(0.4, abs=0.002)
    assert (telnet["flows"], telnet["detected"], telnet["alerts"]) == (2, 2, 2)
    assert telnet["precision"] == pytest.approx(2 / 5)
    assert telnet["episodes"] == 1 and telnet["time_to_detect"]["first"] == 0.0
    assert out["benign"] == {
        "class": "benign",
        "flows": 11,
        "packets": 44,
        "flagged": 1,
        "fpr": pytest.approx(1 / 11),
        "flagged_examples": [{"flow": 10, "input": "crafted", "by": [f"rule {policy}:2"]}],
    }

    keys = {r["key"]: r for r in out["detectors"]}
    assert set(keys) == {"portscan", f"rule {policy}:2"}
    ps, rule = keys["portscan"], keys[f"rule {policy}:2"]
    assert (ps["alerts"], ps["true_alerts"], ps["detected"], ps["benign_flagged"]) == (
        1,
        1,
        {"portscan": 5},
        0,
    )
    assert ps["recall_all"] == pytest.approx(0.5) and ps["fpr"] == 0.0
    assert (rule["alerts"], rule["true_alerts"], rule["false_alerts"]) == (5, 2, 3)
    assert rule["detected"] == {"telnet": 2} and rule["benign_flagged"] == 1
    assert rule["precision"] == pytest.approx(0.4) and rule["recall_all"] == pytest.approx(0.2)

    b = out["base_rate"]
    assert (b["attack_flows"], b["all_flows"], b["attack_packets"], b["all_packets"]) == (
        10,
        21,
        20,
        64,
    )
    assert b["flows"] == pytest.approx(10 / 21) and b["packets"] == pytest.approx(20 / 64)
    at_one = 0.7 * 0.01 / (0.7 * 0.01 + (1 / 11) * 0.99)
    assert b["precision_at_warning"] == pytest.approx(at_one)
    assert b["precision_here"] == pytest.approx(7 / 8)  # Bayes at this base rate = TP/(TP+FP)


def test_the_table_states_the_base_rate_and_its_warning(mix: tuple[Path, Path]) -> None:
    policy, capture = mix
    code, out, err = run("eval", str(policy), str(capture))
    assert code == 0, err
    assert "portscan" in out and "62.5%" in out and "TP 7  FP 1  FN 3  TN 10" in out
    assert "base rate: 10 of 21 flows are attacks (47.6%)" in out
    assert "at 1.0% attacks" in out and "only 7.2% of the flagged flows" in out


def test_json_and_svg(mix: tuple[Path, Path], tmp_path: Path) -> None:
    policy, capture = mix
    svg = tmp_path / "timeline.svg"
    out = eval_json(str(policy), str(capture), "--svg", str(svg))
    assert set(out) >= {"labels", "source", "matching", "base_rate", "totals", "classes",
                        "benign", "detectors", "episodes"}  # fmt: skip
    assert out["matching"] == {"slack": 0.0, "gap": 10.0}
    assert out["source"]["packets"] == 64 and out["source"]["alerts"] == 6
    assert [(e["class"], e["flows"]) for e in out["episodes"]] == [("portscan", 8), ("telnet", 2)]
    root = ET.fromstring(svg.read_text())  # well-formed
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert {"portscan", "telnet"} <= set(texts)
    assert any(t.startswith("portscan (1)") for t in texts)
    lines = list(root.iter("{http://www.w3.org/2000/svg}line"))
    assert sum(1 for ln in lines if ln.get("stroke") == "#c0392b") == 3  # the false alerts


# ---- the matching rules, one by one -------------------------------------------------------


def flow(i: int, cls: str, src: str, dst: str, start: float, end: float, **kw: int) -> FlowLabel:
    return FlowLabel(
        flow=i,
        cls=cls,
        proto=kw.get("proto", 6),
        src=src,
        sport=kw.get("sport", 1000 + i),
        dst=dst,
        dport=kw.get("dport", 80),
        first_packet=i,
        last_packet=i,
        packets=1,
        start=start,
        end=end,
        input="t",
    )


def detector(time: float, src: str, dst: str = "10.0.0.9", **kw: object) -> Detection:
    return Detection(
        time,
        DETECTOR,
        str(kw.get("key", "portscan")),
        6,
        src,
        1,
        dst,
        2,
        frozenset(kw.get("sources", {src})),  # type: ignore[arg-type]
        frozenset(kw.get("victims", set())),  # type: ignore[arg-type]
        float(kw.get("window", 5.0)),  # type: ignore[arg-type]
    )


def test_a_detector_alert_matches_the_flows_its_source_began_within_its_window() -> None:
    flows = [
        flow(0, "scan", "10.0.0.66", "10.0.0.9", 10.0, 10.1),  # in [15 - 5, 15]
        flow(1, "scan", "10.0.0.66", "10.0.0.9", 4.0, 8.5),  # ended before the window
        flow(2, "scan", "10.0.0.66", "10.0.0.9", 15.5, 16.0),  # after the alert
        flow(3, "benign", "10.0.0.1", "10.0.0.66", 12.0, 13.0),  # the scanner as responder
        flow(4, "benign", "10.0.0.2", "10.0.0.9", 12.0, 13.0),  # the victim's other client
    ]
    ev = evaluate(flows, [detector(15.0, "10.0.0.66")])
    assert (ev.totals["tp"], ev.totals["fn"], ev.totals["fp"]) == (1, 2, 0)
    # the same alert with one second of slack reaches the flow started 0.5 s after it
    ev = evaluate(flows, [detector(15.0, "10.0.0.66")], slack=1.0)
    assert ev.totals["tp"] == 2


def test_a_victim_naming_alert_matches_the_flows_its_victim_answered() -> None:
    flows = [
        flow(0, "synflood", "198.51.100.1", "10.0.0.9", 1.0, 1.0),
        flow(1, "synflood", "198.51.100.2", "10.0.0.9", 1.2, 1.2),
        flow(2, "benign", "10.0.0.1", "10.0.0.9", 1.1, 3.0),  # collateral: flagged too
        flow(3, "benign", "10.0.0.9", "10.0.0.1", 1.1, 3.0),  # the victim as initiator: not
    ]
    alert = detector(1.5, "198.51.100.2", sources=set(), victims={"10.0.0.9"}, key="synflood")
    ev = evaluate(flows, [alert])
    assert (ev.totals["tp"], ev.totals["fp"], ev.totals["true_alerts"]) == (2, 1, 1)


def test_per_dst_and_distributed_alerts_blame_the_victim() -> None:
    base = Alert(
        1.0, 1, 4, 6, bytes([198, 51, 100, 1]), 1, bytes([10, 0, 0, 9]), 80,
        action="allowed", signature_id=1, signature="s", severity=2, category="synflood",
        rule_name="detect synflood",
        extra={"source": "198.51.100.1", "target": "10.0.0.9", "per": "dst", "window": 1.0},
    )  # fmt: skip
    det = from_alert(base)
    assert (det.sources, det.victims, det.window) == (frozenset(), {"10.0.0.9"}, 1.0)
    base.extra = {"source": "198.51.100.1", "target": "10.0.0.9", "per": "src"}
    det = from_alert(base)
    assert (det.sources, det.victims, det.window) == ({"198.51.100.1"}, frozenset(), 10.0)
    base.extra = {"target": "10.0.0.9", "sources": ["a", "b"], "window": 300}
    assert from_alert(base).victims == {"10.0.0.9"}


def test_a_rule_alert_matches_its_packets_flow_only_and_a_reused_port_the_later_flow() -> None:
    flows = [
        flow(0, "benign", "10.0.0.1", "10.0.0.9", 1.0, 2.0, sport=5000),
        flow(1, "exploit", "10.0.0.1", "10.0.0.9", 2.0, 3.0, sport=5000),  # port reused
        flow(2, "exploit", "10.0.0.1", "10.0.0.9", 2.0, 3.0, sport=5001),
    ]
    # the answer's direction names the flow too; at 2.0 both flows of port 5000 are active
    alert = Detection(2.0, RULE, "rule r", 6, "10.0.0.9", 80, "10.0.0.1", 5000)
    ev = evaluate(flows, [alert])
    assert (ev.totals["tp"], ev.totals["fp"], ev.totals["fn"]) == (1, 0, 1)
    # out of every span: names no labelled flow, a false alert
    ev = evaluate(flows, [Detection(9.0, RULE, "rule r", 6, "10.0.0.9", 80, "10.0.0.1", 5000)])
    assert (ev.totals["false_alerts"], ev.totals["unmatched_alerts"]) == (1, 1)


def test_icmp_is_matched_by_addresses_alone() -> None:
    flows = [flow(0, "icmpflood", "10.0.0.66", "10.0.0.9", 1.0, 2.0, proto=1, sport=7, dport=0)]
    alert = Detection(1.5, RULE, "rule r", 1, "10.0.0.66", 0, "10.0.0.9", 0)
    assert evaluate(flows, [alert]).totals["tp"] == 1


def test_a_block_detects_the_flows_it_covers_and_is_not_an_alert() -> None:
    """Inline, a blocked attacker's later flows are dropped before any alert names them: the
    block detected them. A drop that ends a flow early does not shorten its labelled span."""
    flows = [
        flow(0, "scan", "10.0.0.66", "10.0.0.9", 1.0, 1.0),
        flow(1, "scan", "10.0.0.66", "10.0.0.9", 30.0, 30.0),  # under the block
        flow(2, "scan", "10.0.0.66", "10.0.0.9", 80.0, 80.0),  # after it expired
    ]
    block = Detection(
        1.0, BLOCK, "portscan", 0, "10.0.0.66", 0, "", 0, frozenset({"10.0.0.66"}), until=61.0
    )
    ev = evaluate(flows, [detector(1.0, "10.0.0.66"), block])
    assert (ev.totals["tp"], ev.totals["fn"], ev.totals["alerts"]) == (2, 1, 1)
    row = next(r for r in ev.keys if r["key"] == "portscan")
    assert (row["alerts"], row["blocks"], row["true_blocks"]) == (1, 1, 1)


def test_bursts_split_at_the_gap_and_time_to_detect_is_per_burst() -> None:
    flows = [
        flow(0, "ddos", "10.0.0.66", "10.0.0.9", 0.0, 1.0),
        flow(1, "ddos", "10.0.0.66", "10.0.0.9", 5.0, 6.0),  # 4 s after: same burst
        flow(2, "ddos", "10.0.0.66", "10.0.0.9", 100.0, 101.0),  # a second burst
    ]
    ev = evaluate(flows, [detector(5.5, "10.0.0.66", window=1.0)], gap=10.0)
    row = ev.classes[0]
    assert (row["episodes"], row["episodes_detected"]) == (2, 1)
    assert row["time_to_detect"]["first"] == pytest.approx(5.5)
    ev = evaluate(flows, [detector(5.5, "10.0.0.66", window=1.0)], gap=1.0)
    assert ev.classes[0]["episodes"] == 3


def test_no_false_positive_speaks_of_the_rule_of_three() -> None:
    flows = [flow(i, "benign", f"10.0.1.{i}", "10.0.0.9", i, i + 0.5) for i in range(100)]
    flows.append(flow(100, "scan", "10.0.0.66", "10.0.0.9", 200.0, 200.0))
    ev = evaluate(flows, [detector(200.0, "10.0.0.66")])
    assert ev.base_rate["fpr_upper_95"] == pytest.approx(0.03)
    text = table(ev)
    assert "below 3.0%" in text and "rule of three" in text
    assert ppv(0.01, 1.0, 0.03) == pytest.approx(0.01 / (0.01 + 0.03 * 0.99))


# ---- EVE ----------------------------------------------------------------------------------


def test_eve_time_is_the_calendars() -> None:
    rng = random.Random(7)
    for _ in range(200):
        t = round(rng.uniform(0, 4e9), 6)
        stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")
        assert eve_time(stamp) == pytest.approx(t, abs=1e-6)
    assert eve_time("2024-05-01T12:00:00.5+0200") == pytest.approx(1714557600.5)
    assert eve_time("2024-05-01T12:00:00Z") == 1714564800.0
    for bad in ("", "yesterday", "2024-13-01T00:00:00Z", "2024-05-01T12:00:00+xx", 5, None):
        assert eve_time(bad) is None


def test_an_eve_alert_is_read_as_the_engines_alert() -> None:
    alert = Alert(
        T0 + 0.25, 1, 4, 6, bytes([10, 9, 1, 66]), 50000, bytes([10, 9, 2, 10]), 22,
        action="allowed", signature_id=9, signature="portscan", severity=2,
        category="portscan", rule_name="detect portscan",
        extra={"source": "10.9.1.66", "target": "10.9.2.10", "window": 10.0},
    )  # fmt: skip
    record = json.loads(json.dumps(alert_record(alert)))
    assert from_eve(record) == from_alert(alert)
    alert.category, alert.extra, alert.rule_name = "policy", None, "x.rules:3"
    record = json.loads(json.dumps(alert_record(alert)))
    assert from_eve(record) == from_alert(alert)
    assert from_eve({"event_type": "alert", "timestamp": "bad", "src_ip": "1.2.3.4"}) is None
    assert from_eve({"event_type": "flow"}) is None


def test_eval_of_an_offline_eve_file_equals_the_offline_eval(
    mix: tuple[Path, Path], tmp_path: Path
) -> None:
    """`replay --eve` writes the capture's own times: the EVE path scores the same."""
    policy, capture = mix
    eve = tmp_path / "eve.json"
    code, _, err = run("replay", str(policy), str(capture), "--eve", str(eve))
    assert code == 0, err
    with eve.open("a") as f:
        f.write('{"event_type": "alert", "truncated\n')  # a line cut by a crash: counted
    offline = eval_json(str(policy), str(capture))
    by_eve = eval_json("--eve", str(eve), "--labels", str(capture))
    assert by_eve["source"]["clock_offset"] == pytest.approx(0.0, abs=1e-5)
    assert by_eve["source"]["aligned_flows"] == 21 and by_eve["source"]["malformed_lines"] == 1
    assert by_eve["totals"] == offline["totals"]
    assert by_eve["classes"] == offline["classes"]


def test_the_clock_offset_is_measured_from_flow_records() -> None:
    flows = [f for f in crafted_flows()]
    labels = [
        FlowLabel(i, f.cls, 6, f.src, f.sport, f.dst, f.dport, 0, 0, 1, f.packets[0][0],
                  f.packets[-1][0], "x")
        for i, f in enumerate(flows)
    ]  # fmt: skip
    shift = 96_000_000.25
    starts = [
        ((6, f.src, f.sport, f.dst, f.dport), T0 + (f.start - T0) / 4 + shift) for f in labels
    ]
    starts.append(((6, "1.1.1.1", 1, "2.2.2.2", 2), 5.0))  # not labelled: left out
    found = clock_offset(starts, labels, speed=4)
    assert found is not None
    assert found[0] == pytest.approx(shift) and found[1] == len(labels)
    assert clock_offset([], labels) is None
    record = {
        "event_type": "flow",
        "proto": "TCP",
        "src_ip": SCANNER,
        "src_port": 50000,
        "dest_ip": SERVER,
        "dest_port": 22,
        "flow": {"start": "2023-11-14T22:13:20.000000+0000"},
    }
    assert flow_start_of(record) == ((6, SCANNER, 50000, SERVER, 22), T0)


# ---- usage errors: exit 2, a clear message --------------------------------------------------


def test_missing_labels_exit_2(mix: tuple[Path, Path], tmp_path: Path) -> None:
    policy, capture = mix
    other = tmp_path / "other.pcap"
    other.write_bytes(capture.read_bytes())
    code, _, err = run("eval", str(policy), str(other))
    assert code == 2 and "other.labels.jsonl" in err and "give --labels" in err
    code, _, err = run("eval", str(policy), str(other), "--labels", str(tmp_path / "no.jsonl"))
    assert code == 2 and "no.jsonl" in err and "cannot read" in err


def test_labels_of_another_capture_exit_2(mix: tuple[Path, Path], tmp_path: Path) -> None:
    policy, capture = mix
    elsewhere = tmp_path / "later"
    elsewhere.mkdir()
    later = crafted_mix(elsewhere, t0=T0 + 3600)
    code, _, err = run("eval", str(policy), str(later), "--labels", str(capture))
    assert code == 2 and "does not match its labels" in err and "first packet" in err
    # the same first packet, one packet more: the counts differ
    flows = crafted_flows()
    flows[-1].packets.append((T0 + 50, tcp("10.9.1.77", SERVER, 52001, 23, flags="A")))
    longer = write_labelled(elsewhere / "longer.pcap", flows)
    code, _, err = run("eval", str(policy), str(longer), "--labels", str(capture))
    assert code == 2 and "65 packets in the capture, 64 in the labels" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give POLICY and CAPTURE"),
        (["p.rules"], "give POLICY and CAPTURE"),
        (["--eve", "eve.json"], "--eve needs --labels"),
        (["p.rules", "c.pcap", "--eve", "eve.json"], "give no POLICY or CAPTURE"),
        (["p.rules", "c.pcap", "--offset", "3"], "--offset and --speed go with --eve"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    code, _, err = run("eval", *args)
    assert code == 2 and message in err, err


def test_an_eve_file_that_cannot_be_aligned_exit_2(mix: tuple[Path, Path], tmp_path: Path) -> None:
    _, capture = mix
    eve = tmp_path / "eve.json"
    eve.write_text('{"event_type": "stats", "timestamp": "2026-01-01T00:00:00+0000"}\n')
    code, _, err = run("eval", "--eve", str(eve), "--labels", str(capture))
    assert code == 2 and "--offset" in err
    code, _, err = run("eval", "--eve", str(tmp_path / "none.json"), "--labels", str(capture))
    assert code == 2 and "none.json" in err
    # with --offset given, an EVE file without flows is scored (nothing detected)
    out = eval_json("--eve", str(eve), "--labels", str(capture), "--offset", "0")
    assert out["totals"]["tp"] == 0 and out["totals"]["fn"] == 10


# ---- replay --to: only lab interfaces -------------------------------------------------------


def facts(**kw: object) -> LinkFacts:
    values: dict[str, object] = {
        "iface": "eth0",
        "exists": True,
        "namespace": "ipl-attacker",
        "initial_namespace": None,
        "loopback_alias": "ipsctl-lab:ipl-",
        "kind": "veth",
    }
    values.update(kw)
    return LinkFacts(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"initial_namespace": True}, "host's own network namespace"),
        ({"namespace": None}, "not in a named network namespace"),
        ({"loopback_alias": ""}, "not an ipsctl lab's"),
        ({"loopback_alias": "ipsctl-lab:other-"}, "not an ipsctl lab's"),
        ({"exists": False}, "no interface 'eth0'"),
        ({"kind": "bridge"}, "not a veth (link kind bridge)"),
        ({"kind": ""}, "not a veth"),
    ],
)
def test_replay_to_refuses_what_is_not_a_lab_interface(
    change: dict[str, object], message: str
) -> None:
    assert lab_interface_refusal(facts()) is None
    refusal = lab_interface_refusal(facts(**change))
    assert refusal is not None and message in refusal
    with pytest.raises(WireError, match=re.escape(message)):
        replay_to("no.pcap", "eth0", facts=facts(**change))


def test_replay_to_from_the_host_namespace_exits_2(mix: tuple[Path, Path]) -> None:
    _, capture = mix
    code, _, err = run("replay", "--to", "lo", str(capture))
    assert code == 2 and "ipsctl replay: --to lo:" in err
    code, _, err = run("replay", "--to", "lo", "p.rules", str(capture))
    assert code == 2 and "one CAPTURE" in err
    code, _, err = run("replay", "--speed", "2", "p.rules", str(capture))
    assert code == 2 and "go with --to" in err


def test_mac_addresses() -> None:
    assert parse_mac("02:00:00:00:00:01") == bytes([2, 0, 0, 0, 0, 1])
    for bad in ("02:00:00:00:00", "zz:00:00:00:00:01", "0200.0000.0001"):
        with pytest.raises(WireError):
            parse_mac(bad)


def test_scorer_takes_detections_in_any_order() -> None:
    flows = [flow(0, "scan", "10.0.0.66", "10.0.0.9", 1.0, 1.0)]
    scorer = Scorer(flows)
    scorer.add(detector(3.0, "10.0.0.66"))
    scorer.add(detector(2.0, "10.0.0.66"))
    assert scorer.result().episodes[0].detected_at == 2.0


class FakeSocket:
    """A packet socket that records what it is asked to send (no root needed)."""

    sent: ClassVar[list[bytes]] = []

    def __init__(self, *args: object) -> None:
        FakeSocket.sent = []

    def bind(self, address: object) -> None:
        self.address = address

    def send(self, frame: bytes) -> int:
        FakeSocket.sent.append(frame)
        return len(frame)

    def close(self) -> None:
        pass


def test_replay_to_paces_frames_and_dresses_raw_ip(
    mix: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, capture = mix
    monkeypatch.setattr("ips.lab.wire.socket.socket", FakeSocket)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    mac = bytes.fromhex("0a0000000066")
    lab = facts(mac=mac, mtu=1500)
    result = replay_to(
        str(capture), "eth0", speed=4, facts=lab, clock=lambda: now[0], wall=lambda: 5.0,
        sleep=sleep,
    )  # fmt: skip
    assert result.sent == 64 and len(FakeSocket.sent) == 64 and not result.skipped
    frame = FakeSocket.sent[0]
    assert frame[:6] == bytes([2, 0, 0, 0, 0, 1]) and frame[6:12] == mac
    assert frame[12:14] == b"\x08\x00" and frame[14] >> 4 == 4
    # the capture spans 41.01 s; at 4 times its pace the last frame goes out at 10.2525 s
    assert result.planned == pytest.approx(41.01 / 4)
    assert now[0] == pytest.approx(41.01 / 4)
    assert result.as_dict()["clock_offset"] == pytest.approx(5.0 - T0)

    now[0] = 0.0
    result = replay_to(
        str(capture), "eth0", pps=10, limit=20, facts=lab, clock=lambda: now[0], sleep=sleep
    )
    assert result.sent == 20 and result.planned == pytest.approx(1.9)

    small = facts(mac=mac, mtu=39)  # every frame of the capture is longer: skipped, counted
    result = replay_to(str(capture), "eth0", facts=small, clock=lambda: 0.0, sleep=sleep)
    assert result.sent == 0 and result.skipped == {"longer than the MTU": 64}


def test_drops_count_packets_refused_without_an_alert(mix: tuple[Path, Path]) -> None:
    """--drops: a silent `drop` detects its packet's flow (not an alert). Here the 8th probe
    (port 445, after the detector's one alert: missed before) and one benign HTTP flow."""
    policy, capture = mix
    policy.write_text(
        POLICY + "drop proto tcp to port 445\ndrop proto tcp from 10.9.1.1 to port 80\n"
    )
    plain = eval_json(str(policy), str(capture))["totals"]
    assert (plain["tp"], plain["fp"]) == (7, 1)
    out = eval_json(str(policy), str(capture), "--drops")
    t = out["totals"]
    assert (t["tp"], t["fn"], t["fp"], t["tn"]) == (8, 2, 2, 9)
    assert (t["alerts"], t["true_alerts"]) == (6, 3)  # drops are not alerts
    keys = {r["key"]: r for r in out["detectors"]}
    assert keys[f"drop {policy}:4"]["drops"] == 1 and keys[f"drop {policy}:4"]["true_drops"] == 1
    assert keys[f"drop {policy}:5"]["drops"] == 3  # SYN, ACK, FIN of the client; not the reply
    assert keys[f"drop {policy}:5"]["benign_flagged"] == 1
    code, _, err = run("eval", "--eve", "e.json", "--labels", str(capture), "--drops")
    assert code == 2 and "--drops" in err


def test_the_timeline_draws_the_mix_windows() -> None:
    flows = [flow(0, "scan", "10.0.0.66", "10.0.0.9", 12.0, 13.0)]
    ev = evaluate(flows, [detector(12.5, "10.0.0.66")])
    windows = [
        {"start": 0.0, "end": 10.0, "classes": {"benign": {"packets": 70}}},
        {
            "start": 10.0,
            "end": 20.0,
            "classes": {"benign": {"packets": 70}, "scan": {"packets": 30}},
        },
        {"start": "bad"},  # not a window: left out
    ]
    root = ET.fromstring(timeline_svg(ev, 0.0, 20.0, "t", windows))
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "mix windows" in texts and "benign" in texts and "scan 30%" in texts
    one = ET.fromstring(timeline_svg(ev, 0.0, 20.0, "t", windows[:1]))
    assert "mix windows" not in [t.text for t in one.iter("{http://www.w3.org/2000/svg}text")]
