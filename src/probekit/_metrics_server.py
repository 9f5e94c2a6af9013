"""The one ``/metrics`` (and ``/ready``) HTTP endpoint: ``probekit run --metrics-port`` and a
checkpoint's ``metrics_port`` both serve through :func:`serve_metrics`.

The design, and why:

- **An asyncio server, not prometheus_client's.** ``prometheus_client`` serves through
  ``http.server``/``wsgiref`` in a thread per request: no bound on request size or time, no
  bound on threads, no ``/ready``, and the exposition would be rendered in that thread while the
  event loop keeps changing the results it is rendered from. Its ASGI app needs an ASGI server
  probekit does not ship. So the socket side is a small asyncio server: it reads one request
  head of at most ``max_request_bytes`` within ``request_timeout`` seconds, answers it and
  closes the connection, holds at most ``max_connections`` connections, and calls ``render``
  and ``ready`` on the event loop, where the caller's state lives.
- **The exposition is what the caller renders.** Every caller renders text exposition 0.0.4
  through the one writer, :class:`probekit._exporters.Exposition`, which hands its families to
  ``prometheus_client``'s ``generate_latest``: :func:`probekit.prometheus_text` for results,
  the checkpoint's, the control plane's and the exporter's own counters. The server serves the
  text it is given, with the content type that text is
  (``prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4``).
- **prometheus_client does the negotiation.** What a Prometheus server asks for beyond the text
  is compression: it scrapes with ``Accept-Encoding: gzip``, and a checkpoint with thousands of
  monitors serves megabytes. Whether the client accepts gzip is decided by
  ``prometheus_client.exposition.gzip_accepted``, as in ``prometheus_client``'s own servers,
  and the compression runs in a worker thread so a large body never stalls the loop.
- **One code path, always installed.** ``prometheus_client`` is a dependency of probekit (pure
  Python, no dependencies of its own), so ``--metrics-port`` and a checkpoint's metrics work
  after a plain ``pip install``; there is no fallback to keep in step. It is imported when
  something is rendered or served (inside the functions that do it), so ``import probekit``,
  ``import probekit.exporter`` and importing this module do not load it.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Final, Self
from urllib.parse import parse_qs

from ._exporters import PROMETHEUS_CONTENT_TYPE

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_REQUEST_BYTES",
    "REQUEST_TIMEOUT",
    "MetricsServer",
    "Route",
    "serve_metrics",
]

log = logging.getLogger("probekit.metrics")

#: The longest request head (request line and headers) read, in bytes.
MAX_REQUEST_BYTES: Final = 8192
#: Seconds a connection has to send its request and take the response.
REQUEST_TIMEOUT: Final = 5.0
#: Connections served at once; more are closed as soon as they are accepted.
MAX_CONNECTIONS: Final = 64

_TEXT: Final = "text/plain; charset=utf-8"
_REASONS: Final = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


#: A handler for one more path: ``route(method, query, header)`` with the query string's
#: parameters and a function from a header name to its value(s) ("" when absent); returns the
#: status, the content type and the body, and optionally a mapping of more response headers
#: (the status page's ``WWW-Authenticate`` and ``Content-Security-Policy``). It bounds its own
#: time; an exception is answered 500.
Route = Callable[
    [str, Mapping[str, list[str]], Callable[[str], str]],
    Awaitable[tuple[int, str, bytes] | tuple[int, str, bytes, Mapping[str, str]]],
]


class MetricsServer:
    """A running ``/metrics`` endpoint (see :func:`serve_metrics`).

    An async context manager: leaving it (or :meth:`close`) stops listening, ends the
    connections in progress and releases the port.
    """

    def __init__(
        self,
        render: Callable[[], str],
        ready: Callable[[], bool] | None,
        *,
        max_request_bytes: int,
        request_timeout: float,
        max_connections: int,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self._routes = dict(routes or {})
        self._render = render
        self._ready = ready
        self._max_request_bytes = max_request_bytes
        self._timeout = request_timeout
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._address: tuple[str, int] = ("", 0)

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` listened on (the port chosen when ``0`` was asked for)."""
        return self._address

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics`` (an IPv6 host in brackets)."""
        host, port = self._address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    async def _start(self, host: str | None, port: int) -> None:
        self._server = await asyncio.start_server(
            self._connected, host, port, limit=self._max_request_bytes
        )
        sockname = self._server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))

    async def close(self) -> None:
        """Stop listening and end the connections in progress; the port is free on return."""
        server, self._server = self._server, None
        self._closing = True
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, so the connection's task is ours to cancel and wait for on close.
        if self._closing or len(self._tasks) >= self._max_connections:
            log.debug("metrics endpoint busy or closing: connection closed")
            writer.transport.abort()
            return
        task = asyncio.create_task(self._connection(reader, writer), name="metrics request")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._exchange(reader, writer)
        except OSError:
            pass
        finally:
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head: bytes | None
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client went away
                except asyncio.LimitOverrunError:
                    head = None
        except TimeoutError:
            log.debug("request not complete within %s s: connection closed", self._timeout)
            writer.write(_response(408, "request timeout\n"))
            return
        # A route (the exporter's /probe) may take longer than reading did: it bounds itself.
        response = (
            _response(431, "request too large\n") if head is None else await self._respond(head)
        )
        try:
            async with asyncio.timeout(self._timeout):
                writer.write(response)
                await writer.drain()
        except TimeoutError:
            log.debug("response not taken within %s s: connection closed", self._timeout)

    async def _respond(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        request = lines[0].split(" ")
        if len(request) != 3 or not request[2].startswith("HTTP/1.") or not request[1]:
            return _response(400, "bad request\n")
        method, target = request[0], request[1]
        path, _, query = target.partition("?")
        route = self._routes.get(path)
        if route is not None:
            try:
                status, content_type, body, *more = await route(
                    method, parse_qs(query), lambda name: _header(lines, name)
                )
            except Exception:
                log.exception("answering %s failed", path)
                return _response(500, "internal error\n")
            extra = dict(more[0]) if more else None
            return _response(status, body, content_type, extra=extra, head_only=method == "HEAD")
        ready = self._ready
        if path != "/metrics" and (path != "/ready" or ready is None):
            return _response(404, "not found\n")
        if method not in ("GET", "HEAD"):
            return _response(405, "GET or HEAD only\n", extra={"Allow": "GET, HEAD"})
        head_only = method == "HEAD"
        try:
            if ready is not None and path == "/ready":
                if ready():
                    return _response(200, "ready\n", head_only=head_only)
                return _response(503, "not ready\n", head_only=head_only)
            body = self._render().encode()
        except Exception:
            log.exception("answering %s failed", path)
            return _response(500, "internal error\n", head_only=head_only)
        from prometheus_client.exposition import gzip_accepted

        extra = {"Vary": "Accept-Encoding"}
        if gzip_accepted(_header(lines, "accept-encoding")):
            body = await asyncio.to_thread(gzip.compress, body, 6)
            extra["Content-Encoding"] = "gzip"
        return _response(200, body, PROMETHEUS_CONTENT_TYPE, extra=extra, head_only=head_only)


async def serve_metrics(
    host: str | None,
    port: int,
    render: Callable[[], str],
    *,
    ready: Callable[[], bool] | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    request_timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    routes: Mapping[str, Route] | None = None,
) -> MetricsServer:
    """Serve ``GET /metrics`` (the text ``render()`` returns) on ``host:port`` until closed.

    ``port`` ``0`` picks a free port (read it from :attr:`MetricsServer.address`); ``host``
    ``None`` or ``""`` listens on every interface. With ``ready``, ``GET /ready`` answers 200
    ``ready`` when it returns true and 503 ``not ready`` otherwise. ``HEAD`` is answered like
    ``GET`` without the body; any other method on those paths gets 405, any other path 404.
    ``/metrics`` is ``text/plain; version=0.0.4; charset=utf-8``, gzip-compressed when the client
    accepts it. ``render`` and ``ready`` are called on the event loop, once per request: they
    must be quick and not block; an exception from either is logged and answered with 500.

    One request per connection: a request head longer than ``max_request_bytes`` gets 431, one
    not complete within ``request_timeout`` seconds gets 408 (the response must also be taken
    within that time), and the connection is closed. At most ``max_connections`` are served at
    once; more are closed when accepted. Raises ``OSError`` when the address cannot be bound.

    ``routes`` serves more paths (the exporter's ``/probe``, ``/-/healthy``, ``/-/reload``):
    see :data:`Route`. A route's own time is not bounded by ``request_timeout``, which bounds
    reading the request and writing the response.
    """
    server = MetricsServer(
        render,
        ready,
        max_request_bytes=max_request_bytes,
        request_timeout=request_timeout,
        max_connections=max_connections,
        routes=routes,
    )
    await server._start(host, port)
    return server


def _header(lines: list[str], name: str) -> str:
    values = []
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            values.append(value.strip())
    return ",".join(values)


def _response(
    status: int,
    body: str | bytes,
    content_type: str = _TEXT,
    *,
    extra: dict[str, str] | None = None,
    head_only: bool = False,
) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(data)),
        **(extra or {}),
        "Connection": "close",
    }
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    return (head + "\r\n").encode("latin-1") + (b"" if head_only else data)
