"""Operating the control plane (issue 10, item 5): retention and its own ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probekit import DefinitionError, Secret, Status
from probekit import protocol as p
from probekit._clock import FakeClock
from probekit.control import ControlPlane, ControlSettings, MemorySink
from probekit.control import _store as db
from probekit.control._logic import Alert
from test_control import DEF, TOKEN, join

LAB_TOKEN = "lab-token-canary-5#k"


@contextlib.asynccontextmanager
async def plane(
    db_path: str = ":memory:", clock: FakeClock | None = None, **extra: Any
) -> AsyncIterator[ControlPlane]:
    values: dict[str, Any] = {
        "heartbeat_interval": 0.2,
        "tick_interval": 0.02,
        "missed_heartbeats": 25,
        "startup_grace": 60.0,
        "prune_interval": 3600.0,  # the tests prune when they choose
    }
    values.update(extra)
    settings = ControlSettings(
        tokens={"office": Secret(TOKEN), "lab": Secret(LAB_TOKEN)}, db_path=db_path, **values
    )
    async with ControlPlane(settings, sinks=[MemorySink()], clock=clock) as cp:
        await asyncio.sleep(0.05)  # the prune at start is done
        yield cp


def _result_row(at: float, body: str = "{}") -> tuple[Any, ...]:
    rid = uuid.uuid4().hex
    return (rid, "m1", "office", "a", None, "scheduled", "up", None, "2026-01-01", at, body)


async def _insert(cp: ControlPlane, at: float, results: int = 1, body: str = "{}") -> None:
    rows = [_result_row(at, body) for _ in range(results)]
    await cp._store.call(lambda c: db.insert_results(c, rows))


async def _everything_at(cp: ControlPlane, at: float, tag: str) -> None:
    """A result, an event, a run, a resolved alert and an open alert, all dated ``at``."""
    await _insert(cp, at)
    run = (f"run-{tag}", "a", "office", "m1", "scheduled", at, 10.0)
    await cp._store.call(lambda c: db.insert_runs(c, [run]))
    resolved = Alert(f"resolved-{tag}", "monitor_down", "m1", at, "down")
    still_open = Alert(f"open-{tag}", "monitor_down", "m2", at, "down")
    for alert in (resolved, still_open):
        event = ("alert_opened", alert.subject, at, "down", alert.alert_id, alert.kind)
        await cp._store.call(
            lambda c, e=event, a=alert: db.record_event(c, e, (a, None), None)  # type: ignore[misc]
        )
    event = ("alert_resolved", "m1", at, "up", resolved.alert_id, "monitor_down")
    await cp._store.call(lambda c: db.record_event(c, event, None, (resolved.alert_id, at)))


async def _count(cp: ControlPlane, table: str) -> int:
    row = await cp._store.call(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone())  # noqa: S608
    return int(row[0])


# -- retention --------------------------------------------------------------------------------


async def test_retention_prunes_only_rows_older_than_it_and_never_an_open_alert() -> None:
    clock = FakeClock()
    async with plane(clock=clock, retention=100.0) as cp:
        await _everything_at(cp, clock.now().timestamp(), "old")
        clock.advance(150)
        await _everything_at(cp, clock.now().timestamp(), "new")
        pruned = await cp.prune()
        assert pruned.deleted == {"results": 1, "events": 3, "runs": 1, "alerts": 1}
        assert cp.rows_pruned == 6
        assert await _count(cp, "results") == 1
        assert [e["at"] for e in await cp.events()] == [clock.now().timestamp()] * 3
        rows = await cp._store.call(lambda c: c.execute("SELECT request_id FROM runs").fetchall())
        assert rows == [("run-new",)]
        alerts = {a["alert_id"] for a in await cp.alerts(open_only=False)}
        # the old alert still open stays, however old; the old resolved one goes
        assert alerts == {"open-old", "resolved-new", "open-new"}
        assert (await cp.prune()).deleted == {"results": 0, "events": 0, "runs": 0, "alerts": 0}


async def test_without_retention_nothing_is_pruned() -> None:
    clock = FakeClock()
    async with plane(clock=clock, retention=None) as cp:
        await _everything_at(cp, clock.now().timestamp(), "old")
        clock.advance(10 * 365 * 86400)
        pruned = await cp.prune()
        assert (pruned.deleted, pruned.statements) == ({}, 0)
        assert await _count(cp, "results") == 1
        await cp.measure()
        assert cp.prune_lag() == 0


async def test_many_old_rows_are_deleted_in_several_small_statements() -> None:
    clock = FakeClock()
    async with plane(clock=clock, retention=100.0, prune_batch=10) as cp:
        await _insert(cp, clock.now().timestamp(), results=35)
        clock.advance(101)
        await _insert(cp, clock.now().timestamp(), results=3)
        statements: list[str] = []
        await cp._store.call(lambda c: c.set_trace_callback(statements.append))
        pruned = await cp.prune()
        await cp._store.call(lambda c: c.set_trace_callback(None))
        assert pruned.deleted["results"] == 35
        deletes = [s for s in statements if s.startswith("DELETE FROM results")]
        assert len(deletes) == 4  # 10 + 10 + 10 + 5
        assert pruned.statements == 4 + 3  # one each for events, runs and alerts
        assert await _count(cp, "results") == 3


async def test_the_database_stays_the_same_size_at_a_steady_rate(tmp_path: Path) -> None:
    clock = FakeClock()
    body = "x" * 400
    sizes = []
    async with plane(str(tmp_path / "c.db"), clock=clock, retention=50.0, prune_batch=100) as cp:
        for _ in range(40):  # 200 results every 10 s, kept 50 s: about 1,000 rows at any time
            await _insert(cp, clock.now().timestamp(), results=200, body=body)
            clock.advance(10)
            await cp.prune()
            await cp.measure()
            sizes.append(cp.db_bytes)
        assert 1000 <= await _count(cp, "results") <= 1200
    steady = sizes[10]  # past the first retention period, freed pages are reused
    assert max(sizes[10:]) <= steady * 1.1, sizes
    assert sizes[-1] < 4 * sizes[4], sizes  # without retention it would grow 8-fold


async def test_prune_lag_is_how_far_the_oldest_row_is_past_the_retention() -> None:
    clock = FakeClock()
    async with plane(clock=clock, retention=100.0) as cp:
        await _insert(cp, clock.now().timestamp())
        await cp.measure()
        assert cp.prune_lag() == 0
        clock.advance(150)
        assert cp.prune_lag() == pytest.approx(50)
        await cp.prune()
        await cp.measure()
        assert cp.prune_lag() == 0
        assert cp.oldest_row is None


async def test_the_control_plane_prunes_by_itself_every_prune_interval() -> None:
    clock = FakeClock()
    async with plane(clock=clock, retention=100.0, prune_interval=0.05) as cp:
        await _insert(cp, clock.now().timestamp(), results=5)
        clock.advance(101)
        for _ in range(250):
            if not await _count(cp, "results"):
                break
            await asyncio.sleep(0.02)
        assert await _count(cp, "results") == 0
        assert cp.rows_pruned == 5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retention", 0),
        ("retention", -1.0),
        ("retention", float("inf")),
        ("prune_interval", 0),
        ("prune_interval", None),
        ("prune_batch", 0),
        ("prune_batch", 1.5),
        ("metrics_port", 70000),
        ("metrics_port", True),
    ],
)
def test_retention_and_metrics_settings_are_checked(field: str, value: Any) -> None:
    with pytest.raises(DefinitionError, match=field):
        ControlSettings(tokens={"office": Secret(TOKEN)}, **{field: value})


def test_retention_defaults_to_30_days() -> None:
    settings = ControlSettings(tokens={"office": Secret(TOKEN)})
    assert settings.retention == 30 * 86400
    assert settings.metrics_port is None


async def test_a_schema_2_database_gets_the_retention_indexes(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with plane(str(path)):
        pass
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP INDEX results_stored")
        conn.execute("PRAGMA user_version=2")
        conn.commit()
    async with plane(str(path)):
        pass
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION == 3
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"results_stored", "events_at", "runs_sent", "alerts_resolved"} <= names


# -- /metrics ---------------------------------------------------------------------------------


async def _get(address: tuple[str, int], path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_control_plane_serves_its_metrics_and_ready() -> None:
    async with plane(metrics_port=0, startup_grace=0.0, missed_heartbeats=2) as cp:
        assert cp.metrics_address is not None
        await cp.add_monitor("m1", "office", DEF, interval=3600)
        a = await join(cp, "a")
        await a.expect(p.Sync)
        await a.result(None, Status.UP)
        await a.expect(p.Ack)
        # an unknown monitor: refused and counted
        await a.result(None, Status.UP, monitor_id="nope")
        await a.expect(p.Ack)
        # lab never connects: checkpoint_down opens
        sink = cp.sinks[0]
        assert isinstance(sink, MemorySink)
        await sink.wait_for(lambda events: any(e.kind == "alert_opened" for e in events), 5)
        await cp.measure()
        status, body = await _get(cp.metrics_address, "/metrics")
        assert status == 200
        samples = _samples(body)
        office = (("checkpoint_id", "office"),)
        lab = (("checkpoint_id", "lab"),)
        assert samples["probekit_control_instances_connected", office] == 1
        assert samples["probekit_control_instances_connected", lab] == 0
        assert samples["probekit_control_results_stored_total", ()] == 1
        assert samples["probekit_control_results_refused_total", ()] == 1
        assert samples["probekit_control_runs_outstanding", ()] == len(cp.logic.outstanding)
        assert ("probekit_control_runs_reassigned_total", ()) in samples
        assert ("probekit_control_instances_cut_total", ()) in samples
        assert samples["probekit_control_alerts_open", (("kind", "checkpoint_down"),)] == 1
        assert samples["probekit_control_alerts_open", (("kind", "monitor_down"),)] == 0
        assert samples["probekit_control_db_bytes", ()] > 0
        assert samples["probekit_control_prune_lag_seconds", ()] == 0
        assert (await _get(cp.metrics_address, "/ready"))[0] == 200
        families = {f.name: f.type for f in text_string_to_metric_families(body)}
        assert families["probekit_control_results_stored"] == "counter"
        assert families["probekit_control_alerts_open"] == "gauge"
        await a.conn.close()
        address = cp.metrics_address
    assert cp.metrics_address is None
    with pytest.raises(ConnectionRefusedError):
        await _get(address, "/ready")


async def test_no_metrics_endpoint_by_default() -> None:
    async with plane() as cp:
        assert cp.metrics_address is None
        assert "probekit_control_results_stored_total 0" in cp.metrics_text()
