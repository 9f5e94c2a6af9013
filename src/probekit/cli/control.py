"""``probekit control --config FILE``: the reference control plane of a config file (read by
:func:`probekit.control._config.load_control_config`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._exceptions import DefinitionError, DefinitionErrors, UsageError
from ._common import (
    Command,
    _add_verbose,
    _asyncio_run,
    _err,
    _integer,
    _on_stop_signals,
    _seconds,
)

if TYPE_CHECKING:
    from ..control import ControlPlane
    from ..control._config import ControlConfig
    from ..control._logic import MonitorSpec

__all__ = ["COMMAND"]


def _configure_control(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="the control plane's TOML (or .json) config file",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain ws:// on a non-loopback address (tokens and results in clear text)",
    )
    parser.add_argument(
        "--duration", type=_seconds, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    parser.add_argument(
        "--metrics-port",
        type=_integer(0, 65535),
        metavar="N",
        help="serve the control plane's /metrics and /ready on port N (0 picks a free one; "
        "overrides metrics_port of the config file)",
    )
    parser.add_argument(
        "--metrics-host",
        metavar="ADDR",
        help="the address of /metrics and /ready (default: metrics_host of the config file, "
        "else 127.0.0.1)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print no line per stored result: only alert events, errors and the start and "
        "stop lines",
    )
    _add_verbose(parser)


async def _apply_monitors(plane: ControlPlane, monitors: Sequence[MonitorSpec]) -> None:
    """Make the plane's monitors those of the config file (the file is the source of truth)."""
    wanted = {m.monitor_id for m in monitors}
    for monitor_id in plane.monitors:
        if monitor_id not in wanted:
            await plane.remove_monitor(monitor_id)
    await plane.add_monitors(
        (spec.monitor_id, spec.checkpoint_id, spec.definition, spec.interval) for spec in monitors
    )


