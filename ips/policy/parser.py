"""Policy text -> typed syntax tree, with every syntax error of the file reported in one pass.

The file is first cut into statements (one per line; `{ … }` may span lines; a trailing
backslash continues a line). Each statement is parsed on its own with the Lark LALR parser
built from grammar/policy.lark, so an error on line 3 does not hide one on line 9. The common
one-line statements are read first by a hand-written fast path (fastparse.py) that builds the
same nodes; Lark reads whatever it declines, and reports every syntax error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ips.policy import ast
from ips.policy.diagnostics import Diagnostics, Span, did_you_mean
from ips.policy.fastparse import parse_line
from ips.policy.literals import content_bytes, unescape

GRAMMAR_PATHS = (
    Path(__file__).resolve().parents[2] / "grammar" / "policy.lark",  # source checkout
    Path(__file__).resolve().parent.parent / "data" / "policy.lark",  # installed package
)

STATEMENT_KEYWORDS = (
    "accept", "pass", "drop", "block", "reject", "rewrite", "match",
    "include", "define", "table", "set", "detect",
)  # fmt: skip


@functools.cache
def _lark() -> Lark:
    for path in GRAMMAR_PATHS:
        if path.exists():
            # Positions are taken from the tokens (keep_all_tokens keeps the keywords, so every
            # subtree has a first and a last token): Lark's propagate_positions costs 40% of
            # the parse time of a large policy.
            return Lark(
                path.read_text(),
                parser="lalr",
                start="statement",
                keep_all_tokens=True,
                maybe_placeholders=False,
            )
    raise FileNotFoundError("grammar/policy.lark not found")


@functools.cache
def _keyword_types() -> frozenset[str]:
    """Token types of literal keywords and punctuation: kept in the tree for positions,
    skipped when reading a node's parts."""
    return frozenset(
        t.name
        for t in _lark().terminals
        if t.pattern.type == "str" and t.name not in ("NOT", "NOCASE")
    )


@functools.cache
def _terminal_texts() -> dict[str, str]:
    """Terminal name -> what a person would type, for 'expected …' messages."""
    texts: dict[str, str] = {}
    for term in _lark().terminals:
        pattern = term.pattern
        if pattern.type == "str":
            texts[term.name] = pattern.value
    texts.update(
        WORD="a name",
        INT="a number",
        ADDR="an address",
        VAR="a $variable",
        TABLEREF="a @table",
        STRING='a "string"',
        HEX="|hex bytes|",
        DURATION="a duration (30s, 10m, 1h)",
        SIZE="a size (64k, 1M)",
        RATE="a rate (50/s)",
        FLAGSPEC="TCP flags (S/SA)",
        CMP="a comparison (<, >, =)",
        NOT="!",
    )
    return texts


def _keywords_for(expected: set[str]) -> list[str]:
    """The literal keywords among the expected terminals (for did-you-mean)."""
    words: list[str] = []
    for name in expected:
        text = _terminal_texts().get(name)
        if text and re.fullmatch(r"[a-z][a-z0-9-]*", text):
            words.append(text)
    return sorted(set(words))


def _describe_expected(expected: set[str]) -> str:
    texts = _terminal_texts()
    shown = sorted({texts.get(name, name) for name in expected if name != "$END"})
    if "$END" in expected:
        shown.append("end of line")
    return ", ".join(shown)


def _expected_hint(expected: set[str]) -> str | None:
    """'expected …' when the choice is short enough to help; long lists only confuse."""
    if not expected or len(expected) > 8:
        return None
    return f"expected {_describe_expected(expected)}"


# ---- cutting a file into statements -----------------------------------------------------------


