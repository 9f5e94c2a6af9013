"""Monitor definitions from a TOML or JSON file.

A config file is plain data: ``[[monitors]]`` tables (each a probe definition as
:func:`~probekit.build_probe` reads it, plus ``id`` and ``interval``), optional ``[defaults]``
merged into every monitor, an optional ``[policy]`` (the local :class:`~probekit.EgressPolicy`)
and an optional ``[secrets]`` table naming secrets read from environment variables or files.
:func:`load_config` reports *every* problem at once, each with its path
(``monitors[3].assertions[1].pattern: invalid regex: ...``), by raising
:class:`~probekit.DefinitionErrors`. The format is documented in ``docs/config.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from ._definitions import DefinitionErrors, build_probe
from ._exceptions import DefinitionError
from ._policy import EgressPolicy
from ._scheduler import Monitor
from ._secret import Secret
from ._validate import id_problem, read_config_file, read_secret, seconds_problem

__all__ = ["DEFAULT_INTERVAL", "Config", "load_config", "parse_config"]

#: Seconds between runs of a monitor that does not say.
DEFAULT_INTERVAL: Final = 60.0

_SECTIONS: Final = ("monitors", "defaults", "policy", "secrets", "channels", "alerting")
_POLICY_KEYS: Final = ("allow", "deny", "allow_hosts", "deny_hosts")
_MONITOR_KEYS: Final = ("id", "interval")


@attrs.frozen
class Config:
    """A loaded config file: the monitors to run and the local egress policy."""

    monitors: tuple[Monitor, ...]
    policy: EgressPolicy = attrs.field(factory=EgressPolicy)
    #: The ``[[channels]]`` alerts go to (``DurableSink`` values; see docs/alerting.md), and
    #: the ``[alerting]`` results-in-a-row DOWN that open an alert.
    channels: tuple[Any, ...] = ()
    alert_failures: int = 2

    def monitor(self, monitor_id: str) -> Monitor:
        """The monitor with id ``monitor_id``; KeyError if there is none."""
        for monitor in self.monitors:
            if monitor.monitor_id == monitor_id:
                return monitor
        raise KeyError(monitor_id)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load the config file at ``path``: JSON when its name ends in ``.json``, TOML otherwise.

    Raises :class:`~probekit.DefinitionErrors` listing every problem (an unreadable file, a
    syntax error with its line and column, or each invalid field with its path).
    """
    return parse_config(read_config_file(path))


def parse_config(data: Any) -> Config:
    """Build a :class:`Config` from already-parsed data (the shape of a config file).

    Raises :class:`~probekit.DefinitionErrors` listing every problem, each with its path.
    """
    loader = _Loader()
    config = loader.config(data)
    if loader.errors:
        raise DefinitionErrors(loader.errors)
    assert config is not None
    return config


