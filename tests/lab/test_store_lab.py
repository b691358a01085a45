"""The store (issue 21) under the real daemon, in a lab of its own: labs/gateway.yaml with a
second LAN client (`clientb`, 10.10.1.30).

1. `ipsctl run --store DIR` on gw, offload on: an iperf3 transfer of 20 MiB from the client
   (offloaded at its first data: the kernel carries almost all of it), 50 curls from
   clientb to the server's HTTP service, an nmap SYN scan from the attacker. Then the CLI
   (`--json`): `report top --by src --metric bytes --since 10m` ranks the iperf3 client
   first, its bytes within 1 % of the kernel's conntrack counters of its connections (read
   from /proc/net/nf_conntrack in gw, independently of our netlink code, while the entries
   are still there); `history alerts` holds the scan's alerts, `history flows` the 50
   curls' flows; the flows carry their interfaces (in lan0, out dmz0), so `report top --by
   interface` and `report volume --interface dmz0` answer; `ipsctl status` shows the
   store's line (written, dropped, write errors).
2. SIGKILL of the daemon (every process of it) under traffic that ends flows all the time
   (a small flow table: each new UDP flow evicts an old one), then a restart on the same
   store: every file passes SQLite's integrity_check and ipsctl's own `integrity()`; the
   rows in the store are exactly the first N flow records the daemon wrote to its EVE file
   before the kill (a prefix, in order: nothing committed went missing, nothing out of
   order); what is lost is the tail, at most one batch, and is printed (docs/store.md has
   the measured figure); the restarted daemon writes on with no errors and the rows of the
   first run are still there.

Each with SQLite (`--store DIR`) and with PostgreSQL (`--store postgresql://…`, a server the
test starts itself; PostgreSQL's own recovery instead of integrity_check).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from appkit import need_tools
from labkit import (
    ATTACKER,
    CLIENT,
    GATEWAY_LAB,
    NMAP_QUICK,
    ROOT,
    SERVER,
    InlineLab,
    inline_lab,
    need_root,
    wait_until,
)
from store_data import fresh_database, postgres_bin, postgres_server
from test_conntrack_volumes_lab import conntrack_entries

from ips.control import call
from ips.store.backend import open_store

CLIENT_B = "10.10.1.30"
SIZE = 20 * 1024 * 1024
CURLS = 50
# The batch a store writes at once (ips/store/sink.py BATCH_SIZE): what a kill may lose.
BATCH = 1000

POLICY = f"""
set app-layer off
table trusted = {{ 127.0.0.0/8, ::1, {CLIENT}, {CLIENT_B} }}
table banned dynamic timeout 1h
set default drop
drop    from @banned
accept  state established
accept  proto tcp from 10.10.1.0/24 to {SERVER} port {{ 80, 5201 }}
accept  proto udp from 10.10.1.0/24 to {SERVER} port 5001
reject  from 10.10.1.0/24
detect  portscan ports 15 within 60s block 30s
"""
# app-layer off: iperf3's stream is no protocol the inspector knows, and while it reads a
# flow's first bytes offload waits (see test_conntrack_volumes_lab.py).

CLIENT_B_NODE = f"""
  clientb:
    interfaces:
      - {{name: eth0, segment: lan, addresses: [{CLIENT_B}/24]}}
    routes:
      - {{to: default, via: 10.10.1.1}}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store the daemon writes: a directory (SQLite), or a database on a PostgreSQL
    server the test starts itself (tests/store_data.py: a temporary cluster on a unix
    socket, which the daemon reaches from gw's namespace: a socket file is no network
    thing). Without PostgreSQL (initdb, psycopg): skipped, a failure under CI=true."""
    need_root()
    if request.param == "sqlite":
        yield str(tmp_path / "store")
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        postgres_bin_dir = None
    else:
        postgres_bin_dir = postgres_bin()
    if postgres_bin_dir is None:
        message = "PostgreSQL (initdb, postgres) or psycopg is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    with postgres_server() as url:
        yield fresh_database(url, "ipsctl_lab")


@contextmanager
def store_lab(tmp_path: Path, tag: str) -> Iterator[InlineLab]:
    """labs/gateway.yaml plus clientb (inline_lab with that topology)."""
    topology = tmp_path / "lab.yaml"
    topology.write_text(GATEWAY_LAB.read_text().rstrip("\n") + "\n" + CLIENT_B_NODE)
    with inline_lab(tmp_path, tag, topology) as box:
        yield box


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """ipsctl's readers, in the root namespace (the store is a directory)."""
    return subprocess.run(
        [sys.executable, "-m", "ips.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def cli_json(*args: str) -> Any:
    out = cli(*args, "--json")
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return json.loads(out.stdout)


def iperf3_transfer(box: InlineLab) -> None:
    server = box.lab.popen(
        "server",
        ["iperf3", "-s", "-1", "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: "5201" in box.run("server", ["ss", "-ltn"]).stdout, timeout=10)
        out = box.run("client", ["iperf3", "-c", SERVER, "-p", "5201", "-n", "20M", "-J"],
                      timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["end"]["sum_sent"]["bytes"] >= SIZE
    finally:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def kernel_connections(box: InlineLab, src: str) -> list[dict[str, Any]]:
    return [
        e
        for e in conntrack_entries(box.gw_text(["cat", "/proc/net/nf_conntrack"]))
        if e["src"] == src and e["dst"] == SERVER and e["dport"] == 5201
    ]


def test_report_top_ranks_the_transfer_with_the_kernels_bytes_and_keeps_the_rest(
    tmp_path: Path, store_target: str
) -> None:
    need_tools("iperf3", "nmap", "curl", "ss")  # CI=true: a missing one fails
    store = store_target
    with store_lab(tmp_path, "stl") as box:
        box.start_daemon(POLICY, "--store", store)
        iperf3_transfer(box)
        # The counts are final once conntrack has seen both ends close (TIME_WAIT, or CLOSE
        # after iperf3's reset: that one goes 10 s later, so it is read now).
        assert wait_until(
            lambda: (
                len(kernel_connections(box, CLIENT)) >= 2
                and all(
                    e["state"] in ("TIME_WAIT", "CLOSE") for e in kernel_connections(box, CLIENT)
                )
            )
        ), kernel_connections(box, CLIENT)
        kernel = kernel_connections(box, CLIENT)
        curls = box.run(
            "clientb",
            ["sh", "-c", f"for i in $(seq {CURLS}); do curl -s -o /dev/null -m 3 "
             f"-w '%{{http_code}}\\n' http://{SERVER}/; done"],
            timeout=120,
        )  # fmt: skip
        assert curls.stdout.split() == ["200"] * CURLS, curls.stdout + curls.stderr
        scan = box.run("attacker", ["nmap", "-sS", *NMAP_QUICK, "-p", "1-200", SERVER], timeout=60)
        assert scan.returncode == 0, scan.stderr
        assert wait_until(lambda: ATTACKER in box.kernel_blocks(), timeout=10)
        # The store's line in `ipsctl status` (the alerts and the block are written while
        # the daemon runs; flows as they end).
        assert wait_until(lambda: box.status()["sinks"]["store"]["written"] >= 2)
        status = box.status()["sinks"]["store"]
        assert status["dropped"] == 0 and status["write_errors"] == 0, status
        text = box.ipsctl("status").stdout
        line = next((x for x in text.splitlines() if x.startswith("store")), "")
        assert f"store    {store}: written " in line, text
        assert ", dropped 0, write errors 0, waiting " in line, line
        box.stop_daemon()  # ends the open flows: their records, with the kernel's counts
        events = box.eve_events()
    k_bytes = sum(e["bytes"][0] + e["bytes"][1] for e in kernel)

    top = cli_json("report", "top", "--store", store, "--by", "src", "--metric", "bytes",
                   "--since", "10m")  # fmt: skip
    print("report top:", json.dumps(top["rows"][:3]), "kernel bytes:", k_bytes)
    first = top["rows"][0]
    assert first["key"] == CLIENT, top
    assert abs(first["bytes"] - k_bytes) <= 0.01 * k_bytes, (first, kernel)
    assert first["bytes"] >= 0.5 * SIZE  # the bulk crossed (see the conntrack test)
    assert {r["key"] for r in top["rows"]} >= {CLIENT, CLIENT_B}
    # With a filter the raw rows are read (summed in SQL): the same answer for the client.
    raw = cli_json("report", "top", "--store", store, "--by", "src", "--metric", "bytes",
                   "--since", "10m", "--filter", "proto tcp")  # fmt: skip
    assert raw["source"] == "raw" and raw["rows"][0] == first, raw
    # The offloaded transfer's row: the kernel's counts of its connection, both ways.
    data = max(kernel, key=lambda e: e["bytes"][0])
    (row,) = cli_json("history", "flows", "--store", store, "--since", "10m",
                      "--filter", f"src {CLIENT} sport {data['sport']}")  # fmt: skip
    assert row["offloaded"] == 1, row
    assert abs(row["bytes_fwd"] - data["bytes"][0]) <= 0.01 * data["bytes"][0], (row, data)

    alerts = cli_json("history", "alerts", "--store", store, "--since", "10m")
    scan_alerts = [a for a in alerts if a["src"] == ATTACKER and a["category"] == "portscan"]
    assert scan_alerts, alerts[:5]
    blocks = cli_json("history", "blocks", "--store", store, "--since", "10m",
                      "--filter", f"host {ATTACKER}")  # fmt: skip
    assert [b["kind"] for b in blocks][:1] == ["block"], blocks

    flows = cli_json("history", "flows", "--store", store, "--since", "10m",
                     "--filter", f"src {CLIENT_B} dport 80", "--limit", "1000")  # fmt: skip
    assert len(flows) == CURLS, flows[:3]
    assert len({f["sport"] for f in flows}) == CURLS and all(f["replied"] for f in flows)
    # Inline flows keep their interfaces: in on lan0, out on dmz0, in the row and in EVE.
    assert {(f["iface"], f["out_iface"]) for f in flows} == {("lan0", "dmz0")}
    record = next(
        e
        for e in events
        if e.get("event_type") == "flow" and e.get("src_ip") == CLIENT
        and e.get("dest_port") == 5201 and e["flow"]["bytes_toserver"] >= 0.5 * SIZE
    )  # fmt: skip
    assert record["in_iface"] == "lan0" and record["ipsctl"]["out_iface"] == "dmz0", record
    by_iface = cli_json("report", "top", "--store", store, "--by", "interface", "--metric",
                        "bytes", "--since", "10m")  # fmt: skip
    keys = {r["key"]: r for r in by_iface["rows"]}
    assert set(keys) == {"lan0", "dmz0"}, by_iface
    # Every flow here crossed both (the LAN to the DMZ); each is counted once on each.
    assert keys["lan0"]["bytes"] == keys["dmz0"]["bytes"] >= first["bytes"]
    assert keys["lan0"]["flows"] == keys["dmz0"]["flows"] >= CURLS + 2
    vol = cli_json("report", "volume", "--store", store, "--interface", "dmz0", "--step",
                   "1m", "--since", "10m")  # fmt: skip
    assert sum(r["bytes"] for r in vol["rows"]) == keys["dmz0"]["bytes"], vol
    assert cli_json("report", "volume", "--store", store, "--interface", "eth9",
                    "--since", "10m")["rows"] == []  # fmt: skip


# ---- SIGKILL under traffic, then a restart ------------------------------------------------------

# New UDP flows, one datagram each, client -> server:5001, RATE a second for SECONDS (each
# from the next source port): with a flow table of MAX_FLOWS, each evicts an old one, so
# flow records are made (and go to the store) all the time.
RATE, MAX_FLOWS = 300, 256
SENDER = """
import socket, sys, time
seconds, rate = float(sys.argv[1]), float(sys.argv[2])
sent, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x" * 64, ("SERVER", 5001))
    s.close()
    sent += 1
    time.sleep(max(0.0, start + sent / rate - time.monotonic()))
print(sent)
""".replace("SERVER", SERVER)
SINK = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5001)); s.settimeout(0.5)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        s.recv(2048)
    except OSError:
        pass
"""


def descendants(pid: int) -> list[int]:
    """PID's children, their children, … (from /proc; a process gone meanwhile is skipped)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def kill_everything(box: InlineLab) -> float:
    """SIGKILL every process of the daemon (workers and any helper process first, then the
    supervisor: no one is left to tidy up), as `systemctl kill -s KILL` would; the time."""
    assert box.daemon is not None
    pids = descendants(box.daemon.pid)
    when = time.time()
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    box.daemon.send_signal(signal.SIGKILL)
    box.daemon.wait(10)
    box._log.close()
    box.daemon = None
    return when


def sqlite_checks(target: str) -> dict[str, list[str]]:
    """PRAGMA integrity_check of every file of a SQLite store, each with a connection of its
    own (as the restarted daemon opens them: this also recovers a WAL left behind); for
    PostgreSQL, its own recovery: {"postgresql": ["ok"]} once a connection reads the flows."""
    out = {}
    if target.startswith("postgresql:"):
        store = open_store(target, readonly=True)
        try:
            list(store.raw_query("SELECT COUNT(*) FROM flows", [], 0, FAR))
            out["postgresql"] = ["ok"]
        finally:
            store.close()
        return out
    for path in sorted(Path(target).glob("*.sqlite")):
        conn = sqlite3.connect(path)
        try:
            out[path.name] = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    return out


FAR = time.time() + 30 * 86400  # a time after every row's: the whole store


def integrity(target: str) -> list[str]:
    store = open_store(target, readonly=True)
    try:
        return store.integrity()
    finally:
        store.close()


def stored_flow_ids(target: str) -> list[int]:
    """The flow ids of the store's flow rows in the order they were written (SQLite: day
    file by day file, each by its row id; PostgreSQL: by row id)."""
    store = open_store(target, readonly=True)
    try:
        return [r[0] for r in store.raw_query("SELECT flow_id FROM flows ORDER BY id", [], 0, FAR)]
    finally:
        store.close()


def rollup_flows(target: str) -> int:
    store = open_store(target, readonly=True)
    try:
        rows = store.rollup_query(
            "SELECT COALESCE(SUM(flows), 0) FROM rollup_1m WHERE dim = 'all'", []
        )
        return int(rows[0][0])
    finally:
        store.close()


@dataclass
class Kill:
    """One SIGKILL: the flow records the daemon had written to EVE (in order), the store's
    flow rows of that run (in order), its minute rollups' flow count, the sink's counters
    seen last before the kill, the integrity checks right after it, and when."""

    records: list[dict[str, Any]]
    stored: list[int]
    in_rollups: int
    last_status: dict[str, Any]
    checks: dict[str, list[str]]
    problems: list[str]
    at: float

    @property
    def lost(self) -> list[dict[str, Any]]:
        return self.records[len(self.stored) :]

    def line(self) -> str:
        ages = [self.at - _epoch(e["timestamp"]) for e in self.lost]
        return (
            f"flow records handed over {len(self.records)}, in the store {len(self.stored)}, "
            f"lost {len(self.lost)} (ended {min(ages, default=0):.2f} to "
            f"{max(ages, default=0):.2f} s before the kill), in the minute rollups "
            f"{self.in_rollups}; the sink's counters just before: queued "
            f"{self.last_status.get('queued')}, written {self.last_status.get('written')}, "
            f"waiting {self.last_status.get('waiting')}"
        )


def store_status(box: InlineLab) -> dict[str, Any]:
    """The store sink's counters, asked over the control socket in-process (milliseconds:
    the test can catch records waiting in the queue)."""
    reply = call(box.socket, {"op": "status"}, timeout=10)
    return dict(reply.get("sinks", {}).get("store") or {})


def kill_with_records_waiting(box: InlineLab, store: str, written_before: int) -> Kill:
    """Once this run has written 3 ticks' records, SIGKILL the daemon at the worst moment
    the test can see: records waiting in the queue (else after 10 s, whatever waits)."""
    assert wait_until(lambda: store_status(box).get("written", 0) >= 3 * RATE, timeout=30), (
        store_status(box)
    )
    last: dict[str, Any] = {}

    def waiting() -> bool:
        last.update(store_status(box))
        return int(last.get("waiting", 0)) > 0

    wait_until(waiting, timeout=10, every=0.005)
    at = kill_everything(box)
    records = [e for e in box.eve_events() if e.get("event_type") == "flow"]
    box.eve.rename(box.workdir / f"eve-{at:.0f}.json")  # the next run's EVE starts empty
    checks = sqlite_checks(store)
    problems = integrity(store)
    everything = stored_flow_ids(store)
    return Kill(records, everything[written_before:], rollup_flows(store), last, checks,
                problems, at)  # fmt: skip


KILLS = 3


def test_sigkill_under_traffic_then_a_restart_keeps_what_was_committed(
    tmp_path: Path, store_target: str
) -> None:
    store = store_target
    daemon_args = ("--store", store, "--max-flows", str(MAX_FLOWS))
    kills: list[Kill] = []
    with store_lab(tmp_path, "stk") as box:
        sink = box.lab.popen("server", [sys.executable, "-c", SINK, "120"])
        sender = box.lab.popen(
            "client", [sys.executable, "-c", SENDER, "90", str(RATE)], stdout=subprocess.PIPE
        )
        try:
            committed: list[int] = []
            for _ in range(KILLS):
                box.start_daemon(POLICY, *daemon_args)  # the same store, opened again
                kill = kill_with_records_waiting(box, store, len(committed))
                kills.append(kill)
                print(kill.line())
                now = stored_flow_ids(store)
                # Nothing committed before went missing, and the store opened cleanly.
                assert now[: len(committed)] == committed
                committed = now
            box.start_daemon(POLICY, *daemon_args)
            assert wait_until(lambda: store_status(box).get("written", 0) >= RATE, timeout=30)
            after = store_status(box)
            box.stop_daemon()
        finally:
            for proc in (sender, sink):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(5)
    for kill in kills:
        assert kill.checks and all(r == ["ok"] for r in kill.checks.values()), kill.checks
        assert kill.problems == [], kill.problems
        n = len(kill.stored)
        assert n >= 3 * RATE
        # What is in the store is the first n records the daemon handed over, in their
        # order: every batch committed is there whole, and what is missing is the tail (the
        # queue and the batch being written), at most one batch.
        ids = [e["flow_id"] for e in kill.records]
        assert kill.stored == ids[:n], "the store is not a prefix of what the daemon handed it"
        assert len(kill.lost) <= BATCH, kill.line()
    # The rollups are a second transaction (SQLite: a second file) of the same batch: a kill
    # between the two leaves at most that batch in the raw rows only, each time.
    raw_rows = sum(len(k.stored) for k in kills)
    assert 0 <= raw_rows - kills[-1].in_rollups <= KILLS * BATCH
    # After the last restart: written on, no errors, the rows of before all there, sound.
    assert after["write_errors"] == 0 and after["dropped"] == 0, after
    assert stored_flow_ids(store)[: len(committed)] == committed
    assert all(r == ["ok"] for r in sqlite_checks(store).values())
    assert integrity(store) == []


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
