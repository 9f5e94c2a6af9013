"""The control plane over real WebSockets, with scripted fake instances speaking the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from probekit import DefinitionError, EgressPolicy, Result, Secret, Status, result_from_json
from probekit import protocol as p
from probekit.control import ControlPlane, ControlSettings, MemorySink, WebhookSink, split_sync
from probekit.control._logic import Event
from servers import HttpServer, serving

pytestmark = pytest.mark.usefixtures("control_store")

TOKEN = "cp-token-canary-7#q"
DEF = {"kind": "tcp", "host": "127.0.0.1", "port": 9}


class FakeInstance:
    def __init__(self, conn: ClientConnection, instance_id: str) -> None:
        self.conn = conn
        self.instance_id = instance_id
        self.inbox: asyncio.Queue[p.Message] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.conn:
                await self.inbox.put(p.decode(frame))

    async def expect(self, kind: type[p.Message], timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.inbox.get()
                if isinstance(message, kind):
                    return message

    async def send(self, message: p.Message) -> None:
        await self.conn.send(p.encode(message))

    async def heartbeat(self) -> None:
        await self.send(
            p.Heartbeat(
                in_flight=0,
                queue_depth=0,
                spool_depth=0,
                spool_dropped=0,
                reconnects=0,
                policy={},
                sent_at=dt.datetime.now(dt.UTC),
            )
        )

    async def beat(self, every: float) -> None:
        """Send a heartbeat every ``every`` seconds, until cancelled."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.heartbeat()
                await asyncio.sleep(every)

    async def result(
        self,
        run: p.Run | None,
        status: Status,
        monitor_id: str = "m1",
        *,
        request_id: str | None = None,
        reason: str | None = None,
        instance_id: str | None = None,
    ) -> str:
        """Send one result: the answer to ``run``, or (without one) a result of ``monitor_id``
        with the given ``request_id`` and ``reason`` (by default a scheduled one)."""
        result_id = uuid.uuid4().hex
        envelope = p.ResultEnvelope(
            result_id=result_id,
            monitor_id=run.monitor_id if run else monitor_id,
            request_id=run.request_id if run else request_id,
            reason=run.reason if run else (reason or "scheduled"),
            instance_id=instance_id or self.instance_id,
            result=Result(
                kind="tcp",
                target="127.0.0.1:9",
                status=status,
                started_at=dt.datetime.now(dt.UTC),
                duration=0.001,
            ),
        )
        await self.send(p.Results(results=(envelope,)))
        return result_id


@pytest.fixture
async def plane() -> AsyncIterator[tuple[ControlPlane, MemorySink]]:
    sink = MemorySink()
    settings = ControlSettings(
        tokens={"office": Secret(TOKEN)}, heartbeat_interval=0.2, tick_interval=0.02
    )
    async with ControlPlane(settings, sinks=[sink]) as cp:
        yield cp, sink


async def join(
    cp: ControlPlane,
    instance_id: str,
    holdings: dict[str, int] | None = None,
    kinds: tuple[str, ...] = ("tcp",),
    *,
    token: str = TOKEN,
    checkpoint_id: str = "office",
) -> FakeInstance:
    conn = await connect(
        cp.url, additional_headers={"Authorization": f"Bearer {token}"}, proxy=None
    )
    inst = FakeInstance(conn, instance_id)
    hello = p.Hello(
        checkpoint_id=checkpoint_id,
        instance_id=instance_id,
        software_version="t",
        kinds=kinds,
        holdings=holdings or {},
    )
    await inst.send(hello)
    return inst


