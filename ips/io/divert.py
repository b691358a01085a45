"""The divert backend: the same engine over pydivert — WinDivert on Windows, eBPFDivert on
Linux (TC programs on every interface of the process's network namespace, plus `lo`).

    layer            NETWORK_FORWARD for a gateway (`--hook forward`), NETWORK for a host
                     (`--hook input` / `output`: inbound / outbound packets of this host)
    accept           the packet is sent back (re-injected) unchanged
    drop             it is not sent
    reject           not sent; the engine's TCP reset / ICMP error is injected instead
    rewrite          the engine's bytes replace the packet's, checksums are recalculated, and
                     it is sent (the engine translates the replies back: they are diverted)

There is no nftables here, so the ban set lives in this adapter (`UserBlocks`): the first
step for every diverted packet is a lookup of its source; a banned source is dropped before
the engine, like the kernel set does on the NFQUEUE backend. Blocks expire here (the
worker's tick), and are kept in a small JSON file beside the control socket so that a new
worker — after a crash, or the supervisor's `ipsctl blocks add` before any worker — starts
with them. The WinDivert filter (ips/translate/windivert.py) diverts only what the
engine needs to see, and every banned source; when those change the handle is re-opened.

Fail mode: pydivert lets packets pass when its handle is gone (a dead worker's TC programs
pass everything once their heartbeat is 3 s old; WinDivert's driver stops diverting when a
handle closes), so this backend is fail-open only.

Windows only (not run on Linux, named here so): `_ReaderThread` — WinDivert handles have no
pollable descriptor, so a thread blocks in recv() and wakes the worker loop through a pipe;
and the WinDivert driver/service set-up described in docs/backends.md. On Linux the handle's own
epoll descriptor (eBPFDivert's event fd) is polled; the reader thread can be forced on Linux
(`reader_thread=True`) so that its logic is still tested here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from ips.core.events import Effect
from ips.engine import Engine, Meta
from ips.io.adapter import BUSY_EVERY, wait_then_process
from ips.kernel.blocks import Latency, effect_kind, save_blocks
from ips.kernel.nft import KernelError
from ips.translate.nft import BLOCK_TABLE, SetElement, block_comment
from ips.translate.windivert import divert_filter

QUEUE_LEN_RANGE = (32, 16384)  # WinDivert's WINDIVERT_PARAM_QUEUE_LENGTH bounds
BANS_FILE = "divert-bans.json"  # the adapter's ban set, next to the control socket


class DivertError(KernelError):
    """The divert backend cannot do it (no pydivert, no privileges, a bad option, a worker
    that does not answer); a KernelError so that the daemon reports it as it does nft's."""


def layer_for(hooks: Iterable[str]) -> tuple[str, str | None]:
    """(WinDivert layer name, direction filter) for the daemon's --hook values."""
    hooks = set(hooks)
    if hooks == {"forward"}:
        return "NETWORK_FORWARD", None
    if hooks and hooks <= {"input", "output"}:
        if hooks == {"input", "output"}:
            return "NETWORK", None
        return "NETWORK", "inbound" if "input" in hooks else "outbound"
    raise DivertError(
        "the divert backend takes --hook forward (a gateway: NETWORK_FORWARD layer) or "
        f"--hook input/output (a host: NETWORK layer), not {sorted(hooks)}"
    )


def usable() -> tuple[bool, str]:
    """Can a divert handle be opened here? (doctor) — without opening one: opening hooks
    every interface of this namespace."""
    try:
        import pydivert
    except ImportError as exc:
        return False, f"pydivert is not installed ({exc})"
    if sys.platform == "win32":  # Windows only
        if not pydivert.Divert.is_registered():
            return False, "the WinDivert driver is not installed (run as Administrator once)"
        return True, "WinDivert"
    if not sys.platform.startswith("linux"):
        return False, f"pydivert does not support {sys.platform}"
    if not pydivert.EBPFDivert.is_registered():
        return False, "libebpfdivert is missing from the pydivert wheel"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return False, "the kernel has no BTF (/sys/kernel/btf/vmlinux): eBPFDivert needs it"
    if os.geteuid() != 0:
        return False, "needs root (CAP_BPF + CAP_NET_ADMIN + CAP_NET_RAW)"
    return True, f"eBPFDivert (pydivert {pydivert.__version__})"


