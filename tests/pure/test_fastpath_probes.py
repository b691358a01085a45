"""New probes of the scan detectors filed by the compiled path (ips/fast/_fastpath.pyx
`_probe_plan`, `_probe_file`, `_refused_flow`) against the Python engine: a refused first
packet that is a new probe of `portscan` or `sweep` (a SYN, a bare ACK or FIN+ACK, a UDP
datagram) leaves a Flow (discarded, held by its probes), a window (ScanEntry) when it opens
one, and a Probe in each scan's queue and index. Two engines (one with the fast path, one
without) fed the same probes must leave the same objects in the same order: besides what
the differential test compares (tests/pure/test_fastpath_differential.py: detector state,
flow table, counters, tick after tick), every slot of each probe's flow, which probes share
a flow, whether a probe's window is still its key's, the order of the windows, of the index
and of each window's targets. The traffic crosses what may still go to Python: windows
rolling over, keys at their cap of pending probes, a queue of pending probes that is full,
windows evicted from a full table, detections, due probes, answers and resets, an ignored
source, IPv4 and IPv6, and the floods' new keys and rates."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from test_fastpath_differential import META, Pair, cache_view, need_fast_path, plain

from ips.core.build import build_packet
from ips.core.flow import Flow
from ips.core.packet import PROTO_TCP, PROTO_UDP
from ips.engine import Engine, Meta


def flow_slots(engine: Engine, flow: Flow) -> list[tuple[str, str, object]]:
    """Every slot of a flow, with its type (1 == 1.0 == True in a comparison); its candidate
    caches by cache_view."""
    out: list[tuple[str, str, object]] = []
    for name in sorted(Flow.__slots__):
        value = getattr(flow, name)
        if name in ("cache_fwd", "cache_rev"):
            value = cache_view(engine, value)
        elif name in ("app", "app_state"):
            value = plain(value)  # (the application layer's objects, by their fields)
        out.append((name, type(value).__name__, value))
    return out


def probe_view(engine: Engine) -> list[object]:
    """The scans' probes as objects: each pending probe's flow (all of it, and which probes
    share it), whether its window is its key's in `entries` and its index entry is itself,
    its due time's and size's types; and the order of the windows, of the index and of each
    window's waiting targets (the differential test compares those tables unordered)."""
    detect = engine.detect
    assert detect is not None
    shared: dict[int, int] = {}
    out: list[object] = []
    for scan in detect.scans:
        out.append(("windows", list(scan.entries)))
        out.append(("index", list(scan.index)))
        out.append(("waiting", [list(entry.waiting.items()) for entry in scan.entries.values()]))
        for probe in scan.pending:
            flow = probe.flow
            out.append(
                (
                    shared.setdefault(id(flow), len(shared)),
                    flow_slots(engine, flow),
                    probe.entry is scan.entries.get(probe.key),
                    scan.index.get(probe.answer) is probe,
                    type(probe.due).__name__,
                    type(probe.size).__name__,
                    type(probe.entry.start).__name__,
                )
            )
    return out


class ProbePair(Pair):
    """A Pair that also compares the probes' objects (probe_view) at each check."""

    def check_state(self) -> None:
        super().check_state()
        # the timer wheel's heap as a list (its order too: the slots made in compiled code
        # are pushed as FlowTable._discard_opened pushes them)
        assert self.fast.flows._slots == self.slow.flows._slots
        got, want = probe_view(self.fast), probe_view(self.slow)
        if got != want:  # the first difference, plainly
            at = next(i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w)
            assert (self.packets, at, got[at]) == (self.packets, at, want[at])
            assert len(got) == len(want)


_SCAN_POLICY = """\
set app-layer off
set default drop
set detect-memory {memory}
set detect-probes {probes}
detect portscan ports 4 within 3s alert ignore {{ 198.18.9.9 }}
detect sweep hosts 5 within 3s alert
detect synflood rate {syn}/s per dst limit
detect udpflood rate {udp}/s per src limit
accept proto tcp from 10.10.1.0/24 to 10.10.2.0/24 port 443
"""

