"""A DNS server on loopback for the hostile suites: UDP and TCP on one port, each side a handler.

The UDP side is a function from a query datagram to the datagrams sent back (none: silence); the
TCP side is a stream handler like every other hostile server's, so the protocol-independent
stream misbehaviours (silence, RST, half-close, dribbling) reach a DNS probe through its TCP
path: over TCP with ``transport = "tcp"``/DNS over TLS, or as the fallback after a truncated
(TC) UDP reply, which is asked again over TCP to the same address and port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Self, cast

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from servers import TcpServer

UdpHandler = Callable[[bytes], list[bytes]]
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def response_to(query: bytes) -> dns.message.Message:
    """A NOERROR response to the query ``query`` (its id, question and flags), no records yet."""
    return dns.message.make_response(dns.message.from_wire(query, keyring=False))


def answer_txt(query: bytes, text: str) -> bytes:
    """The query's name answered with one TXT record holding ``text``."""
    response = response_to(query)
    question = response.question[0]
    response.flags |= dns.flags.AA
    response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", f'"{text}"'))
    return response.to_wire()


def truncated(query: bytes) -> list[bytes]:
    """A TC reply without records: the probe must ask again over TCP."""
    response = response_to(query)
    response.flags |= dns.flags.TC
    return [response.to_wire()]


def refused(query: bytes, rcode: int = dns.rcode.REFUSED) -> bytes:
    response = response_to(query)
    response.set_rcode(rcode)
    return response.to_wire()


def silent(query: bytes) -> list[bytes]:
    return []


async def read_query(reader: asyncio.StreamReader) -> bytes:
    """One length-prefixed query from a TCP stream."""
    size = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(size)


def framed(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


async def tcp_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.queries += 1
        try:
            replies = self.server.udp(data)
        except Exception:  # a query the handler cannot parse gets no reply
            replies = []
        for reply in replies:
            if self.transport is not None:
                self.transport.sendto(reply, addr)


class _PortTcpServer(TcpServer):
    async def listen(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, port)
        self.port = port


class DnsServer:
    """UDP and TCP listeners on one loopback port (``port``); ``udp`` answers each datagram,
    ``tcp`` serves each connection. ``queries`` counts UDP datagrams, ``connections`` TCP ones.
    Has the ``start``/``stop`` of :class:`servers.TcpServer`."""

    def __init__(self, udp: UdpHandler | None = None, tcp: StreamHandler | None = None) -> None:
        self.udp = udp or silent
        self.tcp = _PortTcpServer(tcp or tcp_silence)
        self.port = 0
        self.queries = 0
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def connections(self) -> int:
        return self.tcp.connections

    async def start(self) -> Self:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=("127.0.0.1", 0)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                await self.tcp.listen(port)
            except OSError:
                transport.close()
                continue
            self._transport, self.port = transport, port
            return self
        raise RuntimeError("no loopback port free for both UDP and TCP")

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        await self.tcp.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def dns_server(udp: UdpHandler | None = None, tcp: StreamHandler | None = None) -> Any:
    async with DnsServer(udp, tcp) as server:
        yield server
