"""The timeline of one check: named phases measured on the monotonic clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ._clock import Clock
from ._result import Phase

__all__ = ["Timeline"]


class Timeline:
    """Records phases in the order they run.

    ``current`` names the phase running now (or the one that was running when an exception left
    it), which is how a timeout names the phase it interrupted.
    """

    __slots__ = ("_clock", "current", "phases", "start")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.start = clock.monotonic()
        self.phases: list[Phase] = []
        self.current: str | None = None

    def now(self) -> float:
        """Seconds since the check started."""
        return self._clock.monotonic() - self.start

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body as phase ``name``; a failing phase is recorded up to the failure."""
        previous = self.current
        self.current = name
        begin = self._clock.monotonic()
        try:
            yield
        except BaseException:
            self.add(name, begin, self._clock.monotonic())
            raise
        self.add(name, begin, self._clock.monotonic())
        self.current = previous

    def add(self, name: str, begin: float, end: float) -> None:
        """Record a phase measured elsewhere, from absolute monotonic readings."""
        self.phases.append(Phase(name, begin - self.start, end - begin))
