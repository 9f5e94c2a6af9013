"""ImapProbe: greet an IMAP server, read its capabilities, upgrade to TLS, log in, open a mailbox
read-only and log out, timing each step.

It speaks IMAP4rev1 (RFC 3501) itself, over the shared dial path, so no IMAP library is loaded
and the egress policy, IP pinning and TLS hold as for every other kind. Responses are matched by
tag; every read is bounded: a response line at most :data:`LINE_LIMIT` bytes, a literal
(``{n}``) at most :data:`LITERAL_LIMIT`, the untagged data of one command at most
:data:`UNTAGGED_LIMIT` responses and :data:`RESPONSE_LIMIT` bytes.

Phases: ``resolve``, ``connect``, ``tls`` (with ``tls``: IMAPS), ``banner`` (the greeting),
``capability``, then with STARTTLS ``starttls``, ``tls`` and ``capability`` again, ``auth``
(``LOGIN``, with a ``username``), ``command`` (``EXAMINE``, with a ``mailbox``) and ``logout``.
Metrics: ``messages`` (the mailbox's ``EXISTS``) and ``tls`` (1 when the session was encrypted).
"""

from __future__ import annotations

import base64
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
    "IMAPS_PORT",
    "IMAP_PORT",
    "KIND",
    "LINE_LIMIT",
    "LITERAL_LIMIT",
    "RESPONSE_LIMIT",
    "UNTAGGED_LIMIT",
    "ImapProbe",
]

log = logging.getLogger("probekit.probes.imap")

IMAP_PORT: Final = 143
IMAPS_PORT: Final = 993
#: The longest response line read (without its literals). A capability list is a few hundred
#: bytes; RFC 7162 asks clients to accept 8000-octet command lines.
LINE_LIMIT: Final = 16 * 1024
#: The largest literal (``{n}``) accepted in a response; none of the commands sent asks for one.
LITERAL_LIMIT: Final = 64 * 1024
#: The most untagged responses accepted before one command's tagged reply.
UNTAGGED_LIMIT: Final = 1000
#: The most bytes (lines and literals) accepted for one command's responses.
RESPONSE_LIMIT: Final = 1024 * 1024

_LITERAL = re.compile(rb"\{([0-9]{1,12})\+?\}\r?\n\Z")
_EXISTS = re.compile(rb"\* ([0-9]{1,10}) EXISTS\r?\n\Z", re.I)
_CAPABILITY = re.compile(rb"\* CAPABILITY ([^\r\n]*)", re.I)
_CODE_CAPABILITY = re.compile(rb"\[CAPABILITY ([^\]\r\n]*)\]", re.I)
_STATES = (b"OK", b"NO", b"BAD")


@attrs.frozen
class _Literal:
    """A string sent as a synchronizing literal (``{n}``, then the bytes after ``+``)."""

    data: bytes = attrs.field(repr=False)


def _astring(value: str) -> bytes | _Literal:
    """``value`` as an IMAP astring: a quoted string when it is printable ASCII, else a literal
    (which carries any bytes but NUL, UTF-8 included)."""
    data = value.encode("utf-8")
    if all(0x20 <= b < 0x7F for b in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return _Literal(data)


def _mailbox_name(name: str) -> str:
    """``name`` in IMAP's modified UTF-7 (RFC 3501 5.1.3), as every server understands it."""
    if name.upper() == "INBOX":
        return "INBOX"
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) < 0x7F:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


@attrs.frozen
class _Reply:
    """The tagged reply to one command and the untagged responses before it."""

    state: bytes  # OK, NO or BAD
    line: bytes
    untagged: tuple[bytes, ...]

    @property
    def ok(self) -> bool:
        return self.state == b"OK"


def _tagged(line: bytes, tag: bytes, untagged: tuple[bytes, ...]) -> _Reply:
    """The reply ``line`` is when it carries ``tag``; a protocol failure for another tag."""
    head, _, rest = line.partition(b" ")
    if head != tag:
        raise ProbeFailure(
            ErrorKind.PROTOCOL,
            f"expected a reply tagged {tag.decode()}, got {shown(line)}",
        )
    state = rest.split(b" ", 1)[0].rstrip(b"\r\n").upper()
    if state not in _STATES:
        raise ProbeFailure(ErrorKind.PROTOCOL, f"not an IMAP status reply: {shown(line)}")
    return _Reply(state, line, untagged)


