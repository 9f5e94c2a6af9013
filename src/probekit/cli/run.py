"""``probekit run CONFIG``: run the monitors of a config file, on their intervals or once."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Final

from .._config import Config, load_config
from .._context import ProbeContext
from .._dial import Dialer
from .._exceptions import UsageError
from .._exporters import json_line, prometheus_text
from .._pool import ProcessRunner
from .._result import Result, Status
from .._runner import Runner
from .._scheduler import Scheduler
from ..probes._base import Probe
from ..probes._registry import describe
from ._common import Command, _asyncio_run, _err, _fraction, _integer, _out, _seconds

if TYPE_CHECKING:
    from rich.live import Live
    from rich.table import Table as RichTable

    from .._metrics_server import MetricsServer
    from ..alerting._sinks import ResultAlerts

#: The first run of each monitor starts within this many seconds (or its interval, if
#: shorter), spread at random so that monitors do not all start together.
FIRST_RUN_SPREAD: Final = 1.0


def _configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="a TOML or JSON config file")
    parser.add_argument(
        "--once",
        action="store_true",
        help="run every monitor once, print a table, exit with the worst status",
    )
    parser.add_argument("--jsonl", metavar="FILE", help="append every result to FILE as JSON")
    parser.add_argument(
        "--metrics-port",
        type=_integer(0, 65535),
        metavar="N",
        help="serve Prometheus text at /metrics on this port (0: any free port)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to serve metrics on (default 127.0.0.1)",
    )
    parser.add_argument(
        "--duration", type=_seconds, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    parser.add_argument(
        "--concurrency",
        type=_integer(1),
        default=100,
        metavar="N",
        help="checks at once (default 100)",
    )
    parser.add_argument(
        "--retries",
        type=_integer(0),
        default=0,
        metavar="N",
        help="extra attempts for transient failures (default 0)",
    )
    parser.add_argument(
        "--jitter",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="move each run by up to F x its interval at random (default 0)",
    )
    parser.add_argument(
        "--processes",
        type=_integer(1),
        default=1,
        metavar="N",
        help="run the checks in N worker processes (a ProcessRunner); --concurrency is the "
        "total over them (default 1: in this process)",
    )


def _run_monitors(args: argparse.Namespace) -> int:
    if args.once:
        clashes = [n for n in ("duration", "metrics_port") if getattr(args, n) is not None]
        if clashes:
            names = ", ".join("--" + n.replace("_", "-") for n in clashes)
            raise UsageError(f"--once runs every monitor once; it does not take {names}")
    config = load_config(args.config)
    jsonl: IO[str] | None = None
    if args.jsonl:
        try:
            jsonl = open(args.jsonl, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"--jsonl: cannot open {args.jsonl}: {exc.strerror}") from None
    try:
        if args.once:
            return _asyncio_run(_once(config, args, jsonl), args)
        with contextlib.suppress(KeyboardInterrupt):
            _asyncio_run(_forever(config, args, jsonl), args)
        return 0
    finally:
        if jsonl is not None:
            jsonl.close()


def _runner(config: Config, args: argparse.Namespace) -> Runner | ProcessRunner:
    if args.processes > 1:
        return ProcessRunner(
            args.processes,
            args.concurrency,
            retries=args.retries,
            policy=config.policy,
            loop="asyncio" if getattr(args, "no_uvloop", False) else "auto",
        )
    context = ProbeContext(dialer=Dialer(policy=config.policy))
    return Runner(max_concurrency=args.concurrency, retries=args.retries, context=context)


async def _once(config: Config, args: argparse.Namespace, jsonl: IO[str] | None) -> int:
    probes = [m.probe for m in config.monitors]
    progress = _rich_progress()
    async with _runner(config, args) as runner:
        if progress is None:
            results = await runner.run_all(probes)
        else:
            with progress:
                bar = progress.add_task("checking", total=len(probes))

                async def one(probe: Probe) -> Result:
                    result = await runner.check(probe)
                    progress.advance(bar)
                    return result

                results = list(await asyncio.gather(*(one(p) for p in probes)))
    rows = [["MONITOR", "STATUS", "TIME", "PHASES (ms)", "DETAIL"]]
    worst = Status.UP
    for monitor, result in zip(config.monitors, results, strict=True):
        worst = worst.worst(result.status)
        if jsonl is not None:
            jsonl.write(json_line(result, monitor=monitor.monitor_id) + "\n")
        rows.append(
            [
                monitor.monitor_id,
                result.status.name,
                f"{result.duration * 1000:.1f} ms",
                _phases(result),
                _detail(result),
            ]
        )
    _out(_table(rows))
    return worst.exit_code


async def _forever(config: Config, args: argparse.Namespace, jsonl: IO[str] | None) -> None:
    latest: dict[str, Result] = {}

    ids = [monitor.monitor_id for monitor in config.monitors]
    live = _rich_live(ids)
    alerts = _alerts(config)

    async def on_result(monitor_id: str, result: Result) -> None:
        latest[monitor_id] = result
        if alerts is not None:
            await alerts.observe(monitor_id, result.status, _detail(result))
        if jsonl is not None:
            jsonl.write(json_line(result, monitor=monitor_id) + "\n")
        if live is not None:
            live.update(_live_table(ids, latest), refresh=True)
            return
        _out(_live_line(monitor_id, result))
        sys.stdout.flush()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        handled = True
    server: MetricsServer | None = None
    renotify: asyncio.Task[None] | None = None
    rng = random.Random()  # noqa: S311 - spreading start times, not secrets
    try:
        async with (
            _runner(config, args) as runner,
            Scheduler(runner, on_result, jitter=args.jitter) as scheduler,
        ):
            if live is not None:
                live.start(refresh=True)
            if args.metrics_port is not None:
                from .._metrics_server import serve_metrics

                server = await serve_metrics(
                    args.metrics_host, args.metrics_port, lambda: prometheus_text(latest)
                )
                _err(f"probekit: Prometheus metrics at {server.url}")
            for monitor in config.monitors:
                first = rng.uniform(0, min(monitor.interval, FIRST_RUN_SPREAD))
                scheduler.add(monitor, first_in=first)
            if alerts is not None:
                alerts.start()
                renotify = asyncio.create_task(_renotify(alerts))
            await _until_stopped(scheduler, stop, args.duration)
    finally:
        if alerts is not None:
            if renotify is not None:
                renotify.cancel()
                await asyncio.gather(renotify, return_exceptions=True)
            await alerts.aclose()
        if live is not None:
            live.stop()
        if server is not None:
            await server.close()
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)


def _alerts(config: Config) -> ResultAlerts | None:
    """The alerts of the config's ``[[channels]]`` (None without channels)."""
    if not config.channels:
        return None
    from ..alerting._sinks import ResultAlerts

    return ResultAlerts(config.channels, failures=config.alert_failures)


