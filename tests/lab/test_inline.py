"""ipsctl inline on the lab's gateway: real NFQUEUE, real nftables, real clients.

Every test builds its own lab (labs/gateway.yaml, own namespace prefix), runs `ipsctl run` in
the gw namespace and sends traffic only between the lab's hosts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labkit import ATTACKER, CLIENT, GATEWAY_RULES, SERVER, InlineLab, inline_lab, wait_until

UDP_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect(({host!r}, {port}))
s.send(b"ping")
try:
    print("answer", s.recv(100).decode())
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""


def udp_probe(box, node: str, host: str, port: int) -> str:
    return box.python(node, UDP_PROBE.format(host=host, port=port)).stdout.strip()


def check_gateway_verdicts(box: InlineLab) -> dict:
    """policies/gateway.rules at work on gw, whatever the backend: accept, rewrite with
    replies translated back, reject (TCP reset, ICMP unreachable), drop with an alert — each
    from a lab host, as its user sees it. Returns the daemon's status after."""
    # accept: a web request from the client
    web = box.curl("client", f"http://{SERVER}/")
    assert web.returncode == 0 and web.stdout.startswith("ok port 80")
    # rewrite: 8081 is the old port of the app; the server answers on 8080 and the
    # client's connection works because the replies are translated back
    moved = box.curl("client", f"http://{SERVER}:8081/")
    assert moved.returncode == 0 and moved.stdout.startswith("ok port 8080"), moved
    # reject (TCP): a reset comes back at once (curl: "couldn't connect", exit 7)
    smb = box.curl("client", f"http://{SERVER}:445/")
    assert smb.returncode == 7 and float(smb.stdout.split()[-1]) < 1.0, smb
    # reject (UDP): an ICMP port unreachable comes back
    assert udp_probe(box, "client", SERVER, 9) == "refused"
    # accept (UDP): DNS-like echo is answered
    assert udp_probe(box, "client", SERVER, 53) == "answer ping"
    # drop: telnet from the attacker times out (curl exit 28), with an alert
    telnet = box.curl("attacker", f"telnet://{SERVER}:23", max_time=2)
    assert telnet.returncode == 28, telnet
    ping = box.run("client", ["ping", "-c", "2", "-i", "0.2", "-W", "1", SERVER])
    assert ping.returncode == 0
    assert wait_until(
        lambda: any(
            e["event_type"] == "alert" and e["alert"]["signature_id"] == 2000010
            for e in box.eve_events()
        )
    )
    alert = next(
        e
        for e in box.eve_events()
        if e["event_type"] == "alert" and e["alert"]["signature_id"] == 2000010
    )
    assert alert["src_ip"] == ATTACKER and alert["dest_port"] == 23
    assert alert["alert"]["action"] == "blocked"
    status = box.status()
    verdicts = status["worker"]["verdicts"]
    assert verdicts.get("reject", 0) >= 2 and verdicts.get("drop", 0) >= 1
    assert verdicts.get("rewrite", 0) >= 1 and verdicts.get("accept", 0) >= 5
    return status


def test_accept_drop_reject_rewrite_end_to_end(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "iv") as box:
        box.start_daemon(GATEWAY_RULES)
        status = check_gateway_verdicts(box)
        assert status["diversion"]["backend"].startswith("iptables")

        # At stop the flows still open end with their records (reason shutdown), as
        # Suricata's do: the answered DNS-like exchange is one of them.
        def dns_records(reason: str) -> list[dict]:
            return [
                e
                for e in box.eve_events()
                if e["event_type"] == "flow"
                and e["flow"]["reason"] == reason
                and e["proto"] == "UDP"
                and e["src_ip"] == CLIENT
                and e["dest_port"] == 53
            ]

        assert not dns_records("shutdown")
        open_flows = status["worker"]["flows"]
        box.stop_daemon()
        ended = [
            e
            for e in box.eve_events()
            if e["event_type"] == "flow" and e["flow"]["reason"] == "shutdown"
        ]
        # each open flow once (one may have timed out since the status)
        assert 0 < len(ended) <= open_flows, (len(ended), open_flows)
        assert len({e["flow_id"] for e in ended}) == len(ended)
        (dns,) = dns_records("shutdown")
        assert dns["dest_ip"] == SERVER and dns["flow"]["state"] == "established"
        assert dns["flow"]["pkts_toserver"] == 1 and dns["flow"]["pkts_toclient"] == 1


