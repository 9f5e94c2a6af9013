"""An httpx transport over probekit's dial path: ``httpx.AsyncClient(transport=Transport())``.

Every request the client sends (every redirect hop too: httpx follows redirects by sending a new
request) is made on a fresh connection from the context's :class:`~probekit.Dialer`, so the
resolver, the egress policy, IP pinning, source addresses and :class:`~probekit.TlsOptions` hold
exactly as for a probe. The response is read by probekit's strict HTTP/1.1 parser and handed to
httpx as a stream: the body is read from the socket as the caller iterates it
(``response.aiter_bytes()``), one bounded read at a time, never buffered as a whole by the
transport.

The response carries what the dial path measured, in ``response.extensions``:

* ``"probekit.phases"``: the list of :class:`~probekit.Phase` (``resolve``, ``connect``,
  ``tls``, ``processing``: request written → first response byte, ``transfer``: first byte →
  end of body; ``transfer`` is added when the body has been read or the response closed);
* ``"probekit.address"``: the ``ip:port`` connected to (``[v6]:port`` for IPv6);
* ``"probekit.tls"``: the :class:`~probekit.TlsInfo` of an HTTPS exchange, else None;
* ``"probekit.started"``: the context clock's ``monotonic()`` reading the phases count from.

Failures are httpx's exceptions, so client code handles them as usual: a refused address is
:class:`EgressDenied` (an :class:`httpx.ConnectError`), raised before any socket exists; a
timeout in ``resolve``/``connect``/``tls`` is :class:`httpx.ConnectTimeout`, while writing
:class:`httpx.WriteTimeout`, while waiting for or reading the response
:class:`httpx.ReadTimeout`; a malformed response is :class:`httpx.RemoteProtocolError`.

This module needs httpx (``pip install probekit[httpx]``); ``import probekit`` never imports it.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import AsyncIterator
from typing import Any

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "probekit.httpx needs httpx: install probekit[httpx] (pip install 'probekit[httpx]')"
    ) from exc

import attrs

from ._context import ProbeContext, default_context
from ._dial import Connection, within
from ._errors import classify
from ._exceptions import PolicyError, ProbeFailure
from ._h1 import ResponseParser, header
from ._resolver import Family
from ._result import ErrorKind, Phase
from ._timeline import Timeline
from ._timeouts import Timeouts
from ._tls import TlsOptions

__all__ = ["ADDRESS", "PHASES", "STARTED", "TLS", "EgressDenied", "Transport"]

log = logging.getLogger("probekit.httpx")

#: The extension keys a response carries.
PHASES = "probekit.phases"
ADDRESS = "probekit.address"
TLS = "probekit.tls"
#: The clock reading (``context.clock.monotonic()``) the phases' ``start`` offsets count from.
STARTED = "probekit.started"

_READ = 64 * 1024
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
#: Control characters but HTAB: nothing may end a header line or the head early.
_FIELD_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET_REFUSED = re.compile(rb"[\x00-\x20\x7f-\xff]")
_METHOD = re.compile(rb"[A-Z]+")
_CONNECT_PHASES = frozenset({None, "resolve", "connect", "tls", "proxy"})
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"upgrade"})


class EgressDenied(httpx.ConnectError):
    """The egress policy refused the request's host or address; nothing was sent."""


@attrs.frozen
class _Options:
    tls: TlsOptions
    family: Family | None
    max_body_bytes: int | None
    max_head_bytes: int


