"""MysqlProbe: read a MySQL or MariaDB server's handshake, upgrade to TLS, log in, run a query.

It speaks the client/server protocol itself (:mod:`probekit.probes._mysqlwire`) over the shared
dial path, so the egress policy, IP pinning and the timed ``tls`` phase hold as for every kind;
see that module for why not aiomysql or asyncmy.

Phases: ``resolve``, ``connect``, ``handshake`` (the server's greeting), ``tls`` (the SSL request
and the TLS handshake), ``auth`` (with a ``username``), ``query`` (with a ``query``). Metrics:
``server_version`` (10.11.6 is 101106), ``capabilities`` (the server's flags), ``tls`` (0 or 1)
and, with a query, ``rows``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Final, Literal, get_args

import attrs

from .._assertions import Assertion, assertion_tuple
from .._context import ProbeContext
from .._dial import Connection
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._resolver import Family
from .._result import ErrorKind, Result
from .._secret import Secret
from .._timeouts import Timeouts
from .._tls import TlsOptions, warm_up
from . import _mysqlwire as wire
from ._base import Attempt, ProbeBase
from ._fields import check_family, check_host, check_secret, host_port
from ._fields import host as _host
from ._fields import port as _port
from ._kind import HostPort, Metric, Option, ProbeKind
from ._mailcommon import CERT_OPTIONS, cert_assertion
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

__all__ = ["KIND", "QUERY_LIMIT", "MysqlProbe", "StartTlsMode"]

log = logging.getLogger("probekit.probes.mysql")

StartTlsMode = Literal["required", "optional", "off"]
_MODES: Final[tuple[str, ...]] = get_args(StartTlsMode)

#: The longest query text sent (a probe's query is one short statement).
QUERY_LIMIT: Final = 64 * 1024
#: How many authentication round trips a login may take (a switch, then more data, ...).
_AUTH_ROUNDS: Final = 4
_MASK: Final = "<secret>"
_EXCERPT: Final = 80
#: How much of a skipped packet is kept: enough for an ERR packet's message.
_PEEK: Final = 512
#: ERR codes of a refused login that are the credentials' fault.
_ACCESS_DENIED: Final = {1044: "access denied to the database", 1045: "access denied"}


def _shown(text: str | None) -> str:
    if text is None:
        return "NULL"
    if len(text) > _EXCERPT:
        return f"{text[:_EXCERPT]!r}… ({len(text)} characters)"
    return repr(text)


@attrs.frozen
class MysqlProbe(ProbeBase):
    """Check a MySQL or MariaDB server: its handshake, TLS, a login, and an optional query.

    The handshake's server version, capability flags and default authentication plugin are
    recorded as passed outcomes (``server_version``, ``capabilities``, ``auth_plugin``) and
    metrics. A server that sends anything but a protocol 10 handshake is DOWN/``protocol``; one
    that greets with an ERR packet (too many connections, a host not allowed) is DOWN, naming
    the ERR code (``auth`` for 1130, a host that is not allowed, else ``protocol``).

    ``starttls`` (MySQL's only TLS: the client asks with an SSL request packet after the
    greeting): ``required`` is DOWN/``tls`` when the server does not announce CLIENT_SSL;
    ``optional`` upgrades when it does; ``off`` never upgrades. ``starttls_options`` are the TLS
    options (trust, ``verify``, client certificate).

    With ``username`` the probe logs in (``password`` may be left out for an account without
    one) with ``mysql_native_password`` or ``caching_sha2_password``, following the server's
    authentication switch requests. ``caching_sha2_password``'s full authentication sends the
    password itself, so the probe does that only over TLS, or, with ``get_server_public_key``,
    encrypted with the RSA key the server sends (which a man in the middle could replace);
    otherwise it is DOWN/``auth`` saying TLS is needed. A refused login is DOWN/``auth`` naming
    the ERR code (1045: access denied), never the password. ``database`` selects the default
    database at login.

    With ``query`` (needs a ``username``) the probe runs it with ``COM_QUERY``: rows are read
    one packet at a time and counted, only the first row's first cell kept. An error is a
    failed ``query`` outcome (DOWN/``assertion``); ``expect_value`` (the first cell as text;
    ``NULL`` for SQL NULL) and ``min_rows``/``max_rows`` are further outcomes. ``assertions``
    see the first cell as the body (the server version when there is no query).
    """

    kind: ClassVar[str] = "mysql"

    host: str = attrs.field(converter=_host)
    port: int = attrs.field(default=3306, validator=_port)
    starttls: StartTlsMode = "optional"
    starttls_options: TlsOptions | None = None
    username: str | None = None
    password: Secret | None = None
    database: str | None = None
    query: str | None = None
    expect_value: str | None = None
    min_rows: int | None = None
    max_rows: int | None = None
    get_server_public_key: bool = False
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    ip_family: Family | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        check_host(self.host)
        check_family(self.ip_family)
        if self.starttls not in _MODES:
            raise DefinitionError(
                "starttls", f"expected one of {list(_MODES)}, got {self.starttls!r}"
            )
        options: object = self.starttls_options
        if options is not None:
            if not isinstance(options, TlsOptions):
                raise DefinitionError("starttls_options", f"expected TlsOptions, got {options!r}")
            if self.starttls == "off":
                raise DefinitionError("starttls_options", "TLS options with starttls off")
        self._check_login()
        self._check_query()
        if not isinstance(self.get_server_public_key, bool):
            raise DefinitionError(
                "get_server_public_key",
                f"expected true or false, got {self.get_server_public_key!r}",
            )
        if not isinstance(self.timeouts, Timeouts):
            raise DefinitionError("timeouts", f"expected Timeouts, got {self.timeouts!r}")

    def _check_login(self) -> None:
        password = check_secret(
            "password", self.password, empty="an empty password (leave it out instead)"
        )
        if password is not None and "\0" in password.reveal():
            raise DefinitionError("password", "contains NUL, which the protocol cannot send")
        for field in ("username", "database"):
            value: object = getattr(self, field)
            if value is None:
                continue
            if not isinstance(value, str) or not value or "\0" in value:
                raise DefinitionError(field, f"expected a name without NUL, got {value!r}")
            if len(value.encode()) > 255:
                raise DefinitionError(field, "longer than 255 bytes")
        if self.username is None:
            if password is not None:
                raise DefinitionError("password", "a password needs a username")
            if self.database is not None:
                raise DefinitionError("database", "selecting a database needs a username")

    def _check_query(self) -> None:
        query: object = self.query
        if query is not None:
            if not isinstance(query, str) or not query.strip():
                raise DefinitionError("query", f"expected an SQL statement, got {query!r}")
            if len(query.encode("utf-8", "surrogatepass")) > QUERY_LIMIT:
                raise DefinitionError("query", f"longer than {QUERY_LIMIT} bytes")
            try:
                query.encode("utf-8")
            except UnicodeEncodeError:
                raise DefinitionError("query", "not valid text (a lone surrogate)") from None
            if self.username is None:
                raise DefinitionError("query", "a query needs a login (username)")
        expect: object = self.expect_value
        if expect is not None and not isinstance(expect, str):
            raise DefinitionError("expect_value", f"expected text, got {expect!r}")
        for field in ("min_rows", "max_rows"):
            value: object = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise DefinitionError(field, f"expected a count of rows (0 or more), got {value!r}")
        if (
            self.min_rows is not None
            and self.max_rows is not None
            and self.min_rows > self.max_rows
        ):
            raise DefinitionError("min_rows", "above max_rows")
        if query is None:
            for field in ("expect_value", "min_rows", "max_rows"):
                if getattr(self, field) is not None:
                    raise DefinitionError(field, "needs a query")

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    def prepare(self, ctx: ProbeContext) -> None:
        """Before the clock starts: the SSL context and the certificate parser of an upgrade."""
        if self.starttls != "off":
            warm_up(self.starttls_options or TlsOptions())

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.connect(self.host, self.port, family=self.ip_family)
        reader = wire.PacketReader(lambda n: attempt.read(conn, n))
        attempt.metric("tls", 0)
        with attempt.phase("handshake"):
            handshake = await self._handshake(reader)
        self._record_handshake(attempt, handshake)

        encrypted = False
        database = self.database is not None
        if self.starttls != "off":
            offered = bool(handshake.capabilities & wire.CLIENT_SSL)
            if offered:
                capabilities = wire.client_capabilities(tls=True, database=database)
                await attempt.write(conn, wire.packet(reader.seq, wire.ssl_request(capabilities)))
                reader.seq += 1
                pending = conn.buffered + reader.buffered
                if pending:
                    # Plain-text bytes that would be read as if they came through TLS.
                    with attempt.phase("tls"):
                        raise ProbeFailure(
                            ErrorKind.PROTOCOL,
                            f"{pending} unexpected plain-text bytes before the TLS handshake",
                        )
                await attempt.start_tls(conn, self.host, self.starttls_options)
                encrypted = True
                attempt.metric("tls", 1)
                attempt.outcome("tls", True, f"TLS ({self.starttls})", "upgraded")
            elif self.starttls == "required":
                attempt.outcome("tls", False, "TLS (required)", "the server does not offer SSL")
                with attempt.phase("tls"):
                    raise ProbeFailure(
                        ErrorKind.TLS,
                        "the server does not offer TLS (no CLIENT_SSL in its handshake) "
                        "and starttls is required",
                    )
            else:
                attempt.outcome("tls", True, "TLS (optional)", "the server does not offer SSL")

        if self.username is None:
            attempt.observe(body=handshake.version.encode())
            return
        with attempt.phase("auth"):
            await self._login(attempt, conn, reader, handshake, encrypted)
        if self.query is None:
            attempt.observe(body=handshake.version.encode())
        else:
            with attempt.phase("query"):
                await self._query(attempt, conn, reader, self.query)
        # A polite goodbye; the answer (the server closes) is not waited for, and a server that
        # has already hung up has done what was asked.
        try:
            await attempt.write(conn, wire.packet(0, b"\x01"))
        except ConnectionError as exc:
            log.debug("mysql %s closed before COM_QUIT: %s", self.target, exc)

    # -- handshake ---------------------------------------------------------------------------

    async def _handshake(self, reader: wire.PacketReader) -> wire.Handshake:
        try:
            payload = await reader.read("server handshake")
            found = wire.parse_handshake(payload)
        except wire.WireError as exc:
            raise ProbeFailure(ErrorKind.PROTOCOL, exc.message) from None
        if isinstance(found, wire.ServerError):
            kind = ErrorKind.AUTH if found.code == 1130 else ErrorKind.PROTOCOL
            raise ProbeFailure(kind, f"the server refused the connection: {found.describe()}")
        needed = wire.CLIENT_PROTOCOL_41 | wire.CLIENT_SECURE_CONNECTION
        if self.username is not None and found.capabilities & needed != needed:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"the server ({found.version}) does not speak protocol 4.1 with secure "
                "authentication, which a login needs",
            )
        return found

    def _record_handshake(self, attempt: Attempt, handshake: wire.Handshake) -> None:
        attempt.outcome("server_version", True, "a protocol 10 handshake", handshake.version)
        attempt.outcome(
            "capabilities",
            True,
            "announced",
            f"0x{handshake.capabilities:08x} {wire.capability_names(handshake.capabilities)}",
        )
        attempt.outcome("auth_plugin", True, "announced", handshake.auth_plugin or "(none)")
        attempt.metric("capabilities", handshake.capabilities)
        number = wire.version_number(handshake.version)
        if number is not None:
            attempt.metric("server_version", number)

    # -- login -------------------------------------------------------------------------------

    async def _login(
        self,
        attempt: Attempt,
        conn: Connection,
        reader: wire.PacketReader,
        handshake: wire.Handshake,
        encrypted: bool,
    ) -> None:
        assert self.username is not None
        password = self.password.reveal().encode() if self.password is not None else b""
        plugin = handshake.auth_plugin
        response = wire.auth_response(plugin, password, handshake.scramble)
        if response is None:
            # A default plugin the probe does not speak: answer as mysql_native_password; the
            # server switches the probe to the account's plugin if it is another.
            plugin = "mysql_native_password"
            response = wire.native_scramble(password, handshake.scramble)
        capabilities = wire.client_capabilities(tls=encrypted, database=self.database is not None)
        payload = wire.handshake_response(
            capabilities,
            self.username.encode(),
            response,
            self.database.encode() if self.database is not None else None,
            plugin,
        )
        await attempt.write(conn, wire.packet(reader.seq, payload))
        reader.seq += 1
        scramble = handshake.scramble
        for _ in range(_AUTH_ROUNDS):
            try:
                reply = wire.parse_auth_reply(await reader.read("login reply"))
            except wire.WireError as exc:
                raise ProbeFailure(ErrorKind.PROTOCOL, exc.message) from None
            if reply == "ok":
                attempt.outcome("auth", True, "login accepted", f"{self.username} ({plugin})")
                return
            if isinstance(reply, wire.ServerError):
                self._refused(reply, password)
            if isinstance(reply, wire.AuthSwitch):
                plugin, scramble = reply.plugin, reply.data
                response = wire.auth_response(plugin, password, scramble)
                if response is None:
                    raise ProbeFailure(
                        ErrorKind.AUTH,
                        f"the server asks for the authentication plugin {plugin!r}, which the "
                        "probe does not speak (mysql_native_password, caching_sha2_password)",
                    )
                await attempt.write(conn, wire.packet(reader.seq, response))
                reader.seq += 1
            elif isinstance(reply, wire.AuthMoreData):
                await self._more_data(
                    attempt, conn, reader, plugin, reply, password, scramble, encrypted
                )
        raise ProbeFailure(
            ErrorKind.PROTOCOL, f"the login did not end after {_AUTH_ROUNDS} round trips"
        )

    async def _more_data(
        self,
        attempt: Attempt,
        conn: Connection,
        reader: wire.PacketReader,
        plugin: str,
        reply: wire.AuthMoreData,
        password: bytes,
        scramble: bytes,
        encrypted: bool,
    ) -> None:
        if plugin != "caching_sha2_password" or len(reply.data) != 1:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"unexpected authentication data for {plugin} ({len(reply.data)} bytes)",
            )
        if reply.data == b"\x03":  # fast authentication succeeded; an OK follows
            return
        if reply.data != b"\x04":
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"unknown caching_sha2_password status {reply.data[0]}"
            )
        # Full authentication: the server wants the password itself.
        if encrypted:
            await attempt.write(conn, wire.packet(reader.seq, password + b"\0"))
            reader.seq += 1
            return
        if not self.get_server_public_key:
            raise ProbeFailure(
                ErrorKind.AUTH,
                "caching_sha2_password asks for full authentication, which sends the password "
                "itself: the probe does that only over TLS (set starttls to required or "
                "optional on a server with TLS, or get_server_public_key to encrypt it with the "
                "server's RSA key; a successful login fills the server's cache, after which the "
                "fast path works without either)",
            )
        await attempt.write(conn, wire.packet(reader.seq, b"\x02"))  # "send your public key"
        reader.seq += 1
        try:
            answer = wire.parse_auth_reply(await reader.read("public key"))
        except wire.WireError as exc:
            raise ProbeFailure(ErrorKind.PROTOCOL, exc.message) from None
        if isinstance(answer, wire.ServerError):
            self._refused(answer, password)
        if not isinstance(answer, wire.AuthMoreData):
            raise ProbeFailure(ErrorKind.PROTOCOL, "expected the server's public key")
        try:
            encrypted_password = wire.rsa_encrypted_password(password, scramble, answer.data)
        except wire.WireError as exc:
            raise ProbeFailure(ErrorKind.PROTOCOL, exc.message) from None
        await attempt.write(conn, wire.packet(reader.seq, encrypted_password))
        reader.seq += 1

    def _refused(self, error: wire.ServerError, password: bytes) -> None:
        text = error.describe()
        secret = password.decode("utf-8", "replace")
        if secret and secret in text:
            text = text.replace(secret, _MASK)
        log.debug("mysql %s refused the login: %s", self.target, text)
        meaning = _ACCESS_DENIED.get(error.code)
        prefix = f"login refused ({meaning})" if meaning else "login refused"
        raise ProbeFailure(ErrorKind.AUTH, f"{prefix}: {text}")

    # -- query -------------------------------------------------------------------------------

    async def _query(
        self, attempt: Attempt, conn: Connection, reader: wire.PacketReader, query: str
    ) -> None:
        reader.seq = 0
        await attempt.write(conn, wire.packet(0, wire.com_query(query)))
        reader.seq = 1
        try:
            outcome = await _read_result(reader)
        except wire.WireError as exc:
            raise ProbeFailure(ErrorKind.PROTOCOL, exc.message) from None
        if isinstance(outcome, wire.ServerError):
            attempt.outcome("query", False, "the query runs", outcome.describe())
            return
        rows, first = outcome
        attempt.outcome("query", True, "the query runs", f"{rows} rows")
        attempt.metric("rows", rows)
        if self.expect_value is not None:
            observed = "NULL" if first is None and rows else first
            attempt.outcome(
                "value",
                rows > 0 and observed == self.expect_value,
                f"first cell {_shown(self.expect_value)}",
                _shown(observed) if rows else "no rows",
            )
        if self.min_rows is not None or self.max_rows is not None:
            low = self.min_rows if self.min_rows is not None else 0
            passed = rows >= low and (self.max_rows is None or rows <= self.max_rows)
            wanted = f"{low} to {self.max_rows}" if self.max_rows is not None else f"≥ {low}"
            attempt.outcome("rows", passed, f"{wanted} rows", str(rows))
        attempt.observe(body=(first or "").encode())


async def _read_result(reader: wire.PacketReader) -> tuple[int, str | None] | wire.ServerError:
    """A COM_QUERY response: the row count and the first row's first cell, or the ERR.

    Column definitions and every row after the first are skipped as they arrive."""
    head = await reader.read("query response")
    if not head:
        raise wire.WireError("the server answered the query with an empty packet")
    if head[0] == 0x00:
        return 0, None  # an OK: a statement without a result set
    if head[0] == 0xFF:
        return wire.parse_error(head)
    if head[0] == 0xFB:
        # LOCAL INFILE: the server asks for a file of the probe's machine. Never sent.
        raise wire.WireError("the server asked for a local file (LOAD DATA LOCAL); refused")
    columns = wire.column_count(head)
    for _ in range(columns):
        first, length = await reader.peek_skip("column definition", _PEEK)
        if first[:1] == b"\xff":
            return wire.parse_error(first)
        if wire.is_eof(first, length):
            raise wire.WireError("fewer column definitions than the column count")
    first, length = await reader.peek_skip("end of the column definitions", 1)
    if not wire.is_eof(first, length):
        raise wire.WireError("the column definitions do not end with an EOF packet")
    payload = await reader.read("first row")
    if wire.is_eof(payload, len(payload)):
        return 0, None
    if payload[:1] == b"\xff":
        return wire.parse_error(payload)
    cell = wire.first_cell(payload)
    rows, end = await reader.skip_rows(_PEEK)
    if end[:1] == b"\xff":
        return wire.parse_error(end)
    return rows + 1, cell


# -- the command-line form -------------------------------------------------------------------------


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems: list[DefinitionError] = []
    try:
        secret_from_env(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    if values.get("ssl"):
        if definition.get("starttls") not in (None, "required"):
            problems.append(DefinitionError("--ssl", "contradicts --starttls"))
        definition["starttls"] = "required"
    need = "need TLS (not --starttls off)"
    if problem := starttls_definition(values, definition, implicit=False, off_problem=need):
        problems.append(problem)
    try:
        cert_assertion(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    if values.get("get_server_public_key"):
        definition["get_server_public_key"] = True
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
    parts = [version.observed]
    if result.metrics.get("tls"):
        parts.append("TLS")
    elif "tls" in outcomes:
        parts.append("no TLS")
    auth = outcomes.get("auth")
    if auth is not None and auth.passed:
        parts.append(f"login {auth.observed}")
    if "rows" in result.metrics:
        parts.append(f"{int(result.metrics['rows'])} rows")
    return ", ".join(parts)


KIND = ProbeKind(
    name="mysql",
    cls=MysqlProbe,
    summary="check a MySQL or MariaDB server: handshake, TLS, optional login and query",
    target=HostPort(default_port=3306),
    options=(
        Option(
            ("-u", "--user"),
            field="username",
            metavar="NAME",
            help="log in as NAME (the password from --password-env)",
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
            help="select database DB at login (needs --user)",
        ),
        Option(
            ("--starttls",),
            field="starttls",
            choices=_MODES,
            metavar="{required,optional,off}",
            help="TLS through the SSL request: required (DOWN without it), optional (default), off",
        ),
        Option(
            ("-l", "--ssl"),
            dest="ssl",
            action="flag",
            sets=("starttls",),
            help="require TLS (the same as --starttls required)",
        ),
        *TLS_OPTIONS,
        *CERT_OPTIONS,
        Option(
            ("--get-server-public-key",),
            dest="get_server_public_key",
            action="flag",
            sets=("get_server_public_key",),
            help="without TLS, encrypt the password for caching_sha2_password's full "
            "authentication with the RSA key the server sends (open to a man in the middle)",
        ),
        Option(
            ("-q", "--query"),
            field="query",
            metavar="SQL",
            help="run SQL after the login (check_mysql_query's -q)",
        ),
        Option(
            ("--expect",),
            field="expect_value",
            metavar="TEXT",
            help="the query's first cell must be TEXT (NULL for SQL NULL)",
        ),
        *ROW_OPTIONS,
        *FAMILY_OPTIONS,
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric(
            "server_version",
            "probekit_mysql_server_version",
            "Server version as one number: major*10000 + minor*100 + patch (10.11.6 is 101106).",
        ),
        Metric(
            "capabilities",
            "probekit_mysql_capabilities",
            "The capability flags of the server's handshake.",
        ),
        Metric("tls", "probekit_mysql_tls", "1 when the session was upgraded to TLS, else 0."),
        Metric("rows", "probekit_mysql_rows", "Rows the query returned."),
    ),
    docs="probes/mysql.md",
    tls_field="starttls_options",
    describe=_describe,
)
