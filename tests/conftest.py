"""Fixtures shared by the test files."""

from __future__ import annotations

import os
from pathlib import Path

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
