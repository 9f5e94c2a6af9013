"""Operating the control plane (issue 10, item 5): retention and its own ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from probekit import DefinitionError, Secret, Status
from probekit import protocol as p
from probekit._clock import FakeClock
from probekit.control import ControlPlane, ControlSettings, MemorySink
from probekit.control import _store as db
from probekit.control._logic import Alert
from test_control import DEF, TOKEN, join

pytestmark = pytest.mark.usefixtures("control_store")

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
    # (A startup grace beyond the clock's jumps: no checkpoint_down event joins those counted.)
    async with plane(clock=clock, retention=100.0, startup_grace=1e9) as cp:
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
    # Past the first retention periods freed space is reused (SQLite's free pages at once;
    # PostgreSQL's after the VACUUM that follows a prune, settling a few rounds later).
    steady = sizes[15]
    assert max(sizes[15:]) <= steady * 1.1, sizes
    assert sizes[-1] < 4 * sizes[4], sizes  # without retention it would grow 8-fold


async def test_prune_lag_is_how_far_the_oldest_row_is_past_the_retention() -> None:
    clock = FakeClock()
    # (a long startup grace: no checkpoint_down event, dated now, when the clock jumps)
    async with plane(clock=clock, retention=100.0, startup_grace=3600.0) as cp:
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


@pytest.mark.sqlite_only
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
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION == 5
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


# -- SIGHUP: the [control] settings and the tokens -------------------------------------------------


async def _closed(inst: Any, timeout: float = 5.0) -> int | None:
    await asyncio.wait_for(asyncio.shield(inst.task), timeout)
    return int(inst.conn.close_code) if inst.conn.close_code is not None else None


async def test_reconfigure_accepts_a_new_token_and_closes_a_removed_checkpoints_connections() -> (
    None
):
    from websockets.exceptions import InvalidStatus

    async with plane() as cp:
        lab = await join(cp, "lab-a", token=LAB_TOKEN, checkpoint_id="lab")
        office = await join(cp, "office-a")
        await lab.expect(p.Sync)
        await office.expect(p.Sync)
        with pytest.raises(InvalidStatus):  # not yet a checkpoint
            await join(cp, "depot-a", token="depot-token-9", checkpoint_id="depot")
        new = attrs.evolve(
            cp.settings, tokens={"office": Secret(TOKEN), "depot": Secret("depot-token-9")}
        )
        outcome = await cp.reconfigure(new)
        assert await _closed(lab) == 1008
        depot = await join(cp, "depot-a", token="depot-token-9", checkpoint_id="depot")
        await depot.expect(p.Sync)
        with pytest.raises(InvalidStatus) as refused:  # the removed token is refused
            await join(cp, "lab-b", token=LAB_TOKEN, checkpoint_id="lab")
        assert refused.value.response.status_code == 401
        assert sorted(cp.connected) == ["depot-a", "office-a"]
        assert not office.task.done()  # the other checkpoints' connections stay
        assert "lab" not in cp.logic.checkpoints and "depot" in cp.logic.checkpoints
    assert outcome.checkpoints_added == ("depot",) and outcome.checkpoints_removed == ("lab",)
    assert outcome.tokens_changed == () and outcome.closed == 1


async def test_reconfigure_with_a_changed_token_closes_its_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from websockets.exceptions import InvalidStatus

    async with plane() as cp:
        old = await join(cp, "office-a")
        await old.expect(p.Sync)
        new = attrs.evolve(
            cp.settings, tokens={"office": Secret("office-new-1"), "lab": Secret(LAB_TOKEN)}
        )
        with caplog.at_level(logging.DEBUG):
            outcome = await cp.reconfigure(new)
            assert await _closed(old) == 1008
            with pytest.raises(InvalidStatus):
                await join(cp, "office-a")  # the old token
            back = await join(cp, "office-a", token="office-new-1")
            await back.expect(p.Sync)
    assert outcome.tokens_changed == ("office",) and outcome.closed == 1
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("probekit")]
    assert any("office-a" in line for line in ours)
    assert not any(TOKEN in line or "office-new-1" in line for line in ours)


async def test_a_connection_whose_token_changes_before_its_hello_is_closed() -> None:
    """The token was good at the upgrade; a reload changed it before the hello arrived."""
    from websockets.asyncio.client import connect

    async with plane() as cp:
        async with connect(
            cp.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, proxy=None
        ) as conn:
            new = attrs.evolve(
                cp.settings, tokens={"office": Secret("office-new-1"), "lab": Secret(LAB_TOKEN)}
            )
            await cp.reconfigure(new)
            hello = p.Hello(
                checkpoint_id="office",
                instance_id="office-a",
                software_version="test",
                kinds=("tcp",),
                holdings={},
            )
            await conn.send(p.encode(hello))
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(5):
                    while True:
                        await conn.recv()
            assert (conn.close_code, conn.close_reason) == (1008, "token changed")
        assert cp.connected == []


async def test_reconfigure_applies_live_settings_and_names_those_that_take_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with plane() as cp:
        before = cp.settings
        new = attrs.evolve(
            before,
            grace=7.0,
            unanswered_runs=9,
            missed_heartbeats=4,
            startup_grace=11.0,
            stale_after=33.0,
            retention=1234.0,
            prune_batch=77,
            host="127.0.0.2",
            port=1,
            heartbeat_interval=3.0,
            max_frame_bytes=2 * 1048576,
        )
        with caplog.at_level(logging.WARNING, logger="probekit.control"):
            outcome = await cp.reconfigure(new)
        settings, logic = cp.settings, cp.logic
    assert set(outcome.applied) == {
        *("grace", "unanswered_runs", "missed_heartbeats", "startup_grace"),
        *("stale_after", "retention", "prune_batch"),
    }
    assert set(outcome.restart) == {"host", "port", "heartbeat_interval", "max_frame_bytes"}
    assert (logic.grace, logic.unanswered_limit, logic.missed_heartbeats) == (7.0, 9, 4)
    assert logic.startup_grace == 11.0
    assert (settings.stale_after, settings.retention, settings.prune_batch) == (33.0, 1234.0, 77)
    # What takes a restart keeps its running value, and the operator is told.
    assert (settings.host, settings.port) == (before.host, before.port)
    assert settings.heartbeat_interval == before.heartbeat_interval
    assert settings.max_frame_bytes == before.max_frame_bytes
    (warning,) = [r.getMessage() for r in caplog.records if "take a restart" in r.getMessage()]
    assert "host" in warning and "port" in warning and "max_frame_bytes" in warning


async def test_a_removed_checkpoints_alert_resolves_and_an_added_one_gets_its_grace() -> None:
    clock = FakeClock()
    sink = MemorySink()
    settings = ControlSettings(
        tokens={"office": Secret(TOKEN), "lab": Secret(LAB_TOKEN)},
        heartbeat_interval=0.2,
        tick_interval=0.02,
        startup_grace=30.0,
        prune_interval=3600.0,
    )

    def opened(subject: str) -> bool:
        return any(e.kind == "alert_opened" and e.subject == subject for e in sink.events)

    async with ControlPlane(settings, sinks=[sink], clock=clock) as cp:
        clock.advance(31.0)
        await sink.wait_for(lambda _: opened("lab") and opened("office"), 5.0)
        new = attrs.evolve(settings, tokens={"office": Secret(TOKEN), "depot": Secret("d-9")})
        await cp.reconfigure(new)
        await sink.wait_for(
            lambda ev: any(e.kind == "alert_resolved" and e.subject == "lab" for e in ev), 5.0
        )
        # depot is expected from the reload on: its 30 s of grace start now, not at the start.
        for _ in range(10):
            await cp._dispatch(cp.logic.tick())
        assert not opened("depot")
        clock.advance(31.0)
        await sink.wait_for(lambda _: opened("depot"), 5.0)
        open_alerts = {a["subject"] for a in await cp.alerts()}
    assert open_alerts == {"office", "depot"}


async def test_sighup_reload_applies_tokens_and_warns_about_restart_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's reload: a new checkpoint, a changed grace, a changed port (a restart)."""
    import argparse

    from probekit.cli.control import _load, _reload

    monkeypatch.setenv("PK_OFFICE", TOKEN)
    monkeypatch.setenv("PK_DEPOT", "depot-token-9")
    path = tmp_path / "control.toml"
    text = f"""
[control]
port = 0
db = "{tmp_path / "control.db"}"
grace = 2

[[checkpoints]]
id = "office"
token = {{ env = "PK_OFFICE" }}

[[monitors]]
id = "m1"
checkpoint = "office"
kind = "tcp"
host = "127.0.0.1"
port = 9
"""
    path.write_text(text)
    args = argparse.Namespace(
        config=str(path), insecure=False, metrics_port=None, metrics_host=None
    )
    config = _load(args)
    lines: list[str] = []
    async with ControlPlane(config.settings, sinks=[MemorySink()]) as cp:
        path.write_text(
            text.replace("port = 0", "port = 1").replace("grace = 2", "grace = 5")
            + '\n[[checkpoints]]\nid = "depot"\ntoken = { env = "PK_DEPOT" }\n'
        )
        config = await _reload(args, cp, config, lines.append)
        depot = await join(cp, "depot-a", token="depot-token-9", checkpoint_id="depot")
        await depot.expect(p.Sync)
        grace = cp.logic.grace
    (line,) = lines
    assert "checkpoints added: depot" in line and "settings applied: grace" in line
    assert "take a restart" in capsys.readouterr().err
    assert grace == 5.0 and config.settings.port == 0


async def test_a_plain_control_plane_names_a_client_that_speaks_tls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other side of a wss:// checkpoint dialling a plain control plane."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with plane() as cp:
        with caplog.at_level(logging.WARNING, logger="probekit.control"):
            for _ in range(2):  # said once a minute per address, not per attempt
                with contextlib.suppress(OSError, ssl.SSLError):
                    async with asyncio.timeout(5):
                        _, writer = await asyncio.open_connection("127.0.0.1", cp.port, ssl=context)
                        writer.close()
            # and an ordinary client is not taken for one
            inst = await join(cp, "office-a")
            await inst.expect(p.Sync)
    lines = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "127.0.0.1" in lines[0] and "tls_cert and tls_key" in lines[0]
