"""What the store's tests share: synthetic flow records and other effects (seeded), and a
PostgreSQL server of the test's own (initdb + postgres in a temporary directory, on a unix
socket there, stopped by its PID).

The flows are duck-typed Flows (SimpleNamespace with the attributes a flow record reads),
so they can be made by the million for the benchmark as well."""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from ips.core.events import Alert, AppEvent, Block, FlowEnd, LogRecord, Unblock

T0 = 1_764_547_200.0  # 2025-12-01 00:00:00 UTC
NAMES = ("example.com", "www.example.com", "cdn.example.net", "a_b.example.org", "lab.test")


def synthetic_flows(n: int, seed: int = 1, t0: float = T0, span: float = 3 * 3600) -> list[FlowEnd]:
    """n flow records over `span` seconds from t0: a few busy hosts, IPv4 and IPv6, TCP,
    UDP and ICMP, names on some."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v6 = rng.random() < 0.2
        if v6:
            src = bytes.fromhex("fd000000000000000000000000000000")[:15] + bytes([rng.randrange(8)])
            dst = bytes.fromhex("20010db8000000000000000000000000")[:15] + bytes(
                [rng.randrange(16)]
            )
        else:
            src = bytes([10, 0, rng.randrange(4), rng.randrange(1, 20)])
            dst = bytes([rng.choice((93, 142, 10)), 0, 0, rng.randrange(1, 30)])
        proto = rng.choice((6, 6, 6, 17, 17, 1))
        sport = rng.randrange(1024, 65535) if proto != 1 else 0
        dport = rng.choice((443, 80, 53, 22, 8080)) if proto != 1 else 0
        start = t0 + rng.random() * span
        end = start + rng.random() * 120
        name = rng.choice(NAMES) if rng.random() < 0.5 else None
        sni = name if dport == 443 and rng.random() < 0.7 else None
        host = name if dport == 80 else None
        app = None
        if sni or host:
            app = SimpleNamespace(tls_sni=sni, quic_sni=None, http_host=host)
        flow = SimpleNamespace(
            flow_id=i + 1, family=6 if v6 else 4, proto=proto, src=src, sport=sport, dst=dst,
            dport=dport, first_seen=start, last_seen=end, pkts_fwd=rng.randrange(1, 50),
            pkts_rev=rng.randrange(0, 50), bytes_fwd=rng.randrange(40, 100_000),
            bytes_rev=rng.randrange(0, 1_000_000), replied=rng.random() < 0.8,
            offloaded=rng.random() < 0.1, app=app,
            app_proto={443: "tls", 80: "http", 53: "dns", 22: "ssh"}.get(dport),
            dst_name=name if rng.random() < 0.5 else None, icmp=0x0800 if proto == 1 else -1,
            tcp_state=0, flags_fwd=0, flags_rev=0, iif=None, oif=None,
        )  # fmt: skip
        out.append(FlowEnd(flow, rng.choice(("timeout", "closed", "evicted")), end + 30))  # type: ignore[arg-type]
    return out


def synthetic_events(n: int, seed: int = 2, t0: float = T0) -> list[Any]:
    """Alerts, log records, application events, blocks and unblocks."""
    rng = random.Random(seed)
    out: list[Any] = []
    for i in range(n):
        t = t0 + i * 7.5
        src, dst = bytes([10, 0, 0, rng.randrange(1, 9)]), bytes([93, 0, 0, rng.randrange(1, 9)])
        kind = i % 5
        if kind == 0:
            a = Alert(t, i, 4, 6, src, 40000 + i, dst, 22, action="blocked", signature_id=9000001,
                      signature="ipsctl portscan", severity=2, category="portscan",
                      rule_name="detect portscan", extra={"count": i, "window": 5.0})  # fmt: skip
            a.app_proto, a.dst_name = "ssh", rng.choice(NAMES)
            out.append(a)
        elif kind == 1:
            out.append(LogRecord(t, i, 4, 17, src, 5353, dst, 53, verdict="drop",
                                 rule_name="x.rules:3"))  # fmt: skip
        elif kind == 2:
            body: dict[str, object] = {"sni": rng.choice(NAMES), "version": "TLS 1.3",
                                       "ja3": {"hash": "abc"}, "ja4": "t13d"}  # fmt: skip
            out.append(AppEvent(t, i, 4, 6, src, 50000, dst, 443, event_type="tls", body=body))
        elif kind == 3:
            out.append(Block(src, table="banned", ttl=600.0, detector="portscan", offense=1,
                             reason="portscan: 20 ports", time=t))  # fmt: skip
        else:
            out.append(Unblock(src, table="banned", reason="expired", time=t))
    return out


# ---- a PostgreSQL server of the test's own ------------------------------------------------------


def postgres_bin() -> str | None:
    """The directory of initdb and postgres (Debian's /usr/lib/postgresql/N/bin), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster in a temporary directory, listening only on a unix socket
    there; yields its URL and stops the server (SIGINT: fast shutdown, by its PID) and
    removes the directory after. As root, the server runs as the `postgres` user (it
    refuses to run as root)."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL's initdb is not installed")
    root = tempfile.mkdtemp(prefix="ipsctl-pg-")
    os.chmod(root, 0o755)
    data = os.path.join(root, "data")
    os.mkdir(data, 0o700)
    kw: dict[str, Any] = {}
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chown(data, pw.pw_uid, pw.pw_gid)
        kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    port = _free_port()
    proc = None
    try:
        subprocess.run(
            [f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            check=True, capture_output=True, cwd=root, **kw,
        )  # fmt: skip
        proc = subprocess.Popen(
            [f"{bindir}/postgres", "-D", data, "-k", root, "-p", str(port), "-c",
             "listen_addresses=", "-c", "fsync=off", "-c", "full_page_writes=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root, **kw,
        )  # fmt: skip
        sock = os.path.join(root, f".s.PGSQL.{port}")
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"postgres did not start: {err}")
            time.sleep(0.05)
        url = f"postgresql://postgres@/postgres?host={root}&port={port}"
        import psycopg

        for _ in range(200):  # the socket exists a moment before connections are accepted
            try:
                psycopg.connect(url).close()
                break
            except psycopg.OperationalError:
                time.sleep(0.05)
        yield url
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """A new empty database on the server at url; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.replace("@/postgres?", f"@/{name}?")


# The synthetic flows' public destinations, for a geo database of the tests' own (their IPv6
# ends are documentation space: no country, whatever a database says).
SYNTHETIC_GEO = (
    ("93.0.0.0", "93.255.255.255", "DE", 3320, "Deutsche Telekom AG"),
    ("142.0.0.0", "142.255.255.255", "US", 15169, "Google LLC"),
)


def write_geo_dir(directory: str, ranges: Any = SYNTHETIC_GEO, epoch: int = 1_764_547_200) -> str:
    """country.mmdb and asn.mmdb in DIRECTORY (built with ips/geo/mmdb_writer.py) answering
    (first, last, country, asn, org) RANGES, sorted and not overlapping."""
    from geo_data import write_geo_databases

    write_geo_databases(
        directory,
        [(a, b, cc) for a, b, cc, _n, _o in ranges],
        [(a, b, n, o) for a, b, _cc, n, o in ranges],
        epoch,
    )
    return directory
