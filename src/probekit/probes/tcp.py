"""TcpProbe: connect to ``host:port`` and, optionally, hold a short scripted conversation.

The script is a tuple of steps: :class:`Send` writes bytes, :class:`Expect` reads until a regex
or an exact byte string turns up, :class:`StartTls` upgrades the connection in the middle of the
exchange (SMTP-, IMAP-, LDAP-style STARTTLS). The connection comes from the shared dial path, so
resolution, the egress policy, proxies and direct TLS work as for every other probe.

Phases: ``resolve``, ``connect``, ``tls`` (direct TLS), then ``exchange`` for the steps; a
STARTTLS step splits it into ``exchange``, ``tls``, ``exchange``. Without steps there is no
``exchange`` phase: the check is a connect (and handshake) check.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, ClassVar, Final, TypeAlias

import attrs

from .._assertions import Assertion, assertion_tuple
from .._dial import Connection, Proxy
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._resolver import Family
from .._result import AssertionOutcome, ErrorKind
from .._secret import Secret
from .._timeouts import Timeouts
from .._tls import TlsOptions
from ._base import Attempt, ProbeBase
from ._fields import check_family, check_host, host_port
from ._fields import host as _host
from ._fields import port as _port
from ._kind import HostPort, Metric, Option, ProbeKind
from ._options import BODY_OPTIONS, TLS_OPTIONS, body_assertions, option_problem, tls_definition

__all__ = ["KIND", "Expect", "Send", "StartTls", "Step", "TcpProbe"]

_READ = 64 * 1024
_EXCERPT = 80


def _excerpt(data: bytes | bytearray) -> str:
    """A short, unambiguous rendering of received bytes for messages and outcomes."""
    if not data:
        return "nothing"
    if len(data) <= _EXCERPT:
        return repr(bytes(data))
    return f"{bytes(data[:_EXCERPT])!r}… ({len(data)} bytes)"


def _utf8(field: str, text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise DefinitionError(field, "is not valid Unicode (a lone surrogate)") from None


def _data(value: bytes | str | Secret) -> bytes | Secret:
    raw: object = value
    if isinstance(raw, Secret):
        return raw
    if isinstance(raw, str):
        return _utf8("data", raw)
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    raise DefinitionError("data", f"expected bytes or str, got {type(raw).__name__}")


def _exact(value: bytes | str | None) -> bytes | None:
    raw: object = value
    if raw is None:
        return None
    if isinstance(raw, str):
        return _utf8("exact", raw)
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    raise DefinitionError("exact", f"expected bytes or str, got {type(raw).__name__}")


@attrs.frozen
class Send:
    """Write ``data`` to the peer; a str is sent UTF-8 encoded, as written (no escapes).

    ``data`` may be a :class:`~probekit.Secret` (a token or password a line protocol sends):
    it is revealed only when written, and the step shows, serialises and logs as ``<secret>``.
    """

    data: bytes | Secret = attrs.field(converter=_data)

    def __attrs_post_init__(self) -> None:
        if not self.data:
            raise DefinitionError("data", "nothing to send")

    def payload(self) -> bytes:
        """The bytes to write."""
        data = self.data
        return data.reveal().encode() if isinstance(data, Secret) else data


@attrs.frozen
class Expect:
    """Read until the bytes received match; give exactly one of ``pattern`` or ``exact``.

    ``pattern`` is a regex searched in the bytes received so far by this step, decoded as
    Latin-1 (so every byte is one character and ``\\xff`` matches byte 0xff), in multi-line
    mode: ``^`` and ``$`` match at every line, as line protocols (SMTP, FTP, POP3) expect.
    ``exact`` is a byte string (a str is UTF-8 encoded) that must appear. The match is tried
    after every read, so it is made as soon as possible: ``\\d+`` may match the first digit
    of a longer number. The bytes through the end of the match are consumed; the rest stay for
    the next step.
    """

    pattern: str | None = None
    exact: bytes | None = attrs.field(default=None, converter=_exact)
    _regex: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.pattern is None and self.exact is None:
            raise DefinitionError("pattern", "give pattern or exact")
        if self.pattern is not None and self.exact is not None:
            raise DefinitionError("exact", "give pattern or exact, not both")
        regex = None
        if self.pattern is not None:
            if not isinstance(self.pattern, str):
                raise DefinitionError(
                    "pattern", f"a pattern must be a string, got {type(self.pattern).__name__}"
                )
            if not self.pattern:
                raise DefinitionError("pattern", "an empty pattern matches anything")
            try:
                regex = re.compile(self.pattern, re.MULTILINE)
            except re.error as exc:
                raise DefinitionError("pattern", f"invalid regex: {exc}") from None
        elif not self.exact:
            raise DefinitionError("exact", "an empty byte string matches anything")
        object.__setattr__(self, "_regex", regex)

    def describe(self) -> str:
        if self.pattern is not None:
            return f"pattern {self.pattern!r}"
        return f"exact {self.exact!r}"

    def _find(self, buffer: bytearray, start: int) -> tuple[int, int] | None:
        """The span of the first match in ``buffer`` (searched from ``start`` for ``exact``)."""
        if self._regex is not None:
            match = self._regex.search(buffer.decode("latin-1"))
            return match.span() if match else None
        assert self.exact is not None
        at = buffer.find(self.exact, start)
        return (at, at + len(self.exact)) if at >= 0 else None

    def _resume(self, searched: int) -> int:
        """Where the next search of ``exact`` may start after ``searched`` bytes found nothing."""
        if self.exact is None:
            return 0
        return max(0, searched - len(self.exact) + 1)


@attrs.frozen
class StartTls:
    """Upgrade the connection to TLS here, after the protocol's own STARTTLS command."""

    options: TlsOptions = attrs.field(factory=TlsOptions)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.options, TlsOptions):
            raise DefinitionError("options", f"expected TlsOptions, got {self.options!r}")


