"""The ``probekit`` command line (also ``python -m probekit``).

``check`` runs one check, ``run`` the monitors of a config file, ``demo`` the whole system on
loopback, ``control`` the reference control plane of a control-plane config file
(:func:`load_control_config`) and ``checkpoint`` one checkpoint instance.

Each subcommand is a :class:`Command` (its name, help, a function that adds its options and a
function that runs it) registered in :data:`COMMANDS`; :func:`main` builds the parser from that
table. Exit codes are the Nagios ones wherever a status is reported (0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN); invalid input (a usage error, an invalid config file or definition) exits
with 3, UNKNOWN, as the Nagios plugin guidelines ask. The reference is ``docs/cli.md``.

This module is the only one in probekit that prints; the library itself only logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import os
import random
import re
import signal
import sqlite3
import ssl
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn, TypeGuard, TypeVar

import attrs

from .._assertions import (
    Assertion,
    BodyContains,
    BodyMatches,
    HeaderMatches,
    ResponseTime,
    StatusIn,
)
from .._config import (
    DEFAULT_INTERVAL,
    Config,
    _kind,
    _Loader,
    interval_problem,
    load_config,
    read_config_file,
)
from .._context import ProbeContext
from .._definitions import DefinitionErrors, build_probe
from .._dial import Dialer
from .._exceptions import DefinitionError, UsageError
from .._exporters import PROMETHEUS_CONTENT_TYPE, json_line, nagios_line, prometheus_text
from .._policy import EgressPolicy
from .._pool import ProcessRunner
from .._result import Result, Status
from .._runner import Runner
from .._scheduler import Scheduler
from .._secret import Secret
from .._serialization import result_to_json
from .._timeouts import Timeouts
from .._tls import TlsOptions
from ..probes._base import Probe

if TYPE_CHECKING:
    from rich.live import Live
    from rich.table import Table as RichTable

    from ..checkpoint import CheckpointSettings
    from ..control import ControlPlane, ControlSettings, WebhookSink
    from ..control._logic import MonitorSpec

__all__ = [
    "COMMANDS",
    "Command",
    "ControlConfig",
    "UsageError",
    "build_parser",
    "load_control_config",
    "main",
]

log = logging.getLogger("probekit.cli")

#: Exit code for invalid input: Nagios UNKNOWN.
EXIT_USAGE: Final = 3
#: The first run of each monitor of ``probekit run`` starts within this many seconds (or its
#: interval, if shorter), spread at random so that monitors do not all start together.
FIRST_RUN_SPREAD: Final = 1.0


@attrs.frozen
class Command:
    """A subcommand: ``configure`` adds its arguments, ``run`` runs it and returns the exit code."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits with 3 (UNKNOWN) rather than 2 (CRITICAL)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _out(text: str = "", stream: IO[str] | None = None) -> None:
    target = stream if stream is not None else sys.stdout
    target.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


# -- argument types --------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{upper}, got {value}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"must be from 0 to below 0.5, got {text!r}")
    return value


