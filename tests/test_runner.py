"""Runner: limits, deadlines from outside, retries, ordering, laziness and cancellation.

Most tests use small fake probes that record how many of them run at once; the cancellation
tests use real HttpProbes against the in-process server, because open sockets are what a leak
would leave behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import attrs
import pytest

from probekit import (
    DefinitionError,
    ErrorKind,
    HttpProbe,
    ProbeContext,
    ProbeError,
    Result,
    Runner,
    Status,
    Timeouts,
)
from probekit._context import default_context
from servers import HttpServer, closed_port, make_context, serving

# -- fakes ------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Lab:
    """Bookkeeping the fake probes share: concurrency now and at peak, attempts, contexts."""

    running: int = 0
    peak: int = 0
    host_running: Counter[str] = attrs.field(factory=Counter)
    host_peak: Counter[str] = attrs.field(factory=Counter)
    attempts: Counter[str] = attrs.field(factory=Counter)
    contexts: list[ProbeContext] = attrs.field(factory=list)
    pulled: int = 0

    @contextlib.contextmanager
    def track(self, host: str) -> Iterator[None]:
        key = host.lower()
        self.running += 1
        self.host_running[key] += 1
        self.peak = max(self.peak, self.running)
        self.host_peak[key] = max(self.host_peak[key], self.host_running[key])
        try:
            yield
        finally:
            self.running -= 1
            self.host_running[key] -= 1


_TWO_SECONDS = Timeouts(total=2.0)


@attrs.frozen
class FakeProbe:
    """Sleeps ``delay`` (ignoring any deadline), then fails ``failures`` times, then is UP."""

    kind: ClassVar[str] = "fake"

    name: str
    lab: Lab = attrs.field(eq=False, repr=False)
    host: str = "a.test"
    delay: float = 0.002
    timeouts: Timeouts = _TWO_SECONDS
    failures: int = 0
    failure: ErrorKind = ErrorKind.CONNECT
    raises: type[Exception] | None = None
    returns: Any = None

    @property
    def target(self) -> str:
        return f"fake://{self.host}/{self.name}"

    async def check(self, ctx: ProbeContext | None = None) -> Result:
        ctx = ctx or default_context()
        self.lab.contexts.append(ctx)
        self.lab.attempts[self.name] += 1
        attempt = self.lab.attempts[self.name]
        with self.lab.track(self.host):
            await asyncio.sleep(self.delay)
        if self.raises is not None:
            raise self.raises("scripted bug")
        if self.returns is not None:
            return self.returns  # type: ignore[no-any-return]
        status, error = Status.UP, None
        if attempt <= self.failures:
            status, error = Status.DOWN, ProbeError(self.failure, "scripted failure")
        return Result(
            kind=self.kind,
            target=self.target,
            status=status,
            started_at=dt.datetime.now(dt.UTC),
            duration=self.delay,
            error=error,
        )


def fakes(lab: Lab, n: int, **kwargs: Any) -> list[FakeProbe]:
    return [FakeProbe(f"p{i}", lab, **kwargs) for i in range(n)]


def endless(lab: Lab) -> Iterator[FakeProbe]:
    i = 0
    while True:
        lab.pulled += 1
        yield FakeProbe(f"p{i}", lab)
        i += 1


async def aendless(lab: Lab) -> AsyncIterator[FakeProbe]:
    for probe in endless(lab):
        await asyncio.sleep(0)
        yield probe


@pytest.fixture
def instant_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make the jittered backoff deterministic (always the ceiling) and record the ceilings."""
    ceilings: list[float] = []

    def uniform(low: float, high: float) -> float:
        ceilings.append(high)
        return high

    monkeypatch.setattr("probekit._runner.random.uniform", uniform)
    return ceilings


# -- limits -----------------------------------------------------------------------------------


async def test_global_limit_is_reached_and_never_exceeded() -> None:
    lab = Lab()
    async with Runner(max_concurrency=50) as runner:
        results = [r async for r in runner.stream(fakes(lab, 1000))]
        assert runner.in_flight == 0
        assert runner.completed == 1000
        assert runner.max_in_flight_seen == 50
    assert lab.peak == 50
    assert len(results) == 1000
    assert all(r.status is Status.UP for r in results)
    assert sorted(r.target for r in results) == sorted(f"fake://a.test/p{i}" for i in range(1000))