Step: TypeAlias = Send | Expect | StartTls


def _steps(value: Iterable[Step]) -> tuple[Step, ...]:
    raw: object = value
    if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
        raise DefinitionError("steps", f"expected a sequence of steps, got {type(raw).__name__}")
    return tuple(value)


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    raw: object = value
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        raise DefinitionError(attribute.name, f"must be a positive integer, got {value!r}")


@attrs.frozen
class TcpProbe(ProbeBase):
    """Check a TCP service: connect, optionally with TLS, then run ``steps``.

    With ``tls`` the connection is TLS from the first byte; a :class:`StartTls` step upgrades it
    later instead (at most one, and not with ``tls``). At most ``max_bytes`` are read over the
    whole exchange; an :class:`Expect` that has not matched when the cap is reached fails the
    check. Bytes are read only by :class:`Expect` steps; ``assertions`` see them all as the body.
    ``timeouts.read`` bounds each wait for bytes, ``timeouts.total`` the whole check.

    Every :class:`Expect` is recorded as an ``expect`` assertion outcome. One that cannot match
    (the peer closed the connection or the cap was hit) makes the check DOWN with a
    ``protocol`` error; one still waiting at a deadline gives a ``timeout`` in ``exchange``.
    """

    kind: ClassVar[str] = "tcp"

    host: str = attrs.field(converter=_host)
    port: int = attrs.field(validator=_port)
    tls: TlsOptions | None = None
    steps: tuple[Step, ...] = attrs.field(default=(), converter=_steps)
    max_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    ip_family: Family | None = None
    proxy: Proxy | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        check_host(self.host)
        if self.tls is not None and not isinstance(self.tls, TlsOptions):
            raise DefinitionError("tls", f"expected TlsOptions, got {self.tls!r}")
        check_family(self.ip_family)
        upgraded = False
        for i, step in enumerate(self.steps):
            if not isinstance(step, Send | Expect | StartTls):
                raise DefinitionError(
                    f"steps[{i}]", f"{step!r} is not a Send, Expect or StartTls step"
                )
            if isinstance(step, StartTls):
                if self.tls is not None:
                    raise DefinitionError(
                        f"steps[{i}]", "StartTls on a connection that is already TLS"
                    )
                if upgraded:
                    raise DefinitionError(f"steps[{i}]", "at most one StartTls step")
                upgraded = True

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    async def run(self, attempt: Attempt) -> None:
        conn = await attempt.ctx.dialer.connect(
            self.host,
            self.port,
            attempt.timeline,
            self.timeouts,
            tls=self.tls,
            proxy=self.proxy,
            family=self.ip_family,
        )
        exchange = _Exchange(self, attempt, conn)
        try:
            attempt.address = conn.address
            attempt.record_tls(conn.tls)
            await exchange.run()
        finally:
            conn.close()
            attempt.metrics["bytes_received"] = len(exchange.received)
            attempt.metrics["bytes_sent"] = exchange.sent
        attempt.observe(body=exchange.masked(exchange.received))


