"""The compiled stream parsers (ips/fast/_streamparse.pyx) against the Python parsers they
copy, their definition: ips/app/tls.py `parse_client_hello` and ips/app/http.py
`requests_from` / `responses_from` must give the same results (the same classes, equal
fields, the same Malformed reasons, NEED_MORE itself) on every TLS and HTTP stream of the
shared captures, on each of their prefixes, on hypothesis-made messages, and on mutated
(truncated, bit-flipped, cut, lengthened) copies of all of them. HTTP is also read as the
inspector reads it, resumed where the last call stopped as the stream grows.

Without the build (or with IPSCTL_PURE=1) there is nothing to compare: skipped, except under
CI=true, where a missing build is a failure (unless IPSCTL_PURE=1 says that is meant)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import pytest
from app_streams import tcp_connections
from captures import PCAPS, pcap_names
from fresh_python import hiding, run_fresh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_app_tls import (
    alpn_ext,
    chrome_like_extensions,
    client_hello_message,
    ext,
    key_share_ext,
    records,
    sni_ext,
    u16s,
)

from ips.app import http, tls
from ips.engine import Engine
from ips.fast import FORCED_PURE
from ips.policy.resolve import load_policy_text

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # a missing build is reported by the tests below
    from ips.fast.parsers import stream_parsers

    COMPILED: Any = stream_parsers()

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMIT = 4096  # the reassembler's default bound: what the inspector hands the parsers


@pytest.fixture(scope="module")
def compiled() -> Any:
    if COMPILED is not None:
        return COMPILED
    if FORCED_PURE:
        pytest.skip("IPSCTL_PURE=1: the Python parsers alone")
    if os.environ.get("CI") == "true":
        pytest.fail("the compiled stream parsers (ips/fast/_streamparse) are not built")
    pytest.skip("the compiled stream parsers are not built")


# ---- what is compared -----------------------------------------------------------------------


def hello_view(result: object) -> object:
    """A parse result as data: a ClientHello's every field (with its type), NEED_MORE by
    identity, a Malformed by its reason."""
    if type(result) is tls.ClientHello:
        return (
            "hello",
            [(name, repr(getattr(result, name))) for name in tls.ClientHello.__slots__],
        )
    if result is tls.NEED_MORE:
        return "NEED_MORE"
    assert type(result) is tls.Malformed, result
    return ("malformed", result.reason)


def same_hello(compiled: Any, data: bytes) -> None:
    assert hello_view(compiled.parse_client_hello(data)) == hello_view(
        tls.parse_client_hello(data)
    ), data


def messages_view(progress: object, out: list[Any]) -> str:
    """repr tells the classes apart (HttpRequest, Progress, Malformed) and the fields' types
    (1 and True, "" and b"", None)."""
    assert type(progress) is http.Progress
    return repr((progress, out))


def same_requests(compiled: Any, data: bytes, start: int = 0, before: Sequence[Any] = ()) -> Any:
    out_python, out_compiled = list(before), list(before)
    expected = http.requests_from(data, start, out_python)
    got = compiled.requests_from(data, start, out_compiled)
    assert messages_view(got, out_compiled) == messages_view(expected, out_python), data
    return expected, out_python


def same_responses(
    compiled: Any, data: bytes, methods: Sequence[str], start: int = 0, before: Sequence[Any] = ()
) -> Any:
    out_python, out_compiled = list(before), list(before)
    expected = http.responses_from(data, methods, start, out_python)
    got = compiled.responses_from(data, methods, start, out_compiled)
    assert messages_view(got, out_compiled) == messages_view(expected, out_python), data
    return expected, out_python


METHOD_SETS: tuple[tuple[str, ...], ...] = ((), ("GET",), ("HEAD",), ("HEAD", "GET"), ("GET",) * 3)


def same_everything(compiled: Any, data: bytes) -> None:
    """Every parser on the bytes, whatever they look like."""
    same_hello(compiled, data)
    same_requests(compiled, data)
    for methods in METHOD_SETS:
        same_responses(compiled, data, methods)


def resumed_like_the_inspector(compiled: Any, stream: bytes, cuts: Sequence[int]) -> None:
    """The stream growing segment by segment: each call resumes where the last stopped, with
    the messages wholly read kept (ips/app/inspect.py `_http_side`)."""
    for reader in ("requests", "responses"):
        resume, kept = 0, []
        for cut in cuts:
            data = stream[:cut]
            if reader == "requests":
                progress, out = same_requests(compiled, data, resume, kept)
            else:
                progress, out = same_responses(compiled, data, ("GET",) * 4, resume, kept)
            resume, kept = progress.resume, out[: progress.whole]


# ---- the shared captures --------------------------------------------------------------------


def _capture_streams() -> list[bytes]:
    streams: list[bytes] = []
    for name in pcap_names():
        for conn in tcp_connections(PCAPS / name, LIMIT):
            for direction in (conn.to_server, conn.to_client):
                data = direction.stream()
                if data:
                    streams.append(data)
    return streams


STREAMS = _capture_streams()
TLS_STREAMS = [s for s in STREAMS if s[:1] == b"\x16"]
HTTP_STREAMS = [s for s in STREAMS if s[:1].isalpha()]


def _cuts(length: int) -> list[int]:
    """Every prefix length of the first 300 bytes, then every 97th, and the whole."""
    return sorted({*range(min(length, 300) + 1), *range(300, length, 97), length})


def test_the_captures_hold_tls_and_http_streams() -> None:
    """Guard against a comparison over nothing (the captures moved, the reader broke)."""
    if not PCAPS.is_dir():
        pytest.skip("the shared captures are missing")
    assert len(TLS_STREAMS) >= 50 and len(HTTP_STREAMS) >= 50


def test_every_capture_stream_and_its_prefixes(compiled: Any) -> None:
    for stream in STREAMS:
        for cut in _cuts(len(stream)):
            same_everything(compiled, stream[:cut])


def test_capture_streams_resumed_as_they_grow(compiled: Any) -> None:
    for stream in HTTP_STREAMS:
        resumed_like_the_inspector(compiled, stream, _cuts(len(stream)))
        resumed_like_the_inspector(compiled, stream, range(1, len(stream) + 1, 53))


# ---- built messages and boundaries ----------------------------------------------------------


def _built_hellos() -> list[bytes]:
    plain = client_hello_message(chrome_like_extensions(pq=False))
    return [
        records(client_hello_message(chrome_like_extensions())),
        records(plain, 300),  # a hello over several records
        records(plain, 1),  # a record per byte: over MAX_RECORDS
        records(plain, 7) + b"\x17\x03\x03\x00\x01x",  # records, then application data
        records(client_hello_message(None)),  # no extensions
        records(client_hello_message(b"")),  # an empty extension block
        records(client_hello_message(sni_ext("") + sni_ext("second.example"))),
        records(client_hello_message(ext(0, b"") + sni_ext("after.empty"))),
        records(client_hello_message(sni_ext("caf\xe9.example"))),
        records(client_hello_message(alpn_ext([b"h2", b"", b"http/1.1"]) + alpn_ext([b"x"]))),
        records(client_hello_message(key_share_ext([(29, 32), (0x11EC, 1216)]))),
        records(client_hello_message(ext(43, b"\x04\x03\x04\x03\x03") + ext(11, b"\x02\x00\x01"))),
        records(client_hello_message(ext(10, u16s(list(range(600)))))),  # over MAX_LIST_ITEMS
        records(client_hello_message(ext(0xFFFF, b"") * 129)),  # over MAX_EXTENSIONS
        records(client_hello_message(None, list(range(700)))),  # ciphers over MAX_LIST_ITEMS
        records(client_hello_message(alpn_ext([b""] * 520))),  # names over MAX_LIST_ITEMS
        records(client_hello_message(key_share_ext([(1, 0)] * 520))),  # shares over it
    ]


HELLOS = _built_hellos()

HTTP_BUILT = [
    b"POST /upload HTTP/1.1\r\nHost: example.com:8080\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nUser-Agent: curl/8.0\r\n  (folded)\r\n\r\nhello"
    b"GET /a?b=c HTTP/1.1\nHost: example.com\n\n"
    b"PUT /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    b"GET /partial HTTP/1.1\r\nHost: exa",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/html\r\n\r\n0123456789"
    b"HTTP/1.1 304 Not Modified\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n"
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody to the end",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 127 + b"\r\n",  # MAX_HEADERS lines, then one over
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 128 + b"\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 129 + b"\r\n",
    b"GET /" + b"a" * 20000,
    b"GET / HTTP/1.1\r\n\r\n" * 100,  # over MAX_MESSAGES
    b"HTTP/1.1 204 No Content\r\n\r\n" * 70,
    b"GET / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",  # a digit int() refuses
    b"GET / HTTP/1.1\r\nContent-Length: 0000000000000001\r\n\r\n",  # 16 digits
    b"GET / HTTP/1.1\r\nCONTENT-LENGTH: \xa07\x85\r\n\r\n1234567",
    b"GET / HTTP/1.1\r\nX-\xc9T\xc9: \xe9t\xe9\r\n\r\n",  # a name that is not ASCII
    b"GET / HTTP/1.1\r\nNAME-LONGER-THAN-SIXTY-FOUR-BYTES-" + b"A" * 40 + b": v\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1 x\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTX/1.1\r\n\r\n",
    b"\r\n\n\r\nGET / HTTP/1.1\r\n\r\n\r\n",
    b"GET / HTTP/1.1\r\n no colon first\r\n\r\n",
    b"GET / HTTP/1.1\r\nName : v\r\n\r\n",
    b"GET / HTTP/1.1\r\n: v\r\n\r\n",
    b"GET / HTTP/1.1\n\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\r\r\n\r\n",
    b"HTTP/1.1 200\r\n\r\n",
    b"HTTP/1.1 200 \x85Fine\xa0 \r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked \r\n\r\n0x1\r\nz\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n" + b"z" * 16 + b"\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


def _boundary_blocks() -> list[bytes]:
    """Header blocks whose end lies around MAX_HEADER_BYTES from their start."""
    out = []
    for filler in range(http.MAX_HEADER_BYTES - 30, http.MAX_HEADER_BYTES + 4):
        for end in (b"\r\n\r\n", b"\n\n"):
            head = b"GET / HTTP/1.1\r\nX: "
            out.append(head + b"v" * (filler - len(head)) + end)
    return out


def test_built_hellos_and_their_prefixes(compiled: Any) -> None:
    for data in HELLOS:
        for cut in _cuts(len(data)):
            same_hello(compiled, data[:cut])


def test_built_http_and_boundaries(compiled: Any) -> None:
    for data in HTTP_BUILT:
        for cut in _cuts(len(data)):
            same_everything(compiled, data[:cut])
        resumed_like_the_inspector(compiled, data, range(1, len(data) + 1, 7))
    for data in _boundary_blocks():
        same_everything(compiled, data)


def test_other_buffers_are_read_as_bytes(compiled: Any) -> None:
    for data in (HELLOS[0], HTTP_BUILT[0], HTTP_BUILT[1]):
        for kind in (bytearray, memoryview):
            assert hello_view(compiled.parse_client_hello(kind(data))) == hello_view(
                tls.parse_client_hello(data)
            )
            out: list[Any] = []
            got = compiled.requests_from(kind(data), 0, out)
            assert messages_view(got, out) == messages_view(*_python_requests(data))


def test_any_start_offset(compiled: Any) -> None:
    """The inspector resumes at offsets inside the data; any other start gives the same too
    (a negative one is read as Python slices read it, beyond the end reads nothing)."""
    data = HTTP_BUILT[0]
    for start in (-len(data) - 5, -3, -1, 0, 1, 5, len(data) - 1, len(data), len(data) + 9):
        same_requests(compiled, data, start)
        same_responses(compiled, HTTP_BUILT[1], ("GET",), start)


def _python_requests(data: bytes) -> tuple[Any, list[Any]]:
    out: list[Any] = []
    return http.requests_from(data, 0, out), out


# ---- hypothesis -----------------------------------------------------------------------------

SEEDS = TLS_STREAMS[:40] + HELLOS + HTTP_STREAMS[:40] + HTTP_BUILT


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.integers(0, 5))
        where = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == 0 and data:  # flip bits of a byte
            data[where] ^= draw(st.integers(1, 255))
        elif kind == 1:  # cut
            del data[where:]
        elif kind == 2:  # insert
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif kind == 3 and where + 2 <= len(data):  # a lying 16-bit length
            data[where : where + 2] = draw(st.sampled_from([b"\x00\x00", b"\xff\xff", b"\x00\x01"]))
        elif kind == 4 and data:  # delete a run
            del data[where : where + draw(st.integers(1, 16))]
        elif kind == 5:  # a separator HTTP cares about
            data[where:where] = draw(st.sampled_from([b" ", b"\r\n", b"\n", b":", b"\t", b"\r"]))
    return bytes(data)


_TOKENS = st.sampled_from([
    b"GET", b"POST", b"HEAD", b"get", b"M-SEARCH", b"G\x00T", b"", b"\xc0", b"PUT",
    b"/", b"/a?b=c", b"*", b"http://h/x", b"HTTP/1.1", b"HTTP/1.0", b"HTTX/1", b"HTTP/",
    b"200", b"204", b"304", b"101", b"20", b"2000", b"OK", b" Not Found ", b"\x85x\xa0",
])  # fmt: skip
_NAMES = st.sampled_from([
    b"Host", b"HOST", b"User-Agent", b"Content-Type", b"Content-Length", b"content-length",
    b"Transfer-Encoding", b"X-\xc9", b"X", b" Host", b"Host ", b"", b"A" * 70,
])  # fmt: skip
_VALUES = st.sampled_from([
    b"example.com", b"0", b"5", b"5, 5", b"5, 6", b" 12 ", b"05", b"+5", b"-1", b"\xb2",
    b"1" * 16, b"chunked", b"gzip, chunked", b"Chunked\x85", b"chunked, gzip", b"", b"\xa0",
    b"text/html; charset=\xe9",
])  # fmt: skip
_EOL = st.sampled_from([b"\r\n", b"\n", b"\r\r\n"])
_BODY = st.sampled_from([
    b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n", b"3;e\r\nabc\n0\nX: y\n\n",
    b"zz\r\n", b"0x2\r\nab\r\n0\r\n\r\n", b"1_0\r\n" + b"q" * 16 + b"\r\n0\r\n\r\n",
])  # fmt: skip


@st.composite
def http_stream(draw: st.DrawFn) -> bytes:
    """Messages made of the pieces parsers stumble on: odd separators, names, lengths,
    folded lines, chunk sizes, line ends, cut anywhere."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 4))):
        sep = draw(st.sampled_from([b" ", b"  ", b"\t"]))
        start = sep.join(draw(st.lists(_TOKENS, min_size=1, max_size=4)))
        eol = draw(_EOL)
        out += draw(st.sampled_from([b"", b"\r\n", b"\n"])) + start + eol
        for _ in range(draw(st.integers(0, 5))):
            if draw(st.integers(0, 6)) == 0:
                out += draw(st.sampled_from([b" ", b"\t"])) + draw(_VALUES) + eol  # folded
            else:
                colon = draw(st.sampled_from([b":", b": ", b" : ", b""]))
                out += draw(_NAMES) + colon + draw(_VALUES) + eol
        out += eol + draw(_BODY)
    data = bytes(out)
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@SETTINGS
@given(st.binary(max_size=2000))
def test_random_bytes(compiled: Any, data: bytes) -> None:
    same_everything(compiled, data)
    same_hello(compiled, b"\x16\x03\x01" + data)
    same_hello(compiled, b"\x16\x03\x01\x02\x00\x01" + data)