# (detect-memory, detect-probes, synflood's rate, udpflood's rate): roomy tables and
# floods that let nearly everything go; small tables (windows evicted, the queue full:
# _make_room, Python) and floods crossed both ways
_SETTINGS = {
    "roomy": (65536, 16384, 5000, 5000),
    "small": (16, 24, 10, 10),
}

_SCANNERS_V4 = ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.9.9"]
_SCANNERS_V6 = ["2001:db8:1::1", "2001:db8:1::2"]
_HOSTS_V4 = [f"10.30.0.{i}" for i in range(1, 9)]
_HOSTS_V6 = [f"2001:db8:2::{i}" for i in range(1, 5)]


def probe_traffic(seed: int, seconds: float = 12.0) -> list[tuple[float, bytes]]:
    """Probes of several scanners (IPv4 and IPv6) to several hosts and ports: SYNs, bare
    ACKs and FIN+ACKs, UDP datagrams, ACKs with payload (no probe), repeats of earlier
    probes (within and past their grace time), their answers (SYN+ACK, UDP, and resets:
    failures), bursts of one scanner to many ports of one host (its key at the cap of
    pending probes) and to many hosts (a sweep), an accepted connection now and then; in
    phases of 5 to 400 packets a second over `seconds` (windows of 3 s roll over)."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    sent: list[tuple[int, str, str, int, int, int]] = []  # (proto, src, dst, sport, dport, flags)
    now = 100.0
    end = now + seconds

    def add(at: float, proto: int, src: str, dst: str, sp: int, dp: int, flags: int = 0,
            payload: bytes = b"") -> None:  # fmt: skip
        if proto == PROTO_UDP:
            data = build_packet(PROTO_UDP, src, dst, sp, dp, payload=payload or b"u")
        else:
            data = build_packet(PROTO_TCP, src, dst, sp, dp, flags=flags, payload=payload)
        out.append((at, data))

    phase_rate = 50.0
    while now < end:
        if rng.random() < 0.02:
            phase_rate = rng.choice([5.0, 50.0, 400.0])
        v6 = rng.random() < 0.3
        scanner = rng.choice(_SCANNERS_V6 if v6 else _SCANNERS_V4)
        host = rng.choice(_HOSTS_V6 if v6 else _HOSTS_V4)
        sport = 40000 + rng.randrange(4)
        port = rng.randrange(20, 60)
        roll = rng.random()
        if roll < 0.25:
            add(now, PROTO_TCP, scanner, host, sport, port, 0x02)
            sent.append((PROTO_TCP, scanner, host, sport, port, 0x02))
        elif roll < 0.33:
            flags = rng.choice([0x10, 0x11])
            add(now, PROTO_TCP, scanner, host, sport, port, flags)
            sent.append((PROTO_TCP, scanner, host, sport, port, flags))
        elif roll < 0.36:
            add(now, PROTO_TCP, scanner, host, sport, port, 0x18, b"data")  # no probe
        elif roll < 0.56:
            add(now, PROTO_UDP, scanner, host, sport, port)
            sent.append((PROTO_UDP, scanner, host, sport, port, 0))
        elif roll < 0.70 and sent:
            proto, src, dst, sp, dp, flags = rng.choice(sent[-40:])
            add(now, proto, src, dst, sp, dp, flags)  # a repeat (maybe past its grace)
        elif roll < 0.82 and sent:
            proto, src, dst, sp, dp, flags = rng.choice(sent[-40:])
            if proto == PROTO_UDP:
                add(now, PROTO_UDP, dst, src, dp, sp)  # a reply
            else:
                answer = rng.choice([0x12, 0x12, 0x14, 0x04])  # SYN+ACK, or a reset
                add(now, PROTO_TCP, dst, src, dp, sp, answer)
        elif roll < 0.86:
            # one scanner, many ports of one host at once: its key reaches its cap
            for i in range(rng.choice([10, 20, 30])):
                proto = rng.choice([PROTO_TCP, PROTO_UDP])
                add(now + i * 0.0005, proto, scanner, host, sport, 1000 + i, 0x02)
        elif roll < 0.90:
            # one scanner, many hosts (a sweep), the same port
            hosts = _HOSTS_V6 if v6 else _HOSTS_V4
            for i, target in enumerate(hosts):
                add(now + i * 0.0005, PROTO_TCP, scanner, target, sport, port, 0x02)
        else:
            # an accepted connection (its flow filed), and its answer
            client = f"10.10.1.{rng.randrange(1, 5)}"
            server = f"10.10.2.{rng.randrange(1, 3)}"
            cport = 50000 + rng.randrange(200)
            add(now, PROTO_TCP, client, server, cport, 443, 0x02)
            add(now + 0.0002, PROTO_TCP, server, client, 443, cport, 0x12)
        now += rng.expovariate(phase_rate)
    out.sort(key=lambda item: item[0])
    return out


def run_pair(pair: Pair, traffic: list[tuple[float, bytes]], metas: list[Meta]) -> float:
    now = 0.0
    for i, (now, data) in enumerate(traffic):
        pair.handle(data, metas[i % len(metas)], now)
        if i % 97 == 0:
            pair.check_state()
    return now


@pytest.mark.parametrize("settings", sorted(_SETTINGS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_new_probes_filed_in_compiled_code_leave_the_same_objects(settings: str, seed: int) -> None:
    """Probes of several keys and targets, IPv4 and IPv6, TCP SYN, bare ACK, FIN+ACK and
    UDP: the same decisions, detector state and probe objects as the Python engine (probe_
    view, checked every 97 packets and at each tick), and most new probes filed in compiled
    code. The traffic meets windows rolling over, keys at their cap (probes_skipped),
    detections (a fired window takes no more probes), and with small tables windows
    evicted, the queue of pending probes full (Python makes room) and floods over their
    rates (Python)."""
    need_fast_path()
    memory, probes, syn, udp = _SETTINGS[settings]
    text = _SCAN_POLICY.format(memory=memory, probes=probes, syn=syn, udp=udp)
    pair = ProbePair(text)
    # interfaces and the sender's MAC (the flow keeps them), and none
    metas = [META, Meta(iif="lan0", oif="dmz0", mac=b"\x02\x00\x00\x00\x00\x01"), Meta()]
    now = run_pair(pair, probe_traffic(seed), metas)
    pair.finish(now + 3.0)
    fast_path = pair.fast._fast_path
    slow = pair.slow
    assert slow.detect is not None
    portscan, sweep = slow.detect.portscan, slow.detect.sweep
    assert portscan is not None and sweep is not None
    # (with small tables the queue of pending probes is mostly full: Python makes room)
    assert fast_path.probes_filed > (100 if settings == "roomy" else 40), fast_path.probes_filed
    assert portscan.probes_skipped > 0  # keys at their cap
    assert fast_path.probes_resolved > 0  # due probes weighed ahead in compiled code
    alerts = slow.stats.detector_alerts
    if settings == "roomy":  # (with the queue full, most probes are forgotten unweighed)
        assert alerts["portscan"] + alerts["sweep"] > 0  # windows that fired
    if settings == "small":
        assert portscan.evicted > 0  # (sweep keeps a window per scanner: fewer than 16)
        assert portscan.probes_dropped + portscan.probes_early > 0  # the queue full
        assert alerts["synflood"] > 0 and alerts["udpflood"] > 0


def test_a_probe_opens_new_windows_and_shares_its_flow() -> None:
    """Step by step: a SYN that opens a window in portscan and in sweep (one Flow, held by
    both probes), the same scanner's next ports (portscan's window grows, sweep's target is
    the same host), its window over (a new one, the old kept by its probes), an IPv6 UDP
    probe; each decided in compiled code, the objects the same as Python's."""
    need_fast_path()
    pair = ProbePair(_SCAN_POLICY.format(memory=65536, probes=16384, syn=5000, udp=5000))
    pair.next_tick = 1000.0  # no tick: the windows and probes stay as filed
    scanner, host = "198.18.0.1", "10.30.0.1"
    now = 100.0
    # (the first packet of its addresses and ports: the policy's candidates of them are
    # made by Python; the probe's objects the same)
    pair.handle(build_packet(PROTO_TCP, scanner, host, 40000, 22, flags=0x02), META, now)
    pair.check_state()
    before = pair.flowless_packets
    fast = pair.fast.detect
    assert fast is not None and fast.portscan is not None and fast.sweep is not None
    assert fast.portscan.pending[0].flow is fast.sweep.pending[0].flow
    for port in (23, 25, 80):
        now += 0.1
        pair.handle(build_packet(PROTO_TCP, scanner, host, 40000, port, flags=0x02), META, now)
    pair.check_state()
    assert len(fast.portscan.pending) == 4 and len(fast.sweep.pending) == 4
    assert list(fast.sweep.entries[bytes([198, 18, 0, 1])].waiting.values()) == [4]
    # past the window (3 s), before the probes are due (a packet weighs them: Python)
    pair.slow.tick(now + 2.5)
    pair.fast.tick(now + 2.5)
    now += 3.5
    pair.handle(build_packet(PROTO_TCP, scanner, host, 40000, 443, flags=0x10), META, now)
    pair.check_state()
    pair.handle(build_packet(PROTO_UDP, "2001:db8:1::1", "2001:db8:2::1", 5000, 53), META, now)
    pair.check_state()
    assert pair.flowless_packets == before + 5
    # a window's last instant: `within` seconds after its start is still in it
    other = "198.18.0.2"
    pair.handle(build_packet(PROTO_TCP, other, host, 40000, 22, flags=0x02), META, 200.0)
    for engine in (pair.slow, pair.fast):
        engine.tick(202.5)  # (its probes weighed: none due at 203)
    # (a segment that is no probe first: it makes the flow table's timer slot of that
    # second, so that the probe below has no other reason to go to Python)
    segment = build_packet(PROTO_TCP, host, other, 22, 40000, flags=0x18, payload=b"x")
    pair.handle(segment, META, 203.0)
    pair.check_state()
    before = pair.flowless_packets
    pair.handle(build_packet(PROTO_TCP, other, host, 40000, 23, flags=0x02), META, 203.0)
    assert pair.flowless_packets == before + 1
    pair.check_state()
    window = fast.portscan.entries[(bytes([198, 18, 0, 2]), bytes([10, 30, 0, 1]))]
    assert window.start == 200.0 and list(window.waiting) == [23]
    pair.finish(205.0)