class _Exchange:
    """The conversation of one check: what was sent, received, and not yet consumed."""

    __slots__ = ("attempt", "conn", "pending", "probe", "received", "secrets", "sent")

    def __init__(self, probe: TcpProbe, attempt: Attempt, conn: Connection) -> None:
        self.probe = probe
        self.attempt = attempt
        self.conn = conn
        self.received = bytearray()  # everything read, for the assertions
        self.pending = bytearray()  # read but not yet consumed by an Expect
        self.sent = 0
        self.secrets: list[bytes] = []  # what Secret steps sent: masked if the peer echoes it

    async def run(self) -> None:
        segment: list[Send | Expect] = []
        for step in self.probe.steps:
            if isinstance(step, StartTls):
                await self._segment(segment, upgrade_next=True)
                segment = []
                await self._start_tls(step)
            else:
                segment.append(step)
        await self._segment(segment, upgrade_next=False)

    async def _segment(self, steps: list[Send | Expect], *, upgrade_next: bool) -> None:
        if not steps:
            return
        with self.attempt.timeline.phase("exchange"):
            for step in steps:
                if isinstance(step, Send):
                    await self._send(step)
                else:
                    await self._expect(step)
            if upgrade_next and self.pending:
                # Plain-text bytes after the server's go-ahead would be read back as if they had
                # come through TLS (the STARTTLS injection flaw); a correct server sends none.
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"{len(self.pending)} unexpected bytes before the TLS upgrade: "
                    f"{self._excerpt(self.pending)}",
                )

    async def _start_tls(self, step: StartTls) -> None:
        attempt = self.attempt
        info = await attempt.ctx.dialer.start_tls(
            self.conn,
            self.probe.host,
            step.options,
            attempt.timeline,
            self.probe.timeouts,
            diagnose=False,
        )
        attempt.record_tls(info)

    async def _send(self, step: Send) -> None:
        conn = self.conn
        data = step.payload()
        if isinstance(step.data, Secret):
            self.secrets.append(data)
        conn.write(data)
        self.sent += len(data)
        await conn.drain()

    async def _expect(self, step: Expect) -> None:
        cap = self.probe.max_bytes
        pending = self.pending
        start = 0
        outcome: AssertionOutcome | None = None
        try:
            while True:
                span = step._find(pending, start)
                if span is not None:
                    matched = bytes(pending[span[0] : span[1]])
                    del pending[: span[1]]
                    outcome = AssertionOutcome(
                        "expect", True, step.describe(), f"match {self._excerpt(matched)}"
                    )
                    return
                room = cap - len(self.received)
                if room <= 0:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL,
                        f"read max_bytes ({cap}) without finding {step.describe()}; "
                        f"got {self._excerpt(pending)}",
                    )
                start = step._resume(len(pending))
                data = await self._read(min(room, _READ))
                if not data:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL,
                        f"expected {step.describe()} but the connection closed; "
                        f"got {self._excerpt(pending)}",
                    )
                self.received += data
                pending += data
        finally:
            if outcome is None:
                outcome = AssertionOutcome("expect", False, step.describe(), self._excerpt(pending))
            self.attempt.assertions.append(outcome)

    async def _read(self, size: int) -> bytes:
        return await self.conn.read(size, self.probe.timeouts.read)

    def _excerpt(self, data: bytes | bytearray) -> str:
        """An excerpt of received bytes with every secret this check sent masked: a server
        that echoes a password must not put it in the result."""
        return _excerpt(self.masked(data))

    def masked(self, data: bytes | bytearray) -> bytes:
        out = bytes(data)
        for secret in self.secrets:
            out = out.replace(secret, b"<secret>")
        return out


# -- the plain-data and command-line forms --------------------------------------------------------

_STEP_KEYS: Final = "send, send_hex, expect, expect_exact or starttls"


def _structure_steps(data: Any, path: str) -> tuple[Step, ...]:
    """Steps from one-key objects: ``{"send": "text"}``, ``{"send_hex": "0d0a"}``,
    ``{"expect": "regex"}``, ``{"expect_exact": "text"}``, ``{"starttls": {tls options}}``."""
    from .._structure import nested

    if isinstance(data, str | bytes) or not isinstance(data, list | tuple):
        raise DefinitionError(path, f"expected a list, got {type(data).__name__}")
    steps: list[Step] = []
    errors: list[DefinitionError] = []
    for i, item in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping) or len(item) != 1:
            errors.append(DefinitionError(where, f"a step is one key: {_STEP_KEYS}"))
            continue
        ((key, value),) = item.items()
        try:
            if key == "send" and isinstance(value, str):
                steps.append(Send(value))
            elif key == "send" and isinstance(value, Mapping):
                steps.append(Send(nested(Secret, value, f"{where}.send")))
            elif key == "send_hex" and isinstance(value, str):
                try:
                    steps.append(Send(bytes.fromhex(value)))
                except ValueError:
                    errors.append(DefinitionError(f"{where}.send_hex", "not hexadecimal"))
            elif key == "expect" and isinstance(value, str):
                steps.append(Expect(pattern=value))
            elif key == "expect_exact" and isinstance(value, str):
                steps.append(Expect(exact=value))
            elif key == "starttls":
                steps.append(StartTls(nested(TlsOptions, value or {}, f"{where}.starttls")))
            else:
                errors.append(DefinitionError(f"{where}.{key}", "unknown step or wrong value type"))
        except DefinitionErrors as exc:
            errors.extend(exc.errors)
        except DefinitionError as exc:
            errors.append(exc.under(where))
    if errors:
        raise DefinitionErrors(errors)
    return tuple(steps)


