"""The store's two backends behind one Protocol: SQLite (a directory of files, one of raw
rows per day and one of rollups; stdlib sqlite3, WAL) and PostgreSQL (psycopg 3, one
database). `open_store(target)` picks one: a `postgresql://` (or `postgres://`) URL, else a
directory path.

Both run the same statements: written once with `?` placeholders and a few words each
dialect fills in (`Dialect`). What they give back is normalised here (PostgreSQL's SUM is a
numeric, its bytea a memoryview), so the report code above sees the same Python values.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from ips.store.records import RollupKey, Row, Sums
from ips.store.retention import Retention
from ips.store.schema import (
    DIMENSIONS,
    LEVELS,
    MIGRATIONS,
    RAW,
    RAW_TABLES,
    ROLLUP,
    SCHEMA_VERSION,
    pending,
)

DAY = 86400
RAW_FILE = re.compile(r"^raw-(\d{4}-\d{2}-\d{2})\.sqlite$")
ROLLUP_FILE = "rollup.sqlite"
BUSY_TIMEOUT_MS = 10_000  # several workers share the files: a writer waits its turn


class StoreError(Exception):
    """The store cannot be opened or used; the message says which and why."""


@dataclass(frozen=True)
class Dialect:
    name: str
    types: dict[str, str]
    greatest: str  # the scalar max of two values
    collate: str  # appended to a text ORDER BY: byte order in both

    def ddl(self, statement: str) -> str:
        """A statement of the schema in this dialect ("" when it is only the other's: a
        statement starting with {SQLITE} is SQLite's alone)."""
        if statement.startswith("{SQLITE}"):
            if self.name != "sqlite":
                return ""
            statement = statement.removeprefix("{SQLITE}")
        for word, value in self.types.items():
            statement = statement.replace("{" + word + "}", value)
        return statement

    def sql(self, statement: str) -> str:
        return statement


SQLITE = Dialect(
    "sqlite",
    {
        "ID": "INTEGER PRIMARY KEY",
        "REAL": "REAL",
        "BIGINT": "INTEGER",
        "BLOB": "BLOB",
        "WITHOUT_ROWID": " WITHOUT ROWID",
    },
    greatest="max",
    collate="",
)


class _PgDialect(Dialect):
    def sql(self, statement: str) -> str:
        return statement.replace("%", "%%").replace("?", "%s")


POSTGRES = _PgDialect(
    "postgresql",
    {
        "ID": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "REAL": "DOUBLE PRECISION",
        "BIGINT": "BIGINT",
        "BLOB": "BYTEA",
        "WITHOUT_ROWID": "",
    },
    greatest="GREATEST",
    collate=' COLLATE "C"',
)


@dataclass
class Batch:
    """What one transaction writes: raw rows by table, and the minute sums of its flows."""

    raw: dict[str, list[Row]] = field(default_factory=dict)
    minutes: dict[RollupKey, Sums] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.raw.values())


class StoreBackend(Protocol):
    """A place the store's rows go and its reports read from."""

    dialect: Dialect
    target: str

    def write(self, batch: Batch) -> None:
        """Write the batch: its raw rows and its rollups, committed (all or nothing per
        file), or raise."""

    def raw_query(
        self, sql: str, params: Sequence[Any], since: float, until: float
    ) -> Iterator[tuple[Any, ...]]:
        """Run a query on the raw tables of every partition that may hold rows of
        [since, until) (the SQL still has to say so itself), all their rows in turn."""

    def rollup_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    def expire(self, now: float, retention: Retention) -> dict[str, int]:
        """Delete what is older than its level's age at `now`: counts of rows (and files)."""

    def integrity(self) -> list[str]:
        """What the backend's own check finds wrong ([] when all is well)."""

    def close(self) -> None: ...


