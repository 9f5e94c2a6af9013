"""The checkpoint agent against a fake control plane, over real WebSockets on loopback.

``FakeControl`` is a small control plane written here: it checks the bearer token, decodes every
frame with the protocol module (so a frame the agent gets wrong fails the test), acks results
unless told not to, and lets a test send any frame, drop the connection or go away entirely.
Targets are the in-process HTTP servers of ``servers.py``; the dialer's connector refuses
anything but loopback, so a policy bug cannot send a packet anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import ssl
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any, TypeVar

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

import probekit
from probekit import (
    CertInfo,
    DefinitionError,
    EgressPolicy,
    ErrorKind,
    ProbeError,
    Result,
    Secret,
    Status,
    TlsInfo,
)
from probekit import protocol as p
from probekit._definitions import probe_kinds
from probekit.checkpoint import Checkpoint, CheckpointSettings
from probekit.checkpoint._spool import Spool
from servers import GuardedConnector, HttpServer, closed_port, make_context, response, serving
from servers import Request as HttpRequest

TOKEN = "tok-canary-7f3a9c21e5"
SERVER_LOG = logging.getLogger("tests.fakecontrol")
M = TypeVar("M", bound=p.Message)
WAIT = 5.0  # the bound on every wait; the happy paths take milliseconds

# -- the fake control plane -----------------------------------------------------------------------


class FakeControl:
    """A control plane on 127.0.0.1 that records every message it receives, decoded."""

    def __init__(
        self,
        *,
        token: str = TOKEN,
        port: int = 0,
        auto_ack: bool = True,
        tls: ssl.SSLContext | None = None,
        handshake_delay: float = 0.0,
    ) -> None:
        self.token = token
        self.handshake_delay = handshake_delay
        self.tls = tls
        self.port = port
        self.auto_ack = auto_ack
        self.messages: list[tuple[int, p.Message]] = []  # (connection number, message)
        self.bad_frames: list[str] = []
        self.connections: list[ServerConnection] = []
        self.close_codes: list[int | None] = []
        self.rejected = 0
        self.headers: list[Headers] = []
        self._server: Server | None = None
        self._changed = asyncio.Condition()

    async def start(self) -> FakeControl:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            process_request=self._authorize,
            logger=SERVER_LOG,
            ping_interval=None,
            close_timeout=0.5,
            ssl=self.tls,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), WAIT)

    @property
    def url(self) -> str:
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/checkpoint"

    async def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        self.headers.append(request.headers)
        if self.handshake_delay:
            await asyncio.sleep(self.handshake_delay)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.rejected += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        number = len(self.connections)
        try:
            async for frame in ws:
                try:
                    message = p.decode(frame, accept=p.FROM_INSTANCE)
                except p.ProtocolError as exc:
                    self.bad_frames.append(f"{exc}: {frame!r:.200}")
                    continue
                if isinstance(message, p.Results) and self.auto_ack:
                    ids = tuple(e.result_id for e in message.results)
                    await ws.send(p.encode(p.Ack(result_ids=ids)))
                async with self._changed:
                    self.messages.append((number, message))
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)
            async with self._changed:
                self._changed.notify_all()

    # -- what a test does ----------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], object], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def send(self, message: p.Message | str, connection: int = -1) -> None:
        frame = message if isinstance(message, str) else p.encode(message)
        await self.connections[connection].send(frame)

    def of(self, kind: type[M], connection: int | None = None) -> list[M]:
        return [
            m
            for n, m in self.messages
            if isinstance(m, kind) and (connection is None or n == connection)
        ]

    def envelopes(self, connection: int | None = None) -> list[p.ResultEnvelope]:
        return [e for batch in self.of(p.Results, connection) for e in batch.results]

    async def hello(self, count: int = 1) -> p.Hello:
        await self.wait_for(lambda: len(self.of(p.Hello)) >= count)
        hello: p.Hello = self.of(p.Hello)[count - 1]
        return hello

    async def envelope(self, predicate: Callable[[p.ResultEnvelope], bool]) -> p.ResultEnvelope:
        await self.wait_for(lambda: any(predicate(e) for e in self.envelopes()))
        return next(e for e in self.envelopes() if predicate(e))

    async def error(self, predicate: Callable[[p.Error], bool]) -> p.Error:
        await self.wait_for(lambda: any(predicate(e) for e in self.of(p.Error)))
        return next(e for e in self.of(p.Error) if predicate(e))


@contextlib.asynccontextmanager
async def control(**kwargs: Any) -> AsyncIterator[FakeControl]:
    server = await FakeControl(**kwargs).start()
    try:
        yield server
    finally:
        await server.stop()
    assert server.bad_frames == [], "the checkpoint sent frames the protocol refuses"


def settings_for(url: str, **overrides: Any) -> CheckpointSettings:
    base: dict[str, Any] = {
        "url": url,
        "token": Secret(TOKEN),
        "checkpoint_id": "cp-1",
        "instance_id": "cp-1-a",
        "spool_path": ":memory:",
        "insecure": True,
        "heartbeat_interval": 0.2,
        "reconnect_initial": 0.05,
        "reconnect_max": 0.2,
        "ping_interval": 1.0,
        "ping_timeout": 1.0,
        "open_timeout": 1.0,
        "drain_timeout": 1.0,
    }
    base.update(overrides)
    return CheckpointSettings(**base)


def http_def(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "http", "url": url, "timeouts": {"total": 2.0}, **extra}


def sync(*defs: tuple[str, dict[str, Any]], interval: float = 60.0, **kw: Any) -> p.Sync:
    upserts = tuple(
        p.MonitorDefinition(monitor_id=mid, revision=1, interval=interval, definition=d)
        for mid, d in defs
    )
    return p.Sync(full=True, revision=1, upserts=upserts, deletes=(), **kw)


async def eventually(condition: Callable[[], object], timeout: float = WAIT) -> None:
    """Wait until ``condition()`` holds (polled: the checkpoint's state has no events to await)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling state that has no event to wait on
            await asyncio.sleep(0.01)


@pytest.fixture
def connector() -> GuardedConnector:
    return GuardedConnector()


@pytest.fixture
async def target() -> AsyncIterator[HttpServer]:
    async with serving(HttpServer()) as server:
        yield server


# -- settings -------------------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "url": "wss://control.example/cp",
    "token": Secret("t"),
    "checkpoint_id": "cp",
    "instance_id": "cp-a",
    "spool_path": ":memory:",
}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"url": "ws://control.example/cp"}, "url"),
        ({"url": "https://control.example/cp"}, "url"),
        ({"url": "wss:///nohost"}, "url"),
        ({"url": "wss://user:pw@control.example/"}, "url"),
        ({"url": "wss://control.example:99999/"}, "url"),
        ({"url": "ws://control.example/cp", "insecure": True, "ca_file": "ca.pem"}, "ca_file"),
        ({"token": Secret("")}, "token"),
        ({"token": "plain"}, "token"),
        ({"token": Secret("a b")}, "token"),
        ({"checkpoint_id": ""}, "checkpoint_id"),
        ({"instance_id": "x" * 201}, "instance_id"),
        ({"instance_id": "a\nb"}, "instance_id"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"ping_timeout": math.inf}, "ping_timeout"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"reconnect_initial": 5.0, "reconnect_max": 1.0}, "reconnect_max"),
        ({"metrics_port": 70000}, "metrics_port"),
        ({"policy": {"deny": []}}, "policy"),
        ({"secrets": {"db": "plain"}}, "secrets['db']"),
        ({"insecure": "yes"}, "insecure"),
    ],
)
def test_invalid_settings_are_refused_with_the_field(change: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        CheckpointSettings(**{**GOOD, **change})
    assert info.value.path == path


def test_plain_ws_needs_the_insecure_flag() -> None:
    with pytest.raises(DefinitionError, match="insecure=True"):
        CheckpointSettings(**{**GOOD, "url": "ws://127.0.0.1:1/"})
    assert CheckpointSettings(**{**GOOD, "url": "ws://127.0.0.1:1/", "insecure": True})


def test_settings_never_show_the_token() -> None:
    settings = CheckpointSettings(**{**GOOD, "token": Secret(TOKEN)})
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)


