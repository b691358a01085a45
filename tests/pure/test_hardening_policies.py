"""Hostile policy files: include loops and escapes, files that never end (FIFOs, devices),
huge files, deep nesting, non-UTF-8 bytes, byte-level mutations. Each gets clean diagnostics
(no traceback) within hard bounds of CPU time and address space; sent to a running daemon, the
running policy stays and keeps enforcing.

tests/pure/test_policy_fuzz.py and tests/pure/test_policy_errors.py cover text-level fuzzing
and the single-file cases; this file covers what needs files and processes, and
tests/lab/test_hardening_policies_lab.py what needs the daemon."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ips.policy.diagnostics import PolicyError
from ips.policy.model import Policy
from ips.policy.resolve import MAX_FILE_BYTES, load_policy
from ips.policy.resolve import read_text as _read_text

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_RULES = ROOT / "policies" / "gateway.rules"
CPU_SECONDS = 60  # hard bounds for one `ipsctl check` of a hostile file
ADDRESS_SPACE = 1 << 30  # 1 GiB


def _limits() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def check(path: Path) -> subprocess.CompletedProcess[str]:
    """`ipsctl check PATH` under a CPU-time and address-space limit (the kernel kills it past
    them: the test then fails on the exit status), with a wall-clock guard against blocking."""
    out = subprocess.run(
        [sys.executable, "-m", "ips.cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        preexec_fn=_limits,
    )
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.returncode in (0, 1), (out.returncode, out.stderr[-2000:])
    return out


def errors(path: Path, reader=_read_text) -> list[str]:  # type: ignore[no-untyped-def]
    try:
        load_policy(path, reader=reader)
    except PolicyError as exc:
        return [d.message for d in exc.diagnostics if d.severity == "error"]
    return []


def test_include_loop_through_three_files(tmp_path: Path) -> None:
    (tmp_path / "a.rules").write_text('accept proto icmp\ninclude "b.rules"\n')
    (tmp_path / "b.rules").write_text('include "sub/c.rules"\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.rules").write_text('include "../a.rules"\n')
    assert errors(tmp_path / "a.rules") == [
        "include loop: a.rules -> b.rules -> c.rules -> a.rules"
    ]


def test_include_cannot_escape_its_directory_and_nothing_outside_is_read(tmp_path: Path) -> None:
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    outside = tmp_path / "secret.rules"
    outside.write_text("accept\n")
    (policy_dir / "link.rules").symlink_to(outside)
    (policy_dir / "linkdir").symlink_to(tmp_path)
    read: list[Path] = []

    def reader(p: Path) -> str:
        read.append(Path(p).resolve())
        return _read_text(p)

    for target in (
        "../secret.rules",
        str(outside),
        "link.rules",
        "linkdir/secret.rules",
        "sub/../../secret.rules",
        "/etc/passwd",
    ):
        main = policy_dir / "main.rules"
        main.write_text(f'accept proto icmp\ninclude "{target}"\n')
        found = errors(main, reader)
        assert len(found) == 1 and "is outside the policy directory" in found[0], (target, found)
    assert set(read) == {(policy_dir / "main.rules").resolve()}  # nothing else was opened


def test_fifo_include_and_endless_table_files_are_refused_without_blocking(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / "fifo.rules")  # no writer: reading it would block forever
    (tmp_path / "main.rules").write_text('include "fifo.rules"\naccept\n')
    out = check(tmp_path / "main.rules")
    assert out.returncode == 1
    assert "cannot include 'fifo.rules': not a regular file" in out.stderr
    (tmp_path / "dev.rules").write_text('table x file "/dev/zero"\naccept from @x\n')
    out = check(tmp_path / "dev.rules")
    assert "cannot read table file '/dev/zero': not a regular file" in out.stderr
    (tmp_path / "dir.rules").write_text(f'table x file "{tmp_path}"\naccept from @x\n')
    out = check(tmp_path / "dir.rules")
    assert out.returncode == 1 and "cannot read table file" in out.stderr


def test_a_file_over_the_size_limit_is_refused_within_bounds(tmp_path: Path) -> None:
    huge = tmp_path / "huge.rules"
    with open(huge, "wb") as f:  # sparse: no disk used
        f.truncate(MAX_FILE_BYTES + 1)
    out = check(huge)
    assert out.returncode == 1 and "larger than 64 MiB" in out.stderr
    (tmp_path / "main.rules").write_text('include "huge.rules"\n')
    out = check(tmp_path / "main.rules")
    assert "cannot include 'huge.rules': larger than 64 MiB" in out.stderr


def test_large_legal_policy_loads_within_bounds(tmp_path: Path) -> None:
    lines = ["set default drop"]
    for i in range(20_000):
        lines.append(f"accept proto tcp from 10.{i // 250}.{i % 250}.0/24 port {1 + i % 60000}")
    big = tmp_path / "big.rules"
    big.write_text("\n".join(lines) + "\n")
    out = check(big)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rules      20000 (20000 accept)" in out.stdout, out.stdout


def test_deep_nesting_and_one_line_megabytes_are_errors_within_bounds(tmp_path: Path) -> None:
    cases = {
        "braces.rules": "accept to port " + "{" * 200_000 + "80" + "}" * 200_000,
        "bang.rules": "accept from " + "!" * 200_000 + "10.0.0.1",
        "define.rules": "\n".join(f"define d{i} = $d{i + 1}" for i in range(5_000))
        + "\ndefine d5000 = 10.0.0.1\naccept from $d0\n",
        "line.rules": "accept from { " + ", ".join("10.0.0.1" for _ in range(300_000)) + " }",
        "comment.rules": "#" * (8 << 20),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        out = check(tmp_path / name)
        if out.returncode == 1:
            assert f"{name}:" in out.stderr and "policy NOT applied" in out.stderr, name


def test_non_utf8_bytes_anywhere(tmp_path: Path) -> None:
    samples = {
        "latin1.rules": b'drop alert "caf\xe9"\n',
        "utf16.rules": "accept\n".encode("utf-16"),
        "nul.rules": b"accept\x00 proto tcp\n",
        "overlong.rules": b"accept from \xc0\xaf\n",
        "surrogate.rules": b"accept \xed\xa0\x80\n",
    }
    for name, data in samples.items():
        (tmp_path / name).write_bytes(data)
        found = errors(tmp_path / name)
        assert found, name
        (tmp_path / "inc.rules").write_text(f'include "{name}"\n')
        found_inc = errors(tmp_path / "inc.rules")
        if name != "nul.rules":  # NUL is valid UTF-8: a syntax error, not a reading error
            assert found[0].startswith("cannot read policy: not UTF-8 text (byte "), found
            assert found_inc[0].startswith(f"cannot include '{name}': not UTF-8"), found_inc


GATEWAY_BYTES = GATEWAY_RULES.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(GATEWAY_BYTES) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(GATEWAY_BYTES)),
)
def test_byte_mutated_policy_files(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(GATEWAY_BYTES)
    for at, value in flips:
        data[at] = value
    path = Path(f"/dev/shm/ipsctl-hostile-{os.getpid()}.rules")
    for candidate in (bytes(data), bytes(data[:cut])):
        path.write_bytes(candidate)
        try:
            result: object = load_policy(path)
        except PolicyError as exc:
            result = exc
            assert any(d.severity == "error" for d in exc.diagnostics)
            assert exc.render().startswith(str(path))
        finally:
            path.unlink()
        assert isinstance(result, Policy | PolicyError)


# ---- the running daemon keeps its policy ----------------------------------------------------
