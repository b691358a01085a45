"""The files the daemon and replay write are checked before anything runs (issue 19, item 6):
`ipsctl run` refuses an unsafe EVE or state path at start, with the reason and exit 2 (not
inside a worker once the kernel is set up), and replay's --eve opens like the daemon's EVE
file (ips.safefile: never through a link, never in a directory others can change)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ips.daemon.config import ConfigError, DaemonConfig, Problem, RunOptions

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = str(ROOT / "policies" / "gateway.rules")


def config(tmp_path: Path, **options: object) -> DaemonConfig:
    opts = {"policy_path": GATEWAY, "socket_path": str(tmp_path / "run" / "ipsctl.sock"), **options}
    return DaemonConfig.from_options(RunOptions(**opts), check_policy=lambda _p: None)  # type: ignore[arg-type]


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A link at the output's name to a file that must stay untouched."""
    target = tmp_path / "precious"
    target.write_text("root's\n")
    link = tmp_path / "eve.json"
    link.symlink_to(target)
    return link


def test_run_refuses_an_unsafe_eve_or_state_path_at_start(tmp_path: Path, planted: Path) -> None:
    with pytest.raises(ConfigError, match="it is a symbolic link") as caught:
        config(tmp_path, eve_path=str(planted))
    assert str(caught.value).startswith(f"--eve: {planted}: ")
    assert caught.value.problem is Problem.USAGE  # exit 2
    with pytest.raises(ConfigError, match=r"^--state: .*symbolic link"):
        config(tmp_path, state_path=str(planted))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by others, no sticky bit
    with pytest.raises(ConfigError, match="writable by others"):
        config(tmp_path, eve_path=str(shared / "eve.json"))
    with pytest.raises(ConfigError, match="no directory"):
        config(tmp_path, eve_path=str(tmp_path / "missing" / "eve.json"))
    # the socket's directory is made at start: a state file there is not refused for it
    if os.geteuid() == 0:
        cfg = config(tmp_path, eve_path=str(tmp_path / "eve.json.new"))
        assert cfg.state_file == str(tmp_path / "run" / "blocks.json")


def test_run_says_why_and_exits_2(tmp_path: Path, planted: Path) -> None:
    from ips.cli import main

    out = CliRunner().invoke(
        main,
        ["run", "--policy", GATEWAY, "--eve", str(planted), "--socket", str(tmp_path / "s.sock")],
    )
    assert out.exit_code == 2
    assert out.stderr == (
        f"ipsctl run: --eve: {planted}: it is a symbolic link; refusing to write there\n"
    )
    assert (tmp_path / "precious").read_text() == "root's\n"


def test_replay_eve_is_opened_safely(tmp_path: Path, planted: Path) -> None:
    from ips.cli import main
    from ips.io.pcap import write_pcap

    capture = tmp_path / "empty.pcap"
    write_pcap(str(capture), [])
    out = CliRunner().invoke(main, ["replay", GATEWAY, str(capture), "--eve", str(planted)])
    assert out.exit_code == 2
    assert "ipsctl replay: --eve: " in out.stderr and "symbolic link" in out.stderr
    assert (tmp_path / "precious").read_text() == "root's\n"
    fine = tmp_path / "eve-out.json"
    out = CliRunner().invoke(main, ["replay", GATEWAY, str(capture), "--eve", str(fine)])
    assert out.exit_code == 0, out.output
    assert fine.stat().st_mode & 0o777 == 0o640
