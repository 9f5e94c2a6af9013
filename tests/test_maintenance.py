"""Maintenance windows on a fake clock: which times and monitors they cover, alerts held back
(and said so in the event), released when the window ends with the monitor still down, a
resolution inside the window sending nothing, the API and the config file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from probekit import DefinitionError, DefinitionErrors, FakeClock, Secret, Status
from probekit.control import (
    ControlPlane,
    ControlSettings,
    MaintenanceWindow,
    MemorySink,
    Weekly,
)
from probekit.control._config import load_control_config
from probekit.control._logic import MonitorSpec

START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)  # a Monday
T0 = START.timestamp()
HOUR = 3600.0


def at(day: int, hour: int, minute: int = 0, zone: str = "UTC") -> float:
    """Unix time of 2026-03-``day`` ``hour``:``minute`` in ``zone``."""
    from zoneinfo import ZoneInfo

    return dt.datetime(2026, 3, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


# -- when and what --------------------------------------------------------------------------------


def test_weekly_occurrences_in_a_time_zone_and_across_midnight() -> None:
    sunday = Weekly(days=["sun"], at="02:00", duration=2 * HOUR, timezone="Europe/Berlin")
    assert sunday.occurrence(at(8, 2, 30, "Europe/Berlin")) == (
        at(8, 2, 0, "Europe/Berlin"),
        at(8, 4, 0, "Europe/Berlin"),
    )
    assert sunday.occurrence(at(8, 1, 59, "Europe/Berlin")) is None
    assert sunday.occurrence(at(8, 4, 0, "Europe/Berlin")) is None  # the end is excluded
    assert sunday.occurrence(at(9, 2, 30, "Europe/Berlin")) is None  # a Monday
    late = Weekly(days=["sat"], at="23:00", duration=3 * HOUR)
    assert late.occurrence(at(8, 1, 0)) == (at(7, 23), at(8, 2))  # Sunday 01:00, from Saturday
    assert late.occurrence(at(8, 2, 0)) is None
    weekdays = Weekly(days=["mon", "tue", "wed", "thu", "fri"], at="12:00", duration=600)
    assert weekdays.days == (0, 1, 2, 3, 4)
    assert weekdays.occurrence(at(6, 12, 5)) is not None  # Friday
    assert weekdays.occurrence(at(7, 12, 5)) is None  # Saturday


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"monitors": ("web",)}, "end"),
        ({"end": T0}, "monitors"),
        ({"monitors": ("web",), "start": T0, "end": T0}, "end"),
        (
            {"monitors": ("web",), "end": T0, "weekly": Weekly(days=[0], at="01:00", duration=60)},
            "weekly",
        ),
        ({"monitors": ("web",), "end": START.replace(tzinfo=None)}, "start"),
    ],
)
def test_invalid_windows_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(DefinitionError) as info:
        MaintenanceWindow("w", **kwargs)  # type: ignore[arg-type]
    assert info.value.path == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"days": ["someday"], "at": "01:00", "duration": 60}, "days"),
        ({"days": ["mon"], "at": "25:00", "duration": 60}, "at"),
        ({"days": ["mon"], "at": "01:00", "duration": 0}, "duration"),
        ({"days": ["mon"], "at": "01:00", "duration": 60, "timezone": "Mars/Olympus"}, "timezone"),
    ],
)
def test_invalid_recurrences_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(DefinitionError) as info:
        Weekly(**kwargs)  # type: ignore[arg-type]
    assert info.value.path == field


def test_selection_by_monitor_pattern_checkpoint_and_labels() -> None:
    by_name = MaintenanceWindow("a", monitors=("mail-*",), end=T0)
    assert by_name.selects("mail-imap", "office", {})
    assert not by_name.selects("web", "office", {})
    assert not by_name.selects(None, "office", {})  # a checkpoint's own alert is not a monitor
    by_site = MaintenanceWindow("b", checkpoints=("office",), end=T0)
    assert by_site.selects("web", "office", {}) and by_site.selects(None, "office", {})
    assert not by_site.selects("web", "lab", {})
    by_label = MaintenanceWindow("c", labels={"team": "mail"}, checkpoints=("office",), end=T0)
    assert by_label.selects("x", "office", {"team": "mail", "tier": "1"})
    assert not by_label.selects("x", "office", {"team": "web"})
    assert not by_label.selects("x", "lab", {"team": "mail"})


# -- through the control plane, on a fake clock ---------------------------------------------------


class Fixture:
    def __init__(self) -> None:
        self.clock = FakeClock(START)
        self.sink = MemorySink()
        self.plane = ControlPlane(
            ControlSettings(tokens={"office": Secret("t" * 32)}),
            sinks=[self.sink],
            clock=self.clock,
        )
        logic = self.plane.logic
        logic.configure_checkpoints(["office"])
        for name in ("web", "mail"):
            spec = MonitorSpec(name, "office", 30.0, {"kind": "tcp", "host": "h", "port": 1})
            logic.upsert_monitor(spec)
            self.plane._specs[name] = spec
        logic.instance_connected("i1", "office")
        logic.instance_connected("i2", "office")

    async def result(self, monitor: str, status: Status) -> None:
        """A scheduled result of ``monitor`` on i1, and the confirm run it starts answered by
        the other instance with the same status."""
        logic = self.plane.logic
        actions = logic.on_result(monitor, "i1", None, "scheduled", status)
        await self.plane._dispatch(actions)
        for order in actions.runs:
            await self.plane._dispatch(
                logic.on_result(monitor, order.instance_id, order.request_id, "confirm", status)
            )

    def sent(self) -> list[tuple[str, str]]:
        return [(e.kind, e.subject) for e in self.sink.events]


async def test_an_alert_in_a_window_is_held_stored_and_sent_when_the_window_ends() -> None:
    f = Fixture()
    f.plane.add_maintenance(
        MaintenanceWindow("deploy", monitors=("web",), start=T0, end=T0 + HOUR, reason="v2.1")
    )
    assert f.plane.in_maintenance("web") is not None and f.plane.in_maintenance("mail") is None
    await f.result("web", Status.DOWN)
    await f.result("mail", Status.DOWN)
    assert f.sent() == [("unconfirmed", "mail"), ("alert_opened", "mail")]  # web held
    (open_web,) = [a for a in await f.plane.alerts() if a["subject"] == "web"]
    assert open_web["resolved_at"] is None  # the alert exists and is open; only not sent
    held = [e for e in await f.plane.events() if e["subject"] == "web"]
    assert [e["kind"] for e in held] == ["unconfirmed", "alert_opened"]
    assert all(
        "[held: maintenance window 'deploy' (v2.1) until 2026-03-02T10:00:00+00:00]" in e["message"]
        for e in held
    )
    (status,) = f.plane.maintenance_status()
    assert status == {
        "window_id": "deploy",
        "monitors": ["web"],
        "checkpoints": [],
        "labels": {},
        "reason": "v2.1",
        "active": True,
        "starts": T0,
        "ends": T0 + HOUR,
        "weekly": None,
        "held": [open_web["alert_id"]],
    }
    f.clock.advance(HOUR - 1)
    await f.plane.alerting_tick()
    assert ("alert_opened", "web") not in f.sent()
    f.clock.advance(1)  # the window is over and web is still down
    await f.plane.alerting_tick()
    (status,) = f.plane.maintenance_status()
    assert (status["active"], status["starts"], status["held"]) == (False, None, [])
    assert f.sent()[-1] == ("alert_opened", "web")
    released = f.sink.events[-1]
    assert "held by maintenance window 'deploy', now over" in released.message
    assert released.alert is not None and released.alert.alert_id == open_web["alert_id"]
    await f.plane.alerting_tick()  # sent once
    assert f.sent().count(("alert_opened", "web")) == 1
    await f.result("web", Status.UP)
    assert f.sent()[-1] == ("alert_resolved", "web")
    assert [a["subject"] for a in await f.plane.alerts()] == ["mail"]
    await f.plane.stop()


async def test_a_monitor_back_up_inside_its_window_sends_nothing() -> None:
    f = Fixture()
    f.plane.start_maintenance("swap", HOUR, monitors=["web"])
    await f.result("web", Status.DOWN)
    await f.result("web", Status.UP)
    f.clock.advance(2 * HOUR)
    await f.plane.alerting_tick()
    assert f.sent() == []
    kinds = [(e["kind"], "[held:" in e["message"]) for e in await f.plane.events()]
    assert kinds == [("unconfirmed", True), ("alert_opened", True), ("alert_resolved", True)]
    assert await f.plane.alerts() == []
    await f.plane.stop()


async def test_an_alert_sent_before_the_window_resolves_as_usual_inside_it() -> None:
    f = Fixture()
    await f.result("web", Status.DOWN)
    assert f.sent()[-1] == ("alert_opened", "web")
    f.plane.start_maintenance("late", HOUR, monitors=["web"])
    await f.result("web", Status.UP)
    assert f.sent()[-1] == ("alert_resolved", "web")  # not left hanging in the pager
    await f.plane.stop()


async def test_ending_a_window_early_releases_what_it_held() -> None:
    f = Fixture()
    f.plane.start_maintenance("oops", 8 * HOUR, labels={"team": "web"})
    f.plane.maintenance.labels["web"] = {"team": "web"}
    await f.result("web", Status.DOWN)
    await f.result("mail", Status.DOWN)  # no label: not in the window
    assert f.sent() == [("unconfirmed", "mail"), ("alert_opened", "mail")]
    assert [w.window_id for w in f.plane.maintenance_windows(active_only=True)] == ["oops"]
    assert f.plane.end_maintenance("oops") is True
    assert f.plane.end_maintenance("oops") is False
    await f.plane.alerting_tick()
    assert f.sent()[-1] == ("alert_opened", "web")
    await f.plane.stop()


async def test_a_checkpoint_window_holds_its_checkpoint_down_alert() -> None:
    f = Fixture()
    f.plane.add_maintenance(
        MaintenanceWindow(
            "move", checkpoints=("office",), weekly=Weekly(days=["mon"], at="09:00", duration=HOUR)
        )
    )
    logic = f.plane.logic
    logic.instance_disconnected("i1")
    logic.instance_disconnected("i2")
    f.clock.advance(60)
    await f.plane._dispatch(logic.tick())
    assert "office" in logic.checkpoint_alerts
    assert ("alert_opened", "office") not in f.sent()
    assert ("instance_down", "i1") not in f.sent()  # its instances' events are held too
    f.clock.advance(HOUR)
    await f.plane.alerting_tick()
    assert ("alert_opened", "office") in f.sent()
    await f.plane.stop()


async def test_no_repeats_while_in_maintenance() -> None:
    class Repeating(MemorySink):
        renotify = 60.0

    f = Fixture()
    repeat = Repeating()
    f.plane.sinks.append(repeat)
    await f.result("web", Status.DOWN)
    await f.plane.alerting_tick()
    f.plane.start_maintenance("quiet", HOUR, monitors=["web"])
    for _ in range(10):
        f.clock.advance(60)
        await f.plane.alerting_tick()
    assert [e.kind for e in repeat.events] == ["unconfirmed", "alert_opened"]
    f.clock.advance(HOUR)  # the window is over: repeats resume, one interval later
    await f.plane.alerting_tick()
    assert [e.kind for e in repeat.events][-1] == "alert_opened"
    f.clock.advance(60)
    await f.plane.alerting_tick()
    assert [e.kind for e in repeat.events][-1] == "alert_repeated"
    await f.plane.stop()


# -- the config file ------------------------------------------------------------------------------

CONFIG = """
[control]
port = 0
db = ":memory:"