async def test_per_host_limit_is_per_host_and_case_insensitive() -> None:
    lab = Lab()
    probes = [
        FakeProbe(f"p{i}", lab, host=host, delay=0.01)
        for i in range(30)
        for host in ("a.test", "B.test", "b.TEST")
    ]
    async with Runner(max_concurrency=50, per_host=3) as runner:
        results = await runner.run_all(probes)
    assert all(r.ok for r in results)
    assert lab.host_peak == {"a.test": 3, "b.test": 3}
    assert lab.peak == 6
    assert runner.max_in_flight_seen == 6


async def test_a_check_gets_the_deadline_and_the_runners_context() -> None:
    lab = Lab()
    ctx = make_context()
    async with Runner(context=ctx) as runner:
        before = ctx.clock.monotonic()
        await runner.run_all([FakeProbe("p", lab, timeouts=Timeouts(total=3.0))])
        after = ctx.clock.monotonic()
    [seen] = lab.contexts
    assert seen.dialer is ctx.dialer
    assert seen.deadline is not None
    assert before + 3.0 <= seen.deadline <= after + 3.0


async def test_an_earlier_deadline_in_the_context_still_applies() -> None:
    lab = Lab()
    base = make_context()
    ctx = attrs.evolve(base, deadline=base.clock.monotonic() + 0.1)
    started = time.monotonic()
    async with Runner(context=ctx, grace=0.05) as runner:
        [result] = await runner.run_all([FakeProbe("p", lab, delay=10, timeouts=Timeouts(5.0))])
    assert lab.contexts[0].deadline == ctx.deadline
    assert result.error is not None
    assert result.error.kind is ErrorKind.TIMEOUT
    assert time.monotonic() - started < 0.1 + 0.05 + 0.1


# -- failures become results --------------------------------------------------------------------