def test_a_missing_ca_file_is_a_definition_error(tmp_path: Any) -> None:
    settings = CheckpointSettings(**{**GOOD, "ca_file": str(tmp_path / "missing.pem")})
    with pytest.raises(DefinitionError) as info:
        Checkpoint(settings)
    assert info.value.path == "ca_file"


# -- the channel ----------------------------------------------------------------------------------


async def test_hello_says_who_and_what_then_heartbeats() -> None:
    async with control() as server, Checkpoint(settings_for(server.url)):
        hello = await server.hello()
        await server.wait_for(lambda: server.of(p.Heartbeat))
    assert hello.checkpoint_id == "cp-1"
    assert hello.instance_id == "cp-1-a"
    assert hello.software_version == probekit.__version__
    assert hello.kinds == probe_kinds()
    assert {"http", "tcp"} <= set(hello.kinds)
    assert hello.holdings == {}
    assert hello.heartbeat_interval == 0.2
    assert server.headers[0]["Authorization"] == f"Bearer {TOKEN}"
    assert server.headers[0]["User-Agent"].startswith("probekit-checkpoint/")
    beat: p.Heartbeat = server.of(p.Heartbeat)[0]
    assert beat.policy == EgressPolicy().summary()
    assert beat.spool_depth == 0
    assert beat.sent_at.tzinfo is not None


async def test_sync_then_run_gives_a_result_that_is_acked_and_leaves_the_spool(
    target: HttpServer, connector: GuardedConnector
) -> None:
    ctx = make_context(connector=connector)
    async with control() as server, Checkpoint(settings_for(server.url), context=ctx) as cp:
        await server.hello()
        await server.send(sync(("m1", http_def(target.url("/ok")))))
        await eventually(lambda: cp.holdings == {"m1": 1})
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1"))
        envelope = await server.envelope(lambda e: e.request_id == "r1")
        await eventually(lambda: cp.stats["results_acked"] == 1)
        stats = cp.stats
    assert envelope.monitor_id == "m1"
    assert envelope.reason == "adhoc"
    assert envelope.instance_id == "cp-1-a"
    assert len(envelope.result_id) == 32
    assert envelope.result.status is Status.UP
    assert envelope.result.target == target.url("/ok")
    assert envelope.result.phase_names()[:2] == ("resolve", "connect")
    assert stats["spool_depth"] == 0
    assert stats["results_produced"] == 1
    assert stats["definitions"] == 1
    assert connector.dialled == [("127.0.0.1", target.port)]


