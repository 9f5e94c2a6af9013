"""Many instances per checkpoint: ``assignment = "spread"`` (rendezvous hashing), driven by a
fake clock through the control plane's logic: no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
from websockets.exceptions import ConnectionClosed

from probekit import DefinitionError, DefinitionErrors, FakeClock, Secret, Status
from probekit import protocol as p
from probekit.control import ControlPlane, ControlSettings, MaintenanceWindow, MemorySink
from probekit.control._config import load_control_config
from probekit.control._logic import (
    ControlLogic,
    Event,
    MonitorSpec,
    RunOrder,
    SitePolicy,
    parse_alert_when,
    rendezvous_rank,
    rendezvous_weight,
)
from test_control import DEF, TOKEN, FakeInstance, join

pytestmark = pytest.mark.usefixtures("control_store")

HB = 5.0
GRACE = 2.0
INTERVAL = 30.0
DEADLINE = 5.0
#: The longest a monitor may go without a result while instances come and go: a run missed by
#: an instance that died is moved at the latest when its deadline plus the grace has passed.
MAX_GAP = INTERVAL + DEADLINE + GRACE
DEFINITION: dict[str, Any] = {
    "kind": "tcp",
    "host": "h",
    "port": 1,
    "timeouts": {"total": DEADLINE},
}
MONITORS = 400
#: Seconds a run takes.
LATENCY = 2
FOUR = ("i0", "i1", "i2", "i3")


@attrs.define
class Sim:
    """A checkpoint's instances around one :class:`ControlLogic`, one simulated second a step.

    ``alive`` instances heartbeat and answer each run ``LATENCY`` seconds after it is sent (unless
    they die first: the answer is lost); ``hung`` ones heartbeat and answer
    nothing; any other instance is dead (silent). Monitors in ``failing`` report DOWN."""

    logic: ControlLogic
    clock: FakeClock
    alive: set[str]
    hung: set[str] = attrs.Factory(set)
    failing: set[str] = attrs.Factory(set)
    #: monitor -> [(monotonic time, instance, reason)] of every result
    results: dict[str, list[tuple[float, str, str]]] = attrs.Factory(dict)
    #: monitor -> instance of its latest scheduled result
    owner: dict[str, str] = attrs.Factory(dict)
    #: every confirm run sent, with the instances that had failed its monitor in the round
    confirms: list[tuple[RunOrder, frozenset[str]]] = attrs.Factory(list)
    #: every run sent, with the monotonic time
    sent: list[tuple[float, RunOrder]] = attrs.Factory(list)
    #: monitor -> instances that reported its current failure round
    round: dict[str, set[str]] = attrs.Factory(dict)
    #: runs being run: (when the answer arrives, order)
    inflight: list[tuple[float, RunOrder]] = attrs.Factory(list)
    events: list[Event] = attrs.Factory(list)

    def step(self, seconds: int) -> None:
        for _ in range(seconds):
            self.clock.advance(1)
            now = self.clock.monotonic()
            if int(now) % int(HB) == 0:
                for instance in sorted(self.alive | self.hung):
                    self.logic.heartbeat(instance)
            acts = self.logic.tick()
            self.events += acts.events
            self.send(now, acts.runs)
            due = [(t, o) for t, o in self.inflight if t <= now]
            self.inflight = [(t, o) for t, o in self.inflight if t > now]
            for _t, order in due:
                self.answer(now, order)

    def send(self, now: float, orders: list[RunOrder]) -> None:
        for order in orders:
            self.sent.append((now, order))
            if order.reason == "confirm":
                failed = frozenset(self.round.get(order.monitor_id, set()))
                self.confirms.append((order, failed))
            if order.instance_id in self.alive:
                self.inflight.append((now + LATENCY, order))

    def answer(self, now: float, order: RunOrder) -> None:
        down = order.monitor_id in self.failing
        acts = self.logic.on_result(
            order.monitor_id,
            order.instance_id,
            order.request_id,
            order.reason,
            Status.DOWN if down else Status.UP,
        )
        self.events += acts.events
        self.results.setdefault(order.monitor_id, []).append((now, order.instance_id, order.reason))
        if order.reason == "scheduled":
            self.owner[order.monitor_id] = order.instance_id
        if down:
            if order.reason == "scheduled":
                self.round[order.monitor_id] = set()
            self.round.setdefault(order.monitor_id, set()).add(order.instance_id)
        self.send(now, acts.runs)

    def join(
        self, instance: str, kinds: tuple[str, ...] | None = None, checkpoint: str = "cp"
    ) -> None:
        self.logic.instance_connected(instance, checkpoint, kinds)
        self.alive.add(instance)

    def kill(self, instance: str, *, closed: bool) -> None:
        """Dead: no heartbeat, no answer; ``closed`` when its connection is seen to close."""
        self.alive.discard(instance)
        self.inflight = [(t, o) for t, o in self.inflight if o.instance_id != instance]
        if closed:
            self.logic.instance_disconnected(instance)

    def gaps(self, since: float = 0.0) -> list[tuple[str, float]]:
        """(monitor, seconds) between consecutive results of each monitor after ``since``."""
        out: list[tuple[str, float]] = []
        for monitor, rows in self.results.items():
            times = [t for t, _i, _r in rows if t >= since]
            out.extend((monitor, b - a) for a, b in itertools.pairwise(times))
        return out


def make(instances: tuple[str, ...] = FOUR, monitors: int = MONITORS, **extra: Any) -> Sim:
    clock = FakeClock()
    logic = ControlLogic(
        clock,
        heartbeat_interval=HB,
        grace=GRACE,
        rng=random.Random(5),
        assignment="spread",
        **extra,
    )
    sim = Sim(logic, clock, set())
    for instance in instances:
        sim.join(instance)
    for m in range(monitors):
        logic.upsert_monitor(MonitorSpec(f"m{m}", "cp", INTERVAL, DEFINITION))
    return sim


def test_rendezvous_weight_is_stable_and_depends_on_both_ids() -> None:
    assert rendezvous_weight("m1", "i0") == rendezvous_weight("m1", "i0")
    assert rendezvous_weight("m1", "i0") != rendezvous_weight("m1", "i1")
    assert rendezvous_weight("m1", "i0") != rendezvous_weight("m2", "i0")
    # a fixed value: the order must not change between processes or releases
    assert rendezvous_weight("m1", "i0") == 0xBEA23350C8FADF3F
    assert rendezvous_rank("m1", ["i2", "i0", "i1"]) == rendezvous_rank("m1", ["i1", "i2", "i0"])


def test_four_instances_share_the_monitors_and_each_stays_put() -> None:
    sim = make()
    sim.step(int(INTERVAL) + LATENCY)  # every monitor ran once
    share = Counter(sim.owner.values())
    assert len(sim.owner) == MONITORS and set(share) == set(FOUR)
    for instance, count in share.items():
        assert 0.18 * MONITORS <= count <= 0.32 * MONITORS, (instance, share)
    first = dict(sim.owner)
    sim.step(10 * int(INTERVAL))
    for monitor, rows in sim.results.items():
        assert {i for _t, i, r in rows if r == "scheduled"} == {first[monitor]}, monitor
        assert first[monitor] == rendezvous_rank(monitor, FOUR)[0]
    assert all(len(rows) >= 10 for rows in sim.results.values())
    assert max(gap for _m, gap in sim.gaps()) <= INTERVAL


def test_an_adhoc_run_goes_to_the_monitors_own_instance_under_spread() -> None:
    """ControlPlane.run_now without an instance asks ``pick``: the monitor's rendezvous first."""
    sim = make()
    for m in range(20):
        monitor = f"m{m}"
        assert sim.logic.pick("cp", "tcp", monitor) == rendezvous_rank(monitor, FOUR)[0]
    sim.kill("i0", closed=True)
    rest = ("i1", "i2", "i3")
    for m in range(20):
        monitor = f"m{m}"
        assert sim.logic.pick("cp", "tcp", monitor) == rendezvous_rank(monitor, rest)[0]
    assert sim.logic.pick("other", "tcp", "m0") is None  # no instance of that checkpoint


