"""Types of the compiled module ips/fast/_dnsparse.pyx (for mypy; the code is the .pyx)."""

from typing import Any

from ips.app.dns import DnsMessage
from ips.core.packet import Malformed

EVENTS_MADE_DIRECTLY: bool

def parse_message(data: bytes, off: int = 0, end: int = -1) -> DnsMessage | Malformed: ...
def parse_tcp_stream(data: bytes) -> tuple[list[DnsMessage | Malformed], int]: ...
def read_message(
    inspector: Any,
    flow: Any,
    app: Any,
    msg: DnsMessage,
    to_server: bool,
    state: Any,
    now: float,
    events: list[Any],
) -> None: ...
