# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled stream parsers: a TLS ClientHello and HTTP/1.x requests and responses.

The same functions as ips/app/tls.py `parse_client_hello` and ips/app/http.py
`requests_from` / `responses_from`, read in C: they return the very objects the Python
parsers return (ClientHello, NEED_MORE, HttpRequest, HttpResponse, Progress, and the
modules' own Malformed constants), with equal fields, for every input. The Python parsers
are the reference (tests/pure/test_stream_parsers_compiled.py holds these to them) and the
fallback when this module is not built or IPSCTL_PURE=1 (ips/fast/parsers.py loads it).

Where the Python semantics are subtle and the case is rare (a header name or a reason that
is not ASCII, a Content-Length that is not plain digits, chunked bodies), the code below
runs the same Python expressions as the reference rather than a C imitation of them.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.string cimport memchr, memcmp

from ips.app import http as _http
from ips.app import tls as _tls

cdef extern from "Python.h":
    object PyUnicode_DecodeLatin1(const char* s, Py_ssize_t size, const char* errors)
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)

# ---- TLS ------------------------------------------------------------------------------------

cdef object ClientHello = _tls.ClientHello
cdef object NEED_MORE = _tls.NEED_MORE
cdef object M_NOT_HANDSHAKE = _tls.M_NOT_HANDSHAKE
cdef object M_BAD_RECORD_VERSION = _tls.M_BAD_RECORD_VERSION
cdef object M_RECORD_TOO_LONG = _tls.M_RECORD_TOO_LONG
cdef object M_EMPTY_RECORD = _tls.M_EMPTY_RECORD
cdef object M_TOO_MANY_RECORDS = _tls.M_TOO_MANY_RECORDS
cdef object M_UNEXPECTED_MESSAGE = _tls.M_UNEXPECTED_MESSAGE
cdef object M_HANDSHAKE_TOO_LONG = _tls.M_HANDSHAKE_TOO_LONG
cdef object M_INTERRUPTED = _tls.M_INTERRUPTED
cdef object M_HELLO_TRUNCATED = _tls.M_HELLO_TRUNCATED
cdef object M_BAD_SESSION_ID = _tls.M_BAD_SESSION_ID
cdef object M_BAD_CIPHERS = _tls.M_BAD_CIPHERS
cdef object M_BAD_COMPRESSION = _tls.M_BAD_COMPRESSION
cdef object M_BAD_EXTENSIONS = _tls.M_BAD_EXTENSIONS
cdef object M_BAD_EXTENSION = _tls.M_BAD_EXTENSION
cdef object M_TOO_MANY_EXTENSIONS = _tls.M_TOO_MANY_EXTENSIONS

# The reference's bounds, read from it so the two cannot drift apart.
cdef Py_ssize_t MAX_RECORD = _tls.MAX_RECORD
cdef Py_ssize_t MAX_HANDSHAKE = _tls.MAX_HANDSHAKE
cdef Py_ssize_t MAX_RECORDS = _tls.MAX_RECORDS
cdef Py_ssize_t MAX_EXTENSIONS = _tls.MAX_EXTENSIONS
cdef Py_ssize_t MAX_LIST_ITEMS = _tls.MAX_LIST_ITEMS
cdef int CONTENT_HANDSHAKE = _tls.CONTENT_HANDSHAKE
cdef int HS_CLIENT_HELLO = _tls.HS_CLIENT_HELLO

cdef object EMPTY_TUPLE = ()


cdef inline unsigned int _u16(const unsigned char* b, Py_ssize_t p) noexcept:
    return (b[p] << 8) | b[p + 1]


cdef tuple _u16_tuple(const unsigned char* b, Py_ssize_t p, Py_ssize_t count):
    """struct.unpack_from(f"!{count}H", b, p)."""
    cdef tuple out = PyTuple_New(count)
    cdef Py_ssize_t i
    cdef object value
    for i in range(count):
        value = _u16(b, p + 2 * i)
        Py_INCREF(value)
        PyTuple_SET_ITEM(out, i, value)
    return out


