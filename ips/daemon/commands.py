"""The control socket's commands: op -> handler, and the dispatch that enforces who may run
which (ips.control.PERMISSIONS) before any handler runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ips.control import Reply, refusal


class Controlled(Protocol):
    """What the commands ask of the daemon (ips/daemon/supervisor.py: Daemon)."""

    def status(self) -> dict[str, Any]: ...

    def blocks_list(self) -> dict[str, Any]: ...

    def flows(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def alerts(self, since: int, limit: int) -> dict[str, Any]: ...

    def apply(
        self, main: str, sources: dict[str, str], confirm: float | None
    ) -> dict[str, Any]: ...

    def confirm(self) -> dict[str, Any]: ...

    def blocks_add(
        self, addr: str, ttl: float | None, reason: str | None, force: bool = False
    ) -> dict[str, Any]: ...

    def blocks_del(self, addr: str) -> dict[str, Any]: ...

    def blocks_flush(self) -> dict[str, Any]: ...


def _flows(daemon: Controlled, request: dict[str, Any]) -> Reply:
    """From every worker, merged."""
    fields = {k: v for k, v in request.items() if k in ("top", "sort", "filter", "group")}
    return daemon.flows({"op": "flows", **fields})


def _alerts(daemon: Controlled, request: dict[str, Any]) -> Reply:
    return daemon.alerts(int(request.get("since") or 0), int(request.get("limit") or 50))


def _apply(daemon: Controlled, request: dict[str, Any]) -> Reply:
    return daemon.apply(request["main"], request["sources"], request.get("confirm"))


def _blocks_add(daemon: Controlled, request: dict[str, Any]) -> Reply:
    ttl = request.get("ttl")
    return daemon.blocks_add(
        str(request.get("addr", "")),
        float(ttl) if ttl is not None else None,
        request.get("reason"),
        bool(request.get("force")),
    )


COMMANDS: dict[str, Callable[[Controlled, dict[str, Any]], Reply]] = {
    "status": lambda daemon, _request: daemon.status(),
    "blocks_list": lambda daemon, _request: daemon.blocks_list(),
    "flows": _flows,
    "alerts": _alerts,
    "apply": _apply,
    "confirm": lambda daemon, _request: daemon.confirm(),
    "blocks_add": _blocks_add,
    "blocks_del": lambda daemon, request: daemon.blocks_del(str(request.get("addr", ""))),
    "blocks_flush": lambda daemon, _request: daemon.blocks_flush(),
}


def dispatch(daemon: Controlled, request: dict[str, Any], uid: int) -> Reply:
    """The answer to one request of a peer with this uid."""
    op = request.get("op")
    refused = refusal(op, uid)
    if refused is not None:
        return dict(refused)
    handler = COMMANDS.get(op) if isinstance(op, str) else None
    if handler is None:
        return {"ok": False, "error": f"unknown request {op!r}"}
    return handler(daemon, request)
