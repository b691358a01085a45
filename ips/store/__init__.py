"""The flow and event store: what outlives the EVE files (docs/store.md).

schema.py     tables and migrations (one DDL for both backends)
records.py    the engine's effects as rows; the rollups' sums (pure)
retention.py  how long each level is kept (pure: decisions take `now`)
backend.py    StoreBackend: SQLite (a file per day + a rollup file), PostgreSQL
sink.py       StoreSink: a bounded queue and a writer thread, or synchronous (replay's)
writer.py     ProcessStoreSink: the daemon's writer in a process of its own, fed by a pipe
query.py      top, volume, history over either backend, with `flows`' filter grammar
"""
