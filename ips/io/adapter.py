"""The packet adapter: how the daemon's worker loop (ips/daemon/worker.py) holds any of the
ways packets reach the engine, and what the NFQUEUE and tap adapters share.

    adapter                     reads                          verdicts
    QueueWorker  (nfqueue.py)   an NFQUEUE queue (+ NFLOG)     enforced
    DivertWorker (divert.py)    a pydivert handle              enforced
    TapWorker    (tap.py)       an interface's frames          recorded as would_…

(Captures, ips/io/pcap.py, are read by `ipsctl replay` straight into the engine: no loop, no
verdicts to give, so no adapter.)

The loop: bind() gives an fd to wait on, process_pending() when it is readable, effects()
for what the engine's tick makes, unbind() at the end; the rest of PacketAdapter is what the
worker's control commands ask of it.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ips.core.events import Effect
from ips.engine import Engine

if TYPE_CHECKING:
    from ips.kernel.blocks import KernelBlocks

BUSY_EVERY = 1024  # packets between two calls of on_busy inside one long burst


class BlockWriter(Protocol):
    """Where an adapter writes its engine's Block/Unblock effects: the kernel's sets
    (ips.kernel.blocks.KernelBlocks) or the divert backend's ban set (UserBlocks)."""

    @property
    def pending(self) -> bool: ...

    def note(self, effects: Iterable[Effect]) -> bool: ...

    def overdue(self) -> bool: ...

    def flush(self) -> None: ...

    def stats(self) -> dict[str, object]: ...


class JudgedCell(Protocol):
    """A shared counter (multiprocessing.Value of an unsigned 64-bit integer): the packets
    a queue's workers gave a verdict so far, written by the worker, read by the supervisor."""

    value: int


class ReplyCounts(Protocol):
    """The reject replies an adapter sent, and those it could not send."""

    sent: int
    failed: int


class PacketAdapter(Protocol):
    engine: Engine
    on_events: Callable[[list[Effect]], None] | None
    verdict_errors: int  # verdicts the kernel did not take
    mode: str  # "inline": verdicts enforced; "tap": only recorded
    copy_fd: int | None  # a second fd to wait on, once bound (NFQUEUE: offload's copies)

    # Read-only here: each adapter holds its own kind of these.
    @property
    def blocks(self) -> BlockWriter | None: ...

    @property
    def replies(self) -> ReplyCounts: ...

    def bind(self) -> int:
        """Start reading; the fd that is readable when packets wait."""
        ...

    def unbind(self) -> None:
        """Stop reading (an inline queue's fail mode covers the packets from now on)."""
        ...

    def process_pending(self) -> None:
        """Judge every packet waiting."""
        ...

    def wait_and_process(
        self, fd: int, others: list[int], timeout: float, linger: bool = False
    ) -> list[int]:
        """Wait up to timeout for fd (bind's) or others; judge the packets waiting on fd;
        return those of others that are readable. With linger, packets judged do not end
        the wait: it goes on until others are readable or the timeout is over (the caller
        has nothing to do before then), or the packets made blocks to write."""
        ...

    def process_copies(self) -> None:
        """Read what waits on copy_fd."""
        ...

    def effects(self, effects: list[Effect]) -> None:
        """Effects without a packet (the engine's tick, manual blocks, flows ended at stop)."""
        ...

    def policy_loaded(self) -> None:
        """The engine has a new policy (divert: its filter follows)."""
        ...

    def command(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Answer a control message that is the adapter's own (divert's ban set); None for
        every other."""
        ...

    def stats_sections(self) -> dict[str, object]:
        """The adapter's own sections of the worker's stats: {"tap": …}, {"divert": …} or
        {"nfq_client": …}."""
        ...


def wait_then_process(
    adapter: PacketAdapter, fd: int, others: list[int], timeout: float, linger: bool = False
) -> list[int]:
    """PacketAdapter.wait_and_process as select(2) and process_pending do it."""
    deadline = time.monotonic() + timeout
    while True:
        ready = wait_readable([fd, *others], timeout)
        if fd in ready:
            adapter.process_pending()
        ready_others = [f for f in ready if f != fd]
        if not linger or ready_others or not ready:
            return ready_others
        blocks = adapter.blocks
        if blocks is not None and blocks.pending:  # written by the caller at once
            return ready_others
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return ready_others


def wait_readable(fds: list[int], timeout: float) -> list[int]:
    """select() on fds, retrying on EINTR."""
    while True:
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
            return ready
        except InterruptedError:
            continue


class EngineAdapter:
    """The engine, where its effects go, and the heartbeat inside long bursts: what the
    NFQUEUE and tap adapters share (a PacketAdapter without packets of its own)."""

    def wait_and_process(
        self, fd: int, others: list[int], timeout: float, linger: bool = False
    ) -> list[int]:
        return wait_then_process(self, fd, others, timeout, linger)  # type: ignore[arg-type]

    mode = "inline"
    copy_fd: int | None = None
    replies: ReplyCounts

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

    def process_copies(self) -> None:
        """Nothing: only NFQUEUE has a second source."""

    def policy_loaded(self) -> None:
        """Nothing: the engine's new policy is all there is to it."""

    def command(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def stats_sections(self) -> dict[str, object]:
        return {}

    def effects(self, effects: list[Effect]) -> None:
        """Effects that did not come with a packet (the engine's tick, manual operations):
        blocks written to the kernel at once, everything to on_events."""
        if self.blocks is not None and self.blocks.note(effects):
            self.blocks.flush()
        if self.on_events is not None:
            self.on_events(effects)

    def _packet_effects(self, decision_effects: Iterable[Effect]) -> None:
        """A decision's effects: blocks noted (written at the end of the burst, or once
        overdue), everything to on_events."""
        effects = list(decision_effects)
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
