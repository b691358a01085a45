"""A ping's cost in the queue worker, in process: hot, and after other memory was touched.

A datagram socket pair plays the kernel (as bench/nfq_drain.py does): for each ping, the
request and its reply (ICMP echo of one flow, queued together, as the kernel queues the reply
within the request's verdict on one host) are sent to the worker's socket and drained by
`QueueWorker.process_pending`; the wall time of that call is kept. "flushed": before each
ping, 64 MB of other memory is touched (a byte a page), as the rest of the machine does
between two pings 10 ms apart. The policy is bench/lab.py's bench policy, `set offload off`.
Printed: the median over --pings, for the compiled loop and the Python one, and how many
packets the compiled path decided.

    python bench/ping_cold.py [--pings 200]
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import lab as benchlab  # noqa: E402  (bench/lab.py: the bench policy)
from nfq_drain import worker_on_socket_pair  # noqa: E402  (bench/nfq_drain.py)

from ips.engine import Engine  # noqa: E402
from ips.io.nfqnl import QueuedPacket, packet_message  # noqa: E402
from ips.policy.resolve import load_policy_text  # noqa: E402

CLIENT, SERVER = "10.10.1.20", "10.10.2.10"
MAC = b"\x02\x00\x00\x00\x00\x01"
OTHER_MEMORY = bytearray(64 << 20)


def touch_other_memory() -> None:
    for i in range(0, len(OTHER_MEMORY), 4096):
        OTHER_MEMORY[i] = (OTHER_MEMORY[i] + 1) & 0xFF


def echo(src: str, dst: str, icmp_type: int, seq: int) -> bytes:
    """An IPv4 ICMP echo (request 8, reply 0) of identifier 77, as ping sends it."""
    icmp = struct.pack("!BBHHH", icmp_type, 0, 0, 77, seq) + b"p" * 56
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(icmp),
        seq,
        0,
        64,
        1,
        0,
        ipaddress.ip_address(src).packed,
        ipaddress.ip_address(dst).packed,
    )
    return header + icmp


def measure(compiled: bool, flushed: bool, pings: int) -> tuple[float, int]:
    """Median µs per ping (two packets drained), and the packets the compiled path decided."""
    text = benchlab.with_offload(benchlab.bench_policy(benchlab.GATEWAY_RULES.read_text()), False)
    engine = Engine(load_policy_text(text))
    worker, ours, kernel = worker_on_socket_pair(engine, compiled, time.time)
    times = []
    packet_id = 1
    try:
        for seq in range(pings + 5):
            if flushed:
                touch_other_memory()
            request = packet_message(
                0, QueuedPacket(packet_id, echo(CLIENT, SERVER, 8, seq), 1, 2), hwaddr=MAC
            )
            reply = packet_message(
                0, QueuedPacket(packet_id + 1, echo(SERVER, CLIENT, 0, seq), 2, 1)
            )
            packet_id += 2
            kernel.send(request)
            kernel.send(reply)
            start = time.perf_counter()
            worker.process_pending()
            if seq >= 5:  # the flow and its buckets made first
                times.append((time.perf_counter() - start) * 1e6)
            while True:
                try:
                    kernel.recv(1 << 16)
                except BlockingIOError:
                    break
            time.sleep(0.002)
    finally:
        ours.close()
        kernel.close()
    fast = engine._fast_path.fast_packets if engine._fast_path is not None else 0
    return statistics.median(times), fast


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pings", type=int, default=200)
    args = ap.parse_args(argv)
    for compiled in (True, False):
        for flushed in (False, True):
            us, fast = measure(compiled, flushed, args.pings)
            loop = "compiled loop" if compiled else "Python loop  "
            state = "flushed" if flushed else "hot    "
            print(f"{loop} {state} {us:6.1f} us per ping (request + reply), fast path: {fast}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
