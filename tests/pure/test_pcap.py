"""Capture reader/writer tests: hand-built pcap/pcapng files, truncation, corruption, and
every shared capture."""

from __future__ import annotations

import contextlib
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgWriter, RawPcapReader, rdpcap

from ips.core.decode import decode_frame
from ips.core.packet import LINKTYPE_ETHERNET, LINKTYPE_RAW, Packet
from ips.io.pcap import CaptureError, CaptureRecord, read_capture, write_pcap

PKT1 = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2) / b"one")
PKT2 = bytes(IP(src="192.0.2.2", dst="192.0.2.1") / UDP(sport=2, dport=1) / b"second")


# --- classic pcap -----------------------------------------------------------------------------


def _pcap(endian: str, magic: int, records: list[tuple[int, int, bytes]], linktype: int) -> bytes:
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in records:
        out += struct.pack(endian + "IIII", sec, frac, len(data), len(data) + 10) + data
    return out


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize(
    ("magic", "frac", "expect"),
    [
        (0xA1B2C3D4, 250_000, 0.25),
        (0xA1B23C4D, 250_000_000, 0.25),
    ],
)
def test_classic_pcap_both_byte_orders_and_resolutions(
    tmp_path: Path, endian: str, magic: int, frac: int, expect: float
) -> None:
    path = tmp_path / "x.bin"  # extension is irrelevant
    path.write_bytes(_pcap(endian, magic, [(100, frac, PKT1), (101, 0, PKT2)], 0x10000065))
    reader = read_capture(path)
    recs = list(reader)
    assert reader.format == "pcap" and reader.truncated == 0
    assert recs == [
        CaptureRecord(100 + expect, LINKTYPE_RAW, PKT1, len(PKT1) + 10),
        CaptureRecord(101.0, LINKTYPE_RAW, PKT2, len(PKT2) + 10),
    ]


def test_write_pcap_roundtrip_and_scapy_agrees(tmp_path: Path) -> None:
    path = tmp_path / "w.pcap"
    frame = bytes(Ether() / IP(PKT1))
    n = write_pcap(
        path,
        [(1.5, frame), CaptureRecord(2.9999999, 1, frame, 999), frame],
        linktype=LINKTYPE_ETHERNET,
    )
    assert n == 3
    recs = list(read_capture(path))
    assert [r.data for r in recs] == [frame] * 3
    assert [r.timestamp for r in recs] == [1.5, 3.0, 0.0]
    assert [r.orig_len for r in recs] == [len(frame), 999, len(frame)]
    assert {r.linktype for r in recs} == {LINKTYPE_ETHERNET}
    theirs = rdpcap(str(path))
    assert [bytes(p) for p in theirs] == [frame] * 3
    p = decode_frame(recs[0].data, recs[0].linktype)
    assert isinstance(p, Packet) and p.payload == b"one"


def test_write_pcap_default_linktype_is_raw(tmp_path: Path) -> None:
    path = tmp_path / "raw.pcap"
    write_pcap(path, [PKT1, PKT2])
    recs = list(read_capture(path))
    assert [(r.linktype, r.data) for r in recs] == [(LINKTYPE_RAW, PKT1), (LINKTYPE_RAW, PKT2)]


def test_truncated_last_record_stops_cleanly(tmp_path: Path) -> None:
    full = _pcap("<", 0xA1B2C3D4, [(1, 0, PKT1), (2, 0, PKT2)], 101)
    first_end = 24 + 16 + len(PKT1)
    for cut in range(first_end, len(full)):
        path = tmp_path / f"t{cut}.pcap"
        path.write_bytes(full[:cut])
        reader = read_capture(path)
        recs = list(reader)
        assert [r.data for r in recs] == [PKT1]
        assert reader.truncated == cut - first_end
    path = tmp_path / "full.pcap"
    path.write_bytes(full)
    reader = read_capture(path)
    assert len(list(reader)) == 2 and reader.truncated == 0


@pytest.mark.parametrize("cut", [0, 3, 4, 10, 23])
def test_truncated_header_raises(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "h.pcap"
    path.write_bytes(_pcap("<", 0xA1B2C3D4, [], 1)[:cut])
    with pytest.raises(CaptureError) as ei:
        list(read_capture(path))
    assert isinstance(ei.value, ValueError)
    assert ei.value.path == str(path) and str(path) in str(ei.value)


def test_corrupt_pcap(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    path.write_bytes(b"GIF89a" + b"\0" * 40)
    with pytest.raises(CaptureError, match="not a pcap") as ei:
        read_capture(path)
    assert ei.value.offset == 0
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 0, 1))
    with pytest.raises(CaptureError, match="version"):
        read_capture(path)  # header problems are reported when opening
    huge = _pcap("<", 0xA1B2C3D4, [(1, 0, PKT1)], 1) + struct.pack("<IIII", 0, 0, 1 << 30, 0)
    path.write_bytes(huge)
    reader = read_capture(path)
    assert next(reader).data == PKT1
    with pytest.raises(CaptureError, match="implausible") as ei:
        next(reader)
    assert ei.value.offset == 24 + 16 + len(PKT1)


