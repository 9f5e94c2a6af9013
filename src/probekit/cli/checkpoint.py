"""``probekit checkpoint``: one checkpoint instance, dialling out to a control plane."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from .._exceptions import DefinitionError, UsageError
from .._secret import Secret
from .._validate import is_loopback, read_secret, token_problem
from ._common import (
    Command,
    _add_verbose,
    _asyncio_run,
    _err,
    _integer,
    _on_stop_signals,
    _option_for,
    _policy,
    _Problems,
    _seconds,
)

if TYPE_CHECKING:
    from ..checkpoint import CheckpointSettings


def _configure_checkpoint(parser: argparse.ArgumentParser) -> None:
    who = parser.add_argument_group("control channel")
    who.add_argument("--url", required=True, metavar="URL", help="the control plane's wss:// URL")
    who.add_argument(
        "--standby-url",
        action="append",
        default=[],
        metavar="URL",
        help="a standby control plane's URL (repeatable): a failed connection moves to the next",
    )
    token = who.add_mutually_exclusive_group(required=True)
    token.add_argument(
        "--token-env", metavar="NAME", help="read the bearer token from this environment variable"
    )
    token.add_argument("--token-file", metavar="PATH", help="read the bearer token from this file")
    who.add_argument("--checkpoint-id", required=True, metavar="ID", help="the checkpoint's id")
    who.add_argument(
        "--instance-id",
        required=True,
        metavar="ID",
        help="this instance's id: unique in the checkpoint, stable across restarts",
    )
    who.add_argument(
        "--ca-file", metavar="FILE", help="verify the control plane against the CAs in this file"
    )
    who.add_argument(
        "--insecure",
        action="store_true",
        help="allow a ws:// URL (clear text; for loopback and tests)",
    )
    who.add_argument(
        "--heartbeat-interval",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds between heartbeats (default 5; match the control plane's)",
    )
    local = parser.add_argument_group("local settings")
    local.add_argument(
        "--spool", required=True, metavar="PATH", help="the SQLite spool file of this instance"
    )
    local.add_argument(
        "--spool-max-entries",
        type=_integer(1),
        default=100_000,
        metavar="N",
        help="results the spool holds before evicting the oldest (default 100000)",
    )
    local.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="CIDR",
        help="never dial this network (repeatable)",
    )
    local.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="dial only these networks (repeatable)",
    )
    local.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME=ENVVAR",
        help='resolve {secret = "NAME"} in definitions from environment variable ENVVAR',
    )
    local.add_argument(
        "--strip-addresses",
        action="store_true",
        help="leave resolved IP addresses out of results",
    )
    local.add_argument(
        "--strip-messages",
        action="store_true",
        help="leave error messages and observed response texts out of results",
    )
    local.add_argument(
        "--strip-tls-chain",
        action="store_true",
        help="leave certificate chains out of results",
    )
    local.add_argument(
        "--autonomous",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the synced monitors on a local schedule while disconnected (default: yes)",
    )
    local.add_argument(
        "--concurrency",
        type=_integer(1),
        default=100,
        metavar="N",
        help="checks at once (default 100)",
    )
    local.add_argument(
        "--processes",
        type=_integer(1),
        default=1,
        metavar="N",
        help="run the checks in N worker processes; --concurrency is the total (default 1)",
    )
    local.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="on stopping, wait at most S seconds for acks (default 10)",
    )
    local.add_argument(
        "--metrics-port",
        type=_integer(0, 65535),
        metavar="N",
        help="serve /metrics and /ready on this port (0: any free port)",
    )
    local.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to serve /metrics and /ready on (default 127.0.0.1)",
    )
    parser.add_argument(
        "--duration", type=_seconds, metavar="S", help="drain and stop after S seconds"
    )
    _add_verbose(parser)


#: Which option sets each CheckpointSettings field, for error messages.
_CHECKPOINT_OPTIONS: Final = {
    "url": "--url",
    "standby_urls": "--standby-url",
    "token": "--token-env/--token-file",
    "checkpoint_id": "--checkpoint-id",
    "instance_id": "--instance-id",
    "spool_path": "--spool",
    "ca_file": "--ca-file",
    "metrics_host": "--metrics-host",
    "metrics_port": "--metrics-port",
    "secrets": "--secret",
}


def _read_token(args: argparse.Namespace, problems: _Problems) -> Secret | None:
    try:
        if args.token_env is not None:
            option = "--token-env"
            token = read_secret("env", args.token_env)
        else:
            option = "--token-file"
            token = read_secret("file", args.token_file)
    except DefinitionError as exc:
        problems.add(option, exc.message)
        return None
    problem = token_problem(token.reveal())
    if problem is not None:
        problems.add(option, problem)
        return None
    return token


def _read_secrets(specs: Sequence[str], problems: _Problems) -> dict[str, Secret]:
    out: dict[str, Secret] = {}
    for spec in specs:
        name, sep, variable = spec.partition("=")
        if not sep or not name or not variable:
            problems.add("--secret", f"expected NAME=ENVVAR, got {spec!r}")
            continue
        try:
            out[name] = read_secret("env", variable)
        except DefinitionError as exc:
            problems.add("--secret", f"{name}: {exc.message}")
    return out


def _checkpoint_settings(args: argparse.Namespace) -> CheckpointSettings:
    from urllib.parse import urlsplit

    from ..checkpoint import CheckpointSettings

    problems = _Problems()
    policy = _policy(args.allow, args.deny, problems)
    token = _read_token(args, problems)
    secrets = _read_secrets(args.secret, problems)
    try:
        parts = urlsplit(args.url)
        scheme, host = parts.scheme, parts.hostname or ""
    except ValueError:
        scheme, host = "", ""
    if scheme == "ws" and not args.insecure:
        problems.add(
            "--url",
            "ws:// would send the token and every result in clear text; use wss://, "
            "or pass --insecure (meant for loopback and tests)",
        )
    settings = None
    with problems.about("--url", _CHECKPOINT_OPTIONS):
        settings = CheckpointSettings(
            url=args.url,
            standby_urls=tuple(args.standby_url),
            # A stand-in when the token could not be read, so the other options are checked too.
            token=token or Secret("unread"),
            checkpoint_id=args.checkpoint_id,
            instance_id=args.instance_id,
            spool_path=args.spool,
            spool_max_entries=args.spool_max_entries,
            policy=policy,
            ca_file=args.ca_file,
            # ws:// without --insecure is already reported above, in the command line's words.
            insecure=args.insecure or scheme == "ws",
            max_concurrency=args.concurrency,
            processes=args.processes,
            heartbeat_interval=args.heartbeat_interval,
            drain_timeout=args.drain_timeout,
            autonomous_when_disconnected=args.autonomous,
            strip_addresses=args.strip_addresses,
            strip_tls_chain=args.strip_tls_chain,
            strip_messages=args.strip_messages,
            secrets=secrets,
            metrics_host=args.metrics_host,
            metrics_port=args.metrics_port,
        )
    problems.raise_any()
    assert settings is not None
    if scheme == "ws" and not is_loopback(host):
        _err(
            f"probekit checkpoint: warning: ws://{host} is not a loopback address: the token "
            "and every result cross the network in clear text"
        )
    return settings


def _run_checkpoint(args: argparse.Namespace) -> int:
    from ..checkpoint import Checkpoint
    from ..checkpoint._spool import SpoolError

    settings = _checkpoint_settings(args)
    try:
        checkpoint = Checkpoint(settings)
    except DefinitionError as exc:
        option = _option_for(exc.path, "--url", _CHECKPOINT_OPTIONS)
        raise UsageError(f"{option}: {exc.message}") from None
    prog = "probekit checkpoint"

    async def serve() -> None:
        with _on_stop_signals(checkpoint.request_drain):
            task = asyncio.create_task(checkpoint.run())
            _err(
                f"{prog}: instance {settings.instance_id} of checkpoint {settings.checkpoint_id}, "
                f"control plane {settings.url}, spool {settings.spool_path}"
            )
            if settings.metrics_port is not None:
                # The checkpoint has no public "serving" event; it binds the port first thing.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10.0):
                        while checkpoint.metrics_address is None and not task.done():  # noqa: ASYNC110
                            await asyncio.sleep(0.01)
                if checkpoint.metrics_address is not None:
                    host, port = checkpoint.metrics_address
                    _err(f"{prog}: /metrics and /ready at http://{host}:{port}/")
            done, _ = await asyncio.wait({task}, timeout=args.duration)
            if not done:
                checkpoint.request_drain()
            try:
                await task
            except SpoolError as exc:
                raise UsageError(f"--spool: {exc}") from None
            except OSError as exc:
                raise UsageError(f"--metrics-port: cannot listen: {exc}") from None
        stats = checkpoint.stats
        _err(
            f"{prog}: drained: {stats['results_produced']} results produced, "
            f"{stats['results_acked']} acked, {stats['spool_depth']} left in the spool"
        )

    _asyncio_run(serve(), args)
    return 0


COMMAND = Command(
    "checkpoint",
    "run one checkpoint instance, dialling out to a control plane",
    _configure_checkpoint,
    _run_checkpoint,
    description=(
        "Run one instance of a private checkpoint: it dials out to the control plane at "
        "--url, runs the checks it is sent under the local egress policy, spools every "
        "result until the control plane acks it. Ctrl-C or SIGTERM drains it (in-flight "
        "checks finish, results are flushed) and it exits with 0."
    ),
)
