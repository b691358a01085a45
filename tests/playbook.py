"""Stories of packets and time, told to an Engine (after mitmproxy's `tutils.Playbook`).

    assert (
        Playbook(engine("accept proto tcp flags S\\nset default drop"))
        >> tcp(A, B, flags="S") << accept(line=1)
        >> tcp(A, B, flags="A") << drop(reason="default")
        >> tick(60) << block(A)
    )

`>>` feeds the engine at once: a packet (bytes, or `packet(data, meta, at=…)`), `tick(dt)`
(the clock moves on and the engine's tick runs) or `wait(dt)` (only the clock moves). `<<`
states what the step just fed gives: a verdict (`accept`, `drop`, `reject`, `rewrite`, with
the deciding line or reason) and the effects, in order (`alert`, `log`, `block`, `unblock`,
`flow_end`). A step's effects are checked strictly: one that nobody expected fails the story,
so a step without `<<` says "no effects"; a step without a verdict leaves the verdict open.
Kinds of effects a story does not care about are passed as `ignore` (FlowEnd by default).

`assert playbook` checks every step; on a mismatch it fails with the whole transcript as a
diff ("-" expected, "+" what came out; times as t+seconds from the story's start), so the
reader sees where the story went elsewhere.
The feeding is eager, so a test may look at `playbook.last` (the last Decision) mid-story.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ips.core.addr import format_addr, parse_addr
from ips.core.decode import decode_l3
from ips.core.events import Alert, Block, FlowEnd, LogRecord, MacBlock, Unblock, format_mac
from ips.core.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Packet
from ips.engine import Engine, Meta

# ---- what a story feeds ------------------------------------------------------------------


@dataclass(frozen=True)
class Fed:
    """A packet to hand to the engine, with its metadata and, if given, its own time."""

    data: bytes
    meta: Meta = field(default_factory=Meta)
    at: float | None = None


def packet(data: bytes, meta: Meta | None = None, at: float | None = None) -> Fed:
    return Fed(data, meta if meta is not None else Meta(), at)


@dataclass(frozen=True)
class Tick:
    """The clock moves on by `dt` (or to `at`); with `run`, the engine's tick runs then."""

    dt: float = 0.0
    at: float | None = None
    run: bool = True


def tick(dt: float = 0.0, at: float | None = None) -> Tick:
    return Tick(dt, at, run=True)


def wait(dt: float = 0.0, at: float | None = None) -> Tick:
    return Tick(dt, at, run=False)


# ---- what a story expects ----------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """One expected output: its kind, the fields that must hold, and an optional predicate."""

    kind: str  # a verdict ("accept", …) or an effect ("alert", "block", …)
    fields: tuple[tuple[str, Any], ...] = ()
    check: Callable[[Any], bool] | None = None

    @property
    def is_verdict(self) -> bool:
        return self.kind in VERDICTS

    def matches(self, actual: Any) -> bool:
        if self.is_verdict:
            if actual.verdict != self.kind:
                return False
            got = {
                "line": _line(actual),
                "reason": actual.reason,
                "offload": actual.offload,
                "file": actual.rule.spec.span.file if actual.rule else None,
            }
        else:
            if not isinstance(actual, EFFECT_KINDS[self.kind]):
                return False
            got = {name: _effect_field(actual, name) for name, _ in self.fields}
        if any(got[name] != value for name, value in self.fields):
            return False
        return self.check is None or bool(self.check(actual))

    def __str__(self) -> str:
        words = [f"{name}={value!r}" for name, value in self.fields]
        if self.check is not None:
            words.append("check=…")
        return f"{self.kind}({', '.join(words)})"


def _verdict(kind: str) -> Callable[..., Expect]:
    def expect(*, check: Callable[[Any], bool] | None = None, **fields: Any) -> Expect:
        return Expect(kind, tuple(fields.items()), check)

    expect.__name__ = kind
    expect.__doc__ = f"The engine says {kind}; `line`, `reason`, `offload`, `file` narrow it."
    return expect


accept, drop, reject, rewrite = (_verdict(k) for k in ("accept", "drop", "reject", "rewrite"))
VERDICTS = ("accept", "drop", "reject", "rewrite")
EFFECT_KINDS: dict[str, type] = {
    "alert": Alert,
    "log": LogRecord,
    "block": Block,
    "mac_block": MacBlock,
    "unblock": Unblock,
    "flow_end": FlowEnd,
}