@pytest.mark.parametrize("closed", [False, True], ids=["silent", "connection-closed"])
def test_one_killed_mid_run_moves_only_its_monitors_without_long_gaps(closed: bool) -> None:
    sim = make()
    sim.step(3 * int(INTERVAL))
    before = dict(sim.owner)
    victims = {m for m, i in before.items() if i == "i2"}
    sim.step(13)  # mid-interval: some of i2's runs are in flight, some due later
    killed_at = sim.clock.monotonic()
    sim.kill("i2", closed=closed)
    sim.step(4 * int(INTERVAL))
    after = dict(sim.owner)
    moved = {m for m in before if after[m] != before[m]}
    assert moved == victims
    assert all(after[m] in {"i0", "i1", "i3"} for m in victims)
    # each moved to its next instance in its own order, so they spread over the other three
    assert all(after[m] == rendezvous_rank(m, ("i0", "i1", "i3"))[0] for m in victims)
    assert set(Counter(after[m] for m in victims)) == {"i0", "i1", "i3"}
    gaps = sim.gaps()
    longest = max(gap for _m, gap in gaps)
    assert longest <= MAX_GAP, longest
    late = {m for m, gap in gaps if gap > INTERVAL}
    assert late and late <= victims  # only the dead instance's monitors waited
    # nothing is sent to it once it is known to be gone: at once when its connection closed,
    # else once its heartbeat is late by more than the grace
    known = killed_at if closed else killed_at + HB + GRACE + 1
    assert not [o for t, o in sim.sent if o.instance_id == "i2" and t > known]
    # the dead instance's return takes back exactly its monitors
    sim.join("i2")
    sim.step(2 * int(INTERVAL))
    assert {m for m, i in sim.owner.items() if i == "i2"} == victims


