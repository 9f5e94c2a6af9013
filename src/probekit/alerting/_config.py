"""The alerting sections of the control plane's config file: ``[[channels]]``,
``[[maintenance]]`` and the monitors' ``labels`` (see ``docs/alerting.md``).

Each function takes the config loader, reports every problem through ``loader.fail`` with its
path, and returns what it could build.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final, Protocol, get_args

from .._exceptions import DefinitionError, DefinitionErrors
from .._policy import EgressPolicy
from .._secret import Secret
from .._validate import seconds_problem
from ._events import EventKind
from ._maintenance import MaintenanceWindow, Weekly
from ._sinks import (
    AlertmanagerSink,
    DurableSink,
    EmailSink,
    PagerDutySink,
    SlackSink,
    WebhookSink,
)

__all__ = ["alerting", "channels", "labels", "maintenance"]

#: The keys every channel takes, and those of each type.
_COMMON: Final = (
    *("type", "name", "kinds", "renotify", "timeout"),
    *("backoff", "max_backoff", "max_attempts"),
)
_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "webhook": ("url", "headers"),
    "slack": ("url",),
    "pagerduty": ("routing_key", "url", "source", "severity"),
    "alertmanager": ("url", "labels", "generator_url", "headers"),
    "email": (
        *("host", "port", "tls", "username", "password", "ca_file"),
        *("from", "to", "subject_prefix"),
    ),
}
_SECRETS: Final = {"slack": ("url",), "pagerduty": ("routing_key",), "email": ("password",)}
_WINDOW_KEYS: Final = (
    *("id", "monitors", "checkpoints", "labels", "start", "end", "reason"),
    *("days", "at", "duration", "timezone"),
)


class _Loader(Protocol):
    errors: list[DefinitionError]

    def fail(self, path: str, message: str) -> None: ...

    def read_secret(self, source: Any, where: str) -> Secret | None: ...

    def lookup(self, name: str) -> Secret: ...

    def tables(
        self, data: Any, name: str, what: str
    ) -> list[tuple[int, str, Mapping[str, Any]]] | None: ...


def _kind(value: object) -> str:
    return type(value).__name__


def _secret(loader: _Loader, value: Any, where: str) -> Secret | None:
    if value is None:
        loader.fail(where, 'required: {env = "VAR"} or {file = "PATH"}')
        return None
    if isinstance(value, str):
        loader.fail(where, 'a credential: read it from {env = "VAR"} or {file = "PATH"}')
        return None
    if isinstance(value, Mapping) and set(value) == {"secret"} and hasattr(loader, "secrets"):
        name = value["secret"]  # a [secrets] entry (probekit run's config)
        if not isinstance(name, str) or name not in loader.secrets:
            if name not in getattr(loader, "broken_secrets", ()):
                loader.fail(f"{where}.secret", f"no [secrets] entry named {name!r}")
            return None
        return loader.lookup(name)
    return loader.read_secret(value, where)


def channels(
    loader: _Loader, data: Any, outbox: str, policy: EgressPolicy | None = None
) -> list[DurableSink]:
    """Build each ``[[channels]]`` table's channel, behind a :class:`DurableSink` on
    ``outbox``, dialling under ``policy`` (None: ``EgressPolicy()``)."""
    tables = loader.tables(data, "channels", "channel")
    if tables is None:
        return []
    out: list[DurableSink] = []
    names: dict[str, int] = {}
    for i, path, item in tables:
        before = len(loader.errors)
        kind = item.get("type")
        if kind not in _TYPES:
            loader.fail(f"{path}.type", f"required, one of {', '.join(_TYPES)}; got {kind!r}")
            continue
        known = (*_COMMON, *_TYPES[kind])
        for key in item:
            if key not in known:
                loader.fail(f"{path}.{key}", f"unknown field; known: {', '.join(known)}")
        name = item.get("name", f"{kind}-{i}")
        if not isinstance(name, str) or not name:
            loader.fail(f"{path}.name", f"expected text, got {name!r}")
        elif name in names:
            loader.fail(f"{path}.name", f"the same name as channels[{names[name]}]")
        else:
            names[name] = i
        options: dict[str, Any] = {"name": name, "policy": policy}
        for key in ("renotify", "timeout"):
            if key in item:
                if (problem := seconds_problem(item[key])) is not None:
                    loader.fail(f"{path}.{key}", problem)
                else:
                    options[key] = float(item[key])
        if "kinds" in item:
            kinds = item["kinds"]
            known_kinds = get_args(EventKind)
            if not isinstance(kinds, list) or not all(k in known_kinds for k in kinds):
                loader.fail(
                    f"{path}.kinds", f"expected a list of event kinds: {', '.join(known_kinds)}"
                )
            else:
                options["kinds"] = kinds
        durable: dict[str, Any] = {}
        for key in ("backoff", "max_backoff"):
            if key in item:
                if (problem := seconds_problem(item[key])) is not None:
                    loader.fail(f"{path}.{key}", problem)
                else:
                    durable[key] = float(item[key])
        if "max_attempts" in item:
            value = item["max_attempts"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                loader.fail(f"{path}.max_attempts", f"expected an integer >= 1, got {value!r}")
            else:
                durable["max_attempts"] = value
        fields = {k: item[k] for k in _TYPES[kind] if k in item}
        for key in _SECRETS.get(kind, ()):
            if key in fields or key != "password":
                fields[key] = _secret(loader, fields.get(key), f"{path}.{key}")
        if "headers" in fields:
            fields["headers"] = _headers(loader, fields["headers"], f"{path}.headers")
        if len(loader.errors) > before:
            continue
        try:
            channel = _build(kind, fields, options)
        except DefinitionErrors as exc:
            loader.errors.extend(e.under(path) for e in exc.errors)
            continue
        except DefinitionError as exc:
            loader.errors.append(exc.under(path))
            continue
        except TypeError as exc:
            loader.fail(path, str(exc))
            continue
        out.append(DurableSink(channel, outbox, **durable))
    return out


def _headers(loader: _Loader, value: Any, where: str) -> dict[str, str | Secret]:
    if not isinstance(value, Mapping):
        loader.fail(where, "expected a table of header names and values")
        return {}
    out: dict[str, str | Secret] = {}
    for key, item in value.items():
        if isinstance(item, str):
            out[key] = item
        else:
            secret = loader.read_secret(item, f"{where}.{key}")
            if secret is not None:
                out[key] = secret
    return out


def _build(kind: str, fields: dict[str, Any], options: dict[str, Any]) -> Any:
    if kind == "webhook":
        return WebhookSink(fields.pop("url", None), **fields, **options)
    if kind == "slack":
        return SlackSink(fields.pop("url"), **options)
    if kind == "pagerduty":
        return PagerDutySink(fields.pop("routing_key"), **fields, **options)
    if kind == "alertmanager":
        return AlertmanagerSink(fields.pop("url", None), **fields, **options)
    sender = fields.pop("from", None)
    to = fields.pop("to", None)
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list):
        raise DefinitionError("to", "required: a list of e-mail addresses")
    host = fields.pop("host", None)
    return EmailSink(host, sender=sender, to=to, **fields, **options)


def _when(loader: _Loader, value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            loader.fail(where, "a date and time needs its offset (Z or +02:00)")
            return None
        return value.timestamp()
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            loader.fail(where, f"expected an RFC 3339 date and time, got {value!r}")
            return None
        if parsed.tzinfo is None:
            loader.fail(where, "a date and time needs its offset (Z or +02:00)")
            return None
        return parsed.timestamp()
    loader.fail(where, f"expected a date and time, got {_kind(value)}")
    return None


def maintenance(loader: _Loader, data: Any) -> list[MaintenanceWindow]:
    """Build each ``[[maintenance]]`` table's window."""
    tables = loader.tables(data, "maintenance", "window")
    if tables is None:
        return []
    out: list[MaintenanceWindow] = []
    ids: dict[str, int] = {}
    for i, path, item in tables:
        before = len(loader.errors)
        for key in item:
            if key not in _WINDOW_KEYS:
                loader.fail(f"{path}.{key}", f"unknown field; known: {', '.join(_WINDOW_KEYS)}")
        window_id = item.get("id")
        if isinstance(window_id, str) and window_id in ids:
            loader.fail(f"{path}.id", f"the same id as maintenance[{ids[window_id]}]")
        elif isinstance(window_id, str):
            ids[window_id] = i
        start = _when(loader, item.get("start"), f"{path}.start")
        end = _when(loader, item.get("end"), f"{path}.end")
        weekly = None
        if any(k in item for k in ("days", "at", "duration", "timezone")):
            try:
                weekly = Weekly(
                    days=item.get("days", ()),
                    at=item.get("at", ""),
                    duration=item.get("duration", 0),
                    timezone=item.get("timezone", "UTC"),
                )
            except DefinitionError as exc:
                loader.errors.append(exc.under(path))
            except TypeError:
                loader.fail(path, "days is a list of mon..sun")
        if len(loader.errors) > before:
            continue
        try:
            out.append(
                MaintenanceWindow(
                    window_id if isinstance(window_id, str) else "",
                    monitors=_text_list(item.get("monitors", [])),
                    checkpoints=_text_list(item.get("checkpoints", [])),
                    labels=item.get("labels", {}),
                    start=start,
                    end=end,
                    weekly=weekly,
                    reason=str(item.get("reason", "")),
                )
            )
        except DefinitionError as exc:
            loader.errors.append(exc.under(path))
        except (TypeError, ValueError):
            loader.fail(path, "monitors and checkpoints are lists of text, labels a table")
    return out


