"""What a mix asks for, as text an analyst writes, parsed into values (pure).

- ratios: ``80/20`` (in the order the classes were given) or ``benign=95,ddos=3,scan=2``;
- a timeline: ``0-10m benign; 10-15m 30% ddos; 15-20m 60% ddos, 10% scan`` -- windows
  separated by ``;``, each a time range (``s``, ``m``, ``h``; a unit written once at the end
  applies to both ends) and the attack shares of its packets (the rest is benign; ``benign``
  alone means no attack);
- durations: ``90``, ``90s``, ``10m``, ``1.5h``;
- networks per role: ``10.50.1.0/24`` (several, one per address family, may be given).

Every problem raises `SpecError` with a message that names what was written.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from dataclasses import dataclass

__all__ = [
    "BENIGN",
    "ROLES",
    "Network",
    "SpecError",
    "Window",
    "parse_duration",
    "parse_networks",
    "parse_ratios",
    "parse_timeline",
]

BENIGN = "benign"
# Who an address is in the mix: a benign flow goes from a client to a server, an attack flow
# from an attacker to a victim (the sender of a flow's first packet is its initiator).
ROLES = ("clients", "servers", "attackers", "victims")
US = 1_000_000  # the plan counts time in integer microseconds: no float drift, byte-identical

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
_CLASS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")


class SpecError(ValueError):
    """A mix description that cannot be carried out, with what was written."""


@dataclass(frozen=True)
class Window:
    """A stretch of the output's timeline, in microseconds from its start, with the share of
    packets each attack class gets there (benign gets the rest)."""

    start_us: int
    end_us: int
    attack_shares: tuple[tuple[str, float], ...]  # (class, fraction 0..1), in written order

    @property
    def benign_share(self) -> float:
        return max(0.0, 1.0 - sum(share for _, share in self.attack_shares))

    def shares(self) -> list[tuple[str, float]]:
        """Every class with a share here, benign first (when it has one)."""
        out = [(BENIGN, self.benign_share)] if self.benign_share > 0 else []
        return out + list(self.attack_shares)

    def describe(self) -> str:
        parts = [f"{_fmt_time(self.start_us)}-{_fmt_time(self.end_us)}"]
        if not self.attack_shares:
            parts.append(BENIGN)
        else:
            parts.append(", ".join(f"{_fmt_pct(s)}% {c}" for c, s in self.attack_shares))
        return " ".join(parts)


@dataclass(frozen=True)
class Network:
    net: ipaddress.IPv4Network | ipaddress.IPv6Network

    @property
    def family(self) -> int:
        return self.net.version


def check_class_name(name: str) -> str:
    if not _CLASS_NAME.match(name):
        raise SpecError(
            f"class name {name!r}: a letter, then letters, digits, '_', '.' or '-' (up to 40)"
        )
    return name


def parse_duration(text: str) -> int:
    """`10m` -> microseconds. A bare number is seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise SpecError(f"duration {text!r}: write a number with s, m or h (e.g. 90s, 10m)")
    return round(float(m.group(1)) * _UNITS[m.group(2)] * US)


def parse_ratios(text: str, classes: list[str]) -> list[tuple[str, float]]:
    """`80/20` (classes in the given order) or `benign=80,ddos=20` -> [(class, fraction)].

    The numbers are weights: they need not add up to 100 (``4/1`` is 80/20).
    """
    text = text.strip()
    pairs: list[tuple[str, float]] = []
    if "=" in text:
        for part in re.split(r"[,\s]+", text):
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise SpecError(f"ratio {text!r}: write class=weight, e.g. benign=80,ddos=20")
            pairs.append((check_class_name(name.strip()), _weight(value, text)))
    else:
        values = [v for v in re.split(r"[/:,\s]+", text) if v]
        if len(values) != len(classes):
            raise SpecError(
                f"ratio {text!r} has {len(values)} numbers for {len(classes)} classes "
                f"({', '.join(classes)}); give one per class or write class=weight"
            )
        pairs = [(c, _weight(v, text)) for c, v in zip(classes, values, strict=True)]
    names = [c for c, _ in pairs]
    if len(set(names)) != len(names):
        raise SpecError(f"ratio {text!r}: a class is named twice")
    unknown = [c for c in names if c not in classes]
    if unknown:
        raise SpecError(
            f"ratio {text!r}: no input of class {unknown[0]!r} (inputs: {', '.join(classes)})"
        )
    total = sum(w for _, w in pairs)
    if total <= 0:
        raise SpecError(f"ratio {text!r}: the weights add up to 0")
    return [(c, w / total) for c, w in pairs if w > 0]


