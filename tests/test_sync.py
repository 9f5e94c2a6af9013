"""check_sync / check_all_sync: checks from synchronous code, with or without a running loop."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import ClassVar

import attrs
import pytest

from probekit import ErrorKind, Job, Status, TcpProbe, Timeouts, check_all_sync, check_sync
from probekit.probes import Attempt, ProbeBase


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback TCP port that accepts connections (and closes them)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.frozen
class Raising(ProbeBase):
    kind: ClassVar[str] = "raising_sync_test"
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    @property
    def target(self) -> str:
        return "nowhere"

    async def run(self, attempt: Attempt) -> None:
        raise RuntimeError("boom")


@attrs.frozen
class Sleeping(ProbeBase):
    kind: ClassVar[str] = "sleeping_sync_test"
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    @property
    def target(self) -> str:
        return "nowhere"

    async def run(self, attempt: Attempt) -> None:
        with attempt.phase("wait"):
            await asyncio.sleep(30)


def test_check_sync_from_a_plain_function(listener: int) -> None:
    result = check_sync(TcpProbe("127.0.0.1", listener))
    assert result.status is Status.UP, result.summary()
    assert result.phase_names()[:2] == ("resolve", "connect")
    down = check_sync(TcpProbe("127.0.0.1", closed_port()))
    assert down.status is Status.DOWN
    assert down.error is not None and down.error.kind is ErrorKind.CONNECT


async def test_check_sync_inside_a_running_loop(listener: int) -> None:
    """asyncio.run() is refused where a loop runs; check_sync runs on a worker thread instead."""
    coroutine = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="running event loop"):
        asyncio.run(coroutine)
    coroutine.close()
    result = check_sync(TcpProbe("127.0.0.1", listener))
    assert result.status is Status.UP, result.summary()


def test_a_raising_probe_is_an_unknown_result_not_an_exception() -> None:
    result = check_sync(Raising())
    assert result.status is Status.UNKNOWN
    assert result.error is not None and result.error.kind is ErrorKind.INTERNAL


def test_deadline_seconds_bounds_the_check() -> None:
    result = check_sync(Sleeping(), deadline_seconds=0.2)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "wait"
    with pytest.raises(ValueError, match="deadline_seconds"):
        check_sync(Sleeping(), deadline_seconds=0)


def test_check_all_sync_keeps_input_order(listener: int) -> None:
    closed = closed_port()
    probes = [
        TcpProbe("127.0.0.1", listener),
        Job(TcpProbe("127.0.0.1", closed)),
        Raising(),
        TcpProbe("127.0.0.1", listener),
    ]
    results = check_all_sync(probes, max_concurrency=2)
    assert [r.status for r in results] == [Status.UP, Status.DOWN, Status.UNKNOWN, Status.UP]
    assert results[1].target == f"127.0.0.1:{closed}"


async def test_check_all_sync_inside_a_running_loop(listener: int) -> None:
    results = check_all_sync([TcpProbe("127.0.0.1", listener)] * 3)
    assert [r.status for r in results] == [Status.UP] * 3


def test_retries_are_passed_to_the_runner() -> None:
    result = check_sync(TcpProbe("127.0.0.1", closed_port()), retries=2)
    assert result.attempts == 3
