"""What every probe shares: the contract, the base class, and the attempt a probe body runs in.

A probe kind writes only its body::

    @attrs.frozen
    class RedisProbe(ProbeBase):
        kind: ClassVar[str] = "redis"
        host: str
        port: int = 6379
        timeouts: Timeouts = attrs.field(factory=Timeouts)

        @property
        def target(self) -> str:
            return f"{self.host}:{self.port}"

        async def run(self, attempt: Attempt) -> None:
            conn = await attempt.connect(self.host, self.port)
            with attempt.phase("command"):
                conn.write(b"PING\\r\\n")
                line = await attempt.read_line(conn)
            ...

and :class:`ProbeBase` gives it ``check()``: the deadline (the earlier of ``timeouts.total``
and the caller's), the timeline, the classification of whatever the body raises into an error
kind naming the phase that was running, assertion evaluation, the Result, and the closing of
every connection the attempt opened.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from .._assertions import Assertion, Observation
from .._context import ProbeContext, default_context
from .._deadline import after
from .._dial import Connection, Datagram, Proxy, TlsVerifyFailure
from .._errors import classify
from .._result import AssertionOutcome, ErrorKind, ProbeError, Result, Status, TlsInfo
from .._timeline import Timeline, _PhaseScope
from .._timeouts import Timeouts
from .._tls import TlsOptions, earliest_expiry_days

if TYPE_CHECKING:
    from .._policy import IPAddress
    from .._resolver import Family

__all__ = ["Attempt", "Probe", "ProbeBase", "execute"]

log = logging.getLogger("probekit.probe")

#: How many bytes a line read takes at most unless the probe says otherwise.
DEFAULT_LINE_LIMIT = 64 * 1024


@runtime_checkable
class Probe(Protocol):
    """The contract every probe follows: a frozen definition with one coroutine.

    ``kind`` names the probe class for config loading; ``target`` is what it checks (a URL,
    ``host:port``); ``host`` is used for per-host concurrency limits.
    """

    kind: ClassVar[str]

    @property
    def timeouts(self) -> Timeouts: ...

    @property
    def target(self) -> str: ...

    @property
    def host(self) -> str: ...

    async def check(self, ctx: ProbeContext | None = None) -> Result: ...


class Attempt:
    """One run of one check: what a probe body uses, and the scratch state that becomes its Result.

    Everything that touches the network goes through the context's dialer, so the egress policy,
    the resolver, IP pinning and the ``resolve``/``connect``/``tls`` phases hold for every kind.
    Per-wait limits come from the probe's :class:`Timeouts` (``read`` for each read), so a body
    never passes them along. Connections, sockets and datagram endpoints the attempt opened are
    closed when the check ends, however it ends.
    """

    __slots__ = (
        "_evaluated",
        "_observed",
        "_open",
        "address",
        "assertions",
        "ctx",
        "metrics",
        "timeline",
        "timeouts",
        "tls",
    )

    def __init__(self, ctx: ProbeContext, timeouts: Timeouts | None = None) -> None:
        self.ctx = ctx
        self.timeouts = timeouts if timeouts is not None else Timeouts()
        self.timeline = Timeline(ctx.clock)
        self.metrics: dict[str, float] = {}
        self.assertions: list[AssertionOutcome] = []
        self.tls: TlsInfo | None = None
        self.address: str | None = None
        self._open: list[Connection | socket.socket | Datagram] | None = None
        self._observed: dict[str, Any] | None = None
        self._evaluated = False

    # -- phases, metrics, outcomes -------------------------------------------------------------

    def phase(self, name: str) -> _PhaseScope:
        """Time a ``with`` block as phase ``name``; a failure inside names this phase."""
        return self.timeline.phase(name)

    def elapsed(self) -> float:
        """Seconds since the check started."""
        return self.timeline.now()

    def metric(self, name: str, value: float) -> None:
        """Record a metric of the result (declare it in the kind's ``metrics`` to export it)."""
        self.metrics[name] = float(value)

    def outcome(
        self,
        name: str,
        passed: bool,
        expected: str,
        actual: str,
        *,
        severity: Status = Status.DOWN,
    ) -> AssertionOutcome:
        """Record an assertion outcome the probe decided itself; a failed one makes the check
        ``severity`` (DOWN, or DEGRADED for a warning threshold)."""
        result = AssertionOutcome(name, passed, expected, actual, severity)
        self.assertions.append(result)
        return result

    def observe(self, **seen: Any) -> None:
        """Say what the check saw, for its ``assertions`` (``body=``, ``status_code=``,
        ``headers=``); the base evaluates the probe's ``assertions`` against it at the end."""
        if self._observed is None:
            self._observed = {}
        self._observed.update(seen)

    def evaluate(self, assertions: Iterable[Assertion], **seen: Any) -> None:
        """Evaluate ``assertions`` now against what was observed (and ``seen``).

        A probe that calls this has evaluated its assertions itself; the base then does not.
        """
        if seen:
            self.observe(**seen)
        observation = Observation(
            elapsed=self.timeline.now(),
            tls=self.tls,
            cert_days_left=self.metrics.get("cert_days_left"),
            **(self._observed or {}),
        )
        self.assertions.extend(a.evaluate(observation) for a in assertions)
        self._evaluated = True

    def record_tls(self, info: TlsInfo | None) -> None:
        """Keep the TLS details of the check (and its ``cert_days_left`` metric)."""
        if info is None:
            return
        self.tls = info
        days = earliest_expiry_days(info, self.ctx.clock.now())
        if days is not None:
            self.metrics["cert_days_left"] = round(days, 4)

    # -- the dial path ---------------------------------------------------------------------------

    async def connect(
        self,
        host: str,
        port: int,
        *,
        tls: TlsOptions | None = None,
        proxy: Proxy | None = None,
        family: Family | None = None,
    ) -> Connection:
        """Open a TCP connection through the dial path: ``resolve`` → egress policy →
        ``connect`` to the checked address → ``tls`` when asked, each phase timed.

        The connection is closed when the check ends; the result records its address and TLS.
        """
        conn = await self.ctx.dialer.connect(
            host, port, self.timeline, self.timeouts, tls=tls, proxy=proxy, family=family
        )
        self._track(conn)
        self.address = conn.address
        self.record_tls(conn.tls)
        return conn

    async def start_tls(
        self, conn: Connection, host: str, options: TlsOptions | None = None
    ) -> None:
        """Upgrade an open connection to TLS (STARTTLS), timed as ``tls``."""
        info = await self.ctx.dialer.start_tls(
            conn,
            host,
            options if options is not None else TlsOptions(),
            self.timeline,
            self.timeouts,
            diagnose=False,
        )
        self.record_tls(info)

    async def open_socket(
        self, host: str, port: int, *, family: Family | None = None
    ) -> socket.socket:
        """A connected, non-blocking TCP socket for a client library that takes one
        (asyncssh ``connect(sock=...)``, aiosmtplib ``SMTP(sock=...)``, ...).

        It went through ``resolve``, the egress policy and a timed ``connect`` like any other
        connection; TLS, if any, is the library's (time it with :meth:`phase`). The attempt
        closes the socket when the check ends.
        """
        sock = await self.ctx.dialer.open_socket(
            host, port, self.timeline, self.timeouts, family=family
        )
        self._track(sock)
        peer = sock.getpeername()
        self.address = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        return sock

    async def datagram(
        self, host: str, port: int = 0, *, protocol: str = "udp", family: Family | None = None
    ) -> Datagram:
        """A connected datagram endpoint (``udp``, or ``icmp`` for echo requests) to ``host``.

        The host is resolved (timed) and every address checked against the egress policy before
        the socket exists; the first allowed address is used.
        """
        endpoint = await self.ctx.dialer.open_datagram(
            host, port, self.timeline, self.timeouts, protocol=protocol, family=family
        )
        self._track(endpoint)
        self.address = endpoint.address
        return endpoint

    async def resolve(self, host: str, *, family: Family | None = None) -> list[IPAddress]:
        """Resolve ``host`` (timed as ``resolve``); every address passed the egress policy."""
        return await self.ctx.dialer.resolve(host, self.timeline, self.timeouts, family=family)

    async def read(self, conn: Connection, size: int = 64 * 1024) -> bytes:
        """Up to ``size`` bytes (b"" at end of stream), waiting at most ``timeouts.read``."""
        return await conn.read(size, self.timeouts.read)

    async def read_until(
        self, conn: Connection, separator: bytes, *, max_bytes: int, what: str = "reply"
    ) -> bytes:
        """Bytes through ``separator``; a protocol failure naming ``what`` when ``max_bytes``
        pass without it or the peer closes first."""
        return await conn.read_until(separator, max_bytes, self.timeouts.read, what)

    async def read_line(
        self, conn: Connection, *, max_bytes: int = DEFAULT_LINE_LIMIT, what: str = "line"
    ) -> bytes:
        """One line, through its ``\\n`` (bounded like :meth:`read_until`)."""
        return await conn.read_until(b"\n", max_bytes, self.timeouts.read, what)

    async def write(self, conn: Connection, data: bytes) -> None:
        """Write ``data`` and wait while the peer is not reading it."""
        conn.write(data)
        await conn.drain()

    async def wait(self, awaitable: Awaitable[Any], limit: float | None = None) -> Any:
        """Await ``awaitable`` for at most ``limit`` seconds (default ``timeouts.read``);
        a timeout names the running phase. For client libraries with no timeouts of their own."""
        limit = self.timeouts.read if limit is None else limit
        if limit is None:
            return await awaitable
        with after(limit):
            return await awaitable

    def _track(self, resource: Connection | socket.socket | Datagram) -> None:
        if self._open is None:
            self._open = []
        self._open.append(resource)

    def _close_all(self) -> None:
        for resource in self._open or ():
            try:
                resource.close()
            except OSError as exc:  # closing is best effort; the result is already decided
                log.debug("closing %r failed: %s", resource, exc)
        self._open = None


Body = Callable[[Attempt], Awaitable[None]]


async def execute(
    kind: str,
    target: str,
    timeouts: Timeouts,
    ctx: ProbeContext | None,
    body: Body,
    assertions: tuple[Assertion, ...] = (),
    prepare: Callable[[ProbeContext], None] | None = None,
) -> Result:
    """Run ``body`` under the check's deadline and turn whatever happens into a Result.

    A failure of the target (any exception the backends raise) becomes an error of the right
    kind naming the phase that was running; a bug becomes ``UNKNOWN``/``internal``. A check whose
    deadline has already passed when it starts is ``DOWN``/``timeout`` without running ``body``.
    ``assertions`` are evaluated after a body that did not evaluate them itself.
    ``prepare`` (see :meth:`ProbeBase.prepare`) runs before the check's clock starts.
    Cancellation is never swallowed.
    """
    ctx = ctx or default_context()
    if prepare is not None:
        try:
            prepare(ctx)
        except Exception as exc:  # noqa: BLE001 - the body meets it again and classifies it
            log.debug("preparing a %s check of %s failed: %r", kind, target, exc)
    clock = ctx.clock
    started_at = clock.now()
    attempt = Attempt(ctx, timeouts)
    timeline = attempt.timeline
    deadline = timeline.start + timeouts.total
    if ctx.deadline is not None and ctx.deadline < deadline:
        deadline = ctx.deadline
        if deadline <= timeline.start:
            # Checked before the body runs: a body reaches its first dial before a timer due
            # now could cancel it, so a check that starts late would still send packets.
            return Result(
                kind=kind,
                target=target,
                status=Status.DOWN,
                started_at=started_at,
                duration=clock.monotonic() - timeline.start,
                error=ProbeError(
                    ErrorKind.TIMEOUT, "the deadline had passed before the check started", None
                ),
            )
    error: ProbeError | None = None
    try:
        with after(max(deadline - clock.monotonic(), 0.0)):
            await body(attempt)
            if assertions and not attempt._evaluated:
                attempt.evaluate(assertions)
    except TlsVerifyFailure as exc:
        attempt.record_tls(exc.tls)
        error = classify(exc, timeline.current)
    except asyncio.CancelledError:
        attempt._close_all()
        raise
    except Exception as exc:  # noqa: BLE001 - the one place any failure becomes a result
        error = classify(exc, timeline.current)
    if attempt._open is not None:
        attempt._close_all()
    duration = clock.monotonic() - timeline.start
    status = Status.UP
    if error is not None:
        status = Status.UNKNOWN if error.kind is ErrorKind.INTERNAL else Status.DOWN
    else:
        failed = [a for a in attempt.assertions if not a.passed]
        for outcome in failed:
            status = status.worst(outcome.severity)
        if failed:
            worst = next(a for a in failed if a.severity is status)
            error = ProbeError(ErrorKind.ASSERTION, worst.describe(), None)
    return Result(
        kind=kind,
        target=target,
        status=status,
        started_at=started_at,
        duration=duration,
        error=error,
        phases=tuple(timeline.phases),
        metrics=attempt.metrics,
        assertions=tuple(attempt.assertions),
        tls=attempt.tls,
        address=attempt.address,
    )


class ProbeBase:
    """The base every probe builds on, built-in and third-party alike.

    Subclass it with a frozen attrs class that declares ``kind`` (a ``ClassVar[str]``), its
    fields (including ``timeouts: Timeouts``; an ``assertions`` field is evaluated for you),
    a ``target`` property (what the check is of, as people write it) and the body::

        async def run(self, attempt: Attempt) -> None: ...

    The body raises :class:`~probekit.ProbeFailure` for failures it recognises (a wrong banner,
    a refused login) and lets everything else propagate: timeouts, refused connections, TLS and
    policy errors are classified by the base. ``host`` (used for per-host concurrency limits)
    defaults to the host part of ``target``. Secrets belong in :class:`~probekit.Secret` fields,
    which print, serialise and log as ``<secret>``.
    """

    __slots__ = ()

    kind: ClassVar[str]

    if TYPE_CHECKING:

        @property
        def timeouts(self) -> Timeouts: ...

    @property
    def target(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} must define the 'target' property")

    @property
    def host(self) -> str:
        target = self.target
        if "://" in target:
            target = target.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        if target.startswith("["):
            return target[1:].split("]", 1)[0]
        host, sep, port = target.rpartition(":")
        return host if sep and port.isdigit() else target

    async def run(self, attempt: Attempt) -> None:
        """The body of one check; see the class documentation."""
        raise NotImplementedError(f"{type(self).__name__} must define 'async def run(attempt)'")

    def prepare(self, ctx: ProbeContext) -> None:
        """One-time set-up that belongs to no check: building an SSL context, importing a
        library on first use, opening the resolver's channel. It runs before each check's clock
        starts, so a process's first check measures the same work as its hundredth and its
        phases add up to its duration. It is called before every check, so it must be cheap
        once done, and it must not touch the network. Whatever it raises is ignored (the body
        meets the problem again and classifies it). The default does nothing.
        """

    async def check(self, ctx: ProbeContext | None = None) -> Result:
        """Run one check and return its Result; never raises because the target failed."""
        assertions: tuple[Assertion, ...] = getattr(self, "assertions", ())
        return await execute(
            self.kind, self.target, self.timeouts, ctx, self.run, assertions, self.prepare
        )
