"""What every command shares: the parser that exits with 3 on a usage error, the collector of
problems with the options, argument types, output, the event loop and signal handling, and
the egress-policy options."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import IO, Any, Final, NoReturn, TypeVar

import attrs

from .._exceptions import DefinitionError, DefinitionErrors, UsageError
from .._policy import EgressPolicy
from .._validate import seconds_problem

#: Exit code for invalid input: Nagios UNKNOWN.
EXIT_USAGE: Final = 3

_T = TypeVar("_T")


@attrs.frozen
class Command:
    """A subcommand: ``configure`` adds its arguments, ``run`` runs it and returns the exit code."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits with 3 (UNKNOWN) rather than 2 (CRITICAL).

    ``hint``, when set, is printed after an error whose message names ``hint_for`` (the
    argument it helps with).
    """

    hint: str | None = None
    hint_for: str = ""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        text = f"{self.prog}: error: {message}\n"
        if self.hint and self.hint_for in message:
            text += f"{self.prog}: {self.hint}\n"
        sys.stderr.write(text)
        raise UsageExit(self.prog, message)


class UsageExit(SystemExit):
    """A usage error, raised by :class:`_Parser` after printing it: exits 3 (UNKNOWN).

    ``prog`` and ``message`` let the caller say it again, as ``probekit check --nagios`` does on
    standard output (``KIND UNKNOWN - invalid options: ...``).
    """

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.prog = prog
        self.message = message


def _out(text: str = "", stream: IO[str] | None = None) -> None:
    target = stream if stream is not None else sys.stdout
    target.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


# -- argument types --------------------------------------------------------------------------


def _seconds(text: str) -> float:
    """A positive, finite number of seconds: the rule of ``_validate.seconds_problem``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    problem = seconds_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
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


# -- problems with the options ---------------------------------------------------------------


class _Problems:
    """Collects every problem with the options, each naming its option."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, option: str, message: str) -> None:
        line = f"{option}: {message}"
        if line not in self.messages:
            self.messages.append(line)

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


def _first_field(path: str) -> str:
    """The first component of a field path: ``steps`` of ``steps[2].send``."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def _option_for(path: str, default: str, fields: Mapping[str, str] | None) -> str:
    return (fields or {}).get(_first_field(path), default)


# -- the egress policy -------------------------------------------------------------------------


def _add_policy_options(group: argparse._ActionsContainer, *, dest_prefix: str = "") -> None:
    """``--deny CIDR`` and ``--allow CIDR`` (repeatable), into ``allow``/``deny`` lists."""
    group.add_argument(
        "--deny",
        dest=f"{dest_prefix}deny",
        action="append",
        default=[],
        metavar="CIDR",
        help="never dial this network (repeatable)",
    )
    group.add_argument(
        "--allow",
        dest=f"{dest_prefix}allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="dial only these networks (repeatable)",
    )


def _policy(allow: Sequence[str], deny: Sequence[str], problems: _Problems) -> EgressPolicy:
    policy = EgressPolicy()
    for option, values in (("--allow", allow), ("--deny", deny)):
        with problems.about(option):
            EgressPolicy(**{option.lstrip("-"): values})
    if not problems.messages:
        policy = EgressPolicy(allow=allow, deny=deny)
    return policy


# -- the event loop and signals ----------------------------------------------------------------


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
