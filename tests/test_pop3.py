"""Pop3Probe against an in-process fake POP3 server on loopback (greeting, CAPA, STLS with a
trustme certificate, USER/PASS, STAT, QUIT)."""

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
    EgressPolicy,
    ErrorKind,
    ProbeContext,
    Result,
    Secret,
    Status,
    Timeouts,
    TlsOptions,
    build_probe,
    nagios_line,
    probe_to_dict,
    result_to_json,
)
from probekit.probes import get_kind
from probekit.probes.pop3 import (
    KIND,
    LINE_LIMIT,
    MULTILINE_LIMIT,
    MULTILINE_LINES,
    Pop3Probe,
)
from servers import GuardedConnector, TcpServer, make_context

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

PASSWORD = "pop3-canary-93be04a1"  # a canary: it must show up nowhere but on the wire
USER = "monitor"
LOGIN: dict[str, Any] = {"username": USER, "password": Secret(PASSWORD)}


@attrs.define
class FakePop3:
    """The server side of one test.

    ``tls`` offers STLS with that context; ``replies`` replaces the answer to a command;
    ``stall`` names commands never answered (``GREETING``, and ``HANDSHAKE`` for the TLS
    handshake after STLS); ``commands`` records the lines received.
    """

    greeting: bytes = b"+OK fake POP3 ready <1896.697170952@fake>\r\n"
    capabilities: tuple[bytes, ...] = (b"TOP", b"UIDL", b"RESP-CODES", b"USER", b"SASL PLAIN")
    tls: ssl.SSLContext | None = None
    password: str = PASSWORD
    maildrop: tuple[int, int] = (3, 4096)
    replies: dict[bytes, bytes] = attrs.field(factory=dict)
    stall: set[bytes] = attrs.field(factory=set)
    hang_up_after: bytes | None = None
    close_on_connect: bool = False
    commands: list[bytes] = attrs.field(factory=list)

    async def __call__(self, reader: Reader, writer: Writer) -> None:
        if self.close_on_connect:
            return
        if b"GREETING" in self.stall:
            await asyncio.sleep(3600)
        writer.write(self.greeting)
        await writer.drain()
        secure = False
        user: bytes | None = None
        while line := await reader.readline():
            line = line.rstrip(b"\r\n")
            self.commands.append(line)
            verb, _, arg = line.partition(b" ")
            verb = verb.upper()
            if verb in self.stall:
                await asyncio.sleep(3600)
            if verb in self.replies:
                writer.write(self.replies[verb])
            elif verb == b"CAPA":
                extra = (b"STLS",) if self.tls is not None and not secure else ()
                listed = b"".join(c + b"\r\n" for c in (*self.capabilities, *extra))
                writer.write(b"+OK capability list follows\r\n" + listed + b".\r\n")
            elif verb == b"STLS":
                writer.write(b"+OK begin TLS negotiation\r\n")
            elif verb == b"USER":
                user = arg
                writer.write(b"+OK\r\n")
            elif verb == b"PASS":
                ok = user == USER.encode() and arg == self.password.encode()
                writer.write(b"+OK logged in\r\n" if ok else b"-ERR [AUTH] invalid login\r\n")
            elif verb == b"STAT":
                writer.write(b"+OK %d %d\r\n" % self.maildrop)
            elif verb == b"QUIT":
                writer.write(b"+OK bye\r\n")
            else:
                writer.write(b"-ERR unknown command\r\n")
            await writer.drain()
            if verb == b"STLS" and self.tls is not None and verb not in self.replies:
                if b"HANDSHAKE" in self.stall:
                    await asyncio.sleep(3600)
                await writer.start_tls(self.tls)
                secure = True
            if verb in (b"QUIT", self.hang_up_after):
                return


async def check(server: FakePop3, ctx: ProbeContext, **fields: Any) -> Result:
    async with TcpServer(server) as listening:
        host = fields.pop("host", "127.0.0.1")
        return await Pop3Probe(host, listening.port, **fields).check(ctx)


