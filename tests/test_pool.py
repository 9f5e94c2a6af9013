"""ProcessRunner: probes run in worker processes, with the Runner's promises kept over the pool.

The probes that report where they ran (``PidProbe``) or kill their worker (``CrashProbe``) live in
tests/poolprobes.py, an importable module, because a worker unpickles each probe by its class's
module and name. HTTP checks go to the in-process loopback server only; the policy test denies
loopback itself, so nothing is dialled at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from poolprobes import REFUSE_IN, CrashProbe, PidProbe, UnreadableResultProbe
from probekit import (
    DefinitionError,
    Dialer,
    EgressPolicy,
    ErrorKind,
    FakeClock,
    HttpProbe,
    Probe,
    ProbeContext,
    ProcessRunner,
    Result,
    Secret,
    StaticResolver,
    Status,
    Timeouts,
    result_to_json,
)
from servers import GuardedConnector, HttpServer

#: No single step of these tests may take longer; a hang fails the test instead of the run.
PATIENCE = 20.0

ONE_SECOND = Timeouts(total=1.0)

# -- helpers ------------------------------------------------------------------------------------


def pid_of(result: Result) -> int:
    return int(result.metrics["pid"])


def peak(results: Iterable[Result]) -> int:
    """The most checks running at one moment, from the wall-clock intervals PidProbe reports.

    An end sorts before a start at the same instant: a slot freed and reused is not an overlap.
    """
    events = sorted(
        (t, delta)
        for r in results
        for t, delta in ((r.metrics["start"], 1), (r.metrics["end"], -1))
    )
    running = highest = 0
    for _, delta in events:
        running += delta
        highest = max(highest, running)
    return highest


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (an unreaped zombie counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children() -> set[int]:
    """Pids of this process's children, zombies included (Linux), or an empty set elsewhere."""
    found: set[int] = set()
    for path in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found.update(int(pid) for pid in path.read_text().split())
    return found


async def wait_gone(pids: Iterable[int], *, children_before: set[int] | None = None) -> None:
    """Wait (a little) until none of ``pids`` exists and, when ``children_before`` is given, no
    child of this process is left that was not there before; fail with the survivors otherwise."""
    pids = set(pids)
    deadline = time.monotonic() + 5.0
    while True:
        survivors = {pid for pid in pids if alive(pid)}
        if children_before is not None:
            survivors |= children() - children_before
        if not survivors:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"processes still exist after the pool was closed: {sorted(survivors)}")
        await asyncio.sleep(0.05)


def assert_worker_exited(result: Result) -> None:
    assert result.status is Status.UNKNOWN, result
    assert result.error is not None and result.error.kind is ErrorKind.INTERNAL, result
    assert "exited" in result.error.message, result.error.message


async def assert_unusable(pool: ProcessRunner) -> None:
    probe = PidProbe("never")
    with pytest.raises(RuntimeError):
        await pool.run_all([probe])
    with pytest.raises(RuntimeError):
        await pool.check(probe)
    with pytest.raises(RuntimeError):
        async for _ in pool.stream([probe]):
            pass


# -- many probes over several workers ----------------------------------------------------------


async def test_many_http_probes_are_up_in_input_order_and_every_worker_serves(
    http_server: HttpServer,
) -> None:
    probes: list[Probe] = []
    for i in range(200):
        probes.append(HttpProbe(http_server.url(f"/ok?i={i}")))
        if i % 10 == 0:
            probes.append(PidProbe(f"p{i}", nap=0.05))
    async with ProcessRunner(processes=2, max_concurrency=20) as pool:
        assert pool.processes == 2
        pids = pool.pids
        async with asyncio.timeout(PATIENCE):
            results = await pool.run_all(probes)
    assert len(set(pids)) == 2
    assert os.getpid() not in pids
    assert [r.target for r in results] == [p.target for p in probes]
    assert [r.kind for r in results] == [p.kind for p in probes]
    assert all(r.status is Status.UP for r in results), [r for r in results if not r.ok][:3]
    assert sorted(req.query for req in http_server.requests) == sorted(f"i={i}" for i in range(200))
    assert http_server.connections == 200
    served_by = {pid_of(r) for r in results if r.kind == "pid"}
    assert served_by == set(pids)


