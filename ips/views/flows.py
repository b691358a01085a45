"""Active connections for `ipsctl flows` and `ipsctl top`: filter, sort, group, bounded.

Runs in the worker (op "flows", over its FlowTable) and returns plain rows; format_flows and
flows_csv (at the end) write them for the CLI. A filter is words, all of which must hold
(tcpdump-like, a small fixed syntax):

    proto tcp|udp|icmp|icmpv6|sctp|N     the flow's protocol
    host A | src A | dst A               an address or network (CIDR), at either end / the
                                         initiator / the responder
    port P | sport P | dport P           a port or range (80, 8000-8080, http)
    state new|established                established: the flow has seen a reply
    name N | name *.N | name *           the responder's name (passive DNS, `Flow.dst_name`,
                                         or the SNI or HTTP host the flow's client sent):
                                         exactly N, any subdomain of N (not N itself, as
                                         in the policy's name patterns), or any known name
    country CC | asn N                   either end's country (ISO code) or AS number, as
                                         the geo data and site file say (docs/geo.md)
    and                                  optional, between terms

e.g. `proto tcp dport 80`, `src 10.10.1.0/24 and state established`, `name *.example.com`.

The responder's name is the one passive DNS learned from the answer that led the client to
its address (ips/app/passive_dns.py); a row carries it as `dst_name` (None when not known).
The application layer may have read the server's name too: the SNI of a TLS or QUIC hello
(`sni`) or the Host of the first HTTP request (`http_host`), as ntopng shows the server name.
The NAME column shows the passive DNS name, else the SNI, else the HTTP host; `name` filters
and the names of `group dst` use the same. With reverse DNS on (ips/geo/rdns.py), a responder
none of these name gets its PTR name (`dst_rdns`), in the NAME column too.

Who is on the other end (ips/geo/enrich.py), looked up here, where the rows are made, never on
the packet path: a row has `src_geo` and `dst_geo` (country, asn, org, site; a non-public
address its scope only; None when nothing is known) and `service`, the IANA name of the
responder's port (5432/tcp: postgresql). The table shows them beside the addresses
(`192.0.2.7:443 [US AS64500]`) and in a SERVICE column; CSV has them flat (src_country, …).
"""

from __future__ import annotations

import csv
import heapq
import io
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from ips.core.addr import format_addr
from ips.core.flow import TCP_STATE_NAMES
from ips.geo.db import GeoDb, GeoInfo
from ips.geo.enrich import Enricher, flow_service, short_label
from ips.policy.names import PROTOCOLS, SERVICES
from ips.sinks.eve import EVE_APP_PROTOS

SORT_KEYS = ("bytes", "packets", "duration")
GROUPS = ("src", "dst", "port")
MAX_ROWS = 1000  # the most rows one request returns (the pipe and the terminal stay small)
PROTO_LABELS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite"}


class FilterError(ValueError):
    """A filter expression that cannot be read; the message says where and why."""


Pred = Callable[[Any], bool]


