"""TLS fingerprints from parsed hellos: JA3, JA3S (Salesforce) and JA4 (FoxIO).

JA3   "version,ciphers,extensions,groups,point_formats" of the ClientHello, decimal numbers
      joined by '-', GREASE values (RFC 8701) removed from every list; the fingerprint is the
      MD5 of that string. `version` is the legacy_version field.
JA3S  "version,cipher,extensions" of the ServerHello, the same way.
JA4   FoxIO's TLS client fingerprint (technical_details/JA4.md), written from the
      specification: "{t|q|d}{version}{d|i}{ciphers:02}{extensions:02}{alpn}_{c}_{e}" where
      `c` is the first 12 hex digits of the SHA-256 of the sorted cipher list and `e` of the
      sorted extension list (SNI and ALPN removed) followed by '_' and the signature algorithms
      in wire order; GREASE ignored everywhere; empty lists hash to twelve zeros.

Every function takes a parsed `ClientHello`/`ServerHello` and cannot fail.
"""

from __future__ import annotations

import hashlib

from ips.app.tls import EXT_ALPN, EXT_SERVER_NAME, ClientHello, ServerHello

__all__ = [
    "GREASE",
    "is_grease",
    "ja3",
    "ja3_memo",
    "ja3_string",
    "ja3s",
    "ja3s_memo",
    "ja3s_string",
    "ja4",
    "ja4_memo",
    "ja4_raw",
]

GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))
"""The sixteen GREASE values of RFC 8701 (0x0a0a, 0x1a1a, ... 0xfafa)."""


def is_grease(value: int) -> bool:
    return value in GREASE


def _dec(values: tuple[int, ...]) -> str:
    return "-".join([str(v) for v in values if v not in GREASE])


def ja3_string(hello: ClientHello) -> str:
    return (
        f"{hello.version},{_dec(hello.ciphers)},{_dec(hello.extensions)},"
        f"{_dec(hello.supported_groups)},{'-'.join(map(str, hello.ec_point_formats))}"
    )


def ja3(hello: ClientHello) -> tuple[str, str]:
    """(JA3 string, its MD5 in lower-case hex)."""
    s = ja3_string(hello)
    return s, hashlib.md5(s.encode(), usedforsecurity=False).hexdigest()


def ja3s_string(hello: ServerHello) -> str:
    return f"{hello.version},{hello.cipher},{_dec(hello.extensions)}"


def ja3s(hello: ServerHello) -> tuple[str, str]:
    """(JA3S string, its MD5 in lower-case hex)."""
    s = ja3s_string(hello)
    return s, hashlib.md5(s.encode(), usedforsecurity=False).hexdigest()


_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}

_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ZEROS = "000000000000"


def _alpn_chars(hello: ClientHello) -> str:
    """First and last characters of the first ALPN value; its hex form's first and last
    characters when either end byte is not alphanumeric; "00" when there is none."""
    if not hello.alpn or not hello.alpn[0]:
        return "00"
    first = hello.alpn[0]
    a, z = first[0], first[-1]
    if a in _ALNUM and z in _ALNUM:
        return chr(a) + chr(z)
    text = first.hex()
    return text[0] + text[-1]


def _parts(hello: ClientHello, transport: str) -> tuple[str, list[int], list[int], list[int]]:
    ciphers = [c for c in hello.ciphers if c not in GREASE]
    extensions = [e for e in hello.extensions if e not in GREASE]
    version = _VERSIONS.get(hello.max_version, "00")
    a = (
        f"{transport}{version}{'d' if hello.sni_present else 'i'}"
        f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{_alpn_chars(hello)}"
    )
    sigs = [s for s in hello.signature_algorithms if s not in GREASE]
    return a, ciphers, extensions, sigs


def _hex_list(values: list[int]) -> str:
    # One %-format over the whole list is about twice as fast as joining per-item f-strings.
    return ("%04x," * len(values) % tuple(values))[:-1]


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ja4(hello: ClientHello, transport: str = "t") -> str:
    """The JA4 fingerprint; `transport` is "t" (TLS over TCP), "q" (QUIC) or "d" (DTLS)."""
    a, ciphers, extensions, sigs = _parts(hello, transport)
    b = _sha12(_hex_list(sorted(ciphers))) if ciphers else _ZEROS
    rest = sorted([e for e in extensions if e != EXT_SERVER_NAME and e != EXT_ALPN])
    if rest:
        text = _hex_list(rest)
        if sigs:
            text += "_" + _hex_list(sigs)
        c = _sha12(text)
    else:
        c = _ZEROS
    return f"{a}_{b}_{c}"


def ja4_raw(hello: ClientHello, transport: str = "t", original: bool = False) -> str:
    """JA4_r (sorted lists) or, with `original`, JA4_ro (wire order, SNI and ALPN kept)."""
    a, ciphers, extensions, sigs = _parts(hello, transport)
    if original:
        cipher_text, ext_text = _hex_list(ciphers), _hex_list(extensions)
    else:
        cipher_text = _hex_list(sorted(ciphers))
        ext_text = _hex_list(
            sorted([e for e in extensions if e != EXT_SERVER_NAME and e != EXT_ALPN])
        )
    raw = f"{a}_{cipher_text}_{ext_text}"
    return f"{raw}_{_hex_list(sigs)}" if sigs else raw


# ---- memoised forms, for the engine's path -------------------------------------------------
#
# The clients behind a network are few (a browser, an OS library, a few tools), and each sends
# the same lists in every connection, so the engine computes the same fingerprints again and
# again: these remember them by the exact inputs each reads (the same answer as the function,
# by construction). Bounded: when MEMO_SIZE different inputs were seen, the memo starts over
# (a flood of made-up hellos costs a key and a miss each, as without it).

MEMO_SIZE = 1024

_ja3_memo: dict[tuple[object, ...], tuple[str, str]] = {}
_ja3s_memo: dict[tuple[object, ...], tuple[str, str]] = {}
_ja4_memo: dict[tuple[object, ...], str] = {}


def ja3_memo(hello: ClientHello) -> tuple[str, str]:
    """ja3(hello), remembered by the lists it reads."""
    key = (hello.version, hello.ciphers, hello.extensions, hello.supported_groups,
           hello.ec_point_formats)  # fmt: skip
    got = _ja3_memo.get(key)
    if got is None:
        got = ja3(hello)
        if len(_ja3_memo) >= MEMO_SIZE:
            _ja3_memo.clear()
        _ja3_memo[key] = got
    return got


def ja3s_memo(hello: ServerHello) -> tuple[str, str]:
    """ja3s(hello), remembered by the fields it reads."""
    key = (hello.version, hello.cipher, hello.extensions)
    got = _ja3s_memo.get(key)
    if got is None:
        got = ja3s(hello)
        if len(_ja3s_memo) >= MEMO_SIZE:
            _ja3s_memo.clear()
        _ja3s_memo[key] = got
    return got


def ja4_memo(hello: ClientHello, transport: str = "t") -> str:
    """ja4(hello, transport), remembered by the fields it reads (the first ALPN value only)."""
    key = (transport, hello.version, hello.supported_versions, hello.sni_present,
           hello.ciphers, hello.extensions, hello.alpn[:1], hello.signature_algorithms)  # fmt: skip
    got = _ja4_memo.get(key)
    if got is None:
        got = ja4(hello, transport)
        if len(_ja4_memo) >= MEMO_SIZE:
            _ja4_memo.clear()
        _ja4_memo[key] = got
    return got