async def test_results_that_complete_together_travel_together() -> None:
    gate = asyncio.Event()

    async def together(_req: HttpRequest, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        writer.write(response(200, b"ok"))

    async with (
        serving(HttpServer(handler=together)) as target,
        control() as server,
        Checkpoint(settings_for(server.url)) as cp,
    ):
        await server.hello()
        await server.send(sync(("m1", http_def(target.url("/")))))
        await eventually(lambda: cp.holdings)
        for i in range(20):
            await server.send(p.Run(request_id=f"r{i}", reason="adhoc", monitor_id="m1"))
        await eventually(lambda: len(target.requests) == 20)
        gate.set()
        await eventually(lambda: cp.stats["results_acked"] == 20)
    assert len(server.envelopes()) == 20
    assert len(server.of(p.Results)) < 20  # some batching happened
    assert len({e.result_id for e in server.envelopes()}) == 20


async def test_unacked_results_are_sent_again_after_a_reconnect(target: HttpServer) -> None:
    async with (
        control(auto_ack=False) as server,
        Checkpoint(settings_for(server.url)) as cp,
    ):
        await server.hello()
        await server.send(sync(("m1", http_def(target.url("/ok")))))
        await eventually(lambda: cp.holdings)
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1"))
        first = await server.envelope(lambda e: e.request_id == "r1")
        assert cp.stats["spool_depth"] == 1
        server.connections[0].transport.abort()  # the control plane vanishes mid-conversation
        hello = await server.hello(2)
        await server.wait_for(lambda: server.envelopes(connection=2))
        again = server.envelopes(connection=2)
        assert [e.result_id for e in again] == [first.result_id]
        assert again[0] == first  # the same result, not a re-run
        await server.send(p.Ack(result_ids=(first.result_id,)))
        await eventually(lambda: cp.stats["spool_depth"] == 0)
        stats = cp.stats
    assert hello.holdings == {"m1": 1}
    assert stats["reconnects"] == 1
    assert stats["results_acked"] == 1


async def test_results_survive_a_restart_on_the_same_spool(
    target: HttpServer, tmp_path: Any
) -> None:
    spool = str(tmp_path / "spool.db")
    async with control(auto_ack=False) as server:
        first = Checkpoint(settings_for(server.url, spool_path=spool))
        task = asyncio.create_task(first.run())
        await server.hello()
        await server.send(sync(("m1", http_def(target.url("/ok")))))
        await eventually(lambda: first.holdings)
        for i in range(3):
            await server.send(p.Run(request_id=f"r{i}", reason="adhoc", monitor_id="m1"))
        await server.wait_for(lambda: len(server.envelopes()) == 3)
        task.cancel()  # as abrupt as asyncio gets; the kill -9 case is the spool's own test
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sent = {e.result_id for e in server.envelopes()}
        server.auto_ack = True
        async with Checkpoint(settings_for(server.url, spool_path=spool)) as second:
            await server.hello(2)
            await eventually(lambda: second.stats["spool_depth"] == 0)
        redelivered = {
            e.result_id for n, m in server.messages if n == 2 for e in getattr(m, "results", ())
        }
    assert redelivered == sent


async def test_a_wrong_token_is_refused_and_retried_with_backoff() -> None:
    async with control(token="the-right-one") as server:
        async with Checkpoint(settings_for(server.url)) as cp:
            loop = asyncio.get_running_loop()
            start = loop.time()
            # The server counts a refusal when it sends the 401; the instance counts it once it
            # has read the answer: wait for both, or a fast scrape sees the last one in flight.
            await eventually(lambda: server.rejected >= 4 and cp.stats["connect_failures"] >= 4)
            elapsed = loop.time() - start
            stats = cp.stats
        assert server.of(p.Hello) == []
    assert not stats["connected"]
    assert stats["connect_failures"] >= 4
    assert stats["reconnects"] == 0
    assert elapsed < 3.0  # reconnect_max is 0.2 s: it keeps trying


async def test_a_policy_that_denies_the_control_plane_stops_the_connection_before_a_socket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The control plane listens on 127.0.0.1; the operator's policy denies all of 127.0.0.0/8.
    async with serving(HttpServer()) as listener:
        url = f"ws://127.0.0.1:{listener.port}/checkpoint"
        denied = EgressPolicy(deny=["127.0.0.0/8"])
        with caplog.at_level(logging.ERROR, logger="probekit.checkpoint"):
            async with Checkpoint(settings_for(url, policy=denied)) as cp:
                await eventually(lambda: cp.stats["connect_failures"] >= 2)
                stats = cp.stats
        assert listener.connections == 0  # nothing reached it, not even a TCP connection
    assert not stats["connected"]
    refusals = [r.getMessage() for r in caplog.records if "egress policy" in r.getMessage()]
    assert refusals, caplog.text
    assert "127.0.0.0/8" in refusals[0] and "settings.policy" in refusals[0]


async def test_the_connection_time_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="probekit.checkpoint"):
        async with control() as server, Checkpoint(settings_for(server.url)):
            await server.hello()
    (line,) = [
        r.getMessage() for r in caplog.records if "connected to the control plane" in r.getMessage()
    ]
    assert "127.0.0.1" in line and " ms" in line and "connect" in line


async def test_backoff_grows_and_stays_under_the_maximum() -> None:
    cp = Checkpoint(settings_for("ws://127.0.0.1:1/", reconnect_initial=0.5, reconnect_max=4.0))
    for k, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0), (500, 4.0)]:
        delays = [cp._channel._backoff(k) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # full jitter spreads over the whole range


async def test_malformed_frames_get_an_error_and_the_channel_keeps_working(
    target: HttpServer,
) -> None:
    async with control() as server, Checkpoint(settings_for(server.url)) as cp:
        await server.hello()
        await server.send("this is not json")
        await server.error(lambda e: e.code == "bad_json")
        await server.send('{"type":"reboot","version":1}')
        await server.error(lambda e: e.code == "unknown_type")
        await server.send(p.encode(p.Results(results=())))  # instance -> control only
        await server.wait_for(lambda: len(server.of(p.Error)) == 3)
        await server.send('{"type":"run","version":1,"request_id":"r9","reason":"sometimes"}')
        bad = await server.error(lambda e: e.code == "bad_field")
        await server.send("x" * (p.MAX_FRAME_BYTES + 10))
        await server.error(lambda e: e.code == "too_large")
        # still the first connection, still serving
        await server.send(sync(("m1", http_def(target.url("/ok")))))
        await eventually(lambda: cp.holdings)
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1"))
        await server.envelope(lambda e: e.request_id == "r1")
        assert len(server.connections) == 1
        # a version this side does not speak ends the connection (after saying why)
        await server.send('{"type":"ack","version":2,"result_ids":[]}')
        await server.error(lambda e: e.code == "bad_version")
        await server.hello(2)
    assert bad.ref == "r9"
    assert bad.message.startswith("reason")
    assert server.close_codes[0] == 1002


async def test_more_than_ten_refused_frames_in_a_minute_close_the_channel_with_1002(
    target: HttpServer,
) -> None:
    """docs/protocol.md: more than 10 error replies on one connection within 60 s close it."""
    async with control() as server, Checkpoint(settings_for(server.url)) as cp:
        await server.hello()
        for n in range(10):
            await server.send(f"not json {n}")
        await server.wait_for(lambda: len(server.of(p.Error)) == 10)
        # Ten refused frames: still the first connection, still serving.
        await server.send(sync(("m1", http_def(target.url("/ok")))))
        await eventually(lambda: cp.holdings)
        assert len(server.connections) == 1 and server.close_codes == []
        await server.send("the eleventh")
        await server.wait_for(lambda: len(server.of(p.Error)) == 11)
        await server.wait_for(lambda: server.close_codes != [])
        await server.hello(2)  # and it comes back, with a fresh budget
    assert server.close_codes[0] == 1002
    assert server.connections[0].close_reason == "too many errors"


async def test_definitions_it_cannot_build_do_not_spend_the_error_budget() -> None:
    """Answers about work are not frame errors: 15 unknown kinds in one sync keep the channel."""
    async with control() as server, Checkpoint(settings_for(server.url)) as cp:
        await server.hello()
        defs = [(f"m{n}", {"kind": "no-such-kind"}) for n in range(15)]
        await server.send(sync(*defs))
        await server.wait_for(lambda: len(server.of(p.Error)) == 15)
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1"))
        await server.error(lambda e: e.ref == "r1")
        assert cp.connected
    assert len(server.connections) == 1


async def test_a_definition_that_does_not_build_is_refused_and_the_rest_kept(
    target: HttpServer,
) -> None:
    async with control() as server, Checkpoint(settings_for(server.url)) as cp:
        await server.hello()
        await server.send(
            sync(
                ("good", http_def(target.url("/ok"))),
                ("bad", {"kind": "http", "url": "gopher://x", "colour": "red"}),
                ("env", http_def(target.url("/ok"), bearer_token={"env": "HOME"})),
                ("nosecret", http_def(target.url("/ok"), bearer_token={"secret": "nope"})),
            )
        )
        await server.wait_for(lambda: len(server.of(p.Error)) == 3)
        errors = {e.ref: e for e in server.of(p.Error)}
        assert cp.holdings == {"good": 1}
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="good"))
        await server.envelope(lambda e: e.request_id == "r1")
    assert set(errors) == {"bad", "env", "nosecret"}
    assert all(e.code == "bad_field" for e in errors.values())
    assert "definition.colour" in errors["bad"].message
    assert "only read from local configuration" in errors["env"].message
    assert "no secret named 'nope'" in errors["nosecret"].message


