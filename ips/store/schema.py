"""The store's schema: its tables, written once for both backends, and its migrations.

The DDL below is written in the SQL that SQLite and PostgreSQL share, with a few type words
in braces that each backend's `Dialect` fills in ({BLOB}: BLOB or BYTEA, {REAL}: REAL or
DOUBLE PRECISION, {BIGINT}: INTEGER or BIGINT, {ID}: the row id). Addresses are the raw 4 or
16 bytes the engine holds (a BLOB or BYTEA): a network in a filter is a range of them
(`src BETWEEN low AND high AND length(src) = 4`), which both backends answer from an index
by comparing bytes; reports format them as text at the end.

Tables are in two parts: `raw` (one row per flow record, alert, block or unblock, log
record and application event; the SQLite backend keeps one file of them per day, so raw
retention deletes a file) and `rollup` (the per-minute and per-hour sums, kept in one file).
PostgreSQL holds both parts in one database.

A migration is a version number and the statements of each part that bring a store from
the version before to it. `schema_version` holds the versions applied; a store opened by an
older ipsctl is brought forward when it is opened, in one transaction per file.
"""

from __future__ import annotations

from dataclasses import dataclass

RAW, ROLLUP = "raw", "rollup"

FLOW_COLUMNS = (
    "time_start",  # the flow's first packet (seconds since the epoch, UTC)
    "time_end",  # its last packet: the time reports and retention go by
    "flow_id",
    "family",
    "proto",
    "src",
    "sport",
    "dst",
    "dport",
    "app_proto",  # EVE's word: tls, http, dns, ssh, quic, failed; NULL: none found
    "pkts_fwd",
    "pkts_rev",
    "bytes_fwd",
    "bytes_rev",
    "iface",
    "reason",  # why the flow ended: timeout, closed, evicted, reused, shutdown
    "replied",  # 1: the responder answered (state established)
    "offloaded",  # 1: the kernel carried the rest (counts: conntrack's when it gave them)
    "direction",  # in, out, internal, external (against the protected networks)
    "sni",
    "http_host",
    "dst_name",
    "community_id",
    # Who is on the other end (schema version 2, ips/geo/enrich.py): NULL when the geo data
    # has no answer (a private address, a missing database) or the port has no IANA name.
    "src_country",  # ISO 3166 code, e.g. DE
    "src_asn",
    "dst_country",
    "dst_asn",
    "service",  # the IANA name of the responder's port, e.g. postgresql for 5432/tcp
    # Version 3: the interface the flow went out on (inline); `iface` is the one it came
    # in on (inline) or the interface read (tap). NULL when not known.
    "out_iface",
)
# What every row about one packet starts with (alerts, log records): when, which flow, and
# the packet's addresses and ports as the event gives them.
PACKET_COLUMNS = (
    "time",
    "flow_id",
    "family",
    "proto",
    "src",
    "sport",
    "dst",
    "dport",
)
ALERT_COLUMNS = (
    *PACKET_COLUMNS,
    "action",
    "signature_id",
    "signature",
    "severity",
    "category",
    "rule_name",
    "app_proto",
    "dst_name",
    "community_id",
    "iface",
    "extra",  # JSON text: a detector's details, a rule's reputation lists
)
BLOCK_COLUMNS = (
    "time",
    "kind",  # block, unblock, mac_block
    "addr",
    "table_name",
    "detector",
    "offense",
    "ttl",
    "reason",  # a block's line for humans; an unblock's expired, manual or flush
    "mac",
)
LOG_COLUMNS = (
    *PACKET_COLUMNS,
    "verdict",
    "rule_name",
    "dst_name",
    "community_id",
    "iface",
)
APP_COLUMNS = (
    "time",
    "flow_id",
    "event_type",  # tls, quic, dns, http, ssh
    "family",
    "proto",
    "src",
    "sport",
    "dst",
    "dport",
    "tx_id",
    "name",  # the SNI (tls, quic), the query name (dns), the Host (http)
    "dns_type",  # query or answer
    "dns_rcode",
    "http_method",
    "http_url",
    "http_status",
    "tls_version",
    "ja3",
    "ja4",
    "community_id",
    "iface",
    "body",  # the EVE object as JSON text, Suricata's field names
)
RAW_TABLES = {
    "flows": FLOW_COLUMNS,
    "alerts": ALERT_COLUMNS,
    "blocks": BLOCK_COLUMNS,
    "logs": LOG_COLUMNS,
    "app_events": APP_COLUMNS,
}
# The dimensions of the rollups: each flow adds to one row per dimension and level (`all`
# is the total, key ""). interface: the flow's way in and (version 3, inline) way out, each
# distinct one once. port is "DPORT/PROTO"; app, sni and dst_name only when known.
# country and asn (version 2): the countries (DE) and AS numbers (AS3320) of the flow's
# ends, each distinct one once: a flow from DE to US adds to both, one within DE to DE once.
DIMENSIONS = (
    "all", "src", "dst", "port", "proto", "interface", "direction", "app", "sni", "country",
    "asn",
)  # fmt: skip
ROLLUP_COLUMNS = ("bucket", "dim", "key", "flows", "packets", "bytes", "bytes_fwd", "bytes_rev")
LEVELS = {"1m": 60, "1h": 3600}


