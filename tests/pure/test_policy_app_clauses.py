"""The application-layer clauses of the policy language (issue 20, item 5): parsing on both
paths, diagnostics with their place and hint, name patterns and domain tables, the compiled
check's three answers, explain with L7 context, and what the translators make of them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ips.cli import main
from ips.core.app_fields import AppFields
from ips.core.packet import PROTO_TCP, PROTO_UDP
from ips.policy.compile import PENDING, CompiledPolicy, app_conditions_check
from ips.policy.diagnostics import Diagnostics, PolicyError
from ips.policy.domains import NameSet, normalize, pattern_problem
from ips.policy.explain import AppContext, explain
from ips.policy.fastparse import parse_line
from ips.policy.packetspec import packet_from_text
from ips.policy.parser import parse_statement
from ips.policy.resolve import load_policy, load_policy_text
from ips.translate.nft import kernel_reason
from ips.translate.windivert import needs_everything

# ---- parsing: both paths give the same nodes --------------------------------------------------

APP_LINES = [
    'drop tls sni "blocked.lab"',
    'drop tls sni { "a.lab", "*.bad.lab" } to port 443',
    "reject dns query @bad_domains",
    'drop quic sni !"ok.lab" to port 443',
    'drop tls ja3 "e7d705a3286e19ea42f587b344ee6865"',
    'accept tls ja4 { "t13d1516h2_8daaf6152771_b186095e22b6" } alert',
    'drop http host "*.bad.lab" http method { GET, POST } to port http',
    'drop http uri contains "/admin" nocase log',
    'match http user-agent contains "curl" alert "curl seen"',
    "accept app { tls, quic } to port { http, https }",
    "drop app ssh proto tcp to port 2222",
    'reject with tcp-reset http host "x.lab"',
    'reject with icmp 3 tls sni "x.lab"',
    'drop http contains contains "x"',
]


@pytest.mark.parametrize("line", APP_LINES)
def test_fast_path_and_lark_agree_on_app_clauses(line: str) -> None:
    fast = parse_line(line, "f.rules", 4)
    diags = Diagnostics()
    slow = parse_statement(line, "f.rules", 4, diags)
    assert not diags.items
    assert fast is not None, line  # the fast path reads every one of them
    assert fast == slow


def test_port_http_stays_on_the_fast_path() -> None:
    """`http` is now a clause keyword; a port named http must still be a word there."""
    stmt = parse_line("accept proto tcp to port { http, https }", "f.rules", 1)
    assert stmt is not None


# ---- resolving: values and diagnostics --------------------------------------------------------


def rule_of(text: str):
    return load_policy_text(text).rules[0]


def errors_of(text: str, base: Path | None = None) -> list[tuple[int, int, str, str | None]]:
    with pytest.raises(PolicyError) as exc:
        load_policy_text(text, base_dir=base or ".")
    return [(d.span.line, d.span.col, d.message, d.hint) for d in exc.value.diagnostics]


def test_clauses_imply_their_transport() -> None:
    assert rule_of('drop tls sni "a.lab"').protos == {PROTO_TCP}
    assert rule_of('drop quic sni "a.lab"').protos == {PROTO_UDP}
    assert rule_of('drop dns query "a.lab"').protos == {PROTO_TCP, PROTO_UDP}
    assert rule_of('drop proto { tcp, udp } http host "a.lab"').protos == {PROTO_TCP}
    assert rule_of('drop tls sni "a.lab" to port 443').protos == {PROTO_TCP}


@pytest.mark.parametrize(
    ("line", "col", "message", "hint"),
    [
        ('drop tls sni "bad..lab"', 14, "'bad..lab' has an empty label", "single dots"),
        ('drop tls sna "x.lab"', 10, "unknown field 'tls sna'", "did you mean 'sni'?"),
        ('drop tls ja3 "abc"', 14, "'abc' is not a JA3 hash", "32 hex digits"),
        ('drop tls ja4 "t13d1516h2_8daaf615277_b"', 14, "is not a JA4 fingerprint", "a_b_c"),
        ('drop http uri "x"', 6, "'http uri' takes 'contains \"text\"'", "contains"),
        ('drop tls sni contains "x"', 6, "'tls sni' does not take 'contains'", "@table"),
        ('drop proto udp tls sni "a.b"', 16, "'tls' runs over tcp", "proto tcp"),
        ("drop app sssh", 10, "unknown application protocol 'sssh'", "'ssh'"),
        ('drop http host "a.*.b"', 16, "'*' may only be the whole first label", "*.example"),
        ('drop quic sni "\u00fc.lab"', 15, "is not an ASCII name", "xn--"),
        ('drop http method "G ET"', 18, "'G ET' is not an HTTP method", "'GET'"),
        ('drop tls sni "*"', 14, "'*' alone matches every name", "leave the clause out"),
        ('drop tls sni "a.lab" tls sni "b.lab"', 22, "'tls sni' given twice", None),
        ("drop tls sni @nowhere", 14, "unknown table '@nowhere'", "declare it"),
        ("drop tls sni 10.0.0.1", 14, "'10.0.0.1' is not a name", "quoted name"),
        ("set dns-reject nxdomian", 16, "is not a value of 'set dns-reject'", "'nxdomain'"),
    ],
)
def test_diagnostics_have_place_and_hint(line: str, col: int, message: str, hint: str) -> None:
    found = errors_of(line)
    assert len(found) == 1, found
    got_line, got_col, got_message, got_hint = found[0]
    assert (got_line, got_col) == (1, col)
    assert message in got_message
    if hint is not None:
        assert got_hint is not None and hint in got_hint


def test_long_names_and_labels_are_refused() -> None:
    assert pattern_problem("a" * 64 + ".lab") is not None
    assert pattern_problem(".".join(["abcdefghi"] * 26)) is not None  # 259 characters
    assert pattern_problem("a" * 63 + ".lab") is None
    assert pattern_problem("_dmarc.x-y.lab") is None


# ---- name patterns ----------------------------------------------------------------------------


def test_wildcards_match_every_depth_below_but_not_the_name_itself() -> None:
    names = NameSet(["blocked.lab", "*.bad.lab"])
    assert names.matches("blocked.lab")
    assert not names.matches("www.blocked.lab")
    assert names.matches("x.bad.lab")
    assert names.matches("a.b.c.bad.lab")
    assert not names.matches("bad.lab")
    assert not names.matches("notbad.lab")
    assert not names.matches("lab")


def test_names_are_compared_lower_case_without_the_trailing_dot() -> None:
    assert normalize("WWW.Bad.LAB.") == "www.bad.lab"
    policy = load_policy_text('drop tls sni "*.Bad.Lab."')
    check = app_conditions_check(policy.rules[0].app)
    assert check(flow_with(tls_sni="X.BAD.LAB.")) is True


def test_a_large_domain_table_loads_and_looks_up_by_labels(tmp_path: Path) -> None:
    lines = ["# a blocklist", ""]
    lines += [f"host{i}.example{i % 100}.test" for i in range(50_000)]
    lines += [f"*.zone{i}.test   # wildcard" for i in range(50_000)]
    (tmp_path / "names.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "p.rules").write_text(
        'table bad_domains file "names.txt"\ndrop tls sni @bad_domains to port 443\n'
    )
    policy = load_policy(tmp_path / "p.rules")
    table = policy.tables["bad_domains"].names
    assert table is not None and len(table) == 100_000
    assert table.matches("host49999.example99.test")
    assert table.matches("a.b.zone7.test")
    assert not table.matches("zone7.test")
    assert not table.matches("host1.example2.test")
    # A lookup costs a hash per label, whatever the size: no scan over 100,000 patterns.
    start = time.perf_counter()
    for _ in range(10_000):
        table.matches("deep.sub.domain.of.nothing.test")
    assert time.perf_counter() - start < 0.5


def test_domain_table_file_errors_have_file_line_col(tmp_path: Path) -> None:
    (tmp_path / "names.txt").write_text("ok.lab\n  bad..lab  # comment\n*.fine.lab\nx*y.lab\n")
    (tmp_path / "p.rules").write_text('table t file "names.txt"\ndrop dns query @t\n')
    with pytest.raises(PolicyError) as exc:
        load_policy(tmp_path / "p.rules")
    places = [(Path(d.span.file).name, d.span.line, d.span.col) for d in exc.value.diagnostics]
    assert places == [("names.txt", 2, 3), ("names.txt", 4, 1)]


def test_a_table_serves_names_or_addresses_not_both() -> None:
    found = errors_of('table t = { "a.lab" }\ndrop tls sni @t\ndrop from @t')
    assert [(line, message) for line, _, message, _ in found] == [
        (3, "'@t' holds names (a name clause uses it at <policy>:2:14), not addresses")
    ]
    found = errors_of("table banned dynamic\ndrop tls sni @banned")
    assert "is a dynamic table of addresses, not of names" in found[0][2]


def test_static_name_tables_and_check_shows_the_clauses(tmp_path: Path) -> None:
    path = tmp_path / "p.rules"
    path.write_text(
        'table bad = { "a.lab", "*.b.lab" }\ndrop tls sni @bad to port 443\n'
        "reject dns query @bad\nset dns-reject refused\n"
    )
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "@bad (static, 2 names)" in result.output
    assert "app layer  dns query 1, tls sni 1" in result.output
    assert load_policy(path).dns_reject_rcode == 5


# ---- the compiled check: True, False, PENDING ------------------------------------------------


class FakeFlow:
    """What the L7 check reads of a flow: its fields, its protocol, and whether the
    inspector still reads it (app_state not None)."""

    def __init__(
        self, app: AppFields | None, app_proto: str | None = None, reading: bool = False
    ) -> None:
        self.app = app
        self.app_proto = app_proto
        self.app_state = object() if reading else None


def flow_with(app_proto: str | None = "tls", done: bool = True, **fields: object) -> FakeFlow:
    app = AppFields()
    app.client_done = done
    for name, value in fields.items():
        setattr(app, name, value)
    return FakeFlow(app, app_proto)


def check_of(clauses: str):
    return app_conditions_check(load_policy_text(f"drop {clauses}").rules[0].app)


def test_pending_while_the_client_message_may_still_come() -> None:
    check = check_of('tls sni "blocked.lab"')
    assert check(flow_with(done=False)) is PENDING
    assert check(flow_with(tls_sni="blocked.lab")) is True
    assert check(flow_with(tls_sni="ok.lab")) is False
    assert check(flow_with(tls_sni=None)) is False  # final: no SNI will come
    assert check(FakeFlow(None)) is False  # no application parsing: final, never matches
    # no fields yet but the inspector reads the flow (a TCP handshake): pending
    assert check(FakeFlow(None, reading=True)) is PENDING


def test_app_is_pending_until_named_and_refused_early() -> None:
    check = check_of('app tls tls sni "x.lab"')
    assert check(flow_with(app_proto=None, done=False)) is PENDING
    assert check(flow_with(app_proto="http", done=False)) is False  # another protocol: final
    assert check(flow_with(app_proto="tls", done=False)) is PENDING
    assert check(flow_with(app_proto="tls", tls_sni="x.lab")) is True
    assert check_of("app !{ tls, quic }")(flow_with(app_proto="ssh", done=False)) is True


def test_each_field_kind() -> None:
    assert check_of('dns query "*.bad.lab"')(flow_with(dns_queries=("ok.lab", "x.bad.lab")))
    assert not check_of('dns query "*.bad.lab"')(flow_with(dns_queries=("ok.lab",)))
    assert check_of('http host !{ "ok.lab" }')(flow_with(http_host="other.lab"))
    assert check_of('http host !{ "ok.lab" }')(flow_with(http_host=None))
    assert check_of("http method { get, POST }")(flow_with(http_method="GET"))
    assert not check_of("http method GET")(flow_with(http_method="PUT"))
    assert check_of('http uri contains "/Admin" nocase')(flow_with(http_uri="/x/ADMIN/y"))
    assert not check_of('http uri contains "/Admin"')(flow_with(http_uri="/x/admin"))
    assert check_of('http user-agent contains "curl"')(flow_with(http_user_agent="curl/8.0"))
    ja3 = "e7d705a3286e19ea42f587b344ee6865"
    assert check_of(f'tls ja3 "{ja3.upper()}"')(flow_with(tls_ja3=ja3))
    ja4 = "t13d1516h2_8daaf6152771_b186095e22b6"
    assert check_of(f'tls ja4 "{ja4}"')(flow_with(tls_ja4=ja4))
    assert check_of('quic sni "q.lab"')(flow_with(app_proto="quic", quic_sni="q.lab"))


def test_offload_waits_for_app_rules_and_never_for_dns_query() -> None:
    policy = CompiledPolicy(
        load_policy_text('drop tls sni "x.lab" to port 443\ndrop dns query "x.lab" to port 53')
    )
    tls_rules = (policy.rules[0],)
    dns_rules = (policy.rules[1],)
    assert policy.offload_state(tls_rules) == 2  # OFFLOAD_WHEN_APP_DONE
    # Never while the flow may be DNS (each DNS message is judged); a flow named another
    # protocol can never match the rule, so it leaves the flow's candidates (OFFLOAD_LATER,
    # with a plan that only a protocol other than DNS meets: tests/pure/test_offload_depth.py).
    assert policy.offload_state(dns_rules) == 3
    assert policy.plan_of(dns_rules) == ((frozenset({"dns"}), False, None, False),)


# ---- explain ------------------------------------------------------------------------------------

GATE = """\
set default drop
drop tls sni { "blocked.lab", "*.bad.lab" } to port 443
accept proto tcp to port 443
reject dns query "*.bad.lab"
accept proto udp to port 53
"""


def explained(packet: str, app: AppContext):
    return explain(load_policy_text(GATE), packet_from_text(packet), app=app)


def test_explain_names_the_pending_clause_without_context() -> None:
    steps, decider = explained(
        "tcp 10.0.0.1:1000 > 10.0.0.2:443 flags S", AppContext(AppFields(), None)
    )
    assert decider is not None and decider.span.line == 2
    assert steps[0].pending and steps[0].reason == "pending: tls sni needs the ClientHello"


def test_explain_names_the_deciding_clause() -> None:
    sni = AppFields()
    sni.client_done = True
    sni.tls_sni = "www.bad.lab"
    steps, decider = explained("tcp 10.0.0.1:1000 > 10.0.0.2:443 flags PA", AppContext(sni, "tls"))
    assert decider is not None and decider.span.line == 2
    assert "tls sni" in steps[0].reason and steps[0].matched
    sni.tls_sni = "ok.lab"
    steps, decider = explained("tcp 10.0.0.1:1000 > 10.0.0.2:443 flags PA", AppContext(sni, "tls"))
    assert decider is not None and decider.span.line == 3
    assert steps[0].reason == 'tls sni is "ok.lab", not { "blocked.lab", "*.bad.lab" }'


def test_explain_pending_drop_agreeing_with_the_rest_decides_now() -> None:
    """To port 8443 the rules after the pending one drop anyway (the default): no wait."""
    text = 'set default drop\ndrop tls sni "x.lab"\naccept proto tcp to port 443'
    _steps, decider = explain(
        load_policy_text(text),
        packet_from_text("tcp 10.0.0.1:1000 > 10.0.0.2:8443 flags S"),
        app=AppContext(AppFields(), None),
    )
    assert decider is None  # the default decides, drop, as the pending rule would


def test_explain_cli_with_l7_options(tmp_path: Path) -> None:
    path = tmp_path / "gate.rules"
    path.write_text(GATE)
    run = CliRunner().invoke
    pkt = ["-p", "tcp 10.0.0.1:1000 > 10.0.0.2:443 flags PA"]
    out = run(main, ["explain", str(path), *pkt]).output
    assert "pending: tls sni needs the ClientHello" in out
    assert "=> accept (app-pending)" in out
    out = run(main, ["explain", str(path), *pkt, "--sni", "Blocked.Lab"]).output
    assert "matches: tls sni" in out and out.strip().endswith(f"drop by {path}:2")
    dns = ["-p", "udp 10.0.0.1:1000 > 10.0.0.2:53"]
    out = run(main, ["explain", str(path), *dns, "--dns", "a.bad.lab"]).output
    assert out.strip().endswith(f"reject by {path}:4")
    out = run(main, ["explain", str(path), *dns, "--dns", "good.lab"]).output
    assert out.strip().endswith(f"accept by {path}:5")


# ---- translators: L7 rules stay with the engine ------------------------------------------------


def test_translators_leave_app_rules_to_the_engine() -> None:
    policy = load_policy_text('drop tls sni "x.lab" to port 443')
    assert kernel_reason(policy.rules[0]) == "application-layer clauses need userspace"
    assert needs_everything(policy) is not None


def test_the_gateway_example_checks_once_uncommented(tmp_path: Path) -> None:
    """policies/gateway.rules shows the name rules commented out: uncommented, they hold."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "policies" / "gateway.rules").read_text()
    example = ("# table bad_domains ", "# drop    proto tcp", "# reject  dns query")
    lines = [line[2:] if line.startswith(example) else line for line in text.splitlines()]
    assert sum("bad_domains" in line and not line.startswith("#") for line in lines) == 3
    (tmp_path / "gateway.rules").write_text("\n".join(lines) + "\n")
    (tmp_path / "bad_domains.txt").write_text("blocked.lab\n*.bad.lab\n")
    policy = load_policy(tmp_path / "gateway.rules")
    clauses = [c.clause for rule in policy.rules for c in rule.app]
    assert clauses == ["tls sni", "dns query"]
