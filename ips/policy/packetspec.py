"""Packets from a one-line description, for `ipsctl explain` and tests:

packet_from_text('tcp 10.0.0.1:1234 > 10.0.0.2:80 flags S')
packet_from_text('udp [2001:db8::1]:5353 > [2001:db8::2]:53 payload "hello"')
packet_from_text('icmp 10.0.0.1 > 10.0.0.2 type echo-request')
"""

from __future__ import annotations

import re
import shlex

from ips.core.build import PacketSpecError, build_packet
from ips.core.decode import decode_l3
from ips.core.packet import PROTO_ICMP, Packet
from ips.policy import names

__all__ = ["PacketSpecError", "packet_from_text"]


def _endpoint(text: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", text)
    if m:
        return m.group(1), int(m.group(2) or 0)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 0


def packet_from_text(text: str) -> Packet:
    """'PROTO SRC[:PORT] > DST[:PORT] [flags S] [type T [code C]] [payload "x"] [ttl N]
    [length N]'. IPv6 with ports: [2001:db8::1]:80."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise PacketSpecError(str(exc)) from None
    if len(words) < 4 or words[2] != ">":
        raise PacketSpecError("expected 'PROTO SRC[:PORT] > DST[:PORT] …'")
    proto_name = words[0].lower()
    proto = names.PROTOCOLS.get(proto_name)
    if proto is None:
        if not proto_name.isdigit():
            raise PacketSpecError(f"unknown protocol '{words[0]}' (tcp, udp, icmp, icmpv6)")
        proto = int(proto_name)
    try:
        src, sport = _endpoint(words[1])
        dst, dport = _endpoint(words[3])
    except ValueError:
        raise PacketSpecError("ports must be numbers") from None
    opts: dict[str, object] = {}
    rest = words[4:]
    i = 0
    while i < len(rest):
        key = rest[i]
        if i + 1 >= len(rest):
            raise PacketSpecError(f"'{key}' needs a value")
        val = rest[i + 1]
        i += 2
        if key == "flags":
            bits = 0
            for ch in val:
                if ch not in names.TCP_FLAG_LETTERS:
                    raise PacketSpecError(f"unknown TCP flag '{ch}'")
                bits |= names.TCP_FLAG_LETTERS[ch]
            opts["flags"] = bits
        elif key == "type":
            table = names.ICMP_TYPES if proto == PROTO_ICMP else names.ICMPV6_TYPES
            opts["icmp_type"] = int(val) if val.isdigit() else table.get(val)
            if opts["icmp_type"] is None:
                raise PacketSpecError(f"unknown ICMP type '{val}'")
        elif key == "code":
            opts["icmp_code"] = int(val)
        elif key == "payload":
            opts["payload"] = val.encode()
        elif key in ("ttl", "tos"):
            opts[key] = int(val)
        elif key == "length":
            opts["pad_to"] = int(val)
        else:
            raise PacketSpecError(
                f"unknown option '{key}' (flags, type, code, payload, ttl, length)"
            )
    pad_to = int(opts.pop("pad_to", 0))  # type: ignore[call-overload]
    try:
        data = build_packet(proto, src, dst, sport, dport, **opts)  # type: ignore[arg-type]
    except ValueError as exc:
        raise PacketSpecError(str(exc)) from None
    if pad_to > len(data):
        extra = pad_to - len(data)
        payload = bytes(opts.get("payload", b"")) + b"\0" * extra  # type: ignore[call-overload]
        opts["payload"] = payload
        data = build_packet(proto, src, dst, sport, dport, **opts)  # type: ignore[arg-type]
    pkt = decode_l3(data)
    if not isinstance(pkt, Packet):
        raise PacketSpecError(f"built packet does not decode: {pkt}")
    return pkt
