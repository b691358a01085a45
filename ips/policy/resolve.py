"""Syntax tree -> resolved Policy: includes, defines, tables, names, and every semantic check.

All problems of all files are collected before anything is refused, each with file:line:col
and, where one exists, a did-you-mean hint.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from ips.core.packet import PORT_PROTOS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP
from ips.policy import ast, names
from ips.policy.diagnostics import Diagnostics, PolicyError, Span, did_you_mean
from ips.policy.model import (
    BAN_TABLE,
    DETECTOR_SID_FIRST,
    DETECTOR_SID_LAST,
    DETECTORS,
    OPTIONS,
    AddrSpec,
    DetectSpec,
    IfaceSpec,
    LimitSpec,
    OptionSchema,
    Policy,
    PortSpec,
    RewriteSpec,
    RuleSpec,
    TableSpec,
)
from ips.policy.parser import parse_text

MAX_INCLUDE_DEPTH = 16
MAX_DEFINE_DEPTH = 32
MAX_FILE_BYTES = 64 * 1024 * 1024  # a policy, include or table file

Reader = Callable[[Path], str]


def _read_text(path: Path) -> str:
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


def load_policy(
    path: str | Path, *, include_root: str | Path | None = None, reader: Reader = _read_text
) -> Policy:
    """Read, parse and resolve a policy file and its includes. Raises PolicyError.

    include_root: includes may not reach outside this directory (default: the directory of
    the top file)."""
    path = Path(path)
    root = Path(include_root).resolve() if include_root else path.resolve().parent
    resolver = _Resolver(reader, root)
    return resolver.run_file(path)


def load_policy_collecting(path: str | Path) -> tuple[Policy, dict[str, str]]:
    """load_policy that also returns every file it read, by absolute path: what `ipsctl
    apply` hands to the daemon, so the daemon runs exactly what was validated."""
    read: dict[str, str] = {}

    def recording_reader(p: Path) -> str:
        text = _read_text(p)
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
    resolver = _Resolver(_read_text, Path(base_dir).resolve())
    return resolver.run_text(text, name, Path(base_dir) / name)


class _Resolver:
    def __init__(self, reader: Reader, root: Path) -> None:
        self.reader = reader
        self.root = root
        self.diags = Diagnostics()
        self.sources: dict[str, str] = {}
        self.files: list[str] = []
        self.defines: dict[str, ast.Define] = {}
        self.table_decls: dict[str, ast.TableDecl] = {}
        self.tables: dict[str, TableSpec] = {}
        self.statements: list[ast.Statement] = []
        self._expanded: dict[str, tuple[list[ast.Item], bool]] = {}
        self._real_paths: dict[str, Path] = {}  # display name -> resolved path
        self._included: dict[Path, Span] = {}
        self._ban_table_reported = False  # a missing `table banned`: one error, not six

    # ---- files and includes -------------------------------------------------------------------

    def run_file(self, path: Path) -> Policy:
        display = str(path)
        try:
            text = self.reader(path)
        except (OSError, ValueError) as exc:
            span = Span(display, 1, 1, 1, 1)
            self.diags.error(span, f"cannot read policy: {_os_reason(exc)}", code="io")
            raise PolicyError(self.diags.items, self.sources) from None
        return self.run_text(text, display, path)

    def run_text(self, text: str, display: str, path: Path) -> Policy:
        self._load(text, display, path.resolve(), [])
        policy = self._resolve()
        if self.diags.errors:
            order = {f: i for i, f in enumerate(self.files)}
            self.diags.items.sort(
                key=lambda d: (order.get(d.span.file, len(order)), d.span.line, d.span.col)
            )
            raise PolicyError(self.diags.items, self.sources)
        policy.sources = self.sources
        policy.files = self.files
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f.encode() + b"\0" + self.sources[f].encode() + b"\0")
        policy.digest = digest.hexdigest()
        policy.warnings = [d for d in self.diags.items if d.severity == "warning"]
        return policy

    def _load(self, text: str, display: str, real: Path, stack: list[Path]) -> None:
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
                f"cannot include '{stmt.path}': {_os_reason(exc)}",
                hint,
                code="include",
            )
            return
        try:
            display = str(real.relative_to(Path.cwd()))
        except ValueError:
            display = str(real)
        self._load(text, display, real, stack)

    # ---- the whole policy ---------------------------------------------------------------------

    def _resolve(self) -> Policy:
        policy = Policy()
        # defines and tables first: a rule may use a name defined further down (or in an
        # include that comes later), as in nftables' `define` within one file.
        for stmt in self.statements:
            if isinstance(stmt, ast.Define):
                if stmt.name in self.defines:
                    first = self.defines[stmt.name].name_span
                    self.diags.error(
                        stmt.name_span,
                        f"'{stmt.name}' is already defined at {first}",
                        code="duplicate",
                    )
                else:
                    self.defines[stmt.name] = stmt
            elif isinstance(stmt, ast.TableDecl):
                if stmt.name in self.table_decls:
                    first = self.table_decls[stmt.name].name_span
                    self.diags.error(
                        stmt.name_span,
                        f"table '{stmt.name}' is already declared at {first}",
                        code="duplicate",
                    )
                else:
                    self.table_decls[stmt.name] = stmt
        for decl in self.table_decls.values():
            self.tables[decl.name] = self._table(decl)
        policy.tables = self.tables

        sids: dict[int, Span] = {}
        for stmt in self.statements:
            if isinstance(stmt, ast.OptionStmt):
                self._option(stmt, policy)
            elif isinstance(stmt, ast.DetectStmt):
                spec = self._detect(stmt)
                if spec is not None:
                    if spec.name in policy.detectors:
                        self.diags.error(
                            stmt.name_span,
                            f"detector '{spec.name}' is already configured at "
                            f"{policy.detectors[spec.name].span}",
                            code="duplicate",
                        )
                    else:
                        policy.detectors[spec.name] = spec
            elif isinstance(stmt, ast.RuleStmt):
                rule = self._rule(stmt, len(policy.rules))
                if rule is None:
                    continue
                if rule.sid is not None:
                    if rule.sid in sids:
                        self.diags.error(
                            stmt.span,
                            f"sid {rule.sid} is already used at {sids[rule.sid]}",
                            code="duplicate",
                        )
                    sids[rule.sid] = stmt.span
                policy.rules.append(rule)
        self._slowscan(policy)
        return policy

    def _option(self, stmt: ast.OptionStmt, policy: Policy) -> None:
        schema = OPTIONS.get(stmt.name)
        if schema is None:
            self.diags.error(
                stmt.name_span,
                f"unknown option '{stmt.name}'",
                did_you_mean(stmt.name, OPTIONS) or f"options are: {', '.join(OPTIONS)}",
                code="unknown-name",
            )
            return
        value: str | int | float | None
        if schema.kind == "choice":
            value = names.ACTION_ALIASES.get(stmt.value.text, stmt.value.text)
            if value not in schema.choices:
                self.diags.error(
                    stmt.value.span,
                    f"'{stmt.value.text}' is not a value of 'set {stmt.name}'",
                    did_you_mean(stmt.value.text, schema.choices)
                    or f"choose one of: {', '.join(schema.choices)}",
                    code="bad-value",
                )
                return
        else:
            value = self._number_option(stmt, schema)
            if value is None:
                return
        if stmt.name in policy.options:
            self.diags.warning(stmt.name_span, f"'set {stmt.name}' given again; the last wins")
        policy.options[stmt.name] = value

    def _number_option(self, stmt: ast.OptionStmt, schema: OptionSchema) -> int | float | None:
        """The value of an int or duration option, range-checked; None after an error."""
        item = stmt.value
        lo, hi = schema.minimum, schema.maximum
        if schema.kind == "int":
            if item.kind != "int" or len(item.text) > 12 or not lo <= item.lo <= hi:
                self.diags.error(
                    item.span,
                    f"'set {stmt.name}' takes a whole number from {int(lo)} to {int(hi)}",
                    f"e.g. set {stmt.name} {schema.default}",
                    code="bad-value",
                )
                return None
            return item.lo
        if item.kind != "duration":
            self.diags.error(
                item.span,
                f"'set {stmt.name}' takes a duration",
                "a whole number and a unit: 30s, 10m, 24h, 7d",
                code="bad-value",
            )
            return None
        seconds = self._duration(item)
        if seconds is None:
            return None
        if not lo <= seconds <= hi:
            self.diags.error(
                item.span,
                f"'set {stmt.name}' must be between {_human(lo)} and {_human(hi)}",
                code="bad-value",
            )
            return None
        return seconds

    # ---- values -------------------------------------------------------------------------------

    def _flatten(self, value: ast.Value, seen: tuple[str, ...] = ()) -> tuple[list[ast.Item], bool]:
        """Expand $variables (recursively) into plain items; return (items, negated).

        Each define is expanded once and its items de-duplicated, so defines built from
        defines stay linear (`define b = { $a, $a }` does not double anything)."""
        items: dict[tuple[str, str], ast.Item] = {}
        negated = value.negated
        for item in value.items:
            if item.kind != "var":
                items.setdefault((item.kind, item.text), item)
                continue
            expanded = self._expand_define(item, seen)
            if expanded is None:
                continue
            inner, inner_neg = expanded
            if inner_neg:
                if value.is_set or len(value.items) > 1:
                    self.diags.error(
                        item.span,
                        f"'${item.text}' is negated and cannot be used inside a set",
                        code="type",
                    )
                    continue
                negated = not negated
            for x in inner:
                items.setdefault((x.kind, x.text), x)
        return list(items.values()), negated

    def _expand_define(
        self, use: ast.Item, seen: tuple[str, ...]
    ) -> tuple[list[ast.Item], bool] | None:
        name = use.text
        define = self.defines.get(name)
        if define is None:
            self.diags.error(
                use.span,
                f"'${name}' is not defined",
                _prefixed_hint("$", name, self.defines) or "define it: define NAME = VALUE",
                code="unknown-name",
            )
            return None
        if name in seen:
            self.diags.error(
                use.span,
                f"'${name}' is defined in terms of itself: "
                + " -> ".join(f"${n}" for n in (*seen[seen.index(name) :], name)),
                code="define-loop",
            )
            return None
        if len(seen) >= MAX_DEFINE_DEPTH:
            self.diags.error(
                use.span,
                f"defines nested deeper than {MAX_DEFINE_DEPTH} levels",
                code="define-depth",
            )
            return None
        cached = self._expanded.get(name)
        if cached is None:
            cached = self._flatten(define.value, (*seen, name))
            self._expanded[name] = cached
        return cached

    def _addr(self, value: ast.Value, *, allow_dynamic: bool = True) -> AddrSpec | None:
        items, negated = self._flatten(value)
        nets4: list[tuple[int, int]] = []
        nets6: list[tuple[int, int]] = []
        dynamic: list[str] = []
        constrained = False  # an address or a table was named (even an empty table)
        for item in items:
            if item.kind == "any" or (item.kind == "word" and item.text == "any"):
                if value.is_set or negated:
                    self.diags.error(item.span, "'any' cannot be negated or used in a set")
                continue
            if item.kind in ("addr", "table"):
                constrained = True
            if item.kind == "addr":
                net = self._network(item)
                if net is not None:
                    (nets4 if net[0] == 4 else nets6).append(net[1:])
            elif item.kind == "table":
                table = self.tables.get(item.text)
                if table is None:
                    self.diags.error(
                        item.span,
                        f"unknown table '@{item.text}'",
                        _prefixed_hint("@", item.text, self.tables)
                        or "declare it: table NAME = { … }",
                        code="unknown-name",
                    )
                elif table.kind == "dynamic":
                    if not allow_dynamic:
                        self.diags.error(item.span, "a dynamic table cannot be used here")
                    dynamic.append(table.name)
                else:
                    nets4.extend(table.nets4)
                    nets6.extend(table.nets6)
            elif item.kind == "word":
                hint = None
                if item.text in self.defines:
                    hint = f"did you mean '${item.text}'?"
                elif item.text in self.tables or item.text in self.table_decls:
                    hint = f"did you mean '@{item.text}'?"
                self.diags.error(
                    item.span,
                    f"'{item.text}' is not an address",
                    hint
                    or "write an address (192.0.2.1, 10.0.0.0/8, 2001:db8::/32), "
                    "$variable, @table or any",
                    code="type",
                )
            else:
                self.diags.error(item.span, f"'{item.text}' is not an address", code="type")
        if not items:
            # `{}` or a define of it: a set with no member matches nothing (negated:
            # everything), as an empty nftables set. Never "no condition".
            self._warn_empty(value)
            return AddrSpec(negated)
        if not constrained:
            return None  # only `any` (or only errors, already reported): no condition
        return AddrSpec(negated, tuple(nets4), tuple(nets6), tuple(dynamic))

    def _warn_empty(self, value: ast.Value) -> None:
        if value.is_set and not value.items:
            self.diags.warning(value.span, "an empty set matches nothing")

    def _network(self, item: ast.Item) -> tuple[int, int, int] | None:
        """An address item -> (version, network as int, prefix length), or None (reported)."""
        parsed = parse_network(item.text)
        if parsed is None:
            self.diags.error(
                item.span,
                f"invalid address '{item.text}'",
                "an address is a.b.c.d[/len] or an IPv6 address[/len]",
                code="bad-value",
            )
            return None
        version, value, plen, host_bits = parsed
        if host_bits:
            net = ipaddress.ip_network((value, plen))
            self.diags.warning(
                item.span, f"'{item.text}' has host bits set; it means {net}", f"write {net}"
            )
        return version, value, plen

    def _ports(self, value: ast.Value) -> PortSpec | None:
        items, negated = self._flatten(value)
        ranges: list[tuple[int, int]] = []
        for item in items:
            if item.kind == "int":
                if not 0 <= item.lo <= 65535:
                    self.diags.error(item.span, f"port {item.lo} is out of range 0-65535")
                    continue
                ranges.append((item.lo, item.lo))
            elif item.kind == "range":
                if not (0 <= item.lo <= item.hi <= 65535):
                    self.diags.error(
                        item.span,
                        f"port range {item.text} is not within 0-65535 or runs backwards",
                        code="bad-value",
                    )
                    continue
                ranges.append((item.lo, item.hi))
            elif item.kind == "word":
                port = names.SERVICES.get(item.text)
                if port is None:
                    hint = did_you_mean(item.text, names.SERVICES)
                    if item.text in self.defines:
                        hint = f"did you mean '${item.text}'?"
                    self.diags.error(
                        item.span,
                        f"unknown service '{item.text}'",
                        hint or "use a port number",
                        code="unknown-name",
                    )
                    continue
                ranges.append((port, port))
            elif item.kind == "any":
                return None
            else:
                self.diags.error(item.span, f"'{item.text}' is not a port", code="type")
        if not items:
            self._warn_empty(value)
            return PortSpec(negated, ())  # an empty set matches nothing
        if not ranges:
            return None  # only errors, already reported
        return PortSpec(negated, _merge_ranges(ranges))

    def _words(self, value: ast.Value, what: str) -> tuple[list[ast.Item], bool]:
        items, negated = self._flatten(value)
        good = []
        for item in items:
            if item.kind in ("word", "string", "int"):
                good.append(item)
            else:
                self.diags.error(item.span, f"'{item.text}' is not {what}", code="type")
        return good, negated

    def _duration(self, item: ast.Item) -> float | None:
        m = re.fullmatch(r"(\d{1,9})(ms|s|m|h|d)", item.text)
        if not m or int(m.group(1)) == 0:
            self.diags.error(
                item.span,
                f"'{item.text}' is not a duration",
                "a whole number from 1 to 999999999 and a unit: 30s, 10m, 1h, 7d",
                code="bad-value",
            )
            return None
        return int(m.group(1)) * names.DURATION_UNITS[m.group(2)]

    def _rate(self, text: str, span: Span) -> float | None:
        m = re.fullmatch(r"(\d{1,9})/(\w+)", text)
        if not m or m.group(2) not in names.RATE_UNITS or int(m.group(1)) == 0:
            self.diags.error(span, f"'{text}' is not a rate", "e.g. 50/s, 600/m", code="bad-value")
            return None
        return int(m.group(1)) / names.RATE_UNITS[m.group(2)]

    # ---- tables -------------------------------------------------------------------------------

    def _table(self, decl: ast.TableDecl) -> TableSpec:
        spec = TableSpec(decl.name, decl.kind, decl.span)
        if decl.kind == "static" and decl.value is not None:
            items, negated = self._flatten(decl.value)
            if negated:
                self.diags.error(decl.value.span, "a table cannot be negated")
            nets4, nets6 = [], []
            for item in items:
                if item.kind == "addr":
                    net = self._network(item)
                    if net is not None:
                        (nets4 if net[0] == 4 else nets6).append(net[1:])
                elif item.kind == "table":
                    self.diags.error(item.span, "a table cannot contain another table")
                else:
                    self.diags.error(item.span, f"'{item.text}' is not an address", code="type")
            spec.nets4, spec.nets6 = tuple(nets4), tuple(nets6)
        elif decl.kind == "file" and decl.path is not None:
            self._table_file(decl, spec)
        elif decl.kind == "dynamic":
            if decl.timeout is not None:
                spec.timeout = self._duration(decl.timeout)
            if decl.size is not None:
                if decl.size.lo < 1:
                    self.diags.error(decl.size.span, "a table size must be at least 1")
                spec.size = decl.size.lo
        return spec

    def _table_file(self, decl: ast.TableDecl, spec: TableSpec) -> None:
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
                decl.span, f"cannot read table file '{decl.path}': {_os_reason(exc)}", code="io"
            )
            return
        nets4, nets6 = [], []
        for lineno, line in enumerate(text.splitlines(), start=1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                self.diags.error(
                    Span(str(path), lineno, 1, lineno, len(line) + 1),
                    f"invalid address '{entry}' in table file",
                    code="bad-value",
                )
                self.sources.setdefault(str(path), text)
                continue
            (nets4 if net.version == 4 else nets6).append((int(net.network_address), net.prefixlen))
        spec.nets4, spec.nets6 = tuple(nets4), tuple(nets6)

    # ---- detectors ----------------------------------------------------------------------------

    def _detect(self, stmt: ast.DetectStmt) -> DetectSpec | None:
        schema = DETECTORS.get(stmt.name)
        if schema is None:
            self.diags.error(
                stmt.name_span,
                f"unknown detector '{stmt.name}'",
                did_you_mean(stmt.name, DETECTORS) or f"detectors are: {', '.join(DETECTORS)}",
                code="unknown-name",
            )
            return None
        params: dict[str, object] = dict(schema.defaults)
        response = schema.response
        responses_given: list[ast.DetectOpt] = []
        seen: dict[str, Span] = {}
        for opt in stmt.opts:
            key = opt.key
            if key == "alert_only":
                key = "alert"
            if key not in schema.options:
                self.diags.error(
                    opt.span,
                    f"'{key}' is not an option of detector '{stmt.name}'",
                    did_you_mean(key, schema.options)
                    or f"options are: {', '.join(sorted(schema.options))}",
                    code="unknown-name",
                )
                continue
            if key in seen:
                self.diags.error(opt.span, f"'{key}' given twice (first at {seen[key]})")
                continue
            seen[key] = opt.span
            value = opt.value
            if key in ("ports", "hosts", "count"):
                assert isinstance(value, ast.Item)
                if value.lo < 1:
                    self.diags.error(opt.span, f"'{key}' must be at least 1")
                params[key] = value.lo
            elif key == "within":
                assert isinstance(value, ast.Item)
                params[key] = self._duration(value)
            elif key == "distributed":
                assert isinstance(value, ast.Item)
                params[key] = self._distributed(value)
            elif key == "rate":
                assert isinstance(value, ast.Item)
                params[key] = self._rate(value.text, value.span)
            elif key == "per":
                assert isinstance(value, ast.Item)
                if value.text not in ("src", "dst"):
                    self.diags.error(
                        value.span,
                        f"'per {value.text}': a detector counts per src or per dst",
                        did_you_mean(value.text, ("src", "dst")),
                    )
                params[key] = value.text
            elif key in ("block", "limit", "alert"):
                responses_given.append(opt)
                response = key
                if key == "block" and isinstance(value, ast.Item):
                    params["block"] = self._duration(value)
            elif key == "ignore":
                assert isinstance(value, ast.Value)
                spec = self._addr(value, allow_dynamic=False)
                params["ignore"] = spec
        if len(responses_given) > 1:
            self.diags.error(
                responses_given[1].span,
                "choose one response: block, limit or alert",
                code="conflict",
            )
        if response == "block" and "block" not in params:
            params["block"] = 600.0
        params["response"] = response
        if response == "block":
            # Blocks live in the dynamic table `banned` (an nftables set): without it a
            # detector could only pretend to block.
            where = responses_given[-1].span if responses_given else stmt.name_span
            table = self.tables.get(BAN_TABLE)
            if self._ban_table_reported:
                pass  # said once, at the first detector that blocks
            elif table is None:
                self._ban_table_reported = True
                self.diags.error(
                    where,
                    f"detector '{stmt.name}' blocks, but the policy has no dynamic table "
                    f"'{BAN_TABLE}' to put the blocked addresses in",
                    f"declare one: table {BAN_TABLE} dynamic timeout 1h "
                    "(and `drop from @banned` first), or answer with `alert`",
                    code="missing-table",
                )
            elif table.kind != "dynamic":
                self._ban_table_reported = True
                self.diags.error(
                    where,
                    f"detector '{stmt.name}' blocks, but table '{BAN_TABLE}' is not dynamic "
                    f"(declared at {table.span})",
                    f"declare it as: table {BAN_TABLE} dynamic timeout 1h",
                    code="missing-table",
                )
            if params.get("per") == "dst":
                self.diags.warning(
                    where,
                    f"'{stmt.name} per dst … block' bans every source that sends while its "
                    "destination is over the rate, and flood sources are easily spoofed",
                    "`limit` protects the destination without banning anyone",
                )
        return DetectSpec(stmt.name, stmt.span, params)

    def _distributed(self, value: ast.Item) -> int | None:
        """slowscan's `distributed N` (ports of one host, several sources) or `off`."""
        if value.kind == "int" and value.lo >= 1:
            return value.lo
        if value.text == "off":
            return None
        self.diags.error(
            value.span,
            f"'distributed {value.text}': give a number of ports (at least 1) or off",
            did_you_mean(value.text, ("off",)),
            code="bad-value",
        )
        return None

    def _slowscan(self, policy: Policy) -> None:
        """`detect slowscan` is a long window over the weights portscan and sweep give: check
        that they are there to give them, and that its window is the longer one."""
        spec = policy.detectors.get("slowscan")
        if spec is None:
            return
        stmt = next(
            s for s in self.statements if isinstance(s, ast.DetectStmt) and s.span == spec.span
        )
        given = {opt.key: opt.span for opt in stmt.opts}
        feeds = {"portscan": ("ports", "distributed"), "sweep": ("hosts",)}
        if not any(name in policy.detectors for name in feeds):
            self.diags.error(
                stmt.name_span,
                "detector 'slowscan' has nothing to count: it keeps a long window over the "
                "failed probes that portscan and sweep weigh, and neither is configured",
                "add `detect portscan` and `detect sweep` (with `alert` if they should not block)",
                code="missing-detector",
            )
            return
        for name, keys in feeds.items():
            short = policy.detectors.get(name)
            if short is None:
                for key in keys:
                    if key in given:
                        self.diags.warning(
                            given[key],
                            f"slowscan's '{key}' counts the probes that {name} weighs, but "
                            f"there is no `detect {name}`: it never fires",
                            f"add `detect {name} alert`, or leave '{key}' out",
                        )
                continue
            if float(spec.params["within"]) <= float(short.params["within"]):  # type: ignore[arg-type]
                self.diags.warning(
                    given.get("within", stmt.name_span),
                    f"slowscan's window ({spec.params['within']:g}s) is no longer than "
                    f"{name}'s ({short.params['within']:g}s): it sees nothing {name} does not",
                    "a long window is hours: within 6h",
                )

    # ---- rules --------------------------------------------------------------------------------

    def _rule(self, stmt: ast.RuleStmt, index: int) -> RuleSpec | None:
        action = names.ACTION_ALIASES.get(stmt.action, stmt.action)
        rule = RuleSpec(index, action, stmt.span, stmt.text)
        seen: dict[str, Span] = {}
        families: set[int] = {4, 6}
        proto_given: Span | None = None
        port_span: Span | None = None
        needs_tcp: Span | None = None
        icmp_clause: ast.IcmpTypeClause | None = None
        rewrite: dict[str, object] = {}
        replace: list[tuple[bytes, bytes]] = []
        before = len(self.diags.errors)

        def once(kind: str, clause: ast.Clause) -> bool:
            if kind in seen:
                self.diags.error(
                    clause.span,
                    f"'{kind}' given twice in one rule (first at {seen[kind]})",
                    code="duplicate",
                )
                return False
            seen[kind] = clause.span
            return True

        for clause in stmt.clauses:
            match clause:
                case ast.FamilyClause(family=family):
                    if once("inet", clause):
                        families &= {family}
                case ast.ProtoClause(value=value):
                    if once("proto", clause):
                        proto_given = clause.span
                        rule.protos = self._protos(value)
                case ast.EndpointClause(is_src=is_src, addr=addr, port=port):
                    key = "from" if is_src else "to"
                    if not once(key, clause):
                        continue
                    spec = self._addr(addr) if addr is not None else None
                    ports = self._ports(port) if port is not None else None
                    if port is not None:
                        port_span = port.span
                    if is_src:
                        rule.src, rule.sport = spec, ports
                    else:
                        rule.dst, rule.dport = spec, ports
                case ast.InterfaceClause(direction=direction, iface=iface):
                    key = direction or "on"
                    if not once(key, clause):
                        continue
                    if iface is None:
                        rule.direction = direction
                        continue
                    words, negated = self._words(iface, "an interface name")
                    spec = IfaceSpec(negated, tuple(w.text for w in words))
                    if direction == "in":
                        rule.iif = spec
                    elif direction == "out":
                        rule.oif = spec
                    else:
                        rule.anyif = spec
                case ast.FlagsClause(spec=flagspec):
                    if once("flags", clause):
                        rule.flags = self._flags(flagspec, clause.span)
                        needs_tcp = clause.span
                case ast.IcmpTypeClause():
                    if once("type", clause):
                        icmp_clause = clause
                case ast.LengthClause(op=op, lo=lo, hi=hi):
                    if once("length", clause):
                        if hi > 65535 or lo > hi:
                            self.diags.error(clause.span, "length must be within 0-65535, low-high")
                        rule.length = (op, lo, hi)
                case ast.StateClause(value=value):
                    if once("state", clause):
                        words, negated = self._words(value, "a connection state")
                        states = set()
                        for w in words:
                            if w.text not in ("new", "established"):
                                self.diags.error(
                                    w.span,
                                    f"unknown state '{w.text}'",
                                    did_you_mean(w.text, ("new", "established"))
                                    or "states are new and established",
                                    code="unknown-name",
                                )
                            states.add(w.text)
                        if negated:
                            states = {"new", "established"} - states
                        rule.states = frozenset(states)
                case ast.FragmentClause():
                    if once("fragment", clause):
                        rule.fragment = True
                case ast.ContainsClause(pattern=pattern, nocase=nocase):
                    if not pattern:
                        self.diags.error(clause.span, "payload contains needs a non-empty pattern")
                    rule.contains += ((pattern.lower() if nocase else pattern, nocase),)
                case ast.LimitClause():
                    if once("limit", clause):
                        rule.limit = self._limit(clause)
                case ast.SetClause(field=fld, value=value):
                    self._rewrite_set(fld, value, rewrite, action, families)
                case ast.ReplaceClause(old=old, new=new):
                    if action != "rewrite":
                        self.diags.error(clause.span, "'replace' belongs to a rewrite rule")
                    elif len(old) != len(new) or not old:
                        self.diags.error(
                            clause.span,
                            f"replace needs two non-empty patterns of the same length "
                            f"({len(old)} and {len(new)} bytes)",
                            "pad the shorter one; a payload replace never changes lengths, so "
                            "TCP sequence numbers stay valid",
                        )
                    else:
                        replace.append((old, new))
                case ast.RejectWithClause(kind=kind, code=code):
                    if once("with", clause):
                        if action != "reject":
                            self.diags.error(clause.span, "'with' belongs to a reject rule")
                        rule.reject_with = self._reject_with(kind, code)
                case ast.AlertClause(message=message):
                    if once("alert", clause):
                        rule.alert = True
                        rule.message = message
                case ast.LogClause():
                    if once("log", clause):
                        rule.log = True
                case ast.InspectClause():
                    if once("inspect", clause):
                        rule.inspect = True
                case ast.SidClause(sid=sid):
                    if once("sid", clause):
                        if not 1 <= sid <= 0xFFFFFFFF:
                            self.diags.error(
                                clause.span,
                                "a sid is a number from 1 to 4294967295",
                                code="bad-value",
                            )
                        elif DETECTOR_SID_FIRST <= sid <= DETECTOR_SID_LAST:
                            self.diags.error(
                                clause.span,
                                f"sid {sid} is reserved for the detectors' alerts "
                                f"({DETECTOR_SID_FIRST}-{DETECTOR_SID_LAST})",
                                "choose another number",
                                code="bad-value",
                            )
                        rule.sid = sid
                case ast.SeverityClause(value=item):
                    if once("severity", clause):
                        rule.severity = self._severity(item)
                case ast.LabelClause(label=label):
                    if once("label", clause):
                        rule.label = label

        # protocol implied by the clauses, and checked against the one given
        if icmp_clause is not None:
            self._icmp(icmp_clause, rule, proto_given)
        implied: list[tuple[frozenset[int], Span, str]] = []
        if port_span is not None:
            implied.append((PORT_PROTOS, port_span, "ports need proto tcp, udp or sctp"))
        if needs_tcp is not None:
            implied.append((frozenset({PROTO_TCP}), needs_tcp, "flags need proto tcp"))
        for protos, span, message in implied:
            if rule.protos is None:
                rule.protos = protos
            elif not rule.protos <= protos:
                self.diags.error(span, message, code="conflict")
        if rule.protos is not None:
            if rule.protos == {PROTO_ICMP}:
                families &= {4}
            elif rule.protos == {PROTO_ICMPV6}:
                families &= {6}
        for spec in (rule.src, rule.dst):
            if spec is not None and spec.families is not None:
                families &= set(spec.families)
        daddr = rewrite.get("daddr")
        if isinstance(daddr, bytes):
            families &= {4 if len(daddr) == 4 else 6}
        if rule.reject_with is not None:
            # as in nftables: `with icmp` answers IPv4 only, `with icmpv6` IPv6 only
            # (`with icmpx` answers both, in each family's own numbering)
            families &= {"icmp": {4}, "icmpv6": {6}}.get(rule.reject_with[0], {4, 6})
        if not families:
            self.diags.error(
                stmt.span,
                "this rule can never match: its addresses and protocols are of different "
                "families (IPv4 and IPv6)",
                code="conflict",
            )
        rule.families = frozenset(families)

        # action-specific checks
        if action == "rewrite":
            if not any(isinstance(c, (ast.SetClause, ast.ReplaceClause)) for c in stmt.clauses):
                self.diags.error(
                    stmt.action_span,
                    "a rewrite rule needs 'set FIELD VALUE' or 'replace \"a\" with \"b\"'",
                    "e.g. rewrite proto udp to port 53 set ttl 64",
                )
            rule.rewrite = RewriteSpec(
                ttl=rewrite.get("ttl"),  # type: ignore[arg-type]
                dscp=rewrite.get("dscp"),  # type: ignore[arg-type]
                dport=rewrite.get("dport"),  # type: ignore[arg-type]
                daddr=daddr if isinstance(daddr, bytes) else None,
                replace=tuple(replace),
            )
        wants_reset = rule.reject_with is not None and rule.reject_with[0] == "tcp-reset"
        if action == "reject" and wants_reset and rule.protos != {PROTO_TCP}:
            if rule.protos is None:
                rule.protos = frozenset({PROTO_TCP})
            else:
                self.diags.error(stmt.span, "reject with tcp-reset needs proto tcp")
        if action == "match" and not (rule.alert or rule.log):
            self.diags.warning(
                stmt.action_span,
                "a match rule without alert or log has no effect",
                'add alert "message" or log',
            )
        if rule.alert and rule.message is None:
            rule.message = stmt.text
        if len(self.diags.errors) > before:
            return None
        return rule

    def _protos(self, value: ast.Value) -> frozenset[int] | None:
        items, negated = self._flatten(value)
        protos: set[int] = set()
        for item in items:
            if item.kind == "any":
                return None
            if item.kind == "int":
                if item.lo > 255:
                    self.diags.error(item.span, f"protocol number {item.lo} is out of range 0-255")
                protos.add(item.lo)
            elif item.kind == "word" and item.text in names.PROTOCOLS:
                protos.add(names.PROTOCOLS[item.text])
            else:
                self.diags.error(
                    item.span,
                    f"unknown protocol '{item.text}'",
                    did_you_mean(item.text, names.PROTOCOLS)
                    or "e.g. tcp, udp, icmp, icmpv6, or a number",
                    code="unknown-name",
                )
        if negated:
            return frozenset(set(range(256)) - protos)
        if not items:
            self._warn_empty(value)
        return frozenset(protos)  # empty: matches no protocol

    def _flags(self, spec: str, span: Span) -> tuple[int, int] | None:
        if spec == "any":
            return None
        want, _, mask_text = spec.partition("/")
        has_mask = "/" in spec
        value = mask = 0
        bad = [ch for ch in want + mask_text if ch not in names.TCP_FLAG_LETTERS]
        if bad:
            self.diags.error(
                span,
                f"unknown TCP flag '{bad[0]}' in '{spec}'",
                "flags are F(IN) S(YN) R(ST) P(USH) A(CK) U(RG) E(CE) W(CWR), e.g. flags S/SA",
                code="bad-value",
            )
            return None
        for ch in want:
            value |= names.TCP_FLAG_LETTERS[ch]
        if has_mask:
            for ch in mask_text:
                mask |= names.TCP_FLAG_LETTERS[ch]
        else:
            mask = 0xFF  # `flags S`: exactly SYN and nothing else, as in Snort's `flags:S`
        if value & ~mask:
            self.diags.error(
                span,
                f"'{spec}': the flags before '/' must be part of the mask after it",
                f"e.g. {want}/{want}{mask_text}",
                code="bad-value",
            )
            return None
        return (value, mask)

    def _icmp(self, clause: ast.IcmpTypeClause, rule: RuleSpec, proto_given: Span | None) -> None:
        protos = rule.protos
        if protos == {PROTO_ICMP}:
            types, codes = names.ICMP_TYPES, names.ICMP_CODES
        elif protos == {PROTO_ICMPV6}:
            types, codes = names.ICMPV6_TYPES, names.ICMPV6_CODES
        else:
            self.diags.error(
                clause.span,
                "'type' needs 'proto icmp' or 'proto icmpv6' in the same rule",
                "ICMP and ICMPv6 number their types differently",
                code="conflict",
            )
            return
        items, negated = self._flatten(clause.type_value)
        found = {self._named_number(item, types, "ICMP type") for item in items}
        found.discard(None)
        if negated:
            found = set(range(256)) - found
        rule.icmp_types = frozenset(found)  # type: ignore[arg-type]
        if clause.code_value is not None:
            if len(items) != 1 or negated:
                self.diags.error(clause.code_value.span, "'code' needs exactly one ICMP type")
                return
            citems, cneg = self._flatten(clause.code_value)
            if cneg or len(citems) != 1:
                self.diags.error(clause.code_value.span, "'code' takes one ICMP code")
                return
            rule.icmp_code = self._named_number(citems[0], codes, "ICMP code")

    def _named_number(self, item: ast.Item, table: dict[str, int], what: str) -> int | None:
        if item.kind == "int":
            if item.lo > 255:
                self.diags.error(item.span, f"{what} {item.lo} is out of range 0-255")
            return item.lo
        if item.kind == "word" and item.text in table:
            return table[item.text]
        self.diags.error(
            item.span,
            f"unknown {what} '{item.text}'",
            did_you_mean(item.text, table) or f"known: {', '.join(sorted(table))}",
            code="unknown-name",
        )
        return None

    def _limit(self, clause: ast.LimitClause) -> LimitSpec | None:
        rate = self._rate(clause.rate_text, clause.span)
        per = "rule"
        if clause.per is not None:
            if clause.per.text not in ("src", "dst", "flow"):
                self.diags.error(
                    clause.per.span,
                    f"'per {clause.per.text}': a limit counts per src, dst or flow",
                    did_you_mean(clause.per.text, ("src", "dst", "flow")),
                )
            per = clause.per.text
        else_action = None
        if clause.else_action is not None:
            else_action = names.ACTION_ALIASES.get(clause.else_action.text, clause.else_action.text)
            if else_action not in ("accept", "drop", "reject"):
                self.diags.error(
                    clause.else_action.span, "'else' takes accept, drop or reject", code="bad-value"
                )
        if rate is None:
            return None
        burst = clause.burst if clause.burst is not None else max(1, int(rate))
        if burst < 1:
            self.diags.error(clause.span, "burst must be at least 1")
        return LimitSpec(rate, burst, per, else_action, clause.rate_text)

    def _rewrite_set(
        self,
        fld: ast.Item,
        value: ast.Value,
        rewrite: dict[str, object],
        action: str,
        families: set[int],
    ) -> None:
        known = ("ttl", "hoplimit", "dscp", "dport", "daddr")
        if action != "rewrite":
            self.diags.error(fld.span, "'set' belongs to a rewrite rule", code="conflict")
            return
        name = "ttl" if fld.text == "hoplimit" else fld.text
        if fld.text not in known:
            self.diags.error(
                fld.span,
                f"cannot set '{fld.text}'",
                did_you_mean(fld.text, known) or f"a rewrite sets {', '.join(known)}",
                code="unknown-name",
            )
            return
        if name in rewrite:
            self.diags.error(fld.span, f"'{fld.text}' is set twice")
            return
        items, negated = self._flatten(value)
        if negated or len(items) != 1:
            self.diags.error(value.span, f"'set {fld.text}' takes one value")
            return
        item = items[0]
        if name == "ttl":
            if item.kind != "int" or not 1 <= item.lo <= 255:
                self.diags.error(item.span, "a TTL / hop limit is a number 1-255")
                return
            rewrite[name] = item.lo
        elif name == "dscp":
            if item.kind == "int" and item.lo <= 63:
                rewrite[name] = item.lo
            elif item.kind == "word" and item.text in names.DSCP:
                rewrite[name] = names.DSCP[item.text]
            else:
                self.diags.error(
                    item.span,
                    f"'{item.text}' is not a DSCP value",
                    did_you_mean(item.text, names.DSCP)
                    or "a number 0-63 or a class (ef, af41, cs1)",
                )
        elif name == "dport":
            if item.kind == "int" and 1 <= item.lo <= 65535:
                rewrite[name] = item.lo
            elif item.kind == "word" and item.text in names.SERVICES:
                rewrite[name] = names.SERVICES[item.text]
            else:
                self.diags.error(item.span, "'set dport' takes one port (1-65535)")
        elif name == "daddr":
            if item.kind != "addr" or "/" in item.text:
                self.diags.error(item.span, "'set daddr' takes one address (no prefix)")
                return
            try:
                rewrite[name] = ipaddress.ip_address(item.text).packed
            except ValueError:
                self.diags.error(item.span, f"invalid address '{item.text}'")

    def _reject_with(self, kind: ast.Item, code: ast.Value | None) -> tuple[str, int | None] | None:
        kinds = ("tcp-reset", "icmp", "icmpv6", "icmpx")
        if kind.text not in kinds:
            self.diags.error(
                kind.span,
                f"unknown reject kind '{kind.text}'",
                did_you_mean(kind.text, kinds)
                or "reject with tcp-reset | icmp CODE | icmpv6 CODE | icmpx CODE",
                code="unknown-name",
            )
            return None
        if kind.text == "tcp-reset":
            if code is not None:
                self.diags.error(code.span, "tcp-reset takes no code")
            return ("tcp-reset", None)
        table = {
            "icmp": names.ICMP_CODES, "icmpv6": names.ICMPV6_CODES, "icmpx": names.ICMPX_CODES
        }[kind.text]  # fmt: skip
        if code is None:
            return (kind.text, None)
        items, _ = self._flatten(code)
        if len(items) != 1:
            self.diags.error(code.span, "reject takes one ICMP code")
            return None
        return (kind.text, self._named_number(items[0], table, f"{kind.text} code"))

    def _severity(self, item: ast.Item) -> int:
        if item.kind == "int":
            if not 1 <= item.lo <= 255:
                self.diags.error(item.span, "severity is 1 (most severe) to 255")
            return item.lo
        if item.text in names.SEVERITIES:
            return names.SEVERITIES[item.text]
        self.diags.error(
            item.span,
            f"unknown severity '{item.text}'",
            did_you_mean(item.text, names.SEVERITIES)
            or "critical, high, medium, low, info or 1-255",
            code="unknown-name",
        )
        return 2


