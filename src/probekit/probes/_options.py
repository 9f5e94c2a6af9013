"""Command-line options several kinds share, and helpers for a kind's ``to_definition``.

A kind that reads a body lists :data:`BODY_OPTIONS` among its options and calls
:func:`body_assertions`; a kind that speaks TLS lists :data:`TLS_OPTIONS` and calls
:func:`tls_definition`. Problems are raised as :class:`~probekit.DefinitionError` whose path is
the option's label, which is how ``probekit check`` reports them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

from .._exceptions import DefinitionError, DefinitionErrors
from ._kind import Option

__all__ = [
    "BODY_OPTIONS",
    "CERT_OPTIONS",
    "FAMILY_OPTIONS",
    "ROW_OPTIONS",
    "TLS_OPTIONS",
    "add_assertion",
    "body_assertions",
    "cert_assertion",
    "family_definition",
    "option_problem",
    "secret_from_env",
    "starttls_definition",
    "tls_definition",
]

BODY_OPTIONS: tuple[Option, ...] = (
    Option(
        ("--contains",),
        dest="contains",
        action="append",
        metavar="TEXT",
        help="the body (what was read) contains TEXT (repeatable)",
    ),
    Option(
        ("--regex",),
        dest="regex",
        action="append",
        metavar="RE",
        help="the body matches the regular expression RE (repeatable)",
    ),
)

TLS_OPTIONS: tuple[Option, ...] = (
    Option(
        ("--insecure",), dest="insecure", action="flag", help="do not verify the TLS certificate"
    ),
    Option(("--ca-file",), dest="ca_file", metavar="FILE", help="trust the CAs in this PEM file"),
)


def _days(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected a positive number of days, got {text!r}")
    return value


#: ``--cert-warn-days``/``--cert-crit-days``, read by :func:`cert_assertion`.
CERT_OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        ("--cert-warn-days",),
        dest="cert_warn_days",
        metavar="DAYS",
        parse=_days,
        sets=("assertions",),
        help="DEGRADED (WARNING) when the certificate expires within DAYS",
    ),
    Option(
        ("--cert-crit-days",),
        dest="cert_crit_days",
        metavar="DAYS",
        parse=_days,
        sets=("assertions",),
        help="DOWN (CRITICAL) when the certificate expires within DAYS",
    ),
)


#: ``--ipv4``/``--ipv6``, read by :func:`family_definition`.
FAMILY_OPTIONS: Final[tuple[Option, ...]] = (
    Option(("--ipv4",), dest="ipv4", action="flag", sets=("ip_family",), help="connect over IPv4"),
    Option(("--ipv6",), dest="ipv6", action="flag", sets=("ip_family",), help="connect over IPv6"),
)


def _rows(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected a number of rows (0 or more), got {text!r}")
    return value


#: ``--min-rows``/``--max-rows`` into ``min_rows``/``max_rows`` (the database kinds' queries).
ROW_OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        ("--min-rows",),
        field="min_rows",
        metavar="N",
        parse=_rows,
        help="the query must return at least N rows",
    ),
    Option(
        ("--max-rows",),
        field="max_rows",
        metavar="N",
        parse=_rows,
        help="the query must return at most N rows",
    ),
)


def family_definition(
    values: Mapping[str, Any], definition: MutableMapping[str, Any], label: str = "--ipv4/--ipv6"
) -> DefinitionError | None:
    """``--ipv4``/``--ipv6`` (dests ``ipv4``/``ipv6``) as ``ip_family``; the problem, at
    ``label``, when both were given."""
    if values.get("ipv4") and values.get("ipv6"):
        return DefinitionError(label, "not allowed together")
    if values.get("ipv4"):
        definition["ip_family"] = "ipv4"
    elif values.get("ipv6"):
        definition["ip_family"] = "ipv6"
    return None


def option_problem(label: str, exc: DefinitionError) -> DefinitionError:
    """``exc`` (possibly several errors) as one problem with the option ``label``."""
    if isinstance(exc, DefinitionErrors):
        return DefinitionErrors([DefinitionError(label, e.message) for e in exc.errors])
    return DefinitionError(label, exc.message)


def add_assertion(definition: MutableMapping[str, Any], value: Any) -> None:
    """Add the plain form of the assertion ``value`` to ``definition["assertions"]``."""
    from .._assertions import assertion_to_dict

    definition.setdefault("assertions", []).append(assertion_to_dict(value))


def body_assertions(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    """``--contains`` and ``--regex`` as ``body_contains``/``body_matches`` assertions."""
    from .._assertions import BodyContains, BodyMatches

    problems: list[DefinitionError] = []
    for text in values.get("contains") or ():
        add_assertion(definition, BodyContains(text))
    for pattern in values.get("regex") or ():
        try:
            add_assertion(definition, BodyMatches(pattern))
        except DefinitionError as exc:
            problems.append(option_problem("--regex", exc))
    if problems:
        raise DefinitionErrors(problems)


def cert_assertion(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    """``--cert-warn-days``/``--cert-crit-days`` as a ``cert_expiry`` assertion."""
    from .._assertions import CertExpiry

    warn, crit = values.get("cert_warn_days"), values.get("cert_crit_days")
    if warn is None and crit is None:
        return
    try:
        add_assertion(definition, CertExpiry(warn_days=warn, crit_days=crit))
    except DefinitionError as exc:
        raise option_problem("--cert-warn-days", exc) from None


def tls_definition(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """``--insecure``/``--ca-file`` as TLS options, or None when neither was given."""
    insecure = bool(values.get("insecure"))
    ca_file = values.get("ca_file")
    if not insecure and not ca_file:
        return None
    if ca_file:
        try:
            with open(ca_file, "rb"):
                pass
        except OSError as exc:
            raise DefinitionError("--ca-file", f"cannot read {ca_file}: {exc.strerror}") from None
    out: dict[str, Any] = {}
    if insecure:
        out["verify"] = False
    if ca_file:
        out["ca_file"] = ca_file
    return out


def secret_from_env(
    values: Mapping[str, Any],
    definition: MutableMapping[str, Any],
    *,
    dest: str = "password_env",
    field: str = "password",
    label: str = "--password-env",
) -> None:
    """An option naming an environment variable (``--password-env VAR``) as the ``Secret`` in
    ``definition[field]``: a password never goes on a command line, where ``ps`` shows it.

    Read here rather than written as ``{"env": VAR}``: a definition built for the command line
    is not necessarily built as local configuration, where only such references are allowed.
    Raises :class:`DefinitionError` at ``label`` for a variable that is not set or is empty.
    """
    from .._secret import Secret

    variable = values.get(dest)
    if not variable:
        return
    value = os.environ.get(variable)
    if not value:
        state = "is not set" if value is None else "is empty"
        raise DefinitionError(label, f"environment variable {variable} {state}")
    definition[field] = Secret(value)


def starttls_definition(
    values: Mapping[str, Any],
    definition: MutableMapping[str, Any],
    *,
    implicit: bool,
    off_problem: str,
) -> DefinitionError | None:
    """``--insecure``/``--ca-file`` (see :func:`tls_definition`) put where a kind with STARTTLS
    does TLS: ``tls`` when the connection is TLS from the start (``implicit``, e.g. ``--tls``),
    else ``starttls_options``. The problem when reading them fails, or, at
    ``--insecure/--ca-file``, ``off_problem`` when ``definition`` has ``starttls = "off"``."""
    try:
        tls = tls_definition(values)
    except DefinitionError as exc:
        return exc
    if implicit:
        definition["tls"] = tls or {}
    elif tls is not None:
        if definition.get("starttls") == "off":
            return DefinitionError("--insecure/--ca-file", off_problem)
        definition["starttls_options"] = tls
    return None