# ---- the ban set ---------------------------------------------------------------------------------


class UserBlocks:
    """The members of the block table, held by the adapter (no kernel set on this backend).

    Has the interface of ips.kernel.blocks.KernelBlocks that the worker loop uses (note,
    flush, pending, pending_since, overdue, stats), plus the lookup of the packet path."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        log: TextIO | None = sys.stderr,
    ) -> None:
        self.path = Path(path) if path else None
        self.clock = clock
        self.log = log
        # packed address -> (expires_at (inf: never), timeout seconds, comment)
        self.members: dict[bytes, tuple[float, int | None, str | None]] = {}
        self.version = 0  # bumped when the set of addresses changes: the filter follows
        self.pending_since: float | None = None  # never: applied at once (file written in flush)
        self._dirty = False
        self.added = self.removed = self.expired = self.drops = self.errors = 0
        self.last_error = ""
        self.latency = Latency()

    # ---- the packet path ---------------------------------------------------------------

    def is_blocked(self, src: bytes, now: float) -> bool:
        entry = self.members.get(src)
        if entry is None:
            return False
        if entry[0] <= now:
            self._drop_member(src)
            self.expired += 1
            return False
        self.drops += 1
        return True

    # ---- changes -----------------------------------------------------------------------

    def add(
        self,
        addr: bytes | str,
        ttl: float | None,
        comment: str | None,
        now: float,
        expires: float | None = None,
    ) -> None:
        """Ban addr for ttl seconds (None: until removed); expires: seconds left, when less
        than ttl (a block restored from a file)."""
        packed = ipaddress.ip_address(addr).packed
        left = expires if expires is not None else ttl
        expires_at = now + left if left else math.inf
        if packed not in self.members:
            self.version += 1
        timeout = math.ceil(ttl) if ttl else None
        self.members[packed] = (expires_at, timeout, comment)
        self._dirty = True

    def remove(self, addr: bytes | str) -> bool:
        packed = ipaddress.ip_address(addr).packed
        if packed not in self.members:
            return False
        self._drop_member(packed)
        return True

    def clear(self) -> int:
        count = len(self.members)
        if count:
            self.members.clear()
            self.version += 1
            self._dirty = True
        return count

    def expire(self, now: float) -> int:
        gone = [a for a, (at, _t, _c) in self.members.items() if at <= now]
        for addr in gone:
            self._drop_member(addr)
        self.expired += len(gone)
        return len(gone)

    def _drop_member(self, packed: bytes) -> None:
        del self.members[packed]
        self.version += 1
        self._dirty = True

    def note(self, effects: Iterable[Effect]) -> bool:
        """Apply the Block / Unblock effects among `effects` (an expiry too: no kernel timer
        removes it here). Returns False: nothing waits for a flush but the file."""
        for effect in effects:
            kind = effect_kind(effect)
            if kind is None:
                continue
            try:
                if str(getattr(effect, "table", BLOCK_TABLE)) != BLOCK_TABLE:
                    continue
                # effect_kind found a Block or an Unblock (by class name: mypy cannot follow).
                addr = bytes(effect.addr)  # type: ignore[union-attr]
                if kind == "block":
                    ttl = getattr(effect, "ttl", None)
                    comment = block_comment(
                        str(getattr(effect, "detector", "") or ""),
                        int(getattr(effect, "offense", 0) or 0),
                        str(getattr(effect, "reason", "") or ""),
                    )
                    when = float(getattr(effect, "time", 0.0) or self.clock())
                    self.add(addr, ttl if ttl and ttl > 0 else None, comment, when)
                    self.added += 1
                    self.latency.add(self.clock() - when)
                elif self.remove(addr):
                    if str(getattr(effect, "reason", "")) in ("expired", "expiry"):
                        self.expired += 1
                    else:
                        self.removed += 1
            except (AttributeError, TypeError, ValueError) as exc:
                self._error(f"{type(effect).__name__}: {exc}")
        return False

    @property
    def pending(self) -> bool:
        return self._dirty

    def overdue(self) -> bool:
        return False

    def flush(self) -> None:
        """Write the set to its file (if it changed since the last write)."""
        if not self._dirty or self.path is None:
            self._dirty = False
            return
        self._dirty = False
        try:
            save_blocks(self.path, self.elements(self.clock()), self.clock())
        except OSError as exc:
            self._error(f"writing {self.path}: {exc}")

    # ---- reading -----------------------------------------------------------------------

    def addresses(self) -> list[bytes]:
        return sorted(self.members)

    def elements(self, now: float) -> list[SetElement]:
        out = []
        for packed, (at, timeout, comment) in sorted(self.members.items()):
            left = None if math.isinf(at) else max(0, math.ceil(at - now))
            out.append(SetElement(str(ipaddress.ip_address(packed)), timeout, left, comment))
        return out

    def load(self) -> int:
        """Members from the file (a previous worker's); returns how many."""
        taken = 0
        now = self.clock()
        for e in read_bans(self.path, now) if self.path else []:
            self.add(e.addr, e.timeout, e.comment, now, e.expires)
            taken += 1
        self._dirty = False
        return taken

    def _error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        if self.log is not None:
            with contextlib.suppress(Exception):
                print(f"ipsctl: divert block error: {message}", file=self.log, flush=True)

    def stats(self) -> dict[str, object]:
        return {
            "added": self.added,
            "removed": self.removed,
            "expired": self.expired,
            "kernel_errors": self.errors,
            "last_error": self.last_error,
            "latency": self.latency.as_dict(),
            "drops": self.drops,
            "active": len(self.members),
        }


def read_bans(path: str | Path | None, now: float) -> list[SetElement]:
    """The blocks of a bans file (save_blocks' format) with time left; [] when none."""
    if path is None:
        return []
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    for row in data.get("blocks", []) if isinstance(data, dict) else []:
        try:
            addr = str(ipaddress.ip_address(str(row["addr"])))
            at = row.get("expires_at")
            left = None if at is None else float(at) - now
            if left is not None and left <= 0:
                continue
            timeout = row.get("timeout")
            out.append(
                SetElement(
                    addr,
                    int(timeout) if timeout else None,
                    math.ceil(left) if left is not None else None,
                    row.get("comment") or None,
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


# ---- the worker's adapter --------------------------------------------------------------------


class DivertReplies:
    """Injects the engine's reject replies (complete IP packets) through the divert handle:
    as new outbound packets, routed by the stack (no raw sockets: Windows has none for TCP)."""

    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0

    def send(self, handle: Any, reply: bytes) -> None:
        import pydivert

        try:
            handle.send(
                pydivert.Packet(reply, direction=pydivert.Direction.OUTBOUND),
                recalculate_checksum=False,
            )
            self.sent += 1
        except (OSError, ValueError, RuntimeError):
            self.failed += 1


class _ReaderThread:
    """Windows only: WinDivert has no descriptor to poll, so a thread waits in recv() and
    wakes the worker loop through a pipe. Runnable on Linux too (tests)."""

    def __init__(self, handle: Any, wake_w: int) -> None:
        self.handle = handle
        self.packets: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake_w = wake_w
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="divert-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                packet = self.handle.recv(timeout=0.2)
            except TimeoutError:
                continue
            except (OSError, RuntimeError):
                return  # closed
            self.packets.put(packet)
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)


class DivertWorker:
    """Opens a divert handle and runs the engine over its packets: a PacketAdapter
    (ips/io/adapter.py), so the daemon's worker loop runs it as it runs QueueWorker."""

    mode = "inline"
    copy_fd: int | None = None  # one source: the handle

    def __init__(
        self,
        engine: Engine,
        *,
        hooks: Iterable[str] = ("forward",),
        queue_len: int = 4096,
        on_events: Callable[[list[Effect]], None] | None = None,
        clock: Callable[[], float] = time.time,
        blocks: UserBlocks | None = None,
        on_busy: Callable[[], None] | None = None,
        reader_thread: bool | None = None,
        log: TextIO | None = sys.stderr,
    ) -> None:
        self.engine = engine
        self.layer_name, self.direction = layer_for(hooks)
        self.queue_len = queue_len
        self.on_events = on_events
        self.clock = clock
        self.blocks = blocks if blocks is not None else UserBlocks(log=log)
        self.on_busy = on_busy
        # Windows has no pollable handle: the reader thread there, the event fd on Linux.
        self.use_thread = (sys.platform == "win32") if reader_thread is None else reader_thread
        self.log = log
        self.replies = DivertReplies()
        self.verdict_errors = 0
        self.reopens = 0
        self.filter = ""
        self.filter_fallbacks = 0  # filters pydivert refused (then: everything)
        self.handle: Any = None
        self._poll: Any = None  # Linux: an epoll of our own around the handle's event fd
        self._handle_fd: int | None = None
        self._wake: tuple[int, int] | None = None
        self._reader: _ReaderThread | None = None
        self._count = 0
        self._filtered_version = -1
        self._filtered_policy: object = None
        self._names: dict[int, str | None] = {0: None}
        self._metas: dict[tuple[int, bool], Meta] = {}

    # ---- the handle --------------------------------------------------------------------

    def wanted_filter(self) -> str:
        return divert_filter(
            self.engine.policy.policy, self.blocks.addresses(), direction=self.direction
        )

    def _open(self, text: str) -> Any:
        import pydivert

        layer = pydivert.Layer[self.layer_name]
        ok, pos, why = pydivert.Divert.check_filter(text, layer)
        if not ok:  # a translator bug must not leave packets unseen: divert everything
            self.filter_fallbacks += 1
            self._say(f"filter refused at {pos} ({why}); diverting everything")
            text = self.direction or "true"
        handle = pydivert.Divert(text, layer=layer)
        try:
            handle.open()
        except (OSError, NotImplementedError, ImportError) as exc:
            raise DivertError(f"cannot open a divert handle ({self.layer_name}): {exc}") from exc
        lo, hi = QUEUE_LEN_RANGE
        with contextlib.suppress(OSError, AttributeError, RuntimeError):
            handle.set_param(pydivert.Param.QUEUE_LEN, max(lo, min(hi, self.queue_len)))
        self.filter = text
        return handle

    def bind(self) -> int:
        """Open the handle; return a descriptor that is readable when packets wait."""
        self._filtered_version = self.blocks.version
        self._filtered_policy = self.engine.policy
        self.handle = self._open(self.wanted_filter())
        if self.use_thread:
            self._wake = os.pipe()
            os.set_blocking(self._wake[0], False)
            self._reader = _ReaderThread(self.handle, self._wake[1])
            return self._wake[0]
        fd = getattr(self.handle, "_event_fd", None)
        if fd is None:
            raise DivertError("this pydivert handle has no event descriptor to poll")
        self._poll = select.epoll()
        self._poll.register(fd, select.EPOLLIN)
        self._handle_fd = fd
        return self._poll.fileno()

    def refilter(self, force: bool = False) -> bool:
        """Re-open the handle when the filter must change (a new policy, new or ended
        blocks). The new handle comes after the old in the TC chain (a later priority); the
        old one is shut down for receiving — its programs then pass packets on to the new —
        and the packets it still holds are judged and injected through the new one."""
        if self.handle is None:
            return False
        if (
            not force
            and self.blocks.version == self._filtered_version
            and self.engine.policy is self._filtered_policy
        ):
            return False
        self._filtered_version = self.blocks.version
        self._filtered_policy = self.engine.policy
        wanted = self.wanted_filter()
        if wanted == self.filter and not force:
            return False
        old = self.handle
        new = self._open(wanted)
        if self._reader is not None:  # Windows path: a new reader for the new handle
            self._reader.stop()
            assert self._wake is not None
            self._reader = _ReaderThread(new, self._wake[1])
        with contextlib.suppress(OSError, AttributeError, RuntimeError):
            old.shutdown(1)  # SHUTDOWN_RECV: pass everything from now on
        self.handle = new
        if self._poll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._poll.unregister(self._handle_fd)
            self._handle_fd = getattr(new, "_event_fd", None)
            self._poll.register(self._handle_fd, select.EPOLLIN)
        self._drain(old)
        with contextlib.suppress(OSError, RuntimeError):
            old.close()
        self.reopens += 1
        return True

    def _drain(self, old: Any) -> None:
        while True:
            try:
                packet = old.recv(timeout=0)
            except (TimeoutError, OSError, RuntimeError):
                return
            self._on_packet(packet)

    def unbind(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        if self.handle is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.handle.close()
            self.handle = None
        if self._poll is not None:
            self._poll.close()
            self._poll = None
        if self._wake is not None:
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake = None
        self.blocks.flush()

    # ---- the loop ----------------------------------------------------------------------

    def wait_and_process(
        self, fd: int, others: list[int], timeout: float, linger: bool = False
    ) -> list[int]:
        return wait_then_process(self, fd, others, timeout, linger)

    def process_pending(self) -> None:
        """Handle every packet waiting, then follow block changes (file, filter)."""
        try:
            if self._reader is not None:
                assert self._wake is not None
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake[0], 65536)
                while True:
                    try:
                        packet = self._reader.packets.get_nowait()
                    except queue.Empty:
                        break
                    self._on_packet(packet)
            else:
                handle = self.handle
                while True:
                    try:
                        packet = handle.recv(timeout=0)
                    except TimeoutError:
                        break
                    self._on_packet(packet)
        finally:
            self._after_burst()

    def _after_burst(self) -> None:
        if self.blocks.pending:
            self.blocks.flush()
        if self.blocks.version != self._filtered_version:
            self.refilter()

    def effects(self, effects: list[Effect]) -> None:
        """Effects without a packet (the engine's tick, manual operations): blocks to the ban
        set, everything to on_events."""
        self.blocks.expire(self.clock())
        self.blocks.note(effects)
        if self.on_events is not None:
            self.on_events(effects)
        self._after_burst()

    def _meta(self, ifindex: int, outbound: bool) -> Meta:
        """WinDivert gives one interface: the outgoing one of a forwarded or outbound packet,
        the incoming one of an inbound packet. The other side is unknown (None): a rule on it
        does not match here (docs/backends.md: the divert backend's limits)."""
        key = (ifindex, outbound)
        meta = self._metas.get(key)
        if meta is None:
            name = self._names.get(ifindex, "")
            if name == "":
                try:
                    name = self._names[ifindex] = __import__("socket").if_indextoname(ifindex)
                except OSError:
                    name = self._names[ifindex] = None
            meta = Meta(iif=None, oif=name) if outbound else Meta(iif=name, oif=None)
            if len(self._metas) < 4096:
                self._metas[key] = meta
        return meta

    def _on_packet(self, packet: Any) -> None:
        handle = self.handle
        try:
            raw = bytes(packet.raw)
            now = self.clock()
            src = raw[12:16] if raw[0] >> 4 == 4 else raw[8:24]
            if self.blocks.members and self.blocks.is_blocked(src, now):
                return  # the ban set comes first, as the kernel set does: dropped
            ifidx = packet.interface[0]
            decision = self.engine.handle(raw, self._meta(ifidx, packet.is_outbound), now)
            verdict = decision.verdict
            if verdict == "drop":
                pass
            elif verdict == "reject":
                if decision.reply is not None:
                    self.replies.send(handle, decision.reply)
                if decision.peer_reply is not None:  # the server's end of a rejected flow
                    self.replies.send(handle, decision.peer_reply)
            elif decision.data is not None:
                packet.raw = decision.data
                handle.send(packet, recalculate_checksum=True)
            else:
                handle.send(packet, recalculate_checksum=False)
            if decision.effects:
                effects = list(decision.effects)
                self.blocks.note(effects)
                if self.on_events is not None:
                    self.on_events(effects)
        except Exception:  # a verdict must always be given
            self.verdict_errors += 1
            if self.engine.policy.on_error != "drop":
                with contextlib.suppress(Exception):
                    handle.send(packet, recalculate_checksum=False)
        self._count += 1
        if self._count >= BUSY_EVERY:
            self._count = 0
            if self.on_busy is not None:
                self.on_busy()

    def _say(self, message: str) -> None:
        if self.log is not None:
            with contextlib.suppress(Exception):
                print(f"ipsctl: divert: {message}", file=self.log, flush=True)

    def process_copies(self) -> None:
        """Nothing: no copies here (copy_fd is None)."""

    def policy_loaded(self) -> None:
        """The filter follows the policy."""
        self.refilter()

    def command(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The ban set's ops (ban_…) are this worker's: it holds the set."""
        return self.ban_command(msg) if str(msg.get("op")).startswith("ban_") else None

    def stats_sections(self) -> dict[str, object]:
        return {"divert": self.stats()}

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {
            "layer": self.layer_name,
            "filter": self.filter,
            "reopens": self.reopens,
            "filter_fallbacks": self.filter_fallbacks,
        }
        if self.handle is not None:
            with contextlib.suppress(Exception):
                out["handle"] = dict(self.handle.stats())
        return out

    def ban_command(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The supervisor's `ipsctl blocks add/del/flush/list` on this ban set."""
        op = msg.get("op")
        now = self.clock()
        result: dict[str, Any] = {"ok": True}
        if op == "ban_add":
            self.blocks.add(msg["addr"], msg.get("ttl"), msg.get("comment"), now)
        elif op == "ban_del":
            result["removed"] = self.blocks.remove(msg["addr"])
        elif op == "ban_flush":
            result["removed"] = self.blocks.clear()
        elif op == "ban_list":
            self.blocks.expire(now)
        else:
            return {"ok": False, "error": f"unknown op {op!r}"}
        self._after_burst()
        result["drops"] = self.blocks.drops
        result["elements"] = [
            [e.addr, e.timeout, e.expires, e.comment] for e in self.blocks.elements(now)
        ]
        return result


# ---- the supervisor's side -----------------------------------------------------------------------


class UserspaceDiversion:
    """The Diversion (ips/kernel/diversion.py) of the divert backend: nothing to install in
    a kernel; blocks are the worker's ban set (asked over the worker's pipe), or the bans
    file when no worker runs."""

    kernel_rules = 0
    backend: str | None = "divert"
    offload_generation: int | None = None  # no offload: nothing in a kernel to hand flows to
    copies = False

    def __init__(
        self,
        hooks: Iterable[str],
        fail_open: bool,
        bans_path: str | Path,
        worker: Callable[[], Any],
    ) -> None:
        self.hooks = tuple(hooks)
        self.layer, self.direction = layer_for(self.hooks)
        if not fail_open:
            raise DivertError(
                "the divert backend is fail-open only (a dead worker's handle "
                "passes packets): --fail-mode closed needs --backend nfqueue"
            )
        self.bans_path = Path(bans_path)
        self._worker = worker
        self._drops = 0

    @property
    def nft(self) -> UserspaceDiversion:
        return self  # restore_blocks() writes through elements()/replace_elements()

    # ---- life cycle (nothing in the kernel) --------------------------------------------

    def remove_stale(self) -> None:
        """A killed daemon's bans file is kept: the new worker starts with it."""

    def install(self, policy: object) -> None:
        ok, why = usable()
        if not ok:
            raise DivertError(f"the divert backend cannot run here: {why}")

    def update(self, policy: object, offload: bool = True) -> None:
        """The worker re-filters when its engine loads the policy."""

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.bans_path.unlink()

    def kernel_plan(self, policy: object) -> None:
        """Nothing in a kernel: without its daemon, nothing of a policy stays in force."""
        return None

    def counters(self) -> dict[str, Any]:
        return {}

    def kernel_hits(self, counters: object = None) -> dict[str, int]:
        return {}

    def offered(self, counters: object = None) -> int | None:
        """None: no kernel rule queues anything (the worker diverts itself)."""
        return None

    def block_drops(self, counters: object = None) -> int:
        with contextlib.suppress(Exception):
            self._ask({"op": "ban_list"})
        return self._drops

    def describe(self) -> dict[str, object]:
        ok, why = usable()
        return {
            "backend": f"divert ({why if ok else 'unusable: ' + why})",
            "layer": self.layer,
            "hooks": list(self.hooks),
            "fail_open": True,
        }

    # ---- blocks --------------------------------------------------------------------------

    def _ask(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The worker's answer, None when no worker runs."""
        worker = self._worker()
        if worker is None:
            return None
        try:
            reply = worker.request(msg, timeout=2.0)
        except (TimeoutError, OSError, EOFError) as exc:
            raise DivertError(f"the divert worker did not answer: {exc}") from exc
        if not reply.get("ok"):
            raise DivertError(str(reply.get("error")))
        self._drops = int(reply.get("drops", self._drops))
        return reply

    def blocks(self) -> list[SetElement]:
        reply = None
        with contextlib.suppress(DivertError):
            reply = self._ask({"op": "ban_list"})
        if reply is None:  # no worker (or it does not answer): its file
            return read_bans(self.bans_path, time.time())
        return [SetElement(a, t, e, c) for a, t, e, c in reply["elements"]]

    def elements(self, table: str) -> list[SetElement]:
        return self.blocks()

    def block(self, addr: str, ttl: float | None, comment: str) -> None:
        if self._ask({"op": "ban_add", "addr": addr, "ttl": ttl, "comment": comment}) is None:
            self._offline(lambda b, now: b.add(addr, ttl, comment, now))

    def replace_elements(
        self,
        table: str,
        addrs: Iterable[str],
        timeout: float | None,
        comment: str | None = None,
        expires: float | None = None,
    ) -> None:
        """restore_blocks() at start, before the worker: into the file it will load."""

        def put(b: UserBlocks, now: float) -> None:
            for a in addrs:
                b.add(a, timeout, comment, now, expires)

        self._offline(put)

    def unblock(self, addr: str) -> bool:
        reply = self._ask({"op": "ban_del", "addr": addr})
        if reply is None:
            return bool(self._offline(lambda b, now: b.remove(addr)))
        return bool(reply.get("removed"))

    def flush_blocks(self) -> None:
        if self._ask({"op": "ban_flush"}) is None:
            self._offline(lambda b, now: b.clear())

    def mac_blocks(self) -> list[SetElement]:
        return []  # WinDivert sees packets above the link layer: no MAC is ever banned here

    def unblock_mac(self, mac: str) -> bool:
        return False

    def ether_elements(self) -> list[SetElement]:
        return []  # no MAC is banned here (mac_blocks)

    def replace_ether_elements(
        self,
        macs: Iterable[str],
        timeout: float | None = None,
        comment: str | None = None,
        expires: float | None = None,
    ) -> None:
        """A saved MAC ban has nowhere to go: WinDivert cannot drop by MAC (a state file
        carried over from the nfqueue backend); refused, so restore_mac_blocks says so."""
        raise KernelError(f"the divert backend cannot ban a MAC ({', '.join(macs)})")

    def _offline(self, change: Callable[[UserBlocks, float], object]) -> object:
        blocks = UserBlocks(self.bans_path, log=None)
        blocks.load()
        result = change(blocks, time.time())
        blocks._dirty = True
        blocks.flush()
        return result
