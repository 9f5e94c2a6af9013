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
import sqlite3
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

import attrs

from .. import protocol as p
from .._clock import Clock, SystemClock
from .._context import ProbeContext
from .._dial import Dialer
from .._exceptions import DefinitionError
from .._logging import MaskingLogger
from .._policy import EgressPolicy
from .._result import Status
from .._secret import Secret
from .._serialization import converter
from . import _store as db
from ._config import ControlConfig, load_control_config
from ._logic import Actions, Alert, ControlLogic, Event, MonitorSpec, Refusal, RunOrder, Verdict
from ._store import Store

if TYPE_CHECKING:
    from .._metrics_server import MetricsServer

__all__ = [
    "AlertSink",
    "ControlConfig",
    "ControlPlane",
    "ControlSettings",
    "LogSink",
    "MemorySink",
    "Pruned",
    "WebhookSink",
    "load_control_config",
    "split_sync",
]

log = logging.getLogger("probekit.control")

#: How long results, events, runs and resolved alerts are kept by default: 30 days.
DEFAULT_RETENTION: Final = 30 * 86400.0


class AlertSink(Protocol):
    """Receives alert events (opened, resolved, transient, instance up/down)."""

    async def send(self, event: Event) -> None: ...


class LogSink:
    """Logs events on ``probekit.control.alerts``: openings (and ``kind_unavailable``,
    ``instance_unresponsive``) at WARNING, the rest at INFO."""

    def __init__(self) -> None:
        self.log = logging.getLogger("probekit.control.alerts")

    async def send(self, event: Event) -> None:
        level = logging.INFO
        if event.kind in ("alert_opened", "kind_unavailable", "instance_unresponsive"):
            level = logging.WARNING
        self.log.log(level, "%s %s: %s", event.kind, event.subject, event.message)


class MemorySink:
    """Keeps events in a list (tests, dashboards embedding the control plane)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    async def send(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float) -> None:
        """Wait until ``predicate(events)`` holds, or raise TimeoutError."""
        async with asyncio.timeout(timeout):
            while not predicate(self.events):
                self._changed.clear()
                await self._changed.wait()


class WebhookSink:
    """POSTs each event as JSON to ``url`` with probekit's own HTTP probe (so on the dial path).

    ``policy`` is the operator's egress policy for the webhook (by default ``EgressPolicy()``,
    which denies link-local and cloud-metadata addresses): a URL whose host or any address it
    resolves to is denied is never dialled. A failed delivery, a denied one included, is logged;
    it does not block other sinks.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        policy: EgressPolicy | None = None,
    ) -> None:
        from .._timeouts import Timeouts
        from ..probes.http import HttpProbe

        if policy is not None and not isinstance(policy, EgressPolicy):
            raise DefinitionError("policy", f"must be an EgressPolicy, got {type(policy).__name__}")
        self.url = url
        self.policy = policy if policy is not None else EgressPolicy()
        self._context = ProbeContext(dialer=Dialer(policy=self.policy))
        self._probe = HttpProbe(
            url,
            method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
            timeouts=Timeouts(total=timeout),
            follow_redirects=False,
        )

    async def send(self, event: Event) -> None:
        body = json.dumps(event_to_dict(event))
        result = await attrs.evolve(self._probe, body=body).check(self._context)
        if result.status is not Status.UP:
            log.warning("webhook %s failed: %s", self.url, result.summary())


@attrs.frozen
class Pruned:
    """What one :meth:`ControlPlane.prune` did: rows deleted per table, statements run."""

    deleted: Mapping[str, int]
    statements: int


