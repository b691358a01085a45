"""`apply --confirm` survives the daemon (issue 19, item 3): an unconfirmed apply is rolled
back at its deadline even when the daemon was SIGKILLed in between (the detached watchdog of
ips/daemon/rollback.py puts the previous policy's kernel part back, and the sysctl its SYN
proxy had changed), and the restarted
daemon runs the previous policy and says in `status` that the apply was not confirmed. A
confirmed apply is not touched by the same kill."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from labkit import CLIENT, GATEWAY_RULES, SERVER, InlineLab, inline_lab, wait_until

CONFIRM = 3.0
WATCHDOG = "ips.daemon.rollback"  # the module name in a watchdog's command line


TCP_LOOSE = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"


def lockout(tmp_path: Path, synproxy: bool = False) -> Path:
    """Policy B: drops (in the kernel) the client that the gateway policy A lets through;
    with `synproxy`, its SYN proxy also sets conntrack's tcp_loose to 0 in gw."""
    path = tmp_path / "lockout.rules"
    extra = "set synproxy on\n" if synproxy else ""
    path.write_text(f"{extra}drop from {CLIENT}\nset default accept\n")
    return path


def tcp_loose(box: InlineLab) -> str:
    return box.gw_text(["cat", TCP_LOOSE]).strip()


def b_in_kernel(box: InlineLab) -> bool:
    return "lockout.rules" in box.gw_text(["nft", "list", "table", "inet", "ipsctl"])


def client_passes(box: InlineLab) -> bool:
    return box.curl("client", f"http://{SERVER}/", max_time=1).returncode == 0


def end_our_watchdogs(tmp_path: Path) -> list[int]:
    """The watchdogs of this test's record still running (ended by their PID): none, if
    the watchdog ends when its work is done."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if WATCHDOG in argv and any(str(tmp_path) in a for a in argv):
                found.append(int(entry.name))
                os.kill(int(entry.name), signal.SIGKILL)
    return found


def test_unconfirmed_apply_is_rolled_back_although_the_daemon_was_killed(tmp_path: Path) -> None:
    try:
        with inline_lab(tmp_path, "cfk") as box:
            box.start_daemon(GATEWAY_RULES)
            original = box.status()["policy"]["digest"]
            assert client_passes(box)
            loose = tcp_loose(box)
            assert loose != "0"  # gateway.rules has no SYN proxy
            out = box.ipsctl(
                "apply", str(lockout(tmp_path, synproxy=True)), "--confirm", str(CONFIRM)
            )
            assert out.returncode == 0, out.stderr
            policy = box.status()["policy"]
            deadline, unconfirmed = policy["confirm_deadline"], policy["digest"]
            assert b_in_kernel(box) and not client_passes(box)
            assert tcp_loose(box) == "0"
            box.kill_daemon(signal.SIGKILL)
            assert b_in_kernel(box)  # the kernel part stays in force without a daemon ...
            # ... until the deadline: then the previous policy's kernel part is back
            assert wait_until(lambda: not b_in_kernel(box), timeout=CONFIRM + 5, every=0.05)
            late = time.time() - deadline
            print(f"rolled back {late:.2f} s after the deadline")
            assert -0.1 < late < 1.5
            assert client_passes(box)  # A's kernel part, and fail-open without a daemon
            assert tcp_loose(box) == loose  # and the sysctl A ran with
            # a restart runs A and says what happened to B
            box.start_daemon(GATEWAY_RULES)
            policy = box.status()["policy"]
            assert policy["digest"] == original
            note = policy["unconfirmed"]
            assert note["digest"] == unconfirmed and note["rolled_back_by"] == "watchdog"
            assert "was not confirmed: rolled back at" in note["text"]
            assert "was not confirmed: rolled back at" in box.ipsctl("status").stdout
            assert "was not confirmed" in box.daemon_log.read_text()
            assert not b_in_kernel(box) and client_passes(box)
    finally:
        assert end_our_watchdogs(tmp_path) == []


def test_confirmed_apply_survives_the_same_kill(tmp_path: Path) -> None:
    try:
        with inline_lab(tmp_path, "cfc") as box:
            box.start_daemon(GATEWAY_RULES)
            out = box.ipsctl("apply", str(lockout(tmp_path)), "--confirm", str(CONFIRM))
            assert out.returncode == 0, out.stderr
            assert box.ipsctl("confirm").returncode == 0
            box.kill_daemon(signal.SIGKILL)
            time.sleep(CONFIRM + 4)  # past the deadline and any grace
            assert b_in_kernel(box) and not client_passes(box)  # nothing rolled back
            assert not (tmp_path / "pending-apply.json").exists()
    finally:
        assert end_our_watchdogs(tmp_path) == []
