"""The policy language, construct by construct: text in, resolved RuleSpec / TableSpec /
DetectSpec / options out (ips.policy.resolve)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ips.core.packet import PORT_PROTOS
from ips.policy.diagnostics import PolicyError
from ips.policy.explain import rule_mismatch
from ips.policy.model import AddrSpec, IfaceSpec, LimitSpec, PortSpec, RewriteSpec, RuleSpec
from ips.policy.packetspec import packet_from_text
from ips.policy.resolve import (
    load_policy,
    load_policy_collecting,
    load_policy_sources,
    load_policy_text,
)

ROOT = Path(__file__).resolve().parents[2]


def load(text: str):
    return load_policy_text(text, "t.rules")


def rule(text: str) -> RuleSpec:
    """The last rule of a policy text (earlier lines may define names)."""
    policy = load(text)
    assert policy.rules, "no rule resolved"
    return policy.rules[-1]


def n4(text: str) -> tuple[int, int]:
    net = ipaddress.IPv4Network(text, strict=False)
    return int(net.network_address), net.prefixlen


def n6(text: str) -> tuple[int, int]:
    net = ipaddress.IPv6Network(text, strict=False)
    return int(net.network_address), net.prefixlen


ALL = frozenset({4, 6})


# ---- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clause", "nets4", "nets6", "families"),
    [
        ("192.0.2.1", [n4("192.0.2.1/32")], [], {4}),
        ("10.0.0.0/8", [n4("10.0.0.0/8")], [], {4}),
        ("0.0.0.0/0", [(0, 0)], [], {4}),
        ("255.255.255.255", [n4("255.255.255.255/32")], [], {4}),
        ("2001:db8::1", [], [n6("2001:db8::1/128")], {6}),
        ("2001:db8::/32", [], [n6("2001:db8::/32")], {6}),
        ("::", [], [(0, 128)], {6}),
        ("::1", [], [(1, 128)], {6}),
        ("::/0", [], [(0, 0)], {6}),
        ("fe80::/10", [], [n6("fe80::/10")], {6}),
        ("::ffff:10.0.0.1", [], [n6("::ffff:10.0.0.1/128")], {6}),  # mapped: an IPv6 address
        ("2001:DB8::ABCD", [], [n6("2001:db8::abcd/128")], {6}),  # upper-case hex
        (
            "{ 10.0.0.0/8, 2001:db8::/32 }",
            [n4("10.0.0.0/8")],
            [n6("2001:db8::/32")],
            {4, 6},
        ),
    ],
)
def test_addresses_and_prefixes(clause: str, nets4: list, nets6: list, families: set[int]) -> None:
    for keyword, attr in (("from", "src"), ("to", "dst")):
        r = rule(f"accept {keyword} {clause}")
        spec = getattr(r, attr)
        assert spec == AddrSpec(False, tuple(nets4), tuple(nets6), ())
        assert r.families == frozenset(families)
        other = r.dst if attr == "src" else r.src
        assert other is None


def test_any_address_is_no_constraint() -> None:
    r = rule("accept from any to any")
    assert (r.src, r.dst, r.families) == (None, None, ALL)


def test_host_bits_are_cleared_with_a_warning() -> None:
    policy = load("accept from 10.1.2.3/8")
    assert policy.rules[0].src == AddrSpec(False, (n4("10.0.0.0/8"),))
    (warning,) = policy.warnings
    assert warning.severity == "warning"
    assert "10.0.0.0/8" in warning.message


# ---- sets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "accept from { 10.0.0.1, 10.0.0.2, 10.0.0.3 }",
        "accept from { 10.0.0.1 10.0.0.2 10.0.0.3 }",
        "accept from {10.0.0.1,10.0.0.2 10.0.0.3,}",
        "accept from {\n  10.0.0.1,\n  10.0.0.2\n  10.0.0.3\n}",
        "accept from {          # the hosts\n  10.0.0.1,   # one\n\n  # two\n  10.0.0.2,\n"
        "  10.0.0.3 }  # three",
    ],
)
def test_sets_with_and_without_commas_and_across_lines(text: str) -> None:
    policy = load(text)
    (r,) = policy.rules
    assert r.src == AddrSpec(False, (n4("10.0.0.1/32"), n4("10.0.0.2/32"), n4("10.0.0.3/32")))
    assert r.span.line == 1


def test_a_set_across_lines_keeps_later_line_numbers() -> None:
    policy = load("accept from {\n  10.0.0.1\n}\ndrop to port 80\n")
    assert [(r.action, r.span.line) for r in policy.rules] == [("accept", 1), ("drop", 4)]


# ---- negation ------------------------------------------------------------------------------


def test_negation_of_each_kind_of_value() -> None:
    r = rule(
        "accept proto tcp from !10.0.0.0/8 port !1024-65535 to !{ 192.0.2.1, 192.0.2.2 } "
        "port !{ 22, 80 } in on !eth* state !established"
    )
    assert r.src == AddrSpec(True, (n4("10.0.0.0/8"),))
    assert r.dst == AddrSpec(True, (n4("192.0.2.1/32"), n4("192.0.2.2/32")))
    assert r.sport == PortSpec(True, ((1024, 65535),))
    assert r.dport == PortSpec(True, ((22, 22), (80, 80)))
    assert r.iif == IfaceSpec(True, ("eth*",))
    assert r.states == frozenset({"new"})
    # a negated IPv4 constraint stays within IPv4 (as nftables' `ip saddr !=`)
    assert r.families == frozenset({4})
    assert r.dport.contains(443) and not r.dport.contains(80)


def test_negated_protocol_is_the_complement() -> None:
    r = rule("accept proto !{ tcp, udp }")
    assert r.protos == frozenset(range(256)) - {6, 17}


def test_negated_icmp_type_is_the_complement() -> None:
    r = rule("accept proto icmp type !echo-request")
    assert r.icmp_types == frozenset(range(256)) - {8}


# ---- define ----------------------------------------------------------------------------------


def test_define_simple_nested_in_sets_and_forward() -> None:
    policy = load(
        "accept from $clients to $servers port $web\n"  # used before it is defined
        "define a       = 10.0.0.1\n"
        "define b       = { $a, 10.0.0.2 }\n"
        "define clients = { $b 192.168.0.0/16 }\n"
        "define servers = 192.0.2.0/24\n"
        "define alt     = { 8080-8089 }\n"
        "define web     = { http, https, $alt }\n"
    )
    (r,) = policy.rules
    assert r.src == AddrSpec(False, (n4("10.0.0.1/32"), n4("10.0.0.2/32"), n4("192.168.0.0/16")))
    assert r.dst == AddrSpec(False, (n4("192.0.2.0/24"),))
    assert r.dport == PortSpec(False, ((80, 80), (443, 443), (8080, 8089)))
    assert r.families == frozenset({4})


def test_define_of_ipv6_and_mixed_sets() -> None:
    r = rule("define v6 = 2001:db8::/64\ndefine both = { $v6, 10.0.0.0/8 }\naccept to $both")
    assert r.dst == AddrSpec(False, (n4("10.0.0.0/8"),), (n6("2001:db8::/64"),))
    assert r.families == ALL


def test_define_negated_value_and_double_negation() -> None:
    r = rule("define notlan = !10.0.0.0/8\naccept from $notlan")
    assert r.src == AddrSpec(True, (n4("10.0.0.0/8"),))
    r = rule("define notlan = !10.0.0.0/8\naccept from !$notlan")
    assert r.src == AddrSpec(False, (n4("10.0.0.0/8"),))


def test_define_of_ports_protocols_interfaces_and_states() -> None:
    r = rule(
        "define p = { tcp, udp }\ndefine ifs = { eth0, wg* }\ndefine st = established\n"
        "define dns = domain\naccept proto $p to port $dns in on $ifs state $st"
    )
    assert r.protos == frozenset({6, 17})
    assert r.dport == PortSpec(False, ((53, 53),))
    assert r.iif == IfaceSpec(False, ("eth0", "wg*"))
    assert r.states == frozenset({"established"})


# ---- tables ----------------------------------------------------------------------------------


def test_static_and_dynamic_tables() -> None:
    policy = load(
        "table trusted = { 127.0.0.0/8, ::1, 192.0.2.0/24 }\n"
        "table banned dynamic timeout 1h\n"
        "table small dynamic size 100 timeout 90s\n"
        "table plain dynamic\n"
        "drop from @banned\n"
        "accept from @trusted to !@trusted\n"
    )
    t = policy.tables
    assert set(t) == {"trusted", "banned", "small", "plain"}
    assert t["trusted"].kind == "static"
    assert t["trusted"].nets4 == (n4("127.0.0.0/8"), n4("192.0.2.0/24"))
    assert t["trusted"].nets6 == ((1, 128),)
    assert (t["banned"].kind, t["banned"].timeout, t["banned"].size) == ("dynamic", 3600, 65536)
    assert (t["small"].timeout, t["small"].size) == (90, 100)
    assert (t["plain"].timeout, t["plain"].size) == (None, 65536)
    assert t["banned"].span.line == 2
    drop, accept = policy.rules
    assert drop.src == AddrSpec(False, (), (), ("banned",))
    assert drop.families == ALL  # a dynamic table may hold either family
    assert accept.src == AddrSpec(False, t["trusted"].nets4, t["trusted"].nets6)
    assert accept.dst == AddrSpec(True, t["trusted"].nets4, t["trusted"].nets6)


def test_table_mixed_with_addresses_in_a_set() -> None:
    r = rule("table t = { 10.0.0.0/8 }\ntable d dynamic\naccept from { @t, 192.0.2.1, @d }")
    assert r.src == AddrSpec(False, (n4("10.0.0.0/8"), n4("192.0.2.1/32")), (), ("d",))


def test_table_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "block.txt").write_text(
        "# blocklist\n10.0.0.0/8\n\n   192.0.2.7   # a host\n2001:db8::/32\n"
    )
    (tmp_path / "main.rules").write_text('table bl file "lists/block.txt"\ndrop from @bl\n')
    policy = load_policy(tmp_path / "main.rules")
    spec = policy.tables["bl"]
    assert spec.kind == "file"
    assert spec.nets4 == (n4("10.0.0.0/8"), n4("192.0.2.7/32"))
    assert spec.nets6 == (n6("2001:db8::/32"),)
    assert policy.rules[0].src == AddrSpec(False, spec.nets4, spec.nets6)


def test_table_file_by_absolute_path(tmp_path: Path) -> None:
    listing = tmp_path / "abs.txt"
    listing.write_text("198.51.100.0/24\n")
    policy = load(f'table a file "{listing}"\ndrop from @a')
    assert policy.tables["a"].nets4 == (n4("198.51.100.0/24"),)


def test_table_file_is_relative_to_base_dir_of_policy_text(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("10.0.0.0/8\n")
    policy = load_policy_text('table f file "list.txt"\ndrop from @f', "t.rules", base_dir=tmp_path)
    assert policy.tables["f"].nets4 == (n4("10.0.0.0/8"),)


# ---- an empty set, table or file constrains nothing: a security hole ----------------------------


EMPTY_CASES = [
    ("drop from {}", "tcp 192.0.2.1:1000 > 198.51.100.1:80 flags S"),
    ("define none = {}\ndrop from $none", "tcp 192.0.2.1:1000 > 198.51.100.1:80 flags S"),
    ("table t = {}\ndrop from @t", "tcp 192.0.2.1:1000 > 198.51.100.1:80 flags S"),
    ("table t = {}\ndrop to @t", "udp 192.0.2.1:1000 > 198.51.100.1:53"),
    ("drop proto tcp to port {}", "tcp 192.0.2.1:1000 > 198.51.100.1:80 flags S"),
    ("drop proto {}", "udp 192.0.2.1:1000 > 198.51.100.1:53"),
]


@pytest.mark.parametrize(("text", "packet"), EMPTY_CASES)
def test_empty_set_or_table_matches_nothing(text: str, packet: str) -> None:
    try:
        r = rule(text)
    except PolicyError:
        return  # refusing an empty set is fine too
    assert rule_mismatch(r, packet_from_text(packet), None, None, False) is not None


def test_empty_table_file_matches_nothing(tmp_path: Path) -> None:
    (tmp_path / "allow.txt").write_text("# nobody yet\n")
    (tmp_path / "p.rules").write_text('table allow file "allow.txt"\naccept from @allow\n')
    try:
        r = load_policy(tmp_path / "p.rules").rules[0]
    except PolicyError:
        return
    pkt = packet_from_text("tcp 203.0.113.9:1000 > 198.51.100.1:22 flags S")
    assert rule_mismatch(r, pkt, None, None, False) is not None


# ---- ports -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ports", "ranges"),
    [
        ("80", [(80, 80)]),
        ("0", [(0, 0)]),
        ("65535", [(65535, 65535)]),
        ("8000-8100", [(8000, 8100)]),
        ("ssh", [(22, 22)]),
        ("domain", [(53, 53)]),
        ("ftp-data", [(20, 20)]),
        ("microsoft-ds", [(445, 445)]),
        ("https-alt", [(8443, 8443)]),
        ("{ 135-139, microsoft-ds }", [(135, 139), (445, 445)]),
        ("{ 80 81 82-90 85 }", [(80, 90)]),  # merged and sorted
        ("{ https, http }", [(80, 80), (443, 443)]),
        ("{ 10-20, 15-30, 40 }", [(10, 30), (40, 40)]),
        ("any", None),
    ],
)
def test_ports_ranges_and_service_names(ports: str, ranges: list | None) -> None:
    r = rule(f"accept proto tcp to port {ports}")
    assert r.dport == (PortSpec(False, tuple(ranges)) if ranges is not None else None)
    r = rule(f"accept proto udp from port {ports}")
    assert r.sport == (PortSpec(False, tuple(ranges)) if ranges is not None else None)
    assert (r.src, r.dst) == (None, None)


def test_address_and_port_in_one_endpoint() -> None:
    r = rule("accept from 10.0.0.1 port 1000-2000 to 10.0.0.2 port 443")
    assert r.src == AddrSpec(False, (n4("10.0.0.1/32"),))
    assert r.sport == PortSpec(False, ((1000, 2000),))
    assert r.dst == AddrSpec(False, (n4("10.0.0.2/32"),))
    assert r.dport == PortSpec(False, ((443, 443),))
    assert r.protos == PORT_PROTOS  # ports imply tcp/udp/sctp/udplite


# ---- protocols and families --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "protos", "families"),
    [
        ("tcp", {6}, ALL),
        ("udp", {17}, ALL),
        ("sctp", {132}, ALL),
        ("gre", {47}, ALL),
        ("esp", {50}, ALL),
        ("icmp", {1}, {4}),
        ("icmpv6", {58}, {6}),
        ("icmp6", {58}, {6}),
        ("ipv6-icmp", {58}, {6}),
        ("47", {47}, ALL),
        ("0", {0}, ALL),
        ("255", {255}, ALL),
        ("{ tcp, udp }", {6, 17}, ALL),
        ("{ tcp 17 132 }", {6, 17, 132}, ALL),
        ("any", None, ALL),
    ],
)
def test_protocols(proto: str, protos: set[int] | None, families: set[int]) -> None:
    r = rule(f"accept proto {proto}")
    assert r.protos == (frozenset(protos) if protos is not None else None)
    assert r.families == frozenset(families)


@pytest.mark.parametrize(
    ("text", "families"),
    [
        ("accept inet", {4}),
        ("accept inet6", {6}),
        ("accept inet proto tcp", {4}),
        ("accept proto udp inet6", {6}),
        ("accept inet from { 10.0.0.1, 2001:db8::1 }", {4}),
        ("accept inet6 to { 10.0.0.1, 2001:db8::1 }", {6}),
        ("rewrite set daddr 10.0.0.5", {4}),
        ("rewrite set daddr 2001:db8::5", {6}),
        ("accept", {4, 6}),
    ],
)
def test_families(text: str, families: set[int]) -> None:
    assert rule(text).families == frozenset(families)


# ---- interfaces ------------------------------------------------------------------------------


def test_interfaces_directions_and_wildcards() -> None:
    r = rule("accept in on eth0 out on { wg*, tun0 }")
    assert r.iif == IfaceSpec(False, ("eth0",))
    assert r.oif == IfaceSpec(False, ("wg*", "tun0"))
    assert (r.anyif, r.direction) == (None, None)
    r = rule("accept on !lo")
    assert (r.anyif, r.iif, r.oif) == (IfaceSpec(True, ("lo",)), None, None)
    r = rule("accept in")
    assert (r.direction, r.iif) == ("in", None)
    r = rule("accept out")
    assert (r.direction, r.oif) == ("out", None)
    r = rule("accept in on eth0.100")  # VLAN sub-interface names keep their dot
    assert r.iif == IfaceSpec(False, ("eth0.100",))
    # the meaning of the wildcard
    wild = IfaceSpec(False, ("eth*",))
    assert wild.matches("eth0") and wild.matches("eth") and not wild.matches("veth0")
    assert not IfaceSpec(False, ("eth0",)).matches("eth01")
    assert IfaceSpec(True, ("lo",)).matches(None)  # no interface is 'not lo'


# ---- TCP flags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "value", "mask"),
    [
        ("S", 0x02, 0xFF),  # exactly SYN
        ("SA", 0x12, 0xFF),
        ("S/SA", 0x02, 0x12),
        ("SA/SA", 0x12, 0x12),
        ("/FSRPAU", 0x00, 0x3F),  # NULL
        ("FPU/FSRPAU", 0x29, 0x3F),  # XMAS
        ("F/FSRPAU", 0x01, 0x3F),
        ("SF/SF", 0x03, 0x03),
        ("R/R", 0x04, 0x04),
        ("E/EW", 0x40, 0xC0),
        ("C/C", 0x80, 0x80),  # C is CWR, as W
    ],
)
def test_tcp_flags_with_and_without_mask(spec: str, value: int, mask: int) -> None:
    r = rule(f"drop flags {spec}")
    assert r.flags == (value, mask)
    assert r.protos == frozenset({6})  # flags imply TCP


def test_flags_any_is_no_constraint() -> None:
    r = rule("drop proto tcp flags any")
    assert r.flags is None


# ---- ICMP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "types", "code", "families"),
    [
        ("proto icmp type echo-request", {8}, None, {4}),
        ("proto icmp type 8", {8}, None, {4}),
        ("proto icmp type { echo-request, echo-reply, 13 }", {8, 0, 13}, None, {4}),
        ("proto icmp type unreachable code port-unreachable", {3}, 3, {4}),
        ("proto icmp type destination-unreachable code 4", {3}, 4, {4}),
        ("proto icmp type time-exceeded", {11}, None, {4}),
        ("proto icmp type 3 code admin-prohibited", {3}, 13, {4}),
        ("proto icmpv6 type echo-request", {128}, None, {6}),
        ("proto icmpv6 type { 1, 2, 3, 4 }", {1, 2, 3, 4}, None, {6}),
        ("proto icmpv6 type { nd-neighbor-solicit nd-neighbor-advert }", {135, 136}, None, {6}),
        ("proto icmpv6 type packet-too-big", {2}, None, {6}),
        ("proto icmpv6 type unreachable code port-unreachable", {1}, 4, {6}),
        ("proto icmpv6 type 1 code admin-prohibited", {1}, 1, {6}),
    ],
)
def test_icmp_and_icmpv6_types_and_codes(
    text: str, types: set[int], code: int | None, families: set[int]
) -> None:
    r = rule(f"accept {text}")
    assert r.icmp_types == frozenset(types)
    assert r.icmp_code == code
    assert r.families == frozenset(families)


# ---- length, state, fragment -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("length 100", ("=", 100, 100)),
        ("length = 100", ("=", 100, 100)),
        ("length != 100", ("!=", 100, 100)),
        ("length < 100", ("<", 100, 100)),
        ("length <= 100", ("<=", 100, 100)),
        ("length > 100", (">", 100, 100)),
        ("length >= 100", (">=", 100, 100)),
        ("length >1000", (">", 1000, 1000)),
        ("length 100-200", ("range", 100, 200)),
        ("length 0-65535", ("range", 0, 65535)),
    ],
)
def test_length_comparisons_and_ranges(clause: str, expected: tuple) -> None:
    assert rule(f"drop {clause}").length == expected


@pytest.mark.parametrize(
    ("clause", "states"),
    [
        ("state new", {"new"}),
        ("state established", {"established"}),
        ("state { new, established }", {"new", "established"}),
        ("state !new", {"established"}),
    ],
)
def test_state(clause: str, states: set[str]) -> None:
    assert rule(f"accept {clause}").states == frozenset(states)


def test_fragment() -> None:
    assert rule("drop fragment").fragment is True
    assert rule("drop").fragment is False


# ---- payload ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "pattern", "nocase"),
    [
        ('"/etc/passwd"', b"/etc/passwd", False),
        ("|de ad be ef|", b"\xde\xad\xbe\xef", False),
        ("|DEADBEEF|", b"\xde\xad\xbe\xef", False),
        ('"GET |0d 0a|"', b"GET \r\n", False),
        ('"|00|x|ff|"', b"\x00x\xff", False),
        (r'"a\"b\\c"', b'a"b\\c', False),
        (r'"\x41\x42"', b"AB", False),
        (r'"tab\there"', b"tab\there", False),
        ('"café"', "café".encode(), False),
        ('"a # b { c"', b"a # b { c", False),  # no comment, no set inside a string
        ('"AdMiN" nocase', b"admin", True),
        ('"GET |0D 0A|" nocase', b"get \r\n", True),
    ],
)
def test_payload_contains(content: str, pattern: bytes, nocase: bool) -> None:
    r = rule(f"drop proto tcp payload contains {content}")
    assert r.contains == ((pattern, nocase),)


def test_payload_contains_repeats_in_order() -> None:
    r = rule('drop proto tcp payload contains "a" payload contains |62| nocase')
    assert r.contains == ((b"a", False), (b"b", True))


# ---- limit -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("limit 50/s", LimitSpec(50.0, 50, "rule", None, "50/s")),
        ("limit 1/s", LimitSpec(1.0, 1, "rule", None, "1/s")),
        ("limit 600/m", LimitSpec(10.0, 10, "rule", None, "600/m")),
        ("limit 6/m burst 6 per src else reject", LimitSpec(0.1, 6, "src", "reject", "6/m")),
        ("limit 20/s per src else drop", LimitSpec(20.0, 20, "src", "drop", "20/s")),
        ("limit 3600/h burst 2 per dst", LimitSpec(1.0, 2, "dst", None, "3600/h")),
        ("limit 1/hour per flow else accept", LimitSpec(1 / 3600, 1, "flow", "accept", "1/hour")),
        ("limit 10/second else pass", LimitSpec(10.0, 10, "rule", "accept", "10/second")),
        ("limit 86400/day else block", LimitSpec(1.0, 1, "rule", "drop", "86400/day")),
        ("limit 120/minute", LimitSpec(2.0, 2, "rule", None, "120/minute")),
    ],
)
def test_limit_rate_per_burst_else(clause: str, expected: LimitSpec) -> None:
    r = rule(f"accept proto icmp {clause}")
    assert r.limit is not None
    assert r.limit.rate == pytest.approx(expected.rate)
    assert (r.limit.burst, r.limit.per, r.limit.else_action, r.limit.text) == (
        expected.burst,
        expected.per,
        expected.else_action,
        expected.text,
    )


# ---- rewrite ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clauses", "expected"),
    [
        ("set ttl 64", RewriteSpec(ttl=64)),
        ("set ttl 1", RewriteSpec(ttl=1)),
        ("set hoplimit 255", RewriteSpec(ttl=255)),
        ("set dscp 0", RewriteSpec(dscp=0)),
        ("set dscp 46", RewriteSpec(dscp=46)),
        ("set dscp ef", RewriteSpec(dscp=46)),
        ("set dscp af41", RewriteSpec(dscp=34)),
        ("set dscp cs1", RewriteSpec(dscp=8)),
        ("set dscp le", RewriteSpec(dscp=1)),
        ("proto tcp set dport 8080", RewriteSpec(dport=8080)),
        ("proto tcp set dport https", RewriteSpec(dport=443)),
        ("set daddr 10.0.0.5", RewriteSpec(daddr=bytes([10, 0, 0, 5]))),
        (
            "set daddr 2001:db8::5",
            RewriteSpec(daddr=ipaddress.IPv6Address("2001:db8::5").packed),
        ),
        ('replace "abc" with "xyz"', RewriteSpec(replace=((b"abc", b"xyz"),))),
        ('replace |00 01| with "ab"', RewriteSpec(replace=((b"\x00\x01", b"ab"),))),
        (
            'set ttl 9 set dscp ef replace "a" with "b" replace "cd" with "ef"',
            RewriteSpec(ttl=9, dscp=46, replace=((b"a", b"b"), (b"cd", b"ef"))),
        ),
    ],
)
def test_rewrite_set_and_replace(clauses: str, expected: RewriteSpec) -> None:
    r = rule(f"rewrite {clauses}")
    assert r.action == "rewrite"
    assert r.rewrite == expected


def test_rewrite_destination_translation_rule_of_the_gateway() -> None:
    r = rule("rewrite proto tcp to 10.10.2.10 port 8081 set dport 8080")
    assert r.dst == AddrSpec(False, (n4("10.10.2.10/32"),))
    assert r.dport == PortSpec(False, ((8081, 8081),))
    assert r.rewrite == RewriteSpec(dport=8080)
    assert r.families == frozenset({4})


# ---- reject ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reject_with", "protos"),
    [
        ("reject", None, None),
        ("reject proto tcp with tcp-reset", ("tcp-reset", None), {6}),
        ("reject with tcp-reset", ("tcp-reset", None), {6}),  # implies proto tcp
        ("reject with icmp", ("icmp", None), None),
        ("reject with icmp port-unreachable", ("icmp", 3), None),
        ("reject with icmp host-prohibited", ("icmp", 10), None),
        ("reject with icmp 13", ("icmp", 13), None),
        ("reject with icmpv6 admin-prohibited", ("icmpv6", 1), None),
        ("reject with icmpv6 port-unreachable", ("icmpv6", 4), None),
        ("reject with icmpv6 0", ("icmpv6", 0), None),
    ],
)
def test_reject_with(text: str, reject_with: tuple | None, protos: set[int] | None) -> None:
    r = rule(text)
    assert r.action == "reject"
    assert r.reject_with == reject_with
    assert r.protos == (frozenset(protos) if protos is not None else None)


def test_reject_icmp_kind_must_fit_the_family() -> None:
    with pytest.raises(PolicyError):
        load("reject inet6 with icmp port-unreachable")
    with pytest.raises(PolicyError):
        load("reject to 192.0.2.1 with icmpv6 port-unreachable")


# ---- alert, log, sid, severity, label ---------------------------------------------------------


def test_alert_log_sid_severity_label() -> None:
    r = rule('drop proto tcp alert "telnet" log sid 2000010 severity high label "no-telnet"')
    assert (r.alert, r.message, r.log, r.sid, r.severity, r.label) == (
        True,
        "telnet",
        True,
        2000010,
        1,
        "no-telnet",
    )
    assert r.name == "no-telnet"


def test_alert_without_message_uses_the_rule_text() -> None:
    r = rule("drop   proto tcp   to port 23   alert  # comment")
    assert r.alert is True
    assert r.message == r.text == "drop   proto tcp   to port 23   alert"
    assert r.name == "t.rules:1"
    assert r.severity == 2  # the default: medium


@pytest.mark.parametrize(
    ("word", "value"),
    [("critical", 1), ("high", 1), ("medium", 2), ("low", 3), ("info", 4), ("1", 1), ("255", 255)],
)
def test_severity_names_and_numbers(word: str, value: int) -> None:
    assert rule(f"drop alert severity {word}").severity == value


def test_match_rules_and_action_aliases() -> None:
    policy = load('pass\nblock\nmatch alert "x"\nmatch log\naccept\ndrop\nreject\n')
    assert [r.action for r in policy.rules] == [
        "accept",
        "drop",
        "match",
        "match",
        "accept",
        "drop",
        "reject",
    ]
    assert [r.index for r in policy.rules] == list(range(7))
    assert policy.rules[2].alert and policy.rules[3].log
    assert not policy.warnings


# ---- options ---------------------------------------------------------------------------------


def test_option_defaults() -> None:
    policy = load("accept")
    assert (policy.default_verdict, policy.on_error, policy.malformed_verdict) == (
        "accept",
        "accept",
        "drop",
    )
    assert policy.options == {}


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("set default drop", {"default": "drop"}),
        ("set default reject", {"default": "reject"}),
        ("set default block", {"default": "drop"}),
        ("set default pass", {"default": "accept"}),
        ("set on-error drop", {"on-error": "drop"}),
        ("set malformed accept", {"malformed": "accept"}),
        (
            "set default drop\nset on-error accept\nset malformed drop",
            {"default": "drop", "on-error": "accept", "malformed": "drop"},
        ),
        ("set default drop\nset default accept", {"default": "accept"}),  # the last wins
    ],
)
def test_options(text: str, options: dict[str, str]) -> None:
    policy = load(text)
    assert policy.options == options
    assert policy.default_verdict == options.get("default", "accept")
    assert policy.on_error == options.get("on-error", "accept")
    assert policy.malformed_verdict == options.get("malformed", "drop")


# ---- include ---------------------------------------------------------------------------------


def test_include_relative_paths_nested(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.rules").write_text('include "sub/common.rules"\naccept from $lan\n# end\n')
    # the nested include is relative to the including file (sub/), not to main.rules
    (tmp_path / "sub" / "common.rules").write_text(
        'define lan = 10.0.0.0/8\ninclude "more.rules"\ndrop to port telnet\n'
    )
    (tmp_path / "sub" / "more.rules").write_text("set default drop\nreject from 192.0.2.1\n")
    policy = load_policy(tmp_path / "main.rules")
    # rules in include order: an include stands where it is written
    where = [(Path(r.span.file).name, r.span.line, r.action) for r in policy.rules]
    assert where == [
        ("more.rules", 2, "reject"),
        ("common.rules", 3, "drop"),
        ("main.rules", 2, "accept"),
    ]
    assert policy.rules[2].src == AddrSpec(False, (n4("10.0.0.0/8"),))
    assert policy.default_verdict == "drop"
    assert [Path(f).name for f in policy.files] == ["main.rules", "common.rules", "more.rules"]
    assert set(policy.sources) == set(policy.files)


def test_include_changes_the_digest(tmp_path: Path) -> None:
    (tmp_path / "main.rules").write_text('include "inc.rules"\n')
    (tmp_path / "inc.rules").write_text("accept\n")
    first = load_policy(tmp_path / "main.rules").digest
    assert first == load_policy(tmp_path / "main.rules").digest
    (tmp_path / "inc.rules").write_text("drop\n")
    assert load_policy(tmp_path / "main.rules").digest != first


def test_a_table_file_changes_the_digest(tmp_path: Path) -> None:
    """Issue 19, item 8: two different blocklists are two different policies (`status` shows
    the digest), also as the daemon resolves them from the texts `apply` handed over."""
    (tmp_path / "main.rules").write_text('table big file "big.txt"\ndrop from @big\n')
    (tmp_path / "big.txt").write_text("192.0.2.1\n")
    first = load_policy(tmp_path / "main.rules").digest
    assert first == load_policy(tmp_path / "main.rules").digest
    (tmp_path / "big.txt").write_text("192.0.2.2\n")
    policy, read = load_policy_collecting(tmp_path / "main.rules")
    assert policy.digest != first
    assert load_policy_sources(str(tmp_path / "main.rules"), read).digest == policy.digest


def test_include_of_a_parent_directory_with_include_root(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "common.rules").write_text("drop to port 23\n")
    (tmp_path / "site" / "edge.rules").write_text('include "../common.rules"\n')
    with pytest.raises(PolicyError, match="outside the policy directory"):
        load_policy(tmp_path / "site" / "edge.rules")
    policy = load_policy(tmp_path / "site" / "edge.rules", include_root=tmp_path)
    assert policy.rules[0].dport == PortSpec(False, ((23, 23),))


def test_include_loop_missing_and_escape_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.rules").write_text('include "b.rules"\n')
    (tmp_path / "b.rules").write_text('accept\ninclude "a.rules"\n')
    with pytest.raises(PolicyError) as loop:
        load_policy(tmp_path / "a.rules")
    (d,) = loop.value.diagnostics
    assert d.message == "include loop: a.rules -> b.rules -> a.rules"
    assert (Path(d.span.file).name, d.span.line, d.span.col) == ("b.rules", 2, 9)

    (tmp_path / "m.rules").write_text('include "nothere.rules"\n')
    with pytest.raises(PolicyError, match=r"cannot include 'nothere\.rules'"):
        load_policy(tmp_path / "m.rules")

    (tmp_path / "e.rules").write_text('include "/etc/hostname"\n')
    with pytest.raises(PolicyError, match="outside the policy directory"):
        load_policy(tmp_path / "e.rules")


# ---- line continuation, comments ---------------------------------------------------------------


def test_line_continuation_with_backslash() -> None:
    policy = load('drop proto tcp \\\n     to port 80 \\\n     alert "cont" sid 7\naccept\n')
    first, second = policy.rules
    assert (first.dport, first.message, first.sid) == (PortSpec(False, ((80, 80),)), "cont", 7)
    assert first.text == 'drop proto tcp to port 80 alert "cont" sid 7'
    assert (first.span.line, first.span.end_line) == (1, 3)
    assert second.span.line == 4


def test_line_continuation_with_crlf_line_ends() -> None:
    policy = load("drop proto tcp \\\r\n  to port 80\r\naccept from 10.0.0.1\r\n")
    assert [r.span.line for r in policy.rules] == [1, 3]
    assert policy.rules[0].dport == PortSpec(False, ((80, 80),))


def test_line_continuation_with_trailing_whitespace() -> None:
    r = rule("drop proto tcp \\  \n   to port 80")
    assert r.dport == PortSpec(False, ((80, 80),))


def test_comments_everywhere() -> None:
    policy = load(
        "# a policy\n"
        "   # indented comment\n"
        "define web = { http, # the web\n"
        "  https }            # and TLS\n"
        "\n"
        "set default drop     # comment after an option\n"
        "table t = { 10.0.0.1 } # after a table\n"
        "detect portscan alert # after a detector\n"
        'accept proto tcp to port $web alert "#notacomment" # after a rule\n'
        "#accept everything\n"
    )
    (r,) = policy.rules
    assert r.dport == PortSpec(False, ((80, 80), (443, 443)))
    assert r.message == "#notacomment"
    assert policy.default_verdict == "drop"
    assert policy.tables["t"].nets4 == (n4("10.0.0.1/32"),)
    assert set(policy.detectors) == {"portscan"}


def test_empty_and_comment_only_policies() -> None:
    for text in ("", "\n\n", "# nothing\n   \n\t\n"):
        policy = load(text)
        assert (policy.rules, policy.tables, policy.options, policy.detectors) == ([], {}, {}, {})


# ---- detectors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("portscan", {"ports": 15, "within": 60.0, "block": 600.0, "response": "block"}),
        ("sweep", {"hosts": 25, "within": 60.0, "block": 600.0, "response": "block"}),
        ("stealth", {"count": 3, "within": 60.0, "block": 3600.0, "response": "block"}),
        ("icmpflood", {"rate": 200.0, "per": "src", "response": "limit"}),
        ("synflood", {"rate": 500.0, "per": "dst", "response": "limit"}),
        ("udpflood", {"rate": 5000.0, "per": "src", "response": "limit"}),
    ],
)
def test_detectors_defaults(name: str, params: dict[str, object]) -> None:
    spec = load(f"table banned dynamic\ndetect {name}").detectors[name]
    assert spec.name == name
    assert spec.params == params
    assert spec.span.line == 2


@pytest.mark.parametrize(
    ("line", "params"),
    [
        (
            "detect portscan ports 20 within 5s block 10m",
            {"ports": 20, "within": 5, "block": 600, "response": "block"},
        ),
        (
            "detect sweep hosts 20 within 500ms alert",
            {"hosts": 20, "within": 0.5, "block": 600.0, "response": "alert"},
        ),
        (
            "detect stealth count 1 block 1d",
            {"count": 1, "within": 60.0, "block": 86400, "response": "block"},
        ),
        (
            "detect icmpflood rate 100/s per src block 5m",
            {"rate": 100.0, "per": "src", "block": 300, "response": "block"},
        ),
        (
            "detect synflood rate 30000/m per dst limit",
            {"rate": 500.0, "per": "dst", "response": "limit"},
        ),
        (
            "detect udpflood block",
            {"rate": 5000.0, "per": "src", "block": 600.0, "response": "block"},
        ),
        (
            "detect udpflood alert",
            {"rate": 5000.0, "per": "src", "response": "alert"},
        ),
    ],
)
def test_detector_options_and_responses(line: str, params: dict[str, object]) -> None:
    policy = load("table banned dynamic timeout 1h\n" + line)  # blocks need somewhere to go
    (spec,) = policy.detectors.values()
    assert spec.params == params


def test_detector_ignore_addresses() -> None:
    policy = load(
        "table trusted = { 192.0.2.0/24 }\ndefine mon = 2001:db8::7\n"
        "detect portscan ignore { @trusted, $mon, 10.0.0.1 } alert"
    )
    ignore = policy.detectors["portscan"].params["ignore"]
    assert ignore == AddrSpec(
        False, (n4("192.0.2.0/24"), n4("10.0.0.1/32")), (n6("2001:db8::7/128"),)
    )


# ---- the shipped policies ----------------------------------------------------------------------


def test_gateway_policy_resolves_as_written() -> None:
    policy = load_policy(ROOT / "policies" / "gateway.rules")
    assert policy.default_verdict == "drop"
    by_sid = {r.sid: r for r in policy.rules if r.sid is not None}
    telnet = by_sid[2000010]
    assert (telnet.action, telnet.dport, telnet.severity, telnet.message) == (
        "drop",
        PortSpec(False, ((23, 23),)),
        1,
        "telnet attempt",
    )
    smb = by_sid[2000011]  # written on two lines
    assert smb.action == "reject"
    assert smb.span.end_line == smb.span.line + 1
    assert smb.dport == PortSpec(False, ((135, 139), (445, 445)))
    assert smb.dst == AddrSpec(False, (n4("10.10.2.0/24"),))
    assert by_sid[2000002].flags == (0x29, 0x3F)
    assert by_sid[2000001].flags == (0, 0x3F)
    assert by_sid[2000020].contains == ((b"../..", False),)
    assert any(r.states == frozenset({"established"}) for r in policy.rules)
    assert policy.rules[0].src == AddrSpec(False, (), (), ("banned",))
    assert set(policy.detectors) == {
        "portscan",
        "sweep",
        "stealth",
        "icmpflood",
        "synflood",
        "udpflood",
    }


def test_a_detectors_numbers_are_read_as_numbers_and_nothing_else() -> None:
    """DetectSpec.number: the detectors and the nft translation read counts, rates and
    windows through it; a non-number under such a key is a resolver bug, said as such."""
    policy = load_policy_text("detect portscan ports 12 within 30s alert\n", "n.rules")
    spec = policy.detectors["portscan"]
    assert spec.number("ports") == 12.0 and spec.number("within") == 30.0
    spec.params["ports"] = "12"
    with pytest.raises(TypeError, match="portscan: ports is '12', not a number"):
        spec.number("ports")
