"""PostgresProbe against a small in-process PostgreSQL server (tests/pgserver.py: SCRAM-SHA-256,
md5 and cleartext logins checked for real, TLS by SSLRequest, simple queries), and hand-written
servers for what a real one would not do: garbage, stalls in each phase, oversized messages,
a SCRAM server that does not know the password. Hypothesis feeds arbitrary bytes to every parser
of server bytes in probekit.probes._pgwire and to the whole probe."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import ssl
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgserver import (
    READY,
    VERSION,
    PgServer,
    auth,
    error,
    msg,
    param,
    read_message,
    read_startup,
)
from probekit import (
    BodyContains,
    DefinitionError,
    DefinitionErrors,
    ErrorKind,
    ProbeContext,
    ProbeFailure,
    Result,
    Secret,
    Status,
    Timeouts,
    TlsOptions,
    build_probe,
    probe_to_dict,
    result_to_json,
)
from probekit.probes import _pgwire, get_kind
from probekit.probes._pgwire import (
    MAX_SCRAM_ITERATIONS,
    MESSAGE_LIMIT,
    ScramClient,
    md5_password,
    parse_auth,
    parse_error,
    parse_header,
    parse_parameter,
    parse_row_head,
    startup_message,
)
from probekit.probes._registry import describe
from probekit.probes.postgres import KIND, PostgresProbe, nagios_range, version_number
from servers import TcpServer, make_context

USER = "monitor"
PASSWORD = "s3cret-pg-canary"  # a canary: it must show up nowhere but on the wire
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


def login(**fields: Any) -> dict[str, Any]:
    return {"username": USER, "password": Secret(PASSWORD), "database": "app", **fields}


async def check(server: PgServer | TcpServer, ctx: ProbeContext, **fields: Any) -> Result:
    fields.setdefault("starttls", "optional")
    async with server:
        return await PostgresProbe("127.0.0.1", server.port, **fields).check(ctx)


# -- without credentials -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "shown"),
    [
        ("scram", "SASL SCRAM-SHA-256"),
        ("md5", "md5"),
        ("password", "cleartext"),
        ("gss", "GSSAPI"),
    ],
)
async def test_an_authentication_request_is_up_without_credentials(
    method: Any, shown: str, ctx: ProbeContext
) -> None:
    server = PgServer(method=method)
    result = await check(server, ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "starttls", "startup")
    outcomes = {a.name: a.observed for a in result.assertions}
    assert outcomes == {"starttls": "refused (N)", "auth_method": shown}
    assert result.metrics == {"tls": 0, "login": 0}
    assert server.startups == [
        {"user": "probekit", "application_name": "probekit", "client_encoding": "UTF8"}
    ]
    assert server.passwords == []
    assert describe(result).endswith(f"no TLS, asks for {shown}")


async def test_trust_logs_in_and_reads_the_version(ctx: ProbeContext) -> None:
    server = PgServer(method="trust", databases=("probekit",))
    result = await check(server, ctx, starttls="off")
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "startup", "auth")
    assert result.metrics == {"tls": 0, "login": 1, "server_version": 150005}
    assert server.ssl_requests == 0
    assert describe(result).endswith("PostgreSQL 15.5, no TLS, login ok")


# -- logins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["scram", "md5"])
async def test_login(method: Any, ctx: ProbeContext) -> None:
    server = PgServer(method=method)
    result = await check(server, ctx, **login())
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "starttls", "startup", "auth")
    assert result.metrics == {"tls": 0, "login": 1, "server_version": 150005}
    assert server.startups[0]["user"] == USER and server.startups[0]["database"] == "app"
    assert {a.name: a.observed for a in result.assertions}["server_version"] == VERSION


async def test_scram_login_over_tls(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    server = PgServer(tls=good_tls)
    options = TlsOptions(ca_data=ca_pem)
    result = await check(server, ctx, **login(starttls="required", starttls_options=options))
    assert result.status is Status.UP, result.summary()
    phases = ("resolve", "connect", "starttls", "tls", "startup", "auth")
    assert result.phase_names() == phases
    assert result.metrics["tls"] == 1 and result.metrics["login"] == 1
    assert result.tls is not None and result.tls.verified
    assert result.metrics["cert_days_left"] > 1
    assert describe(result).endswith("PostgreSQL 15.5, TLS, login ok")


async def test_an_untrusted_certificate_is_down_tls(
    ctx: ProbeContext, self_signed_tls: ssl.SSLContext
) -> None:
    result = await check(PgServer(tls=self_signed_tls), ctx, **login())
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"


async def test_required_tls_refused_is_down_tls(ctx: ProbeContext) -> None:
    server = PgServer()
    result = await check(server, ctx, **login(starttls="required"))
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.error.phase == "starttls" and "answered N" in result.error.message
    assert server.startups == []  # no startup message, so no user name, in plain text


async def test_cleartext_password_is_not_sent_without_tls(ctx: ProbeContext) -> None:
    server = PgServer(method="password")
    result = await check(server, ctx, **login())
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.error.phase == "auth" and "not sent" in result.error.message
    assert server.passwords == []


async def test_cleartext_password_with_plaintext_auth(ctx: ProbeContext) -> None:
    server = PgServer(method="password")
    result = await check(server, ctx, **login(plaintext_auth=True))
    assert result.status is Status.UP, result.summary()
    assert server.passwords == [PASSWORD.encode() + b"\0"]


async def test_cleartext_password_over_tls(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    server = PgServer(method="password", tls=good_tls)
    result = await check(server, ctx, **login(starttls_options=TlsOptions(ca_data=ca_pem)))
    assert result.status is Status.UP, result.summary()
    assert result.metrics["tls"] == 1


@pytest.mark.parametrize("method", ["scram", "md5", "password"])
async def test_wrong_password_is_down_auth_naming_the_sqlstate(
    method: Any, ctx: ProbeContext
) -> None:
    server = PgServer(method=method, users={USER: "another-password"})
    result = await check(server, ctx, **login(plaintext_auth=True))
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert result.error.phase == "auth"
    assert "SQLSTATE 28P01 invalid_password" in result.error.message
    assert 'password authentication failed for user "monitor"' in result.error.message
    assert result.metrics["login"] == 0


async def test_missing_database_is_a_failed_database_outcome(ctx: ProbeContext) -> None:
    result = await check(PgServer(), ctx, **login(database="nope"))
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    outcome = next(a for a in result.assertions if a.name == "database")
    assert not outcome.passed and outcome.expected == "database 'nope' exists"
    assert "SQLSTATE 3D000" in outcome.observed and 'database "nope" does not exist' in (
        outcome.observed
    )


async def test_the_default_database_is_the_user_name(ctx: ProbeContext) -> None:
    result = await check(PgServer(databases=("other",)), ctx, **login(database=None))
    outcome = next(a for a in result.assertions if a.name == "database")
    assert outcome.expected == "database 'monitor' exists"


async def test_a_password_request_without_a_password_and_a_query_is_down_auth(
    ctx: ProbeContext,
) -> None:
    result = await check(PgServer(), ctx, username=USER, query="SELECT 1")
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert result.error.phase == "auth" and "none is configured" in result.error.message


async def test_an_unsupported_method_is_down_auth(ctx: ProbeContext) -> None:
    result = await check(PgServer(method="gss"), ctx, **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "GSSAPI" in result.error.message


async def test_channel_binding_only_is_down_auth(ctx: ProbeContext) -> None:
    result = await check(PgServer(mechanisms=("SCRAM-SHA-256-PLUS",)), ctx, **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "SCRAM-SHA-256-PLUS" in result.error.message


async def test_a_server_that_does_not_know_the_password_is_down_auth(ctx: ProbeContext) -> None:
    result = await check(PgServer(bad_signature=True), ctx, **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "signature is wrong" in result.error.message


async def test_too_many_scram_iterations_are_refused(ctx: ProbeContext) -> None:
    result = await check(PgServer(iterations=MAX_SCRAM_ITERATIONS + 1), ctx, **login())
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert "SCRAM iterations" in result.error.message


# -- queries ---------------------------------------------------------------------------------

QUERIES: dict[str, Any] = {
    "SELECT 1": [("1",)],
    "SELECT name FROM t": [("alpha", "x"), ("beta", "y"), ("gamma", "z")],
    "SELECT NULL": [(None,)],
    "SELECT nothing": [],
    "SELECT broken": ("42P01", 'relation "broken" does not exist'),
}


@pytest.mark.parametrize(
    ("fields", "status", "rows", "failed"),
    [
        ({"query": "SELECT 1", "expect": "1"}, Status.UP, 1, None),
        ({"query": "SELECT 1", "expect": "2"}, Status.DOWN, 1, "first_cell"),
        ({"query": "SELECT name FROM t", "expect": "alpha", "min_rows": 3}, Status.UP, 3, None),
        ({"query": "SELECT name FROM t", "max_rows": 2}, Status.DOWN, 3, "rows"),
        ({"query": "SELECT name FROM t", "min_rows": 4}, Status.DOWN, 3, "rows"),
        ({"query": "SELECT NULL", "expect": ""}, Status.DOWN, 1, "first_cell"),
        ({"query": "SELECT nothing", "min_rows": 0, "max_rows": 0}, Status.UP, 0, None),
        ({"query": "SELECT nothing", "expect": "1"}, Status.DOWN, 0, "first_cell"),
        ({"query": "SELECT broken"}, Status.DOWN, None, "query"),
    ],
)
async def test_query(
    fields: dict[str, Any], status: Status, rows: int | None, failed: str | None, ctx: ProbeContext
) -> None:
    server = PgServer(queries=QUERIES)
    result = await check(server, ctx, **login(**fields))
    assert result.status is status, result.summary()
    assert result.phase_names()[-1] == "query"
    assert result.metrics.get("rows") == rows
    assert [a.name for a in result.assertions if not a.passed] == ([failed] if failed else [])
    if failed:
        assert result.error is not None and result.error.kind is ErrorKind.ASSERTION


COUNTS: dict[str, Any] = {"SELECT 7": [("7",)], "SELECT word": [("seven",)]}


@pytest.mark.parametrize(
    ("sql", "warning", "critical", "status", "failed"),
    [
        ("SELECT 7", "10", "20", Status.UP, None),
        ("SELECT 7", "5", "20", Status.DEGRADED, "query_warning"),
        ("SELECT 7", "5", "6", Status.DOWN, "query_critical"),
        ("SELECT 7", None, "@5:10", Status.DOWN, "query_critical"),
        ("SELECT 7", "~:8", None, Status.UP, None),
        ("SELECT 7", "8:", None, Status.DEGRADED, "query_warning"),
        ("SELECT word", "10", None, Status.DOWN, "query_value"),
    ],
)
async def test_query_thresholds_like_check_pgsql(
    sql: str,
    warning: str | None,
    critical: str | None,
    status: Status,
    failed: str | None,
    ctx: ProbeContext,
) -> None:
    fields = login(query=sql, query_warning=warning, query_critical=critical)
    result = await check(PgServer(queries=COUNTS), ctx, **fields)
    assert result.status is status, result.summary()
    assert [a.name for a in result.assertions if not a.passed] == ([failed] if failed else [])


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10", (0.0, 10.0, False)),
        ("10:", (10.0, float("inf"), False)),
        ("~:10", (float("-inf"), 10.0, False)),
        ("10:20", (10.0, 20.0, False)),
        ("@10:20", (10.0, 20.0, True)),
        ("-5:-1", (-5.0, -1.0, False)),
    ],
)
def test_nagios_range(text: str, parsed: tuple[float, float, bool]) -> None:
    assert nagios_range(text) == parsed


@pytest.mark.parametrize("text", ["", "x", "20:10", "1:2:3", "nan", "@", "~"])
def test_nagios_range_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a threshold range"):
        nagios_range(text)


async def test_a_refused_query_names_its_sqlstate(ctx: ProbeContext) -> None:
    result = await check(PgServer(queries=QUERIES), ctx, **login(query="SELECT broken"))
    outcome = next(a for a in result.assertions if a.name == "query")
    assert "SQLSTATE 42P01 undefined_table" in outcome.observed


async def test_outcomes_show_the_first_cell(ctx: ProbeContext) -> None:
    result = await check(PgServer(queries=QUERIES), ctx, **login(query="SELECT NULL", expect="x"))
    assert next(a for a in result.assertions if a.name == "first_cell").observed == "NULL"
    assert describe(result).endswith("login ok, 1 row")


async def test_assertions_see_the_first_cell(ctx: ProbeContext) -> None:
    fields = login(query="SELECT name FROM t", assertions=(BodyContains("alp"),))
    assert (await check(PgServer(queries=QUERIES), ctx, **fields)).status is Status.UP
    fields["assertions"] = (BodyContains("beta"),)  # the second row's cell is not kept
    assert (await check(PgServer(queries=QUERIES), ctx, **fields)).status is Status.DOWN


async def test_a_large_result_is_streamed_and_counted(ctx: ProbeContext) -> None:
    big = "x" * (3 * 1024 * 1024)  # one cell larger than anything the probe keeps
    queries = {"SELECT big": [(big, "y")] + [("row", "z")] * 20000}
    result = await check(
        PgServer(queries=queries), ctx, **login(query="SELECT big", expect=big[:10])
    )
    assert result.metrics["rows"] == 20001
    outcome = next(a for a in result.assertions if a.name == "first_cell")
    assert not outcome.passed and "characters" in outcome.observed  # an excerpt, not 3 MiB


async def test_a_bad_row_after_the_first_is_refused_in_the_fast_path(ctx: ProbeContext) -> None:
    bad = msg(b"D", struct.pack("!hi", 1, 1000) + b"x")  # a first cell longer than its row

    async def serve(reader: Reader, writer: Writer) -> None:
        await startup(reader, writer)
        writer.write(auth(0) + READY)
        await read_message(reader)
        rows = [msg(b"D", struct.pack("!hi", 1, 1) + b"1")] * 50
        writer.write(b"".join(rows) + bad + msg(b"C", b"SELECT 51\0") + READY)
        await reader.read()

    result = await check(TcpServer(serve), ctx, query="SELECT 1")
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert "first cell claims 1000 bytes" in result.error.message


def _wire_with(data: bytes) -> _pgwire.Wire:
    wire = _pgwire.Wire.__new__(_pgwire.Wire)
    wire._buffer = bytearray(data)
    return wire


def test_skim_rows_counts_whole_rows_and_leaves_the_rest() -> None:
    row = msg(b"D", struct.pack("!hi", 2, 3) + b"abc" + struct.pack("!i", -1))
    empty = msg(b"D", struct.pack("!h", 0))
    partial = row[:9]
    wire = _wire_with(row * 5 + empty + row + partial)
    assert wire.skim_rows() == 7
    assert bytes(wire._buffer) == partial
    wire = _wire_with(row + msg(b"C", b"SELECT 1\0") + row)
    assert wire.skim_rows() == 1
    assert wire._buffer[:1] == b"C"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120), rows=st.integers(0, 4))
def test_skim_rows_drops_only_what_the_careful_parser_accepts(data: bytes, rows: int) -> None:
    good = msg(b"D", struct.pack("!hi", 1, 2) + b"ok")
    stream = good * rows + data
    wire = _wire_with(stream)
    count = wire.skim_rows()
    consumed = stream[: len(stream) - len(wire._buffer)]
    assert stream.endswith(bytes(wire._buffer))
    assert count >= rows
    pos = 0
    for _ in range(count):  # every message dropped is one the careful path would accept
        kind, length = parse_header(consumed[pos : pos + 5])
        assert kind == b"D"
        payload = consumed[pos + 5 : pos + 5 + length]
        assert len(payload) == length
        parse_row_head(payload[:6], length)
        pos += 5 + length
    assert pos == len(consumed)


def test_the_scram_key_cache_is_bounded() -> None:
    for i in range(_pgwire._SALTED_MAX + 40):
        _pgwire._salted_password(b"pw", b"salt-%d" % i, 1)
    assert len(_pgwire._SALTED) == _pgwire._SALTED_MAX
    assert all(b"pw" not in key for key in _pgwire._SALTED)  # a digest, not the password


async def test_a_second_scram_login_is_up_too(ctx: ProbeContext) -> None:
    server = PgServer()
    async with server:
        probe = PostgresProbe("127.0.0.1", server.port, **login())
        first, second = await probe.check(ctx), await probe.check(ctx)
        wrong = await PostgresProbe("127.0.0.1", server.port, **login(password=Secret("x"))).check(
            ctx
        )
    assert first.status is Status.UP and second.status is Status.UP
    assert wrong.error is not None and wrong.error.kind is ErrorKind.AUTH
    # the salted password was remembered, under a digest of the password
    digest = hashlib.sha256(PASSWORD.encode()).digest()
    assert (digest, b"pg-test-salt-16b", 4096) in _pgwire._SALTED


# -- hostile servers -------------------------------------------------------------------------

Script = Callable[[Reader, Writer], Awaitable[None]]


async def startup(reader: Reader, writer: Writer, tls: bytes = b"N") -> None:
    """Read what the probe sends up to its StartupMessage (answering an SSLRequest)."""
    code, _ = await read_startup(reader)
    if code == 80877103:
        writer.write(tls)
        await read_startup(reader)


async def silent(reader: Reader, writer: Writer) -> None:
    await reader.read()


def after_startup(answer: bytes, then: Script | None = None) -> Script:
    async def serve(reader: Reader, writer: Writer) -> None:
        await startup(reader, writer)
        writer.write(answer)
        await writer.drain()
        await (then or silent)(reader, writer)

    return serve


async def hang_up(reader: Reader, writer: Writer) -> None:
    return


async def ssl_s_then_silent(reader: Reader, writer: Writer) -> None:
    await read_startup(reader)
    writer.write(b"S")
    await reader.read()


async def scram_then_silent(reader: Reader, writer: Writer) -> None:
    await startup(reader, writer)
    writer.write(auth(10, b"SCRAM-SHA-256\0\0"))
    await reader.read()


async def ready_then_silent(reader: Reader, writer: Writer) -> None:
    await startup(reader, writer)
    writer.write(auth(0) + param("server_version", "16.1") + READY)
    await read_message(reader)
    await reader.read()


LOGIN_STALL = after_startup(auth(0) + param("server_version", "16.1"))


@pytest.mark.parametrize(
    ("script", "fields", "phase"),
    [
        (silent, {}, "starttls"),
        (ssl_s_then_silent, {}, "tls"),
        (after_startup(b""), {}, "startup"),
        (scram_then_silent, login(), "auth"),
        (LOGIN_STALL, {}, "auth"),
        (ready_then_silent, login(query="SELECT 1"), "query"),
    ],
    ids=["starttls", "tls", "startup", "scram", "session-start", "query"],
)
async def test_a_stall_is_a_timeout_naming_the_phase(
    script: Script, fields: dict[str, Any], phase: str, ctx: ProbeContext
) -> None:
    fields["timeouts"] = Timeouts(total=0.3)
    result = await check(TcpServer(script), ctx, **fields)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT, result.error
    assert result.error.phase == phase


async def http_server(reader: Reader, writer: Writer) -> None:
    await reader.read(8)
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")


HUGE = b"E" + struct.pack("!i", 50 * 1024 * 1024)


@pytest.mark.parametrize(
    ("script", "words"),
    [
        (http_server, "not an answer to the SSLRequest"),
        (after_startup(b"HTTP/1.1 400 Bad Request\r\n\r\n"), "not a PostgreSQL message"),
        (after_startup(b"R\x00\x00\x00\x02"), "claims a length of 2"),
        (after_startup(HUGE), f"over the limit of {MESSAGE_LIMIT}"),
        (after_startup(msg(b"Z", b"I")), "expected an authentication request"),
        (after_startup(auth(99)), "unknown code 99"),
        (after_startup(auth(5, b"ab")), "4-byte salt"),
        (after_startup(b"R\x00\x00\x00", hang_up), "closed in the middle"),
        (after_startup(auth(0) + msg(b"D", b"\0\0")), "before the session was ready"),
        (after_startup(auth(11, b"r=abc,s=c2FsdA==,i=1")), "only follows an exchange"),
        (after_startup(error("08P01", "invalid startup packet layout")), "08P01"),
    ],
    ids=[
        "http-at-sslrequest",
        "http-at-startup",
        "short-length",
        "huge-error",
        "ready-before-auth",
        "unknown-auth",
        "short-salt",
        "cut-header",
        "row-before-ready",
        "continuation-first",
        "other-sqlstate",
    ],
)
async def test_garbage_is_down_protocol(script: Script, words: str, ctx: ProbeContext) -> None:
    result = await check(TcpServer(script), ctx, timeouts=Timeouts(total=2))
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL, result.error
    assert words in result.error.message


async def test_plain_text_injected_after_s_is_refused(ctx: ProbeContext) -> None:
    async def inject(reader: Reader, writer: Writer) -> None:
        await read_startup(reader)
        writer.write(b"S" + auth(0) + READY)
        await reader.read()

    result = await check(TcpServer(inject), ctx)
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert "plain-text bytes" in result.error.message and result.error.phase == "starttls"


@pytest.mark.parametrize(
    ("code", "kind"),
    [("57P03", ErrorKind.CONNECT), ("53300", ErrorKind.CONNECT), ("28000", ErrorKind.AUTH)],
)
async def test_sessions_refused_at_startup(code: str, kind: ErrorKind, ctx: ProbeContext) -> None:
    script = after_startup(error(code, "the database system is starting up"))
    result = await check(TcpServer(script), ctx)
    assert result.error is not None and result.error.kind is kind
    assert f"SQLSTATE {code}" in result.error.message and result.error.phase == "startup"


async def test_notices_and_a_protocol_negotiation_are_skipped(ctx: ProbeContext) -> None:
    notice = error("01000", "hello", "NOTICE", kind=b"N")
    negotiate = msg(b"v", struct.pack("!ii", 196608, 0))
    script = after_startup(
        negotiate + notice + auth(0) + notice + param("server_version", "9.6.24") + READY
    )
    result = await check(TcpServer(script), ctx)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["server_version"] == 90624


async def test_a_copy_in_the_query_is_down_protocol(ctx: ProbeContext) -> None:
    async def copy(reader: Reader, writer: Writer) -> None:
        await startup(reader, writer)
        writer.write(auth(0) + READY)
        await read_message(reader)
        writer.write(msg(b"H", b"\0\0\0"))
        await reader.read()

    result = await check(TcpServer(copy), ctx, query="COPY t TO STDOUT")
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert "COPY" in result.error.message and result.error.phase == "query"


# -- Hypothesis: arbitrary server bytes are a classified result ----------------------------------

SERVER_BYTES = st.one_of(
    st.binary(max_size=64),
    st.lists(
        st.tuples(
            st.sampled_from(b"RESZDKNTCIv"),
            st.binary(max_size=24),
        ).map(lambda kp: bytes([kp[0]]) + struct.pack("!i", len(kp[1]) + 4) + kp[1]),
        max_size=5,
    ).map(b"".join),
)


@settings(max_examples=40, deadline=None)
@given(answer=SERVER_BYTES, tls_answer=st.sampled_from([b"N", b"S", b"E", b"", b"NN"]))
def test_any_answer_is_a_result_never_a_crash(answer: bytes, tls_answer: bytes) -> None:
    async def serve(reader: Reader, writer: Writer) -> None:
        await startup(reader, writer, tls_answer)
        writer.write(answer)
        await writer.drain()
        await reader.read()

    async def scenario() -> Result:
        fields = login(query="SELECT 1", timeouts=Timeouts(total=0.2))
        return await check(TcpServer(serve), make_context(), **fields)

    result = asyncio.run(scenario())
    assert result.error is None or result.error.kind is not ErrorKind.INTERNAL, result.error
    assert result.status in (Status.UP, Status.DOWN)
    assert PASSWORD not in result_to_json(result)


def _classified(call: Callable[[], object]) -> None:
    try:
        call()
    except ProbeFailure as exc:
        kind = exc.kind
    else:
        return
    assert kind in (ErrorKind.PROTOCOL, ErrorKind.AUTH)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80), number=st.integers(-10, 200))
def test_every_parser_takes_any_bytes(data: bytes, number: int) -> None:
    _classified(lambda: parse_header(data[:5]))
    _classified(lambda: parse_auth(data))
    _classified(lambda: parse_auth(struct.pack("!i", number % 13) + data))
    _classified(lambda: parse_error(data))
    _classified(lambda: parse_parameter(data))
    _classified(lambda: parse_row_head(data[:6], number))
    scram = ScramClient(Secret(PASSWORD), nonce="abc")
    _classified(lambda: scram.final(data))
    _classified(lambda: scram.final(b"r=abcd,s=c2FsdA==,i=1," + data))
    _classified(lambda: scram.verify(data))


@settings(max_examples=200, deadline=None)
@given(
    nonce=st.text(max_size=12),
    salt=st.text(max_size=12),
    count=st.text(max_size=8),
    final=st.binary(max_size=60),
)
def test_scram_takes_any_attributes(nonce: str, salt: str, count: str, final: bytes) -> None:
    scram = ScramClient(Secret(PASSWORD), nonce="abc")

    def exchange() -> None:
        scram.final(f"r=abc{nonce},s={salt},i={count}".encode())
        scram.verify(final)

    _classified(exchange)


# -- the protocol pieces, against the RFC's example ------------------------------------------------


def test_scram_client_matches_rfc_7677_example() -> None:
    # RFC 7677 section 3, with the user name left out as PostgreSQL does: the proof depends
    # on the messages, so the RFC's client-first-bare ("n=user,r=...") is rebuilt here.
    client = ScramClient(Secret("pencil"), nonce="rOprNGfwEbeRWgbNEkqO")
    client._bare = "n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    final = client.final(server_first)
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    client.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(ProbeFailure) as info:
        client.verify(b"v=" + base64.b64encode(bytes(32)))
    assert info.value.kind is ErrorKind.AUTH


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        # RFC 4013 section 3's examples; those it calls errors fall back to the raw bytes, as
        # PostgreSQL does when it stores the verifier.
        ("I\u00adX", b"IX"),
        ("user", b"user"),
        ("USER", b"USER"),
        ("\u00aa", b"a"),
        ("\u2168", b"IX"),
        ("\u0007", b"\x07"),
        ("\u0627\u0031", "\u0627\u0031".encode()),
        ("pass\u00a0word", b"pass word"),
        ("\u00ad", "\u00ad".encode()),  # nothing left after mapping: the raw bytes
    ],
)
def test_saslprep(password: str, prepared: bytes) -> None:
    assert _pgwire.saslprep(password) == prepared


@settings(max_examples=300, deadline=None)
@given(password=st.text(max_size=12))
def test_saslprep_takes_any_text(password: str) -> None:
    assert isinstance(_pgwire.saslprep(password), bytes)


def test_md5_password() -> None:
    # md5(md5("secret" + "alice").hex() + salt).hex(), worked out by hand with hashlib
    assert md5_password("alice", "secret", b"\x01\x02\x03\x04").startswith(b"md5")
    assert len(md5_password("alice", "secret", b"\x01\x02\x03\x04")) == 35


def test_startup_message_layout() -> None:
    data = startup_message({"user": "u", "database": "d"})
    assert data == struct.pack("!ii", 27, 196608) + b"user\0u\0database\0d\0\0"


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("15.5 (Debian 15.5-0+deb12u1)", 150005),
        ("16.1", 160001),
        ("17devel", 170000),
        ("9.6.24", 90624),
        ("banana", None),
    ],
)
def test_version_number(text: str, number: int | None) -> None:
    assert version_number(text) == number


# -- the password stays secret -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["scram", "md5", "password"])
async def test_the_password_shows_nowhere(
    method: Any, ctx: ProbeContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = await check(
        PgServer(method=method, users={USER: "other"}), ctx, **login(plaintext_auth=True)
    )
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    probe = PostgresProbe("h", **login())
    shown = [
        result_to_json(result),
        result.summary(),
        repr(result),
        repr(probe),
        repr(probe_to_dict(probe)),
        caplog.text,
    ]
    assert all(PASSWORD not in text for text in shown)


async def test_a_server_echoing_the_password_is_masked(ctx: ProbeContext) -> None:
    script = after_startup(error("28P01", f"password {PASSWORD} is wrong"))
    result = await check(TcpServer(script), ctx, **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "password <secret> is wrong" in result.error.message
    assert PASSWORD not in result_to_json(result)


# -- definitions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"port": 0}, "port"),
        ({"starttls": "maybe"}, "starttls"),
        ({"starttls": "off", "starttls_options": {}}, "starttls_options"),
        ({"password": {"secret": "pw"}}, "password"),
        ({"username": ""}, "username"),
        ({"username": "a\0b"}, "username"),
        ({"database": ""}, "database"),
        ({"query": " "}, "query"),
        ({"expect": "1"}, "expect"),
        ({"min_rows": 1}, "min_rows"),
        ({"query": "SELECT 1", "min_rows": -1}, "min_rows"),
        ({"query": "SELECT 1", "min_rows": 3, "max_rows": 2}, "min_rows"),
        ({"query": "SELECT 1", "max_rows": True}, "max_rows"),
        ({"assertions": [{"type": "body_contains", "text": "x"}]}, "assertions[0]"),
        ({"plaintext_auth": "yes"}, "plaintext_auth"),
        ({"query_warning": "10"}, "query_warning"),
        ({"query": "SELECT 1", "query_critical": "20:10"}, "query_critical"),
        ({"query": "SELECT 1", "query_warning": 10}, "query_warning"),
        ({"ip_family": "ipx"}, "ip_family"),
    ],
)
def test_invalid_definitions(fields: dict[str, Any], path: str) -> None:
    data = {"kind": "postgres", "host": "db.internal", **fields}
    with pytest.raises(DefinitionErrors) as info:
        build_probe(data, secrets={"pw": "x"})
    assert path in [e.path for e in info.value.errors], info.value


def test_a_password_that_is_not_a_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(DefinitionError) as info:
        PostgresProbe("h", username=USER, password=PASSWORD)  # type: ignore[arg-type]
    assert info.value.path == "password" and PASSWORD not in str(info.value)


def test_round_trip_through_plain_data() -> None:
    probe = PostgresProbe(
        "db.internal",
        6432,
        starttls="required",
        starttls_options=TlsOptions(verify=False),
        username=USER,
        database="app",
        query="SELECT count(*) FROM jobs",
        expect="0",
        min_rows=1,
        max_rows=1,
    )
    assert build_probe(probe_to_dict(probe)) == probe
    assert probe.target == "db.internal:6432" and probe.host == "db.internal"


# -- the kind's declaration and command line ---------------------------------------------------


def test_the_kind_is_registered() -> None:
    kind = get_kind("postgres")
    assert kind is KIND and kind.cls is PostgresProbe and kind.docs == "probes/postgres.md"
    flags = {f for o in kind.options for f in o.flags}
    assert {"--database", "--dbname", "--query", "--expect", "--user", "--logname"} <= flags
    assert "--password" not in flags  # only from the environment
    assert KIND.target.parse("db") == {"host": "db", "port": 5432}


def _from_options(target: str, **values: Any) -> Any:
    definition: dict[str, Any] = {"kind": "postgres", **KIND.target.parse(target)}
    for option in KIND.options:
        if option.field and option.name in values:
            definition[option.field] = values[option.name]
    assert KIND.to_definition is not None
    KIND.to_definition(values, definition)
    return build_probe(definition)


def test_options_make_a_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_PASSWORD", PASSWORD)
    probe = _from_options(
        "db:6432",
        password_env="PG_PASSWORD",
        username=USER,
        insecure=True,
        plaintext_auth=True,
        ipv4=True,
        contains=["ok"],
        query="SELECT 'ok'",
    )
    assert probe.password == Secret(PASSWORD)
    assert probe.starttls_options == TlsOptions(verify=False)
    assert probe.plaintext_auth and probe.ip_family == "ipv4"
    assert probe.assertions == (BodyContains("ok"),)


def test_tls_options_need_tls() -> None:
    with pytest.raises(DefinitionErrors) as info:
        _from_options("db", starttls="off", insecure=True)
    assert [e.path for e in info.value.errors] == ["--insecure/--ca-file"]


async def test_the_command_line(ctx: ProbeContext) -> None:
    server = PgServer(queries=QUERIES)
    async with server:
        env = {**os.environ, "PG_PASSWORD": PASSWORD}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "probekit",
            "check",
            "postgres",
            f"127.0.0.1:{server.port}",
            "--user",
            USER,
            "--password-env",
            "PG_PASSWORD",
            "--dbname",
            "app",
            "--query",
            "SELECT name FROM t",
            "--expect",
            "alpha",
            "--min-rows",
            "3",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await process.communicate()
    text = out.decode() + err.decode()
    assert process.returncode == 0, text
    assert "postgres 127.0.0.1:" in text and "PostgreSQL 15.5" in text
    assert PASSWORD not in text


def test_help_lists_the_options() -> None:
    import subprocess

    completed = subprocess.run(
        [sys.executable, "-m", "probekit", "check", "postgres", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    for flag in (
        "--database",
        "--query",
        "--expect",
        "--min-rows",
        "--starttls",
        "--user",
        "--query-warning",
        "--query-critical",
    ):
        assert flag in completed.stdout
