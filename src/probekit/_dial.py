"""The one dial path: resolve → policy → connect to the checked address → TLS.

Every TCP-based probe gets its connection here, so resolution, the egress policy, IP pinning,
address-family preference and fallback, source addresses, proxies and the timing of the
``resolve``, ``connect`` and ``tls`` phases are written once.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar, cast

import attrs

from ._deadline import after
from ._exceptions import DefinitionError, ProbeFailure
from ._policy import EgressPolicy, IPAddress, parse_host_address
from ._resolver import AiodnsResolver, Family, Resolver
from ._result import ErrorKind, TlsInfo
from ._secret import Secret, as_secret, redact_url
from ._timeline import Timeline
from ._timeouts import Timeouts
from ._tls import TlsOptions, ssl_context, tls_info

__all__ = [
    "Connection",
    "Connector",
    "Datagram",
    "Dialer",
    "Proxy",
    "TlsVerifyFailure",
    "SocketConnector",
    "format_address",
    "open_socket",
    "tcp_connect",
]

log = logging.getLogger("probekit.dial")

_PROXY_HEAD = 16 * 1024

#: Opens a TCP connection to an already-checked IP and returns it as a :class:`Connection`
#: (the default is :func:`tcp_connect`). Tests substitute one that refuses anything but
#: loopback, so a policy bug cannot send a packet anywhere else.
Connector = Callable[[str, int, "tuple[str, int] | None"], Awaitable["Connection"]]
#: Opens a raw socket to an already-checked IP: ``(ip, port, source, protocol)`` where protocol is
#: ``tcp`` (connected stream socket), ``udp`` or ``icmp`` (connected datagram sockets). The
#: default is :func:`open_socket`; tests substitute one that refuses anything but loopback.
SocketConnector = Callable[[str, int, "tuple[str, int] | None", str], Awaitable[socket.socket]]
Preference = Literal["auto", "ipv4", "ipv6"]
T = TypeVar("T")

#: Reading pauses when this much is buffered and not yet read, and resumes below a quarter.
_HIGH_WATER = 256 * 1024
_NO_ADDRESS: IPAddress = ipaddress.IPv4Address(0)


async def within(limit: float | None, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``, for at most ``limit`` seconds when a limit is given.

    Without a limit no timeout scope is made: the check's overall deadline already applies, and
    this path runs several times per check.
    """
    if limit is None:
        return await awaitable
    with after(limit):
        return await awaitable


@functools.lru_cache(maxsize=4096)
def _text(ip: IPAddress) -> str:
    # str() of an ipaddress object is pure Python and runs twice per check; checks repeat
    # their addresses, so remembering it is cheap.
    return str(ip)


def format_address(ip: IPAddress, port: int) -> str:
    text = _text(ip)
    return f"[{text}]:{port}" if ip.version == 6 else f"{text}:{port}"


async def tcp_connect(ip: str, port: int, source: tuple[str, int] | None = None) -> Connection:
    """The default :data:`Connector`: a plain TCP connection to ``ip:port`` (no checks).

    A custom connector typically checks the address and then calls this.
    """
    loop = asyncio.get_running_loop()
    _transport, conn = await loop.create_connection(Connection, ip, port, local_addr=source)
    return conn


_DATAGRAM_PROTOCOLS = {
    ("udp", 4): socket.IPPROTO_UDP,
    ("udp", 6): socket.IPPROTO_UDP,
    ("icmp", 4): socket.IPPROTO_ICMP,
    ("icmp", 6): socket.IPPROTO_ICMPV6,
}


