"""Helpers for the application-layer lab tests: real servers on the lab's `server` host and
real clients on `client`, with ipsctl between them on `gw` (labkit.InlineLab).

On `server` (10.10.2.10, and 10.10.2.100 as a second address of the same names):
* HTTPS on 443 (ips.lab.services, a self-signed certificate for ok.lab, blocked.lab, …),
  HTTP on 80 (the lab's own service; it answers `ok port 80 host NAME` by Host);
* dnsmasq on 10.10.2.10:53 (ips.lab.dnsmasq): the `lab` zone below, no upstream, every query
  logged;
* a QUIC server on UDP 443 (tests/lab/quiclab.py, aioquic).
Clients: curl (with --resolve: no resolver outside the lab is asked), dig, quiclab client.
Every client run is bounded (curl -m, dig +time/+tries, the QUIC client's --timeout); every
process started here is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from labkit import ROOT, SERVER, InlineLab, inline_lab

from ips.lab.dnsmasq import dnsmasq_argv
from ips.lab.tlscert import write_self_signed

SERVER_2 = "10.10.2.100"  # a second address of the server: one name, several addresses
BAD = "10.10.2.66"  # what dnsmasq answers for any name under bad.lab
RECORDS = {
    "ok.lab": [SERVER],
    "good.lab": [SERVER],
    "blocked.lab": [SERVER, SERVER_2],
    "multi.lab": [SERVER, SERVER_2],
}
WILDCARDS = {"bad.lab": BAD}
QUICLAB = Path(__file__).resolve().parent / "quiclab.py"
SCHEMA = ROOT.parent / "shared" / "schemas" / "suricata-eve-schema.json"
TOOLS = ("curl", "dig", "dnsmasq", "tcpdump", "tshark")


def need_tools(*tools: str) -> None:
    """Skip when a tool is missing, except under CI=true, where that is a failure
    (scripts/setup.sh installs them all)."""
    missing = [t for t in tools if shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if not missing:
        return
    message = f"missing tools: {' '.join(missing)} (scripts/setup.sh installs them)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


class AppLab:
    """The lab's application services and clients; `box` is the InlineLab under them."""

    def __init__(self, box: InlineLab, workdir: Path) -> None:
        self.box = box
        self.workdir = workdir
        self.cert, self.key = write_self_signed(workdir / "tls")
        self.dns_log = workdir / "dnsmasq.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    # ---- servers -------------------------------------------------------------------------

    def _start(self, node: str, argv: list[str], log: str, wait_ready: bool) -> None:
        out = open(self.workdir / log, "wb")  # noqa: SIM115 - closed right after the start
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = self.box.lab.popen(
            node,
            argv,
            stdout=subprocess.PIPE if wait_ready else out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        out.close()
        self.procs.append(proc)
        if wait_ready:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # bounded: the servers print it or exit at once
            assert line.strip() == b"ready", (argv, line, (self.workdir / log).read_text())
            proc.stdout.close()

    def start_servers(self) -> None:
        self._start(
            "server",
            [sys.executable, "-m", "ips.lab.services", "--https", "443",
             "--tls-cert", str(self.cert), "--tls-key", str(self.key)],
            "https.log",
            wait_ready=True,
        )  # fmt: skip
        self._start(
            "server",
            dnsmasq_argv(SERVER, RECORDS, WILDCARDS, log=str(self.dns_log)),
            "dnsmasq.out",
            wait_ready=False,
        )
        self._start(
            "server",
            [sys.executable, str(QUICLAB), "server", "--listen", SERVER, "--port", "443",
             "--cert", str(self.cert), "--key", str(self.key)],
            "quic.log",
            wait_ready=True,
        )  # fmt: skip
        # dnsmasq says nothing when it is ready: ask it until it answers.
        for _ in range(50):
            if self.dig("ok.lab")[0] == "NOERROR":
                break
        else:
            raise AssertionError(f"dnsmasq does not answer: {self.dns_log.read_text()}")

    def stop_servers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.procs.clear()

    # ---- clients -------------------------------------------------------------------------

    def https(
        self, name: str, address: str = SERVER, max_time: float = 3, node: str = "client"
    ) -> subprocess.CompletedProcess[str]:
        """curl https://NAME/ at ADDRESS (no resolver asked), certificate not checked."""
        return self.box.run(
            node,
            ["curl", "-sk", "-m", str(max_time), "-w", "\n%{time_total}",
             "--resolve", f"{name}:443:{address}", f"https://{name}/"],
            timeout=max_time + 5,
        )  # fmt: skip

    def http(
        self, host: str, address: str = SERVER, max_time: float = 3
    ) -> subprocess.CompletedProcess[str]:
        """curl http://HOST/ at ADDRESS (port 80): the request's Host header is HOST."""
        return self.box.run(
            "client",
            ["curl", "-s", "-m", str(max_time), "-w", "\n%{time_total}",
             "--resolve", f"{host}:80:{address}", f"http://{host}/"],
            timeout=max_time + 5,
        )  # fmt: skip

    def dig(self, name: str, *options: str, rtype: str = "A") -> tuple[str, list[str]]:
        """Ask the lab's dnsmasq: (status, the answer section's data); status `no answer`
        when none came (2 s without one, or over TCP a reset connection)."""
        out = self.box.run(
            "client",
            ["dig", "+time=2", "+tries=1", "+noall", "+comments", "+answer",
             f"@{SERVER}", name, rtype, *options],
            timeout=10,
        )  # fmt: skip
        status = "no answer"
        answers = []
        for line in out.stdout.splitlines():
            if "->>HEADER<<-" in line:
                status = line.split("status: ", 1)[1].split(",", 1)[0]
            elif line and not line.startswith(";"):
                answers.append(line.split()[-1])
        return status, answers

    def quic(
        self, sni: str, address: str = SERVER, timeout: float = 3
    ) -> subprocess.CompletedProcess[str]:
        return self.box.run(
            "client",
            [sys.executable, str(QUICLAB), "client", "--connect", address,
             "--sni", sni, "--timeout", str(timeout)],
            timeout=timeout + 10,
        )  # fmt: skip

    def dns_queries_seen(self) -> list[str]:
        """The names dnsmasq was asked (its log-queries lines)."""
        if not self.dns_log.exists():
            return []
        names = []
        for line in self.dns_log.read_text().splitlines():
            if " query[" in line:
                names.append(line.split("] ", 1)[1].split(" from ", 1)[0])
        return names


def curl_failed_fast(out: subprocess.CompletedProcess[str], limit: float = 1.0) -> bool:
    """curl gave up (not 0, not a timeout) within LIMIT seconds: a reset, not a stall."""
    if out.returncode in (0, 28):
        return False
    return float(out.stdout.split()[-1]) < limit


@contextmanager
def app_lab(tmp_path: Path, tag: str) -> Iterator[AppLab]:
    need_tools(*TOOLS)
    with inline_lab(tmp_path, tag) as box:
        app = AppLab(box, tmp_path)
        try:
            app.start_servers()
            yield app
        finally:
            app.stop_servers()


# ---- EVE ---------------------------------------------------------------------------------------


def schema_validator() -> Any:
    """Suricata's published EVE schema (../shared/schemas), as a jsonschema validator."""
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: Suricata's EVE schema not found at {SCHEMA}")
        pytest.skip(f"Suricata's EVE schema not found at {SCHEMA}")
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def schema_errors(validator: Any, events: list[dict[str, Any]]) -> list[str]:
    """Every schema error of these EVE lines, ipsctl's own top-level objects (`ipsctl`,
    `ipsctl_block`, …: the schema forbids unknown top-level keys) set aside first."""
    errors = []
    for event in events:
        standard = {k: v for k, v in event.items() if not k.startswith("ipsctl")}
        if str(standard.get("event_type", "")).startswith("ipsctl"):
            continue  # an ipsctl event type: its body is ipsctl's own, not Suricata's
        for error in validator.iter_errors(standard):
            errors.append(f"{event.get('event_type')} {list(error.path)}: {error.message}")
    return errors


def app_events(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The application-layer events as (type, name): tls SNI, quic SNI, dns query names,
    http hostnames."""
    out = set()
    for e in events:
        kind = e.get("event_type")
        body = e.get(str(kind)) or {}
        if kind in ("tls", "quic") and body.get("sni"):
            out.add((kind, body["sni"]))
        elif kind == "dns":
            if body.get("type") == "query" and body.get("rrname"):
                out.add(("dns", body["rrname"]))
            for query in body.get("queries", []):  # Suricata 8's version 3 layout
                out.add(("dns", query["rrname"]))
        elif kind == "http" and body.get("hostname"):
            out.add(("http", body["hostname"]))
    return out


def policy(*rules: str) -> str:
    """A policy of RULES that accepts everything else."""
    return "\n".join([*rules, "set default accept", ""])