async def test_max_concurrency_is_the_total_over_all_workers() -> None:
    probes = [PidProbe(f"p{i}", nap=0.2) for i in range(40)]
    async with ProcessRunner(processes=2, max_concurrency=20) as pool:
        started = time.monotonic()
        async with asyncio.timeout(PATIENCE):
            results = await pool.run_all(probes)
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    # 40 checks of 0.2 s, 20 at a time: at least two waves, and far from one at a time (8 s).
    assert 0.4 <= elapsed < 2.0, elapsed
    assert peak(results) <= 20
    by_pid: defaultdict[int, list[Result]] = defaultdict(list)
    for r in results:
        by_pid[pid_of(r)].append(r)
    assert len(by_pid) == 2
    # The total is split between the workers: neither runs more than its share.
    per_worker = {pid: peak(rs) for pid, rs in by_pid.items()}
    assert all(n <= 10 for n in per_worker.values()), per_worker


async def test_per_host_keeps_each_host_on_one_worker_and_holds_the_limit() -> None:
    hosts = ("a.test", "B.test", "b.TEST", "c.test", "d.test")
    probes = [PidProbe(f"{host}-{i}", nap=0.05, host=host) for i in range(12) for host in hosts]
    async with ProcessRunner(processes=2, max_concurrency=20, per_host=2) as pool:
        async with asyncio.timeout(PATIENCE):
            results = await pool.run_all(probes)
    assert all(r.ok for r in results)
    by_host: defaultdict[str, list[Result]] = defaultdict(list)
    for probe, result in zip(probes, results, strict=True):
        by_host[probe.host.lower()].append(result)
    assert {host: len({pid_of(r) for r in rs}) for host, rs in by_host.items()} == dict.fromkeys(
        by_host, 1
    )
    per_host = {host: peak(rs) for host, rs in by_host.items()}
    assert all(n <= 2 for n in per_host.values()), per_host


# -- failures stay results ------------------------------------------------------------------------


async def test_a_dying_worker_fails_only_its_checks_and_is_restarted() -> None:
    normal = [PidProbe(f"n{i}", nap=0.3) for i in range(20)]
    crash = CrashProbe("boom", after=0.05)
    probes: list[Probe] = [*normal[:10], crash, *normal[10:]]
    before_children = children()
    async with ProcessRunner(processes=2, max_concurrency=40) as pool:
        before = set(pool.pids)
        async with asyncio.timeout(PATIENCE):
            results = await pool.run_all(probes)
        assert [r.target for r in results] == [p.target for p in probes]
        assert_worker_exited(results[10])
        assert results[10].kind == "crash"
        up = [r for r in results if r.ok]
        for r in results:
            if not r.ok:
                assert_worker_exited(r)
        assert up, "the probes of the other worker were lost too"

        async with asyncio.timeout(PATIENCE):
            later = await pool.run_all([PidProbe(f"later{i}", nap=0.05) for i in range(20)])
        assert all(r.ok for r in later)
        assert pool.restarts >= 1
        now = set(pool.pids)
        assert len(now) == 2
        dead = before - now
        assert len(dead) == 1, (before, now)
        assert not {pid_of(r) for r in up} & dead
        assert {pid_of(r) for r in later} <= now
        await wait_gone(dead)
        current = pool.pids
    await wait_gone([*before, *current], children_before=before_children)


async def test_a_dying_worker_does_not_hang_a_stream() -> None:
    probes: list[Probe] = [
        PidProbe("a", nap=0.2),
        CrashProbe("boom", after=0.02),
        PidProbe("b", nap=0.2),
    ]
    async with ProcessRunner(processes=1, max_concurrency=10) as pool:
        before = pool.pids
        async with asyncio.timeout(PATIENCE):
            results = [r async for r in pool.stream(probes)]
            # one worker: everything was running in it when it died
            assert sorted(r.target for r in results) == sorted(p.target for p in probes)
            for r in results:
                assert_worker_exited(r)
            [again] = await pool.run_all([PidProbe("again")])
        assert again.ok
        assert pool.restarts == 1
        assert pool.pids != before
        assert pid_of(again) in pool.pids