@SETTINGS
@given(mutated())
def test_mutated_streams(compiled: Any, data: bytes) -> None:
    same_everything(compiled, data)


@SETTINGS
@given(http_stream(), st.data())
def test_generated_http(compiled: Any, data: bytes, draw: st.DataObject) -> None:
    same_everything(compiled, data)
    cuts = [*sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=6))), len(data)]
    resumed_like_the_inspector(compiled, data, cuts)


@SETTINGS
@given(st.data())
def test_generated_hellos(compiled: Any, draw: st.DataObject) -> None:
    pieces = [
        sni_ext(draw.draw(st.text(max_size=20))),
        alpn_ext(draw.draw(st.lists(st.binary(max_size=9), max_size=4))),
        key_share_ext(
            draw.draw(st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 40)), max_size=3))
        ),
        ext(43, bytes([2 * (k := draw.draw(st.integers(0, 5)))]) + b"\x03\x04" * k),
        ext(11, b"\x01\x00"),
        ext(draw.draw(st.integers(0, 65535)), draw.draw(st.binary(max_size=12))),
        ext(10, u16s(draw.draw(st.lists(st.integers(0, 65535), max_size=8)))),
        ext(13, draw.draw(st.binary(max_size=7))),
    ]
    chosen = draw.draw(st.lists(st.sampled_from(pieces), max_size=10))
    message = client_hello_message(b"".join(chosen))
    data = records(message, draw.draw(st.integers(1, 1 << 14)))
    same_hello(compiled, data)
    same_hello(compiled, data[: draw.draw(st.integers(0, len(data)))])


