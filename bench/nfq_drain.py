"""The NFQUEUE worker's loop in-process, compiled (ips/io/_nfqdrain.pyx) against Python
(NfqClient.drain + QueueWorker._on_queued): no root, no lab.

A datagram socket pair plays the kernel: one end is the worker's "netlink socket", the other
queues NFQNL_MSG_PACKET messages (ips/io/nfqnl.py `packet_message`) and reads the verdicts.
The traffic is the bench's case: one established UDP flow (a request and its answer first),
then bursts of its 64-byte requests, each burst drained at once. Printed: the worker's CPU
time per packet (process time over the drain only; the sending is outside it), the best of
--rounds, for each loop, and how many packets the compiled path decided. The policy is
bench/lab.py's bench policy (policies/gateway.rules adapted), `set offload off`, with its
`detect` lines or without (--no-detect).

    python bench/nfq_drain.py [--burst 4000] [--rounds 5] [--no-detect]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import lab as benchlab  # noqa: E402  (bench/lab.py: the bench policy)

from ips.core.build import build_packet  # noqa: E402
from ips.core.packet import PROTO_UDP  # noqa: E402
from ips.engine import Engine  # noqa: E402
from ips.io import nfqueue  # noqa: E402
from ips.io.nfqnl import NfqClient, QueuedPacket, packet_message  # noqa: E402
from ips.io.nfqueue import QueueWorker  # noqa: E402
from ips.policy.resolve import load_policy_text  # noqa: E402

QUEUE = 0
CLIENT, SERVER = "10.10.1.20", "10.10.2.10"  # the lab's LAN and DMZ (bench policy: port 5201)
MAC = bytes.fromhex("020000000001")


def policy_text(detect: bool) -> str:
    text = benchlab.with_offload(benchlab.bench_policy(benchlab.GATEWAY_RULES.read_text()), False)
    if not detect:
        text = "".join(ln for ln in text.splitlines(True) if not ln.startswith("detect"))
    return text


def worker_on_socket_pair(
    engine: Engine, compiled: bool, clock: Callable[[], float]
) -> tuple[QueueWorker, socket.socket, socket.socket]:
    """A QueueWorker whose "netlink socket" is one end of a datagram socket pair, with the
    compiled loop or the Python one; and the two ends (the worker's, the "kernel's")."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (ours, kernel):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    worker = QueueWorker(QUEUE, engine, client="own", read_copies=False, clock=clock)
    client = NfqClient(QUEUE)
    client._sock = ours
    worker._client = client
    worker._compiled = None
    if compiled:
        if nfqueue._drain_module is None:
            raise SystemExit("the compiled drain is not built (or IPSCTL_PURE/IPSCTL_PY_DRAIN)")
        worker._compiled = nfqueue._drain_module.CompiledDrain(client, worker)
    return worker, ours, kernel


def measure(compiled: bool, text: str, burst: int, rounds: int) -> tuple[float, int]:
    """CPU µs per packet (best round) and the packets the compiled path decided."""
    engine = Engine(load_policy_text(text))
    worker, ours, kernel = worker_on_socket_pair(engine, compiled, lambda: 1000.0)
    request = build_packet(PROTO_UDP, CLIENT, SERVER, 40000, 5201, payload=b"x" * 36)
    answer = build_packet(PROTO_UDP, SERVER, CLIENT, 5201, 40000, payload=b"y")
    kernel.send(packet_message(QUEUE, QueuedPacket(1, request, 1, 2), hwaddr=MAC))
    kernel.send(packet_message(QUEUE, QueuedPacket(2, answer, 2, 1)))
    worker.process_pending()
    next_id = 3
    best = float("inf")
    try:
        for _ in range(rounds):
            for _ in range(burst):
                pkt = QueuedPacket(next_id, request, 1, 2)
                kernel.send(packet_message(QUEUE, pkt, hwaddr=MAC))
                next_id += 1
            start = time.process_time()
            worker.process_pending()
            best = min(best, (time.process_time() - start) / burst)
            while True:
                try:
                    kernel.recv(1 << 16)
                except BlockingIOError:
                    break
    finally:
        ours.close()
        kernel.close()
    decided = worker._compiled.compiled_packets if worker._compiled is not None else 0
    return best * 1e6, decided


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--burst", type=int, default=4000, help="packets per drain (default 4000)")
    ap.add_argument("--rounds", type=int, default=5, help="drains; the best is kept (default 5)")
    ap.add_argument("--no-detect", action="store_true", help="the policy without `detect` lines")
    args = ap.parse_args(argv)
    if args.burst < 1 or args.rounds < 1:
        ap.error("--burst and --rounds must be >= 1")
    text = policy_text(not args.no_detect)
    py, _ = measure(False, text, args.burst, args.rounds)
    compiled, decided = measure(True, text, args.burst, args.rounds)
    total = args.burst * args.rounds
    print(f"policy: bench policy, offload off, {'no ' if args.no_detect else ''}detectors")
    print(f"python loop    {py:6.2f} us/packet")
    print(f"compiled loop  {compiled:6.2f} us/packet  ({decided}/{total} decided by the fast path)")
    print(f"compiled / python  {compiled / py:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
