"""The engine's effects as the store's rows, and the rollups' sums: pure (time is the
records' own; nothing here reads a clock or a file).

A flow adds to the rollups of the minute and the hour of its LAST packet (`time_end`): a
flow is attributed whole to the minute it ended in, not split over its duration, so a long
transfer shows as one peak at its end. (Splitting needs the packets' times, which a flow
record does not keep; the end is where its bytes are known.)
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any

from ips.core.addr import format_addr
from ips.core.events import Alert, AppEvent, Block, FlowEnd, LogRecord, MacBlock, Unblock
from ips.core.packet import PORT_PROTOS
from ips.geo.enrich import Enricher, flow_service
from ips.sinks.eve import EVE_APP_PROTOS, flow_community_id, flow_ifaces
from ips.store.schema import LEVELS

Row = tuple[Any, ...]
PROTO_WORDS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite"}
# The protected networks when none are given: the private and link-local ranges.
DEFAULT_HOME = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)


class HomeNetworks:
    """Which addresses are ours: a flow's direction is `out` (ours to elsewhere), `in`
    (elsewhere to ours), `internal` (both ours) or `external` (neither: a transit or a
    tap's view of others)."""

    def __init__(self, cidrs: Iterable[str] = DEFAULT_HOME) -> None:
        self.ranges: list[tuple[int, bytes, bytes]] = []
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            self.ranges.append(
                (
                    len(net.network_address.packed),
                    net.network_address.packed,
                    net.broadcast_address.packed,
                )
            )

    def holds(self, addr: bytes) -> bool:
        n = len(addr)
        return any(n == size and lo <= addr <= hi for size, lo, hi in self.ranges)

    def direction(self, src: bytes, dst: bytes) -> str:
        ours_src, ours_dst = self.holds(src), self.holds(dst)
        if ours_src:
            return "internal" if ours_dst else "out"
        return "in" if ours_dst else "external"


def _geo_end(enrich: Enricher | None, addr: bytes) -> tuple[str | None, int | None]:
    """An end's country and AS number; (None, None) without geo data or an answer (a
    private address has neither, whatever a database says)."""
    obj = enrich.endpoint(addr) if enrich is not None else None
    if not obj:
        return None, None
    return obj.get("country"), obj.get("asn")


def flow_row(
    end: FlowEnd, iface: str | None, home: HomeNetworks, enrich: Enricher | None = None
) -> Row:
    """The flows table's row (schema.FLOW_COLUMNS) of a flow record: a snapshot, taken when
    the record is handed over (the Flow is the engine's and may be reused after). ENRICH
    gives the ends' countries and AS numbers (the EVE writer's, so both say the same); the
    service name comes from the registry in the package, with or without it."""
    f = end.flow
    # The interfaces: tap mode's own (IFACE) or the flow's, as the engine saw them inline.
    in_iface, out_iface = flow_ifaces(f, iface)
    # An offloaded flow's volume: the kernel's when the worker read it (ips/io/conntrack.py).
    volume = getattr(end, "kernel", None) or f
    src_country, src_asn = _geo_end(enrich, f.src)
    dst_country, dst_asn = _geo_end(enrich, f.dst)
    app = f.app
    sni = http_host = None
    if app is not None:
        sni = app.tls_sni or app.quic_sni or None
        http_host = app.http_host or None
    return (
        f.first_seen,
        f.last_seen,
        f.flow_id,
        f.family,
        f.proto,
        f.src,
        f.sport,
        f.dst,
        f.dport,
        EVE_APP_PROTOS.get(getattr(f, "app_proto", None)),
        volume.pkts_fwd,
        volume.pkts_rev,
        volume.bytes_fwd,
        volume.bytes_rev,
        in_iface,
        end.reason,
        1 if f.replied else 0,
        1 if getattr(f, "offloaded", False) else 0,
        home.direction(f.src, f.dst),
        sni,
        http_host,
        f.dst_name,
        flow_community_id(f.proto, f.src, f.dst, f.sport, f.dport, f.icmp),
        src_country,
        src_asn,
        dst_country,
        dst_asn,
        flow_service(f.proto, f.sport, f.dport),
        out_iface,
    )


def _cid(ev: Any) -> str:
    return flow_community_id(ev.proto, ev.src, ev.dst, ev.sport, ev.dport, ev.icmp)


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


def alert_row(a: Alert, iface: str | None) -> Row:
    return (
        a.time, a.flow_id, a.family, a.proto, a.src, a.sport, a.dst, a.dport, a.action,
        a.signature_id, a.signature, a.severity, a.category, a.rule_name,
        EVE_APP_PROTOS.get(a.app_proto), a.dst_name, _cid(a), iface, _json(a.extra),
    )  # fmt: skip


def block_row(b: Block | Unblock | MacBlock) -> Row:
    if isinstance(b, Block):
        return (b.time, "block", b.addr, b.table, b.detector, b.offense, b.ttl, b.reason, None)
    if isinstance(b, MacBlock):
        return (
            b.time, "mac_block", b.claimed, b.table, b.detector, 1, b.ttl, b.reason, b.mac_text,
        )  # fmt: skip
    return (b.time, "unblock", b.addr, b.table, None, None, None, b.reason, None)


def log_row(r: LogRecord, iface: str | None) -> Row:
    return (
        r.time, r.flow_id, r.family, r.proto, r.src, r.sport, r.dst, r.dport, r.verdict,
        r.rule_name, r.dst_name, _cid(r), iface,
    )  # fmt: skip


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def app_row(e: AppEvent, iface: str | None) -> Row:
    """An application event: its main fields as columns, the whole EVE object as JSON."""
    body = e.body
    name = body.get("sni") or body.get("hostname") or body.get("rrname")
    ja3 = body.get("ja3")
    status = body.get("status")
    is_dns = e.event_type == "dns"
    return (
        e.time, e.flow_id, e.event_type, e.family, e.proto, e.src, e.sport, e.dst, e.dport,
        e.tx_id, _text(name),
        _text(body.get("type")) if is_dns else None,
        _text(body.get("rcode")) if is_dns else None,
        _text(body.get("http_method")), _text(body.get("url")),
        status if isinstance(status, int) else None,
        _text(body.get("version")) if e.event_type in ("tls", "quic") else None,
        _text(ja3.get("hash")) if isinstance(ja3, dict) else None,
        _text(body.get("ja4")), _cid(e), iface, _json(body) or "{}",
    )  # fmt: skip


# ---- rollups ------------------------------------------------------------------------------------

# Indexes into a flow row (schema.FLOW_COLUMNS), for the rollups.
_END, _PROTO, _SRC, _DPORT, _APP = 1, 4, 5, 8, 9
_DST, _PF, _PR, _BF, _BR, _IFACE, _DIRECTION, _SNI = 7, 10, 11, 12, 13, 14, 18, 19
_SRC_COUNTRY, _SRC_ASN, _DST_COUNTRY, _DST_ASN, _OUT_IFACE = 23, 24, 25, 26, 28

RollupKey = tuple[str, int, str, str]  # level, bucket, dim, key
Sums = list[int]  # flows, packets, bytes, bytes_fwd, bytes_rev


def bucket_of(t: float, level: str) -> int:
    """The start of the minute or hour (seconds since the epoch) that holds time t."""
    step = LEVELS[level]
    return int(t // step) * step


def port_key(proto: int, dport: int) -> str:
    return f"{dport}/{PROTO_WORDS.get(proto, str(proto))}"


def asn_key(asn: int) -> str:
    return f"AS{asn}"


def flow_keys(row: Row, names: dict[bytes, str] | None = None) -> list[tuple[str, str]]:
    """The (dimension, key) pairs a flow row adds to. names: a cache of formatted
    addresses (a batch's flows share them)."""
    names = {} if names is None else names
    proto, src, dst = row[_PROTO], row[_SRC], row[_DST]
    src_text = names.get(src)
    if src_text is None:
        src_text = names[src] = format_addr(src)
    dst_text = names.get(dst)
    if dst_text is None:
        dst_text = names[dst] = format_addr(dst)
    keys = [
        ("all", ""),
        ("src", src_text),
        ("dst", dst_text),
        ("proto", PROTO_WORDS.get(proto) or str(proto)),
        ("direction", row[_DIRECTION]),
    ]
    if proto in PORT_PROTOS:
        keys.append(("port", port_key(proto, row[_DPORT])))
    # A flow crosses the interface it came in on and (inline) the one it went out on: it
    # adds to each once, so an interface's volume is all that crossed it, either way.
    in_iface, out_iface = row[_IFACE], row[_OUT_IFACE]
    if in_iface:
        keys.append(("interface", in_iface))
    if out_iface and out_iface != in_iface:
        keys.append(("interface", out_iface))
    if row[_APP]:
        keys.append(("app", row[_APP]))
    if row[_SNI]:
        keys.append(("sni", row[_SNI]))
    # Each distinct country and AS number of the two ends once (schema.DIMENSIONS).
    src_country, dst_country = row[_SRC_COUNTRY], row[_DST_COUNTRY]
    if src_country:
        keys.append(("country", src_country))
    if dst_country and dst_country != src_country:
        keys.append(("country", dst_country))
    src_asn, dst_asn = row[_SRC_ASN], row[_DST_ASN]
    if src_asn is not None:
        keys.append(("asn", asn_key(src_asn)))
    if dst_asn is not None and dst_asn != src_asn:
        keys.append(("asn", asn_key(dst_asn)))
    return keys


def add_rollups(
    rows: Iterable[Row], into: dict[RollupKey, Sums] | None = None
) -> dict[RollupKey, Sums]:
    """The sums the flow rows add to each minute's rows ("1m", bucket, dim, key). The hour
    rows are made from these by the backend (summed, with each hour's largest minute as its
    peak candidate)."""
    sums: dict[RollupKey, Sums] = {} if into is None else into
    names: dict[bytes, str] = {}
    get = sums.get
    for row in rows:
        pf, pr, bf, br = row[_PF], row[_PR], row[_BF], row[_BR]
        packets, nbytes = pf + pr, bf + br
        minute = int(row[_END] // 60) * 60
        for dim, key in flow_keys(row, names):
            k = ("1m", minute, dim, key)
            s = get(k)
            if s is None:
                sums[k] = [1, packets, nbytes, bf, br]
            else:
                s[0] += 1
                s[1] += packets
                s[2] += nbytes
                s[3] += bf
                s[4] += br
    return sums
