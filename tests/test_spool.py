"""The result spool: order, idempotency, bounded eviction, crash durability, asyncio, refusals.

The crash tests run a real writer in a subprocess and ``SIGKILL`` it, once after it has committed
everything and once in the middle of a stream of batches; what a test reopens is what a restarted
checkpoint would find. The model test checks arbitrary put/ack/reopen sequences against a dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from probekit import FakeClock, ProbekitError
from probekit.checkpoint._spool import SPOOL_SCHEMA, AsyncSpool, Entry, Spool, SpoolError

# -- helpers ----------------------------------------------------------------------------------


def _ids(entries: list[Entry]) -> list[str]:
    return [e.result_id for e in entries]


def _payload(result_id: str) -> str:
    return json.dumps({"id": result_id, "status": "up", "pad": "x" * 200})


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


# -- put, pending, ack ------------------------------------------------------------------------


def test_put_pending_ack_in_order(path: Path) -> None:
    clock = FakeClock()
    with Spool(path, clock=clock) as spool:
        spool.put("a", '{"n":1}', "mon-1")
        clock.advance(1.5)
        assert spool.put_many([("b", b"\x00bytes"), ("c", '{"n":3}', None), ("d", "{}")]) == 3

        everything = spool.pending(10)
        assert _ids(everything) == ["a", "b", "c", "d"]
        a, b = everything[0], everything[1]
        assert (a.payload, a.monitor_id) == ('{"n":1}', "mon-1")
        assert b.payload == b"\x00bytes"  # bytes come back as bytes, text as text
        assert isinstance(everything[2].payload, str)
        assert a.created_at == pytest.approx(clock.now().timestamp() - 1.5)
        assert [e.seq for e in everything] == sorted(e.seq for e in everything)

        assert _ids(spool.pending(2)) == ["a", "b"]
        assert _ids(spool.pending(2, exclude={"a", "c"})) == ["b", "d"]
        assert _ids(spool.pending(10, exclude=["a", "b", "c", "d"])) == []
        assert spool.pending(0) == []

        assert spool.ack(["b", "nope", "b"]) == 1  # unknown and repeated ids are ignored
        assert spool.ack([]) == 0
        assert _ids(spool.pending(10)) == ["a", "c", "d"]
        assert spool.depth == 3
        assert spool.ack(iter(["a", "c", "d"])) == 3
        assert spool.pending(10) == []
        assert spool.depth == 0
        assert spool.dropped == 0


def test_put_is_idempotent(path: Path) -> None:
    with Spool(path) as spool:
        spool.put("r1", "first")
        spool.put("r1", "second")  # already spooled: a no-op, the first payload stays
        assert spool.put_many([("r2", "x"), ("r1", "third"), ("r2", "again"), ("r3", "y")]) == 2
        assert [(e.result_id, e.payload) for e in spool.pending(10)] == [
            ("r1", "first"),
            ("r2", "x"),
            ("r3", "y"),
        ]
        assert spool.depth == 3
        # An acked id put again is a new entry, at the back of the line.
        spool.ack(["r1"])
        spool.put("r1", "fourth")
        assert _ids(spool.pending(10)) == ["r2", "r3", "r1"]


def test_pending_pages_past_a_large_exclude_set(path: Path) -> None:
    with Spool(path) as spool:
        spool.put_many((f"r{i:05}", "p") for i in range(25_000))
        in_flight = {f"r{i:05}" for i in range(20_000)}
        batch = spool.pending(100, exclude=in_flight)
        assert _ids(batch) == [f"r{i:05}" for i in range(20_000, 20_100)]
        assert _ids(spool.pending(10_000, exclude=in_flight))[-1] == "r24999"


def test_a_bad_item_writes_nothing_of_its_batch(path: Path) -> None:
    with Spool(path) as spool:
        with pytest.raises(TypeError, match="payload"):
            spool.put_many([("ok", "fine"), ("bad", 42)])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="result_id"):
            spool.put("", "empty id")
        with pytest.raises(TypeError, match="spool item"):
            spool.put_many([("only-id",)])  # type: ignore[list-item]
        assert spool.depth == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_entries": 0}, "max_entries"),
        ({"max_entries": True}, "max_entries"),
        ({"synchronous": "OFF"}, "synchronous"),
        ({"busy_timeout": -1}, "busy_timeout"),
    ],
)
def test_invalid_settings_are_refused(path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Spool(path, **kwargs)  # type: ignore[arg-type]


# -- bounds -----------------------------------------------------------------------------------


def test_eviction_is_oldest_first_counted_logged_and_persisted(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="probekit.spool")
    with Spool(path, max_entries=5) as spool:
        spool.put_many([(f"r{i}", f"p{i}") for i in range(3)])
        assert caplog.records == []
        spool.put_many([(f"r{i}", f"p{i}") for i in range(3, 7)])  # 7 > 5: r0, r1 go
        assert _ids(spool.pending(10)) == ["r2", "r3", "r4", "r5", "r6"]
        assert (spool.depth, spool.dropped) == (5, 2)
        assert len(caplog.records) == 1  # one line per batch, not per row
        assert "dropped the 2 oldest" in caplog.records[0].getMessage()
        assert str(path) in caplog.records[0].getMessage()

        spool.put("r3", "dup")  # a duplicate takes no room and evicts nothing
        assert spool.dropped == 2
        spool.ack(["r4"])
        spool.put("r7", "p7")  # fits in the slot the ack freed
        assert (spool.depth, spool.dropped) == (5, 2)
        stats = spool.stats()
        assert stats["depth"] == 5
        assert stats["dropped"] == 2
        assert stats["max_entries"] == 5

    with Spool(path, max_entries=5) as spool:  # the counter survives a restart
        assert (spool.depth, spool.dropped) == (5, 2)
        spool.put("r8", "p8")
        assert spool.dropped == 3
        assert _ids(spool.pending(10)) == ["r3", "r5", "r6", "r7", "r8"]


def test_a_batch_larger_than_the_spool_keeps_its_newest(path: Path) -> None:
    with Spool(path, max_entries=10) as spool:
        spool.put_many([("old", "x")])
        assert spool.put_many([(f"r{i:03}", "x") for i in range(100)]) == 100
        assert _ids(spool.pending(100)) == [f"r{i:03}" for i in range(90, 100)]
        assert (spool.depth, spool.dropped) == (10, 91)


def test_a_smaller_limit_on_reopen_applies_at_the_next_put(path: Path) -> None:
    with Spool(path, max_entries=10) as spool:
        spool.put_many([(f"r{i}", "x") for i in range(10)])
    with Spool(path, max_entries=4) as spool:
        assert spool.depth == 10  # nothing is dropped just by opening
        spool.put("r10", "x")
        assert _ids(spool.pending(10)) == ["r7", "r8", "r9", "r10"]
        assert spool.dropped == 7


def test_two_handles_on_one_file_keep_the_counters_right(path: Path) -> None:
    with Spool(path, max_entries=3) as one, Spool(path, max_entries=3) as two:
        one.put_many([("a", "1"), ("b", "2")])
        two.put_many([("c", "3"), ("d", "4")])
        assert one.ack(["b"]) == 1
        assert (two.depth, two.dropped) == (2, 1)
        assert _ids(one.pending(10)) == ["c", "d"]


# -- the database itself ----------------------------------------------------------------------


def test_wal_mode_is_on_and_synchronous_as_asked(path: Path) -> None:
    with Spool(path) as spool:
        spool.put("a", "1")
        raw = _raw(path)
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SPOOL_SCHEMA
            # The writer's own connection carries the durability setting (NORMAL is 1).
            assert spool._conn is not None
            assert spool._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
        finally:
            raw.close()
    full = path.with_name("full.db")
    with Spool(full, synchronous="FULL") as spool:
        assert spool._conn is not None
        assert spool._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert spool._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_memory_spool_works_for_tests_and_tools() -> None:
    with Spool(":memory:", max_entries=2) as spool:
        spool.put_many([("a", "1"), ("b", "2"), ("c", "3")])
        assert _ids(spool.pending(5)) == ["b", "c"]
        assert spool.dropped == 1


def test_a_10000_entry_batch_is_one_practical_call(path: Path) -> None:
    items = [(f"result-{i:05}", _payload(f"result-{i:05}"), f"mon-{i % 50}") for i in range(10_000)]
    with Spool(path) as spool:
        started = time.perf_counter()
        assert spool.put_many(items) == 10_000
        took = time.perf_counter() - started
        print(f"\nput_many of 10,000 entries (~250 B each): {took * 1000:.0f} ms")  # noqa: T201
        assert spool.depth == 10_000
        assert spool.pending(1)[0].result_id == "result-00000"


# -- refusals and errors ----------------------------------------------------------------------


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(path: Path) -> None:
    junk = b"this is not a database, it is somebody's data\n" * 200
    path.write_bytes(junk)
    with pytest.raises(SpoolError, match="not an SQLite database") as info:
        Spool(path).open()
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert isinstance(info.value, ProbekitError)
    assert path.read_bytes() == junk
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_another_applications_database_is_refused(path: Path) -> None:
    raw = _raw(path)
    raw.execute("CREATE TABLE customers (name TEXT)")
    raw.close()
    with pytest.raises(SpoolError, match="not a probekit spool"):
        Spool(path).open()
    raw = _raw(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    raw.close()


def test_a_newer_schema_is_refused(path: Path) -> None:
    with Spool(path) as spool:
        spool.put("keep-me", "1")
    raw = _raw(path)
    raw.execute(f"PRAGMA user_version = {SPOOL_SCHEMA + 1}")
    raw.close()
    with pytest.raises(SpoolError, match=f"newer probekit \\(spool schema {SPOOL_SCHEMA + 1}"):
        Spool(path).open()
    raw = _raw(path)
    assert raw.execute("SELECT result_id FROM entries").fetchall() == [("keep-me",)]
    raw.close()


def test_a_path_that_cannot_be_opened(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "spool.db"
    with pytest.raises(SpoolError, match="cannot open") as info:
        Spool(missing).open()
    assert str(missing) in str(info.value)


def test_a_closed_spool_says_so(path: Path) -> None:
    spool = Spool(path)
    with pytest.raises(SpoolError, match="not open"):
        spool.put("a", "1")
    spool.open()
    spool.put("a", "1")
    spool.close()
    spool.close()  # idempotent
    assert spool.closed
    for use in (
        lambda: spool.put("b", "2"),
        lambda: spool.put_many([]),
        lambda: spool.ack([]),
        lambda: spool.pending(1),
        lambda: spool.depth,
        lambda: spool.stats(),
    ):
        with pytest.raises(SpoolError, match="not open"):
            use()
    with spool:  # a closed spool can be opened again
        assert _ids(spool.pending(5)) == ["a"]


def test_a_spool_opened_on_one_thread_is_refused_on_another(path: Path) -> None:
    with Spool(path) as spool:
        errors: list[BaseException] = []

        def use() -> None:
            try:
                spool.put("a", "1")
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=use)
        thread.start()
        thread.join()
        assert len(errors) == 1
        assert isinstance(errors[0], SpoolError)
        assert "thread" in str(errors[0])


# -- crash durability -------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import json, sys, time
    from probekit.checkpoint._spool import Spool

    path, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def payload(rid):
        return json.dumps({"id": rid, "status": "up", "pad": "x" * 200})

    spool = Spool(path).open()
    for b in range(batches):
        ids = [f"r{b * size + i:06}" for i in range(size)]
        spool.put_many([(rid, payload(rid), "mon") for rid in ids])
        print(f"committed {b}", flush=True)
    print("ready", flush=True)
    time.sleep(60)
    """
)