async def test_hello_gets_a_full_sync_and_runs_alternate(
    plane: tuple[ControlPlane, MemorySink],
) -> None:
    cp, _ = plane
    await cp.add_monitor("m1", "office", DEF, interval=0.1)
    a, b = await join(cp, "a"), await join(cp, "b")
    sync = await a.expect(p.Sync)
    assert sync.full and [u.monitor_id for u in sync.upserts] == ["m1"]
    await b.expect(p.Sync)
    order: list[str] = []
    got: asyncio.Queue[tuple[str, p.Run]] = asyncio.Queue()

    async def beats(inst: FakeInstance) -> None:
        await inst.beat(0.05)

    async def pump(inst: FakeInstance) -> None:
        while True:
            run = await inst.expect(p.Run, timeout=30)
            await got.put((inst.instance_id, run))
            await inst.result(run, Status.UP)

    pumps = [asyncio.create_task(f(i)) for i in (a, b) for f in (pump, beats)]
    try:
        async with asyncio.timeout(10):
            while len(order) < 8:
                instance_id, run = await got.get()
                assert run.reason == "scheduled"
                order.append(instance_id)
    finally:
        for t in pumps:
            t.cancel()
    assert all(x != y for x, y in itertools.pairwise(order)), order
    rows = await cp.results("m1")
    assert len(rows) >= 7 and {r["status"] for r in rows} == {"up"}
    stored = result_from_json(json.dumps(rows[0]["result"]))
    assert stored.status is Status.UP and rows[0]["result"]["kind"] == stored.kind
    for inst in (a, b):
        await inst.conn.close()


CUSTOM = {"kind": "custom-ping", "host": "127.0.0.1"}


async def runs_within(inst: FakeInstance, seconds: float) -> list[p.Run]:
    """The runs ``inst`` is sent over the next ``seconds``."""
    runs: list[p.Run] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                runs.append(await inst.expect(p.Run, timeout=seconds + 1))
    return runs


async def test_runs_of_a_kind_go_only_to_instances_that_declared_it(
    plane: tuple[ControlPlane, MemorySink],
) -> None:
    cp, sink = plane
    a = await join(cp, "a", kinds=("tcp", "custom-ping"))
    b = await join(cp, "b", kinds=("tcp",))
    await a.expect(p.Sync)
    await b.expect(p.Sync)
    await cp.add_monitor("m1", "office", CUSTOM, interval=0.05)
    to_a, to_b = await asyncio.gather(runs_within(a, 0.4), runs_within(b, 0.4))
    assert to_a and all(r.reason == "scheduled" and r.monitor_id == "m1" for r in to_a)
    assert to_b == []
    # A failure is confirmed on an instance that has the kind: the same one, as b has not.
    await cp.remove_monitor("m1")
    await cp.add_monitor("m2", "office", CUSTOM, interval=3600)
    await a.result(None, Status.DOWN, monitor_id="m2")
    confirm = await a.expect(p.Run)
    assert (confirm.reason, confirm.monitor_id) == ("confirm", "m2")
    assert await runs_within(b, 0.1) == []
    assert not [e for e in sink.events if e.kind == "kind_unavailable"]
    for inst in (a, b):
        await inst.conn.close()


async def test_a_kind_no_instance_has_is_not_sent_and_told_once_until_one_connects(
    plane: tuple[ControlPlane, MemorySink], caplog: pytest.LogCaptureFixture
) -> None:
    cp, sink = plane
    b = await join(cp, "b", kinds=("tcp",))
    await b.expect(p.Sync)
    with caplog.at_level(logging.WARNING, logger="probekit.control"):
        await cp.add_monitor("m1", "office", CUSTOM, interval=0.05)
        assert await runs_within(b, 0.4) == []  # eight rounds due, none sent
    told = [e for e in sink.events if e.kind == "kind_unavailable"]
    assert len(told) == 1
    assert told[0].subject == "m1" and "custom-ping" in told[0].message
    assert told[0].alert is not None and told[0].alert.kind == "kind_unavailable"
    warnings = [r.getMessage() for r in caplog.records if "custom-ping" in r.getMessage()]
    assert len(warnings) == 1 and "not sent" in warnings[0]
    assert [e["kind"] for e in await cp.events()].count("kind_unavailable") == 1
    # An instance that has the kind connects: the alert resolves and it gets the runs.
    c = await join(cp, "c", kinds=("tcp", "custom-ping"))
    run = await c.expect(p.Run)
    assert run.monitor_id == "m1"
    resolved = [e for e in sink.events if e.kind == "alert_resolved" and e.subject == "m1"]
    assert len(resolved) == 1 and resolved[0].alert == told[0].alert
    for inst in (b, c):
        await inst.conn.close()