def test_context_manager_closes(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    write_pcap(path, [PKT1, PKT2])
    with read_capture(path) as reader:
        assert next(reader).data == PKT1
    assert reader._f is None


# --- pcapng -----------------------------------------------------------------------------------


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def _opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _shb(e: str) -> bytes:
    return _block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _idb(e: str, linktype: int, opts: bytes = b"") -> bytes:
    if opts:
        opts += _opt(e, 0, b"")
    return _block(e, 1, struct.pack(e + "HHI", linktype, 0, 0) + opts)


def _epb(e: str, ifid: int, ticks: int, data: bytes, orig: int | None = None) -> bytes:
    orig = len(data) if orig is None else orig
    head = struct.pack(e + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data), orig)
    return _block(e, 6, head + data + _opt(e, 1, b"comment") + _opt(e, 0, b""))


def _spb(e: str, data: bytes) -> bytes:
    return _block(e, 3, struct.pack(e + "I", len(data)) + data)


def _opb(e: str, ifid: int, ticks: int, data: bytes) -> bytes:
    head = struct.pack(e + "HHIIII", ifid, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
    return _block(e, 2, head + data)


def _pcapng_blocks() -> list[bytes]:
    le, be = "<", ">"
    return [
        _shb(le),
        _idb(le, LINKTYPE_RAW),  # default resolution: microseconds
        _idb(le, LINKTYPE_ETHERNET, _opt(le, 9, b"\x09") + _opt(le, 14, struct.pack("<q", 10))),
        _block(le, 4, b"\0\0\0\0"),  # name resolution block: skipped
        _epb(le, 0, 1_500_000, PKT1),
        _epb(le, 1, 2_250_000_000, bytes(Ether() / IP(PKT2)), orig=1000),
        _spb(le, PKT2),
        _block(le, 5, b"\0" * 12),  # interface statistics: skipped
        # second section, big-endian, binary (2^-10) resolution
        _shb(be),
        _idb(be, LINKTYPE_RAW, _opt(be, 9, b"\x8a")),
        _epb(be, 0, 3 * 1024 + 512, PKT2),
        _opb(be, 0, 4 * 1024, PKT1),
    ]


def _pcapng_sample() -> bytes:
    return b"".join(_pcapng_blocks())


def test_pcapng_sections_interfaces_and_blocks(tmp_path: Path) -> None:
    path = tmp_path / "sample.pcap"  # pcapng content, misleading extension
    path.write_bytes(_pcapng_sample())
    reader = read_capture(path)
    recs = list(reader)
    assert reader.format == "pcapng" and reader.truncated == 0
    eth = bytes(Ether() / IP(PKT2))
    assert recs == [
        CaptureRecord(1.5, LINKTYPE_RAW, PKT1, len(PKT1)),
        CaptureRecord(12.25, LINKTYPE_ETHERNET, eth, 1000),
        CaptureRecord(12.25, LINKTYPE_RAW, PKT2, len(PKT2)),  # SPB repeats the last time
        CaptureRecord(3.5, LINKTYPE_RAW, PKT2, len(PKT2)),
        CaptureRecord(4.0, LINKTYPE_RAW, PKT1, len(PKT1)),
    ]


def test_pcapng_hand_built_sample_is_valid_for_scapy(tmp_path: Path) -> None:
    path = tmp_path / "le.pcapng"
    le = "<"
    path.write_bytes(_shb(le) + _idb(le, LINKTYPE_RAW) + _epb(le, 0, 7_000_001, PKT1))
    (theirs,) = rdpcap(str(path))
    (ours,) = list(read_capture(path))
    assert bytes(theirs) == ours.data and float(theirs.time) == pytest.approx(ours.timestamp)


def test_pcapng_written_by_scapy(tmp_path: Path) -> None:
    path = tmp_path / "scapy.pcapng"
    w = PcapNgWriter(str(path))
    for i, raw in enumerate((PKT1, PKT2)):
        pkt = Ether() / IP(raw)
        pkt.time = 1000 + i
        w.write(pkt)
    w.close()
    recs = list(read_capture(path))
    assert [r.timestamp for r in recs] == [1000.0, 1001.0]
    assert [decode_frame(r.data, r.linktype).payload for r in recs] == [b"one", b"second"]


def test_pcapng_truncation_at_every_offset(tmp_path: Path) -> None:
    data = _pcapng_sample()
    boundaries = [0]
    for block in _pcapng_blocks():
        boundaries.append(boundaries[-1] + len(block))
    full = list(read_capture(_write(tmp_path / "full", data)))
    for cut in range(len(data) + 1):
        path = _write(tmp_path / "cut", data[:cut])
        if cut < boundaries[1]:  # inside the first section header: the file header
            with pytest.raises(CaptureError):
                list(read_capture(path))
            continue
        reader = read_capture(path)
        recs = list(reader)
        assert recs == full[: len(recs)]
        last_whole = max(b for b in boundaries if b <= cut)
        assert reader.truncated == cut - last_whole
    assert len(full) == 5


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_pcapng_corruption_is_reported(tmp_path: Path) -> None:
    le = "<"
    good = _shb(le) + _idb(le, 1)
    cases = {
        "trailing length": good + _epb(le, 0, 0, PKT1)[:-4] + struct.pack("<I", 4),
        "bad block length": good + struct.pack("<II", 6, 30) + b"\0" * 22,
        "unknown interface": good + _epb(le, 3, 0, PKT1),
        "byte-order magic": _shb(le)[:8] + b"\x01\x02\x03\x04" + _shb(le)[12:],
        "overruns": good + _block(le, 6, struct.pack("<IIIII", 0, 0, 0, 500, 500) + PKT1),
        "before any interface": _shb(le) + _spb(le, PKT1),
        "option overruns": _shb(le)
        + _block(le, 1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 9, 40)),
        "pcapng version": _block(le, 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1)),
    }
    for fragment, data in cases.items():
        path = _write(tmp_path / "bad.pcapng", data)
        with pytest.raises(CaptureError, match=fragment):
            list(read_capture(path))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["pcap", "pcapng"]))
