"""systemd/ipsd.service is valid (systemd-analyze verify) and hardened as documented."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ipsd.service"


def directives(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: systemd-analyze is missing (apt package systemd)")
        pytest.skip("systemd-analyze is missing")
    # verify checks that ExecStart binaries exist: point them at this venv's ipsctl
    ipsctl = Path(sys.executable).parent / "ipsctl"
    assert ipsctl.exists()
    unit = tmp_path / "ipsd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ipsctl", str(ipsctl)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if "ipsd.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_unit_restarts_and_is_hardened() -> None:
    d = directives(UNIT.read_text())
    assert d["Restart"] == "on-failure"
    assert d["NoNewPrivileges"] == "yes"
    assert d["ProtectSystem"] == "strict"
    assert set(d["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert "ipsctl run --policy" in d["ExecStart"]
    assert "ipsctl apply" in d["ExecReload"]
