"""ImapProbe against an in-process fake IMAP server on loopback (greeting, CAPABILITY,
STARTTLS with a trustme certificate, LOGIN with quoted strings and literals, EXAMINE, LOGOUT)."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probekit import (
    BodyContains,
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
    nagios_line,
    probe_to_dict,
    result_to_json,
)
from probekit.probes import get_kind
from probekit.probes.imap import (
    KIND,
    LINE_LIMIT,
    LITERAL_LIMIT,
    RESPONSE_LIMIT,
    UNTAGGED_LIMIT,
    ImapProbe,
)
from servers import GuardedConnector, TcpServer, make_context

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

PASSWORD = "imap-canary-7c41e2d9"  # a canary: it must show up nowhere but on the wire
USER = "monitor"
QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"|(\S+)')
LITERAL = re.compile(rb"\{([0-9]+)(\+?)\}\r\n\Z")


def _tokens(text: bytes) -> list[bytes]:
    out = []
    for quoted, atom in QUOTED.findall(text):
        out.append(atom or re.sub(rb"\\(.)", rb"\1", quoted))
    return out


async def read_command(reader: Reader, writer: Writer) -> list[bytes] | None:
    """One command as its words: quoted strings unescaped, literals read (after ``+``)."""
    words: list[bytes] = []
    while True:
        line = await reader.readline()
        if not line:
            return None
        literal = LITERAL.search(line)
        if literal is None:
            return [*words, *_tokens(line)]
        words += _tokens(line[: literal.start()])
        if not literal.group(2):
            writer.write(b"+ go ahead\r\n")
            await writer.drain()
        words.append(await reader.readexactly(int(literal.group(1))))


@attrs.define
class FakeImap:
    """The server side of one test.

    ``tls`` offers STARTTLS with that context; ``replies`` replaces the answer to a verb
    (``{tag}`` is the command's tag); ``stall`` names verbs never answered (``GREETING`` for
    the greeting, ``HANDSHAKE`` for the TLS handshake after STARTTLS); ``commands`` records what
    was received.
    """

    greeting: bytes = b"* OK [CAPABILITY IMAP4rev1 LITERAL+] fake IMAP ready\r\n"
    capabilities: bytes = b"IMAP4rev1 LITERAL+ ID"
    tls: ssl.SSLContext | None = None
    password: str = PASSWORD
    mailboxes: dict[bytes, int] = attrs.field(factory=lambda: {b"INBOX": 42})
    replies: dict[bytes, bytes] = attrs.field(factory=dict)
    stall: set[bytes] = attrs.field(factory=set)
    hang_up_after: bytes | None = None
    close_on_connect: bool = False
    commands: list[list[bytes]] = attrs.field(factory=list)

    async def __call__(self, reader: Reader, writer: Writer) -> None:
        if self.close_on_connect:
            return
        if b"GREETING" in self.stall:
            await asyncio.sleep(3600)
        writer.write(self.greeting)
        await writer.drain()
        secure = False
        while (words := await read_command(reader, writer)) is not None:
            self.commands.append(words)
            if len(words) < 2:
                writer.write(b"* BAD what?\r\n")
                continue
            tag, verb, args = words[0], words[1].upper(), words[2:]
            if verb in self.stall:
                await asyncio.sleep(3600)
            if verb in self.replies:
                writer.write(self.replies[verb].replace(b"{tag}", tag))
            else:
                writer.write(self.answer(tag, verb, args, secure))
            await writer.drain()
            if verb == b"STARTTLS" and self.tls is not None and verb not in self.replies:
                if b"HANDSHAKE" in self.stall:
                    await asyncio.sleep(3600)
                await writer.start_tls(self.tls)
                secure = True
            if verb in (b"LOGOUT", self.hang_up_after):
                return

    def answer(self, tag: bytes, verb: bytes, args: list[bytes], secure: bool) -> bytes:
        if verb == b"CAPABILITY":
            extra = b" STARTTLS" if self.tls is not None and not secure else b""
            return b"* CAPABILITY %s%s\r\n%s OK done\r\n" % (self.capabilities, extra, tag)
        if verb == b"STARTTLS":
            return tag + b" OK begin TLS now\r\n"
        if verb == b"LOGIN":
            if args == [USER.encode(), self.password.encode()]:
                return tag + b" OK [CAPABILITY IMAP4rev1] logged in\r\n"
            return tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        if verb == b"EXAMINE":
            count = self.mailboxes.get(args[0] if args else b"")
            if count is None:
                return tag + b" NO [NONEXISTENT] Mailbox doesn't exist\r\n"
            return (
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                b"* %d EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n"
                b"%s OK [READ-ONLY] Examine completed\r\n" % (count, tag)
            )
        if verb == b"LOGOUT":
            return b"* BYE logging out\r\n" + tag + b" OK bye\r\n"
        return tag + b" BAD unknown command\r\n"


async def check(server: FakeImap, ctx: ProbeContext, **fields: Any) -> Result:
    async with TcpServer(server) as listening:
        host = fields.pop("host", "127.0.0.1")
        probe = ImapProbe(host, listening.port, **fields)
        return await probe.check(ctx)


LOGIN: dict[str, Any] = {"username": USER, "password": Secret(PASSWORD)}


def verbs(server: FakeImap) -> list[bytes]:
    return [words[1] for words in server.commands]


# -- up ----------------------------------------------------------------------------------------


async def test_up_without_a_login(ctx: ProbeContext) -> None:
    server = FakeImap()
    result = await check(server, ctx)
    assert result.status is Status.UP, result.summary()
    assert result.kind == "imap"
    assert result.phase_names() == ("resolve", "connect", "banner", "capability", "logout")
    assert result.metrics == {"tls": 0}
    assert verbs(server) == [b"CAPABILITY", b"LOGOUT"]
    assert [(a.name, a.passed, a.observed) for a in result.assertions] == [
        ("starttls", True, "STARTTLS is not offered")
    ]


async def test_up_with_login_and_mailbox(ctx: ProbeContext) -> None:
    server = FakeImap()
    result = await check(server, ctx, mailbox="INBOX", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == (
        "resolve",
        "connect",
        "banner",
        "capability",
        "auth",
        "command",
        "logout",
    )
    assert result.metrics["messages"] == 42
    assert verbs(server) == [b"CAPABILITY", b"LOGIN", b"EXAMINE", b"LOGOUT"]
    assert server.commands[1][2:] == [USER.encode(), PASSWORD.encode()]
    assert server.commands[2][2:] == [b"INBOX"]


async def test_starttls_upgrades_and_asks_for_capabilities_again(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    server = FakeImap(tls=good_tls)
    result = await check(
        server,
        ctx,
        host="localhost",
        starttls="required",
        starttls_options=TlsOptions(ca_data=ca_pem),
        mailbox="INBOX",
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
        "logout",
    ]
    assert result.tls is not None
    assert result.metrics["tls"] == 1
    assert "cert_days_left" in result.metrics
    assert verbs(server) == [
        b"CAPABILITY",
        b"STARTTLS",
        b"CAPABILITY",
        b"LOGIN",
        b"EXAMINE",
        b"LOGOUT",
    ]
    assert get_kind("imap").describe is not None
    assert get_kind("imap").describe(result) == "IMAP over STARTTLS, 42 messages"  # type: ignore[misc]


async def test_optional_starttls_is_used_when_offered(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    server = FakeImap(tls=good_tls)
    options = TlsOptions(ca_data=ca_pem)
    result = await check(server, ctx, host="localhost", starttls_options=options)
    assert result.status is Status.UP, result.summary()
    assert "starttls" in result.phase_names()
    assert result.metrics["tls"] == 1


async def test_starttls_off_stays_in_plain_text(
    ctx: ProbeContext, good_tls: ssl.SSLContext
) -> None:
    server = FakeImap(tls=good_tls)
    result = await check(server, ctx, starttls="off", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert b"STARTTLS" not in verbs(server)
    assert result.metrics["tls"] == 0
    assert result.assertions == ()


async def test_imaps_is_tls_from_the_first_byte(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    server = FakeImap()
    async with TcpServer(server, ssl_context=good_tls) as listening:
        probe = ImapProbe("localhost", listening.port, tls=TlsOptions(ca_data=ca_pem), **LOGIN)
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == (
        "resolve",
        "connect",
        "tls",
        "banner",
        "capability",
        "auth",
        "logout",
    )
    assert result.metrics["tls"] == 1
    assert get_kind("imap").describe(result) == "IMAP over TLS"  # type: ignore[misc]


async def test_preauth_skips_the_login(ctx: ProbeContext) -> None:
    server = FakeImap(greeting=b"* PREAUTH welcome, you are logged in\r\n")
    result = await check(server, ctx, mailbox="INBOX", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert "auth" not in result.phase_names()
    assert verbs(server) == [b"CAPABILITY", b"EXAMINE", b"LOGOUT"]


@pytest.mark.parametrize(
    ("password", "sent"),
    [
        pytest.param('a "quoted" \\ one', b'"a \\"quoted\\" \\\\ one"', id="quoted"),
        pytest.param("pässwörd", f"{{{len('pässwörd'.encode())}}}", id="literal-utf8"),
        pytest.param("tab\there", "{8}", id="literal-control"),
    ],
)
async def test_the_password_is_quoted_or_sent_as_a_literal(
    password: str, sent: bytes | str, ctx: ProbeContext
) -> None:
    seen: list[bytes] = []
    server = FakeImap(password=password)

    async def recording(reader: Reader, writer: Writer) -> None:
        original = reader.readline

        async def readline() -> bytes:
            line = await original()
            seen.append(line)
            return line

        reader.readline = readline  # type: ignore[method-assign]
        await server(reader, writer)

    async with TcpServer(recording) as listening:
        probe = ImapProbe("127.0.0.1", listening.port, username=USER, password=Secret(password))
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert server.commands[1][2:] == [USER.encode(), password.encode()]
    login = next(line for line in seen if b"LOGIN" in line)
    expected = sent if isinstance(sent, bytes) else sent.encode()
    assert expected in login


@pytest.mark.parametrize(
    ("mailbox", "wire"),
    [
        ("inbox", b"INBOX"),
        ("Archive/2024", b"Archive/2024"),
        ("Entwürfe", b"Entw&APw-rfe"),
        ("R&D", b"R&-D"),
        ("台北", b"&U,BTFw-"),
    ],
)
async def test_mailbox_names_are_sent_in_modified_utf7(
    mailbox: str, wire: bytes, ctx: ProbeContext
) -> None:
    server = FakeImap(mailboxes={wire: 7})
    result = await check(server, ctx, mailbox=mailbox, **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["messages"] == 7


async def test_a_literal_in_an_untagged_response_is_read(ctx: ProbeContext) -> None:
    reply = b'* ID ("name" {4}\r\nfake "version" "1")\r\n* CAPABILITY IMAP4rev1\r\n{tag} OK\r\n'
    result = await check(FakeImap(replies={b"CAPABILITY": reply}), ctx)
    assert result.status is Status.UP, result.summary()


async def test_closing_after_bye_without_the_tagged_ok_is_a_clean_logout(
    ctx: ProbeContext,
) -> None:
    server = FakeImap(replies={b"LOGOUT": b"* BYE see you\r\n"})
    result = await check(server, ctx)
    assert result.status is Status.UP, result.summary()


# -- down --------------------------------------------------------------------------------------

LINES = b"".join(b"* OK line %d\r\n" % i for i in range(UNTAGGED_LIMIT + 5))

DOWN: list[Any] = [
    pytest.param(
        FakeImap(password="other"),
        LOGIN,
        ErrorKind.AUTH,
        "auth",
        "LOGIN refused: 'NO [AUTHENTICATIONFAILED] Authentication failed.'",
        id="wrong-password",
    ),
    pytest.param(
        FakeImap(replies={b"LOGIN": b"{tag} BAD syntax error\r\n"}),
        LOGIN,
        ErrorKind.PROTOCOL,
        "auth",
        "LOGIN failed",
        id="login-bad",
    ),
    pytest.param(
        FakeImap(capabilities=b"IMAP4rev1 LOGINDISABLED"),
        LOGIN,
        ErrorKind.AUTH,
        "auth",
        "LOGINDISABLED",
        id="login-disabled",
    ),
    pytest.param(
        FakeImap(greeting=b"HTTP/1.1 400 Bad Request\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "not an IMAP greeting: 'HTTP/1.1 400 Bad Request'",
        id="garbage-greeting",
    ),
    pytest.param(
        FakeImap(greeting=b"* OKAY then\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "not an IMAP greeting",
        id="almost-ok",
    ),
    pytest.param(
        FakeImap(greeting=b"+OK POP3 ready\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "not an IMAP greeting",
        id="pop3-greeting",
    ),
    pytest.param(
        FakeImap(greeting=b"* BYE too many connections\r\n"),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "refused the session: 'BYE too many connections'",
        id="bye-greeting",
    ),
    pytest.param(
        FakeImap(close_on_connect=True),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        "",
        id="closed",
    ),
    pytest.param(
        FakeImap(greeting=b"* OK " + b"x" * (2 * LINE_LIMIT)),
        {},
        ErrorKind.PROTOCOL,
        "banner",
        f"exceeds {LINE_LIMIT} bytes",
        id="endless-greeting",
    ),
    pytest.param(
        FakeImap(replies={b"CAPABILITY": LINES}),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        f"more than {UNTAGGED_LIMIT} untagged responses",
        id="endless-untagged-lines",
    ),
    pytest.param(
        FakeImap(replies={b"CAPABILITY": b"* X {%d}\r\n" % (LITERAL_LIMIT + 1)}),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        f"literal of {LITERAL_LIMIT + 1} bytes, over the limit",
        id="huge-literal",
    ),
    pytest.param(
        FakeImap(
            replies={b"CAPABILITY": b"* X {%d}\r\n%s" % (LITERAL_LIMIT, b"y" * 30000)},
            hang_up_after=b"CAPABILITY",
        ),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        f"closed after 30000 of a {LITERAL_LIMIT}-byte literal",
        id="truncated-literal",
    ),
    pytest.param(
        FakeImap(
            replies={
                b"CAPABILITY": b"".join(
                    b"* X {%d}\r\n%s\r\n" % (LITERAL_LIMIT, b"z" * LITERAL_LIMIT)
                    for _ in range(RESPONSE_LIMIT // LITERAL_LIMIT + 1)
                )
            }
        ),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        f"exceeds {RESPONSE_LIMIT} bytes",
        id="oversized-reply",
    ),
    pytest.param(
        FakeImap(replies={b"CAPABILITY": b"{tag} OK no list\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        "lists no capabilities",
        id="no-capabilities",
    ),
    pytest.param(
        FakeImap(replies={b"CAPABILITY": b"{tag} NO go away\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        "CAPABILITY failed",
        id="capability-refused",
    ),
    pytest.param(
        FakeImap(replies={b"CAPABILITY": b"zz9 OK [CAPABILITY IMAP4rev1] done\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        "expected a reply tagged a001",
        id="wrong-tag",
    ),
    pytest.param(
        FakeImap(replies={b"CAPABILITY": b"{tag} MAYBE\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        "not an IMAP status reply",
        id="odd-status",
    ),
    pytest.param(
        FakeImap(replies={b"CAPABILITY": b"+ more please\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "capability",
        "unexpected continuation request",
        id="unexpected-continuation",
    ),
    pytest.param(
        FakeImap(),
        {"starttls": "required"},
        ErrorKind.TLS,
        "capability",
        "STARTTLS is required, but STARTTLS is not offered",
        id="starttls-not-offered",
    ),
    pytest.param(
        FakeImap(greeting=b"* PREAUTH hi\r\n", capabilities=b"IMAP4rev1 STARTTLS"),
        {"starttls": "required"},
        ErrorKind.TLS,
        "capability",
        "greeted with PREAUTH",
        id="starttls-after-preauth",
    ),
    pytest.param(
        FakeImap(
            capabilities=b"IMAP4rev1 STARTTLS",
            replies={b"STARTTLS": b"{tag} NO [UNAVAILABLE] TLS is broken\r\n"},
        ),
        {},
        ErrorKind.TLS,
        "starttls",
        "STARTTLS was offered, then refused",
        id="starttls-refused",
    ),
    pytest.param(
        FakeImap(
            capabilities=b"IMAP4rev1 STARTTLS",
            replies={b"STARTTLS": b"{tag} OK go\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"},
        ),
        {},
        ErrorKind.PROTOCOL,
        "starttls",
        "plain-text bytes after the STARTTLS reply",
        id="starttls-injection",
    ),
    pytest.param(
        FakeImap(replies={b"LOGIN": b"* BYE server shutting down\r\n"}),
        LOGIN,
        ErrorKind.PROTOCOL,
        "auth",
        "ended the session: 'BYE server shutting down'",
        id="bye-during-login",
    ),
    pytest.param(
        FakeImap(replies={b"EXAMINE": b"{tag} OK [READ-ONLY] done\r\n"}),
        {"mailbox": "INBOX", **LOGIN},
        ErrorKind.PROTOCOL,
        "command",
        "no EXISTS count",
        id="examine-without-exists",
    ),
    pytest.param(
        FakeImap(replies={b"EXAMINE": b"{tag} BAD what\r\n"}),
        {"mailbox": "INBOX", **LOGIN},
        ErrorKind.PROTOCOL,
        "command",
        "EXAMINE failed",
        id="examine-bad",
    ),
    pytest.param(
        FakeImap(mailboxes={}),
        {"mailbox": "Missing", **LOGIN},
        ErrorKind.ASSERTION,
        None,
        "Mailbox doesn't exist",
        id="no-such-mailbox",
    ),
    pytest.param(
        FakeImap(replies={b"LOGOUT": b"{tag} NO not now\r\n"}),
        {},
        ErrorKind.PROTOCOL,
        "logout",
        "LOGOUT failed",
        id="logout-refused",
    ),
    pytest.param(
        FakeImap(replies={b"LOGOUT": b""}),
        {},
        ErrorKind.PROTOCOL,
        "logout",
        "connection closed",
        id="closed-without-bye",
    ),
]


@pytest.mark.parametrize(("server", "fields", "kind", "phase", "message"), DOWN)
async def test_down(
    server: FakeImap,
    fields: dict[str, Any],
    kind: ErrorKind,
    phase: str | None,
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


async def test_starttls_with_an_untrusted_certificate_is_down_tls(
    ctx: ProbeContext, self_signed_tls: ssl.SSLContext
) -> None:
    started = time.monotonic()
    result = await check(FakeImap(tls=self_signed_tls), ctx, host="localhost", **LOGIN)
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"
    assert "auth" not in result.phase_names()  # never a login over an unverified connection
    assert time.monotonic() - started < 1.5


async def test_imaps_with_an_untrusted_certificate_is_down_tls(
    ctx: ProbeContext, self_signed_tls: ssl.SSLContext
) -> None:
    async with TcpServer(FakeImap(), ssl_context=self_signed_tls) as listening:
        result = await ImapProbe("localhost", listening.port, tls=TlsOptions()).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"


async def test_starttls_to_a_plain_text_server_is_down_tls(ctx: ProbeContext) -> None:
    """The server says OK to STARTTLS and goes on in plain text: the handshake fails."""
    server = FakeImap(
        capabilities=b"IMAP4rev1 STARTTLS",
        replies={b"STARTTLS": b"{tag} OK go\r\n"},
        hang_up_after=b"STARTTLS",
    )
    result = await check(server, ctx, host="localhost", timeouts=Timeouts(total=2))
    assert result.status is Status.DOWN
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TLS, "tls"), result.error


# -- a stall in any phase is a timeout naming it, at the deadline ------------------------------

STALLS: list[Any] = [
    pytest.param(FakeImap(stall={b"GREETING"}), {}, "banner", id="banner"),
    pytest.param(FakeImap(stall={b"CAPABILITY"}), {}, "capability", id="capability"),
    pytest.param(
        FakeImap(capabilities=b"IMAP4rev1 STARTTLS", stall={b"STARTTLS"}),
        {},
        "starttls",
        id="starttls",
    ),
    pytest.param(None, {}, "tls", id="tls-handshake"),
    pytest.param(FakeImap(stall={b"LOGIN"}), LOGIN, "auth", id="auth"),
    pytest.param(
        FakeImap(stall={b"EXAMINE"}), {"mailbox": "INBOX", **LOGIN}, "command", id="command"
    ),
    pytest.param(FakeImap(stall={b"LOGOUT"}), {}, "logout", id="logout"),
]


@pytest.mark.parametrize(("server", "fields", "phase"), STALLS)
async def test_a_stall_times_out_naming_the_phase(
    server: FakeImap | None,
    fields: dict[str, Any],
    phase: str,
    ctx: ProbeContext,
    good_tls: ssl.SSLContext,
    ca_pem: str,
) -> None:
    if server is None:
        server = FakeImap(tls=good_tls, stall={b"HANDSHAKE"})
        fields = {"host": "localhost", "starttls_options": TlsOptions(ca_data=ca_pem)}
    total = 0.3
    started = time.monotonic()
    result = await check(server, ctx, timeouts=Timeouts(total=total), **fields)
    elapsed = time.monotonic() - started
    assert result.status is Status.DOWN
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, phase), result.error
    assert total <= result.duration < total + 0.1
    assert elapsed < total + 0.2  # the server's shutdown included


async def test_the_read_timeout_bounds_each_reply(ctx: ProbeContext) -> None:
    server = FakeImap(stall={b"CAPABILITY"})
    result = await check(server, ctx, timeouts=Timeouts(total=5, read=0.1))
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "capability"
    assert result.duration < 1


# -- the egress policy -------------------------------------------------------------------------


async def test_a_denied_address_is_never_contacted() -> None:
    guard = GuardedConnector()
    ctx = make_context(policy=EgressPolicy(deny=["127.0.0.0/8"]), connector=guard)
    server = FakeImap()
    async with TcpServer(server) as listening:
        result = await ImapProbe("127.0.0.1", listening.port, **LOGIN).check(ctx)
        assert listening.connections == 0
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert guard.dialled == []


# -- hostile servers: any bytes are a result, never a crash ------------------------------------

IMAP_LINES = st.one_of(
    st.binary(max_size=30),
    st.sampled_from(
        [b"* ", b"+ ", b"{tag} ", b"* OK ", b"* BYE", b"{tag} OK", b"{tag} NO", b"* 3 EXISTS"]
    ).flatmap(lambda head: st.binary(max_size=20).map(lambda rest: head + rest)),
    st.sampled_from([b"{0}", b"{5}", b"{99999999999}", b"{3+}", b"* X {2}"]),
)
IMAP_REPLIES = st.lists(IMAP_LINES, max_size=4).map(lambda lines: b"\r\n".join(lines))


@settings(max_examples=40, deadline=None)
@given(
    verb=st.sampled_from([b"GREETING", b"CAPABILITY", b"LOGIN", b"EXAMINE", b"LOGOUT"]),
    reply=IMAP_REPLIES,
    hang_up=st.booleans(),
)
def test_any_reply_is_a_classified_result(verb: bytes, reply: bytes, hang_up: bool) -> None:
    if verb == b"GREETING":
        server = FakeImap(greeting=reply, hang_up_after=b"CAPABILITY" if hang_up else None)
    else:
        server = FakeImap(replies={verb: reply}, hang_up_after=verb if hang_up else None)

    async def scenario() -> Result:
        fields = {"mailbox": "INBOX", **LOGIN, "timeouts": Timeouts(total=0.2)}
        return await check(server, make_context(), **fields)

    result = asyncio.run(scenario())
    assert result.error is None or result.error.kind is not ErrorKind.INTERNAL, result.error
    assert result.status in (Status.UP, Status.DOWN)
    assert PASSWORD not in result_to_json(result)


# -- the password stays secret -----------------------------------------------------------------


async def test_the_password_shows_nowhere(
    ctx: ProbeContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = await check(FakeImap(password="other"), ctx, **LOGIN)
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert any("refused LOGIN" in r.getMessage() for r in caplog.records)
    probe = ImapProbe("127.0.0.1", mailbox="INBOX", **LOGIN)
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
    echo = b"{tag} NO [AUTHENTICATIONFAILED] bad password " + PASSWORD.encode() + b"\r\n"
    result = await check(FakeImap(replies={b"LOGIN": echo}), ctx, **LOGIN)
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "bad password <secret>" in result.error.message
    assert PASSWORD not in result_to_json(result)


def test_a_password_that_is_not_a_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(DefinitionError) as info:
        ImapProbe("h", username=USER, password=PASSWORD)  # type: ignore[arg-type]
    assert info.value.path == "password"
    assert PASSWORD not in str(info.value)


# -- assertions on the greeting and capabilities -----------------------------------------------


@pytest.mark.parametrize(
    ("assertions", "status"),
    [
        ((BodyContains("fake IMAP ready"),), Status.UP),
        ((BodyContains("IDLE"),), Status.DOWN),
        ((BodyContains("LITERAL+"),), Status.UP),
        ((CertExpiry(warn_days=30),), Status.DOWN),  # plain text: no certificate
    ],
)
async def test_assertions_see_the_greeting_and_capabilities(
    assertions: tuple[Any, ...], status: Status, ctx: ProbeContext
) -> None:
    result = await check(FakeImap(), ctx, assertions=assertions)
    assert result.status is status, result.summary()


# -- definitions -------------------------------------------------------------------------------


def test_defaults_and_target() -> None:
    probe = ImapProbe("mail.internal")
    assert (probe.port, probe.starttls, probe.tls, probe.username) == (143, "optional", None, None)
    assert probe.target == "mail.internal:143"
    assert probe.host == "mail.internal"
    assert ImapProbe("mail.internal", tls=TlsOptions()).port == 993
    assert ImapProbe("::1", 1143).target == "[::1]:1143"
    assert ImapProbe("[::1]").host == "::1"
    assert ImapProbe("h") == ImapProbe("h", 143)


ROUND_TRIP = [
    ImapProbe("127.0.0.1"),
    ImapProbe("mail.internal", tls=TlsOptions(ca_file="/etc/ssl/ca.pem")),
    ImapProbe(
        "::1",
        2143,
        starttls="required",
        starttls_options=TlsOptions(server_name="mail"),
        ip_family="ipv6",
        assertions=(BodyContains("IMAP4rev1"),),
        timeouts=Timeouts(total=3, read=1),
    ),
    ImapProbe("mail", starttls="off"),
]


@pytest.mark.parametrize("probe", ROUND_TRIP)
def test_round_trip_through_plain_data(probe: ImapProbe) -> None:
    assert build_probe(probe_to_dict(probe)) == probe


def test_a_password_round_trips_by_reference() -> None:
    probe = ImapProbe("127.0.0.1", mailbox="INBOX", **LOGIN)
    plain = probe_to_dict(probe)
    assert plain["password"] == "<secret>"
    plain["password"] = {"secret": "imap"}
    assert build_probe(plain, secrets={"imap": Secret(PASSWORD)}) == probe
    assert build_probe(plain, secrets={"imap": Secret("other")}) != probe


def test_plain_data_defaults_the_port_by_tls() -> None:
    assert build_probe({"kind": "imap", "host": "h"}).port == 143
    assert build_probe({"kind": "imap", "host": "h", "tls": {}}).port == 993


INVALID_DATA: list[Any] = [
    pytest.param({"host": "h", "port": 0}, "port", "1 to 65535", id="port-zero"),
    pytest.param({"host": "h", "port": "143"}, "port", "integer", id="port-text"),
    pytest.param({"host": "h", "mailbx": "x"}, "mailbx", "did you mean 'mailbox'", id="typo"),
    pytest.param({}, "host", "required", id="no-host"),
    pytest.param({"host": "a b"}, "host", "not a host", id="spaced-host"),
    pytest.param({"host": "h", "username": "u"}, "username", "needs a password", id="user"),
    pytest.param({"host": "h", "password": "p"}, "password", "needs a username", id="password"),
    pytest.param(
        {"host": "h", "username": "u", "password": ""}, "password", "empty", id="empty-password"
    ),
    pytest.param({"host": "h", "mailbox": "INBOX"}, "mailbox", "needs username", id="mailbox"),
    pytest.param(
        {"host": "h", "username": "u", "password": "p", "mailbox": ""},
        "mailbox",
        "mailbox name",
        id="empty-mailbox",
    ),
    pytest.param({"host": "h", "starttls": "maybe"}, "starttls", "one of", id="starttls"),
    pytest.param(
        {"host": "h", "tls": {}, "starttls": "required"}, "starttls", "tls is set", id="both"
    ),
    pytest.param(
        {"host": "h", "starttls": "off", "starttls_options": {}},
        "starttls_options",
        "not used",
        id="options-unused",
    ),
    pytest.param({"host": "h", "ip_family": "ipv5"}, "ip_family", "one of", id="family"),
    pytest.param(
        {"host": "h", "username": "u", "password": {"env": "IMAP_PASSWORD"}},
        "password.env",
        "local configuration",
        id="env-secret-remote",
    ),
    pytest.param({"host": "h", "timeouts": {"total": 0}}, "timeouts.total", "positive", id="t"),
]


@pytest.mark.parametrize(("data", "path", "message"), INVALID_DATA)
def test_invalid_definitions(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "imap", **data})
    problems = {e.path: e.message for e in info.value.errors}
    assert path in problems, problems
    assert message in problems[path]


INVALID_PYTHON: list[Any] = [
    (lambda: ImapProbe("h", 0), "port"),
    (lambda: ImapProbe("h", True), "port"),
    (lambda: ImapProbe(None), "host"),  # type: ignore[arg-type]
    (lambda: ImapProbe("h", tls="yes"), "tls"),  # type: ignore[arg-type]
    (lambda: ImapProbe("h", username="u", password=Secret("a\0b")), "password"),
    (lambda: ImapProbe("h", username="u\0", password=Secret("p")), "username"),
    (lambda: ImapProbe("h", username="u", password=Secret("p"), mailbox="a\r\nb"), "mailbox"),
    (lambda: ImapProbe("h", timeouts=5), "timeouts"),  # type: ignore[arg-type]
    (lambda: ImapProbe("h", assertions=("x",)), "assertions[0]"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("factory", "path"), INVALID_PYTHON)
def test_invalid_constructor_arguments(factory: Any, path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        factory()
    assert info.value.path == path


# -- the kind's declaration and command-line form ----------------------------------------------


def test_the_kind_is_registered() -> None:
    kind = get_kind("imap")
    assert kind is KIND
    assert kind.cls is ImapProbe
    assert kind.docs == "probes/imap.md"
    assert {m.key: m.name for m in kind.metrics} == {
        "messages": "probekit_imap_messages",
        "tls": "probekit_imap_tls",
    }
    flags = {f for o in kind.options for f in o.flags}
    assert {"--starttls", "--tls", "--user", "--password-env", "--mailbox"} <= flags
    assert "--password" not in flags  # only from the environment


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1", {"host": "127.0.0.1"}),
        ("mail.internal:1143", {"host": "mail.internal", "port": 1143}),
        ("[::1]:993", {"host": "::1", "port": 993}),
        ("[::1]", {"host": "::1"}),
        ("::1", {"host": "::1"}),
    ],
)
def test_target_syntax(target: str, expected: dict[str, Any]) -> None:
    assert KIND.target.parse(target) == expected


def _from_options(target: str, **values: Any) -> Any:
    definition: dict[str, Any] = {"kind": "imap", **KIND.target.parse(target)}
    for option in KIND.options:
        if option.field is not None and values.get(option.name) is not None:
            definition[option.field] = values[option.name]
    assert KIND.to_definition is not None
    KIND.to_definition(values, definition)
    return build_probe(definition)


def test_options_build_the_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("IMAP_PASSWORD", PASSWORD)
    ca = tmp_path / "ca.pem"
    ca.write_text("read when a check runs\n")
    probe = _from_options(
        "mail.internal",
        username=USER,
        password_env="IMAP_PASSWORD",
        mailbox="INBOX",
        starttls="required",
        ca_file=str(ca),
        ipv6=True,
        cert_warn_days=20.0,
        contains=["IMAP4rev1"],
    )
    assert probe == ImapProbe(
        "mail.internal",
        143,
        starttls="required",
        starttls_options=TlsOptions(ca_file=str(ca)),
        mailbox="INBOX",
        ip_family="ipv6",
        assertions=(CertExpiry(warn_days=20.0), BodyContains("IMAP4rev1")),
        **LOGIN,
    )
    assert _from_options("mail", tls=True).port == 993
    assert _from_options("mail", tls=True, insecure=True).tls == TlsOptions(verify=False)
    assert _from_options("mail:143", tls=True).port == 143


@pytest.mark.parametrize(
    ("values", "label"),
    [
        ({"password_env": "IMAP_UNSET_VARIABLE", "username": USER}, "--password-env"),
        ({"starttls": "off", "insecure": True}, "--insecure/--ca-file"),
        ({"ipv4": True, "ipv6": True}, "--ipv4/--ipv6"),
        ({"cert_warn_days": 1.0, "cert_crit_days": 5.0}, "--cert-warn-days"),
        ({"regex": ["("]}, "--regex"),
    ],
)
def test_option_problems_name_the_option(values: dict[str, Any], label: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        _from_options("mail", **values)
    assert [e.path for e in info.value.errors] == [label]


async def test_the_command_line_checks_with_nagios_output(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from probekit.cli import main

    monkeypatch.setenv("IMAP_PASSWORD", PASSWORD)
    async with TcpServer(FakeImap()) as listening:
        argv = ["check", "imap", f"127.0.0.1:{listening.port}", "--nagios", "--starttls", "off"]
        argv += ["--user", USER, "--password-env", "IMAP_PASSWORD", "--mailbox", "INBOX"]
        code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("IMAP OK - IMAP")
    assert "banner=" in out and "auth=" in out and "logout=" in out
    assert PASSWORD not in out
