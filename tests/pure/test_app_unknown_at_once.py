"""A quiet TCP flow's first payload that names its protocol unknown by itself is finished by
the inspector without building the streams (ips/app/inspect.py `_first_payload`):
against the full path (`unknown_at_once = False`: the streams built, the payload placed,
detected, the streams closed), the reference. Two engines fed the same packets must give the
same decisions and leave the same state: flows and their application fields, the
inspector's state, the application and reassembler counters (and the memory it holds), the
detectors, the offload decisions.

The engine with the shortcut runs with the compiled path when it is built, so the test also
holds the shortcut together with what the compiled path leaves to the inspector."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ips.app.detect import APP_UNKNOWN
from ips.core.build import build_packet
from ips.core.packet import PROTO_TCP
from ips.engine import Engine
from ips.policy.resolve import load_policy_text
from tests.pure.test_app_parsers import dns_query
from tests.pure.test_fastpath_differential import (
    GATEWAY,
    META,
    Pair,
    capture_records,
    plain,
    replay,
    shared_captures,
)

SYN, SYN_ACK, ACK, PSH_ACK, FIN_ACK, RST = 0x02, 0x12, 0x10, 0x18, 0x11, 0x04
CLIENT, SERVER = "10.10.1.21", "10.10.2.10"
# Accepted both ways, offload on (the default), a small stream bound so that a first
# payload can reach it.
POLICY = "set default accept\nset app-stream-bytes 64\n"


class FullPathPair(Pair):
    """The reference: the Python engine with the inspector's full path; against the engine
    with the shortcut (and the compiled path when built)."""

    def __init__(self, policy_text: str) -> None:
        super().__init__(policy_text)
        self.slow.app.unknown_at_once = False
        assert self.fast.app.unknown_at_once

    def check_state(self) -> None:
        super().check_state()
        assert _app_view(self.fast) == _app_view(self.slow)


def _app_view(engine: Engine) -> list[object]:
    """Each flow's application fields in full (every slot), its protocol and state."""
    out = []
    for f in engine.flows.flows():
        app = f.app
        fields = None if app is None else {k: repr(getattr(app, k, None)) for k in _slots(app)}
        out.append((f.flow_id, f.app_proto, repr(plain(f.app_state, limit=3)), repr(fields)))
    return sorted(out)


def _slots(obj: object) -> list[str]:
    names: list[str] = []
    for cls in type(obj).__mro__:
        names += list(getattr(cls, "__slots__", ()))
    return names or list(vars(obj))


def _tcp(fwd: bool, flags: int, seq: int, payload: bytes = b"", port: int = 9000) -> bytes:
    if fwd:
        return build_packet(
            PROTO_TCP, CLIENT, SERVER, 40000, port, flags=flags, seq=seq, payload=payload
        )
    return build_packet(
        PROTO_TCP, SERVER, CLIENT, port, 40000, flags=flags, seq=seq, payload=payload
    )


_FIRST_PAYLOADS = st.one_of(
    st.binary(min_size=1, max_size=80),
    st.sampled_from(
        [
            b"storm-7\n",
            b"hello 3\n",
            b"message 000\n",
            b"EHLO mail.example\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GE",
            b"SSH-2.0-x\r\n",
            b"\x16\x03\x01\x00\x10\x01",
            struct.pack("!H", len(dns_query())) + dns_query(),
            b"\x00\x40\x12\x34\x01\x00",
            b"x" * 63,
            b"x" * 64,
            b"x" * 65,
            b"x" * 200,
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    first=_FIRST_PAYLOADS,
    fwd=st.booleans(),
    handshake=st.booleans(),
    flags=st.sampled_from([PSH_ACK, ACK, FIN_ACK | 0x08, RST | ACK, SYN]),
    offset=st.sampled_from([0, 0, 0, 1, 5, -3]),
    later=st.lists(st.tuples(st.booleans(), st.binary(max_size=30)), max_size=4),
)
def test_a_first_payload_leaves_what_the_full_path_leaves(
    first: bytes,
    fwd: bool,
    handshake: bool,
    flags: int,
    offset: int,
    later: list[tuple[bool, bytes]],
) -> None:
    pair = FullPathPair(POLICY)
    now = 100.0
    seqs = {True: 1000, False: 5000}
    if handshake:
        pair.handle(_tcp(True, SYN, 999), META, now)
        pair.handle(_tcp(False, SYN_ACK, 4999), META, now + 0.001)
        pair.handle(_tcp(True, ACK, 1000), META, now + 0.002)
    pair.handle(_tcp(fwd, flags, seqs[fwd] + offset, first), META, now + 0.003)
    seqs[fwd] += offset + len(first)
    for i, (direction, data) in enumerate(later):
        pair.handle(_tcp(direction, PSH_ACK, seqs[direction], data), META, now + 0.004 + i * 1e-3)
        seqs[direction] += len(data)
    pair.check_state()
    pair.finish(now + 1.0)


def test_a_storm_connection_is_named_unknown_at_its_request_and_offloaded() -> None:
    """bench/storm.py's connection (the lab's new connections/s): its request names it
    unknown, and the engine offloads it there, both paths alike."""
    pair = FullPathPair(POLICY)
    pair.handle(_tcp(True, SYN, 999), META, 100.0)
    pair.handle(_tcp(False, SYN_ACK, 4999), META, 100.001)
    pair.handle(_tcp(True, ACK, 1000), META, 100.002)
    request = _tcp(True, PSH_ACK, 1000, b"storm-42\n")
    got = pair.fast.handle(request, META, 100.003)
    want = pair.slow.handle(request, META, 100.003)
    assert got.offload and want.offload
    for engine in (pair.fast, pair.slow):
        (flow,) = engine.flows.flows()
        assert flow.app_proto == APP_UNKNOWN and flow.app_state is None
        assert flow.app is not None and flow.app.client_done and flow.app.server_done
        assert engine.stats.app.protocols[APP_UNKNOWN] == 1
    pair.check_state()


def test_the_shared_captures_leave_the_same_state() -> None:
    for text in ("set default accept\n", GATEWAY):
        pair = FullPathPair(text)
        last = 0.0
        for path in shared_captures():
            last = max(last, replay(pair, capture_records(path)))
        pair.finish(last)
        assert pair.packets > 1000


def test_the_shortcut_is_taken() -> None:
    """Without it taken this file would compare the full path with itself."""
    engine = Engine(load_policy_text(POLICY, "t.rules"), fast=False)
    calls: list[Any] = []
    wake = engine.app._wake
    engine.app._wake = lambda *a: calls.append(a) or wake(*a)  # type: ignore[method-assign]
    engine.handle(_tcp(True, SYN, 999), META, 1.0)
    engine.handle(_tcp(False, SYN_ACK, 4999), META, 1.001)
    engine.handle(_tcp(True, PSH_ACK, 1000, b"storm-1\n"), META, 1.002)
    assert calls == []
    engine.handle(_tcp(True, SYN, 1999, port=9001), META, 1.1)
    engine.handle(_tcp(False, SYN_ACK, 7999, port=9001), META, 1.101)
    engine.handle(_tcp(True, PSH_ACK, 2000, b"GET / HTTP/1.1\r\n\r\n", port=9001), META, 1.102)
    assert len(calls) == 1