V1_RAW = (
    """CREATE TABLE flows (
        id {ID},
        time_start {REAL} NOT NULL, time_end {REAL} NOT NULL, flow_id {BIGINT} NOT NULL,
        family INTEGER NOT NULL, proto INTEGER NOT NULL,
        src {BLOB} NOT NULL, sport INTEGER NOT NULL, dst {BLOB} NOT NULL, dport INTEGER NOT NULL,
        app_proto TEXT,
        pkts_fwd {BIGINT} NOT NULL, pkts_rev {BIGINT} NOT NULL,
        bytes_fwd {BIGINT} NOT NULL, bytes_rev {BIGINT} NOT NULL,
        iface TEXT, reason TEXT NOT NULL, replied INTEGER NOT NULL, offloaded INTEGER NOT NULL,
        direction TEXT NOT NULL, sni TEXT, http_host TEXT, dst_name TEXT, community_id TEXT)""",
    "CREATE INDEX flows_time ON flows (time_end)",
    "CREATE INDEX flows_src ON flows (src, time_end)",  # `--filter src/host A`: no scan
    """CREATE TABLE alerts (
        id {ID},
        time {REAL} NOT NULL, flow_id {BIGINT} NOT NULL, family INTEGER NOT NULL,
        proto INTEGER NOT NULL, src {BLOB} NOT NULL, sport INTEGER NOT NULL,
        dst {BLOB} NOT NULL, dport INTEGER NOT NULL,
        action TEXT NOT NULL, signature_id {BIGINT} NOT NULL, signature TEXT NOT NULL,
        severity INTEGER NOT NULL, category TEXT NOT NULL, rule_name TEXT NOT NULL,
        app_proto TEXT, dst_name TEXT, community_id TEXT, iface TEXT, extra TEXT)""",
    "CREATE INDEX alerts_time ON alerts (time)",
    """CREATE TABLE blocks (
        id {ID},
        time {REAL} NOT NULL, kind TEXT NOT NULL, addr {BLOB} NOT NULL, table_name TEXT NOT NULL,
        detector TEXT, offense INTEGER, ttl {REAL}, reason TEXT, mac TEXT)""",
    "CREATE INDEX blocks_time ON blocks (time)",
    """CREATE TABLE logs (
        id {ID},
        time {REAL} NOT NULL, flow_id {BIGINT} NOT NULL, family INTEGER NOT NULL,
        proto INTEGER NOT NULL, src {BLOB} NOT NULL, sport INTEGER NOT NULL,
        dst {BLOB} NOT NULL, dport INTEGER NOT NULL,
        verdict TEXT NOT NULL, rule_name TEXT NOT NULL, dst_name TEXT, community_id TEXT,
        iface TEXT)""",
    "CREATE INDEX logs_time ON logs (time)",
    """CREATE TABLE app_events (
        id {ID},
        time {REAL} NOT NULL, flow_id {BIGINT} NOT NULL, event_type TEXT NOT NULL,
        family INTEGER NOT NULL, proto INTEGER NOT NULL, src {BLOB} NOT NULL,
        sport INTEGER NOT NULL, dst {BLOB} NOT NULL, dport INTEGER NOT NULL, tx_id {BIGINT},
        name TEXT, dns_type TEXT, dns_rcode TEXT, http_method TEXT, http_url TEXT,
        http_status INTEGER, tls_version TEXT, ja3 TEXT, ja4 TEXT, community_id TEXT,
        iface TEXT, body TEXT NOT NULL)""",
    "CREATE INDEX app_events_time ON app_events (time)",
)
_ROLLUP_TABLE = """CREATE TABLE {table} (
        bucket {BIGINT} NOT NULL, dim TEXT NOT NULL, key TEXT NOT NULL,
        flows {BIGINT} NOT NULL, packets {BIGINT} NOT NULL, bytes {BIGINT} NOT NULL,
        bytes_fwd {BIGINT} NOT NULL, bytes_rev {BIGINT} NOT NULL,
        peak_bytes {BIGINT} NOT NULL, peak_packets {BIGINT} NOT NULL,
        PRIMARY KEY (dim, bucket, key))"""
V1_ROLLUP = (
    _ROLLUP_TABLE.replace("{table}", "rollup_1m"),
    _ROLLUP_TABLE.replace("{table}", "rollup_1h"),
)


@dataclass(frozen=True)
class Migration:
    """What brings a store from version - 1 to version: the statements of each part."""

    version: int
    summary: str
    raw: tuple[str, ...]
    rollup: tuple[str, ...]

    def statements(self, part: str) -> tuple[str, ...]:
        return self.raw if part == RAW else self.rollup


# Version 2: the countries, AS numbers and service name of a flow. One column per ALTER
# (SQLite's rule); rows written before have NULL there. The rollups need no change: the new
# dimensions are keys of the same tables (from version 2 on, for the flows written since).
V2_RAW = tuple(
    f"ALTER TABLE flows ADD COLUMN {column} {kind}"
    for column, kind in (
        ("src_country", "TEXT"),
        ("src_asn", "{BIGINT}"),
        ("dst_country", "TEXT"),
        ("dst_asn", "{BIGINT}"),
        ("service", "TEXT"),
    )
)

# Version 3: an inline flow's way out (its way in is `iface`). The rollups need no change:
# a flow adds to the `interface` dimension of each of its interfaces once.
V3_RAW = ("ALTER TABLE flows ADD COLUMN out_iface TEXT",)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "flows, alerts, blocks, logs, app events; 1m and 1h rollups", V1_RAW, V1_ROLLUP),
    Migration(2, "flows: src/dst country and AS number, service name", V2_RAW, ()),
    Migration(3, "flows: the interface a flow went out on", V3_RAW, ()),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def pending(applied: int, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[Migration]:
    """The migrations a store at version `applied` still needs, in order. A store newer than
    this ipsctl is refused by the caller (it cannot know what the newer tables mean)."""
    return [m for m in migrations if m.version > applied]
