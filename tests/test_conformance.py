"""docs/protocol.md, rule by rule, against a real in-process ControlPlane (issue 10, item 4).

The peer here is a raw WebSocket client: the ``websockets`` library and JSON text written by
hand, not probekit's checkpoint or its encoder, so a rule holds on the wire and not only between
two halves of the same code. The one exception is the backoff after ``unauthorized``, which is
the checkpoint agent's own rule: there the agent is driven against servers that refuse it.

Rules: the first frame (``hello``, else ``unknown_type`` and 1002); the frame size (at most
1 MiB, ``too_large`` above it with the connection kept; the WebSocket-level hard limit closes
with 1009); the error budget (more than 10 error replies in 60 s close with 1002); ``hello.kinds``
(no run of a kind the instance does not list); replay (a results frame sent twice is stored once
and acked both times); the backoff after ``unauthorized`` (the maximum backoff, not a fast retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from probekit import Secret
from probekit.checkpoint import Checkpoint, CheckpointSettings
from probekit.control import ControlPlane, ControlSettings, MemorySink

TOKEN = "conformance-token-canary-3#v"
MIB = 1_048_576
WAIT = 5.0  # the bound on every wait; each step takes milliseconds
TCP = {"kind": "tcp", "host": "127.0.0.1", "port": 9}


def frame(**members: Any) -> str:
    """A frame as a peer would write it: compact JSON, ``type`` and ``version`` first."""
    return json.dumps({"version": 1, **members}, separators=(",", ":"))


def hello(instance_id: str = "office-a", kinds: list[str] | None = None) -> str:
    return frame(
        type="hello",
        checkpoint_id="office",
        instance_id=instance_id,
        software_version="conformance/1",
        kinds=["tcp", "http"] if kinds is None else kinds,
        holdings={},
    )


def heartbeat() -> str:
    return frame(
        type="heartbeat",
        in_flight=0,
        queue_depth=0,
        spool_depth=0,
        spool_dropped=0,
        reconnects=0,
        policy={},
        sent_at=dt.datetime.now(dt.UTC).isoformat(),
    )


def envelope(
    monitor_id: str = "m1",
    *,
    instance_id: str = "office-a",
    request_id: str | None = None,
    reason: str = "scheduled",
    result_id: str | None = None,
) -> dict[str, Any]:
    """A result envelope; without a request id it is a result of the instance's own schedule."""
    return {
        "result_id": result_id or uuid.uuid4().hex,
        "monitor_id": monitor_id,
        "request_id": request_id,
        "reason": reason,
        "instance_id": instance_id,
        "result": {
            "kind": "tcp",
            "target": "127.0.0.1:9",
            "status": "up",
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
            "duration": 0.001,
            "error": None,
            "phases": [],
            "metrics": {},
            "assertions": [],
            "tls": None,
            "address": "127.0.0.1:9",
            "attempts": 1,
            "schema_version": 1,
        },
    }


def results(*envelopes: dict[str, Any], pad: int = 0) -> str:
    """A results frame; ``pad`` adds an unknown member of that many bytes (receivers ignore
    unknown members, so only the size changes)."""
    members: dict[str, Any] = {"type": "results", "results": list(envelopes)}
    if pad:
        members["pad"] = "x" * pad
    return frame(**members)


def sized_results(size: int, *envelopes: dict[str, Any]) -> str:
    """A results frame of exactly ``size`` bytes of UTF-8."""
    base = len(results(*envelopes, pad=1).encode())
    text = results(*envelopes, pad=1 + size - base)
    assert len(text.encode()) == size
    return text


