"""`slowscan`: a long window over the probes that portscan and sweep weigh, for the scans their
one-minute windows let through by design — a scanner slower than `ports` per `within`
(`nmap -T1`: one probe every 15 s, four a minute) and a scan split across several sources that
each stay under the threshold (three sources with 14 ports each).

It keeps no probes of its own: every weight portscan or sweep gives a target (a failed port, a
failed host, ¼ for a port that only completed the handshake) is also handed here, with its
probe (`ScanDetector._credit`). Three views, each a tumbling window of `within` per key that
starts at the key's first weight, as the short windows do:

  view          counts                                              key             sid
  ports         distinct ports of one host, one source              source + host   9000701
  hosts         distinct hosts, one source                          source          9000702
  distributed   distinct ports of one host, several sources         host            9000703

A target the source later uses (its probe answered: a connection that carried data, a UDP
reply) is taken back out of the source's long windows: over hours, every client meets a lost
SYN or a server restarting, and a scanner's closed ports never answer.

A key the short window has reported already (portscan or sweep fired on it) is not reported
again by the long one in the same long window: a fast scan is one story, told once.

The distributed view counts the ports of a source only once that source has failed on
SHARE_AFTER ports of the host within its own long window: on an address the Internet can
reach, unrelated scanners touch one or two ports each all day long, and one port each from a
hundred sources is background, not a scan. The price is written in the docs: a split across
sources that probe fewer than SHARE_AFTER ports each goes unseen. It fires only when at least
two sources contributed (one source alone is the ports view's), and never blocks (its sources
are many, and any of them may be innocent or forged): with `block`, only the ports and hosts
views ask for a block.

Memory: each view holds at most `detect-memory` keys; when full, the oldest window goes first
and is counted in `evicted` (forgotten, never guessed). A window stops growing once it fired,
and before that holds at most 4 × its threshold targets (¼ is the smallest weight); a host's
distributed window lists at most TARGETS_SHOWN sources.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar, cast

from ips.core.addr import format_addr
from ips.core.events import DetectorEffect
from ips.detect.common import TARGETS_SHOWN, Detector, addr_list
from ips.detect.scan import Probe, ScanDetector, ScanEntry, Sweep, Target
from ips.policy.model import DetectSpec

# A source's ports count in a host's distributed view once it failed on this many of them.
SHARE_AFTER = 3
SID_PORTS, SID_HOSTS, SID_DISTRIBUTED = 1, 2, 3
_EPS = 1e-9
SIGNATURES = {
    SID_PORTS: "ipsctl slowscan: many ports of one host probed over hours",
    SID_HOSTS: "ipsctl slowscan: many hosts probed over hours",
    SID_DISTRIBUTED: "ipsctl slowscan: many ports of one host probed by several sources",
}


class PairEntry(ScanEntry):
    """The ports view's window of one source and one host."""

    __slots__ = ("shared",)

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.shared: Spread | None = None  # the distributed window its ports went into


