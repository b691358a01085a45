"""The rollback of an unconfirmed `apply --confirm`, which must happen even when the daemon
is dead (like a router's "commit confirmed"), and a restart that never makes an unconfirmed
policy permanent.

    the record    Before the kernel part of an `apply --confirm` changes anything, the
                  daemon writes a pending-apply record (PENDING_FILE, next to the control
                  socket, a private file replaced atomically): the unconfirmed policy's digest,
                  the deadline, the previous policy's sources and digest, and the plan of its
                  kernel part (ips/translate/nft/, NftPlan). `confirm` removes it; the
                  daemon's own rollback at the deadline, a clean stop and a restart mark it
                  rolled back.
    the watchdog  `python -m ips.daemon.rollback --detach RECORD`, started by the daemon
                  for each pending record: a process of its own (double-forked, in its own
                  session), so the daemon's death does not take it down. It sleeps until the
                  deadline; if the record is still pending and the daemon is dead (or alive
                  but has not rolled back GRACE seconds later) it puts the previous policy's
                  kernel part back (the daemon's workers died with it: what stays in force
                  without a daemon is the kernel part) and marks the record rolled back.
                  Under systemd the unit's KillMode ends it with the daemon's cgroup, so a
                  transient timer (systemd-run) also starts a watchdog at the deadline,
                  outside that cgroup; two watchdogs are harmless (the lock, the state).
    the start     A daemon that starts reads the record (choose_at_start): when the policy
                  it was told to load is one that was applied unconfirmed, it starts with the
                  previous policy instead; either way `status` and stderr say that the apply
                  was not confirmed and when it was rolled back.

Every change of the record is made under an exclusive lock (LOCK_SUFFIX beside it), so the
daemon, a new daemon and the watchdog never act on the same record at the same time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ips.safefile import open_private_file, replace_private_file

PENDING_FILE = "pending-apply.json"
LOCK_SUFFIX = ".lock"
RECORD_MODE = 0o600  # it holds the previous policy's text
# Seconds the watchdog leaves a daemon that is still alive to roll back itself (it looks
# every 0.2 s); a dead daemon's apply is rolled back at the deadline.
GRACE = 3.0
PENDING = "pending"
ROLLED_BACK = "rolled_back"
WATCHDOG_MODULE = "ips.daemon.rollback"


# ---- processes, named by pid and start time (a pid alone may have been reused) -------------


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start: int  # field 22 of /proc/PID/stat: clock ticks after boot

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        stat = _proc_stat(pid)
        return None if stat is None else cls(pid, int(stat[19]))

    def running(self) -> bool:
        """This very process exists and is not a zombie."""
        stat = _proc_stat(self.pid)
        return stat is not None and int(stat[19]) == self.start and stat[0] not in ("Z", "X")


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None: no process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def end_watchdog(watchdog: ProcessId | None) -> bool:
    """SIGTERM the watchdog if it is still that process and still a watchdog. Whether it was."""
    if watchdog is None or not watchdog.running() or WATCHDOG_MODULE not in _cmdline(watchdog.pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(watchdog.pid, signal.SIGTERM)
    return True


# ---- the record -------------------------------------------------------------------------------


@dataclass
class PendingApply:
    """An apply that awaits `ipsctl confirm` (state PENDING), or one that was not confirmed
    and was rolled back (ROLLED_BACK)."""

    digest: str  # the unconfirmed policy's
    main: str
    applied_at: float
    deadline: float
    previous_main: str
    previous_digest: str
    previous_sources: dict[str, str]
    plan: dict[str, Any] | None  # NftPlan of the previous policy's kernel part; None: none
    # The sysctls the daemon holds for a policy (ips/kernel/diversion.py, HELD_SYSCTLS) as
    # the previous policy ran with them: an unconfirmed `set synproxy on` sets conntrack's
    # tcp_loose to 0, which a rollback without a daemon must undo with the kernel part.
    sysctls: dict[str, str] = field(default_factory=dict)
    unconfirmed: list[str] = field(default_factory=list)  # every digest applied unconfirmed
    daemon: ProcessId | None = None
    watchdog: ProcessId | None = None
    timer: str | None = None  # the systemd timer's unit, when there is one (systemd_timer)
    state: str = PENDING
    rolled_back_at: float | None = None
    rolled_back_by: str | None = None  # daemon, watchdog, stop, restart

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PendingApply:
        raw = json.loads(data)
        for key in ("daemon", "watchdog"):
            if raw.get(key) is not None:
                raw[key] = ProcessId(**raw[key])
        return cls(**raw)

    def roll_back(self, by: str, now: float) -> None:
        if self.state == PENDING:
            self.state = ROLLED_BACK
            self.rolled_back_at = now
            self.rolled_back_by = by

    def note(self) -> dict[str, Any]:
        """For `status` (policy.unconfirmed) and stderr."""
        if self.state == PENDING:
            text = (
                f"apply of {self.main} (digest {self.digest[:16]}) was not confirmed "
                f"before the daemon died"
            )
        else:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.rolled_back_at or 0))
            text = (
                f"apply of {self.main} (digest {self.digest[:16]}) was not confirmed: "
                f"rolled back at {at} (by the {self.rolled_back_by})"
            )
        return {
            "text": text,
            "file": self.main,
            "digest": self.digest,
            "deadline": self.deadline,
            "state": self.state,
            "rolled_back_at": self.rolled_back_at,
            "rolled_back_by": self.rolled_back_by,
            "previous": self.previous_digest,
        }


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """The record's lock, held for a read-decide-write of the record."""
    fd = open_private_file(path + LOCK_SUFFIX, os.O_RDWR, RECORD_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_record(path: str) -> PendingApply | None:
    """The record, or None (none, or unreadable: said on stderr)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return PendingApply.from_json(data)
    except (ValueError, TypeError, KeyError) as exc:
        print(
            f"ipsctl: ignoring the unreadable pending-apply record {path}: {exc}", file=sys.stderr
        )
        return None


def write_record(path: str, record: PendingApply) -> None:
    replace_private_file(path, record.to_json(), RECORD_MODE)


def remove_record(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ---- the start's decision ---------------------------------------------------------------------


@dataclass(frozen=True)
class StartChoice:
    use_previous: bool  # start with the record's previous policy, not the configured one
    keep_record: bool  # keep it (rolled back): the configured policy is still unconfirmed
    note: dict[str, Any] | None  # for status; None: nothing to report


def choose_at_start(record: PendingApply | None, configured_digest: str, now: float) -> StartChoice:
    """What a starting daemon does with the record it found (a pending one is marked rolled
    back by the restart). An unconfirmed apply (pending,
    the deadline passed or not: nobody can confirm it now, or rolled back) never becomes
    the running policy: when the configured policy is one that was applied unconfirmed (the
    policy file edited, applied with --confirm, never confirmed), the daemon starts with the
    previous policy and keeps the record for the next start; otherwise it starts with the
    configured policy (not the unconfirmed one) and the record has served its purpose."""
    if record is None:
        return StartChoice(False, False, None)
    record.roll_back("restart", now)
    unconfirmed = configured_digest in {record.digest, *record.unconfirmed}
    unconfirmed = unconfirmed and configured_digest != record.previous_digest
    return StartChoice(unconfirmed, unconfirmed, record.note())


# ---- the watchdog -------------------------------------------------------------------------------


def spawn_watchdog(path: str) -> ProcessId | None:
    """Start the watchdog of the record at PATH, detached; its ProcessId (None: it did not
    start, said on stderr: the daemon's own rollback and the start's decision remain)."""
    env = _watchdog_env()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", WATCHDOG_MODULE, "--detach", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        assert child.stdout is not None
        line = child.stdout.readline()
        child.stdout.close()
        child.wait(10)
        return ProcessId.of(int(line))
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"ipsctl: the rollback watchdog did not start: {exc}", file=sys.stderr)
        return None


def _watchdog_env() -> dict[str, str]:
    import ips

    env = dict(os.environ)
    root = str(Path(ips.__file__).resolve().parents[1])  # run this very ipsctl
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _systemd_here() -> bool:
    """systemd is PID 1 and this process is in its network namespace (a transient unit runs
    there: in a lab's namespace its nft would change the wrong one)."""
    try:
        ours, init = os.stat("/proc/self/ns/net"), os.stat("/proc/1/ns/net")
    except OSError:
        return False
    same = (ours.st_dev, ours.st_ino) == (init.st_dev, init.st_ino)
    return same and os.path.isdir("/run/systemd/system")


def systemd_timer(
    path: str, deadline: float, run: Any = subprocess.run, here: Any = _systemd_here
) -> str | None:
    """Under systemd, the unit's KillMode ends the detached watchdog with the daemon's
    cgroup: a transient timer (`systemd-run --on-active`) runs a watchdog at the deadline
    outside it. Its unit name; None when there is no systemd here or it refused (said on
    stderr: the restart's decision remains)."""
    if not here():
        return None
    unit = f"ipsctl-rollback-{os.getpid()}-{int(deadline * 1000)}"
    delay = max(0.1, deadline - time.time())
    pythonpath = _watchdog_env()["PYTHONPATH"]
    argv = [
        "systemd-run",
        "--quiet",
        "--collect",
        f"--unit={unit}",
        f"--on-active={delay:.1f}s",
        "--timer-property=AccuracySec=100ms",
        f"--setenv=PYTHONPATH={pythonpath}",
        sys.executable,
        "-m",
        WATCHDOG_MODULE,
        path,
    ]
    try:
        done = run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"ipsctl: no systemd rollback timer: {exc}", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"ipsctl: no systemd rollback timer: {done.stderr.strip()}", file=sys.stderr)
        return None
    return unit


def stop_systemd_timer(unit: str | None, run: Any = subprocess.run) -> None:
    """Best effort: a timer left running only starts a watchdog that finds nothing to do."""
    if unit:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            run(["systemctl", "stop", f"{unit}.timer"], capture_output=True, timeout=10)


def restore_kernel_part(record: PendingApply, policy: Any) -> str:
    """Put the previous policy's kernel part back (nothing offloaded: no engine is there to
    judge what comes back), and the sysctls it ran with. Returns what was done."""
    from ips.kernel.diversion import restore_held_sysctls
    from ips.kernel.nft import Nft
    from ips.translate.nft import NftPlan

    if record.plan is None:
        return "no kernel part to restore"
    nft = Nft()
    if not nft.table_exists():  # a stopped daemon took it out: nothing of it is in force
        return "the table is gone; nothing to restore"
    plan = dict(record.plan)
    plan["hooks"] = tuple(plan["hooks"])
    if isinstance(plan["queue"], list):
        plan["queue"] = tuple(plan["queue"])
    plan["offload_generation"] = 0 if plan.get("offload_generation") is not None else None
    nft.apply(policy, NftPlan(**plan))
    rewritten = restore_held_sysctls(record.sysctls)
    if rewritten:
        return f"the previous policy's kernel part restored, and {', '.join(rewritten)}"
    return "the previous policy's kernel part restored"


def watch(path: str, clock: Any = time.time, sleep: Any = time.sleep) -> int:
    """The watchdog's life: until the record is settled, or rolled back by it."""
    from ips.policy.resolve import load_policy_sources

    record = read_record(path)
    if record is None or record.state != PENDING:
        return 0
    # Loaded now, not at the deadline: the rollback then takes only the nft transaction.
    policy = load_policy_sources(record.previous_main, record.previous_sources)
    loaded = record.previous_digest
    while True:
        record = read_record(path)
        if record is None or record.state != PENDING:
            return 0  # confirmed, or rolled back (by the daemon, a new daemon, another watchdog)
        if record.previous_digest != loaded:
            policy = load_policy_sources(record.previous_main, record.previous_sources)
            loaded = record.previous_digest
        daemon_alive = record.daemon is not None and record.daemon.running()
        due = record.deadline + (GRACE if daemon_alive else 0.0)
        left = due - clock()
        if left > 0:
            sleep(min(left, 0.5 if not daemon_alive else 0.25))
            continue
        with locked(path):
            record = read_record(path)
            if record is None or record.state != PENDING or clock() < record.deadline:
                continue
            done = restore_kernel_part(record, policy)
            record.roll_back("watchdog", clock())
            write_record(path, record)
        print(f"ipsctl rollback: {record.note()['text']}: {done}", file=sys.stderr, flush=True)
        return 0


def _detach() -> None:
    """The second fork: the process the daemon started (a session leader already) exits; the
    watchdog makes a session of its own, then tells the daemon its pid. It is nobody's child
    that the daemon's death could take down."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    os.chdir("/")
    os.write(1, f"{os.getpid()}\n".encode())
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # the daemon's pipe: its reader sees the end now
    os.close(null)


def main(argv: list[str]) -> int:
    detach = argv[:1] == ["--detach"]
    args = argv[1:] if detach else argv
    if len(args) != 1:
        print(f"usage: python -m {WATCHDOG_MODULE} [--detach] RECORD", file=sys.stderr)
        return 2
    if detach:
        _detach()
    signal.signal(signal.SIGTERM, lambda _s, _f: sys.exit(0))  # confirmed: nothing to do
    return watch(args[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
