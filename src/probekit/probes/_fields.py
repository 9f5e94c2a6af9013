"""Field rules many probe kinds share: a host, a port, an address family.

A kind uses them as attrs converters and validators (``host: str = attrs.field(converter=host)``,
``port: int = attrs.field(validator=port)``) and calls :func:`check_host` and
:func:`check_family` from ``__attrs_post_init__``; every problem is a
:class:`~probekit.DefinitionError` naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from .._exceptions import DefinitionError
from .._secret import Secret

__all__ = [
    "FAMILIES",
    "check_family",
    "check_host",
    "check_secret",
    "host",
    "host_port",
    "optional_host",
    "plain_fields",
    "port",
]

#: The values of an ``ip_family`` field (None: the dialer's own choice).
FAMILIES: Final = ("any", "ipv4", "ipv6")


def host(value: str) -> str:
    """Converter: a host name or address as a string; ``[v6]`` brackets dropped."""
    raw: object = value
    if not isinstance(raw, str):
        raise DefinitionError("host", f"a host must be a string, got {type(raw).__name__}")
    if raw.startswith("[") and raw.endswith("]"):
        return raw[1:-1]
    return raw


def optional_host(field: str) -> Any:
    """Converter for an optional host field called ``field`` (None stays None)."""

    def convert(value: str | None) -> str | None:
        raw: object = value
        if raw is None:
            return None
        if not isinstance(raw, str):
            message = f"a {field} must be a string, got {type(raw).__name__}"
            raise DefinitionError(field, message)
        return raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw

    return convert


def check_host(value: str, field: str = "host") -> None:
    """A host is required, with no whitespace, NUL or slash in it."""
    if not value.strip():
        raise DefinitionError(field, f"a {field} is required")
    if any(c.isspace() or c in "\0/" for c in value):
        raise DefinitionError(field, f"not a host name or address: {value!r}")


def port(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    """Validator: an integer port from 1 to 65535."""
    raw: object = value
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
        raise DefinitionError(attribute.name, f"must be an integer from 1 to 65535, got {value!r}")


def check_family(value: object) -> None:
    """``ip_family`` is None or one of :data:`FAMILIES`."""
    if value is not None and value not in FAMILIES:
        raise DefinitionError("ip_family", f"expected one of {list(FAMILIES)}, got {value!r}")


def host_port(host: str, port: int) -> str:
    """``host:port`` as people write it (``[v6]:port``): a kind's ``target``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_FACTORY: Final[type[Any]] = type(attrs.Factory(list))


def plain_fields(
    value: Any, hooks: Mapping[str, Callable[[Any], Any]] | None = None
) -> dict[str, Any]:
    """The init fields of the attrs ``value`` that differ from their defaults, as plain data
    (by alias; tuples as lists, assertions as their ``{"type": ...}`` form, bytes as text,
    secrets as ``"<secret>"``). ``hooks`` maps a field name to its own unstructure function.
    What ``probe_to_dict`` and a kind's nested values (the api kind's steps) write."""
    from .._assertions import assertion_name, assertion_to_dict
    from .._serialization import converter

    def plain(item: Any) -> Any:
        if isinstance(item, tuple):
            return [plain(v) for v in item]
        if assertion_name(item) is not None:
            return assertion_to_dict(item)
        if isinstance(item, bytes):
            return item.decode("utf-8", "replace")
        return converter.unstructure(item)

    out: dict[str, Any] = {}
    for field in attrs.fields(type(value)):
        if not field.init:
            continue
        item = getattr(value, field.name)
        default = field.default
        if isinstance(default, _FACTORY):
            default = default.factory()
        if item == default:
            continue
        name = field.alias or field.name
        hook = (hooks or {}).get(name)
        out[name] = hook(item) if hook is not None else plain(item)
    return out


def check_secret(name: str, value: object, *, empty: str | None = None) -> Secret | None:
    """``value`` (a secret field such as a password) when it is None or a non-empty
    :class:`~probekit.Secret`; else :class:`DefinitionError` naming ``name``. A wrong type is
    named by its type only (the value may be the secret itself); ``empty`` is the message for
    an empty secret (``an empty NAME`` by default)."""
    if value is None:
        return None
    if not isinstance(value, Secret):
        raise DefinitionError(name, f"expected a Secret, got {type(value).__name__}")
    if not value:
        raise DefinitionError(name, empty or f"an empty {name}")
    return value
