"""Every test in this folder runs in a namespace lab: it needs root, network namespaces,
nftables or NFQUEUE and real tools. They are marked `lab` here, once, so that
`pytest -m "not lab"` runs the pure tests anywhere, without root, in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest hook sees every collected item of the session, not only this folder's.
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.lab)