@contextlib.contextmanager
def _on_sighup(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` on SIGHUP while inside (where the platform has it)."""
    loop = asyncio.get_running_loop()
    hup = getattr(signal, "SIGHUP", None)
    installed = False
    if hup is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(hup, callback)
            installed = True
    try:
        yield
    finally:
        if installed and hup is not None:
            loop.remove_signal_handler(hup)


def _load(args: argparse.Namespace) -> ControlConfig:
    from ..control._config import load_control_config

    config = load_control_config(
        args.config,
        insecure=args.insecure,
        warn=lambda text: _err(f"probekit control: warning: {text}"),
    )
    changes: dict[str, Any] = {}
    if args.metrics_port is not None:
        changes["metrics_port"] = args.metrics_port
    if args.metrics_host is not None:
        changes["metrics_host"] = args.metrics_host
    if changes:
        config = attrs.evolve(config, settings=attrs.evolve(config.settings, **changes))
    return config


def _plural(count: int, what: str) -> str:
    return f"{count} {what}{'s' if count != 1 else ''}"


async def _reload(
    args: argparse.Namespace,
    plane: ControlPlane,
    running: ControlConfig,
    say: Callable[[str], None],
) -> ControlConfig:
    """Read the config file again and apply it: checkpoints and tokens, the ``[control]``
    settings that can change live (see :meth:`ControlPlane.reconfigure`; those that take a
    restart are named in a warning), monitors and webhooks. A file with errors changes nothing
    and is reported. Returns the config now in force."""
    try:
        config = _load(args)
    except DefinitionError as exc:  # DefinitionErrors too: every problem, each with its path
        problems = exc.errors if isinstance(exc, DefinitionErrors) else [exc]
        _err(
            f"probekit control: reload failed, the running config stays: {args.config}: "
            f"{_plural(len(problems), 'error')}"
        )
        for problem in problems:
            _err(f"  {problem}")
        return running
    settings = config.settings
    tls_moved = config.tls_files != running.tls_files
    if not tls_moved:
        # The same files: compare as unchanged (a context is not compared by its content).
        settings = attrs.evolve(settings, ssl_context=plane.settings.ssl_context)
    outcome = await plane.reconfigure(settings)
    restart = [
        "db" if name == "db_path" else name for name in outcome.restart if name != "ssl_context"
    ]
    if tls_moved:
        restart.append("tls_cert/tls_key")
    if restart:
        _err(
            "probekit control: warning: reload: these [control] settings take a restart "
            f"(not applied, the running values stay): {', '.join(restart)}"
        )
    # What is in force: the running values of what takes a restart.
    config = attrs.evolve(
        config,
        settings=plane.settings,
        tls_files=running.tls_files,
    )
    before = plane.monitors
    try:
        await _apply_monitors(plane, config.monitors)
        for monitor_id in sorted(set(plane.sites) - {policy.monitor_id for policy in config.sites}):
            await plane.remove_sites(monitor_id)
        for policy in config.sites:
            await plane.set_sites(policy)
    except (DefinitionError, sqlite3.Error) as exc:
        _err(f"probekit control: reload failed part way: {exc}")
        return running
    after = plane.monitors
    added = len(set(after) - set(before))
    removed = len(set(before) - set(after))
    changed = sum(1 for m in set(before) & set(after) if before[m].revision != after[m].revision)
    plane.sinks[:] = [
        s for s in plane.sinks if s not in running.webhooks and s not in running.channels
    ]
    for channel in (*running.webhooks, *running.channels):
        await channel.aclose()  # what is undelivered stays in the outbox for the new one
    for channel in (*config.webhooks, *config.channels):
        plane.start_sink(channel)  # (its outbox: the control plane's database)
    for window in running.maintenance:  # (windows added through the API stay)
        plane.end_maintenance(window.window_id)
    for window in config.maintenance:
        plane.add_maintenance(window)
    plane.maintenance.labels.clear()
    plane.maintenance.labels.update(config.labels)
    checkpoints = []
    if outcome.checkpoints_added:
        checkpoints.append(f"checkpoints added: {', '.join(outcome.checkpoints_added)}")
    if outcome.checkpoints_removed:
        checkpoints.append(f"checkpoints removed: {', '.join(outcome.checkpoints_removed)}")
    if outcome.tokens_changed:
        checkpoints.append(f"tokens changed: {', '.join(outcome.tokens_changed)}")
    if outcome.closed:
        checkpoints.append(f"{_plural(outcome.closed, 'connection')} closed")
    if outcome.applied:
        checkpoints.append(f"settings applied: {', '.join(outcome.applied)}")
    say(
        f"probekit control: reloaded {args.config}: {_plural(len(after), 'monitor')} "
        f"({added} added, {changed} changed, {removed} removed)"
        + "".join(f"; {part}" for part in checkpoints)
    )
    return config


def _run_control(args: argparse.Namespace) -> int:
    from ..control import ControlPlane
    from ._demo import Printer

    config = _load(args)

    demoted = False

    async def serve() -> None:
        nonlocal config, demoted
        width = max(len(m.monitor_id) for m in config.monitors)
        printer = Printer(sys.stdout, width=width, keep_events=False)
        signals: asyncio.Queue[str] = asyncio.Queue()
        with (
            _on_stop_signals(lambda: signals.put_nowait("stop")),
            _on_sighup(lambda: signals.put_nowait("reload")),
        ):
            plane = ControlPlane(
                config.settings,
                sinks=[printer, *config.webhooks, *config.channels],
                maintenance=config.maintenance,
                sites=config.sites,
            )
            plane.maintenance.labels.update(config.labels)
            starting = asyncio.create_task(plane.start())
            stopped = asyncio.create_task(signals.get())
            if config.settings.standby:
                listening = asyncio.create_task(plane.listening.wait())
                await asyncio.wait(
                    {starting, stopped, listening}, return_when=asyncio.FIRST_COMPLETED
                )
                listening.cancel()
                if plane.listening.is_set() and not starting.done():
                    printer.line(
                        f"probekit control: standing by on {plane.url} (instances are told "
                        "503 standby) until this one holds the database lock"
                    )
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # stopped while standing by
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                await plane.stop()
                printer.line("probekit control: stopped (it was a standby)")
                return
            stopped.cancel()
            failures: tuple[type[Exception], ...] = (OSError, sqlite3.Error, *plane.storage_errors)
            try:
                starting.result()
            except failures as exc:
                await plane.stop()
                raise UsageError(f"cannot start the control plane: {exc}") from None
            plane.demoted_listeners.append(lambda: signals.put_nowait("demoted"))
            try:
                if not args.quiet:
                    plane.result_listeners.append(printer.result)
                await _apply_monitors(plane, config.monitors)
                for monitor_id in sorted(set(plane.sites) - {s.monitor_id for s in config.sites}):
                    await plane.remove_sites(monitor_id)  # stored, but no longer in the file
                checkpoints = ", ".join(sorted(config.settings.tokens))
                count = len(config.monitors)
                printer.line(
                    f"probekit control: listening on {plane.url} (checkpoints: {checkpoints}; "
                    f"{_plural(count, 'monitor')})"
                )
                if plane.metrics_address is not None:
                    host, port = plane.metrics_address[:2]
                    shown = f"[{host}]" if ":" in host else host
                    printer.line(f"probekit control: /metrics and /ready at http://{shown}:{port}/")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(args.duration):
                        while (signal := await signals.get()) not in ("stop", "demoted"):
                            config = await _reload(args, plane, config, printer.line)
                        if signal == "demoted":
                            demoted = True
                printer.line("probekit control: stopping")
            finally:
                await plane.stop()
            printer.line(
                f"probekit control: stopped ({plane.results_stored} results stored, "
                f"{plane.duplicates} duplicates dropped)"
            )

    _asyncio_run(serve(), args)
    if demoted:
        _err(
            "probekit control: lost the database's active lock; exiting so it restarts as a standby"
        )
        return 1
    return 0


COMMAND = Command(
    "control",
    "run the reference control plane of a config file",
    _configure_control,
    _run_control,
    description=(
        "Run the reference control plane: checkpoint instances dial in with their "
        "checkpoint's token, it sends them the monitors of the config file, schedules runs "
        "across them, confirms failures on another instance and raises alerts. Prints a line "
        "per stored result (none with --quiet) and per alert event, until Ctrl-C, SIGTERM or "
        "--duration. SIGHUP reads the config file again and applies its checkpoints and tokens, "
        "monitors, webhooks and the [control] settings that can change live, naming those that "
        "take a restart (a config with errors is reported and the running one stays)."
    ),
)
