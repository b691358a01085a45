"""Geo-blocking in the kernel (issue 22): a site file maps the lab's attacker (a private lab
address: no lab host ever has a public one) to country XX, beside a country database the
test builds; `drop from country XX` then drops the attacker in nftables — the rule's counter
grows and the queue sees none of its packets — while the client gets through. A changed
site file, applied with `ipsctl apply`, moves the client into XX as well: the running daemon
resolves the geo data again at every apply."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from labkit import ATTACKER, CLIENT, ROOT, SERVER, InlineLab, inline_lab

from ips.geo.mmdb_writer import build_mmdb, range_of

POLICY = """\
set geo-dir "geo"
set geo-site "sites.conf"
drop from country XX
"""


def kernel_rule_packets(box: InlineLab, comment_part: str) -> int:
    """Packets counted by the kernel rules whose comment holds COMMENT_PART."""
    table = json.loads(box.gw_text(["nft", "-j", "list", "table", "inet", "ipsctl"]))
    total = 0
    for obj in table["nftables"]:
        rule = obj.get("rule")
        if rule and comment_part in rule.get("comment", ""):
            total += sum(x["counter"]["packets"] for x in rule["expr"] if "counter" in x)
    return total


def gets_through(box: InlineLab, node: str) -> bool:
    return box.curl(node, f"http://{SERVER}/", max_time=1).returncode == 0


def test_drop_from_country_is_decided_in_the_kernel(tmp_path: Path) -> None:
    geo = tmp_path / "geo"
    geo.mkdir()
    (geo / "country.mmdb").write_bytes(
        build_mmdb([(*range_of("1.2.3.0", "1.2.3.255"), {"country_code": "RU"})], "country", 1)
    )
    sites = tmp_path / "sites.conf"
    sites.write_text(f'{ATTACKER}/32 = "attacker" country XX\n')
    with inline_lab(tmp_path, "geo") as box:
        box.start_daemon(POLICY)
        sets = box.gw_text(["nft", "list", "table", "inet", "ipsctl"])
        assert "country.XX_v4_iv_" in sets and "flags interval" in sets
        assert gets_through(box, "client")
        before_queue = box.queue_line()
        before_rule = kernel_rule_packets(box, "policy.rules:3")
        assert before_queue is not None
        assert not gets_through(box, "attacker")  # dropped…
        after_queue = box.queue_line()
        assert after_queue is not None
        assert after_queue["id_sequence"] == before_queue["id_sequence"]  # …before the queue
        assert kernel_rule_packets(box, "policy.rules:3") > before_rule  # by the geo rule
        assert gets_through(box, "client")

        # new geo data: the client joins XX, `ipsctl apply` takes it
        sites.write_text(f'{ATTACKER}/32 = "attacker" country XX\n{CLIENT}/32 = "c" country XX\n')
        out = box.ipsctl("apply", str(tmp_path / "policy.rules"))
        assert out.returncode == 0, out.stdout + out.stderr
        assert not gets_through(box, "client")
        explained = subprocess.run(
            [sys.executable, "-m", "ips.cli", "explain", str(tmp_path / "policy.rules"),
             "--packet", f"tcp {CLIENT}:4000 > {SERVER}:80"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert "is site c XX" in explained.stdout, explained.stdout + explained.stderr
