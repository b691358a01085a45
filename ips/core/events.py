"""Effects the engine hands back to the adapters: alerts, log lines, finished flows, blocks.

Pure records; the sinks (ips/sinks/) turn them into EVE JSON, syslog or metrics. Made only
when something is worth reporting, never for an ordinary accepted packet. `Effect` names
them all; a detector's `BlockRequest` is the one record that never leaves the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from ips.core.addr import format_addr
from ips.core.flow import Flow

if TYPE_CHECKING:
    from ips.core.flow import Flow


class PacketEvent:
    """Common fields: when, which flow, and the packet's addresses as seen on the wire.

    Set by the maker when it knows them (else left at -1 / None): `icmp`, the packet's ICMP
    type << 8 | code, which an ICMP event's Community ID hashes in place of ports;
    `app_proto`, the flow's application protocol (ips/app/detect.py's words); `dst_name`,
    the passive DNS name of the flow's responder; `app_layer`, on a rule's alert or log
    record, what the application layer knew of the flow's client message when the rule
    matched ({EVE object name: object}, e.g. {"tls": {"sni": ...}}: ips/app/alert_fields.py),
    which EVE puts at the record's top level as Suricata does."""

    __slots__ = (
        "app_layer",
        "app_proto",
        "dport",
        "dst",
        "dst_name",
        "family",
        "flow_id",
        "icmp",
        "proto",
        "sport",
        "src",
        "time",
    )

    def __init__(
        self,
        time: float,
        flow_id: int,
        family: int,
        proto: int,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
    ) -> None:
        self.time = time
        self.flow_id = flow_id
        self.family = family
        self.proto = proto
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
        self.icmp = -1
        self.app_proto: str | None = None
        self.dst_name: str | None = None
        self.app_layer: dict[str, dict[str, object]] | None = None

    @property
    def src_ip(self) -> str:
        return format_addr(self.src)

    @property
    def dest_ip(self) -> str:
        return format_addr(self.dst)


