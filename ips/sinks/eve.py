"""EVE-style JSON lines, with Suricata's field names, so tools that read Suricata's eve.json
(jq recipes, Filebeat's suricata module, Elastic/Splunk parsers) can read ours.

One JSON object per line: timestamp, flow_id, event_type, src_ip, src_port, dest_ip,
dest_port, proto, and per event type an `alert`, `drop` or `flow` object.

Detectors: a detection is an `alert` (category = the detector's name, signature_id in
9000000-9000999) whose details are in a top-level `ipsctl` object (typed values: source,
target(s), count, threshold, window, …; Suricata puts protocol details at the top level the
same way) and whose `alert.metadata` has `detector: [NAME]` (Suricata's metadata is lists of
strings). Blocks have no Suricata equivalent: `ipsctl_block` and `ipsctl_unblock` events,
with src_ip the address and an object of the same name (no flow, no destination).

Application layer (ips/app/inspect.py): `tls`, `quic`, `dns` (version 2 query and answer
records), `http` and `ssh` events, each with the object of that name as Suricata writes it.
Every line about a flow or a packet (flow, alert, drop, ipsctl_log and the application
events) carries the flow's `community_id` (Community ID v1, seed 0); alerts carry the flow's
`app_proto`; when passive DNS named the flow's responder, `ipsctl.dst_name` says so. A
rule's alert (and drop/log record) has the application-layer object of what the client said
(`tls`, `http`, `dns`, `quic`, `ssh`: ips/app/alert_fields.py) at the top level, as
Suricata's alert metadata has it; a flow record's `ipsctl` has the `sni` and `http_host`
the application layer read.

Who is on the other end (ips/geo/enrich.py), when the writer has an Enricher: flow records,
alerts, drop and ipsctl_log records carry `ipsctl.src_geo` and `ipsctl.dst_geo` (country,
asn, org, site; a non-public address its scope only), `ipsctl.service` (the IANA name of the
responder's port) and, with reverse DNS on and no passive DNS name, `ipsctl.dst_rdns`.
Suricata's schema has no place for them. The lookups happen here, where the line is written,
through GeoDb's cache: never on the packet path.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from ips.app.community_id import community_id, community_id_portless
from ips.core.addr import format_addr
from ips.core.events import (
    Alert,
    AppEvent,
    Block,
    Effect,
    FlowEnd,
    LogRecord,
    MacBlock,
    PacketEvent,
    Unblock,
)
from ips.core.flow import TCP_STATE_NAMES, Flow
from ips.core.packet import PORT_PROTOS
from ips.geo.enrich import Enricher
from ips.safefile import open_private_file
from ips.sinks.syslog import SyslogSink

PROTO_LABELS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 132: "SCTP", 47: "GRE"}


# Suricata's flow.reason words for ours.
EVE_END_REASONS = {
    "timeout": "timeout",
    "evicted": "forced",
    "reused": "forced",
    "shutdown": "shutdown",
}


_SECONDS_KEPT = 4096
_second_stamps: dict[int, str] = {}  # whole second -> "2024-05-01T12:00:00"


def eve_timestamp(t: float) -> str:
    """Suricata's format: 2024-05-01T12:00:00.123456+0000.

    The same text as datetime.fromtimestamp(t, UTC).strftime(...) at a fifth of the cost (a
    flow record has three): the date and time of day are formatted once per whole second,
    the microseconds rounded as datetime does (half to even, carrying into the second)."""
    fraction, whole = math.modf(t)
    micro = round(fraction * 1e6)
    second = int(whole)
    if micro >= 1_000_000:
        micro -= 1_000_000
        second += 1
    elif micro < 0:  # before 1970
        micro += 1_000_000
        second -= 1
    stamp = _second_stamps.get(second)
    if stamp is None:
        if len(_second_stamps) >= _SECONDS_KEPT:
            _second_stamps.clear()
        stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_stamps[second] = stamp
    return f"{stamp}.{micro:06d}+0000"


def _proto_label(proto: int) -> str:
    return PROTO_LABELS.get(proto, str(proto))


# One EVE record: JSON objects nested, as json.dumps takes them (read as Any).
Record = dict[str, Any]


def flow_community_id(
    proto: int, src: bytes, dst: bytes, sport: int, dport: int, icmp: int = -1
) -> str:
    """The Community ID of a flow or event: ports for TCP, UDP and SCTP; for ICMP and
    ICMPv6 the type and code (`icmp`, type << 8 | code), without them when not known."""
    if proto == 1 or proto == 58:
        if icmp < 0:
            return community_id_portless(proto, src, dst)
        return community_id(proto, src, dst, icmp >> 8, icmp & 0xFF)
    return community_id(proto, src, dst, sport, dport)


def _base(ev: PacketEvent, event_type: str, in_iface: str | None) -> Record:
    record: Record = {
        "timestamp": eve_timestamp(ev.time),
        "flow_id": ev.flow_id,
    }
    if in_iface:
        record["in_iface"] = in_iface
    record["event_type"] = event_type
    record["src_ip"] = ev.src_ip
    if ev.proto in PORT_PROTOS:
        record["src_port"] = ev.sport
    record["dest_ip"] = ev.dest_ip
    if ev.proto in PORT_PROTOS:
        record["dest_port"] = ev.dport
    record["proto"] = _proto_label(ev.proto)
    record["community_id"] = flow_community_id(
        ev.proto, ev.src, ev.dst, ev.sport, ev.dport, ev.icmp
    )
    return record


def _name_of_destination(record: Record, ev: PacketEvent) -> Record:
    """ipsctl.dst_name: the passive DNS name of the flow's responder, when known; and the
    application-layer objects of a rule's alert or log record (`tls`, `http`, `dns`, `quic`,
    `ssh`: what the client said when the rule matched) at the top level, as Suricata puts
    them on alerts."""
    app_layer = ev.app_layer
    if app_layer is not None:
        for name, body in app_layer.items():
            record.setdefault(name, body)
    if ev.dst_name is not None:
        own = record.setdefault("ipsctl", {})
        own["dst_name"] = ev.dst_name
    return record


def _peer_fields(record: Record, ev: PacketEvent, enrich: Enricher | None) -> Record:
    """ipsctl's src_geo, dst_geo, service and dst_rdns of a packet's record (an alert's
    packet may be a reply: its service is the destination port's, else the source's)."""
    if enrich is not None:
        named = ev.dst_name is not None
        fields = enrich.fields(
            ev.proto, ev.src, ev.dst, ev.sport, ev.dport, named=named, responder_known=False
        )
        if fields:
            record.setdefault("ipsctl", {}).update(fields)
    return record


def alert_record(
    alert: Alert, in_iface: str | None = None, enrich: Enricher | None = None
) -> Record:
    record = _base(alert, "alert", in_iface)
    record["alert"] = {
        "action": alert.action,
        "gid": 1,
        "signature_id": alert.signature_id,
        "rev": 1,
        "signature": alert.signature,
        "category": alert.category,
        "severity": alert.severity,
        "metadata": {"rule": [alert.rule_name]},
    }
    app = EVE_APP_PROTOS.get(alert.app_proto)
    if app is not None:
        record["app_proto"] = app
    if alert.extra is not None:
        record["alert"]["metadata"]["detector"] = [alert.category]
        record["ipsctl"] = {"detector": alert.category, **alert.extra}
    return _peer_fields(_name_of_destination(record, alert), alert, enrich)


def app_record(event: AppEvent, in_iface: str | None = None) -> Record:
    """An application-layer event (tls, quic, dns, http, ssh): the object Suricata writes
    under its name; the transaction's number (http, dns) is top-level `tx_id`, as Suricata
    has it."""
    record = _base(event, event.event_type, in_iface)
    if event.tx_id is not None:
        record["tx_id"] = event.tx_id
    record[event.event_type] = event.body
    return _name_of_destination(record, event)


def block_record(block: Block) -> Record:
    """An address went into a block table (ipsctl_block)."""
    return {
        "timestamp": eve_timestamp(block.time),
        "event_type": "ipsctl_block",
        "src_ip": block.addr_text,
        "ipsctl_block": {
            "table": block.table,
            "detector": block.detector,
            "offense": block.offense,
            "ttl": block.ttl,
            "expires": eve_timestamp(block.time + block.ttl),
            "reason": block.reason,
        },
    }


def mac_block_record(block: MacBlock) -> Record:
    """The sender of forged packets went into the set of banned MACs (ipsctl_block with
    `ether`; src_ip is the address its packets claimed, which is NOT blocked)."""
    return {
        "timestamp": eve_timestamp(block.time),
        "event_type": "ipsctl_block",
        "src_ip": block.claimed_text,
        "ipsctl_block": {
            "table": block.table,
            "ether": block.mac_text,
            "claimed": block.claimed_text,
            "evidence": block.evidence,
            "detector": block.detector,
            "offense": 1,
            "ttl": block.ttl,
            "expires": eve_timestamp(block.time + block.ttl),
            "reason": block.reason,
        },
    }


def unblock_record(unblock: Unblock) -> Record:
    """An address left a block table (ipsctl_unblock): expired, manual or flush."""
    return {
        "timestamp": eve_timestamp(unblock.time),
        "event_type": "ipsctl_unblock",
        "src_ip": unblock.addr_text,
        "ipsctl_unblock": {"table": unblock.table, "reason": unblock.reason},
    }


def drop_record(
    log: LogRecord, in_iface: str | None = None, enrich: Enricher | None = None
) -> Record:
    """A refusing `log` rule's record, as Suricata's drop log writes it; the rule's name goes
    in ipsctl's own object (Suricata's `drop` object has no place for it)."""
    record = _base(log, "drop", in_iface)
    record["drop"] = {"reason": "rules"}
    record = _name_of_destination(record, log)
    record.setdefault("ipsctl", {})["rule"] = log.rule_name
    return _peer_fields(record, log, enrich)


def log_record(
    log: LogRecord, in_iface: str | None = None, enrich: Enricher | None = None
) -> Record:
    """A `log` rule's record. Suricata has no such type; ours is `ipsctl_log`, alongside."""
    record = _base(log, "ipsctl_log", in_iface)
    record["ipsctl_log"] = {"verdict": log.verdict, "rule": log.rule_name}
    return _peer_fields(_name_of_destination(record, log), log, enrich)


