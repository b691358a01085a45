"""Issue 19, item 1, in the lab: forged scans must not block innocent hosts.

From `attacker`, scans whose source addresses are forged: the client's (hping3 -a) and
decoys among the real one (nmap -D). The gateway weighs each block against the sender's MAC
and its neighbour table (ips/engine/evidence.py): the client and the decoy are never
blocked, the client's curl still works, the attacker is blocked (by its MAC, in the nft set
banned_ether, and by its own address when its own probes crossed the threshold first), and
"spoofed source" alerts are in EVE.

Only lab hosts are targets (the server 10.10.2.10); every tool run is bounded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from labkit import ATTACKER, CLIENT, GATEWAY_RULES, SERVER, InlineLab, inline_lab, wait_until

DECOY = "10.10.1.21"  # one of the client's extra addresses
BLOCK_SECONDS = 60


def scan_policy(tmp_path: Path) -> Path:
    """gateway.rules as shipped (the client is NOT trusted: only evidence protects it), with
    blocks short enough for a test."""
    lines = [line for line in GATEWAY_RULES.read_text().splitlines()
             if not line.startswith("detect ")]  # fmt: skip
    lines += [
        f"detect portscan ports 15 within 60s block {BLOCK_SECONDS}s",
        f"detect sweep hosts 25 within 60s block {BLOCK_SECONDS}s",
        f"detect stealth count 3 within 60s block {BLOCK_SECONDS}s",
    ]
    path = tmp_path / "spoof.rules"
    path.write_text("\n".join(lines) + "\n")
    return path


def spoof_alerts(box: InlineLab) -> list[dict]:
    return [e for e in box.eve_events() if e["event_type"] == "alert"
            and e["alert"]["category"] == "spoofed-source"]  # fmt: skip


def test_hping3_forging_the_clients_address_blocks_the_attacker_not_the_client(
    tmp_path: Path,
) -> None:
    with inline_lab(tmp_path, "spa") as box:
        box.start_daemon(scan_policy(tmp_path))
        attacker_mac = box.mac_of("attacker")
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        scan = box.run("attacker", ["hping3", "-a", CLIENT, "-S", "-p", "++1000", "-c", "40",
                                    "-i", "u20000", SERVER], timeout=30)  # fmt: skip
        assert "40 packets transmitted" in scan.stdout + scan.stderr, scan
        assert wait_until(lambda: bool(spoof_alerts(box)), timeout=6), box.eve_events()[-5:]
        time.sleep(1.5)  # a held request would be judged by now
        # the client is not blocked, and still served
        assert CLIENT not in box.kernel_blocks()
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        # the real sender is: by its MAC, in the kernel, and its own traffic stops there
        assert attacker_mac in box.kernel_mac_blocks()
        assert box.curl("attacker", f"http://{SERVER}/", max_time=2).returncode != 0
        alert = spoof_alerts(box)[0]
        assert alert["src_ip"] == CLIENT and alert["alert"]["action"] == "blocked"
        assert alert["ipsctl"]["sender_mac"] == attacker_mac
        assert alert["ipsctl"]["evidence"] == "mac-mismatch"
        scans = [e for e in box.eve_events() if e["event_type"] == "alert"
                 and e["alert"]["category"] == "portscan"]  # fmt: skip
        assert scans and all(e["ipsctl"]["block"] == "spoofed" for e in scans), scans
        ether = [e for e in box.eve_events() if e["event_type"] == "ipsctl_block"]
        assert [e["ipsctl_block"]["ether"] for e in ether] == [attacker_mac]
        assert box.status()["worker"]["evidence"]["spoofed"] >= 1
        # The operator sees the ban in `blocks list` and lifts it: the kernel's set and the
        # engine (which drops a banned MAC's packets too) let the attacker through again.
        out = box.ipsctl("blocks", "list", "--json")
        assert out.returncode == 0, out.stderr
        bans = [b for b in json.loads(out.stdout)["blocks"] if b["table"] == "banned_ether"]
        assert [b["addr"] for b in bans] == [attacker_mac], bans
        assert bans[0]["detector"] == "portscan" and 0 < bans[0]["expires_in"] <= BLOCK_SECONDS
        assert attacker_mac in box.ipsctl("blocks", "list").stdout
        # A clean stop takes the table (and the ban) out of the kernel; the next start puts
        # the ban back from the state file, with its time left, and its engine adopts it.
        box.stop_daemon()
        assert attacker_mac not in box.kernel_mac_blocks()
        box.start_daemon(scan_policy(tmp_path))
        assert attacker_mac in box.kernel_mac_blocks()
        assert box.curl("attacker", f"http://{SERVER}/", max_time=2).returncode != 0
        out = box.ipsctl("blocks", "list", "--json")
        (back,) = [b for b in json.loads(out.stdout)["blocks"] if b["table"] == "banned_ether"]
        assert back["addr"] == attacker_mac and back["detector"] == "portscan", back
        assert 0 < back["expires_in"] <= bans[0]["expires_in"] and back["restored_from"], back
        kept = box.status()["blocks"]
        assert kept["restored_from"]["mac_blocks"] == 1 and kept["adopted"] >= 1, kept
        out = box.ipsctl("blocks", "del", attacker_mac.upper().replace(":", "-"))
        assert out.returncode == 0 and f"unblocked {attacker_mac}" in out.stdout, out
        assert attacker_mac not in box.kernel_mac_blocks()
        assert box.curl("attacker", f"http://{SERVER}/", max_time=2).returncode == 0
        again = box.ipsctl("blocks", "del", attacker_mac)
        assert again.returncode == 1 and "is not blocked" in again.stderr, again


def test_nmap_decoys_block_only_the_real_scanner(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "spd") as box:
        box.start_daemon(scan_policy(tmp_path))
        attacker_mac = box.mac_of("attacker")
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        scan = box.run(
            "attacker",
            ["nmap", "-sS", "-Pn", "-n", "-D", f"{DECOY},{CLIENT},ME", "-p", "1-100",
             "--max-retries", "0", "--host-timeout", "30s", SERVER],
            timeout=45,
        )  # fmt: skip
        assert scan.returncode == 0, scan.stderr
        # the attacker is blocked: by its MAC (the decoys named it) and/or its own address
        assert wait_until(
            lambda: attacker_mac in box.kernel_mac_blocks() or ATTACKER in box.kernel_blocks(),
            timeout=6,
        ), box.eve_events()[-5:]
        time.sleep(4)  # a held request (no neighbour entry yet) is answered within 3 s
        bans = box.kernel_blocks()
        assert DECOY not in bans and CLIENT not in bans, bans
        assert bans <= {ATTACKER}, bans
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        assert spoof_alerts(box), box.eve_events()[-5:]
        claimed = {e["src_ip"] for e in spoof_alerts(box)}
        assert claimed <= {DECOY, CLIENT} and CLIENT in claimed, claimed
        assert box.curl("attacker", f"http://{SERVER}/", max_time=2).returncode != 0
