"""The control plane's SQLite database: monitors, results, runs, events, alerts, last-seen times.

Every query runs on one worker thread (:class:`Store`), so the event loop never waits on the
disk. The schema has a number, kept in SQLite's ``user_version``: a database of an older schema
is migrated in place when opened, one of a newer one is refused.

Times stored here are wall-clock Unix seconds (``time.time()``), except ``events.monotonic``,
which keeps the monotonic readings that schema 1 stored in ``events.at`` (they are not times).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from ..alerting import _outbox as outbox
from ._logic import Alert, MonitorSpec, SitePolicy

if TYPE_CHECKING:
    from .._secret import Secret

__all__ = ["PRUNED_TABLES", "SCHEMA_VERSION", "Connection", "Store", "is_postgres"]

log = logging.getLogger("probekit.control")
T = TypeVar("T")

#: The schema this version writes. 1 was the first (user_version 0, before versions were kept);
#: 3 adds the indexes retention prunes by; 4 the alert outbox; 5 the site policies.
SCHEMA_VERSION: Final = 5

_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS monitors (
        monitor_id TEXT PRIMARY KEY, checkpoint_id TEXT NOT NULL, interval REAL NOT NULL,
        revision INTEGER NOT NULL, definition TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS results (
        result_id TEXT PRIMARY KEY, monitor_id TEXT, checkpoint_id TEXT, instance_id TEXT,
        request_id TEXT, reason TEXT, status TEXT, error_kind TEXT, started_at TEXT,
        stored_at REAL, body TEXT)""",
    "CREATE INDEX IF NOT EXISTS results_monitor ON results (monitor_id, started_at)",
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, subject TEXT, at REAL, message TEXT,
        alert_id TEXT, alert_kind TEXT, monotonic REAL)""",
    # Schema 2 --------------------------------------------------------------------------------
    # Every alert, open (resolved_at NULL) or not; ``scope`` is what else keys it (the run
    # reason of a kind_unavailable alert).
    """CREATE TABLE IF NOT EXISTS alerts (
        alert_id TEXT PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL, scope TEXT,
        opened_at REAL NOT NULL, message TEXT NOT NULL, resolved_at REAL)""",
    "CREATE INDEX IF NOT EXISTS alerts_open ON alerts (resolved_at)",
    # Every run sent: a result answering one is genuine even after a restart.
    """CREATE TABLE IF NOT EXISTS runs (
        request_id TEXT PRIMARY KEY, instance_id TEXT NOT NULL, checkpoint_id TEXT NOT NULL,
        monitor_id TEXT, reason TEXT NOT NULL, sent_at REAL NOT NULL, deadline REAL)""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        checkpoint_id TEXT PRIMARY KEY, last_seen REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS instances (
        instance_id TEXT PRIMARY KEY, checkpoint_id TEXT NOT NULL, last_seen REAL NOT NULL)""",
    # The last revision each monitor id had, kept after the monitor is removed, so that a
    # monitor added again under the same id never reuses a revision an instance may hold.
    """CREATE TABLE IF NOT EXISTS revisions (
        monitor_id TEXT PRIMARY KEY, revision INTEGER NOT NULL)""",
    # Schema 3 --------------------------------------------------------------------------------
    # What retention prunes by: each table's time, so finding old rows reads an index.
    "CREATE INDEX IF NOT EXISTS results_stored ON results (stored_at)",
    "CREATE INDEX IF NOT EXISTS events_at ON events (at)",
    "CREATE INDEX IF NOT EXISTS runs_sent ON runs (sent_at)",
    "CREATE INDEX IF NOT EXISTS alerts_resolved ON alerts (resolved_at)",
    # Schema 4 --------------------------------------------------------------------------------
    # The alert channels' outbox: each event a channel is to deliver, written in the same
    # transaction as the event (and the alert state change) it announces; deleted once
    # delivered (or dropped). ``event_id`` is the event's stable id.
    """CREATE TABLE IF NOT EXISTS alert_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, event_id TEXT NOT NULL,
        event TEXT NOT NULL, created REAL NOT NULL, due REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT)""",
    "CREATE INDEX IF NOT EXISTS alert_outbox_channel ON alert_outbox (channel, id)",
    # Schema 5 --------------------------------------------------------------------------------
    # The monitors watched from several checkpoints (SitePolicy): ``locations`` a JSON list.
    """CREATE TABLE IF NOT EXISTS sites (
        monitor_id TEXT PRIMARY KEY, locations TEXT NOT NULL, min_failing INTEGER NOT NULL)""",
)


def _prepare(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"the control-plane database was written by a newer probekit (schema {version}; "
            f"this version reads up to {SCHEMA_VERSION}); refusing to touch it"
        )
    conn.execute("PRAGMA journal_mode=WAL")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "events" in tables:  # schema 1: ``at`` held monotonic readings, not times
            columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
            if "monotonic" not in columns:
                conn.execute("ALTER TABLE events ADD COLUMN monotonic REAL")
                conn.execute("UPDATE events SET monotonic = at, at = NULL")
        for statement in _TABLES:
            conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO revisions (monitor_id, revision) "
            "SELECT monitor_id, revision FROM monitors"
        )
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    if tables:
        log.info(
            "migrated the control-plane database from schema %d to %d",
            max(version, 1),
            SCHEMA_VERSION,
        )


class Cursor(Protocol):
    """What the queries read from a cursor (sqlite3's and psycopg's both fit)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The connection every query function takes: a :class:`sqlite3.Connection` or a
    :class:`probekit.control._pgstore.PgConnection`. ``?`` placeholders; ``with c:`` is one
    transaction, committed at the end or rolled back on an exception."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Cursor: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


