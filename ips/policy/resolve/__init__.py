"""Syntax tree -> resolved Policy: includes, defines, tables, names, and every semantic check.

By concern: files.py reads the files and follows includes; values.py knows the names a policy
declares (defines, tables) and reads values (addresses, ports, protocols, durations, options);
rules.py and detectors.py resolve one statement each, with one handler per clause or option;
resolver.py runs them over the whole policy. The entry points are here.
"""

from __future__ import annotations

from pathlib import Path

from ips.policy.diagnostics import PolicyError
from ips.policy.model import Policy
from ips.policy.resolve.files import MAX_FILE_BYTES, MAX_INCLUDE_DEPTH, Reader, read_text
from ips.policy.resolve.resolver import Resolver
from ips.policy.resolve.values import MAX_DEFINE_DEPTH, parse_network

__all__ = [
    "MAX_DEFINE_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_INCLUDE_DEPTH",
    "PolicyError",
    "Reader",
    "load_policy",
    "load_policy_collecting",
    "load_policy_sources",
    "load_policy_text",
    "parse_network",
    "read_text",
]


def load_policy(
    path: str | Path, *, include_root: str | Path | None = None, reader: Reader = read_text
) -> Policy:
    """Read, parse and resolve a policy file and its includes. Raises PolicyError.

    include_root: includes may not reach outside this directory (default: the directory of
    the top file)."""
    path = Path(path)
    root = Path(include_root).resolve() if include_root else path.resolve().parent
    return Resolver(reader, root).run_file(path)


def load_policy_collecting(path: str | Path) -> tuple[Policy, dict[str, str]]:
    """load_policy that also returns every file it read, by absolute path: what `ipsctl
    apply` hands to the daemon, so the daemon runs exactly what was validated."""
    read: dict[str, str] = {}

    def recording_reader(p: Path) -> str:
        text = read_text(p)
        read[str(Path(p).resolve())] = text
        return text

    policy = load_policy(Path(path).resolve(), reader=recording_reader)
    return policy, read


def load_policy_sources(main: str, sources: dict[str, str]) -> Policy:
    """Resolve a policy from files handed over as text (see load_policy_collecting)."""

    def reader(p: Path) -> str:
        key = str(Path(p).resolve())
        if key not in sources:
            raise FileNotFoundError(2, "not among the files handed over", key)
        return sources[key]

    return load_policy(main, reader=reader)


def load_policy_text(text: str, name: str = "<policy>", *, base_dir: str | Path = ".") -> Policy:
    """Resolve a policy given as text (includes are read relative to base_dir)."""
    resolver = Resolver(read_text, Path(base_dir).resolve())
    return resolver.run_text(text, name, Path(base_dir) / name)
