"""The application layer inline in the lab: real TLS, DNS, QUIC and HTTP clients and servers
(appkit), ipsctl on gw deciding by SNI, DNS query name and HTTP Host.

Each test builds its own lab (own namespace prefix) and sends traffic only between its hosts;
every client run is bounded (curl -m, dig +time, the QUIC client's timeout).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from appkit import (
    BAD,
    SERVER_2,
    AppLab,
    app_events,
    app_lab,
    curl_failed_fast,
    policy,
    schema_errors,
    schema_validator,
)
from labkit import SERVER, TIMEOUT, wait_until


def ok_body(out: subprocess.CompletedProcess[str], name: str, port: int = 443) -> bool:
    return out.returncode == 0 and out.stdout.startswith(f"ok port {port} host {name}\n")


def check_eve(app: AppLab) -> list[dict]:
    """Stop the daemon (its EVE file is then complete) and validate every line."""
    app.box.stop_daemon()
    events = app.box.eve_events()
    assert events
    assert not schema_errors(schema_validator(), events)
    return events


def test_services_answer_through_ipsctl_accepting_everything(tmp_path: Path) -> None:
    """The plumbing, with nothing filtered: every service answers through the gateway."""
    with app_lab(tmp_path, "aac") as app:
        app.box.start_daemon(policy())
        for address in (SERVER, SERVER_2):
            for name in ("ok.lab", "blocked.lab"):
                assert ok_body(app.https(name, address), name), (name, address)
        assert ok_body(app.http("ok.lab"), "ok.lab", 80)
        assert ok_body(app.http("blocked.lab"), "blocked.lab", 80)
        assert app.dig("good.lab") == ("NOERROR", [SERVER])
        assert app.dig("x.bad.lab") == ("NOERROR", [BAD])
        assert app.dig("nosuch.lab")[0] == "NXDOMAIN"
        status, addresses = app.dig("blocked.lab")
        assert status == "NOERROR" and sorted(addresses) == sorted([SERVER, SERVER_2])
        assert app.dig("good.lab", "+tcp") == ("NOERROR", [SERVER])
        for sni in ("ok.lab", "blocked.lab"):
            quic = app.quic(sni)
            assert quic.returncode == 0 and quic.stdout.strip() == "ok quic hello", quic
        assert {"good.lab", "x.bad.lab", "blocked.lab"} <= set(app.dns_queries_seen())
        check_eve(app)


def test_tls_sni_drop_holds_for_every_address_of_the_name(tmp_path: Path) -> None:
    with app_lab(tmp_path, "ats") as app:
        app.box.start_daemon(policy('drop tls sni "blocked.lab" alert "blocked sni"'))
        # The client learns the name's addresses from the lab's DNS server, as a browser
        # would; OpenGFW's block is bypassed when the client retries another address.
        status, addresses = app.dig("blocked.lab")
        assert status == "NOERROR" and sorted(addresses) == sorted([SERVER, SERVER_2])
        for address in addresses:
            blocked = app.https("blocked.lab", address, max_time=2)
            assert blocked.returncode == 28, (address, blocked)  # the handshake stalls
            assert ok_body(app.https("ok.lab", address), "ok.lab"), address
        # names are case-insensitive
        assert app.https("BLOCKED.lab", max_time=2).returncode == 28
        events = check_eve(app)
        alerts = [e for e in events if e["event_type"] == "alert"]
        assert {a["dest_ip"] for a in alerts} >= {SERVER, SERVER_2}
        assert all(a["alert"]["action"] == "blocked" for a in alerts)
        assert ("tls", "ok.lab") in app_events(events)


def test_tls_sni_reject_resets_at_once(tmp_path: Path) -> None:
    with app_lab(tmp_path, "atr") as app:
        app.box.start_daemon(policy('reject tls sni { "blocked.lab", "*.bad.lab" }'))
        # the server's side of the reset: its connection is closed too, not left half open
        resets = Capture(
            app, "server", "tcp port 443 and tcp[tcpflags] & tcp-rst != 0", tmp_path / "rst.pcap"
        )
        try:
            for name, address in (
                ("blocked.lab", SERVER),
                ("blocked.lab", SERVER_2),
                ("x.bad.lab", SERVER),
            ):
                out = app.https(name, address)
                # a reset, not a timeout: curl fails at once (35: TLS connect error, 56: reset)
                assert curl_failed_fast(out), (name, address, out)
            assert ok_body(app.https("ok.lab"), "ok.lab")
            assert app.https("bad.lab").returncode == 0  # "*.bad.lab" is its subdomains only
        finally:
            resets.stop()
        read = app.box.run("server", ["tcpdump", "-n", "-r", str(resets.path)], check=True)
        to_server = [line for line in read.stdout.splitlines() if " > " in line and ".443:" in line]
        # one reset per refused connection, arriving at the server's port 443 (both addresses)
        assert len(to_server) >= 3, read.stdout
        destinations = {line.split(" > ")[1].split(":")[0].rsplit(".", 1)[0] for line in to_server}
        assert destinations == {SERVER, SERVER_2}, read.stdout
        check_eve(app)


class Capture:
    """tcpdump on a lab host's eth0, by PID, written packet by packet (-U)."""

    def __init__(self, app: AppLab, node: str, bpf: str, path: Path) -> None:
        self.path = path
        self.proc = app.box.lab.popen(
            node,
            # --immediate-mode: each packet reaches tcpdump at once (not a ring block later)
            ["tcpdump", "-i", "eth0", "--immediate-mode", "-U", "-n", "-w", str(path), bpf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert b"listening on" in line, line
        # tcpdump says "listening" a moment before its socket sees packets (measured: the
        # first packets of a client started at once were missing); half a second is plenty.
        time.sleep(0.5)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(TIMEOUT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def client_hello_segments(path: Path) -> dict[str, int]:
    """SNI -> how many TCP segments its ClientHello spanned (tshark reassembles them)."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "tls.handshake.type == 1", "-T", "fields",
         "-e", "tls.handshake.extensions_server_name", "-e", "tcp.segment.count",
         "-o", "tcp.desegment_tcp_streams:TRUE", "-o", "tls.desegment_ssl_records:TRUE"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    segments: dict[str, int] = {}
    for row in out.stdout.splitlines():
        sni, _, count = row.partition("\t")
        if sni:
            segments[sni] = max(segments.get(sni, 0), int(count or 1))
    return segments


@pytest.mark.parametrize("verdict", ["drop", "reject"])
def test_tls_sni_with_the_client_hello_split_in_two_segments(tmp_path: Path, verdict: str) -> None:
    """The server advertises a small MSS, so the client's ClientHello crosses two TCP
    segments: ipsctl has to reassemble it before it knows the SNI."""
    with app_lab(tmp_path, f"asp{verdict[0]}") as app:
        # 300 bytes of payload per segment: curl's ClientHello (517 bytes here) takes two.
        app.box.run(
            "server",
            ["ip", "route", "change", "default", "via", "10.10.2.1", "advmss", "300"],
            check=True,
        )
        # Without this the client's kernel hands its veth one GSO packet holding both
        # segments (the capture then shows one), and it is cut only if something on the path
        # segments it: one segment per packet makes the split real on the wire.
        app.box.run("client", ["ip", "link", "set", "eth0", "gso_max_segs", "1"], check=True)
        app.box.start_daemon(policy(f'{verdict} tls sni "blocked.lab"'))
        capture = Capture(app, "client", "tcp port 443", tmp_path / "split.pcap")
        try:
            ok = app.https("ok.lab")
            blocked = app.https("blocked.lab", max_time=2)
        finally:
            capture.stop()
        assert ok_body(ok, "ok.lab"), ok
        if verdict == "drop":
            assert blocked.returncode == 28, blocked
        else:
            assert curl_failed_fast(blocked), blocked
        segments = client_hello_segments(capture.path)
        assert segments.get("ok.lab") == 2, segments
        # the blocked one never completed on the wire to the server: the client's capture
        # holds its first segment and retransmissions; the reassembled hello is split too
        assert segments.get("blocked.lab", 2) == 2, segments
        check_eve(app)


def test_dns_query_reject_answers_nxdomain_then_refused(tmp_path: Path) -> None:
    with app_lab(tmp_path, "adn") as app:
        rules = app.box.workdir / "dns.rules"
        rules.write_text(policy('reject dns query "*.bad.lab"'))
        app.box.start_daemon(rules)
        before = len(app.dns_queries_seen())
        # dnsmasq would answer NOERROR with an address (its wildcard): NXDOMAIN came from ipsctl
        assert app.dig("x.bad.lab") == ("NXDOMAIN", [])
        assert app.dig("deep.x.BAD.lab") == ("NXDOMAIN", [])
        assert app.dig("good.lab") == ("NOERROR", [SERVER])
        assert app.dig("bad.lab") == ("NOERROR", [BAD])  # not a subdomain of itself
        # over TCP there is no answer to forge: the connection is reset, the query never arrives
        assert app.dig("z.bad.lab", "+tcp")[0] == "no answer"
        assert app.dig("good.lab", "+tcp") == ("NOERROR", [SERVER])
        seen = app.dns_queries_seen()[before:]
        assert "good.lab" in seen and "bad.lab" in seen
        assert not [name for name in seen if name.lower().endswith(".bad.lab")], seen

        rules.write_text(policy('reject dns query "*.bad.lab"', "set dns-reject refused"))
        applied = app.box.ipsctl("apply", str(rules))
        assert applied.returncode == 0, applied.stderr
        assert app.dig("y.bad.lab") == ("REFUSED", [])
        assert app.dig("good.lab") == ("NOERROR", [SERVER])
        assert "y.bad.lab" not in app.dns_queries_seen()
        events = check_eve(app)
        assert {("dns", "x.bad.lab"), ("dns", "good.lab")} <= app_events(events)


def test_quic_sni_drop_stops_the_handshake(tmp_path: Path) -> None:
    with app_lab(tmp_path, "aqu") as app:
        app.box.start_daemon(policy('drop quic sni "blocked.lab"'))
        blocked = app.quic("blocked.lab", timeout=3)
        assert blocked.returncode == 1 and blocked.stdout.strip() == "timeout", blocked
        ok = app.quic("ok.lab")
        assert ok.returncode == 0 and ok.stdout.strip() == "ok quic hello", ok
        assert app.quic("blocked.lab", SERVER_2, timeout=2).returncode == 1
        check_eve(app)


def test_http_host_drop(tmp_path: Path) -> None:
    with app_lab(tmp_path, "aht") as app:
        app.box.start_daemon(policy('drop http host "blocked.lab"'))
        assert app.http("blocked.lab", max_time=2).returncode == 28
        assert app.http("blocked.lab", SERVER_2, max_time=2).returncode == 28
        assert ok_body(app.http("ok.lab"), "ok.lab", 80)
        # by address, the Host is the address: not the blocked name
        plain = app.box.curl("client", f"http://{SERVER}/")
        assert plain.returncode == 0 and plain.stdout.startswith("ok port 80\n")
        events = check_eve(app)
        assert ("http", "ok.lab") in app_events(events)


def test_inline_tls_and_http_events_come_while_the_flow_lives(tmp_path: Path) -> None:
    with app_lab(tmp_path, "aev") as app:
        app.box.start_daemon(policy())
        assert ok_body(app.https("ok.lab"), "ok.lab")
        assert ok_body(app.http("ok.lab"), "ok.lab", 80)

        def logged() -> set[tuple[str, str]]:
            return app_events(app.box.eve_events())

        assert wait_until(lambda: {("tls", "ok.lab"), ("http", "ok.lab")} <= logged(), 5)
        (http,) = [e["http"] for e in app.box.eve_events() if e["event_type"] == "http"]
        assert http.get("status") == 200, http