def is_postgres(db: str) -> bool:
    """Whether ``db`` names a PostgreSQL database (a ``postgresql://`` URL) rather than a
    SQLite file."""
    return db.startswith(("postgresql://", "postgres://"))


def is_pg(c: Connection) -> bool:
    """Whether ``c`` is a PostgreSQL connection (the few queries that differ ask)."""
    return getattr(c, "dialect", "sqlite") == "postgresql"


def rowid(c: Connection) -> str:
    """The column that orders a table's rows as inserted (results and alerts)."""
    return "seq" if is_pg(c) else "rowid"


class Store:
    """The control plane's database on one worker thread, so the event loop never waits on it.

    ``db`` is a SQLite file (``:memory:`` for a throwaway one), or a ``postgresql://`` URL
    (:mod:`psycopg`, the ``probekit[postgres-store]`` extra; ``password`` then goes to the server
    apart from the URL, which must not hold one). :attr:`errors` are the exceptions a failing
    query raises."""

    def __init__(self, db: str, password: Secret | None = None) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="probekit-control-db"
        )
        self._conn: Connection | None = None
        self._db = db
        self._password = password
        self.postgres = is_postgres(db)
        self.errors: tuple[type[Exception], ...] = (sqlite3.Error,)
        if self.postgres:
            from ._pgstore import errors

            self.errors = (sqlite3.Error, *errors())

    async def call(self, fn: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn)

    def _run(self, fn: Callable[[Connection], T]) -> T:
        if self._conn is None:
            if self.postgres:
                from ._pgstore import connect

                self._conn = connect(self._db, self._password)
            else:
                conn = sqlite3.connect(self._db)
                try:
                    _prepare(conn)
                except BaseException:
                    conn.close()
                    raise
                self._conn = conn
        return fn(self._conn)

    async def close(self) -> None:
        def shut(conn: Connection) -> None:
            conn.close()  # type: ignore[attr-defined]

        if self._conn is not None:
            await self.call(shut)
            self._conn = None
        self._pool.shutdown(wait=True)


# -- the active lock (a standby control plane, PostgreSQL only) --------------------------------

#: The advisory lock the active control plane holds on its connection (a session lock: freed
#: when the connection ends, however the process ends).
ACTIVE_LOCK: Final = 0x70726F62656B6975


