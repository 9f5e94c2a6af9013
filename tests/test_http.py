"""HttpProbe against in-process servers on loopback: a table of scenarios, as bbe's http_test."""

from __future__ import annotations

import json
import ssl
import time
import tracemalloc

import pytest
import trustme

from h2server import H2Server
from probekit import (
    BasicAuth,
    BodyContains,
    BodyMatches,
    CertExpiry,
    DefinitionError,
    ErrorKind,
    HeaderMatches,
    HttpProbe,
    JsonPath,
    ProbeContext,
    Proxy,
    ResponseTime,
    Secret,
    Status,
    StatusIn,
    Timeouts,
    TlsForbidden,
    TlsOptions,
    TlsRequired,
)
from proxy import LoopbackProxy
from servers import HttpServer, _gzip_bomb, closed_port, serving


async def test_https_up_has_all_five_phases(
    https_server: HttpServer, ctx: ProbeContext, ca_pem: str
) -> None:
    result = await HttpProbe(
        https_server.url("/ok", host="localhost"), tls=TlsOptions(ca_data=ca_pem)
    ).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "tls", "processing", "transfer")
    assert all(p.duration > 0 for p in result.phases)
    starts = [p.start for p in result.phases]
    assert starts == sorted(starts)
    assert result.metrics["status_code"] == 200
    assert result.tls is not None and result.tls.version.startswith("TLSv1.")
    assert result.tls.chain and "localhost" in result.tls.chain[0].sans
    assert result.metrics["cert_days_left"] > 30
    assert result.address == f"127.0.0.1:{https_server.port}"


async def test_plain_http_has_four_phases(http_server: HttpServer, ctx: ProbeContext) -> None:
    result = await HttpProbe(http_server.url("/ok", host="localhost")).check(ctx)
    assert result.status is Status.UP
    assert result.phase_names() == ("resolve", "connect", "processing", "transfer")
    assert all(p.duration > 0 for p in result.phases)
    assert result.tls is None


async def test_status_500_is_down_naming_the_status(
    http_server: HttpServer, ctx: ProbeContext
) -> None:
    result = await HttpProbe(http_server.url("/status/500")).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert "500" in result.error.message
    (outcome,) = result.assertions
    assert not outcome.passed and outcome.observed == "status 500"


async def test_closed_port_is_connect_error(ctx: ProbeContext) -> None:
    result = await HttpProbe(f"http://localhost:{closed_port()}/").check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.CONNECT
    assert result.error.phase == "connect"


async def test_unknown_host_is_dns_error(ctx: ProbeContext) -> None:
    result = await HttpProbe("http://nowhere.invalid/").check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.DNS
    assert result.error.phase == "resolve"


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("self_signed_tls", "unable to get local issuer"),
        ("wrong_name_tls", "Hostname mismatch"),
        ("expired_tls", "expired"),
    ],
)
async def test_bad_certificates_are_tls_errors(
    request: pytest.FixtureRequest, fixture: str, message: str, ctx: ProbeContext, ca_pem: str
) -> None:
    server_ctx: ssl.SSLContext = request.getfixturevalue(fixture)
    async with serving(HttpServer(server_ctx)) as server:
        result = await HttpProbe(
            server.url("/ok", host="localhost"), tls=TlsOptions(ca_data=ca_pem)
        ).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"
    assert message in result.error.message
    assert result.tls is not None and not result.tls.verified  # the chain was still reported
    if fixture == "expired_tls":
        assert result.metrics["cert_days_left"] < 0


async def test_verify_off_accepts_self_signed(
    self_signed_tls: ssl.SSLContext, ctx: ProbeContext
) -> None:
    async with serving(HttpServer(self_signed_tls)) as server:
        result = await HttpProbe(
            server.url("/ok", host="localhost"), tls=TlsOptions(verify=False)
        ).check(ctx)
    assert result.status is Status.UP
    assert result.tls is not None and result.tls.verified is False


async def test_silent_server_times_out_in_processing(
    http_server: HttpServer, ctx: ProbeContext
) -> None:
    probe = HttpProbe(http_server.url("/silent", host="localhost"), timeouts=Timeouts(total=0.5))
    began = time.monotonic()
    result = await probe.check(ctx)
    took = time.monotonic() - began
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "processing"
    assert took < 0.5 + 0.1
    assert result.phase_names()[-1] == "processing"


