"""What the IPS said, as the scorer reads it: one `Detection` per alert or block.

Two sources give the same records: the engine's effects (`from_alert`, `from_block`, for an
offline run) and the lines of an EVE file (`from_eve`, for what a daemon wrote, tap mode
included). Both keep only what the matching rules use (see ips/evaluate/__init__.py), so an
offline run and a tap's EVE file of the same traffic are scored the same way.

A detection names:
  * `key`      who said it: `rule NAME` for a policy rule's alert, the detector's name for a
               detector's alert or block (`portscan`, `synflood`, …);
  * the packet's 5-tuple (a rule's alert is about that packet's flow);
  * `sources`  the addresses a detector blames as senders (the scanner, the flooder);
  * `victims`  the addresses it names as targets when it blames no sender (a flood measured
               `per dst`, a distributed scan: the sources are many and may be spoofed);
  * `window`   the detector's own counting window (its evidence lies in [time - window, time]);
  * `until`    for a block, when it ends (time + ttl): the block covers its address till then.

A `DROP` (only with `eval --drops`, offline) is a packet the engine refused without an alert:
keyed `drop RULE` (or `drop (default)`, `drop (blocked)`: why, when no rule decided), it
names its packet's 5-tuple as a rule's alert does, and, like a block, detects without being
an alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ips.core.events import Alert, Block

RULE, DETECTOR, BLOCK, DROP = "rule", "detector", "block", "drop"
# Protocols whose flows are told apart by ports (as EVE writes them); for the others (ICMP)
# a flow is its protocol and two addresses, so an alert without ports still names it.
PORT_PROTOS = frozenset({6, 17, 132})
PROTO_NUMBERS = {"ICMP": 1, "TCP": 6, "UDP": 17, "IPv6-ICMP": 58, "SCTP": 132, "GRE": 47}
# A detector alert that gives no window of its own: the evidence is taken from this many
# seconds before it (the default window of the scan detectors).
DEFAULT_WINDOW = 10.0


@dataclass(frozen=True)
class Detection:
    time: float
    kind: str  # RULE, DETECTOR, BLOCK, or DROP (a packet refused without an alert)
    key: str  # who: "rule NAME" or the detector's name
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    sources: frozenset[str] = frozenset()
    victims: frozenset[str] = frozenset()
    window: float = 0.0
    until: float = 0.0

    def shifted(self, offset: float, scale: float = 1.0, origin: float = 0.0) -> Detection:
        """The same detection on another clock: `origin + (time - offset - origin) * scale`
        (an EVE file written while a capture was replayed, back on the capture's clock)."""

        def conv(t: float) -> float:
            return origin + (t - offset - origin) * scale

        return Detection(
            conv(self.time),
            self.kind,
            self.key,
            self.proto,
            self.src,
            self.sport,
            self.dst,
            self.dport,
            self.sources,
            self.victims,
            self.window * scale,
            conv(self.until) if self.kind == BLOCK else 0.0,
        )


def _blame(src: str, extra: dict[str, Any] | None) -> tuple[frozenset[str], frozenset[str]]:
    """Who a detector's alert blames. Its details (`extra`, EVE's `ipsctl` object) say it
    when they can: `per: dst` (a flood measured at its victim) and a list of `sources` (a
    distributed scan) name the victim, `target`; otherwise the sender, `source` (else the
    packet's source address)."""
    extra = extra or {}
    target = extra.get("target")
    if (extra.get("per") == "dst" or "sources" in extra) and isinstance(target, str):
        return frozenset(), frozenset({target})
    source = extra.get("source")
    return frozenset({source if isinstance(source, str) else src}), frozenset()


def _window(extra: dict[str, Any] | None) -> float:
    value = (extra or {}).get("window")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_WINDOW


def _ports(proto: int, sport: int, dport: int) -> tuple[int, int]:
    return (sport, dport) if proto in PORT_PROTOS else (0, 0)


def from_alert(alert: Alert) -> Detection:
    """An engine's alert (an offline run)."""
    sport, dport = _ports(alert.proto, alert.sport, alert.dport)
    src, dst = alert.src_ip, alert.dest_ip
    if alert.category == "policy":
        return Detection(
            alert.time,
            RULE,
            f"rule {alert.rule_name or alert.signature}",
            alert.proto,
            src,
            sport,
            dst,
            dport,
        )
    sources, victims = _blame(src, alert.extra)
    return Detection(
        alert.time,
        DETECTOR,
        alert.category,
        alert.proto,
        src,
        sport,
        dst,
        dport,
        sources,
        victims,
        _window(alert.extra),
    )


def from_block(block: Block) -> Detection:
    """An engine's block: its address is covered until the block ends."""
    addr = block.addr_text
    return Detection(
        block.time,
        BLOCK,
        block.detector,
        0,
        addr,
        0,
        "",
        0,
        frozenset({addr}),
        until=block.time + block.ttl,
    )


# ---- EVE -----------------------------------------------------------------------------------


def eve_time(stamp: object) -> float | None:
    """Seconds since the epoch of an EVE timestamp (`2024-05-01T12:00:00.123456+0000`, the
    offset `+HHMM` or `Z`); None when it is not one. By arithmetic on the calendar (the
    package stays pure: no datetime)."""
    if not isinstance(stamp, str) or len(stamp) < 19 or stamp[4] != "-" or stamp[10] != "T":
        return None
    try:
        year, month, day = int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10])
        hour, minute, second = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
        rest = stamp[19:]
        fraction = 0.0
        if rest.startswith("."):
            digits = len(rest[1:]) - len(rest[1:].lstrip("0123456789"))
            fraction = float("0." + rest[1 : 1 + digits]) if digits else 0.0
            rest = rest[1 + digits :]
        offset = 0
        if rest and rest != "Z":
            sign = -1 if rest[0] == "-" else 1
            tz = rest[1:].replace(":", "")
            offset = sign * (int(tz[0:2]) * 3600 + int(tz[2:4]) * 60)
    except (ValueError, IndexError):
        return None
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    return _days_from_civil(year, month, day) * 86400.0 + (
        hour * 3600 + minute * 60 + second - offset + fraction
    )


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def from_eve(record: dict[str, Any]) -> Detection | None:
    """An EVE record's detection: an `alert` or an `ipsctl_block`; None for any other record,
    and for one that lacks what matching needs (a time, an address) — the caller counts
    those."""
    kind = record.get("event_type")
    when = eve_time(record.get("timestamp"))
    src = record.get("src_ip")
    if when is None or not isinstance(src, str):
        return None
    if kind == "ipsctl_block":
        block = record.get("ipsctl_block")
        if not isinstance(block, dict) or "ether" in block:
            return None  # a MAC ban blocks a sender, not the address it claimed
        ttl = block.get("ttl")
        ttl = float(ttl) if isinstance(ttl, int | float) else 0.0
        detector = block.get("detector")
        return Detection(
            when,
            BLOCK,
            detector if isinstance(detector, str) else "block",
            0,
            src,
            0,
            "",
            0,
            frozenset({src}),
            until=when + ttl,
        )
    if kind != "alert":
        return None
    alert = record.get("alert")
    dst = record.get("dest_ip")
    if not isinstance(alert, dict) or not isinstance(dst, str):
        return None
    proto_text = record.get("proto")
    proto = PROTO_NUMBERS.get(proto_text, 0) if isinstance(proto_text, str) else 0
    if proto == 0 and isinstance(proto_text, str) and proto_text.isdigit():
        proto = int(proto_text)
    sport, dport = _ports(proto, _int(record.get("src_port")), _int(record.get("dest_port")))
    if alert.get("category") == "policy":
        rules = (alert.get("metadata") or {}).get("rule") or []
        first = rules[0] if rules else None
        name = first if isinstance(first, str) and first else str(alert.get("signature"))
        return Detection(when, RULE, f"rule {name}", proto, src, sport, dst, dport)
    own = record.get("ipsctl")
    extra = own if isinstance(own, dict) else None
    category = alert.get("category")
    sources, victims = _blame(src, extra)
    return Detection(
        when,
        DETECTOR,
        category if isinstance(category, str) else "detector",
        proto,
        src,
        sport,
        dst,
        dport,
        sources,
        victims,
        _window(extra),
    )
