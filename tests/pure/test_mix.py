"""`ipsctl mix` end to end, on captures the tests build: the same seed gives the same bytes,
ratios hold within 1 % over 100,000 packets, timeline bursts stay in their windows, flows stay
whole, the labels match every packet of the output, checksums stay right, bad input is refused
with exit 2 and malformed packets are counted; tshark reads the output and its comments."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import shutil
import struct
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ips.cli import main
from ips.core.build import build_packet
from ips.core.craft import checksum, l4_checksum
from ips.core.decode import decode_frame
from ips.core.packet import LINKTYPE_ETHERNET, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Packet
from ips.io.pcap import CaptureRecord, read_capture, write_pcap
from ips.mix.index import index_capture
from ips.mix.labels import Labels, read_labels
from ips.mix.mixer import MixReport, MixRequest, run_mix
from ips.mix.plan import FlowSummary, plan_mix
from ips.mix.spec import SpecError, Window, parse_networks, parse_ratios, parse_timeline

T0 = 1_700_000_000.0
ETH = bytes.fromhex("020000000001020000000002") + b"\x08\x00"
ETH6 = bytes.fromhex("020000000001020000000002") + b"\x86\xdd"


# ---- inputs the tests build ----------------------------------------------------------------


def _benign(path: Path, flows: int, span: float, seed: int) -> int:
    """TCP connections (handshake, data, close), DNS over UDP and some IPv6, as raw IP."""
    rng = random.Random(seed)
    records: list[tuple[float, bytes]] = []
    for i in range(flows):
        start = T0 + rng.random() * span
        kind = i % 10
        if kind == 9:  # IPv6 TCP
            client, server = f"2001:db8:1::{i % 500 + 1:x}", f"2001:db8:2::{i % 7 + 1:x}"
        else:
            client, server = f"192.168.{i % 4}.{i % 250 + 1}", f"172.16.0.{i % 20 + 1}"
        cport = 20000 + i % 40000
        if kind == 8:  # DNS
            records.append(
                (start, build_packet(PROTO_UDP, client, server, cport, 53, payload=b"q" * 30))
            )
            records.append(
                (
                    start + 0.01,
                    build_packet(PROTO_UDP, server, client, 53, cport, payload=b"a" * 60),
                )
            )
            continue
        t = start
        story = [("c", 0x02, b""), ("s", 0x12, b""), ("c", 0x10, b"")]
        for _ in range(rng.randrange(1, 6)):
            story.append(("c", 0x18, b"GET / HTTP/1.1\r\n\r\n"))
            story.append(("s", 0x18, b"x" * rng.randrange(1, 400)))
        story += [("c", 0x11, b""), ("s", 0x11, b""), ("c", 0x10, b"")]
        for who, flags, payload in story:
            src, dst, sp, dp = (
                (client, server, cport, 443) if who == "c" else (server, client, 443, cport)
            )
            records.append(
                (t, build_packet(PROTO_TCP, src, dst, sp, dp, flags=flags, payload=payload))
            )
            t += rng.random() * 0.05
    records.sort(key=lambda r: r[0])
    return write_pcap(path, records)


def _synflood(path: Path, packets: int, rate: float, seed: int) -> int:
    """Spoofed SYNs at one victim, Ethernet-framed: one-packet flows."""
    rng = random.Random(seed)
    records = []
    for i in range(packets):
        src = str(ipaddress.IPv4Address(0x0B000000 + rng.randrange(1 << 20)))
        p = build_packet(PROTO_TCP, src, "198.51.100.7", rng.randrange(1024, 65535), 80, flags=0x02)
        records.append((T0 + 100 + i / rate, ETH + p))
    return write_pcap(path, records, linktype=LINKTYPE_ETHERNET)


def _portscan(path: Path, ports: int) -> int:
    """One scanner, one target, SYN then RST/ACK per port, a millisecond apart."""
    records = []
    for port in range(1, ports + 1):
        t = T0 + 50 + port / 1000
        records.append(
            (t, build_packet(PROTO_TCP, "203.0.113.66", "198.51.100.9", 55555, port, flags=0x02))
        )
        records.append(
            (
                t + 0.0002,
                build_packet(PROTO_TCP, "198.51.100.9", "203.0.113.66", port, 55555, flags=0x14),
            )
        )
    return write_pcap(path, records)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mix-inputs")
    paths = {
        "benign": d / "benign.pcap",
        "ddos": d / "synflood.pcap",
        "scan": d / "portscan.pcap",
        "small": d / "small-benign.pcap",
    }
    _benign(paths["benign"], 10_000, 600.0, seed=1)  # about 90,000 packets
    _synflood(paths["ddos"], 25_000, 2000.0, seed=2)
    _portscan(paths["scan"], 2000)
    _benign(paths["small"], 300, 60.0, seed=3)
    return paths


# ---- reading an output back ----------------------------------------------------------------


def _comments(path: Path) -> list[str]:
    """Every Enhanced Packet Block's comment, in order (a minimal pcapng walk)."""
    data = path.read_bytes()
    out = []
    i = 0
    while i < len(data):
        btype, total = struct.unpack_from("<II", data, i)
        if btype == 6:
            caplen = struct.unpack_from("<I", data, i + 20)[0]
            j = i + 28 + caplen + (-caplen % 4)
            comment = ""
            while j < i + total - 4:
                code, length = struct.unpack_from("<HH", data, j)
                if code == 0:
                    break
                if code == 1:
                    comment = data[j + 4 : j + 4 + length].decode()
                j += 4 + length + (-length % 4)
            out.append(comment)
        i += total
    return out


