"""The sans-I/O rule, checked: the core and the engine import no sockets, no subprocess and no
clock, and imports only point down the layers (cli -> io/sinks -> engine -> policy/detect ->
core)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ips"

# Modules that must stay pure: bytes and `now` in, decisions out.
PURE = [
    *sorted((ROOT / "core").glob("*.py")),
    *sorted((ROOT / "detect").glob("*.py")),
    *sorted((ROOT / "engine").glob("*.py")),
    ROOT / "policy" / "compile.py",
    ROOT / "policy" / "model.py",
    ROOT / "policy" / "explain.py",
    ROOT / "policy" / "ast.py",
    ROOT / "policy" / "names.py",
    ROOT / "policy" / "diagnostics.py",
]
FORBIDDEN = {
    "socket", "subprocess", "time", "datetime", "select", "selectors", "asyncio", "threading",
    "multiprocessing", "random", "signal", "os", "io", "shutil", "pathlib",
}  # fmt: skip

# Which of our packages each layer may import.
ALLOWED_INTERNAL = {
    "core": {"ips.core"},
    "policy": {"ips.core", "ips.policy"},
    "detect": {"ips.core", "ips.policy", "ips.detect"},
    "engine": {"ips.core", "ips.policy", "ips.detect", "ips.engine"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_do_no_io(path: Path) -> None:
    bad = {name for name in imports_of(path) if name.split(".")[0] in FORBIDDEN}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    ("layer", "files"),
    [
        ("core", sorted((ROOT / "core").glob("*.py"))),
        ("policy", sorted((ROOT / "policy").glob("*.py"))),
        ("detect", sorted((ROOT / "detect").glob("*.py"))),
        ("engine", sorted((ROOT / "engine").glob("*.py"))),
    ],
)
def test_imports_point_down_the_layers(layer: str, files: list[Path]) -> None:
    allowed = ALLOWED_INTERNAL[layer]
    for path in files:
        internal = {name for name in imports_of(path) if name.startswith("ips.") or name == "ips"}
        bad = {name for name in internal if not any(name.startswith(a) for a in allowed)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)} (layer {layer})"


def test_the_check_can_fail(tmp_path: Path) -> None:
    """Guard against a check that cannot fail: a module with a socket import is caught."""
    sample = tmp_path / "impure.py"
    sample.write_text("import socket\nfrom time import monotonic\n")
    assert {"socket", "time"} <= {n.split(".")[0] for n in imports_of(sample)}
