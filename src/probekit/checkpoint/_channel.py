"""The outbound control channel: one WebSocket to the control plane, kept open.

:class:`Channel` connects (with backoff and full jitter), says ``hello``, uploads what waits in
the spool as ``results`` frames (at most a window of unacked results at a time), takes ``ack``
messages off the spool, sends heartbeats, and hands every other message to the agent. It
reconnects until told to stop. The functions here turn spooled envelopes into frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

import attrs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from .. import __version__
from .._dial import Dialer
from .._exceptions import DefinitionError, PolicyError
from .._logging import MaskingLogger
from .._result import ErrorKind, ProbeError, Result, Status
from .._serialization import converter
from ..protocol import (
    FROM_CONTROL,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ROLE_HEADER,
    TOO_MANY_ERRORS_CLOSE,
    TOO_MANY_ERRORS_REASON,
    Ack,
    Error,
    ErrorBudget,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    ResultEnvelope,
    decode,
    encode,
    error_reply,
)
from ._dialing import dial
from ._settings import CheckpointSettings
from ._spool import AsyncSpool, Entry

__all__ = ["Channel", "Reply", "dump", "frames", "payload", "plain_text", "ssl_context"]

log = logging.getLogger("probekit.checkpoint")

#: The largest WebSocket message accepted from the control plane. Frames between the protocol's
#: own limit (1 MiB) and this one are answered with ``error``/``too_large`` and the connection
#: keeps serving; larger ones make ``websockets`` close it (1009).
_MAX_INCOMING: Final = 4 * 1024 * 1024
#: A results frame stays below what a control plane's ``decode`` reads by default.
_FRAME_BUDGET: Final = MAX_FRAME_BYTES - 1024
#: One spooled result must fit in a frame of its own, with room to spare.
_MAX_ENTRY_BYTES: Final = MAX_FRAME_BYTES // 2
#: How often the sender looks at the spool without being woken.
_SEND_POLL: Final = 0.05
#: Results sent on one connection and not yet acked, in batches: beyond this the sender waits.
_WINDOW_BATCHES: Final = 8
_MAX_ERROR_TEXT: Final = 1000
#: Error codes after which a retry cannot succeed until an operator changes something (a token,
#: a version): the next attempt waits the maximum backoff.
_REFUSALS: Final = ("unauthorized", "bad_version")
#: How long the look at a control plane that failed the handshake may take (see _diagnose).
_DIAGNOSE_TIMEOUT: Final = 2.0

_RESULTS_HEAD: Final = f'{{"type":"results","version":{PROTOCOL_VERSION},"results":['.encode()

#: Sends one message back on the connection a message came in on.
Reply: TypeAlias = Callable[[Message], Awaitable[None]]


def dump(envelope: ResultEnvelope) -> bytes:
    """The JSON (UTF-8) of one envelope, exactly as ``encode`` writes it inside ``results``."""
    text = json.dumps(
        converter.unstructure(envelope), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode()  # a lone surrogate raises UnicodeEncodeError here


def plain_text(text: str, limit: int = _MAX_ERROR_TEXT) -> str:
    text = text.encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def payload(envelope: ResultEnvelope) -> bytes:
    """Serialise ``envelope`` for the spool, making sure the control plane can read it.

    A result JSON cannot carry (a non-finite metric, a lone surrogate in a message) or one too
    large for a frame is sent without the offending details instead, with a warning; that is
    the sender's problem, and the result's status must still arrive.
    """
    problem = ""
    try:
        data = dump(envelope)
        if len(data) <= _MAX_ENTRY_BYTES:
            return data
        problem = f"{len(data)} bytes is too large"
    except ValueError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    result = envelope.result
    log.warning(
        "result %s of %s %s cannot be sent as it is (%s); sending it without details",
        envelope.result_id,
        result.kind,
        result.target,
        problem,
    )
    error = result.error
    if error is not None:
        error = attrs.evolve(error, message=plain_text(error.message))
    slim = attrs.evolve(
        result,
        error=error,
        metrics={k: v for k, v in result.metrics.items() if math.isfinite(v)},
        assertions=(),
        tls=None,
        phases=result.phases[:100],
    )
    try:
        data = dump(attrs.evolve(envelope, result=slim))
        if len(data) <= _MAX_ENTRY_BYTES:
            return data
    except ValueError:
        pass
    duration = result.duration if math.isfinite(result.duration) else 0.0
    stub = Result(
        kind=result.kind,
        target=plain_text(result.target, 2000),
        status=Status.UNKNOWN,
        started_at=result.started_at,
        duration=duration,
        error=ProbeError(ErrorKind.INTERNAL, f"the result could not be encoded ({problem})"),
    )
    return dump(attrs.evolve(envelope, result=stub))


def frames(entries: list[Entry]) -> list[tuple[bytes, list[str]]]:
    """Group spooled entries into ``results`` frames, each within the frame budget."""
    out: list[tuple[bytes, list[str]]] = []
    parts: list[bytes] = []
    ids: list[str] = []
    size = len(_RESULTS_HEAD) + 2

    def flush() -> None:
        out.append((_RESULTS_HEAD + b",".join(parts) + b"]}", list(ids)))

    for entry in entries:
        data = entry.payload if isinstance(entry.payload, bytes) else entry.payload.encode()
        if parts and size + len(data) + 1 > _FRAME_BUDGET:
            flush()
            parts.clear()
            ids.clear()
            size = len(_RESULTS_HEAD) + 2
        parts.append(data)
        ids.append(entry.result_id)
        size += len(data) + 1
    if parts:
        flush()
    return out


def ssl_context(settings: CheckpointSettings) -> ssl.SSLContext | None:
    """The TLS context for a ``wss://`` control plane (None for ``ws://``)."""
    if urlsplit(settings.url).scheme != "wss":
        return None
    try:
        return ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise DefinitionError("ca_file", f"cannot load {settings.ca_file!r}: {exc}") from None


