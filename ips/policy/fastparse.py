"""A fast reader for the common one-line statements, beside the Lark parser.

Lark's LALR parser and contextual lexer spend about 25 µs a token-heavy rule; a policy of
200,000 rules took most of its `check` time there. This module reads one line by hand and
builds the very ast nodes the Lark path builds (parser._Builder), with the same spans. It
takes only what it fully recognises: a statement over several lines, a `detect`, a word that
Lark's lexer could cut in another way, a keyword where a name stands, anything wrong — and
it answers None, and the statement goes to Lark. Lark alone reports syntax errors, so every
diagnostic keeps its one source. tests/pure/test_policy_fastparse.py checks that both paths
give identical statements, on every policy of the repository and on generated ones.

How a line is cut: one regex splits it into tokens (strings, |hex|, punctuation, comments,
and bare words); a bare word is then classified where it stands, as Lark's contextual lexer
does: the terminals that Lark accepts in that place are tried in Lark's order (an address
before a number or a word), the first that matches decides, and unless it matches the whole
bare word, the line goes to Lark.
"""

from __future__ import annotations

import re

from ips.policy import ast
from ips.policy.diagnostics import Span
from ips.policy.literals import content_bytes, unescape

# (blanks before, token). Blanks are those Lark ignores; any other character is a token of
# its own (the last alternative) that no rule below accepts.
_TOKEN = re.compile(
    r"([ \t\r\f]*)("
    r'"(?:\\.|[^"\\\n])*"'  # STRING
    r"|\|[0-9A-Fa-f\s]*\|"  # HEX
    r"|<=|>=|!=|[<>{},=!]"  # comparisons, punctuation, NOT
    r"|#.*"  # a comment: the rest of the line
    r'|[^\s{},!"#|=<>\\]+'  # a bare word: an address, number, name, rate, flags …
    r"|.)"
)

# The terminals of grammar/policy.lark, as written there.
_ADDR = re.compile(
    r"(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(\/\d{1,3})?"
    r"|(?=[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:)[0-9A-Fa-f:.]+(\/\d{1,3})?)"
)
_INT = re.compile(r"\d+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\*?")
_VAR = re.compile(r"\$[A-Za-z_][A-Za-z0-9_\-]*")
_TABLEREF = re.compile(r"@[A-Za-z_][A-Za-z0-9_\-]*")
_DURATION = re.compile(r"\d+(ms|s|m|h|d)(?![A-Za-z0-9])")
_SIZE = re.compile(r"\d+(k|K|KiB|M|MiB|G|GiB)(?![A-Za-z0-9])")
_RATE = re.compile(r"\d+\/(s|m|h|d|second|minute|hour|day)(?![A-Za-z0-9])")
_FLAGSPEC = re.compile(r"[A-Za-z]*\/[A-Za-z]+|[A-Za-z]+")
# `80-90` is three tokens for Lark (INT "-" INT); here one bare word.
_RANGE = re.compile(r"(\d+)-(\d+)")

# Every keyword of the grammar (tests/pure/test_policy_fastparse.py compares this with the
# grammar). Where a value stands, Lark takes these words as keywords only when that place
# accepts them; rather than follow it there, a keyword among values sends the line to Lark.
KEYWORDS = frozenset({
    "include", "define", "table", "file", "dynamic", "timeout", "size", "set",
    "accept", "pass", "drop", "block", "reject", "rewrite", "match",
    "proto", "from", "to", "on", "flags", "type", "code", "length", "state", "fragment",
    "payload", "contains", "nocase", "depth", "limit", "replace", "with", "alert", "log", "inspect",
    "sid", "severity", "label", "inet6", "inet", "in", "out", "port", "burst", "per", "else",
    "detect", "ports", "hosts", "count", "within", "rate", "ignore", "distributed",
    "sources", "bytes", "packets",
    "any", "app", "tls", "quic", "dns", "http", "country", "asn", "org", "refresh",
})  # fmt: skip
# The keywords that start an application-layer clause. Three of them are also names a value
# holds (`to port http`, `app tls`, `app dns`); item() reads a value only where one must
# stand, and there Lark's contextual lexer takes them for words (it tries a keyword only where
# the parser accepts it), so item() does too rather than send every `port http` to Lark.
L7_KEYWORDS = frozenset({"app", "tls", "quic", "dns", "http"})
_VALUE_KEYWORDS = KEYWORDS - L7_KEYWORDS
ACTIONS = frozenset({"accept", "pass", "drop", "block", "reject", "rewrite", "match"})
_CMP = frozenset({"<=", ">=", "<", ">", "=", "!="})