def _packets(path: Path) -> list[tuple[float, Packet]]:
    out = []
    with read_capture(path) as reader:
        for rec in reader:
            p = decode_frame(rec.data, rec.linktype)
            assert isinstance(p, Packet), p
            out.append((rec.timestamp, p))
    return out


def _checksums_right(p: Packet) -> bool:
    if p.family == 4 and checksum(p.data[: p.l4_offset]) != 0:
        return False
    if p.proto in (PROTO_TCP, PROTO_UDP) and p.l4_offset >= 0:
        return l4_checksum(p.src, p.dst, p.proto, p.data[p.l4_offset :]) in (0, 0xFFFF)
    return True


def _check_labels_match(out: Path, labels: Labels, checksums_every: int = 1) -> None:
    """Every packet against its label: comment, flow's addresses and ports (either way),
    protocol, time inside the flow's; each flow's packet count; checksums right (of every
    `checksums_every`-th packet: Python's checksum is slow over 100,000 of them)."""
    packets = _packets(out)
    comments = _comments(out)
    assert len(packets) == len(comments) == labels.header.packets == len(labels.packet_flow)
    seen: Counter[int] = Counter()
    previous = 0.0
    for k, ((ts, p), comment) in enumerate(zip(packets, comments, strict=True)):
        flow = labels.flow_of(k)
        assert comment == f"ipsctl-label: {flow.cls} flow {flow.flow}"
        src, dst = ipaddress.ip_address(p.src).compressed, ipaddress.ip_address(p.dst).compressed
        forward = (src, p.sport, dst, p.dport) == (flow.src, flow.sport, flow.dst, flow.dport)
        backward = (dst, p.dport, src, p.sport) == (flow.src, flow.sport, flow.dst, flow.dport)
        assert forward or backward, (k, flow)
        assert p.proto == flow.proto
        assert flow.start - 1e-6 <= ts <= flow.end + 1e-6
        assert ts >= previous - 1e-9, "timestamps are monotonic"
        previous = ts
        assert k % checksums_every or _checksums_right(p), k
        seen[flow.flow] += 1
    assert all(seen[f.flow] == f.packets for f in labels.flows)


def _mix(
    tmp: Path, inputs: list[tuple[str, Path]], name: str = "out", **kw: object
) -> tuple[Path, MixReport]:
    out = tmp / f"{name}.pcapng"
    request = MixRequest(inputs=[(c, str(p)) for c, p in inputs], output=str(out), **kw)  # type: ignore[arg-type]
    return out, run_mix(request)


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for suffix in (".pcapng", ".labels.jsonl", ".labels.packets"):
        h.update(
            out.with_suffix("").with_suffix(suffix).read_bytes()
            if suffix != ".pcapng"
            else out.read_bytes()
        )
    return h.hexdigest()