[[checkpoints]]
id = "office"
token = {{ env = "M_TOKEN" }}

[[monitors]]
id = "web"
checkpoint = "office"
kind = "tcp"
host = "127.0.0.1"
port = 1
{extra}
"""


def test_windows_load_from_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M_TOKEN", "a-token-of-enough-length-0123456789")
    path = tmp_path / "c.toml"
    path.write_text(
        CONFIG.format(
            extra="""
[[maintenance]]
id = "sunday-patching"
checkpoints = ["office"]
days = ["sun"]
at = "02:00"
duration = 7200
timezone = "Europe/Berlin"

[[maintenance]]
id = "migration"
monitors = ["web"]
start = 2026-03-02T09:00:00Z
end = "2026-03-02T11:00:00+00:00"
reason = "database migration"
"""
        )
    )
    config = load_control_config(path)
    weekly, fixed = config.maintenance
    assert weekly.weekly == Weekly(days=[6], at="02:00", duration=7200, timezone="Europe/Berlin")
    assert (fixed.start, fixed.end) == (T0, T0 + 2 * HOUR)
    assert fixed.reason == "database migration"


def test_bad_windows_are_reported_with_their_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("M_TOKEN", "a-token-of-enough-length-0123456789")
    path = tmp_path / "c.toml"
    path.write_text(
        CONFIG.format(
            extra="""