def _network(word: str, value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise FilterError(f"{word}: not an address or network: {value!r}") from None


def _ports(word: str, value: str) -> tuple[int, int]:
    lo_text, _, hi_text = value.partition("-")
    try:
        lo = SERVICES[lo_text] if lo_text in SERVICES else int(lo_text)
        hi = int(hi_text) if hi_text else lo
    except ValueError:
        raise FilterError(f"{word}: not a port or range: {value!r}") from None
    if not (0 <= lo <= hi <= 65535):
        raise FilterError(f"{word}: ports are 0-65535, low-high: {value!r}")
    return lo, hi


def _addr_in(net: Any) -> Callable[[bytes], bool]:
    def test(addr: bytes) -> bool:
        try:
            return ipaddress.ip_address(addr) in net
        except ValueError:
            return False

    return test


_NO_GEO = GeoDb()  # scopes only: a filter checked without data, or a daemon without any


def parse_filter(text: str, geo: Callable[[bytes], GeoInfo] | None = None) -> Pred:
    """A predicate over flows; FilterError on bad input. GEO answers `country` and `asn`
    (GeoDb.lookup; without it they match nothing)."""
    lookup = geo or _NO_GEO.lookup
    words = [w for w in text.replace(",", " ").split() if w.lower() != "and"]
    # Each predicate binds its values as default arguments (the loop rebinds the names), and
    # mypy cannot infer a lambda with defaults: hence the ignores below.
    preds: list[Pred] = []
    i = 0
    while i < len(words):
        word = words[i].lower()
        if i + 1 >= len(words):
            raise FilterError(f"{word!r} needs a value (filter: {text!r})")
        value = words[i + 1].lower()
        i += 2
        if word == "proto":
            if value in PROTOCOLS:
                num = PROTOCOLS[value]
            elif value.isdigit() and int(value) < 256:
                num = int(value)
            else:
                raise FilterError(f"proto: unknown protocol {value!r}")
            preds.append(lambda f, n=num: f.proto == n)  # type: ignore[misc]
        elif word in ("host", "src", "dst"):
            inside = _addr_in(_network(word, value))
            if word == "host":
                preds.append(lambda f, t=inside: t(f.src) or t(f.dst))  # type: ignore[misc]
            elif word == "src":
                preds.append(lambda f, t=inside: t(f.src))  # type: ignore[misc]
            else:
                preds.append(lambda f, t=inside: t(f.dst))  # type: ignore[misc]
        elif word in ("port", "sport", "dport"):
            lo, hi = _ports(word, value)
            if word == "port":
                preds.append(lambda f, a=lo, b=hi: a <= f.sport <= b or a <= f.dport <= b)  # type: ignore[misc]
            elif word == "sport":
                preds.append(lambda f, a=lo, b=hi: a <= f.sport <= b)  # type: ignore[misc]
            else:
                preds.append(lambda f, a=lo, b=hi: a <= f.dport <= b)  # type: ignore[misc]
        elif word == "state":
            if value not in ("new", "established"):
                raise FilterError(f"state: new or established, not {value!r}")
            want = value == "established"
            preds.append(lambda f, w=want: bool(f.replied) == w)  # type: ignore[misc]
        elif word == "name":
            preds.append(_name_matcher(value))
        elif word == "country":
            code = value.upper()
            if len(code) != 2 or not code.isalpha():
                raise FilterError(f"country: a two-letter code (DE, US), not {value!r}")
            preds.append(
                lambda f, c=code, g=lookup: g(f.src).country == c or g(f.dst).country == c  # type: ignore[misc]
            )
        elif word == "asn":
            digits = value[2:] if value.startswith("as") else value
            if not digits.isdigit() or not 0 < int(digits) < 1 << 32:
                raise FilterError(f"asn: an AS number (13335 or AS13335), not {value!r}")
            number = int(digits)
            preds.append(lambda f, n=number, g=lookup: g(f.src).asn == n or g(f.dst).asn == n)  # type: ignore[misc]
        else:
            known = "proto, host, src, dst, port, sport, dport, state, name, country, asn"
            raise FilterError(f"unknown filter word {word!r} (known: {known})")
    return lambda f: all(p(f) for p in preds)


def server_sni(f: Any) -> str | None:
    """The SNI the flow's client sent (TLS or QUIC), None when not known."""
    app = getattr(f, "app", None)
    if app is None:
        return None
    return app.tls_sni or app.quic_sni or None


def server_http_host(f: Any) -> str | None:
    """The Host of the flow's first HTTP request, None when not known."""
    app = getattr(f, "app", None)
    return None if app is None else app.http_host or None


def server_name(f: Any) -> str | None:
    """The name the flow's responder goes by: passive DNS's, else the SNI, else the HTTP
    host (the client's own words, which passive DNS may not have seen: a resolver over
    DoH, a name from /etc/hosts, a flow that began before ipsctl)."""
    return getattr(f, "dst_name", None) or server_sni(f) or server_http_host(f)


def _name_matcher(pattern: str) -> Pred:
    """`name` filter: "*" any known name, "*.x" a subdomain of x (not x), else exactly x;
    over the flow's names (passive DNS, SNI, HTTP host): one of them holding is enough."""
    pattern = pattern.rstrip(".")

    def names(f: Any) -> tuple[str, ...]:
        return tuple(n for n in (getattr(f, "dst_name", None), server_sni(f),
                                 server_http_host(f)) if n)  # fmt: skip

    if pattern == "*":
        return lambda f: bool(names(f))
    if pattern.startswith("*.") and "*" not in pattern[1:]:
        suffix = pattern[1:]  # ".x": the name ends with it, so it is longer than x
        return lambda f: any(n.endswith(suffix) for n in names(f))
    if not pattern or "*" in pattern:
        raise FilterError(f"name: a name, *.name or *, not {pattern!r}")
    return lambda f: pattern in names(f)


def flow_row(f: Any, now: float, enrich: Enricher | None = None) -> dict[str, Any]:
    row = {
        "id": f.flow_id,
        "proto": PROTO_LABELS.get(f.proto, str(f.proto)),
        "src": format_addr(f.src),
        "sport": f.sport,
        "dst": format_addr(f.dst),
        "dport": f.dport,
        "packets": f.pkts_fwd + f.pkts_rev,
        "bytes": f.bytes_fwd + f.bytes_rev,
        "bytes_fwd": f.bytes_fwd,
        "bytes_rev": f.bytes_rev,
        "duration": round(max(0.0, f.last_seen - f.first_seen), 3),
        "idle": round(max(0.0, now - f.last_seen), 3),
        "state": TCP_STATE_NAMES[f.tcp_state]
        if f.proto == 6
        else ("established" if f.replied else "new"),
        # EVE's word (tls, http, dns, ssh, quic, failed); None while not known.
        "app_proto": EVE_APP_PROTOS.get(getattr(f, "app_proto", None)),
        # The responder's name from passive DNS; None while not known.
        "dst_name": getattr(f, "dst_name", None),
        # The server name the application layer read (TLS/QUIC SNI, HTTP Host), if any.
        "sni": server_sni(f),
        "http_host": server_http_host(f),
    }
    geo = (
        enrich.fields(f.proto, f.src, f.dst, f.sport, f.dport, named=server_name(f) is not None)
        if enrich is not None
        else {}
    )
    row["src_geo"] = geo.get("src_geo")
    row["dst_geo"] = geo.get("dst_geo")
    row["service"] = flow_service(f.proto, f.sport, f.dport)
    row["dst_rdns"] = geo.get("dst_rdns")
    return row


def _key(sort: str) -> Callable[[Any], float]:
    if sort == "bytes":
        return lambda f: f.bytes_fwd + f.bytes_rev
    if sort == "packets":
        return lambda f: f.pkts_fwd + f.pkts_rev
    return lambda f: f.last_seen - f.first_seen


def select_flows(
    flows: Iterable[Any],
    now: float,
    *,
    top: int = 20,
    sort: str = "bytes",
    filter_text: str = "",
    group: str | None = None,
    enrich: Enricher | None = None,
) -> dict[str, Any]:
    """The `top` biggest flows by `sort` (after the filter), or with `group` the biggest
    sources, destinations or destination ports (flows, packets, bytes summed). ENRICH
    gives the rows who is on the other end (and answers the `country` and `asn` filters)."""
    if sort not in SORT_KEYS:
        raise FilterError(f"sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
    if group is not None and group not in GROUPS:
        raise FilterError(f"group must be one of {', '.join(GROUPS)}, not {group!r}")
    top = max(0, min(int(top), MAX_ROWS))
    geo = enrich.geo.lookup if enrich is not None and enrich.geo is not None else None
    pred = parse_filter(filter_text, geo) if filter_text.strip() else None
    chosen = [f for f in flows if pred is None or pred(f)]
    if group is None:
        biggest = heapq.nlargest(top, chosen, key=_key(sort))
        rows = [flow_row(f, now, enrich) for f in biggest]
        return {"ok": True, "total": len(chosen), "flows": rows}
    sums: dict[Any, list[int]] = {}
    # group dst: each address's name, from its most recently started named flow.
    names: dict[Any, tuple[float, str]] = {}
    for f in chosen:
        if group == "src":
            k: Any = f.src
        elif group == "dst":
            k = f.dst
            name = server_name(f)
            if name and (k not in names or f.first_seen >= names[k][0]):
                names[k] = (f.first_seen, name)
        else:
            k = (f.proto, f.dport)
        s = sums.setdefault(k, [0, 0, 0])
        s[0] += 1
        s[1] += f.pkts_fwd + f.pkts_rev
        s[2] += f.bytes_fwd + f.bytes_rev
    index = {"bytes": 2, "packets": 1, "duration": 0}[sort]  # duration: by flow count
    best = heapq.nlargest(top, sums.items(), key=lambda kv: kv[1][index])
    groups = []
    for k, (n, pkts, nbytes) in best:
        if group == "port":
            label = f"{k[1]}/{PROTO_LABELS.get(k[0], str(k[0]))}"
        else:
            label = format_addr(k)
        row: dict[str, Any] = {"key": label, "flows": n, "packets": pkts, "bytes": nbytes}
        if group == "port":
            row["service"] = flow_service(k[0], 0, k[1])
        elif enrich is not None:
            row["geo"] = enrich.endpoint(k)
        if group == "dst":
            name = names[k][1] if k in names else None
            if name is None and enrich is not None:
                name = enrich.reverse_name(k)
            row["name"] = name
        elif group == "src" and enrich is not None and enrich.rdns is not None:
            row["rdns"] = enrich.reverse_name(k)
        groups.append(row)
    return {"ok": True, "total": len(chosen), "groups": groups}


# ---- as text ------------------------------------------------------------------------------------

GEO_KEYS = ("country", "asn", "org", "site", "scope")
CSV_FIELDS = ("id", "proto", "src", "sport", "dst", "dport", "packets", "bytes", "bytes_fwd",
              "bytes_rev", "duration", "idle", "state", "app_proto", "dst_name", "sni",
              "http_host", "service", "dst_rdns",
              *(f"{end}_{key}" for end in ("src", "dst") for key in GEO_KEYS))  # fmt: skip


def format_flows(rows: list[dict[str, Any]], total: int) -> str:
    if not rows:
        return "no flows" + (f" (of {total})" if total else "")
    ends = [
        (
            _endpoint(r["src"], r["sport"], r["proto"]) + _where(r.get("src_geo")),
            _endpoint(r["dst"], r["dport"], r["proto"]) + _where(r.get("dst_geo")),
        )
        for r in rows
    ]
    width = max([45, *(len(e) for pair in ends for e in pair)])
    lines = [
        f"{'PROTO':<6} {'APP':<6} {'SOURCE':<{width}} {'DESTINATION':<{width}} {'SERVICE':<12} "
        f"{'PKTS':>8} {'BYTES':>10} {'DURATION':>9}  {'STATE':<11}  NAME"
    ]
    for r, (src, dst) in zip(rows, ends, strict=True):
        app = r.get("app_proto") or "-"
        service = r.get("service") or "-"
        lines.append(
            f"{r['proto']:<6} {app:<6} {src:<{width}} {dst:<{width}} {service:<12} "
            f"{r['packets']:>8} {r['bytes']:>10} {r['duration']:>8.1f}s  {r['state']:<11}  "
            f"{_row_name(r)}"
        )
    lines.append(f"{len(rows)} of {total} flow{'s' if total != 1 else ''}")
    return "\n".join(lines)


def _row_name(row: dict[str, Any]) -> str:
    """The NAME column: passive DNS's name, else the SNI, else the HTTP host, else the
    reverse DNS name, else "-"."""
    return (
        row.get("dst_name") or row.get("sni") or row.get("http_host") or row.get("dst_rdns")
        or "-"
    )  # fmt: skip


def _where(obj: dict[str, Any] | None) -> str:
    """` [US AS15169]`, ` [HQ]` beside an address; nothing for a bare scope (the address
    says it is private) or when nothing is known."""
    if not obj or set(obj) == {"scope"}:
        return ""
    return f" [{short_label(obj)}]"


def _endpoint(addr: str, port: int, proto: str) -> str:
    if proto not in ("tcp", "udp", "sctp", "udplite"):
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def flows_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = dict(row)
        for end in ("src", "dst"):
            obj = row.get(f"{end}_geo") or {}
            for key in GEO_KEYS:
                flat[f"{end}_{key}"] = obj.get(key)
        writer.writerow(flat)
    return out.getvalue()
