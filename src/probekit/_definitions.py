"""Probe definitions as plain data: ``{"kind": "http", "url": ..., "assertions": [...]}``.

This is how definitions arrive from a config file or a control plane. :func:`build_probe` turns
one into a probe, reporting *every* problem at once, each with its field path
(``assertions[1].pattern: invalid regex: ...``). :func:`probe_to_dict` goes the other way.

- ``kind`` names a registered probe class (:func:`register_probe`; ``http`` and ``tcp`` built in).
- Assertions are objects with a ``type``: ``status_in``, ``body_contains``, ``body_matches``,
  ``json_path``, ``header_matches``, ``response_time``, ``tls_required``, ``tls_forbidden``,
  ``cert_expiry`` (register more with :func:`register_assertion`).
- TCP steps are one-key objects: ``{"send": "text"}``, ``{"send_hex": "0d0a"}``,
  ``{"expect": "regex"}``, ``{"expect_exact": "text"}``, ``{"starttls": {tls options}}``.
- A secret is never required inline: ``{"secret": "NAME"}`` looks the name up in the secrets
  given to :func:`build_probe` (``{"env": "VAR"}`` and ``{"file": "path"}`` work where the
  caller allows them, as local config files do). A plain string is accepted too. Where a field
  takes a string *or* a secret (an HTTP header value), a plain string stays a string and the
  reference forms make a secret.
"""

from __future__ import annotations

import difflib
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import attrs

from ._assertions import (
    BodyContains,
    BodyMatches,
    CertExpiry,
    HeaderMatches,
    JsonPath,
    ResponseTime,
    StatusIn,
    TlsForbidden,
    TlsRequired,
)
from ._exceptions import DefinitionError, DefinitionErrors
from ._secret import Secret

__all__ = [
    "DefinitionErrors",
    "build_probe",
    "probe_kinds",
    "probe_to_dict",
    "register_assertion",
    "register_probe",
    "assertion_to_dict",
    "structure",
]