class _Loader:
    def __init__(self) -> None:
        self.errors: list[DefinitionError] = []
        self.secrets: dict[str, Secret] = {}
        self.broken_secrets: set[str] = set()

    def tables(
        self, data: Any, name: str, what: str
    ) -> list[tuple[int, str, Mapping[str, Any]]] | None:
        """The tables of the array ``[[name]]``, each with its index and its path
        (``name[i]``); None, and a problem, when ``data`` is not a list. A member that is not a
        table is a problem and left out."""
        if isinstance(data, str | bytes) or not isinstance(data, list):
            self.fail(name, f"expected a list of {what} tables, got {_kind(data)}")
            return None
        out: list[tuple[int, str, Mapping[str, Any]]] = []
        for i, item in enumerate(data):
            path = f"{name}[{i}]"
            if isinstance(item, Mapping):
                out.append((i, path, item))
            else:
                self.fail(path, f"expected a table, got {_kind(item)}")
        return out

    def fail(self, path: str, message: str) -> None:
        self.errors.append(DefinitionError(path, message))

    def config(self, data: Any) -> Config | None:
        if not isinstance(data, Mapping):
            self.fail("", f"a config file holds a table (object), got {_kind(data)}")
            return None
        for key in data:
            if key not in _SECTIONS:
                self.fail(str(key), f"unknown section; known: {', '.join(_SECTIONS)}")
        self.load_secrets(data.get("secrets", {}))
        policy = self.policy(data.get("policy", {}))
        defaults = self.defaults(data.get("defaults", {}))
        monitors = self.monitors(data.get("monitors"), defaults)
        channels: list[Any] = []
        failures = 2
        if "channels" in data or "alerting" in data:  # (the alerting code loads only if used)
            from .alerting import _config as alerting

            failures, outbox = alerting.alerting(self, data.get("alerting", {}))
            channels = alerting.channels(
                self, data.get("channels", []), outbox, policy or EgressPolicy()
            )
        if self.errors:
            return None
        return Config(
            monitors=tuple(monitors),
            policy=policy or EgressPolicy(),
            channels=tuple(channels),
            alert_failures=failures,
        )

    # -- sections --------------------------------------------------------------------------

    def load_secrets(self, data: Any) -> None:
        if not isinstance(data, Mapping):
            self.fail("secrets", f"expected a table of named secrets, got {_kind(data)}")
            return
        for name, source in data.items():
            where = f"secrets.{name}"
            secret = self.read_secret(source, where)
            if secret is None:
                self.broken_secrets.add(name)
            else:
                self.secrets[name] = secret

    def read_secret(self, source: Any, where: str) -> Secret | None:
        if not (isinstance(source, Mapping) and len(source) == 1):
            self.fail(where, 'a secret is read from {env = "VAR"} or {file = "PATH"}')
            return None
        ((how, name),) = source.items()
        if how not in ("env", "file"):
            self.fail(where, 'a secret is read from {env = "VAR"} or {file = "PATH"}')
            return None
        if not isinstance(name, str) or not name:
            self.fail(f"{where}.{how}", f"expected a name, got {_kind(name)}")
            return None
        try:
            return read_secret(how, name)
        except DefinitionError as exc:
            self.fail(f"{where}.{exc.path}", exc.message)
        return None

    def lookup(self, name: str) -> Secret:
        if name in self.broken_secrets:
            return Secret("")  # its own error is already reported under secrets.NAME
        return self.secrets[name]

    def policy(self, data: Any) -> EgressPolicy | None:
        if not isinstance(data, Mapping):
            self.fail("policy", f"expected a table, got {_kind(data)}")
            return None
        before = len(self.errors)
        fields: dict[str, Any] = {}
        for key, value in data.items():
            where = f"policy.{key}"
            if key not in _POLICY_KEYS:
                self.fail(where, f"unknown field; known: {', '.join(_POLICY_KEYS)}")
                continue
            if isinstance(value, str) or not isinstance(value, list):
                self.fail(where, f"expected a list of strings, got {_kind(value)}")
                continue
            try:
                EgressPolicy(**{key: value})
            except DefinitionError as exc:
                self.errors.append(exc.under("policy"))
                continue
            fields[key] = value
        if len(self.errors) > before:
            return None
        return EgressPolicy(**fields)

    def defaults(self, data: Any) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            self.fail("defaults", f"expected a table, got {_kind(data)}")
            return {}
        if "id" in data:
            self.fail("defaults.id", "every monitor needs its own id; it cannot have a default")
            return {k: v for k, v in data.items() if k != "id"}
        return data

    def monitors(self, data: Any, defaults: Mapping[str, Any]) -> list[Monitor]:
        if data is None:
            self.fail("monitors", "no monitors: add at least one [[monitors]] table")
            return []
        if isinstance(data, str | bytes) or not isinstance(data, list):
            self.fail("monitors", f"expected a list of monitor tables, got {_kind(data)}")
            return []
        if not data:
            self.fail("monitors", "no monitors: add at least one [[monitors]] table")
        out: list[Monitor] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(data):
            monitor_id, monitor = self.monitor(item, defaults, i)
            if monitor_id is not None:
                first = seen.setdefault(monitor_id, i)
                if first != i:
                    given = isinstance(item, Mapping) and "id" in item
                    hint = "" if given else " (the id defaults to the target; give each an id)"
                    self.fail(
                        f"monitors[{i}].id",
                        f"duplicate id {monitor_id!r}, also used by monitors[{first}]{hint}",
                    )
                    continue
            if monitor is not None:
                out.append(monitor)
        return out

    def monitor(
        self, item: Any, defaults: Mapping[str, Any], i: int
    ) -> tuple[str | None, Monitor | None]:
        """The monitor ``item`` defines and its id; either may be None when there are errors."""
        path = f"monitors[{i}]"
        if not isinstance(item, Mapping):
            self.fail(path, f"expected a table, got {_kind(item)}")
            return None, None
        merged = _merge(defaults, item)
        before = len(self.errors)
        monitor_id = merged.get("id")
        if monitor_id is not None and (problem := id_problem(monitor_id)) is not None:
            self.fail(f"{path}.id", problem)
            monitor_id = None
        interval = merged.get("interval", DEFAULT_INTERVAL)
        if (problem := seconds_problem(interval)) is not None:
            self.fail(f"{path}.interval", problem + _from_defaults("interval", defaults, item))
        definition = {k: v for k, v in merged.items() if k not in _MONITOR_KEYS}
        probe: Any = None
        try:
            probe = build_probe(definition, secrets=self.lookup, local=True, path=path)
        except DefinitionErrors as exc:
            self.errors.extend(_note_defaults(e, path, defaults, item) for e in exc.errors)
        if probe is not None and monitor_id is None and "id" not in merged:
            monitor_id = probe.target
        if len(self.errors) > before:
            return monitor_id, None
        assert isinstance(monitor_id, str)
        return monitor_id, Monitor(monitor_id=monitor_id, probe=probe, interval=float(interval))


def _merge(defaults: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, Any]:
    """``item`` over ``defaults``; tables present in both are merged key by key."""
    out = dict(defaults)
    for key, value in item.items():
        base = out.get(key)
        if isinstance(base, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(base, value)
        else:
            out[key] = value
    return out


def _from_defaults(key: str, defaults: Mapping[str, Any], item: Mapping[str, Any]) -> str:
    return " (from [defaults])" if key in defaults and key not in item else ""


def _note_defaults(
    error: DefinitionError, path: str, defaults: Mapping[str, Any], item: Mapping[str, Any]
) -> DefinitionError:
    """Say so when an error is about a value the monitor took from ``[defaults]``."""
    rest = error.path[len(path) :].lstrip(".")
    key = re.split(r"[.\[]", rest, maxsplit=1)[0]
    note = _from_defaults(key, defaults, item) if key else ""
    return DefinitionError(error.path, error.message + note) if note else error


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
