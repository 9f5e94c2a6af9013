"""``probekit check KIND TARGET``: run one check and print its result.

The kinds are the registry's (:func:`probekit.probes.kinds`: built-in, registered from Python
and installed plugins); nothing here names one. Each kind is a sub-command built from its
:class:`~probekit.probes.ProbeKind`: its ``summary`` is the help line, its target syntax the
``TARGET`` argument and its ``options`` its own options, next to the options every kind shares
(output, ``--timeout``, ``--warn``/``--crit``, the egress policy). The shared options may also
come before the kind (``probekit check --nagios http URL``).

The command line becomes a plain definition, ``{"kind": ..., **target, **options}``, which
:func:`~probekit.build_probe` builds like any definition from a config file; every problem is
reported at once, each naming the option (or ``TARGET``) that caused it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Final

import attrs

from .._assertions import ResponseTime
from .._context import ProbeContext
from .._definitions import build_probe
from .._dial import Dialer
from .._exceptions import DefinitionError, DefinitionErrors, UsageError
from .._exporters import nagios_line
from .._result import Result
from .._runner import Runner
from .._serialization import result_to_json
from ..probes._base import Probe
from ..probes._kind import HostPort, Option, ProbeKind, TargetSyntax
from ..probes._options import add_assertion
from ..probes._registry import describe, kinds
from ._common import (
    Command,
    _add_policy_options,
    _asyncio_run,
    _first_field,
    _out,
    _Parser,
    _policy,
    _Problems,
    _seconds,
)

log = logging.getLogger("probekit.cli")

#: The check's deadline when ``--timeout`` is not given.
DEFAULT_TIMEOUT: Final = 10.0
#: The dest prefix of the shared options given before the kind.
_BEFORE: Final = "before_"
#: The definition fields the shared options fill, and the option that fills each.
_SHARED_FIELDS: Final = {"timeouts": "--timeout", "assertions": "--warn"}
#: Where the values of a kind's options go in the parsed arguments; ``ordered`` options share
#: one list of ``(name, value)`` pairs.
_OPTION_DEST: Final = "kind_option."
_ORDERED_DEST: Final = "kind_ordered"
_SHARED_FLAGS: Final = frozenset(
    {"-h", "--help", "--json", "--nagios", "--timeout", "--warn", "--crit", "--allow", "--deny"}
)


# -- the parser --------------------------------------------------------------------------------


def _add_shared_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The options every kind takes; ``prefix`` keeps those given before the kind apart."""
    # Not in an argument group of its own: argparse copies a parent's mutually exclusive group
    # to the parser's top level, so a kind's help would list it under "options" anyway.
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        dest=f"{prefix}output",
        action="store_const",
        const="json",
        help="print the result as JSON (the schema of docs/results.md)",
    )
    output.add_argument(
        "--nagios",
        dest=f"{prefix}output",
        action="store_const",
        const="nagios",
        help="print a Nagios plugin line with perfdata",
    )
    check = parser.add_argument_group("every check")
    check.add_argument(
        "--timeout",
        dest=f"{prefix}timeout",
        type=_seconds,
        metavar="S",
        help=f"the check's deadline (default {DEFAULT_TIMEOUT:g})",
    )
    check.add_argument(
        "--warn",
        dest=f"{prefix}warn",
        type=_seconds,
        metavar="S",
        help="DEGRADED (WARNING) when slower than S",
    )
    check.add_argument(
        "--crit",
        dest=f"{prefix}crit",
        type=_seconds,
        metavar="S",
        help="DOWN (CRITICAL) when slower than S",
    )
    _add_policy_options(parser.add_argument_group("egress policy"), dest_prefix=prefix)


class _Ordered(argparse.Action):
    """Appends ``(self.const, value)`` to one list shared by every ``ordered`` option of a kind,
    so that their order on the command line survives (``--send a --expect b --send c``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        pairs = list(getattr(namespace, self.dest, None) or [])
        pairs.append((self.const, values))
        setattr(namespace, self.dest, pairs)


def _argument_type(option: Option) -> Callable[[str], Any] | None:
    """The option's ``parse`` as an argparse type: its ValueError becomes a usage error."""
    parse = option.parse
    if parse is None:
        return None

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"invalid value {text!r}") from None

    convert.__name__ = option.name
    return convert


