"""The counters of our rules, read straight from nf_tables over netlink.

Why not `nft list table`: libnftables fetches every element of every set of the table before
it prints a single rule, and a static table of a million entries (named sets, see
ips/translate/nft/) makes that take 15 to 40 seconds — every `ipsctl status` would wait
that long. A dump of the rules alone (NFT_MSG_GETRULE, filtered to our table by the kernel)
does not touch the sets: milliseconds.

    request   nlmsghdr(type = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETRULE, REQUEST | DUMP)
              nfgenmsg(family NFPROTO_INET), NFTA_RULE_TABLE "ipsctl"
    answer    one message a rule: NFTA_RULE_USERDATA (libnftnl's TLVs; type 0 is the
              comment, NUL-terminated) and NFTA_RULE_EXPRESSIONS, a list of expressions
              (NFTA_EXPR_NAME, NFTA_EXPR_DATA); a "counter" carries NFTA_COUNTER_BYTES and
              NFTA_COUNTER_PACKETS (big-endian u64)

(linux/netfilter/nf_tables.h, libnftnl's udata.h.) parse_rules is pure; dump_counters opens
the socket, in the network namespace of the calling process.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

from ips.translate.nft import COMMENT_PREFIX, FAMILY, TABLE, RuleCounter

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETRULE = 7
NLM_F_REQUEST = 0x01
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NFPROTO_INET = 1
NFTA_RULE_TABLE = 1
NFTA_RULE_EXPRESSIONS = 4
NFTA_RULE_USERDATA = 7
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
UDATA_RULE_COMMENT = 0
NLA_TYPE_MASK = 0x3FFF

_NLMSGHDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_U64 = struct.Struct("!Q")
_TIMEOUT = 5.0  # seconds for the whole dump

assert FAMILY == "inet"  # the request below asks for NFPROTO_INET


def _attrs(data: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """(type, value) of each netlink attribute in data."""
    view = memoryview(data)
    end = len(view)
    offset = 0
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(view, offset)
        if length < 4 or offset + length > end:
            raise ValueError(f"attribute length {length} at {offset}")
        yield kind & NLA_TYPE_MASK, view[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def _comment(userdata: memoryview) -> str | None:
    offset = 0
    while offset + 2 <= len(userdata):
        kind, length = userdata[offset], userdata[offset + 1]
        value = bytes(userdata[offset + 2 : offset + 2 + length])
        if kind == UDATA_RULE_COMMENT:
            return value.split(b"\0", 1)[0].decode("utf-8", "replace")
        offset += 2 + length
    return None


def _counters(expressions: memoryview) -> Iterator[tuple[int, int]]:
    """(packets, bytes) of each counter expression of a rule."""
    for kind, elem in _attrs(expressions):
        if kind != NFTA_LIST_ELEM:
            continue
        name, data = None, None
        for akind, value in _attrs(elem):
            if akind == NFTA_EXPR_NAME:
                name = bytes(value).split(b"\0", 1)[0]
            elif akind == NFTA_EXPR_DATA:
                data = value
        if name == b"counter" and data is not None:
            packets = octets = 0
            for ckind, value in _attrs(data):
                if ckind == NFTA_COUNTER_PACKETS:
                    packets = _U64.unpack(value)[0]
                elif ckind == NFTA_COUNTER_BYTES:
                    octets = _U64.unpack(value)[0]
            yield packets, octets


def parse_rules(message_body: bytes | memoryview) -> tuple[str | None, list[tuple[int, int]]]:
    """One NFT_MSG_NEWRULE body (after nlmsghdr and nfgenmsg) -> (comment, counters)."""
    comment: str | None = None
    counters: list[tuple[int, int]] = []
    for kind, value in _attrs(message_body):
        if kind == NFTA_RULE_USERDATA:
            comment = _comment(value)
        elif kind == NFTA_RULE_EXPRESSIONS:
            counters = list(_counters(value))
    return comment, counters


def add_rule(
    out: dict[str, RuleCounter], comment: str | None, counters: list[tuple[int, int]]
) -> None:
    """Sum a rule's counters under its comment, as parse_counters does with nft's JSON."""
    if comment is None or not comment.startswith(COMMENT_PREFIX):
        return
    for packets, octets in counters:
        old = out.get(comment, RuleCounter())
        out[comment] = RuleCounter(old.packets + packets, old.bytes + octets)


def dump_request(seq: int) -> bytes:
    table = TABLE.encode() + b"\0"
    attr = _NLA.pack(4 + len(table), NFTA_RULE_TABLE) + table + b"\0" * (-len(table) % 4)
    body = struct.pack("=BBH", NFPROTO_INET, 0, 0) + attr
    msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE
    return _NLMSGHDR.pack(16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def dump_counters() -> dict[str, RuleCounter]:
    """Packets and bytes per comment of the rules of `inet ipsctl` (as Nft.counters). Raises
    OSError when netlink refuses (no table: an empty answer, not an error)."""
    out: dict[str, RuleCounter] = {}
    seq = 1
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(_TIMEOUT)
        sock.bind((0, 0))
        sock.send(dump_request(seq))
        while True:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, msg_type, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < 16 or offset + length > len(data):
                    raise OSError(f"malformed netlink answer (length {length})")
                if msg_seq == seq:
                    if msg_type == NLMSG_DONE:
                        return out
                    if msg_type == NLMSG_ERROR:
                        errno = -struct.unpack_from("=i", data, offset + 16)[0]
                        if errno == 0:
                            return out
                        if errno == 2:  # ENOENT: no table, no counters
                            return {}
                        raise OSError(errno, f"nf_tables rule dump: {errno}")
                    if msg_type & 0xFF == 6:  # NFT_MSG_NEWRULE: one rule
                        body = memoryview(data)[offset + 20 : offset + length]
                        add_rule(out, *parse_rules(body))
                offset += (length + 3) & ~3
