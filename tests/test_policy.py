"""The egress policy: SSRF spellings, mixed resolver answers, redirect pivots, proxies.

Every test that proves an address is never dialled runs through the GuardedConnector, which
refuses any non-loopback address before a socket exists, and checks the server side too.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probekit import EgressPolicy, ErrorKind, HttpProbe, PolicyError, ProbeContext, Proxy, Status
from probekit._policy import canonical_address, parse_host_address
from proxy import LoopbackProxy
from servers import GuardedConnector, HttpServer, make_context, serving
from strategies import addresses, ipv4, ipv4_spellings, networks

METADATA_SPELLINGS = [
    "169.254.169.254",
    "0xa9fea9fe",
    "0xA9FEA9FE",
    "2852039166",
    "0251.0376.0251.0376",
    "0xa9.0xfe.0xa9.0xfe",
    "169.254.43518",
    "169.16689662",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",
    "[fd00:ec2::254]",
    "[fe80::1]",
    "169.254.169.254.",
]

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "0x7f.1",
    "[::ffff:127.0.0.1]",
    "localhost",
]


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
async def test_metadata_spellings_denied_by_default(
    host: str, connector: GuardedConnector, ctx: ProbeContext
) -> None:
    result = await HttpProbe(f"http://{host}/latest/meta-data/").check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED, (
        result.summary()
    )
    assert connector.dialled == [] and connector.refused == []  # nothing reached the connector
    assert "connect" not in result.phase_names()


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
async def test_loopback_spellings_denied_when_loopback_is(
    host: str, http_server: HttpServer
) -> None:
    connector = GuardedConnector()
    ctx = make_context(policy=EgressPolicy(deny=["127.0.0.0/8", "::1/128"]), connector=connector)
    result = await HttpProbe(f"http://{host}:{http_server.port}/ok").check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED, (
        result.summary()
    )
    assert connector.dialled == []
    assert http_server.connections == 0


async def test_same_spellings_allowed_by_default(
    http_server: HttpServer, ctx: ProbeContext
) -> None:
    for host in LOOPBACK_SPELLINGS[:-2]:
        result = await HttpProbe(f"http://{host}:{http_server.port}/ok").check(ctx)
        assert result.status is Status.UP, (host, result.summary())
        assert result.address == f"127.0.0.1:{http_server.port}"


async def test_denied_address_among_allowed_ones_denies_the_host(http_server: HttpServer) -> None:
    connector = GuardedConnector()
    ctx = make_context(hosts={"mixed.test": ["127.0.0.1", "169.254.169.254"]}, connector=connector)
    result = await HttpProbe(f"http://mixed.test:{http_server.port}/ok").check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert "169.254.169.254" in result.error.message
    assert result.error.phase is None or result.error.phase == "resolve"
    assert http_server.connections == 0 and connector.dialled == []


async def test_redirect_to_denied_address_is_not_followed(
    http_server: HttpServer, connector: GuardedConnector, ctx: ProbeContext
) -> None:
    for target in (
        "http://169.254.169.254/latest/meta-data/",
        "http://0xa9fea9fe/",
        "http://[::ffff:169.254.169.254]/",
    ):
        result = await HttpProbe(http_server.url(f"/redirect?to={target}")).check(ctx)
        assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED, target
    assert connector.refused == []
    assert http_server.connections == 3  # only the allowed first hops


async def test_redirect_pivot_to_denied_loopback_server() -> None:
    async with serving(HttpServer(host="127.0.0.2")) as hidden, serving(HttpServer()) as front:
        ctx = make_context(policy=EgressPolicy(deny=["127.0.0.2/32"]))
        result = await HttpProbe(front.url(f"/redirect?to={hidden.url('/ok')}")).check(ctx)
        assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
        assert front.connections == 1
        assert hidden.connections == 0


async def test_redirect_to_name_resolving_to_denied_address() -> None:
    async with serving(HttpServer(host="127.0.0.2")) as hidden, serving(HttpServer()) as front:
        ctx = make_context(
            policy=EgressPolicy(deny=["127.0.0.2/32"]), hosts={"innocent.test": ["127.0.0.2"]}
        )
        result = await HttpProbe(
            front.url(f"/redirect?to=http://innocent.test:{hidden.port}/ok")
        ).check(ctx)
        assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
        assert hidden.connections == 0


async def test_proxy_does_not_bypass_the_policy(https_server: HttpServer) -> None:
    ctx = make_context(
        policy=EgressPolicy(deny=["127.0.0.2/32"]), hosts={"sneaky.test": ["127.0.0.2"]}
    )
    async with LoopbackProxy() as proxy:
        for url in ("https://169.254.169.254/", "http://0xa9fea9fe/", "https://sneaky.test/"):
            result = await HttpProbe(url, proxy=Proxy(proxy.url)).check(ctx)
            assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED, url
        assert proxy.requests == []


async def test_host_patterns() -> None:
    policy = EgressPolicy(deny_hosts=["*.secret.test"], allow_hosts=["*.test", "localhost"])
    ctx = make_context(
        policy=policy, hosts={"db.secret.test": ["127.0.0.1"], "elsewhere.example": ["127.0.0.1"]}
    )
    for host in ("db.secret.test", "DB.Secret.Test.", "elsewhere.example"):
        result = await HttpProbe(f"http://{host}/").check(ctx)
        assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED, host
    assert policy.decide_host("ok.test").allowed


def test_allow_list_narrows_and_explicit_allow_overrides_default_deny() -> None:
    policy = EgressPolicy(allow=["10.0.0.0/8", "169.254.169.254/32"])
    assert policy.decide_address("10.1.2.3").allowed
    assert not policy.decide_address("192.168.1.1").allowed
    assert policy.decide_address("169.254.169.254").allowed  # the operator asked for it by name
    assert not policy.decide_address("169.254.1.1").allowed
    assert not EgressPolicy(allow=["0.0.0.0/0"]).decide_address("169.254.169.254").allowed


def test_check_raises_policy_error_with_the_address() -> None:
    with pytest.raises(PolicyError) as info:
        EgressPolicy().check_addresses("h", [ipaddress.ip_address("169.254.169.254")])
    assert info.value.address == "169.254.169.254"
    assert "denied by default" in str(info.value)


@given(ipv4_spellings())
def test_every_spelling_parses_to_its_address(case: tuple[ipaddress.IPv4Address, str]) -> None:
    addr, spelled = case
    parsed = parse_host_address(spelled)
    assert parsed is not None
    assert canonical_address(parsed) == addr


@given(ipv4_spellings(), st.lists(networks, max_size=4))
def test_decisions_on_spellings_match_ipaddress(
    case: tuple[ipaddress.IPv4Address, str], deny: list
) -> None:  # type: ignore[type-arg]
    addr, spelled = case
    policy = EgressPolicy(deny=deny, deny_default=())
    # An embedded IPv4 address is decided as itself and as the IPv6 form it was written in:
    # a deny on either denies.
    forms = {addr, parse_host_address(spelled)}
    expected = not any(a in net for net in deny for a in forms)
    assert policy.decide_host(spelled).allowed is expected


@given(addresses, st.lists(networks, max_size=4), st.lists(networks, max_size=4))
def test_decisions_agree_with_ipaddress_semantics(address, allow, deny) -> None:  # type: ignore[no-untyped-def]
    policy = EgressPolicy(allow=allow, deny=deny, deny_default=())
    canon = canonical_address(address)
    in_deny = any(a in n for n in deny for a in {address, canon})
    in_allow = any(a in n for n in allow for a in {address, canon})
    expected = not in_deny and (not allow or in_allow)
    assert policy.decide_address(address).allowed is expected


@given(addresses)
def test_default_policy_denies_exactly_the_default_networks(address) -> None:  # type: ignore[no-untyped-def]
    canon = canonical_address(address)
    defaults = [ipaddress.ip_network(n) for n in EgressPolicy().deny_default]
    denied = any(a in n for n in defaults for a in {address, canon})
    assert EgressPolicy().decide_address(address).allowed is not denied
    if canon.version == 4 and canon.is_link_local:
        assert denied


@given(st.text(max_size=30))
def test_parse_never_crashes(text: str) -> None:
    result = parse_host_address(text)
    assert result is None or isinstance(result, ipaddress.IPv4Address | ipaddress.IPv6Address)


# -- addresses embedded in IPv6 (issue 11, finding 6) ----------------------------------------------

EMBEDDED_METADATA = {
    "6to4": "2002:a9fe:a9fe::1",
    "6to4, any host part": "2002:a9fe:a9fe:1234:5678:9abc:def0:1",
    "Teredo client (XOR-ed)": "2001:0:4136:e378:8000:63bf:5601:5601",
    "NAT64 well-known": "64:ff9b::a9fe:a9fe",
    "NAT64 local-use /96": "64:ff9b:1::a9fe:a9fe",
    "NAT64 local-use /96, prefix bits set": "64:ff9b:1:ffff:ffff:ffff:a9fe:a9fe",
    "NAT64 local-use /48 layout": "64:ff9b:1:a9fe:a9:fe00::",
    "NAT64 local-use /56 layout": "64:ff9b:1:ffa9:fe:a9fe::",
    "NAT64 local-use /64 layout": "64:ff9b:1:ffff:a9:fea9:fe00:0",
    "IPv4-mapped": "::ffff:169.254.169.254",
    "IPv4-compatible": "::169.254.169.254",
}


@pytest.mark.parametrize("address", list(EMBEDDED_METADATA.values()), ids=list(EMBEDDED_METADATA))
def test_6to4_and_other_embedded_metadata_addresses_are_denied(address: str) -> None:
    decision = EgressPolicy().decide_address(address)
    assert not decision.allowed
    assert "169.254" in decision.reason
    assert not EgressPolicy().decide_host(f"[{address}]").allowed


async def test_6to4_address_of_the_metadata_service_is_never_dialled() -> None:
    connector = GuardedConnector()
    ctx = make_context(hosts={"sixtofour.test": ["2002:a9fe:a9fe::1"]}, connector=connector)
    for url in ("http://sixtofour.test/latest/meta-data/", "http://[2002:a9fe:a9fe::1]/"):
        result = await HttpProbe(url).check(ctx)
        assert result.status is Status.DOWN
        assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED, url
        assert "169.254.169.254" in result.error.message
    assert connector.dialled == [] and connector.refused == []


@pytest.mark.parametrize(
    "address",
    [
        "2002:c000:0201::1",  # 6to4 of 192.0.2.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, client 192.0.2.45
        "64:ff9b::192.0.2.1",
        "64:ff9b:1::c000:201",
        "64:ff9b:1:c000:2:100::",  # the /48 layout of 192.0.2.1
        "2001:db8::1",  # documentation, not Teredo
    ],
)
def test_embedded_addresses_that_are_allowed_stay_allowed(address: str) -> None:
    assert EgressPolicy().decide_address(address).allowed


def test_an_embedded_address_is_denied_by_a_deny_rule_for_its_ipv4() -> None:
    policy = EgressPolicy(deny=["10.0.0.0/8"])
    for address in ("2002:a00:1::1", "2001:0:4136:e378:8000:63bf:f5ff:fffe", "64:ff9b::10.0.0.1"):
        decision = policy.decide_address(address)
        assert not decision.allowed, address
        assert "10.0.0.0/8" in decision.reason
    # The operator can still allow the metadata service, in every form, by naming it.
    allowed = EgressPolicy(allow=["169.254.169.254/32", "2002::/16", "2001::/32"])
    for address in ("2002:a9fe:a9fe::1", "2001:0:4136:e378:8000:63bf:5601:5601"):
        assert allowed.decide_address(address).allowed, address
    assert not allowed.decide_address("2002:a9fe:101::1").allowed  # 169.254.1.1 is not named


def _full_width(text: str) -> str:
    """``text`` with its ASCII letters, digits and punctuation in their full-width forms."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.mark.parametrize(
    "host",
    [
        _full_width("169.254.169.254"),
        "169\u3002254\u3002169\u3002254",  # ideographic full stops
        _full_width("0xa9fea9fe"),
        "[" + _full_width("::ffff:a9fe:a9fe") + "]",
    ],
)
def test_full_width_spellings_are_decided_as_the_address(host: str) -> None:
    assert parse_host_address(host) is not None, host
    assert not EgressPolicy().decide_host(host).allowed


@given(ipv4)
def test_an_embedded_ipv4_is_decided_like_the_ipv4(address: ipaddress.IPv4Address) -> None:
    policy = EgressPolicy()
    denied = not policy.decide_address(address).allowed
    n = int(address)
    forms = [
        ipaddress.IPv6Address(0x2002 << 112 | n << 80 | 1),  # 6to4
        ipaddress.IPv6Address(0x20010000 << 96 | (n ^ 0xFFFFFFFF)),  # Teredo client
        ipaddress.IPv6Address(0x64FF9B << 96 | n),  # NAT64
    ]
    for form in forms:
        if denied:
            assert not policy.decide_address(form).allowed, form


def test_oracle_cloud_legacy_metadata_address_is_denied_by_default() -> None:
    # Found by the SSRF table of tests/hostile: 192.0.0.192 was allowed and dialled.
    for host in ("192.0.0.192", "3221225664", "[::ffff:192.0.0.192]", "[2002:c000:c0::1]"):
        decision = EgressPolicy().decide_host(host)
        assert not decision.allowed, host
        assert "192.0.0.192/32" in decision.reason
