"""`ipsctl run --busy-poll USEC`: after a burst the worker looks at its queue again for a
bounded time before it sleeps (ips/daemon/worker.py poll_after_burst)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from ips.daemon.worker import poll_after_burst

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = str(ROOT / "policies" / "gateway.rules")


class FakeQueue:
    """An adapter whose queue is one end of a socket pair: process_pending reads what is
    there, as the NFQUEUE drain does (non-blocking, until empty)."""

    def __init__(self, sock: socket.socket, more: list[bytes], peer: socket.socket) -> None:
        self.sock = sock
        self.peer = peer
        self.more = more  # sent by the "kernel" after each drain: what a burst set off
        self.read: list[bytes] = []
        self.drains = 0

    def process_pending(self) -> None:
        self.drains += 1
        while True:
            try:
                self.read.append(self.sock.recv(100))
            except BlockingIOError:
                break
        if self.more:
            self.peer.send(self.more.pop(0))


def test_what_a_burst_sets_off_is_handled_before_the_worker_sleeps() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        queue = FakeQueue(a, [b"reply", b"next"], b)
        queue.process_pending()  # the burst (empty here), which "sets off" a reply
        poll_after_burst(queue, a.fileno(), 0.05)  # type: ignore[arg-type]
        assert queue.read == [b"reply", b"next"]
        assert queue.drains == 3
    finally:
        a.close()
        b.close()


def test_the_poll_ends_when_nothing_comes() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        queue = FakeQueue(a, [], b)
        poll_after_burst(queue, a.fileno(), 0.002)  # type: ignore[arg-type]
        assert queue.drains == 0 and queue.read == []
    finally:
        a.close()
        b.close()


def test_busy_poll_is_off_by_default_and_given_in_microseconds(tmp_path: Path) -> None:
    from ips.daemon.config import DaemonConfig, RunOptions

    if os.geteuid() != 0:
        pytest.skip("DaemonConfig.from_options wants root for the NFQUEUE backend")

    def config(**options: object) -> DaemonConfig:
        opts = {"policy_path": GATEWAY, "socket_path": str(tmp_path / "s.sock"), **options}
        return DaemonConfig.from_options(RunOptions(**opts), check_policy=lambda _p: None)  # type: ignore[arg-type]

    assert config().busy_poll == 0.0
    assert config(busy_poll_us=300).busy_poll == pytest.approx(300e-6)


def test_the_command_line_bounds_the_poll() -> None:
    from ips.cli import main

    result = CliRunner().invoke(main, ["run", "--busy-poll", "20000", "--policy", GATEWAY])
    assert result.exit_code == 2
    assert "--busy-poll" in result.output
