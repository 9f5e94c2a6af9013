"""The timeline of one check: named phases measured on the monotonic clock."""

from __future__ import annotations

from types import TracebackType

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

    def phase(self, name: str) -> _PhaseScope:
        """Time the body (a ``with`` block) as phase ``name``.

        A failing phase is recorded up to the failure and stays ``current``.
        """
        return _PhaseScope(self, name)

    def add(self, name: str, begin: float, end: float) -> None:
        """Record a phase measured elsewhere, from absolute monotonic readings."""
        self.phases.append(Phase(name, begin - self.start, end - begin))


class _PhaseScope:
    # A plain class rather than @contextmanager: this runs several times per check.
    __slots__ = ("begin", "name", "previous", "timeline")

    def __init__(self, timeline: Timeline, name: str) -> None:
        self.timeline = timeline
        self.name = name

    def __enter__(self) -> None:
        timeline = self.timeline
        self.previous = timeline.current
        timeline.current = self.name
        self.begin = timeline._clock.monotonic()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        timeline = self.timeline
        timeline.add(self.name, self.begin, timeline._clock.monotonic())
        if exc_type is None:
            timeline.current = self.previous
