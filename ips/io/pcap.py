"""Capture file adapter: read classic pcap and pcapng, write classic pcap.

The format is picked by the magic number, never the file name. Records come out as
`CaptureRecord(timestamp, linktype, data, orig_len)`; feed `data` and `linktype` to
`ips.core.decode.decode_frame`.

Errors: a file whose header (or a block in the middle) is corrupt raises `CaptureError`
(a ValueError carrying path and byte offset). A file that merely ends in the middle of its
last record -- what a capture cut short by a crash or a full disk looks like -- is not an
error: iteration stops after the last complete record and `CaptureReader.truncated` holds the
number of bytes left over (0 for a clean end). Check it after the loop if you care.

Work per file is bounded by what a real capture can hold: a run of more than
`MAX_EMPTY_RUN` packet records that carry no bytes, or of more than `MAX_SKIPPED_RUN` pcapng
blocks that carry no packet, raises CaptureError at once ("malformed capture"), and so does
a classic pcap record longer than both the file's snaplen and libpcap's largest snaplen. A
2 GB file of zeros behind a pcap header is refused after its first few kilobytes, not read
for minutes. `records`, `empty_records` and `skipped_blocks` count what was read.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import BinaryIO, NamedTuple

from ips.core.packet import LINKTYPE_RAW

__all__ = [
    "CaptureError",
    "CaptureReader",
    "CaptureRecord",
    "PcapLayout",
    "read_capture",
    "write_pcap",
]

_LINKTYPE_MASK = 0x0FFFFFFF  # upper bits may carry FCS-length flags
# A record/block larger than this is a corrupt length field, not a packet; refusing it keeps a
# bad file from making us allocate gigabytes.
_MAX_RECORD = 1 << 26
# libpcap's largest snaplen (MAXIMUM_SNAPLEN): it refuses a classic pcap record longer than
# this, whatever the file header claims; so do we, unless the header names a larger snaplen.
_LIBPCAP_MAX_SNAPLEN = 262144
# A packet record with no captured bytes is legal but useless, and a real capture has a few
# at most; thousands in a row are a file of zeros or a crafted one. The same for pcapng blocks
# that carry no packet (statistics, name resolution, custom): a handful between packets.
MAX_EMPTY_RUN = 1024
MAX_SKIPPED_RUN = 65536

_PCAP_US = 0xA1B2C3D4
_PCAP_NS = 0xA1B23C4D
_SHB_MAGIC = b"\x0a\x0d\x0d\x0a"  # palindromic: the same in both byte orders

_BT_IDB = 0x00000001
_BT_OPB = 0x00000002  # obsolete Packet Block, still written by old tools
_BT_SPB = 0x00000003
_BT_EPB = 0x00000006

_OPT_ENDOFOPT = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14


class CaptureRecord(NamedTuple):
    timestamp: float  # seconds since the epoch
    linktype: int  # LINKTYPE_* value, flag bits masked off
    data: bytes  # the captured bytes (may be shorter than orig_len)
    orig_len: int  # length of the packet on the wire


class PcapLayout(NamedTuple):
    """What a classic pcap file's header says of its records (CaptureReader.layout): their
    byte order ("<" or ">"), link type, the divisor of their fraction of a second, and the
    longest record this reader accepts. Records start at byte HEADER_LEN."""

    endian: str
    linktype: int
    divisor: int
    max_record: int


PCAP_HEADER_LEN = 24


class CaptureError(ValueError):
    """The capture file is not a pcap/pcapng file or is corrupt at `offset`."""

    def __init__(self, path: str | os.PathLike[str], offset: int, message: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.message = message
        super().__init__(f"{self.path}: at byte {offset}: {message}")


class _Interface:
    __slots__ = ("divisor", "linktype", "tsoffset")

    def __init__(self, linktype: int) -> None:
        self.linktype = linktype
        self.divisor = 1_000_000  # default if_tsresol: microseconds
        self.tsoffset = 0


class CaptureReader:
    """Iterator over the records of a pcap or pcapng file.

    Usable as a context manager; the file is closed when iteration ends, on error, or on
    `close()`. After iteration, `truncated` is the number of bytes of an incomplete final
    record (0 when the file ended cleanly). `format` is "pcap" or "pcapng".
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.truncated = 0
        self.format = ""
        self.records = 0  # packet records read (empty ones included)
        self.empty_records = 0  # packet records with no captured bytes
        self.skipped_blocks = 0  # pcapng blocks that carry no packet, skipped
        self.layout: PcapLayout | None = None  # classic pcap only: what its header says
        self._empty_run = 0  # empty packet records since the last one with data
        self._skipped_run = 0  # pcapng blocks without a packet since the last packet
        self._offset = 0
        # Where the captured bytes of the record just returned start in the file: what
        # `ipsctl mix` keeps to read a packet again by seeking (ips/mix/index.py).
        self.data_offset = 0
        # Closed when iteration ends, on error, or by close()/__exit__.
        self._f: BinaryIO | None = open(self.path, "rb", buffering=1 << 20)  # noqa: SIM115
        try:
            # The file header is parsed now so that a non-capture file fails at open time.
            magic = self._read(4)
            if len(magic) < 4:
                raise self._error(0, "file too short for a capture header")
            if magic == _SHB_MAGIC:
                self.format = "pcapng"
                endian = self._section(0, first=True)
                assert endian is not None
                self._it = self._iter_pcapng(endian)
            else:
                self.format = "pcap"
                self._it = self._open_pcap(magic)
        except BaseException:
            self.close()
            raise

    # -- iterator protocol --------------------------------------------------------------------

    def __iter__(self) -> Iterator[CaptureRecord]:
        return self

    def __next__(self) -> CaptureRecord:
        try:
            return next(self._it)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------------

    def _error(self, offset: int, message: str) -> CaptureError:
        return CaptureError(self.path, offset, message)

    def _count_packet(self, start: int, caplen: int) -> None:
        """Count a packet record; a long run of empty ones is a malformed capture."""
        self.records += 1
        self._skipped_run = 0
        if caplen:
            self._empty_run = 0
            return
        self.empty_records += 1
        self._empty_run += 1
        if self._empty_run > MAX_EMPTY_RUN:
            raise self._error(
                start,
                (
                    f"malformed capture: more than {MAX_EMPTY_RUN} packet records in a row "
                    "carry no bytes (a file of zeros or a crafted one); stopped reading"
                ),
            )

    def _count_skipped(self, start: int, btype: int) -> None:
        """Count a pcapng block without a packet; a long run of them is a malformed capture."""
        self.skipped_blocks += 1
        self._skipped_run += 1
        if self._skipped_run > MAX_SKIPPED_RUN:
            raise self._error(
                start,
                (
                    f"malformed capture: more than {MAX_SKIPPED_RUN} blocks in a row carry no "
                    f"packet (last of type {btype:#x}); stopped reading"
                ),
            )

    def _read(self, n: int) -> bytes:
        assert self._f is not None
        b = self._f.read(n)
        self._offset += len(b)
        return b

    # -- classic pcap -------------------------------------------------------------------------

    def _open_pcap(self, magic: bytes) -> Iterator[CaptureRecord]:
        m_le = struct.unpack("<I", magic)[0]
        m_be = struct.unpack(">I", magic)[0]
        if m_le in (_PCAP_US, _PCAP_NS):
            endian, m = "<", m_le
        elif m_be in (_PCAP_US, _PCAP_NS):
            endian, m = ">", m_be
        else:
            raise self._error(0, f"not a pcap or pcapng file (magic {magic.hex()})")
        rest = self._read(20)
        if len(rest) < 20:
            raise self._error(4, "truncated pcap file header")
        major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(endian + "HHiIII", rest)
        if major != 2:
            raise self._error(4, f"unsupported pcap version {major}")
        divisor = 1_000_000 if m == _PCAP_US else 1_000_000_000
        max_record = min(_MAX_RECORD, max(snaplen, _LIBPCAP_MAX_SNAPLEN))
        self.layout = PcapLayout(endian, network & _LINKTYPE_MASK, divisor, max_record)
        return self._iter_pcap(endian, network & _LINKTYPE_MASK, divisor, max_record)

    def _iter_pcap(
        self, endian: str, linktype: int, divisor: int, max_record: int
    ) -> Iterator[CaptureRecord]:
        hdr = struct.Struct(endian + "IIII")
        read = self._read
        while True:
            start = self._offset
            h = read(16)
            if len(h) < 16:
                self.truncated = len(h)
                return
            sec, frac, caplen, origlen = hdr.unpack(h)
            if caplen > max_record:
                raise self._error(start, f"record length {caplen} is implausible (corrupt file?)")
            self._count_packet(start, caplen)
            data = read(caplen)
            if len(data) < caplen:
                self.truncated = self._offset - start
                return
            self.data_offset = start + 16
            yield CaptureRecord(sec + frac / divisor, linktype, data, origlen)

    # -- pcapng -------------------------------------------------------------------------------

    def _section(self, start: int, first: bool) -> str | None:
        """Read the rest of a Section Header Block whose type field was just read.

        Returns the section's byte order, or None if the file ends inside the block (an error
        for the first block, which is the file header).
        """
        read = self._read
        # The length field can only be interpreted after the byte-order magic that follows it.
        head = read(8)
        if len(head) < 8:
            self._cut_section(start, first)
            return None
        rest, bom = head[:4], head[4:]
        if bom == b"\x4d\x3c\x2b\x1a":
            endian = "<"
        elif bom == b"\x1a\x2b\x3c\x4d":
            endian = ">"
        else:
            raise self._error(start + 8, f"bad pcapng byte-order magic {bom.hex()}")
        total = struct.unpack(endian + "I", rest)[0]
        if total < 28 or total % 4 or total > _MAX_RECORD:
            raise self._error(start, f"bad section header block length {total}")
        body = read(total - 12)
        if len(body) < total - 12:
            self._cut_section(start, first)
            return None
        if body[-4:] != rest:
            raise self._error(start, "block trailing length does not match its header")
        major = struct.unpack_from(endian + "H", body)[0]
        if major != 1:
            raise self._error(start + 12, f"unsupported pcapng version {major}")
        return endian

    def _cut_section(self, start: int, first: bool) -> None:
        if first:
            raise self._error(start, "truncated pcapng section header")
        self.truncated = self._offset - start

    def _iter_pcapng(self, endian: str) -> Iterator[CaptureRecord]:
        read = self._read
        interfaces: list[_Interface] = []
        last_ts = 0.0
        while True:
            start = self._offset
            head = read(8)
            if len(head) < 8:
                self.truncated = len(head)
                return
            if head[:4] == _SHB_MAGIC:
                # Un-read the length: _section reads it together with the byte-order magic.
                self._f.seek(-4, os.SEEK_CUR)  # type: ignore[union-attr]
                self._offset -= 4
                new_endian = self._section(start, first=False)
                if new_endian is None:
                    return
                endian = new_endian
                interfaces = []
                self._count_skipped(start, 0x0A0D0D0A)
                continue
            btype, total = struct.unpack(endian + "II", head)
            if total < 12 or total % 4 or total > _MAX_RECORD:
                raise self._error(start, f"bad block length {total} (block type {btype:#x})")
            body = read(total - 8)
            if len(body) < total - 8:
                self.truncated = self._offset - start
                return
            if body[-4:] != head[4:]:
                raise self._error(start, "block trailing length does not match its header")
            if btype in (_BT_EPB, _BT_OPB):
                if total < 32:
                    raise self._error(start, "packet block too short")
                if btype == _BT_EPB:
                    ifid, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(endian + "IIIII", body)
                else:
                    ifid, _drops, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(
                        endian + "HHIIII", body
                    )
                if caplen > total - 32:
                    raise self._error(start, "captured length overruns its block")
                if ifid >= len(interfaces):
                    raise self._error(start, f"packet for unknown interface {ifid}")
                iface = interfaces[ifid]
                self._count_packet(start, caplen)
                last_ts = ((ts_hi << 32) | ts_lo) / iface.divisor + iface.tsoffset
                self.data_offset = start + 28  # block header 8, packet fields 20
                yield CaptureRecord(last_ts, iface.linktype, body[20 : 20 + caplen], origlen)
            elif btype == _BT_SPB:
                if total < 16:
                    raise self._error(start, "simple packet block too short")
                if not interfaces:
                    raise self._error(start, "simple packet block before any interface")
                origlen = struct.unpack_from(endian + "I", body)[0]
                caplen = min(origlen, total - 16)
                self._count_packet(start, caplen)
                # SPBs carry no timestamp: repeat the last one so time never runs backwards
                # for a consumer that ages flows by it.
                data = body[4 : 4 + caplen]
                self.data_offset = start + 12
                yield CaptureRecord(last_ts, interfaces[0].linktype, data, origlen)
            elif btype == _BT_IDB:
                if total < 20:
                    raise self._error(start, "interface description block too short")
                interfaces.append(self._parse_idb(body, endian, start))
                self._count_skipped(start, btype)
            else:  # any other block (name resolution, statistics, custom...) is skipped
                self._count_skipped(start, btype)

    def _parse_idb(self, body: bytes, endian: str, start: int) -> _Interface:
        linktype = struct.unpack_from(endian + "H", body)[0]
        iface = _Interface(linktype & _LINKTYPE_MASK)
        opt_hdr = struct.Struct(endian + "HH")
        i = 8
        end = len(body) - 4  # trailing block length
        while i + 4 <= end:
            code, olen = opt_hdr.unpack_from(body, i)
            i += 4
            if code == _OPT_ENDOFOPT:
                break
            if i + olen > end:
                raise self._error(start + 8 + i, "interface option overruns its block")
            if code == _OPT_IF_TSRESOL and olen >= 1:
                v = body[i]
                # MSB clear: 10^-v seconds; set: 2^-(v & 0x7f). Integer divisors keep
                # nanosecond timestamps exact until the final float division.
                iface.divisor = 2 ** (v & 0x7F) if v & 0x80 else 10**v
            elif code == _OPT_IF_TSOFFSET and olen >= 8:
                iface.tsoffset = struct.unpack_from(endian + "q", body, i)[0]
            i += (olen + 3) & ~3
        return iface


