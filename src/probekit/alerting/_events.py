"""What the control plane and ``probekit run`` tell people about: alerts and the events that
open, repeat and resolve them, each with an id that is the same whoever sends it."""

from __future__ import annotations

from typing import Final, Literal

import attrs

__all__ = ["Alert", "AlertKind", "Event", "EventKind", "stable_event_id", "with_event_id"]

AlertKind = Literal["monitor_down", "checkpoint_down", "flapping", "kind_unavailable"]


@attrs.frozen
class Alert:
    """An open problem; ``opened_at`` is wall-clock Unix seconds, ``alert_id`` a UUIDv7."""

    alert_id: str
    kind: AlertKind
    subject: str  # a monitor id, or a checkpoint id for checkpoint_down
    opened_at: float
    message: str


EventKind = Literal[
    "alert_opened",
    "alert_resolved",
    "unconfirmed",
    "transient",
    "instance_down",
    "instance_up",
    "instance_unresponsive",
    "kind_unavailable",
    "alert_repeated",
]


@attrs.frozen
class Event:
    """Something worth telling a person or a log: alerts opening and resolving, transients.

    ``at`` is wall-clock Unix seconds. ``event_id`` is stable for the event (see
    :func:`stable_event_id`; set when it is recorded): a receiver given the same id twice may
    drop the repeat (delivery is at least once)."""

    kind: EventKind
    subject: str
    at: float
    message: str
    alert: Alert | None = None
    event_id: str | None = None


#: The events that are an alert's transitions: their id is the alert's id and the kind.
_TRANSITIONS: Final = frozenset({"alert_opened", "kind_unavailable", "alert_resolved"})


def stable_event_id(event: Event) -> str:
    """The id of ``event``: its ``event_id`` when set; for an alert's opening or resolution,
    ``ALERT_ID:KIND`` (``abc123:alert_opened``), the same whoever sends it and however often;
    for any other event, its kind, alert or subject, and time in milliseconds."""
    if event.event_id is not None:
        return event.event_id
    alert = event.alert
    if alert is not None and event.kind in _TRANSITIONS:
        return f"{alert.alert_id}:{event.kind}"
    key = alert.alert_id if alert is not None else event.subject
    return f"{key}:{event.kind}:{round(event.at * 1000)}"


def with_event_id(event: Event) -> Event:
    """``event`` with its :func:`stable_event_id` set."""
    return (
        event
        if event.event_id is not None
        else attrs.evolve(event, event_id=stable_event_id(event))
    )
