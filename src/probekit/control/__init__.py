"""The reference control plane: a WebSocket server that checkpoint instances dial into.

It keeps monitor definitions, results, the runs it sent, events, open alerts and last-seen
times in SQLite (so a restart forgets no alert), drives scheduling through
:class:`~probekit.control._logic.ControlLogic` (one instance per run, alternating; a failure is
confirmed on another instance before an alert; an unanswered run moves to another instance;
flapping and silent checkpoints are detected), checks every result against the identity its
connection proved at ``hello``, and hands alert events to pluggable sinks (:class:`LogSink`,
:class:`WebhookSink`, :class:`MemorySink`).

::

    plane = ControlPlane(ControlSettings(tokens={"office": Secret("...")}, db_path="control.db"))
    async with plane:
        plane.add_monitor("intranet", "office", {"kind": "http", "url": "https://intranet/"}, 60)
        await plane.serve_forever()
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import attrs

from .. import protocol as p
from .._clock import Clock, SystemClock
from .._exceptions import DefinitionError
from .._logging import MaskingLogger
from .._secret import Secret
from .._serialization import converter
from ..alerting._events import with_event_id
from ..alerting._maintenance import Maintenance, MaintenanceWindow, Weekly
from ..alerting._sinks import (
    AlertmanagerSink,
    AlertSink,
    DeliveryError,
    DurableSink,
    EmailSink,
    LogSink,
    MemorySink,
    PagerDutySink,
    Renotifier,
    SlackSink,
    WebhookSink,
)
from ..alerting._sinks import (
    event_to_dict as event_to_dict,
)
from . import _store as db
from ._config import ControlConfig, load_control_config
from ._logic import (
    ASSIGNMENTS,
    Actions,
    Alert,
    Assignment,
    ControlLogic,
    Event,
    MonitorSpec,
    Refusal,
    RunOrder,
    SitePolicy,
    Verdict,
)
from ._store import Store, is_postgres

if TYPE_CHECKING:
    from .._metrics_server import MetricsServer, Route

__all__ = [
    "AlertSink",
    "AlertmanagerSink",
    "ControlConfig",
    "ControlPlane",
    "ControlSettings",
    "DeliveryError",
    "DurableSink",
    "EmailSink",
    "LogSink",
    "MaintenanceWindow",
    "MemorySink",
    "PagerDutySink",
    "Pruned",
    "Reconfigured",
    "SitePolicy",
    "SlackSink",
    "WebhookSink",
    "Weekly",
    "load_control_config",
    "split_sync",
]

log = logging.getLogger("probekit.control")

_TEXT_PLAIN: Final = "text/plain; charset=utf-8"
#: What a standby answers instances and readiness probes (with 503).
_STANDBY_TEXT: Final = "standby; the active control plane holds the lock\n"
#: The ``Retry-After`` of that answer, in seconds.
_RETRY_AFTER: Final = "1"

#: How long results, events, runs and resolved alerts are kept by default: 30 days.
DEFAULT_RETENTION: Final = 30 * 86400.0


#: The settings a running control plane cannot change: they take a restart.
RESTART_SETTINGS: Final = (
    *("host", "port", "db_path", "db_password", "ssl_context", "max_frame_bytes"),
    *("heartbeat_interval", "metrics_host", "metrics_port", "standby", "standby_poll"),
)


@attrs.frozen
class Reconfigured:
    """What one :meth:`ControlPlane.reconfigure` did.

    ``applied``: the settings that changed and are in force now; ``restart``: those that
    changed and take a restart (still the old values); ``checkpoints_added``,
    ``checkpoints_removed``, ``tokens_changed``: checkpoint ids; ``closed``: connections closed
    because their checkpoint was removed or its token changed.
    """

    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    checkpoints_added: tuple[str, ...] = ()
    checkpoints_removed: tuple[str, ...] = ()
    tokens_changed: tuple[str, ...] = ()
    closed: int = 0


@attrs.frozen
class Pruned:
    """What one :meth:`ControlPlane.prune` did: rows deleted per table, statements run."""

    deleted: Mapping[str, int]
    statements: int


def _tokens(value: Mapping[str, Secret]) -> dict[str, Secret]:
    out = dict(value)
    for checkpoint_id, token in out.items():
        if not isinstance(token, Secret) or not token.reveal():
            raise DefinitionError(
                f"tokens[{checkpoint_id}]", "each token must be a non-empty Secret"
            )
    return out


def _check_settings(settings: ControlSettings) -> None:
    for name in ("grace", "startup_grace"):
        value = getattr(settings, name)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            raise DefinitionError(
                name, f"must be a finite number of seconds, 0 or more, got {value!r}"
            )
    if settings.standby and not is_postgres(settings.db_path):
        raise DefinitionError(
            "standby", "needs a postgresql:// db_path shared by the control planes"
        )
    for name in ("retention", "prune_interval", "standby_poll"):
        value = getattr(settings, name)
        if value is None and name == "retention":
            continue
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise DefinitionError(
                name, f"must be a finite number of seconds, more than 0, got {value!r}"
            )
    for name in ("unanswered_runs", "prune_batch"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DefinitionError(name, f"must be an integer of 1 or more, got {value!r}")
    if (
        not isinstance(settings.confirmations, int)
        or isinstance(settings.confirmations, bool)
        or settings.confirmations < 0
    ):
        raise DefinitionError(
            "confirmations", f"must be an integer of 0 or more, got {settings.confirmations!r}"
        )
    window = settings.flap_window
    if not isinstance(window, int) or isinstance(window, bool) or window < 3:
        raise DefinitionError("flap_window", f"must be an integer of 3 or more, got {window!r}")
    for name in ("flap_high", "flap_low"):
        value = getattr(settings, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 100:
            raise DefinitionError(name, f"must be a percentage (0-100), got {value!r}")
    if settings.flap_low > settings.flap_high:
        raise DefinitionError("flap_low", "must not be above flap_high")
    if settings.assignment not in ASSIGNMENTS:
        raise DefinitionError(
            "assignment",
            f"must be one of {', '.join(ASSIGNMENTS)}, got {settings.assignment!r}",
        )
    size = settings.max_frame_bytes
    if not isinstance(size, int) or isinstance(size, bool) or size < p.MAX_FRAME_BYTES:
        raise DefinitionError(
            "max_frame_bytes",
            f"must be an integer of at least {p.MAX_FRAME_BYTES} (the protocol's frame limit), "
            f"got {size!r}",
        )
    port = settings.metrics_port
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535
    ):
        raise DefinitionError("metrics_port", f"must be a port number (0-65535), got {port!r}")
    status_token = settings.status_token
    if status_token is not None and (
        not isinstance(status_token, Secret) or not status_token.reveal()
    ):
        raise DefinitionError("status_token", "must be a non-empty Secret, or None (no page)")


@attrs.frozen
class ControlSettings:
    """How a control plane listens and decides.

    ``tokens`` maps each checkpoint id to the bearer token its instances present; an instance
    may only speak for the checkpoint its token belongs to, and every checkpoint in it is
    expected to be up. ``missed_heartbeats`` heartbeat intervals of silence mark an instance
    down. ``grace``: a run unanswered after its deadline plus this moves to another instance,
    and an instance whose heartbeat is this late gets no runs. ``unanswered_runs`` runs in a row
    left unanswered by an instance that heartbeats get it disconnected. ``startup_grace``: after
    a start, a checkpoint has at least this long to connect before it is reported down.
    ``db_path`` is the SQLite file (``:memory:`` for a throwaway one) or a ``postgresql://``
    URL (the ``probekit[postgres-store]`` extra), whose password, if the server asks for one,
    is ``db_password`` (never part of the URL) or libpq's own (``PGPASSWORD``, ``~/.pgpass``).

    ``retention``: results, events, runs sent and resolved alerts older than this many seconds
    are deleted (None keeps everything), ``prune_batch`` rows per statement on the database's
    worker thread, at most once every ``prune_interval`` seconds. ``metrics_port`` (None: off)
    serves ``/metrics`` and ``/ready`` on ``metrics_host``; with ``status_token`` too, the
    read-only status page (``/status``, see ``docs/status.md``) for requests bearing it.

    ``confirmations``: confirm runs (each on another instance when there is one) that must
    fail too before a failure opens a ``monitor_down`` alert (0: alert on the first failure).
    Flapping: over a monitor's last ``flap_window`` results, more than ``flap_high`` percent of
    weighted state change opens a ``flapping`` alert and less than ``flap_low`` resolves it.

    ``assignment``: ``"alternate"`` sends each scheduled run of a monitor to a live instance
    other than the last one; ``"spread"`` gives each monitor to one live instance of its
    checkpoint by rendezvous hashing (N instances share the monitors; when one leaves only its
    monitors move). See ``docs/checkpoint.md``.

    ``standby`` (PostgreSQL only): several control planes share the database and one is active,
    the one holding the database's advisory lock; :meth:`ControlPlane.start` of the others
    listens (answering ``/-/healthy``, and 503 ``standby`` to readiness probes and instances,
    which move to their next URL) and waits for the lock, trying every ``standby_poll``
    seconds, then serves on the same socket; the active one checks its hold as often:
    when its database connection (and so the lock) is lost, it stops serving
    (:attr:`ControlPlane.demoted`). See ``docs/checkpoint.md``, "A standby control plane".
    """

    tokens: Mapping[str, Secret] = attrs.field(converter=_tokens)
    host: str = "127.0.0.1"
    port: int = 0
    db_path: str = ":memory:"
    db_password: Secret | None = None
    ssl_context: ssl.SSLContext | None = None
    heartbeat_interval: float = 5.0
    missed_heartbeats: int = 3
    tick_interval: float = 0.1
    hello_timeout: float = 10.0
    max_frame_bytes: int = 4 * 1024 * 1024
    stale_after: float = 120.0
    grace: float = 2.0
    unanswered_runs: int = 3
    startup_grace: float = 30.0
    retention: float | None = DEFAULT_RETENTION
    prune_interval: float = 60.0
    prune_batch: int = 1000
    metrics_host: str | None = "127.0.0.1"
    metrics_port: int | None = None
    status_token: Secret | None = None
    confirmations: int = 1
    flap_window: int = 21
    flap_high: float = 50.0
    flap_low: float = 25.0
    assignment: Assignment = "alternate"
    standby: bool = False
    standby_poll: float = 1.0

    def __attrs_post_init__(self) -> None:
        # (Checked here, not with attrs validators: this package's ``_config`` module would
        # shadow the name attrs' generated validating __init__ looks up.)
        _check_settings(self)


class _TokenMask(MaskingLogger):
    """The ``websockets`` logger, masking every token configured so far (see ``MaskingLogger``)."""

    def mask(self, secrets: Iterable[str]) -> None:
        """Mask these values too, from now on."""
        self._secrets = tuple(dict.fromkeys((*self._secrets, *(s for s in secrets if s))))


class _Peer:
    """One connection, and the identity its ``hello`` bound it to for its whole life."""

    __slots__ = ("budget", "checkpoint_id", "conn", "instance_id", "warned")

    def __init__(self, conn: Any, checkpoint_id: str, instance_id: str) -> None:
        self.conn = conn
        self.checkpoint_id = checkpoint_id
        self.instance_id = instance_id
        #: The kinds of refusal already logged at WARNING for this connection.
        self.warned: set[str] = set()
        #: The error replies sent on this connection (more than 10 in 60 s close it).
        self.budget = p.ErrorBudget()


def _frame_size(message: p.Message) -> int:
    return len(p.encode(message).encode("utf-8"))


def split_sync(sync: p.Sync, limit: int = p.MAX_FRAME_BYTES) -> list[p.Sync]:
    """``sync`` as messages that each encode to at most ``limit`` bytes, to send in order.

    The first part keeps ``full`` (a full sync replaces what the instance holds, so it must
    come first); the others are deltas carrying the remaining upserts, then deletes. A single
    definition larger than a frame cannot be sent at all: it is left out and logged.
    """
    if _frame_size(sync) <= limit:
        return [sync]
    if len(sync.upserts) > 1:
        half = len(sync.upserts) // 2
        head = attrs.evolve(sync, upserts=sync.upserts[:half], deletes=())
        tail = attrs.evolve(sync, full=False, upserts=sync.upserts[half:])
        return split_sync(head, limit) + split_sync(tail, limit)
    if sync.upserts and sync.deletes:
        head = attrs.evolve(sync, deletes=())
        tail = attrs.evolve(sync, full=False, upserts=())
        return split_sync(head, limit) + split_sync(tail, limit)
    if len(sync.deletes) > 1:
        half = len(sync.deletes) // 2
        head = attrs.evolve(sync, deletes=sync.deletes[:half])
        tail = attrs.evolve(sync, full=False, deletes=sync.deletes[half:])
        return split_sync(head, limit) + split_sync(tail, limit)
    (upsert,) = sync.upserts
    log.error(
        "monitor %s: its definition takes more than one frame (%d bytes); it is not sent",
        upsert.monitor_id,
        limit,
    )
    return [attrs.evolve(sync, upserts=())]


class ControlPlane:
    """The reference control plane (see the module docstring)."""

    def __init__(
        self,
        settings: ControlSettings,
        *,
        sinks: Sequence[AlertSink] | None = None,
        clock: Clock | None = None,
        maintenance: Iterable[MaintenanceWindow] = (),
        sites: Iterable[SitePolicy] = (),
    ) -> None:
        self.settings = settings
        self.sinks: list[AlertSink] = list(sinks) if sinks is not None else [LogSink()]
        #: The maintenance windows and the alerts they hold (see :meth:`add_maintenance`).
        self.maintenance = Maintenance(maintenance)
        self._renotifier = Renotifier()
        self.clock: Clock = clock or SystemClock()
        self.logic = ControlLogic(
            self.clock,
            heartbeat_interval=settings.heartbeat_interval,
            missed_heartbeats=settings.missed_heartbeats,
            grace=settings.grace,
            unanswered_limit=settings.unanswered_runs,
            startup_grace=settings.startup_grace,
            confirmations=settings.confirmations,
            flap_window=settings.flap_window,
            flap_high=settings.flap_high,
            flap_low=settings.flap_low,
            assignment=settings.assignment,
        )
        for policy in sites:  # (before start() takes back the open alerts)
            self._set_sites(policy)
        self._store = Store(settings.db_path, settings.db_password)
        self._server: Any = None
        # websockets logs handshake headers at DEBUG, the instances' tokens among them; every
        # token ever configured stays masked (a reload adds the new ones).
        self._ws_logger = _TokenMask(logging.getLogger("probekit.control.ws"))
        self._ws_logger.mask(t.reveal() for t in settings.tokens.values())
        self._peers: dict[str, _Peer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._specs: dict[str, MonitorSpec] = {}
        self._revisions: dict[str, int] = {}
        self._autonomous: dict[str, bool] = {}
        #: instance id -> the checkpoint it belongs to (from the database and every hello).
        self._owners: dict[str, str] = {}
        #: Sightings (instance -> checkpoint, wall-clock time) not yet written.
        self._seen: dict[str, tuple[str, float]] = {}
        self._seen_flushed = 0.0
        #: When the event loop was last seen running (loop time; see _check_stall).
        self._loop_seen = 0.0
        self.results_stored = 0
        self.duplicates = 0
        self.results_refused = 0
        self.runs_sent = 0
        #: Rows deleted by retention; the database's size and its oldest prunable row's time
        #: as last measured (see :meth:`prune`, :meth:`measure`).
        self.rows_pruned = 0
        self.db_bytes = 0
        self.oldest_row: float | None = None
        self._metrics_server: MetricsServer | None = None
        #: Called with each newly stored result envelope (after deduplication), e.g. by a UI.
        self.result_listeners: list[Callable[[p.ResultEnvelope], None]] = []
        #: With ``standby``: holding the active lock now; set when the lock is lost (the plane
        #: then serves no more), and callbacks told so.
        self.active = not settings.standby
        #: Serving instances now (a standby: from when it holds the lock and has loaded the
        #: state; until then it answers them 503 ``standby``).
        self.serving = False
        #: Set when the listener (and the metrics endpoint) is up: a standby listens while it
        #: waits for the lock.
        self.listening = asyncio.Event()
        self.demoted = asyncio.Event()
        self.demoted_listeners: list[Callable[[], None]] = []

    @property
    def storage_errors(self) -> tuple[type[Exception], ...]:
        """The exceptions a failing database query raises (sqlite3's, psycopg's)."""
        return self._store.errors

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, and serve. A ``standby`` control plane listens at once, answering HTTP
        (``/-/healthy``, ``/-/ready``: 503 ``standby``) and refusing instances with 503 and
        ``Retry-After`` (they move to their next URL), until it holds the database's active
        lock; it then loads the state and serves on the same socket (``start`` returns then)."""
        from websockets.asyncio.server import serve

        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            ssl=self.settings.ssl_context,
            process_request=self._authorize,
            max_size=self.settings.max_frame_bytes,
            ping_interval=self.settings.heartbeat_interval,
            ping_timeout=self.settings.heartbeat_interval * self.settings.missed_heartbeats,
            compression=None,
            logger=self._ws_logger,
            create_connection=None if self.settings.ssl_context else self._plain_connection(),
        )
        if self.settings.metrics_port is not None:
            from .._metrics_server import serve_metrics
            from ._status import StatusPage

            # The status page answers 404 while status_token is None (a reload may set it).
            self._metrics_server = await serve_metrics(
                self.settings.metrics_host,
                self.settings.metrics_port,
                self.metrics_text,
                ready=lambda: self.serving,
                routes=self._http_routes(StatusPage(self).routes()),
            )
            log.info("serving /metrics and /ready on %s:%d", *self._metrics_server.address)
        self.listening.set()
        if self.settings.standby:
            await self._become_active()
        for spec in await self._store.call(db.load_monitors):
            self._specs[spec.monitor_id] = spec
            self.logic.upsert_monitor(spec)
        await self._load_sites()
        self._revisions = await self._store.call(db.load_revisions)
        checkpoints_seen, instances_seen = await self._store.call(db.load_seen)
        self._owners = {i: c for i, (c, _) in instances_seen.items()}
        self.logic.configure_checkpoints(self.settings.tokens, checkpoints_seen)
        actions = Actions()
        for alert, scope in await self._store.call(db.load_open_alerts):
            actions.extend(self.logic.restore_alert(alert, scope))
        await self._dispatch(actions)
        # Which alerts a window held is not kept: an open alert under a window now is held
        # again, and sent when the window ends (perhaps a second time, never not at all).
        wall = self.clock.now().timestamp()
        for alert in self.logic.open_alerts():
            self.maintenance.hold(
                Event("alert_opened", alert.subject, wall, alert.message, alert), self._locate, wall
            )
        self._outboxed()  # the channels' outbox is this database from now on
        for sink in self.sinks:  # an outbox delivers what an earlier run (or plane) left
            if callable(start := getattr(sink, "start", None)):
                start()
        self._seen_flushed = self.clock.monotonic()
        self._loop_seen = asyncio.get_running_loop().time()
        self._spawn(self._ticker())
        self._spawn(self._watch_stalls())
        if self.settings.standby:
            self._spawn(self._hold_active())
        await self.measure()
        self._spawn(self._maintain())
        self.serving = True
        if self.settings.status_token is not None:
            from ._status import warn_if_unreachable

            warn_if_unreachable(self.settings)
        log.info("control plane listening on %s", self.url)

    def _http_routes(self, status_routes: Mapping[str, Route]) -> dict[str, Route]:
        """The metrics endpoint's routes: ``/-/healthy``, ``/-/ready`` and ``/ready`` (which
        say ``standby`` while this one stands by), and the status page, which a standby answers
        with 503 ``standby`` (the state it shows is the active's, in its memory). ``/metrics``
        is served by a standby too (``probekit_control_active`` 0)."""

        def standby_page() -> tuple[int, str, bytes, dict[str, str]]:
            return 503, _TEXT_PLAIN, _STANDBY_TEXT.encode(), {"Retry-After": _RETRY_AFTER}

        async def healthy(method: str, query: Any, header: Callable[[str], str]) -> Any:
            return 200, _TEXT_PLAIN, b"healthy\n", {}

        async def ready(method: str, query: Any, header: Callable[[str], str]) -> Any:
            if self.serving:
                return 200, _TEXT_PLAIN, b"ready\n", {}
            if self.settings.standby and not self.demoted.is_set():
                return standby_page()
            return 503, _TEXT_PLAIN, b"not ready\n", {}

        def guarded(route: Route) -> Route:
            async def answer(method: str, query: Any, header: Callable[[str], str]) -> Any:
                if not self.serving and self.settings.standby and not self.demoted.is_set():
                    return standby_page()
                return await route(method, query, header)

            return answer

        routes: dict[str, Route] = {"/-/healthy": healthy, "/-/ready": ready, "/ready": ready}
        routes.update({path: guarded(route) for path, route in status_routes.items()})
        return routes

    def _plain_connection(self) -> Any:
        """The connection class of a plain ``ws://`` server: it notices a client that starts a
        TLS handshake (a checkpoint dialling ``wss://``) and says so, at most once a minute per
        client address (``websockets`` alone logs it at DEBUG as "no valid HTTP request")."""
        from websockets.asyncio.server import ServerConnection

        told: dict[str, float] = {}
        clock = self.clock

        class PlainConnection(ServerConnection):
            first = True

            def data_received(self, data: bytes) -> None:
                if self.first:
                    self.first = False
                    if data[:2] in (b"\x16\x03", b"\x16\x02"):  # a TLS handshake record
                        address = self.remote_address
                        host = str(address[0]) if address else "?"
                        now = clock.monotonic()
                        if now - told.get(host, -math.inf) >= 60.0:
                            told[host] = now
                            log.warning(
                                "a client at %s started a TLS handshake on this plain ws:// "
                                "control plane (its URL says wss://): give the control plane "
                                "tls_cert and tls_key, or change that client's URL to ws://",
                                host,
                            )
                super().data_received(data)

        return PlainConnection

    async def stop(self) -> None:
        if self._metrics_server is not None:
            await self._metrics_server.close()
            self._metrics_server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            await self._flush_seen()
        except self._store.errors:
            log.exception("could not record the last-seen times")
        for sink in self.sinks:
            if callable(aclose := getattr(sink, "aclose", None)):
                await aclose()
        await self._store.close()

    async def _become_active(self) -> None:
        """Wait, as a standby, until this control plane holds the database's active lock."""
        waited = False
        while not await self._store.call(db.try_active_lock):
            if not waited:
                log.info(
                    "standby: another control plane is active on this database; "
                    "taking over when it stops (trying every %g s)",
                    self.settings.standby_poll,
                )
                waited = True
            await asyncio.sleep(self.settings.standby_poll)
        self.active = True
        log.info("active: holding the database's lock%s", " (took over)" if waited else "")

    async def _hold_active(self) -> None:
        """Check every ``standby_poll`` seconds that the connection holding the lock lives (a
        psycopg connection never reconnects by itself: while it answers, the lock is held)."""
        bound = max(5 * self.settings.standby_poll, 5.0)
        failures: tuple[type[Exception], ...] = (TimeoutError, *self._store.errors)
        while True:
            await asyncio.sleep(self.settings.standby_poll)
            try:
                async with asyncio.timeout(bound):
                    held = await self._store.call(db.holds_active_lock)
            except failures as exc:
                log.error("the database connection holding the active lock failed: %s", exc)
                held = False
            if not held:
                await self._demote()
                return

    async def _demote(self) -> None:
        """Stop serving: another control plane may hold the lock now."""
        log.error(
            "lost the active lock: no longer serving (instances move to a standby control "
            "plane; restart this one to stand by)"
        )
        self.active = False
        self.serving = False
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        for sink in self._outboxed():  # what they hold is delivered by the new active
            await sink.stop()
        self.demoted.set()
        for listener in self.demoted_listeners:
            listener()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        assert self._server is not None, "call start() first"
        await self._server.serve_forever()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where ``/metrics`` and ``/ready`` are served (None when ``metrics_port`` is None)."""
        return self._metrics_server.address if self._metrics_server is not None else None

    @property
    def url(self) -> str:
        scheme = "wss" if self.settings.ssl_context else "ws"
        return f"{scheme}://{self.settings.host}:{self.port}/"

    async def reconfigure(self, settings: ControlSettings) -> Reconfigured:
        """Apply new settings to the running control plane (what SIGHUP does with the config
        file's ``[control]`` and ``[[checkpoints]]``).

        Applied at once: ``tokens`` (a new checkpoint's token is accepted from now on, and its
        silence is counted from now; a removed checkpoint's connections are closed with 1008,
        its state forgotten and its ``checkpoint_down`` alert resolved; a checkpoint whose token
        changed has its connections closed, so its instances must come back with the new
        token), ``grace``, ``unanswered_runs``, ``missed_heartbeats`` (the silence threshold;
        the WebSocket ping timeout keeps its start value), ``startup_grace``, ``stale_after``,
        ``hello_timeout``, ``tick_interval``, ``retention``, ``prune_interval``,
        ``prune_batch`` and ``assignment`` (monitors move at their next run). The settings of
        :data:`RESTART_SETTINGS` (where and how it listens, the database, the heartbeat
        interval, the metrics endpoint) are not changed: they are listed in the answer's
        ``restart`` and logged at WARNING. ``ssl_context`` counts as changed only when TLS is
        switched on or off (a context is not compared by its content).
        """
        old = self.settings
        restart = tuple(
            name
            for name in RESTART_SETTINGS
            if (
                (getattr(settings, name) is None) != (getattr(old, name) is None)
                if name == "ssl_context"
                else getattr(settings, name) != getattr(old, name)
            )
        )
        kept = {name: getattr(old, name) for name in RESTART_SETTINGS}
        new = attrs.evolve(settings, **kept)
        applied = tuple(
            field.name
            for field in attrs.fields(ControlSettings)
            if field.name not in RESTART_SETTINGS
            and field.name != "tokens"
            and getattr(new, field.name) != getattr(old, field.name)
        )
        added = tuple(sorted(set(new.tokens) - set(old.tokens)))
        removed = tuple(sorted(set(old.tokens) - set(new.tokens)))
        changed = tuple(
            sorted(
                c
                for c in set(old.tokens) & set(new.tokens)
                if not hmac.compare_digest(
                    old.tokens[c].reveal().encode(), new.tokens[c].reveal().encode()
                )
            )
        )
        self._ws_logger.mask(t.reveal() for t in new.tokens.values())
        self.settings = new
        logic = self.logic
        logic.grace = new.grace
        logic.unanswered_limit = new.unanswered_runs
        logic.missed_heartbeats = new.missed_heartbeats
        logic.startup_grace = new.startup_grace
        logic.confirmations = new.confirmations
        logic.assignment = new.assignment
        logic.flap_high, logic.flap_low = new.flap_high, new.flap_low
        if logic.flap_window != new.flap_window:
            logic.flap_window = new.flap_window
            for mon in logic.monitors.values():
                mon.history = deque(mon.history, maxlen=new.flap_window)
        actions = logic.reconfigure_checkpoints(new.tokens)
        closed = 0
        for peer in list(self._peers.values()):
            why = None
            if peer.checkpoint_id in removed:
                why = "checkpoint removed"
            elif peer.checkpoint_id in changed:
                why = "token changed"
            if why is None:
                continue
            closed += 1
            del self._peers[peer.instance_id]
            log.warning(
                "closing the connection of %s of %s: %s by a reload",
                peer.instance_id,
                peer.checkpoint_id,
                why,
            )
            # In the background: the closing handshake may wait for a peer that never answers.
            self._spawn(peer.conn.close(1008, why))
            if peer.checkpoint_id in changed:
                logic.instance_disconnected(peer.instance_id)
        await self._dispatch(actions)
        if added or removed or changed or applied:
            log.info(
                "reconfigured: %s",
                "; ".join(
                    part
                    for part in (
                        f"checkpoints added: {', '.join(added)}" if added else "",
                        f"checkpoints removed: {', '.join(removed)}" if removed else "",
                        f"tokens changed: {', '.join(changed)}" if changed else "",
                        f"settings applied: {', '.join(applied)}" if applied else "",
                    )
                    if part
                ),
            )
        if restart:
            log.warning(
                "reconfigure: these settings take a restart and keep their running values: %s",
                ", ".join(restart),
            )
        return Reconfigured(applied, restart, added, removed, changed, closed)

    # -- monitors ------------------------------------------------------------------------------

    async def add_monitor(
        self, monitor_id: str, checkpoint_id: str, definition: Mapping[str, Any], interval: float
    ) -> MonitorSpec:
        """Add or change a monitor; instances of its checkpoint get a delta sync at once.

        Adding a monitor exactly as it is already defined changes nothing (its revision stays,
        so instances need not rebuild it). A ``script`` definition is refused
        (:class:`~probekit.DefinitionError`): it runs code, so it is only defined locally.
        """
        (spec,) = await self.add_monitors([(monitor_id, checkpoint_id, definition, interval)])
        return spec

    async def add_monitors(
        self, monitors: Iterable[tuple[str, str, Mapping[str, Any], float]]
    ) -> list[MonitorSpec]:
        """:meth:`add_monitor` for many ``(monitor_id, checkpoint_id, definition, interval)``
        at once: one database write for all, and one delta sync per checkpoint (a config file
        of 2,000 monitors is 1 sync, not 2,000). Every definition is checked before anything is
        stored; the first bad one raises and nothing is added."""
        specs: list[MonitorSpec] = []
        changed: list[MonitorSpec] = []
        pending: dict[str, MonitorSpec] = {}
        for monitor_id, checkpoint_id, definition, interval in monitors:
            spec = self._next_spec(monitor_id, checkpoint_id, definition, interval, pending)
            specs.append(spec)
            if pending.get(monitor_id) is not spec and self._specs.get(monitor_id) is not spec:
                pending[monitor_id] = spec
                changed.append(spec)
        if not changed:
            return specs
        final = list(pending.values())

        def save(conn: db.Connection) -> None:
            for spec in final:
                db.save_monitor(conn, spec)

        await self._store.call(save)
        by_checkpoint: dict[str, list[MonitorSpec]] = {}
        for spec in final:
            self._specs[spec.monitor_id] = spec
            self._revisions[spec.monitor_id] = spec.revision
            self.logic.upsert_monitor(spec)
            by_checkpoint.setdefault(spec.checkpoint_id, []).append(spec)
        for checkpoint_id, batch in by_checkpoint.items():
            await self._broadcast(checkpoint_id, self._sync(batch, []))
        return [pending.get(s.monitor_id, s) for s in specs]

    def _next_spec(
        self,
        monitor_id: str,
        checkpoint_id: str,
        definition: Mapping[str, Any],
        interval: float,
        pending: Mapping[str, MonitorSpec],
    ) -> MonitorSpec:
        """The spec ``add_monitor`` would store (the current one when nothing changes)."""
        if definition.get("kind") == "script":
            from ..probes.script import CONTROL_PLANE_REFUSAL

            raise DefinitionError("kind", CONTROL_PLANE_REFUSAL)
        old = pending.get(monitor_id) or self._specs.get(monitor_id)
        if old is not None and (old.checkpoint_id, old.interval, old.definition) == (
            checkpoint_id,
            float(interval),
            dict(definition),
        ):
            return old
        # Revisions never go back, even for an id removed and added again: an instance that
        # held the old definition must not take the new one for it.
        last = max(old.revision if old else 0, self._revisions.get(monitor_id, 0))
        spec = MonitorSpec(monitor_id, checkpoint_id, float(interval), dict(definition), last + 1)
        p.MonitorDefinition(  # validates the definition as the wire will carry it
            monitor_id=monitor_id,
            revision=spec.revision,
            interval=spec.interval,
            definition=spec.definition,
        )
        return spec

    @property
    def monitors(self) -> dict[str, MonitorSpec]:
        """The monitors defined now, by id (a copy)."""
        return dict(self._specs)

    async def remove_monitor(self, monitor_id: str) -> None:
        """Remove a monitor; its open alerts resolve, its checkpoint's instances drop it."""
        spec = self._specs.pop(monitor_id, None)
        if spec is None:
            return
        await self._store.call(lambda c: db.delete_monitor(c, monitor_id))
        await self._dispatch(self.logic.remove_monitor(monitor_id))
        await self._broadcast(spec.checkpoint_id, self._sync([], [monitor_id]))

    @property
    def sites(self) -> dict[str, SitePolicy]:
        """The monitors run from several checkpoints, by monitor id (see :meth:`set_sites`)."""
        return {k: v.policy for k, v in self.logic.sites.items()}

    def _set_sites(self, policy: SitePolicy) -> Actions:
        try:
            return self.logic.set_sites(policy)
        except ValueError as exc:
            raise DefinitionError(f"sites.{policy.monitor_id}", str(exc)) from None

    async def _load_sites(self) -> None:
        """Take back the site policies stored by :meth:`set_sites` (those given to the
        constructor win, and are stored), before the open alerts are taken back."""
        for policy in await self._store.call(db.load_sites):
            if policy.monitor_id in self.logic.sites:
                continue
            try:
                self._set_sites(policy)
            except DefinitionError as exc:
                log.warning("a stored site policy no longer holds; not taken back: %s", exc)
        given = list(self.sites.values())
        await self._store.call(lambda c: db.save_sites(c, given))

    async def set_sites(self, policy: SitePolicy) -> None:
        """Watch ``policy.monitor_id`` from several checkpoints: its ``locations`` are monitors
        (each on its own checkpoint, added with :meth:`add_monitor`) that open no alert of their
        own; a ``monitor_down`` alert for ``policy.monitor_id`` opens when ``min_failing`` of
        them are confirmed down. Replaces a policy of the same id. :class:`DefinitionError`
        when a location is listed twice or is another policy's, or ``min_failing`` is out of
        range. The policy is stored in ``db_path`` and taken back at start."""
        actions = self._set_sites(policy)
        await self._store.call(lambda c: db.save_sites(c, [policy]))
        await self._dispatch(actions)

    async def remove_sites(self, monitor_id: str) -> None:
        """Forget a :class:`SitePolicy` (here and in ``db_path``); its open alert resolves (its
        locations stay)."""
        actions = self.logic.remove_sites(monitor_id)
        await self._store.call(lambda c: db.delete_sites(c, monitor_id))
        await self._dispatch(actions)

    async def set_autonomous(self, checkpoint_id: str, autonomous: bool) -> None:
        """Tell a checkpoint's instances to run their definitions on their own (or to stop)."""
        self._autonomous[checkpoint_id] = autonomous
        if autonomous:
            self.logic.autonomous.add(checkpoint_id)
        else:
            self.logic.autonomous.discard(checkpoint_id)
        await self._broadcast(checkpoint_id, self._sync([], []))

    async def run_now(self, monitor_id: str, instance_id: str | None = None) -> str | None:
        """Send an ``adhoc`` run; returns its request id, or None when no instance can take it.

        Without ``instance_id`` the run goes where the monitor's scheduled runs go: with
        ``assignment = "spread"`` its instance by rendezvous hashing, else any live instance
        of its checkpoint that has the kind."""
        spec = self._specs[monitor_id]
        target = instance_id or self.logic.pick(spec.checkpoint_id, spec.kind, monitor_id)
        if target is None:
            return None
        order = self.logic.order(target, monitor_id, "adhoc", self.clock.monotonic())
        await self._dispatch(Actions(runs=[order]))
        return order.request_id

    async def drain(self, instance_id: str, reason: str = "") -> None:
        peer = self._peers.get(instance_id)
        if peer is not None:
            await self._send(peer, p.Drain(reason=reason))

    # -- queries -------------------------------------------------------------------------------

    @property
    def connected(self) -> list[str]:
        return sorted(self._peers)

    def connected_checkpoints(self) -> list[str]:
        """The checkpoint of each connected instance (one entry per instance)."""
        return [peer.checkpoint_id for peer in self._peers.values()]

    def stats(self) -> dict[str, int]:
        """Counters: results stored, dropped as duplicates and refused; runs sent, outstanding
        and reassigned (after going unanswered); instances cut for leaving runs unanswered;
        instances connected now."""
        return {
            "results_stored": self.results_stored,
            "duplicates": self.duplicates,
            "results_refused": self.results_refused,
            "runs_sent": self.runs_sent,
            "runs_outstanding": len(self.logic.outstanding),
            "runs_reassigned": self.logic.reassigned,
            "instances_cut": self.logic.cut,
            "connected": len(self._peers),
        }

    def metrics_text(self) -> str:
        """The Prometheus text exposition of this control plane (what ``/metrics`` serves)."""
        from ._metrics import metrics_text

        return metrics_text(self)

    def prune_lag(self) -> float:
        """Seconds by which the oldest prunable row is past ``retention`` (as last measured),
        0 when none is, or when everything is kept."""
        retention = self.settings.retention
        if retention is None or self.oldest_row is None:
            return 0.0
        return max(0.0, self.clock.now().timestamp() - retention - self.oldest_row)

    async def prune(self) -> Pruned:
        """Delete the results, events, runs and resolved alerts older than ``retention``, at
        most ``prune_batch`` rows per statement, each statement its own call on the database's
        worker thread (so other queries go between them). Nothing when ``retention`` is None."""
        retention = self.settings.retention
        if retention is None:
            return Pruned({}, 0)
        cutoff = self.clock.now().timestamp() - retention
        limit = self.settings.prune_batch
        deleted: dict[str, int] = {}
        statements = 0
        for table in db.PRUNED_TABLES:
            total = 0
            while True:
                count = await self._store.call(
                    functools.partial(db.prune_batch, table=table, cutoff=cutoff, limit=limit)
                )
                statements += 1
                total += count
                if count < limit:
                    break
            deleted[table] = total
        pruned = sum(deleted.values())
        self.rows_pruned += pruned
        if pruned and self._store.postgres:
            emptied = [t for t, n in deleted.items() if n]
            await self._store.call(functools.partial(db.vacuum, tables=emptied))
        if pruned:
            log.info(
                "pruned %d rows older than %g s (%s)",
                pruned,
                retention,
                ", ".join(f"{n} {t}" for t, n in deleted.items() if n),
            )
        return Pruned(deleted, statements)

    async def measure(self) -> None:
        """Read the database's size and the time of its oldest prunable row (for metrics)."""

        def read(c: db.Connection) -> tuple[int, float | None]:
            return db.size_bytes(c), db.oldest(c)

        self.db_bytes, self.oldest_row = await self._store.call(read)

    async def _maintain(self) -> None:
        """Prune and measure, once every ``prune_interval`` seconds."""
        while True:
            try:
                await self.prune()
                await self.measure()
            except self._store.errors:
                log.exception("could not prune the control-plane database")
            await asyncio.sleep(self.settings.prune_interval)

    async def alerts(self, *, open_only: bool = True) -> list[dict[str, Any]]:
        """The alerts in the database (open ones only, by default), oldest first: ``alert_id``,
        ``kind``, ``subject``, ``scope``, ``opened_at``, ``message``, ``resolved_at`` (times in
        wall-clock Unix seconds; ``resolved_at`` None while open)."""
        return await self._store.call(lambda c: db.query_alerts(c, open_only))

    async def last_seen(self) -> dict[str, dict[str, Any]]:
        """When each configured checkpoint and each instance ever seen was last heard from
        (wall-clock Unix seconds), as kept in the database: ``{"checkpoints": {id: time or
        None}, "instances": {id: {"checkpoint_id": ..., "last_seen": time}}}``."""
        await self._flush_seen()
        checkpoints, instances = await self._store.call(db.load_seen)
        return {
            "checkpoints": {c: checkpoints.get(c) for c in sorted(self.settings.tokens)},
            "instances": {
                i: {"checkpoint_id": c, "last_seen": t} for i, (c, t) in sorted(instances.items())
            },
        }

    async def results(self, monitor_id: str | None = None) -> list[dict[str, Any]]:
        """Stored results (oldest first): one dict per result with the envelope fields
        (``result_id``, ``monitor_id``, ``instance_id``, ``request_id``, ``reason``, ``status``,
        ``error_kind``, ``started_at``), ``stored_at`` (wall-clock Unix seconds) and ``result``,
        the result's JSON form as a dict (:func:`~probekit.result_from_json` reads it back)."""

        def query(c: db.Connection) -> list[dict[str, Any]]:
            cols = list(_RESULT_COLUMNS)
            sql = f"SELECT {', '.join(cols)}, body FROM results"  # noqa: S608 - fixed columns
            args: tuple[Any, ...] = ()
            if monitor_id is not None:
                sql += " WHERE monitor_id=?"
                args = (monitor_id,)
            rows = []
            for *values, body in c.execute(sql + f" ORDER BY stored_at, {db.rowid(c)}", args):
                row = dict(zip(cols, values, strict=True))
                row["result"] = json.loads(body) if body else None
                rows.append(row)
            return rows

        return await self._store.call(query)

    async def result_count(self) -> int:
        return int(
            (
                await self._store.call(
                    lambda c: c.execute("SELECT count(*) FROM results").fetchone()
                )
            )[0]
        )

    async def events(self) -> list[dict[str, Any]]:
        """Recorded events, oldest first: ``kind``, ``subject``, ``at`` (wall-clock Unix seconds;
        None for events recorded by a version that kept no time), ``message``, ``alert_id``,
        ``alert_kind``."""

        def query(c: db.Connection) -> list[dict[str, Any]]:
            cols = ["kind", "subject", "at", "message", "alert_id", "alert_kind"]
            rows = c.execute(f"SELECT {', '.join(cols)} FROM events ORDER BY id")  # noqa: S608 - fixed columns
            return [dict(zip(cols, row, strict=True)) for row in rows]

        return await self._store.call(query)

    # -- connections ---------------------------------------------------------------------------

    def _authorize(self, connection: Any, request: Any) -> Any:
        path = request.path.partition("?")[0]
        if path in ("/-/healthy", "/-/ready"):  # for load balancers and supervisors
            if path == "/-/healthy":
                return connection.respond(HTTPStatus.OK, "healthy\n")
            if self.serving:
                return connection.respond(HTTPStatus.OK, "ready\n")
            return self._standby_response(connection)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        for checkpoint_id, secret in self.settings.tokens.items():
            if scheme.lower() == "bearer" and hmac.compare_digest(
                token.encode(), secret.reveal().encode()
            ):
                if not self.serving:  # a standby: the instance belongs on the active one
                    return self._standby_response(connection)
                connection.probekit_checkpoint = checkpoint_id
                connection.probekit_token = secret
                return None
        log.warning("refused a connection from %s: bad or missing token", connection.remote_address)
        return connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")

    def _standby_response(self, connection: Any) -> Any:
        """503, ``Retry-After`` and ``Probekit-Role: standby`` (what a checkpoint recognises);
        or a plain 503 ``not ready`` from a plane that is not a standby (starting, demoted)."""
        if not self.settings.standby or self.demoted.is_set():
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
        response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, _STANDBY_TEXT)
        response.headers["Retry-After"] = _RETRY_AFTER
        response.headers[p.ROLE_HEADER] = "standby"
        return response

    async def _handle(self, conn: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        checkpoint_id: str = conn.probekit_checkpoint
        peer: _Peer | None = None
        try:
            hello = await self._expect_hello(conn, checkpoint_id)
            if hello is None:
                return
            if not self._token_current(checkpoint_id, conn.probekit_token):
                # A reload removed or changed the token while this connection said hello.
                log.warning(
                    "closing the connection of %s of %s: its token was changed or removed",
                    hello.instance_id,
                    checkpoint_id,
                )
                await conn.close(1008, "token changed")
                return
            # The connection is this instance, of this checkpoint, until it closes.
            peer = _Peer(conn, checkpoint_id, hello.instance_id)
            previous = self._peers.get(hello.instance_id)
            if previous is not None:
                await previous.conn.close(1008, "replaced by a newer connection")
            self._peers[hello.instance_id] = peer
            self._owners[hello.instance_id] = checkpoint_id
            self._saw(peer)
            await self._dispatch(
                self.logic.instance_connected(hello.instance_id, checkpoint_id, hello.kinds)
            )
            await self._send(peer, self._sync_for(hello))
            async for frame in conn:
                await self._on_frame(peer, frame)
        except ConnectionClosed:
            pass
        finally:
            if peer is not None and self._peers.get(peer.instance_id) is peer:
                del self._peers[peer.instance_id]
                self.logic.instance_disconnected(peer.instance_id)

    def _token_current(self, checkpoint_id: str, token: Secret) -> bool:
        current = self.settings.tokens.get(checkpoint_id)
        return current is not None and hmac.compare_digest(
            current.reveal().encode(), token.reveal().encode()
        )

    async def _expect_hello(self, conn: Any, checkpoint_id: str) -> p.Hello | None:
        """The connection's first frame, which must be a ``hello``. Anything else is answered
        with the error it earns (``unknown_type`` for a message of another type) and the
        connection is closed with 1002 (1008 for ``unauthorized``)."""
        try:
            async with asyncio.timeout(self.settings.hello_timeout):
                frame = await conn.recv()
            message = p.decode(frame, max_bytes=p.MAX_FRAME_BYTES, accept=(p.Hello,))
        except TimeoutError:
            await conn.close(1008, "no hello")
            return None
        except p.ProtocolError as exc:
            if exc.code == "unknown_type":
                exc = p.ProtocolError(
                    "unknown_type", f"the first frame must be a hello; {exc.message}"
                )
            log.warning(
                "refused a connection of checkpoint %s: its first frame is not a valid hello: %s",
                checkpoint_id,
                exc,
            )
            await conn.send(p.encode(p.error_reply(exc)))
            reason = "unauthorized" if exc.code == "unauthorized" else "no hello"
            await conn.close(exc.close_code or 1002, reason)
            return None
        assert isinstance(message, p.Hello)
        refusal = None
        if message.checkpoint_id != checkpoint_id:
            refusal = "the token is for another checkpoint"
        elif self._owners.get(message.instance_id, checkpoint_id) != checkpoint_id:
            refusal = f"instance id {message.instance_id!r} belongs to another checkpoint"
        if refusal is not None:
            log.warning(
                "refused a hello as %s of %s: %s", message.instance_id, checkpoint_id, refusal
            )
            await conn.send(p.encode(p.Error(code="unauthorized", message=refusal)))
            await conn.close(1008, "unauthorized")
            return None
        log.info("instance %s of %s connected", message.instance_id, checkpoint_id)
        return message

    async def _on_frame(self, peer: _Peer, frame: str | bytes) -> None:
        await self._take_frame(peer, frame)
        if peer.budget.exceeded:
            log.warning(
                "closing the connection of %s of %s: more than %d error replies within %g s",
                peer.instance_id,
                peer.checkpoint_id,
                p.ERROR_BUDGET,
                p.ERROR_WINDOW,
            )
            await peer.conn.close(p.TOO_MANY_ERRORS_CLOSE, p.TOO_MANY_ERRORS_REASON)

    async def _take_frame(self, peer: _Peer, frame: str | bytes) -> None:
        try:
            # The protocol's limit (1 MiB), not the WebSocket layer's hard one: a frame between
            # the two is answered with too_large and the connection serves on.
            message = p.decode(frame, max_bytes=p.MAX_FRAME_BYTES, accept=p.FROM_INSTANCE)
        except p.ProtocolError as exc:
            log.info("bad frame from %s: %s", peer.instance_id, exc)
            await self._send(peer, p.error_reply(exc))
            if exc.close_code is not None:
                await peer.conn.close(exc.close_code, exc.code)
            return
        if isinstance(message, p.Results):
            await self._on_results(peer, message)
        elif isinstance(message, p.Heartbeat):
            self._saw(peer)
            await self._dispatch(self.logic.heartbeat(peer.instance_id))
        elif isinstance(message, p.Error):
            log.warning(
                "instance %s reports %s: %s%s",
                peer.instance_id,
                message.code,
                message.message,
                f" (run {message.ref})" if message.ref else "",
            )
            if message.ref is not None:  # a run it will not carry out goes elsewhere at once
                await self._dispatch(self.logic.run_refused(peer.instance_id, message.ref))
        elif isinstance(message, p.Hello):  # the connection stays bound to the first one's
            log.warning(
                "instance %s sent another hello (as %s); refused",
                peer.instance_id,
                message.instance_id,
            )
            await self._send(
                peer,
                p.Error(
                    code="unknown_type",
                    message=f"a second hello on one connection is refused; this connection is "
                    f"instance {peer.instance_id!r}",
                ),
            )
        else:
            await self._send(
                peer, p.Error(code="unknown_type", message=f"unexpected {message.type}")
            )

    async def _on_results(self, peer: _Peer, message: p.Results) -> None:
        envelopes = message.results
        verdicts: list[Verdict | Refusal] = [
            self.logic.check_result(
                peer.instance_id,
                peer.checkpoint_id,
                e.instance_id,
                e.monitor_id,
                e.request_id,
                e.reason,
            )
            for e in envelopes
        ]
        lookups = [
            e.request_id
            for e, v in zip(envelopes, verdicts, strict=True)
            if v == "lookup" and e.request_id is not None
        ]
        if lookups:  # not outstanding: is the run on record as sent to this instance?
            found = await self._store.call(lambda c: db.find_runs(c, lookups))
            verdicts = [
                self.logic.check_recorded(
                    peer.instance_id, e.request_id, found.get(e.request_id), e.monitor_id, e.reason
                )
                if v == "lookup" and e.request_id is not None
                else v
                for e, v in zip(envelopes, verdicts, strict=True)
            ]
        accepted = [
            (e, v) for e, v in zip(envelopes, verdicts, strict=True) if not isinstance(v, Refusal)
        ]
        stored_at = self.clock.now().timestamp()
        rows = [
            (
                e.result_id,
                e.monitor_id,
                peer.checkpoint_id,
                e.instance_id,
                e.request_id,
                e.reason,
                e.result.status.value,
                e.result.error.kind.value if e.result.error else None,
                e.result.started_at.isoformat(),
                stored_at,
                json.dumps(converter.unstructure(e.result), separators=(",", ":")),
            )
            for e, _ in accepted
        ]
        fresh_ids = await self._store.call(lambda c: db.insert_results(c, rows)) if rows else set()
        self.results_stored += len(fresh_ids)
        self.duplicates += len(accepted) - len(fresh_ids)
        refused = [
            (i, e, v)
            for i, (e, v) in enumerate(zip(envelopes, verdicts, strict=True))
            if isinstance(v, Refusal)
        ]
        if refused:
            await self._refuse(peer, refused)
        # Refused results are acked too: they will never be stored, so resending cannot help,
        # and an honest instance must not keep them in its spool for ever.
        await self._send(peer, p.Ack(result_ids=tuple(e.result_id for e in envelopes)))
        now = self.clock.now()
        actions = Actions()
        for e, verdict in accepted:
            if e.result_id not in fresh_ids:
                continue
            for listener in self.result_listeners:
                try:
                    listener(e)
                except Exception:
                    log.exception("result listener %r failed", listener)
            if verdict != "act":
                continue  # a late answer: its run was reassigned, or sent before a restart
            if (now - e.result.started_at).total_seconds() > self.settings.stale_after:
                continue  # an old result uploaded after an outage: stored, not acted on
            actions.extend(
                self.logic.on_result(
                    e.monitor_id, e.instance_id, e.request_id, e.reason, e.result.status
                )
            )
        await self._dispatch(actions)

    async def _refuse(
        self, peer: _Peer, refused: list[tuple[int, p.ResultEnvelope, Refusal]]
    ) -> None:
        """Answer a results frame's refused envelopes with one ``error``, count them, and log
        each kind of refusal once per connection at WARNING (then at DEBUG)."""
        self.results_refused += len(refused)
        for index, _envelope, refusal in refused:
            text = f"results[{index}].{refusal.field}: {refusal.message}"
            if refusal.why in peer.warned:
                level = logging.DEBUG
            else:
                peer.warned.add(refusal.why)
                level = logging.WARNING
            log.log(
                level,
                "refused a result from instance %s of %s (%s; not stored, acked): %s",
                peer.instance_id,
                peer.checkpoint_id,
                refusal.why,
                text,
            )
        index, envelope, refusal = refused[0]
        message = f"results[{index}].{refusal.field}: {refusal.message}"
        if len(refused) > 1:
            message += f" (and {len(refused) - 1} more results refused)"
        message += "; refused results are acked and not stored"
        if len(message) > p.MAX_TEXT_LENGTH:
            message = message[: p.MAX_TEXT_LENGTH - 3] + "..."
        await self._send(peer, p.Error(code="bad_field", message=message, ref=envelope.request_id))

    def _saw(self, peer: _Peer) -> None:
        self._seen[peer.instance_id] = (peer.checkpoint_id, self.clock.now().timestamp())

    async def _flush_seen(self) -> None:
        """Write the last-seen times gathered since the last write."""
        if not self._seen:
            return
        seen, self._seen = self._seen, {}
        rows = [(i, c, t) for i, (c, t) in seen.items()]
        await self._store.call(lambda c: db.save_seen(c, rows))

    # -- doing ---------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            self._check_stall()
            await self._dispatch(self.logic.tick())
            await self.alerting_tick()
            now = self.clock.monotonic()
            if now - self._seen_flushed >= self.settings.heartbeat_interval:
                self._seen_flushed = now
                try:
                    await self._flush_seen()
                except self._store.errors:
                    log.exception("could not record the last-seen times")
            await asyncio.sleep(self.settings.tick_interval)

    async def _watch_stalls(self) -> None:
        """Note every ``tick_interval`` that the event loop runs (see :meth:`_check_stall`)."""
        while True:
            await asyncio.sleep(self.settings.tick_interval)
            self._check_stall()

    def _check_stall(self) -> None:
        """If the event loop stood still for longer than the grace (the process was stopped,
        or the loop blocked), nothing could be heard meanwhile: the instances are not held to
        account for that time. Called by the ticker before each round and by a watcher that
        only sleeps, so a stall during the ticker's own awaits counts too."""
        now = asyncio.get_running_loop().time()
        overrun = now - self._loop_seen - self.settings.tick_interval
        self._loop_seen = now
        if overrun > self.settings.grace:
            log.warning("the control plane did not run for %.1f s", overrun)
            self.logic.stood_still(overrun)

    async def _dispatch(self, actions: Actions) -> None:
        if actions.runs:
            await self._record_runs(actions.runs)
        for order in actions.runs:
            await self._send_run(order)
        for event in actions.events:
            await self._record(event)
        for instance_id, reason in actions.cut:
            self._cut(instance_id, reason)

    async def _record_runs(self, orders: list[RunOrder]) -> None:
        """Keep every run sent (before it is sent): a result answering it is genuine even after
        a restart, and no other instance can claim it."""
        sent_at = self.clock.now().timestamp()
        rows = []
        for order in orders:
            inst = self.logic.instances.get(order.instance_id)
            checkpoint_id = inst.checkpoint_id if inst is not None else ""
            rows.append(
                (
                    order.request_id,
                    order.instance_id,
                    checkpoint_id,
                    order.monitor_id,
                    order.reason,
                    sent_at,
                    order.deadline,
                )
            )
        await self._store.call(lambda c: db.insert_runs(c, rows))

    def _cut(self, instance_id: str, reason: str) -> None:
        peer = self._peers.get(instance_id)
        if peer is None:
            return
        log.warning("closing the connection of %s: %s", instance_id, reason)
        # In the background: the closing handshake may wait for a peer that never answers.
        self._spawn(peer.conn.close(1008, "unresponsive: runs left unanswered"))

    async def _send_run(self, order: RunOrder) -> None:
        peer = self._peers.get(order.instance_id)
        if peer is None:
            log.info(
                "cannot send %s of %s: %s is gone",
                order.reason,
                order.monitor_id,
                order.instance_id,
            )
            return
        self.runs_sent += 1
        await self._send(
            peer,
            p.Run(
                request_id=order.request_id,
                reason=order.reason,
                monitor_id=order.monitor_id,
                deadline=order.deadline,
            ),
        )

    def _locate(self, subject: str) -> tuple[str | None, str | None]:
        """(monitor id, checkpoint id) of an event's subject: a monitor, a checkpoint or an
        instance; a monitor run from several checkpoints has no one checkpoint."""
        spec = self._specs.get(subject)
        if spec is not None:
            return subject, spec.checkpoint_id
        if subject in self.logic.sites:
            return subject, None
        if subject in self.settings.tokens:
            return None, subject
        inst = self.logic.instances.get(subject)
        return None, inst.checkpoint_id if inst is not None else self._owners.get(subject)

    async def alerting_tick(self) -> None:
        """Send the alerts held by maintenance windows that have ended, and the open alerts due
        again at sinks with a ``renotify`` interval (the ticker calls this; tests driving a
        fake clock may too)."""
        wall = self.clock.now().timestamp()
        open_alerts = self.logic.open_alerts()
        released = self.maintenance.release((a.alert_id for a in open_alerts), self._locate, wall)
        for event in released:
            log.info("%s %s: sent after its maintenance window", event.kind, event.subject)
            await self._record(event, released=True)
        shown = [
            a
            for a in open_alerts
            if a.alert_id not in self.maintenance.held
            and self.maintenance.covering(*self._locate(a.subject), wall) is None
        ]
        for sink, event in self._renotifier.due(self.sinks, shown, self.clock.monotonic(), wall):
            try:
                await sink.send(event)  # type: ignore[attr-defined]
            except Exception:
                log.exception("alert sink %r failed", sink)

    def add_maintenance(self, window: MaintenanceWindow) -> MaintenanceWindow:
        """Add a maintenance window (or replace the one with its id); it applies at once. Windows
        added here are not kept across a restart (those of the config file are)."""
        self.maintenance.add(window)
        return window

    def start_maintenance(
        self,
        window_id: str,
        duration: float,
        *,
        monitors: Iterable[str] = (),
        checkpoints: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        reason: str = "",
    ) -> MaintenanceWindow:
        """An ad-hoc window from now for ``duration`` seconds."""
        now = self.clock.now().timestamp()
        window = MaintenanceWindow(
            window_id,
            monitors=tuple(monitors),
            checkpoints=tuple(checkpoints),
            labels=labels or {},
            start=now,
            end=now + duration,
            reason=reason,
        )
        return self.add_maintenance(window)

    def end_maintenance(self, window_id: str) -> bool:
        """Remove a window; the alerts it held and still open are sent at the next tick."""
        return self.maintenance.remove(window_id)

    def maintenance_windows(self, *, active_only: bool = False) -> list[MaintenanceWindow]:
        """The maintenance windows (only those active now, with ``active_only``)."""
        now = self.clock.now().timestamp()
        windows = list(self.maintenance.windows.values())
        return [w for w in windows if w.active(now)] if active_only else windows

    def maintenance_status(self) -> list[dict[str, Any]]:
        """Each maintenance window as plain data (for a status page or an API): ``window_id``,
        ``monitors``, ``checkpoints``, ``labels``, ``reason``, ``active`` now, ``starts`` and
        ``ends`` of the occurrence active now (wall-clock Unix seconds; None when inactive or
        open-ended), ``weekly`` (days 0=Monday, ``at``, ``duration``, ``timezone``, or None)
        and ``held``, the ids of the open alerts it holds back."""
        now = self.clock.now().timestamp()
        out = []
        for window in self.maintenance.windows.values():
            span = window.span(now)
            weekly = window.weekly
            out.append(
                {
                    "window_id": window.window_id,
                    "monitors": list(window.monitors),
                    "checkpoints": list(window.checkpoints),
                    "labels": dict(window.labels),
                    "reason": window.reason,
                    "active": span is not None,
                    "starts": span[0] if span and math.isfinite(span[0]) else None,
                    "ends": span[1] if span and math.isfinite(span[1]) else None,
                    "weekly": None
                    if weekly is None
                    else {
                        "days": list(weekly.days),
                        "at": weekly.at,
                        "duration": weekly.duration,
                        "timezone": weekly.timezone,
                    },
                    "held": sorted(
                        alert_id
                        for alert_id, (_, held_by) in self.maintenance.held.items()
                        if held_by == window.window_id
                    ),
                }
            )
        return out

    def in_maintenance(self, monitor_id: str) -> MaintenanceWindow | None:
        """The window holding ``monitor_id``'s alerts now, if any."""
        return self.maintenance.covering(*self._locate(monitor_id), self.clock.now().timestamp())

    async def _record(self, event: Event, *, released: bool = False) -> None:
        event = with_event_id(event)
        alert: Alert | None = event.alert
        held = (
            None
            if released or event.kind == "alert_repeated"
            else self.maintenance.hold(event, self._locate, event.at)
        )
        row = (
            event.kind,
            event.subject,
            event.at,
            f"{event.message} [held: {held}]" if held else event.message,
            alert.alert_id if alert else None,
            alert.kind if alert else None,
        )
        opened = None
        resolved = None
        if (
            alert is not None
            and event.kind in ("alert_opened", "kind_unavailable")
            and not released
        ):
            opened = (alert, self.logic.alert_scope(alert.alert_id))
        elif alert is not None and event.kind == "alert_resolved":
            resolved = (alert.alert_id, event.at)
        # The channels' outbox entries go in the transaction that records the event (and the
        # alert's state): whichever control plane is active after a crash delivers them.
        outboxed = [] if held else [s for s in self._outboxed() if s.wants(event)]
        entries = [sink.entry(event) for sink in outboxed]
        dropped = await self._store.call(
            lambda c: db.record_event(c, row, opened, resolved, entries)
        )
        for durable in outboxed:
            durable.note_dropped(dropped.get(durable.name, 0))
            durable.wake()
        if held:
            log.info("%s %s held back: %s", event.kind, event.subject, held)
            return
        for sink in self.sinks:
            if isinstance(sink, DurableSink) and sink.store is self._store:
                continue  # (in the outbox already, or a kind it does not deliver)
            try:
                await sink.send(event)
            except Exception:
                log.exception("alert sink %r failed", sink)

    def start_sink(self, sink: AlertSink) -> None:
        """Start a sink added to :attr:`sinks` while running (what a reload does): a
        :class:`DurableSink`'s outbox is this control plane's database."""
        if sink not in self.sinks:
            self.sinks.append(sink)
        if isinstance(sink, DurableSink) and sink.store is None:
            sink.bind(self._store)
        if callable(start := getattr(sink, "start", None)):
            start()

    def _outboxed(self) -> list[DurableSink]:
        """The sinks with an outbox, each bound to this control plane's database."""
        out = []
        for sink in self.sinks:
            if isinstance(sink, DurableSink):
                if sink.store is None:
                    sink.bind(self._store)
                if sink.store is self._store:
                    out.append(sink)
        return out

    async def _send(self, peer: _Peer, message: p.Message) -> None:
        from websockets.exceptions import ConnectionClosed

        if isinstance(message, p.Error):  # every error reply counts against the budget
            peer.budget.spend(self.clock.monotonic())
        # A sync too large for one frame (what an instance decodes is bounded) goes as several.
        parts = split_sync(message) if isinstance(message, p.Sync) else [message]
        try:
            for part in parts:
                await peer.conn.send(p.encode(part))
        except ConnectionClosed:
            log.debug("%s closed before %s could be sent", peer.instance_id, message.type)

    async def _broadcast(self, checkpoint_id: str, message: p.Message) -> None:
        for peer in list(self._peers.values()):
            if peer.checkpoint_id == checkpoint_id:
                await self._send(peer, message)

    def _sync(
        self,
        upserts: Iterable[MonitorSpec],
        deletes: Iterable[str],
        *,
        full: bool = False,
        checkpoint_id: str | None = None,
    ) -> p.Sync:
        revision = max((s.revision for s in self._specs.values()), default=0)
        autonomous = False
        for spec in upserts:
            autonomous = self._autonomous.get(spec.checkpoint_id, False)
        if checkpoint_id is not None:
            autonomous = self._autonomous.get(checkpoint_id, False)
        return p.Sync(
            full=full,
            revision=revision,
            upserts=tuple(
                p.MonitorDefinition(
                    monitor_id=s.monitor_id,
                    revision=s.revision,
                    interval=s.interval,
                    definition=s.definition,
                )
                for s in upserts
            ),
            deletes=tuple(deletes),
            autonomous=autonomous,
        )

    def _sync_for(self, hello: p.Hello) -> p.Sync:
        mine = [s for s in self._specs.values() if s.checkpoint_id == hello.checkpoint_id]
        changed = [s for s in mine if hello.holdings.get(s.monitor_id) != s.revision]
        gone = sorted(set(hello.holdings) - {s.monitor_id for s in mine})
        full = not hello.holdings
        return self._sync(
            mine if full else changed, gone, full=full, checkpoint_id=hello.checkpoint_id
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


_RESULT_COLUMNS: tuple[str, ...] = (
    *("result_id", "monitor_id", "instance_id", "request_id"),
    *("reason", "status", "error_kind", "started_at", "stored_at"),
)