# A flow's app_proto as Suricata writes it: "failed" where detection gave up; a flow whose
# protocol is not known (no payload seen, or none to look for) has no app_proto at all.
EVE_APP_PROTOS: dict[str | None, str] = {
    "tls": "tls",
    "http": "http",
    "dns": "dns",
    "ssh": "ssh",
    "quic": "quic",
    "unknown": "failed",
}


def flow_record(
    end: FlowEnd, in_iface: str | None = None, enrich: Enricher | None = None
) -> Record:
    flow = end.flow
    ev = PacketEvent(
        end.time,
        flow.flow_id,
        flow.family,
        flow.proto,
        flow.src,
        flow.sport,
        flow.dst,
        flow.dport,
    )
    ev.icmp = flow.icmp
    in_iface, out_iface = flow_ifaces(flow, in_iface)
    record = _base(ev, "flow", in_iface)
    cid = record.pop("community_id")
    f = flow
    app = EVE_APP_PROTOS.get(getattr(f, "app_proto", None))
    if app is not None:
        record["app_proto"] = app
    record["community_id"] = cid
    state = "established" if f.replied else "new"
    tcp_state = TCP_STATE_NAMES[f.tcp_state] if f.proto == 6 else None
    if tcp_state in ("closed", "closing", "time_wait"):
        state = "closed"
    # An offloaded flow's volume is the kernel's when the worker read conntrack's accounting
    # (ips/io/conntrack.py): the engine stopped counting at the offload.
    volume = getattr(end, "kernel", None) or f
    record["flow"] = {
        "pkts_toserver": volume.pkts_fwd,
        "pkts_toclient": volume.pkts_rev,
        "bytes_toserver": volume.bytes_fwd,
        "bytes_toclient": volume.bytes_rev,
        "start": eve_timestamp(f.first_seen),
        "end": eve_timestamp(f.last_seen),
        "age": int(f.last_seen - f.first_seen),
        "state": state,
        "reason": EVE_END_REASONS.get(end.reason, end.reason),
    }
    if getattr(f, "offloaded", False):  # Suricata's word: the rest went past the engine
        record["flow"]["bypass"] = "capture"
    kernel = getattr(end, "kernel", None)
    if kernel is not None:  # Suricata's `bypassed`: what went past the engine
        record["flow"]["bypassed"] = {
            "pkts_toserver": max(0, kernel.pkts_fwd - f.pkts_fwd),
            "pkts_toclient": max(0, kernel.pkts_rev - f.pkts_rev),
            "bytes_toserver": max(0, kernel.bytes_fwd - f.bytes_fwd),
            "bytes_toclient": max(0, kernel.bytes_rev - f.bytes_rev),
        }
    if f.proto == 6:
        both = f.flags_fwd | f.flags_rev
        tcp: dict[str, object] = {
            "tcp_flags": f"{both:02x}",
            "tcp_flags_ts": f"{f.flags_fwd:02x}",
            "tcp_flags_tc": f"{f.flags_rev:02x}",
        }
        for name, bit in (("syn", 2), ("fin", 1), ("rst", 4), ("psh", 8), ("ack", 16)):
            if both & bit:
                tcp[name] = True
        tcp["state"] = tcp_state
        record["tcp"] = tcp
    own = _flow_names(f) or {}
    if out_iface is not None:
        own["out_iface"] = out_iface
    if kernel is not None:  # where the counts come from: conntrack's "destroy" or "get"
        own["counted_by"] = f"conntrack-{kernel.source}"
    if enrich is not None:
        named = bool(own.get("dst_name") or own.get("sni") or own.get("http_host"))
        own.update(enrich.fields(f.proto, f.src, f.dst, f.sport, f.dport, named=named))
    if own:
        record["ipsctl"] = own
    return record


