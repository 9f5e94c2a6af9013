"""The small rules many definitions share, written once.

- seconds: a positive (or, where said, non-negative), finite number of seconds; never a bool;
- ids: the ids of the control channel and of monitors (checkpoint, instance, monitor, request,
  result ids and probe kinds): 1 to :data:`MAX_ID_LENGTH` printable characters;
- secrets read from the environment or a file, for local configuration only.

Each rule has a ``*_problem`` form that says what is wrong (or None), for loaders that collect
every problem, a ``check_*`` form that raises :class:`~probekit.DefinitionError` with a path, and
attrs validators built on them.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Final, Literal, TypeGuard

import attrs

from ._exceptions import DefinitionError, DefinitionErrors
from ._secret import Secret

__all__ = [
    "MAX_ID_LENGTH",
    "check_id",
    "check_seconds",
    "id_problem",
    "is_id",
    "is_loopback",
    "optional_seconds",
    "read_config_file",
    "read_secret",
    "seconds",
    "seconds_problem",
    "token_problem",
]

#: Ids (checkpoint, instance, monitor, request, result ids, probe kinds) are 1 to 200 characters.
MAX_ID_LENGTH: Final = 200


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return repr(value)
    return type(value).__name__


def seconds_problem(value: object, *, zero: bool = False) -> str | None:
    """Why ``value`` is not a number of seconds above 0 (at least 0 with ``zero``), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number of seconds, got {_show(value)}"
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "above 0"
        return f"must be a finite number of seconds {least}, got {value!r}"
    return None


def check_seconds(path: str, value: object, *, zero: bool = False) -> float:
    """``value`` as float seconds, or :class:`DefinitionError` at ``path``."""
    problem = seconds_problem(value, zero=zero)
    if problem is not None:
        raise DefinitionError(path, problem)
    assert isinstance(value, int | float)
    return float(value)


def seconds(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a positive, finite number of seconds."""
    check_seconds(attribute.name, value)


def optional_seconds(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: None, or a positive, finite number of seconds."""
    if value is not None:
        check_seconds(attribute.name, value)


def id_problem(value: object, *, blank: bool = False) -> str | None:
    """Why ``value`` is not an id (1 to MAX_ID_LENGTH printable characters), or None.

    An id of spaces only is refused, unless ``blank``: the control channel's *id* (see
    ``docs/protocol.md``) allows it, and what a peer may send must stay valid on both sides.
    """
    if type(value) is not str:
        return f"expected a string, got {_show(value)}"
    if not value or not (blank or value.strip()):
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    if not value.isprintable():
        return "contains a control or unprintable character"
    return None


def is_id(value: object, *, blank: bool = False) -> TypeGuard[str]:
    return id_problem(value, blank=blank) is None


def check_id(path: str, value: object, *, blank: bool = False) -> str:
    """``value`` if it is an id, else :class:`DefinitionError` at ``path``."""
    problem = id_problem(value, blank=blank)
    if problem is not None:
        raise DefinitionError(path, problem)
    assert isinstance(value, str)
    return value


def read_secret(how: Literal["env", "file"], name: str) -> Secret:
    """Read a secret from environment variable ``name`` or from file ``name``.

    A file's trailing line break is dropped. Raises :class:`DefinitionError` (path ``env`` or
    ``file``) saying why it could not be read. Only for local configuration: a definition that
    came over the network must never make a checkpoint read its files or environment.
    """
    if how == "env":
        value = os.environ.get(name)
        if value is None:
            raise DefinitionError("env", f"environment variable {name} is not set")
        return Secret(value)
    try:
        return Secret(Path(name).read_text(encoding="utf-8").rstrip("\r\n"))
    except OSError as exc:
        raise DefinitionError("file", f"cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DefinitionError("file", f"{name} is not UTF-8 text") from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 possibly in brackets) is on loopback:
    ``localhost``, ``*.localhost``, 127.0.0.0/8 or ::1."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a bearer token (empty, spaces, control characters), or None."""
    if not token:
        return "the token is empty"
    if not token.isprintable() or any(c.isspace() for c in token):
        return "the token must not contain spaces or control characters"
    return None


_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_EOF = re.compile(r"\s*\(at end of document\)\s*$")


def read_config_file(path: str | os.PathLike[str]) -> Any:
    """The parsed contents of a TOML (or, for ``*.json``, JSON) config file.

    Raises :class:`~probekit.DefinitionErrors` for an unreadable file or a syntax error (with
    its line and column).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionErrors(
            [DefinitionError("", f"cannot read {file}: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise DefinitionErrors([DefinitionError("", f"{file} is not UTF-8: {exc}")]) from None
    return _parse_json(text) if file.suffix.lower() == ".json" else _parse_toml(text)


def _parse_toml(text: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_WHERE.search(message)
        if where is not None:
            line, column = where.groups()
            detail = message[: where.start()]
            message = f"invalid TOML at line {line}, column {column}: {detail}"
        elif (end := _TOML_EOF.search(message)) is not None:
            message = f"invalid TOML at the end of the file: {message[: end.start()]}"
        else:
            message = f"invalid TOML: {message}"
        raise DefinitionErrors([DefinitionError("", message)]) from None


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise DefinitionErrors([DefinitionError("", message)]) from None