async def test_a_probe_that_cannot_be_pickled_is_unknown_and_the_rest_run() -> None:
    @attrs.frozen
    class LocalProbe:
        kind: ClassVar[str] = "local"
        name: str
        host: str = "local.test"
        timeouts: Timeouts = ONE_SECOND

        @property
        def target(self) -> str:
            return f"local://{self.host}/{self.name}"

        async def check(self, ctx: ProbeContext | None = None) -> Result:
            return Result(self.kind, self.target, Status.UP, dt.datetime.now(dt.UTC), 0.0)

    probes: list[Probe] = [
        PidProbe("a"),
        LocalProbe("local"),
        PidProbe("b"),
        PidProbe("lambda", tag=lambda: None),
        PidProbe("c"),
    ]
    async with ProcessRunner(processes=2, max_concurrency=10) as pool:
        async with asyncio.timeout(PATIENCE):
            results = await pool.run_all(probes)
        [alone] = await pool.run_all([LocalProbe("alone")])
    assert [r.target for r in results] == [p.target for p in probes]
    assert [r.kind for r in results] == [p.kind for p in probes]
    for bad in (results[1], results[3], alone):
        assert bad.status is Status.UNKNOWN, bad
        assert bad.error is not None and bad.error.kind is ErrorKind.INTERNAL
        assert "worker" in bad.error.message, bad.error.message
    assert [r.ok for r in results] == [True, False, True, False, True]


async def test_a_secret_reaches_the_worker_and_never_the_result(http_server: HttpServer) -> None:
    canary = "s3cr3t-canary"
    probe = HttpProbe(http_server.url("/echo"), bearer_token=Secret(canary))
    async with ProcessRunner(processes=2) as pool:
        async with asyncio.timeout(PATIENCE):
            [result] = await pool.run_all([probe])
            single = await pool.check(probe)
    for r in (result, single):
        assert r.status is Status.UP, r
        assert canary not in result_to_json(r)
        assert canary not in repr(r)
        assert canary not in str(r)
    assert [req.headers.get("authorization") for req in http_server.requests] == [
        f"Bearer {canary}"
    ] * 2
    assert probe.bearer_token == Secret(canary)  # the parent's probe is untouched


async def test_the_egress_policy_applies_in_every_worker(http_server: HttpServer) -> None:
    policy = EgressPolicy(deny=["127.0.0.0/8", "::1/128"])
    probes = [HttpProbe(http_server.url(f"/ok?i={i}")) for i in range(8)]
    async with ProcessRunner(processes=2, policy=policy) as pool:
        async with asyncio.timeout(PATIENCE):
            results = await pool.run_all(probes)
            single = await pool.check(probes[0])
    for r in [*results, single]:
        assert r.status is Status.DOWN, r
        assert r.error is not None and r.error.kind is ErrorKind.POLICY_DENIED, r.error
    assert http_server.connections == 0
    assert http_server.requests == []


# -- arguments and lifecycle ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"processes": 0}, "processes"),
        ({"processes": -1}, "processes"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"loop": "bogus"}, "loop"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        ProcessRunner(**kwargs)
    assert info.value.path == path


async def test_process_count_defaults_to_cpus_and_never_exceeds_max_concurrency() -> None:
    assert ProcessRunner(max_concurrency=10_000).processes == os.cpu_count()
    assert ProcessRunner(processes=4, max_concurrency=2).processes == 2
    async with ProcessRunner(processes=3, max_concurrency=2) as pool:
        assert pool.processes == 2
        assert len(set(pool.pids)) == 2


async def test_use_outside_async_with_raises_and_no_worker_outlives_the_pool() -> None:
    before_children = children()
    pool = ProcessRunner(processes=2)
    await assert_unusable(pool)
    async with pool:
        pids = pool.pids
        assert len(set(pids)) == 2
        assert all(alive(pid) for pid in pids)
        assert os.getpid() not in pids
        result = await pool.check(PidProbe("p"))
        assert result.ok
        assert pid_of(result) in pids
    await wait_gone(pids, children_before=before_children)
    await assert_unusable(pool)


