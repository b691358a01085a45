"""The whole policy: files read, names declared, then every statement resolved in order.

All problems of all files are collected before anything is refused, each with file:line:col
and, where one exists, a did-you-mean hint; they are reported in the order of the files and
of the lines within them.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ips.policy import ast
from ips.policy.diagnostics import Diagnostics, PolicyError, Span
from ips.policy.model import REPEATABLE, DetectSpec, Policy
from ips.policy.resolve.detectors import DetectorResolver
from ips.policy.resolve.files import Reader, SourceFiles, os_reason
from ips.policy.resolve.rules import RuleResolver
from ips.policy.resolve.values import Values


class Resolver:
    def __init__(self, reader: Reader, root: Path) -> None:
        self.diags = Diagnostics()
        self.files = SourceFiles(reader, root, self.diags)
        self.values = Values(self.files)
        self.detectors = DetectorResolver(self.values)
        self.rules = RuleResolver(self.values)
        self._sids: dict[int, Span] = {}

    def run_file(self, path: Path) -> Policy:
        display = str(path)
        try:
            text = self.files.reader(path)
        except (OSError, ValueError) as exc:
            span = Span(display, 1, 1, 1, 1)
            self.diags.error(span, f"cannot read policy: {os_reason(exc)}", code="io")
            raise PolicyError(self.diags.items, self.files.sources) from None
        return self.run_text(text, display, path)

    def run_text(self, text: str, display: str, path: Path) -> Policy:
        files = self.files
        with cycle_collection_paused():
            files.load(text, display, path.resolve(), [])
            policy = self._resolve(files.statements)
            # Before the check: a site file that cannot be read is an error of the policy.
            policy.geo_dir, policy.geo_sites = self.values.geo.display_data()
        if self.diags.errors:
            order = {f: i for i, f in enumerate(files.files)}
            self.diags.items.sort(
                key=lambda d: (order.get(d.span.file, len(order)), d.span.line, d.span.col)
            )
            raise PolicyError(self.diags.items, files.sources)
        policy.sources = files.sources
        policy.files = files.files
        policy.digest = policy_digest(files)
        policy.warnings = [d for d in self.diags.items if d.severity == "warning"]
        return policy

    def _resolve(self, statements: list[ast.Statement]) -> Policy:
        """The policy of these statements. Consumes the list: each statement is let go once
        resolved, so that the syntax tree of a large policy and its rules are not in memory
        together (a 200,000-line policy: a few hundred MB less at the peak)."""
        policy = Policy()
        self.values.declare(statements)
        policy.tables = self.values.tables
        detects = [s for s in statements if isinstance(s, ast.DetectStmt)]
        statements.reverse()
        while statements:
            stmt = statements.pop()
            handler = STATEMENTS.get(type(stmt))
            if handler is not None:
                handler(self, stmt, policy)
            del stmt
        self.detectors.check_slowscan(policy, detects)
        self.values.check_table_sizes(policy)  # after the options: the limit is one
        return policy

    # ---- one handler per statement (defines and tables are declared before) ----------------------

    def option(self, stmt: ast.OptionStmt, policy: Policy) -> None:
        self.values.option(stmt, policy)

    def detect(self, stmt: ast.DetectStmt, policy: Policy) -> None:
        spec = self.detectors.resolve(stmt)
        if spec is None:
            return
        earlier = policy.detectors.get(spec.name)
        if earlier is None:
            policy.detectors[spec.name] = spec
            return
        key = repeat_key(spec, policy)
        if key is None:
            again = "per src and once per dst" if spec.name in REPEATABLE else None
            self.diags.error(
                stmt.name_span,
                f"detector '{spec.name}' is already configured at {earlier.span}",
                f"a flood may be given twice: once {again}" if again else None,
                code="duplicate",
            )
            return
        spec.key = key
        policy.detectors[key] = spec

    def rule(self, stmt: ast.RuleStmt, policy: Policy) -> None:
        rule = self.rules.resolve(stmt, len(policy.rules))
        if rule is None:
            return
        if rule.sid is not None:
            if rule.sid in self._sids:
                self.diags.error(
                    stmt.span,
                    f"sid {rule.sid} is already used at {self._sids[rule.sid]}",
                    code="duplicate",
                )
            self._sids[rule.sid] = stmt.span
        policy.rules.append(rule)


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Python's cycle collector off while a policy is read. Syntax nodes and rules hold no
    reference cycles, so it would find nothing among them; but it is triggered by the count
    of new objects and then walks all of them, again and again while millions are made:
    reading a 200,000-line policy took three times as long with it (issue 19, item 5).
    Memory is still freed as usual (reference counting); collection resumes afterwards.

    At the end, the objects made meanwhile go straight to the oldest generation (freeze, then
    unfreeze, moves them there without a scan): otherwise the first collection after would
    walk them all at once (a second of the 200,000 lines' time). They are scanned with the
    other long-lived objects, at the next full collection; garbage among them is collected
    then. Skipped when someone else froze objects: unfreeze would undo that."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def policy_digest(files: SourceFiles) -> str:
    """sha256 of everything the policy was made of: each policy file and each table file,
    by name and content. A changed blocklist is a changed policy (`status` must say so).
    Without table files, the digest is what it always was."""
    digest = hashlib.sha256()
    for f in files.files:
        digest.update(f.encode() + b"\0" + files.sources[f].encode() + b"\0")
    for path, text in files.table_texts.items():
        digest.update(b"table\0" + path.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


STATEMENTS: dict[type[ast.Statement], Callable[[Resolver, Any, Policy], None]] = {
    ast.OptionStmt: Resolver.option,
    ast.DetectStmt: Resolver.detect,
    ast.RuleStmt: Resolver.rule,
}


def repeat_key(spec: DetectSpec, policy: Policy) -> str | None:
    """The key of a detector given again (its first line has the name as key): volume-N for
    the Nth `detect volume`, NAME-PER for a flood's line with the other `per`; None when it
    may not be given again (another detector, or a flood's `per` given twice)."""
    if spec.name == "volume":
        n = 2
        while f"volume-{n}" in policy.detectors:
            n += 1
        return f"volume-{n}"
    if spec.name not in REPEATABLE:
        return None
    per = str(spec.params["per"])
    taken = [d for d in policy.detectors.values() if d.name == spec.name]
    if any(d.params["per"] == per for d in taken):
        return None
    return f"{spec.name}-{per}"