def flow_ifaces(flow: Flow, given: str | None) -> tuple[str | None, str | None]:
    """A flow record's interfaces: (in_iface, out_iface). GIVEN is the writer's own (tap
    mode's interface read), which wins and has no way out; otherwise the flow's, as the
    engine found them on its first decided packet (inline: where it came in on and went out
    on)."""
    if given:
        return given, None
    return getattr(flow, "iif", None), getattr(flow, "oif", None)


def _flow_names(f: Flow) -> dict[str, str] | None:
    """A flow record's `ipsctl` object: the responder's passive DNS name (`dst_name`) and the
    server name the application layer read (`sni` of TLS or QUIC, `http_host`), when known;
    None when neither is."""
    own: dict[str, str] = {}
    if f.dst_name is not None:
        own["dst_name"] = f.dst_name
    app = f.app
    if app is not None:
        sni = app.tls_sni or app.quic_sni
        if sni:
            own["sni"] = sni
        if app.http_host:
            own["http_host"] = app.http_host
    return own or None


# The tcp object's flag words for each combination of FIN, SYN, RST, PSH and ACK, in
# flow_record's order.
_TCP_FLAG_WORDS = tuple(
    "".join(
        f',"{name}":true'
        for name, bit in (("syn", 2), ("fin", 1), ("rst", 4), ("psh", 8), ("ack", 16))
        if bits & bit
    )
    for bits in range(32)
)
_TEXTS_KEPT = 1024
_json_texts: dict[str, str] = {}  # interface name or end reason -> its JSON string


