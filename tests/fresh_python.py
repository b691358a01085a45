"""Python code run in a fresh interpreter, for the tests of the compiled modules' loaders: what
an import does at start (IPSCTL_PURE read once, a module missing) is seen only there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def hiding(module: str) -> str:
    """Code that makes `import module` fail from then on, as a missing build does."""
    return f"""
import sys
class Hidden:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise ImportError("hidden by the test")
        return None
sys.meta_path.insert(0, Hidden())
"""


def run_fresh(code: str, **env: str) -> str:
    """What `code` prints (stripped), run by a new interpreter in the checkout with `env`
    added to this one's; its failure fails the test."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
