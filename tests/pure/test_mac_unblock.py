"""`ipsctl blocks` and the MACs banned for forged packets (the nft set banned_ether): `list`
shows them after the addresses, `del MAC` lifts one (in the kernel's set and in the engine,
which would otherwise go on dropping its packets), `flush` lifts them all. The kernel's side
runs in tests/lab/test_spoof_lab.py."""

from __future__ import annotations

import ipaddress
from typing import Any

from ips.core.addr import parse_mac
from ips.daemon import supervisor
from ips.daemon.stats import Counters
from ips.daemon.worker import Worker
from ips.engine import Engine
from ips.policy.resolve import load_policy_text
from ips.translate.nft import SetElement, block_comment

MAC = "02:00:00:00:00:66"
BANNED = SetElement(MAC, 600, 590, block_comment("portscan", 1, "spoofed 10.10.1.20"))
BLOCKED = SetElement("10.10.1.66", 3600, 3000, block_comment("manual", 0, "by hand"))


class FakeSets:
    """The kernel's two block sets, as the Diversion shows them."""

    def __init__(self) -> None:
        self.addrs = {BLOCKED.addr: BLOCKED}
        self.macs = {MAC: BANNED}

    def blocks(self) -> list[SetElement]:
        return list(self.addrs.values())

    def mac_blocks(self) -> list[SetElement]:
        return list(self.macs.values())

    def unblock_mac(self, mac: str) -> bool:
        return self.macs.pop(mac, None) is not None

    def flush_blocks(self) -> None:
        self.addrs.clear()
        self.macs.clear()


def daemon() -> tuple[Any, list[dict[str, Any]]]:
    d = object.__new__(supervisor.Daemon)
    d.counters = Counters()
    d.diversion = FakeSets()
    told: list[dict[str, Any]] = []

    def tell(msg: dict[str, Any]) -> dict[str, Any]:
        told.append(msg)
        return {"ok": True, "engine": True, "count": 1}

    d._tell_worker = tell
    return d, told


def test_parse_mac_takes_colons_or_dashes_and_nothing_else() -> None:
    assert parse_mac("02:00:00:00:00:66") == bytes.fromhex("020000000066")
    assert parse_mac(" AA-bb-CC-dd-EE-0f ") == bytes.fromhex("aabbccddee0f")
    for text in ("10.10.1.66", "fd00::66", "02:00:00:00:00", "02:00:00:00:00:66:77",
                 "0g:00:00:00:00:66", "+1:00:00:00:00:66", "2:00:00:00:00:66", ""):  # fmt: skip
        assert parse_mac(text) is None, text


def test_list_shows_the_banned_macs_after_the_addresses() -> None:
    d, _ = daemon()
    rows = d.blocks_list()["blocks"]
    assert [(r["addr"], r["table"]) for r in rows] == [
        ("10.10.1.66", "banned"),
        (MAC, "banned_ether"),
    ]
    mac = rows[1]
    assert mac["detector"] == "portscan" and mac["offense"] == 1
    assert mac["reason"] == "spoofed 10.10.1.20" and mac["expires_in"] == 590


def test_del_of_a_mac_lifts_it_in_the_kernel_and_tells_the_engine() -> None:
    d, told = daemon()
    reply = d.blocks_del("02-00-00-00-00-66")  # as `ip link` or Windows write it
    assert reply["ok"] and reply["addr"] == MAC and reply["table"] == "banned_ether"
    assert reply["removed"] is True and not d.diversion.macs
    assert told == [{"op": "unblock_mac", "mac": MAC, "time": told[0]["time"]}]
    assert d.counters.blocks_removed == 1
    assert BLOCKED.addr in d.diversion.addrs  # the address blocks stay


def test_del_of_a_mac_neither_kernel_nor_engine_has_is_an_error() -> None:
    d, _ = daemon()
    d._tell_worker = lambda msg: {"ok": True, "engine": False, "count": 0}
    reply = d.blocks_del("02:00:00:00:00:99")
    assert reply == {"ok": False, "error": "02:00:00:00:00:99 is not blocked"}
    assert d.blocks_del("not-an-address") == {
        "ok": False,
        "error": "not an IP or MAC address: 'not-an-address'",
    }


def test_flush_counts_and_lifts_the_macs_too() -> None:
    d, told = daemon()
    reply = d.blocks_flush()
    assert reply["ok"] and reply["removed"] == 2
    assert not d.diversion.addrs and not d.diversion.macs
    assert told[0]["op"] == "unblock_all"


class Adapter:
    on_events = None


def banned_engine() -> Engine:
    policy = "table banned dynamic timeout 1h\nset default accept\ndrop from @banned\n"
    engine = Engine(load_policy_text(policy, "t.rules"))
    for mac in (MAC, "02:00:00:00:00:67"):
        block, how = engine.blocks.request_mac(
            parse_mac(mac) or b"", ipaddress.ip_address("10.10.1.20").packed, 1000.0, 600.0,
            "portscan", "mac-mismatch", frozenset(), [],
        )  # fmt: skip
        assert block is not None and how == "added"
    return engine


def test_the_worker_tells_the_engine_to_forget_one_mac_or_all() -> None:
    engine = banned_engine()
    worker = Worker(engine, Adapter())  # type: ignore[arg-type]
    assert worker.command({"op": "unblock_mac", "mac": MAC, "time": 1001.0}) == {
        "ok": True,
        "engine": True,
        "count": 1,
    }
    assert list(engine.blocks.macs) == [bytes.fromhex("020000000067")]
    again = worker.command({"op": "unblock_mac", "mac": MAC, "time": 1002.0})
    assert again == {"ok": True, "engine": False, "count": 0}
    worker.command({"op": "unblock_all", "reason": "flush", "time": 1003.0})
    assert not engine.blocks.macs
