"""The one registry of probe kinds.

Kinds come from three places, looked up in this order and loaded only when first needed:

1. kinds registered from Python (:func:`register_kind`, or :func:`~probekit.register_probe`);
2. the built-in kinds: every public module of the :mod:`probekit.probes` package (``http.py``,
   ``tcp.py``, ``redis.py``, ...) declares ``KIND`` (or ``KINDS``, a tuple); looking up ``redis``
   imports only ``probekit.probes.redis``, and a kind module imports its protocol library
   inside its body, so neither ``import probekit`` nor listing kinds loads one;
3. third-party kinds: entry points of the group ``probekit.probes`` naming a
   :class:`~probekit.probes.ProbeKind` (``mykind = "mypackage.probe:KIND"``), found with
   :mod:`importlib.metadata`. A built-in kind's name cannot be taken over by an entry point.

An entry point that fails to load is logged and skipped (with its error kept for
:func:`kind_errors`), so one broken plugin does not take the others down.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading

from .._exceptions import DefinitionError
from .._result import Result
from ._kind import HostPort, ProbeKind

__all__ = ["ENTRY_POINT_GROUP", "describe", "get_kind", "kind_errors", "kinds", "register_kind"]

log = logging.getLogger("probekit.probes")

#: The entry-point group third-party distributions declare their kinds in.
ENTRY_POINT_GROUP = "probekit.probes"

_lock = threading.RLock()
_kinds: dict[str, ProbeKind] = {}
_builtin_names: tuple[str, ...] | None = None
_scanned_builtin = False
_scanned_plugins = False
_errors: dict[str, str] = {}
_from_plugins: set[str] = set()


def register_kind(kind: ProbeKind, *, replace: bool = False) -> ProbeKind:
    """Make ``kind`` usable everywhere: definitions, the CLI, exporters, a checkpoint's hello.

    Registering a different kind under a name already taken raises ``ValueError`` unless
    ``replace`` is set. Returns ``kind`` (so a module can write ``KIND = register_kind(...)``).
    """
    if not isinstance(kind, ProbeKind):
        raise TypeError(f"expected a ProbeKind, got {type(kind).__name__}")
    with _lock:
        existing = _kinds.get(kind.name)
        if existing is not None and existing != kind and not replace:
            raise ValueError(f"probe kind {kind.name!r} is already registered")
        _kinds[kind.name] = kind
    return kind


def register_class(name: str, cls: type) -> ProbeKind:
    """Register a bare attrs probe class whose ``kind`` is ``name`` (``register_probe``).

    It works in definitions, from Python and on the command line (target ``HOST:PORT``, no
    options of its own); declare a :class:`ProbeKind` to give it more.
    """
    doc = (cls.__doc__ or name).strip().splitlines()[0]
    return register_kind(
        ProbeKind(name=name, cls=cls, summary=doc, target=HostPort()), replace=True
    )


def builtin_names() -> tuple[str, ...]:
    """The names of the built-in kind modules (without importing them)."""
    global _builtin_names
    if _builtin_names is None:
        from . import __path__ as package_path

        _builtin_names = tuple(
            sorted(m.name for m in pkgutil.iter_modules(package_path) if not m.name.startswith("_"))
        )
    return _builtin_names


def _declared(module_name: str) -> tuple[ProbeKind, ...]:
    module = importlib.import_module(module_name)
    found = getattr(module, "KINDS", None)
    if found is None:
        single = getattr(module, "KIND", None)
        found = () if single is None else (single,)
    out = tuple(found)
    for kind in out:
        if not isinstance(kind, ProbeKind):
            raise TypeError(f"{module_name}.KIND is not a ProbeKind: {kind!r}")
    return out


def _load_builtin(module: str) -> None:
    for kind in _declared(f"{__package__}.{module}"):
        with _lock:
            _kinds.setdefault(kind.name, kind)


def _scan_builtin() -> None:
    global _scanned_builtin
    if _scanned_builtin:
        return
    for module in builtin_names():
        _load_builtin(module)
    _scanned_builtin = True


def _scan_plugins() -> None:
    global _scanned_plugins
    if _scanned_plugins:
        return
    _scan_builtin()
    from importlib import metadata  # ~10-30 ms: only when plugins are looked for

    builtin = _builtin_kind_names()
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in builtin:
            log.warning(
                "entry point %s (%s) is ignored: %r is a built-in probe kind",
                entry.name,
                entry.value,
                entry.name,
            )
            continue
        try:
            loaded = entry.load()
            found = loaded if isinstance(loaded, tuple) else (loaded,)
            for kind in found:
                if not isinstance(kind, ProbeKind):
                    raise TypeError(f"{entry.value} is not a ProbeKind: {kind!r}")
                if kind.name in builtin:
                    log.warning(
                        "kind %r of entry point %s is ignored: it is a built-in probe kind",
                        kind.name,
                        entry.name,
                    )
                    continue
                with _lock:
                    if kind.name not in _kinds:
                        _kinds[kind.name] = kind
                        _from_plugins.add(kind.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            _errors[entry.name] = f"{type(exc).__name__}: {exc}"
            log.warning(
                "probe kind plugin %s (%s) failed to load: %s", entry.name, entry.value, exc
            )
    _scanned_plugins = True


def _builtin_kind_names() -> set[str]:
    names: set[str] = set()
    for module in builtin_names():
        names.update(k.name for k in _declared(f"{__package__}.{module}"))
    return names


def get_kind(name: str) -> ProbeKind:
    """The kind called ``name``; :class:`~probekit.DefinitionError` (path ``kind``) if none is."""
    kind = _kinds.get(name)
    if kind is not None:
        return kind
    if isinstance(name, str) and name in builtin_names():
        _load_builtin(name)
        kind = _kinds.get(name)
        if kind is not None:
            return kind
    _scan_plugins()
    kind = _kinds.get(name)
    if kind is None:
        if name in _errors:
            raise DefinitionError(
                "kind", f"probe kind {name!r} is installed but failed to load: {_errors[name]}"
            )
        known = ", ".join(sorted(_kinds))
        raise DefinitionError("kind", f"unknown probe kind {name!r}; known: {known}")
    return kind


def kinds() -> dict[str, ProbeKind]:
    """Every kind: registered, built-in and installed plugins, by name (sorted)."""
    _scan_plugins()
    return dict(sorted(_kinds.items()))


def kind_errors() -> dict[str, str]:
    """Plugins whose entry point failed to load: name -> the error."""
    _scan_plugins()
    return dict(_errors)


def reset_plugins() -> None:
    """Forget the kinds entry points gave so far, so the next lookup scans them again (for tests
    and for programs that install a plugin while running). Kinds registered from Python stay."""
    global _scanned_plugins
    with _lock:
        for name in _from_plugins:
            _kinds.pop(name, None)
        _from_plugins.clear()
        _errors.clear()
        _scanned_plugins = False


def describe(result: Result) -> str:
    """The few words the result's kind says about what it saw ('' when it says nothing, or the
    kind is not known here)."""
    try:
        kind = get_kind(result.kind)
    except DefinitionError:
        return ""
    if kind.describe is None:
        return ""
    return kind.describe(result) or ""
