"""RedisProbe: PING a Redis server (logging in first when it has a password), report its version.

It speaks RESP2 itself, over the shared dial path, so no Redis client library is loaded and the
egress policy, IP pinning and direct TLS (``rediss``) hold as for every other kind. Every reply
is read with a bound: a status or length line at most :data:`LINE_LIMIT` bytes, the ``INFO``
text at most :data:`INFO_LIMIT`.

Phases: ``resolve``, ``connect``, ``tls`` (with ``tls``), ``auth`` (with a ``password``),
``command`` (``PING``, which must answer ``+PONG``), ``info`` (``INFO server``, unless ``info``
is false). Metrics: ``redis_version`` (7.2.4 is 70204) and ``uptime_seconds``, from the INFO
text, which is also the body the ``assertions`` see.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Final

import attrs

from .._assertions import Assertion, BodyContains, BodyMatches, assertion_tuple
from .._dial import Connection
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._result import ErrorKind
from .._secret import Secret
from .._timeouts import Timeouts
from .._tls import TlsOptions
from ._base import Attempt, ProbeBase
from ._fields import check_host, check_secret, host_port
from ._fields import host as _host
from ._fields import port as _port
from ._kind import HostPort, Metric, Option, ProbeKind
from ._options import BODY_OPTIONS, TLS_OPTIONS, body_assertions, secret_from_env, tls_definition

__all__ = ["INFO_LIMIT", "KIND", "LINE_LIMIT", "RedisProbe"]

log = logging.getLogger("probekit.probes.redis")

#: The longest reply line read (a status, an error or a bulk length); Redis's are a few dozen
#: bytes, so anything near this is not Redis.
LINE_LIMIT: Final = 4096
#: The largest ``INFO server`` text accepted (a real one is about 1.5 KiB).
INFO_LIMIT: Final = 1024 * 1024

_EXCERPT = 80
_VERSION = re.compile(r"^([0-9]+)\.([0-9]+)\.([0-9]+)")
_BULK = re.compile(rb"\$(-?[0-9]{1,18})\r\n\Z")
_MASK = "<secret>"


def _version_number(version: str) -> int | None:
    """``major*10000 + minor*100 + patch`` of a version like ``7.2.4`` (70204), or None."""
    match = _VERSION.match(version)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major * 10000 + minor * 100 + patch


def _command(*parts: bytes) -> bytes:
    """One command as a RESP array of bulk strings (safe for any bytes, unlike inline form)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out += (b"$%d\r\n" % len(part), part, b"\r\n")
    return b"".join(out)


def _shown(data: bytes, secret: Secret | None = None) -> str:
    """A short rendering of a reply for messages, with the password masked should the server
    echo it back."""
    text = data.rstrip(b"\r\n").decode("utf-8", "replace")
    if secret is not None and secret.reveal() and secret.reveal() in text:
        text = text.replace(secret.reveal(), _MASK)
    if not text:
        return "an empty line"
    if len(text) > _EXCERPT:
        return f"{text[:_EXCERPT]!r}… ({len(text)} characters)"
    return repr(text)


