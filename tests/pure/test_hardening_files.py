"""Hardening of the files the daemon writes (issue 19, item 6): the EVE file, its rotated
files and lock, and the state files are never opened through a symbolic link or in a
directory others can change, and are created 0640 with the `ipsctl` group when it exists."""

from __future__ import annotations

import grp
import os
import signal
import stat
from pathlib import Path

import pytest

from ips import safefile
from ips.safefile import UnsafePathError, open_private_file, replace_private_file
from ips.sinks.eve import open_eve_file
from ips.sinks.logfile import RotatingLog

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A root-only file elsewhere: what a planted link points at."""
    target = tmp_path / "elsewhere" / "shadow"
    target.parent.mkdir()
    target.write_text("root only\n")
    target.chmod(0o600)
    return target


@pytest.fixture
def events_dir(tmp_path: Path) -> Path:
    """A directory like /tmp or /var/log: safe to write in."""
    d = tmp_path / "log"
    d.mkdir()
    d.chmod(0o755)
    return d


def test_symlink_planted_at_the_eve_path_is_refused_and_its_target_untouched(
    events_dir: Path, secret: Path
) -> None:
    before = (secret.read_bytes(), os.stat(secret).st_mtime_ns, _mode(secret))
    eve = events_dir / "eve.json"
    eve.symlink_to(secret)
    with pytest.raises(UnsafePathError, match=rf"{eve}: it is a symbolic link; refusing"):
        RotatingLog(str(eve))
    with pytest.raises(UnsafePathError, match="symbolic link"):
        open_eve_file(str(eve))
    assert (secret.read_bytes(), os.stat(secret).st_mtime_ns, _mode(secret)) == before


def test_link_planted_after_a_rotation_is_not_written_through(
    events_dir: Path, secret: Path
) -> None:
    before = secret.read_bytes()
    eve = events_dir / "eve.json"
    log = RotatingLog(str(eve), max_bytes=100, keep=2)
    log.write("x" * 60)
    os.rename(eve, events_dir / "moved")  # logrotate moved it; an attacker plants a link
    eve.symlink_to(secret)
    log.reopen()
    for _ in range(3):
        log.write("y" * 60)  # never raises
    assert secret.read_bytes() == before
    assert log.write_errors >= 1 and "symbolic link" in log.last_error
    assert eve.is_symlink()
    # a hard link to a file elsewhere is refused too
    eve.unlink()
    os.link(secret, eve)
    with pytest.raises(UnsafePathError, match="other hard link"):
        RotatingLog(str(eve))
    assert secret.read_bytes() == before


@pytest.mark.parametrize(
    ("dir_mode", "owner", "reason"),
    [
        (0o777, 0, r"writable by others \(mode 0777\) without the sticky bit"),
        (0o775, 0, r"writable by its group \(mode 0775\) without the sticky bit"),
        (0o755, NOBODY, f"owned by uid {NOBODY}, not by root or this user"),
    ],
)
def test_unsafe_directory_is_refused(
    tmp_path: Path, dir_mode: int, owner: int, reason: str
) -> None:
    if os.geteuid() != 0 and owner == NOBODY:
        pytest.skip("giving a directory away needs root")
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(dir_mode)
    os.chown(d, owner, -1)
    with pytest.raises(UnsafePathError, match=reason):
        RotatingLog(str(d / "eve.json"))
    with pytest.raises(UnsafePathError, match=reason):
        replace_private_file(str(d / "state.json"), b"{}")
    assert os.listdir(d) == []


def test_sticky_world_writable_directory_like_tmp_is_accepted(tmp_path: Path) -> None:
    d = tmp_path / "tmp"
    d.mkdir()
    d.chmod(0o1777)
    log = RotatingLog(str(d / "eve.json"))
    log.write("{}")
    log.close()
    assert _mode(d / "eve.json") == 0o640


def test_files_are_created_0640_and_rotated_files_stay_so(events_dir: Path) -> None:
    old_umask = os.umask(0)  # whatever the umask, the mode is 0640
    try:
        eve = events_dir / "eve.json"
        log = RotatingLog(str(eve), max_bytes=100, keep=3)
        for _ in range(10):
            log.write("z" * 60)
        log.close()
        assert log.rotations >= 3
        written = sorted(p.name for p in events_dir.iterdir())
        assert written == ["eve.json", "eve.json.1", "eve.json.2", "eve.json.3", "eve.json.lock"]
        assert {p.name: _mode(p) for p in events_dir.iterdir()} == dict.fromkeys(written, 0o640)
        with open_eve_file(str(events_dir / "replay.json")) as f:
            f.write("{}\n")
        assert _mode(events_dir / "replay.json") == 0o640
        replace_private_file(str(events_dir / "state.json"), b"{}")
        assert _mode(events_dir / "state.json") == 0o640
        assert (events_dir / "state.json").read_bytes() == b"{}"
    finally:
        os.umask(old_umask)


def test_an_existing_world_readable_eve_file_is_narrowed(events_dir: Path) -> None:
    eve = events_dir / "eve.json"
    eve.write_text("old\n")
    eve.chmod(0o644)
    RotatingLog(str(eve)).write("new")
    assert _mode(eve) == 0o640
    assert eve.read_text() == "old\nnew\n"


def test_created_files_get_the_service_group(
    events_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file another group needs root")
    other = next(g for g in grp.getgrall() if g.gr_gid != os.getegid())
    monkeypatch.setattr(safefile, "SERVICE_GROUP", other.gr_name)  # stands in for `ipsctl`
    RotatingLog(str(events_dir / "eve.json")).write("{}")
    assert os.stat(events_dir / "eve.json").st_gid == other.gr_gid
    monkeypatch.setattr(safefile, "SERVICE_GROUP", "no-such-group-here")
    fd = open_private_file(str(events_dir / "plain"))
    os.close(fd)
    assert os.stat(events_dir / "plain").st_gid == os.getegid()


def test_a_fifo_planted_at_the_path_does_not_hang_the_open(events_dir: Path) -> None:
    fifo = events_dir / "eve.json"
    os.mkfifo(fifo)

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("opening the EVE path hung on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.raises(UnsafePathError, match="not a regular file"):
            RotatingLog(str(fifo))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_state_file_replaces_a_planted_link_instead_of_writing_through(
    events_dir: Path, secret: Path
) -> None:
    before = secret.read_bytes()
    state = events_dir / "state.json"
    state.symlink_to(secret)
    (events_dir / f".state.json.{os.getpid()}.tmp").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        replace_private_file(str(state), b"{}")  # the temporary name is a link: refused
    (events_dir / f".state.json.{os.getpid()}.tmp").unlink()
    replace_private_file(str(state), b'{"blocks": []}')
    assert not state.is_symlink() and state.read_bytes() == b'{"blocks": []}'
    assert secret.read_bytes() == before
