"""What the NFQUEUE and tap adapters share: the engine, where its effects go, and the
heartbeat inside long bursts. The daemon's worker loop drives an adapter through bind() (an
fd to select on), process_pending(), effects() and unbind()."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ips.core.events import Effect
from ips.engine import Engine

if TYPE_CHECKING:
    from ips.kernel.blocks import KernelBlocks

BUSY_EVERY = 1024  # packets between two calls of on_busy inside one long burst


class EngineAdapter:
    def __init__(
        self,
        engine: Engine,
        *,
        on_events: Callable[[list[Effect]], None] | None = None,
        clock: Callable[[], float] = time.time,
        blocks: KernelBlocks | None = None,
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_events = on_events
        self.clock = clock
        self.blocks = blocks
        # Called every BUSY_EVERY packets of a burst that does not end (a flood): the daemon
        # beats its heartbeat there, so a busy worker is not taken for a hung one.
        self.on_busy = on_busy
        self.verdict_errors = 0
        self._count = 0

    def effects(self, effects: list[Effect]) -> None:
        """Effects that did not come with a packet (the engine's tick, manual operations):
        blocks written to the kernel at once, everything to on_events."""
        if self.blocks is not None and self.blocks.note(effects):
            self.blocks.flush()
        if self.on_events is not None:
            self.on_events(effects)

    def _packet_effects(self, decision_effects: object) -> None:
        """A decision's effects: blocks noted (written at the end of the burst, or once
        overdue), everything to on_events."""
        effects = list(decision_effects)  # type: ignore[call-overload]
        if self.blocks is not None:
            self.blocks.note(effects)
        if self.on_events is not None:
            self.on_events(effects)

    def _counted(self) -> None:
        """After each packet: overdue blocks written, the heartbeat inside long bursts."""
        blocks = self.blocks
        if blocks is not None and blocks.pending_since is not None and blocks.overdue():
            blocks.flush()
        self._count += 1
        if self._count >= BUSY_EVERY:
            self._count = 0
            if self.on_busy is not None:
                self.on_busy()
