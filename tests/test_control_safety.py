"""The control plane against hostile and broken peers, and across its own restarts (issue 10).

Findings 1-3 of issue 10, each test named after the fault it guards against:

1. results are tied to the connection that proved an identity (refused otherwise, acked, counted,
   logged once per kind, never stored and never acted on);
2. one hung or silent instance does not blind its checkpoint (runs reassigned after their deadline
   plus a grace, no runs to an instance that misses heartbeats, a taker of runs that never answers
   is cut and reported);
3. alert state, last-seen times and revisions survive a restart; request ids are unique across
   lifetimes; stored events carry wall-clock times.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from probekit import Secret, Status
from probekit import protocol as p
from probekit.control import ControlPlane, ControlSettings, MemorySink
from test_control import DEF, TOKEN, FakeInstance, join

pytestmark = pytest.mark.usefixtures("control_store")

LAB_TOKEN = "lab-token-canary-5#k"
HB = 0.2


def settings(db: str = ":memory:", **extra: Any) -> ControlSettings:
    values: dict[str, Any] = {
        "heartbeat_interval": HB,
        "tick_interval": 0.02,
        "missed_heartbeats": 25,  # instances that send no heartbeats stay up through a test
        "startup_grace": 60.0,  # and configured checkpoints that never connect are not down
    }
    values.update(extra)
    return ControlSettings(
        tokens={"office": Secret(TOKEN), "lab": Secret(LAB_TOKEN)}, db_path=db, **values
    )


@contextlib.asynccontextmanager
async def plane(
    db: str = ":memory:", **extra: Any
) -> AsyncIterator[tuple[ControlPlane, MemorySink]]:
    sink = MemorySink()
    async with ControlPlane(settings(db, **extra), sinks=[sink]) as cp:
        yield cp, sink


def alerts_opened(sink: MemorySink, kind: str) -> list[Any]:
    return [
        e
        for e in sink.events
        if e.kind == "alert_opened" and e.alert is not None and e.alert.kind == kind
    ]


async def closed(inst: FakeInstance, timeout: float = 5.0) -> int | None:
    await asyncio.wait_for(asyncio.shield(inst.task), timeout)
    return inst.conn.close_code


# -- 1. results are tied to their connection ---------------------------------------------------


async def test_results_for_another_checkpoints_monitor_or_an_unasked_confirm_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's attack: office's token, an invented instance, lab's monitor DOWN, and a
    ``confirm`` without a request id. Nothing is stored, nothing alerts."""
    async with plane() as (cp, sink):
        await cp.add_monitor("lab-web", "lab", DEF, interval=3600)
        await cp.add_monitor("m1", "office", DEF, interval=3600)
        ghost = await join(cp, "ghost")
        sync = await ghost.expect(p.Sync)
        assert [u.monitor_id for u in sync.upserts] == ["m1"]  # lab's monitor is not sent
        with caplog.at_level(logging.WARNING, logger="probekit.control"):
            sent = [
                await ghost.result(None, Status.DOWN, "lab-web"),
                await ghost.result(None, Status.DOWN, "lab-web", reason="confirm"),
                await ghost.result(None, Status.DOWN, "m1", reason="confirm"),
                await ghost.result(None, Status.DOWN, "m1", reason="adhoc"),
                await ghost.result(None, Status.DOWN, "m1", instance_id="office-a"),
                await ghost.result(None, Status.DOWN, "no-such-monitor"),
                await ghost.result(None, Status.DOWN, "m1", request_id="never-sent"),
                await ghost.result(None, Status.DOWN, "lab-web"),  # the same kind again
            ]
            acked: list[str] = []
            errors: list[p.Error] = []
            async with asyncio.timeout(5):
                while len(acked) < len(sent):
                    message = await ghost.inbox.get()
                    if isinstance(message, p.Ack):
                        acked += message.result_ids
                    elif isinstance(message, p.Error):
                        errors.append(message)
        # Each refusal is answered and its id acked, so an honest but confused instance does not
        # resend it forever; none is stored, none reaches the alert logic.
        assert sorted(acked) == sorted(sent)
        assert len(errors) == len(sent) and {e.code for e in errors} == {"bad_field"}
        assert errors[0].message.startswith("results[0].monitor_id: ")
        assert "lab-web" in errors[0].message and "office" in errors[0].message
        assert errors[1].message.startswith("results[0].request_id: ")
        assert errors[4].message.startswith("results[0].instance_id: ")
        assert await cp.result_count() == 0
        assert cp.stats()["results_refused"] == len(sent)
        await asyncio.sleep(0.2)
        assert [e.kind for e in sink.events] == []
        assert await cp.events() == []
        # Logged once per kind of refusal on the connection: the second lab-web one is not.
        warnings = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(warnings) == 6, warnings
        assert all("ghost" in w for w in warnings)
        await ghost.conn.close()


