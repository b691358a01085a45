"""Reputation lists (issue 22, item 6): `table NAME file "…"` reads FireHOL netsets and
Spamhaus DROP (text and JSON lines); a bad line refuses the file, or only itself with
`on-error skip`; an empty file is refused unless `allow-empty`; `refresh 1h` reads it again
in the daemon, and a refused file keeps the old set; alerts name the list."""

from __future__ import annotations

from pathlib import Path

import pytest
from packets import tcp

from ips.daemon.refresh import RefreshClock, refresh_tables
from ips.engine import Engine
from ips.policy.diagnostics import PolicyError
from ips.policy.resolve import load_policy_collecting
from ips.policy.resolve.lists import parse_list_text

FIREHOL = """\
#
# firehol_level1
#
# Maintainer      : FireHOL
0.0.0.0/8
1.10.16.0/20
192.0.2.7
2001:db8:bad::/48
"""
SPAMHAUS = """\
; Spamhaus DROP List 2026/12/05 - (c) 2026 The Spamhaus Project SLT
; Last-Modified: Sat, 05 Dec 2026 12:00:00 GMT
1.10.16.0/20 ; SBL256894
1.19.0.0/16 ; SBL434604
"""
SPAMHAUS_JSON = """\
{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}
{"cidr":"2001:db8:bad::/48","sblid":"SBL1","rir":"ripencc"}
{"type":"metadata","timestamp":1780000000,"size":2,"records":2}
"""


def nets_of(text: str) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    parsed = parse_list_text(text)
    assert parsed.problems == []
    return parsed.nets4, parsed.nets6


def test_firehol_spamhaus_and_json_lines() -> None:
    v4, v6 = nets_of(FIREHOL)
    assert v4 == ((0, 8), (0x010A1000, 20), (0xC0000207, 32))
    assert v6 == ((0x20010DB80BAD << 80, 48),)
    v4, v6 = nets_of(SPAMHAUS)
    assert v4 == ((0x010A1000, 20), (0x01130000, 16)) and v6 == ()
    v4, v6 = nets_of(SPAMHAUS_JSON)
    assert v4 == ((0x010A1000, 20),) and len(v6) == 1


def test_bad_lines_are_reported_with_line_and_column() -> None:
    parsed = parse_list_text('1.2.3.0/24\n  nonsense ; SBL1\n{"cidr": 5}\n1.2.3.4/40\n')
    assert [(p[0], p[1], p[3]) for p in parsed.problems] == [
        (2, 3, "invalid address 'nonsense' in table file"),
        (3, 1, '"cidr" is not a string'),
        (4, 1, "invalid address '1.2.3.4/40' in table file"),
    ]
    assert parsed.nets4 == ((0x01020300, 24),)


def write_policy(tmp_path: Path, table_opts: str, list_text: str) -> Path:
    (tmp_path / "drop.txt").write_text(list_text)
    policy = tmp_path / "p.rules"
    policy.write_text(
        f'table spamhaus file "drop.txt"{table_opts}\n'
        'drop from @spamhaus alert "listed source"\n'
        'drop to @spamhaus alert "listed destination"\n'
    )
    return policy


def test_a_bad_line_refuses_the_policy_by_default(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "", "1.2.3.0/24\nbogus\n")
    with pytest.raises(PolicyError) as info:
        load_policy_collecting(path)
    (diag,) = info.value.diagnostics
    assert (diag.span.file, diag.span.line) == (str(tmp_path / "drop.txt"), 2)
    assert "on-error skip" in (diag.hint or "")


def test_on_error_skip_keeps_the_rest_with_a_warning(tmp_path: Path) -> None:
    path = write_policy(tmp_path, " on-error skip", "1.2.3.0/24\nbogus\n")
    policy, _ = load_policy_collecting(path)
    assert policy.tables["spamhaus"].nets4 == ((0x01020300, 24),)
    assert [(w.span.line, w.severity) for w in policy.warnings] == [(2, "warning")]