def _text_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise DefinitionError("monitors", "expected a list")
    return tuple(value)


def labels(loader: _Loader, data: Any) -> dict[str, Mapping[str, str]]:
    """The ``labels`` table of each monitor that has one, by monitor id."""
    out: dict[str, Mapping[str, str]] = {}
    if not isinstance(data, list):
        return out
    for i, item in enumerate(data):
        if not isinstance(item, Mapping) or "labels" not in item:
            continue
        value = item["labels"]
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            loader.fail(f"monitors[{i}].labels", "expected a table of text values")
            continue
        if isinstance(item.get("id"), str):
            out[item["id"]] = dict(value)
    return out


def alerting(loader: _Loader, data: Any) -> tuple[int, str]:
    """``probekit run``'s ``[alerting]`` table: (failures in a row that open an alert, the
    outbox file)."""
    failures, outbox = 2, ":memory:"
    if not isinstance(data, Mapping):
        loader.fail("alerting", f"expected a table, got {_kind(data)}")
        return failures, outbox
    for key in data:
        if key not in ("failures", "outbox"):
            loader.fail(f"alerting.{key}", "unknown field; known: failures, outbox")
    value = data.get("failures", failures)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        loader.fail("alerting.failures", f"expected an integer >= 1, got {value!r}")
    else:
        failures = value
    value = data.get("outbox", outbox)
    if not isinstance(value, str) or not value:
        loader.fail("alerting.outbox", f"expected a file path, got {value!r}")
    else:
        outbox = value
    return failures, outbox