def parse_network(text: str) -> tuple[int, int, int, bool] | None:
    """'a.b.c.d[/n]' or an IPv6 address[/n] -> (version, network int, prefix length, whether
    host bits were set), or None when invalid. IPv4 is parsed by hand: a large policy has
    thousands of addresses, and the ipaddress module is slow at this."""
    addr, slash, plen_text = text.partition("/")
    if ":" not in addr:
        parts = addr.split(".")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
            return None
        octets = [int(p) for p in parts]
        if max(octets) > 255 or any(len(p) > 1 and p[0] == "0" for p in parts):
            return None  # leading zeros are ambiguous (octal to some tools): refused
        value = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
        width, version = 32, 4
    else:
        try:
            value = int(ipaddress.IPv6Address(addr))
        except ValueError:
            return None
        width, version = 128, 6
    if slash:
        if not plen_text.isdigit() or int(plen_text) > width:
            return None
        plen = int(plen_text)
    else:
        plen = width
    mask = ((1 << plen) - 1) << (width - plen)
    return version, value & mask, plen, value & ~mask != 0


def _merge_ranges(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _prefixed_hint(prefix: str, word: str, choices: object) -> str | None:
    hint = did_you_mean(word, choices)  # type: ignore[arg-type]
    if hint is None:
        return None
    return hint.replace("'", f"'{prefix}", 1)


def _os_reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _human(seconds: float) -> str:
    """A duration as written in a policy: 86400 -> 1d, 90 -> 90s."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