def split_statements(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first line number, statement text) for each statement of a file.

    The statement text starts at the beginning of its first line (indentation kept) so that
    the columns Lark reports are the file's columns; only line numbers need shifting.
    Raises nothing: an unclosed brace runs to the end of the file and the parser reports it.
    """
    lines = text.split("\n")
    n = len(lines)
    i = 0
    while i < n:
        line = lines[i]
        if "{" not in line and "}" not in line and "\\" not in line:
            # Most lines: no brace, no backslash, so a statement of their own (or nothing).
            i += 1
            code = line if '"' not in line and "#" not in line else _code_part(line)
            if code.strip():
                yield i, line
            continue
        start = i
        depth = 0
        buf: list[str] = []
        while i < n:
            line = lines[i]
            if buf and depth > 0 and _starts_statement(line):
                break  # an unclosed '{' must not swallow the statements after it
            buf.append(line)
            i += 1
            depth += _brace_delta(line)
            if depth > 0:
                continue
            if _ends_with_continuation(line):
                continue
            break
        chunk = "\n".join(buf)
        if _has_content(chunk):
            yield start + 1, chunk


_STRIP_STRINGS = re.compile(r'"(?:\\.|[^"\\\n])*"')


def _code_part(line: str) -> str:
    """The line with strings blanked (same length) and comments cut off: for brace counting
    and continuations."""
    line = _STRIP_STRINGS.sub(lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', line)
    hash_at = line.find("#")
    return line if hash_at < 0 else line[:hash_at]


def _brace_delta(line: str) -> int:
    code = _code_part(line)
    return code.count("{") - code.count("}")


def _ends_with_continuation(line: str) -> bool:
    return _code_part(line).rstrip().endswith("\\")


def _starts_statement(line: str) -> bool:
    words = _code_part(line).split(None, 1)
    return bool(words) and words[0] in STATEMENT_KEYWORDS


def _one_line(chunk: str) -> str:
    """A statement as one line, for reports: comments and continuations dropped."""
    parts = []
    for line in chunk.split("\n"):
        code = _code_part(line).rstrip()
        if code.endswith("\\"):
            code = code[:-1]
        # _code_part blanked the strings; take the same span of the original line back
        parts.append(line[: len(code)].strip())
    return " ".join(p for p in parts if p)


def _has_content(chunk: str) -> bool:
    return any(_code_part(line).strip() for line in chunk.split("\n"))


# ---- tokens and trees -> AST ------------------------------------------------------------------


# Lark types every child of a tree as `Tree | Token`; which of the two sits at a position is
# fixed by the grammar. The builder names it with these (no run-time check: the grammar is the
# check).
def _tree(node: Tree | Token) -> Tree:
    return cast(Tree, node)


def _token(node: Tree | Token) -> Token:
    return cast(Token, node)


class _Builder:
    """Turns one statement's Lark tree into AST nodes, shifting line numbers into the file."""

    def __init__(self, file: str, line_offset: int, diags: Diagnostics) -> None:
        self.file = file
        self.line_offset = line_offset
        self.diags = diags

    def tok_span(self, tok: Token) -> Span:
        # Lark types a token's position as optional (a token made by hand has none); a token
        # from the parser always has one.
        line, col = cast(int, tok.line), cast(int, tok.column)
        end_line, end_col = cast(int, tok.end_line), cast(int, tok.end_column)
        offset = self.line_offset
        return Span(self.file, line + offset, col, end_line + offset, end_col)

    def tree_span(self, tree: Tree) -> Span:
        first = last = tree
        while isinstance(first, Tree):
            first = first.children[0]
        while isinstance(last, Tree):
            last = last.children[-1]
        start, end = self.tok_span(first), self.tok_span(last)
        return Span(self.file, start.line, start.col, end.end_line, end.end_col)

    @staticmethod
    def parts(tree: Tree) -> list[Tree | Token]:
        """The children that carry meaning (keywords and punctuation left out)."""
        keywords = _keyword_types()
        return [c for c in tree.children if not (isinstance(c, Token) and c.type in keywords)]

    def span_of(self, node: Tree | Token) -> Span:
        return self.tok_span(node) if isinstance(node, Token) else self.tree_span(node)

    # ---- values

    def item(self, node: Tree | Token) -> ast.Item:
        span = self.span_of(node)
        if isinstance(node, Tree):
            if node.data == "range":
                lo, hi = (int(_token(t)) for t in self.parts(node))
                return ast.Item("range", f"{lo}-{hi}", span, lo, hi)
            if node.data == "any":
                return ast.Item("any", "any", span)
            raise AssertionError(f"unexpected value tree {node.data}")
        kind = node.type
        if kind == "INT":
            return ast.Item("int", str(node), span, int(node), int(node))
        if kind == "ADDR":
            return ast.Item("addr", str(node), span)
        if kind == "WORD":
            return ast.Item("word", str(node), span)
        if kind == "STRING":
            return ast.Item("string", unescape(str(node)), span)
        if kind == "VAR":
            return ast.Item("var", str(node)[1:], span)
        if kind == "TABLEREF":
            return ast.Item("table", str(node)[1:], span)
        if kind == "DURATION":
            return ast.Item("duration", str(node), span)
        if kind == "RATE":
            return ast.Item("rate", str(node), span)
        if kind == "SIZE":
            return ast.Item("size", str(node), span)
        return ast.Item("word", str(node), span)

    def value(self, tree: Tree) -> ast.Value:
        negated = False
        children = self.parts(tree)
        if children and isinstance(children[0], Token) and children[0].type == "NOT":
            negated = True
            children = children[1:]
        (atom,) = children
        if isinstance(atom, Tree) and atom.data == "set":
            items = tuple(self.item(c) for c in self.parts(atom))
            return ast.Value(items, negated, True, self.tree_span(tree))
        return ast.Value((self.item(atom),), negated, False, self.tree_span(tree))

    def content(self, tok: Token) -> bytes | None:
        """A content token as bytes; None (reported) when its hex is bad."""
        try:
            return content_bytes(str(tok))
        except ValueError:
            self.diags.error(
                self.tok_span(tok),
                f"invalid hex bytes in {tok}",
                "hex is written as pairs of digits between bars: |0d 0a|",
                code="syntax",
            )
            return None

    # ---- statements

    def statement(self, tree: Tree, text: str) -> ast.Statement | None:
        (child,) = self.parts(tree)
        node = _tree(child)
        span = self.tree_span(node)
        kind = node.data
        ch = self.parts(node)
        if kind == "include":
            return ast.Include(span, unescape(str(ch[0])), self.tok_span(_token(ch[0])))
        if kind == "define":
            return ast.Define(
                span, str(ch[0]), self.tok_span(_token(ch[0])), self.value(_tree(ch[1]))
            )
        if kind == "table_static":
            return ast.TableDecl(
                span, str(ch[0]), self.tok_span(_token(ch[0])), "static", self.value(_tree(ch[1]))
            )
        if kind == "table_file":
            decl = ast.TableDecl(
                span, str(ch[0]), self.tok_span(_token(ch[0])), "file", path=unescape(str(ch[1]))
            )
            for opt in map(_tree, ch[2:]):
                if opt.data == "opt_refresh":
                    decl.refresh = self.item(self.parts(opt)[0])
                elif opt.data == "opt_on_error":
                    decl.on_error = self.item(self.parts(opt)[0])
                else:
                    decl.allow_empty = True
            return decl
        if kind == "table_dynamic":
            timeout = size = None
            for opt in map(_tree, ch[1:]):
                if opt.data == "opt_timeout":
                    timeout = self.item(self.parts(opt)[0])
                else:
                    size = self.item(self.parts(opt)[0])
            return ast.TableDecl(
                span,
                str(ch[0]),
                self.tok_span(_token(ch[0])),
                "dynamic",
                timeout=timeout,
                size=size,
            )
        if kind == "option":
            return ast.OptionStmt(span, str(ch[0]), self.tok_span(_token(ch[0])), self.item(ch[1]))
        if kind == "rule":
            action = _token(_tree(ch[0]).children[0])
            clauses = tuple(c for c in (self.clause(_tree(x)) for x in ch[1:]) if c is not None)
            return ast.RuleStmt(span, str(action), self.tok_span(action), clauses, _one_line(text))
        if kind == "detect":
            opts = tuple(self.detect_opt(_tree(o)) for o in ch[1:])
            return ast.DetectStmt(span, str(ch[0]), self.tok_span(_token(ch[0])), opts)
        raise AssertionError(f"unexpected statement {kind}")

    def detect_opt(self, tree: Tree) -> ast.DetectOpt:
        key = tree.data.removeprefix("d_")
        span = self.tree_span(tree)
        parts = self.parts(tree)
        if not parts:
            return ast.DetectOpt(key, span, None)
        child = parts[0]
        if isinstance(child, Tree) and child.data == "value":
            return ast.DetectOpt(key, span, self.value(child))
        return ast.DetectOpt(key, span, self.item(child))

    def clause(self, tree: Tree) -> ast.Clause | None:
        span = self.tree_span(tree)
        kind = tree.data
        ch = self.parts(tree)
        if kind == "family":
            return ast.FamilyClause(span, 6 if str(tree.children[0]) == "inet6" else 4)
        if kind == "proto":
            return ast.ProtoClause(span, self.value(_tree(ch[0])))
        if kind in ("src", "dst"):
            endpoint = _tree(ch[0])
            if endpoint.data == "port_only":
                return ast.EndpointClause(
                    span, kind == "src", None, self.value(_tree(self.parts(endpoint)[0]))
                )
            if endpoint.data == "org_endpoint":
                parts = self.parts(endpoint)
                text = self.item(parts[0])
                org = ast.Value((text,), False, False, text.span)
                port = self.value(_tree(parts[1])) if len(parts) > 1 else None
                return ast.EndpointClause(span, kind == "src", org, port, "org")
            geo = None
            addr_and_port = self.parts(endpoint)
            if endpoint.data == "geo_endpoint":
                geo = str(_tree(addr_and_port[0]).children[0])
                addr_and_port = addr_and_port[1:]
            addr = self.value(_tree(addr_and_port[0]))
            port = self.value(_tree(addr_and_port[1])) if len(addr_and_port) > 1 else None
            return ast.EndpointClause(span, kind == "src", addr, port, geo)
        if kind == "direction":
            return ast.InterfaceClause(span, str(_tree(ch[0]).children[0]), None)
        if kind == "direction_on":
            direction = str(_tree(ch[0]).children[0])
            return ast.InterfaceClause(span, direction, self.value(_tree(ch[1])))
        if kind == "on":
            return ast.InterfaceClause(span, None, self.value(_tree(ch[0])))
        if kind == "flags":
            return ast.FlagsClause(span, str(ch[0]))
        if kind == "icmp_type":
            code = self.value(_tree(ch[1])) if len(ch) > 1 else None
            return ast.IcmpTypeClause(span, self.value(_tree(ch[0])), code)
        if kind == "length":
            if isinstance(ch[0], Token) and ch[0].type == "CMP":
                op, val = str(ch[0]), ch[1]
            else:
                op, val = "=", ch[0]
            if isinstance(val, Tree):  # a range
                lo, hi = (int(_token(t)) for t in self.parts(val))
                if op != "=":
                    self.diags.error(span, "a length range takes no comparison", code="syntax")
                return ast.LengthClause(span, "range", lo, hi)
            length = int(_token(val))
            return ast.LengthClause(span, op, length, length)
        if kind == "state":
            return ast.StateClause(span, self.value(_tree(ch[0])))
        if kind == "fragment":
            return ast.FragmentClause(span)
        if kind == "contains":
            pattern = self.content(_token(ch[0]))
            if pattern is None:
                return None
            return ast.ContainsClause(span, pattern, len(ch) > 1)
        if kind == "depth":
            return ast.DepthClause(span, self.item(ch[0]))
        if kind == "app":
            return ast.AppClause(span, self.value(_tree(ch[0])))
        if kind in ("app_field", "app_contains"):
            proto = str(_tree(ch[0]).children[0])
            field = self.item(ch[1])
            if kind == "app_field":
                return ast.AppFieldClause(span, proto, field, self.value(_tree(ch[2])))
            return ast.AppFieldClause(span, proto, field, None, unescape(str(ch[2])), len(ch) > 3)
        if kind == "limit":
            burst = per = else_action = None
            for opt in map(_tree, ch[1:]):
                if opt.data == "limit_burst":
                    burst = int(_token(self.parts(opt)[0]))
                elif opt.data == "limit_per":
                    per = self.item(self.parts(opt)[0])
                else:
                    else_action = self.item(_tree(self.parts(opt)[0]).children[0])
            return ast.LimitClause(span, str(ch[0]), burst, per, else_action)
        if kind == "rewrite_set":
            return ast.SetClause(span, self.item(ch[0]), self.value(_tree(ch[1])))
        if kind == "replace":
            old, new = self.content(_token(ch[0])), self.content(_token(ch[1]))
            if old is None or new is None:
                return None
            return ast.ReplaceClause(span, old, new)
        if kind == "reject_with":
            code = self.value(_tree(ch[1])) if len(ch) > 1 else None
            return ast.RejectWithClause(span, self.item(ch[0]), code)
        if kind == "alert":
            return ast.AlertClause(span, unescape(str(ch[0])) if ch else None)
        if kind == "log":
            return ast.LogClause(span)
        if kind == "inspect":
            return ast.InspectClause(span)
        if kind == "sid":
            return ast.SidClause(span, int(_token(ch[0])))
        if kind == "severity":
            return ast.SeverityClause(span, self.item(ch[0]))
        if kind == "label":
            return ast.LabelClause(span, unescape(str(ch[0])))
        raise AssertionError(f"unexpected clause {kind}")


