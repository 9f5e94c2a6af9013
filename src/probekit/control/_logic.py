"""The control plane's decisions, as a state machine with no I/O and an injectable clock.

:class:`ControlLogic` decides which instance runs what and when, confirms failures on another
instance before alerting, detects flapping and silent checkpoints. The network shell
(:class:`~probekit.control.ControlPlane`) feeds it events and carries out the
:class:`Actions` it returns; tests drive it directly, simulating hours in milliseconds.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import deque
from collections.abc import Iterable
from typing import Any, Literal

import attrs

from .._clock import Clock
from .._result import Status

__all__ = ["Actions", "Alert", "ControlLogic", "Event", "MonitorSpec", "RunOrder"]

log = logging.getLogger("probekit.control")

Reason = Literal["scheduled", "confirm", "adhoc"]
AlertKind = Literal["monitor_down", "checkpoint_down", "flapping", "kind_unavailable"]

#: Nagios' flap detection: 21 results, weights rising from 0.8 (oldest) to 1.2 (newest).
FLAP_WINDOW = 21
FLAP_HIGH = 50.0
FLAP_LOW = 25.0


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


@attrs.frozen
class RunOrder:
    """Ask ``instance_id`` to run ``monitor_id`` now."""

    instance_id: str
    request_id: str
    monitor_id: str
    reason: Reason


@attrs.frozen
class Alert:
    alert_id: str
    kind: AlertKind
    subject: str  # a monitor id, or a checkpoint id for checkpoint_down
    opened_at: float
    message: str


@attrs.frozen
class Event:
    """Something worth telling a person or a log: alerts opening and resolving, transients."""

    kind: Literal[
        "alert_opened",
        "alert_resolved",
        "unconfirmed",
        "transient",
        "instance_down",
        "instance_up",
        "kind_unavailable",
    ]
    subject: str
    at: float
    message: str
    alert: Alert | None = None


@attrs.define
class Actions:
    runs: list[RunOrder] = attrs.Factory(list)
    events: list[Event] = attrs.Factory(list)

    def extend(self, other: Actions) -> None:
        self.runs.extend(other.runs)
        self.events.extend(other.events)


@attrs.define
class _Monitor:
    spec: MonitorSpec
    next_due: float
    last_instance: str | None = None
    history: deque[bool] = attrs.Factory(lambda: deque(maxlen=FLAP_WINDOW))  # True = up
    confirming: str | None = None  # request id of the confirm run in flight
    first_failure: str | None = None  # instance that saw the unconfirmed failure
    alert: Alert | None = None
    flap_alert: Alert | None = None


@attrs.define
class _Instance:
    checkpoint_id: str
    connected: bool
    last_seen: float
    down: bool = False
    #: The probe kinds its ``hello`` listed; None when not told (then it is given any kind).
    kinds: frozenset[str] | None = None

    def runs(self, kind: str | None) -> bool:
        return kind is None or self.kinds is None or kind in self.kinds


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
    """Scheduling, confirmation, flap and silence detection for one control plane."""

    def __init__(
        self,
        clock: Clock,
        *,
        heartbeat_interval: float = 5.0,
        missed_heartbeats: int = 3,
        run_timeout: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        self.missed_heartbeats = missed_heartbeats
        self.run_timeout = run_timeout
        self.rng = rng or random.Random()  # noqa: S311 - spreading start times
        self.monitors: dict[str, _Monitor] = {}
        self.instances: dict[str, _Instance] = {}
        self.outstanding: dict[str, tuple[str, str, Reason, float]] = {}
        self.checkpoint_alerts: dict[str, Alert] = {}
        #: Checkpoints told to run on their own schedule: no scheduled runs are sent to them.
        self.autonomous: set[str] = set()
        #: (monitor id, reason) -> the open ``kind_unavailable`` alert: a run of the monitor was
        #: not sent because no connected instance of its checkpoint has the monitor's kind.
        self.kind_alerts: dict[tuple[str, Reason], Alert] = {}
        self._ids = itertools.count(1)

    # -- definitions ---------------------------------------------------------------------------

    def upsert_monitor(self, spec: MonitorSpec) -> None:
        now = self.clock.monotonic()
        current = self.monitors.get(spec.monitor_id)
        if current is None:
            self.monitors[spec.monitor_id] = _Monitor(
                spec, now + self.rng.uniform(0, spec.interval)
            )
        else:
            current.spec = spec
            current.next_due = min(current.next_due, now + spec.interval)

    def remove_monitor(self, monitor_id: str) -> None:
        self.monitors.pop(monitor_id, None)
        for key in [k for k in self.kind_alerts if k[0] == monitor_id]:
            del self.kind_alerts[key]

    # -- instances -----------------------------------------------------------------------------

    def instance_connected(
        self, instance_id: str, checkpoint_id: str, kinds: Iterable[str] | None = None
    ) -> Actions:
        """An instance said ``hello``; ``kinds`` are the probe kinds it listed (None: not told,
        any kind may be sent to it). Resolves the ``kind_unavailable`` alerts it can serve."""
        now = self.clock.monotonic()
        inst = self.instances.get(instance_id)
        if inst is None:
            inst = self.instances[instance_id] = _Instance(checkpoint_id, True, now)
        inst.connected = True
        inst.checkpoint_id = checkpoint_id
        inst.kinds = None if kinds is None else frozenset(kinds)
        actions = self.heartbeat(instance_id)
        for (monitor_id, reason), alert in list(self.kind_alerts.items()):
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
            actions.events.append(Event("alert_resolved", monitor_id, now, message, alert))
        return actions

    def instance_disconnected(self, instance_id: str) -> None:
        inst = self.instances.get(instance_id)
        if inst is not None:
            inst.connected = False

    def heartbeat(self, instance_id: str) -> Actions:
        actions = Actions()
        inst = self.instances.get(instance_id)
        if inst is None:
            return actions
        now = self.clock.monotonic()
        inst.last_seen = now
        if inst.down:
            inst.down = False
            actions.events.append(
                Event("instance_up", instance_id, now, f"instance {instance_id} is back")
            )
            alert = self.checkpoint_alerts.pop(inst.checkpoint_id, None)
            if alert is not None:
                actions.events.append(
                    Event(
                        "alert_resolved",
                        inst.checkpoint_id,
                        now,
                        f"checkpoint {inst.checkpoint_id} is back",
                        alert,
                    )
                )
        return actions

    def alive(self, checkpoint_id: str, kind: str | None = None) -> list[str]:
        """Instances of ``checkpoint_id`` that may be given runs (of probe ``kind``, when given:
        those whose ``hello`` listed it), in a stable order."""
        return sorted(
            i
            for i, s in self.instances.items()
            if s.checkpoint_id == checkpoint_id and s.connected and not s.down and s.runs(kind)
        )

    # -- time ----------------------------------------------------------------------------------

    def tick(self) -> Actions:
        """Everything due now: silent instances, expired runs, scheduled runs."""
        now = self.clock.monotonic()
        actions = Actions()
        self._detect_silence(now, actions)
        for request_id, (monitor_id, _instance, reason, sent) in list(self.outstanding.items()):
            if now - sent > self.run_timeout:
                del self.outstanding[request_id]
                mon = self.monitors.get(monitor_id)
                if mon is not None and reason == "confirm" and mon.confirming == request_id:
                    mon.confirming = None
        for mon in self.monitors.values():
            if mon.next_due > now:
                continue
            interval = mon.spec.interval
            mon.next_due += interval
            if mon.next_due <= now:  # fell behind: do not burst
                mon.next_due = now + interval
            if mon.spec.checkpoint_id in self.autonomous:
                continue  # its instances schedule it themselves
            busy = any(m == mon.spec.monitor_id for m, *_ in self.outstanding.values())
            if busy:
                continue
            instance = self._pick(
                mon.spec.checkpoint_id, avoid=mon.last_instance, kind=mon.spec.kind
            )
            if instance is None:
                self._kind_unavailable(mon, "scheduled", now, actions)
                continue
            mon.last_instance = instance
            actions.runs.append(self.order(instance, mon.spec.monitor_id, "scheduled", now))
        return actions

    def _detect_silence(self, now: float, actions: Actions) -> None:
        limit = self.missed_heartbeats * self.heartbeat_interval
        for instance_id, inst in self.instances.items():
            if not inst.down and now - inst.last_seen > limit:
                inst.down = True
                actions.events.append(
                    Event(
                        "instance_down",
                        instance_id,
                        now,
                        f"instance {instance_id} missed {self.missed_heartbeats} heartbeats",
                    )
                )
        by_checkpoint: dict[str, list[_Instance]] = {}
        for inst in self.instances.values():
            by_checkpoint.setdefault(inst.checkpoint_id, []).append(inst)
        for checkpoint_id, members in by_checkpoint.items():
            if all(m.down for m in members) and checkpoint_id not in self.checkpoint_alerts:
                alert = Alert(
                    self._id("alert"),
                    "checkpoint_down",
                    checkpoint_id,
                    now,
                    f"checkpoint {checkpoint_id} is down: {len(members)} instances silent",
                )
                self.checkpoint_alerts[checkpoint_id] = alert
                actions.events.append(
                    Event("alert_opened", checkpoint_id, now, alert.message, alert)
                )

    # -- results -------------------------------------------------------------------------------

    def on_result(
        self,
        monitor_id: str | None,
        instance_id: str,
        request_id: str | None,
        reason: str,
        status: Status,
    ) -> Actions:
        """React to one (already deduplicated) result."""
        now = self.clock.monotonic()
        actions = Actions()
        if request_id is not None:
            self.outstanding.pop(request_id, None)
        mon = self.monitors.get(monitor_id) if monitor_id else None
        if mon is None:
            return actions
        up = status is not Status.DOWN
        mon.history.append(up)
        self._flapping(mon, now, actions)
        if reason == "confirm":
            if request_id is not None and mon.confirming not in (None, request_id):
                return actions  # an older confirmation; the current one decides
            mon.confirming = None
            if up:
                actions.events.append(
                    Event(
                        "transient",
                        monitor_id or "",
                        now,
                        f"{monitor_id}: failed on {mon.first_failure}, passed on {instance_id}",
                    )
                )
            elif mon.alert is None and mon.flap_alert is None:
                mon.alert = Alert(
                    self._id("alert"),
                    "monitor_down",
                    mon.spec.monitor_id,
                    now,
                    f"{monitor_id} is down: failed on {mon.first_failure}, again on {instance_id}",
                )
                actions.events.append(
                    Event("alert_opened", mon.spec.monitor_id, now, mon.alert.message, mon.alert)
                )
            return actions
        if up:
            if mon.alert is not None:
                alert, mon.alert = mon.alert, None
                actions.events.append(
                    Event(
                        "alert_resolved",
                        mon.spec.monitor_id,
                        now,
                        f"{monitor_id} is up again",
                        alert,
                    )
                )
            return actions
        if mon.alert is not None or mon.confirming is not None:
            return actions
        mon.first_failure = instance_id
        kind = mon.spec.kind
        target = self._pick(mon.spec.checkpoint_id, avoid=instance_id, kind=kind)
        if target is None:
            reporter = self.instances.get(instance_id)
            if reporter is None or not reporter.runs(kind):
                self._kind_unavailable(mon, "confirm", now, actions)
                return actions
            target = instance_id
        order = self.order(target, mon.spec.monitor_id, "confirm", now)
        mon.confirming = order.request_id
        actions.runs.append(order)
        actions.events.append(
            Event(
                "unconfirmed",
                mon.spec.monitor_id,
                now,
                f"{monitor_id} failed on {instance_id}; confirming on {target}",
            )
        )
        return actions

    def _flapping(self, mon: _Monitor, now: float, actions: Actions) -> None:
        if len(mon.history) < FLAP_WINDOW:
            return
        pct = flap_percent(mon.history)
        if mon.flap_alert is None and pct > FLAP_HIGH:
            mon.flap_alert = Alert(
                self._id("alert"),
                "flapping",
                mon.spec.monitor_id,
                now,
                f"{mon.spec.monitor_id} is flapping ({pct:.0f}% state change)",
            )
            actions.events.append(
                Event(
                    "alert_opened", mon.spec.monitor_id, now, mon.flap_alert.message, mon.flap_alert
                )
            )
        elif mon.flap_alert is not None and pct < FLAP_LOW:
            alert, mon.flap_alert = mon.flap_alert, None
            actions.events.append(
                Event(
                    "alert_resolved",
                    mon.spec.monitor_id,
                    now,
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
        alert = Alert(self._id("alert"), "kind_unavailable", mon.spec.monitor_id, now, message)
        self.kind_alerts[key] = alert
        actions.events.append(Event("kind_unavailable", mon.spec.monitor_id, now, message, alert))

    def _pick(self, checkpoint_id: str, avoid: str | None, kind: str | None = None) -> str | None:
        choices = self.alive(checkpoint_id, kind)
        if len(choices) > 1 and avoid in choices:
            choices.remove(avoid)
        return self.rng.choice(choices) if choices else None

    def order(self, instance_id: str, monitor_id: str, reason: Reason, now: float) -> RunOrder:
        order = RunOrder(instance_id, self._id("run"), monitor_id, reason)
        self.outstanding[order.request_id] = (monitor_id, instance_id, reason, now)
        return order

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"