async def test_a_second_hello_cannot_change_the_instance_of_a_connection() -> None:
    async with plane() as (cp, _):
        await cp.add_monitor("m1", "office", DEF, interval=3600)
        a = await join(cp, "a")
        await a.expect(p.Sync)
        await a.send(
            p.Hello(
                checkpoint_id="office",
                instance_id="b",
                software_version="t",
                kinds=("tcp",),
                holdings={},
            )
        )
        error = await a.expect(p.Error)
        assert error.code == "unknown_type" and "hello" in error.message
        assert cp.connected == ["a"]
        # Still bound to "a": a result as "b" is refused, one as "a" is stored.
        await a.result(None, Status.UP, instance_id="b")
        assert (await a.expect(p.Error)).message.startswith("results[0].instance_id: ")
        await a.result(None, Status.UP)
        await a.expect(p.Ack)
        await a.expect(p.Ack)
        assert [r["instance_id"] for r in await cp.results()] == ["a"]
        await a.conn.close()


async def test_a_frame_before_hello_is_refused_and_the_connection_closed() -> None:
    async with plane() as (cp, _):
        from websockets.asyncio.client import connect

        conn = await connect(
            cp.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, proxy=None
        )
        inst = FakeInstance(conn, "early")
        await inst.heartbeat()
        error = await inst.expect(p.Error)
        assert error.code == "unknown_type"
        assert await closed(inst) == 1002
        assert cp.connected == []


async def test_a_result_for_a_run_sent_to_another_instance_is_refused() -> None:
    async with plane() as (cp, sink):
        await cp.add_monitor("m1", "office", DEF, interval=3600)
        a, b = await join(cp, "a"), await join(cp, "b")
        await a.expect(p.Sync)
        await b.expect(p.Sync)
        request_id = await cp.run_now("m1", "a")
        run = await a.expect(p.Run)
        assert run.request_id == request_id
        # b answers a's run: refused. a's own answer is stored and acted on.
        await b.result(None, Status.DOWN, request_id=request_id, reason="adhoc")
        error = await b.expect(p.Error)
        assert error.message.startswith("results[0].request_id: ")
        assert error.ref == request_id
        await a.result(run, Status.UP)
        await a.expect(p.Ack)
        rows = await cp.results("m1")
        assert [(r["instance_id"], r["request_id"]) for r in rows] == [("a", request_id)]
        assert not [e for e in sink.events if e.kind == "unconfirmed"]
        for inst in (a, b):
            await inst.conn.close()


async def test_a_confirmation_must_answer_the_confirm_run_sent_to_that_instance() -> None:
    async with plane() as (cp, sink):
        await cp.add_monitor("m1", "office", DEF, interval=3600)
        a, b = await join(cp, "a"), await join(cp, "b")
        await a.expect(p.Sync)
        await b.expect(p.Sync)
        await a.result(None, Status.DOWN)
        confirm = await b.expect(p.Run)
        assert confirm.reason == "confirm"
        # a confirms its own failure with b's request id: refused, no alert.
        await a.result(confirm, Status.DOWN, instance_id="a")
        assert (await a.expect(p.Error)).message.startswith("results[0].request_id: ")
        await asyncio.sleep(0.1)
        assert not alerts_opened(sink, "monitor_down")
        await b.result(confirm, Status.DOWN)
        await sink.wait_for(lambda ev: bool(alerts_opened(sink, "monitor_down")), 5)
        assert cp.stats()["results_refused"] == 1
        for inst in (a, b):
            await inst.conn.close()


async def test_results_of_runs_sent_before_a_restart_are_stored_but_not_acted_on(
    tmp_path: Path,
) -> None:
    """An honest instance uploads, after a restart of the control plane, the answer to a run the
    previous process sent: it is genuine (the run is on record), so it is stored, not refused."""
    db = str(tmp_path / "control.db")
    async with plane(db) as (cp, _):
        await cp.add_monitor("m1", "office", DEF, interval=3600)
        a = await join(cp, "a")
        await a.expect(p.Sync)
        request_id = await cp.run_now("m1", "a")
        run = await a.expect(p.Run)
        await a.conn.close()
    async with plane(db) as (cp, sink):
        a = await join(cp, "a", holdings={"m1": 1})
        await a.expect(p.Sync)
        await a.result(run, Status.DOWN)
        await a.expect(p.Ack)
        assert [r["request_id"] for r in await cp.results("m1")] == [request_id]
        assert cp.stats()["results_refused"] == 0
        await asyncio.sleep(0.1)
        assert not [e for e in sink.events if e.kind == "unconfirmed"]  # late: not acted on
        await a.conn.close()


