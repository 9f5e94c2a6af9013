"""Probe definitions as plain data: ``{"kind": "http", "url": ..., "assertions": [...]}``.

This is how definitions arrive from a config file or a control plane. :func:`build_probe` turns
one into a probe, reporting *every* problem at once, each with its field path
(``assertions[1].pattern: invalid regex: ...``), through the one structuring engine
(:mod:`probekit._structure`, which reads protocol frames too). :func:`probe_to_dict` goes the
other way.

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

from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from ._assertions import (
    ASSERTION_TYPES,
    Assertion,
    assertion_to_dict,
    register_assertion,
)
from ._exceptions import DefinitionError, DefinitionErrors
from ._secret import Secret
from ._structure import (
    FieldHook,
    Policy,
    Tagged,
    active_policy,
    did_you_mean,
    engine,
    register,
)
from ._validate import read_secret

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


def register_probe(kind: str, cls: type) -> None:
    """Make ``{"kind": kind, ...}`` build ``cls`` (a frozen attrs probe class whose ``kind`` is
    ``kind``). Declaring a :class:`~probekit.probes.ProbeKind` gives it CLI options and metrics
    too (:func:`~probekit.probes.register_kind`)."""
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not an attrs class")
    from .probes._registry import register_class

    register_class(kind, cls)


def probe_kinds() -> tuple[str, ...]:
    """The names of every probe kind this process has (built-in, registered and plugins)."""
    from .probes._registry import kinds

    return tuple(kinds())


SecretLookup = Callable[[str], Secret]


_MASKED: Final = str(Secret(""))


@attrs.frozen
class _SecretReferences:
    """The secret policy of definitions: a string is the secret itself, ``{"secret": NAME}``
    looks the name up in ``secrets``; ``{"env": VAR}`` and ``{"file": PATH}`` are read only
    when the definition is ``local`` (the operator's own config file)."""

    secrets: Mapping[str, Secret] | SecretLookup | None
    local: bool

    def __call__(self, data: Any) -> Secret:
        if isinstance(data, Secret):
            return data  # from Python (a kind's to_definition): never a plain string on the way
        if isinstance(data, str):
            if data == _MASKED:
                # What probe_to_dict writes for a secret: loading it back would make the mask
                # itself the password. Say so instead of checking with the wrong credential.
                raise DefinitionError(
                    "", 'a masked "<secret>" cannot be loaded back; give {"secret": NAME}'
                )
            return Secret(data)
        if isinstance(data, Mapping) and len(data) == 1:
            ((how, name),) = data.items()
            if not isinstance(name, str) or not name:
                raise DefinitionError(str(how), "expected a name")
            if how == "secret":
                return self.lookup(name)
            if how in ("env", "file") and not self.local:
                raise DefinitionError(
                    how, f"'{how}' secrets are only read from local configuration"
                )
            if how in ("env", "file"):
                return read_secret(how, name)
        raise DefinitionError(
            "", 'a secret is a string or one of {"secret": NAME}, {"env": VAR}, {"file": PATH}'
        )

    def lookup(self, name: str) -> Secret:
        source = self.secrets
        try:
            if source is None:
                raise KeyError(name)
            if callable(source) and not isinstance(source, Mapping):
                return source(name)
            return source[name]
        except KeyError:
            raise DefinitionError("secret", f"no secret named {name!r}") from None


def _assertion_class(name: str) -> tuple[type, Mapping[str, FieldHook]]:
    cls = ASSERTION_TYPES.get(name)
    if cls is None:
        known = sorted(ASSERTION_TYPES)
        raise DefinitionError(
            "", f"unknown assertion {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}"
        )
    return cls, {}


def _probe_class(name: str) -> tuple[type, Mapping[str, FieldHook]]:
    from .probes._registry import get_kind, kinds

    try:
        spec = get_kind(name)
    except DefinitionError as exc:
        if not exc.message.startswith("unknown probe kind"):
            raise  # a plugin that failed to load says so itself
        known = sorted(kinds())
        raise DefinitionError(
            "", f"unknown probe kind {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}"
        ) from None
    return spec.cls, spec.structure


#: Assertions by their ``type``; every ``Assertion`` field of a probe is read through it.
ASSERTIONS: Final = Tagged(
    key="type", missing="an assertion names its type", resolve=_assertion_class
)
#: Probe definitions by their ``kind``, each kind's own field hooks included.
PROBES: Final = Tagged(
    key="kind", missing="a definition names its probe kind", resolve=_probe_class
)
register(Assertion, ASSERTIONS)


def _policy(secrets: Mapping[str, Secret] | SecretLookup | None, local: bool) -> Policy:
    return Policy(secrets=_SecretReferences(secrets, local))


_NO_SECRETS: Final = _policy(None, False)


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
    policy = _NO_SECRETS if secrets is None and not local else _policy(secrets, local)
    return engine.structure(PROBES, data, policy=policy, path=path)


def probe_to_dict(probe: Any) -> dict[str, Any]:
    """The plain-data form of a probe (secrets show as ``"<secret>"``)."""
    from .probes._fields import plain_fields
    from .probes._registry import get_kind

    kind = type(probe).kind
    return {"kind": kind, **plain_fields(probe, get_kind(kind).unstructure)}


def structure(cls: type, data: Any, path: str = "") -> Any:
    """Build the attrs value ``cls`` from plain ``data`` with the engine definitions use (for
    a kind's structure hooks); raises :class:`DefinitionErrors` with paths under ``path``.

    Inside a ``build_probe`` call it reads secrets as that call does (its ``secrets`` mapping,
    and ``env``/``file`` when local); on its own, ``{"secret": NAME}`` has nothing to look in."""
    policy = active_policy() or _NO_SECRETS
    return engine.structure(cls, data, policy=policy, path=path)
