"""The checkpoint agent: runs, the local schedule, spooling, draining (see the package docs)."""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from .. import __version__
from .._clock import Clock, SystemClock
from .._context import ProbeContext
from .._definitions import probe_kinds
from .._dial import Dialer
from .._pool import ProcessRunner, worker_dialing
from .._result import Result
from .._runner import Runner
from .._scheduler import Monitor, Scheduler
from ..probes._base import Probe
from ..protocol import (
    Drain,
    Error,
    Heartbeat,
    Hello,
    Message,
    ResultEnvelope,
    Run,
    Sync,
)
from ._channel import Channel, Reply, payload
from ._held import Definitions
from ._metrics import metrics_text
from ._privacy import redact
from ._settings import CheckpointSettings
from ._spool import AsyncSpool, SpoolError

if TYPE_CHECKING:
    from .._metrics_server import MetricsServer

__all__ = ["Checkpoint"]

log = logging.getLogger("probekit.checkpoint")


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
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._drain_requested = asyncio.Event()
        self._mode_changed = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._progress = asyncio.Event()
        # Syncs applied, and the last of them whose definitions are written to the spool.
        self._definitions_changed = asyncio.Event()
        self._syncs = 0
        self._syncs_kept = 0
        self._clock: Clock = clock or (context.clock if context is not None else SystemClock())
        self._context = _local_context(settings, context, self._clock)
        if settings.processes > 1:
            # Refused now, not when it starts: what a worker process cannot be given.
            worker_dialing(self._context, None)
        self._spool = AsyncSpool(
            settings.spool_path, max_entries=settings.spool_max_entries, clock=self._clock
        )
        self._definitions = Definitions(settings.secrets)
        self._channel = Channel(
            settings,
            self._spool,
            dialer=self._context.dialer,
            hello=self._hello,
            heartbeat=self._heartbeat,
            handle=self._handle,
            changed=self._mode_changed.set,
            progressed=self._progress.set,
        )
        self._state = "new"
        self._task: asyncio.Task[None] | None = None
        self._runner: Runner | ProcessRunner | None = None
        self._scheduler: Scheduler | None = None
        self._autonomous_sync = False
        self._local_active = False
        self._draining = False
        self._outbox: list[tuple[str, bytes, str | None]] = []
        self._writing = 0
        self._runs: set[asyncio.Task[None]] = set()
        self._metrics_address: tuple[str, int] | None = None
        self._produced = 0
        self._lost = 0

    # -- observation --------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int | float | bool]:
        """How this instance is doing, now.

        ``in_flight``: checks executing; ``queue_depth``: runs waiting for a concurrency slot
        plus results waiting to be spooled; ``spool_depth``/``spool_dropped``: results in the
        spool and evicted from it in total; ``reconnects``: connections made after the first;
        ``connect_failures``: failed connection attempts; ``standby_moves``: connections a
        standby control plane answered (not failures: the next URL is tried at once);
        ``connected``; ``autonomous`` (the
        local schedule is running); ``results_produced``, ``results_acked``, ``results_lost``
        (could not be spooled; those evicted from the full spool are ``spool_dropped``);
        ``oldest_unacked_seconds``: how long ago the oldest result in the spool (not acked yet)
        was spooled, 0 when it is empty; ``definitions`` held.
        """
        runner = self._runner
        executing = runner.in_flight if runner is not None else 0
        started = len(self._runs) + (self._scheduler.in_flight if self._scheduler else 0)
        return {
            "in_flight": executing,
            "queue_depth": max(started - executing, 0) + len(self._outbox) + self._writing,
            "spool_depth": self._spool.depth,
            "spool_dropped": self._spool.dropped,
            "reconnects": self._channel.reconnects,
            "connect_failures": self._channel.connect_failures,
            "standby_moves": self._channel.standby_moves,
            "connected": self._channel.connected,
            "autonomous": self._local_active,
            "results_produced": self._produced,
            "results_acked": self._channel.acked,
            "results_lost": self._lost,
            "oldest_unacked_seconds": self._oldest_unacked(),
            "definitions": len(self._definitions),
        }

    def _oldest_unacked(self) -> float:
        oldest = self._spool.oldest_created_at
        if oldest is None:
            return 0.0
        return max(0.0, self._clock.now().timestamp() - oldest)

    @property
    def holdings(self) -> dict[str, int]:
        """The monitor ids held, with their revisions (what ``hello`` reports)."""
        return self._definitions.holdings

    @property
    def connected(self) -> bool:
        return self._channel.connected

    @property
    def ready(self) -> bool:
        """Connected to the control plane, or running the local schedule (what ``/ready`` says)."""
        return self._channel.connected or self._local_active

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where ``/metrics`` and ``/ready`` are served, once they are (None otherwise)."""
        return self._metrics_address

    def metrics_text(self) -> str:
        """The Prometheus text exposition of :attr:`stats`."""
        return metrics_text(self.stats, self.settings.checkpoint_id, self.settings.instance_id)

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
        server: MetricsServer | None = None
        try:
            await self._spool.open()
            try:
                await self._definitions.restore(self._spool)
                if self.settings.metrics_port is not None:
                    from .._metrics_server import serve_metrics

                    server = await serve_metrics(
                        self.settings.metrics_host,
                        self.settings.metrics_port,
                        self.metrics_text,
                        ready=lambda: self.ready,
                    )
                    self._metrics_address = server.address
                    log.info("serving /metrics and /ready on %s:%d", *server.address)
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
                        await self._serve()
                    finally:
                        await self._scheduler.aclose()
                        await _cancel_all(self._runs)
                        await self._save_outbox()
                        await self._save_definitions()
            finally:
                if server is not None:
                    await server.close()
                self._metrics_address = None
                await self._spool.close()
        finally:
            self._state = "stopped"
            self._channel.connected = False
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

    async def _serve(self) -> None:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(self._write_loop(), name="checkpoint spool writer")
            link = tg.create_task(
                self._channel.run(self._drain_requested), name="checkpoint control channel"
            )
            local = tg.create_task(self._local_loop(), name="checkpoint local schedule")
            keeper = tg.create_task(self._keep_definitions(), name="checkpoint definitions")
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
            while self._spool.depth and self._channel.connected:
                self._channel.wake()
                if not await self._progress_within(deadline - loop.time()):
                    break
            log.info("drained: %d results not yet acked stay in the spool", self._spool.depth)
            await self._channel.close()
            await asyncio.wait({link}, timeout=self.settings.ping_timeout)
            await _cancel_all({link, writer, keeper})

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
            result=redact(result, self.settings),
        )
        self._outbox.append((envelope.result_id, payload(envelope), monitor_id))
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
                self._channel.wake()
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

    # -- the held definitions, kept in the spool ----------------------------------------------

    async def _keep_definitions(self) -> None:
        """Write the held definitions to the spool after syncs, in the background and one write
        at a time, each of the latest set: a burst of delta syncs makes a few writes, and the
        runs that follow the syncs are not held up behind them."""
        while True:
            await self._definitions_changed.wait()
            self._definitions_changed.clear()
            syncs = self._syncs
            await self._definitions.store(self._spool)
            self._syncs_kept = syncs

    async def _save_definitions(self) -> None:
        """On the way out: write the definitions if the last sync's are not written yet."""
        if self._syncs_kept != self._syncs:
            self._syncs_kept = self._syncs
            await asyncio.shield(self._definitions.store(self._spool))

    # -- what the channel says and hears -----------------------------------------------------

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

    async def _handle(self, message: Message, reply: Reply) -> None:
        if isinstance(message, Run):
            await self._accept_run(message, reply)
        elif isinstance(message, Sync):
            errors = self._apply_sync(message)
            self._syncs += 1
            self._definitions_changed.set()
            for error in errors:
                await reply(error)
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

    def _heartbeat(self) -> Heartbeat:
        stats = self.stats
        return Heartbeat(
            in_flight=int(stats["in_flight"]),
            queue_depth=int(stats["queue_depth"]),
            spool_depth=int(stats["spool_depth"]),
            spool_dropped=int(stats["spool_dropped"]),
            reconnects=int(stats["reconnects"]),
            policy=dict(self.settings.policy.summary()),
            sent_at=self._clock.now(),
        )

    # -- definitions and runs -----------------------------------------------------------------

    def _apply_sync(self, sync: Sync) -> list[Error]:
        """Apply a sync; return the errors to send for definitions that did not build."""
        previous, errors = self._definitions.apply(sync)
        held = self._definitions.held
        self._autonomous_sync = sync.autonomous
        if self._local_active and self._scheduler is not None:
            for monitor_id in previous.keys() - held.keys():
                self._scheduler.remove(monitor_id)
            for monitor_id, entry in held.items():
                if previous.get(monitor_id) != entry:
                    self._scheduler.add(Monitor(monitor_id, entry.probe, entry.interval))
        self._mode_changed.set()
        return errors

    async def _accept_run(self, run: Run, reply: Reply) -> None:
        if self._draining:
            await reply(Error(code="internal", message="draining: no new runs", ref=run.request_id))
            return
        if len(self._runs) >= self.settings.max_queued_runs:
            await reply(
                Error(
                    code="internal",
                    message=f"overloaded: {len(self._runs)} runs are waiting",
                    ref=run.request_id,
                )
            )
            return
        probe: Probe
        if run.definition is not None:
            try:
                probe = self._definitions.build(run.definition)
            except Exception as exc:  # noqa: BLE001 - reported to the control plane, not fatal
                await reply(self._definitions.refusal(exc, run.request_id))
                return
        else:
            held = self._definitions.held.get(run.monitor_id or "")
            if held is None:
                await reply(
                    Error(
                        code="bad_field",
                        message=f"monitor_id: no definition is held for {run.monitor_id!r}",
                        ref=run.request_id,
                    )
                )
                return
            probe = held.probe
        # A run's deadline counts from its arrival, and goes to the runner with the probe.
        deadline = None
        if run.deadline is not None:
            deadline = self._context.clock.monotonic() + run.deadline
        task = asyncio.create_task(
            self._execute(probe, run, deadline), name=f"run {run.request_id}"
        )
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _execute(self, probe: Probe, run: Run, deadline: float | None) -> None:
        runner = self._runner
        assert runner is not None
        try:
            result = await runner.check(probe, deadline=deadline)
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
        channel = self._channel
        return (
            not channel.connected and channel.tried and self.settings.autonomous_when_disconnected
        )

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
                    for monitor_id, held in self._definitions.held.items():
                        scheduler.add(Monitor(monitor_id, held.probe, held.interval))
                    self._local_active = True
                    running = asyncio.create_task(scheduler.run(), name="checkpoint scheduler")
                    if self._definitions:
                        count = len(self._definitions)
                        log.info("running %d definitions on the local schedule", count)
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
