"""Effects the engine hands back to the adapters: alerts, log lines, finished flows, blocks.

Pure records; the sinks (ips/sinks/) turn them into EVE JSON, syslog or metrics. Made only
when something is worth reporting, never for an ordinary accepted packet.
"""

from __future__ import annotations

from ips.core.addr import format_addr


class PacketEvent:
    """Common fields: when, which flow, and the packet's addresses as seen on the wire."""

    __slots__ = ("dport", "dst", "family", "flow_id", "proto", "sport", "src", "time")

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

    @property
    def src_ip(self) -> str:
        return format_addr(self.src)

    @property
    def dest_ip(self) -> str:
        return format_addr(self.dst)


class Alert(PacketEvent):
    """A rule with `alert` matched (or, later, a detector fired).

    action is Suricata's word for what happened to the packet: allowed or blocked
    (would_drop in tap mode)."""

    __slots__ = ("action", "category", "rule_name", "severity", "signature", "signature_id")

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
    ) -> None:
        super().__init__(time, flow_id, family, proto, src, sport, dst, dport)
        self.action = action
        self.signature_id = signature_id
        self.signature = signature
        self.severity = severity
        self.category = category
        self.rule_name = rule_name

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


class FlowEnd:
    """A flow left the table (timed out, closed, evicted, or the capture ended)."""

    __slots__ = ("flow", "reason", "time")

    def __init__(self, flow: object, reason: str, time: float) -> None:
        self.flow = flow
        self.reason = reason
        self.time = time
