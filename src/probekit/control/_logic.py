"""The control plane's decisions, as a state machine with no I/O and an injectable clock.

:class:`ControlLogic` decides which instance runs what and when, confirms failures on another
instance before alerting, detects flapping and silent checkpoints, reassigns runs that go
unanswered and cuts instances that take runs without answering them. It also judges whether a
result may be accepted from the instance that sent it (:meth:`ControlLogic.check_result`). The
network shell (:class:`~probekit.control.ControlPlane`) feeds it events and carries out the
:class:`Actions` it returns; tests drive it directly, simulating hours in milliseconds.

Times: scheduling uses the clock's monotonic readings; every :class:`Event` and :class:`Alert`
carries wall-clock Unix seconds (``clock.now()``), which mean something after a restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

import attrs

from .._clock import Clock
from .._ids import new_id
from .._result import Status
from ..alerting._events import Alert, Event

__all__ = [
    "ASSIGNMENTS",
    "DEFAULT_RUN_DEADLINE",
    "Actions",
    "Alert",
    "Assignment",
    "ControlLogic",
    "Event",
    "MonitorSpec",
    "Refusal",
    "RunOrder",
    "SitePolicy",
    "parse_alert_when",
    "rendezvous_rank",
    "rendezvous_weight",
]

log = logging.getLogger("probekit.control")

Reason = Literal["scheduled", "confirm", "adhoc"]
#: How scheduled runs are given to a checkpoint's instances: ``"alternate"``, each run to a live
#: instance other than the one that ran the monitor last (every instance watches every monitor
#: in turn); ``"spread"``, each monitor to one instance by rendezvous hashing (see
#: :func:`rendezvous_weight`), so N instances share the work and a monitor stays put.
Assignment = Literal["alternate", "spread"]
ASSIGNMENTS: Final[tuple[Assignment, ...]] = ("alternate", "spread")

#: Nagios' flap detection: 21 results, weights rising from 0.8 (oldest) to 1.2 (newest).
FLAP_WINDOW = 21
FLAP_HIGH = 50.0
FLAP_LOW = 25.0

#: The deadline of a run whose definition sets no ``timeouts.total``: a probe's own default.
DEFAULT_RUN_DEADLINE: Final = 10.0


@attrs.frozen
class MonitorSpec:
    """A monitor to schedule: a definition, an interval, the checkpoint it runs on."""

    monitor_id: str
    checkpoint_id: str
    interval: float
    definition: dict[str, Any]
    revision: int = 1

    @property
    def kind(self) -> str | None:
        """The probe kind of the definition (None if it names none)."""
        kind = self.definition.get("kind")
        return kind if isinstance(kind, str) else None

    @property
    def deadline(self) -> float:
        """Seconds a run of this monitor may take: its ``timeouts.total``, or a probe's default."""
        timeouts = self.definition.get("timeouts")
        total = timeouts.get("total") if isinstance(timeouts, dict) else None
        if (
            isinstance(total, int | float)
            and not isinstance(total, bool)
            and math.isfinite(total)
            and total > 0
        ):
            return float(total)
        return DEFAULT_RUN_DEADLINE


@attrs.frozen
class SitePolicy:
    """One monitor watched from several checkpoints (sites).

    Each location is a monitor of its own (its own id, on one checkpoint, scheduled and
    confirmed on a second instance of that checkpoint as any monitor); ``locations`` lists them.
    A location whose failure is confirmed opens no alert of its own: a ``monitor_down`` alert
    with ``monitor_id`` as its subject opens when ``min_failing`` locations are confirmed down,
    and resolves when fewer are. See :func:`parse_alert_when` for ``"2 of 3"``."""

    monitor_id: str
    locations: tuple[str, ...]
    min_failing: int = 1