def verbs(server: FakePop3) -> list[bytes]:
    return [line.split(b" ", 1)[0] for line in server.commands]


# -- up ----------------------------------------------------------------------------------------


async def test_up_without_a_login(ctx: ProbeContext) -> None:
    server = FakePop3()
    result = await check(server, ctx)
    assert result.status is Status.UP, result.summary()
    assert result.kind == "pop3"
    assert result.phase_names() == ("resolve", "connect", "banner", "capability", "quit")
    assert result.metrics == {"tls": 0}
    assert verbs(server) == [b"CAPA", b"QUIT"]
    assert [(a.name, a.passed, a.observed) for a in result.assertions] == [
        ("starttls", True, "STLS is not offered")
    ]


async def test_up_with_login_and_stat(ctx: ProbeContext) -> None:
    server = FakePop3()
    result = await check(server, ctx, **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == (
        "resolve",
        "connect",
        "banner",
        "capability",
        "auth",
        "command",
        "quit",
    )
    assert result.metrics == {"tls": 0, "messages": 3, "maildrop_bytes": 4096}
    assert server.commands == [
        b"CAPA",
        b"USER monitor",
        b"PASS " + PASSWORD.encode(),
        b"STAT",
        b"QUIT",
    ]
    assert get_kind("pop3").describe(result) == "POP3 over plain text, 3 messages"  # type: ignore[misc]


async def test_without_stat_there_is_no_command_phase(ctx: ProbeContext) -> None:
    server = FakePop3(stall={b"STAT"})
    result = await check(server, ctx, stat=False, timeouts=Timeouts(total=2), **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert "command" not in result.phase_names()
    assert "messages" not in result.metrics


async def test_stls_upgrades_and_asks_for_capabilities_again(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    server = FakePop3(tls=good_tls)
    result = await check(
        server,
        ctx,
        host="localhost",
        starttls="required",
        starttls_options=TlsOptions(ca_data=ca_pem),
        **LOGIN,
    )
    assert result.status is Status.UP, result.summary()
    assert [p.name for p in result.phases] == [
        "resolve",
        "connect",
        "banner",
        "capability",
        "starttls",
        "tls",
        "capability",
        "auth",
        "command",
        "quit",
    ]
    assert result.tls is not None
    assert result.metrics["tls"] == 1
    assert verbs(server) == [b"CAPA", b"STLS", b"CAPA", b"USER", b"PASS", b"STAT", b"QUIT"]
    assert get_kind("pop3").describe(result) == "POP3 over STARTTLS, 3 messages"  # type: ignore[misc]


async def test_starttls_off_stays_in_plain_text(
    ctx: ProbeContext, good_tls: ssl.SSLContext
) -> None:
    server = FakePop3(tls=good_tls)
    result = await check(server, ctx, starttls="off")
    assert result.status is Status.UP, result.summary()
    assert b"STLS" not in verbs(server)


async def test_pop3s_is_tls_from_the_first_byte(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    async with TcpServer(FakePop3(), ssl_context=good_tls) as listening:
        probe = Pop3Probe("localhost", listening.port, tls=TlsOptions(ca_data=ca_pem), **LOGIN)
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names()[:4] == ("resolve", "connect", "tls", "banner")
    assert result.metrics["tls"] == 1


async def test_a_server_without_capa_is_up_with_no_capabilities(ctx: ProbeContext) -> None:
    server = FakePop3(replies={b"CAPA": b"-ERR unknown command\r\n"})
    result = await check(server, ctx, **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["messages"] == 3


async def test_capabilities_are_dot_unstuffed(ctx: ProbeContext) -> None:
    capa = b"+OK\r\nUSER\r\n..odd-capability\r\n.\r\n"
    result = await check(
        FakePop3(replies={b"CAPA": capa}),
        ctx,
        assertions=(BodyMatches(r"(?m)^\.odd-capability\r$"), BodyContains("fake POP3 ready")),
    )
    assert result.status is Status.UP, result.summary()


# -- down --------------------------------------------------------------------------------------

DOWN: list[Any] = [
    pytest.param(
        FakePop3(password="other"),
        LOGIN,
        ErrorKind.AUTH,
        "auth",
        "login refused: '[AUTH] invalid login'",
        id="wrong-password",
    ),
    pytest.param(
        FakePop3(replies={b"USER": b"-ERR [AUTH] Plaintext authentication disallowed\r\n"}),
        LOGIN,
        ErrorKind.AUTH,
        "auth",
        "Plaintext authentication disallowed",
        id="user-refused",
    ),
    pytest.param(
        FakePop3(greeting=b"220 smtp.example ESMTP\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "not a POP3 greeting: '220 smtp.example ESMTP'",
        id="garbage-greeting",
    ),
    pytest.param(
        FakePop3(greeting=b"+OKAY\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "not a POP3 greeting",
        id="almost-ok",
    ),
    pytest.param(
        FakePop3(greeting=b"-ERR too many connections\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "refused the session: 'too many connections'",
        id="err-greeting",
    ),
    pytest.param(
        FakePop3(close_on_connect=True), {}, ErrorKind.PROTOCOL, "banner", "", id="closed"
    ),
    pytest.param(
        FakePop3(greeting=b"+OK " + b"x" * (2 * LINE_LIMIT)),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        f"exceeds {LINE_LIMIT} bytes",
        id="endless-greeting",
    ),
    pytest.param(
        FakePop3(replies={b"CAPA": b"+OK\r\n" + b"X\r\n" * (MULTILINE_LINES + 5) + b".\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        f"more than {MULTILINE_LINES} lines",
        id="endless-capa-lines",
    ),
    pytest.param(
        FakePop3(replies={b"CAPA": b"+OK\r\n" + (b"Y" * 2000 + b"\r\n") * 200 + b".\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        f"exceeds {MULTILINE_LIMIT} bytes",
        id="oversized-capa",
    ),
    pytest.param(
        FakePop3(replies={b"CAPA": b"+OK\r\nUSER\r\n"}, hang_up_after=b"CAPA"),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        "connection closed before the end of the CAPA reply",
        id="capa-cut-short",
    ),
    pytest.param(
        FakePop3(replies={b"CAPA": b"* OK IMAP here\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        "expected +OK or -ERR, got '* OK IMAP here'",
        id="capa-garbage",
    ),
    pytest.param(
        FakePop3(),
        {"starttls": "required"},
        ErrorKind.TLS,
        "capability",
        "STLS is required, but not offered",
        id="stls-not-offered",
    ),
    pytest.param(
        FakePop3(replies={b"CAPA": b"-ERR no\r\n"}),
        {"starttls": "required"},
        ErrorKind.TLS,
        "capability",
        "capabilities: none",
        id="stls-without-capa",
    ),
    pytest.param(
        FakePop3(
            capabilities=(b"USER", b"STLS"),
            replies={b"STLS": b"-ERR TLS not available now\r\n"},
        ),
        {},
        ErrorKind.TLS,
        "starttls",
        "STLS was offered, then refused",
        id="stls-refused",
    ),
    pytest.param(
        FakePop3(capabilities=(b"USER", b"STLS"), replies={b"STLS": b"+OK go\r\n+OK injected\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "starttls",
        "plain-text bytes after the STLS reply",
        id="stls-injection",
    ),
    pytest.param(
        FakePop3(replies={b"STAT": b"-ERR maildrop locked\r\n"}),
        LOGIN,
        ErrorKind.PROTOCOL,
        "command",
        "STAT failed: 'maildrop locked'",
        id="stat-refused",
    ),
    pytest.param(
        FakePop3(replies={b"STAT": b"+OK lots\r\n"}),
        LOGIN,
        ErrorKind.PROTOCOL,
        "command",
        "not a STAT reply",
        id="stat-garbage",
    ),
    pytest.param(
        FakePop3(replies={b"QUIT": b"-ERR some deleted messages not removed\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "quit",
        "QUIT failed",
        id="quit-refused",
    ),
    pytest.param(
        FakePop3(replies={b"QUIT": b""}),
        {},
        ErrorKind.PROTOCOL,
        "quit",
        "connection closed",
        id="quit-closed",
    ),
]


@pytest.mark.parametrize(("server", "fields", "kind", "phase", "message"), DOWN)
async def test_down(
    server: FakePop3,
    fields: dict[str, Any],
    kind: ErrorKind,
    phase: str,
    message: str,
    ctx: ProbeContext,
) -> None:
    result = await check(server, ctx, timeouts=Timeouts(total=2, read=0.5), **fields)
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (kind, phase), result.error
    assert message in result.error.message
    assert PASSWORD not in result_to_json(result)


# -- TLS ---------------------------------------------------------------------------------------


async def test_stls_with_an_untrusted_certificate_is_down_tls(
    ctx: ProbeContext, self_signed_tls: ssl.SSLContext
) -> None:
    started = time.monotonic()
    result = await check(FakePop3(tls=self_signed_tls), ctx, host="localhost", **LOGIN)
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"
    assert "auth" not in result.phase_names()
    assert time.monotonic() - started < 1.5


async def test_pop3s_with_an_untrusted_certificate_is_down_tls(
    ctx: ProbeContext, self_signed_tls: ssl.SSLContext
) -> None:
    async with TcpServer(FakePop3(), ssl_context=self_signed_tls) as listening:
        result = await Pop3Probe("localhost", listening.port, tls=TlsOptions()).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"


# -- a stall in any phase is a timeout naming it, at the deadline ------------------------------

STALLS: list[Any] = [
    pytest.param(FakePop3(stall={b"GREETING"}), {}, "banner", id="banner"),
    pytest.param(FakePop3(stall={b"CAPA"}), {}, "capability", id="capability"),
    pytest.param(FakePop3(capabilities=(b"STLS",), stall={b"STLS"}), {}, "starttls", id="starttls"),
    pytest.param(None, {}, "tls", id="tls-handshake"),
    pytest.param(FakePop3(stall={b"PASS"}), LOGIN, "auth", id="auth"),
    pytest.param(FakePop3(stall={b"STAT"}), LOGIN, "command", id="command"),
    pytest.param(FakePop3(stall={b"QUIT"}), {}, "quit", id="quit"),
]


@pytest.mark.parametrize(("server", "fields", "phase"), STALLS)
async def test_a_stall_times_out_naming_the_phase(
    server: FakePop3 | None,
    fields: dict[str, Any],
    phase: str,
    ctx: ProbeContext,
    good_tls: ssl.SSLContext,
    ca_pem: str,
) -> None:
    if server is None:
        server = FakePop3(tls=good_tls, stall={b"HANDSHAKE"})
        fields = {"host": "localhost", "starttls_options": TlsOptions(ca_data=ca_pem)}
    total = 0.3
    started = time.monotonic()
    result = await check(server, ctx, timeouts=Timeouts(total=total), **fields)
    elapsed = time.monotonic() - started
    assert result.status is Status.DOWN
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, phase), result.error
    assert total <= result.duration < total + 0.1
    assert elapsed < total + 0.2


# -- the egress policy -------------------------------------------------------------------------


async def test_a_denied_address_is_never_contacted() -> None:
    guard = GuardedConnector()
    ctx = make_context(policy=EgressPolicy(deny=["127.0.0.0/8"]), connector=guard)
    async with TcpServer(FakePop3()) as listening:
        result = await Pop3Probe("127.0.0.1", listening.port, **LOGIN).check(ctx)
        assert listening.connections == 0
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert guard.dialled == []


# -- hostile servers: any bytes are a result, never a crash ------------------------------------

POP3_LINES = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"+OK", b"-ERR", b"+OK ", b".", b"..", b"+OK 1 ", b"-ERR "]).flatmap(
        lambda head: st.binary(max_size=20).map(lambda rest: head + rest)
    ),
)
POP3_REPLIES = st.lists(POP3_LINES, max_size=4).map(lambda lines: b"\r\n".join(lines))


@settings(max_examples=40, deadline=None)
@given(
    verb=st.sampled_from([b"GREETING", b"CAPA", b"USER", b"PASS", b"STAT", b"QUIT"]),
    reply=POP3_REPLIES,
    hang_up=st.booleans(),
)
def test_any_reply_is_a_classified_result(verb: bytes, reply: bytes, hang_up: bool) -> None:
    if verb == b"GREETING":
        server = FakePop3(greeting=reply, hang_up_after=b"CAPA" if hang_up else None)
    else:
        server = FakePop3(replies={verb: reply}, hang_up_after=verb if hang_up else None)

    async def scenario() -> Result:
        return await check(server, make_context(), timeouts=Timeouts(total=0.2), **LOGIN)

    result = asyncio.run(scenario())
    assert result.error is None or result.error.kind is not ErrorKind.INTERNAL, result.error
    assert result.status in (Status.UP, Status.DOWN)
    assert PASSWORD not in result_to_json(result)


# -- the password stays secret -----------------------------------------------------------------


async def test_the_password_shows_nowhere(
    ctx: ProbeContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = await check(FakePop3(password="other"), ctx, **LOGIN)
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert any("refused the login" in r.getMessage() for r in caplog.records)
    probe = Pop3Probe("127.0.0.1", **LOGIN)
    line, _ = nagios_line(result)
    shown = [
        result_to_json(result),
        result.summary(),
        line,
        repr(result),
        repr(probe),
        str(probe),
        repr(probe_to_dict(probe)),
        caplog.text,
    ]
    assert all(PASSWORD not in text for text in shown)


async def test_a_server_echoing_the_password_is_masked(ctx: ProbeContext) -> None:
    echo = b"-ERR wrong password " + PASSWORD.encode() + b"\r\n"
    result = await check(FakePop3(replies={b"PASS": echo}), ctx, **LOGIN)
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "wrong password <secret>" in result.error.message
    assert PASSWORD not in result_to_json(result)


def test_a_password_that_is_not_a_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(DefinitionError) as info:
        Pop3Probe("h", username=USER, password=PASSWORD)  # type: ignore[arg-type]
    assert info.value.path == "password"
    assert PASSWORD not in str(info.value)


# -- definitions -------------------------------------------------------------------------------


def test_defaults_and_target() -> None:
    probe = Pop3Probe("mail.internal")
    assert (probe.port, probe.starttls, probe.stat, probe.username) == (110, "optional", True, None)
    assert probe.target == "mail.internal:110"
    assert Pop3Probe("mail.internal", tls=TlsOptions()).port == 995
    assert Pop3Probe("::1", 1110).target == "[::1]:1110"
    assert Pop3Probe("h") == Pop3Probe("h", 110)


ROUND_TRIP = [
    Pop3Probe("127.0.0.1"),
    Pop3Probe("mail.internal", tls=TlsOptions(ca_file="/etc/ssl/ca.pem"), stat=False),
    Pop3Probe(
        "::1",
        1110,
        starttls="required",
        starttls_options=TlsOptions(verify=False),
        ip_family="ipv4",
        assertions=(BodyContains("UIDL"),),
        timeouts=Timeouts(total=3, read=1),
    ),
]


@pytest.mark.parametrize("probe", ROUND_TRIP)
def test_round_trip_through_plain_data(probe: Pop3Probe) -> None:
    assert build_probe(probe_to_dict(probe)) == probe


def test_a_password_round_trips_by_reference() -> None:
    probe = Pop3Probe("127.0.0.1", **LOGIN)
    plain = probe_to_dict(probe)
    assert plain["password"] == "<secret>"
    plain["password"] = {"secret": "pop"}
    assert build_probe(plain, secrets={"pop": Secret(PASSWORD)}) == probe


INVALID_DATA: list[Any] = [
    pytest.param({"host": "h", "port": 70000}, "port", "1 to 65535", id="port-high"),
    pytest.param({"host": "h", "sta": True}, "sta", "did you mean 'stat'", id="typo"),
    pytest.param({"host": "h", "stat": "yes"}, "stat", "true or false", id="stat-text"),
    pytest.param({"host": "h", "username": "u"}, "username", "needs a password", id="user"),
    pytest.param({"host": "h", "starttls": "always"}, "starttls", "one of", id="starttls"),
    pytest.param(
        {"host": "h", "username": "u", "password": "a\r\nDELE 1"},
        "password",
        "CR or LF",
        id="password-injection",
    ),
    pytest.param(
        {"host": "h", "username": "u\r\nDELE 1", "password": "p"},
        "username",
        "CR or LF",
        id="username-injection",
    ),
    pytest.param(
        {"host": "h", "tls": {}, "starttls_options": {}},
        "starttls_options",
        "not used",
        id="options-with-tls",
    ),
]


@pytest.mark.parametrize(("data", "path", "message"), INVALID_DATA)
def test_invalid_definitions(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "pop3", **data})
    problems = {e.path: e.message for e in info.value.errors}
    assert path in problems, problems
    assert message in problems[path]
    assert "DELE" not in str(info.value) or path == "username"


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(DefinitionError) as info:
        Pop3Probe("h", stat=1)  # type: ignore[arg-type]
    assert info.value.path == "stat"


# -- the kind's declaration and command-line form ----------------------------------------------


def test_the_kind_is_registered() -> None:
    kind = get_kind("pop3")
    assert kind is KIND
    assert kind.docs == "probes/pop3.md"
    assert {m.key: m.name for m in kind.metrics} == {
        "messages": "probekit_pop3_messages",
        "maildrop_bytes": "probekit_pop3_maildrop_bytes",
        "tls": "probekit_pop3_tls",
    }
    flags = {f for o in kind.options for f in o.flags}
    assert {"--starttls", "--tls", "--user", "--password-env", "--no-stat"} <= flags
    assert "--password" not in flags
    assert KIND.target.parse("mail") == {"host": "mail"}
    assert KIND.target.parse("mail:1110") == {"host": "mail", "port": 1110}


def _from_options(target: str, **values: Any) -> Any:
    definition: dict[str, Any] = {"kind": "pop3", **KIND.target.parse(target)}
    for option in KIND.options:
        if option.field is not None and values.get(option.name) is not None:
            definition[option.field] = values[option.name]
    assert KIND.to_definition is not None
    KIND.to_definition(values, definition)
    return build_probe(definition)


def test_options_build_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POP3_PASSWORD", PASSWORD)
    probe = _from_options(
        "mail", tls=True, insecure=True, username=USER, password_env="POP3_PASSWORD", no_stat=True
    )
    assert probe == Pop3Probe("mail", 995, tls=TlsOptions(verify=False), stat=False, **LOGIN)
    monkeypatch.setenv("POP3_PASSWORD", "")
    with pytest.raises(DefinitionErrors) as info:
        _from_options("mail", username=USER, password_env="POP3_PASSWORD")
    assert [e.path for e in info.value.errors] == ["--password-env"]


async def test_the_command_line_checks_with_nagios_output(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from probekit.cli import main

    monkeypatch.setenv("POP3_PASSWORD", "wrong")
    async with TcpServer(FakePop3()) as listening:
        argv = ["check", "pop3", f"127.0.0.1:{listening.port}", "--nagios"]
        argv += ["--user", USER, "--password-env", "POP3_PASSWORD"]
        code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    assert code == 2, out
    assert out.startswith("POP3 CRITICAL - ")
    assert "auth during auth: login refused" in out
    assert "banner=" in out and "auth=" in out
