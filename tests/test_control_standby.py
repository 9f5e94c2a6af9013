"""A standby control plane on one PostgreSQL: one active (the advisory lock), the other waiting;
the active losing its database connection stops serving, the standby takes over, and real
checkpoint instances configured with both URLs move to it, losing and duplicating no result and
sending no alert twice."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from _pgserver import PgServer
from probekit import Secret
from probekit._exceptions import DefinitionError
from probekit.checkpoint import Checkpoint
from probekit.checkpoint._metrics import metrics_text
from probekit.control import ControlPlane, ControlSettings, MemorySink
from servers import HttpServer, serving
from test_e2e import TOKEN, Switch, instance_settings, until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _schema(pg_server: PgServer, name: str) -> str:
    import psycopg

    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        admin.execute(f"CREATE SCHEMA {name} AUTHORIZATION probekit")
    return f"{pg_server.url}?options=-csearch_path%3D{name}"


def _settings(pg_server: PgServer, url: str, port: int = 0, **extra: Any) -> ControlSettings:
    values: dict[str, Any] = {
        "heartbeat_interval": 0.3,
        "tick_interval": 0.02,
        "standby_poll": 0.1,
        "confirmations": 0,
    }
    values.update(extra)
    return ControlSettings(
        tokens={"office": Secret(TOKEN)},
        db_path=url,
        db_password=Secret(pg_server.password),
        port=port,
        standby=True,
        **values,
    )


async def _terminate(pg_server: PgServer, plane: ControlPlane) -> None:
    """End the plane's database connection from the server's side (what PostgreSQL sees of a
    control plane killed with -9: its connection gone, its session lock freed)."""
    import psycopg

    pid = await plane._store.call(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_standby_needs_postgresql() -> None:
    with pytest.raises(DefinitionError, match="standby"):
        ControlSettings(tokens={"office": Secret(TOKEN)}, db_path="c.db", standby=True)


async def test_the_standby_waits_and_takes_over_when_the_active_goes(
    pg_server: PgServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="probekit.control")
    url = _schema(pg_server, "standby_takeover")
    switch = Switch()
    sink_a, sink_b = MemorySink(), MemorySink()
    port_b = _free_port()
    async with serving(HttpServer(handler=switch)) as web:
        active = ControlPlane(_settings(pg_server, url), sinks=[sink_a])
        await active.start()
        assert active.active
        port_a = active.port
        standby = ControlPlane(_settings(pg_server, url, port=port_b), sinks=[sink_b])
        starting = asyncio.create_task(standby.start())
        await until(lambda: "standby: another control plane is active" in caplog.text, 10, "wait")
        assert not starting.done() and not standby.active

        await active.add_monitor("web", "office", {"kind": "http", "url": web.url("/")}, 0.2)
        urls = {"standby_urls": [f"ws://127.0.0.1:{port_b}"]}
        a = Checkpoint(instance_settings(active.url, "a", tmp_path / "a.db", **urls))
        b = Checkpoint(instance_settings(active.url, "b", tmp_path / "b.db", **urls))
        async with a, b:
            await until(lambda: active.connected == ["a", "b"], 10, "instances on the active")
            switch.down = True  # one alert, opened by the active
            await sink_a.wait_for(
                lambda evs: any(e.kind == "alert_opened" for e in evs), timeout=10
            )
            opened = [
                e.alert.alert_id for e in sink_a.events if e.kind == "alert_opened" and e.alert
            ]

            await _terminate(pg_server, active)
            await asyncio.wait_for(active.demoted.wait(), 10)
            assert not active.active
            await asyncio.wait_for(starting, 10)  # the standby holds the lock now
            assert standby.active
            await until(lambda: standby.connected == ["a", "b"], 15, "instances on the standby")

            switch.down = False  # the alert resolves, on the standby
            await sink_b.wait_for(
                lambda evs: any(e.kind == "alert_resolved" for e in evs), timeout=15
            )
            await until(
                lambda: a.stats["spool_depth"] == 0 and b.stats["spool_depth"] == 0,
                15,
                "spools to empty",
            )
            produced = a.stats["results_produced"] + b.stats["results_produced"]
            assert standby.results_stored > 0  # the instances moved, and delivered there
            with pytest.raises(ConnectionRefusedError):  # the demoted one serves no more
                await asyncio.open_connection("127.0.0.1", port_a)
            rows = await standby._store.call(
                lambda c: c.execute(
                    "SELECT count(*), count(DISTINCT result_id) FROM results"
                ).fetchone()
            )
        await standby.stop()
        await active.stop()
    stored, distinct = rows
    assert stored == distinct  # no result stored twice
    # none lost (a run may end between the two readings); at least the failure that opened
    # the alert and the success that resolved it (a loaded machine may run no more)
    assert stored >= max(produced - 2, 2)
    # the alert: opened once (by the active), never again by the standby, resolved once by it
    assert len(opened) == 1
    assert not [e for e in sink_b.events if e.kind == "alert_opened"]
    resolved = [e.alert.alert_id for e in sink_b.events if e.kind == "alert_resolved" and e.alert]
    assert resolved == opened
    assert "lost the active lock" in caplog.text


async def test_a_second_active_is_impossible_while_the_first_holds(pg_server: PgServer) -> None:
    url = _schema(pg_server, "standby_single")
    first = ControlPlane(_settings(pg_server, url), sinks=[])
    await first.start()
    second = ControlPlane(_settings(pg_server, url), sinks=[])
    starting = asyncio.create_task(second.start())
    # several polls of the standby go by; the first keeps its lock all along
    for _ in range(5):
        await asyncio.sleep(0.1)
        assert not starting.done()
    await first.stop()  # a clean stop frees the lock as well
    await asyncio.wait_for(starting, 10)
    assert second.active
    await second.stop()


def test_standby_urls_are_checked_like_the_url(tmp_path: Path) -> None:
    good = instance_settings(
        "ws://127.0.0.1:1/", "a", tmp_path / "a.db", standby_urls=["ws://127.0.0.1:2/"]
    )
    assert good.urls == ("ws://127.0.0.1:1/", "ws://127.0.0.1:2/")
    for bad, message in [
        ("wss://127.0.0.1:2/", r"standby_urls\[0\].*scheme of url"),
        ("ws://u:p@127.0.0.1:2/", r"standby_urls\[0\].*credentials"),
        ("http://127.0.0.1:2/", r"standby_urls\[0\].*expected ws"),
    ]:
        with pytest.raises(DefinitionError, match=message):
            instance_settings("ws://127.0.0.1:1/", "a", tmp_path / "a.db", standby_urls=[bad])


async def _http_get(
    port: int, path: str, token: str | None = None
) -> tuple[int, dict[str, str], str]:
    """One GET on 127.0.0.1:port: (status, headers lower-cased, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return int(status_line.split()[1]), headers, body


async def test_a_standby_listens_and_answers_while_it_waits(pg_server: PgServer) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    url = _schema(pg_server, "standby_answers")
    status = {"metrics_port": 0, "status_token": Secret("status-secret")}
    active = ControlPlane(_settings(pg_server, url, **status), sinks=[])
    await active.start()
    standby = ControlPlane(_settings(pg_server, url, **status), sinks=[])
    starting = asyncio.create_task(standby.start())
    try:
        await asyncio.wait_for(standby.listening.wait(), 10)
        assert not starting.done() and not standby.serving
        port = standby.port
        assert (await _http_get(port, "/-/healthy"))[0] == 200
        code, headers, body = await _http_get(port, "/-/ready")
        assert (code, headers["retry-after"], headers["probekit-role"]) == (503, "1", "standby")
        assert body == "standby; the active control plane holds the lock\n"
        assert (await _http_get(active.port, "/-/ready"))[:3:2] == (200, "ready\n")

        # an instance is refused with 503 and the role header (a wrong token still gets 401)
        with pytest.raises(InvalidStatus) as refused:
            await connect(standby.url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Probekit-Role"] == "standby"
        with pytest.raises(InvalidStatus) as wrong:
            await connect(standby.url, additional_headers={"Authorization": "Bearer nope"})
        assert wrong.value.response.status_code == 401
        assert standby.connected == []

        # the metrics endpoint: alive, not ready, metrics saying so, no status page
        assert standby.metrics_address is not None
        mport = standby.metrics_address[1]
        assert (await _http_get(mport, "/-/healthy"))[0] == 200
        code, headers, body = await _http_get(mport, "/ready")
        assert (code, headers["retry-after"], body) == (
            503,
            "1",
            "standby; the active control plane holds the lock\n",
        )
        code, _, body = await _http_get(mport, "/metrics")
        assert code == 200 and "\nprobekit_control_active 0.0\n" in body
        code, _, body = await _http_get(mport, "/status", token="status-secret")
        assert (code, body) == (503, "standby; the active control plane holds the lock\n")
        assert active.metrics_address is not None
        code, _, body = await _http_get(active.metrics_address[1], "/metrics")
        assert code == 200 and "\nprobekit_control_active 1.0\n" in body
        assert (await _http_get(active.metrics_address[1], "/status", token="status-secret"))[
            0
        ] == 200

        await _terminate(pg_server, active)
        await asyncio.wait_for(starting, 10)  # took over, on the socket it listened on
        assert standby.serving and standby.port == port
        assert (await _http_get(port, "/-/ready"))[:3:2] == (200, "ready\n")
        assert (await _http_get(mport, "/ready"))[0] == 200
        ws = await connect(standby.url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
        await ws.close()
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await standby.stop()
        await active.stop()


async def test_a_checkpoint_given_the_standby_first_moves_to_the_active_and_back(
    pg_server: PgServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="probekit.checkpoint")
    url = _schema(pg_server, "standby_moves")
    active = ControlPlane(_settings(pg_server, url), sinks=[])
    await active.start()
    standby = ControlPlane(_settings(pg_server, url), sinks=[])
    starting = asyncio.create_task(standby.start())
    try:
        await asyncio.wait_for(standby.listening.wait(), 10)
        # a long backoff: were the standby's answer a failure, the move would wait for it
        settings = instance_settings(
            standby.url,
            "a",
            tmp_path / "a.db",
            standby_urls=[active.url],
            reconnect_initial=60.0,
            reconnect_max=120.0,
        )
        b_settings = instance_settings(
            standby.url, "b", tmp_path / "b.db", standby_urls=[active.url]
        )
        async with Checkpoint(settings) as cp, Checkpoint(b_settings) as b:
            await until(lambda: active.connected == ["a", "b"], 10, "the instances on the active")
            assert cp.stats["standby_moves"] >= 1
            assert cp.stats["connect_failures"] == 0  # not counted as a failure
            assert b.stats["connect_failures"] == 0
            moved = [r for r in caplog.records if "is a standby" in r.getMessage()]
            assert moved and moved[0].levelno == logging.INFO
            assert standby.url in moved[0].getMessage() and active.url in moved[0].getMessage()
            assert "probekit_checkpoint_standby_moves_total" in metrics_text(
                cp.stats, "office", "a"
            )

            # the active dies: the standby takes over and serves the instance (b: a short
            # backoff; a waits out its long one)
            await _terminate(pg_server, active)
            await asyncio.wait_for(starting, 10)
            await until(lambda: "b" in standby.connected, 15, "the instance on the standby")
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await standby.stop()
        await active.stop()


async def test_a_checkpoint_given_only_the_standby_waits_for_it_without_failing(
    pg_server: PgServer, tmp_path: Path
) -> None:
    url = _schema(pg_server, "standby_only")
    active = ControlPlane(_settings(pg_server, url), sinks=[])
    await active.start()
    standby = ControlPlane(_settings(pg_server, url), sinks=[])
    starting = asyncio.create_task(standby.start())
    try:
        await asyncio.wait_for(standby.listening.wait(), 10)
        settings = instance_settings(standby.url, "a", tmp_path / "a.db", reconnect_max=60.0)
        async with Checkpoint(settings) as cp:
            # each round of its one URL answered "standby": it waits the Retry-After, and tries
            # again, never counting a failure (so never growing its backoff)
            await until(lambda: cp.stats["standby_moves"] >= 2, 10, "two standby answers")
            assert cp.stats["connect_failures"] == 0 and not cp.stats["connected"]
            await _terminate(pg_server, active)
            await asyncio.wait_for(starting, 10)
            await until(lambda: standby.connected == ["a"], 15, "the instance on the standby")
            assert cp.stats["connect_failures"] == 0
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await standby.stop()
        await active.stop()
