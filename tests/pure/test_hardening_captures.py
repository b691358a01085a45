"""Hardening of the capture reader (issue 19, item 12): a capture that is mostly nothing is
reported as malformed after its first few kilobytes instead of being read record by record
for minutes. The big file is sparse (truncate): 2 GB claimed, almost nothing on disk."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP

from ips.io.pcap import MAX_EMPTY_RUN, MAX_SKIPPED_RUN, CaptureError, read_capture, write_pcap

PKT = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2) / b"x")
GIB = 1 << 30


def _pcap_header(snaplen: int) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 101)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def _pcapng_head() -> bytes:
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    return shb + _block(1, struct.pack("<HHI", 101, 0, 0))


def test_two_gigabytes_of_empty_records_with_a_4gib_snaplen_is_refused_quickly(
    tmp_path: Path,
) -> None:
    path = tmp_path / "zeros.pcap"
    with open(path, "wb") as f:
        f.write(_pcap_header(0xFFFFFFFF))  # claims a 4 GiB snaplen
        f.truncate(2 * GIB)  # then 2 GB of zeros: 134 million empty records, none on disk
    started = time.monotonic()
    reader = read_capture(path)
    with pytest.raises(
        CaptureError,
        match=r"at byte \d+: malformed capture: more than 1024 "
        r"packet records in a row carry no bytes",
    ):
        for _ in reader:
            pass
    assert time.monotonic() - started < 2
    assert reader.records == MAX_EMPTY_RUN + 1
    assert reader.empty_records == MAX_EMPTY_RUN + 1


def test_a_few_empty_records_between_packets_are_still_read(tmp_path: Path) -> None:
    path = tmp_path / "some.pcap"
    records = ([b""] * MAX_EMPTY_RUN + [PKT]) * 3
    write_pcap(path, records)
    with read_capture(path) as reader:
        assert [len(r.data) for r in reader] == [len(r) for r in records]
    assert (reader.records, reader.empty_records) == (len(records), 3 * MAX_EMPTY_RUN)


def test_pcapng_of_blocks_without_packets_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "blocks.pcapng"
    unknown = _block(0x0BAD, b"")  # 12 bytes, a block type nobody knows: skipped
    path.write_bytes(_pcapng_head() + unknown * (MAX_SKIPPED_RUN + 10))
    reader = read_capture(path)
    with pytest.raises(
        CaptureError,
        match=r"malformed capture: more than 65536 blocks in a "
        r"row carry no packet \(last of type 0xbad\)",
    ):
        list(reader)
    assert reader.records == 0 and reader.skipped_blocks == MAX_SKIPPED_RUN + 1


def test_pcapng_of_empty_packets_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcapng"
    epb = _block(6, struct.pack("<IIIII", 0, 0, 0, 0, 0))
    path.write_bytes(_pcapng_head() + epb * (MAX_EMPTY_RUN + 5))
    with pytest.raises(CaptureError, match="packet records in a row carry no bytes"):
        list(read_capture(path))


def test_record_longer_than_any_snaplen_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.pcap"
    # 1 MiB claimed by a record in a file whose snaplen is 65535: libpcap refuses it too.
    path.write_bytes(
        _pcap_header(65535) + struct.pack("<IIII", 0, 0, 1 << 20, 1 << 20) + b"\0" * (1 << 20)
    )
    with pytest.raises(CaptureError, match="record length 1048576 is implausible"):
        list(read_capture(path))
