"""The worker process of :class:`probekit.ProcessRunner` (``python -m probekit._worker``).

It talks to its parent over its standard input and output, in frames: a 4-byte big-endian
length, then a pickle. The parent is the only peer, and it is the same program, so pickle is
the right tool (it carries any probe class the parent can import, and costs about 9 µs per
result). Secrets travel as pickle persistent IDs, since :class:`Secret` refuses to pickle.

1. parent → worker: one settings dict (runner limits, egress policy, event loop, sys.path);
2. worker → parent: ``("ready", pid, loop module)``;
3. parent → worker: batches ``[(seq, probe pickle, seconds left or None), ...]`` (the seconds
   left until the check's deadline when the batch was sent; the worker rebuilds an absolute
   deadline on its own monotonic clock); worker → parent: batches
   ``[(seq, Result), ...]`` as checks finish, in completion order;
4. end of the parent's stream: the worker finishes what it has, sends it, and exits.

Log records go to standard error as one JSON array per line, which the parent re-logs; stray
writes to standard output land on standard error too, so they cannot corrupt the frames.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import pickle
import struct
import sys
import time
from typing import Any, BinaryIO

from ._context import ProbeContext
from ._dial import Dialer
from ._resolver import AiodnsResolver, Resolver, StaticResolver
from ._result import Result
from ._runner import Runner, unknown_result
from ._secret import Secret

__all__ = ["HEADER", "MAX_FRAME", "dumps", "loads", "main"]

log = logging.getLogger("probekit.worker")

HEADER = struct.Struct(">I")
#: A frame larger than this is a corrupt stream, not a real batch.
MAX_FRAME = 256 * 1024 * 1024
_CACHE = 4096


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is Secret:
            return ("secret", obj.reveal())
        return None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "secret":
            return Secret(pid[1])
        raise pickle.UnpicklingError(f"unknown persistent id {type(pid).__name__}")


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` for the other side, carrying :class:`Secret` values."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    return _Unpickler(io.BytesIO(data)).load()


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return json.dumps([record.levelno, record.name, text])


def _frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def _read_settings(stream: BinaryIO) -> dict[str, Any]:
    header = stream.read(HEADER.size)
    if len(header) != HEADER.size:
        raise SystemExit("probekit worker: no settings from the parent")
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise SystemExit("probekit worker: settings frame too large")
    settings = loads(stream.read(size))
    if not isinstance(settings, dict):
        raise SystemExit("probekit worker: bad settings")
    return settings


def _context(dialing: dict[str, Any]) -> ProbeContext:
    """The worker's ProbeContext, rebuilt from what the parent sent (see worker_dialing)."""
    kind, *options = dialing["resolver"]
    resolver: Resolver
    if kind == "static":
        resolver = StaticResolver(options[0])
    else:
        nameservers, tries = options
        resolver = AiodnsResolver(nameservers, tries=tries)
    dialer = Dialer(
        policy=dialing["policy"],
        resolver=resolver,
        prefer=dialing["prefer"],
        family=dialing["family"],
        source_address=dialing["source_address"],
    )
    return ProbeContext(dialer=dialer, secrets=dialing["secrets"])


async def _serve(settings: dict[str, Any], frames_out: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    out_pipe = os.fdopen(frames_out, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, out_pipe)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    writer.write(_frame(dumps(("ready", os.getpid(), type(loop).__module__))))

    outbox: list[tuple[int, Result]] = []
    flush_scheduled = False

    def flush() -> None:
        nonlocal flush_scheduled
        flush_scheduled = False
        if not outbox:
            return
        batch = list(outbox)
        outbox.clear()
        try:
            payload = dumps(batch)
        except Exception:  # noqa: BLE001 - one bad result must not lose the others
            good = []
            for seq, result in batch:
                try:
                    dumps(result)
                except Exception as exc:  # noqa: BLE001
                    result = unknown_result(result, f"the result could not be sent back: {exc!r}")
                good.append((seq, result))
            payload = dumps(good)
        writer.write(_frame(payload))

    def deliver(seq: int, result: Result) -> None:
        nonlocal flush_scheduled
        outbox.append((seq, result))
        if not flush_scheduled:
            flush_scheduled = True
            loop.call_soon(flush)

    context = _context(settings["dialing"])
    probes: dict[bytes, object] = {}
    tasks: set[asyncio.Task[None]] = set()

    async with Runner(
        settings["max_concurrency"],
        per_host=settings["per_host"],
        retries=settings["retries"],
        retry_backoff=settings["retry_backoff"],
        retry_backoff_max=settings["retry_backoff_max"],
        grace=settings["grace"],
        context=context,
    ) as runner:

        async def one(seq: int, payload: bytes, remaining: float | None) -> None:
            deadline = None if remaining is None else time.monotonic() + remaining
            probe = probes.get(payload)
            if probe is None:
                try:
                    probe = loads(payload)
                except Exception as exc:  # noqa: BLE001 - reported as this check's result
                    deliver(
                        seq, unknown_result(None, f"the worker could not load the probe: {exc!r}")
                    )
                    return
                if len(probes) >= _CACHE:
                    probes.clear()
                probes[payload] = probe
            deliver(seq, await runner.check(probe, deadline=deadline))  # type: ignore[arg-type]

        while True:
            try:
                header = await reader.readexactly(HEADER.size)
                (size,) = HEADER.unpack(header)
                if size > MAX_FRAME:
                    raise ValueError(f"frame of {size} bytes")
                # S301: the only peer is the parent process that started us.
                batch = pickle.loads(await reader.readexactly(size))  # noqa: S301
            except asyncio.IncompleteReadError:
                break  # the parent closed our input: finish and leave
            for seq, payload, remaining in batch:
                task = loop.create_task(one(seq, payload, remaining))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await writer.drain()
        if tasks:
            await asyncio.gather(*tasks)
        flush()
        await writer.drain()
    writer.close()


def main() -> None:
    settings = _read_settings(sys.stdin.buffer)
    sys.path[:] = settings["sys_path"]
    # Frames go to a private copy of standard output; fd 1 becomes standard error, so a stray
    # print() from a probe cannot corrupt them.
    frames_out = os.dup(1)
    os.dup2(2, 1)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    root = logging.getLogger("probekit")
    root.addHandler(handler)
    root.setLevel(settings["log_level"])
    root.propagate = False
    name = settings["loop"]
    if name == "uvloop":
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(settings, frames_out))


if __name__ == "__main__":
    main()
