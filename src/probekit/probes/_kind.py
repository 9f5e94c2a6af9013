"""How a probe kind declares itself: :class:`ProbeKind` and the parts it is made of.

A kind module ends with one declaration, and nothing else in probekit names the kind::

    KIND = ProbeKind(
        name="redis",
        cls=RedisProbe,
        summary="PING a Redis server (optional AUTH), report its version",
        target=HostPort(default_port=6379),
        options=(Option(("--password",), field="password", help="AUTH with this password"),),
        metrics=(Metric("redis_version", "probekit_redis_version", "Server version as a number."),),
        docs="probes/redis.md",
    )

Config files, control-plane definitions and :func:`~probekit.build_probe` read ``name`` and
``cls``; ``probekit check`` builds a sub-command from ``target`` and ``options``; the
Prometheus exporters emit ``metrics``; the docs tests check ``docs``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Literal

import attrs

from .._exceptions import DefinitionError
from .._result import Result

__all__ = ["HostPort", "Metric", "Name", "Option", "ProbeKind", "TargetSyntax", "Url"]

_KIND_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


@attrs.frozen
class HostPort:
    """A target written ``HOST:PORT`` (``[IPv6]:PORT``); the port may be left out when the kind
    has a ``default_port``. Fills the definition's ``host_field`` and ``port_field``."""

    default_port: int | None = None
    host_field: str = "host"
    port_field: str = "port"

    @property
    def metavar(self) -> str:
        return "HOST[:PORT]" if self.default_port else "HOST:PORT"

    @property
    def help(self) -> str:
        if self.default_port:
            return f"the host, optionally with a port (default {self.default_port})"
        return "the host and port (an IPv6 address in brackets: [::1]:PORT)"

    def parse(self, text: str) -> dict[str, Any]:
        host, port_text = text, ""
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest and not rest.startswith(":"):
                host = ""
            port_text = rest[1:]
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        if not port_text and self.default_port is not None and host:
            return {self.host_field: host, self.port_field: self.default_port}
        if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise DefinitionError("", f"expected {self.metavar} (or [IPv6]:PORT), got {text!r}")
        return {self.host_field: host, self.port_field: int(port_text)}


@attrs.frozen
class Url:
    """A target written as a URL with one of ``schemes``; fills the definition's ``field``."""

    schemes: tuple[str, ...] = ("http", "https")
    field: str = "url"

    @property
    def metavar(self) -> str:
        return "URL"

    @property
    def help(self) -> str:
        return f"the URL ({', '.join(s + '://' for s in self.schemes)})"

    def parse(self, text: str) -> dict[str, Any]:
        return {self.field: text}


@attrs.frozen
class Name:
    """A target written as a plain name or address (a DNS name to query, a host to ping)."""

    field: str = "name"
    what: str = "NAME"

    @property
    def metavar(self) -> str:
        return self.what

    @property
    def help(self) -> str:
        return f"the {self.what.lower()} to check"

    def parse(self, text: str) -> dict[str, Any]:
        if not text:
            raise DefinitionError("", f"expected a {self.what.lower()}")
        return {self.field: text}


TargetSyntax = HostPort | Url | Name


@attrs.frozen
class Option:
    """One command-line option of ``probekit check KIND``.

    ``action`` is ``value`` (one value), ``append`` (repeatable, a list), ``flag`` (true when
    given), or ``ordered`` (repeatable, kept in one list of ``(dest, value)`` pairs shared by
    every ``ordered`` option of the kind, so their relative order on the command line survives,
    as a script of steps needs). ``nargs`` makes the option take that many words, given to
    ``parse`` one at a time (``--jsonpath EXPR OP VALUE``: ``metavar`` is then a tuple of as
    many names, and the value a list of the words). ``parse`` turns the text into a value and
    raises ``ValueError`` with a message when it cannot. With ``field`` the value goes straight
    into the definition under that key (a list for ``append``); otherwise the kind's
    ``to_definition`` reads it by ``dest``. Definition errors at ``field``, or at any of the
    fields in ``sets`` (those its ``to_definition`` fills), are reported against this option's
    flags.
    """

    flags: tuple[str, ...]
    help: str
    field: str | None = None
    dest: str | None = None
    metavar: str | tuple[str, ...] | None = None
    action: Literal["value", "append", "flag", "ordered"] = "value"
    nargs: int | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    sets: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.flags or not all(f.startswith("-") for f in self.flags):
            raise DefinitionError(
                "flags", f"expected option flags like '--name', got {self.flags!r}"
            )
        if self.nargs is not None:
            if self.action not in ("value", "append") or self.nargs < 1:
                raise DefinitionError(
                    "nargs", "nargs is a positive count, for a 'value' or 'append' option"
                )
            if isinstance(self.metavar, tuple) and len(self.metavar) != self.nargs:
                raise DefinitionError("metavar", f"expected {self.nargs} names for nargs")
        elif isinstance(self.metavar, tuple):
            raise DefinitionError("metavar", "a tuple of names needs nargs")

    @property
    def name(self) -> str:
        """The argparse destination: ``dest``, else the field, else the long flag's name."""
        if self.dest:
            return self.dest
        if self.field:
            return self.field
        longest = max(self.flags, key=len)
        return longest.lstrip("-").replace("-", "_")

    @property
    def label(self) -> str:
        """How problems name this option: its flags, joined with '/'."""
        return "/".join(self.flags)


