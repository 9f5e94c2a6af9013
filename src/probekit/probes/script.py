"""ScriptProbe (kind ``script``): a local Python check, ``async def check(client, script)``.

For what a definition cannot express: the function is handed an :class:`httpx.AsyncClient` whose
transport is :class:`probekit.httpx.Transport` on the check's context (so every request, every
redirect hop, goes through the dial path and the egress policy), and a :class:`Script` to record
phases, metrics and assertion outcomes. Each request's phases join the check's timeline as
``http<N>.<phase>`` (``http1.connect``, ``http1.processing``, ...).

A script runs code, so it is defined only in local files (``probekit run``'s config, the
checkpoint's own, ``probekit check script FILE``), **never** from the control plane: the
control plane refuses to send one and a checkpoint refuses to build one
(:data:`CONTROL_PLANE_REFUSAL`).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import attrs

from .._exceptions import DefinitionError, ProbeFailure
from .._resolver import Family
from .._result import AssertionOutcome, ErrorKind, Status
from .._timeline import _PhaseScope
from .._timeouts import Timeouts
from .._tls import TlsOptions
from ._base import Attempt, ProbeBase
from ._kind import Metric, Name, ProbeKind

__all__ = ["CONTROL_PLANE_REFUSAL", "KIND", "Script", "ScriptProbe"]

#: Why a ``script`` definition from the network is refused.
CONTROL_PLANE_REFUSAL = (
    "a script check runs local Python code, so it can only be defined in a local config file "
    "(probekit run, the checkpoint's own config), never sent from the control plane"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CACHE: dict[tuple[str, int, str], Callable[..., Awaitable[Any]]] = {}


class Script:
    """What a script records into its check's result (the second argument of ``check``)."""

    __slots__ = ("_attempt",)

    def __init__(self, attempt: Attempt) -> None:
        self._attempt = attempt

    def phase(self, name: str) -> _PhaseScope:
        """Time a ``with`` block as phase ``name``; a failure inside names it."""
        return self._attempt.phase(name)

    def metric(self, name: str, value: float) -> None:
        """A number in ``Result.metrics``."""
        self._attempt.metric(name, value)

    def outcome(
        self, name: str, passed: bool, expected: str = "", observed: str = ""
    ) -> AssertionOutcome:
        """An assertion outcome; a failed one makes the check ``DOWN``/``assertion``."""
        return self._attempt.outcome(name, bool(passed), str(expected), str(observed))

    def warn(self, name: str, passed: bool, expected: str = "", observed: str = "") -> None:
        """An outcome whose failure makes the check only ``DEGRADED``."""
        self._attempt.outcome(
            name, bool(passed), str(expected), str(observed), severity=Status.DEGRADED
        )


