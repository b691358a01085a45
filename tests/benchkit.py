"""What the tests of bench/ share: the bench scripts loaded as modules, or run as their docs
say (from the checkout, output captured)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]  # the repository
BENCH = ROOT / "bench" / "lab.py"


def bench_module() -> ModuleType:
    """bench/lab.py as a module (registered as bench_lab: its dataclasses look it up there)."""
    spec = importlib.util.spec_from_file_location("bench_lab", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_lab"] = mod
    spec.loader.exec_module(mod)
    return mod


def run_bench(script: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A bench script, run as its docs line says (from the checkout, output captured)."""
    return subprocess.run(
        [sys.executable, str(script), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