# ---- entry point ------------------------------------------------------------------------------


def parse_text(text: str, file: str, diags: Diagnostics) -> ast.PolicyFile:
    """Parse a whole policy text. Syntax errors go to `diags`; the statements that parsed are
    returned so the resolver can still check them (and report their errors too).

    A one-line statement is first offered to the fast path (fastparse.py), which builds the
    same nodes as Lark in a fraction of the time, or declines; Lark reads the rest."""
    policy = ast.PolicyFile(file, text)
    statements = policy.statements
    for first_line, chunk in split_statements(text):
        stmt = parse_line(chunk, file, first_line) if "\n" not in chunk else None
        if stmt is None:
            stmt = parse_statement(chunk, file, first_line, diags)
        if stmt is not None:
            statements.append(stmt)
    return policy


def parse_statement(
    chunk: str, file: str, first_line: int, diags: Diagnostics
) -> ast.Statement | None:
    """One statement (of one or more lines, starting at first_line) read by Lark; None when
    it has errors, which go to `diags`."""
    offset = first_line - 1
    try:
        tree = _lark().parse(chunk)
    except UnexpectedInput as exc:
        _report_syntax_error(exc, chunk, file, offset, diags)
        return None
    builder = _Builder(file, offset, diags)
    try:
        return builder.statement(tree, chunk)
    except ValueError:  # int() of a number of thousands of digits
        first, col = _first_word_position(chunk)
        line = first + offset
        diags.error(
            Span(file, line, col, line, col + 1),
            "a number in this statement is too large",
            code="bad-value",
        )
        return None


