"""Literals of the policy language: a "string" token -> its text, a content token -> bytes.
Shared by the Lark path (parser.py) and the fast path for one-line statements (fastparse.py)."""

from __future__ import annotations

import re

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", '"': '"', "\\": "\\", "|": "|"}


def unescape(raw: str) -> str:
    """Body of a "string" token (quotes included) -> its text."""
    body = raw[1:-1]
    if "\\" not in body:
        return body  # most strings: nothing to undo
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "x" and i + 3 < len(body) + 1:
                try:
                    out.append(chr(int(body[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                except ValueError:
                    pass
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


_HEX_SEGMENT = re.compile(r"\|([^|]*)\|")


def content_bytes(raw: str) -> bytes:
    """A content token -> bytes. Strings may mix text and |hex| segments, as in Suricata:
    "GET |0d 0a|". A bare |de ad be ef| token is hex only. Raises ValueError on bad hex."""
    if raw.startswith("|"):
        return bytes.fromhex(raw[1:-1])
    text = unescape(raw) if raw.startswith('"') else raw
    out = bytearray()
    pos = 0
    for m in _HEX_SEGMENT.finditer(text):
        out += text[pos : m.start()].encode("utf-8")
        out += bytes.fromhex(m.group(1))
        pos = m.end()
    out += text[pos:].encode("utf-8")
    return bytes(out)
