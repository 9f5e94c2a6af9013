"""The ``probekit`` command line (also ``python -m probekit``).

``check`` runs one check, ``run`` the monitors of a config file, ``demo`` the whole system on
loopback, ``control`` the reference control plane of a control-plane config file
(:func:`load_control_config`, library code re-exported here) and ``checkpoint`` one checkpoint
instance. ``check`` has a sub-command per probe kind in the registry and names none itself.

Each subcommand is a module of this package with a :class:`Command` (its name, help, a function
that adds its options and a function that runs it), listed in :data:`COMMANDS`; :func:`main`
builds the parser from that table; ``_common`` holds what they share. Exit codes are the Nagios
ones wherever a status is reported (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN); invalid input (a
usage error, an invalid config file or definition) exits with 3, UNKNOWN, as the Nagios plugin
guidelines ask. The reference is ``docs/cli.md``.

This package is the only part of probekit that prints; the library itself only logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._definitions import DefinitionErrors
from .._exceptions import UsageError
from . import check, checkpoint, control, demo, exporter, run
from ._common import EXIT_USAGE, Command, UsageExit, _err, _out, _Parser
from ._common import _loop_factory as _loop_factory  # tests and embedders use it

if TYPE_CHECKING:
    from ..control._config import ControlConfig, load_control_config


def __getattr__(name: str) -> Any:
    # The control plane's config loader, re-exported here, loads the control plane package:
    # only on first use, so `probekit check` does not pay for it.
    if name in ("ControlConfig", "load_control_config"):
        from ..control import _config

        return getattr(_config, name)
    raise AttributeError(f"module 'probekit.cli' has no attribute {name!r}")


__all__ = [
    "COMMANDS",
    "Command",
    "ControlConfig",
    "UsageError",
    "build_parser",
    "load_control_config",
    "main",
]

#: Every subcommand, in the order ``probekit --help`` lists them. A new one is a new module
#: with a ``COMMAND`` and an entry here.
COMMANDS: list[Command] = [
    check.COMMAND,
    run.COMMAND,
    demo.COMMAND,
    control.COMMAND,
    checkpoint.COMMAND,
    exporter.COMMAND,
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
        sub.set_defaults(command=command, usage_parser=sub)
    return parser


def _nagios_usage_line(words: Sequence[str], exc: UsageExit) -> None:
    """``probekit check ... --nagios`` with a usage error (an unknown option, a missing
    target): the monitoring system reads standard output, so say it there too, as a plugin
    line (``HTTP UNKNOWN - invalid options: ...``). The exit code is 3 (UNKNOWN) either way."""
    before_end = words[: words.index("--")] if "--" in words else words
    prog = exc.prog.split()
    if "--nagios" not in before_end or prog[1:2] != ["check"]:
        return
    name = prog[2] if len(prog) > 2 else "check"
    _out(f"{name.upper()} UNKNOWN - invalid options: {exc.message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``probekit`` command line with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit code instead of exiting, so it can be called in-process.
    """
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extras = parser.parse_known_args(words)
        if extras:
            # Said by the (sub-)command that was parsing, with its usage: `check tcp` names the
            # option that tcp checks do not take.
            owner: argparse.ArgumentParser = getattr(args, "usage_parser", parser)
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
    except UsageExit as exc:
        _nagios_usage_line(words, exc)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
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