def parse_alert_when(value: object, locations: int) -> int:
    """``min_failing`` from an ``alert_when`` policy: ``"K of N"`` (N must be ``locations``) or
    an integer K, with 1 <= K <= ``locations``; :class:`ValueError` saying why otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        need = value
    elif isinstance(value, str):
        parts = value.split()
        if len(parts) != 3 or parts[1] != "of" or not all(x.isdecimal() for x in parts[::2]):
            raise ValueError(f'expected "K of N" (such as "2 of 3"), got {value!r}')
        need, total = int(parts[0]), int(parts[2])
        if total != locations:
            raise ValueError(
                f"{value!r}: the monitor runs from {locations} checkpoints, not {total}"
            )
    else:
        raise ValueError(f'expected "K of N" or an integer, got {value!r}')
    if not 1 <= need <= locations:
        raise ValueError(f"{value!r}: expected between 1 and {locations} failing checkpoints")
    return need


@attrs.define
class _Sites:
    policy: SitePolicy
    #: location monitor id -> why it is down (its failure confirmed), in the order they fell
    down: dict[str, str] = attrs.Factory(dict)
    alert: Alert | None = None


@attrs.frozen
class RunOrder:
    """Ask ``instance_id`` to run ``monitor_id`` now, within ``deadline`` seconds."""

    instance_id: str
    request_id: str
    monitor_id: str
    reason: Reason
    deadline: float = DEFAULT_RUN_DEADLINE


@attrs.define
class Actions:
    """What the shell is to do: send ``runs``, record ``events``, and close the connections of
    the instances in ``cut`` (instance id, reason)."""

    runs: list[RunOrder] = attrs.Factory(list)
    events: list[Event] = attrs.Factory(list)
    cut: list[tuple[str, str]] = attrs.Factory(list)

    def extend(self, other: Actions) -> None:
        self.runs.extend(other.runs)
        self.events.extend(other.events)
        self.cut.extend(other.cut)


@attrs.frozen
class Refusal:
    """Why a result may not be accepted from the connection it came on.

    ``field`` is the envelope member at fault, ``why`` a short fixed label (one warning is
    logged per label and connection), ``message`` the text for the ``error`` reply."""

    field: str
    why: str
    message: str


#: :meth:`ControlLogic.check_result`'s verdict on a result it accepts: act on it (it answers an
#: outstanding run, or comes from the instance's own schedule), or look its run up in the
#: record of runs sent (it is not outstanding: reassigned, or sent before a restart).
Verdict = Literal["act", "lookup", "late"]


@attrs.define
class _Run:
    """A run sent and not yet answered."""

    monitor_id: str
    instance_id: str
    reason: Reason
    sent: float
    expires: float


@attrs.define
class _Monitor:
    spec: MonitorSpec
    next_due: float
    last_instance: str | None = None
    history: deque[bool] = attrs.Factory(lambda: deque(maxlen=FLAP_WINDOW))  # True = up
    confirming: str | None = None  # request id of the confirm run in flight
    pending: set[str] = attrs.Factory(set)  # request ids of its runs in flight
    first_failure: str | None = None  # instance that saw the unconfirmed failure
    confirmed: list[str] = attrs.Factory(list)  # instances whose confirm runs failed too
    alert: Alert | None = None
    flap_alert: Alert | None = None
    #: A location of a :class:`SitePolicy` whose failure is confirmed (it opens no alert itself).
    located_down: bool = False


@attrs.define
class _Instance:
    checkpoint_id: str
    connected: bool
    last_seen: float
    down: bool = False
    #: The probe kinds its ``hello`` listed; None when not told (then it is given any kind).
    kinds: frozenset[str] | None = None
    #: Runs in a row that expired unanswered while it was otherwise healthy.
    unanswered: int = 0
    #: Cut for leaving runs unanswered: no runs until it connects again.
    cut: bool = False

    def runs(self, kind: str | None) -> bool:
        return kind is None or self.kinds is None or kind in self.kinds


@attrs.define
class _Checkpoint:
    """A configured checkpoint: when it was last seen (wall clock, from the database), and since
    when (monotonic) it is expected, when configured after the logic started (None: since the
    start)."""

    last_seen: float | None
    since: float | None = None


def rendezvous_weight(monitor_id: str, instance_id: str) -> int:
    """Highest-random-weight hashing: the weight of ``instance_id`` for ``monitor_id``, the same
    in every process (BLAKE2b of both ids, not Python's salted ``hash``). A monitor goes to the
    live instance of highest weight; when that one leaves, only its monitors move (each to its
    next-highest instance), and a joiner takes the monitors it now outweighs, about 1/N."""
    digest = hashlib.blake2b(
        f"{monitor_id}\x00{instance_id}".encode(), digest_size=8, person=b"probekit"
    ).digest()
    return int.from_bytes(digest, "big")


def rendezvous_rank(monitor_id: str, instance_ids: Iterable[str]) -> list[str]:
    """``instance_ids`` in the order a run of ``monitor_id`` prefers them (highest weight first,
    ties broken by id)."""
    return sorted(instance_ids, key=lambda i: (-rendezvous_weight(monitor_id, i), i))


def flap_percent(history: deque[bool] | list[bool]) -> float:
    """Nagios-style weighted percentage of state changes over the results in ``history``."""
    states = list(history)
    if len(states) < 2:
        return 0.0
    changes = len(states) - 1
    total = 0.0
    for i in range(1, len(states)):
        if states[i] != states[i - 1]:
            total += 0.8 + 0.4 * (i - 1) / max(changes - 1, 1)
    return 100.0 * total / changes


class ControlLogic:
    """Scheduling, confirmation, reassignment, flap and silence detection for one control plane.

    ``grace`` is the slack given to an instance before acting on its silence: a run not answered
    within its deadline plus ``grace`` is reassigned, and an instance whose heartbeat is late by
    more than ``grace`` is sent no more runs (its runs in flight move at once). An instance that
    lets ``unanswered_limit`` runs in a row expire while it heartbeats is cut. A configured
    checkpoint with no instance alive is down ``missed_heartbeats`` heartbeat intervals (at least
    ``startup_grace`` seconds) after the logic started.

    ``assignment`` (see :data:`Assignment`): ``"alternate"`` sends each scheduled run to a live
    instance other than the last; ``"spread"`` gives each monitor to one live instance (that
    lists its kind) by rendezvous hashing, and its confirmations and reassigned runs to the next
    instances in the same order.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        heartbeat_interval: float = 5.0,
        missed_heartbeats: int = 3,
        grace: float = 2.0,
        unanswered_limit: int = 3,
        startup_grace: float = 30.0,
        rng: random.Random | None = None,
        ids: Callable[[], str] = new_id,
        confirmations: int = 1,
        flap_window: int = FLAP_WINDOW,
        flap_high: float = FLAP_HIGH,
        flap_low: float = FLAP_LOW,
        assignment: Assignment = "alternate",
    ) -> None:
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
        self.clock = clock
        self.assignment: Assignment = assignment
        #: Confirm runs (each on another instance when there is one) that must fail too before
        #: a failure opens an alert; 0 alerts on the first failure.
        self.confirmations = confirmations
        #: Flap detection: over the last ``flap_window`` results, above ``flap_high`` percent of
        #: state change opens a ``flapping`` alert, below ``flap_low`` resolves it.
        self.flap_window = flap_window
        self.flap_high = flap_high
        self.flap_low = flap_low
        self.heartbeat_interval = heartbeat_interval
        self.missed_heartbeats = missed_heartbeats
        self.grace = grace
        self.unanswered_limit = unanswered_limit
        self.startup_grace = startup_grace
        self.rng = rng or random.Random()  # noqa: S311 - spreading start times
        self.started = clock.monotonic()
        self.monitors: dict[str, _Monitor] = {}
        self.instances: dict[str, _Instance] = {}
        #: Runs sent and not answered yet, by request id.
        self.outstanding: dict[str, _Run] = {}
        self.checkpoint_alerts: dict[str, Alert] = {}
        #: The configured checkpoints (see :meth:`configure_checkpoints`).
        self.checkpoints: dict[str, _Checkpoint] = {}
        #: Checkpoints told to run on their own schedule: no scheduled runs are sent to them.
        self.autonomous: set[str] = set()
        #: (monitor id, reason) -> the open ``kind_unavailable`` alert: a run of the monitor was
        #: not sent because no connected instance of its checkpoint has the monitor's kind.
        self.kind_alerts: dict[tuple[str, Reason], Alert] = {}
        #: Runs given to another instance after going unanswered; instances cut.
        self.reassigned = 0
        self.cut = 0
        self._ids = ids
        #: Monitors watched from several checkpoints, by monitor id; and each location's.
        self.sites: dict[str, _Sites] = {}
        self.site_of: dict[str, str] = {}

    def _wall(self) -> float:
        return self.clock.now().timestamp()

    # -- definitions ---------------------------------------------------------------------------

    def upsert_monitor(self, spec: MonitorSpec) -> None:
        now = self.clock.monotonic()
        current = self.monitors.get(spec.monitor_id)
        if current is None:
            self.monitors[spec.monitor_id] = _Monitor(
                spec,
                now + self.rng.uniform(0, spec.interval),
                history=deque(maxlen=self.flap_window),
            )
        else:
            current.spec = spec
            current.next_due = min(current.next_due, now + spec.interval)

    def remove_monitor(self, monitor_id: str) -> Actions:
        """Forget a monitor; its open alerts resolve (a removed monitor has nothing to alert)."""
        actions = Actions()
        mon = self.monitors.pop(monitor_id, None)
        if mon is not None and mon.located_down:
            self._location_up(mon, self._wall(), actions, f"location {monitor_id} was removed")
        alerts = [a for a in (mon.alert, mon.flap_alert) if a is not None] if mon else []
        keys = [k for k in self.kind_alerts if k[0] == monitor_id]
        alerts.extend(self.kind_alerts.pop(key) for key in keys)
        wall = self._wall()
        for alert in alerts:
            message = f"{monitor_id} was removed"
            actions.events.append(Event("alert_resolved", monitor_id, wall, message, alert))
        return actions

    # -- state kept across restarts ------------------------------------------------------------

    def configure_checkpoints(
        self, checkpoint_ids: Iterable[str], last_seen: Mapping[str, float] | None = None
    ) -> None:
        """The checkpoints that should be up, with the wall-clock time each was last seen (by an
        earlier run of the control plane), if ever. One with no instance alive raises
        ``checkpoint_down`` once its silence, counted from this logic's start, passes the
        threshold."""
        seen = last_seen or {}
        self.checkpoints = {c: _Checkpoint(seen.get(c)) for c in checkpoint_ids}

    def reconfigure_checkpoints(self, checkpoint_ids: Iterable[str]) -> Actions:
        """The configured checkpoints changed (a reload): a new one is expected from now on (its
        silence counted from now, with the startup grace); a removed one is forgotten with its
        instances, and its open ``checkpoint_down`` alert resolves."""
        actions = Actions()
        wanted = set(checkpoint_ids)
        now = self.clock.monotonic()
        for checkpoint_id in wanted - set(self.checkpoints):
            self.checkpoints[checkpoint_id] = _Checkpoint(None, since=now)
        for checkpoint_id in sorted(set(self.checkpoints) - wanted):
            del self.checkpoints[checkpoint_id]
            for instance_id in [
                i for i, inst in self.instances.items() if inst.checkpoint_id == checkpoint_id
            ]:
                del self.instances[instance_id]
            alert = self.checkpoint_alerts.pop(checkpoint_id, None)
            if alert is not None:
                message = f"checkpoint {checkpoint_id} is no longer configured"
                actions.events.append(
                    Event("alert_resolved", checkpoint_id, self._wall(), message, alert)
                )
        return actions

    def open_alerts(self) -> list[Alert]:
        """Every alert open now: monitors down or flapping, checkpoints down, kinds missing."""
        alerts = [
            alert
            for mon in self.monitors.values()
            for alert in (mon.alert, mon.flap_alert)
            if alert is not None
        ]
        alerts.extend(self.checkpoint_alerts.values())
        alerts.extend(self.kind_alerts.values())
        alerts.extend(s.alert for s in self.sites.values() if s.alert is not None)
        return alerts

    def alert_scope(self, alert_id: str) -> str | None:
        """What besides its subject keys an open alert: a ``kind_unavailable`` alert's reason."""
        for (_monitor, reason), alert in self.kind_alerts.items():
            if alert.alert_id == alert_id:
                return reason
        return None

    def restore_alert(self, alert: Alert, scope: str | None = None) -> Actions:
        """Take back an alert that was open when the control plane stopped. One whose subject is
        gone (a monitor removed, a checkpoint no longer configured) resolves at once."""
        mon = self.monitors.get(alert.subject)
        restored = False
        sites = self.sites.get(alert.subject)
        if alert.kind == "monitor_down" and sites is not None:
            restored = sites.alert is None
            if restored:
                sites.alert = alert
        elif alert.kind == "monitor_down" and mon is not None and mon.alert is None:
            mon.alert = alert
            restored = True
        elif alert.kind == "flapping" and mon is not None and mon.flap_alert is None:
            mon.flap_alert = alert
            restored = True
        elif alert.kind == "checkpoint_down" and alert.subject in self.checkpoints:
            restored = self.checkpoint_alerts.setdefault(alert.subject, alert) is alert
        elif (
            alert.kind == "kind_unavailable"
            and mon is not None
            and scope in ("scheduled", "confirm")
        ):
            key: tuple[str, Reason] = (
                alert.subject,
                "scheduled" if scope == "scheduled" else "confirm",
            )
            restored = self.kind_alerts.setdefault(key, alert) is alert
        actions = Actions()
        if not restored:
            message = f"{alert.subject}: {alert.kind} alert no longer applies"
            log.info("%s; resolved", message)
            actions.events.append(
                Event("alert_resolved", alert.subject, self._wall(), message, alert)
            )
        return actions

    # -- instances -----------------------------------------------------------------------------

    def instance_connected(
        self, instance_id: str, checkpoint_id: str, kinds: Iterable[str] | None = None
    ) -> Actions:
        """An instance said ``hello``; ``kinds`` are the probe kinds it listed (None: not told,
        any kind may be sent to it). Resolves the checkpoint's ``checkpoint_down`` alert and the
        ``kind_unavailable`` alerts it can serve."""
        now = self.clock.monotonic()
        inst = self.instances.get(instance_id)
        if inst is None:
            inst = self.instances[instance_id] = _Instance(checkpoint_id, True, now)
        inst.connected = True
        inst.checkpoint_id = checkpoint_id
        inst.kinds = None if kinds is None else frozenset(kinds)
        inst.unanswered = 0
        inst.cut = False
        actions = self.heartbeat(instance_id)
        # Runs still outstanding to it were sent on a connection this one replaces: they were
        # lost with it, so they move at once, and count against nothing.
        for request_id, run in list(self.outstanding.items()):
            if run.instance_id == instance_id:
                self._forget(request_id)
                self._reassign(request_id, run, now, actions)
        wall = self._wall()
        alert = self.checkpoint_alerts.pop(checkpoint_id, None)
        if alert is not None:
            message = f"checkpoint {checkpoint_id} is back: instance {instance_id} connected"
            actions.events.append(Event("alert_resolved", checkpoint_id, wall, message, alert))
        for (monitor_id, reason), kind_alert in list(self.kind_alerts.items()):
            mon = self.monitors.get(monitor_id)
            if (
                mon is None
                or mon.spec.checkpoint_id != checkpoint_id
                or not inst.runs(mon.spec.kind)
            ):
                continue
            del self.kind_alerts[(monitor_id, reason)]
            message = f"{monitor_id}: instance {instance_id} runs {mon.spec.kind!r} probes"
            log.info("%s; %s runs are sent again", message, reason)
            actions.events.append(Event("alert_resolved", monitor_id, wall, message, kind_alert))
        return actions

    def instance_disconnected(self, instance_id: str) -> None:
        """Its connection closed: it gets no runs, and its runs in flight move at the next tick."""
        inst = self.instances.get(instance_id)
        if inst is not None:
            inst.connected = False

    def heartbeat(self, instance_id: str) -> Actions:
        actions = Actions()
        inst = self.instances.get(instance_id)
        if inst is None:
            return actions
        inst.last_seen = self.clock.monotonic()
        if inst.down:
            inst.down = False
            wall = self._wall()
            actions.events.append(
                Event("instance_up", instance_id, wall, f"instance {instance_id} is back")
            )
            alert = self.checkpoint_alerts.pop(inst.checkpoint_id, None)
            if alert is not None:
                actions.events.append(
                    Event(
                        "alert_resolved",
                        inst.checkpoint_id,
                        wall,
                        f"checkpoint {inst.checkpoint_id} is back",
                        alert,
                    )
                )
        return actions

    def _usable(self, inst: _Instance, now: float) -> bool:
        """May be sent runs: connected, not cut, and its heartbeat not late beyond the grace."""
        return (
            inst.connected
            and not inst.down
            and not inst.cut
            and now - inst.last_seen <= self.heartbeat_interval + self.grace
        )

    def alive(self, checkpoint_id: str, kind: str | None = None) -> list[str]:
        """Instances of ``checkpoint_id`` that may be given runs (of probe ``kind``, when given:
        those whose ``hello`` listed it), in a stable order."""
        now = self.clock.monotonic()
        return sorted(
            i
            for i, s in self.instances.items()
            if s.checkpoint_id == checkpoint_id and self._usable(s, now) and s.runs(kind)
        )

    def run_refused(self, instance_id: str, request_id: str) -> Actions:
        """``instance_id`` answered run ``request_id`` with an ``error`` (busy, draining, not
        held): it goes to another instance at once."""
        actions = Actions()
        run = self.outstanding.get(request_id)
        if run is None or run.instance_id != instance_id:
            return actions
        self._forget(request_id)
        inst = self.instances.get(instance_id)
        if inst is not None:
            inst.unanswered = 0  # it answered, if with a no
        self._reassign(request_id, run, self.clock.monotonic(), actions)
        return actions

    # -- time ----------------------------------------------------------------------------------

    def tick(self) -> Actions:
        """Everything due now: silent instances, unanswered runs, scheduled runs."""
        now = self.clock.monotonic()
        actions = Actions()
        self._detect_silence(now, actions)
        self._expire(now, actions)
        for mon in self.monitors.values():
            if mon.next_due > now:
                continue
            interval = mon.spec.interval
            mon.next_due += interval
            if mon.next_due <= now:  # fell behind: do not burst
                mon.next_due = now + interval
            if mon.spec.checkpoint_id in self.autonomous:
                continue  # its instances schedule it themselves
            if mon.pending:
                continue  # its previous run is still in flight (and moves if unanswered)
            instance = self._pick(
                mon.spec.checkpoint_id,
                avoid=None if self.assignment == "spread" else mon.last_instance,
                kind=mon.spec.kind,
                monitor_id=mon.spec.monitor_id,
            )
            if instance is None:
                self._kind_unavailable(mon, "scheduled", now, actions)
                continue
            mon.last_instance = instance
            actions.runs.append(self.order(instance, mon.spec.monitor_id, "scheduled", now))
        return actions

    def stood_still(self, seconds: float) -> None:
        """The control plane itself did not run for ``seconds`` (its process was stopped, its
        event loop blocked): it could hear nothing then, so that time counts against no
        instance. Their silence and their runs' deadlines are moved on by it."""
        for inst in self.instances.values():
            inst.last_seen += seconds
        for run in self.outstanding.values():
            run.expires += seconds
        self.started += seconds

    def _expire(self, now: float, actions: Actions) -> None:
        """Move runs whose instance is gone or silent at once, and runs unanswered past their
        deadline plus the grace; count those against an instance that otherwise seems well."""
        for request_id, run in list(self.outstanding.items()):
            inst = self.instances.get(run.instance_id)
            usable = inst is not None and self._usable(inst, now)
            if usable and now < run.expires:
                continue
            self._forget(request_id)
            if inst is not None and usable:
                inst.unanswered += 1
                log.info(
                    "run %s (%s of %s) sent to %s is unanswered after %.1f s",
                    request_id,
                    run.reason,
                    run.monitor_id,
                    run.instance_id,
                    now - run.sent,
                )
                if inst.unanswered >= self.unanswered_limit:
                    self._cut(run.instance_id, inst, actions)
            self._reassign(request_id, run, now, actions)

    def _cut(self, instance_id: str, inst: _Instance, actions: Actions) -> None:
        inst.cut = True
        self.cut += 1
        message = (
            f"instance {instance_id} took {inst.unanswered} runs in a row and answered none "
            "within its deadline; disconnected"
        )
        actions.cut.append((instance_id, message))
        actions.events.append(Event("instance_unresponsive", instance_id, self._wall(), message))

    def _reassign(self, request_id: str, run: _Run, now: float, actions: Actions) -> None:
        mon = self.monitors.get(run.monitor_id)
        if mon is None or run.reason == "adhoc":
            return  # an ad-hoc run was meant for its instance; the caller may ask again
        if run.reason == "confirm" and mon.confirming != request_id:
            return  # superseded
        avoid = mon.first_failure if run.reason == "confirm" else mon.last_instance
        if run.reason == "scheduled" and self.assignment == "spread":
            avoid = None  # (its next instance in the monitor's order)
        target = self._pick(
            mon.spec.checkpoint_id,
            avoid=avoid,
            kind=mon.spec.kind,
            exclude=run.instance_id,
            monitor_id=mon.spec.monitor_id,
        )
        if target is None:
            if run.reason == "confirm":
                mon.confirming = None  # the next failure starts a new confirmation
            return
        order = self.order(target, run.monitor_id, run.reason, now)
        if run.reason == "confirm":
            mon.confirming = order.request_id
        else:
            mon.last_instance = target
        self.reassigned += 1
        log.info(
            "%s run of %s moved from %s to %s", run.reason, run.monitor_id, run.instance_id, target
        )
        actions.runs.append(order)

    def _forget(self, request_id: str) -> _Run | None:
        run = self.outstanding.pop(request_id, None)
        if run is not None:
            mon = self.monitors.get(run.monitor_id)
            if mon is not None:
                mon.pending.discard(request_id)
        return run

    def _detect_silence(self, now: float, actions: Actions) -> None:
        limit = self.missed_heartbeats * self.heartbeat_interval
        wall = self._wall()
        for instance_id, inst in self.instances.items():
            if not inst.down and now - inst.last_seen > limit:
                inst.down = True
                actions.events.append(
                    Event(
                        "instance_down",
                        instance_id,
                        wall,
                        f"instance {instance_id} missed {self.missed_heartbeats} heartbeats",
                    )
                )
        by_checkpoint: dict[str, list[_Instance]] = {c: [] for c in self.checkpoints}
        for inst in self.instances.values():
            by_checkpoint.setdefault(inst.checkpoint_id, []).append(inst)
        for checkpoint_id, members in by_checkpoint.items():
            if checkpoint_id in self.checkpoint_alerts:
                continue
            if members:
                if not all(m.down for m in members):
                    continue
                message = f"checkpoint {checkpoint_id} is down: {len(members)} instances silent"
            else:
                configured = self.checkpoints.get(checkpoint_id)
                if configured is None:
                    continue  # (every entry without members is configured)
                since = configured.since if configured.since is not None else self.started
                if now - since <= max(limit, self.startup_grace):
                    continue
                seen = configured.last_seen
                if seen is None:
                    message = f"checkpoint {checkpoint_id} is down: never seen"
                else:
                    when = dt.datetime.fromtimestamp(seen, dt.UTC).isoformat(timespec="seconds")
                    message = (
                        f"checkpoint {checkpoint_id} is down: no instance since the control "
                        f"plane started; last seen {when}"
                    )
            alert = Alert(self._ids(), "checkpoint_down", checkpoint_id, wall, message)
            self.checkpoint_alerts[checkpoint_id] = alert
            actions.events.append(Event("alert_opened", checkpoint_id, wall, message, alert))

    # -- results -------------------------------------------------------------------------------

    def check_result(
        self,
        bound: str,
        checkpoint_id: str,
        instance_id: str,
        monitor_id: str | None,
        request_id: str | None,
        reason: str,
    ) -> Verdict | Refusal:
        """May the connection bound at ``hello`` to instance ``bound`` of ``checkpoint_id``
        report this result? It may report, as itself, the answer to a run sent to it, or a
        result of its checkpoint's monitor from its own schedule (no request id, and not a
        ``confirm`` or ``adhoc``, which answer runs)."""
        if instance_id != bound:
            return Refusal(
                "instance_id",
                "another instance",
                f"{instance_id!r} is not the instance this connection said hello as ({bound!r})",
            )
        if request_id is None:
            if reason in ("confirm", "adhoc"):
                return Refusal(
                    "request_id",
                    f"unrequested {reason}",
                    f"null: a {reason} result answers a {reason} run sent to this instance",
                )
            mon = self.monitors.get(monitor_id) if monitor_id is not None else None
            if mon is None or mon.spec.checkpoint_id != checkpoint_id:
                why = "unknown monitor" if mon is None else "another checkpoint's monitor"
                return Refusal(
                    "monitor_id",
                    why,
                    f"{monitor_id!r} is not a monitor of checkpoint {checkpoint_id!r}",
                )
            return "act"
        run = self.outstanding.get(request_id)
        if run is None:
            return "lookup"
        return (
            self._matches(
                bound, request_id, (run.instance_id, run.monitor_id, run.reason), monitor_id, reason
            )
            or "act"
        )

    def check_recorded(
        self,
        bound: str,
        request_id: str,
        record: tuple[str, str | None, str] | None,
        monitor_id: str | None,
        reason: str,
    ) -> Verdict | Refusal:
        """The verdict on a result whose run is not outstanding, given the record of that run
        (instance, monitor, reason) or None: a genuine late answer is ``"late"`` (stored, not
        acted on: the run was reassigned, or sent before a restart)."""
        if record is None:
            return Refusal(
                "request_id", "unknown run", f"{request_id!r} is not a run sent to this instance"
            )
        return self._matches(bound, request_id, record, monitor_id, reason) or "late"

    @staticmethod
    def _matches(
        bound: str,
        request_id: str,
        record: tuple[str, str | None, str],
        monitor_id: str | None,
        reason: str,
    ) -> Refusal | None:
        sent_to, sent_monitor, sent_reason = record
        if sent_to != bound:
            return Refusal(
                "request_id",
                "a run sent elsewhere",
                f"{request_id!r} is not a run sent to this instance",
            )
        if monitor_id != sent_monitor:
            return Refusal(
                "monitor_id",
                "wrong monitor for its run",
                f"{monitor_id!r}: run {request_id!r} was for {sent_monitor!r}",
            )
        if reason != sent_reason:
            return Refusal(
                "reason",
                "wrong reason for its run",
                f"{reason!r}: run {request_id!r} was a {sent_reason!r} run",
            )
        return None

    def on_result(
        self,
        monitor_id: str | None,
        instance_id: str,
        request_id: str | None,
        reason: str,
        status: Status,
    ) -> Actions:
        """React to one (already deduplicated and accepted) result. A result answering a run that
        is no longer outstanding (reassigned, or sent before a restart) changes nothing."""
        now = self.clock.monotonic()
        actions = Actions()
        if request_id is not None:
            run = self._forget(request_id)
            if run is None:
                return actions
            inst = self.instances.get(run.instance_id)
            if inst is not None and run.instance_id == instance_id:
                inst.unanswered = 0
        mon = self.monitors.get(monitor_id) if monitor_id else None
        if mon is None:
            return actions
        wall = self._wall()
        up = status is not Status.DOWN
        mon.history.append(up)
        self._flapping(mon, wall, actions)
        if reason == "confirm":
            if request_id is None or mon.confirming != request_id:
                return actions  # not the confirmation in flight; that one decides
            mon.confirming = None
            if not up and not self._is_down(mon) and mon.flap_alert is None:
                mon.confirmed.append(instance_id)
                if len(mon.confirmed) < self.confirmations and self._confirm(
                    mon, now, wall, actions, f"{monitor_id} failed again on {instance_id}"
                ):
                    return actions
            if up:
                actions.events.append(
                    Event(
                        "transient",
                        monitor_id or "",
                        wall,
                        f"{monitor_id}: failed on {mon.first_failure}, passed on {instance_id}",
                    )
                )
            elif not self._is_down(mon) and mon.flap_alert is None:
                self._down(
                    mon,
                    f"{monitor_id} is down: failed on {mon.first_failure}, again on "
                    f"{', '.join(dict.fromkeys(mon.confirmed))}",
                    wall,
                    actions,
                )
            return actions
        if up:
            if mon.located_down:
                self._location_up(mon, wall, actions, f"{monitor_id} is up again")
            if mon.alert is not None:
                alert, mon.alert = mon.alert, None
                actions.events.append(
                    Event(
                        "alert_resolved",
                        mon.spec.monitor_id,
                        wall,
                        f"{monitor_id} is up again",
                        alert,
                    )
                )
            return actions
        if self._is_down(mon) or mon.confirming is not None:
            return actions
        mon.first_failure = instance_id
        mon.confirmed = []
        if self.confirmations == 0:
            self._down(
                mon,
                f"{monitor_id} is down: failed on {instance_id} (no confirmation asked)",
                wall,
                actions,
            )
            return actions
        self._confirm(mon, now, wall, actions, f"{monitor_id} failed on {instance_id}")
        return actions

    @staticmethod
    def _is_down(mon: _Monitor) -> bool:
        """Its failure is confirmed: its alert is open, or it is a location counted down."""
        return mon.alert is not None or mon.located_down

    def _down(self, mon: _Monitor, message: str, wall: float, actions: Actions) -> None:
        """``mon``'s failure is confirmed: open its alert, or count it down among its sites."""
        monitor_id = mon.spec.monitor_id
        sites = self.sites.get(self.site_of.get(monitor_id, ""))
        if sites is None:
            mon.alert = Alert(self._ids(), "monitor_down", monitor_id, wall, message)
            actions.events.append(Event("alert_opened", monitor_id, wall, message, mon.alert))
            return
        mon.located_down = True
        sites.down[monitor_id] = f"{mon.spec.checkpoint_id}: {message}"
        policy = sites.policy
        total = len(policy.locations)
        log.info(
            "%s is down from checkpoint %s (%d of %d locations, %d needed)",
            policy.monitor_id,
            mon.spec.checkpoint_id,
            len(sites.down),
            total,
            policy.min_failing,
        )
        if sites.alert is None and len(sites.down) >= policy.min_failing:
            text = (
                f"{policy.monitor_id} is down from {len(sites.down)} of {total} checkpoints: "
                + "; ".join(sites.down.values())
            )
            sites.alert = Alert(self._ids(), "monitor_down", policy.monitor_id, wall, text)
            actions.events.append(Event("alert_opened", policy.monitor_id, wall, text, sites.alert))

    def _location_up(self, mon: _Monitor, wall: float, actions: Actions, said: str) -> None:
        """A location counted down is up (or gone): its sites' alert resolves when fewer than
        the policy's ``min_failing`` locations are still down."""
        mon.located_down = False
        sites = self.sites.get(self.site_of.get(mon.spec.monitor_id, ""))
        if sites is None:
            return
        sites.down.pop(mon.spec.monitor_id, None)
        policy = sites.policy
        if sites.alert is not None and len(sites.down) < policy.min_failing:
            alert, sites.alert = sites.alert, None
            message = (
                f"{policy.monitor_id} is up: {said}; down from {len(sites.down)} of "
                f"{len(policy.locations)} checkpoints"
            )
            actions.events.append(Event("alert_resolved", policy.monitor_id, wall, message, alert))

    # -- monitors on several checkpoints -------------------------------------------------------

    def set_sites(self, policy: SitePolicy) -> Actions:
        """Watch ``policy.monitor_id`` from its locations (see :class:`SitePolicy`); replaces the
        policy of the same id. Its open alert resolves if the new policy no longer calls for it.
        :class:`ValueError` when a location is listed twice or belongs to another policy, or
        ``min_failing`` is not between 1 and the number of locations."""
        locations = policy.locations
        if not locations or len(set(locations)) != len(locations):
            raise ValueError(f"{policy.monitor_id}: locations must be distinct, and at least one")
        if not 1 <= policy.min_failing <= len(locations):
            raise ValueError(
                f"{policy.monitor_id}: min_failing must be between 1 and {len(locations)}, got "
                f"{policy.min_failing!r}"
            )
        if policy.monitor_id in locations or policy.monitor_id in self.site_of:
            raise ValueError(f"{policy.monitor_id}: already a location")
        for location in locations:
            owner = self.site_of.get(location)
            if owner is not None and owner != policy.monitor_id:
                raise ValueError(f"{location} is already a location of {owner}")
        if policy.monitor_id in self.monitors:
            raise ValueError(f"{policy.monitor_id}: already the id of a monitor")
        actions = Actions()
        old = self.sites.pop(policy.monitor_id, None)
        for location in old.policy.locations if old else ():
            if location not in locations:
                self.site_of.pop(location, None)
                mon = self.monitors.get(location)
                if mon is not None:
                    mon.located_down = False
        sites = self.sites[policy.monitor_id] = _Sites(policy, alert=old.alert if old else None)
        for location in locations:
            self.site_of[location] = policy.monitor_id
            mon = self.monitors.get(location)
            if mon is not None and mon.located_down:
                sites.down[location] = f"{mon.spec.checkpoint_id}: down"
        if sites.alert is not None and len(sites.down) < policy.min_failing:
            alert, sites.alert = sites.alert, None
            message = f"{policy.monitor_id}: its policy changed; {len(sites.down)} down"
            actions.events.append(
                Event("alert_resolved", policy.monitor_id, self._wall(), message, alert)
            )
        return actions

    def remove_sites(self, monitor_id: str) -> Actions:
        """Forget a :class:`SitePolicy`: its open alert resolves, and its locations that were
        down alert on their own at their next failure."""
        actions = Actions()
        sites = self.sites.pop(monitor_id, None)
        if sites is None:
            return actions
        for location in sites.policy.locations:
            self.site_of.pop(location, None)
            mon = self.monitors.get(location)
            if mon is not None:
                mon.located_down = False
        if sites.alert is not None:
            message = f"{monitor_id} is no longer watched from several checkpoints"
            actions.events.append(
                Event("alert_resolved", monitor_id, self._wall(), message, sites.alert)
            )
        return actions

    def _confirm(self, mon: _Monitor, now: float, wall: float, actions: Actions, said: str) -> bool:
        """Send a confirm run of ``mon`` to an instance that has not failed it in this round
        (the reporter itself when it is the only one); False when none can take it."""
        kind = mon.spec.kind
        used = {mon.first_failure, *mon.confirmed}
        choices = [i for i in self.alive(mon.spec.checkpoint_id, kind) if i not in used]
        last = mon.confirmed[-1] if mon.confirmed else mon.first_failure
        if not choices:
            target = None
        elif self.assignment == "spread":
            target = rendezvous_rank(mon.spec.monitor_id, choices)[0]
        else:
            target = self.rng.choice(choices)
        if target is None:
            target = self._pick(
                mon.spec.checkpoint_id, avoid=last, kind=kind, monitor_id=mon.spec.monitor_id
            )
        if target is None:
            reporter = self.instances.get(last) if last is not None else None
            if reporter is None or not reporter.runs(kind):
                self._kind_unavailable(mon, "confirm", now, actions)
                return False
            assert last is not None
            target = last
        order = self.order(target, mon.spec.monitor_id, "confirm", now)
        mon.confirming = order.request_id
        actions.runs.append(order)
        actions.events.append(
            Event("unconfirmed", mon.spec.monitor_id, wall, f"{said}; confirming on {target}")
        )
        return True

    def _flapping(self, mon: _Monitor, wall: float, actions: Actions) -> None:
        if len(mon.history) < self.flap_window:
            return
        pct = flap_percent(mon.history)
        if mon.flap_alert is None and pct > self.flap_high:
            mon.flap_alert = Alert(
                self._ids(),
                "flapping",
                mon.spec.monitor_id,
                wall,
                f"{mon.spec.monitor_id} is flapping ({pct:.0f}% state change)",
            )
            actions.events.append(
                Event(
                    "alert_opened",
                    mon.spec.monitor_id,
                    wall,
                    mon.flap_alert.message,
                    mon.flap_alert,
                )
            )
        elif mon.flap_alert is not None and pct < self.flap_low:
            alert, mon.flap_alert = mon.flap_alert, None
            actions.events.append(
                Event(
                    "alert_resolved",
                    mon.spec.monitor_id,
                    wall,
                    f"{mon.spec.monitor_id} stopped flapping ({pct:.0f}%)",
                    alert,
                )
            )

    # -- helpers -------------------------------------------------------------------------------

    def _kind_unavailable(
        self, mon: _Monitor, reason: Reason, now: float, actions: Actions
    ) -> None:
        """No instance to send a ``reason`` run of ``mon`` to: say why, once, if it is its kind.

        (With no instance of the checkpoint connected at all there is nothing to say here: that
        is the checkpoint being down, reported as such.)
        """
        checkpoint_id = mon.spec.checkpoint_id
        key = (mon.spec.monitor_id, reason)
        if key in self.kind_alerts or not self.alive(checkpoint_id):
            return
        message = (
            f"{mon.spec.monitor_id}: no connected instance of checkpoint {checkpoint_id} runs "
            f"{mon.spec.kind!r} probes; its {reason} runs are not sent"
        )
        log.warning("%s", message)
        wall = self._wall()
        alert = Alert(self._ids(), "kind_unavailable", mon.spec.monitor_id, wall, message)
        self.kind_alerts[key] = alert
        actions.events.append(Event("kind_unavailable", mon.spec.monitor_id, wall, message, alert))

    def _pick(
        self,
        checkpoint_id: str,
        avoid: str | None,
        kind: str | None = None,
        exclude: str | None = None,
        monitor_id: str | None = None,
    ) -> str | None:
        """A live instance of the checkpoint for a run of ``kind``: never ``exclude``, and not
        ``avoid`` when there is a choice. With ``"spread"`` assignment and a ``monitor_id``, the
        first of the remaining choices in the monitor's rendezvous order; else a random one."""
        choices = [i for i in self.alive(checkpoint_id, kind) if i != exclude]
        if len(choices) > 1 and avoid in choices:
            choices.remove(avoid)
        if not choices:
            return None
        if self.assignment == "spread" and monitor_id is not None:
            return rendezvous_rank(monitor_id, choices)[0]
        return self.rng.choice(choices)

    def pick(self, checkpoint_id: str, kind: str | None, monitor_id: str) -> str | None:
        """The live instance of ``checkpoint_id`` an ad-hoc run of ``monitor_id`` goes to: its
        instance by rendezvous hashing with ``"spread"``, else a random one (None: none)."""
        return self._pick(checkpoint_id, None, kind, monitor_id=monitor_id)

    def order(self, instance_id: str, monitor_id: str, reason: Reason, now: float) -> RunOrder:
        """A run of ``monitor_id`` for ``instance_id``, outstanding from ``now`` until its
        deadline plus the grace."""
        mon = self.monitors.get(monitor_id)
        deadline = mon.spec.deadline if mon is not None else DEFAULT_RUN_DEADLINE
        order = RunOrder(instance_id, self._ids(), monitor_id, reason, deadline)
        self.outstanding[order.request_id] = _Run(
            monitor_id, instance_id, reason, now, now + deadline + self.grace
        )
        if mon is not None:
            mon.pending.add(order.request_id)
        return order
