"""probekit.httpx.Transport: httpx's client behaviours over probekit's dial path (loopback only).

A slice of what httpx's own client tests check for a transport (redirects followed by the client,
streaming, timeouts mapped to httpx's exceptions, cookies, headers, request bodies), plus what
the transport adds: the egress policy on every hop, the phase timeline and the peer address.
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest

from probekit import EgressPolicy, Phase, ProbeContext, TlsInfo, TlsOptions
from probekit.httpx import ADDRESS, PHASES, TLS, EgressDenied, Transport
from servers import GuardedConnector, HttpServer, Request, closed_port, make_context, response


async def _api(req: Request, writer: asyncio.StreamWriter) -> None:
    path = req.path
    if path == "/login":
        writer.write(response(200, b"in", {"Set-Cookie": "sid=abc123; Path=/"}))
    elif path == "/whoami":
        writer.write(response(200, req.headers.get("cookie", "").encode()))
    elif path == "/set-and-go":
        writer.write(response(302, b"", {"Set-Cookie": "hop=1; Path=/", "Location": "/whoami"}))
    elif path == "/garbage":
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
    elif path == "/meta":
        writer.write(response(302, b"", {"Location": "http://169.254.169.254/latest/meta-data"}))
    elif path == "/meta-name":
        writer.write(response(302, b"", {"Location": "http://meta.test/latest/meta-data"}))
    elif path == "/chunks":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"one ", b"two ", b"three"):
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
    else:
        from servers import _default_handler

        await _default_handler(req, writer)


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    async with HttpServer(handler=_api) as srv:
        yield srv


@pytest.fixture
def client(ctx: ProbeContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Transport(context=ctx))


async def test_get_carries_phases_and_address(
    server: HttpServer, client: httpx.AsyncClient
) -> None:
    async with client:
        resp = await client.get(server.url("/ok"))
    assert resp.status_code == 200
    assert resp.text == "hello probekit"
    assert resp.headers["x-test"] == "yes"
    assert resp.http_version == "HTTP/1.1"
    assert resp.reason_phrase == "OK"
    names = [p.name for p in resp.extensions[PHASES]]
    assert names == ["resolve", "connect", "send", "processing", "transfer"]
    assert all(isinstance(p, Phase) and p.duration >= 0 for p in resp.extensions[PHASES])
    assert resp.extensions[ADDRESS] == f"127.0.0.1:{server.port}"
    assert resp.extensions[TLS] is None
    req = server.requests[0]
    assert req.headers["connection"] == "close"
    assert req.headers["host"] == f"127.0.0.1:{server.port}"


async def test_redirects_follow_through_the_client(
    server: HttpServer, client: httpx.AsyncClient, connector: GuardedConnector
) -> None:
    async with client:
        resp = await client.get(server.url("/chain/3"), follow_redirects=True)
        assert resp.status_code == 200 and resp.text == "hello probekit"
        assert [r.status_code for r in resp.history] == [302, 302, 302, 302]
        assert str(resp.url) == server.url("/ok")
        # Without follow_redirects the client hands back the 302 itself.
        once = await client.get(server.url("/chain/1"))
        assert once.status_code == 302 and once.headers["location"] == "/chain/0"
        assert once.next_request is not None
    assert server.connections == 6  # one connection per hop: each went through the dial path
    assert len(connector.dialled) == 6


async def test_too_many_redirects(server: HttpServer, ctx: ProbeContext) -> None:
    async with httpx.AsyncClient(transport=Transport(context=ctx), max_redirects=2) as client:
        with pytest.raises(httpx.TooManyRedirects):
            await client.get(server.url("/chain/5"), follow_redirects=True)


async def test_redirect_to_metadata_address_refused_before_any_packet(
    server: HttpServer, client: httpx.AsyncClient, connector: GuardedConnector
) -> None:
    async with client:
        with pytest.raises(EgressDenied) as info:
            await client.get(server.url("/meta"), follow_redirects=True)
    assert isinstance(info.value, httpx.ConnectError)
    assert "169.254.169.254" in str(info.value)
    assert info.value.request.url.host == "169.254.169.254"
    assert connector.refused == []  # the guard never even saw it: the policy refused first
    assert connector.dialled == [("127.0.0.1", server.port)]


async def test_redirect_to_a_name_resolving_to_metadata_refused(server: HttpServer) -> None:
    guard = GuardedConnector()
    ctx = make_context(connector=guard, hosts={"meta.test": ["169.254.169.254"]})
    async with httpx.AsyncClient(transport=Transport(context=ctx)) as client:
        with pytest.raises(EgressDenied):
            await client.get(server.url("/meta-name"), follow_redirects=True)
    assert guard.refused == []
    assert guard.dialled == [("127.0.0.1", server.port)]


async def test_policy_denies_the_first_request_too(server: HttpServer) -> None:
    guard = GuardedConnector()
    ctx = make_context(connector=guard, policy=EgressPolicy(deny=["127.0.0.0/8"]))
    async with httpx.AsyncClient(transport=Transport(context=ctx)) as client:
        with pytest.raises(EgressDenied):
            await client.get(server.url("/ok"))
    assert guard.dialled == [] and server.connections == 0


async def test_streaming_body_is_bounded_in_memory(
    server: HttpServer, client: httpx.AsyncClient
) -> None:
    """/infinite never ends; reading 8 MiB of it must not hold 8 MiB."""
    gc.collect()
    tracemalloc.start()
    try:
        seen = 0
        async with client, client.stream("GET", server.url("/infinite")) as resp:
            assert resp.status_code == 200
            async for chunk in resp.aiter_bytes():
                seen += len(chunk)
                if seen >= 8 * 1024 * 1024:
                    break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen >= 8 * 1024 * 1024
    assert peak < 2 * 1024 * 1024, peak
    assert [p.name for p in resp.extensions[PHASES]][-1] == "transfer"


async def test_chunked_body_streams_in_parts(server: HttpServer, client: httpx.AsyncClient) -> None:
    async with client, client.stream("GET", server.url("/chunks")) as resp:
        parts = [c async for c in resp.aiter_raw()]
    assert b"".join(parts) == b"one two three"


async def test_body_cap_is_a_protocol_error(server: HttpServer, ctx: ProbeContext) -> None:
    transport = Transport(context=ctx, max_body_bytes=1000)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="max_body_bytes"):
            await client.get(server.url("/infinite"))
        small = await client.get(server.url("/ok"))
        assert small.text == "hello probekit"


async def test_read_timeout_waiting_for_the_response(
    server: HttpServer, client: httpx.AsyncClient
) -> None:
    async with client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url("/silent"), timeout=httpx.Timeout(0.2))


async def test_read_timeout_during_the_body(server: HttpServer, client: httpx.AsyncClient) -> None:
    async with client, client.stream("GET", server.url("/slow-body"), timeout=0.2) as resp:
        assert resp.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            await resp.aread()


class _SlowResolver:
    async def resolve(self, host: str, family: str = "any") -> list[object]:
        await asyncio.sleep(3600)
        return []


async def test_connect_timeout_in_resolve() -> None:
    from probekit import Dialer

    ctx = ProbeContext(dialer=Dialer(resolver=_SlowResolver(), connector=GuardedConnector()))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=Transport(context=ctx)) as client:
        with pytest.raises(httpx.ConnectTimeout):
            await client.get("http://slow.test/", timeout=httpx.Timeout(0.2))


async def test_connection_refused_is_connect_error(client: httpx.AsyncClient) -> None:
    async with client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"http://127.0.0.1:{closed_port()}/")
    assert not isinstance(info.value, EgressDenied)


async def test_malformed_response_is_remote_protocol_error(
    server: HttpServer, client: httpx.AsyncClient
) -> None:
    async with client:
        with pytest.raises(httpx.RemoteProtocolError, match="status line"):
            await client.get(server.url("/garbage"))


async def test_cookies_persist_in_the_client_jar(
    server: HttpServer, client: httpx.AsyncClient
) -> None:
    async with client:
        await client.get(server.url("/login"))
        assert client.cookies["sid"] == "abc123"
        resp = await client.get(server.url("/whoami"))
        assert resp.text == "sid=abc123"
        # A cookie set on a redirect response is sent on the next hop.
        hop = await client.get(server.url("/set-and-go"), follow_redirects=True)
        assert "hop=1" in hop.text and "sid=abc123" in hop.text


async def test_headers_sent_and_hop_by_hop_replaced(
    server: HttpServer, client: httpx.AsyncClient
) -> None:
    async with client:
        resp = await client.get(
            server.url("/echo"),
            headers={"X-Trace": "t-1", "Connection": "keep-alive", "User-Agent": "me/1"},
        )
    seen = resp.json()["headers"]
    assert seen["x-trace"] == "t-1"
    assert seen["user-agent"] == "me/1"
    assert seen["connection"] == "close"
    assert seen["accept-encoding"]  # the client's own headers pass through


@pytest.mark.parametrize(
    ("kwargs", "body", "ctype"),
    [
        ({"json": {"a": [1, "ü"]}}, json.dumps({"a": [1, "ü"]}), "application/json"),
        ({"data": {"x": "1 2", "y": "&"}}, "x=1+2&y=%26", "application/x-www-form-urlencoded"),
        ({"content": b"raw bytes"}, "raw bytes", None),
    ],
)
async def test_post_bodies(
    server: HttpServer,
    client: httpx.AsyncClient,
    kwargs: dict[str, object],
    body: str,
    ctype: str | None,
) -> None:
    async with client:
        resp = await client.post(server.url("/echo"), **kwargs)  # type: ignore[arg-type]
    echo = resp.json()
    assert echo["method"] == "POST"
    if ctype == "application/json":
        assert json.loads(echo["body"]) == json.loads(body)
    else:
        assert echo["body"] == body
    if ctype is not None:
        assert echo["headers"]["content-type"] == ctype
    assert echo["headers"]["content-length"] == str(len(echo["body"].encode()))


async def test_chunked_request_body_is_framed(ctx: ProbeContext) -> None:
    received: list[bytes] = []

    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        received.append(head)
        received.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(response(200, b"ok"))

    from servers import TcpServer

    async def parts() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"

    async with TcpServer(raw) as srv, httpx.AsyncClient(transport=Transport(context=ctx)) as c:
        resp = await c.post(f"http://127.0.0.1:{srv.port}/up", content=parts())
    assert resp.text == "ok"
    assert b"transfer-encoding: chunked" in received[0].lower()
    assert received[1] == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"


async def test_gzip_is_decoded_by_httpx(server: HttpServer, client: httpx.AsyncClient) -> None:
    async with client:
        resp = await client.get(server.url("/gzip"))
    assert resp.text == "compressed hello"


async def test_head_has_no_body(server: HttpServer, client: httpx.AsyncClient) -> None:
    async with client:
        resp = await client.head(server.url("/ok"))
    assert resp.status_code == 200 and resp.content == b""


async def test_https_uses_tls_options(https_server: HttpServer, ca_pem: str) -> None:
    ctx = make_context()
    transport = Transport(context=ctx, tls=TlsOptions(ca_data=ca_pem))
    async with httpx.AsyncClient(transport=transport) as client:
        resp = await client.get(https_server.url("/ok", host="localhost"))
    assert resp.status_code == 200
    info = resp.extensions[TLS]
    assert isinstance(info, TlsInfo) and info.alpn in (None, "http/1.1")
    assert "tls" in [p.name for p in resp.extensions[PHASES]]


async def test_https_untrusted_certificate_is_connect_error(https_server: HttpServer) -> None:
    async with httpx.AsyncClient(transport=Transport(context=make_context())) as client:
        with pytest.raises(httpx.ConnectError, match="certificate"):
            await client.get(https_server.url("/ok", host="localhost"))


async def test_unsupported_scheme(client: httpx.AsyncClient) -> None:
    async with client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/x")


def test_request_head_refuses_what_would_split_it() -> None:
    from probekit.httpx import _request_head

    req = httpx.Request("GET", "http://127.0.0.1/x")
    req.headers["X-Evil"] = "a"
    req.headers._list[-1] = (b"X-Evil", b"x-evil", b"a\r\nInjected: 1")  # past httpx's checks
    with pytest.raises(httpx.LocalProtocolError, match="control character"):
        _request_head(req)
    ok = httpx.Request("GET", "http://127.0.0.1/a%20b?q=1")
    head = _request_head(ok)
    assert head.startswith(b"GET /a%20b?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert head.endswith(b"Connection: close\r\n\r\n")


def test_import_probekit_does_not_import_httpx() -> None:
    import subprocess
    import sys

    code = "import sys, probekit; probekit.HttpProbe; sys.exit('httpx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


async def test_a_compression_bomb_stops_at_the_cap(server: HttpServer, ctx: ProbeContext) -> None:
    """64 MiB of zeros in 64 KiB of gzip: the decoded size counts against max_body_bytes
    before httpx decodes it."""
    gc.collect()
    tracemalloc.start()
    try:
        transport = Transport(context=ctx, max_body_bytes=1024 * 1024)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="decoded response body"):
                await client.get(server.url("/gzip-bomb"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak


async def test_a_broken_connector_is_a_bug_not_a_connect_error(server: HttpServer) -> None:
    from probekit import Dialer, StaticResolver

    async def broken(ip: str, port: int, source: object) -> object:
        raise RuntimeError("the connector broke")

    ctx = ProbeContext(dialer=Dialer(resolver=StaticResolver({}), connector=broken))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=Transport(context=ctx)) as client:
        with pytest.raises(RuntimeError, match="the connector broke"):
            await client.get(server.url("/ok"))


async def test_auth_flows_resend_through_the_transport(ctx: ProbeContext) -> None:
    """httpx's auth flows (a digest challenge answered by a second request) go through the
    transport like any request."""
    seen: list[str] = []

    async def handler(req: Request, writer: asyncio.StreamWriter) -> None:
        auth = req.headers.get("authorization", "")
        seen.append(auth)
        if not auth.startswith(("Digest ", "Basic ")):
            challenge = 'Digest realm="probekit", nonce="abc123", qop="auth", algorithm=MD5'
            writer.write(response(401, b"", {"WWW-Authenticate": challenge}))
        else:
            writer.write(response(200, b"welcome"))

    transport = Transport(context=ctx)
    async with HttpServer(handler=handler) as srv, httpx.AsyncClient(transport=transport) as c:
        digest = await c.get(srv.url("/a?x=1"), auth=httpx.DigestAuth("u", "pw"))
        basic = await c.get(srv.url("/b"), auth=("u", "pw"), params={"q": "a b"})
    assert digest.status_code == 200 and digest.text == "welcome"
    assert seen[0] == "" and seen[1].startswith('Digest username="u", realm="probekit"')
    assert basic.status_code == 200 and seen[2] == "Basic dTpwdw=="
    assert srv.requests[2].target == "/b?q=a+b"
    assert [len(r.history) for r in (digest, basic)] == [1, 0]
