"""Several queues, one worker each (`ipsctl run --queues 2`): the kernel spreads connections
over the queues by their initiator's address, so one source's connections — a sweep over many
hosts — all land in one worker and are seen as one sweep. Lab traffic only: spoofed SYNs and
a ping sweep from the attacker to the server's addresses, bounded in count."""

from __future__ import annotations

import sys
from pathlib import Path

from labkit import ATTACKER, CLIENT, SERVER, inline_lab, wait_until
from test_attacks import attack_policy, detector_alerts


def test_two_queues_share_the_traffic_and_a_sweep_is_still_one_sweep(tmp_path: Path) -> None:
    policy = attack_policy(tmp_path, synflood="rate 100000/s per dst alert")
    with inline_lab(tmp_path, "q2") as box:
        box.start_daemon(policy, "--queues", "2")
        status = box.status()
        assert [w["queue"] for w in status["workers"]] == [0, 1]
        assert len({w["pid"] for w in status["workers"]}) == 2
        assert status["diversion"]["queues"] == 2

        # many sources: both workers get connections
        box.run(
            "attacker",
            ["hping3", "-S", "-p", "80", "--rand-source", "-c", "400", "-i", "u500", SERVER],
            timeout=30,
        )
        q0, q1 = box.queue_line(0), box.queue_line(1)
        assert q0 and q1 and q0["id_sequence"] > 50 and q1["id_sequence"] > 50, (q0, q1)

        # one source sweeping 32 hosts: all of it in one worker, one detection, one block
        per_worker_before = [w["packets"] for w in box.status()["workers"]]
        sweep = box.run(
            "attacker", ["nmap", "-sn", "-n", "--max-retries", "0", "10.10.2.100-131"], timeout=40
        )
        assert sweep.returncode == 0, sweep.stderr
        assert wait_until(lambda: ATTACKER in box.kernel_blocks(), timeout=5)
        sweeps = detector_alerts(box, "sweep")
        assert len(sweeps) == 1 and sweeps[0]["src_ip"] == ATTACKER, sweeps
        grew = [
            after - before
            for before, after in zip(
                per_worker_before, [w["packets"] for w in box.status()["workers"]], strict=True
            )
        ]
        assert sorted(grew)[0] <= 2 and sorted(grew)[1] >= 32, grew  # (2: stray packets)

        # the client is served whichever worker has it; status adds both workers up
        assert box.curl("client", f"http://{SERVER}/").returncode == 0
        assert CLIENT not in box.kernel_blocks()
        status = box.status()
        assert status["worker"]["packets"] == sum(w["packets"] for w in status["workers"])
        # flows and alerts come from both workers
        assert box.ipsctl("flows", "--json").returncode == 0


SOURCES = [f"10.10.1.{i}" for i in range(21, 29)]  # the client's extra addresses
SHORT_FROM_EACH = r"""
import socket, sys
server, sources = sys.argv[1], sys.argv[2:]
for src in sources:
    for i in range(2):
        s = socket.socket()
        s.settimeout(3)
        s.bind((src, 0))
        s.connect((server, 7))
        s.sendall(b"hello\n")
        got = b""
        while len(got) < 6:
            got += s.recv(100)
        s.close()
print("ok")
"""


def test_the_copy_of_a_first_data_packet_reaches_the_worker_of_its_connection(
    tmp_path: Path,
) -> None:
    """With two queues, the kernel's copy of each connection's first data (offload) goes to
    the NFLOG group of the worker that saw the connection's handshake: each worker offloaded
    exactly the connections whose copies it read (a copy in the wrong worker finds no
    handshake there and offloads nothing). The copy is the SYN+ACK shortcut of flows the
    application layer does not read, so it is off here (with it on, offload waits for the
    inspector: docs/offload.md)."""
    from test_offload_inline import POLICY

    script = tmp_path / "short.py"
    script.write_text(SHORT_FROM_EACH)
    with inline_lab(tmp_path, "q2c") as box:
        box.start_daemon("set app-layer off\n" + POLICY, "--queues", "2")
        out = box.run("client", [sys.executable, str(script), SERVER, *SOURCES], timeout=40)
        assert out.stdout.strip() == "ok", out.stderr
        assert wait_until(lambda: box.status()["offload"]["copied"] == 16, timeout=5)
        workers = box.status()["workers"]
        assert [w["copies"] for w in workers] == [w["offloaded"] for w in workers], workers
        assert sum(w["copies"] for w in workers) == 16
        assert all(w["copies"] >= 2 for w in workers), workers  # 8 sources: both get some