def test_one_added_takes_about_a_quarter_and_the_rest_stay() -> None:
    sim = make(("i0", "i1", "i2"))
    sim.step(2 * int(INTERVAL))
    before = dict(sim.owner)
    sim.step(11)
    sim.join("i3")
    sim.step(2 * int(INTERVAL))
    after = dict(sim.owner)
    moved = {m for m in before if after[m] != before[m]}
    assert all(after[m] == "i3" for m in moved)  # nothing moves between the old three
    assert 0.18 * MONITORS <= len(moved) <= 0.32 * MONITORS, len(moved)
    assert max(gap for _m, gap in sim.gaps()) <= INTERVAL  # a join costs no run


def test_confirmations_always_on_another_instance() -> None:
    sim = make(confirmations=2)
    sim.failing = {f"m{m}" for m in range(0, MONITORS, 7)}
    sim.step(2 * int(INTERVAL))
    sim.kill("i1", closed=False)
    sim.step(2 * int(INTERVAL))
    sim.join("i4")
    sim.step(2 * int(INTERVAL))
    assert len(sim.confirms) >= 2 * len(sim.failing)
    for order, failed in sim.confirms:
        assert failed and order.instance_id not in failed, (order, failed)
    # the first confirmation goes to the monitor's second instance in its order
    sim2 = make()
    sim2.failing = {"m3"}
    sim2.step(int(INTERVAL) + LATENCY)
    (first, _failed), *_ = sim2.confirms
    assert first.instance_id == rendezvous_rank("m3", FOUR)[1]


