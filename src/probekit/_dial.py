"""The one dial path: resolve → policy → connect to the checked address → TLS.

Every TCP-based probe gets its connection here, so resolution, the egress policy, IP pinning,
address-family preference and fallback, source addresses, proxies and the timing of the
``resolve``, ``connect`` and ``tls`` phases are written once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import attrs

from ._errors import ProbeFailure
from ._exceptions import DefinitionError
from ._policy import EgressPolicy, IPAddress, parse_host_address
from ._resolver import AiodnsResolver, Family, Resolver
from ._result import ErrorKind, TlsInfo
from ._secret import Secret
from ._timeline import Timeline
from ._timeouts import Timeouts
from ._tls import TlsOptions, ssl_context, tls_info

__all__ = ["Connection", "Connector", "Dialer", "Proxy", "TlsVerifyFailure", "format_address"]

log = logging.getLogger("probekit.dial")

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: Opens a TCP connection to an already-checked IP. Tests substitute one that refuses
#: anything but loopback, so a policy bug cannot send a packet anywhere else.
Connector = Callable[[str, int, "tuple[str, int] | None"], Awaitable[Streams]]
Preference = Literal["auto", "ipv4", "ipv6"]
T = TypeVar("T")

_STREAM_LIMIT = 64 * 1024


async def within(limit: float | None, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``, for at most ``limit`` seconds when a limit is given.

    Without a limit no timeout scope is made: the check's overall deadline already applies, and
    this path runs several times per check.
    """
    if limit is None:
        return await awaitable
    async with asyncio.timeout(limit):
        return await awaitable


