"""The TLS parser and fingerprints against independent tools, over every shared capture.

tshark (Debian's 4.0) is the oracle for SNI, JA3 (string and hash), JA3S and the first server
certificate's fields; the `ja4plus` package (its own scapy-based reader and reassembly) for
JA4. Every ClientHello/ServerHello/Certificate the tools show must be found by ipsctl, with
equal fields. The client->server and server->client stream starts come from the test helper
`app_streams` (in-order TCP payload), the way the reassembler will hand them over.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest
from app_streams import tcp_connections
from captures import PCAPS, pcap_names

from ips.app.ja import ja3, ja3s, ja4
from ips.app.tls import (
    ClientHello,
    ServerFlight,
    parse_client_hello,
    parse_server_flight,
)


@pytest.fixture(scope="module", autouse=True)
def _tshark_present() -> None:
    """tshark missing: skip, or fail under CI=true (scripts/setup.sh installs it)."""
    if shutil.which("tshark") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tshark not installed (scripts/setup.sh installs it)")
        pytest.skip("tshark not installed")


Key = tuple[str, int, str, int]


def _tshark(path: Path, *args: str) -> str:
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


def _last(values: str) -> str:
    return values.split("|")[-1] if values else ""


@functools.cache
def tshark_hellos(name: str) -> tuple[dict[Key, list], dict[Key, list]]:
    """(client hellos, server hellos) per (src, sport, dst, dport), in frame order."""
    text = _tshark(
        PCAPS / name,
        "-Y",
        "tls.handshake.type == 1 || tls.handshake.type == 2",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
        *("-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport"),
        *("-e", "ip.dst", "-e", "ipv6.dst", "-e", "tcp.dstport"),
        *("-e", "tls.handshake.extensions_server_name"),
        *("-e", "tls.handshake.ja3", "-e", "tls.handshake.ja3_full"),
        *("-e", "tls.handshake.ja3s", "-e", "tls.handshake.ja3s_full"),
    )
    clients: dict[Key, list] = defaultdict(list)
    servers: dict[Key, list] = defaultdict(list)
    for line in text.splitlines():
        f = line.split("\t")
        src = _last(f[1]) or _last(f[0])
        dst = _last(f[4]) or _last(f[3])
        key = (src, int(_last(f[2])), dst, int(_last(f[5])))
        if f[7]:
            clients[key].append((f[6] or None, f[7], f[8]))
        if f[9]:
            servers[key].append((f[9], f[10]))
    return dict(clients), dict(servers)


@functools.cache
def tshark_certificates(name: str) -> dict[Key, list]:
    """The first certificate of each Certificate message, as tshark dissects it."""
    text = _tshark(PCAPS / name, "-Y", "tls.handshake.type == 11", "-T", "pdml")
    found: dict[Key, list] = defaultdict(list)
    for packet in ET.fromstring(text).iter("packet"):
        values: dict[str, str] = {}
        for fld in packet.iter("field"):
            fname = fld.get("name")
            if fname in ("ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport"):
                values[fname] = fld.get("show", "")
        key = (
            values.get("ipv6.src") or values["ip.src"],
            int(values["tcp.srcport"]),
            values.get("ipv6.dst") or values["ip.dst"],
            int(values["tcp.dstport"]),
        )
        for message in packet.iter("field"):
            if message.get("name") != "tls.handshake.certificates":
                continue
            first = next((c for c in message if c.get("name") == "tls.handshake.certificate"), None)
            if first is not None:
                found[key].append(_tshark_certificate(first))
    return dict(found)


def _rdns(element: ET.Element | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if element is None:
        return out
    for item in element.iter("field"):
        if item.get("name") != "x509if.RelativeDistinguishedName_item_element":
            continue
        oid = next((c.get("show") for c in item.iter("field") if c.get("name") == "x509if.oid"), "")
        shown = item.get("showname", "")
        label = shown[shown.index("(") + 1 : -1]
        out.append((oid or "", label.split("=", 1)[1]))
    return out


def _tshark_certificate(cert: ET.Element) -> dict:
    der = bytes.fromhex(cert.get("value", ""))
    info: dict = {"sha1": hashlib.sha1(der).hexdigest()}
    times: list[str] = []
    for fld in cert.iter("field"):
        name = fld.get("name")
        if name == "x509af.serialNumber" and "serial" not in info:
            info["serial"] = fld.get("show", "").replace(":", "")
        elif name in ("x509af.utcTime", "x509af.generalizedTime") and len(times) < 2:
            times.append(fld.get("show", ""))
        elif name == "x509af.issuer" and "issuer" not in info:
            info["issuer"] = _rdns(fld)
        elif name == "x509af.subject" and "subject" not in info:
            info["subject"] = _rdns(fld)
    # tshark shows "2016-12-29 15:26:53 (UTC)"; ipsctl keeps "2016-12-29T15:26:53".
    info["validity"] = [t.replace(" (UTC)", "").replace(" ", "T") for t in times]
    return info


@functools.cache
def ipsctl_view(name: str) -> tuple[dict, dict, dict]:
    """ipsctl's (client hellos, server hellos, certificates) per directed 4-tuple."""
    clients: dict[Key, list] = defaultdict(list)
    servers: dict[Key, list] = defaultdict(list)
    certs: dict[Key, list] = defaultdict(list)
    for conn in tcp_connections(PCAPS / name):
        # The helper guesses the client from the first packet; a hello tells the truth.
        for src, dst, up, down in (
            (conn.client, conn.server, conn.to_server, conn.to_client),
            (conn.server, conn.client, conn.to_client, conn.to_server),
        ):
            hello = parse_client_hello(up.stream())
            if not isinstance(hello, ClientHello):
                continue
            clients[(*src, *dst)].append(hello)
            flight = parse_server_flight(down.stream())
            if isinstance(flight, ServerFlight):
                servers[(*dst, *src)].append(flight.server_hello)
                if flight.certificate is not None:
                    certs[(*dst, *src)].append(flight.certificate)
    return dict(clients), dict(servers), dict(certs)


