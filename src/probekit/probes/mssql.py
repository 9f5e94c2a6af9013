"""MssqlProbe: the TDS PRELOGIN exchange with a Microsoft SQL Server (or any TDS server).

The probe sends a PRELOGIN message and reads the server's answer
(:mod:`probekit.probes._tds`): the server's version and its encryption setting are the check's
facts. With ``tls`` it then runs the TLS handshake a login would (inside PRELOGIN packets),
verifying and recording the server's certificate; with ``username`` and ``password`` it logs
in (LOGIN7 inside that TLS session). A server that answers PRELOGIN correctly has its TDS
listener up and is not a hung process or another service on the port.

Phases: ``resolve``, ``connect``, ``prelogin``, ``tls`` (with ``tls`` or a login), ``auth``
(with a login). Metrics: ``server_version``
(``major*10**7 + minor*10**5 + build``: 16.0.1000 is 160001000) and ``encryption`` (the
ENCRYPTION value: 0 off, 1 on, 2 not supported, 3 required).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Final, Literal, get_args

import attrs

from .._assertions import Assertion, assertion_tuple
from .._context import ProbeContext
from .._dial import Connection
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._policy import parse_host_address
from .._resolver import Family
from .._result import ErrorKind, Result
from .._secret import Secret
from .._timeouts import Timeouts
from .._tls import TlsOptions, ssl_context, tls_info, warm_up
from . import _tds as tds
from ._base import Attempt, ProbeBase
from ._fields import check_family, check_host, check_secret, host_port
from ._fields import host as _host
from ._fields import port as _port
from ._kind import HostPort, Metric, Option, ProbeKind
from ._mailcommon import CERT_OPTIONS, cert_assertion
from ._options import (
    BODY_OPTIONS,
    FAMILY_OPTIONS,
    TLS_OPTIONS,
    body_assertions,
    family_definition,
    secret_from_env,
    tls_definition,
)

__all__ = ["KIND", "EncryptionMode", "MssqlProbe"]

log = logging.getLogger("probekit.probes.mssql")

EncryptionMode = Literal["required", "optional", "off"]
_MODES: Final[tuple[str, ...]] = get_args(EncryptionMode)
_WILL_ENCRYPT: Final = (tds.ENCRYPT_ON, tds.ENCRYPT_REQ)
_MASK: Final = "<secret>"
#: The most messages a TLS handshake may take from the server (TLS 1.2 and 1.3 need one or two).
_HANDSHAKE_FLIGHTS: Final = 6
#: The largest handshake message read (a server's certificate chain is a few KiB).
_HANDSHAKE_LIMIT: Final = 256 * 1024


@attrs.frozen
class MssqlProbe(ProbeBase):
    """Check a SQL Server's TDS listener with the PRELOGIN exchange.

    The server's version and encryption setting are recorded as passed outcomes
    (``server_version``, ``encryption``) and metrics. ``encryption`` says what the probe asks
    for and accepts: ``required`` announces that it wants an encrypted session and is
    DOWN/``tls`` unless the server answers that it will encrypt (``ON`` or ``REQ``);
    ``optional`` (the default) announces the same and accepts any answer; ``off`` announces that
    the probe cannot encrypt and is DOWN/``tls`` when the server requires encryption. Anything
    but a well-formed PRELOGIN answer is DOWN/``protocol``.

    With ``tls`` (TLS options, ``{}`` for the defaults) the probe then runs the TLS handshake
    inside PRELOGIN packets, as a client does before its login: the certificate is verified per
    the options (DOWN/``tls`` when it fails) and the chain and ``cert_days_left`` go into the
    result, so a ``cert_expiry`` assertion applies.

    With ``username`` and ``password`` (SQL Server authentication; implies the handshake, with
    ``tls`` or the default options) the probe sends LOGIN7 inside TLS and reads the answer: a
    LOGINACK is a passed ``auth`` outcome naming the server's program and version, an ERROR is
    DOWN/``auth`` with its number (18456: login failed) and message. ``database`` is the
    database the login opens. ``assertions`` see the version text (``16.0.1000.6``) as the body.
    """

    kind: ClassVar[str] = "mssql"

    host: str = attrs.field(converter=_host)
    port: int = attrs.field(default=1433, validator=_port)
    encryption: EncryptionMode = "optional"
    tls: TlsOptions | None = None
    username: str | None = None
    password: Secret | None = None
    database: str | None = None
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    ip_family: Family | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        check_host(self.host)
        check_family(self.ip_family)
        if self.encryption not in _MODES:
            raise DefinitionError(
                "encryption", f"expected one of {list(_MODES)}, got {self.encryption!r}"
            )
        options: object = self.tls
        if options is not None:
            if not isinstance(options, TlsOptions):
                raise DefinitionError("tls", f"expected TlsOptions, got {options!r}")
            if self.encryption == "off":
                raise DefinitionError("tls", "a TLS handshake with encryption off")
        self._check_login()
        if not isinstance(self.timeouts, Timeouts):
            raise DefinitionError("timeouts", f"expected Timeouts, got {self.timeouts!r}")

    def _check_login(self) -> None:
        password = check_secret("password", self.password, empty="expected 1 to 128 characters")
        if password is not None and len(password.reveal()) > 128:
            raise DefinitionError("password", "expected 1 to 128 characters")
        for field in ("username", "database"):
            value: object = getattr(self, field)
            if value is not None and (
                not isinstance(value, str) or not value or len(value) > 128 or "\0" in value
            ):
                raise DefinitionError(
                    field, f"expected a name of 1 to 128 characters, got {value!r}"
                )
        if (self.username is None) != (password is None):
            missing = "password" if password is None else "username"
            raise DefinitionError(missing, "a login needs both username and password")
        if self.database is not None and self.username is None:
            raise DefinitionError("database", "selecting a database needs a login (username)")
        if self.username is not None and self.encryption == "off":
            raise DefinitionError(
                "encryption", "a login is sent inside TLS; it cannot be off with a username"
            )

    def prepare(self, ctx: ProbeContext) -> None:
        """Before the clock starts: the SSL context and the certificate parser."""
        if self.tls is not None or self.username is not None:
            warm_up(self.tls or TlsOptions())

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.connect(self.host, self.port, family=self.ip_family)
        asked = tds.ENCRYPT_NOT_SUP if self.encryption == "off" else tds.ENCRYPT_ON
        with attempt.phase("prelogin"):
            await attempt.write(conn, tds.prelogin_request(asked))
            try:
                answer = tds.parse_prelogin(await tds.read_message(lambda n: attempt.read(conn, n)))
            except tds.WireError as exc:
                raise ProbeFailure(ErrorKind.PROTOCOL, exc.message) from None
        attempt.outcome("server_version", True, "a PRELOGIN answer", answer.version_text)
        attempt.metric("server_version", answer.version_number)
        attempt.metric("encryption", answer.encryption)
        attempt.observe(body=answer.version_text.encode())
        text = answer.encryption_text
        if self.encryption == "required":
            passed = answer.encryption in _WILL_ENCRYPT
            attempt.outcome("encryption", passed, "ON or REQ (required)", text)
            if not passed:
                raise ProbeFailure(
                    ErrorKind.TLS, f"the server will not encrypt the session: ENCRYPTION {text}"
                )
        elif self.encryption == "off":
            passed = answer.encryption != tds.ENCRYPT_REQ
            attempt.outcome("encryption", passed, "not REQ (the probe cannot encrypt)", text)
            if not passed:
                raise ProbeFailure(
                    ErrorKind.TLS, "the server requires encryption and encryption is off"
                )
        else:
            attempt.outcome("encryption", True, "any (optional)", text)
        if self.tls is None and self.username is None:
            return
        if answer.encryption == tds.ENCRYPT_NOT_SUP:
            with attempt.phase("tls"):
                raise ProbeFailure(
                    ErrorKind.TLS, "the server cannot encrypt (NOT_SUP): no TLS handshake"
                )
        options = self.tls or TlsOptions()
        if self.timeouts.tls is None:
            session = await self._handshake(attempt, conn, options)
        else:
            session = await attempt.wait(self._handshake(attempt, conn, options), self.timeouts.tls)
        if self.username is not None and self.password is not None:
            with attempt.phase("auth"):
                await self._login(
                    attempt, conn, session, self.username, self.password, answer.encryption
                )

    async def _login(
        self,
        attempt: Attempt,
        conn: Connection,
        session: _TlsSession,
        username: str,
        password: Secret,
        encryption: int,
    ) -> None:
        """LOGIN7 inside TLS; the answer in TLS too, or in plain text when the server said OFF
        (TDS then encrypts the login packet only)."""
        packet = tds.login7(
            username, password.reveal(), self.database, "probekit", "probekit", self.host
        )
        session.tls.write(packet)
        await attempt.write(conn, session.outgoing.read())
        if encryption == tds.ENCRYPT_OFF:
            read: tds.Read = lambda n: attempt.read(conn, n)  # noqa: E731 - one line
        else:
            read = session.reader(attempt, conn)
        try:
            payload = await tds.read_message(read, limit=tds.LOGIN_REPLY_LIMIT, what="login answer")
            reply = tds.parse_login_reply(payload)
        except tds.WireError as exc:
            raise ProbeFailure(ErrorKind.PROTOCOL, exc.message) from None
        if not reply.accepted:
            text = reply.error_message.replace(password.reveal(), _MASK)
            log.debug("mssql %s refused the login: %s %s", self.target, reply.error_number, text)
            raise ProbeFailure(ErrorKind.AUTH, f"login refused: error {reply.error_number}: {text}")
        attempt.outcome(
            "auth", True, "login accepted", f"{username} ({reply.program} {reply.version})"
        )

    async def _handshake(
        self, attempt: Attempt, conn: Connection, options: TlsOptions
    ) -> _TlsSession:
        """The TLS handshake inside PRELOGIN packets, through an in-memory TLS object; the
        certificate chain goes into the result as for any TLS connection."""
        literal = parse_host_address(self.host)
        server_name = options.server_name or (str(literal) if literal else self.host.rstrip("."))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ssl_context(options).wrap_bio(incoming, outgoing, server_hostname=server_name)
        with attempt.phase("tls"):
            for _ in range(_HANDSHAKE_FLIGHTS):
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                else:
                    flight = outgoing.read()
                    if flight:
                        await attempt.write(conn, tds.prelogin_packets(flight))
                    attempt.record_tls(tls_info(tls, server_name, verified=options.verify))
                    return _TlsSession(tls, incoming, outgoing)
                flight = outgoing.read()
                if flight:
                    await attempt.write(conn, tds.prelogin_packets(flight))
                try:
                    records = await tds.read_message(
                        lambda n: attempt.read(conn, n),
                        limit=_HANDSHAKE_LIMIT,
                        types=(tds.PACKET_PRELOGIN, tds.PACKET_REPLY),
                        what="TLS handshake message",
                    )
                except tds.WireError as exc:
                    raise ProbeFailure(ErrorKind.PROTOCOL, exc.message) from None
                incoming.write(records)
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the TLS handshake did not end in {_HANDSHAKE_FLIGHTS} flights"
            )


class _TlsSession:
    """The TLS object of a finished handshake and its two in-memory buffers: after the
    handshake, TLS records go on the wire as they are (no longer inside PRELOGIN packets)."""

    __slots__ = ("incoming", "outgoing", "tls")

    def __init__(
        self, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self.tls = tls
        self.incoming = incoming
        self.outgoing = outgoing

    def reader(self, attempt: Attempt, conn: Connection) -> tds.Read:
        """``read(n)`` of decrypted bytes (b"" at the end of the stream)."""

        async def read(size: int) -> bytes:
            while True:
                try:
                    return self.tls.read(size)
                except ssl.SSLWantReadError:
                    records = await attempt.read(conn, 64 * 1024)
                    if not records:
                        return b""
                    self.incoming.write(records)

        return read


# -- the command-line form -------------------------------------------------------------------------


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems: list[DefinitionError] = []
    try:
        secret_from_env(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    try:
        tls = tls_definition(values)
    except DefinitionError as exc:
        problems.append(exc)
        tls = None
    if values.get("tls"):
        definition["tls"] = tls or {}
    elif tls is not None:
        problems.append(DefinitionError("--insecure/--ca-file", "need --tls"))
    try:
        cert_assertion(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    if (problem := family_definition(values, definition)) is not None:
        problems.append(problem)
    try:
        body_assertions(values, definition)
    except DefinitionErrors as exc:
        problems.extend(exc.errors)
    if problems:
        raise DefinitionErrors(problems)


def _describe(result: Result) -> str | None:
    outcomes = {a.name: a for a in result.assertions}
    version = outcomes.get("server_version")
    if version is None:
        return None
    encryption = outcomes.get("encryption")
    parts = [f"TDS {version.observed}"]
    if encryption is not None:
        parts.append(f"encryption {encryption.observed.split(' ')[0]}")
    if result.tls is not None:
        parts.append("TLS")
    auth = outcomes.get("auth")
    if auth is not None and auth.passed:
        parts.append(f"login {auth.observed}")
    return ", ".join(parts)


KIND = ProbeKind(
    name="mssql",
    cls=MssqlProbe,
    summary="check a SQL Server's TDS listener: PRELOGIN, server version and encryption",
    target=HostPort(default_port=1433),
    options=(
        Option(
            ("--encryption",),
            field="encryption",
            choices=_MODES,
            metavar="{required,optional,off}",
            help="required: DOWN unless the server will encrypt; optional (default); "
            "off: DOWN when the server requires encryption",
        ),
        Option(
            ("--tls",),
            dest="tls",
            action="flag",
            sets=("tls",),
            help="after PRELOGIN, the TLS handshake (inside PRELOGIN packets): the certificate "
            "is verified and recorded",
        ),
        *TLS_OPTIONS,
        *CERT_OPTIONS,
        Option(
            ("-u", "--user"),
            field="username",
            metavar="NAME",
            help="log in (SQL Server authentication, inside TLS) as NAME; needs --password-env",
        ),
        Option(
            ("--password-env",),
            dest="password_env",
            metavar="VAR",
            sets=("password",),
            help="the password for --user, from environment variable VAR",
        ),
        Option(
            ("-d", "--database"),
            field="database",
            metavar="DB",
            help="the database to open at login (needs --user)",
        ),
        *FAMILY_OPTIONS,
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric(
            "server_version",
            "probekit_mssql_server_version",
            "Server version from PRELOGIN: major*10**7 + minor*10**5 + build (16.0.1000 is "
            "160001000).",
        ),
        Metric(
            "encryption",
            "probekit_mssql_encryption",
            "The server's PRELOGIN ENCRYPTION answer: 0 off, 1 on, 2 not supported, 3 required.",
        ),
    ),
    docs="probes/mssql.md",
    tls_field="tls",
    describe=_describe,
)
