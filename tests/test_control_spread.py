"""Many instances per checkpoint: ``assignment = "spread"`` (rendezvous hashing), driven by a
fake clock through the control plane's logic: no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
from websockets.exceptions import ConnectionClosed

from probekit import DefinitionError, DefinitionErrors, FakeClock, Secret, Status
from probekit import protocol as p
from probekit.control import ControlPlane, ControlSettings, MemorySink
from probekit.control._config import load_control_config
from probekit.control._logic import (
    ControlLogic,
    MonitorSpec,
    RunOrder,
    rendezvous_rank,
    rendezvous_weight,
)
from test_control import DEF, TOKEN, FakeInstance, join

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

    def step(self, seconds: int) -> None:
        for _ in range(seconds):
            self.clock.advance(1)
            now = self.clock.monotonic()
            if int(now) % int(HB) == 0:
                for instance in sorted(self.alive | self.hung):
                    self.logic.heartbeat(instance)
            self.send(now, self.logic.tick().runs)
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
        self.results.setdefault(order.monitor_id, []).append((now, order.instance_id, order.reason))
        if order.reason == "scheduled":
            self.owner[order.monitor_id] = order.instance_id
        if down:
            if order.reason == "scheduled":
                self.round[order.monitor_id] = set()
            self.round.setdefault(order.monitor_id, set()).add(order.instance_id)
        self.send(now, acts.runs)

    def join(self, instance: str, kinds: tuple[str, ...] | None = None) -> None:
        self.logic.instance_connected(instance, "cp", kinds)
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
