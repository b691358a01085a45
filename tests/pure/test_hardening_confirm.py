"""`apply --confirm` survives the daemon (issue 19, item 3), in-process: the pending-apply
record, the start's decision (an unconfirmed policy never becomes the running one), the
watchdog's decision at the deadline, and the detached watchdog process itself. The kill in
the lab: tests/lab/test_hardening_confirm_lab.py."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ips.daemon import rollback
from ips.daemon.rollback import (
    GRACE,
    PENDING,
    ROLLED_BACK,
    PendingApply,
    ProcessId,
    choose_at_start,
    end_watchdog,
    read_record,
    spawn_watchdog,
    write_record,
)
from ips.daemon.supervisor import Daemon
from ips.policy.resolve import load_policy_sources
from ips.translate.nft import NftPlan

A_TEXT = "accept proto tcp to port 22\nset default accept\n"
B_TEXT = "drop proto tcp to port 22\nset default accept\n"


def policy(tmp_path: Path, text: str, name: str) -> tuple[Any, str, dict[str, str]]:
    main = str(tmp_path / name)
    sources = {main: text}
    return load_policy_sources(main, sources), main, sources


def dead_process() -> ProcessId:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ident = ProcessId.of(child.pid)
    child.wait()
    assert ident is not None
    return ident


def record(tmp_path: Path, deadline: float = 0.0, **changes: Any) -> PendingApply:
    a, a_main, a_sources = policy(tmp_path, A_TEXT, "a.rules")
    b, b_main, _ = policy(tmp_path, B_TEXT, "b.rules")
    plan = dataclasses.asdict(
        NftPlan(("forward",), queue=(3, 4), nft_queue=True, offload_generation=0, queues=2)
    )
    rec = PendingApply(
        digest=b.digest,
        main=b_main,
        applied_at=deadline - 3,
        deadline=deadline,
        previous_main=a_main,
        previous_digest=a.digest,
        previous_sources=a_sources,
        plan=plan,
        unconfirmed=[b.digest],
        daemon=dead_process(),
    )
    return dataclasses.replace(rec, **changes)


def test_the_record_round_trips_private(tmp_path: Path) -> None:
    path = str(tmp_path / rollback.PENDING_FILE)
    rec = record(tmp_path, 100.0, watchdog=ProcessId(7, 8))
    write_record(path, rec)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds the previous policy's text
    back = read_record(path)
    assert back is not None and back.to_json() == rec.to_json()
    assert back.watchdog == ProcessId(7, 8)
    Path(path).write_text("{not json")
    assert read_record(path) is None  # unreadable: said on stderr, ignored
    assert read_record(str(tmp_path / "none.json")) is None


def test_a_rollback_is_recorded_once_with_who_and_when(tmp_path: Path) -> None:
    rec = record(tmp_path, 100.0)
    assert rec.state == PENDING and "before the daemon died" in rec.note()["text"]
    rec.roll_back("watchdog", 103.0)
    rec.roll_back("restart", 200.0)  # the first one stays
    assert (rec.state, rec.rolled_back_by, rec.rolled_back_at) == (ROLLED_BACK, "watchdog", 103.0)
    note = rec.note()
    assert note["text"].startswith(
        f"apply of {rec.main} (digest {rec.digest[:16]}) was not confirmed: rolled back at "
    )
    assert note["text"].endswith("(by the watchdog)")


def test_the_start_never_runs_an_unconfirmed_policy(tmp_path: Path) -> None:
    rec = record(tmp_path, 100.0)
    a_digest, b_digest = rec.previous_digest, rec.digest
    assert choose_at_start(None, a_digest, 50.0) == rollback.StartChoice(False, False, None)
    # configured: the previous policy (B came from another file): start with it, say so
    choice = choose_at_start(rec, a_digest, 50.0)
    assert not choice.use_previous and not choice.keep_record
    assert choice.note is not None and choice.note["rolled_back_by"] == "restart"
    # configured: B itself (the file was edited, applied with --confirm, never confirmed),
    # before or after the deadline: the previous policy, and the record stays for next time
    for now in (50.0, 150.0):
        choice = choose_at_start(record(tmp_path, 100.0), b_digest, now)
        assert choice.use_previous and choice.keep_record
    # stacked unconfirmed applies: none of them
    stacked = record(tmp_path, 100.0, digest="c" * 64, unconfirmed=[b_digest, "c" * 64])
    assert choose_at_start(stacked, b_digest, 50.0).use_previous
    # rolled back by the watchdog already: it says so
    done = record(tmp_path, 100.0)
    done.roll_back("watchdog", 100.2)
    choice = choose_at_start(done, b_digest, 150.0)
    assert choice.use_previous and choice.note and choice.note["rolled_back_by"] == "watchdog"
    # a third policy, configured since: that one (it is not the unconfirmed one)
    assert not choose_at_start(record(tmp_path, 100.0), "d" * 64, 150.0).use_previous


def test_the_daemon_starts_with_the_previous_policy(tmp_path: Path) -> None:
    rec = record(tmp_path, time.time() + 60, watchdog=dead_process())
    path = str(tmp_path / rollback.PENDING_FILE)
    write_record(path, rec)
    b, b_main, b_sources = policy(tmp_path, B_TEXT, "b.rules")
    daemon = SimpleNamespace(pending_file=path, unconfirmed=None)
    running, main, _sources = Daemon._unconfirmed_at_start(daemon, b, b_main, b_sources)  # type: ignore[arg-type]
    assert running.digest == rec.previous_digest and main == rec.previous_main
    assert daemon.unconfirmed["digest"] == b.digest
    kept = read_record(path)
    assert kept is not None and kept.state == ROLLED_BACK and kept.rolled_back_by == "restart"


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def restores(monkeypatch: pytest.MonkeyPatch) -> list[tuple[PendingApply, Any]]:
    done: list[tuple[PendingApply, Any]] = []

    def fake(rec: PendingApply, pol: Any) -> str:
        done.append((rec, pol))
        return "restored"

    monkeypatch.setattr(rollback, "restore_kernel_part", fake)
    return done


def test_the_watchdog_rolls_back_a_dead_daemons_apply_at_the_deadline(
    tmp_path: Path, restores: list[tuple[PendingApply, Any]]
) -> None:
    path = str(tmp_path / rollback.PENDING_FILE)
    write_record(path, record(tmp_path, 100.0))
    clock = FakeClock(97.0)
    assert rollback.watch(path, clock, clock.sleep) == 0
    assert 100.0 <= clock.now < 100.5  # at the deadline, not later
    ((rec, pol),) = restores
    assert pol.digest == rec.previous_digest  # the previous policy
    done = read_record(path)
    assert done is not None and done.state == ROLLED_BACK and done.rolled_back_by == "watchdog"


def test_the_watchdog_leaves_a_live_daemon_time_to_roll_back_itself(
    tmp_path: Path, restores: list[tuple[PendingApply, Any]]
) -> None:
    path = str(tmp_path / rollback.PENDING_FILE)
    write_record(path, record(tmp_path, 100.0, daemon=ProcessId.of(os.getpid())))
    clock = FakeClock(99.0)
    rollback.watch(path, clock, clock.sleep)
    assert clock.now >= 100.0 + GRACE and len(restores) == 1  # a hung daemon: after GRACE


def test_the_watchdog_does_nothing_once_confirmed(
    tmp_path: Path, restores: list[tuple[PendingApply, Any]]
) -> None:
    path = str(tmp_path / rollback.PENDING_FILE)
    write_record(path, record(tmp_path, 100.0))
    clock = FakeClock(90.0)

    def confirm_meanwhile(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now > 95.0:
            os.unlink(path)

    assert rollback.watch(path, clock, confirm_meanwhile) == 0
    assert restores == [] and clock.now < 100.0


def test_the_restore_applies_the_saved_plan_with_nothing_offloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[tuple[Any, NftPlan]] = []

    class FakeNft:
        def table_exists(self) -> bool:
            return True

        def apply(self, pol: Any, plan: NftPlan) -> None:
            applied.append((pol, plan))

    import ips.kernel.nft

    monkeypatch.setattr(ips.kernel.nft, "Nft", FakeNft)
    rec = read_back(tmp_path, record(tmp_path, 100.0))
    pol = load_policy_sources(rec.previous_main, rec.previous_sources)
    assert rollback.restore_kernel_part(rec, pol) == "the previous policy's kernel part restored"
    ((got, plan),) = applied
    assert got is pol
    assert plan == NftPlan(
        ("forward",), queue=(3, 4), nft_queue=True, offload_generation=0, queues=2
    )
    rec.plan = None  # the divert backend: nothing in a kernel
    assert rollback.restore_kernel_part(rec, pol) == "no kernel part to restore"


def test_the_restore_puts_back_the_sysctls_the_previous_policy_ran_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unconfirmed `set synproxy on` left conntrack's tcp_loose at 0: the watchdog's
    rollback writes back the value saved with the record (and only a held sysctl's)."""
    import ips.kernel.diversion as diversion
    import ips.kernel.nft

    class FakeNft:
        def table_exists(self) -> bool:
            return True

        def apply(self, pol: Any, plan: NftPlan) -> None:
            pass

    loose, acct = tmp_path / "nf_conntrack_tcp_loose", tmp_path / "nf_conntrack_acct"
    loose.write_text("1\n")
    acct.write_text("0\n")
    monkeypatch.setattr(diversion, "HELD_SYSCTLS", (loose, acct))
    monkeypatch.setattr(ips.kernel.nft, "Nft", FakeNft)
    saved = diversion.held_sysctls()
    assert saved == {str(loose): "1", str(acct): "0"}
    loose.write_text("0\n")  # the unconfirmed policy's SYN proxy
    rec = read_back(tmp_path, record(tmp_path, 100.0, sysctls=saved))
    pol = load_policy_sources(rec.previous_main, rec.previous_sources)
    done = rollback.restore_kernel_part(rec, pol)
    assert done == "the previous policy's kernel part restored, and nf_conntrack_tcp_loose"
    assert loose.read_text() == "1\n" and acct.read_text() == "0\n"
    rec.sysctls = {str(loose): "0", "/proc/sys/net/ipv4/ip_forward": "0"}
    assert rollback.restore_kernel_part(rec, pol).endswith("nf_conntrack_tcp_loose")
    assert loose.read_text() == "0\n"  # and a path that is not held is never written
    # A record written before the field existed restores the kernel part alone.
    raw = json.loads(rec.to_json())
    del raw["sysctls"]
    legacy = PendingApply.from_json(json.dumps(raw).encode())
    assert legacy.sysctls == {}
    assert rollback.restore_kernel_part(legacy, pol) == "the previous policy's kernel part restored"


