"""The runner: many probes at once, with bounded concurrency, outside deadlines and retries.

A :class:`Runner` owns every task it starts. Probes are pulled lazily from any iterable or async
iterable, run under a global and an optional per-host limit, each attempt inside a deadline set
from outside, and their results come back as a stream (completion order) or a list (input order).
Whatever a probe does (fails, overruns its deadline, raises, is not a probe at all), the caller
gets a :class:`~probekit.Result`; the only exceptions are the caller's own mistakes and
cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
)
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import attrs

from ._clock import Clock
from ._context import ProbeContext, default_context
from ._deadline import after
from ._exceptions import DefinitionError
from ._result import ErrorKind, ProbeError, Result, Status
from ._validate import check_seconds, seconds_problem
from .probes._base import Probe

__all__ = ["Job", "Runner"]

log = logging.getLogger("probekit.runner")
_T = TypeVar("_T")

#: Failure kinds that may be transient, so worth another attempt. A policy denial, a failed
#: assertion or refused credentials will say the same thing again; ``internal`` is a bug.
RETRYABLE: Final = frozenset(
    {ErrorKind.DNS, ErrorKind.CONNECT, ErrorKind.TIMEOUT, ErrorKind.TLS, ErrorKind.PROTOCOL}
)

_Check = Callable[[ProbeContext], Awaitable[object]]


@attrs.frozen
class Job:
    """A probe to run with a deadline of its own: what :meth:`Runner.stream` and
    :meth:`Runner.run_all` (and :class:`~probekit.ProcessRunner`'s) accept besides bare probes.

    ``deadline`` is an absolute reading of the runner's context clock
    (``context.clock.monotonic()``; the system's ``time.monotonic()`` by default) by which the
    check must have returned, or None for the probe's own ``timeouts.total`` alone. The earlier
    of the two applies, enforced from outside like ``timeouts.total``; it holds over all
    attempts (no retry starts after it has passed).
    """

    probe: Probe
    deadline: float | None = attrs.field(default=None, kw_only=True)

    @deadline.validator
    def _check_deadline(self, attribute: attrs.Attribute[float | None], value: object) -> None:
        check_deadline(value)


def check_deadline(value: object) -> float | None:
    """``value`` as an absolute deadline (a finite clock reading) or None; else DefinitionError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DefinitionError(
            "deadline", f"must be a finite monotonic clock reading or None, got {value!r}"
        )
    return float(value)


#: What a stream takes: a probe, or a :class:`Job` (a probe with a deadline).
Work = Probe | Job


class _Wake:
    """Queue marker: the producer has pulled the last probe."""


class _Failed:
    """Queue marker: an exception the consumer must raise (from the source, or a runner bug)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Closed:
    """Queue marker: the runner was closed while the stream was still being consumed."""


_WAKE: Final = _Wake()
_CLOSED: Final = _Closed()
_Item = tuple[int, Result] | _Wake | _Failed | _Closed


class _Stream:
    """The state of one ``stream``/``run_all`` call: its window, queue and tasks."""

    __slots__ = (
        "forget_task",
        "outstanding",
        "queue",
        "runner_tasks",
        "source_done",
        "tasks",
        "window",
    )

    def __init__(self, window: int, runner_tasks: set[asyncio.Task[None]]) -> None:
        # A token is taken before a probe is pulled and given back when its result is handed to
        # the consumer, so pulled-but-undelivered probes never exceed ``window``: this is the
        # backpressure that makes a slow consumer slow the producer.
        self.window = asyncio.Semaphore(window)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.runner_tasks = runner_tasks
        self.forget_task = self.forget  # bound once, not once per task
        self.outstanding = 0
        self.source_done = False

    def forget(self, task: asyncio.Task[None]) -> None:
        """Done callback of every task of the stream (one callback rather than two per task)."""
        self.tasks.discard(task)
        self.runner_tasks.discard(task)


@attrs.frozen
class _Spec:
    """What the runner needs from a probe, read (and checked) once."""

    kind: str
    target: str
    check: _Check
    total: float
    host: str | None


def checked_limits(
    max_concurrency: int,
    per_host: int | None,
    retries: int,
    retry_backoff: float,
    retry_backoff_max: float,
    grace: float,
) -> tuple[int, int | None, int, float, float, float]:
    """A runner's limits, in this order, each checked (a DefinitionError names the argument)."""
    return (
        _natural("max_concurrency", max_concurrency, 1),
        None if per_host is None else _natural("per_host", per_host, 1),
        _natural("retries", retries, 0),
        check_seconds("retry_backoff", retry_backoff, zero=True),
        check_seconds("retry_backoff_max", retry_backoff_max, zero=True),
        check_seconds("grace", grace, zero=True),
    )


def _natural(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DefinitionError(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _host_key(host: str) -> str:
    return host.lower().rstrip(".")


def _check_source(probes: object) -> None:
    if not isinstance(probes, Iterable | AsyncIterable):
        raise TypeError(
            f"probes must be an iterable or async iterable of probes, got {type(probes).__name__}"
        )


def _attr(obj: object, name: str) -> object:
    """``obj.name``, or None when it is missing or reading it raises."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - a broken attribute is reported as an invalid probe
        return None


def _label(probe: object) -> tuple[str, str]:
    """The kind and target of anything, for results about objects that may not be probes."""
    kind = _attr(probe, "kind")
    target = _attr(probe, "target")
    if not isinstance(kind, str):
        kind = type(probe).__name__
    if not isinstance(target, str):
        target = _short_repr(probe)
    return kind, target


def unknown_result(probe: object, message: str, started_at: dt.datetime | None = None) -> Result:
    """An ``UNKNOWN``/``internal`` result about ``probe`` (anything), for when it could not run."""
    kind, target = _label(probe)
    return Result(
        kind=kind,
        target=target,
        status=Status.UNKNOWN,
        started_at=started_at or dt.datetime.now(dt.UTC),
        duration=0.0,
        error=ProbeError(ErrorKind.INTERNAL, message),
    )


async def pull(
    probes: Iterable[_T] | AsyncIterable[_T], window: asyncio.Semaphore
) -> AsyncGenerator[_T, None]:
    """Yield the probes of a sync or async source one by one, each after taking a ``window``
    token: the backpressure of ``stream`` (the token is given back when its result is
    consumed)."""
    if isinstance(probes, AsyncIterable):
        aiterator = aiter(probes)
        while True:
            await window.acquire()
            try:
                probe = await anext(aiterator)
            except StopAsyncIteration:
                return
            yield probe
    else:
        iterator = iter(probes)
        while True:
            await window.acquire()
            try:
                probe = next(iterator)
            except StopIteration:
                return
            yield probe


def _short_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001 - a repr that raises must not break the report
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


async def _cancel_and_wait(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has finished, even if we are cancelled meanwhile.

    Leaving before they finish would let a task outlive its owner, so a cancellation of the
    caller is held back until the tasks are gone and then re-raised.
    """
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    interrupted = False
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            interrupted = True
            for task in pending:
                task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("runner task failed", exc_info=task.exception())
    if interrupted:
        raise asyncio.CancelledError


class Runner:
    """Run many probes concurrently and collect their results.

    Use it as an async context manager; it owns every task it starts, and leaving the ``async
    with`` block (normally, by an exception or by cancellation) cancels whatever is still running
    and waits for it, so no check outlives the runner::

        async with Runner(max_concurrency=100, per_host=4, retries=2) as runner:
            async for result in runner.stream(probes):
                ...
            results = await runner.run_all(probes)

    Promises:

    * at most ``max_concurrency`` checks execute at once across all streams of this runner, and
      at most ``per_host`` per ``probe.host`` (compared case-insensitively) when it is set;
    * probes are pulled lazily: at most ``2 * max_concurrency`` of them are pulled and not yet
      handed to the consumer (executing, waiting for a slot, or finished and waiting to be
      consumed), so a slow consumer slows the producer and an endless generator is fine;
    * each attempt gets a context whose deadline is ``probe.timeouts.total`` from its start, and
      is cancelled from outside ``grace`` seconds after that if the probe ignores it, giving a
      ``DOWN``/``timeout`` result;
    * a probe that raises, returns something that is not a :class:`Result`, or is not a probe at
      all gives an ``UNKNOWN``/``internal`` result (logged at WARNING on ``probekit.runner``);
    * a ``DOWN`` result whose error kind is ``dns``, ``connect``, ``timeout``, ``tls`` or
      ``protocol`` is retried up to ``retries`` more times, after a full-jitter exponential
      backoff (``retry_backoff * 2**k`` seconds, at most ``retry_backoff_max``) during which the
      probe holds no concurrency slot; ``Result.attempts`` says how many attempts were made;
    * cancellation is never swallowed.

    ``context`` is the :class:`ProbeContext` every check runs in (``default_context()`` when
    None); its deadline, if it has one, still applies when it is earlier. A probe that swallows
    cancellation itself cannot be stopped by anyone, so the runner would wait for it on exit.
    """

    def __init__(
        self,
        max_concurrency: int = 100,
        *,
        per_host: int | None = None,
        retries: int = 0,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 10.0,
        grace: float = 0.1,
        context: ProbeContext | None = None,
    ) -> None:
        (
            self._max_concurrency,
            self._per_host,
            self._retries,
            self._retry_backoff,
            self._retry_backoff_max,
            self._grace,
        ) = checked_limits(
            max_concurrency, per_host, retries, retry_backoff, retry_backoff_max, grace
        )
        if context is not None and not isinstance(context, ProbeContext):
            raise DefinitionError(
                "context", f"must be a ProbeContext, got {type(context).__name__}"
            )
        self._context = context
        self._state = "new"
        self._slots = asyncio.Semaphore(self._max_concurrency)
        # host key -> (semaphore, number of probes using it); dropped at zero so a stream over
        # a million distinct hosts does not keep a million semaphores.
        self._hosts: dict[str, tuple[asyncio.Semaphore, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: set[_Stream] = set()
        self._in_flight = 0
        self._max_in_flight_seen = 0
        self._completed = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a Runner can be entered only once; create a new one")
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel everything still running and wait for it; the runner cannot be used again.

        ``async with`` calls this on exit. Calling it again does nothing.
        """
        self._state = "closed"
        for stream in self._streams:
            stream.queue.put_nowait(_CLOSED)
        # A source that swallows our cancellation lets its producer run on, hence the loop.
        # (Finished tasks may still be in the set until their done-callbacks have run.)
        while running := {t for t in self._tasks if not t.done()}:
            await _cancel_and_wait(running)

    def _require_open(self) -> None:
        if self._state == "new":
            raise RuntimeError(
                "the Runner is not open: use it as `async with Runner(...) as runner:`"
            )
        if self._state == "closed":
            raise RuntimeError("the Runner is closed: its `async with` block has ended")

    # -- stats -------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """How many checks are executing right now (holding a concurrency slot)."""
        return self._in_flight

    @property
    def max_in_flight_seen(self) -> int:
        """The highest :attr:`in_flight` reached so far; never above ``max_concurrency``."""
        return self._max_in_flight_seen

    @property
    def completed(self) -> int:
        """How many probes have produced their final result (after any retries)."""
        return self._completed

    # -- public API --------------------------------------------------------------------------

    def stream(self, probes: Iterable[Work] | AsyncIterable[Work]) -> AsyncGenerator[Result, None]:
        """Run ``probes`` and yield each final result as soon as it is ready (completion order).

        Each item is a probe, or a :class:`Job` that gives a probe a deadline of its own (see
        :meth:`check` for what a deadline means).

        Closing the generator early (``aclose()``, or ``break`` inside ``contextlib.aclosing``)
        cancels and waits for the probes it started. An exception raised by ``probes`` itself
        while being iterated cancels the stream's probes and is re-raised here.

        Raises RuntimeError at once when the runner is not open, TypeError when ``probes`` is
        not iterable.
        """
        self._require_open()
        _check_source(probes)
        return self._results(probes)

    async def check(self, probe: Probe, *, deadline: float | None = None) -> Result:
        """Run one probe under this runner's limits, deadline and retries; return its result.

        ``deadline`` is an absolute reading of the context clock's ``monotonic()`` (by default
        ``time.monotonic()``) by which the check must have returned; the earlier of it and the
        probe's ``timeouts.total`` applies, enforced from outside (the probe sees it as its
        context's deadline, and is cancelled ``grace`` seconds after it if it overruns). It
        holds over all attempts: no retry starts once it has passed.

        The check runs in the caller's task (cancelling the caller cancels it); it counts
        towards ``max_concurrency`` and ``per_host`` like the probes of a stream. This is what a
        scheduler uses to start runs one at a time.
        """
        self._require_open()
        result = await self._run_probe(probe, check_deadline(deadline))
        self._completed += 1
        return result

    async def run_all(self, probes: Iterable[Work] | AsyncIterable[Work]) -> list[Result]:
        """Run ``probes`` (probes or :class:`Job` values) and return their final results in
        input order.

        Raises RuntimeError when the runner is not open, TypeError when ``probes`` is not
        iterable.
        """
        self._require_open()
        _check_source(probes)
        async with contextlib.aclosing(self._iterate(probes)) as results:
            by_index = {index: result async for index, result in results}
        return [by_index[i] for i in range(len(by_index))]

    # -- streaming machinery -----------------------------------------------------------------

    async def _results(
        self, probes: Iterable[Work] | AsyncIterable[Work]
    ) -> AsyncGenerator[Result, None]:
        async with contextlib.aclosing(self._iterate(probes)) as results:
            async for _, result in results:
                yield result

    async def _iterate(
        self, probes: Iterable[Work] | AsyncIterable[Work]
    ) -> AsyncGenerator[tuple[int, Result], None]:
        self._require_open()
        stream = _Stream(2 * self._max_concurrency, self._tasks)
        self._streams.add(stream)
        try:
            self._spawn(stream, self._produce(probes, stream))
            while not (stream.source_done and stream.outstanding == 0):
                item = await stream.queue.get()
                if isinstance(item, tuple):
                    stream.outstanding -= 1
                    stream.window.release()
                    yield item
                elif isinstance(item, _Failed):
                    raise item.exc
                elif isinstance(item, _Closed):
                    raise RuntimeError("the Runner was closed while this stream was running")
        finally:
            self._streams.discard(stream)
            await _cancel_and_wait(set(stream.tasks))

    def _spawn(self, stream: _Stream, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        stream.tasks.add(task)
        task.add_done_callback(stream.forget_task)

    async def _produce(self, probes: Iterable[Work] | AsyncIterable[Work], stream: _Stream) -> None:
        """Pull probes one by one, each only when the window has room, and start them."""
        try:
            async with contextlib.aclosing(pull(probes, stream.window)) as source:
                index = 0
                async for probe in source:
                    if not self._start(stream, index, probe):
                        return
                    index += 1
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, who raises it
            stream.queue.put_nowait(_Failed(exc))
            return
        stream.source_done = True
        stream.queue.put_nowait(_WAKE)

    def _start(self, stream: _Stream, index: int, probe: Work) -> bool:
        # Closed already only if the source swallowed our cancellation; start nothing new then.
        if self._state == "closed":
            return False
        stream.outstanding += 1
        self._spawn(stream, self._work(stream, index, probe))
        return True

    async def _work(self, stream: _Stream, index: int, probe: object) -> None:
        try:
            result = await self._run_probe(probe)
        except Exception as exc:  # noqa: BLE001 - a runner bug must reach the consumer, not hang it
            stream.queue.put_nowait(_Failed(exc))
            return
        self._completed += 1
        stream.queue.put_nowait((index, result))

    # -- one probe ---------------------------------------------------------------------------

    def _inspect(self, probe: object) -> _Spec | str:
        """Read what the runner needs from ``probe``, or say why it is not a valid probe."""
        kind, target = _label(probe)
        check = _attr(probe, "check")
        if not callable(check):
            return f"{type(probe).__name__} is not a probe: it has no check() method"
        total = _attr(_attr(probe, "timeouts"), "total")
        if seconds_problem(total) is not None:
            return f"{type(probe).__name__} is not a probe: timeouts.total is {total!r}"
        host: str | None = None
        if self._per_host is not None:
            raw = _attr(probe, "host")
            if not isinstance(raw, str):
                return f"{type(probe).__name__} is not a probe: host is not a string"
            host = _host_key(raw)
        assert isinstance(total, int | float)
        return _Spec(kind, target, check, float(total), host)

    async def _run_probe(self, probe: object, deadline: float | None = None) -> Result:
        """All attempts of one probe, under the limits; returns the final result."""
        if type(probe) is Job:
            if probe.deadline is not None and (deadline is None or probe.deadline < deadline):
                deadline = probe.deadline
            probe = probe.probe
        spec = self._inspect(probe)
        if isinstance(spec, str):
            log.warning("%s; reporting UNKNOWN", spec)
            ctx = self._context or default_context()
            return unknown_result(probe, spec, ctx.clock.now())
        host_slot = self._host_acquire(spec.host) if spec.host is not None else None
        try:
            attempts = 0
            while True:
                attempts += 1
                if host_slot is not None:
                    await host_slot.acquire()
                try:
                    async with self._slots:
                        self._in_flight += 1
                        self._max_in_flight_seen = max(self._max_in_flight_seen, self._in_flight)
                        try:
                            result = await self._attempt(spec, deadline)
                        finally:
                            self._in_flight -= 1
                finally:
                    if host_slot is not None:
                        host_slot.release()
                if attempts > self._retries or not self._should_retry(result):
                    break
                pause = self._backoff(attempts - 1)
                if deadline is not None and self._clock().monotonic() + pause >= deadline:
                    break  # the next attempt could not start before the deadline
                await asyncio.sleep(pause)
        finally:
            if spec.host is not None:
                self._host_release(spec.host)
        if result.attempts != attempts:
            result = attrs.evolve(result, attempts=attempts)
        return result

    def _clock(self) -> Clock:
        return (self._context or default_context()).clock

    async def _attempt(self, spec: _Spec, deadline: float | None) -> Result:
        """One check, with its deadline in the context and enforced from outside."""
        base = self._context or default_context()
        clock = base.clock
        start = clock.monotonic()
        started_at = clock.now()
        end = start + spec.total
        if deadline is not None and deadline < end:
            end = deadline
        ctx = base.with_deadline(end)
        budget = spec.total if ctx.deadline is None else max(ctx.deadline - start, 0.0)
        scope = after(budget + self._grace)
        try:
            with scope:
                result = await spec.check(ctx)
        except TimeoutError as exc:
            if not scope.expired:
                return self._internal(spec, exc, started_at, clock.monotonic() - start)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a probe's bug becomes an UNKNOWN result
            return self._internal(spec, exc, started_at, clock.monotonic() - start)
        else:
            if not scope.expired:
                if isinstance(result, Result):
                    return result
                problem = TypeError(f"check() returned {type(result).__name__}, not a Result")
                return self._internal(spec, problem, started_at, clock.monotonic() - start)
        log.warning(
            "%s %s ignored its deadline of %g s; cancelled %g s later",
            spec.kind,
            spec.target,
            budget,
            self._grace,
        )
        return Result(
            kind=spec.kind,
            target=spec.target,
            status=Status.DOWN,
            started_at=started_at,
            duration=clock.monotonic() - start,
            error=ProbeError(ErrorKind.TIMEOUT, f"probe exceeded its deadline of {budget:g} s"),
        )

    @staticmethod
    def _internal(spec: _Spec, exc: Exception, started_at: dt.datetime, duration: float) -> Result:
        log.warning(
            "%s %s raised %s; reporting UNKNOWN",
            spec.kind,
            spec.target,
            type(exc).__name__,
            exc_info=exc,
        )
        return Result(
            kind=spec.kind,
            target=spec.target,
            status=Status.UNKNOWN,
            started_at=started_at,
            duration=duration,
            error=ProbeError(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}"),
        )

    @staticmethod
    def _should_retry(result: Result) -> bool:
        return (
            result.status is Status.DOWN
            and result.error is not None
            and result.error.kind in RETRYABLE
        )

    def _backoff(self, k: int) -> float:
        """Full jitter: uniform in [0, min(retry_backoff * 2**k, retry_backoff_max)]."""
        ceiling = min(self._retry_backoff * 2 ** min(k, 64), self._retry_backoff_max)
        return random.uniform(0.0, ceiling)  # noqa: S311 - jitter, not cryptography

    def _host_acquire(self, key: str) -> asyncio.Semaphore:
        assert self._per_host is not None
        entry = self._hosts.get(key)
        sem = entry[0] if entry is not None else asyncio.Semaphore(self._per_host)
        self._hosts[key] = (sem, (entry[1] if entry is not None else 0) + 1)
        return sem

    def _host_release(self, key: str) -> None:
        sem, users = self._hosts[key]
        if users <= 1:
            del self._hosts[key]
        else:
            self._hosts[key] = (sem, users - 1)
