"""Coverage-guided fuzzing (atheris/libFuzzer) of the decoder, flow tracker and engine.

bench/fuzz.py generates inputs from a model of packets; this lets libFuzzer find its own way
into the decoder's branches (the core is instrumented for coverage). The contract is the same:
decode_l3/decode_frame return Packet, Malformed or None; the flow table and the engine raise
nothing and the engine never needs its `set on-error` verdict. A violation raises, and
libFuzzer stops and writes the input that did it (crash-*) into the working directory.

    .venv/bin/python bench/fuzz_atheris.py -runs=1000000 [-seed=1] [corpus_dir]

Needs `pip install atheris` (Linux, CPython 3.11+).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ips"]):
    from ips.core.decode import decode_frame, decode_l3
    from ips.core.flow import FlowTable
    from ips.core.packet import LINKTYPE_RAW, Malformed, Packet
    from ips.engine import Engine, Meta
    from ips.policy.resolve import load_policy

POLICY = Path(__file__).resolve().parents[1] / "policies" / "gateway.rules"
LINKTYPES = (LINKTYPE_RAW, 1, 113, 276, 0, 108, 228, 229)

ENGINE = Engine(load_policy(POLICY), max_flows=512)
FLOWS = FlowTable(max_flows=256)
STATE = {"now": 1_000_000.0, "inputs": 0}


class ContractViolation(AssertionError):
    pass


def one_input(data: bytes) -> None:
    if not data:
        return
    linktype = LINKTYPES[data[0] % len(LINKTYPES)]
    body = data[1:]
    STATE["now"] += 0.001
    STATE["inputs"] += 1
    now = STATE["now"]
    result = decode_l3(body) if linktype == LINKTYPE_RAW else decode_frame(body, linktype)
    if not (result is None or isinstance(result, Malformed | Packet)):
        raise ContractViolation(f"decoder returned {type(result).__name__}")
    if isinstance(result, Packet):
        FLOWS.track(result, now)
        if len(FLOWS) > FLOWS.max_flows:
            raise ContractViolation("flow table over its cap")
    errors = ENGINE.stats.errors
    ENGINE.handle(body, Meta(iif="eth0", linktype=linktype), now)
    if ENGINE.stats.errors != errors:
        raise ContractViolation("the engine needed its on-error verdict")
    if STATE["inputs"] % 1000 == 0:
        ENGINE.tick(now)
        if len(ENGINE.flows) > 512:
            raise ContractViolation("engine flow table over its cap")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
