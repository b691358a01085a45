"""Blocks in the kernel: the members of `inet ipsctl`'s BLOCK_TABLE sets (`banned_v4`,
`banned_v6`), dropped by the first rules of our chains (ips/translate/nft/, block_rules),
and the MACs of the senders of forged packets in `banned_ether` (MacBlock effects), dropped
by the next rule of the chains packets come in on.

* KernelBlocks — the worker's side: the Block effects of the engine's decisions are queued and
  written in one small libnftables transaction at the end of the burst of packets being read
  (or at once when a burst goes on longer than FLUSH_AFTER), so the path from the packet that
  crossed a threshold to the kernel drop is a fraction of a millisecond of nft, and the packet
  loop never waits for more than one batch.
* adopt_blocks / adopt_mac_blocks — a worker that starts hands the kernel's members to its
  engine (engine.adopt_block, engine.adopt_mac_block), so the engine's view of who is blocked
  is the kernel's.
* save_blocks / restore_blocks / restore_mac_blocks — a clean stop removes our table (nothing
  of ipsctl stays in the kernel when it is stopped), so the blocks and the MAC bans are written
  to a state file first and put back at the next start, with what is left of their time. A
  killed daemon leaves its table, and the next start keeps its sets (see
  Diversion.remove_stale): nothing to save then.
"""

from __future__ import annotations

import contextlib
import inspect
import ipaddress
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ips.core.addr import parse_mac
from ips.core.events import Effect, MacBlock, format_mac
from ips.kernel.diversion import BlockSets
from ips.kernel.nft import KernelError, Nft
from ips.policy.model import ETHER_BAN_TABLE
from ips.safefile import replace_private_file
from ips.translate.nft import (
    BLOCK_TABLE,
    SetElement,
    block_comment,
    parse_block_comment,
    replace_elements,
    replace_ether_elements,
)

FLUSH_AFTER = 0.01  # seconds a queued block may wait while a burst of packets goes on
# Unblock reasons that mean "its time is up": the kernel's own timer removed the element
# already (or is about to), so the worker leaves the set alone.
EXPIRY_REASONS = frozenset({"expired", "expiry", "expire", "timeout", "ttl"})
STATE_VERSION = 1


def effect_kind(effect: object) -> str | None:
    """Block / MacBlock / Unblock effects of the engine -> "block" / "block" / "unblock" (by
    class name, so this works whatever module defines them), None for anything else."""
    name = type(effect).__name__
    if name in ("Block", "MacBlock"):
        return "block"
    if name == "Unblock":
        return "unblock"
    return None


def is_expiry(unblock: Any) -> bool:
    return str(getattr(unblock, "reason", "")).lower() in EXPIRY_REASONS


def addr_text(addr: bytes | str) -> str:
    return str(ipaddress.ip_address(addr))


