"""PostgresProbe: negotiate TLS with a PostgreSQL server, start a session, log in (SCRAM-SHA-256,
md5 or cleartext), optionally run one query, each step a phase of its own.

It speaks the frontend/backend protocol itself (:mod:`probekit.probes._pgwire`) over the shared
dial path rather than through asyncpg or psycopg: both drivers open and own their connection
(asyncpg dials the host and port and negotiates TLS itself, psycopg goes through libpq), so
the SSLRequest, the handshake and the login could neither run on the connection the dial path
pinned nor be timed apart; and the result would lose the dial path's TLS details (the chain,
``cert_days_left``, the refusal of bytes injected before the handshake). A check needs a small
part of the protocol, bounded and tested byte by byte.

Phases: ``resolve``, ``connect``, ``starttls`` (the SSLRequest and its one-byte answer, unless
``starttls`` is ``off``), ``tls`` (the handshake), ``startup`` (the StartupMessage and the
server's first answer), ``auth`` (the login: the password exchange, then the backend's start up
to ReadyForQuery), ``query`` (with ``query``). Metrics: ``server_version`` (15.5 is 150005),
``tls``, ``login`` (each 0 or 1) and ``rows`` (with ``query``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Final, Literal

import attrs

from .._assertions import Assertion, BodyContains, BodyMatches, assertion_tuple
from .._context import ProbeContext
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._resolver import Family
from .._result import ErrorKind, Result, Status
from .._secret import Secret
from .._timeouts import Timeouts
from .._tls import TlsOptions, warm_up
from ._base import Attempt, ProbeBase
from ._fields import check_family, check_host, check_secret, host_port
from ._fields import host as _host
from ._fields import port as _port
from ._kind import HostPort, Metric, Option, ProbeKind
from ._options import (
    BODY_OPTIONS,
    FAMILY_OPTIONS,
    ROW_OPTIONS,
    TLS_OPTIONS,
    body_assertions,
    family_definition,
    secret_from_env,
    starttls_definition,
)
from ._pgwire import (
    FIRST_CELL_LIMIT,
    SSL_REQUEST,
    TERMINATE,
    AuthRequest,
    ScramClient,
    ServerError,
    Wire,
    excerpt,
    md5_password,
    parse_auth,
    parse_error,
    parse_parameter,
    parse_row_head,
    password_message,
    query_message,
    sasl_initial,
    sasl_response,
    startup_message,
)

__all__ = ["DEFAULT_USER", "KIND", "PostgresProbe", "StartTlsMode"]

log = logging.getLogger("probekit.probes.postgres")

#: The user named in the StartupMessage when ``username`` is not set.
DEFAULT_USER: Final = "probekit"
#: The ``application_name`` the probe gives itself, so a DBA sees it in ``pg_stat_activity``.
APPLICATION_NAME: Final = "probekit"

StartTlsMode = Literal["required", "optional", "off"]

_MODES: Final = ("required", "optional", "off")
_VERSION = re.compile(r"([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?")
#: Messages a server may send at any time, skipped unread: NoticeResponse, NotificationResponse,
#: NegotiateProtocolVersion (the probe asks for no option it could refuse).
_ASYNC: Final = frozenset({b"N", b"A", b"v"})
_COPY: Final = frozenset({b"G", b"H", b"W", b"d", b"c"})
#: Authentication codes that continue an exchange (GSSAPI continue, SASL continue and final).
_CONTINUATIONS: Final = frozenset({8, 11, 12})


def _text(field: str, value: object, *, empty_ok: bool = False) -> None:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise DefinitionError(field, f"expected text, got {value!r}")
    if "\0" in value:
        raise DefinitionError(field, "contains NUL, which the protocol cannot send")


def _count(field: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DefinitionError(field, f"expected a number of rows (0 or more), got {value!r}")


def version_number(text: str) -> int | None:
    """``server_version`` as one number like ``server_version_num``: 15.5 is 150005, 9.6.24 is
    90624; None when it does not start with a version."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    major, minor, patch = (int(part) if part else 0 for part in match.groups())
    if major >= 10:
        return major * 10000 + minor
    return major * 10000 + minor * 100 + patch