def _report_syntax_error(
    exc: UnexpectedInput, chunk: str, file: str, offset: int, diags: Diagnostics
) -> None:
    line = (exc.line if exc.line and exc.line > 0 else 1) + offset
    col = exc.column if exc.column and exc.column > 0 else 1
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        tok = exc.token
        word = str(tok)
        expected = set(exc.expected)
        span = Span(file, line, col, line, col + max(1, len(word)))
        first = _first_word_position(chunk)
        if (tok.line, tok.column) == first:
            hint = did_you_mean(word, STATEMENT_KEYWORDS)
            diags.error(
                span,
                f"unknown statement '{word}'",
                hint
                or "a statement starts with an action (accept, drop, reject, rewrite, "
                "match) or with include, define, table, set or detect",
                code="syntax",
            )
            return
        hint = did_you_mean(word, _keywords_for(expected)) or _misspelt_keyword_before(
            chunk, tok.line or 1, tok.column or 1
        )
        diags.error(
            span,
            f"unexpected '{word}'",
            hint or _expected_hint(expected),
            code="syntax",
        )
        return
    if isinstance(exc, UnexpectedCharacters):
        bad = chunk.split("\n")[exc.line - 1][exc.column - 1 :] if exc.line else ""
        first_word = re.match(r"[^\s{},]*", bad)
        text = first_word.group(0) if first_word and first_word.group(0) else bad[:1]
        span = Span(file, line, col, line, col + max(1, len(text)))
        expected = set(exc.allowed or ())
        hint = did_you_mean(text, _keywords_for(expected)) if text else None
        if text.startswith('"'):
            msg, hint = "unterminated string", hint or 'strings end with " on the same line'
        else:
            msg = f"unexpected '{text}'"
            if not hint:
                hint = _expected_hint(expected)
        diags.error(span, msg, hint, code="syntax")
        return
    # end of statement reached too early
    expected = set(getattr(exc, "expected", ()) or ())
    lines = chunk.split("\n")
    last = len(lines)
    while last > 1 and not lines[last - 1].strip():
        last -= 1
    end_col = len(lines[last - 1].rstrip()) + 1
    span = Span(file, last + offset, end_col, last + offset, end_col + 1)
    code = "\n".join(_code_part(x) for x in lines)
    if code.count("{") > code.count("}"):
        brace_line, brace_col = _find_unclosed_brace(chunk)
        diags.error(
            Span(file, brace_line + offset, brace_col, brace_line + offset, brace_col + 1),
            "unclosed '{'",
            "close the set with '}'",
            code="syntax",
        )
        return
    what = _describe_expected(expected) if expected else "more"
    diags.error(span, "incomplete statement", f"expected {what}", code="syntax")


