"""SmtpProbe against aiosmtpd (a real SMTP server, in-process, on loopback) and a small
hand-written fake server for what aiosmtpd will not do: garbage, stalls in each phase, odd
greetings, replies without end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from hypothesis import given, settings
from hypothesis import strategies as st

from probekit import (
    BodyContains,
    BodyMatches,
    CertExpiry,
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
    probe_to_dict,
    result_to_json,
)
from probekit.probes import get_kind
from probekit.probes._registry import describe
from probekit.probes.smtp import DEFAULT_HELO, KIND, LINE_LIMIT, REPLY_LIMIT, SmtpProbe
from servers import GuardedConnector, TcpServer, make_context

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

USER = "monitor"
PASSWORD = "hunter2-canary-7c2e91"  # a canary: it must show up nowhere but on the wire


# -- aiosmtpd: the real server -----------------------------------------------------------------


class Handler:
    """aiosmtpd handler: refuses recipients at ``refused.test`` and senders ``bad@...``."""

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("bad@"):
            return "553 5.7.1 sender not allowed"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.endswith("@refused.test"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def authenticator(
    server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


@contextlib.asynccontextmanager
async def aiosmtpd(*, implicit: ssl.SSLContext | None = None, **options: Any) -> AsyncIterator[int]:
    """An aiosmtpd server on 127.0.0.1; ``implicit`` makes it TLS from the first byte."""
    loop = asyncio.get_running_loop()
    options.setdefault("authenticator", authenticator)
    options.setdefault("hostname", "mail.test")

    sessions: list[AiosmtpdSMTP] = []

    def factory() -> AiosmtpdSMTP:
        sessions.append(AiosmtpdSMTP(Handler(), **options))
        return sessions[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=implicit)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for session in sessions:  # Server.close_clients() is Python 3.13+
            if session.transport is not None:
                session.transport.close()
        await asyncio.sleep(0)


PLAIN_PHASES = ("resolve", "connect", "banner", "ehlo", "quit")
STARTTLS_PHASES = ("resolve", "connect", "banner", "ehlo", "starttls", "tls", "ehlo", "quit")


async def test_plain_server_without_starttls_is_up_with_the_fact_recorded(
    ctx: ProbeContext,
) -> None:
    async with aiosmtpd() as port:
        result = await SmtpProbe("127.0.0.1", port).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert tuple(p.name for p in result.phases) == PLAIN_PHASES
    assert result.metrics["banner_code"] == 220
    assert (result.metrics["tls"], result.metrics["starttls"], result.metrics["auth"]) == (0, 0, 0)
    assert result.metrics["size_limit"] == 33554432
    outcomes = {a.name: a for a in result.assertions}
    assert outcomes["banner"].passed and outcomes["banner"].observed.startswith("220 mail.test")
    assert outcomes["starttls"].passed and outcomes["starttls"].observed == "not offered"
    assert "SIZE 33554432" in outcomes["ehlo"].observed
    assert result.tls is None


async def test_starttls_upgrades_and_greets_again(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    async with aiosmtpd(tls_context=good_tls) as port:
        probe = SmtpProbe("127.0.0.1", port, starttls_options=TlsOptions(ca_data=ca_pem))
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert tuple(p.name for p in result.phases) == STARTTLS_PHASES
    assert (result.metrics["tls"], result.metrics["starttls"]) == (1, 1)
    assert result.tls is not None and result.tls.verified
    assert result.metrics["cert_days_left"] > 1
    ehlos = [a.observed for a in result.assertions if a.name == "ehlo"]
    assert "STARTTLS" in ehlos[0] and "STARTTLS" not in ehlos[1]  # the second is after TLS
    assert describe(result).endswith("STARTTLS, SIZE 33554432")


@pytest.mark.parametrize(
    ("excluded", "mechanism"), [((), "PLAIN"), (("PLAIN",), "LOGIN")], ids=["plain", "login"]
)
async def test_auth_after_starttls(
    excluded: tuple[str, ...],
    mechanism: str,
    ctx: ProbeContext,
    good_tls: ssl.SSLContext,
    ca_pem: str,
) -> None:
    async with aiosmtpd(tls_context=good_tls, auth_exclude_mechanism=excluded) as port:
        probe = SmtpProbe(
            "127.0.0.1",
            port,
            starttls="required",
            starttls_options=TlsOptions(ca_data=ca_pem),
            username=USER,
            password=Secret(PASSWORD),
        )
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert tuple(p.name for p in result.phases) == (*STARTTLS_PHASES[:-1], "auth", "quit")
    assert result.metrics["auth"] == 1
    assert "AUTH ok" in describe(result)
    ehlo_after_tls = [a.observed for a in result.assertions if a.name == "ehlo"][-1]
    assert "AUTH " in ehlo_after_tls
    assert ("PLAIN" in ehlo_after_tls) is (mechanism == "PLAIN")  # LOGIN when PLAIN is not offered


async def test_implicit_tls(ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str) -> None:
    # aiosmtpd counts only STARTTLS as TLS for AUTH: with implicit TLS it must be told
    async with aiosmtpd(implicit=good_tls, auth_require_tls=False) as port:
        probe = SmtpProbe(
            "localhost",
            port,
            tls=TlsOptions(ca_data=ca_pem),
            username=USER,
            password=Secret(PASSWORD),
        )
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    phases = ("resolve", "connect", "tls", "banner", "ehlo", "auth", "quit")
    assert tuple(p.name for p in result.phases) == phases
    assert (result.metrics["tls"], result.metrics["starttls"], result.metrics["auth"]) == (1, 0, 1)
    assert "starttls" not in {a.name for a in result.assertions}
    assert result.tls is not None


async def test_starttls_off_never_upgrades(ctx: ProbeContext, good_tls: ssl.SSLContext) -> None:
    async with aiosmtpd(tls_context=good_tls) as port:
        result = await SmtpProbe("127.0.0.1", port, starttls="off").check(ctx)
    assert result.status is Status.UP, result.summary()
    assert tuple(p.name for p in result.phases) == PLAIN_PHASES
    assert result.metrics["starttls"] == 0


async def test_dry_run_accepted(ctx: ProbeContext) -> None:
    async with aiosmtpd() as port:
        probe = SmtpProbe(
            "127.0.0.1", port, mail_from="probe@ok.test", rcpt_to=("a@ok.test", "b@ok.test")
        )
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert tuple(p.name for p in result.phases) == (*PLAIN_PHASES[:-1], "command", "quit")
    assert [
        (a.name, a.passed) for a in result.assertions if a.name in ("mail_from", "rcpt_to")
    ] == [
        ("mail_from", True),
        ("rcpt_to", True),
        ("rcpt_to", True),
    ]


async def test_null_sender(ctx: ProbeContext) -> None:
    async with aiosmtpd() as port:
        result = await SmtpProbe("127.0.0.1", port, mail_from="", rcpt_to=("a@ok.test",)).check(ctx)
    assert result.status is Status.UP, result.summary()


AIOSMTPD_DOWN: list[Any] = [
    pytest.param(
        {"tls_context": "good"},
        {"starttls": "required", "username": USER, "password": Secret("wrong-one")},
        ErrorKind.AUTH,
        "auth",
        "535",
        id="wrong-password",
    ),
    pytest.param(
        {},
        {"starttls": "required"},
        ErrorKind.TLS,
        "starttls",
        "STARTTLS is required but the server does not offer it",
        id="starttls-required-not-offered",
    ),
    pytest.param(
        {"tls_context": "self_signed"},
        {"starttls": "required"},
        ErrorKind.TLS,
        "tls",
        "certificate verify failed",
        id="starttls-untrusted-certificate",
    ),
    pytest.param(
        {"tls_context": "good"},
        {"starttls": "required", "starttls_options": {"server_name": "other.example"}},
        ErrorKind.TLS,
        "tls",
        "certificate verify failed",
        id="starttls-wrong-name",
    ),
    pytest.param(
        {"implicit": "self_signed"},
        {"tls": {}},
        ErrorKind.TLS,
        "tls",
        "certificate verify failed",
        id="implicit-tls-untrusted",
    ),
    pytest.param(
        {},
        {"username": USER, "password": Secret(PASSWORD)},
        ErrorKind.TLS,
        "auth",
        "not sending the password over an unencrypted connection",
        id="password-without-tls",
    ),
    pytest.param(
        {},  # aiosmtpd offers AUTH only after TLS (auth_require_tls)
        {"username": USER, "password": Secret(PASSWORD), "plaintext_auth": True},
        ErrorKind.AUTH,
        "auth",
        "does not offer AUTH",
        id="no-auth-offered",
    ),
    pytest.param(
        {},
        {"mail_from": "probe@ok.test", "rcpt_to": ("nobody@refused.test",)},
        ErrorKind.ASSERTION,
        None,
        "550 5.1.1 no such user",
        id="recipient-refused",
    ),
    pytest.param(
        {},
        {"mail_from": "bad@ok.test", "rcpt_to": ("a@ok.test",)},
        ErrorKind.ASSERTION,
        None,
        "553 5.7.1 sender not allowed",
        id="sender-refused",
    ),
    pytest.param(
        {},
        {"expect_banner": "Postfix"},
        ErrorKind.ASSERTION,
        None,
        "/Postfix/",
        id="unexpected-banner",
    ),
]


@pytest.mark.parametrize(("server", "fields", "kind", "phase", "message"), AIOSMTPD_DOWN)
async def test_down_against_aiosmtpd(
    server: dict[str, Any],
    fields: dict[str, Any],
    kind: ErrorKind,
    phase: str | None,
    message: str,
    ctx: ProbeContext,
    good_tls: ssl.SSLContext,
    self_signed_tls: ssl.SSLContext,
    ca_pem: str,
) -> None:
    contexts = {"good": good_tls, "self_signed": self_signed_tls}
    server = {k: contexts.get(v, v) if isinstance(v, str) else v for k, v in server.items()}
    # The probe trusts the test CA wherever it does TLS (which the self-signed server is not).
    if "tls" in fields:
        fields = {**fields, "tls": {"ca_data": ca_pem, **fields["tls"]}}
    if "tls_context" in server:
        options = {"ca_data": ca_pem, **fields.get("starttls_options", {})}
        fields = {**fields, "starttls_options": options}
    async with aiosmtpd(**server) as port:
        definition = {"kind": "smtp", "host": "localhost", "port": port, **fields}
        result = await build_probe({**definition, "timeouts": {"total": 5}}).check(ctx)
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (kind, phase), result.error
    assert message in result.error.message
    assert PASSWORD not in result_to_json(result)


async def test_a_refused_recipient_still_ends_with_rset_and_quit() -> None:
    server = FakeSmtp(replies={b"RCPT": b"550 5.1.1 no such user\r\n"})
    result = await check(server, mail_from="p@ok.test", rcpt_to=("x@ok.test", "y@ok.test"))
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert [c.split()[0] for c in server.commands] == [
        b"EHLO",
        b"MAIL",
        b"RCPT",
        b"RCPT",
        b"RSET",
        b"QUIT",
    ]
    assert [a.observed for a in result.assertions if a.name == "rcpt_to"] == [
        "550 5.1.1 no such user"
    ] * 2
    assert result.phase_names()[-2:] == ("command", "quit")


# -- a hand-written fake server ----------------------------------------------------------------

EHLO = b"250-fake.test greets you\r\n250-SIZE 1000\r\n250 AUTH PLAIN LOGIN\r\n"
EHLO_TLS = b"250-fake.test greets you\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"
STALL = None


@attrs.define
class FakeSmtp:
    """A scripted SMTP server. ``banner`` and each reply are sent as given (``None``: say
    nothing and keep the connection open); ``replies`` maps a command's first word to its
    reply; ``tls`` is the context STARTTLS upgrades with; ``hang_up_after`` closes the
    connection after replying to that command (``hang_up_after_banner`` after the banner);
    ``no_handshake`` answers STARTTLS and then
    never starts TLS."""

    banner: bytes | None = b"220 fake.test ESMTP\r\n"
    hang_up_after_banner: bool = False
    ehlo: bytes | None = EHLO
    replies: dict[bytes, bytes | None] = attrs.field(factory=dict)
    tls: ssl.SSLContext | None = None
    hang_up_after: bytes | None = None
    no_handshake: bool = False
    commands: list[bytes] = attrs.field(factory=list)

    DEFAULTS = {
        b"STARTTLS": b"220 2.0.0 go ahead\r\n",
        b"AUTH": b"235 2.7.0 authenticated\r\n",
        b"MAIL": b"250 2.1.0 OK\r\n",
        b"RCPT": b"250 2.1.5 OK\r\n",
        b"RSET": b"250 2.0.0 OK\r\n",
        b"QUIT": b"221 2.0.0 bye\r\n",
    }

    async def __call__(self, reader: Reader, writer: Writer) -> None:
        if not await self._say(writer, self.banner) or self.hang_up_after_banner:
            return
        while line := await reader.readline():
            self.commands.append(line.rstrip(b"\r\n"))
            word = line.split()[0].upper() if line.split() else b""
            if word in (b"EHLO", b"HELO"):
                reply = self.ehlo
            else:
                reply = self.replies.get(word, self.DEFAULTS.get(word, b"500 5.5.2 what?\r\n"))
            if not await self._say(writer, reply):
                return
            if word == b"STARTTLS" and reply is not None and reply.startswith(b"220"):
                if self.no_handshake:
                    await asyncio.sleep(3600)
                if self.tls is not None:  # else the handshake meets plain text
                    await writer.start_tls(self.tls)
            if word == self.hang_up_after or word == b"QUIT":
                return

    @staticmethod
    async def _say(writer: Writer, data: bytes | None) -> bool:
        if data is None:
            await asyncio.sleep(3600)
            return False
        writer.write(data)
        await writer.drain()
        return True


async def check(server: FakeSmtp, ctx: ProbeContext | None = None, **fields: Any) -> Result:
    fields.setdefault("timeouts", Timeouts(total=5))
    async with TcpServer(server) as listening:
        probe = SmtpProbe("127.0.0.1", listening.port, **fields)
        return await probe.check(ctx or make_context())


async def test_the_dialogue_on_the_wire() -> None:
    server = FakeSmtp(replies={b"STARTTLS": b"454 4.7.0 not now\r\n"})
    await check(
        server,
        starttls="off",
        helo_name="probe.example.net",
        username=USER,
        password=Secret(PASSWORD),
        plaintext_auth=True,
        mail_from="",
        rcpt_to=("a@ok.test",),
    )
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    assert server.commands == [
        b"EHLO probe.example.net",
        b"AUTH PLAIN " + token,
        b"MAIL FROM:<>",
        b"RCPT TO:<a@ok.test>",
        b"RSET",
        b"QUIT",
    ]


async def test_default_helo_name() -> None:
    server = FakeSmtp()
    await check(server, starttls="off")
    assert server.commands[0] == f"EHLO {DEFAULT_HELO}".encode()


async def test_auth_login_on_the_wire() -> None:
    login = FakeSmtp(
        ehlo=b"250-fake.test\r\n250 AUTH LOGIN\r\n",
        replies={b"AUTH": b"334 VXNlcm5hbWU6\r\n"},
    )

    async def serve(reader: Reader, writer: Writer) -> None:
        writer.write(b"220 fake.test\r\n")
        while line := await reader.readline():
            login.commands.append(line.rstrip(b"\r\n"))
            if line.startswith(b"EHLO"):
                writer.write(login.ehlo or b"")
            elif line.startswith(b"AUTH"):
                writer.write(b"334 VXNlcm5hbWU6\r\n")
            elif len(login.commands) == 3:
                writer.write(b"334 UGFzc3dvcmQ6\r\n")
            elif len(login.commands) == 4:
                writer.write(b"235 2.7.0 ok\r\n")
            else:
                writer.write(b"221 bye\r\n")
                return

    async with TcpServer(serve) as listening:
        probe = SmtpProbe(
            "127.0.0.1",
            listening.port,
            username=USER,
            password=Secret(PASSWORD),
            plaintext_auth=True,
        )
        result = await probe.check(make_context())
    assert result.status is Status.UP, result.summary()
    assert login.commands[1:4] == [
        b"AUTH LOGIN",
        base64.b64encode(USER.encode()),
        base64.b64encode(PASSWORD.encode()),
    ]


FAKE_DOWN: list[Any] = [
    pytest.param(
        FakeSmtp(banner=b"SSH-2.0-OpenSSH_9.2\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "not an SMTP reply",
        id="garbage-banner",
    ),
    pytest.param(
        FakeSmtp(banner=b"421 4.3.2 too busy, try later\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "refused the session (421)",
        id="banner-421",
    ),
    pytest.param(
        FakeSmtp(banner=b"554-no service\r\n554 for you\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "refused the session (554)",
        id="banner-554-multiline",
    ),
    pytest.param(
        FakeSmtp(banner=b"250 hello?\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "expected a 220 greeting, got 250",
        id="banner-not-220",
    ),
    pytest.param(
        FakeSmtp(banner=b"", hang_up_after_banner=True),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "closed before the end of the banner",
        id="closed-at-once",
    ),
    pytest.param(
        FakeSmtp(banner=b"220 half a gree", hang_up_after_banner=True),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "closed before the end of the banner",
        id="half-banner",
    ),
    pytest.param(
        FakeSmtp(banner=b"220 " + b"x" * (LINE_LIMIT + 10)),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        f"a line of the banner exceeds {LINE_LIMIT} bytes",
        id="endless-line",
    ),
    pytest.param(
        FakeSmtp(ehlo=b"250-fake.test\r\n" + b"250-X-FILLER 0123456789\r\n" * 2000),
        {},
        ErrorKind.PROTOCOL,
        "ehlo",
        f"the EHLO reply exceeds {REPLY_LIMIT} bytes",
        id="endless-multiline",
    ),
    pytest.param(
        FakeSmtp(ehlo=b"250-fake.test\r\n251 odd\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "ehlo",
        "changes its code from 250 to 251",
        id="code-changes",
    ),
    pytest.param(
        FakeSmtp(ehlo=b"502 5.5.1 EHLO not implemented\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "ehlo",
        "EHLO refused: 502",
        id="ehlo-refused",
    ),
    pytest.param(
        FakeSmtp(ehlo=b"\x00\xff\xfe garbage\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "ehlo",
        "the EHLO reply is not an SMTP reply",
        id="garbage-ehlo",
    ),
    pytest.param(
        FakeSmtp(ehlo=b"250 fake", hang_up_after=b"EHLO"),
        {},
        ErrorKind.PROTOCOL,
        "ehlo",
        "closed before the end of the EHLO reply",
        id="closed-in-ehlo",
    ),
    pytest.param(
        FakeSmtp(ehlo=b"421 4.4.2 shutting down\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "ehlo",
        "closing the connection: 421",
        id="ehlo-421",
    ),
    pytest.param(
        FakeSmtp(ehlo=EHLO_TLS, replies={b"STARTTLS": b"454 4.7.0 TLS not available\r\n"}),
        {},
        ErrorKind.TLS,
        "starttls",
        "offered STARTTLS but refused it: 454",
        id="starttls-refused",
    ),
    pytest.param(
        FakeSmtp(ehlo=EHLO_TLS, replies={b"STARTTLS": b"220 go ahead\r\n250 injected\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "starttls",
        "unexpected plain-text bytes after the STARTTLS go-ahead",
        id="starttls-injection",
    ),
    pytest.param(
        FakeSmtp(ehlo=EHLO_TLS, tls=None),
        {},
        ErrorKind.TLS,
        "tls",
        "",
        id="starttls-no-tls-server",
    ),
    pytest.param(
        FakeSmtp(replies={b"AUTH": b"535 5.7.8 Authentication credentials invalid\r\n"}),
        {"starttls": "off", "plaintext_auth": True},
        ErrorKind.AUTH,
        "auth",
        "AUTH PLAIN refused: 535 5.7.8 Authentication credentials invalid",
        id="wrong-password",
    ),
    pytest.param(
        FakeSmtp(replies={b"AUTH": b"454 4.7.0 temporary authentication failure\r\n"}),
        {"starttls": "off", "plaintext_auth": True},
        ErrorKind.AUTH,
        "auth",
        "454",
        id="auth-temporary-failure",
    ),
    pytest.param(
        FakeSmtp(replies={b"AUTH": b"250 sure\r\n"}),
        {"starttls": "off", "plaintext_auth": True},
        ErrorKind.PROTOCOL,
        "auth",
        "expected 235 or a refusal to AUTH PLAIN, got 250 sure",
        id="auth-odd-reply",
    ),
    pytest.param(
        FakeSmtp(ehlo=b"250-fake.test\r\n250 AUTH CRAM-MD5 GSSAPI\r\n"),
        {"starttls": "off", "plaintext_auth": True},
        ErrorKind.AUTH,
        "auth",
        "offers AUTH CRAM-MD5 GSSAPI, not PLAIN or LOGIN",
        id="auth-mechanisms-unsupported",
    ),
    pytest.param(
        FakeSmtp(replies={b"RSET": b"502 5.5.1 no RSET here\r\n"}),
        {"mail_from": "a@ok.test"},
        ErrorKind.PROTOCOL,
        "command",
        "RSET refused: 502",
        id="rset-refused",
    ),
    pytest.param(
        FakeSmtp(replies={b"MAIL": b"421 4.3.0 going away\r\n"}),
        {"mail_from": "a@ok.test"},
        ErrorKind.PROTOCOL,
        "command",
        "closing the connection: 421",
        id="mail-421",
    ),
    pytest.param(
        FakeSmtp(replies={b"RCPT": b"450 4.2.0 greylisted\r\n"}),
        {"mail_from": "a@ok.test", "rcpt_to": ("b@ok.test",)},
        ErrorKind.ASSERTION,
        None,
        "450 4.2.0 greylisted",
        id="recipient-greylisted",
    ),
    pytest.param(
        FakeSmtp(replies={b"QUIT": b"\xff garbage\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "quit",
        "the QUIT reply is not an SMTP reply",
        id="garbage-quit",
    ),
]


@pytest.mark.parametrize(("server", "fields", "kind", "phase", "message"), FAKE_DOWN)
async def test_down_against_the_fake(
    server: FakeSmtp, fields: dict[str, Any], kind: ErrorKind, phase: str | None, message: str
) -> None:
    if fields.get("plaintext_auth"):
        fields = {"username": USER, "password": Secret(PASSWORD), **fields}
    result = await check(server, **fields)
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (kind, phase), result.error
    assert message in result.error.message
    assert PASSWORD not in result_to_json(result)


async def test_a_server_that_hangs_up_at_quit_is_fine() -> None:
    server = FakeSmtp(replies={b"QUIT": b""})
    result = await check(server)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names()[-1] == "quit"


async def test_a_banner_that_does_not_match_gets_no_password() -> None:
    server = FakeSmtp(banner=b"220 other.test ESMTP Exim\r\n")
    result = await check(
        server,
        expect_banner=r"^220 fake\.test",
        starttls="off",
        username=USER,
        password=Secret(PASSWORD),
        plaintext_auth=True,
    )
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert server.commands == [b"QUIT"]
    assert result.phase_names() == ("resolve", "connect", "banner", "quit")
    banner = result.assertions[0]
    assert (banner.name, banner.passed, banner.observed) == (
        "banner",
        False,
        "220 other.test ESMTP Exim",
    )


async def test_a_multiline_banner_is_read_whole() -> None:
    server = FakeSmtp(banner=b"220-fake.test ESMTP\r\n220-be nice\r\n220 really\r\n")
    result = await check(server, expect_banner="(?m)^220-be nice$", starttls="off")
    assert result.status is Status.UP, result.summary()
    assert result.assertions[0].observed == "220 fake.test ESMTP …"


async def test_lf_only_lines_and_bare_codes_are_accepted() -> None:
    server = FakeSmtp(banner=b"220\n", ehlo=b"250-fake.test\n250 SIZE\n")
    result = await check(server, starttls="off")
    assert result.status is Status.UP, result.summary()
    assert result.metrics["size_limit"] == 0


async def test_auth_in_the_old_equals_form() -> None:
    server = FakeSmtp(ehlo=b"250-fake.test\r\n250 AUTH=LOGIN PLAIN\r\n")
    result = await check(
        server, starttls="off", username=USER, password=Secret(PASSWORD), plaintext_auth=True
    )
    assert result.status is Status.UP, result.summary()
    assert server.commands[1].startswith(b"AUTH PLAIN ")


async def test_a_server_echoing_the_password_is_masked() -> None:
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    server = FakeSmtp(replies={b"AUTH": b"535 bad credentials " + token + b"\r\n"})
    result = await check(
        server, starttls="off", username=USER, password=Secret(PASSWORD), plaintext_auth=True
    )
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "<secret>" in result.error.message
    assert token.decode() not in result_to_json(result)


async def test_body_assertions_see_the_banner_and_ehlo() -> None:
    server = FakeSmtp(replies={b"STARTTLS": b"454 no\r\n"})
    assertions = (BodyContains("fake.test ESMTP"), BodyMatches(r"(?m)^250 AUTH PLAIN LOGIN"))
    result = await check(server, starttls="off", assertions=assertions)
    assert result.status is Status.UP, result.summary()
    failing = await check(FakeSmtp(), starttls="off", assertions=(BodyContains("Postfix"),))
    assert failing.error is not None and failing.error.kind is ErrorKind.ASSERTION


async def test_cert_expiry_assertion_sees_the_starttls_certificate(
    good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    server = FakeSmtp(ehlo=EHLO_TLS, tls=good_tls)
    result = await check(
        server,
        starttls="required",
        starttls_options=TlsOptions(ca_data=ca_pem),
        assertions=(CertExpiry(warn_days=10**9),),
    )
    assert result.status is Status.DEGRADED, result.summary()
    assert result.tls is not None


# -- stalls: a timeout naming the phase, on time --------------------------------------------------

STALLS: list[Any] = [
    pytest.param(FakeSmtp(banner=STALL), {}, "banner", id="banner"),
    pytest.param(FakeSmtp(ehlo=STALL), {}, "ehlo", id="ehlo"),
    pytest.param(
        FakeSmtp(ehlo=EHLO_TLS, replies={b"STARTTLS": STALL}), {}, "starttls", id="starttls"
    ),
    pytest.param(FakeSmtp(ehlo=EHLO_TLS, no_handshake=True), {}, "tls", id="tls-handshake"),
    pytest.param(
        FakeSmtp(replies={b"AUTH": STALL}),
        {"starttls": "off", "username": USER, "password": Secret(PASSWORD), "plaintext_auth": True},
        "auth",
        id="auth",
    ),
    pytest.param(
        FakeSmtp(replies={b"RCPT": STALL}),
        {"mail_from": "a@ok.test", "rcpt_to": ("b@ok.test",)},
        "command",
        id="command",
    ),
    pytest.param(FakeSmtp(replies={b"QUIT": STALL}), {}, "quit", id="quit"),
]


@pytest.mark.parametrize(("server", "fields", "phase"), STALLS)
async def test_a_stall_times_out_in_its_phase_on_time(
    server: FakeSmtp, fields: dict[str, Any], phase: str, good_tls: ssl.SSLContext
) -> None:
    server.tls = good_tls
    total = 0.3
    async with TcpServer(server) as listening:
        probe = SmtpProbe("127.0.0.1", listening.port, timeouts=Timeouts(total=total), **fields)
        started = time.monotonic()
        result = await probe.check(make_context())
        elapsed = time.monotonic() - started
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, phase), result.error
    assert elapsed < total + 0.1
    assert total - 0.01 <= result.duration < total + 0.1


async def test_the_read_timeout_bounds_each_reply() -> None:
    result = await check(FakeSmtp(ehlo=STALL), timeouts=Timeouts(total=5, read=0.2))
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "ehlo"
    assert result.duration < 1.0


# -- hostile bytes ------------------------------------------------------------------------------

REPLY_LINES = st.one_of(
    st.binary(max_size=30),
    st.sampled_from(
        [b"220", b"250", b"235", b"334", b"421", b"535", b"220-", b"250-", b"2"]
    ).flatmap(lambda code: st.binary(max_size=20).map(lambda rest: code + rest)),
)
REPLIES = st.lists(REPLY_LINES, max_size=4).map(lambda lines: b"\r\n".join(lines))


@settings(max_examples=40, deadline=None)
@given(
    banner=REPLIES,
    ehlo=REPLIES,
    auth=REPLIES,
    quit_=REPLIES,
    crlf=st.booleans(),
)
def test_any_server_bytes_give_a_classified_result(
    banner: bytes, ehlo: bytes, auth: bytes, quit_: bytes, crlf: bool
) -> None:
    end = b"\r\n" if crlf else b""
    server = FakeSmtp(
        banner=banner + end,
        ehlo=ehlo + end,
        replies={b"AUTH": auth + end, b"QUIT": quit_ + end, b"STARTTLS": b"454 no\r\n"},
    )

    async def scenario() -> Result:
        return await check(
            server,
            username=USER,
            password=Secret(PASSWORD),
            plaintext_auth=True,
            timeouts=Timeouts(total=0.2),
        )

    result = asyncio.run(scenario())
    assert result.error is None or result.error.kind is not ErrorKind.INTERNAL, result.error
    assert result.status in (Status.UP, Status.DOWN)
    assert PASSWORD not in result_to_json(result)


# -- the egress policy ----------------------------------------------------------------------------


async def test_a_denied_address_is_never_contacted(connector: GuardedConnector) -> None:
    server = FakeSmtp()
    ctx = make_context(
        policy=EgressPolicy(deny=["127.0.0.0/8"]),
        hosts={"mail.internal": ["127.0.0.1"]},
        connector=connector,
    )
    async with TcpServer(server) as listening:
        result = await SmtpProbe("mail.internal", listening.port).check(ctx)
        assert listening.connections == 0
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert connector.dialled == [] and connector.refused == []


async def test_a_metadata_address_is_denied_by_default(connector: GuardedConnector) -> None:
    result = await SmtpProbe("169.254.169.254").check(make_context(connector=connector))
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert connector.dialled == [] and connector.refused == []


# -- the password stays secret ----------------------------------------------------------------


async def test_the_password_shows_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = FakeSmtp(replies={b"AUTH": b"535 5.7.8 nope\r\n"})
    probe_fields = {
        "starttls": "off",
        "username": USER,
        "password": Secret(PASSWORD),
        "plaintext_auth": True,
    }
    result = await check(server, **probe_fields)
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert any("535" in r.getMessage() for r in caplog.records)  # the refusal was logged
    probe = SmtpProbe("127.0.0.1", **probe_fields)  # type: ignore[arg-type]
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


def test_a_password_that_is_not_a_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(DefinitionError) as info:
        SmtpProbe("h", username=USER, password=PASSWORD, plaintext_auth=True)  # type: ignore[arg-type]
    assert info.value.path == "password"
    assert PASSWORD not in str(info.value)


# -- definitions -----------------------------------------------------------------------------


def test_target_host_and_defaults() -> None:
    probe = SmtpProbe("mail.internal")
    assert (probe.port, probe.starttls, probe.tls, probe.helo_name) == (
        25,
        "optional",
        None,
        DEFAULT_HELO,
    )
    assert probe.target == "mail.internal:25"
    assert probe.host == "mail.internal"
    assert SmtpProbe("::1", 587).target == "[::1]:587"
    assert SmtpProbe("[::1]").host == "::1"


def test_plain_data_defaults_the_port() -> None:
    assert build_probe({"kind": "smtp", "host": "127.0.0.1"}) == SmtpProbe("127.0.0.1")


ROUND_TRIP = [
    SmtpProbe("127.0.0.1"),
    SmtpProbe("mail.internal", 465, tls=TlsOptions(ca_file="/etc/ssl/ca.pem"), ip_family="ipv6"),
    SmtpProbe(
        "mail.internal",
        587,
        starttls="required",
        starttls_options=TlsOptions(server_name="mx.example", min_version="TLSv1.2"),
        helo_name="[192.0.2.1]",
        mail_from="",
        rcpt_to=("postmaster@example.org", "abuse@example.org"),
        expect_banner="^220 mx",
        assertions=(BodyContains("PIPELINING"), CertExpiry(warn_days=14, crit_days=3)),
        timeouts=Timeouts(total=3, read=1),
    ),
    SmtpProbe("10.0.0.5", starttls="off", plaintext_auth=False),
]


@pytest.mark.parametrize("probe", ROUND_TRIP)
def test_round_trip_through_plain_data(probe: SmtpProbe) -> None:
    assert build_probe(probe_to_dict(probe)) == probe


def test_a_password_round_trips_by_reference() -> None:
    probe = SmtpProbe("127.0.0.1", username=USER, password=Secret(PASSWORD), starttls="required")
    plain = probe_to_dict(probe)
    assert plain["password"] == "<secret>"
    assert PASSWORD not in repr(plain)
    plain["password"] = {"secret": "smtp"}
    assert build_probe(plain, secrets={"smtp": Secret(PASSWORD)}) == probe
    assert build_probe(plain, secrets={"smtp": Secret("other")}) != probe


INVALID_DATA: list[Any] = [
    pytest.param({"port": 0}, "port", "1 to 65535", id="port-zero"),
    pytest.param({"port": "25"}, "port", "integer", id="port-text"),
    pytest.param({"host": ""}, "host", "required", id="empty-host"),
    pytest.param({"host": "a b"}, "host", "not a host", id="spaced-host"),
    pytest.param({"startls": "required"}, "startls", "did you mean 'starttls'", id="typo"),
    pytest.param({"starttls": "yes"}, "starttls", "not one of", id="starttls-mode"),
    pytest.param(
        {"tls": {}, "starttls": "required"}, "starttls", "TLS from the start", id="tls-and-starttls"
    ),
    pytest.param(
        {"starttls": "off", "starttls_options": {"verify": False}},
        "starttls_options",
        "no STARTTLS",
        id="options-without-starttls",
    ),
    pytest.param(
        {"starttls_options": {"verify": "no"}},
        "starttls_options.verify",
        "true or false",
        id="starttls-options-type",
    ),
    pytest.param({"username": "u"}, "password", "both", id="user-without-password"),
    pytest.param({"password": {"secret": "smtp"}}, "username", "both", id="password-without-user"),
    pytest.param(
        {"username": "u", "password": {"secret": "smtp"}, "starttls": "off"},
        "password",
        "unencrypted",
        id="password-in-clear",
    ),
    pytest.param({"username": "u", "password": ""}, "password", "empty", id="empty-password"),
    pytest.param(
        {"username": "u", "password": {"env": "SMTP_PASSWORD"}},
        "password.env",
        "local configuration",
        id="env-secret-remote",
    ),
    pytest.param({"helo_name": "not a name"}, "helo_name", "domain name", id="helo"),
    pytest.param({"helo_name": ""}, "helo_name", "domain name", id="empty-helo"),
    pytest.param({"mail_from": "a b@c"}, "mail_from", "not allowed", id="sender-space"),
    pytest.param(
        {"mail_from": "a@b", "rcpt_to": ["ok@b", "x>\r\nDATA"]},
        "rcpt_to[1]",
        "not allowed",
        id="recipient-injection",
    ),
    pytest.param({"rcpt_to": ["a@b"]}, "rcpt_to", "needs mail_from", id="rcpt-without-from"),
    pytest.param({"mail_from": "a@b", "rcpt_to": [""]}, "rcpt_to[0]", "empty", id="empty-rcpt"),
    pytest.param({"expect_banner": "("}, "expect_banner", "regular expression", id="regex"),
    pytest.param({"ip_family": "ipv5"}, "ip_family", "not one of", id="family"),
    pytest.param(
        {"plaintext_auth": "yes"}, "plaintext_auth", "true or false", id="plaintext-auth-type"
    ),
    pytest.param({"timeouts": {"total": 0}}, "timeouts.total", "positive", id="timeout"),
]


@pytest.mark.parametrize(("data", "path", "message"), INVALID_DATA)
def test_invalid_definitions(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe(
            {"kind": "smtp", "host": "mail.internal", **data}, secrets={"smtp": Secret("x")}
        )
    problems = {e.path: e.message for e in info.value.errors}
    assert path in problems, problems
    assert message in problems[path]


INVALID_PYTHON: list[Any] = [
    (lambda: SmtpProbe("h", 0), "port"),
    (lambda: SmtpProbe(None), "host"),  # type: ignore[arg-type]
    (lambda: SmtpProbe("h", tls="yes"), "tls"),  # type: ignore[arg-type]
    (lambda: SmtpProbe("h", starttls_options="x"), "starttls_options"),  # type: ignore[arg-type]
    (lambda: SmtpProbe("h", helo_name=5), "helo_name"),  # type: ignore[arg-type]
    (lambda: SmtpProbe("h", mail_from=5), "mail_from"),  # type: ignore[arg-type]
    (lambda: SmtpProbe("h", rcpt_to=5), "rcpt_to"),  # type: ignore[arg-type]
    (lambda: SmtpProbe("h", mail_from="a@b", rcpt_to="c@d"), "rcpt_to"),  # type: ignore[arg-type]
    (lambda: SmtpProbe("h", expect_banner=""), "expect_banner"),
    (lambda: SmtpProbe("h", timeouts=5), "timeouts"),  # type: ignore[arg-type]
    (lambda: SmtpProbe("h", assertions=("x",)), "assertions[0]"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("factory", "path"), INVALID_PYTHON)
def test_invalid_constructor_arguments(factory: Any, path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        factory()
    assert info.value.path == path


# -- the kind's declaration and command-line form ---------------------------------------------


def test_the_kind_is_registered() -> None:
    kind = get_kind("smtp")
    assert kind is KIND
    assert kind.cls is SmtpProbe
    assert kind.docs == "probes/smtp.md"
    assert {m.key: m.name for m in kind.metrics} == {
        "banner_code": "probekit_smtp_banner_code",
        "tls": "probekit_smtp_tls",
        "starttls": "probekit_smtp_starttls",
        "auth": "probekit_smtp_auth",
        "size_limit": "probekit_smtp_size_limit_bytes",
    }
    flags = {f for o in kind.options for f in o.flags}
    assert "--password" not in flags  # only from the environment
    assert {"--starttls", "--tls", "--helo", "--user", "--password-env", "--from", "--to"} <= flags
    assert {"--expect-banner", "--insecure", "--ca-file", "--contains", "--regex"} <= flags


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1", {"host": "127.0.0.1", "port": 25}),
        ("mail.internal:587", {"host": "mail.internal", "port": 587}),
        ("[::1]:465", {"host": "::1", "port": 465}),
    ],
)
def test_target_syntax(target: str, expected: dict[str, Any]) -> None:
    assert KIND.target.parse(target) == expected


def _from_options(target: str, fields: dict[str, Any] | None = None, **values: Any) -> Any:
    definition: dict[str, Any] = {"kind": "smtp", **KIND.target.parse(target), **(fields or {})}
    assert KIND.to_definition is not None
    KIND.to_definition(values, definition)
    return build_probe(definition)


def test_password_env_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", PASSWORD)
    probe = _from_options("mail:587", {"username": USER}, password_env="SMTP_PASSWORD")
    assert probe.password == Secret(PASSWORD)


@pytest.mark.parametrize("value", [None, ""])
def test_password_env_unset_or_empty_is_a_problem_with_the_option(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("SMTP_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("SMTP_PASSWORD", value)
    with pytest.raises(DefinitionErrors) as info:
        _from_options("mail", {"username": USER}, password_env="SMTP_PASSWORD")
    assert [e.path for e in info.value.errors] == ["--password-env"]
    assert "SMTP_PASSWORD" in info.value.errors[0].message


def test_tls_options_go_to_the_implicit_tls_or_to_starttls(tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a check runs\n")
    implicit = _from_options("mail:465", tls=True, ca_file=str(ca))
    assert implicit.tls == TlsOptions(ca_file=str(ca))
    assert implicit.starttls_options is None
    upgraded = _from_options("mail", {"starttls": "required"}, insecure=True)
    assert upgraded.tls is None
    assert upgraded.starttls_options == TlsOptions(verify=False)
    assert _from_options("mail", tls=True).tls == TlsOptions()


def test_tls_options_need_some_tls() -> None:
    with pytest.raises(DefinitionErrors) as info:
        _from_options("mail", {"starttls": "off"}, insecure=True)
    assert [e.path for e in info.value.errors] == ["--insecure/--ca-file"]


def test_cert_days_and_body_options_become_assertions() -> None:
    probe = _from_options(
        "mail", cert_warn_days=30.0, cert_crit_days=7.0, contains=["ESMTP"], plaintext_auth=True
    )
    assert probe.assertions == (CertExpiry(warn_days=30, crit_days=7), BodyContains("ESMTP"))
    assert probe.plaintext_auth is True
    with pytest.raises(DefinitionErrors) as info:
        _from_options("mail", cert_warn_days=3.0, cert_crit_days=7.0)
    assert [e.path for e in info.value.errors] == ["--cert-warn-days"]


def test_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from probekit.cli import main

    assert main(["check", "smtp", "--help"]) == 0
    out = capsys.readouterr().out
    assert "{required,optional,off}" in out
    assert main(["check", "smtp", "mail", "--starttls", "sometimes"]) == 3


def test_describe_without_a_banner_says_nothing() -> None:
    result = Result(
        kind="smtp",
        target="h:25",
        status=Status.DOWN,
        started_at=dt.datetime.now(dt.UTC),
        duration=0.1,
    )
    assert describe(result) == ""


@pytest.mark.parametrize(
    ("family", "status"), [("ipv4", Status.UP), ("ipv6", Status.DOWN)], ids=["ipv4", "ipv6"]
)
async def test_ip_family_restricts_resolution(
    family: str, status: Status, ctx: ProbeContext
) -> None:
    async with aiosmtpd() as port:
        result = await SmtpProbe("localhost", port, ip_family=family).check(ctx)  # type: ignore[arg-type]
    assert result.status is status, result.summary()
    if status is Status.DOWN:
        assert result.error is not None and result.error.kind is ErrorKind.DNS