async def test_results_are_stored_acked_and_deduplicated(
    plane: tuple[ControlPlane, MemorySink],
) -> None:
    cp, _ = plane
    await cp.add_monitor("m1", "office", DEF, interval=3600)
    a = await join(cp, "a")
    await a.expect(p.Sync)
    rid = await a.result(None, Status.UP)
    ack = await a.expect(p.Ack)
    assert ack.result_ids == (rid,)
    # the same result again (at-least-once delivery): acked again, stored once
    envelope_again = p.ResultEnvelope(
        result_id=rid,
        monitor_id="m1",
        request_id=None,
        reason="scheduled",
        instance_id="a",
        result=Result(
            kind="tcp",
            target="x",
            status=Status.UP,
            started_at=dt.datetime.now(dt.UTC),
            duration=0.0,
        ),
    )
    await a.send(p.Results(results=(envelope_again,)))
    assert (await a.expect(p.Ack)).result_ids == (rid,)
    assert await cp.result_count() == 1
    assert cp.duplicates == 1
    await a.conn.close()


async def test_down_is_confirmed_on_the_other_instance_and_alerts_once(
    plane: tuple[ControlPlane, MemorySink],
) -> None:
    cp, sink = plane
    await cp.add_monitor("m1", "office", DEF, interval=3600)
    a, b = await join(cp, "a"), await join(cp, "b")
    await a.expect(p.Sync)
    await b.expect(p.Sync)
    await a.result(None, Status.DOWN)
    confirm = await b.expect(p.Run)
    assert confirm.reason == "confirm" and confirm.monitor_id == "m1"
    await b.result(confirm, Status.DOWN)
    await sink.wait_for(lambda ev: any(e.kind == "alert_opened" for e in ev), timeout=5)
    kinds = [e.kind for e in sink.events if e.kind != "instance_up"]
    assert kinds == ["unconfirmed", "alert_opened"]
    stored = await cp.events()
    assert [e["kind"] for e in stored][-2:] == ["unconfirmed", "alert_opened"]
    for inst in (a, b):
        await inst.conn.close()


async def test_a_bad_token_is_refused(plane: tuple[ControlPlane, MemorySink]) -> None:
    cp, _ = plane
    with pytest.raises(InvalidStatus) as info:
        await connect(cp.url, additional_headers={"Authorization": "Bearer wrong"}, proxy=None)
    assert info.value.response.status_code == 401


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        ('{"type": "teleport", "version": 1}', "unknown_type"),
        ('{"type": "heartbeat", "version": 99}', "bad_version"),
        ('{"type": "results", "version": 1, "results": [{"result_id": 5}]}', "bad_field"),
        (
            '{"type": "sync", "version": 1, "full": true, "revision": 1,'
            ' "upserts": [], "deletes": []}',
            "unknown_type",
        ),
        ("x" * (5 * 1024 * 1024), None),
    ],
    ids=["not-json", "unknown-type", "bad-version", "bad-field", "wrong-direction", "oversized"],
)
async def test_malformed_frames_get_an_error_and_others_keep_being_served(
    plane: tuple[ControlPlane, MemorySink], frame: str, code: str | None
) -> None:
    cp, _ = plane
    await cp.add_monitor("m1", "office", DEF, interval=3600)
    bad, good = await join(cp, "bad"), await join(cp, "good")
    await bad.expect(p.Sync)
    await good.expect(p.Sync)
    await bad.conn.send(frame)
    if code is None:  # oversized: the server closes that connection (1009)
        await asyncio.wait_for(bad.task, 5)
        assert bad.conn.close_code == 1009
    else:
        error = await bad.expect(p.Error)
        assert error.code == code
    rid = await good.result(None, Status.UP)
    assert (await good.expect(p.Ack)).result_ids == (rid,)
    await good.conn.close()
    if code is not None:
        await bad.conn.close()


