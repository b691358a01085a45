"""The event outputs without a lab: the rotating EVE file, RFC 5424 syslog, tap-mode records,
stats events, and the tap's BPF program parsing."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ips.core.addr import format_addr
from ips.core.build import build_packet
from ips.core.decode import decode_l3
from ips.core.events import Alert, Block, FlowEnd, LogRecord
from ips.core.flow import TCP_STATE_NAMES, FlowTable
from ips.io.tap import TapError, parse_bpf_program
from ips.sinks.eve import EveWriter, eve_timestamp, flow_line, flow_record, stats_record
from ips.sinks.logfile import RotatingLog, parse_size
from ips.sinks.syslog import SyslogSink, format_5424, parse_target, severity_of

SRC, DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def alert(action: str = "blocked", severity: int = 1) -> Alert:
    return Alert(
        1_700_000_000.5,
        7,
        4,
        6,
        SRC,
        1234,
        DST,
        23,
        action=action,
        signature_id=2000010,
        signature="telnet attempt",
        severity=severity,
        category="policy",
        rule_name="p.rules:3",
    )


def test_parse_size() -> None:
    assert parse_size("0") == 0
    assert parse_size("4096") == 4096
    assert parse_size("512k") == 512 * 1024
    assert parse_size("100M") == 100 << 20
    assert parse_size("1GiB") == 1 << 30
    for bad in ("", "lots", "-1", "M"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_rotating_log_rotates_by_size_and_keeps_n(tmp_path: Path) -> None:
    path = tmp_path / "eve.json"
    log = RotatingLog(str(path), max_bytes=100, keep=2)
    lines = [f'{{"n":"{i:03d}","pad":"{"x" * 18}"}}' for i in range(20)]  # 34 bytes + newline
    for line in lines:
        log.write(line)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")
    assert files == ["eve.json", "eve.json.1", "eve.json.2"]
    for p in tmp_path.glob("eve.json*"):
        assert p.stat().st_size <= 100
    # the newest lines are in eve.json, the older in .1 then .2, each file whole lines
    kept = [
        int(json.loads(line)["n"])
        for name in ("eve.json.2", "eve.json.1", "eve.json")
        for line in (tmp_path / name).read_text().splitlines()
    ]
    assert kept == list(range(20 - len(kept), 20))
    assert log.stats()["rotations"] == 20 // 2 - 1
    assert log.write_errors == 0


def test_two_writers_share_one_rotating_file_and_lose_no_line(tmp_path: Path) -> None:
    """One worker per queue, one EVE file: whoever rotates, the other follows."""
    path = str(tmp_path / "eve.json")
    a, b = RotatingLog(path, max_bytes=400, keep=50), RotatingLog(path, max_bytes=400, keep=50)
    for i in range(300):
        (a if i % 3 else b).write(f'{{"n":{i}}}')
    a.close()
    b.close()
    seen = [
        json.loads(line)["n"]
        for p in tmp_path.glob("eve.json*")
        if p.suffix != ".lock"
        for line in p.read_text().splitlines()
    ]
    assert sorted(seen) == list(range(300))  # every line once, none torn
    assert a.rotations + b.rotations >= 5
    assert max(p.stat().st_size for p in tmp_path.glob("eve.json*")) <= 400 + 2 * 16 * 11


def test_rotating_log_reopen_after_move_and_survives_a_vanished_directory(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    path = d / "eve.json"
    log = RotatingLog(str(path))
    log.write("one")
    os.rename(path, d / "eve.json.moved")  # what logrotate does
    log.write("two")  # still the moved file, until reopened (SIGHUP)
    log.reopen()
    log.write("three")
    assert (d / "eve.json.moved").read_text() == "one\ntwo\n"
    assert path.read_text() == "three\n"
    # the directory goes away: writes are counted as errors, nothing raises
    log.close()
    for p in d.iterdir():
        p.unlink()
    d.rmdir()
    log.write("four")
    assert log.write_errors >= 1
    d.mkdir()
    log.write("five")  # back: reopened by the next write
    assert path.read_text() == "five\n"


def test_eve_writer_passive_mode_says_nothing_was_enforced() -> None:
    lines: list[str] = []

    class Sink:
        def write(self, line: str) -> None:
            lines.append(line)

    log = LogRecord(1.0, 7, 4, 6, SRC, 1234, DST, 23, verdict="drop", rule_name="p.rules:4")
    block = Block(SRC, table="banned", ttl=60.0, detector="portscan", reason="15 ports", time=2.0)
    EveWriter(log=Sink(), passive=True, blocks_enforced=False).events([alert(), log, block])
    EveWriter(log=Sink()).events([alert(), log, block])
    tap_alert, tap_log, tap_block, in_alert, in_drop, in_block = map(json.loads, lines)
    assert tap_alert["alert"]["action"] == "would_drop" and in_alert["alert"]["action"] == "blocked"
    assert tap_log["event_type"] == "ipsctl_log"
    assert tap_log["ipsctl_log"]["verdict"] == "would_drop"
    assert in_drop["event_type"] == "drop"
    assert tap_block["ipsctl_block"]["enforced"] is False
    assert in_block["ipsctl_block"]["enforced"] is True
    lines.clear()
    EveWriter(log=Sink(), passive=True).event(alert(action="allowed"))
    assert json.loads(lines[0])["alert"]["action"] == "allowed"


def test_stats_record_has_suricata_layout() -> None:
    rec = stats_record(1_700_000_000.0, 12.7, {"capture": {"kernel_drops": 3}})
    assert rec["event_type"] == "stats"
    assert rec["timestamp"] == "2023-11-14T22:13:20.000000+0000"
    assert rec["stats"] == {"uptime": 12, "capture": {"kernel_drops": 3}}


def test_syslog_targets_and_format() -> None:
    assert parse_target("unix:/dev/log") == (socket.AF_UNIX, "/dev/log")
    assert parse_target("udp:127.0.0.1:514") == (socket.AF_INET, ("127.0.0.1", 514))
    assert parse_target("udp:[::1]:5514") == (socket.AF_INET6, ("::1", 5514))
    for bad in ("tcp:1.2.3.4:514", "udp:host", "udp:1.2.3.4:0", "unix:", "/dev/log"):
        with pytest.raises(ValueError):
            parse_target(bad)
    record = {"event_type": "alert", "alert": {"severity": 2}, "src_ip": "10.0.0.1"}
    assert severity_of(record) == 3
    assert severity_of({"event_type": "flow"}) == 6
    data = format_5424(record, 21, "gw", 42, 1_700_000_000.25)
    m = re.fullmatch(
        rb"<171>1 2023-11-14T22:13:20\.250000Z gw ipsctl 42 alert - \xef\xbb\xbf(.+)", data
    )
    assert m and json.loads(m.group(1)) == record


def test_syslog_sink_sends_and_never_raises(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    try:
        sink = SyslogSink(f"unix:{path}", "daemon")
        sink.send({"event_type": "alert", "alert": {"severity": 1}}, 1.0)
        assert receiver.recv(4096).startswith(b"<26>1 ")  # daemon(3)*8 + crit(2)
        sink.send({"event_type": "alert", "big": "x" * 10_000}, 1.0)  # over the size cap
        assert sink.stats() == {"sent": 1, "dropped": 1}
    finally:
        receiver.close()
    sink.send({"event_type": "alert"}, 1.0)  # the receiver is gone: counted, not raised
    assert sink.stats()["dropped"] == 2
    with pytest.raises(ValueError):
        SyslogSink(f"unix:{path}", "local9")


def test_bpf_program_parsing() -> None:
    text = "4\n40 0 0 12\n21 0 1 2048\n6 0 0 262144\n6 0 0 0\n"
    assert parse_bpf_program(text) == [
        (40, 0, 0, 12),
        (21, 0, 1, 2048),
        (6, 0, 0, 262144),
        (6, 0, 0, 0),
    ]
    for bad in ("", "2\n6 0 0 0\n", "1\n6 0 0\n", "x\n"):
        with pytest.raises((TapError, ValueError)):
            parse_bpf_program(bad)


def test_eve_timestamps_are_what_datetime_prints() -> None:
    """eve_timestamp formats each second once and rounds the microseconds itself: it must
    print what datetime does, rounding edges (half to even, carry into the next second,
    before 1970) included."""
    rng = random.Random(7)
    times = [rng.uniform(0, 4e9) for _ in range(20_000)]
    times += [1_733_356_800 + rng.randrange(10**6) / 1e6 for _ in range(20_000)]
    times += [
        k + edge
        for k in (0, 1, 1_733_356_799)
        for edge in (0.0, 5e-7, 1.5e-6, 2.5e-6, 0.9999994999, 0.9999995, 0.99999951, 1e-7)
    ]
    times += [-0.5, -1.25, -1e-7, -86_400.0000005]
    for t in times:
        want = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")
        assert eve_timestamp(t) == want, t


def test_ipv4_addresses_print_as_ipaddress_prints_them() -> None:
    rng = random.Random(8)
    samples = [bytes(4), bytes([255] * 4), bytes([10, 0, 0, 1])]
    samples += [rng.randbytes(4) for _ in range(5000)]
    for a in samples:
        assert format_addr(a) == str(ipaddress.ip_address(a))
    assert format_addr(bytes(15) + b"\x01") == "::1"
    assert format_addr(b"\x01\x02") == "0102"


def test_flow_lines_are_the_flow_records_json() -> None:
    """flow_line writes a flow record's JSON itself (the commonest record, made cheaper): it
    must be json.dumps of flow_record, character for character, for flows of every kind —
    TCP in every state and with every flag, UDP, ICMP, IPv6, protocols without ports,
    offloaded or not, with every app_proto or none, and interface names and end reasons that
    need escaping."""
    rng = random.Random(9)
    table = FlowTable(max_flows=10_000)
    v4 = ("10.10.1.21", "192.0.2.7", "0.0.0.0", "255.255.255.255")
    v6 = ("2001:db8::1", "fe80::1:2", "::1")
    now = 1_733_356_800.0
    for _ in range(3000):
        family = v4 if rng.random() < 0.7 else v6
        src, dst = rng.sample(family, 2)
        proto = rng.choice((6, 6, 6, 17, 1 if family is v4 else 58, 47, 99))
        sport, dport = rng.randrange(65536), rng.randrange(65536)
        for _ in range(rng.randrange(1, 8)):
            now += rng.choice((0.0, 1e-6, 0.25, 3.7, 61.0))
            forward = rng.random() < 0.6
            a, b, pa, pb = (src, dst, sport, dport) if forward else (dst, src, dport, sport)
            icmp = {"icmp_type": rng.choice((0, 8, 128, 129, 3))} if proto in (1, 58) else {}
            flags = rng.choice((0x02, 0x12, 0x10, 0x11, 0x18, 0x04, rng.randrange(256)))
            data = build_packet(
                proto, a, b, pa, pb, flags=flags, payload=rng.randbytes(rng.randrange(3)), **icmp
            )
            pkt = decode_l3(data)
            if pkt.__class__.__name__ == "Packet":
                table.track(pkt, now)
    flows = list(table.flows())
    assert len(flows) > 1000
    assert {f.proto for f in flows} >= {6, 17, 1, 58, 47, 99}
    assert {f.tcp_state for f in flows if f.proto == 6} == set(range(len(TCP_STATE_NAMES)))
    reasons = ("timeout", "evicted", "reused", "shutdown", "drained", 'odd "reason"\\', "é")
    ifaces = (None, "", "lan0", 'we"ird\\', "lan\u00e9")
    # Every application protocol the engine names, "unknown" (EVE's "failed"), not known yet
    # (None) and none to name ("").
    apps = (None, "", "tls", "http", "dns", "ssh", "quic", "unknown")
    for flow in flows:
        flow.offloaded = rng.random() < 0.3
        flow.app_proto = rng.choice(apps)
        end = FlowEnd(flow, rng.choice(reasons), now + rng.random())
        iface = rng.choice(ifaces)
        want = json.dumps(flow_record(end, iface), separators=(",", ":"))
        assert flow_line(end, iface) == want
    # The writer writes flow ends so.
    lines: list[str] = []
    writer = EveWriter(log=type("L", (), {"write": staticmethod(lines.append)})())
    writer.event(FlowEnd(flows[0], "timeout", now))
    assert lines == [
        json.dumps(flow_record(FlowEnd(flows[0], "timeout", now)), separators=(",", ":"))
    ]
