"""Fixtures shared by the test files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real captures from public test suites, beside the checkout (see ../shared/pcaps/README.md).
PCAPS = Path(__file__).resolve().parents[2] / "shared" / "pcaps"


def pcap_names() -> list[str]:
    """The capture files, for parametrize (empty when the folder is missing)."""
    if not PCAPS.is_dir():
        return []
    return sorted(p.name for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))


@pytest.fixture(scope="session")
def pcaps_dir() -> Path:
    """The shared captures; missing: skip, or fail under CI=true."""
    if not PCAPS.is_dir():
        msg = f"shared captures not found at {PCAPS}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return PCAPS
