# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""ips/app/dns.py's DNS message parser, compiled: `parse_message` and `parse_tcp_stream`
answer exactly what the Python functions of the same names answer (that module stays the
reference and the fallback), only faster.

The same values: `DnsMessage`, `DnsQuestion`, `DnsRecord`, `DnsMx`, `DnsSoa` and `DnsSrv`
of ips/app/dns.py with equal fields, names decoded the same way (labels joined with ".",
bytes outside printable ASCII and "." and "\\" inside a label written "\\DDD"), addresses
written as ips/core/addr.py `format_addr` writes them, and the same `Malformed` objects
(the module's own constants, so even identity holds). The same walk, too: a compression
pointer must point strictly before the label sequence it continues, a name's wire length
is bounded by MAX_NAME, the message's records by MAX_RECORDS, and names already read are
remembered by the offset they started at and reused when a pointer lands there, as the
Python parser's per-message cache does. That cache could decide more than speed: a name
reused from it is not read again under the present bound (a record's data ends before the
message does), so the compiled walk keeps the same cache with the same keys, filled at the
same moments, rather than rely on an argument that the answer never depends on it.

What is not plain bytes from offset 0 on (a bytearray, a memoryview, a negative offset)
is handed to the Python parser, which defines what happens then.
tests/pure/test_dns_compiled.py holds the two together on every DNS payload of the shared
captures and on generated and mutated messages.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.string cimport memcpy, memset

from ips.app import dns as _dns
from ips.core.addr import format_addr as _format_addr


cdef extern from "Python.h":
    object PyUnicode_DecodeASCII(const char *s, Py_ssize_t size, const char *errors)
    const char *PyUnicode_AsUTF8AndSize(object text, Py_ssize_t *size) except NULL


# A NamedTuple value made as CPython's tuple.__new__(cls, items) makes it (tuple_subtype_new:
# the type's tp_alloc, then the items), without the namedtuple's Python-level __new__ and
# without the intermediate plain tuple.
cdef extern from *:
    """
    static PyObject *dnsc_named(PyObject *type, Py_ssize_t n, PyObject **items) {
        PyTypeObject *t = (PyTypeObject *)type;
        PyObject *made = t->tp_alloc(t, n);
        if (made == NULL) return NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_INCREF(items[i]);
            PyTuple_SET_ITEM(made, i, items[i]);
        }
        return made;
    }
    static PyObject *dnsc_named_from(PyObject *type, PyObject *items) {
        return dnsc_named(type, PyTuple_GET_SIZE(items), ((PyTupleObject *)items)->ob_item);
    }
    """
    object dnsc_named(object type, Py_ssize_t n, PyObject **items)
    object dnsc_named_from(object type, tuple items)


# The record types whose data is decoded, and the bounds, as ips/app/dns.py numbers them
# (checked against that module when this one is imported: a difference is an ImportError,
# and the loader then keeps the Python parser).
cdef enum:
    TYPE_A = 1
    TYPE_NS = 2
    TYPE_CNAME = 5
    TYPE_SOA = 6
    TYPE_PTR = 12
    TYPE_MX = 15
    TYPE_TXT = 16
    TYPE_AAAA = 28
    TYPE_SRV = 33
    MAX_NAME = 255
    MAX_RECORDS = 1024
    # A name's text: at most 4 characters ("\DDD") per wire byte of MAX_NAME.
    NAME_TEXT_MAX = 4 * MAX_NAME + 4
    # The offsets of a message up to this size are indexed on the stack (see _Cache).
    CACHE_ON_STACK = 1536

for _name_, _value_ in (
    ("TYPE_A", TYPE_A), ("TYPE_NS", TYPE_NS), ("TYPE_CNAME", TYPE_CNAME),
    ("TYPE_SOA", TYPE_SOA), ("TYPE_PTR", TYPE_PTR), ("TYPE_MX", TYPE_MX),
    ("TYPE_TXT", TYPE_TXT), ("TYPE_AAAA", TYPE_AAAA), ("TYPE_SRV", TYPE_SRV),
    ("MAX_NAME", MAX_NAME), ("MAX_RECORDS", MAX_RECORDS),
):
    if getattr(_dns, _name_) != _value_:
        raise ImportError(f"ips/fast/_dnsparse.pyx: {_name_} differs from ips/app/dns.py")

cdef object py_parse_message = _dns.parse_message
cdef object format_addr = _format_addr
cdef type DNS_MESSAGE = _dns.DnsMessage
cdef type DNS_QUESTION = _dns.DnsQuestion
cdef type DNS_RECORD = _dns.DnsRecord
cdef type DNS_MX = _dns.DnsMx
cdef type DNS_SOA = _dns.DnsSoa
cdef type DNS_SRV = _dns.DnsSrv
cdef object M_TRUNCATED_HEADER = _dns.M_TRUNCATED_HEADER
cdef object M_TRUNCATED_NAME = _dns.M_TRUNCATED_NAME
cdef object M_TRUNCATED_QUESTION = _dns.M_TRUNCATED_QUESTION
cdef object M_TRUNCATED_RECORD = _dns.M_TRUNCATED_RECORD
cdef object M_BAD_LABEL = _dns.M_BAD_LABEL
cdef object M_POINTER_LOOP = _dns.M_POINTER_LOOP
cdef object M_NAME_TOO_LONG = _dns.M_NAME_TOO_LONG
cdef object M_BAD_RDATA = _dns.M_BAD_RDATA
cdef object M_TOO_MANY_RECORDS = _dns.M_TOO_MANY_RECORDS
cdef object M_TCP_SHORT_LENGTH = _dns.M_TCP_SHORT_LENGTH
cdef type _MALFORMED = type(M_TRUNCATED_NAME)
cdef object EMPTY_TEXT = ""
cdef tuple NO_RECORDS = ()

# A label byte as text: printable ASCII but "." and "\" stays itself (1), the rest is
# written \DDD (4), as dns.py's _LABEL_TABLE writes it.
cdef uint8_t LABEL_PLAIN[256]
for _byte_ in range(256):
    LABEL_PLAIN[_byte_] = 1 if 0x21 <= _byte_ <= 0x7E and _byte_ != 0x2E and _byte_ != 0x5C else 0

cdef const char *HEX_DIGITS = b"0123456789abcdef"


cdef struct _Cache:
    # Names read in this message, by the offset they started at (relative to the message):
    # slot[offset] is -1, or (index into `texts` << 9) | the name's wire length (<= 255).
    int32_t *slot
    Py_ssize_t size


cdef struct _Name:
    # Where a name ends in the record (after its first pointer), and its wire length.
    Py_ssize_t after
    int total


cdef inline Py_ssize_t _label_text(const uint8_t *src, Py_ssize_t ln, char *out) noexcept:
    """Write a label's text at `out`; return its length."""
    cdef Py_ssize_t i, n = 0
    cdef uint8_t b
    for i in range(ln):
        b = src[i]
        if LABEL_PLAIN[b]:
            out[n] = <char>b
            n += 1
        else:
            out[n] = b"\\"
            out[n + 1] = <char>(48 + b // 100)
            out[n + 2] = <char>(48 + (b // 10) % 10)
            out[n + 3] = <char>(48 + b % 10)
            n += 4
    return n


cdef object _name(
    const uint8_t *d, Py_ssize_t pos, Py_ssize_t base, Py_ssize_t end,
    _Cache *cache, list texts, _Name *got,
):
    """dns.py `_name`: the name at `pos` as text (and its end and wire length in `got`), or
    the Malformed that stops the message."""
    cdef Py_ssize_t start = pos, after = -1, floor = pos, target, n = 0, known_len
    cdef int total = 0, ln, kind
    cdef int32_t known
    cdef char buf[NAME_TEXT_MAX]
    cdef const char *known_text
    while True:
        if pos >= end:
            return M_TRUNCATED_NAME
        ln = d[pos]
        if ln == 0:
            pos += 1
            break
        kind = ln & 0xC0
        if kind == 0xC0:
            if pos + 2 > end:
                return M_TRUNCATED_NAME
            target = base + (((ln << 8) | d[pos + 1]) & 0x3FFF)
            if target >= floor:
                return M_POINTER_LOOP
            if after < 0:
                after = pos + 2
            known = cache.slot[target - base]
            if known >= 0:
                total += known & 0x1FF
                if total > MAX_NAME:
                    return M_NAME_TOO_LONG
                known_text = PyUnicode_AsUTF8AndSize(
                    <object>PyList_GET_ITEM(texts, known >> 9), &known_len
                )
                if known_len:
                    if n:
                        buf[n] = b"."
                        n += 1
                    memcpy(buf + n, known_text, known_len)
                    n += known_len
                break
            pos = floor = target
            continue
        if kind:
            return M_BAD_LABEL  # 0x40 (extended) and 0x80 label types
        total += ln + 1
        if total > MAX_NAME:
            return M_NAME_TOO_LONG
        if pos + 1 + ln > end:
            return M_TRUNCATED_NAME
        if n:
            buf[n] = b"."
            n += 1
        n += _label_text(d + pos + 1, ln, buf + n)
        pos += 1 + ln
    text = PyUnicode_DecodeASCII(buf, n, NULL) if n else EMPTY_TEXT
    cache.slot[start - base] = <int32_t>((len(texts) << 9) | total)
    texts.append(text)
    got.after = after if after >= 0 else pos
    got.total = total
    return text


cdef inline object _named2(type cls, object a, object b):
    cdef PyObject *items[2]
    items[0] = <PyObject *>a
    items[1] = <PyObject *>b
    return dnsc_named(cls, 2, items)


cdef inline object _named3(type cls, object a, object b, object c):
    cdef PyObject *items[3]
    items[0] = <PyObject *>a
    items[1] = <PyObject *>b
    items[2] = <PyObject *>c
    return dnsc_named(cls, 3, items)


cdef inline object _named4(type cls, object a, object b, object c, object e):
    cdef PyObject *items[4]
    items[0] = <PyObject *>a
    items[1] = <PyObject *>b
    items[2] = <PyObject *>c
    items[3] = <PyObject *>e
    return dnsc_named(cls, 4, items)


cdef inline object _named5(type cls, object a, object b, object c, object e, object f):
    cdef PyObject *items[5]
    items[0] = <PyObject *>a
    items[1] = <PyObject *>b
    items[2] = <PyObject *>c
    items[3] = <PyObject *>e
    items[4] = <PyObject *>f
    return dnsc_named(cls, 5, items)


cdef inline uint32_t _u16(const uint8_t *p) noexcept:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t _u32(const uint8_t *p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef object _ipv4_text(const uint8_t *p):
    cdef char buf[16]
    cdef Py_ssize_t n = 0
    cdef int i, b
    for i in range(4):
        if i:
            buf[n] = b"."
            n += 1
        b = p[i]
        if b >= 100:
            buf[n] = <char>(48 + b // 100)
            n += 1
        if b >= 10:
            buf[n] = <char>(48 + (b // 10) % 10)
            n += 1
        buf[n] = <char>(48 + b % 10)
        n += 1
    return PyUnicode_DecodeASCII(buf, n, NULL)


cdef object _ipv6_text(const uint8_t *p, Py_ssize_t pos, object data):
    """format_addr's text of an IPv6 address: ipaddress's RFC 5952 form (lower-case hex
    groups without leading zeros, the longest run of two or more zero groups, the first of
    equals, written "::"). An IPv4-mapped address goes to format_addr itself: Python 3.13
    writes it ::ffff:a.b.c.d, older versions in hex."""
    cdef uint32_t groups[8]
    cdef int i, j, run_start = -1, run_len = 0, best_start = -1, best_len = 0
    cdef char buf[48]
    cdef Py_ssize_t n = 0
    cdef uint32_t g
    cdef bint started
    for i in range(8):
        groups[i] = _u16(p + 2 * i)
    if (groups[0] | groups[1] | groups[2] | groups[3] | groups[4]) == 0 and groups[5] == 0xFFFF:
        return format_addr(data[pos : pos + 16])
    for i in range(8):
        if groups[i] == 0:
            if run_start < 0:
                run_start = i
            run_len += 1
            if run_len > best_len:
                best_len = run_len
                best_start = run_start
        else:
            run_start = -1
            run_len = 0
    if best_len < 2:
        best_start = -1
        best_len = 0
    i = 0
    while i < 8:
        if i == best_start:
            buf[n] = b":"
            buf[n + 1] = b":"
            n += 2
            i += best_len
            continue
        if n and buf[n - 1] != b":":
            buf[n] = b":"
            n += 1
        g = groups[i]
        started = False
        for j in range(12, -1, -4):
            if started or (g >> j) & 0xF or j == 0:
                buf[n] = HEX_DIGITS[(g >> j) & 0xF]
                n += 1
                started = True
        i += 1
    return PyUnicode_DecodeASCII(buf, n, NULL)


cdef object _rdata(
    object data, const uint8_t *d, Py_ssize_t pos, Py_ssize_t rend, Py_ssize_t base,
    uint32_t rtype, _Cache *cache, list texts,
):
    """dns.py `_rdata`: a record's data decoded, or a Malformed."""
    cdef Py_ssize_t size = rend - pos, ln
    cdef _Name got
    cdef object name, rname
    cdef list strings
    if rtype == TYPE_A:
        return _ipv4_text(d + pos) if size == 4 else M_BAD_RDATA
    if rtype == TYPE_AAAA:
        return _ipv6_text(d + pos, pos, data) if size == 16 else M_BAD_RDATA
    if rtype == TYPE_CNAME or rtype == TYPE_NS or rtype == TYPE_PTR:
        return _name(d, pos, base, rend, cache, texts, &got)
    if rtype == TYPE_MX:
        if size < 3:
            return M_BAD_RDATA
        name = _name(d, pos + 2, base, rend, cache, texts, &got)
        if type(name) is not str:
            return name
        return _named2(DNS_MX, _u16(d + pos), name)
    if rtype == TYPE_TXT:
        strings = []
        while pos < rend:
            ln = d[pos]
            if pos + 1 + ln > rend:
                return M_BAD_RDATA
            strings.append(PyBytes_FromStringAndSize(<const char *>d + pos + 1, ln))
            pos += 1 + ln
        return tuple(strings)
    if rtype == TYPE_SOA:
        name = _name(d, pos, base, rend, cache, texts, &got)
        if type(name) is not str:
            return name
        rname = _name(d, got.after, base, rend, cache, texts, &got)
        if type(rname) is not str:
            return rname
        pos = got.after
        if pos + 20 > rend:
            return M_BAD_RDATA
        return dnsc_named_from(DNS_SOA, (
            name, rname, _u32(d + pos), _u32(d + pos + 4), _u32(d + pos + 8),
            _u32(d + pos + 12), _u32(d + pos + 16),
        ))
    if rtype == TYPE_SRV:
        if size < 7:
            return M_BAD_RDATA
        name = _name(d, pos + 6, base, rend, cache, texts, &got)
        if type(name) is not str:
            return name
        return _named4(DNS_SRV, _u16(d + pos), _u16(d + pos + 2), _u16(d + pos + 4), name)
    return PyBytes_FromStringAndSize(<const char *>d + pos, size)


cdef object _records(
    object data, const uint8_t *d, Py_ssize_t *at, Py_ssize_t base, Py_ssize_t end,
    uint32_t count, _Cache *cache, list texts,
):
    """dns.py `_records`: a section's records as a tuple (the offset after them in `at`),
    or a Malformed."""
    cdef Py_ssize_t pos = at[0], rend
    cdef uint32_t i, rtype, rclass, ttl, rdlen
    cdef _Name got
    cdef tuple out = PyTuple_New(count)
    cdef object name, rdata, record
    for i in range(count):
        name = _name(d, pos, base, end, cache, texts, &got)
        if type(name) is not str:
            return name
        pos = got.after
        if pos + 10 > end:
            return M_TRUNCATED_RECORD
        rtype = _u16(d + pos)
        rclass = _u16(d + pos + 2)
        ttl = _u32(d + pos + 4)
        rdlen = _u16(d + pos + 8)
        pos += 10
        rend = pos + rdlen
        if rend > end:
            return M_TRUNCATED_RECORD
        rdata = _rdata(data, d, pos, rend, base, rtype, cache, texts)
        if type(rdata) is _MALFORMED:
            return rdata
        record = _named5(DNS_RECORD, name, rtype, rclass, ttl, rdata)
        Py_INCREF(record)
        PyTuple_SET_ITEM(out, i, record)
        pos = rend
    at[0] = pos
    return out



cpdef object parse_message(object data, Py_ssize_t off=0, Py_ssize_t end=-1):
    """dns.py `parse_message`: the DNS message in data[off:end] (end -1: to the end)."""
    if data.__class__ is not bytes or off < 0:
        return py_parse_message(data, off, end)
    cdef Py_ssize_t length = PyBytes_GET_SIZE(data), pos
    cdef const uint8_t *d = <const uint8_t *>PyBytes_AS_STRING(data)
    cdef uint32_t ident, flags, qd, an, ns, ar, i, qtype, qclass
    cdef _Cache cache
    cdef int32_t on_stack[CACHE_ON_STACK]
    cdef _Name got
    cdef list texts
    cdef tuple questions, answers, authorities, additionals
    cdef object name, question, section
    if end < 0 or end > length:
        end = length
    if end - off < 12:
        return M_TRUNCATED_HEADER
    ident = _u16(d + off)
    flags = _u16(d + off + 2)
    qd = _u16(d + off + 4)
    an = _u16(d + off + 6)
    ns = _u16(d + off + 8)
    ar = _u16(d + off + 10)
    if qd + an + ns + ar > MAX_RECORDS:
        return M_TOO_MANY_RECORDS
    # Every name and pointer target lies in [off, end): the cache indexes those offsets.
    cache.size = end - off
    if cache.size <= CACHE_ON_STACK:
        cache.slot = on_stack
    else:
        cache.slot = <int32_t *>PyMem_Malloc(cache.size * sizeof(int32_t))
        if cache.slot == NULL:
            raise MemoryError()
    memset(cache.slot, 0xFF, cache.size * sizeof(int32_t))
    texts = []
    try:
        pos = off + 12
        questions = PyTuple_New(qd)
        for i in range(qd):
            name = _name(d, pos, off, end, &cache, texts, &got)
            if type(name) is not str:
                return name
            pos = got.after
            if pos + 4 > end:
                return M_TRUNCATED_QUESTION
            qtype = _u16(d + pos)
            qclass = _u16(d + pos + 2)
            pos += 4
            question = _named3(DNS_QUESTION, name, qtype, qclass)
            Py_INCREF(question)
            PyTuple_SET_ITEM(questions, i, question)
        answers = authorities = additionals = NO_RECORDS
        if an:
            section = _records(data, d, &pos, off, end, an, &cache, texts)
            if type(section) is not tuple:
                return section
            answers = section
        if ns:
            section = _records(data, d, &pos, off, end, ns, &cache, texts)
            if type(section) is not tuple:
                return section
            authorities = section
        if ar:
            section = _records(data, d, &pos, off, end, ar, &cache, texts)
            if type(section) is not tuple:
                return section
            additionals = section
        return dnsc_named_from(
            DNS_MESSAGE, (ident, flags, questions, answers, authorities, additionals)
        )
    finally:
        if cache.slot != on_stack:
            PyMem_Free(cache.slot)


cpdef tuple parse_tcp_stream(object data):
    """dns.py `parse_tcp_stream`: the messages of a DNS-over-TCP stream (2-byte length prefix
    each) and the bytes they used; an incomplete last message is left for later."""
    if data.__class__ is not bytes:
        return _dns.parse_tcp_stream(data)
    cdef list out = []
    cdef Py_ssize_t pos = 0, n = PyBytes_GET_SIZE(data), length
    cdef const uint8_t *d = <const uint8_t *>PyBytes_AS_STRING(data)
    while pos + 2 <= n:
        length = _u16(d + pos)
        if length < 12:
            out.append(M_TCP_SHORT_LENGTH)
            return out, n  # framing is lost: the rest of the stream cannot be trusted
        if pos + 2 + length > n:
            break
        out.append(parse_message(data, pos + 2, pos + 2 + length))
        pos += 2 + length
    return out, pos


# ---- a message's inspection (ips/app/inspect.py AppInspector._dns_message) --------------------

from functools import partial as _partial

from ips.app.detect import APP_DNS as _APP_DNS
from ips.app import inspect as _inspect
from ips.core.events import AppEvent as _AppEvent, PacketEvent as _PacketEvent

cdef type PARTIAL = _partial
cdef type APP_EVENT = _AppEvent
cdef object APP_DNS = _APP_DNS
cdef object EVE_DNS_ONE = _inspect._eve_dns_one
cdef Py_ssize_t DNS_IDS_KEPT = _inspect.DNS_IDS_KEPT

# The fields an AppEvent's two __init__ set, in the order they set them: an event is made
# here by setting them on AppEvent.__new__'s object, which is what the constructor does
# (without its two Python frames). Should the classes gain or lose a field, the events are
# made with the constructor instead (EVENT_FIELDS_KNOWN is then false).
_EVENT_FIELDS = (
    "time", "flow_id", "family", "proto", "src", "sport", "dst", "dport", "icmp",
    "app_proto", "dst_name", "app_layer", "event_type", "_body", "_build", "tx_id",
)
cdef bint EVENT_FIELDS_KNOWN = (
    set(_PacketEvent.__slots__) | set(_AppEvent.__slots__) == set(_EVENT_FIELDS)
    and _AppEvent.__mro__ == (_AppEvent, _PacketEvent, object)
)
EVENTS_MADE_DIRECTLY = EVENT_FIELDS_KNOWN  # (for the tests: the path they hold to the other)


cdef object _app_event(
    object now, object flow, bint to_server, object build, object tx_id
):
    """AppInspector._event's AppEvent for a DNS message (counted by the caller)."""
    cdef object src, sport, dst, dport, event
    if to_server:
        src, sport, dst, dport = flow.src, flow.sport, flow.dst, flow.dport
    else:
        src, sport, dst, dport = flow.dst, flow.dport, flow.src, flow.sport
    if not EVENT_FIELDS_KNOWN:
        event = APP_EVENT(
            now, flow.flow_id, flow.family, flow.proto, src, sport, dst, dport,
            event_type=APP_DNS, build=build, tx_id=tx_id,
        )
        event.app_proto = flow.app_proto
        event.dst_name = flow.dst_name
        return event
    event = APP_EVENT.__new__(APP_EVENT)
    event.time = now
    event.flow_id = flow.flow_id
    event.family = flow.family
    event.proto = flow.proto
    event.src = src
    event.sport = sport
    event.dst = dst
    event.dport = dport
    event.icmp = -1
    event.app_proto = flow.app_proto
    event.dst_name = flow.dst_name
    event.app_layer = None
    event.event_type = APP_DNS
    event._body = None
    event._build = build
    event.tx_id = tx_id
    return event


# ---- passive DNS (ips/app/passive_dns.py PassiveDns.learn) --------------------------------------

from ips.app import passive_dns as _passive_dns

cdef type PASSIVE_DNS = _passive_dns.PassiveDns
cdef object PY_PACKED = _passive_dns._packed
cdef object PY_LEARN = _passive_dns.PassiveDns.learn
cdef int OPCODE_QUERY = _passive_dns._OPCODE_QUERY
cdef int RCODE_NOERROR = _passive_dns._RCODE_NOERROR
cdef int CLASS_IN = _dns.CLASS_IN


cdef object _packed_a(object text):
    """passive_dns._packed of an A record's text: the dotted quad the parsers write (one to
    three digits, at most 255, four times) is read here; anything else by _packed itself,
    whose int() accepts more (spaces, signs, underscores) and says what it refuses."""
    cdef Py_ssize_t size, i
    cdef const char *s
    cdef unsigned char out[4]
    cdef int part = 0, digits = 0, value = 0
    cdef char ch
    if type(text) is not str:
        return PY_PACKED(TYPE_A, text)
    s = PyUnicode_AsUTF8AndSize(text, &size)
    for i in range(size):
        ch = s[i]
        if ch == b".":
            if digits == 0 or part == 3:
                return PY_PACKED(TYPE_A, text)
            out[part] = <unsigned char>value
            part += 1
            digits = value = 0
        elif b"0" <= ch <= b"9" and digits < 3:
            value = value * 10 + (ch - 48)
            digits += 1
            if value > 255:
                return PY_PACKED(TYPE_A, text)
        else:
            return PY_PACKED(TYPE_A, text)
    if part != 3 or digits == 0:
        return PY_PACKED(TYPE_A, text)
    out[3] = <unsigned char>value
    return PyBytes_FromStringAndSize(<const char *>out, 4)


cdef Py_ssize_t learn(object pdns, object msg, object now) except -1:
    """PassiveDns.learn compiled, for a PassiveDns itself (not a subclass): the same entries
    in the same order, the same counts."""
    cdef object flags = msg.flags, answers, questions, rec, rtype, rdata, addr, owner, name
    cdef object qname, ttl, entries, min_ttl, max_ttl
    cdef dict cnames, asked
    cdef Py_ssize_t count = 0
    if not (flags & 0x8000) or (flags >> 11) & 0xF != OPCODE_QUERY or flags & 0xF != RCODE_NOERROR:
        return 0
    answers = msg.answers
    questions = msg.questions
    if not answers or not questions:
        return 0
    # Every name reachable from a question through the answer section's CNAMEs, mapped to
    # that question (passive_dns.py says why, and what a loop does).
    cnames = {}
    for rec in answers:
        if rec.rtype == TYPE_CNAME and rec.rclass == CLASS_IN and isinstance(rec.rdata, str):
            cnames.setdefault(rec.name.lower(), rec.rdata.lower())
    asked = {}
    for question in questions:
        qname = question.name.lower()
        name = qname
        while name and name not in asked:
            asked[name] = qname
            name = cnames.get(name, "")
    min_ttl = pdns.min_ttl
    max_ttl = pdns.max_ttl
    for rec in answers:
        rtype = rec.rtype
        if (rtype != TYPE_A and rtype != TYPE_AAAA) or rec.rclass != CLASS_IN:
            continue
        rdata = rec.rdata
        if not isinstance(rdata, str):
            continue
        addr = _packed_a(rdata) if rtype == TYPE_A else PY_PACKED(rtype, rdata)
        if addr is None:
            continue
        owner = rec.name.lower()
        name = asked.get(owner) or owner
        if not name:
            continue
        ttl = min(max(float(rec.ttl), min_ttl), max_ttl)
        if ttl <= 0:
            continue
        # PassiveDns._store
        entries = pdns._entries
        if entries.pop(addr, None) is None and len(entries) >= pdns.max_entries:
            entries.popitem(last=False)
            pdns.evicted += 1
        entries[addr] = (name, now + ttl)
        pdns.learned += 1
        count += 1
    return count


def read_message(
    object inspector, object flow, object app, object msg, bint to_server, object state,
    object now, list events,
):
    """AppInspector._dns_message compiled, called as that function is (the inspector first:
    a reader that held its inspector, kept on it, would be a reference cycle): a query names
    the packet's dns_queries and waits for its answer, an answer teaches passive DNS; each is
    an event (one per question of a query), counted, with the same fields, the same tx_id and
    the same lazily built body as the inspector's own."""
    cdef dict ids = state.dns_ids
    cdef object tx_id, ident = msg.id, names, event_counts, build
    cdef bint answer = (msg.flags & 0x8000) != 0
    cdef list queries
    cdef Py_ssize_t index, count
    tx_id = ids.pop(ident, None) if answer else None
    if tx_id is None:
        tx_id = state.dns_tx
        state.dns_tx += 1
    if answer:
        names = inspector.names
        if type(names) is PASSIVE_DNS and type(names).learn is PY_LEARN:
            learn(names, msg, now)
        elif names is not None:
            names.learn(msg, now)
        count = 1
    else:
        queries = [q.name.rstrip(".").lower() for q in msg.questions]
        app.dns_queries = tuple(queries)
        app.client_done = True
        if len(ids) >= DNS_IDS_KEPT:
            del ids[next(iter(ids))]
        ids[ident] = tx_id
        count = len(msg.questions)
    for index in range(count):
        build = PARTIAL(EVE_DNS_ONE, msg, tx_id, index)
        events.append(_app_event(now, flow, to_server, build, tx_id))
        event_counts = inspector.counters.events
        event_counts[APP_DNS] += 1
