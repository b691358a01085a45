"""Blocks in a namespace lab: the kernel drops a blocked source before the queue, blocks
expire and survive restarts, and only root may change them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from labkit import ATTACKER, CLIENT, GATEWAY_RULES, SERVER, InlineLab, inline_lab, wait_until

from ips import control
from ips.daemon import supervisor
from ips.daemon.socket_server import ControlServer
from ips.engine import Engine

GW = "10.10.1.1"  # the gateway's own LAN address


def blocks_json(box: InlineLab) -> list[dict[str, Any]]:
    out = box.ipsctl("blocks", "list", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["blocks"]


def listed(box: InlineLab) -> dict[str, dict[str, Any]]:
    return {b["addr"]: b for b in blocks_json(box)}


def attacker_gets_through(box: InlineLab) -> bool:
    return box.curl("attacker", f"http://{SERVER}/", max_time=1).returncode == 0


def engine_has_blocks() -> bool:
    return all(hasattr(Engine, name) for name in ("block", "unblock", "adopt_block"))


def test_manual_block_is_dropped_in_the_kernel_before_the_queue(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "bkm") as box:
        box.start_daemon(GATEWAY_RULES)
        assert attacker_gets_through(box)
        out = box.ipsctl("blocks", "add", ATTACKER, "--ttl", "10m", "--reason", "lab test")
        assert out.returncode == 0, out.stderr
        assert f"blocked {ATTACKER}" in out.stdout
        assert ATTACKER in box.kernel_blocks()
        before_queue, before_drops = box.queue_line(), box.block_drops()
        assert before_queue is not None
        assert not attacker_gets_through(box)  # SYNs dropped…
        after = box.queue_line()
        assert after is not None
        assert after["id_sequence"] == before_queue["id_sequence"]  # …before the queue
        assert box.block_drops() > before_drops
        assert box.curl("client", f"http://{SERVER}/").returncode == 0  # the others pass
        # listed, with the time left
        row = listed(box)[ATTACKER]
        assert row["table"] == "banned" and row["timeout"] == 600
        assert 580 <= row["expires_in"] <= 600
        assert (row["detector"], row["offense"], row["reason"]) == ("manual", 0, "lab test")
        text = box.ipsctl("blocks", "list").stdout
        assert ATTACKER in text and "lab test" in text and "manual" in text
        # the gateway's own address: refused (never blocked), unless forced
        refused = box.ipsctl("blocks", "add", GW)
        assert refused.returncode == 1 and "never blocked" in refused.stderr
        assert GW not in box.kernel_blocks()
        status = box.status()
        assert f"{GW}/32" in status["never_block"]
        assert status["blocks"]["active"] == 1 and status["blocks"]["added_manually"] == 1
        assert status["blocks"]["kernel_drops"] > 0 and status["blocks"]["kernel_errors"] == 0
        assert "blocks   1 active" in box.ipsctl("status").stdout
        # bad input
        assert box.ipsctl("blocks", "add", "10.10.1.300").returncode == 1
        assert box.ipsctl("blocks", "add", ATTACKER, "--ttl", "soon").returncode == 2
        # del: traffic flows again
        out = box.ipsctl("blocks", "del", ATTACKER)
        assert out.returncode == 0, out.stderr
        assert ATTACKER not in box.kernel_blocks() and attacker_gets_through(box)
        again = box.ipsctl("blocks", "del", ATTACKER)
        assert again.returncode == 1 and "not blocked" in again.stderr
        # flush: both families at once
        for addr in (ATTACKER, "fd00:10:1::66", "10.10.1.99"):
            assert box.ipsctl("blocks", "add", addr, "--ttl", "1h").returncode == 0
        assert set(listed(box)) == {ATTACKER, "fd00:10:1::66", "10.10.1.99"}
        assert box.kernel_blocks(6) == {"fd00:10:1::66"}
        out = box.ipsctl("blocks", "flush", "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["removed"] == 3
        assert (
            blocks_json(box) == []
            and box.kernel_blocks() == set()
            and box.kernel_blocks(6) == set()
        )
        assert attacker_gets_through(box)
        assert box.ipsctl("blocks", "list").stdout.strip() == "no blocks"
        if engine_has_blocks():  # every manual block and unblock is an EVE event too

            def eve_of_attacker() -> list[str]:
                return [
                    e["event_type"]
                    for e in box.eve_events()
                    # blocks and unblocks only: the attacker's probes are flows and, since the
                    # application layer is wired, `http` events too
                    if e.get("src_ip") == ATTACKER and e["event_type"].startswith("ipsctl_")
                ]

            # add, del, add, flush
            want = ["ipsctl_block", "ipsctl_unblock", "ipsctl_block", "ipsctl_unblock"]
            assert wait_until(lambda: eve_of_attacker() == want, timeout=5), eve_of_attacker()
            first = next(e for e in box.eve_events() if e["event_type"] == "ipsctl_block")
            assert first["ipsctl_block"]["detector"] == "manual"
            assert first["ipsctl_block"]["reason"] == "lab test"
            assert first["ipsctl_block"]["ttl"] == 600
            reasons = [
                e["ipsctl_unblock"]["reason"]
                for e in box.eve_events()
                if e["event_type"] == "ipsctl_unblock"
            ]
            assert reasons[:1] == ["manual"] and "flush" in reasons


def test_blocks_expire_in_the_kernel_and_survive_restarts(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "bkr") as box:
        box.start_daemon(GATEWAY_RULES)
        out = box.ipsctl("blocks", "add", ATTACKER, "--ttl", "10m", "--reason", "r1")
        assert out.returncode == 0, out.stderr
        assert box.ipsctl("blocks", "add", "10.10.1.77", "--ttl", "2s").returncode == 0
        assert not attacker_gets_through(box)
        # SIGKILL: the table stays, the kernel keeps dropping, and expires blocks by itself
        box.kill_daemon(signal.SIGKILL)
        assert wait_until(lambda: box.queue_line() is None, timeout=5)  # nobody on the queue
        assert not attacker_gets_through(box)  # fail-open bypass, but blocked in nft first
        assert wait_until(lambda: "10.10.1.77" not in box.kernel_blocks(), timeout=6)
        assert ATTACKER in box.kernel_blocks()
        # the next daemon keeps them and adopts them
        box.start_daemon(GATEWAY_RULES)
        row = listed(box)[ATTACKER]
        assert row["reason"] == "r1" and row["timeout"] == 600 and row["expires_in"] <= 600
        assert "10.10.1.77" not in listed(box)
        assert not attacker_gets_through(box)
        status = box.status()
        if engine_has_blocks():
            assert status["blocks"]["adopted"] == 1 and status["blocks"]["in_engine"] == 1
        # SIGTERM: our table is removed (nothing of ipsctl filters while it is stopped), the
        # blocks are saved next to the socket and come back at the next start
        left = row["expires_in"]
        box.stop_daemon()
        assert "ipsctl" not in box.gw_text(["nft", "list", "tables"])
        saved = json.loads((tmp_path / "blocks.json").read_text())
        assert [b["addr"] for b in saved["blocks"]] == [ATTACKER]
        assert attacker_gets_through(box)
        box.start_daemon(GATEWAY_RULES)
        assert not (tmp_path / "blocks.json").exists()  # consumed
        row = listed(box)[ATTACKER]
        assert row["reason"] == "r1" and row["timeout"] == 600 and row["expires_in"] <= left
        assert not attacker_gets_through(box)
        status = box.status()
        assert status["blocks"]["restored"] == 1
        if engine_has_blocks():
            assert status["blocks"]["adopted"] == 1


SOCKET_CLIENT = """
import json, os, socket, sys
os.setgid(65534); os.setuid(65534)  # nobody
out = []
for op in ({"op": "blocks_list"}, {"op": "status"},
           {"op": "blocks_add", "addr": sys.argv[2]}, {"op": "blocks_del", "addr": sys.argv[2]},
           {"op": "blocks_flush"}):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(json.dumps(op).encode() + b"\\n")
    data = b""
    while not data.endswith(b"\\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    reply = json.loads(data)
    out.append([reply.get("ok"), reply.get("error", "")])
print(json.dumps(out))
"""


def test_only_root_may_change_blocks(tmp_path: Path) -> None:
    # a socket nobody can reach: in a directory of its own, world-accessible for this test
    sock_dir = Path(tempfile.mkdtemp(prefix="ipsctl-bkp-"))
    try:
        with inline_lab(tmp_path, "bkp") as box:
            box.socket = str(sock_dir / "ipsctl.sock")
            box.start_daemon(GATEWAY_RULES)
            assert box.ipsctl("blocks", "add", ATTACKER, "--ttl", "10m").returncode == 0
            os.chmod(sock_dir, 0o755)
            os.chmod(box.socket, 0o666)
            done = subprocess.run(
                [sys.executable, "-c", SOCKET_CLIENT, box.socket, CLIENT],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            (lst, status, add, delete, flush) = json.loads(done.stdout)
            assert lst == [True, ""] and status == [True, ""]  # read-only: allowed
            for refused in (add, delete, flush):
                assert refused[0] is False and "needs root (peer uid 65534)" in refused[1]
            assert set(listed(box)) == {ATTACKER}  # nothing changed
    finally:
        subprocess.run(["rm", "-rf", str(sock_dir)], timeout=10)


def test_so_peercred_gives_the_uid_of_the_client_and_non_root_is_refused() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (to become another user)")
    server = object.__new__(supervisor.Daemon)  # only _dispatch: no kernel, no worker
    server.blocks_list = lambda: {"ok": True, "blocks": []}  # type: ignore[method-assign]
    server.blocks_add = lambda *a: pytest.fail("reached blocks_add")  # type: ignore[method-assign]
    peers: list[int] = []

    def dispatch(request: dict[str, Any], uid: int) -> dict[str, Any]:
        peers.append(uid)  # the uid the server took from SO_PEERCRED
        return server._dispatch(request, uid)

    # SO_PEERCRED gives the credentials of connect() time: the client connects once it is
    # nobody, to a listener in the abstract namespace (no file, no permissions to arrange)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0ipsctl-test-{os.getpid()}-{os.urandom(4).hex()}")
    control_server = ControlServer(listener, dispatch)
    control_server.start()  # reads the request, answers, closes
    pid = os.fork()
    if pid == 0:  # the client: nobody
        try:
            os.setgid(65534)
            os.setuid(65534)
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(10)
            c.connect(listener.getsockname())
            c.sendall(b'{"op": "blocks_add", "addr": "192.0.2.1"}\n')
            reply = json.loads(control.read_line(c))
            os._exit(0 if "needs root (peer uid 65534)" in reply["error"] else 3)
        finally:
            os._exit(4)
    try:
        _, code = os.waitpid(pid, 0)
    finally:
        control_server.close()
    assert os.waitstatus_to_exitcode(code) == 0
    assert peers == [65534]
    assert server._dispatch({"op": "blocks_list"}, 65534)["ok"] is True
    reply = server._dispatch({"op": "blocks_flush"}, 1000)
    assert reply == {"ok": False, "error": "'blocks_flush' needs root (peer uid 1000)"}
