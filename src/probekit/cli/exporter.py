"""``probekit exporter --config blackbox.yml``: a drop-in for blackbox_exporter (see
:mod:`probekit.exporter` and docs/exporter.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from .._context import ProbeContext
from .._dial import Dialer
from .._exceptions import DefinitionError, DefinitionErrors, UsageError
from ._common import (
    Command,
    _add_policy_options,
    _add_verbose,
    _asyncio_run,
    _err,
    _on_stop_signals,
    _out,
    _policy,
    _Problems,
    _seconds,
)
from .control import _on_sighup

__all__ = ["COMMAND"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "--config.file",
        dest="config",
        required=True,
        metavar="FILE",
        help="blackbox_exporter's blackbox.yml, or modules in probekit's TOML (.toml)",
    )
    parser.add_argument(
        "--listen",
        "--web.listen-address",
        dest="listen",
        default="127.0.0.1:9115",
        metavar="HOST:PORT",
        help="where to serve /probe and /metrics (default 127.0.0.1:9115; :9115 for every "
        "interface)",
    )
    parser.add_argument(
        "--timeout-offset",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds subtracted from the scrape's timeout (default 0.5, as blackbox_exporter)",
    )
    parser.add_argument(
        "--duration", type=_seconds, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    policy = parser.add_argument_group(
        "egress policy",
        "cloud metadata and link-local addresses are denied unless --allow names them",
    )
    _add_policy_options(policy)
    _add_verbose(parser)


def _listen_address(text: str) -> tuple[str | None, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen: expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    return (host or None), int(port)


def _run(args: argparse.Namespace) -> int:
    from ..exporter import Exporter

    problems = _Problems()
    policy = _policy(args.allow, args.deny, problems)
    problems.raise_any()
    host, port = _listen_address(args.listen)
    try:
        exporter = Exporter(
            config=args.config,
            context=ProbeContext(dialer=Dialer(policy=policy)),
            timeout_offset=args.timeout_offset,
        )
    except OSError as exc:
        raise UsageError(f"cannot read {args.config}: {exc.strerror or exc}") from None
    except DefinitionErrors as exc:
        raise UsageError(
            f"{args.config}: {len(exc.errors)} error(s)\n" + "\n".join(str(e) for e in exc.errors)
        ) from None

    async def serve() -> None:
        stop = asyncio.Event()

        def reload() -> None:
            try:
                exporter.reload()
            except (DefinitionError, OSError) as exc:
                _err(f"probekit exporter: reload failed, the running modules stay: {exc}")
            else:
                _out(
                    f"probekit exporter: reloaded {args.config}: {len(exporter.modules)} module(s)"
                )

        async with exporter:
            try:
                server = await exporter.serve(host, port)
            except OSError as exc:
                raise UsageError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
            bound_host, bound_port = server.address
            _out(
                f"probekit exporter: {len(exporter.modules)} module(s) from {args.config}; "
                f"serving http://{bound_host}:{bound_port}/probe"
            )
            with (
                _on_stop_signals(stop.set),
                _on_sighup(reload),
                contextlib.suppress(TimeoutError),
            ):
                async with asyncio.timeout(args.duration):
                    await stop.wait()

    _asyncio_run(serve(), args)
    return 0


COMMAND = Command(
    "exporter",
    "serve /probe as blackbox_exporter does, from its blackbox.yml",
    _configure,
    _run,
    description=(
        "A drop-in for Prometheus' blackbox_exporter: reads its blackbox.yml (http, tcp, dns "
        "and icmp probers) or modules in probekit's TOML, and serves /probe?module=M&target=T "
        "with blackbox_exporter's metric names plus probekit's own, /metrics, /-/healthy and "
        "/-/reload (POST). SIGHUP reloads the config (on errors the running modules stay). "
        "The egress policy applies to every target and redirect: cloud metadata and "
        "link-local addresses are denied unless --allow names them."
    ),
)
