"""The nftables adapter: runs the JSON of ips/translate/nft/ through libnftables, one
atomic batch a call.

libnftables acts in the network namespace its context was created in: the netlink socket is
opened by Nftables() and kept (checked: a context made before setns() still changes the old
namespace). So a test or a lab creates Nft inside the namespace it wants to change — most
simply in a process started there (`ip netns exec NS …`).
Only our table, `inet ipsctl`, is ever created, changed or deleted.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ips.kernel.nft_counters import dump_counters
from ips.policy.model import Policy
from ips.translate import nft as nft_json
from ips.translate.nft import (
    Address,
    NftPlan,
    RuleCounter,
    SetElement,
    StaticSets,
    TableState,
)

_TABLE = {"family": nft_json.FAMILY, "name": nft_json.TABLE}
_TABLE_OF_CHAIN = {"family": nft_json.FAMILY, "table": nft_json.TABLE}


class KernelError(RuntimeError):
    """nft refused a command; the message is nft's own error text."""


def _load_library() -> Any:
    try:
        import nftables  # the pip-nftables / python3-nftables binding (ctypes)
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise KernelError(
            "the Python binding of libnftables is missing: pip install pip-nftables "
            "(or apt-get install python3-nftables)"
        ) from exc
    try:
        return nftables.Nftables()
    except OSError as exc:  # libnftables.so.1 not found by ctypes
        raise KernelError(
            f"libnftables cannot be loaded ({exc}): apt-get install libnftables1 nftables"
        ) from exc


@dataclass(frozen=True, slots=True)
class Applied:
    """What apply() put in the kernel."""

    split: int  # leading policy rules in the kernel (the fast path)
    nft_rules: int  # nft rules added over all hooks (mark clearing and counters included)
    hooks: tuple[str, ...]


