"""Resolved Policy -> CompiledPolicy: indexed first-match rules the engine runs per packet.

Meaning (documented in docs/language.md): rules are tried top to bottom and the first one that
matches decides; `match` rules only alert/log and let the search go on; a rule with a `limit`
and no `else` stops matching while its rate is exceeded; when nothing matches, `set default`.

How it stays fast. A rule's conditions split in two:
  * static: family, protocol, addresses, ports, interfaces — the same for every packet of a
    flow in one direction;
  * dynamic: TCP flags, ICMP type, length, state, fragment, payload, dynamic tables, limits.
Application-layer clauses (`tls sni`, `dns query`, `app` ...) read what the flow's inspector
learned (flow.app, an AppFields, and flow.app_proto) and are a per-packet check too, with a
third answer: PENDING while the field they read may still come (the client has not finished
its first message). The engine's rule loop says what a pending rule means (a terminal one
accepts the packet without offload, "app-pending"; see docs/language.md).
The static part is indexed: per dimension, a lookup gives a bitset (a Python int) of the rules
that can match; AND-ing the dimensions gives the candidates, in rule order. That is done once
per flow and direction and cached in the flow, up to the first candidate that needs no dynamic
check (nothing after it can be reached). Each later packet only runs the dynamic checks of
that short list. Cost per packet therefore does not grow with the number of rules.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable

from ips.core.decision import OFFLOAD_BARE_ACKS, OFFLOAD_FLOW, OFFLOAD_HANDSHAKE_ACK, Decision
from ips.core.packet import FRAG_LATER, PORT_PROTOS, Packet
from ips.core.tables import DynamicTable, NetMatcher, TokenBuckets
from ips.policy.domains import NameSet, normalize
from ips.policy.model import (
    ACCEPT,
    APP_FIELDS,
    APP_PROTOS,
    BAN_TABLE,
    DROP,
    ENCRYPTED_APPS,
    MATCH,
    REJECT,
    REWRITE,
    UNLIMITED_DEPTH,
    AddrSpec,
    AppCondition,
    IfaceSpec,
    Policy,
    PortSpec,
    RuleSpec,
)

Check = Callable[[Packet, object, bool, float], bool]


class Pending:
    """The answer of an application-layer check that cannot be given yet (truthy, so that
    the engine's `if not found: continue` passes it on to its one `is PENDING` test)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING = Pending()

# CompiledPolicy.candidates' second answer, the offload permission of a flow direction:
OFFLOAD_NEVER = 0
OFFLOAD_SAFE = 1
# Safe once the application-layer fields the candidate rules read are final: the client's
# first message read (AppFields.client_done) and the protocol named (Flow.app_proto).
OFFLOAD_WHEN_APP_DONE = 2
# Safe once each candidate rule that needs later packets is past its depth in this direction
# (`payload contains`), has its L7 fields final, or is ruled out by the flow's application
# protocol: CompiledPolicy.offload_plans[rules] says, per such rule, what it waits for
# (ips/engine/offload.py weighs it against the flow).
OFFLOAD_LATER = 3

# One entry of an offload plan, for one candidate rule that holds offload back for now:
# (the application protocols it can match — None: any; whether an encrypted protocol rules
# it out (its `payload contains` does not read those flows); the depth its payload is read
# to — None: it has no payload to wait out, UNLIMITED_DEPTH: it never is; whether it waits
# for the L7 fields to be final).
OffloadNeed = tuple[frozenset[str] | None, bool, int | None, bool]


class CompiledRule:
    """A rule ready to run. `check` is None when the static index says everything."""

    __slots__ = (
        "bare_acks_decision",
        "check",
        "decision",
        "depth",
        "else_decision",
        "handshake_ack_decision",
        "hits",
        "index",
        "limit_key",
        "limiter",
        "lists",
        "offload_decision",
        "refuses",
        "skip_encrypted",
        "spec",
        "terminal",
        "verdict",
    )

    def __init__(
        self,
        spec: RuleSpec,
        tables: dict[str, DynamicTable],
        lists: dict[str, NetMatcher] | None = None,
        depth: int = UNLIMITED_DEPTH,
        skip_encrypted: bool = False,
    ) -> None:
        self.spec = spec
        # How far into each direction its `payload contains` reads (the rule's `depth`, or
        # the policy's `payload-depth`), and whether it skips TLS, SSH and QUIC flows.
        self.depth = depth
        self.skip_encrypted = skip_encrypted and bool(spec.contains)
        # The reputation lists (file tables) this rule's addresses name, for its alerts:
        # (side, table, membership); only for rules that alert.
        self.lists: tuple[tuple[str, str, NetMatcher], ...] = ()
        if spec.alert and lists:
            self.lists = tuple(
                (side, name, lists[name])
                for side, addr in (("src", spec.src), ("dst", spec.dst))
                if addr is not None and not addr.negated
                for name in addr.tables
                if name in lists
            )
        self.index = spec.index
        self.verdict = spec.action
        self.terminal = spec.action != MATCH
        self.refuses = spec.action in (DROP, REJECT)
        self.hits = 0
        self.check = _dynamic_check(spec, tables, depth, self.skip_encrypted)
        if spec.app:
            self.check = _with_app_check(self.check, spec.app)
        self.limiter: TokenBuckets | None = None
        self.limit_key = ""
        self.else_decision: Decision[CompiledRule] | None = None
        if spec.limit is not None:
            self.limiter = TokenBuckets(spec.limit.rate, spec.limit.burst)
            self.limit_key = spec.limit.per
        # A prebuilt Decision for the common case (no alert, no log, no per-packet bytes),
        # so deciding a packet allocates nothing.
        simple = not (spec.alert or spec.log) and spec.action in (ACCEPT, DROP)
        self.decision = Decision(spec.action, self) if simple else None
        self.offload_decision = Decision(ACCEPT, self, offload=OFFLOAD_FLOW) if simple else None
        self.handshake_ack_decision = (
            Decision(ACCEPT, self, offload=OFFLOAD_HANDSHAKE_ACK) if simple else None
        )
        self.bare_acks_decision = (
            Decision(ACCEPT, self, offload=OFFLOAD_BARE_ACKS) if simple else None
        )
        if spec.limit is not None and spec.limit.else_action in (ACCEPT, DROP):
            self.else_decision = Decision(spec.limit.else_action, self)

    @property
    def static_only(self) -> bool:
        return self.check is None and self.limiter is None

    def __repr__(self) -> str:
        return f"<rule {self.spec.name} {self.verdict}>"


# ---- dynamic checks ---------------------------------------------------------------------------


def _dynamic_check(
    spec: RuleSpec,
    tables: dict[str, DynamicTable],
    depth: int = UNLIMITED_DEPTH,
    skip_encrypted: bool = False,
) -> Check | None:
    """One function that runs every per-packet condition of a rule, or None if there are none.

    Each condition is a small closure; the combined check stops at the first that fails."""
    preds: list[Check] = []
    if spec.flags is not None:
        value, mask = spec.flags

        def flags_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
            return pkt.flags & mask == value

        preds.append(flags_ok)
    if spec.icmp_types is not None:
        itypes, icode = spec.icmp_types, spec.icmp_code
        if icode is None:

            def icmp_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
                return pkt.icmp_type in itypes

        else:

            def icmp_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
                return pkt.icmp_type in itypes and pkt.icmp_code == icode

        preds.append(icmp_ok)
    if spec.length is not None:
        preds.append(_length_check(*spec.length))
    if spec.states is not None:
        want_new = "new" in spec.states
        want_est = "established" in spec.states

        def state_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
            return want_est if flow.replied else want_new  # type: ignore[attr-defined]

        preds.append(state_ok)
    if spec.fragment:

        def frag_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
            return pkt.frag != 0

        preds.append(frag_ok)
    for spec_addr, is_src in ((spec.src, True), (spec.dst, False)):
        if spec_addr is not None and spec_addr.dynamic:
            preds.append(_dynamic_addr_check(spec_addr, is_src, tables))
    if spec.contains:
        preds.append(_payload_check(spec.contains, depth, skip_encrypted))
    if not preds:
        return None
    if len(preds) == 1:
        return preds[0]
    chain = tuple(preds)

    def all_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
        for pred in chain:  # noqa: SIM110 - a plain loop beats all() and its generator here
            if not pred(pkt, flow, fwd, now):
                return False
        return True

    return all_ok


def _with_app_check(check: Check | None, conditions: tuple[AppCondition, ...]) -> Check:
    """The rule's per-packet check followed by its application-layer clauses (True, False or
    PENDING): the packet's own conditions first, they cost less and never wait."""
    app_check = app_conditions_check(conditions)
    if check is None:

        def app_only(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
            return app_check(flow)  # type: ignore[return-value]

        return app_only
    packet_check = check

    def packet_then_app(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
        if not packet_check(pkt, flow, fwd, now):
            return False
        return app_check(flow)  # type: ignore[return-value]

    return packet_then_app


def app_conditions_check(conditions: tuple[AppCondition, ...]) -> Callable[[object], object]:
    """flow -> True, False or PENDING for a rule's application-layer clauses (all must hold).

    False, final, when the flow has no AppFields and never will (application parsing off,
    neither TCP nor UDP, or its inspection over); pending while it has none yet but the
    inspector still reads it (a TCP flow gets its fields with its first payload). `app X`
    is pending while the flow's protocol is not named yet, and decided first: a flow known
    to be another protocol is refused at once. The other clauses read client-side fields:
    pending while the client's first message may still come."""
    protos = [c for c in conditions if c.kind == "proto"]
    fields = tuple(field_check(c) for c in conditions if c.kind != "proto")
    proto_values = protos[0].values if protos else None
    proto_negated = protos[0].negated if protos else False

    def app_ok(flow: object) -> object:
        app = flow.app  # type: ignore[attr-defined]
        if app is None:
            return PENDING if flow.app_state is not None else False  # type: ignore[attr-defined]
        if proto_values is not None:
            proto = flow.app_proto  # type: ignore[attr-defined]
            if proto is None:
                return PENDING
            if (proto in proto_values) == proto_negated:
                return False
        if not fields:
            return True
        if not app.client_done:
            return PENDING
        for check in fields:  # noqa: SIM110 - a plain loop beats all() and its generator here
            if not check(app):
                return False
        return True

    return app_ok


def field_check(cond: AppCondition) -> Callable[[object], bool]:
    """AppFields -> whether one clause on a client-side field holds (the field final)."""
    attr, negated = cond.field, cond.negated
    if cond.kind == "names":
        names: NameSet = cond.names or NameSet()
        if attr == "dns_queries":

            def queries_ok(app: object) -> bool:
                # any name of the message in hand: one bad question condemns the message
                queried: tuple[str, ...] = getattr(app, attr)
                hit = any(names.matches(normalize(q)) for q in queried)
                return hit != negated

            return queries_ok

        def name_ok(app: object) -> bool:
            value = getattr(app, attr)
            return (value is not None and names.matches(normalize(value))) != negated

        return name_ok
    if cond.kind == "exact":
        values = cond.values
        fold = str.upper if attr == "http_method" else str.lower

        def exact_ok(app: object) -> bool:
            value = getattr(app, attr)
            return (value is not None and fold(value) in values) != negated

        return exact_ok
    text, nocase = cond.text, cond.nocase

    def contains_ok(app: object) -> bool:
        value = getattr(app, attr)
        if value is None:
            return False
        return text in (value.lower() if nocase else value)

    return contains_ok


def _length_check(op: str, lo: int, hi: int) -> Check:
    ops: dict[str, Callable[[int], bool]] = {
        "=": lambda n: n == lo,
        "!=": lambda n: n != lo,
        "<": lambda n: n < lo,
        "<=": lambda n: n <= lo,
        ">": lambda n: n > lo,
        ">=": lambda n: n >= lo,
        "range": lambda n: lo <= n <= hi,
    }
    test = ops[op]

    def length_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
        return test(pkt.length)

    return length_ok


def _payload_check(
    patterns: tuple[tuple[bytes, bool], ...], depth: int, skip_encrypted: bool
) -> Check:
    """A rule's `payload contains` clauses (all must match), read within the first `depth`
    bytes of the packet's direction of its flow (UNLIMITED_DEPTH: everywhere): a pattern
    matches only when it lies wholly within them, as content past Suricata's stream depth is
    never inspected. With skip_encrypted, a flow the inspector named TLS, SSH or QUIC is not
    read at all (its payload is ciphertext)."""
    if depth == UNLIMITED_DEPTH and not skip_encrypted:
        if len(patterns) == 1:
            return _contains_check(*patterns[0])
        checks = tuple(_contains_check(p, nocase) for p, nocase in patterns)

        def all_contained(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
            for check in checks:  # noqa: SIM110 - a plain loop beats all() here
                if not check(pkt, flow, fwd, now):
                    return False
            return True

        return all_contained
    window = depth if depth != UNLIMITED_DEPTH else -1
    encrypted = ENCRYPTED_APPS if skip_encrypted else frozenset()

    def payload_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
        if flow.app_proto in encrypted:  # type: ignore[attr-defined]
            return False
        start = pkt.payload_offset
        end = pkt.length
        if window >= 0:
            # Where this packet's payload starts in its direction: the flow table has already
            # counted it (Flow.payload_fwd/rev).
            seen = flow.payload_fwd if fwd else flow.payload_rev  # type: ignore[attr-defined]
            offset = seen - (end - start)
            if offset >= window:
                return False
            end = min(end, start + window - offset)
        data = pkt.data
        for pattern, nocase in patterns:
            if nocase:
                if pattern not in data[start:end].lower():
                    return False
            elif data.find(pattern, start, end) < 0:
                return False
        return True

    return payload_ok


def _contains_check(pattern: bytes, nocase: bool) -> Check:
    if nocase:

        def contains_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
            return pattern in pkt.data[pkt.payload_offset :].lower()

    else:

        def contains_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
            return pkt.data.find(pattern, pkt.payload_offset) >= 0

    return contains_ok


def _dynamic_addr_check(spec: AddrSpec, is_src: bool, tables: dict[str, DynamicTable]) -> Check:
    """An address condition that involves a dynamic table (its members change at run time);
    the static networks of the same value are checked here too."""
    members = [tables[name] for name in spec.dynamic]
    static = NetMatcher(spec.nets4, spec.nets6)
    negated = spec.negated

    def addr_ok(pkt: Packet, flow: object, fwd: bool, now: float) -> bool:
        addr = pkt.src if is_src else pkt.dst
        hit = False
        for table in members:
            expiry = table.members.get(addr)
            if expiry is not None and expiry > now:
                hit = True
                break
        if not hit and static:
            hit = static.contains(addr)
        return hit != negated

    return addr_ok


# ---- the static index -------------------------------------------------------------------------


MEMO_MAX = 65536  # entries of a lookup memo; a full one is emptied (a spoofed flood's churn)

# CompiledPolicy.candidate_entry: the candidate rules of a flow direction, their offload
# state, and their walks by TCP flags byte (None: no candidate has a `flags` condition).
CandidateEntry = tuple[
    tuple["CompiledRule", ...], int, list[tuple["CompiledRule", ...] | None] | None
]


class _AddrIndex:
    """Address -> bitset of rules whose static address condition admits it (one family).
    Results are memoised per address: a new flow mostly has addresses seen before."""

    __slots__ = ("free", "memo", "neg_all", "neg_by_plen", "pos_by_plen", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.memo: dict[bytes, int] = {}
        self.free = 0  # no condition for this dimension
        self.neg_all = 0
        self.pos_by_plen: dict[int, dict[int, int]] = {}
        self.neg_by_plen: dict[int, dict[int, int]] = {}

    def add(self, bit: int, spec: AddrSpec | None, family: int) -> None:
        if spec is None or spec.dynamic:
            self.free |= bit  # dynamic conditions are checked per packet
            return
        nets = spec.nets4 if family == 4 else spec.nets6
        target = self.neg_by_plen if spec.negated else self.pos_by_plen
        if spec.negated:
            self.neg_all |= bit
        for net, plen in nets:
            bucket = target.setdefault(plen, {})
            key = net >> (self.width - plen)
            bucket[key] = bucket.get(key, 0) | bit

    def lookup(self, addr: bytes) -> int:
        bits = self.memo.get(addr)
        if bits is None:
            if len(self.memo) >= MEMO_MAX:
                self.memo.clear()
            bits = self.memo[addr] = self._lookup(addr)
        return bits

    def _lookup(self, addr: bytes) -> int:
        value = int.from_bytes(addr, "big")
        width = self.width
        bits = self.free
        for plen, nets in self.pos_by_plen.items():
            bits |= nets.get(value >> (width - plen), 0)
        if self.neg_all:
            excluded = 0
            for plen, nets in self.neg_by_plen.items():
                excluded |= nets.get(value >> (width - plen), 0)
            bits |= self.neg_all & ~excluded
        return bits


class _PortIndex:
    """Port -> bitset of rules whose port condition admits it. Single ports in a dict, wider
    ranges as elementary intervals found by bisection; each port's answer memoised (at most
    65,536 of them)."""

    __slots__ = ("bounds", "exact", "free", "interval_bits", "memo")

    def __init__(self) -> None:
        self.memo: dict[int, int] = {}
        self.free = 0
        self.exact: dict[int, int] = {}
        self.bounds: list[int] = []
        self.interval_bits: list[int] = [0]

    def build(self, specs: list[tuple[int, PortSpec | None]]) -> None:
        self.memo.clear()
        toggles: dict[int, int] = {}  # boundary -> XOR of rule bits changing there
        base = 0
        for bit, spec in specs:
            if spec is None:
                self.free |= bit
                continue
            if spec.negated:
                base |= bit  # matches everywhere except inside its ranges
            for lo, hi in spec.ranges:
                if lo == hi and not spec.negated:
                    self.exact[lo] = self.exact.get(lo, 0) | bit
                    continue
                toggles[lo] = toggles.get(lo, 0) ^ bit
                toggles[hi + 1] = toggles.get(hi + 1, 0) ^ bit
        self.bounds = sorted(toggles)
        running = base
        self.interval_bits = [base]
        for b in self.bounds:
            running ^= toggles[b]
            self.interval_bits.append(running)

    def lookup(self, port: int) -> int:
        bits = self.free | self.exact.get(port, 0)
        if self.bounds:
            bits |= self.interval_bits[bisect_right(self.bounds, port)]
        self.memo[port] = bits
        return bits


class _IfaceIndex:
    """Interface name (or None) -> bitset; a handful of names, cached."""

    __slots__ = ("cache", "free", "specs")

    def __init__(self) -> None:
        self.free = 0
        self.specs: list[tuple[int, IfaceSpec]] = []
        self.cache: dict[str | None, int] = {}

    def add(self, bit: int, spec: IfaceSpec | None) -> None:
        if spec is None:
            self.free |= bit
        else:
            self.specs.append((bit, spec))

    def lookup(self, name: str | None) -> int:
        bits = self.cache.get(name)
        if bits is None:
            bits = self.free
            for bit, spec in self.specs:
                if spec.matches(name):
                    bits |= bit
            if len(self.cache) < 4096:
                self.cache[name] = bits
        return bits


class _FamilyIndex:
    __slots__ = ("any_proto", "dport", "dst", "frag_ok", "proto_bits", "sport", "src")

    def __init__(self, family: int) -> None:
        width = 32 if family == 4 else 128
        self.proto_bits: dict[int, int] = {}
        self.any_proto = 0  # rules with no protocol condition
        self.src = _AddrIndex(width)
        self.dst = _AddrIndex(width)
        self.sport = _PortIndex()
        self.dport = _PortIndex()
        self.frag_ok = 0  # rules a non-first fragment can match (no port/flags/payload needs)


def _named_tables(rule: RuleSpec) -> tuple[str, ...]:
    return (rule.src.tables if rule.src else ()) + (rule.dst.tables if rule.dst else ())


def list_hits(rule: CompiledRule, src: bytes, dst: bytes) -> dict[str, list[str]]:
    """The reputation lists a packet's addresses are on, of those the rule names:
    {"src": ["spamhaus"]}; empty when none (or the rule names none)."""
    hits: dict[str, list[str]] = {}
    for side, name, matcher in rule.lists:
        if matcher.contains(src if side == "src" else dst):
            hits.setdefault(side, []).append(name)
    return hits


class CompiledPolicy:
    """The policy the engine runs: rules in order plus the index over them."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.tables: dict[str, DynamicTable] = {
            name: DynamicTable(name, t.timeout, t.size)
            for name, t in policy.tables.items()
            if t.kind == "dynamic"
        }
        lists = {
            name: NetMatcher(t.nets4, t.nets6)
            for name, t in policy.tables.items()
            if t.kind == "file" and t.names is None
            and any(r.alert and name in _named_tables(r) for r in policy.rules)
        }  # fmt: skip
        skip_encrypted = policy.encrypted_payload_skipped
        self.rules = [
            CompiledRule(spec, self.tables, lists, policy.depth_of(spec), skip_encrypted)
            for spec in policy.rules
        ]
        self.default_verdict = policy.default_verdict
        self.on_error = policy.on_error
        self.malformed_verdict = policy.malformed_verdict
        self.digest = policy.digest
        self.offload = policy.offload
        self._offload_memo: dict[tuple[CompiledRule, ...], bool] = {}
        # The candidates whose offload_state is OFFLOAD_LATER -> what each of their rules
        # that holds offload back waits for (read by ips/engine/offload.py).
        self.offload_plans: dict[tuple[CompiledRule, ...], tuple[OffloadNeed, ...]] = {}
        self._candidates_memo: dict[int, CandidateEntry] = {}
        self._families = {4: _FamilyIndex(4), 6: _FamilyIndex(6)}
        self._iif = _IfaceIndex()
        self._oif = _IfaceIndex()
        self._anyif_specs: list[tuple[int, IfaceSpec]] = []
        self._dir_in = 0  # rules that need an input interface (`in`)
        self._dir_out = 0
        self._build()

    def _build(self) -> None:
        port_specs: dict[int, tuple[list[tuple[int, PortSpec | None]], list]] = {
            4: ([], []),
            6: ([], []),
        }
        for rule in self.rules:
            spec = rule.spec
            if _only_blocked_sources(spec):
                continue  # never a candidate: the engine drops blocked sources before the rules
            bit = 1 << rule.index
            for family in (4, 6):
                fx = self._families[family]
                if family not in spec.families:
                    continue
                if spec.protos is None:
                    fx.any_proto |= bit
                else:
                    for proto in spec.protos:
                        fx.proto_bits[proto] = fx.proto_bits.get(proto, 0) | bit
                fx.src.add(bit, spec.src, family)
                fx.dst.add(bit, spec.dst, family)
                port_specs[family][0].append((bit, spec.sport))
                port_specs[family][1].append((bit, spec.dport))
                needs_l4 = spec.sport or spec.dport or spec.flags or spec.contains
                if not needs_l4:
                    fx.frag_ok |= bit
            self._iif.add(bit, spec.iif)
            self._oif.add(bit, spec.oif)
            if spec.anyif is not None:
                self._anyif_specs.append((bit, spec.anyif))
            if spec.direction == "in":
                self._dir_in |= bit
            elif spec.direction == "out":
                self._dir_out |= bit
        for family, (sports, dports) in port_specs.items():
            self._families[family].sport.build(sports)
            self._families[family].dport.build(dports)
        self._anyif_bits = 0
        for bit, _ in self._anyif_specs:
            self._anyif_bits |= bit
        self._anyif_cache: dict[tuple[str | None, str | None], int] = {}
        self._if_memo: dict[tuple[str | None, str | None], int] = {}

    def _anyif(self, iif: str | None, oif: str | None) -> int:
        """Bits of rules without `on IF`, plus those whose `on IF` names iif or oif."""
        key = (iif, oif)
        bits = self._anyif_cache.get(key)
        if bits is None:
            bits = ~self._anyif_bits
            for bit, spec in self._anyif_specs:
                if spec.matches(iif) or spec.matches(oif):
                    bits |= bit
            if len(self._anyif_cache) < 4096:
                self._anyif_cache[key] = bits
        return bits

    def candidate_bits(self, pkt: Packet, iif: str | None, oif: str | None) -> int:
        """Bitset of the rules whose static conditions admit this packet. Every dimension's
        answer is memoised (addresses, ports, the pair of interfaces), and read here straight
        from its memo: this runs for every first packet of a flow direction."""
        fx = self._families[pkt.family]
        proto = pkt.proto
        bits = fx.any_proto | fx.proto_bits.get(proto, 0)
        if not bits:
            return 0
        src_bits = fx.src.memo.get(pkt.src)
        if src_bits is None:
            src_bits = fx.src.lookup(pkt.src)
        dst_bits = fx.dst.memo.get(pkt.dst)
        if dst_bits is None:
            dst_bits = fx.dst.lookup(pkt.dst)
        bits &= src_bits & dst_bits
        if not bits:
            return 0
        if pkt.frag == FRAG_LATER:
            bits &= fx.frag_ok
        elif proto in PORT_PROTOS:
            sport_bits = fx.sport.memo.get(pkt.sport)
            if sport_bits is None:
                sport_bits = fx.sport.lookup(pkt.sport)
            dport_bits = fx.dport.memo.get(pkt.dport)
            if dport_bits is None:
                dport_bits = fx.dport.lookup(pkt.dport)
            bits &= sport_bits & dport_bits
        if_bits = self._if_memo.get((iif, oif))
        if if_bits is None:
            if_bits = self._interface_bits(iif, oif)
        return bits & if_bits

    def _interface_bits(self, iif: str | None, oif: str | None) -> int:
        """The rules the pair of interfaces admits (`in`/`out`, `on`, a direction that needs
        an interface), memoised for a few thousand pairs."""
        bits = self._iif.lookup(iif) & self._oif.lookup(oif)
        if self._anyif_bits:
            bits &= self._anyif(iif, oif)
        if self._dir_in and iif is None:
            bits &= ~self._dir_in
        if self._dir_out and oif is None:
            bits &= ~self._dir_out
        if len(self._if_memo) < 4096:
            self._if_memo[(iif, oif)] = bits
        return bits

    def candidates(
        self, pkt: Packet, iif: str | None, oif: str | None
    ) -> tuple[tuple[CompiledRule, ...], int]:
        """The rules to try, in order, up to the first that needs no per-packet check, and
        whether they allow offload (`offload_state`: OFFLOAD_NEVER, OFFLOAD_SAFE or
        OFFLOAD_WHEN_APP_DONE): all the engine asks of the compiler for a flow direction, in
        one call. One pair per distinct bitset, memoised: flows alike share it."""
        rules, state, _ = self.candidate_entry(pkt, iif, oif)
        return rules, state

    def candidate_entry(self, pkt: Packet, iif: str | None, oif: str | None) -> CandidateEntry:
        """`candidates`, with the walks by TCP flags byte of those rules (`walk`), or None
        when no candidate has a `flags` condition. What the engine keeps per flow direction."""
        bits = self.candidate_bits(pkt, iif, oif)
        known = self._candidates_memo.get(bits)
        if known is not None:
            return known
        if len(self._candidates_memo) >= MEMO_MAX:
            self._candidates_memo.clear()
            self.offload_plans.clear()
        rules = self._candidates(bits)
        walks: list[tuple[CompiledRule, ...] | None] | None = None
        if any(rule.spec.flags is not None for rule in rules):
            walks = [None] * 256
        found = self._candidates_memo[bits] = (rules, self.offload_state(rules), walks)
        return found

    @staticmethod
    def walk(
        rules: tuple[CompiledRule, ...],
        walks: list[tuple[CompiledRule, ...] | None],
        flags: int,
    ) -> tuple[CompiledRule, ...]:
        """The candidates a packet with this TCP flags byte can reach: those without a
        `flags` condition, and those whose condition this byte meets. Leaving out the others
        changes nothing but the work: a rule's flags test is the first of its per-packet
        conditions (_dynamic_check, then _with_app_check), so when it fails the rule does
        not match, touches no limiter and counts no hit. Made once per flags byte, kept in
        `walks` (shared by every flow with these candidates)."""
        walk = tuple(
            rule
            for rule in rules
            if rule.spec.flags is None or flags & rule.spec.flags[1] == rule.spec.flags[0]
        )
        walks[flags] = walk
        return walk

    def offload_state(self, candidates: tuple[CompiledRule, ...]) -> int:
        """offload_safe, and whether it waits for the application layer: a flow whose
        candidates read L7 fields stays with the engine until they are final (its packets
        are judged until then); one whose candidates read `dns query` never leaves (each DNS
        message is judged), and offload_safe already says so."""
        if not self.offload_safe(candidates):
            plan = self.offload_plan(candidates)
            if plan is None:
                return OFFLOAD_NEVER
            self.offload_plans[candidates] = plan
            return OFFLOAD_LATER
        for rule in candidates:
            if rule.spec.app:
                return OFFLOAD_WHEN_APP_DONE
        return OFFLOAD_SAFE

    def plan_of(self, candidates: tuple[CompiledRule, ...]) -> tuple[OffloadNeed, ...]:
        """The offload plan of candidates whose state is OFFLOAD_LATER (made again when the
        memo was emptied meanwhile)."""
        plan = self.offload_plans.get(candidates)
        if plan is None:
            plan = self.offload_plan(candidates)
            if plan is None:  # not OFFLOAD_LATER candidates after all: nothing lets them go
                return ((None, False, None, False),)
            self.offload_plans[candidates] = plan
        return plan

    def offload_plan(self, candidates: tuple[CompiledRule, ...]) -> tuple[OffloadNeed, ...] | None:
        """For candidates that are not offload-safe as they stand: what each rule that holds
        offload back waits for, or None when one of them never lets go (a `limit`, an `inspect`,
        `payload-depth unlimited` … on a rule no application protocol can rule out).

        A rule lets go once its `payload contains` is past its depth in the direction, or its
        L7 fields are final, or the flow's application protocol rules it out: its L7 clauses
        name another protocol (`http uri contains` on a TLS flow), or its payload is not read
        on an encrypted protocol (`set encrypted-payload skip`)."""
        if not self.offload:
            return None
        needs: list[OffloadNeed] = []
        for rule in candidates:
            spec = rule.spec
            protos = app_protos_of(spec)
            if _offload_safe_rule(spec):
                if spec.app:
                    needs.append((protos, False, None, True))
            elif spec.contains and _offload_safe_rule(spec, payload_waits=True):
                needs.append((protos, rule.skip_encrypted, rule.depth, bool(spec.app)))
            elif protos is not None or rule.skip_encrypted:
                # Held back by more than its payload or L7 fields (a `limit`, an `inspect`):
                # only a flow's protocol that rules it out lets it go.
                needs.append((protos, rule.skip_encrypted, None, False))
            else:
                return None
            if _takes_every_replied_packet(spec):
                break
        return tuple(needs)

    def _candidates(self, bits: int) -> tuple[CompiledRule, ...]:
        rules = self.rules
        out: list[CompiledRule] = []
        while bits:
            low = bits & -bits
            rule = rules[low.bit_length() - 1]
            out.append(rule)
            if rule.terminal and rule.static_only:
                break
            bits ^= low
        return tuple(out)

    def offload_safe(self, candidates: tuple[CompiledRule, ...]) -> bool:
        """True when no rule among a flow direction's candidates needs to see the flow's
        later packets: none inspects payload, limits a rate, rewrites, alerts or logs on every
        packet, reads a dynamic table (but the block table on the source, which the kernel
        enforces itself), or says `inspect`. Rules only for new connections (`state new`)
        cannot match later packets and do not count. What offload does hide — TCP flags,
        length and ICMP conditions on later packets — is in docs/offload.md."""
        known = self._offload_memo.get(candidates)
        if known is not None:
            return known
        safe = self.offload
        for rule in candidates:
            if not safe:
                break
            safe = _offload_safe_rule(rule.spec)
            if _takes_every_replied_packet(rule.spec):
                break  # the rules after it never see a later packet of an offloaded flow
        if len(self._offload_memo) < 65536:
            self._offload_memo[candidates] = safe
        return safe


def _only_blocked_sources(spec: RuleSpec) -> bool:
    """A rule that matches only sources in the block table (`drop from @banned`, as every
    policy starts): the Engine drops those before it looks at any rule, so the rule would cost
    a table lookup per packet and never match."""
    src = spec.src
    return (
        src is not None
        and not src.negated
        and set(src.dynamic) == {BAN_TABLE}
        and not src.nets4
        and not src.nets6
    )


def _takes_every_replied_packet(spec: RuleSpec) -> bool:
    """A terminal rule whose only per-packet condition is `state established` (with or without
    `new`): once the flow is replied (offload needs that) it decides every later packet."""
    if spec.action == MATCH or spec.states is None or "established" not in spec.states:
        return False
    if spec.app:
        return False  # it may still not match: the rules after it are reached
    dynamic_addr = (spec.src is not None and spec.src.dynamic) or (
        spec.dst is not None and spec.dst.dynamic
    )
    return not (
        spec.flags
        or spec.icmp_types is not None
        or spec.length
        or spec.fragment
        or spec.contains
        or spec.limit
        or dynamic_addr
    )


def app_protos_of(spec: RuleSpec) -> frozenset[str] | None:
    """The application protocols a rule's L7 clauses can match (`tls sni` only TLS, `app {
    http, tls }` those two, `app !ssh` all but SSH); None when it has no L7 clause. A flow
    whose protocol is named and not among them can never match the rule."""
    protos: frozenset[str] | None = None
    for cond in spec.app:
        if cond.kind == "proto":
            allowed = cond.values
            if cond.negated:
                allowed = frozenset(APP_PROTOS) - allowed
        else:
            allowed = frozenset({word for (word, _), (attr, _) in APP_FIELDS.items()
                                 if attr == cond.field})  # fmt: skip
            if cond.negated:
                # A negated field clause holds when the field is absent, so on any protocol.
                continue
        protos = allowed if protos is None else protos & allowed
    return protos


def _offload_safe_rule(spec: RuleSpec, payload_waits: bool = False) -> bool:
    """Whether the rule never needs a flow's later packets; with payload_waits, the same but
    for its `payload contains` (which lets go once past its depth)."""
    if spec.states is not None and spec.states == frozenset({"new"}):
        return True  # matches no later packet of an established flow
    if spec.contains and not payload_waits:
        return False
    if spec.inspect or spec.limit is not None or spec.action == REWRITE:
        return False
    if any(cond.field == "dns_queries" for cond in spec.app):
        return False  # every DNS message of the flow is judged by its names
    if spec.rewrite is not None:
        return False
    if spec.dst is not None and spec.dst.dynamic:
        return False
    src = spec.src
    if src is not None and src.dynamic and (src.negated or set(src.dynamic) != {BAN_TABLE}):
        return False
    # Alerts and logs of a rule that matches whatever the packet's flags or length: every
    # packet would make one. (One behind a per-packet condition — a flags rule — is hidden.)
    return not ((spec.alert or spec.log) and not spec.has_dynamic)