@pytest.mark.parametrize("app", ["off", "on"])
def test_the_gateway_policy_files_probes_the_same(app: str) -> None:
    """The gateway's six detectors over the probe traffic: synflood counts each SYN (its
    buckets per destination made and taken here), stealth and the flows accepted between
    them; with application parsing on, a TCP probe without payload too (the inspector's
    quiet state is closed with the refused flow; passive DNS names its responder), a UDP
    probe is the inspector's (Python)."""
    need_fast_path()
    from test_fastpath_differential import GATEWAY

    text = ("set app-layer off\n" if app == "off" else "") + GATEWAY
    pair = ProbePair(text)
    # names of some targets (passive DNS, as DNS answers teach it), some expiring meanwhile:
    # with parsing on, a flow's first look asks its responder's name, which the flow keeps
    for engine in (pair.slow, pair.fast):
        pdns: Any = engine.pdns
        for i, host in enumerate(_HOSTS_V4[:4]):
            pdns._store(bytes(int(part) for part in host.split(".")), f"h{i}.test", 101.0 + 2 * i)
    now = run_pair(pair, probe_traffic(7, seconds=8.0), [META])
    pair.finish(now + 3.0)
    fast_path: Any = pair.fast._fast_path
    assert fast_path.probes_filed > (100 if app == "off" else 50), fast_path.probes_filed
    if app == "on":
        assert pair.slow.pdns.expired > 0  # (names asked, before and after they expired)