def parse_client_hello(buf):
    """ips/app/tls.py parse_client_hello, compiled: the same results for every input."""
    if type(buf) is not bytes:
        buf = bytes(buf)
    cdef bytes data = buf
    cdef const unsigned char* b = <const unsigned char*> PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t length, p, count, rlen, start
    cdef unsigned int first_version, version
    cdef int ctype
    cdef bint stopped = False
    cdef list parts
    cdef bytes stream
    # _handshake_bytes: the handshake bytes of the records at the start of buf.
    if n == 0:
        return NEED_MORE
    if b[0] != CONTENT_HANDSHAKE:
        return M_NOT_HANDSHAKE
    if n >= 2 and b[1] != 3:
        return M_BAD_RECORD_VERSION
    if n < 5:
        return NEED_MORE
    first_version = _u16(b, 1)
    length = _u16(b, 3)
    if first_version > 0x0304:
        return M_BAD_RECORD_VERSION
    if length > MAX_RECORD:
        return M_RECORD_TOO_LONG
    if length == 0:
        return M_EMPTY_RECORD
    if 5 + length >= n:
        # The common case: one record (or the start of one), read in place.
        return _client_hello_in(b + 5, n - 5 if 5 + length > n else length, False, first_version)
    parts = [data[5 : 5 + length]]
    p = 5 + length
    while p + 5 <= n:
        if PyList_GET_SIZE(parts) >= MAX_RECORDS:
            return M_TOO_MANY_RECORDS
        ctype = b[p]
        version = _u16(b, p + 1)
        rlen = _u16(b, p + 3)
        if ctype != CONTENT_HANDSHAKE:
            stopped = True
            break
        if version >> 8 != 3 or version > 0x0304:
            return M_BAD_RECORD_VERSION
        if rlen > MAX_RECORD:
            return M_RECORD_TOO_LONG
        if rlen == 0:
            return M_EMPTY_RECORD
        if p + 5 + rlen > n:
            parts.append(data[p + 5 : n])
            break
        parts.append(data[p + 5 : p + 5 + rlen])
        p += 5 + rlen
    else:
        if p < n and b[p] != CONTENT_HANDSHAKE:
            stopped = True
    stream = b"".join(parts)
    return _client_hello_in(
        <const unsigned char*> PyBytes_AS_STRING(stream), PyBytes_GET_SIZE(stream), stopped,
        first_version,
    )


cdef object _client_hello_in(
    const unsigned char* s, Py_ssize_t n, bint stopped, unsigned int record_version
):
    """_first_message(stream, 0, stopped, HS_CLIENT_HELLO), then the hello's body."""
    cdef Py_ssize_t length, end
    if n < 4:
        if n > 0 and s[0] != HS_CLIENT_HELLO:
            return M_UNEXPECTED_MESSAGE
        return M_INTERRUPTED if stopped else NEED_MORE
    if s[0] != HS_CLIENT_HELLO:
        return M_UNEXPECTED_MESSAGE
    length = (s[1] << 16) | (s[2] << 8) | s[3]
    if length > MAX_HANDSHAKE:
        return M_HANDSHAKE_TOO_LONG
    end = 4 + length
    if end > n:
        return M_INTERRUPTED if stopped else NEED_MORE
    hello = _client_hello_body(s, 4, end)
    if type(hello) is ClientHello:
        hello.record_version = record_version
    return hello


