"""``probekit demo``: the whole system on loopback, with a failure to watch.

Starts local targets (an HTTP app, an HTTPS app with its own throwaway CA, a TCP service), a
control plane and two checkpoint instances, all on 127.0.0.1, and prints what happens: results as
they are stored, with the instance that ran them and their phases, and the alert events. After a
while it breaks the HTTP app (it answers 500), so the failure is seen on one instance, confirmed on
the other and alerted; later it mends it and the alert resolves.

:class:`Printer`, which prints those result and event lines, is also ``probekit control``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, Final

from .._secret import Secret
from ..control._logic import Event
from ..protocol import ResultEnvelope
from ._ca import write_local_ca

__all__ = ["Printer", "run_demo", "write_line"]

_PAGE = b"<html><body>probekit demo: all is well</body></html>"


class _Targets:
    """The demo's local services; ``broken`` makes the HTTP app answer 500."""

    def __init__(self) -> None:
        self.broken = False
        self.servers: list[asyncio.Server] = []
        self.http_port = self.https_port = self.tcp_port = 0
        self.ca_pem = ""

    async def start(self, workdir: Path) -> None:
        """Start the services; the HTTPS app's CA and certificate are written to ``workdir``."""
        ca = write_local_ca(workdir, ("localhost", "127.0.0.1"))
        self.ca_pem = ca.ca_pem
        server_ctx = ca.server_context()
        http = await asyncio.start_server(self._http, "127.0.0.1", 0)
        https = await asyncio.start_server(self._http, "127.0.0.1", 0, ssl=server_ctx)
        tcp = await asyncio.start_server(self._tcp, "127.0.0.1", 0)
        self.servers = [http, https, tcp]
        self.http_port, self.https_port, self.tcp_port = (
            s.sockets[0].getsockname()[1] for s in self.servers
        )

    async def stop(self) -> None:
        for server in self.servers:
            server.close()

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            ssl_used = writer.get_extra_info("ssl_object") is not None
            if self.broken and not ssl_used:
                status, body = "500 Internal Server Error", b"database unavailable"
            else:
                status, body = "200 OK", _PAGE
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {len(body)}\r\n"
            )
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 demo-smtp ESMTP ready\r\n")
            line = await asyncio.wait_for(reader.readline(), 5)
            if line.upper().startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()


def write_line(out: IO[str], text: str) -> None:
    """Write one line and flush it (the output is often a pipe, read as it comes)."""
    out.write(text + "\n")
    out.flush()


_EVENT_LABELS: Final = {
    "unconfirmed": "UNCONFIRMED ERROR",
    "alert_resolved": "ALERT RESOLVED",
    "transient": "TRANSIENT",
    "instance_down": "INSTANCE DOWN",
    "instance_up": "INSTANCE UP",
}
_ALERT_LABELS: Final = {
    "monitor_down": "CONFIRMED ERROR -> ALERT",
    "checkpoint_down": "CHECKPOINT DOWN -> ALERT",
    "flapping": "FLAPPING -> ALERT",
}


class Printer:
    """Prints stored results and alert events as they happen, one line each.

    The printer of ``probekit demo`` and ``probekit control``: register :meth:`result` as a
    control plane's result listener and the printer itself as an alert sink. Each line starts
    with the seconds since ``started`` (a :func:`time.monotonic` value), or with the wall-clock
    time when ``started`` is None; monitor ids are padded to ``width``. With ``keep_events``
    the events are also kept in :attr:`events`.
    """

    def __init__(
        self,
        out: IO[str],
        started: float | None = None,
        *,
        width: int = 7,
        keep_events: bool = True,
    ) -> None:
        self.out = out
        self.started = started
        self.width = width
        self.keep_events = keep_events
        self.events: list[Event] = []

    def stamp(self) -> str:
        if self.started is None:
            return time.strftime("%H:%M:%S")
        return f"[{time.monotonic() - self.started:5.1f}s]"

    def line(self, text: str) -> None:
        write_line(self.out, f"{self.stamp()} {text}")

    def result(self, envelope: ResultEnvelope) -> None:
        r = envelope.result
        phases = " ".join(f"{n} {(r.phase(n) or 0) * 1000:.1f}" for n in r.phase_names())
        detail = f"  {r.error.kind.value}: {r.error.message}" if r.error else ""
        monitor = envelope.monitor_id or "-"
        self.line(
            f"{monitor:<{self.width}} {r.status.name:<8} on {envelope.instance_id}"
            f" ({envelope.reason:<9}) {r.duration * 1000:6.1f} ms  [{phases}]{detail}"
        )

    async def send(self, event: Event) -> None:
        if self.keep_events:
            self.events.append(event)
        if event.kind == "alert_opened":
            kind = event.alert.kind if event.alert is not None else "monitor_down"
            label = _ALERT_LABELS.get(kind, "ALERT")
        else:
            label = _EVENT_LABELS.get(event.kind, event.kind.upper())
        self.line(f"*** {label}: {event.message}")