def format_address(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


async def _open(ip: str, port: int, source: tuple[str, int] | None) -> Streams:
    reader, writer = await asyncio.open_connection(ip, port, local_addr=source, limit=_STREAM_LIMIT)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


class TlsVerifyFailure(ProbeFailure):
    """Certificate verification failed; ``tls`` describes the chain the peer presented."""

    def __init__(self, message: str, tls: TlsInfo | None) -> None:
        super().__init__(ErrorKind.TLS, message)
        self.tls = tls


@attrs.frozen
class Proxy:
    """An HTTP proxy (``http://host:port``), used with CONNECT for TLS and TCP targets."""

    url: str
    username: str | None = None
    password: Secret | None = None
    host: str = attrs.field(init=False)
    port: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise DefinitionError("proxy", f"expected http://host:port, got {self.url!r}")
        if parts.username or parts.password:
            raise DefinitionError(
                "proxy", "put proxy credentials in username/password, not the URL"
            )
        try:
            port = parts.port or 8080
        except ValueError as exc:
            raise DefinitionError("proxy", str(exc)) from None
        object.__setattr__(self, "host", parts.hostname)
        object.__setattr__(self, "port", port)

    def authorization(self) -> bytes | None:
        if self.username is None:
            return None
        secret = self.password.reveal() if self.password else ""
        token = base64.b64encode(f"{self.username}:{secret}".encode()).decode()
        return f"Basic {token}".encode()


class Connection:
    """An open TCP connection from the dial path (possibly TLS, possibly through a proxy)."""

    __slots__ = ("ip", "port", "reader", "tls", "via_proxy", "writer")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: IPAddress, port: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.ip = ip
        self.port = port
        self.tls: TlsInfo | None = None
        self.via_proxy = False

    @property
    def address(self) -> str:
        return format_address(self.ip, self.port)

    async def read(self, size: int, limit: float | None) -> bytes:
        """Read up to ``size`` bytes (b"" at EOF), waiting at most ``limit`` seconds if given."""
        return await within(limit, self.reader.read(size))

    def close(self) -> None:
        """Close at once, without waiting to flush: a probe has read all it needs."""
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()


class Dialer:
    """Opens connections for probes, under an :class:`EgressPolicy`.

    One dialer is meant to be shared by many probes (the SSL contexts and the resolver channel
    are reused). ``prefer`` orders the resolved addresses (``auto`` keeps the resolver's order)
    and the next address is tried when one fails to connect. ``family`` restricts resolution.
    """

    def __init__(
        self,
        *,
        policy: EgressPolicy | None = None,
        resolver: Resolver | None = None,
        prefer: Preference = "auto",
        family: Family = "any",
        source_address: str | None = None,
        connector: Connector | None = None,
    ) -> None:
        self.policy = policy if policy is not None else EgressPolicy()
        self.resolver: Resolver = resolver if resolver is not None else AiodnsResolver()
        self.prefer = prefer
        self.family = family
        self.source = (source_address, 0) if source_address else None
        self.connector: Connector = connector or _open

    async def resolve(
        self, host: str, timeline: Timeline, timeouts: Timeouts, *, family: Family | None = None
    ) -> list[IPAddress]:
        """Resolve ``host`` (timed as ``resolve``) and check every address against the policy."""
        self.policy.check_host(host)
        with timeline.phase("resolve"):
            literal = parse_host_address(host)
            if literal is not None:
                addresses = [literal]
            else:
                lookup = self.resolver.resolve(host, family or self.family)
                addresses = await within(timeouts.resolve, lookup)
        self.policy.check_addresses(host, addresses)
        if self.prefer != "auto":
            first = 4 if self.prefer == "ipv4" else 6
            addresses.sort(key=lambda a: a.version != first)
        return addresses

    async def connect(
        self,
        host: str,
        port: int,
        timeline: Timeline,
        timeouts: Timeouts,
        *,
        tls: TlsOptions | None = None,
        proxy: Proxy | None = None,
        family: Family | None = None,
    ) -> Connection:
        """Open a connection to ``host:port``; with ``tls``, complete the handshake too."""
        if proxy is not None:
            conn = await self._through_proxy(host, port, proxy, timeline, timeouts, family)
        else:
            addresses = await self.resolve(host, timeline, timeouts, family=family)
            conn = await self._connect_any(addresses, port, timeline, timeouts)
        if tls is not None:
            try:
                await self.start_tls(conn, host, tls, timeline, timeouts)
            except BaseException:
                conn.close()
                raise
        return conn

    async def _connect_any(
        self, addresses: list[IPAddress], port: int, timeline: Timeline, timeouts: Timeouts
    ) -> Connection:
        last: BaseException | None = None
        with timeline.phase("connect"):
            for ip in addresses:
                try:
                    opening = self.connector(str(ip), port, self.source)
                    reader, writer = await within(timeouts.connect, opening)
                except OSError as exc:
                    log.debug("connect to %s failed: %s", format_address(ip, port), exc)
                    last = exc
                    continue
                except TimeoutError as exc:
                    if len(addresses) == 1:
                        raise
                    last = exc
                    continue
                return Connection(reader, writer, ip, port)
            assert last is not None
            raise last

    async def check_target(
        self, host: str, timeline: Timeline, timeouts: Timeouts, *, family: Family | None = None
    ) -> None:
        """Check a host that a proxy will dial for us.

        The name (and a literal address) is always decided. The resolved addresses are decided
        too when this machine can resolve the name; when it cannot (the proxy may be the only
        one that can), the name decision stands.
        """
        self.policy.check_host(host)
        if parse_host_address(host) is not None:
            return
        try:
            await self.resolve(host, timeline, timeouts, family=family)
        except ProbeFailure as exc:
            if exc.kind is not ErrorKind.DNS:
                raise
            timeline.current = None
            log.debug("target %s not resolvable locally; the proxy resolves it", host)

    async def _through_proxy(
        self,
        host: str,
        port: int,
        proxy: Proxy,
        timeline: Timeline,
        timeouts: Timeouts,
        family: Family | None,
    ) -> Connection:
        await self.check_target(host, timeline, timeouts, family=family)
        proxy_addresses = await self.resolve(proxy.host, timeline, timeouts)
        conn = await self._connect_any(proxy_addresses, proxy.port, timeline, timeouts)
        conn.via_proxy = True
        try:
            with timeline.phase("proxy"):
                await self._connect_tunnel(conn, host, port, proxy, timeouts)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _connect_tunnel(
        self, conn: Connection, host: str, port: int, proxy: Proxy, timeouts: Timeouts
    ) -> None:
        literal = parse_host_address(host)
        authority = f"[{literal}]:{port}" if literal and literal.version == 6 else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1".encode(), f"Host: {authority}".encode()]
        auth = proxy.authorization()
        if auth:
            lines.append(b"Proxy-Authorization: " + auth)
        conn.writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        async with asyncio.timeout(timeouts.read):
            try:
                head = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise ProbeFailure(ErrorKind.PROTOCOL, "proxy response headers too large") from None
            except asyncio.IncompleteReadError:
                raise ProbeFailure(ErrorKind.PROTOCOL, "proxy closed the connection") from None
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ProbeFailure(ErrorKind.PROTOCOL, f"bad proxy response {status_line[:80]!r}")
        code = int(parts[1])
        if code == 407:
            raise ProbeFailure(ErrorKind.AUTH, "proxy authentication required (407)")
        if not 200 <= code < 300:
            raise ProbeFailure(ErrorKind.CONNECT, f"proxy refused CONNECT: {status_line[:80]}")

    async def start_tls(
        self,
        conn: Connection,
        host: str,
        options: TlsOptions,
        timeline: Timeline,
        timeouts: Timeouts,
    ) -> TlsInfo:
        """Upgrade ``conn`` to TLS (timed as ``tls``); used for direct TLS and for STARTTLS."""
        literal = parse_host_address(host)
        server_name = options.server_name or (str(literal) if literal else host.rstrip("."))
        ctx = ssl_context(options)
        # Plain-text bytes already buffered would be read back as if they had come through TLS
        # (the STARTTLS injection flaw); a correct server sends nothing before the handshake.
        buffered = len(getattr(conn.reader, "_buffer", b""))
        if buffered:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"{buffered} unexpected plain-text bytes before the TLS upgrade"
            )
        failure: ssl.SSLCertVerificationError | None = None
        with timeline.phase("tls"):
            try:
                handshake = conn.writer.start_tls(ctx, server_hostname=server_name)
                await within(timeouts.tls, handshake)
            except ssl.SSLCertVerificationError as exc:
                failure = exc
        if failure is not None:
            timeline.current = "tls"
            chain = await self._diagnose(conn, server_name, options, timeouts)
            raise TlsVerifyFailure(f"certificate verify failed: {failure.verify_message}", chain)
        ssl_object = conn.writer.get_extra_info("ssl_object")
        conn.tls = tls_info(ssl_object, server_name, verified=options.verify)
        return conn.tls

    async def _diagnose(
        self, conn: Connection, server_name: str, options: TlsOptions, timeouts: Timeouts
    ) -> TlsInfo | None:
        """After a failed verification, fetch the chain without verifying, to report on it.

        This reconnects to the same, already-checked address; it is not part of the timeline.
        Proxied connections are not re-dialled.
        """
        if conn.via_proxy:
            return None
        insecure = attrs.evolve(options, verify=False)
        try:
            async with asyncio.timeout(timeouts.tls or 2.0):
                _reader, writer = await self.connector(str(conn.ip), conn.port, self.source)
                try:
                    await writer.start_tls(ssl_context(insecure), server_hostname=server_name)
                    ssl_object = writer.get_extra_info("ssl_object")
                    return tls_info(ssl_object, server_name, verified=False)
                finally:
                    writer.transport.abort()
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.debug("could not fetch the chain of %s for diagnosis: %s", conn.address, exc)
            return None
