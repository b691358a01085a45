"""Flow offload in the kernel, in the lab: a TCP echo conversation client -> server:7 through
gw. Once the engine has seen the handshake and the first data (a copy: the kernel passes it),
the connection's packets go on in the kernel (a ct mark) and the queue sees no more of them;
`set offload off` keeps them all in the queue; a policy swap sends offloaded connections back
to the engine, which judges them by the new policy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labkit import ATTACKER, ROOT, SERVER, InlineLab, inline_lab, wait_until

POLICY = """
set default drop
drop    proto tcp flags /FSRPAU alert "NULL scan"
accept  state established
accept  proto tcp from 10.10.1.0/24 to 10.10.2.10 port 7
"""
STOP_RULE = 'drop    proto tcp to port 7 payload contains "STOP" alert "stop word"\n'

# The client: 200 echoes on one connection, then waits for the go file, then one more echo
# and a "STOP" message, reporting what came back.
CLIENT = r"""
import json, os, socket, sys, time
workdir, server = sys.argv[1], sys.argv[2]
s = socket.create_connection((server, 7), timeout=3)
def echo(msg):
    s.sendall(msg)
    got = b""
    try:
        while len(got) < len(msg):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        pass
    return got == msg
first = sum(echo(b"message %03d\n" % i) for i in range(200))
open(os.path.join(workdir, "phase1"), "w").close()
deadline = time.time() + 20
while not os.path.exists(os.path.join(workdir, "go")) and time.time() < deadline:
    time.sleep(0.05)
s.settimeout(1.5)
after = echo(b"still here\n")
stop = echo(b"STOP now\n")
print(json.dumps({"first": first, "after": after, "stop": stop}))
"""


def conversation(box: InlineLab, workdir: Path, between: object = None) -> dict:
    (workdir / "client.py").write_text(CLIENT)
    proc = box.lab.popen(
        "client",
        [sys.executable, str(workdir / "client.py"), str(workdir), SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: (workdir / "phase1").exists(), timeout=20)
        if callable(between):
            between()
        (workdir / "go").touch()
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return json.loads(out)


def queued(box: InlineLab) -> int:
    line = box.queue_line()
    assert line is not None
    return line["id_sequence"]


def test_offloaded_connection_skips_the_queue_and_comes_back_after_apply(tmp_path: Path) -> None:
    policy = tmp_path / "offload.rules"
    policy.write_text(POLICY)
    with inline_lab(tmp_path, "ofl") as box:
        box.start_daemon(policy)
        before = queued(box)
        marks: dict[str, object] = {}

        def swap() -> None:
            marks["phase1"] = queued(box) - before
            marks["offload"] = box.status()["offload"]  # before the swap resets the counters
            policy.write_text(STOP_RULE + POLICY)
            assert box.ipsctl("apply", str(policy)).returncode == 0

        result = conversation(box, tmp_path, swap)
        # 200 echoes = about 600 packets through gw; the queue saw the handshake and the first
        # exchange only
        assert result["first"] == 200
        assert marks["phase1"] <= 12, marks  # type: ignore[operator]
        offload = marks["offload"]
        assert offload["enabled"] and offload["flows"] >= 1, offload  # type: ignore[index]
        assert offload["kernel_packets"] >= 300, offload  # type: ignore[index]
        assert box.status()["offload"]["generation"] != offload["generation"]  # type: ignore[index]
        # after the swap the connection is the engine's again: still served, and the new
        # policy's rule drops the STOP message
        assert result["after"] is True
        assert result["stop"] is False
        alerts = [e for e in box.eve_events() if e["event_type"] == "alert"]
        assert any(a["alert"]["signature"] == "stop word" for a in alerts)


def test_offload_off_keeps_every_packet_in_the_queue(tmp_path: Path) -> None:
    policy = tmp_path / "no-offload.rules"
    policy.write_text("set offload off\n" + POLICY)
    with inline_lab(tmp_path, "ofn") as box:
        box.start_daemon(policy)
        before = queued(box)
        result = conversation(box, tmp_path)
        time.sleep(0.2)
        assert result["first"] == 200 and result["after"] is True
        assert queued(box) - before >= 400
        status = box.status()
        assert not status["offload"]["enabled"]
        assert status["offload"]["flows"] == 0 and status["offload"]["kernel_packets"] == 0


PING_POLICY = """
set default drop
accept  state established
accept  proto icmp type echo-request limit 20/s per src else drop
detect  icmpflood rate 200/s per src limit
"""


def test_a_ping_is_offloaded_and_a_flood_over_the_budget_still_reaches_the_detector(
    tmp_path: Path,
) -> None:
    """The kernel passes an offloaded ping's packets up to a tenth of the icmpflood rate per
    address (20/s here); what is over it goes back to the queue, where the detector sees it."""
    with inline_lab(tmp_path, "ofi") as box:
        box.start_daemon(PING_POLICY)
        before = queued(box)
        ping = box.run("client", ["ping", "-c", "40", "-i", "0.1", "-q", SERVER], timeout=20)
        assert " 0% packet loss" in ping.stdout, ping.stdout
        time.sleep(0.2)
        assert queued(box) - before <= 6  # the first request and reply, not the 80 packets
        offload = box.status()["offload"]
        assert offload["flows"] >= 1 and offload["kernel_packets"] >= 70, offload

        before = queued(box)
        box.run("attacker", ["hping3", "-1", "-c", "2000", "-i", "u500", SERVER], timeout=30)
        time.sleep(0.2)
        assert queued(box) - before >= 1500  # the flood's packets over 20/s were inspected
        alerts = [
            e
            for e in box.eve_events()
            if e["event_type"] == "alert" and e["alert"]["category"] == "icmpflood"
        ]
        assert alerts and alerts[0]["src_ip"] == ATTACKER, alerts[:1]
        assert box.status()["worker"]["verdicts"].get("drop", 0) >= 500  # limited to ~200/s


SHORT_CONNECTIONS = r"""
import socket, sys
for i in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 7), timeout=3)
    s.sendall(b"hello %d\n" % i)
    got = b""
    while len(got) < len(b"hello %d\n" % i):
        got += s.recv(100)
    s.close()
