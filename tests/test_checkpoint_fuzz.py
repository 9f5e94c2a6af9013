"""Hypothesis: whatever frames a control plane sends, the checkpoint answers bad ones with an
``error`` (or, for a bad version, a clean close and a reconnect) and keeps serving good ones."""

from __future__ import annotations

import asyncio
import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from probekit import Secret
from probekit import protocol as p
from probekit.checkpoint import Checkpoint, CheckpointSettings

TOKEN = "fuzz-token-5#k"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
frames = st.one_of(
    st.text(max_size=100),
    json_values.map(json.dumps),
    st.builds(
        lambda t, extra: json.dumps({"type": t, "version": 1, **extra}),
        st.sampled_from(["sync", "run", "ack", "drain", "error", "hello", "results", "nope"]),
        st.dictionaries(
            st.sampled_from(
                [
                    "full",
                    "revision",
                    "upserts",
                    "deletes",
                    "request_id",
                    "reason",
                    "monitor_id",
                    "result_ids",
                ]
            ),
            json_values,
            max_size=4,
        ),
    ),
)


@settings(max_examples=30, deadline=None)
@given(batch=st.lists(frames, min_size=1, max_size=4))
def test_random_frames_from_the_control_plane(batch: list[str]) -> None:
    asyncio.run(_scenario([f for f in batch if not _is_valid_drain(f)]))


def _is_valid_drain(frame: str) -> bool:
    """A well-formed ``drain`` ends the checkpoint on purpose (tested elsewhere)."""
    try:
        return isinstance(p.decode(frame), p.Drain)
    except p.ProtocolError:
        return False


async def _scenario(batch: list[str]) -> None:
    replies: list[p.Message] = []
    done = asyncio.Event()
    connections = 0

    async def handler(conn: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionClosed):
            hello = p.decode(await conn.recv())
            assert isinstance(hello, p.Hello)
            if connections == 1:  # a frame that ends the connection must not end every one
                for frame in batch:
                    await conn.send(frame)
            definition = {"kind": "tcp", "host": "127.0.0.1", "port": 9}
            sync = p.Sync(
                full=True,
                revision=1,
                upserts=(
                    p.MonitorDefinition(
                        monitor_id="m", revision=1, interval=60, definition=definition
                    ),
                ),
                deletes=(),
            )
            await conn.send(p.encode(sync))
            await conn.send(p.encode(p.Run(request_id="r1", reason="adhoc", monitor_id="m")))
            async for frame in conn:
                message = p.decode(frame)
                replies.append(message)
                if isinstance(message, p.Results) and any(
                    e.request_id == "r1" for e in message.results
                ):
                    await conn.send(
                        p.encode(p.Ack(result_ids=tuple(e.result_id for e in message.results)))
                    )
                    done.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        settings_ = CheckpointSettings(
            url=f"ws://127.0.0.1:{port}/",
            token=Secret(TOKEN),
            checkpoint_id="c",
            instance_id="i",
            spool_path=":memory:",
            insecure=True,
            reconnect_initial=0.01,
            reconnect_max=0.05,
            heartbeat_interval=5,
        )
        async with Checkpoint(settings_) as checkpoint:
            async with asyncio.timeout(10):
                await done.wait()
            assert checkpoint.stats["results_produced"] >= 1
    errors = [m for m in replies if isinstance(m, p.Error)]
    assert all(e.code in p.ERROR_CODES for e in errors)
    assert connections <= 2  # at most one reconnect, after a frame that closes the channel