# ---- the Done-when of issue 23 -------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    ins = [("benign", inputs["small"]), ("scan", inputs["scan"]), ("ddos", inputs["ddos"])]
    a, _ = _mix(tmp_path, ins, "a", ratio="90/5/5", seed=11, packets=3000)
    b, _ = _mix(tmp_path, ins, "b", ratio="90/5/5", seed=11, packets=3000)
    c, _ = _mix(tmp_path, ins, "c", ratio="90/5/5", seed=12, packets=3000)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.labels.packets").read_bytes() == (
        tmp_path / "b.labels.packets"
    ).read_bytes()
    assert (tmp_path / "a.labels.jsonl").read_bytes() == (tmp_path / "b.labels.jsonl").read_bytes()
    assert a.read_bytes() != c.read_bytes()
    # Sorting in many small runs merged from disk gives the very same bytes as in memory.
    d, _ = _mix(tmp_path, ins, "d", ratio="90/5/5", seed=11, packets=3000, run_records=500)
    assert d.read_bytes() == a.read_bytes()


def test_ratio_within_one_percent_over_100000_packets(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    out, report = _mix(
        tmp_path,
        [("benign", inputs["benign"]), ("ddos", inputs["ddos"])],
        ratio="80/20",
        seed=5,
        packets=100_000,
    )
    labels = read_labels(out)
    total = labels.header.packets
    assert abs(total - 100_000) <= 1_000
    counts = Counter(labels.packet_classes())
    assert abs(counts["ddos"] / total - 0.20) <= 0.01
    assert abs(counts["benign"] / total - 0.80) <= 0.01
    assert report.classes["ddos"].packets == counts["ddos"]
    _check_labels_match(out, labels, checksums_every=10)
    _check_flows_whole(labels, inputs)


@pytest.fixture(scope="module")
def input_flows(
    inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[FlowSummary]]:
    tmp = tmp_path_factory.mktemp("mix-index")
    flows = {}
    for i, cls in enumerate(["benign", "ddos"]):
        ix = index_capture(i, cls, str(inputs[cls]), str(tmp / f"{i}.idx"), 10**6 * i, 300 * 10**6)
        flows[cls] = ix.flows
    return flows


@pytest.mark.parametrize(
    ("ratio", "attack_share"), [("95/5", 0.05), ("99/1", 0.01), ("80/20", 0.20)]
)
def test_plan_ratios_over_100000_packets(
    input_flows: dict[str, list[FlowSummary]], ratio: str, attack_share: float
) -> None:
    """The plan alone (pure, fast) for each ratio of the issue, over the real input flows."""
    flows = input_flows
    shares = parse_ratios(ratio, ["benign", "ddos"])
    window = Window(0, 600 * 10**6, tuple((c, s) for c, s in shares if c != "benign"))
    networks = {r: parse_networks(list(n), r) for r, n in _NETS.items()}
    plan = plan_mix([window], [100_000], flows, {}, networks, random.Random(1))
    got = plan.results[0]
    total = got["benign"].packets + got["ddos"].packets
    assert abs(total - 100_000) <= 1_000
    assert abs(got["ddos"].packets / total - attack_share) <= 0.01


_NETS = {
    "clients": ("10.50.0.0/16", "fd00:50::/64"),
    "servers": ("10.60.0.0/16", "fd00:60::/64"),
    "attackers": ("10.90.0.0/16", "fd00:90::/64"),
    "victims": ("10.60.0.0/16", "fd00:60::/64"),
}


def _input_flow_sizes(path: Path) -> list[int]:
    """Packets per flow of an input, in the order of first packets (5-tuple, both ways)."""
    order: dict[tuple[object, ...], int] = {}
    sizes: list[int] = []
    with read_capture(path) as reader:
        for rec in reader:
            p = decode_frame(rec.data, rec.linktype)
            assert isinstance(p, Packet)
            a, b = (p.src, p.sport), (p.dst, p.dport)
            key = (p.proto, *min(a, b), *max(a, b))
            if key not in order:
                order[key] = len(sizes)
                sizes.append(0)
            sizes[order[key]] += 1
    return sizes


def _check_flows_whole(labels: Labels, inputs: dict[str, Path]) -> None:
    by_name = {p.name: _input_flow_sizes(p) for p in inputs.values()}
    for flow in labels.flows:
        assert flow.packets == by_name[flow.input][flow.input_flow], flow


def test_timeline_bursts_inside_their_windows(inputs: dict[str, Path], tmp_path: Path) -> None:
    out, report = _mix(
        tmp_path,
        [("benign", inputs["benign"]), ("ddos", inputs["ddos"]), ("scan", inputs["scan"])],
        timeline="0-2m benign; 2-3m 30% ddos; 3-4m 60% ddos, 10% scan; 4-5m benign",
        seed=9,
        rate=80.0,
        start_us=int(T0 * 10**6),
    )
    labels = read_labels(out)
    _check_labels_match(out, labels)
    _check_flows_whole(labels, inputs)
    windows = [(T0 + a, T0 + b) for a, b in [(0, 120), (120, 180), (180, 240), (240, 300)]]
    packets = _packets(out)
    per_window: list[Counter[str]] = [Counter() for _ in windows]
    for k, (ts, _) in enumerate(packets):
        cls = labels.class_of(k)
        inside = [i for i, (a, b) in enumerate(windows) if a <= ts < b]
        assert inside, ts
        per_window[inside[0]][cls] += 1
        if cls == "ddos":
            assert inside[0] in (1, 2)
        if cls == "scan":
            assert inside[0] == 2
    # Every flow inside one window, whole.
    for flow in labels.flows:
        assert any(a <= flow.start and flow.end < b for a, b in windows), flow
    for counts, ddos, scan in [(per_window[1], 0.30, 0.0), (per_window[2], 0.60, 0.10)]:
        total = sum(counts.values())
        assert abs(counts["ddos"] / total - ddos) <= 0.02, counts
        assert abs(counts["scan"] / total - scan) <= 0.02, counts
    assert per_window[0]["ddos"] == per_window[3]["ddos"] == 0
    assert per_window[0]["benign"] > 0.9 * 80 * 120
    # The scan keeps its spacing (one block, a millisecond apart) and its one scanner.
    scan_flows = [f for f in labels.flows if f.cls == "scan"]
    assert len({f.src for f in scan_flows}) == 1 and len({f.dst for f in scan_flows}) == 1
    assert max(f.start for f in scan_flows) - min(f.start for f in scan_flows) < 5.0
    assert report.windows[2]["classes"]["scan"]["packets"] > 0  # type: ignore[index]


def test_addresses_remapped_per_host_and_role(inputs: dict[str, Path], tmp_path: Path) -> None:
    out, _ = _mix(
        tmp_path,
        [("benign", inputs["small"]), ("scan", inputs["scan"])],
        ratio="benign=70,scan=30",
        seed=3,
        networks={
            "clients": ["10.1.0.0/24", "fd01::/64"],
            "attackers": ["10.9.9.0/24"],
            "victims": ["10.7.0.0/28"],
            "servers": ["10.2.0.0/24", "fd02::/64"],
        },
    )
    labels = read_labels(out)
    nets = {
        "benign": (["10.1.0.0/24", "fd01::/64"], ["10.2.0.0/24", "fd02::/64"]),
        "scan": (["10.9.9.0/24"], ["10.7.0.0/28"]),
    }
    for flow in labels.flows:
        initiators, responders = nets[flow.cls]
        assert any(ipaddress.ip_address(flow.src) in ipaddress.ip_network(n) for n in initiators)
        assert any(ipaddress.ip_address(flow.dst) in ipaddress.ip_network(n) for n in responders)
    assert any(":" in f.src for f in labels.flows)  # the IPv6 flows stay IPv6
    # One host of an input is one host of the output: the benign input's 20 IPv4 servers.
    servers = {f.dst for f in labels.flows if f.cls == "benign" and ":" not in f.dst}
    assert 1 < len(servers) <= 20
    _check_labels_match(out, labels)


def test_malformed_packets_counted_not_fatal(tmp_path: Path) -> None:
    good = [
        (T0 + i, build_packet(PROTO_UDP, "192.0.2.1", "192.0.2.2", 1000 + i, 53, payload=b"x"))
        for i in range(50)
    ]
    junk = [(T0 + 0.5, b"\x45\x00\x00"), (T0 + 1.5, b"\x60" + b"\0" * 10), (T0 + 2.5, b"\x00" * 30)]
    path = tmp_path / "junk.pcap"
    write_pcap(path, sorted(good + junk))
    eth = tmp_path / "arp.pcap"
    write_pcap(eth, [(T0, b"\xff" * 12 + b"\x08\x06" + b"\0" * 28)], linktype=LINKTYPE_ETHERNET)
    attack = tmp_path / "ping.pcap"
    write_pcap(
        attack,
        [
            (T0 + i, build_packet(PROTO_ICMP, "192.0.2.9", "192.0.2.1", icmp_id=i))
            for i in range(20)
        ],
    )
    out, report = _mix(
        tmp_path, [("benign", path), ("benign", eth), ("icmp", attack)], ratio="80/20", seed=1
    )
    assert sum(report.left_out.values()) == 4 and report.left_out["not-ip"] == 1
    _check_labels_match(out, read_labels(out))


# ---- the command line ----------------------------------------------------------------------


def test_cli_mix_and_its_errors(inputs: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli.pcapng"
    args = [
        "mix",
        "-i",
        f"benign={inputs['small']}",
        "-i",
        f"scan={inputs['scan']}",
        "--ratio",
        "95/5",
        "--seed",
        "4",
        "-o",
        str(out),
        "--attackers",
        "10.66.0.0/16",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "benign" in result.output and "scan" in result.output
    assert "right in only 84% of its alerts (the base rate)" in result.output
    labels = read_labels(out)
    assert all(f.src.startswith("10.66.") for f in labels.flows if f.cls == "scan")
    # The same through a YAML spec (file names relative to it), with --json.
    spec = tmp_path / "mix.yaml"
    spec.write_text(
        f"inputs:\n  benign: {inputs['small']}\n  scan: [{inputs['scan']}]\n"
        "ratio: {benign: 95, scan: 5}\n"
        "seed: 4\noutput: spec.pcapng\nnetworks:\n  attackers: 10.66.0.0/16\n"
    )
    result = runner.invoke(main, ["mix", "--spec", str(spec), "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "spec.pcapng").read_bytes() == out.read_bytes()
    bad_cases = [
        (["mix", "-i", f"benign={inputs['small']}", "-o", str(out)], "a ratio"),
        (
            ["mix", "-i", f"benign={tmp_path / 'none.pcap'}", "--ratio", "1", "-o", str(out)],
            "no such file",
        ),
        (["mix", "-i", f"benign={spec}", "--ratio", "1", "-o", str(out)], "not a pcap"),
        (
            ["mix", "-i", f"benign={inputs['small']}", "--ratio", "80/20", "-o", str(out)],
            "2 numbers for 1",
        ),
        (
            [
                "mix",
                "-i",
                f"benign={inputs['small']}",
                "-i",
                f"scan={inputs['scan']}",
                "--timeline",
                "0-1m 30% dos",
                "-o",
                str(out),
            ],
            "no input of class 'dos'",
        ),
        (
            [
                "mix",
                "-i",
                f"benign={inputs['small']}",
                "--ratio",
                "1",
                "--clients",
                "10.0.0.0/33",
                "-o",
                str(out),
            ],
            "not a network",
        ),
        (["mix", "-i", "benign", "--ratio", "1", "-o", str(out)], "CLASS=FILE"),
    ]
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text(f"inputs: {{benign: {inputs['small']}}}\nratio: 1\nseed: one\n")
    bad_cases.append((["mix", "--spec", str(bad_spec), "-o", str(out)], "seed: 'one' is not"))
    bad_cases.append(
        (
            [
                "mix",
                "-i",
                f"benign={inputs['small']}",
                "--ratio",
                "1",
                "--timing",
                "x=keep",
                "-o",
                str(out),
            ],
            "timing of 'x'",
        )
    )
    for args, message in bad_cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (message, result.output)


def test_tshark_reads_the_output_and_its_comments(inputs: dict[str, Path], tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tshark is missing (scripts/setup.sh installs it)")
        pytest.skip("tshark not installed")
    out, _ = _mix(
        tmp_path,
        [("benign", inputs["small"]), ("ddos", inputs["ddos"])],
        ratio="90/10",
        seed=2,
        packets=2000,
    )
    fields = [
        "frame.comment",
        "ip.src",
        "ipv6.src",
        "tcp.checksum.status",
        "udp.checksum.status",
        "ip.checksum.status",
    ]
    cmd = [
        "tshark",
        "-r",
        str(out),
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-T",
        "fields",
        "-E",
        "separator=|",
    ]
    for f in fields:
        cmd += ["-e", f]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    rows = [line.split("|") for line in result.stdout.splitlines()]
    labels = read_labels(out)
    assert len(rows) == labels.header.packets
    for k, row in enumerate(rows):
        flow = labels.flow_of(k)
        assert row[0] == f"ipsctl-label: {flow.cls} flow {flow.flow}"
        assert row[1] in (flow.src, flow.dst) or row[2] in (flow.src, flow.dst)
        # 2 is "bad" in tshark's checksum status; 1 good, 2 bad, empty when not checked.
        assert "2" not in (row[3], row[4], row[5]), row


# ---- the pure parts ------------------------------------------------------------------------


def test_timeline_and_ratio_texts() -> None:
    windows = parse_timeline(
        "0-10m benign; 10-15m 30% ddos; 15-20m 60% ddos, 10% scan", ["benign", "ddos", "scan"]
    )
    assert [(w.start_us, w.end_us) for w in windows] == [
        (0, 600 * 10**6),
        (600 * 10**6, 900 * 10**6),
        (900 * 10**6, 1200 * 10**6),
    ]
    assert windows[2].attack_shares == (("ddos", 0.6), ("scan", 0.1))
    assert windows[2].benign_share == pytest.approx(0.3)
    assert parse_ratios("4/1", ["benign", "ddos"]) == [("benign", 0.8), ("ddos", 0.2)]
    assert parse_ratios("benign=99,ddos=1", ["benign", "ddos"]) == [
        ("benign", 0.99),
        ("ddos", 0.01),
    ]
    for text, message in [
        ("0-10m benign; 5-15m 30% ddos", "overlap"),
        ("10-5m benign", "not after"),
        ("0-1m 80% ddos, 30% scan", "more than 100"),
        ("0-1m lots of ddos", "not a share"),
        ("", "no window"),
    ]:
        with pytest.raises(SpecError, match=message):
            parse_timeline(text, ["benign", "ddos", "scan"])


def test_plan_is_deterministic_and_keeps_flows_whole() -> None:
    def flows(cls: str, n: int, size: int) -> list[FlowSummary]:
        return [
            FlowSummary(
                i,
                0,
                cls,
                6,
                4,
                bytes([10, 0, 0, i % 250 + 1]),
                1000 + i,
                b"\x0a\x00\x01\x01",
                80,
                i * 1000,
                500,
                size + i % 3,
            )
            for i in range(n)
        ]

    pools = {"benign": flows("benign", 200, 5), "ddos": flows("ddos", 50, 1)}
    networks = {r: parse_networks(list(n), r) for r, n in _NETS.items()}
    window = Window(0, 10**7, (("ddos", 0.1),))
    a = plan_mix([window], [2000], pools, {}, networks, random.Random(7))
    b = plan_mix([window], [2000], pools, {}, networks, random.Random(7))
    assert a.placements == b.placements
    # Used again when the inputs run out: new rounds, new addresses for the same host.
    rounds = defaultdict(set)
    for p in a.placements:
        rounds[p.flow].add((p.round, p.initiator))
    assert a.reused > 0
    assert all(len({r for r, _ in v}) == len(v) for v in rounds.values())
    assert all(p.start_us >= 0 and p.start_us + 500 < 10**7 for p in a.placements)


def test_snaplen_cut_packets_go_in_rewritten_like_whole_ones(tmp_path: Path) -> None:
    """A capture taken with a snaplen mixes into the same packets as the whole capture, cut."""
    whole, cut = tmp_path / "whole.pcap", tmp_path / "cut.pcap"
    _benign(whole, 200, 30.0, seed=8)
    with read_capture(whole) as reader:
        records = [CaptureRecord(r.timestamp, r.linktype, r.data[:54], len(r.data)) for r in reader]
    write_pcap(cut, records)
    a, _ = _mix(tmp_path, [("benign", whole)], "a", ratio="1", seed=1)
    b, report = _mix(tmp_path, [("benign", cut)], "b", ratio="1", seed=1)
    assert not report.left_out
    with read_capture(a) as ra, read_capture(b) as rb:
        pairs = list(zip(ra, rb, strict=True))
    assert pairs and all(x.data[:54] == y.data and x.orig_len == y.orig_len for x, y in pairs)
    assert any(len(y.data) < y.orig_len for _, y in pairs)


def _pcapng_with_simple_blocks(path: Path) -> None:
    """A pcapng of an interface, a Simple Packet Block and an Enhanced Packet Block."""

    def block(kind: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    one = build_packet(PROTO_UDP, "192.0.2.1", "192.0.2.2", 1, 2, payload=b"abc")
    two = build_packet(PROTO_UDP, "192.0.2.2", "192.0.2.1", 2, 1, payload=b"defgh")
    path.write_bytes(
        block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        + block(1, struct.pack("<HHI", 101, 0, 0))
        + block(3, struct.pack("<I", len(one)) + one)
        + block(6, struct.pack("<IIIII", 0, 0, 1, len(two), len(two)) + two)
    )


@pytest.mark.parametrize(
    "name", ["zk_http-vlan-0.pcap", "sv_http-ipv6_input.pcap", "mixed", "simple-blocks"]
)
def test_data_offset_points_at_each_records_bytes(
    name: str, inputs: dict[str, Path], tmp_path: Path, pcaps_dir: Path
) -> None:
    """The reader's `data_offset` (what the second pass seeks to), pcap and pcapng."""
    if name == "mixed":
        path, _ = _mix(tmp_path, [("benign", inputs["small"])], ratio="1", seed=1)
    elif name == "simple-blocks":
        path = tmp_path / "simple.pcapng"
        _pcapng_with_simple_blocks(path)
    else:
        path = pcaps_dir / name
    data = path.read_bytes()
    with read_capture(path) as reader:
        records = [(reader.data_offset, r.data) for r in reader]
    assert records
    assert all(data[at : at + len(d)] == d for at, d in records)


def test_a_mix_of_a_mix(inputs: dict[str, Path], tmp_path: Path) -> None:
    """A pcapng output (comments and all) is an input like any other."""
    ins = [("benign", inputs["small"]), ("scan", inputs["scan"])]
    first, _ = _mix(tmp_path, ins, "first", ratio="90/10", seed=1)
    ins = [("benign", first), ("ddos", inputs["ddos"])]
    second, report = _mix(tmp_path, ins, "second", ratio="95/5", seed=2)
    assert report.skipped_at_write == 0 and not report.left_out
    labels = read_labels(second)
    _check_labels_match(second, labels)
    assert labels.header.classes["benign"].packets > 0


@st.composite
def _plans(draw: st.DrawFn) -> tuple[list[Window], list[int], dict[str, list[FlowSummary]]]:
    pools: dict[str, list[FlowSummary]] = {}
    n = 0
    for cls in ("benign", "ddos", "scan"):
        flows = []
        for _ in range(draw(st.integers(1, 30))):
            host = draw(st.integers(1, 8))
            flows.append(
                FlowSummary(
                    n,
                    len(pools),
                    cls,
                    6,
                    4,
                    bytes([10, 0, 0, host]),
                    1000 + n,
                    bytes([10, 0, 1, draw(st.integers(1, 4))]),
                    80,
                    draw(st.integers(0, 10**7)),
                    draw(st.integers(0, 3 * 10**6)),
                    draw(st.integers(1, 40)),
                )
            )
            n += 1
        pools[cls] = sorted(flows, key=lambda f: f.start_us)
    windows, counts, t = [], [], 0
    for _ in range(draw(st.integers(1, 4))):
        length = draw(st.integers(10**6, 10**7))
        ddos = draw(st.integers(0, 60)) / 100
        scan = draw(st.integers(0, 30)) / 100
        shares = tuple((c, s) for c, s in (("ddos", ddos), ("scan", scan)) if s)
        windows.append(Window(t, t + length, shares))
        counts.append(draw(st.integers(0, 500)))
        t += length + draw(st.integers(0, 10**6))
    return windows, counts, pools


@settings(max_examples=60, deadline=None)
@given(_plans(), st.integers(0, 2**32))
def test_plan_properties(
    case: tuple[list[Window], list[int], dict[str, list[FlowSummary]]], seed: int
) -> None:
    windows, counts, pools = case
    networks = {r: parse_networks(list(n), r) for r, n in _NETS.items()}
    plan = plan_mix(windows, counts, pools, {}, networks, random.Random(seed))
    again = plan_mix(windows, counts, pools, {}, networks, random.Random(seed))
    assert plan.placements == again.placements
    flows = {f.flow: f for fl in pools.values() for f in fl}
    biggest = max(f.packets for f in flows.values())
    for p in plan.placements:
        w, f = windows[p.window], flows[p.flow]
        assert w.start_us <= p.start_us and p.start_us + f.duration_us < w.end_us
        assert p.cls == f.cls
    for results in plan.results:
        for r in results.values():
            assert r.packets <= r.target + biggest // 2
    # One host of an input round is one new address; two hosts are two.
    seen: dict[tuple[int, int, bytes], bytes] = {}
    for p in plan.placements:
        f = flows[p.flow]
        for old, new in ((f.initiator, p.initiator), (f.responder, p.responder)):
            assert seen.setdefault((f.input, p.round, old), new) == new
    assert len(set(seen.values())) == len(seen) - plan.address_collisions


def test_keep_addresses_for_the_first_round_only(inputs: dict[str, Path], tmp_path: Path) -> None:
    scan_packets = 4000  # the portscan input has 4,000: a fifth more means a second round
    out, report = _mix(
        tmp_path,
        [("benign", inputs["small"]), ("scan", inputs["scan"])],
        ratio="50/50",
        packets=int(scan_packets * 2.4),
        seed=1,
        keep_addresses=True,
    )
    labels = read_labels(out)
    scans = [f for f in labels.flows if f.cls == "scan"]
    assert {f.src for f in scans if f.round == 0} == {"203.0.113.66"}
    later = {f.src for f in scans if f.round > 0}
    assert later and "203.0.113.66" not in later and report.reused > 0
    assert all(
        f.src.startswith(("192.168.", "2001:db8:"))
        for f in labels.flows
        if f.cls == "benign" and f.round == 0
    )
    _check_labels_match(out, labels)


def test_an_attack_capture_out_of_time_order_stays_in_its_window(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    with read_capture(inputs["scan"]) as reader:
        records = list(reader)
    random.Random(3).shuffle(records)  # written in no time order at all
    shuffled = tmp_path / "shuffled-scan.pcap"
    write_pcap(shuffled, records)
    out, _ = _mix(
        tmp_path,
        [("benign", inputs["small"]), ("scan", shuffled), ("scan", inputs["scan"])],
        # A window little longer than the scan's 2 s: a stretch walked out of time order
        # would start before it.
        timeline="0-20s benign; 20-23s 40% scan; 23-40s benign",
        rate=100.0,
        seed=4,
        start_us=int(T0 * 10**6),
    )
    labels = read_labels(out)
    scans = [f for f in labels.flows if f.cls == "scan"]
    assert scans
    assert all(f.start >= T0 + 20 and f.end < T0 + 23 for f in scans)
    _check_labels_match(out, labels)