def read_back(tmp_path: Path, rec: PendingApply) -> PendingApply:
    path = str(tmp_path / "rec.json")
    write_record(path, rec)
    back = read_record(path)
    assert back is not None
    return back


def test_processes_are_named_by_pid_and_start_time() -> None:
    me = ProcessId.of(os.getpid())
    assert me is not None and me.running()
    assert not ProcessId(me.pid, me.start + 1).running()  # a reused pid is another process
    assert not dead_process().running()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    zombie = ProcessId.of(child.pid)
    deadline = time.monotonic() + 10
    while zombie is not None and zombie.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert zombie is not None and not zombie.running()  # exited, not reaped yet: dead
    child.wait()
    assert not end_watchdog(me)  # not a watchdog: never signalled


def test_the_watchdog_is_detached_and_ends_when_told(tmp_path: Path) -> None:
    path = str(tmp_path / rollback.PENDING_FILE)
    write_record(path, record(tmp_path, time.time() + 60, daemon=ProcessId.of(os.getpid())))
    watchdog = spawn_watchdog(path)
    assert watchdog is not None and watchdog.running()
    try:
        assert os.getsid(watchdog.pid) == watchdog.pid  # a session of its own
        ppid = int(Path(f"/proc/{watchdog.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert ppid != os.getpid()  # not our child: our death does not take it down
        assert end_watchdog(watchdog)
        deadline = time.monotonic() + 10
        while watchdog.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not watchdog.running()
        rec = read_record(path)
        assert rec is not None and rec.state == PENDING  # ended: it did nothing
    finally:
        if watchdog is not None and watchdog.running():
            os.kill(watchdog.pid, 9)


def test_under_systemd_a_transient_timer_runs_a_watchdog_at_the_deadline(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    path = str(tmp_path / rollback.PENDING_FILE)
    assert rollback.systemd_timer(path, time.time() + 5, run, here=lambda: False) is None
    assert calls == []  # no systemd as PID 1, or a namespace of its own: the watchdog alone
    unit = rollback.systemd_timer(path, time.time() + 5, run, here=lambda: True)
    ((argv,),) = [calls]
    assert unit is not None and f"--unit={unit}" in argv and argv[0] == "systemd-run"
    delay = next(a for a in argv if a.startswith("--on-active="))
    assert 4.0 <= float(delay.removeprefix("--on-active=").removesuffix("s")) <= 5.0
    assert argv[-3:] == ["-m", rollback.WATCHDOG_MODULE, path]  # not --detach: the timer's own
    rollback.stop_systemd_timer(unit, run)
    assert calls[-1] == ["systemctl", "stop", f"{unit}.timer"]

    def refuse(argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", "Access denied")

    assert rollback.systemd_timer(path, time.time() + 5, refuse, here=lambda: True) is None
