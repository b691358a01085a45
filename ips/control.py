"""The control protocol: how `ipsctl` (and any other client) talks to a running daemon.

One request per connection over a Unix stream socket, each way one JSON object on one line:

    client                           daemon (ips/daemon/supervisor.py)
    {"op": "status"}\\n    ──────►    peer_uid(conn) (SO_PEERCRED), then
                         ◄──────    {"ok": true, ...}\\n  or  {"ok": false, "error": "..."}\\n

Who may do what is the table PERMISSIONS, and the server enforces it (`refusal`): the views
(status, blocks list, flows, alerts) are open to root and to members of group `ipsctl` (the
socket is 0660 root:ipsctl), every change needs root. An op not in the table needs root too,
so a non-root peer learns nothing about which ops exist.

The client side raises ControlError when no daemon answers or the socket refuses the caller;
the CLI turns it into a message and an exit code.
"""

from __future__ import annotations

import enum
import errno
import json
import socket
import struct
import time
from typing import Any, Literal, TypedDict

DEFAULT_SOCKET = "/run/ipsctl/ipsctl.sock"
SOCKET_GROUP = "ipsctl"  # members may use the read-only ops
MAX_MESSAGE = 64 * 1024 * 1024  # one line from root; a policy with its table files fits
# One line from anyone else: they may only ask for the views, whose requests are a few bytes.
MAX_UNPRIVILEGED_MESSAGE = 1024 * 1024
BUSY = "busy"  # a refusal with this key set means "ask again": the server is saturated


# ---- requests -----------------------------------------------------------------------------------


class StatusRequest(TypedDict):
    op: Literal["status"]


class BlocksListRequest(TypedDict):
    op: Literal["blocks_list"]


class FlowsRequest(TypedDict, total=False):
    op: Literal["flows"]
    top: int
    sort: str
    filter: str
    group: str | None


class AlertsRequest(TypedDict, total=False):
    op: Literal["alerts"]
    since: int
    limit: int


class ApplyRequest(TypedDict):
    op: Literal["apply"]
    main: str  # the main file's resolved path
    sources: dict[str, str]  # every file of the policy (main and includes) by path
    confirm: float | None  # seconds until a rollback unless confirmed


class ConfirmRequest(TypedDict):
    op: Literal["confirm"]


class BlocksAddRequest(TypedDict, total=False):
    op: Literal["blocks_add"]
    addr: str
    ttl: float | None
    reason: str | None
    force: bool


class BlocksDelRequest(TypedDict):
    op: Literal["blocks_del"]
    addr: str


class BlocksFlushRequest(TypedDict):
    op: Literal["blocks_flush"]


Request = (
    StatusRequest
    | BlocksListRequest
    | FlowsRequest
    | AlertsRequest
    | ApplyRequest
    | ConfirmRequest
    | BlocksAddRequest
    | BlocksDelRequest
    | BlocksFlushRequest
)


# ---- replies ------------------------------------------------------------------------------------


class Refusal(TypedDict, total=False):
    """Every op's answer when it fails; `diagnostics` and `rendered` come with a refused apply."""

    ok: Literal[False]
    error: str
    diagnostics: list[dict[str, Any]]
    rendered: str
    busy: bool  # the server is saturated: ask again (the client does, within its timeout)


class ApplyReply(TypedDict):
    ok: Literal[True]
    digest: str
    confirm_deadline: float | None


class ConfirmReply(TypedDict):
    ok: Literal[True]
    digest: str | None


class BlocksListReply(TypedDict):
    ok: Literal[True]
    table: str
    blocks: list[dict[str, Any]]  # addr, table, expires_in, timeout, expires_at, detector, …


class BlocksAddReply(TypedDict):
    ok: Literal[True]
    addr: str
    table: str
    ttl: float
    reason: str
    forced: bool
    engine: dict[str, Any]  # the workers' answer (merged)


class BlocksDelReply(TypedDict):
    ok: Literal[True]
    addr: str
    removed: bool
    engine: dict[str, Any]


class BlocksFlushReply(TypedDict):
    ok: Literal[True]
    removed: int
    engine: dict[str, Any]


class AlertsReply(TypedDict):
    ok: Literal[True]
    seq: int  # the feed's newest number: ask again with since=seq
    alerts: list[dict[str, Any]]


# status and flows answer with documents of their own shape: ips/daemon/supervisor.py
# (Daemon.status) and ips/views/flows.py (select_flows).
Reply = dict[str, Any]


# ---- permissions --------------------------------------------------------------------------------


class Access(enum.Enum):
    GROUP = "root or group ipsctl"  # read-only views
    ROOT = "root"  # changes