@dataclass(slots=True)
class Latency:
    """Seconds from a Block effect (the time of the packet that made it) to its element being
    in the kernel."""

    count: int = 0
    total: float = 0.0
    last: float = 0.0
    max: float = 0.0

    def add(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.count += 1
        self.total += seconds
        self.last = seconds
        self.max = max(self.max, seconds)

    def as_dict(self) -> dict[str, float | int]:
        mean = self.total / self.count if self.count else 0.0
        return {
            "count": self.count,
            "last_ms": round(self.last * 1000, 3),
            "mean_ms": round(mean * 1000, 3),
            "max_ms": round(self.max * 1000, 3),
        }


class KernelBlocks:
    """Queues Block / Unblock effects and writes them to the kernel in batches (the worker)."""

    def __init__(
        self,
        nft: Nft | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        log: TextIO | None = sys.stderr,
    ) -> None:
        self._nft = nft  # made on first use: libnftables acts in the netns it was made in
        self.clock = clock
        self.monotonic = monotonic
        self.log = log
        # (table, address text) -> the latest Block for it; "unblock" entries by address
        self._blocks: dict[tuple[str, str], Any] = {}
        self._unblocks: dict[tuple[str, str], Any] = {}
        # monotonic time of the oldest queued effect; None: nothing queued. A plain attribute:
        # the packet loop looks at it for every packet.
        self.pending_since: float | None = None
        self.added = 0  # elements written for Block effects
        self.removed = 0  # elements deleted for (non-expiry) Unblock effects
        self.expired = 0  # Unblock effects saying a block's time was up
        self.errors = 0  # batches or elements nft refused
        self.last_error = ""
        self.latency = Latency()

    @property
    def nft(self) -> Nft:
        if self._nft is None:
            self._nft = Nft()
        return self._nft

    # ---- queueing (per packet: cheap) ------------------------------------------------------

    def note(self, effects: Iterable[Effect]) -> bool:
        """Queue the Block / Unblock effects among `effects`; True if any was queued."""
        queued = False
        for effect in effects:
            kind = effect_kind(effect)
            if kind is None:
                continue
            try:
                if isinstance(effect, MacBlock):  # the sender of forged packets, by its MAC
                    key = (ETHER_BAN_TABLE, effect.mac_text)
                else:
                    # effect_kind found a Block or an Unblock (by class name: mypy cannot
                    # follow).
                    key = (str(effect.table), addr_text(effect.addr))  # type: ignore[union-attr]
            except (AttributeError, ValueError) as exc:  # not an address: count, go on
                self._error(f"{type(effect).__name__} without a valid address: {exc}")
                continue
            if kind == "block":
                self._unblocks.pop(key, None)
                self._blocks[key] = effect
            elif is_expiry(effect):
                self.expired += 1
                continue
            else:
                self._blocks.pop(key, None)
                self._unblocks[key] = effect
            queued = True
        if queued and self.pending_since is None:
            self.pending_since = self.monotonic()
        return queued

    @property
    def pending(self) -> bool:
        return self.pending_since is not None

    def overdue(self) -> bool:
        """A queued effect has waited longer than FLUSH_AFTER (a burst is still going on)."""
        since = self.pending_since
        return since is not None and self.monotonic() - since >= FLUSH_AFTER

    # ---- writing ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the queued effects: all blocks in one transaction (one by one if nft refuses
        the batch, so that one bad element does not hold back the others), then unblocks.
        Never raises: errors are counted (`status`: kernel block errors)."""
        if self.pending_since is None:
            return
        blocks, unblocks = self._blocks, self._unblocks
        self._blocks, self._unblocks, self.pending_since = {}, {}, None
        if blocks:
            self._write_blocks(list(blocks.items()))
        for (table, text), _effect in unblocks.items():
            try:
                self.removed += self.nft.delete_elements(table, [text])
            except Exception as exc:  # KernelError, or a broken libnftables
                self._error(f"unblock {text}: {exc}")

    def _commands(self, table: str, text: str, block: Any) -> list[dict[str, object]]:
        ttl = getattr(block, "ttl", None)
        comment = block_comment(
            str(getattr(block, "detector", "") or ""),
            int(getattr(block, "offense", 0) or 0),
            str(getattr(block, "reason", "") or ""),
        )
        if table == ETHER_BAN_TABLE:
            return replace_ether_elements([text], ttl if ttl and ttl > 0 else None, comment)
        return replace_elements(table, [text], ttl if ttl and ttl > 0 else None, comment)

    def _write_blocks(self, items: list[tuple[tuple[str, str], Any]]) -> None:
        written: list[tuple[str, Any]] = []
        try:
            batch = [c for (table, text), b in items for c in self._commands(table, text, b)]
            self.nft.run(batch)
            written = [(text, b) for (_, text), b in items]
        except Exception:
            for (table, text), block in items:  # find the one(s) nft refuses
                try:
                    self.nft.run(self._commands(table, text, block))
                    written.append((text, block))
                except Exception as exc:
                    self._error(f"block {text} in {table}: {exc}")
        done = self.clock()
        for _text, block in written:
            self.added += 1
            self.latency.add(done - float(getattr(block, "time", done)))
        if written and self.log is not None:
            self._log_written(written, done)

    def _log_written(self, written: list[tuple[str, Any]], done: float) -> None:
        shown = []
        for text, b in written[:5]:
            ms = max(0.0, done - float(getattr(b, "time", done))) * 1000
            shown.append(f"{text} ({getattr(b, 'detector', '?')}, {ms:.1f} ms)")
        more = f" and {len(written) - 5} more" if len(written) > 5 else ""
        with contextlib.suppress(Exception):
            print(
                f"ipsctl: blocked in the kernel: {', '.join(shown)}{more}",
                file=self.log,
                flush=True,
            )

    def _error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        if self.log is not None:
            with contextlib.suppress(Exception):
                print(f"ipsctl: kernel block error: {message}", file=self.log, flush=True)

    def stats(self) -> dict[str, object]:
        return {
            "added": self.added,
            "removed": self.removed,
            "expired": self.expired,
            "kernel_errors": self.errors,
            "last_error": self.last_error,
            "latency": self.latency.as_dict(),
        }


# ---- adoption: the kernel's blocks into a (new) engine -------------------------------------------


def adopt_blocks(engine: Any, elements: Iterable[SetElement], now: float) -> int:
    """Tell the engine about blocks that are in the kernel (engine.adopt_block(addr,
    expires_at)); returns how many it took. Tolerates an engine without adopt_block."""
    adopt = getattr(engine, "adopt_block", None)
    if adopt is None:
        return 0
    try:  # an engine that takes the offense gets the one the element's comment kept
        with_offense = "offense" in inspect.signature(adopt).parameters
    except (TypeError, ValueError):
        with_offense = False
    taken = 0
    for element in elements:
        expires_at = element_expiry(element, now)
        try:
            addr = ipaddress.ip_address(element.addr).packed
            offense = parse_block_comment(element.comment)[1] if with_offense else 0
            if offense > 0:
                took = adopt(addr, expires_at, offense=offense)
            else:
                took = adopt(addr, expires_at)
        except Exception:  # one odd element must not stop the worker from starting
            continue
        taken += took is not False  # adopt_block may say no (False): a never-block address
    return taken


def adopt_mac_blocks(engine: Any, elements: Iterable[SetElement], now: float) -> int:
    """Tell the engine about the MAC bans in the kernel (engine.adopt_mac_block(mac,
    expires_at)), so that it does not ban them again as new; returns how many it took."""
    adopt = getattr(engine, "adopt_mac_block", None)
    if adopt is None:
        return 0
    taken = 0
    for element in elements:
        mac = parse_mac(element.addr)
        if mac is not None:
            taken += adopt(mac, element_expiry(element, now)) is not False
    return taken


def element_expiry(element: SetElement, now: float) -> float:
    """The wall-clock time an element leaves the set (inf: never)."""
    if element.expires is not None:
        return now + element.expires
    if element.timeout is not None:
        return now + element.timeout
    return math.inf


# ---- across a clean stop: the state file ---------------------------------------------------------


def _state_rows(elements: Iterable[SetElement], now: float) -> list[dict[str, Any]]:
    return [
        {
            "addr": e.addr,
            "timeout": e.timeout,
            "expires_at": None if math.isinf(exp := element_expiry(e, now)) else exp,
            "comment": e.comment,
        }
        for e in elements
    ]


def save_blocks(
    path: str | Path,
    elements: Iterable[SetElement],
    now: float,
    run: dict[str, Any] | None = None,
    macs: Iterable[SetElement] = (),
) -> int:
    """Write the blocks and the MAC bans (`macs`, the members of ETHER_BAN_TABLE) to `path`
    (JSON, mode 0600, replaced atomically); returns how many in all. None: the file is
    removed. `run`: the daemon run that saves them (daemon_run), so the next start can say
    where the blocks it restores came from."""
    path = Path(path)
    rows = _state_rows(elements, now)
    ether = _state_rows(macs, now)
    if not rows and not ether:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the file and renamed over it, never through a link planted at its name
    # (the control socket's directory may be shared with the ipsctl group).
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "table": BLOCK_TABLE,
        "saved_at": now,
        "blocks": rows,
    }
    if ether:  # left out when there are none: a file an older ipsctl can read as it was
        state["ether"] = ether
    if run is not None:
        state["run"] = run
    data = json.dumps(state)
    replace_private_file(str(path), data.encode(), mode=0o600)
    return len(rows) + len(ether)


@dataclass
class SavedBlocks:
    """A state file's blocks with time left, and who saved them: `run` is the daemon run
    (None in a file written before runs were recorded), `saved_at` the time of the save."""

    elements: list[SetElement]
    run: dict[str, Any] | None = None
    saved_at: float | None = None
    macs: list[SetElement] = field(default_factory=list)  # the MAC bans ("aa:bb:…")


def daemon_run(pid: int, started: float) -> dict[str, Any]:
    """What names one run of the daemon: this boot (the kernel's boot id), the supervisor's pid
    and its start time; `id` joins them."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    return {"id": f"{boot}/{pid}/{started:.3f}", "boot_id": boot, "pid": pid, "started_at": started}


def load_saved_blocks(path: str | Path, now: float) -> list[SetElement]:
    """The blocks of a state file that still have time left (see read_saved_blocks)."""
    return read_saved_blocks(path, now).elements


def read_saved_blocks(path: str | Path, now: float) -> SavedBlocks:
    """The blocks of a state file that still have time left (expires: seconds left) and the
    run that saved them, and the file is removed: it was consumed, and a stale file must not
    bring back a block deleted later. A missing or unreadable file gives no blocks."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return SavedBlocks([])
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    if not isinstance(data, dict):
        return SavedBlocks([])
    run = data.get("run")
    saved_at = data.get("saved_at")
    return SavedBlocks(
        _saved_elements(data.get("blocks"), addr_text, now),
        run if isinstance(run, dict) else None,
        float(saved_at) if isinstance(saved_at, int | float) else None,
        _saved_elements(data.get("ether"), _mac_text, now),
    )


def _mac_text(text: str) -> str:
    mac = parse_mac(text)
    if mac is None:
        raise ValueError(f"not a MAC address: {text!r}")
    return format_mac(mac)


def _saved_elements(rows: Any, name: Callable[[str], str], now: float) -> list[SetElement]:
    """A state file's rows with time left, each member named by `name` (a row it refuses,
    or any other odd row, is skipped: one bad row must not cost the others)."""
    out: list[SetElement] = []
    for row in rows if isinstance(rows, list) else []:
        try:
            addr = name(str(row["addr"]))
            expires_at = row.get("expires_at")
            left = None if expires_at is None else float(expires_at) - now
            if left is not None and left < 1:
                continue  # its time is (as good as) up
            timeout = row.get("timeout")
            out.append(
                SetElement(
                    addr,
                    int(timeout) if timeout else None,
                    math.ceil(left) if left is not None else None,
                    row.get("comment") or None,
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def restore_mac_blocks(nft: BlockSets, macs: Iterable[SetElement]) -> int:
    """Put saved MAC bans back into the kernel's set of banned MACs, skipping those that are
    members already. Returns how many were added."""
    macs = list(macs)
    if not macs:  # the usual case: no listing asked of the kernel for nothing
        return 0
    present = {e.addr for e in nft.ether_elements()}
    return _restore(macs, present, nft.replace_ether_elements, "ban")


def restore_blocks(nft: BlockSets, elements: Iterable[SetElement]) -> int:
    """Put saved blocks back into the kernel, skipping addresses that are members already
    (the kernel's own entry is newer). Returns how many were added."""
    present = {e.addr for e in nft.elements(BLOCK_TABLE)}

    def put(
        addrs: list[str], timeout: float | None, comment: str | None, expires: float | None
    ) -> None:
        nft.replace_elements(BLOCK_TABLE, addrs, timeout, comment, expires)

    return _restore(elements, present, put, "block")


def _restore(
    elements: Iterable[SetElement],
    present: set[str],
    put: Callable[[list[str], float | None, str | None, float | None], None],
    what: str,
) -> int:
    """Each saved element that is not a member already put back with `put` (its timeout and
    what is left of it); one the kernel refuses is said and skipped."""
    added = 0
    for e in elements:
        if e.addr in present:
            continue
        timeout = e.timeout if e.timeout is not None else e.expires
        try:
            put([e.addr], timeout, e.comment, e.expires)
            added += 1
        except KernelError as exc:
            print(f"ipsctl: could not restore the {what} of {e.addr}: {exc}", file=sys.stderr)
    return added
