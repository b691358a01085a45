"""The fast path for one-line statements (ips/policy/fastparse.py) against Lark (issue 19,
item 5): wherever the fast path answers, Lark gives the identical statement — every node,
every span — and no diagnostic; wherever it declines, Lark reads the line as before. Checked on
the shipped policies, on every string of the test suite (the policies the tests write), and
on generated lines and files."""

from __future__ import annotations

import ast as pyast
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ips.policy import parser
from ips.policy.diagnostics import Diagnostics
from ips.policy.fastparse import ACTIONS, KEYWORDS, parse_line
from ips.policy.parser import parse_statement, parse_text, split_statements
from tests.pure.test_policy_fuzz import KEYWORDS as FUZZ_WORDS
from tests.pure.test_policy_fuzz import generated_policy, mutated

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILES = sorted(p for p in ROOT.rglob("*.rules") if ".venv" not in p.parts)
TEST_FILES = sorted((ROOT / "tests").rglob("*.py"))

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def compare_line(chunk: str, first_line: int = 1) -> bool:
    """Both paths on one statement; True when the fast path took it."""
    fast = parse_line(chunk, "f.rules", first_line)
    if fast is None:
        return False
    diags = Diagnostics()
    slow = parse_statement(chunk, "f.rules", first_line, diags)
    assert not diags.items, (chunk, diags.items)
    assert fast == slow, chunk
    assert type(fast) is type(slow)
    return True


def compare_text(text: str) -> tuple[int, int]:
    """Every one-line statement of a text on both paths, then the whole file with and without
    the fast path: the same statements, the same diagnostics. (taken, one-line statements)"""
    taken = lines = 0
    for first_line, chunk in split_statements(text):
        if "\n" not in chunk:
            lines += 1
            taken += compare_line(chunk, first_line)
    with_fast, with_fast_diags = Diagnostics(), Diagnostics()
    with_fast = parse_text(text, "f.rules", with_fast_diags)
    original = parser.parse_line
    parser.parse_line = lambda *args: None  # type: ignore[assignment]
    try:
        lark_diags = Diagnostics()
        lark_only = parse_text(text, "f.rules", lark_diags)
    finally:
        parser.parse_line = original
    assert with_fast.statements == lark_only.statements
    assert with_fast_diags.items == lark_diags.items
    return taken, lines


def test_keywords_are_the_grammars() -> None:
    words = {
        t.pattern.value
        for t in parser._lark().terminals
        if t.pattern.type == "str" and t.pattern.value.isalpha()
    }
    words |= {"inet6"}  # a keyword with a digit
    assert words == KEYWORDS
    assert ACTIONS <= KEYWORDS


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_policy_file_of_the_repository(path: Path) -> None:
    taken, lines = compare_text(path.read_text())
    assert taken > 0 or lines == 0


def test_shipped_policies_are_fast_but_for_detectors() -> None:
    for path in sorted((ROOT / "policies").glob("*.rules")):
        for first_line, chunk in split_statements(path.read_text()):
            if "\n" not in chunk and not chunk.startswith("detect"):
                assert parse_line(chunk, "f.rules", first_line) is not None, chunk


def _strings_of(path: Path) -> list[str]:
    tree = pyast.parse(path.read_text())
    return [
        node.value
        for node in pyast.walk(tree)
        if isinstance(node, pyast.Constant) and isinstance(node.value, str) and node.value.strip()
    ]


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_every_string_of_the_tests(path: Path) -> None:
    """The policies the tests write are string literals (whole, or pieces of them)."""
    for text in _strings_of(path):
        if len(text) < 200_000:
            compare_text(text)


def test_generated_policies_are_read_fast() -> None:
    rnd = random.Random(19)
    text, _ = generated_policy(rnd, 3000)
    taken, lines = compare_text(text)
    assert taken == lines  # every template of the fuzz tests is a fast one


def test_the_bench_policy_is_read_fast() -> None:
    from bench.policy_check import generate

    taken, lines = compare_text(generate(3000, seed=5))
    assert lines - taken <= 2  # the two `detect` lines


def test_declined_lines_leave_nothing_behind() -> None:
    """A policy full of errors goes through the fast path first, line after line: declining
    must keep nothing (re-raising one exception object grew its traceback with every line)."""
    import tracemalloc

    tracemalloc.start()
    try:
        assert parse_line("accept prto tcp to 10.0.0.1", "f.rules", 1) is None
        before = tracemalloc.get_traced_memory()[0]
        for n in range(5000):
            assert parse_line("accept proto tcp to 10.0.0.1 prt 80", "f.rules", n) is None
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000, grown


# ---- generated lines ------------------------------------------------------------------------

