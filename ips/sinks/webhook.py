"""Alert notifications: each alert is POSTed as JSON to a webhook URL, off the packet path.

The packet path only puts the alert on a bounded queue (put_nowait: when the queue is full
the alert is dropped and counted, never waited for); one sender thread POSTs them, retrying
with exponential backoff when the receiver is unreachable, times out, answers 5xx or 429
(its Retry-After is honoured, up to the backoff cap). Other 4xx answers are not retried: the
request itself is wrong (bad token, bad chat id) and would fail again.

One body that Slack, Discord and Telegram-style endpoints all take:

    {"text": "<one line>", "content": "<one line>", "event": {<the EVE alert record>}}

Slack's incoming webhooks read `text`, Discord's `content`, Telegram's sendMessage `text`
(give `chat_id` in the URL's query string); anything else can read the full `event`.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from ips.core.events import Alert, Effect
from ips.sinks.eve import alert_record

QUEUE_SIZE = 256
ATTEMPTS = 4  # the first try and 3 retries
BACKOFF = 0.5  # seconds before the first retry; doubles each time
MAX_BACKOFF = 30.0
TIMEOUT = 5.0
USER_AGENT = "ipsctl-webhook/1"


def check_url(url: str) -> str:
    """The URL if it is http(s) with a host; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL must be http:// or https:// with a host: {url!r}")
    return url


def summary(record: dict[str, Any]) -> str:
    """One line for chat: what, who, to where, what was done."""
    a = record.get("alert") or {}
    src = record.get("src_ip", "?")
    dst = record.get("dest_ip", "?")
    if "src_port" in record:
        src = f"{src}:{record['src_port']}"
    if "dest_port" in record:
        dst = f"{dst}:{record['dest_port']}"
    return (
        f"ipsctl alert: {a.get('signature', '?')} [{a.get('category', '?')}] "
        f"{src} -> {dst} {record.get('proto', '')}, {a.get('action', '?')} "
        f"(severity {a.get('severity', '?')}, sid {a.get('signature_id', '?')})"
    )


def payload(record: dict[str, Any]) -> bytes:
    text = summary(record)
    return json.dumps({"text": text, "content": text, "event": record}).encode()


class PostError(Exception):
    """A POST that failed; retry says whether trying again may help."""

    def __init__(self, message: str, retry: bool, after: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.after = after


def http_post(url: str, body: bytes, timeout: float) -> int:
    """POST body as JSON; the status code, or PostError."""
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read(65536)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
        retry = exc.code >= 500 or exc.code == 429
        raise PostError(f"HTTP {exc.code}", retry, after) from None
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PostError(f"{type(exc).__name__}: {reason}", True) from None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: use our own backoff
        return None


class Webhook:
    """A bounded queue and a sender thread. `events` is the packet path's side."""

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = QUEUE_SIZE,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        timeout: float = TIMEOUT,
        post: Callable[[str, bytes, float], int] = http_post,
    ) -> None:
        self.url = check_url(url)
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._post = post
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.queued = 0
        self.sent = 0
        self.failed = 0  # gave up after the last attempt (or a 4xx)
        self.dropped = 0  # the queue was full
        self.retries = 0
        self.last_error = ""

    def start(self) -> Webhook:
        self._thread = threading.Thread(target=self._run, name="ipsctl-webhook", daemon=True)
        self._thread.start()
        return self

    def events(self, events: Iterable[Effect]) -> None:
        """Queue the alerts among events; never blocks."""
        for ev in events:
            if isinstance(ev, Alert):
                self.submit(alert_record(ev))

    def submit(self, record: dict[str, Any]) -> bool:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            return False
        self.queued += 1
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "url": _redacted(self.url),
            "queued": self.queued,
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "retries": self.retries,
            "waiting": self._queue.qsize(),
            "last_error": self.last_error,
        }

    def close(self, wait: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)

    # ---- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                record = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self._deliver(payload(record))

    def _deliver(self, body: bytes) -> None:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                self._post(self.url, body, self.timeout)
                self.sent += 1
                return
            except PostError as exc:
                self.last_error = str(exc)
                if not exc.retry or attempt == self.attempts:
                    break
                wait = min(self.max_backoff, exc.after if exc.after is not None else delay)
                self.retries += 1
                delay = min(self.max_backoff, delay * 2)
                if self._stop.wait(wait):
                    break
        self.failed += 1


def _redacted(url: str) -> str:
    """The URL without its path and query (tokens live there: Slack, Discord, Telegram)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    rest = "/…" if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"