def test_fast_path_rules_are_in_the_kernel_and_skip_the_queue(tmp_path: Path) -> None:
    policy = (
        "drop proto tcp to port 23\n"
        "accept proto icmp\n"
        "accept state established\n"
        "accept proto tcp to port 80\n"
        "set default drop\n"
    )
    with inline_lab(tmp_path, "ifp") as box:
        box.start_daemon(policy)
        table = json.loads(box.gw_text(["nft", "-j", "list", "table", "inet", "ipsctl"]))
        comments = [o["rule"].get("comment", "") for o in table["nftables"] if "rule" in o]
        assert any(c.endswith("policy.rules:1") for c in comments)
        assert any(c.endswith("policy.rules:2") for c in comments)
        assert not any(c.endswith("policy.rules:3") for c in comments)  # state: userspace
        assert box.status()["policy"]["kernel_rules"] == 2
        before = box.queue_line()
        assert before is not None
        ping = box.run("client", ["ping", "-c", "5", "-i", "0.2", "-W", "1", SERVER])
        assert ping.returncode == 0
        telnet = box.curl("attacker", f"telnet://{SERVER}:23", max_time=1)
        assert telnet.returncode == 28
        after = box.queue_line()
        assert after is not None
        # not one of those packets reached the queue: the kernel decided them
        assert after["id_sequence"] == before["id_sequence"]
        counters = {
            o["rule"]["comment"]: o["rule"]["expr"]
            for o in json.loads(box.gw_text(["nft", "-j", "list", "table", "inet", "ipsctl"]))[
                "nftables"
            ]
            if "rule" in o and "comment" in o["rule"]
        }
        hits = {
            c: next((x["counter"]["packets"] for x in e if "counter" in x), 0)
            for c, e in counters.items()
        }
        assert sum(v for c, v in hits.items() if c.endswith(":2")) >= 10  # 5 pings, 5 replies
        assert sum(v for c, v in hits.items() if c.endswith(":1")) >= 1
        # while a web request goes through the queue
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        assert box.queue_line()["id_sequence"] > after["id_sequence"]  # type: ignore[index]


ECHO_CLIENT = """
import socket, time, sys
s = socket.create_connection(({host!r}, 7), timeout=3)
sent = ok = 0
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    msg = f"msg {{sent:06d}}\\n".encode()
    s.sendall(msg)
    sent += 1
    got = b""
    while len(got) < len(msg):
        chunk = s.recv(len(msg) - len(got))
        if not chunk:
            print(f"closed after {{sent}}", flush=True); sys.exit(1)
        got += chunk
    ok += got == msg
    time.sleep(0.01)
print(f"sent {{sent}} ok {{ok}}", flush=True)
"""


