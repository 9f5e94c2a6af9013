"""The checkpoint's durable result spool: results wait here until the control plane acks them.

A :class:`Spool` is one SQLite database in WAL mode. Every result goes in (``put_many``) before it
is sent, is read back oldest first (``pending``) to be sent, and leaves only when its id is acked
(``ack``). Together with the control plane deduplicating by result id, that makes delivery
effectively exactly-once across crashes, ``kill -9`` and long outages.

What it promises:

- **Durable on commit.** When ``put``/``put_many`` returns, the entries are committed. With the
  default ``synchronous="NORMAL"`` in WAL mode a commit survives the process dying at any moment
  (``kill -9`` included: the WAL frames are already in the operating system's page cache), and the
  database is never corrupted; a power loss or kernel crash may roll back the last few commits.
  ``synchronous="FULL"`` fsyncs the WAL on every commit, so commits also survive power loss, at
  the cost of one fsync per transaction (which is why callers should write in batches).
- **Atomic batches.** One ``put_many`` or ``ack`` call is one transaction: after a crash it is
  either wholly there or wholly absent.
- **Idempotent.** Putting an id that is already spooled does nothing; acking an unknown id does
  nothing. Redelivery after a crash is therefore harmless on this side too.
- **Bounded, and honest about it.** At most ``max_entries`` entries are kept. A put that would go
  beyond evicts the *oldest* entries, adds their number to a ``dropped`` counter stored in the
  database (so it survives restarts), and logs one WARNING per batch on ``probekit.spool``.
- **Payload-agnostic.** The spool stores the text or bytes it is given (normally the JSON form of
  a result envelope) and gives back exactly that, with the same type.
- **Keeps the checkpoint's definitions too** (schema 2): ``save_definitions`` replaces the
  monitor definitions last received and ``load_definitions`` reads them back, so an instance
  restarted while its control plane is away still has something to run. A schema-1 spool is
  upgraded in place when opened (its entries kept).
- **Never destroys what it does not recognise.** A file that is not SQLite, an SQLite database
  that is not a spool, or a spool written by a newer probekit is refused with :class:`SpoolError`
  naming the path; nothing is changed or deleted.

SQLite is blocking, and its connections belong to the thread that made them. :class:`Spool` is the
plain synchronous API (tools, tests, threads of their own); :class:`AsyncSpool` offers the same
operations as coroutines that run on one dedicated worker thread owning the one connection, so an
event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator
from types import TracebackType
from typing import Final, Literal, Self, TypeAlias, TypeVar

import attrs

from .._clock import Clock, SystemClock
from .._exceptions import SpoolError

__all__ = ["SPOOL_SCHEMA", "AsyncSpool", "Entry", "Spool", "SpoolError", "SpoolItem"]

log = logging.getLogger("probekit.spool")

#: The spool's on-disk schema number, kept in SQLite's ``user_version``.
SPOOL_SCHEMA: Final = 2

# Stored in SQLite's header (``PRAGMA application_id``) so that a spool is recognisable as one and
# no other application's database is mistaken for an empty spool. The bytes spell "pkSp".
_APPLICATION_ID: Final = 0x706B5370

_MEMORY: Final = ":memory:"

Payload: TypeAlias = str | bytes
#: One entry to spool: ``(result_id, payload)`` or ``(result_id, payload, monitor_id)``.
SpoolItem: TypeAlias = tuple[str, Payload] | tuple[str, Payload, str | None]

_T = TypeVar("_T")

_SCHEMA: Final = (
    # ``seq`` is the rowid: pending reads and oldest-first eviction are range scans of the table
    # itself. AUTOINCREMENT keeps it growing even after the newest entries are acked, so ``seq``
    # orders entries over the whole life of the file. ``payload`` has BLOB affinity so SQLite
    # stores text as text and bytes as bytes, unconverted.
    """
    CREATE TABLE entries (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        result_id  TEXT    NOT NULL UNIQUE,
        monitor_id TEXT,
        created_at REAL    NOT NULL,
        payload    BLOB    NOT NULL
    )
    """,
    # Counters change in the same transaction as the rows they count, so they cannot drift.
    """
    CREATE TABLE counters (
        name  TEXT    PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    "INSERT INTO counters (name, value) VALUES ('depth', 0), ('dropped', 0)",
)