cdef object _client_hello_body(const unsigned char* b, Py_ssize_t p, Py_ssize_t end):
    cdef Py_ssize_t sid_len, clen, comp_len, elen, q, count, types_n
    cdef unsigned int etype
    if end - p < 35:
        return M_HELLO_TRUNCATED
    cdef Py_ssize_t total = end - p + 4
    cdef unsigned int version = _u16(b, p)
    random = PyBytes_FromStringAndSize(<const char*> b + p + 2, 32)
    sid_len = b[p + 34]
    p += 35
    if sid_len > 32:
        return M_BAD_SESSION_ID
    if p + sid_len > end:
        return M_HELLO_TRUNCATED
    session_id = PyBytes_FromStringAndSize(<const char*> b + p, sid_len)
    p += sid_len
    if p + 2 > end:
        return M_HELLO_TRUNCATED
    clen = _u16(b, p)
    p += 2
    if clen & 1 or clen == 0:
        return M_BAD_CIPHERS
    if p + clen > end:
        return M_HELLO_TRUNCATED
    count = min(clen >> 1, MAX_LIST_ITEMS)
    ciphers = _u16_tuple(b, p, count)
    p += clen
    if p + 1 > end:
        return M_HELLO_TRUNCATED
    comp_len = b[p]
    p += 1
    if comp_len == 0:
        return M_BAD_COMPRESSION
    if p + comp_len > end:
        return M_HELLO_TRUNCATED
    compression = PyBytes_FromStringAndSize(<const char*> b + p, comp_len)
    p += comp_len
    # Every field of the result, as ClientHello.__init__ and _client_extensions leave them.
    sni = None
    cdef bint sni_present = False
    alpn = EMPTY_TUPLE
    supported_versions = EMPTY_TUPLE
    supported_groups = EMPTY_TUPLE
    ec_point_formats = EMPTY_TUPLE
    signature_algorithms = EMPTY_TUPLE
    key_shares = EMPTY_TUPLE
    extensions = EMPTY_TUPLE
    cdef list types
    if p != end:
        if p + 2 > end:
            return M_BAD_EXTENSIONS
        elen = _u16(b, p)
        p += 2
        if p + elen != end:
            return M_BAD_EXTENSIONS
        types = []
        types_n = 0
        while p < end:
            if p + 4 > end:
                return M_BAD_EXTENSIONS
            etype = _u16(b, p)
            elen = _u16(b, p + 2)
            p += 4
            q = p + elen
            if q > end:
                return M_BAD_EXTENSIONS
            types.append(etype)
            types_n += 1
            if types_n > MAX_EXTENSIONS:
                return M_TOO_MANY_EXTENSIONS
            if etype == 0:  # server_name
                sni_present = True
                if elen and sni is None:
                    sni = _server_name(b, p, q)
                    if sni is None:
                        return M_BAD_EXTENSION
            elif etype == 16:  # ALPN
                alpn = _alpn(b, p, q)
                if alpn is None:
                    return M_BAD_EXTENSION
            elif etype == 10 or etype == 13:  # supported_groups, signature_algorithms
                values = _u16_list(b, p, q)
                if values is None:
                    return M_BAD_EXTENSION
                if etype == 10:
                    supported_groups = values
                else:
                    signature_algorithms = values
            elif etype == 43:  # supported_versions
                if elen < 1 or b[p] + 1 != elen or b[p] & 1:
                    return M_BAD_EXTENSION
                supported_versions = _u16_tuple(b, p + 1, min(b[p] >> 1, MAX_LIST_ITEMS))
            elif etype == 11:  # ec_point_formats
                if elen < 1 or b[p] + 1 != elen:
                    return M_BAD_EXTENSION
                ec_point_formats = tuple([b[i] for i in range(p + 1, q)])
            elif etype == 51:  # key_share
                key_shares = _key_shares(b, p, q)
                if key_shares is None:
                    return M_BAD_EXTENSION
            p = q
        extensions = tuple(types)
    h = ClientHello.__new__(ClientHello)
    h.record_version = 0
    h.version = version
    h.random = random
    h.session_id = session_id
    h.ciphers = ciphers
    h.compression = compression
    h.extensions = extensions
    h.sni = sni
    h.sni_present = sni_present
    h.alpn = alpn
    h.supported_versions = supported_versions
    h.supported_groups = supported_groups
    h.ec_point_formats = ec_point_formats
    h.signature_algorithms = signature_algorithms
    h.key_shares = key_shares
    h.length = total
    return h


cdef object _u16_list(const unsigned char* b, Py_ssize_t p, Py_ssize_t q):
    cdef Py_ssize_t n
    if q - p < 2:
        return None
    n = _u16(b, p)
    if n & 1 or p + 2 + n != q:
        return None
    return _u16_tuple(b, p + 2, min(n >> 1, MAX_LIST_ITEMS))


cdef object _server_name(const unsigned char* b, Py_ssize_t p, Py_ssize_t q):
    cdef Py_ssize_t n, length
    cdef unsigned int kind
    if q - p < 2:
        return None
    n = _u16(b, p)
    p += 2
    if p + n != q:
        return None
    name = None
    while p < q:
        if p + 3 > q:
            return None
        kind = b[p]
        length = _u16(b, p + 1)
        p += 3
        if p + length > q:
            return None
        if kind == 0 and name is None:
            # Host names are ASCII (RFC 6066); anything else is kept visible, not dropped.
            name = PyUnicode_DecodeASCII(<const char*> b + p, length, "backslashreplace")
        p += length
    return "" if name is None else name


