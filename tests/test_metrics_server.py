"""The /metrics and /ready endpoint (probekit._metrics_server), against real loopback sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import logging
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probekit import Result, Status, prometheus_text
from probekit._metrics_server import (
    MAX_REQUEST_BYTES,
    REQUEST_TIMEOUT,
    MetricsServer,
    serve_metrics,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "# HELP x_up An example.\n# TYPE x_up gauge\nx_up 1\n"


async def read_or_reset(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


class Reply:
    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}

    @property
    def text(self) -> str:
        return self.body.decode()


async def request(
    server: MetricsServer, path: str = "/metrics", method: str = "GET", **headers: str
) -> Reply:
    reader, writer = await asyncio.open_connection(*server.address)
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        async with asyncio.timeout(5):
            return Reply(await reader.read())
    finally:
        writer.close()


async def test_metrics_is_what_render_returns_with_the_exposition_content_type() -> None:
    calls = []

    def render() -> str:
        calls.append(1)
        return TEXT

    async with await serve_metrics("127.0.0.1", 0, render) as server:
        assert server.address[0] == "127.0.0.1"
        assert server.address[1] > 0
        assert server.url == f"http://127.0.0.1:{server.address[1]}/metrics"
        reply = await request(server)
        query = await request(server, "/metrics?name[]=x_up")
    assert reply.status == 200
    assert reply.headers["content-type"] == CONTENT_TYPE
    assert reply.headers["content-length"] == str(len(TEXT))
    assert reply.headers["connection"] == "close"
    assert reply.text == TEXT
    assert query.text == TEXT
    assert len(calls) == 2  # rendered per scrape, not cached


async def test_metrics_serves_prometheus_text_that_parses() -> None:
    now = dt.datetime.now(dt.UTC)
    latest = {
        "web": Result(
            kind="http",
            target="http://a.test/",
            status=Status.UP,
            started_at=now,
            duration=0.1,
            metrics={"status_code": 204},
        ),
    }
    async with await serve_metrics("127.0.0.1", 0, lambda: prometheus_text(latest)) as server:
        first = await request(server)
        latest["db"] = Result(
            kind="tcp",
            target="db:5432",
            status=Status.DOWN,
            started_at=now,
            duration=0.2,
            metrics={"bytes_received": 0},
        )
        second = await request(server)
    assert "probekit_tcp_bytes_received" not in first.text
    families = {f.name: f for f in text_string_to_metric_families(second.text)}
    assert families["probekit_http_status_code"].samples[0].value == 204
    assert families["probekit_tcp_bytes_received"].samples[0].labels["monitor"] == "db"
    assert {s.labels["monitor"]: s.value for s in families["probekit_up"].samples} == {
        "db": 0,
        "web": 1,
    }


async def test_metrics_are_gzipped_when_the_client_accepts_it() -> None:
    big = TEXT * 5000
    async with await serve_metrics("127.0.0.1", 0, lambda: big) as server:
        zipped = await request(server, **{"Accept-Encoding": "deflate, gzip;q=0.9"})
        plain = await request(server, **{"Accept-Encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["content-type"] == CONTENT_TYPE
    assert int(zipped.headers["content-length"]) == len(zipped.body) < len(big) // 10
    assert gzip.decompress(zipped.body).decode() == big
    assert "content-encoding" not in plain.headers
    assert plain.text == big


async def test_ready_says_200_or_503_as_the_callback_says() -> None:
    state = {"ready": False}
    async with await serve_metrics(
        "127.0.0.1", 0, lambda: TEXT, ready=lambda: state["ready"]
    ) as server:
        before = await request(server, "/ready")
        state["ready"] = True
        after = await request(server, "/ready")
        head = await request(server, "/ready", "HEAD")
    assert (before.status, before.text) == (503, "not ready\n")
    assert (after.status, after.text) == (200, "ready\n")
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "6")


async def test_head_has_the_headers_and_no_body() -> None:
    async with await serve_metrics("127.0.0.1", 0, lambda: TEXT) as server:
        reply = await request(server, method="HEAD")
    assert reply.status == 200
    assert reply.headers["content-length"] == str(len(TEXT))
    assert reply.body == b""


async def test_other_paths_are_404_and_other_methods_405() -> None:
    async with await serve_metrics("127.0.0.1", 0, lambda: TEXT) as bare:
        no_ready = await request(bare, "/ready")
        other = await request(bare, "/metrics/x")
        root = await request(bare, "/")
        post = await request(bare, "/metrics", "POST")
        bad = await request(bare, "/metrics", "GET /metrics")  # four words in the request line
    async with await serve_metrics("127.0.0.1", 0, lambda: TEXT, ready=lambda: True) as server:
        delete = await request(server, "/ready", "DELETE")
        post_elsewhere = await request(server, "/nothing", "POST")
    assert [r.status for r in (no_ready, other, root, post_elsewhere)] == [404] * 4
    assert post.status == delete.status == 405
    assert post.headers["allow"] == "GET, HEAD"
    assert bad.status == 400


async def test_a_failing_render_is_a_500_and_the_server_stays_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fail = [True]

    def render() -> str:
        if fail[0]:
            raise RuntimeError("boom")
        return TEXT

    async with await serve_metrics("127.0.0.1", 0, render) as server:
        with caplog.at_level(logging.ERROR, logger="probekit.metrics"):
            broken = await request(server)
        fail[0] = False
        fine = await request(server)
    assert broken.status == 500
    assert "boom" not in broken.text
    assert any("boom" in (r.exc_text or "") for r in caplog.records)
    assert (fine.status, fine.text) == (200, TEXT)


def test_the_limits_are_the_checkpoints() -> None:
    assert MAX_REQUEST_BYTES == 8192
    assert REQUEST_TIMEOUT == 5.0


async def test_an_oversized_request_gets_431_and_is_cut_off() -> None:
    async with await serve_metrics("127.0.0.1", 0, lambda: TEXT) as server:
        reader, writer = await asyncio.open_connection(*server.address)
        started = time.monotonic()
        writer.write(b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * (2 * MAX_REQUEST_BYTES))
        async with asyncio.timeout(5):
            reply = Reply(await reader.read())
        writer.close()
    assert reply.status == 431
    assert time.monotonic() - started < 2


async def test_a_slow_request_gets_408_and_is_cut_off() -> None:
    async with await serve_metrics("127.0.0.1", 0, lambda: TEXT, request_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection(*server.address)
        started = time.monotonic()
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        async with asyncio.timeout(5):
            reply = Reply(await reader.read())
        elapsed = time.monotonic() - started
        writer.close()
    assert reply.status == 408
    assert 0.25 < elapsed < 2


async def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    async with await serve_metrics("127.0.0.1", 0, lambda: TEXT, max_connections=1) as server:
        _, idle = await asyncio.open_connection(*server.address)
        await asyncio.sleep(0.05)  # accepted and waiting for its request
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(2):
            assert await read_or_reset(reader) == b""
        writer.close()
        idle.close()
        await asyncio.sleep(0.05)
        assert (await request(server)).status == 200  # a slot is free again


async def test_close_ends_open_connections_and_releases_the_port() -> None:
    server = await serve_metrics("127.0.0.1", 0, lambda: TEXT)
    host, port = server.address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")  # a request in progress
    await asyncio.sleep(0.05)
    started = time.monotonic()
    async with asyncio.timeout(5):
        await server.close()
        leftover = await reader.read()
    assert time.monotonic() - started < 1
    assert b"200" not in leftover
    writer.close()
    await server.close()  # twice is fine
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, port)
    async with await serve_metrics(host, port, lambda: "again\n") as again:
        assert again.address == (host, port)
        assert (await request(again)).text == "again\n"


async def test_a_busy_port_is_an_oserror() -> None:
    async with await serve_metrics("127.0.0.1", 0, lambda: TEXT) as server:
        with pytest.raises(OSError, match="address already in use"):
            await serve_metrics("127.0.0.1", server.address[1], lambda: TEXT)


def test_import_probekit_does_not_import_prometheus_client() -> None:
    code = (
        "import sys, probekit, probekit.cli, probekit.checkpoint, probekit._metrics_server\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "probekit.prometheus_text({})\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
