"""The accept-only NFQUEUE loop: the floor of any Python inline inspector (bench/lab.py).

    accept_loop.py --queue N [--fail-open]

Binds queue N with netfilterqueue exactly as ips/io/nfqueue.py does (same queue length, the
library's default copy range, the same select + non-blocking run loop, the fail-open flag
when asked for) and accepts every packet without looking at it. Whatever ipsctl does on top
of this is the cost of inspection. Prints `ready` once bound; on SIGTERM prints one JSON line
with the packets it accepted and exits. It does not divert anything itself: the caller adds
(and removes) `iptables -I FORWARD -j NFQUEUE --queue-num N` in the namespace it runs in.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys

from ips.io.adapter import wait_readable
from ips.io.nfqueue import DEFAULT_MAX_LEN, NFQA_CFG_F_FAIL_OPEN, queue_config_message


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queue", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN)
    ap.add_argument("--fail-open", action="store_true", help="set the queue's fail-open flag")
    args = ap.parse_args(argv)

    from netfilterqueue import NetfilterQueue

    count = 0
    stop = False

    def on_packet(pkt: object) -> None:
        nonlocal count
        pkt.accept()  # type: ignore[attr-defined]
        count += 1

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    nfq = NetfilterQueue()
    nfq.bind(args.queue, on_packet, max_len=args.max_len)
    fd = nfq.get_fd()
    flags = NFQA_CFG_F_FAIL_OPEN if args.fail_open else 0
    os.write(fd, queue_config_message(args.queue, flags, NFQA_CFG_F_FAIL_OPEN))
    os.set_blocking(fd, False)
    print("ready", flush=True)
    try:
        while not stop:
            if not wait_readable([fd], 0.2):
                continue
            try:
                nfq.run(block=False)
            except OSError as exc:
                # ENOBUFS: the kernel had more for us than the socket held (counted by the
                # kernel as user_dropped); the loop goes on, as ipsctl's does.
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
                    raise
    finally:
        nfq.unbind()
    print(json.dumps({"accepted": count}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
