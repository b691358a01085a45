"""Coverage-guided fuzzing (atheris/libFuzzer) of the wired application layer: the per-flow
inspector (ips/app/inspect.py) fed one flow's packets at a time, built from a script of bytes
(bench/inspect_script.py): seed conversations (TLS, HTTP, SSH, DNS over TCP and UDP, a
QUIC-like datagram) cut into segments at fuzzed offsets and lengths, out of order, overlapping,
with sequence jitter, FIN and RST, or raw fuzzed payloads, with or without a handshake.

The contract (inspect_script's docstring): no exception; known event types; the reassembler
within its memory cap, and empty once every flow has ended; a side's fields never change once
it is done; malformed reasons declared by the parsers; passive DNS within its bound. One
inspector serves the whole run, so its accounting is checked across inputs. A violation
raises, and libFuzzer stops and writes the input (crash-*). Every 100,000 inputs a line
reports the count, events, and the peak RSS. Without a corpus directory, a temporary one is
seeded with one script per seed conversation (both directions whole and in order, after a
handshake), so the fuzzer starts from complete transactions.

    .venv/bin/python bench/fuzz_app_inspect.py -runs=1000000 [-seed=1] [corpus_dir]

Needs `pip install atheris` (Linux, CPython 3.11+).
"""

from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["ips.app"]):
    from inspect_script import SEEDS, Harness

HARNESS = Harness()
STATE = {"inputs": 0}


def one_input(data: bytes) -> None:
    STATE["inputs"] += 1
    HARNESS.run(data)
    if STATE["inputs"] % 100_000 == 0:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        counters = HARNESS.inspector.counters
        print(
            f"fuzz_app_inspect: {STATE['inputs']} inputs, {HARNESS.events} events "
            f"{dict(counters.events)}, {sum(counters.malformed.values())} malformed, "
            f"peak RSS {rss:.0f} MB",
            flush=True,
        )


def seed_corpus() -> str:
    """A directory of scripts: for each seed, a handshake then each direction in one
    segment (offset 0, 1499 bytes)."""
    folder = tempfile.mkdtemp(prefix="fuzz_app_inspect-")
    whole = bytes([0x00, 0x00, 0x00, 0x05, 0xDB, 0x00])
    for i in range(len(SEEDS)):
        script = bytes([0x80 | i]) + bytes(8) + whole + bytes([0x01]) + whole[1:]
        Path(folder, f"seed-{i}").write_bytes(script)
    return folder


def main() -> None:
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        argv.append(seed_corpus())
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