def _add_option(group: argparse._ArgumentGroup, option: Option) -> None:
    if option.action == "flag":
        group.add_argument(
            *option.flags, dest=_OPTION_DEST + option.name, action="store_true", help=option.help
        )
        return
    settings: dict[str, Any] = {
        "help": option.help,
        # With choices and no metavar, argparse shows the choices: {plain,fancy}.
        "metavar": option.metavar or (None if option.choices else option.name.upper()),
        "type": _argument_type(option),
        "choices": option.choices,
    }
    if option.nargs is not None:
        settings["nargs"] = option.nargs
    if option.action == "ordered":
        group.add_argument(
            *option.flags, dest=_ORDERED_DEST, action=_Ordered, const=option.name, **settings
        )
    else:
        action = "append" if option.action == "append" else "store"
        group.add_argument(
            *option.flags, dest=_OPTION_DEST + option.name, action=action, **settings
        )


def _add_kind(
    subparsers: argparse._SubParsersAction[_Parser], kind: ProbeKind, shared: _Parser
) -> None:
    clashes = sorted(f for o in kind.options for f in o.flags if f in _SHARED_FLAGS)
    if clashes:
        log.warning(
            "probe kind %r is left out of `probekit check`: its option(s) %s clash with the "
            "options every kind shares",
            kind.name,
            ", ".join(clashes),
        )
        return
    parser = subparsers.add_parser(
        kind.name,
        help=kind.summary,
        description=f"{kind.name}: {kind.summary}.",
        parents=[shared],
    )
    parser.add_argument("target", metavar=kind.target.metavar, help=kind.target.help)
    if kind.options:
        group = parser.add_argument_group(f"{kind.name} options")
        for option in kind.options:
            _add_option(group, option)
    parser.set_defaults(check_kind=kind, usage_parser=parser)


def _configure_check(parser: argparse.ArgumentParser) -> None:
    _add_shared_options(parser, _BEFORE)
    if isinstance(parser, _Parser):
        parser.hint = (
            "a kind's own options go after it: probekit check KIND TARGET [options] "
            "(probekit check KIND --help lists them)"
        )
        parser.hint_for = "KIND"
    shared = _Parser(add_help=False)
    _add_shared_options(shared)
    subparsers = parser.add_subparsers(
        title="kinds",
        dest="kind_name",
        metavar="KIND",
        parser_class=_Parser,
        description="probekit check KIND --help shows a kind's target and options",
    )
    subparsers.required = True
    for kind in kinds().values():
        _add_kind(subparsers, kind, shared)


# -- from the command line to a probe ----------------------------------------------------------


@attrs.frozen
class _Shared:
    """The shared options, wherever they were given."""

    output: str
    timeout: float | None
    warn: float | None
    crit: float | None
    allow: list[str]
    deny: list[str]


def _shared(args: argparse.Namespace, problems: _Problems) -> _Shared:
    def pick(name: str) -> Any:
        after = getattr(args, name, None)
        return after if after is not None else getattr(args, _BEFORE + name, None)

    before, after = getattr(args, _BEFORE + "output", None), getattr(args, "output", None)
    if before is not None and after is not None and before != after:
        problems.add("--json/--nagios", "not allowed together")
    return _Shared(
        output=pick("output") or "human",
        timeout=pick("timeout"),
        warn=pick("warn"),
        crit=pick("crit"),
        allow=[*(getattr(args, _BEFORE + "allow", None) or []), *(args.allow or [])],
        deny=[*(getattr(args, _BEFORE + "deny", None) or []), *(args.deny or [])],
    )


def _target_fields(target: TargetSyntax) -> set[str]:
    if isinstance(target, HostPort):
        return {target.host_field, target.port_field}
    return {target.field}


def _field_names(cls: type) -> set[str]:
    """The names a definition gives the fields of ``cls``."""
    return {f.alias or f.name.lstrip("_") for f in attrs.fields(cls) if f.init}


def _label(kind: ProbeKind, path: str) -> str:
    """The option (or ``TARGET``) that set the definition field at ``path``."""
    if path.startswith("-"):
        return path  # already an option's label
    key = _first_field(path)
    for option in kind.options:
        if key and (option.field == key or key in option.sets):
            return option.label
    if key in _target_fields(kind.target):
        return "TARGET"
    return _SHARED_FIELDS.get(key) or path or kind.name


def _errors(exc: DefinitionError) -> Sequence[DefinitionError]:
    return exc.errors if isinstance(exc, DefinitionErrors) else [exc]


