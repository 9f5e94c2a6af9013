"""The SSRF table against every built-in kind: spellings, rebinding, mixed answers, redirect pivots
and proxies.

Every check runs through the guarded connector; "never dialled" is asserted as
``connector.dialled == []`` *and* ``connector.refused == []``: the policy refused before the
connector was asked, so nothing depended on the guard.
"""

from __future__ import annotations

from typing import Any

import pytest
from hostile_kinds import (
    DNS_NAME,
    KindProfile,
    bracket,
    builtin_profiles,
    good_server,
    http_response,
    server_profiles,
)
from ssrf_table import SPELLINGS

from probekit import (
    DefinitionErrors,
    Dialer,
    EgressPolicy,
    ErrorKind,
    ProbeContext,
    Result,
    Status,
    build_probe,
)
from probekit._policy import IPAddress, parse_host_address
from proxy import LoopbackProxy
from servers import GuardedConnector, TcpServer, make_context
from test_icmp import echo, fake_host

KINDS = [pytest.param(p, id=p.name) for p in builtin_profiles()]
SPELLED = [pytest.param(host, id=name) for name, host in SPELLINGS.items()]
PORT = 8080  # never dialled


def _denied(result: Result, connector: GuardedConnector) -> None:
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert result.error.kind is ErrorKind.POLICY_DENIED, result.summary()
    assert connector.dialled == [] and connector.refused == []


def _probe(profile: KindProfile, host: str, port: int, **extra: Any) -> Any:
    return build_probe({**profile.definition(host, port, False), **extra})


@pytest.mark.parametrize("host", SPELLED)
@pytest.mark.parametrize("profile", KINDS)
async def test_every_spelling_is_denied_for_every_kind(profile: KindProfile, host: str) -> None:
    connector = GuardedConnector()
    result = await _probe(profile, host, PORT).check(make_context(connector=connector))
    error = result.error
    if profile.strict_urls and error is not None and error.kind is ErrorKind.PROTOCOL:
        # The kind's URL parser (httpx's, for a script) refuses this spelling outright: the
        # request is never made, which is as safe as a denial.
        assert "invalid URL" in error.message and connector.dialled == connector.refused == []
        return
    _denied(result, connector)
    assert "connect" not in result.phase_names()


@pytest.mark.parametrize("host", SPELLED)
def test_every_spelling_is_decided_as_the_address_it_denotes(host: str) -> None:
    assert parse_host_address(host) is not None, host
    assert not EgressPolicy().decide_host(host).allowed


class RebindingResolver:
    """Answers ``first`` to the first query for a name and ``then`` to every later one, as a
    DNS server with a zero TTL that rebinds between a check and a connect would."""

    def __init__(self, first: str, then: str) -> None:
        self.answers = [first, then]
        self.queries: list[str] = []

    async def resolve(self, host: str, family: str = "any") -> list[IPAddress]:
        self.queries.append(host)
        text = self.answers[0] if len(self.queries) == 1 else self.answers[1]
        address = parse_host_address(text)
        assert address is not None
        return [address]


def _context(resolver: Any, connector: GuardedConnector) -> ProbeContext:
    return ProbeContext(
        dialer=Dialer(resolver=resolver, connector=connector, socket_connector=connector.socket)
    )


SERVED = [pytest.param(p, id=p.name) for p in server_profiles()]


@pytest.mark.parametrize("then", ["169.254.169.254", "2002:a9fe:a9fe::1", "fd00:ec2::254"])
@pytest.mark.parametrize("profile", SERVED)
async def test_rebinding_cannot_swap_the_checked_address(profile: KindProfile, then: str) -> None:
    # A datagram kind (dns) opens its socket through the guard's `.socket`, which records it in
    # `dialled` as the connector does for TCP.
    server = await good_server(profile.family).start()
    try:
        resolver = RebindingResolver("127.0.0.1", then)
        connector = GuardedConnector()
        ctx = _context(resolver, connector)
        probe = _probe(profile, "rebind.test", server.port)
        first = await probe.check(ctx)
        # One resolution per check, and the connection went to the address that was checked.
        assert first.status is Status.UP, first.summary()
        assert resolver.queries == ["rebind.test"]
        assert connector.dialled == [("127.0.0.1", server.port)]
        second = await probe.check(ctx)
        assert second.error is not None and second.error.kind is ErrorKind.POLICY_DENIED
        assert connector.dialled == [("127.0.0.1", server.port)] and connector.refused == []
    finally:
        await server.stop()


@pytest.mark.parametrize("then", ["169.254.169.254", "2002:a9fe:a9fe::1", "fd00:ec2::254"])
async def test_rebinding_cannot_swap_the_address_pinged(then: str) -> None:
    """icmp meets no server (its profile says why); test_icmp's scripted host stands in for
    one, behind the same guard: the echo goes to the checked address, and a rebound name is
    denied before a socket exists."""
    icmp = builtin_profiles_by_name()["icmp"]
    async with fake_host(echo) as host:
        resolver = RebindingResolver("127.0.0.1", then)
        ctx = _context(resolver, host)
        probe = _probe(icmp, "rebind.test", PORT)
        first = await probe.check(ctx)
        assert first.status is Status.UP, first.summary()
        assert resolver.queries == ["rebind.test"]
        assert host.dialled == [("127.0.0.1", 0)] and len(host.requests) == 1
        second = await probe.check(ctx)
        assert second.error is not None and second.error.kind is ErrorKind.POLICY_DENIED
        assert host.dialled == [("127.0.0.1", 0)] and host.refused == []


