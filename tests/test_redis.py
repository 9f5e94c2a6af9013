"""RedisProbe against an in-process fake Redis server on loopback that speaks enough RESP2."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probekit import (
    BodyContains,
    BodyMatches,
    DefinitionError,
    DefinitionErrors,
    ErrorKind,
    ProbeContext,
    ResponseTime,
    Result,
    Secret,
    Status,
    Timeouts,
    TlsOptions,
    build_probe,
    probe_to_dict,
    result_to_json,
)
from probekit.probes import get_kind
from probekit.probes.redis import INFO_LIMIT, KIND, LINE_LIMIT, RedisProbe
from servers import TcpServer, make_context

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

PASSWORD = "hunter2-canary-5f1d9c"  # a canary: it must show up nowhere but on the wire
INFO = (
    b"# Server\r\n"
    b"redis_version:7.2.4\r\n"
    b"redis_git_sha1:00000000\r\n"
    b"redis_mode:standalone\r\n"
    b"os:Linux 6.1.0 x86_64\r\n"
    b"tcp_port:6379\r\n"
    b"uptime_in_seconds:3600\r\n"
    b"uptime_in_days:0\r\n"
)


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


@attrs.define
class FakeRedis:
    """The server side of one test: a password (and ACL user) to require, canned replies, and
    the commands it received. A ``None`` reply means "say nothing, keep the connection open";
    ``close_on_connect`` drops every connection before reading a byte, ``hang_up_after`` drops
    it after replying to that command."""

    password: str | None = None
    username: str = "default"
    auth_error: bytes = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    ping: bytes | None = b"+PONG\r\n"
    info: bytes | None = bulk(INFO)
    close_on_connect: bool = False
    hang_up_after: bytes | None = None
    commands: list[list[bytes]] = attrs.field(factory=list)

    async def __call__(self, reader: Reader, writer: Writer) -> None:
        if self.close_on_connect:
            return
        authenticated = self.password is None
        while (command := await read_command(reader)) is not None:
            self.commands.append(command)
            name = command[0].upper()
            if name == b"AUTH":
                *user, password = command[1:]
                if self.password is None:
                    reply = b"-ERR AUTH <password> called without any password configured\r\n"
                elif (user or [b"default"]) == [self.username.encode()] and (
                    password == self.password.encode()
                ):
                    authenticated, reply = True, b"+OK\r\n"
                else:
                    reply = self.auth_error
            elif not authenticated:
                reply = b"-NOAUTH Authentication required.\r\n"
            elif name == b"PING" and self.ping is not None:
                reply = self.ping
            elif name == b"INFO" and self.info is not None:
                reply = self.info
            elif name in (b"PING", b"INFO"):
                await asyncio.sleep(3600)
                return
            else:
                reply = b"-ERR unknown command\r\n"
            writer.write(reply)
            await writer.drain()
            if name == self.hang_up_after:
                return


async def read_command(reader: Reader) -> list[bytes] | None:
    """One command: a RESP array of bulk strings, or an inline command line."""
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        return line.split()
    parts = []
    for _ in range(int(line[1:])):
        length = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(length + 2))[:-2])
    return parts


async def check(server: FakeRedis, ctx: ProbeContext, **fields: Any) -> Result:
    async with TcpServer(server) as listening:
        probe = RedisProbe("127.0.0.1", listening.port, **fields)
        return await probe.check(ctx)


# -- up ----------------------------------------------------------------------------------------

UP: list[Any] = [
    pytest.param(FakeRedis(), {}, ("resolve", "connect", "command", "info"), id="no-password"),
    pytest.param(
        FakeRedis(password=PASSWORD),
        {"password": Secret(PASSWORD)},
        ("resolve", "connect", "auth", "command", "info"),
        id="password",
    ),
    pytest.param(
        FakeRedis(password=PASSWORD, username="monitor"),
        {"password": Secret(PASSWORD), "username": "monitor"},
        ("resolve", "connect", "auth", "command", "info"),
        id="acl-user",
    ),
]


@pytest.mark.parametrize(("server", "fields", "phases"), UP)
async def test_up(
    server: FakeRedis, fields: dict[str, Any], phases: tuple[str, ...], ctx: ProbeContext
) -> None:
    result = await check(server, ctx, **fields)
    assert result.status is Status.UP, result.summary()
    assert result.error is None
    assert result.kind == "redis"
    assert result.phase_names() == phases
    assert result.metrics["redis_version"] == 70204
    assert result.metrics["uptime_seconds"] == 3600
    assert [(a.name, a.passed) for a in result.assertions] == [("pong", True)]
    assert server.commands[-2:] == [[b"PING"], [b"INFO", b"server"]]


async def test_auth_sends_the_acl_user_and_password(ctx: ProbeContext) -> None:
    server = FakeRedis(password=PASSWORD, username="monitor")
    await check(server, ctx, password=Secret(PASSWORD), username="monitor")
    assert server.commands[0] == [b"AUTH", b"monitor", PASSWORD.encode()]


async def test_without_info_there_is_no_info_phase_and_no_version(ctx: ProbeContext) -> None:
    server = FakeRedis(info=None)  # INFO would never be answered
    result = await check(server, ctx, info=False, timeouts=Timeouts(total=2))
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "command")
    assert "redis_version" not in result.metrics
    assert server.commands == [[b"PING"]]


@pytest.mark.parametrize(
    ("line", "number"),
    [(b"7.2.4", 70204), (b"6.0.16", 60016), (b"5.0.14", 50014), (b"7.4.0-rc1", 70400)],
)
async def test_version_metric(line: bytes, number: int, ctx: ProbeContext) -> None:
    info = INFO.replace(b"7.2.4", line)
    result = await check(FakeRedis(info=bulk(info)), ctx)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["redis_version"] == number


async def test_odd_info_values_are_left_out(ctx: ProbeContext) -> None:
    info = bulk("redis_version:unstable\r\nuptime_in_seconds:²\r\n".encode())
    result = await check(FakeRedis(info=info), ctx)
    assert result.status is Status.UP, result.summary()
    assert "redis_version" not in result.metrics
    assert "uptime_seconds" not in result.metrics


async def test_info_without_a_version_is_up_without_the_metric(ctx: ProbeContext) -> None:
    result = await check(FakeRedis(info=bulk(b"# Server\r\nuptime_in_seconds:5\r\n")), ctx)
    assert result.status is Status.UP, result.summary()
    assert "redis_version" not in result.metrics
    assert result.metrics["uptime_seconds"] == 5


async def test_rediss_has_a_tls_phase(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    async with TcpServer(FakeRedis(), ssl_context=good_tls) as server:
        probe = RedisProbe("localhost", server.port, tls=TlsOptions(ca_data=ca_pem))
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "tls", "command", "info")
    assert result.tls is not None
    assert result.metrics["redis_version"] == 70204


async def test_rediss_untrusted_certificate_is_down_tls(
    ctx: ProbeContext, self_signed_tls: ssl.SSLContext
) -> None:
    async with TcpServer(FakeRedis(), ssl_context=self_signed_tls) as server:
        result = await RedisProbe("localhost", server.port, tls=TlsOptions()).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"


# -- down --------------------------------------------------------------------------------------

DOWN: list[Any] = [
    pytest.param(
        FakeRedis(password="other"),
        {"password": Secret(PASSWORD)},
        ErrorKind.AUTH,
        "auth",
        "WRONGPASS",
        id="wrong-password",
    ),
    pytest.param(
        FakeRedis(password="other", auth_error=b"-ERR invalid password\r\n"),
        {"password": Secret(PASSWORD)},
        ErrorKind.AUTH,
        "auth",
        "invalid password",
        id="wrong-password-redis5",
    ),
    pytest.param(
        FakeRedis(password=PASSWORD, username="monitor"),
        {"password": Secret(PASSWORD), "username": "intruder"},
        ErrorKind.AUTH,
        "auth",
        "WRONGPASS",
        id="wrong-acl-user",
    ),
    pytest.param(
        FakeRedis(password=PASSWORD, auth_error=b"+MAYBE\r\n"),
        {"password": Secret("nope")},
        ErrorKind.PROTOCOL,
        "auth",
        "+MAYBE",
        id="odd-auth-reply",
    ),
    pytest.param(
        FakeRedis(password=PASSWORD),
        {},
        ErrorKind.AUTH,
        "command",
        "requires a password",
        id="noauth",
    ),
    pytest.param(
        FakeRedis(ping=b"+PANG\r\n"), {}, ErrorKind.PROTOCOL, "command", "'+PANG'", id="wrong-pong"
    ),
    pytest.param(
        FakeRedis(ping=b"-LOADING Redis is loading the dataset in memory\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "command",
        "LOADING",
        id="error-reply",
    ),
    pytest.param(
        FakeRedis(ping=bulk(b"PONG")), {}, ErrorKind.PROTOCOL, "command", "$4", id="bulk-pong"
    ),
    pytest.param(
        FakeRedis(ping=b"+" + b"P" * 300 + b"\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "command",
        "(301 characters)",
        id="long-reply-excerpted",
    ),
    pytest.param(
        FakeRedis(ping=b"+" + b"P" * (2 * LINE_LIMIT)),
        {},
        ErrorKind.PROTOCOL,
        "command",
        f"exceeds {LINE_LIMIT} bytes",
        id="endless-line",
    ),
    pytest.param(
        FakeRedis(close_on_connect=True), {}, ErrorKind.PROTOCOL, "command", "", id="closed"
    ),
    pytest.param(
        FakeRedis(ping=b"+PO", hang_up_after=b"PING"),
        {},
        ErrorKind.PROTOCOL,
        "command",
        "PING reply",
        id="half-reply",
    ),
    pytest.param(
        FakeRedis(info=b"$%d\r\n" % (INFO_LIMIT + 1)),
        {},
        ErrorKind.PROTOCOL,
        "info",
        f"{INFO_LIMIT + 1} bytes, over the limit of {INFO_LIMIT}",
        id="oversized-info",
    ),
    pytest.param(
        FakeRedis(info=b"$100\r\nredis_version:7.2.4\r\n", hang_up_after=b"INFO"),
        {},
        ErrorKind.PROTOCOL,
        "info",
        "closed after 21 of the INFO reply's 102 bytes",
        id="truncated-info",
    ),
    pytest.param(
        FakeRedis(info=b"$3\r\nabcde"),
        {},
        ErrorKind.PROTOCOL,
        "info",
        "does not end with CRLF",
        id="info-longer-than-announced",
    ),
    pytest.param(
        FakeRedis(info=b"$-1\r\n"), {}, ErrorKind.PROTOCOL, "info", "null reply", id="null-info"
    ),
    pytest.param(
        FakeRedis(info=b"$x\r\n"), {}, ErrorKind.PROTOCOL, "info", "bulk string", id="bad-length"
    ),
    pytest.param(
        FakeRedis(info=b"$--5\r\n"), {}, ErrorKind.PROTOCOL, "info", "'$--5'", id="two-minuses"
    ),
    pytest.param(
        FakeRedis(info=b"+OK\r\n"), {}, ErrorKind.PROTOCOL, "info", "'+OK'", id="not-bulk"
    ),
    pytest.param(
        FakeRedis(info=b"-ERR unknown command 'INFO'\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "info",
        "set info to false",
        id="info-refused",
    ),
]


@pytest.mark.parametrize(("server", "fields", "kind", "phase", "message"), DOWN)
async def test_down(
    server: FakeRedis,
    fields: dict[str, Any],
    kind: ErrorKind,
    phase: str,
    message: str,
    ctx: ProbeContext,
) -> None:
    result = await check(server, ctx, timeouts=Timeouts(total=5), **fields)
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (kind, phase), result.error
    assert message in result.error.message
    assert "redis_version" not in result.metrics


async def test_wrong_pong_is_a_failed_outcome(ctx: ProbeContext) -> None:
    result = await check(FakeRedis(ping=b"+PANG\r\n"), ctx)
    assert [(a.name, a.passed, a.observed) for a in result.assertions] == [
        ("pong", False, "'+PANG'")
    ]


async def test_silent_server_times_out_in_command_within_the_deadline(ctx: ProbeContext) -> None:
    started = time.monotonic()
    result = await check(FakeRedis(ping=None), ctx, timeouts=Timeouts(total=0.5))
    elapsed = time.monotonic() - started
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "command"
    assert elapsed < 2.0
    assert 0.45 <= result.duration < 2.0


async def test_read_timeout_bounds_each_reply(ctx: ProbeContext) -> None:
    result = await check(FakeRedis(info=None), ctx, timeouts=Timeouts(total=5, read=0.2))
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "info"
    assert result.duration < 2.0


# A hostile server: whatever bytes it answers with, the check is a result, never a crash.
RESP_LINES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"+", b"-", b"$", b"*", b":", b"$-1", b"$99999999999", b"$-5", b"$2"]).flatmap(
        lambda prefix: st.binary(max_size=20).map(lambda rest: prefix + rest)
    ),
)
REPLIES = st.lists(RESP_LINES, min_size=0, max_size=3).map(lambda lines: b"\r\n".join(lines))


@settings(max_examples=30, deadline=None)
@given(ping=REPLIES, info=REPLIES, hang_up=st.booleans())
def test_any_reply_is_a_result_never_a_crash(ping: bytes, info: bytes, hang_up: bool) -> None:
    server = FakeRedis(
        password=PASSWORD, ping=ping, info=info, hang_up_after=b"INFO" if hang_up else b"PING"
    )

    async def scenario() -> Result:
        fields = {"password": Secret(PASSWORD), "timeouts": Timeouts(total=0.1)}
        return await check(server, make_context(), **fields)

    result = asyncio.run(scenario())
    assert result.error is None or result.error.kind is not ErrorKind.INTERNAL, result.error
    assert result.status in (Status.UP, Status.DOWN)
    assert PASSWORD not in result_to_json(result)


# -- the password stays secret ---------------------------------------------------------------


async def test_the_password_shows_nowhere(
    ctx: ProbeContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    probe_fields = {"password": Secret(PASSWORD), "username": "monitor"}
    result = await check(FakeRedis(password="other"), ctx, **probe_fields)
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert any("WRONGPASS" in r.getMessage() for r in caplog.records)  # the refusal was logged
    probe = RedisProbe("127.0.0.1", password=Secret(PASSWORD), username="monitor")
    shown = [
        result_to_json(result),
        result.summary(),
        repr(result),
        repr(probe),
        str(probe),
        repr(probe_to_dict(probe)),
        *(r.getMessage() for r in caplog.records),
        caplog.text,
    ]
    assert all(PASSWORD not in text for text in shown)


async def test_a_server_echoing_the_password_is_masked(ctx: ProbeContext) -> None:
    echo = b"-ERR bad password '" + PASSWORD.encode() + b"'\r\n"
    result = await check(FakeRedis(password="x", auth_error=echo), ctx, password=Secret(PASSWORD))
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "bad password '<secret>'" in result.error.message
    assert PASSWORD not in result_to_json(result)


def test_a_password_that_is_not_a_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(DefinitionError) as info:
        RedisProbe("h", password=PASSWORD)  # type: ignore[arg-type]
    assert info.value.path == "password"
    assert PASSWORD not in str(info.value)


# -- assertions on the INFO text -------------------------------------------------------------

ASSERTIONS: list[Any] = [
    pytest.param((BodyContains("redis_mode:standalone"),), Status.UP, id="contains"),
    pytest.param((BodyMatches(r"(?m)^redis_version:7\."),), Status.UP, id="matches"),
    pytest.param((BodyContains("redis_mode:cluster"),), Status.DOWN, id="contains-fails"),
    pytest.param((BodyContains("os:Windows", negate=True),), Status.UP, id="negated"),
    pytest.param((ResponseTime(warn=0.000001),), Status.DEGRADED, id="response-time"),
]


@pytest.mark.parametrize(("assertions", "status"), ASSERTIONS)
async def test_assertions_see_the_info_text(
    assertions: tuple[Any, ...], status: Status, ctx: ProbeContext
) -> None:
    result = await check(FakeRedis(), ctx, assertions=assertions)
    assert result.status is status, result.summary()
    if status is not Status.UP:
        assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert result.assertions[0].name == "pong"
    assert len(result.assertions) == 1 + len(assertions)


# -- definitions -----------------------------------------------------------------------------


def test_target_host_and_defaults() -> None:
    probe = RedisProbe("cache.internal")
    assert (probe.port, probe.info, probe.password, probe.username) == (6379, True, None, None)
    assert probe.target == "cache.internal:6379"
    assert probe.host == "cache.internal"
    assert RedisProbe("::1", 6380).target == "[::1]:6380"
    assert RedisProbe("[::1]").host == "::1"
    assert RedisProbe.kind == "redis"


def test_plain_data_defaults_the_port() -> None:
    probe = build_probe({"kind": "redis", "host": "127.0.0.1"})
    assert probe == RedisProbe("127.0.0.1", 6379)


ROUND_TRIP = [
    RedisProbe("127.0.0.1"),
    RedisProbe("cache.internal", 6380, info=False, timeouts=Timeouts(total=3, read=1)),
    RedisProbe(
        "::1",
        tls=TlsOptions(ca_file="/etc/ssl/redis-ca.pem", server_name="cache"),
        assertions=(BodyContains("redis_mode:standalone"), BodyMatches("^redis_version:7")),
    ),
]


@pytest.mark.parametrize("probe", ROUND_TRIP)
def test_round_trip_through_plain_data(probe: RedisProbe) -> None:
    assert build_probe(probe_to_dict(probe)) == probe


def test_a_password_round_trips_by_reference() -> None:
    probe = RedisProbe("127.0.0.1", password=Secret(PASSWORD), username="monitor")
    plain = probe_to_dict(probe)
    assert plain["password"] == "<secret>"
    assert PASSWORD not in repr(plain)
    plain["password"] = {"secret": "redis"}
    assert build_probe(plain, secrets={"redis": Secret(PASSWORD)}) == probe
    assert build_probe(plain, secrets={"redis": Secret("other")}) != probe


INVALID_DATA: list[Any] = [
    pytest.param({"host": "h", "port": 0}, "port", "1 to 65535", id="port-zero"),
    pytest.param({"host": "h", "port": 65536}, "port", "1 to 65535", id="port-high"),
    pytest.param({"host": "h", "port": "6379"}, "port", "integer", id="port-text"),
    pytest.param({"host": "h", "pasword": "x"}, "pasword", "did you mean 'password'", id="typo"),
    pytest.param({}, "host", "required", id="no-host"),
    pytest.param({"host": ""}, "host", "required", id="empty-host"),
    pytest.param({"host": "a b"}, "host", "not a host", id="spaced-host"),
    pytest.param({"host": "h", "username": "u"}, "username", "needs a password", id="user"),
    pytest.param({"host": "h", "password": ""}, "password", "empty", id="empty-password"),
    pytest.param(
        {"host": "h", "password": {"env": "REDIS_PASSWORD"}},
        "password.env",
        "local configuration",
        id="env-secret-remote",
    ),
    pytest.param({"host": "h", "password": {"secret": "nope"}}, "password.secret", "no secret"),
    pytest.param({"host": "h", "info": "yes"}, "info", "true or false", id="info-text"),
    pytest.param({"host": "h", "tls": {"verify": "no"}}, "tls.verify", "true", id="tls"),
    pytest.param(
        {"host": "h", "info": False, "assertions": [{"type": "body_contains", "text": "x"}]},
        "assertions[0]",
        "set info",
        id="body-assertion-without-info",
    ),
    pytest.param(
        {"host": "h", "timeouts": {"total": 0}}, "timeouts.total", "positive", id="timeout"
    ),
]


@pytest.mark.parametrize(("data", "path", "message"), INVALID_DATA)
def test_invalid_definitions(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "redis", **data})
    problems = {e.path: e.message for e in info.value.errors}
    assert path in problems, problems
    assert message in problems[path]


INVALID_PYTHON: list[Any] = [
    (lambda: RedisProbe("h", 0), "port"),
    (lambda: RedisProbe("h", True), "port"),
    (lambda: RedisProbe(None), "host"),  # type: ignore[arg-type]
    (lambda: RedisProbe("h", tls="yes"), "tls"),  # type: ignore[arg-type]
    (lambda: RedisProbe("h", info=1), "info"),  # type: ignore[arg-type]
    (lambda: RedisProbe("h", timeouts=5), "timeouts"),  # type: ignore[arg-type]
    (lambda: RedisProbe("h", username="", password=Secret("p")), "username"),
    (lambda: RedisProbe("h", assertions=("x",)), "assertions[0]"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("factory", "path"), INVALID_PYTHON)
def test_invalid_constructor_arguments(factory: Any, path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        factory()
    assert info.value.path == path


# -- the kind's declaration and command-line form ---------------------------------------------


def test_the_kind_is_registered() -> None:
    kind = get_kind("redis")
    assert kind is KIND
    assert kind.cls is RedisProbe
    assert kind.docs == "probes/redis.md"
    assert {m.key: m.name for m in kind.metrics} == {
        "redis_version": "probekit_redis_version",
        "uptime_seconds": "probekit_redis_uptime_seconds",
    }
    assert "--password" not in {f for o in kind.options for f in o.flags}  # only from the env


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1", {"host": "127.0.0.1", "port": 6379}),
        ("cache.internal:6380", {"host": "cache.internal", "port": 6380}),
        ("[::1]:7000", {"host": "::1", "port": 7000}),
    ],
)
def test_target_syntax(target: str, expected: dict[str, Any]) -> None:
    assert KIND.target.parse(target) == expected


def _from_options(target: str, **values: Any) -> Any:
    definition: dict[str, Any] = {"kind": "redis", **KIND.target.parse(target)}
    assert KIND.to_definition is not None
    KIND.to_definition(values, definition)
    return build_probe(definition)


def test_password_env_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    probe = _from_options("127.0.0.1", password_env="REDIS_PASSWORD", username="monitor")
    assert probe.password == Secret(PASSWORD)


@pytest.mark.parametrize("value", [None, ""])
def test_password_env_unset_or_empty_is_a_problem_with_the_option(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("REDIS_PASSWORD", value)
    with pytest.raises(DefinitionErrors) as info:
        _from_options("127.0.0.1", password_env="REDIS_PASSWORD")
    assert [e.path for e in info.value.errors] == ["--password-env"]
    assert "REDIS_PASSWORD" in info.value.errors[0].message


def test_tls_options_and_assertions_from_options(tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a check runs\n")
    probe = _from_options(
        "cache:6380", tls=True, ca_file=str(ca), contains=["redis_mode:standalone"], no_info=False
    )
    assert probe.tls == TlsOptions(ca_file=str(ca))
    assert probe.assertions == (BodyContains("redis_mode:standalone"),)
    assert _from_options("cache", tls=True, insecure=True).tls == TlsOptions(verify=False)
    assert _from_options("cache", tls=True).tls == TlsOptions()
    assert _from_options("cache", no_info=True).info is False


def test_tls_verification_options_need_tls() -> None:
    with pytest.raises(DefinitionErrors) as info:
        _from_options("cache", insecure=True)
    assert [e.path for e in info.value.errors] == ["--insecure/--ca-file"]


def test_a_bad_regex_option_is_reported_against_it() -> None:
    with pytest.raises(DefinitionErrors) as info:
        _from_options("cache", regex=["("])
    assert [e.path for e in info.value.errors] == ["--regex"]
