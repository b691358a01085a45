"""What a sink is, for the daemon: the interfaces its worker and supervisor hold sinks by.

Two ways out of the daemon:
  push  a worker hands every batch of its engine's effects (alerts, logs, blocks, flow ends) to
        each of its sinks, in order, on the packet path: EveWriter (eve.py, to a RotatingLog
        and a SyslogSink), RecentAlerts (meter.py, for `ipsctl top`), Webhook (webhook.py).
        A store or a broker sink is one more of these.
  pull  the supervisor serves its status to whoever asks: the Prometheus endpoint.

Where a sink writes to (a file, a socket, a sender thread) is an Output: the worker reports
its counters in `status` and closes it at stop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ips.core.events import Effect


class Sink(Protocol):
    """Takes the engine's effects, one batch at a time. Called on the packet path: it must
    not block (a slow destination gets a queue and a thread of its own, as the webhook)."""

    def events(self, events: Iterable[Effect]) -> None: ...


class Output(Protocol):
    """A destination the worker owns: counted in `status` (`sinks`), closed at stop."""

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Exporter(Protocol):
    """A pull sink: it reads the daemon's status when asked, until closed at stop."""

    def close(self) -> None: ...