def try_active_lock(c: Connection) -> bool:
    """Take the active lock if it is free (PostgreSQL); True when this connection holds it."""
    if not is_pg(c):
        raise ValueError("a standby control plane needs PostgreSQL")
    return bool(c.execute("SELECT pg_try_advisory_lock(?)", (ACTIVE_LOCK,)).fetchone()[0])


def holds_active_lock(c: Connection) -> bool:
    """Whether this connection still holds the active lock (it raises when the connection is
    gone)."""
    row = c.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
        "AND granted AND ((classid::bigint << 32) | objid::bigint) = ?",
        (ACTIVE_LOCK,),
    ).fetchone()
    return bool(row[0])


# -- monitors ---------------------------------------------------------------------------------


def load_monitors(c: Connection) -> list[MonitorSpec]:
    rows = c.execute(
        "SELECT monitor_id, checkpoint_id, interval, revision, definition FROM monitors"
    )
    return [MonitorSpec(m, cp, i, json.loads(d), r) for m, cp, i, r, d in rows]


def load_revisions(c: Connection) -> dict[str, int]:
    return {str(m): int(r) for m, r in c.execute("SELECT monitor_id, revision FROM revisions")}


def save_monitor(c: Connection, spec: MonitorSpec) -> None:
    with c:
        c.execute(
            "INSERT INTO monitors (monitor_id, checkpoint_id, interval, revision, definition) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (monitor_id) DO UPDATE SET "
            "checkpoint_id=excluded.checkpoint_id, interval=excluded.interval, "
            "revision=excluded.revision, definition=excluded.definition",
            (
                spec.monitor_id,
                spec.checkpoint_id,
                spec.interval,
                spec.revision,
                json.dumps(spec.definition),
            ),
        )
        c.execute(
            "INSERT INTO revisions (monitor_id, revision) VALUES (?, ?) "
            "ON CONFLICT (monitor_id) DO UPDATE SET revision=excluded.revision",
            (spec.monitor_id, spec.revision),
        )


def delete_monitor(c: Connection, monitor_id: str) -> None:
    with c:
        c.execute("DELETE FROM monitors WHERE monitor_id=?", (monitor_id,))


# -- site policies ----------------------------------------------------------------------------


def load_sites(c: Connection) -> list[SitePolicy]:
    rows = c.execute("SELECT monitor_id, locations, min_failing FROM sites ORDER BY monitor_id")
    return [SitePolicy(str(m), tuple(json.loads(loc)), int(n)) for m, loc, n in rows]


def save_sites(c: Connection, policies: Iterable[SitePolicy]) -> None:
    with c:
        for policy in policies:
            c.execute(
                "INSERT INTO sites (monitor_id, locations, min_failing) VALUES (?, ?, ?) "
                "ON CONFLICT (monitor_id) DO UPDATE SET locations=excluded.locations, "
                "min_failing=excluded.min_failing",
                (policy.monitor_id, json.dumps(list(policy.locations)), policy.min_failing),
            )


def delete_sites(c: Connection, monitor_id: str) -> None:
    with c:
        c.execute("DELETE FROM sites WHERE monitor_id=?", (monitor_id,))


# -- results and runs -------------------------------------------------------------------------


#: The columns of a results row, in the order :func:`insert_results` takes them.
RESULT_ROW: Final = (
    "result_id",
    "monitor_id",
    "checkpoint_id",
    "instance_id",
    "request_id",
    "reason",
    "status",
    "error_kind",
    "started_at",
    "stored_at",
    "body",
)
_INSERT_RESULT: Final = (
    f"INSERT INTO results ({', '.join(RESULT_ROW)}) "  # noqa: S608 - fixed columns
    f"VALUES ({', '.join('?' * len(RESULT_ROW))}) ON CONFLICT DO NOTHING"
)