def event_to_dict(event: Event) -> dict[str, Any]:
    data: dict[str, Any] = converter.unstructure(event)
    return data


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
    for name in ("retention", "prune_interval"):
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
    port = settings.metrics_port
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535
    ):
        raise DefinitionError("metrics_port", f"must be a port number (0-65535), got {port!r}")


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
    ``db_path`` is the SQLite file (``:memory:`` for a throwaway one).

    ``retention``: results, events, runs sent and resolved alerts older than this many seconds
    are deleted (None keeps everything), ``prune_batch`` rows per statement on the database's
    worker thread, at most once every ``prune_interval`` seconds. ``metrics_port`` (None: off)
    serves ``/metrics`` and ``/ready`` on ``metrics_host``.
    """

    tokens: Mapping[str, Secret] = attrs.field(converter=_tokens)
    host: str = "127.0.0.1"
    port: int = 0
    db_path: str = ":memory:"
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

    def __attrs_post_init__(self) -> None:
        # (Checked here, not with attrs validators: this package's ``_config`` module would
        # shadow the name attrs' generated validating __init__ looks up.)
        _check_settings(self)


class _Peer:
    """One connection, and the identity its ``hello`` bound it to for its whole life."""

    __slots__ = ("checkpoint_id", "conn", "instance_id", "warned")

    def __init__(self, conn: Any, checkpoint_id: str, instance_id: str) -> None:
        self.conn = conn
        self.checkpoint_id = checkpoint_id
        self.instance_id = instance_id
        #: The kinds of refusal already logged at WARNING for this connection.
        self.warned: set[str] = set()


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
    ) -> None:
        self.settings = settings
        self.sinks: list[AlertSink] = list(sinks) if sinks is not None else [LogSink()]
        self.clock: Clock = clock or SystemClock()
        self.logic = ControlLogic(
            self.clock,
            heartbeat_interval=settings.heartbeat_interval,
            missed_heartbeats=settings.missed_heartbeats,
            grace=settings.grace,
            unanswered_limit=settings.unanswered_runs,
            startup_grace=settings.startup_grace,
        )
        self._store = Store(settings.db_path)
        self._server: Any = None
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

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        for spec in await self._store.call(db.load_monitors):
            self._specs[spec.monitor_id] = spec
            self.logic.upsert_monitor(spec)
        self._revisions = await self._store.call(db.load_revisions)
        checkpoints_seen, instances_seen = await self._store.call(db.load_seen)
        self._owners = {i: c for i, (c, _) in instances_seen.items()}
        self.logic.configure_checkpoints(self.settings.tokens, checkpoints_seen)
        actions = Actions()
        for alert, scope in await self._store.call(db.load_open_alerts):
            actions.extend(self.logic.restore_alert(alert, scope))
        await self._dispatch(actions)
        self._seen_flushed = self.clock.monotonic()
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
            # websockets logs handshake headers at DEBUG, the instances' tokens among them
            logger=MaskingLogger(
                logging.getLogger("probekit.control.ws"),
                [t.reveal() for t in self.settings.tokens.values()],
            ),
        )
        self._loop_seen = asyncio.get_running_loop().time()
        self._spawn(self._ticker())
        self._spawn(self._watch_stalls())
        await self.measure()
        self._spawn(self._maintain())
        if self.settings.metrics_port is not None:
            from .._metrics_server import serve_metrics

            self._metrics_server = await serve_metrics(
                self.settings.metrics_host,
                self.settings.metrics_port,
                self.metrics_text,
                ready=lambda: self._server is not None,
            )
            log.info("serving /metrics and /ready on %s:%d", *self._metrics_server.address)
        log.info("control plane listening on %s", self.url)

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
        except sqlite3.Error:
            log.exception("could not record the last-seen times")
        await self._store.close()

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

    # -- monitors ------------------------------------------------------------------------------

    async def add_monitor(
        self, monitor_id: str, checkpoint_id: str, definition: Mapping[str, Any], interval: float
    ) -> MonitorSpec:
        """Add or change a monitor; instances of its checkpoint get a delta sync at once.

        Adding a monitor exactly as it is already defined changes nothing (its revision stays,
        so instances need not rebuild it).
        """
        old = self._specs.get(monitor_id)
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
        await self._store.call(lambda c: db.save_monitor(c, spec))
        self._specs[monitor_id] = spec
        self._revisions[monitor_id] = spec.revision
        self.logic.upsert_monitor(spec)
        await self._broadcast(checkpoint_id, self._sync([spec], []))
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

    async def set_autonomous(self, checkpoint_id: str, autonomous: bool) -> None:
        """Tell a checkpoint's instances to run their definitions on their own (or to stop)."""
        self._autonomous[checkpoint_id] = autonomous
        if autonomous:
            self.logic.autonomous.add(checkpoint_id)
        else:
            self.logic.autonomous.discard(checkpoint_id)
        await self._broadcast(checkpoint_id, self._sync([], []))

    async def run_now(self, monitor_id: str, instance_id: str | None = None) -> str | None:
        """Send an ``adhoc`` run; returns its request id, or None when no instance can take it."""
        spec = self._specs[monitor_id]
        target = instance_id or next(iter(self.logic.alive(spec.checkpoint_id, spec.kind)), None)
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

        def read(c: sqlite3.Connection) -> tuple[int, float | None]:
            return db.size_bytes(c), db.oldest(c)

        self.db_bytes, self.oldest_row = await self._store.call(read)

    async def _maintain(self) -> None:
        """Prune and measure, once every ``prune_interval`` seconds."""
        while True:
            try:
                await self.prune()
                await self.measure()
            except sqlite3.Error:
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

        def query(c: sqlite3.Connection) -> list[dict[str, Any]]:
            cols = list(_RESULT_COLUMNS)
            sql = f"SELECT {', '.join(cols)}, body FROM results"  # noqa: S608 - fixed columns
            args: tuple[Any, ...] = ()
            if monitor_id is not None:
                sql += " WHERE monitor_id=?"
                args = (monitor_id,)
            rows = []
            for *values, body in c.execute(sql + " ORDER BY stored_at, rowid", args):
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

        def query(c: sqlite3.Connection) -> list[dict[str, Any]]:
            cols = ["kind", "subject", "at", "message", "alert_id", "alert_kind"]
            rows = c.execute(f"SELECT {', '.join(cols)} FROM events ORDER BY id")  # noqa: S608 - fixed columns
            return [dict(zip(cols, row, strict=True)) for row in rows]

        return await self._store.call(query)

    # -- connections ---------------------------------------------------------------------------

    def _authorize(self, connection: Any, request: Any) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        for checkpoint_id, secret in self.settings.tokens.items():
            if scheme.lower() == "bearer" and hmac.compare_digest(
                token.encode(), secret.reveal().encode()
            ):
                connection.probekit_checkpoint = checkpoint_id
                return None
        log.warning("refused a connection from %s: bad or missing token", connection.remote_address)
        return connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")

    async def _handle(self, conn: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        checkpoint_id: str = conn.probekit_checkpoint
        peer: _Peer | None = None
        try:
            hello = await self._expect_hello(conn, checkpoint_id)
            if hello is None:
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

    async def _expect_hello(self, conn: Any, checkpoint_id: str) -> p.Hello | None:
        try:
            async with asyncio.timeout(self.settings.hello_timeout):
                frame = await conn.recv()
            message = p.decode(
                frame, max_bytes=self.settings.max_frame_bytes, accept=p.FROM_INSTANCE
            )
        except TimeoutError:
            await conn.close(1008, "no hello")
            return None
        except p.ProtocolError as exc:
            await conn.send(p.encode(p.error_reply(exc)))
            await conn.close(exc.close_code or 1002, exc.code)
            return None
        if not isinstance(message, p.Hello):
            log.warning(
                "refused a connection of checkpoint %s: its first frame was %s, not hello",
                checkpoint_id,
                message.type,
            )
            await conn.send(
                p.encode(
                    p.Error(
                        code="unknown_type",
                        message=f"the first frame must be a hello, not {message.type}",
                    )
                )
            )
            await conn.close(1002, "no hello")
            return None
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
        try:
            message = p.decode(
                frame, max_bytes=self.settings.max_frame_bytes, accept=p.FROM_INSTANCE
            )
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
            now = self.clock.monotonic()
            if now - self._seen_flushed >= self.settings.heartbeat_interval:
                self._seen_flushed = now
                try:
                    await self._flush_seen()
                except sqlite3.Error:
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

    async def _record(self, event: Event) -> None:
        alert: Alert | None = event.alert
        row = (
            event.kind,
            event.subject,
            event.at,
            event.message,
            alert.alert_id if alert else None,
            alert.kind if alert else None,
        )
        opened = None
        resolved = None
        if alert is not None and event.kind in ("alert_opened", "kind_unavailable"):
            opened = (alert, self.logic.alert_scope(alert.alert_id))
        elif alert is not None and event.kind == "alert_resolved":
            resolved = (alert.alert_id, event.at)
        await self._store.call(lambda c: db.record_event(c, row, opened, resolved))
        for sink in self.sinks:
            try:
                await sink.send(event)
            except Exception:
                log.exception("alert sink %r failed", sink)

    async def _send(self, peer: _Peer, message: p.Message) -> None:
        from websockets.exceptions import ConnectionClosed

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
