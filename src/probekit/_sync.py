"""Checks from synchronous code: :func:`check_sync` and :func:`check_all_sync`.

probekit is async; a plain script, a Django view or a Celery task is not. These two functions
run checks to completion on an event loop of their own and return the results, with the same
guarantees as a :class:`~probekit.Runner` (deadlines enforced from outside, a probe that raises
gives an ``UNKNOWN``/``internal`` result, bounded concurrency, optional retries).

Called where no event loop runs in the calling thread, they use ``asyncio.run``. Called from a
thread whose loop is running (a coroutine, a callback, a notebook cell), ``asyncio.run`` is not
allowed there, so the checks run on a short-lived worker thread with its own loop, and the
calling thread waits: that loop is blocked for the duration, which is what a synchronous call
means. In async code, ``await probe.check()`` or a ``Runner`` is the better choice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ._context import ProbeContext
from ._result import Result
from ._runner import Job, Runner
from .probes._base import Probe

__all__ = ["check_all_sync", "check_sync"]

log = logging.getLogger("probekit.sync")
T = TypeVar("T")


def check_sync(
    probe: Probe,
    *,
    context: ProbeContext | None = None,
    retries: int = 0,
    deadline_seconds: float | None = None,
) -> Result:
    """Run one check from synchronous code and return its :class:`~probekit.Result`.

    ``deadline_seconds`` bounds the whole check (all attempts) from now, in addition to the
    probe's ``timeouts.total``; ``retries`` as for :class:`~probekit.Runner`. ``context`` must
    not hold anything bound to another event loop.
    """
    if deadline_seconds is not None and not deadline_seconds > 0:
        raise ValueError(f"deadline_seconds must be above 0, got {deadline_seconds!r}")

    async def run() -> Result:
        async with Runner(max_concurrency=1, retries=retries, context=context) as runner:
            deadline = None
            if deadline_seconds is not None:
                clock = (context or _default()).clock
                deadline = clock.monotonic() + deadline_seconds
            return await runner.check(probe, deadline=deadline)

    return _blocking(run)


def check_all_sync(
    probes: Iterable[Probe | Job],
    *,
    max_concurrency: int = 100,
    per_host: int | None = None,
    retries: int = 0,
    context: ProbeContext | None = None,
) -> list[Result]:
    """Run ``probes`` (probes or :class:`~probekit.Job` values) concurrently from synchronous
    code, at most ``max_concurrency`` at a time, and return their results in input order."""
    work = list(probes)

    async def run() -> list[Result]:
        async with Runner(
            max_concurrency, per_host=per_host, retries=retries, context=context
        ) as runner:
            return await runner.run_all(work)

    return _blocking(run)


def _default() -> ProbeContext:
    from ._context import default_context

    return default_context()


def _blocking(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(main())`` here, or on a worker thread when a loop runs in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    log.debug("an event loop runs in this thread: the checks run on a worker thread")
    with ThreadPoolExecutor(1, thread_name_prefix="probekit-check-sync") as pool:
        return pool.submit(lambda: asyncio.run(main())).result()
