"""What every probe shares: the contract, and the code that turns a check's run into a Result."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import ClassVar, Protocol, runtime_checkable

from .._context import ProbeContext, default_context
from .._deadline import after
from .._dial import TlsVerifyFailure
from .._errors import classify
from .._result import AssertionOutcome, ErrorKind, ProbeError, Result, Status, TlsInfo
from .._timeline import Timeline
from .._timeouts import Timeouts
from .._tls import earliest_expiry_days

__all__ = ["Attempt", "Probe", "execute"]

log = logging.getLogger("probekit.probe")


@runtime_checkable
class Probe(Protocol):
    """The contract every probe follows: a frozen definition with one coroutine.

    ``kind`` names the probe class for config loading; ``target`` is what it checks (a URL,
    ``host:port``); ``host`` is used for per-host concurrency limits.
    """

    kind: ClassVar[str]

    @property
    def timeouts(self) -> Timeouts: ...

    @property
    def target(self) -> str: ...

    @property
    def host(self) -> str: ...

    async def check(self, ctx: ProbeContext | None = None) -> Result: ...


class Attempt:
    """Scratch state while one check runs; becomes a :class:`Result` at the end."""

    __slots__ = ("address", "assertions", "ctx", "metrics", "timeline", "tls")

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx
        self.timeline = Timeline(ctx.clock)
        self.metrics: dict[str, float] = {}
        self.assertions: list[AssertionOutcome] = []
        self.tls: TlsInfo | None = None
        self.address: str | None = None

    def record_tls(self, info: TlsInfo | None) -> None:
        if info is None:
            return
        self.tls = info
        days = earliest_expiry_days(info, self.ctx.clock.now())
        if days is not None:
            self.metrics["cert_days_left"] = round(days, 4)


async def execute(
    kind: str,
    target: str,
    timeouts: Timeouts,
    ctx: ProbeContext | None,
    body: Callable[[Attempt], Awaitable[None]],
) -> Result:
    """Run ``body`` under the check's deadline and turn whatever happens into a Result.

    A failure of the target (any exception the backends raise) becomes an error of the right
    kind naming the phase that was running; a bug becomes ``UNKNOWN``/``internal``.
    Cancellation is never swallowed.
    """
    ctx = ctx or default_context()
    clock = ctx.clock
    started_at = clock.now()
    attempt = Attempt(ctx)
    timeline = attempt.timeline
    deadline = timeline.start + timeouts.total
    if ctx.deadline is not None:
        deadline = min(deadline, ctx.deadline)
    error: ProbeError | None = None
    try:
        with after(max(deadline - clock.monotonic(), 0.0)):
            await body(attempt)
    except TlsVerifyFailure as exc:
        attempt.record_tls(exc.tls)
        error = classify(exc, timeline.current)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place any failure becomes a result
        error = classify(exc, timeline.current)
    duration = clock.monotonic() - timeline.start
    status = Status.UP
    if error is not None:
        status = Status.UNKNOWN if error.kind is ErrorKind.INTERNAL else Status.DOWN
    else:
        failed = [a for a in attempt.assertions if not a.passed]
        for outcome in failed:
            status = status.worst(outcome.severity)
        if failed:
            worst = next(a for a in failed if a.severity is status)
            error = ProbeError(ErrorKind.ASSERTION, worst.describe(), None)
    return Result(
        kind=kind,
        target=target,
        status=status,
        started_at=started_at,
        duration=duration,
        error=error,
        phases=tuple(timeline.phases),
        metrics=attempt.metrics,
        assertions=tuple(attempt.assertions),
        tls=attempt.tls,
        address=attempt.address,
    )