class _Step(argparse.Action):
    """Appends ``(self.const, value)`` to one shared list, so --send/--expect keep their order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        steps = list(getattr(namespace, self.dest, None) or [])
        steps.append((self.const, values))
        setattr(namespace, self.dest, steps)


_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)", re.S)
_ESCAPES: Final = {"r": "\r", "n": "\n", "t": "\t", "0": "\0", "\\": "\\"}


def _unescape(text: str) -> str:
    r"""Read ``\r``, ``\n``, ``\t``, ``\0``, ``\\`` and ``\xHH`` in a --send argument."""

    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("x") and len(code) == 3:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, match.group(0))

    return _ESCAPE.sub(replace, text)


# -- probekit check --------------------------------------------------------------------------


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", metavar="KIND", choices=sorted(_PROBE_BUILDERS), help="http, tcp")
    parser.add_argument("target", metavar="TARGET", help="a URL for http; HOST:PORT for tcp")
    output = parser.add_argument_group("output").add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        dest="output",
        action="store_const",
        const="json",
        default="human",
        help="print the result as JSON (the schema of docs/results.md)",
    )
    output.add_argument(
        "--nagios",
        dest="output",
        action="store_const",
        const="nagios",
        help="print a Nagios plugin line with perfdata",
    )
    common = parser.add_argument_group("connection")
    common.add_argument(
        "--timeout", type=_seconds, default=10.0, metavar="S", help="deadline (default 10)"
    )
    common.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    common.add_argument("--ca-file", metavar="FILE", help="trust the CAs in this PEM file")
    common.add_argument("--tls", action="store_true", help="tcp: speak TLS from the first byte")
    common.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="CIDR",
        help="refuse to dial this network (repeatable)",
    )
    common.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="dial only these networks (repeatable)",
    )
    checks = parser.add_argument_group("assertions")
    checks.add_argument(
        "--expect-status",
        metavar="CODES",
        help="http: accepted status codes, e.g. 200-299,301 (default 200-299)",
    )
    checks.add_argument(
        "--contains", action="append", default=[], metavar="TEXT", help="body contains TEXT"
    )
    checks.add_argument(
        "--regex", action="append", default=[], metavar="RE", help="body matches RE"
    )
    checks.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:RE",
        help="http: a value of response header NAME matches RE",
    )
    checks.add_argument(
        "--warn", type=_seconds, metavar="S", help="DEGRADED (WARNING) when slower than S"
    )
    checks.add_argument(
        "--crit", type=_seconds, metavar="S", help="DOWN (CRITICAL) when slower than S"
    )
    http = parser.add_argument_group("http")
    http.add_argument(
        "--method", metavar="M", help="request method (default GET, POST with --data)"
    )
    http.add_argument("--data", metavar="BODY", help="request body")
    http.add_argument(
        "-H",
        "--request-header",
        dest="request_headers",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="send this request header (repeatable)",
    )
    tcp = parser.add_argument_group("tcp")
    tcp.add_argument(
        "--send",
        dest="steps",
        action=_Step,
        const="send",
        metavar="TEXT",
        help=r"send TEXT (\r \n \t \0 \\ \xHH are read as escapes)",
    )
    tcp.add_argument(
        "--expect",
        dest="steps",
        action=_Step,
        const="expect",
        metavar="RE",
        help="read until RE matches (steps run in the order given)",
    )


class _Problems:
    """Collects every problem with the options, each naming its option."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, option: str, message: str) -> None:
        self.messages.append(f"{option}: {message}")

    @contextlib.contextmanager
    def about(self, option: str, fields: Mapping[str, str] | None = None) -> Iterator[None]:
        """Report a DefinitionError raised inside as a problem with ``option``.

        ``fields`` maps the first part of the error's field path to the option that set it.
        """
        try:
            yield
        except DefinitionErrors as exc:
            for error in exc.errors:
                self.add(_option_for(error.path, option, fields), error.message)
        except DefinitionError as exc:
            self.add(_option_for(exc.path, option, fields), exc.message)

    def raise_any(self) -> None:
        if self.messages:
            raise UsageError("\n".join(self.messages))


def _option_for(path: str, default: str, fields: Mapping[str, str] | None) -> str:
    key = re.split(r"[.\[]", path, maxsplit=1)[0]
    return (fields or {}).get(key, default)


def _assertions(args: argparse.Namespace, problems: _Problems) -> list[Assertion]:
    out: list[Assertion] = []
    if args.expect_status is not None:
        with problems.about("--expect-status"):
            out.append(StatusIn.parse(args.expect_status))
    out.extend(BodyContains(text) for text in args.contains)
    for pattern in args.regex:
        with problems.about("--regex"):
            out.append(BodyMatches(pattern))
    for spec in args.header:
        name, sep, pattern = spec.partition(":")
        if not sep or not name.strip():
            problems.add("--header", f"expected NAME:REGEX, got {spec!r}")
            continue
        with problems.about("--header"):
            out.append(HeaderMatches(name.strip(), pattern))
    if args.warn is not None or args.crit is not None:
        with problems.about("--warn"):
            out.append(ResponseTime(warn=args.warn, crit=args.crit))
    return out


def _tls_options(args: argparse.Namespace, problems: _Problems) -> TlsOptions | None:
    if not (args.insecure or args.ca_file):
        return None
    if args.ca_file:
        try:
            with open(args.ca_file, "rb"):
                pass
        except OSError as exc:
            problems.add("--ca-file", f"cannot read {args.ca_file}: {exc.strerror}")
    options = None
    with problems.about("--ca-file"):
        options = TlsOptions(verify=not args.insecure, ca_file=args.ca_file)
    return options


_OPTION_DESTS: Final = {
    "--tls": "tls",
    "--send/--expect": "steps",
    "--expect-status": "expect_status",
    "--header": "header",
    "--method": "method",
    "--data": "data",
    "-H": "request_headers",
}