cdef object _alpn(const unsigned char* b, Py_ssize_t p, Py_ssize_t q):
    cdef Py_ssize_t n, length, kept = 0
    if q - p < 2:
        return None
    n = _u16(b, p)
    p += 2
    if p + n != q:
        return None
    cdef list names = []
    while p < q:
        length = b[p]
        p += 1
        if p + length > q:
            return None
        if kept < MAX_LIST_ITEMS:
            names.append(PyBytes_FromStringAndSize(<const char*> b + p, length))
            kept += 1
        p += length
    return tuple(names)


cdef object _key_shares(const unsigned char* b, Py_ssize_t p, Py_ssize_t q):
    cdef Py_ssize_t n, length, kept = 0
    cdef unsigned int group
    if q - p < 2:
        return None
    n = _u16(b, p)
    p += 2
    if p + n != q:
        return None
    cdef list shares = []
    while p < q:
        if p + 4 > q:
            return None
        group = _u16(b, p)
        length = _u16(b, p + 2)
        p += 4 + length
        if p > q:
            return None
        if kept < MAX_LIST_ITEMS:
            shares.append((group, length))
            kept += 1
    return tuple(shares)


# ---- HTTP -----------------------------------------------------------------------------------

# The NamedTuples are made as their own __new__ makes them (tuple.__new__(cls, fields)),
# without the call through that Python function.
cdef object _tuple_new = tuple.__new__
cdef object HttpRequest = _http.HttpRequest
cdef object HttpResponse = _http.HttpResponse
cdef object Progress = _http.Progress
cdef object INCOMPLETE = _http.INCOMPLETE
cdef object UNTIL_CLOSE = _http.UNTIL_CLOSE
cdef object END = _http.END
cdef object M_HEADERS_TOO_LONG = _http.M_HEADERS_TOO_LONG
cdef object M_TOO_MANY_HEADERS = _http.M_TOO_MANY_HEADERS
cdef object M_BAD_REQUEST_LINE = _http.M_BAD_REQUEST_LINE
cdef object M_BAD_STATUS_LINE = _http.M_BAD_STATUS_LINE
cdef object M_BAD_HEADER = _http.M_BAD_HEADER
cdef object M_BAD_CONTENT_LENGTH = _http.M_BAD_CONTENT_LENGTH
cdef object M_TOO_MANY_MESSAGES = _http.M_TOO_MANY_MESSAGES
cdef object _length_of = _http._length  # a Content-Length that is not plain digits
cdef object _skip_chunks = _http._skip_chunks  # chunked bodies: int(text, 16)'s rules
cdef object _chunked = _http._chunked

cdef Py_ssize_t MAX_HEADER_BYTES = _http.MAX_HEADER_BYTES
cdef Py_ssize_t MAX_HEADERS = _http.MAX_HEADERS
cdef Py_ssize_t MAX_MESSAGES = _http.MAX_MESSAGES

# RFC 9110 tchar: the bytes a method may hold (http.py's _TCHAR).
cdef bint TCHAR[256]
for _c in range(256):
    TCHAR[_c] = bytes([_c]) in _http._TCHAR


cdef inline bint _ascii_space(unsigned char c) noexcept:
    """bytes.strip()'s whitespace."""
    return c == 32 or (9 <= c <= 13)


cdef inline bint _latin1_space(unsigned char c) noexcept:
    """str.strip()'s whitespace among the latin-1 characters."""
    return c == 32 or (9 <= c <= 13) or (28 <= c <= 31) or c == 0x85 or c == 0xA0


cdef struct Block:
    Py_ssize_t at  # where the end of the header block starts; -1: no end yet
    Py_ssize_t after  # the offset after the block's empty line