def test_apply_under_traffic_keeps_the_connection_and_bad_apply_changes_nothing(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base.rules"
    base.write_text(
        GATEWAY_RULES.read_text().replace(
            "reject  from $lan", "accept  proto tcp from $lan to $dmz port 7\nreject  from $lan"
        )
    )
    with inline_lab(tmp_path, "iap") as box:
        box.start_daemon(base)
        status = box.status()
        first = status["policy"]["digest"]
        gc_before = status["worker"]["gc"]
        assert gc_before["frozen"] > 1000  # the worker settled its heap before the first packet
        stream = box.lab.popen(
            "client",
            [sys.executable, "-c", ECHO_CLIENT.format(host=SERVER, seconds=6)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(0.5)
        changed = tmp_path / "changed.rules"
        changed.write_text(
            base.read_text().replace(
                "accept  proto tcp from $admins to $dmz port ssh",
                "accept  proto tcp from $admins to $dmz port { ssh, 2222 }",
            )
        )
        digests = set()
        for i in range(6):
            target = changed if i % 2 == 0 else base
            out = box.ipsctl("apply", str(target))
            assert out.returncode == 0, out.stderr
            digests.add(box.status()["policy"]["digest"])
            time.sleep(0.3)
        assert len(digests) == 2
        # each load ended with one full collection (it frees the replaced policy)
        gc_after = box.status()["worker"]["gc"]
        assert gc_after["collections"]["2"] >= gc_before["collections"]["2"] + 6
        # an invalid policy is refused with diagnostics; the running one stays
        typo = tmp_path / "typo.rules"
        typo.write_text("acept proto tcp\n")
        bad = box.ipsctl("apply", str(typo))
        assert bad.returncode == 1
        assert "typo.rules:1:1" in bad.stderr and "did you mean 'accept'" in bad.stderr
        assert box.status()["policy"]["digest"] == first
        out, _ = stream.communicate(timeout=20)
        assert stream.returncode == 0, out
        sent, ok = (int(x) for x in out.split()[1::2])
        assert sent == ok and sent > 100, out


def test_apply_confirm_rolls_back_when_not_confirmed(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "icf") as box:
        box.start_daemon(GATEWAY_RULES)
        original = box.status()["policy"]["digest"]
        lockout = tmp_path / "lockout.rules"
        lockout.write_text(f"drop from {CLIENT}\nset default accept\n")
        out = box.ipsctl("apply", str(lockout), "--confirm", "2")
        assert out.returncode == 0, out.stderr
        assert box.curl("client", f"http://{SERVER}/", max_time=1).returncode == 28
        assert wait_until(lambda: box.status()["policy"]["digest"] == original, timeout=8)
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        assert box.status()["counters"]["rollbacks"] == 1
        # confirmed in time: it stays (a window of 8 s: the CLI's start-up alone took more
        # than 3 s on a loaded machine, and then there was nothing left to confirm)
        out = box.ipsctl("apply", str(lockout), "--confirm", "8")
        assert out.returncode == 0
        assert box.ipsctl("confirm").returncode == 0
        time.sleep(8.5)
        assert box.status()["policy"]["digest"] != original
        assert box.ipsctl("confirm").returncode == 1  # nothing left to confirm


def test_sigkill_fail_open_then_restart_cleans_up(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "iko") as box:
        box.start_daemon(GATEWAY_RULES, "--fail-mode", "open")
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        box.kill_daemon(signal.SIGKILL)
        # the worker follows its supervisor; the queue has no listener: bypass lets traffic by
        assert wait_until(lambda: box.queue_line() is None, timeout=5)
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        # ... unfiltered: telnet now passes too (the server has nothing on 23: refused)
        assert box.curl("attacker", f"telnet://{SERVER}:23", max_time=2).returncode == 7
        # a new daemon removes what the old one left and enforces again
        box.start_daemon(GATEWAY_RULES, "--fail-mode", "open")
        rules = box.gw_text(["iptables", "-S"])
        assert rules.count("-j IPSCTL") == 1
        assert box.curl("attacker", f"telnet://{SERVER}:23", max_time=2).returncode == 28


def test_sigkill_fail_closed_drops_until_restart(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "ikc") as box:
        box.start_daemon(GATEWAY_RULES, "--fail-mode", "closed")
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        box.kill_daemon(signal.SIGKILL)
        assert wait_until(lambda: box.queue_line() is None, timeout=5)
        assert box.curl("client", f"http://{SERVER}/", max_time=2).returncode == 28
        box.start_daemon(GATEWAY_RULES, "--fail-mode", "closed")
        assert box.curl("client", f"http://{SERVER}/").returncode == 0


def test_watchdog_replaces_a_hung_worker(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "iwd") as box:
        box.start_daemon(GATEWAY_RULES, "--hang-timeout", "2")
        worker = box.status()["worker"]["pid"]
        subprocess.run(["kill", "-STOP", str(worker)], check=True, timeout=5)
        try:
            assert wait_until(lambda: box.status()["counters"]["worker_hangs"] == 1, timeout=10)
        finally:
            subprocess.run(["kill", "-CONT", str(worker)], timeout=5)  # if it survived
        status = box.status()
        assert status["worker"]["pid"] != worker and status["counters"]["worker_restarts"] == 1
        assert box.curl("client", f"http://{SERVER}/").returncode == 0


def test_nothing_outside_our_table_and_chain_is_touched(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "ino") as box:
        box.run("gw", ["nft", "add", "table", "inet", "decoy"], check=True)
        box.run(
            "gw",
            [
                "nft",
                "add",
                "chain",
                "inet",
                "decoy",
                "fw",
                "{ type filter hook forward priority 5; }",
            ],
            check=True,
        )
        box.run("gw", ["nft", "add", "rule", "inet", "decoy", "fw", "counter"], check=True)
        box.run(
            "gw",
            ["iptables", "-A", "FORWARD", "-m", "comment", "--comment", "decoy", "-j", "ACCEPT"],
            check=True,
        )

        def outside() -> tuple[str, str]:
            nft = json.loads(box.gw_text(["nft", "-j", "list", "table", "inet", "decoy"]))
            for obj in nft["nftables"]:
                obj.get("rule", {}).get("expr", [{}])[0].pop("counter", None)
            ipt = [
                line
                for line in box.gw_text(["iptables", "-S"]).splitlines()
                if "IPSCTL" not in line
            ]
            return json.dumps(nft, sort_keys=True), "\n".join(ipt)

        before = outside()
        box.start_daemon(GATEWAY_RULES)
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        assert outside() == before
        box.stop_daemon()
        assert outside() == before
        assert "ipsctl" not in box.gw_text(["nft", "list", "tables"])
        assert "IPSCTL" not in box.gw_text(["iptables", "-S"])


def test_doctor_reports_the_fallback(tmp_path: Path) -> None:
    with inline_lab(tmp_path, "idr") as box:
        out = box.run("gw", [sys.executable, "-m", "ips.cli", "doctor", "--json"])
        data = json.loads(out.stdout)
        assert out.returncode == 0 and data["usable"]
        assert data["nft_queue"] is False and data["diversion"] == "iptables"
        assert data["iptables_nfqueue"] is True


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_hung_worker_with_a_full_queue_follows_the_fail_mode(tmp_path: Path, mode: str) -> None:
    """With the worker stopped (hung) and a queue of 4 packets, the kernel holds 4 pings; the
    others pass (fail-open: the queue's fail-open flag) or are dropped (fail-closed)."""
    with inline_lab(tmp_path, "ifo") as box:
        box.start_daemon(
            GATEWAY_RULES, "--queue-maxlen", "4", "--hang-timeout", "30", "--fail-mode", mode
        )
        worker = box.status()["worker"]["pid"]
        subprocess.run(["kill", "-STOP", str(worker)], check=True, timeout=5)
        try:
            ping = box.run("client", ["ping", "-c", "12", "-i", "0.05", "-W", "1", SERVER])
            received = int(ping.stdout.split(" received")[0].rsplit(" ", 1)[-1])
        finally:
            subprocess.run(["kill", "-CONT", str(worker)], timeout=5)
        if mode == "open":
            assert received >= 6, ping.stdout  # only the 4 held back are late
        else:
            assert received == 0, ping.stdout
            assert box.queue_line()["queue_dropped"] > 0  # type: ignore[index]