async def open_socket(
    ip: str, port: int, source: tuple[str, int] | None, protocol: str = "tcp"
) -> socket.socket:
    """The default :data:`SocketConnector`: a connected non-blocking socket (no checks).

    ``tcp`` connects a stream socket; ``udp`` and ``icmp`` connect datagram sockets. ``icmp``
    is the unprivileged ``SOCK_DGRAM`` echo socket Linux offers to the groups in
    ``net.ipv4.ping_group_range``; where that range leaves the process out, a raw socket is
    used instead when the process may open one (root, or ``CAP_NET_RAW``). Readers of an
    ``icmp`` socket must therefore accept what a raw socket delivers too (an IPv4 header
    first, other programs' messages).
    """
    version = ipaddress.ip_address(ip).version
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    if protocol == "tcp":
        sock = socket.socket(family, socket.SOCK_STREAM)
    elif (protocol, version) in _DATAGRAM_PROTOCOLS:
        number = _DATAGRAM_PROTOCOLS[protocol, version]
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM, number)
        except PermissionError as refused:
            if protocol != "icmp":
                raise
            try:
                sock = socket.socket(family, socket.SOCK_RAW, number)
            except PermissionError:
                raise refused from None  # the datagram socket's refusal says what to change
    else:
        raise ValueError(f"unknown socket protocol {protocol!r}")
    try:
        sock.setblocking(False)
        if source is not None:
            sock.bind(source)
        if protocol == "tcp":
            await asyncio.get_running_loop().sock_connect(sock, (ip, port))
        else:
            sock.connect((ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Datagram:
    """A connected datagram socket from the dial path (UDP, or ICMP echo), for one check."""

    __slots__ = ("ip", "port", "protocol", "sock")

    def __init__(self, sock: socket.socket, ip: IPAddress, port: int, protocol: str) -> None:
        self.sock = sock
        self.ip = ip
        self.port = port
        self.protocol = protocol

    @property
    def address(self) -> str:
        return format_address(self.ip, self.port) if self.port else _text(self.ip)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def recv(self, size: int = 65535, limit: float | None = None) -> bytes:
        """One datagram of at most ``size`` bytes, waiting at most ``limit`` seconds."""
        return await within(limit, asyncio.get_running_loop().sock_recv(self.sock, size))

    def close(self) -> None:
        self.sock.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _cancel_timer(timer: asyncio.TimerHandle, _waiter: asyncio.Future[None]) -> None:
    timer.cancel()


class TlsVerifyFailure(ProbeFailure):
    """Certificate verification failed; ``tls`` describes the chain the peer presented."""

    def __init__(self, message: str, tls: TlsInfo | None) -> None:
        super().__init__(ErrorKind.TLS, message)
        self.tls = tls


def _proxy_password(value: Secret | str | None) -> Secret | None:
    return as_secret("password", value)


@attrs.frozen
class Proxy:
    """An HTTP proxy (``http://host:port``), used with CONNECT for TLS and TCP targets."""

    url: str
    username: str | None = None
    password: Secret | None = attrs.field(default=None, converter=_proxy_password)
    host: str = attrs.field(init=False)
    port: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        from urllib.parse import urlsplit

        if not isinstance(self.url, str):
            raise DefinitionError("proxy", f"a URL must be a string, got {type(self.url).__name__}")
        # Messages show the URL through redact_url: its userinfo may hold a password.
        try:
            parts = urlsplit(self.url)
            hostname = parts.hostname
        except ValueError as exc:
            raise DefinitionError("proxy", f"{exc} in {redact_url(self.url)!r}") from None
        if parts.scheme != "http" or not hostname:
            raise DefinitionError(
                "proxy", f"expected http://host:port, got {redact_url(self.url)!r}"
            )
        if parts.username or parts.password:
            raise DefinitionError(
                "proxy", "put proxy credentials in username/password, not the URL"
            )
        try:
            port = parts.port or 8080
        except ValueError as exc:
            raise DefinitionError("proxy", f"{exc} in {redact_url(self.url)!r}") from None
        object.__setattr__(self, "host", hostname)
        object.__setattr__(self, "port", port)

    def authorization(self) -> bytes | None:
        if self.username is None:
            return None
        secret = self.password.reveal() if self.password else ""
        token = base64.b64encode(f"{self.username}:{secret}".encode()).decode()
        return f"Basic {token}".encode()


class Connection(asyncio.Protocol):
    """An open TCP connection from the dial path (possibly TLS, possibly through a proxy).

    It is the asyncio protocol of its own transport: received bytes go into one buffer that
    :meth:`read` takes from, with no stream objects in between. This is the hot path of every
    check, so it is kept small.
    """

    __slots__ = (
        "_buffer",
        "_drain_waiter",
        "_eof",
        "_error",
        "_lost",
        "_reading_paused",
        "_waiter",
        "_writing_paused",
        "ip",
        "port",
        "tls",
        "transport",
        "upgrading",
        "via_proxy",
    )

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.ip = _NO_ADDRESS
        self.port = 0
        self.tls: TlsInfo | None = None
        self.via_proxy = False
        #: Set while (and after) TLS is being started, so EOF is handled as TLS expects.
        self.upgrading = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None
        self._reading_paused = False
        self._writing_paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        self._wake()
        if not self._reading_paused and len(buffer) > _HIGH_WATER:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # Keep a plain connection open for writing (a half close); TLS ignores the answer.
        return not self.upgrading

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._lost = True
        if exc is not None:
            self._error = exc
        self._wake()
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- for probes ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        return format_address(self.ip, self.port)

    @property
    def buffered(self) -> int:
        """How many received bytes have not been read yet."""
        return len(self._buffer)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self._lost:
            raise self._error or ConnectionResetError("connection lost")
        if not self._writing_paused:
            return
        waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None
        if self._lost:
            raise self._error or ConnectionResetError("connection lost")

    def _armed(self, limit: float | None) -> asyncio.Future[None]:
        """The future the next received bytes (or EOF) complete, failing with TimeoutError after
        ``limit`` seconds if given. A plain future, not a coroutine: thousands of checks wait
        here at once, and one coroutine frame fewer each is memory that counts."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if limit is not None:
            timer = loop.call_later(limit, _expire, waiter)
            waiter.add_done_callback(functools.partial(_cancel_timer, timer))
        self._waiter = waiter  # _wake ignores it once done, so it is never reset
        return waiter

    async def read(self, size: int, limit: float | None = None) -> bytes:
        """Read up to ``size`` bytes (b"" at EOF), waiting at most ``limit`` seconds if given.

        A connection reset while waiting raises the transport's error.
        """
        buffer = self._buffer
        if not buffer and not self._eof:
            await self._armed(limit)
        if not buffer:
            if self._error is not None:
                raise self._error
            return b""
        if len(buffer) <= size:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:size])
            del buffer[:size]
        if self._reading_paused and len(buffer) < _HIGH_WATER // 4:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def read_until(
        self, separator: bytes, max_bytes: int, limit: float | None, what: str
    ) -> bytes:
        """Read through ``separator``; the bytes after it stay buffered for :meth:`read`.

        Raises a protocol failure naming ``what`` when ``max_bytes`` pass without it, or the
        connection closes first.
        """
        buffer = self._buffer
        while True:
            found = buffer.find(separator)
            if found >= 0:
                end = found + len(separator)
                if end > max_bytes:
                    break
                data = bytes(buffer[:end])
                del buffer[:end]
                return data
            if len(buffer) > max_bytes:
                break
            if self._eof:
                if self._error is not None:
                    raise self._error
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"connection closed before the end of the {what}"
                )
            await self._armed(limit)
        raise ProbeFailure(ErrorKind.PROTOCOL, f"{what} exceeds {max_bytes} bytes")

    def close(self) -> None:
        """Close at once, without waiting to flush: a probe has read all it needs."""
        transport = self.transport
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
        socket_connector: SocketConnector | None = None,
    ) -> None:
        self.policy = policy if policy is not None else EgressPolicy()
        self.resolver: Resolver = resolver if resolver is not None else AiodnsResolver()
        self.prefer = prefer
        self.family = family
        self.source = (source_address, 0) if source_address else None
        self.connector: Connector = connector or tcp_connect
        self.socket_connector: SocketConnector = socket_connector or open_socket

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

    async def open_socket(
        self,
        host: str,
        port: int,
        timeline: Timeline,
        timeouts: Timeouts,
        *,
        family: Family | None = None,
    ) -> socket.socket:
        """A connected TCP socket to ``host:port`` (``resolve`` and ``connect`` timed, the
        policy checked), for client libraries that take a socket. No proxy, no TLS."""
        addresses = await self.resolve(host, timeline, timeouts, family=family)
        last: BaseException | None = None
        with timeline.phase("connect"):
            for ip in addresses:
                try:
                    opening = self.socket_connector(_text(ip), port, self.source, "tcp")
                    return await within(timeouts.connect, opening)
                except OSError as exc:
                    log.debug("connect to %s failed: %s", format_address(ip, port), exc)
                    last = exc
                except TimeoutError as exc:
                    if len(addresses) == 1:
                        raise
                    last = exc
            assert last is not None
            raise last

    async def open_datagram(
        self,
        host: str,
        port: int,
        timeline: Timeline,
        timeouts: Timeouts,
        *,
        protocol: str = "udp",
        family: Family | None = None,
    ) -> Datagram:
        """A connected datagram endpoint to the first checked address of ``host``."""
        if protocol not in ("udp", "icmp"):
            raise DefinitionError("protocol", f"expected 'udp' or 'icmp', got {protocol!r}")
        addresses = await self.resolve(host, timeline, timeouts, family=family)
        ip = addresses[0]
        sock = await self.socket_connector(_text(ip), port, self.source, protocol)
        return Datagram(sock, ip, port, protocol)

    async def _connect_any(
        self, addresses: list[IPAddress], port: int, timeline: Timeline, timeouts: Timeouts
    ) -> Connection:
        last: BaseException | None = None
        with timeline.phase("connect"):
            for ip in addresses:
                try:
                    opening = self.connector(_text(ip), port, self.source)
                    if timeouts.connect is None:
                        conn = await opening
                    else:
                        conn = await within(timeouts.connect, opening)
                except OSError as exc:
                    log.debug("connect to %s failed: %s", format_address(ip, port), exc)
                    last = exc
                    continue
                except TimeoutError as exc:
                    if len(addresses) == 1:
                        raise
                    last = exc
                    continue
                conn.ip = ip
                conn.port = port
                return conn
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
        conn.write(b"\r\n".join(lines) + b"\r\n\r\n")
        head = await conn.read_until(b"\r\n\r\n", _PROXY_HEAD, timeouts.read, "proxy response")
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
        *,
        diagnose: bool = True,
    ) -> TlsInfo:
        """Upgrade ``conn`` to TLS (timed as ``tls``); used for direct TLS and for STARTTLS.

        After a failed certificate verification, ``diagnose`` fetches the chain the peer
        presents on a second connection to the same address, with TLS from the first byte, to
        report on it. That is only right for direct TLS: after a STARTTLS dialogue a second
        connection would meet a greeting, not a handshake, so STARTTLS upgrades pass False.
        """
        literal = parse_host_address(host)
        server_name = options.server_name or (str(literal) if literal else host.rstrip("."))
        ctx = ssl_context(options)
        failure: ssl.SSLCertVerificationError | None = None
        with timeline.phase("tls"):
            # Plain-text bytes already buffered would be read back as if they had come through
            # TLS (the STARTTLS injection flaw); a correct server sends nothing before the
            # handshake.
            buffered = conn.buffered
            if buffered:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"{buffered} unexpected plain-text bytes before the TLS upgrade",
                )
            try:
                conn.upgrading = True
                loop = asyncio.get_running_loop()
                handshake = loop.start_tls(conn.transport, conn, ctx, server_hostname=server_name)
                transport = await within(timeouts.tls, handshake)
                assert transport is not None
                conn.transport = transport
            except ssl.SSLCertVerificationError as exc:
                failure = exc
        if failure is not None:
            timeline.current = "tls"
            chain = await self._diagnose(conn, server_name, options, timeouts) if diagnose else None
            raise TlsVerifyFailure(f"certificate verify failed: {failure.verify_message}", chain)
        ssl_object = conn.transport.get_extra_info("ssl_object")
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
                probe = await self.connector(str(conn.ip), conn.port, self.source)
                try:
                    probe.upgrading = True
                    loop = asyncio.get_running_loop()
                    transport = await loop.start_tls(
                        probe.transport, probe, ssl_context(insecure), server_hostname=server_name
                    )
                    assert transport is not None
                    probe.transport = transport
                    ssl_object = transport.get_extra_info("ssl_object")
                    return tls_info(ssl_object, server_name, verified=False)
                finally:
                    probe.close()
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.debug("could not fetch the chain of %s for diagnosis: %s", conn.address, exc)
            return None