def _not_for(
    kind: str, args: argparse.Namespace, problems: _Problems, names: Sequence[str]
) -> None:
    for name in names:
        if getattr(args, _OPTION_DESTS[name]):
            problems.add(name, f"not an option for {kind} checks")


def _http_probe(args: argparse.Namespace, problems: _Problems) -> Probe | None:
    from ..probes.http import HttpProbe

    _not_for("http", args, problems, ("--tls", "--send/--expect"))
    headers = []
    for spec in args.request_headers:
        name, sep, value = spec.partition(":")
        if not sep or not name.strip():
            problems.add("-H", f"expected 'NAME: VALUE', got {spec!r}")
            continue
        headers.append((name.strip(), value.strip()))
    assertions = _assertions(args, problems)
    tls = _tls_options(args, problems)
    method = args.method or ("POST" if args.data is not None else "GET")
    probe = None
    with problems.about("TARGET", {"method": "--method", "headers": "-H", "tls": "--ca-file"}):
        probe = HttpProbe(
            args.target,
            method=method,
            headers=tuple(headers),
            body=args.data,
            tls=tls or TlsOptions(),
            assertions=tuple(assertions),
            timeouts=Timeouts(total=args.timeout),
        )
    return probe


def _tcp_probe(args: argparse.Namespace, problems: _Problems) -> Probe | None:
    from ..probes.tcp import Expect, Send, TcpProbe

    _not_for(
        "tcp",
        args,
        problems,
        ("--expect-status", "--header", "--method", "--data", "-H"),
    )
    host, port = _host_port(args.target, problems)
    steps: list[Send | Expect] = []
    for what, value in args.steps or []:
        with problems.about(f"--{what}"):
            steps.append(Send(_unescape(value)) if what == "send" else Expect(pattern=value))
    assertions = _assertions(args, problems)
    tls = _tls_options(args, problems)
    if tls is not None and not args.tls:
        problems.add("--insecure/--ca-file", "need --tls for tcp checks")
    if args.tls and tls is None:
        tls = TlsOptions()
    if host is None or port is None:
        return None
    probe = None
    with problems.about("TARGET", {"tls": "--ca-file", "steps": "--send/--expect"}):
        probe = TcpProbe(
            host,
            port,
            tls=tls if args.tls else None,
            steps=tuple(steps),
            assertions=tuple(assertions),
            timeouts=Timeouts(total=args.timeout),
        )
    return probe