#: Schema 2 adds the monitor definitions a checkpoint last received, so that an instance
#: started while its control plane is unreachable still has something to run.
_DEFINITIONS: Final = """
    CREATE TABLE definitions (
        monitor_id TEXT    PRIMARY KEY,
        revision   INTEGER NOT NULL,
        interval   REAL    NOT NULL,
        definition TEXT    NOT NULL
    ) WITHOUT ROWID
"""

#: One stored definition: ``(monitor_id, revision, interval, definition as JSON text)``.
StoredDefinition: TypeAlias = tuple[str, int, float, str]

_INSERT: Final = (
    "INSERT INTO entries (result_id, payload, monitor_id, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (result_id) DO NOTHING"
)
_SELECT: Final = (
    "SELECT seq, result_id, payload, monitor_id, created_at FROM entries "
    "WHERE seq > ? ORDER BY seq LIMIT ?"
)


@attrs.frozen
class Entry:
    """One spooled result: its id, the payload exactly as it was put, and where it sits.

    ``seq`` grows with every entry ever put into this spool file, so it orders entries oldest
    first; ``created_at`` is the wall-clock time (Unix seconds) of the put that stored it.
    """

    result_id: str
    payload: Payload
    monitor_id: str | None
    seq: int
    created_at: float


class Spool:
    """A bounded, durable, ordered store of results waiting for an ack (see the module docs).

    Nothing touches the disk until :meth:`open` (or ``with Spool(...) as spool``). A spool is used
    from the thread that opened it; for asyncio use :class:`AsyncSpool`. Several processes may
    open the same file (a tool inspecting it, say): writes are serialised by SQLite, and waits for
    a lock give up after ``busy_timeout`` seconds with a :class:`SpoolError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_entries: int = 100_000,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must not be negative, got {busy_timeout!r}")
        self.path: Final = os.fspath(path)
        self.max_entries: Final = max_entries
        self.synchronous: Final = synchronous
        self.busy_timeout: Final = busy_timeout
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._conn: sqlite3.Connection | None = None
        # (depth, dropped) as of this spool's last operation; AsyncSpool reads it without a trip
        # to the worker thread.
        self._known: tuple[int, int] = (0, 0)
        # The created_at of the oldest entry (None: empty) as of the last operation, likewise.
        self._oldest: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> Self:
        """Open (creating if need be) the database; refuse anything that is not our spool.

        Opening an open spool does nothing. Raises :class:`SpoolError` for a file that is not
        SQLite, an SQLite database that is not a spool, a newer spool schema, or a path that
        cannot be opened; the file is left exactly as it was.
        """
        if self._conn is not None:
            return self
        try:
            # Autocommit mode: transactions are the explicit BEGIN IMMEDIATE ... COMMIT below.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise SpoolError(self.path, f"cannot open the database: {exc}") from exc
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def close(self) -> None:
        """Close the database. Everything put so far is already committed; closing is idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._mapped("closing"):
                conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<Spool {self.path!r} {state} max_entries={self.max_entries}>"

    # -- writing -------------------------------------------------------------------------------

    def put(self, result_id: str, payload: Payload, monitor_id: str | None = None) -> None:
        """Spool one entry (a no-op if ``result_id`` is spooled). Prefer :meth:`put_many`."""
        self.put_many([(result_id, payload, monitor_id)])

    def put_many(self, items: Iterable[SpoolItem]) -> int:
        """Spool a batch in one transaction; return how many entries were new.

        Ids already in the spool (or repeated within the batch) are skipped. If the spool would
        then hold more than ``max_entries``, the oldest entries are evicted and counted in
        :attr:`dropped`; when the batch alone is larger than ``max_entries``, only its newest
        ``max_entries`` entries remain. When this returns, the batch is committed.
        """
        self._connection()
        created = self._clock.now().timestamp()
        rows = [_row(item, created) for item in items]  # check every item before writing any
        if not rows:
            return 0
        with self._transaction("put") as conn:
            added = conn.executemany(_INSERT, rows).rowcount
            depth, dropped = _counters(conn)
            depth += added
            evicted = 0
            if depth > self.max_entries:
                excess = depth - self.max_entries
                (cutoff,) = conn.execute(
                    "SELECT seq FROM entries ORDER BY seq LIMIT 1 OFFSET ?", (excess - 1,)
                ).fetchone()
                evicted = conn.execute("DELETE FROM entries WHERE seq <= ?", (cutoff,)).rowcount
                depth -= evicted
                dropped += evicted
            _store_counters(conn, depth, dropped)
            oldest = _oldest(conn)
        self._known = (depth, dropped)
        self._oldest = oldest
        if evicted:
            log.warning(
                "spool %s is full (max_entries=%d): dropped the %d oldest results "
                "(%d dropped in total)",
                self.path,
                self.max_entries,
                evicted,
                dropped,
            )
        return added

    def ack(self, result_ids: Iterable[str]) -> int:
        """Delete the acked ids in one transaction; return how many were spooled.

        Unknown ids (never put, already acked, or evicted) are ignored.
        """
        self._connection()
        keys = [(result_id,) for result_id in result_ids]
        if not keys:
            return 0
        with self._transaction("ack") as conn:
            deleted = conn.executemany("DELETE FROM entries WHERE result_id = ?", keys).rowcount
            depth, dropped = _counters(conn)
            depth -= deleted
            if deleted:
                _store_counters(conn, depth, dropped)
            oldest = _oldest(conn)
        self._known = (depth, dropped)
        self._oldest = oldest
        return deleted

    # -- reading -------------------------------------------------------------------------------

    def pending(self, limit: int, *, exclude: Collection[str] = ()) -> list[Entry]:
        """Return up to ``limit`` spooled entries, oldest first, skipping the ids in ``exclude``.

        ``exclude`` is meant for the ids already sent and awaiting their ack, so the next batch
        to send is simply ``pending(n, exclude=in_flight)``.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit!r}")
        conn = self._connection()
        if limit == 0:
            return []
        skip = exclude if isinstance(exclude, set | frozenset) else frozenset(exclude)
        # Fetch in pages by seq (keyset pagination), so excluded rows cost a skip, not a rescan.
        page = limit + min(len(skip), 10_000)
        found: list[Entry] = []
        after = 0
        with self._mapped("reading pending entries"):
            while True:
                rows = conn.execute(_SELECT, (after, page)).fetchall()
                for seq, result_id, payload, monitor_id, created_at in rows:
                    if result_id in skip:
                        continue
                    found.append(Entry(result_id, payload, monitor_id, seq, created_at))
                    if len(found) == limit:
                        return found
                if len(rows) < page:
                    return found
                after = rows[-1][0]

    @property
    def depth(self) -> int:
        """How many entries are spooled."""
        return self._read_counters()[0]

    @property
    def dropped(self) -> int:
        """How many entries were ever evicted to keep within ``max_entries`` (persistent)."""
        return self._read_counters()[1]

    def save_definitions(self, definitions: Iterable[StoredDefinition]) -> None:
        """Replace the stored monitor definitions with ``definitions``, in one transaction."""
        rows = list(definitions)
        with self._transaction("saving definitions") as conn:
            conn.execute("DELETE FROM definitions")
            conn.executemany("INSERT INTO definitions VALUES (?, ?, ?, ?)", rows)

    def load_definitions(self) -> list[StoredDefinition]:
        """The stored monitor definitions, by monitor id."""
        conn = self._connection()
        with self._mapped("reading definitions"):
            rows = conn.execute(
                "SELECT monitor_id, revision, interval, definition FROM definitions "
                "ORDER BY monitor_id"
            ).fetchall()
        return [(str(m), int(r), float(i), str(d)) for m, r, i, d in rows]

    def stats(self) -> dict[str, int | float | str | None]:
        """Figures for heartbeats and metrics.

        ``depth``, ``dropped``, ``max_entries``, ``path``, ``synchronous``, and
        ``oldest_created_at`` (Unix seconds of the oldest spooled entry, or None when empty).
        """
        conn = self._connection()
        with self._mapped("reading stats"):
            depth, dropped = self._read_counters()
            row = conn.execute("SELECT created_at FROM entries ORDER BY seq LIMIT 1").fetchone()
        return {
            "path": self.path,
            "depth": depth,
            "dropped": dropped,
            "max_entries": self.max_entries,
            "oldest_created_at": None if row is None else float(row[0]),
            "synchronous": self.synchronous,
        }

    # -- internals -----------------------------------------------------------------------------

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # Look before touching anything: switching a foreign file to WAL would rewrite its header.
        with self._mapped("reading the database header", hint=True):
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        self._check_identity(application_id, version, tables)
        with self._mapped("configuring the database"):
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if self.path != _MEMORY and str(mode).lower() != "wal":
                raise SpoolError(self.path, f"cannot switch to WAL mode (journal_mode is {mode!r})")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        with self._mapped("locking the database"):
            conn.execute("BEGIN IMMEDIATE")
        try:
            with self._mapped("creating the schema"):
                # Look again under the write lock: another process may have created it meanwhile.
                application_id = conn.execute("PRAGMA application_id").fetchone()[0]
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                self._check_identity(application_id, version, tables)
                if version == 0:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                if version < 2:  # new, or written by an older probekit: add what it lacks
                    conn.execute(_DEFINITIONS)
                    conn.execute(f"PRAGMA user_version={SPOOL_SCHEMA}")
                depth, dropped = _counters(conn)
                (count,) = conn.execute("SELECT count(*) FROM entries").fetchone()
                if count != depth:  # only an outside edit of the file can cause this
                    log.warning(
                        "spool %s: depth counter said %d, found %d", self.path, depth, count
                    )
                    depth = count
                    _store_counters(conn, depth, dropped)
                oldest = _oldest(conn)
                conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._known = (depth, dropped)
        self._oldest = oldest

    def _check_identity(self, application_id: int, version: int, tables: int) -> None:
        if application_id == 0 and version == 0 and tables == 0:
            return  # a new, empty database: ours to create
        if application_id != _APPLICATION_ID:
            raise SpoolError(
                self.path,
                "is an SQLite database but not a probekit spool "
                f"(application_id={application_id:#x}); refusing to touch it",
            )
        if version > SPOOL_SCHEMA:
            raise SpoolError(
                self.path,
                f"was written by a newer probekit (spool schema {version}; this version reads "
                f"up to {SPOOL_SCHEMA}); refusing to touch it",
            )
        if version < 1:
            raise SpoolError(self.path, f"has an invalid spool schema number {version}")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError(self.path, "the spool is not open (it was closed, or never opened)")
        return self._conn

    def _read_counters(self) -> tuple[int, int]:
        conn = self._connection()
        with self._mapped("reading counters"):
            known = _counters(conn)
        self._known = known
        return known

    @contextlib.contextmanager
    def _mapped(self, doing: str, *, hint: bool = False) -> Iterator[None]:
        """Turn sqlite3's exceptions into a SpoolError that names the path and the operation."""
        try:
            yield
        except sqlite3.Error as exc:
            message = f"{doing} failed: {exc}"
            if hint and isinstance(exc, sqlite3.DatabaseError):
                message += " (not an SQLite database, or a damaged one; left untouched)"
            raise SpoolError(self.path, message) from exc

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock up front (no lock upgrades, no deadlock)."""
        conn = self._connection()
        with self._mapped(doing):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise


def _row(item: SpoolItem, created: float) -> tuple[str, Payload, str | None, float]:
    if len(item) == 2:
        result_id, payload = item
        monitor_id: str | None = None
    elif len(item) == 3:
        result_id, payload, monitor_id = item
    else:
        raise TypeError(f"a spool item is (result_id, payload[, monitor_id]), got {item!r}")
    if not isinstance(result_id, str) or not result_id:
        raise TypeError(f"result_id must be a non-empty str, got {result_id!r}")
    if not isinstance(payload, str | bytes):
        raise TypeError(f"payload must be str or bytes, got {type(payload).__name__}")
    if monitor_id is not None and not isinstance(monitor_id, str):
        raise TypeError(f"monitor_id must be a str or None, got {monitor_id!r}")
    return result_id, payload, monitor_id, created


def _oldest(conn: sqlite3.Connection) -> float | None:
    """The created_at of the oldest entry, or None when there is none (reads the first row)."""
    row = conn.execute("SELECT created_at FROM entries ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def _counters(conn: sqlite3.Connection) -> tuple[int, int]:
    values = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    return int(values["depth"]), int(values["dropped"])


def _store_counters(conn: sqlite3.Connection, depth: int, dropped: int) -> None:
    conn.executemany(
        "UPDATE counters SET value = ? WHERE name = ?", [(depth, "depth"), (dropped, "dropped")]
    )


class AsyncSpool:
    """:class:`Spool` for asyncio: the same operations as coroutines, off the event loop.

    Every call runs on one dedicated worker thread, which opens, uses and closes the one SQLite
    connection, in the order the calls were made. ``async with AsyncSpool(path) as spool:`` opens
    and closes it. A call that is cancelled while its transaction runs still completes or rolls
    back as a whole on the worker (a put may therefore be committed although the caller saw
    ``CancelledError``; puts are idempotent, so putting again is safe).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_entries: int = 100_000,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        self._spool = Spool(
            path,
            max_entries=max_entries,
            synchronous=synchronous,
            busy_timeout=busy_timeout,
            clock=clock,
        )
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def path(self) -> str:
        return self._spool.path

    @property
    def max_entries(self) -> int:
        return self._spool.max_entries

    @property
    def depth(self) -> int:
        """Spooled entries as of the last completed operation (never waits on the disk)."""
        return self._spool._known[0]

    @property
    def dropped(self) -> int:
        """Evicted entries in total as of the last completed operation (never waits)."""
        return self._spool._known[1]

    @property
    def oldest_created_at(self) -> float | None:
        """When the oldest spooled entry was put (Unix seconds), as of the last completed
        operation, or None when the spool was empty (never waits)."""
        return self._spool._oldest

    async def open(self) -> Self:
        """Start the worker thread and open the database on it (see :meth:`Spool.open`)."""
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="probekit-spool"
            )
        try:
            await self._call(self._spool.open)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Close the database after every call already made, then stop the worker."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            loop = asyncio.get_running_loop()
            # Shielded: the close is queued behind the calls already made and must run even if
            # the task closing the spool is cancelled.
            await asyncio.shield(loop.run_in_executor(worker, self._spool.close))
        finally:
            worker.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def put(self, result_id: str, payload: Payload, monitor_id: str | None = None) -> None:
        """See :meth:`Spool.put`."""
        await self._call(self._spool.put, result_id, payload, monitor_id)

    async def put_many(self, items: Iterable[SpoolItem]) -> int:
        """See :meth:`Spool.put_many`."""
        # Materialised here: the iterable belongs to the loop's thread, not the worker's.
        return await self._call(self._spool.put_many, list(items))

    async def ack(self, result_ids: Iterable[str]) -> int:
        """See :meth:`Spool.ack`."""
        return await self._call(self._spool.ack, list(result_ids))

    async def pending(self, limit: int, *, exclude: Collection[str] = ()) -> list[Entry]:
        """See :meth:`Spool.pending`."""
        skip = exclude if isinstance(exclude, frozenset) else frozenset(exclude)
        return await self._call(functools.partial(self._spool.pending, limit, exclude=skip))

    async def save_definitions(self, definitions: Iterable[StoredDefinition]) -> None:
        """See :meth:`Spool.save_definitions`."""
        await self._call(self._spool.save_definitions, list(definitions))

    async def load_definitions(self) -> list[StoredDefinition]:
        """See :meth:`Spool.load_definitions`."""
        return await self._call(self._spool.load_definitions)

    async def stats(self) -> dict[str, int | float | str | None]:
        """See :meth:`Spool.stats` (read fresh from the database)."""
        return await self._call(self._spool.stats)

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        worker = self._worker
        if worker is None:
            raise SpoolError(self.path, "the spool is not open (it was closed, or never opened)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(worker, functools.partial(fn, *args))

    def __repr__(self) -> str:
        state = "closed" if self._worker is None else "open"
        return f"<AsyncSpool {self.path!r} {state} max_entries={self.max_entries}>"