def nagios_range(text: str) -> tuple[float, float, bool]:
    """A monitoring-plugins threshold range (``10``, ``10:``, ``~:10``, ``10:20``, ``@10:20``)
    as ``(low, high, inside)``: the value alerts when it is outside ``low..high`` (inclusive),
    or inside it with ``@``. Raises ValueError for anything else."""
    raw = text.strip()
    inside = raw.startswith("@")
    if inside:
        raw = raw[1:]
    try:
        if ":" in raw:
            start, end = raw.split(":", 1)
            low = float("-inf") if start == "~" else float(start) if start else 0.0
            high = float(end) if end else float("inf")
        else:
            low, high = 0.0, float(raw)
    except ValueError:
        low = high = math.nan
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"not a threshold range: {text!r}")
    return low, high, inside


def _alerts(value: float, threshold: tuple[float, float, bool]) -> bool:
    low, high, inside = threshold
    within = low <= value <= high
    return within if inside else not within


@attrs.frozen
class PostgresProbe(ProbeBase):
    """Check a PostgreSQL server: TLS by ``starttls``, a session start, an optional login and an
    optional query.

    ``starttls`` ``required`` sends an SSLRequest and is DOWN/``tls`` when the server answers
    ``N``; ``optional`` (the default, like libpq's ``prefer``) upgrades when the server accepts
    and goes on in plain text when it does not (the ``starttls`` outcome says which); ``off``
    sends no SSLRequest. The certificate is verified unless ``starttls_options`` says otherwise.

    Without a ``password`` the check is UP when the server answers the StartupMessage with an
    authentication request (it is up and speaks the protocol; the method is the
    ``auth_method`` outcome) or lets the user in without one (trust): then the session is
    started to ReadyForQuery and the server's version read. With ``username`` and ``password``
    it logs in with whatever the server asks for: SCRAM-SHA-256 (the server's signature is
    checked too), md5, or cleartext (sent only over TLS unless ``plaintext_auth``). A refused
    login (SQLSTATE class 28: ``28P01``, ``28000``) is DOWN/``auth``; a database that does not
    exist (``3D000``) is DOWN/``assertion`` through the ``database`` outcome; a server that
    does not take sessions now (``57P03`` starting up or shutting down, class ``53``: too many
    connections) is DOWN/``connect``.

    With ``query`` (the simple query protocol, after the login) the rows are counted as they
    stream by and only the first cell of the first row is kept: ``expect`` compares it with
    the text given, ``min_rows``/``max_rows`` bound the row count, and ``query_warning`` /
    ``query_critical`` (check_pgsql's ``-W``/``-C`` ranges) judge it as a number: DEGRADED or
    DOWN when it alerts. A query the server refuses is DOWN/``assertion`` (the ``query``
    outcome, with its SQLSTATE). ``assertions`` see the first cell as the body.
    """

    kind: ClassVar[str] = "postgres"

    host: str = attrs.field(converter=_host)
    port: int = attrs.field(default=5432, validator=_port)
    starttls: StartTlsMode = "optional"
    starttls_options: TlsOptions | None = None
    username: str | None = None
    password: Secret | None = None
    database: str | None = None
    plaintext_auth: bool = False
    query: str | None = None
    expect: str | None = None
    min_rows: int | None = None
    max_rows: int | None = None
    query_warning: str | None = None
    query_critical: str | None = None
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    ip_family: Family | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        check_host(self.host)
        check_family(self.ip_family)
        self._check_tls()
        self._check_login()
        self._check_query()
        if not isinstance(self.timeouts, Timeouts):
            raise DefinitionError("timeouts", f"expected Timeouts, got {self.timeouts!r}")

    def _check_tls(self) -> None:
        if self.starttls not in _MODES:
            raise DefinitionError(
                "starttls", f"expected one of {list(_MODES)}, got {self.starttls!r}"
            )
        options: object = self.starttls_options
        if options is not None:
            if not isinstance(options, TlsOptions):
                raise DefinitionError("starttls_options", f"expected TlsOptions, got {options!r}")
            if self.starttls == "off":
                raise DefinitionError("starttls_options", "TLS options, but starttls is off")
        if not isinstance(self.plaintext_auth, bool):
            raise DefinitionError(
                "plaintext_auth", f"expected true or false, got {self.plaintext_auth!r}"
            )

    def _check_login(self) -> None:
        password = check_secret("password", self.password)
        if password is not None:
            if "\0" in password.reveal():
                raise DefinitionError("password", "contains NUL, which the protocol cannot send")
            if self.username is None:
                raise DefinitionError("password", "a password needs a username")
        if self.username is not None:
            _text("username", self.username)
        if self.database is not None:
            _text("database", self.database)

    def _check_query(self) -> None:
        if self.query is not None:
            _text("query", self.query)
            if not self.query.strip():
                raise DefinitionError("query", "an empty query")
        if self.expect is not None:
            _text("expect", self.expect, empty_ok=True)
            if len(self.expect.encode()) > FIRST_CELL_LIMIT:
                raise DefinitionError("expect", f"longer than {FIRST_CELL_LIMIT} bytes")
        _count("min_rows", self.min_rows)
        _count("max_rows", self.max_rows)
        if (
            self.min_rows is not None
            and self.max_rows is not None
            and self.min_rows > self.max_rows
        ):
            raise DefinitionError("min_rows", f"more than max_rows ({self.max_rows})")
        for name in ("query_warning", "query_critical"):
            value: object = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise DefinitionError(
                    name, f"expected a threshold range like '10:20', got {value!r}"
                )
            try:
                nagios_range(value)
            except ValueError:
                raise DefinitionError(
                    name, f"not a threshold range (10, 10:, ~:10, 10:20, @10:20): {value!r}"
                ) from None
        if self.query is None:
            for name in ("expect", "min_rows", "max_rows", "query_warning", "query_critical"):
                if getattr(self, name) is not None:
                    raise DefinitionError(name, "needs a query")
            for i, assertion in enumerate(self.assertions):
                if isinstance(assertion, BodyContains | BodyMatches):
                    raise DefinitionError(
                        f"assertions[{i}]", "reads the query's first cell: set query"
                    )

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    def prepare(self, ctx: ProbeContext) -> None:
        """Before the clock starts: build the SSL context of the upgrade (once per process and
        options) when TLS is certain (``required``, or options given; with ``optional`` and no
        options the server may well say no, and the first upgrade builds it), and open the
        resolver's channel (a no-op once open)."""
        if self.starttls == "required" or self.starttls_options is not None:
            warm_up(self.starttls_options if self.starttls_options is not None else TlsOptions())
        warm = getattr(ctx.dialer.resolver, "prepare", None)
        if warm is not None:
            warm()

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.connect(self.host, self.port, family=self.ip_family)
        wire = Wire(attempt, conn, self.password)
        encrypted = False
        if self.starttls != "off":
            encrypted = await self._starttls(attempt, wire)
        attempt.metric("tls", int(encrypted))
        attempt.metric("login", 0)
        user = self.username or DEFAULT_USER
        parameters = {"user": user}
        if self.database is not None:
            parameters["database"] = self.database
        parameters["application_name"] = APPLICATION_NAME
        parameters["client_encoding"] = "UTF8"

        with attempt.phase("startup"):
            await wire.send(startup_message(parameters))
            first = await self._auth_message(wire, "answer to the startup message")
            if isinstance(first, ServerError):
                self._refused(attempt, first)
                return
            if first.code in _CONTINUATIONS:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"the server answered the startup message with {first.method}, which only "
                    "follows an exchange",
                )
        attempt.outcome("auth_method", True, "an authentication request or a login", first.method)
        password = self.password
        if first.code != 0 and password is None:
            if self.query is not None:
                with attempt.phase("auth"):
                    raise ProbeFailure(
                        ErrorKind.AUTH,
                        f"the server asks for a password ({first.method}) and none is "
                        "configured; the query cannot run",
                    )
            # Up and speaking the protocol: that is all a check without credentials asks.
            return

        with attempt.phase("auth"):
            if first.code != 0 and password is not None:
                done = await self._authenticate(wire, first, password, user, encrypted)
                if isinstance(done, ServerError):
                    self._refused(attempt, done)
                    return
            refused = await self._until_ready(attempt, wire)
            if refused is not None:
                self._refused(attempt, refused)
                return
        attempt.metric("login", 1)

        if self.query is not None:
            with attempt.phase("query"):
                await wire.send(query_message(self.query))
                rows, cell, error = await self._results(wire)
            self._judge(attempt, rows, cell, error)
        conn.write(TERMINATE)  # a goodbye, not waited for: the check has what it came for

    # -- TLS -----------------------------------------------------------------------------------

    async def _starttls(self, attempt: Attempt, wire: Wire) -> bool:
        """The SSLRequest, and the handshake when the server accepts; True when now TLS."""
        with attempt.phase("starttls"):
            await wire.send(SSL_REQUEST)
            answer = await wire.exactly(1, "answer to the SSLRequest")
            if answer == b"N":
                if self.starttls == "required":
                    attempt.outcome("starttls", False, "TLS accepted (required)", "refused (N)")
                    raise ProbeFailure(
                        ErrorKind.TLS, "the server does not accept TLS (it answered N)"
                    )
                attempt.outcome("starttls", True, "TLS or not (optional)", "refused (N)")
                return False
            if answer == b"E":
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    "the server answered the SSLRequest with an error (a server older than "
                    "PostgreSQL 7.3, or not PostgreSQL)",
                )
            if answer != b"S":
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"not an answer to the SSLRequest: {excerpt(answer)!r} (not PostgreSQL?)",
                )
            if wire.pending:
                # Bytes sent before the handshake would be read as if they came through TLS
                # (CVE-2021-23222): refused.
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"{wire.pending} unexpected plain-text bytes after the server accepted TLS",
                )
        await attempt.start_tls(wire.conn, self.host, self.starttls_options)
        attempt.outcome("starttls", True, f"TLS accepted ({self.starttls})", "upgraded")
        return True

    # -- the login -----------------------------------------------------------------------------

    async def _auth_message(self, wire: Wire, what: str) -> AuthRequest | ServerError:
        """The next Authentication request or ErrorResponse (notices are skipped)."""
        while True:
            kind, length = await wire.header(what)
            if kind in _ASYNC:
                await wire.skip(length, what)
                continue
            payload = await wire.payload(kind, length, what)
            if kind == b"R":
                return parse_auth(payload)
            if kind == b"E":
                return parse_error(payload)
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"expected an authentication request or an error as the {what}, "
                f"got message {excerpt(kind)!r}",
            )

    async def _authenticate(
        self, wire: Wire, request: AuthRequest, password: Secret, user: str, encrypted: bool
    ) -> ServerError | None:
        """Answer ``request``; None once the server says AuthenticationOk."""
        if request.code == 3:
            if not encrypted and not self.plaintext_auth:
                raise ProbeFailure(
                    ErrorKind.TLS,
                    "the server asks for the password in clear text and the connection is not "
                    "encrypted: it is not sent (use starttls, or set plaintext_auth for a server "
                    "on a trusted network)",
                )
            await wire.send(password_message(password.reveal().encode()))
        elif request.code == 5:
            await wire.send(password_message(md5_password(user, password.reveal(), request.salt)))
        elif request.code == 10:
            answer = await self._scram(wire, request, password)
            if answer is not None:
                return answer
        else:
            raise ProbeFailure(
                ErrorKind.AUTH,
                f"the server asks for {request.method} authentication, which probekit does not "
                "do (it logs in with SCRAM-SHA-256, md5 or a password)",
            )
        reply = await self._auth_message(wire, "answer to the login")
        if isinstance(reply, ServerError):
            return reply
        if reply.code != 0:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"expected AuthenticationOk after the password, got a request for {reply.method}",
            )
        return None

    async def _scram(
        self, wire: Wire, request: AuthRequest, password: Secret
    ) -> ServerError | None:
        if ScramClient.MECHANISM not in request.mechanisms:
            raise ProbeFailure(
                ErrorKind.AUTH,
                f"the server offers {excerpt(' '.join(request.mechanisms))}, not SCRAM-SHA-256 "
                "(channel binding only, SCRAM-SHA-256-PLUS, is not supported)",
            )
        scram = ScramClient(password)
        await wire.send(sasl_initial(ScramClient.MECHANISM, scram.first()))
        reply = await self._auth_message(wire, "SCRAM server-first-message")
        if isinstance(reply, ServerError):
            return reply
        if reply.code != 11:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"expected SASL continue, got a request for {reply.method}"
            )
        await wire.send(sasl_response(scram.final(reply.data)))
        reply = await self._auth_message(wire, "SCRAM server-final-message")
        if isinstance(reply, ServerError):
            return reply
        if reply.code != 12:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"expected SASL final, got a request for {reply.method}"
            )
        scram.verify(reply.data)
        return None

    async def _until_ready(self, attempt: Attempt, wire: Wire) -> ServerError | None:
        """The backend's start after AuthenticationOk: parameters (``server_version``), the
        cancellation key, then ReadyForQuery."""
        what = "session start"
        while True:
            kind, length = await wire.header(what)
            if kind in _ASYNC:
                await wire.skip(length, what)
                continue
            payload = await wire.payload(kind, length, what)
            if kind == b"Z":
                return None
            if kind == b"S":
                name, value = parse_parameter(payload)
                if name == "server_version":
                    self._version(attempt, value)
            elif kind == b"E":
                return parse_error(payload)
            elif kind != b"K":
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"unexpected message {excerpt(kind)!r} before the session was ready",
                )

    def _version(self, attempt: Attempt, value: str) -> None:
        shown = excerpt(value, self.password, limit=60)
        attempt.outcome("server_version", True, "any", shown)
        number = version_number(value)
        if number is not None:
            attempt.metric("server_version", number)
        else:
            log.debug("postgres %s: server_version %r is not a version", self.target, shown)

    def _refused(self, attempt: Attempt, error: ServerError) -> None:
        """What an ErrorResponse during the session start means: raise it, or record the
        missing database as a failed outcome."""
        shown = error.describe(self.password)
        code = error.code
        log.debug("postgres %s refused the session: %s", self.target, shown)
        if code.startswith("28"):
            raise ProbeFailure(ErrorKind.AUTH, f"the login was refused: {shown}")
        if code == "3D000":
            database = self.database if self.database is not None else self.username
            name = database if database is not None else DEFAULT_USER
            attempt.outcome("database", False, f"database {name!r} exists", shown)
            return
        if code == "57P03" or code.startswith("53"):
            raise ProbeFailure(ErrorKind.CONNECT, f"the server does not take sessions now: {shown}")
        raise ProbeFailure(ErrorKind.PROTOCOL, f"the server refused the session: {shown}")

    # -- the query -------------------------------------------------------------------------

    async def _results(self, wire: Wire) -> tuple[int, bytes | None, ServerError | None]:
        """Read the query's results to ReadyForQuery: the row count, the first cell of the
        first row (None for no rows or NULL) and the error, if any. Rows are skipped through
        in chunks; only the first cell is kept (at most FIRST_CELL_LIMIT bytes)."""
        what = "query result"
        rows = 0
        cell: bytes | None = None
        error: ServerError | None = None
        while True:
            if rows:
                rows += wire.skim_rows()  # the rows wholly received, without an await each
            kind, length = await wire.header(what)
            if kind == b"D":
                head = parse_row_head(await wire.exactly(min(length, 6), "data row"), length)
                rest = length - head.head_size
                if rows == 0 and head.first_length is not None and head.first_length >= 0:
                    kept = min(head.first_length, FIRST_CELL_LIMIT)
                    cell = await wire.exactly(kept, "data row") if kept else b""
                    if kept < head.first_length:
                        cell += b"\0"  # longer than kept: it can equal no expected text
                    rest -= kept
                await wire.skip(rest, "data row")
                rows += 1
            elif kind in _ASYNC or kind in (b"T", b"S"):
                await wire.skip(length, what)
            elif kind in _COPY:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL, "the query started a COPY, which a check does not do"
                )
            else:
                payload = await wire.payload(kind, length, what)
                if kind == b"Z":
                    return rows, cell, error
                if kind == b"E":
                    error = error or parse_error(payload)
                elif kind not in (b"C", b"I"):
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL,
                        f"unexpected message {excerpt(kind)!r} in the query's results",
                    )

    def _judge(
        self, attempt: Attempt, rows: int, cell: bytes | None, error: ServerError | None
    ) -> None:
        if error is not None:
            attempt.outcome("query", False, "the query succeeds", error.describe(self.password))
            return
        attempt.metric("rows", rows)
        attempt.outcome("query", True, "the query succeeds", f"{rows} rows")
        if rows == 0:
            shown = "no rows"
        elif cell is None:
            shown = "NULL"
        else:
            shown = repr(excerpt(cell, self.password))
        if self.expect is not None:
            passed = cell is not None and cell == self.expect.encode()
            attempt.outcome("first_cell", passed, repr(self.expect), shown)
        if self.query_warning is not None or self.query_critical is not None:
            self._thresholds(attempt, cell, shown)
        if self.min_rows is not None or self.max_rows is not None:
            low, high = self.min_rows, self.max_rows
            passed = (low is None or rows >= low) and (high is None or rows <= high)
            if low is not None and high is not None:
                expected = f"{low} to {high} rows" if low != high else f"{low} rows"
            elif low is not None:
                expected = f"at least {low} rows"
            else:
                expected = f"at most {high} rows"
            attempt.outcome("rows", passed, expected, str(rows))
        attempt.observe(body=cell if cell is not None else b"")

    def _thresholds(self, attempt: Attempt, cell: bytes | None, shown: str) -> None:
        """check_pgsql's -W/-C: the first cell as a number against the warning and critical
        ranges; a cell that is not a number is a failed ``query_value`` outcome."""
        try:
            value = float(cell.decode("ascii")) if cell is not None else math.nan
        except (UnicodeDecodeError, ValueError):
            value = math.nan
        if math.isnan(value):
            attempt.outcome("query_value", False, "a number in the first cell", shown)
            return
        for name, text, severity in (
            ("query_critical", self.query_critical, Status.DOWN),
            ("query_warning", self.query_warning, Status.DEGRADED),
        ):
            if text is None:
                continue
            low, high, inside = threshold = nagios_range(text)
            alert = _alerts(value, threshold)
            expected = f"{'not ' if inside else ''}{low:g} to {high:g}"
            attempt.outcome(name, not alert, expected, f"{value:g}", severity=severity)
            if alert:
                return  # the worse one decides, as check_pgsql reports one state