def _json_text(text: str) -> str:
    quoted = _json_texts.get(text)
    if quoted is None:
        if len(_json_texts) >= _TEXTS_KEPT:
            _json_texts.clear()
        quoted = _json_texts[text] = json.dumps(text)
    return quoted


def flow_line(end: FlowEnd, in_iface: str | None = None, enrich: Enricher | None = None) -> str:
    """flow_record as its JSON line, written out directly: the same text as
    json.dumps(flow_record(end, in_iface), separators=(",", ":")) at under half the cost —
    every connection ends in one, so it is the commonest record by far. Every string in it
    is a timestamp, an address, or a word of ours, except the interface name and the end
    reason, which go through json.dumps."""
    f = end.flow
    proto = f.proto
    in_iface, out_iface = flow_ifaces(f, in_iface)
    iface = f',"in_iface":{_json_text(in_iface)}' if in_iface else ""
    src, dst = format_addr(f.src), format_addr(f.dst)
    if proto in PORT_PROTOS:
        endpoints = f'{src}","src_port":{f.sport},"dest_ip":"{dst}","dest_port":{f.dport}'
    else:
        endpoints = f'{src}","dest_ip":"{dst}"'
    state = "established" if f.replied else "new"
    if proto == 6:
        tcp_state = TCP_STATE_NAMES[f.tcp_state]
        if tcp_state in ("closed", "closing", "time_wait"):
            state = "closed"
        fwd, rev = f.flags_fwd, f.flags_rev
        both = fwd | rev
        words = _TCP_FLAG_WORDS[both & 31]
        tail = (
            f'}},"tcp":{{"tcp_flags":"{both:02x}","tcp_flags_ts":"{fwd:02x}",'
            f'"tcp_flags_tc":"{rev:02x}"{words},"state":"{tcp_state}"}}'
        )
    else:
        tail = "}"  # the flow object's end; the record's comes after ipsctl's object
    app = EVE_APP_PROTOS.get(getattr(f, "app_proto", None))
    app_field = f',"app_proto":"{app}"' if app is not None else ""
    cid = flow_community_id(proto, f.src, f.dst, f.sport, f.dport, f.icmp)
    first, last = f.first_seen, f.last_seen
    bypass = ',"bypass":"capture"' if getattr(f, "offloaded", False) else ""
    # An offloaded flow with the kernel's counts (ips/io/conntrack.py): its volume is the
    # kernel's, `bypassed` what went past the engine, and `counted_by` says where the counts
    # come from (since short connections are offloaded at their first payload, most records
    # of a busy gateway are these).
    kernel = end.kernel
    volume = f if kernel is None else kernel
    if kernel is not None:
        bypass += (
            f',"bypassed":{{"pkts_toserver":{max(0, kernel.pkts_fwd - f.pkts_fwd)},'
            f'"pkts_toclient":{max(0, kernel.pkts_rev - f.pkts_rev)},'
            f'"bytes_toserver":{max(0, kernel.bytes_fwd - f.bytes_fwd)},'
            f'"bytes_toclient":{max(0, kernel.bytes_rev - f.bytes_rev)}}}'
        )
    if f.dst_name is None and f.app is None:
        names_text = ""  # the common case: nothing named
        named = False
    else:
        names = _flow_names(f)
        named = names is not None
        names_text = "" if names is None else json.dumps(names, separators=(",", ":"))[1:-1]
    if out_iface is not None:
        out_text = f'"out_iface":{_json_text(out_iface)}'
        names_text = f"{names_text},{out_text}" if names_text else out_text
    if kernel is not None:  # "destroy" or "get": words of ours
        counted = f'"counted_by":"conntrack-{kernel.source}"'
        names_text = f"{names_text},{counted}" if names_text else counted
    peers = (
        enrich.fields_json(proto, f.src, f.dst, f.sport, f.dport, named)
        if enrich is not None
        else ""
    )
    if names_text and peers:
        own = f',"ipsctl":{{{names_text},{peers}}}'
    elif names_text or peers:
        own = f',"ipsctl":{{{names_text or peers}}}'
    else:
        own = ""
    return (
        f'{{"timestamp":"{eve_timestamp(end.time)}","flow_id":{f.flow_id}{iface}'
        f',"event_type":"flow","src_ip":"{endpoints},"proto":"{_proto_label(proto)}"{app_field}'
        f',"community_id":"{cid}","flow":{{'
        f'"pkts_toserver":{volume.pkts_fwd},"pkts_toclient":{volume.pkts_rev},'
        f'"bytes_toserver":{volume.bytes_fwd},"bytes_toclient":{volume.bytes_rev},'
        f'"start":"{eve_timestamp(first)}","end":"{eve_timestamp(last)}",'
        f'"age":{int(last - first)},"state":"{state}",'
        f'"reason":{_json_text(EVE_END_REASONS.get(end.reason, end.reason))}{bypass}{tail}{own}}}'
    )


