"""The scheduler, driven deterministically by a fake clock (no sleeps), and once in real time."""

from __future__ import annotations

import asyncio
import random
from typing import Any, ClassVar

import attrs
import pytest

from probekit import (
    DefinitionError,
    ErrorKind,
    FakeClock,
    Monitor,
    ProbeContext,
    Result,
    Runner,
    Scheduler,
    Status,
    Timeouts,
)


@attrs.frozen
class Fake:
    """A probe whose runs the test releases by hand."""

    kind: ClassVar[str] = "fake"
    name: str
    gate: asyncio.Event | None = attrs.field(default=None, eq=False)
    timeouts: Timeouts = attrs.field(factory=lambda: Timeouts(total=3600))

    @property
    def target(self) -> str:
        return f"fake://{self.name}"

    @property
    def host(self) -> str:
        return self.name

    async def check(self, ctx: ProbeContext | None = None) -> Result:
        if self.gate is not None:
            await self.gate.wait()
        clock = (ctx or ProbeContext()).clock
        return Result(
            kind=self.kind,
            target=self.target,
            status=Status.UP,
            started_at=clock.now(),
            duration=0.0,
        )


class Collect:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Result]] = []

    def __call__(self, monitor_id: str, result: Result) -> None:
        self.seen.append((monitor_id, result))


async def test_runs_on_a_fixed_grid_with_a_fake_clock() -> None:
    clock = FakeClock()
    out = Collect()
    async with (
        Runner(10, context=ProbeContext(clock=clock)) as runner,
        Scheduler(runner, out, clock=clock) as sched,
    ):
        sched.add(Monitor("m1", Fake("a"), interval=60), first_in=0)
        assert sched.run_due() == 1
        await sched.wait_idle()
        for _ in range(10):
            assert sched.run_due() == 0  # nothing due until the clock moves
            clock.advance(60)
            assert sched.run_due() == 1
            await sched.wait_idle()
    assert [m for m, _ in out.seen] == ["m1"] * 11
    assert max(sched.lateness) == 0.0


async def test_first_runs_are_spread_over_the_interval() -> None:
    clock = FakeClock()
    async with Runner(10) as runner:
        sched = Scheduler(runner, clock=clock, rng=random.Random(7))
        for i in range(1000):
            sched.add(Monitor(f"m{i}", Fake(str(i)), interval=60))
        started = []
        for _ in range(60):
            clock.advance(1)
            started.append(sched.run_due())
        await sched.wait_idle()
    assert sum(started) == 1000
    assert max(started) < 50  # about 1000/60 a second, never all at once


async def test_a_run_still_going_is_not_overlapped() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    out = Collect()
    async with Runner(10) as runner, Scheduler(runner, out, clock=clock) as sched:
        sched.add(Monitor("slow", Fake("s", gate), interval=10), first_in=0)
        assert sched.run_due() == 1
        await asyncio.sleep(0)
        for _ in range(3):
            clock.advance(10)
            assert sched.run_due() == 0
        assert sched.skipped == 3
        gate.set()
        await sched.wait_idle()
        clock.advance(10)
        assert sched.run_due() == 1
        await sched.wait_idle()
    assert len(out.seen) == 2


async def test_falling_behind_does_not_queue_a_burst() -> None:
    clock = FakeClock()
    async with Runner(10) as runner, Scheduler(runner, clock=clock) as sched:
        sched.add(Monitor("m", Fake("m"), interval=10), first_in=0)
        clock.advance(1000)  # e.g. the process was suspended
        assert sched.run_due() == 1
        await sched.wait_idle()
        assert sched.run_due() == 0
        nxt = sched.next_due()
        assert nxt is not None and 0 < nxt - clock.monotonic() <= 10


async def test_remove_and_replace() -> None:
    clock = FakeClock()
    out = Collect()
    async with Runner(10) as runner, Scheduler(runner, out, clock=clock) as sched:
        sched.add(Monitor("a", Fake("a"), interval=10), first_in=0)
        sched.add(Monitor("b", Fake("b"), interval=10), first_in=0)
        assert sched.remove("a") and not sched.remove("zzz")
        sched.add(Monitor("b", Fake("b2"), interval=5), first_in=1)  # replaces b's schedule
        assert sched.run_due() == 0
        clock.advance(1)
        assert sched.run_due() == 1
        await sched.wait_idle()
    assert [(m, r.target) for m, r in out.seen] == [("b", "fake://b2")]
    assert set(sched.monitors) == {"b"}


async def test_a_failing_callback_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()

    async def broken(monitor_id: str, result: Result) -> None:
        raise RuntimeError("sink down")

    async with Runner(10) as runner, Scheduler(runner, broken, clock=clock) as sched:
        sched.add(Monitor("m", Fake("m"), interval=10), first_in=0)
        sched.run_due()
        await sched.wait_idle()
        clock.advance(10)
        assert sched.run_due() == 1
        await sched.wait_idle()
    assert sched.failures == 2
    assert "sink down" in caplog.text


async def test_real_time_loop_runs_and_stops_cleanly() -> None:
    out = Collect()
    async with Runner(10) as runner, Scheduler(runner, out) as sched:
        sched.add(Monitor("fast", Fake("f"), interval=0.05), first_in=0)
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(0.32)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert 4 <= len(out.seen) <= 8
    p99 = sched.lateness_quantile(0.99)
    assert p99 is not None and p99 < 0.05


async def test_adding_wakes_the_loop() -> None:
    out = Collect()
    async with Runner(10) as runner, Scheduler(runner, out) as sched:
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(0.01)  # the loop now waits with nothing scheduled
        sched.add(Monitor("late", Fake("l"), interval=60), first_in=0)
        for _ in range(100):
            if out.seen:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [m for m, _ in out.seen] == ["late"]


async def test_probe_errors_still_reach_the_callback() -> None:
    @attrs.frozen
    class Buggy(Fake):
        async def check(self, ctx: ProbeContext | None = None) -> Result:
            raise ZeroDivisionError("oops")

    clock = FakeClock()
    out = Collect()
    async with Runner(10) as runner, Scheduler(runner, out, clock=clock) as sched:
        sched.add(Monitor("b", Buggy("b"), interval=10), first_in=0)
        sched.run_due()
        await sched.wait_idle()
    ((_, result),) = out.seen
    assert result.status is Status.UNKNOWN
    assert result.error is not None and result.error.kind is ErrorKind.INTERNAL


@pytest.mark.parametrize(
    ("factory", "path"),
    [
        (lambda: Monitor("", Fake("x"), 10), "monitor_id"),
        (lambda: Monitor("m", Fake("x"), 0), "interval"),
        (lambda: Monitor("m", Fake("x"), float("nan")), "interval"),
    ],
)
def test_invalid_monitors(factory: Any, path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        factory()
    assert info.value.path == path
