"""Deadlines passed in: ``check(probe, deadline=...)`` and ``Job`` for Runner and ProcessRunner.

A probe whose own ``timeouts.total`` is generous (5 s) runs against a server that never answers,
with a deadline 0.2 s away: the result must be ``DOWN``/``timeout`` well before the probe's own
total would have ended it. Timings are asserted loosely (< 2 s): the point is "the deadline
given won", not how close to 0.2 s it landed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from probekit import (
    DefinitionError,
    ErrorKind,
    HttpProbe,
    ProcessRunner,
    Runner,
    Status,
    Timeouts,
)
from probekit._runner import Job
from servers import HttpServer, serving
from servers import Request as HttpRequest


async def _silent(_req: HttpRequest, _writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


@pytest.fixture
async def silent() -> AsyncIterator[HttpServer]:
    async with serving(HttpServer(handler=_silent)) as server:
        yield server


def _slow_probe(server: HttpServer) -> HttpProbe:
    return HttpProbe(server.url("/"), timeouts=Timeouts(total=5.0))


def _timed_out(result: object) -> bool:
    return (
        getattr(result, "status", None) is Status.DOWN
        and getattr(result, "error", None) is not None
        and result.error.kind is ErrorKind.TIMEOUT  # type: ignore[attr-defined]
    )


async def test_runner_check_ends_at_the_deadline_given(silent: HttpServer) -> None:
    async with Runner() as runner:
        began = time.monotonic()
        result = await runner.check(_slow_probe(silent), deadline=time.monotonic() + 0.2)
        took = time.monotonic() - began
    assert _timed_out(result), result
    assert took < 2.0


async def test_runner_stream_takes_jobs_each_with_its_own_deadline(silent: HttpServer) -> None:
    probe = _slow_probe(silent)
    fast = HttpProbe(silent.url("/"), timeouts=Timeouts(total=0.3))
    async with Runner() as runner:
        began = time.monotonic()
        results = await runner.run_all([Job(probe, deadline=time.monotonic() + 0.2), fast])
        took = time.monotonic() - began
    assert all(_timed_out(r) for r in results)
    assert took < 2.0


async def test_no_retry_starts_after_the_deadline(silent: HttpServer) -> None:
    async with Runner(retries=5, retry_backoff=0.5) as runner:
        began = time.monotonic()
        result = await runner.check(_slow_probe(silent), deadline=time.monotonic() + 0.2)
        took = time.monotonic() - began
    assert _timed_out(result)
    assert result.attempts == 1
    assert took < 2.0


async def test_a_later_deadline_leaves_the_probes_own_total_in_charge(silent: HttpServer) -> None:
    probe = HttpProbe(silent.url("/"), timeouts=Timeouts(total=0.2))
    async with Runner() as runner:
        began = time.monotonic()
        result = await runner.check(probe, deadline=time.monotonic() + 60)
        took = time.monotonic() - began
    assert _timed_out(result)
    assert took < 2.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "soon"])
async def test_an_invalid_deadline_is_refused(bad: object) -> None:
    with pytest.raises(DefinitionError, match="deadline"):
        Job(HttpProbe("http://127.0.0.1:1/"), deadline=bad)  # type: ignore[arg-type]
    async with Runner() as runner:
        with pytest.raises(DefinitionError, match="deadline"):
            await runner.check(HttpProbe("http://127.0.0.1:1/"), deadline=bad)  # type: ignore[arg-type]


async def test_process_runner_carries_the_deadline_to_the_worker(silent: HttpServer) -> None:
    async with ProcessRunner(processes=1, max_concurrency=4) as pool:
        began = time.monotonic()
        result = await pool.check(_slow_probe(silent), deadline=time.monotonic() + 0.2)
        took = time.monotonic() - began
        jobs = [Job(_slow_probe(silent), deadline=time.monotonic() + 0.2)]
        (streamed,) = [r async for r in pool.stream(jobs)]
    assert _timed_out(result), result
    assert took < 2.0
    assert _timed_out(streamed), streamed
