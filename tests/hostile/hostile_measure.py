"""What a hostile case costs the process: RSS, file descriptors, asyncio tasks, CPU time."""

from __future__ import annotations

import asyncio
import os
import time

import attrs

#: One row per hostile-server case run: (case id, deadline overshoot s, RSS growth bytes, CPU s).
MEASURED: list[tuple[str, float, int, float]] = []


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@attrs.frozen
class Usage:
    fds: set[str]
    tasks: set[asyncio.Task[object]]
    rss: int
    cpu: float

    @classmethod
    def now(cls) -> Usage:
        return cls(
            set(os.listdir("/proc/self/fd")), asyncio.all_tasks(), rss(), time.process_time()
        )

    async def settled(self) -> Usage:
        """Usage once the closes the loop still has queued (aborted transports) have run, or
        after a second if something stays open."""
        deadline = time.monotonic() + 1.0
        while True:
            await asyncio.sleep(0.01)
            after = Usage.now()
            if (after.fds <= self.fds and after.tasks <= self.tasks) or (
                time.monotonic() > deadline
            ):
                return after
