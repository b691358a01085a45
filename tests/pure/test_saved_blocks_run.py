"""The daemon's saved blocks say which run left them (issue 19, item 13): the state file
records the daemon run that saved it (boot id, pid, start time), the next start shows where
the blocks it restored came from in `status` and `blocks list --json`, and a state file
written before runs were recorded still loads."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ips.daemon import supervisor
from ips.daemon.stats import Counters
from ips.kernel.blocks import daemon_run, load_saved_blocks, read_saved_blocks, save_blocks
from ips.translate.nft import SetElement, block_comment

NOW = 1_700_000_000.0
COMMENT = block_comment("portscan", 2, "ports 15 within 60s")


def test_the_state_file_records_the_run_and_old_files_still_load(tmp_path: Path) -> None:
    run = daemon_run(4242, NOW - 100)
    assert run["pid"] == 4242 and run["id"] == f"{run['boot_id']}/4242/{NOW - 100:.3f}"
    state = tmp_path / "blocks.json"
    save_blocks(state, [SetElement("10.10.1.66", 600, 500, COMMENT)], NOW, run)
    assert json.loads(state.read_text())["run"] == run
    saved = read_saved_blocks(state, NOW + 10)
    assert saved.run == run and saved.saved_at == NOW
    assert saved.elements == [SetElement("10.10.1.66", 600, 490, COMMENT)]
    # a file of an older daemon: no run, the same blocks
    state.write_text(
        json.dumps(
            {
                "version": 1,
                "table": "banned",
                "saved_at": NOW,
                "blocks": [
                    {
                        "addr": "10.10.1.66",
                        "timeout": 600,
                        "expires_at": NOW + 500,
                        "comment": COMMENT,
                    }
                ],
            }
        )
    )
    old = read_saved_blocks(state, NOW + 10)
    assert old.run is None and old.elements == [SetElement("10.10.1.66", 600, 490, COMMENT)]
    assert not state.exists()  # consumed
    assert load_saved_blocks(tmp_path / "none.json", NOW) == []


class FakeNft:
    def __init__(self) -> None:
        self.members: dict[str, SetElement] = {}

    def elements(self, _table: str) -> list[SetElement]:
        return list(self.members.values())

    def replace_elements(
        self, _table: str, addrs: list[str], timeout: Any, comment: Any, expires: Any = None
    ) -> None:
        for addr in addrs:
            self.members[addr] = SetElement(addr, timeout, expires, comment)


class FakeDiversion:
    def __init__(self) -> None:
        self.nft = FakeNft()

    def blocks(self) -> list[SetElement]:
        return self.nft.elements("banned")

    def mac_blocks(self) -> list[SetElement]:
        return []


def test_restored_blocks_show_the_run_that_saved_them(tmp_path: Path) -> None:
    now = time.time()  # the daemon restores what has time left now
    earlier = daemon_run(1111, now - 3600)
    state = tmp_path / "blocks.json"
    save_blocks(
        state,
        [
            SetElement("10.10.1.66", 600, 500, COMMENT),
            SetElement("fd00:10:1::66", 600, 500, COMMENT),
        ],
        now,
        earlier,
    )
    d = object.__new__(supervisor.Daemon)
    d.cfg = type("Cfg", (), {"state_file": str(state)})()  # type: ignore[assignment]
    d.counters = Counters()
    d.diversion = FakeDiversion()  # type: ignore[assignment]
    d.restored_from, d._restored = None, {}
    d._restore_blocks()
    assert d.restored_from is not None
    assert d.restored_from["run"] == earlier and d.restored_from["blocks"] == 2
    rows = {r["addr"]: r for r in d.blocks_list()["blocks"]}
    assert rows["10.10.1.66"]["restored_from"] == {
        "state_file": str(state),
        "saved_at": now,
        "run": earlier["id"],
    }
    # a block renewed since (a new comment) is no longer the restored one
    d.diversion.nft.members["fd00:10:1::66"] = SetElement(  # type: ignore[attr-defined]
        "fd00:10:1::66", 60, 60, block_comment("manual", 0, "again")
    )
    d.diversion.nft.members["10.10.1.99"] = SetElement("10.10.1.99", 60, 60, COMMENT)  # type: ignore[attr-defined]
    rows = {r["addr"]: r for r in d.blocks_list()["blocks"]}
    assert rows["fd00:10:1::66"]["restored_from"] is None
    assert rows["10.10.1.99"]["restored_from"] is None
    assert rows["10.10.1.66"]["restored_from"]["run"] == earlier["id"]