async def _renotify(alerts: ResultAlerts) -> None:
    while True:
        await asyncio.sleep(1.0)
        await alerts.tick()


async def _until_stopped(scheduler: Scheduler, stop: asyncio.Event, duration: float | None) -> None:
    """Run ``scheduler`` until ``stop`` is set or ``duration`` seconds have passed."""
    running = asyncio.create_task(scheduler.run())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait(
            {running, stopping}, timeout=duration, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (running, stopping):
            task.cancel()
        await asyncio.gather(running, stopping, return_exceptions=True)
    if running.done() and not running.cancelled():
        failure = running.exception()
        if failure is not None:
            raise failure


def _phases(result: Result) -> str:
    return " ".join(
        f"{name} {(result.phase(name) or 0.0) * 1000:.1f}" for name in result.phase_names()
    )


def _detail(result: Result) -> str:
    if result.error is not None:
        where = f" during {result.error.phase}" if result.error.phase else ""
        return f"{result.error.kind.value}{where}: {result.error.message}"
    return describe(result)


def _live_line(monitor_id: str, result: Result) -> str:
    when = result.started_at.astimezone().strftime("%H:%M:%S")
    parts = [when, monitor_id, result.status.name, f"{result.duration * 1000:.1f} ms"]
    if phases := _phases(result):
        parts.append(f"[{phases}]")
    if detail := _detail(result):
        parts.append(detail)
    return " ".join(parts)


_STATUS_STYLES: Final = {
    Status.UP: "bold green",
    Status.DEGRADED: "bold yellow",
    Status.DOWN: "bold red",
    Status.UNKNOWN: "bold magenta",
}


def _rich_progress() -> Any:
    """A progress bar for ``run --once`` when standard output is a terminal and rich is
    installed; ``None`` otherwise (then only the table is printed)."""
    if not sys.stdout.isatty():
        return None
    try:
        from rich.progress import Progress
    except ImportError:
        return None
    return Progress(transient=True)


def _rich_live(monitor_ids: Sequence[str]) -> Live | None:
    """A live terminal table when standard output is a terminal and rich is installed
    (``pip install probekit[cli]``); ``None`` means plain lines, one per result."""
    if not sys.stdout.isatty():
        return None
    try:
        from rich.live import Live
    except ImportError:
        return None
    return Live(_live_table(monitor_ids, {}), auto_refresh=False, redirect_stderr=False)


def _live_table(monitor_ids: Sequence[str], latest: Mapping[str, Result]) -> RichTable:
    """The ``probekit run`` live table: a row per monitor with its latest result."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="probekit run", title_justify="left", expand=False)
    for column in ("monitor", "status", "last check", "duration", "phases (ms)", "detail"):
        table.add_column(column, justify="right" if column == "duration" else "left")
    for monitor_id in monitor_ids:
        result = latest.get(monitor_id)
        if result is None:
            table.add_row(monitor_id, Text("waiting", style="dim"), "", "", "", "")
            continue
        table.add_row(
            monitor_id,
            Text(result.status.name, style=_STATUS_STYLES[result.status]),
            result.started_at.astimezone().strftime("%H:%M:%S"),
            f"{result.duration * 1000:.1f} ms",
            _phases(result),
            _detail(result),
        )
    return table


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


COMMAND = Command(
    "run",
    "run the monitors of a config file",
    _configure_run,
    _run_monitors,
    description=(
        "Run the monitors of a TOML or JSON config file on their intervals, printing a line "
        "per result, until Ctrl-C or --duration; or, with --once, each monitor once."
    ),
)