class Peer:
    """A raw WebSocket client speaking to the control plane; every frame it gets, as JSON."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def send(self, text: str) -> None:
        await self.conn.send(text)

    async def receive(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            text = await self.conn.recv()
        data: dict[str, Any] = json.loads(text)
        return data

    async def expect(self, type_: str) -> dict[str, Any]:
        """The next frame of ``type_``; frames of other types (runs, syncs) are skipped."""
        while True:
            data = await self.receive()
            if data["type"] == type_:
                return data

    async def closed(self) -> tuple[int | None, str | None]:
        """Wait for the control plane to close the connection; its close code and reason."""
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(WAIT):
                while True:
                    await self.conn.recv()
        assert self.conn.close_code is not None, "the connection is still open"
        return self.conn.close_code, self.conn.close_reason

    async def still_open(self) -> None:
        """Prove the connection still serves: a valid results frame gets its ack (acks of
        earlier frames still on the way are skipped)."""
        one = envelope()
        await self.send(results(one))
        while (await self.expect("ack"))["result_ids"] != [one["result_id"]]:
            pass


@contextlib.asynccontextmanager
async def control_plane(**extra: Any) -> AsyncIterator[tuple[ControlPlane, MemorySink]]:
    values: dict[str, Any] = {
        "heartbeat_interval": 0.2,
        "tick_interval": 0.02,
        "missed_heartbeats": 50,  # peers here send no heartbeats; they stay up for the test
        "startup_grace": 60.0,
    }
    values.update(extra)
    sink = MemorySink()
    settings = ControlSettings(tokens={"office": Secret(TOKEN)}, **values)
    async with ControlPlane(settings, sinks=[sink]) as plane:
        await plane.add_monitor("m1", "office", TCP, interval=3600)
        yield plane, sink


@contextlib.asynccontextmanager
async def raw(plane: ControlPlane, **options: Any) -> AsyncIterator[Peer]:
    async with connect(
        f"ws://127.0.0.1:{plane.port}/",
        additional_headers={"Authorization": f"Bearer {TOKEN}"},
        open_timeout=WAIT,
        close_timeout=1.0,
        ping_interval=None,
        max_size=None,
        **options,
    ) as conn:
        yield Peer(conn)


@contextlib.asynccontextmanager
async def joined(
    plane: ControlPlane, instance_id: str = "office-a", kinds: list[str] | None = None
) -> AsyncIterator[Peer]:
    """A peer past ``hello`` and its answering ``sync``."""
    async with raw(plane) as peer:
        await peer.send(hello(instance_id, kinds))
        first = await peer.receive()
        assert first["type"] == "sync", first  # the first frame after hello is a sync
        yield peer


# -- the first frame -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(heartbeat(), id="a-valid-heartbeat"),
        pytest.param(frame(type="heartbeat"), id="a-heartbeat-without-fields"),
        pytest.param(frame(type="results"), id="results-without-fields"),
        pytest.param(results(envelope()), id="a-valid-results"),
        pytest.param(frame(type="ack", result_ids=[]), id="a-wrong-direction-ack"),
        pytest.param(frame(type="error", code="internal", message="x"), id="an-error"),
        pytest.param(frame(type="teleport"), id="an-unknown-type"),
    ],
)
async def test_a_first_frame_that_is_not_hello_gets_unknown_type_and_close_1002(
    first: str,
) -> None:
    async with control_plane() as (plane, _sink), raw(plane) as peer:
        await peer.send(first)
        reply = await peer.receive()
        code, _reason = await peer.closed()
        assert await plane.result_count() == 0
    assert reply["type"] == "error" and reply["code"] == "unknown_type", reply
    assert "hello" in reply["message"]
    assert code == 1002


async def test_a_first_hello_is_answered_with_a_sync() -> None:
    async with control_plane() as (plane, _sink), raw(plane) as peer:
        await peer.send(hello())
        reply = await peer.receive()
        assert plane.connected == ["office-a"]
    assert reply["type"] == "sync" and reply["full"] is True
    assert [u["monitor_id"] for u in reply["upserts"]] == ["m1"]


# -- the frame size --------------------------------------------------------------------------------


async def test_a_frame_of_exactly_1_mib_is_read_and_one_byte_more_is_too_large() -> None:
    async with control_plane() as (plane, _sink), joined(plane) as peer:
        at_limit = envelope()
        await peer.send(sized_results(MIB, at_limit))
        ack = await peer.expect("ack")
        assert ack["result_ids"] == [at_limit["result_id"]]

        over = envelope()
        await peer.send(sized_results(MIB + 1, over))
        error = await peer.expect("error")
        assert error["code"] == "too_large", error
        # Discarded unread: not stored, not acked, and the connection serves on.
        await peer.still_open()
        stored = {r["result_id"] for r in await plane.results()}
    assert at_limit["result_id"] in stored and over["result_id"] not in stored


async def test_the_documented_issue_a_1_5_mb_results_frame_is_refused_not_stored() -> None:
    """Issue 10: a 1.48 MB results frame was stored (max_frame_bytes, 4 MiB, was used)."""
    async with control_plane() as (plane, _sink), joined(plane) as peer:
        big = envelope()
        await peer.send(sized_results(1_480_000, big))
        error = await peer.expect("error")
        await peer.still_open()
        assert big["result_id"] not in {r["result_id"] for r in await plane.results()}
    assert error["code"] == "too_large"


async def test_a_frame_beyond_the_websocket_hard_limit_closes_with_1009() -> None:
    async with control_plane(max_frame_bytes=MIB + 4096) as (plane, _sink):
        async with joined(plane) as peer:
            await peer.send(results(envelope(), pad=MIB + 8192))
            code, _reason = await peer.closed()
        assert await plane.result_count() == 0
    assert code == 1009


def test_a_hard_limit_below_the_protocols_is_refused() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        ControlSettings(tokens={"office": Secret(TOKEN)}, max_frame_bytes=MIB - 1)


# -- the error budget ------------------------------------------------------------------------------


async def test_ten_errors_keep_the_connection_and_the_eleventh_closes_it_with_1002() -> None:
    async with control_plane() as (plane, _sink), joined(plane) as peer:
        for n in range(10):
            await peer.send(f"not json {n}")
            error = await peer.expect("error")
            assert error["code"] == "bad_json"
        await peer.still_open()  # a valid frame costs nothing
        await peer.send("not json, the eleventh")
        error = await peer.expect("error")
        code, reason = await peer.closed()
    assert error["code"] == "bad_json"
    assert (code, reason) == (1002, "too many errors")


async def test_every_kind_of_error_reply_counts_against_the_budget() -> None:
    """Refused results, a second hello and a wrong-direction message are error replies too."""
    async with control_plane() as (plane, _sink), joined(plane) as peer:
        bad = [
            results(envelope("no-such-monitor")),
            hello("office-b"),
            frame(type="ack", result_ids=[]),
            frame(type="heartbeat"),
            results(envelope(instance_id="someone-else")),
        ]
        codes = []
        for text in bad * 2:  # ten
            await peer.send(text)
            codes.append((await peer.expect("error"))["code"])
        await peer.still_open()
        await peer.send(bad[0])
        await peer.expect("error")
        code, _reason = await peer.closed()
    assert set(codes) == {"bad_field", "unknown_type"}
    assert code == 1002


# -- hello.kinds -----------------------------------------------------------------------------------


async def test_an_instance_listing_no_kinds_gets_no_runs_while_one_listing_the_kind_does() -> None:
    """Issue 10: an instance listing no kinds got 19 runs in 2.5 s."""
    async with control_plane() as (plane, sink):
        for n in range(5):
            await plane.add_monitor(f"fast-{n}", "office", TCP, interval=0.1)
        async with joined(plane, "office-none", kinds=[]) as none:
            # Alone, it gets nothing, and the operator is told why.
            await sink.wait_for(lambda ev: any(e.kind == "kind_unavailable" for e in ev), WAIT)
            async with joined(plane, "office-tcp", kinds=["tcp"]) as able:
                runs = []
                while len(runs) < 10:  # answered, so that each monitor is run again
                    run = await able.expect("run")
                    runs.append(run)
                    answer = envelope(
                        run["monitor_id"],
                        instance_id="office-tcp",
                        request_id=run["request_id"],
                        reason=run["reason"],
                    )
                    await able.send(results(answer))
                # Everything the kindless instance received meanwhile, read without waiting.
                received: list[dict[str, Any]] = []
                with contextlib.suppress(TimeoutError):
                    while True:
                        async with asyncio.timeout(0.05):
                            received.append(json.loads(await none.conn.recv()))
    assert {r["monitor_id"] for r in runs} <= {"m1", *(f"fast-{n}" for n in range(5))}
    assert [m for m in received if m["type"] == "run"] == []


# -- replay ----------------------------------------------------------------------------------------


async def test_a_replayed_results_frame_is_stored_once_and_acked_each_time() -> None:
    async with control_plane() as (plane, _sink):
        batch = [envelope(), envelope()]
        ids = [e["result_id"] for e in batch]
        async with joined(plane) as peer:
            await peer.send(results(*batch))
            first = await peer.expect("ack")
            await peer.send(results(*batch))
            second = await peer.expect("ack")
        # And once more on a new connection, as an instance resends its spool after a reconnect.
        async with joined(plane) as peer:
            await peer.send(results(*reversed(batch)))
            third = await peer.expect("ack")
        stored = [r["result_id"] for r in await plane.results()]
        stats = plane.stats()
    assert first["result_ids"] == ids and second["result_ids"] == ids
    assert sorted(third["result_ids"]) == sorted(ids)
    assert sorted(stored) == sorted(ids)
    assert stats["results_stored"] == 2 and stats["duplicates"] == 4


async def test_a_replayed_answer_to_a_run_is_stored_once() -> None:
    async with control_plane() as (plane, _sink), joined(plane) as peer:
        request_id = await plane.run_now("m1", "office-a")
        run = await peer.expect("run")
        assert run["request_id"] == request_id and run["reason"] == "adhoc"
        answer = envelope(request_id=request_id, reason="adhoc")
        for _ in range(3):
            await peer.send(results(answer))
            ack = await peer.expect("ack")
            assert ack["result_ids"] == [answer["result_id"]]
        assert [r["result_id"] for r in await plane.results()] == [answer["result_id"]]


# -- the backoff after unauthorized ----------------------------------------------------------------


def agent_settings(url: str, **extra: Any) -> CheckpointSettings:
    values: dict[str, Any] = {
        "url": url,
        "token": Secret(TOKEN),
        "checkpoint_id": "office",
        "instance_id": "office-a",
        "spool_path": ":memory:",
        "insecure": True,
        "heartbeat_interval": 0.2,
        "reconnect_initial": 0.01,
        "reconnect_max": 1.0,
        "open_timeout": 2.0,
    }
    values.update(extra)
    return CheckpointSettings(**values)


def test_after_a_refusal_every_delay_is_the_maximum_backoff() -> None:
    channel = Checkpoint(agent_settings("ws://127.0.0.1:1/"))._channel
    for k in (0, 1, 2, 5, 50):
        delays = [channel._backoff(k, refused=True) for _ in range(200)]
        assert all(0.5 <= d <= 1.0 for d in delays), (k, min(delays), max(delays))
        ordinary = [channel._backoff(k) for _ in range(200)]
        assert all(0 <= d <= min(0.01 * 2**k, 1.0) for d in ordinary)


async def test_an_instance_refused_with_http_401_backs_off_to_the_maximum() -> None:
    """Issue 10: an instance refused with 401 retried 7-8 times in 20 s (with a 60 s maximum).

    Here the maximum is 1 s and the initial backoff 10 ms: full jitter from 10 ms would make at
    least 8 attempts in 2 s; waiting at least half the maximum between attempts makes at most 5
    (attempts at 0, >=0.5, >=1.0, >=1.5 and, at the edge, 2.0 s). Only an upper bound is
    asserted, which a slow machine cannot break."""
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    def refuse(connection: ServerConnection, request: Request) -> Response:
        attempts.append(loop.time())
        return connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")

    async def never(_conn: ServerConnection) -> None:
        raise AssertionError("no connection gets past the token check")

    async with serve(never, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        async with Checkpoint(agent_settings(f"ws://127.0.0.1:{port}/")) as cp:
            async with asyncio.timeout(WAIT):
                while not attempts:  # noqa: ASYNC110 - counting what the server saw
                    await asyncio.sleep(0.01)
            await asyncio.sleep(2.0)
            window = [t for t in attempts if t - attempts[0] <= 2.0]
            refused = cp._channel.refused
    assert 1 <= len(window) <= 5, len(window)
    assert refused == "unauthorized"


async def test_an_instance_refused_with_an_unauthorized_error_backs_off_to_the_maximum() -> None:
    """The token is good but the hello names another checkpoint: ``error`` ``unauthorized`` and
    close 1008. The agent waits the maximum backoff before the next hello."""
    async with control_plane() as (plane, _sink):
        hellos: list[float] = []
        loop = asyncio.get_running_loop()
        original = plane._expect_hello

        async def counted(conn: Any, checkpoint_id: str) -> Any:
            hellos.append(loop.time())
            return await original(conn, checkpoint_id)

        plane._expect_hello = counted  # type: ignore[method-assign]
        settings = agent_settings(plane.url, checkpoint_id="lab", instance_id="lab-a")
        async with Checkpoint(settings) as cp:
            async with asyncio.timeout(WAIT):
                while not hellos:  # noqa: ASYNC110 - counting what the server saw
                    await asyncio.sleep(0.01)
            await asyncio.sleep(2.0)
            window = [t for t in hellos if t - hellos[0] <= 2.0]
            assert not cp.connected or cp._channel.refused == "unauthorized"
        assert plane.connected == []
    assert 1 <= len(window) <= 5, len(window)