def test_an_unanswered_run_moves_to_another_live_instance() -> None:
    sim = make(monitors=40)
    sim.step(int(INTERVAL) + LATENCY)
    hung = {m for m, i in sim.owner.items() if i == "i3"}
    assert len(hung) > sim.logic.unanswered_limit
    sim.alive.discard("i3")
    stuck = [o for _t, o in sim.inflight if o.instance_id == "i3"]  # never answered either
    sim.inflight = [(t, o) for t, o in sim.inflight if o.instance_id != "i3"]
    sim.hung.add("i3")  # heartbeats, answers nothing
    began = len(sim.sent)
    sim.step(4 * int(INTERVAL))
    # its first runs go unanswered and move, each to the monitor's next instance; then it is
    # cut, and its monitors go straight to their next instances
    moved = [o for _t, o in sim.sent[began:] if o.monitor_id in hung and o.instance_id != "i3"]
    assert {o.monitor_id for o in moved} == hung
    assert all(o.instance_id == rendezvous_rank(o.monitor_id, FOUR)[1] for o in moved)
    to_hung = [o for _t, o in sim.sent[began:] if o.instance_id == "i3"]
    assert len(to_hung) >= sim.logic.unanswered_limit  # (then it is cut and sent nothing)
    assert sim.logic.reassigned == len(stuck) + len(to_hung) and sim.logic.cut == 1
    assert max(gap for _m, gap in sim.gaps()) <= MAX_GAP


def test_kinds_spread_only_over_the_instances_that_list_them() -> None:
    sim = make(instances=(), monitors=0)
    for instance in FOUR:
        sim.join(instance, ("tcp", "dns") if instance in ("i1", "i2") else ("tcp",))
    dns = {"kind": "dns", "name": "example.com", "timeouts": {"total": DEADLINE}}
    for m in range(100):
        sim.logic.upsert_monitor(MonitorSpec(f"d{m}", "cp", INTERVAL, dns))
        sim.logic.upsert_monitor(MonitorSpec(f"t{m}", "cp", INTERVAL, DEFINITION))
    sim.step(int(INTERVAL))
    dns_share = Counter(i for m, i in sim.owner.items() if m.startswith("d"))
    tcp_share = Counter(i for m, i in sim.owner.items() if m.startswith("t"))
    assert set(dns_share) == {"i1", "i2"} and min(dns_share.values()) >= 30
    assert set(tcp_share) == set(FOUR) and min(tcp_share.values()) >= 12


def test_alternate_stays_the_default_and_a_bad_assignment_is_refused() -> None:
    assert ControlLogic(FakeClock()).assignment == "alternate"
    with pytest.raises(ValueError, match="assignment"):
        ControlLogic(FakeClock(), assignment="round-robin")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="assignment"):
        ControlSettings(tokens={}, assignment="nope")  # type: ignore[arg-type]


CONFIG = """
[control]
port = 0
db = ":memory:"
{extra}

[[checkpoints]]
id = "office"
token = {{ env = "S_TOKEN" }}

[[monitors]]
id = "web"
checkpoint = "office"
kind = "tcp"
host = "127.0.0.1"
port = 1
"""


def test_the_config_file_sets_the_assignment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S_TOKEN", "a-token-of-enough-length-0123456789")
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(extra='assignment = "spread"'))
    assert load_control_config(path).settings.assignment == "spread"
    path.write_text(CONFIG.format(extra=""))
    assert load_control_config(path).settings.assignment == "alternate"
    path.write_text(CONFIG.format(extra='assignment = "hash"'))
    with pytest.raises(DefinitionErrors, match=r"control\.assignment: expected one of"):
        load_control_config(path)


async def test_the_control_plane_passes_the_assignment_on_and_changes_it_live() -> None:
    settings = ControlSettings(
        tokens={"office": Secret("a-token-of-enough-length-0123456789")},
        assignment="spread",
        prune_interval=3600.0,
    )
    async with ControlPlane(settings, sinks=[MemorySink()]) as cp:
        before = cp.logic.assignment
        outcome = await cp.reconfigure(attrs.evolve(settings, assignment="alternate"))
        assert before == "spread"
        assert outcome.applied == ("assignment",) and cp.logic.assignment == "alternate"