class Transport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` that sends each request through probekit.

    ``context`` gives the dialer (and so the egress policy and resolver); the default is
    probekit's default context (the default :class:`~probekit.EgressPolicy`: link-local and
    metadata addresses denied). ``tls`` applies to every HTTPS request (``verify``, ``ca_file``,
    ``server_name``, client certificates, versions); ALPN is always ``http/1.1``.
    ``ip_family`` restricts resolution (``"ipv4"``/``"ipv6"``). ``max_body_bytes`` (default:
    none) makes a longer body a :class:`httpx.RemoteProtocolError` while it is read; the body is
    streamed either way. ``max_head_bytes`` bounds the response head.

    Each request opens one connection (``Connection: close``) and closes it when the response
    is closed: there is no pool to share between hosts or policies. httpx's ``timeout``
    (connect, read, write) applies per phase; ``pool`` has nothing to wait for.
    """

    def __init__(
        self,
        *,
        context: ProbeContext | None = None,
        tls: TlsOptions | None = None,
        ip_family: Family | None = None,
        max_body_bytes: int | None = None,
        max_head_bytes: int = 64 * 1024,
    ) -> None:
        if max_body_bytes is not None and (
            isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int)
        ):
            raise TypeError("max_body_bytes must be an int or None")
        if max_body_bytes is not None and max_body_bytes < 0:
            raise ValueError("max_body_bytes must not be negative")
        self._context = context
        base = tls if tls is not None else TlsOptions()
        self._options = _Options(
            attrs.evolve(base, alpn=("http/1.1",)), ip_family, max_body_bytes, max_head_bytes
        )

    @property
    def context(self) -> ProbeContext:
        return self._context if self._context is not None else default_context()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"probekit.httpx sends http:// and https:// only, not {scheme!r}", request=request
            )
        host = url.raw_host.decode("ascii")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise httpx.UnsupportedProtocol("the URL has no host", request=request)
        port = url.port or (443 if scheme == "https" else 80)
        head = _request_head(request)
        limits = _timeouts(request)
        ctx = self.context
        timeline = Timeline(ctx.clock)
        conn: Connection | None = None
        stage: str | None = None  # after the dial path: where a failure happened
        try:
            conn = await ctx.dialer.connect(
                host,
                port,
                timeline,
                limits,
                tls=self._options.tls if scheme == "https" else None,
                family=self._options.family,
            )
            stage = "send"
            with timeline.phase("send"):
                conn.write(head)
                await within(_write_limit(request), conn.drain())
                await _send_body(conn, request)
            parser = ResponseParser(
                head_request=request.method == "HEAD", max_head_bytes=self._options.max_head_bytes
            )
            stage = "processing"
            with timeline.phase("processing"):
                data = await conn.read(_READ, limits.read)
            stage = "transfer"
            begin = ctx.clock.monotonic()
            chunks = parser.feed(data)
            while not parser.head_done:
                if not data:
                    raise ProbeFailure(ErrorKind.PROTOCOL, "connection closed before the head")
                data = await conn.read(_READ, limits.read)
                chunks = parser.feed(data)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, Exception):
                raise _httpx_error(exc, stage or timeline.current, request) from exc
            raise
        stream = _BodyStream(
            conn, parser, chunks, timeline, begin, limits.read, self._options.max_body_bytes
        )
        if self._options.max_body_bytes is not None:
            stream.watch_decoding(header(parser.headers, "content-encoding"))
        return httpx.Response(
            parser.status,
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in parser.headers],
            stream=stream,
            request=request,
            extensions={
                "http_version": b"HTTP/" + parser.http_version.encode(),
                "reason_phrase": parser.reason.encode("latin-1"),
                PHASES: timeline.phases,
                STARTED: timeline.start,
                ADDRESS: conn.address,
                TLS: conn.tls,
            },
        )


def _timeouts(request: httpx.Request) -> Timeouts:
    spec: dict[str, Any] = request.extensions.get("timeout") or {}
    connect = _positive(spec.get("connect"))
    read = _positive(spec.get("read"))
    # The total is the check's deadline for a probe; here the client's own timeouts (and its
    # caller) bound the request, so only the phase limits are taken from it.
    return Timeouts(total=1e9, resolve=connect, connect=connect, tls=connect, read=read)


def _write_limit(request: httpx.Request) -> float | None:
    spec: dict[str, Any] = request.extensions.get("timeout") or {}
    return _positive(spec.get("write"))


def _positive(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _request_head(request: httpx.Request) -> bytes:
    """The HTTP/1.1 request head; anything that could split it is refused before a dial."""
    method = request.method.encode("ascii", "replace")
    if _METHOD.fullmatch(method) is None:
        raise httpx.LocalProtocolError(f"invalid method {request.method!r}", request=request)
    target = request.url.raw_path or b"/"
    if _TARGET_REFUSED.search(target) is not None:
        raise httpx.LocalProtocolError(
            "the request target holds whitespace, a control or a non-ASCII byte", request=request
        )
    lines = [method + b" " + target + b" HTTP/1.1"]
    has_host = False
    for name, value in request.headers.raw:
        lname = name.lower()
        if _TOKEN.fullmatch(name) is None:
            raise httpx.LocalProtocolError(f"invalid header name {name!r}", request=request)
        if _FIELD_CONTROL.search(value) is not None:
            raise httpx.LocalProtocolError(
                f"the value of the {name.decode('latin-1')} header holds a control character",
                request=request,
            )
        if lname in _HOP_BY_HOP:
            continue  # one connection per request: Connection: close is ours to say
        if lname == b"host":
            if has_host:
                raise httpx.LocalProtocolError("more than one Host header", request=request)
            has_host = True
        lines.append(name + b": " + value)
    if not has_host:
        lines.insert(1, b"Host: " + request.url.netloc)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _send_body(conn: Connection, request: httpx.Request) -> None:
    chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
    write_limit = _write_limit(request)
    stream = request.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        raise httpx.LocalProtocolError(
            "probekit.httpx needs an async request body (AsyncClient)", request=request
        )
    async for chunk in stream:
        if not chunk:
            continue
        if chunked:
            conn.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        else:
            conn.write(chunk)
        await within(write_limit, conn.drain())
    if chunked:
        conn.write(b"0\r\n\r\n")
        await within(write_limit, conn.drain())


class _BodyStream(httpx.AsyncByteStream):
    """The response body, read from the connection as it is iterated."""

    def __init__(
        self,
        conn: Connection,
        parser: ResponseParser,
        first: list[bytes],
        timeline: Timeline,
        begin: float,
        read_limit: float | None,
        cap: int | None,
    ) -> None:
        self._conn = conn
        self._parser = parser
        self._first = first
        self._timeline = timeline
        self._begin = begin
        self._read_limit = read_limit
        self._cap = cap
        self._seen = 0
        self._decoded = 0
        self._decoder: Any = None
        self._closed = False

    def watch_decoding(self, encoding: str | None) -> None:
        """Count the decoded size of a gzip or deflate body against the cap too, so that a
        compression bomb stops at ``max_body_bytes`` before httpx decodes it."""
        coding = (encoding or "").strip().lower()
        if coding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = self._parser
        pending = self._first
        self._first = []
        try:
            while True:
                for chunk in pending:
                    if chunk:
                        self._count(chunk)
                        yield chunk
                if parser.done:
                    return
                data = await self._conn.read(_READ, self._read_limit)
                pending = parser.feed(data)  # b"": EOF, which ends or fails the message
        except ProbeFailure as exc:
            raise httpx.RemoteProtocolError(exc.message) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout("timed out reading the response body") from exc
        except OSError as exc:
            raise httpx.ReadError(f"reading the response body failed: {exc}") from exc
        finally:
            await self.aclose()

    def _count(self, chunk: bytes) -> None:
        cap = self._cap
        if cap is None:
            return
        self._seen += len(chunk)
        if self._seen > cap:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the response body exceeds max_body_bytes ({cap})"
            )
        decoder = self._decoder
        data = chunk
        while decoder is not None and data:
            try:
                out = decoder.decompress(data, _READ)
            except zlib.error:  # httpx's decoder reports it (or reads raw deflate)
                self._decoder = None
                return
            self._decoded += len(out)
            if self._decoded > cap:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"the decoded response body exceeds max_body_bytes ({cap})",
                )
            data = decoder.unconsumed_tail

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._conn.close()
        end = self._timeline._clock.monotonic()
        self._timeline.phases.append(
            Phase("transfer", self._begin - self._timeline.start, end - self._begin)
        )


def _httpx_error(exc: Exception, phase: str | None, request: httpx.Request) -> Exception:
    """The httpx exception a client expects for what the dial path or the exchange raised."""
    if isinstance(exc, httpx.HTTPError):
        return exc
    if isinstance(exc, PolicyError):
        return EgressDenied(str(exc), request=request)
    error = classify(exc, phase)
    if error.kind is ErrorKind.INTERNAL:
        return exc  # a bug (probekit's, or a connector's), not the network: raised as it is
    message = error.message
    if error.kind is ErrorKind.TIMEOUT:
        if phase in _CONNECT_PHASES:
            return httpx.ConnectTimeout(message, request=request)
        if phase == "send":
            return httpx.WriteTimeout(message, request=request)
        return httpx.ReadTimeout(message, request=request)
    if error.kind is ErrorKind.POLICY_DENIED:
        return EgressDenied(message, request=request)
    if error.kind is ErrorKind.PROTOCOL and phase not in _CONNECT_PHASES:
        if isinstance(exc, ProbeFailure):
            return httpx.RemoteProtocolError(message, request=request)
        return (httpx.WriteError if phase == "send" else httpx.ReadError)(message, request=request)
    if phase in _CONNECT_PHASES or error.kind in (ErrorKind.DNS, ErrorKind.CONNECT, ErrorKind.TLS):
        return httpx.ConnectError(message, request=request)
    return httpx.ReadError(message, request=request)