@contextlib.asynccontextmanager
async def _system(
    workdir: Path, printer: Printer, targets: _Targets, interval: float
) -> AsyncIterator[None]:
    from ..checkpoint import Checkpoint, CheckpointSettings
    from ..control import ControlPlane, ControlSettings

    token = Secret("demo-" + workdir.name)
    settings = ControlSettings(
        tokens={"demo": token}, db_path=str(workdir / "control.db"), heartbeat_interval=1.0
    )
    async with ControlPlane(settings, sinks=[printer]) as plane:
        plane.result_listeners.append(printer.result)
        monitors: dict[str, dict[str, Any]] = {
            "web": {"kind": "http", "url": f"http://127.0.0.1:{targets.http_port}/"},
            "secure": {
                "kind": "http",
                "url": f"https://localhost:{targets.https_port}/",
                "tls": {"ca_data": targets.ca_pem},
                # The throwaway certificate lives 90 days (see _Targets.start).
                "assertions": [{"type": "cert_expiry", "warn_days": 30}],
            },
            "mail": {
                "kind": "tcp",
                "host": "127.0.0.1",
                "port": targets.tcp_port,
                "steps": [{"expect": "^220 "}, {"send": "QUIT\r\n"}, {"expect": "^221"}],
            },
        }
        for monitor_id, definition in monitors.items():
            await plane.add_monitor(monitor_id, "demo", definition, interval)
        instances = [
            Checkpoint(
                CheckpointSettings(
                    url=plane.url,
                    token=token,
                    checkpoint_id="demo",
                    instance_id=f"instance-{name}",
                    spool_path=str(workdir / f"spool-{name}.db"),
                    insecure=True,  # loopback only: the demo's control plane has no certificate
                    heartbeat_interval=1.0,
                    reconnect_initial=0.1,
                    reconnect_max=1.0,
                )
            )
            for name in ("a", "b")
        ]
        async with instances[0], instances[1]:
            yield


async def run_demo(
    duration: float | None = None,
    *,
    break_after: float = 8.0,
    mend_after: float = 18.0,
    interval: float = 2.0,
    out: IO[str] | None = None,
    stop: asyncio.Event | None = None,
) -> list[Event]:
    """Run the demo for ``duration`` seconds (None: until ``stop`` is set or Ctrl-C).

    Returns the alert events seen, so callers (and tests) can check the failover happened.
    """
    out = out or sys.stdout
    stop = stop or asyncio.Event()
    started = time.monotonic()
    printer = Printer(out, started)
    targets = _Targets()
    with tempfile.TemporaryDirectory(prefix="probekit-demo-") as tmp:
        workdir = Path(tmp)
        await targets.start(workdir)
        try:
            write_line(
                out,
                "probekit demo: targets, a control plane and two checkpoint instances on 127.0.0.1",
            )
            write_line(
                out,
                f"  web    http://127.0.0.1:{targets.http_port}/   secure https://localhost:"
                f"{targets.https_port}/   mail tcp 127.0.0.1:{targets.tcp_port}",
            )
            write_line(
                out,
                f"  every monitor runs every {interval:g} s; 'web' breaks at {break_after:g} s "
                f"and is mended at {mend_after:g} s. Ctrl-C stops.",
            )
            script: list[tuple[float, str, Callable[[], None]]] = [
                (
                    break_after,
                    "breaking 'web' (it now answers 500)",
                    lambda: setattr(targets, "broken", True),
                ),
                (mend_after, "mending 'web'", lambda: setattr(targets, "broken", False)),
            ]
            async with _system(workdir, printer, targets, interval):
                while not stop.is_set():
                    elapsed = time.monotonic() - started
                    if duration is not None and elapsed >= duration:
                        break
                    while script and elapsed >= script[0][0]:
                        _, what, action = script.pop(0)
                        printer.line(f">>> {what}")
                        action()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.1)
                printer.line("stopping")
        finally:
            await targets.stop()
    return printer.events