async def test_one_raising_probe_is_unknown_and_the_rest_complete(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lab = Lab()
    probes = fakes(lab, 1000)
    probes[417] = FakeProbe("p417", lab, raises=ZeroDivisionError)
    with caplog.at_level(logging.WARNING, logger="probekit.runner"):
        async with Runner(max_concurrency=50) as runner:
            results = await runner.run_all(probes)
    bad = [r for r in results if r.status is not Status.UP]
    assert [r.target for r in bad] == ["fake://a.test/p417"]
    [broken] = bad
    assert broken.status is Status.UNKNOWN
    assert broken.error == ProbeError(ErrorKind.INTERNAL, "ZeroDivisionError: scripted bug")
    assert broken.kind == "fake"
    assert sum(r.ok for r in results) == 999
    records = [r for r in caplog.records if r.name == "probekit.runner"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is ZeroDivisionError


async def test_a_probe_ignoring_its_deadline_is_cut_off_as_timeout() -> None:
    lab = Lab()
    probe = FakeProbe("sleepy", lab, delay=10, timeouts=Timeouts(total=0.2))
    started = time.monotonic()
    async with Runner(grace=0.1) as runner:
        [result] = await runner.run_all([probe])
    elapsed = time.monotonic() - started
    assert elapsed < 0.2 + 0.1 + 0.1
    assert result.status is Status.DOWN
    assert result.error == ProbeError(
        ErrorKind.TIMEOUT, "probe exceeded its deadline of 0.2 s", phase=None
    )
    assert (result.kind, result.target) == ("fake", "fake://a.test/sleepy")
    assert 0.3 <= result.duration < 0.4
    assert result.started_at.tzinfo is not None
    assert lab.running == 0  # the check was cancelled, not left running


@pytest.mark.parametrize(
    ("thing", "kind", "message"),
    [
        (object(), "object", "object is not a probe: it has no check() method"),
        (42, "int", "int is not a probe: it has no check() method"),
    ],
)
async def test_something_that_is_not_a_probe_is_unknown(
    thing: object, kind: str, message: str
) -> None:
    lab = Lab()
    async with Runner() as runner:
        results = await runner.run_all([FakeProbe("a", lab), thing, FakeProbe("b", lab)])
    assert [r.status for r in results] == [Status.UP, Status.UNKNOWN, Status.UP]
    assert results[1].kind == kind
    assert results[1].error == ProbeError(ErrorKind.INTERNAL, message)


async def test_a_check_returning_a_non_result_is_unknown() -> None:
    lab = Lab()
    async with Runner() as runner:
        [result] = await runner.run_all([FakeProbe("odd", lab, returns="fine, really")])
    assert result.status is Status.UNKNOWN
    assert result.error == ProbeError(
        ErrorKind.INTERNAL, "TypeError: check() returned str, not a Result"
    )


async def test_a_probe_without_usable_timeouts_is_unknown() -> None:
    @attrs.frozen
    class NoTimeouts:
        kind: ClassVar[str] = "weird"
        target: str = "x"
        host: str = "x"
        timeouts: None = None

        async def check(self, ctx: ProbeContext | None = None) -> Result:
            raise AssertionError("must not be called")

    async with Runner() as runner:
        [result] = await runner.run_all([NoTimeouts()])
    assert result.status is Status.UNKNOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.INTERNAL
    assert "timeouts.total" in result.error.message


# -- retries ------------------------------------------------------------------------------------


async def test_a_transient_failure_is_retried_until_up(instant_backoff: list[float]) -> None:
    lab = Lab()
    async with Runner(retries=3, retry_backoff=0.01) as runner:
        [result] = await runner.run_all([FakeProbe("flaky", lab, failures=2)])
    assert result.status is Status.UP
    assert result.attempts == 3
    assert lab.attempts["flaky"] == 3
    assert instant_backoff == [0.01, 0.02]


async def test_retries_run_out_and_the_last_failure_is_returned(
    instant_backoff: list[float],
) -> None:
    lab = Lab()
    probe = FakeProbe("dead", lab, failures=99, failure=ErrorKind.TIMEOUT)
    async with Runner(retries=4, retry_backoff=0.01, retry_backoff_max=0.03) as runner:
        [result] = await runner.run_all([probe])
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.TIMEOUT
    assert result.attempts == 5
    assert lab.attempts["dead"] == 5
    assert instant_backoff == pytest.approx([0.01, 0.02, 0.03, 0.03])


@pytest.mark.parametrize("kind", [ErrorKind.POLICY_DENIED, ErrorKind.ASSERTION, ErrorKind.AUTH])
async def test_definitive_failures_are_not_retried(kind: ErrorKind) -> None:
    lab = Lab()
    async with Runner(retries=3, retry_backoff=0.01) as runner:
        [result] = await runner.run_all([FakeProbe("no", lab, failures=1, failure=kind)])
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is kind
    assert result.attempts == 1
    assert lab.attempts["no"] == 1


async def test_a_bug_is_not_retried() -> None:
    lab = Lab()
    async with Runner(retries=3, retry_backoff=0.01) as runner:
        [result] = await runner.run_all([FakeProbe("bug", lab, raises=KeyError)])
    assert result.status is Status.UNKNOWN
    assert result.attempts == 1
    assert lab.attempts["bug"] == 1


async def test_the_slot_is_free_during_the_backoff(instant_backoff: list[float]) -> None:
    lab = Lab()
    flaky = FakeProbe("flaky", lab, failures=1)
    others = fakes(lab, 5, delay=0.01)
    async with Runner(max_concurrency=1, retries=1, retry_backoff=0.3) as runner:
        order = [r.target async for r in runner.stream([flaky, *others])]
    # With one slot, the five others can only finish first if the retry waits without it.
    assert order == [p.target for p in others] + [flaky.target]
    assert lab.peak == 1


# -- ordering and laziness -------------------------------------------------------------------


async def test_stream_yields_in_completion_order() -> None:
    lab = Lab()
    slow = FakeProbe("slow", lab, delay=0.3)
    fast = FakeProbe("fast", lab, delay=0.01)
    async with Runner(max_concurrency=2) as runner:
        order = [r.target async for r in runner.stream([slow, fast])]
    assert order == [fast.target, slow.target]


async def test_run_all_returns_input_order() -> None:
    lab = Lab()
    probes = [FakeProbe(f"p{i}", lab, delay=0.001 * ((i * 7) % 13)) for i in range(200)]
    async with Runner(max_concurrency=20) as runner:
        results = await runner.run_all(probes)
    assert [r.target for r in results] == [p.target for p in probes]


async def test_run_all_accepts_an_async_iterable_and_an_empty_one() -> None:
    lab = Lab()

    async def some() -> AsyncIterator[FakeProbe]:
        for probe in fakes(lab, 30):
            yield probe

    async with Runner(max_concurrency=4) as runner:
        results = await runner.run_all(some())
        assert await runner.run_all([]) == []
    assert [r.target for r in results] == [f"fake://a.test/p{i}" for i in range(30)]


@pytest.mark.parametrize("source", [endless, aendless])
async def test_an_endless_source_is_pulled_lazily(source: Any) -> None:
    lab = Lab()
    got = []
    async with Runner(max_concurrency=5) as runner:
        async with contextlib.aclosing(runner.stream(source(lab))) as results:
            async for result in results:
                got.append(result)
                if len(got) == 10:
                    break
        assert runner.in_flight == 0
    assert len(got) == 10
    assert 10 <= lab.pulled <= 10 + 2 * 5


async def test_a_slow_consumer_slows_the_producer() -> None:
    lab = Lab()
    async with Runner(max_concurrency=4) as runner:
        async with contextlib.aclosing(runner.stream(endless(lab))) as results:
            async for _ in results:
                await asyncio.sleep(0.2)  # long enough for every pulled probe to finish
                break
        pulled_while_stalled = lab.pulled
    assert pulled_while_stalled <= 1 + 2 * 4


async def test_an_error_in_the_source_is_raised_from_the_stream() -> None:
    lab = Lab()

    def broken() -> Iterator[FakeProbe]:
        yield from fakes(lab, 3)
        raise ValueError("bad definition file")

    async with Runner() as runner:
        with pytest.raises(ValueError, match="bad definition file"):
            await runner.run_all(broken())
        assert runner.in_flight == 0
        # The runner is still usable after one stream failed.
        assert len(await runner.run_all(fakes(lab, 2))) == 2


# -- lifecycle and arguments -----------------------------------------------------------------


async def test_using_the_runner_outside_async_with_is_an_error() -> None:
    lab = Lab()
    runner = Runner()
    with pytest.raises(RuntimeError, match="not open"):
        runner.stream(fakes(lab, 1))
    with pytest.raises(RuntimeError, match="not open"):
        await runner.run_all(fakes(lab, 1))
    async with runner:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await runner.run_all(fakes(lab, 1))
    with pytest.raises(RuntimeError, match="only once"):
        await runner.__aenter__()
    assert lab.attempts == {}


async def test_a_single_probe_instead_of_an_iterable_is_a_type_error() -> None:
    lab = Lab()
    async with Runner() as runner:
        with pytest.raises(TypeError, match="iterable or async iterable of probes, got FakeProbe"):
            runner.stream(FakeProbe("p", lab))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="got FakeProbe"):
            await runner.run_all(FakeProbe("p", lab))  # type: ignore[arg-type]
    assert lab.attempts == {}


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": 2.5}, "max_concurrency"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"per_host": 0}, "per_host"),
        ({"per_host": "3"}, "per_host"),
        ({"retries": -1}, "retries"),
        ({"retry_backoff": -0.1}, "retry_backoff"),
        ({"retry_backoff": float("nan")}, "retry_backoff"),
        ({"retry_backoff_max": float("inf")}, "retry_backoff_max"),
        ({"grace": -1}, "grace"),
        ({"grace": "0.1"}, "grace"),
        ({"context": "ctx"}, "context"),
    ],
)
def test_invalid_arguments_are_rejected_with_their_name(kwargs: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        Runner(**kwargs)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")


# -- real probes ------------------------------------------------------------------------------


async def test_real_http_probes_through_the_runner(http_server: HttpServer) -> None:
    dead = closed_port()
    probes = [
        HttpProbe(http_server.url("/ok")),
        HttpProbe(http_server.url("/status/404")),
        HttpProbe(f"http://127.0.0.1:{dead}/"),
        HttpProbe(http_server.url("/ok", host="test.local")),
    ]
    async with Runner(context=make_context(), retries=1, retry_backoff=0.01) as runner:
        results = await runner.run_all(probes)
    up, not_found, refused, by_name = results
    assert up.status is Status.UP
    assert up.metrics["status_code"] == 200
    assert up.attempts == 1
    assert not_found.status is Status.DOWN
    assert not_found.error is not None
    assert not_found.error.kind is ErrorKind.ASSERTION
    assert not_found.attempts == 1  # an assertion failure is not retried
    assert refused.status is Status.DOWN
    assert refused.error is not None
    assert refused.error.kind is ErrorKind.CONNECT
    assert refused.attempts == 2  # a refused connection is
    assert by_name.ok
    assert [r.path for r in http_server.requests].count("/status/404") == 1


# -- cancellation: nothing outlives the runner --------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _is_server_task(task: asyncio.Task[Any]) -> bool:
    return getattr(task.get_coro(), "__qualname__", "") == "LoopbackServer._serve"


async def _foreign_tasks() -> set[asyncio.Task[Any]]:
    """Tasks other than this test's and the server's, after letting finalizers run."""
    me = asyncio.current_task()
    others: set[asyncio.Task[Any]] = set()
    for _ in range(50):
        others = {t for t in asyncio.all_tasks() if t is not me and not _is_server_task(t)}
        if not others:
            break
        await asyncio.sleep(0)
    return others


async def _fds_settle(baseline: int) -> int:
    deadline = time.monotonic() + 1.0
    # Nothing signals "the kernel closed the fd", so poll.
    while _open_fds() > baseline and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    return _open_fds()


def _silent_probes(server: HttpServer, n: int) -> list[HttpProbe]:
    return [HttpProbe(server.url(f"/silent?i={i}"), timeouts=Timeouts(total=5.0)) for i in range(n)]


async def _until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - plain counters, nothing to wait on
            await asyncio.sleep(0.005)


async def test_cancelling_the_consumer_cancels_every_check() -> None:
    baseline = _open_fds()
    runner = Runner(max_concurrency=100, context=make_context())
    seen: list[Result] = []
    async with serving(HttpServer()) as server:

        async def consume() -> None:
            async with runner:
                async for result in runner.stream(_silent_probes(server, 200)):
                    seen.append(result)  # noqa: PERF401 - recorded as they come, until cancelled

        task = asyncio.create_task(consume())
        await _until(lambda: server.connections >= 100)
        assert runner.in_flight == 100
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert await _foreign_tasks() == set()
        assert runner.in_flight == 0
        assert server.connections == 100  # the other 100 were never started
    assert seen == []
    assert await _fds_settle(baseline) == baseline


async def test_breaking_out_of_stream_inside_async_with_cancels_the_rest() -> None:
    baseline = _open_fds()
    async with serving(HttpServer()) as server:
        probes = [HttpProbe(server.url("/ok")), *_silent_probes(server, 150)]
        async with Runner(max_concurrency=64, context=make_context()) as runner:
            # Keep the generator referenced, so only the runner's exit can clean up after it.
            results = runner.stream(probes)
            async for result in results:
                first = result
                break
            await _until(lambda: runner.in_flight == 64)
        assert runner.in_flight == 0  # before any await: the exit itself waited for them
        assert first.ok
        assert await _foreign_tasks() == set()
        await results.aclose()  # closing the abandoned generator later is harmless
    assert await _fds_settle(baseline) == baseline


async def test_a_stream_consumed_elsewhere_fails_loudly_when_the_runner_closes() -> None:
    lab = Lab()
    runner = Runner(max_concurrency=2)
    got: list[Result] = []

    async def consume() -> None:
        async for result in runner.stream(fakes(lab, 10, delay=10)):
            got.append(result)  # noqa: PERF401 - recorded as they come, until the runner closes

    async with runner:
        task = asyncio.create_task(consume())
        await _until(lambda: runner.in_flight == 2)
    with pytest.raises(RuntimeError, match="closed while this stream was running"):
        await task
    assert got == []
    assert lab.running == 0


async def test_closing_a_stream_early_cancels_its_checks_but_keeps_the_runner() -> None:
    baseline = _open_fds()
    async with (
        serving(HttpServer()) as server,
        Runner(max_concurrency=32, context=make_context()) as runner,
    ):
        probes = [HttpProbe(server.url("/ok")), *_silent_probes(server, 100)]
        async with contextlib.aclosing(runner.stream(probes)) as results:
            async for _ in results:
                await _until(lambda: runner.in_flight == 32)
                break
        # Closed by aclosing, still inside the runner: nothing of that stream is left.
        assert runner.in_flight == 0
        assert await _foreign_tasks() == set()
        again = await runner.run_all([HttpProbe(server.url("/ok"))])
        assert [r.status for r in again] == [Status.UP]
    assert await _fds_settle(baseline) == baseline


async def test_an_exception_in_the_body_cancels_the_checks() -> None:
    baseline = _open_fds()
    async with serving(HttpServer()) as server:
        runner = Runner(max_concurrency=16, context=make_context())
        probes = [HttpProbe(server.url("/ok")), *_silent_probes(server, 40)]

        async def buggy_consumer() -> None:
            async with runner:
                async for _ in runner.stream(probes):
                    await _until(lambda: runner.in_flight == 16)
                    raise LookupError("consumer bug")

        with pytest.raises(LookupError, match="consumer bug"):
            await buggy_consumer()
        assert runner.in_flight == 0
        assert await _foreign_tasks() == set()
    assert await _fds_settle(baseline) == baseline