print("ok")
"""


def test_a_short_connection_costs_the_queue_two_packets(tmp_path: Path) -> None:
    """SYN and SYN+ACK reach the engine through the queue; the handshake's bare ACK passes in
    the kernel (the SYN+ACK's verdict allowed it), and so does the first data, whose copy
    reaches the engine over NFLOG: the engine saw every connection carry data and offloaded
    it. That shortcut is for flows the application layer does not read: with it on (the
    default) offload waits for the inspector, so this test turns it off."""
    with inline_lab(tmp_path, "ofh") as box:
        box.start_daemon("set app-layer off\n" + POLICY)
        before = queued(box)
        script = tmp_path / "short.py"
        script.write_text(SHORT_CONNECTIONS)
        out = box.run("client", [sys.executable, str(script), SERVER, "20"], timeout=30)
        assert out.stdout.strip() == "ok", out.stderr
        time.sleep(0.2)
        assert queued(box) - before == 40
        # the copies, seen (they may still be on their way to the worker: wait a little)
        assert wait_until(lambda: box.status()["offload"]["flows"] == 20, timeout=5)
        status = box.status()
        assert status["offload"]["copied"] == 20, status["offload"]
        assert status["worker"]["nfq_client"]["copies"]["received"] == 20
        # with `set offload off` each connection's every packet is queued (at least 7)
        box.stop_daemon()
        box.start_daemon("set app-layer off\nset offload off\n" + POLICY)
        before = queued(box)
        out = box.run("client", [sys.executable, str(script), SERVER, "20"], timeout=30)
        assert out.stdout.strip() == "ok", out.stderr
        time.sleep(0.2)
        assert queued(box) - before >= 140


def test_with_the_application_layer_a_connection_of_no_known_protocol_costs_three(
    tmp_path: Path,
) -> None:
    """With application parsing on (the default) the first data is queued for the inspector
    (not copied), and the handshake's bare ACK passes in the kernel (OFFLOAD_BARE_ACKS: it
    carries nothing to read); a first payload that no protocol the inspector knows can start
    ("hello N": not TLS, HTTP, SSH, nor a DNS header) names the flow unknown there, and the
    engine offloads it: SYN, SYN+ACK and the data, 3 packets a connection (4 while the ACK
    was queued too; 10 before the protocol was named this early: every packet up to the
    server's FIN)."""
    with inline_lab(tmp_path, "ofa") as box:
        box.start_daemon(POLICY)
        before = queued(box)
        script = tmp_path / "short.py"
        script.write_text(SHORT_CONNECTIONS)
        out = box.run("client", [sys.executable, str(script), SERVER, "20"], timeout=30)
        assert out.stdout.strip() == "ok", out.stderr
        time.sleep(0.2)
        assert queued(box) - before == 60
        status = box.status()
        assert status["offload"]["flows"] == 20, status["offload"]
        assert status["offload"]["copied"] == 0  # the data was queued, not copied
        assert status["offload"]["after_bare_acks"] == 20  # (its stamp cleared on the way)
        assert status["worker"]["app"]["protocols"].get("unknown") == 20


# 200 echoes, wait for the go file, 10 echoes (that bring the connection back to the engine
# after the apply), a pause of REOFFLOAD_AFTER and more, then 200 echoes
COMEBACK_CLIENT = r"""
import json, os, socket, sys, time
workdir, server, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.create_connection((server, 7), timeout=3)
def echo(msg):
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += s.recv(4096)
    return got == msg
first = sum(echo(b"one %03d\n" % i) for i in range(200))
open(os.path.join(workdir, "phase1"), "w").close()
deadline = time.time() + 20
while not os.path.exists(os.path.join(workdir, "go")) and time.time() < deadline:
    time.sleep(0.05)
back = sum(echo(b"back %03d\n" % i) for i in range(10))
time.sleep(pause)
open(os.path.join(workdir, "phase2"), "w").close()
time.sleep(0.3)
last = sum(echo(b"two %03d\n" % i) for i in range(200))
print(json.dumps({"first": first, "back": back, "last": last}))
"""


def test_after_an_apply_a_connection_is_judged_anew_then_offloaded_again(tmp_path: Path) -> None:
    from ips.engine.offload import REOFFLOAD_AFTER

    policy = tmp_path / "offload.rules"
    policy.write_text(POLICY)
    (tmp_path / "client.py").write_text(COMEBACK_CLIENT)
    with inline_lab(tmp_path, "ofb") as box:
        box.start_daemon(policy)
        proc = box.lab.popen(
            "client",
            [
                sys.executable,
                str(tmp_path / "client.py"),
                str(tmp_path),
                SERVER,
                str(REOFFLOAD_AFTER + 0.3),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_until(lambda: (tmp_path / "phase1").exists(), timeout=20)
            policy.write_text(POLICY + "# the same rules, a new generation\n")
            assert box.ipsctl("apply", str(policy)).returncode == 0
            (tmp_path / "go").touch()
            assert wait_until(lambda: (tmp_path / "phase2").exists(), timeout=20)
            before = queued(box)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert json.loads(out) == {"first": 200, "back": 10, "last": 200}
        # the 10 echoes after the apply went through the engine (and one re-offloaded the
        # connection); the last 200 (about 600 packets) went on in the kernel
        assert queued(box) - before <= 4
        assert box.status()["offload"]["kernel_packets"] >= 300


HOLD_GROUP = r"""
import sys, time
from ips.io.nflog import NflogClient
client = NflogClient(int(sys.argv[1]))
client.bind()
print("bound", flush=True)
time.sleep(30)
"""


def test_a_daemon_whose_copy_group_is_taken_does_not_start_and_names_it(tmp_path: Path) -> None:
    """Another listener on the copies' NFLOG group (ulogd, say) would get the copies and the
    engine none: the daemon refuses to start and says which group."""
    from ips.translate.nft import copy_group

    script = tmp_path / "hold.py"
    script.write_text(HOLD_GROUP)
    with inline_lab(tmp_path, "ofg") as box:
        holder = box.lab.popen(
            "gw",
            [sys.executable, str(script), str(copy_group(0))],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
            with pytest.raises(AssertionError, match=f"NFLOG group {copy_group(0)}.*ulogd"):
                box.start_daemon(POLICY)
        finally:
            holder.kill()
            holder.wait(5)
        box.start_daemon(POLICY)  # the group free again: it starts
        assert box.status()["offload"]["enabled"]
