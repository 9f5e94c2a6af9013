"""The lean deadline scope behaves like asyncio.timeout, on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from probekit._deadline import Deadline, after


def _loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


@pytest.fixture(params=_loops())
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        if request.param == "uvloop":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
                return r.run(coro)
        return asyncio.run(coro)

    return runner


def test_body_in_time_is_untouched(run: Callable[..., Any]) -> None:
    async def main() -> tuple[bool, int, int]:
        with after(1.0) as scope:
            await asyncio.sleep(0.001)
            value = 42
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0.002)  # no late cancellation arrives after the scope
        return scope.expired, value, task.cancelling()

    assert run(main()) == (False, 42, 0)


def test_overrun_becomes_timeout_error(run: Callable[..., Any]) -> None:
    async def main() -> tuple[bool, float, int]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        scope = after(0.02)
        with pytest.raises(TimeoutError), scope:
            await asyncio.sleep(5)
        task = asyncio.current_task()
        assert task is not None
        return scope.expired, loop.time() - began, task.cancelling()

    expired, took, cancelling = run(main())
    assert expired and cancelling == 0
    assert 0.015 <= took < 1.0


def test_deadline_already_past_fires_at_the_first_await(run: Callable[..., Any]) -> None:
    async def main() -> bool:
        scope = Deadline(asyncio.get_running_loop().time() - 1)
        with pytest.raises(TimeoutError), scope:
            await asyncio.sleep(1)
        return scope.expired

    assert run(main())


def test_outside_cancellation_passes_through(run: Callable[..., Any]) -> None:
    seen: list[str] = []

    async def body() -> None:
        scope = after(10)
        try:
            with scope:
                await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append(f"cancelled expired={scope.expired}")
            raise
        except TimeoutError:  # pragma: no cover - the defect this test is for
            seen.append("timeout")

    async def main() -> bool:
        task = asyncio.create_task(body())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(main())
    assert seen == ["cancelled expired=False"]


def test_nested_scopes_only_the_one_that_fired_converts(run: Callable[..., Any]) -> None:
    events: list[str] = []
    outer = Deadline(0)  # replaced inside the loop
    late = Deadline(0)

    async def body() -> None:
        nonlocal outer, late
        outer = after(0.05)
        with outer:
            inner = after(0.01)
            try:
                with inner:
                    await asyncio.sleep(1)
            except TimeoutError:
                events.append(f"inner fired first: {inner.expired}")
            late = after(5)
            with late:
                await asyncio.sleep(1)  # the outer deadline interrupts this
            events.append("not reached")  # pragma: no cover

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await body()
        events.append(f"outer expired={outer.expired}, late expired={late.expired}")

    run(main())
    assert events == ["inner fired first: True", "outer expired=True, late expired=False"]


def test_swallowed_cancellation_leaves_no_pending_cancel(run: Callable[..., Any]) -> None:
    async def main() -> tuple[bool, int, str]:
        scope = after(0.01)
        with scope, contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)  # a body that ignores its deadline leaves the scope cleanly
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0.001)  # would raise if a cancellation were still pending
        return scope.expired, task.cancelling(), "after"

    assert run(main()) == (True, 0, "after")


def test_needs_a_task() -> None:
    loop = asyncio.new_event_loop()
    try:
        scope = Deadline(0)
        with pytest.raises(RuntimeError, match="inside a task"):
            loop.run_until_complete(_enter_outside_task(scope, loop))
    finally:
        loop.close()


async def _enter_outside_task(scope: Deadline, loop: asyncio.AbstractEventLoop) -> None:
    # Make current_task() None by entering from a plain callback, not from a task.
    failure: asyncio.Future[None] = loop.create_future()

    def enter() -> None:
        try:
            scope.__enter__()
        except RuntimeError as exc:
            failure.set_exception(exc)
        else:  # pragma: no cover
            failure.set_result(None)

    loop.call_soon(enter)
    await failure