def alert(*, check: Callable[[Any], bool] | None = None, **fields: Any) -> Expect:
    """An Alert; fields such as sid, category, action, signature, src."""
    return Expect("alert", tuple(fields.items()), check)


def log(*, check: Callable[[Any], bool] | None = None, **fields: Any) -> Expect:
    """A LogRecord; fields such as verdict, rule_name."""
    return Expect("log", tuple(fields.items()), check)


def block(
    addr: str | None = None, *, check: Callable[[Any], bool] | None = None, **fields: Any
) -> Expect:
    """A Block of `addr`; fields such as detector, ttl, offense, table."""
    named = (("addr", addr),) if addr is not None else ()
    return Expect("block", named + tuple(fields.items()), check)


def mac_block(mac: str | None = None, *, check: Callable[[Any], bool] | None = None,
              **fields: Any) -> Expect:  # fmt: skip
    """A MacBlock of `mac` ("aa:bb:…"); fields such as claimed, detector, evidence, ttl."""
    named = (("mac", mac),) if mac is not None else ()
    return Expect("mac_block", named + tuple(fields.items()), check)


def unblock(
    addr: str | None = None, *, check: Callable[[Any], bool] | None = None, **fields: Any
) -> Expect:
    """An Unblock of `addr`; fields such as reason, table."""
    named = (("addr", addr),) if addr is not None else ()
    return Expect("unblock", named + tuple(fields.items()), check)


def flow_end(*, check: Callable[[Any], bool] | None = None, **fields: Any) -> Expect:
    """A FlowEnd; fields such as reason."""
    return Expect("flow_end", tuple(fields.items()), check)


def _line(decision: Any) -> int | None:
    return decision.rule.spec.span.line if decision.rule else None


def _effect_field(effect: Any, name: str) -> Any:
    # Addresses are written as text in a story; the events hold bytes.
    if name in ("addr", "src", "dst", "claimed"):
        raw = getattr(effect, name)
        return format_addr(raw) if isinstance(raw, bytes) else raw
    if name == "mac":
        raw = getattr(effect, name)
        return format_mac(raw) if isinstance(raw, bytes) else raw
    if name == "sid":
        return effect.signature_id
    return getattr(effect, name)


# ---- the transcript ----------------------------------------------------------------------


def describe_packet(fed: Fed) -> str:
    pkt = decode_l3(fed.data)
    if not isinstance(pkt, Packet):
        return f"{len(fed.data)} bytes that do not decode ({pkt})"
    src, dst = format_addr(pkt.src), format_addr(pkt.dst)
    if pkt.proto in (PROTO_TCP, PROTO_UDP):
        name = "tcp" if pkt.proto == PROTO_TCP else "udp"
        flags = ""
        if pkt.proto == PROTO_TCP:
            flags = (
                " ["
                + "".join(
                    c for c, bit in zip("FSRPAUEC", range(8), strict=True) if pkt.flags & (1 << bit)
                )
                + "]"
            )
        text = f"{name} {src}:{pkt.sport} > {dst}:{pkt.dport}{flags}"
    elif pkt.proto in (PROTO_ICMP, PROTO_ICMPV6):
        text = f"icmp {src} > {dst} type {pkt.icmp_type}"
    else:
        text = f"proto {pkt.proto} {src} > {dst}"
    meta = fed.meta
    where = [f"{k}={v}" for k, v in (("in", meta.iif), ("out", meta.oif)) if v is not None]
    if meta.mac is not None:
        where.append(f"from {format_mac(meta.mac)}")
    if where:
        text += " (" + " ".join(where) + ")"
    return text


def describe_decision(decision: Any) -> str:
    who = f"line {_line(decision)}" if decision.rule else (decision.reason or "?")
    extra = f" offload={decision.offload}" if decision.offload else ""
    return f"{decision.verdict} by {who}{extra}"


