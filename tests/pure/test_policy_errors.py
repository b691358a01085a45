"""Every diagnostic the parser and the resolver can emit: where it points (file:line:col), what
it says, its hint, and how it is rendered (the source line and a caret under the column)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ips.policy.diagnostics import MAX_RENDERED, Diagnostic, PolicyError, render
from ips.policy.resolve import MAX_INCLUDE_DEPTH, load_policy, load_policy_text

# (policy text, line, col, message substring, hint substring or None = not checked)
ERRORS: list[tuple[str, int, int, str, str | None]] = [
    # ---- syntax (parser.py) -------------------------------------------------------------------
    ("acept proto tcp", 1, 1, "unknown statement 'acept'", "did you mean 'accept'?"),
    ("defin lan = 10.0.0.0/8", 1, 1, "unknown statement 'defin'", "did you mean 'define'?"),
    ("  frobnicate all", 1, 3, "unknown statement 'frobnicate'", "a statement starts with"),
    ('drop proto tcp to port 80 alret "x"', 1, 27, "unexpected 'alret'", "did you mean 'alert'?"),
    ("drop prot tcp", 1, 6, "unexpected 'prot'", "did you mean 'proto'?"),
    ("accept proto tcp flags S/SA stat new", 1, 29, "unexpected 'stat'", "'state'"),
    ('drop payload contains "x" nocas', 1, 27, "unexpected 'nocas'", "did you mean 'nocase'?"),
    ("table banned dynamc", 1, 14, "unexpected 'dynamc'", "did you mean 'dynamic'?"),
    ("detect portscan prots 5", 1, 17, "unexpected 'prots'", "did you mean 'ports'?"),
    ("detect portscan ports 5 within 10", 1, 32, "unexpected '10'", "expected a duration"),
    ("accept limit 10/sec", 1, 14, "unexpected '10'", "expected a rate"),
    ("include common.rules", 1, 9, "unexpected 'common'", 'expected a "string"'),
    ("drop proto tcp payload contains |0g|", 1, 33, "unexpected '|0g|'", "|hex bytes|"),
    ("accept from 10.0.0.1 ]", 1, 22, "unexpected ']'", None),
    ("drop proto tcp flags S/SA $", 1, 27, "unexpected '$'", None),
    ('drop alert "unterminated', 1, 12, "unterminated string", 'end with " on the same line'),
    ("accept from { 10.0.0.1, 10.0.0.2", 1, 13, "unclosed '{'", "close the set with '}'"),
    ("drop proto tcp to port", 1, 23, "incomplete statement", "expected"),
    ("set default", 1, 12, "incomplete statement", "a name"),
    ("accept length > 10-20", 1, 8, "a length range takes no comparison", None),
    ("drop proto tcp \\\n  to port 80 \\\n  alert sid", 3, 12, "incomplete statement", "number"),
    # ---- duplicates -----------------------------------------------------------------------------
    ("define a = 1\ndefine a = 2", 2, 8, "'a' is already defined at t.rules:1:8", None),
    ("table t = { 10.0.0.1 }\ntable t dynamic", 2, 7, "table 't' is already declared at", None),
    ("detect portscan alert\ndetect portscan alert", 2, 8,
     "detector 'portscan' is already configured", None),
    ("drop sid 5\ndrop sid 5", 2, 1, "sid 5 is already used at t.rules:1:1", None),
    ("accept proto tcp proto udp", 1, 18, "'proto' given twice in one rule (first at t.rules:1:8)",
     None),
    ("accept to port 80 to port 81", 1, 19, "'to' given twice in one rule", None),
    ("accept inet inet6", 1, 13, "'inet' given twice in one rule", None),
    # ---- options --------------------------------------------------------------------------------
    ("set defualt drop", 1, 5, "unknown option 'defualt'", "did you mean 'default'?"),
    ("set colour blue", 1, 5, "unknown option 'colour'", "options are: default, on-error"),
    ("set default dorp", 1, 13, "'dorp' is not a value of 'set default'", "'drop'"),
    ("set on-error reject", 1, 14, "'reject' is not a value of 'set on-error'", "accept, drop"),
    # ---- defines --------------------------------------------------------------------------------
    ("accept from $lna\ndefine lan = 10.0.0.0/8", 1, 13, "'$lna' is not defined", "'$lan'"),
    ("accept from $nowhere", 1, 13, "'$nowhere' is not defined", "define it: define NAME"),
    ("define a = $b\ndefine b = $a\naccept from $a", 2, 12,
     "'$a' is defined in terms of itself: $a -> $b -> $a", None),
    ("define n = !10.0.0.1\naccept from { $n, 10.0.0.2 }", 2, 15,
     "'$n' is negated and cannot be used inside a set", None),
    # ---- addresses ------------------------------------------------------------------------------
    ("accept from !any", 1, 14, "'any' cannot be negated or used in a set", None),
    ("define x = any\naccept from { $x, 10.0.0.1 }", 1, 12, "'any' cannot be negated", None),
    ("accept from @bnned\ntable banned dynamic", 1, 13, "unknown table '@bnned'", "'@banned'"),
    ("accept from @nothing", 1, 13, "unknown table '@nothing'", "declare it: table NAME"),
    ("table banned dynamic\ndetect portscan ignore @banned", 2, 24,
     "a dynamic table cannot be used here", None),
    ("define lan = 10.0.0.0/8\naccept from lan", 2, 13, "'lan' is not an address", "'$lan'"),
    ("table t = { 10.0.0.1 }\naccept from t", 2, 13, "'t' is not an address", "'@t'"),
    ("accept from foo", 1, 13, "'foo' is not an address", "write an address"),
    ("accept from 5", 1, 13, "'5' is not an address", None),
    ("accept from 1-5", 1, 13, "'1-5' is not an address", None),
    ('accept to "x"', 1, 11, "'x' is not an address", None),
    ("accept from 300.1.1.1", 1, 13, "invalid address '300.1.1.1'", "a.b.c.d[/len]"),
    ("accept from 010.0.0.1", 1, 13, "invalid address '010.0.0.1'", None),
    ("accept from 10.0.0.0/33", 1, 13, "invalid address '10.0.0.0/33'", None),
    ("accept to 2001:db8::/129", 1, 11, "invalid address '2001:db8::/129'", None),
    ("accept to 1::2::3", 1, 11, "invalid address '1::2::3'", None),
    # ---- ports ----------------------------------------------------------------------------------
    ("accept proto tcp to port 70000", 1, 26, "port 70000 is out of range 0-65535", None),
    ("accept proto tcp to port 90-80", 1, 26, "port range 90-80 is not within 0-65535", None),
    ("accept proto tcp to port 1-70000", 1, 26, "port range 1-70000 is not within", None),
    ("accept proto tcp to port { http, htp }", 1, 34, "unknown service 'htp'", "'http'"),
    ("define web = 80\naccept proto tcp to port web", 2, 26, "unknown service 'web'", "'$web'"),
    ("accept proto tcp to port xyzzy", 1, 26, "unknown service 'xyzzy'", "use a port number"),
    ("accept proto tcp to port 10.0.0.1", 1, 26, "'10.0.0.1' is not a port", None),
    ("define web = {\n  http,\n  htp\n}\naccept proto tcp to port $web", 3, 3,
     "unknown service 'htp'", "'http'"),
    ("accept proto tcp \\\n  to port 99999", 2, 11, "port 99999 is out of range", None),
    # ---- interfaces, states ---------------------------------------------------------------------
    ("accept in on 10.0.0.1", 1, 14, "'10.0.0.1' is not an interface name", None),
    ("accept state 10.0.0.1", 1, 14, "'10.0.0.1' is not a connection state", None),
    ("accept state estab", 1, 14, "unknown state 'estab'", "did you mean 'established'?"),
    ("accept state { new, closed }", 1, 21, "unknown state 'closed'", "new and established"),
    # ---- rates, tables --------------------------------------------------------------------------
    ("accept limit 0/s", 1, 8, "'0/s' is not a rate", "e.g. 50/s"),
    ("detect synflood rate 0/m", 1, 22, "'0/m' is not a rate", None),
    ("table t = !{ 10.0.0.1 }", 1, 11, "a table cannot be negated", None),
    ("table a = { 10.0.0.1 }\ntable t = { @a }", 2, 13, "a table cannot contain another table",
     None),
    ("table t = { foo }", 1, 13, "'foo' is not an address", None),
    ("table d dynamic size 0", 1, 22, "a table size must be at least 1", None),
    ('table f file "no-such-list.txt"', 1, 1, "cannot read table file 'no-such-list.txt'", None),
    # ---- detectors ------------------------------------------------------------------------------
    ("detect portscn", 1, 8, "unknown detector 'portscn'", "did you mean 'portscan'?"),
    ("detect frobnicator", 1, 8, "unknown detector 'frobnicator'", "detectors are: portscan"),
    ("detect portscan rate 5/s alert", 1, 17, "'rate' is not an option of detector 'portscan'",
     "options are: alert, block, ignore, ports, within"),
    ("detect synflood ports 5", 1, 17, "'ports' is not an option of detector 'synflood'", None),
    ("detect portscan ports 5 ports 6 alert", 1, 25, "'ports' given twice (first at t.rules:1:17)",
     None),
    ("detect portscan ports 0 alert", 1, 17, "'ports' must be at least 1", None),
    ("detect synflood per flow", 1, 21, "'per flow': a detector counts per src or per dst", None),
    ("detect synflood per dts", 1, 21, "'per dts'", "did you mean 'dst'?"),
    ("detect synflood block limit", 1, 23, "choose one response: block, limit or alert", None),
    # ---- rule clauses ---------------------------------------------------------------------------
    ("accept length 70000", 1, 8, "length must be within 0-65535, low-high", None),
    ("accept length 100-50", 1, 8, "length must be within 0-65535, low-high", None),
    ('drop payload contains ""', 1, 6, "payload contains needs a non-empty pattern", None),
    ('drop replace "a" with "b"', 1, 6, "'replace' belongs to a rewrite rule", None),
    ('rewrite replace "ab" with "c"', 1, 9,
     "replace needs two non-empty patterns of the same length (2 and 1 bytes)", "pad the shorter"),
    ('rewrite replace "" with ""', 1, 9, "(0 and 0 bytes)", None),
    ("drop with tcp-reset", 1, 6, "'with' belongs to a reject rule", None),
    ("accept proto udp flags S", 1, 18, "flags need proto tcp", None),
    ("accept proto icmp to port 80", 1, 27, "ports need proto tcp, udp or sctp", None),
    ("accept from 10.0.0.1 to 2001:db8::1", 1, 1, "this rule can never match", None),
    ("accept inet6 from 10.0.0.1", 1, 1, "this rule can never match", None),
    ("accept proto icmp inet6", 1, 1, "this rule can never match", None),
    ("rewrite proto icmpv6 set daddr 10.0.0.1", 1, 1, "this rule can never match", None),
    ("rewrite proto tcp", 1, 1, "a rewrite rule needs 'set FIELD VALUE'", "e.g. rewrite proto"),
    ("reject proto udp with tcp-reset", 1, 1, "reject with tcp-reset needs proto tcp", None),
    ("accept proto 300", 1, 14, "protocol number 300 is out of range 0-255", None),
    ("accept proto tpc", 1, 14, "unknown protocol 'tpc'", "did you mean 'tcp'?"),
    ("accept proto { tcp, quic }", 1, 21, "unknown protocol 'quic'", "e.g. tcp, udp"),
    ("accept flags SX", 1, 8, "unknown TCP flag 'X' in 'SX'", "flags are F(IN) S(YN)"),
    ("accept flags SA/S", 1, 8, "'SA/S': the flags before '/' must be part of the mask",
     "e.g. SA/SAS"),
    ("accept type echo-request", 1, 8,
     "'type' needs 'proto icmp' or 'proto icmpv6' in the same rule", "number their types"),
    ("accept proto { icmp, icmpv6 } type 8", 1, 31, "'type' needs 'proto icmp'", None),
    ("accept proto icmp type { 8, 0 } code 0", 1, 38, "'code' needs exactly one ICMP type", None),
    ("accept proto icmp type 3 code { 1, 2 }", 1, 31, "'code' takes one ICMP code", None),
    ("accept proto icmp type 300", 1, 24, "ICMP type 300 is out of range 0-255", None),
    ("accept proto icmp type 3 code 256", 1, 31, "ICMP code 256 is out of range 0-255", None),
    ("accept proto icmp type echo-requst", 1, 24, "unknown ICMP type 'echo-requst'",
     "did you mean 'echo-request'?"),
    ("accept proto icmpv6 type router-advertisement", 1, 26,
     "unknown ICMP type 'router-advertisement'", "'nd-router-advert'"),
    ("accept proto icmp type 3 code port-unreach", 1, 31, "unknown ICMP code 'port-unreach'",
     "'port-unreachable'"),
    ("accept limit 5/s per host", 1, 22, "'per host': a limit counts per src, dst or flow", None),
    ("accept limit 5/s else rewrite", 1, 23, "'else' takes accept, drop or reject", None),
    ("accept limit 5/s burst 0", 1, 8, "burst must be at least 1", None),
    ("drop set ttl 5", 1, 10, "'set' belongs to a rewrite rule", None),
    ("rewrite set tll 5", 1, 13, "cannot set 'tll'", "did you mean 'ttl'?"),
    ("rewrite set ttl 5 set hoplimit 6", 1, 23, "'hoplimit' is set twice", None),
    ("rewrite set ttl { 5, 6 }", 1, 17, "'set ttl' takes one value", None),
    ("rewrite set ttl 0", 1, 17, "a TTL / hop limit is a number 1-255", None),
    ("rewrite set hoplimit 256", 1, 22, "a TTL / hop limit is a number 1-255", None),
    ("rewrite set dscp 64", 1, 18, "'64' is not a DSCP value", "a number 0-63"),
    ("rewrite set dscp eff", 1, 18, "'eff' is not a DSCP value", "did you mean 'ef'?"),
    ("rewrite proto tcp set dport 0", 1, 29, "'set dport' takes one port (1-65535)", None),
    ("rewrite proto tcp set dport htps", 1, 29, "'set dport' takes one port", None),
    ("rewrite set daddr 10.0.0.0/8", 1, 19, "'set daddr' takes one address (no prefix)", None),
    ("reject with tcp-rst", 1, 13, "unknown reject kind 'tcp-rst'", "'tcp-reset'"),
    ("reject proto tcp with tcp-reset 5", 1, 33, "tcp-reset takes no code", None),
    ("reject with icmp { 1, 2 }", 1, 18, "reject takes one ICMP code", None),
    ("reject with icmp port-unreachabel", 1, 18, "unknown icmp code 'port-unreachabel'",
     "'port-unreachable'"),
    ("reject with icmpv6 frag-needed", 1, 20, "unknown icmpv6 code 'frag-needed'", "known: "),
    ("drop severity 0", 1, 15, "severity is 1 (most severe) to 255", None),
    ("drop severity hgh", 1, 15, "unknown severity 'hgh'", "did you mean 'high'?"),
    ("drop severity urgent", 1, 15, "unknown severity 'urgent'", "critical, high, medium"),
    # ---- columns count characters of the file, tabs and indentation included -------------
    ("\taccept proto tcp to port htp", 1, 27, "unknown service 'htp'", None),
    ("   \t accept proto tcp to port htp", 1, 31, "unknown service 'htp'", None),
    ("# comment\n\n   accept proto tcp to port htp # c", 3, 29, "unknown service 'htp'", None),
    ("accept proto tcp\r\ndrop to port htp\r\n", 2, 14, "unknown service 'htp'", None),
]  # fmt: skip


def errors_of(exc: PolicyError) -> list[Diagnostic]:
    return [d for d in exc.diagnostics if d.severity == "error"]


def rendered_block(exc: PolicyError, d: Diagnostic) -> list[str]:
    """The lines render() prints for one diagnostic: location, source line, caret, help."""
    lines = exc.render().splitlines()
    head = f"{d.span.file}:{d.span.line}:{d.span.col}: {d.severity}: {d.message}"
    assert head in lines, f"{head!r} not in\n{exc.render()}"
    i = lines.index(head)
    return lines[i : i + 4]


def assert_rendered_with_caret(exc: PolicyError, d: Diagnostic, source: str) -> None:
    src = source.splitlines()[d.span.line - 1].expandtabs(1)
    _, shown, caret, *rest = rendered_block(exc, d)
    gutter = f"{d.span.line:>5} | "
    assert shown == gutter + src
    assert caret.startswith(" " * (len(gutter) - 2) + "| ")
    assert caret.index("^") == len(gutter) + d.span.col - 1, f"\n{shown}\n{caret}"
    underline = caret[len(gutter) + d.span.col - 1 :]
    assert underline[0] == "^" and set(underline[1:]) <= {"~"}
    if d.span.end_line == d.span.line:
        # the underline covers the span, clipped to the end of the line
        width = min(d.span.end_col - d.span.col, len(src) - d.span.col + 2)
        assert len(underline) == max(1, width)
    if d.hint:
        assert rest and rest[0] == f"   help: {d.hint}"


@pytest.mark.parametrize(("text", "line", "col", "message", "hint"), ERRORS)
def test_error(text: str, line: int, col: int, message: str, hint: str | None) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.rules")
    errs = errors_of(info.value)
    assert len(errs) == 1, [(d.span, d.message) for d in errs]
    (d,) = errs
    assert (d.span.file, d.span.line, d.span.col) == ("t.rules", line, col)
    assert message in d.message
    if hint is not None:
        assert d.hint is not None and hint in d.hint
    assert d.span.end_line >= d.span.line
    assert d.span.end_line > d.span.line or d.span.end_col > d.span.col
    assert str(info.value).startswith(f"t.rules:{line}:{col}: ")
    assert_rendered_with_caret(info.value, d, text)


def test_every_error_row_is_a_distinct_case() -> None:
    texts = [row[0] for row in ERRORS]
    assert len(texts) == len(set(texts))


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("acept", "syntax"),
        ("accept from { 10.0.0.1", "syntax"),
        ("accept proto tpc", "unknown-name"),
        ("accept from $nope", "unknown-name"),
        ("define a = 1\ndefine a = 2", "duplicate"),
        ("set default dorp", "bad-value"),
        ("accept from 300.1.1.1", "bad-value"),
        ("accept from foo", "type"),
        ("accept proto udp flags S", "conflict"),
        ("define a = $a\naccept from $a", "define-loop"),
        ('include "../../../x.rules"', "include"),
        ('table f file "no-such-file"', "io"),
    ],
)
def test_machine_readable_codes(text: str, code: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.rules")
    assert [d.code for d in errors_of(info.value)] == [code]
    as_dict = errors_of(info.value)[0].as_dict()
    assert set(as_dict) == {
        "file",
        "line",
        "col",
        "end_line",
        "end_col",
        "severity",
        "code",
        "message",
        "hint",
    }
    assert as_dict["code"] == code


def test_invalid_hex_bytes_are_reported_at_the_pattern() -> None:
    for text, col in (
        ("drop proto tcp payload contains |0d0|", 33),
        ('drop proto tcp payload contains "a|0g|"', 33),
        ('rewrite replace "a|0|" with "bb"', 17),
    ):
        with pytest.raises(PolicyError) as info:
            load_policy_text(text, "t.rules")
        hex_errors = [d for d in info.value.diagnostics if "invalid hex bytes" in d.message]
        assert [(d.span.line, d.span.col) for d in hex_errors] == [(1, col)]
        assert "pairs of digits" in (hex_errors[0].hint or "")
        assert_rendered_with_caret(info.value, hex_errors[0], text)


def test_invalid_hex_bytes_is_one_error() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text("drop proto tcp payload contains |0d0|", "t.rules")
    assert [d.message for d in errors_of(info.value)] == ["invalid hex bytes in |0d0|"]


def test_any_inside_a_literal_set() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text("accept from { any, 10.0.0.1 }", "t.rules")
    (d,) = errors_of(info.value)
    assert "'any' cannot be negated or used in a set" in d.message


def test_long_define_chain_is_not_called_a_loop() -> None:
    text = "\n".join(f"define d{i} = $d{i + 1}" for i in range(40))
    text += "\ndefine d40 = 10.0.0.1\naccept from $d0"
    try:
        load_policy_text(text, "t.rules")
    except PolicyError as exc:
        assert all("itself" not in d.message for d in exc.diagnostics)


# ---- errors that need files ----------------------------------------------------------------------


def load_file_error(path: Path, **kw: object) -> tuple[PolicyError, Diagnostic]:
    with pytest.raises(PolicyError) as info:
        load_policy(path, **kw)  # type: ignore[arg-type]
    errs = errors_of(info.value)
    assert len(errs) == 1, [(d.span, d.message) for d in errs]
    return info.value, errs[0]


def test_cannot_read_policy(tmp_path: Path) -> None:
    exc, d = load_file_error(tmp_path / "missing.rules")
    assert (d.span.line, d.span.col, d.code) == (1, 1, "io")
    assert d.message == "cannot read policy: No such file or directory"
    (tmp_path / "latin1.rules").write_bytes(b'accept\ndrop alert "caf\xe9"\n')
    exc, d = load_file_error(tmp_path / "latin1.rules")
    assert d.message == "cannot read policy: not UTF-8 text (byte 22: 0xe9)"
    assert exc.render().startswith(f"{tmp_path / 'latin1.rules'}:1:1: error: cannot read")


def test_include_errors(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "common.rules").write_text("accept\n")
    main = tmp_path / "main.rules"

    main.write_text('# includes\ninclude "sub/comon.rules"\n')
    exc, d = load_file_error(main)
    assert (d.span.file, d.span.line, d.span.col) == (str(main), 2, 9)
    assert d.message == "cannot include 'sub/comon.rules': No such file or directory"
    assert d.hint is not None and "common.rules" in d.hint
    assert_rendered_with_caret(exc, d, main.read_text())

    main.write_text('accept\n  include "../outside.rules"\n')
    (tmp_path.parent / "outside.rules").write_text("accept\n")
    exc, d = load_file_error(main)
    assert (d.span.line, d.span.col) == (2, 11)
    assert d.message.startswith("include '../outside.rules' is outside the policy directory")
    assert d.hint == "keep included files in the policy's directory (or below it)"
    assert_rendered_with_caret(exc, d, main.read_text())

    main.write_text('include "main.rules"\n')
    exc, d = load_file_error(main)
    assert (d.span.line, d.span.col, d.message) == (1, 9, "include loop: main.rules -> main.rules")

    (tmp_path / "bad.rules").write_bytes(b"\xff\xfe")
    main.write_text('include "bad.rules"\n')
    exc, d = load_file_error(main)
    assert (d.span.line, d.span.col) == (1, 9)
    assert d.message.startswith("cannot include 'bad.rules': not UTF-8 text")


def test_errors_inside_an_included_file_name_that_file(tmp_path: Path) -> None:
    inc = tmp_path / "inc.rules"
    inc.write_text("# included\n\ndrop proto tcp to port htp\n")
    main = tmp_path / "main.rules"
    main.write_text('include "inc.rules"\naccept proto tpc\n')
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    errs = errors_of(info.value)
    # in include order: the including file first, then the included one
    assert [(Path(d.span.file).name, d.span.line, d.span.col) for d in errs] == [
        ("main.rules", 2, 14),
        ("inc.rules", 3, 24),
    ]
    assert_rendered_with_caret(info.value, errs[0], main.read_text())
    assert_rendered_with_caret(info.value, errs[1], inc.read_text())


def test_includes_nested_too_deep(tmp_path: Path) -> None:
    n = MAX_INCLUDE_DEPTH + 4
    for i in range(n):
        (tmp_path / f"f{i}.rules").write_text(f'accept\ninclude "f{i + 1}.rules"\n')
    (tmp_path / f"f{n}.rules").write_text("accept\n")
    _, d = load_file_error(tmp_path / "f0.rules")
    assert d.message == f"includes nested deeper than {MAX_INCLUDE_DEPTH}"
    assert (Path(d.span.file).name, d.span.line, d.span.col) == (
        f"f{MAX_INCLUDE_DEPTH - 1}.rules",
        2,
        9,
    )


def test_table_file_errors_point_into_the_table_file(tmp_path: Path) -> None:
    listing = tmp_path / "block.txt"
    listing.write_text("10.0.0.1\n# comment\nbogus\n\n10.0.0.0/40  # too long\n")
    main = tmp_path / "main.rules"
    main.write_text('table bl file "block.txt"\ndrop from @bl\n')
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    errs = errors_of(info.value)
    assert [(d.span.file, d.span.line, d.span.col, d.message) for d in errs] == [
        (str(listing), 3, 1, "invalid address 'bogus' in table file"),
        (str(listing), 5, 1, "invalid address '10.0.0.0/40' in table file"),
    ]
    for d in errs:
        assert_rendered_with_caret(info.value, d, listing.read_text())

    listing.write_bytes(b"10.0.0.1\n\xff\n")
    _, d = load_file_error(main)
    assert (d.span.file, d.span.line, d.span.col) == (str(main), 1, 1)
    assert d.message.startswith("cannot read table file 'block.txt': not UTF-8 text")


def test_include_hint_keeps_the_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "common.rules").write_text("accept\n")
    (tmp_path / "main.rules").write_text('include "sub/comon.rules"\n')
    _, d = load_file_error(tmp_path / "main.rules")
    assert d.hint == "did you mean 'sub/common.rules'?"


def test_diamond_include_does_not_blame_a_line_for_itself(tmp_path: Path) -> None:
    (tmp_path / "common.rules").write_text("define lan = 10.0.0.0/8\n")
    (tmp_path / "a.rules").write_text('include "common.rules"\n')
    (tmp_path / "b.rules").write_text('include "common.rules"\n')
    (tmp_path / "main.rules").write_text('include "a.rules"\ninclude "b.rules"\naccept from $lan\n')
    try:
        load_policy(tmp_path / "main.rules")
    except PolicyError as exc:
        for d in exc.diagnostics:
            assert str(d.span) not in d.message, d.message


# ---- one pass, order, recovery -----------------------------------------------------------------


FIVE_ERRORS = """\
define lan = 10.0.0.0/8
accept proto tcp to port htp           # semantic
acept from $lan                        # syntax
drop from $lna                         # semantic
accept proto icmp type echo-requst     # semantic
drop proto tcp to port 80 alret "x"    # syntax
accept from $lan
"""


def test_all_errors_of_a_file_in_one_pass_in_line_order() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(FIVE_ERRORS, "t.rules")
    errs = errors_of(info.value)
    assert [(d.span.line, d.span.col) for d in errs] == [(2, 26), (3, 1), (4, 11), (5, 24), (6, 27)]
    assert [d.message for d in errs] == [
        "unknown service 'htp'",
        "unknown statement 'acept'",
        "'$lna' is not defined",
        "unknown ICMP type 'echo-requst'",
        "unexpected 'alret'",
    ]
    out = info.value.render()
    for d in errs:
        assert_rendered_with_caret(info.value, d, FIVE_ERRORS)
    positions = [out.index(f"t.rules:{d.span.line}:{d.span.col}:") for d in errs]
    assert positions == sorted(positions)


def test_several_errors_on_one_line_are_sorted_by_column() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text("accept proto tpc from 300.1.1.1 to port htp severity 0", "t.rules")
    assert [(d.span.col, d.message) for d in errors_of(info.value)] == [
        (14, "unknown protocol 'tpc'"),
        (23, "invalid address '300.1.1.1'"),
        (41, "unknown service 'htp'"),
        (54, "severity is 1 (most severe) to 255"),
    ]


def test_an_unclosed_brace_does_not_swallow_the_next_statements() -> None:
    text = (
        "define web = { http, https\n"
        "accept proto tcp to port 99999\n"
        "table t = { 10.0.0.1,\n"
        "  10.0.0.2\n"
        "drop from @t to port htp\n"
        "accept\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.rules")
    assert [(d.span.line, d.span.col, d.message) for d in errors_of(info.value)] == [
        (1, 14, "unclosed '{'"),
        (2, 26, "port 99999 is out of range 0-65535"),
        (3, 11, "unclosed '{'"),
        (5, 11, "unknown table '@t'"),  # its declaration was refused
        (5, 22, "unknown service 'htp'"),
    ]


def test_an_unclosed_brace_at_the_end_of_the_file() -> None:
    text = "accept\ndrop from {\n  10.0.0.1,\n  10.0.0.2,\n\n# the end\n"
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.rules")
    assert [(d.span.line, d.span.col, d.message) for d in errors_of(info.value)] == [
        (2, 11, "unclosed '{'")
    ]


def test_a_syntax_error_hides_no_semantic_error_of_other_statements() -> None:
    text = "accept from 10.0.0.1 ]\ndefine a = $b\ndefine b = $a\naccept from $a\n"
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.rules")
    assert [(d.span.line, d.code) for d in errors_of(info.value)] == [
        (1, "syntax"),
        (3, "define-loop"),
    ]


def test_error_summary_counts_only_errors() -> None:
    text = "accept from 10.0.0.1/8\nset default drop\nset default drop\naccept proto tpc\n"
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.rules")
    sev = [(d.span.line, d.severity) for d in info.value.diagnostics]
    assert sev == [(1, "warning"), (3, "warning"), (4, "error")]
    out = info.value.render()
    assert "t.rules:1:13: warning: '10.0.0.1/8' has host bits set" in out
    assert "t.rules:4:14: error: unknown protocol 'tpc'" in out


# ---- warnings do not refuse a policy -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "col", "message", "hint"),
    [
        (
            "accept from 10.1.2.3/8",
            1,
            13,
            "'10.1.2.3/8' has host bits set; it means 10.0.0.0/8",
            "write 10.0.0.0/8",
        ),
        ("table t = { 192.0.2.77/24 }", 1, 13, "has host bits set; it means 192.0.2.0/24", None),
        ("accept to 2001:db8::1/32", 1, 11, "it means 2001:db8::/32", "write 2001:db8::/32"),
        (
            "match proto tcp",
            1,
            1,
            "a match rule without alert or log has no effect",
            'add alert "message" or log',
        ),
        (
            "set default drop\nset default accept",
            2,
            5,
            "'set default' given again; the last wins",
            None,
        ),
        ("set malformed drop\n\nset malformed accept", 3, 5, "'set malformed' given again", None),
    ],
)
def test_warnings_do_not_refuse_the_policy(
    text: str, line: int, col: int, message: str, hint: str | None
) -> None:
    policy = load_policy_text(text, "t.rules")
    (w,) = policy.warnings
    assert (w.severity, w.span.line, w.span.col) == ("warning", line, col)
    assert message in w.message
    if hint is not None:
        assert w.hint == hint


def test_match_with_alert_or_log_gives_no_warning() -> None:
    policy = load_policy_text('match proto tcp alert "x"\nmatch proto udp log', "t.rules")
    assert policy.warnings == []


@pytest.mark.parametrize("odd", ["\x0c", "\u2028", "\x85", "\x1e"])
def test_render_shows_the_right_line_after_odd_line_breaks_in_comments(odd: str) -> None:
    text = f"# page break{odd}here\naccept proto tpc\n"
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.rules")
    (d,) = errors_of(info.value)
    assert (d.span.line, d.span.col) == (2, 14)
    assert "    2 | accept proto tpc" in info.value.render().splitlines()


def test_misspelt_keyword_before_the_error_is_named() -> None:
    """`to prot 80`: 'prot' parses as an address word, so the error is on '80'; the hint
    names the keyword the parser would have taken instead of 'prot'."""
    with pytest.raises(PolicyError) as info:
        load_policy_text("drop proto tcp to prot 80\n", "t.rules")
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col) == (1, 24)
    assert d.hint == "'prot' is not a keyword: did you mean 'port'?"


# ---- many errors (issue 19, item 5) ---------------------------------------------------------


def _all_bad(lines: int) -> str:
    return "".join(f"accept from 300.{i % 250}.1.1\n" for i in range(lines))


def test_rendering_stops_after_the_first_errors_and_counts_the_rest() -> None:
    """As compilers do: the first MAX_RENDERED errors are shown, then one line for the rest;
    the diagnostics themselves (and so `check --format json`) keep every one."""
    with pytest.raises(PolicyError) as info:
        load_policy_text(_all_bad(MAX_RENDERED + 70), "t.rules")
    assert len(info.value.diagnostics) == MAX_RENDERED + 70
    lines = info.value.render().splitlines()
    assert sum(": error: " in line for line in lines) == MAX_RENDERED
    assert lines[-1] == f"… and 70 more errors (not shown: the first {MAX_RENDERED} are)"
    assert lines[-5].startswith(f"t.rules:{MAX_RENDERED}:13: error: invalid address")


def test_a_few_errors_are_all_rendered_without_a_count_line() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(_all_bad(MAX_RENDERED), "t.rules")
    assert "more error" not in info.value.render()


class _CountingSources(dict[str, str]):
    lookups = 0

    def get(self, key, default=None):  # type: ignore[no-untyped-def, override]
        type(self).lookups += 1
        return super().get(key, default)


def test_render_reads_each_file_once_not_once_per_diagnostic() -> None:
    """Splitting the file's text for every diagnostic made a policy full of errors quadratic
    (20,000 lines: 19.5 s): each file is split once."""
    with pytest.raises(PolicyError) as info:
        load_policy_text(_all_bad(40), "t.rules")
    sources = _CountingSources(info.value.sources)
    render(info.value.diagnostics, sources)
    assert sources.lookups == 1


def test_checking_four_times_the_errors_costs_about_four_times_the_time() -> None:
    """Linear, not quadratic (which would be 16 times): a generous bound of 8, on the best
    of three runs, parse, resolve and render included."""

    def cost(lines: int) -> float:
        text = _all_bad(lines)
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            with pytest.raises(PolicyError) as info:
                load_policy_text(text, "t.rules")
            info.value.render()
            best = min(best, time.process_time() - start)
        return best

    assert cost(8000) < 8 * cost(2000)