async def test_spread_over_four_connected_instances_end_to_end() -> None:
    """Over the WebSocket: four fake instances answer every run; each monitor's runs go to its
    rendezvous instance; one instance's connection closes and only its monitors move."""
    settings = ControlSettings(
        tokens={"office": Secret(TOKEN)},
        heartbeat_interval=0.2,
        tick_interval=0.02,
        assignment="spread",
        prune_interval=3600.0,
    )
    ids = ("a", "b", "c", "d")
    monitors = [f"w{n}" for n in range(12)]
    async with ControlPlane(settings, sinks=[MemorySink()]) as cp:
        instances = {i: await join(cp, i) for i in ids}
        for inst in instances.values():
            await inst.expect(p.Sync)
        got: asyncio.Queue[tuple[str, p.Run]] = asyncio.Queue()

        async def pump(inst: FakeInstance) -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    run = await inst.expect(p.Run, timeout=60)
                    await got.put((inst.instance_id, run))
                    await inst.result(run, Status.UP)

        tasks = [asyncio.create_task(pump(inst)) for inst in instances.values()]
        tasks += [asyncio.create_task(inst.beat(0.05)) for inst in instances.values()]
        try:
            for monitor in monitors:
                await cp.add_monitor(monitor, "office", DEF, interval=0.1)

            async def runs_of_each(times: int) -> dict[str, set[str]]:
                seen: dict[str, list[str]] = {m: [] for m in monitors}
                async with asyncio.timeout(30):  # a hang guard, not a timing assertion
                    while min(len(v) for v in seen.values()) < times:
                        instance_id, run = await got.get()
                        assert run.reason == "scheduled"
                        assert run.monitor_id is not None
                        seen[run.monitor_id].append(instance_id)
                return {m: set(v) for m, v in seen.items()}

            first = await runs_of_each(4)
            assert first == {m: {rendezvous_rank(m, ids)[0]} for m in monitors}
            assert len({i for s in first.values() for i in s}) >= 3  # (spread, not one)
            leaver = max(ids, key=lambda i: sum(first[m] == {i} for m in monitors))
            await instances[leaver].conn.close()
            async with asyncio.timeout(30):
                while leaver in cp.connected:  # noqa: ASYNC110 - no event to wait on
                    await asyncio.sleep(0.02)
            while not got.empty():
                got.get_nowait()
            rest = tuple(i for i in ids if i != leaver)
            after = await runs_of_each(4)
            assert after == {m: {rendezvous_rank(m, rest)[0]} for m in monitors}
            assert {m for m in monitors if after[m] != first[m]} == {
                m for m in monitors if first[m] == {leaver}
            }
        finally:
            for task in tasks:
                task.cancel()
            for inst in instances.values():
                await inst.conn.close()


# -- a monitor on several checkpoints ------------------------------------------------------------

SITES = ("a", "b", "c")


def sites(alert_when: str = "2 of 3", **extra: Any) -> Sim:
    """Three checkpoints of two instances each (a0 a1, b0 b1, c0 c1); the monitor ``web`` runs
    from each as ``web@a``, ``web@b``, ``web@c``."""
    sim = make(instances=(), monitors=0, **extra)
    for site in SITES:
        for n in (0, 1):
            sim.join(f"{site}{n}", checkpoint=site)
        sim.logic.upsert_monitor(MonitorSpec(f"web@{site}", site, INTERVAL, DEFINITION))
    locations = tuple(f"web@{site}" for site in SITES)
    sim.logic.set_sites(SitePolicy("web", locations, parse_alert_when(alert_when, 3)))
    return sim


def alerts(sim: Sim, kind: str) -> list[Event]:
    return [
        e
        for e in sim.events
        if e.kind == kind and e.alert is not None and e.alert.kind == "monitor_down"
    ]