cdef inline Block _block_end(const unsigned char* d, Py_ssize_t n, Py_ssize_t pos) noexcept:
    """_header_block's search: the first "\\r\\n\\r\\n" or "\\n\\n" starting in
    [pos, pos + MAX_HEADER_BYTES] and ending within the data."""
    cdef Block out
    cdef Py_ssize_t limit = pos + MAX_HEADER_BYTES
    cdef Py_ssize_t j = pos
    cdef const unsigned char* hit
    out.at = -1
    out.after = -1
    while j < n:
        hit = <const unsigned char*> memchr(d + j, 10, n - j)
        if hit == NULL:
            break
        j = hit - d
        # "\r\n\r\n" starting one byte before this LF
        if (
            j - 1 >= pos and j - 1 <= limit and j + 2 < n and d[j - 1] == 13
            and d[j + 1] == 13 and d[j + 2] == 10
        ):
            out.at = j - 1
            out.after = j + 3
            return out
        if j > limit:
            break
        if j + 1 < n and d[j + 1] == 10:
            out.at = j
            out.after = j + 2
            return out
        j += 1
    return out


cdef object _text(const unsigned char* d, Py_ssize_t a, Py_ssize_t b):
    return PyUnicode_DecodeLatin1(<const char*> d + a, b - a, NULL)


cdef object _stripped(const unsigned char* d, Py_ssize_t a, Py_ssize_t b):
    """raw.strip().decode("latin-1") of d[a:b]."""
    while a < b and _ascii_space(d[a]):
        a += 1
    while b > a and _ascii_space(d[b - 1]):
        b -= 1
    return PyUnicode_DecodeLatin1(<const char*> d + a, b - a, NULL)


cdef object _lower_name(const unsigned char* d, Py_ssize_t a, Py_ssize_t b):
    """d[a:b].decode("latin-1").lower()."""
    cdef Py_ssize_t i
    cdef char buf[64]
    cdef unsigned char c
    if b - a <= 64:
        for i in range(b - a):
            c = d[a + i]
            if c >= 0x80:
                break
            buf[i] = c + 32 if 65 <= c <= 90 else c
        else:
            return PyUnicode_DecodeLatin1(buf, b - a, NULL)
    return PyUnicode_DecodeLatin1(<const char*> d + a, b - a, NULL).lower()


cdef object _headers(const unsigned char* d, list lines):
    """_headers(lines[1:]) over (start, end) pairs of the block's lines after the first:
    [(name, value)...] or a Malformed."""
    cdef list out = []
    cdef Py_ssize_t i, a, b, colon, last, nlines = PyList_GET_SIZE(lines)
    cdef const unsigned char* hit
    for i in range(2, nlines, 2):
        a = lines[i]
        b = lines[i + 1]
        if a < b and (d[a] == 32 or d[a] == 9):
            if not out:
                return M_BAD_HEADER
            last = PyList_GET_SIZE(out) - 1
            name, value = out[last]
            out[last] = (name, value + " " + _stripped(d, a, b))
            continue
        hit = <const unsigned char*> memchr(d + a, 58, b - a) if b > a else NULL
        if hit == NULL:
            return M_BAD_HEADER
        colon = hit - d
        if colon == a or _ascii_space(d[a]) or _ascii_space(d[colon - 1]):
            return M_BAD_HEADER
        out.append((_lower_name(d, a, colon), _stripped(d, colon + 1, b)))
    return out


cdef object _get(list headers, str name):
    for k, v in headers:
        if k == name:
            return v
    return None


cdef object _content_length(list headers):
    """_length(headers): plain digits read here, anything else by the reference."""
    cdef str text = _get(headers, "content-length")
    cdef Py_ssize_t i, size
    cdef Py_UCS4 c
    if text is None:
        return None
    size = len(text)
    if 0 < size <= 15:
        for i in range(size):
            c = text[i]
            if c < 48 or c > 57:
                break
        else:
            return int(text)
    return _length_of(headers)


cdef object _lines(const unsigned char* d, Py_ssize_t pos, Py_ssize_t at):
    """The block's lines as a flat list of (start, end) offsets, each line without its LF and
    one trailing CR; M_TOO_MANY_HEADERS past the bound."""
    cdef list out = []
    cdef Py_ssize_t count = 0, a = pos, e
    cdef const unsigned char* hit
    while True:
        hit = <const unsigned char*> memchr(d + a, 10, at - a) if at > a else NULL
        e = hit - d if hit != NULL else at
        count += 1
        if count > MAX_HEADERS + 1:
            return M_TOO_MANY_HEADERS
        out.append(a)
        out.append(e - 1 if e > a and d[e - 1] == 13 else e)
        if hit == NULL:
            return out
        a = e + 1