async def test_delta_syncs_upsert_and_delete(target: HttpServer) -> None:
    async with control() as server, Checkpoint(settings_for(server.url)) as cp:
        await server.hello()
        await server.send(sync(("a", http_def(target.url("/ok"))), ("b", http_def(target.url()))))
        await eventually(lambda: set(cp.holdings) == {"a", "b"})
        upsert = p.MonitorDefinition(
            monitor_id="c", revision=7, interval=5.0, definition=http_def(target.url())
        )
        await server.send(p.Sync(full=False, revision=2, upserts=(upsert,), deletes=("a",)))
        await eventually(lambda: cp.holdings == {"b": 1, "c": 7})
        await server.send(sync(("z", http_def(target.url()))))
        await eventually(lambda: cp.holdings == {"z": 1})


async def test_runs_that_cannot_run_get_an_error_and_no_result(target: HttpServer) -> None:
    async with control() as server, Checkpoint(settings_for(server.url)):
        await server.hello()
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="unknown"))
        unknown = await server.error(lambda e: e.ref == "r1")
        await server.send(
            p.Run(request_id="r2", reason="confirm", definition={"kind": "http", "url": 5})
        )
        invalid = await server.error(lambda e: e.ref == "r2")
        # an inline definition runs, attributed to the monitor it names
        inline = http_def(target.url("/ok"))
        await server.send(
            p.Run(request_id="r3", reason="confirm", monitor_id="m", definition=inline)
        )
        envelope = await server.envelope(lambda e: e.request_id == "r3")
        await asyncio.sleep(0.1)
    assert unknown.code == "bad_field"
    assert "unknown" in unknown.message
    assert invalid.code == "bad_field"
    assert "definition.url" in invalid.message
    assert envelope.monitor_id == "m"
    assert envelope.reason == "confirm"
    assert envelope.result.ok
    assert [e.request_id for e in server.envelopes()] == ["r3"]


async def test_a_run_deadline_caps_the_probe_deadline() -> None:
    async def silent(_req: HttpRequest, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with (
        serving(HttpServer(handler=silent)) as slow,
        control() as server,
        Checkpoint(settings_for(server.url)) as cp,
    ):
        await server.hello()
        definition = {"kind": "http", "url": slow.url("/"), "timeouts": {"total": 10.0}}
        await server.send(sync(("m1", definition)))
        await eventually(lambda: cp.holdings)
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1", deadline=0.2))
        envelope = await server.envelope(lambda e: e.request_id == "r1")
    result = envelope.result
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert 0.15 < result.duration < 1.0


# -- the local policy -----------------------------------------------------------------------------


async def test_a_metadata_address_gives_policy_denied_and_no_connection(
    connector: GuardedConnector,
) -> None:
    ctx = make_context(connector=connector)
    async with control() as server, Checkpoint(settings_for(server.url), context=ctx) as cp:
        await server.hello()
        metadata = http_def("http://169.254.169.254/latest/meta-data/")
        await server.send(sync(("meta", metadata)))
        await eventually(lambda: cp.holdings)
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="meta"))
        envelope = await server.envelope(lambda e: e.request_id == "r1")
    result = envelope.result
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert connector.dialled == []
    assert connector.refused == []


async def test_the_local_policy_wins_over_the_contexts(connector: GuardedConnector) -> None:
    # The context would allow everything; the checkpoint's own policy denies the target (on
    # 127.0.0.2, so that the control plane on 127.0.0.1 stays allowed).
    ctx = make_context(policy=EgressPolicy.allow_all(), connector=connector)
    local = EgressPolicy(deny=["127.0.0.2/32"])
    async with serving(HttpServer(host="127.0.0.2")) as target, control() as server:
        cp = Checkpoint(settings_for(server.url, policy=local), context=ctx)
        async with cp:
            await server.hello()
            await server.send(sync(("m1", http_def(target.url("/ok")))))
            await eventually(lambda: cp.holdings)
            await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1"))
            envelope = await server.envelope(lambda e: e.request_id == "r1")
            await server.wait_for(lambda: server.of(p.Heartbeat))
    assert envelope.result.error is not None
    assert envelope.result.error.kind is ErrorKind.POLICY_DENIED
    assert target.connections == 0
    assert connector.dialled == []
    assert ctx.dialer.policy == EgressPolicy.allow_all()  # the caller's context is untouched
    assert server.of(p.Heartbeat)[0].policy["deny"] == ["127.0.0.2/32"]


# -- autonomous mode ------------------------------------------------------------------------------


async def test_autonomous_results_made_while_the_control_plane_is_down_arrive_later(
    target: HttpServer,
) -> None:
    server = await FakeControl().start()
    port = server.port
    cp = Checkpoint(settings_for(server.url))
    async with cp:
        await server.hello()
        await server.send(sync(("m1", http_def(target.url("/ok"))), interval=0.05))
        await eventually(lambda: cp.holdings)
        assert not cp.stats["autonomous"]
        await server.stop()  # the control plane goes away
        await eventually(lambda: cp.stats["spool_depth"] >= 5)
        offline = cp.stats
        assert offline["autonomous"]
        assert not offline["connected"]
        produced_offline = offline["results_produced"]
        async with control(port=port) as back:  # and comes back on the same port
            await back.hello()
            await eventually(lambda: not cp.stats["autonomous"])
            await eventually(
                lambda: (
                    cp.stats["results_acked"] == cp.stats["results_produced"]
                    and cp.stats["spool_depth"] == 0
                )
            )
            stats = cp.stats
    received = back.envelopes()
    ids = [e.result_id for e in received]
    assert len(ids) == len(set(ids)) >= produced_offline
    assert stats["results_acked"] == stats["results_produced"]
    assert all(e.reason == "scheduled" and e.request_id is None for e in received)
    assert all(e.monitor_id == "m1" and e.result.ok for e in received)
    assert server.envelopes() == []  # nothing was scheduled while connected in driven mode
    assert server.bad_frames == back.bad_frames == []