class _Writer:
    """The writer subprocess, with its stdout lines arriving on a queue (reads never hang)."""

    def __init__(self, path: Path, batches: int, size: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(batches), str(size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def wait_for(self, wanted: str) -> None:
        while True:
            line = self.lines.get(timeout=60)
            assert line != "<eof>", f"writer exited with {self.proc.wait()} before {wanted!r}"
            if line == wanted:
                return

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        self.reader.join(timeout=30)  # the pipe reaches EOF once the writer is gone
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_kill_9_after_commit_loses_nothing(path: Path) -> None:
    n, size = 500, 50
    writer = _Writer(path, n // size, size)
    try:
        writer.wait_for("ready")
    finally:
        writer.kill()
    assert Path(f"{path}-wal").exists()  # the commits were still in the WAL when it died

    with Spool(path) as spool:
        entries = spool.pending(10 * n)
        assert [e.result_id for e in entries] == [f"r{i:06}" for i in range(n)]
        assert all(e.payload == _payload(e.result_id) for e in entries)
        assert spool.depth == n


@pytest.mark.parametrize("reported", [1, 7, 40])
def test_kill_9_mid_stream_keeps_every_committed_batch_whole(path: Path, reported: int) -> None:
    size = 50
    writer = _Writer(path, 1000, size)  # far more than it gets to write
    try:
        writer.wait_for(f"committed {reported - 1}")
    finally:
        writer.kill()  # lands while the next batches are being written

    raw = _raw(path)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count, distinct = raw.execute(
            "SELECT count(*), count(DISTINCT result_id) FROM entries"
        ).fetchone()
    finally:
        raw.close()
    assert count == distinct
    with Spool(path) as spool:
        entries = spool.pending(10**6)
        assert spool.depth == len(entries) == count
    print(f"\nkilled after {reported} reported batches; {count // size} were there")  # noqa: T201
    assert count >= reported * size  # every batch reported committed is there
    assert count % size == 0  # and no batch is there in part
    assert [e.result_id for e in entries] == [f"r{i:06}" for i in range(count)]
    assert all(e.payload == _payload(e.result_id) for e in entries)


# -- asyncio ----------------------------------------------------------------------------------


async def test_async_spool_round_trip(path: Path) -> None:
    async with AsyncSpool(path, max_entries=3) as spool:
        await spool.put("a", "1", "m")
        assert await spool.put_many([("b", "2"), ("c", "3"), ("d", "4")]) == 3
        assert (spool.depth, spool.dropped) == (3, 1)
        assert _ids(await spool.pending(10, exclude={"c"})) == ["b", "d"]
        assert await spool.ack(["b"]) == 1
        assert spool.depth == 2
        stats = await spool.stats()
        assert (stats["depth"], stats["dropped"]) == (2, 1)
        names = {t.name for t in threading.enumerate()}
        assert any(name.startswith("probekit-spool") for name in names)
    with pytest.raises(SpoolError, match="not open"):
        await spool.put("e", "5")
    with Spool(path) as sync:
        assert _ids(sync.pending(10)) == ["c", "d"]


async def test_async_spool_keeps_the_event_loop_running_during_a_big_write(path: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    items = [(f"r{i:05}", _payload(f"r{i:05}")) for i in range(10_000)]
    async with AsyncSpool(path) as spool:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        started = time.perf_counter()
        await spool.put_many(items)
        took = time.perf_counter() - started
        during = ticks - before
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert spool.depth == 10_000
    print(f"\n10,000-entry put_many: {took * 1000:.0f} ms; the loop ticked {during} times")  # noqa: T201
    # A blocking write would run before the ticker got another turn: zero ticks.
    assert during > 1


@pytest.fixture
def junk(path: Path) -> Path:
    path.write_bytes(b"garbage" * 1000)
    return path


async def test_async_spool_refuses_a_corrupt_file_and_stays_closed(junk: Path) -> None:
    spool = AsyncSpool(junk)
    with pytest.raises(SpoolError, match="not an SQLite database"):
        await spool.open()
    with pytest.raises(SpoolError, match="not open"):
        await spool.pending(1)


async def test_async_close_waits_for_calls_already_made(path: Path) -> None:
    spool = await AsyncSpool(path).open()
    put = asyncio.ensure_future(spool.put_many([(f"r{i}", "x") for i in range(1000)]))
    await asyncio.sleep(0)
    await spool.close()
    assert await put == 1000
    with Spool(path) as sync:
        assert sync.depth == 1000


# -- model ------------------------------------------------------------------------------------

_IDS = st.sampled_from([f"r{i}" for i in range(12)])
_PAYLOADS = st.text(max_size=4) | st.binary(max_size=4)
_ITEMS = st.tuples(_IDS, _PAYLOADS, st.none() | st.sampled_from(["m1", "m2"]))


class SpoolMatchesAModel(RuleBasedStateMachine):
    """Any put/ack/reopen sequence matches a dict kept in insertion order plus the eviction rule."""

    MAX = 6

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.spool = Spool(Path(self._dir.name) / "spool.db", max_entries=self.MAX).open()
        self.model: dict[str, tuple[str | bytes, str | None]] = {}  # oldest first
        self.dropped = 0

    def _add(self, result_id: str, payload: str | bytes, monitor_id: str | None) -> int:
        if result_id in self.model:
            return 0
        self.model[result_id] = (payload, monitor_id)
        return 1

    def _evict(self) -> None:
        while len(self.model) > self.MAX:
            del self.model[next(iter(self.model))]
            self.dropped += 1

    @rule(batch=st.lists(_ITEMS, max_size=10))
    def put_many(self, batch: list[tuple[str, str | bytes, str | None]]) -> None:
        added = sum(self._add(*item) for item in batch)
        self._evict()
        assert self.spool.put_many(batch) == added

    @rule(item=_ITEMS)
    def put(self, item: tuple[str, str | bytes, str | None]) -> None:
        self._add(*item)
        self._evict()
        self.spool.put(*item)

    @rule(ids=st.lists(_IDS, max_size=8))
    def ack(self, ids: list[str]) -> None:
        acked = 0
        for result_id in ids:
            if self.model.pop(result_id, None) is not None:
                acked += 1
        assert self.spool.ack(ids) == acked

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool.open()

    @rule(limit=st.integers(0, 8), exclude=st.frozensets(_IDS, max_size=6))
    def pending(self, limit: int, exclude: frozenset[str]) -> None:
        expected = [rid for rid in self.model if rid not in exclude][:limit]
        assert _ids(self.spool.pending(limit, exclude=exclude)) == expected

    @invariant()
    def matches(self) -> None:
        entries = self.spool.pending(100)
        assert {e.result_id: (e.payload, e.monitor_id) for e in entries} == self.model
        assert _ids(entries) == list(self.model)
        assert all(a.seq < b.seq for a, b in itertools.pairwise(entries))
        assert (self.spool.depth, self.spool.dropped) == (len(self.model), self.dropped)

    def teardown(self) -> None:
        self.spool.close()
        self._dir.cleanup()


# Six slots and twelve ids fill, evict and empty the spool within a few steps; longer runs mostly
# repeat that cycle, so the steps go to more examples instead.
SpoolMatchesAModel.TestCase.settings = settings(settings.default, stateful_step_count=25)
TestSpoolMatchesAModel = SpoolMatchesAModel.TestCase


# -- kept definitions (schema 2) -----------------------------------------------------------------

_V1_SCHEMA = (
    "CREATE TABLE entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, result_id TEXT NOT NULL UNIQUE,"
    " monitor_id TEXT, created_at REAL NOT NULL, payload BLOB NOT NULL)",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO counters (name, value) VALUES ('depth', 1), ('dropped', 4)",
    "INSERT INTO entries (result_id, monitor_id, created_at, payload) VALUES ('r1', 'm', 1.0, 'x')",
    f"PRAGMA application_id = {0x706B5370}",  # "pkSp", what a spool carries
    "PRAGMA user_version = 1",
)


def test_definitions_are_kept_replaced_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = [("a", 1, 60.0, '{"kind": "tcp"}'), ("b", 3, 0.5, '{"kind": "http"}')]
    with Spool(path) as spool:
        assert spool.load_definitions() == []
        spool.save_definitions(first)
        assert spool.load_definitions() == first
        spool.save_definitions([("c", 1, 5.0, "{}")])  # replaces, not adds
        assert spool.load_definitions() == [("c", 1, 5.0, "{}")]
    with Spool(path) as spool:
        assert spool.load_definitions() == [("c", 1, 5.0, "{}")]
        spool.save_definitions([])
        assert spool.load_definitions() == []


def test_a_schema_1_spool_is_upgraded_in_place_and_keeps_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    for statement in _V1_SCHEMA:
        raw.execute(statement)
    raw.commit()
    raw.close()
    with Spool(path) as spool:
        assert [e.result_id for e in spool.pending(10)] == ["r1"]
        assert (spool.depth, spool.dropped) == (1, 4)
        spool.save_definitions([("m", 2, 30.0, "{}")])
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SPOOL_SCHEMA == 2
    finally:
        raw.close()
    with Spool(path) as spool:
        assert spool.load_definitions() == [("m", 2, 30.0, "{}")]


async def test_async_spool_keeps_definitions(tmp_path: Path) -> None:
    async with AsyncSpool(tmp_path / "a.db") as spool:
        await spool.save_definitions([("x", 1, 1.0, "{}")])
        assert await spool.load_definitions() == [("x", 1, 1.0, "{}")]
