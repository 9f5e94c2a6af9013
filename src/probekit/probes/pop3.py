"""Pop3Probe: greet a POP3 server, read its capabilities, upgrade to TLS, log in, read the
maildrop's size and quit, timing each step.

It speaks POP3 (RFC 1939, with CAPA and STLS of RFC 2449 and 2595) itself, over the shared dial
path, so no POP3 library is loaded and the egress policy, IP pinning and TLS hold as for every
other kind. Every read is bounded: a reply line at most :data:`LINE_LIMIT` bytes, a multi-line
reply (``CAPA``) at most :data:`MULTILINE_LINES` lines and :data:`MULTILINE_LIMIT` bytes.

Phases: ``resolve``, ``connect``, ``tls`` (with ``tls``: POP3S), ``banner`` (the greeting),
``capability`` (``CAPA``), then with STARTTLS ``starttls`` (``STLS``), ``tls`` and
``capability`` again, ``auth`` (``USER``/``PASS``, with a ``username``), ``command``
(``STAT``, after a login unless ``stat`` is false) and ``quit``. Metrics: ``messages`` and
``maildrop_bytes`` (from ``STAT``) and ``tls`` (1 when the session was encrypted).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Final

import attrs

from .._assertions import Assertion, assertion_tuple
from .._dial import Connection
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._resolver import Family
from .._result import ErrorKind
from .._secret import Secret
from .._timeouts import Timeouts
from .._tls import TlsOptions
from ._base import Attempt, ProbeBase
from ._kind import Metric, Option, ProbeKind
from ._mailcommon import (
    ImplicitTlsPort,
    MailTarget,
    StartTls,
    check_common,
    common_options,
    common_to_definition,
    describe_mail,
    mail_host,
    mail_port,
    shown,
)
from ._options import BODY_OPTIONS

__all__ = [
    "KIND",
    "LINE_LIMIT",
    "MULTILINE_LIMIT",
    "MULTILINE_LINES",
    "POP3S_PORT",
    "POP3_PORT",
    "Pop3Probe",
]

log = logging.getLogger("probekit.probes.pop3")

POP3_PORT: Final = 110
POP3S_PORT: Final = 995
#: The longest reply line read. RFC 2449 limits a response line to 512 octets; some servers
#: are longer in their greeting, none by this much.
LINE_LIMIT: Final = 4096
#: The most lines of one multi-line reply (a capability list has about a dozen).
MULTILINE_LINES: Final = 1000
#: The most bytes of one multi-line reply.
MULTILINE_LIMIT: Final = 256 * 1024

_STAT = re.compile(rb"\+OK ([0-9]{1,10}) ([0-9]{1,20})(?: [^\r\n]*)?\r?\n\Z")


def _status(line: bytes) -> bool | None:
    """True for ``+OK``, False for ``-ERR``, None for anything else."""
    if line.startswith(b"+OK") and line[3:4] in (b" ", b"\r", b"\n"):
        return True
    if line.startswith(b"-ERR") and line[4:5] in (b" ", b"\r", b"\n"):
        return False
    return None


def _text(line: bytes) -> bytes:
    """What follows ``+OK``/``-ERR``."""
    return line.split(b" ", 1)[1] if b" " in line else b""


class _Session:
    """One POP3 conversation: bounded reads and the commands the probe sends."""

    def __init__(self, attempt: Attempt, conn: Connection, password: Secret | None) -> None:
        self.attempt = attempt
        self.conn = conn
        self.password = password

    async def line(self, what: str) -> bytes:
        return await self.attempt.read_line(self.conn, max_bytes=LINE_LIMIT, what=what)

    async def command(self, command: bytes, what: str) -> tuple[bool, bytes]:
        """Send ``command``; (whether it was ``+OK``, the reply line). Anything but ``+OK`` or
        ``-ERR`` is a protocol failure."""
        await self.attempt.write(self.conn, command + b"\r\n")
        reply = await self.line(what)
        status = _status(reply)
        if status is None:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"expected +OK or -ERR, got {shown(reply, self.password)}"
            )
        return status, reply

    async def multiline(self, what: str) -> list[bytes]:
        """The lines of a multi-line reply up to its ``.`` line, dot-unstuffed, without their
        line ends."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = await self.line(what)
            total += len(line)
            body = line.rstrip(b"\r\n")
            if body == b".":
                return lines
            if len(lines) >= MULTILINE_LINES:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"the {what} has more than {MULTILINE_LINES} lines"
                )
            if total > MULTILINE_LIMIT:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"the {what} exceeds {MULTILINE_LIMIT} bytes"
                )
            lines.append(body[1:] if body.startswith(b".") else body)