_INSERT = {
    table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for table, cols in RAW_TABLES.items()
}
_ROLLUP_COLS = (
    "bucket, dim, key, flows, packets, bytes, bytes_fwd, bytes_rev, peak_bytes, peak_packets"
)
_SUMS = "flows, packets, bytes, bytes_fwd, bytes_rev"
# A batch's minute sums go first into a temporary table of the connection (one plain insert
# per row, or COPY), then into the rollups with two set-wise upserts in the same
# transaction: the same SQL in both backends.
STAGE_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS rollup_stage (bucket {BIGINT} NOT NULL, "
    "dim TEXT NOT NULL, key TEXT NOT NULL, flows {BIGINT} NOT NULL, packets {BIGINT} NOT NULL, "
    "bytes {BIGINT} NOT NULL, bytes_fwd {BIGINT} NOT NULL, bytes_rev {BIGINT} NOT NULL)"
)
STAGE_INSERT = (
    f"INSERT INTO rollup_stage (bucket, dim, key, {_SUMS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _adds(table: str) -> str:
    return ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in _SUMS.split(", "))


def minute_upsert(d: Dialect) -> str:
    """The staged minutes added to rollup_1m. A minute's peak is itself (its new total), so
    reports read peak_* of either level the same way. (`WHERE 1 = 1`: SQLite's parser needs
    a WHERE before ON CONFLICT in an INSERT … SELECT.)"""
    return d.sql(
        f"INSERT INTO rollup_1m ({_ROLLUP_COLS}) SELECT bucket, dim, key, {_SUMS}, bytes, packets "
        "FROM rollup_stage WHERE 1 = 1 ORDER BY dim, bucket, key "
        f"ON CONFLICT (dim, bucket, key) DO UPDATE SET {_adds('rollup_1m')}, "
        "peak_bytes = rollup_1m.bytes + excluded.bytes, "
        "peak_packets = rollup_1m.packets + excluded.packets"
    )


def hour_upsert(d: Dialect, level: str = "1h") -> str:
    """The staged minutes summed into their hours (or days: level 1d), each one's peak
    candidate being the largest total of its minutes in the batch, read back from rollup_1m
    (just written, in the same transaction): so the peak is right whichever batch or worker
    wrote the minute's other flows."""
    size = LEVELS[level]
    table = f"rollup_{level}"
    return d.sql(
        f"INSERT INTO {table} ({_ROLLUP_COLS}) "
        f"SELECT s.bucket / {size} * {size} AS hour, s.dim, s.key, SUM(s.flows), "
        "SUM(s.packets), SUM(s.bytes), SUM(s.bytes_fwd), SUM(s.bytes_rev), MAX(m.bytes), "
        "MAX(m.packets) FROM rollup_stage s JOIN rollup_1m m "
        "ON m.dim = s.dim AND m.bucket = s.bucket AND m.key = s.key "
        f"WHERE 1 = 1 GROUP BY s.dim, s.bucket / {size} * {size}, s.key "
        "ORDER BY s.dim, hour, s.key "
        f"ON CONFLICT (dim, bucket, key) DO UPDATE SET {_adds(table)}, "
        f"peak_bytes = {d.greatest}({table}.peak_bytes, excluded.peak_bytes), "
        f"peak_packets = {d.greatest}({table}.peak_packets, excluded.peak_packets)"
    )


def stage_rows(minutes: dict[RollupKey, Sums]) -> list[tuple[Any, ...]]:
    """The staging table's rows of a batch's minute sums."""
    return [(bucket, dim, key, *sums) for (_level, bucket, dim, key), sums in minutes.items()]


def normalise(row: Sequence[Any]) -> tuple[Any, ...]:
    """PostgreSQL's values as SQLite's: numeric sums as int (or float), bytea as bytes."""
    out = []
    for v in row:
        if isinstance(v, Decimal):
            v = int(v) if v == v.to_integral_value() else float(v)
        elif isinstance(v, memoryview):
            v = bytes(v)
        out.append(v)
    return tuple(out)