def _unstructure_steps(steps: tuple[Step, ...]) -> list[dict[str, Any]]:
    from .._serialization import converter

    out: list[dict[str, Any]] = []
    for step in steps:
        if isinstance(step, Send):
            if isinstance(step.data, Secret):
                out.append({"send": str(step.data)})  # masked, like every secret
                continue
            try:
                out.append({"send": step.data.decode()})
            except UnicodeDecodeError:
                out.append({"send_hex": step.data.hex()})
        elif isinstance(step, Expect):
            if step.pattern is not None:
                out.append({"expect": step.pattern})
            else:
                assert step.exact is not None
                out.append({"expect_exact": step.exact.decode("utf-8", "replace")})
        else:
            out.append({"starttls": converter.unstructure(step.options)})
    return out


_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)", re.S)
_ESCAPES: Final = {"r": "\r", "n": "\n", "t": "\t", "0": "\0", "\\": "\\"}


def unescape(text: str) -> bytes:
    r"""The bytes a --send argument means: its text UTF-8 encoded, with ``\r``, ``\n``,
    ``\t``, ``\0`` and ``\\`` read as escapes and ``\xHH`` as the raw byte HH (so
    ``\x80`` is one byte, as a binary handshake such as PostgreSQL's SSLRequest needs)."""
    out = bytearray()
    at = 0
    for match in _ESCAPE.finditer(text):
        out += _utf8("data", text[at : match.start()])
        code = match.group(1)
        if code.startswith("x") and len(code) == 3:
            out.append(int(code[1:], 16))
        else:
            out += _utf8("data", _ESCAPES.get(code, match.group(0)))
        at = match.end()
    out += _utf8("data", text[at:])
    return bytes(out)


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems: list[DefinitionError] = []
    steps: list[dict[str, str]] = []
    for name, value in values.get("ordered") or ():
        try:
            if name == "send":
                data = Send(unescape(value)).payload()
                try:
                    steps.append({"send": data.decode("utf-8")})
                except UnicodeDecodeError:
                    steps.append({"send_hex": data.hex()})
            else:
                steps.append({"expect": Expect(pattern=value).pattern or ""})
        except DefinitionError as exc:
            problems.append(option_problem(f"--{name}", exc))
    if steps:
        definition["steps"] = steps
    try:
        tls = tls_definition(values)
    except DefinitionError as exc:
        problems.append(exc)
        tls = None
    if tls is not None and not values.get("tls"):
        problems.append(DefinitionError("--insecure/--ca-file", "need --tls for tcp checks"))
    if values.get("tls"):
        definition["tls"] = tls or {}
    try:
        body_assertions(values, definition)
    except DefinitionErrors as exc:
        problems.extend(exc.errors)
    if problems:
        raise DefinitionErrors(problems)


KIND = ProbeKind(
    name="tcp",
    cls=TcpProbe,
    summary="connect to HOST:PORT (optionally TLS), optionally send and expect bytes",
    target=HostPort(),
    options=(
        Option(
            ("--tls",),
            dest="tls",
            action="flag",
            sets=("tls",),
            help="speak TLS from the first byte",
        ),
        *TLS_OPTIONS,
        Option(
            ("--send",),
            dest="send",
            action="ordered",
            metavar="TEXT",
            sets=("steps",),
            help=r"send TEXT (\r \n \t \0 \\ \xHH are read as escapes)",
        ),
        Option(
            ("--expect",),
            dest="expect",
            action="ordered",
            metavar="RE",
            sets=("steps",),
            help="read until RE matches (steps run in the order given)",
        ),
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric("bytes_received", "probekit_tcp_bytes_received", "Bytes read from the peer."),
        Metric("bytes_sent", "probekit_tcp_bytes_sent", "Bytes sent to the peer."),
    ),
    docs="probes/tcp.md",
    tls_field="tls",
    structure={"steps": _structure_steps},
    unstructure={"steps": _unstructure_steps},
)