def _host_port(text: str, problems: _Problems) -> tuple[str | None, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        problems.add("TARGET", f"expected HOST:PORT (or [IPv6]:PORT), got {text!r}")
        return None, None
    return host, int(port_text)


_PROBE_BUILDERS: Final[dict[str, Callable[[argparse.Namespace, _Problems], Probe | None]]] = {
    "http": _http_probe,
    "tcp": _tcp_probe,
}


def _policy(allow: Sequence[str], deny: Sequence[str], problems: _Problems) -> EgressPolicy:
    policy = EgressPolicy()
    for option, values in (("--allow", allow), ("--deny", deny)):
        with problems.about(option):
            EgressPolicy(**{option.lstrip("-"): values})
    if not problems.messages:
        policy = EgressPolicy(allow=allow, deny=deny)
    return policy


_T = TypeVar("_T")


def _loop_factory(use_uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory the commands run on: uvloop's when ``use_uvloop`` and uvloop is
    importable (``pip install probekit[speed]``), else ``None`` (asyncio's default loop)."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _asyncio_run(main: Coroutine[Any, Any, _T], args: argparse.Namespace) -> _T:
    """Run ``main`` to completion on uvloop unless it is missing or ``--no-uvloop`` was given."""
    factory = _loop_factory(not getattr(args, "no_uvloop", False))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _run_check(args: argparse.Namespace) -> int:
    problems = _Problems()
    policy = _policy(args.allow, args.deny, problems)
    probe = _PROBE_BUILDERS[args.kind](args, problems)
    try:
        problems.raise_any()
    except UsageError as exc:
        if args.output == "nagios":
            first = str(exc).splitlines()[0]
            _out(f"{args.kind.upper()} UNKNOWN - invalid options: {first}")
        raise
    assert probe is not None
    context = ProbeContext(dialer=Dialer(policy=policy))
    result = _asyncio_run(_check_once(probe, context), args)
    if args.output == "json":
        _out(result_to_json(result))
    elif args.output == "nagios":
        line, _ = nagios_line(result, warn=args.warn, crit=args.crit)
        _out(line)
    else:
        _out(_human(result))
    return result.status.exit_code


async def _check_once(probe: Probe, context: ProbeContext) -> Result:
    async with Runner(max_concurrency=1, context=context) as runner:
        return await runner.check(probe)


def _human(result: Result) -> str:
    lines = [result.summary()]
    width = max((len(n) for n in result.phase_names()), default=0)
    lines.extend(
        f"  {name:>{width}} {(result.phase(name) or 0.0) * 1000:9.3f} ms"
        for name in result.phase_names()
    )
    code = result.metrics.get("status_code")
    if code is not None:
        lines.append(f"  status {int(code)}")
    lines.extend(f"  {a.describe()}" for a in result.assertions if not a.passed)
    return "\n".join(lines)


# -- probekit run ----------------------------------------------------------------------------


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

    def on_result(monitor_id: str, result: Result) -> None:
        latest[monitor_id] = result
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
    server: asyncio.Server | None = None
    rng = random.Random()  # noqa: S311 - spreading start times, not secrets
    try:
        async with (
            _runner(config, args) as runner,
            Scheduler(runner, on_result, jitter=args.jitter) as scheduler,
        ):
            if live is not None:
                live.start(refresh=True)
            if args.metrics_port is not None:
                server = await _serve_metrics(
                    args.metrics_host, args.metrics_port, lambda: prometheus_text(latest)
                )
                port = server.sockets[0].getsockname()[1]
                _err(f"probekit: Prometheus metrics at http://{args.metrics_host}:{port}/metrics")
            for monitor in config.monitors:
                first = rng.uniform(0, min(monitor.interval, FIRST_RUN_SPREAD))
                scheduler.add(monitor, first_in=first)
            await _until_stopped(scheduler, stop, args.duration)
    finally:
        if live is not None:
            live.stop()
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)


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


async def _serve_metrics(host: str, port: int, render: Callable[[], str]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10.0):
                head = await reader.readuntil(b"\r\n\r\n")
                request = head.split(b"\r\n", 1)[0].decode("latin-1").split()
                method = request[0] if request else ""
                path = request[1].split("?", 1)[0] if len(request) > 1 else ""
                if method not in ("GET", "HEAD"):
                    status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
                elif path != "/metrics":
                    status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
                else:
                    status, body, kind = "200 OK", render().encode(), PROMETHEUS_CONTENT_TYPE
                headers = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(headers.encode() + (b"" if method == "HEAD" else body))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def _phases(result: Result) -> str:
    return " ".join(
        f"{name} {(result.phase(name) or 0.0) * 1000:.1f}" for name in result.phase_names()
    )


def _detail(result: Result) -> str:
    if result.error is not None:
        where = f" during {result.error.phase}" if result.error.phase else ""
        return f"{result.error.kind.value}{where}: {result.error.message}"
    code = result.metrics.get("status_code")
    return f"status {int(code)}" if code is not None else ""


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


# -- shared by control and checkpoint -------------------------------------------------------


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    # Its own dest: a subcommand's default would otherwise overwrite `probekit -v COMMAND`.
    parser.add_argument(
        "-v",
        "--verbose",
        dest="command_verbose",
        action="count",
        default=0,
        help="log more (-vv for debug), as before the command",
    )


@contextlib.contextmanager
def _on_stop_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` on SIGINT (Ctrl-C) and SIGTERM while inside, instead of dying."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, callback)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _is_loopback(host: str) -> bool:
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_id(value: object) -> TypeGuard[str]:
    """A protocol id: a non-empty printable string of at most MAX_ID_LENGTH characters."""
    from ..protocol import MAX_ID_LENGTH

    return (
        isinstance(value, str)
        and bool(value.strip())
        and len(value) <= MAX_ID_LENGTH
        and value.isprintable()
    )


def _token_problem(token: str) -> str | None:
    if not token:
        return "the token is empty"
    if not token.isprintable() or any(c.isspace() for c in token):
        return "the token must not contain spaces or control characters"
    return None


# -- probekit control ------------------------------------------------------------------------

#: The sections of a control-plane config file, and the keys of its [control] table.
_CONTROL_SECTIONS: Final = ("control", "checkpoints", "monitors", "webhooks")
_CONTROL_NUMBERS: Final = ("heartbeat_interval", "tick_interval", "hello_timeout", "stale_after")
_CONTROL_INTEGERS: Final = ("missed_heartbeats", "max_frame_bytes")
_CONTROL_KEYS: Final = (
    *("host", "port", "db", "tls_cert", "tls_key"),
    *_CONTROL_NUMBERS,
    *_CONTROL_INTEGERS,
)
_MONITOR_OWN_KEYS: Final = ("id", "checkpoint", "interval")
_ONLY_LOCAL: Final = "secrets are only read from local configuration"


@attrs.frozen
class ControlConfig:
    """A loaded ``probekit control`` config file (see ``docs/checkpoint.md``)."""

    settings: ControlSettings
    monitors: tuple[MonitorSpec, ...]
    webhooks: tuple[WebhookSink, ...]


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


def load_control_config(
    path: str | Path,
    *,
    insecure: bool = False,
    warn: Callable[[str], None] | None = None,
) -> ControlConfig:
    """Load a ``probekit control`` config file: TOML, or JSON when its name ends in ``.json``.

    Raises :class:`~probekit.DefinitionErrors` listing every problem, each with its path
    (``monitors[2].url: ...``). ``insecure`` allows a non-loopback ``host`` without TLS.
    Warnings (an inline token, plain ws:// allowed by ``insecure``) go to ``warn``, even when
    there are errors too; by default they are logged.
    """
    data = read_config_file(path)
    loader = _ControlLoader(str(path), insecure)
    config = loader.load(data)
    for warning in loader.warnings:
        (warn or log.warning)(warning)
    if loader.errors:
        raise DefinitionErrors(loader.errors)
    assert config is not None
    return config


class _ControlLoader(_Loader):
    """Reads a control-plane config, collecting every error with its path."""

    def __init__(self, source: str, insecure: bool) -> None:
        super().__init__()
        self.source = source
        self.insecure = insecure
        self.warnings: list[str] = []

    def load(self, data: Any) -> ControlConfig | None:
        from ..control import ControlSettings

        if not isinstance(data, Mapping):
            self.fail("", f"a config file holds a table (object), got {_kind(data)}")
            return None
        for key in data:
            if key not in _CONTROL_SECTIONS:
                self.fail(str(key), f"unknown section; known: {', '.join(_CONTROL_SECTIONS)}")
        control = self.control(data.get("control"))
        tokens = self.checkpoints(data.get("checkpoints"))
        monitors = self.control_monitors(data.get("monitors"), set(tokens))
        webhooks = self.webhooks(data.get("webhooks", []))
        if self.errors:
            return None
        settings = ControlSettings(
            tokens={k: v for k, v in tokens.items() if v is not None}, **control
        )
        return ControlConfig(settings, tuple(monitors), tuple(webhooks))

    # -- [control] -----------------------------------------------------------------------------

    def control(self, data: Any) -> dict[str, Any]:
        if data is None:
            self.fail("control", "missing: add a [control] table with at least port and db")
            return {}
        if not isinstance(data, Mapping):
            self.fail("control", f"expected a table, got {_kind(data)}")
            return {}
        out: dict[str, Any] = {}
        for key in data:
            if key not in _CONTROL_KEYS:
                self.fail(f"control.{key}", f"unknown field; known: {', '.join(_CONTROL_KEYS)}")
        host = data.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            self.fail("control.host", f"expected an address or host name, got {host!r}")
        else:
            out["host"] = host
        port = data.get("port")
        if port is None:
            self.fail("control.port", "required: the port to listen on (0 picks a free one)")
        elif isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            self.fail("control.port", f"expected a port number (0-65535), got {port!r}")
        else:
            out["port"] = port
        db = data.get("db")
        if db is None:
            self.fail("control.db", "required: the SQLite file to keep monitors and results in")
        elif not isinstance(db, str) or not db:
            self.fail("control.db", f"expected a file path, got {db!r}")
        else:
            out["db_path"] = db
        for key in _CONTROL_NUMBERS:
            value = data.get(key)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                self.fail(f"control.{key}", f"expected a positive number of seconds, got {value!r}")
            else:
                out[key] = float(value)
        for key in _CONTROL_INTEGERS:
            value = data.get(key)
            if value is None:
                continue
            least = 1_048_576 if key == "max_frame_bytes" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                self.fail(f"control.{key}", f"expected an integer >= {least}, got {value!r}")
            else:
                out[key] = value
        context = self.tls(data.get("tls_cert"), data.get("tls_key"))
        if context is not None:
            out["ssl_context"] = context
        has_tls = data.get("tls_cert") is not None or data.get("tls_key") is not None
        if isinstance(host, str) and host and not has_tls and not _is_loopback(host):
            if self.insecure:
                self.warnings.append(
                    f"control.host: serving plain ws:// on {host}: tokens and results cross the "
                    "network in clear text"
                )
            else:
                self.fail(
                    "control.host",
                    f"{host} is not a loopback address, and without tls_cert and tls_key the "
                    "tokens and results would cross the network in clear text (ws://); set "
                    "tls_cert and tls_key, or pass --insecure",
                )
        return out

    def tls(self, cert: Any, key: Any) -> ssl.SSLContext | None:
        if cert is None and key is None:
            return None
        bad = False
        for name, value in (("tls_cert", cert), ("tls_key", key)):
            if value is None:
                other = "tls_key" if name == "tls_cert" else "tls_cert"
                self.fail(f"control.{name}", f"required with {other}: a PEM file")
                bad = True
            elif not isinstance(value, str) or not value:
                self.fail(f"control.{name}", f"expected a PEM file path, got {value!r}")
                bad = True
        if bad:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.fail("control.tls_cert", f"cannot load {cert} with the key {key}: {reason}")
            return None
        return context

    # -- [[checkpoints]] -----------------------------------------------------------------------

    def checkpoints(self, data: Any) -> dict[str, Secret | None]:
        """Checkpoint ids and their tokens (None where the token is broken: already reported)."""
        out: dict[str, Secret | None] = {}
        if data is None or data == []:
            self.fail(
                "checkpoints", "no checkpoints: add a [[checkpoints]] table with an id and a token"
            )
            return out
        if isinstance(data, str | bytes) or not isinstance(data, list):
            self.fail("checkpoints", f"expected a list of checkpoint tables, got {_kind(data)}")
            return out
        seen_tokens: dict[str, int] = {}
        seen_ids: dict[str, int] = {}
        for i, item in enumerate(data):
            path = f"checkpoints[{i}]"
            if not isinstance(item, Mapping):
                self.fail(path, f"expected a table, got {_kind(item)}")
                continue
            for key in item:
                if key not in ("id", "token"):
                    self.fail(f"{path}.{key}", "unknown field; known: id, token")
            checkpoint_id = item.get("id")
            if not _is_id(checkpoint_id):
                self.fail(
                    f"{path}.id",
                    "required: a non-empty printable string of at most 200 characters, "
                    f"got {checkpoint_id!r}",
                )
                checkpoint_id = None
            elif checkpoint_id in seen_ids:
                self.fail(
                    f"{path}.id",
                    f"duplicate id {checkpoint_id!r}, also used by checkpoints"
                    f"[{seen_ids[checkpoint_id]}]",
                )
                checkpoint_id = None
            token = self.token(item.get("token"), f"{path}.token")
            if token is not None:
                first = seen_tokens.setdefault(token.reveal(), i)
                if first != i:
                    self.fail(
                        f"{path}.token",
                        f"the same token as checkpoints[{first}]; each checkpoint needs its own",
                    )
                    token = None
            if checkpoint_id is not None:
                seen_ids[checkpoint_id] = i
                out[checkpoint_id] = token
        return out

    def token(self, source: Any, where: str) -> Secret | None:
        if source is None:
            self.fail(where, 'required: {env = "VAR"} or {file = "PATH"}')
            return None
        if isinstance(source, str):
            self.warnings.append(
                f"{where}: the token is written in {self.source}, where anyone who can read the "
                'file can use it; prefer {env = "VAR"} or {file = "PATH"}'
            )
            token: Secret | None = Secret(source)
        else:
            token = self.read_secret(source, where)
        if token is None:
            return None
        problem = _token_problem(token.reveal())
        if problem is not None:
            self.fail(where, problem)
            return None
        return token

    # -- [[monitors]] --------------------------------------------------------------------------

    def control_monitors(self, data: Any, checkpoint_ids: set[str]) -> list[MonitorSpec]:
        from ..control._logic import MonitorSpec

        if data is None or data == []:
            self.fail("monitors", "no monitors: add at least one [[monitors]] table")
            return []
        if isinstance(data, str | bytes) or not isinstance(data, list):
            self.fail("monitors", f"expected a list of monitor tables, got {_kind(data)}")
            return []
        out: list[MonitorSpec] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(data):
            path = f"monitors[{i}]"
            if not isinstance(item, Mapping):
                self.fail(path, f"expected a table, got {_kind(item)}")
                continue
            before = len(self.errors)
            monitor_id = item.get("id")
            if not _is_id(monitor_id):
                self.fail(
                    f"{path}.id",
                    "required: a non-empty printable string of at most 200 characters, "
                    f"got {monitor_id!r}",
                )
            elif monitor_id in seen:
                self.fail(
                    f"{path}.id",
                    f"duplicate id {monitor_id!r}, also used by monitors[{seen[monitor_id]}]",
                )
            else:
                seen[monitor_id] = i
            checkpoint = item.get("checkpoint")
            if checkpoint is None:
                self.fail(f"{path}.checkpoint", "required: the id of the checkpoint that runs it")
            elif checkpoint not in checkpoint_ids:
                known = ", ".join(sorted(checkpoint_ids)) or "none"
                self.fail(
                    f"{path}.checkpoint",
                    f"no [[checkpoints]] table has the id {checkpoint!r}; known: {known}",
                )
            interval = item.get("interval", DEFAULT_INTERVAL)
            if (problem := interval_problem(interval)) is not None:
                self.fail(f"{path}.interval", problem)
            definition = {k: v for k, v in item.items() if k not in _MONITOR_OWN_KEYS}
            self.definition(definition, path)
            if len(self.errors) > before:
                continue
            assert isinstance(monitor_id, str)
            assert isinstance(checkpoint, str)
            out.append(MonitorSpec(monitor_id, checkpoint, float(interval), definition))
        return out

    def definition(self, definition: dict[str, Any], path: str) -> None:
        """Check a definition as a checkpoint will build it; secrets only by reference."""
        from .. import protocol

        references: list[Secret] = []

        def lookup(name: str) -> Secret:
            secret = Secret(f"<{name}>")  # resolved by the checkpoint (--secret NAME=ENVVAR)
            references.append(secret)
            return secret

        try:
            probe = build_probe(definition, secrets=lookup, local=False, path=path)
        except DefinitionErrors as exc:
            for error in exc.errors:
                if error.message.endswith(_ONLY_LOCAL):
                    error = DefinitionError(
                        error.path,
                        "a definition is sent to the checkpoint, which reads its secrets itself: "
                        'write {secret = "NAME"} and start the checkpoint with '
                        "--secret NAME=ENVVAR",
                    )
                self.errors.append(error)
            return
        known = {id(s) for s in references}
        for where in _inline_secrets(probe, path, known):
            self.fail(
                where,
                "an inline secret would be sent to the checkpoint as it is: write "
                '{secret = "NAME"} and start the checkpoint with --secret NAME=ENVVAR',
            )
        try:
            json.dumps(definition, allow_nan=False)
            protocol.MonitorDefinition(
                monitor_id="check", revision=1, interval=1.0, definition=definition
            )
        except (TypeError, ValueError) as exc:
            self.fail(path, f"cannot be sent to a checkpoint as JSON: {exc}")

    # -- [[webhooks]] --------------------------------------------------------------------------

    def webhooks(self, data: Any) -> list[WebhookSink]:
        from ..control import WebhookSink

        if isinstance(data, str | bytes) or not isinstance(data, list):
            self.fail("webhooks", f"expected a list of webhook tables, got {_kind(data)}")
            return []
        out: list[WebhookSink] = []
        for i, item in enumerate(data):
            path = f"webhooks[{i}]"
            if not isinstance(item, Mapping):
                self.fail(path, f"expected a table, got {_kind(item)}")
                continue
            before = len(self.errors)
            for key in item:
                if key not in ("url", "headers", "timeout"):
                    self.fail(f"{path}.{key}", "unknown field; known: url, headers, timeout")
            url = item.get("url")
            if not isinstance(url, str) or not url:
                self.fail(f"{path}.url", f"required: an http:// or https:// URL, got {url!r}")
            headers = item.get("headers", {})
            if not isinstance(headers, Mapping) or not all(
                isinstance(v, str) for v in headers.values()
            ):
                self.fail(f"{path}.headers", "expected a table of header names and text values")
            timeout = item.get("timeout", 5.0)
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, int | float)
                or not math.isfinite(timeout)
                or timeout <= 0
            ):
                self.fail(
                    f"{path}.timeout", f"expected a positive number of seconds, got {timeout!r}"
                )
            if len(self.errors) > before:
                continue
            assert isinstance(url, str)
            try:
                out.append(WebhookSink(url, headers=dict(headers), timeout=float(timeout)))
            except DefinitionErrors as exc:
                self.errors.extend(e.under(path) for e in exc.errors)
            except DefinitionError as exc:
                self.errors.append(exc.under(path))
        return out


def _inline_secrets(value: Any, path: str, references: set[int]) -> Iterator[str]:
    """The paths of the Secret values in a built probe that did not come from a reference."""
    if isinstance(value, Secret):
        if id(value) not in references:
            yield path
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            if field.init:
                name = field.alias or field.name.lstrip("_")
                yield from _inline_secrets(getattr(value, field.name), f"{path}.{name}", references)
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _inline_secrets(item, f"{path}[{i}]", references)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _inline_secrets(item, f"{path}.{key}", references)


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


# -- probekit checkpoint ---------------------------------------------------------------------


def _configure_checkpoint(parser: argparse.ArgumentParser) -> None:
    who = parser.add_argument_group("control channel")
    who.add_argument("--url", required=True, metavar="URL", help="the control plane's wss:// URL")
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
    if args.token_env is not None:
        option = "--token-env"
        value = os.environ.get(args.token_env)
        if value is None:
            problems.add(option, f"environment variable {args.token_env} is not set")
            return None
    else:
        option = "--token-file"
        try:
            value = Path(args.token_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            problems.add(option, f"cannot read {args.token_file}: {exc.strerror or exc}")
            return None
        except UnicodeDecodeError:
            problems.add(option, f"{args.token_file} is not UTF-8 text")
            return None
    problem = _token_problem(value)
    if problem is not None:
        problems.add(option, problem)
        return None
    return Secret(value)


def _read_secrets(specs: Sequence[str], problems: _Problems) -> dict[str, Secret]:
    out: dict[str, Secret] = {}
    for spec in specs:
        name, sep, variable = spec.partition("=")
        if not sep or not name or not variable:
            problems.add("--secret", f"expected NAME=ENVVAR, got {spec!r}")
            continue
        value = os.environ.get(variable)
        if value is None:
            problems.add("--secret", f"{name}: environment variable {variable} is not set")
            continue
        out[name] = Secret(value)
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
    if scheme == "ws" and not _is_loopback(host):
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


# -- the table of commands -------------------------------------------------------------------

#: Every subcommand, in the order ``probekit --help`` lists them. A new one is a new entry.
COMMANDS: list[Command] = [
    Command(
        "check",
        "run one check and print its result",
        _configure_check,
        _run_check,
        description=(
            "Run one check. The exit code is the Nagios state of the result: 0 UP (OK), "
            "1 DEGRADED (WARNING), 2 DOWN (CRITICAL), 3 UNKNOWN."
        ),
    ),
    Command(
        "run",
        "run the monitors of a config file",
        _configure_run,
        _run_monitors,
        description=(
            "Run the monitors of a TOML or JSON config file on their intervals, printing a line "
            "per result, until Ctrl-C or --duration; or, with --once, each monitor once."
        ),
    ),
    Command(
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
    ),
    Command(
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
    ),
    Command(
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
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command in :data:`COMMANDS`."""
    from .. import __version__

    parser = _Parser(prog="probekit", description="Typed async probes for private networks.")
    parser.add_argument("--version", action="version", version=f"probekit {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-vv for debug)"
    )
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        help="run on asyncio's own event loop even when uvloop is installed",
    )
    commands = parser.add_subparsers(
        title="commands", dest="command_name", metavar="COMMAND", parser_class=_Parser
    )
    commands.required = True
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name, help=command.help, description=command.description or command.help
        )
        command.configure(sub)
        sub.set_defaults(command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``probekit`` command line with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit code instead of exiting, so it can be called in-process.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    verbosity = args.verbose + getattr(args, "command_verbose", 0)
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    command: Command = args.command
    prog = f"probekit {command.name}"
    try:
        return command.run(args)
    except UsageError as exc:
        for line in str(exc).splitlines():
            _err(f"{prog}: error: {line}")
        return EXIT_USAGE
    except DefinitionErrors as exc:
        source = getattr(args, "config", None)
        count = len(exc.errors)
        _err(f"{prog}: {source or 'definition'}: {count} error{'s' if count != 1 else ''}")
        for error in exc.errors:
            _err(f"  {error}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
