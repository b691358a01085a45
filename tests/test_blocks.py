"""Blocks: `ipsctl blocks list|add|del|flush`, drops in the kernel before the queue, expiry in
the kernel, blocks across daemon restarts (SIGKILL and SIGTERM), never-block addresses, and who
may change blocks (root only, by SO_PEERCRED).

The lab tests run ipsctl inline on the gateway of their own lab (labs/gateway.yaml, own
namespace prefix) and send traffic only between the lab's hosts, bounded in time.
"""

from __future__ import annotations

import inspect
import ipaddress
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
from ips.daemon import stats, supervisor
from ips.daemon.worker import Worker, make_engine
from ips.engine import Engine
from ips.policy.resolve import load_policy_text

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


# ---- in the lab --------------------------------------------------------------------------------


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
                return [e["event_type"] for e in box.eve_events()
                        if e.get("src_ip") == ATTACKER and e["event_type"] != "flow"]  # fmt: skip

            # add, del, add, flush
            want = ["ipsctl_block", "ipsctl_unblock", "ipsctl_block", "ipsctl_unblock"]
            assert wait_until(lambda: eve_of_attacker() == want, timeout=5), eve_of_attacker()
            first = next(e for e in box.eve_events() if e["event_type"] == "ipsctl_block")
            assert first["ipsctl_block"]["detector"] == "manual"
            assert first["ipsctl_block"]["reason"] == "lab test"
            assert first["ipsctl_block"]["ttl"] == 600
            reasons = [e["ipsctl_unblock"]["reason"] for e in box.eve_events()
                       if e["event_type"] == "ipsctl_unblock"]  # fmt: skip
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
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            (lst, status, add, delete, flush) = json.loads(done.stdout)
            assert lst == [True, ""] and status == [True, ""]  # read-only: allowed
            for refused in (add, delete, flush):
                assert refused[0] is False and "needs root (peer uid 65534)" in refused[1]
            assert set(listed(box)) == {ATTACKER}  # nothing changed
    finally:
        subprocess.run(["rm", "-rf", str(sock_dir)], timeout=10)


# ---- units -------------------------------------------------------------------------------------


def test_so_peercred_gives_the_uid_of_the_client_and_non_root_is_refused() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (to become another user)")
    server = object.__new__(supervisor.Daemon)  # only _handle/_dispatch: no kernel, no worker
    server.blocks_list = lambda: {"ok": True, "blocks": []}  # type: ignore[method-assign]
    server.blocks_add = lambda *a: pytest.fail("reached blocks_add")  # type: ignore[method-assign]
    # SO_PEERCRED gives the credentials of connect() time: the client connects once it is
    # nobody, to a listener in the abstract namespace (no file, no permissions to arrange)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0ipsctl-test-{os.getpid()}-{os.urandom(4).hex()}")
    listener.listen(1)
    listener.settimeout(10)
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
        conn, _ = listener.accept()
        assert control.peer_uid(conn) == 65534
        server._handle(conn)  # reads the request, answers, closes
    finally:
        listener.close()
        _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0
    assert server._dispatch({"op": "blocks_list"}, 65534)["ok"] is True
    reply = server._dispatch({"op": "blocks_flush"}, 1000)
    assert reply == {"ok": False, "error": "'blocks_flush' needs root (peer uid 1000)"}


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.tables: dict[str, Any] = {}

    def block(self, addr: bytes, now: float, ttl: float | None, reason: str = "manual") -> Any:
        self.calls.append(("block", addr, now, ttl, reason))
        if addr == ipaddress.ip_address(GW).packed:
            return None  # never blocked
        return type("Block", (), {"addr": addr, "detector": "manual", "offense": 3})()

    def unblock(self, addr: bytes, now: float, reason: str = "manual") -> Any:
        self.calls.append(("unblock", addr, now, reason))
        return type("Unblock", (), {"addr": addr, "reason": reason})()


class FakeWorker:
    blocks = None

    def __init__(self) -> None:
        self.events: list[object] = []
        self.on_events = self.events.extend


def test_manual_operations_reach_the_engine_and_the_eve_log_not_the_kernel_again() -> None:
    engine, worker = FakeEngine(), FakeWorker()
    a = ipaddress.ip_address(ATTACKER).packed
    msg = {"op": "block", "addr": ATTACKER, "ttl": 60.0, "reason": "why", "time": 5.0}
    reply = Worker(engine, worker).command(msg)  # type: ignore[arg-type]
    assert reply == {"ok": True, "engine": True, "count": 1, "detector": "manual", "offense": 3}
    assert engine.calls == [("block", a, 5.0, 60.0, "why")]
    assert [type(e).__name__ for e in worker.events] == ["Block"]
    refused = Worker(engine, worker).command({**msg, "addr": GW})  # type: ignore[arg-type]
    assert refused["engine"] is False
    reply = Worker(engine, worker).command({"op": "unblock", "addr": ATTACKER, "time": 6.0})  # type: ignore[arg-type]
    assert reply["count"] == 1 and engine.calls[-1] == ("unblock", a, 6.0, "manual")
    engine.tables["banned"] = type("T", (), {"members": {a: 9.0, b"\x0a\x00\x00\x01": 9.0}})()
    reply = Worker(engine, worker).command({"op": "unblock_all", "reason": "flush"})  # type: ignore[arg-type]
    assert reply["count"] == 2 and len(worker.events) == 4
    # an engine without blocks (before the detectors): answered, nothing told
    plain = Worker(object(), worker).command(msg)  # type: ignore[arg-type]
    assert plain == {"ok": True, "engine": False, "count": 0}