async def test_aclose_stops_the_workers() -> None:
    before_children = children()
    pool = ProcessRunner(processes=2)
    await pool.__aenter__()
    pids = pool.pids
    await pool.aclose()
    await wait_gone(pids, children_before=before_children)
    await assert_unusable(pool)


async def test_cancelling_a_stream_consumer_leaves_the_pool_closable() -> None:
    before_children = children()
    pool = ProcessRunner(processes=2, max_concurrency=10)
    await pool.__aenter__()
    seen: list[Result] = []
    three_seen = asyncio.Event()
    try:
        pids = pool.pids

        async def consume() -> None:
            async for result in pool.stream(PidProbe(f"p{i}", nap=0.3) for i in range(100)):
                seen.append(result)
                if len(seen) == 3:
                    three_seen.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(PATIENCE):
            await three_seen.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        async with asyncio.timeout(PATIENCE):
            await pool.aclose()
    assert all(r.ok for r in seen)
    await wait_gone(pids, children_before=before_children)


# -- streaming, single checks and event loops ---------------------------------------------------


async def test_stream_takes_an_async_generator_and_yields_in_completion_order() -> None:
    naps = [0.4, 0.0, 0.3, 0.1, 0.2]

    async def source() -> AsyncIterator[PidProbe]:
        for i, nap in enumerate(naps):
            await asyncio.sleep(0)
            yield PidProbe(f"n{i}", nap=nap)

    async with ProcessRunner(processes=2, max_concurrency=10) as pool:
        async with asyncio.timeout(PATIENCE):
            results = [r async for r in pool.stream(source())]
            single = await pool.check(PidProbe("single", nap=0.01))
        assert pid_of(single) in pool.pids
    by_nap = sorted(range(len(naps)), key=naps.__getitem__)
    assert [r.target for r in results] == [f"pid://pid.test/n{i}" for i in by_nap]
    assert all(r.ok for r in results)
    assert single.ok
    assert single.target == "pid://pid.test/single"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "auto"])
async def test_workers_run_on_the_chosen_event_loop(loop: str, http_server: HttpServer) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    probes: list[Probe] = [PidProbe(f"p{i}", nap=0.05) for i in range(6)]
    probes.append(HttpProbe(http_server.url("/ok")))
    async with ProcessRunner(processes=2, loop=loop) as pool:  # type: ignore[arg-type]
        async with asyncio.timeout(PATIENCE):
            results = await pool.run_all(probes)
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    on_uvloop = {r.metrics["uvloop"] for r in results if r.kind == "pid"}
    if loop == "asyncio":
        assert on_uvloop == {0.0}
    elif loop == "uvloop":
        assert on_uvloop == {1.0}


