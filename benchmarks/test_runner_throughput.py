"""Runner throughput: HTTP checks per second through ``Runner(max_concurrency=64)``.

What it measures: the wall time of ``Runner.run_all()`` over N=500 ``HttpProbe``s (``GET /ok``,
a fresh TCP connection per check) against the in-process ``HttpServer`` from ``tests/servers.py``
on loopback, reported as probes per second. Client and server share one event loop and one core,
so the figure is a floor for the runner, not a capacity of the machine.

Against what: in the same run, the same 500 checks go through the simplest correct alternative,
an ``asyncio.Semaphore(64)`` around ``asyncio.gather``. ``runner_vs_gather`` (runner throughput
divided by the peer's) is what the runner's streaming, limits, outside deadlines and bookkeeping
cost; it is the number to watch, as it does not move with the machine.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from probekit import HttpProbe, ProbeContext, Result, Runner
from servers import HttpServer, make_context

N = 500
CONCURRENCY = 64
ROUNDS = 3


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture
def server(loop: asyncio.AbstractEventLoop) -> Iterator[HttpServer]:
    server = loop.run_until_complete(HttpServer().start())
    try:
        yield server
    finally:
        loop.run_until_complete(server.stop())


async def _through_runner(probes: list[HttpProbe], ctx: ProbeContext) -> list[Result]:
    async with Runner(max_concurrency=CONCURRENCY, context=ctx) as runner:
        return await runner.run_all(probes)


async def _through_gather(probes: list[HttpProbe], ctx: ProbeContext) -> list[Result]:
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(probe: HttpProbe) -> Result:
        async with slots:
            return await probe.check(ctx)

    return list(await asyncio.gather(*(one(p) for p in probes)))


def _timed(loop: asyncio.AbstractEventLoop, batch: Callable[[], Any], times: list[float]) -> Any:
    started = time.perf_counter()
    results = loop.run_until_complete(batch())
    times.append(time.perf_counter() - started)
    return results


def test_runner_http_throughput(
    benchmark: Any, loop: asyncio.AbstractEventLoop, server: HttpServer
) -> None:
    ctx = make_context()
    probes = [HttpProbe(server.url(f"/ok?i={i}")) for i in range(N)]

    runner_times: list[float] = []
    results = benchmark.pedantic(
        _timed,
        args=(loop, lambda: _through_runner(probes, ctx), runner_times),
        rounds=ROUNDS,
        iterations=1,
    )
    assert len(results) == N
    assert all(r.ok for r in results), {r.summary() for r in results if not r.ok}

    gather_times: list[float] = []
    for _ in range(ROUNDS):
        peer = _timed(loop, lambda: _through_gather(probes, ctx), gather_times)
        assert all(r.ok for r in peer)

    runner_pps = N / statistics.median(runner_times)
    gather_pps = N / statistics.median(gather_times)
    benchmark.extra_info["probes"] = N
    benchmark.extra_info["max_concurrency"] = CONCURRENCY
    benchmark.extra_info["probes_per_second"] = round(runner_pps, 1)
    benchmark.extra_info["gather_probes_per_second"] = round(gather_pps, 1)
    benchmark.extra_info["runner_vs_gather"] = round(runner_pps / gather_pps, 3)
    print(
        f"\nRunner: {runner_pps:.0f} probes/s; semaphore+gather peer: {gather_pps:.0f} probes/s;"
        f" ratio {runner_pps / gather_pps:.2f} (N={N}, max_concurrency={CONCURRENCY},"
        f" median of {ROUNDS} rounds)"
    )