def read_capture(path: str | os.PathLike[str]) -> CaptureReader:
    """Open a pcap/pcapng file and iterate its records (see `CaptureReader`).

    Raises CaptureError at once if the file header is not a capture header.
    """
    return CaptureReader(path)


def write_pcap(
    path: str | os.PathLike[str],
    records: Iterable[CaptureRecord | tuple[float, bytes] | bytes],
    linktype: int = LINKTYPE_RAW,
) -> int:
    """Write a classic microsecond pcap file; returns the number of records written.

    Each record is a CaptureRecord (its linktype is ignored: a classic pcap has one), a
    (timestamp, data) pair, or bare bytes (timestamp 0).
    """
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", _PCAP_US, 2, 4, 0, 0, 262144, linktype))
        for rec in records:
            if isinstance(rec, CaptureRecord):
                ts, data, origlen = rec.timestamp, rec.data, rec.orig_len
            elif isinstance(rec, (bytes, bytearray, memoryview)):
                ts, data = 0.0, bytes(rec)
                origlen = len(data)
            else:
                ts, data = rec
                origlen = len(data)
            sec = int(ts)
            usec = round((ts - sec) * 1_000_000)
            if usec >= 1_000_000:
                sec, usec = sec + 1, usec - 1_000_000
            f.write(struct.pack("<IIII", sec, usec, len(data), max(origlen, len(data))))
            f.write(data)
            count += 1
    return count
