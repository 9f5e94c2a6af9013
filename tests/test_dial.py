"""The dial path: resolution (aiodns, explicit nameservers), address fallback, timeouts."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

from probekit import (
    AiodnsResolver,
    Dialer,
    EgressPolicy,
    ErrorKind,
    HttpProbe,
    ProbeContext,
    StaticResolver,
    Status,
    TcpProbe,
    Timeouts,
)
from servers import GuardedConnector, HttpServer, make_context


class TinyDns(asyncio.DatagramProtocol):
    """Answers A queries from a mapping on a loopback UDP port; NXDOMAIN otherwise."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.queries: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ident, _flags, qdcount = struct.unpack("!HHH", data[:6])
        pos, labels = 12, []
        while data[pos]:
            length = data[pos]
            labels.append(data[pos + 1 : pos + 1 + length].decode())
            pos += 1 + length
        question = data[12 : pos + 5]
        qtype = struct.unpack("!H", data[pos + 1 : pos + 3])[0]
        name = ".".join(labels).lower()
        self.queries.append(name)
        address = self.answers.get(name)
        if address is None:
            header = struct.pack("!HHHHHH", ident, 0x8183, qdcount, 0, 0, 0)
            reply = header + question
        elif qtype != 1:
            reply = struct.pack("!HHHHHH", ident, 0x8180, qdcount, 0, 0, 0) + question
        else:
            header = struct.pack("!HHHHHH", ident, 0x8180, qdcount, 1, 0, 0)
            answer = (
                b"\xc0\x0c"
                + struct.pack("!HHIH", 1, 1, 60, 4)
                + bytes(map(int, address.split(".")))
            )
            reply = header + question + answer
        assert self.transport is not None
        self.transport.sendto(reply, addr)


async def test_aiodns_resolves_through_an_explicit_nameserver(http_server: HttpServer) -> None:
    loop = asyncio.get_running_loop()
    dns = TinyDns({"web.probekit.test": "127.0.0.1"})
    transport, _ = await loop.create_datagram_endpoint(lambda: dns, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    resolver = AiodnsResolver([f"127.0.0.1:{port}"], tries=1)
    try:
        ctx = ProbeContext(
            dialer=Dialer(resolver=resolver, connector=GuardedConnector(), family="ipv4")
        )
        up = await HttpProbe(f"http://web.probekit.test:{http_server.port}/ok").check(ctx)
        missing = await HttpProbe("http://absent.probekit.test/").check(ctx)
    finally:
        await resolver.aclose()
        transport.close()
    assert up.status is Status.UP, up.summary()
    assert up.phase("resolve") is not None and up.phase("resolve") > 0
    assert "web.probekit.test" in dns.queries
    assert missing.error is not None and missing.error.kind is ErrorKind.DNS
    assert missing.error.phase == "resolve"


async def test_aiodns_reads_the_hosts_file(http_server: HttpServer) -> None:
    resolver = AiodnsResolver()
    try:
        addresses = await resolver.resolve("localhost", "ipv4")
    finally:
        await resolver.aclose()
    assert [str(a) for a in addresses] == ["127.0.0.1"]


async def test_falls_back_to_the_next_address(http_server: HttpServer) -> None:
    # ::1 has no listener on this port: the connect fails and the next address is tried.
    connector = GuardedConnector()
    ctx = make_context(hosts={"dual.test": ["::1", "127.0.0.1"]}, connector=connector)
    result = await HttpProbe(f"http://dual.test:{http_server.port}/ok").check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.address == f"127.0.0.1:{http_server.port}"
    assert [ip for ip, _ in connector.dialled] == ["::1", "127.0.0.1"]


async def test_ipv4_preference_orders_addresses(http_server: HttpServer) -> None:
    connector = GuardedConnector()
    dialer = Dialer(
        resolver=StaticResolver({"dual.test": ["::1", "127.0.0.1"]}),
        connector=connector,
        prefer="ipv4",
    )
    result = await HttpProbe(f"http://dual.test:{http_server.port}/ok").check(
        ProbeContext(dialer=dialer)
    )
    assert result.status is Status.UP
    assert [ip for ip, _ in connector.dialled] == ["127.0.0.1"]


async def test_family_restriction() -> None:
    ctx = make_context(hosts={"v6only.test": ["::1"]})
    result = await TcpProbe("v6only.test", 9, ip_family="ipv4").check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.DNS


async def test_connect_timeout_names_the_connect_phase() -> None:
    async def hanging(ip: str, port: int, source: Any) -> Any:
        await asyncio.sleep(3600)

    dialer = Dialer(resolver=StaticResolver({"slow.test": ["127.0.0.1"]}), connector=hanging)
    began = time.monotonic()
    result = await TcpProbe("slow.test", 80, timeouts=Timeouts(total=5, connect=0.2)).check(
        ProbeContext(dialer=dialer)
    )
    assert time.monotonic() - began < 1.0
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "connect"


async def test_resolve_timeout_names_the_resolve_phase() -> None:
    class SlowResolver:
        async def resolve(self, host: str, family: str = "any") -> list[Any]:
            await asyncio.sleep(3600)
            return []

    dialer = Dialer(resolver=SlowResolver())
    result = await TcpProbe("slow.test", 80, timeouts=Timeouts(total=0.3)).check(
        ProbeContext(dialer=dialer)
    )
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "resolve"


async def test_context_deadline_is_earlier_than_the_probes(http_server: HttpServer) -> None:
    base = make_context()
    ctx = base.with_deadline(base.clock.monotonic() + 0.2)
    began = time.monotonic()
    result = await HttpProbe(http_server.url("/silent"), timeouts=Timeouts(total=30)).check(ctx)
    assert time.monotonic() - began < 0.5
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT


async def test_source_address_is_used(http_server: HttpServer) -> None:
    seen: list[str] = []

    async def handler(req: Any, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peername")[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    from servers import serving

    async with serving(HttpServer(handler=handler)) as server:
        dialer = Dialer(source_address="127.0.0.9", policy=EgressPolicy())
        result = await HttpProbe(server.url("/")).check(ProbeContext(dialer=dialer))
    assert result.status is Status.UP, result.summary()
    assert seen == ["127.0.0.9"]
