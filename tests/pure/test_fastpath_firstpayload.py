"""A TCP flow's first payload that names it unknown, decided in compiled code
(ips/fast/_fastpath.pyx `_first_payload_unknown` and `_name_unknown`) against the Python
engine, its definition (ips/app/inspect.py `AppInspector._first_payload`): the inspector's
fields, counters and state, the flow's counters and state, the detectors, the candidate
caches, every EngineStats counter and the Decision with its offload mark must be the same.
Payloads that could still start DNS, TLS, HTTP or SSH, split ones, retransmissions, a
payload on the handshake's ACK and a server that speaks first go to Python, or are decided
here only when the reference decides the same. Two engines, one with the compiled path and
one without, fed the same packets (test_fastpath_differential's Pair).

Without the extension both engines are the Python engine and the comparison still runs; the
tests that need the compiled path say so (`need_fast_path`)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ips import fast
from ips.core.build import build_packet
from ips.core.decision import OFFLOAD_FLOW, Decision
from ips.core.packet import PROTO_TCP
from ips.engine import Meta
from ips.engine.engine import Engine
from tests.benchkit import bench_module
from tests.pure.test_fastpath_differential import GATEWAY, META, Pair, need_fast_path, plain

SYN, SYN_ACK, ACK, PSH_ACK, FIN_ACK, RST = 0x02, 0x12, 0x10, 0x18, 0x11, 0x04
CLIENT, SERVER = "10.10.1.21", "10.10.2.10"


BENCH = bench_module().bench_policy(GATEWAY)
L7 = """\
set default accept
accept proto tcp to port 7000
drop http host "blocked.example" alert "blocked host" sid 9300004
drop proto tcp to port 7000 payload contains "EVIL" depth 4 alert "evil" sid 9300002
"""
POLICIES = {
    # the lab's policy: the storm's port 5209 accepted, offload on (the default) and off
    "bench": BENCH,
    "bench, offload off": "set offload off\n" + BENCH,
    # the gateway's web ports: payload rules with a depth hold the offload back (a plan)
    "gateway": GATEWAY,
    "gateway, offload off": "set offload off\n" + GATEWAY,
    "accept all": "set default accept\n",
    # an HTTP rule and a payload rule with a depth behind the port's accept: the offload
    # waits for the protocol (unknown rules the HTTP rule out) and the depth
    "l7": L7,
}
PORTS = {"bench": 5209, "gateway": 8080, "accept all": 7000, "l7": 7000}

# First payloads: named unknown at once, or not (they could still start DNS, TLS, HTTP or
# SSH, or are one of them): the latter are Python's.
PAYLOADS = [
    b"storm-1\n",
    b"storm-123456\n",
    b"xyzzy",
    b"\x00\x11\x12\x34\x01\x00",  # could be a DNS message's start
    b"\x00",
    b"GE",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
    b"SSH-2.0-x\r\n",
    b"S",
    b"../..",
    b"/etc/passwd",
    b"x" * 3000,
]


def _port(policy: str) -> int:
    return PORTS[policy.split(",")[0]]


def _tcp(fwd: bool, cport: int, sport: int, flags: int, seq: int, payload: bytes = b"") -> bytes:
    if fwd:
        return build_packet(
            PROTO_TCP, CLIENT, SERVER, cport, sport, flags=flags, seq=seq, payload=payload
        )
    return build_packet(
        PROTO_TCP, SERVER, CLIENT, sport, cport, flags=flags, seq=seq, payload=payload
    )


def inspector_state(engine: Engine) -> object:
    """What Pair's state leaves out: each flow's AppFields, and the reassembler's memory."""
    return (
        sorted((f.flow_id, repr(plain(f.app))) for f in engine.flows.flows()),
        engine.app.reassembler.used,
        dict(engine.app.counters.protocols),
    )


class FirstPayloadPair(Pair):
    def handle(self, data: bytes, meta: Meta, now: float) -> None:
        super().handle(data, meta, now)
        assert inspector_state(self.fast) == inspector_state(self.slow), self.packets

    def check_state(self) -> None:
        super().check_state()
        assert inspector_state(self.fast) == inspector_state(self.slow)

    @property
    def first_unknown_packets(self) -> int:
        path = self.fast._fast_path
        return path.first_unknown_packets if path is not None else 0


MODES = ("plain", "hole", "ack_data", "server_first", "split", "retx", "no_ack")


