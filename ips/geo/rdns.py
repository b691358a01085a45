"""Reverse DNS for display: the PTR name of an address, asked of the system resolver in the
background, cached with a TTL, bounded in entries, in queries in flight and in queries per
second.

Never on the packet path. `name(addr)` only reads the cache: a fresh answer is returned, a
missing or stale one is queued for the resolver threads (when the bounds allow) and None (or
the stale name) is returned at once; a later call sees the answer. Used where a record is
written or a view is drawn (ips/geo/enrich.py), and only where passive DNS has no name.

The resolver is a function (packed address -> name or None) so the tests inject their own;
the default is socket.getnameinfo with NI_NAMEREQD (the system's resolver: /etc/hosts, DNS
as nsswitch.conf says). A failure or no name is cached too (for `negative_ttl`), so an
address without a PTR record is not asked again and again.
"""

from __future__ import annotations

import ipaddress
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ReverseDns", "system_resolver"]

Resolver = Callable[[bytes], str | None]

DEFAULT_TTL = 3600.0  # seconds a name is kept (getnameinfo does not tell the record's TTL)
DEFAULT_NEGATIVE_TTL = 300.0  # seconds "no name" is kept
DEFAULT_MAX_ENTRIES = 8192
DEFAULT_MAX_IN_FLIGHT = 64  # queued or being asked
DEFAULT_THREADS = 2
DEFAULT_RATE = 20.0  # queries started per second, at most (a burst of as many)
MAX_NAME = 253


def system_resolver(addr: bytes) -> str | None:
    """The PTR name of ADDR from the system resolver; None when there is none."""
    text = str(ipaddress.ip_address(addr))
    try:
        host, _port = socket.getnameinfo((text, 0), socket.NI_NAMEREQD)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        return None
    return host


def _clean(name: object) -> str | None:
    """A name as shown: lower-case, no trailing dot, printable, at most 253 characters;
    None for anything else (a resolver's answer is not trusted to be a name)."""
    if not isinstance(name, str):
        return None
    name = name.strip().rstrip(".").lower()
    if not name or len(name) > MAX_NAME or not name.isprintable() or " " in name:
        return None
    try:  # an address back is no name (getnameinfo without NI_NAMEREQD does that)
        ipaddress.ip_address(name)
        return None
    except ValueError:
        return name


@dataclass
class RdnsStats:
    queries: int = 0  # handed to the resolver
    answered: int = 0  # with a name
    no_name: int = 0  # no name or a failure
    rate_limited: int = 0  # not asked: the rate was spent
    queue_full: int = 0  # not asked: too many in flight
    evicted: int = 0  # entries pushed out by the bound


class ReverseDns:
    """See the module's docstring. `start()` runs the resolver threads; without it queries
    wait in the queue until `run_pending()` (the tests' synchronous mode)."""

    def __init__(
        self,
        resolve: Resolver = system_resolver,
        *,
        ttl: float = DEFAULT_TTL,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        rate: float = DEFAULT_RATE,
        threads: int = DEFAULT_THREADS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolve = resolve
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max(1, max_entries)
        self.max_in_flight = max(1, max_in_flight)
        self.rate = rate
        self.threads = max(1, threads)
        self.clock = clock
        self.stats = RdnsStats()
        # address -> (name or None, expires at); oldest first (LRU order)
        self._cache: OrderedDict[bytes, tuple[str | None, float]] = OrderedDict()
        self._pending: set[bytes] = set()  # queued or being asked
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._tokens = rate  # a token bucket: `rate` per second, a burst of `rate`
        self._refilled = clock()
        self._workers: list[threading.Thread] = []

    # ---- the caller's side (the worker's loop, a view) --------------------------------------

    def name(self, addr: bytes) -> str | None:
        """The cached name of ADDR (packed), else None; asks in the background when the
        cache has no fresh answer."""
        now = self.clock()
        with self._lock:
            entry = self._cache.get(addr)
            if entry is not None:
                self._cache.move_to_end(addr)
                if entry[1] > now:
                    return entry[0]
            self._ask(addr, now)
            return entry[0] if entry is not None else None  # stale beats nothing

    def _ask(self, addr: bytes, now: float) -> None:
        if addr in self._pending:
            return
        if len(self._pending) >= self.max_in_flight:
            self.stats.queue_full += 1
            return
        self._tokens = min(self.rate, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens < 1.0:
            self.stats.rate_limited += 1
            return
        self._tokens -= 1.0
        self._pending.add(addr)
        self._queue.put(addr)

    # ---- the resolver's side ------------------------------------------------------------------

    def _answer(self, addr: bytes) -> None:
        try:
            name = _clean(self.resolve(addr))
        except Exception:  # a resolver that raises answers "no name", never kills the thread
            name = None
        now = self.clock()
        with self._lock:
            self._pending.discard(addr)
            self.stats.queries += 1
            if name is None:
                self.stats.no_name += 1
            else:
                self.stats.answered += 1
            self._cache[addr] = (name, now + (self.ttl if name else self.negative_ttl))
            self._cache.move_to_end(addr)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
                self.stats.evicted += 1

    def run_pending(self) -> int:
        """Answer every queued query in this thread (no resolver threads); how many."""
        done = 0
        while True:
            try:
                addr = self._queue.get_nowait()
            except queue.Empty:
                return done
            if addr is not None:
                self._answer(addr)
                done += 1

    def _run(self) -> None:
        while True:
            addr = self._queue.get()
            if addr is None:
                return
            self._answer(addr)

    def start(self) -> ReverseDns:
        if not self._workers:
            for i in range(self.threads):
                t = threading.Thread(target=self._run, name=f"ipsctl-rdns-{i}", daemon=True)
                t.start()
                self._workers.append(t)
        return self

    def close(self) -> None:
        """Stop the threads (a query being asked finishes first, in the background)."""
        for _ in self._workers:
            self._queue.put(None)
        self._workers.clear()

    def snapshot(self) -> dict[str, object]:
        """status: entries, in flight and the counters."""
        with self._lock:
            return {
                "entries": len(self._cache),
                "in_flight": len(self._pending),
                **self.stats.__dict__,
            }