@attrs.frozen
class Pop3Probe(ImplicitTlsPort, ProbeBase):
    """Check a POP3 server: the greeting (``+OK``; ``-ERR`` is DOWN), ``CAPA``, ``STLS`` per
    ``starttls``, ``USER``/``PASS`` when a ``username`` is set, ``STAT`` for the maildrop's
    size, ``QUIT``.

    ``tls`` makes the connection TLS from the first byte (POP3S, port 995 by default; 110
    otherwise). ``starttls``: ``required`` is DOWN/``tls`` when the server does not offer
    ``STLS`` (never a silent downgrade), ``optional`` upgrades when offered, ``off`` never does;
    ``starttls_options`` are the TLS options of the upgrade. A refused login is DOWN/``auth``
    with the server's text (never the password). A server without ``CAPA`` (RFC 1939 only) is
    UP with no capabilities, so it offers no ``STLS``. ``assertions`` see the greeting and the
    capability list as the body.
    """

    PLAIN_PORT: ClassVar[int] = POP3_PORT
    TLS_PORT: ClassVar[int] = POP3S_PORT

    kind: ClassVar[str] = "pop3"

    host: str = attrs.field(converter=mail_host)
    port: int | None = attrs.field(default=None, validator=mail_port)
    tls: TlsOptions | None = None
    starttls: StartTls = "optional"
    starttls_options: TlsOptions | None = None
    username: str | None = None
    password: Secret | None = None
    stat: bool = True
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    ip_family: Family | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        check_common(
            host=self.host,
            tls=self.tls,
            starttls=self.starttls,
            starttls_options=self.starttls_options,
            username=self.username,
            password=self.password,
            ip_family=self.ip_family,
            timeouts=self.timeouts,
            forbidden="\0\r\n",
        )
        if not isinstance(self.stat, bool):
            raise DefinitionError("stat", f"expected true or false, got {self.stat!r}")
        self._fill_default_port()

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.connect(self.host, self._port, tls=self.tls, family=self.ip_family)
        session = _Session(attempt, conn, self.password)
        with attempt.phase("banner"):
            greeting = await session.line("greeting")
            self._greeting(greeting)
        with attempt.phase("capability"):
            capabilities = await self._capabilities(session)
            upgrade = self._upgrade(capabilities, attempt)
        if upgrade:
            with attempt.phase("starttls"):
                ok, reply = await session.command(b"STLS", "STLS reply")
                if not ok:
                    raise ProbeFailure(
                        ErrorKind.TLS, f"STLS was offered, then refused: {shown(reply)}"
                    )
                if conn.buffered:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL,
                        f"{conn.buffered} plain-text bytes after the STLS reply, before TLS",
                    )
            await attempt.start_tls(conn, self.host, self.starttls_options)
            attempt.outcome("starttls", True, f"STLS ({self.starttls})", "upgraded")
            with attempt.phase("capability"):
                capabilities = await self._capabilities(session)
        attempt.metric("tls", 1 if conn.tls is not None else 0)
        listed = b"".join(c + b"\r\n" for c in capabilities)
        attempt.observe(body=greeting + listed)
        if self.username is not None and self.password is not None:
            with attempt.phase("auth"):
                await self._login(session, self.username, self.password)
            if self.stat:
                with attempt.phase("command"):
                    await self._stat(session, attempt)
        with attempt.phase("quit"):
            ok, reply = await session.command(b"QUIT", "QUIT reply")
            if not ok:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"QUIT failed: {shown(_text(reply), self.password)}"
                )

    def _greeting(self, line: bytes) -> None:
        status = _status(line)
        if status is True:
            return
        if status is False:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the server refused the session: {shown(_text(line))}"
            )
        raise ProbeFailure(ErrorKind.PROTOCOL, f"not a POP3 greeting: {shown(line)}")

    async def _capabilities(self, session: _Session) -> list[bytes]:
        ok, _ = await session.command(b"CAPA", "CAPA reply")
        if not ok:
            log.debug("pop3 %s has no CAPA: assuming no capabilities", self.target)
            return []
        return await session.multiline("CAPA reply")

    def _upgrade(self, capabilities: list[bytes], attempt: Attempt) -> bool:
        """Whether to send STLS; a ``tls`` failure when it is required and not offered."""
        if self.tls is not None or self.starttls == "off":
            return False
        names = {c.split(b" ", 1)[0].upper() for c in capabilities}
        if b"STLS" in names:
            return True
        if self.starttls == "required":
            listed = b" ".join(sorted(names)).decode("ascii", "replace")
            raise ProbeFailure(
                ErrorKind.TLS,
                f"STLS is required, but not offered (capabilities: {listed[:200] or 'none'})",
            )
        attempt.outcome("starttls", True, "STLS (optional)", "STLS is not offered")
        return False

    async def _login(self, session: _Session, username: str, password: Secret) -> None:
        ok, reply = await session.command(b"USER " + username.encode(), "USER reply")
        if ok:
            ok, reply = await session.command(b"PASS " + password.reveal().encode(), "PASS reply")
        if ok:
            return
        text = shown(_text(reply), password)
        log.debug("pop3 %s refused the login: %s", self.target, text)
        raise ProbeFailure(ErrorKind.AUTH, f"login refused: {text}")

    async def _stat(self, session: _Session, attempt: Attempt) -> None:
        ok, reply = await session.command(b"STAT", "STAT reply")
        if not ok:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"STAT failed: {shown(_text(reply), self.password)}"
            )
        match = _STAT.match(reply)
        if match is None:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"not a STAT reply: {shown(reply, self.password)}"
            )
        attempt.metric("messages", int(match.group(1)))
        attempt.metric("maildrop_bytes", int(match.group(2)))


# -- the command-line form -------------------------------------------------------------------------


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems = common_to_definition(values, definition, "pop3")
    if values.get("no_stat"):
        definition["stat"] = False
    if problems:
        raise DefinitionErrors(problems)


KIND = ProbeKind(
    name="pop3",
    cls=Pop3Probe,
    summary="log in to a POP3 server (STLS, USER/PASS), STAT the maildrop, QUIT",
    target=MailTarget(default_port=POP3_PORT, tls_port=POP3S_PORT),
    options=(
        *common_options("pop3", POP3S_PORT),
        Option(
            ("--no-stat",),
            dest="no_stat",
            action="flag",
            sets=("stat",),
            help="do not send STAT after the login (no message count)",
        ),
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric("messages", "probekit_pop3_messages", "Messages in the maildrop (STAT)."),
        Metric(
            "maildrop_bytes",
            "probekit_pop3_maildrop_bytes",
            "Size of the maildrop in bytes (STAT).",
        ),
        Metric(
            "tls",
            "probekit_pop3_tls",
            "1 when the POP3 session ran over TLS (POP3S or STLS), 0 in plain text.",
        ),
    ),
    docs="probes/pop3.md",
    tls_field="tls",
    describe=lambda result: describe_mail(result, "POP3"),
)
