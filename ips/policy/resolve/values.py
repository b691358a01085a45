"""Values and names: defines, tables, addresses, ports, protocols, durations, rates, options.

A value as written (`{ $lan, 10.0.0.0/8, @banned }`, `{ http, 8000-8099 }`) becomes what the
matcher compares: networks, port ranges, protocol numbers. Defines are expanded here (each
once, however often it is used), and the names a policy declares (defines and tables) are
known before any rule is read, so a rule may use a name declared further down.
"""

from __future__ import annotations

import ipaddress
import re

from ips.policy import ast, names
from ips.policy.diagnostics import Span, did_you_mean
from ips.policy.domains import NameSet, normalize, pattern_problem
from ips.policy.model import (
    MAX_PAYLOAD_DEPTH,
    OPTIONS,
    TABLE_ON_ERROR,
    UNLIMITED_DEPTH,
    AddrSpec,
    OptionSchema,
    Policy,
    PortSpec,
    TableSpec,
)
from ips.policy.resolve.files import SourceFiles
from ips.policy.resolve.geo import GeoResolver
from ips.policy.resolve.lists import parse_list_text
from ips.policy.resolve.netparse import parse_network

MAX_DEFINE_DEPTH = 32


class Values:
    """The names a policy declares, and the reading of every value against them."""

    def __init__(self, files: SourceFiles) -> None:
        self.files = files
        self.diags = files.diags
        self.defines: dict[str, ast.Define] = {}
        self.table_decls: dict[str, ast.TableDecl] = {}
        self.tables: dict[str, TableSpec] = {}
        # Tables of names: those a name clause (`tls sni @t`) uses, and where it first does.
        self.name_tables: dict[str, Span] = {}
        self._expanded: dict[str, tuple[list[ast.Item], bool]] = {}
        # One object per distinct set of protocols: 200,000 rules share a handful of them.
        self._proto_sets: dict[frozenset[int], frozenset[int]] = {}
        self.geo = GeoResolver(files, self.tables, self.flatten)

    # ---- names -----------------------------------------------------------------------------------

    def declare(self, statements: list[ast.Statement]) -> None:
        """Defines and tables first: a rule may use a name defined further down (or in an
        include that comes later), as in nftables' `define` within one file."""
        for stmt in statements:
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
            elif isinstance(stmt, ast.RuleStmt):
                self._note_name_tables(stmt)
            elif isinstance(stmt, ast.OptionStmt) and stmt.name in ("geo-dir", "geo-site"):
                # needed by the rules' geo clauses, which may come before the option
                self.geo.options[stmt.name] = stmt
        for decl in self.table_decls.values():
            self.tables[decl.name] = self._table(decl)

    def _note_name_tables(self, stmt: ast.RuleStmt) -> None:
        """A table a name clause uses holds names, not addresses: one pass over the rules
        says which (a table declared once serves one kind of clause)."""
        for clause in stmt.clauses:
            if type(clause) is ast.AppFieldClause and clause.value is not None:
                for item in clause.value.items:
                    if item.kind == "table":
                        self.name_tables.setdefault(item.text, item.span)

    def _table(self, decl: ast.TableDecl) -> TableSpec:
        spec = TableSpec(decl.name, decl.kind, decl.span)
        if decl.name in self.name_tables and decl.kind != "dynamic":
            spec.names = self._names_table(decl)
        elif decl.kind == "static" and decl.value is not None:
            items, negated = self.flatten(decl.value)
            if negated:
                self.diags.error(decl.value.span, "a table cannot be negated")
            nets4: list[tuple[int, int]] = []
            nets6: list[tuple[int, int]] = []
            for item in items:
                if item.kind == "addr":
                    net = self.network(item)
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
                spec.timeout = self.duration(decl.timeout)
            if decl.size is not None:
                if decl.size.lo < 1:
                    self.diags.error(decl.size.span, "a table size must be at least 1")
                spec.size = decl.size.lo
        return spec

    def _names_table(self, decl: ast.TableDecl) -> NameSet:
        """The name patterns of a table a name clause uses: from its `{ … }`, or from its
        file (one pattern per line, `#` comments), each checked with its place."""
        names = NameSet()
        if decl.kind == "static":
            assert decl.value is not None
            items, negated = self.flatten(decl.value)
            if negated:
                self.diags.error(decl.value.span, "a table cannot be negated")
            for item in items:
                if item.kind in ("string", "word"):
                    self._add_name(names, item.text, item.span)
                else:
                    self.diags.error(
                        item.span,
                        f"'{item.text}' is not a name",
                        'a table used by a name clause holds names: "example.com", "*.example.com"',
                        code="type",
                    )
            return names
        read = self.files.read_table_file(decl)
        if read is None:
            return names
        path, text = read
        file = str(path)
        for lineno, line in enumerate(text.splitlines(), start=1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            col = len(line) - len(line.lstrip()) + 1
            span = Span(file, lineno, col, lineno, col + len(entry))
            if not self._add_name(names, entry, span):
                self.files.sources.setdefault(file, text)
        return names

    def _add_name(self, names: NameSet, text: str, span: Span) -> bool:
        pattern = normalize(text)
        problem = pattern_problem(pattern)
        if problem is not None:
            message, hint = problem
            self.diags.error(span, message, hint, code="bad-value")
            return False
        names.add(pattern)
        return True

    def names(self, value: ast.Value, clause: str) -> tuple[NameSet, bool] | None:
        """The name patterns of a name clause's value: quoted names, a `{ set }` of them, and
        @tables of names; (patterns, negated), or None when nothing valid is left."""
        items, negated = self.flatten(value)
        names = NameSet()
        valid = not items
        for item in items:
            if item.kind in ("string", "word"):
                valid = self._add_name(names, item.text, item.span) or valid
            elif item.kind == "table":
                table = self._known_table(
                    item, 'declare it: table NAME file "names.txt" (one name a line)'
                )
                if table is not None and table.names is None:
                    self.diags.error(
                        item.span,
                        f"'@{item.text}' is a {table.kind} table of addresses, not of names",
                        "a table of names is a static or file table that name clauses use",
                        code="type",
                    )
                elif table is not None and table.names is not None:
                    names.update(table.names)
                    valid = True
            else:
                self.diags.error(
                    item.span,
                    f"'{item.text}' is not a name",
                    f'{clause} takes a quoted name ("example.com", "*.example.com"), a '
                    "{ set } of them or a @table",
                    code="type",
                )
        if not items:
            self.warn_empty(value)
        return (names, negated) if valid else None

    def check_table_sizes(self, policy: Policy) -> None:
        """A static or file table over `set table-max-entries` is refused here, at check
        time: the engine and the kernel would each have to hold all of it."""
        limit = int(policy.option("table-max-entries"))
        for table in self.tables.values():
            entries = table.entries
            if table.kind != "dynamic" and entries > limit:
                self.diags.error(
                    self.table_decls[table.name].name_span,
                    f"table '{table.name}' has {entries:,} entries, more than the limit of "
                    f"{limit:,}",
                    "split it, or raise the limit: set table-max-entries N "
                    f"(at most {int(OPTIONS['table-max-entries'].maximum):,})",
                    code="limit",
                )

    def _table_file(self, decl: ast.TableDecl, spec: TableSpec) -> None:
        """A table read from a file: a plain list, a FireHOL netset or Spamhaus DROP
        (ips/policy/resolve/lists.py). With `on-error skip` a bad line is a warning and the
        rest is kept; otherwise (`refuse`, the default) it is an error and the policy (or,
        on the daemon's refresh, the new file) is refused. A file with no entry at all is
        refused unless the table says `allow-empty`: a list truncated to nothing must not
        silently let everything through."""
        self._table_file_options(decl, spec)
        read = self.files.read_table_file(decl)
        if read is None:
            return
        path, text = read
        spec.path = str(path)
        parsed = parse_list_text(text)
        for lineno, col, end_col, message in parsed.problems:
            span = Span(str(path), lineno, col, lineno, end_col)
            if spec.on_error == "skip":
                self.diags.warning(span, message + " (skipped: on-error skip)", code="bad-value")
            else:
                self.diags.error(
                    span,
                    message,
                    f"fix the line, or let the table skip bad lines: table {decl.name} file "
                    f'"{decl.path}" on-error skip',
                    code="bad-value",
                )
            self.files.sources.setdefault(str(path), text)
        refused = parsed.problems and spec.on_error != "skip"  # its bad lines say why
        if not parsed.nets4 and not parsed.nets6 and not spec.allow_empty and not refused:
            self.diags.error(
                decl.span,
                f"table file '{decl.path}' has no address in it"
                + (f" ({len(parsed.problems)} bad lines skipped)" if parsed.problems else ""),
                "an empty list would match nothing; if that is meant, say so: "
                f'table {decl.name} file "{decl.path}" allow-empty',
                code="empty",
            )
        spec.nets4, spec.nets6 = parsed.nets4, parsed.nets6

    def _table_file_options(self, decl: ast.TableDecl, spec: TableSpec) -> None:
        spec.allow_empty = decl.allow_empty
        if decl.refresh is not None:
            seconds = self.duration(decl.refresh)
            if seconds is not None and seconds < 10:
                self.diags.error(
                    decl.refresh.span,
                    "a table is refreshed at most every 10s",
                    "e.g. refresh 1h",
                    code="bad-value",
                )
            spec.refresh = seconds
        if decl.on_error is not None:
            word = decl.on_error.text
            if word not in TABLE_ON_ERROR:
                self.diags.error(
                    decl.on_error.span,
                    f"'{word}' is not a value of a table's on-error",
                    did_you_mean(word, TABLE_ON_ERROR)
                    or "refuse (a bad line refuses the whole file) or skip (only the line)",
                    code="bad-value",
                )
            else:
                spec.on_error = word

    # ---- values ----------------------------------------------------------------------------------

    def flatten(self, value: ast.Value, seen: tuple[str, ...] = ()) -> tuple[list[ast.Item], bool]:
        """Expand $variables (recursively) into plain items; return (items, negated).

        Each define is expanded once and its items de-duplicated, so defines built from
        defines stay linear (`define b = { $a, $a }` does not double anything)."""
        if len(value.items) == 1 and value.items[0].kind != "var":
            return [value.items[0]], value.negated  # most values: nothing to expand
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
            cached = self.flatten(define.value, (*seen, name))
            self._expanded[name] = cached
        return cached

    def addr(self, value: ast.Value, *, allow_dynamic: bool = True) -> AddrSpec | None:
        items, negated = self.flatten(value)
        nets4: list[tuple[int, int]] = []
        nets6: list[tuple[int, int]] = []
        dynamic: list[str] = []
        static: list[str] = []
        constrained = False  # an address or a table was named (even an empty table)
        for item in items:
            if item.kind == "any" or (item.kind == "word" and item.text == "any"):
                if value.is_set or negated:
                    self.diags.error(item.span, "'any' cannot be negated or used in a set")
                continue
            if item.kind in ("addr", "table"):
                constrained = True
            if item.kind == "addr":
                net = self.network(item)
                if net is not None:
                    (nets4 if net[0] == 4 else nets6).append(net[1:])
            elif item.kind == "table":
                table = self._known_table(item, "declare it: table NAME = { … }")
                if table is None:
                    continue  # reported
                if table.names is not None:
                    self.diags.error(
                        item.span,
                        f"'@{item.text}' holds names (a name clause uses it at "
                        f"{self.name_tables[item.text]}), not addresses",
                        "use two tables: one of addresses, one of names",
                        code="type",
                    )
                elif table.kind == "dynamic":
                    if not allow_dynamic:
                        self.diags.error(item.span, "a dynamic table cannot be used here")
                    dynamic.append(table.name)
                else:
                    nets4.extend(table.nets4)
                    nets6.extend(table.nets6)
                    static.append(table.name)
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
            self.warn_empty(value)
            return AddrSpec(negated)
        if not constrained:
            return None  # only `any` (or only errors, already reported): no condition
        return AddrSpec(negated, tuple(nets4), tuple(nets6), tuple(dynamic), tuple(static))

    def warn_empty(self, value: ast.Value) -> None:
        if value.is_set and not value.items:
            self.diags.warning(value.span, "an empty set matches nothing")

    def _known_table(self, item: ast.Item, declare_hint: str) -> TableSpec | None:
        """The table an `@name` item names; None, reported with a hint, when none is."""
        table = self.tables.get(item.text)
        if table is None:
            self.diags.error(
                item.span,
                f"unknown table '@{item.text}'",
                _prefixed_hint("@", item.text, self.tables) or declare_hint,
                code="unknown-name",
            )
        return table

    def network(self, item: ast.Item) -> tuple[int, int, int] | None:
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

    def ports(self, value: ast.Value) -> PortSpec | None:
        items, negated = self.flatten(value)
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
            self.warn_empty(value)
            return PortSpec(negated, ())  # an empty set matches nothing
        if not ranges:
            return None  # only errors, already reported
        return PortSpec(negated, _merge_ranges(ranges))

    def words(self, value: ast.Value, what: str) -> tuple[list[ast.Item], bool]:
        items, negated = self.flatten(value)
        good = []
        for item in items:
            if item.kind in ("word", "string", "int"):
                good.append(item)
            else:
                self.diags.error(item.span, f"'{item.text}' is not {what}", code="type")
        return good, negated

    def duration(self, item: ast.Item) -> float | None:
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

    def size(self, item: ast.Item, what: str, example: str) -> int | None:
        """A size: `64k`, `1M` (k/K/KiB and M/MiB and G/GiB count 1024s), a number of bytes,
        or `unlimited` (UNLIMITED_DEPTH); within 1 byte and MAX_PAYLOAD_DEPTH. None after an
        error, which names WHAT and shows EXAMPLE."""
        hint = f"a number of bytes or a size: 4096, 64k, 1M, or unlimited (e.g. {example})"
        if item.kind == "word" and item.text == "unlimited":
            return UNLIMITED_DEPTH
        if item.kind == "duration" and item.text.endswith("m") and not item.text.endswith("ms"):
            self.diags.error(
                item.span,
                f"'{item.text}' is a duration (m is minutes), not a size",
                f"a mebibyte is written {item.text[:-1]}M",
                code="bad-value",
            )
            return None
        bytes_ = None
        if item.kind == "int" and len(item.text) <= 12:
            bytes_ = int(item.text)
        elif item.kind == "size":
            m = re.fullmatch(r"(\d{1,9})([A-Za-z]+)", item.text)
            if m is not None:
                bytes_ = int(m.group(1)) * SIZE_UNITS[m.group(2)]
        if bytes_ is None:
            self.diags.error(
                item.span,
                f"'{item.text}' is not a size for {what}",
                did_you_mean(item.text, ("unlimited",)) or hint,
                code="bad-value",
            )
            return None
        if not 1 <= bytes_ <= MAX_PAYLOAD_DEPTH:
            self.diags.error(
                item.span,
                f"{what} must be from 1 byte to 1G ({MAX_PAYLOAD_DEPTH} bytes)",
                hint if bytes_ else "no limit at all is written unlimited",
                code="bad-value",
            )
            return None
        return bytes_

    def rate(self, text: str, span: Span) -> float | None:
        m = re.fullmatch(r"(\d{1,9})/(\w+)", text)
        if not m or m.group(2) not in names.RATE_UNITS or int(m.group(1)) == 0:
            self.diags.error(span, f"'{text}' is not a rate", "e.g. 50/s, 600/m", code="bad-value")
            return None
        return int(m.group(1)) / names.RATE_UNITS[m.group(2)]

    def protos(self, value: ast.Value) -> frozenset[int] | None:
        items, negated = self.flatten(value)
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
            result = frozenset(set(range(256)) - protos)
        else:
            if not items:
                self.warn_empty(value)
            result = frozenset(protos)  # empty: matches no protocol
        return self._proto_sets.setdefault(result, result)

    # ---- options ---------------------------------------------------------------------------------

    def option(self, stmt: ast.OptionStmt, policy: Policy) -> None:
        """`set NAME VALUE`: checked against the option's schema, into policy.options."""
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
        if schema.kind == "text":
            if stmt.value.kind != "string":
                self.diags.error(
                    stmt.value.span,
                    f"'set {stmt.name}' takes a quoted string",
                    f'e.g. set {stmt.name} "/var/lib/ipsctl/geo"',
                    code="bad-value",
                )
                return
            value = stmt.value.text
        elif schema.kind == "choice":
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
        elif schema.kind == "size":
            value = self.size(stmt.value, f"'set {stmt.name}'", f"set {stmt.name} 64k")
            if value is None:
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
        seconds = self.duration(item)
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


# The units of a size (`64k`, `1M`): binary multiples, as Suricata's `1mb` and Snort's.
SIZE_UNITS = {
    "k": 1024, "K": 1024, "KiB": 1024,
    "M": 1 << 20, "MiB": 1 << 20,
    "G": 1 << 30, "GiB": 1 << 30,
}  # fmt: skip


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


def _human(seconds: float) -> str:
    """A duration as written in a policy: 86400 -> 1d, 90 -> 90s."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
