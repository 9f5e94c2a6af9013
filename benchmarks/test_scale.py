"""Scale benchmarks: 10,000 probes in flight against a slow server, and scheduler lateness.

* ``test_ten_thousand_in_flight``: 10,000 HttpProbes started at once through
  ``Runner(max_concurrency=10_000)`` against a server (in a subprocess, so its memory is not
  counted) that holds each request 2 s before answering. The prober is a fresh Python process
  of its own (on asyncio's loop, and on uvloop when installed); it reports its peak RSS (the
  kernel's high-water mark) and how the checks ended. The target is <= 150 MB and every check
  UP or a clean ``timeout``. The peer for the ratio is the same process's RSS just before the
  run (interpreter, probekit and the 10,000 probe definitions).
* ``test_scheduler_lateness``: 10,000 monitors with a 10 s interval on the real-time loop for
  20 s (about 1,000 starts a second), each probe a 5 ms sleep; reports p50/p99/max start
  lateness (target p99 <= 20 ms), next to ``asyncio.sleep``'s own lateness measured in the same
  run as the peer.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from typing import Any

import pytest

from conftest import FakeProbe
from probekit import Monitor, Runner, Scheduler

SLOW_SERVER = r"""
import asyncio, sys
async def handle(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=16384)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


PROBER = r"""
import asyncio, json, sys, time

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")

port, loop_name, total = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
if loop_name == "uvloop":
    import uvloop
    uvloop.install()
from probekit import HttpProbe, Runner, Timeouts

async def main():
    probes = [
        HttpProbe(f"http://127.0.0.1:{port}/", timeouts=Timeouts(total=total))
        for _ in range(10_000)
    ]
    async with Runner(max_concurrency=10_000) as warm:  # the code paths, imported and warm
        await warm.run_all(probes[:1])
    before = status("VmRSS")
    async with Runner(max_concurrency=10_000) as runner:
        began = time.monotonic()
        results = await runner.run_all(probes)
        took = time.monotonic() - began
    statuses = {}
    for r in results:
        key = r.status.name if r.error is None else f"{r.status.name}/{r.error.kind.value}"
        statuses[key] = statuses.get(key, 0) + 1
    print(json.dumps({
        "loop": loop_name,
        "total_timeout_s": total,
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(status("VmHWM"), 1),
        "rss_growth_mb": round(status("VmHWM") - before, 1),
        "seconds": round(took, 2),
        "statuses": statuses,
        "max_in_flight": runner.max_in_flight_seen,
        "max_check_duration_s": round(max(r.duration for r in results), 3),
    }))

asyncio.run(main())
"""


def _loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


@pytest.mark.parametrize("total", [20.0, 1.0], ids=["answered", "timing-out"])
@pytest.mark.parametrize("loop_name", _loops())
def test_ten_thousand_in_flight(benchmark: Any, loop_name: str, total: float) -> None:
    """The prober runs in a fresh process of its own, so the figure is probekit's alone (not
    pytest's and the benchmark plugin's); its peak RSS is the kernel's high-water mark.

    With a 20 s deadline every check is answered (UP); with 1 s every check must end as a clean
    DOWN/timeout, close to its deadline, at the same scale.
    """
    server = subprocess.Popen(
        [sys.executable, "-c", SLOW_SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        outcome: dict[str, Any] = {}

        def run() -> None:
            done = subprocess.run(
                [sys.executable, "-c", PROBER, str(port), loop_name, str(total)],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            outcome.update(json.loads(done.stdout))

        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        server.kill()
        server.wait()
    benchmark.extra_info.update(outcome)
    print(f"\n10k in flight: {outcome}")
    expected = "UP" if total > 2 else "DOWN/timeout"
    assert outcome["statuses"] == {expected: 10_000}, outcome
    assert outcome["max_in_flight"] == 10_000, outcome
    if total < 2:
        # Each timed-out check ended well before the server would have answered (2 s). How
        # late after its deadline the last one ended is reported, not asserted: with 10,000
        # deadlines expiring within about a second, that is the loop's backlog.
        assert outcome["max_check_duration_s"] < 2.0, outcome


def test_scheduler_lateness(benchmark: Any) -> None:
    figures: dict[str, Any] = {}

    async def run() -> None:
        async with Runner(max_concurrency=2_000) as runner, Scheduler(runner) as sched:
            for i in range(10_000):
                sched.add(Monitor(f"m{i}", FakeProbe(f"n{i}", nap=0.005), interval=10))
            loop_task = asyncio.create_task(sched.run())
            # the peer: how late asyncio.sleep itself wakes up under the same load
            sleep_late: list[float] = []
            end = time.monotonic() + 20
            while time.monotonic() < end:
                t = time.monotonic()
                await asyncio.sleep(0.01)
                sleep_late.append(time.monotonic() - t - 0.01)
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)
        sleep_late.sort()
        figures.update(
            started=sched.started,
            skipped=sched.skipped,
            p50_ms=round((sched.lateness_quantile(0.5) or 0) * 1000, 2),
            p99_ms=round((sched.lateness_quantile(0.99) or 0) * 1000, 2),
            max_ms=round(max(sched.lateness) * 1000, 2),
            asyncio_sleep_p99_ms=round(sleep_late[int(0.99 * len(sleep_late))] * 1000, 2),
            cpu_s=round(resource.getrusage(resource.RUSAGE_SELF).ru_utime, 1),
        )

    benchmark.pedantic(lambda: asyncio.run(run()), rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print(f"\nscheduler, 10k monitors: {figures}")
    assert figures["started"] > 15_000