def test_an_empty_list_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "", "; Spamhaus DROP List\n; nothing below\n")
    with pytest.raises(PolicyError) as info:
        load_policy_collecting(path)
    assert "has no address in it" in info.value.diagnostics[0].message
    assert "allow-empty" in (info.value.diagnostics[0].hint or "")
    path = write_policy(tmp_path, " allow-empty", "")
    policy, _ = load_policy_collecting(path)
    assert policy.tables["spamhaus"].entries == 0
    # a list of nothing but bad lines, skipped, is empty too: refused
    path = write_policy(tmp_path, " on-error skip", "bogus\n")
    with pytest.raises(PolicyError):
        load_policy_collecting(path)


def test_table_options_are_checked(tmp_path: Path) -> None:
    path = write_policy(tmp_path, " refresh 5s on-error skpi", "1.2.3.0/24\n")
    with pytest.raises(PolicyError) as info:
        load_policy_collecting(path)
    messages = [(d.message, d.hint) for d in info.value.diagnostics]
    assert messages[0][0] == "a table is refreshed at most every 10s"
    assert messages[1][0] == "'skpi' is not a value of a table's on-error"
    assert messages[1][1] == "did you mean 'skip'?"


def test_refresh_takes_a_good_file_and_keeps_the_old_set_on_a_bad_one(tmp_path: Path) -> None:
    path = write_policy(tmp_path, " refresh 1h", SPAMHAUS)
    policy, sources = load_policy_collecting(path)
    table = policy.tables["spamhaus"]
    assert table.refresh == 3600 and table.path == str(tmp_path / "drop.txt")
    clock = RefreshClock()
    assert clock.due_tables(policy, 0.0) == []  # due one period after it was first seen
    assert clock.due_tables(policy, 3599.0) == []
    main = str(path.resolve())

    # unchanged: nothing to swap
    due = clock.due_tables(policy, 3600.0)
    assert [t.name for t in due] == ["spamhaus"]
    result = refresh_tables(due, main, sources, _disk, clock, 1.0)
    assert result.policy is None and result.problems == []

    # a new list: a new policy with the new networks
    (tmp_path / "drop.txt").write_text(SPAMHAUS + "5.6.0.0/16 ; SBL9\n")
    result = refresh_tables(due, main, sources, _disk, clock, 2.0)
    assert result.policy is not None and result.sources is not None
    assert (0x05060000, 16) in result.policy.tables["spamhaus"].nets4
    assert clock.status["spamhaus"].changed_at == 2.0
    policy, sources = result.policy, result.sources

    # a broken download: refused with file:line, the running set untouched
    (tmp_path / "drop.txt").write_text(SPAMHAUS + "<html>502 Bad Gateway</html>\n")
    result = refresh_tables(due, main, sources, _disk, clock, 3.0)
    assert result.policy is None
    assert f"{tmp_path / 'drop.txt'}:5" in "\n".join(result.problems)
    assert clock.status["spamhaus"].refused == 1
    assert "502" in (clock.status["spamhaus"].error or "")
    assert (0x05060000, 16) in policy.tables["spamhaus"].nets4

    # truncated to nothing: refused as well
    (tmp_path / "drop.txt").write_text("")
    result = refresh_tables(due, main, sources, _disk, clock, 4.0)
    assert result.policy is None and clock.status["spamhaus"].refused == 2

    # unreadable: refused, kept
    (tmp_path / "drop.txt").unlink()
    result = refresh_tables(due, main, sources, _disk, clock, 5.0)
    assert result.policy is None and "cannot read it" in result.problems[0]


def _disk(path: Path) -> str:
    return path.read_text()


def test_alerts_carry_the_lists_name(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "", "1.10.16.0/20\n")
    policy, _ = load_policy_collecting(path)
    engine = Engine(policy)
    decision = engine.handle(tcp("1.10.16.9", "192.0.2.1", 4000, 80, flags="S"), now=1.0)
    assert decision.verdict == "drop"
    (alert,) = [e for e in decision.effects if type(e).__name__ == "Alert"]
    assert alert.extra == {"lists": {"src": ["spamhaus"]}}
    decision = engine.handle(tcp("192.0.2.1", "1.10.16.9", 4000, 80, flags="S"), now=1.1)
    (alert,) = [e for e in decision.effects if type(e).__name__ == "Alert"]
    assert alert.extra == {"lists": {"dst": ["spamhaus"]}}
