"""Robustness of the policy loader: whatever the text, load_policy_text returns a Policy or
raises PolicyError whose diagnostics all point into the file; never another exception, never a
hang on large or deeply nested input."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ips.policy.diagnostics import MAX_RENDERED, PolicyError
from ips.policy.model import Policy
from ips.policy.resolve import load_policy_text

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILES = sorted((ROOT / "policies").glob("*.rules"))
# includes of fuzzed texts are looked up here: a directory that does not exist, so none is found
EMPTY_DIR = ROOT / "tests" / "__no_such_directory__"

KEYWORDS = [
    # statements, clauses, options
    "accept", "pass", "drop", "block", "reject", "rewrite", "match", "include", "define",
    "table", "set", "detect", "proto", "from", "to", "port", "in", "out", "on", "flags",
    "type", "code", "length", "state", "fragment", "payload", "contains", "nocase", "limit",
    "depth", "64k", "1M", "unlimited", "payload-depth", "encrypted-payload",
    "burst", "per", "else", "replace", "with", "alert", "log", "sid", "severity", "label",
    "inet", "inet6", "any", "file", "dynamic", "timeout", "size", "ports", "hosts", "count",
    "within", "rate", "ignore", "default", "on-error", "malformed", "tcp-reset", "icmp",
    "icmpv6", "ttl", "hoplimit", "dscp", "dport", "daddr", "new", "established",
    # values and punctuation
    "{", "}", ",", "!", "=", "-", "/", "|", '"', "#", "\\", "\\\n", "\n", "\r\n", "\t",
    "$lan", "$nope", "@banned", "@nope", "10.0.0.0/8", "300.1.1.1", "::1", "2001:db8::/129",
    "1:2", "80", "70000", "1-65535", "9-1", "50/s", "0/s", "10m", "S/SA", "FSRPAUEW/X",
    '"x"', '"', "|0d 0a|", "|0|", "\x00", "\ufeff", "\u2028", "é", "*",
]  # fmt: skip

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_outcome(text: str) -> Policy | PolicyError:
    """The loader's contract, asserted: a Policy, or a PolicyError whose every diagnostic
    points into a file it names (line within the file, column within the line)."""
    try:
        policy = load_policy_text(text, "t.rules", base_dir=EMPTY_DIR)
    except PolicyError as exc:
        assert exc.diagnostics
        assert any(d.severity == "error" for d in exc.diagnostics)
        for d in exc.diagnostics:
            source = exc.sources.get(d.span.file)
            assert source is not None, d
            lines = source.split("\n")
            assert 1 <= d.span.line <= len(lines), d
            assert 1 <= d.span.col <= len(lines[d.span.line - 1]) + 1, d
            assert d.span.end_line >= d.span.line, d
            assert d.message
        rendered = exc.render()
        # The first MAX_RENDERED are shown, the rest counted (issue 19, item 5).
        for d in exc.diagnostics[:MAX_RENDERED]:
            assert f"{d.span}: {d.severity}: {d.message}" in rendered
        hidden = len(exc.diagnostics) - MAX_RENDERED
        if hidden > 0:
            last = rendered.splitlines()[-1]
            assert last.startswith("… and "), last
            counts = re.findall(r"([\d,]+) more", last)
            assert sum(int(n.replace(",", "")) for n in counts) == hidden, last
        return exc
    assert isinstance(policy, Policy)
    assert all(w.severity == "warning" for w in policy.warnings)
    assert [r.index for r in policy.rules] == list(range(len(policy.rules)))
    return policy


# ---- (a) mutations of the shipped policies -------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["char", "keyword", "delete", "truncate", "copy", "line"]))
        pos = draw(st.integers(0, len(text)))
        if op == "char":
            text = text[:pos] + draw(st.characters(codec="utf-8")) + text[pos:]
        elif op == "keyword":
            word = draw(st.sampled_from(KEYWORDS))
            sep = draw(st.sampled_from(["", " ", "\n"]))
            text = text[:pos] + word + sep + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 60)) :]
        elif op == "truncate":
            text = text[:pos]
        elif op == "copy":
            start = draw(st.integers(0, len(text)))
            text = text[:pos] + text[start : start + draw(st.integers(1, 80))] + text[pos:]
        else:  # swap two lines
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


def test_shipped_policies_load_cleanly() -> None:
    assert len(POLICY_FILES) >= 3
    for path in POLICY_FILES:
        outcome = check_outcome(path.read_text())
        assert isinstance(outcome, Policy), path
        assert outcome.rules


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: p.name)
def test_mutated_policies_give_a_policy_or_located_errors(path: Path) -> None:
    text = path.read_text()

    @SETTINGS
    @given(mutated(text))
    def run(mutant: str) -> None:
        check_outcome(mutant)

    run()


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: p.name)
def test_every_truncation_of_a_policy(path: Path) -> None:
    """Cut after every statement-ish boundary and inside tokens: each prefix is handled."""
    text = path.read_text()
    cuts = sorted(set(range(0, len(text), 7)) | {i for i, ch in enumerate(text) if ch in "\n{}"})
    errors = 0
    for cut in cuts:
        if isinstance(check_outcome(text[:cut]), PolicyError):
            errors += 1
    assert 0 < errors < len(cuts)  # some prefixes are valid policies, some are not


@SETTINGS
@given(st.lists(st.sampled_from(KEYWORDS), min_size=1, max_size=40).map(" ".join))
def test_keyword_soup(text: str) -> None:
    check_outcome(text)


# ---- (b) random bytes ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    check_outcome(data.decode("utf-8", errors="replace"))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=6).map(lambda b: b.decode("utf-8", errors="replace")),
            st.sampled_from(KEYWORDS),
        ),
        max_size=60,
    ).map("".join)
)
def test_random_bytes_mixed_with_keywords(text: str) -> None:
    check_outcome(text)


# ---- (c) size and depth ------------------------------------------------------------------------


def timed(text: str, limit: float = 5.0) -> Policy | PolicyError:
    start = time.perf_counter()
    outcome = check_outcome(text)
    elapsed = time.perf_counter() - start
    assert elapsed < limit, f"{elapsed:.1f}s"
    return outcome


@pytest.mark.parametrize(
    "text",
    [
        "accept from " + "{" * 3000 + "10.0.0.1" + "}" * 3000,
        "accept from " + "{" * 5000,
        "}" * 5000,
        "accept from " + "!" * 5000 + "10.0.0.1",
        "{\n" * 2000,
        "\\\n" * 2000,
        "drop " + "proto tcp \\\n" * 2000,
        "drop alert " + '"' * 5001,
        "#" * 100_000,
        "drop " + "a" * 100_000,
        "drop alert " + '"' + "x" * 200_000 + '"',
        "drop payload contains |" + "00 " * 50_000 + "|",
        "accept to port " + "9" * 4000,
        "drop sid " + "1" * 4000,
        "accept from 10.0.0.1" + " # c" * 10_000,
    ],
    ids=lambda t: repr(t[:24]),
)
def test_deep_nesting_and_long_input_complete_quickly(text: str) -> None:
    timed(text)


def test_long_define_chain_and_wide_sets() -> None:
    chain = "\n".join(f"define d{i} = {{ $d{i + 1}, 10.{i}.0.0/16 }}" for i in range(30))
    policy = timed(chain + "\ndefine d30 = 10.255.0.1\naccept from $d0")
    assert isinstance(policy, Policy)
    assert len(policy.rules[0].src.nets4) == 31  # type: ignore[union-attr]

    ports = "accept proto tcp to port { " + ", ".join(str(i) for i in range(0, 65536, 3)) + " }"
    policy = timed(ports)
    assert isinstance(policy, Policy)
    assert len(policy.rules[0].dport.ranges) == 21846  # type: ignore[union-attr]

    addrs = " ".join(f"10.{i // 256}.{i % 256}.1" for i in range(20_000))
    policy = timed(f"table big = {{ {addrs} }}\ndrop from @big")
    assert isinstance(policy, Policy)
    assert len(policy.tables["big"].nets4) == 20_000


@pytest.mark.parametrize(
    "template",
    [
        "accept from {n}",
        "accept proto tcp to port {n}",
        "accept proto tcp to port 1-{n}",
        "drop sid {n}",
        "drop severity {n}",
        "accept length > {n}",
        "accept proto {n}",
        "accept limit {n}/s",
        "accept limit 5/s burst {n}",
        "table t dynamic timeout {n}s",
        "detect portscan ports {n}",
        "set default {n}",
    ],
)
def test_huge_numbers_are_policy_errors(template: str) -> None:
    check_outcome(template.format(n="9" * 4301))


def test_doubling_defines_stay_small() -> None:
    n = 12
    text = "define d0 = 10.0.0.1\n"
    text += "\n".join(f"define d{i + 1} = {{ $d{i}, $d{i} }}" for i in range(n))
    outcome = timed(text + f"\naccept from $d{n}")
    if isinstance(outcome, Policy):
        assert outcome.rules[0].src.nets4 == ((0x0A000001, 32),)  # type: ignore[union-attr]


RULE_TEMPLATES = [
    "accept proto tcp from {a} to {a} port {p}",
    'drop proto udp to port {p} alert "r{n}" sid {n}',
    "reject proto tcp from {a} port {p} with tcp-reset",
    "accept proto icmp type {{ echo-request, echo-reply }} limit {r}/s per src else drop",
    'match proto tcp to {a} payload contains "x{n}" log',
    "rewrite proto tcp to {a} port {p} set dport {q}",
    "accept in on eth{k} out on wg* state established",
    "drop proto tcp flags FPU/FSRPAU alert severity low",
    "accept inet6 from 2001:db8:{k:x}::/48 to port {{ {p}, {q} }}",
    "drop length > {q} fragment",
]


def generated_policy(rnd: random.Random, lines: int) -> tuple[str, int]:
    out = ["set default drop", "table banned dynamic timeout 1h", "drop from @banned"]
    for n in range(1, lines - len(out) + 1):
        out.append(
            rnd.choice(RULE_TEMPLATES).format(
                a=f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.0/24",
                p=rnd.randrange(1, 65536),
                q=rnd.randrange(1, 65536),
                r=rnd.randrange(1, 1000),
                k=rnd.randrange(1, 4096),
                n=n,
            )
        )
    return "\n".join(out) + "\n", len(out) - 2


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 2**32))
def test_generated_2000_line_policies_load_quickly(seed: int) -> None:
    rnd = random.Random(seed)
    text, rules = generated_policy(rnd, 2000)
    policy = timed(text)
    assert isinstance(policy, Policy)
    assert len(policy.rules) == rules
    assert policy.rules[-1].span.line == 2000


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**32))
def test_generated_2000_line_policies_with_errors_report_each(seed: int) -> None:
    rnd = random.Random(seed)
    text, _ = generated_policy(rnd, 2000)
    lines = text.split("\n")
    broken = sorted(rnd.sample(range(3, 2000), 300))
    for i in broken:
        lines[i] = lines[i].replace("proto", "prto", 1) if "proto" in lines[i] else "acept"
    outcome = timed("\n".join(lines))
    assert isinstance(outcome, PolicyError)
    errs = [d for d in outcome.diagnostics if d.severity == "error"]
    assert [d.span.line for d in errs] == [i + 1 for i in broken]
