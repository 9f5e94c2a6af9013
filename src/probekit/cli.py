"""The ``probekit`` command line (also ``python -m probekit``).

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
import logging
import math
import random
import re
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, Final, NoReturn

import attrs

from ._assertions import (
    Assertion,
    BodyContains,
    BodyMatches,
    HeaderMatches,
    ResponseTime,
    StatusIn,
)
from ._config import Config, load_config
from ._context import ProbeContext
from ._definitions import DefinitionErrors
from ._dial import Dialer
from ._exceptions import DefinitionError
from ._exporters import PROMETHEUS_CONTENT_TYPE, json_line, nagios_line, prometheus_text
from ._policy import EgressPolicy
from ._probe import Probe
from ._result import Result, Status
from ._runner import Runner
from ._scheduler import Scheduler
from ._serialization import result_to_json
from ._timeouts import Timeouts
from ._tls import TlsOptions

__all__ = ["COMMANDS", "Command", "UsageError", "build_parser", "main"]

log = logging.getLogger("probekit.cli")

#: Exit code for invalid input: Nagios UNKNOWN.
EXIT_USAGE: Final = 3
#: The first run of each monitor of ``probekit run`` starts within this many seconds (or its
#: interval, if shorter), spread at random so that monitors do not all start together.
FIRST_RUN_SPREAD: Final = 1.0


class UsageError(Exception):
    """Invalid options or option values; the message says which (one problem per line)."""


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
    from ._http import HttpProbe

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
    from ._tcp import Expect, Send, TcpProbe

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
    result = asyncio.run(_check_once(probe, context))
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
            return asyncio.run(_once(config, args, jsonl))
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_forever(config, args, jsonl))
        return 0
    finally:
        if jsonl is not None:
            jsonl.close()


def _runner(config: Config, args: argparse.Namespace) -> Runner:
    context = ProbeContext(dialer=Dialer(policy=config.policy))
    return Runner(max_concurrency=args.concurrency, retries=args.retries, context=context)


async def _once(config: Config, args: argparse.Namespace, jsonl: IO[str] | None) -> int:
    async with _runner(config, args) as runner:
        results = await runner.run_all([m.probe for m in config.monitors])
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

    def on_result(monitor_id: str, result: Result) -> None:
        latest[monitor_id] = result
        if jsonl is not None:
            jsonl.write(json_line(result, monitor=monitor_id) + "\n")
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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
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

    return asyncio.run(go())


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
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command in :data:`COMMANDS`."""
    from . import __version__

    parser = _Parser(prog="probekit", description="Typed async probes for private networks.")
    parser.add_argument("--version", action="version", version=f"probekit {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-vv for debug)"
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
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
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