PERMISSIONS: dict[str, Access] = {
    "status": Access.GROUP,
    "blocks_list": Access.GROUP,
    "flows": Access.GROUP,  # `ipsctl flows`
    "alerts": Access.GROUP,  # `ipsctl top`
    "apply": Access.ROOT,
    "confirm": Access.ROOT,
    "blocks_add": Access.ROOT,
    "blocks_del": Access.ROOT,
    "blocks_flush": Access.ROOT,
}
READ_ONLY_OPS = frozenset(op for op, access in PERMISSIONS.items() if access is Access.GROUP)


def refusal(op: object, uid: int) -> Refusal | None:
    """The answer to a peer that may not run `op`, or None when it may. Whoever reached the
    socket passed its file permissions (root or group ipsctl): the group gets the read-only
    ops, root everything."""
    if uid == 0 or (isinstance(op, str) and op in READ_ONLY_OPS):
        return None
    return {"ok": False, "error": f"'{op}' needs root (peer uid {uid})"}


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


# ---- framing ------------------------------------------------------------------------------------


def read_line(conn: socket.socket, limit: int = MAX_MESSAGE) -> bytes:
    """One message: the bytes up to and with the newline (or up to the peer's close)."""
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ValueError("request too large")
    return bytes(buf)


def encode(message: Request | Reply | Refusal) -> bytes:
    return json.dumps(message).encode() + b"\n"


# ---- the client ---------------------------------------------------------------------------------


class ControlError(Exception):
    """The daemon could not be asked at all (the CLI: a message and an exit code)."""


class NoDaemon(ControlError):
    """Nothing listens on the socket."""


class AccessDenied(ControlError):
    """The socket's permissions keep the caller out (not root, not in group ipsctl)."""


def request(socket_path: str, message: Request, timeout: float = 30.0) -> Reply:
    """Send one request and return the daemon's answer; OSError as it comes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(encode(message))
        line = read_line(s)
        if not line:
            raise ConnectionResetError(errno.ECONNRESET, "closed without an answer")
        return json.loads(line)


# The connect of a Unix socket with a timeout does not wait for room in a full backlog: it
# fails at once with EAGAIN. Those, a refusal while a daemon starts (the socket is bound
# before it listens) and the server's own "busy" are tried again, with backoff, until the
# caller's timeout.
RETRY_FIRST = 0.01  # seconds before the first new try; doubled each time up to RETRY_MOST
RETRY_MOST = 0.5
STARTING_GRACE = 3.0  # seconds a refusing socket may be a daemon that is still starting


def call(socket_path: str, message: Request, timeout: float = 30.0) -> Reply:
    """`request`, tried again while the daemon is busy or starting, with a ControlError that
    says why when the daemon cannot be reached (never an OSError or a traceback)."""
    no_daemon = f"no daemon listening on {socket_path} (is `ipsctl run` up?)"
    started = time.monotonic()
    deadline = started + timeout
    pause = RETRY_FIRST
    while True:
        try:
            reply = request(socket_path, message, max(deadline - time.monotonic(), 0.05))
        except FileNotFoundError:
            raise NoDaemon(no_daemon) from None
        except PermissionError:
            raise AccessDenied(
                f"permission denied on {socket_path} (root, or group ipsctl for read-only views)"
            ) from None
        except ConnectionRefusedError:
            if time.monotonic() - started >= min(STARTING_GRACE, timeout):
                raise NoDaemon(no_daemon) from None
            why = "it refuses connections"
        except BlockingIOError:  # the backlog is full: the daemon is busy
            why = "too busy to take the request (its backlog is full)"
        except TimeoutError:
            raise ControlError(
                f"the daemon on {socket_path} did not answer within {timeout:g} s"
            ) from None
        except ValueError as exc:  # not JSON, or a line longer than we take
            raise ControlError(
                f"the daemon on {socket_path} gave an unreadable answer: {exc}"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNRESET, errno.EPIPE):
                raise ControlError(
                    f"cannot talk to the daemon on {socket_path}: {exc.strerror or exc}"
                ) from None
            why = f"it closed the connection ({exc.strerror or exc})"
        else:
            if not isinstance(reply, dict):
                raise ControlError(f"the daemon on {socket_path} gave an unreadable answer")
            if not reply.get(BUSY):
                return reply
            why = str(reply.get("error") or "busy")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ControlError(
                f"the daemon on {socket_path}: {why} (tried for {timeout:g} s)"
            ) from None
        time.sleep(min(pause, left))
        pause = min(pause * 2, RETRY_MOST)
