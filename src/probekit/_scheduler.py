"""The scheduler: runs monitors on intervals, spread out, never overlapping one monitor's runs."""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

import attrs

from ._clock import Clock, SystemClock
from ._exceptions import DefinitionError
from ._pool import ProcessRunner
from ._result import Result
from ._runner import Runner
from ._validate import check_id, check_seconds
from .probes._base import Probe

__all__ = ["Monitor", "Scheduler"]

log = logging.getLogger("probekit.scheduler")

OnResult = Callable[[str, Result], Awaitable[None] | None]


def _interval(_inst: object, _attr: attrs.Attribute[float], value: float) -> None:
    check_seconds("interval", value)


def _monitor_id(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    check_id("monitor_id", value, blank=True)  # any id the control channel carries


@attrs.frozen
class Monitor:
    """A probe to run every ``interval`` seconds, under a stable id."""

    monitor_id: str = attrs.field(validator=_monitor_id)
    probe: Probe
    interval: float = attrs.field(validator=_interval)


class _Entry:
    __slots__ = ("generation", "monitor", "running")

    def __init__(self, monitor: Monitor, generation: int) -> None:
        self.monitor = monitor
        self.generation = generation
        self.running = False


class Scheduler:
    """Runs each monitor every ``interval`` seconds through a :class:`Runner`.

    A :class:`ProcessRunner` works too: the scheduler only calls its ``check``.

    * The first run of a monitor is placed at a random offset within ``spread * interval`` of
      when it was added, so a thousand monitors added at once do not all start together; then it
      runs every ``interval`` seconds on a fixed grid (no drift), each start moved by up to
      ``jitter * interval`` at random.
    * A monitor never has two runs at once: a run still going when the next is due makes the
      scheduler skip that occurrence (counted in :attr:`skipped`).
    * ``on_result(monitor_id, result)`` (sync or async) gets every result; an exception in it is
      logged, never fatal.
    * The clock is injectable. With a :class:`~probekit.FakeClock`, drive it by hand:
      ``clock.advance(s)``, then :meth:`run_due` starts what is due and :meth:`wait_idle` waits
      for those runs; :meth:`run` is the real-time loop.
    * :attr:`lateness` keeps the last 10,000 start delays (seconds between when a run was due
      and when its task started).

    Use it as an async context manager (or call :meth:`aclose`): leaving cancels runs in flight.
    """

    def __init__(
        self,
        runner: Runner | ProcessRunner,
        on_result: OnResult | None = None,
        *,
        clock: Clock | None = None,
        spread: float = 1.0,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 <= spread <= 1:
            raise DefinitionError("spread", f"must be between 0 and 1, got {spread!r}")
        if not 0 <= jitter < 0.5:
            raise DefinitionError("jitter", f"must be between 0 and 0.5, got {jitter!r}")
        self._runner = runner
        self._on_result = on_result
        self._clock: Clock = clock or SystemClock()
        self._spread = spread
        self._jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311 - spreading start times, not secrets
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = 0
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self.lateness: deque[float] = deque(maxlen=10_000)
        self.started = 0
        self.skipped = 0
        self.failures = 0

    # -- monitors ------------------------------------------------------------------------------

    def add(self, monitor: Monitor, *, first_in: float | None = None) -> None:
        """Add (or replace) a monitor; its first run is spread out unless ``first_in`` is given."""
        old = self._entries.get(monitor.monitor_id)
        self._generation += 1
        entry = _Entry(monitor, self._generation)
        if old is not None:
            entry.running = old.running
        self._entries[monitor.monitor_id] = entry
        delay = (
            first_in
            if first_in is not None
            else self._rng.uniform(0, self._spread * monitor.interval)
        )
        self._push(self._clock.monotonic() + delay, entry)
        if self._wake is not None:
            self._wake.set()

    def remove(self, monitor_id: str) -> bool:
        """Stop scheduling ``monitor_id`` (a run in flight finishes). False if it was unknown."""
        return self._entries.pop(monitor_id, None) is not None

    @property
    def monitors(self) -> dict[str, Monitor]:
        return {k: e.monitor for k, e in self._entries.items()}

    def next_due(self) -> float | None:
        """The monotonic time of the next run, or None with nothing scheduled."""
        self._discard_stale()
        return self._heap[0][0] if self._heap else None

    # -- running -------------------------------------------------------------------------------

    def run_due(self) -> int:
        """Start every run that is due now; return how many were started."""
        now = self._clock.monotonic()
        count = 0
        while self._heap and self._heap[0][0] <= now:
            due, _, monitor_id, generation = heapq.heappop(self._heap)
            entry = self._entries.get(monitor_id)
            if entry is None or entry.generation != generation:
                continue
            interval = entry.monitor.interval
            nxt = due + interval
            if nxt <= now:  # we fell behind by whole intervals: do not queue a burst
                nxt = now + interval - ((now - due) % interval)
            self._push(nxt + self._jitter_for(interval), entry)
            if entry.running:
                self.skipped += 1
                log.debug("skipping %s: its previous run is still going", monitor_id)
                continue
            entry.running = True
            task = asyncio.get_running_loop().create_task(self._run(entry, due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            count += 1
        return count

    async def run(self) -> None:
        """Run monitors in real time until cancelled."""
        self._wake = asyncio.Event()
        try:
            while True:
                self.run_due()
                due = self.next_due()
                self._wake.clear()
                timeout = None if due is None else max(due - self._clock.monotonic(), 0.0)
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            self._wake = None

    async def wait_idle(self) -> None:
        """Wait until no run is in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel runs in flight and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def lateness_quantile(self, q: float) -> float | None:
        """A quantile (0-1) of the recorded start lateness, in seconds."""
        if not self.lateness:
            return None
        ordered = sorted(self.lateness)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    # -- internals -----------------------------------------------------------------------------

    def _jitter_for(self, interval: float) -> float:
        if not self._jitter:
            return 0.0
        return self._rng.uniform(-self._jitter, self._jitter) * interval

    def _push(self, due: float, entry: _Entry) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, entry.monitor.monitor_id, entry.generation))

    def _discard_stale(self) -> None:
        while self._heap:
            _, _, monitor_id, generation = self._heap[0]
            entry = self._entries.get(monitor_id)
            if entry is not None and entry.generation == generation:
                return
            heapq.heappop(self._heap)

    async def _run(self, entry: _Entry, due: float) -> None:
        self.lateness.append(max(self._clock.monotonic() - due, 0.0))
        self.started += 1
        monitor = entry.monitor
        try:
            result = await self._runner.check(monitor.probe)
            if self._on_result is not None:
                outcome = self._on_result(monitor.monitor_id, result)
                if inspect.isawaitable(outcome):
                    await outcome
        except asyncio.CancelledError:
            raise
        except Exception:
            self.failures += 1
            log.exception("on_result failed for monitor %s", monitor.monitor_id)
        finally:
            current = self._entries.get(monitor.monitor_id)
            entry.running = False
            if current is not None and current is not entry:
                current.running = False