class _Bail(Exception):
    """Not a line for the fast path: Lark reads it."""


_new_span = tuple.__new__  # Span(...) without NamedTuple's Python-level __new__


def parse_line(line: str, file: str, lineno: int) -> ast.Statement | None:
    """The statement of one line (no newline in it), as the Lark path builds it; None when
    the line is not one the fast path reads (then Lark must)."""
    try:
        return _Line(line, file, lineno).statement()
    except (_Bail, IndexError, ValueError):
        # IndexError: the line ended where a token was needed. ValueError: int() of a number
        # too long, or bad hex: the Lark path reports those.
        return None


class _Line:
    __slots__ = ("file", "i", "line", "lineno", "starts", "texts")

    def __init__(self, line: str, file: str, lineno: int) -> None:
        pairs = _TOKEN.findall(line)
        if pairs and pairs[-1][1][0] == "#":
            pairs.pop()  # a comment runs to the end of the line: it is the last token
        starts: list[int] = []
        pos = 0
        for blanks, text in pairs:
            pos += len(blanks)
            starts.append(pos)
            pos += len(text)
        texts = [text for _, text in pairs]
        texts.append("")  # the end of the line: matches nothing, so no bound checks below
        starts.append(pos)
        self.texts = texts
        self.starts = starts
        self.i = 0
        self.file = file
        self.lineno = lineno
        self.line = line

    # ---- tokens

    def span(self, start: int, end: int) -> Span:
        """Span of line[start:end] (0-based, end exclusive)."""
        n = self.lineno
        return _new_span(Span, (self.file, n, start + 1, n, end + 1))

    def take(self) -> tuple[str, int]:
        i = self.i
        self.i = i + 1
        return self.texts[i], self.starts[i]

    def peek(self) -> str:
        return self.texts[self.i]

    def keyword(self, word: str) -> int:
        """Take the keyword `word`; its start."""
        text, start = self.take()
        if text != word:
            raise _Bail
        return start

    def matched(self, pattern: re.Pattern[str]) -> tuple[str, int]:
        """Take a bare word that `pattern` matches whole."""
        text, start = self.take()
        m = pattern.match(text)
        if m is None or m.end() != len(text):
            raise _Bail
        return text, start

    def word(self) -> tuple[str, int]:
        """A WORD where Lark accepts only words (no keyword): a keyword's text is a word there."""
        return self.matched(_WORD)

    def string(self) -> tuple[str, int]:
        text, start = self.take()
        if text[:1] != '"' or len(text) < 2:
            raise _Bail
        return text, start

    def content(self) -> tuple[bytes, int]:
        """A STRING or |HEX| content; its bytes and where it ends."""
        text, start = self.take()
        first = text[:1]
        if not (first == '"' or first == "|") or len(text) < 2:
            raise _Bail
        return content_bytes(text), start + len(text)

    # ---- values

    def item(self) -> ast.Item:
        """One atom of a value (not `any`, not a set): ADDR, INT, range, WORD, STRING, VAR,
        TABLEREF, tried in Lark's order."""
        i = self.i
        text = self.texts[i]
        start = self.starts[i]
        self.i = i + 1
        n = self.lineno
        size = len(text)
        span = _new_span(Span, (self.file, n, start + 1, n, start + size + 1))
        first = text[:1]
        if first == '"':
            if size < 2:
                raise _Bail
            return ast.Item("string", unescape(text), span)
        if first == "$":
            if (m := _VAR.match(text)) is None or m.end() != size:
                raise _Bail
            return ast.Item("var", text[1:], span)
        if first == "@":
            if (m := _TABLEREF.match(text)) is None or m.end() != size:
                raise _Bail
            return ast.Item("table", text[1:], span)
        if (m := _ADDR.match(text)) is not None:
            if m.end() != size:
                raise _Bail
            return ast.Item("addr", text, span)
        if (m := _INT.match(text)) is not None:
            if m.end() == size:
                number = int(text)
                return ast.Item("int", text, span, number, number)
            if (r := _RANGE.fullmatch(text)) is None:
                raise _Bail
            lo, hi = int(r.group(1)), int(r.group(2))
            return ast.Item("range", f"{lo}-{hi}", span, lo, hi)
        if (m := _WORD.match(text)) is not None and m.end() == size:
            if text in _VALUE_KEYWORDS:
                raise _Bail
            return ast.Item("word", _WORDS.get(text, text), span)
        raise _Bail

    def value(self) -> ast.Value:
        """value: NOT? (atom | any | set)."""
        text = self.texts[self.i]
        first = self.starts[self.i]
        negated = text == "!"
        if negated:
            self.i += 1
            text = self.texts[self.i]
        if text == "{":
            self.i += 1
            items: list[ast.Item] = []
            while True:
                text = self.texts[self.i]
                if text == "}":
                    break
                if text == "":
                    raise _Bail
                items.append(self.item())
                if self.texts[self.i] == ",":
                    self.i += 1
            end = self.starts[self.i] + 1
            self.i += 1
            return ast.Value(tuple(items), negated, True, self.span(first, end))
        if text == "any":
            start = self.starts[self.i]
            self.i += 1
            span = self.span(start, start + 3)
            item = ast.Item("any", "any", span)
            if negated:
                span = self.span(first, start + 3)
            return ast.Value((item,), negated, False, span)
        item = self.item()
        if negated:
            return ast.Value((item,), True, False, self.span(first, item.span.end_col - 1))
        return ast.Value((item,), False, False, item.span)

    def value_follows(self) -> bool:
        """Whether an optional value starts here (after `with WORD`): a keyword of a clause
        does not; any other keyword sends the line to Lark."""
        text = self.texts[self.i]
        if text == "" or text in _CLAUSES:
            return False
        if text in KEYWORDS and text != "any":
            raise _Bail
        return True

    # ---- statements

    def statement(self) -> ast.Statement | None:
        text, start = self.take()
        if text in ACTIONS:
            stmt: ast.Statement = self.rule(text, start)
        elif text == "set":
            name, name_at = self.word()
            option = self.option_value()
            stmt = ast.OptionStmt(
                self.span(start, option.span.end_col - 1),
                name,
                self.span(name_at, name_at + len(name)),
                option,
            )
        elif text == "define":
            name, name_at = self.word()
            self.keyword("=")
            value = self.value()
            stmt = ast.Define(
                self.span(start, value.span.end_col - 1),
                name,
                self.span(name_at, name_at + len(name)),
                value,
            )
        elif text == "table":
            stmt = self.table(start)
        elif text == "include":
            path, at = self.string()
            stmt = ast.Include(
                self.span(start, at + len(path)), unescape(path), self.span(at, at + len(path))
            )
        else:
            return None  # detect, and what is no statement: Lark reads (and reports) it
        if self.texts[self.i] != "":
            raise _Bail
        return stmt

    def option_value(self) -> ast.Item:
        """option_value: WORD | INT | DURATION | SIZE | STRING (DURATION and SIZE first: they
        have priority)."""
        text, start = self.take()
        end = start + len(text)
        if text[:1] == '"':
            if len(text) < 2:
                raise _Bail
            return ast.Item("string", unescape(text), self.span(start, end))
        return self.sized(text, start)

    def sized(self, text: str, start: int) -> ast.Item:
        """A DURATION, SIZE, INT or WORD bare word, tried in Lark's order (priority first)."""
        end = start + len(text)
        for pattern in (_DURATION, _SIZE, _INT, _WORD):
            m = pattern.match(text)
            if m is None:
                continue
            if m.end() != len(text):
                raise _Bail
            span = self.span(start, end)
            if pattern is _DURATION:
                return ast.Item("duration", text, span)
            if pattern is _SIZE:
                return ast.Item("size", text, span)
            if pattern is _INT:
                return ast.Item("int", text, span, int(text), int(text))
            return ast.Item("word", text, span)
        raise _Bail

    def table(self, start: int) -> ast.TableDecl:
        name, name_at = self.word()
        name_span = self.span(name_at, name_at + len(name))
        how, at = self.take()
        if how == "=":
            value = self.value()
            return ast.TableDecl(
                self.span(start, value.span.end_col - 1), name, name_span, "static", value
            )
        if how == "file":
            path, at = self.string()
            end = at + len(path)
            decl = ast.TableDecl(
                self.span(start, end), name, name_span, "file", path=unescape(path)
            )
            while (text := self.texts[self.i]) in ("refresh", "on-error", "allow-empty"):
                self.i += 1
                if text == "refresh":
                    duration, at = self.matched(_DURATION)
                    end = at + len(duration)
                    decl.refresh = ast.Item("duration", duration, self.span(at, end))
                elif text == "on-error":
                    word, at = self.word()
                    end = at + len(word)
                    decl.on_error = ast.Item("word", word, self.span(at, end))
                else:
                    end = self.starts[self.i - 1] + len(text)
                    decl.allow_empty = True
            decl.span = self.span(start, end)
            return decl
        if how != "dynamic":
            raise _Bail
        end = at + len(how)
        timeout = size = None
        while (text := self.texts[self.i]) in ("timeout", "size"):
            self.i += 1
            if text == "timeout":
                duration, at = self.matched(_DURATION)
                end = at + len(duration)
                timeout = ast.Item("duration", duration, self.span(at, end))
            else:
                count, at = self.matched(_INT)
                end = at + len(count)
                size = ast.Item("int", count, self.span(at, end), int(count), int(count))
        return ast.TableDecl(
            self.span(start, end), name, name_span, "dynamic", timeout=timeout, size=size
        )

    def rule(self, action: str, start: int) -> ast.RuleStmt:
        clauses: list[ast.Clause] = []
        end = start + len(action)
        texts, starts, clauses_by_keyword = self.texts, self.starts, _CLAUSES
        while (text := texts[self.i]) != "":
            handler = clauses_by_keyword.get(text)
            if handler is None:
                raise _Bail
            at = starts[self.i]
            self.i += 1
            clause = handler(self, at)
            clauses.append(clause)
            end = clause.span.end_col - 1
        return ast.RuleStmt(
            self.span(start, end),
            action,
            self.span(start, start + len(action)),
            tuple(clauses),
            self.line[start:end],
        )

    # ---- clauses: each is called with the start of its keyword, already taken

    def c_family(self, at: int) -> ast.Clause:
        six = self.texts[self.i - 1] == "inet6"
        return ast.FamilyClause(self.span(at, at + (5 if six else 4)), 6 if six else 4)

    def c_proto(self, at: int) -> ast.Clause:
        value = self.value()
        return ast.ProtoClause(self.span(at, value.span.end_col - 1), value)

    def c_endpoint(self, at: int) -> ast.Clause:
        is_src = self.texts[self.i - 1] == "from"
        addr = None
        geo = self.texts[self.i]
        if geo in ("country", "asn"):
            self.i += 1
            addr = self.value()
        elif geo == "org":
            self.i += 1
            self.keyword("contains")
            text = self.item()
            if text.kind != "string":
                raise _Bail
            addr = ast.Value((text,), False, False, text.span)
        else:
            geo = None
            if self.texts[self.i] != "port":
                addr = self.value()
        port = None
        if self.texts[self.i] == "port":
            self.i += 1
            port = self.value()
        last = port if port is not None else addr
        assert last is not None
        return ast.EndpointClause(self.span(at, last.span.end_col - 1), is_src, addr, port, geo)

    def c_direction(self, at: int) -> ast.Clause:
        direction = self.texts[self.i - 1]
        if self.texts[self.i] == "on":
            self.i += 1
            value = self.value()
            return ast.InterfaceClause(self.span(at, value.span.end_col - 1), direction, value)
        return ast.InterfaceClause(self.span(at, at + len(direction)), direction, None)

    def c_on(self, at: int) -> ast.Clause:
        value = self.value()
        return ast.InterfaceClause(self.span(at, value.span.end_col - 1), None, value)

    def c_flags(self, at: int) -> ast.Clause:
        spec, start = self.matched(_FLAGSPEC)
        return ast.FlagsClause(self.span(at, start + len(spec)), spec)

    def c_type(self, at: int) -> ast.Clause:
        type_value = self.value()
        code_value = None
        if self.texts[self.i] == "code":
            self.i += 1
            code_value = self.value()
        last = code_value if code_value is not None else type_value
        return ast.IcmpTypeClause(self.span(at, last.span.end_col - 1), type_value, code_value)

    def c_length(self, at: int) -> ast.Clause:
        op = "="
        if self.texts[self.i] in _CMP:
            op = self.texts[self.i]
            self.i += 1
        text, start = self.take()
        span = self.span(at, start + len(text))
        if (m := _INT.match(text)) is not None and m.end() == len(text):
            return ast.LengthClause(span, op, int(text), int(text))
        r = _RANGE.fullmatch(text)
        if r is None or op != "=":
            raise _Bail  # a comparison before a range is an error: Lark's path reports it
        return ast.LengthClause(span, "range", int(r.group(1)), int(r.group(2)))

    def c_state(self, at: int) -> ast.Clause:
        value = self.value()
        return ast.StateClause(self.span(at, value.span.end_col - 1), value)

    def c_fragment(self, at: int) -> ast.Clause:
        return ast.FragmentClause(self.span(at, at + 8))

    def c_payload(self, at: int) -> ast.Clause:
        self.keyword("contains")
        pattern, end = self.content()
        nocase = self.texts[self.i] == "nocase"
        if nocase:
            self.i += 1
            end = self.starts[self.i - 1] + 6
        return ast.ContainsClause(self.span(at, end), pattern, nocase)

    def c_depth(self, at: int) -> ast.Clause:
        text, start = self.take()
        if text in KEYWORDS:
            raise _Bail  # Lark's contextual lexer takes it for a WORD there; it reports it
        value = self.sized(text, start)
        return ast.DepthClause(self.span(at, value.span.end_col - 1), value)

    def c_app(self, at: int) -> ast.Clause:
        value = self.value()
        return ast.AppClause(self.span(at, value.span.end_col - 1), value)

    def c_app_field(self, at: int) -> ast.Clause:
        """`tls sni VALUE`, `http uri contains "s" [nocase]`: the protocol keyword is taken."""
        proto = self.texts[self.i - 1]
        name, start = self.word()
        field = ast.Item("word", name, self.span(start, start + len(name)))
        if self.texts[self.i] == "contains":
            self.i += 1
            text, start = self.string()
            end = start + len(text)
            nocase = self.texts[self.i] == "nocase"
            if nocase:
                end = self.starts[self.i] + 6
                self.i += 1
            return ast.AppFieldClause(
                self.span(at, end), proto, field, None, unescape(text), nocase
            )
        value = self.value()
        return ast.AppFieldClause(self.span(at, value.span.end_col - 1), proto, field, value)

    def c_limit(self, at: int) -> ast.Clause:
        rate, start = self.matched(_RATE)
        end = start + len(rate)
        burst: int | None = None
        per = else_action = None
        while (text := self.texts[self.i]) in ("burst", "per", "else"):
            self.i += 1
            if text == "burst":
                count, start = self.matched(_INT)
                burst = int(count)
                end = start + len(count)
            elif text == "per":
                word, start = self.word()
                end = start + len(word)
                per = ast.Item("word", word, self.span(start, end))
            else:
                action, start = self.take()
                if action not in ACTIONS:
                    raise _Bail
                end = start + len(action)
                else_action = ast.Item("word", action, self.span(start, end))
        return ast.LimitClause(self.span(at, end), rate, burst, per, else_action)

    def c_set(self, at: int) -> ast.Clause:
        name, start = self.word()
        value = self.value()
        field = ast.Item("word", name, self.span(start, start + len(name)))
        return ast.SetClause(self.span(at, value.span.end_col - 1), field, value)

    def c_replace(self, at: int) -> ast.Clause:
        old, _ = self.content()
        self.keyword("with")
        new, end = self.content()
        return ast.ReplaceClause(self.span(at, end), old, new)

    def c_with(self, at: int) -> ast.Clause:
        kind, start = self.word()
        end = start + len(kind)
        code = self.value() if self.value_follows() else None
        if code is not None:
            end = code.span.end_col - 1
        return ast.RejectWithClause(
            self.span(at, end), ast.Item("word", kind, self.span(start, start + len(kind))), code
        )

    def c_alert(self, at: int) -> ast.Clause:
        text = self.texts[self.i]
        if text[:1] == '"':
            message, start = self.string()
            return ast.AlertClause(self.span(at, start + len(message)), unescape(message))
        return ast.AlertClause(self.span(at, at + 5), None)

    def c_log(self, at: int) -> ast.Clause:
        return ast.LogClause(self.span(at, at + 3))

    def c_inspect(self, at: int) -> ast.Clause:
        return ast.InspectClause(self.span(at, at + 7))

    def c_sid(self, at: int) -> ast.Clause:
        sid, start = self.matched(_INT)
        return ast.SidClause(self.span(at, start + len(sid)), int(sid))

    def c_severity(self, at: int) -> ast.Clause:
        text, start = self.take()
        end = start + len(text)
        if (m := _INT.match(text)) is not None:
            if m.end() != len(text):
                raise _Bail
            value = ast.Item("int", text, self.span(start, end), int(text), int(text))
        elif (m := _WORD.match(text)) is not None and m.end() == len(text):
            value = ast.Item("word", text, self.span(start, end))
        else:
            raise _Bail
        return ast.SeverityClause(self.span(at, end), value)

    def c_label(self, at: int) -> ast.Clause:
        label, start = self.string()
        return ast.LabelClause(self.span(at, start + len(label)), unescape(label))