class Nft:
    """ipsctl's nftables table. One libnftables context, used under a lock (it is not
    thread-safe); every method is one atomic transaction, or a read."""

    def __init__(self, lib: Any | None = None) -> None:
        self._nft = lib if lib is not None else _load_library()
        self._lib_given = lib is not None  # a stand-in: read everything through it
        self._lock = threading.Lock()

    # ---- raw batches -------------------------------------------------------------------------

    def run(self, commands: Sequence[dict[str, object]]) -> dict[str, Any]:
        """Run commands as one batch: all or nothing. Returns nft's JSON output ({} if none)."""
        with self._lock:
            rc, output, error = self._nft.json_cmd({"nftables": list(commands)})
        if rc != 0:
            raise KernelError(_clean_error(error) or f"nft failed (rc {rc})")
        return output if isinstance(output, dict) else {}

    # ---- the table ---------------------------------------------------------------------------

    def list_table(self) -> dict[str, Any]:
        """`list table inet ipsctl` as nft JSON; {} when the table does not exist."""
        try:
            return self.run([{"list": {"table": _TABLE}}])
        except KernelError as exc:
            if _missing(exc):
                return {}
            raise

    def table_exists(self) -> bool:
        """Whether our table has chains or sets (without listing their elements)."""
        return self.state() is not None

    def _terse(self, commands: Sequence[dict[str, object]]) -> dict[str, Any]:
        """run() with nft's terse output: sets are listed without their elements."""
        setter = getattr(self._nft, "set_terse_output", None)
        if setter is None:  # a binding without it: the elements come along
            return self.run(commands)
        with self._lock:
            setter(True)
            try:
                rc, output, error = self._nft.json_cmd({"nftables": list(commands)})
            finally:
                setter(False)
        if rc != 0:
            raise KernelError(_clean_error(error) or f"nft failed (rc {rc})")
        return output if isinstance(output, dict) else {}

    def state(self) -> TableState | None:
        """Our chains and sets, with the members of the dynamic sets (what build_ruleset
        needs to keep them). The named sets of static tables are listed without theirs:
        a million elements take nft minutes to fetch, and their names say their content."""
        objects: list[object] = []
        for command in nft_json.list_overview():  # one a call: nft answers each with a document
            objects += self._terse([command]).get("nftables", [])
        overview = nft_json.parse_overview({"nftables": objects})
        if overview is None:
            return None
        sets = dict(overview.sets)
        for name in overview.sets:
            if nft_json.STATIC_SET_RE.search(name):
                continue
            listing = self.run(nft_json.list_named_set(name))
            for obj in listing.get("nftables", []):
                if "set" in obj:
                    elements = nft_json.parse_elements(obj["set"].get("elem"))
                    sets[name] = replace(sets[name], elements=elements)
        return TableState(overview.chains, sets)

    def apply(self, policy: Policy, plan: NftPlan) -> Applied:
        """Make the kernel run `policy`'s fast path as `plan` says, in one transaction: table
        and sets are created or kept (members survive), our chains flushed and refilled. On
        error nothing changed and the running rules stay.

        The named sets of large static tables are loaded first, each in transactions of
        ELEMENT_CHUNK elements, while the old rules keep running (see load_static_sets)."""
        static = nft_json.static_sets(policy, plan)
        existing = self.state()
        if static.used and self.load_static_sets(static, existing):
            existing = self.state()
        commands = nft_json.build_ruleset(policy, plan, existing=existing, static=static)
        try:
            self.run(commands)
        except KernelError:
            # Refused: the running rules stay, and the sets loaded for the new ones go (those
            # the running rules use cannot be deleted, and are not).
            for name in static.used:
                with contextlib.suppress(KernelError):
                    self._delete_unused_set(name)
            raise
        added = sum(1 for c in commands if "rule" in c.get("add", {}))
        split = 0 if plan.blocks_only else nft_json.fast_path_split(policy)
        return Applied(split, added, plan.hooks)

    def load_static_sets(self, static: StaticSets, existing: TableState | None) -> int:
        """Create and fill the named sets `static` refers to; returns how many were loaded.

        A set that exists already is kept when the running rules use it: nft refuses to
        delete a set in use, and a set is used only once it was loaded in full (the rules
        that refer to it come in a later transaction). One that is not in use may be left
        over from an apply that died half-way: deleted and loaded again. On an error the
        sets made here are deleted, and the running rules stay as they were."""
        have = existing.sets if existing is not None else {}
        loaded: list[str] = []
        if existing is None:
            self.run([{"add": {"table": _TABLE}}])
        try:
            for named in static.used.values():
                if named.name in have and not self._delete_unused_set(named.name):
                    continue  # in use: complete
                self.run([{"add": {"set": named.object()}}])
                loaded.append(named.name)
                for chunk in named.chunks():
                    self.run([chunk])
        except KernelError:
            for name in loaded:
                with contextlib.suppress(KernelError):  # the error that matters is raised
                    self._delete_unused_set(name)
            raise
        return len(loaded)

    def _delete_unused_set(self, name: str) -> bool:
        """Delete set `name` unless a rule uses it; True when it was deleted."""
        try:
            self.run(nft_json.delete_set(name))
        except KernelError as exc:
            if "busy" in str(exc).lower():
                return False
            raise
        return True

    def remove(self) -> bool:
        """Delete `inet ipsctl` (and with it our chains and sets); False if it was absent."""
        try:
            self.run(nft_json.delete_table())
        except KernelError as exc:
            if _missing(exc):
                return False
            raise
        return True

    def counters(self) -> dict[str, RuleCounter]:
        """Packets/bytes per `ipsctl:FILE:LINE` comment (and `ipsctl:to-userspace`).

        Read by a netlink dump of the rules alone (ips/kernel/nft_counters.py): `list table`
        fetches every set element first, seconds to minutes with a large static table. nft's
        listing when that dump cannot be made (a test's library without a kernel)."""
        if self._lib_given:
            return nft_json.parse_counters(self.list_table())
        try:
            return dump_counters()
        except OSError:
            return nft_json.parse_counters(self.list_table())

    def chain_counters(self, chains: Iterable[str]) -> dict[str, RuleCounter]:
        """The counters of some of our chains only: `list chain` lists their rules, not the
        members of the sets (which `list table` does, and a big blocklist makes slow).
        {} for a chain that does not exist."""
        out: dict[str, RuleCounter] = {}
        for chain in chains:
            try:
                listing = self.run([{"list": {"chain": {**_TABLE_OF_CHAIN, "name": chain}}}])
            except KernelError as exc:
                if _missing(exc):
                    continue
                raise
            for comment, c in nft_json.parse_counters(listing).items():
                old = out.get(comment, RuleCounter())
                out[comment] = RuleCounter(old.packets + c.packets, old.bytes + c.bytes)
        return out

    # ---- dynamic sets (blocks) -------------------------------------------------------------

    def add_elements(
        self, table: str, addrs: Iterable[Address], timeout: float | None = None
    ) -> None:
        """Add or refresh members of dynamic table `table` (timeout None: the set's default)."""
        commands = nft_json.add_elements(table, addrs, timeout)
        if commands:
            self.run(commands)

    def replace_elements(
        self,
        table: str,
        addrs: Iterable[Address],
        timeout: float | None = None,
        comment: str | None = None,
        expires: float | None = None,
    ) -> None:
        """Make addresses members with exactly this timeout and comment (one transaction;
        see ips/translate/nft/, replace_elements)."""
        commands = nft_json.replace_elements(table, addrs, timeout, comment, expires)
        if commands:
            self.run(commands)

    def flush_elements(self, table: str) -> None:
        """Remove every member of dynamic table `table` (both families, one transaction)."""
        self.run(nft_json.flush_sets(table))

    def delete_elements(self, table: str, addrs: Iterable[Address]) -> int:
        """Remove members; addresses that are not (or no longer) members are skipped.
        Returns how many were removed."""
        addrs = list(addrs)
        if not addrs:
            return 0
        try:
            self.run(nft_json.delete_elements(table, addrs))
            return len(addrs)
        except KernelError as exc:
            if not _missing(exc):
                raise
        # One was absent (maybe just expired) and nft refused the whole batch: one by one.
        removed = 0
        for addr in addrs:
            try:
                self.run(nft_json.delete_elements(table, [addr]))
                removed += 1
            except KernelError as exc:
                if not _missing(exc):
                    raise
        return removed

    def elements(self, table: str) -> list[SetElement]:
        """Members of dynamic table `table`, both families (expires: seconds left)."""
        out: list[SetElement] = []
        for family in (4, 6):
            try:
                listing = self.run(nft_json.list_set(table, family))
            except KernelError as exc:
                if _missing(exc):  # no such set (or no table): no members
                    continue
                raise
            for obj in listing.get("nftables", []):
                if "set" in obj:
                    out.extend(nft_json.parse_elements(obj["set"].get("elem")))
        return out

    # ---- the set of banned MACs (ETHER_BAN_TABLE: one set, no families) ----------------------

    def ether_elements(self) -> list[SetElement]:
        """Members of the set of banned MACs (expires: seconds left); none when it is absent
        (a policy without a block table)."""
        try:
            listing = self.run(nft_json.list_ether_set())
        except KernelError as exc:
            if _missing(exc):
                return []
            raise
        out: list[SetElement] = []
        for obj in listing.get("nftables", []):
            if "set" in obj:
                out.extend(nft_json.parse_elements(obj["set"].get("elem")))
        return out

    def replace_ether_elements(
        self,
        macs: Iterable[str],
        timeout: float | None = None,
        comment: str | None = None,
        expires: float | None = None,
    ) -> None:
        """Ban MACs with exactly this timeout and comment (one transaction; see
        ips/translate/nft/, replace_ether_elements)."""
        commands = nft_json.replace_ether_elements(macs, timeout, comment, expires)
        if commands:
            self.run(commands)

    def delete_ether_elements(self, macs: Iterable[str]) -> int:
        """Remove MACs from the set of banned MACs; those not (or no longer) members are
        skipped. Returns how many were removed."""
        removed = 0
        for mac in macs:  # one by one: nft refuses a whole batch for one absent element
            try:
                self.run(nft_json.delete_ether_elements([mac]))
                removed += 1
            except KernelError as exc:
                if not _missing(exc):
                    raise
        return removed

    def flush_ether_elements(self) -> None:
        """Remove every member of the set of banned MACs (nothing when it is absent)."""
        try:
            self.run(nft_json.flush_ether_set())
        except KernelError as exc:
            if not _missing(exc):
                raise


def _clean_error(text: str) -> str:
    """nft's error text without the `internal:0:0-0: ` position it gives JSON input."""
    lines = [line.replace("internal:0:0-0: ", "").strip() for line in text.splitlines()]
    return "; ".join(line for line in lines if line)


def _missing(exc: KernelError) -> bool:
    return "No such file or directory" in str(exc)
