"""How long the store keeps each level: raw rows, minute rollups, hour rollups.

Written `raw 7d, 1m 90d, 1h 1y, 1d 10y` (the default): a level, then an age in s, m, h, d, w or y
(365 days); `0` or `forever` keeps a level for ever. Pure: the decisions take `now`.
"""

from __future__ import annotations

from dataclasses import dataclass

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
DEFAULT_RETENTION = "raw 7d, 1m 90d, 1h 1y, 1d 10y"
RETENTION_LEVELS = ("raw", "1m", "1h", "1d")


def parse_age(text: str) -> float:
    """Seconds of an age like 7d, 90d, 1y, 36h, 600 (seconds); ValueError if not one."""
    t = text.strip().lower()
    if t in ("0", "forever"):
        return 0.0
    unit = t[-1:]
    number = t[:-1] if unit in UNITS else t
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not an age: {text!r} (e.g. 7d, 12h, 90d, 1y)") from None
    if value < 0:
        raise ValueError(f"an age is not negative: {text!r}")
    return value * UNITS.get(unit, 1)


@dataclass(frozen=True)
class Retention:
    """Seconds each level is kept (0: for ever)."""

    raw: float = 7 * 86400
    minute: float = 90 * 86400
    hour: float = 365 * 86400
    # A day's rows are few (one per key and day): ten years of them cost less than a week
    # of raw rows.
    day: float = 10 * 365 * 86400

    @classmethod
    def parse(cls, text: str) -> Retention:
        """`raw 7d, 1m 90d, 1h 1y, 1d 10y`; a level left out keeps its default."""
        ages = {"raw": cls.raw, "1m": cls.minute, "1h": cls.hour, "1d": cls.day}
        for part in text.replace(";", ",").split(","):
            words = part.split()
            if not words:
                continue
            if len(words) != 2 or words[0] not in ages:
                raise ValueError(
                    f"retention: {part.strip()!r}: a level ({', '.join(RETENTION_LEVELS)}) "
                    "and an age, e.g. 'raw 7d, 1m 90d, 1h 1y, 1d 10y'"
                )
            ages[words[0]] = parse_age(words[1])
        return cls(ages["raw"], ages["1m"], ages["1h"], ages["1d"])

    def cutoffs(self, now: float) -> dict[str, float | None]:
        """For each level, the time before which its rows go (None: kept for ever)."""
        return {level: (now - age if age > 0 else None) for level, age in self._ages()}

    def _ages(self) -> tuple[tuple[str, float], ...]:
        return (("raw", self.raw), ("1m", self.minute), ("1h", self.hour), ("1d", self.day))

    def text(self) -> str:
        def word(age: float) -> str:
            if age == 0:
                return "forever"
            for unit in ("y", "d", "h", "m"):
                if age % UNITS[unit] == 0:
                    return f"{int(age // UNITS[unit])}{unit}"
            return f"{age:g}s"

        return ", ".join(f"{level} {word(age)}" for level, age in self._ages())