def _check_path(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value or "\0" in value:
        raise DefinitionError("path", f"expected the path of a Python file, got {value!r}")


def _check_function(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or _IDENTIFIER.fullmatch(value) is None:
        raise DefinitionError("function", f"expected a Python identifier, got {value!r}")


@attrs.frozen
class ScriptProbe(ProbeBase):
    """Run ``async def <function>(client, script)`` from the local Python file ``path``.

    ``client`` is an :class:`httpx.AsyncClient` on :class:`probekit.httpx.Transport` (the
    check's dialer and egress policy; ``tls``, ``ip_family``, ``max_body_bytes`` as for the
    transport; the client's timeouts are ``timeouts.connect``/``timeouts.read``), ``script`` a
    :class:`Script`. The check is UP when the function returns and every outcome passed; an
    ``AssertionError`` it raises is a failed outcome ``script``; httpx's errors become the
    matching error kinds (``timeout``, ``policy_denied``, ``connect``, ``protocol``); any other
    exception is a bug of the script: ``UNKNOWN``/``internal``. The file is loaded once per
    change (its modification time). Needs ``probekit[httpx]``.
    """

    kind: ClassVar[str] = "script"

    path: str = attrs.field(validator=_check_path)
    function: str = attrs.field(default="check", validator=_check_function)
    tls: TlsOptions = attrs.field(factory=TlsOptions)
    ip_family: Family | None = None
    max_body_bytes: int | None = 1024 * 1024
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    @property
    def target(self) -> str:
        return self.path

    @property
    def host(self) -> str:
        return "script"

    async def run(self, attempt: Attempt) -> None:
        try:
            import httpx
        except ImportError:
            raise ProbeFailure(
                ErrorKind.INTERNAL, "script checks need httpx: install probekit[httpx]"
            ) from None
        from ..httpx import PHASES, STARTED, EgressDenied, Transport

        func = _load(self.path, self.function)
        transport = Transport(
            context=attempt.ctx,
            tls=self.tls,
            ip_family=self.ip_family,
            max_body_bytes=self.max_body_bytes,
        )
        limits = self.timeouts
        timeout = httpx.Timeout(None, connect=limits.connect, read=limits.read, write=limits.read)
        responses: list[httpx.Response] = []

        async def keep(response: httpx.Response) -> None:
            responses.append(response)

        script = Script(attempt)
        try:
            async with httpx.AsyncClient(
                transport=transport, timeout=timeout, event_hooks={"response": [keep]}
            ) as client:
                await func(client, script)
        except AssertionError as exc:
            script.outcome("script", False, "the script's assertions hold", str(exc) or "assert")
        except EgressDenied as exc:
            raise ProbeFailure(ErrorKind.POLICY_DENIED, str(exc)) from None
        except httpx.TimeoutException as exc:
            raise ProbeFailure(ErrorKind.TIMEOUT, f"{type(exc).__name__}: {exc}") from None
        except httpx.ConnectError as exc:
            raise ProbeFailure(ErrorKind.CONNECT, str(exc)) from None
        except httpx.HTTPError as exc:
            raise ProbeFailure(ErrorKind.PROTOCOL, f"{type(exc).__name__}: {exc}") from None
        except httpx.InvalidURL as exc:  # not an HTTPError: the request was never made
            raise ProbeFailure(ErrorKind.PROTOCOL, f"invalid URL in the script: {exc}") from None
        finally:
            timeline = attempt.timeline
            for n, response in enumerate(responses, 1):
                started = response.extensions.get(STARTED)
                if started is None:
                    continue
                for p in response.extensions.get(PHASES, ()):
                    begin = started + p.start
                    timeline.add(f"http{n}.{p.name}", begin, begin + p.duration)
            if responses:
                attempt.address = responses[-1].extensions.get("probekit.address")
                attempt.record_tls(responses[-1].extensions.get("probekit.tls"))
            attempt.metric("requests", len(responses))


def _load(path: str, function: str) -> Callable[..., Awaitable[Any]]:
    """``function`` of the Python file ``path``, loaded again only when the file changed."""
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise ProbeFailure(
            ErrorKind.INTERNAL, f"cannot read the script {path}: {exc.strerror}"
        ) from None
    key = (os.path.abspath(path), stamp, function)
    found = _CACHE.get(key)
    if found is not None:
        return found
    name = f"probekit_script_{abs(hash(key[0])):x}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProbeFailure(ErrorKind.INTERNAL, f"cannot load the script {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the script's own bug, reported as such
        raise ProbeFailure(
            ErrorKind.INTERNAL, f"loading the script {path} failed: {type(exc).__name__}: {exc}"
        ) from None
    func = getattr(module, function, None)
    if not inspect.iscoroutinefunction(func):
        raise ProbeFailure(
            ErrorKind.INTERNAL, f"the script {path} has no 'async def {function}(client, script)'"
        )
    sys.modules.pop(name, None)
    if len(_CACHE) >= 64:
        _CACHE.clear()
    _CACHE[key] = func
    return func


KIND = ProbeKind(
    name="script",
    cls=ScriptProbe,
    summary="run a local Python check (async def check(client, script)) with an httpx client",
    target=Name(field="path", what="FILE"),
    metrics=(
        Metric(
            "requests", "probekit_script_requests", "HTTP requests the last check's script made."
        ),
    ),
    docs="probes/script.md",
    tls_field="tls",
)