async def _speaks_http(dialer: Dialer, host: str, port: int) -> bool:
    """Does ``host:port`` answer a plain HTTP request with an HTTP status line?"""
    sock, _ = await dial(dialer, host, port, _DIAGNOSE_TIMEOUT)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.read(16)
        return line.startswith(b"HTTP/1.")
    finally:
        writer.close()


async def _speaks_tls(dialer: Dialer, host: str, port: int) -> bool:
    """Does ``host:port`` complete a TLS handshake (certificate not checked: only the protocol
    is asked about, and nothing is sent over it)?"""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock, _ = await dial(dialer, host, port, _DIAGNOSE_TIMEOUT)
    _, writer = await asyncio.open_connection(sock=sock, ssl=context, server_hostname=host or None)
    writer.close()
    return True


def _is_standby(exc: Exception) -> bool:
    """Is this the answer of a standby control plane (503, ``Probekit-Role: standby``)?"""
    return (
        isinstance(exc, InvalidStatus)
        and exc.response.status_code == 503
        and exc.response.headers.get(ROLE_HEADER, "").strip().lower() == "standby"
    )


def _retry_after(exc: Exception) -> float:
    """The ``Retry-After`` seconds of a standby's answer, within [0.1, 10] (1 without one)."""
    assert isinstance(exc, InvalidStatus)
    try:
        seconds = float(exc.response.headers.get("Retry-After", "1"))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.1), 10.0) if math.isfinite(seconds) else 1.0


class _Ended(Exception):
    """The control plane closed the connection (cleanly or after an error reply of ours)."""


