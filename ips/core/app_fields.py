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


class AppFields:
    """The L7 fields of one flow (None: not known)."""

    __slots__ = (
        "client_done",
        "dns_queries",
        "http_host",
        "http_method",
        "http_uri",
        "http_user_agent",
        "quic_ja4",
        "quic_sni",
        "server_done",
        "ssh_client",
        "ssh_server",
        "tls_alpn",
        "tls_ja3",
        "tls_ja3s",
        "tls_ja4",
        "tls_sni",
    )

    def __init__(self) -> None:
        self.client_done = False
        self.server_done = False
        self.tls_sni: str | None = None
        self.tls_ja3: str | None = None  # the MD5 hash, lower-case hex
        self.tls_ja4: str | None = None
        self.tls_ja3s: str | None = None
        self.tls_alpn: tuple[str, ...] = ()
        self.quic_sni: str | None = None
        self.quic_ja4: str | None = None
        self.dns_queries: tuple[str, ...] = ()
        self.http_host: str | None = None  # without a port, lower-case
        self.http_uri: str | None = None
        self.http_method: str | None = None
        self.http_user_agent: str | None = None
        self.ssh_client: str | None = None  # the software version of the banner
        self.ssh_server: str | None = None

    def __repr__(self) -> str:
        known = {
            name: getattr(self, name)
            for name in self.__slots__
            if getattr(self, name) not in (None, (), False)
        }
        return f"AppFields({known})"