TRICKY = [
    "80-90", "80 - 90", "80-", "-90", "1-2-3", "10s", "10ms", "1h", "10sx", "5/s", "5/second",
    "5/sx", "S/SA", "/FSRPAU", "S/", "SA", "wg*", "a*b", "eth0.1", "$x", "$x.y", "$", "@t",
    "@t.u", "@", "::", "::1", "fe80::1", "fe80::1%eth0", "1.2.3.4", "1.2.3.4/24", "1.2.3.4/33",
    "1.2.3.4/2444", "1.2.3.4::", "1.2.3.4.5", "1.2.3", "ab:cd:", "cafe", "into", "ports", "anyx",
    "inet6x", "protox", "!=", "<=", ">=", "<", ">", "=", "==", "!", "!!", "{", "}", ",", ",,",
    '"a"', '"a\\"b"', '"a\\x41"', '"#"', '"', '"x', "|0d 0a|", "|zz|", "|0|", "|", "\\",
    "#c", "# c", "\u0663", "\u0663\u0664", "1.\u0662.3.4", "\xa0", "\u2028", "\f", "\r", "\t",
    "tcp-reset", "icmp", "port-unreachable", "echo-request", "established", "src", "dst",
    "else", "drop", "nocase", "code", "burst", "per", "with", "file", "dynamic", "timeout", "size",
    "9" * 5000, "1" * 4301, "_x", "x_", "-x", "sni", "query", "user-agent", "ja4", "uri",
    "*.bad.lab", '"*.bad.lab"', "method", "country", "asn", "org", "RU", "AS13335", "refresh",
    "on-error", "allow-empty", "skip", "contains",
]  # fmt: skip
WORDS = sorted(set(FUZZ_WORDS) | set(TRICKY) | KEYWORDS)
SEPARATORS = [" ", " ", " ", "", "\t", "  ", ", ", " # comment"]


@st.composite
def lines(draw: st.DrawFn) -> str:
    start = draw(st.sampled_from([*sorted(ACTIONS), "set", "define", "table", "include", "detect"]))
    words = draw(st.lists(st.sampled_from(WORDS), max_size=14))
    out = draw(st.sampled_from(["", " ", "\t"])) + start
    for word in words:
        out += draw(st.sampled_from(SEPARATORS)) + word
    return out.replace("\n", " ")


@SETTINGS
@given(lines())
def test_generated_lines(line: str) -> None:
    compare_line(line, 7)


# Lines of the right shape, so that many are taken by the fast path.
CLAUSES = [
    "proto tcp", "proto { tcp, udp }", "proto !udp", "proto 6", "from 10.0.0.0/8",
    "from !$lan", "from @t port 80", "to any", "to !any port 1-1024", "to port { 80, 443 }",
    "to 2001:db8::/32 port https", "from { 10.0.0.1, $x, @t, 1-2, \"s\" }", "in", "out on eth0",
    "in on { eth0, wg* }", "on eth1", "flags S/SA", "flags /FSRPAU", "type echo-request",
    "type 3 code 4", "type { 1, 2 } code !0", "length > 100", "length 1-2", "length = 1-2",
    "length < 1-2", "length <= 5", "state established", "state { new, established }",
    "fragment", "payload contains \"GET |0d 0a|\"", "payload contains |de ad| nocase",
    "payload contains |zz|", "limit 5/s", "limit 50/minute burst 10 per src else drop",
    "limit 1/h else reject per dst", "set ttl 64", "set dport 8080", "set daddr 10.0.5.5",
    "replace \"a\" with \"b\"", "replace |00| with \"\\x41\"", "with tcp-reset", "with icmp 3",
    "with icmp port-unreachable", "with icmp any", "with icmpv6 { 1 }", "alert",
    "alert \"m\\\"x\"", "log", "inspect", "sid 5", "sid 0", "severity high", "severity 3",
    "label \"l\"", "inet", "inet6",
    # the application-layer clauses (issue 20)
    "tls sni \"a.lab\"", "tls sni { \"a.lab\", \"*.b.lab\", @t }", "quic sni !\"x\"",
    "dns query @t", "http host $x", "http method GET", "http method { get, POST }",
    "http uri contains \"/a\" nocase", "http user-agent contains \"curl\"",
    "http contains contains \"x\"", "http host contains \"x\"", "tls ja3 \"ab\"",
    "app tls", "app { tls, quic, http, dns }", "app !ssh", "to port http", "app http",
    "with tcp-reset http host \"x\"", "tls sni", "http uri contains |00|",
]  # fmt: skip
STATEMENTS = [
    "define x = 10.0.0.1", "define x = { 1, 2, 3 }", "define lan=10.0.0.0/8",
    "table t = { 10.0.0.1 }", "table t file \"x.txt\"", "table t dynamic",
    "table t dynamic timeout 1h size 100", "table t dynamic size 5 timeout 10s timeout 5m",
    "set default drop", "set on-error accept", "set max 10", "set name \"x\"", "set t 10s",
    "set drop accept", "include \"a.rules\"", "detect portscan ports 15 within 60s block 10m",
]  # fmt: skip


@st.composite
def rule_lines(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 5)) == 0:
        line = draw(st.sampled_from(STATEMENTS))
    else:
        line = draw(st.sampled_from(sorted(ACTIONS)))
        for clause in draw(st.lists(st.sampled_from(CLAUSES), max_size=8)):
            line += draw(st.sampled_from([" ", "  ", "\t"])) + clause
    if draw(st.booleans()):
        line += draw(st.sampled_from([" # c", "#c", "   ", "\r", " \f"]))
    return draw(st.sampled_from(["", "  ", "\t"])) + line


@SETTINGS
@given(rule_lines())
def test_generated_rules(line: str) -> None:
    compare_line(line, 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rule_lines(), min_size=1, max_size=30).map("\n".join))
def test_generated_files(text: str) -> None:
    compare_text(text)


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.rules")), ids=lambda p: p.name)
def test_mutated_shipped_policies(path: Path) -> None:
    text = path.read_text()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated(text))
    def run(mutant: str) -> None:
        compare_text(mutant)

    run()
