"""The NFLOG client reads the copies a real nft log rule sends, in a network namespace."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

from labkit import ROOT, need_root, unique_prefix

from ips.lab.netns import netns_argv

GROUP = 4242


SNAPLEN = 256


RULES = f"""
table inet nflogtest {{
    chain out {{
        type filter hook output priority 0; policy accept;
        udp dport 9999 log group {GROUP} snaplen {SNAPLEN}
    }}
}}
"""


IN_NAMESPACE = f"""
import errno, json, select, socket, time
from ips.io import nflog
from ips.io.nflog import NflogClient, NflogError

def refused(bind):
    try:
        bind()
        return "accepted"
    except NflogError as exc:
        return errno.errorcode[exc.errno]

def read(client, fd, count):
    got = []
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            client.drain(got.append)
    return got

def free_again():
    c = NflogClient({GROUP})
    c.bind()
    c.close()

client = NflogClient({GROUP})
fd = client.bind()
other = refused(NflogClient({GROUP}).bind)  # another socket
again = refused(lambda: client._request(command=nflog.NFULNL_CFG_CMD_BIND))  # the same one
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3):
    s.sendto(b"copy %d" % i, ("127.0.0.1", 9999))
s.sendto(b"not logged", ("127.0.0.1", 9998))
got = read(client, fd, 3)
s.sendto(b"L" * 1000, ("127.0.0.1", 9999))  # longer than the rule's snaplen
got += read(client, fd, 1)
counters = [client.received, client.malformed, client.enobufs, client.handler_errors]
client.close()
after_close = refused(free_again)
print(json.dumps({{"other": other, "again": again, "after_close": after_close,
                  "counters": counters,
                  "packets": [[p.payload.hex(), p.indev, p.outdev, p.mark, p.hw_protocol,
                               p.hook, p.prefix] for p in got]}}))
"""


def test_the_client_reads_the_copies_an_nft_log_rule_sends() -> None:
    need_root()
    ns = unique_prefix("nfl") + "nflog"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=15)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=15)
        subprocess.run(
            netns_argv(ns, ["nft", "-f", "-"]), input=RULES, text=True, check=True, timeout=15
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        res = subprocess.run(
            netns_argv(ns, [sys.executable, "-c", IN_NAMESPACE]),
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            cwd=ROOT,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=15)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    # the kernel checks the group's owner before the command: another socket gets EPERM, the
    # owner binding it again EBUSY; after close (UNBIND) the group is free
    assert (out["other"], out["again"], out["after_close"]) == ("EPERM", "EBUSY", "accepted")
    assert out["counters"] == [4, 0, 0, 0]
    packets = out["packets"]
    assert len(packets) == 4  # three, then the long one; nothing for port 9998
    for i, (payload_hex, indev, outdev, mark, hw_protocol, hook, prefix) in enumerate(packets):
        payload = bytes.fromhex(payload_hex)
        assert payload[0] >> 4 == 4 and payload[9] == 17  # IPv4, UDP
        ihl = (payload[0] & 15) * 4
        assert struct.unpack_from("!H", payload, ihl + 2)[0] == 9999
        # output hook (NF_INET_LOCAL_OUT) on lo (ifindex 1), no mark, the rule's "" prefix
        assert (indev, outdev, mark, hw_protocol, hook, prefix) == (0, 1, 0, 0x0800, 3, "")
        if i < 3:
            assert payload.endswith(b"copy %d" % i) and len(payload) == 20 + 8 + 6
        else:
            assert len(payload) == SNAPLEN and payload.endswith(b"L" * (SNAPLEN - 28))