def test_a_late_answer_of_the_worker_is_not_taken_for_the_next_one() -> None:
    import multiprocessing as mp
    import threading
    import time

    handle = object.__new__(supervisor.WorkerHandle)
    handle.conn, child = mp.Pipe()
    handle.lock = threading.Lock()
    handle._ids = iter(range(1, 100))  # type: ignore[assignment]

    def slow_worker() -> None:
        first = child.recv()
        time.sleep(0.3)  # answers the first request after its requester gave up
        child.send({"ok": True, "answer": "first", "id": first["id"]})
        second = child.recv()
        child.send({"ok": True, "answer": "second", "id": second["id"]})

    t = threading.Thread(target=slow_worker)
    t.start()
    with pytest.raises(TimeoutError):
        handle.request({"op": "stats"}, timeout=0.1)
    assert handle.request({"op": "stats"}, timeout=5)["answer"] == "second"
    t.join(5)


def test_never_block_goes_to_the_engine_when_it_takes_it() -> None:
    policy = load_policy_text("table banned dynamic timeout 1h\ndrop from @banned\n", "p.rules")
    make_engine(policy, 1000, [f"{GW}/32"])
    if "never_block" not in inspect.signature(Engine).parameters:
        return  # an engine without detectors yet: made without it
    with pytest.raises(ValueError):  # it was handed over: the engine checks it
        make_engine(policy, 1000, ["10.10.1.300/32"])
    # manual blocks are the operator's: the engine takes them (the daemon refuses a
    # never-block address itself unless --force)
    engine = make_engine(policy, 1000, [f"{GW}/32"])
    assert engine.block(ipaddress.ip_address(GW).packed, 0.0, 60.0) is not None


def test_detectors_never_block_the_gateways_own_addresses() -> None:
    """A stealth scan (XMAS packets) from the gateway's own address raises no Block; the same
    from the attacker does (engine level: the daemon passes its addresses as never_block)."""
    if "never_block" not in inspect.signature(Engine).parameters:
        pytest.skip("the engine has no never_block yet (detectors not in)")
    from ips.core.build import build_packet

    policy = load_policy_text(
        "table banned dynamic timeout 1h\ndrop from @banned\naccept\n"
        "detect stealth count 1 within 60s block 1h\n", "p.rules",
    )  # fmt: skip
    engine = make_engine(policy, 1000, [f"{GW}/32"])
    blocks: dict[str, list[object]] = {}
    for src in (GW, ATTACKER):
        for i in range(3):
            pkt = build_packet(6, src, SERVER, 40000 + i, 80, flags=0x29)  # FIN PSH URG
            decision = engine.handle(pkt, now=1.0 + i)
            found = [e for e in decision.effects if type(e).__name__ == "Block"]
            blocks.setdefault(src, []).extend(found)
    assert blocks[GW] == []
    assert len(blocks[ATTACKER]) >= 1


def test_own_addresses_are_host_networks() -> None:
    addrs = supervisor.own_addresses()
    assert all(ipaddress.ip_network(a).num_addresses == 1 for a in addrs)
    if os.path.exists("/proc/net/if_inet6") or addrs:
        assert "127.0.0.1/32" in addrs


def test_detector_counters_are_read_whatever_their_shape() -> None:
    class Stats:
        def __init__(self) -> None:
            self.detectors = {"portscan": {"alerts": 2, "blocks": 1}}

    class E1:
        stats = Stats()

    assert stats.detector_stats(E1()) == {"portscan": {"alerts": 2, "blocks": 1}}
    from collections import Counter

    class EngineStats:
        def __init__(self) -> None:
            self.detector_alerts = Counter({"portscan": 3})
            self.detector_drops = Counter({"icmpflood": 7})

    class E0:
        stats = EngineStats()
        policy = None

    assert stats.detector_stats(E0()) == {
        "icmpflood": {"alerts": 0, "drops": 7},
        "portscan": {"alerts": 3, "drops": 0},
    }

    class Det:
        name, alerts, blocks = "sweep", 4, 2

    class E2:
        def __init__(self) -> None:
            self.stats = object()
            self.detectors = [Det()]

    assert stats.detector_stats(E2()) == {"sweep": {"alerts": 4, "blocks": 2}}
    assert stats.detector_stats(type("E3", (), {"stats": object()})()) == {}


@pytest.mark.parametrize(
    ("text", "seconds"), [("2s", 2), ("10m", 600), ("1h", 3600), ("1d", 86400), ("90", 90),
                          ("500ms", 0.5), ("1.5h", 5400)],
)  # fmt: skip
def test_ttl_words(text: str, seconds: float) -> None:
    from ips.cli.blocks import parse_ttl

    assert parse_ttl(None, None, text) == seconds


def test_blocks_cli_without_a_daemon(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ips.cli import main

    result = CliRunner().invoke(main, ["blocks", "list", "--socket", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no daemon listening" in result.output
    bad = CliRunner().invoke(main, ["blocks", "add", "192.0.2.1", "--ttl", "0s"])
    assert bad.exit_code == 2
