"""The typed syntax tree of a policy file: what was written, where, before any meaning is given.

Every node carries the Span it came from so that the resolver can point at the exact word.
Nodes are not frozen: a frozen dataclass's constructor is several times slower, and a
10,000-rule policy builds a few hundred thousand of them. Nothing mutates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ips.policy.diagnostics import Span

# ---- values ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Item:
    """One element of a value: `10.0.0.0/8`, `80`, `8080-8089`, `ssh`, `"x"`, `$lan`, `@banned`.

    kind is one of: addr, int, range, word, string, var, table, any, hex, duration, rate,
    size (64k, 1M: a number and a unit, as written).
    For int and range, lo/hi hold the numbers; for string, text is already unescaped.
    """

    kind: str
    text: str
    span: Span
    lo: int = 0
    hi: int = 0


@dataclass(slots=True)
class Value:
    items: tuple[Item, ...]
    negated: bool
    is_set: bool
    span: Span


# ---- rule clauses -----------------------------------------------------------------------------


@dataclass(slots=True)
class Clause:
    span: Span


@dataclass(slots=True)
class FamilyClause(Clause):
    family: int  # 4 or 6


@dataclass(slots=True)
class ProtoClause(Clause):
    value: Value


@dataclass(slots=True)
class EndpointClause(Clause):
    """`from …` (is_src) or `to …`: an address value and/or a port value.

    geo: None for addresses; "country" or "asn" when `addr` holds country codes or AS
    numbers (`from country { RU, CN }`), "org" when it holds the one string of `from org
    contains "…"`."""

    is_src: bool
    addr: Value | None
    port: Value | None
    geo: str | None = None


@dataclass(slots=True)
class InterfaceClause(Clause):
    direction: str | None  # "in", "out" or None (either)
    iface: Value | None  # None: only the direction is constrained


@dataclass(slots=True)
class FlagsClause(Clause):
    spec: str


@dataclass(slots=True)
class IcmpTypeClause(Clause):
    type_value: Value
    code_value: Value | None


@dataclass(slots=True)
class LengthClause(Clause):
    op: str  # one of = != < <= > >= or "range"
    lo: int
    hi: int


@dataclass(slots=True)
class StateClause(Clause):
    value: Value


@dataclass(slots=True)
class FragmentClause(Clause):
    pass


@dataclass(slots=True)
class ContainsClause(Clause):
    pattern: bytes
    nocase: bool


@dataclass(slots=True)
class DepthClause(Clause):
    """`depth 8k`: how far into each direction of a flow the rule's `payload contains`
    reads (a size, a number of bytes, or `unlimited`), instead of `set payload-depth`."""

    value: Item


@dataclass(slots=True)
class AppClause(Clause):
    """`app tls`, `app { tls, quic }`: the flow's application protocol."""

    value: Value


@dataclass(slots=True)
class AppFieldClause(Clause):
    """`tls sni "x"`, `dns query @t`, `http method GET` (value), or `http uri contains "s"
    [nocase]` (contains: the text, value None)."""

    proto: str  # tls | quic | dns | http
    field: Item  # the word after it: sni, ja3, ja4, query, host, method, uri, user-agent
    value: Value | None
    contains: str | None = None
    nocase: bool = False


@dataclass(slots=True)
class LimitClause(Clause):
    rate_text: str
    burst: int | None
    per: Item | None
    else_action: Item | None


@dataclass(slots=True)
class SetClause(Clause):
    """`set ttl 64`, `set dscp ef`, `set dport 8080`, `set daddr 10.0.5.5` (rewrite)."""

    field: Item
    value: Value


@dataclass(slots=True)
class ReplaceClause(Clause):
    old: bytes
    new: bytes


@dataclass(slots=True)
class RejectWithClause(Clause):
    kind: Item  # tcp-reset | icmp | icmpv6
    code: Value | None


@dataclass(slots=True)
class AlertClause(Clause):
    message: str | None


@dataclass(slots=True)
class LogClause(Clause):
    pass


@dataclass(slots=True)
class InspectClause(Clause):
    pass


@dataclass(slots=True)
class SidClause(Clause):
    sid: int


@dataclass(slots=True)
class SeverityClause(Clause):
    value: Item


@dataclass(slots=True)
class LabelClause(Clause):
    label: str


# ---- statements -------------------------------------------------------------------------------


@dataclass(slots=True)
class Statement:
    span: Span


@dataclass(slots=True)
class Include(Statement):
    path: str
    path_span: Span


@dataclass(slots=True)
class Define(Statement):
    name: str
    name_span: Span
    value: Value


@dataclass(slots=True)
class TableDecl(Statement):
    name: str
    name_span: Span
    kind: str  # static | file | dynamic
    value: Value | None = None
    path: str | None = None
    timeout: Item | None = None
    size: Item | None = None
    # a file table's options: `refresh 1h`, `on-error skip`, `allow-empty`
    refresh: Item | None = None
    on_error: Item | None = None
    allow_empty: bool = False


@dataclass(slots=True)
class OptionStmt(Statement):
    name: str
    name_span: Span
    value: Item


@dataclass(slots=True)
class RuleStmt(Statement):
    action: str
    action_span: Span
    clauses: tuple[Clause, ...]
    text: str  # the statement as written, for explain and alerts


@dataclass(slots=True)
class DetectOpt:
    key: str
    span: Span
    value: Item | Value | None


@dataclass(slots=True)
class DetectStmt(Statement):
    name: str
    name_span: Span
    opts: tuple[DetectOpt, ...]


@dataclass(slots=True)
class PolicyFile:
    path: str
    text: str
    statements: list[Statement] = field(default_factory=list)
