"""Probe classes for tests/test_pool.py, in an importable module so worker processes can unpickle
them (the pool gives its workers the parent's ``sys.path``).

They never touch the network. ``PidProbe`` reports where and when it ran, in its metrics: the
worker's pid, wall-clock start and end (``time.time()``, one clock for every process on the
machine, so intervals from different workers can be compared) and whether the worker's event
loop is uvloop's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
from typing import ClassVar

import attrs

from probekit import ProbeContext, Result, Status, Timeouts

__all__ = ["CrashProbe", "PidProbe", "running_on_uvloop"]

_FIVE_SECONDS = Timeouts(total=5.0)


def running_on_uvloop() -> bool:
    return type(asyncio.get_running_loop()).__module__.startswith("uvloop")


@attrs.frozen
class PidProbe:
    """Sleeps ``nap`` seconds, then is UP with ``pid``, ``start``, ``end`` and ``uvloop`` metrics.

    ``tag`` is carried along untouched; a test puts a lambda there to make the probe unpicklable.
    """

    kind: ClassVar[str] = "pid"

    name: str
    nap: float = 0.0
    host: str = "pid.test"
    timeouts: Timeouts = _FIVE_SECONDS
    tag: object = attrs.field(default=None, eq=False, repr=False)

    @property
    def target(self) -> str:
        return f"pid://{self.host}/{self.name}"

    async def check(self, ctx: ProbeContext | None = None) -> Result:
        started_at = dt.datetime.now(dt.UTC)
        begin = time.monotonic()
        start = time.time()
        await asyncio.sleep(self.nap)
        end = time.time()
        return Result(
            kind=self.kind,
            target=self.target,
            status=Status.UP,
            started_at=started_at,
            duration=time.monotonic() - begin,
            metrics={
                "pid": float(os.getpid()),
                "start": start,
                "end": end,
                "uvloop": float(running_on_uvloop()),
            },
        )


@attrs.frozen
class CrashProbe:
    """Sleeps ``after`` seconds, then kills the process it runs in with ``os._exit(3)``.

    It refuses (raises) in a process that has imported pytest, so a pool that ran it in the
    parent by mistake fails a test instead of killing the test run.
    """

    kind: ClassVar[str] = "crash"

    name: str
    after: float = 0.05
    host: str = "crash.test"
    timeouts: Timeouts = _FIVE_SECONDS

    @property
    def target(self) -> str:
        return f"crash://{self.host}/{self.name}"

    async def check(self, ctx: ProbeContext | None = None) -> Result:
        await asyncio.sleep(self.after)
        if "pytest" in sys.modules:
            raise RuntimeError("CrashProbe ran in the test process, not in a worker")
        os._exit(3)


#: Set by a test to the pid of the process in which ``Unreadable`` must fail to unpickle.
REFUSE_IN = "PROBEKIT_POOL_TEST_REFUSE_IN"


def _restore_unreadable() -> float:
    if os.environ.get(REFUSE_IN) == str(os.getpid()):
        raise RuntimeError("this value cannot be read in this process")
    return 0.0


class Unreadable:
    """A value that pickles anywhere but cannot be unpickled in the process named by REFUSE_IN."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_restore_unreadable, ())


@attrs.frozen
class UnreadableResultProbe:
    """Returns a Result the parent cannot unpickle (a metric value that refuses to load there)."""

    kind: ClassVar[str] = "unreadable"

    name: str = "unreadable"
    host: str = "unreadable.test"
    timeouts: Timeouts = _FIVE_SECONDS

    @property
    def target(self) -> str:
        return f"unreadable://{self.host}/{self.name}"

    async def check(self, ctx: ProbeContext | None = None) -> Result:
        return Result(
            kind=self.kind,
            target=self.target,
            status=Status.UP,
            started_at=dt.datetime.now(dt.UTC),
            duration=0.0,
            metrics={"odd": Unreadable()},  # type: ignore[dict-item]
        )