def _misspelt_keyword_before(chunk: str, line: int, col: int) -> str | None:
    """`to prot 80`: 'prot' parses as a name (an address word), so the error lands on '80'.
    When the word just before the error is close to a keyword the parser would have taken
    there, name it."""
    lines = chunk.split("\n")
    before = lines[line - 1][: col - 1]
    m = re.search(r"([A-Za-z][A-Za-z0-9-]*)\s*$", _code_part(before))
    if not m:
        return None
    prefix = "\n".join([*lines[: line - 1], before[: m.start(1)]])
    try:
        interactive = _lark().parse_interactive(prefix)
        interactive.exhaust_lexer()
        accepted = set(interactive.accepts())
    except UnexpectedInput:
        return None
    keywords = _keywords_for(accepted)
    if m.group(1) in keywords:
        return None
    close = did_you_mean(m.group(1), keywords)
    return f"'{m.group(1)}' is not a keyword: {close}" if close else None


def _first_word_position(chunk: str) -> tuple[int, int]:
    for lineno, line in enumerate(chunk.split("\n"), start=1):
        stripped = line.lstrip()
        if stripped and not stripped.startswith("#"):
            return lineno, len(line) - len(stripped) + 1
    return 1, 1


def _find_unclosed_brace(chunk: str) -> tuple[int, int]:
    stack: list[tuple[int, int]] = []
    for lineno, line in enumerate(chunk.split("\n"), start=1):
        code = _code_part(line)
        for col, ch in enumerate(code, start=1):
            if ch == "{":
                stack.append((lineno, col))
            elif ch == "}" and stack:
                stack.pop()
    return stack[-1] if stack else (1, 1)
