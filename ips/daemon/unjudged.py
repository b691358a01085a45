"""Packets that passed the gateway without inspection, and the alert that says so.

With the queue's fail-open flag (the default, `ipsctl run --fail-mode open`), the kernel
accepts a packet it cannot put in the queue — the queue is full (queue-maxlen), or the
worker's socket buffer is — without any word to anyone: on this kernel (6.x) such a packet is
counted nowhere. /proc/net/netfilter/nfnetlink_queue counts queue_dropped and user_dropped
only when the flag is off (the packet is then dropped), and its id_sequence numbers only the
packets that got into the queue. Measured in the lab (issue 19, item 2): a 20 s SYN flood with
random sources, 268,665 of 3,039,975 packets judged, 17 of 30 path-traversal requests through,
every counter at 0.

So the count is an arithmetic on three readings, taken in this order:

    offered   the packets the kernel sent towards the queues: the counter of the rule that
              queues (`ipsctl:to-userspace`), carried over policy swaps by the diversion
    waiting   the packets in the queues now (queue_total) and the ones the kernel dropped for
              them (queue_dropped + user_dropped, with the flag off)
    judged    the packets the workers gave a verdict, counted by each worker as it gives it
              and kept in shared memory by queue (so a replaced worker's count stays)

    unjudged = offered - judged - waiting - dropped

In that order every error of timing makes the count smaller, never larger (a packet offered
after the first reading and judged before the last is subtracted without being added; a
packet judged whose verdict is still in a batch is in judged and in waiting), so a quiet
gateway never shows a false "gate open". Once traffic settles the count is exact.

The ledger here is pure: readings in, the count and the alerts out (the supervisor reads the
kernel and writes the events).
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNJUDGED_SID = 9000901  # the `alert` event's signature_id (9000000-9000999: ipsctl's own)
ALERT_EVERY = 60.0  # seconds between two alerts while packets keep passing unjudged
# Growth smaller than this between two alerts is not reported (a verdict batch in flight,
# one reading's worth of rounding): a real flood is far past it within a second.
ALERT_SLACK = 64


@dataclass(frozen=True, slots=True)
class QueueReading:
    """One reading of the queue side (cumulative counts since the daemon started, except
    waiting, and queue_dropped/user_dropped, which are /proc's: since the queue was bound)."""

    offered: int
    judged: int
    waiting: int = 0
    queue_dropped: int = 0
    user_dropped: int = 0


def unjudged_count(offered: int, judged: int, waiting: int, dropped: int) -> int:
    """Packets offered to the queue that no worker judged and the kernel did not drop: they
    passed without inspection (fail-open). Never below 0."""
    return max(0, offered - judged - waiting - dropped)


class _Running:
    """A counter that restarts at 0 (a queue rebound by a new worker) made cumulative."""

    __slots__ = ("carried", "last")

    def __init__(self) -> None:
        self.carried = 0
        self.last = 0

    def update(self, raw: int) -> int:
        if raw < self.last:
            self.carried += self.last
        self.last = raw
        return self.carried + raw


@dataclass(frozen=True, slots=True)
class UnjudgedAlert:
    """What the alert says: `passed` packets went through without inspection since the last
    alert (`total` since the daemon started)."""

    passed: int
    total: int
    first: bool  # the first alert of this episode (the gate just opened)
    signature_id: int = UNJUDGED_SID

    @property
    def signature(self) -> str:
        return f"unjudged packets: the queue was full; {self.passed} passed without inspection"


@dataclass
class UnjudgedLedger:
    """The running count, and when to tell the admin (at most once per `alert_every`
    seconds while the count grows, and at once when it starts growing after a quiet spell)."""

    alert_every: float = ALERT_EVERY
    slack: int = ALERT_SLACK
    offered: int = 0
    judged: int = 0
    waiting: int = 0
    dropped: int = 0
    unjudged: int = 0
    alerts: int = 0
    last_alert_at: float | None = None
    alerted_level: int = 0  # `unjudged` when the last alert went out (or was suppressed)
    episode_open: bool = False
    last_growth_at: float | None = None
    _queue_dropped: _Running = field(default_factory=_Running)
    _user_dropped: _Running = field(default_factory=_Running)

    def update(self, reading: QueueReading, now: float) -> int:
        """Take a reading; returns the count of packets passed unjudged since the start."""
        self.offered = reading.offered
        self.judged = reading.judged
        self.waiting = reading.waiting
        self.dropped = self._queue_dropped.update(
            reading.queue_dropped
        ) + self._user_dropped.update(reading.user_dropped)
        count = unjudged_count(self.offered, self.judged, self.waiting, self.dropped)
        if count > self.unjudged:
            self.last_growth_at = now
            self.unjudged = count  # a reading's error only lowers it: keep the highest
        return self.unjudged

    def due_alert(self, now: float, enabled: bool = True) -> UnjudgedAlert | None:
        """The alert to send now, if any. An episode starts when the count has grown past
        the slack since the last alert; it ends after `alert_every` without growth. Within
        an episode, one alert per `alert_every` with what passed since the last one. With
        alerts disabled (`set fail-open-alert off`) nothing is sent, and nothing is kept
        back for later either."""
        grown = self.unjudged - self.alerted_level
        if (
            self.episode_open
            and self.last_growth_at is not None
            and (now - self.last_growth_at >= self.alert_every)
        ):
            self.episode_open = False
        if grown <= self.slack:
            return None
        first = not self.episode_open
        if (
            not first
            and self.last_alert_at is not None
            and (now - self.last_alert_at < self.alert_every)
        ):
            return None
        self.episode_open = True
        self.alerted_level = self.unjudged
        if not enabled:
            return None
        self.last_alert_at = now
        self.alerts += 1
        return UnjudgedAlert(grown, self.unjudged, first)

    def as_dict(self) -> dict[str, object]:
        """status `unjudged` (and the EVE `stats` event's `ipsctl.unjudged`)."""
        return {
            "packets": self.unjudged,  # passed without inspection since the daemon started
            "offered": self.offered,  # sent towards the queues by the kernel's rules
            "judged": self.judged,  # given a verdict by the workers
            "waiting": self.waiting,
            "dropped": self.dropped,  # dropped by the kernel for the queue (fail-closed)
            "alerts": self.alerts,
            "gate_open": self.episode_open,
        }
