"""Policy diagnostics: every problem carries file:line:col, is shown with its source line and a
caret, and may carry a did-you-mean hint. All problems of a file are collected in one pass."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class Span(NamedTuple):
    """A region of a policy file; lines and columns count from 1, end_col is exclusive.
    (A NamedTuple: a large policy makes hundreds of thousands of these.)"""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(slots=True)
class Diagnostic:
    span: Span
    message: str
    hint: str | None = None
    severity: str = "error"  # error | warning
    code: str = "policy"  # a stable machine-readable kind: syntax, unknown-name, type, …

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.span.file,
            "line": self.span.line,
            "col": self.span.col,
            "end_line": self.span.end_line,
            "end_col": self.span.end_col,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass
class Diagnostics:
    """Collects problems; the resolver keeps going after each so one run reports them all."""

    items: list[Diagnostic] = field(default_factory=list)
    # Kept as they come: the resolver asks after every rule whether it added an error, and
    # counting the list each time made a policy full of errors quadratic to check.
    error_count: int = 0

    def error(
        self, span: Span, message: str, hint: str | None = None, code: str = "policy"
    ) -> None:
        self.items.append(Diagnostic(span, message, hint, "error", code))
        self.error_count += 1

    def warning(
        self, span: Span, message: str, hint: str | None = None, code: str = "policy"
    ) -> None:
        self.items.append(Diagnostic(span, message, hint, "warning", code))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    def __bool__(self) -> bool:
        return self.error_count > 0


class PolicyError(Exception):
    """Raised when a policy has errors; carries every diagnostic and the sources to show."""

    def __init__(self, diagnostics: list[Diagnostic], sources: Mapping[str, str]) -> None:
        self.diagnostics = diagnostics
        self.sources = dict(sources)
        first = diagnostics[0] if diagnostics else None
        super().__init__(f"{first.span}: {first.message}" if first else "policy error")

    def render(self) -> str:
        return render(self.diagnostics, self.sources)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to a misspelt word, as a hint, or None."""
    pool = sorted(set(choices))
    matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    if not matches and len(word) > 2:
        # a prefix the user started typing ("estab" -> "established")
        matches = [c for c in pool if c.startswith(word)][:1]
    return f"did you mean '{matches[0]}'?" if matches else None


# As compilers do (gcc's -fmax-errors, rustc): a policy with thousands of errors is shown by its
# first ones, then a count of the rest. `ipsctl check --format json` still lists every one.
MAX_RENDERED = 50


def render(
    diagnostics: Iterable[Diagnostic], sources: Mapping[str, str], limit: int = MAX_RENDERED
) -> str:
    """Human-readable diagnostics in the style of compilers: location, message, line, caret.
    The first `limit` are shown, then one line "… and N more errors" for the rest."""
    out: list[str] = []
    file_lines: dict[str, list[str]] = {}  # each file split once, not once per diagnostic
    shown = 0
    rest: dict[str, int] = {}
    for d in diagnostics:
        if shown >= limit:
            rest[d.severity] = rest.get(d.severity, 0) + 1
            continue
        shown += 1
        out.append(f"{d.span}: {d.severity}: {d.message}")
        lines = file_lines.get(d.span.file)
        if lines is None:
            text = sources.get(d.span.file)
            # split on \n only: positions count \n, and splitlines() also breaks at \f, \x85, …
            lines = text.split("\n") if text is not None else []
            file_lines[d.span.file] = lines
        if 1 <= d.span.line <= len(lines):
            src = lines[d.span.line - 1].expandtabs(1)
            gutter = f"{d.span.line:>5} | "
            out.append(gutter + src)
            width = 1
            if d.span.end_line == d.span.line and d.span.end_col > d.span.col:
                width = d.span.end_col - d.span.col
            width = max(1, min(width, len(src) - d.span.col + 2))
            out.append(
                " " * (len(gutter) - 2) + "| " + " " * (d.span.col - 1) + "^" + "~" * (width - 1)
            )
        if d.hint:
            out.append(f"   help: {d.hint}")
    if rest:
        counts = " and ".join(
            f"{n:,} more {severity}{'s' if n != 1 else ''}" for severity, n in sorted(rest.items())
        )
        out.append(f"… and {counts} (not shown: the first {limit} are)")
    return "\n".join(out)
