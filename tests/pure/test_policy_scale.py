"""Large tables (issue 19, item 4), without a kernel: what the translator makes of a table of
thousands of entries, the size limit at check time, the parsing of table files, and the
netlink dump of rule counters that `status` reads instead of `nft list table`."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ips.kernel import nft_counters
from ips.policy.diagnostics import PolicyError
from ips.policy.model import DEFAULT_TABLE_MAX_ENTRIES
from ips.policy.resolve import load_policy
from ips.translate import nft
from ips.translate.nft import NftPlan, SetState, TableState, build_ruleset, static_sets

PLAN = NftPlan(hooks=("forward",))


def ip4(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def write(tmp_path: Path, entries: list[str], rules: str = "drop from @big\n") -> Path:
    (tmp_path / "big.txt").write_text("".join(f"{e}\n" for e in entries))
    policy = tmp_path / "p.rules"
    policy.write_text(f'table big file "big.txt"\n{rules}')
    return policy


HOSTS = [ip4((10 << 24) + 2 * i) for i in range(2000)]
NETS = [f"{ip4((100 << 24) + 16 * i)}/28" for i in range(1500)]
INSIDE = ip4((100 << 24) + 16 * 7 + 3)  # a host inside one of the /28s: decides nothing


def rules_of(commands: list[dict[str, object]]) -> list[list[dict[str, object]]]:
    return [c["add"]["rule"]["expr"] for c in commands if "rule" in c.get("add", {})]  # type: ignore[index, union-attr]


def test_a_large_table_becomes_named_sets_one_per_prefix_length(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, [*HOSTS, *NETS, INSIDE, "2001:db8::1"]))
    static = static_sets(policy, PLAN)
    sets = {s.plen: s for s in static.used.values()}
    assert set(sets) == {28, 32}  # IPv6: one entry, under NAMED_SET_MIN, stays in the rule
    assert len(sets[32].nets) == len(HOSTS) and len(sets[28].nets) == len(NETS)
    for named in sets.values():
        assert named.name.startswith("big_v4_") and nft.STATIC_SET_RE.search(named.name)
    commands = build_ruleset(policy, PLAN, static=static)
    text = json.dumps(commands)
    assert HOSTS[5] not in text and INSIDE not in text  # no element in any rule
    matches = [e["match"] for r in rules_of(commands) for e in r if "match" in e]
    lookups = {m["right"]: m["left"] for m in matches if str(m["right"]).startswith("@big")}
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    assert lookups == {
        f"@{sets[32].name}": saddr,
        f"@{sets[28].name}": {"&": [saddr, "255.255.255.240"]},
    }
    saddr6 = {"payload": {"protocol": "ip6", "field": "saddr"}}
    exprs = [e for r in rules_of(commands) for e in r]
    assert {"match": {"op": "==", "left": saddr6, "right": "2001:db8::1"}} in exprs
    # The sets are loaded before this batch (Nft.apply): it neither creates nor fills them.
    added_sets = [c for c in commands if "set" in c.get("add", {})]  # type: ignore[operator]
    assert "element" not in text and sets[32].name not in json.dumps(added_sets)


def test_a_negated_large_table_is_one_rule_that_is_in_none_of_its_sets(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, [*HOSTS, *NETS], "accept from !@big\n"))
    rules = [r for r in rules_of(build_ruleset(policy, PLAN)) if {"accept": None} in r]
    (rule,) = [r for r in rules if "@big" in json.dumps(r)]
    ops = [e["match"]["op"] for e in rule if "match" in e and "@big" in json.dumps(e)]
    assert ops == ["!=", "!="]


def test_a_small_table_stays_in_its_rule(tmp_path: Path) -> None:
    entries = HOSTS[: nft.NAMED_SET_MIN - 1]
    policy = load_policy(write(tmp_path, entries))
    assert not static_sets(policy, PLAN).used
    assert entries[3] in json.dumps(build_ruleset(policy, PLAN))


def test_set_names_follow_the_content(tmp_path: Path) -> None:
    def names(entries: list[str]) -> set[str]:
        return set(static_sets(load_policy(write(tmp_path, entries)), PLAN).used)

    first = names(HOSTS)
    assert names(list(reversed(HOSTS))) == first  # the same table, in another order
    assert names([*HOSTS[1:], "192.0.2.1"]) != first


def test_elements_are_sent_in_chunks(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, HOSTS))
    (named,) = static_sets(policy, PLAN).used.values()
    chunks = list(named.chunks(size=300))
    assert [len(c["add"]["element"]["elem"]) for c in chunks] == [300] * 6 + [200]  # type: ignore[index]
    sent = [e for c in chunks for e in c["add"]["element"]["elem"]]  # type: ignore[index]
    assert sorted(sent) == sorted(HOSTS)
    assert nft.ELEMENT_CHUNK == 100_000


def test_sets_of_a_former_table_go_and_the_current_ones_stay(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, HOSTS))
    static = static_sets(policy, PLAN)
    (current,) = static.used
    old = "big_v4_32_0123abcd"
    existing = TableState(
        ("forward",), {name: SetState(name, "ipv4_addr", (), None, None) for name in (current, old)}
    )
    commands = build_ruleset(policy, PLAN, existing=existing, static=static)
    deleted = [c["delete"]["set"]["name"] for c in commands if "set" in c.get("delete", {})]  # type: ignore[index, operator]
    assert deleted == [old]
    flushed = next(i for i, c in enumerate(commands) if "flush" in c)
    assert commands.index({"delete": {"set": {**nft._T, "name": old}}}) > flushed


# ---- the size limit, at check time ----------------------------------------------------------


def test_a_table_over_the_limit_is_refused_at_check_time(tmp_path: Path) -> None:
    path = write(tmp_path, HOSTS[:4], "set table-max-entries 3\ndrop from @big\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    (d,) = info.value.diagnostics
    assert (d.span.line, d.span.col, d.code) == (1, 7, "limit")
    assert d.message == "table 'big' has 4 entries, more than the limit of 3"
    assert d.hint == "split it, or raise the limit: set table-max-entries N (at most 16,777,216)"
    assert load_policy(write(tmp_path, HOSTS[:3], "set table-max-entries 3\n"))
    assert DEFAULT_TABLE_MAX_ENTRIES == 2_000_000


def test_table_file_entries_read_as_before(tmp_path: Path) -> None:
    """The hand parser for a.b.c.d[/n] and the ipaddress module for the rest agree with what
    the module alone accepted: host bits cleared, a netmask, IPv6; leading zeros refused."""
    path = write(
        tmp_path,
        ["10.1.2.3/8", "192.0.2.0/255.255.255.0", "2001:db8::5/64", "198.51.100.7 # comment"],
    )
    table = load_policy(path).tables["big"]
    assert table.nets4 == (
        (10 << 24, 8),
        ((192 << 24) + (2 << 8), 24),
        ((198 << 24) + (51 << 16) + (100 << 8) + 7, 32),
    )
    assert table.nets6 == ((0x20010DB8 << 96, 64),)
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, ["010.0.0.1"]))
    assert info.value.diagnostics[0].message == "invalid address '010.0.0.1' in table file"


# ---- counters by netlink --------------------------------------------------------------------


def _nla(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _counter(packets: int, octets: int) -> bytes:
    data = _nla(1, struct.pack("!Q", octets)) + _nla(2, struct.pack("!Q", packets))
    return _nla(1, _nla(1, b"counter\0") + _nla(2, data))


def test_a_dumped_rule_gives_its_comment_and_counters() -> None:
    comment = b"ipsctl:p.rules:2\0"
    userdata = bytes([0, len(comment)]) + comment
    lookup = _nla(1, _nla(1, b"lookup\0") + _nla(2, _nla(1, b"big_v4_32_0123abcd\0")))
    body = (
        _nla(1, b"ipsctl\0")
        + _nla(2, b"forward\0")
        + _nla(4, lookup + _counter(7, 700) + _counter(1, 60))
        + _nla(7, userdata)
    )
    parsed = nft_counters.parse_rules(body)
    assert parsed == ("ipsctl:p.rules:2", [(7, 700), (1, 60)])
    out: dict[str, nft.RuleCounter] = {}
    nft_counters.add_rule(out, *parsed)
    nft_counters.add_rule(out, "ipsctl:p.rules:2", [(3, 30)])  # the rule's other nft rule
    nft_counters.add_rule(out, "someone else's", [(5, 5)])
    nft_counters.add_rule(out, None, [(5, 5)])
    assert out == {"ipsctl:p.rules:2": nft.RuleCounter(11, 790)}


def test_the_dump_request_asks_for_our_table_only() -> None:
    msg = nft_counters.dump_request(9)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), (10 << 8) | 7, 0x301, 9)
    assert msg[16] == 1  # NFPROTO_INET
    assert msg[20:].startswith(_nla(1, b"ipsctl\0"))


def test_a_metered_rule_on_a_large_table_looks_it_up_in_its_named_sets(tmp_path: Path) -> None:
    """A `limit … per src else drop` rule becomes a kernel meter (set-up of the flood work);
    when it names a large table, the meter's match uses the table's named sets — loaded with
    the others — instead of writing its thousands of networks into the rule."""
    policy = load_policy(write(tmp_path, HOSTS, "accept from @big limit 10/s per src else drop\n"))
    assert nft.metered_rules(policy), "the rule must be metered for this test to mean anything"
    static = static_sets(policy, PLAN)
    (named,) = static.used.values()
    commands = build_ruleset(policy, PLAN, static=static)
    assert HOSTS[5] not in json.dumps(commands)
    meter_rules = [r for r in rules_of(commands) if any("set" in e for e in r)]
    assert meter_rules and all(
        any(e.get("match", {}).get("right") == f"@{named.name}" for e in r)  # type: ignore[union-attr]
        for r in meter_rules
    )
