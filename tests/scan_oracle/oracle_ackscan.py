"""(Frozen oracle: see tests/scan_oracle/__init__.py.)

`ackscan`: ACK scans (nmap -sA, and the window scan -sW, which sends the same packets; the
Maimon scan -sM with FIN+ACK) judged from one side: for a tap on a span port that sees the
probes but not always their answers.

portscan and sweep weigh a bare ACK only by its answer (a reset): silence after a bare ACK is
what a connection picked up mid-stream looks like, so they cannot count it. On a one-sided
tap there is no answer to wait for, and an ACK scan goes unseen. This detector counts, per
source, the distinct targets (host and port) that got a bare ACK (no payload) as the first
packet of a flow — a flow never seen opening — when GRACE seconds later the source sent
nothing more in that flow (but the probe again) and no answer but a reset was seen:

  outcome GRACE seconds after the bare ACK               weight
  reset by the target (or refused by our `reject`)       1
  nothing more in the flow, from either side, but the    1
    probe again (a retransmission: the same size)
  the source went on in that flow (a connection          0
    picked up mid-stream sends more: data, or a stream
    of ACKs — more than RETRIES copies of the probe)
  answered by the target with anything but a reset       0

`ports` distinct targets within `within` (a tumbling window from the source's first probe)
is a detection: one alert per window, and the response (`alert` by default: silence is weak
evidence, and a forged bare ACK costs nothing; `block` asks for a ban as portscan does). What
it lets through: a connection's keepalive picked up mid-stream is one bare ACK too, so the
threshold is above what a host's idle connections send in a minute after a restart; an ACK
scan slower than `ports` per `within` (as every window detector).
It shares the scan detectors' machinery (scan.py): probes wait in the same bounded queue (`set
detect-probes`, at most 4 × `ports` per source), answers are matched by their 5-tuple.
"""

from __future__ import annotations

from ips.core.addr import format_addr
from ips.core.events import DetectorEffect
from ips.core.packet import TCP_RST, Packet
from ips.detect.common import TARGETS_SHOWN
from scan_oracle.oracle_scan import (
    ANSWERED,
    FAILED,
    UNKNOWN,
    W_FAILED,
    Probe,
    ScanDetector,
    ScanEntry,
    Target,
    answer_tuple,
)

# A scanner that hears nothing sends a probe again (nmap: once or twice, more when it sees
# loss): that many more of the same size still count as one silent probe.
RETRIES = 2


def target_of(dst: bytes, port: int) -> bytes:
    """A target: the host's address and the port, as one key (an address is 4 or 16
    bytes, so the two never mix)."""
    return dst + port.to_bytes(2, "big")


def _target_text(target: Target) -> str:
    assert isinstance(target, bytes)  # ackscan's targets are host + port
    host, port = target[:-2], int.from_bytes(target[-2:], "big")
    text = format_addr(host)
    return f"[{text}]:{port}" if len(host) == 16 else f"{text}:{port}"


class AckScan(ScanDetector):
    """Distinct targets (host and port) one source sent a bare ACK that opened nothing."""

    name = "ackscan"
    threshold_param = "ports"
    SIGNATURE = "ipsctl ackscan: bare ACKs to many ports of flows never opened"

    def weigh(self, probe: Probe) -> float:
        if probe.outcome == FAILED:
            return W_FAILED
        if probe.outcome == ANSWERED:
            return 0.0
        flow = probe.flow
        if flow.flags_rev & TCP_RST:
            return W_FAILED
        if flow.replied or flow.offloaded:
            return 0.0
        sent = flow.pkts_fwd
        if sent > 1 + RETRIES or flow.bytes_fwd != sent * probe.size:
            return 0.0  # the source went on: data, or an ACK stream (a download seen one-sided)
        return W_FAILED

    def again(self, pkt: Packet) -> None:
        """The first packet of a flow with a pending probe's 5-tuple: the probe's flow was
        refused (and forgotten) by the policy, and its source went on in a new one. Data, or
        more than RETRIES copies of the probe, is a connection picked up mid-stream."""
        probe = self.index.get(answer_tuple(pkt))
        if probe is None or probe.outcome != UNKNOWN:
            return
        probe.copies += 1
        if pkt.length != probe.size or probe.copies > RETRIES:
            probe.outcome = ANSWERED  # weighs nothing

    def fire(self, entry: ScanEntry, probe: Probe, now: float, out: list[DetectorEffect]) -> None:
        targets = [t for t, w in entry.weights.items() if w > 0.0]
        extra = self._details(entry, probe.flow.src)
        extra["targets"] = [_target_text(t) for t in targets[:TARGETS_SHOWN]]
        extra["hosts"] = len({t[:-2] for t in targets if isinstance(t, bytes)})
        self._emit(probe, now, out, probe.flow.dst, extra)

    def reason(self, extra: dict[str, object]) -> str:
        return (
            f"ackscan: {extra['count']} targets got a bare ACK of no connection "
            f"within {extra['window']:g}s"
        )
