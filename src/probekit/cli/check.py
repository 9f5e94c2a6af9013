"""``probekit check KIND TARGET``: run one check and print its result."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

from .._assertions import (
    Assertion,
    BodyContains,
    BodyMatches,
    HeaderMatches,
    ResponseTime,
    StatusIn,
)
from .._context import ProbeContext
from .._dial import Dialer
from .._exceptions import UsageError
from .._exporters import nagios_line
from .._result import Result
from .._runner import Runner
from .._serialization import result_to_json
from .._timeouts import Timeouts
from .._tls import TlsOptions
from ..probes._base import Probe
from ._common import Command, _asyncio_run, _out, _policy, _Problems, _seconds


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


COMMAND = Command(
    "check",
    "run one check and print its result",
    _configure_check,
    _run_check,
    description=(
        "Run one check. The exit code is the Nagios state of the result: 0 UP (OK), "
        "1 DEGRADED (WARNING), 2 DOWN (CRITICAL), 3 UNKNOWN."
    ),
)
