"""ProcessRunner: a Runner per worker process, so that one machine's cores all run checks.

One Python process runs checks on one core. On a checkpoint with several cores, a
:class:`ProcessRunner` starts that many worker processes (``python -m probekit._worker``), each
with its own event loop and :class:`Runner`, and hands them the probes; results come back as a
stream, like :meth:`Runner.stream`. See :mod:`probekit._worker` for the wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Final, Literal, Self

from ._clock import SystemClock
from ._context import ProbeContext
from ._dial import Dialer, tcp_connect
from ._exceptions import DefinitionError
from ._policy import EgressPolicy
from ._resolver import AiodnsResolver, StaticResolver
from ._result import Result
from ._runner import (
    Job,
    Work,
    _attr,
    _check_source,
    _host_key,
    _label,
    _natural,
    check_deadline,
    checked_limits,
    pull,
    unknown_result,
)
from ._validate import check_seconds
from ._worker import HEADER, MAX_FRAME, dumps
from .probes._base import Probe

__all__ = ["ProcessRunner"]

log = logging.getLogger("probekit.pool")

LoopName = Literal["auto", "asyncio", "uvloop"]
_CACHE: Final = 4096
_STOP_WAIT: Final = 2.0


def worker_dialing(context: ProbeContext | None, policy: EgressPolicy | None) -> dict[str, Any]:
    """What of a context the worker processes can have: policy, resolver, address options and
    secrets. Raises :class:`DefinitionError` for what cannot cross a process boundary."""
    if context is not None and policy is not None:
        raise DefinitionError("policy", "give policy or context, not both")
    if context is None:
        context = ProbeContext(dialer=Dialer(policy=policy or EgressPolicy()))
    if not isinstance(context, ProbeContext):
        raise DefinitionError("context", f"must be a ProbeContext, got {type(context).__name__}")
    dialer = context.dialer
    if dialer.connector is not tcp_connect:
        raise DefinitionError(
            "context", "a custom connector cannot be used in worker processes; use a Runner"
        )
    if type(context.clock) is not SystemClock:
        raise DefinitionError(
            "context", "a custom clock cannot be used in worker processes; use a Runner"
        )
    resolver = dialer.resolver
    if type(resolver) is AiodnsResolver:
        portable: object = ("aiodns", resolver.nameservers, resolver.tries)
    elif type(resolver) is StaticResolver:
        answers = {name: [str(a) for a in found] for name, found in resolver.answers.items()}
        portable = ("static", answers)
    else:
        raise DefinitionError(
            "context",
            f"a {type(resolver).__name__} cannot be used in worker processes; use a Runner",
        )
    return {
        "policy": dialer.policy,
        "resolver": portable,
        "prefer": dialer.prefer,
        "family": dialer.family,
        "source_address": dialer.source[0] if dialer.source else None,
        "secrets": dict(context.secrets),
    }


class _Done:
    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


#: A result for the stream, the producer's end (with the count) or failure, or None: closed.
_Item = tuple[int, Result] | _Done | _Failed | None


class _Stream:
    __slots__ = ("queue", "window")

    def __init__(self, window: int) -> None:
        self.window = asyncio.Semaphore(window)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()


class _Pending:
    __slots__ = ("index", "probe", "stream")

    def __init__(self, stream: _Stream, index: int, probe: object) -> None:
        self.stream = stream
        self.index = index
        self.probe = probe


class _Worker:
    """One worker process and what it has been sent."""

    def __init__(self, slot: int, capacity: int) -> None:
        self.slot = slot
        self.capacity = capacity
        self.process: asyncio.subprocess.Process | None = None
        self.pending: dict[int, _Pending] = {}
        #: (seq, probe pickle, absolute deadline or None), not yet sent to the process.
        self.outbox: list[tuple[int, bytes, float | None]] = []
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.sender: asyncio.Task[None] | None = None
        self.relays: list[asyncio.Task[None]] = []  # log relays, one per process started
        self.alive = False
        self.broken: str | None = None  # why the slot could not be (re)started

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


class ProcessRunner:
    """Run probes in worker processes, each with its own event loop and :class:`Runner`.

    Use it like a :class:`Runner`, as an async context manager::

        async with ProcessRunner(processes=2, max_concurrency=128) as pool:
            async for result in pool.stream(probes):
                ...

    * ``processes`` worker processes are started on entry (default: the number of CPUs);
      ``max_concurrency`` is the total over all of them, split evenly, so there are never more
      processes than ``max_concurrency``. The other limits are those of :class:`Runner`.
    * Probes are sent to the workers by pickle: any probe class the parent can import works
      (the workers get the parent's ``sys.path``), and :class:`Secret` values are carried to the
      workers over the pipe (never written anywhere else). A probe that cannot be pickled gives
      an ``UNKNOWN``/``internal`` result saying so.
    * Each check goes to the least busy worker. With ``per_host`` set, all probes of one host
      go to the same worker, so the per-host limit holds over the whole pool.
    * ``policy`` is the egress policy of every worker (the default policy when None). Or give
      a ``context``: its dialer's policy, resolver (:class:`AiodnsResolver` with its name
      servers, or :class:`StaticResolver`), address preference, family and source address, and
      its secrets, are given to every worker. What cannot cross a process boundary (a custom
      connector, resolver class or clock) is refused with a :class:`DefinitionError`: use a
      :class:`Runner` for those.
    * If a worker process dies, every check it was running gives ``UNKNOWN``/``internal``
      ("worker process ... exited"), and the worker is started again for what follows
      (``restarts`` counts this). A worker that cannot be started takes no more checks.
    * ``loop`` chooses the workers' event loop: ``"auto"`` is uvloop when it is importable.
    * Worker log records are logged again in this process, under their own logger names.
    * Leaving the ``async with`` block stops the workers (what they are still running is
      abandoned) and waits for them to exit.
    """

    def __init__(
        self,
        processes: int | None = None,
        max_concurrency: int = 100,
        *,
        per_host: int | None = None,
        retries: int = 0,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 10.0,
        grace: float = 0.1,
        policy: EgressPolicy | None = None,
        context: ProbeContext | None = None,
        loop: LoopName = "auto",
        start_timeout: float = 30.0,
    ) -> None:
        wanted = (os.cpu_count() or 1) if processes is None else processes
        wanted = _natural("processes", wanted, 1)
        (
            self._max_concurrency,
            self._per_host,
            self._retries,
            self._retry_backoff,
            self._retry_backoff_max,
            self._grace,
        ) = checked_limits(
            max_concurrency, per_host, retries, retry_backoff, retry_backoff_max, grace
        )
        self._start_timeout = check_seconds("start_timeout", start_timeout, zero=True)
        if policy is not None and not isinstance(policy, EgressPolicy):
            raise DefinitionError("policy", f"must be an EgressPolicy, got {type(policy).__name__}")
        self._dialing = worker_dialing(context, policy)
        if loop not in ("auto", "asyncio", "uvloop"):
            raise DefinitionError("loop", f"expected auto, asyncio or uvloop, got {loop!r}")
        if loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                raise DefinitionError("loop", "uvloop is not installed") from None
        self._loop_name = loop
        count = min(wanted, self._max_concurrency)
        share, extra = divmod(self._max_concurrency, count)
        self._workers = [_Worker(i, share + (i < extra)) for i in range(count)]
        self._state = "new"
        self._seq = 0
        self._restarts = 0
        self._streams: set[_Stream] = set()
        self._payloads: dict[int, tuple[object, bytes]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def processes(self) -> int:
        """How many worker processes the pool runs."""
        return len(self._workers)

    @property
    def in_flight(self) -> int:
        """Checks sent to the workers and not answered yet (running or waiting for a slot)."""
        return sum(len(w.pending) - len(w.outbox) for w in self._workers)

    @property
    def restarts(self) -> int:
        """How many times a worker process had to be started again after it died."""
        return self._restarts

    @property
    def pids(self) -> tuple[int, ...]:
        """The process IDs of the running workers."""
        return tuple(w.pid for w in self._workers if w.alive and w.pid is not None)

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a ProcessRunner can be entered only once; create a new one")
        self._state = "open"
        try:
            await asyncio.gather(*(self._start(w) for w in self._workers))
        except BaseException:
            await self.aclose()
            raise
        broken = [w.broken for w in self._workers if w.broken]
        if broken:
            await self.aclose()
            raise RuntimeError(f"could not start the worker processes: {broken[0]}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the workers and wait for them to exit; the pool cannot be used again."""
        self._state = "closed"
        for stream in self._streams:
            stream.queue.put_nowait(None)
        await asyncio.gather(*(self._stop(w) for w in self._workers))

    def _require_open(self) -> None:
        if self._state == "new":
            raise RuntimeError(
                "the ProcessRunner is not open: use it as `async with ProcessRunner(...) as pool:`"
            )
        if self._state == "closed":
            raise RuntimeError("the ProcessRunner is closed: its `async with` block has ended")

    def _settings(self, worker: _Worker) -> dict[str, Any]:
        loop = self._loop_name
        if loop == "auto":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                loop = "asyncio"
            else:
                loop = "uvloop"
        return {
            "slot": worker.slot,
            "max_concurrency": worker.capacity,
            "per_host": self._per_host,
            "retries": self._retries,
            "retry_backoff": self._retry_backoff,
            "retry_backoff_max": self._retry_backoff_max,
            "grace": self._grace,
            "dialing": self._dialing,
            "loop": loop,
            "sys_path": list(sys.path),
            "log_level": logging.getLogger("probekit").getEffectiveLevel(),
        }

    async def _start(self, worker: _Worker) -> None:
        """Start (or restart) the worker process of ``worker``'s slot and wait until ready."""
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "probekit._worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=2**20,
            )
        except OSError as exc:
            worker.broken = f"cannot start {sys.executable}: {exc}"
            log.error("worker %d: %s", worker.slot, worker.broken)
            return
        worker.process = process
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        worker.relays.append(asyncio.create_task(self._relay_logs(worker, process.stderr)))
        settings = dumps(self._settings(worker))
        process.stdin.write(HEADER.pack(len(settings)) + settings)
        try:
            async with asyncio.timeout(self._start_timeout):
                ready = await self._read_frame(process.stdout)
        except (TimeoutError, asyncio.IncompleteReadError, ValueError, pickle.PickleError) as exc:
            worker.broken = f"worker process did not start: {exc!r}"
            log.error("worker %d: %s", worker.slot, worker.broken)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return
        except BaseException:
            # Cancelled while starting (the pool is closing): leave no process behind.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(_STOP_WAIT):
                    await process.wait()
            raise
        log.debug("worker %d ready: %r", worker.slot, ready)
        worker.alive = True
        worker.broken = None
        worker.tasks.append(asyncio.create_task(self._receive(worker, process)))
        worker.sender = asyncio.create_task(self._send(worker, process))
        worker.tasks.append(worker.sender)
        if worker.outbox:
            worker.wake.set()

    async def _stop(self, worker: _Worker) -> None:
        worker.alive = False
        process = worker.process
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # what it still runs is abandoned, as Runner.aclose cancels
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_WAIT):
                    await process.wait()
        for task in worker.tasks:
            task.cancel()
        await asyncio.gather(*worker.tasks, return_exceptions=True)
        worker.tasks.clear()
        # What a worker logged before it stopped is still in its stderr pipe: relay it all.
        if worker.relays:
            _done, late = await asyncio.wait(worker.relays, timeout=_STOP_WAIT)
            for task in late:
                task.cancel()
            await asyncio.gather(*worker.relays, return_exceptions=True)
            worker.relays.clear()

    @staticmethod
    async def _read_frame(reader: asyncio.StreamReader) -> Any:
        (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
        if size > MAX_FRAME:
            raise ValueError(f"a frame of {size} bytes from a worker")
        # S301: the peer is our own child process, started by us from our own code.
        return pickle.loads(await reader.readexactly(size))  # noqa: S301

    async def _relay_logs(self, worker: _Worker, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            text = line.decode("utf-8", "replace").rstrip("\n")
            try:
                level, name, message = json.loads(text)
                logger = logging.getLogger(str(name))
                logger.log(int(level), "[worker %d] %s", worker.slot, message)
            except (ValueError, TypeError):
                log.warning("[worker %d] %s", worker.slot, text)

    async def _send(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        stdin = process.stdin
        assert stdin is not None
        with contextlib.suppress(ConnectionError):
            while True:
                await worker.wake.wait()
                worker.wake.clear()
                if not worker.outbox:
                    continue
                queued, worker.outbox = worker.outbox, []
                # A deadline crosses the process boundary as the seconds left, now.
                now = time.monotonic()
                batch = [
                    (seq, payload, None if deadline is None else max(deadline - now, 0.0))
                    for seq, payload, deadline in queued
                ]
                payload = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
                stdin.write(HEADER.pack(len(payload)) + payload)
                await stdin.drain()

    async def _receive(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        stdout = process.stdout
        assert stdout is not None
        problem = ""
        try:
            while True:
                batch = await self._read_frame(stdout)
                for seq, result in batch:
                    pending = worker.pending.pop(seq, None)
                    if pending is not None:
                        pending.stream.queue.put_nowait((pending.index, result))
        except asyncio.IncompleteReadError:
            pass
        except Exception as exc:  # noqa: BLE001 - any undecodable frame: the worker is replaced
            problem = f" after a frame this process could not read ({exc!r})"
        worker.alive = False
        if self._state == "closed":
            return
        # Its output ended: it is exiting, or is broken and is made to. (Signalling an exiting
        # worker at once would race the child watcher: Popen.send_signal reaps an exited child
        # itself, and the exit code would be lost.) One that sent a bad frame is still running.
        try:
            async with asyncio.timeout(0 if problem else _STOP_WAIT):
                code = await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
        message = (
            f"worker process {worker.slot} (pid {process.pid}) exited with code {code}"
            f"{problem} while this check ran"
        )
        log.error("%s; restarting it", message)
        unsent = {seq for seq, _payload, _deadline in worker.outbox}
        lost = [seq for seq in worker.pending if seq not in unsent]
        for seq in lost:
            pending = worker.pending.pop(seq)
            pending.stream.queue.put_nowait((pending.index, unknown_result(pending.probe, message)))
        if worker.sender is not None:
            worker.sender.cancel()
            # asyncio.wait, not `await sender`: a cancellation of *this* task (the pool
            # closing) must propagate, not be mistaken for the sender's and swallowed.
            await asyncio.wait([worker.sender])
        # The old process's log relay ends by itself at the end of its stderr (the last lines
        # are often why it died).
        worker.tasks = [t for t in worker.tasks if not t.done()]
        worker.relays = [t for t in worker.relays if not t.done()]
        if self._state == "closed":
            return
        self._restarts += 1
        await self._start(worker)
        if worker.broken is not None:
            # Nothing more goes to this slot; what was queued for it is answered now.
            queued, worker.outbox = worker.outbox, []
            for seq, _payload, _deadline in queued:
                pending = worker.pending.pop(seq)
                pending.stream.queue.put_nowait(
                    (pending.index, unknown_result(pending.probe, worker.broken))
                )

    # -- running -------------------------------------------------------------------------------

    async def check(self, probe: Probe, *, deadline: float | None = None) -> Result:
        """Run one probe in a worker and return its result.

        ``deadline`` is an absolute ``time.monotonic()`` reading, as for :meth:`Runner.check`;
        it reaches the worker as the seconds left when the probe is sent.
        """
        deadline = check_deadline(deadline)
        results = await self.run_all([probe if deadline is None else Job(probe, deadline=deadline)])
        return results[0]

    async def run_all(self, probes: Iterable[Work] | AsyncIterable[Work]) -> list[Result]:
        """Run ``probes`` and return their final results in input order."""
        self._require_open()
        _check_source(probes)
        async with contextlib.aclosing(self._iterate(probes)) as results:
            by_index = {index: result async for index, result in results}
        return [by_index[i] for i in range(len(by_index))]

    async def stream(self, probes: Iterable[Work] | AsyncIterable[Work]) -> AsyncIterator[Result]:
        """Run ``probes`` and yield each final result as soon as it is ready."""
        self._require_open()
        _check_source(probes)
        async with contextlib.aclosing(self._iterate(probes)) as results:
            async for _index, result in results:
                yield result

    async def _iterate(
        self, probes: Iterable[Work] | AsyncIterable[Work]
    ) -> AsyncGenerator[tuple[int, Result], None]:
        stream = _Stream(2 * self._max_concurrency)
        self._streams.add(stream)
        producer = asyncio.create_task(self._produce(probes, stream))
        total: int | None = None
        delivered = 0
        try:
            while total is None or delivered < total:
                item = await stream.queue.get()
                if item is None:
                    raise RuntimeError("the ProcessRunner was closed while this stream was running")
                if isinstance(item, _Done):
                    total = item.count
                    continue
                if isinstance(item, _Failed):
                    raise item.exc
                delivered += 1
                stream.window.release()
                yield item
        finally:
            self._streams.discard(stream)
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            for worker in self._workers:
                for seq in [s for s, p in worker.pending.items() if p.stream is stream]:
                    del worker.pending[seq]  # a result that still comes is dropped

    async def _produce(self, probes: Iterable[Work] | AsyncIterable[Work], stream: _Stream) -> None:
        """Send probes to workers as the window allows, then say how many there were."""
        index = 0
        try:
            async with contextlib.aclosing(pull(probes, stream.window)) as source:
                async for probe in source:
                    self._submit(stream, index, probe)
                    index += 1
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, who raises it
            stream.queue.put_nowait(_Failed(exc))
            return
        stream.queue.put_nowait(_Done(index))

    def _payload(self, probe: object) -> bytes:
        key = id(probe)
        cached = self._payloads.get(key)
        if cached is not None and cached[0] is probe:
            return cached[1]
        payload = dumps(probe)
        if len(self._payloads) >= _CACHE:
            self._payloads.clear()
        self._payloads[key] = (probe, payload)  # holding the probe keeps its id unique
        return payload

    def _choose(self, probe: object) -> _Worker | None:
        usable = [w for w in self._workers if w.broken is None]
        if not usable:
            return None
        if self._per_host is not None:
            host = _attr(probe, "host")
            if isinstance(host, str):
                return usable[hash(_host_key(host)) % len(usable)]
        return min(usable, key=lambda w: (len(w.pending) + len(w.outbox)) / w.capacity)

    def _submit(self, stream: _Stream, index: int, item: object) -> None:
        deadline: float | None = None
        probe = item
        if type(item) is Job:
            probe, deadline = item.probe, item.deadline
        try:
            payload = self._payload(probe)
        except Exception as exc:  # noqa: BLE001 - reported as this probe's result
            log.warning("cannot send %r to a worker process: %r", _label(probe), exc)
            message = f"cannot send the probe to a worker process: {exc!r}"
            stream.queue.put_nowait((index, unknown_result(probe, message)))
            return
        worker = self._choose(probe)
        if worker is None:
            stream.queue.put_nowait((index, unknown_result(probe, "no worker process is running")))
            return
        self._seq += 1
        worker.pending[self._seq] = _Pending(stream, index, probe)
        worker.outbox.append((self._seq, payload, deadline))
        if worker.alive:
            worker.wake.set()
