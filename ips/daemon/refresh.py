"""Reputation lists read again while the daemon runs: `table spamhaus file "drop.txt" refresh 1h`.

Every `refresh` period the supervisor reads the table's file again. When its text changed,
the policy is resolved again with the new text in place of the old (the same resolver as at
`ipsctl apply`, so the same checks: a bad line refuses the file unless the table says
`on-error skip`, a file with no address is refused unless it says `allow-empty`) and, only
if that succeeds, swapped in like an apply: the new named sets are loaded beside the old
ones and the rules move over in one transaction, so the kernel never holds half a list. A
refused file keeps the running set whole; the reason (file:line) goes to the daemon's log
and to `ipsctl status` (`tables`), and the file is read again at the next period.

The timing is here, as data (`RefreshClock`); the reading is a Reader (the supervisor's is
ips/policy/resolve/files.read_text), so the whole decision is testable without a daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ips.policy.diagnostics import PolicyError
from ips.policy.model import Policy, TableSpec
from ips.policy.resolve import Reader, load_policy_sources
from ips.policy.resolve.files import os_reason


@dataclass
class TableStatus:
    """What the last refresh of one table did (status `tables`)."""

    path: str
    refresh: float
    checked_at: float | None = None  # when the file was last read (wall clock)
    changed_at: float | None = None  # when a new text was last taken
    refused: int = 0  # refreshes whose file was refused (the old set kept)
    error: str | None = None  # why the last one was refused; None once one succeeds


@dataclass
class RefreshClock:
    """When each refreshed table is due (monotonic seconds), and what its last read did."""

    due: dict[str, float] = field(default_factory=dict)
    status: dict[str, TableStatus] = field(default_factory=dict)

    def tables(self, policy: Policy) -> list[TableSpec]:
        return [
            t
            for t in policy.tables.values()
            if t.kind == "file" and t.refresh is not None and t.path is not None
        ]

    def due_tables(self, policy: Policy, now: float) -> list[TableSpec]:
        """The tables to read again at NOW; a table new to the clock is due one period on."""
        out = []
        for table in self.tables(policy):
            assert table.refresh is not None and table.path is not None
            when = self.due.setdefault(table.name, now + table.refresh)
            self.status.setdefault(table.name, TableStatus(table.path, table.refresh))
            if now >= when:
                out.append(table)
                self.due[table.name] = now + table.refresh
        for name in list(self.due):  # tables the policy no longer has
            if name not in policy.tables:
                del self.due[name]
                self.status.pop(name, None)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {name: vars(s).copy() for name, s in self.status.items()}


@dataclass
class Refreshed:
    """The outcome of one refresh: a new policy and sources to swap in (None: nothing to
    do or refused), and the problems to report (each names its file and line)."""

    policy: Policy | None = None
    sources: dict[str, str] | None = None
    problems: list[str] = field(default_factory=list)


def refresh_tables(
    due: list[TableSpec],
    main: str,
    sources: dict[str, str],
    reader: Reader,
    clock: RefreshClock,
    wall: float,
) -> Refreshed:
    """Read the DUE tables' files again; a policy with their new texts when any changed and
    the result resolves, else none and the reasons."""
    new_sources = dict(sources)
    changed: list[TableSpec] = []
    out = Refreshed()
    for table in due:
        assert table.path is not None
        status = clock.status[table.name]
        status.checked_at = wall
        try:
            text = reader(Path(table.path))
        except (OSError, ValueError) as exc:
            status.refused += 1
            status.error = f"{table.path}: cannot read it: {os_reason(exc)}; the old set is kept"
            out.problems.append(f"table {table.name}: {status.error}")
            continue
        if new_sources.get(table.path) != text:
            new_sources[table.path] = text
            changed.append(table)
    if not changed:
        return out
    try:
        policy = load_policy_sources(main, new_sources)
    except PolicyError as exc:
        rendered = exc.render()
        for table in changed:
            status = clock.status[table.name]
            status.refused += 1
            status.error = rendered
        names = ", ".join(t.name for t in changed)
        out.problems.append(f"table {names}: the new file is refused, the old set kept:")
        out.problems.append(rendered)
        return out
    for table in changed:
        status = clock.status[table.name]
        status.changed_at, status.error = wall, None
    for warning in policy.warnings:  # `on-error skip`: the lines left out
        if warning.span.file in {t.path for t in changed}:
            out.problems.append(f"{warning.span.file}:{warning.span.line}: {warning.message}")
    out.policy, out.sources = policy, new_sources
    return out
