"""A SYN on the tuple of a closed or offloaded connection (the client reused its port) in
compiled code (ips/fast/_fastpath.pyx `_reused`, then the path of a SYN of no flow) against
the Python engine, its definition: FlowTable.open ends the old flow (`_reuse`: reason
`reused`, its FlowEnd at the next tick) and opens a new one. Two engines, one with the
compiled path and one without, fed the same packets must give the same decisions, the same
state after every tick and the same flow ends (test_fastpath_differential's Pair).

Without the extension both engines are the Python engine and the comparison still runs; the
test that needs the compiled path says so (`need_fast_path`)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ips.core.build import build_packet
from ips.core.decision import Decision
from ips.core.packet import PROTO_TCP
from tests.pure.test_fastpath_differential import GATEWAY, META, Pair, need_fast_path

SYN, SYN_ACK, ACK, PSH_ACK, FIN_ACK, RST = 0x02, 0x12, 0x10, 0x18, 0x11, 0x04
CLIENT, SERVER = "10.10.1.21", "10.10.2.10"
# gateway.rules lets LAN clients reach the DMZ's web ports; the bench's ports are added as
# bench/lab.py adds them (its storm's connections go to 5209).
BENCH = GATEWAY.replace(
    "accept  proto tcp from $lan",
    "accept  proto { tcp, udp } from $lan to $dmz port 5201-5209\naccept  proto tcp from $lan",
    1,
)
POLICIES = {
    "app on, offload on": BENCH,
    "app off, offload on": "set app-layer off\n" + BENCH,
    "app on, offload off": "set offload off\n" + BENCH,
    "accept all": "set default accept\n",
}


def _tcp(fwd: bool, port: int, flags: int, seq: int, payload: bytes = b"") -> bytes:
    if fwd:
        return build_packet(
            PROTO_TCP, CLIENT, SERVER, port, 5209, flags=flags, seq=seq, payload=payload
        )
    return build_packet(
        PROTO_TCP, SERVER, CLIENT, 5209, port, flags=flags, seq=seq, payload=payload
    )


def _connection(port: int, isn: int, close: bool) -> list[bytes]:
    """bench/storm.py's connection: handshake, "storm-N", the echo, and (close) both FINs."""
    out = [
        _tcp(True, port, SYN, isn),
        _tcp(False, port, SYN_ACK, 9000 + isn),
        _tcp(True, port, ACK, isn + 1),
        _tcp(True, port, PSH_ACK, isn + 1, b"storm-%d\n" % port),
        _tcp(False, port, PSH_ACK, 9001 + isn, b"storm-%d\n" % port),
    ]
    if close:
        out += [
            _tcp(False, port, FIN_ACK, 9011 + isn),
            _tcp(True, port, FIN_ACK, isn + 11),
            _tcp(False, port, ACK, 9012 + isn),
        ]
    return out


def test_reused_tuples_decide_the_same() -> None:
    for name, text in POLICIES.items():
        pair = Pair(text)
        now = 100.0
        for round_ in range(3):  # every tuple reused twice
            for i in range(40):
                for data in _connection(40000 + i, 1000 * (round_ + 1) + i, close=i % 2 == 0):
                    now += 0.0007
                    pair.handle(data, META, now)
            pair.tick(now)
        pair.finish(now + 1.0)
        assert pair.slow.flows.stats.reused == pair.fast.flows.stats.reused > 0, name


def test_a_reused_tuples_syn_is_decided_in_compiled_code() -> None:
    """An offloaded connection's tuple and a closed one's: the next SYN on each is decided
    by the compiled path, and the old flow ends as `reused` at the tick; a SYN on an open
    connection's tuple is still Python's (the state machine's)."""
    need_fast_path()
    pair = Pair(BENCH)
    now = 100.0
    for data in _connection(40000, 1000, close=False) + _connection(40001, 2000, close=True):
        now += 0.001
        pair.handle(data, META, now)
    fast = pair.fast._fast
    for port in (40000, 40001):
        now += 0.001
        syn = _tcp(True, port, SYN, 5000 + port)
        got = fast(syn, META, now)
        assert type(got) is Decision and got.verdict == "accept", port
        pair.slow.handle(syn, META, now)
    assert pair.fast.flows.stats.reused == 2
    now += 0.001
    pair.handle(_tcp(True, 40002, SYN, 7000), META, now)
    pair.handle(_tcp(False, 40002, SYN_ACK, 8000), META, now)
    pair.handle(_tcp(True, 40002, ACK, 7001), META, now)
    assert type(fast(_tcp(True, 40002, SYN, 7500), META, now)) is not Decision
    pair.tick(now + 1.0)
    pair.finish(now + 2.0)


_STEP = st.tuples(
    st.integers(0, 2),  # which of 3 client ports
    st.sampled_from(["syn", "synack", "ack", "data", "echo", "fin_c", "fin_s", "rst", "syn_fin"]),
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_STEP, min_size=1, max_size=40), policy=st.sampled_from(sorted(POLICIES)))
def test_any_order_of_segments_on_few_tuples_decides_the_same(
    steps: list[tuple[int, str]], policy: str
) -> None:
    pair = Pair(POLICIES[policy])
    now = 100.0
    seq = {True: 1000, False: 9000}
    for i, (which, kind) in enumerate(steps):
        port = 40000 + which
        fwd, flags, payload = {
            "syn": (True, SYN, b""),
            "synack": (False, SYN_ACK, b""),
            "ack": (True, ACK, b""),
            "data": (True, PSH_ACK, b"storm-%d\n" % i),
            "echo": (False, PSH_ACK, b"storm-%d\n" % i),
            "fin_c": (True, FIN_ACK, b""),
            "fin_s": (False, FIN_ACK, b""),
            "rst": (True, RST, b""),
            "syn_fin": (True, SYN | 0x01, b""),
        }[kind]
        seq[fwd] += 7
        now += 0.3 if i % 9 == 8 else 0.001
        pair.handle(_tcp(fwd, port, flags, seq[fwd], payload), META, now)
    pair.tick(now + 1.0)
    pair.finish(now + 2.0)