def test_one_checkpoint_cut_off_from_the_target_confirms_on_its_own_second_instance() -> None:
    sim = sites("2 of 3")
    sim.failing = {"web@b"}  # checkpoint b cannot reach the target; a and c can
    sim.step(4 * int(INTERVAL))
    assert sim.confirms and all(o.monitor_id == "web@b" for o, _f in sim.confirms)
    for order, failed in sim.confirms:  # on b's other instance, never another checkpoint's
        assert order.instance_id in {"b0", "b1"} and order.instance_id not in failed
    assert sim.logic.sites["web"].down.keys() == {"web@b"}
    assert alerts(sim, "alert_opened") == []  # one location of three: no alert
    checkpoints = {i[0] for rows in sim.results.values() for _t, i, _r in rows}
    assert checkpoints == set(SITES)  # each result came from (and names) its checkpoint
    sim.failing = {"web@a", "web@b", "web@c"}  # now the target is down
    sim.step(2 * int(INTERVAL))
    (opened,) = alerts(sim, "alert_opened")
    assert opened.subject == "web" and "of 3 checkpoints" in opened.message
    assert len(sim.logic.sites["web"].down) == 3
    assert [a.subject for a in sim.logic.open_alerts()] == ["web"]
    sim.failing = {"web@b"}  # the target is back; b is still cut off from it
    sim.step(2 * int(INTERVAL))
    (resolved,) = alerts(sim, "alert_resolved")
    assert resolved.alert is opened.alert and sim.logic.open_alerts() == []
    assert sim.logic.sites["web"].down.keys() == {"web@b"}


@pytest.mark.parametrize(("alert_when", "alerted"), [("2 of 3", True), ("3 of 3", False)])
def test_a_checkpoint_cut_off_from_the_control_plane(alert_when: str, alerted: bool) -> None:
    sim = sites(alert_when)
    sim.step(int(INTERVAL))
    sim.kill("c0", closed=False)
    sim.kill("c1", closed=False)  # checkpoint c is silent: no results from it at all
    sim.step(int(INTERVAL))
    down = [e for e in sim.events if e.kind == "alert_opened" and e.subject == "c"]
    assert len(down) == 1 and down[0].alert is not None
    assert down[0].alert.kind == "checkpoint_down"
    sim.failing = {"web@a", "web@b", "web@c"}
    sim.step(3 * int(INTERVAL))
    assert sim.logic.sites["web"].down.keys() == {"web@a", "web@b"}
    opened = alerts(sim, "alert_opened")
    # a silent checkpoint counts as not failing: "3 of 3" cannot be met without it
    assert [e.subject for e in opened] == (["web"] if alerted else [])


def test_one_of_three_alerts_on_the_first_location_confirmed_down() -> None:
    sim = sites("1 of 3", confirmations=1)
    sim.failing = {"web@c"}
    sim.step(2 * int(INTERVAL))
    (opened,) = alerts(sim, "alert_opened")
    assert opened.subject == "web" and "c: web@c is down" in opened.message
    (confirm, failed), *_ = sim.confirms
    assert confirm.instance_id in {"c0", "c1"} and confirm.instance_id not in failed