async def test_rebinding_between_redirect_hops_is_decided_again() -> None:
    async def redirect_once(reader: Any, writer: Any) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET / "):
            writer.write(http_response(b"", "302 Found", b"Location: /next\r\n"))
        else:
            writer.write(http_response(b"second hop"))

    server = await TcpServer(redirect_once).start()
    try:
        resolver = RebindingResolver("127.0.0.1", "169.254.169.254")
        connector = GuardedConnector()
        result = await build_probe(
            {"kind": "http", "url": f"http://rebind.test:{server.port}/"}
        ).check(_context(resolver, connector))
        assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
        assert resolver.queries == ["rebind.test", "rebind.test"]
        assert connector.dialled == [("127.0.0.1", server.port)] and connector.refused == []
        assert server.connections == 1
    finally:
        await server.stop()


MIXED = {
    "allowed first": ["127.0.0.1", "169.254.169.254"],
    "denied first": ["169.254.169.254", "127.0.0.1"],
    "IPv6 metadata among loopback": ["::1", "127.0.0.1", "fd00:ec2::254"],
    "6to4 of metadata": ["127.0.0.1", "2002:a9fe:a9fe::1"],
    "Alibaba": ["127.0.0.1", "100.100.100.200"],
}


@pytest.mark.parametrize("answer", list(MIXED.values()), ids=list(MIXED))
@pytest.mark.parametrize("profile", KINDS)
async def test_one_denied_address_in_an_answer_denies_the_host(
    profile: KindProfile, answer: list[str]
) -> None:
    connector = GuardedConnector()
    ctx = make_context(hosts={"mixed.test": answer}, connector=connector)
    _denied(await _probe(profile, "mixed.test", PORT).check(ctx), connector)


def _redirector(location: str) -> Any:
    async def handler(reader: Any, writer: Any) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(http_response(b"", "302 Found", f"Location: {location}\r\n".encode()))

    return handler


REDIRECTING = [pytest.param(p, id=p.name) for p in builtin_profiles() if p.redirects]


@pytest.mark.parametrize("host", SPELLED)
@pytest.mark.parametrize("profile", REDIRECTING)
async def test_a_redirect_to_any_spelling_is_not_followed(profile: KindProfile, host: str) -> None:
    location = profile.url_of(profile.definition(host, PORT, False))
    server = await TcpServer(_redirector(location)).start()
    try:
        connector = GuardedConnector()
        result = await _probe(profile, "127.0.0.1", server.port).check(
            make_context(connector=connector)
        )
        # A Location header is bytes; a non-ASCII one (full-width spellings, sent as UTF-8)
        # may be refused as a bad redirect before the policy sees it. Either way, not followed.
        # A kind with strict_urls (httpx's parser) refuses some ASCII spellings the same way.
        odd = not host.isascii() or profile.strict_urls
        kinds = {ErrorKind.POLICY_DENIED} | ({ErrorKind.PROTOCOL} if odd else set())
        assert result.error is not None and result.error.kind in kinds, result.summary()
        assert connector.dialled == [("127.0.0.1", server.port)] and connector.refused == []
        assert server.connections == 1
    finally:
        await server.stop()


PROXIED = [pytest.param(p, id=p.name) for p in builtin_profiles() if p.proxy]


@pytest.mark.parametrize("host", SPELLED)
@pytest.mark.parametrize("profile", PROXIED)
async def test_a_proxy_does_not_carry_a_denied_target(profile: KindProfile, host: str) -> None:
    async with LoopbackProxy() as proxy:
        connector = GuardedConnector()
        probe = _probe(profile, host, PORT, proxy={"url": proxy.url})
        _denied(await probe.check(make_context(connector=connector)), connector)
        assert proxy.requests == [] and proxy.connections == 0


@pytest.mark.parametrize("host", SPELLED)
@pytest.mark.parametrize("profile", PROXIED)
async def test_a_proxy_at_a_denied_address_is_not_dialled(profile: KindProfile, host: str) -> None:
    connector = GuardedConnector()
    proxy_host = bracket(host.replace("%", "%25")) if ":" in host else host
    probe = _probe(profile, "127.0.0.1", PORT, proxy={"url": f"http://{proxy_host}:3128"})
    _denied(await probe.check(make_context(connector=connector)), connector)


@pytest.mark.parametrize("host", SPELLED)
async def test_a_dns_name_asked_about_is_not_a_host_to_connect_to(host: str) -> None:
    """The policy applies to the DNS server; a metadata address as the *name* is asked of the
    allowed server and never dialled (the target syntax of dns is the name)."""
    server = await good_server("dns").start()
    try:
        connector = GuardedConnector()
        definition = {"kind": "dns", "name": host, "type": "TXT", "server": "127.0.0.1"}
        definition["port"] = server.port
        problems: list[str] = []
        try:
            probe = build_probe(definition)
        except DefinitionErrors as exc:
            problems = [e.path for e in exc.errors]
        if problems:
            # Not a name the dns kind asks about: refused at definition, so nothing is sent.
            assert problems == ["name"]
            assert server.queries == 0
            return
        result = await probe.check(make_context(connector=connector))
        assert result.status is Status.UP, result.summary()
        assert connector.dialled == [("127.0.0.1", server.port)] and connector.refused == []
        assert server.queries == 1
    finally:
        await server.stop()


def test_the_dns_profile_puts_the_host_in_the_server_field() -> None:
    definition = builtin_profiles_by_name()["dns"].definition("169.254.169.254", 53, False)
    assert definition["server"] == "169.254.169.254" and definition["name"] == DNS_NAME


def builtin_profiles_by_name() -> dict[str, KindProfile]:
    return {p.name: p for p in builtin_profiles()}
