"""The control plane's decisions, driven by a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from probekit import FakeClock, Status
from probekit.control._logic import Actions, ControlLogic, MonitorSpec, RunOrder, flap_percent

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