class Spread:
    """The distributed view's window of one host: the ports its sources failed on."""

    __slots__ = ("fired", "ports", "sources", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.ports: dict[int, None] = {}  # in order of arrival
        self.sources: dict[bytes, None] = {}  # at most TARGETS_SHOWN of them
        self.fired = False


Window = TypeVar("Window", ScanEntry, PairEntry, Spread)
Key = TypeVar("Key", bytes, tuple[bytes, bytes])  # a source, or a (source, host) pair


def _span(seconds: float) -> str:
    """A window's length as a policy would write it: 6h, 90m, 45s."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class SlowScan(Detector):
    """Long windows over portscan's and sweep's weights (see the module's notes)."""

    name = "slowscan"

    def __init__(self, spec: DetectSpec, memory: int) -> None:
        super().__init__(spec, memory)
        params = spec.params
        self.within = spec.number("within")
        self.ports = spec.number("ports")
        self.hosts = spec.number("hosts")
        distributed = params.get("distributed")
        self.distributed = int(distributed) if distributed else 0  # type: ignore[call-overload]
        # In order of window start, the oldest evicted first: OrderedDicts (as Stealth's).
        self.pairs: OrderedDict[tuple[bytes, bytes], PairEntry] = OrderedDict()
        self.sources: OrderedDict[bytes, ScanEntry] = OrderedDict()
        self.spreads: OrderedDict[bytes, Spread] = OrderedDict()

    def tracked(self) -> int:
        return len(self.pairs) + len(self.sources) + len(self.spreads)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["pairs"] = len(self.pairs)
        out["sources"] = len(self.sources)
        out["spreads"] = len(self.spreads)
        return out

    def due(self, now: float) -> bool:
        return (
            self.window_over(self.pairs, now)
            or self.window_over(self.sources, now)
            or self.window_over(self.spreads, now)
        )

    def tick(self, now: float, out: list[DetectorEffect]) -> None:
        self.drop_finished_windows(self.pairs, now)
        self.drop_finished_windows(self.sources, now)
        self.drop_finished_windows(self.spreads, now)

    def _window(
        self, windows: OrderedDict[Key, Window], key: Key, now: float, make: type[Window]
    ) -> Window:
        window = windows.get(key)
        if window is not None and now - window.start <= self.within:
            return window
        if window is not None:
            del windows[key]  # its window is over: a new one, at the end (start order)
        elif len(windows) >= self.memory:
            windows.popitem(last=False)  # the oldest window goes first
            self.evicted += 1
        window = windows[key] = make(now)
        return window

    # ---- fed by portscan and sweep -----------------------------------------------------------

    def credit(
        self, scan: ScanDetector, probe: Probe, weight: float, now: float, out: list[DetectorEffect]
    ) -> None:
        """`scan` gave the target of `probe` this weight in its short window."""
        if isinstance(scan, Sweep):
            self._host(probe, weight, now, out)
        else:
            self._port(probe, weight, now, out)

    def target_used(self, scan: ScanDetector, probe: Probe) -> None:
        """`probe` was answered and used (it weighs nothing): a target the source failed on
        earlier in its long window, and now uses, was not a failure (a lost SYN, a server
        restarting, a browser's spare connection). The distributed view keeps what it got."""
        if isinstance(scan, Sweep):
            entry: ScanEntry | None = self.sources.get(probe.key)  # type: ignore[arg-type]
        else:
            entry = self.pairs.get(probe.key)  # type: ignore[arg-type]
        if entry is not None and not entry.fired:
            entry.score -= entry.weights.pop(probe.target, 0.0)

    def _port(self, probe: Probe, weight: float, now: float, out: list[DetectorEffect]) -> None:
        pair = cast(tuple[bytes, bytes], probe.key)  # the pair view's key
        source, host = pair
        if self.ignored(source):
            return
        entry = self._window(self.pairs, pair, now, PairEntry)
        if entry.fired:
            return
        if probe.entry.fired:
            entry.fired = True  # portscan reported this pair: nothing left to tell
            return
        if not _add(entry, probe.target, weight):
            return
        if entry.score >= self.ports - _EPS:
            entry.fired = True
            self._report_ports(entry, probe, now, out)
        elif self.distributed:
            self._share(entry, source, host, probe, now, out)

    def _host(self, probe: Probe, weight: float, now: float, out: list[DetectorEffect]) -> None:
        source = cast(bytes, probe.key)  # the host view's key: a source
        if self.ignored(source):
            return
        entry = self._window(self.sources, source, now, ScanEntry)
        if entry.fired:
            return
        if probe.entry.fired:
            entry.fired = True  # sweep reported this source
            return
        if _add(entry, probe.target, weight) and entry.score >= self.hosts - _EPS:
            entry.fired = True
            extra = self._details(entry, "hosts", self.hosts, source)
            extra["targets"] = addr_list(t for t, w in entry.weights.items() if w > 0.0)  # type: ignore[misc]
            reason = f"slowscan: {extra['count']} hosts probed within {_span(self.within)}"
            self._emit(probe, now, out, probe.flow.dst, SID_HOSTS, extra, reason, True)

    def _share(
        self,
        entry: PairEntry,
        source: bytes,
        host: bytes,
        probe: Probe,
        now: float,
        out: list[DetectorEffect],
    ) -> None:
        """Add the source's failed ports of `host` to the host's distributed window."""
        ports = [t for t, w in entry.weights.items() if w > 0.0]
        if len(ports) < SHARE_AFTER:
            return
        spread = self._window(self.spreads, host, now, Spread)
        if spread.fired:
            return
        if entry.shared is spread:
            ports = [probe.target]  # the others are in already
        entry.shared = spread
        for port in ports:
            spread.ports[port] = None  # type: ignore[index]
        if source not in spread.sources and len(spread.sources) < TARGETS_SHOWN:
            spread.sources[source] = None
        if len(spread.ports) >= self.distributed and len(spread.sources) >= 2:
            spread.fired = True
            extra: dict[str, object] = {
                "view": "distributed",
                "target": format_addr(host),
                "targets": sorted(spread.ports)[:TARGETS_SHOWN],
                "count": len(spread.ports),
                "threshold": self.distributed,
                "window": self.within,
                "sources": addr_list(spread.sources),
            }
            reason = (
                f"slowscan: {extra['count']} ports of {extra['target']} probed by "
                f"{len(spread.sources)} sources within {_span(self.within)}"
            )
            self._emit(probe, now, out, host, SID_DISTRIBUTED, extra, reason, False)

    # ---- reports -----------------------------------------------------------------------------

    def _report_ports(
        self, entry: PairEntry, probe: Probe, now: float, out: list[DetectorEffect]
    ) -> None:
        source, host = cast(tuple[bytes, bytes], probe.key)  # the pair view's key
        extra = self._details(entry, "ports", self.ports, source)
        extra["target"] = format_addr(host)
        extra["targets"] = sorted(t for t, w in entry.weights.items() if w > 0.0)[:TARGETS_SHOWN]
        reason = (
            f"slowscan: {extra['count']} ports of {extra['target']} probed "
            f"within {_span(self.within)}"
        )
        self._emit(probe, now, out, host, SID_PORTS, extra, reason, True)

    def _details(
        self, entry: ScanEntry, view: str, threshold: float, source: bytes
    ) -> dict[str, object]:
        return {
            "view": view,
            "source": format_addr(source),
            "count": sum(1 for w in entry.weights.values() if w > 0.0),
            "score": round(entry.score, 2),
            "threshold": int(threshold),
            "window": self.within,
        }

    def _emit(
        self,
        probe: Probe,
        now: float,
        out: list[DetectorEffect],
        dst: bytes,
        sid: int,
        extra: dict[str, object],
        reason: str,
        offender: bool,
    ) -> None:
        flow = probe.flow
        self.emit(
            out,
            now,
            flow_id=flow.flow_id,
            proto=flow.proto,
            src=flow.src,
            sport=flow.sport,
            dst=dst,
            dport=flow.dport,
            sid=sid,
            signature=SIGNATURES[sid],
            extra=extra,
            offender=flow.src if offender else None,
            reason=reason,
            flow=flow,
        )


def _add(entry: ScanEntry, target: Target, weight: float) -> bool:
    """Give `target` this weight in `entry` if it is more than it had; True when it was."""
    weights = entry.weights
    old = weights.get(target, 0.0)
    if weight <= old:
        return False
    weights[target] = weight
    entry.score += weight - old
    return True
