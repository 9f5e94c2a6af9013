"""In-process servers and test doubles for probekit's tests (loopback only)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import gzip
import ipaddress
import json
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

from probekit import Connection, Dialer, EgressPolicy, ProbeContext, StaticResolver, tcp_connect
from probekit._dial import open_socket


class NonLoopbackDial(AssertionError):
    """Raised by the guarded connector: a test tried to dial outside loopback."""


class GuardedConnector:
    """A connector that refuses any non-loopback address before a socket exists, and logs dials.

    Tests that prove an address is never dialled use it, so a policy bug cannot send a packet.
    """

    def __init__(self) -> None:
        self.dialled: list[tuple[str, int]] = []
        self.refused: list[tuple[str, int]] = []

    async def __call__(self, ip: str, port: int, source: tuple[str, int] | None) -> Connection:
        if not ipaddress.ip_address(ip).is_loopback:
            self.refused.append((ip, port))
            raise NonLoopbackDial(f"test tried to dial {ip}:{port}")
        self.dialled.append((ip, port))
        return await tcp_connect(ip, port, source)

    async def socket(
        self, ip: str, port: int, source: tuple[str, int] | None, protocol: str
    ) -> socket.socket:
        """The same guard for raw sockets (``Attempt.open_socket`` and ``Attempt.datagram``)."""
        if not ipaddress.ip_address(ip).is_loopback:
            self.refused.append((ip, port))
            raise NonLoopbackDial(f"test tried to open a {protocol} socket to {ip}:{port}")
        self.dialled.append((ip, port))
        return await open_socket(ip, port, source, protocol)


def make_context(
    *,
    policy: EgressPolicy | None = None,
    hosts: dict[str, list[str]] | None = None,
    connector: GuardedConnector | None = None,
) -> ProbeContext:
    answers = {"localhost": ["127.0.0.1"], "test.local": ["127.0.0.1"]}
    answers.update(hosts or {})
    guard = connector or GuardedConnector()
    return ProbeContext(
        dialer=Dialer(
            policy=policy if policy is not None else EgressPolicy(),
            resolver=StaticResolver(answers),
            connector=guard,
            socket_connector=guard.socket,
        )
    )


Handler = Callable[["Request", asyncio.StreamWriter], Awaitable[None]]


class Request:
    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    reason = {200: "OK", 301: "Moved", 302: "Found", 500: "Internal Server Error"}.get(status, "X")
    lines = [f"HTTP/1.1 {status} {reason}"]
    hdrs = {"Content-Length": str(len(body)), "Connection": "close"}
    hdrs.update(headers or {})
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@functools.cache
def _gzip_bomb() -> bytes:
    """64 MiB of zeros in about 64 KiB of gzip."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1024 * 1024)
    return b"".join(packer.compress(block) for _ in range(64)) + packer.flush()


async def _default_handler(req: Request, writer: asyncio.StreamWriter) -> None:
    path = req.path
    if path == "/" or path == "/ok":
        writer.write(
            response(200, b"hello probekit", {"Content-Type": "text/plain", "X-Test": "yes"})
        )
    elif path.startswith("/status/"):
        writer.write(response(int(path.rsplit("/", 1)[1]), b"status page"))
    elif path == "/json":
        doc = {"status": "ok", "items": [1, 2, 3], "db": {"latency_ms": 12, "name": "main"}}
        writer.write(response(200, json.dumps(doc).encode(), {"Content-Type": "application/json"}))
    elif path == "/redirect":
        writer.write(response(302, b"", {"Location": req.query.removeprefix("to=")}))
    elif path.startswith("/chain/"):
        n = int(path.rsplit("/", 1)[1])
        location = f"/chain/{n - 1}" if n > 0 else "/ok"
        writer.write(response(302, b"", {"Location": location}))
    elif path == "/echo":
        doc = {
            "method": req.method,
            "target": req.target,
            "headers": req.headers,
            "body": req.body.decode(),
        }
        writer.write(response(200, json.dumps(doc).encode(), {"Content-Type": "application/json"}))
    elif path == "/silent":
        await asyncio.sleep(3600)
    elif path == "/infinite":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        while True:
            writer.write(frame)
            await writer.drain()
    elif path == "/gzip-bomb":
        writer.write(response(200, _gzip_bomb(), {"Content-Encoding": "gzip"}))
    elif path == "/gzip":
        writer.write(
            response(200, gzip.compress(b"compressed hello"), {"Content-Encoding": "gzip"})
        )
    elif path == "/slow-body":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(3600)
    else:
        writer.write(response(404, b"not found"))


class LoopbackServer(abc.ABC):
    """Base of the in-process test servers: listens on ``host`` (loopback), counts connections,
    owns one task per connection and cancels them on stop. Subclasses implement ``handle``."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.ssl_context = ssl_context
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @abc.abstractmethod
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (the base closes it afterwards)."""

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()


class HttpServer(LoopbackServer):
    """A small HTTP/1.1 server on 127.0.0.1 (optionally TLS) that records requests."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        handler: Handler | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(ssl_context, host)
        self.handler = handler or _default_handler
        self.requests: list[Request] = []

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        req = Request(method, target, headers, body)
        self.requests.append(req)
        await self.handler(req, writer)


@contextlib.asynccontextmanager
async def serving(server: HttpServer) -> AsyncIterator[HttpServer]:
    async with server:
        yield server


class TcpServer(LoopbackServer):
    """A raw TCP server on 127.0.0.1 running ``handler(reader, writer)`` per connection."""

    def __init__(
        self,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context)
        self.handler = handler

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.handler(reader, writer)


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
