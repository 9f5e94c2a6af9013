"""The checkpoint agent: one instance of a private checkpoint, dialling out to its control plane.

A :class:`Checkpoint` keeps one WebSocket connection to the control plane open (``wss://``, or
``ws://`` only when the settings say ``insecure=True``), authenticated with a bearer token. It
receives monitor definitions (``sync``) and run commands (``run``), runs the checks through a
:class:`~probekit.Runner`, and sends the results back (``results``) until the control plane acks
them. The messages are the typed values of :mod:`probekit.protocol`::

    settings = CheckpointSettings(
        url="wss://control.example/checkpoint",
        token=Secret(os.environ["CHECKPOINT_TOKEN"]),
        checkpoint_id="dc1",
        instance_id="dc1-a",
        spool_path="/var/lib/probekit/spool.db",
    )
    async with Checkpoint(settings) as checkpoint:
        await stop_requested.wait()
    # leaving the block drains: finish in-flight checks, deliver their results, close

or ``await Checkpoint(settings).run()``, which returns after :meth:`Checkpoint.drain` (or a
``drain`` from the control plane) has finished. For SIGTERM, call :meth:`Checkpoint.request_drain`
from the signal handler (``loop.add_signal_handler(signal.SIGTERM, checkpoint.request_drain)``).

What it promises:

- **The network belongs to the operator.** Every check runs with a context whose dialer has the
  *local* ``settings.policy``; nothing the control plane sends changes it, and a definition aimed
  at a denied address gives a ``DOWN``/``policy_denied`` result without a socket being opened.
  A ``context`` passed to the constructor contributes its dialer's resolver, connector, address
  preference and source address, its clock and its secrets; its dialer's *policy* and its
  deadline are ignored (the dialer is copied with ``settings.policy`` put in).
- **At-least-once delivery.** Every result is written to the spool (SQLite, WAL) before it is
  sent, and leaves it only when the control plane acks its id. Results sent on a connection that
  is lost unacked are sent again on the next one; the control plane deduplicates by
  ``result_id`` (a fresh ``uuid4().hex`` per result). The spool is bounded: when full, the oldest
  results are dropped and counted (``spool_dropped``).
- **Autonomous mode.** While the last ``sync`` said ``autonomous``, or while disconnected (with
  ``autonomous_when_disconnected``), the held definitions run on a local :class:`Scheduler` at
  their intervals (reason ``scheduled``); their results wait in the spool for the channel. Being
  connected again in driven mode stops the local schedule (runs in flight finish).
- **Resilient channel.** Reconnects with exponential backoff and full jitter (``reconnect_initial``
  doubling up to ``reconnect_max``); a dead peer is noticed by WebSocket pings, and the connection
  given up, within ``ping_interval + 2 * ping_timeout`` seconds. A frame the control plane gets
  wrong is answered with an ``error`` message and the connection keeps serving; only
  ``bad_version`` and ``unauthorized`` also close it (then the checkpoint reconnects).
- **Definitions.** A ``sync`` definition that does not build is answered with
  ``error``/``bad_field`` (``ref`` = its monitor id) and not held; the others are. A ``run`` for
  an unknown monitor or with an invalid inline definition is answered with an ``error`` (``ref``
  = its request id) and gives no result. ``{"secret": NAME}`` references resolve in
  ``settings.secrets``; definitions from the network may not read environment variables or
  files. Definitions are held in memory only: after a restart the ``hello`` holds nothing and the
  control plane sends everything again.
- **Privacy switches** apply before a result is spooled: ``strip_addresses`` drops
  ``Result.address`` and replaces IP addresses in the error message with ``<address>``
  (``tls.server_name`` is kept); ``strip_tls_chain`` drops the certificate chain;
  ``strip_messages`` empties error messages and the observed texts of assertions (they may hold
  response content).
- **The token never shows**: it is sent only in the handshake's ``Authorization`` header, and
  the logger handed to ``websockets`` masks it, even at DEBUG.
- **Self-observability**: :attr:`Checkpoint.stats`, a ``heartbeat`` every
  ``heartbeat_interval`` seconds, and optionally ``/metrics`` (Prometheus text) and ``/ready``
  (200 when connected or running the local schedule, else 503) over HTTP on
  ``metrics_host:metrics_port``.

Logging goes to ``probekit.checkpoint`` (and ``websockets.client`` for the channel itself).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import logging
import math
import random
import re
import ssl
import types
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self, cast
from urllib.parse import urlsplit

import attrs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .. import __version__
from .._clock import Clock, SystemClock
from .._context import ProbeContext
from .._definitions import build_probe, probe_kinds
from .._dial import Dialer
from .._exceptions import DefinitionError
from .._logging import MaskingLogger
from .._policy import EgressPolicy
from .._pool import ProcessRunner, worker_dialing
from .._result import ErrorKind, ProbeError, Result, Status
from .._runner import Runner
from .._scheduler import Monitor, Scheduler
from .._secret import Secret
from .._serialization import converter
from ..probes._base import Probe
from ..protocol import (
    FROM_CONTROL,
    MAX_FRAME_BYTES,
    MAX_ID_LENGTH,
    PROTOCOL_VERSION,
    Ack,
    Drain,
    Error,
    ErrorCode,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    ResultEnvelope,
    Run,
    Sync,
    decode,
    encode,
    error_reply,
)
from ._spool import AsyncSpool, Entry, SpoolError

__all__ = ["Checkpoint", "CheckpointSettings"]

log = logging.getLogger("probekit.checkpoint")

#: The largest WebSocket message accepted from the control plane. Frames between the protocol's
#: own limit (1 MiB) and this one are answered with ``error``/``too_large`` and the connection
#: keeps serving; larger ones make ``websockets`` close it (1009).
_MAX_INCOMING: Final = 4 * 1024 * 1024
#: A results frame stays below what a control plane's ``decode`` reads by default.
_FRAME_BUDGET: Final = MAX_FRAME_BYTES - 1024
#: One spooled result must fit in a frame of its own, with room to spare.
_MAX_ENTRY_BYTES: Final = MAX_FRAME_BYTES // 2
#: How often the sender looks at the spool without being woken.
_SEND_POLL: Final = 0.05
#: Results sent on one connection and not yet acked, in batches: beyond this the sender waits.
_WINDOW_BATCHES: Final = 8
#: The metrics endpoint reads at most this much of a request, for at most this long.
_HTTP_LIMIT: Final = 8192
_HTTP_TIMEOUT: Final = 5.0
_MAX_ERROR_TEXT: Final = 1000

_RESULTS_HEAD: Final = f'{{"type":"results","version":{PROTOCOL_VERSION},"results":['.encode()


# -- settings -------------------------------------------------------------------------------------


def _ident(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise DefinitionError(attribute.name, f"must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise DefinitionError(attribute.name, f"is longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise DefinitionError(attribute.name, "contains a control or unprintable character")


def _text(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise DefinitionError(attribute.name, f"must be a non-empty string, got {value!r}")


def _optional_text(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _text(_inst, attribute, value)


def _flag(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise DefinitionError(attribute.name, f"must be true or false, got {value!r}")


def _positive_int(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionError(attribute.name, f"must be a positive integer, got {value!r}")


def _seconds(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DefinitionError(
            attribute.name, f"must be a positive number of seconds, got {value!r}"
        )


def _port(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise DefinitionError(attribute.name, f"must be a port number (0-65535), got {value!r}")


def _token(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Secret):
        raise DefinitionError(attribute.name, "must be a Secret")
    if not value:
        raise DefinitionError(attribute.name, "must not be empty")
    text = value.reveal()
    if not text.isprintable() or any(c.isspace() for c in text):
        raise DefinitionError(attribute.name, "must not contain spaces or control characters")


def _policy(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, EgressPolicy):
        raise DefinitionError(attribute.name, f"must be an EgressPolicy, got {value!r}")


def _secrets(value: Mapping[str, Secret]) -> Mapping[str, Secret]:
    if not isinstance(value, Mapping):
        raise DefinitionError("secrets", "must be a mapping of names to Secret values")
    for name, secret in value.items():
        if not isinstance(name, str) or not isinstance(secret, Secret):
            raise DefinitionError(f"secrets[{name!r}]", "must map a name to a Secret")
    return types.MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class CheckpointSettings:
    """Everything one checkpoint instance is configured with; all of it is local configuration.

    ``url`` is the control plane's WebSocket URL: ``wss://`` (verified against the system's
    trust store, or ``ca_file`` when given), or ``ws://`` only with ``insecure=True``. ``token``
    is sent as ``Authorization: Bearer …`` in the handshake and nowhere else. ``spool_path`` is
    the SQLite spool (``":memory:"`` keeps it in memory, for tests), holding at most
    ``spool_max_entries`` results.

    ``policy`` is the egress policy every check runs under; ``secrets`` resolves
    ``{"secret": NAME}`` references in definitions. ``max_concurrency`` bounds the checks that
    execute at once and ``max_queued_runs`` the run commands accepted and not yet finished
    (beyond it a run is refused with an ``error``). ``processes`` above 1 runs the checks in
    that many worker processes (a :class:`~probekit.ProcessRunner`, ``max_concurrency`` being
    the total), to use more than one core; the context given to the checkpoint must then be
    one that can cross a process boundary (no custom connector, resolver class or clock).

    Timing, in seconds: ``heartbeat_interval``; ``reconnect_initial`` and ``reconnect_max`` (the
    backoff range); ``ping_interval`` and ``ping_timeout`` (dead-peer detection);
    ``open_timeout`` (TCP, TLS and WebSocket handshakes together); ``drain_timeout`` (how long a
    drain waits for acks of what it sent). ``batch_size`` is the most results in one ``results``
    frame (which also stays under 1 MiB).

    ``autonomous_when_disconnected`` runs the held definitions locally while the channel is
    down. ``strip_addresses``, ``strip_tls_chain`` and ``strip_messages`` remove details from
    results before they are spooled (see the module documentation). ``metrics_port`` (``0``
    picks a free one) enables the ``/metrics`` and ``/ready`` endpoint on ``metrics_host``.
    """

    url: str = attrs.field(validator=_text)
    token: Secret = attrs.field(validator=_token, repr=False)
    checkpoint_id: str = attrs.field(validator=_ident)
    instance_id: str = attrs.field(validator=_ident)
    spool_path: str = attrs.field(validator=_text)
    spool_max_entries: int = attrs.field(default=100_000, validator=_positive_int)
    policy: EgressPolicy = attrs.field(factory=EgressPolicy, validator=_policy)
    ca_file: str | None = attrs.field(default=None, validator=_optional_text)
    insecure: bool = attrs.field(default=False, validator=_flag)
    max_concurrency: int = attrs.field(default=100, validator=_positive_int)
    processes: int = attrs.field(default=1, validator=_positive_int)
    max_queued_runs: int = attrs.field(default=10_000, validator=_positive_int)
    heartbeat_interval: float = attrs.field(default=5.0, validator=_seconds)
    batch_size: int = attrs.field(default=500, validator=_positive_int)
    reconnect_initial: float = attrs.field(default=0.5, validator=_seconds)
    reconnect_max: float = attrs.field(default=30.0, validator=_seconds)
    ping_interval: float = attrs.field(default=5.0, validator=_seconds)
    ping_timeout: float = attrs.field(default=5.0, validator=_seconds)
    open_timeout: float = attrs.field(default=10.0, validator=_seconds)
    drain_timeout: float = attrs.field(default=10.0, validator=_seconds)
    autonomous_when_disconnected: bool = attrs.field(default=True, validator=_flag)
    strip_addresses: bool = attrs.field(default=False, validator=_flag)
    strip_tls_chain: bool = attrs.field(default=False, validator=_flag)
    strip_messages: bool = attrs.field(default=False, validator=_flag)
    secrets: Mapping[str, Secret] = attrs.field(factory=dict, converter=_secrets, hash=False)
    metrics_host: str = attrs.field(default="127.0.0.1", validator=_text)
    metrics_port: int | None = attrs.field(default=None, validator=_port)

    def __attrs_post_init__(self) -> None:
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - reading it validates the port
        except ValueError as exc:
            raise DefinitionError("url", f"invalid URL {self.url!r}: {exc}") from None
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise DefinitionError("url", f"expected ws:// or wss://host..., got {self.url!r}")
        if parts.username is not None or parts.password is not None:
            raise DefinitionError("url", "credentials belong in token, not in the URL")
        if parts.scheme == "ws" and not self.insecure:
            raise DefinitionError(
                "url",
                "ws:// would send the token and every result in clear text; "
                "use wss://, or set insecure=True to allow it",
            )
        if parts.scheme == "ws" and self.ca_file is not None:
            raise DefinitionError("ca_file", "only applies to wss:// URLs")
        if self.reconnect_max < self.reconnect_initial:
            raise DefinitionError(
                "reconnect_max",
                f"must not be below reconnect_initial ({self.reconnect_initial!r}), "
                f"got {self.reconnect_max!r}",
            )


# -- helpers --------------------------------------------------------------------------------------


class _Capped:
    """A probe whose deadline a ``run`` command lowered.

    The runner gives each check a context deadline of ``timeouts.total`` from its start and
    enforces it from outside; reporting a smaller total here is what lowers both.
    """

    def __init__(self, probe: Probe, deadline: float) -> None:
        self._probe = probe
        self.kind: str = probe.kind
        self.timeouts = attrs.evolve(probe.timeouts, total=min(probe.timeouts.total, deadline))

    @property
    def target(self) -> str:
        return self._probe.target

    @property
    def host(self) -> str:
        return self._probe.host

    async def check(self, ctx: ProbeContext | None = None) -> Result:
        return await self._probe.check(ctx)


@attrs.frozen
class _Held:
    """A synced definition and the probe built from it."""

    definition: Any
    revision: int
    interval: float
    probe: Probe


_IPV4: Final = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_IPV6: Final = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![\w:])")


def _scrub_addresses(text: str) -> str:
    """``text`` with every IPv4 and IPv6 address in it replaced by ``<address>``."""

    def v4(match: re.Match[str]) -> str:
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            return match.group()
        return "<address>"

    def v6(match: re.Match[str]) -> str:
        try:
            ipaddress.IPv6Address(match.group().split("%", 1)[0])
        except ValueError:
            return match.group()
        return "<address>"

    return _IPV6.sub(v6, _IPV4.sub(v4, text))


def _redact(result: Result, settings: CheckpointSettings) -> Result:
    """Apply the privacy switches of ``settings`` to ``result``."""
    changes: dict[str, Any] = {}
    error = result.error
    if settings.strip_addresses:
        if result.address is not None:
            changes["address"] = None
        if error is not None and error.message:
            scrubbed = _scrub_addresses(error.message)
            if scrubbed != error.message:
                error = attrs.evolve(error, message=scrubbed)
    if settings.strip_messages:
        if error is not None and error.message:
            error = attrs.evolve(error, message="")
        if any(a.observed for a in result.assertions):
            changes["assertions"] = tuple(attrs.evolve(a, observed="") for a in result.assertions)
    if error is not result.error:
        changes["error"] = error
    if settings.strip_tls_chain and result.tls is not None and result.tls.chain:
        changes["tls"] = attrs.evolve(result.tls, chain=())
    return attrs.evolve(result, **changes) if changes else result


def _dump(envelope: ResultEnvelope) -> bytes:
    """The JSON (UTF-8) of one envelope, exactly as ``encode`` writes it inside ``results``."""
    text = json.dumps(
        converter.unstructure(envelope), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode()  # a lone surrogate raises UnicodeEncodeError here


def _plain_text(text: str, limit: int = _MAX_ERROR_TEXT) -> str:
    text = text.encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _payload(envelope: ResultEnvelope) -> bytes:
    """Serialise ``envelope`` for the spool, making sure the control plane can read it.

    A result JSON cannot carry (a non-finite metric, a lone surrogate in a message) or one too
    large for a frame is sent without the offending details instead, with a warning; that is
    the sender's problem, and the result's status must still arrive.
    """
    problem = ""
    try:
        data = _dump(envelope)
        if len(data) <= _MAX_ENTRY_BYTES:
            return data
        problem = f"{len(data)} bytes is too large"
    except ValueError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    result = envelope.result
    log.warning(
        "result %s of %s %s cannot be sent as it is (%s); sending it without details",
        envelope.result_id,
        result.kind,
        result.target,
        problem,
    )
    error = result.error
    if error is not None:
        error = attrs.evolve(error, message=_plain_text(error.message))
    slim = attrs.evolve(
        result,
        error=error,
        metrics={k: v for k, v in result.metrics.items() if math.isfinite(v)},
        assertions=(),
        tls=None,
        phases=result.phases[:100],
    )
    try:
        data = _dump(attrs.evolve(envelope, result=slim))
        if len(data) <= _MAX_ENTRY_BYTES:
            return data
    except ValueError:
        pass
    duration = result.duration if math.isfinite(result.duration) else 0.0
    stub = Result(
        kind=result.kind,
        target=_plain_text(result.target, 2000),
        status=Status.UNKNOWN,
        started_at=result.started_at,
        duration=duration,
        error=ProbeError(ErrorKind.INTERNAL, f"the result could not be encoded ({problem})"),
    )
    return _dump(attrs.evolve(envelope, result=stub))


def _frames(entries: list[Entry]) -> list[tuple[bytes, list[str]]]:
    """Group spooled entries into ``results`` frames, each within the frame budget."""
    frames: list[tuple[bytes, list[str]]] = []
    parts: list[bytes] = []
    ids: list[str] = []
    size = len(_RESULTS_HEAD) + 2

    def flush() -> None:
        frames.append((_RESULTS_HEAD + b",".join(parts) + b"]}", list(ids)))

    for entry in entries:
        payload = entry.payload if isinstance(entry.payload, bytes) else entry.payload.encode()
        if parts and size + len(payload) + 1 > _FRAME_BUDGET:
            flush()
            parts.clear()
            ids.clear()
            size = len(_RESULTS_HEAD) + 2
        parts.append(payload)
        ids.append(entry.result_id)
        size += len(payload) + 1
    if parts:
        flush()
    return frames


def _local_context(
    settings: CheckpointSettings, context: ProbeContext | None, clock: Clock
) -> ProbeContext:
    """The context every check runs in: the caller's plumbing, always the local policy."""
    if context is None:
        return ProbeContext(
            dialer=Dialer(policy=settings.policy), clock=clock, secrets=settings.secrets
        )
    dialer = copy.copy(context.dialer)
    if dialer.policy is not settings.policy:
        log.debug("the given context's dialer policy is replaced by the checkpoint's policy")
    dialer.policy = settings.policy
    return ProbeContext(
        dialer=dialer, clock=clock, deadline=None, secrets={**context.secrets, **settings.secrets}
    )


