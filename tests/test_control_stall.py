"""A control plane that itself did not run for a while (its process stopped with SIGSTOP, a
paused VM, an event loop blocked) does not blame its instances for the silence it caused.

Found by the fault suite (faults/, `SIGSTOP control`): after `kill -STOP` of the control plane
for 4 s and `kill -CONT`, its first scheduling round found every instance silent for longer
than the threshold, before reading the heartbeats waiting in its sockets, and opened a
`checkpoint_down` alert for a checkpoint that had been well all along.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from probekit import Secret
from probekit import protocol as p
from probekit.control import ControlPlane, ControlSettings, MemorySink
from test_control import TOKEN, FakeInstance, join

pytestmark = pytest.mark.usefixtures("control_store")


async def keep_beating(cp: ControlPlane, instance_id: str) -> None:
    """Heartbeat every 50 ms as `instance_id`; join again if the connection is closed."""
    while True:
        inst: FakeInstance = await join(cp, instance_id)
        await inst.expect(p.Sync)
        await inst.beat(0.05)  # returns when the connection closes


async def test_a_control_plane_that_stood_still_does_not_blame_its_instances() -> None:
    sink = MemorySink()
    settings = ControlSettings(
        tokens={"office": Secret(TOKEN)},
        heartbeat_interval=0.2,  # silent for 3 x 0.2 s: down
        grace=0.2,
        tick_interval=0.02,
    )
    async with ControlPlane(settings, sinks=[sink]) as cp:
        beating = [asyncio.create_task(keep_beating(cp, name)) for name in ("a", "b")]
        try:
            async with asyncio.timeout(10):
                while sorted(cp.connected) != ["a", "b"]:  # noqa: ASYNC110 - no event to await
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            time.sleep(1.5)  # the loop stands still: the control plane hears nothing  # noqa: ASYNC251
            await asyncio.sleep(1.0)  # then it runs again, and the instances beat as before
            events = [e.kind for e in sink.events]
            alerts = await cp.alerts()
        finally:
            for task in beating:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*beating)
    assert "instance_down" not in events
    assert alerts == []
    assert "alert_opened" not in events