async def test_the_control_plane_can_switch_on_the_local_schedule(target: HttpServer) -> None:
    async with control() as server, Checkpoint(settings_for(server.url)) as cp:
        await server.hello()
        await server.send(sync(("m1", http_def(target.url("/ok"))), interval=0.05, autonomous=True))
        await server.wait_for(lambda: len(server.envelopes()) >= 3)
        assert cp.stats["autonomous"]
        await server.send(sync(("m1", http_def(target.url("/ok"))), interval=0.05))
        await eventually(lambda: not cp.stats["autonomous"])
        await asyncio.sleep(0.05)
        count = len(server.envelopes())
        await asyncio.sleep(0.2)
        assert len(server.envelopes()) == count
    assert {e.reason for e in server.envelopes()} == {"scheduled"}


async def test_no_local_schedule_when_autonomy_is_switched_off(target: HttpServer) -> None:
    server = await FakeControl().start()
    settings = settings_for(server.url, autonomous_when_disconnected=False)
    async with Checkpoint(settings) as cp:
        await server.hello()
        await server.send(sync(("m1", http_def(target.url("/ok"))), interval=0.05))
        await eventually(lambda: cp.holdings)
        await server.stop()
        await eventually(lambda: not cp.stats["connected"])
        await asyncio.sleep(0.2)
        assert cp.stats["results_produced"] == 0
        assert not cp.stats["autonomous"]
    assert server.bad_frames == []


# -- draining -------------------------------------------------------------------------------------


async def test_drain_from_the_control_plane_finishes_in_flight_work_then_closes() -> None:
    async def slow(_req: HttpRequest, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.3)
        writer.write(response(200, b"late but fine"))

    async with serving(HttpServer(handler=slow)) as target, control() as server:
        cp = Checkpoint(settings_for(server.url))
        task = asyncio.create_task(cp.run())
        await server.hello()
        await server.send(sync(("m1", http_def(target.url("/"))), interval=60))
        await eventually(lambda: cp.holdings)
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1"))
        await eventually(lambda: cp.stats["in_flight"] == 1)
        await server.send(p.Drain(reason="maintenance"))
        await server.send(p.Run(request_id="r2", reason="adhoc", monitor_id="m1"))
        refused = await server.error(lambda e: e.ref == "r2")
        await asyncio.wait_for(task, WAIT)
    assert refused.message.startswith("draining")
    assert [e.request_id for e in server.envelopes()] == ["r1"]
    assert server.envelopes()[0].result.ok
    assert cp.stats["spool_depth"] == 0
    assert server.close_codes == [1000]


async def test_drain_method_returns_when_done_and_leaves_unacked_results_spooled(
    target: HttpServer, tmp_path: Any
) -> None:
    spool = str(tmp_path / "spool.db")
    async with control(auto_ack=False) as server:
        cp = Checkpoint(settings_for(server.url, spool_path=spool, drain_timeout=0.2))
        task = asyncio.create_task(cp.run())
        await server.hello()
        await server.send(sync(("m1", http_def(target.url("/ok")))))
        await eventually(lambda: cp.holdings)
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1"))
        await server.wait_for(lambda: server.envelopes())
        await asyncio.wait_for(cp.drain(), WAIT)
        assert task.done()
        assert cp.stats["spool_depth"] == 1
        await cp.drain()  # again: nothing to do
    with pytest.raises(RuntimeError, match="only once"):
        await cp.run()


async def test_drain_while_disconnected_does_not_wait() -> None:
    cp = Checkpoint(settings_for(f"ws://127.0.0.1:{closed_port()}/", reconnect_max=5.0))
    task = asyncio.create_task(cp.run())
    await eventually(lambda: cp.stats["connect_failures"] >= 1)
    await asyncio.wait_for(cp.drain(), 1.0)
    assert task.done()


async def test_leaving_the_block_by_an_exception_cancels(target: HttpServer) -> None:
    cp = None

    async def body(server: FakeControl) -> None:
        nonlocal cp
        async with Checkpoint(settings_for(server.url)) as cp:
            await server.hello()
            raise KeyError("boom")

    async with control() as server:
        with pytest.raises(KeyError, match="boom"):
            await body(server)
    assert cp is not None
    assert not cp.connected


# -- observability --------------------------------------------------------------------------------


async def _get(address: tuple[str, int], path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


async def test_metrics_and_ready_endpoints(target: HttpServer) -> None:
    async with control() as server:
        settings = settings_for(server.url, metrics_port=0, instance_id='a"b')
        async with Checkpoint(settings) as cp:
            await server.hello()
            address = cp.metrics_address
            assert address is not None
            await eventually(lambda: cp.connected)
            await server.send(sync(("m1", http_def(target.url("/ok")))))
            await eventually(lambda: cp.holdings)
            await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1"))
            await eventually(lambda: cp.stats["results_acked"] == 1)
            ready = await _get(address, "/ready")
            status, metrics = await _get(address, "/metrics")
            head = await _get(address, "/metrics", "HEAD")
            missing = await _get(address, "/")
            post = await _get(address, "/ready", "POST")
        assert cp.metrics_address is None
    assert ready == (200, "ready\n")
    assert status == 200
    labels = '{checkpoint_id="cp-1",instance_id="a\\"b"}'
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line[0] != "#")
    assert samples[f"probekit_checkpoint_connected{labels}"] == "1.0"
    assert samples[f"probekit_checkpoint_results_total{labels}"] == "1.0"
    assert samples[f"probekit_checkpoint_acked_total{labels}"] == "1.0"
    assert samples[f"probekit_checkpoint_spool_depth{labels}"] == "0.0"
    assert samples[f"probekit_checkpoint_in_flight{labels}"] == "0.0"
    assert samples[f"probekit_checkpoint_reconnects_total{labels}"] == "0.0"
    assert samples[f"probekit_checkpoint_spool_dropped_total{labels}"] == "0.0"
    assert "# TYPE probekit_checkpoint_reconnects_total counter" in metrics
    assert head == (200, "")
    assert missing[0] == 404
    assert post[0] == 405  # a method other than GET or HEAD


