"""Detectors: one `detect NAME …` statement -> DetectSpec, with one handler per option.

A detector's options are checked against its schema (ips/policy/model.py, DETECTORS); each
option kind has its handler in OPTIONS, chosen by the option's key. A detector that blocks
needs the dynamic table `banned` to put the blocked addresses in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ips.policy import ast, names
from ips.policy.diagnostics import Span, did_you_mean
from ips.policy.model import BAN_TABLE, DETECTORS, FLOOD_RATES, DetectSpec, Policy
from ips.policy.resolve.values import Values

DEFAULT_BLOCK_SECONDS = 600.0  # `block` without a duration
# Most distinct sources `reflection` counts per destination (`sources N`): each destination
# keeps at most N of them, so N bounds its memory.
MAX_SOURCES = 10_000
# `bytes 10MB/s`: decimal units as network tools write them (iperf3, nload), binary ones,
# and bits (a link's speed).
BYTE_UNITS: dict[str, float] = {
    "B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 1024**2,
    "GiB": 1024**3, "kbit": 125, "Mbit": 125e3, "Gbit": 125e6,
}  # fmt: skip
_BYTERATE = re.compile(r"(\d{1,12})([A-Za-z]*)/(\w+)")
PER = {"volume": ("src", "dst", "port")}  # what each detector may count per (else src, dst)


@dataclass(slots=True)
class DetectorDraft:
    """A detector while its options are read: its parameters so far and its response."""

    name: str
    params: dict[str, object]
    response: str
    responses_given: list[ast.DetectOpt] = field(default_factory=list)


class DetectorResolver:
    def __init__(self, values: Values) -> None:
        self.values = values
        self.diags = values.diags
        self._ban_table_reported = False  # a missing `table banned`: one error, not six

    def resolve(self, stmt: ast.DetectStmt) -> DetectSpec | None:
        """The detector of `stmt`; None when there is no such detector."""
        schema = DETECTORS.get(stmt.name)
        if schema is None:
            self.diags.error(
                stmt.name_span,
                f"unknown detector '{stmt.name}'",
                did_you_mean(stmt.name, DETECTORS) or f"detectors are: {', '.join(DETECTORS)}",
                code="unknown-name",
            )
            return None
        draft = DetectorDraft(stmt.name, dict(schema.defaults), schema.response)
        seen: dict[str, Span] = {}
        for opt in stmt.opts:
            key = opt.key
            if key == "alert_only":
                key = "alert"
            if key not in schema.options:
                self.diags.error(
                    opt.span,
                    f"'{key}' is not an option of detector '{stmt.name}'",
                    did_you_mean(key, schema.options)
                    or f"options are: {', '.join(sorted(schema.options))}",
                    code="unknown-name",
                )
                continue
            if key in seen:
                self.diags.error(opt.span, f"'{key}' given twice (first at {seen[key]})")
                continue
            seen[key] = opt.span
            handler = OPTIONS.get(key)
            if handler is not None:
                handler(self, key, opt, draft)
        params, response = draft.params, draft.response
        if len(draft.responses_given) > 1:
            self.diags.error(
                draft.responses_given[1].span,
                "choose one response: block, limit or alert",
                code="conflict",
            )
        if response == "block" and "block" not in params:
            params["block"] = DEFAULT_BLOCK_SECONDS
        params["response"] = response
        self._check_kind(stmt, params, seen)
        if response == "block":
            where = draft.responses_given[-1].span if draft.responses_given else stmt.name_span
            self._check_blocking(stmt, where, params)
        return DetectSpec(stmt.name, stmt.span, params)

    # ---- one handler per option ------------------------------------------------------------------

    def count(self, key: str, opt: ast.DetectOpt, draft: DetectorDraft) -> None:
        """ports, hosts, count: how many make an offense."""
        value = opt.value
        assert isinstance(value, ast.Item)
        if value.lo < 1:
            self.diags.error(opt.span, f"'{key}' must be at least 1")
        draft.params[key] = value.lo

    def within(self, key: str, opt: ast.DetectOpt, draft: DetectorDraft) -> None:
        assert isinstance(opt.value, ast.Item)
        draft.params[key] = self.values.duration(opt.value)

    def rate(self, key: str, opt: ast.DetectOpt, draft: DetectorDraft) -> None:
        value = opt.value
        assert isinstance(value, ast.Item)
        draft.params[key] = self.values.rate(value.text, value.span)

    def per(self, key: str, opt: ast.DetectOpt, draft: DetectorDraft) -> None:
        value = opt.value
        assert isinstance(value, ast.Item)
        allowed = PER.get(draft.name, ("src", "dst"))
        if value.text not in allowed:
            self.diags.error(
                value.span,
                f"'per {value.text}': detector 'volume' counts per src, per dst or per port"
                if draft.name in PER
                else f"'per {value.text}': a detector counts per src or per dst",
                did_you_mean(value.text, allowed),
            )
        draft.params[key] = value.text

    def sources(self, key: str, opt: ast.DetectOpt, draft: DetectorDraft) -> None:
        """reflection's `sources N`: how many distinct senders make the answers an attack."""
        value = opt.value
        assert isinstance(value, ast.Item)
        if not 1 <= value.lo <= MAX_SOURCES:
            self.diags.error(
                opt.span,
                f"'sources' must be from 1 to {MAX_SOURCES}",
                "each destination keeps that many sources: the number bounds its memory",
                code="bad-value",
            )
        draft.params[key] = value.lo

    def volume_rate(self, key: str, opt: ast.DetectOpt, draft: DetectorDraft) -> None:
        """`bytes 10MB/s` (or a plain `bytes 5000/s`), `packets 1000/s`: per second."""
        value = opt.value
        assert isinstance(value, ast.Item)
        m = _BYTERATE.fullmatch(value.text)
        unit = m.group(2) if m else ""
        if (
            not m
            or int(m.group(1)) == 0
            or m.group(3) not in names.RATE_UNITS
            or (unit and (key != "bytes" or unit not in BYTE_UNITS))
        ):
            example = "10MB/s, 500kB/s, 1Gbit/s" if key == "bytes" else "1000/s, 60000/m"
            hint = did_you_mean(unit, BYTE_UNITS) if unit and key == "bytes" else None
            self.diags.error(
                value.span,
                f"'{value.text}' is not a {key} rate",
                hint or f"e.g. {example}",
                "bad-value",
            )
            return
        per_second = int(m.group(1)) / names.RATE_UNITS[m.group(3)]
        draft.params[key] = per_second * BYTE_UNITS.get(unit, 1.0)

    def port(self, key: str, opt: ast.DetectOpt, draft: DetectorDraft) -> None:
        """`port P`: the service port (volume: where the packets go; reflection: where the
        answers come from), kept as inclusive ranges, a negation folded in."""
        value = opt.value
        assert isinstance(value, ast.Value)
        spec = self.values.ports(value)
        if spec is None:
            draft.params.pop(key, None)  # any port (or errors, already reported)
            return
        ranges = spec.ranges
        if spec.negated:
            outside: list[tuple[int, int]] = []
            low = 0
            for lo, hi in ranges:
                if lo > low:
                    outside.append((low, lo - 1))
                low = hi + 1
            if low <= 65535:
                outside.append((low, 65535))
            ranges = tuple(outside)
        draft.params[key] = tuple(ranges)

    def response(self, key: str, opt: ast.DetectOpt, draft: DetectorDraft) -> None:
        """block [DURATION], limit or alert: what the detector does about an offense."""
        draft.responses_given.append(opt)
        draft.response = key
        if key == "block" and isinstance(opt.value, ast.Item):
            draft.params["block"] = self.values.duration(opt.value)

    def distributed(self, key: str, opt: ast.DetectOpt, draft: DetectorDraft) -> None:
        """slowscan's `distributed N` (ports of one host, several sources) or `off`."""
        value = opt.value
        assert isinstance(value, ast.Item)
        if value.kind == "int" and value.lo >= 1:
            draft.params[key] = value.lo
            return
        draft.params[key] = None
        if value.text != "off":
            self.diags.error(
                value.span,
                f"'distributed {value.text}': give a number of ports (at least 1) or off",
                did_you_mean(value.text, ("off",)),
                code="bad-value",
            )

    def ignore(self, key: str, opt: ast.DetectOpt, draft: DetectorDraft) -> None:
        assert isinstance(opt.value, ast.Value)
        draft.params["ignore"] = self.values.addr(opt.value, allow_dynamic=False)

    # ---- what a kind of detector needs ----------------------------------------------------------

    def _check_kind(
        self, stmt: ast.DetectStmt, params: dict[str, object], seen: dict[str, Span]
    ) -> None:
        name = stmt.name
        if (name, params.get("per")) in FLOOD_RATES and "rate" not in seen:
            params["rate"] = FLOOD_RATES[(name, str(params["per"]))]
        if name == "volume":
            given = [k for k in ("bytes", "packets") if k in seen]
            if len(given) != 1:
                where = seen[given[1]] if len(given) > 1 else stmt.name_span
                self.diags.error(
                    where,
                    "detector 'volume' needs one threshold: bytes RATE or packets RATE",
                    "e.g. detect volume bytes 10MB/s per dst port 443 alert",
                    code="conflict" if given else "missing-value",
                )
            else:
                params["metric"] = given[0]
                params["rate"] = params.pop(given[0], None)
        if name == "reflection" and params["response"] == "block":
            self.diags.warning(
                seen.get("block", stmt.name_span),
                "'reflection … block' bans the amplifiers: real servers answering a forged "
                "address, which is what the attacker wants",
                "`limit` drops the answers at the victim without banning anyone",
            )

    # ---- what needs the whole policy ----------------------------------------------------------

    def check_slowscan(self, policy: Policy, statements: Sequence[ast.Statement]) -> None:
        """`detect slowscan` is a long window over the weights portscan and sweep give: check
        that they are there to give them, and that its window is the longer one."""
        spec = policy.detectors.get("slowscan")
        if spec is None:
            return
        stmt = next(s for s in statements if isinstance(s, ast.DetectStmt) and s.span == spec.span)
        given = {opt.key: opt.span for opt in stmt.opts}
        feeds = {"portscan": ("ports", "distributed"), "sweep": ("hosts",)}
        if not any(name in policy.detectors for name in feeds):
            self.diags.error(
                stmt.name_span,
                "detector 'slowscan' has nothing to count: it keeps a long window over the "
                "failed probes that portscan and sweep weigh, and neither is configured",
                "add `detect portscan` and `detect sweep` (with `alert` if they should not block)",
                code="missing-detector",
            )
            return
        for name, keys in feeds.items():
            short = policy.detectors.get(name)
            if short is None:
                for key in keys:
                    if key in given:
                        self.diags.warning(
                            given[key],
                            f"slowscan's '{key}' counts the probes that {name} weighs, but "
                            f"there is no `detect {name}`: it never fires",
                            f"add `detect {name} alert`, or leave '{key}' out",
                        )
                continue
            long_window = spec.number("within")
            short_window = short.number("within")
            if long_window <= short_window:
                self.diags.warning(
                    given.get("within", stmt.name_span),
                    f"slowscan's window ({long_window:g}s) is no longer than "
                    f"{name}'s ({short_window:g}s): it sees nothing {name} does not",
                    "a long window is hours: within 6h",
                )

    # ---- a detector that blocks ------------------------------------------------------------------

    def _check_blocking(self, stmt: ast.DetectStmt, where: Span, params: dict[str, object]) -> None:
        # Blocks live in the dynamic table `banned` (an nftables set): without it a
        # detector could only pretend to block.
        table = self.values.tables.get(BAN_TABLE)
        if self._ban_table_reported:
            pass  # said once, at the first detector that blocks
        elif table is None:
            self._ban_table_reported = True
            self.diags.error(
                where,
                f"detector '{stmt.name}' blocks, but the policy has no dynamic table "
                f"'{BAN_TABLE}' to put the blocked addresses in",
                f"declare one: table {BAN_TABLE} dynamic timeout 1h "
                "(and `drop from @banned` first), or answer with `alert`",
                code="missing-table",
            )
        elif table.kind != "dynamic":
            self._ban_table_reported = True
            self.diags.error(
                where,
                f"detector '{stmt.name}' blocks, but table '{BAN_TABLE}' is not dynamic "
                f"(declared at {table.span})",
                f"declare it as: table {BAN_TABLE} dynamic timeout 1h",
                code="missing-table",
            )
        if params.get("per") in ("dst", "port"):
            self.diags.warning(
                where,
                f"'{stmt.name} per dst … block' bans every source that sends while its "
                "destination is over the rate, and flood sources are easily spoofed",
                "`limit` protects the destination without banning anyone",
            )


OPTIONS: dict[str, Callable[[DetectorResolver, str, ast.DetectOpt, DetectorDraft], None]] = {
    "ports": DetectorResolver.count,
    "hosts": DetectorResolver.count,
    "count": DetectorResolver.count,
    "within": DetectorResolver.within,
    "rate": DetectorResolver.rate,
    "per": DetectorResolver.per,
    "block": DetectorResolver.response,
    "limit": DetectorResolver.response,
    "alert": DetectorResolver.response,
    "distributed": DetectorResolver.distributed,
    "ignore": DetectorResolver.ignore,
    "sources": DetectorResolver.sources,
    "bytes": DetectorResolver.volume_rate,
    "packets": DetectorResolver.volume_rate,
    "port": DetectorResolver.port,
}
