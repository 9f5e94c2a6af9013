"""Benchmarks reuse the in-process servers and test doubles that live next to the tests."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import ClassVar

import attrs

from probekit import ProbeContext, Result, Status, Timeouts

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@attrs.frozen
class FakeProbe:
    """A probe that succeeds after ``nap`` seconds without touching the network, for measuring
    the machinery around checks rather than the checks."""

    kind: ClassVar[str] = "fake"
    name: str = "fake"
    nap: float = 0.0
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    @property
    def target(self) -> str:
        return self.name

    @property
    def host(self) -> str:
        return self.name

    async def check(self, ctx: ProbeContext | None = None) -> Result:
        clock = (ctx or ProbeContext()).clock
        started = clock.now()
        if self.nap:
            await asyncio.sleep(self.nap)
        return Result(
            kind=self.kind,
            target=self.name,
            status=Status.UP,
            started_at=started,
            duration=self.nap,
        )
