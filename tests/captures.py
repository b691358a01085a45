"""Where the shared captures are (../shared/pcaps/, beside the checkout; see its README.md).

A module of its own, not conftest.py: tests/pure and tests/lab each have a conftest of their
own, so `from conftest import …` would find whichever the run put first on the path."""

from __future__ import annotations

from pathlib import Path

PCAPS = Path(__file__).resolve().parents[2] / "shared" / "pcaps"


def pcap_names() -> list[str]:
    """The capture files, for parametrize (empty when the folder is missing)."""
    if not PCAPS.is_dir():
        return []
    return sorted(p.name for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