class Channel:
    """The control channel of one checkpoint instance (see the module docstring).

    The agent supplies what the channel says (``hello``, ``heartbeat``), what it does with the
    messages that are not acks (``handle``, given a way to reply), and wants to hear when the
    channel's state changes (``changed``: connected, disconnected, first attempt made) and when
    delivery progresses (``progressed``: an ack, a disconnect).
    """

    def __init__(
        self,
        settings: CheckpointSettings,
        spool: AsyncSpool,
        *,
        dialer: Dialer,
        hello: Callable[[], Hello],
        heartbeat: Callable[[], Heartbeat],
        handle: Callable[[Message, Reply], Awaitable[None]],
        changed: Callable[[], None],
        progressed: Callable[[], None],
    ) -> None:
        self.settings: Final = settings
        self._spool = spool
        self._dialer = dialer
        self._hello = hello
        self._heartbeat = heartbeat
        self._handle_message = handle
        self._changed = changed
        self._progressed = progressed
        self._ssl = ssl_context(settings)
        #: Which of ``settings.urls`` the next connection tries (it moves on a failure).
        self._url_index = 0
        self._ws_logger = MaskingLogger(
            logging.getLogger("websockets.client"), [settings.token.reveal()]
        )
        self._window = _WINDOW_BATCHES * settings.batch_size
        self._ws: ClientConnection | None = None
        self._sent: set[str] = set()
        self._wake = asyncio.Event()
        self._closing = False
        #: Connected now (after ``hello`` was sent).
        self.connected = False
        #: A connection attempt has been made (and finished).
        self.tried = False
        self.reconnects = 0
        self.connect_failures = 0
        #: Connections a standby control plane answered (503 ``standby``): not failures; the
        #: next URL is tried at once.
        self.standby_moves = 0
        self.acked = 0
        #: Why the last attempt was refused for good (``unauthorized``: a token refused with
        #: HTTP 401/403 or an ``error``; ``bad_version``), or None: the next attempt then waits
        #: the maximum backoff.
        self.refused: str | None = None

    @property
    def url(self) -> str:
        """The control plane's URL that the channel is connected to or tries next."""
        return self.settings.urls[self._url_index]

    def wake(self) -> None:
        """Look at the spool now: there is something new to send."""
        self._wake.set()

    async def close(self) -> None:
        """Close the connection (after a drain): the link loop then ends."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            await ws.close(1000, "drained")

    def _backoff(self, k: int, *, refused: bool = False) -> float:
        """Full jitter: uniform in [0, min(reconnect_initial * 2**k, reconnect_max)]. After a
        refusal (a token or version the control plane does not accept, which no retry can fix)
        the maximum backoff: uniform in [reconnect_max / 2, reconnect_max]."""
        s = self.settings
        if refused:
            return random.uniform(s.reconnect_max / 2, s.reconnect_max)  # noqa: S311 - jitter
        ceiling = min(s.reconnect_initial * 2 ** min(k, 64), s.reconnect_max)
        return random.uniform(0.0, ceiling)  # noqa: S311 - jitter, not cryptography

    @staticmethod
    async def _pause(seconds: float, stop: asyncio.Event) -> None:
        """Sleep, but no longer than until ``stop`` is set."""
        try:
            async with asyncio.timeout(seconds):
                await stop.wait()
        except TimeoutError:
            pass

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve the connection, and reconnect with backoff, until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        streak = 0  # failed attempts and short-lived connections in a row
        standbys = 0  # standby answers in a row
        first = True
        delay = 0.0
        # A connection that lasted this long was a working one, and resets the backoff.
        stable = max(2 * self.settings.heartbeat_interval, self.settings.reconnect_initial)
        # Once stopping (draining), no new connection is made just to drain: what is unsent
        # stays spooled for the next start.
        while not stop.is_set():
            if streak:
                await self._pause(delay, stop)
                if stop.is_set():
                    return
            self.refused = None
            try:
                ws = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried
                if _is_standby(exc):
                    # Not a failure: this control plane stands by. On to the next URL at once;
                    # after a whole round of standbys (a take-over under way), its Retry-After.
                    self.standby_moves += 1
                    standbys += 1
                    urls = len(self.settings.urls)
                    if urls > 1:
                        self._url_index = (self._url_index + 1) % urls
                    log.info(
                        "the control plane at %s is a standby (another one holds the lock); "
                        "next, the one at %s",
                        self._previous_url(),
                        self.url,
                    )
                    if standbys >= urls:
                        standbys = 0
                        await self._pause(_retry_after(exc), stop)
                    if not self.tried:
                        self.tried = True
                        self._changed()
                    continue
                standbys = 0
                self.connect_failures += 1
                streak += 1
                if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
                    self.refused = "unauthorized"
                # With standby control planes the backoff grows once per round of them all.
                urls = len(self.settings.urls)
                delay = self._backoff((streak - 1) // urls, refused=self.refused is not None)
                await self._log_connect_failure(exc, delay)
                if urls > 1:
                    self._url_index = (self._url_index + 1) % urls
                    log.info("next, the control plane at %s", self.url)
                if not self.tried:
                    self.tried = True
                    self._changed()  # now "disconnected" means something
                continue
            standbys = 0
            self.tried = True
            if not first:
                self.reconnects += 1
            first = False
            opened = loop.time()
            await self._session(ws)  # may set self.refused
            streak = 1 if loop.time() - opened >= stable else streak + 1
            refused = self._refusal()
            delay = self._backoff(streak - 1, refused=refused is not None)
            if refused is not None and not stop.is_set():
                log.error(
                    "the control plane at %s refused this instance (%s); a retry cannot "
                    "succeed until %s changes: retrying in %.1f s (the maximum backoff)",
                    self.url,
                    refused,
                    "the token or the checkpoint id"
                    if refused == "unauthorized"
                    else "the protocol version of one side",
                    delay,
                )

    def _refusal(self) -> str | None:
        return self.refused

    def _previous_url(self) -> str:
        urls = self.settings.urls
        return urls[(self._url_index - 1) % len(urls)]

    async def _connect(self) -> ClientConnection:
        """Open the WebSocket: resolve, policy check and TCP connect through the dial path (see
        :mod:`._dialing`), then TLS and the handshake on that socket; all within
        ``open_timeout``, and the time each step took logged."""
        s = self.settings
        url = self.url
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        loop = asyncio.get_running_loop()
        began = loop.time()
        sock, timeline = await dial(self._dialer, host, port, s.open_timeout)
        extra: dict[str, Any] = {}
        if self._ssl is not None:
            extra["ssl"] = self._ssl
            extra["server_hostname"] = host
        opened = loop.time()
        try:
            ws = await connect(
                url,
                sock=sock,
                additional_headers={"Authorization": f"Bearer {s.token.reveal()}"},
                user_agent_header=f"probekit-checkpoint/{__version__}",
                proxy=None,
                open_timeout=max(s.open_timeout - (opened - began), 0.001),
                ping_interval=s.ping_interval,
                ping_timeout=s.ping_timeout,
                # A peer that answers no ping in ping_timeout will not answer a close frame either.
                close_timeout=s.ping_timeout,
                max_size=_MAX_INCOMING,
                logger=self._ws_logger,
                **extra,
            )
        except BaseException:
            sock.close()
            raise
        phases = ", ".join(f"{p.name} {p.duration * 1000:.1f} ms" for p in timeline.phases)
        log.info(
            "connected to the control plane at %s (%s) in %.1f ms: %s, %s %.1f ms",
            url,
            ws.remote_address[0] if ws.remote_address else "?",
            (loop.time() - began) * 1000,
            phases,
            "TLS and handshake" if self._ssl is not None else "handshake",
            (loop.time() - opened) * 1000,
        )
        return ws

    async def _log_connect_failure(self, exc: Exception, delay: float) -> None:
        url = self.url
        if isinstance(exc, PolicyError):
            log.error(
                "the egress policy (settings.policy) denies the control plane at %s: %s; "
                "no connection was attempted. Allow its address in the policy; retrying in %.1f s",
                url,
                exc,
                delay,
            )
        elif isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
            log.error(
                "the control plane at %s refused this instance's token (HTTP %d): the token "
                "(--token-env/--token-file) must be the one the control plane has for checkpoint "
                "%s; a retry cannot succeed until it changes: retrying in %.1f s (the maximum "
                "backoff)",
                url,
                exc.response.status_code,
                self.settings.checkpoint_id,
                delay,
            )
        elif isinstance(exc, ssl.SSLCertVerificationError):
            log.error(
                "the control plane at %s presented a certificate this instance cannot verify: "
                "%s; give the CA that signed it with --ca-file (settings.ca_file); retrying in "
                "%.1f s",
                url,
                exc.verify_message or exc,
                delay,
            )
        elif (hint := await self._diagnose(exc)) is not None:
            log.error(
                "cannot connect to the control plane at %s: %s; retrying in %.1f s",
                url,
                hint,
                delay,
            )
        else:
            log.warning(
                "cannot connect to the control plane at %s: %s: %s; retrying in %.1f s",
                url,
                type(exc).__name__,
                exc,
                delay,
            )

    async def _diagnose(self, exc: Exception) -> str | None:
        """When the handshake failed the way a TLS mismatch makes it fail, look again (one
        bounded connection through the dial path) and say what the control plane speaks and
        what to change; None when that is not the problem, or it cannot be told."""
        tls = self._ssl is not None
        mismatch = (
            isinstance(exc, ConnectionResetError | EOFError | InvalidMessage | ssl.SSLError)
            if tls
            else isinstance(exc, InvalidMessage | ConnectionResetError | EOFError)
        )
        if not mismatch:
            return None
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        try:
            async with asyncio.timeout(_DIAGNOSE_TIMEOUT):
                other_works = await (
                    _speaks_http(self._dialer, host, port)
                    if tls
                    else _speaks_tls(self._dialer, host, port)
                )
        except (OSError, TimeoutError, PolicyError, ssl.SSLError, EOFError):
            return None
        except Exception:
            log.debug("could not diagnose the connection failure", exc_info=True)
            return None
        if not other_works:
            return None
        if tls:
            return (
                f"the TLS handshake failed ({type(exc).__name__}: {str(exc) or 'no message'}) "
                "because the control plane serves plain ws:// (no TLS) on that port: give the "
                "control plane tls_cert and tls_key (recommended), or change the URL to "
                "ws://... and pass --insecure (loopback and tests only)"
            )
        return (
            "the control plane serves TLS (wss://) on that port and closed this plain ws:// "
            "connection without an HTTP answer: change the URL to wss://... (with --ca-file "
            "when its certificate is signed by a private CA)"
        )

    async def _session(self, ws: ClientConnection) -> None:
        """Serve one connection until it ends; every path out closes it."""
        self._sent = set()
        try:
            await ws.send(encode(self._hello()))
            self._ws = ws
            self.connected = True
            self._changed()
            self._wake.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive_loop(ws))
                tg.create_task(self._send_loop(ws))
                tg.create_task(self._heartbeat_loop(ws))
        except* ConnectionClosed as group:
            if not self._closing:
                log.warning("lost the control plane connection: %s", group.exceptions[0])
        except* _Ended:
            if not self._closing:
                log.warning("the control plane connection was closed")
        except* Exception as group:
            log.error("the control channel failed; reconnecting", exc_info=group)
        finally:
            self._ws = None
            self.connected = False
            self._sent = set()
            self._changed()
            self._progressed()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                ws.transport.abort()  # being cancelled: no closing handshake to wait for
            else:
                try:
                    await ws.close()
                except BaseException:
                    ws.transport.abort()
                    raise

    async def _receive_loop(self, ws: ClientConnection) -> None:
        budget = ErrorBudget()
        loop = asyncio.get_running_loop()
        async for frame in ws:
            try:
                message = decode(frame, accept=FROM_CONTROL)
            except ProtocolError as exc:
                log.warning("refused a frame from the control plane: %s", exc)
                await self._send(ws, error_reply(exc))
                if exc.code == "bad_version":
                    self.refused = "bad_version"
                if exc.close_code is not None:
                    await ws.close(exc.close_code, exc.code)
                    raise _Ended from None
                if budget.spend(loop.time()):
                    log.error(
                        "closing the control channel: the control plane sent more than %d "
                        "frames this instance refused within %g s",
                        budget.limit,
                        budget.window,
                    )
                    await ws.close(TOO_MANY_ERRORS_CLOSE, TOO_MANY_ERRORS_REASON)
                    raise _Ended from None
                continue
            await self._handle(ws, message)
        raise _Ended

    async def _handle(self, ws: ClientConnection, message: Message) -> None:
        if isinstance(message, Ack):
            acked = await self._spool.ack(message.result_ids)
            self.acked += acked
            self._sent.difference_update(message.result_ids)
            self._wake.set()
            self._progressed()
            return
        if isinstance(message, Error) and message.code in _REFUSALS:
            self.refused = message.code  # the connection closes next; the retry waits long

        async def reply(answer: Message) -> None:
            await self._send(ws, answer)

        await self._handle_message(message, reply)

    async def _send(self, ws: ClientConnection, message: Message) -> None:
        await ws.send(encode(message))

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            try:
                async with asyncio.timeout(_SEND_POLL):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            while len(self._sent) < self._window:
                room = min(self.settings.batch_size, self._window - len(self._sent))
                entries = await self._spool.pending(room, exclude=frozenset(self._sent))
                if not entries:
                    break
                for frame, ids in frames(entries):
                    # Marked before sending: an ack may be handled before send() returns.
                    self._sent.update(ids)
                    await ws.send(frame, text=True)

    async def _heartbeat_loop(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self._send(ws, self._heartbeat())
