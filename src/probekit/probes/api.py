"""MultiStepProbe (kind ``api``): an ordered HTTP transaction on the HTTP probe's machinery.

Each step is one HTTP request (and its redirect hops), sent by the HTTP probe's own exchange
(``HttpProbe._exchange``): the dial path, the egress policy on every hop, TLS options, the body
cap, the strict response parser and the ``resolve``/``connect``/``tls``/``processing``/
``transfer`` phases are the HTTP probe's. The steps share one cookie jar and one variable scope:
what a step extracts (a JSON path, a regex group, a header, a cookie, the status code, the
redirect location) is interpolated as ``{{name}}`` into later steps' URL, headers and body.

The result keeps the :class:`~probekit.Result` schema: one sub-result per step is carried by
name prefixes (see ``docs/probes/api.md`` and :func:`step_results`):

* phases ``<step>.<phase>`` (``login.connect``, ``login.processing``, ...);
* assertion outcomes ``<step>: <assertion>`` (``read: json_path``, ``login: extract token``);
* metrics ``steps.<step>.state`` (0 passed, 1 failed, 2 skipped), ``steps.<step>.status_code``,
  ``steps.<step>.attempts``, ``steps.<step>.duration``, and ``steps_passed``/``steps_failed``/
  ``steps_skipped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as _json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlencode, urljoin

import attrs

from .._assertions import _MISSING, Assertion, assertion_tuple
from .._context import ProbeContext
from .._deadline import after
from .._dial import TlsVerifyFailure
from .._errors import classify
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._resolver import Family
from .._result import AssertionOutcome, ErrorKind, Phase, ProbeError, Result, Status
from .._secret import Secret
from .._timeouts import Timeouts
from .._tls import TlsOptions, warm_up
from ._base import Attempt, ProbeBase
from ._fields import plain_fields
from ._kind import Metric, Name, ProbeKind
from .http import (
    _REDIRECTS,
    BasicAuth,
    HttpProbe,
    _follow_redirect,
    _headers,
    _parse_url,
    _Response,
)

__all__ = ["KIND", "Extract", "MultiStepProbe", "Step", "StepResult", "step_results"]

log = logging.getLogger("probekit.probe.api")

_VAR = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_PLACEHOLDER = re.compile(r"\{\{\s*(" + _VAR + r")\s*\}\}")
_VAR_NAME = re.compile(_VAR)
_STEP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
#: Characters a value interpolated into a URL keeps as they are: RFC 3986 unreserved, and the
#: path's "/", ":" and sub-delimiters but "&" and "=" (which would add query parameters). "?",
#: "#", "@", "%", whitespace, controls and non-ASCII are percent-encoded.
_URL_SAFE = "-._~/:!$'()*+,;"
_MAX_COOKIES = 64
_MAX_COOKIE = 4096
_MAX_VALUE = 64 * 1024
_SKIPPED = 2.0
_FAILED = 1.0
_PASSED = 0.0
#: Kept back from the check's deadline so that the probe's own timer, not the base's, reports
#: a deadline (naming the step and its phase).
_MARGIN = 0.005


# -- templates -------------------------------------------------------------------------------------


def _refs(text: str, where: str) -> list[str]:
    """The variables ``text`` refers to; a ``{{`` that is no placeholder is an error."""
    names = _PLACEHOLDER.findall(text)
    if "{{" in _PLACEHOLDER.sub("", text):
        raise DefinitionError(where, "a '{{' that is not a {{name}} placeholder")
    return names


def _json_strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (keys and values), with its path."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DefinitionError(where, "JSON object keys must be strings")
            yield where, key
            yield from _json_strings(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _json_strings(item, f"{where}[{i}]")
    elif value is not None and not isinstance(value, bool | int | float):
        raise DefinitionError(where, f"not a JSON value: {type(value).__name__}")


class _Scope:
    """The variables of one run; secrets stay :class:`Secret` and are scrubbed from output."""

    def __init__(self, initial: Sequence[tuple[str, str | Secret]]) -> None:
        self.values: dict[str, str | Secret] = dict(initial)
        self.secrets: set[str] = {v.reveal() for v in self.values.values() if isinstance(v, Secret)}

    def set(self, name: str, value: str, secret: bool) -> None:
        if secret:
            self.values[name] = Secret(value)
            if value:
                self.secrets.add(value)
        else:
            self.values[name] = value

    def render(self, text: str, mode: Literal["raw", "url"]) -> tuple[str, bool]:
        """``text`` with its placeholders replaced; and whether a secret went into it."""
        tainted = False

        def one(match: re.Match[str]) -> str:
            nonlocal tainted
            value = self.values.get(match.group(1))
            if value is None:
                raise _Unset(match.group(1))
            if isinstance(value, Secret):
                tainted = True
                value = value.reveal()
            return quote(value, safe=_URL_SAFE) if mode == "url" else value

        return _PLACEHOLDER.sub(one, text), tainted

    def scrub(self, text: str) -> str:
        """``text`` with every secret value (raw and URL-quoted) shown as ``<secret>``."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "<secret>")
            quoted = quote(secret, safe=_URL_SAFE)
            if quoted != secret and quoted in text:
                text = text.replace(quoted, "<secret>")
        return text


class _Unset(Exception):
    """A variable a step refers to was never set (the step that extracts it did not run)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# -- definitions -----------------------------------------------------------------------------------


def _check_var_name(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or _VAR_NAME.fullmatch(value) is None:
        raise DefinitionError(
            attribute.name,
            f"a variable name is a letter or '_' then letters, digits, '_'; got {value!r}",
        )


@attrs.frozen
class Extract:
    """One value a step takes from its response into a variable.

    ``source`` is ``json`` (``path`` a JSON path, ``$.data.token``), ``regex`` (``path`` a
    regular expression searched in the body; ``group`` names the group, 1 by default),
    ``header`` (``path`` the header name), ``cookie`` (``path`` the cookie name, as set by the
    response or already in the jar), ``status`` (the status code) or ``location`` (the
    absolute URL of the response's ``Location``). ``secret = true`` keeps the value a
    :class:`~probekit.Secret`: it is redacted wherever it is interpolated and never captured.
    A value that cannot be found fails the step (an outcome ``extract NAME``).
    """

    name: str = attrs.field(validator=_check_var_name)
    source: Literal["json", "regex", "header", "cookie", "status", "location"] = "json"
    path: str | None = None
    group: int | str = 1
    secret: bool = False
    _pattern: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)
    _json: Any = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.source not in ("json", "regex", "header", "cookie", "status", "location"):
            raise DefinitionError("source", f"unknown source {self.source!r}")
        needs_path = self.source in ("json", "regex", "header", "cookie")
        if needs_path and not (isinstance(self.path, str) and self.path):
            raise DefinitionError("path", f"a {self.source} extraction needs a path")
        if not needs_path and self.path is not None:
            raise DefinitionError("path", f"a {self.source} extraction takes no path")
        pattern = None
        finder = None
        if self.source == "regex":
            assert self.path is not None
            try:
                pattern = re.compile(self.path)
            except re.error as exc:
                raise DefinitionError("path", f"invalid regular expression: {exc}") from None
            group = self.group
            if isinstance(group, int) and not 0 <= group <= pattern.groups:
                raise DefinitionError("group", f"the pattern has no group {group}")
            if isinstance(group, str) and group not in pattern.groupindex:
                raise DefinitionError("group", f"the pattern has no group named {group!r}")
        elif self.source == "json":
            from .._assertions import JsonPath

            try:
                finder = JsonPath(self.path or "$", "exists")
            except DefinitionError as exc:
                raise DefinitionError("path", exc.message) from None
        object.__setattr__(self, "_pattern", pattern)
        object.__setattr__(self, "_json", finder)

    def describe(self) -> str:
        return self.source if self.path is None else f"{self.source} {self.path}"

    def find(self, response: _Response, url: str, jar: _Jar, host: str) -> str | None:
        """The value in ``response`` (None when it is not there)."""
        source = self.source
        if source == "status":
            return str(response.status)
        if source == "header":
            assert self.path is not None
            return response.header(self.path.lower())
        if source == "location":
            location = response.header("location")
            return None if location is None else urljoin(url, location)
        if source == "cookie":
            assert self.path is not None
            return jar.value(self.path, host)
        text = bytes(response.body).decode("utf-8", "replace")
        if source == "regex":
            assert self._pattern is not None
            match = self._pattern.search(text)
            if match is None:
                return None
            found = match.group(self.group)
            return None if found is None else found
        try:
            doc = _json.loads(text)
        except ValueError:
            return None
        value = self._json._lookup(doc)
        if value is _MISSING:
            return None
        return value if isinstance(value, str) else _json.dumps(value)


def _pairs_of_text(field: str, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    out = []
    for i, item in enumerate(items):
        try:
            name, val = item
        except (TypeError, ValueError):
            raise DefinitionError(f"{field}[{i}]", "expected a (name, value) pair") from None
        if not isinstance(name, str) or not isinstance(val, str):
            raise DefinitionError(f"{field}[{i}]", "names and values must be strings")
        out.append((name, val))
    return tuple(out)


def _form(value: Any) -> tuple[tuple[str, str], ...]:
    return _pairs_of_text("form", value)


def _variables(value: Any) -> tuple[tuple[str, str | Secret], ...]:
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    out: list[tuple[str, str | Secret]] = []
    for i, item in enumerate(items):
        try:
            name, val = item
        except (TypeError, ValueError):
            raise DefinitionError(f"variables[{i}]", "expected a (name, value) pair") from None
        if not isinstance(name, str) or _VAR_NAME.fullmatch(name) is None:
            raise DefinitionError(f"variables[{i}]", f"not a variable name: {name!r}")
        if not isinstance(val, str | Secret):
            raise DefinitionError(f"variables[{i}]", "values must be strings or Secrets")
        out.append((name, val))
    return tuple(out)


def _extracts(value: Any) -> tuple[Extract, ...]:
    return tuple(value or ())


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise DefinitionError(attribute.name, f"must be a non-negative number, got {value!r}")


@attrs.frozen
class Step:
    """One request of a :class:`MultiStepProbe`.

    ``url``, header values, ``body``, the strings of ``json``, the values of ``form`` and a
    ``bearer_token`` given as text may hold ``{{name}}`` placeholders. A value put into the URL
    is percent-encoded (all but ``A-Z a-z 0-9 - . _ ~``), unless the whole URL is one
    placeholder; a value put into a header that holds a control character stops the step
    before anything is sent. ``body`` (raw text), ``json`` (a JSON value, sent as
    ``application/json``) and ``form`` (pairs, sent URL-encoded) exclude each other.
    ``assertions`` are the HTTP probe's (without a ``StatusIn``, 200-299 is required).
    ``max_attempts`` tries the step again after ``retry_wait`` seconds when it fails;
    ``continue_on_failure`` goes on with the next steps after a failure (the check is still
    DOWN); ``always_run`` runs the step even after an earlier failure or a deadline (within
    the probe's ``cleanup_grace``). ``timeouts``: the step's own limits (``total`` for the step).
    """

    name: str
    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str | Secret], ...] = attrs.field(default=(), converter=_headers)
    body: str | None = None
    json: Any = None
    form: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_form)
    basic_auth: BasicAuth | None = None
    bearer_token: str | Secret | None = None
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    extract: tuple[Extract, ...] = attrs.field(default=(), converter=_extracts)
    follow_redirects: bool = True
    max_redirects: int = 10
    max_body_bytes: int = 1024 * 1024
    timeouts: Timeouts | None = None
    max_attempts: int = 1
    retry_wait: float = attrs.field(default=1.0, validator=_positive)
    continue_on_failure: bool = False
    always_run: bool = False

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or _STEP_NAME.fullmatch(self.name) is None:
            raise DefinitionError(
                "name",
                "a step name is a letter then up to 39 letters, digits, '_' or '-'; "
                f"got {self.name!r}",
            )
        if not self.method or not self.method.isalpha() or not self.method.isupper():
            raise DefinitionError("method", f"expected an upper-case method, got {self.method!r}")
        given = [f for f in ("body", "json", "form") if getattr(self, f) not in (None, ())]
        if len(given) > 1:
            raise DefinitionError(given[1], f"give one of body, json and form, not {given}")
        if self.basic_auth is not None and self.bearer_token is not None:
            raise DefinitionError("bearer_token", "give basic_auth or bearer_token, not both")
        for name, _value in self.headers:
            if name.lower() in ("content-length", "transfer-encoding"):
                raise DefinitionError("headers", f"{name} is computed from the body")
        if isinstance(self.max_attempts, bool) or not 1 <= self.max_attempts <= 10:
            raise DefinitionError("max_attempts", "must be from 1 to 10")
        if isinstance(self.max_redirects, bool) or self.max_redirects < 0:
            raise DefinitionError("max_redirects", "must be a non-negative integer")
        if isinstance(self.max_body_bytes, bool) or self.max_body_bytes < 0:
            raise DefinitionError("max_body_bytes", "must be a non-negative integer")
        if self.json is not None:
            list(_json_strings(self.json, "json"))
        names = [e.name for e in self.extract]
        if len(names) != len(set(names)):
            raise DefinitionError("extract", "a variable is extracted twice by this step")

    def templates(self) -> Iterator[tuple[str, str]]:
        """Every text that may hold placeholders, with its field path."""
        yield "url", self.url
        for i, (_name, value) in enumerate(self.headers):
            if isinstance(value, str):
                yield f"headers[{i}]", value
        if self.body is not None:
            yield "body", self.body
        if self.json is not None:
            yield from _json_strings(self.json, "json")
        for i, (_name, value) in enumerate(self.form):
            yield f"form[{i}]", value
        if isinstance(self.bearer_token, str):
            yield "bearer_token", self.bearer_token


def _steps(value: Any) -> tuple[Step, ...]:
    return tuple(value or ())


def _plain_fields(value: Any) -> dict[str, Any]:
    """A step (or an extraction) as plain data: its fields that differ from their defaults."""
    return plain_fields(value, {"extract": lambda items: [_plain_fields(e) for e in items]})


def _unstructure_steps(steps: tuple[Step, ...]) -> list[dict[str, Any]]:
    return [_plain_fields(step) for step in steps]


@attrs.frozen
class MultiStepProbe(ProbeBase):
    """Run ordered HTTP :class:`Step` s sharing one cookie jar and one variable scope.

    ``variables`` are the scope's first values (a :class:`~probekit.Secret` stays one:
    ``{"secret": NAME}`` in a definition). Every ``{{name}}`` must be defined before the step
    that uses it (by ``variables`` or an earlier step's ``extract``): the definition is checked
    before any request is sent, and a problem names the step index and the field. ``capture``
    puts the values of extracted variables that are not secret in the result (else only their
    names). ``cleanup_grace`` seconds of the deadline are kept for ``always_run`` steps when the
    others run out of time. ``tls``, ``ip_family`` apply to every step.

    The check is UP when every step passed; a failed step's outcomes are all reported, later
    steps are skipped (except ``always_run`` ones, and all when ``continue_on_failure``); an
    error (connect, timeout, protocol, policy) is reported with the step and its phase
    (``create.processing``).
    """

    kind: ClassVar[str] = "api"

    steps: tuple[Step, ...] = attrs.field(converter=_steps)
    variables: tuple[tuple[str, str | Secret], ...] = attrs.field(default=(), converter=_variables)
    tls: TlsOptions = attrs.field(factory=TlsOptions)
    ip_family: Family | None = None
    capture: bool = False
    cleanup_grace: float = attrs.field(default=2.0, validator=_positive)
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    _warm: bool = attrs.field(init=False, repr=False, eq=False, default=False)

    def __attrs_post_init__(self) -> None:
        if not self.steps:
            raise DefinitionError("steps", "give at least one step")
        problems: list[DefinitionError] = []
        defined = {name for name, _ in self.variables}
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            if not isinstance(step, Step):
                raise DefinitionError(f"steps[{i}]", f"expected a Step, got {type(step).__name__}")
            if step.name in seen:
                problems.append(DefinitionError(f"steps[{i}].name", f"{step.name!r} twice"))
            seen.add(step.name)
            for where, text in step.templates():
                path = f"steps[{i}].{where}"
                try:
                    names = _refs(text, path)
                except DefinitionError as exc:
                    problems.append(exc)
                    continue
                for name in names:
                    if name not in defined:
                        known = ", ".join(sorted(defined)) or "none"
                        problems.append(
                            DefinitionError(
                                path,
                                f"undefined variable {name!r} in step {i} ({step.name}); "
                                f"defined before it: {known}",
                            )
                        )
            problems.extend(_check_url_template(i, step.url))
            defined.update(e.name for e in step.extract)
        if any(s.always_run for s in self.steps) and self.cleanup_grace >= self.timeouts.total:
            problems.append(DefinitionError("cleanup_grace", "must be shorter than timeouts.total"))
        if problems:
            raise problems[0] if len(problems) == 1 else DefinitionErrors(problems)

    @property
    def target(self) -> str:
        return self.steps[0].url

    @property
    def host(self) -> str:
        try:
            return _parse_url(_PLACEHOLDER.sub("x", self.steps[0].url)).host
        except DefinitionError:
            return "api"

    def prepare(self, ctx: ProbeContext) -> None:
        if not self._warm:
            if any(s.url.startswith("https") for s in self.steps):
                warm_up(attrs.evolve(self.tls, alpn=("http/1.1",)))
            object.__setattr__(self, "_warm", True)

    # -- the run -----------------------------------------------------------------------------

    async def run(self, attempt: Attempt) -> None:
        ctx = attempt.ctx
        clock = ctx.clock
        scope = _Scope(self.variables)
        jar = _Jar()
        states: dict[str, float] = {}
        failure: tuple[int, ProbeError] | None = None
        deadline = attempt.timeline.start + self.timeouts.total
        if ctx.deadline is not None and ctx.deadline < deadline:
            deadline = ctx.deadline
        cleanup = any(s.always_run for s in self.steps)
        # A caller's earlier deadline shrinks the grace too: never more than half of the time.
        grace = min(self.cleanup_grace, (deadline - clock.monotonic()) / 2) if cleanup else 0.0
        running = _Running()
        index = 0
        stop = False  # a failure without continue_on_failure: only always_run steps follow
        failed = False  # a step failed already
        try:
            with after(max(deadline - grace - _MARGIN - clock.monotonic(), 0.0)):
                for index, step in enumerate(self.steps):
                    if stop and not step.always_run:
                        states[step.name] = _SKIPPED
                        continue
                    error = await self._step(attempt, index, step, scope, jar, states, running)
                    if error is None:
                        continue
                    # The check reports the first step that failed: an error by its kind, an
                    # assertion by the outcomes (which the base turns into DOWN/assertion).
                    if error.kind is not ErrorKind.ASSERTION and not failed:
                        failure = (index, error)
                    failed = True
                    if not step.continue_on_failure:
                        stop = True
        except TimeoutError:
            step = self.steps[index]
            phase = running.phase
            states[step.name] = _FAILED
            where = f"during {phase}" if phase else "between requests"
            error = ProbeError(
                ErrorKind.TIMEOUT,
                f"step {index + 1} ({step.name}) timed out {where}",
                f"{step.name}.{phase}" if phase else step.name,
            )
            if not failed:
                failure = (index, error)
            later = index
            try:
                with after(max(deadline - _MARGIN - clock.monotonic(), 0.0)):
                    for later in range(index + 1, len(self.steps)):
                        step = self.steps[later]
                        if not step.always_run:
                            states[step.name] = _SKIPPED
                            continue
                        await self._step(attempt, later, step, scope, jar, states, running)
            except TimeoutError:
                # The grace ran out too: the cleanup step that was running failed, the rest
                # are skipped; the check still reports the first timeout.
                for rest in self.steps[later:]:
                    states.setdefault(rest.name, _SKIPPED)
                states[self.steps[later].name] = _FAILED
        m = attempt.metrics
        for step in self.steps:
            state = states.get(step.name, _SKIPPED)
            m[f"steps.{step.name}.state"] = state
        values = list(states.values())
        m["steps_passed"] = values.count(_PASSED)
        m["steps_failed"] = values.count(_FAILED)
        m["steps_skipped"] = len(self.steps) - values.count(_PASSED) - values.count(_FAILED)
        attempt._evaluated = True  # the steps evaluated their assertions themselves
        if failure is not None:
            _, error = failure
            attempt.timeline.current = error.phase
            raise ProbeFailure(error.kind, scope.scrub(error.message))

    async def _step(
        self,
        attempt: Attempt,
        index: int,
        step: Step,
        scope: _Scope,
        jar: _Jar,
        states: dict[str, float],
        running: _Running,
    ) -> ProbeError | None:
        """Run one step (with its retries); record its phases, outcomes and metrics."""
        ctx = attempt.ctx
        timeouts = step.timeouts or self.timeouts
        tries = 0
        started = ctx.clock.monotonic()
        while True:
            tries += 1
            sub = Attempt(ctx, timeouts)
            running.phase = None
            error: ProbeError | None = None
            extracted: dict[str, tuple[str, bool]] = {}
            try:
                limit = step.timeouts.total if step.timeouts is not None else None
                with after(limit) if limit is not None else contextlib.nullcontext():
                    extracted = await self._exchange(sub, step, scope, jar)
            except TlsVerifyFailure as exc:
                sub.record_tls(exc.tls)
                error = classify(exc, sub.timeline.current)
            except _Unset as exc:
                # The step that sets it did not pass (a cleanup step after a failure): nothing
                # to send, so the step is skipped, not failed.
                log.info("step %s skipped: variable %r was never set", step.name, exc.name)
                states[step.name] = _SKIPPED
                return None
            except Exception as exc:  # noqa: BLE001 - classified like the base does
                error = classify(exc, sub.timeline.current)
            finally:
                for p in sub.timeline.phases:
                    begin = sub.timeline.start + p.start
                    attempt.timeline.add(f"{step.name}.{p.name}", begin, begin + p.duration)
                running.phase = sub.timeline.current
            failed = [a for a in sub.assertions if not a.passed and a.severity is Status.DOWN]
            if error is None and failed:
                error = ProbeError(ErrorKind.ASSERTION, failed[0].describe(), None)
            if error is None or tries >= step.max_attempts:
                break
            running.phase = None  # a deadline while waiting is "between requests"
            await asyncio.sleep(step.retry_wait)
        if sub.address is not None:
            attempt.address = sub.address
        if sub.tls is not None:
            attempt.record_tls(sub.tls)
        for outcome in sub.assertions:
            attempt.assertions.append(
                AssertionOutcome(
                    f"{step.name}: {outcome.name}",
                    outcome.passed,
                    scope.scrub(outcome.expected),
                    scope.scrub(outcome.observed),
                    outcome.severity,
                )
            )
        m = attempt.metrics
        if "status_code" in sub.metrics:
            m[f"steps.{step.name}.status_code"] = sub.metrics["status_code"]
        m[f"steps.{step.name}.attempts"] = tries
        m[f"steps.{step.name}.duration"] = round(ctx.clock.monotonic() - started, 6)
        if error is None:
            for name, (value, secret) in extracted.items():
                scope.set(name, value, secret)
            states[step.name] = _PASSED
            return None
        states[step.name] = _FAILED
        phase = error.phase
        if error.kind is ErrorKind.ASSERTION:
            return ProbeError(
                ErrorKind.ASSERTION, f"step {index + 1} ({step.name}): {error.message}", None
            )
        return ProbeError(
            error.kind,
            f"step {index + 1} ({step.name}): {scope.scrub(error.message)}",
            f"{step.name}.{phase}" if phase else step.name,
        )

    async def _exchange(
        self, sub: Attempt, step: Step, scope: _Scope, jar: _Jar
    ) -> dict[str, tuple[str, bool]]:
        """Send the step's request (and follow its redirects); evaluate and extract."""
        probe = self._http_probe(step, scope, sub.timeouts)
        url = probe._parsed
        method = probe.method
        body = probe.body
        auth = True
        hops = 0
        while True:
            hop = _hop(probe, jar, url, auth)
            response = await hop._exchange(sub, url, method, body, auth)
            jar.take(response, url)
            location = response.header("location")
            if not (step.follow_redirects and response.status in _REDIRECTS and location):
                break
            if hops >= step.max_redirects:
                raise ProbeFailure(ErrorKind.PROTOCOL, f"more than {step.max_redirects} redirects")
            hops += 1
            url, same_origin, method, body = _follow_redirect(
                url, location, response.status, method, body
            )
            auth = auth and same_origin  # never send credentials to another origin
        sub.metrics["redirects"] = hops
        probe._evaluate(sub, response)
        final = f"{url.scheme}://{url.authority}{url.target}"
        extracted: dict[str, tuple[str, bool]] = {}
        for ex in step.extract:
            value = ex.find(response, final, jar, url.host)
            if value is not None and len(value) > _MAX_VALUE:
                value = None
            if value is None:
                sub.outcome(f"extract {ex.name}", False, ex.describe(), "not found")
                continue
            extracted[ex.name] = (value, ex.secret)
            shown = value if (self.capture and not ex.secret) else "set"
            if ex.secret:
                scope.secrets.add(value)  # scrubbed from this step's own outcomes too
            sub.outcome(f"extract {ex.name}", True, ex.describe(), shown)
        return extracted

    def _http_probe(self, step: Step, scope: _Scope, timeouts: Timeouts) -> HttpProbe:
        """The step's request, as an HttpProbe with its placeholders filled in."""
        where = "url"
        try:
            whole = _PLACEHOLDER.fullmatch(step.url.strip()) is not None
            url, url_secret = scope.render(step.url, "raw" if whole else "url")
            headers: list[tuple[str, str | Secret]] = []
            content_type = None
            for i, (name, value) in enumerate(step.headers):
                where = f"headers[{i}]"
                if isinstance(value, str):
                    text, secret = scope.render(value, "raw")
                    headers.append((name, Secret(text) if secret else text))
                else:
                    headers.append((name, value))
                if name.lower() == "content-type":
                    content_type = name
            where = "body"
            body: bytes | None = None
            if step.body is not None:
                body = scope.render(step.body, "raw")[0].encode()
            elif step.json is not None:
                body = _json.dumps(_fill_json(step.json, scope), ensure_ascii=False).encode()
                if content_type is None:
                    headers.append(("Content-Type", "application/json"))
            elif step.form:
                pairs = [(k, scope.render(v, "raw")[0]) for k, v in step.form]
                body = urlencode(pairs).encode()
                if content_type is None:
                    headers.append(("Content-Type", "application/x-www-form-urlencoded"))
            where = "bearer_token"
            bearer: Secret | None = None
            if isinstance(step.bearer_token, Secret):
                bearer = step.bearer_token
            elif step.bearer_token is not None:
                bearer = Secret(scope.render(step.bearer_token, "raw")[0])
            where = "url"
            return HttpProbe(
                url=url,
                method=step.method,
                headers=headers,
                body=body,
                basic_auth=step.basic_auth,
                bearer_token=bearer,
                follow_redirects=False,
                tls=self.tls,
                ip_family=self.ip_family,
                assertions=step.assertions,
                max_body_bytes=step.max_body_bytes,
                timeouts=timeouts,
            )
        except DefinitionError as exc:
            message = exc.message
            if where == "url" and url_secret:
                message = "the URL is not valid once its variables are filled in"
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"{exc.path or where}: {scope.scrub(message)}; the request was not sent",
            ) from None


class _Running:
    """The phase the step running now was in when it stopped (for a deadline)."""

    __slots__ = ("phase",)

    def __init__(self) -> None:
        self.phase: str | None = None


def _fill_json(value: Any, scope: _Scope) -> Any:
    if isinstance(value, str):
        return scope.render(value, "raw")[0]
    if isinstance(value, Mapping):
        return {scope.render(k, "raw")[0]: _fill_json(v, scope) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fill_json(v, scope) for v in value]
    return value


def _check_url_template(index: int, url: str) -> list[DefinitionError]:
    """A URL template must be a valid URL with some values filled in (a placeholder may stand
    for a host, a port's digits, a path or a query: each filling is tried)."""
    if _PLACEHOLDER.fullmatch(url.strip()):
        return []
    first: DefinitionError | None = None
    for filler in ("x", "1", "", "/x"):
        try:
            _parse_url(_PLACEHOLDER.sub(filler, url), f"steps[{index}].url")
        except DefinitionError as exc:
            first = first or exc
        else:
            return []
    assert first is not None
    return [first]


def _hop(probe: HttpProbe, jar: _Jar, url: Any, auth: bool) -> HttpProbe:
    """The request of one hop: the jar's cookies for its URL; after a redirect to another
    origin, no ``Authorization`` header (like ``basic_auth`` and ``bearer_token``)."""
    cookie = jar.header(url.scheme, url.host, url.target)
    if cookie is None and auth:
        return probe
    drop = ("cookie",) if auth else ("cookie", "authorization")
    headers = [(n, v) for n, v in probe.headers if n.lower() not in drop]
    if cookie is not None:
        headers.append(("Cookie", cookie))
    return attrs.evolve(probe, headers=headers)


# -- the cookie jar ------------------------------------------------------------------------------

_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE = re.compile(
    r'[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*|"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"'
)


@attrs.define
class _Cookie:
    name: str
    value: str
    domain: str
    host_only: bool
    path: str
    secure: bool


class _Jar:
    """A small RFC 6265 cookie jar for one run: domain and path matching, Secure, Max-Age and
    deletion; at most 64 cookies of at most 4 KiB each (more are dropped)."""

    def __init__(self) -> None:
        self.cookies: list[_Cookie] = []

    def take(self, response: _Response, url: Any) -> None:
        for name, value in response.headers:
            if name == "set-cookie":
                self._set(value, url)

    def _set(self, line: str, url: Any) -> None:
        if len(line) > _MAX_COOKIE:
            return
        first, *attributes = line.split(";")
        name, eq, value = first.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or _COOKIE_NAME.fullmatch(name) is None:
            return
        if _COOKIE_VALUE.fullmatch(value) is None:
            return
        host = url.host.lower()
        domain, host_only, path, secure, delete = (
            host,
            True,
            _default_path(url.target),
            False,
            False,
        )
        for attribute in attributes:
            key, _, val = attribute.partition("=")
            key, val = key.strip().lower(), val.strip()
            if key == "domain" and val:
                val = val.lstrip(".").lower()
                if host != val and not host.endswith("." + val):
                    return  # a cookie for another domain: refused (RFC 6265 5.3 step 6)
                domain, host_only = val, False
            elif key == "path" and val.startswith("/"):
                path = val
            elif key == "secure":
                secure = True
            elif key == "max-age" and val.lstrip("-").isdigit() and len(val) < 20:
                delete = int(val) <= 0
        self.cookies = [
            c
            for c in self.cookies
            if not (c.name == name and c.domain == domain and c.path == path)
        ]
        if delete or len(self.cookies) >= _MAX_COOKIES:
            return
        self.cookies.append(_Cookie(name, value, domain, host_only, path, secure))

    def _matching(self, scheme: str, host: str, target: str) -> list[_Cookie]:
        host = host.lower()
        path = target.split("?", 1)[0] or "/"
        out = []
        for c in self.cookies:
            if c.host_only and host != c.domain:
                continue
            if not c.host_only and host != c.domain and not host.endswith("." + c.domain):
                continue
            if not (
                path == c.path
                or (path.startswith(c.path) and (c.path.endswith("/") or path[len(c.path)] == "/"))
            ):
                continue
            if c.secure and scheme != "https":
                continue
            out.append(c)
        out.sort(key=lambda c: -len(c.path))
        return out

    def header(self, scheme: str, host: str, target: str) -> str | None:
        found = self._matching(scheme, host, target)
        return "; ".join(f"{c.name}={c.value}" for c in found) if found else None

    def value(self, name: str, host: str) -> str | None:
        for c in self.cookies:
            if c.name == name and (
                host.lower() == c.domain or host.lower().endswith("." + c.domain)
            ):
                return c.value
        return None


def _default_path(target: str) -> str:
    path = target.split("?", 1)[0]
    if not path.startswith("/") or path.count("/") == 1:
        return "/"
    return path[: path.rfind("/")]


# -- reading a result back per step ----------------------------------------------------------------


@attrs.frozen
class StepResult:
    """One step of an ``api`` result, read back from its prefixed phases, outcomes and metrics."""

    name: str
    state: Literal["passed", "failed", "skipped"]
    status_code: int | None
    attempts: int
    phases: tuple[Phase, ...]
    assertions: tuple[AssertionOutcome, ...]


def step_results(result: Result) -> tuple[StepResult, ...]:
    """The per-step sub-results of a ``MultiStepProbe`` result, in step order."""
    names = [
        key[len("steps.") : -len(".state")]
        for key in result.metrics
        if key.startswith("steps.") and key.endswith(".state")
    ]
    out = []
    words = {_PASSED: "passed", _FAILED: "failed", _SKIPPED: "skipped"}
    for name in names:
        m = result.metrics
        code = m.get(f"steps.{name}.status_code")
        out.append(
            StepResult(
                name=name,
                state=words.get(m[f"steps.{name}.state"], "skipped"),  # type: ignore[arg-type]
                status_code=None if code is None else int(code),
                attempts=int(m.get(f"steps.{name}.attempts", 0)),
                phases=tuple(
                    Phase(p.name[len(name) + 1 :], p.start, p.duration)
                    for p in result.phases
                    if p.name.startswith(name + ".")
                ),
                assertions=tuple(
                    attrs.evolve(a, name=a.name[len(name) + 2 :])
                    for a in result.assertions
                    if a.name.startswith(name + ": ")
                ),
            )
        )
    return tuple(out)


# -- the command line ------------------------------------------------------------------------------


@attrs.frozen
class StepsFile(Name):
    """``probekit check api FILE``: a TOML (or ``.json``) file holding the definition; any
    other text is taken as one URL to GET (``http://`` added when it has no scheme)."""

    def parse(self, text: str) -> dict[str, Any]:
        from pathlib import Path

        if not text:
            raise DefinitionError("", "expected a steps file or a URL")
        if text.lower().endswith((".toml", ".json")) or Path(text).is_file():
            from .._validate import read_config_file

            try:
                data = read_config_file(text)
            except DefinitionErrors as exc:
                raise DefinitionError("", exc.errors[0].message) from None
            if not isinstance(data, dict):
                raise DefinitionError("", f"{text} does not hold a table")
            data.pop("kind", None)
            return data
        if "://" in text:
            return {"steps": [{"name": "get", "url": text}]}
        host = text.replace("%", "%25")  # an IPv6 zone
        if host.count(":") > 1 and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        return {"steps": [{"name": "get", "url": f"http://{host}/"}]}


KIND = ProbeKind(
    name="api",
    cls=MultiStepProbe,
    summary="run an ordered HTTP transaction (log in, create, read, delete) from a steps file",
    target=StepsFile(field="steps", what="FILE"),
    metrics=(
        Metric("steps_passed", "probekit_api_steps_passed", "Steps of the last check that passed."),
        Metric("steps_failed", "probekit_api_steps_failed", "Steps of the last check that failed."),
        Metric("steps_skipped", "probekit_api_steps_skipped", "Steps of the last check skipped."),
    ),
    docs="probes/api.md",
    tls_field="tls",
    unstructure={"steps": _unstructure_steps},
    describe=lambda result: (
        f"{int(result.metrics['steps_passed'])}/{len(step_results(result))} steps passed"
        if "steps_passed" in result.metrics
        else None
    ),
)
