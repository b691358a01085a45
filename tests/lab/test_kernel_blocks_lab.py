"""Kernel blocks in a network namespace: effects reach the kernel's set quickly, and blocks
survive a killed or a cleanly stopped daemon."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


TIMEOUT = 60


def need(ok: object, why: str) -> None:
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {why}")
        pytest.skip(why)


@pytest.fixture
def ns() -> Iterator[str]:
    need(os.geteuid() == 0, "not root: network namespaces need root")
    for tool in ("ip", "nft", "iptables"):
        need(shutil.which(tool), f"{tool} is missing")
    name = f"tb{os.getpid() % 10000}{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=TIMEOUT)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=TIMEOUT)


PRELUDE = f"""
import json, sys, time
sys.path.insert(0, {str(Path(__file__).parents[1] / "pure")!r})
from test_kernel_blocks import Block, Unblock
from ips.kernel import blocks as kb
from ips.kernel.nft import Nft
from ips.policy.resolve import load_policy_text
from ips.translate.nft import NftPlan
POLICY = load_policy_text("table banned dynamic timeout 1h\\ndrop from @banned\\n", "p.rules")
"""


def run_in(ns: str, code: str) -> Any:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_block_effects_reach_the_kernel_in_well_under_a_millisecond(ns: str) -> None:
    got = run_in(
        ns,
        """
        nft = Nft()
        nft.apply(POLICY, NftPlan(hooks=("forward",)))
        blocks = kb.KernelBlocks(nft, log=None)
        a = bytes([192, 0, 2, 1])
        for i in range(20):  # a new attacker each time: one small transaction each
            blocks.note([Block(bytes([198, 51, 100, i]), 100, time=time.time())])
            blocks.flush()
        blocks.note([Block(a, 100, time=time.time()),
                     Block(bytes(15) + b"\\x01", 50, time=time.time())])
        blocks.flush()
        first = {e.addr: [e.timeout, e.comment] for e in nft.elements("banned")}
        blocks.note([Block(a, 300, offense=2, reason="again", time=time.time())])  # re-block
        blocks.flush()
        second = {e.addr: [e.timeout, e.comment] for e in nft.elements("banned")}
        blocks.note([Unblock(a, "manual"), Block(bytes([203, 0, 113, 1]), 60, table="nope")])
        blocks.flush()
        third = sorted(e.addr for e in nft.elements("banned"))
        print(json.dumps([first, second, third, blocks.stats()]))
    """,
    )
    first, second, third, stats = got
    assert first["192.0.2.1"] == [100, "portscan|1|15 ports"] and first["::1"][0] == 50
    assert second["192.0.2.1"] == [300, "portscan|2|again"]  # timeout and comment replaced
    assert "192.0.2.1" not in third and len(third) == 21
    assert stats["added"] == 23 and stats["removed"] == 1 and stats["kernel_errors"] == 1
    # the measured path from the effect to the element in the kernel (one nft transaction)
    assert stats["latency"]["count"] == 23 and stats["latency"]["max_ms"] < 50, stats
    print(f"effect -> kernel element: {stats['latency']}")


def test_a_start_over_a_killed_daemons_table_keeps_its_blocks(ns: str) -> None:
    got = run_in(
        ns,
        """
        from ips.kernel.diversion import NftDiversion
        from ips.kernel.probe import Capabilities
        nft = Nft()
        nft.apply(load_policy_text("drop proto udp to port 9\\n", "old.rules"),
                  NftPlan(hooks=("input",)))
        nft.replace_elements("banned", ["192.0.2.1"], 600, "portscan|1|x")
        caps = Capabilities(root=True, nft_library=True, timeout_sets=True, iptables_nfqueue=True)
        d = NftDiversion(hooks=("forward",), caps=caps)
        d.remove_stale()
        d.install(POLICY)
        members = [[e.addr, e.comment] for e in d.blocks()]
        chains = nft.state().chains
        d.remove()
        print(json.dumps([members, chains, nft.table_exists()]))
    """,
    )
    members, chains, exists = got
    assert members == [["192.0.2.1", "portscan|1|x"]]
    # the old chain went, the new one is in (with its offload chain: `set offload` is on)
    assert chains == ["forward", "forward_offload"]
    assert exists is False


def test_blocks_saved_by_a_clean_stop_come_back_with_their_time_left(ns: str, tmp_path: Path):
    state = tmp_path / "blocks.json"
    got = run_in(
        ns,
        f"""
        nft = Nft()
        nft.apply(POLICY, NftPlan(hooks=("forward",), ether_blocks=True))
        nft.replace_elements("banned", ["192.0.2.1"], 600, "manual|0|by hand")
        nft.replace_elements("banned", ["2001:db8::1"], 600, "stealth|1|xmas")
        nft.replace_ether_elements(["02:00:00:00:00:0a"], 600, "portscan|1|forged")
        nft.replace_ether_elements(["02:00:00:00:00:0b"], 600, "sweep|1|forged")
        kb.save_blocks({str(state)!r}, nft.elements("banned"), time.time(), None,
                       nft.ether_elements())
        nft.remove()
        nft.apply(POLICY, NftPlan(hooks=("forward",), ether_blocks=True))
        nft.replace_elements("banned", ["2001:db8::1"], 30, "sweep|1|newer")  # already back
        nft.replace_ether_elements(["02:00:00:00:00:0b"], 30, "sweep|2|newer")
        saved = kb.read_saved_blocks({str(state)!r}, time.time() + 100)  # 100 s later
        added = kb.restore_blocks(nft, saved.elements)
        added_macs = kb.restore_mac_blocks(nft, saved.macs)
        now = {{e.addr: [e.timeout, e.expires, e.comment] for e in nft.elements("banned")}}
        macs = {{e.addr: [e.timeout, e.expires, e.comment] for e in nft.ether_elements()}}
        nft.remove()
        print(json.dumps([added, now, added_macs, macs]))
    """,
    )
    added, now, added_macs, macs = got
    assert added == 1 and added_macs == 1
    # A MAC ban comes back as an address's block does: its time left, its comment ...
    timeout, expires, comment = macs["02:00:00:00:00:0a"]
    assert timeout == 600 and 490 <= expires <= 500 and comment == "portscan|1|forged"
    assert macs["02:00:00:00:00:0b"][0::2] == [30, "sweep|2|newer"]  # ... the kernel's wins
    timeout, expires, comment = now["192.0.2.1"]
    assert timeout == 600 and 490 <= expires <= 500 and comment == "manual|0|by hand"
    timeout, expires, comment = now["2001:db8::1"]  # the kernel's own entry wins
    # (time left is whole seconds, so a loaded machine may already show 29)
    assert timeout == 30 and 28 <= expires <= 30 and comment == "sweep|1|newer"
