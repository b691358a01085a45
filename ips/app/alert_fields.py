"""The application-layer object an alert carries: what the flow's client said, as the policy's
L7 clauses read it.

Suricata puts the flow's app-layer object on an alert (its `metadata` option: `tls`, `http`,
`dns`... at the top level of the alert record), so the analyst reading the alert of a blocked
connection sees the SNI that decided without looking for the `tls` event, which for a refused
flow may come much later or, without the server's answer, only at the flow's end. ipsctl does
the same from the flow's `AppFields` (ips/core/app_fields.py): the fields the rule read, under
Suricata's names, and only those known.

Pure: a function of the fields; a copy, so the alert keeps what was known when it was made
(`dns_queries` changes with the next message).
"""

from __future__ import annotations

from ips.app.detect import APP_DNS, APP_HTTP, APP_QUIC, APP_SSH, APP_TLS
from ips.core.app_fields import AppFields

__all__ = ["alert_app_objects"]


def alert_app_objects(
    app: AppFields | None, app_proto: str | None
) -> dict[str, dict[str, object]] | None:
    """{EVE name: object} of the flow's protocol, from what is known of it; None when nothing
    is (no application layer, another protocol, no field read yet)."""
    if app is None or not app_proto:
        return None
    out: dict[str, object] = {}
    if app_proto == APP_TLS:
        if app.tls_sni is not None:
            out["sni"] = app.tls_sni
        if app.tls_ja3 is not None:
            out["ja3"] = {"hash": app.tls_ja3}
        if app.tls_ja3s is not None:
            out["ja3s"] = {"hash": app.tls_ja3s}
        if app.tls_ja4 is not None:
            out["ja4"] = app.tls_ja4
        if app.tls_alpn:
            out["client_alpns"] = list(app.tls_alpn)
    elif app_proto == APP_QUIC:
        if app.quic_sni is not None:
            out["sni"] = app.quic_sni
        if app.quic_ja4 is not None:
            out["ja4"] = app.quic_ja4
    elif app_proto == APP_HTTP:
        for key, value in (
            ("hostname", app.http_host),
            ("url", app.http_uri),
            ("http_method", app.http_method),
            ("http_user_agent", app.http_user_agent),
        ):
            if value is not None:
                out[key] = value
    elif app_proto == APP_DNS:
        # The message's questions in the version 2 form of the `dns` events (Suricata 7's
        # alerts have them under `query`; the schema wants the version said).
        if app.dns_queries:
            out["version"] = 2
            out["query"] = [{"type": "query", "rrname": name} for name in app.dns_queries]
    elif app_proto == APP_SSH:
        for side, software in (("client", app.ssh_client), ("server", app.ssh_server)):
            if software is not None:
                out[side] = {"software_version": software}
    if not out:
        return None
    return {app_proto: out}