def _untagged_word(line: bytes) -> bytes:
    """The first word of an untagged response (``OK`` of ``* OK ready``), upper-cased; b"" for
    a line that is not untagged."""
    star, _, rest = line.partition(b" ")
    if star != b"*":
        return b""
    return rest.split(b" ", 1)[0].rstrip(b"\r\n").upper()


def _capabilities(reply: _Reply) -> frozenset[str]:
    found: set[str] = set()
    seen = False
    for line in (*reply.untagged, reply.line):
        match = _CAPABILITY.match(line) or _CODE_CAPABILITY.search(line)
        if match is not None:
            seen = True
            found.update(match.group(1).decode("ascii", "replace").upper().split())
    if not seen:
        raise ProbeFailure(ErrorKind.PROTOCOL, "the CAPABILITY reply lists no capabilities")
    return frozenset(found)


class _Session:
    """One IMAP conversation: tags, bounded reads, and the commands the probe sends."""

    def __init__(self, attempt: Attempt, conn: Connection, password: Secret | None) -> None:
        self.attempt = attempt
        self.conn = conn
        self.password = password
        self.count = 0
        #: Bytes still allowed for the responses to the current command.
        self.left = RESPONSE_LIMIT
        #: Whether the server said BYE (to LOGOUT).
        self.said_bye = False

    def _next_tag(self) -> bytes:
        self.count += 1
        return b"a%03d" % self.count

    def _spend(self, size: int, what: str) -> None:
        self.left -= size
        if self.left < 0:
            raise ProbeFailure(ErrorKind.PROTOCOL, f"the {what} exceeds {RESPONSE_LIMIT} bytes")

    async def response(self, what: str) -> bytes:
        """One response: a line, with the literals it announces read into it (counted against
        what is left of the current command's :data:`RESPONSE_LIMIT`)."""
        attempt, conn = self.attempt, self.conn
        line = await attempt.read_line(conn, max_bytes=LINE_LIMIT, what=what)
        self._spend(len(line), what)
        data = bytearray(line)
        while (literal := _LITERAL.search(line)) is not None:
            size = int(literal.group(1))
            if size > LITERAL_LIMIT:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"the {what} announces a literal of {size} bytes, "
                    f"over the limit of {LITERAL_LIMIT}",
                )
            self._spend(size, what)
            received = 0
            while received < size:
                chunk = await attempt.read(conn, size - received)
                if not chunk:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL,
                        f"the connection closed after {received} of a {size}-byte literal "
                        f"in the {what}",
                    )
                received += len(chunk)
                data += chunk
            line = await attempt.read_line(conn, max_bytes=LINE_LIMIT, what=what)
            self._spend(len(line), what)
            data += line
        return bytes(data)

    async def command(self, verb: bytes, *args: bytes | _Literal, ending: bool = False) -> _Reply:
        """Send one command and read through its tagged reply.

        An untagged ``BYE`` before it is a protocol failure unless ``ending`` (LOGOUT).
        """
        tag = self._next_tag()
        what = f"{verb.decode()} reply"
        pieces: list[bytes] = []
        current = bytearray(tag + b" " + verb)
        for arg in args:
            if isinstance(arg, _Literal):
                current += b" {%d}\r\n" % len(arg.data)
                pieces.append(bytes(current))
                current = bytearray(arg.data)
            else:
                current += b" " + arg
        current += b"\r\n"
        pieces.append(bytes(current))
        untagged: list[bytes] = []
        self.left = RESPONSE_LIMIT
        for index, piece in enumerate(pieces):
            await self.attempt.write(self.conn, piece)
            last = index == len(pieces) - 1
            while True:
                line = await self.response(what)
                if line.startswith(b"* "):
                    self._untagged(line, untagged, what, ending)
                    continue
                if line.startswith(b"+"):
                    if last:
                        raise ProbeFailure(
                            ErrorKind.PROTOCOL,
                            f"an unexpected continuation request to {verb.decode()}: "
                            f"{shown(line, self.password)}",
                        )
                    break  # the server is ready for the literal
                return _tagged(line, tag, tuple(untagged))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _untagged(self, line: bytes, untagged: list[bytes], what: str, ending: bool) -> None:
        if len(untagged) >= UNTAGGED_LIMIT:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"more than {UNTAGGED_LIMIT} untagged responses before the {what}",
            )
        if _untagged_word(line) == b"BYE":
            self.said_bye = True
        if not ending and self.said_bye:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"the server ended the session: {shown(line[2:], self.password)}",
            )
        untagged.append(line)