def open_eve_file(path: str) -> IO[str]:
    """PATH opened to write EVE lines from its start (replay's --eve), the way the daemon's
    files are opened: never through a symbolic link, never in a directory others can change,
    created 0640 with the `ipsctl` group (ips.safefile; UnsafePathError says why not)."""
    return os.fdopen(open_private_file(path, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8")


# What a verdict becomes in tap mode, where nothing is enforced.
PASSIVE_ACTIONS = {"blocked": "would_drop"}
SYSLOG_EVENTS = frozenset({"alert", "drop", "ipsctl_block", "ipsctl_unblock"})


class LineStream(Protocol):
    def write(self, line: str) -> object: ...


class EveWriter:
    """Writes events as JSON lines to a text stream (with newlines) or a RotatingLog (lines),
    and the notable ones (alerts, drops, blocks) to syslog when given one.

    passive: tap mode. Nothing was enforced, and the records say so: alert.action
    `would_drop` instead of `blocked`, a `log` rule's drop is an `ipsctl_log` with verdict
    `would_drop` (never a `drop` event), blocks carry `enforced: false` unless
    blocks_enforced."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        log: LineStream | None = None,
        syslog: SyslogSink | None = None,
        in_iface: str | None = None,
        drops: bool = True,
        passive: bool = False,
        blocks_enforced: bool = True,
        enrich: Enricher | None = None,
    ):
        self.stream = stream
        self.log = log
        self.syslog = syslog
        self.in_iface = in_iface
        self.drops = drops
        self.passive = passive
        self.blocks_enforced = blocks_enforced
        self.enrich = enrich  # who is on the other end (ips/geo/enrich.py); None: no fields
        self.written = 0

    def write(self, record: dict[str, object]) -> None:
        self.write_line(json.dumps(record, separators=(",", ":")))
        if self.syslog is not None and record.get("event_type") in SYSLOG_EVENTS:
            self.syslog.send(record, _now_of(record))

    def write_line(self, line: str) -> None:
        """A record already in JSON (not one for syslog)."""
        if self.stream is not None:
            self.stream.write(line + "\n")
        if self.log is not None:
            self.log.write(line)
        self.written += 1

    def event(self, ev: object) -> None:
        if isinstance(ev, Alert):
            record = alert_record(ev, self.in_iface, self.enrich)
            if self.passive:
                alert = record["alert"]
                alert["action"] = PASSIVE_ACTIONS.get(alert["action"], alert["action"])
            self.write(record)
        elif isinstance(ev, FlowEnd):
            self.write_line(flow_line(ev, self.in_iface, self.enrich))
        elif isinstance(ev, AppEvent):
            self.write(app_record(ev, self.in_iface))
        elif isinstance(ev, LogRecord):
            if self.passive:
                record = log_record(ev, self.in_iface, self.enrich)
                if ev.verdict != "accept":
                    record["ipsctl_log"]["verdict"] = f"would_{ev.verdict}"
                self.write(record)
            elif ev.verdict in ("drop", "reject") and self.drops:
                self.write(drop_record(ev, self.in_iface, self.enrich))
            else:
                self.write(log_record(ev, self.in_iface, self.enrich))
        elif isinstance(ev, Block):
            record = block_record(ev)
            record["ipsctl_block"]["enforced"] = not self.passive or self.blocks_enforced
            self.write(record)
        elif isinstance(ev, MacBlock):
            record = mac_block_record(ev)
            record["ipsctl_block"]["enforced"] = not self.passive or self.blocks_enforced
            self.write(record)
        elif isinstance(ev, Unblock):
            self.write(unblock_record(ev))

    def events(self, evs: Iterable[Effect]) -> None:
        for ev in evs:
            self.event(ev)


def _now_of(record: dict[str, object]) -> float:
    stamp = record.get("timestamp")
    if isinstance(stamp, str):
        try:
            return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        except ValueError:
            pass
    return 0.0


class UnjudgedNotice(Protocol):
    """What an unjudged alert tells (ips.daemon.unjudged.UnjudgedAlert)."""

    @property
    def signature_id(self) -> int: ...

    @property
    def signature(self) -> str: ...

    @property
    def passed(self) -> int: ...

    @property
    def first(self) -> bool: ...


def unjudged_alert_record(alert: UnjudgedNotice, unjudged: dict[str, object], now: float) -> Record:
    """The gate opened: packets passed without inspection (ips/daemon/unjudged.py). An
    `alert` without addresses (it is about the gateway, not a flow), action `allowed`, with
    the counts under `ipsctl.unjudged`."""
    return {
        "timestamp": eve_timestamp(now),
        "event_type": "alert",
        "alert": {
            "action": "allowed",
            "gid": 1,
            "signature_id": alert.signature_id,
            "rev": 1,
            "signature": alert.signature,
            "category": "unjudged",
            "severity": 1,
            "metadata": {"detector": ["unjudged"]},
        },
        "ipsctl": {
            "detector": "unjudged",
            "passed": alert.passed,
            "first": alert.first,
            "unjudged": unjudged,
        },
    }


def stats_record(now: float, uptime: float, stats: dict[str, object]) -> Record:
    """A periodic `stats` event: Suricata's layout (stats.uptime, capture, decoder, flow,
    detect, ips) with ours under stats.ipsctl."""
    return {
        "timestamp": eve_timestamp(now),
        "event_type": "stats",
        "stats": {"uptime": int(uptime), **stats},
    }
