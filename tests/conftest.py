"""Fixtures shared by the test files."""

from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from captures import PCAPS


@pytest.fixture(scope="session")
def pcaps_dir() -> Path:
    """The shared captures; missing: skip, or fail under CI=true."""
    if not PCAPS.is_dir():
        msg = f"shared captures not found at {PCAPS}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return PCAPS


# ---- a test that hangs ends, and says where ------------------------------------------------------

# No test runs for minutes (the longest, about 35 s here): one that passes this is hung. Without
# this guard a hang ran to CI's time limit and printed nothing about where it was.
HANG_LIMIT = float(os.environ.get("IPSCTL_TEST_HANG_LIMIT", "300"))
HANG_DIR_ENV = "IPSCTL_TEST_HANG_DIR"  # one directory per run, made by the controller
HANG_DIR_MADE = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    # The controller's environment is its xdist workers' (they are started after this).
    if not hasattr(config, "workerinput") and HANG_DIR_ENV not in os.environ:
        os.environ[HANG_DIR_ENV] = tempfile.mkdtemp(prefix="ipsctl-test-hangs-")
        config.stash[HANG_DIR_MADE] = True


@pytest.fixture(autouse=True)
def hang_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """After HANG_LIMIT seconds in one test, every thread's Python stack is written to a file
    of the run's hang directory and the process exits (xdist reports the test as crashed and
    starts another worker): the run goes on. faulthandler's watchdog is a C thread, so it
    fires even when compiled code spins holding the GIL, which pytest-timeout's Python timer
    would not. The dump goes to a file because pytest holds fd 2 during a test; the
    controller's summary prints it."""
    path = Path(os.environ[HANG_DIR_ENV]) / f"{os.getpid()}-{time.time_ns()}.txt"
    with path.open("w") as dump:
        dump.write(f"hung over {HANG_LIMIT:.0f} s: {request.node.nodeid}\n")
        dump.flush()
        faulthandler.dump_traceback_later(HANG_LIMIT, exit=True, file=dump)
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()
    path.unlink()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not config.stash.get(HANG_DIR_MADE, False):
        return
    hangs = Path(os.environ[HANG_DIR_ENV])
    for dump in sorted(hangs.glob("*.txt")):
        terminalreporter.section(f"hung test ({dump.name})", sep="!")
        terminalreporter.write(dump.read_text(errors="replace"))
    shutil.rmtree(hangs, ignore_errors=True)