def _weight(value: str, text: str) -> float:
    try:
        w = float(value.rstrip("%"))
    except ValueError:
        raise SpecError(f"ratio {text!r}: {value!r} is not a number") from None
    if w < 0 or w != w or w == float("inf"):
        raise SpecError(f"ratio {text!r}: {value!r} must be a number of 0 or more")
    return w


_RANGE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*-\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*(.*)$", re.DOTALL
)
_SHARE = re.compile(r"^(\d+(?:\.\d+)?)\s*%\s*([A-Za-z][A-Za-z0-9_.-]*)$")


def parse_timeline(text: str, classes: list[str]) -> list[Window]:
    """`0-10m benign; 10-15m 30% ddos; 15-20m 60% ddos, 10% scan` -> windows in time order.

    Windows must not overlap; gaps between them carry no packets. A share names an attack
    class that has an input; the shares of a window add up to 100 % at most.
    """
    windows: list[Window] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        m = _RANGE.match(part)
        if not m:
            raise SpecError(f"timeline window {part!r}: start with a time range such as 10-15m")
        a, unit_a, b, unit_b, rest = m.groups()
        unit_a = unit_a or unit_b
        start = round(float(a) * _UNITS[unit_a] * US)
        end = round(float(b) * _UNITS[unit_b] * US)
        if end <= start:
            raise SpecError(f"timeline window {part!r}: its end is not after its start")
        shares: list[tuple[str, float]] = []
        for item in (i.strip() for i in re.split(r"[,+]|\band\b", rest)):
            if not item or item == BENIGN:
                continue
            sm = _SHARE.match(item)
            if not sm:
                raise SpecError(
                    f"timeline window {part!r}: {item!r} is not a share such as '30% ddos'"
                )
            pct, name = float(sm.group(1)), sm.group(2)
            if name == BENIGN:
                raise SpecError(
                    f"timeline window {part!r}: benign gets what the attacks leave; "
                    "give the attacks' shares only"
                )
            if name not in classes:
                raise SpecError(
                    f"timeline window {part!r}: no input of class {name!r} "
                    f"(inputs: {', '.join(classes)})"
                )
            if any(c == name for c, _ in shares):
                raise SpecError(f"timeline window {part!r}: {name!r} is named twice")
            shares.append((name, pct / 100.0))
        if sum(s for _, s in shares) > 1.0 + 1e-9:
            raise SpecError(f"timeline window {part!r}: the shares add up to more than 100 %")
        if not shares and BENIGN not in classes:
            raise SpecError(f"timeline window {part!r}: benign only, but no benign input")
        if sum(s for _, s in shares) < 1.0 - 1e-9 and BENIGN not in classes:
            raise SpecError(
                f"timeline window {part!r}: the attacks leave room for benign traffic, but "
                "there is no benign input (make the shares add up to 100 %)"
            )
        windows.append(Window(start, end, tuple(shares)))
    if not windows:
        raise SpecError("the timeline has no window")
    windows.sort(key=lambda w: w.start_us)
    for before, after in itertools.pairwise(windows):
        if after.start_us < before.end_us:
            raise SpecError(
                f"timeline windows {before.describe()!r} and {after.describe()!r} overlap"
            )
    return windows


def parse_networks(texts: list[str], role: str) -> list[Network]:
    """The networks of one role; at most one per address family."""
    nets: list[Network] = []
    for text in texts:
        for item in (t.strip() for t in text.split(",")):
            if not item:
                continue
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise SpecError(f"--{role} {item!r}: not a network such as 10.50.1.0/24") from None
            if net.num_addresses < 4:
                raise SpecError(f"--{role} {item!r}: too small a network (4 addresses at least)")
            if any(n.family == net.version for n in nets):
                raise SpecError(f"--{role}: one network per address family")
            nets.append(Network(net))
    return nets


def _fmt_time(us: int) -> str:
    s = us / US
    if s == 0:
        return "0"
    if s % 60 == 0 and s >= 60:
        return f"{s / 60:g}m"
    return f"{s:g}s"


def _fmt_pct(share: float) -> str:
    return f"{share * 100:g}"
