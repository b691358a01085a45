"""The inspector's short cuts answer as the full parsers do.

The inspector does not re-read a stream from its start on every segment: TLS waits for
`tls.bytes_wanted` bytes (a hello or certificate of known length), HTTP resumes where the
last call stopped (`requests_from`, `responses_from`) and waits for a body of known length.
These tests hold the short cuts to the parsers they stand for, on every prefix of real and
built streams: below `bytes_wanted` the answer is NEED_MORE, as it was; a resumed HTTP parse
gives the messages and the reason a parse from the start gives.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ips.app.http import (
    HttpRequest,
    HttpResponse,
    parse_requests,
    parse_responses,
    requests_from,
    responses_from,
)
from ips.app.tls import NEED_MORE, bytes_wanted, parse_client_hello, parse_server_flight
from tests.pure.app_streams import tcp_connections
from tests.pure.test_app_tls import (
    alpn_ext,
    chrome_like_extensions,
    client_hello_message,
    records,
    server_hello_message,
)

PCAPS = Path(__file__).resolve().parents[3] / "shared" / "pcaps"


def _tls_streams() -> list[tuple[bytes, bool]]:
    """(stream start, server side) of every TLS direction of the shared captures, and built
    ones: a post-quantum hello in records of several sizes, a TLS 1.2 flight whose fake
    certificate spans records."""
    out: list[tuple[bytes, bool]] = []
    if PCAPS.is_dir():
        for path in sorted(PCAPS.glob("*.pcap*")):
            for conn in tcp_connections(path, limit=4096):
                up, down = conn.to_server.stream(), conn.to_client.stream()
                if up[:1] == b"\x16":
                    out.append((up, False))
                if down[:1] == b"\x16":
                    out.append((down, True))
    hello = client_hello_message(chrome_like_extensions("example.com"))
    for size in (1 << 14, 700, 100):
        out.append((records(hello, size=size), False))
    fake = b"\x30\x03\x02\x01\x01" * 300  # not a certificate: the flight still completes
    chain = len(fake).to_bytes(3, "big") + fake
    body = len(chain).to_bytes(3, "big") + chain
    certificate = b"\x0b" + len(body).to_bytes(3, "big") + body
    flight = server_hello_message(alpn_ext([b"h2"]), cipher=0xC02F) + certificate
    flight += b"\x0e\x00\x00\x00"
    for size in (1 << 14, 700, 64):
        out.append((records(flight, size=size, version=0x0303), True))
    return out


TLS_STREAMS = _tls_streams()


def _first_change(answers: list[object]) -> list[int]:
    """For each stream length n (index), the smallest length > n whose answer differs."""
    change = [len(answers)] * len(answers)
    for n in range(len(answers) - 2, -1, -1):
        change[n] = n + 1 if answers[n + 1] != answers[n] else change[n + 1]
    return change


@pytest.mark.parametrize("index", range(len(TLS_STREAMS)))
def test_tls_answers_need_more_below_the_bytes_wanted(index: int) -> None:
    stream, server = TLS_STREAMS[index]
    parse = parse_server_flight if server else parse_client_hello
    # answers[n]: whether the first n bytes need more (n = 0 .. len).
    answers: list[object] = [parse(stream[:n]) is NEED_MORE for n in range(len(stream) + 1)]
    change = _first_change(answers)
    skipped = 0
    for n in range(1, len(stream) + 1):
        if answers[n]:
            wanted = bytes_wanted(stream[:n], server=server)
            # (change[n] is len + 1 when the answer stays NEED_MORE to the stream's end)
            assert n < wanted and (wanted <= change[n] or change[n] > len(stream)), n
            skipped += wanted - n - 1
    if len(stream) > 600 and answers[len(stream)] is False:
        assert skipped, "a long hello or flight is waited for, not re-read on every byte"


def _http_streams() -> list[tuple[bytes, bytes]]:
    """(client stream, server stream) of the HTTP connections of the shared captures, and
    built ones with bodies by length, chunked, HEAD and pipelining."""
    out: list[tuple[bytes, bytes]] = []
    if PCAPS.is_dir():
        for path in sorted(PCAPS.glob("*.pcap*")):
            for conn in tcp_connections(path, limit=4096):
                up, down = conn.to_server.stream(), conn.to_client.stream()
                if up[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ") or down[:5] == b"HTTP/":
                    out.append((up, down))
    up = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    down = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n" + b"x" * 300
        + b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n"
        + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        + b"HTTP/1.1 200 OK\r\n\r\nto the end"
    )  # fmt: skip
    out.append((up, down))
    return out


HTTP_STREAMS = _http_streams()


def _resumed_requests(stream: bytes, cuts: list[int], every: bool = False) -> None:
    full = [parse_requests(stream[:n]) for n in range(len(stream) + 1)] if every else []
    change = _first_change([(f[0], f[2]) for f in full]) if every else []
    requests: list[HttpRequest] = []
    resume, whole = 0, 0
    for n in cuts:
        data = stream[:n]
        requests = requests[:whole]
        got = requests_from(data, resume, requests)
        resume, whole = got.resume, got.whole
        expected, _used, why = full[n] if every else parse_requests(data)
        assert requests == expected and got.why == why, n
        if every:
            assert n < got.wanted and (got.wanted <= change[n] or change[n] > len(stream)), n


def _resumed_responses(
    stream: bytes, methods: list[str], cuts: list[int], every: bool = False
) -> None:
    full = [parse_responses(stream[:n], methods) for n in range(len(stream) + 1)] if every else []
    change = _first_change([(f[0], f[2]) for f in full]) if every else []
    responses: list[HttpResponse] = []
    resume, whole = 0, 0
    for n in cuts:
        data = stream[:n]
        responses = responses[:whole]
        got = responses_from(data, methods, resume, responses)
        resume, whole = got.resume, got.whole
        expected, _used, why = full[n] if every else parse_responses(data, methods)
        assert responses == expected and got.why == why, n
        if every:
            assert n < got.wanted and (got.wanted <= change[n] or change[n] > len(stream)), n


@pytest.mark.parametrize("index", range(len(HTTP_STREAMS)))
def test_http_resumed_on_every_byte_equals_a_parse_from_the_start(index: int) -> None:
    up, down = HTTP_STREAMS[index]
    _resumed_requests(up, list(range(1, len(up) + 1)), every=True)
    methods = [r.method for r in parse_requests(up)[0]]
    _resumed_responses(down, methods, list(range(1, len(down) + 1)), every=True)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_http_resumed_at_random_cuts_equals_a_parse_from_the_start(data: st.DataObject) -> None:
    up, down = data.draw(st.sampled_from(HTTP_STREAMS))
    for stream, is_up in ((up, True), (down, False)):
        if not stream:
            continue
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream)), max_size=12))))
        cuts.append(len(stream))
        if is_up:
            _resumed_requests(stream, cuts)
        else:
            methods = [r.method for r in parse_requests(up)[0]]
            _resumed_responses(stream, methods, cuts)


def test_memoised_fingerprints_equal_the_functions_and_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ips.app import ja
    from ips.app.tls import ClientHello, ServerFlight

    monkeypatch.setattr(ja, "MEMO_SIZE", 3)  # the memo starts over often in this test
    hellos, servers = [], []
    for stream, server in TLS_STREAMS:
        got = parse_server_flight(stream) if server else parse_client_hello(stream)
        if isinstance(got, ClientHello):
            hellos.append(got)
        elif isinstance(got, ServerFlight):
            servers.append(got.server_hello)
    assert len(hellos) > 10 and len(servers) > 10
    for _ in range(2):  # the second pass answers from the memo where it still holds them
        for hello in hellos:
            assert ja.ja3_memo(hello) == ja.ja3(hello)
            assert ja.ja4_memo(hello) == ja.ja4(hello)
            assert ja.ja4_memo(hello, "q") == ja.ja4(hello, "q")
        for server_hello in servers:
            assert ja.ja3s_memo(server_hello) == ja.ja3s(server_hello)
    assert len(ja._ja3_memo) <= 3 and len(ja._ja4_memo) <= 3 and len(ja._ja3s_memo) <= 3
