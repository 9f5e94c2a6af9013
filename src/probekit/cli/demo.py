"""``probekit demo``: the whole system on loopback (the system itself is in :mod:`._demo`)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .._exceptions import UsageError
from ._common import Command, _asyncio_run, _on_stop_signals


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: Ctrl-C)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between runs (2)")
    parser.add_argument(
        "--break-after", type=float, default=8.0, help="when the 'web' target breaks (8 s)"
    )
    parser.add_argument(
        "--mend-after", type=float, default=18.0, help="when it is mended again (18 s)"
    )


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    if args.interval <= 0 or (args.duration is not None and args.duration <= 0):
        raise UsageError("--interval and --duration must be positive")

    async def go() -> int:
        stop = asyncio.Event()
        with _on_stop_signals(stop.set):
            events = await run_demo(
                args.duration,
                break_after=args.break_after,
                mend_after=args.mend_after,
                interval=args.interval,
                stop=stop,
            )
        opened = sum(1 for e in events if e.kind == "alert_opened")
        sys.stdout.write(f"probekit demo: done ({opened} alert(s) opened)\n")
        return 0

    return _asyncio_run(go(), args)


COMMAND = Command(
    "demo",
    "run a control plane, two checkpoint instances and local targets, and watch a failover",
    _configure_demo,
    _run_demo,
    description=(
        "Start, all on 127.0.0.1, an HTTP app, an HTTPS app with its own CA and a TCP service, "
        "a control plane and two checkpoint instances; print results and alerts as they "
        "happen; break the HTTP app after a while (an unconfirmed error, confirmed on the "
        "other instance, then an alert) and mend it. Ctrl-C stops everything."
    ),
)