async def test_token_never_logged(
    plane: tuple[ControlPlane, MemorySink], caplog: pytest.LogCaptureFixture
) -> None:
    cp, _ = plane
    caplog.set_level("DEBUG")
    a = await join(cp, "a")
    await a.expect(p.Sync)
    await a.conn.close()
    with pytest.raises(InvalidStatus):
        await connect(cp.url, additional_headers={"Authorization": f"Bearer {TOKEN}x"}, proxy=None)
    ours = [r for r in caplog.records if r.name.startswith("probekit")]
    assert any("Authorization" in r.getMessage() for r in ours)  # headers were logged, masked
    assert all(TOKEN not in r.getMessage() for r in ours)
    assert TOKEN not in json.dumps([repr(cp.settings)])


frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    ).map(json.dumps),
    st.builds(
        lambda t, extra: json.dumps({"type": t, "version": 1, **extra}),
        st.sampled_from(
            ["hello", "results", "heartbeat", "error", "sync", "run", "ack", "drain", "x"]
        ),
        st.dictionaries(
            st.sampled_from(["results", "code", "message", "in_flight", "sent_at"]),
            st.integers() | st.text(max_size=5),
            max_size=3,
        ),
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(frames, min_size=1, max_size=5))
def test_random_frames_never_break_the_control_plane(batch: list[str]) -> None:
    async def scenario() -> None:
        settings_ = ControlSettings(
            tokens={"office": Secret(TOKEN)}, heartbeat_interval=5, tick_interval=0.05
        )
        async with ControlPlane(settings_, sinks=[]) as cp:
            good, bad = await join(cp, "good"), await join(cp, "bad")
            await good.expect(p.Sync)
            await bad.expect(p.Sync)
            for frame in batch:
                with contextlib.suppress(ConnectionClosed):
                    await bad.conn.send(frame)
                    reply = await bad.expect(p.Error, timeout=2)
                    assert reply.code in p.ERROR_CODES
            rid = await good.result(None, Status.UP)
            assert (await good.expect(p.Ack)).result_ids == (rid,)
            await good.conn.close()
            with contextlib.suppress(Exception):
                await bad.conn.close()

    asyncio.run(scenario())


def _big_definition(i: int) -> dict[str, Any]:
    """A TCP definition of about 1 KB (a long send step), so a few thousand exceed a frame."""
    return {
        "kind": "tcp",
        "host": "127.0.0.1",
        "port": 9,
        "steps": [{"send": f"HELLO {i} " + "x" * 1000}, {"expect": "OK"}],
    }


def _sync_of(n: int, *, full: bool, deletes: tuple[str, ...] = ()) -> p.Sync:
    return p.Sync(
        full=full,
        revision=n,
        upserts=tuple(
            p.MonitorDefinition(
                monitor_id=f"m{i}", revision=1, interval=60.0, definition=_big_definition(i)
            )
            for i in range(n)
        ),
        deletes=deletes,
    )


def test_a_sync_larger_than_a_frame_is_split_in_order() -> None:
    sync = _sync_of(3000, full=True)
    assert len(p.encode(sync).encode()) > p.MAX_FRAME_BYTES  # the case at hand
    parts = split_sync(sync)
    assert len(parts) >= 3
    assert all(len(p.encode(part).encode()) <= p.MAX_FRAME_BYTES for part in parts)
    assert parts[0].full and not any(part.full for part in parts[1:])
    assert [u for part in parts for u in part.upserts] == list(sync.upserts)
    assert all(p.decode(p.encode(part)) == part for part in parts)  # each decodes as sent


def test_a_delta_split_keeps_every_delete_after_the_upserts() -> None:
    deletes = tuple(f"gone{i}" for i in range(50))
    sync = _sync_of(2000, full=False, deletes=deletes)
    parts = split_sync(sync, limit=200_000)
    assert all(len(p.encode(part).encode()) <= 200_000 for part in parts)
    assert not any(part.full for part in parts)
    assert [u for part in parts for u in part.upserts] == list(sync.upserts)
    assert [d for part in parts for d in part.deletes] == list(deletes)