[[maintenance]]
id = "a"
monitors = ["web"]
days = ["sun"]
at = "2am"
duration = 60

[[maintenance]]
id = "b"
monitors = ["web"]
end = 2026-03-02T09:00:00

[[maintenance]]
id = "c"
end = 2026-03-02T09:00:00Z
colour = "red"
"""
        )
    )
    with pytest.raises(DefinitionErrors) as info:
        load_control_config(path)
    text = str(info.value)
    for expected in (
        "maintenance[0].at:",
        "maintenance[1].end: a date and time needs its offset",
        "maintenance[2].colour: unknown field",
    ):
        assert expected in text, expected


async def test_an_alert_open_at_a_restart_inside_a_window_is_sent_when_it_ends(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "control.db")
    clock = FakeClock(START)
    settings = ControlSettings(tokens={"office": Secret("t" * 32)}, db_path=db)
    window = MaintenanceWindow("deploy", monitors=("web",), start=T0, end=T0 + HOUR)
    first = ControlPlane(settings, sinks=[MemorySink()], clock=clock, maintenance=[window])
    await first.start()
    await first.add_monitor("web", "office", {"kind": "tcp", "host": "h", "port": 1}, 30)
    first.logic.instance_connected("i1", "office")
    first.logic.instance_connected("i2", "office")
    actions = first.logic.on_result("web", "i1", None, "scheduled", Status.DOWN)
    await first._dispatch(actions)
    (order,) = actions.runs
    await first._dispatch(
        first.logic.on_result("web", order.instance_id, order.request_id, "confirm", Status.DOWN)
    )
    await first.stop()
    sink = MemorySink()
    second = ControlPlane(settings, sinks=[sink], clock=clock, maintenance=[window])
    await second.start()
    try:
        await second.alerting_tick()
        assert sink.events == []
        clock.advance(HOUR)
        await second.alerting_tick()
        assert [(e.kind, e.subject) for e in sink.events] == [("alert_opened", "web")]
    finally:
        await second.stop()
