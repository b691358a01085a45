"""When the worker reads the kernel's neighbour table and routes (ips/daemon/worker.py
LinkViews): at start, then when the watch announces a change (at most every REFRESH_EVERY
seconds), else every WATCHED_REFRESH_EVERY seconds; every REFRESH_EVERY seconds without a
watch. The watch here is scripted (its socket is tested in tests/lab/test_link_watch_lab.py);
what is tested is the schedule the worker's loop follows."""

from __future__ import annotations

import struct

from ips.daemon.worker import LinkViews
from ips.engine import Engine
from ips.kernel.neighbours import (
    NDA_DST,
    NDA_LLADDR,
    NUD_DELAY,
    NUD_PROBE,
    NUD_REACHABLE,
    NUD_STALE,
    REFRESH_EVERY,
    RTM_DELNEIGH,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    WATCHED_REFRESH_EVERY,
    announces_change,
)
from ips.policy.resolve import load_policy_text


class ScriptedWatch:
    """What TableWatch.changed answers, in order; an OSError instance is raised."""

    def __init__(self, answers: list[bool | OSError]) -> None:
        self.answers = list(answers)
        self.overruns = 0
        self.closed = False

    def fileno(self) -> int:
        return 99

    def changed(self, _neighbours: dict[bytes, bytes] | None) -> bool:
        answer = self.answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    def close(self) -> None:
        self.closed = True


def views(watch: ScriptedWatch | None) -> tuple[LinkViews, list[float]]:
    engine = Engine(load_policy_text("set default accept\n", "t.rules"))
    reads: list[float] = []
    links = LinkViews(engine, read=lambda: reads.append(0.0), watch=watch)  # type: ignore[arg-type]
    return links, reads


def run_loop(links: LinkViews, until: float, step: float, announce_at: set[float]) -> list[float]:
    """The worker loop's part: an announcement wakes it, then a read when due."""
    read_at: list[float] = []
    t = 0.0
    while t <= until:
        if round(t, 3) in announce_at:
            links.announced(t)
        if t >= links.due:
            links.refresh(t)
            read_at.append(round(t, 3))
        t = round(t + step, 3)
    return read_at


def test_without_a_watch_the_tables_are_read_every_refresh_every() -> None:
    links, _ = views(None)
    assert links.fileno() is None
    read_at = run_loop(links, 5.0, 0.25, set())
    assert read_at == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert REFRESH_EVERY == 1.0


def test_a_watched_idle_gateway_reads_them_only_every_watched_refresh_every() -> None:
    links, _ = views(ScriptedWatch([]))
    assert links.fileno() == 99
    read_at = run_loop(links, 2 * WATCHED_REFRESH_EVERY, 0.5, set())
    assert read_at == [0.0, WATCHED_REFRESH_EVERY, 2 * WATCHED_REFRESH_EVERY]
    assert links.stats()["watched"] is True


def test_an_announcement_reads_them_at_once_but_never_twice_within_refresh_every() -> None:
    # a change at 5 s (read at once), a burst at 5.25 and 5.5 (one read, at 6 s), an empty
    # wake-up at 9 s (nothing changed: no read)
    links, reads = views(ScriptedWatch([True, True, True, False]))
    read_at = run_loop(links, 10.0, 0.25, {5.0, 5.25, 5.5, 9.0})
    assert read_at == [0.0, 5.0, 6.0]
    assert len(reads) == 3
    assert links.stats()["announcements"] == 3
    # the next unannounced read is WATCHED_REFRESH_EVERY after the last one
    assert links.due == 6.0 + WATCHED_REFRESH_EVERY


def test_a_broken_watch_falls_back_to_reading_every_second() -> None:
    watch = ScriptedWatch([OSError(9, "Bad file descriptor")])
    links, _ = views(watch)
    read_at = run_loop(links, 4.0, 0.5, {2.0})
    assert read_at == [0.0, 2.0, 3.0, 4.0]
    assert watch.closed and links.fileno() is None
    stats = links.stats()
    assert stats["watched"] is False and stats["errors"] == 1
    assert "Bad file descriptor" in str(stats["last_error"])


# ---- which announcements change the view (ips/kernel/neighbours.py announces_change) -------

NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20
A = bytes([10, 10, 1, 77])
MAC = bytes.fromhex("020000000177")
OTHER_MAC = bytes.fromhex("020000000178")


def neigh(msg_type: int, state: int, addr: bytes = A, mac: bytes | None = MAC) -> bytes:
    """An rtnetlink neighbour message as the kernel sends it (ndmsg, NDA_DST, NDA_LLADDR)."""
    attrs = b""
    for attr_type, value in ((NDA_DST, addr), (NDA_LLADDR, mac)):
        if value is None:
            continue
        attr = struct.pack("=HH", 4 + len(value), attr_type) + value
        attrs += attr + bytes(-len(attr) % 4)
    body = struct.pack("=BxxxiHBB", 2, 3, state, 0, 1) + attrs
    return struct.pack("=IHHII", 16 + len(body), msg_type, 0, 0, 0) + body


def test_a_neighbours_state_cycling_is_no_change() -> None:
    view = {A: MAC}
    for state in (NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE):
        assert not announces_change(neigh(RTM_NEWNEIGH, state), view)
    # an address the view does not have, unresolved (being asked for): nothing either
    assert not announces_change(neigh(RTM_NEWNEIGH, NUD_INCOMPLETE, addr=bytes(4), mac=None), view)
    assert not announces_change(neigh(RTM_DELNEIGH, NUD_FAILED, addr=bytes(4)), view)


def test_what_the_view_holds_changing_is_a_change() -> None:
    view = {A: MAC}
    assert announces_change(neigh(RTM_NEWNEIGH, NUD_REACHABLE, mac=OTHER_MAC), view)  # new MAC
    assert announces_change(neigh(RTM_NEWNEIGH, NUD_REACHABLE), {})  # newly resolved
    assert announces_change(neigh(RTM_NEWNEIGH, NUD_FAILED, mac=None), view)  # unresolved
    assert announces_change(neigh(RTM_DELNEIGH, NUD_REACHABLE), view)  # deleted
    route = struct.pack("=IHHII", 28, RTM_NEWROUTE, 0, 0, 0) + bytes(12)
    assert announces_change(route, view)
    # one datagram, a quiet message then a change
    both = neigh(RTM_NEWNEIGH, NUD_STALE) + neigh(RTM_DELNEIGH, NUD_STALE)
    assert announces_change(both, view)
    # what cannot be read counts as a change
    assert announces_change(neigh(RTM_NEWNEIGH, NUD_STALE)[:-3], view)
    assert announces_change(neigh(RTM_NEWNEIGH, NUD_STALE, addr=b"")[:28], view)