_DUE_POLICY = """\
set app-layer off
set default drop
detect portscan ports {ports} within 60s alert
detect sweep hosts 25 within 60s alert
"""


@pytest.mark.parametrize(
    ("case", "flags", "count", "ports", "compiled"),
    [
        ("unanswered ACKs weigh nothing", 0x10, 5, 4, True),
        ("SYNs short of the threshold", 0x02, 5, 15, True),
        ("SYNs that reach the threshold: a detection", 0x02, 4, 4, False),
        ("more due than a packet weighs", 0x10, 17, 5, False),  # (20 a key pending)
        ("a long window hears the weights", 0x10, 5, 4, False),
    ],
)
def test_due_probes_are_weighed_ahead_in_compiled_code_when_quiet(
    case: str, flags: int, count: int, ports: int, compiled: bool
) -> None:
    """A new probe while earlier ones are due: `_probe` weighs them first (up to
    RESOLVE_PER_PACKET). The compiled path weighs them itself (ScanDetector.
    resolve_quietly) and files the probe when that reports nothing and leaves none due;
    a detection, more due probes than one packet weighs, or `slowscan` (which hears every
    weight): Python, the state the same either way."""
    need_fast_path()
    text = _DUE_POLICY.format(ports=ports)
    if case.startswith("a long window"):
        text += "detect slowscan ports 100 within 1h alert\n"
    pair = ProbePair(text)
    pair.next_tick = 1000.0  # no tick: the due probes are weighed by a packet
    scanner, host = "198.18.0.1", "10.30.0.1"
    for i in range(count):
        data = build_packet(PROTO_TCP, scanner, host, 40000, 100 + i, flags=flags)
        pair.handle(data, META, 100.0 + i * 0.001)
    # (a segment that is no probe first, to a port seen: the timer slot and candidates of
    # that second made, so that the probe below has no other reason to go to Python)
    segment = build_packet(PROTO_TCP, host, scanner, 100, 40001, flags=0x18, payload=b"x")
    pair.handle(segment, META, 102.5)
    pair.check_state()
    before = pair.flowless_packets
    resolved = pair.fast._fast_path.probes_resolved
    pair.handle(build_packet(PROTO_TCP, scanner, host, 40000, 100, flags=flags), META, 102.5)
    pair.check_state()
    assert pair.flowless_packets == before + compiled
    assert (pair.fast._fast_path.probes_resolved > resolved) == compiled
    fast = pair.fast.detect
    assert fast is not None and fast.portscan is not None
    detection = case.endswith("a detection")
    if count <= 16:  # the due ones weighed, the new one filed (not in a window that fired)
        assert len(fast.portscan.pending) == (0 if detection else 1)
    assert (pair.slow.stats.alerts > 0) == detection
    pair.finish(110.0)


