"""The own NFQUEUE client against the kernel, in a namespace lab."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from labkit import GATEWAY_LAB, ROOT, SERVER, need_root, unique_prefix

from ips.io import nfqnl
from ips.lab import netns

DROP_PORT = 8080


GATEWAY = f"""
import json, select, signal, struct, sys, time
from ips.io.nfqnl import NfqClient, NF_DROP
client = NfqClient(int(sys.argv[1]), fail_open=False, batch=True, recv_many=int(sys.argv[2]))
fd = client.bind()
dropped = seen = 0
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
def handler(pkt):
    global dropped, seen
    seen += 1
    data = pkt.payload
    ihl = (data[0] & 15) * 4
    if data[9] == 6 and struct.unpack_from("!H", data, ihl + 2)[0] == {DROP_PORT}:
        client.drop(pkt.id)
        dropped += 1
        return True
    return None
print("ready", flush=True)
deadline = time.monotonic() + 30
while not stop and time.monotonic() < deadline:
    if select.select([fd], [], [], 0.1)[0]:
        client.drain(handler)
client.close()
print(json.dumps(dict(seen=seen, dropped=dropped, received=client.received,
                      malformed=client.malformed, kernel_errors=client.kernel_errors,
                      enobufs=client.enobufs)), flush=True)
"""


def _queue_line(lab: netns.Lab, queue: int) -> list[int] | None:
    text = lab.exec(
        "gw",
        ["cat", "/proc/net/netfilter/nfnetlink_queue"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    for line in text.splitlines():
        fields = [int(x) for x in line.split()]
        if fields[0] == queue:
            return fields
    return None


@pytest.mark.parametrize("recv_many", [0, 32])
def test_our_client_inline_accepts_traffic_and_drops_a_chosen_port(recv_many: int) -> None:
    need_root()
    prefix = unique_prefix("nq")
    lab = netns.up(GATEWAY_LAB, prefix=prefix)
    queue = 7
    rule = ["FORWARD", "-j", "NFQUEUE", "--queue-num", str(queue)]  # no bypass: fail-closed
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    gw = None
    inserted = False
    try:
        argv = [sys.executable, "-c", GATEWAY, str(queue), str(recv_many)]
        gw = lab.popen(
            "gw", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        assert gw.stdout is not None
        assert gw.stdout.readline().strip() == "ready", gw.stderr.read() if gw.stderr else ""
        line = _queue_line(lab, queue)
        assert line is not None and line[3] == 2  # NFQNL_COPY_PACKET
        assert line[4] == nfqnl.DEFAULT_COPY_RANGE
        lab.exec("gw", ["iptables", "-I", *rule], check=True, timeout=15)
        inserted = True

        def curl(port: int) -> subprocess.CompletedProcess[str]:
            return lab.exec(
                "client",
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-m",
                    "2",
                    f"http://{SERVER}:{port}/",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )

        ok = curl(80)
        assert (ok.returncode, ok.stdout) == (0, "200")
        echo = lab.exec(
            "client",
            [
                sys.executable,
                "-c",
                "import socket; s = socket.socket(socket.AF_INET, "
                "socket.SOCK_DGRAM); s.settimeout(2); "
                f"s.sendto(b'ping-nfqnl', ('{SERVER}', 53)); print(s.recv(100).decode())",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert echo.stdout.strip() == "ping-nfqnl", echo.stderr
        blocked = curl(DROP_PORT)
        assert blocked.returncode == 28 and blocked.stdout == "000"  # curl: timed out
        after = _queue_line(lab, queue)
        assert after is not None and after[7] >= 10  # the traffic did go through our queue
        assert after[5] == after[6] == 0  # nothing dropped by the kernel for want of us
    finally:
        if gw is not None and gw.poll() is None:
            gw.send_signal(signal.SIGTERM)
        out = gw.communicate(timeout=15)[0] if gw is not None else ""
        if inserted:
            lab.exec("gw", ["iptables", "-D", *rule], timeout=15)
        netns.down(prefix)
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["dropped"] >= 2  # curl's SYN and its retransmission to port 8080
    assert stats["seen"] == stats["received"] >= 10
    assert stats["malformed"] == stats["kernel_errors"] == stats["enobufs"] == 0


def test_a_second_bind_of_a_bound_queue_is_refused_with_the_kernels_errno() -> None:
    need_root()
    prefix = unique_prefix("nq")
    lab = netns.up(GATEWAY_LAB, prefix=prefix)
    code = (
        "import errno\n"
        "from ips.io.nfqnl import NfqClient, NfqError\n"
        "a = NfqClient(3); a.bind()\n"
        "try:\n    NfqClient(3).bind()\n"
        "except NfqError as e:\n    print(errno.errorcode[e.errno])\n"
        "a.close()\n"
    )
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        res = lab.exec(
            "gw",
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=15,
            env=env,
            cwd=ROOT,
        )
    finally:
        netns.down(prefix)
    # another socket owns the queue: EPERM (the kernel checks the owner before EBUSY)
    assert res.stdout.strip() == "EPERM", res.stderr
