"""Types of the compiled module ips/fast/_fastpath.pyx (for mypy; the code is the .pyx)."""

from typing import Any

from ips.core.decision import Decision
from ips.core.packet import Packet

STOP_END: int
STOP_RECORD: int
STOP_TICK: int
STOP_EFFECTS: int
STOP_BUDGET: int
KNOWN_SPEC_FIELDS: frozenset[str]

class FastPath:
    fast_packets: int
    flowless_packets: int
    answers_noted: int
    answers_in_c: bool
    cand_hits: int  # candidate entries taken from the candidate cache
    quiet_in_c: int  # due probes weighed ahead by the compiled resolve_quietly
    syn_flows: int  # accepted SYNs whose flow was filed in compiled code (_syn_first)
    syn_first_on: bool
    refused_dns_on: bool  # refused first DNS datagrams read without a Flow
    refused_dns: int  # how many were
    refused_hellos: int  # refused first TLS ClientHello segments read without a Flow
    refused_requests: int  # refused first HTTP segments read without a Flow
    probes_filed: int  # new scan probes filed in compiled code
    malformed_packets: int  # malformed frames counted in compiled code (_malformed_frame)
    other_flowless_packets: int  # of flowless_packets, those without ports (_flowless_other)
    other_flows: int  # accepted first packets without ports filed in compiled code
    compactions: int  # unreplied queues compacted in compiled code
    first_unknown_on: bool  # first payloads named unknown may be decided in compiled code
    first_unknown_packets: int  # how many were (_first_payload_unknown)
    def __init__(self, engine: Any, reoffload_after: float) -> None: ...
    def refresh(self, engine: Any) -> None: ...
    def handle(self, data: bytes, meta: Any, now: float) -> Decision[Any] | Packet | None: ...

def run_pcap(
    fast: FastPath,
    slow: Any,
    slow_packet: Any,
    buf: Any,
    pos: int,
    linktype: int,
    divisor: int,
    max_record: int,
    meta: Any,
    next_tick: float,
    last_ts: float,
    budget: int,
) -> tuple[int, int, int, float, float, float, Decision[Any] | None]: ...
def detect_stream_compiled(data: bytes) -> str | None: ...
def detect_datagram_compiled(data: bytes) -> str | None: ...
def decode_frame_compiled(data: bytes, linktype: int) -> Any: ...
