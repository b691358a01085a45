"""The control socket under a flood (issue 19, item 7), against a real daemon in a lab.

A member of group `ipsctl` (uid 65534) hammers the socket: a loop of rapid connect/close,
2,000 connections that say nothing, and lines of 100 MB. Meanwhile root's `ipsctl status`
and `ipsctl blocks add` must answer within a bound and never print a traceback, and the
supervisor's threads and memory must stay bounded (read from /proc/PID/status). Before the
fix: a thread per connection (2,000 more threads, 59 -> 200 MB), whole 64 MiB lines kept per
connection, and a client that died with a BlockingIOError traceback on a full backlog.

Bounded in count and time; the daemon and the hammers are ended by their PIDs.
"""

from __future__ import annotations

import grp
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from labkit import ATTACKER, GATEWAY_RULES, inline_lab

# Run with the test's python as root, then become uid 65534 in the group given (the socket is
# 0660 root:ipsctl), stdlib only. Modes: rapid SECONDS | idle COUNT SECONDS | large COUNT MB.
HAMMER = r"""
import json, os, resource, socket, sys, threading, time
path, gid, mode, *args = sys.argv[1:]
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
os.setgroups([int(gid)]); os.setgid(65534); os.setuid(65534)
out = {"mode": mode}
if mode == "rapid":
    end, n, errors = time.monotonic() + float(args[0]), 0, 0
    while time.monotonic() < end and n < 200000:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except OSError:
            errors += 1
        s.close(); n += 1
    out.update(connects=n, errors=errors)
elif mode == "idle":
    held, refused = [], 0
    end = time.monotonic() + 5
    while len(held) < int(args[0]) and time.monotonic() < end:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path); held.append(s)
        except OSError:
            s.close(); refused += 1; time.sleep(0.001)
    out.update(held=len(held), refused=refused)
    print(json.dumps(out), flush=True)
    time.sleep(float(args[1]))
    for s in held:
        s.close()
    sys.exit(0)
elif mode == "large":
    replies = []
    def one():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            for _ in range(1000):  # a full backlog: EAGAIN at once, however long the timeout
                try:
                    s.connect(path); break
                except BlockingIOError:
                    time.sleep(0.005)
            chunk = b"x" * (1 << 20)
            for _ in range(int(args[1])):
                s.sendall(chunk)
            s.sendall(b"\n")
            data = b""
            while not data.endswith(b"\n"):
                c = s.recv(65536)
                if not c:
                    break
                data += c
            replies.append(data.decode()[:200])
        except OSError as exc:
            replies.append(f"{type(exc).__name__}: {exc}")
    threads = [threading.Thread(target=one) for _ in range(int(args[0]))]
    for t in threads: t.start()
    for t in threads: t.join(60)
    out.update(replies=replies)
print(json.dumps(out), flush=True)
"""

HAMMER_SECONDS = 8.0
IDLE = 2000
LARGE, LARGE_MB = 8, 100


def free_gid() -> int:
    while True:
        gid = random.randrange(61000, 64000)
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def test_root_is_answered_while_the_socket_is_flooded(tmp_path: Path) -> None:
    gid = free_gid()
    group_file = tmp_path / "group"
    group_file.write_text(Path("/etc/group").read_text() + f"ipsctl:x:{gid}:\n")
    wrapper = (
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$0" /etc/group && exec "$@"',
        str(group_file),
    )
    sock_dir = Path(tempfile.mkdtemp(prefix="ipsctl-flood-"))
    hammers: list[subprocess.Popen[str]] = []
    try:
        os.chmod(sock_dir, 0o755)
        with inline_lab(tmp_path, "cfl") as box:
            box.socket = str(sock_dir / "ipsctl.sock")
            box.start_daemon(GATEWAY_RULES, wrapper=wrapper)
            pid = box.status()["pid"]
            started = time.monotonic()
            assert box.ipsctl("status", "--json").returncode == 0
            quiet = time.monotonic() - started  # a command without the flood
            before = proc_status(pid)

            peak = dict(before)
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    for key, value in proc_status(pid).items():
                        peak[key] = max(peak[key], value)
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            def hammer(*args: object) -> subprocess.Popen[str]:
                proc = subprocess.Popen(
                    [sys.executable, "-c", HAMMER, box.socket, str(gid), *map(str, args)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                hammers.append(proc)
                return proc

            large = hammer("large", LARGE, LARGE_MB)
            time.sleep(0.5)  # connected before the idle ones take every slot
            idle = hammer("idle", IDLE, HAMMER_SECONDS)
            rapid = [hammer("rapid", HAMMER_SECONDS) for _ in range(2)]

            # root, meanwhile: every command answered, each within a bound, never a traceback
            latencies: list[float] = []
            outputs = []
            for _round in range(3):  # within the hammers' HAMMER_SECONDS
                for args in (("status", "--json"), ("blocks", "add", ATTACKER, "--ttl", "60s")):
                    started = time.monotonic()
                    out = box.ipsctl(*args, timeout=30)
                    latencies.append(time.monotonic() - started)
                    outputs.append(out)
            results = [
                json.loads(p.communicate(timeout=90)[0].splitlines()[-1])
                for p in [idle, *rapid, large]
            ]
            sampling.set()
            sampler.join(5)
            print(
                f"\ncontrol flood: threads {before['Threads']} -> peak {peak['Threads']}, "
                f"RSS {before['VmRSS'] // 1024} -> peak {peak['VmRSS'] // 1024} MB, root's "
                f"commands {min(latencies):.2f}-{max(latencies):.2f} s "
                f"({len(latencies)} of them; {quiet:.2f} s without the flood); "
                f"hammers: {results[:3]}"
            )

            for out in outputs:
                assert out.returncode == 0, (out.stdout[-500:], out.stderr[-2000:])
                assert "Traceback" not in out.stderr, out.stderr
            assert len(latencies) >= 6 and max(latencies) < 5.0, latencies
            # the flood did come: connections were held open, and the big lines were refused
            assert results[0]["held"] + results[0]["refused"] >= 1000, results[0]
            assert sum(r["connects"] for r in results[1:3]) > 1000, results[1:3]
            replies = results[3]["replies"]
            assert len(replies) == LARGE and all("request too large" in r for r in replies), replies
            # bounded: no thread per connection, no line kept whole
            assert peak["Threads"] <= before["Threads"] + 2, (before, peak)
            assert peak["VmRSS"] - before["VmRSS"] < 64 * 1024, (before, peak)  # kB
            # and after the flood, at once
            started = time.monotonic()
            assert box.status()["ok"] is True
            assert time.monotonic() - started < 3
            assert "Traceback" not in box.daemon_log.read_text()
    finally:
        for proc in hammers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        subprocess.run(["rm", "-rf", str(sock_dir)], timeout=10)