@attrs.frozen
class RedisProbe(ProbeBase):
    """Check a Redis server: connect (TLS with ``tls``), ``AUTH`` when a ``password`` is set,
    ``PING`` (it must answer ``+PONG``), then ``INFO server`` for the version and uptime.

    ``username`` selects an ACL user (Redis 6+); without it ``AUTH`` logs in as the default
    user. A refused login is DOWN/``auth`` with the server's message (never the password); a
    server that wants a password the probe does not have answers ``PING`` with ``NOAUTH``,
    also DOWN/``auth``. Any other reply to ``PING`` is DOWN/``protocol`` naming what came back.
    With ``info`` false no ``INFO`` is sent (for servers that rename or forbid it) and there is
    no version metric. ``assertions`` see the INFO text as the body.
    """

    kind: ClassVar[str] = "redis"

    host: str = attrs.field(converter=_host)
    port: int = attrs.field(default=6379, validator=_port)
    password: Secret | None = None
    username: str | None = None
    tls: TlsOptions | None = None
    info: bool = True
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        check_host(self.host)
        password = check_secret("password", self.password)
        username: object = self.username
        if username is not None:
            if not isinstance(username, str) or not username:
                raise DefinitionError("username", f"expected a user name, got {username!r}")
            if password is None:
                raise DefinitionError("username", "a username needs a password")
        if self.tls is not None and not isinstance(self.tls, TlsOptions):
            raise DefinitionError("tls", f"expected TlsOptions, got {self.tls!r}")
        if not isinstance(self.info, bool):
            raise DefinitionError("info", f"expected true or false, got {self.info!r}")
        if not isinstance(self.timeouts, Timeouts):
            raise DefinitionError("timeouts", f"expected Timeouts, got {self.timeouts!r}")
        if not self.info:
            for i, assertion in enumerate(self.assertions):
                if isinstance(assertion, BodyContains | BodyMatches):
                    raise DefinitionError(
                        f"assertions[{i}]", "reads the INFO text, which is not fetched: set info"
                    )

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.connect(self.host, self.port, tls=self.tls)
        if self.password is not None:
            with attempt.phase("auth"):
                await self._auth(attempt, conn, self.password)
        with attempt.phase("command"):
            await self._ping(attempt, conn)
        if self.info:
            with attempt.phase("info"):
                text = await self._info(attempt, conn)
            _record_info(attempt, text, self.target)
            attempt.observe(body=text)

    async def _auth(self, attempt: Attempt, conn: Connection, password: Secret) -> None:
        parts = [b"AUTH"]
        if self.username is not None:
            parts.append(self.username.encode())
        parts.append(password.reveal().encode())
        await attempt.write(conn, _command(*parts))
        reply = await attempt.read_line(conn, max_bytes=LINE_LIMIT, what="AUTH reply")
        if reply == b"+OK\r\n":
            return
        if reply.startswith(b"-"):
            shown = _shown(reply[1:], password)
            log.debug("redis %s refused AUTH: %s", self.target, shown)
            raise ProbeFailure(ErrorKind.AUTH, f"AUTH refused: {shown}")
        raise ProbeFailure(
            ErrorKind.PROTOCOL, f"expected +OK to AUTH, got {_shown(reply, password)}"
        )

    async def _ping(self, attempt: Attempt, conn: Connection) -> None:
        await attempt.write(conn, _command(b"PING"))
        reply = await attempt.read_line(conn, max_bytes=LINE_LIMIT, what="PING reply")
        passed = reply == b"+PONG\r\n"
        shown = _shown(reply, self.password)
        attempt.outcome("pong", passed, "+PONG", shown)
        if passed:
            return
        if reply.startswith(b"-NOAUTH"):
            raise ProbeFailure(ErrorKind.AUTH, f"the server requires a password: {shown}")
        raise ProbeFailure(ErrorKind.PROTOCOL, f"expected +PONG to PING, got {shown}")

    async def _info(self, attempt: Attempt, conn: Connection) -> bytes:
        await attempt.write(conn, _command(b"INFO", b"server"))
        head = await attempt.read_line(conn, max_bytes=LINE_LIMIT, what="INFO reply")
        if head.startswith(b"-"):
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"INFO failed: {_shown(head[1:], self.password)} "
                "(set info to false for a server that does not allow INFO)",
            )
        bulk = _BULK.match(head)
        if bulk is None:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"expected a bulk string to INFO, got {_shown(head, self.password)}",
            )
        length = int(bulk.group(1))
        if length < 0:
            raise ProbeFailure(ErrorKind.PROTOCOL, "INFO answered with a null reply")
        if length > INFO_LIMIT:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"the INFO reply is {length} bytes, over the limit of {INFO_LIMIT}",
            )
        wanted = length + 2
        received = bytearray()
        while len(received) < wanted:
            data = await attempt.read(conn, wanted - len(received))
            if not data:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"the connection closed after {len(received)} of the INFO reply's "
                    f"{wanted} bytes",
                )
            received += data
        if not received.endswith(b"\r\n"):
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the INFO reply does not end with CRLF after {length} bytes"
            )
        return bytes(received[:length])


def _record_info(attempt: Attempt, text: bytes, target: str) -> None:
    """The version and uptime metrics from ``INFO server`` text (``key:value`` lines)."""
    fields: dict[str, str] = {}
    for line in text.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    version = fields.get("redis_version")
    number = _version_number(version) if version is not None else None
    if number is not None:
        attempt.metric("redis_version", number)
    else:
        log.debug("redis %s: no redis_version in INFO (%r)", target, version)
    uptime = fields.get("uptime_in_seconds", "")
    if uptime.isascii() and uptime.isdigit():
        attempt.metric("uptime_seconds", int(uptime))


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
    if tls is not None and not values.get("tls"):
        problems.append(DefinitionError("--insecure/--ca-file", "need --tls for redis checks"))
    if values.get("tls"):
        definition["tls"] = tls or {}
    if values.get("no_info"):
        definition["info"] = False
    try:
        body_assertions(values, definition)
    except DefinitionErrors as exc:
        problems.extend(exc.errors)
    if problems:
        raise DefinitionErrors(problems)


def _describe(version: float | None) -> str | None:
    if version is None:
        return None
    number = int(version)
    return f"redis {number // 10000}.{number // 100 % 100}.{number % 100}"


KIND = ProbeKind(
    name="redis",
    cls=RedisProbe,
    summary="PING a Redis server (AUTH first with a password), report its version",
    target=HostPort(default_port=6379),
    options=(
        Option(
            ("--password-env",),
            dest="password_env",
            metavar="VAR",
            sets=("password",),
            help="AUTH with the password in environment variable VAR",
        ),
        Option(
            ("--username",),
            field="username",
            metavar="NAME",
            help="the ACL user to AUTH as (Redis 6+; needs --password-env)",
        ),
        Option(
            ("--tls",),
            dest="tls",
            action="flag",
            sets=("tls",),
            help="speak TLS from the first byte (rediss)",
        ),
        *TLS_OPTIONS,
        Option(
            ("--no-info",),
            dest="no_info",
            action="flag",
            sets=("info",),
            help="do not send INFO server (no version metric)",
        ),
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric(
            "redis_version",
            "probekit_redis_version",
            "Redis server version as one number: major*10000 + minor*100 + patch (7.2.4 is 70204).",
        ),
        Metric(
            "uptime_seconds",
            "probekit_redis_uptime_seconds",
            "Seconds since the Redis server started (INFO uptime_in_seconds).",
        ),
    ),
    docs="probes/redis.md",
    tls_field="tls",
    describe=lambda result: _describe(result.metrics.get("redis_version")),
)