@attrs.frozen
class ImapProbe(ImplicitTlsPort, ProbeBase):
    """Check an IMAP server: the greeting (``* OK``; ``* PREAUTH`` logs the session in;
    ``* BYE`` is DOWN), ``CAPABILITY``, ``STARTTLS`` per ``starttls``, ``LOGIN`` when a
    ``username`` is set, ``EXAMINE mailbox`` (read-only) for its message count, ``LOGOUT``.

    ``tls`` makes the connection TLS from the first byte (IMAPS, port 993 by default; 143
    otherwise). ``starttls``: ``required`` is DOWN/``tls`` when the server does not offer it
    (never a silent downgrade), ``optional`` upgrades when offered, ``off`` never does;
    ``starttls_options`` are the TLS options of the upgrade. A refused login is DOWN/``auth``
    with the server's text (never the password); a mailbox that does not open is a failed
    ``mailbox`` outcome (DOWN/``assertion``). ``assertions`` see the greeting and the capability
    response as the body.
    """

    PLAIN_PORT: ClassVar[int] = IMAP_PORT
    TLS_PORT: ClassVar[int] = IMAPS_PORT

    kind: ClassVar[str] = "imap"

    host: str = attrs.field(converter=mail_host)
    port: int | None = attrs.field(default=None, validator=mail_port)
    tls: TlsOptions | None = None
    starttls: StartTls = "optional"
    starttls_options: TlsOptions | None = None
    username: str | None = None
    password: Secret | None = None
    mailbox: str | None = None
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
            forbidden="\0",
        )
        mailbox: object = self.mailbox
        if mailbox is not None:
            if not isinstance(mailbox, str) or not mailbox:
                raise DefinitionError("mailbox", f"expected a mailbox name, got {mailbox!r}")
            if any(c in mailbox for c in "\0\r\n"):
                raise DefinitionError("mailbox", "a mailbox name has no NUL, CR or LF")
            if self.username is None:
                raise DefinitionError("mailbox", "opening a mailbox needs username and password")
        self._fill_default_port()

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.connect(self.host, self._port, tls=self.tls, family=self.ip_family)
        session = _Session(attempt, conn, self.password)
        with attempt.phase("banner"):
            greeting = await session.response("greeting")
            preauth = self._greeting(greeting)
        with attempt.phase("capability"):
            capability = await session.command(b"CAPABILITY")
            capabilities = self._capabilities(capability)
            upgrade = self._upgrade(capabilities, preauth, attempt)
        if upgrade:
            with attempt.phase("starttls"):
                reply = await session.command(b"STARTTLS")
                if not reply.ok:
                    raise ProbeFailure(
                        ErrorKind.TLS, f"STARTTLS was offered, then refused: {shown(reply.line)}"
                    )
                if conn.buffered:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL,
                        f"{conn.buffered} plain-text bytes after the STARTTLS reply, before TLS",
                    )
            await attempt.start_tls(conn, self.host, self.starttls_options)
            attempt.outcome("starttls", True, f"STARTTLS ({self.starttls})", "upgraded")
            with attempt.phase("capability"):
                capability = await session.command(b"CAPABILITY")
                capabilities = self._capabilities(capability)
        attempt.metric("tls", 1 if conn.tls is not None else 0)
        body = greeting + b"".join((*capability.untagged, capability.line))
        attempt.observe(body=body)
        if self.username is not None and self.password is not None and not preauth:
            with attempt.phase("auth"):
                await self._login(session, capabilities, self.username, self.password)
        if self.mailbox is not None:
            with attempt.phase("command"):
                await self._examine(session, self.mailbox, attempt)
        with attempt.phase("logout"):
            await self._logout(session)

    def _greeting(self, line: bytes) -> bool:
        """Whether the session is already authenticated (PREAUTH); failures for the others."""
        word = _untagged_word(line)
        if word == b"OK":
            return False
        if word == b"PREAUTH":
            log.debug("imap %s greeted with PREAUTH: no LOGIN", self.target)
            return True
        if word == b"BYE":
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the server refused the session: {shown(line[2:])}"
            )
        raise ProbeFailure(ErrorKind.PROTOCOL, f"not an IMAP greeting: {shown(line)}")

    def _capabilities(self, reply: _Reply) -> frozenset[str]:
        if not reply.ok:
            raise ProbeFailure(ErrorKind.PROTOCOL, f"CAPABILITY failed: {shown(reply.line)}")
        return _capabilities(reply)

    def _upgrade(self, capabilities: frozenset[str], preauth: bool, attempt: Attempt) -> bool:
        """Whether to send STARTTLS; a ``tls`` failure when it is required and cannot be."""
        if self.tls is not None or self.starttls == "off":
            return False
        offered = "STARTTLS" in capabilities
        if offered and not preauth:
            return True
        why = "the server greeted with PREAUTH" if preauth else "STARTTLS is not offered"
        if self.starttls == "required":
            listed = " ".join(sorted(capabilities))
            raise ProbeFailure(
                ErrorKind.TLS, f"STARTTLS is required, but {why} (capabilities: {listed[:200]})"
            )
        attempt.outcome("starttls", True, "STARTTLS (optional)", why)
        return False

    async def _login(
        self, session: _Session, capabilities: frozenset[str], username: str, password: Secret
    ) -> None:
        if "LOGINDISABLED" in capabilities:
            hint = "" if session.conn.tls is not None else "; use starttls or tls"
            raise ProbeFailure(
                ErrorKind.AUTH, f"the server does not allow LOGIN here (LOGINDISABLED){hint}"
            )
        reply = await session.command(b"LOGIN", *(_astring(username), _astring(password.reveal())))
        if reply.ok:
            return
        text = shown(reply.line.split(b" ", 1)[-1], password)
        log.debug("imap %s refused LOGIN: %s", self.target, text)
        if reply.state == b"NO":
            raise ProbeFailure(ErrorKind.AUTH, f"LOGIN refused: {text}")
        raise ProbeFailure(ErrorKind.PROTOCOL, f"LOGIN failed: {text}")

    async def _examine(self, session: _Session, mailbox: str, attempt: Attempt) -> None:
        reply = await session.command(b"EXAMINE", _astring(_mailbox_name(mailbox)))
        text = shown(reply.line.split(b" ", 1)[-1], self.password)
        if reply.state == b"BAD":
            raise ProbeFailure(ErrorKind.PROTOCOL, f"EXAMINE failed: {text}")
        if reply.state == b"NO":
            attempt.outcome("mailbox", False, f"{mailbox!r} opens", text)
            return
        counts = [m for line in reply.untagged if (m := _EXISTS.match(line)) is not None]
        if not counts:
            raise ProbeFailure(ErrorKind.PROTOCOL, "the EXAMINE reply has no EXISTS count")
        attempt.metric("messages", int(counts[-1].group(1)))
        attempt.outcome("mailbox", True, f"{mailbox!r} opens", "opened")

    async def _logout(self, session: _Session) -> None:
        try:
            reply = await session.command(b"LOGOUT", ending=True)
        except (ProbeFailure, ConnectionError):
            # After the BYE the session is over: closing without the tagged OK is a clean end.
            if session.said_bye:
                return
            raise
        if not reply.ok:
            raise ProbeFailure(ErrorKind.PROTOCOL, f"LOGOUT failed: {shown(reply.line)}")


# -- the command-line form -------------------------------------------------------------------------


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems = common_to_definition(values, definition, "imap")
    if problems:
        raise DefinitionErrors(problems)


KIND = ProbeKind(
    name="imap",
    cls=ImapProbe,
    summary="log in to an IMAP server (STARTTLS, LOGIN), EXAMINE a mailbox, LOGOUT",
    target=MailTarget(default_port=IMAP_PORT, tls_port=IMAPS_PORT),
    options=(
        *common_options("imap", IMAPS_PORT),
        Option(
            ("--mailbox",),
            field="mailbox",
            metavar="NAME",
            help="EXAMINE mailbox NAME (read-only) and report its message count",
        ),
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric(
            "messages",
            "probekit_imap_messages",
            "Messages in the examined mailbox (its EXISTS count).",
        ),
        Metric(
            "tls",
            "probekit_imap_tls",
            "1 when the IMAP session ran over TLS (IMAPS or STARTTLS), 0 in plain text.",
        ),
    ),
    docs="probes/imap.md",
    tls_field="tls",
    describe=lambda result: describe_mail(result, "IMAP"),
)