# -- the command-line form -------------------------------------------------------------------------


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems: list[DefinitionError] = []
    try:
        secret_from_env(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    need = "need TLS (not --starttls off)"
    if problem := starttls_definition(values, definition, implicit=False, off_problem=need):
        problems.append(problem)
    if values.get("plaintext_auth"):
        definition["plaintext_auth"] = True
    if (problem := family_definition(values, definition)) is not None:
        problems.append(problem)
    try:
        body_assertions(values, definition)
    except DefinitionErrors as exc:
        problems.extend(exc.errors)
    if problems:
        raise DefinitionErrors(problems)


def _describe(result: Result) -> str | None:
    parts: list[str] = []
    version = result.metrics.get("server_version")
    if version is not None:
        number = int(version)
        major = number // 10000
        parts.append(
            f"PostgreSQL {major}.{number % 10000}"
            if major >= 10
            else f"PostgreSQL {major}.{number // 100 % 100}.{number % 100}"
        )
    method = next((a for a in result.assertions if a.name == "auth_method"), None)
    if "tls" in result.metrics:
        parts.append("TLS" if result.metrics["tls"] else "no TLS")
    if result.metrics.get("login"):
        parts.append("login ok")
    elif method is not None and result.error is None:
        parts.append(f"asks for {method.observed}")
    rows = result.metrics.get("rows")
    if rows is not None:
        parts.append(f"{int(rows)} row" if rows == 1 else f"{int(rows)} rows")
    return ", ".join(parts) or None


KIND = ProbeKind(
    name="postgres",
    cls=PostgresProbe,
    summary="check a PostgreSQL server: TLS, session start, optional login and query",
    target=HostPort(default_port=5432),
    options=(
        Option(
            ("--starttls",),
            field="starttls",
            choices=_MODES,
            metavar="{required,optional,off}",
            help="TLS by SSLRequest: required (DOWN when refused), optional (default), off",
        ),
        *TLS_OPTIONS,
        Option(
            ("--user", "--logname"),
            field="username",
            metavar="NAME",
            help=f"the user to start the session as (default {DEFAULT_USER})",
        ),
        Option(
            ("--password-env",),
            dest="password_env",
            metavar="VAR",
            sets=("password",),
            help="log in with the password in environment variable VAR (needs --user)",
        ),
        Option(
            ("--database", "--dbname"),
            field="database",
            metavar="NAME",
            help="the database to connect to (default: the user's name)",
        ),
        Option(
            ("--plaintext-auth",),
            dest="plaintext_auth",
            action="flag",
            sets=("plaintext_auth",),
            help="allow a cleartext password without TLS (a trusted network only)",
        ),
        Option(
            ("--query",),
            field="query",
            metavar="SQL",
            help="run SQL after the login (simple query protocol)",
        ),
        Option(
            ("--expect",),
            field="expect",
            metavar="TEXT",
            help="the first cell of the first row must be TEXT",
        ),
        *ROW_OPTIONS,
        Option(
            ("--query-warning",),
            field="query_warning",
            metavar="RANGE",
            help="WARNING (DEGRADED) when the first cell, a number, is outside RANGE "
            "(check_pgsql -W: 10, 10:, ~:10, 10:20, @10:20)",
        ),
        Option(
            ("--query-critical",),
            field="query_critical",
            metavar="RANGE",
            help="CRITICAL (DOWN) when the first cell, a number, is outside RANGE (check_pgsql -C)",
        ),
        *FAMILY_OPTIONS,
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric(
            "server_version",
            "probekit_postgres_server_version",
            "PostgreSQL server version as one number like server_version_num (15.5 is 150005).",
        ),
        Metric("tls", "probekit_postgres_tls", "1 when the session was encrypted, else 0."),
        Metric("login", "probekit_postgres_login", "1 when the login completed, else 0."),
        Metric("rows", "probekit_postgres_rows", "Rows the query returned."),
    ),
    docs="probes/postgres.md",
    tls_field="starttls_options",
    describe=_describe,
)
