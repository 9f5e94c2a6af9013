"""SmtpProbe: greet an SMTP server, read its EHLO capabilities, upgrade with STARTTLS, log in,
optionally try a sender and recipients, and say goodbye, each step a phase of its own.

It speaks SMTP itself over the shared dial path rather than through aiosmtplib: the library's
``connect()`` does the TLS handshake of implicit TLS and reads the greeting in one call, and its
``starttls()`` sends ``STARTTLS`` and shakes hands in one call, so neither ``tls`` nor
``banner``/``starttls`` could be timed apart; and TLS done by the library would bypass the dial
path's TLS (the certificate chain in the result, ``cert_days_left``, the diagnosis of a failed
verification, the refusal of plain-text bytes injected before the handshake). The dialogue is
a few commands, so writing it costs less than working around those.

Every reply is read with a bound: a line at most :data:`LINE_LIMIT` bytes, a whole multi-line
reply at most :data:`REPLY_LIMIT`; each wait at most ``timeouts.read``.

Phases: ``resolve``, ``connect``, ``tls`` (implicit TLS with ``tls``), ``banner``, ``ehlo``,
then with STARTTLS ``starttls`` (the command and its 220), ``tls`` (the handshake) and ``ehlo``
again; ``auth`` (with a ``password``), ``command`` (the ``MAIL FROM``/``RCPT TO`` dry run and
its ``RSET``, with ``mail_from``), ``quit``. Metrics: ``banner_code``, ``tls``, ``starttls``,
``auth`` (each 0 or 1) and ``size_limit`` (the EHLO ``SIZE``, when announced).
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, ClassVar, Final, Literal

import attrs

from .._assertions import Assertion, assertion_tuple
from .._dial import Connection
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._resolver import Family
from .._result import ErrorKind, Result
from .._secret import Secret
from .._timeouts import Timeouts
from .._tls import TlsOptions
from ._base import Attempt, ProbeBase
from ._fields import check_family, check_host, check_secret, host_port
from ._fields import host as _host
from ._fields import port as _port
from ._kind import HostPort, Metric, Option, ProbeKind
from ._options import (
    BODY_OPTIONS,
    CERT_OPTIONS,
    TLS_OPTIONS,
    body_assertions,
    cert_assertion,
    secret_from_env,
    starttls_definition,
)

__all__ = ["DEFAULT_HELO", "KIND", "LINE_LIMIT", "REPLY_LIMIT", "SmtpProbe", "StartTlsMode"]

log = logging.getLogger("probekit.probes.smtp")

#: The longest reply line read (RFC 5321 allows 512 bytes; real servers stay well below).
LINE_LIMIT: Final = 4096
#: The largest whole reply read, all lines of a multi-line reply together (a real EHLO reply is
#: a few hundred bytes, a long banner a few KiB).
REPLY_LIMIT: Final = 32 * 1024
#: The name the probe introduces itself with unless ``helo_name`` says otherwise: under the
#: reserved ``.invalid`` top-level domain, so it can never be mistaken for a real host.
DEFAULT_HELO: Final = "probekit.invalid"

StartTlsMode = Literal["required", "optional", "off"]

_MODES: Final = ("required", "optional", "off")
_EXCERPT: Final = 80
_CAPABILITIES_SHOWN: Final = 400
_CHUNK: Final = 4096
_MASK: Final = "<secret>"
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.S)
_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_ADDRESS_LITERAL = re.compile(r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]")
_FORBIDDEN_IN_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")


# -- definitions -------------------------------------------------------------------------------


def _recipients(value: Iterable[str]) -> tuple[str, ...]:
    raw: object = value
    if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
        raise DefinitionError("rcpt_to", f"expected a list of addresses, got {type(raw).__name__}")
    return tuple(value)


def _address_problem(value: object, *, empty_ok: bool) -> str | None:
    """Why ``value`` cannot go between the angle brackets of MAIL FROM / RCPT TO, or None."""
    if not isinstance(value, str):
        return f"expected an address, got {type(value).__name__}"
    if not value:
        return None if empty_ok else "an empty address"
    if len(value) > 254:
        return f"longer than 254 characters ({len(value)})"
    if _FORBIDDEN_IN_ADDRESS.search(value):
        return f"spaces, control characters and angle brackets are not allowed: {value!r}"
    return None


@attrs.frozen
class SmtpProbe(ProbeBase):
    """Check an SMTP server: greeting, ``EHLO``, STARTTLS, login, an optional dry run, ``QUIT``.

    The greeting must be ``220`` (a ``4xx``/``5xx`` greeting is DOWN/``protocol`` naming the
    code) and, with ``expect_banner``, match that regular expression (else DOWN/``assertion``,
    and the probe says ``QUIT`` without going further: a server that is not the one expected
    gets no password). ``EHLO`` must be answered ``250``; its keywords are recorded in an
    ``ehlo`` outcome and ``SIZE`` as the ``size_limit`` metric.

    ``tls`` makes the connection TLS from the first byte (SMTPS, port 465). Otherwise
    ``starttls`` decides: ``required`` upgrades with ``STARTTLS`` and is DOWN/``tls`` when the
    server does not offer it (never a silent downgrade); ``optional`` upgrades when it is
    offered and is UP without it, the fact recorded (a ``starttls`` outcome and metric);
    ``off`` never upgrades. An offered ``STARTTLS`` that is then refused is DOWN/``tls`` either
    way. ``starttls_options`` are the TLS options of the upgrade.

    With ``username`` and ``password`` the probe logs in with ``AUTH PLAIN`` (or ``LOGIN`` when
    the server offers only that); a refusal (``535``) is DOWN/``auth`` with the server's message,
    never the password. The password is sent only over TLS unless ``plaintext_auth`` is set.

    With ``mail_from`` (``""`` is the null sender ``<>``) the probe sends ``MAIL FROM`` and a
    ``RCPT TO`` for each of ``rcpt_to``, then ``RSET``: no message is ever sent. Each reply is an
    outcome (``mail_from``, ``rcpt_to``); a refused sender or recipient is DOWN/``assertion``.

    ``assertions`` see the greeting and the last ``EHLO`` reply, as received, as the body.
    """

    kind: ClassVar[str] = "smtp"

    host: str = attrs.field(converter=_host)
    port: int = attrs.field(default=25, validator=_port)
    tls: TlsOptions | None = None
    starttls: StartTlsMode = "optional"
    starttls_options: TlsOptions | None = None
    helo_name: str = DEFAULT_HELO
    username: str | None = None
    password: Secret | None = None
    plaintext_auth: bool = False
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = attrs.field(default=(), converter=_recipients)
    expect_banner: str | None = None
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    ip_family: Family | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        self._check_target()
        self._check_tls()
        self._check_login()
        self._check_dialogue()
        if not isinstance(self.timeouts, Timeouts):
            raise DefinitionError("timeouts", f"expected Timeouts, got {self.timeouts!r}")

    def _check_target(self) -> None:
        check_host(self.host)
        check_family(self.ip_family)

    def _check_tls(self) -> None:
        if self.tls is not None and not isinstance(self.tls, TlsOptions):
            raise DefinitionError("tls", f"expected TlsOptions, got {self.tls!r}")
        if self.starttls not in _MODES:
            raise DefinitionError(
                "starttls", f"expected one of {list(_MODES)}, got {self.starttls!r}"
            )
        options: object = self.starttls_options
        if options is not None and not isinstance(options, TlsOptions):
            raise DefinitionError("starttls_options", f"expected TlsOptions, got {options!r}")
        if self.tls is not None and self.starttls == "required":
            raise DefinitionError(
                "starttls", "the connection is TLS from the start (tls); STARTTLS does not apply"
            )
        if options is not None and (self.tls is not None or self.starttls == "off"):
            raise DefinitionError(
                "starttls_options", "no STARTTLS is done (tls is set or starttls is off)"
            )

    def _check_login(self) -> None:
        password = check_secret("password", self.password)
        username: object = self.username
        if username is not None and (
            not isinstance(username, str) or not username or _FORBIDDEN_IN_ADDRESS.search(username)
        ):
            raise DefinitionError("username", f"expected a user name, got {username!r}")
        if (username is None) != (password is None):
            missing = "password" if password is None else "username"
            raise DefinitionError(missing, "a login needs both username and password")
        if not isinstance(self.plaintext_auth, bool):
            raise DefinitionError(
                "plaintext_auth", f"expected true or false, got {self.plaintext_auth!r}"
            )
        if (
            password is not None
            and self.tls is None
            and self.starttls == "off"
            and not self.plaintext_auth
        ):
            raise DefinitionError(
                "password",
                "would be sent unencrypted (starttls is off and tls is not set); "
                "use TLS, or set plaintext_auth for a server on a trusted network",
            )

    def _check_dialogue(self) -> None:
        helo: object = self.helo_name
        if not isinstance(helo, str) or not (
            _DOMAIN.fullmatch(helo) or _ADDRESS_LITERAL.fullmatch(helo)
        ):
            raise DefinitionError(
                "helo_name", f"expected a domain name or an address literal, got {helo!r}"
            )
        if len(helo) > 255:
            raise DefinitionError("helo_name", "longer than 255 characters")
        if self.mail_from is not None:
            problem = _address_problem(self.mail_from, empty_ok=True)
            if problem:
                raise DefinitionError("mail_from", problem)
        for i, address in enumerate(self.rcpt_to):
            problem = _address_problem(address, empty_ok=False)
            if problem:
                raise DefinitionError(f"rcpt_to[{i}]", problem)
        if self.rcpt_to and self.mail_from is None:
            raise DefinitionError("rcpt_to", 'needs mail_from ("" for the null sender <>)')
        pattern: object = self.expect_banner
        if pattern is not None:
            if not isinstance(pattern, str) or not pattern:
                raise DefinitionError(
                    "expect_banner", f"expected a regular expression, got {pattern!r}"
                )
            try:
                re.compile(pattern)
            except re.error as exc:
                raise DefinitionError("expect_banner", f"not a regular expression: {exc}") from None

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.connect(self.host, self.port, tls=self.tls, family=self.ip_family)
        session = _Session(attempt, conn, self.password, self.username)
        encrypted = self.tls is not None
        attempt.metric("tls", int(encrypted))
        attempt.metric("starttls", 0)
        attempt.metric("auth", 0)

        with attempt.phase("banner"):
            banner = await session.reply("banner")
            self._greeted(attempt, banner)
        if not self._banner_expected(attempt, banner):
            attempt.observe(body=banner.raw)
            with attempt.phase("quit"):
                await session.quit()
            return

        with attempt.phase("ehlo"):
            capabilities = await session.ehlo(self.helo_name)
        if not encrypted and self.starttls != "off":
            encrypted = await self._starttls(attempt, session, capabilities)
            if encrypted:
                with attempt.phase("ehlo"):
                    capabilities = await session.ehlo(self.helo_name)
        attempt.observe(body=banner.raw + capabilities.reply.raw)
        size = capabilities.size_limit()
        if size is not None:
            attempt.metric("size_limit", size)

        if self.username is not None and self.password is not None:
            with attempt.phase("auth"):
                if not encrypted and not self.plaintext_auth:
                    raise ProbeFailure(
                        ErrorKind.TLS,
                        "not sending the password over an unencrypted connection: the server "
                        "did not offer STARTTLS (set starttls = required to insist on it, or "
                        "plaintext_auth for a server on a trusted network)",
                    )
                await session.authenticate(capabilities, self.username, self.password)
            attempt.metric("auth", 1)

        if self.mail_from is not None:
            with attempt.phase("command"):
                await session.dry_run(self.mail_from, self.rcpt_to)

        with attempt.phase("quit"):
            await session.quit()

    def _greeted(self, attempt: Attempt, banner: _Reply) -> None:
        """Record the greeting; anything but 220 ends the check (a protocol failure)."""
        attempt.metric("banner_code", banner.code)
        shown = banner.shown()
        if banner.code == 220:
            return
        attempt.outcome("banner", False, "220", shown)
        if banner.code == 421 or banner.code >= 500:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the server refused the session ({banner.code}): {shown}"
            )
        raise ProbeFailure(
            ErrorKind.PROTOCOL, f"expected a 220 greeting, got {banner.code}: {shown}"
        )

    def _banner_expected(self, attempt: Attempt, banner: _Reply) -> bool:
        shown = banner.shown()
        if self.expect_banner is None:
            attempt.outcome("banner", True, "220", shown)
            return True
        matched = re.search(self.expect_banner, banner.text()) is not None
        attempt.outcome("banner", matched, f"220 matching /{self.expect_banner}/", shown)
        return matched

    async def _starttls(
        self, attempt: Attempt, session: _Session, capabilities: _Capabilities
    ) -> bool:
        """Upgrade the connection when ``starttls`` says so; True when it is now TLS."""
        if "STARTTLS" not in capabilities.keywords:
            if self.starttls == "required":
                with attempt.phase("starttls"):
                    attempt.outcome("starttls", False, "offered (required)", "not offered")
                    raise ProbeFailure(
                        ErrorKind.TLS, "STARTTLS is required but the server does not offer it"
                    )
            attempt.outcome("starttls", True, "offered or not (optional)", "not offered")
            return False
        with attempt.phase("starttls"):
            reply = await session.command(b"STARTTLS", "STARTTLS reply")
            if reply.code != 220:
                shown = session.shown(reply)
                attempt.outcome("starttls", False, "220 to STARTTLS", shown)
                raise ProbeFailure(
                    ErrorKind.TLS, f"the server offered STARTTLS but refused it: {shown}"
                )
            session.nothing_pending()
        await attempt.start_tls(session.conn, self.host, self.starttls_options)
        attempt.outcome("starttls", True, f"offered ({self.starttls})", "upgraded")
        attempt.metric("starttls", 1)
        attempt.metric("tls", 1)
        return True


# -- the dialogue ------------------------------------------------------------------------------


@attrs.frozen
class _Reply:
    """One complete reply: its code, the text of each line, and the bytes as received."""

    code: int
    lines: tuple[str, ...]
    raw: bytes

    def text(self) -> str:
        """The reply as received, one line per line, without line ends."""
        return "\n".join(
            line.rstrip("\r\n") for line in self.raw.decode("utf-8", "replace").splitlines()
        )

    def shown(self, secrets: Iterable[str] = ()) -> str:
        """The first line, code included, short and printable, with ``secrets`` masked."""
        first = f"{self.code} {self.lines[0]}".rstrip() if self.lines else str(self.code)
        return _excerpt(first, secrets, more=len(self.lines) > 1)


@attrs.frozen
class _Capabilities:
    """What one ``EHLO`` reply offered: keyword -> parameters (upper-cased keywords)."""

    reply: _Reply
    keywords: Mapping[str, tuple[str, ...]]

    @classmethod
    def parse(cls, reply: _Reply) -> _Capabilities:
        keywords: dict[str, tuple[str, ...]] = {}
        for line in reply.lines[1:]:  # the first line is the server's name and greeting
            words = line.split()
            if not words:
                continue
            keyword, params = words[0].upper(), tuple(words[1:])
            if keyword.startswith("AUTH="):  # the pre-RFC 4954 form some servers still send
                keyword, params = "AUTH", (keyword[5:], *params)
            keywords[keyword] = keywords.get(keyword, ()) + params
        return cls(reply, keywords)

    def size_limit(self) -> int | None:
        params = self.keywords.get("SIZE")
        if params is None:
            return None
        if params and params[0].isascii() and params[0].isdigit():
            return int(params[0])
        return 0 if not params else None  # "SIZE" alone: no fixed limit announced

    def mechanisms(self) -> tuple[str, ...]:
        return tuple(m.upper() for m in self.keywords.get("AUTH", ()))

    def describe(self) -> str:
        text = ", ".join(" ".join((k, *p)) for k, p in self.keywords.items()) or "no extensions"
        return _excerpt(text, (), limit=_CAPABILITIES_SHOWN)


def _excerpt(
    text: str, secrets: Iterable[str], *, more: bool = False, limit: int = _EXCERPT
) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, _MASK)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > limit:
        return f"{text[:limit]}… ({len(text)} characters)"
    return f"{text} …" if more else text


class _Closed(ProbeFailure):
    """The server closed the connection before a reply was complete."""


class _Session:
    """The SMTP dialogue on one connection: bounded reply reading and the commands."""

    __slots__ = ("_buffer", "_secrets", "attempt", "conn")

    def __init__(
        self, attempt: Attempt, conn: Connection, password: Secret | None, username: str | None
    ) -> None:
        self.attempt = attempt
        self.conn = conn
        self._buffer = bytearray()
        self._secrets: tuple[str, ...] = ()
        if password is not None:
            value = password.reveal()
            token = f"\0{username or ''}\0{value}".encode()
            # What a server might echo back: the password, and its base64 forms on the wire.
            self._secrets = (
                value,
                base64.b64encode(value.encode()).decode(),
                base64.b64encode(token).decode(),
            )

    def shown(self, reply: _Reply) -> str:
        """``reply`` for a message or an outcome, with the password masked should the server
        repeat it."""
        return reply.shown(self._secrets)

    # -- reading ---------------------------------------------------------------------------

    async def reply(self, what: str) -> _Reply:
        """One whole reply (every line of a multi-line one), at most REPLY_LIMIT bytes."""
        raw = bytearray()
        lines: list[str] = []
        code: bytes | None = None
        while True:
            line = await self._line(what, REPLY_LIMIT - len(raw))
            raw += line
            body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            match = _REPLY_LINE.fullmatch(body)
            if match is None:
                shown = _excerpt(body.decode("utf-8", "replace"), self._secrets)
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"the {what} is not an SMTP reply: {shown!r}"
                )
            if code is None:
                code = match.group(1)
            elif match.group(1) != code:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"the {what} changes its code from {code.decode()} to "
                    f"{match.group(1).decode()} between lines",
                )
            lines.append((match.group(3) or b"").decode("utf-8", "replace"))
            if match.group(2) != b"-":
                return _Reply(int(code), tuple(lines), bytes(raw))

    async def _line(self, what: str, budget: int) -> bytes:
        limit = min(LINE_LIMIT, budget)
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n")
            if end >= 0 and end < limit:
                line = bytes(buffer[: end + 1])
                del buffer[: end + 1]
                return line
            if end >= 0 or len(buffer) >= limit:
                if budget <= LINE_LIMIT:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL, f"the {what} exceeds {REPLY_LIMIT} bytes"
                    )
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"a line of the {what} exceeds {LINE_LIMIT} bytes"
                )
            data = await self.attempt.read(self.conn, _CHUNK)
            if not data:
                raise _Closed(
                    ErrorKind.PROTOCOL, f"the connection closed before the end of the {what}"
                )
            buffer += data

    def nothing_pending(self) -> None:
        """Refuse plain-text bytes sent after the go-ahead for TLS: they would be read back as
        if they had come through TLS (the STARTTLS injection flaw)."""
        if self._buffer:
            shown = _excerpt(bytes(self._buffer).decode("utf-8", "replace"), ())
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"{len(self._buffer)} unexpected plain-text bytes after the STARTTLS go-ahead: "
                f"{shown!r}",
            )

    # -- commands --------------------------------------------------------------------------

    async def command(self, line: bytes, what: str) -> _Reply:
        """Send one command line; its reply. 421 (the server is closing) fails the check."""
        await self.attempt.write(self.conn, line + b"\r\n")
        reply = await self.reply(what)
        if reply.code == 421:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"the server is closing the connection: {self.shown(reply)}",
            )
        return reply

    async def ehlo(self, name: str) -> _Capabilities:
        reply = await self.command(b"EHLO " + name.encode("ascii"), "EHLO reply")
        if reply.code != 250:
            raise ProbeFailure(ErrorKind.PROTOCOL, f"EHLO refused: {self.shown(reply)}")
        capabilities = _Capabilities.parse(reply)
        self.attempt.outcome("ehlo", True, "250", capabilities.describe())
        return capabilities

    async def authenticate(
        self, capabilities: _Capabilities, username: str, password: Secret
    ) -> None:
        offered = capabilities.mechanisms()
        if "PLAIN" in offered:
            await self._plain(username, password)
        elif "LOGIN" in offered:
            await self._login(username, password)
        elif not offered:
            raise ProbeFailure(ErrorKind.AUTH, "the server does not offer AUTH")
        else:
            raise ProbeFailure(
                ErrorKind.AUTH,
                f"the server offers AUTH {' '.join(offered)[:_EXCERPT]}, not PLAIN or LOGIN",
            )

    async def _plain(self, username: str, password: Secret) -> None:
        token = base64.b64encode(f"\0{username}\0{password.reveal()}".encode())
        reply = await self.command(b"AUTH PLAIN " + token, "AUTH reply")
        if reply.code == 334:  # a server that wants the credentials after an empty challenge
            reply = await self.command(token, "AUTH reply")
        self._authenticated(reply, "PLAIN")

    async def _login(self, username: str, password: Secret) -> None:
        reply = await self.command(b"AUTH LOGIN", "AUTH reply")
        for value in (username, password.reveal()):
            if reply.code != 334:
                break
            reply = await self.command(base64.b64encode(value.encode()), "AUTH reply")
        self._authenticated(reply, "LOGIN")

    def _authenticated(self, reply: _Reply, mechanism: str) -> None:
        shown = self.shown(reply)
        if reply.code == 235:
            return
        if reply.code >= 400:
            log.debug("smtp AUTH %s refused: %s", mechanism, shown)
            raise ProbeFailure(ErrorKind.AUTH, f"AUTH {mechanism} refused: {shown}")
        raise ProbeFailure(
            ErrorKind.PROTOCOL, f"expected 235 or a refusal to AUTH {mechanism}, got {shown}"
        )

    async def dry_run(self, sender: str, recipients: tuple[str, ...]) -> None:
        """MAIL FROM, RCPT TO for each recipient, then RSET: each reply is an outcome."""
        attempt = self.attempt
        reply = await self.command(f"MAIL FROM:<{sender}>".encode(), "MAIL FROM reply")
        accepted = 200 <= reply.code < 300
        attempt.outcome("mail_from", accepted, f"<{sender}> accepted (2xx)", self.shown(reply))
        if accepted:
            for recipient in recipients:
                reply = await self.command(f"RCPT TO:<{recipient}>".encode(), "RCPT TO reply")
                attempt.outcome(
                    "rcpt_to",
                    200 <= reply.code < 300,
                    f"<{recipient}> accepted (2xx)",
                    self.shown(reply),
                )
        reply = await self.command(b"RSET", "RSET reply")
        if reply.code != 250:
            raise ProbeFailure(ErrorKind.PROTOCOL, f"RSET refused: {self.shown(reply)}")

    async def quit(self) -> None:
        """Say goodbye. A server that hangs up instead of answering has done what was asked."""
        try:
            await self.attempt.write(self.conn, b"QUIT\r\n")
            reply = await self.reply("QUIT reply")
        except (_Closed, ConnectionError) as exc:
            log.debug("smtp server closed the connection at QUIT: %s", exc)
            return
        if reply.code != 221:
            log.debug("smtp QUIT answered %s", self.shown(reply))


# -- the command-line form -------------------------------------------------------------------------


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems: list[DefinitionError] = []
    try:
        secret_from_env(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    need = "need --tls or STARTTLS (not --starttls off)"
    implicit = bool(values.get("tls"))
    if problem := starttls_definition(values, definition, implicit=implicit, off_problem=need):
        problems.append(problem)
    if values.get("plaintext_auth"):
        definition["plaintext_auth"] = True
    try:
        cert_assertion(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    try:
        body_assertions(values, definition)
    except DefinitionErrors as exc:
        problems.extend(exc.errors)
    if problems:
        raise DefinitionErrors(problems)


def _describe(result: Result) -> str | None:
    parts: list[str] = []
    banner = next((a for a in result.assertions if a.name == "banner"), None)
    if banner is not None:
        parts.append(banner.observed)
    metrics = result.metrics
    if metrics.get("starttls"):
        parts.append("STARTTLS")
    elif metrics.get("tls"):
        parts.append("TLS")
    elif "tls" in metrics and result.error is None:
        parts.append("no TLS")
    if metrics.get("auth"):
        parts.append("AUTH ok")
    size = metrics.get("size_limit")
    if size:
        parts.append(f"SIZE {int(size)}")
    return ", ".join(parts) or None


KIND = ProbeKind(
    name="smtp",
    cls=SmtpProbe,
    summary="check an SMTP server: banner, EHLO, STARTTLS, optional AUTH and MAIL/RCPT dry run",
    target=HostPort(default_port=25),
    options=(
        Option(
            ("--starttls",),
            field="starttls",
            choices=_MODES,
            metavar="{required,optional,off}",
            help="upgrade with STARTTLS: required (DOWN without it), optional (default), off",
        ),
        Option(
            ("--tls",),
            dest="tls",
            action="flag",
            sets=("tls",),
            help="speak TLS from the first byte (SMTPS, usually port 465)",
        ),
        *TLS_OPTIONS,
        *CERT_OPTIONS,
        Option(
            ("--helo",),
            field="helo_name",
            metavar="NAME",
            help=f"the name to introduce the probe with in EHLO (default {DEFAULT_HELO})",
        ),
        Option(
            ("--user",),
            field="username",
            metavar="NAME",
            help="log in (AUTH PLAIN or LOGIN) as NAME; needs --password-env",
        ),
        Option(
            ("--password-env",),
            dest="password_env",
            metavar="VAR",
            sets=("password",),
            help="the password for --user, from environment variable VAR",
        ),
        Option(
            ("--plaintext-auth",),
            dest="plaintext_auth",
            action="flag",
            sets=("plaintext_auth",),
            help="allow sending the password without TLS (a trusted network only)",
        ),
        Option(
            ("--from",),
            field="mail_from",
            metavar="ADDR",
            help='dry run: MAIL FROM:<ADDR> ("" for <>), then RSET; no message is sent',
        ),
        Option(
            ("--to",),
            field="rcpt_to",
            action="append",
            metavar="ADDR",
            help="dry run: RCPT TO:<ADDR> after --from (repeatable)",
        ),
        Option(
            ("--expect-banner",),
            field="expect_banner",
            metavar="RE",
            help="the greeting (code included) must match the regular expression RE",
        ),
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric("banner_code", "probekit_smtp_banner_code", "The reply code of the greeting."),
        Metric(
            "tls",
            "probekit_smtp_tls",
            "1 when the session was encrypted (implicit TLS or STARTTLS), else 0.",
        ),
        Metric(
            "starttls",
            "probekit_smtp_starttls",
            "1 when the session was upgraded with STARTTLS, else 0.",
        ),
        Metric("auth", "probekit_smtp_auth", "1 when the probe logged in with AUTH, else 0."),
        Metric(
            "size_limit",
            "probekit_smtp_size_limit_bytes",
            "The message size limit the server announced in EHLO SIZE (0: no fixed limit).",
        ),
    ),
    docs="probes/smtp.md",
    tls_field="tls",
    describe=_describe,
)
