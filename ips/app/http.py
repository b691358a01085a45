"""HTTP/1.x requests and responses from the start of a reassembled stream.

`parse_requests` and `parse_responses` read as many messages as the bytes hold (pipelined
requests, keep-alive responses), skipping bodies by Content-Length or chunked framing; they
stop at the first incomplete message (more bytes may complete it) and say why they stopped.

Bounds: a header block (start line included) over `MAX_HEADER_BYTES`, or more than
`MAX_HEADERS` header lines, is malformed. Obsolete line folding (a line starting with a space
or tab continues the previous header, RFC 9112 section 5.2) is joined with one space. Lines
may end in CR LF or a bare LF, as servers accept. A message with neither Content-Length nor
chunked encoding has no body when it is a request; a response of that kind runs to the end of
the connection, so parsing stops after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ips.core.packet import Malformed

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "REASONS",
    "HttpRequest",
    "HttpResponse",
    "Progress",
    "eve_http",
    "parse_requests",
    "parse_responses",
    "requests_from",
    "responses_from",
    "split_host",
]

MAX_HEADER_BYTES = 16384
MAX_HEADERS = 128
MAX_MESSAGES = 64  # per call: a bound on work for a stream of tiny pipelined requests

_reasons: list[str] = []


def _m(reason: str) -> Malformed:
    _reasons.append(reason)
    return Malformed(reason)


M_HEADERS_TOO_LONG = _m("http.headers-too-long")
M_TOO_MANY_HEADERS = _m("http.too-many-headers")
M_BAD_REQUEST_LINE = _m("http.bad-request-line")
M_BAD_STATUS_LINE = _m("http.bad-status-line")
M_BAD_HEADER = _m("http.bad-header-line")
M_BAD_CONTENT_LENGTH = _m("http.bad-content-length")
M_BAD_CHUNK = _m("http.bad-chunk")
M_TOO_MANY_MESSAGES = _m("http.too-many-messages")
REASONS: tuple[str, ...] = tuple(_reasons)

# A method is a token (RFC 9110 section 5.6.2): strip() with these leaves nothing.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Why a parse stopped, besides a Malformed: the bytes ran out mid-message (more may come), or
# the message runs to the end of the connection (nothing after it can be framed).
INCOMPLETE = "incomplete"
UNTIL_CLOSE = "until-close"
END = "end"  # every byte was used by whole messages


class HttpRequest(NamedTuple):
    method: str
    uri: str
    version: str  # "HTTP/1.1"; "" for an HTTP/0.9 request line
    host: str | None
    user_agent: str | None
    content_type: str | None
    content_length: int | None
    headers: tuple[tuple[str, str], ...]  # lower-cased names, in order


class HttpResponse(NamedTuple):
    version: str
    status: int
    reason: str
    content_type: str | None
    content_length: int | None
    headers: tuple[tuple[str, str], ...]


def _header_block(data: bytes, pos: int) -> tuple[list[bytes], int] | Malformed | None:
    """The lines of the header block at pos (start line first) and the offset after it."""
    limit = pos + MAX_HEADER_BYTES
    crlf = data.find(b"\r\n\r\n", pos, limit + 4)
    lf = data.find(b"\n\n", pos, limit + 2)
    ends = [e for e in ((crlf, 4), (lf, 2)) if e[0] >= 0]
    if not ends:
        if len(data) - pos >= MAX_HEADER_BYTES:
            return M_HEADERS_TOO_LONG
        return None
    at, width = min(ends)
    block = data[pos:at]
    lines = block.split(b"\n")
    if len(lines) > MAX_HEADERS + 1:
        return M_TOO_MANY_HEADERS
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines], at + width


def _headers(lines: list[bytes]) -> list[tuple[str, str]] | Malformed:
    out: list[tuple[str, str]] = []
    for raw in lines:
        if raw[:1] in (b" ", b"\t"):
            if not out:
                return M_BAD_HEADER
            name, value = out[-1]
            out[-1] = (name, value + " " + raw.strip().decode("latin-1"))
            continue
        raw_name, colon, raw_value = raw.partition(b":")
        if not colon or not raw_name or raw_name != raw_name.strip():
            return M_BAD_HEADER
        out.append((raw_name.decode("latin-1").lower(), raw_value.strip().decode("latin-1")))
    return out


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _framing(
    lines: list[bytes],
) -> tuple[list[tuple[str, str]], int | None] | Malformed:
    """A message's header fields (after its start line) and its Content-Length (None: none
    given); requests and responses read them alike."""
    headers = _headers(lines[1:])
    if isinstance(headers, Malformed):
        return headers
    length = _length(headers)
    if isinstance(length, Malformed):
        return length
    return headers, length


def _length(headers: list[tuple[str, str]]) -> int | Malformed | None:
    text = _get(headers, "content-length")
    if text is None:
        return None
    # Several identical values in one header ("5, 5") are allowed (RFC 9110 section 8.6).
    values = {v.strip() for v in text.split(",")}
    if len(values) != 1:
        return M_BAD_CONTENT_LENGTH
    value = values.pop()
    if not _digits(value) or len(value) > 15:
        return M_BAD_CONTENT_LENGTH
    return int(value)


def _chunked(headers: list[tuple[str, str]]) -> bool:
    te = _get(headers, "transfer-encoding")
    return te is not None and te.lower().rstrip().endswith("chunked")


def _skip_chunks(data: bytes, pos: int) -> int | Malformed | None:
    """The offset after a chunked body at pos (trailers included); None: incomplete."""
    n = len(data)
    while True:
        eol = data.find(b"\n", pos, pos + 1024)
        if eol < 0:
            return None if n - pos < 1024 else M_BAD_CHUNK
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return M_BAD_CHUNK
        if size < 0 or len(size_text) > 15:
            return M_BAD_CHUNK
        pos = eol + 1
        if size == 0:
            break
        pos += size
        if pos + 1 > n:
            return None
        if data[pos : pos + 2] == b"\r\n":
            pos += 2
        elif data[pos : pos + 1] == b"\n":
            pos += 1
        elif pos + 2 > n:
            return None
        else:
            return M_BAD_CHUNK
    # Trailer fields, then an empty line.
    while True:
        eol = data.find(b"\n", pos, pos + MAX_HEADER_BYTES)
        if eol < 0:
            return None if n - pos < MAX_HEADER_BYTES else M_BAD_CHUNK
        line = data[pos:eol]
        pos = eol + 1
        if line in (b"", b"\r"):
            return pos


class Progress(NamedTuple):
    """How far `requests_from` / `responses_from` got.

    used    bytes used (as parse_requests returns it)
    why     END, INCOMPLETE, UNTIL_CLOSE or a Malformed
    resume  where the first message not wholly read starts: a later call with more bytes
            may start there, with the first `whole` messages
    whole   how many of the messages are wholly read (the last may be waiting for its body)
    wanted  the stream length below which more bytes cannot change the answer (a body of
            known length still arriving); len(data) + 1 when any byte may"""

    used: int
    why: str | Malformed
    resume: int
    whole: int
    wanted: int


def parse_requests(data: bytes) -> tuple[list[HttpRequest], int, str | Malformed]:
    """The requests at the start of a client's stream: (requests, bytes used, why it stopped:
    END, INCOMPLETE or a Malformed)."""
    out: list[HttpRequest] = []
    got = requests_from(data, 0, out)
    return out, got.used, got.why


def requests_from(data: bytes, start: int, out: list[HttpRequest]) -> Progress:
    """parse_requests from offset `start`, appending to `out` (the requests before `start`,
    from an earlier call's `resume` and `whole`): the stream so far need not be read again
    from its start as segments arrive."""
    pos = start
    n = len(data)
    while pos < n:
        if len(out) >= MAX_MESSAGES:
            return Progress(pos, M_TOO_MANY_MESSAGES, pos, len(out), n + 1)
        # Tolerate empty lines between requests (RFC 9112 section 2.2).
        while data[pos : pos + 2] == b"\r\n" or data[pos : pos + 1] == b"\n":
            pos += 2 if data[pos] == 0x0D else 1
        if pos >= n:
            break
        got = _header_block(data, pos)
        if got is None:
            return Progress(pos, INCOMPLETE, pos, len(out), n + 1)
        if isinstance(got, Malformed):
            return Progress(pos, got, pos, len(out), n + 1)
        lines, body = got
        parts = lines[0].split(b" ")
        if len(parts) == 3:
            method, uri, version = parts
            if not version.startswith(b"HTTP/"):
                return Progress(pos, M_BAD_REQUEST_LINE, pos, len(out), n + 1)
        elif len(parts) == 2:
            (method, uri), version = parts, b""
        else:
            return Progress(pos, M_BAD_REQUEST_LINE, pos, len(out), n + 1)
        if not method or not uri or method.strip(_TCHAR):
            return Progress(pos, M_BAD_REQUEST_LINE, pos, len(out), n + 1)
        framed = _framing(lines)
        if isinstance(framed, Malformed):
            return Progress(pos, framed, pos, len(out), n + 1)
        headers, length = framed
        out.append(HttpRequest(
            method.decode("latin-1"), uri.decode("latin-1"), version.decode("latin-1"),
            _get(headers, "host"), _get(headers, "user-agent"), _get(headers, "content-type"),
            length, tuple(headers),
        ))  # fmt: skip
        if _chunked(headers):
            end = _skip_chunks(data, body)
            if end is None:
                return Progress(n, INCOMPLETE, pos, len(out) - 1, n + 1)
            if isinstance(end, Malformed):
                return Progress(pos, end, pos, len(out) - 1, n + 1)
            pos = end
        else:
            end = body + (length or 0)
            if end > n:
                return Progress(n, INCOMPLETE, pos, len(out) - 1, end)
            pos = end
    return Progress(pos, END, pos, len(out), n + 1)


def parse_responses(
    data: bytes, request_methods: Sequence[str] = ()
) -> tuple[list[HttpResponse], int, str | Malformed]:
    """The responses at the start of a server's stream: (responses, bytes used, why it
    stopped: END, INCOMPLETE, UNTIL_CLOSE or a Malformed). `request_methods` are the methods
    of the requests answered, in order, when known: a response to HEAD has no body."""
    out: list[HttpResponse] = []
    got = responses_from(data, request_methods, 0, out)
    return out, got.used, got.why


def responses_from(
    data: bytes, request_methods: Sequence[str], start: int, out: list[HttpResponse]
) -> Progress:
    """parse_responses from offset `start`, appending to `out` (see requests_from). The
    responses before `start` were framed with the methods known then: a caller resumes only
    when those are still the same."""
    pos = start
    n = len(data)
    while pos < n:
        if len(out) >= MAX_MESSAGES:
            return Progress(pos, M_TOO_MANY_MESSAGES, pos, len(out), n + 1)
        got = _header_block(data, pos)
        if got is None:
            return Progress(pos, INCOMPLETE, pos, len(out), n + 1)
        if isinstance(got, Malformed):
            return Progress(pos, got, pos, len(out), n + 1)
        lines, body = got
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/") or len(code) != 3 or not code.isdigit():
            return Progress(pos, M_BAD_STATUS_LINE, pos, len(out), n + 1)
        framed = _framing(lines)
        if isinstance(framed, Malformed):
            return Progress(pos, framed, pos, len(out), n + 1)
        headers, length = framed
        status = int(code)
        out.append(HttpResponse(
            version.decode("latin-1"), status, reason.decode("latin-1").strip(),
            _get(headers, "content-type"), length, tuple(headers),
        ))  # fmt: skip
        answered = request_methods[len(out) - 1] if len(out) <= len(request_methods) else ""
        if status < 200 or status in (204, 304) or answered == "HEAD":
            pos = body
        elif _chunked(headers):
            end = _skip_chunks(data, body)
            if end is None:
                return Progress(n, INCOMPLETE, pos, len(out) - 1, n + 1)
            if isinstance(end, Malformed):
                return Progress(pos, end, pos, len(out) - 1, n + 1)
            pos = end
        elif length is None:
            return Progress(n, UNTIL_CLOSE, pos, len(out) - 1, n + 1)
        else:
            end = body + length
            if end > n:
                return Progress(n, INCOMPLETE, pos, len(out) - 1, end)
            pos = end
    return Progress(pos, END, pos, len(out), n + 1)


def eve_http(request: HttpRequest | None, response: HttpResponse | None) -> dict[str, object]:
    """The EVE `http` object (Suricata's names) of one transaction."""
    out: dict[str, object] = {}
    if request is not None:
        if request.host is not None:
            host, port = split_host(request.host)
            out["hostname"] = host
            if port is not None:
                out["http_port"] = port
        out["url"] = request.uri
        if request.user_agent is not None:
            out["http_user_agent"] = request.user_agent
        out["http_method"] = request.method
        if request.version:
            out["protocol"] = request.version
    if response is not None:
        if response.content_type is not None:
            out["http_content_type"] = response.content_type
        out["status"] = response.status
        if response.content_length is not None:
            out["length"] = response.content_length
        if "protocol" not in out:
            out["protocol"] = response.version
    return out


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also says yes to "²" and other digits int() refuses
    (found by hypothesis: a Content-Length or Host port of them raised)."""
    return text.isascii() and text.isdigit()


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header's name and port ("[2001:db8::1]:8080" -> ("2001:db8::1", 8080))."""
    if value.startswith("["):
        close = value.find("]")
        if close > 0:
            rest = value[close + 1 :]
            port = int(rest[1:]) if rest.startswith(":") and _digits(rest[1:]) else None
            return value[1:close], port
        return value, None
    host, colon, port_text = value.rpartition(":")
    if colon and host and _digits(port_text) and ":" not in host:
        return host, int(port_text) & 0xFFFF
    return value, None