def _names_with_tls() -> list[str]:
    return [n for n in pcap_names() if tshark_hellos(n) != ({}, {})]


def test_client_hellos_sni_and_ja3_equal_tshark(pcaps_dir: Path) -> None:
    compared = 0
    problems = []
    for name in pcap_names():
        theirs, _ = tshark_hellos(name)
        ours, _, _ = ipsctl_view(name)
        for key, rows in theirs.items():
            mine = [(h.sni, *reversed(ja3(h))) for h in ours.get(key, [])]
            if mine[: len(rows)] != rows:
                problems.append((name, key, rows, mine))
            compared += len(rows)
    print(f"ClientHellos compared with tshark: {compared}, differing: {len(problems)}")
    assert not problems
    assert compared >= 40  # the shared captures hold 49 ClientHellos tshark decodes


def test_server_hellos_ja3s_equal_tshark(pcaps_dir: Path) -> None:
    compared = 0
    problems = []
    for name in pcap_names():
        _, theirs = tshark_hellos(name)
        _, ours, _ = ipsctl_view(name)
        for key, rows in theirs.items():
            mine = [tuple(reversed(ja3s(h))) for h in ours.get(key, [])]
            if mine[: len(rows)] != rows:
                problems.append((name, key, rows, mine))
            compared += len(rows)
    print(f"ServerHellos compared with tshark: {compared}, differing: {len(problems)}")
    assert not problems
    assert compared >= 30


def test_certificates_equal_tshark(pcaps_dir: Path) -> None:
    compared = 0
    problems = []
    for name in pcap_names():
        if not tshark_hellos(name)[1]:
            continue
        theirs = tshark_certificates(name)
        _, _, ours = ipsctl_view(name)
        for key, rows in theirs.items():
            mine = [
                {
                    "sha1": c.sha1,
                    "serial": c.serial.hex(),
                    "validity": [c.not_before, c.not_after],
                    "issuer": list(c.issuer_rdns),
                    "subject": list(c.subject_rdns),
                }
                for c in ours.get(key, [])
            ]
            if mine[: len(rows)] != rows:
                problems.append((name, key, rows, mine))
            compared += len(rows)
    print(f"certificates compared with tshark: {compared}, differing: {len(problems)}")
    assert not problems
    assert compared >= 10


@functools.cache
def ja4plus_fingerprints(name: str) -> dict[Key, list[str]]:
    from ja4plus import JA4Fingerprinter
    from scapy.all import rdpcap

    fingerprinter = JA4Fingerprinter()
    for packet in rdpcap(str(PCAPS / name)):
        fingerprinter.process_packet(packet)
    found: dict[Key, list[str]] = defaultdict(list)
    for entry in fingerprinter.get_fingerprints():
        key = (entry["src"], entry["srcport"], entry["dst"], entry["dstport"])
        found[key].append(entry["fingerprint"])
    return dict(found)


def test_ja4_equals_ja4plus(pcaps_dir: Path) -> None:
    pytest.importorskip("ja4plus")
    compared = 0
    problems = []
    for name in _names_with_tls():
        theirs = ja4plus_fingerprints(name)
        ours, _, _ = ipsctl_view(name)
        for key, rows in theirs.items():
            mine = [ja4(h) for h in ours.get(key, [])]
            if mine[: len(rows)] != rows:
                problems.append((name, key, rows, mine))
            compared += len(rows)
        # Every ClientHello of ours is one ja4plus saw too.
        assert sum(len(v) for v in ours.values()) == sum(len(v) for v in theirs.values()), name
    print(f"ClientHellos compared with ja4plus: {compared}, differing: {len(problems)}")
    assert not problems
    assert compared >= 40