def test_alert_when_and_site_policies_are_checked() -> None:
    assert parse_alert_when("2 of 3", 3) == 2 and parse_alert_when(1, 2) == 1
    for bad, why in [
        ("2 of 4", "from 3 checkpoints, not 4"),
        ("4 of 3", "between 1 and 3"),
        ("0 of 3", "between 1 and 3"),
        ("two of three", "K of N"),
        (True, "K of N"),
        (5, "between 1 and 3"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_alert_when(bad, 3)
    sim = sites()
    logic = sim.logic
    with pytest.raises(ValueError, match="distinct"):
        logic.set_sites(SitePolicy("x", ("web@a", "web@a"), 1))
    with pytest.raises(ValueError, match="already a location of web"):
        logic.set_sites(SitePolicy("x", ("web@a",), 1))
    with pytest.raises(ValueError, match="min_failing"):
        logic.set_sites(SitePolicy("web", ("web@a", "web@b"), 3))
    with pytest.raises(ValueError, match="already a location"):
        logic.set_sites(SitePolicy("web@a", ("q",), 1))
    logic.upsert_monitor(MonitorSpec("plain", "a", INTERVAL, DEFINITION))
    with pytest.raises(ValueError, match="already the id of a monitor"):
        logic.set_sites(SitePolicy("plain", ("q",), 1))


def test_a_site_alert_survives_a_restart_and_resolves_when_removed() -> None:
    sim = sites("2 of 3")
    sim.failing = {"web@a", "web@b", "web@c"}
    sim.step(2 * int(INTERVAL))
    (opened,) = alerts(sim, "alert_opened")
    assert opened.alert is not None
    again = sites("2 of 3")
    assert again.logic.restore_alert(opened.alert).events == []
    assert again.logic.open_alerts() == [opened.alert]
    (resolved,) = again.logic.remove_sites("web").events
    assert resolved.kind == "alert_resolved" and resolved.alert is opened.alert
    # a lower bar applied live opens nothing by itself; a higher one resolves
    sim.logic.set_sites(SitePolicy("web", ("web@a", "web@b", "web@c"), 3))
    assert sim.logic.open_alerts() == [opened.alert]
    sim.failing = {"web@a"}
    sim.step(2 * int(INTERVAL))
    (resolved,) = alerts(sim, "alert_resolved")
    assert resolved.alert is opened.alert


SITES_CONFIG = """
[control]
port = 0
db = ":memory:"

[[checkpoints]]
id = "office"
token = {{ env = "S_TOKEN" }}

[[checkpoints]]
id = "cloud"
token = {{ env = "S_TOKEN2" }}

[[checkpoints]]
id = "dc2"
token = {{ env = "S_TOKEN3" }}

[[monitors]]
id = "web"
{where}
interval = 30
kind = "tcp"
host = "127.0.0.1"
port = 1
"""


def test_the_config_file_puts_a_monitor_on_several_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n, var in enumerate(("S_TOKEN", "S_TOKEN2", "S_TOKEN3")):
        monkeypatch.setenv(var, f"a-token-of-enough-length-{n}123456789")
    path = tmp_path / "c.toml"
    path.write_text(
        SITES_CONFIG.format(where='checkpoints = ["office", "cloud", "dc2"]\nalert_when = "2 of 3"')
    )
    config = load_control_config(path)
    assert [(m.monitor_id, m.checkpoint_id) for m in config.monitors] == [
        ("web@office", "office"),
        ("web@cloud", "cloud"),
        ("web@dc2", "dc2"),
    ]
    assert all(m.interval == 30 and m.definition["kind"] == "tcp" for m in config.monitors)
    assert config.sites == (SitePolicy("web", ("web@office", "web@cloud", "web@dc2"), 2),)
    path.write_text(SITES_CONFIG.format(where='checkpoints = ["office", "cloud"]'))
    assert load_control_config(path).sites[0].min_failing == 1  # the default: "1 of N"
    path.write_text(SITES_CONFIG.format(where='checkpoint = "office"\nalert_when = "1 of 1"'))
    single = load_control_config(path)
    assert single.sites == () and [m.monitor_id for m in single.monitors] == ["web"]
    for where, error in [
        ('checkpoints = ["office", "cloud"]\nalert_when = "2 of 3"', "not 3"),
        ('checkpoints = ["office", "moon"]', "no [[checkpoints]] table has the id 'moon'"),
        ('checkpoints = ["office", "office"]', "distinct checkpoint ids"),
        ("checkpoints = []", "distinct checkpoint ids"),
        ('checkpoint = "office"\ncheckpoints = ["cloud"]', "not both"),
        ('checkpoint = "office"\nalert_when = "2 of 3"', "from 1 checkpoints, not 3"),
        ('checkpoints = ["office", "dc2"]\nalert_when = "most"', "K of N"),
    ]:
        path.write_text(SITES_CONFIG.format(where=where))
        with pytest.raises(DefinitionErrors, match=r"monitors\[0\]") as info:
            load_control_config(path)
        assert error in str(info.value), (where, str(info.value))


async def test_a_site_alert_is_kept_across_a_restart(tmp_path: Path) -> None:
    policy = SitePolicy("web", ("web@a", "web@b"), 1)
    settings = ControlSettings(
        tokens={"a": Secret(TOKEN), "b": Secret(TOKEN + "-b")},
        db_path=str(tmp_path / "cp.db"),
        confirmations=0,
        prune_interval=3600.0,
    )
    sink = MemorySink()
    async with ControlPlane(settings, sinks=[sink], sites=[policy]) as cp:
        assert cp.sites == {"web": policy}
        await cp.add_monitor("web@a", "a", DEF, interval=60)
        await cp.add_monitor("web@b", "b", DEF, interval=60)
        await cp._dispatch(cp.logic.on_result("web@a", "a0", None, "scheduled", Status.DOWN))
        (opened,) = cp.logic.open_alerts()
        assert (opened.subject, opened.kind) == ("web", "monitor_down")
    window = MaintenanceWindow("w", monitors=["web"], end=time.time() + 3600)
    async with ControlPlane(settings, sinks=[sink], sites=[policy], maintenance=[window]) as cp:
        assert cp.logic.open_alerts() == [opened]  # taken back, not resolved and opened again
        assert cp.in_maintenance("web") is window  # a window for the monitor holds its alert
    async with ControlPlane(settings, sinks=[sink], sites=[policy]) as cp:
        assert cp.logic.open_alerts() == [opened]
        await cp.remove_sites("web")
        assert cp.logic.open_alerts() == [] and cp.sites == {}
    resolved = [e for e in sink.events if e.kind == "alert_resolved"]
    assert [e.alert.alert_id for e in resolved if e.alert] == [opened.alert_id]
    with pytest.raises(DefinitionError, match=r"sites\.x: .*between 1 and 1"):
        ControlPlane(settings, sites=[SitePolicy("x", ("y",), 2)])


async def test_a_site_policy_set_through_the_api_is_stored_and_taken_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = SitePolicy("web", ("web@a", "web@b"), 2)
    settings = ControlSettings(
        tokens={"a": Secret(TOKEN), "b": Secret(TOKEN + "-b")},
        db_path=str(tmp_path / "cp.db"),
        confirmations=0,
        prune_interval=3600.0,
    )
    sink = MemorySink()
    async with ControlPlane(settings, sinks=[sink]) as cp:
        await cp.add_monitor("web@a", "a", DEF, interval=60)
        await cp.add_monitor("web@b", "b", DEF, interval=60)
        await cp.set_sites(policy)  # through the API: no constructor argument
        for location, instance in (("web@a", "a0"), ("web@b", "b0")):
            await cp._dispatch(
                cp.logic.on_result(location, instance, None, "scheduled", Status.DOWN)
            )
        (opened,) = cp.logic.open_alerts()
        assert (opened.subject, opened.kind) == ("web", "monitor_down")
    async with ControlPlane(settings, sinks=[sink]) as cp:
        assert cp.sites == {"web": policy}  # taken back from the database
        assert cp.logic.open_alerts() == [opened]  # and its alert with it, not resolved
        given = SitePolicy("web", ("web@a", "web@b"), 1)
    async with ControlPlane(settings, sinks=[sink], sites=[given]) as cp:
        assert cp.sites == {"web": given}  # the constructor's wins ...
    async with ControlPlane(settings, sinks=[sink]) as cp:
        assert cp.sites == {"web": given}  # ... and is stored
        await cp.remove_sites("web")
    async with ControlPlane(settings, sinks=[sink]) as cp:
        assert cp.sites == {}  # removal is stored too
        await cp.set_sites(SitePolicy("api", ("web@a",), 1))
    caplog.set_level(logging.WARNING, logger="probekit.control")
    other = SitePolicy("web", ("web@a", "web@b"), 1)
    async with ControlPlane(settings, sinks=[sink], sites=[other]) as cp:
        # "api" lists web@a, which "web" (given) holds now: not taken back, and said why
        assert cp.sites == {"web": other}
    assert "a stored site policy no longer holds; not taken back: sites.api" in caplog.text
    resolved = [e for e in sink.events if e.kind == "alert_resolved"]
    assert [e.alert.alert_id for e in resolved if e.alert] == [opened.alert_id]