_ASSERTIONS: dict[str, type] = {
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
_ASSERTION_NAMES = {cls: name for name, cls in _ASSERTIONS.items()}


def register_probe(kind: str, cls: type) -> None:
    """Make ``{"kind": kind, ...}`` build ``cls`` (a frozen attrs probe class whose ``kind`` is
    ``kind``). Declaring a :class:`~probekit.probes.ProbeKind` gives it CLI options and metrics
    too (:func:`~probekit.probes.register_kind`)."""
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not an attrs class")
    from .probes._registry import register_class

    register_class(kind, cls)


def register_assertion(name: str, cls: type) -> None:
    """Make ``{"type": name, ...}`` build the assertion class ``cls``."""
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not an attrs class")
    _ASSERTIONS[name] = cls
    _ASSERTION_NAMES[cls] = name


def probe_kinds() -> tuple[str, ...]:
    """The names of every probe kind this process has (built-in, registered and plugins)."""
    from .probes._registry import kinds

    return tuple(kinds())


SecretLookup = Callable[[str], Secret]


class _Builder:
    def __init__(self, secrets: Mapping[str, Secret] | SecretLookup | None, local: bool) -> None:
        self.secrets = secrets
        self.local = local
        self.errors: list[DefinitionError] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(DefinitionError(path, message))

    # -- classes -------------------------------------------------------------------------

    def build(
        self,
        cls: type,
        data: Any,
        path: str,
        skip: tuple[str, ...] = (),
        hooks: Mapping[str, Callable[[Any, str], Any]] | None = None,
    ) -> Any:
        if not isinstance(data, Mapping):
            self.fail(path, f"expected an object, got {_kind(data)}")
            return None
        try:
            hints = get_type_hints(cls)
        except Exception as exc:  # noqa: BLE001 - any failure to read annotations is the class's
            self.fail(
                path,
                f"cannot read the field types of {cls.__qualname__} "
                f"({type(exc).__name__}: {exc}); define it in an importable module",
            )
            return None
        fields = {f.name: f for f in attrs.fields(cls) if f.init}
        names = {f.alias or f.name.lstrip("_"): f for f in fields.values()}
        kwargs: dict[str, Any] = {}
        before = len(self.errors)
        for key, value in data.items():
            if key in skip:
                continue
            where = _join(path, str(key))
            field = names.get(key) if isinstance(key, str) else None
            if field is None:
                self.fail(where, "unknown field" + _did_you_mean(key, names))
                continue
            hook = hooks.get(key) if hooks else None
            if hook is not None:
                kwargs[key] = self.hooked(hook, value, where)
            else:
                kwargs[key] = self.value(hints[field.name], value, where)
        missing = [
            n
            for n, f in names.items()
            if f.default is attrs.NOTHING and n not in kwargs and n not in skip
        ]
        for name in missing:
            self.fail(_join(path, name), "required")
        if len(self.errors) > before:
            return None
        try:
            return cls(**kwargs)
        except DefinitionErrors as exc:
            self.errors.extend(e.under(path) for e in exc.errors)
        except DefinitionError as exc:
            self.errors.append(exc.under(path))
        except (TypeError, ValueError) as exc:
            self.fail(path, str(exc))
        return None

    # -- values --------------------------------------------------------------------------

    def value(self, hint: Any, data: Any, path: str) -> Any:
        origin = get_origin(hint)
        if hint is Any or hint is object:
            return data
        if origin in (Union, types.UnionType):
            options = get_args(hint)
            if data is None and type(None) in options:
                return None
            real = [o for o in options if o is not type(None)]
            if len(real) == 1:
                return self.value(real[0], data, path)
            if bytes in real and isinstance(data, str):
                return data
            if Secret in real and isinstance(data, Secret | Mapping):
                return self.secret(data, path)  # str | Secret: a plain string stays a string
            return self.value(real[0], data, path)
        if origin is Literal:
            if data not in get_args(hint):
                self.fail(path, f"expected one of {list(get_args(hint))}, got {data!r}")
            return data
        if hint is Secret:
            return self.secret(data, path)
        if hint is bool:
            if not isinstance(data, bool):
                self.fail(path, f"expected true or false, got {_kind(data)}")
            return data
        if hint is int:
            if isinstance(data, bool) or not isinstance(data, int):
                self.fail(path, f"expected an integer, got {_kind(data)}")
            return data
        if hint is float:
            if (
                isinstance(data, bool)
                or not isinstance(data, int | float)
                or not math.isfinite(data)
            ):
                self.fail(path, f"expected a number, got {_kind(data)}")
                return data
            return float(data)
        if hint is str:
            if not isinstance(data, str):
                self.fail(path, f"expected a string, got {_kind(data)}")
            return data
        if hint is bytes:
            if not isinstance(data, str | bytes):
                self.fail(path, f"expected a string, got {_kind(data)}")
                return data
            return data.encode() if isinstance(data, str) else data
        if origin is tuple:
            return self.sequence(hint, data, path)
        if origin is dict or origin is Mapping or origin is typing.Mapping:
            if not isinstance(data, Mapping):
                self.fail(path, f"expected an object, got {_kind(data)}")
            return data
        if getattr(hint, "__name__", "") == "Assertion":
            return self.assertion(data, path)
        if getattr(hint, "__name__", "") == "Probe":
            return self.probe(data, path)
        if attrs.has(hint):
            return self.build(hint, data, path)
        self.fail(path, f"cannot load a value of type {hint!r}")
        return None

    def sequence(self, hint: Any, data: Any, path: str) -> Any:
        args = get_args(hint)
        item = args[0] if args else Any
        if item is not Any and get_origin(item) is tuple and isinstance(data, Mapping):
            data = list(data.items())  # headers and query given as an object
        if isinstance(data, str | bytes) or not isinstance(data, list | tuple):
            self.fail(path, f"expected a list, got {_kind(data)}")
            return ()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self.value(item, v, f"{path}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            self.fail(path, f"expected {len(args)} items, got {len(data)}")
            return tuple(data)
        return tuple(
            self.value(t, v, f"{path}[{i}]")
            for i, (t, v) in enumerate(zip(args, data, strict=True))
        )

    def assertion(self, data: Any, path: str) -> Any:
        if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
            self.fail(path, "an assertion is an object with a 'type'")
            return None
        cls = _ASSERTIONS.get(data["type"])
        if cls is None:
            self.fail(
                _join(path, "type"),
                f"unknown assertion {data['type']!r}; known: {sorted(_ASSERTIONS)}",
            )
            return None
        return self.build(cls, data, path, skip=("type",))

    def hooked(self, hook: Callable[[Any, str], Any], data: Any, path: str) -> Any:
        """A field a kind structures itself; its errors' paths are placed under ``path``."""
        try:
            return hook(data, path)
        except DefinitionErrors as exc:
            self.errors.extend(exc.errors)
        except DefinitionError as exc:
            self.errors.append(exc)
        return None

    def probe(self, data: Any, path: str) -> Any:
        from .probes._registry import get_kind, kinds

        if not isinstance(data, Mapping):
            self.fail(path, f"expected an object, got {_kind(data)}")
            return None
        name = data.get("kind")
        if name is None:
            self.fail(_join(path, "kind"), "required: a definition names its probe kind")
            return None
        if not isinstance(name, str):
            self.fail(_join(path, "kind"), f"expected a string, got {_kind(name)}")
            return None
        try:
            spec = get_kind(name)
        except DefinitionError as exc:
            known = sorted(kinds())
            message = exc.message
            if message.startswith("unknown probe kind"):
                message = (
                    f"unknown probe kind {name!r}{_did_you_mean(name, known)}; "
                    f"known: {', '.join(known)}"
                )
            self.fail(_join(path, "kind"), message)
            return None
        return self.build(spec.cls, data, path, skip=("kind",), hooks=spec.structure)

    def secret(self, data: Any, path: str) -> Secret | None:
        if isinstance(data, Secret):
            return data  # from Python (a kind's to_definition): never a plain string on the way
        if isinstance(data, str):
            return Secret(data)
        if isinstance(data, Mapping) and len(data) == 1:
            ((how, name),) = data.items()
            if not isinstance(name, str) or not name:
                self.fail(_join(path, str(how)), "expected a name")
                return None
            if how == "secret":
                return self.lookup(name, path)
            if how in ("env", "file") and not self.local:
                self.fail(
                    _join(path, how), f"'{how}' secrets are only read from local configuration"
                )
                return None
            if how == "env":
                value = os.environ.get(name)
                if value is None:
                    self.fail(_join(path, "env"), f"environment variable {name} is not set")
                    return None
                return Secret(value)
            if how == "file":
                try:
                    return Secret(Path(name).read_text().rstrip("\r\n"))
                except OSError as exc:
                    self.fail(_join(path, "file"), f"cannot read {name}: {exc.strerror}")
                    return None
        self.fail(
            path, 'a secret is a string or one of {"secret": NAME}, {"env": VAR}, {"file": PATH}'
        )
        return None

    def lookup(self, name: str, path: str) -> Secret | None:
        source = self.secrets
        try:
            if source is None:
                raise KeyError(name)
            if callable(source) and not isinstance(source, Mapping):
                return source(name)
            return source[name]
        except KeyError:
            self.fail(_join(path, "secret"), f"no secret named {name!r}")
            return None


def _did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, [str(k) for k in known], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def build_probe(
    data: Any,
    *,
    secrets: Mapping[str, Secret] | SecretLookup | None = None,
    local: bool = False,
    path: str = "",
) -> Any:
    """Build the probe ``data`` defines, or raise :class:`DefinitionErrors` listing every problem.

    ``secrets`` resolves ``{"secret": NAME}`` references; ``local=True`` also allows
    ``{"env": VAR}`` and ``{"file": PATH}`` (for the operator's own config files, never for
    definitions that come over the network).
    """
    builder = _Builder(secrets, local)
    probe = builder.probe(data, path)
    if builder.errors:
        raise DefinitionErrors(builder.errors)
    return probe


def probe_to_dict(probe: Any) -> dict[str, Any]:
    """The plain-data form of a probe (secrets show as ``"<secret>"``)."""
    from ._serialization import converter
    from .probes._registry import get_kind

    kind = type(probe).kind
    hooks = get_kind(kind).unstructure
    out: dict[str, Any] = {"kind": kind}
    for field in attrs.fields(type(probe)):
        if not field.init:
            continue
        value = getattr(probe, field.name)
        default = field.default
        if isinstance(default, _FACTORY):
            default = default.factory()
        if value == default:
            continue
        name = field.alias or field.name
        hook = hooks.get(name)
        out[name] = hook(value) if hook is not None else _plain(value, converter)
    return out


_FACTORY: type[Any] = type(attrs.Factory(list))


def _plain(value: Any, converter: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v, converter) for v in value]
    if type(value) in _ASSERTION_NAMES:
        return {"type": _ASSERTION_NAMES[type(value)], **converter.unstructure(value)}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return converter.unstructure(value)


def assertion_to_dict(assertion: Any) -> dict[str, Any]:
    """The plain-data form of a registered assertion: ``{"type": ..., **fields}``."""
    from ._serialization import converter

    name = _ASSERTION_NAMES.get(type(assertion))
    if name is None:
        raise TypeError(f"{type(assertion).__name__} is not a registered assertion")
    data: dict[str, Any] = converter.unstructure(assertion)
    return {"type": name, **data}


def structure(cls: type, data: Any, path: str = "") -> Any:
    """Build the attrs value ``cls`` from plain ``data`` with the engine definitions use (for
    a kind's structure hooks); raises :class:`DefinitionErrors` with paths under ``path``."""
    builder = _Builder(None, False)
    value = builder.build(cls, data, path)
    if builder.errors:
        raise DefinitionErrors(builder.errors)
    return value
