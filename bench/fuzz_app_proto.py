"""Coverage-guided fuzzing (atheris/libFuzzer) of the application-layer parsers and the TCP
reassembler.

The contracts (the same as tests/pure/test_app_fuzz.py, for many more inputs):
  detect     detect_stream / detect_datagram answer a known name (or None): no exception
  parsers    DNS (UDP and TCP framing), HTTP requests and responses, SSH banners return a
             value, None or a Malformed whose reason is in the module's REASONS
  reassembly the input is read as a script of segments (direction, sequence offset, flags,
             length) over 16 flows of one Reassembler with a small global cap: no exception,
             never above the cap, the bytes held always equal what the flows hold, nothing
             held after every flow is closed
A violation raises, and libFuzzer stops and writes the input (crash-*) into the working
directory. Every 100,000 inputs a line reports the count and the peak RSS.

    .venv/bin/python bench/fuzz_app_proto.py -runs=1000000 [-seed=1] [corpus_dir]

Needs `pip install atheris` (Linux, CPython 3.11+).
"""

from __future__ import annotations

import resource
import sys

import atheris

with atheris.instrument_imports(include=["ips.app"]):
    from ips.app import dns, http, ssh
    from ips.app.detect import detect_datagram, detect_stream
    from ips.app.reassembly import Reassembler

DETECTED = frozenset((None, "tls", "http", "dns", "ssh", "quic", "unknown"))
MEMORY_CAP = 64 * 1024
REASSEMBLER = Reassembler(limit=2048, memory_cap=MEMORY_CAP, max_pieces=16)
FLOWS = [REASSEMBLER.open() for _ in range(16)]
STATE = {"inputs": 0}


class ContractViolation(AssertionError):
    pass


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ContractViolation(what)


def parsers(data: bytes) -> None:
    _check(detect_stream(data) in DETECTED, "detect_stream")
    _check(detect_datagram(data) in DETECTED, "detect_datagram")
    got = dns.parse_message(data)
    _check(isinstance(got, dns.DnsMessage) or got.reason in dns.REASONS, "dns")
    if isinstance(got, dns.DnsMessage):
        dns.eve_dns(got)
    messages, used = dns.parse_tcp_stream(data)
    _check(0 <= used <= len(data), "dns tcp framing")
    for m in messages:
        _check(isinstance(m, dns.DnsMessage) or m.reason in dns.REASONS, "dns tcp")
    requests, used, why = http.parse_requests(data)
    _check(0 <= used <= len(data), "http requests used")
    _check(isinstance(why, str) or why.reason in http.REASONS, "http requests")
    responses, used, why = http.parse_responses(data, [r.method for r in requests])
    _check(isinstance(why, str) or why.reason in http.REASONS, "http responses")
    for r in requests:
        http.eve_http(r, responses[0] if responses else None)
    for server in (False, True):
        b = ssh.parse_banner(data, server=server)
        _check(b is None or isinstance(b, ssh.SshBanner) or b.reason in ssh.REASONS, "ssh")


def reassembly(fdp: atheris.FuzzedDataProvider) -> None:
    base = fdp.ConsumeIntInRange(0, 2**32 - 1)
    while fdp.remaining_bytes() > 4:
        flow = FLOWS[fdp.ConsumeIntInRange(0, 15)]
        op = fdp.ConsumeIntInRange(0, 15)
        if op == 0:
            REASSEMBLER.close(flow)
            FLOWS[FLOWS.index(flow)] = REASSEMBLER.open()
            continue
        seq = (base + fdp.ConsumeIntInRange(-64, 4096)) & 0xFFFFFFFF
        flags = fdp.ConsumeIntInRange(0, 255)
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1500))
        REASSEMBLER.add(flow, bool(op & 1), seq, flags, payload)
        _check(0 <= REASSEMBLER.used <= MEMORY_CAP, "memory cap")
    held = sum(f.to_server.held + f.to_client.held for f in FLOWS if not f.closed)
    _check(held == REASSEMBLER.used, "accounting")


def one_input(data: bytes) -> None:
    STATE["inputs"] += 1
    if data[:1] == b"\x00":
        reassembly(atheris.FuzzedDataProvider(data[1:]))
    else:
        parsers(data)
    if STATE["inputs"] % 100_000 == 0:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"fuzz_app_proto: {STATE['inputs']} inputs, peak RSS {rss:.0f} MB", flush=True)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