def _storm(
    pair: Pair, cport: int, sport: int, isn: int, payload: bytes, now: float, mode: str = "plain"
) -> float:
    """bench/storm.py's connection: handshake, the request, its echo, both FINs; `mode`
    changes it: a segment off the request's start first (hole), the request on the
    handshake's ACK (ack_data), the echo before the request (server_first), the request in
    two segments (split), sent twice (retx), or with no ACK before it (no_ack)."""
    n = len(payload)
    steps = [(True, SYN, isn, b""), (False, SYN_ACK, 9000 + isn, b"")]
    if mode == "ack_data":
        steps.append((True, ACK, isn + 1, payload))
    elif mode != "no_ack":
        steps.append((True, ACK, isn + 1, b""))
    request = [(True, PSH_ACK, isn + 1, payload)]
    if mode == "hole":
        request.insert(0, (True, PSH_ACK, isn + 101, payload))
    elif mode == "split":
        half = max(1, n // 2)
        request = [
            (True, PSH_ACK, isn + 1, payload[:half]),
            (True, PSH_ACK, isn + 1 + half, payload[half:]),
        ]
    elif mode == "retx":
        request = request * 2
    echo = [(False, PSH_ACK, 9001 + isn, payload)]
    if mode == "ack_data":
        steps += echo
    elif mode == "server_first":
        steps += echo + request
    else:
        steps += request + echo
    steps += [
        (False, FIN_ACK, 9001 + isn + n, b""),
        (True, FIN_ACK, isn + 1 + n, b""),
        (False, ACK, 9002 + isn + n, b""),
    ]
    for fwd, flags, seq, data in steps:
        now += 0.0007
        pair.handle(_tcp(fwd, cport, sport, flags, seq, data), META, now)
    return now


def test_storm_connections_decide_the_same() -> None:
    for name, text in POLICIES.items():
        pair = FirstPayloadPair(text)
        now = 100.0
        i = 0
        for mode in MODES:
            for payload in PAYLOADS:
                now = _storm(pair, 40000 + i, _port(name), 1000 + 17 * i, payload, now, mode)
                i += 1
        pair.tick(now + 1.0)
        pair.finish(now + 2.0)
        # (the unknown requests of the storm's port were decided in compiled code)
        assert pair.first_unknown_packets > 0 or not fast.available(), name


def test_a_storm_request_is_decided_in_compiled_code_with_the_offload_mark() -> None:
    """The request of a storm connection (bench policy, offload on) is decided here and
    carries the flow's offload, as in Python; with offload off, the plain accept; a payload
    that could still start DNS goes to Python."""
    need_fast_path()
    for name, offloaded in (("bench", True), ("bench, offload off", False)):
        pair = FirstPayloadPair(POLICIES[name])
        fast_handle = pair.fast._fast
        assert fast_handle is not None
        now = 100.0
        for fwd, flags, seq in ((True, SYN, 1000), (False, SYN_ACK, 9000), (True, ACK, 1001)):
            now += 0.001
            pair.handle(_tcp(fwd, 40000, 5209, flags, seq), META, now)
        request = _tcp(True, 40000, 5209, PSH_ACK, 1001, b"storm-7\n")
        now += 0.001
        want = pair.slow.handle(request, META, now)
        got = fast_handle(request, META, now)
        assert type(got) is Decision and plain(got) == plain(want), name
        assert (got.offload == OFFLOAD_FLOW) is offloaded, name
        assert pair.first_unknown_packets == 1
        pair.check_state()
        # DNS could still follow two bytes of length and an id: Python's
        for fwd, flags, seq in ((True, SYN, 2000), (False, SYN_ACK, 8000), (True, ACK, 2001)):
            now += 0.001
            pair.handle(_tcp(fwd, 40001, 5209, flags, seq), META, now)
        dns_start = _tcp(True, 40001, 5209, PSH_ACK, 2001, b"\x00\x11\x12\x34\x01\x00")
        assert type(fast_handle(dns_start, META, now)) is not Decision
        pair.finish(now + 1.0)


_STEP = st.tuples(
    st.integers(0, 1),  # which of 2 client ports
    st.sampled_from(
        [
            "syn",
            "synack",
            "ack",
            "ack_data",
            "data",
            "data_split",
            "data_retx",
            "data_seq",
            "echo",
            "fin_c",
            "fin_s",
            "rst",
        ]
    ),
    st.integers(0, len(PAYLOADS) - 1),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_STEP, min_size=1, max_size=30), policy=st.sampled_from(sorted(POLICIES)))
def test_any_order_of_first_payloads_decides_the_same(
    steps: list[tuple[int, str, int]], policy: str
) -> None:
    """Handshakes in any order, payload on the handshake's ACK, either side first, split
    first payloads, retransmissions, payloads off the direction's start."""
    pair = FirstPayloadPair(POLICIES[policy])
    sport = _port(policy)
    now = 100.0
    # each side's next sequence number, per client port (the SYNs set them)
    seq: dict[tuple[int, bool], int] = {}
    for i, (which, kind, p) in enumerate(steps):
        cport = 40000 + which
        payload = PAYLOADS[p]
        fwd = kind not in ("synack", "echo", "fin_s")
        key = (cport, fwd)
        start = seq.setdefault(key, 1000 if fwd else 9000)
        flags = {
            "syn": SYN,
            "synack": SYN_ACK,
            "ack": ACK,
            "ack_data": ACK,
            "fin_c": FIN_ACK,
            "fin_s": FIN_ACK,
            "rst": RST,
        }.get(kind, PSH_ACK)
        now += 0.3 if i % 9 == 8 else 0.001
        if kind in ("syn", "synack"):
            pair.handle(_tcp(fwd, cport, sport, flags, start), META, now)
            seq[key] = start + 1
            continue
        if kind in ("ack", "fin_c", "fin_s", "rst"):
            pair.handle(_tcp(fwd, cport, sport, flags, start), META, now)
            continue
        if kind == "data_split":
            half = max(1, len(payload) // 2)
            pair.handle(_tcp(fwd, cport, sport, flags, start, payload[:half]), META, now)
            pair.handle(_tcp(fwd, cport, sport, flags, start + half, payload[half:]), META, now)
        elif kind == "data_retx":
            pair.handle(_tcp(fwd, cport, sport, flags, start, payload), META, now)
            pair.handle(_tcp(fwd, cport, sport, flags, start, payload), META, now)
        elif kind == "data_seq":
            pair.handle(_tcp(fwd, cport, sport, flags, start + 100, payload), META, now)
            continue
        else:  # data, echo, ack_data
            pair.handle(_tcp(fwd, cport, sport, flags, start, payload), META, now)
        seq[key] = start + len(payload)
    pair.tick(now + 1.0)
    pair.finish(now + 2.0)