# -- 2. one hung instance does not blind the checkpoint ---------------------------------------

QUICK = {**DEF, "timeouts": {"total": 0.5}}
INTERVAL = 0.3


async def answer_runs(inst: FakeInstance) -> None:
    """Answer every run sent to ``inst`` with UP, until cancelled."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            run = await inst.expect(p.Run, timeout=3600)
            await inst.result(run, Status.UP)


async def test_a_silent_instance_that_takes_runs_does_not_blind_the_checkpoint() -> None:
    """``good`` answers; ``mute`` heartbeats and takes runs but answers none. Every monitor still
    gets a result within one interval plus the run deadline plus the grace, and ``mute`` is cut
    after three unanswered runs, with an ``instance_unresponsive`` event."""
    async with plane(grace=0.3) as (cp, sink):
        good, mute = await join(cp, "good"), await join(cp, "mute")
        await good.expect(p.Sync)
        await mute.expect(p.Sync)
        tasks = [
            asyncio.create_task(good.beat(0.05)),
            asyncio.create_task(mute.beat(0.05)),
            asyncio.create_task(answer_runs(good)),
        ]
        try:
            for i in range(3):
                await cp.add_monitor(f"m{i}", "office", QUICK, interval=INTERVAL)
            began = time.time()
            await asyncio.sleep(4.0)
        finally:
            for task in tasks:
                task.cancel()
        assert await closed(mute) == 1008
        assert "unresponsive" in (mute.conn.close_reason or "")
        bound = INTERVAL + 0.5 + 0.3 + 0.5  # interval + deadline + grace, and scheduling slack
        for i in range(3):
            rows = await cp.results(f"m{i}")
            assert {r["instance_id"] for r in rows} == {"good"}
            times = [began, *sorted(r["stored_at"] for r in rows), time.time()]
            gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
            assert max(gaps[1:]) <= bound, (i, gaps)
        cut = [e for e in sink.events if e.kind == "instance_unresponsive"]
        assert len(cut) == 1 and cut[0].subject == "mute" and "3" in cut[0].message
        assert "instance_unresponsive" in [e["kind"] for e in await cp.events()]
        stats = cp.stats()
        assert stats["instances_cut"] == 1 and stats["runs_reassigned"] >= 3
        await good.conn.close()


async def test_an_instance_that_misses_a_heartbeat_gets_no_runs_and_its_runs_move() -> None:
    """A stopped instance (no heartbeats, no answers, connection still open) gets no new run as
    soon as a heartbeat is late by the grace, long before it is declared down, and the run it
    holds goes to the other instance."""
    async with plane(grace=0.3) as (cp, sink):
        good, stopped = await join(cp, "good"), await join(cp, "stopped")
        await good.expect(p.Sync)
        await stopped.expect(p.Sync)
        tasks = [asyncio.create_task(good.beat(0.05)), asyncio.create_task(answer_runs(good))]
        try:
            await cp.add_monitor("slow", "office", {**DEF, "timeouts": {"total": 60}}, 0.2)
            held = await stopped.expect(p.Run)  # sooner or later it gets one, and sits on it
            await asyncio.sleep(HB + 0.3 + 0.3)  # a heartbeat interval, the grace, a margin
            rows = await cp.results("slow")
            assert any(r["instance_id"] == "good" for r in rows)
            after = time.time()
            assert await runs_since(stopped) == []
            await asyncio.sleep(0.5)
            late = [r for r in await cp.results("slow") if r["stored_at"] > after]
            assert late and {r["instance_id"] for r in late} == {"good"}
        finally:
            for task in tasks:
                task.cancel()
        assert held.deadline == 60  # the run carries the deadline the control plane waits for
        assert not [e for e in sink.events if e.kind == "instance_down"]  # not yet: 25 beats
        assert not [e for e in sink.events if e.kind == "instance_unresponsive"]
        for inst in (good, stopped):
            await inst.conn.close()


async def runs_since(inst: FakeInstance) -> list[p.Run]:
    """The runs waiting in ``inst``'s inbox now."""
    runs = []
    while not inst.inbox.empty():
        message = inst.inbox.get_nowait()
        if isinstance(message, p.Run):
            runs.append(message)
    return runs