def describe_effect(effect: Any) -> str:
    if type(effect).__repr__ is not object.__repr__:
        return repr(effect)
    if isinstance(effect, LogRecord):
        return f"LogRecord({effect.rule_name} {effect.verdict} {effect.src_ip} > {effect.dest_ip})"
    if isinstance(effect, FlowEnd):
        return f"FlowEnd({effect.reason})"
    return type(effect).__name__


@dataclass
class Step:
    fed: str  # the transcript's line for what was fed
    now: float
    decision: Any = None  # the Decision of a packet; None for time
    effects: list[Any] = field(default_factory=list)
    expected: list[Expect] = field(default_factory=list)


class Playbook:
    """A story told to one engine; see the module's docstring."""

    def __init__(
        self,
        engine: Engine,
        now: float = 0.0,
        step: float = 0.0,
        ignore: tuple[type, ...] = (FlowEnd,),
    ) -> None:
        self.engine = engine
        self.now = self.start = now
        self.step = step  # how far the clock moves after each packet
        self.ignore = ignore
        self.steps: list[Step] = []

    # ---- telling the story ---------------------------------------------------------------

    def __rshift__(self, item: bytes | Fed | Tick) -> Playbook:
        if isinstance(item, bytes):
            item = Fed(item)
        if isinstance(item, Tick):
            self.now = item.at if item.at is not None else self.now + item.dt
            events = self.engine.tick(self.now) if item.run else []
            verb = "tick" if item.run else "wait"
            when = f"{verb} to t+{self.now - self.start:g}"
            self.steps.append(Step(when, self.now, None, self._kept(events)))
            return self
        if item.at is not None:
            self.now = item.at
        decision = self.engine.handle(item.data, item.meta, self.now)
        self.steps.append(
            Step(describe_packet(item), self.now, decision, self._kept(decision.effects))
        )
        self.now += self.step
        return self

    def __lshift__(self, expected: Expect) -> Playbook:
        if not self.steps:
            raise ValueError("a story states what comes out only after it fed something")
        step = self.steps[-1]
        if expected.is_verdict and step.decision is None:
            raise ValueError(f"{expected} after {step.fed}: time gives no verdict")
        step.expected.append(expected)
        return self

    def _kept(self, effects: Any) -> list[Any]:
        return [e for e in effects if not isinstance(e, self.ignore)]

    # ---- looking at it -------------------------------------------------------------------

    @property
    def last(self) -> Any:
        """The Decision of the last packet fed."""
        return next(s.decision for s in reversed(self.steps) if s.decision is not None)

    @property
    def effects(self) -> list[Any]:
        """What the last step gave besides its verdict (without the ignored kinds)."""
        return self.steps[-1].effects

    def transcripts(self) -> tuple[list[str], list[str], bool]:
        """The expected and the actual transcript, line by line, and whether they agree.
        A line that matches is written as it came out, so that a diff shows only misses."""
        want: list[str] = []
        got: list[str] = []
        ok = True
        for step in self.steps:
            head = f">> {step.fed}  @t+{step.now - self.start:g}"
            want.append(head)
            got.append(head)
            verdicts = [e for e in step.expected if e.is_verdict]
            effects = [e for e in step.expected if not e.is_verdict]
            if step.decision is not None:
                said = describe_decision(step.decision)
                got.append(f"<< {said}")
                for expected in verdicts:
                    good = expected.matches(step.decision)
                    ok &= good
                    want.append(f"<< {said}" if good else f"<< {expected}")
            for n in range(max(len(effects), len(step.effects))):
                actual = step.effects[n] if n < len(step.effects) else None
                expected = effects[n] if n < len(effects) else None
                if actual is not None:
                    got.append(f"<< {describe_effect(actual)}")
                if expected is not None:
                    good = actual is not None and expected.matches(actual)
                    want.append(f"<< {describe_effect(actual)}" if good else f"<< {expected}")
                    ok &= good
                else:
                    ok = False
        return want, got, ok

    def __bool__(self) -> bool:
        want, got, ok = self.transcripts()
        if not ok:
            diff = [line for line in difflib.ndiff(want, got) if not line.startswith("? ")]
            raise AssertionError(
                "the story went elsewhere (- expected, + what came out):\n" + "\n".join(diff)
            )
        return True


def addr(text: str) -> bytes:
    """An address as the engine's tables hold it."""
    return parse_addr(text)
