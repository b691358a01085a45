"""A table of 1,000,000 entries applied with the real libnftables (issue 19, item 4), in a
network namespace this test makes for itself and deletes afterwards. Sends no packets.

Before: `table big file "big.txt"` with 900,000 addresses and 100,000 /28s went into the rule
as one anonymous set: `apply` ran for more than 11 minutes at 5.4 GB and never finished.
Now: named hash sets per prefix length, loaded in chunks before the rules refer to them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOSTS, NETS = 900_000, 100_000
# The goal, 10 s for 1,000,000 elements, is measured by bench/bigtable.py (speed is
# not asserted in a test: on a loaded machine a first apply took 11.7 s). Here only what
# the old way was fails: one anonymous set, 11 minutes and more. So the bound is loose.
APPLY_BOUND = 60.0


def _need_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("not root: network namespaces need root")
    for tool in ("ip", "nft"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing")
    try:
        import nftables  # noqa: F401
    except ImportError:
        pytest.skip("the libnftables binding is missing")


def _write_policy(where: Path) -> Path:
    with (where / "big.txt").open("w") as f:
        for i in range(HOSTS):  # every other address: none adjacent, none merged
            a = (10 << 24) + 2 * i
            f.write(f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}\n")
        for i in range(NETS):
            a = (100 << 24) + 16 * i
            f.write(f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/28\n")
    policy = where / "big.rules"
    policy.write_text('table big file "big.txt"\ndrop from @big\naccept proto tcp to port 22\n')
    return policy


APPLY = """
import json, sys, time
from ips.kernel.nft import Nft
from ips.policy.resolve import load_policy
from ips.translate.nft import NftPlan, static_sets
policy = load_policy(sys.argv[1])
plan = NftPlan(hooks=("forward",))
nft = Nft()
start = time.perf_counter()
nft.apply(policy, plan)
first = time.perf_counter() - start
start = time.perf_counter()
counters = nft.counters()
counting = time.perf_counter() - start
start = time.perf_counter()
nft.apply(policy, plan)  # the same table again: nothing to load
again = time.perf_counter() - start
sets = {s.name: len(s.nets) for s in static_sets(policy, plan).used.values()}
print(json.dumps({"first": first, "again": again, "counting": counting, "sets": sets,
                  "comments": sorted(counters)}))
"""


def _run(argv: list[str], timeout: float) -> str:
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, f"{' '.join(argv[:6])} -> {done.returncode}: {done.stderr}"
    return done.stdout


def test_a_million_entry_table_is_applied_in_seconds(tmp_path: Path) -> None:
    _need_lab()
    policy = _write_policy(tmp_path)
    netns = f"tbig{os.getpid() % 10000}{secrets.token_hex(3)}"
    _run(["ip", "netns", "add", netns], 30)
    try:
        code = textwrap.dedent(APPLY)
        out = _run(["ip", "netns", "exec", netns, sys.executable, "-c", code, str(policy)], 300)
        result = json.loads(out.strip().splitlines()[-1])
        assert result["sets"] == {
            next(n for n in result["sets"] if "_v4_32_" in n): HOSTS,
            next(n for n in result["sets"] if "_v4_28_" in n): NETS,
        }
        # Every element is in the kernel: the sets' own listings, counted.
        in_kernel = {}
        for name in result["sets"]:
            listing = _run(
                ["ip", "netns", "exec", netns, "nft", "-j", "list", "set", "inet", "ipsctl", name],
                300,
            )
            (obj,) = [o["set"] for o in json.loads(listing)["nftables"] if "set" in o]
            in_kernel[name] = len(obj.get("elem", []))
        assert in_kernel == result["sets"]
        assert sum(in_kernel.values()) == HOSTS + NETS
        # The rule refers to the sets, with the mask of the /28s; no element in any rule.
        chain = _run(
            ["ip", "netns", "exec", netns, "nft", "list", "chain", "inet", "ipsctl", "forward"], 300
        )
        assert "ip saddr & 255.255.255.240 == @big_v4_28_" in chain
        assert "ip saddr @big_v4_32_" in chain
        assert "10.0.0.2" not in chain
        # Not the old way (minutes), and what `status` needs: counters without fetching a
        # million elements (a fetch takes seconds, counting a few ms).
        assert result["first"] < APPLY_BOUND, result
        assert result["again"] < APPLY_BOUND, result
        assert result["counting"] < 1.0, result
        assert "ipsctl:" + str(policy) + ":2" in result["comments"]
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