async def test_a_run_refused_as_busy_goes_to_another_instance_at_once() -> None:
    async with plane() as (cp, _):
        a, b = await join(cp, "a"), await join(cp, "b")
        await a.expect(p.Sync)
        await b.expect(p.Sync)
        beats = [asyncio.create_task(a.beat(0.05)), asyncio.create_task(b.beat(0.05))]
        await cp.add_monitor("m1", "office", {**DEF, "timeouts": {"total": 60}}, interval=2.0)
        first = asyncio.create_task(a.expect(p.Run, timeout=3))
        second = asyncio.create_task(b.expect(p.Run, timeout=3))
        done, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
        busy, other = (a, second) if first in done else (b, first)
        run = next(iter(done)).result()
        assert run.reason == "scheduled"
        await busy.send(p.Error(code="internal", message="busy", ref=run.request_id))
        moved = await asyncio.wait_for(other, 0.5)  # at once, not at the next interval
        assert moved.monitor_id == "m1" and moved.reason == "scheduled"
        assert moved.request_id != run.request_id
        for task in beats:
            task.cancel()
        for inst in (a, b):
            await inst.conn.close()


# -- 3. durable control-plane state ------------------------------------------------------------


async def test_an_open_alert_survives_a_restart_and_resolves_on_recovery(tmp_path: Path) -> None:
    db = str(tmp_path / "control.db")
    async with plane(db) as (cp, sink):
        await cp.add_monitor("m1", "office", DEF, interval=3600)
        a, b = await join(cp, "a"), await join(cp, "b")
        await a.expect(p.Sync)
        await b.expect(p.Sync)
        await a.result(None, Status.DOWN)
        await b.result(await b.expect(p.Run), Status.DOWN)
        await sink.wait_for(lambda ev: bool(alerts_opened(sink, "monitor_down")), 5)
        (opened,) = alerts_opened(sink, "monitor_down")
        for inst in (a, b):
            await inst.conn.close()
    async with plane(db) as (cp, sink):
        (row,) = await cp.alerts()
        assert opened.alert is not None
        assert (row["alert_id"], row["kind"], row["subject"]) == (
            opened.alert.alert_id,
            "monitor_down",
            "m1",
        )
        a = await join(cp, "a", holdings={"m1": 1})
        await a.expect(p.Sync)
        await a.result(None, Status.DOWN)  # still down: no second alert, no new confirmation
        await a.expect(p.Ack)
        await a.result(None, Status.UP)
        await sink.wait_for(lambda ev: any(e.kind == "alert_resolved" for e in ev), 5)
        (resolved,) = [e for e in sink.events if e.kind == "alert_resolved"]
        assert resolved.alert is not None and resolved.alert.alert_id == opened.alert.alert_id
        assert not [e for e in sink.events if e.kind in ("alert_opened", "unconfirmed")]
        assert await cp.alerts() == []
        await a.conn.close()


async def test_a_configured_checkpoint_that_never_connects_raises_one_checkpoint_down() -> None:
    async with plane(missed_heartbeats=3, startup_grace=0.0) as (cp, sink):
        office = await join(cp, "office-a")
        await office.expect(p.Sync)
        beat = asyncio.create_task(office.beat(0.05))
        try:
            await sink.wait_for(lambda ev: bool(alerts_opened(sink, "checkpoint_down")), 3)
            await asyncio.sleep(1.0)
        finally:
            beat.cancel()
        (down,) = alerts_opened(sink, "checkpoint_down")
        assert down.subject == "lab" and "never" in down.message
        (row,) = await cp.alerts()
        assert row["subject"] == "lab"
        lab = await join(cp, "lab-a", token=LAB_TOKEN, checkpoint_id="lab")
        await lab.expect(p.Sync)
        await sink.wait_for(lambda ev: any(e.kind == "alert_resolved" for e in ev), 3)
        assert await cp.alerts() == []
        for inst in (office, lab):
            await inst.conn.close()