def _ssl_context(settings: CheckpointSettings) -> ssl.SSLContext | None:
    if urlsplit(settings.url).scheme != "wss":
        return None
    try:
        return ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise DefinitionError("ca_file", f"cannot load {settings.ca_file!r}: {exc}") from None


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def _wait_all(tasks: set[asyncio.Task[Any]]) -> None:
    """Wait for ``tasks`` to finish (they may change while we wait)."""
    while pending := {t for t in tasks if not t.done()}:
        await asyncio.wait(pending)


async def _cancel_all(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them, holding back our own cancellation until they end."""
    interrupted = False
    while pending := {t for t in tasks if not t.done()}:
        for task in pending:
            task.cancel()
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError


class _Ended(Exception):
    """The control plane closed the connection (cleanly or after an error reply of ours)."""


# -- the agent ------------------------------------------------------------------------------------


class Checkpoint:
    """One checkpoint instance: control channel, definitions, runs, local schedule, spool.

    ``clock`` is used for result timestamps, heartbeats, the spool and the local schedule (by
    default the context's clock, or the system clock). ``context`` lends its resolver, connector
    and other dialer plumbing to every check, but never its policy: see the module docs.

    Run it with ``await checkpoint.run()`` (returns once drained; cancelling it stops at once,
    leaving unsent results in the spool) or ``async with checkpoint:`` (runs in the background;
    leaving the block drains, or cancels when the block raised). A checkpoint runs once.
    """

    def __init__(
        self,
        settings: CheckpointSettings,
        *,
        clock: Clock | None = None,
        context: ProbeContext | None = None,
    ) -> None:
        if not isinstance(settings, CheckpointSettings):
            raise TypeError(f"settings must be CheckpointSettings, got {type(settings).__name__}")
        if context is not None and not isinstance(context, ProbeContext):
            raise TypeError(f"context must be a ProbeContext, got {type(context).__name__}")
        self.settings: Final = settings
        self._clock: Clock = clock or (context.clock if context is not None else SystemClock())
        self._context = _local_context(settings, context, self._clock)
        if settings.processes > 1:
            # Refused now, not when it starts: what a worker process cannot be given.
            worker_dialing(self._context, None)
        self._ssl = _ssl_context(settings)
        self._ws_logger = MaskingLogger(
            logging.getLogger("websockets.client"), [settings.token.reveal()]
        )
        self._spool = AsyncSpool(
            settings.spool_path, max_entries=settings.spool_max_entries, clock=self._clock
        )
        self._window = _WINDOW_BATCHES * settings.batch_size
        self._state = "new"
        self._task: asyncio.Task[None] | None = None
        self._runner: Runner | ProcessRunner | None = None
        self._scheduler: Scheduler | None = None
        self._held: dict[str, _Held] = {}
        self._autonomous_sync = False
        self._local_active = False
        self._tried = False  # a connection attempt has been made (and finished)
        self._draining = False
        self._closing = False
        self._ws: ClientConnection | None = None
        self._connected = False
        self._sent: set[str] = set()
        self._outbox: list[tuple[str, bytes, str | None]] = []
        self._writing = 0
        self._runs: set[asyncio.Task[None]] = set()
        self._http_tasks: set[asyncio.Task[Any]] = set()
        self._metrics_address: tuple[str, int] | None = None
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._drain_requested = asyncio.Event()
        self._mode_changed = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._reconnects = 0
        self._connect_failures = 0
        self._produced = 0
        self._acked = 0
        self._lost = 0

    # -- observation --------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int | bool]:
        """How this instance is doing, now.

        ``in_flight``: checks executing; ``queue_depth``: runs waiting for a concurrency slot
        plus results waiting to be spooled; ``spool_depth``/``spool_dropped``: results in the
        spool and evicted from it in total; ``reconnects``: connections made after the first;
        ``connect_failures``: failed connection attempts; ``connected``; ``autonomous`` (the
        local schedule is running); ``results_produced``, ``results_acked``, ``results_lost``
        (could not be spooled); ``definitions`` held.
        """
        runner = self._runner
        executing = runner.in_flight if runner is not None else 0
        started = len(self._runs) + (self._scheduler.in_flight if self._scheduler else 0)
        return {
            "in_flight": executing,
            "queue_depth": max(started - executing, 0) + len(self._outbox) + self._writing,
            "spool_depth": self._spool.depth,
            "spool_dropped": self._spool.dropped,
            "reconnects": self._reconnects,
            "connect_failures": self._connect_failures,
            "connected": self._connected,
            "autonomous": self._local_active,
            "results_produced": self._produced,
            "results_acked": self._acked,
            "results_lost": self._lost,
            "definitions": len(self._held),
        }

    @property
    def holdings(self) -> dict[str, int]:
        """The monitor ids held, with their revisions (what ``hello`` reports)."""
        return {monitor_id: held.revision for monitor_id, held in self._held.items()}

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def ready(self) -> bool:
        """Connected to the control plane, or running the local schedule (what ``/ready`` says)."""
        return self._connected or self._local_active

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where ``/metrics`` and ``/ready`` are served, once they are (None otherwise)."""
        return self._metrics_address

    def metrics_text(self) -> str:
        """The Prometheus text exposition of :attr:`stats`."""
        stats = self.stats
        labels = (
            f'checkpoint_id="{_label(self.settings.checkpoint_id)}",'
            f'instance_id="{_label(self.settings.instance_id)}"'
        )
        rows = (
            ("in_flight", "gauge", "Checks executing now.", stats["in_flight"]),
            ("queue_depth", "gauge", "Runs and results waiting.", stats["queue_depth"]),
            ("spool_depth", "gauge", "Results in the spool, not yet acked.", stats["spool_depth"]),
            (
                "spool_dropped_total",
                "counter",
                "Results evicted from the full spool.",
                stats["spool_dropped"],
            ),
            (
                "reconnects_total",
                "counter",
                "Reconnections to the control plane.",
                stats["reconnects"],
            ),
            ("connected", "gauge", "1 while connected to the control plane.", stats["connected"]),
            ("autonomous", "gauge", "1 while the local schedule runs.", stats["autonomous"]),
            ("definitions", "gauge", "Monitor definitions held.", stats["definitions"]),
            ("results_total", "counter", "Results produced.", stats["results_produced"]),
            (
                "acked_total",
                "counter",
                "Results acked by the control plane.",
                stats["results_acked"],
            ),
        )
        lines = []
        for name, kind, help_text, value in rows:
            metric = f"probekit_checkpoint_{name}"
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} {kind}")
            lines.append(f"{metric}{{{labels}}} {int(value)}")
        return "\n".join(lines) + "\n"

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until drained (or cancelled).

        Raises :class:`~probekit.checkpoint._spool.SpoolError` when the spool cannot be opened and
        ``OSError`` when the metrics port cannot be bound; nothing else stops it except
        cancellation, which leaves unsent results in the spool.
        """
        if self._state != "new":
            raise RuntimeError("a Checkpoint runs only once; create a new one")
        self._state = "running"
        server: asyncio.Server | None = None
        try:
            await self._spool.open()
            try:
                await self._restore_definitions()
                if self.settings.metrics_port is not None:
                    server = await asyncio.start_server(
                        self._serve_http,
                        self.settings.metrics_host,
                        self.settings.metrics_port,
                        limit=_HTTP_LIMIT,
                    )
                    host, port = server.sockets[0].getsockname()[:2]
                    self._metrics_address = (str(host), int(port))
                    log.info("serving /metrics and /ready on %s:%d", host, port)
                runner: Runner | ProcessRunner
                if self.settings.processes > 1:
                    runner = ProcessRunner(
                        self.settings.processes,
                        self.settings.max_concurrency,
                        context=self._context,
                    )
                else:
                    runner = Runner(self.settings.max_concurrency, context=self._context)
                async with runner:
                    self._runner = runner
                    self._scheduler = Scheduler(runner, self._on_scheduled, clock=self._clock)
                    try:
                        self._started.set()
                        await self._serve(server)
                    finally:
                        await self._scheduler.aclose()
                        await _cancel_all(self._runs)
                        await self._save_outbox()
            finally:
                if server is not None:
                    server.close()
                    await _cancel_all(self._http_tasks)
                self._metrics_address = None
                await self._spool.close()
        finally:
            self._state = "stopped"
            self._connected = False
            self._local_active = False
            self._started.set()
            self._stopped.set()

    def request_drain(self) -> None:
        """Ask the checkpoint to drain; returns at once (safe to call from a signal handler)."""
        if not self._draining:
            log.info("drain requested")
        self._draining = True
        self._drain_requested.set()
        self._mode_changed.set()

    async def drain(self) -> None:
        """Finish the checks in flight, deliver what the channel takes, close; wait for all that.

        New runs are refused from now on and the local schedule stops. Delivery waits for acks
        while connected, for at most ``drain_timeout`` seconds; what is not acked stays in the
        spool for the next start. Call it from outside the checkpoint's own tasks.
        """
        self.request_drain()
        if self._state == "new":
            return
        await self._stopped.wait()

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a Checkpoint runs only once; create a new one")
        task = asyncio.create_task(self.run(), name=f"checkpoint {self.settings.instance_id}")
        self._task = task
        started = asyncio.create_task(self._started.wait())
        try:
            await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await _cancel_all({task, started})
            raise
        await _cancel_all({started})
        if task.done():
            await task  # a startup failure (spool, metrics port) is raised here
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        if task is None:
            return
        if exc_type is None:
            self.request_drain()
        else:
            task.cancel()
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            await _cancel_all({task})
            raise
        if task.cancelled():
            return
        failure = task.exception()
        if failure is not None:
            if exc_type is None:
                raise failure
            log.error("the checkpoint failed while stopping", exc_info=failure)

    # -- the main structure -------------------------------------------------------------------

    async def _serve(self, server: asyncio.Server | None) -> None:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(self._write_loop(), name="checkpoint spool writer")
            link = tg.create_task(self._link_loop(), name="checkpoint control channel")
            local = tg.create_task(self._local_loop(), name="checkpoint local schedule")
            http = None
            if server is not None:
                http = tg.create_task(server.serve_forever(), name="checkpoint metrics")
            await self._drain_requested.wait()
            # Drain: no new runs (refused on arrival), no new scheduled runs, then let what is
            # in flight finish, spool it, deliver it while the channel takes it, and close.
            await _cancel_all({local})
            assert self._scheduler is not None
            await self._scheduler.wait_idle()
            await _wait_all(self._runs)
            while self._outbox or self._writing:
                await self._progress_within(1.0)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.drain_timeout
            while self._spool.depth and self._connected:
                self._wake.set()
                if not await self._progress_within(deadline - loop.time()):
                    break
            log.info("drained: %d results not yet acked stay in the spool", self._spool.depth)
            self._closing = True
            ws = self._ws
            if ws is not None:
                await ws.close(1000, "drained")
            await asyncio.wait({link}, timeout=self.settings.ping_timeout)
            await _cancel_all({t for t in (link, writer, http) if t is not None})

    async def _progress_within(self, seconds: float) -> bool:
        """Wait for the next bit of progress (a batch spooled, an ack, a disconnect)."""
        self._progress.clear()
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._progress.wait()
        except TimeoutError:
            return False
        return True

    # -- results: spooling --------------------------------------------------------------------

    def _emit(
        self, result: Result, *, monitor_id: str | None, request_id: str | None, reason: str
    ) -> None:
        """Queue one result for the spool (the writer commits what has gathered, in one go)."""
        envelope = ResultEnvelope(
            result_id=uuid.uuid4().hex,
            monitor_id=monitor_id,
            request_id=request_id,
            reason=reason,
            instance_id=self.settings.instance_id,
            result=_redact(result, self.settings),
        )
        self._outbox.append((envelope.result_id, _payload(envelope), monitor_id))
        self._produced += 1
        self._outbox_ready.set()

    def _on_scheduled(self, monitor_id: str, result: Result) -> None:
        self._emit(result, monitor_id=monitor_id, request_id=None, reason="scheduled")

    async def _write_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch, self._outbox = self._outbox, []
                self._writing = len(batch)
                try:
                    await self._spool.put_many(batch)
                except SpoolError:
                    self._lost += len(batch)
                    log.exception("could not spool %d results; they are lost", len(batch))
                finally:
                    self._writing = 0
                self._wake.set()
                self._progress.set()

    async def _save_outbox(self) -> None:
        """On the way out: spool what was produced but not yet written (best effort)."""
        batch, self._outbox = self._outbox, []
        if not batch:
            return
        try:
            await asyncio.shield(self._spool.put_many(batch))
        except SpoolError:
            self._lost += len(batch)
            log.exception("could not spool %d results; they are lost", len(batch))

    # -- the control channel ------------------------------------------------------------------

    def _backoff(self, k: int) -> float:
        """Full jitter: uniform in [0, min(reconnect_initial * 2**k, reconnect_max)]."""
        s = self.settings
        ceiling = min(s.reconnect_initial * 2 ** min(k, 64), s.reconnect_max)
        return random.uniform(0.0, ceiling)  # noqa: S311 - jitter, not cryptography

    async def _pause(self, seconds: float) -> None:
        """Sleep, but no longer than until a drain is requested."""
        try:
            async with asyncio.timeout(seconds):
                await self._drain_requested.wait()
        except TimeoutError:
            pass

    async def _link_loop(self) -> None:
        """Connect, serve the connection, and reconnect with backoff, until closing."""
        loop = asyncio.get_running_loop()
        streak = 0  # failed attempts and short-lived connections in a row
        first = True
        # A connection that lasted this long was a working one, and resets the backoff.
        stable = max(2 * self.settings.heartbeat_interval, self.settings.reconnect_initial)
        draining = self._drain_requested
        # Once draining, no new connection is made just to drain: what is unsent stays spooled
        # for the next start.
        while not draining.is_set():
            if streak:
                await self._pause(self._backoff(streak - 1))
                if draining.is_set():
                    return
            try:
                ws = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried
                self._connect_failures += 1
                streak += 1
                self._log_connect_failure(exc)
                if not self._tried:
                    self._tried = True
                    self._mode_changed.set()  # now "disconnected" means something
                continue
            self._tried = True
            if not first:
                self._reconnects += 1
            first = False
            opened = loop.time()
            await self._session(ws)
            streak = 1 if loop.time() - opened >= stable else streak + 1

    async def _connect(self) -> ClientConnection:
        s = self.settings
        extra: dict[str, Any] = {}
        if self._ssl is not None:
            extra["ssl"] = self._ssl
        return await connect(
            s.url,
            additional_headers={"Authorization": f"Bearer {s.token.reveal()}"},
            user_agent_header=f"probekit-checkpoint/{__version__}",
            proxy=None,
            open_timeout=s.open_timeout,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
            # A peer that answers no ping in ping_timeout will not answer a close frame either.
            close_timeout=s.ping_timeout,
            max_size=_MAX_INCOMING,
            logger=self._ws_logger,
            **extra,
        )

    def _log_connect_failure(self, exc: Exception) -> None:
        if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
            log.error(
                "the control plane at %s refused this instance's token (HTTP %d); retrying",
                self.settings.url,
                exc.response.status_code,
            )
        else:
            log.warning(
                "cannot connect to the control plane at %s: %s: %s",
                self.settings.url,
                type(exc).__name__,
                exc,
            )

    def _hello(self) -> Hello:
        return Hello(
            checkpoint_id=self.settings.checkpoint_id,
            instance_id=self.settings.instance_id,
            software_version=__version__,
            kinds=probe_kinds(),
            holdings=self.holdings,
            mode="autonomous" if self._autonomous_sync else "driven",
            heartbeat_interval=self.settings.heartbeat_interval,
        )

    async def _session(self, ws: ClientConnection) -> None:
        """Serve one connection until it ends; every path out closes it."""
        self._sent = set()
        try:
            await ws.send(encode(self._hello()))
            self._ws = ws
            self._connected = True
            self._mode_changed.set()
            self._wake.set()
            log.info("connected to the control plane at %s", self.settings.url)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive_loop(ws))
                tg.create_task(self._send_loop(ws))
                tg.create_task(self._heartbeat_loop(ws))
        except* ConnectionClosed as group:
            if not self._closing:
                log.warning("lost the control plane connection: %s", group.exceptions[0])
        except* _Ended:
            if not self._closing:
                log.warning("the control plane connection was closed")
        except* Exception as group:
            log.error("the control channel failed; reconnecting", exc_info=group)
        finally:
            self._ws = None
            self._connected = False
            self._sent = set()
            self._mode_changed.set()
            self._progress.set()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                ws.transport.abort()  # being cancelled: no closing handshake to wait for
            else:
                try:
                    await ws.close()
                except BaseException:
                    ws.transport.abort()
                    raise

    async def _receive_loop(self, ws: ClientConnection) -> None:
        async for frame in ws:
            try:
                message = decode(frame, accept=FROM_CONTROL)
            except ProtocolError as exc:
                log.warning("refused a frame from the control plane: %s", exc)
                await self._send(ws, error_reply(exc))
                if exc.close_code is not None:
                    await ws.close(exc.close_code, exc.code)
                    raise _Ended from None
                continue
            await self._handle(ws, message)
        raise _Ended

    async def _handle(self, ws: ClientConnection, message: Message) -> None:
        if isinstance(message, Ack):
            acked = await self._spool.ack(message.result_ids)
            self._acked += acked
            self._sent.difference_update(message.result_ids)
            self._wake.set()
            self._progress.set()
        elif isinstance(message, Run):
            await self._accept_run(ws, message)
        elif isinstance(message, Sync):
            errors = self._apply_sync(message)
            await self._store_definitions()
            for error in errors:
                await self._send(ws, error)
        elif isinstance(message, Drain):
            log.info("the control plane asked to drain: %s", message.reason or "(no reason)")
            self.request_drain()
        elif isinstance(message, Error):
            log.warning(
                "the control plane reported %s: %s (ref %s)",
                message.code,
                message.message,
                message.ref,
            )

    async def _send(self, ws: ClientConnection, message: Message) -> None:
        await ws.send(encode(message))

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            try:
                async with asyncio.timeout(_SEND_POLL):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            while len(self._sent) < self._window:
                room = min(self.settings.batch_size, self._window - len(self._sent))
                entries = await self._spool.pending(room, exclude=frozenset(self._sent))
                if not entries:
                    break
                for frame, ids in _frames(entries):
                    # Marked before sending: an ack may be handled before send() returns.
                    self._sent.update(ids)
                    await ws.send(frame, text=True)

    async def _heartbeat_loop(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            stats = self.stats
            await self._send(
                ws,
                Heartbeat(
                    in_flight=int(stats["in_flight"]),
                    queue_depth=int(stats["queue_depth"]),
                    spool_depth=int(stats["spool_depth"]),
                    spool_dropped=int(stats["spool_dropped"]),
                    reconnects=int(stats["reconnects"]),
                    policy=dict(self.settings.policy.summary()),
                    sent_at=self._clock.now(),
                ),
            )

    # -- definitions and runs -----------------------------------------------------------------

    def _build(self, definition: dict[str, Any]) -> Probe:
        return cast(
            Probe,
            build_probe(definition, secrets=self.settings.secrets, local=False, path="definition"),
        )

    def _refusal(self, exc: Exception, ref: str) -> Error:
        code: ErrorCode = "bad_field"
        if isinstance(exc, DefinitionError):
            text = str(exc)
        else:
            log.error("building a definition failed unexpectedly", exc_info=exc)
            code, text = "internal", f"could not build the definition ({type(exc).__name__})"
        return Error(code=code, message=_plain_text(text, 4000), ref=ref)

    async def _store_definitions(self) -> None:
        """Keep what is held in the spool, for a restart while the control plane is away."""
        rows = [
            (monitor_id, held.revision, held.interval, json.dumps(held.definition))
            for monitor_id, held in self._held.items()
        ]
        try:
            await self._spool.save_definitions(rows)
        except SpoolError as exc:  # the checks still run; only a restart would miss them
            log.error("could not keep the definitions in the spool: %s", exc)

    async def _restore_definitions(self) -> None:
        """Hold the definitions a previous run kept in the spool (see ``_store_definitions``).

        They are reported in ``hello`` with their revisions, so the control plane sends only
        what changed; while it is unreachable they run on the local schedule (when autonomous).
        """
        held: dict[str, _Held] = {}
        for monitor_id, revision, interval, text in await self._spool.load_definitions():
            try:
                definition = json.loads(text)
                held[monitor_id] = _Held(definition, revision, interval, self._build(definition))
            except Exception as exc:  # noqa: BLE001 - one stale definition must not stop the rest
                log.warning("kept definition %s no longer builds; dropped: %s", monitor_id, exc)
        self._held = held
        if held:
            log.info("holding %d definitions kept in the spool", len(held))

    def _apply_sync(self, sync: Sync) -> list[Error]:
        """Apply a sync; return the errors to send for definitions that did not build."""
        errors: list[Error] = []
        held = {} if sync.full else dict(self._held)
        for monitor_id in sync.deletes:
            held.pop(monitor_id, None)
        for upsert in sync.upserts:
            old = self._held.get(upsert.monitor_id)
            if (
                old is not None
                and old.revision == upsert.revision
                and old.definition == upsert.definition
            ):
                held[upsert.monitor_id] = attrs.evolve(old, interval=upsert.interval)
                continue
            try:
                probe = self._build(upsert.definition)
            except Exception as exc:  # noqa: BLE001 - reported to the control plane, not fatal
                held.pop(upsert.monitor_id, None)
                errors.append(self._refusal(exc, upsert.monitor_id))
                continue
            held[upsert.monitor_id] = _Held(
                upsert.definition, upsert.revision, upsert.interval, probe
            )
        previous, self._held = self._held, held
        self._autonomous_sync = sync.autonomous
        if self._local_active and self._scheduler is not None:
            for monitor_id in previous.keys() - held.keys():
                self._scheduler.remove(monitor_id)
            for monitor_id, entry in held.items():
                if previous.get(monitor_id) != entry:
                    self._scheduler.add(Monitor(monitor_id, entry.probe, entry.interval))
        self._mode_changed.set()
        log.info(
            "synced %s: %d definitions held, %d refused%s",
            "everything" if sync.full else "changes",
            len(held),
            len(errors),
            "; autonomous" if sync.autonomous else "",
        )
        return errors

    async def _accept_run(self, ws: ClientConnection, run: Run) -> None:
        if self._draining:
            await self._send(
                ws,
                Error(code="internal", message="draining: no new runs", ref=run.request_id),
            )
            return
        if len(self._runs) >= self.settings.max_queued_runs:
            await self._send(
                ws,
                Error(
                    code="internal",
                    message=f"overloaded: {len(self._runs)} runs are waiting",
                    ref=run.request_id,
                ),
            )
            return
        probe: Probe
        if run.definition is not None:
            try:
                probe = self._build(run.definition)
            except Exception as exc:  # noqa: BLE001 - reported to the control plane, not fatal
                await self._send(ws, self._refusal(exc, run.request_id))
                return
        else:
            held = self._held.get(run.monitor_id or "")
            if held is None:
                await self._send(
                    ws,
                    Error(
                        code="bad_field",
                        message=f"monitor_id: no definition is held for {run.monitor_id!r}",
                        ref=run.request_id,
                    ),
                )
                return
            probe = held.probe
        if run.deadline is not None:
            probe = cast(Probe, _Capped(probe, run.deadline))
        task = asyncio.create_task(self._execute(probe, run), name=f"run {run.request_id}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _execute(self, probe: Probe, run: Run) -> None:
        runner = self._runner
        assert runner is not None
        try:
            result = await runner.check(probe)
            self._emit(
                result, monitor_id=run.monitor_id, request_id=run.request_id, reason=run.reason
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not take the checkpoint down with it
            log.exception("run %s failed", run.request_id)

    # -- the local schedule -------------------------------------------------------------------

    def _wants_local(self) -> bool:
        if self._draining:
            return False
        if self._autonomous_sync:
            return True
        # Not before the first connection attempt has failed: at start-up, definitions kept in
        # the spool would otherwise run locally for the moment it takes to connect.
        return not self._connected and self._tried and self.settings.autonomous_when_disconnected

    async def _local_loop(self) -> None:
        """Start and stop the local schedule as the mode changes."""
        scheduler = self._scheduler
        assert scheduler is not None
        running: asyncio.Task[None] | None = None
        try:
            while True:
                self._mode_changed.clear()
                wanted = self._wants_local()
                if wanted and running is None:
                    for monitor_id, held in self._held.items():
                        scheduler.add(Monitor(monitor_id, held.probe, held.interval))
                    self._local_active = True
                    running = asyncio.create_task(scheduler.run(), name="checkpoint scheduler")
                    if self._held:
                        log.info("running %d definitions on the local schedule", len(self._held))
                elif not wanted and running is not None:
                    await _cancel_all({running})
                    running = None
                    self._stop_local(scheduler)
                await self._mode_changed.wait()
        finally:
            if running is not None:
                await _cancel_all({running})
                self._stop_local(scheduler)

    def _stop_local(self, scheduler: Scheduler) -> None:
        # Runs in flight finish (the scheduler still owns them); nothing new starts.
        for monitor_id in list(scheduler.monitors):
            scheduler.remove(monitor_id)
        self._local_active = False
        log.debug("stopped the local schedule")

    # -- the metrics endpoint -----------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._http_tasks.add(task)
        try:
            async with asyncio.timeout(_HTTP_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(self._http_response(head))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            if task is not None:
                self._http_tasks.discard(task)
            writer.close()

    def _http_response(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _http(400, "bad request\n")
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD") or path not in ("/metrics", "/ready"):
            return _http(404, "not found\n")
        if path == "/metrics":
            response = _http(200, self.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
        elif self.ready:
            response = _http(200, "ready\n")
        else:
            response = _http(503, "not ready\n")
        if method == "HEAD":
            response = response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        return response


_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}


def _http(status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + data
