"""``probekit control --config FILE``: the reference control plane of a config file (read by
:func:`probekit.control._config.load_control_config`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._exceptions import UsageError
from ..control._config import ControlConfig, load_control_config
from ._common import Command, _add_verbose, _asyncio_run, _err, _on_stop_signals, _seconds

if TYPE_CHECKING:
    from ..control import ControlPlane
    from ..control._logic import MonitorSpec

__all__ = ["COMMAND", "ControlConfig", "load_control_config"]


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
    _add_verbose(parser)


async def _apply_monitors(plane: ControlPlane, monitors: Sequence[MonitorSpec]) -> None:
    """Make the plane's monitors those of the config file (the file is the source of truth)."""
    wanted = {m.monitor_id for m in monitors}
    for monitor_id in plane.monitors:
        if monitor_id not in wanted:
            await plane.remove_monitor(monitor_id)
    for spec in monitors:
        await plane.add_monitor(spec.monitor_id, spec.checkpoint_id, spec.definition, spec.interval)


def _run_control(args: argparse.Namespace) -> int:
    from ..control import ControlPlane
    from ._demo import Printer

    config = load_control_config(
        args.config,
        insecure=args.insecure,
        warn=lambda text: _err(f"probekit control: warning: {text}"),
    )

    async def serve() -> None:
        width = max(len(m.monitor_id) for m in config.monitors)
        printer = Printer(sys.stdout, width=width, keep_events=False)
        stop = asyncio.Event()
        with _on_stop_signals(stop.set):
            plane = ControlPlane(config.settings, sinks=[printer, *config.webhooks])
            try:
                await plane.start()
            except (OSError, sqlite3.Error) as exc:
                await plane.stop()
                raise UsageError(f"cannot start the control plane: {exc}") from None
            try:
                plane.result_listeners.append(printer.result)
                await _apply_monitors(plane, config.monitors)
                checkpoints = ", ".join(sorted(config.settings.tokens))
                count = len(config.monitors)
                printer.line(
                    f"probekit control: listening on {plane.url} (checkpoints: {checkpoints}; "
                    f"{count} monitor{'s' if count != 1 else ''})"
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(args.duration):
                        await stop.wait()
                printer.line("probekit control: stopping")
            finally:
                await plane.stop()
            printer.line(
                f"probekit control: stopped ({plane.results_stored} results stored, "
                f"{plane.duplicates} duplicates dropped)"
            )

    _asyncio_run(serve(), args)
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
        "per stored result and per alert event, until Ctrl-C, SIGTERM or --duration."
    ),
)
