"""Assertions: typed checks of what a probe observed, each explaining its outcome.

An assertion is a frozen value with ``evaluate(observation) -> AssertionOutcome``. A failed
outcome carries the status it imposes (DOWN, or DEGRADED for warning thresholds), what was
expected and what was seen, so a result explains itself.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol, TypeAlias

import attrs

from ._exceptions import DefinitionError
from ._result import AssertionOutcome, Status, TlsInfo

__all__ = [
    "ASSERTION_TYPES",
    "Assertion",
    "BodyContains",
    "BodyMatches",
    "CertExpiry",
    "HeaderMatches",
    "JsonPath",
    "Observation",
    "ResponseTime",
    "StatusIn",
    "TlsForbidden",
    "TlsRequired",
    "assertion_name",
    "assertion_to_dict",
    "register_assertion",
]

_MISSING = object()


class Observation:
    """What a probe saw, as assertions read it.

    HTTP fills in everything; other probes leave ``status_code`` and ``headers`` empty and put
    what they read in ``body``. ``elapsed`` is seconds since the check started; ``now_days`` is
    used for certificate expiry and is supplied by the probe from its context's clock.
    """

    __slots__ = ("_json", "body", "cert_days_left", "elapsed", "headers", "status_code", "tls")

    def __init__(
        self,
        *,
        elapsed: float,
        tls: TlsInfo | None = None,
        cert_days_left: float | None = None,
        status_code: int | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        self.elapsed = elapsed
        self.tls = tls
        self.cert_days_left = cert_days_left
        self.status_code = status_code
        self.headers = headers
        self.body = body
        self._json: Any = _MISSING

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k == lname]

    def json(self) -> Any:
        """The body parsed as JSON (once per observation); raises ValueError if it is not."""
        if self._json is _MISSING:
            self._json = json.loads(self.body)
        return self._json


class Assertion(Protocol):
    """Anything with an ``evaluate`` method; every built-in assertion is a frozen attrs class."""

    def evaluate(self, observation: Observation) -> AssertionOutcome: ...


def assertion_tuple(value: Iterable[Assertion]) -> tuple[Assertion, ...]:
    """Converter for probes' ``assertions`` fields: any iterable, each item checked."""
    items = tuple(value)
    for i, item in enumerate(items):
        if not callable(getattr(item, "evaluate", None)):
            raise DefinitionError(f"assertions[{i}]", f"{item!r} is not an assertion")
    return items