# ---- the loader and the engine's wiring -----------------------------------------------------

_LOADER = """
import sys, warnings
{hide}
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from ips.fast.parsers import stream_parsers
    from ips.engine import Engine
    from ips.policy.resolve import load_policy_text
    engines = [Engine(load_policy_text("set default accept\\n", "t.rules")) for _ in range(2)]
from ips.app import tls
print(stream_parsers() is None, engines[0].app._parse_client_hello is tls.parse_client_hello,
      len([w for w in caught if "compiled stream parsers" in str(w.message)]))
"""


def test_ipsctl_pure_keeps_the_python_parsers_without_a_warning() -> None:
    assert run_fresh(_LOADER.format(hide=""), IPSCTL_PURE="1") == "True True 0"


def test_a_missing_build_keeps_the_python_parsers_and_says_so_once() -> None:
    assert (
        run_fresh(_LOADER.format(hide=hiding("ips.fast._streamparse")), IPSCTL_PURE="")
        == "True True 1"
    )


def test_the_engine_hands_them_to_its_inspector_with_its_compiled_path(compiled: Any) -> None:
    policy = load_policy_text("set default accept\n", "t.rules")
    fast, reference = Engine(policy, fast=True), Engine(policy, fast=False)
    assert fast.app._parse_client_hello is compiled.parse_client_hello
    assert fast.app._requests_from is compiled.requests_from
    assert fast.app._responses_from is compiled.responses_from
    assert reference.app._parse_client_hello is tls.parse_client_hello
    assert reference.app._requests_from is http.requests_from
    assert reference.app._responses_from is http.responses_from
