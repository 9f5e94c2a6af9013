"""A burst of delta syncs (a control plane applying 2,000 monitors one by one, or a big reload)
must not hold up the runs that follow them: keeping the held definitions in the spool happens
in the background, one write at a time, each of the latest set.

Found by benchmarks/checkpoint_scale.py: before, each delta sync was answered only after all
held definitions had been serialised and rewritten to the spool, so 1,500 deltas kept the
instance from reading its runs for seconds, and the control plane cut both instances as
unresponsive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from probekit import protocol as p
from probekit.checkpoint import Checkpoint
from probekit.checkpoint._spool import AsyncSpool, Spool
from servers import HttpServer, serving
from test_checkpoint import control, eventually, http_def, settings_for, sync


@pytest.fixture
async def target() -> AsyncIterator[HttpServer]:
    async with serving(HttpServer()) as server:
        yield server


def delta(monitor_id: str, url: str, revision: int) -> p.Sync:
    upsert = p.MonitorDefinition(
        monitor_id=monitor_id, revision=1, interval=60.0, definition=http_def(url)
    )
    return p.Sync(full=False, revision=revision, upserts=(upsert,), deletes=())


async def test_runs_are_not_held_up_by_keeping_the_definitions(
    target: HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()  # closed: every write of the definitions to the spool waits
    saved: list[set[str]] = []
    original = AsyncSpool.save_definitions

    async def slow_save(self: AsyncSpool, definitions: Any) -> None:
        rows = list(definitions)
        saved.append({row[0] for row in rows})
        await gate.wait()
        await original(self, rows)

    monkeypatch.setattr(AsyncSpool, "save_definitions", slow_save)
    spool = tmp_path / "spool.db"
    url = target.url("/ok")
    async with (
        control() as server,
        Checkpoint(settings_for(server.url, spool_path=str(spool))) as cp,
    ):
        await server.hello()
        await server.send(sync(("m00", http_def(url))))
        for n in range(1, 21):
            await server.send(delta(f"m{n:02d}", url, revision=n + 1))
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m00"))
        # The run is answered while the first write is still waiting.
        envelope = await server.envelope(lambda e: e.request_id == "r1")
        assert len(cp.holdings) == 21
        assert len(saved) == 1  # one write at a time, the first still waiting
        gate.set()
        await server.send(delta("m21", url, revision=22))
        await eventually(lambda: len(cp.holdings) == 22)
    assert envelope.result.ok
    # 22 syncs, at most three writes: the one that waited, one of everything that came
    # meanwhile, one after the last delta (or at exit); the last set is what is kept.
    assert 1 <= len(saved) <= 3
    assert saved[-1] == {f"m{n:02d}" for n in range(22)}
    with Spool(str(spool)) as raw:
        kept = {row[0] for row in raw.load_definitions()}
    assert kept == {f"m{n:02d}" for n in range(22)}