@attrs.frozen
class Metric:
    """A metric a kind puts in ``Result.metrics`` under ``key``, exported as ``name``.

    ``type`` is ``gauge`` or ``counter``; a counter's ``name`` ends in ``_total`` (Prometheus's
    naming, which the exposition writer, ``prometheus_client``, assumes): another is refused
    with a :class:`DefinitionError` naming the metric.
    """

    key: str
    name: str
    help: str
    type: Literal["gauge", "counter"] = "gauge"

    def __attrs_post_init__(self) -> None:
        if not _METRIC_NAME.match(self.name):
            raise DefinitionError("name", f"not a Prometheus metric name: {self.name!r}")
        if self.type not in ("gauge", "counter"):
            raise DefinitionError(
                "type", f"metric {self.name}: type {self.type!r} is not 'gauge' or 'counter'"
            )
        if self.type == "counter" and (not self.name.endswith("_total") or self.name == "_total"):
            raise DefinitionError(
                "name",
                f"metric {self.name} is a counter: a counter's name ends in '_total' "
                f"(Prometheus naming), e.g. {self.name}_total",
            )


#: ``to_definition(values, definition)``: read the parsed option values (by dest) and add what
#: they mean to the definition; raise :class:`DefinitionError` whose path is an option label.
ToDefinition = Callable[[Mapping[str, Any], MutableMapping[str, Any]], None]


@attrs.frozen
class ProbeKind:
    """Everything probekit needs to know about one probe kind, declared once in its module.

    ``name`` is the ``kind`` of its definitions; ``cls`` the probe class (a frozen attrs class,
    normally built on :class:`~probekit.probes.ProbeBase`); ``summary`` one line for ``--help``;
    ``target`` how the target is written on the command line; ``options`` its own command-line
    options (the shared ones, timeouts, output, policy, ``--warn``/``--crit``, are everyone's);
    ``to_definition`` composes options that are not one field each; ``metrics`` what it puts in
    ``Result.metrics`` that exporters should emit; ``docs`` its page under ``docs/``;
    ``tls_options`` whether ``--insecure``/``--ca-file`` apply (and to which field).
    ``structure``/``unstructure`` map a field name to hooks for fields whose plain-data form is
    not their attrs form (TCP's one-key step objects): ``structure(data, path)`` returns the
    value or raises :class:`DefinitionError` (``DefinitionErrors`` for several) with paths under
    ``path``; ``unstructure(value)`` returns plain JSON data.
    """

    name: str
    cls: type
    summary: str
    target: TargetSyntax
    options: tuple[Option, ...] = ()
    to_definition: ToDefinition | None = None
    metrics: tuple[Metric, ...] = ()
    docs: str | None = None
    tls_field: str | None = None
    structure: Mapping[str, Callable[[Any, str], Any]] = attrs.field(factory=dict)
    unstructure: Mapping[str, Callable[[Any], Any]] = attrs.field(factory=dict)
    describe: Callable[[Result], str | None] | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not _KIND_NAME.match(self.name):
            raise DefinitionError(
                "name", f"a kind name is lower-case letters, digits and '_', got {self.name!r}"
            )
        if not attrs.has(self.cls):
            raise DefinitionError("cls", f"{self.cls!r} is not an attrs class")
        declared = getattr(self.cls, "kind", None)
        if declared != self.name:
            raise DefinitionError(
                "cls", f"{self.cls.__name__}.kind is {declared!r}, not {self.name!r}"
            )
        flags = [f for o in self.options for f in o.flags]
        if len(flags) != len(set(flags)):
            raise DefinitionError("options", f"an option flag is declared twice in {flags}")