# Words that stand in many rules (protocols, services, states), one string object each.
_WORDS = {
    w: w
    for w in (
        "tcp", "udp", "icmp", "icmpv6", "sctp", "esp", "gre", "http", "https", "ssh", "domain",
        "smtp", "ntp", "telnet", "echo-request", "echo-reply", "destination-unreachable",
        "time-exceeded", "new", "established", "related", "invalid", "src", "dst",
        "low", "medium", "high", "critical", "tcp-reset", "port-unreachable",
    )
}  # fmt: skip

# The keyword that starts each clause -> its reader.
_CLAUSES = {
    "inet": _Line.c_family,
    "inet6": _Line.c_family,
    "proto": _Line.c_proto,
    "from": _Line.c_endpoint,
    "to": _Line.c_endpoint,
    "in": _Line.c_direction,
    "out": _Line.c_direction,
    "on": _Line.c_on,
    "flags": _Line.c_flags,
    "type": _Line.c_type,
    "length": _Line.c_length,
    "state": _Line.c_state,
    "fragment": _Line.c_fragment,
    "payload": _Line.c_payload,
    "depth": _Line.c_depth,
    "app": _Line.c_app,
    "tls": _Line.c_app_field,
    "quic": _Line.c_app_field,
    "dns": _Line.c_app_field,
    "http": _Line.c_app_field,
    "limit": _Line.c_limit,
    "set": _Line.c_set,
    "replace": _Line.c_replace,
    "with": _Line.c_with,
    "alert": _Line.c_alert,
    "log": _Line.c_log,
    "inspect": _Line.c_inspect,
    "sid": _Line.c_sid,
    "severity": _Line.c_severity,
    "label": _Line.c_label,
}