def test_fuzz_reader_only_raises_capture_error(tmp_path_factory, junk: bytes, kind: str) -> None:
    head = _pcap("<", 0xA1B2C3D4, [(1, 0, PKT1)], 1) if kind == "pcap" else _pcapng_sample()
    path = _write(tmp_path_factory.mktemp("fz") / "f", head + junk)
    try:
        for rec in read_capture(path):
            assert isinstance(rec.data, bytes)
            decode_frame(rec.data, rec.linktype)
    except CaptureError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_reader_random_file(tmp_path_factory, data: bytes) -> None:
    for magic in (b"", b"\xd4\xc3\xb2\xa1", b"\x0a\x0d\x0d\x0a"):
        path = _write(tmp_path_factory.mktemp("fz") / "f", magic + data)
        with contextlib.suppress(CaptureError):
            list(read_capture(path))


# --- the shared captures ----------------------------------------------------------------------

PCAPS = Path(__file__).resolve().parents[3] / "shared" / "pcaps"


def _readme_counts() -> dict[str, int]:
    readme = PCAPS / "README.md"
    if not readme.is_file():
        return {}
    counts = {}
    for line in readme.read_text().splitlines():
        m = re.match(r"\|\s*(\S+\.pcap(?:ng)?)\s*\|.*\|\s*(\d+)\s*\|\s*$", line)
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def _captures() -> list[str]:
    if not PCAPS.is_dir():
        return ["<missing>"]
    return sorted(p.name for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))


def test_readme_lists_every_capture(pcaps_dir: Path) -> None:
    assert sorted(_readme_counts()) == _captures()


@pytest.mark.parametrize("name", _captures())
def test_shared_capture_reads_like_scapy(pcaps_dir: Path, name: str) -> None:
    path = pcaps_dir / name
    reader = read_capture(path)
    recs = list(reader)
    assert reader.truncated == 0
    assert len(recs) == _readme_counts()[name]
    theirs = list(RawPcapReader(str(path)))
    assert [r.data for r in recs] == [d for d, _ in theirs]
    for r, (_, meta) in zip(recs, theirs, strict=True):
        assert r.orig_len == meta.wirelen
        assert r.timestamp == pytest.approx(meta.sec + meta.usec / 1e6, abs=1e-6)
        assert r.linktype & 0xF0000000 == 0
        decode_frame(r.data, r.linktype)  # never raises
