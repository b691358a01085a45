"""Events as RFC 5424 syslog messages: `--syslog unix:/dev/log` or `--syslog udp:HOST:PORT`.

    <PRI>1 TIMESTAMP HOSTNAME ipsctl PROCID EVENT_TYPE - {EVE JSON}

The message is the event's EVE JSON line (what Suricata's EVE-over-syslog sends), so a
collector that parses one parses the other; MSGID is the event type (alert, flow, …). The
severity follows the alert's (1 high -> crit, 2 -> err, 3 -> warning, else notice); other
events are info. Facility: local5 by default (`--syslog-facility`).

Sending never blocks and never raises: a datagram socket, non-blocking; a message the
receiver cannot take now (or no receiver) is dropped and counted.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime

FACILITIES = {
    "kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21,
    "local6": 22, "local7": 23,
}  # fmt: skip
CRIT, ERR, WARNING, NOTICE, INFO = 2, 3, 4, 5, 6
ALERT_SEVERITY = {1: CRIT, 2: ERR, 3: WARNING}
MAX_MESSAGE = 8192  # bigger records are not sent (counted): RFC 5424 receivers cap length


def parse_target(text: str) -> tuple[int, str | tuple[str, int]]:
    """'unix:/dev/log' | 'udp:HOST:PORT' | 'udp:[V6]:PORT' -> (address family, address)."""
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return socket.AF_UNIX, rest
    if kind == "udp" and rest:
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit() and 0 < int(port) < 65536:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return family, (host, int(port))
    raise ValueError(f"syslog target {text!r}: use unix:/dev/log or udp:HOST:PORT")


def severity_of(record: dict[str, object]) -> int:
    if record.get("event_type") == "alert":
        alert = record.get("alert")
        sev = alert.get("severity") if isinstance(alert, dict) else None
        return ALERT_SEVERITY.get(sev, NOTICE)  # type: ignore[arg-type]
    if record.get("event_type") in ("ipsctl_block", "drop"):
        return NOTICE
    return INFO


def format_5424(
    record: dict[str, object], facility: int, hostname: str, procid: int, now: float
) -> bytes:
    pri = facility * 8 + severity_of(record)
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    msgid = str(record.get("event_type") or "-")[:32]
    body = json.dumps(record, separators=(",", ":"))
    # MSG as UTF-8 with its BOM (RFC 5424 6.4), so receivers know it is UTF-8.
    return f"<{pri}>1 {stamp} {hostname or '-'} ipsctl {procid} {msgid} - ".encode() + (
        b"\xef\xbb\xbf" + body.encode()
    )


class SyslogSink:
    def __init__(self, target: str, facility: str = "local5") -> None:
        if facility not in FACILITIES:
            raise ValueError(f"syslog facility {facility!r}: one of {', '.join(FACILITIES)}")
        self.facility = FACILITIES[facility]
        self.family, self.address = parse_target(target)
        self.hostname = socket.gethostname()
        self.sent = 0
        self.dropped = 0
        self._sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def send(self, record: dict[str, object], now: float) -> None:
        data = format_5424(record, self.facility, self.hostname, os.getpid(), now)
        if len(data) > MAX_MESSAGE:
            self.dropped += 1
            return
        try:
            self._sock.sendto(data, self.address)
            self.sent += 1
        except OSError:  # no receiver, buffer full, unreachable: never the packet path's problem
            self.dropped += 1

    def close(self) -> None:
        self._sock.close()

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped}