class Alert(PacketEvent):
    """A rule with `alert` matched, or a detector fired.

    action is Suricata's word for what happened: allowed or blocked (would_drop in tap mode);
    for a detector, blocked means its response banned the source or dropped the packet.
    category is "policy" for rules, the detector's name for detectors.
    extra holds a detector's details (source, targets, count, threshold, window, …; see
    ips/detect); for a rule, the reputation lists its packet's addresses are on
    ({"lists": {"src": ["spamhaus"]}}), else None. The EVE writer puts it in the record's
    `ipsctl` object."""

    __slots__ = (
        "action",
        "category",
        "extra",
        "rule_name",
        "severity",
        "signature",
        "signature_id",
    )

    def __init__(
        self,
        time: float,
        flow_id: int,
        family: int,
        proto: int,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        *,
        action: str,
        signature_id: int,
        signature: str,
        severity: int,
        category: str,
        rule_name: str,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(time, flow_id, family, proto, src, sport, dst, dport)
        self.action = action
        self.signature_id = signature_id
        self.signature = signature
        self.severity = severity
        self.category = category
        self.rule_name = rule_name
        self.extra = extra

    def __repr__(self) -> str:
        return (
            f"Alert({self.signature!r} {self.action} {self.src_ip}:{self.sport} > "
            f"{self.dest_ip}:{self.dport})"
        )


class LogRecord(PacketEvent):
    """A rule with `log` matched: the verdict it gave, for the record."""

    __slots__ = ("rule_name", "verdict")

    def __init__(
        self,
        time: float,
        flow_id: int,
        family: int,
        proto: int,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        *,
        verdict: str,
        rule_name: str,
    ) -> None:
        super().__init__(time, flow_id, family, proto, src, sport, dst, dport)
        self.verdict = verdict
        self.rule_name = rule_name


class AppEvent(PacketEvent):
    """What the application layer read of a flow (ips/app/inspect.py): one EVE event of
    Suricata's kind. event_type is tls, quic, dns, http or ssh; body is the object EVE
    writes under that name (Suricata's field names). The addresses are those of the
    transaction's request (client to server) for tls, http, ssh and quic, and those of the
    message for dns (an answer goes server to client), as Suricata writes them. tx_id
    numbers the flow's transactions (http, dns; None for the others).

    The body may be given as `build`, a function that makes it when first read: the engine
    only hands events on, and a sink that writes them (EVE) reads the body, in the same
    process, so the dict (and the fingerprints in it) is made only where it is written."""

    __slots__ = ("_body", "_build", "event_type", "tx_id")

    def __init__(
        self,
        time: float,
        flow_id: int,
        family: int,
        proto: int,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        *,
        event_type: str,
        body: dict[str, object] | None = None,
        tx_id: int | None = None,
        build: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        super().__init__(time, flow_id, family, proto, src, sport, dst, dport)
        if body is None and build is None:
            raise ValueError("an AppEvent needs a body or a function that builds it")
        self.event_type = event_type
        self._body = body
        self._build = build
        self.tx_id = tx_id

    @property
    def body(self) -> dict[str, object]:
        body = self._body
        if body is None:
            body = self._body = self._build()  # type: ignore[misc]
            self._build = None
        return body

    def __repr__(self) -> str:
        return (
            f"AppEvent({self.event_type} {self.src_ip}:{self.sport} > "
            f"{self.dest_ip}:{self.dport} {self.body!r})"
        )


class KernelVolume:
    """An offloaded flow's real volume, from conntrack's accounting (ips/io/conntrack.py):
    every packet of the connection both ways, the ones the kernel passed after the offload
    included. source: "destroy" (the final counts conntrack reported when it forgot the
    connection) or "get" (its entry read when the engine ended the flow)."""

    __slots__ = ("bytes_fwd", "bytes_rev", "pkts_fwd", "pkts_rev", "source")

    def __init__(
        self, pkts_fwd: int, pkts_rev: int, bytes_fwd: int, bytes_rev: int, source: str
    ) -> None:
        self.pkts_fwd = pkts_fwd
        self.pkts_rev = pkts_rev
        self.bytes_fwd = bytes_fwd
        self.bytes_rev = bytes_rev
        self.source = source


class FlowEnd:
    """A flow left the table (timed out, closed, evicted, or the capture ended). kernel: the
    kernel's counts of an offloaded flow, when the worker read them (None: the engine's
    counts are the flow's, or all that is known)."""

    __slots__ = ("flow", "kernel", "reason", "time")

    def __init__(
        self, flow: Flow, reason: str, time: float, kernel: KernelVolume | None = None
    ) -> None:
        self.flow = flow
        self.reason = reason
        self.time = time
        self.kernel = kernel


class Block:
    """An address was banned: by a detector, or by an operator (detector "manual").

    addr      the address (4 or 16 bytes)
    table     the dynamic table it went into ("banned"); the inline daemon mirrors it into
              the nftables set of that name, so the kernel drops the address at line rate
    ttl       seconds the block lasts (escalated for repeat offenders)
    detector  the detector's key in the policy (portscan, udpflood-dst, volume-2 …), or manual
    offense   1 for an address's first detector block, 2 for the next one, …
    reason    a line for humans ("portscan: 15 ports of 10.0.0.5 within 60s")
    time      when (the engine's `now`)"""

    __slots__ = ("addr", "detector", "offense", "reason", "table", "time", "ttl")

    def __init__(
        self,
        addr: bytes,
        *,
        table: str,
        ttl: float,
        detector: str,
        offense: int = 1,
        reason: str = "",
        time: float = 0.0,
    ) -> None:
        self.addr = addr
        self.table = table
        self.ttl = ttl
        self.detector = detector
        self.offense = offense
        self.reason = reason
        self.time = time

    @property
    def addr_text(self) -> str:
        return format_addr(self.addr)

    @property
    def expires(self) -> float:
        return self.time + self.ttl

    def __repr__(self) -> str:
        return (
            f"Block({self.addr_text} {self.detector} #{self.offense} ttl={self.ttl:g}s "
            f"in @{self.table})"
        )


class Unblock:
    """A block ended: reason "expired" (its time was up), "manual" (an operator) or "flush"."""

    __slots__ = ("addr", "reason", "table", "time")

    def __init__(self, addr: bytes, *, table: str, reason: str, time: float = 0.0) -> None:
        self.addr = addr
        self.table = table
        self.reason = reason
        self.time = time

    @property
    def addr_text(self) -> str:
        return format_addr(self.addr)

    def __repr__(self) -> str:
        return f"Unblock({self.addr_text} {self.reason} from @{self.table})"


def format_mac(mac: bytes) -> str:
    """aa:bb:cc:dd:ee:ff"""
    return ":".join(f"{b:02x}" for b in mac)


class MacBlock:
    """The real sender of forged packets was named by its MAC address, and banned.

    A detector wanted `claimed` (the forged source address) blocked; the evidence showed the
    packets came from `mac`, which is not the owner of that address on the segment (see
    ips/engine/evidence.py). The address is left alone; the MAC goes into the nftables set
    `table` (banned_ether), whose members the kernel drops on the interfaces packets come in
    on (forward and input), with their own timeout.

    mac       the sender's MAC address (6 bytes)
    claimed   the source address its packets claimed (4 or 16 bytes)
    table     the nft set (ETHER_BLOCK_TABLE)
    ttl       seconds the block lasts
    detector  the detector whose request this answers
    evidence  why the address was judged forged ("mac-mismatch", "not-a-router")
    reason    a line for humans
    time      when (the engine's `now`)"""

    __slots__ = ("claimed", "detector", "evidence", "mac", "reason", "table", "time", "ttl")

    def __init__(
        self,
        mac: bytes,
        *,
        claimed: bytes,
        table: str,
        ttl: float,
        detector: str,
        evidence: str,
        reason: str = "",
        time: float = 0.0,
    ) -> None:
        self.mac = mac
        self.claimed = claimed
        self.table = table
        self.ttl = ttl
        self.detector = detector
        self.evidence = evidence
        self.reason = reason
        self.time = time

    @property
    def mac_text(self) -> str:
        return format_mac(self.mac)

    @property
    def claimed_text(self) -> str:
        return format_addr(self.claimed)

    def __repr__(self) -> str:
        return (
            f"MacBlock({self.mac_text} claiming {self.claimed_text} {self.detector} "
            f"ttl={self.ttl:g}s in @{self.table})"
        )


class BlockRequest:
    """A detector asks for `addr` to be banned for `ttl` seconds (before escalation).

    Detectors do not ban anyone themselves: they return this request among their effects,
    and the engine hands it to its block manager, which may refuse (trusted, never_block,
    the ban budget, …). The engine then puts in the request's place what the detector makes
    of the answer (Detector.answered): `alert` — the detection's alert, whose action and
    details wait for the answer — and the Block, when one was made. So a request never
    reaches a sink.

    detector  the name of the detector that asks (portscan, sweep, …)
    reason    a line for humans, for the Block
    time      when (the engine's `now`)
    flow      the offender's flow whose packets made the detection (None: not known): the
              MAC and TTL its first packet came with are the evidence the engine weighs
              before it blocks anyone (ips/engine/evidence.py)"""

    __slots__ = ("addr", "alert", "detector", "flow", "reason", "time", "ttl")

    def __init__(
        self,
        addr: bytes,
        *,
        ttl: float,
        detector: str,
        reason: str,
        time: float,
        alert: Alert,
        flow: Flow | None = None,
    ) -> None:
        self.addr = addr
        self.ttl = ttl
        self.detector = detector
        self.reason = reason
        self.time = time
        self.alert = alert
        self.flow = flow

    def __repr__(self) -> str:
        return f"BlockRequest({format_addr(self.addr)} by {self.detector})"


# What the engine hands to the adapters and the sinks.
Effect: TypeAlias = Alert | LogRecord | Block | MacBlock | Unblock | FlowEnd | AppEvent
# What a detector reports: alerts, and requests that the engine settles into alerts and blocks.
DetectorEffect: TypeAlias = Alert | BlockRequest