async def test_worker_log_records_are_logged_again_in_the_parent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker's Runner warns about a non-probe; the record reaches the parent's logging."""
    caplog.set_level("WARNING", logger="probekit")
    async with asyncio.timeout(PATIENCE), ProcessRunner(processes=1, max_concurrency=2) as pool:
        (result,) = await pool.run_all([42])  # type: ignore[list-item]
    assert result.status is Status.UNKNOWN
    assert result.error is not None and result.error.kind is ErrorKind.INTERNAL
    assert "not a probe" in result.error.message
    relayed = [r for r in caplog.records if r.name == "probekit.runner"]
    assert relayed, caplog.text
    assert "[worker 0]" in relayed[0].getMessage()
    assert "int is not a probe" in relayed[0].getMessage()
    assert relayed[0].levelname == "WARNING"


@pytest.mark.parametrize("pause", [0.0, 0.05])
async def test_closing_while_a_worker_restarts_leaves_no_process(pause: float) -> None:
    """The pool is closed as soon as a crash is reported (before the restart begins), or
    ``pause`` later, while the new worker is still starting (it takes longer than 50 ms to
    import probekit): in both cases no process may outlive the pool."""
    before = children()
    pool = ProcessRunner(processes=1, max_concurrency=2)
    async with asyncio.timeout(PATIENCE):
        await pool.__aenter__()
        first = set(pool.pids)
        async for result in pool.stream([CrashProbe("boom", after=0.01)]):
            assert result.error is not None and "exited" in result.error.message
            break
        await asyncio.sleep(pause)
        await pool.aclose()
    if pause:
        assert pool.restarts == 1  # the restart had begun when the pool closed
    await wait_gone(first, children_before=before)


async def test_a_context_gives_the_workers_its_resolver_and_policy(
    http_server: HttpServer,
) -> None:
    """A StaticResolver's answers reach the workers (the name exists nowhere else), and so
    does the policy of the context's dialer."""
    resolver = StaticResolver({"web.pool.test": ["127.0.0.1"]})
    allowed = ProbeContext(dialer=Dialer(resolver=resolver, prefer="ipv4"))
    denied = ProbeContext(
        dialer=Dialer(resolver=resolver, policy=EgressPolicy(deny=["127.0.0.0/8", "::1/128"]))
    )
    probe = HttpProbe(http_server.url("/", host="web.pool.test"))
    async with asyncio.timeout(PATIENCE):
        async with ProcessRunner(processes=2, max_concurrency=4, context=allowed) as pool:
            up = await pool.run_all([probe] * 4)
        connections = http_server.connections
        async with ProcessRunner(processes=1, max_concurrency=4, context=denied) as pool:
            down = await pool.check(probe)
    assert [r.status for r in up] == [Status.UP] * 4, [r.summary() for r in up]
    assert {r.address for r in up} == {f"127.0.0.1:{http_server.port}"}
    assert down.status is Status.DOWN
    assert down.error is not None and down.error.kind is ErrorKind.POLICY_DENIED
    assert http_server.connections == connections  # the denied check dialled nothing


@pytest.mark.parametrize(
    ("make", "path", "words"),
    [
        (
            lambda: {"context": ProbeContext(dialer=Dialer(connector=GuardedConnector()))},
            "context",
            "connector",
        ),
        (lambda: {"context": ProbeContext(clock=FakeClock())}, "context", "clock"),
        (lambda: {"context": ProbeContext(), "policy": EgressPolicy()}, "policy", "not both"),
        (lambda: {"context": "not a context"}, "context", "ProbeContext"),
    ],
)
def test_what_cannot_cross_a_process_boundary_is_refused(make: Any, path: str, words: str) -> None:
    with pytest.raises(DefinitionError) as info:
        ProcessRunner(processes=1, **make())
    assert info.value.path == path
    assert words in str(info.value)


async def test_in_flight_counts_checks_sent_and_not_answered() -> None:
    probes = [PidProbe(f"p{i}", nap=0.3) for i in range(6)]
    async with asyncio.timeout(PATIENCE), ProcessRunner(processes=2, max_concurrency=4) as pool:
        assert pool.in_flight == 0
        task = asyncio.create_task(pool.run_all(probes))
        seen = 0
        while not task.done():
            seen = max(seen, pool.in_flight)
            await asyncio.sleep(0.02)
        results = await task
        assert pool.in_flight == 0
    assert [r.status for r in results] == [Status.UP] * 6
    assert 4 <= seen <= 6  # at least the running ones; never more than were sent


async def test_a_result_the_parent_cannot_read_fails_that_worker_not_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frame the parent cannot unpickle is treated like a dying worker: its checks are
    UNKNOWN, it is replaced, and the pool goes on (no stream waits forever)."""
    monkeypatch.setenv(REFUSE_IN, str(os.getpid()))
    async with asyncio.timeout(PATIENCE), ProcessRunner(processes=1, max_concurrency=2) as pool:
        (bad,) = await pool.run_all([UnreadableResultProbe()])
        (good,) = await pool.run_all([PidProbe("after")])
        restarts = pool.restarts
    assert bad.status is Status.UNKNOWN
    assert bad.error is not None and "could not read" in bad.error.message
    assert good.status is Status.UP
    assert restarts == 1
