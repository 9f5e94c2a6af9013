"""Results per second through the whole checkpoint pipeline, with acks.

A control plane and one checkpoint instance run in this process on loopback; the control plane
sends N ``adhoc`` run commands; the instance runs each check through its Runner, writes the result
to its SQLite spool, sends it in ``results`` batches over the WebSocket; the control plane stores
it (SQLite) and acks it; the instance deletes it from the spool. The clock stops when every result
is stored and the spool is empty.

Two probe kinds: ``noop`` (returns UP at once: the pipeline's own cost) and ``tcp`` (a real
connect to a local server). The peer, measured in the same run, is the same N checks through a
bare ``Runner.run_all`` (no spool, channel or storage); the ratio says what the pipeline costs.
The issue's aim is >= 5,000 results/s.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from conftest import FakeProbe
from probekit import (
    Runner,
    Secret,
    Status,
    TcpProbe,
    register_probe,
)
from probekit.checkpoint import Checkpoint, CheckpointSettings
from probekit.control import ControlPlane, ControlSettings

N = 5_000


register_probe("fake", FakeProbe)


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def _pipeline(definition: dict[str, Any], workdir: Path) -> dict[str, float]:
    token = Secret("bench-token")
    settings = ControlSettings(
        tokens={"bench": token}, db_path=str(workdir / "control.db"), heartbeat_interval=5
    )
    async with ControlPlane(settings, sinks=[]) as plane:
        await plane.add_monitor("m", "bench", definition, interval=3600)
        instance = Checkpoint(
            CheckpointSettings(
                url=plane.url,
                token=token,
                checkpoint_id="bench",
                instance_id="i",
                spool_path=str(workdir / "spool.db"),
                insecure=True,
                max_concurrency=64,
            )
        )
        async with instance:
            while not (plane.connected and instance.stats["definitions"]):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            began = time.perf_counter()
            cpu = time.process_time()
            for _ in range(N):
                await plane.run_now("m", "i")

            def busy() -> bool:
                stats = instance.stats
                return bool(
                    plane.results_stored < N or stats["spool_depth"] or stats["results_acked"] < N
                )

            while busy():  # noqa: ASYNC110 - polling counters that have no event to wait on
                await asyncio.sleep(0.005)
            took = time.perf_counter() - began
            cpu_used = time.process_time() - cpu
        stored = await plane.result_count()
    assert stored == N
    return {"per_second": N / took, "cpu_us": cpu_used / N * 1e6}


async def _bare(probe: Any) -> float:
    async with Runner(max_concurrency=64) as runner:
        began = time.perf_counter()
        results = await runner.run_all([probe] * N)
        took = time.perf_counter() - began
    assert all(r.status is Status.UP for r in results)
    return N / took


def test_pipeline_results_per_second(benchmark: Any) -> None:
    figures: dict[str, Any] = {}

    async def run() -> None:
        server = await asyncio.start_server(_sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            for kind, definition, probe in (
                ("noop", {"kind": "fake"}, FakeProbe()),
                (
                    "tcp",
                    {"kind": "tcp", "host": "127.0.0.1", "port": port},
                    TcpProbe("127.0.0.1", port),
                ),
            ):
                with tempfile.TemporaryDirectory() as tmp:
                    pipe = await _pipeline(definition, Path(tmp))
                bare = await _bare(probe)
                figures[kind] = {
                    "pipeline_results_per_s": round(pipe["per_second"]),
                    "pipeline_cpu_us_per_result": round(pipe["cpu_us"]),
                    "bare_runner_per_s": round(bare),
                    "ratio_pipeline_vs_bare": round(pipe["per_second"] / bare, 2),
                }
        finally:
            server.close()

    benchmark.pedantic(lambda: asyncio.run(run()), rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    for kind, row in figures.items():
        print(f"\npipeline ({kind}, N={N}): {row}")
