"""Types of the compiled module ips/fast/_dnsparse.pyx (for mypy; the code is the .pyx)."""

from ips.app.dns import DnsMessage
from ips.core.packet import Malformed

def parse_message(data: bytes, off: int = 0, end: int = -1) -> DnsMessage | Malformed: ...
def parse_tcp_stream(data: bytes) -> tuple[list[DnsMessage | Malformed], int]: ...
