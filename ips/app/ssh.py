"""SSH identification strings (RFC 4253 section 4.2): the software banners of both sides.

    SSH-protoversion-softwareversion SP comments CR LF

A server may send other lines before its banner (the RFC allows it); they are skipped. The
line is at most 255 bytes with its CR LF; a longer one, or no banner in the first
`MAX_PREAMBLE` bytes, is malformed. A bare LF ends the line too (old clients send it).
"""

from __future__ import annotations

from typing import NamedTuple

from ips.core.packet import Malformed

__all__ = ["MAX_LINE", "MAX_PREAMBLE", "REASONS", "SshBanner", "eve_ssh", "parse_banner"]

MAX_LINE = 255
MAX_PREAMBLE = 8192  # lines before the banner a server may send, in total

_reasons: list[str] = []


def _m(reason: str) -> Malformed:
    _reasons.append(reason)
    return Malformed(reason)


M_NOT_SSH = _m("ssh.not-ssh")
M_LINE_TOO_LONG = _m("ssh.line-too-long")
M_BAD_BANNER = _m("ssh.bad-banner")
M_NO_BANNER = _m("ssh.no-banner")
REASONS: tuple[str, ...] = tuple(_reasons)


class SshBanner(NamedTuple):
    proto_version: str  # "2.0", or "1.99" for a server speaking both
    software: str  # e.g. "OpenSSH_9.2p1"
    comments: str  # what follows the first space, "" when none


def parse_banner(data: bytes, *, server: bool = False) -> SshBanner | Malformed | None:
    """The banner at the start of one direction's stream; None when more bytes are needed.

    `server` allows other lines before the banner (a client must start with it)."""
    pos = 0
    n = len(data)
    while True:
        end = data.find(b"\n", pos, pos + MAX_LINE)
        if end < 0:
            if n - pos >= MAX_LINE:
                return M_LINE_TOO_LONG
            if n - pos >= 4 and not data.startswith(b"SSH-", pos) and not server:
                return M_NOT_SSH
            return None
        line = data[pos:end]
        if line.startswith(b"SSH-"):
            return _banner(line[:-1] if line.endswith(b"\r") else line)
        if not server:
            return M_NOT_SSH
        pos = end + 1
        if pos >= MAX_PREAMBLE:
            return M_NO_BANNER


def _banner(line: bytes) -> SshBanner | Malformed:
    text = line[4:].decode("ascii", "replace")
    proto, dash, rest = text.partition("-")
    if not dash or not proto or not rest:
        return M_BAD_BANNER
    software, _, comments = rest.partition(" ")
    if not software:
        return M_BAD_BANNER
    return SshBanner(proto, software, comments)


def eve_ssh(client: SshBanner | None, server: SshBanner | None) -> dict[str, object]:
    """The EVE `ssh` object (Suricata's names) from the two banners seen."""
    out: dict[str, object] = {}
    for side, banner in (("client", client), ("server", server)):
        if banner is not None:
            out[side] = {"proto_version": banner.proto_version,
                         "software_version": banner.software}  # fmt: skip
    return out
