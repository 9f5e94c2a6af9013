"""The control plane's decisions, driven by a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from typing import Any

import pytest

from probekit import FakeClock, Status
from probekit._ids import IdGenerator
from probekit.control._logic import (
    Actions,
    Alert,
    ControlLogic,
    Event,
    MonitorSpec,
    Refusal,
    RunOrder,
    flap_percent,
)

HB = 5.0
#: The monitors' run deadline: long enough that a run answered at the end of a minute simulated
#: in one go is not yet unanswered (see the tests of unanswered runs for short ones).
SLOW = {"kind": "tcp", "host": "h", "port": 1, "timeouts": {"total": 100}}


def make(n_instances: int = 2, monitors: int = 3, seed: int = 1) -> tuple[ControlLogic, FakeClock]:
    clock = FakeClock()
    logic = ControlLogic(clock, heartbeat_interval=HB, rng=random.Random(seed))
    for i in range(n_instances):
        logic.instance_connected(f"i{i}", "cp")
    for m in range(monitors):
        logic.upsert_monitor(MonitorSpec(f"m{m}", "cp", 60.0, SLOW))
    return logic, clock


def beat(logic: ControlLogic, *instances: str) -> None:
    for i in instances:
        logic.heartbeat(i)


def advance(
    logic: ControlLogic, clock: FakeClock, seconds: float, alive: tuple[str, ...] = ("i0", "i1")
) -> Actions:
    out = Actions()
    for _ in range(int(seconds)):
        clock.advance(1)
        if int(clock.monotonic()) % int(HB) == 0:
            beat(logic, *alive)
        out.extend(logic.tick())
    return out


def test_runs_alternate_between_instances() -> None:
    logic, clock = make(monitors=1)
    runs: list[RunOrder] = []
    for _ in range(20):
        acts = advance(logic, clock, 60)
        runs += acts.runs
        for r in acts.runs:
            logic.on_result(r.monitor_id, r.instance_id, r.request_id, r.reason, Status.UP)
    assert len(runs) == 20
    assert all(a.instance_id != b.instance_id for a, b in itertools.pairwise(runs))


def test_down_is_confirmed_on_the_other_instance_then_alerts_once() -> None:
    logic, clock = make(monitors=1)
    (run,) = advance(logic, clock, 60).runs
    first = logic.on_result(
        run.monitor_id, run.instance_id, run.request_id, run.reason, Status.DOWN
    )
    (confirm,) = first.runs
    assert confirm.reason == "confirm" and confirm.instance_id != run.instance_id
    assert [e.kind for e in first.events] == ["unconfirmed"]
    second = logic.on_result(
        confirm.monitor_id, confirm.instance_id, confirm.request_id, "confirm", Status.DOWN
    )
    assert [e.kind for e in second.events] == ["alert_opened"]
    assert second.events[0].alert is not None and second.events[0].alert.kind == "monitor_down"
    # still down: no second alert, no second confirmation
    (again,) = advance(logic, clock, 60).runs
    more = logic.on_result(
        again.monitor_id, again.instance_id, again.request_id, "scheduled", Status.DOWN
    )
    assert more.events == [] and more.runs == []
    (up,) = advance(logic, clock, 60).runs
    resolved = logic.on_result(up.monitor_id, up.instance_id, up.request_id, "scheduled", Status.UP)
    assert [e.kind for e in resolved.events] == ["alert_resolved"]


def test_a_failure_that_recovers_on_confirmation_is_transient() -> None:
    logic, clock = make(monitors=1)
    (run,) = advance(logic, clock, 60).runs
    (confirm,) = logic.on_result(
        run.monitor_id, run.instance_id, run.request_id, "scheduled", Status.DOWN
    ).runs
    acts = logic.on_result(
        confirm.monitor_id, confirm.instance_id, confirm.request_id, "confirm", Status.UP
    )
    assert [e.kind for e in acts.events] == ["transient"]
    assert logic.monitors["m0"].alert is None


def test_single_instance_confirms_on_itself() -> None:
    logic, clock = make(n_instances=1, monitors=1)
    (run,) = advance(logic, clock, 60, alive=("i0",)).runs
    (confirm,) = logic.on_result("m0", "i0", run.request_id, "scheduled", Status.DOWN).runs
    assert confirm.instance_id == "i0"


def test_silent_checkpoint_raises_exactly_one_alert_and_resolves() -> None:
    logic, clock = make(monitors=5)
    advance(logic, clock, 30)
    events = advance(logic, clock, 3 * HB + 2, alive=()).events  # nobody heartbeats
    opened = [e for e in events if e.kind == "alert_opened"]
    assert (
        len(opened) == 1
        and opened[0].alert is not None
        and opened[0].alert.kind == "checkpoint_down"
    )
    assert len([e for e in events if e.kind == "instance_down"]) == 2
    later = advance(logic, clock, 120, alive=())
    assert not [e for e in later.events if e.kind == "alert_opened"]
    assert later.runs == []  # nothing is assigned to down instances
    back = logic.heartbeat("i1")
    assert [e.kind for e in back.events] == ["instance_up", "alert_resolved"]


def test_one_silent_instance_is_not_a_checkpoint_alert() -> None:
    logic, clock = make(monitors=2)
    events = advance(logic, clock, 60, alive=("i0",)).events
    assert [e.kind for e in events] == ["instance_down"]
    runs = advance(logic, clock, 120, alive=("i0",)).runs
    assert runs and {r.instance_id for r in runs} == {"i0"}


def test_flapping_is_detected_and_clears() -> None:
    logic, _clock = make(monitors=1)
    kinds: list[str] = []
    for i in range(30):
        status = Status.UP if i % 2 else Status.DOWN
        acts = logic.on_result("m0", "i0", None, "scheduled", status)
        for r in acts.runs:
            acts.extend(
                logic.on_result(r.monitor_id, r.instance_id, r.request_id, "confirm", Status.UP)
            )
        kinds += [e.kind for e in acts.events if e.alert is not None and e.alert.kind == "flapping"]
    assert kinds.count("alert_opened") == 1
    for _ in range(25):
        acts = logic.on_result("m0", "i0", None, "scheduled", Status.UP)
        kinds += [e.kind for e in acts.events if e.alert is not None and e.alert.kind == "flapping"]
    assert kinds.count("alert_resolved") == 1


def test_flap_percent() -> None:
    assert flap_percent([True] * 21) == 0
    assert flap_percent([True, False] * 10 + [True]) == pytest.approx(100)
    assert 0 < flap_percent([True] * 10 + [False] * 11) < 10


def test_a_thousand_simulated_minutes_with_random_failures() -> None:
    """Outages of random length, random one-off blips, an instance that dies for a while.

    Invariants: an alert needs a failure confirmed on a second instance (while two are alive);
    each real outage of a monitor that lasted long enough raises one alert; blips only raise
    transients; consecutive scheduled runs of a monitor go to different instances.
    """
    began = time.monotonic()
    rng = random.Random(42)
    logic, clock = make(monitors=20, seed=7)
    down_until = {f"m{i}": -1.0 for i in range(20)}
    dead: dict[str, float] = {}
    last_instance: dict[str, str] = {}
    alerts_opened: dict[str, int] = {}
    outages: dict[str, int] = {}
    pending: list[RunOrder] = []
    for second in range(1000 * 60):
        clock.advance(1)
        now = clock.monotonic()
        if rng.random() < 0.0005:
            m = f"m{rng.randrange(20)}"
            if down_until[m] < now:
                down_until[m] = now + rng.uniform(180, 900)
                outages[m] = outages.get(m, 0) + 1
        if second == 30_000:
            dead["i1"] = now + 300
        alive = tuple(i for i in ("i0", "i1") if dead.get(i, 0) < now)
        if second % int(HB) == 0:
            beat(logic, *alive)
        acts = logic.tick()
        pending += acts.runs
        while pending:
            order = pending.pop()
            if order.instance_id not in alive:
                continue
            if order.reason == "scheduled":
                if logic.alive("cp") == ["i0", "i1"] and order.monitor_id in last_instance:
                    assert last_instance[order.monitor_id] != order.instance_id
                last_instance[order.monitor_id] = order.instance_id
            failing = down_until[order.monitor_id] >= now or (
                order.reason == "scheduled" and rng.random() < 0.01
            )
            result = logic.on_result(
                order.monitor_id,
                order.instance_id,
                order.request_id,
                order.reason,
                Status.DOWN if failing else Status.UP,
            )
            pending += result.runs
            for event in result.events:
                if (
                    event.kind == "alert_opened"
                    and event.alert is not None
                    and event.alert.kind == "monitor_down"
                ):
                    alerts_opened[event.subject] = alerts_opened.get(event.subject, 0) + 1
                    assert down_until[event.subject] >= now  # never for a blip
    for monitor, count in alerts_opened.items():
        assert count <= outages.get(monitor, 0)
    assert sum(alerts_opened.values()) >= sum(outages.values()) * 0.8  # long outages are caught
    assert sum(outages.values()) >= 10, outages  # the run really exercised outages
    assert time.monotonic() - began < 30


def test_autonomous_checkpoints_get_no_scheduled_runs_but_still_confirmations() -> None:
    logic, clock = make(monitors=2)
    logic.autonomous.add("cp")
    assert advance(logic, clock, 300).runs == []
    acts = logic.on_result("m0", "i0", None, "scheduled", Status.DOWN)
    assert [r.reason for r in acts.runs] == ["confirm"]
    logic.autonomous.discard("cp")
    assert advance(logic, clock, 61).runs


# -- issue 10: unanswered runs, refused results, state across restarts ------------------------

QUICK = {"kind": "tcp", "host": "h", "port": 1, "timeouts": {"total": 3}}


def quick(grace: float = 2.0, **extra: Any) -> tuple[ControlLogic, FakeClock]:
    clock = FakeClock()
    logic = ControlLogic(clock, heartbeat_interval=HB, grace=grace, rng=random.Random(3), **extra)
    for i in ("i0", "i1"):
        logic.instance_connected(i, "cp")
    logic.upsert_monitor(MonitorSpec("m0", "cp", 60.0, QUICK))
    return logic, clock


def first_run(logic: ControlLogic, clock: FakeClock) -> RunOrder:
    for _ in range(61):
        clock.advance(1)
        beat(logic, "i0", "i1")
        runs = logic.tick().runs
        if runs:
            (run,) = runs
            return run
    raise AssertionError("no run in a minute")


def test_an_unanswered_run_moves_to_the_other_instance_after_its_deadline_plus_grace() -> None:
    logic, clock = quick()
    run = first_run(logic, clock)
    assert run.deadline == 3.0
    clock.advance(3 + 2 - 0.5)  # the deadline plus the grace has not passed yet
    beat(logic, "i0", "i1")
    assert logic.tick().runs == []
    clock.advance(1)
    beat(logic, "i0", "i1")
    (moved,) = logic.tick().runs
    assert moved.instance_id != run.instance_id
    assert (moved.monitor_id, moved.reason) == ("m0", "scheduled")
    assert logic.reassigned == 1
    # The late answer to the first run is not acted on; the moved run's answer is.
    assert logic.on_result("m0", run.instance_id, run.request_id, "scheduled", Status.DOWN) == (
        Actions()
    )
    acts = logic.on_result("m0", moved.instance_id, moved.request_id, "scheduled", Status.DOWN)
    assert [e.kind for e in acts.events] == ["unconfirmed"]


def test_an_instance_that_takes_runs_and_answers_none_is_cut_and_reported() -> None:
    logic, clock = quick(unanswered_limit=3)
    for m in range(1, 3):
        logic.upsert_monitor(MonitorSpec(f"m{m}", "cp", 60.0, QUICK))
    mute = "i1"
    cut: list[tuple[str, str]] = []
    events: list[str] = []
    for _ in range(120):
        clock.advance(1)
        beat(logic, "i0", "i1")  # both heartbeat: only the answers tell them apart
        acts = logic.tick()
        cut += acts.cut
        events += [e.kind for e in acts.events]
        for run in acts.runs:
            if run.instance_id != mute:
                logic.on_result(
                    run.monitor_id, run.instance_id, run.request_id, run.reason, Status.UP
                )
    assert [c[0] for c in cut] == [mute] and "3 runs" in cut[0][1]
    assert events == ["instance_unresponsive"]
    assert logic.alive("cp") == ["i0"]
    logic.instance_connected(mute, "cp")  # it reconnects: a fresh start
    assert logic.alive("cp") == ["i0", "i1"]


def test_an_instance_whose_heartbeat_is_late_gets_no_runs_before_it_is_down() -> None:
    logic, clock = quick(grace=1.0)
    run = first_run(logic, clock)
    silent = run.instance_id
    other = "i1" if silent == "i0" else "i0"
    clock.advance(HB + 1.5)  # its heartbeat is late by more than the grace, not yet 3 missed
    beat(logic, other)
    acts = logic.tick()
    assert logic.alive("cp") == [other]
    (moved,) = acts.runs  # its run in flight moved at once, long before its deadline
    assert moved.instance_id == other
    assert not [e for e in acts.events if e.kind == "instance_down"]
    assert logic.reassigned == 1 and logic.cut == 0  # silence is not counted as unanswered runs


def test_a_run_the_instance_refuses_moves_at_once() -> None:
    logic, clock = quick()
    run = first_run(logic, clock)
    (moved,) = logic.run_refused(run.instance_id, run.request_id).runs
    assert moved.instance_id != run.instance_id and run.request_id not in logic.outstanding
    assert logic.run_refused("i0", "no-such-run") == Actions()


def test_results_are_judged_against_the_instance_bound_at_hello() -> None:
    logic, clock = quick()
    logic.upsert_monitor(MonitorSpec("lab-web", "lab", 60.0, QUICK))
    run = first_run(logic, clock)
    me, other = run.instance_id, ("i1" if run.instance_id == "i0" else "i0")

    def check(**fields: Any) -> Any:
        values = {
            "instance_id": me,
            "monitor_id": "m0",
            "request_id": None,
            "reason": "scheduled",
            **fields,
        }
        return logic.check_result(me, "cp", **values)

    assert check() == "act"  # its own schedule
    assert check(request_id=run.request_id) == "act"  # the run sent to it
    assert check(request_id="not-outstanding") == "lookup"
    refusals = {
        "instance_id": check(instance_id=other),
        "monitor_id": check(monitor_id="lab-web"),
        "request_id": check(reason="confirm"),
    }
    for field, verdict in refusals.items():
        assert isinstance(verdict, Refusal) and verdict.field == field, verdict
    assert isinstance(check(monitor_id="nope"), Refusal)
    assert isinstance(check(reason="adhoc"), Refusal)
    assert logic.check_result(other, "cp", other, "m0", run.request_id, "scheduled") == Refusal(
        "request_id",
        "a run sent elsewhere",
        f"{run.request_id!r} is not a run sent to this instance",
    )
    assert isinstance(check(request_id=run.request_id, reason="confirm"), Refusal)
    recorded = (me, "m0", "scheduled")
    assert logic.check_recorded(me, "r", recorded, "m0", "scheduled") == "late"
    assert isinstance(logic.check_recorded(other, "r", recorded, "m0", "scheduled"), Refusal)
    assert isinstance(logic.check_recorded(me, "r", None, "m0", "scheduled"), Refusal)


def test_a_confirm_result_without_its_run_opens_no_alert() -> None:
    logic, clock = quick()
    run = first_run(logic, clock)
    acts = logic.on_result("m0", run.instance_id, run.request_id, "scheduled", Status.DOWN)
    (confirm,) = acts.runs
    assert logic.on_result("m0", confirm.instance_id, None, "confirm", Status.DOWN).events == []
    assert logic.monitors["m0"].alert is None


def test_events_carry_wall_clock_times_and_unique_ids() -> None:
    logic, clock = quick()
    run = first_run(logic, clock)
    (confirm,) = logic.on_result(
        "m0", run.instance_id, run.request_id, "scheduled", Status.DOWN
    ).runs
    (event,) = logic.on_result(
        "m0", confirm.instance_id, confirm.request_id, "confirm", Status.DOWN
    ).events
    assert event.at == clock.now().timestamp()
    assert event.alert is not None and event.alert.opened_at == event.at
    assert len({run.request_id, confirm.request_id, event.alert.alert_id}) == 3


def test_an_alert_restored_after_a_restart_stays_open_and_resolves_on_recovery() -> None:
    logic, clock = quick()
    run = first_run(logic, clock)
    (confirm,) = logic.on_result(
        "m0", run.instance_id, run.request_id, "scheduled", Status.DOWN
    ).runs
    (opened,) = logic.on_result(
        "m0", confirm.instance_id, confirm.request_id, "confirm", Status.DOWN
    ).events
    assert opened.alert is not None
    # A new logic, as after a restart, given the alert back from the database.
    again, clock = quick()
    again.configure_checkpoints(["cp"])
    assert again.restore_alert(opened.alert) == Actions()
    assert again.on_result("m0", "i0", None, "scheduled", Status.DOWN) == Actions()
    (resolved,) = again.on_result("m0", "i0", None, "scheduled", Status.UP).events
    assert resolved.kind == "alert_resolved" and resolved.alert == opened.alert
    # An alert whose subject is gone resolves at once.
    gone = Alert("a-1", "monitor_down", "removed-monitor", 0.0, "removed-monitor is down")
    assert [e.kind for e in again.restore_alert(gone).events] == ["alert_resolved"]
    unconfigured = Alert("a-2", "checkpoint_down", "old", 0.0, "checkpoint old is down")
    assert [e.kind for e in again.restore_alert(unconfigured).events] == ["alert_resolved"]


def test_a_configured_checkpoint_never_seen_is_down_once_after_the_threshold() -> None:
    clock = FakeClock()
    logic = ControlLogic(clock, heartbeat_interval=HB, startup_grace=20.0)
    logic.configure_checkpoints(["office", "lab"], {"office": 1.7e9})
    opened: list[Event] = []
    for _ in range(19):
        clock.advance(1)
        opened += logic.tick().events
    assert opened == []  # neither the threshold (15 s) nor the startup grace (20 s) passed
    for _ in range(60):
        clock.advance(1)
        opened += logic.tick().events
    assert sorted(e.subject for e in opened) == ["lab", "office"]
    assert all(e.kind == "alert_opened" for e in opened)
    messages = {e.subject: e.message for e in opened}
    assert "never seen" in messages["lab"] and "last seen 2023-11-14" in messages["office"]
    (back,) = logic.instance_connected("lab-a", "lab").events
    assert back.kind == "alert_resolved" and back.subject == "lab"


def test_removing_a_monitor_resolves_its_open_alerts() -> None:
    logic, clock = quick()
    run = first_run(logic, clock)
    (confirm,) = logic.on_result(
        "m0", run.instance_id, run.request_id, "scheduled", Status.DOWN
    ).runs
    logic.on_result("m0", confirm.instance_id, confirm.request_id, "confirm", Status.DOWN)
    (resolved,) = logic.remove_monitor("m0").events
    assert resolved.kind == "alert_resolved" and "removed" in resolved.message


def test_ids_are_uuid7_and_increase_even_when_the_clock_does_not() -> None:
    now = [1_700_000_000_000_000_000]
    make_id = IdGenerator(lambda: now[0])
    ids = [make_id() for _ in range(5000)]  # more than 4096 in one millisecond
    now[0] -= 10_000_000_000  # and the clock steps back
    ids += [make_id() for _ in range(10)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == 1_700_000_000_000  # the Unix time in milliseconds comes first
