"""Files and includes: reading a policy and the files it includes into one list of statements.

The only part of the resolver that touches the file system, through a Reader (the daemon
hands over the texts `ipsctl apply` read, so it runs exactly what was validated). Every file
read is kept by its display name, for the diagnostics' source lines and the policy's digest.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from ips.policy import ast
from ips.policy.diagnostics import Diagnostics, Span, did_you_mean
from ips.policy.parser import parse_text

MAX_INCLUDE_DEPTH = 16
MAX_FILE_BYTES = 64 * 1024 * 1024  # a policy, include or table file

Reader = Callable[[Path], str]


def read_text(path: Path) -> str:
    # Only regular files: a FIFO would block the reader (and the daemon's apply) forever, a
    # device such as /dev/zero never ends. O_NONBLOCK lets open() of a FIFO return at once.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start}: {data[exc.start]:#04x})") from exc


def os_reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class SourceFiles:
    """The files of one policy: their texts by display name in the order read, and their
    statements (includes replaced by the statements of the included file)."""

    def __init__(self, reader: Reader, root: Path, diags: Diagnostics) -> None:
        self.reader = reader
        self.root = root  # includes may not reach outside this directory
        self.diags = diags
        self.sources: dict[str, str] = {}
        self.files: list[str] = []
        self.statements: list[ast.Statement] = []
        self.table_texts: dict[str, str] = {}  # table file path -> text, for the digest
        self._real_paths: dict[str, Path] = {}  # display name -> resolved path
        self._included: dict[Path, Span] = {}

    def load(self, text: str, display: str, real: Path, stack: list[Path]) -> None:
        """Parse one file's text and take its statements, following its includes."""
        self.sources[display] = text
        self.files.append(display)
        self._real_paths[display] = real
        parsed = parse_text(text, display, self.diags)
        stack = [*stack, real]
        for stmt in parsed.statements:
            if isinstance(stmt, ast.Include):
                self._include(stmt, real, stack)
            else:
                self.statements.append(stmt)

    def _include(self, stmt: ast.Include, including: Path, stack: list[Path]) -> None:
        target = Path(stmt.path)
        if not target.is_absolute():
            target = including.parent / target
        real = target.resolve()
        if real in stack:
            chain = " -> ".join(p.name for p in [*stack[stack.index(real) :], real])
            self.diags.error(stmt.path_span, f"include loop: {chain}", code="include")
            return
        if len(stack) >= MAX_INCLUDE_DEPTH:
            self.diags.error(
                stmt.path_span, f"includes nested deeper than {MAX_INCLUDE_DEPTH}", code="include"
            )
            return
        if not real.is_relative_to(self.root):
            self.diags.error(
                stmt.path_span,
                f"include '{stmt.path}' is outside the policy directory {self.root}",
                "keep included files in the policy's directory (or below it)",
                code="include",
            )
            return
        if real in self._included:
            # A file reached twice (a.rules and b.rules both include common.rules) is read
            # once, where it was first included: its definitions are not duplicates.
            self.diags.warning(
                stmt.path_span,
                f"'{stmt.path}' is already included at {self._included[real]}; "
                "it is read only once",
                code="include",
            )
            return
        self._included[real] = stmt.path_span
        try:
            text = self.reader(real)
        except (OSError, ValueError) as exc:
            hint = None
            if isinstance(exc, FileNotFoundError) and real.parent.is_dir():
                close = did_you_mean(real.name, [p.name for p in real.parent.iterdir()])
                if close:
                    # keep the directory the user wrote, so the suggestion resolves
                    name = close.split("'")[1]
                    hint = f"did you mean '{Path(stmt.path).parent / name}'?"
            self.diags.error(
                stmt.path_span,
                f"cannot include '{stmt.path}': {os_reason(exc)}",
                hint,
                code="include",
            )
            return
        try:
            display = str(real.relative_to(Path.cwd()))
        except ValueError:
            display = str(real)
        self.load(text, display, real, stack)

    def real_path(self, display: str) -> Path:
        """The resolved path of a file read, by its display name: what a path written in
        it (a table file, a site file) is relative to."""
        return self._real_paths.get(display, Path(display).resolve())

    def read_table_file(self, decl: ast.TableDecl) -> tuple[Path, str] | None:
        """The path and text of a `table NAME file "…"`, relative to the file that declares
        it; None when it cannot be read (reported)."""
        assert decl.path is not None
        including = self._real_paths.get(decl.span.file, Path(decl.span.file).resolve())
        path = Path(decl.path)
        if not path.is_absolute():
            path = including.parent / path
        # Unlike includes, table files may live anywhere (pf's `table <x> file "/etc/…"`):
        # they hold addresses, not rules.
        path = path.resolve()
        try:
            text = self.reader(path)
        except (OSError, ValueError) as exc:
            self.diags.error(
                decl.span, f"cannot read table file '{decl.path}': {os_reason(exc)}", code="io"
            )
            return None
        self.table_texts[str(path)] = text
        return path, text