def _compile(field: str, pattern: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise DefinitionError(field, f"a pattern must be a string, got {type(pattern).__name__}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise DefinitionError(field, f"invalid regex: {exc}") from None


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _outcome(
    name: str, passed: bool, expected: str, observed: str, severity: Status = Status.DOWN
) -> AssertionOutcome:
    return AssertionOutcome(name, passed, expected, observed, severity)


def _codes(value: Any) -> tuple[int, ...]:
    out = tuple(value) if not isinstance(value, int) else (value,)
    for i, code in enumerate(out):
        if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 999:
            raise DefinitionError(f"codes[{i}]", f"not an HTTP status code: {code!r}")
    return out


def _ranges(value: Any) -> tuple[tuple[int, int], ...]:
    out = []
    for i, item in enumerate(value):
        try:
            low, high = item
        except (TypeError, ValueError):
            raise DefinitionError(f"ranges[{i}]", f"expected [low, high], got {item!r}") from None
        if not (isinstance(low, int) and isinstance(high, int) and 100 <= low <= high <= 999):
            raise DefinitionError(f"ranges[{i}]", f"invalid status range {item!r}")
        out.append((low, high))
    return tuple(out)


@attrs.frozen
class StatusIn:
    """The HTTP status code is one of ``codes`` or inside one of the inclusive ``ranges``.

    ``StatusIn.parse("200-299,301")`` builds one from the compact form.
    """

    codes: tuple[int, ...] = attrs.field(default=(), converter=_codes)
    ranges: tuple[tuple[int, int], ...] = attrs.field(default=(), converter=_ranges)

    def __attrs_post_init__(self) -> None:
        if not self.codes and not self.ranges:
            raise DefinitionError("codes", "give at least one status code or range")

    @classmethod
    def parse(cls, text: str) -> StatusIn:
        codes: list[int] = []
        ranges: list[tuple[int, int]] = []
        for part in text.replace(" ", "").split(","):
            try:
                if "-" in part:
                    low, high = part.split("-", 1)
                    ranges.append((int(low), int(high)))
                else:
                    codes.append(int(part))
            except ValueError:
                raise DefinitionError("codes", f"cannot read status codes from {text!r}") from None
        return cls(codes=tuple(codes), ranges=tuple(ranges))

    def describe(self) -> str:
        parts = [str(c) for c in self.codes] + [f"{lo}-{hi}" for lo, hi in self.ranges]
        return "status in " + ",".join(parts)

    def evaluate(self, observation: Observation) -> AssertionOutcome:
        code = observation.status_code
        passed = code is not None and (
            code in self.codes or any(lo <= code <= hi for lo, hi in self.ranges)
        )
        return _outcome("status", passed, self.describe(), f"status {code}")


@attrs.frozen
class BodyContains:
    """The body contains ``text`` (or, with ``negate``, does not)."""

    text: str
    negate: bool = False

    def evaluate(self, observation: Observation) -> AssertionOutcome:
        found = self.text.encode() in observation.body
        want = "body not containing" if self.negate else "body containing"
        seen = "found" if found else "not found"
        return _outcome(
            "body_contains", found != self.negate, f"{want} {_excerpt(self.text)}", seen
        )


@attrs.frozen
class BodyMatches:
    """The body (decoded as UTF-8, invalid bytes replaced) matches ``pattern``; with
    ``negate`` it must not match."""

    pattern: str
    negate: bool = False
    _regex: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_regex", _compile("pattern", self.pattern))

    def evaluate(self, observation: Observation) -> AssertionOutcome:
        match = self._regex.search(observation.body.decode("utf-8", "replace"))
        want = f"body {'not ' if self.negate else ''}matching {_excerpt(self.pattern)}"
        seen = f"match {_excerpt(match.group(0))}" if match else "no match"
        return _outcome("body_matches", (match is not None) != self.negate, want, seen)


@attrs.frozen
class HeaderMatches:
    """Header ``name`` is present and one of its values matches ``pattern``.

    With ``allow_missing`` an absent header passes; with ``negate`` no value may match.
    """

    name: str
    pattern: str
    allow_missing: bool = False
    negate: bool = False
    _regex: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise DefinitionError("name", "a header name is required")
        object.__setattr__(self, "_regex", _compile("pattern", self.pattern))

    def evaluate(self, observation: Observation) -> AssertionOutcome:
        values = observation.header_values(self.name)
        want = (
            f"header {self.name} {'not ' if self.negate else ''}matching {_excerpt(self.pattern)}"
        )
        if not values:
            return _outcome("header", self.allow_missing, want, "header missing")
        matched = [v for v in values if self._regex.search(v)]
        seen = _excerpt(matched[0] if matched else values[0])
        return _outcome("header", bool(matched) != self.negate, want, seen)


Op: TypeAlias = Literal[
    "eq", "ne", "lt", "le", "gt", "ge", "contains", "matches", "exists", "absent"
]

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}
_STEP = re.compile(r"\.([A-Za-z_][\w-]*)|\[(-?\d+)\]|\[(?:'([^']*)'|\"([^\"]*)\")\]")


def _parse_path(path: str) -> tuple[str | int, ...]:
    if not isinstance(path, str) or not path.startswith("$"):
        raise DefinitionError("path", f"a JSON path starts with '$', got {path!r}")
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        m = _STEP.match(path, pos)
        if not m:
            raise DefinitionError("path", f"cannot read JSON path {path!r} at position {pos}")
        name, index, quoted1, quoted2 = m.groups()
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(
                name if name is not None else (quoted1 if quoted1 is not None else quoted2)
            )
        pos = m.end()
    return tuple(steps)


@attrs.frozen
class JsonPath:
    """The JSON body's value at ``path`` compares to ``value`` with ``op``.

    ``path`` is a small JSONPath subset: ``$.a.b[0]['odd key']``. Ops: ``eq ne lt le gt ge``,
    ``contains`` (substring or list member), ``matches`` (regex on the string form),
    ``exists`` and ``absent``.
    """

    path: str
    op: Op = "eq"
    value: Any = None
    _steps: tuple[str | int, ...] = attrs.field(init=False, repr=False, eq=False)
    _regex: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_steps", _parse_path(self.path))
        if self.op not in (*_COMPARE, "contains", "matches", "exists", "absent"):
            raise DefinitionError("op", f"unknown operator {self.op!r}")
        regex = _compile("value", self.value) if self.op == "matches" else None
        object.__setattr__(self, "_regex", regex)

    def _lookup(self, doc: Any) -> Any:
        for step in self._steps:
            if isinstance(step, int):
                if not isinstance(doc, list) or not -len(doc) <= step < len(doc):
                    return _MISSING
                doc = doc[step]
            else:
                if not isinstance(doc, dict) or step not in doc:
                    return _MISSING
                doc = doc[step]
        return doc

    def evaluate(self, observation: Observation) -> AssertionOutcome:
        want = f"{self.path} {self.op}" + (
            "" if self.op in ("exists", "absent") else f" {self.value!r}"
        )
        try:
            found = self._lookup(observation.json())
        except ValueError as exc:
            return _outcome(
                "json_path", False, want, f"body is not JSON ({exc.__class__.__name__})"
            )
        if self.op == "absent":
            return _outcome(
                "json_path", found is _MISSING, want, "absent" if found is _MISSING else "present"
            )
        if found is _MISSING:
            return _outcome("json_path", False, want, "path not found")
        seen = _excerpt(json.dumps(found), 80)
        if self.op == "exists":
            passed = True
        elif self.op == "contains":
            passed = isinstance(found, str | list) and (
                self.value in found
                if isinstance(found, list) or isinstance(self.value, str)
                else False
            )
        elif self.op == "matches":
            assert self._regex is not None
            passed = (
                self._regex.search(found if isinstance(found, str) else json.dumps(found))
                is not None
            )
        else:
            try:
                passed = bool(_COMPARE[self.op](found, self.value))
            except TypeError:
                passed = False
        return _outcome("json_path", passed, want, seen)


def _threshold(
    _inst: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DefinitionError(attribute.name, f"must be a number, got {value!r}")


@attrs.frozen
class ResponseTime:
    """The check took at most ``warn`` seconds (else DEGRADED) and ``crit`` seconds (else DOWN)."""

    warn: float | None = attrs.field(default=None, validator=_threshold)
    crit: float | None = attrs.field(default=None, validator=_threshold)

    def __attrs_post_init__(self) -> None:
        if self.warn is None and self.crit is None:
            raise DefinitionError("warn", "give warn, crit or both")
        if self.warn is not None and self.crit is not None and self.warn > self.crit:
            raise DefinitionError("warn", "warn threshold is above crit threshold")

    def evaluate(self, observation: Observation) -> AssertionOutcome:
        took = observation.elapsed
        seen = f"{took * 1000:.1f} ms"
        if self.crit is not None and took > self.crit:
            return _outcome("response_time", False, f"<= {self.crit * 1000:.0f} ms", seen)
        if self.warn is not None and took > self.warn:
            return _outcome(
                "response_time", False, f"<= {self.warn * 1000:.0f} ms", seen, Status.DEGRADED
            )
        limit = self.warn if self.warn is not None else self.crit
        assert limit is not None
        return _outcome("response_time", True, f"<= {limit * 1000:.0f} ms", seen)


@attrs.frozen
class TlsRequired:
    """The connection used TLS."""

    def evaluate(self, observation: Observation) -> AssertionOutcome:
        used = observation.tls is not None
        return _outcome(
            "tls", used, "TLS", observation.tls.version if observation.tls else "plain text"
        )


@attrs.frozen
class TlsForbidden:
    """The connection did not use TLS."""

    def evaluate(self, observation: Observation) -> AssertionOutcome:
        used = observation.tls is not None
        return _outcome(
            "tls",
            not used,
            "plain text",
            observation.tls.version if observation.tls else "plain text",
        )


@attrs.frozen
class CertExpiry:
    """The earliest-expiring certificate of the chain has more than ``warn_days`` (else
    DEGRADED) and ``crit_days`` (else DOWN) left."""

    warn_days: float | None = attrs.field(default=None, validator=_threshold)
    crit_days: float | None = attrs.field(default=None, validator=_threshold)

    def __attrs_post_init__(self) -> None:
        if self.warn_days is None and self.crit_days is None:
            raise DefinitionError("warn_days", "give warn_days, crit_days or both")
        if (
            self.warn_days is not None
            and self.crit_days is not None
            and self.warn_days < self.crit_days
        ):
            raise DefinitionError("warn_days", "warn_days is below crit_days")

    def evaluate(self, observation: Observation) -> AssertionOutcome:
        days = observation.cert_days_left
        if days is None:
            return _outcome("cert_expiry", False, "a certificate", "no TLS certificate")
        seen = f"{days:.1f} days left"
        if self.crit_days is not None and days <= self.crit_days:
            return _outcome("cert_expiry", False, f"> {self.crit_days:g} days left", seen)
        if self.warn_days is not None and days <= self.warn_days:
            return _outcome(
                "cert_expiry", False, f"> {self.warn_days:g} days left", seen, Status.DEGRADED
            )
        limit = self.warn_days if self.warn_days is not None else self.crit_days
        return _outcome("cert_expiry", True, f"> {limit:g} days left", seen)


# -- the registry of assertion types -------------------------------------------------------------

#: ``{"type": name, ...}`` in a definition builds ``ASSERTION_TYPES[name]``.
ASSERTION_TYPES: dict[str, type] = {
    "status_in": StatusIn,
    "body_contains": BodyContains,
    "body_matches": BodyMatches,
    "json_path": JsonPath,
    "header_matches": HeaderMatches,
    "response_time": ResponseTime,
    "tls_required": TlsRequired,
    "tls_forbidden": TlsForbidden,
    "cert_expiry": CertExpiry,
}
_NAMES: dict[type, str] = {cls: name for name, cls in ASSERTION_TYPES.items()}


def register_assertion(name: str, cls: type) -> None:
    """Make ``{"type": name, ...}`` build the assertion class ``cls``."""
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not an attrs class")
    ASSERTION_TYPES[name] = cls
    _NAMES[cls] = name


def assertion_name(assertion: object) -> str | None:
    """The registered ``type`` of ``assertion``'s class, or None."""
    return _NAMES.get(type(assertion))


def assertion_to_dict(assertion: Any) -> dict[str, Any]:
    """The plain-data form of a registered assertion: ``{"type": ..., **fields}``."""
    from ._serialization import converter

    name = _NAMES.get(type(assertion))
    if name is None:
        raise TypeError(f"{type(assertion).__name__} is not a registered assertion")
    data: dict[str, Any] = converter.unstructure(assertion)
    return {"type": name, **data}