async def test_checkpoint_down_is_not_forgotten_across_a_restart(tmp_path: Path) -> None:
    """The issue's scenario: instances and the control plane killed, the control plane restarted:
    checkpoint-down after the threshold, with the last-seen time kept in the database."""
    db = str(tmp_path / "control.db")
    async with plane(db) as (cp, _):
        a = await join(cp, "a")
        await a.expect(p.Sync)
        await a.heartbeat()
        await asyncio.sleep(0.1)
        await a.conn.close()
    seen = time.time()
    async with plane(db, missed_heartbeats=3, startup_grace=0.5) as (cp, sink):
        last = await cp.last_seen()
        assert seen - 5 < last["checkpoints"]["office"] <= seen
        assert last["instances"]["a"]["checkpoint_id"] == "office"
        assert last["checkpoints"]["lab"] is None
        started = time.monotonic()
        await sink.wait_for(lambda ev: len(alerts_opened(sink, "checkpoint_down")) == 2, 5)
        assert time.monotonic() - started >= 0.5  # the startup grace: time to reconnect
        office = next(e for e in alerts_opened(sink, "checkpoint_down") if e.subject == "office")
        assert "last seen" in office.message
        await asyncio.sleep(0.5)
        assert len(alerts_opened(sink, "checkpoint_down")) == 2
    async with plane(db) as (cp, sink):  # still down, and still one alert each
        assert {r["subject"] for r in await cp.alerts()} == {"office", "lab"}
        await asyncio.sleep(0.5)
        assert alerts_opened(sink, "checkpoint_down") == []
        a = await join(cp, "a")
        await a.expect(p.Sync)
        await sink.wait_for(lambda ev: any(e.kind == "alert_resolved" for e in ev), 3)
        assert {r["subject"] for r in await cp.alerts()} == {"lab"}
        await a.conn.close()


async def test_request_ids_are_unique_across_control_plane_lifetimes(tmp_path: Path) -> None:
    db = str(tmp_path / "control.db")
    ids: list[str] = []
    for _ in range(2):
        async with plane(db) as (cp, _):
            await cp.add_monitor("m1", "office", DEF, interval=3600)
            a = await join(cp, "a")
            await a.expect(p.Sync)
            for _ in range(5):
                request_id = await cp.run_now("m1", "a")
                assert request_id is not None
                ids.append(request_id)
            await a.conn.close()
    assert len(set(ids)) == 10
    assert ids == sorted(ids)  # time-ordered


async def test_stored_events_have_wall_clock_timestamps(tmp_path: Path) -> None:
    async with plane(str(tmp_path / "control.db")) as (cp, sink):
        await cp.add_monitor("m1", "office", DEF, interval=3600)
        a = await join(cp, "a")
        await a.expect(p.Sync)
        await a.result(None, Status.DOWN)
        await sink.wait_for(lambda ev: any(e.kind == "unconfirmed" for e in ev), 5)
        now = time.time()
        (event,) = [e for e in sink.events if e.kind == "unconfirmed"]
        assert abs(event.at - now) < 5
        (row,) = [e for e in await cp.events() if e["kind"] == "unconfirmed"]
        assert abs(row["at"] - now) < 5
        (stored,) = await cp.results("m1")
        assert abs(stored["stored_at"] - now) < 5
        await a.conn.close()


OLD_SCHEMA = """
CREATE TABLE monitors (
    monitor_id TEXT PRIMARY KEY, checkpoint_id TEXT NOT NULL, interval REAL NOT NULL,
    revision INTEGER NOT NULL, definition TEXT NOT NULL);
CREATE TABLE results (
    result_id TEXT PRIMARY KEY, monitor_id TEXT, checkpoint_id TEXT, instance_id TEXT,
    request_id TEXT, reason TEXT, status TEXT, error_kind TEXT, started_at TEXT,
    stored_at REAL, body TEXT);
CREATE INDEX results_monitor ON results (monitor_id, started_at);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, subject TEXT, at REAL, message TEXT,
    alert_id TEXT, alert_kind TEXT);
"""


@pytest.mark.sqlite_only
async def test_a_database_of_the_previous_schema_is_migrated_in_place(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute("INSERT INTO monitors VALUES ('m1', 'office', 3600, 4, ?)", (json.dumps(DEF),))
        conn.execute(
            "INSERT INTO events (kind, subject, at, message) "
            "VALUES ('transient', 'm1', 8123.5, 'm1: failed on a, passed on b')"
        )
    conn.close()
    async with plane(str(db)) as (cp, _):
        assert cp.monitors["m1"].revision == 4
        (old,) = await cp.events()
        assert old["kind"] == "transient" and old["at"] is None  # a monotonic reading: not a time
        await cp.remove_monitor("m1")
        await cp.add_monitor("m1", "office", DEF, interval=3600)
        assert cp.monitors["m1"].revision == 5  # revisions never go back, even after a removal
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 2
        assert conn.execute("SELECT monotonic FROM events WHERE kind='transient'").fetchone() == (
            8123.5,
        )
    conn.close()


@pytest.mark.sqlite_only
async def test_a_database_from_a_newer_probekit_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version=99")
    conn.close()
    cp = ControlPlane(settings(str(db)), sinks=[])
    with pytest.raises(sqlite3.DatabaseError, match="newer"):
        await cp.start()
    await cp.stop()