cdef bint _is_chunked(list headers) except -1:
    """_chunked(headers): the reference reads a Transfer-Encoding when there is one."""
    if _get(headers, "transfer-encoding") is None:
        return False
    return _chunked(headers)


cdef inline object _progress(used, why, resume, whole, wanted):
    return _tuple_new(Progress, (used, why, resume, whole, wanted))


def requests_from(data, Py_ssize_t start, list out):
    """ips/app/http.py requests_from, compiled: the same Progress and requests."""
    if start < 0:  # never from the inspector; Python's negative slices are the reference's
        return _http.requests_from(data, start, out)
    if type(data) is not bytes:
        data = bytes(data)
    cdef bytes raw = data
    cdef const unsigned char* d = <const unsigned char*> PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t pos = start, body, a, b, sp1, sp2, i, end
    cdef Block block
    cdef const unsigned char* hit
    cdef bint bad
    while pos < n:
        if PyList_GET_SIZE(out) >= MAX_MESSAGES:
            return _progress(pos, M_TOO_MANY_MESSAGES, pos, len(out), n + 1)
        # Tolerate empty lines between requests (RFC 9112 section 2.2).
        while pos < n and (d[pos] == 10 or (d[pos] == 13 and pos + 1 < n and d[pos + 1] == 10)):
            pos += 2 if d[pos] == 13 else 1
        if pos >= n:
            break
        block = _block_end(d, n, pos)
        if block.at < 0:
            if n - pos >= MAX_HEADER_BYTES:
                return _progress(pos, M_HEADERS_TOO_LONG, pos, len(out), n + 1)
            return _progress(pos, INCOMPLETE, pos, len(out), n + 1)
        lines = _lines(d, pos, block.at)
        if type(lines) is not list:
            return _progress(pos, lines, pos, len(out), n + 1)
        body = block.after
        # The request line: two or three fields split by single spaces.
        a = lines[0]
        b = lines[1]
        hit = <const unsigned char*> memchr(d + a, 32, b - a) if b > a else NULL
        if hit == NULL:
            return _progress(pos, M_BAD_REQUEST_LINE, pos, len(out), n + 1)
        sp1 = hit - d
        hit = <const unsigned char*> memchr(d + sp1 + 1, 32, b - sp1 - 1) if b > sp1 + 1 else NULL
        if hit == NULL:
            sp2 = b  # "METHOD URI": HTTP/0.9
        else:
            sp2 = hit - d
            if b > sp2 + 1 and memchr(d + sp2 + 1, 32, b - sp2 - 1) != NULL:
                return _progress(pos, M_BAD_REQUEST_LINE, pos, len(out), n + 1)  # four fields
            if b - sp2 - 1 < 5 or memcmp(d + sp2 + 1, b"HTTP/", 5) != 0:
                return _progress(pos, M_BAD_REQUEST_LINE, pos, len(out), n + 1)
        if sp1 == a or sp2 == sp1 + 1:
            return _progress(pos, M_BAD_REQUEST_LINE, pos, len(out), n + 1)
        bad = False
        for i in range(a, sp1):
            if not TCHAR[d[i]]:
                bad = True
                break
        if bad:
            return _progress(pos, M_BAD_REQUEST_LINE, pos, len(out), n + 1)
        headers = _headers(d, lines)
        if type(headers) is not list:
            return _progress(pos, headers, pos, len(out), n + 1)
        length = _content_length(headers)
        if length is not None and type(length) is not int:
            return _progress(pos, length, pos, len(out), n + 1)
        out.append(_tuple_new(HttpRequest, (
            _text(d, a, sp1), _text(d, sp1 + 1, sp2), _text(d, sp2 + 1, b) if sp2 < b else "",
            _get(headers, "host"), _get(headers, "user-agent"), _get(headers, "content-type"),
            length, tuple(headers),
        )))
        if _is_chunked(headers):
            got = _skip_chunks(raw, body)
            if got is None:
                return _progress(n, INCOMPLETE, pos, len(out) - 1, n + 1)
            if type(got) is not int:
                return _progress(pos, got, pos, len(out) - 1, n + 1)
            pos = got
        else:
            end = body + (<Py_ssize_t> length if length is not None else 0)
            if end > n:
                return _progress(n, INCOMPLETE, pos, len(out) - 1, end)
            pos = end
    return _progress(pos, END, pos, len(out), n + 1)


