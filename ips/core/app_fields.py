"""What the application layer has learned of one flow: the fields policy clauses read.

The inspector (ips/app/inspect.py) fills a flow's AppFields as the flow's first bytes are
parsed; the compiled policy's L7 clauses (`tls sni`, `dns query`, `http host`...) read them.
It lives in the core because the Flow holds it and both sides read it: the app layer writes,
the policy reads, and neither should import the other.

A clause on a client-side field (everything below but `tls_ja3s` and `ssh_server`) is
*pending* while `client_done` is False: the client's first message has not been read yet and
may still be. Once `client_done` is True the field is final: a value, or None when it will
never be known (another protocol, a malformed or truncated message, the reassembly bound
reached, the flow ended, application parsing off). The same holds for the server side with
`server_done`.

Names are in presentation form, lower-case, without the trailing dot, so a clause compares
them as they are. DNS is per message: `dns_queries` holds the question names of the client
message in hand (the packet being judged), and is replaced by the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final


class _NotStarted:
    """The app_state of a flow the inspector has not seen yet (see APP_NOT_STARTED)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "APP_NOT_STARTED"


# A new flow's `app_state`: the inspector has yet to see it. Not None, so the engine's one
# test (`flow.app_state is not None`) sends a flow's first packet to the inspector, which
# starts it (AppFields, reassembly) or, with application parsing off, sets None for good.
APP_NOT_STARTED: Final = _NotStarted()


class Later:
    """A field whose value is computed when first read: a fingerprint (JA3's MD5, JA4's
    SHA-256) costs several microseconds, and most flows never have it read (no `tls ja3`
    clause in the policy, no EVE sink). The application layer leaves the function; the first
    read calls it and keeps the value."""

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[], str | None]) -> None:
        self.compute = compute

    def __repr__(self) -> str:
        return "Later(...)"


# The fields an AppFields can hold, in the order repr shows them.
FIELDS = (
    "client_done", "dns_queries", "http_host", "http_method", "http_uri", "http_user_agent",
    "quic_ja4", "quic_sni", "server_done", "ssh_client", "ssh_server", "tls_alpn", "tls_ja3",
    "tls_ja3s", "tls_ja4", "tls_sni",
)  # fmt: skip


class AppFields:
    """The L7 fields of one flow (None: not known). The fingerprints (tls_ja3, tls_ja4,
    tls_ja3s, quic_ja4) may be set `later` (see `Later`): reading one computes it once."""

    __slots__ = (
        "_quic_ja4",
        "_tls_ja3",
        "_tls_ja3s",
        "_tls_ja4",
        "client_done",
        "dns_queries",
        "http_host",
        "http_method",
        "http_uri",
        "http_user_agent",
        "quic_sni",
        "server_done",
        "ssh_client",
        "ssh_server",
        "tls_alpn",
        "tls_sni",
    )

    def __init__(self) -> None:
        self.client_done = False
        self.server_done = False
        self.tls_sni: str | None = None
        self._tls_ja3: str | Later | None = None  # the MD5 hash, lower-case hex
        self._tls_ja4: str | Later | None = None
        self._tls_ja3s: str | Later | None = None
        self.tls_alpn: tuple[str, ...] = ()
        self.quic_sni: str | None = None
        self._quic_ja4: str | Later | None = None
        self.dns_queries: tuple[str, ...] = ()
        self.http_host: str | None = None  # without a port, lower-case
        self.http_uri: str | None = None
        self.http_method: str | None = None
        self.http_user_agent: str | None = None
        self.ssh_client: str | None = None  # the software version of the banner
        self.ssh_server: str | None = None

    def later(self, name: str, compute: Callable[[], str | None]) -> None:
        """Set a fingerprint field (tls_ja3, tls_ja4, tls_ja3s, quic_ja4) to be computed by
        `compute` when first read."""
        if name not in _LATER_FIELDS:
            raise ValueError(f"{name} is not a field computed later")
        setattr(self, "_" + name, Later(compute))

    @property
    def tls_ja3(self) -> str | None:
        value = self._tls_ja3
        if isinstance(value, Later):
            value = self._tls_ja3 = value.compute()
        return value

    @tls_ja3.setter
    def tls_ja3(self, value: str | None) -> None:
        self._tls_ja3 = value

    @property
    def tls_ja4(self) -> str | None:
        value = self._tls_ja4
        if isinstance(value, Later):
            value = self._tls_ja4 = value.compute()
        return value

    @tls_ja4.setter
    def tls_ja4(self, value: str | None) -> None:
        self._tls_ja4 = value

    @property
    def tls_ja3s(self) -> str | None:
        value = self._tls_ja3s
        if isinstance(value, Later):
            value = self._tls_ja3s = value.compute()
        return value

    @tls_ja3s.setter
    def tls_ja3s(self, value: str | None) -> None:
        self._tls_ja3s = value

    @property
    def quic_ja4(self) -> str | None:
        value = self._quic_ja4
        if isinstance(value, Later):
            value = self._quic_ja4 = value.compute()
        return value

    @quic_ja4.setter
    def quic_ja4(self, value: str | None) -> None:
        self._quic_ja4 = value

    def __repr__(self) -> str:
        known = {
            name: getattr(self, name)
            for name in FIELDS
            if getattr(self, name) not in (None, (), False)
        }
        return f"AppFields({known})"


_LATER_FIELDS = frozenset({"tls_ja3", "tls_ja4", "tls_ja3s", "quic_ja4"})
