"""Regression tests for the HTTP probe's safety and honesty faults of issue 11.

Each test is named after the fault it would have caught. Every server here is on loopback, and
every check dials through the guarded connector of ``conftest.py``.
"""

from __future__ import annotations

import base64
from typing import Any

import attrs
import pytest

from probekit import (
    BasicAuth,
    DefinitionError,
    DefinitionErrors,
    ErrorKind,
    HttpProbe,
    ProbeContext,
    Proxy,
    Runner,
    Secret,
    Status,
    TlsOptions,
    build_probe,
)
from servers import GuardedConnector, HttpServer

CANARY = "Canary-pw-7f3a9"

# -- definition errors never repeat a URL's password --------------------------------------------

URLS_WITH_A_PASSWORD = [
    f"ftp://u:{CANARY}@db.internal/",
    f"http://u:{CANARY}@/x",
    f"htps://u:{CANARY}@intranet.test/",
    f"http://u:{CANARY}@b\u00fccher..test/",
    f"http://u:{CANARY}@host:99999/",
    f"http://u:{CANARY}@host:port/",
    f"http://u:{CANARY}@[::1/",
    f"http://u:pa/{CANARY}@host/",
    f"http://u:{CANARY}:more@host/",
    f"http:u:{CANARY}@host/",
    f"u:{CANARY}@host",
    f"http://u:{CANARY}@host/ x",
]


def _assert_no_canary(exc: BaseException) -> None:
    texts = [str(exc), repr(exc)]
    for error in getattr(exc, "errors", ()):
        texts += [str(error), repr(error), error.message]
    for text in texts:
        assert CANARY not in text, text


@pytest.mark.parametrize("url", URLS_WITH_A_PASSWORD)
def test_url_definition_error_does_not_repeat_the_password(url: str) -> None:
    with pytest.raises(DefinitionError) as info:
        HttpProbe(url)
    assert info.value.path == "url"
    _assert_no_canary(info.value)
    with pytest.raises(DefinitionErrors) as many:
        build_probe({"kind": "http", "url": url})
    assert [e.path for e in many.value.errors] == ["url"]
    _assert_no_canary(many.value)


@pytest.mark.parametrize(
    "url",
    [
        f"https://u:{CANARY}@proxy:3128",
        f"http://u:{CANARY}@proxy:3128",
        f"socks5://u:{CANARY}@proxy:1080",
        f"http://u:{CANARY}@proxy:99999",
        f"http://u:{CANARY}@/",
    ],
)
def test_proxy_definition_error_does_not_repeat_the_password(url: str) -> None:
    with pytest.raises(DefinitionError) as info:
        Proxy(url)
    assert info.value.path == "proxy"
    _assert_no_canary(info.value)
    with pytest.raises(DefinitionErrors) as many:
        build_probe({"kind": "http", "url": "http://h/", "proxy": {"url": url}})
    _assert_no_canary(many.value)


def test_url_definition_error_masks_the_password_but_names_the_rest() -> None:
    with pytest.raises(DefinitionError) as info:
        HttpProbe(f"ftp://u:{CANARY}@db.internal/")
    assert "'ftp://u:<secret>@db.internal/'" in info.value.message


# -- a passed deadline never dials ---------------------------------------------------------------


async def test_passed_deadline_never_dials(
    http_server: HttpServer, ctx: ProbeContext, connector: GuardedConnector
) -> None:
    now = ctx.clock.monotonic()
    for deadline in (now - 1.0, now):
        late = attrs.evolve(ctx, deadline=deadline)
        result = await HttpProbe(http_server.url("/ok")).check(late)
        assert result.status is Status.DOWN
        assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
        assert result.phases == ()
    assert connector.dialled == []
    assert http_server.connections == 0


async def test_runner_probes_starting_after_the_deadline_never_dial(
    http_server: HttpServer, ctx: ProbeContext, connector: GuardedConnector
) -> None:
    # One slot: the first probe waits on a silent server until the shared deadline passes, so
    # every later probe starts after it.
    deadline = ctx.clock.monotonic() + 0.3
    probes = [HttpProbe(http_server.url("/silent"))] + [
        HttpProbe(http_server.url(f"/ok?{i}")) for i in range(20)
    ]
    async with Runner(max_concurrency=1, context=ctx.with_deadline(deadline)) as runner:
        results = await runner.run_all(probes)
    finished = ctx.clock.monotonic()
    assert all(r.error is not None and r.error.kind is ErrorKind.TIMEOUT for r in results)
    assert connector.dialled == [("127.0.0.1", http_server.port)]  # the silent one only
    assert [r.target for r in http_server.requests] == ["/silent"]
    assert finished - deadline < 0.1


# -- credential types are settled at definition time --------------------------------------------


async def test_plain_string_credentials_are_taken_as_secrets_at_definition(
    http_server: HttpServer, ctx: ProbeContext
) -> None:
    bearer = HttpProbe(http_server.url("/echo"), bearer_token=CANARY)  # type: ignore[arg-type]
    basic = HttpProbe(http_server.url("/echo"), basic_auth=BasicAuth("ops", CANARY))  # type: ignore[arg-type]
    assert isinstance(bearer.bearer_token, Secret)
    assert basic.basic_auth is not None and isinstance(basic.basic_auth.password, Secret)
    proxied = HttpProbe("http://h/", proxy=Proxy("http://p:3128", "u", CANARY))  # type: ignore[arg-type]
    tls = TlsOptions(client_key_password=CANARY)  # type: ignore[arg-type]
    assert proxied.proxy is not None and isinstance(proxied.proxy.password, Secret)
    assert isinstance(tls.client_key_password, Secret)
    assert CANARY not in repr(bearer) + repr(basic) + repr(proxied) + repr(tls)
    first = await bearer.check(ctx)
    assert first.status is Status.UP, first.summary()
    assert http_server.requests[-1].headers["authorization"] == f"Bearer {CANARY}"
    second = await basic.check(ctx)
    assert second.status is Status.UP, second.summary()
    expected = base64.b64encode(f"ops:{CANARY}".encode()).decode()
    assert http_server.requests[-1].headers["authorization"] == f"Basic {expected}"


@pytest.mark.parametrize(
    ("factory", "path"),
    [
        (lambda: HttpProbe("http://h/", bearer_token=12345), "bearer_token"),
        (lambda: HttpProbe("http://h/", bearer_token=b"tok"), "bearer_token"),
        (lambda: HttpProbe("http://h/", basic_auth=("u", "p")), "basic_auth"),
        (lambda: BasicAuth("u", 5), "password"),
        (lambda: BasicAuth(None, Secret("p")), "username"),
        (lambda: BasicAuth(Secret("u"), Secret("p")), "username"),
        (lambda: HttpProbe("http://h/", proxy=Proxy("http://p:3128", "u", 5)), "proxy.password"),
        (lambda: HttpProbe("http://h/", proxy=Proxy("http://p:3128", 5)), "proxy.username"),
        (lambda: HttpProbe("http://h/", proxy="http://p:3128"), "proxy"),
        (lambda: TlsOptions(client_key_password=5), "client_key_password"),
    ],
)
def test_wrong_credential_types_are_refused_at_definition(factory: Any, path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        factory()
    assert info.value.path == path