async def test_read_timeout_applies_per_read(http_server: HttpServer, ctx: ProbeContext) -> None:
    probe = HttpProbe(http_server.url("/slow-body"), timeouts=Timeouts(total=5, read=0.2))
    began = time.monotonic()
    result = await probe.check(ctx)
    assert time.monotonic() - began < 1.0
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "transfer"


async def test_endless_body_stops_at_cap_with_flat_memory(
    http_server: HttpServer, ctx: ProbeContext
) -> None:
    tracemalloc.start()
    try:
        result = await HttpProbe(
            http_server.url("/infinite"), max_body_bytes=256 * 1024, fail_on_body_limit=True
        ).check(ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert "max_body_bytes" in result.error.message
    assert result.metrics["body_truncated"] == 1
    assert result.metrics["body_bytes"] == 256 * 1024
    assert result.metrics["wire_bytes"] < 256 * 1024 + 128 * 1024  # stopped within a read or two
    assert peak < 4 * 1024 * 1024, f"peak traced memory {peak} bytes"


async def test_cap_truncates_by_default(http_server: HttpServer, ctx: ProbeContext) -> None:
    probe = HttpProbe(
        http_server.url("/infinite"), max_body_bytes=1000, assertions=(BodyContains("xxx"),)
    )
    result = await probe.check(ctx)
    assert result.status is Status.UP
    assert result.metrics["body_truncated"] == 1
    assert result.metrics["body_bytes"] == 1000


async def test_gzip_bomb_is_capped_after_decompression(
    http_server: HttpServer, ctx: ProbeContext
) -> None:
    _gzip_bomb()  # built once, before measuring: only the probe's memory counts
    tracemalloc.start()
    try:
        result = await HttpProbe(http_server.url("/gzip-bomb"), fail_on_body_limit=True).check(ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status is Status.DOWN
    assert result.error is not None and "max_body_bytes" in result.error.message
    assert result.metrics["body_bytes"] == 1024 * 1024
    assert peak < 16 * 1024 * 1024, f"peak traced memory {peak} bytes"


async def test_gzip_body_is_decoded_for_assertions(
    http_server: HttpServer, ctx: ProbeContext
) -> None:
    result = await HttpProbe(
        http_server.url("/gzip"), assertions=(BodyContains("compressed hello"),)
    ).check(ctx)
    assert result.status is Status.UP
    assert result.metrics["wire_bytes"] != result.metrics["body_bytes"]


async def test_redirects_are_followed(http_server: HttpServer, ctx: ProbeContext) -> None:
    result = await HttpProbe(http_server.url("/chain/3")).check(ctx)
    assert result.status is Status.UP
    assert result.metrics["redirects"] == 4
    assert http_server.connections == 5  # a fresh connection for every hop
    assert result.phase_names() == ("resolve", "connect", "processing", "transfer")
    assert len([p for p in result.phases if p.name == "connect"]) == 5


async def test_redirect_limit(http_server: HttpServer, ctx: ProbeContext) -> None:
    result = await HttpProbe(http_server.url("/chain/20"), max_redirects=3).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert "more than 3 redirects" in result.error.message


async def test_redirect_not_followed_when_disabled(
    http_server: HttpServer, ctx: ProbeContext
) -> None:
    url = http_server.url("/chain/1")
    down = await HttpProbe(url, follow_redirects=False).check(ctx)
    up = await HttpProbe(url, follow_redirects=False, assertions=(StatusIn(codes=(302,)),)).check(
        ctx
    )
    assert down.status is Status.DOWN and down.metrics["status_code"] == 302
    assert up.status is Status.UP


async def test_method_headers_body_query_are_sent(
    http_server: HttpServer, ctx: ProbeContext
) -> None:
    probe = HttpProbe(
        http_server.url("/echo?a=1"),
        method="POST",
        headers={"X-Probe": "yes"},
        query={"b": "two words"},
        body='{"k": 1}',
        host_header="virtual.example",
        assertions=(JsonPath("$.method", "eq", "POST"),),
    )
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    seen = http_server.requests[-1]
    assert seen.target == "/echo?a=1&b=two+words"
    assert seen.headers["x-probe"] == "yes"
    assert seen.headers["host"] == "virtual.example"
    assert seen.body == b'{"k": 1}'


async def test_request_head_on_the_wire(http_server: HttpServer, ctx: ProbeContext) -> None:
    """Non-ASCII paths go out percent-encoded (UTF-8); Latin-1 header values go out as is."""
    probe = HttpProbe(http_server.url("/echo?q=caf\u00e9"), headers={"X-Name": "M\u00fcller"})
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    seen = http_server.requests[-1]
    assert seen.target == "/echo?q=caf%C3%A9"
    assert seen.headers["x-name"] == "M\u00fcller"
    assert seen.headers["connection"] == "close"
    assert seen.headers["user-agent"].startswith("probekit/")


def test_international_host_names_are_idna_encoded() -> None:
    probe = HttpProbe("http://b\u00fccher.test/")
    assert probe.host == "xn--bcher-kva.test"


async def test_basic_and_bearer_auth(http_server: HttpServer, ctx: ProbeContext) -> None:
    await HttpProbe(http_server.url("/echo"), basic_auth=BasicAuth("ops", Secret("pa55"))).check(
        ctx
    )
    assert http_server.requests[-1].headers["authorization"] == "Basic b3BzOnBhNTU="
    await HttpProbe(http_server.url("/echo"), bearer_token=Secret("tok-123")).check(ctx)
    assert http_server.requests[-1].headers["authorization"] == "Bearer tok-123"


async def test_credentials_not_sent_to_another_origin(ctx: ProbeContext) -> None:
    async with serving(HttpServer()) as first, serving(HttpServer()) as second:
        probe = HttpProbe(
            first.url(f"/redirect?to={second.url('/echo')}"), bearer_token=Secret("only-for-first")
        )
        result = await probe.check(ctx)
        assert result.status is Status.UP
        assert first.requests[-1].headers["authorization"] == "Bearer only-for-first"
        assert "authorization" not in second.requests[-1].headers


ASSERTION_TABLE = [
    ("/ok", BodyContains("hello"), Status.UP),
    ("/ok", BodyContains("nope"), Status.DOWN),
    ("/ok", BodyContains("hello", negate=True), Status.DOWN),
    ("/ok", BodyMatches(r"hel+o\s+probe"), Status.UP),
    ("/ok", BodyMatches(r"error", negate=True), Status.UP),
    ("/ok", BodyMatches(r"probekit$", negate=True), Status.DOWN),
    ("/json", JsonPath("$.status", "eq", "ok"), Status.UP),
    ("/json", JsonPath("$.db.latency_ms", "lt", 50), Status.UP),
    ("/json", JsonPath("$.db.latency_ms", "gt", 50), Status.DOWN),
    ("/json", JsonPath("$.items[-1]", "eq", 3), Status.UP),
    ("/json", JsonPath("$.items", "contains", 2), Status.UP),
    ("/json", JsonPath("$['db']['name']", "matches", "^ma"), Status.UP),
    ("/json", JsonPath("$.missing", "absent"), Status.UP),
    ("/json", JsonPath("$.missing", "exists"), Status.DOWN),
    ("/ok", JsonPath("$.x", "exists"), Status.DOWN),  # body is not JSON
    ("/ok", HeaderMatches("Content-Type", "^text/plain"), Status.UP),
    ("/ok", HeaderMatches("X-Missing", "x"), Status.DOWN),
    ("/ok", HeaderMatches("X-Missing", "x", allow_missing=True), Status.UP),
    ("/ok", HeaderMatches("X-Test", "yes", negate=True), Status.DOWN),
    ("/ok", ResponseTime(warn=0.000001), Status.DEGRADED),
    ("/ok", ResponseTime(warn=0.000001, crit=0.000002), Status.DOWN),
    ("/ok", ResponseTime(warn=5, crit=10), Status.UP),
    ("/ok", TlsForbidden(), Status.UP),
    ("/ok", TlsRequired(), Status.DOWN),
    ("/status/418", StatusIn.parse("400-499"), Status.UP),
    ("/status/418", StatusIn(codes=(200,)), Status.DOWN),
]


@pytest.mark.parametrize(("path", "assertion", "expected"), ASSERTION_TABLE)
async def test_assertion_table(
    http_server: HttpServer, ctx: ProbeContext, path: str, assertion: object, expected: Status
) -> None:
    probe = HttpProbe(http_server.url(path), assertions=(assertion,))  # type: ignore[arg-type]
    result = await probe.check(ctx)
    assert result.status is expected, result.summary()
    if expected is not Status.UP:
        assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
        failed = [a for a in result.assertions if not a.passed]
        assert failed and failed[0].expected and failed[0].observed
    else:
        assert all(a.passed for a in result.assertions)


async def test_cert_expiry_thresholds(
    https_server: HttpServer, ctx: ProbeContext, ca_pem: str
) -> None:
    url = https_server.url("/ok", host="localhost")
    tls = TlsOptions(ca_data=ca_pem)
    ok = await HttpProbe(url, tls=tls, assertions=(CertExpiry(warn_days=30, crit_days=7),)).check(
        ctx
    )
    warn = await HttpProbe(url, tls=tls, assertions=(CertExpiry(warn_days=10**9),)).check(ctx)
    crit = await HttpProbe(
        url, tls=tls, assertions=(CertExpiry(warn_days=10**9, crit_days=10**8),)
    ).check(ctx)
    assert (ok.status, warn.status, crit.status) == (Status.UP, Status.DEGRADED, Status.DOWN)
    plain = await HttpProbe("http://localhost:1/", assertions=(CertExpiry(crit_days=1),)).check(ctx)
    assert plain.status is Status.DOWN


async def test_sni_override_and_tls_version_bounds(
    wrong_name_tls: ssl.SSLContext, ctx: ProbeContext, ca_pem: str
) -> None:
    async with serving(HttpServer(wrong_name_tls)) as server:
        url = server.url("/ok", host="localhost")
        tls = TlsOptions(ca_data=ca_pem, server_name="other.example", max_version="TLSv1.2")
        result = await HttpProbe(url, tls=tls).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.tls is not None and result.tls.version == "TLSv1.2"
    assert result.tls.server_name == "other.example"


async def test_client_certificate(ca: trustme.CA, ca_pem: str, ctx: ProbeContext, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client = ca.issue_cert("probe-client@example")
    cert_file = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    async with serving(HttpServer(server_ctx)) as server:
        url = server.url("/ok", host="localhost")
        without = await HttpProbe(url, tls=TlsOptions(ca_data=ca_pem)).check(ctx)
        with_cert = await HttpProbe(
            url, tls=TlsOptions(ca_data=ca_pem, client_cert=str(cert_file))
        ).check(ctx)
    assert without.status is Status.DOWN
    assert without.error is not None and without.error.kind in (ErrorKind.TLS, ErrorKind.PROTOCOL)
    assert with_cert.status is Status.UP, with_cert.summary()


async def test_http2_over_tls_with_alpn(ca: trustme.CA, ctx: ProbeContext, ca_pem: str) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # its own: ALPN is set on it
    ca.issue_cert("localhost").configure_cert(server_ctx)
    async with H2Server(server_ctx) as server:
        url = f"https://localhost:{server.port}/h2path"
        result = await HttpProbe(
            url,
            http_version="2",
            tls=TlsOptions(ca_data=ca_pem),
            assertions=(BodyContains("/h2path"), HeaderMatches("x-proto", "h2")),
        ).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["http_version"] == 2.0
    assert result.tls is not None and result.tls.alpn == "h2"
    assert result.phase_names() == ("resolve", "connect", "tls", "processing", "transfer")
    assert server.requests[0][b":authority"] == f"localhost:{server.port}".encode()


async def test_http2_prior_knowledge_on_plain_text(ctx: ProbeContext) -> None:
    async with H2Server(None) as server:
        result = await HttpProbe(f"http://localhost:{server.port}/x", http_version="2").check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["http_version"] == 2.0


async def test_http2_requested_falls_back_to_http11(
    https_server: HttpServer, ctx: ProbeContext, ca_pem: str
) -> None:
    result = await HttpProbe(
        https_server.url("/ok", host="localhost"), http_version="2", tls=TlsOptions(ca_data=ca_pem)
    ).check(ctx)
    assert result.status is Status.UP
    assert result.metrics["http_version"] == 1.1


async def test_https_through_connect_proxy(
    https_server: HttpServer, ctx: ProbeContext, ca_pem: str
) -> None:
    async with LoopbackProxy(resolve={"localhost": "127.0.0.1"}) as proxy:
        probe = HttpProbe(
            https_server.url("/ok", host="localhost"),
            tls=TlsOptions(ca_data=ca_pem),
            proxy=Proxy(proxy.url),
        )
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert proxy.requests == [f"CONNECT localhost:{https_server.port} HTTP/1.1"]
    assert "proxy" in result.phase_names() and "tls" in result.phase_names()
    assert result.address == f"127.0.0.1:{proxy.port}"


async def test_plain_http_through_proxy(http_server: HttpServer, ctx: ProbeContext) -> None:
    async with LoopbackProxy() as proxy:
        result = await HttpProbe(http_server.url("/ok"), proxy=Proxy(proxy.url)).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert proxy.requests == [f"GET {http_server.url('/ok')} HTTP/1.1"]


async def test_proxy_authentication(
    https_server: HttpServer, ctx: ProbeContext, ca_pem: str
) -> None:
    async with LoopbackProxy(require_auth=b"Basic dTpw") as proxy:
        url = https_server.url("/ok")
        denied = await HttpProbe(url, tls=TlsOptions(ca_data=ca_pem), proxy=Proxy(proxy.url)).check(
            ctx
        )
        allowed = await HttpProbe(
            url,
            tls=TlsOptions(ca_data=ca_pem),
            proxy=Proxy(proxy.url, username="u", password=Secret("p")),
        ).check(ctx)
    assert denied.error is not None and denied.error.kind is ErrorKind.AUTH
    assert allowed.status is Status.UP, allowed.summary()


async def test_garbage_response_is_protocol_error(ctx: ProbeContext) -> None:
    async def garbage(_req, writer):  # type: ignore[no-untyped-def]
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    async with serving(HttpServer(handler=garbage)) as server:
        result = await HttpProbe(server.url("/")).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL


async def test_result_is_json_serialisable(http_server: HttpServer, ctx: ProbeContext) -> None:
    from probekit import result_from_json, result_to_json

    result = await HttpProbe(
        http_server.url("/json"), assertions=(JsonPath("$.status", "eq", "ok"),)
    ).check(ctx)
    text = result_to_json(result)
    assert result_from_json(text) == result
    assert json.loads(text)["phases"][0]["name"] == "resolve"


INVALID = [
    ({"url": "ftp://x/"}, "url"),
    ({"url": "http:///nohost"}, "url"),
    ({"url": "http://user:pw@host/"}, "url"),
    ({"url": "http://host:99999/"}, "url"),
    ({"url": "http://host/\r\nX: y"}, "url"),
    ({"url": "http://h/", "method": "get"}, "method"),
    ({"url": "http://h/", "max_redirects": -1}, "max_redirects"),
    ({"url": "http://h/", "max_body_bytes": "big"}, "max_body_bytes"),
    ({"url": "http://h/", "headers": {"X": "a\r\nb"}}, "headers[0]"),
    ({"url": "http://h/", "headers": {"X Y": "a"}}, "headers[0]"),
    ({"url": "http://h/", "headers": {"": "a"}}, "headers[0]"),
    ({"url": "http://h/", "headers": [("Ok", "1"), ("X:", "a")]}, "headers[1]"),
    ({"url": "http://h/", "headers": {"X": "snowman \u2603"}}, "headers[0]"),
    ({"url": "http://h/", "host_header": "a b"}, "host_header"),
    ({"url": "http://h/", "host_header": ""}, "host_header"),
    ({"url": "http://h/", "host_header": "caf\u00e9.test"}, "host_header"),
    ({"url": "http://h/", "http_version": "3"}, "http_version"),
    ({"url": "http://h/", "assertions": ("not an assertion",)}, "assertions[0]"),
    (
        {
            "url": "http://h/",
            "basic_auth": BasicAuth("u", Secret("p")),
            "bearer_token": Secret("t"),
        },
        "bearer_token",
    ),
]


@pytest.mark.parametrize(("kwargs", "path"), INVALID)
def test_invalid_definitions(kwargs: dict[str, object], path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        HttpProbe(**kwargs)  # type: ignore[arg-type]
    assert info.value.path == path


@pytest.mark.parametrize(
    ("factory", "path"),
    [
        (lambda: BodyMatches("("), "pattern"),
        (lambda: HeaderMatches("X", "[z-a]"), "pattern"),
        (lambda: JsonPath("a.b"), "path"),
        (lambda: JsonPath("$.a[", "eq", 1), "path"),
        (lambda: JsonPath("$.a", "approx", 1), "op"),  # type: ignore[arg-type]
        (lambda: ResponseTime(), "warn"),
        (lambda: ResponseTime(warn=2, crit=1), "warn"),
        (lambda: CertExpiry(warn_days=1, crit_days=5), "warn_days"),
        (lambda: StatusIn(), "codes"),
        (lambda: StatusIn(codes=(42,)), "codes[0]"),
        (lambda: StatusIn.parse("2xx"), "codes"),
        (lambda: TlsOptions(min_version="SSLv3"), "min_version"),  # type: ignore[arg-type]
        (lambda: TlsOptions(min_version="TLSv1.3", max_version="TLSv1.2"), "min_version"),
        (lambda: Timeouts(total=0), "total"),
        (lambda: Timeouts(connect=-1), "connect"),
        (lambda: Proxy("socks5://p:1"), "proxy"),
    ],
)
def test_invalid_assertions_and_options(factory, path: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError) as info:
        factory()
    assert info.value.path == path