async def test_ready_says_503_while_disconnected_and_not_autonomous() -> None:
    url = f"ws://127.0.0.1:{closed_port()}/"
    off = settings_for(url, metrics_port=0, autonomous_when_disconnected=False)
    async with Checkpoint(off) as cp:
        assert cp.metrics_address is not None
        assert (await _get(cp.metrics_address, "/ready"))[0] == 503
    async with Checkpoint(settings_for(url, metrics_port=0)) as cp:
        await eventually(lambda: cp.stats["autonomous"])
        assert cp.metrics_address is not None
        assert (await _get(cp.metrics_address, "/ready"))[0] == 200


async def test_a_busy_metrics_port_fails_at_startup() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        settings = settings_for(f"ws://127.0.0.1:{closed_port()}/", metrics_port=port)
        with pytest.raises(OSError, match="address already in use"):
            async with Checkpoint(settings):
                pass
    finally:
        blocker.close()


# -- privacy and secrecy --------------------------------------------------------------------------


async def test_privacy_switches_strip_addresses_and_messages(target: HttpServer) -> None:
    async with control() as server:
        settings = settings_for(server.url, strip_addresses=True, strip_messages=True)
        async with Checkpoint(settings) as cp:
            await server.hello()
            failing = http_def(
                target.url("/status/500"),
                assertions=[{"type": "body_contains", "text": "secret-ish"}],
            )
            refused = http_def(f"http://127.0.0.1:{closed_port()}/")
            await server.send(
                sync(("ok", http_def(target.url("/ok"))), ("bad", failing), ("off", refused))
            )
            await eventually(lambda: len(cp.holdings) == 3)
            for mid in ("ok", "bad", "off"):
                await server.send(p.Run(request_id=mid, reason="adhoc", monitor_id=mid))
            await server.wait_for(lambda: len(server.envelopes()) == 3)
    results = {e.request_id: e.result for e in server.envelopes()}
    assert all(r.address is None for r in results.values())
    assert results["ok"].ok
    bad = results["bad"]
    assert bad.status is Status.DOWN
    assert bad.error is not None and bad.error.message == ""
    assert bad.assertions and all(a.observed == "" for a in bad.assertions)
    assert results["off"].error is not None and results["off"].error.kind is ErrorKind.CONNECT


def _result(**kw: Any) -> Result:
    base: dict[str, Any] = {
        "kind": "http",
        "target": "https://10.1.2.3/",
        "status": Status.DOWN,
        "started_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "duration": 0.5,
    }
    return Result(**{**base, **kw})


def test_redaction_rules() -> None:
    from probekit.checkpoint._privacy import redact

    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = CertInfo("CN=x", "CN=ca", ("x",), now, now, "ab")
    tls = TlsInfo("TLSv1.3", "AES", server_name="x.internal", chain=(cert,))
    message = "connect to 10.1.2.3:443 and [fe80::1%eth0]:80 failed at 12:30:45 (v1.2.3)"
    result = _result(error=ProbeError(ErrorKind.CONNECT, message), tls=tls, address="10.1.2.3:443")
    plain = settings_for("ws://x/", strip_addresses=False)
    assert redact(result, plain) is result
    stripped = redact(result, settings_for("ws://x/", strip_addresses=True, strip_tls_chain=True))
    assert stripped.address is None
    assert stripped.error is not None
    assert stripped.error.message == (
        "connect to <address>:443 and [<address>]:80 failed at 12:30:45 (v1.2.3)"
    )
    assert stripped.tls is not None and stripped.tls.chain == ()
    assert stripped.tls.server_name == "x.internal"
    assert stripped.target == result.target  # the control plane's own definition


def test_results_frames_are_what_the_protocol_encodes() -> None:
    from probekit.checkpoint._channel import frames, payload
    from probekit.checkpoint._spool import Entry

    envelopes = [
        p.ResultEnvelope(
            result_id=f"id{i}",
            monitor_id="m",
            request_id=None,
            reason="scheduled",
            instance_id="i",
            result=_result(metrics={"status_code": 200.0}, error=ProbeError(ErrorKind.TLS, "ü")),
        )
        for i in range(3)
    ]
    entries = [Entry(e.result_id, payload(e), "m", i, 0.0) for i, e in enumerate(envelopes)]
    ((frame, ids),) = frames(entries)
    assert ids == ["id0", "id1", "id2"]
    assert p.decode(frame) == p.Results(results=tuple(envelopes))
    assert frame.decode() == p.encode(p.Results(results=tuple(envelopes)))


def test_frames_stay_under_the_protocol_limit() -> None:
    from probekit.checkpoint._channel import frames as make_frames
    from probekit.checkpoint._spool import Entry

    big = b'{"x":"' + b"a" * 300_000 + b'"}'
    frames = make_frames([Entry(f"id{i}", big, None, i, 0.0) for i in range(10)])
    assert [len(ids) for _, ids in frames] == [3, 3, 3, 1]
    assert all(len(frame) <= p.MAX_FRAME_BYTES for frame, _ in frames)


def test_a_result_json_cannot_carry_is_sent_without_the_details() -> None:
    from probekit.checkpoint._channel import payload

    def envelope(result: Result) -> p.ResultEnvelope:
        return p.ResultEnvelope(
            result_id="x",
            monitor_id="m",
            request_id=None,
            reason="scheduled",
            instance_id="i",
            result=result,
        )

    nan = _result(metrics={"a": math.nan, "b": 1.0}, error=ProbeError(ErrorKind.PROTOCOL, "\udcff"))
    frame = p.encode(p.Results(results=()))[:-3] + "[" + payload(envelope(nan)).decode() + "]}"
    (back,) = p.decode(frame).results  # type: ignore[union-attr]
    assert back.result.status is Status.DOWN
    assert back.result.metrics == {"b": 1.0}
    assert back.result.error is not None and back.result.error.message == "\\udcff"
    huge = _result(error=ProbeError(ErrorKind.PROTOCOL, "x" * 2_000_000))
    assert len(payload(envelope(huge))) < 10_000


