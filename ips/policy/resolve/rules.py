"""Rules: one rule statement -> RuleSpec, with one handler per clause kind.

As a Lark Transformer has one method per grammar rule, RuleResolver has one handler per
clause (`proto`, `from`/`to`, `flags`, `set`, …), chosen by the clause's type in CLAUSES.
The handlers fill in a RuleDraft; the checks that need the whole rule — the protocol its
ports or flags imply, the address families it can match, what its action needs — run when
every clause has been read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ips.core.packet import PORT_PROTOS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from ips.policy import ast, names
from ips.policy.diagnostics import Span, did_you_mean
from ips.policy.domains import HTTP_METHOD_SHAPE, JA3_SHAPE, JA4_SHAPE
from ips.policy.model import (
    APP_FIELDS,
    APP_PROTOS,
    DETECTOR_SID_FIRST,
    DETECTOR_SID_LAST,
    AppCondition,
    IfaceSpec,
    LimitSpec,
    RewriteSpec,
    RuleSpec,
)
from ips.policy.resolve.values import Values

# The four sets of families a rule can have, each one object for every rule that has it.
FAMILY_SETS = {f: f for f in map(frozenset, ({4, 6}, {4}, {6}, set()))}

# The transport protocols an application protocol runs over: an L7 clause implies them, as
# a port implies TCP, UDP or SCTP (and `tls sni` never has to look at a UDP packet).
_TCP, _UDP, _TCP_UDP = frozenset({PROTO_TCP}), frozenset({PROTO_UDP}), PORT_PROTOS & {6, 17}
APP_TRANSPORTS: dict[str, frozenset[int]] = {
    "tls": _TCP,
    "http": _TCP,
    "ssh": _TCP,
    "quic": _UDP,
    "dns": _TCP_UDP,
    "unknown": _TCP_UDP,
}


@dataclass(slots=True)
class RuleDraft:
    """A rule while its clauses are read: the RuleSpec so far, and what the checks after
    the last clause need (where ports, flags or a protocol were given; the rewrite)."""

    rule: RuleSpec
    seen: dict[str, Span] = field(default_factory=dict)  # clause kind -> where first given
    families: set[int] = field(default_factory=lambda: {4, 6})
    proto_given: Span | None = None
    port_span: Span | None = None
    needs_tcp: Span | None = None
    app_transports: list[tuple[frozenset[int], Span, str]] = field(default_factory=list)
    icmp_clause: ast.IcmpTypeClause | None = None
    rewrite: dict[str, object] = field(default_factory=dict)
    replace: list[tuple[bytes, bytes]] = field(default_factory=list)


class RuleResolver:
    def __init__(self, values: Values) -> None:
        self.values = values
        self.diags = values.diags

    def resolve(self, stmt: ast.RuleStmt, index: int) -> RuleSpec | None:
        """The rule of `stmt` (the index-th of the policy); None when it has errors."""
        action = names.ACTION_ALIASES.get(stmt.action, stmt.action)
        draft = RuleDraft(RuleSpec(index, action, stmt.span, stmt.text))
        before = self.diags.error_count
        for clause in stmt.clauses:
            handler = CLAUSES.get(type(clause))
            if handler is not None:
                handler(self, clause, draft)
        self._implied_protocols(draft)
        self._families(stmt, draft)
        self._action_checks(stmt, draft)
        if self.diags.error_count > before:
            return None
        return draft.rule

    def _once(self, draft: RuleDraft, kind: str, clause: ast.Clause) -> bool:
        """True the first time a clause kind is given in a rule; a second one is an error."""
        if kind in draft.seen:
            self.diags.error(
                clause.span,
                f"'{kind}' given twice in one rule (first at {draft.seen[kind]})",
                code="duplicate",
            )
            return False
        draft.seen[kind] = clause.span
        return True

    # ---- one handler per clause ------------------------------------------------------------------

    def family(self, clause: ast.FamilyClause, draft: RuleDraft) -> None:
        if self._once(draft, "inet", clause):
            draft.families &= {clause.family}

    def proto(self, clause: ast.ProtoClause, draft: RuleDraft) -> None:
        if self._once(draft, "proto", clause):
            draft.proto_given = clause.span
            draft.rule.protos = self.values.protos(clause.value)

    def endpoint(self, clause: ast.EndpointClause, draft: RuleDraft) -> None:
        if not self._once(draft, "from" if clause.is_src else "to", clause):
            return
        addr, port = clause.addr, clause.port
        if clause.geo is not None:
            spec = self.values.geo.addr(clause)
        else:
            spec = self.values.addr(addr) if addr is not None else None
        ports = self.values.ports(port) if port is not None else None
        if port is not None:
            draft.port_span = port.span
        if clause.is_src:
            draft.rule.src, draft.rule.sport = spec, ports
        else:
            draft.rule.dst, draft.rule.dport = spec, ports

    def interface(self, clause: ast.InterfaceClause, draft: RuleDraft) -> None:
        direction = clause.direction
        if not self._once(draft, direction or "on", clause):
            return
        if clause.iface is None:
            draft.rule.direction = direction
            return
        words, negated = self.values.words(clause.iface, "an interface name")
        spec = IfaceSpec(negated, tuple(w.text for w in words))
        if direction == "in":
            draft.rule.iif = spec
        elif direction == "out":
            draft.rule.oif = spec
        else:
            draft.rule.anyif = spec

    def flags(self, clause: ast.FlagsClause, draft: RuleDraft) -> None:
        if self._once(draft, "flags", clause):
            draft.rule.flags = self._tcp_flags(clause.spec, clause.span)
            draft.needs_tcp = clause.span

    def icmp_type(self, clause: ast.IcmpTypeClause, draft: RuleDraft) -> None:
        # read after the last clause: which numbering applies depends on `proto`
        if self._once(draft, "type", clause):
            draft.icmp_clause = clause

    def length(self, clause: ast.LengthClause, draft: RuleDraft) -> None:
        if self._once(draft, "length", clause):
            if clause.hi > 65535 or clause.lo > clause.hi:
                self.diags.error(clause.span, "length must be within 0-65535, low-high")
            draft.rule.length = (clause.op, clause.lo, clause.hi)

    def state(self, clause: ast.StateClause, draft: RuleDraft) -> None:
        if not self._once(draft, "state", clause):
            return
        words, negated = self.values.words(clause.value, "a connection state")
        states = set()
        for w in words:
            if w.text not in ("new", "established"):
                self.diags.error(
                    w.span,
                    f"unknown state '{w.text}'",
                    did_you_mean(w.text, ("new", "established"))
                    or "states are new and established",
                    code="unknown-name",
                )
            states.add(w.text)
        if negated:
            states = {"new", "established"} - states
        draft.rule.states = frozenset(states)

    def fragment(self, clause: ast.FragmentClause, draft: RuleDraft) -> None:
        if self._once(draft, "fragment", clause):
            draft.rule.fragment = True

    def contains(self, clause: ast.ContainsClause, draft: RuleDraft) -> None:
        pattern, nocase = clause.pattern, clause.nocase
        if not pattern:
            self.diags.error(clause.span, "payload contains needs a non-empty pattern")
        draft.rule.contains += ((pattern.lower() if nocase else pattern, nocase),)

    def depth(self, clause: ast.DepthClause, draft: RuleDraft) -> None:
        """`depth 8k`: how far into each direction `payload contains` reads, for this rule."""
        if self._once(draft, "depth", clause):
            draft.rule.depth = self.values.size(clause.value, "'depth'", "depth 8k")

    def app(self, clause: ast.AppClause, draft: RuleDraft) -> None:
        """`app tls`, `app { tls, quic }`: the application protocol detection names."""
        if not self._once(draft, "app", clause):
            return
        words, negated = self.values.words(clause.value, "an application protocol")
        found: set[str] = set()
        for w in words:
            if w.text not in APP_PROTOS:
                self.diags.error(
                    w.span,
                    f"unknown application protocol '{w.text}'",
                    did_you_mean(w.text, APP_PROTOS) or f"known: {', '.join(APP_PROTOS)}",
                    code="unknown-name",
                )
                continue
            found.add(w.text)
        if not words:
            self.values.warn_empty(clause.value)
        transports = frozenset().union(*(APP_TRANSPORTS[p] for p in found)) if found else None
        if transports and not negated:
            draft.app_transports.append((transports, clause.span, "app"))
        shown = ", ".join(sorted(found))
        draft.rule.app += (
            AppCondition(
                "app",
                "app_proto",
                "proto",
                negated,
                values=frozenset(found),
                shown=("!" if negated else "") + (shown if len(found) == 1 else f"{{ {shown} }}"),
            ),
        )

    def app_field(self, clause: ast.AppFieldClause, draft: RuleDraft) -> None:
        """`tls sni P`, `tls ja3 "…"`, `dns query P`, `http method M`, `http uri contains "s"`."""
        proto, fld = clause.proto, clause.field
        known = [f for p, f in APP_FIELDS if p == proto]
        entry = APP_FIELDS.get((proto, fld.text))
        if entry is None:
            self.diags.error(
                fld.span,
                f"unknown field '{proto} {fld.text}'",
                did_you_mean(fld.text, known)
                or f"{proto} has: " + ", ".join(f"{proto} {f}" for f in known),
                code="unknown-name",
            )
            return
        name = f"{proto} {fld.text}"
        if not self._once(draft, name, clause):
            return
        attr, kind = entry
        if kind == "contains" and clause.contains is None:
            self.diags.error(
                clause.span,
                f"'{name}' takes 'contains \"text\"'",
                f'e.g. {name} contains "/admin"',
                code="syntax",
            )
            return
        if kind != "contains" and clause.contains is not None:
            self.diags.error(
                clause.span,
                f"'{name}' does not take 'contains'",
                f"{name} takes {'a name, a { set } or a @table' if kind == 'names' else 'a value'}",
                code="syntax",
            )
            return
        draft.app_transports.append((APP_TRANSPORTS[proto], clause.span, proto))
        condition = self._app_condition(clause, name, attr, kind)
        if condition is not None:
            draft.rule.app += (condition,)

    def _app_condition(
        self, clause: ast.AppFieldClause, name: str, attr: str, kind: str
    ) -> AppCondition | None:
        if kind == "contains":
            text = clause.contains or ""
            if not text:
                self.diags.error(clause.span, f"{name} contains needs a non-empty text")
                return None
            nocase = clause.nocase
            shown = f'"{text}"' + (" nocase" if nocase else "")
            folded = text.lower() if nocase else text
            return AppCondition(name, attr, kind, text=folded, nocase=nocase, shown=shown)
        value = clause.value
        assert value is not None
        if kind == "names":
            found = self.values.names(value, name)
            if found is None:
                return None
            names_set, negated = found
            shown = ("!" if negated else "") + names_set.describe()
            return AppCondition(name, attr, kind, negated, names=names_set, shown=shown)
        words, negated = self.values.words(value, f"a value of {name}")
        values: set[str] = set()
        for w in words:
            checked = self._app_value(name, w)
            if checked is not None:
                values.add(checked)
        if not words:
            self.values.warn_empty(value)
        body = ", ".join(f'"{v}"' if name != "http method" else v for v in sorted(values))
        shown = ("!" if negated else "") + (body if len(values) == 1 else f"{{ {body} }}")
        return AppCondition(name, attr, kind, negated, values=frozenset(values), shown=shown)

    def _app_value(self, name: str, item: ast.Item) -> str | None:
        """One JA3 hash, JA4 fingerprint or HTTP method, checked and in the form compared."""
        text = item.text
        if name == "http method":
            method = text.upper()
            if HTTP_METHOD_SHAPE.fullmatch(method) is None:
                self.diags.error(
                    item.span,
                    f"'{text}' is not an HTTP method",
                    did_you_mean(method, ("GET", "POST", "PUT", "DELETE", "HEAD", "CONNECT"))
                    or "e.g. GET, POST, CONNECT",
                    code="bad-value",
                )
                return None
            return method
        folded = text.lower()
        if name == "tls ja3":
            if JA3_SHAPE.fullmatch(folded) is None:
                self.diags.error(
                    item.span,
                    f"'{text}' is not a JA3 hash",
                    "a JA3 is the MD5 of the JA3 string: 32 hex digits, "
                    'e.g. "e7d705a3286e19ea42f587b344ee6865"',
                    code="bad-value",
                )
                return None
            return folded
        if JA4_SHAPE.fullmatch(folded) is None:
            self.diags.error(
                item.span,
                f"'{text}' is not a JA4 fingerprint",
                "a JA4 is a_b_c: 10 characters (t13d1516h2), then two 12-digit hex hashes, "
                'e.g. "t13d1516h2_8daaf6152771_b186095e22b6"',
                code="bad-value",
            )
            return None
        return folded

    def limit(self, clause: ast.LimitClause, draft: RuleDraft) -> None:
        if self._once(draft, "limit", clause):
            draft.rule.limit = self._limit_spec(clause)

    def set_field(self, clause: ast.SetClause, draft: RuleDraft) -> None:
        """`set ttl 64`, `set dscp ef`, `set dport 8080`, `set daddr 10.0.5.5` (rewrite)."""
        fld, value, rewrite = clause.field, clause.value, draft.rewrite
        known = ("ttl", "hoplimit", "dscp", "dport", "daddr")
        if draft.rule.action != "rewrite":
            self.diags.error(fld.span, "'set' belongs to a rewrite rule", code="conflict")
            return
        name = "ttl" if fld.text == "hoplimit" else fld.text
        if fld.text not in known:
            self.diags.error(
                fld.span,
                f"cannot set '{fld.text}'",
                did_you_mean(fld.text, known) or f"a rewrite sets {', '.join(known)}",
                code="unknown-name",
            )
            return
        if name in rewrite:
            self.diags.error(fld.span, f"'{fld.text}' is set twice")
            return
        items, negated = self.values.flatten(value)
        if negated or len(items) != 1:
            self.diags.error(value.span, f"'set {fld.text}' takes one value")
            return
        item = items[0]
        if name == "ttl":
            if item.kind != "int" or not 1 <= item.lo <= 255:
                self.diags.error(item.span, "a TTL / hop limit is a number 1-255")
                return
            rewrite[name] = item.lo
        elif name == "dscp":
            if item.kind == "int" and item.lo <= 63:
                rewrite[name] = item.lo
            elif item.kind == "word" and item.text in names.DSCP:
                rewrite[name] = names.DSCP[item.text]
            else:
                self.diags.error(
                    item.span,
                    f"'{item.text}' is not a DSCP value",
                    did_you_mean(item.text, names.DSCP)
                    or "a number 0-63 or a class (ef, af41, cs1)",
                )
        elif name == "dport":
            if item.kind == "int" and 1 <= item.lo <= 65535:
                rewrite[name] = item.lo
            elif item.kind == "word" and item.text in names.SERVICES:
                rewrite[name] = names.SERVICES[item.text]
            else:
                self.diags.error(item.span, "'set dport' takes one port (1-65535)")
        elif name == "daddr":
            if item.kind != "addr" or "/" in item.text:
                self.diags.error(item.span, "'set daddr' takes one address (no prefix)")
                return
            try:
                rewrite[name] = ipaddress.ip_address(item.text).packed
            except ValueError:
                self.diags.error(item.span, f"invalid address '{item.text}'")

    def replace(self, clause: ast.ReplaceClause, draft: RuleDraft) -> None:
        old, new = clause.old, clause.new
        if draft.rule.action != "rewrite":
            self.diags.error(clause.span, "'replace' belongs to a rewrite rule")
        elif len(old) != len(new) or not old:
            self.diags.error(
                clause.span,
                f"replace needs two non-empty patterns of the same length "
                f"({len(old)} and {len(new)} bytes)",
                "pad the shorter one; a payload replace never changes lengths, so "
                "TCP sequence numbers stay valid",
            )
        else:
            draft.replace.append((old, new))

    def reject_with(self, clause: ast.RejectWithClause, draft: RuleDraft) -> None:
        if self._once(draft, "with", clause):
            if draft.rule.action != "reject":
                self.diags.error(clause.span, "'with' belongs to a reject rule")
            draft.rule.reject_with = self._reject_kind(clause.kind, clause.code)

    def alert(self, clause: ast.AlertClause, draft: RuleDraft) -> None:
        if self._once(draft, "alert", clause):
            draft.rule.alert = True
            draft.rule.message = clause.message

    def log(self, clause: ast.LogClause, draft: RuleDraft) -> None:
        if self._once(draft, "log", clause):
            draft.rule.log = True

    def inspect(self, clause: ast.InspectClause, draft: RuleDraft) -> None:
        if self._once(draft, "inspect", clause):
            draft.rule.inspect = True

    def sid(self, clause: ast.SidClause, draft: RuleDraft) -> None:
        if not self._once(draft, "sid", clause):
            return
        sid = clause.sid
        if not 1 <= sid <= 0xFFFFFFFF:
            self.diags.error(
                clause.span,
                "a sid is a number from 1 to 4294967295",
                code="bad-value",
            )
        elif DETECTOR_SID_FIRST <= sid <= DETECTOR_SID_LAST:
            self.diags.error(
                clause.span,
                f"sid {sid} is reserved for the detectors' alerts "
                f"({DETECTOR_SID_FIRST}-{DETECTOR_SID_LAST})",
                "choose another number",
                code="bad-value",
            )
        draft.rule.sid = sid

    def severity(self, clause: ast.SeverityClause, draft: RuleDraft) -> None:
        if self._once(draft, "severity", clause):
            draft.rule.severity = self._severity_value(clause.value)

    def label(self, clause: ast.LabelClause, draft: RuleDraft) -> None:
        if self._once(draft, "label", clause):
            draft.rule.label = clause.label

    # ---- after the last clause -------------------------------------------------------------------

    def _implied_protocols(self, draft: RuleDraft) -> None:
        """The protocol implied by the clauses, and checked against the one given."""
        rule = draft.rule
        if draft.icmp_clause is not None:
            self._icmp(draft.icmp_clause, rule, draft.proto_given)
        implied: list[tuple[frozenset[int], Span, str]] = []
        if draft.port_span is not None:
            implied.append((PORT_PROTOS, draft.port_span, "ports need proto tcp, udp or sctp"))
        if draft.needs_tcp is not None:
            implied.append((frozenset({PROTO_TCP}), draft.needs_tcp, "flags need proto tcp"))
        for protos, span, message in implied:
            if rule.protos is None:
                rule.protos = protos
            elif not rule.protos <= protos:
                self.diags.error(span, message, code="conflict")
        for protos, span, word in draft.app_transports:
            # An application protocol runs over TCP or UDP: its clause implies them, and a
            # `proto` that allows others is narrowed (the clause never holds on them).
            if rule.protos is None:
                rule.protos = protos
            elif rule.protos & protos:
                rule.protos = frozenset(rule.protos & protos)
            else:
                over = " or ".join(names_of(p) for p in sorted(protos))
                self.diags.error(
                    span,
                    f"'{word}' runs over {over}: this rule's protocol excludes it",
                    f"write proto {names_of(min(protos))}",
                    code="conflict",
                )

    def _families(self, stmt: ast.RuleStmt, draft: RuleDraft) -> None:
        """The address families the rule can match: what `inet`, the protocols, addresses,
        a rewritten destination and the reject answer leave; none is an error."""
        rule, families = draft.rule, draft.families
        if rule.protos is not None:
            if rule.protos == {PROTO_ICMP}:
                families &= {4}
            elif rule.protos == {PROTO_ICMPV6}:
                families &= {6}
        for spec in (rule.src, rule.dst):
            # spec.families, without making a set for each rule
            if spec is not None and not spec.dynamic and (spec.nets4 or spec.nets6):
                if not spec.nets4:
                    families.discard(4)
                if not spec.nets6:
                    families.discard(6)
        daddr = draft.rewrite.get("daddr")
        if isinstance(daddr, bytes):
            families &= {4 if len(daddr) == 4 else 6}
        if rule.reject_with is not None:
            # as in nftables: `with icmp` answers IPv4 only, `with icmpv6` IPv6 only
            # (`with icmpx` answers both, in each family's own numbering)
            families &= {"icmp": {4}, "icmpv6": {6}}.get(rule.reject_with[0], {4, 6})
        if not families:
            self.diags.error(
                stmt.span,
                "this rule can never match: its addresses and protocols are of different "
                "families (IPv4 and IPv6)",
                code="conflict",
            )
        rule.families = FAMILY_SETS[frozenset(families)]

    def _action_checks(self, stmt: ast.RuleStmt, draft: RuleDraft) -> None:
        rule, action, rewrite = draft.rule, draft.rule.action, draft.rewrite
        if action == "rewrite":
            if not any(isinstance(c, (ast.SetClause, ast.ReplaceClause)) for c in stmt.clauses):
                self.diags.error(
                    stmt.action_span,
                    "a rewrite rule needs 'set FIELD VALUE' or 'replace \"a\" with \"b\"'",
                    "e.g. rewrite proto udp to port 53 set ttl 64",
                )
            daddr = rewrite.get("daddr")
            rule.rewrite = RewriteSpec(
                ttl=rewrite.get("ttl"),  # type: ignore[arg-type]
                dscp=rewrite.get("dscp"),  # type: ignore[arg-type]
                dport=rewrite.get("dport"),  # type: ignore[arg-type]
                daddr=daddr if isinstance(daddr, bytes) else None,
                replace=tuple(draft.replace),
            )
        wants_reset = rule.reject_with is not None and rule.reject_with[0] == "tcp-reset"
        if action == "reject" and wants_reset and rule.protos != {PROTO_TCP}:
            if rule.protos is None:
                rule.protos = frozenset({PROTO_TCP})
            else:
                self.diags.error(stmt.span, "reject with tcp-reset needs proto tcp")
        depth_at = draft.seen.get("depth")
        if depth_at is not None and not rule.contains:
            self.diags.error(
                depth_at,
                "'depth' bounds a rule's 'payload contains', and this rule has none",
                'e.g. drop proto tcp to port 80 payload contains "/etc/passwd" depth 8k',
                code="bad-value",
            )
        if action == "match" and not (rule.alert or rule.log):
            self.diags.warning(
                stmt.action_span,
                "a match rule without alert or log has no effect",
                'add alert "message" or log',
            )
        if rule.alert and rule.message is None:
            rule.message = stmt.text

    # ---- the values of clauses -------------------------------------------------------------------

    def _tcp_flags(self, spec: str, span: Span) -> tuple[int, int] | None:
        if spec == "any":
            return None
        want, _, mask_text = spec.partition("/")
        has_mask = "/" in spec
        value = mask = 0
        bad = [ch for ch in want + mask_text if ch not in names.TCP_FLAG_LETTERS]
        if bad:
            self.diags.error(
                span,
                f"unknown TCP flag '{bad[0]}' in '{spec}'",
                "flags are F(IN) S(YN) R(ST) P(USH) A(CK) U(RG) E(CE) W(CWR), e.g. flags S/SA",
                code="bad-value",
            )
            return None
        for ch in want:
            value |= names.TCP_FLAG_LETTERS[ch]
        if has_mask:
            for ch in mask_text:
                mask |= names.TCP_FLAG_LETTERS[ch]
        else:
            mask = 0xFF  # `flags S`: exactly SYN and nothing else, as in Snort's `flags:S`
        if value & ~mask:
            self.diags.error(
                span,
                f"'{spec}': the flags before '/' must be part of the mask after it",
                f"e.g. {want}/{want}{mask_text}",
                code="bad-value",
            )
            return None
        return (value, mask)

    def _icmp(self, clause: ast.IcmpTypeClause, rule: RuleSpec, proto_given: Span | None) -> None:
        protos = rule.protos
        if protos == {PROTO_ICMP}:
            types, codes = names.ICMP_TYPES, names.ICMP_CODES
        elif protos == {PROTO_ICMPV6}:
            types, codes = names.ICMPV6_TYPES, names.ICMPV6_CODES
        else:
            self.diags.error(
                clause.span,
                "'type' needs 'proto icmp' or 'proto icmpv6' in the same rule",
                "ICMP and ICMPv6 number their types differently",
                code="conflict",
            )
            return
        items, negated = self.values.flatten(clause.type_value)
        named = [self._named_number(item, types, "ICMP type") for item in items]
        found = {number for number in named if number is not None}
        if negated:
            found = set(range(256)) - found
        rule.icmp_types = frozenset(found)
        if clause.code_value is not None:
            if len(items) != 1 or negated:
                self.diags.error(clause.code_value.span, "'code' needs exactly one ICMP type")
                return
            citems, cneg = self.values.flatten(clause.code_value)
            if cneg or len(citems) != 1:
                self.diags.error(clause.code_value.span, "'code' takes one ICMP code")
                return
            rule.icmp_code = self._named_number(citems[0], codes, "ICMP code")

    def _named_number(self, item: ast.Item, table: dict[str, int], what: str) -> int | None:
        if item.kind == "int":
            if item.lo > 255:
                self.diags.error(item.span, f"{what} {item.lo} is out of range 0-255")
            return item.lo
        if item.kind == "word" and item.text in table:
            return table[item.text]
        self.diags.error(
            item.span,
            f"unknown {what} '{item.text}'",
            did_you_mean(item.text, table) or f"known: {', '.join(sorted(table))}",
            code="unknown-name",
        )
        return None

    def _limit_spec(self, clause: ast.LimitClause) -> LimitSpec | None:
        rate = self.values.rate(clause.rate_text, clause.span)
        per = "rule"
        if clause.per is not None:
            if clause.per.text not in ("src", "dst", "flow"):
                self.diags.error(
                    clause.per.span,
                    f"'per {clause.per.text}': a limit counts per src, dst or flow",
                    did_you_mean(clause.per.text, ("src", "dst", "flow")),
                )
            per = clause.per.text
        else_action = None
        if clause.else_action is not None:
            else_action = names.ACTION_ALIASES.get(clause.else_action.text, clause.else_action.text)
            if else_action not in ("accept", "drop", "reject"):
                self.diags.error(
                    clause.else_action.span, "'else' takes accept, drop or reject", code="bad-value"
                )
        if rate is None:
            return None
        burst = clause.burst if clause.burst is not None else max(1, int(rate))
        if burst < 1:
            self.diags.error(clause.span, "burst must be at least 1")
        return LimitSpec(rate, burst, per, else_action, clause.rate_text)

    def _reject_kind(self, kind: ast.Item, code: ast.Value | None) -> tuple[str, int | None] | None:
        kinds = ("tcp-reset", "icmp", "icmpv6", "icmpx")
        if kind.text not in kinds:
            self.diags.error(
                kind.span,
                f"unknown reject kind '{kind.text}'",
                did_you_mean(kind.text, kinds)
                or "reject with tcp-reset | icmp CODE | icmpv6 CODE | icmpx CODE",
                code="unknown-name",
            )
            return None
        if kind.text == "tcp-reset":
            if code is not None:
                self.diags.error(code.span, "tcp-reset takes no code")
            return ("tcp-reset", None)
        table = {
            "icmp": names.ICMP_CODES,
            "icmpv6": names.ICMPV6_CODES,
            "icmpx": names.ICMPX_CODES,
        }[kind.text]
        if code is None:
            return (kind.text, None)
        items, _ = self.values.flatten(code)
        if len(items) != 1:
            self.diags.error(code.span, "reject takes one ICMP code")
            return None
        return (kind.text, self._named_number(items[0], table, f"{kind.text} code"))

    def _severity_value(self, item: ast.Item) -> int:
        if item.kind == "int":
            if not 1 <= item.lo <= 255:
                self.diags.error(item.span, "severity is 1 (most severe) to 255")
            return item.lo
        if item.text in names.SEVERITIES:
            return names.SEVERITIES[item.text]
        self.diags.error(
            item.span,
            f"unknown severity '{item.text}'",
            did_you_mean(item.text, names.SEVERITIES)
            or "critical, high, medium, low, info or 1-255",
            code="unknown-name",
        )
        return 2


def names_of(proto: int) -> str:
    return {PROTO_TCP: "tcp", PROTO_UDP: "udp"}.get(proto, str(proto))


CLAUSES: dict[type[ast.Clause], Callable[[RuleResolver, Any, RuleDraft], None]] = {
    ast.FamilyClause: RuleResolver.family,
    ast.ProtoClause: RuleResolver.proto,
    ast.EndpointClause: RuleResolver.endpoint,
    ast.InterfaceClause: RuleResolver.interface,
    ast.FlagsClause: RuleResolver.flags,
    ast.IcmpTypeClause: RuleResolver.icmp_type,
    ast.LengthClause: RuleResolver.length,
    ast.StateClause: RuleResolver.state,
    ast.FragmentClause: RuleResolver.fragment,
    ast.ContainsClause: RuleResolver.contains,
    ast.DepthClause: RuleResolver.depth,
    ast.LimitClause: RuleResolver.limit,
    ast.AppClause: RuleResolver.app,
    ast.AppFieldClause: RuleResolver.app_field,
    ast.SetClause: RuleResolver.set_field,
    ast.ReplaceClause: RuleResolver.replace,
    ast.RejectWithClause: RuleResolver.reject_with,
    ast.AlertClause: RuleResolver.alert,
    ast.LogClause: RuleResolver.log,
    ast.InspectClause: RuleResolver.inspect,
    ast.SidClause: RuleResolver.sid,
    ast.SeverityClause: RuleResolver.severity,
    ast.LabelClause: RuleResolver.label,
}
