"""ips/kernel/blocks.py and the worker's path from a Block effect to the kernel's block sets:
batching, errors, expiry, adoption by a new engine, the state file of a clean stop — first
with a fake nft, then against the real kernel inside namespaces this test creates (and
removes), never the host's ruleset."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path
from typing import Any

import pytest

from ips.io.adapter import BUSY_EVERY
from ips.kernel import blocks as kb
from ips.kernel.nft import KernelError
from ips.translate.nft import SetElement


class Block:
    """The shape of ips.core.events.Block (the contract with the engine)."""

    __slots__ = ("addr", "detector", "offense", "reason", "table", "time", "ttl")

    def __init__(
        self,
        addr: bytes,
        ttl: float,
        detector: str = "portscan",
        offense: int = 1,
        reason: str = "15 ports",
        time: float = 100.0,
        table: str = "banned",
    ) -> None:
        self.addr, self.table, self.ttl, self.detector = addr, table, ttl, detector
        self.offense, self.reason, self.time = offense, reason, time


class Unblock:
    __slots__ = ("addr", "reason", "table", "time")

    def __init__(self, addr: bytes, reason: str, time: float = 100.0) -> None:
        self.addr, self.table, self.reason, self.time = addr, "banned", reason, time


class Alert:  # any other effect: ignored by the kernel path
    pass


A1 = bytes([192, 0, 2, 1])
A2 = bytes([192, 0, 2, 2])
A6 = bytes.fromhex("20010db8000000000000000000000066")


class FakeNft:
    def __init__(self, refuse: str | None = None) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.deleted: list[tuple[str, list[str]]] = []
        self.refuse = refuse

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        if self.refuse and self.refuse in json.dumps(commands):
            raise KernelError(f"No such file or directory: {self.refuse}")
        self.batches.append(list(commands))
        return {}

    def delete_elements(self, table: str, addrs: list[str]) -> int:
        self.deleted.append((table, list(addrs)))
        return len(addrs)


def make(nft: FakeNft, now: float = 100.0004) -> kb.KernelBlocks:
    clock = iter([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    return kb.KernelBlocks(nft, clock=lambda: now, monotonic=lambda: next(clock, 5.0), log=None)  # type: ignore[arg-type]


# ---- with a fake nft -----------------------------------------------------------------------------


def test_blocks_of_a_burst_go_to_the_kernel_in_one_transaction() -> None:
    nft = FakeNft()
    blocks = make(nft)
    assert not blocks.note([Alert()]) and not blocks.pending
    assert blocks.note([Block(A1, 600), Alert(), Block(A6, 60, detector="stealth", offense=2)])
    assert blocks.pending
    blocks.flush()
    assert len(nft.batches) == 1  # one transaction for both
    (batch,) = nft.batches
    final = {
        c["add"]["element"]["name"]: c["add"]["element"]["elem"] for c in batch if "add" in c
    }  # the last add of each set: the one with the details
    assert final == {
        "banned_v4": [
            {"elem": {"val": "192.0.2.1", "timeout": 600, "comment": "portscan|1|15 ports"}}
        ],
        "banned_v6": [
            {"elem": {"val": "2001:db8::66", "timeout": 60, "comment": "stealth|2|15 ports"}}
        ],
    }
    assert blocks.added == 2 and blocks.errors == 0 and not blocks.pending
    lat = blocks.latency.as_dict()
    assert lat["count"] == 2 and lat["last_ms"] == pytest.approx(0.4, abs=0.01)
    blocks.flush()  # nothing queued: nothing written
    assert len(nft.batches) == 1


def test_the_latest_effect_for_an_address_wins() -> None:
    nft = FakeNft()
    blocks = make(nft)
    blocks.note([Block(A1, 60, offense=1), Block(A1, 600, offense=2)])
    blocks.note([Block(A2, 60), Unblock(A2, "manual")])  # blocked, then unblocked
    blocks.flush()
    (batch,) = nft.batches
    text = json.dumps(batch)
    assert "portscan|2|" in text and "portscan|1|" not in text and "192.0.2.2" not in text
    assert nft.deleted == [("banned", ["192.0.2.2"])]
    assert blocks.added == 1 and blocks.removed == 1


def test_expired_blocks_are_left_to_the_kernels_timer() -> None:
    nft = FakeNft()
    blocks = make(nft)
    assert not blocks.note([Unblock(A1, "expired"), Unblock(A2, "timeout")])
    blocks.flush()
    assert blocks.expired == 2 and nft.batches == [] and nft.deleted == []


def test_a_refused_batch_is_retried_one_by_one_and_counted() -> None:
    nft = FakeNft(refuse="nope_v4")
    blocks = make(nft)
    blocks.note([Block(A1, 60), Block(A2, 60, table="nope"), Block(b"\x01", 60)])
    blocks.flush()
    assert blocks.added == 1 and blocks.errors == 2  # the bad table, the bad address
    assert "nope" in blocks.last_error
    assert len(nft.batches) == 1 and "192.0.2.1" in json.dumps(nft.batches)


def test_overdue_means_a_block_waited_longer_than_flush_after() -> None:
    now = [10.0]
    blocks = kb.KernelBlocks(FakeNft(), monotonic=lambda: now[0], log=None)  # type: ignore[arg-type]
    blocks.note([Block(A1, 60)])
    assert not blocks.overdue()
    now[0] += kb.FLUSH_AFTER * 1.01
    assert blocks.overdue()


class FakePacket:
    indev = outdev = 0

    def __init__(self, queue: list[str]) -> None:
        self.queue = queue

    def get_payload(self) -> bytes:
        return b"x"

    def accept(self) -> None:
        self.queue.append("accept")

    def drop(self) -> None:
        self.queue.append("drop")


class FakeEngine:
    """Every packet is dropped; the first makes a Block."""

    class policy:
        on_error = "accept"

    def __init__(self) -> None:
        self.n = 0

    def handle(self, data: bytes, meta: object, now: float) -> Any:
        from ips.core.decision import Decision

        self.n += 1
        effects = (Block(A1, 60, time=now), Alert()) if self.n == 1 else ()
        return Decision("drop", effects=effects)


def test_the_queue_worker_writes_blocks_after_the_burst_and_inside_a_long_one() -> None:
    from ips.io import nfqueue

    nft = FakeNft()
    seen: list[list[object]] = []
    busy: list[int] = []
    mono = [0.0]
    blocks = kb.KernelBlocks(nft, monotonic=lambda: mono[0], log=None)  # type: ignore[arg-type]
    worker = nfqueue.QueueWorker(
        0,
        FakeEngine(),
        on_events=seen.append,
        blocks=blocks,  # type: ignore[arg-type]
        on_busy=lambda: busy.append(1),
    )
    verdicts: list[str] = []

    class Burst:  # netfilterqueue's run(): every packet waiting, then return
        def __init__(self, n: int, tick: float = 0.0) -> None:
            self.n, self.tick = n, tick

        def run(self, block: bool = True) -> None:
            for _ in range(self.n):
                worker._on_packet(FakePacket(verdicts))
                mono[0] += self.tick

    worker._nfq = Burst(3)
    worker.process_pending()
    assert verdicts == ["drop"] * 3 and len(nft.batches) == 1  # written when the burst ended
    assert [type(e).__name__ for e in seen[0]] == ["Block", "Alert"]  # and to the EVE sink
    # a burst that goes on: the block is written from inside it, once it waited FLUSH_AFTER
    worker.engine = FakeEngine()
    worker._nfq = Burst(BUSY_EVERY, tick=kb.FLUSH_AFTER / 2)
    inside: list[int] = []
    original = blocks.flush

    def spy() -> None:
        inside.append(len(verdicts))
        original()

    blocks.flush = spy  # type: ignore[method-assign]
    start = len(verdicts)
    worker.process_pending()
    assert inside and inside[0] - start < 5  # long before the burst's end
    assert len(nft.batches) == 2 and busy  # and the heartbeat went on during the burst


def test_effects_without_a_packet_take_the_same_way() -> None:
    from ips.io import nfqueue

    nft = FakeNft()
    seen: list[list[object]] = []
    blocks = kb.KernelBlocks(nft, log=None)  # type: ignore[arg-type]
    worker = nfqueue.QueueWorker(0, FakeEngine(), on_events=seen.append, blocks=blocks)  # type: ignore[arg-type]
    worker.effects([Unblock(A1, "expired"), Block(A2, 30)])
    assert blocks.expired == 1 and blocks.added == 1 and len(seen) == 1


def test_adopt_gives_the_engine_the_kernels_members() -> None:
    class Adopter:
        def __init__(self) -> None:
            self.got: list[tuple[bytes, float]] = []

        def adopt_block(self, addr: bytes, expires_at: float) -> None:
            if addr == A2:
                raise ValueError("never-block")  # refused: the others still go in
            self.got.append((addr, expires_at))

    engine = Adopter()
    elements = [
        SetElement("192.0.2.1", 600, 120),
        SetElement("192.0.2.2", 60, 5),
        SetElement("2001:db8::66", 60),
        SetElement("198.51.100.1"),
    ]
    assert kb.adopt_blocks(engine, elements, 1000.0) == 3
    assert engine.got == [(A1, 1120.0), (A6, 1060.0), (bytes([198, 51, 100, 1]), math.inf)]
    assert kb.adopt_blocks(object(), elements, 0.0) == 0  # an engine without adopt_block

    class WithOffense:
        def __init__(self) -> None:
            self.got: list[tuple[str, int]] = []

        def adopt_block(self, addr: bytes, expires_at: float, offense: int = 1) -> bool:
            self.got.append((kb.addr_text(addr), offense))
            return addr != A2  # refuses one (False): not counted

    engine2 = WithOffense()
    kept = [SetElement("192.0.2.1", 600, 60, "portscan|3|x"), SetElement("192.0.2.2", 60, 5)]
    assert kb.adopt_blocks(engine2, kept, 0.0) == 1
    assert engine2.got == [("192.0.2.1", 3), ("192.0.2.2", 1)]  # no comment: its default


def test_the_state_file_keeps_what_is_left_of_each_block(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "blocks.json"
    elements = [
        SetElement("192.0.2.1", 600, 500, "manual|0|x"),
        SetElement("192.0.2.2", 60, 2),  # will have expired
        SetElement("2001:db8::66", None, None),  # no timeout at all
    ]
    assert kb.save_blocks(path, elements, 1000.0) == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = kb.load_saved_blocks(path, 1100.0)  # stopped for 100 s
    assert loaded == [
        SetElement("192.0.2.1", 600, 400, "manual|0|x"),
        SetElement("2001:db8::66", None, None, None),
    ]
    assert not path.exists()  # consumed: a stale file never brings a block back
    assert kb.load_saved_blocks(path, 0.0) == []
    path.write_text("{not json")
    assert kb.load_saved_blocks(path, 0.0) == [] and not path.exists()
    kb.save_blocks(path, elements, 0.0)
    assert kb.save_blocks(path, [], 0.0) == 0 and not path.exists()  # nothing: no file


# ---- against the kernel, in a namespace ----------------------------------------------------------


def test_mac_bans_are_saved_restored_and_adopted_like_blocks(tmp_path: Path) -> None:
    path = tmp_path / "blocks.json"
    macs = [
        SetElement("02:00:00:00:00:0a", 600, 500, "portscan|1|forged"),
        SetElement("02:00:00:00:00:0b", 60, 2),  # will have expired
    ]
    assert kb.save_blocks(path, [SetElement("192.0.2.1", 600, 500)], 1000.0, None, macs) == 3
    raw = json.loads(path.read_text())
    raw["ether"].append({"addr": "not-a-mac", "expires_at": None})  # one odd row: skipped
    raw["ether"].append({"addr": "02-00-00-00-00-0C", "timeout": None, "expires_at": None})
    path.write_text(json.dumps(raw))
    saved = kb.read_saved_blocks(path, 1100.0)
    assert saved.elements == [SetElement("192.0.2.1", 600, 400, None)]
    assert saved.macs == [
        SetElement("02:00:00:00:00:0a", 600, 400, "portscan|1|forged"),
        SetElement("02:00:00:00:00:0c", None, None, None),  # written as the kernel lists it
    ]
    # Only MAC bans still saves a file; a file without them (an older ipsctl's) has none.
    assert kb.save_blocks(path, [], 0.0, None, macs[:1]) == 1
    assert kb.read_saved_blocks(path, 0.0).macs == [macs[0]]
    kb.save_blocks(path, [SetElement("192.0.2.1")], 0.0)
    assert "ether" not in json.loads(path.read_text())
    assert kb.read_saved_blocks(path, 0.0).macs == []

    class BanSet:
        def __init__(self, refuse: bool = False) -> None:
            self.members = [SetElement("02:00:00:00:00:0c", 30, 20, "sweep|2|newer")]
            self.refuse = refuse

        def ether_elements(self) -> list[SetElement]:
            return list(self.members)

        def replace_ether_elements(
            self, macs: list[str], timeout: float | None, comment: str | None, expires: float | None
        ) -> None:
            if self.refuse:
                raise KernelError("the divert backend cannot ban a MAC")
            self.members += [SetElement(m, int(timeout or 0), expires, comment) for m in macs]

    bans = BanSet()
    assert kb.restore_mac_blocks(bans, saved.macs) == 1  # type: ignore[arg-type]
    assert bans.members[1] == SetElement("02:00:00:00:00:0a", 600, 400, "portscan|1|forged")
    assert kb.restore_mac_blocks(BanSet(refuse=True), saved.macs) == 0  # type: ignore[arg-type]

    class Adopter:
        def __init__(self) -> None:
            self.got: list[tuple[bytes, float]] = []

        def adopt_mac_block(self, mac: bytes, expires_at: float) -> bool:
            self.got.append((mac, expires_at))
            return len(self.got) < 2  # the second is refused (a full table): not counted

    engine = Adopter()
    assert kb.adopt_mac_blocks(engine, [*bans.members, SetElement("junk")], 1000.0) == 1
    assert engine.got == [
        (bytes.fromhex("02000000000c"), 1020.0),
        (bytes.fromhex("02000000000a"), 1400.0),
    ]
    assert kb.adopt_mac_blocks(object(), bans.members, 0.0) == 0


def test_the_engine_adopts_a_mac_ban_and_does_not_ban_it_again() -> None:
    from ips.engine import Engine
    from ips.policy.resolve import load_policy_text

    engine = Engine(load_policy_text("table banned dynamic size 2 timeout 1h\n", "p.rules"))
    mac = bytes.fromhex("02000000000a")
    assert engine.adopt_mac_block(mac, 1600.0)
    assert engine.adopt_mac_block(bytes.fromhex("02000000000b"), 1600.0)
    assert not engine.adopt_mac_block(bytes.fromhex("02000000000c"), 1600.0)  # size 2: full
    blocks = engine.blocks
    got = blocks.request_mac(
        mac, bytes(4), 1000.0, 60.0, "portscan", "mac-mismatch", frozenset(), []
    )
    assert got == (None, "already")
    blocks.expire_macs(1600.0)
    assert blocks.macs == {}
    assert not Engine(load_policy_text("set default accept\n", "q.rules")).adopt_mac_block(mac, 1.0)
