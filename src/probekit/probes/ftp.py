"""FtpProbe: greet an FTP server, upgrade with ``AUTH TLS`` (or speak FTPS from the first byte),
log in, and optionally list a directory over a passive data connection or look at one path,
timing each step.

It speaks FTP (RFC 959, with ``AUTH TLS``/``PBSZ``/``PROT`` of RFC 2228 and 4217, ``EPSV`` of
RFC 2428, ``SIZE``/``MDTM`` of RFC 3659) itself, over the shared dial path: the control
connection *and* the data connection are dialled by the dialer, so the data address a server
announces in its ``EPSV``/``PASV`` reply meets the egress policy like any other address before a
socket exists. (aioftp, the asyncio FTP library, dials both connections itself with
``asyncio.open_connection``; it has no hook for a dialer, so it cannot run over the dial path.)
The bytes of the protocol are parsed by :mod:`probekit.probes._ftpwire`, which classifies any
input and never raises.

Phases: ``resolve``, ``connect``, ``tls`` (implicit FTPS), ``banner``, ``starttls``
(``AUTH TLS``) and ``tls``, ``auth`` (``USER``/``PASS``); with a ``path``: for ``list``, ``cwd``
(``CWD path``), ``passive`` (``PBSZ``/``PROT P`` under TLS, ``EPSV`` or ``PASV``) and ``data``
(the data connection: its dial, ``LIST``, its TLS handshake, the transfer and the final reply);
for ``stat``, ``stat`` (``CWD``, else ``SIZE`` and ``MDTM``); then ``quit``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Final, Literal, TypeAlias, get_args

import attrs

from .._assertions import Assertion, assertion_tuple
from .._dial import Connection, within
from .._exceptions import DefinitionError, DefinitionErrors, PolicyError, ProbeFailure
from .._policy import canonical_address, parse_host_address
from .._resolver import Family
from .._result import ErrorKind, Result
from .._secret import Secret
from .._timeline import Timeline
from .._timeouts import Timeouts
from .._tls import TlsOptions, ssl_context
from ._base import Attempt, ProbeBase
from ._ftpwire import (
    Endpoint,
    ListingCounter,
    Malformed,
    Reply,
    ReplyAssembler,
    parse_epsv,
    parse_mdtm,
    parse_mlst,
    parse_pasv,
    parse_size,
)
from ._kind import Metric, Option, ProbeKind
from ._mailcommon import (
    ImplicitTlsPort,
    MailTarget,
    StartTls,
    check_common,
    common_options,
    common_to_definition,
    mail_host,
    mail_port,
    shown,
)
from ._options import BODY_OPTIONS

__all__ = [
    "ANONYMOUS",
    "FTPS_PORT",
    "FTP_PORT",
    "KIND",
    "LINE_LIMIT",
    "REPLY_LINES",
    "FtpProbe",
    "Operation",
    "PasvAddress",
]

log = logging.getLogger("probekit.probes.ftp")

FTP_PORT: Final = 21
FTPS_PORT: Final = 990
#: The longest reply line read (RFC 959 sets none; servers' lines are far shorter).
LINE_LIMIT: Final = 4096
#: The most lines of one multi-line reply (a FEAT or HELP reply has a few dozen).
REPLY_LINES: Final = 200
#: The user names that log in without a password of their own (RFC 1635).
ANONYMOUS: Final = frozenset({"anonymous", "ftp"})
#: What an anonymous login sends as its password (RFC 1635 asks for an e-mail address).
_ANONYMOUS_PASSWORD: Final = b"anonymous@"
_CHUNK: Final = 64 * 1024
_PRELIMINARY: Final = 3

#: ``list``: the entries of a directory, over a data connection; ``stat``: whether a path
#: exists, with the size and age of a file, over the control connection.
Operation: TypeAlias = Literal["list", "stat"]
#: Which data address to connect to after a ``PASV`` reply (``EPSV`` names none: the control
#: connection's address is used): ``same``: the announced one, which must be the control
#: connection's address, else DOWN/``policy_denied`` (an FTP bounce); ``control``: the control
#: connection's address with the announced port (for servers behind NAT that announce a private
#: address); ``announced``: the announced one, wherever the egress policy allows.
PasvAddress: TypeAlias = Literal["same", "control", "announced"]
_OPERATIONS: Final = get_args(Operation)
_PASV_MODES: Final = get_args(PasvAddress)


class _SessionContext(ssl.SSLContext):
    """An SSL context that resumes one TLS session: the control connection's, on the data
    connection (servers such as vsftpd refuse a data connection that does not resume it, so
    that nobody but the logged-in client can take the transfer)."""

    _inner: ssl.SSLContext
    _session: ssl.SSLSession

    def __new__(cls, inner: ssl.SSLContext, session: ssl.SSLSession) -> _SessionContext:
        self = super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)
        self._inner = inner
        self._session = session
        return self

    def __init__(self, inner: ssl.SSLContext, session: ssl.SSLSession) -> None:
        pass  # everything was set in __new__; SSLContext.__init__ takes a protocol

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return self._inner.wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=self._session,
        )


class _Control:
    """The control connection: bounded reads of whole replies, and the commands sent."""

    def __init__(self, attempt: Attempt, conn: Connection, password: Secret | None) -> None:
        self.attempt = attempt
        self.conn = conn
        self.password = password

    def shown(self, reply: Reply | str) -> str:
        return shown(str(reply), self.password)

    async def reply(self, what: str) -> Reply:
        assembler = ReplyAssembler(max_lines=REPLY_LINES)
        while True:
            line = await self.attempt.read_line(self.conn, max_bytes=LINE_LIMIT, what=what)
            outcome = assembler.feed(line)
            if outcome is None:
                continue
            if isinstance(outcome, Malformed):
                raise ProbeFailure(ErrorKind.PROTOCOL, f"{what}: {self.shown(outcome.reason)}")
            return outcome

    async def command(self, command: bytes, what: str) -> Reply:
        """Send ``command``; its final reply (a ``1xx`` preliminary reply is returned as it is:
        the caller knows which commands have one)."""
        await self.attempt.write(self.conn, command + b"\r\n")
        return await self.reply(what)


@attrs.frozen
class FtpProbe(ImplicitTlsPort, ProbeBase):
    """Check an FTP server: the greeting (``220``), ``AUTH TLS`` per ``starttls``, a login
    when a ``username`` is set, optionally a ``path`` (``list`` it over a passive data
    connection, or ``stat`` it), ``QUIT``.

    ``tls`` makes the connection TLS from the first byte (implicit FTPS, port 990 by default;
    21 otherwise). ``starttls``: ``required`` is DOWN/``tls`` when the server refuses
    ``AUTH TLS`` (never a silent downgrade), ``optional`` upgrades when it accepts, ``off``
    never asks. ``username`` ``anonymous`` (or ``ftp``) may go without a ``password``. Under
    TLS the data connection is protected too (``PROT P``) and resumes the control connection's
    TLS session. The data address the server announces goes through the egress policy, and
    ``pasv_address`` says which one is used. ``assertions`` see the greeting as the body.
    """

    PLAIN_PORT: ClassVar[int] = FTP_PORT
    TLS_PORT: ClassVar[int] = FTPS_PORT

    kind: ClassVar[str] = "ftp"

    host: str = attrs.field(converter=mail_host)
    port: int | None = attrs.field(default=None, validator=mail_port)
    tls: TlsOptions | None = None
    starttls: StartTls = "optional"
    starttls_options: TlsOptions | None = None
    username: str | None = None
    password: Secret | None = None
    path: str | None = None
    operation: Operation = "list"
    min_entries: int | None = None
    max_entries: int = 100_000
    max_listing_bytes: int = 64 * 1024 * 1024
    pasv_address: PasvAddress = "same"
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    ip_family: Family | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        anonymous = self.username in ANONYMOUS and self.password is None
        check_common(
            host=self.host,
            tls=self.tls,
            starttls=self.starttls,
            starttls_options=self.starttls_options,
            username=None if anonymous else self.username,
            password=self.password,
            ip_family=self.ip_family,
            timeouts=self.timeouts,
            forbidden="\0\r\n",
        )
        if self.path is not None:
            if not isinstance(self.path, str) or not self.path:
                raise DefinitionError("path", f"expected a path, got {self.path!r}")
            if any(c in self.path for c in "\0\r\n"):
                raise DefinitionError("path", "contains CR, LF or NUL, which FTP cannot send")
            if self.username is None:
                raise DefinitionError(
                    "path", "a path needs a login: set username (anonymous for an anonymous one)"
                )
        if self.operation not in _OPERATIONS:
            raise DefinitionError(
                "operation", f"expected one of {list(_OPERATIONS)}, got {self.operation!r}"
            )
        if self.pasv_address not in _PASV_MODES:
            raise DefinitionError(
                "pasv_address", f"expected one of {list(_PASV_MODES)}, got {self.pasv_address!r}"
            )
        for name in ("max_entries", "max_listing_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DefinitionError(name, f"expected a positive integer, got {value!r}")
        if self.min_entries is not None:
            value = self.min_entries
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DefinitionError(
                    "min_entries", f"expected a non-negative integer, got {value!r}"
                )
            if self.path is None or self.operation != "list":
                raise DefinitionError("min_entries", "needs a path with operation 'list'")
            if value > self.max_entries:
                raise DefinitionError("min_entries", "is above max_entries")
        self._fill_default_port()

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.connect(self.host, self._port, tls=self.tls, family=self.ip_family)
        control = _Control(attempt, conn, self.password)
        with attempt.phase("banner"):
            greeting = await self._greeting(control)
        attempt.metric("banner_code", greeting.code)
        attempt.observe(body=str(greeting).encode())
        if self.tls is None and self.starttls != "off":
            await self._auth_tls(attempt, control)
        attempt.metric("tls", 1 if conn.tls is not None else 0)
        if self.username is not None:
            with attempt.phase("auth"):
                await self._login(control, self.username)
            if self.path is not None and self.operation == "list":
                await self._list(attempt, control, self.path)
            elif self.path is not None:
                with attempt.phase("stat"):
                    await self._stat(attempt, control, self.path)
        with attempt.phase("quit"):
            reply = await control.command(b"QUIT", "QUIT reply")
            if not 200 <= reply.code < 300:
                raise ProbeFailure(ErrorKind.PROTOCOL, f"QUIT refused: {control.shown(reply)}")

    async def _greeting(self, control: _Control) -> Reply:
        reply = await control.reply("greeting")
        for _ in range(_PRELIMINARY):
            if reply.code != 120:  # "service ready in nnn minutes", then the real greeting
                break
            reply = await control.reply("greeting")
        if reply.code == 220:
            return reply
        if reply.code >= 400:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the server refused the session: {control.shown(reply)}"
            )
        raise ProbeFailure(ErrorKind.PROTOCOL, f"not an FTP greeting: {control.shown(reply)}")

    async def _auth_tls(self, attempt: Attempt, control: _Control) -> None:
        with attempt.phase("starttls"):
            reply = await control.command(b"AUTH TLS", "AUTH TLS reply")
            if reply.code != 234:
                if reply.code < 400:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL, f"unexpected reply to AUTH TLS: {control.shown(reply)}"
                    )
                if self.starttls == "required":
                    raise ProbeFailure(
                        ErrorKind.TLS,
                        f"AUTH TLS is required, but the server answered {control.shown(reply)}",
                    )
                attempt.outcome(
                    "starttls", True, "AUTH TLS (optional)", f"refused: {control.shown(reply)}"
                )
                return
            if control.conn.buffered:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"{control.conn.buffered} plain-text bytes after the AUTH TLS reply, "
                    "before TLS",
                )
        await attempt.start_tls(control.conn, self.host, self.starttls_options)
        attempt.outcome("starttls", True, f"AUTH TLS ({self.starttls})", "upgraded")

    async def _login(self, control: _Control, username: str) -> None:
        reply = await control.command(b"USER " + username.encode(), "USER reply")
        if reply.code == 331:
            secret = self.password.reveal().encode() if self.password else _ANONYMOUS_PASSWORD
            reply = await control.command(b"PASS " + secret, "PASS reply")
        if reply.code in (230, 202):
            return
        if reply.code == 332:
            raise ProbeFailure(ErrorKind.AUTH, "the server asks for an account (ACCT)")
        text = control.shown(reply)
        if reply.code >= 400:
            log.debug("ftp %s refused the login: %s", self.target, text)
            raise ProbeFailure(ErrorKind.AUTH, f"login refused: {text}")
        raise ProbeFailure(ErrorKind.PROTOCOL, f"unexpected reply to the login: {text}")

    async def _list(self, attempt: Attempt, control: _Control, path: str) -> None:
        with attempt.phase("cwd"):
            reply = await control.command(b"CWD " + path.encode(), "CWD reply")
            if not 200 <= reply.code < 300:
                if reply.code < 400:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL, f"unexpected reply to CWD: {control.shown(reply)}"
                    )
                attempt.outcome(
                    "path",
                    False,
                    f"{path!r} is a directory",
                    f"CWD refused: {control.shown(reply)}",
                )
                return
        with attempt.phase("passive"):
            secure = control.conn.tls is not None
            if secure:
                await self._protect(control)
            endpoint = await self._passive(control)
            ip = self._data_address(control.conn, endpoint)
        with attempt.phase("data"):
            counter = await self._transfer(attempt, control, ip, endpoint.port, secure)
        attempt.metric("entries", counter.entries)
        attempt.metric("listing_bytes", counter.bytes)
        attempt.outcome("path", True, f"{path!r} is a directory", "listed")
        if self.min_entries is not None:
            attempt.outcome(
                "min_entries",
                counter.entries >= self.min_entries,
                f">= {self.min_entries} entries",
                f"{counter.entries} entries",
            )

    async def _protect(self, control: _Control) -> None:
        """``PBSZ 0`` and ``PROT P``: the data connection is encrypted too (RFC 4217)."""
        reply = await control.command(b"PBSZ 0", "PBSZ reply")
        if reply.code >= 500 and reply.code not in (500, 502):
            raise ProbeFailure(ErrorKind.TLS, f"PBSZ 0 refused: {control.shown(reply)}")
        reply = await control.command(b"PROT P", "PROT reply")
        if not 200 <= reply.code < 300:
            raise ProbeFailure(
                ErrorKind.TLS,
                f"PROT P refused (the listing would cross in plain text): {control.shown(reply)}",
            )

    async def _passive(self, control: _Control) -> Endpoint:
        """``EPSV``, then ``PASV`` when the server does not know it; the announced endpoint."""
        reply = await control.command(b"EPSV", "EPSV reply")
        parsed: Endpoint | Malformed
        if reply.code == 229:
            parsed = parse_epsv(reply.text)
        elif reply.code >= 500 and control.conn.ip.version == 4:
            reply = await control.command(b"PASV", "PASV reply")
            if reply.code != 227:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"passive mode refused: {control.shown(reply)}"
                )
            parsed = parse_pasv(reply.text)
        else:
            raise ProbeFailure(ErrorKind.PROTOCOL, f"EPSV refused: {control.shown(reply)}")
        if isinstance(parsed, Malformed):
            raise ProbeFailure(ErrorKind.PROTOCOL, f"{parsed.reason}: {control.shown(reply)}")
        return parsed

    def _data_address(self, conn: Connection, endpoint: Endpoint) -> str:
        """The address to dial for the data connection (the dial path then checks it against
        the egress policy); a policy denial when it is another host and ``pasv_address`` is
        ``same``."""
        own = str(conn.ip)
        if endpoint.host is None or self.pasv_address == "control":
            return own
        if endpoint.host == "0.0.0.0":  # noqa: S104 - servers on a wildcard address announce it
            # It names no host: a server bound to the wildcard address announces it for its
            # own. Taken as the server's own address, which is where EPSV would go too.
            return own
        announced = parse_host_address(endpoint.host)
        assert announced is not None  # parse_pasv makes dotted quads
        if self.pasv_address == "same" and canonical_address(announced) != canonical_address(
            conn.ip
        ):
            raise PolicyError(
                endpoint.host,
                f"{endpoint.host}:{endpoint.port}",
                f"the server announced a data address other than its own ({own}), as in an "
                "FTP bounce (pasv_address 'control' uses the server's own address instead)",
            )
        return str(announced)

    async def _transfer(
        self, attempt: Attempt, control: _Control, ip: str, port: int, secure: bool
    ) -> ListingCounter:
        """Dial the data connection, send ``LIST``, count what arrives, read the final reply."""
        dialer = attempt.ctx.dialer
        # The data connection is dialled by the dial path (the policy decides the address
        # before a socket exists) on a timeline of its own: its resolve/connect/tls are part
        # of this check's ``data`` phase, not repeats of the control connection's phases.
        private = Timeline(attempt.ctx.clock)
        try:
            data = await dialer.connect(ip, port, private, attempt.timeouts)
        except OSError as exc:
            where = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            raise ProbeFailure(
                ErrorKind.CONNECT, f"the data connection to {where} failed: {exc.strerror or exc}"
            ) from None
        try:
            reply = await control.command(b"LIST", "LIST reply")
            if reply.code >= 300:
                raise ProbeFailure(ErrorKind.PROTOCOL, f"LIST refused: {control.shown(reply)}")
            if secure:
                await self._data_tls(attempt, control.conn, data)
            counter = ListingCounter()
            while chunk := await data.read(_CHUNK, attempt.timeouts.read):
                counter.feed(chunk)
                if counter.bytes > self.max_listing_bytes:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL,
                        f"the listing exceeds {self.max_listing_bytes} bytes (max_listing_bytes)",
                    )
                if counter.entries > self.max_entries:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL,
                        f"the listing has more than {self.max_entries} entries (max_entries)",
                    )
            counter.finish()
            if counter.entries > self.max_entries:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"the listing has more than {self.max_entries} entries (max_entries)",
                )
        finally:
            data.close()
        if reply.code < 200:
            reply = await control.reply("reply after the transfer")
            if not 200 <= reply.code < 300:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"the transfer failed: {control.shown(reply)}"
                )
        return counter

    async def _data_tls(self, attempt: Attempt, control: Connection, data: Connection) -> None:
        """TLS on the data connection, resuming the control connection's session."""
        if data.buffered:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"{data.buffered} plain-text bytes on the data connection before TLS",
            )
        options = self.tls or self.starttls_options or TlsOptions()
        literal = parse_host_address(self.host)
        server_name = options.server_name or (str(literal) if literal else self.host.rstrip("."))
        context = ssl_context(options)
        ssl_object = control.transport.get_extra_info("ssl_object")
        session = getattr(ssl_object, "session", None)
        if session is not None:
            context = _SessionContext(context, session)
        data.upgrading = True
        loop = asyncio.get_running_loop()
        handshake = loop.start_tls(data.transport, data, context, server_hostname=server_name)
        transport = await within(attempt.timeouts.tls, handshake)
        assert transport is not None
        data.transport = transport

    async def _stat(self, attempt: Attempt, control: _Control, path: str) -> None:
        """``CWD path`` (a directory), else ``MLST`` (RFC 3659), else ``SIZE`` and ``MDTM``."""
        encoded = path.encode()
        expected = f"{path!r} exists"
        reply = await control.command(b"CWD " + encoded, "CWD reply")
        if 200 <= reply.code < 300:
            attempt.metric("is_directory", 1)
            attempt.outcome("path", True, expected, "a directory")
            return
        mlst = await control.command(b"MLST " + encoded, "MLST reply")
        if mlst.code == 250:
            facts = parse_mlst(mlst.lines)
            if isinstance(facts, Malformed):
                raise ProbeFailure(ErrorKind.PROTOCOL, f"{facts.reason}: {control.shown(mlst)}")
            kind = facts.get("type", "").lower()
            directory = kind in ("dir", "cdir", "pdir")
            attempt.metric("is_directory", 1 if directory else 0)
            found = ["a directory" if directory else "a file"]
            size = parse_size(facts.get("size", ""))
            if not directory and isinstance(size, int):
                attempt.metric("size_bytes", size)
                found.append(f"{size} bytes")
            when = parse_mdtm(facts.get("modify", ""))
            if isinstance(when, dt.datetime):
                self._modified(attempt, when)
                found.append(f"modified {when.isoformat()}")
            attempt.outcome("path", True, expected, ", ".join(found))
            return
        if 500 <= mlst.code < 550 and mlst.code not in (501,):
            await self._size_and_mdtm(attempt, control, path)
            return
        attempt.outcome("path", False, expected, f"not found: {control.shown(mlst)}")

    async def _size_and_mdtm(self, attempt: Attempt, control: _Control, path: str) -> None:
        """``SIZE`` and ``MDTM``, for servers without ``MLST`` (vsftpd)."""
        encoded = path.encode()
        expected = f"{path!r} exists"
        await control.command(b"TYPE I", "TYPE reply")  # SIZE is defined for binary mode
        found: list[str] = []
        size_reply = await control.command(b"SIZE " + encoded, "SIZE reply")
        if size_reply.code == 213:
            size = parse_size(size_reply.text)
            if isinstance(size, Malformed):
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"{size.reason}: {control.shown(size_reply)}"
                )
            attempt.metric("size_bytes", size)
            found.append(f"{size} bytes")
        mdtm_reply = await control.command(b"MDTM " + encoded, "MDTM reply")
        if mdtm_reply.code == 213:
            when = parse_mdtm(mdtm_reply.text)
            if isinstance(when, Malformed):
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, f"{when.reason}: {control.shown(mdtm_reply)}"
                )
            self._modified(attempt, when)
            found.append(f"modified {when.isoformat()}")
        if found:
            attempt.metric("is_directory", 0)
            attempt.outcome("path", True, expected, "a file, " + ", ".join(found))
            return
        unsupported = (500, 502, 504)
        if size_reply.code in unsupported and mdtm_reply.code in unsupported:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                "the server implements none of MLST, SIZE and MDTM, so it cannot stat a file: "
                f"{control.shown(size_reply)}",
            )
        attempt.outcome("path", False, expected, f"not found: {control.shown(size_reply)}")

    @staticmethod
    def _modified(attempt: Attempt, when: dt.datetime) -> None:
        now = attempt.ctx.clock.now()
        attempt.metric("mtime", when.timestamp())
        attempt.metric("age_seconds", round((now - when).total_seconds(), 3))


