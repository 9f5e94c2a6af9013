"""Every built-in kind against every hostile server that applies to it.

Each case asserts what an operator relies on: a classified result (DOWN, an error kind a correct
probe gives, never ``internal``), the check over within its deadline + 100 ms, and nothing left
behind or burnt: RSS growth, file descriptors, asyncio tasks and CPU time, measured around the
whole case with the server stopped first.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import pytest
from hostile_kinds import KindProfile, good_server, http_response, server_profiles
from hostile_measure import MEASURED, Usage
from hostile_servers import CASES, Case, bomb, garbage, serve

from probekit import ErrorKind, Result, Status, build_probe
from servers import GuardedConnector, TcpServer, make_context

TOTAL = 1.0  # each check's deadline
GRACE = 0.1  # how far past it a check may end
RSS_BOUND = 64 * 2**20
CPU_BOUND = 1.5


def _probe(profile: KindProfile, port: int, tls: bool) -> Any:
    definition = profile.definition("127.0.0.1", port, tls)
    definition["timeouts"] = {"total": TOTAL}
    return build_probe(definition)


def _rows() -> list[Any]:
    return [
        pytest.param(profile, case, id=f"{profile.name}-{case.name}")
        for profile in server_profiles()
        for case in CASES
        if case.applies(profile.family) and (profile.tls or not case.tls)
    ]


@pytest.fixture(scope="module", autouse=True)
def _payloads() -> None:
    """Build the bombs and the garbage before any case measures its CPU."""
    bomb(16 + zlib.MAX_WBITS)
    bomb(zlib.MAX_WBITS)
    garbage()


@pytest.mark.parametrize(("profile", "case"), _rows())
async def test_hostile_server(profile: KindProfile, case: Case) -> None:
    connector = GuardedConnector()
    ctx = make_context(connector=connector)
    before = Usage.now()
    async with serve(case, profile.family) as port:
        probe = _probe(profile, port, case.tls)
        # One-time set-up (an SSL context, a library import) runs before a check's clock starts,
        # by ProbeBase.prepare's contract: do it first, so that the window timed here is the
        # one the deadline bounds (on a loaded machine, building an SSL context can take 0.2 s).
        prepare = getattr(probe, "prepare", None)
        if prepare is not None:
            prepare(ctx)
        started = time.monotonic()
        result: Result = await probe.check(ctx)
        elapsed = time.monotonic() - started
    after = await before.settled()
    cpu = after.cpu - before.cpu
    growth = after.rss - before.rss
    MEASURED.append((f"{profile.name}-{case.name}", elapsed - TOTAL, growth, cpu))

    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert result.error.kind is not ErrorKind.INTERNAL, result.summary()
    assert result.error.kind in case.expected, result.summary()
    assert elapsed <= TOTAL + GRACE, f"ended {elapsed - TOTAL:.3f} s past its deadline"
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert after.fds <= before.fds, f"file descriptors left open: {after.fds - before.fds}"
    assert after.tasks <= before.tasks, f"tasks left running: {after.tasks - before.tasks}"
    assert cpu < CPU_BOUND, f"{cpu:.2f} s of CPU"
    assert connector.refused == []


@pytest.mark.parametrize("profile", server_profiles(), ids=lambda p: p.name)
async def test_each_kind_is_up_against_the_well_behaved_server(profile: KindProfile) -> None:
    """The control row: the same definitions pass when the server behaves, so every DOWN above
    is the hostile server's doing."""
    server = await good_server(profile.family).start()
    try:
        result = await _probe(profile, server.port, False).check(make_context())
    finally:
        await server.stop()
    assert result.status is Status.UP, result.summary()


@pytest.mark.parametrize("location", [b"http://[::1/", b"http://[:]/", b"http://127.0.0.1:[/"])
async def test_a_redirect_to_a_url_with_broken_brackets_is_a_protocol_error(
    location: bytes,
) -> None:
    async def redirect(reader: Any, writer: Any) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(http_response(b"", "302 Found", b"Location: " + location + b"\r\n"))

    server = await TcpServer(redirect).start()
    try:
        url = f"http://127.0.0.1:{server.port}/"
        result = await build_probe({"kind": "http", "url": url}).check(make_context())
    finally:
        await server.stop()
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
