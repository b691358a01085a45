"""The control socket's server and client under load, in-process (issue 19, item 7): a fixed
number of threads whatever the connections, a deadline per request, a bounded line, "busy"
instead of a pile-up, and a client that asks again and never shows a traceback. The same
against a real daemon in a lab, with an unprivileged peer: tests/lab/test_control_flood_lab.py.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ips import control
from ips.daemon.socket_server import ControlServer, Limits


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "ctl.sock")


def serve(path: str, limits: Limits, handle: Any = None) -> ControlServer:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    server = ControlServer(
        listener, handle or (lambda req, uid: {"ok": True, "uid": uid, "op": req.get("op")}), limits
    )
    server.start()
    return server


@pytest.fixture
def small(sock_path: str) -> Iterator[ControlServer]:
    server = serve(
        sock_path,
        Limits(
            connections=8,
            root_connections=8,
            request_timeout=0.5,
            line=4096,
            root_line=4096,
            root_buffer=8192,
        ),
    )
    yield server
    server.close()


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def test_idle_connections_cost_no_thread_and_time_out(small: ControlServer, sock_path: str) -> None:
    threads = threading.active_count()
    idle = [connect(sock_path) for _ in range(8)]
    extra = [connect(sock_path) for _ in range(20)]  # over the limit: "busy" at once
    for s in extra:
        reply = control.read_line(s)
        assert b'"busy": true' in reply, reply
    assert threading.active_count() == threads
    # the idle ones are answered "timeout" at their deadline and closed
    started = time.monotonic()
    for s in idle:
        assert b"timeout: no complete request within 0.5 s" in control.read_line(s)
    assert time.monotonic() - started < 3
    while small.stats()["open_root"] and time.monotonic() - started < 3:
        time.sleep(0.01)  # closed right after the answer is written
    assert small.stats()["open_root"] == 0
    # and the server answers again, to the client that kept asking
    assert control.call(sock_path, {"op": "status"}, timeout=5)["ok"] is True
    for s in idle + extra:
        s.close()


def test_a_busy_server_is_asked_again_within_the_timeout(
    small: ControlServer, sock_path: str
) -> None:
    idle = [connect(sock_path) for _ in range(8)]  # every slot held until the deadline
    started = time.monotonic()
    reply = control.call(sock_path, {"op": "status"}, timeout=5)
    assert reply == {"ok": True, "uid": 0, "op": "status"}
    assert 0.3 < time.monotonic() - started < 3  # served once the idle ones timed out
    for s in idle:
        s.close()


def test_an_oversized_line_is_refused_and_never_kept(small: ControlServer, sock_path: str) -> None:
    s = connect(sock_path)
    s.sendall(b"x" * 1_000_000 + b"\n")  # read and dropped: the sender is never stuck
    assert b"request too large: more than 4096 bytes in one line" in control.read_line(s)
    assert small.root_buffered == 0 and small.stats()["refused_large"] == 1
    # the line that fits is served
    assert control.call(sock_path, {"op": "x" * 3000}, timeout=5)["ok"] is True


def test_half_sent_lines_of_root_are_bounded_together(small: ControlServer, sock_path: str) -> None:
    first, second, third = (connect(sock_path) for _ in range(3))
    first.sendall(b"y" * 3500)
    second.sendall(b"y" * 3500)
    time.sleep(0.2)
    third.sendall(b"y" * 3500)  # 10,500 bytes half-sent: over root_buffer
    assert b'"busy": true' in control.read_line(third)
    assert small.root_buffered <= 8192


def test_root_is_served_when_unprivileged_peers_hold_every_slot_and_thread() -> None:
    """uid 0 has its own slots and threads: a peer of another uid that holds every slot of
    its kind open and keeps its one thread busy does not delay root's command."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to become another user)")
    gate = threading.Event()
    seen: list[int] = []

    def handle(req: dict[str, Any], uid: int) -> dict[str, Any]:
        seen.append(uid)
        if req.get("op") == "slow":
            gate.wait(10)  # a command that hangs
        return {"ok": True, "uid": uid}

    path = f"\0ipsctl-test-{os.getpid()}-{os.urandom(4).hex()}"  # no file permissions
    server = serve(
        path, Limits(connections=4, workers=1, root_workers=1, request_timeout=5), handle
    )
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # nobody: one slow command, every other slot held, then more refused
        try:
            os.setgid(65534)
            os.setuid(65534)
            held = [connect(path) for _ in range(24)]
            held[0].sendall(b'{"op": "slow"}\n')
            os.write(ready_w, b"!")
            time.sleep(10)
        finally:
            os._exit(0)
    try:
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"!"
        time.sleep(0.2)
        assert server.open[False] == 4 and server.stats()["refused_busy"] == 20
        started = time.monotonic()
        assert control.call(path, {"op": "status"}, timeout=5) == {"ok": True, "uid": 0}
        assert time.monotonic() - started < 0.5
        assert seen == [65534, 0]  # the uid is SO_PEERCRED's
    finally:
        gate.set()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        server.close()


def test_the_client_says_why_in_one_line_instead_of_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "s.sock")
    with pytest.raises(control.NoDaemon, match="no daemon listening"):
        control.call(path, {"op": "status"}, timeout=1)
    # a socket that is bound but does not listen (a daemon starting, or one that died):
    # asked again for a moment, then "no daemon"
    monkeypatch.setattr(control, "STARTING_GRACE", 0.3)
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(path)
    started = time.monotonic()
    with pytest.raises(control.NoDaemon):
        control.call(path, {"op": "status"}, timeout=5)
    assert 0.3 <= time.monotonic() - started < 2
    # a full backlog that is never taken: EAGAIN at connect, asked again until the timeout
    bound.listen(0)
    fillers = []
    for _ in range(50):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            break
        fillers.append(s)
    started = time.monotonic()
    with pytest.raises(control.ControlError, match=r"too busy|did not answer"):
        control.call(path, {"op": "status"}, timeout=1)
    assert 0.9 < time.monotonic() - started < 2
    bound.close()
    for s in fillers:
        s.close()