# -- the command-line form -------------------------------------------------------------------------


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    if values.get("anonymous"):
        definition.setdefault("username", "anonymous")
    if values.get("stat"):
        definition["operation"] = "stat"
    problems = common_to_definition(values, definition, "ftp")
    if problems:
        raise DefinitionErrors(problems)


def _describe(result: Result) -> str | None:
    names = result.phase_names()
    if "banner" not in names:
        return None
    if "starttls" in names and result.tls is not None:
        how = "AUTH TLS"
    elif result.tls is not None:
        how = "implicit TLS"
    else:
        how = "plain text"
    parts = [f"FTP over {how}"]
    entries = result.metrics.get("entries")
    if entries is not None:
        parts.append(f"{int(entries)} entries")
    size = result.metrics.get("size_bytes")
    if size is not None:
        parts.append(f"{int(size)} bytes")
    return ", ".join(parts)


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected a non-negative integer, got {text!r}")
    return value


_COMMON = tuple(o for o in common_options("ftp", FTPS_PORT) if o.flags != ("--starttls",))

KIND = ProbeKind(
    name="ftp",
    cls=FtpProbe,
    summary="check an FTP server: greeting, AUTH TLS or FTPS, login, LIST or stat of a path, QUIT",
    target=MailTarget(default_port=FTP_PORT, tls_port=FTPS_PORT),
    options=(
        Option(
            ("--starttls",),
            field="starttls",
            choices=get_args(StartTls),
            help="AUTH TLS (explicit FTPS): required (DOWN when refused), optional (the "
            "default), off",
        ),
        *_COMMON,
        Option(
            ("--anonymous",),
            dest="anonymous",
            action="flag",
            sets=("username",),
            help="log in as anonymous (no --password-env needed)",
        ),
        Option(
            ("--path",),
            field="path",
            metavar="PATH",
            help="after the login, list (or --stat) PATH; needs --user or --anonymous",
        ),
        Option(
            ("--stat",),
            dest="stat",
            action="flag",
            sets=("operation",),
            help="stat PATH (CWD, else MLST, else SIZE and MDTM) instead of listing it",
        ),
        Option(
            ("--min-entries",),
            field="min_entries",
            metavar="N",
            parse=_positive,
            help="DOWN when the listing of PATH has fewer than N entries",
        ),
        Option(
            ("--max-entries",),
            field="max_entries",
            metavar="N",
            parse=_positive,
            help="DOWN when the listing has more than N entries (default 100000)",
        ),
        Option(
            ("--pasv-address",),
            field="pasv_address",
            choices=_PASV_MODES,
            help="the PASV data address: same (another host is DOWN, the default), control "
            "(the server's own address), announced (wherever the egress policy allows)",
        ),
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric("banner_code", "probekit_ftp_banner_code", "The reply code of the greeting."),
        Metric(
            "tls",
            "probekit_ftp_tls",
            "1 when the control connection was encrypted (FTPS or AUTH TLS), else 0.",
        ),
        Metric("entries", "probekit_ftp_entries", "Entries in the listing of the path."),
        Metric("listing_bytes", "probekit_ftp_listing_bytes", "Bytes of the listing of the path."),
        Metric("size_bytes", "probekit_ftp_size_bytes", "Size of the file at the path (SIZE)."),
        Metric(
            "age_seconds",
            "probekit_ftp_age_seconds",
            "Seconds since the file at the path was modified (MDTM).",
        ),
        Metric("mtime", "probekit_ftp_mtime_seconds", "Modification time of the file (MDTM)."),
        Metric(
            "is_directory", "probekit_ftp_is_directory", "1 when the path is a directory, else 0."
        ),
    ),
    docs="probes/ftp.md",
    tls_field="tls",
    describe=_describe,
)