@pytest.mark.parametrize(
    ("ports", "count", "quiet"),
    [(15, 5, True), (4, 3, True), (4, 4, False), (5, 17, False)],
    ids=["short", "one-short", "detection", "too-many"],
)
def test_resolve_quietly_is_resolve_when_it_reports_nothing(
    ports: int, count: int, quiet: bool
) -> None:
    """ScanDetector.resolve_quietly (the Python engine alone, with or without the
    extension): what `resolve` does, when that reports nothing and leaves no probe due;
    otherwise False and nothing changed (a detection; more due probes than the budget)."""
    from test_fastpath_differential import detector_state

    from ips.detect.scan import RESOLVE_PER_PACKET
    from ips.policy.resolve import load_policy_text

    engines = [
        Engine(load_policy_text(_DUE_POLICY.format(ports=ports), "due.rules"), fast=False)
        for _ in range(2)
    ]
    for engine in engines:
        for i in range(count):
            data = build_packet(PROTO_TCP, "198.18.0.1", "10.30.0.1", 40000, 100 + i, flags=0x02)
            engine.handle(data, META, 100.0 + i * 0.001)
    asked, reference = engines
    assert asked.detect is not None and reference.detect is not None
    portscan = asked.detect.portscan
    assert portscan is not None and reference.detect.portscan is not None
    assert portscan.resolve_quietly(102.5, RESOLVE_PER_PACKET) == quiet
    if quiet:
        out: list[object] = []
        reference.detect.portscan.resolve(102.5, RESOLVE_PER_PACKET, out)  # type: ignore[arg-type]
        assert out == [] and not portscan.pending
    assert detector_state(asked) == detector_state(reference)