def _given(value: Any) -> bool:
    return value is not None and value is not False and value != []


def _values(kind: ProbeKind, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed value of each option of ``kind`` by name, and ``ordered``."""
    values: dict[str, Any] = {}
    for option in kind.options:
        if option.action == "ordered":
            continue
        value = getattr(args, _OPTION_DEST + option.name, None)
        if option.action == "append" and value is None:
            value = []
        values[option.name] = value
    values["ordered"] = list(getattr(args, _ORDERED_DEST, None) or [])
    return values


def _definition(
    kind: ProbeKind, args: argparse.Namespace, shared: _Shared, problems: _Problems
) -> tuple[dict[str, Any], bool]:
    """The definition the command line gives, and whether its TARGET could be read."""
    definition: MutableMapping[str, Any] = {"kind": kind.name}
    target_read = True
    try:
        definition.update(kind.target.parse(args.target))
    except DefinitionError as exc:
        target_read = False
        for error in _errors(exc):
            problems.add("TARGET", error.message)
    values = _values(kind, args)
    for option in kind.options:
        if option.field is not None and _given(values.get(option.name)):
            definition[option.field] = values[option.name]
    if kind.to_definition is not None:
        try:
            kind.to_definition(values, definition)
        except DefinitionError as exc:
            for error in _errors(exc):
                problems.add(_label(kind, error.path), error.message)
    fields = _field_names(kind.cls)
    if shared.timeout is not None and "timeouts" not in fields:
        problems.add("--timeout", f"{kind.name} checks have no timeouts")
    elif "timeouts" in fields:
        given = definition.get("timeouts")  # per-phase limits a kind's options may have set
        timeouts = dict(given) if isinstance(given, Mapping) else {}
        # A total the target gave (an api steps file's own timeouts) stands unless --timeout.
        total = shared.timeout or timeouts.get("total") or DEFAULT_TIMEOUT
        definition["timeouts"] = {**timeouts, "total": total}
    if shared.warn is not None or shared.crit is not None:
        flag = "--warn" if shared.warn is not None else "--crit"
        if "assertions" not in fields:
            problems.add(flag, f"{kind.name} checks have no assertions")
        else:
            try:
                add_assertion(definition, ResponseTime(warn=shared.warn, crit=shared.crit))
            except DefinitionError as exc:
                problems.add(flag, exc.message)
    return dict(definition), target_read


def _probe(kind: ProbeKind, args: argparse.Namespace, shared: _Shared, problems: _Problems) -> Any:
    """The probe the command line defines; None when there are problems (in ``problems``)."""
    definition, target_read = _definition(kind, args, shared, problems)
    try:
        return build_probe(definition)
    except DefinitionErrors as exc:
        for error in exc.errors:
            label = _label(kind, error.path)
            if label == "TARGET" and not target_read:
                continue  # a field the unreadable TARGET would have given: reported already
            problems.add(label, error.message)
    return None


# -- running it --------------------------------------------------------------------------------


def _run_check(args: argparse.Namespace) -> int:
    kind: ProbeKind = args.check_kind
    problems = _Problems()
    shared = _shared(args, problems)
    policy = _policy(shared.allow, shared.deny, problems)
    probe = _probe(kind, args, shared, problems)
    try:
        problems.raise_any()
    except UsageError as exc:
        if shared.output == "nagios":
            first = str(exc).splitlines()[0]
            _out(f"{kind.name.upper()} UNKNOWN - invalid options: {first}")
        raise
    assert probe is not None
    context = ProbeContext(dialer=Dialer(policy=policy))
    result = _asyncio_run(_check_once(probe, context), args)
    if shared.output == "json":
        _out(result_to_json(result))
    elif shared.output == "nagios":
        line, _ = nagios_line(result, warn=shared.warn, crit=shared.crit)
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
    seen = describe(result)
    if seen:
        lines.append(f"  {seen}")
    lines.extend(f"  {a.describe()}" for a in result.assertions if not a.passed)
    return "\n".join(lines)


COMMAND = Command(
    "check",
    "run one check and print its result",
    _configure_check,
    _run_check,
    description=(
        "Run one check of one of the probe kinds below. The exit code is the Nagios state of "
        "the result: 0 UP (OK), 1 DEGRADED (WARNING), 2 DOWN (CRITICAL), 3 UNKNOWN (also for "
        "invalid options)."
    ),
)