async def test_the_token_never_reaches_the_logs(
    target: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("websockets", "websockets.client", "probekit", "probekit.checkpoint"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        async with control() as server, Checkpoint(settings_for(server.url)) as cp:
            await server.hello()
            await server.send(sync(("m1", http_def(target.url("/ok")))))
            await eventually(lambda: cp.holdings)
            await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1"))
            await server.envelope(lambda e: True)
            await server.send("garbage")
            await server.error(lambda e: e.code == "bad_json")
        async with control(token="other") as server, Checkpoint(settings_for(server.url)):
            await eventually(lambda: server.rejected >= 2)
    finally:
        for name in ("websockets", "websockets.client", "probekit", "probekit.checkpoint"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    ours = [r for r in caplog.records if not r.name.startswith(SERVER_LOG.name)]
    assert any(r.name == "websockets.client" for r in ours)  # its debug output was captured
    assert any("Authorization" in r.getMessage() for r in ours)  # ... including the header line
    for record in ours:
        text = record.getMessage() + str(record.exc_text or "")
        assert TOKEN not in text, record.name


async def test_a_silent_peer_is_detected_by_pings_and_replaced(target: HttpServer) -> None:
    async with control() as server:
        settings = settings_for(server.url, ping_interval=0.1, ping_timeout=0.1)
        async with Checkpoint(settings) as cp:
            await server.hello()
            loop = asyncio.get_running_loop()
            server.connections[0].transport.pause_reading()  # alive, but deaf: no pongs
            start = loop.time()
            await server.hello(2)  # a new connection replaced the deaf one
            replaced = loop.time() - start
            server.connections[0].transport.resume_reading()
            assert cp.connected
            assert cp.stats["reconnects"] == 1
    # ping_interval + 2 * ping_timeout to give up, at most reconnect_initial of backoff, slack
    assert replaced < 0.1 + 2 * 0.1 + 0.05 + 0.35


# -- TLS and bounds --------------------------------------------------------------------------------


async def test_wss_verifies_the_control_plane_against_the_given_ca(
    good_tls: ssl.SSLContext, ca_pem: str, tmp_path: Any
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca_pem)
    async with control(tls=good_tls) as server:
        assert server.url.startswith("wss://127.0.0.1:")
        settings = settings_for(server.url, insecure=False, ca_file=str(ca_file))
        async with Checkpoint(settings) as cp:
            await server.hello()
            assert cp.connected


async def test_wss_refuses_a_control_plane_it_cannot_verify(good_tls: ssl.SSLContext) -> None:
    async with control(tls=good_tls) as server:
        async with Checkpoint(settings_for(server.url, insecure=False)) as cp:
            await eventually(lambda: cp.stats["connect_failures"] >= 2)
            assert not cp.connected
        assert server.of(p.Hello) == []


async def test_wss_to_a_plain_control_plane_says_so_and_what_to_change(
    ca_pem: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10: this logged ``ConnectionResetError: `` and nothing else."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca_pem)
    async with control() as server:
        url = server.url.replace("ws://", "wss://")
        settings = settings_for(url, insecure=False, ca_file=str(ca_file))
        with caplog.at_level(logging.WARNING, logger="probekit.checkpoint"):
            async with Checkpoint(settings) as cp:
                await eventually(lambda: cp.stats["connect_failures"] >= 1)
                await eventually(lambda: "cannot connect" in caplog.text)
        assert server.of(p.Hello) == []
    (line, *_) = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert "TLS handshake failed" in line and "serves plain ws://" in line, line
    assert "tls_cert and tls_key" in line and "ws://... and pass --insecure" in line
    assert TOKEN not in caplog.text


async def test_ws_to_a_tls_control_plane_says_so_and_what_to_change(
    good_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    async with control(tls=good_tls) as server:
        url = server.url.replace("wss://", "ws://")
        with caplog.at_level(logging.WARNING, logger="probekit.checkpoint"):
            async with Checkpoint(settings_for(url)) as cp:
                await eventually(lambda: cp.stats["connect_failures"] >= 1)
                await eventually(lambda: "cannot connect" in caplog.text)
        assert server.of(p.Hello) == []
    (line, *_) = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert "serves TLS (wss://)" in line and "change the URL to wss://" in line, line
    assert TOKEN not in caplog.text


async def test_an_unrelated_connection_failure_is_not_called_a_tls_mismatch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"ws://127.0.0.1:{closed_port()}/checkpoint"
    with caplog.at_level(logging.WARNING, logger="probekit.checkpoint"):
        async with Checkpoint(settings_for(url)) as cp:
            await eventually(lambda: cp.stats["connect_failures"] >= 1)
            await eventually(lambda: "cannot connect" in caplog.text)
    assert "TLS" not in caplog.text and "retrying in" in caplog.text


async def test_an_untrusted_certificate_names_the_ca_file_setting(
    good_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    async with control(tls=good_tls) as server:
        with caplog.at_level(logging.ERROR, logger="probekit.checkpoint"):
            async with Checkpoint(settings_for(server.url, insecure=False)) as cp:
                await eventually(lambda: cp.stats["connect_failures"] >= 1)
                await eventually(lambda: "cannot verify" in caplog.text)
    assert "--ca-file" in caplog.text


async def test_a_full_spool_drops_the_oldest_and_counts_them(target: HttpServer) -> None:
    async with control(auto_ack=False) as server:
        settings = settings_for(server.url, spool_max_entries=3, metrics_port=0)
        async with Checkpoint(settings) as cp:
            await server.hello()
            definition = http_def(target.url("/ok"))
            await server.send(sync(("m1", definition), interval=0.02, autonomous=True))
            await eventually(lambda: cp.stats["spool_dropped"] >= 3)
            assert cp.stats["spool_depth"] == 3
            assert cp.metrics_address is not None
            _, metrics = await _get(cp.metrics_address, "/metrics")
    dropped = next(
        line
        for line in metrics.splitlines()
        if line.startswith("probekit_checkpoint_spool_dropped_total{")
    )
    assert float(dropped.rsplit(" ", 1)[1]) >= 3


async def test_the_oldest_unacked_age_and_results_lost_are_metrics(target: HttpServer) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def samples(text: str) -> dict[str, float]:
        return {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async with (
        control(auto_ack=False) as server,
        Checkpoint(settings_for(server.url, metrics_port=0)) as cp,
    ):
        await server.hello()
        assert cp.metrics_address is not None
        assert cp.stats["oldest_unacked_seconds"] == 0  # an empty spool
        await server.send(sync(("m1", http_def(target.url("/ok")))))
        await eventually(lambda: cp.holdings == {"m1": 1})
        await server.send(p.Run(request_id="r1", reason="adhoc", monitor_id="m1"))
        envelope = await server.envelope(lambda e: e.request_id == "r1")
        await eventually(lambda: cp.stats["spool_depth"] == 1)
        await asyncio.sleep(0.3)
        _, before = await _get(cp.metrics_address, "/metrics")
        await server.send(p.Ack(result_ids=(envelope.result_id,)))
        await eventually(lambda: cp.stats["spool_depth"] == 0)
        _, after = await _get(cp.metrics_address, "/metrics")
        stats = cp.stats
    assert samples(before)["probekit_checkpoint_oldest_unacked_seconds"] >= 0.3
    assert samples(after)["probekit_checkpoint_oldest_unacked_seconds"] == 0
    assert samples(after)["probekit_checkpoint_results_lost_total"] == 0
    assert stats["oldest_unacked_seconds"] == 0
    assert {
        f.name: f.type for f in text_string_to_metric_families(after) if "unacked" in f.name
    } == {"probekit_checkpoint_oldest_unacked_seconds": "gauge"}


def test_results_lost_is_its_own_counter_next_to_spool_dropped() -> None:
    from probekit.checkpoint._metrics import metrics_text

    stats = {
        **dict.fromkeys(
            (
                *("in_flight", "queue_depth", "spool_depth", "reconnects", "connected"),
                "standby_moves",
                *("autonomous", "definitions", "results_produced", "results_acked"),
            ),
            0,
        ),
        "spool_dropped": 4,
        "results_lost": 2,
        "oldest_unacked_seconds": 12.5,
    }
    text = metrics_text(stats, "cp", "a")
    labels = '{checkpoint_id="cp",instance_id="a"}'
    assert f"probekit_checkpoint_results_lost_total{labels} 2.0\n" in text
    assert f"probekit_checkpoint_spool_dropped_total{labels} 4.0\n" in text
    assert f"probekit_checkpoint_oldest_unacked_seconds{labels} 12.5\n" in text


async def test_checks_can_run_in_worker_processes(target: HttpServer) -> None:
    """processes=2: the checkpoint's checks run in a ProcessRunner; results flow as usual."""
    async with control() as server:
        settings = settings_for(server.url, processes=2, max_concurrency=4)
        async with Checkpoint(settings) as cp:
            await server.hello()
            await server.send(sync(("m1", http_def(target.url("/ok")))))
            await eventually(lambda: cp.holdings == {"m1": 1})
            for i in range(4):
                await server.send(p.Run(request_id=f"r{i}", reason="adhoc", monitor_id="m1"))
            envelopes = [
                await server.envelope(lambda e, i=i: e.request_id == f"r{i}") for i in range(4)
            ]
            await eventually(lambda: cp.stats["results_acked"] == 4)
            stats = cp.stats
            pool = cp._runner  # white-box: the checks really ran in worker processes
            assert isinstance(pool, probekit.ProcessRunner)
            assert len(pool.pids) == 2
    assert [e.result.status for e in envelopes] == [Status.UP] * 4
    assert all(e.result.address == f"127.0.0.1:{target.port}" for e in envelopes)
    assert stats["in_flight"] == 0
    assert stats["results_produced"] == 4


def test_worker_processes_refuse_a_context_they_cannot_have(
    connector: GuardedConnector,
) -> None:
    settings = settings_for("ws://127.0.0.1:1/", processes=2)
    with pytest.raises(DefinitionError) as info:
        Checkpoint(settings, context=make_context(connector=connector))
    assert info.value.path == "context"
    assert "connector" in str(info.value)


async def test_an_instance_restarted_during_an_outage_runs_the_definitions_it_kept(
    target: HttpServer, tmp_path: Any
) -> None:
    """The held definitions are kept in the spool: a new instance on the same spool, started
    while the control plane is away, runs them on the local schedule, and reports them in its
    hello when the control plane is back (so that only what changed is sent)."""
    spool = str(tmp_path / "spool.db")
    async with control() as server:
        port = server.port
        async with Checkpoint(settings_for(server.url, spool_path=spool)) as cp:
            await server.hello()
            await server.send(sync(("m1", http_def(target.url("/ok"))), interval=0.05))
            await eventually(lambda: cp.holdings == {"m1": 1})
    # The control plane is down; a new instance starts on the same spool.
    async with Checkpoint(settings_for(f"ws://127.0.0.1:{port}/", spool_path=spool)) as again:
        assert again.holdings == {"m1": 1}
        await eventually(lambda: again.stats["results_produced"] >= 3)
        offline = again.stats
        async with control(port=port) as back:
            hello = await back.hello()
            await eventually(lambda: again.stats["results_acked"] >= offline["results_produced"])
    assert offline["autonomous"] and not offline["connected"]
    assert hello.holdings == {"m1": 1}
    received = back.envelopes()
    assert received and all(e.monitor_id == "m1" and e.result.ok for e in received)


async def test_a_kept_definition_that_no_longer_builds_is_dropped(
    target: HttpServer, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    spool = str(tmp_path / "spool.db")
    async with control() as server:
        async with Checkpoint(settings_for(server.url, spool_path=spool)) as cp:
            await server.hello()
            secret_def = http_def(target.url("/ok"), bearer_token={"secret": "api"})
            good = ("ok", http_def(target.url("/ok")))
            await server.send(sync(good, ("needs-secret", secret_def)))
            # Refused at sync time already: no secret "api" here.
            await eventually(lambda: cp.holdings == {"ok": 1})
        with Spool(spool) as raw:  # as if an older version had kept one that now fails
            rows = raw.load_definitions()
            raw.save_definitions([*rows, ("stale", 1, 60.0, json.dumps(secret_def))])
        async with Checkpoint(settings_for(server.url, spool_path=spool)) as again:
            assert again.holdings == {"ok": 1}
    assert "stale" in caplog.text and "dropped" in caplog.text


async def test_kept_definitions_do_not_run_locally_while_the_control_plane_answers(
    target: HttpServer, tmp_path: Any
) -> None:
    """At start-up the local schedule waits for a failed connection attempt: with the control
    plane reachable, definitions kept in the spool are only reported, not run."""
    spool = str(tmp_path / "spool.db")
    async with control() as server:
        async with Checkpoint(settings_for(server.url, spool_path=spool)) as cp:
            await server.hello()
            await server.send(sync(("m1", http_def(target.url("/ok"))), interval=0.02))
            await eventually(lambda: cp.holdings == {"m1": 1})
        served = target.connections
        server.handshake_delay = 0.3  # a slow start: fifteen intervals before connected
        async with Checkpoint(settings_for(server.url, spool_path=spool)) as again:
            await eventually(lambda: again.stats["connected"])
            await asyncio.sleep(0.1)
            stats = again.stats
    assert stats["results_produced"] == 0
    assert not stats["autonomous"]
    assert target.connections == served