def test_a_quiet_resolve_that_reports_after_all_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should resolve_quietly's own weighing ever disagree with `_credit`'s (a bug: here its
    weighing is made to see nothing), what `resolve` reported is held and goes out at the
    next tick, and the call raises (the compiled path counts that in fast_failures and
    leaves the packet to Python) instead of losing the detection."""
    from ips.core.events import Alert
    from ips.detect.scan import RESOLVE_PER_PACKET
    from ips.policy.resolve import load_policy_text

    engine = Engine(load_policy_text(_DUE_POLICY.format(ports=4), "due.rules"), fast=False)
    for i in range(4):
        data = build_packet(PROTO_TCP, "198.18.0.1", "10.30.0.1", 40000, 100 + i, flags=0x02)
        engine.handle(data, META, 100.0 + i * 0.001)
    assert engine.detect is not None and engine.detect.portscan is not None
    portscan = engine.detect.portscan
    weigh = portscan.weigh
    calls = {"n": 0}

    def first_four_see_nothing(probe: Any) -> float:
        calls["n"] += 1
        return 0.0 if calls["n"] <= 4 else weigh(probe)

    monkeypatch.setattr(portscan, "weigh", first_four_see_nothing)
    with pytest.raises(RuntimeError):
        portscan.resolve_quietly(102.5, RESOLVE_PER_PACKET)
    assert not portscan.pending and len(portscan.unreported) == 1
    assert portscan.due(102.6)  # nothing pending, but something to say
    found = engine.detect.tick(102.6)
    assert [type(e) for e in found] == [Alert] and not portscan.unreported
    assert not portscan.due(102.7)


def test_a_syn_where_the_last_was_accepted_goes_to_python() -> None:
    """The compiled path guesses that a SYN to a destination and port whose last SYN the
    rules accepted is accepted too, and leaves it to Python at once (a new connection: its
    candidates would be looked up twice). The guess only chooses the path: a SYN there that
    the rules refuse is decided by Python, the same; elsewhere refused SYNs stay compiled.
    (The guess is consulted only where accepted SYNs are not filed in compiled code,
    FastPath.syn_first_on, turned off here: tests/pure/test_fastpath_syn.py has the rest.)"""
    need_fast_path()
    text = (
        "set app-layer off\nset default drop\n"
        "accept proto tcp from 10.10.1.1 to 10.10.2.1 port 443\n"
        "detect portscan ports 15 within 60s alert\n"
    )
    pair = ProbePair(text)
    path = pair.fast._fast_path
    assert path is not None
    path.syn_first_on = False
    pair.next_tick = 1000.0
    now = 100.0

    def syn(src: str, sport: int, dport: int) -> int:
        """The SYN handled; 1 when decided in compiled code."""
        nonlocal now
        now += 0.01
        before = pair.flowless_packets
        pair.handle(build_packet(PROTO_TCP, src, "10.10.2.1", sport, dport, flags=0x02), META, now)
        return pair.flowless_packets - before

    syn("198.18.0.9", 40000, 443)  # (the policy's candidates of it made by Python)
    assert syn("198.18.0.9", 40001, 443) == 1  # refused in compiled code
    syn("10.10.1.1", 41000, 443)  # (its candidates made by Python: no guess yet)
    syn("10.10.1.1", 41001, 443)  # accepted: the rules walked in compiled code first
    assert pair.slow.stats.verdicts["accept"] == 2
    assert syn("198.18.0.9", 40002, 443) == 0  # refused, by Python
    syn("198.18.0.9", 40003, 444)
    assert syn("198.18.0.9", 40004, 444) == 1  # another port: compiled
    pair.finish(now + 3.0)


@pytest.mark.parametrize("early", [False, True], ids=["forgotten", "weighed-early"])
def test_a_full_queue_forgets_its_oldest_probe_in_compiled_code(early: bool) -> None:
    """`set detect-probes 16`, and more new probes: ScanDetector._make_room takes the
    oldest pending probe out. A probe whose window has no other waiting (forged sources:
    one probe each) is forgotten (`probes_dropped`): done in compiled code, the new probe
    filed. One whose window has others waiting and that waited EARLY seconds is weighed
    early (`probes_early`, maybe a detection): Python."""
    need_fast_path()
    text = (
        "set app-layer off\nset default drop\nset detect-probes 16\n"
        "detect portscan ports 15 within 60s alert\n"
    )
    pair = ProbePair(text)
    pair.next_tick = 1000.0  # no tick: the queue fills
    now = 100.0
    for i in range(16):
        # forged sources, one probe each; or one scanner's ports (its window has others)
        src = "198.18.0.1" if early else f"198.18.1.{i + 1}"
        now += 0.01
        pair.handle(
            build_packet(PROTO_TCP, src, "10.30.0.1", 40000, 100 + i, flags=0x10), META, now
        )
    # a second later (EARLY), before the probes are due (GRACE): the queue is full
    now = 101.5
    segment = build_packet(
        PROTO_TCP, "10.30.0.1", "198.18.9.1", 80, 40001, flags=0x18, payload=b"x"
    )
    pair.handle(segment, META, now)  # (the timer slot and candidates of that second made)
    before = pair.flowless_packets
    for i in range(4):
        now += 0.01
        src = "198.18.0.1" if early else f"198.18.2.{i + 1}"
        pair.handle(
            build_packet(PROTO_TCP, src, "10.30.0.1", 40000, 200 + i, flags=0x10), META, now
        )
        pair.check_state()
    portscan = pair.slow.detect.portscan if pair.slow.detect is not None else None
    assert portscan is not None and len(portscan.pending) == 16
    if early:
        assert portscan.probes_early == 4 and pair.flowless_packets == before
    else:
        assert portscan.probes_dropped == 4 and pair.flowless_packets >= before + 3
    pair.finish(now + 3.0)


def test_a_fast_path_failure_in_a_mapped_replay_is_counted_and_the_packet_is_pythons(
    tmp_path: Path,
) -> None:
    """A bug of the compiled path met in the mapped replay's compiled loop (here a scan's
    resolve_quietly made to raise) ends neither the replay nor the packet: it is counted in
    Engine.fast_failures, as Engine.handle counts it inline, and the packet is decided by
    Python, so the replay's result is the pure engine's."""
    need_fast_path()
    import io
    import json

    from ips.io.pcap import write_pcap
    from ips.policy.resolve import load_policy_text
    from ips.replay import replay_captures

    text = _DUE_POLICY.format(ports=15)
    scanner, host = "198.18.0.1", "10.30.0.1"
    # SYNs to 40 ports, 0.5 s apart: probes come due (GRACE) while others still arrive
    records = [
        (100.0 + i * 0.5, build_packet(PROTO_TCP, scanner, host, 40000, 100 + i, flags=0x02))
        for i in range(40)
    ]
    path = tmp_path / "scan.pcap"
    write_pcap(path, records)

    def replay(fast: bool, broken: bool) -> tuple[str, str, int]:
        policy = load_policy_text(text, "due.rules")
        engine = Engine(policy, fast=fast)
        if broken:
            assert engine.detect is not None and engine.detect.portscan is not None

            def resolve_quietly(now: float, budget: int) -> bool:
                raise RuntimeError("a deliberate bug")

            engine.detect.portscan.resolve_quietly = resolve_quietly  # type: ignore[method-assign]
        eve = io.StringIO()
        result = replay_captures(
            policy, [str(path)], engine=engine, eve_stream=eve, progress=False, mapped=True
        )
        lines = "".join(sorted(eve.getvalue().splitlines(True)))
        return json.dumps(result.as_dict(), sort_keys=True), lines, engine.fast_failures

    reference = replay(fast=False, broken=False)
    broken = replay(fast=True, broken=True)
    assert broken[2] > 0  # the bug was met, and counted
    assert broken[:2] == reference[:2]
    assert '"alert"' in reference[1]  # (the scan is found: the probes were weighed)
