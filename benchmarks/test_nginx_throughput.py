"""Runner throughput for HTTP, HTTPS and TCP checks against a local nginx, on both event loops.

What it measures: ``Runner(max_concurrency=64).run_all()`` over N identical probes
(``HttpProbe(url)``, ``HttpProbe(https_url, tls=TlsOptions(ca_file=...))`` or
``TcpProbe(host, port)``), a fresh connection (and a full TLS handshake) each, against an nginx
on loopback (``worker_processes 1``, a 3-byte ``200``), started here the way ``nox -s peers``
starts it. Reported: probes per second and the prober's CPU per probe.

Against what: in the same run, on the same loop, the floor for Python: a bare
``asyncio.Protocol`` that connects, (for HTTPS) does the TLS handshake with the same SSL
context, sends the same GET and waits for the response to end, with the same concurrency, and
no result, timeline, policy or parser. ``vs_floor`` (probekit's CPU per probe divided by the
floor's) is what probekit's own work costs; it does not move much with the machine.

Needs nginx (Debian: ``nginx-light``); skipped with that reason when it is not installed.
The side-by-side with blackbox_exporter is ``nox -s peers`` (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from probekit import HttpProbe, Runner, TcpProbe, TlsOptions

CONCURRENCY = 64
COUNTS = {"http": 3000, "https": 600, "tcp": 3000}
_GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def nginx() -> Iterator[Any]:
    nginx_bin = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if nginx_bin is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    import peers

    with tempfile.TemporaryDirectory(prefix="probekit-bench-") as tmp:
        target = peers.Peers({"nginx": nginx_bin}, Path(tmp))
        try:
            target._certs()
            target._start_nginx()
            yield target
        finally:
            target.stop()


def _loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


def _run(loop_name: str, coro: Coroutine[Any, Any, float]) -> float:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


class _Floor(asyncio.Protocol):
    """Connect, send the GET, wait for the end of the response: nothing else."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data.endswith(b"ok\n") and not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _floor_one(kind: str, port: int, ctx: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_Floor, "127.0.0.1", port)
    try:
        if kind == "tcp":
            return
        if ctx is not None:
            upgraded = await loop.start_tls(transport, proto, ctx, server_hostname="127.0.0.1")
            assert upgraded is not None
            transport = upgraded
        transport.write(_GET)
        await proto.done
    finally:
        transport.abort()


def _measure(kind: str, loop_name: str, nginx: Any, floor: bool) -> dict[str, float]:
    n = COUNTS[kind]
    port = nginx.https_port if kind == "https" else nginx.http_port
    ca = str(nginx.ca_file)

    async def probekit_run() -> float:
        if kind == "tcp":
            probe: Any = TcpProbe("127.0.0.1", port)
        elif kind == "https":
            probe = HttpProbe(f"https://127.0.0.1:{port}/", tls=TlsOptions(ca_file=ca))
        else:
            probe = HttpProbe(f"http://127.0.0.1:{port}/")
        async with Runner(max_concurrency=CONCURRENCY) as runner:
            await runner.run_all([probe] * 50)  # warm
            cpu0 = time.process_time()
            results = await runner.run_all([probe] * n)
            cpu = time.process_time() - cpu0
        bad = [r.summary() for r in results if not r.ok]
        assert not bad, bad[:3]
        return cpu

    async def floor_run() -> float:
        ctx = None
        if kind == "https":
            ctx = ssl.create_default_context(cafile=ca)
            ctx.set_alpn_protocols(["http/1.1"])
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with slots:
                await _floor_one(kind, port, ctx)

        await asyncio.gather(*(one() for _ in range(50)))
        cpu0 = time.process_time()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.process_time() - cpu0

    began = time.perf_counter()
    cpu = _run(loop_name, floor_run() if floor else probekit_run())
    seconds = time.perf_counter() - began
    return {"probes_per_s": n / seconds, "cpu_us_per_probe": 1e6 * cpu / n}


@pytest.mark.parametrize("loop_name", _loops())
@pytest.mark.parametrize("kind", ["http", "https", "tcp"])
def test_runner_against_nginx(benchmark: Any, nginx: Any, kind: str, loop_name: str) -> None:
    figures: dict[str, Any] = {}

    def run() -> None:
        figures["probekit"] = _measure(kind, loop_name, nginx, floor=False)

    benchmark.pedantic(run, rounds=1, iterations=1)
    figures["floor"] = _measure(kind, loop_name, nginx, floor=True)
    figures["vs_floor"] = round(
        figures["probekit"]["cpu_us_per_probe"] / figures["floor"]["cpu_us_per_probe"], 2
    )
    benchmark.extra_info.update(figures)
    print(
        f"\n{kind} on {loop_name}: probekit {figures['probekit']['probes_per_s']:,.0f}/s, "
        f"{figures['probekit']['cpu_us_per_probe']:.0f} us CPU; floor "
        f"{figures['floor']['probes_per_s']:,.0f}/s, {figures['floor']['cpu_us_per_probe']:.0f} "
        f"us CPU; CPU vs floor {figures['vs_floor']}x"
    )
