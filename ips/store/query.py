"""The reports and the history, over either backend: `top`, `volume`, `history`.

Filters are those of `ipsctl flows --filter` (ips/views/flows.py: the same words, the same
errors: the text goes through its parser first) translated to SQL WHERE clauses: every word
translates (addresses and networks as byte ranges, ports as ranges, `state` as the flow's
`replied`, `name` over the passive DNS name, the SNI and the HTTP host), so no row is
filtered in Python. A word that means nothing for a table (`state` for alerts, ports for
blocks) is a FilterError.

Which rows a report reads:
  top without --filter    the rollups: whole hours of the period from the hour rollups, the
                          minutes at its ends from the minute rollups (so the period is
                          rounded to whole minutes); by sni: the SNI of TLS and QUIC flows
  by country, asn         each distinct country (AS number) of a flow's two ends once; the
                          rollups hold them from schema version 2 on, the raw rows as columns
  top with --filter       the raw flows (raw retention, 7 days by default), summed in SQL per
                          partition (SQLite: per day file) and merged here
  volume                  the minute or hour rollups; a row's peak is its largest minute
  history, export         the raw tables, ordered by time

Times are seconds since the epoch (UTC); a period is [since, until). A flow belongs to the
period its last packet is in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ips.core.addr import format_addr
from ips.geo.services import service_name
from ips.policy.names import PROTOCOLS
from ips.store.backend import StoreBackend
from ips.store.records import PROTO_WORDS, asn_key, port_key
from ips.store.schema import LEVELS
from ips.views.flows import FilterError, parse_filter
from ips.views.flows import _network as network_of
from ips.views.flows import _ports as ports_of

BY = ("src", "dst", "port", "app", "sni", "interface", "proto", "direction", "country", "asn")
METRICS = ("bytes", "packets", "flows")
HISTORY = ("flows", "alerts", "blocks", "logs", "app")
MAX_ROWS = 100_000

# Which column holds each filter word's value, per table (None: the word does not apply).
_ADDR_COLS: dict[str, dict[str, tuple[str, ...]]] = {
    "flows": {"host": ("src", "dst"), "src": ("src",), "dst": ("dst",)},
    "alerts": {"host": ("src", "dst"), "src": ("src",), "dst": ("dst",)},
    "logs": {"host": ("src", "dst"), "src": ("src",), "dst": ("dst",)},
    "app_events": {"host": ("src", "dst"), "src": ("src",), "dst": ("dst",)},
    "blocks": {"host": ("addr",), "src": ("addr",)},
}
_NAME_COLS = {
    "flows": ("dst_name", "sni", "http_host"),
    "alerts": ("dst_name",),
    "logs": ("dst_name",),
    "app_events": ("name",),
}


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def filter_sql(text: str, table: str = "flows") -> tuple[str, list[Any]]:
    """The WHERE clause (without WHERE; "1=1" for no filter) and its parameters."""
    if not text.strip():
        return "1=1", []
    parse_filter(text)  # the live views' parser: the same words, the same errors
    words = [w for w in text.replace(",", " ").split() if w.lower() != "and"]
    clauses: list[str] = []
    params: list[Any] = []
    for i in range(0, len(words), 2):
        word, value = words[i].lower(), words[i + 1].lower()
        if word == "proto":
            if table == "blocks":
                raise FilterError("proto: blocks have no protocol")
            num = PROTOCOLS[value] if value in PROTOCOLS else int(value)
            clauses.append("proto = ?")
            params.append(num)
        elif word in ("host", "src", "dst"):
            cols = _ADDR_COLS[table].get(word)
            if cols is None:
                raise FilterError(f"{word}: not for {table} (use host or src)")
            net = network_of(word, value)
            lo, hi = net.network_address.packed, net.broadcast_address.packed
            parts = [f"({c} BETWEEN ? AND ? AND length({c}) = ?)" for c in cols]
            for _c in cols:
                params += [lo, hi, len(lo)]
            clauses.append("(" + " OR ".join(parts) + ")")
        elif word in ("port", "sport", "dport"):
            if table == "blocks":
                raise FilterError(f"{word}: blocks have no ports")
            lo_port, hi_port = ports_of(word, value)
            cols = {"port": ("sport", "dport"), "sport": ("sport",), "dport": ("dport",)}[word]
            clauses.append("(" + " OR ".join(f"{c} BETWEEN ? AND ?" for c in cols) + ")")
            for _c in cols:
                params += [lo_port, hi_port]
        elif word == "state":
            if table != "flows":
                raise FilterError("state: only flows have one")
            clauses.append("replied = ?")
            params.append(1 if value == "established" else 0)
        elif word == "name":
            names = _NAME_COLS.get(table)
            if names is None:
                raise FilterError(f"name: {table} have no names")
            pattern = value.rstrip(".")
            if pattern == "*":
                clauses.append("(" + " OR ".join(f"{c} IS NOT NULL" for c in names) + ")")
            elif pattern.startswith("*."):
                like = "%" + _like_escape(pattern[1:])
                clauses.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in names) + ")")
                params += [like] * len(names)
            else:
                clauses.append("(" + " OR ".join(f"{c} = ?" for c in names) + ")")
                params += [pattern] * len(names)
    return " AND ".join(clauses) or "1=1", params


# ---- periods ------------------------------------------------------------------------------------


def split_period(
    since: float, until: float
) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """[since, until) rounded out to whole minutes, as minute ranges at its ends and the whole
    hours between them: ([(lo, hi) of minutes], (lo, hi) of hours or None)."""
    lo = int(since // 60) * 60
    hi = -(-int(until) // 60) * 60 if until > lo else lo
    first_hour = -(-lo // 3600) * 3600
    last_hour = hi // 3600 * 3600
    if first_hour >= last_hour:
        return [(lo, hi)], None
    minutes = [(lo, first_hour)] if lo < first_hour else []
    if last_hour < hi:
        minutes.append((last_hour, hi))
    return minutes, (first_hour, last_hour)


# ---- top ----------------------------------------------------------------------------------------

_METRIC_INDEX = {"flows": 1, "packets": 2, "bytes": 3}


def port_service(key: str) -> str | None:
    """The IANA name of a port key ("5432/tcp" -> "postgresql"), None when none is known."""
    port, _, proto = key.partition("/")
    return service_name(int(port), proto) if port.isdigit() else None


def _ranked(
    sums: dict[str, list[int]], metric: str, limit: int, by: str = ""
) -> list[dict[str, Any]]:
    i = _METRIC_INDEX[metric] - 1
    # Ties: by key, in byte order, the same in both backends.
    best = sorted(sums.items(), key=lambda kv: (-kv[1][i], kv[0].encode()))[:limit]
    rows: list[dict[str, Any]] = []
    for key, s in best:
        row: dict[str, Any] = {"key": key, "flows": s[0], "packets": s[1], "bytes": s[2]}
        if by == "port":  # the service name beside the port: 5432/tcp postgresql
            row["service"] = port_service(key)
        rows.append(row)
    return rows


def top(
    store: StoreBackend,
    *,
    by: str,
    metric: str = "bytes",
    since: float,
    until: float,
    filter_text: str = "",
    limit: int = 10,
) -> dict[str, Any]:
    """The `limit` biggest keys of dimension `by` in the period, by metric."""
    if by not in BY:
        raise FilterError(f"--by: one of {', '.join(BY)}, not {by!r}")
    if metric not in METRICS:
        raise FilterError(f"--metric: one of {', '.join(METRICS)}, not {metric!r}")
    limit = max(0, min(limit, MAX_ROWS))
    if filter_text.strip():
        sums = _top_raw(store, by, since, until, filter_text)
        source = "raw"
    else:
        sums = _top_rollups(store, by, since, until, metric, limit)
        source = "rollups"
    rows = _ranked(sums, metric, limit, by)
    return {"by": by, "metric": metric, "since": since, "until": until,
            "source": source, "rows": rows}  # fmt: skip


def _dim(by: str) -> str:
    return "interface" if by == "interface" else by


def _top_rollups(
    store: StoreBackend, by: str, since: float, until: float, metric: str, limit: int
) -> dict[str, list[int]]:
    """The period's sums per key from the rollups, ranked and cut in SQL (ties by key in
    byte order: SQLite's BINARY collation, PostgreSQL's "C"), so only `limit` rows come
    back."""
    minutes, hours = split_period(since, until)
    parts, params = [], []
    for lo, hi in minutes:
        parts.append("SELECT key, flows, packets, bytes FROM rollup_1m "
                     "WHERE dim = ? AND bucket >= ? AND bucket < ?")  # fmt: skip
        params += [_dim(by), lo, hi]
    if hours is not None:
        parts.append("SELECT key, flows, packets, bytes FROM rollup_1h "
                     "WHERE dim = ? AND bucket >= ? AND bucket < ?")  # fmt: skip
        params += [_dim(by), hours[0], hours[1]]
    sql = (
        "SELECT key, SUM(flows) AS f, SUM(packets) AS p, SUM(bytes) AS b FROM ("
        + " UNION ALL ".join(parts)
        + f") AS periods GROUP BY key ORDER BY {metric[0]} DESC, "
        + f"key{store.dialect.collate} LIMIT {int(limit)}"
    )
    sums: dict[str, list[int]] = {}
    for key, f, p, b in store.rollup_query(sql, params):
        sums[key] = [int(f), int(p), int(b)]
    return sums


_RAW_KEY = {
    "src": "src",
    "dst": "dst",
    "port": "proto, dport",
    "app": "app_proto",
    "sni": "sni",
    "proto": "proto",
    "direction": "direction",
}


# A flow adds to each distinct country (AS number) of its ends once, as in the rollups
# (records.flow_keys): the source's, then the destination's when it differs.
_BOTH_ENDS = (
    "SELECT {src} AS k, pkts_fwd + pkts_rev AS p, bytes_fwd + bytes_rev AS b FROM flows "
    "WHERE time_end >= ? AND time_end < ? AND {where} AND {src} IS NOT NULL "
    "UNION ALL "
    "SELECT {dst} AS k, pkts_fwd + pkts_rev AS p, bytes_fwd + bytes_rev AS b FROM flows "
    "WHERE time_end >= ? AND time_end < ? AND {where} AND {dst} IS NOT NULL "
    "AND ({src} IS NULL OR {dst} <> {src})"
)


# A flow crosses its way in (`iface`) and its way out (`out_iface`, inline): like the two
# ends' countries, each distinct interface once (records.flow_keys).
_END_COLUMNS = {
    "country": ("src_country", "dst_country"),
    "asn": ("src_asn", "dst_asn"),
    "interface": ("iface", "out_iface"),
}


def _top_raw_ends(
    store: StoreBackend, by: str, since: float, until: float, filter_text: str
) -> dict[str, list[int]]:
    where, params = filter_sql(filter_text, "flows")
    first, second = _END_COLUMNS[by]
    ends = _BOTH_ENDS.format(src=first, dst=second, where=where)
    sql = f"SELECT k, COUNT(*), SUM(p), SUM(b) FROM ({ends}) AS ends GROUP BY k"
    args = [since, until, *params, since, until, *params]
    sums: dict[str, list[int]] = {}
    for value, f, p, b in store.raw_query(sql, args, since, until):
        label = asn_key(int(value)) if by == "asn" else str(value)
        s = sums.setdefault(label, [0, 0, 0])
        s[0] += int(f)
        s[1] += int(p)
        s[2] += int(b)
    return sums


def _top_raw(
    store: StoreBackend, by: str, since: float, until: float, filter_text: str
) -> dict[str, list[int]]:
    if by in _END_COLUMNS:
        return _top_raw_ends(store, by, since, until, filter_text)
    where, params = filter_sql(filter_text, "flows")
    key = _RAW_KEY[by]
    present = (
        "" if by in ("src", "dst", "port", "proto", "direction") else f" AND {key} IS NOT NULL"
    )
    if by == "port":
        present = " AND proto IN (6, 17, 132, 136)"
    sql = (
        f"SELECT {key}, COUNT(*), SUM(pkts_fwd + pkts_rev), SUM(bytes_fwd + bytes_rev) "
        f"FROM flows WHERE time_end >= ? AND time_end < ? AND {where}{present} GROUP BY {key}"
    )
    sums: dict[str, list[int]] = {}
    for row in store.raw_query(sql, [since, until, *params], since, until):
        if by == "port":
            label = port_key(row[0], row[1])
            f, p, b = row[2:]
        else:
            value, f, p, b = row
            if by in ("src", "dst"):
                label = format_addr(bytes(value))
            elif by == "proto":
                label = PROTO_WORDS.get(value, str(value))
            else:
                label = str(value)
        s = sums.setdefault(label, [0, 0, 0])
        s[0] += int(f)
        s[1] += int(p)
        s[2] += int(b)
    return sums


# ---- volume -------------------------------------------------------------------------------------


def volume(
    store: StoreBackend,
    *,
    since: float,
    until: float,
    step: str = "1h",
    interface: str | None = None,
) -> dict[str, Any]:
    """Traffic per minute or hour of the period (all of it, or one interface's), and the
    period's peak: each row's `peak_bytes` is its largest minute."""
    if step not in LEVELS:
        raise FilterError(f"--step: one of {', '.join(LEVELS)}, not {step!r}")
    size = LEVELS[step]
    lo = int(since // size) * size
    dim, key = ("interface", interface) if interface else ("all", "")
    sql = (
        f"SELECT bucket, flows, packets, bytes, bytes_fwd, bytes_rev, peak_bytes, peak_packets "
        f"FROM rollup_{step} WHERE dim = ? AND key = ? AND bucket >= ? AND bucket < ? "
        "ORDER BY bucket"
    )
    rows = []
    for bucket, f, p, b, bf, br, pb, pp in store.rollup_query(sql, [dim, key, lo, until]):
        rows.append({"time": int(bucket), "flows": int(f), "packets": int(p), "bytes": int(b),
                     "bytes_fwd": int(bf), "bytes_rev": int(br), "peak_bytes": int(pb),
                     "peak_packets": int(pp)})  # fmt: skip
    peak = max(rows, key=lambda r: (r["peak_bytes"], -r["time"]), default=None)
    return {
        "step": step,
        "interface": interface,
        "since": since,
        "until": until,
        "rows": rows,
        "total_bytes": sum(r["bytes"] for r in rows),
        "peak": None
        if peak is None
        else {
            "time": peak["time"],
            "bytes_per_minute": peak["peak_bytes"],
            "bits_per_second": round(peak["peak_bytes"] * 8 / 60),
        },
    }


# ---- history ------------------------------------------------------------------------------------

_HISTORY_TABLE = {
    "flows": "flows",
    "alerts": "alerts",
    "blocks": "blocks",
    "logs": "logs",
    "app": "app_events",
}
_HISTORY_COLUMNS = {
    "flows": ("time_start", "time_end", "flow_id", "proto", "src", "sport", "dst", "dport",
              "app_proto", "pkts_fwd", "pkts_rev", "bytes_fwd", "bytes_rev", "iface", "reason",
              "replied", "offloaded", "direction", "sni", "http_host", "dst_name",
              "community_id", "src_country", "src_asn", "dst_country", "dst_asn", "service",
              "out_iface"),
    "alerts": ("time", "flow_id", "proto", "src", "sport", "dst", "dport", "action",
               "signature_id", "signature", "severity", "category", "rule_name", "app_proto",
               "dst_name", "community_id", "iface", "extra"),
    "blocks": ("time", "kind", "addr", "table_name", "detector", "offense", "ttl", "reason",
               "mac"),
    "logs": ("time", "flow_id", "proto", "src", "sport", "dst", "dport", "verdict",
             "rule_name", "dst_name", "community_id", "iface"),
    "app": ("time", "flow_id", "event_type", "proto", "src", "sport", "dst", "dport", "tx_id",
            "name", "dns_type", "dns_rcode", "http_method", "http_url", "http_status",
            "tls_version", "ja3", "ja4", "community_id", "iface", "body"),
}  # fmt: skip
_ADDRESS_COLUMNS = {"src", "dst", "addr"}


def history_columns(kind: str) -> tuple[str, ...]:
    return _HISTORY_COLUMNS[kind]


def history(
    store: StoreBackend,
    kind: str,
    *,
    since: float,
    until: float,
    filter_text: str = "",
    limit: int | None = 1000,
) -> Iterator[dict[str, Any]]:
    """The rows of one kind in the period, oldest first (ties: by flow id, then insertion);
    addresses as text, protocols as words."""
    if kind not in _HISTORY_TABLE:
        raise FilterError(f"history: one of {', '.join(_HISTORY_TABLE)}, not {kind!r}")
    table = _HISTORY_TABLE[kind]
    cols = _HISTORY_COLUMNS[kind]
    where, params = filter_sql(filter_text, table)
    time_col = "time_end" if table == "flows" else "time"
    order = f"{time_col}, flow_id, id" if "flow_id" in cols else f"{time_col}, id"
    sql = (
        f"SELECT {', '.join(cols)} FROM {table} WHERE {time_col} >= ? AND {time_col} < ? "
        f"AND {where} ORDER BY {order}"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    for given, row in enumerate(store.raw_query(sql, [since, until, *params], since, until)):
        if limit is not None and given >= limit:
            return  # each partition had its own LIMIT: the first `limit` of them all
        out = dict(zip(cols, row, strict=True))
        for col in _ADDRESS_COLUMNS & out.keys():
            out[col] = format_addr(bytes(out[col]))
        if "proto" in out:
            out["proto"] = PROTO_WORDS.get(out["proto"], str(out["proto"]))
        yield out
