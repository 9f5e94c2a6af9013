"""Runs sent on a connection that a newer one of the same instance replaced are lost with it:
they move at once and are not counted against the instance as unanswered.

Found by the fault suite (faults/, `SIGSTOP control`, 15 s): when the control plane resumed, it
sent runs on the instances' old connections (they had given up on them after their pings went
unanswered), then took their new connections; the runs lost with the old ones counted as
unanswered on the new ones, and both healthy instances were cut as unresponsive.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from probekit import Secret, Status
from probekit import protocol as p
from probekit.control import ControlPlane, ControlSettings, MemorySink
from test_control import TOKEN, FakeInstance, join

pytestmark = pytest.mark.usefixtures("control_store")

DEF = {"kind": "tcp", "host": "127.0.0.1", "port": 9, "timeouts": {"total": 0.3}}


async def answer(inst: FakeInstance) -> None:
    """Heartbeat, and answer every run UP."""
    beats = asyncio.create_task(inst.beat(0.05))
    try:
        while True:
            run = await inst.expect(p.Run, timeout=30)
            await inst.result(run, Status.UP)
    finally:
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats


async def test_runs_lost_with_a_replaced_connection_are_not_held_against_the_instance() -> None:
    sink = MemorySink()
    settings = ControlSettings(
        tokens={"office": Secret(TOKEN)},
        heartbeat_interval=0.2,
        grace=0.2,
        tick_interval=0.02,
        unanswered_runs=1,  # one run unanswered while otherwise well: cut
    )
    async with ControlPlane(settings, sinks=[sink]) as cp:
        await cp.add_monitor("m1", "office", DEF, interval=3600)
        old = await join(cp, "a")
        await old.expect(p.Sync)
        await old.heartbeat()
        request_id = await cp.run_now("m1", "a")
        run = await old.expect(p.Run)
        assert run.request_id == request_id  # sent on the old connection, never answered
        new = await join(cp, "a")  # the instance comes back on a new connection
        await new.expect(p.Sync)
        answering = asyncio.create_task(answer(new))
        try:
            # Well past the run's deadline plus the grace.
            await asyncio.sleep(4 * (0.3 + 0.2))
            events = [e.kind for e in sink.events]
            connected = cp.connected
        finally:
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answering
    assert "instance_unresponsive" not in events
    assert list(connected) == ["a"]
    assert cp.stats()["instances_cut"] == 0
