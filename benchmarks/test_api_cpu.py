"""CPU per HTTP request of a multi-step ``api`` check, against the same requests made otherwise.

What it measures, against a local nginx (``worker_processes 1``, a 3-byte ``200``, started the
way ``nox -s peers`` starts it), each request on a fresh connection, one at a time on one loop:

* ``api``: a ``MultiStepProbe`` of five GET steps (variables extracted and interpolated: the
  status code of each step goes into the next step's query), CPU per step;
* ``http``: five ``HttpProbe(url).check()`` calls, CPU per check;
* ``httpx``: a plain ``httpx.AsyncClient`` (its own transport, keep-alive off so that every
  request connects, as the others do), CPU per request;
* ``httpx+probekit``: ``httpx.AsyncClient(transport=probekit.httpx.Transport())``, CPU per
  request.

Reported: microseconds of process CPU per request, and each against ``http``. Needs nginx
(Debian: ``nginx-light``) and httpx; skipped with that reason otherwise.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from probekit import HttpProbe, MultiStepProbe, Status
from probekit.probes.api import Extract, Step

ROUNDS = 200  # transactions of five requests each
STEPS = 5


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


def _cpu_per_request(run_round: Callable[[], Awaitable[None]]) -> float:
    async def main() -> float:
        await run_round()  # warm up: SSL contexts, imports, the resolver
        start = time.process_time()
        for _ in range(ROUNDS):
            await run_round()
        return (time.process_time() - start) / (ROUNDS * STEPS)

    return asyncio.run(main())


def test_cpu_per_request(nginx: Any) -> None:
    httpx = pytest.importorskip("httpx")
    from probekit.httpx import Transport

    base = f"http://127.0.0.1:{nginx.http_port}"
    steps = [Step("s0", f"{base}/", extract=(Extract("code", "status"),))]
    steps += [
        Step(f"s{i}", f"{base}/?previous={{{{code}}}}", extract=(Extract("code", "status"),))
        for i in range(1, STEPS)
    ]
    api = MultiStepProbe(steps=steps)
    probes = [HttpProbe(f"{base}/?previous=200") for _ in range(STEPS)]

    async def api_round() -> None:
        result = await api.check()
        assert result.status is Status.UP, result.summary()

    async def http_round() -> None:
        for probe in probes:
            result = await probe.check()
            assert result.status is Status.UP, result.summary()

    def httpx_round(transport: Any) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            async with httpx.AsyncClient(transport=transport) as client:
                for _ in range(STEPS):
                    response = await client.get(f"{base}/?previous=200")
                    assert response.status_code == 200

        return run

    plain = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    figures = {
        "api": _cpu_per_request(api_round),
        "http": _cpu_per_request(http_round),
        "httpx": _cpu_per_request(httpx_round(plain)),
        "httpx+probekit": _cpu_per_request(httpx_round(Transport())),
    }
    print()
    for name, seconds in figures.items():
        print(
            f"{name:>15}: {seconds * 1e6:7.1f} us CPU per request "
            f"({seconds / figures['http']:.2f} x http)"
        )
    assert all(seconds > 0 for seconds in figures.values())