MINUTE_UPSERT_SQLITE, HOUR_UPSERT_SQLITE = minute_upsert(SQLITE), hour_upsert(SQLITE)
MINUTE_UPSERT_POSTGRES, HOUR_UPSERT_POSTGRES = minute_upsert(POSTGRES), hour_upsert(POSTGRES)
DAY_UPSERT_SQLITE, DAY_UPSERT_POSTGRES = hour_upsert(SQLITE, "1d"), hour_upsert(POSTGRES, "1d")


def day_of(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def day_start(day: str) -> float:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


# ---- SQLite -------------------------------------------------------------------------------------


def _sqlite_connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL: a commit survives the process being killed (it is in the WAL, in
        # the kernel's hands); only a power loss can take the last commits back.
        conn.execute("PRAGMA synchronous = NORMAL")
    # The rollups' b-trees are updated all over at every batch: keep more of them in memory
    # (64 MiB a connection, instead of 2).
    conn.execute("PRAGMA cache_size = -65536")
    return conn


def migrate(execute: Any, fetch_version: Any, dialect: Dialect, parts: Iterable[str]) -> int:
    """Bring a store (one file, or PostgreSQL's database) to SCHEMA_VERSION, inside the
    caller's transaction. Returns the version it was at."""
    execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied TEXT)")
    applied = fetch_version()
    if applied > SCHEMA_VERSION:
        raise StoreError(
            f"the store is at schema version {applied}, newer than this ipsctl "
            f"({SCHEMA_VERSION}): upgrade ipsctl"
        )
    for migration in pending(applied, MIGRATIONS):
        for part in parts:
            for statement in migration.statements(part):
                made = dialect.ddl(statement)
                if made:  # "": a statement of the other dialect only
                    execute(made)
        execute(
            dialect.sql("INSERT INTO schema_version (version, applied) VALUES (?, ?)"),
            (migration.version, migration.summary),
        )
    return applied


class SqliteStore:
    """A directory: rollup.sqlite (the rollups) and raw-YYYY-MM-DD.sqlite (the raw rows of
    that UTC day, by their time: a flow by its last packet). Retention of raw rows deletes
    whole files, then the rows before the cutoff in the oldest file left."""

    dialect = SQLITE

    def __init__(self, directory: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.root = Path(directory)
        self.target = str(self.root)
        self.readonly = readonly
        self._days: dict[str, sqlite3.Connection] = {}
        self._lock = threading.Lock()
        try:
            if readonly:
                if not (self.root / ROLLUP_FILE).is_file():
                    raise StoreError(f"{self.root}: no store here (no {ROLLUP_FILE})")
            else:
                self.root.mkdir(mode=0o750, parents=True, exist_ok=True)
            self.rollup = self._open(self.root / ROLLUP_FILE, (ROLLUP,))
            if not readonly:
                # Every day's file brought forward now, not when a row of its day comes:
                # the readers open them read-only and ask for the newest columns.
                for _day, path in self.day_files():
                    self._open(path, (RAW,)).close()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{self.root}: {exc}") from None

    def _open(self, path: Path, parts: tuple[str, ...]) -> sqlite3.Connection:
        if not self.readonly and not path.exists():
            # Made here, 0640, not by SQLite with the umask's mode: the rows are the network's
            # history (its WAL and shared-memory files take the same mode).
            # (FileExistsError: another worker made it a moment ago.)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640))
        conn = _sqlite_connect(path, self.readonly)
        if self.readonly:
            return conn
        conn.execute("BEGIN IMMEDIATE")
        try:

            def version() -> int:
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                return int(row[0] or 0)

            migrate(conn.execute, version, SQLITE, parts)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        return conn

    def day_files(self) -> list[tuple[str, Path]]:
        found = []
        for path in self.root.iterdir():
            m = RAW_FILE.match(path.name)
            if m:
                found.append((m.group(1), path))
        return sorted(found)

    def _day(self, day: str) -> sqlite3.Connection:
        conn = self._days.get(day)
        if conn is None:
            conn = self._days[day] = self._open(self.root / f"raw-{day}.sqlite", (RAW,))
        return conn

    def write(self, batch: Batch) -> None:
        by_day: dict[str, dict[str, list[Row]]] = {}
        for table, rows in batch.raw.items():
            time_index = 1 if table == "flows" else 0  # flows go by their end
            for row in rows:
                by_day.setdefault(day_of(row[time_index]), {}).setdefault(table, []).append(row)
        with self._lock:
            for day, tables in sorted(by_day.items()):
                conn = self._day(day)
                conn.execute("BEGIN")
                try:
                    for table, rows in tables.items():
                        conn.executemany(_INSERT[table], rows)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            if batch.minutes:
                conn = self.rollup
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(SQLITE.ddl(STAGE_TABLE))
                    conn.executemany(STAGE_INSERT, stage_rows(batch.minutes))
                    conn.execute(MINUTE_UPSERT_SQLITE)
                    conn.execute(HOUR_UPSERT_SQLITE)
                    conn.execute(DAY_UPSERT_SQLITE)
                    conn.execute("DELETE FROM rollup_stage")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

    def raw_query(
        self, sql: str, params: Sequence[Any], since: float, until: float
    ) -> Iterator[tuple[Any, ...]]:
        first, last = day_of(max(since, 0)), day_of(max(until, 0))
        for day, path in self.day_files():
            if not (first <= day <= last):
                continue
            conn = _sqlite_connect(path, readonly=True)
            try:
                yield from conn.execute(sql, params)
            finally:
                conn.close()

    def rollup_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.rollup.execute(sql, params).fetchall()

    def expire(self, now: float, retention: Retention) -> dict[str, int]:
        cut = retention.cutoffs(now)
        gone = {"raw_files": 0, "raw_rows": 0, "1m": 0, "1h": 0, "1d": 0}
        with self._lock:
            raw_cut = cut["raw"]
            if raw_cut is not None:
                for day, path in self.day_files():
                    if day_start(day) + DAY <= raw_cut:
                        conn = self._days.pop(day, None)
                        if conn is not None:
                            conn.close()
                        for suffix in ("", "-wal", "-shm"):
                            Path(str(path) + suffix).unlink(missing_ok=True)
                        gone["raw_files"] += 1
                    elif day_start(day) < raw_cut:
                        conn = self._day(day)
                        conn.execute("BEGIN IMMEDIATE")
                        for table in RAW_TABLES:
                            col = "time_end" if table == "flows" else "time"
                            cur = conn.execute(f"DELETE FROM {table} WHERE {col} < ?", (raw_cut,))
                            gone["raw_rows"] += cur.rowcount
                        conn.execute("COMMIT")
            conn = self.rollup
            conn.execute("BEGIN IMMEDIATE")
            for level in ("1m", "1h", "1d"):
                level_cut = cut[level]
                if level_cut is not None:
                    for dim in DIMENSIONS:  # the primary key's prefix: no index of its own
                        cur = conn.execute(
                            f"DELETE FROM rollup_{level} WHERE dim = ? AND bucket < ?",
                            (dim, level_cut),
                        )
                        gone[level] += cur.rowcount
            conn.execute("COMMIT")
        return gone

    def integrity(self) -> list[str]:
        problems = []
        paths = [self.root / ROLLUP_FILE] + [p for _d, p in self.day_files()]
        for path in paths:
            conn = _sqlite_connect(path, readonly=True)
            try:
                result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            except sqlite3.Error as exc:
                result = [str(exc)]
            finally:
                conn.close()
            if result != ["ok"]:
                problems.append(f"{path.name}: {'; '.join(result)}")
        return problems

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())

    def close(self) -> None:
        with self._lock:
            for conn in self._days.values():
                conn.close()
            self._days.clear()
            self.rollup.close()


# ---- PostgreSQL ---------------------------------------------------------------------------------

MIGRATION_LOCK = 0x1F5C7  # pg_advisory_xact_lock key: one migrator at a time


class PostgresStore:
    """One PostgreSQL database (psycopg 3) with both parts; raw rows go in with COPY,
    rollups with the same upserts as SQLite's."""

    dialect: Dialect = POSTGRES

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError("PostgreSQL store: psycopg (3) is not installed") from None
        self.target = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)  # no password shown
        self._lock = threading.Lock()
        try:
            self.conn = psycopg.connect(url, autocommit=False)
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                if readonly:
                    has = self.conn.execute("SELECT to_regclass('schema_version')").fetchone()
                    if has is None or has[0] is None:
                        raise StoreError(f"{self.target}: no store here (no schema_version)")
                else:

                    def version() -> int:
                        row = self.conn.execute(
                            "SELECT MAX(version) FROM schema_version"
                        ).fetchone()
                        return int(row[0] or 0) if row else 0

                    migrate(self.conn.execute, version, POSTGRES, (RAW, ROLLUP))
        except psycopg.Error as exc:
            raise StoreError(f"{self.target}: {str(exc).strip()}") from None

    def write(self, batch: Batch) -> None:
        with self._lock, self.conn.transaction(), self.conn.cursor() as cur:
            for table, rows in batch.raw.items():
                if not rows:
                    continue
                cols = ", ".join(RAW_TABLES[table])
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            if batch.minutes:
                cur.execute(POSTGRES.ddl(STAGE_TABLE) + " ON COMMIT DELETE ROWS")
                with cur.copy(f"COPY rollup_stage (bucket, dim, key, {_SUMS}) FROM STDIN") as copy:
                    for row in stage_rows(batch.minutes):
                        copy.write_row(row)
                cur.execute(MINUTE_UPSERT_POSTGRES)
                cur.execute(HOUR_UPSERT_POSTGRES)
                cur.execute(DAY_UPSERT_POSTGRES)

    def raw_query(
        self, sql: str, params: Sequence[Any], since: float, until: float
    ) -> Iterator[tuple[Any, ...]]:
        with self._lock, self.conn.transaction():
            rows = self.conn.execute(POSTGRES.sql(sql), params).fetchall()
        for row in rows:
            yield normalise(row)

    def rollup_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock, self.conn.transaction():
            rows = self.conn.execute(POSTGRES.sql(sql), params).fetchall()
        return [normalise(r) for r in rows]

    def expire(self, now: float, retention: Retention) -> dict[str, int]:
        cut = retention.cutoffs(now)
        gone = {"raw_files": 0, "raw_rows": 0, "1m": 0, "1h": 0, "1d": 0}
        with self._lock, self.conn.transaction():
            raw_cut = cut["raw"]
            if raw_cut is not None:
                for table in RAW_TABLES:
                    col = "time_end" if table == "flows" else "time"
                    cur = self.conn.execute(f"DELETE FROM {table} WHERE {col} < %s", (raw_cut,))
                    gone["raw_rows"] += cur.rowcount
            for level in ("1m", "1h", "1d"):
                level_cut = cut[level]
                if level_cut is not None:
                    for dim in DIMENSIONS:
                        cur = self.conn.execute(
                            f"DELETE FROM rollup_{level} WHERE dim = %s AND bucket < %s",
                            (dim, level_cut),
                        )
                        gone[level] += cur.rowcount
        return gone

    def integrity(self) -> list[str]:
        # PostgreSQL's WAL recovery makes a crash consistent; what is left to check is that
        # the schema is the one expected.
        with self._lock, self.conn.transaction():
            row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = int(row[0] or 0) if row else 0
        return [] if version == SCHEMA_VERSION else [f"schema version {version}"]

    def size(self) -> int:
        with self._lock, self.conn.transaction():
            row = self.conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self.conn.close()


def is_postgres(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def open_store(target: str, *, readonly: bool = False) -> SqliteStore | PostgresStore:
    """The store at target (a directory, or a postgresql:// URL); StoreError if it cannot
    be opened (or, readonly, if there is no store there)."""
    if is_postgres(target):
        return PostgresStore(target, readonly=readonly)
    return SqliteStore(target, readonly=readonly)
