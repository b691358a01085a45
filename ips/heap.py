"""How a long-running engine process sets up Python's cyclic garbage collector.

A full collection scans every live object. A worker holding 100,000 flows (a connection storm
keeps that many for the flow timeouts) has ~400,000 objects: measured in the lab, each full
collection stalled the packet path for 0.2-0.3 s, six times in 15 s, and all collections took
~20 % of the worker's user time. Packets wait in the kernel queue meanwhile (and beyond its
length they are dropped or bypass us, per `--fail-open`).

The engine makes no reference cycles per packet or per flow (tests/pure/test_heap.py holds it to
that), so flows are freed by reference counting and full collections find nothing to free. The
young generations keep CPython's defaults: they are cheap (they scan only new objects) and catch
a stray cycle early. Full collections become rare: CPython runs one after FULL_AFTER collections
of the middle generation (minutes under load), and then only if the old generation has grown by
a quarter since the last one (its own rule). What is alive once the worker is ready — modules,
the compiled policy (10,000 rules are ~10^5 objects) — is frozen out of every scan (gc.freeze),
as CPython's documentation advises for forked servers.

Not for the core: this is process-wide state, set by the processes that run the engine.
"""

from __future__ import annotations

import gc

FULL_AFTER = 1000  # middle-generation collections before a full one (CPython's default: 10)


def tune_collector() -> None:
    """Keep the young generations' thresholds, make full collections rare."""
    young, middle, _full = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_AFTER)


def settle() -> None:
    """Free what is cyclic garbage now, and freeze what is left out of later scans.

    Call it when a pause is acceptable: before the first packet, and after a policy load.
    A compiled policy has cycles (its rules and their decisions refer to each other), so the
    policy a load replaces is freed here; that is why frozen objects are thawed first. The
    pause is one full collection: a few ms at start, up to ~0.3 s with 100,000 flows."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def collector_stats() -> dict[str, object]:
    """Collections and the objects they freed, per generation ("0" young .. "2" full, as
    Prometheus' Python collector labels them), and how many objects are frozen. Dicts of
    numbers, so the daemon sums several workers' key by key."""
    per_generation = gc.get_stats()
    return {
        "collections": {str(i): g["collections"] for i, g in enumerate(per_generation)},
        "collected": {str(i): g["collected"] for i, g in enumerate(per_generation)},
        "frozen": gc.get_freeze_count(),
    }
