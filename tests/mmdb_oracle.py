"""The oracle of the geo tests: mmdblookup (libmaxminddb, Debian's mmdb-bin) asked about the
addresses of the shared captures (read with the project's decoder).

A module of its own, not conftest.py, for the reason tests/captures.py gives.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from captures import PCAPS, pcap_names

from ips.core.decode import decode_frame
from ips.core.packet import Packet
from ips.io.pcap import CaptureError, read_capture


def need_mmdblookup() -> None:
    """Skip without mmdblookup, except under CI, where the set-up installs mmdb-bin: a
    failure there."""
    if shutil.which("mmdblookup") is None:
        if os.environ.get("CI"):
            pytest.fail("mmdblookup (mmdb-bin) is not installed")
        pytest.skip("mmdb-bin is not installed")


def capture_addresses() -> set[bytes]:
    found: set[bytes] = set()
    for name in pcap_names():
        try:
            with read_capture(PCAPS / name) as reader:
                for record in reader:
                    packet = decode_frame(record.data, record.linktype)
                    if isinstance(packet, Packet):
                        found.update((packet.src, packet.dst))
        except CaptureError:
            continue  # the corrupt captures are there for the decoder's tests
    return found


def mmdblookup(path: str, address: str, *keys: str) -> str | int | None:
    """One value from mmdblookup, or None when the address has no entry or no such key."""
    proc = subprocess.run(
        ["mmdblookup", "-f", path, "-i", address, *keys],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    text = proc.stdout.strip()
    string = re.fullmatch(r'"(.*)" <utf8_string>', text, re.S)
    if string:
        return string.group(1)
    number = re.fullmatch(r"(\d+) <uint(16|32|64)>", text)
    if number:
        return int(number.group(1))
    raise AssertionError(f"mmdblookup said {text!r}")
