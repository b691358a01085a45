"""Offload under the shipped gateway policy (issue 24, item 5), in the lab: an iperf3 upload
of 20 MiB from the client to the server's port 443 through gw. The policy's two `payload
contains` rules on the web ports read the first `payload-depth` bytes (1 MiB) of the
client's direction; past them the connection is offloaded, so the queue sees a bounded
number of its packets — counted, not timed — however long the transfer runs."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from labkit import ROOT, SERVER, InlineLab, inline_lab, wait_until

from ips.policy.model import DEFAULT_PAYLOAD_DEPTH

GATEWAY = ROOT / "policies" / "gateway.rules"
SIZE = 20 * 1024 * 1024
MSS = 1448  # the payload of a full segment on the lab's 1500-byte links, with timestamps


def queued(box: InlineLab) -> int:
    line = box.queue_line()
    assert line is not None
    return line["id_sequence"]


def upload(box: InlineLab, port: int) -> int:
    """iperf3 -n 20M from the client to SERVER:port; the bytes the client sent."""
    server = box.lab.popen(
        "server",
        ["iperf3", "-s", "-1", "-p", str(port), "-B", SERVER],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(
            lambda: f":{port} " in box.run("server", ["ss", "-Hltn"]).stdout, timeout=10
        )
        out = box.run(
            "client", ["iperf3", "-c", SERVER, "-p", str(port), "-n", "20M", "-J"], timeout=90
        )
        assert out.returncode == 0, out.stdout[-500:] + out.stderr
        return int(json.loads(out.stdout)["end"]["sum_sent"]["bytes"])
    finally:
        server.wait(10)


def test_an_upload_to_443_is_offloaded_after_the_payload_depth(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "odp") as box:
        box.start_daemon(GATEWAY)
        before = queued(box)
        sent = upload(box, 443)
        time.sleep(0.2)
        through_queue = queued(box) - before
        assert sent >= SIZE
        # The data connection's first MiB (about 725 full segments) and the server's ACKs of
        # it, what was in flight when the engine decided (the sender's window: the queue
        # holds it; measured 818-1,490 in all for 443 streams), the handshakes, and iperf3's
        # control connection (a few dozen packets, all queued: it never carries a MiB). The
        # 20 MiB are over 14,000 segments.
        depth_segments = DEFAULT_PAYLOAD_DEPTH // MSS + 1
        assert through_queue <= 3 * depth_segments + 100, through_queue
        assert through_queue * 5 < SIZE // MSS, through_queue
        offload = box.status()["offload"]
        assert offload["flows"] >= 1, offload
        # The kernel counts what it passed as it forwards it: GSO super-packets of up to
        # 64 KiB, so hundreds, not thousands.
        assert offload["kernel_packets"] >= SIZE // 65536, offload
        box.stop_daemon()  # ends the open flows: their records
        events = box.eve_events()
    print(f"queued {through_queue} packets for {sent} bytes; offload {offload}")
    # Per connection, from the flow records: what the engine saw itself (the totals are
    # conntrack's, `bypassed` what went past the engine in the kernel). In bytes: conntrack
    # counts the GSO super-packets the kernel forwards, so its packet counts are no measure.
    seen = {}
    for e in events:
        if e.get("event_type") == "flow" and e.get("dest_port") == 443:
            f = e["flow"]
            bypassed = f.get("bypassed", {}).get("bytes_toserver", 0)
            seen[e["src_port"]] = (f["bytes_toserver"] - bypassed, f["bytes_toserver"])
    print(f"per connection (bytes to the server the engine saw, all of them): {seen}")
    data = max(seen.values(), key=lambda v: v[1])
    assert data[1] >= SIZE // 2, seen  # the transfer (its last bytes may be cut by a reset)
    # The engine read the first MiB of the upload and a little more (what was in flight).
    assert DEFAULT_PAYLOAD_DEPTH <= data[0] <= 2 * DEFAULT_PAYLOAD_DEPTH, seen
