"""Maintenance windows: times when a monitor's alerts are held back, not its checks.

A :class:`MaintenanceWindow` selects monitors (by id or glob pattern, by checkpoint, by label)
and a time: a fixed span (``start``/``end``, wall-clock Unix seconds), a :class:`Weekly`
recurrence, or both unset with an ``end`` only for an ad-hoc window that starts now.
:class:`Maintenance` keeps the windows and the alerts they hold: the control plane asks it
whether an event is held (:meth:`Maintenance.hold`), records the event with the reason, and does
not send it to the sinks; when the window ends with the alert still open,
:meth:`Maintenance.release` gives the opening to send then. Checks keep running and results
keep being stored throughout.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from .._exceptions import DefinitionError
from ._events import Event

__all__ = ["Maintenance", "MaintenanceWindow", "Weekly"]

_TIME: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

#: (monitor id or None, checkpoint id or None) for an event's subject.
Locate = Callable[[str], tuple[str | None, str | None]]


def _days(value: Iterable[str | int]) -> tuple[int, ...]:
    out = []
    for day in value:
        if isinstance(day, str) and day[:3].lower() in DAYS:
            out.append(DAYS.index(day[:3].lower()))
        elif isinstance(day, int) and not isinstance(day, bool) and 0 <= day <= 6:
            out.append(day)
        else:
            raise DefinitionError("days", f"expected mon..sun, got {day!r}")
    if not out:
        raise DefinitionError("days", "at least one day")
    return tuple(sorted(set(out)))


@attrs.frozen
class Weekly:
    """Every week on ``days`` (``"mon"``..``"sun"``) at ``at`` (``"HH:MM"``, in ``timezone``)
    for ``duration`` seconds."""

    days: tuple[int, ...] = attrs.field(converter=_days)
    at: str
    duration: float
    timezone: str = "UTC"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.at, str) or not _TIME.match(self.at):
            raise DefinitionError("at", f'expected "HH:MM", got {self.at!r}')
        d = self.duration
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d <= 0:
            raise DefinitionError("duration", f"expected seconds above 0, got {d!r}")
        if d > 7 * 86400:
            raise DefinitionError("duration", "at most a week")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise DefinitionError("timezone", f"unknown time zone {self.timezone!r}") from None

    def occurrence(self, t: float) -> tuple[float, float] | None:
        """The (start, end) of the occurrence that ``t`` falls in, or None."""
        zone = ZoneInfo(self.timezone)
        hour, minute = (int(x) for x in self.at.split(":"))
        today = dt.datetime.fromtimestamp(t, zone).date()
        back = int(self.duration // 86400) + 1
        for k in range(back, -1, -1):
            day = today - dt.timedelta(days=k)
            if day.weekday() not in self.days:
                continue
            start = dt.datetime.combine(day, dt.time(hour, minute), zone).timestamp()
            if start <= t < start + self.duration:
                return start, start + self.duration
        return None


def _patterns(value: Iterable[str]) -> tuple[str, ...]:
    out = tuple(value)
    if not all(isinstance(v, str) and v for v in out):
        raise DefinitionError("monitors", "expected ids or glob patterns")
    return out


def _ids(value: Iterable[str]) -> tuple[str, ...]:
    out = tuple(value)
    if not all(isinstance(v, str) and v for v in out):
        raise DefinitionError("checkpoints", "expected checkpoint ids")
    return out


def _labels(value: Mapping[str, str]) -> dict[str, str]:
    out = dict(value)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in out.items()):
        raise DefinitionError("labels", "expected a table of text values")
    return out


def _time(value: float | dt.datetime | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise DefinitionError("start", "a date and time needs its offset (Z or +02:00)")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DefinitionError("start", f"expected a time, got {value!r}")
    return float(value)


@attrs.frozen
class MaintenanceWindow:
    """A time during which the selected monitors' alerts are held back.

    Selection (every selector given must match; at least one is required): ``monitors``, ids
    or glob patterns (``"mail-*"``); ``checkpoints``, checkpoint ids (a checkpoint's own alert,
    ``checkpoint_down``, and its instances' events are held by a window that selects only
    checkpoints); ``labels``, which a monitor's labels must all include. Time: ``start`` and
    ``end`` (wall-clock Unix seconds or aware datetimes; ``start`` None means "already begun"),
    or ``weekly``. ``reason`` is shown in the held events.
    """

    window_id: str
    monitors: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    checkpoints: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_labels)
    start: float | None = attrs.field(default=None, converter=_time)
    end: float | None = attrs.field(default=None, converter=_time)
    weekly: Weekly | None = None
    reason: str = ""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.window_id, str) or not self.window_id:
            raise DefinitionError("id", "required: a name for the window")
        if not (self.monitors or self.checkpoints or self.labels):
            raise DefinitionError(
                "monitors", "a window selects monitors, checkpoints or labels (at least one)"
            )
        if self.weekly is not None and (self.start is not None or self.end is not None):
            raise DefinitionError("weekly", "either start/end or weekly, not both")
        if self.weekly is None and self.end is None:
            raise DefinitionError("end", "required (or weekly): when the window ends")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise DefinitionError("end", "must be after start")

    def span(self, t: float) -> tuple[float, float] | None:
        """The (start, end) of the occurrence active at ``t``, or None."""
        if self.weekly is not None:
            return self.weekly.occurrence(t)
        start = -math.inf if self.start is None else self.start
        assert self.end is not None
        return (start, self.end) if start <= t < self.end else None

    def active(self, t: float) -> bool:
        return self.span(t) is not None

    def selects(
        self, monitor_id: str | None, checkpoint_id: str | None, labels: Mapping[str, str]
    ) -> bool:
        """Whether an event about this monitor (None: about a checkpoint or an instance) of this
        checkpoint falls under the window."""
        if self.checkpoints and checkpoint_id not in self.checkpoints:
            return False
        if monitor_id is None:
            return not self.monitors and not self.labels and checkpoint_id is not None
        if self.monitors and not any(fnmatch.fnmatchcase(monitor_id, p) for p in self.monitors):
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())

    def describe(self, t: float) -> str:
        span = self.span(t)
        text = f"maintenance window {self.window_id!r}"
        if self.reason:
            text += f" ({self.reason})"
        if span is not None and math.isfinite(span[1]):
            until = dt.datetime.fromtimestamp(span[1], dt.UTC).isoformat(timespec="seconds")
            text += f" until {until}"
        return text


class Maintenance:
    """The maintenance windows of one control plane and the alerts they hold (see the module
    docstring). ``labels`` maps monitor ids to their labels."""

    def __init__(self, windows: Iterable[MaintenanceWindow] = ()) -> None:
        self.windows: dict[str, MaintenanceWindow] = {}
        self.labels: dict[str, Mapping[str, str]] = {}
        #: alert id -> (the opening event held, the id of the window holding it)
        self.held: dict[str, tuple[Event, str]] = {}
        for window in windows:
            self.add(window)

    def add(self, window: MaintenanceWindow) -> None:
        """Add a window, or replace the one of the same id."""
        if not isinstance(window, MaintenanceWindow):
            raise DefinitionError("window", f"expected a MaintenanceWindow, got {window!r}")
        self.windows[window.window_id] = window

    def remove(self, window_id: str) -> bool:
        """Remove a window (alerts it held go out at the next :meth:`release`)."""
        return self.windows.pop(window_id, None) is not None

    def active(self, t: float) -> list[MaintenanceWindow]:
        return [w for w in self.windows.values() if w.active(t)]

    def covering(
        self, monitor_id: str | None, checkpoint_id: str | None, t: float
    ) -> MaintenanceWindow | None:
        """The first active window that selects this monitor (or checkpoint) at ``t``."""
        labels = self.labels.get(monitor_id, {}) if monitor_id is not None else {}
        for window in self.windows.values():
            if window.selects(monitor_id, checkpoint_id, labels) and window.active(t):
                return window
        return None

    def hold(self, event: Event, locate: Locate, t: float) -> str | None:
        """Why ``event`` is held back from the sinks at ``t`` (None: it is not).

        A resolution is held only when its opening was (an alert notified before a window
        began resolves as usual)."""
        alert = event.alert
        if event.kind == "alert_resolved":
            if alert is not None and alert.alert_id in self.held:
                _, window_id = self.held.pop(alert.alert_id)
                return f"its opening was held by maintenance window {window_id!r}"
            return None
        monitor_id, checkpoint_id = locate(event.subject)
        window = self.covering(monitor_id, checkpoint_id, t)
        if window is None:
            return None
        if alert is not None and event.kind in ("alert_opened", "kind_unavailable"):
            self.held[alert.alert_id] = (event, window.window_id)
        return window.describe(t)

    def release(self, open_ids: Iterable[str], locate: Locate, t: float) -> list[Event]:
        """The held openings to send now: their alert is still open and no window covers its
        subject any more. A held alert that closed meanwhile is forgotten."""
        still_open = set(open_ids)
        out: list[Event] = []
        for alert_id, (event, window_id) in list(self.held.items()):
            if alert_id not in still_open:
                del self.held[alert_id]
                continue
            monitor_id, checkpoint_id = locate(event.subject)
            window = self.covering(monitor_id, checkpoint_id, t)
            if window is not None:
                self.held[alert_id] = (event, window.window_id)
                continue
            del self.held[alert_id]
            message = f"{event.message} (held by maintenance window {window_id!r}, now over)"
            out.append(attrs.evolve(event, at=t, message=message))
        return out