def insert_results(c: Connection, rows: list[tuple[Any, ...]]) -> set[str]:
    fresh: set[str] = set()
    with c:
        for row in rows:
            cur = c.execute(_INSERT_RESULT, row)
            if cur.rowcount:
                fresh.add(row[0])
    return fresh


def insert_runs(c: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Rows of (request_id, instance_id, checkpoint_id, monitor_id, reason, sent_at, deadline)."""
    with c:
        c.executemany(
            "INSERT INTO runs (request_id, instance_id, checkpoint_id, monitor_id, reason, "
            "sent_at, deadline) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rows,
        )


def find_runs(c: Connection, request_ids: Iterable[str]) -> dict[str, tuple[str, str | None, str]]:
    """The runs on record among ``request_ids``: request id -> (instance, monitor, reason)."""
    found: dict[str, tuple[str, str | None, str]] = {}
    for request_id in set(request_ids):
        row = c.execute(
            "SELECT instance_id, monitor_id, reason FROM runs WHERE request_id=?", (request_id,)
        ).fetchone()
        if row is not None:
            found[request_id] = (str(row[0]), row[1], str(row[2]))
    return found


# -- events and alerts ------------------------------------------------------------------------


#: One outbox entry to write: (channel, event id, event JSON, now, the channel's max_pending).
OutboxRow = tuple[str, str, str, float, int]


def record_event(
    c: Connection,
    row: tuple[Any, ...],
    opened: tuple[Alert, str | None] | None,
    resolved: tuple[str, float] | None,
    entries: Sequence[OutboxRow] = (),
) -> dict[str, int]:
    """Store an event (kind, subject, at, message, alert_id, alert_kind) and, in the same
    transaction, the alert it opens (with its scope) or the id and time of the one it resolves,
    and the outbox ``entries`` announcing it to the alert channels. Returns, per channel, the
    entries dropped to keep it within its ``max_pending`` (the oldest)."""
    with c:
        dropped = {}
        for channel, event_id, body, now, max_pending in entries:
            dropped[channel] = outbox.add_entry(c, channel, event_id, body, now, max_pending)
        c.execute(
            "INSERT INTO events (kind, subject, at, message, alert_id, alert_kind)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            row,
        )
        if opened is not None:
            alert, scope = opened
            c.execute(
                "INSERT INTO alerts (alert_id, kind, subject, scope, opened_at, message, "
                "resolved_at) VALUES (?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (alert_id) DO UPDATE "
                "SET kind=excluded.kind, subject=excluded.subject, scope=excluded.scope, "
                "opened_at=excluded.opened_at, message=excluded.message, resolved_at=NULL",
                (alert.alert_id, alert.kind, alert.subject, scope, alert.opened_at, alert.message),
            )
        if resolved is not None:
            c.execute(
                "UPDATE alerts SET resolved_at=? WHERE alert_id=? AND resolved_at IS NULL",
                (resolved[1], resolved[0]),
            )
    return {channel: n for channel, n in dropped.items() if n}


def load_open_alerts(c: Connection) -> list[tuple[Alert, str | None]]:
    rows = c.execute(
        "SELECT alert_id, kind, subject, opened_at, message, scope FROM alerts "
        "WHERE resolved_at IS NULL ORDER BY opened_at"
    )
    return [
        (Alert(str(alert_id), kind, str(subject), float(opened_at), str(message)), scope)
        for alert_id, kind, subject, opened_at, message, scope in rows
    ]


ALERT_COLUMNS: Final = (
    "alert_id",
    "kind",
    "subject",
    "scope",
    "opened_at",
    "message",
    "resolved_at",
)


def query_alerts(c: Connection, open_only: bool) -> list[dict[str, Any]]:
    sql = f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts"  # noqa: S608 - fixed columns
    if open_only:
        sql += " WHERE resolved_at IS NULL"
    rows = c.execute(sql + f" ORDER BY opened_at, {rowid(c)}")
    return [dict(zip(ALERT_COLUMNS, row, strict=True)) for row in rows]


# -- last seen --------------------------------------------------------------------------------


def save_seen(c: Connection, seen: Iterable[tuple[str, str, float]]) -> None:
    """Record (instance, checkpoint, wall-clock time) sightings; times only move forward."""
    with c:
        for instance_id, checkpoint_id, at in seen:
            c.execute(
                "INSERT INTO instances (instance_id, checkpoint_id, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (instance_id) DO UPDATE SET checkpoint_id=excluded.checkpoint_id, "
                "last_seen=CASE WHEN excluded.last_seen > instances.last_seen "
                "THEN excluded.last_seen ELSE instances.last_seen END",
                (instance_id, checkpoint_id, at),
            )
            c.execute(
                "INSERT INTO checkpoints (checkpoint_id, last_seen) VALUES (?, ?) "
                "ON CONFLICT (checkpoint_id) DO UPDATE SET "
                "last_seen=CASE WHEN excluded.last_seen > checkpoints.last_seen "
                "THEN excluded.last_seen ELSE checkpoints.last_seen END",
                (checkpoint_id, at),
            )


def load_seen(
    c: Connection,
) -> tuple[dict[str, float], dict[str, tuple[str, float]]]:
    """(checkpoint -> last seen, instance -> (checkpoint, last seen))."""
    checkpoints = {
        str(k): float(t) for k, t in c.execute("SELECT checkpoint_id, last_seen FROM checkpoints")
    }
    instances = {
        str(i): (str(k), float(t))
        for i, k, t in c.execute("SELECT instance_id, checkpoint_id, last_seen FROM instances")
    }
    return checkpoints, instances


# -- retention --------------------------------------------------------------------------------

#: The tables retention prunes, each with the wall-clock column that dates a row and the
#: condition a row must also meet (an open alert is never pruned, however old).
PRUNED_TABLES: Final = {
    "results": ("stored_at", ""),
    "events": ("at", ""),
    "runs": ("sent_at", ""),
    "alerts": ("resolved_at", " AND resolved_at IS NOT NULL"),
}


def prune_batch(c: Connection, table: str, cutoff: float, limit: int) -> int:
    """Delete at most ``limit`` rows of ``table`` dated before ``cutoff``, in one statement and
    one transaction; returns how many were deleted."""
    column, extra = PRUNED_TABLES[table]
    row = "ctid" if is_pg(c) else "rowid"  # PostgreSQL: the row's physical address
    sql = (
        f"DELETE FROM {table} WHERE {row} IN (SELECT {row} FROM {table} "  # noqa: S608 - fixed names
        f"WHERE {column} < ?{extra} ORDER BY {column} LIMIT ?)"
    )
    with c:
        return c.execute(sql, (cutoff, limit)).rowcount


def vacuum(c: Connection, tables: Iterable[str]) -> None:
    """PostgreSQL: make the space of the rows just pruned reusable at once (``VACUUM``, not
    waiting for autovacuum), so the tables stay the same size at a steady rate. SQLite reuses
    freed pages by itself: nothing to do."""
    if is_pg(c):
        for table in tables:
            if table in PRUNED_TABLES:
                c.execute(f"VACUUM {table}")


def oldest(c: Connection) -> float | None:
    """The wall-clock time of the oldest prunable row of any pruned table (read from the
    indexes), or None when there is none."""
    times = []
    for table, (column, _extra) in PRUNED_TABLES.items():
        row = c.execute(f"SELECT min({column}) FROM {table}").fetchone()  # noqa: S608 - fixed names
        if row[0] is not None:
            times.append(float(row[0]))
    return min(times, default=None)


def size_bytes(c: Connection) -> int:
    """The database's size in bytes (SQLite: pages in use or free, times the page size;
    PostgreSQL: the control plane's tables with their indexes and TOAST)."""
    if is_pg(c):
        row = c.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        ).fetchone()
        return int(row[0])
    pages = c.execute("PRAGMA page_count").fetchone()[0]
    size = c.execute("PRAGMA page_size").fetchone()[0]
    return int(pages) * int(size)
