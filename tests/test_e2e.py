"""End to end on loopback with real WebSockets: a control plane, two checkpoint instances, targets.

Covers the checkpoint issue's acceptance: results stored for every monitor with runs alternating;
confirmation on the other instance and one alert; transients; a control-plane outage survived in
autonomous mode with nothing lost or duplicated; a ``kill -9``'d instance delivering its spool
after restart; one checkpoint-down alert; the local policy holding against the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from probekit import EgressPolicy, Secret
from probekit.checkpoint import Checkpoint, CheckpointSettings
from probekit.control import ControlPlane, ControlSettings, MemorySink
from servers import HttpServer, Request, response, serving

TOKEN = "e2e-token-canary-3#z"
HB = 0.3


def plane_settings(db: Path, port: int = 0) -> ControlSettings:
    return ControlSettings(
        tokens={"office": Secret(TOKEN)},
        db_path=str(db),
        port=port,
        heartbeat_interval=HB,
        tick_interval=0.02,
    )


def instance_settings(url: str, instance_id: str, spool: Path, **extra: Any) -> CheckpointSettings:
    defaults: dict[str, Any] = {
        "heartbeat_interval": HB,
        "reconnect_initial": 0.05,
        "reconnect_max": 0.3,
        "ping_interval": 1.0,
        "ping_timeout": 1.0,
        "open_timeout": 2.0,
        "drain_timeout": 2.0,
    }
    defaults.update(extra)
    return CheckpointSettings(
        url=url,
        token=Secret(TOKEN),
        checkpoint_id="office",
        instance_id=instance_id,
        spool_path=str(spool),
        insecure=True,
        **defaults,
    )


async def until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Switch:
    """A target whose health the test flips: healthy, down (500), or failing the next n requests."""

    def __init__(self) -> None:
        self.down = False
        self.fail_next = 0

    async def __call__(self, req: Request, writer: asyncio.StreamWriter) -> None:
        if self.down or self.fail_next > 0:
            self.fail_next = max(self.fail_next - 1, 0)
            writer.write(response(500, b"broken"))
        else:
            writer.write(response(200, b"fine"))


@contextlib.asynccontextmanager
async def system(
    tmp_path: Path, sink: MemorySink, **instance_extra: Any
) -> AsyncIterator[tuple[ControlPlane, list[Checkpoint]]]:
    async with ControlPlane(plane_settings(tmp_path / "control.db"), sinks=[sink]) as cp:
        a = Checkpoint(instance_settings(cp.url, "a", tmp_path / "a.db", **instance_extra))
        b = Checkpoint(instance_settings(cp.url, "b", tmp_path / "b.db", **instance_extra))
        async with a, b:
            await until(lambda: cp.connected == ["a", "b"], 5, "both instances to connect")
            yield cp, [a, b]


async def test_every_monitor_reports_up_and_runs_alternate(tmp_path: Path) -> None:
    sink = MemorySink()
    async with serving(HttpServer()) as web, system(tmp_path, sink) as (cp, _):
        await cp.add_monitor("web", "office", {"kind": "http", "url": web.url("/ok")}, interval=0.2)
        await cp.add_monitor(
            "port", "office", {"kind": "tcp", "host": "127.0.0.1", "port": web.port}, interval=0.2
        )

        async def enough() -> bool:
            counts = [len(await cp.results(m)) for m in ("web", "port")]
            return min(counts) >= 8

        await until(enough, 10, "8 results per monitor")
        for monitor in ("web", "port"):
            rows = [r for r in await cp.results(monitor) if r["reason"] == "scheduled"]
            assert {r["status"] for r in rows} == {"up"}, rows
            instances = [r["instance_id"] for r in rows]
            assert set(instances) == {"a", "b"}
            assert all(x != y for x, y in itertools.pairwise(instances)), instances


async def test_failure_is_confirmed_on_the_other_instance_then_one_alert(tmp_path: Path) -> None:
    sink = MemorySink()
    switch = Switch()
    async with serving(HttpServer(handler=switch)) as web, system(tmp_path, sink) as (cp, _):
        await cp.add_monitor("web", "office", {"kind": "http", "url": web.url("/")}, interval=0.2)
        await until(
            lambda: len([e for e in sink.events if e.kind == "instance_up"]) >= 0, 1, "start"
        )
        await asyncio.sleep(0.6)
        switch.down = True
        await sink.wait_for(lambda ev: any(e.kind == "alert_opened" for e in ev), timeout=10)
        await asyncio.sleep(1.0)  # more failing runs: still one alert
        opened = [e for e in sink.events if e.kind == "alert_opened"]
        assert (
            len(opened) == 1
            and opened[0].alert is not None
            and opened[0].alert.kind == "monitor_down"
        )
        rows = await cp.results("web")
        first_down = next(r for r in rows if r["status"] == "down" and r["reason"] == "scheduled")
        confirm = next(r for r in rows if r["reason"] == "confirm")
        assert confirm["status"] == "down"
        assert confirm["instance_id"] != first_down["instance_id"]
        switch.down = False
        await sink.wait_for(lambda ev: any(e.kind == "alert_resolved" for e in ev), timeout=10)


async def test_a_failure_that_recovers_is_a_transient_not_an_alert(tmp_path: Path) -> None:
    sink = MemorySink()
    switch = Switch()
    async with serving(HttpServer(handler=switch)) as web, system(tmp_path, sink) as (cp, _):
        await cp.add_monitor("web", "office", {"kind": "http", "url": web.url("/")}, interval=0.2)
        await asyncio.sleep(0.5)
        switch.fail_next = 1
        await sink.wait_for(lambda ev: any(e.kind == "transient" for e in ev), timeout=10)
        await asyncio.sleep(0.5)
        assert not [e for e in sink.events if e.kind == "alert_opened"]
        stored = [e["kind"] for e in await cp.events()]
        assert "transient" in stored and "unconfirmed" in stored


async def test_denied_definition_is_policy_denied_and_never_dialled(tmp_path: Path) -> None:
    sink = MemorySink()
    async with (
        serving(HttpServer(host="127.0.0.2")) as hidden,
        system(tmp_path, sink, policy=EgressPolicy(deny=["127.0.0.2/32"])) as (cp, _),
    ):
        await cp.add_monitor(
            "hidden", "office", {"kind": "http", "url": hidden.url("/ok")}, interval=0.2
        )

        async def some() -> bool:
            return len(await cp.results("hidden")) >= 4

        await until(some, 10, "results for the denied monitor")
        rows = await cp.results("hidden")
        assert {(r["status"], r["error_kind"]) for r in rows} == {("down", "policy_denied")}
        assert hidden.connections == 0


async def test_both_instances_gone_raise_one_checkpoint_alert_then_it_resolves(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    async with (
        serving(HttpServer()) as web,  # a healthy target: only the checkpoint goes down
        ControlPlane(plane_settings(tmp_path / "control.db"), sinks=[sink]) as cp,
    ):
        await cp.add_monitor(
            "web", "office", {"kind": "tcp", "host": "127.0.0.1", "port": web.port}, interval=0.5
        )
        a = Checkpoint(instance_settings(cp.url, "a", tmp_path / "a.db"))
        b = Checkpoint(instance_settings(cp.url, "b", tmp_path / "b.db"))
        async with a, b:
            await until(lambda: cp.connected == ["a", "b"], 5, "both connected")
        stopped = time.monotonic()
        await sink.wait_for(
            lambda ev: any(
                e.kind == "alert_opened"
                and e.alert is not None
                and e.alert.kind == "checkpoint_down"
                for e in ev
            ),
            timeout=3 * HB + 2,
        )
        took = time.monotonic() - stopped
        assert took <= 3 * HB + 0.5, took
        await asyncio.sleep(1.0)
        downs = [
            e
            for e in sink.events
            if e.kind == "alert_opened"
            and e.alert is not None
            and e.alert.kind == "checkpoint_down"
        ]
        assert len(downs) == 1
        assert not [
            e
            for e in sink.events
            if e.kind == "alert_opened" and e.alert is not None and e.alert.kind == "monitor_down"
        ]
        async with Checkpoint(instance_settings(cp.url, "a", tmp_path / "a.db")):
            await sink.wait_for(lambda ev: any(e.kind == "alert_resolved" for e in ev), timeout=5)


OUTAGE = float(os.environ.get("PROBEKIT_E2E_OUTAGE", "60"))


async def test_control_plane_outage_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    sink = MemorySink()
    db = tmp_path / "control.db"
    async with serving(HttpServer()) as web:
        cp = ControlPlane(plane_settings(db), sinks=[sink])
        await cp.start()
        port = cp.port
        await cp.add_monitor("web", "office", {"kind": "http", "url": web.url("/ok")}, interval=1.0)
        a = Checkpoint(instance_settings(cp.url, "a", tmp_path / "a.db"))
        b = Checkpoint(instance_settings(cp.url, "b", tmp_path / "b.db"))
        async with a, b:
            await until(
                lambda: cp.connected == ["a", "b"] and a.stats["definitions"] == 1, 5, "sync"
            )
            await asyncio.sleep(1.5)
            await cp.stop()
            before = a.stats["results_produced"] + b.stats["results_produced"]
            await asyncio.sleep(OUTAGE)
            during = a.stats["results_produced"] + b.stats["results_produced"] - before
            assert a.stats["autonomous"] and b.stats["autonomous"]
            assert during >= OUTAGE  # two instances, one run a second each, give or take
            cp = ControlPlane(plane_settings(db, port=port), sinks=[sink])
            await cp.start()
            try:
                await until(lambda: a.connected and b.connected, 10, "reconnect")
                await until(
                    lambda: a.stats["spool_depth"] == 0 and b.stats["spool_depth"] == 0,
                    20,
                    "spools to empty",
                )
                produced = a.stats["results_produced"] + b.stats["results_produced"]
                stored = await cp.result_count()
            finally:
                pass
        await cp.stop()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT result_id) FROM results").fetchone()
    assert rows[0] == rows[1]  # no id stored twice
    # every result produced, before, during and after the outage, is stored (drain may add a few)
    assert rows[0] >= produced >= stored > 0
    assert stored >= produced - 2  # the instances may finish a run between the two readings


INSTANCE = textwrap.dedent(
    """
    import asyncio, sys
    from probekit import Secret
    from probekit.checkpoint import Checkpoint, CheckpointSettings
    url, spool = sys.argv[1], sys.argv[2]
    settings = CheckpointSettings(
        url=url, token=Secret(sys.argv[3]), checkpoint_id="office", instance_id="k",
        spool_path=spool, insecure=True, heartbeat_interval=0.3, reconnect_initial=0.05,
        reconnect_max=0.3, autonomous_when_disconnected=False,
    )
    async def main():
        await Checkpoint(settings).run()
    asyncio.run(main())
    """
)


class HoldAcks(ControlPlane):
    """A control plane that stores results but, while ``holding``, does not ack them."""

    holding = True

    async def _send(self, peer: Any, message: Any) -> None:
        from probekit import protocol as p

        if self.holding and isinstance(message, p.Ack):
            return
        await super()._send(peer, message)


async def test_kill_9_with_unacked_results_then_restart_delivers_them_once(tmp_path: Path) -> None:
    db, spool = tmp_path / "control.db", tmp_path / "k.db"
    async with serving(HttpServer()) as web, HoldAcks(plane_settings(db), sinks=[]) as cp:
        await cp.add_monitor("web", "office", {"kind": "http", "url": web.url("/ok")}, interval=0.1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", INSTANCE, cp.url, str(spool), TOKEN
        )
        try:
            await until(lambda: cp.results_stored >= 10, 15, "unacked results to arrive")
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        with sqlite3.connect(spool) as conn:
            unacked = {r[0] for r in conn.execute("SELECT result_id FROM entries")}
        stored_before = {r["result_id"] for r in await cp.results("web")}
        assert len(unacked) >= 10  # nothing was acked: the spool still has them all
        assert stored_before <= unacked
        cp.holding = False
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", INSTANCE, cp.url, str(spool), TOKEN
        )
        try:

            async def spool_empty() -> bool:
                with sqlite3.connect(spool) as conn:
                    return not conn.execute("SELECT count(*) FROM entries").fetchone()[0]

            await until(spool_empty, 15, "the restarted instance to deliver its spool")
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 5)
        stored = [r["result_id"] for r in await cp.results("web")]
    assert len(stored) == len(set(stored))  # none duplicated
    assert unacked <= set(stored)  # none lost
    assert cp.duplicates >= len(stored_before)  # they were re-sent, and deduplicated