def test_a_definition_larger_than_a_frame_is_left_out_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    huge = p.MonitorDefinition(
        monitor_id="huge",
        revision=1,
        interval=60.0,
        definition={"kind": "tcp", "host": "h", "port": 1, "steps": [{"send": "x" * 5000}]},
    )
    small = p.MonitorDefinition(monitor_id="small", revision=1, interval=60.0, definition=DEF)
    parts = split_sync(p.Sync(full=True, revision=1, upserts=(huge, small), deletes=()), limit=3000)
    assert parts[0].full
    assert [u.monitor_id for part in parts for u in part.upserts] == ["small"]
    assert "huge" in caplog.text and "not sent" in caplog.text


async def test_an_instance_gets_thousands_of_definitions_in_frames_it_accepts(
    plane: tuple[ControlPlane, MemorySink],
) -> None:
    cp, _ = plane
    for i in range(1500):
        await cp.add_monitor(f"m{i}", "office", _big_definition(i), interval=3600)
    inst = await join(cp, "a")  # decodes with the default 1 MiB limit
    first = await inst.expect(p.Sync)
    assert first.full
    received = [u.monitor_id for u in first.upserts]
    while len(received) < 1500:
        more = await inst.expect(p.Sync)
        assert not more.full
        received += [u.monitor_id for u in more.upserts]
    assert sorted(received) == sorted(f"m{i}" for i in range(1500))
    assert not inst.task.done()  # the reader never met a frame it refused


# -- the webhook sink ---------------------------------------------------------------------------


def _event() -> Event:
    return Event("alert_opened", "web", 1.0, "web is down", None)


async def test_the_webhook_posts_the_event_as_json() -> None:
    async with serving(HttpServer()) as hook:
        await WebhookSink(hook.url("/hook")).send(_event())
    (request,) = hook.requests
    assert request.method == "POST" and request.target == "/hook"
    assert json.loads(request.body)["message"] == "web is down"


async def test_a_webhook_the_policy_denies_is_never_dialled_and_the_failure_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(HttpServer(host="127.0.0.2")) as hook:
        sink = WebhookSink(hook.url("/hook"), policy=EgressPolicy(deny=["127.0.0.2/32"]))
        with caplog.at_level(logging.WARNING, logger="probekit.control"):
            await sink.send(_event())
        assert hook.connections == 0
    (line,) = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert "policy_denied" in line and "127.0.0.2" in line


async def test_add_monitors_is_one_write_and_one_sync_per_checkpoint(
    plane: tuple[ControlPlane, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config file of many monitors reaches the instances as one delta sync (the fault
    suite's benchmark saw 1,500 single-monitor syncs keep instances from answering runs)."""
    cp, _ = plane
    syncs: list[tuple[str, int]] = []
    broadcast = cp._broadcast

    async def counting(checkpoint_id: str, message: Any) -> None:
        syncs.append((checkpoint_id, len(message.upserts)))
        await broadcast(checkpoint_id, message)

    monkeypatch.setattr(cp, "_broadcast", counting)
    definition = {"kind": "tcp", "host": "127.0.0.1", "port": 9}
    batch = [(f"m{i}", "office", definition, 30.0) for i in range(50)]
    specs = await cp.add_monitors(batch)
    assert [s.monitor_id for s in specs] == [f"m{i}" for i in range(50)]
    assert syncs == [("office", 50)]
    assert set(cp.monitors) >= {f"m{i}" for i in range(50)}
    # the same again changes nothing: no write of a new revision, no sync
    again = await cp.add_monitors(batch)
    assert [s.revision for s in again] == [s.revision for s in specs]
    assert syncs == [("office", 50)]
    # one changed monitor: one sync with that monitor only, its revision one up
    changed = await cp.add_monitors([("m3", "office", {**definition, "port": 10}, 30.0)])
    assert changed[0].revision == specs[3].revision + 1
    assert syncs[-1] == ("office", 1)
    # a bad definition anywhere in the batch: nothing is added
    with pytest.raises(DefinitionError):
        await cp.add_monitors(
            [("new1", "office", definition, 30.0), ("bad", "office", {"kind": "script"}, 30.0)]
        )
    assert "new1" not in cp.monitors
