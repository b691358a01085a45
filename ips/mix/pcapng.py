"""A small pcapng writer: one section, an interface per link type, packets with a comment.

Little-endian, microsecond timestamps (the format's default resolution, so no if_tsresol
option), no clock and no host name in the file: the same packets give the same bytes. The
packet comment is the Enhanced Packet Block's `opt_comment`, which Wireshark and tshark show
(`frame.comment`). Our own reader (ips/io/pcap.py) and tshark read what this writes.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

__all__ = ["PcapngWriter"]

_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_COMMENT = 1
_OPT_SHB_USERAPPL = 4
_SNAPLEN = 262144


def _option(code: int, value: bytes) -> bytes:
    pad = -len(value) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


_END_OF_OPTIONS = struct.pack("<HH", 0, 0)


class PcapngWriter:
    """Writes to an open binary file; `packet()` adds the interface of a new link type first."""

    def __init__(self, f: BinaryIO, application: str = "ipsctl mix") -> None:
        self._f = f
        self._interfaces: dict[int, int] = {}  # link type -> interface id
        self.packets = 0
        options = _option(_OPT_SHB_USERAPPL, application.encode()) + _END_OF_OPTIONS
        body = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + options
        self._block(_SHB, body)

    def _block(self, block_type: int, body: bytes) -> None:
        total = 12 + len(body)
        self._f.write(struct.pack("<II", block_type, total) + body + struct.pack("<I", total))

    def _interface(self, linktype: int) -> int:
        ifid = self._interfaces.get(linktype)
        if ifid is None:
            ifid = len(self._interfaces)
            self._interfaces[linktype] = ifid
            self._block(_IDB, struct.pack("<HHI", linktype, 0, _SNAPLEN))
        return ifid

    def packet(
        self, linktype: int, timestamp_us: int, data: bytes, orig_len: int, comment: str = ""
    ) -> None:
        ifid = self._interface(linktype)
        options = _option(_OPT_COMMENT, comment.encode()) + _END_OF_OPTIONS if comment else b""
        body = (
            struct.pack(
                "<IIIII",
                ifid,
                timestamp_us >> 32,
                timestamp_us & 0xFFFFFFFF,
                len(data),
                max(orig_len, len(data)),
            )
            + data
            + b"\0" * (-len(data) % 4)
            + options
        )
        self._block(_EPB, body)
        self.packets += 1
