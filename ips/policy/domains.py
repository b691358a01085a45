"""Domain name patterns of the application-layer clauses (`tls sni`, `quic sni`, `dns query`,
`http host`), and the checks of the other L7 values (JA3, JA4, HTTP methods).

A pattern is a name (`blocked.lab`: that name only) or a wildcard (`*.bad.lab`: any name
below bad.lab, at any depth, but not bad.lab itself). A NameSet holds both kinds as two sets
of strings: a name matches when it is one of the exact names, or when one of its proper
suffixes (`bad.lab` and `lab` for `x.bad.lab`) is a wildcard's base. A lookup therefore costs
one hash per label of the name, whatever the number of patterns: a table of a million names
is looked up as fast as a table of one. Names are compared lower-case and without a trailing
dot, as the application layer hands them over (ips/core/app_fields.py).
"""

from __future__ import annotations

import re

MAX_NAME = 253  # RFC 1035 2.3.4: a name's presentation form, without the trailing dot
MAX_LABEL = 63

# Letters, digits, hyphen; and underscore, which service names use (_dmarc, _sip._tcp) and
# which real SNIs and Host headers carry. Internationalised names are written in their
# ASCII (xn--) form, as they travel on the wire.
_LABEL = re.compile(r"[a-z0-9_-]+")

JA3_SHAPE = re.compile(r"[0-9a-f]{32}")
# JA4 (FoxIO's TLS client fingerprint): a_b_c. a is the protocol (t TCP, q QUIC, d DTLS),
# the TLS version (13, 12, ..., s3, d1), SNI present (d) or not (i), the numbers of cipher
# suites and extensions (two digits each) and the first and last characters of the first
# ALPN (00 when none); b and c are truncated SHA-256 hashes (12 hex digits).
JA4_SHAPE = re.compile(r"[tqd][0-9a-z]{2}[di][0-9]{2}[0-9]{2}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}")
# An HTTP method is a token (RFC 9110 5.6.2); written upper-case, as every method in use is.
HTTP_METHOD_SHAPE = re.compile(r"[A-Z][A-Z0-9!#$%&'*+.^_`|~-]*")


def normalize(name: str) -> str:
    """A name as patterns are compared: lower-case, without the trailing dot."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def pattern_problem(pattern: str) -> tuple[str, str | None] | None:
    """Why `pattern` (already normalized) is not a valid name pattern: (message, hint), or
    None when it is valid."""
    if not pattern:
        return "an empty name", 'write a name such as "example.com" or "*.example.com"'
    name = pattern[2:] if pattern.startswith("*.") else pattern
    if "*" in name:
        if name == "*":
            return (
                "'*' alone matches every name",
                "leave the clause out to match any name, or write '*.example.com'",
            )
        return (
            f"'{pattern}': '*' may only be the whole first label",
            "'*.example.com' matches every name below example.com",
        )
    if len(name) > MAX_NAME:
        return f"a name of {len(name)} characters is longer than {MAX_NAME}", None
    for label in name.split("."):
        if not label:
            return f"'{pattern}' has an empty label", "labels are separated by single dots"
        if len(label) > MAX_LABEL:
            return f"the label '{label[:20]}…' is longer than {MAX_LABEL} characters", None
        if _LABEL.fullmatch(label) is None:
            bad = next(ch for ch in label if _LABEL.fullmatch(ch) is None)
            if ord(bad) > 127:
                return (
                    f"'{pattern}' is not an ASCII name",
                    "write internationalised names in their xn-- form (as they are sent)",
                )
            return f"'{bad}' is not allowed in a name", "names have letters, digits, - and _"
    return None


class NameSet:
    """Exact names and wildcard bases; `matches` is a suffix lookup by labels, never a scan."""

    __slots__ = ("exact", "suffixes")

    def __init__(self, patterns: list[str] | tuple[str, ...] = ()) -> None:
        self.exact: set[str] = set()
        self.suffixes: set[str] = set()  # "bad.lab" for "*.bad.lab"
        for pattern in patterns:
            self.add(pattern)

    def add(self, pattern: str) -> None:
        """Add a valid, normalized pattern (see pattern_problem)."""
        if pattern.startswith("*."):
            self.suffixes.add(pattern[2:])
        else:
            self.exact.add(pattern)

    def update(self, other: NameSet) -> None:
        self.exact |= other.exact
        self.suffixes |= other.suffixes

    def matches(self, name: str) -> bool:
        if name in self.exact:
            return True
        suffixes = self.suffixes
        if not suffixes:
            return False
        # Every proper suffix that starts after a dot: "bad.lab", then "lab" for "x.bad.lab".
        dot = name.find(".")
        while dot >= 0:
            if name[dot + 1 :] in suffixes:
                return True
            dot = name.find(".", dot + 1)
        return False

    def __len__(self) -> int:
        return len(self.exact) + len(self.suffixes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameSet):
            return NotImplemented
        return self.exact == other.exact and self.suffixes == other.suffixes

    __hash__ = None  # type: ignore[assignment]

    def describe(self, most: int = 4) -> str:
        """The patterns as a policy writes them (the first few)."""
        shown = sorted(self.exact)[:most] + [f"*.{s}" for s in sorted(self.suffixes)]
        body = ", ".join(f'"{p}"' for p in shown[:most])
        if len(self) > most:
            body += f", … ({len(self)} in all)"
        return body if len(self) == 1 else "{ " + body + " }"

    def __repr__(self) -> str:
        return f"NameSet({self.describe()})"
