"""The sans-I/O rule, checked: the core and the engine import no sockets, no subprocess and no
clock; imports only point down the layers of every package; and no import cycle anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "ips"

# Modules that must stay pure: bytes and `now` in, decisions out.
PURE = [
    *sorted((ROOT / "core").glob("*.py")),
    *sorted((ROOT / "detect").glob("*.py")),
    *sorted((ROOT / "app").glob("*.py")),
    *sorted((ROOT / "engine").glob("*.py")),
    *sorted((ROOT / "translate").rglob("*.py")),  # the nft package too
    *sorted((ROOT / "evaluate").glob("*.py")),  # labelled evaluation: detections in, counts out
    ROOT / "policy" / "compile.py",
    ROOT / "policy" / "model.py",
    ROOT / "policy" / "explain.py",
    ROOT / "policy" / "ast.py",
    ROOT / "policy" / "names.py",
    ROOT / "policy" / "diagnostics.py",
    # the mixer's planning: flows in, placements out, a seeded generator passed in (issue 23)
    ROOT / "mix" / "spec.py",
    ROOT / "mix" / "plan.py",
    ROOT / "mix" / "rewrite.py",
]
FORBIDDEN = {
    "socket", "subprocess", "time", "datetime", "select", "selectors", "asyncio", "threading",
    "multiprocessing", "random", "signal", "os", "io", "shutil", "pathlib",
}  # fmt: skip

# The layers of the target layout (issue 18): which of our packages each one may import,
# besides itself. A package of ips/ missing here fails the test, so a new one gets a place.
# Import direction: cli -> daemon -> io/kernel/sinks/control -> engine -> policy/detect ->
# core, with presentation (views) beside control and the lab on its own.
LOWER = {
    "core": set(),
    "policy": {"core", "geo"},  # the resolver turns geo clauses into networks (issue 22)
    "translate": {"core", "policy"},
    "detect": {"core", "policy"},
    "app": {"core"},  # application-layer parsers and reassembly (issue 20): pure
    "geo": {"core", "safefile"},  # country, ASN, site file, service names (issue 22)
    # fast (issue 24): the compiled packet path; its loader reads IPSCTL_PURE
    "fast": {"core", "policy"},
    "engine": {"core", "policy", "detect", "translate", "app", "fast"},
    "kernel": {"core", "policy", "translate", "safefile"},
    "io": {"core", "policy", "detect", "translate", "engine", "kernel"},
    # app: EVE's objects, community_id; geo: the fields of who is on the other end
    "sinks": {"core", "policy", "engine", "safefile", "app", "geo"},
    "control": set(),  # the protocol is for any client (the CLI, a console): a leaf
    "views": {"core", "policy", "engine", "control", "sinks", "geo"},
    "heap": set(),
    "safefile": set(),
    "privileges": set(),
    "lab": {"core", "io"},  # io: `replay --to` reads the capture it sends (lab/wire.py)
    # store (issue 21): the flow and event store; its filters are `flows`' (views.flows)
    # geo (issue 22): a flow's countries, AS numbers and service name in its row
    # privileges: the store's writer process holds no capabilities
    "store": {"core", "policy", "sinks", "views", "geo", "privileges"},
    "replay": {"core", "policy", "detect", "engine", "io", "sinks", "safefile", "geo", "fast"},
    # mix (issue 23): captures mixed into a labelled one; reads them with io.pcap
    "mix": {"core", "io"},
    # evaluate (issue 23): detections scored against mix's labels; pure
    "evaluate": {"core", "mix"},
    "daemon": {
        "core",
        "policy",
        "translate",
        "detect",
        "engine",
        "kernel",
        "io",
        "sinks",
        "control",
        "views",
        "heap",
        "privileges",
        "replay",
        "safefile",
        "geo",
        "store",
    },
}
LOWER["cli"] = set(LOWER)


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


def layer_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


PACKAGES = sorted({layer_of(p) for p in ROOT.rglob("*.py")} - {"__init__"})


@pytest.mark.parametrize("layer", PACKAGES)
def test_imports_point_down_the_layers(layer: str) -> None:
    assert layer in LOWER, f"ips/{layer} has no place in the layer table (LOWER)"
    allowed = {f"ips.{name}" for name in LOWER[layer] | {layer}}
    files = sorted(p for p in ROOT.rglob("*.py") if layer_of(p) == layer)
    for path in files:
        internal = {name for name in imports_of(path) if name.startswith("ips.")}
        bad = {n for n in internal if not any(n == a or n.startswith(a + ".") for a in allowed)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)} (layer {layer})"


# ---- no import cycles ----------------------------------------------------------------------


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it imports (at any depth of the file, lazy
    imports too: a cycle through a function-level import is still a cycle of the design)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # `from pkg import mod` imports the module pkg.mod when there is one.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name in a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph(ROOT)) == []


def test_the_cycle_check_finds_a_synthetic_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")  # lazy, relative
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import a, c\n")  # imports them, no cycle
    graph = import_graph(pkg)
    assert graph["pkg.d"] == {"pkg.a", "pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_the_check_can_fail(tmp_path: Path) -> None:
    """Guard against a check that cannot fail: a module with a socket import is caught."""
    sample = tmp_path / "impure.py"
    sample.write_text("import socket\nfrom time import monotonic\n")
    assert {"socket", "time"} <= {n.split(".")[0] for n in imports_of(sample)}


def test_the_upper_floors_point_down_too() -> None:
    """The control protocol is for any client (the CLI, a console): it imports nothing of
    ours. Presentation (views) and the daemon never import the CLI, and the daemon's
    packages below it (io, kernel, sinks) never import the daemon."""
    assert not {n for n in imports_of(ROOT / "control.py") if n.startswith("ips")}
    below_cli = [*(ROOT / "views").glob("*.py"), *(ROOT / "daemon").glob("*.py")]
    below_daemon = [p for d in ("io", "kernel", "sinks") for p in (ROOT / d).glob("*.py")]
    for path, forbidden in [
        *((p, "ips.cli") for p in below_cli),
        *((p, "ips.daemon") for p in below_daemon),
    ]:
        bad = {n for n in imports_of(path) if n == forbidden or n.startswith(forbidden + ".")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_test_files_have_unique_names() -> None:
    """pytest imports test files by their base name (the folders have no __init__.py): a
    name used in both tests/pure and tests/lab breaks the collection of the whole suite,
    though each folder alone still runs."""
    tests = ROOT.parent / "tests"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