def responses_from(data, request_methods, Py_ssize_t start, list out):
    """ips/app/http.py responses_from, compiled: the same Progress and responses."""
    if start < 0:  # never from the inspector; Python's negative slices are the reference's
        return _http.responses_from(data, request_methods, start, out)
    if type(data) is not bytes:
        data = bytes(data)
    cdef bytes raw = data
    cdef const unsigned char* d = <const unsigned char*> PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t pos = start, body, a, b, sp1, sp2, end, ra, rb, count
    cdef Block block
    cdef const unsigned char* hit
    cdef int status
    cdef Py_ssize_t known = len(request_methods)
    while pos < n:
        count = PyList_GET_SIZE(out)
        if count >= MAX_MESSAGES:
            return _progress(pos, M_TOO_MANY_MESSAGES, pos, count, n + 1)
        block = _block_end(d, n, pos)
        if block.at < 0:
            if n - pos >= MAX_HEADER_BYTES:
                return _progress(pos, M_HEADERS_TOO_LONG, pos, count, n + 1)
            return _progress(pos, INCOMPLETE, pos, count, n + 1)
        lines = _lines(d, pos, block.at)
        if type(lines) is not list:
            return _progress(pos, lines, pos, count, n + 1)
        body = block.after
        # The status line: version SP code SP reason (partitions at the first spaces).
        a = lines[0]
        b = lines[1]
        hit = <const unsigned char*> memchr(d + a, 32, b - a) if b > a else NULL
        sp1 = hit - d if hit != NULL else b
        hit = <const unsigned char*> memchr(d + sp1 + 1, 32, b - sp1 - 1) if b > sp1 + 1 else NULL
        sp2 = hit - d if hit != NULL else b
        if (
            sp1 - a < 5 or memcmp(d + a, b"HTTP/", 5) != 0 or sp1 >= b or sp2 - sp1 - 1 != 3
            or not (48 <= d[sp1 + 1] <= 57 and 48 <= d[sp1 + 2] <= 57 and 48 <= d[sp1 + 3] <= 57)
        ):
            return _progress(pos, M_BAD_STATUS_LINE, pos, count, n + 1)
        headers = _headers(d, lines)
        if type(headers) is not list:
            return _progress(pos, headers, pos, count, n + 1)
        length = _content_length(headers)
        if length is not None and type(length) is not int:
            return _progress(pos, length, pos, count, n + 1)
        status = (d[sp1 + 1] - 48) * 100 + (d[sp1 + 2] - 48) * 10 + (d[sp1 + 3] - 48)
        # The reason, str.strip()ped (latin-1 whitespace).
        ra = sp2 + 1 if sp2 < b else b
        rb = b
        while ra < rb and _latin1_space(d[ra]):
            ra += 1
        while rb > ra and _latin1_space(d[rb - 1]):
            rb -= 1
        out.append(_tuple_new(HttpResponse, (
            _text(d, a, sp1), status, _text(d, ra, rb),
            _get(headers, "content-type"), length, tuple(headers),
        )))
        count += 1
        answered = request_methods[count - 1] if count <= known else ""
        if status < 200 or status == 204 or status == 304 or answered == "HEAD":
            pos = body
        elif _is_chunked(headers):
            got = _skip_chunks(raw, body)
            if got is None:
                return _progress(n, INCOMPLETE, pos, count - 1, n + 1)
            if type(got) is not int:
                return _progress(pos, got, pos, count - 1, n + 1)
            pos = got
        elif length is None:
            return _progress(n, UNTIL_CLOSE, pos, count - 1, n + 1)
        else:
            end = body + <Py_ssize_t> length
            if end > n:
                return _progress(n, INCOMPLETE, pos, count - 1, end)
            pos = end
    return _progress(pos, END, pos, len(out), n + 1)
